//! The default roles and bindings, after Kubernetes' bootstrap policy
//! (plugin/pkg/auth/authorizer/rbac/bootstrappolicy), limited to the kinds Berth serves:
//! created at startup when missing, never overwritten, so an operator's edits stay.
//!
//! `admin`, `edit` and `view` are aggregated: their rules are those of every ClusterRole
//! labelled `rbac.authorization.k8s.io/aggregate-to-<role>: "true"`, gathered by the
//! aggregation controller (`controllers::aggregation`). `view` is aggregated into `edit`
//! and `edit` into `admin`, as in Kubernetes.

use berth_api::{
    Source,
    rbac::{AUTHENTICATED_GROUP, ClusterRole, ClusterRoleBinding, MASTERS_GROUP},
};
use serde_json::{Value, json};

use crate::{
    objects::Kind,
    registry::{self, Registry},
};

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

fn cluster_role(name: &str, labels: Value, rules: Vec<Value>, aggregate: Option<&str>) -> Value {
    let mut role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels},
        "rules": rules,
    });
    if let Some(to) = aggregate {
        role["aggregationRule"] = json!({"clusterRoleSelectors": [
            {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{to}"): "true"}}
        ]});
    }
    role
}

fn bootstrap_labels(extra: &[(&str, &str)]) -> Value {
    let mut labels = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    for (key, value) in extra {
        labels[*key] = json!(value);
    }
    labels
}

fn aggregate_to(role: &str) -> String {
    format!("rbac.authorization.k8s.io/aggregate-to-{role}")
}

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let view_to_edit = aggregate_to("edit");
    let edit_to_admin = aggregate_to("admin");
    let to_view = aggregate_to("view");
    vec![
        cluster_role(
            "cluster-admin",
            bootstrap_labels(&[]),
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
            None,
        ),
        cluster_role("admin", bootstrap_labels(&[]), Vec::new(), Some("admin")),
        cluster_role(
            "edit",
            bootstrap_labels(&[(&edit_to_admin, "true")]),
            Vec::new(),
            Some("edit"),
        ),
        cluster_role(
            "view",
            bootstrap_labels(&[(&view_to_edit, "true")]),
            Vec::new(),
            Some("view"),
        ),
        cluster_role(
            "system:aggregate-to-admin",
            bootstrap_labels(&[(&edit_to_admin, "true")]),
            vec![rule(
                &[READ, WRITE].concat(),
                &["rbac.authorization.k8s.io"],
                &["roles", "rolebindings"],
            )],
            None,
        ),
        cluster_role(
            "system:aggregate-to-edit",
            bootstrap_labels(&[(&view_to_edit, "true")]),
            vec![
                rule(
                    &["create"],
                    &[""],
                    &[
                        "pods/exec",
                        "pods/attach",
                        "pods/portforward",
                        "pods/eviction",
                    ],
                ),
                rule(
                    &[READ, WRITE].concat(),
                    &[""],
                    &[
                        "pods",
                        "services",
                        "endpoints",
                        "configmaps",
                        "secrets",
                        "persistentvolumeclaims",
                        "serviceaccounts",
                    ],
                ),
                rule(
                    &[READ, WRITE].concat(),
                    &["apps"],
                    &[
                        "deployments",
                        "deployments/scale",
                        "deployments/rollback",
                        "replicasets",
                        "replicasets/scale",
                        "daemonsets",
                        "daemonsets/rollback",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/rollback",
                    ],
                ),
                rule(
                    &[READ, WRITE].concat(),
                    &["policy"],
                    &["poddisruptionbudgets"],
                ),
                rule(
                    &[READ, WRITE].concat(),
                    &["networking.k8s.io"],
                    &["networkpolicies"],
                ),
                rule(
                    &[READ, WRITE].concat(),
                    &["autoscaling"],
                    &["horizontalpodautoscalers"],
                ),
                rule(&[READ, WRITE].concat(), &["batch"], &["jobs", "cronjobs"]),
            ],
            None,
        ),
        cluster_role(
            "system:aggregate-to-view",
            bootstrap_labels(&[(&to_view, "true")]),
            vec![
                rule(
                    READ,
                    &[""],
                    &[
                        "pods",
                        "pods/log",
                        "pods/status",
                        "services",
                        "services/status",
                        "endpoints",
                        "configmaps",
                        "events",
                        "namespaces",
                        "namespaces/status",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "limitranges",
                        "resourcequotas",
                        "resourcequotas/status",
                        "serviceaccounts",
                    ],
                ),
                rule(
                    READ,
                    &["apps"],
                    &[
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "daemonsets",
                        "daemonsets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                        "controllerrevisions",
                    ],
                ),
                rule(
                    READ,
                    &["policy"],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                ),
                rule(READ, &["networking.k8s.io"], &["networkpolicies"]),
                rule(
                    READ,
                    &["autoscaling"],
                    &[
                        "horizontalpodautoscalers",
                        "horizontalpodautoscalers/status",
                    ],
                ),
                rule(
                    READ,
                    &["batch"],
                    &["jobs", "jobs/status", "cronjobs", "cronjobs/status"],
                ),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                rule(READ, &["metrics.k8s.io"], &["pods"]),
            ],
            None,
        ),
        cluster_role(
            "system:discovery",
            bootstrap_labels(&[]),
            vec![urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/openapi.json",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
            None,
        ),
        cluster_role(
            "system:basic-user",
            bootstrap_labels(&[]),
            vec![rule(
                &["create"],
                &["authorization.k8s.io"],
                &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
            )],
            None,
        ),
        cluster_role(
            "system:public-info-viewer",
            bootstrap_labels(&[]),
            vec![urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
            None,
        ),
    ]
}

fn binding(name: &str, role: &str, group: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": bootstrap_labels(&[])},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
    })
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", "cluster-admin", MASTERS_GROUP),
        binding("system:discovery", "system:discovery", AUTHENTICATED_GROUP),
        binding(
            "system:basic-user",
            "system:basic-user",
            AUTHENTICATED_GROUP,
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            AUTHENTICATED_GROUP,
        ),
    ]
}

/// Creates the default roles and bindings that do not exist: the missing roles in one
/// transaction, then the missing bindings in another.
pub async fn ensure_defaults(registry: &Registry) -> registry::Result<()> {
    ensure::<ClusterRole>(registry, cluster_roles()).await?;
    ensure::<ClusterRoleBinding>(registry, cluster_role_bindings()).await
}

async fn ensure<K: Kind>(registry: &Registry, objects: Vec<Value>) -> registry::Result<()> {
    let rt = K::resource_type();
    let mut missing = Vec::new();
    for object in objects {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match registry.get(rt, "", &name).await {
            Ok(_) => continue,
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let decoded = rt
            .decode(Source::Value(object))
            .map_err(|e| registry::decode_error(rt, &name, e))?;
        let typed: K = serde_json::from_value(decoded.object)
            .map_err(|e| registry::Error::internal(format!("default {name}: {e}")))?;
        missing.push(typed.into_object());
    }
    match registry.create_many(rt, missing).await {
        Ok(_) => Ok(()),
        // Another replica made them first.
        Err(e) if e.is_conflict() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use berth_api::kinds::{CLUSTER_ROLE_BINDINGS, CLUSTER_ROLES};

    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        for object in cluster_roles() {
            assert!(
                CLUSTER_ROLES.decode(Source::Value(object.clone())).is_ok(),
                "{object}"
            );
        }
        for object in cluster_role_bindings() {
            if let Err(e) = CLUSTER_ROLE_BINDINGS.decode(Source::Value(object.clone())) {
                panic!("{object}: {e}");
            }
        }
    }
}
