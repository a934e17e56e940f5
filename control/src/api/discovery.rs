//! Discovery, as Kubernetes serves it (`/api`, `/apis`, and each group version's resource
//! list): what kubectl, client-go, kube-rs and Helm read first to learn which kinds exist,
//! their plural names, scope, verbs, short names and subresources. Everything is derived
//! from berth-api's kind table, so a new kind is listed without a change here.

use std::collections::BTreeMap;

use axum::{
    Json,
    http::{HeaderMap, Method, header},
    response::{IntoResponse, Response},
};
use berth_api::{RESOURCE_TYPES, ResourceType};
use serde_json::{Value, json};

use super::{error::ApiError, metrics_api, resources, with_info};

/// What every kind's own path answers to.
const VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// `GET /api`: the core group's versions.
pub async fn core_versions(headers: HeaderMap) -> Response {
    // Clients reach the server at the address they used; no other address to offer.
    let address = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    reply(
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
        }),
        "api",
    )
}

/// `GET /apis`: every named group, with its versions.
pub async fn groups() -> Response {
    let groups: Vec<Value> = group_versions()
        .into_iter()
        .map(|(group, versions)| group_object(group, &versions))
        .collect();
    reply(
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
        "apis",
    )
}

/// `GET /api/v1`.
pub async fn core_resources() -> Response {
    resource_list("", "v1")
}

/// `GET /apis/{group}` or `/apis/{group}/{version}`, when `path` is one of them; the
/// resource handler asks, as the router cannot tell these from resource paths.
pub fn group_path(method: &Method, path: &str) -> Option<Response> {
    let rest = path.strip_prefix("/apis/")?.trim_end_matches('/');
    if method != Method::GET {
        return None;
    }
    match rest.split('/').collect::<Vec<_>>().as_slice() {
        [group] => Some(match group_versions().remove(group) {
            Some(versions) => reply(group_object(group, &versions), "apis"),
            None => not_found(path),
        }),
        [group, version] => Some(resource_list(group, version)),
        _ => None,
    }
}

fn reply(body: Value, resource: &str) -> Response {
    with_info(Json(body).into_response(), "get", resource)
}

fn not_found(path: &str) -> Response {
    with_info(
        ApiError::no_route(format!("no API group or version at {path}")).into_response(),
        "get",
        "apis",
    )
}

/// Named groups (the core group is `/api`'s) and their versions, metrics.k8s.io included.
fn group_versions() -> BTreeMap<&'static str, Vec<&'static str>> {
    let mut groups: BTreeMap<&'static str, Vec<&'static str>> = BTreeMap::new();
    for rt in RESOURCE_TYPES.iter().filter(|rt| !rt.group.is_empty()) {
        let versions = groups.entry(rt.group).or_default();
        if !versions.contains(&rt.version) {
            versions.push(rt.version);
        }
    }
    groups
        .entry(metrics_api::GROUP)
        .or_default()
        .push(metrics_api::VERSION);
    groups
}

fn group_object(group: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|version| json!({"groupVersion": format!("{group}/{version}"), "version": version}))
        .collect();
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "preferredVersion": versions.first(),
        "versions": versions,
    })
}

fn resource_list(group: &str, version: &str) -> Response {
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    let resources: Vec<Value> = if (group, version) == (metrics_api::GROUP, metrics_api::VERSION) {
        metrics_api::discovery()
    } else {
        RESOURCE_TYPES
            .iter()
            .filter(|rt| rt.group == group && rt.version == version)
            .flat_map(describe)
            .collect()
    };
    if resources.is_empty() {
        let path = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group_version}")
        };
        return not_found(&path);
    }
    reply(
        json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        }),
        "apis",
    )
}

/// A kind's entry and one per subresource it serves.
fn describe(rt: &ResourceType) -> Vec<Value> {
    let mut entries = vec![json!({
        "name": rt.plural,
        "singularName": rt.kind.to_ascii_lowercase(),
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": VERBS,
        "shortNames": rt.short_names,
        "categories": rt.categories,
    })];
    entries.extend(resources::subresources(rt).into_iter().map(|sub| {
        let mut entry = json!({
            "name": format!("{}/{}", rt.plural, sub.name),
            "singularName": "",
            "namespaced": rt.namespaced,
            "kind": sub.kind.unwrap_or(rt.kind),
            "verbs": sub.verbs,
        });
        if let Some((group, version)) = sub.group_version {
            entry["group"] = json!(group);
            entry["version"] = json!(version);
        }
        entry
    }));
    entries
}
