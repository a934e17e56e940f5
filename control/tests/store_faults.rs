//! A full disk under the real server process: `/readyz` fails with the reason, writes are
//! refused with a Status naming the store file, reads go on, and once space is freed
//! writes succeed again without a restart, with every acknowledged write kept (also
//! across a restart). Then another I/O error than a full disk: the store file may not
//! grow (RLIMIT_FSIZE).

mod common;

use axum::http::Method;
use berth_ctl::client::Client;
use berth_testkit::smallfs::SmallFs;
use serde_json::{Value, json};

use common::{ServerProcess, assert_acknowledged, eventually, rv};

const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

fn configmap(name: &str, bytes: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"blob": "x".repeat(bytes)},
    })
}

/// Status and body text of a GET.
async fn text(client: &Client, path: &str) -> (u16, String) {
    let reply = client
        .request(Method::GET, path, None)
        .await
        .expect("request");
    (
        reply.status.as_u16(),
        String::from_utf8_lossy(&reply.body).into_owned(),
    )
}

/// The ConfigMaps, which must answer.
async fn list(client: &Client) -> Value {
    let (status, list) = client
        .json(Method::GET, CONFIGMAPS, None)
        .await
        .expect("list");
    assert_eq!(status.as_u16(), 200, "{list}");
    list
}

/// The value of an unlabelled series on `/metrics`.
async fn metric(client: &Client, name: &str) -> String {
    let (status, body) = text(client, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .to_owned()
}

/// Sets the server's soft file size limit (`prlimit`); the hard one stays unlimited, so
/// the soft one can be lifted again without CAP_SYS_RESOURCE (which this host lacks).
fn limit_file_size(pid: u32, limit: &str) {
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--fsize={limit}:unlimited"),
        ])
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit --fsize={limit}");
}

/// Creates 512 KiB ConfigMaps named `prefix-N` until one is refused: the acknowledged
/// ones go to `acknowledged`; returns the refused one's name, status and body.
async fn fill_until_refused(
    client: &Client,
    prefix: &str,
    acknowledged: &mut Vec<(String, u64)>,
) -> (String, u16, Value) {
    for i in 0..64 {
        let name = format!("{prefix}-{i}");
        let (status, body) = client
            .json(
                Method::POST,
                CONFIGMAPS,
                Some(&configmap(&name, 512 * 1024)),
            )
            .await
            .expect("create");
        if status.as_u16() != 201 {
            return (name, status.as_u16(), body);
        }
        acknowledged.push((name, rv(&body)));
    }
    panic!("no {prefix} write was refused");
}

#[tokio::test]
async fn a_full_disk_fails_readiness_refuses_writes_and_recovers_without_loss() {
    // Ignored dispositions survive exec: a server over its file size limit gets EFBIG
    // instead of being killed by SIGXFSZ (this process sets no such limit).
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let fs = SmallFs::mount("store-faults", 16 << 20);
    let admin = fs.path().join("admin.conf");
    let server = ServerProcess::start(fs.path());
    let client = Client::from_kubeconfig(&admin).expect("client");

    let mut acknowledged = Vec::new();
    for i in 0..10 {
        let name = format!("before-{i}");
        let (status, created) = client
            .json(Method::POST, CONFIGMAPS, Some(&configmap(&name, 1000)))
            .await
            .expect("create");
        assert_eq!(status.as_u16(), 201, "{created}");
        acknowledged.push((name, rv(&created)));
    }
    assert_eq!(text(&client, "/readyz").await, (200, "ok".to_owned()));
    let (status, verbose) = text(&client, "/readyz?verbose").await;
    assert_eq!(status, 200);
    assert!(verbose.contains("[+]store ok"), "{verbose}");
    assert_eq!(metric(&client, "berth_store_healthy").await, "1");
    assert_eq!(metric(&client, "berth_store_faults_total").await, "0");

    // Disk full: big objects until one does not fit in what the file has free inside.
    fs.fill("filler");
    let (refused_name, status, body) = fill_until_refused(&client, "big", &mut acknowledged).await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["reason"], "InsufficientStorage", "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains("state.redb") && message.contains("No space left on device"),
        "{message}"
    );

    let (status, readiness) = text(&client, "/readyz").await;
    assert_eq!(status, 503, "{readiness}");
    assert!(
        readiness.contains("[-]store failed: store ") && readiness.contains("state.redb"),
        "{readiness}"
    );
    assert_eq!(text(&client, "/healthz").await, (200, "ok".to_owned()));
    // Refused even when small: the store waits for recovery to prove the file writable.
    let (status, body) = client
        .json(Method::POST, CONFIGMAPS, Some(&configmap("small", 10)))
        .await
        .expect("create");
    assert_eq!(status.as_u16(), 507, "{body}");
    assert_eq!(metric(&client, "berth_store_healthy").await, "0");
    assert_eq!(metric(&client, "berth_store_faults_total").await, "1");
    // Reads go on: once recovery has reopened the file, straight from the store.
    eventually("a read while the disk is full", || async {
        let (status, _) = client
            .json(Method::GET, &format!("{CONFIGMAPS}/before-0"), None)
            .await
            .ok()?;
        (status.as_u16() == 200).then_some(())
    })
    .await;
    list(&client).await;

    std::fs::remove_file(fs.path().join("filler")).expect("free the space");
    eventually("/readyz ok once space is freed", || async {
        (text(&client, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    // Watches work across the reopen: one from the revision listed now sees the next write.
    let list = list(&client).await;
    let mut watch = client
        .watch(&format!(
            "{CONFIGMAPS}?watch=true&resourceVersion={}",
            rv(&list)
        ))
        .await
        .expect("watch");
    assert_eq!(watch.status.as_u16(), 200);
    let (status, created) = client
        .json(Method::POST, CONFIGMAPS, Some(&configmap("after", 1000)))
        .await
        .expect("create after recovery");
    assert_eq!(status.as_u16(), 201, "{created}");
    acknowledged.push(("after".to_owned(), rv(&created)));
    let event = tokio::time::timeout(std::time::Duration::from_secs(30), watch.next())
        .await
        .expect("an event within 30 s (a generous bound on a shared machine)")
        .expect("read the watch")
        .expect("the watch stays open");
    assert_eq!(
        (&event["type"], &event["object"]["metadata"]["name"]),
        (&json!("ADDED"), &json!("after")),
        "{event}"
    );
    assert_eq!(metric(&client, "berth_store_healthy").await, "1");
    assert_eq!(metric(&client, "berth_store_faults_total").await, "1");

    let mut refused = vec![refused_name];
    let check =
        async |client: &Client, acknowledged: &[(String, u64)], refused: &[String], when: &str| {
            assert_acknowledged(client, CONFIGMAPS, acknowledged, when).await;
            for name in refused {
                let (status, _) = client
                    .json(Method::GET, &format!("{CONFIGMAPS}/{name}"), None)
                    .await
                    .expect("get");
                assert_eq!(
                    status.as_u16(),
                    404,
                    "the refused {name} was applied ({when})"
                );
            }
        };
    check(&client, &acknowledged, &refused, "after recovery").await;

    server.kill_9();
    let server = ServerProcess::start(fs.path());
    // admin.conf was rewritten with the new port.
    let client = Client::from_kubeconfig(&admin).expect("client after restart");
    check(&client, &acknowledged, &refused, "after a restart").await;
    assert_eq!(text(&client, "/readyz").await, (200, "ok".to_owned()));

    // The file may not grow: EFBIG, an I/O error that is not a full disk, is a 503.
    let size = std::fs::metadata(fs.path().join("state.redb"))
        .expect("the store file")
        .len();
    limit_file_size(server.pid(), &size.to_string());
    let (name, status, body) = fill_until_refused(&client, "grow", &mut acknowledged).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "ServiceUnavailable", "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains("state.redb") && message.contains("File too large"),
        "{message}"
    );
    refused.push(name);
    limit_file_size(server.pid(), "unlimited");
    // Recovery clears the fault once its probe commits; until then writes are refused.
    let created = eventually("a write once the file may grow again", || async {
        let (status, body) = client
            .json(
                Method::POST,
                CONFIGMAPS,
                Some(&configmap("grown", 512 * 1024)),
            )
            .await
            .expect("create");
        (status.as_u16() == 201).then_some(body)
    })
    .await;
    acknowledged.push(("grown".to_owned(), rv(&created)));
    check(
        &client,
        &acknowledged,
        &refused,
        "after the file size limit is lifted",
    )
    .await;
    assert_eq!(text(&client, "/readyz").await, (200, "ok".to_owned()));
}
