//! Who a container runs as and what it may do: `securityContext` on pods and containers,
//! and the Pod Security Standards levels a namespace enforces (its
//! `pod-security.kubernetes.io/enforce` label, as Kubernetes' Pod Security admission).
//! What they mean for a whole pod is [`crate::podsecurity`]'s.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{FieldPath, Validator};

/// The namespace label naming the level its pods must meet.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
/// The level of a namespace without the label: Berth's default is `baseline` (Kubernetes'
/// is `privileged`), so a privileged container needs an admin's label on its namespace.
pub const DEFAULT_LEVEL: Level = Level::Baseline;

/// Kubernetes' Pod Security Standards levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// The capabilities `baseline` lets a container add (the container runtime's defaults).
pub(crate) const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<i64>,
    /// The container must not run as uid 0: the node refuses to start it otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_non_root: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_non_root: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_root_filesystem: Option<bool>,
    /// Whether a process may gain privileges (setuid binaries, file capabilities). Berth's
    /// default is false (the engine's no-new-privileges), unlike Kubernetes' true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_privilege_escalation: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

/// Capability names without `CAP_`; `ALL` in `drop` drops every one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Capabilities {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
}

fn check_id(v: &mut Validator, path: &FieldPath, id: Option<i64>) {
    if let Some(id) = id
        && !(0..=i64::from(i32::MAX)).contains(&id)
    {
        v.error(path, "must be between 0 and 2147483647");
    }
}

fn check_capability(v: &mut Validator, path: &FieldPath, name: &str) {
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !plain || name.starts_with("CAP_") {
        v.error(
            path,
            &format!(
                "{name:?} is not a capability name (upper case, without CAP_, e.g. NET_ADMIN)"
            ),
        );
    }
}

impl PodSecurityContext {
    pub(crate) fn validate(&self, v: &mut Validator, path: &FieldPath) {
        check_id(v, &path.child("runAsUser"), self.run_as_user);
        check_id(v, &path.child("runAsGroup"), self.run_as_group);
    }
}

impl SecurityContext {
    pub(crate) fn validate(&self, v: &mut Validator, path: &FieldPath) {
        check_id(v, &path.child("runAsUser"), self.run_as_user);
        check_id(v, &path.child("runAsGroup"), self.run_as_group);
        if self.privileged == Some(true) && self.allow_privilege_escalation == Some(false) {
            v.error(
                &path.child("allowPrivilegeEscalation"),
                "cannot be false for a privileged container",
            );
        }
        if let Some(capabilities) = &self.capabilities {
            let p = path.child("capabilities");
            for (i, name) in capabilities.add.iter().enumerate() {
                check_capability(v, &p.child("add").index(i), name);
            }
            for (i, name) in capabilities.drop.iter().enumerate() {
                if name != "ALL" {
                    check_capability(v, &p.child("drop").index(i), name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_by_field() {
        let mut v = Validator::default();
        SecurityContext {
            run_as_user: Some(-1),
            privileged: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: vec!["CAP_NET_ADMIN".into(), "net_raw".into()],
                drop: vec!["ALL".into()],
            }),
            ..SecurityContext::default()
        }
        .validate(&mut v, &FieldPath::root("securityContext"));
        let fields: Vec<String> = v.into_errors().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "securityContext.runAsUser",
                "securityContext.allowPrivilegeEscalation",
                "securityContext.capabilities.add[0]",
                "securityContext.capabilities.add[1]",
            ]
        );
    }
}
