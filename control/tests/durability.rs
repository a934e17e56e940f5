//! Acknowledged writes survive `kill -9` of the real server process.

mod common;

use axum::http::Method;
use berth_ctl::client::Client;
use serde_json::json;

use common::{ServerProcess, assert_acknowledged, rv};

fn node(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {"podCIDR": "198.18.0.0/24"}})
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = dir.path().join("admin.conf");

    let first = ServerProcess::start(dir.path());
    let client = Client::from_kubeconfig(&admin).expect("client");
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let (status, created) = client
            .json(Method::POST, "/api/v1/nodes", Some(&node(&format!("n{i}"))))
            .await
            .expect("create");
        assert_eq!(status.as_u16(), 201, "{created}");
        acknowledged.push((format!("n{i}"), rv(&created)));
    }
    first.kill_9();

    let second = ServerProcess::start(dir.path());
    // admin.conf was rewritten with the new port; the token and CA are unchanged.
    let client = Client::from_kubeconfig(&admin).expect("client after restart");
    assert!(second.url.starts_with("https://127.0.0.1:"));
    assert_acknowledged(&client, "/api/v1/nodes", &acknowledged, "after kill -9").await;
    let (status, later) = client
        .json(Method::POST, "/api/v1/nodes", Some(&node("after")))
        .await
        .expect("create after restart");
    assert_eq!(status.as_u16(), 201);
    let last = acknowledged.last().map(|(_, rv)| *rv).expect("revision");
    let after = rv(&later);
    assert!(
        after > last,
        "revisions keep increasing across a crash: {after} <= {last}"
    );
    second.kill_9();
}
