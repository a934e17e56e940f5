//! The mesh control API over real HTTPS on 127.0.0.1.

mod common;

use axum::http::Method;
use berth_ctl::client::Client;
use common::{DEPLOYMENTS, LIMIT_RANGE, deployment, eventually, rv, start, start_with};
use serde_json::{Value, json};

#[tokio::test]
async fn authentication_is_required_by_default() {
    let t = start().await;
    let settings = berth_api::kubeconfig::Kubeconfig::load(&t.server.admin_config)
        .expect("admin.conf")
        .settings()
        .expect("settings");
    assert!(t.server.url.starts_with("https://127.0.0.1:"));
    assert_eq!(settings.server, t.server.url);

    for token in [None, Some("not-the-token")] {
        let client = Client::new(settings.clone())
            .expect("client")
            .with_token(token);
        let (status, body) = client
            .json(Method::GET, DEPLOYMENTS, None)
            .await
            .expect("request");
        assert_eq!(status.as_u16(), 401);
        assert_eq!(body["kind"], "Status");
        assert_eq!(body["reason"], "Unauthorized");
    }
    let anonymous = Client::new(settings).expect("client").with_token(None);
    let reply = anonymous
        .request(Method::GET, "/healthz", None)
        .await
        .expect("healthz");
    assert_eq!(reply.status.as_u16(), 200);
    let (status, _) = t.call(Method::GET, DEPLOYMENTS, None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn crud_with_optimistic_concurrency() {
    let t = start().await;
    let (status, created) = t
        .call(
            Method::POST,
            DEPLOYMENTS,
            Some(&deployment("web", "echo:1")),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let r1 = rv(&created);
    assert_eq!(created["metadata"]["namespace"], "default");
    assert_eq!(created["metadata"]["generation"], 1);
    assert_eq!(
        created["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    assert!(
        created["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| u.len() == 36)
    );

    let (status, again) = t
        .call(
            Method::POST,
            DEPLOYMENTS,
            Some(&deployment("web", "echo:1")),
        )
        .await;
    assert_eq!(
        (status, again["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );

    let item = format!("{DEPLOYMENTS}/web");
    let (status, fetched) = t.call(Method::GET, &item, None).await;
    assert_eq!((status, rv(&fetched)), (200, r1));

    // Update with the current resourceVersion: accepted, spec change bumps generation.
    let mut update = fetched.clone();
    update["spec"]["replicas"] = json!(5);
    let (status, updated) = t.call(Method::PUT, &item, Some(&update)).await;
    assert_eq!(status, 200, "{updated}");
    assert!(rv(&updated) > r1);
    assert_eq!(updated["metadata"]["generation"], 2);
    assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);

    // The same stale resourceVersion again: conflict, nothing written.
    update["spec"]["replicas"] = json!(7);
    let (status, conflict) = t.call(Method::PUT, &item, Some(&update)).await;
    assert_eq!(
        (status, conflict["reason"].as_str()),
        (409, Some("Conflict")),
        "{conflict}"
    );
    let (_, current) = t.call(Method::GET, &item, None).await;
    assert_eq!(current["spec"]["replicas"], 5);

    // Delete with a stale precondition fails, with the current one succeeds.
    let (status, _) = t
        .call(
            Method::DELETE,
            &format!("{item}?resourceVersion={r1}"),
            None,
        )
        .await;
    assert_eq!(status, 409);
    let (status, deleted) = t
        .call(
            Method::DELETE,
            &format!("{item}?resourceVersion={}", rv(&current)),
            None,
        )
        .await;
    assert_eq!(
        (status, deleted["metadata"]["name"].as_str()),
        (200, Some("web"))
    );
    let (status, missing) = t.call(Method::GET, &item, None).await;
    assert_eq!(
        (status, missing["reason"].as_str()),
        (404, Some("NotFound"))
    );
    assert_eq!(missing["details"]["kind"], "Deployment");
}

#[tokio::test]
async fn invalid_objects_get_every_cause() {
    let t = start().await;
    let mut bad = deployment("web", "");
    bad["spec"]["replicas"] = json!(-3);
    bad["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
    let (status, body) = t.call(Method::POST, DEPLOYMENTS, Some(&bad)).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (422, Some("Invalid")),
        "{body}"
    );
    let fields: Vec<&str> = body["details"]["causes"]
        .as_array()
        .expect("causes")
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    for field in [
        "spec.replicas",
        "spec.template.metadata.labels",
        "spec.template.spec.containers[0].image",
    ] {
        assert!(fields.contains(&field), "{field} missing from {fields:?}");
    }

    let reply = t
        .client
        .request(
            Method::POST,
            DEPLOYMENTS,
            Some((
                b"{\"apiVersion\": \"apps/v1\",\n \"kind\": 3}",
                "application/json",
            )),
        )
        .await
        .expect("request");
    let body = reply.json().expect("status");
    assert_eq!(
        (reply.status.as_u16(), body["reason"].as_str()),
        (400, Some("BadRequest")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("line 2")),
        "{body}"
    );

    let huge = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n", "annotations": {"a": "x".repeat(2 << 20)}}});
    let (status, body) = t.call(Method::POST, "/api/v1/nodes", Some(&huge)).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (413, Some("RequestEntityTooLarge"))
    );

    let (status, body) = t
        .call(Method::GET, "/api/v1/namespaces/default/widgets", None)
        .await;
    assert_eq!((status, body["kind"].as_str()), (404, Some("Status")));
}

#[tokio::test]
async fn list_with_label_and_field_selectors() {
    let t = start().await;
    for (name, tier) in [("a", "web"), ("b", "web"), ("c", "db")] {
        let mut d = deployment(name, "echo:1");
        d["metadata"]["labels"]["tier"] = json!(tier);
        let (status, body) = t.call(Method::POST, DEPLOYMENTS, Some(&d)).await;
        assert_eq!(status, 201, "{body}");
    }
    let names = |list: &Value| -> Vec<String> {
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| {
                i["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    let (_, all) = t.call(Method::GET, DEPLOYMENTS, None).await;
    assert_eq!(all["kind"], "DeploymentList");
    assert_eq!(names(&all), ["a", "b", "c"]);
    let (_, web) = t
        .call(
            Method::GET,
            &format!("{DEPLOYMENTS}?labelSelector=tier%3Dweb"),
            None,
        )
        .await;
    assert_eq!(names(&web), ["a", "b"]);
    let (_, not_a) = t
        .call(
            Method::GET,
            &format!("{DEPLOYMENTS}?labelSelector=tier%20in%20(web,db),app!%3Da"),
            None,
        )
        .await;
    assert_eq!(names(&not_a), ["b", "c"]);
    let (_, by_name) = t
        .call(
            Method::GET,
            "/apis/apps/v1/deployments?fieldSelector=metadata.name%3Dc",
            None,
        )
        .await;
    assert_eq!(names(&by_name), ["c"]);
    let (status, bad) = t
        .call(
            Method::GET,
            &format!("{DEPLOYMENTS}?labelSelector=tier%20in%20(web"),
            None,
        )
        .await;
    assert_eq!((status, bad["reason"].as_str()), (400, Some("BadRequest")));
}

#[tokio::test]
async fn watch_streams_every_change_in_order_and_resumes() {
    let t = start().await;
    let (_, first) = t
        .call(
            Method::POST,
            DEPLOYMENTS,
            Some(&deployment("before", "echo:1")),
        )
        .await;
    let start_rv = rv(&first);

    // Without a resourceVersion: the current state as ADDED, then changes.
    let mut from_now = t
        .client
        .watch(&format!("{DEPLOYMENTS}?watch=true"))
        .await
        .expect("watch");
    assert_eq!(from_now.status.as_u16(), 200);
    let initial = from_now.next().await.expect("read").expect("event");
    assert_eq!(
        (
            initial["type"].as_str(),
            initial["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("before"))
    );

    let mut filtered = t
        .client
        .watch(&format!(
            "{DEPLOYMENTS}?watch=true&resourceVersion={start_rv}&labelSelector=app%3Dweb"
        ))
        .await
        .expect("watch");

    let (_, created) = t
        .call(
            Method::POST,
            DEPLOYMENTS,
            Some(&deployment("web", "echo:1")),
        )
        .await;
    let (_, other) = t
        .call(
            Method::POST,
            DEPLOYMENTS,
            Some(&deployment("other", "echo:1")),
        )
        .await;
    let mut changed = created.clone();
    changed["spec"]["replicas"] = json!(4);
    let (_, modified) = t
        .call(Method::PUT, &format!("{DEPLOYMENTS}/web"), Some(&changed))
        .await;
    let (_, deleted) = t
        .call(Method::DELETE, &format!("{DEPLOYMENTS}/web"), None)
        .await;
    let _ = deleted;

    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = filtered.next().await.expect("read").expect("event");
        seen.push((
            event["type"].as_str().unwrap_or_default().to_owned(),
            rv(&event["object"]),
        ));
    }
    assert_eq!(seen[0], ("ADDED".to_owned(), rv(&created)));
    assert_eq!(seen[1], ("MODIFIED".to_owned(), rv(&modified)));
    assert_eq!(seen[2].0, "DELETED");
    assert!(seen[2].1 > rv(&modified));

    // The unfiltered watch saw all four writes, in commit order.
    let mut revisions = Vec::new();
    let mut names = Vec::new();
    for _ in 0..4 {
        let event = from_now.next().await.expect("read").expect("event");
        revisions.push(rv(&event["object"]));
        names.push(
            event["object"]["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
    assert_eq!(names, ["web", "other", "web", "web"]);

    // Resuming from a revision in the middle yields exactly what came after it.
    let mut resumed = t
        .client
        .watch(&format!(
            "{DEPLOYMENTS}?watch=true&resourceVersion={}",
            rv(&other)
        ))
        .await
        .expect("watch");
    let next = resumed.next().await.expect("read").expect("event");
    assert_eq!(
        (next["type"].as_str(), rv(&next["object"])),
        (Some("MODIFIED"), rv(&modified))
    );
}

#[tokio::test]
async fn watch_from_compacted_history_is_gone() {
    let t = start().await;
    let mut last = 0;
    for name in ["a", "b", "c"] {
        let (_, created) = t
            .call(Method::POST, DEPLOYMENTS, Some(&deployment(name, "echo:1")))
            .await;
        last = rv(&created);
    }
    let store = t.server.store();
    tokio::task::spawn_blocking(move || store.compact(last))
        .await
        .expect("join")
        .expect("compact");
    let (status, body) = t
        .call(
            Method::GET,
            &format!("{DEPLOYMENTS}?watch=true&resourceVersion=1"),
            None,
        )
        .await;
    assert_eq!(
        (status, body["reason"].as_str(), body["code"].as_u64()),
        (410, Some("Expired"), Some(410))
    );
    // From the compaction point on, watching works.
    let mut watch = t
        .client
        .watch(&format!("{DEPLOYMENTS}?watch=true&resourceVersion={last}"))
        .await
        .expect("watch");
    assert_eq!(watch.status.as_u16(), 200);
    t.call(Method::POST, DEPLOYMENTS, Some(&deployment("d", "echo:1")))
        .await;
    let event = watch.next().await.expect("read").expect("event");
    assert_eq!(event["object"]["metadata"]["name"], "d");
}

const APP_V1: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: shop, labels: {app: shop}}
spec:
  replicas: 2
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec:
      priorityClassName: default
      containers: [{name: main, image: "shop:1", ports: [{containerPort: 8080, name: http}]}]
---
apiVersion: v1
kind: Service
metadata: {name: shop}
spec:
  selector: {app: shop}
  ports: [{port: 80, targetPort: http}]
"#;

#[tokio::test]
async fn apply_is_idempotent_atomic_and_warns() {
    let t = start().await;
    let (status, body) = t.apply(APP_V1).await;
    assert_eq!(status, 200, "{body}");
    let actions: Vec<&str> = body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["action"].as_str())
        .collect();
    assert_eq!(actions, ["created", "created"]);
    assert_eq!(
        body["items"][0]["warnings"][0],
        "spec.template.spec.priorityClassName: unsupported field, ignored"
    );

    let (_, again) = t.apply(APP_V1).await;
    let actions: Vec<&str> = again["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["action"].as_str())
        .collect();
    assert_eq!(actions, ["unchanged", "unchanged"]);

    let (_, changed) = t.apply(&APP_V1.replace("shop:1", "shop:2")).await;
    assert_eq!(changed["items"][0]["action"], "configured");
    assert_eq!(changed["items"][1]["action"], "unchanged");
    let (_, web) = t
        .call(Method::GET, &format!("{DEPLOYMENTS}/shop"), None)
        .await;
    assert_eq!(
        web["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );

    // One bad document: nothing from the manifest is written.
    let bad = format!(
        "{}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: broken}}\nspec: {{ports: [{{port: 99999}}]}}\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: fine}\nspec: {ports: [{port: 80}]}"
    );
    let (status, body) = t.apply(&bad).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (422, Some("Invalid")),
        "{body}"
    );
    assert!(
        body["details"]["causes"][0]["field"]
            .as_str()
            .is_some_and(|f| f.contains("spec.ports[0].port")),
        "{body}"
    );
    let (status, _) = t
        .call(
            Method::GET,
            "/api/v1/namespaces/default/services/fine",
            None,
        )
        .await;
    assert_eq!(status, 404, "the valid document must not be applied alone");

    let (status, body) = t
        .apply("apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n   oops: 1\n")
        .await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("document 1") && m.contains("line")),
        "{body}"
    );
}

#[tokio::test]
async fn scale_records_an_event() {
    let t = start().await;
    t.call(
        Method::POST,
        DEPLOYMENTS,
        Some(&deployment("web", "echo:1")),
    )
    .await;
    let scale_path = format!("{DEPLOYMENTS}/web/scale");
    let (status, scale) = t.call(Method::GET, &scale_path, None).await;
    assert_eq!((status, scale["spec"]["replicas"].as_i64()), (200, Some(2)));
    assert_eq!(scale["status"]["selector"], "app=web");

    let (status, scaled) = t
        .call(
            Method::PUT,
            &scale_path,
            Some(&json!({"spec": {"replicas": 6}})),
        )
        .await;
    assert_eq!(
        (status, scaled["spec"]["replicas"].as_i64()),
        (200, Some(6)),
        "{scaled}"
    );
    let (_, web) = t
        .call(Method::GET, &format!("{DEPLOYMENTS}/web"), None)
        .await;
    assert_eq!(web["spec"]["replicas"], 6);

    let (status, body) = t
        .call(
            Method::PUT,
            &scale_path,
            Some(&json!({"spec": {"replicas": -1}})),
        )
        .await;
    assert_eq!(
        (status, body["details"]["causes"][0]["field"].as_str()),
        (422, Some("spec.replicas"))
    );
    let stale = json!({"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 1}});
    let (status, _) = t.call(Method::PUT, &scale_path, Some(&stale)).await;
    assert_eq!(status, 409);

    let (_, events) = t
        .call(
            Method::GET,
            "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dweb",
            None,
        )
        .await;
    let events = events["items"].as_array().expect("items");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], "Scaled");
    assert_eq!(
        events[0]["message"],
        "Scaled Deployment web from 2 to 6 replicas"
    );
    assert_eq!(events[0]["involvedObject"]["kind"], "Deployment");
}

/// `kubectl scale` sends a merge patch without a resourceVersion: a controller writing
/// the Deployment's status at the same time is no conflict for it (Kubernetes retries
/// such a patch on fresh state); a patch naming a stale resourceVersion still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_patches_are_not_refused_for_concurrent_status_writes() {
    let t = start().await;
    let (status, _) = t
        .call(
            Method::POST,
            DEPLOYMENTS,
            Some(&deployment("web", "echo:1")),
        )
        .await;
    assert_eq!(status, 201);
    let item = format!("{DEPLOYMENTS}/web");
    let scale_path = format!("{item}/scale");
    let patch = |body: Value| {
        let (client, path) = (&t.client, &scale_path);
        async move {
            let body = body.to_string();
            let reply = client
                .request(
                    Method::PATCH,
                    path,
                    Some((body.as_bytes(), "application/merge-patch+json")),
                )
                .await
                .expect("patch scale");
            (
                reply.status.as_u16(),
                String::from_utf8_lossy(&reply.body).into_owned(),
            )
        }
    };

    let (done, mut stopped) = tokio::sync::watch::channel(false);
    let status_writer = {
        let client = Client::from_kubeconfig(&t.server.admin_config).expect("client");
        let item = item.clone();
        tokio::spawn(async move {
            let mut written = 0u32;
            while !*stopped.borrow_and_update() {
                let (_, mut web) = client.json(Method::GET, &item, None).await.expect("get");
                written += 1;
                web["status"]["observedGeneration"] = json!(written);
                let status_path = format!("{item}/status");
                // A conflict with a scale patch is this writer's to lose, not the patch's.
                let _ = client.json(Method::PUT, &status_path, Some(&web)).await;
            }
            written
        })
    };
    let mut refused = Vec::new();
    for replicas in 1..=60 {
        let (status, body) = patch(json!({"spec": {"replicas": replicas}})).await;
        if status != 200 {
            refused.push(format!("{replicas}: {status} {body}"));
        }
    }
    let _ = done.send(true);
    let status_writes = status_writer.await.expect("status writer");
    assert!(refused.is_empty(), "scale patches refused: {refused:#?}");
    assert!(status_writes > 1, "the status writer ran: {status_writes}");
    let (_, web) = t.call(Method::GET, &item, None).await;
    assert_eq!(web["spec"]["replicas"], 60);

    let (status, body) =
        patch(json!({"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 2}})).await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test]
async fn rollout_undo_restores_the_previous_template() {
    let t = start().await;
    let item = format!("{DEPLOYMENTS}/web");
    let rollback = format!("{item}/rollback");
    t.call(
        Method::POST,
        DEPLOYMENTS,
        Some(&deployment("web", "echo:1")),
    )
    .await;
    let (status, body) = t.call(Method::POST, &rollback, None).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (400, Some("BadRequest")),
        "no history yet"
    );

    let (_, current) = t.call(Method::GET, &item, None).await;
    let mut v2 = current.clone();
    v2["spec"]["template"]["spec"]["containers"][0]["image"] = json!("echo:2");
    let (_, v2) = t.call(Method::PUT, &item, Some(&v2)).await;
    assert_eq!(
        v2["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );

    let (status, undone) = t.call(Method::POST, &rollback, None).await;
    assert_eq!(status, 200, "{undone}");
    assert_eq!(
        undone["spec"]["template"]["spec"]["containers"][0]["image"],
        "echo:1"
    );
    assert_eq!(
        undone["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );

    // Undo again goes back to echo:2 (now the previous revision), and explicit targets work.
    let (_, again) = t.call(Method::POST, &rollback, None).await;
    assert_eq!(
        again["spec"]["template"]["spec"]["containers"][0]["image"],
        "echo:2"
    );
    let (_, history) = t
        .call(
            Method::GET,
            "/apis/apps/v1/namespaces/default/controllerrevisions",
            None,
        )
        .await;
    assert_eq!(
        history["items"].as_array().map(Vec::len),
        Some(2),
        "templates are reused, not duplicated"
    );
    let (status, _) = t
        .call(Method::POST, &rollback, Some(&json!({"toRevision": 99})))
        .await;
    assert_eq!(status, 400);

    let (_, events) = t
        .call(
            Method::GET,
            "/api/v1/namespaces/default/events?fieldSelector=reason%3DDeploymentRollback",
            None,
        )
        .await;
    assert_eq!(events["items"].as_array().map(Vec::len), Some(2));

    // Deleting the Deployment deletes its history.
    t.call(Method::DELETE, &item, None).await;
    let (_, history) = t
        .call(
            Method::GET,
            "/apis/apps/v1/namespaces/default/controllerrevisions",
            None,
        )
        .await;
    assert_eq!(history["items"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn status_is_a_subresource() {
    let t = start().await;
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDR": "198.18.1.0/24"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    let (status, created) = t.call(Method::POST, "/api/v1/nodes", Some(&node)).await;
    assert_eq!(status, 201, "{created}");
    assert!(
        created.get("status").is_none(),
        "status is not settable on create"
    );

    let status_body = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}], "allocatable": {"cpu": "2"}}});
    let (code, updated) = t
        .call(Method::PUT, "/api/v1/nodes/n1/status", Some(&status_body))
        .await;
    assert_eq!(code, 200, "{updated}");
    assert_eq!(updated["status"]["allocatable"]["cpu"], "2");

    // A write to the object keeps the stored status.
    let mut spec_change = updated.clone();
    spec_change["spec"]["unschedulable"] = json!(true);
    spec_change["status"] = json!({});
    let (_, written) = t
        .call(Method::PUT, "/api/v1/nodes/n1", Some(&spec_change))
        .await;
    assert_eq!(written["spec"]["unschedulable"], true);
    assert_eq!(written["status"]["allocatable"]["cpu"], "2");
}

#[tokio::test]
async fn openapi_document_describes_the_api() {
    let t = start().await;
    let (status, doc) = t.call(Method::GET, "/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    for path in [
        "/apis/apps/v1/namespaces/{namespace}/deployments",
        "/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale",
        "/apis/apps/v1/namespaces/{namespace}/deployments/{name}/rollback",
        "/api/v1/nodes/{name}/status",
        "/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers/{name}/status",
        "/apis/metrics.k8s.io/v1beta1/nodes",
        "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/{name}",
        "/apply",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    let schemas = &doc["components"]["schemas"];
    assert!(
        schemas["Deployment"]["properties"]["spec"].is_object(),
        "{}",
        schemas["Deployment"]
    );
    assert!(schemas.get("Status").is_some());
    // What server-side apply clients read: keyed lists and their keys, the rest atomic.
    let ports = &schemas["Container"]["properties"]["ports"];
    assert_eq!(ports["x-kubernetes-list-type"], "map", "{ports}");
    assert_eq!(
        ports["x-kubernetes-list-map-keys"],
        json!(["containerPort", "protocol"])
    );
    let args = &schemas["Container"]["properties"]["args"];
    assert_eq!(args["x-kubernetes-list-type"], "atomic", "{args}");
    assert_eq!(
        schemas["ServiceSpec"]["properties"]["ports"]["x-kubernetes-list-map-keys"],
        json!(["port", "protocol"])
    );
    let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert!(
        patch["requestBody"]["content"]
            .get("application/apply-patch+yaml")
            .is_some(),
        "{patch}"
    );
    // Every $ref resolves inside the document.
    let text = doc.to_string();
    for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap_or_default();
        assert!(schemas.get(name).is_some(), "dangling $ref {name}");
    }
}

#[tokio::test]
async fn plain_http_only_when_asked_and_still_authenticated() {
    let t = start_with(&["--insecure-http", "--no-controllers"]).await;
    assert!(t.server.url.starts_with("http://127.0.0.1:"));
    let (status, _) = t.call(Method::GET, DEPLOYMENTS, None).await;
    assert_eq!(status, 200);
    let settings = berth_api::kubeconfig::Kubeconfig::load(&t.server.admin_config)
        .expect("admin.conf")
        .settings()
        .expect("settings");
    assert!(settings.ca_pem.is_none());
    let anonymous = Client::new(settings).expect("client").with_token(None);
    let (status, _) = anonymous
        .json(Method::GET, DEPLOYMENTS, None)
        .await
        .expect("request");
    assert_eq!(status.as_u16(), 401);
}

#[tokio::test]
async fn bookmarks_advance_a_filtered_watch() {
    let t = start().await;
    let mut watch = t
        .client
        .watch(&format!(
            "{DEPLOYMENTS}?watch=true&resourceVersion=0&allowWatchBookmarks=true"
        ))
        .await
        .expect("watch");
    // A write of another kind: nothing for this watch, but its resume point moves on.
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}});
    let (_, created) = t.call(Method::POST, "/api/v1/nodes", Some(&node)).await;
    let event = watch.next().await.expect("read").expect("event");
    assert_eq!(event["type"], "BOOKMARK");
    assert_eq!(event["object"]["kind"], "Deployment");
    assert_eq!(rv(&event["object"]), rv(&created));
}

/// PATCH in Kubernetes' three forms, chosen by Content-Type; `dryRun=All` plans without
/// writing; `fieldValidation=Strict` refuses unknown fields by name; a patch that breaks
/// the object is refused with the field and nothing stored changes.
#[tokio::test]
async fn patch_in_three_forms_with_dry_run_and_strict_fields() {
    let t = start().await;
    let (status, created) = t
        .call(
            Method::POST,
            DEPLOYMENTS,
            Some(&deployment("web", "echo:1")),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let path = format!("{DEPLOYMENTS}/web");
    let patch = |query: &str, body: &str, content_type: &'static str| {
        let (t, path) = (&t, &path);
        let body = body.to_owned();
        let query = query.to_owned();
        async move {
            let reply = t
                .client
                .request(
                    Method::PATCH,
                    &format!("{path}{query}"),
                    Some((body.as_bytes(), content_type)),
                )
                .await
                .expect("request");
            (reply.status.as_u16(), reply.json().unwrap_or(Value::Null))
        }
    };
    let stored = || async { t.call(Method::GET, &path, None).await.1 };

    let (status, body) = patch(
        "",
        r#"{"spec":{"replicas":4}}"#,
        "application/merge-patch+json",
    )
    .await;
    assert_eq!(
        (status, &body["spec"]["replicas"]),
        (200, &json!(4)),
        "{body}"
    );
    let (status, body) = patch(
        "",
        r#"[{"op":"add","path":"/metadata/labels/tier","value":"front"}]"#,
        "application/json-patch+json",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stored().await["metadata"]["labels"]["tier"], "front");
    let (status, body) = patch(
        "",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"main","image":"echo:2"}]}}}}"#,
        "application/strategic-merge-patch+json",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let container = &stored().await["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        (&container["image"], &container["ports"][0]["containerPort"]),
        (&json!("echo:2"), &json!(8080)),
        "merged into the container of the same name"
    );

    let before = stored().await;
    let (status, planned) = patch(
        "?dryRun=All",
        r#"{"spec":{"replicas":9}}"#,
        "application/merge-patch+json",
    )
    .await;
    assert_eq!(
        (status, &planned["spec"]["replicas"]),
        (200, &json!(9)),
        "{planned}"
    );
    assert_eq!(stored().await, before, "a dry run writes nothing");

    let (status, refused) = patch(
        "?fieldValidation=Strict",
        r#"{"spec":{"surprise":true}}"#,
        "application/merge-patch+json",
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains(r#"unknown field "spec.surprise""#)),
        "{refused}"
    );
    let (status, invalid) = patch(
        "",
        r#"{"spec":{"replicas":-1}}"#,
        "application/merge-patch+json",
    )
    .await;
    assert_eq!(status, 422, "{invalid}");
    assert_eq!(invalid["details"]["causes"][0]["field"], "spec.replicas");
    let (status, unsupported) = patch("", "{}", "application/json").await;
    assert_eq!(status, 415, "{unsupported}");
    assert_eq!(stored().await, before, "refused patches change nothing");
}

/// A namespace's LimitRange gives new pods its defaults and refuses those outside its
/// bounds, with Kubernetes' words.
#[tokio::test]
async fn limit_ranges_default_and_bound_new_pods() {
    let t = start().await;
    let (status, body) = t.apply(LIMIT_RANGE).await;
    assert_eq!(status, 200, "{body}");
    let pod = |name: &str, resources: Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
               "spec": {"containers": [{"name": "c", "image": "echo:1", "resources": resources}]}})
    };
    let (status, created) = t
        .call(
            Method::POST,
            "/api/v1/namespaces/default/pods",
            Some(&pod("plain", json!({}))),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let resources = &created["spec"]["containers"][0]["resources"];
    assert_eq!(
        resources["limits"],
        json!({"cpu": "200m", "memory": "128Mi"})
    );
    assert_eq!(
        resources["requests"],
        json!({"cpu": "100m", "memory": "128Mi"})
    );
    let (status, refused) = t
        .call(
            Method::POST,
            "/api/v1/namespaces/default/pods",
            Some(&pod("big", json!({"limits": {"memory": "1Gi"}}))),
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(
        refused["message"],
        "pods \"big\" is forbidden: maximum memory usage per Container is 256Mi, but limit is 1Gi"
    );
    let (status, _) = t
        .call(Method::GET, "/api/v1/namespaces/default/pods/big", None)
        .await;
    assert_eq!(status, 404, "nothing stored");
}

/// Events expire `--event-ttl` seconds after they last happened (the event controller
/// deletes them); a newer event stays.
#[tokio::test]
async fn events_expire_after_their_ttl() {
    let t = start_with(&["--event-ttl", "2"]).await;
    let event = |name: &str, at: &str| {
        json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": name},
               "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web"},
               "reason": "Tested", "message": "m", "type": "Normal",
               "firstTimestamp": at, "lastTimestamp": at})
    };
    let now = berth_api::time::rfc3339_now();
    for (name, at) in [("old", "2020-01-01T00:00:00Z"), ("new", now.as_str())] {
        let (status, body) = t
            .call(
                Method::POST,
                "/api/v1/namespaces/default/events",
                Some(&event(name, at)),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    eventually("the old event gone", async || {
        let (status, _) = t
            .call(Method::GET, "/api/v1/namespaces/default/events/old", None)
            .await;
        (status == 404).then_some(())
    })
    .await;
    let (status, _) = t
        .call(Method::GET, "/api/v1/namespaces/default/events/new", None)
        .await;
    assert_eq!(status, 200, "the new one is kept for now");
    eventually("the new event gone after its TTL", async || {
        let (status, _) = t
            .call(Method::GET, "/api/v1/namespaces/default/events/new", None)
            .await;
        (status == 404).then_some(())
    })
    .await;
}

/// `limit` and `continue`: a list in pages, each with the token of the next and the
/// count of what remains, ending with a page without a token; a token not from this
/// server is a 400.
#[tokio::test]
async fn lists_come_in_pages() {
    let t = start().await;
    for i in 0..7 {
        let (status, body) = t
            .apply(&format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: page-{i}}}\ndata: {{n: \"{i}\"}}\n"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let mut names = Vec::new();
    let mut path = "/api/v1/namespaces/default/configmaps?limit=3".to_owned();
    let mut remaining = Vec::new();
    loop {
        let (status, list) = t.call(Method::GET, &path, None).await;
        assert_eq!(status, 200, "{list}");
        let items = list["items"].as_array().cloned().unwrap_or_default();
        assert!(items.len() <= 3, "{list}");
        names.extend(
            items
                .iter()
                .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_owned)),
        );
        match list["metadata"]["continue"].as_str() {
            Some(token) => {
                remaining.push(list["metadata"]["remainingItemCount"].clone());
                path = format!("/api/v1/namespaces/default/configmaps?limit=3&continue={token}");
            }
            None => break,
        }
    }
    let expected: Vec<String> = (0..7).map(|i| format!("page-{i}")).collect();
    assert_eq!(names, expected);
    assert_eq!(remaining, [json!(4), json!(1)]);
    let (status, refused) = t
        .call(
            Method::GET,
            "/api/v1/namespaces/default/configmaps?limit=3&continue=nonsense",
            None,
        )
        .await;
    assert_eq!(status, 400, "{refused}");
}

/// Pod Security admission: a namespace without a level is `baseline` (no privileged
/// containers, no capabilities beyond the runtime's defaults); `restricted` also asks for
/// non-root, no escalation and every capability dropped; `privileged` allows anything.
/// Each refusal names the level and every violating field.
#[tokio::test]
async fn namespaces_enforce_their_pod_security_level() {
    let t = start().await;
    for (name, level) in [("open", "privileged"), ("locked", "restricted")] {
        let (status, body) = t
            .apply(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{pod-security.kubernetes.io/enforce: {level}}}}}\n"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let pod = |name: &str, security: Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
               "spec": {"containers": [{"name": "c", "image": "echo:1", "securityContext": security}]}})
    };
    let create = |namespace: &'static str, body: Value| {
        let t = &t;
        async move {
            t.call(
                Method::POST,
                &format!("/api/v1/namespaces/{namespace}/pods"),
                Some(&body),
            )
            .await
        }
    };
    let privileged = json!({"privileged": true});
    let (status, refused) = create("default", pod("root", privileged.clone())).await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(
        refused["message"],
        "pods \"root\" is forbidden: violates PodSecurity \"baseline\": spec.containers[0].securityContext.privileged: privileged containers are not allowed in a baseline namespace"
    );
    let (status, body) = create("open", pod("root", privileged)).await;
    assert_eq!(status, 201, "{body}");
    let (status, refused) = create("locked", pod("plain", json!({}))).await;
    assert_eq!(status, 403, "{refused}");
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("violates PodSecurity \"restricted\"")
            && message.contains("capabilities.drop: must include ALL")
            && message.contains("runAsNonRoot: must be true"),
        "{message}"
    );
    let hardened = json!({"runAsNonRoot": true, "runAsUser": 1000, "allowPrivilegeEscalation": false,
                          "capabilities": {"drop": ["ALL"]}});
    let (status, body) = create("locked", pod("hardened", hardened)).await;
    assert_eq!(status, 201, "{body}");
    // A field that cannot mean anything is an invalid pod, by field.
    let (status, invalid) = create(
        "open",
        pod(
            "odd",
            json!({"runAsUser": -1, "capabilities": {"add": ["CAP_NET_ADMIN"]}}),
        ),
    )
    .await;
    assert_eq!(status, 422, "{invalid}");
    let fields: Vec<&str> = invalid["details"]["causes"]
        .as_array()
        .map(|causes| causes.iter().filter_map(|c| c["field"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        fields,
        [
            "spec.containers[0].securityContext.runAsUser",
            "spec.containers[0].securityContext.capabilities.add[0]"
        ]
    );
}

/// A ResourceQuota refuses the create that would exceed it, naming itself and the
/// amounts, also when 20 creates race; its status shows the usage.
#[tokio::test]
async fn quotas_refuse_what_would_exceed_them_even_under_concurrent_creates() {
    // Controllers on, for the quota's status; no node, so the pods stay pending.
    let t = start_with(&[]).await;
    let (status, body) = t
        .apply(
            "apiVersion: v1
kind: Namespace
metadata: {name: team}
---
apiVersion: v1
kind: ResourceQuota
metadata: {name: compute, namespace: team}
spec:
  hard: {pods: \"3\", requests.cpu: \"1\"}
",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let pod = |name: String, cpu: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
               "spec": {"containers": [{"name": "c", "image": "echo:1",
                        "resources": {"requests": {"cpu": cpu}}}]}})
    };
    let creates = (0..20).map(|i| {
        let body = pod(format!("p{i}"), "100m");
        let client = &t.client;
        async move {
            client
                .json(Method::POST, "/api/v1/namespaces/team/pods", Some(&body))
                .await
                .expect("request")
        }
    });
    let answers = futures_util::future::join_all(creates).await;
    let created = answers.iter().filter(|(s, _)| s.as_u16() == 201).count();
    assert_eq!(created, 3, "{answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| s.as_u16() != 201) {
        assert_eq!(status.as_u16(), 403, "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(
                "exceeded quota: compute, requested: pods=1, used: pods=3, limited: pods=3"
            ),
            "{message}"
        );
    }

    // CPU: 2 × 400m fit in 1, a third does not.
    let (status, body) = t
        .apply(
            "apiVersion: v1
kind: Namespace
metadata: {name: cpu}
---
apiVersion: v1
kind: ResourceQuota
metadata: {name: cores, namespace: cpu}
spec:
  hard: {requests.cpu: \"1\"}
",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for (i, want) in [201, 201, 403].into_iter().enumerate() {
        let (status, body) = t
            .call(
                Method::POST,
                "/api/v1/namespaces/cpu/pods",
                Some(&pod(format!("c{i}"), "400m")),
            )
            .await;
        assert_eq!(status, want, "{body}");
        if want == 403 {
            assert_eq!(
                body["message"],
                "pods \"c2\" is forbidden: exceeded quota: cores, requested: requests.cpu=400m, used: requests.cpu=800m, limited: requests.cpu=1"
            );
        }
    }
    // Usage in status, from the quota controller.
    common::eventually("the quota's usage in its status", || async {
        let (_, quota) = t
            .call(
                Method::GET,
                "/api/v1/namespaces/team/resourcequotas/compute",
                None,
            )
            .await;
        (quota["status"]["used"] == json!({"pods": "3", "requests.cpu": "300m"})).then_some(())
    })
    .await;
}
