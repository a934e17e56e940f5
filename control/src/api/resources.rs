//! Resource endpoints: path parsing, verb dispatch, request bodies.

use std::collections::HashMap;

use axum::{
    Extension, Json,
    body::{Body, Bytes},
    extract::{
        Query, State,
        ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use berth_api::{
    Decoded, MAX_OBJECT_BYTES, ResourceType, Source, find_by_plural,
    manifest::{self, MAX_MANIFEST_BYTES},
    validation::check_dns_label,
};
use serde::Deserialize;
use serde_json::{Value, json};

mod patch;

use super::{
    ApiState,
    auth::{check_escalation, stored_rbac_object},
    error::ApiError,
    node_proxy,
    query::{Page, selectors},
    streaming, table, watch, with_info,
};
use crate::authn::UserInfo;
use crate::registry::{
    self, DeleteOptions, FieldManager, decode_error, name_of, parse_resource_version,
};

/// A resource URL taken apart.
#[derive(Debug)]
struct Target {
    rt: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_target(path: &str) -> Result<Target, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let no_route = || ApiError::no_route(format!("no resource at {path}"));
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(no_route()),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        rest => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some((*name).to_owned()), None),
        [plural, name, sub] => (*plural, Some((*name).to_owned()), Some((*sub).to_owned())),
        _ => return Err(no_route()),
    };
    let rt = find_by_plural(group, plural)
        .filter(|rt| rt.version == version)
        .ok_or_else(|| {
            ApiError::no_route(format!(
                "the server does not serve {plural} in {group}/{version}"
            ))
        })?;
    if let Some(ns) = &namespace {
        if !rt.namespaced {
            return Err(ApiError::no_route(format!(
                "{} are cluster-scoped; drop /namespaces/{ns}",
                rt.plural
            )));
        }
        check_dns_label(ns)
            .map_err(|reason| ApiError::bad_request(format!("namespace: {reason}")))?;
    } else if rt.namespaced && name.is_some() {
        return Err(ApiError::no_route(format!(
            "{} are namespaced: use {}/namespaces/<namespace>/{}/<name>",
            rt.plural,
            rt.group_path(),
            rt.plural
        )));
    }
    Ok(Target {
        rt,
        namespace,
        name,
        subresource,
    })
}

pub async fn handle(
    State(state): State<ApiState>,
    method: Method,
    uri: Uri,
    user: Option<Extension<UserInfo>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    body: Body,
) -> Response {
    let target = match parse_target(uri.path()) {
        Ok(target) => target,
        Err(e) => return e.into_response(),
    };
    let resource = target.rt.plural.to_owned();
    let query: HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let request = Request {
        method: &method,
        user: user.as_ref().map(|Extension(user)| user),
        query: &query,
        raw_query: uri.query().unwrap_or_default(),
        headers: &headers,
        upgrade: upgrade.ok(),
    };
    let (verb, result) = dispatch(&state, target, request, body).await;
    let response = result.unwrap_or_else(IntoResponse::into_response);
    with_info(response, verb, &resource)
}

/// What a request brought besides its target and body.
struct Request<'a> {
    method: &'a Method,
    /// None only with authentication off.
    user: Option<&'a UserInfo>,
    query: &'a HashMap<String, String>,
    /// The query as sent, for parameters that repeat (exec's `command`).
    raw_query: &'a str,
    headers: &'a HeaderMap,
    /// Present when the client asked to upgrade to a WebSocket.
    upgrade: Option<WebSocketUpgrade>,
}

async fn dispatch(
    state: &ApiState,
    target: Target,
    request: Request<'_>,
    body: Body,
) -> (&'static str, Result<Response, ApiError>) {
    let Request {
        method,
        user,
        query,
        raw_query,
        headers,
        upgrade,
    } = request;
    let Target {
        rt,
        namespace,
        name,
        subresource,
    } = target;
    let registry = &state.registry;
    let ns = namespace.as_deref().unwrap_or_default();
    match (method, name.as_deref(), subresource.as_deref()) {
        (&Method::GET, None, None) if is_true(query.get("watch")) => {
            ("watch", watch::start(state, rt, namespace, query).await)
        }
        (&Method::GET, None, None) => (
            "list",
            list(state, rt, namespace.as_deref(), query, headers).await,
        ),
        (&Method::POST, None, None) => {
            let result = async {
                if rt.namespaced && namespace.is_none() {
                    return Err(ApiError::bad_request(format!(
                        "create {} under {}/namespaces/<namespace>/{}",
                        rt.plural,
                        rt.group_path(),
                        rt.plural
                    )));
                }
                let decoded = read_object(rt, headers, body, namespace.as_deref()).await?;
                let warnings = checked_fields(query, &decoded)?;
                check_escalation(state, user, rt, &decoded.object, None).await?;
                let manager = field_manager(query, headers, "")?;
                let created = if dry_run(query)? {
                    registry
                        .dry_run(rt, decoded.object, manager.as_ref())
                        .await?
                } else {
                    registry
                        .create_by(rt, decoded.object, manager.as_ref())
                        .await?
                };
                Ok(with_warnings(
                    (StatusCode::CREATED, Json(created)).into_response(),
                    &warnings,
                ))
            };
            ("create", result.await)
        }
        (&Method::GET, Some(name), None) => {
            let result = async {
                let object = registry.get(rt, ns, name).await?;
                Ok(match table::requested(headers) {
                    Some(version) => {
                        let revision = object["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        ok_json(table::of(rt, &[object], &revision, version, query))
                    }
                    None => ok_json(object),
                })
            };
            ("get", result.await)
        }
        (&Method::PUT, Some(name), None) => {
            let result = async {
                let decoded = read_object(rt, headers, body, namespace.as_deref()).await?;
                if name_of(&decoded.object) != name {
                    return Err(ApiError::bad_request(format!(
                        "metadata.name {:?} does not match the URL's {name:?}",
                        name_of(&decoded.object)
                    )));
                }
                let warnings = checked_fields(query, &decoded)?;
                let old = stored_rbac_object(state, rt, ns, name).await?;
                check_escalation(state, user, rt, &decoded.object, old.as_ref()).await?;
                let manager = field_manager(query, headers, "")?;
                let updated = if dry_run(query)? {
                    registry
                        .dry_run(rt, decoded.object, manager.as_ref())
                        .await?
                } else {
                    registry
                        .update_by(rt, decoded.object, manager.as_ref())
                        .await?
                };
                Ok(with_warnings(ok_json(updated), &warnings))
            };
            ("update", result.await)
        }
        (&Method::PATCH, Some(name), None) => (
            "patch",
            patch::object(state, rt, (ns, name), user, (headers, query), body).await,
        ),
        (&Method::PATCH, Some(name), Some("scale")) if is_scalable(rt) => (
            "scale",
            patch::scale(state, rt, ns, name, headers, query, body).await,
        ),
        (&Method::DELETE, Some(name), None) => {
            let result = async {
                if dry_run(query)? {
                    return Err(ApiError::bad_request(
                        "dryRun is not supported for DELETE: nothing was deleted",
                    ));
                }
                let options = delete_options(query, body).await?;
                replied(registry.delete(rt, ns, name, &options).await)
            };
            ("delete", result.await)
        }
        (&Method::GET, Some(name), Some("status")) if rt.has_status => {
            ("get", replied(registry.get(rt, ns, name).await))
        }
        (&Method::PUT, Some(name), Some("status")) if rt.has_status => {
            let result = async {
                let body: Value = read_json(body, MAX_OBJECT_BYTES).await?;
                replied(registry.update_status(rt, ns, name, body).await)
            };
            ("update_status", result.await)
        }
        (&Method::GET, Some(name), Some("scale")) if is_scalable(rt) => {
            ("get_scale", replied(registry.get_scale(rt, ns, name).await))
        }
        (&Method::PUT, Some(name), Some("scale")) if is_scalable(rt) => {
            let result = async {
                let scale: berth_api::apps::Scale = read_json(body, MAX_OBJECT_BYTES).await?;
                write_scale(state, rt, (ns, name), scale, (headers, query)).await
            };
            ("scale", result.await)
        }
        (&Method::POST, Some(name), Some("rollback")) if has_history(rt) => {
            let result = async {
                let bytes = read_body(body, MAX_OBJECT_BYTES).await?;
                let request: RollbackRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
                    RollbackRequest::default()
                } else {
                    serde_json::from_slice(&bytes)
                        .map_err(|e| ApiError::bad_request(format!("request body: {e}")))?
                };
                replied(registry.rollback(rt, ns, name, request.to_revision).await)
            };
            ("rollback", result.await)
        }
        (&Method::POST, Some(name), Some("token")) if rt.kind == "ServiceAccount" => {
            let result = async {
                let bytes = read_body(body, MAX_OBJECT_BYTES).await?;
                let request = if bytes.iter().all(u8::is_ascii_whitespace) {
                    berth_api::accounts::TokenRequest::default()
                } else {
                    serde_json::from_slice(&bytes)
                        .map_err(|e| ApiError::bad_request(format!("request body: {e}")))?
                };
                super::token_request::issue(state, ns, name, request).await
            };
            ("token", result.await)
        }
        (&Method::POST, Some(name), Some("eviction")) if rt.kind == "Pod" => {
            let result = async {
                let eviction: berth_api::disruption::Eviction =
                    read_json(body, MAX_OBJECT_BYTES).await?;
                if !eviction.metadata.name.is_empty() && eviction.metadata.name != name {
                    return Err(ApiError::bad_request(format!(
                        "the Eviction's metadata.name {:?} does not match the pod {name:?} of the URL",
                        eviction.metadata.name
                    )));
                }
                let body = eviction.delete_options.unwrap_or(Value::Null);
                let options = options_of(query, &body)?;
                registry.evict(ns, name, &options).await?;
                Ok((
                    StatusCode::CREATED,
                    Json(
                        json!({"apiVersion": "v1", "kind": "Status", "status": "Success",
                        "metadata": {}, "code": 201}),
                    ),
                )
                    .into_response())
            };
            ("evict", result.await)
        }
        (&Method::GET, Some(name), Some("log")) if rt.kind == "Pod" => {
            ("log", node_proxy::logs(state, ns, name, query).await)
        }
        (&Method::GET, Some(name), Some("exec")) if rt.kind == "Pod" => {
            let kind = streaming::SessionKind::Exec;
            let result = streaming::session(state, ns, name, kind, raw_query, upgrade).await;
            ("exec", result)
        }
        (&Method::GET, Some(name), Some("attach")) if rt.kind == "Pod" => {
            let kind = streaming::SessionKind::Attach;
            let result = streaming::session(state, ns, name, kind, raw_query, upgrade).await;
            ("attach", result)
        }
        (&Method::GET, Some(name), Some("portforward")) if rt.kind == "Pod" => {
            let result = match upgrade {
                Some(upgrade) => streaming::port_forward(state, ns, name, query, upgrade).await,
                None => Err(ApiError::bad_request(
                    "port forwarding is a WebSocket carrying SPDY/3.1 (SPDY/3.1+portforward.k8s.io)",
                )),
            };
            ("portforward", result)
        }
        (&Method::POST, Some(name), Some("exec")) if rt.kind == "Pod" => {
            let result = async {
                let request: node_proxy::ExecBody = read_json(body, MAX_OBJECT_BYTES).await?;
                node_proxy::exec(state, ns, name, request).await
            };
            ("exec", result.await)
        }
        (&Method::GET, Some(name), Some("backends")) if rt.kind == "Service" => (
            "backends",
            node_proxy::service_backends(state, ns, name).await,
        ),
        (_, _, Some(sub)) => (
            "other",
            Err(ApiError::no_route(format!(
                "{} have no subresource {sub:?} for {method}",
                rt.plural
            ))),
        ),
        _ => (
            "other",
            Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on this {} URL",
                rt.kind
            ))),
        ),
    }
}

/// Kinds whose pod templates are kept as revisions `rollout undo` goes back to.
fn has_history(rt: &ResourceType) -> bool {
    matches!(rt.kind, "Deployment" | "DaemonSet" | "StatefulSet")
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RollbackRequest {
    /// 0 (or absent) means the revision before the current one.
    #[serde(default)]
    to_revision: i64,
}

/// A subresource as discovery lists it.
pub(super) struct Subresource {
    pub name: &'static str,
    /// The kind it reads and writes, when not the object's own.
    pub kind: Option<&'static str>,
    /// Its kind's group and version, when not the object's own.
    pub group_version: Option<(&'static str, &'static str)>,
    pub verbs: &'static [&'static str],
}

/// The subresources `dispatch` serves for `rt`.
pub(super) fn subresources(rt: &ResourceType) -> Vec<Subresource> {
    let own = |name, verbs| Subresource {
        name,
        kind: None,
        group_version: None,
        verbs,
    };
    let mut served = Vec::new();
    if rt.has_status {
        served.push(own("status", &["get", "update"]));
    }
    if is_scalable(rt) {
        served.push(Subresource {
            name: "scale",
            kind: Some("Scale"),
            group_version: Some(("autoscaling", "v1")),
            verbs: &["get", "patch", "update"],
        });
    }
    match rt.kind {
        "Deployment" | "DaemonSet" | "StatefulSet" => served.push(own("rollback", &["create"])),
        "Pod" => {
            served.push(own("log", &["get"]));
            served.push(Subresource {
                name: "eviction",
                kind: Some("Eviction"),
                group_version: Some(("policy", "v1")),
                verbs: &["create"],
            });
            served.push(Subresource {
                name: "exec",
                kind: Some("PodExecOptions"),
                group_version: None,
                verbs: &["create", "get"],
            });
            served.push(Subresource {
                name: "attach",
                kind: Some("PodAttachOptions"),
                group_version: None,
                verbs: &["create", "get"],
            });
            served.push(Subresource {
                name: "portforward",
                kind: Some("PodPortForwardOptions"),
                group_version: None,
                verbs: &["create", "get"],
            });
        }
        "Service" => served.push(own("backends", &["get"])),
        "ServiceAccount" => served.push(Subresource {
            name: "token",
            kind: Some("TokenRequest"),
            group_version: Some(("authentication.k8s.io", "v1")),
            verbs: &["create"],
        }),
        _ => {}
    }
    served
}

/// Sets the replicas `scale` asks for, at its `resourceVersion` if it names one.
pub(super) async fn write_scale(
    state: &ApiState,
    rt: &'static ResourceType,
    (namespace, name): (&str, &str),
    scale: berth_api::apps::Scale,
    (headers, query): (&HeaderMap, &HashMap<String, String>),
) -> Result<Response, ApiError> {
    if dry_run(query)? {
        return Err(ApiError::bad_request(
            "dryRun is not supported for scale: nothing was changed",
        ));
    }
    if scale.spec.replicas < 0 {
        return Err(ApiError::invalid(
            "Scale",
            name,
            vec![berth_api::validation::FieldError {
                field: "spec.replicas".to_owned(),
                reason: "must be greater than or equal to 0".to_owned(),
            }],
        ));
    }
    let wanted = parse_resource_version(&scale.metadata.resource_version)?;
    let manager = field_manager(query, headers, "scale")?;
    replied(
        state
            .registry
            .scale(
                rt,
                namespace,
                name,
                (scale.spec.replicas, wanted),
                manager.as_ref(),
            )
            .await,
    )
}

/// The longest `fieldManager` Kubernetes accepts.
const MAX_FIELD_MANAGER: usize = 128;

/// Who a write is recorded for in `metadata.managedFields`: the `fieldManager` query
/// parameter, or as Kubernetes defaults it, the User-Agent up to its first `/`
/// (`kubectl/v1.32.4 (linux/amd64) ...` → `kubectl`). None when neither says.
pub(super) fn field_manager(
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    subresource: &'static str,
) -> Result<Option<FieldManager>, ApiError> {
    let name = match query.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(name) => {
            if name.len() > MAX_FIELD_MANAGER || name.chars().any(char::is_control) {
                return Err(ApiError::bad_request(format!(
                    "fieldManager: must be at most {MAX_FIELD_MANAGER} printable characters"
                )));
            }
            name.clone()
        }
        None => {
            let agent = headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let prefix = agent.split('/').next().unwrap_or_default().trim();
            prefix.chars().take(MAX_FIELD_MANAGER).collect()
        }
    };
    Ok((!name.is_empty()).then_some(FieldManager { name, subresource }))
}

/// The warnings a write answers with, or its refusal: fields Berth does not support are
/// warnings by default (`fieldValidation=Warn`), dropped silently with `Ignore`, and
/// refuse the write with `Strict` (what kubectl asks for unless told `--validate=warn`).
pub(super) fn checked_fields(
    query: &HashMap<String, String>,
    decoded: &Decoded,
) -> Result<Vec<String>, ApiError> {
    match query.get("fieldValidation").map(String::as_str) {
        None | Some("Warn") => Ok(decoded.warnings.clone()),
        Some("Ignore") => Ok(Vec::new()),
        Some("Strict") if decoded.unknown_fields.is_empty() => Ok(Vec::new()),
        Some("Strict") => {
            let fields: Vec<String> = decoded
                .unknown_fields
                .iter()
                .map(|path| format!("unknown field {path:?}"))
                .collect();
            Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                fields.join(", ")
            )))
        }
        Some(other) => Err(ApiError::bad_request(format!(
            "fieldValidation {other:?}: use Strict, Warn or Ignore"
        ))),
    }
}

/// Whether the request asks for a dry run (`dryRun=All`, the one value Kubernetes knows).
pub(super) fn dry_run(query: &HashMap<String, String>) -> Result<bool, ApiError> {
    match query.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "dryRun {other:?}: the only value is All"
        ))),
    }
}

fn is_scalable(rt: &ResourceType) -> bool {
    matches!(rt.kind, "Deployment" | "ReplicaSet" | "StatefulSet")
}

pub(super) fn is_true(value: Option<&String>) -> bool {
    value.is_some_and(|v| matches!(v.as_str(), "true" | "1"))
}

/// A registry answer as the response: the object, or the error as a `Status`.
fn replied(result: registry::Result<Value>) -> Result<Response, ApiError> {
    result.map(ok_json).map_err(ApiError::from)
}

pub(super) fn ok_json(value: Value) -> Response {
    Json(value).into_response()
}

/// Unsupported fields are reported the way Kubernetes reports deprecations.
pub(super) fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for warning in warnings {
        if let Ok(value) = header::HeaderValue::from_str(&format!("299 - {:?}", warning)) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

pub(super) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let message = e.to_string();
        if message.contains("length limit") {
            ApiError::too_large(limit)
        } else {
            ApiError::bad_request(format!("reading request body: {message}"))
        }
    })
}

pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = read_body(body, limit).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("request body: {e}")))
}

/// Decodes one object (JSON, or YAML when sent as such); fills in the URL's namespace
/// when the body names none and refuses a body that names a different one.
async fn read_object(
    rt: &'static ResourceType,
    headers: &HeaderMap,
    body: Body,
    namespace: Option<&str>,
) -> Result<Decoded, ApiError> {
    #[derive(Deserialize, Default)]
    struct Probe {
        #[serde(default)]
        metadata: ProbeMeta,
    }
    #[derive(Deserialize, Default)]
    struct ProbeMeta {
        #[serde(default)]
        namespace: String,
    }
    let bytes = read_body(body, MAX_OBJECT_BYTES).await?;
    let yaml = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("yaml"));
    let text;
    // The object and the namespace its body names (before defaulting).
    let (source, sent_namespace) = if super::protobuf::is_protobuf(headers) {
        let object =
            super::protobuf::rbac_object(&rt.api_version(), rt.kind, &bytes).ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    format!(
                        "{} bodies are read as JSON or YAML (protobuf only for RBAC kinds)",
                        rt.kind
                    ),
                )
            })?;
        let sent = crate::objects::namespace_of(&object).to_owned();
        (Source::Value(object), sent)
    } else if yaml {
        text =
            std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("body is not UTF-8"))?;
        let probe: Probe = match namespace {
            Some(_) => serde_norway::from_slice(&bytes).unwrap_or_default(),
            None => Probe::default(),
        };
        (Source::Yaml(text), probe.metadata.namespace)
    } else {
        let probe: Probe = match namespace {
            Some(_) => serde_json::from_slice(&bytes).unwrap_or_default(),
            None => Probe::default(),
        };
        (Source::Json(&bytes), probe.metadata.namespace)
    };
    let name_hint = "(body)";
    let mut decoded = rt
        .decode(source)
        .map_err(|e| decode_error(rt, name_hint, e))?;
    if let Some(path_ns) = namespace {
        if sent_namespace.is_empty() {
            decoded.object["metadata"]["namespace"] = json!(path_ns);
        } else if sent_namespace != path_ns {
            return Err(ApiError::bad_request(format!(
                "metadata.namespace {sent_namespace:?} does not match the URL's namespace {path_ns:?}"
            )));
        }
    }
    Ok(decoded)
}

/// `?resourceVersion=N` or a DeleteOptions body with `preconditions.resourceVersion`.
/// Kubernetes' DeleteOptions, from the query (`resourceVersion`, `gracePeriodSeconds`) or
/// the body (`preconditions`, `gracePeriodSeconds`); the query wins.
async fn delete_options(
    query: &HashMap<String, String>,
    body: Body,
) -> Result<DeleteOptions, ApiError> {
    let bytes = read_body(body, MAX_OBJECT_BYTES).await?;
    let body: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("DeleteOptions: {e}")))?
    };
    options_of(query, &body)
}

/// DeleteOptions from the query and a body already read (an Eviction's
/// `deleteOptions`); the query wins.
fn options_of(query: &HashMap<String, String>, body: &Value) -> Result<DeleteOptions, ApiError> {
    let resource_version = match query.get("resourceVersion") {
        Some(rv) => parse_resource_version(rv)?,
        None => parse_resource_version(
            body.pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        )?,
    };
    let grace_period_seconds = match query.get("gracePeriodSeconds") {
        Some(text) => Some(text.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!("gracePeriodSeconds {text:?} is not an integer"))
        })?),
        None => match body.get("gracePeriodSeconds") {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.as_i64().ok_or_else(|| {
                ApiError::bad_request("DeleteOptions: gracePeriodSeconds must be an integer")
            })?),
        },
    };
    if grace_period_seconds.is_some_and(|grace| grace < 0) {
        return Err(ApiError::bad_request(
            "gracePeriodSeconds must be greater than or equal to 0",
        ));
    }
    let uid = body
        .pointer("/preconditions/uid")
        .and_then(Value::as_str)
        .filter(|uid| !uid.is_empty())
        .map(str::to_owned);
    let policy = query
        .get("propagationPolicy")
        .map(String::as_str)
        .or_else(|| body.get("propagationPolicy").and_then(Value::as_str));
    // Foreground is served as Background: the owner goes at once and the garbage
    // collector deletes the dependents right after (Kubernetes would keep the owner,
    // marked, until they are gone).
    let orphan_dependents = match policy {
        None => body.get("orphanDependents").and_then(Value::as_bool) == Some(true),
        Some("Orphan") => true,
        Some("Background" | "Foreground") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy {other:?}: must be Orphan, Background or Foreground"
            )));
        }
    };
    Ok(DeleteOptions {
        resource_version,
        uid,
        grace_period_seconds,
        orphan_dependents,
    })
}

async fn list(
    state: &ApiState,
    rt: &'static ResourceType,
    namespace: Option<&str>,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(query)?;
    let page = Page::parse(query)?;
    let (items, revision) = state.registry.list(rt, namespace, &labels, &fields).await?;
    let keyed = items
        .into_iter()
        .map(|item| {
            let key = crate::objects::key(rt, registry::namespace_of(&item), name_of(&item));
            (key, item)
        })
        .collect();
    let (items, next) = page.cut(keyed);
    // Each page reads the store as it is when asked: later pages may show changes made
    // after the first (Kubernetes serves them all at the first page's revision).
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some((token, remaining)) = next {
        metadata["continue"] = json!(token);
        metadata["remainingItemCount"] = json!(remaining);
    }
    if let Some(version) = table::requested(headers) {
        let mut table = table::of(rt, &items, &revision.to_string(), version, query);
        table["metadata"] = metadata;
        return Ok(ok_json(table));
    }
    Ok(ok_json(json!({
        "apiVersion": rt.api_version(),
        "kind": format!("{}List", rt.kind),
        "metadata": metadata,
        "items": items,
    })))
}

/// `POST /apply`: a whole manifest, validated in full, then written in one transaction.
pub async fn apply(
    State(state): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
    user: Option<axum::Extension<crate::authn::UserInfo>>,
    body: Body,
) -> Response {
    let result = async {
        let bytes = read_body(body, MAX_MANIFEST_BYTES).await?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ApiError::bad_request("manifest is not UTF-8"))?;
        let objects = manifest::parse(text).map_err(manifest_errors)?;
        // Applying creates what is missing and changes what exists: both verbs are
        // needed on every object's resource, checked before anything is written.
        let user = user.as_ref().map(|axum::Extension(user)| user);
        for object in &objects {
            let rt = object.resource_type;
            for verb in ["create", "patch"] {
                let attributes = crate::authz::Attributes::Resource {
                    verb: verb.to_owned(),
                    group: rt.group.to_owned(),
                    resource: rt.plural.to_owned(),
                    subresource: String::new(),
                    namespace: registry::namespace_of(&object.decoded.object).to_owned(),
                    name: name_of(&object.decoded.object).to_owned(),
                };
                super::auth::authorize(&state, user, &attributes).await?;
            }
            let old = stored_rbac_object(
                &state,
                rt,
                registry::namespace_of(&object.decoded.object),
                name_of(&object.decoded.object),
            )
            .await?;
            check_escalation(&state, user, rt, &object.decoded.object, old.as_ref()).await?;
        }
        let dry_run = is_true(query.get("dryRun"));
        let results = state.registry.apply(objects, dry_run).await?;
        Ok::<_, ApiError>(ok_json(json!({
            "apiVersion": "v1",
            "kind": "ApplyResult",
            "dryRun": dry_run,
            "items": results,
        })))
    };
    let response = result.await.unwrap_or_else(IntoResponse::into_response);
    with_info(response, "apply", "")
}

fn manifest_errors(errors: Vec<manifest::ManifestError>) -> ApiError {
    use super::error::{Cause, Details};
    if let [manifest::ManifestError::TooLarge { limit, .. }] = errors.as_slice() {
        return ApiError::too_large(*limit);
    }
    let causes: Vec<Cause> = errors
        .iter()
        .flat_map(|e| match e {
            manifest::ManifestError::Invalid {
                document,
                kind,
                name,
                errors,
                ..
            } => errors
                .iter()
                .map(|fe| Cause {
                    field: format!("[{document}] {kind}/{name}: {}", fe.field),
                    message: fe.reason.clone(),
                    reason: "FieldValueInvalid",
                })
                .collect::<Vec<_>>(),
            other => vec![Cause {
                field: String::new(),
                message: other.to_string(),
                reason: "ManifestMalformed",
            }],
        })
        .collect();
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let code = if errors
        .iter()
        .all(|e| matches!(e, manifest::ManifestError::Invalid { .. }))
    {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::BAD_REQUEST
    };
    let reason = if code == StatusCode::UNPROCESSABLE_ENTITY {
        "Invalid"
    } else {
        "BadRequest"
    };
    ApiError::new(
        code,
        reason,
        format!(
            "manifest rejected, nothing applied: {}",
            messages.join("; ")
        ),
    )
    .with_details(Details {
        causes,
        ..Details::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_paths() {
        let t = parse_target("/apis/apps/v1/namespaces/shop/deployments/web/scale").expect("valid");
        assert_eq!(
            (t.rt.kind, t.namespace.as_deref(), t.name.as_deref()),
            ("Deployment", Some("shop"), Some("web"))
        );
        assert_eq!(t.subresource.as_deref(), Some("scale"));
        let t = parse_target("/api/v1/nodes/n1").expect("valid");
        assert_eq!(
            (t.rt.kind, t.namespace, t.name.as_deref()),
            ("Node", None, Some("n1"))
        );
        let t = parse_target("/api/v1/pods").expect("all namespaces");
        assert_eq!((t.rt.kind, t.namespace, t.name), ("Pod", None, None));
        assert!(
            parse_target("/api/v1/namespaces/x/nodes").is_err(),
            "cluster-scoped"
        );
        assert!(
            parse_target("/api/v1/pods/web").is_err(),
            "namespaced item without namespace"
        );
        assert!(parse_target("/api/v2/pods").is_err());
        assert!(parse_target("/apis/apps/v1/pods").is_err(), "wrong group");
        assert!(parse_target("/api/v1/namespaces/Bad/pods").is_err());
    }
}
