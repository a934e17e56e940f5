//! Authorization: what a request asks to do ([`Attributes`], read from its method, path
//! and query the way Kubernetes' RequestInfoFactory reads them) and whether RBAC allows
//! it ([`Rbac`]): members of `system:masters` may do anything; anyone else what the rules
//! of the roles bound to them allow — ClusterRoleBindings everywhere, RoleBindings in
//! their namespace. Nothing denies: a request no rule allows is refused.

use std::collections::HashMap;

use axum::http::Method;
use berth_api::{
    kinds::{CLUSTER_ROLE_BINDINGS, CLUSTER_ROLES, ROLE_BINDINGS, ROLES},
    rbac::{
        ClusterRole, ClusterRoleBinding, GROUP, MASTERS_GROUP, PolicyRule, Role, RoleBinding,
        RoleRef, uncovered,
    },
    selector::{FieldSelector, Selector},
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{
    authn::UserInfo,
    registry::{self, Registry},
};

/// What a request asks to do, in RBAC's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    Resource {
        verb: String,
        group: String,
        resource: String,
        subresource: String,
        namespace: String,
        name: String,
    },
    /// Any other path; the verb is the method in lower case, as in Kubernetes.
    NonResource { verb: String, path: String },
}

impl Attributes {
    /// The attributes of a request for `path`: a resource request under `/api/v1` or
    /// `/apis/<group>/<version>` that names a resource, else a non-resource one
    /// (discovery, `/metrics`, `/version`, ...).
    pub fn of_request(method: &Method, path: &str, query: &HashMap<String, String>) -> Self {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match segments.as_slice() {
            ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest),
            ["apis", group, _version, rest @ ..] if !rest.is_empty() => (*group, rest),
            _ => {
                return Self::NonResource {
                    verb: method.as_str().to_ascii_lowercase(),
                    path: path.to_owned(),
                };
            }
        };
        let mut namespace = "";
        let mut parts = rest;
        if let ["namespaces", ns, tail @ ..] = rest {
            namespace = ns;
            // A namespace's own subresources stay the namespace's, as in Kubernetes.
            if !matches!(tail, [] | ["status" | "finalize", ..]) {
                parts = tail;
            }
        }
        let resource = parts.first().copied().unwrap_or_default();
        let name = parts.get(1).copied().unwrap_or_default();
        let subresource = parts.get(2).copied().unwrap_or_default();
        let watch = query
            .get("watch")
            .is_some_and(|v| matches!(v.as_str(), "true" | "1"));
        let verb = match *method {
            // exec runs a command whichever way it is asked (kubectl's WebSocket GET or a
            // POST), so it needs the verb a POST needs: `create` on pods/exec; attach and
            // port forwarding too, as in Kubernetes.
            _ if matches!(subresource, "exec" | "attach" | "portforward") => "create",
            Method::GET | Method::HEAD if name.is_empty() && watch => "watch",
            Method::GET | Method::HEAD if name.is_empty() => "list",
            Method::GET | Method::HEAD => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if name.is_empty() => "deletecollection",
            Method::DELETE => "delete",
            _ => "",
        };
        Self::Resource {
            verb: verb.to_owned(),
            group: group.to_owned(),
            resource: resource.to_owned(),
            subresource: subresource.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    pub fn namespace(&self) -> &str {
        match self {
            Self::Resource { namespace, .. } => namespace,
            Self::NonResource { .. } => "",
        }
    }

    /// Whether `rule` allows this request.
    pub fn allowed_by(&self, rule: &PolicyRule) -> bool {
        match self {
            Self::Resource {
                verb,
                group,
                resource,
                subresource,
                name,
                ..
            } => rule.allows_resource(verb, group, resource, subresource, name),
            Self::NonResource { verb, path } => rule.allows_url(verb, path),
        }
    }

    /// Kubernetes' refusal for `user`: `pods is forbidden: User "alice" cannot list
    /// resource "pods" in API group "" in the namespace "b"`.
    pub fn forbidden_message(&self, user: &str) -> String {
        match self {
            Self::NonResource { verb, path } => {
                format!("forbidden: User {user:?} cannot {verb} path {path:?}")
            }
            Self::Resource {
                verb,
                group,
                resource,
                subresource,
                namespace,
                name,
            } => {
                let qualified = if group.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}.{group}")
                };
                let subject = if name.is_empty() {
                    format!("{qualified} is forbidden")
                } else {
                    format!("{qualified} {name:?} is forbidden")
                };
                let target = if subresource.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}/{subresource}")
                };
                let scope = if namespace.is_empty() {
                    "at the cluster scope".to_owned()
                } else {
                    format!("in the namespace {namespace:?}")
                };
                format!(
                    "{subject}: User {user:?} cannot {verb} resource {target:?} in API group {group:?} {scope}"
                )
            }
        }
    }
}

/// The RBAC authorizer over the registry's roles and bindings.
#[derive(Clone)]
pub struct Rbac {
    registry: Registry,
}

impl Rbac {
    pub fn new(registry: Registry) -> Self {
        Self { registry }
    }

    /// Whether `user` may do what `attributes` describe.
    pub async fn authorize(
        &self,
        user: &UserInfo,
        attributes: &Attributes,
    ) -> registry::Result<bool> {
        if user.in_group(MASTERS_GROUP) {
            return Ok(true);
        }
        let rules = self.rules(user, attributes.namespace()).await?;
        Ok(rules.iter().any(|rule| attributes.allowed_by(rule)))
    }

    /// Every rule that applies to `user` in `namespace` (cluster-wide ones only when it
    /// is empty): the rules of the roles their bindings grant them.
    pub async fn rules(
        &self,
        user: &UserInfo,
        namespace: &str,
    ) -> registry::Result<Vec<PolicyRule>> {
        let mut rules = Vec::new();
        for binding in self
            .list::<ClusterRoleBinding>(&CLUSTER_ROLE_BINDINGS, None)
            .await?
        {
            if binding
                .subjects
                .iter()
                .any(|s| s.matches(&user.name, &user.groups))
            {
                rules.extend(self.cluster_role_rules(&binding.role_ref.name).await?);
            }
        }
        if !namespace.is_empty() {
            for binding in self
                .list::<RoleBinding>(&ROLE_BINDINGS, Some(namespace))
                .await?
            {
                if !binding
                    .subjects
                    .iter()
                    .any(|s| s.matches(&user.name, &user.groups))
                {
                    continue;
                }
                match binding.role_ref.kind.as_str() {
                    "ClusterRole" => {
                        // Granted in this namespace only: non-resource rules do not carry.
                        rules.extend(
                            self.cluster_role_rules(&binding.role_ref.name)
                                .await?
                                .into_iter()
                                .filter(|r| r.non_resource_urls.is_empty()),
                        );
                    }
                    _ => {
                        if let Some(role) = self
                            .get::<Role>(&ROLES, namespace, &binding.role_ref.name)
                            .await?
                        {
                            rules.extend(role.rules);
                        }
                    }
                }
            }
        }
        Ok(rules)
    }

    async fn cluster_role_rules(&self, name: &str) -> registry::Result<Vec<PolicyRule>> {
        Ok(self
            .get::<ClusterRole>(&CLUSTER_ROLES, "", name)
            .await?
            .map(|role| role.rules)
            .unwrap_or_default())
    }

    async fn list<T: DeserializeOwned>(
        &self,
        rt: &'static berth_api::ResourceType,
        namespace: Option<&str>,
    ) -> registry::Result<Vec<T>> {
        let (items, _) = self
            .registry
            .list(
                rt,
                namespace,
                &Selector::default(),
                &FieldSelector::default(),
            )
            .await?;
        items.into_iter().map(decode).collect()
    }

    /// The object, or None when there is none (a binding to a role not yet created).
    async fn get<T: DeserializeOwned>(
        &self,
        rt: &'static berth_api::ResourceType,
        namespace: &str,
        name: &str,
    ) -> registry::Result<Option<T>> {
        match self.registry.get(rt, namespace, name).await {
            Ok(object) => decode(object).map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Why writing `object` (a Role, ClusterRole or binding; `old` the stored one for an
    /// update) would grant more than `user` holds, if it would — Kubernetes' escalation
    /// check: a role's rules must be held by its author unless they may `escalate` on it;
    /// a binding's role must be held by its author unless they may `bind` it. Members of
    /// `system:masters` may grant anything; a write that leaves the rules (the role
    /// reference and subjects) as they were grants nothing new.
    pub async fn escalation(
        &self,
        user: &UserInfo,
        rt: &berth_api::ResourceType,
        object: &Value,
        old: Option<&Value>,
    ) -> registry::Result<Option<String>> {
        if rt.group != GROUP || user.in_group(MASTERS_GROUP) {
            return Ok(None);
        }
        let unchanged = |fields: &[&str]| {
            old.is_some_and(|old| fields.iter().all(|f| old.get(*f) == object.get(*f)))
        };
        let namespace = crate::objects::namespace_of(object);
        let name = crate::objects::name_of(object);
        let may = |verb: &str, resource: &str, name: &str| Attributes::Resource {
            verb: verb.to_owned(),
            group: GROUP.to_owned(),
            resource: resource.to_owned(),
            subresource: String::new(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let wanted: Vec<PolicyRule> = match rt.kind {
            "Role" | "ClusterRole" => {
                if unchanged(&["rules", "aggregationRule"])
                    || self
                        .authorize(user, &may("escalate", rt.plural, name))
                        .await?
                {
                    return Ok(None);
                }
                let mut wanted: Vec<PolicyRule> =
                    decode(object.get("rules").cloned().unwrap_or(Value::Null))?;
                // An aggregation rule gathers whatever roles it selects: only someone who
                // holds everything may set one.
                if object.get("aggregationRule").is_some_and(|r| !r.is_null())
                    && !unchanged(&["aggregationRule"])
                {
                    wanted.extend(full_authority());
                }
                wanted
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                if unchanged(&["roleRef", "subjects"]) {
                    return Ok(None);
                }
                let role_ref: RoleRef =
                    decode(object.get("roleRef").cloned().unwrap_or(Value::Null))?;
                let resource = if role_ref.kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                if self
                    .authorize(user, &may("bind", resource, &role_ref.name))
                    .await?
                {
                    return Ok(None);
                }
                let role = if role_ref.kind == "Role" {
                    self.get::<Role>(&ROLES, namespace, &role_ref.name)
                        .await?
                        .map(|r| r.rules)
                } else {
                    self.get::<ClusterRole>(&CLUSTER_ROLES, "", &role_ref.name)
                        .await?
                        .map(|r| r.rules)
                };
                match role {
                    Some(rules) => rules,
                    None => {
                        return Ok(Some(format!(
                            "{} {:?} not found: a binding to it cannot be checked against \
                             what user {:?} holds",
                            role_ref.kind, role_ref.name, user.name
                        )));
                    }
                }
            }
            _ => return Ok(None),
        };
        let held = self.rules(user, namespace).await?;
        let missing = uncovered(&held, &wanted);
        if missing.is_empty() {
            return Ok(None);
        }
        let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
        let rules: Vec<String> = missing.iter().map(compact).collect();
        Ok(Some(format!(
            "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            groups.join(" "),
            rules.join("\n")
        )))
    }
}

/// Every verb on everything: what setting an aggregation rule needs, and what anyone
/// may do with authentication off.
pub fn full_authority() -> Vec<PolicyRule> {
    let every = || vec!["*".to_owned()];
    vec![
        PolicyRule {
            verbs: every(),
            api_groups: every(),
            resources: every(),
            ..PolicyRule::default()
        },
        PolicyRule {
            verbs: every(),
            non_resource_urls: every(),
            ..PolicyRule::default()
        },
    ]
}

/// A rule as Kubernetes prints it in an escalation refusal:
/// `{APIGroups:[""], Resources:["pods"], Verbs:["create"]}`.
fn compact(rule: &PolicyRule) -> String {
    let list = |items: &[String]| {
        items
            .iter()
            .map(|i| format!("{i:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut parts = Vec::new();
    if !rule.api_groups.is_empty() {
        parts.push(format!("APIGroups:[{}]", list(&rule.api_groups)));
    }
    if !rule.resources.is_empty() {
        parts.push(format!("Resources:[{}]", list(&rule.resources)));
    }
    if !rule.resource_names.is_empty() {
        parts.push(format!("ResourceNames:[{}]", list(&rule.resource_names)));
    }
    if !rule.non_resource_urls.is_empty() {
        parts.push(format!(
            "NonResourceURLs:[{}]",
            list(&rule.non_resource_urls)
        ));
    }
    parts.push(format!("Verbs:[{}]", list(&rule.verbs)));
    format!("{{{}}}", parts.join(", "))
}

fn decode<T: DeserializeOwned>(object: Value) -> registry::Result<T> {
    serde_json::from_value(object)
        .map_err(|e| registry::Error::internal(format!("a stored RBAC object: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(method: Method, path: &str, query: &[(&str, &str)]) -> Attributes {
        let query = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Attributes::of_request(&method, path, &query)
    }

    fn resource(
        verb: &str,
        group: &str,
        resource: &str,
        subresource: &str,
        namespace: &str,
        name: &str,
    ) -> Attributes {
        Attributes::Resource {
            verb: verb.to_owned(),
            group: group.to_owned(),
            resource: resource.to_owned(),
            subresource: subresource.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    #[test]
    fn requests_read_as_kubernetes_reads_them() {
        assert_eq!(
            attributes(Method::GET, "/api/v1/namespaces/b/pods", &[]),
            resource("list", "", "pods", "", "b", "")
        );
        assert_eq!(
            attributes(
                Method::GET,
                "/api/v1/namespaces/b/pods",
                &[("watch", "true")]
            ),
            resource("watch", "", "pods", "", "b", "")
        );
        assert_eq!(
            attributes(Method::GET, "/api/v1/namespaces/b/pods/web/exec", &[]),
            resource("create", "", "pods", "exec", "b", "web")
        );
        for subresource in ["attach", "portforward"] {
            assert_eq!(
                attributes(
                    Method::GET,
                    &format!("/api/v1/namespaces/b/pods/web/{subresource}"),
                    &[]
                ),
                resource("create", "", "pods", subresource, "b", "web")
            );
        }
        assert_eq!(
            attributes(Method::GET, "/api/v1/namespaces/b/pods/web/log", &[]),
            resource("get", "", "pods", "log", "b", "web")
        );
        assert_eq!(
            attributes(
                Method::PATCH,
                "/apis/apps/v1/namespaces/a/deployments/d/scale",
                &[]
            ),
            resource("patch", "apps", "deployments", "scale", "a", "d")
        );
        assert_eq!(
            attributes(Method::DELETE, "/api/v1/namespaces/a", &[]),
            resource("delete", "", "namespaces", "", "a", "a")
        );
        assert_eq!(
            attributes(Method::PUT, "/api/v1/namespaces/a/status", &[]),
            resource("update", "", "namespaces", "status", "a", "a")
        );
        assert_eq!(
            attributes(Method::DELETE, "/api/v1/namespaces/a/configmaps", &[]),
            resource("deletecollection", "", "configmaps", "", "a", "")
        );
        assert_eq!(
            attributes(Method::GET, "/api/v1/nodes", &[]),
            resource("list", "", "nodes", "", "", "")
        );
        for path in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/metrics",
        ] {
            assert_eq!(
                attributes(Method::GET, path, &[]),
                Attributes::NonResource {
                    verb: "get".to_owned(),
                    path: path.to_owned()
                }
            );
        }
    }

    #[test]
    fn refusals_read_as_kubernetes_words_them() {
        assert_eq!(
            resource("list", "", "pods", "", "b", "").forbidden_message("alice"),
            r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "b""#
        );
        assert_eq!(
            resource("create", "", "pods", "exec", "b", "web").forbidden_message("alice"),
            r#"pods "web" is forbidden: User "alice" cannot create resource "pods/exec" in API group "" in the namespace "b""#
        );
        assert_eq!(
            resource("list", "apps", "deployments", "", "", "").forbidden_message("bob"),
            r#"deployments.apps is forbidden: User "bob" cannot list resource "deployments" in API group "apps" at the cluster scope"#
        );
        assert_eq!(
            attributes(Method::GET, "/metrics", &[]).forbidden_message("bob"),
            r#"forbidden: User "bob" cannot get path "/metrics""#
        );
    }
}
