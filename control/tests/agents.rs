//! The agents' gRPC API with hollow nodes: bootstrap join, mTLS identity, pod and
//! service watches, status reports, and failover when a node dies.

mod common;

use std::time::Duration;

use axum::http::Method;
use berth_api::agent::{
    HeartbeatRequest, JoinRequest, PodConfigRequest, PodDeletion, PodEventReport, PodStatusReport,
    WatchRequest, agent_client::AgentClient, watch_event::Type,
};
use berth_sim::hollow::{HollowHandle, HollowNode};
use common::{TestServer, eventually, start_with};
use serde_json::Value;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig},
};

struct Cluster {
    t: TestServer,
    ca: String,
    token: String,
}

/// Short node grace and eviction timeouts, for failover tests.
async fn cluster() -> Cluster {
    cluster_with(&["--node-grace", "1", "--pod-eviction-timeout", "1"]).await
}

async fn cluster_with(extra: &[&str]) -> Cluster {
    let t = start_with(extra).await;
    let pki = t.dir.path().join("pki");
    let ca = std::fs::read_to_string(pki.join("ca.crt")).expect("ca.crt");
    let token = std::fs::read_to_string(pki.join("bootstrap-token")).expect("bootstrap-token");
    Cluster { t, ca, token }
}

impl Cluster {
    async fn node(&self, name: &str) -> HollowHandle {
        self.node_with_heartbeat(name, Duration::from_millis(200))
            .await
    }

    async fn node_with_heartbeat(&self, name: &str, every: Duration) -> HollowHandle {
        HollowNode::join(&self.t.server.agent_url, &self.ca, &self.token, name)
            .await
            .expect("join")
            .start(every)
            .await
            .expect("start")
    }

    async fn anonymous(&self) -> AgentClient<Channel> {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca));
        let channel = Channel::from_shared(self.t.server.agent_url.clone())
            .expect("url")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("connect");
        AgentClient::new(channel)
    }

    async fn pods(&self) -> Vec<Value> {
        let (_, list) = self
            .t
            .call(Method::GET, "/api/v1/namespaces/default/pods", None)
            .await;
        list["items"].as_array().cloned().unwrap_or_default()
    }
}

fn manifest(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{containers: [{{name: web, image: 'echo:1', ports: [{{containerPort: 8080}}]}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
    )
}

fn in_cidr(ip: &str, cidr: &str) -> bool {
    let prefix = cidr.trim_end_matches("0/24");
    ip.starts_with(prefix)
}

#[tokio::test]
async fn join_requires_the_bootstrap_token_and_calls_require_a_node_certificate() {
    let c = cluster().await;
    let mut anonymous = c.anonymous().await;
    let wrong = anonymous
        .join(JoinRequest {
            bootstrap_token: "guess".to_owned(),
            node_name: "n1".to_owned(),
            csr_pem: String::new(),
        })
        .await
        .expect_err("wrong token");
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let bad_csr = anonymous
        .join(JoinRequest {
            bootstrap_token: c.token.clone(),
            node_name: "n1".to_owned(),
            csr_pem: "not a csr".to_owned(),
        })
        .await
        .expect_err("bad csr");
    assert_eq!(bad_csr.code(), Code::InvalidArgument);
    let no_cert = anonymous
        .heartbeat(HeartbeatRequest::default())
        .await
        .expect_err("no client certificate");
    assert_eq!(no_cert.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn hollow_nodes_run_a_deployment_and_fail_over() {
    let c = cluster().await;
    let n0 = c.node("n0").await;
    let n1 = c.node("n1").await;
    let n2 = c.node("n2").await;
    let cidrs = [&n0.pod_cidr, &n1.pod_cidr, &n2.pod_cidr];
    assert!(
        cidrs[0] != cidrs[1] && cidrs[1] != cidrs[2] && cidrs[0] != cidrs[2],
        "{cidrs:?}"
    );
    let (_, node) = c.t.call(Method::GET, "/api/v1/nodes/n0", None).await;
    assert_eq!(node["spec"]["podCIDR"], n0.pod_cidr.as_str());
    assert_eq!(node["status"]["conditions"][0]["status"], "True");

    let (status, body) = c.t.apply(&manifest(6)).await;
    assert_eq!(status, 200, "{body}");
    eventually("two running pods per node", || async {
        let all = [n0.stats(), n1.stats(), n2.stats()];
        all.iter().all(|s| s.pods.len() == 2).then_some(())
    })
    .await;
    for node in [&n0, &n1, &n2] {
        for ip in node.stats().pods.values() {
            assert!(
                in_cidr(ip, &node.pod_cidr),
                "{ip} outside {}",
                node.pod_cidr
            );
        }
    }
    eventually("endpoints everywhere", || async {
        let (_, ep) =
            c.t.call(
                Method::GET,
                "/api/v1/namespaces/default/endpoints/web",
                None,
            )
            .await;
        let ready = ep
            .pointer("/subsets/0/addresses")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let known = [&n0, &n1, &n2].iter().all(|n| {
            n.stats().services.contains("Endpoints default/web")
                && n.stats().services.contains("Service default/web")
        });
        (ready == 6 && known).then_some(())
    })
    .await;

    // A node may only report on its own pods.
    let foreign = c
        .pods()
        .await
        .into_iter()
        .find(|p| p["spec"]["nodeName"] == "n1")
        .expect("a pod on n1");
    let denied = n0
        .client()
        .report_pod_status(PodStatusReport {
            namespace: "default".to_owned(),
            name: foreign["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            status_json: b"{\"phase\": \"Failed\"}".to_vec(),
        })
        .await
        .expect_err("n0 reporting for n1");
    assert_eq!(denied.code(), Code::PermissionDenied);
    // Nor give its own pod an address outside its pod range.
    let own = c
        .pods()
        .await
        .into_iter()
        .find(|p| p["spec"]["nodeName"] == "n0")
        .expect("a pod on n0");
    let spoofed = n0
        .client()
        .report_pod_status(PodStatusReport {
            namespace: "default".to_owned(),
            name: own["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            status_json: b"{\"phase\": \"Running\", \"podIP\": \"198.18.0.99\"}".to_vec(),
        })
        .await
        .expect_err("an address outside n0's range");
    assert_eq!(spoofed.code(), Code::PermissionDenied, "{spoofed:?}");
    // Nor end another node's pod's deletion, nor one the control plane did not start.
    let deletion = |pod: &Value| PodDeletion {
        namespace: "default".to_owned(),
        name: pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        uid: pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    };
    let n1_client = n1.client();
    let denied = n0
        .client()
        .confirm_pod_deletion(deletion(&foreign))
        .await
        .expect_err("n0 ending n1's pod");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let refused = n1_client
        .clone()
        .confirm_pod_deletion(deletion(&foreign))
        .await
        .expect_err("a pod nobody deleted");
    assert_eq!(refused.code(), Code::FailedPrecondition);

    // n2's agent dies: its pods are evicted and rescheduled onto n0 and n1.
    drop(n2);
    eventually("six pods on the two live nodes", || async {
        let pods = c.pods().await;
        let live = pods
            .iter()
            .filter(|p| p["spec"]["nodeName"] != "n2")
            .count();
        let running = n0.stats().pods.len() + n1.stats().pods.len();
        (pods.len() == 6 && live == 6 && running == 6).then_some(())
    })
    .await;
}

/// A deleted Node's certificate is refused within seconds, also by the watches it holds
/// open.
#[tokio::test]
async fn a_deleted_nodes_certificate_is_refused_within_seconds() {
    let c = cluster_with(&["--no-controllers"]).await;
    let node = HollowNode::join(&c.t.server.agent_url, &c.ca, &c.token, "gone")
        .await
        .expect("join");
    let mut client = node.client();
    let mut watch = client
        .watch_services(WatchRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let heartbeat = || HeartbeatRequest {
        status_json: b"{}".to_vec(),
        usage: None,
    };
    client.heartbeat(heartbeat()).await.expect("heartbeat");
    let (status, _) = c.t.call(Method::DELETE, "/api/v1/nodes/gone", None).await;
    assert_eq!(status, 200);
    let deleted = std::time::Instant::now();
    let refused = loop {
        match client.heartbeat(heartbeat()).await {
            Err(refused) => break refused,
            Ok(_) => {
                assert!(
                    deleted.elapsed() < Duration::from_secs(5),
                    "heartbeats still accepted 5 s after the Node's deletion"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    println!("heartbeats refused after {:?}", deleted.elapsed());
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the watch ends within 5 s");
    let status = ended.expect("ended with an error");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    println!(
        "the watch of the deleted node ended after {:?}",
        deleted.elapsed()
    );
}

/// The first bootstrap token expires like kubeadm's (`--bootstrap-token-ttl`).
#[tokio::test]
async fn an_expired_bootstrap_token_cannot_join() {
    let c = cluster_with(&["--bootstrap-token-ttl", "1"]).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let refused = HollowNode::join(&c.t.server.agent_url, &c.ca, &c.token, "late")
        .await
        .err()
        .expect("a join with an expired token");
    let berth_sim::hollow::HollowError::Rpc(status) = refused else {
        panic!("{refused}");
    };
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

#[tokio::test]
async fn watches_resync_after_compaction() {
    let c = cluster().await;
    let node = HollowNode::join(&c.t.server.agent_url, &c.ca, &c.token, "n0")
        .await
        .expect("join");
    let mut client = node.client();
    // Fresh watch: snapshot (the joined node itself), then SYNCED with the revision to
    // resume from.
    let mut fresh = client
        .watch_services(WatchRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let synced = loop {
        let event = fresh.message().await.expect("read").expect("event");
        if event.r#type() != Type::Added {
            break event;
        }
        assert_eq!(
            event.kind, "Node",
            "only the node exists before anything is applied"
        );
    };
    assert_eq!(synced.r#type(), Type::Synced);
    assert!(!synced.resource_version.is_empty());

    let (status, _) = c.t.apply(&manifest(1)).await;
    assert_eq!(status, 200);
    let store = c.t.server.store();
    let head = tokio::task::spawn_blocking(move || {
        let head = store.revision()?;
        store.compact(head).map(|()| head)
    })
    .await
    .expect("join")
    .expect("compact");
    assert!(head > 1);
    let mut stale = client
        .watch_pods(WatchRequest {
            resource_version: "1".to_owned(),
            ..WatchRequest::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let expired = stale.message().await.expect("read").expect("event");
    assert_eq!(
        expired.r#type(),
        Type::Expired,
        "the agent must resync from a snapshot"
    );
}

#[tokio::test]
async fn many_hollow_nodes() {
    const NODES: usize = 20;
    const REPLICAS: u32 = 160;
    // Default node grace: heartbeats are store writes, so they stay infrequent here.
    let c = cluster_with(&[]).await;
    let mut nodes = Vec::new();
    for i in 0..NODES {
        nodes.push(
            c.node_with_heartbeat(&format!("hollow-{i}"), Duration::from_secs(10))
                .await,
        );
    }
    let (status, _) = c.t.apply(&manifest(REPLICAS)).await;
    assert_eq!(status, 200);
    eventually("every replica running", || async {
        let running: usize = nodes.iter().map(|n| n.stats().pods.len()).sum();
        (running == REPLICAS as usize).then_some(())
    })
    .await;
    let per_node: Vec<usize> = nodes.iter().map(|n| n.stats().pods.len()).collect();
    assert!(
        per_node.iter().all(|n| *n == 8),
        "spread evenly: {per_node:?}"
    );
    // The Service's endpoints come in slices of at most 100 (discovery.k8s.io/v1).
    let path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dweb";
    let sizes = eventually("every replica in a ready endpoint of a slice", || async {
        let (_, list) = c.t.call(Method::GET, path, None).await;
        let slices = list["items"].as_array().cloned().unwrap_or_default();
        let ready = |slice: &Value| {
            slice["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["conditions"]["ready"] == true)
                .count()
        };
        let sizes: Vec<usize> = slices.iter().map(ready).collect();
        (sizes.iter().sum::<usize>() == REPLICAS as usize).then_some(sizes)
    })
    .await;
    let mut sizes = sizes;
    sizes.sort_unstable();
    assert_eq!(sizes, [60, 100]);

    // The agents' Services watch: the slices in place of the Endpoints.
    let mut watch = nodes[0]
        .client()
        .watch_services(WatchRequest {
            endpoint_slices: true,
            ..WatchRequest::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    loop {
        let event = watch.message().await.expect("read").expect("event");
        if event.r#type() != Type::Added {
            break;
        }
        *kinds.entry(event.kind).or_default() += 1;
    }
    assert!(
        kinds.get("EndpointSlice").is_some_and(|n| *n >= 2),
        "web's two slices at least: {kinds:?}"
    );
    assert!(!kinds.contains_key("Endpoints"), "{kinds:?}");
    assert!(
        kinds.contains_key("Service") && kinds.contains_key("Node"),
        "{kinds:?}"
    );
}

/// With `node_batches` the Services watch sends Nodes as batches of what agents read of
/// them: every Node in one message first, then each interval's changes, resumed from
/// their own revision; the hollow nodes (the watch client shared with the agent) keep
/// the Nodes from them.
#[tokio::test]
async fn nodes_reach_agents_in_shared_batches() {
    use berth_api::agent::NodeBatch;
    use prost::Message as _;

    let c = cluster_with(&["--node-grace", "40"]).await;
    let a = c.node_with_heartbeat("a", Duration::from_secs(1)).await;
    let batches = WatchRequest {
        node_batches: true,
        ..WatchRequest::default()
    };
    let mut watch = a
        .client()
        .watch_services(batches.clone())
        .await
        .expect("watch")
        .into_inner();
    let mut firsts = Vec::new();
    let synced = loop {
        let event = watch.message().await.expect("read").expect("event");
        if event.r#type() == Type::Synced {
            break event.resource_version;
        }
        firsts.push(event);
    };
    assert!(
        firsts
            .iter()
            .all(|e| e.kind != "Node" || e.r#type() == Type::Nodes),
        "no Node goes as an event of its own"
    );
    let complete = firsts
        .iter()
        .find(|e| e.r#type() == Type::Nodes)
        .expect("the Nodes first");
    let nodes = NodeBatch::decode(complete.node_batch.as_slice()).expect("a NodeBatch");
    assert!(nodes.complete);
    assert_eq!(nodes.nodes.len(), 1);
    assert_eq!(
        (
            nodes.nodes[0].name.as_str(),
            nodes.nodes[0].pod_cidr.as_str()
        ),
        ("a", a.pod_cidr.as_str())
    );
    assert_eq!(nodes.nodes[0].addresses[0].r#type, "InternalIP");

    // A node joins: its record reaches the watch in a batch, with its address once its
    // first status is written.
    let b = c.node_with_heartbeat("b", Duration::from_secs(1)).await;
    let nodes_rv = loop {
        let event = watch.message().await.expect("read").expect("event");
        if event.r#type() != Type::Nodes {
            continue;
        }
        let batch = NodeBatch::decode(event.node_batch.as_slice()).expect("a NodeBatch");
        assert!(!batch.complete);
        assert!(batch.nodes.iter().all(|n| n.name == "b"), "{batch:?}");
        if batch.nodes.iter().any(|n| !n.addresses.is_empty()) {
            break event.resource_version;
        }
    };
    eventually("node a's watch to hold node b", async || {
        a.stats().services.contains("Node /b").then_some(())
    })
    .await;

    // Resumed from both revisions: no Nodes first; b's deletion comes as a batch.
    drop(watch);
    let mut resumed = a
        .client()
        .watch_services(WatchRequest {
            resource_version: synced.clone(),
            nodes_resource_version: nodes_rv,
            ..batches.clone()
        })
        .await
        .expect("watch")
        .into_inner();
    drop(b);
    let (status, _) = c.t.call(Method::DELETE, "/api/v1/nodes/b", None).await;
    assert_eq!(status, 200);
    let event = loop {
        let event = resumed.message().await.expect("read").expect("event");
        if event.r#type() == Type::Nodes {
            break event;
        }
    };
    let batch = NodeBatch::decode(event.node_batch.as_slice()).expect("a NodeBatch");
    assert!(!batch.complete, "resumed, not listed again: {batch:?}");
    assert_eq!(
        batch
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.deleted))
            .collect::<Vec<_>>(),
        [("b", true)]
    );
    eventually("node a's watch to drop node b", async || {
        (!a.stats().services.contains("Node /b")).then_some(())
    })
    .await;

    // Resumed from before what the batches reach back: every Node at once.
    let mut old = a
        .client()
        .watch_services(WatchRequest {
            resource_version: synced,
            nodes_resource_version: "1".to_owned(),
            ..batches
        })
        .await
        .expect("watch")
        .into_inner();
    let event = old.message().await.expect("read").expect("event");
    assert_eq!(event.r#type(), Type::Nodes);
    let batch = NodeBatch::decode(event.node_batch.as_slice()).expect("a NodeBatch");
    assert!(batch.complete);
    assert_eq!(
        batch
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
}

/// A heartbeat that changes nothing but the time is not written while the stored one is
/// fresh (every Node write goes to every agent), and a changed status is written at once.
#[tokio::test]
async fn unchanged_heartbeats_do_not_rewrite_the_node() {
    let c = cluster_with(&["--node-grace", "40"]).await;
    let node = HollowNode::join(&c.t.server.agent_url, &c.ca, &c.token, "steady")
        .await
        .expect("join");
    let heartbeat = |address: &str| HeartbeatRequest {
        status_json: serde_json::to_vec(&serde_json::json!({
            "addresses": [{"type": "InternalIP", "address": address}],
        }))
        .expect("status"),
        usage: None,
    };
    let beat = async |address: &str| {
        node.client()
            .heartbeat(heartbeat(address))
            .await
            .expect("heartbeat")
            .into_inner()
            .resource_version
    };
    let first = beat("198.18.7.1").await;
    // Nobody joins under the name of a live node (here, where a node stays live for 40 s
    // whatever the machine's load), nor under the control plane's.
    for (name, code) in [
        ("steady", Code::AlreadyExists),
        ("localhost", Code::InvalidArgument),
    ] {
        let refused = HollowNode::join(&c.t.server.agent_url, &c.ca, &c.token, name)
            .await
            .err()
            .unwrap_or_else(|| panic!("a second join as {name}"));
        let berth_sim::hollow::HollowError::Rpc(status) = refused else {
            panic!("{refused}");
        };
        assert_eq!(status.code(), code, "{status:?}");
    }
    let again = beat("198.18.7.1").await;
    assert_eq!(
        first, again,
        "an unchanged status within 10 s is not rewritten"
    );
    let moved = beat("198.18.7.2").await;
    assert_ne!(first, moved, "a changed address is written at once");
    let (_, stored) = c.t.call(Method::GET, "/api/v1/nodes/steady", None).await;
    assert_eq!(stored["status"]["addresses"][0]["address"], "198.18.7.2");
    assert_eq!(stored["metadata"]["resourceVersion"], moved.as_str());
    // An address nobody could reach the node at is refused; the stored one stays.
    for address in ["127.0.0.1", "0.0.0.0", "224.0.0.1", "node-a"] {
        let refused = node
            .client()
            .heartbeat(heartbeat(address))
            .await
            .expect_err(address);
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
    let (_, stored) = c.t.call(Method::GET, "/api/v1/nodes/steady", None).await;
    assert_eq!(stored["status"]["addresses"][0]["address"], "198.18.7.2");
}

/// A node reads the ConfigMaps and Secrets its own pods use and nothing else (Kubernetes'
/// node authorizer); a used one that does not exist is NOT_FOUND.
#[tokio::test]
async fn nodes_read_only_the_config_their_pods_use() {
    let c = cluster_with(&["--no-controllers"]).await;
    let (status, body) =
        c.t.apply(
            "apiVersion: v1
kind: ConfigMap
metadata: {name: app}
data: {mode: fast}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: other}
data: {x: y}
---
apiVersion: v1
kind: Secret
metadata: {name: db}
stringData: {password: hunter2}
---
apiVersion: v1
kind: Secret
metadata: {name: registry-login}
type: kubernetes.io/dockerconfigjson
stringData: {.dockerconfigjson: '{\"auths\": {}}'}
---
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  nodeName: n1
  imagePullSecrets: [{name: registry-login}]
  containers:
  - name: web
    image: berth/echo:v1
    env: [{name: MODE, valueFrom: {configMapKeyRef: {name: app, key: mode}}}]
    envFrom: [{secretRef: {name: db}}, {configMapRef: {name: later}}]
",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let c = &c;
    let join = |name: &'static str| async move {
        HollowNode::join(&c.t.server.agent_url, &c.ca, &c.token, name)
            .await
            .expect("join")
            .client()
    };
    let (n1, n2) = (join("n1").await, join("n2").await);
    let get = |kind: &str, name: &str| PodConfigRequest {
        kind: kind.to_owned(),
        namespace: "default".to_owned(),
        name: name.to_owned(),
    };
    let config_map = n1
        .clone()
        .get_pod_config(get("ConfigMap", "app"))
        .await
        .expect("n1 reads its pod's ConfigMap")
        .into_inner();
    let config_map: Value = serde_json::from_slice(&config_map.object_json).expect("json");
    assert_eq!(config_map["data"]["mode"], "fast");
    let secret = n1
        .clone()
        .get_pod_config(get("Secret", "db"))
        .await
        .expect("n1 reads its pod's Secret")
        .into_inner();
    let secret: Value = serde_json::from_slice(&secret.object_json).expect("json");
    assert_eq!(secret["data"]["password"], "aHVudGVyMg==");
    n1.clone()
        .get_pod_config(get("Secret", "registry-login"))
        .await
        .expect("n1 reads its pod's image pull Secret");
    for (client, kind, name, code) in [
        (&n1, "ConfigMap", "other", Code::PermissionDenied),
        (&n2, "ConfigMap", "app", Code::PermissionDenied),
        (&n2, "Secret", "db", Code::PermissionDenied),
        (&n2, "Secret", "registry-login", Code::PermissionDenied),
        (&n1, "ConfigMap", "later", Code::NotFound),
        (&n1, "Pod", "web", Code::InvalidArgument),
    ] {
        let error = client
            .clone()
            .get_pod_config(get(kind, name))
            .await
            .expect_err("refused");
        assert_eq!(error.code(), code, "{kind} {name}: {error}");
    }
}

#[tokio::test]
async fn nodes_record_events_only_about_their_own_pods() {
    let c = cluster_with(&["--no-controllers"]).await;
    let (status, body) =
        c.t.apply(
            "apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  nodeName: n1
  containers: [{name: web, image: berth/echo:v1}]
",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, pod) =
        c.t.call(Method::GET, "/api/v1/namespaces/default/pods/web", None)
            .await;
    let uid = pod["metadata"]["uid"].as_str().expect("uid").to_owned();
    let join = |name: &'static str| {
        let c = &c;
        async move {
            HollowNode::join(&c.t.server.agent_url, &c.ca, &c.token, name)
                .await
                .expect("join")
                .client()
        }
    };
    let (n1, n2) = (join("n1").await, join("n2").await);
    let event = |uid: &str, reason: &str, type_: &str| PodEventReport {
        namespace: "default".to_owned(),
        name: "web".to_owned(),
        uid: uid.to_owned(),
        reason: reason.to_owned(),
        message: format!("{reason} image \"berth/echo:v1\""),
        r#type: type_.to_owned(),
    };
    n1.clone()
        .record_pod_event(event(&uid, "Pulling", "Normal"))
        .await
        .expect("n1 records an event about its pod");
    // Another pod under the same name: dropped, not refused.
    n1.clone()
        .record_pod_event(event("an-old-uid", "Stale", "Normal"))
        .await
        .expect("a stale uid is dropped");
    for (client, report, code) in [
        (&n2, event(&uid, "Forged", "Normal"), Code::PermissionDenied),
        (&n1, event(&uid, "Odd", "Loud"), Code::InvalidArgument),
    ] {
        let error = client
            .clone()
            .record_pod_event(report)
            .await
            .expect_err("refused");
        assert_eq!(error.code(), code, "{error}");
    }
    let (_, events) =
        c.t.call(Method::GET, "/api/v1/namespaces/default/events", None)
            .await;
    let recorded: Vec<(&str, &str, &str)> = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|event| event["involvedObject"]["name"] == "web")
        .map(|event| {
            (
                event["reason"].as_str().unwrap_or_default(),
                event["source"]["host"].as_str().unwrap_or_default(),
                event["involvedObject"]["uid"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(recorded, [("Pulling", "n1", uid.as_str())]);
}
