//! The HorizontalPodAutoscaler and the metrics API over hollow nodes that report load
//! figures a test sets, through the real gRPC agent API; `berthctl top` on top of it.

mod common;

use std::time::{Duration, Instant};

use axum::http::Method;
use berth_sim::hollow::{HollowHandle, PodLoad};
use common::{HollowCluster, berthctl, eventually, start};
use serde_json::Value;

const APP: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: web, image: 'echo:1', resources: {requests: {cpu: 100m, memory: 64Mi}}}]\n";

const CPU_HPA: &str = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: web}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  minReplicas: 2\n  maxReplicas: 5\n  metrics:\n  - type: Resource\n    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}\n";

const CONNECTIONS_HPA: &str = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: web}\nspec:\n  scaleTargetRef: {kind: Deployment, name: web}\n  maxReplicas: 10\n  metrics:\n  - type: Pods\n    pods: {metric: {name: new_connections_per_second}, target: {type: AverageValue, averageValue: '10'}}\n";

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/default/deployments/web";
const HPA: &str = "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/web";

fn cpu(millicores: u64) -> PodLoad {
    PodLoad {
        cpu_millicores: millicores,
        memory_bytes: 32 << 20,
        connections_per_second: 0.0,
    }
}

/// Sets `load` on every pod that runs now; returns how many.
async fn load_all(c: &HollowCluster, nodes: &[&HollowHandle], load: PodLoad) -> usize {
    let pods = running(c).await;
    for pod in &pods {
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        if let Some(handle) = nodes.iter().find(|n| n.name == node) {
            handle.set_load("default", name, load);
        }
    }
    pods.len()
}

async fn running(c: &HollowCluster) -> Vec<Value> {
    c.pods()
        .await
        .into_iter()
        .filter(|p| p.pointer("/status/podIP").is_some())
        .collect()
}

async fn replicas(c: &HollowCluster) -> i64 {
    let (_, deployment) = c.t.call(Method::GET, DEPLOYMENT, None).await;
    deployment["spec"]["replicas"].as_i64().unwrap_or(-1)
}

async fn hpa(c: &HollowCluster) -> Value {
    c.t.call(Method::GET, HPA, None).await.1
}

fn condition<'a>(hpa: &'a Value, type_: &str) -> &'a Value {
    hpa.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

async fn events(c: &HollowCluster) -> Vec<String> {
    let (_, list) =
        c.t.call(
            Method::GET,
            "/api/v1/namespaces/default/events?fieldSelector=involvedObject.kind%3DHorizontalPodAutoscaler",
            None,
        )
        .await;
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Events are recorded after the writes they report.
async fn wait_for_event(c: &HollowCluster, message: &str) {
    eventually(&format!("event {message:?}"), || async {
        events(c).await.iter().any(|m| m == message).then_some(())
    })
    .await;
}

async fn wait_for_replicas(c: &HollowCluster, want: i64) {
    eventually(&format!("{want} replicas"), || async {
        (replicas(c).await == want).then_some(())
    })
    .await;
}

async fn wait_for_running(c: &HollowCluster, want: usize) {
    eventually(&format!("{want} running pods"), || async {
        (running(c).await.len() == want).then_some(())
    })
    .await;
}

/// Replicas do not change for `period`.
async fn stays(c: &HollowCluster, want: i64, period: Duration) {
    let until = Instant::now() + period;
    while Instant::now() < until {
        assert_eq!(replicas(c).await, want, "must stay at {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn cpu_utilisation_scales_by_the_hpa_rule_with_tolerance_stabilisation_and_bounds() {
    // Evaluated every second; scale-down stabilised over 6 s (the flag, since the
    // manifest sets no window).
    let c = HollowCluster::start(&[
        "--autoscaler-sync-period",
        "1",
        "--autoscaler-downscale-stabilization",
        "6",
    ])
    .await;
    let n0 = c.node("n0").await;
    let n1 = c.node("n1").await;
    let nodes = [&n0, &n1];
    let (status, body) = c.t.apply(&format!("{APP}---\n{CPU_HPA}")).await;
    assert_eq!(status, 200, "{body}");
    wait_for_running(&c, 2).await;

    // No figures yet: no decision, and the status says why.
    eventually("ScalingActive=False without figures", || async {
        let hpa = hpa(&c).await;
        (condition(&hpa, "ScalingActive")["status"] == "False").then_some(())
    })
    .await;
    assert_eq!(replicas(&c).await, 2);

    // 90% of the request against 50%: ceil(2 × 90/50) = 4.
    assert_eq!(load_all(&c, &nodes, cpu(90)).await, 2);
    wait_for_replicas(&c, 4).await;
    let hpa_now = hpa(&c).await;
    assert_eq!(hpa_now["status"]["desiredReplicas"], 4);
    assert!(hpa_now["status"]["lastScaleTime"].is_string());
    wait_for_event(
        &c,
        "New size: 4; reason: cpu resource utilization (percentage of request) above target",
    )
    .await;
    // The two new pods have no figures: counted as idle, (90+90+0+0)/4 = 45% is within
    // the tolerance, so it does not scale again.
    wait_for_running(&c, 4).await;
    stays(&c, 4, Duration::from_secs(3)).await;

    // 54% against 50% is a ratio of 1.08: inside the 0.1 tolerance, nothing moves.
    assert_eq!(load_all(&c, &nodes, cpu(54)).await, 4);
    eventually("54% measured", || async {
        let hpa = hpa(&c).await;
        (hpa.pointer("/status/currentMetrics/0/resource/current/averageUtilization")
            == Some(&Value::from(54)))
        .then_some(())
    })
    .await;
    stays(&c, 4, Duration::from_secs(3)).await;

    // 10%: the rule says ceil(4 × 0.2) = 1, but only once the window's higher
    // recommendations (4) are older than 6 s; then clamped to minReplicas 2.
    let dropped = Instant::now();
    load_all(&c, &nodes, cpu(10)).await;
    eventually("scale-down held back", || async {
        let hpa = hpa(&c).await;
        (condition(&hpa, "AbleToScale")["reason"] == "ScaleDownStabilized").then_some(())
    })
    .await;
    wait_for_replicas(&c, 2).await;
    let waited = dropped.elapsed();
    assert!(
        // Without the window it would take one sync period (1 s); with it at least
        // 6 s minus the whole-second clock and one sync period of slack.
        waited >= Duration::from_secs(3),
        "scaled down after {waited:?}, inside the 6 s window"
    );
    let hpa_now = hpa(&c).await;
    assert_eq!(
        condition(&hpa_now, "ScalingLimited")["reason"],
        "TooFewReplicas"
    );
    wait_for_event(&c, "New size: 2; reason: All metrics below target").await;

    // 500% of the request: ceil(2 × 10) = 20, clamped to maxReplicas 5.
    wait_for_running(&c, 2).await;
    load_all(&c, &nodes, cpu(500)).await;
    wait_for_replicas(&c, 5).await;
    let hpa_now = hpa(&c).await;
    assert_eq!(
        condition(&hpa_now, "ScalingLimited")["reason"],
        "TooManyReplicas"
    );
    stays(&c, 5, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn connection_rate_scales_by_the_pods_metric_and_the_metrics_api_serves_figures() {
    let c = HollowCluster::start(&["--autoscaler-sync-period", "1"]).await;
    let n0 = c.node("n0").await;
    let n1 = c.node("n1").await;
    let (status, body) = c.t.apply(APP).await;
    assert_eq!(status, 200, "{body}");
    wait_for_running(&c, 2).await;
    let pods = running(&c).await;
    for (pod, rate) in pods.iter().zip([25.0, 35.0]) {
        let handle = [&n0, &n1]
            .into_iter()
            .find(|n| pod["spec"]["nodeName"] == n.name.as_str())
            .expect("node");
        let name = pod["metadata"]["name"].as_str().expect("name");
        handle.set_load(
            "default",
            name,
            PodLoad {
                cpu_millicores: 20,
                memory_bytes: 48 << 20,
                connections_per_second: rate,
            },
        );
    }

    // metrics.k8s.io: both pods with their container figures, both nodes.
    let listed = eventually("pod metrics", || async {
        let (code, list) =
            c.t.call(
                Method::GET,
                "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods",
                None,
            )
            .await;
        assert_eq!(code, 200, "{list}");
        let items = list["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 2).then_some(list)
    })
    .await;
    assert_eq!(listed["kind"], "PodMetricsList");
    let item = &listed["items"][0];
    assert_eq!(item["containers"][0]["name"], "web");
    assert_eq!(item["containers"][0]["usage"]["cpu"], "20m");
    assert_eq!(item["containers"][0]["usage"]["memory"], "49152Ki");
    let rates: Vec<f64> = listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["newConnectionsPerSecond"].as_f64())
        .collect();
    assert_eq!(rates.iter().sum::<f64>(), 60.0, "{rates:?}");
    let (_, all) =
        c.t.call(Method::GET, "/apis/metrics.k8s.io/v1beta1/pods", None)
            .await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(2));
    let (_, nodes) =
        c.t.call(Method::GET, "/apis/metrics.k8s.io/v1beta1/nodes", None)
            .await;
    assert_eq!(nodes["kind"], "NodeMetricsList");
    assert_eq!(nodes["items"].as_array().map(Vec::len), Some(2), "{nodes}");
    let (code, one) =
        c.t.call(Method::GET, "/apis/metrics.k8s.io/v1beta1/nodes/n0", None)
            .await;
    assert_eq!(code, 200);
    assert_eq!(one["kind"], "NodeMetrics");
    let (code, _) =
        c.t.call(Method::GET, "/apis/metrics.k8s.io/v1beta1/nodes/n9", None)
            .await;
    assert_eq!(code, 404);
    let (code, _) =
        c.t.call(
            Method::DELETE,
            "/apis/metrics.k8s.io/v1beta1/nodes/n0",
            None,
        )
        .await;
    assert_eq!(code, 405);

    // 30 connections/s per pod against 10: ceil(2 × 3) = 6.
    let (status, body) = c.t.apply(CONNECTIONS_HPA).await;
    assert_eq!(status, 200, "{body}");
    wait_for_replicas(&c, 6).await;
    wait_for_event(
        &c,
        "New size: 6; reason: pods metric new_connections_per_second above target",
    )
    .await;
    let hpa_now = hpa(&c).await;
    assert_eq!(
        hpa_now.pointer("/status/currentMetrics/0/pods/current/averageValue"),
        Some(&Value::from("30"))
    );
}

#[tokio::test]
async fn invalid_autoscalers_are_refused_with_field_paths_and_change_nothing() {
    let t = start().await;
    let bad = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: web}\nspec:\n  scaleTargetRef: {kind: ReplicaSet, name: web}\n  minReplicas: 3\n  maxReplicas: 2\n  metrics:\n  - type: Resource\n    resource: {name: cpu, target: {type: Utilization, averageUtilization: 0}}\n  - type: Pods\n    pods: {metric: {name: http_requests}, target: {type: AverageValue, averageValue: fast}}\n  - type: External\n  behavior: {scaleDown: {stabilizationWindowSeconds: 7200}}\n";
    let (status, body) = t.apply(bad).await;
    assert_eq!(status, 422, "{body}");
    let text = body.to_string();
    for field in [
        "spec.scaleTargetRef.kind",
        "spec.maxReplicas: must be greater than or equal to minReplicas (3)",
        "spec.metrics[0].resource.target.averageUtilization: must be greater than 0",
        "spec.metrics[1].pods.metric.name",
        "spec.metrics[1].pods.target.averageValue",
        "spec.metrics[2].type",
        "spec.behavior.scaleDown.stabilizationWindowSeconds",
    ] {
        assert!(text.contains(field), "{field} missing from {text}");
    }
    let (status, _) = t.call(Method::GET, HPA, None).await;
    assert_eq!(status, 404, "nothing stored");

    // Straight to the collection: the same causes, one per field.
    let body: Value = serde_norway::from_str(bad).expect("yaml");
    let (status, reply) = t
        .call(
            Method::POST,
            "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers",
            Some(&body),
        )
        .await;
    assert_eq!(status, 422);
    let causes = reply["details"]["causes"].as_array().map_or(0, Vec::len);
    assert_eq!(causes, 7, "{reply}");

    // A valid one is stored, with the defaults filled in.
    let (status, body) = t.apply(CONNECTIONS_HPA).await;
    assert_eq!(status, 200, "{body}");
    let (_, stored) = t.call(Method::GET, HPA, None).await;
    assert_eq!(stored["spec"]["minReplicas"], 1);

    // berthctl knows the kind like any other.
    let admin = &t.server.admin_config;
    let (ok, out, err) = berthctl(admin, &["get", "hpa"]).await;
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert!(
        ok && row.first() == Some(&"web") && row.get(1) == Some(&"Deployment/web"),
        "{out}{err}"
    );
    let (ok, out, err) = berthctl(admin, &["delete", "hpa", "web"]).await;
    assert!(
        ok && out.trim() == "horizontalpodautoscaler.autoscaling/web deleted",
        "{out}{err}"
    );
}

#[tokio::test]
async fn berthctl_top_nodes_and_pods() {
    let c = HollowCluster::start(&[]).await;
    let admin = c.t.server.admin_config.clone();
    // No node yet: an error and a failing exit code.
    let (ok, _, err) = berthctl(&admin, &["top", "nodes"]).await;
    assert!(!ok && err.contains("no nodes found"), "{err}");
    let n0 = c.node("n0").await;

    let (status, body) = c.t.apply(&APP.replace("replicas: 2", "replicas: 1")).await;
    assert_eq!(status, 200, "{body}");
    wait_for_running(&c, 1).await;
    let pod = running(&c).await.remove(0);
    let pod_name = pod["metadata"]["name"].as_str().expect("name").to_owned();
    n0.set_load(
        "default",
        &pod_name,
        PodLoad {
            cpu_millicores: 250,
            memory_bytes: 100 << 20,
            connections_per_second: 0.0,
        },
    );
    eventually("pod figures", || async {
        let (_, list) =
            c.t.call(Method::GET, "/apis/metrics.k8s.io/v1beta1/pods", None)
                .await;
        (list["items"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;

    // Hollow nodes offer 4 CPUs and 8 GiB; their usage is the sum of their pods'.
    let (ok, out, err) = berthctl(&admin, &["top", "nodes"]).await;
    assert!(ok, "{err}");
    assert_eq!(
        out.trim_end(),
        "NAME   CPU(cores)   CPU%   MEMORY(bytes)   MEMORY%\nn0     250m         6%     100Mi           1%"
    );
    let (ok, out, err) = berthctl(&admin, &["top", "pods"]).await;
    assert!(ok, "{err}");
    let width = pod_name.len().max(4);
    assert_eq!(
        out.trim_end(),
        format!(
            "{:<width$}   CPU(cores)   MEMORY(bytes)\n{:<width$}   250m         100Mi",
            "NAME", pod_name
        )
    );
    let (ok, out, _) = berthctl(&admin, &["top", "pods", "-A"]).await;
    assert!(
        ok && out.starts_with("NAMESPACE   NAME") && out.contains("\ndefault     "),
        "{out}"
    );
    let (ok, out, err) = berthctl(&admin, &["top", "pods", "-n", "other"]).await;
    assert!(
        ok && out.is_empty() && err.trim() == "No resources found in other namespace.",
        "{out}{err}"
    );
    let (ok, _, err) = berthctl(&admin, &["top", "pods", "nope"]).await;
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, _, err) = berthctl(&admin, &["top", "nodes", "n9"]).await;
    assert!(!ok && err.contains("not found"), "{err}");
}
