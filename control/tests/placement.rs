//! Placement on hollow nodes, one cluster for every scenario: Kubernetes' own example
//! manifests for node affinity, pod affinity and anti-affinity and topology spread
//! applied unchanged, taints that repel and NoExecute taints that evict after the
//! tolerations' seconds, and a Pending pod that says why, in its condition, its events
//! and `describe` (berthctl's and, where installed, kubectl's, which also taints).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use axum::http::Method;
use common::{HollowCluster, berthctl, eventually};
use serde_json::{Value, json};

/// Eight nodes in three zones of unequal size, under both the well-known zone label and
/// the bare `zone` of the spread example.
const ZONES: [(&str, &str); 8] = [
    ("n0", "antarctica-east1"),
    ("n1", "antarctica-west1"),
    ("n2", "antarctica-west1"),
    ("n3", "zone-c"),
    ("n4", "zone-c"),
    ("n5", "zone-c"),
    ("n6", "zone-c"),
    ("n7", "zone-c"),
];

fn zone_of(node: &str) -> &'static str {
    ZONES
        .iter()
        .find(|(n, _)| *n == node)
        .map_or("?", |(_, z)| z)
}

struct Placement {
    c: HollowCluster,
    kubectl_cache: tempfile::TempDir,
}

impl Placement {
    /// A JSON merge patch of the object at `path`.
    async fn merge_patch(&self, path: &str, patch: Value) {
        let body = serde_json::to_vec(&patch).expect("json");
        let reply = self
            .c
            .t
            .client
            .request(
                Method::PATCH,
                path,
                Some((&body, "application/merge-patch+json")),
            )
            .await
            .expect("patch");
        assert_eq!(reply.status.as_u16(), 200, "{path}: {:?}", reply.body);
    }

    async fn patch_node(&self, name: &str, patch: Value) {
        self.merge_patch(&format!("/api/v1/nodes/{name}"), patch)
            .await;
    }

    async fn apply(&self, manifest: &str) {
        let (status, body) = self.c.t.apply(manifest).await;
        assert_eq!(status, 200, "{body}");
    }

    async fn pods(&self, namespace: &str) -> Vec<Value> {
        let (_, list) = self
            .c
            .t
            .call(
                Method::GET,
                &format!("/api/v1/namespaces/{namespace}/pods"),
                None,
            )
            .await;
        list["items"].as_array().cloned().unwrap_or_default()
    }

    async fn pod(&self, namespace: &str, name: &str) -> Option<Value> {
        let (status, pod) = self
            .c
            .t
            .call(
                Method::GET,
                &format!("/api/v1/namespaces/{namespace}/pods/{name}"),
                None,
            )
            .await;
        (status == 200).then_some(pod)
    }

    /// The nodes of the pods of `namespace` labelled `app`, once `count` are bound.
    async fn bound(&self, namespace: &str, app: &str, count: usize) -> Vec<String> {
        eventually(&format!("{count} pods of {app} bound"), || async {
            let nodes: Vec<String> = self
                .pods(namespace)
                .await
                .iter()
                .filter(|p| p["metadata"]["labels"]["app"] == app)
                .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_owned))
                .collect();
            (nodes.len() == count).then_some(nodes)
        })
        .await
    }

    /// The node of pod `name`, once bound.
    async fn node_of(&self, namespace: &str, name: &str) -> String {
        eventually(&format!("{name} bound"), || async {
            self.pod(namespace, name).await.and_then(|p| {
                p["spec"]["nodeName"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
            })
        })
        .await
    }

    /// The scheduler's verdict on pending pod `name`, once it has one.
    async fn unschedulable(&self, namespace: &str, name: &str) -> String {
        eventually(&format!("{name} unschedulable"), || async {
            let pod = self.pod(namespace, name).await?;
            let condition = pod["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "PodScheduled")?
                .clone();
            assert_eq!(pod["spec"]["nodeName"], Value::Null, "{pod}");
            assert_eq!(condition["status"], "False");
            assert_eq!(condition["reason"], "Unschedulable");
            condition["message"].as_str().map(str::to_owned)
        })
        .await
    }

    /// kubectl's output, or None when no kubectl is installed.
    async fn kubectl(&self, args: &[&str]) -> Option<String> {
        let output = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.c.t.server.admin_config)
            .arg("--cache-dir")
            .arg(self.kubectl_cache.path())
            .args(args)
            .output()
            .await;
        match output {
            Ok(output) => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                assert!(output.status.success(), "kubectl {args:?}: {stderr}");
                Some(String::from_utf8_lossy(&output.stdout).into_owned())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("running kubectl: {e}"),
        }
    }

    /// `describe pod` by berthctl, and by kubectl when installed, each containing every
    /// one of `wanted`, once the scheduler's event is recorded.
    async fn described(&self, namespace: &str, name: &str, wanted: &[&str]) {
        eventually(&format!("a FailedScheduling event of {name}"), || async {
            let (_, events) = self
                .c
                .t
                .call(
                    Method::GET,
                    &format!("/api/v1/namespaces/{namespace}/events"),
                    None,
                )
                .await;
            events["items"]
                .as_array()?
                .iter()
                .any(|e| e["reason"] == "FailedScheduling" && e["involvedObject"]["name"] == name)
                .then_some(())
        })
        .await;
        let admin = &self.c.t.server.admin_config;
        let (ok, out, err) = berthctl(admin, &["describe", "pod", name, "-n", namespace]).await;
        assert!(ok, "{err}");
        for text in wanted {
            assert!(
                out.contains(text),
                "berthctl describe lacks {text:?}:\n{out}"
            );
        }
        if let Some(out) = self
            .kubectl(&["describe", "pod", name, "-n", namespace])
            .await
        {
            for text in wanted {
                assert!(
                    out.contains(text),
                    "kubectl describe lacks {text:?}:\n{out}"
                );
            }
        }
    }

    async fn namespace(&self, name: &str) {
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n"
        ))
        .await;
    }

    async fn scale(&self, deployment: &str, replicas: u32) {
        self.merge_patch(
            &format!("/apis/apps/v1/namespaces/default/deployments/{deployment}"),
            json!({"spec": {"replicas": replicas}}),
        )
        .await;
    }

    async fn delete(&self, path: &str) {
        let (status, body) = self.c.t.call(Method::DELETE, path, None).await;
        assert!(status == 200 || status == 202, "{path}: {body}");
    }
}

/// Kubernetes' "more practical use-cases" example: a cache and a web tier, each replica
/// on a node of its own, each web server next to a cache.
const REDIS_CACHE: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: redis-cache
spec:
  selector:
    matchLabels:
      app: store
  replicas: 3
  template:
    metadata:
      labels:
        app: store
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector:
              matchExpressions:
              - key: app
                operator: In
                values:
                - store
            topologyKey: "kubernetes.io/hostname"
      containers:
      - name: redis-server
        image: redis:3.2-alpine
"#;

const WEB_STORE: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web-server
spec:
  selector:
    matchLabels:
      app: web-store
  replicas: 3
  template:
    metadata:
      labels:
        app: web-store
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector:
              matchExpressions:
              - key: app
                operator: In
                values:
                - web-store
            topologyKey: "kubernetes.io/hostname"
        podAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector:
              matchExpressions:
              - key: app
                operator: In
                values:
                - store
            topologyKey: "kubernetes.io/hostname"
      containers:
      - name: web-app
        image: nginx:1.16-alpine
"#;

/// Kubernetes' pod-with-node-affinity example.
const WITH_NODE_AFFINITY: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: with-node-affinity
spec:
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
        - matchExpressions:
          - key: topology.kubernetes.io/zone
            operator: In
            values:
            - antarctica-east1
            - antarctica-west1
      preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 1
        preference:
          matchExpressions:
          - key: another-node-label-key
            operator: In
            values:
            - another-node-label-value
  containers:
  - name: with-node-affinity
    image: registry.k8s.io/pause:3.8
"#;

/// Kubernetes' pod-with-pod-affinity example.
const WITH_POD_AFFINITY: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: with-pod-affinity
spec:
  affinity:
    podAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
      - labelSelector:
          matchExpressions:
          - key: security
            operator: In
            values:
            - S1
        topologyKey: topology.kubernetes.io/zone
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          labelSelector:
            matchExpressions:
            - key: security
              operator: In
              values:
              - S2
          topologyKey: topology.kubernetes.io/zone
  containers:
  - name: with-pod-affinity
    image: registry.k8s.io/pause:3.8
"#;

/// Kubernetes' single topology spread constraint example.
const SPREAD_POD: &str = r#"
kind: Pod
apiVersion: v1
metadata:
  name: mypod
  labels:
    foo: bar
spec:
  topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: zone
    whenUnsatisfiable: DoNotSchedule
    labelSelector:
      matchLabels:
        foo: bar
  containers:
  - name: pause
    image: registry.k8s.io/pause:3.1
"#;

fn pod_on(name: &str, node: &str, labels: Value, tolerations: Value) -> String {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "tolerations": tolerations,
            "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.8"}]}})
    .to_string()
}

#[tokio::test]
async fn placement_follows_affinity_taints_and_spread_and_says_why_not() {
    let c = HollowCluster::start(&["--pod-eviction-timeout", "77"]).await;
    let mut nodes = Vec::new();
    for (name, _) in ZONES {
        nodes.push(c.node(name).await);
    }
    let p = Placement {
        c,
        kubectl_cache: tempfile::tempdir().expect("kubectl cache"),
    };
    for (name, zone) in ZONES {
        p.patch_node(
            name,
            json!({"metadata": {"labels": {"topology.kubernetes.io/zone": zone, "zone": zone}}}),
        )
        .await;
    }

    anti_affinity_never_co_locates(&p).await;
    taints_repel_and_tolerations_admit(&p).await;
    no_execute_evicts_after_the_toleration_seconds(&p).await;
    topology_spread_keeps_max_skew(&p).await;
    node_and_pod_affinity_examples(&p).await;
    drop(nodes);
}

async fn anti_affinity_never_co_locates(p: &Placement) {
    p.apply(REDIS_CACHE).await;
    let caches = p.bound("default", "store", 3).await;
    p.apply(WEB_STORE).await;
    let webs = p.bound("default", "web-store", 3).await;
    let mut webs_sorted = webs.clone();
    webs_sorted.sort();
    let mut caches_sorted = caches.clone();
    caches_sorted.sort();
    assert_eq!(
        webs_sorted, caches_sorted,
        "each web server next to a cache"
    );
    // Many replicas: never two on a node.
    p.scale("redis-cache", 8).await;
    let caches = p.bound("default", "store", 8).await;
    for (tier, placed) in [("cache", &caches), ("web", &webs)] {
        for (i, a) in placed.iter().enumerate() {
            for b in &placed[i + 1..] {
                assert_ne!(a, b, "two {tier} replicas share a node: {placed:?}");
            }
        }
    }

    // A ninth cache has nowhere to go, and says so.
    p.scale("redis-cache", 9).await;
    let pending = eventually("a pending cache", || async {
        p.pods("default")
            .await
            .into_iter()
            .find(|pod| {
                pod["metadata"]["labels"]["app"] == "store" && pod["spec"]["nodeName"].is_null()
            })
            .and_then(|pod| pod["metadata"]["name"].as_str().map(str::to_owned))
    })
    .await;
    let message = p.unschedulable("default", &pending).await;
    let expected =
        "0/8 nodes are available: 8 node(s) didn't satisfy existing pods anti-affinity rules.";
    assert_eq!(message, expected);
    p.described(
        "default",
        &pending,
        &["PodScheduled", "FailedScheduling", expected],
    )
    .await;
    for name in ["redis-cache", "web-server"] {
        p.delete(&format!(
            "/apis/apps/v1/namespaces/default/deployments/{name}"
        ))
        .await;
    }
}

async fn taints_repel_and_tolerations_admit(p: &Placement) {
    let by_kubectl = p
        .kubectl(&["taint", "nodes", "n0", "dedicated=gpu:NoSchedule"])
        .await
        .is_some();
    if !by_kubectl {
        p.patch_node(
            "n0",
            json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        )
        .await;
    }
    let (_, node) = p.c.t.call(Method::GET, "/api/v1/nodes/n0", None).await;
    assert_eq!(
        node["spec"]["taints"],
        json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])
    );
    p.apply(&pod_on("plain", "n0", json!({}), json!([]))).await;
    p.apply(&pod_on(
        "tolerant",
        "n0",
        json!({}),
        json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]),
    ))
    .await;
    assert_eq!(p.node_of("default", "tolerant").await, "n0");
    let expected = "0/8 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 7 node(s) didn't match Pod's node affinity/selector.";
    assert_eq!(p.unschedulable("default", "plain").await, expected);
    p.described(
        "default",
        "plain",
        &[
            expected,
            "FailedScheduling",
            "kubernetes.io/hostname=n0",
            "node.kubernetes.io/unreachable:NoExecute op=Exists for 77s",
        ],
    )
    .await;
    let (ok, out, err) = berthctl(&p.c.t.server.admin_config, &["describe", "node", "n0"]).await;
    assert!(ok && out.contains("dedicated=gpu:NoSchedule"), "{out}{err}");
    // The taint goes: the pending pod is placed.
    if by_kubectl {
        p.kubectl(&["taint", "nodes", "n0", "dedicated=gpu:NoSchedule-"])
            .await;
    } else {
        p.patch_node("n0", json!({"spec": {"taints": null}})).await;
    }
    assert_eq!(p.node_of("default", "plain").await, "n0");
    for name in ["plain", "tolerant"] {
        p.delete(&format!("/api/v1/namespaces/default/pods/{name}"))
            .await;
    }
}

async fn no_execute_evicts_after_the_toleration_seconds(p: &Placement) {
    let lingering = 4;
    p.apply(&pod_on("bare", "n1", json!({}), json!([]))).await;
    p.apply(&pod_on(
        "lingering",
        "n1",
        json!({}),
        json!([{"key": "maintenance", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": lingering}]),
    ))
    .await;
    p.apply(&pod_on(
        "staying",
        "n1",
        json!({}),
        json!([{"key": "maintenance", "operator": "Exists", "effect": "NoExecute"}]),
    ))
    .await;
    for name in ["bare", "lingering", "staying"] {
        assert_eq!(p.node_of("default", name).await, "n1");
    }
    // Admission gave each the default not-ready/unreachable tolerations, of
    // --pod-eviction-timeout seconds.
    let bare = p.pod("default", "bare").await.expect("bare");
    assert_eq!(
        bare["spec"]["tolerations"],
        json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 77},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 77},
        ])
    );

    let tainted = Instant::now();
    p.patch_node(
        "n1",
        json!({"spec": {"taints": [{"key": "maintenance", "value": "kernel", "effect": "NoExecute"}]}}),
    )
    .await;
    let (_, node) = p.c.t.call(Method::GET, "/api/v1/nodes/n1", None).await;
    assert!(
        node["spec"]["taints"][0]["timeAdded"].is_string(),
        "stamped: {node}"
    );
    eventually("the pod without a toleration evicted", || async {
        p.pod("default", "bare").await.is_none().then_some(())
    })
    .await;
    // Timing is what is tested here, with a wide margin: at once means well before the
    // toleration's seconds, which count from the second the taint was added.
    if tainted.elapsed() < Duration::from_secs(lingering - 1) {
        assert!(p.pod("default", "lingering").await.is_some());
    }
    eventually("the tolerating pod evicted after its seconds", || async {
        p.pod("default", "lingering").await.is_none().then_some(())
    })
    .await;
    let after = tainted.elapsed();
    assert!(
        after >= Duration::from_secs(lingering - 1),
        "evicted {after:?} after the taint, before its {lingering} s toleration"
    );
    assert!(p.pod("default", "staying").await.is_some());
    let (_, events) =
        p.c.t
            .call(Method::GET, "/api/v1/namespaces/default/events", None)
            .await;
    let evicted: BTreeSet<&str> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reason"] == "TaintManagerEviction")
        .filter_map(|e| e["involvedObject"]["name"].as_str())
        .collect();
    assert_eq!(evicted, BTreeSet::from(["bare", "lingering"]));
    p.patch_node("n1", json!({"spec": {"taints": null}})).await;
    p.delete("/api/v1/namespaces/default/pods/staying").await;
}

async fn topology_spread_keeps_max_skew(p: &Placement) {
    p.namespace("spread").await;
    // The zones hold 1, 2 and 5 nodes: spreading replicas over nodes alone would put
    // most in zone-c.
    let deployment = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: spread, namespace: spread}
spec:
  replicas: 9
  selector: {matchLabels: {app: spread}}
  template:
    metadata: {labels: {app: spread}}
    spec:
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: topology.kubernetes.io/zone
        whenUnsatisfiable: DoNotSchedule
        labelSelector: {matchLabels: {app: spread}}
      containers: [{name: main, image: "registry.k8s.io/pause:3.8"}]
"#;
    p.apply(deployment).await;
    let placed = p.bound("spread", "spread", 9).await;
    let mut per_zone: BTreeMap<&str, usize> = BTreeMap::new();
    for node in &placed {
        *per_zone.entry(zone_of(node)).or_default() += 1;
    }
    assert_eq!(per_zone.len(), 3, "{per_zone:?}");
    let (min, max) = (
        per_zone.values().min().copied().unwrap_or(0),
        per_zone.values().max().copied().unwrap_or(0),
    );
    assert!(max - min <= 1, "skew over 1: {per_zone:?}");
    // Kubernetes' example, unchanged (its `zone` label is on every node too).
    p.apply(SPREAD_POD).await;
    p.node_of("default", "mypod").await;
    p.delete("/api/v1/namespaces/spread").await;
    p.delete("/api/v1/namespaces/default/pods/mypod").await;
}

async fn node_and_pod_affinity_examples(p: &Placement) {
    p.patch_node(
        "n2",
        json!({"metadata": {"labels": {"another-node-label-key": "another-node-label-value"}}}),
    )
    .await;
    p.apply(WITH_NODE_AFFINITY).await;
    assert_eq!(
        p.node_of("default", "with-node-affinity").await,
        "n2",
        "required zones, then the preferred label"
    );
    // Required node affinity no node meets.
    p.apply(
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nowhere"},
            "spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["mars"]}]}]}}},
                "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.8"}]}})
        .to_string(),
    )
    .await;
    assert_eq!(
        p.unschedulable("default", "nowhere").await,
        "0/8 nodes are available: 8 node(s) didn't match Pod's node affinity/selector."
    );

    // The pod affinity example waits for a pod labelled security=S1, then joins its zone.
    p.apply(WITH_POD_AFFINITY).await;
    assert_eq!(
        p.unschedulable("default", "with-pod-affinity").await,
        "0/8 nodes are available: 8 node(s) didn't match pod affinity rules."
    );
    p.apply(&pod_on("s1", "n3", json!({"security": "S1"}), json!([])))
        .await;
    assert_eq!(p.node_of("default", "s1").await, "n3");
    let node = p.node_of("default", "with-pod-affinity").await;
    assert_eq!(zone_of(&node), "zone-c", "{node}");
    let zones: BTreeSet<&str> = ZONES.iter().map(|(_, z)| *z).collect();
    assert_eq!(zones.len(), 3);
}
