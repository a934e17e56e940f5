//! The machine's own kubectl against Berth: discovery, `api-resources`, and `get` with the
//! columns kubectl users know (Table responses). Skipped, with a message, only where no
//! kubectl binary is installed.

mod common;

use std::path::Path;

use axum::http::Method;
use common::{DEPLOYMENTS, HollowCluster, TestServer, deployment, eventually, start};

/// kubectl's output, or None when the binary is absent. Each run gets its own discovery
/// cache, so no answer of another server is reused.
async fn kubectl(t: &TestServer, cache: &Path, args: &[&str]) -> Option<(bool, String, String)> {
    let output = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&t.server.admin_config)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .output()
        .await;
    match output {
        Ok(output) => Some((
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("running kubectl: {e}"),
    }
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
    let lines: Vec<Vec<&str>> = table.lines().map(cells).collect();
    assert_eq!(
        lines.first().map(Vec::as_slice),
        Some(&["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"][..]),
        "{table}"
    );
    assert_eq!(
        lines.get(1).map(|l| &l[..4]),
        Some(&["web", "0/2", "0", "0"][..]),
        "{table}"
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

    let everything = run(&["get", "all", "-A"]).await.expect("kubectl");
    assert!(
        everything
            .lines()
            .any(|l| cells(l).get(..2) == Some(&["default", "deployment.apps/web"][..])),
        "{everything}"
    );
}

#[tokio::test]
async fn kubectl_top_reads_the_agents_figures() {
    let c = HollowCluster::start(&[]).await;
    let cache = tempfile::tempdir().expect("cache dir");
    let _n0 = c.node("n0").await;
    eventually("node figures", || async {
        let (_, list) =
            c.t.call(Method::GET, "/apis/metrics.k8s.io/v1beta1/nodes", None)
                .await;
        (list["items"].as_array().map(Vec::len) == Some(1)).then_some(())
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
}
