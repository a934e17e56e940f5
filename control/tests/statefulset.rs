//! StatefulSets on hollow nodes, one cluster for every scenario (each in a namespace of
//! its own): OrderedReady starts pods one at a time, Parallel all at once; a deleted pod
//! comes back under its name with its claims; scale-down removes the highest ordinals
//! and keeps their claims; a rolling update stops at its partition and `rollout undo`
//! puts the old template back; Kubernetes' own example manifest applies unchanged.

mod common;

use axum::http::Method;
use common::{HollowCluster, berthctl, eventually};
use serde_json::{Value, json};

fn manifest(namespace: &str, policy: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {namespace}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: {namespace}
spec:
  clusterIP: None
  selector:
    app: web
  ports:
  - name: http
    port: 80
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
  namespace: {namespace}
spec:
  serviceName: web
  replicas: {replicas}
  podManagementPolicy: {policy}
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: echo:1
        ports:
        - containerPort: 80
          name: http
  volumeClaimTemplates:
  - metadata:
      name: data
    spec:
      accessModes: ["ReadWriteOnce"]
      resources:
        requests:
          storage: 1Gi
"#
    )
}

/// The StatefulSet docs' example (kubernetes.io/docs/concepts/workloads/controllers/
/// statefulset/#components), as written there.
const KUBERNETES_EXAMPLE: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: nginx
  labels:
    app: nginx
spec:
  ports:
  - port: 80
    name: web
  clusterIP: None
  selector:
    app: nginx
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  selector:
    matchLabels:
      app: nginx # has to match .spec.template.metadata.labels
  serviceName: "nginx"
  replicas: 3 # by default is 1
  minReadySeconds: 10 # by default is 0
  template:
    metadata:
      labels:
        app: nginx # has to match .spec.selector.matchLabels
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: nginx
        image: registry.k8s.io/nginx-slim:0.24
        ports:
        - containerPort: 80
          name: web
        volumeMounts:
        - name: www
          mountPath: /usr/share/nginx/html
  volumeClaimTemplates:
  - metadata:
      name: www
    spec:
      accessModes: [ "ReadWriteOnce" ]
      storageClassName: "my-storage-class"
      resources:
        requests:
          storage: 1Gi
"#;

fn pods_path(namespace: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods")
}

fn set_path(namespace: &str) -> String {
    format!("/apis/apps/v1/namespaces/{namespace}/statefulsets/web")
}

fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// Every pod event of `namespace` until `done` says the events seen are enough: (type,
/// pod name, ready).
async fn pod_events(
    c: &HollowCluster,
    namespace: &str,
    mut watch: berth_ctl::client::Watch,
    done: impl Fn(&[(String, String, bool)]) -> bool,
) -> Vec<(String, String, bool)> {
    let _ = (c, namespace);
    let mut seen = Vec::new();
    while !done(&seen) {
        let event = tokio::time::timeout(std::time::Duration::from_secs(30), watch.next())
            .await
            .expect("a pod event within 30 s")
            .expect("read")
            .expect("an event");
        let object = &event["object"];
        seen.push((
            event["type"].as_str().unwrap_or_default().to_owned(),
            name(object).to_owned(),
            is_ready(object),
        ));
    }
    seen
}

async fn pods(c: &HollowCluster, namespace: &str) -> Vec<Value> {
    let (_, list) = c.t.call(Method::GET, &pods_path(namespace), None).await;
    let mut pods = list["items"].as_array().cloned().unwrap_or_default();
    pods.retain(|p| p["metadata"]["deletionTimestamp"].is_null());
    pods.sort_by(|a, b| name(a).cmp(name(b)));
    pods
}

async fn claims(c: &HollowCluster, namespace: &str) -> Vec<(String, String)> {
    let (_, list) =
        c.t.call(
            Method::GET,
            &format!("/api/v1/namespaces/{namespace}/persistentvolumeclaims"),
            None,
        )
        .await;
    let mut claims: Vec<(String, String)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                name(c).to_owned(),
                c["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    claims.sort();
    claims
}

/// A JSON merge patch of `path`.
async fn patch(c: &HollowCluster, path: &str, body: Value) -> (u16, Value) {
    let bytes = body.to_string();
    let reply =
        c.t.client
            .request(
                Method::PATCH,
                path,
                Some((bytes.as_bytes(), "application/merge-patch+json")),
            )
            .await
            .expect("patch");
    (reply.status.as_u16(), reply.json().unwrap_or_default())
}

async fn set_status(c: &HollowCluster, namespace: &str) -> Value {
    let (_, set) = c.t.call(Method::GET, &set_path(namespace), None).await;
    set["status"].clone()
}

/// The names of the pods, each with its revision label.
async fn revisions(c: &HollowCluster, namespace: &str) -> Vec<(String, String)> {
    pods(c, namespace)
        .await
        .iter()
        .map(|p| {
            (
                name(p).to_owned(),
                p["metadata"]["labels"]["controller-revision-hash"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn statefulsets_on_hollow_nodes() {
    let c = HollowCluster::start(&[]).await;
    let _n0 = c.node("n0").await;
    let _n1 = c.node("n1").await;

    ordered_ready(&c).await;
    parallel(&c).await;
    kubernetes_example(&c).await;
}

/// OrderedReady: each pod is created only after the one before it is Ready; then a
/// deleted pod, a scale-down, a partitioned rolling update and an undo.
async fn ordered_ready(c: &HollowCluster) {
    let ns = "ordered";
    let (status, body) = c.t.apply(&manifest(ns, "OrderedReady", 3)).await;
    assert_eq!(status, 200, "{body}");
    let watch =
        c.t.client
            .watch(&format!("{}?watch=true", pods_path(ns)))
            .await
            .expect("watch");
    let events = pod_events(c, ns, watch, |seen| {
        seen.iter().any(|(_, pod, ready)| pod == "web-2" && *ready)
    })
    .await;
    // The store's order: web-(n+1) is added only after an event showing web-n Ready.
    for n in 0..2 {
        let next = format!("web-{}", n + 1);
        let added = events
            .iter()
            .position(|(t, pod, _)| t == "ADDED" && *pod == next)
            .expect("added");
        let ready = events
            .iter()
            .position(|(_, pod, ready)| *pod == format!("web-{n}") && *ready)
            .expect("ready");
        assert!(
            ready < added,
            "{next} added before web-{n} was ready: {events:?}"
        );
    }
    let all = pods(c, ns).await;
    assert_eq!(
        all.iter().map(name).collect::<Vec<_>>(),
        ["web-0", "web-1", "web-2"]
    );
    let web1 = &all[1];
    assert_eq!(web1["spec"]["hostname"], "web-1");
    assert_eq!(web1["spec"]["subdomain"], "web");
    assert_eq!(
        web1["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"],
        "web-1"
    );
    assert_eq!(
        web1["metadata"]["labels"]["apps.kubernetes.io/pod-index"],
        "1"
    );
    let volume_claim = web1
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .and_then(|v| v.iter().find(|v| v["name"] == "data"))
        .map(|v| v["persistentVolumeClaim"]["claimName"].clone());
    assert_eq!(volume_claim, Some(json!("data-web-1")));
    let before = claims(c, ns).await;
    assert_eq!(
        before.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["data-web-0", "data-web-1", "data-web-2"]
    );
    // The headless Service's endpoints carry each pod's hostname (the agents' DNS
    // answers `web-1.web.ordered.svc.<domain>` from it).
    eventually("endpoints with hostnames", || async {
        let (_, ep) =
            c.t.call(
                Method::GET,
                &format!("/api/v1/namespaces/{ns}/endpoints/web"),
                None,
            )
            .await;
        let mut hostnames: Vec<String> = ep
            .pointer("/subsets/0/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| a["hostname"].as_str().map(str::to_owned))
            .collect();
        hostnames.sort();
        (hostnames == ["web-0", "web-1", "web-2"]).then_some(())
    })
    .await;
    eventually("status", || async {
        let status = set_status(c, ns).await;
        (status["readyReplicas"] == 3
            && status["currentReplicas"] == 3
            && status["updatedReplicas"] == 3
            && status["currentRevision"] == status["updateRevision"])
            .then_some(())
    })
    .await;

    // A deleted pod comes back under its name, with the same claims.
    let old_uid = web1["metadata"]["uid"].clone();
    let (status, _) =
        c.t.call(Method::DELETE, &format!("{}/web-1", pods_path(ns)), None)
            .await;
    assert_eq!(status, 200);
    eventually("web-1 again", || async {
        let all = pods(c, ns).await;
        let again = all.iter().find(|p| name(p) == "web-1")?;
        (again["metadata"]["uid"] != old_uid && is_ready(again)).then_some(())
    })
    .await;
    assert_eq!(claims(c, ns).await, before, "the same claims, not new ones");

    // Scaling down removes the highest ordinals first and keeps their claims.
    let watch =
        c.t.client
            .watch(&format!("{}?watch=true&resourceVersion=0", pods_path(ns)))
            .await
            .expect("watch");
    let (status, body) = patch(
        c,
        &format!("{}/scale", set_path(ns)),
        json!({"spec": {"replicas": 1}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let events = pod_events(c, ns, watch, |seen| {
        ["web-1", "web-2"]
            .iter()
            .all(|gone| seen.iter().any(|(t, pod, _)| t == "DELETED" && pod == gone))
    })
    .await;
    let deleted: Vec<&str> = events
        .iter()
        .filter(|(t, _, _)| t == "DELETED")
        .map(|(_, pod, _)| pod.as_str())
        .collect();
    assert_eq!(deleted, ["web-2", "web-1"]);
    assert_eq!(claims(c, ns).await, before, "claims kept on scale-down");

    // A rolling update with partition 1 replaces web-2 then web-1, not web-0.
    let (status, body) = patch(c, &set_path(ns), json!({"spec": {"replicas": 3}})).await;
    assert_eq!(status, 200, "{body}");
    eventually("three again", || async {
        (set_status(c, ns).await["readyReplicas"] == 3).then_some(())
    })
    .await;
    let old_revision = set_status(c, ns).await["updateRevision"].clone();
    let (status, body) = patch(
        c,
        &set_path(ns),
        json!({"spec": {
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}},
                "template": {"spec": {"containers": [{"name": "web", "image": "echo:2"}]}}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let new_revision = eventually("a new revision", || async {
        let status = set_status(c, ns).await;
        (status["updateRevision"] != old_revision).then(|| status["updateRevision"].clone())
    })
    .await;
    eventually("web-1 and web-2 updated", || async {
        let status = set_status(c, ns).await;
        let revisions = revisions(c, ns).await;
        (status["updatedReplicas"] == 2 && status["readyReplicas"] == 3).then_some(revisions)
    })
    .await;
    let revisions_now = revisions(c, ns).await;
    assert_eq!(
        revisions_now[0].1,
        old_revision.as_str().unwrap_or_default()
    );
    assert_eq!(
        revisions_now[1].1,
        new_revision.as_str().unwrap_or_default()
    );
    assert_eq!(
        revisions_now[2].1,
        new_revision.as_str().unwrap_or_default()
    );
    let status = set_status(c, ns).await;
    assert_eq!(
        status["currentRevision"], old_revision,
        "not complete below the partition"
    );

    let admin = &c.t.server.admin_config;
    let (ok, out, err) = berthctl(
        admin,
        &[
            "rollout",
            "status",
            "statefulset/web",
            "-n",
            ns,
            "--timeout",
            "60s",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("partitioned roll out complete: 2 new pods have been updated"),
        "{out}"
    );
    let (ok, out, err) = berthctl(admin, &["get", "statefulsets", "-n", ns]).await;
    assert!(ok, "{err}");
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "READY", "AGE"], "{out}");
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|row| row.starts_with("web") && row.contains("3/3")),
        "{out}"
    );
    let (ok, out, err) =
        berthctl(admin, &["rollout", "history", "statefulset/web", "-n", ns]).await;
    assert!(
        ok && out.contains("echo:1") && out.contains("echo:2"),
        "{out}{err}"
    );

    // `rollout undo`: the old template back, and the updated pods with it.
    let (ok, out, err) = berthctl(admin, &["rollout", "undo", "statefulset/web", "-n", ns]).await;
    assert!(ok, "{err}");
    assert!(out.contains("rolled back"), "{out}");
    eventually("all back at the old revision", || async {
        let status = set_status(c, ns).await;
        let back = revisions(c, ns)
            .await
            .iter()
            .all(|(_, r)| json!(r) == old_revision);
        (back && status["updateRevision"] == old_revision && status["readyReplicas"] == 3)
            .then_some(())
    })
    .await;
}

/// Parallel: every pod is created at once, before any is Ready.
async fn parallel(c: &HollowCluster) {
    let ns = "parallel";
    let (status, body) = c.t.apply(&manifest(ns, "Parallel", 3)).await;
    assert_eq!(status, 200, "{body}");
    let watch =
        c.t.client
            .watch(&format!("{}?watch=true&resourceVersion=0", pods_path(ns)))
            .await
            .expect("watch");
    let events = pod_events(c, ns, watch, |seen| {
        seen.iter().filter(|(_, _, ready)| *ready).count() >= 1
            && seen.iter().filter(|(t, _, _)| t == "ADDED").count() == 3
    })
    .await;
    let first_ready = events
        .iter()
        .position(|(_, _, ready)| *ready)
        .expect("ready");
    let added = events.iter().filter(|(t, _, _)| t == "ADDED").count();
    assert_eq!(
        events[..first_ready]
            .iter()
            .filter(|(t, _, _)| t == "ADDED")
            .count(),
        added,
        "every pod added before the first is ready: {events:?}"
    );
    eventually("three ready", || async {
        (set_status(c, ns).await["readyReplicas"] == 3).then_some(())
    })
    .await;
}

/// Kubernetes' own example applies unchanged: its claims name a storage class Berth does
/// not provision, so they wait Pending (with a warning at apply), as they would in a
/// Kubernetes cluster without that class; web-0 waits for its claim and, OrderedReady,
/// web-1 is not made.
async fn kubernetes_example(c: &HollowCluster) {
    let (status, body) = c.t.apply(KUBERNETES_EXAMPLE).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.to_string().contains("my-storage-class"),
        "a warning about the class: {body}"
    );
    let (_, claim) = eventually("the claim of web-0", || async {
        let (status, claim) =
            c.t.call(
                Method::GET,
                "/api/v1/namespaces/default/persistentvolumeclaims/www-web-0",
                None,
            )
            .await;
        (status == 200 && claim["status"]["phase"] == "Pending").then_some((status, claim))
    })
    .await;
    assert_eq!(claim["spec"]["storageClassName"], "my-storage-class");
    let reason = eventually("web-0 unschedulable, saying why", || async {
        let (_, pod) =
            c.t.call(Method::GET, "/api/v1/namespaces/default/pods/web-0", None)
                .await;
        pod.pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"))
            .and_then(|c| c["message"].as_str())
            .filter(|m| m.contains("my-storage-class"))
            .map(str::to_owned)
    })
    .await;
    assert!(reason.contains("no provisioner"), "{reason}");
    assert_eq!(
        pods(c, "default")
            .await
            .iter()
            .map(name)
            .collect::<Vec<_>>(),
        ["web-0"],
        "OrderedReady: nothing after a pod that is not ready"
    );
}
