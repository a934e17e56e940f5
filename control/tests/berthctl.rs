//! berthctl against a real server.

mod common;

use common::{berthctl, start};

const APP: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      hostNetwork: true\n      containers: [{name: web, image: 'echo:1'}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n";

#[tokio::test]
async fn apply_get_scale_undo_events_delete() {
    let t = start().await;
    let admin = t.server.admin_config.clone();
    let manifest = t.dir.path().join("app.yaml");
    std::fs::write(&manifest, APP).expect("write manifest");
    let manifest = manifest.to_str().expect("utf-8 path").to_owned();

    let (ok, out, err) = berthctl(&admin, &["apply", "-f", &manifest]).await;
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "deployment.apps/web created\nservice/web created"
    );
    assert!(
        err.contains("spec.template.spec.hostNetwork: unsupported field"),
        "{err}"
    );

    let (ok, out, _) = berthctl(&admin, &["get", "deploy"]).await;
    assert!(ok);
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("web") && l.contains('2')),
        "{out}"
    );

    let (ok, out, err) = berthctl(&admin, &["scale", "deployment", "web", "--replicas", "5"]).await;
    assert!(ok && out.trim() == "deployment/web scaled", "{out}{err}");

    std::fs::write(&manifest, APP.replace("echo:1", "echo:2")).expect("write manifest");
    let (_, out, _) = berthctl(&admin, &["apply", "-f", &manifest]).await;
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let (ok, out, err) = berthctl(&admin, &["rollout", "undo", "deployment", "web"]).await;
    assert!(ok && out.contains("now revision 3"), "{out}{err}");

    let (_, out, _) = berthctl(&admin, &["events", "--for", "web"]).await;
    assert!(
        out.contains("Scaled") && out.contains("DeploymentRollback"),
        "{out}"
    );

    let (ok, out, _) = berthctl(&admin, &["delete", "svc", "web"]).await;
    assert!(ok && out.trim() == "service/web deleted");
    let (ok, _, err) = berthctl(&admin, &["get", "svc", "web"]).await;
    assert!(!ok && err.contains("not found"), "{err}");
}

#[tokio::test]
async fn errors_name_the_field_and_exit_non_zero() {
    let t = start().await;
    let manifest = t.dir.path().join("bad.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 0}]}\n",
    )
    .expect("write manifest");
    let (ok, _, err) = berthctl(
        &t.server.admin_config,
        &["apply", "-f", manifest.to_str().expect("path")],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("spec.ports[0].port: must be between 1 and 65535"),
        "{err}"
    );
    let (ok, _, err) = berthctl(&t.server.admin_config, &["get", "widgets"]).await;
    assert!(!ok && err.contains("unknown kind"), "{err}");
}
