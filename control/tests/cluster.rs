//! The control plane with its controllers against nodes whose "agent" is this test,
//! speaking the REST API (heartbeats and pod status), on a real HTTPS server.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::http::Method;
use berth_api::time as util;
use berth_ctl::client::Client;
use common::{TestServer, eventually, start_with};
use serde_json::{Value, json};

const PODS: &str = "/api/v1/namespaces/default/pods";

/// A stand-in agent for a set of nodes: heartbeats and marks its bound pods running and
/// ready with an address. Stops when `alive` turns false.
fn fake_agent(client: Arc<Client>, node: &'static str, index: u8, alive: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let mut next_ip = 2u8;
        while alive.load(Ordering::SeqCst) {
            let status = json!({"status": {
                "allocatable": {"cpu": "4", "memory": "8Gi"},
                "addresses": [{"type": "InternalIP", "address": format!("198.18.0.{index}")}],
                "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": util::rfc3339_now()}],
            }});
            let _ = client
                .json(
                    Method::PUT,
                    &format!("/api/v1/nodes/{node}/status"),
                    Some(&status),
                )
                .await;
            if let Ok((_, pods)) = client
                .json(
                    Method::GET,
                    &format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}"),
                    None,
                )
                .await
            {
                for pod in pods["items"].as_array().into_iter().flatten() {
                    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
                    // Deleted gracefully: stopped at once (nothing runs), then the final
                    // delete with grace 0 and the uid as precondition, as the kubelet does.
                    if pod.pointer("/metadata/deletionTimestamp").is_some() {
                        let options = json!({"gracePeriodSeconds": 0,
                            "preconditions": {"uid": pod["metadata"]["uid"]}});
                        let _ = client
                            .json(Method::DELETE, &format!("{PODS}/{name}"), Some(&options))
                            .await;
                        continue;
                    }
                    if pod.pointer("/status/podIP").is_some() {
                        continue;
                    }
                    let status = json!({"status": {"phase": "Running", "podIP": format!("198.18.{index}.{next_ip}"),
                        "conditions": [{"type": "Ready", "status": "True"}]}});
                    next_ip = next_ip.wrapping_add(1);
                    let _ = client
                        .json(Method::PUT, &format!("{PODS}/{name}/status"), Some(&status))
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

async fn register(t: &TestServer, node: &str) {
    let body = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": {"zone": node}}});
    let (status, created) = t.call(Method::POST, "/api/v1/nodes", Some(&body)).await;
    assert_eq!(status, 201, "{created}");
}

async fn pods(t: &TestServer, selector: &str) -> Vec<Value> {
    let (_, list) = t
        .call(
            Method::GET,
            &format!("{PODS}?labelSelector={selector}"),
            None,
        )
        .await;
    list["items"].as_array().cloned().unwrap_or_default()
}

fn manifest(image: &str, replicas: u32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  strategy: {{rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: web, image: "{image}", ports: [{{name: http, containerPort: 8080}}],
                     resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: http}}]
"#
    )
}

fn images(pods: &[Value]) -> Vec<String> {
    let mut images: Vec<String> = pods
        .iter()
        .map(|p| {
            p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    images.sort();
    images
}

#[tokio::test]
async fn deployment_rolls_out_schedules_serves_and_heals() {
    let t = start_with(&["--node-grace", "1", "--pod-eviction-timeout", "1"]).await;
    let client = Arc::new(Client::from_kubeconfig(&t.server.admin_config).expect("client"));
    let n1_alive = Arc::new(AtomicBool::new(true));
    let n2_alive = Arc::new(AtomicBool::new(true));
    register(&t, "n1").await;
    register(&t, "n2").await;
    fake_agent(Arc::clone(&client), "n1", 1, Arc::clone(&n1_alive));
    fake_agent(Arc::clone(&client), "n2", 2, Arc::clone(&n2_alive));

    let (status, body) = t.apply(&manifest("echo:1", 4)).await;
    assert_eq!(status, 200, "{body}");

    // Scheduled across both nodes, running, and behind the service.
    let running = eventually("4 ready pods", || async {
        let pods = pods(&t, "app%3Dweb").await;
        (pods.len() == 4 && pods.iter().all(|p| p.pointer("/status/podIP").is_some()))
            .then_some(pods)
    })
    .await;
    let on_n1 = running
        .iter()
        .filter(|p| p["spec"]["nodeName"] == "n1")
        .count();
    assert_eq!(on_n1, 2, "replicas are spread evenly");
    eventually("endpoints with 4 addresses", || async {
        let (_, ep) = t
            .call(
                Method::GET,
                "/api/v1/namespaces/default/endpoints/web",
                None,
            )
            .await;
        let ready = ep
            .pointer("/subsets/0/addresses")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        (ready == 4 && ep["subsets"][0]["ports"][0]["port"] == 8080).then_some(())
    })
    .await;
    eventually("deployment status", || async {
        let (_, d) = t
            .call(
                Method::GET,
                "/apis/apps/v1/namespaces/default/deployments/web",
                None,
            )
            .await;
        (d.pointer("/status/readyReplicas") == Some(&json!(4))
            && d.pointer("/status/conditions/0/status") == Some(&json!("True")))
        .then_some(())
    })
    .await;

    // Rolling update to a new image: ends with only new pods.
    t.apply(&manifest("echo:2", 4)).await;
    eventually("rollout to echo:2", || async {
        let pods = pods(&t, "app%3Dweb").await;
        (images(&pods) == ["echo:2"; 4]
            && pods.iter().all(|p| p.pointer("/status/podIP").is_some()))
        .then_some(())
    })
    .await;

    // rollout undo: back to echo:1, through the same rolling update.
    let (status, _) = t
        .call(
            Method::POST,
            "/apis/apps/v1/namespaces/default/deployments/web/rollback",
            None,
        )
        .await;
    assert_eq!(status, 200);
    eventually("rollback to echo:1", || async {
        (images(&pods(&t, "app%3Dweb").await) == ["echo:1"; 4]).then_some(())
    })
    .await;

    // A node stops heartbeating: its pods are evicted and replaced on the live node.
    n2_alive.store(false, Ordering::SeqCst);
    eventually("all pods on n1", || async {
        let pods = pods(&t, "app%3Dweb").await;
        (pods.len() == 4 && pods.iter().all(|p| p["spec"]["nodeName"] == "n1")).then_some(())
    })
    .await;
    let (_, n2) = t.call(Method::GET, "/api/v1/nodes/n2", None).await;
    assert_eq!(n2["status"]["conditions"][0]["status"], "Unknown");

    // Scale down, then delete: the garbage collector removes ReplicaSets and pods.
    let (status, _) = t
        .call(
            Method::PUT,
            "/apis/apps/v1/namespaces/default/deployments/web/scale",
            Some(&json!({"spec": {"replicas": 1}})),
        )
        .await;
    assert_eq!(status, 200);
    eventually("one pod", || async {
        (pods(&t, "app%3Dweb").await.len() == 1).then_some(())
    })
    .await;
    let (status, body) = t
        .call(
            Method::DELETE,
            "/apis/apps/v1/namespaces/default/deployments/web",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually("nothing left", || async {
        let (_, sets) = t
            .call(
                Method::GET,
                "/apis/apps/v1/namespaces/default/replicasets",
                None,
            )
            .await;
        (pods(&t, "app%3Dweb").await.is_empty()
            && sets["items"].as_array().is_some_and(Vec::is_empty))
        .then_some(())
    })
    .await;
    n1_alive.store(false, Ordering::SeqCst);
}

#[tokio::test]
async fn unschedulable_pods_say_why_and_schedule_when_a_node_fits() {
    let t = start_with(&[]).await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "big"},
        "spec": {"nodeSelector": {"zone": "z1"}, "containers": [{"name": "c", "image": "i"}]}});
    let (status, _) = t.call(Method::POST, PODS, Some(&pod)).await;
    assert_eq!(status, 201);
    eventually("FailedScheduling event", || async {
        let (_, events) = t
            .call(
                Method::GET,
                "/api/v1/namespaces/default/events?fieldSelector=reason%3DFailedScheduling",
                None,
            )
            .await;
        events["items"]
            .as_array()
            .and_then(|e| e.first())
            .map(|e| e["message"].clone())
    })
    .await;
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "z1-node", "labels": {"zone": "z1"}}});
    t.call(Method::POST, "/api/v1/nodes", Some(&node)).await;
    let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": util::rfc3339_now()}]}});
    let (status, body) = t
        .call(Method::PUT, "/api/v1/nodes/z1-node/status", Some(&ready))
        .await;
    assert_eq!(status, 200, "{body}");
    eventually("binding", || async {
        let (_, pod) = t.call(Method::GET, &format!("{PODS}/big"), None).await;
        (pod["spec"]["nodeName"] == "z1-node").then_some(())
    })
    .await;
}
