//! PodDisruptionBudgets, the Eviction subresource, `berthctl cordon|uncordon|drain` and
//! DaemonSets over hollow nodes, on one cluster shared by the scenarios.

mod common;

use axum::http::Method;
use common::{HollowCluster, berthctl, eventually};
use serde_json::{Value, json};

/// The zookeeper budget of the Kubernetes docs ("Specifying a Disruption Budget for your
/// Application"), as users write it.
const ZK_PDB: &str = "apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: zk-pdb
spec:
  minAvailable: 2
  selector:
    matchLabels:
      app: zookeeper
";

const ZOOKEEPER: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: zk}
spec:
  replicas: 2
  selector: {matchLabels: {app: zookeeper}}
  template:
    metadata: {labels: {app: zookeeper}}
    spec: {containers: [{name: zk, image: 'echo:1'}]}
";

const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: 'echo:1'}]}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  maxUnavailable: 1
  selector: {matchLabels: {app: web}}
";

const PDBS: &str = "/apis/policy/v1/namespaces/default/poddisruptionbudgets";

/// The DaemonSet of the Kubernetes docs ("DaemonSet", "Create a DaemonSet"), as written
/// there, into the kube-system namespace every cluster has. Berth admits hostPath volumes
/// only under the paths `--allow-host-path` names.
const FLUENTD: &str = "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: fluentd-elasticsearch
  namespace: kube-system
  labels:
    k8s-app: fluentd-logging
spec:
  selector:
    matchLabels:
      name: fluentd-elasticsearch
  template:
    metadata:
      labels:
        name: fluentd-elasticsearch
    spec:
      tolerations:
      # these tolerations are to have the daemonset runnable on control plane nodes
      # remove them if your control plane nodes should not run pods
      - key: node-role.kubernetes.io/control-plane
        operator: Exists
        effect: NoSchedule
      - key: node-role.kubernetes.io/master
        operator: Exists
        effect: NoSchedule
      containers:
      - name: fluentd-elasticsearch
        image: quay.io/fluentd_elasticsearch/fluentd:v2.5.2
        resources:
          limits:
            memory: 200Mi
          requests:
            cpu: 100m
            memory: 200Mi
        volumeMounts:
        - name: varlog
          mountPath: /var/log
      # it may be desirable to set a high priority class to ensure that a DaemonSet Pod
      # preempts running Pods
      # priorityClassName: important
      terminationGracePeriodSeconds: 30
      volumes:
      - name: varlog
        hostPath:
          path: /var/log
";

const FLUENTD_PATH: &str = "/apis/apps/v1/namespaces/kube-system/daemonsets/fluentd-elasticsearch";

fn ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        && pod.pointer("/metadata/deletionTimestamp").is_none()
}

fn name(object: &Value) -> String {
    object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Ready pods labelled app=`app`.
async fn ready_pods(c: &HollowCluster, app: &str) -> Vec<Value> {
    c.pods()
        .await
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app"] == app && ready(p))
        .collect()
}

async fn budget(c: &HollowCluster, name: &str) -> Value {
    c.t.call(Method::GET, &format!("{PDBS}/{name}"), None)
        .await
        .1
}

/// Waits until `app` has `n` ready pods and budget `pdb` allows `allowed` disruptions.
async fn settled(c: &HollowCluster, app: &str, n: usize, pdb: &str, allowed: i64) {
    eventually(
        &format!("{n} ready {app} pods, {allowed} disruption(s) allowed by {pdb}"),
        || async {
            let pods = ready_pods(c, app).await;
            let all = c
                .pods()
                .await
                .into_iter()
                .filter(|p| p["metadata"]["labels"]["app"] == app)
                .count();
            let status = budget(c, pdb).await;
            (pods.len() == n && all == n && status["status"]["disruptionsAllowed"] == allowed)
                .then_some(())
        },
    )
    .await;
}

async fn evict(c: &HollowCluster, pod: &str) -> (u16, Value) {
    let body = json!({"apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": pod, "namespace": "default"}});
    c.t.call(
        Method::POST,
        &format!("/api/v1/namespaces/default/pods/{pod}/eviction"),
        Some(&body),
    )
    .await
}

#[tokio::test]
async fn disruption_budgets_evictions_drains_and_daemon_sets() {
    // The fluentd DaemonSet mounts the node's /var/log, which Berth refuses unless allowed.
    let c = HollowCluster::start(&["--allow-host-path", "/var/log"]).await;
    let nodes = [c.node("n1").await, c.node("n2").await, c.node("n3").await];
    let admin = c.t.server.admin_config.clone();

    cordon_and_uncordon(&c, &admin).await;
    concurrent_evictions_respect_the_budget(&c).await;
    drain_waits_for_the_budget(&c, &admin).await;
    daemon_set_follows_nodes(&c, &admin).await;
    daemon_set_rolls_node_by_node_and_back(&c, &admin).await;
    kubectl_cordons_and_drains(&c, &admin).await;
    drop(nodes);
}

async fn unschedulable(c: &HollowCluster, node: &str) -> bool {
    c.t.call(Method::GET, &format!("/api/v1/nodes/{node}"), None)
        .await
        .1["spec"]["unschedulable"]
        == true
}

async fn cordon_and_uncordon(c: &HollowCluster, admin: &std::path::Path) {
    let (ok, out, err) = berthctl(admin, &["cordon", "n3"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "node/n3 cordoned");
    assert!(unschedulable(c, "n3").await);
    let (ok, out, _) = berthctl(admin, &["cordon", "n3"]).await;
    assert!(ok);
    assert_eq!(out.trim(), "node/n3 already cordoned");
    let (_, table, _) = berthctl(admin, &["get", "nodes"]).await;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("n3") && l.contains("SchedulingDisabled")),
        "{table}"
    );
    let (ok, out, err) = berthctl(admin, &["uncordon", "n3"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "node/n3 uncordoned");
    assert!(!unschedulable(c, "n3").await);
    let (ok, _, err) = berthctl(admin, &["cordon", "nowhere"]).await;
    assert!(!ok);
    assert!(err.contains("nodes \"nowhere\" not found"), "{err}");
}

async fn concurrent_evictions_respect_the_budget(c: &HollowCluster) {
    let (status, body) = c.t.apply(WEB).await;
    assert_eq!(status, 200, "{body}");
    settled(c, "web", 3, "web", 1).await;
    let status = budget(c, "web").await["status"].clone();
    assert_eq!(
        (
            &status["currentHealthy"],
            &status["desiredHealthy"],
            &status["expectedPods"]
        ),
        (&json!(3), &json!(2), &json!(3))
    );
    let pods = ready_pods(c, "web").await;
    let (a, b) = (name(&pods[0]), name(&pods[1]));
    let ((status_a, body_a), (status_b, body_b)) = tokio::join!(evict(c, &a), evict(c, &b));
    let mut statuses = [status_a, status_b];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 429], "{body_a}\n{body_b}");
    let refused = if status_a == 429 { &body_a } else { &body_b };
    assert_eq!(refused["reason"], "TooManyRequests");
    assert_eq!(
        refused["message"],
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    // The count is the budget's as the winner left it (Kubernetes' message too).
    assert!(
        refused["details"]["causes"][0]["message"]
            .as_str()
            .is_some_and(
                |m| m.starts_with("The disruption budget web needs 2 healthy pods and has")
            ),
        "{refused}"
    );
    // The replacement runs and the budget allows one again.
    settled(c, "web", 3, "web", 1).await;
    let table =
        c.t.client
            .request(Method::GET, PDBS, None)
            .await
            .expect("list");
    assert!(table.status.is_success());
}

async fn drain_waits_for_the_budget(c: &HollowCluster, admin: &std::path::Path) {
    let (status, body) = c.t.apply(&format!("{ZOOKEEPER}---\n{ZK_PDB}")).await;
    assert_eq!(status, 200, "{body}");
    settled(c, "zookeeper", 2, "zk-pdb", 0).await;
    let (_, table, _) = berthctl(admin, &["get", "pdb"]).await;
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("NAME")
            && header.contains("MIN AVAILABLE")
            && header.contains("MAX UNAVAILABLE")
            && header.contains("ALLOWED DISRUPTIONS"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().take(4).eq(["zk-pdb", "2", "N/A", "0"])),
        "{table}"
    );
    let zk = ready_pods(c, "zookeeper").await;
    let victim = name(&zk[0]);
    let node = zk[0]["spec"]["nodeName"]
        .as_str()
        .expect("bound")
        .to_owned();

    // The budget refuses: the drain says so, gives up at its timeout, and the pod stays.
    let (ok, out, err) = berthctl(admin, &["drain", &node, "--timeout", "8s"]).await;
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("node/{node} cordoned")), "{out}");
    assert!(
        out.contains(&format!(
            "pod default/{victim} waits: Cannot evict pod as it would violate the pod's disruption budget. The disruption budget zk-pdb needs 2 healthy pods and has 2 currently"
        )),
        "{out}"
    );
    assert!(err.contains("drain did not complete within 8s"), "{err}");
    let (status, pod) =
        c.t.call(
            Method::GET,
            &format!("/api/v1/namespaces/default/pods/{victim}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(ready(&pod), "{pod}");

    // A third replica, Ready elsewhere (the node is cordoned), lets the budget spare one.
    let (status, body) =
        c.t.call(
            Method::PUT,
            "/apis/apps/v1/namespaces/default/deployments/zk/scale",
            Some(&json!({"spec": {"replicas": 3}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (ok, out, err) = berthctl(admin, &["drain", &node, "--timeout", "60s"]).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains(&format!("pod/{victim} evicted")), "{out}");
    assert!(
        out.trim_end().ends_with(&format!("node/{node} drained")),
        "{out}"
    );
    let left: Vec<String> = c
        .pods()
        .await
        .iter()
        .filter(|p| p["spec"]["nodeName"] == node.as_str())
        .map(name)
        .collect();
    assert!(left.is_empty(), "{left:?}");
    settled(c, "zookeeper", 3, "zk-pdb", 1).await;

    // A pod no controller manages needs --force.
    let bare = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bare"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "echo:1"}]}});
    let (status, body) =
        c.t.call(Method::POST, "/api/v1/namespaces/default/pods", Some(&bare))
            .await;
    assert_eq!(status, 201, "{body}");
    let (ok, _, err) = berthctl(admin, &["drain", &node]).await;
    assert!(!ok);
    assert!(
        err.contains(
            "cannot delete Pods that declare no controller (use --force to override): default/bare"
        ),
        "{err}"
    );
    let (ok, out, err) = berthctl(admin, &["drain", &node, "--force", "--timeout", "60s"]).await;
    assert!(ok, "{out}\n{err}");
    assert!(
        err.contains("Warning: deleting Pods that declare no controller: default/bare"),
        "{err}"
    );
    let (ok, _, err) = berthctl(admin, &["uncordon", &node]).await;
    assert!(ok, "{err}");
}

/// The DaemonSet's pods that are not going: (node, image, ready).
async fn daemon_pods(c: &HollowCluster) -> Vec<(String, String, bool)> {
    let (_, list) =
        c.t.call(Method::GET, "/api/v1/namespaces/kube-system/pods", None)
            .await;
    let mut pods: Vec<(String, String, bool)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
        .map(|p| {
            (
                p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                ready(p),
            )
        })
        .collect();
    pods.sort();
    pods
}

/// One ready pod of `image` on each of `nodes` and nowhere else, and the status saying so.
async fn daemons_on(c: &HollowCluster, nodes: &[&str], image: &str) {
    eventually(
        &format!("a ready {image} daemon on each of {nodes:?}"),
        || async {
            let pods = daemon_pods(c).await;
            let want: Vec<(String, String, bool)> = nodes
                .iter()
                .map(|n| ((*n).to_owned(), image.to_owned(), true))
                .collect();
            let status = c.t.call(Method::GET, FLUENTD_PATH, None).await.1["status"].clone();
            let n = json!(nodes.len());
            (pods == want
                && status["desiredNumberScheduled"] == n
                && status["numberReady"] == n
                && status["updatedNumberScheduled"] == n)
                .then_some(())
        },
    )
    .await;
}

async fn daemon_set_follows_nodes(c: &HollowCluster, admin: &std::path::Path) {
    let (status, body) = c.t.apply(FLUENTD).await;
    assert_eq!(status, 200, "{body}");
    let image = "quay.io/fluentd_elasticsearch/fluentd:v2.5.2";
    daemons_on(c, &["n1", "n2", "n3"], image).await;
    let (_, table, _) = berthctl(admin, &["get", "ds", "-n", "kube-system"]).await;
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "NODE",
            "SELECTOR",
            "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..7],
        ["fluentd-elasticsearch", "3", "3", "3", "3", "3", "<none>"],
        "{table}"
    );
    // Each pod carries the tolerations every daemon pod gets.
    let (_, list) =
        c.t.call(Method::GET, "/api/v1/namespaces/kube-system/pods", None)
            .await;
    let tolerations = list["items"][0]["spec"]["tolerations"].to_string();
    for key in [
        "not-ready",
        "unreachable",
        "disk-pressure",
        "memory-pressure",
        "pid-pressure",
        "unschedulable",
    ] {
        assert!(
            tolerations.contains(&format!("node.kubernetes.io/{key}")),
            "{tolerations}"
        );
    }

    // A drain refuses while daemon pods run, and leaves them with --ignore-daemonsets.
    let (ok, _, err) = berthctl(admin, &["drain", "n1"]).await;
    assert!(!ok);
    assert!(
        err.contains("cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): kube-system/fluentd-elasticsearch-"),
        "{err}"
    );
    let (ok, out, err) = berthctl(
        admin,
        &["drain", "n1", "--ignore-daemonsets", "--timeout", "90s"],
    )
    .await;
    assert!(ok, "{out}\n{err}");
    assert!(
        err.contains(
            "Warning: ignoring DaemonSet-managed Pods: kube-system/fluentd-elasticsearch-"
        ),
        "{err}"
    );
    daemons_on(c, &["n1", "n2", "n3"], image).await;
    let (ok, _, err) = berthctl(admin, &["uncordon", "n1"]).await;
    assert!(ok, "{err}");

    // A node that joins gets its pod; one that goes takes its pod with it.
    let joined = std::time::Instant::now();
    let n4 = c.node("n4").await;
    daemons_on(c, &["n1", "n2", "n3", "n4"], image).await;
    // A figure for the record, not an assertion.
    eprintln!(
        "n4's daemon pod Ready {:?} after n4 began to join",
        joined.elapsed()
    );
    drop(n4);
    let (status, body) = c.t.call(Method::DELETE, "/api/v1/nodes/n4", None).await;
    assert_eq!(status, 200, "{body}");
    daemons_on(c, &["n1", "n2", "n3"], image).await;
}

async fn daemon_set_rolls_node_by_node_and_back(c: &HollowCluster, admin: &std::path::Path) {
    let old = "quay.io/fluentd_elasticsearch/fluentd:v2.5.2";
    let new = "quay.io/fluentd_elasticsearch/fluentd:v2.5.3";
    let (status, body) = c.t.apply(&FLUENTD.replace(old, new)).await;
    assert_eq!(status, 200, "{body}");
    // maxUnavailable 1 (the default): never more than one node without a ready daemon,
    // checked at every look until all run the new image.
    eventually("every daemon on the new image", || async {
        let pods = daemon_pods(c).await;
        let served: std::collections::BTreeSet<&str> = pods
            .iter()
            .filter(|(_, _, ready)| *ready)
            .map(|(node, _, _)| node.as_str())
            .collect();
        assert!(served.len() >= 2, "{pods:?}");
        (pods.len() == 3 && pods.iter().all(|(_, image, ready)| image == new && *ready))
            .then_some(())
    })
    .await;
    daemons_on(c, &["n1", "n2", "n3"], new).await;
    let ds = ["daemonset", "fluentd-elasticsearch", "-n", "kube-system"];
    let (ok, out, err) = berthctl(
        admin,
        &[&["rollout", "status"][..], &ds, &["--timeout", "60s"]].concat(),
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("daemon set \"fluentd-elasticsearch\" successfully rolled out"),
        "{out}"
    );
    let (ok, out, err) = berthctl(admin, &[&["rollout", "history"][..], &ds].concat()).await;
    assert!(ok, "{err}");
    assert!(out.contains(old) && out.contains(new), "{out}");
    let (ok, out, err) = berthctl(admin, &[&["rollout", "undo"][..], &ds].concat()).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("daemonset.apps/fluentd-elasticsearch rolled back"),
        "{out}"
    );
    daemons_on(c, &["n1", "n2", "n3"], old).await;
}

/// The machine's kubectl, or None when it has none.
async fn kubectl(admin: &std::path::Path, args: &[&str]) -> Option<(bool, String, String)> {
    let cache = tempfile::tempdir().expect("cache dir");
    common::kubectl_as(admin, cache.path(), args, &[]).await
}

/// kubectl cordons with a strategic merge patch of spec.unschedulable and drains through
/// the Eviction API, retrying while zk-pdb refuses.
async fn kubectl_cordons_and_drains(c: &HollowCluster, admin: &std::path::Path) {
    let Some((ok, out, err)) = kubectl(admin, &["cordon", "n2"]).await else {
        eprintln!("SKIPPED: no kubectl binary on this machine");
        return;
    };
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "node/n2 cordoned");
    assert!(unschedulable(c, "n2").await);
    let (ok, out, err) = kubectl(admin, &["uncordon", "n2"]).await.expect("kubectl");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "node/n2 uncordoned");
    assert!(!unschedulable(c, "n2").await);

    // Back to 2 zookeepers: zk-pdb allows no disruption.
    let scale = |replicas: i64| async move {
        let (status, body) =
            c.t.call(
                Method::PUT,
                "/apis/apps/v1/namespaces/default/deployments/zk/scale",
                Some(&json!({"spec": {"replicas": replicas}})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    };
    scale(2).await;
    settled(c, "zookeeper", 2, "zk-pdb", 0).await;
    let zk = ready_pods(c, "zookeeper").await;
    let node = zk[0]["spec"]["nodeName"]
        .as_str()
        .expect("bound")
        .to_owned();
    let drain = [
        "drain",
        node.as_str(),
        "--ignore-daemonsets",
        "--delete-emptydir-data",
    ];
    let (ok, _, err) = kubectl(admin, &[&drain[..], &["--timeout=8s"]].concat())
        .await
        .expect("kubectl");
    assert!(!ok);
    assert!(
        err.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{err}"
    );
    scale(3).await;
    let (ok, out, err) = kubectl(admin, &[&drain[..], &["--timeout=60s"]].concat())
        .await
        .expect("kubectl");
    assert!(ok, "{out}\n{err}");
    assert!(out.contains(&format!("node/{node} drained")), "{out}");
    let (ok, _, err) = kubectl(admin, &["uncordon", &node]).await.expect("kubectl");
    assert!(ok, "{err}");

    // kubectl reads the new kinds' tables and follows a DaemonSet's rollout.
    let (ok, out, err) = kubectl(admin, &["get", "pdb", "zk-pdb"])
        .await
        .expect("kubectl");
    assert!(ok, "{err}");
    assert!(
        out.starts_with("NAME     MIN AVAILABLE   MAX UNAVAILABLE   ALLOWED DISRUPTIONS   AGE"),
        "{out}"
    );
    let (ok, out, err) = kubectl(admin, &["get", "ds", "-n", "kube-system"])
        .await
        .expect("kubectl");
    assert!(ok, "{err}");
    assert!(out.contains("NODE SELECTOR"), "{out}");
    let (ok, out, err) = kubectl(
        admin,
        &[
            "rollout",
            "status",
            "daemonset/fluentd-elasticsearch",
            "-n",
            "kube-system",
            "--timeout=60s",
        ],
    )
    .await
    .expect("kubectl");
    assert!(ok, "{err}");
    assert!(
        out.contains("daemon set \"fluentd-elasticsearch\" successfully rolled out"),
        "{out}"
    );
    let (ok, out, err) = kubectl(
        admin,
        &[
            "rollout",
            "history",
            "daemonset/fluentd-elasticsearch",
            "-n",
            "kube-system",
        ],
    )
    .await
    .expect("kubectl");
    assert!(ok, "{err}");
    assert!(out.contains("REVISION"), "{out}");
}
