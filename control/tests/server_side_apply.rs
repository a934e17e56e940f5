//! Server-side apply (`PATCH` with `application/apply-patch+yaml`) and the field ownership
//! it keeps in `metadata.managedFields`, checked on what the server stores.

mod common;

use axum::http::Method;
use common::{DEPLOYMENTS, LIMIT_RANGE, TestServer, deployment, start};
use serde_json::{Value, json};

const APPLY: &str = "application/apply-patch+yaml";

/// The configuration `alice` applies: replicas, a label, one container with one env var.
fn web(replicas: u32, label: bool, env: bool) -> String {
    let mut yaml = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
"
    .to_owned();
    if label {
        yaml.push_str("    tier: front\n");
    }
    yaml.push_str(&format!(
        "spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
        - name: web
          image: echo:1
          ports:
            - containerPort: 8080
"
    ));
    if env {
        yaml.push_str("          env:\n            - {name: MODE, value: fast}\n");
    }
    yaml
}

/// (status, body) of a PATCH of `path` with `body` as `content_type`.
async fn patch(t: &TestServer, path: &str, body: &str, content_type: &str) -> (u16, Value) {
    let reply = t
        .client
        .request(Method::PATCH, path, Some((body.as_bytes(), content_type)))
        .await
        .expect("request");
    (reply.status.as_u16(), reply.json().unwrap_or(Value::Null))
}

async fn stored(t: &TestServer) -> Value {
    let (status, body) = t
        .call(Method::GET, &format!("{DEPLOYMENTS}/web"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The entry of `manager` with `operation` in the object's managedFields.
fn entry<'a>(object: &'a Value, manager: &str, operation: &str) -> Option<&'a Value> {
    object["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == operation)
}

#[tokio::test]
async fn apply_creates_owns_prunes_and_changes_nothing_when_repeated() {
    let t = start().await;
    let alice = format!("{DEPLOYMENTS}/web?fieldManager=alice");

    let (status, refused) = patch(
        &t,
        &format!("{DEPLOYMENTS}/web"),
        &web(2, true, true),
        APPLY,
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(
        refused["message"],
        "fieldManager is required for apply requests"
    );
    let (status, refused) = patch(&t, &alice, "spec:\n  replicas: [1\n", APPLY).await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("line 2")),
        "{refused}"
    );
    let (status, planned) = patch(
        &t,
        &format!("{alice}&dryRun=All"),
        &web(2, true, true),
        APPLY,
    )
    .await;
    assert_eq!(
        (status, &planned["spec"]["replicas"]),
        (201, &json!(2)),
        "{planned}"
    );
    let (status, _) = t
        .call(Method::GET, &format!("{DEPLOYMENTS}/web"), None)
        .await;
    assert_eq!(status, 404, "a dry run creates nothing");

    let (status, created) = patch(&t, &alice, &web(2, true, true), APPLY).await;
    assert_eq!(
        status, 201,
        "an apply to a missing name creates it: {created}"
    );
    let object = stored(&t).await;
    assert_eq!(object["spec"]["replicas"], 2);
    let owned = entry(&object, "alice", "Apply").expect("alice's Apply entry");
    assert_eq!(owned["apiVersion"], "apps/v1");
    assert_eq!(owned["fieldsType"], "FieldsV1");
    assert!(owned["time"].is_string(), "{owned}");
    let fields = &owned["fieldsV1"];
    assert_eq!(fields["f:spec"]["f:replicas"], json!({}));
    assert_eq!(fields["f:metadata"]["f:labels"]["f:tier"], json!({}));
    let container =
        &fields["f:spec"]["f:template"]["f:spec"]["f:containers"][r#"k:{"name":"web"}"#];
    assert_eq!(container["."], json!({}), "{fields}");
    assert_eq!(container["f:image"], json!({}));
    assert_eq!(
        container["f:ports"][r#"k:{"containerPort":8080,"protocol":"TCP"}"#]["f:containerPort"],
        json!({}),
        "{fields}"
    );
    assert_eq!(
        container["f:env"][r#"k:{"name":"MODE"}"#]["f:value"],
        json!({})
    );
    assert!(
        fields["f:metadata"].get("f:name").is_none(),
        "the server's metadata is no one's"
    );

    let mut watch = t
        .client
        .watch(&format!(
            "{DEPLOYMENTS}?watch=true&resourceVersion={}",
            object["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
        ))
        .await
        .expect("watch");
    let (status, again) = patch(&t, &alice, &web(2, true, true), APPLY).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        stored(&t).await,
        object,
        "the same configuration again changes nothing, not even the resourceVersion"
    );

    let (status, pruned) = patch(&t, &alice, &web(2, false, false), APPLY).await;
    assert_eq!(status, 200, "{pruned}");
    let event = watch.next().await.expect("read").expect("event");
    assert_eq!(
        (
            &event["type"],
            &event["object"]["metadata"]["resourceVersion"]
        ),
        (&json!("MODIFIED"), &pruned["metadata"]["resourceVersion"]),
        "the first event after the repeated apply is the next one's: {event}"
    );
    let object = stored(&t).await;
    assert_eq!(
        object["metadata"]["labels"],
        json!({"app": "web"}),
        "the label alice stopped applying is gone"
    );
    let container = &object["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container.get("env").is_none(),
        "so is the env var: {container}"
    );
    assert_eq!(container["image"], "echo:1");
}

#[tokio::test]
async fn another_managers_field_conflicts_until_forced() {
    let t = start().await;
    let alice = format!("{DEPLOYMENTS}/web?fieldManager=alice");
    let (status, created) = patch(&t, &alice, &web(2, false, false), APPLY).await;
    assert_eq!(status, 201, "{created}");

    // bob changes the replicas with an ordinary patch: an Update entry of his.
    let (status, scaled) = patch(
        &t,
        &format!("{DEPLOYMENTS}/web?fieldManager=bob"),
        r#"{"spec":{"replicas":5}}"#,
        "application/merge-patch+json",
    )
    .await;
    assert_eq!(status, 200, "{scaled}");
    let object = stored(&t).await;
    let bobs = entry(&object, "bob", "Update").expect("bob's Update entry");
    assert_eq!(bobs["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
    let alices = entry(&object, "alice", "Apply").expect("alice's entry");
    assert!(
        alices["fieldsV1"]["f:spec"].get("f:replicas").is_none(),
        "bob took it: {alices}"
    );

    // Applying the value bob set is no conflict: both own it.
    let (status, shared) = patch(&t, &alice, &web(5, false, false), APPLY).await;
    assert_eq!(status, 200, "{shared}");
    let (status, conflict) = patch(&t, &alice, &web(3, false, false), APPLY).await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["reason"], "Conflict");
    let message = conflict["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("Apply failed with 1 conflict: conflict with \"bob\" using apps/v1")
            && message.ends_with(": .spec.replicas"),
        "{message}"
    );
    assert_eq!(
        conflict["details"]["causes"][0]["reason"],
        "FieldManagerConflict"
    );
    assert_eq!(conflict["details"]["causes"][0]["field"], ".spec.replicas");
    assert_eq!(
        stored(&t).await["spec"]["replicas"],
        5,
        "a conflict writes nothing"
    );

    let (status, forced) = patch(
        &t,
        &format!("{alice}&force=true"),
        &web(3, false, false),
        APPLY,
    )
    .await;
    assert_eq!(status, 200, "{forced}");
    let object = stored(&t).await;
    assert_eq!(object["spec"]["replicas"], 3);
    assert!(
        entry(&object, "bob", "Update").is_none(),
        "bob owned nothing else, so his entry is gone: {}",
        object["metadata"]["managedFields"]
    );
    let alices = entry(&object, "alice", "Apply").expect("alice's entry");
    assert_eq!(alices["fieldsV1"]["f:spec"]["f:replicas"], json!({}));
}

#[tokio::test]
async fn ordinary_writes_record_their_manager_and_keep_the_others() {
    let t = start().await;
    let (status, created) = t
        .call(
            Method::POST,
            &format!("{DEPLOYMENTS}?fieldManager=creator"),
            Some(&deployment("web", "echo:1")),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let creator = entry(&created, "creator", "Update").expect("the creator's entry");
    assert_eq!(
        creator["fieldsV1"]["f:spec"]["f:replicas"],
        json!({}),
        "{creator}"
    );

    // A PUT that leaves managedFields out keeps them; its manager owns what it changed.
    let mut replaced = created.clone();
    replaced["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("managedFields");
    replaced["spec"]["replicas"] = json!(4);
    let (status, updated) = t
        .call(
            Method::PUT,
            &format!("{DEPLOYMENTS}/web?fieldManager=editor"),
            Some(&replaced),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    let creator = entry(&updated, "creator", "Update").expect("kept");
    assert!(
        creator["fieldsV1"]["f:spec"].get("f:replicas").is_none(),
        "{creator}"
    );
    assert_eq!(
        creator["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"][r#"k:{"name":"main"}"#]
            ["f:image"],
        json!({})
    );
    let editor = entry(&updated, "editor", "Update").expect("the editor's entry");
    assert_eq!(editor["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));

    // Entries a client sends replace the stored ones.
    let mut forged = updated.clone();
    forged["metadata"]["managedFields"] = json!([{"manager": "someone", "operation": "Update",
        "apiVersion": "apps/v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:paused": {}}}}]);
    let (status, replaced) = t
        .call(Method::PUT, &format!("{DEPLOYMENTS}/web"), Some(&forged))
        .await;
    assert_eq!(status, 200, "{replaced}");
    let entries = &stored(&t).await["metadata"]["managedFields"];
    assert_eq!(entries.as_array().map(Vec::len), Some(1), "{entries}");
    assert_eq!(entries[0]["manager"], "someone");
    forged["metadata"]["managedFields"][0]["operation"] = json!("Steal");
    let (status, refused) = t
        .call(Method::PUT, &format!("{DEPLOYMENTS}/web"), Some(&forged))
        .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(
        refused["details"]["causes"][0]["field"],
        "metadata.managedFields[0].operation"
    );
}

#[tokio::test]
async fn applies_are_validated_and_admitted_like_other_writes() {
    let t = start().await;
    let (status, body) = t.apply(LIMIT_RANGE).await;
    assert_eq!(status, 200, "{body}");
    let pod = |name: &str, memory: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n    - name: c\n      image: echo:1\n      resources: {{limits: {{memory: {memory}}}}}\n"
        )
    };
    let pods = "/api/v1/namespaces/default/pods";
    let (status, created) = patch(
        &t,
        &format!("{pods}/small?fieldManager=alice"),
        &pod("small", "64Mi"),
        APPLY,
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["spec"]["containers"][0]["resources"]["limits"],
        json!({"cpu": "200m", "memory": "64Mi"}),
        "the LimitRange's default is added"
    );
    let (status, refused) = patch(
        &t,
        &format!("{pods}/big?fieldManager=alice"),
        &pod("big", "1Gi"),
        APPLY,
    )
    .await;
    assert_eq!(status, 403, "{refused}");
    let (status, _) = t.call(Method::GET, &format!("{pods}/big"), None).await;
    assert_eq!(status, 404, "nothing stored");

    let alice = format!("{DEPLOYMENTS}/web?fieldManager=alice");
    let (status, invalid) = patch(
        &t,
        &alice,
        &web(2, false, false).replace("replicas: 2", "replicas: -1"),
        APPLY,
    )
    .await;
    assert_eq!(status, 422, "{invalid}");
    assert_eq!(invalid["details"]["causes"][0]["field"], "spec.replicas");
}
