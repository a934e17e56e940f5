//! Backup and restore with the real binaries: `berthctl snapshot save`, the cluster is
//! wiped, `berth-control snapshot restore` into a new data directory, a new server on it:
//! every object is back (Secrets readable), a node certificate issued before still
//! authenticates its node, and a watch from a resourceVersion of the old cluster is told
//! to list again (410) instead of waiting for revisions that will never come.

mod common;

use axum::http::Method;
use berth_api::{
    agent::{HeartbeatRequest, JoinRequest, agent_client::AgentClient},
    kubeconfig::Kubeconfig,
};
use berth_ctl::client::Client;
use rcgen::{CertificateParams, DnType, KeyPair};
use serde_json::{Value, json};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use common::{ServerProcess, berthctl, rv};

async fn agent(url: &str, ca: &str, identity: Option<Identity>) -> AgentClient<Channel> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    let channel = Channel::from_shared(url.to_owned())
        .expect("url")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    AgentClient::new(channel)
}

async fn items(client: &Client, path: &str) -> Vec<Value> {
    let (status, list) = client.json(Method::GET, path, None).await.expect("list");
    assert_eq!(status.as_u16(), 200, "{list}");
    let mut items = list["items"].as_array().cloned().unwrap_or_default();
    items.sort_by_key(|i| {
        i["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    items
}

/// What must survive a restore: identity, content and spec (not the resourceVersion,
/// which the restored store renumbers above the old ones).
fn essence(item: &Value) -> Value {
    json!({
        "name": item["metadata"]["name"],
        "namespace": item["metadata"]["namespace"],
        "uid": item["metadata"]["uid"],
        "labels": item["metadata"]["labels"],
        "spec": item["spec"],
        "data": item["data"],
    })
}

const COLLECTIONS: &[&str] = &[
    "/api/v1/namespaces",
    "/api/v1/nodes",
    "/api/v1/namespaces/team/configmaps",
    "/api/v1/namespaces/team/secrets",
    "/api/v1/namespaces/team/services",
    "/apis/apps/v1/namespaces/team/deployments",
    "/apis/rbac.authorization.k8s.io/v1/clusterroles",
];

#[tokio::test]
async fn snapshot_save_wipe_restore_brings_everything_back() {
    let old_dir = tempfile::tempdir().expect("tempdir");
    let keep = tempfile::tempdir().expect("tempdir");
    let old = ServerProcess::start_with(old_dir.path(), &["--no-controllers"]);
    let admin = keep.path().join("admin.conf");
    std::fs::copy(old_dir.path().join("admin.conf"), &admin).expect("keep admin.conf");
    let client = Client::from_kubeconfig(&admin).expect("client");
    let manifest = keep.path().join("app.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: team}\ndata: {mode: fast}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: password, namespace: team}\nstringData: {password: hunter2}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: team}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: team}\n\
         spec: {replicas: 2, selector: {matchLabels: {app: web}}, template: {metadata: {labels: {app: web}}, spec: {containers: [{name: web, image: nginx}]}}}\n",
    )
    .expect("manifest");
    let (ok, _, err) = berthctl(&admin, &["apply", "-f", manifest.to_str().expect("utf-8")]).await;
    assert!(ok, "{err}");

    // A node joins the old cluster: its certificate must work at the restored one.
    let ca = std::fs::read_to_string(old_dir.path().join("pki/ca.crt")).expect("ca");
    let token = std::fs::read_to_string(old_dir.path().join("pki/bootstrap-token")).expect("token");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, "n1");
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .expect("csr");
    let joined = agent(&old.agent_url, &ca, None)
        .await
        .join(JoinRequest {
            bootstrap_token: token.trim().to_owned(),
            node_name: "n1".to_owned(),
            csr_pem,
        })
        .await
        .expect("join")
        .into_inner();
    let identity = Identity::from_pem(&joined.certificate_pem, key.serialize_pem());

    let mut before = Vec::new();
    for path in COLLECTIONS {
        before.push(
            items(&client, path)
                .await
                .iter()
                .map(essence)
                .collect::<Vec<_>>(),
        );
    }
    let old_configmap = &items(&client, "/api/v1/namespaces/team/configmaps").await[0];
    let old_version = rv(old_configmap);

    let file = keep.path().join("backup.json");
    let (ok, out, err) =
        berthctl(&admin, &["snapshot", "save", file.to_str().expect("utf-8")]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("Saved "), "{out}");

    // The old cluster is gone, machine and all.
    old.kill_9();
    drop(old_dir);

    let new_dir = tempfile::tempdir().expect("tempdir");
    let restore = std::process::Command::new(env!("CARGO_BIN_EXE_berth-control"))
        .args(["snapshot", "restore"])
        .arg(&file)
        .arg("--data-dir")
        .arg(new_dir.path())
        .output()
        .expect("berth-control snapshot restore");
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    // Restoring twice into the same directory is refused, and changes nothing.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_berth-control"))
        .args(["snapshot", "restore"])
        .arg(&file)
        .arg("--data-dir")
        .arg(new_dir.path())
        .output()
        .expect("berth-control snapshot restore");
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("restore into a new data directory"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let new = ServerProcess::start_with(new_dir.path(), &["--no-controllers"]);
    let mut settings = Kubeconfig::load(&admin)
        .expect("admin.conf")
        .settings()
        .expect("settings");
    settings.server = new.url.clone();
    let client = Client::new(settings).expect("the old admin credentials work");
    for (path, expected) in COLLECTIONS.iter().zip(&before) {
        let now: Vec<Value> = items(&client, path).await.iter().map(essence).collect();
        assert_eq!(&now, expected, "{path} after the restore");
    }
    let (_, secret) = client
        .json(
            Method::GET,
            "/api/v1/namespaces/team/secrets/password",
            None,
        )
        .await
        .expect("secret");
    assert_eq!(secret["data"]["password"], "aHVudGVyMg==", "{secret}");

    // The node's certificate from the old cluster still identifies it.
    agent(&new.agent_url, &ca, Some(identity))
        .await
        .heartbeat(HeartbeatRequest::default())
        .await
        .expect("the node's old certificate works at the restored cluster");

    // A watch from the old cluster's resourceVersion: 410 Gone, list again.
    let (status, gone) = client
        .json(
            Method::GET,
            &format!("/api/v1/namespaces/team/configmaps?watch=true&resourceVersion={old_version}"),
            None,
        )
        .await
        .expect("watch");
    assert_eq!(
        (status.as_u16(), gone["reason"].as_str()),
        (410, Some("Expired")),
        "{gone}"
    );
    new.kill_9();
}
