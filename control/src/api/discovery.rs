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

use super::{access_review, error::ApiError, metrics_api, resources, with_info};

/// A group version's resources as discovery lists them.
type Resources = fn() -> Vec<Value>;

/// Group versions served beside the kind table's, with their resources as discovery
/// lists them: metrics.k8s.io (read-only figures) and authorization.k8s.io (reviews that
/// are created, never stored).
const SERVED_APART: &[(&str, &str, Resources)] = &[
    (
        metrics_api::GROUP,
        metrics_api::VERSION,
        metrics_api::discovery,
    ),
    (
        berth_api::rbac::AUTHORIZATION_GROUP,
        "v1",
        access_review::discovery,
    ),
];

/// The resources of a group version served apart from the kind table, if it is one.
fn served_apart(group: &str, version: &str) -> Option<Vec<Value>> {
    SERVED_APART
        .iter()
        .find(|(g, v, _)| (*g, *v) == (group, version))
        .map(|(_, _, resources)| resources())
}

/// What every kind's own path answers to.
const VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// `GET /api`: the core group's versions.
pub async fn core_versions(headers: HeaderMap) -> Response {
    if let Some(version) = aggregated_requested(&headers) {
        return aggregated(&[""], version);
    }
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
pub async fn groups(headers: HeaderMap) -> Response {
    if let Some(version) = aggregated_requested(&headers) {
        let named: Vec<&str> = group_versions().into_keys().collect();
        return aggregated(&named, version);
    }
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

/// The aggregated discovery version (`apidiscovery.k8s.io`) the client asks for first,
/// if it asks for one before plain JSON: kubectl 1.30+ does, and then needs two requests
/// (`/api`, `/apis`) instead of one per group version.
fn aggregated_requested(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    for choice in accept.split(',') {
        let mut parts = choice.split(';').map(str::trim);
        if parts.next() != Some("application/json") {
            continue;
        }
        let params: BTreeMap<&str, &str> = parts.filter_map(|p| p.split_once('=')).collect();
        match (params.get("g"), params.get("v"), params.get("as")) {
            (None, None, None) => return None,
            (Some(&"apidiscovery.k8s.io"), Some(&"v2"), Some(&"APIGroupDiscoveryList")) => {
                return Some("v2");
            }
            (Some(&"apidiscovery.k8s.io"), Some(&"v2beta1"), Some(&"APIGroupDiscoveryList")) => {
                return Some("v2beta1");
            }
            _ => continue,
        }
    }
    None
}

/// An `APIGroupDiscoveryList` of `groups` ("" is the core group): every group version
/// with its resources and their subresources, in one document.
fn aggregated(groups: &[&str], version: &'static str) -> Response {
    let items: Vec<Value> = groups
        .iter()
        .map(|group| {
            let versions: Vec<&str> = if group.is_empty() {
                vec!["v1"]
            } else {
                group_versions().remove(group).unwrap_or_default()
            };
            let versions: Vec<Value> = versions
                .into_iter()
                .map(|v| {
                    let resources: Vec<Value> = if let Some(apart) = served_apart(group, v) {
                        apart
                            .iter()
                            .map(|r| {
                                json!({
                                    "resource": r["name"],
                                    "responseKind": {"group": group, "version": v, "kind": r["kind"]},
                                    "scope": if r["namespaced"] == true { "Namespaced" } else { "Cluster" },
                                    "verbs": r["verbs"],
                                })
                            })
                            .collect()
                    } else {
                        RESOURCE_TYPES
                            .iter()
                            .filter(|rt| rt.group == *group && rt.version == v)
                            .map(aggregated_resource)
                            .collect()
                    };
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": group}, "versions": versions})
        })
        .collect();
    let body = json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    });
    let mut response = Json(body).into_response();
    // Clients tell the aggregated form from the plain one by its media type.
    if let Ok(value) = header::HeaderValue::from_str(&format!(
        "application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"
    )) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    with_info(response, "get", "apis")
}

fn aggregated_resource(rt: &ResourceType) -> Value {
    let subresources: Vec<Value> = resources::subresources(rt)
        .into_iter()
        .map(|sub| {
            let (group, version) = sub.group_version.unwrap_or((rt.group, rt.version));
            json!({
                "subresource": sub.name,
                "responseKind": {"group": group, "version": version, "kind": sub.kind.unwrap_or(rt.kind)},
                "verbs": sub.verbs,
            })
        })
        .collect();
    json!({
        "resource": rt.plural,
        "responseKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        "scope": if rt.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": rt.kind.to_ascii_lowercase(),
        "verbs": VERBS,
        "shortNames": rt.short_names,
        "categories": rt.categories,
        "subresources": subresources,
    })
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
    for (group, version, _) in SERVED_APART {
        groups.entry(group).or_default().push(version);
    }
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
    let resources: Vec<Value> = if let Some(apart) = served_apart(group, version) {
        apart
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

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;

    use super::*;

    fn accept(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, header::HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn kubectl_gets_the_aggregated_form_and_others_the_plain_one() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_requested(&accept(kubectl)), Some("v2"));
        assert_eq!(aggregated_requested(&accept("application/json")), None);
        assert_eq!(aggregated_requested(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn the_aggregated_document_lists_resources_with_their_subresources() {
        let response = aggregated(&["apps"], "v2");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        );
        let body: Value =
            serde_json::from_slice(&to_bytes(response.into_body(), 1 << 20).await.expect("body"))
                .expect("JSON");
        let resources = &body["items"][0]["versions"][0]["resources"];
        let deployments = resources
            .as_array()
            .and_then(|r| r.iter().find(|r| r["resource"] == "deployments"))
            .expect("deployments");
        assert_eq!(deployments["shortNames"], json!(["deploy"]));
        assert_eq!(deployments["scope"], "Namespaced");
        let scale = deployments["subresources"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["subresource"] == "scale"))
            .expect("scale");
        assert_eq!(
            scale["responseKind"],
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
        );
    }

    #[tokio::test]
    async fn network_policies_are_discovered_in_their_group() {
        let response = aggregated(&["networking.k8s.io"], "v2");
        let body: Value =
            serde_json::from_slice(&to_bytes(response.into_body(), 1 << 20).await.expect("body"))
                .expect("JSON");
        let group = &body["items"][0];
        assert_eq!(group["metadata"]["name"], "networking.k8s.io");
        let resource = &group["versions"][0]["resources"][0];
        assert_eq!(resource["resource"], "networkpolicies");
        assert_eq!(resource["shortNames"], json!(["netpol"]));
        assert_eq!(resource["scope"], "Namespaced");
        assert_eq!(group["versions"][0]["version"], "v1");
    }
}
