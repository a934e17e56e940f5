//! What a pod's security settings mean together: each container's effective settings
//! (its own over its pod's) and the Pod Security Standards checks of a whole pod spec.

use crate::{
    core::{Container, PodSpec},
    security::{BASELINE_CAPABILITIES, Level},
};

/// What a container runs with, its own settings over its pod's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effective {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: bool,
    pub read_only_root_filesystem: bool,
    pub allow_privilege_escalation: bool,
    pub privileged: bool,
    pub add: Vec<String>,
    pub drop: Vec<String>,
}

impl Effective {
    pub fn of(pod: &PodSpec, container: &Container) -> Self {
        let own = container.security_context.clone().unwrap_or_default();
        let shared = pod.security_context.clone().unwrap_or_default();
        let privileged = own.privileged == Some(true);
        let capabilities = own.capabilities.unwrap_or_default();
        Effective {
            run_as_user: own.run_as_user.or(shared.run_as_user),
            run_as_group: own.run_as_group.or(shared.run_as_group),
            run_as_non_root: own.run_as_non_root.or(shared.run_as_non_root) == Some(true),
            read_only_root_filesystem: own.read_only_root_filesystem == Some(true),
            // A privileged container, or one that may administer the system, escalates
            // anyway: Kubernetes refuses to say otherwise.
            allow_privilege_escalation: own
                .allow_privilege_escalation
                .unwrap_or(privileged || capabilities.add.iter().any(|c| c == "SYS_ADMIN")),
            privileged,
            add: capabilities.add,
            drop: capabilities.drop,
        }
    }
}

/// What in `spec` breaks `level`, each as `field: reason` in Kubernetes' words; empty
/// when it meets it. (Host namespaces are refused for every pod by validation, and
/// hostPath by the admin's allow-list, so they are not repeated here.)
pub fn violations(level: Level, spec: &PodSpec) -> Vec<String> {
    let mut found = Vec::new();
    if level == Level::Privileged {
        return found;
    }
    let containers = spec.containers.iter().enumerate();
    for (i, container) in containers {
        let at = |field: &str| format!("spec.containers[{i}].securityContext.{field}");
        let effective = Effective::of(spec, container);
        if effective.privileged {
            found.push(format!(
                "{}: privileged containers are not allowed in a {} namespace",
                at("privileged"),
                level.as_str()
            ));
        }
        let allowed: &[&str] = match level {
            Level::Restricted => &["NET_BIND_SERVICE"],
            _ => BASELINE_CAPABILITIES,
        };
        for name in effective
            .add
            .iter()
            .filter(|c| !allowed.contains(&c.as_str()))
        {
            found.push(format!(
                "{}: adding {name} is not allowed in a {} namespace",
                at("capabilities.add"),
                level.as_str()
            ));
        }
        if level == Level::Restricted {
            if effective.allow_privilege_escalation {
                found.push(format!(
                    "{}: must be false in a restricted namespace",
                    at("allowPrivilegeEscalation")
                ));
            }
            if !effective.drop.iter().any(|c| c == "ALL") {
                found.push(format!(
                    "{}: must include ALL in a restricted namespace",
                    at("capabilities.drop")
                ));
            }
            if !effective.run_as_non_root {
                found.push(format!(
                    "{}: must be true (on the pod or the container) in a restricted namespace",
                    at("runAsNonRoot")
                ));
            }
            if effective.run_as_user == Some(0) {
                found.push(format!(
                    "{}: must not be 0 in a restricted namespace",
                    at("runAsUser")
                ));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> PodSpec {
        serde_norway::from_str(yaml).expect("a pod spec")
    }

    #[test]
    fn a_container_runs_with_its_own_settings_over_its_pods() {
        let pod = spec(
            "securityContext: {runAsUser: 1000, runAsGroup: 100, runAsNonRoot: true}\ncontainers:\n- {name: a, image: i, securityContext: {runAsUser: 2000}}\n- {name: b, image: i, securityContext: {privileged: true}}",
        );
        let a = Effective::of(&pod, &pod.containers[0]);
        assert_eq!(
            (
                a.run_as_user,
                a.run_as_group,
                a.run_as_non_root,
                a.allow_privilege_escalation
            ),
            (Some(2000), Some(100), true, false)
        );
        let b = Effective::of(&pod, &pod.containers[1]);
        assert!(b.privileged && b.allow_privilege_escalation);
    }

    #[test]
    fn each_level_refuses_what_kubernetes_refuses() {
        let privileged =
            spec("containers: [{name: a, image: i, securityContext: {privileged: true}}]");
        assert!(violations(Level::Privileged, &privileged).is_empty());
        assert_eq!(
            violations(Level::Baseline, &privileged),
            [
                "spec.containers[0].securityContext.privileged: privileged containers are not allowed in a baseline namespace"
            ]
        );
        let net_admin = spec(
            "containers: [{name: a, image: i, securityContext: {capabilities: {add: [NET_ADMIN, CHOWN]}}}]",
        );
        assert_eq!(violations(Level::Baseline, &net_admin).len(), 1);
        let plain = spec("containers: [{name: a, image: i}]");
        assert!(violations(Level::Baseline, &plain).is_empty());
        assert_eq!(
            violations(Level::Restricted, &plain),
            [
                "spec.containers[0].securityContext.capabilities.drop: must include ALL in a restricted namespace",
                "spec.containers[0].securityContext.runAsNonRoot: must be true (on the pod or the container) in a restricted namespace",
            ]
        );
        let hardened = spec(
            "securityContext: {runAsNonRoot: true}\ncontainers: [{name: a, image: i, securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}}}]",
        );
        assert!(violations(Level::Restricted, &hardened).is_empty());
    }
}
