//! High availability on etcd: three control planes on a three-member etcd cluster, the
//! real `berth-control` processes. Every instance serves the API and the agent API; one
//! elected leader runs the scheduler and controllers. The leader is killed with SIGKILL
//! under a steady stream of writes: another instance takes over (the time is printed),
//! every acknowledged write is still there with its resourceVersion, every pod is bound
//! once; the next leader is frozen (SIGSTOP, as if cut off) and, running again, steps
//! down without writing; then an etcd member is killed and writes go on. A bootstrap
//! token created at one instance joins a node at another; berthctl, given every instance
//! (admin.conf's failover servers) with the dead one first, goes on: its commands and its
//! watch move to a live instance.

mod common;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::http::Method;
use berth_api::kubeconfig::Kubeconfig;
use berth_ctl::client::Client;
use berth_sim::hollow::{HollowHandle, HollowNode};
use berth_testkit::etcd::EtcdCluster;
use clap::Parser as _;
use serde_json::{Value, json};

use common::{ServerProcess, assert_acknowledged, deployment, eventually, rv};

struct Plane {
    server: ServerProcess,
    dir: tempfile::TempDir,
}

fn start_plane(store: &str) -> Plane {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start_with(
        dir.path(),
        &["--store", store, "--leader-elect-lease-duration", "1"],
    );
    Plane { server, dir }
}

/// A client of `plane` with the admin credentials `admin` (any instance's admin.conf
/// works at every instance: the CA and the token are the cluster's).
fn client(admin: &std::path::Path, plane: &Plane) -> Client {
    let mut settings = Kubeconfig::load(admin)
        .expect("admin.conf")
        .settings()
        .expect("settings");
    settings.server = plane.server.url.clone();
    Client::new(settings).expect("client")
}

async fn is_leader(client: &Client) -> Option<bool> {
    let reply = client.request(Method::GET, "/metrics", None).await.ok()?;
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    text.lines()
        .find_map(|line| line.strip_prefix("berth_leader "))
        .map(|value| value.trim() == "1")
}

async fn pods(client: &Client) -> Vec<Value> {
    let (status, list) = client
        .json(Method::GET, "/api/v1/namespaces/default/pods", None)
        .await
        .expect("list pods");
    assert_eq!(status.as_u16(), 200, "{list}");
    list["items"].as_array().cloned().unwrap_or_default()
}

async fn scale(client: &Client, replicas: u32) {
    let patch = json!({"spec": {"replicas": replicas}}).to_string();
    let reply = client
        .request(
            Method::PATCH,
            "/apis/apps/v1/namespaces/default/deployments/web/scale",
            Some((patch.as_bytes(), "application/merge-patch+json")),
        )
        .await
        .expect("scale");
    assert_eq!(
        reply.status.as_u16(),
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
}

/// `kill -STOP`/`-CONT` of a process this test started, by pid.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} {pid}");
}

async fn all_bound(client: &Client, replicas: usize) -> Option<()> {
    let pods = pods(client).await;
    (pods.len() == replicas
        && pods.iter().all(|p| {
            p["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
        }))
    .then_some(())
}

/// What an in-process berthctl prints, shared with the test as it is written.
#[derive(Clone, Default)]
struct WatchOutput(Arc<Mutex<Vec<u8>>>);

impl WatchOutput {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("output")).into_owned()
    }
}

impl std::io::Write for WatchOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("output").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_control_planes_survive_the_leader_and_an_etcd_member_dying() {
    let mut etcd = EtcdCluster::start(3);
    let store = etcd.store_url();

    // The first instance creates the cluster's CA, tokens and keys and publishes them
    // through etcd; the others take them from there.
    let first = start_plane(&store);
    let admin = first.dir.path().join("admin.conf");
    let first_client = client(&admin, &first);
    eventually("the first control plane leads", || async {
        is_leader(&first_client).await.filter(|l| *l).map(|_| ())
    })
    .await;
    let second = start_plane(&store);
    let third = start_plane(&store);
    for plane in [&second, &third] {
        for file in ["pki/ca.crt", "pki/bootstrap-token", "pki/sa.key"] {
            assert_eq!(
                std::fs::read(plane.dir.path().join(file)).expect("shared file"),
                std::fs::read(first.dir.path().join(file)).expect("first's file"),
                "{file} is the cluster's, not the instance's"
            );
        }
    }
    let clients: Vec<Client> = [&first, &second, &third]
        .iter()
        .map(|plane| client(&admin, plane))
        .collect();
    let mut leaders = 0;
    for c in &clients {
        leaders += usize::from(is_leader(c).await == Some(true));
    }
    assert_eq!(leaders, 1, "exactly one leader");

    // Nodes join through the second instance's agent API with the cluster's token, and
    // one with a token created through the third instance (tokens live in the store).
    let ca = std::fs::read_to_string(first.dir.path().join("pki/ca.crt")).expect("ca");
    let token =
        std::fs::read_to_string(first.dir.path().join("pki/bootstrap-token")).expect("token");
    let (status, created) = clients[2]
        .json(
            Method::POST,
            "/bootstrap-tokens",
            Some(&json!({"ttlSeconds": 600})),
        )
        .await
        .expect("create a bootstrap token");
    assert_eq!(status.as_u16(), 201, "{created}");
    let created_token = created["token"].as_str().expect("token").to_owned();
    let mut nodes: Vec<HollowHandle> = Vec::new();
    for i in 0..3 {
        let token = if i == 2 { &created_token } else { &token };
        let node = HollowNode::join(&second.server.agent_url, &ca, token, &format!("n{i}"))
            .await
            .expect("join through the second instance")
            .start(Duration::from_millis(500))
            .await
            .expect("start");
        nodes.push(node);
    }
    let via_second = &clients[1];
    let mut web = deployment("web", "registry.example/web:1");
    web["spec"]["replicas"] = json!(10);
    let (status, body) = via_second
        .json(
            Method::POST,
            "/apis/apps/v1/namespaces/default/deployments",
            Some(&web),
        )
        .await
        .expect("create deployment");
    assert_eq!(status.as_u16(), 201, "{body}");
    eventually("10 pods bound by the first leader", || {
        all_bound(via_second, 10)
    })
    .await;

    // A steady stream of writes through the third instance while the leader dies.
    let acknowledged: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let writer = {
        let acknowledged = Arc::clone(&acknowledged);
        let via_third = client(&admin, &third);
        tokio::spawn(async move {
            let mut failed = 0usize;
            for i in 0.. {
                if *stopped.borrow_and_update() {
                    break;
                }
                let name = format!("w{i}");
                let map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"i": i.to_string()}});
                match via_third
                    .json(
                        Method::POST,
                        "/api/v1/namespaces/default/configmaps",
                        Some(&map),
                    )
                    .await
                {
                    Ok((status, created)) if status.as_u16() == 201 => {
                        acknowledged
                            .lock()
                            .expect("acknowledged")
                            .push((name, rv(&created)));
                    }
                    _ => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failed
        })
    };
    // berthctl knowing every instance, the first (about to die) first, watching the
    // ConfigMaps the writer creates.
    let failover_admin = first.dir.path().join("admin-failover.conf");
    let servers: Vec<String> = [&second, &third]
        .iter()
        .map(|p| p.server.url.clone())
        .collect();
    let yaml = Kubeconfig::load(&admin)
        .expect("admin.conf")
        .with_failover_servers(&servers)
        .to_yaml()
        .expect("yaml");
    std::fs::write(&failover_admin, yaml).expect("write admin-failover.conf");
    let watched = WatchOutput::default();
    let watcher = {
        let watched = watched.clone();
        let admin = failover_admin.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let cli = berth_ctl::Cli::try_parse_from([
                "berthctl",
                "--kubeconfig",
                admin.to_str().expect("utf-8"),
                "get",
                "configmaps",
                "--watch",
                "-o",
                "name",
            ])
            .expect("arguments");
            let (mut out, mut err) = (watched.clone(), Vec::new());
            let _ = runtime.block_on(berth_ctl::run(cli, &mut out, &mut err));
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let killed = Instant::now();
    first.server.kill_9();
    let survivors = &clients[1..];
    let new_leader = eventually("another control plane leads", || async {
        for (i, c) in survivors.iter().enumerate() {
            if is_leader(c).await == Some(true) {
                return Some(i + 1);
            }
        }
        None
    })
    .await;
    let took = killed.elapsed();
    eprintln!(
        "HA: a new leader (instance {new_leader}) took over {} ms after the leader was killed",
        took.as_millis()
    );
    // berthctl's next command goes to a live instance.
    let (ok, out, err) = common::berthctl(&failover_admin, &["get", "deployments"]).await;
    assert!(ok && out.contains("web"), "{out}{err}");

    // The new leader acts: it schedules the pods of a scale-up.
    scale(via_second, 20).await;
    eventually("20 pods bound by the new leader", || {
        all_bound(via_second, 20)
    })
    .await;
    let acted = killed.elapsed();
    eprintln!(
        "HA: the new leader had bound 10 new pods {} ms after the kill",
        acted.as_millis()
    );

    // The new leader is cut off (SIGSTOP: it can neither renew its lease nor notice):
    // the remaining instance takes over and scales up; when the old leader runs again it
    // steps down, and nothing it still had in flight is written (its lease fences it).
    let (cut_off, other) = if new_leader == 1 {
        (&second, &clients[2])
    } else {
        (&third, &clients[1])
    };
    signal(cut_off.server.pid(), "-STOP");
    eventually("the remaining control plane leads", || async {
        is_leader(other).await.filter(|l| *l).map(|_| ())
    })
    .await;
    // 270 new pods: the ReplicaSet's and the scheduler's batches outgrow one etcd
    // transaction (128 operations by default) and are split to fit.
    scale(other, 300).await;
    eventually("300 pods bound by the third leader", || {
        all_bound(other, 300)
    })
    .await;
    signal(cut_off.server.pid(), "-CONT");
    let resumed = &clients[new_leader];
    eventually("the resumed old leader steps down", || async {
        is_leader(resumed).await.filter(|l| !*l).map(|_| ())
    })
    .await;

    // One etcd member dies: writes go on (through both surviving instances).
    etcd.members[0].kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop.send(true);
    let failed = writer.await.expect("writer");
    let acknowledged = acknowledged.lock().expect("acknowledged").clone();
    // The watch went on at another instance: the last ConfigMap written reached it.
    let last = format!("configmap/{}", acknowledged.last().expect("writes").0);
    eventually("berthctl's watch sees the last write", || async {
        watched
            .text()
            .lines()
            .any(|line| line == last)
            .then_some(())
    })
    .await;
    assert!(
        !watcher.is_finished(),
        "the watch ended: {}",
        watched.text()
    );
    eprintln!(
        "HA: {} writes acknowledged, {failed} refused during the failovers",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() > 20,
        "the writes went on: {}",
        acknowledged.len()
    );
    assert_acknowledged(
        via_second,
        "/api/v1/namespaces/default/configmaps",
        &acknowledged,
        "after the leader was killed",
    )
    .await;
    for (i, c) in survivors.iter().enumerate() {
        let map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("after-{i}")}});
        let (status, body) = eventually("a write with one etcd member down", || async {
            let (status, body) = c
                .json(
                    Method::POST,
                    "/api/v1/namespaces/default/configmaps",
                    Some(&map),
                )
                .await
                .ok()?;
            (status.as_u16() == 201).then_some((status, body))
        })
        .await;
        assert_eq!(status.as_u16(), 201, "{body}");
    }

    // Every pod bound once: the Scheduled events (Kubernetes' aggregation folds a batch's
    // similar ones into one with a count) count one binding per pod, no more.
    let (status, events) = via_second
        .json(Method::GET, "/api/v1/namespaces/default/events", None)
        .await
        .expect("events");
    assert_eq!(status.as_u16(), 200);
    let pods = pods(via_second).await;
    assert_eq!(pods.len(), 300);
    let names: std::collections::BTreeSet<&str> = pods
        .iter()
        .map(|pod| pod["metadata"]["name"].as_str().unwrap_or_default())
        .collect();
    let mut bindings = 0;
    let mut scheduled: BTreeMap<String, u64> = BTreeMap::new();
    for event in events["items"].as_array().into_iter().flatten() {
        if event["reason"] == "Scheduled" {
            let pod = event["involvedObject"]["name"].as_str().unwrap_or_default();
            assert!(names.contains(pod), "a Scheduled event of {pod}: {event}");
            let count = event["count"].as_u64().unwrap_or(1);
            bindings += count;
            *scheduled.entry(pod.to_owned()).or_default() += count;
        }
    }
    assert_eq!(bindings, 300, "one binding per pod: {scheduled:?}");
    drop(nodes);
}
