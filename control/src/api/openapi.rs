//! `/openapi.json`: an OpenAPI 3.0 document generated from the same kind table and
//! typed models that validate requests, so it cannot drift from what the server does.

use axum::{
    Json,
    extract::{Path, State},
    response::{IntoResponse, Response},
};
use berth_api::{RESOURCE_TYPES, ResourceType, patch::list_map_keys};
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::{ApiState, with_info};

pub async fn serve(State(_state): State<ApiState>) -> Response {
    with_info(Json(document()).into_response(), "get", "openapi")
}

/// `GET /openapi/v3`: where each group version's document is, as Kubernetes lists them
/// (kubectl fetches this first, then the documents it needs).
pub async fn v3_index() -> Response {
    let paths: Map<String, Value> = group_versions()
        .into_iter()
        .filter_map(|path| {
            let document = v3_document(&path)?;
            let digest =
                ring::digest::digest(&ring::digest::SHA256, document.to_string().as_bytes());
            let hash: String = digest.as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            Some((
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
            ))
        })
        .collect();
    with_info(
        Json(json!({"paths": paths})).into_response(),
        "get",
        "openapi",
    )
}

/// `GET /openapi/v3/api/v1`, `/openapi/v3/apis/{group}/{version}`: the OpenAPI 3.0
/// document of one group version.
pub async fn v3_group_version(Path(path): Path<String>) -> Response {
    let response = match v3_document(&path) {
        Some(document) => Json(document).into_response(),
        None => super::error::ApiError::no_route(format!("no OpenAPI document for {path}"))
            .into_response(),
    };
    with_info(response, "get", "openapi")
}

/// `api/v1`, `apis/apps/v1`, ...: every group version with kinds.
fn group_versions() -> Vec<String> {
    let mut paths: Vec<String> = RESOURCE_TYPES
        .iter()
        .map(|rt| rt.group_path().trim_start_matches('/').to_owned())
        .collect();
    paths.dedup();
    paths.sort();
    paths.dedup();
    paths
}

/// The whole document's paths under `/<path>/`, with every schema.
fn v3_document(path: &str) -> Option<Value> {
    if !group_versions().iter().any(|known| known == path) {
        return None;
    }
    let mut document = document();
    let prefix = format!("/{path}/");
    if let Some(Value::Object(paths)) = document.get_mut("paths") {
        paths.retain(|route, _| route.starts_with(&prefix));
    }
    Some(document)
}

pub fn document() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    for rt in RESOURCE_TYPES {
        let schema = serde_json::to_value(rt.schema(&mut generator)).unwrap_or(Value::Null);
        add_paths(&mut paths, rt, &schema);
    }
    let scale = serde_json::to_value(generator.subschema_for::<berth_api::apps::Scale>())
        .unwrap_or(Value::Null);
    for rt in RESOURCE_TYPES
        .iter()
        .filter(|rt| matches!(rt.kind, "Deployment" | "ReplicaSet" | "StatefulSet"))
    {
        let path = format!(
            "{}/namespaces/{{namespace}}/{}/{{name}}/scale",
            rt.group_path(),
            rt.plural
        );
        paths.insert(
            path,
            json!({
                "parameters": [param("namespace"), param("name")],
                "get": op(&format!("Read the scale of a {}", rt.kind), &scale, None),
                "put": op(&format!("Set the replicas of a {}", rt.kind), &scale, Some(&scale)),
            }),
        );
    }
    for (plural, kind) in [
        ("deployments", "Deployment"),
        ("statefulsets", "StatefulSet"),
    ] {
        paths.insert(
            format!("/apis/apps/v1/namespaces/{{namespace}}/{plural}/{{name}}/rollback"),
            json!({
                "parameters": [param("namespace"), param("name")],
                "post": {
                    "summary": format!("Roll a {kind} back to an earlier pod template (rollout undo)"),
                    "requestBody": {"content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {"toRevision": {"type": "integer", "description": "0 or absent: the previous revision"}},
                    }}}},
                    "responses": responses(&json!({"$ref": format!("#/components/schemas/{kind}")})),
                },
            }),
        );
    }
    add_node_paths(&mut paths);
    paths.insert(
        "/apply".to_owned(),
        json!({
            "post": {
                "summary": "Create or update every object of a YAML or JSON manifest, all or nothing",
                "parameters": [{"name": "dryRun", "in": "query", "schema": {"type": "boolean"}}],
                "requestBody": {"content": {
                    "application/yaml": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "object"}},
                }},
                "responses": responses(&json!({"type": "object"})),
            },
        }),
    );
    paths.insert(
        "/bootstrap-tokens".to_owned(),
        json!({
            "get": {
                "summary": "List the unexpired bootstrap tokens created for node agents (no secrets)",
                "responses": responses(&json!({"type": "object"})),
            },
            "post": {
                "summary": "Create a bootstrap token; the answer's `token` is shown only once",
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object",
                    "properties": {
                        "ttlSeconds": {"type": "integer", "description": "0 or absent: never expires"},
                        "description": {"type": "string"},
                    },
                }}}},
                "responses": responses(&json!({"type": "object"})),
            },
        }),
    );
    paths.insert(
        "/bootstrap-tokens/{id}".to_owned(),
        json!({
            "parameters": [param("id")],
            "delete": {
                "summary": "Delete a bootstrap token; nodes that joined with it stay",
                "responses": responses(&json!({"type": "object"})),
            },
        }),
    );
    add_metrics_paths(&mut paths);
    for (path, summary) in [
        ("/metrics", "Prometheus metrics (text exposition format)"),
        ("/healthz", "Liveness; no authentication"),
        ("/readyz", "Readiness; no authentication"),
        ("/version", "Server version"),
        ("/openapi.json", "This document"),
    ] {
        paths.insert(
            path.to_owned(),
            json!({"get": {"summary": summary, "responses": {"200": {"description": "OK"}}}}),
        );
    }
    let mut schemas = generator.take_definitions(true);
    mark_lists(&mut schemas);
    for rt in RESOURCE_TYPES {
        if let Some(Value::Object(schema)) = schemas.get_mut(rt.kind) {
            schema.insert(
                "x-kubernetes-group-version-kind".to_owned(),
                json!([{"group": rt.group, "version": rt.version, "kind": rt.kind}]),
            );
        }
    }
    schemas.insert(
        "Status".to_owned(),
        json!({
            "type": "object",
            "description": "Every error response (Kubernetes' Status).",
            "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                "status": {"type": "string"}, "message": {"type": "string"},
                "reason": {"type": "string", "description": "NotFound, AlreadyExists, Conflict, Invalid, BadRequest, Unauthorized, Expired, RequestEntityTooLarge, MethodNotAllowed, InternalError"},
                "code": {"type": "integer"},
                "details": {"type": "object", "properties": {
                    "name": {"type": "string"}, "kind": {"type": "string"},
                    "causes": {"type": "array", "items": {"type": "object", "properties": {
                        "field": {"type": "string"}, "message": {"type": "string"}, "reason": {"type": "string"},
                    }}},
                }},
            },
        }),
    );
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Berth mesh control API", "version": env!("CARGO_PKG_VERSION")},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    })
}

/// Kubernetes' list extensions, which kubectl and server-side apply clients read: a list
/// whose items have keys is a `map` list with its keys (and merges by the first in a
/// strategic merge patch), every other list is `atomic` (replaced whole).
fn mark_lists(schemas: &mut Map<String, Value>) {
    for (name, schema) in schemas.iter_mut() {
        // The field holding the definition's map, where a key depends on it.
        let parent = match name.as_str() {
            "Container" => Some("containers"),
            name if name.ends_with("Spec") => Some("spec"),
            _ => None,
        };
        let Some(Value::Object(properties)) = schema.get_mut("properties") else {
            continue;
        };
        for (field, property) in properties.iter_mut() {
            let Value::Object(property) = property else {
                continue;
            };
            if property.get("type") != Some(&json!("array")) {
                continue;
            }
            match list_map_keys(parent, field) {
                Some(keys) => {
                    property.insert("x-kubernetes-list-type".to_owned(), json!("map"));
                    property.insert("x-kubernetes-list-map-keys".to_owned(), json!(keys));
                    property.insert("x-kubernetes-patch-merge-key".to_owned(), json!(keys[0]));
                    property.insert("x-kubernetes-patch-strategy".to_owned(), json!("merge"));
                }
                None => {
                    property.insert("x-kubernetes-list-type".to_owned(), json!("atomic"));
                }
            }
        }
    }
}

fn param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
}

fn query_params() -> Value {
    json!([
        {"name": "labelSelector", "in": "query", "schema": {"type": "string"}, "description": "e.g. app=web,tier!=db,env in (a,b)"},
        {"name": "fieldSelector", "in": "query", "schema": {"type": "string"}, "description": "e.g. spec.nodeName=node-1"},
        {"name": "watch", "in": "query", "schema": {"type": "boolean"}, "description": "stream changes as newline-delimited JSON events"},
        {"name": "resourceVersion", "in": "query", "schema": {"type": "string"}, "description": "watch: changes after this revision"},
        {"name": "allowWatchBookmarks", "in": "query", "schema": {"type": "boolean"}},
        {"name": "timeoutSeconds", "in": "query", "schema": {"type": "integer"}},
    ])
}

/// The routes answered by a node's agent through the control plane (`node_proxy`).
fn add_node_paths(paths: &mut Map<String, Value>) {
    let flag = |name: &str, description: &str| json!({"name": name, "in": "query", "schema": {"type": "boolean"}, "description": description});
    let mut log_responses = responses(&json!({"type": "string"}));
    log_responses["200"] = json!({"description": "The container's output",
        "content": {"text/plain": {"schema": {"type": "string"}}}});
    paths.insert(
        "/api/v1/namespaces/{namespace}/pods/{name}/log".to_owned(),
        json!({
            "parameters": [param("namespace"), param("name")],
            "get": {
                "summary": "A container's output, from its node (streamed while follow)",
                "parameters": [
                    {"name": "container", "in": "query", "schema": {"type": "string"},
                     "description": "may be left out when the pod has one container"},
                    flag("follow", "keep streaming new output"),
                    flag("previous", "the attempt before the current one"),
                    flag("timestamps", "prefix each line with its time"),
                    {"name": "tailLines", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                ],
                "responses": log_responses,
            },
        }),
    );
    paths.insert(
        "/api/v1/namespaces/{namespace}/pods/{name}/exec".to_owned(),
        json!({
            "parameters": [param("namespace"), param("name")],
            "post": {
                "summary": "Run a command in a pod's container to its end (no stdin, no terminal)",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["command"],
                    "properties": {
                        "command": {"type": "array", "items": {"type": "string"}},
                        "container": {"type": "string"},
                        "timeoutSeconds": {"type": "integer", "minimum": 0, "maximum": 600},
                    },
                }}}},
                "responses": responses(&json!({"type": "object", "properties": {
                    "exitCode": {"type": "integer"}, "stdout": {"type": "string"},
                    "stderr": {"type": "string"}, "truncated": {"type": "boolean"},
                    "container": {"type": "string"}, "node": {"type": "string"},
                }})),
            },
        }),
    );
    paths.insert(
        "/api/v1/namespaces/{namespace}/services/{name}/backends".to_owned(),
        json!({
            "parameters": [param("namespace"), param("name")],
            "get": {
                "summary": "The backends each Ready node's datapath serves the service with, read from its maps",
                "responses": responses(&json!({"type": "object", "properties": {
                    "nodes": {"type": "array", "items": {"type": "object"}},
                }})),
            },
        }),
    );
}

fn responses(ok: &Value) -> Value {
    let status = json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}});
    let mut out =
        json!({"200": {"description": "OK", "content": {"application/json": {"schema": ok}}}});
    for (code, description) in [
        ("400", "Malformed request"),
        ("401", "Missing or wrong bearer token"),
        ("404", "Not found"),
        ("409", "Conflict (stale resourceVersion) or already exists"),
        ("410", "Watch history compacted"),
        ("413", "Request too large"),
        ("422", "Invalid object: details.causes lists every field"),
    ] {
        let mut response = status.clone();
        response["description"] = json!(description);
        out[code] = response;
    }
    out
}

fn op(summary: &str, response: &Value, body: Option<&Value>) -> Value {
    let mut op = json!({"summary": summary, "responses": responses(response)});
    if let Some(body) = body {
        op["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": body}}});
    }
    op
}

fn add_paths(paths: &mut Map<String, Value>, rt: &ResourceType, schema: &Value) {
    let list = json!({"type": "object", "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"},
        "metadata": {"type": "object", "properties": {"resourceVersion": {"type": "string"}}},
        "items": {"type": "array", "items": schema},
    }});
    let base = rt.group_path();
    let (collection, item, scope) = if rt.namespaced {
        (
            format!("{base}/namespaces/{{namespace}}/{}", rt.plural),
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", rt.plural),
            vec![param("namespace")],
        )
    } else {
        (
            format!("{base}/{}", rt.plural),
            format!("{base}/{}/{{name}}", rt.plural),
            Vec::new(),
        )
    };
    // Kubernetes' extensions: clients find a kind's operations by them (kubectl looks
    // for `fieldValidation` on its PATCH to know the server validates fields).
    let of_kind = |mut op: Value, action: &str| {
        op["x-kubernetes-action"] = json!(action);
        op["x-kubernetes-group-version-kind"] =
            json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
        op
    };
    let field_validation = json!([{"name": "fieldValidation", "in": "query", "schema": {"type": "string"},
        "description": "Strict refuses fields Berth does not support, Warn (default) reports them, Ignore drops them"}]);
    let mut list_op = op(&format!("List or watch {}", rt.plural), &list, None);
    list_op["parameters"] = query_params();
    let mut create = of_kind(
        op(&format!("Create a {}", rt.kind), schema, Some(schema)),
        "post",
    );
    create["parameters"] = field_validation.clone();
    paths.insert(
        collection,
        json!({
            "parameters": scope,
            "get": of_kind(list_op, "list"),
            "post": create,
        }),
    );
    let mut item_params = scope.clone();
    item_params.push(param("name"));
    let mut delete = op(&format!("Delete a {}", rt.kind), schema, None);
    delete["parameters"] = json!([{"name": "resourceVersion", "in": "query", "schema": {"type": "string"},
        "description": "delete only if this is still the current revision"}]);
    let mut replace = of_kind(
        op(
            &format!(
                "Replace a {} (409 if metadata.resourceVersion is stale)",
                rt.kind
            ),
            schema,
            Some(schema),
        ),
        "put",
    );
    replace["parameters"] = field_validation.clone();
    let mut patch = of_kind(
        op(
            &format!(
                "Patch a {}: JSON merge, JSON or strategic merge patch, or server-side apply",
                rt.kind
            ),
            schema,
            None,
        ),
        "patch",
    );
    let mut patch_params = field_validation;
    if let Value::Array(params) = &mut patch_params {
        params.extend([
            json!({"name": "fieldManager", "in": "query", "schema": {"type": "string"},
                "description": "who owns the fields the write sets (required for apply)"}),
            json!({"name": "force", "in": "query", "schema": {"type": "boolean"},
                "description": "apply: take fields other managers own instead of a 409 Conflict"}),
            json!({"name": "dryRun", "in": "query", "schema": {"type": "string"},
                "description": "All: validate and answer what would be stored, write nothing"}),
        ]);
    }
    patch["parameters"] = patch_params;
    patch["requestBody"] = json!({"required": true, "content": {
        "application/merge-patch+json": {"schema": {"type": "object"}},
        "application/strategic-merge-patch+json": {"schema": {"type": "object"}},
        "application/json-patch+json": {"schema": {"type": "array", "items": {"type": "object"}}},
        "application/apply-patch+yaml": {"schema": {"type": "object"}},
    }});
    paths.insert(
        item.clone(),
        json!({
            "parameters": item_params,
            "get": of_kind(op(&format!("Read a {}", rt.kind), schema, None), "get"),
            "put": replace,
            "patch": patch,
            "delete": of_kind(delete, "delete"),
        }),
    );
    if rt.namespaced {
        let mut all = op(
            &format!("List or watch {} in all namespaces", rt.plural),
            &list,
            None,
        );
        all["parameters"] = query_params();
        paths.insert(format!("{base}/{}", rt.plural), json!({"get": all}));
    }
    if rt.has_status {
        paths.insert(
            format!("{item}/status"),
            json!({
                "parameters": item_params,
                "get": op(&format!("Read a {} with its status", rt.kind), schema, None),
                "put": op(&format!("Replace the status of a {}", rt.kind), schema, Some(schema)),
            }),
        );
    }
}

/// metrics.k8s.io/v1beta1: read-only, the shapes metrics-server serves.
fn add_metrics_paths(paths: &mut Map<String, Value>) {
    let usage = json!({"type": "object", "properties": {
        "cpu": {"type": "string", "description": "millicores, e.g. 250m"},
        "memory": {"type": "string", "description": "e.g. 65536Ki"},
    }});
    let common = json!({
        "metadata": {"type": "object", "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}}},
        "timestamp": {"type": "string", "description": "when the control plane received the figures"},
        "window": {"type": "string", "description": "the interval they were measured over, e.g. 2s"},
    });
    let mut node = common.clone();
    node["usage"] = usage.clone();
    let mut pod = common;
    pod["containers"] = json!({"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}, "usage": usage}}});
    pod["newConnectionsPerSecond"] = json!({"type": "number",
        "description": "Berth extension: new connections per second the service datapath sent to the pod"});
    let node = json!({"type": "object", "properties": node});
    let pod = json!({"type": "object", "properties": pod});
    let list = |item: &Value| {
        json!({"type": "object", "properties": {
        "kind": {"type": "string"}, "apiVersion": {"type": "string"},
        "items": {"type": "array", "items": item}}})
    };
    let selector = json!([{"name": "labelSelector", "in": "query", "schema": {"type": "string"}}]);
    let base = "/apis/metrics.k8s.io/v1beta1";
    for (path, params, summary, schema) in [
        (
            format!("{base}/nodes"),
            selector.clone(),
            "Latest CPU and memory of every node",
            list(&node),
        ),
        (
            format!("{base}/nodes/{{name}}"),
            json!([param("name")]),
            "Latest CPU and memory of a node",
            node.clone(),
        ),
        (
            format!("{base}/pods"),
            selector.clone(),
            "Latest figures of pods in all namespaces",
            list(&pod),
        ),
        (
            format!("{base}/namespaces/{{namespace}}/pods"),
            json!([param("namespace"), selector[0].clone()]),
            "Latest figures of a namespace's pods",
            list(&pod),
        ),
        (
            format!("{base}/namespaces/{{namespace}}/pods/{{name}}"),
            json!([param("namespace"), param("name")]),
            "Latest figures of a pod",
            pod.clone(),
        ),
    ] {
        let mut get = op(summary, &schema, None);
        get["parameters"] = params;
        paths.insert(path, json!({"get": get}));
    }
}
