//! `metrics.k8s.io/v1beta1`: the latest load figures of nodes and pods, in the shape
//! metrics-server serves (what `berthctl top` reads; `kubectl top` would too, once discovery is served). Read-only; the
//! figures come from the agents' heartbeats (`crate::usage`).

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Query, State},
    http::{Method, Uri},
    response::{IntoResponse, Response},
};
use berth_api::{
    core::Pod,
    kinds::{NODES, PODS},
    selector::{FieldSelector, Selector},
    validation::check_dns_label,
};
use serde_json::{Value, json};

use super::{ApiState, error::ApiError, with_info};
use crate::{
    registry::name_of,
    usage::{self, UsageView},
    util,
};

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
pub const PREFIX: &str = "/apis/metrics.k8s.io/v1beta1";

/// The resources of this group version, as discovery lists them (what `kubectl top`
/// looks for before asking).
pub fn discovery() -> Vec<Value> {
    vec![
        json!({"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics",
            "verbs": ["get", "list"]}),
        json!({"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics",
            "verbs": ["get", "list"]}),
    ]
}

pub async fn serve(
    State(state): State<ApiState>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let rest = uri.path().strip_prefix(PREFIX).unwrap_or_default();
    let segments: Vec<&str> = rest.trim_matches('/').split('/').collect();
    let (resource, result) = if method != Method::GET {
        (
            "",
            Err(ApiError::method_not_allowed(format!(
                "{method}: metrics are read-only"
            ))),
        )
    } else {
        let labels = match query.get("labelSelector").map(|s| Selector::parse(s)) {
            Some(Err(e)) => {
                return ApiError::bad_request(format!("labelSelector: {e}")).into_response();
            }
            Some(Ok(selector)) => selector,
            None => Selector::default(),
        };
        let view = state.usage.view(util::unix_now());
        match segments.as_slice() {
            ["nodes"] => ("nodes.metrics", nodes(&state, &view, &labels, None).await),
            ["nodes", name] => (
                "nodes.metrics",
                nodes(&state, &view, &labels, Some(name)).await,
            ),
            ["pods"] => (
                "pods.metrics",
                pods(&state, &view, &labels, None, None).await,
            ),
            ["namespaces", ns, "pods", rest @ ..] if rest.len() <= 1 => {
                let result = match check_dns_label(ns) {
                    Ok(()) => pods(&state, &view, &labels, Some(ns), rest.first().copied()).await,
                    Err(reason) => Err(ApiError::bad_request(format!("namespace: {reason}"))),
                };
                ("pods.metrics", result)
            }
            _ => (
                "",
                Err(ApiError::no_route(format!(
                    "no resource at {}; metrics.k8s.io serves nodes and pods",
                    uri.path()
                ))),
            ),
        }
    };
    with_info(
        result.unwrap_or_else(IntoResponse::into_response),
        "get",
        resource,
    )
}

/// The list, or with a name the one object (404 when it has no figures).
fn list_or_item(kind: &str, items: Vec<Value>, name: Option<&str>) -> Result<Response, ApiError> {
    let Some(name) = name else {
        return Ok(Json(json!({
            "kind": format!("{kind}List"), "apiVersion": "metrics.k8s.io/v1beta1",
            "metadata": {}, "items": items,
        }))
        .into_response());
    };
    let mut object = items
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(kind, name))?;
    object["kind"] = json!(kind);
    object["apiVersion"] = json!("metrics.k8s.io/v1beta1");
    Ok(Json(object).into_response())
}

async fn nodes(
    state: &ApiState,
    view: &UsageView,
    labels: &Selector,
    name: Option<&str>,
) -> Result<Response, ApiError> {
    let (nodes, _) = state
        .registry
        .list(&NODES, None, labels, &FieldSelector::default())
        .await?;
    let items: Vec<Value> = nodes
        .iter()
        .map(name_of)
        .filter(|n| name.is_none_or(|wanted| wanted == *n))
        .filter_map(|n| view.nodes.get(n).map(|f| usage::node_metrics(n, f)))
        .collect();
    list_or_item("NodeMetrics", items, name)
}

async fn pods(
    state: &ApiState,
    view: &UsageView,
    labels: &Selector,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<Response, ApiError> {
    let (pods, _) = state
        .registry
        .list(&PODS, namespace, labels, &FieldSelector::default())
        .await?;
    let items: Vec<Value> = pods
        .iter()
        .filter(|p| name.is_none_or(|wanted| wanted == name_of(p)))
        .filter_map(|pod| {
            let pod: Pod = serde_json::from_value(pod.clone()).ok()?;
            let figures = view.pod(&pod)?;
            let node = view.nodes.get(&pod.spec.node_name)?;
            Some(usage::pod_metrics(&figures, node))
        })
        .collect();
    list_or_item("PodMetrics", items, name)
}
