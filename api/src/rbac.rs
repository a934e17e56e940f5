//! Who may do what (`rbac.authorization.k8s.io/v1`): Role, ClusterRole, RoleBinding and
//! ClusterRoleBinding, with Kubernetes' fields and rule semantics; and the questions a
//! user asks about their own rights (`authorization.k8s.io/v1` SelfSubjectAccessReview
//! and SelfSubjectRulesReview), which are answered, never stored.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    meta::{LabelSelector, ObjectMeta},
    validation::{FieldPath, Validator},
};

pub const GROUP: &str = "rbac.authorization.k8s.io";
/// Every user the API authenticates is in this group.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// Members may do anything (the admin token's user is one).
pub const MASTERS_GROUP: &str = "system:masters";
/// The verbs a rule names (`*` is every verb).
pub const VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "escalate",
    "bind",
    "impersonate",
    "*",
];

/// One grant: the verbs allowed on resources of the API groups, optionally only the named
/// objects; or on non-resource URLs (cluster roles only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    pub verbs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    /// Plural resource names; `pods/exec` for a subresource, `*/scale` for one of every
    /// resource, `*` for all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    /// Paths such as `/metrics`; a trailing `*` matches a prefix.
    #[serde(
        default,
        rename = "nonResourceURLs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

impl PolicyRule {
    fn validate(&self, v: &mut Validator, path: &FieldPath, cluster: bool) {
        if self.verbs.is_empty() {
            v.error(&path.child("verbs"), "must name at least one verb");
        }
        for (i, verb) in self.verbs.iter().enumerate() {
            if verb.is_empty() {
                v.error(&path.child("verbs").index(i), "must not be empty");
            }
        }
        let resources = !self.resources.is_empty() || !self.api_groups.is_empty();
        if !self.non_resource_urls.is_empty() {
            if !cluster {
                v.error(
                    &path.child("nonResourceURLs"),
                    "namespaced rules cannot apply to non-resource URLs",
                );
            }
            if resources {
                v.error(
                    &path.child("nonResourceURLs"),
                    "rules cannot apply to both regular resources and non-resource URLs",
                );
            }
            for (i, url) in self.non_resource_urls.iter().enumerate() {
                if !url.starts_with('/') && url != "*" {
                    v.error(
                        &path.child("nonResourceURLs").index(i),
                        "must start with / or be *",
                    );
                }
            }
        } else {
            if self.api_groups.is_empty() {
                v.error(
                    &path.child("apiGroups"),
                    "resource rules must supply at least one api group",
                );
            }
            if self.resources.is_empty() {
                v.error(
                    &path.child("resources"),
                    "resource rules must supply at least one resource",
                );
            }
        }
    }

    /// Whether this rule allows `verb`.
    pub fn allows_verb(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == "*" || v == verb)
    }

    /// Whether this rule allows `verb` on `resource` (with `subresource`, if any) of
    /// `group`, for an object named `name` (empty when the request names none, as a list
    /// or create does).
    pub fn allows_resource(
        &self,
        verb: &str,
        group: &str,
        resource: &str,
        subresource: &str,
        name: &str,
    ) -> bool {
        let combined = if subresource.is_empty() {
            resource.to_owned()
        } else {
            format!("{resource}/{subresource}")
        };
        self.allows_verb(verb)
            && self.api_groups.iter().any(|g| g == "*" || g == group)
            && self.resources.iter().any(|r| {
                r == "*"
                    || *r == combined
                    // `*/scale`: that subresource of every resource.
                    || (!subresource.is_empty()
                        && r.strip_prefix("*/") == Some(subresource))
            })
            && (self.resource_names.is_empty()
                || self
                    .resource_names
                    .iter()
                    .any(|n| !name.is_empty() && n == name))
    }

    /// Whether this rule allows `verb` on the non-resource URL `path`.
    pub fn allows_url(&self, verb: &str, path: &str) -> bool {
        self.allows_verb(verb)
            && self.non_resource_urls.iter().any(|url| {
                url == "*"
                    || url == path
                    || url
                        .strip_suffix('*')
                        .is_some_and(|prefix| path.starts_with(prefix))
            })
    }
}

/// The rules of `wanted` that `held` does not cover, each as a simple rule (one verb,
/// group, resource, name or URL), as Kubernetes' escalation check compares them
/// (pkg/registry/rbac/validation/policy_comparator.go): a user may grant only what they
/// hold.
pub fn uncovered(held: &[PolicyRule], wanted: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut missing = Vec::new();
    for rule in wanted {
        for simple in breakdown(rule) {
            if !held.iter().any(|owner| covers(owner, &simple)) && !missing.contains(&simple) {
                missing.push(simple);
            }
        }
    }
    missing
}

fn breakdown(rule: &PolicyRule) -> Vec<PolicyRule> {
    let one = |s: &String| vec![s.clone()];
    let mut simple = Vec::new();
    for group in &rule.api_groups {
        for resource in &rule.resources {
            for verb in &rule.verbs {
                let base = PolicyRule {
                    verbs: one(verb),
                    api_groups: one(group),
                    resources: one(resource),
                    ..PolicyRule::default()
                };
                if rule.resource_names.is_empty() {
                    simple.push(base);
                } else {
                    for name in &rule.resource_names {
                        simple.push(PolicyRule {
                            resource_names: one(name),
                            ..base.clone()
                        });
                    }
                }
            }
        }
    }
    for url in &rule.non_resource_urls {
        for verb in &rule.verbs {
            simple.push(PolicyRule {
                verbs: one(verb),
                non_resource_urls: one(url),
                ..PolicyRule::default()
            });
        }
    }
    simple
}

fn covers(owner: &PolicyRule, simple: &PolicyRule) -> bool {
    let all = |set: &[String], wanted: &[String]| {
        set.iter().any(|s| s == "*") || wanted.iter().all(|w| set.contains(w))
    };
    let resources = owner.resources.iter().any(|r| r == "*")
        || simple.resources.iter().all(|wanted| {
            owner.resources.contains(wanted)
                || wanted
                    .split_once('/')
                    .is_some_and(|(_, sub)| owner.resources.contains(&format!("*/{sub}")))
        });
    let urls = simple.non_resource_urls.iter().all(|wanted| {
        owner.non_resource_urls.iter().any(|url| {
            url == wanted
                || url
                    .strip_suffix('*')
                    .is_some_and(|prefix| wanted.starts_with(prefix))
        })
    });
    let names = if simple.resource_names.is_empty() {
        owner.resource_names.is_empty()
    } else {
        owner.resource_names.is_empty() || all(&owner.resource_names, &simple.resource_names)
    };
    all(&owner.verbs, &simple.verbs)
        && all(&owner.api_groups, &simple.api_groups)
        && resources
        && urls
        && names
}

fn validate_rules(rules: &[PolicyRule], v: &mut Validator, cluster: bool) {
    for (i, rule) in rules.iter().enumerate() {
        rule.validate(v, &FieldPath::root("rules").index(i), cluster);
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Role {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
}

impl Role {
    pub(crate) fn validate(&self, v: &mut Validator) {
        validate_rules(&self.rules, v, false);
    }
}

/// Which ClusterRoles a ClusterRole is made of: every one whose labels a selector matches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AggregationRule {
    #[serde(default)]
    pub cluster_role_selectors: Vec<LabelSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRole {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// For an aggregated role, written by the control plane from the selected roles.
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation_rule: Option<AggregationRule>,
}

impl ClusterRole {
    pub(crate) fn validate(&self, v: &mut Validator) {
        validate_rules(&self.rules, v, true);
        if let Some(rule) = &self.aggregation_rule {
            let path = FieldPath::root("aggregationRule").child("clusterRoleSelectors");
            for (i, selector) in rule.cluster_role_selectors.iter().enumerate() {
                selector.validate(v, &path.index(i));
            }
        }
    }
}

/// The role a binding grants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleRef {
    #[serde(default)]
    pub api_group: String,
    /// `Role` or `ClusterRole`.
    pub kind: String,
    pub name: String,
}

/// Who a binding grants its role to: a `User`, a `Group` or a `ServiceAccount`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    pub name: String,
    /// A ServiceAccount's namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

impl Subject {
    /// Whether this subject is the user `user`, one of `groups`, or (for a
    /// ServiceAccount) the user name Kubernetes gives its tokens.
    pub fn matches(&self, user: &str, groups: &[String]) -> bool {
        match self.kind.as_str() {
            "User" => self.name == user,
            "Group" => groups.contains(&self.name),
            "ServiceAccount" => {
                user.strip_prefix("system:serviceaccount:")
                    .and_then(|rest| rest.split_once(':'))
                    == Some((self.namespace.as_str(), self.name.as_str()))
            }
            _ => false,
        }
    }
}

fn validate_binding(subjects: &[Subject], role_ref: &RoleRef, v: &mut Validator, cluster: bool) {
    let path = FieldPath::root("roleRef");
    if role_ref.api_group != GROUP {
        v.error(
            &path.child("apiGroup"),
            &format!("supported values: {GROUP:?}"),
        );
    }
    let kinds: &[&str] = if cluster {
        &["ClusterRole"]
    } else {
        &["Role", "ClusterRole"]
    };
    v.one_of(&path.child("kind"), &role_ref.kind, kinds);
    if role_ref.name.is_empty() {
        v.error(&path.child("name"), "is required");
    }
    for (i, subject) in subjects.iter().enumerate() {
        let path = FieldPath::root("subjects").index(i);
        if subject.name.is_empty() {
            v.error(&path.child("name"), "is required");
        }
        match subject.kind.as_str() {
            "User" | "Group" => {
                if subject.api_group != GROUP {
                    v.error(
                        &path.child("apiGroup"),
                        &format!("supported values: {GROUP:?}"),
                    );
                }
            }
            "ServiceAccount" => {
                if !subject.api_group.is_empty() {
                    v.error(&path.child("apiGroup"), "supported values: \"\"");
                }
                if subject.namespace.is_empty() {
                    v.error(&path.child("namespace"), "is required");
                }
            }
            other => v.error(
                &path.child("kind"),
                &format!("{other:?}: supported values: \"User\", \"Group\", \"ServiceAccount\""),
            ),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleBinding {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub subjects: Vec<Subject>,
    pub role_ref: RoleRef,
}

impl RoleBinding {
    pub(crate) fn validate(&self, v: &mut Validator) {
        validate_binding(&self.subjects, &self.role_ref, v, false);
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRoleBinding {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub subjects: Vec<Subject>,
    pub role_ref: RoleRef,
}

impl ClusterRoleBinding {
    pub(crate) fn validate(&self, v: &mut Validator) {
        validate_binding(&self.subjects, &self.role_ref, v, true);
    }
}

// ------------------------------------------------------------- authorization.k8s.io/v1

pub const AUTHORIZATION_GROUP: &str = "authorization.k8s.io";

/// What a SelfSubjectAccessReview asks about: a resource request or a non-resource one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceAttributes {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub verb: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subresource: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NonResourceAttributes {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub verb: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelfSubjectAccessReviewSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_attributes: Option<ResourceAttributes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_resource_attributes: Option<NonResourceAttributes>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubjectAccessReviewStatus {
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub denied: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub evaluation_error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelfSubjectAccessReview {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: SelfSubjectAccessReviewSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SubjectAccessReviewStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelfSubjectRulesReviewSpec {
    #[serde(default)]
    pub namespace: String,
}

/// A rule as a SelfSubjectRulesReview lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRule {
    pub verbs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NonResourceRule {
    pub verbs: Vec<String>,
    #[serde(
        default,
        rename = "nonResourceURLs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubjectRulesReviewStatus {
    #[serde(default)]
    pub resource_rules: Vec<ResourceRule>,
    #[serde(default)]
    pub non_resource_rules: Vec<NonResourceRule>,
    #[serde(default)]
    pub incomplete: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub evaluation_error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelfSubjectRulesReview {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: SelfSubjectRulesReviewSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SubjectRulesReviewStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> PolicyRule {
        let own = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect();
        PolicyRule {
            verbs: own(verbs),
            api_groups: own(groups),
            resources: own(resources),
            resource_names: own(names),
            non_resource_urls: Vec::new(),
        }
    }

    #[test]
    fn rules_match_as_in_kubernetes() {
        let view = rule(&["get", "list"], &[""], &["pods", "pods/log"], &[]);
        assert!(view.allows_resource("list", "", "pods", "", ""));
        assert!(view.allows_resource("get", "", "pods", "log", "web"));
        assert!(!view.allows_resource("create", "", "pods", "exec", "web"));
        assert!(!view.allows_resource("get", "apps", "pods", "", ""));
        assert!(!view.allows_resource("get", "", "pods", "status", "web"));
        let scale = rule(&["*"], &["*"], &["*/scale"], &[]);
        assert!(scale.allows_resource("patch", "apps", "deployments", "scale", "d"));
        assert!(!scale.allows_resource("patch", "apps", "deployments", "", "d"));
        let named = rule(&["get"], &[""], &["configmaps"], &["one"]);
        assert!(named.allows_resource("get", "", "configmaps", "", "one"));
        assert!(!named.allows_resource("get", "", "configmaps", "", "two"));
        // A list names no object, so a rule limited to names does not allow it.
        assert!(!named.allows_resource("get", "", "configmaps", "", ""));
        let metrics = PolicyRule {
            verbs: vec!["get".to_owned()],
            non_resource_urls: vec!["/metrics".to_owned(), "/debug/*".to_owned()],
            ..PolicyRule::default()
        };
        assert!(metrics.allows_url("get", "/metrics"));
        assert!(metrics.allows_url("get", "/debug/pprof"));
        assert!(!metrics.allows_url("get", "/metricsx"));
        assert!(!metrics.allows_url("post", "/metrics"));
    }

    #[test]
    fn a_rule_is_covered_only_by_rules_holding_all_of_it() {
        let held = vec![
            rule(&["get", "list"], &[""], &["pods", "pods/log"], &[]),
            rule(&["get"], &[""], &["configmaps"], &["one"]),
            rule(&["*"], &["apps"], &["*/scale"], &[]),
        ];
        assert!(uncovered(&held, &[rule(&["get"], &[""], &["pods", "pods/log"], &[])]).is_empty());
        assert!(uncovered(&held, &[rule(&["get"], &[""], &["configmaps"], &["one"])]).is_empty());
        assert!(
            uncovered(
                &held,
                &[rule(&["update"], &["apps"], &["deployments/scale"], &[])]
            )
            .is_empty()
        );
        assert_eq!(
            uncovered(&held, &[rule(&["get", "create"], &[""], &["pods"], &[])]),
            [rule(&["create"], &[""], &["pods"], &[])]
        );
        // Held for one name only: not for every name.
        assert_eq!(
            uncovered(&held, &[rule(&["get"], &[""], &["configmaps"], &[])]),
            [rule(&["get"], &[""], &["configmaps"], &[])]
        );
        assert_eq!(
            uncovered(&held, &[rule(&["get"], &["*"], &["pods"], &[])]).len(),
            1
        );
        let admin = vec![
            rule(&["*"], &["*"], &["*"], &[]),
            PolicyRule {
                verbs: vec!["*".to_owned()],
                non_resource_urls: vec!["*".to_owned()],
                ..PolicyRule::default()
            },
        ];
        let metrics = PolicyRule {
            verbs: vec!["get".to_owned()],
            non_resource_urls: vec!["/metrics".to_owned()],
            ..PolicyRule::default()
        };
        assert!(uncovered(&admin, std::slice::from_ref(&metrics)).is_empty());
        assert_eq!(uncovered(&held, std::slice::from_ref(&metrics)), [metrics]);
    }

    #[test]
    fn subjects_match_users_groups_and_service_accounts() {
        let groups = vec!["team".to_owned()];
        let user = |kind: &str, name: &str, ns: &str| Subject {
            kind: kind.to_owned(),
            api_group: String::new(),
            name: name.to_owned(),
            namespace: ns.to_owned(),
        };
        assert!(user("User", "alice", "").matches("alice", &groups));
        assert!(!user("User", "bob", "").matches("alice", &groups));
        assert!(user("Group", "team", "").matches("alice", &groups));
        assert!(
            user("ServiceAccount", "default", "a").matches("system:serviceaccount:a:default", &[])
        );
        assert!(
            !user("ServiceAccount", "default", "b").matches("system:serviceaccount:a:default", &[])
        );
    }
}
