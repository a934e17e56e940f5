//! /metrics: latency histograms by verb, resource and code, valid for Prometheus' own checker.

mod common;

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use axum::http::Method;
use common::{DEPLOYMENTS, deployment, eventually, start, start_with};

#[tokio::test]
async fn metrics_have_request_latency_by_verb_resource_and_code_and_pass_promtool() {
    let t = start().await;
    t.call(
        Method::POST,
        DEPLOYMENTS,
        Some(&deployment("web", "echo:1")),
    )
    .await;
    t.call(Method::GET, &format!("{DEPLOYMENTS}/web"), None)
        .await;
    t.call(Method::GET, &format!("{DEPLOYMENTS}/missing"), None)
        .await;
    t.call(Method::GET, DEPLOYMENTS, None).await;

    let reply = t
        .client
        .request(Method::GET, "/metrics", None)
        .await
        .expect("scrape");
    assert_eq!(reply.status.as_u16(), 200);
    let text = String::from_utf8(reply.body.to_vec()).expect("utf-8");
    for series in [
        r#"berth_apiserver_request_duration_seconds_count{code="201",resource="deployments",verb="create"} 1"#,
        r#"berth_apiserver_request_duration_seconds_count{code="200",resource="deployments",verb="get"} 1"#,
        r#"berth_apiserver_request_duration_seconds_count{code="404",resource="deployments",verb="get"} 1"#,
        r#"berth_apiserver_request_duration_seconds_count{code="200",resource="deployments",verb="list"} 1"#,
        "berth_store_commit_duration_seconds_bucket",
        // Revisions 1–3 create the `default`, `kube-system` and `kube-public`
        // namespaces, 4 the default ClusterRoles and 5 their bindings; the Deployment
        // and its first ControllerRevision are one transaction.
        "berth_store_revision 6",
        "berth_store_size_bytes ",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }

    // Prometheus' own checker; `cargo xtask setup` installs it.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (run `cargo xtask setup`)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = promtool.wait_with_output().expect("promtool finishes");
    assert!(
        output.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn scrape(t: &common::TestServer) -> String {
    let reply = t
        .client
        .request(Method::GET, "/metrics", None)
        .await
        .expect("scrape");
    String::from_utf8(reply.body.to_vec()).expect("utf-8")
}

#[tokio::test]
async fn controllers_count_reconciles_and_the_scheduler_its_attempts() {
    // Controllers on, no node: the Deployment's pods cannot be placed.
    let t = start_with(&[]).await;
    t.call(
        Method::POST,
        DEPLOYMENTS,
        Some(&deployment("web", "echo:1")),
    )
    .await;
    let text = eventually("an unschedulable attempt on /metrics", || async {
        let text = scrape(&t).await;
        text.lines()
            .any(|l| {
                l.starts_with(r#"berth_scheduler_schedule_attempts_total{result="unschedulable"}"#)
            })
            .then_some(text)
    })
    .await;
    for series in [
        r#"berth_controller_reconciles_total{controller="deployment",result="success"}"#,
        r#"berth_controller_reconciles_total{controller="scheduler",result="success"}"#,
        r#"berth_controller_reconcile_duration_seconds_count{controller="scheduler"}"#,
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
}
