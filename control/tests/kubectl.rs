//! The machine's own kubectl against Berth: discovery, tables, top, and its writes (create,
//! apply, diff, patch, scale, rollout, edit, annotate, wait, output formats, orphaning
//! deletes, ...), each checked by its effect. Skipped, with
//! a message, only where no kubectl binary is installed.

mod common;

use std::path::Path;

use axum::http::Method;
use berth_sim::hollow::PodLoad;
use common::{DEPLOYMENTS, HollowCluster, TestServer, deployment, eventually, start, start_with};
use serde_json::json;

/// kubectl's output, or None when the binary is absent. Each run gets its own discovery
/// cache, so no answer of another server is reused.
async fn kubectl(t: &TestServer, cache: &Path, args: &[&str]) -> Option<(bool, String, String)> {
    kubectl_with(t, cache, args, &[]).await
}

/// [`kubectl`] with environment variables (an `EDITOR` for `kubectl edit`).
async fn kubectl_with(
    t: &TestServer,
    cache: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Option<(bool, String, String)> {
    common::kubectl_as(&t.server.admin_config, cache, args, envs).await
}

/// Columns of a printed table, split on kubectl's runs of spaces.
fn cells(line: &str) -> Vec<&str> {
    line.split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[tokio::test]
async fn kubectl_discovers_the_kinds_and_prints_their_tables() {
    let t = start().await;
    let cache = tempfile::tempdir().expect("cache dir");
    let run = |args: &'static [&'static str]| {
        let (t, cache) = (&t, cache.path());
        async move {
            let (ok, out, err) = kubectl(t, cache, args).await?;
            assert!(ok, "kubectl {}: {err}", args.join(" "));
            Some(out)
        }
    };
    let Some(names) = run(&["api-resources", "-o", "name"]).await else {
        eprintln!("SKIPPED: no kubectl binary on this machine");
        return;
    };
    for kind in [
        "pods",
        "services",
        "nodes",
        "deployments.apps",
        "replicasets.apps",
        "horizontalpodautoscalers.autoscaling",
        "jobs.batch",
        "cronjobs.batch",
        "endpointslices.discovery.k8s.io",
        "pods.metrics.k8s.io",
    ] {
        assert!(names.lines().any(|l| l == kind), "{kind} in:\n{names}");
    }
    let resources = run(&["api-resources"]).await.expect("kubectl");
    let deployments = resources
        .lines()
        .find(|l| l.starts_with("deployments "))
        .map(cells);
    assert_eq!(
        deployments,
        Some(vec![
            "deployments",
            "deploy",
            "apps/v1",
            "true",
            "Deployment"
        ]),
        "{resources}"
    );

    let (status, created) = t
        .call(
            Method::POST,
            DEPLOYMENTS,
            Some(&deployment("web", "echo:1")),
        )
        .await;
    assert_eq!(status, 201, "{created}");

    let table = run(&["get", "deploy"]).await.expect("kubectl");
    assert_table(
        &table,
        &["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        &["web", "0/2", "0", "0"],
    );

    let wide = run(&["get", "deployments.apps", "web", "-o", "wide"])
        .await
        .expect("kubectl");
    let lines: Vec<Vec<&str>> = wide.lines().map(cells).collect();
    assert_eq!(
        lines.first().map(|l| l[5..].to_vec()),
        Some(vec!["CONTAINERS", "IMAGES", "SELECTOR"]),
        "{wide}"
    );
    assert_eq!(
        lines.get(1).map(|l| l[5..].to_vec()),
        Some(vec!["main", "echo:1", "app=web"]),
        "{wide}"
    );

    let replicas = run(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])
        .await
        .expect("kubectl");
    assert_eq!(replicas, "2");

    let slice = serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-manual", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["198.18.1.2"]}, {"addresses": ["198.18.1.3"]}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]});
    let (status, created) = t
        .call(
            Method::POST,
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            Some(&slice),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let slices = run(&["get", "endpointslices"]).await.expect("kubectl");
    assert_table(
        &slices,
        &["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
        &["web-manual", "IPv4", "8080", "198.18.1.2,198.18.1.3"],
    );

    // A CronJob and a Job (no controllers here: the tables show them as stored).
    let hello = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "hello"},
        "spec": {"schedule": "*/5 * * * *", "timeZone": "Etc/UTC", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "OnFailure", "containers": [{"name": "hello", "image": "busybox"}]}}}}}});
    let (status, created) = t
        .call(
            Method::POST,
            "/apis/batch/v1/namespaces/default/cronjobs",
            Some(&hello),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let cron_jobs = run(&["get", "cronjobs"]).await.expect("kubectl");
    assert_table(
        &cron_jobs,
        &[
            "NAME",
            "SCHEDULE",
            "TIMEZONE",
            "SUSPEND",
            "ACTIVE",
            "LAST SCHEDULE",
            "AGE",
        ],
        &["hello", "*/5 * * * *", "Etc/UTC", "False", "0", "<none>"],
    );
    // kubectl's own `create job --from` sends protobuf, which Berth reads for RBAC kinds
    // only; berthctl's is tested in batch.rs. The Job it would make, through the API:
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "hello-now"},
        "spec": hello["spec"]["jobTemplate"]["spec"]});
    let (status, created) = t
        .call(
            Method::POST,
            "/apis/batch/v1/namespaces/default/jobs",
            Some(&job),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let jobs = run(&["get", "jobs"]).await.expect("kubectl");
    assert_table(
        &jobs,
        &["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
        &["hello-now", "Running", "0/1"],
    );
    let (_, job) = t
        .call(
            Method::GET,
            "/apis/batch/v1/namespaces/default/jobs/hello-now",
            None,
        )
        .await;
    assert_eq!(
        job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        job["metadata"]["uid"],
        "{job}"
    );

    let everything = run(&["get", "all", "-A"]).await.expect("kubectl");
    assert!(
        everything
            .lines()
            .any(|l| cells(l).get(..2) == Some(&["default", "deployment.apps/web"][..])),
        "{everything}"
    );
}

/// A kubectl table: its header is `header`, and its first row starts with `first`.
fn assert_table(table: &str, header: &[&str], first: &[&str]) {
    let lines: Vec<Vec<&str>> = table.lines().map(cells).collect();
    assert_eq!(lines.first().map(Vec::as_slice), Some(header), "{table}");
    assert_eq!(
        lines.get(1).and_then(|l| l.get(..first.len())),
        Some(first),
        "{table}"
    );
}

#[tokio::test]
async fn kubectl_top_reads_the_agents_figures() {
    let c = HollowCluster::start(&[]).await;
    let cache = tempfile::tempdir().expect("cache dir");
    let n0 = c.node("n0").await;
    let mut one = deployment("web", "echo:1");
    one["spec"]["replicas"] = 1.into();
    let (status, body) = c.t.call(Method::POST, DEPLOYMENTS, Some(&one)).await;
    assert_eq!(status, 201, "{body}");
    let pod = eventually("a running pod", || async {
        c.pods()
            .await
            .into_iter()
            .find(|p| p.pointer("/status/podIP").is_some())
            .and_then(|p| p["metadata"]["name"].as_str().map(str::to_owned))
    })
    .await;
    n0.set_load(
        "default",
        &pod,
        PodLoad {
            cpu_millicores: 250,
            memory_bytes: 100 << 20,
            connections_per_second: 0.0,
        },
    );
    eventually("node and pod figures", || async {
        let (_, nodes) =
            c.t.call(Method::GET, "/apis/metrics.k8s.io/v1beta1/nodes", None)
                .await;
        let (_, pods) =
            c.t.call(Method::GET, "/apis/metrics.k8s.io/v1beta1/pods", None)
                .await;
        (nodes["items"].as_array().map(Vec::len) == Some(1)
            && pods["items"].as_array().map(Vec::len) == Some(1))
        .then_some(())
    })
    .await;
    let Some((ok, out, err)) = kubectl(&c.t, cache.path(), &["top", "nodes"]).await else {
        eprintln!("SKIPPED: no kubectl binary on this machine");
        return;
    };
    assert!(ok, "{err}");
    let lines: Vec<Vec<&str>> = out.lines().map(cells).collect();
    assert_eq!(
        lines.first().and_then(|l| l.first()).copied(),
        Some("NAME"),
        "{out}"
    );
    assert_eq!(
        lines.get(1).and_then(|l| l.first()).copied(),
        Some("n0"),
        "{out}"
    );
    let (ok, out, err) = kubectl(&c.t, cache.path(), &["top", "pods"])
        .await
        .expect("kubectl");
    assert!(ok, "{err}");
    let lines: Vec<Vec<&str>> = out.lines().map(cells).collect();
    assert_eq!(
        lines.get(1).map(Vec::as_slice),
        Some(&[pod.as_str(), "250m", "100Mi"][..]),
        "{out}"
    );
}

const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: echo:1
";

/// [`WEB`] written into `dir`; its path.
fn web_manifest(dir: &Path) -> String {
    let manifest = dir.join("web.yaml");
    std::fs::write(&manifest, WEB).expect("manifest");
    manifest.to_str().expect("utf-8 path").to_owned()
}

/// The Deployment `web` as stored.
async fn stored_web(t: &TestServer) -> serde_json::Value {
    let (status, body) = t
        .call(Method::GET, &format!("{DEPLOYMENTS}/web"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// kubectl's writes, each checked by its effect on the stored object: create and apply
/// (client-side, the second unchanged), diff (a server dry run that changes nothing),
/// the three patch types, scale, set image, label, rollout history, undo and restart,
/// and delete.
#[tokio::test]
async fn kubectl_creates_applies_patches_and_rolls_back() {
    let t = start_with(&[]).await;
    let cache = tempfile::tempdir().expect("cache dir");
    let files = tempfile::tempdir().expect("manifest dir");
    let manifest = &web_manifest(files.path());
    let k = Kubectl {
        t: &t,
        cache: cache.path(),
    };
    let deployment = || stored_web(&t);
    let Some(created) = kubectl(&t, cache.path(), &["create", "-f", manifest]).await else {
        eprintln!("SKIPPED: no kubectl binary on this machine");
        return;
    };
    assert_eq!(
        created.1.trim(),
        "deployment.apps/web created",
        "{}",
        created.2
    );
    assert_eq!(deployment().await["spec"]["replicas"], 2);

    let applied = k.run(&["apply", "-f", manifest]).await;
    assert_eq!(applied.1, "deployment.apps/web configured", "{}", applied.2);
    let again = k.run(&["apply", "-f", manifest]).await;
    assert_eq!(again.1, "deployment.apps/web unchanged", "{}", again.2);

    let bigger = files.path().join("bigger.yaml");
    std::fs::write(&bigger, WEB.replace("replicas: 2", "replicas: 4")).expect("manifest");
    let bigger = bigger.to_str().expect("utf-8 path");
    let (changed, diff, err) = k.run(&["diff", "-f", bigger]).await;
    assert!(
        !changed,
        "kubectl diff exits 1 when there are differences: {err}"
    );
    assert!(
        diff.contains("-  replicas: 2") && diff.contains("+  replicas: 4"),
        "{diff}"
    );
    assert_eq!(
        deployment().await["spec"]["replicas"],
        2,
        "a diff writes nothing"
    );

    k.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":3}}"#,
    ])
    .await;
    assert_eq!(deployment().await["spec"]["replicas"], 3);
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/minReadySeconds","value":5}]"#,
    ])
    .await;
    assert_eq!(deployment().await["spec"]["minReadySeconds"], 5);
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"MODE","value":"blue"}]}]}}}}"#,
    ])
    .await;
    let container = &deployment().await["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        (
            container["image"].as_str(),
            container["env"][0]["value"].as_str()
        ),
        (Some("echo:1"), Some("blue")),
        "a strategic merge keeps the container's other fields"
    );

    k.ok(&["scale", "deploy", "web", "--replicas=5"]).await;
    assert_eq!(deployment().await["spec"]["replicas"], 5);
    k.ok(&["label", "deploy", "web", "tier=front"]).await;
    assert_eq!(deployment().await["metadata"]["labels"]["tier"], "front");
    k.ok(&["set", "image", "deploy/web", "web=echo:2"]).await;
    assert_eq!(
        deployment().await["spec"]["template"]["spec"]["containers"][0]["image"],
        "echo:2"
    );
    // Each template is a revision once the Deployment controller made its ReplicaSet.
    eventually("two revisions", || async {
        let (_, history, _) = k.run(&["rollout", "history", "deploy/web"]).await;
        let revisions = history
            .lines()
            .filter(|l| l.starts_with(char::is_numeric))
            .count();
        (revisions >= 2).then_some(())
    })
    .await;
    k.ok(&["rollout", "undo", "deploy/web"]).await;
    let rolled_back = deployment().await;
    let container = &rolled_back["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "echo:1", "{rolled_back}");
    k.ok(&["rollout", "restart", "deploy/web"]).await;
    assert!(
        deployment().await["spec"]["template"]["metadata"]["annotations"]
            ["kubectl.kubernetes.io/restartedAt"]
            .is_string()
    );

    let refused = k
        .run(&[
            "patch",
            "deploy",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":-1}}"#,
        ])
        .await;
    assert!(
        !refused.0 && refused.2.contains("spec.replicas"),
        "{}",
        refused.2
    );
    k.ok(&[
        "wait",
        "--for=jsonpath={.spec.replicas}=5",
        "deploy/web",
        "--timeout=30s",
    ])
    .await;
    // `kubectl edit` with an editor that changes the replicas in the file it is given.
    let (edited, out, err) = kubectl_with(
        &t,
        cache.path(),
        &["edit", "deploy/web"],
        &[("EDITOR", "sed -i s/replicas:\\ 5/replicas:\\ 6/")],
    )
    .await
    .expect("kubectl");
    assert!(edited && out.contains("edited"), "{out}{err}");
    let edited = deployment().await;
    assert_eq!(edited["spec"]["replicas"], 6);
    // Each of kubectl's writes is recorded under the field manager it names.
    let managers: Vec<&str> = edited["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["manager"].as_str())
        .collect();
    let owner = |m: &str| {
        edited["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["manager"] == m)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        owner("kubectl-edit")["fieldsV1"]["f:spec"]["f:replicas"],
        serde_json::json!({}),
        "{managers:?}"
    );
    assert!(
        managers.contains(&"kubectl-client-side-apply") && managers.contains(&"kubectl-create"),
        "{managers:?}"
    );
    let described = k.ok(&["describe", "deploy", "web"]).await;
    assert!(
        described.contains("Replicas:") && described.contains("6 desired"),
        "{described}"
    );

    // kubectl asks for strict field validation: a field Berth does not know is refused,
    // by name, unless the user settles for a warning.
    let odd = files.path().join("odd.yaml");
    std::fs::write(
        &odd,
        WEB.replace("name: web\nspec:", "name: odd\nspec:\n  surprise: 1"),
    )
    .expect("manifest");
    let odd = odd.to_str().expect("utf-8 path");
    let (created, _, err) = k.run(&["create", "-f", odd]).await;
    assert!(
        !created && err.contains("unknown field \"spec.surprise\""),
        "{err}"
    );
    let (created, out, err) = k.run(&["create", "--validate=warn", "-f", odd]).await;
    assert!(
        created && out == "deployment.apps/odd created",
        "{out}{err}"
    );
    assert!(
        err.contains("spec.surprise"),
        "the warning names the field: {err}"
    );

    let deleted = k.ok(&["delete", "deploy", "web"]).await;
    assert_eq!(deleted, "deployment.apps \"web\" deleted");
    let (status, _) = t
        .call(Method::GET, &format!("{DEPLOYMENTS}/web"), None)
        .await;
    assert_eq!(status, 404);
}

/// `kubectl apply --server-side`: the first run creates, the second changes nothing
/// (the resourceVersion stays); after `kubectl scale` the replicas are kubectl's scale
/// manager's, so applying other replicas is refused naming that manager and the field,
/// until `--force-conflicts` takes them.
#[tokio::test]
async fn kubectl_applies_server_side_with_conflicts() {
    let t = start_with(&[]).await;
    let cache = tempfile::tempdir().expect("cache dir");
    let files = tempfile::tempdir().expect("manifest dir");
    let manifest = &web_manifest(files.path());
    let k = Kubectl {
        t: &t,
        cache: cache.path(),
    };
    let deployment = || stored_web(&t);
    let apply = ["apply", "--server-side", "-f", manifest];
    let Some((ok, out, err)) = kubectl(&t, cache.path(), &apply).await else {
        eprintln!("SKIPPED: no kubectl binary on this machine");
        return;
    };
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "deployment.apps/web serverside-applied",
        "{err}"
    );
    let first = deployment().await;
    assert_eq!(first["spec"]["replicas"], 2);
    let owner = &first["metadata"]["managedFields"][0];
    assert_eq!(
        (&owner["manager"], &owner["operation"]),
        (&json!("kubectl"), &json!("Apply")),
        "{owner}"
    );
    // The controllers write the new Deployment's status for a while: an apply that writes
    // nothing answers with the revision read just before it, once they are done.
    let mut unchanged = false;
    for _ in 0..20 {
        let before = deployment().await["metadata"]["resourceVersion"].clone();
        let answered = k
            .ok(&[
                "apply",
                "--server-side",
                "-f",
                manifest,
                "-o",
                "jsonpath={.metadata.resourceVersion}",
            ])
            .await;
        if json!(answered) == before {
            unchanged = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(unchanged, "applying the same manifest again writes nothing");

    k.ok(&["scale", "deployment", "web", "--replicas=5"]).await;
    assert_eq!(deployment().await["spec"]["replicas"], 5);
    let (ok, _, err) = k.run(&apply).await;
    assert!(!ok, "the manifest's replicas conflict with kubectl scale's");
    assert!(
        err.contains(
            r#"Apply failed with 1 conflict: conflict with "kubectl" with subresource "scale" using apps/v1"#
        ) && err.contains(".spec.replicas"),
        "{err}"
    );
    assert_eq!(deployment().await["spec"]["replicas"], 5, "nothing written");
    k.ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        manifest,
    ])
    .await;
    assert_eq!(deployment().await["spec"]["replicas"], 2);

    // An object kubectl applied client-side moves to server-side apply.
    let csa = files.path().join("csa.yaml");
    std::fs::write(&csa, WEB.replacen("name: web\n", "name: csa\n", 1)).expect("manifest");
    let csa = csa.to_str().expect("utf-8 path");
    assert_eq!(
        k.ok(&["apply", "-f", csa]).await,
        "deployment.apps/csa created"
    );
    assert_eq!(
        k.ok(&["apply", "--server-side", "-f", csa]).await,
        "deployment.apps/csa serverside-applied"
    );
    let (_, moved) = t
        .call(Method::GET, &format!("{DEPLOYMENTS}/csa"), None)
        .await;
    let managers: Vec<(&str, &str)> = moved["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["manager"].as_str().unwrap_or_default(),
                e["operation"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    // kubectl moved the client-side apply's fields to its server-side manager, and the
    // last-applied annotation to `kubectl-last-applied`, with a JSON patch of them.
    assert_eq!(
        managers,
        [("kubectl", "Apply"), ("kubectl-last-applied", "Apply")],
        "{}",
        moved["metadata"]["managedFields"]
    );
}

/// kubectl on one server, for tests past the check that the binary exists.
/// What kubectl does around a rollout on a cluster whose pods run (a hollow node):
/// `rollout status` and `wait --for=condition=Available` end when the Deployment is
/// ready, `rollout pause` holds a new template back until `rollout resume`, `annotate`,
/// the output formats users script with (`-o yaml|json|custom-columns|go-template`), and
/// `delete --cascade=orphan` leaving the ReplicaSets without their owner.
#[tokio::test]
async fn kubectl_follows_rollouts_and_prints_what_users_ask() {
    let c = HollowCluster::start(&[]).await;
    let cache = tempfile::tempdir().expect("cache dir");
    let _n0 = c.node("n0").await;
    let (status, body) =
        c.t.call(
            Method::POST,
            DEPLOYMENTS,
            Some(&deployment("web", "echo:1")),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let Some((ok, out, err)) = kubectl(
        &c.t,
        cache.path(),
        &["rollout", "status", "deploy/web", "--timeout=60s"],
    )
    .await
    else {
        eprintln!("SKIPPED: no kubectl binary on this machine");
        return;
    };
    assert!(ok && out.contains("successfully rolled out"), "{out}{err}");
    let k = Kubectl {
        t: &c.t,
        cache: cache.path(),
    };
    k.ok(&[
        "wait",
        "--for=condition=Available",
        "deploy/web",
        "--timeout=30s",
    ])
    .await;
    let replica_sets = || async {
        let (_, list) =
            c.t.call(
                Method::GET,
                "/apis/apps/v1/namespaces/default/replicasets",
                None,
            )
            .await;
        list["items"].as_array().cloned().unwrap_or_default()
    };
    assert_eq!(replica_sets().await.len(), 1);

    // Paused, a new template makes no ReplicaSet; resumed, it does.
    k.ok(&["rollout", "pause", "deploy/web"]).await;
    assert_eq!(stored_web(&c.t).await["spec"]["paused"], true);
    k.ok(&["set", "image", "deploy/web", "main=echo:2"]).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(replica_sets().await.len(), 1, "no rollout while paused");
    k.ok(&["rollout", "resume", "deploy/web"]).await;
    eventually("the new ReplicaSet", || async {
        (replica_sets().await.len() == 2).then_some(())
    })
    .await;
    let (ok, out, err) = k
        .run(&["rollout", "status", "deploy/web", "--timeout=60s"])
        .await;
    assert!(ok && out.contains("successfully rolled out"), "{out}{err}");

    k.ok(&["annotate", "deploy", "web", "team=payments"]).await;
    assert_eq!(
        stored_web(&c.t).await["metadata"]["annotations"]["team"],
        "payments"
    );
    let yaml = k.ok(&["get", "deploy", "web", "-o", "yaml"]).await;
    let from_yaml: serde_json::Value = serde_norway::from_str(&yaml).expect("YAML");
    assert_eq!(from_yaml["metadata"]["annotations"]["team"], "payments");
    let json = k.ok(&["get", "deploy", "web", "-o", "json"]).await;
    let from_json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(
        from_json["spec"]["template"]["spec"]["containers"][0]["image"],
        "echo:2"
    );
    let columns = k
        .ok(&[
            "get",
            "deploy",
            "-o",
            "custom-columns=NAME:.metadata.name,IMAGE:.spec.template.spec.containers[0].image",
        ])
        .await;
    let rows: Vec<Vec<&str>> = columns.lines().map(cells).collect();
    assert_eq!(
        rows,
        [vec!["NAME", "IMAGE"], vec!["web", "echo:2"]],
        "{columns}"
    );
    let templated = k
        .ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "go-template={{.metadata.name}}={{.spec.replicas}}",
        ])
        .await;
    assert_eq!(templated, "web=2");

    // Orphaned: the Deployment goes, its ReplicaSets stay, owned by nobody.
    k.ok(&["delete", "deploy", "web", "--cascade=orphan"]).await;
    let (status, _) =
        c.t.call(Method::GET, &format!("{DEPLOYMENTS}/web"), None)
            .await;
    assert_eq!(status, 404);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let left = replica_sets().await;
    assert_eq!(left.len(), 2, "the garbage collector left them");
    assert!(
        left.iter()
            .all(|rs| rs["metadata"].get("ownerReferences").is_none()),
        "{left:?}"
    );
}

struct Kubectl<'a> {
    t: &'a TestServer,
    cache: &'a Path,
}

impl Kubectl<'_> {
    /// (exit code 0, trimmed stdout, stderr).
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let (ok, out, err) = kubectl(self.t, self.cache, args)
            .await
            .expect("kubectl was found before");
        (ok, out.trim().to_owned(), err)
    }

    /// Trimmed stdout of a run that must succeed.
    async fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args).await;
        assert!(ok, "kubectl {}: {err}", args.join(" "));
        out
    }
}
