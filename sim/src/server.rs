//! A real server on 127.0.0.1 with an ephemeral port, TLS, and a client from its admin.conf.

use std::{future::Future, time::Duration};

use berth_control::{config::Config, server::Server};
use berth_ctl::client::Client;
use clap::Parser as _;
use hyper::Method;
use serde_json::{Value, json};

use crate::hollow::{HollowHandle, HollowNode};

pub struct TestServer {
    pub server: Server,
    pub client: Client,
    // Last: removed after the server is gone.
    pub dir: tempfile::TempDir,
}

/// The API alone: no controllers writing behind the test's back.
pub async fn start() -> TestServer {
    start_with(&["--no-controllers"]).await
}

pub async fn start_with(extra: &[&str]) -> TestServer {
    start_in(tempfile::tempdir().expect("tempdir"), extra).await
}

/// A server on an existing data directory (a restart keeps the store).
pub async fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> TestServer {
    let config = config(dir.path(), extra);
    let server = Server::start(&config).await.expect("server starts");
    let client = Client::from_kubeconfig(&server.admin_config).expect("client from admin.conf");
    TestServer {
        server,
        client,
        dir,
    }
}

/// The configuration of a test server on `dir`, with `extra` flags.
pub fn config(dir: &std::path::Path, extra: &[&str]) -> Config {
    let data_dir = dir.to_str().expect("utf-8 temp path");
    let mut args = vec![
        "berth-control",
        "--data-dir",
        data_dir,
        "--listen",
        "127.0.0.1:0",
        "--agent-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    Config::parse_from(args)
}

pub fn deployment(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image, "ports": [{"containerPort": 8080}]}]},
            },
        },
    })
}

pub const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";

impl TestServer {
    /// Stops the server and starts a new one on the same store.
    pub async fn restart(self, extra: &[&str]) -> TestServer {
        start_in(self.stop().await, extra).await
    }

    /// Stops the server; its data directory, free for another server to open.
    pub async fn stop(self) -> tempfile::TempDir {
        let Self {
            server,
            dir,
            client,
        } = self;
        // Open connections hold the store until they notice the client is gone.
        drop(client);
        server.shutdown().await;
        let store = config(dir.path(), &[]).store_path();
        for _ in 0..200 {
            // Opened and closed again: only whether the lock is free.
            if berth_control::store::RedbStore::open(&store).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        dir
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (status, value) = self.client.json(method, path, body).await.expect("request");
        (status.as_u16(), value)
    }

    pub async fn apply(&self, manifest: &str) -> (u16, Value) {
        let reply = self
            .client
            .request(
                Method::POST,
                "/apply",
                Some((manifest.as_bytes(), "application/yaml")),
            )
            .await
            .expect("apply request");
        (reply.status.as_u16(), reply.json().expect("json reply"))
    }
}

pub fn rv(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("resourceVersion")
}

/// Polls until `check` yields a value; a bounded wait for asynchronous controllers, not
/// a timing assertion.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    for _ in 0..600 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A server with controllers and the bootstrap material hollow nodes join with.
pub struct HollowCluster {
    pub t: TestServer,
    pub ca: String,
    pub token: String,
}

impl HollowCluster {
    pub async fn start(extra: &[&str]) -> Self {
        let t = start_with(extra).await;
        let pki = t.dir.path().join("pki");
        let ca = std::fs::read_to_string(pki.join("ca.crt")).expect("ca.crt");
        let token = std::fs::read_to_string(pki.join("bootstrap-token")).expect("bootstrap-token");
        Self { t, ca, token }
    }

    /// A hollow node heartbeating (and reporting its pods' figures) every 200 ms.
    pub async fn node(&self, name: &str) -> HollowHandle {
        HollowNode::join(&self.t.server.agent_url, &self.ca, &self.token, name)
            .await
            .expect("join")
            .start(std::time::Duration::from_millis(200))
            .await
            .expect("start")
    }

    pub async fn pods(&self) -> Vec<Value> {
        let (_, list) = self
            .t
            .call(Method::GET, "/api/v1/namespaces/default/pods", None)
            .await;
        list["items"].as_array().cloned().unwrap_or_default()
    }
}
