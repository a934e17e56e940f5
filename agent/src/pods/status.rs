//! Pod status as the agent reports it: shaped like Kubernetes' (phase, podIP, container
//! statuses, the Ready condition) and convertible to berth-api's `PodStatus`.

use std::{net::Ipv4Addr, time::Duration};

use berth_api::core as api;

/// Waiting reasons, as Kubernetes spells them where it has one.
pub mod reason {
    pub const CONTAINER_CREATING: &str = "ContainerCreating";
    pub const CRASH_LOOP_BACK_OFF: &str = "CrashLoopBackOff";
    /// The image went away between its pull (or check) and the container's creation.
    pub const IMAGE_NOT_FOUND: &str = "ImageNotFound";
    /// The last pull failed; the message is the engine's, with the registry's.
    pub const ERR_IMAGE_PULL: &str = "ErrImagePull";
    /// Waiting for the pull back-off to end before pulling again.
    pub const IMAGE_PULL_BACK_OFF: &str = "ImagePullBackOff";
    /// `imagePullPolicy: Never` and the image is not on the node.
    pub const ERR_IMAGE_NEVER_PULL: &str = "ErrImageNeverPull";
    pub const CREATE_CONTAINER_ERROR: &str = "CreateContainerError";
    /// A ConfigMap, Secret or key the container's env or volumes need is missing.
    pub const CREATE_CONTAINER_CONFIG_ERROR: &str = "CreateContainerConfigError";
    /// The pod's sandbox (pause container and network) could not be set up.
    pub const SANDBOX_ERROR: &str = "SandboxError";
    pub const COMPLETED: &str = "Completed";
    pub const ERROR: &str = "Error";
    pub const OOM_KILLED: &str = "OOMKilled";
    pub const LIVENESS_PROBE_FAILED: &str = "LivenessProbeFailed";
    pub const STARTUP_PROBE_FAILED: &str = "StartupProbeFailed";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl PodPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            PodPhase::Pending => "Pending",
            PodPhase::Running => "Running",
            PodPhase::Succeeded => "Succeeded",
            PodPhase::Failed => "Failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminated {
    pub exit_code: Option<i64>,
    pub reason: String,
    /// RFC 3339, as the engine reports it.
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Waiting { reason: String, message: String },
    Running,
    Terminated(Terminated),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerReport {
    pub name: String,
    pub image: String,
    /// The engine's id of the current (or last) container.
    pub container_id: Option<String>,
    pub state: ContainerState,
    /// The previous container's end, once there has been one.
    pub last_termination: Option<Terminated>,
    pub ready: bool,
    /// Whether the startup probe has passed (true without one, once running).
    pub started: bool,
    pub restart_count: u32,
    /// The back-off before the latest restart (zero for an immediate one).
    pub last_backoff: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodReport {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub phase: PodPhase,
    pub pod_ip: Option<Ipv4Addr>,
    /// The Ready condition: every container runs, has started and is ready.
    pub ready: bool,
    /// Why the pod is not where it should be, when it is a pod-level problem.
    pub message: String,
    pub containers: Vec<ContainerReport>,
}

impl PodReport {
    pub fn container(&self, name: &str) -> Option<&ContainerReport> {
        self.containers
            .iter()
            .find(|container| container.name == name)
    }

    /// berth-api's PodStatus: container statuses as Kubernetes shapes them, and the reason
    /// of a waiting or failed container also in the message, for a one-line summary.
    pub fn to_api(&self, host_ip: Option<Ipv4Addr>) -> api::PodStatus {
        let mut problems: Vec<String> = Vec::new();
        if !self.message.is_empty() {
            problems.push(self.message.clone());
        }
        for container in &self.containers {
            match &container.state {
                ContainerState::Waiting { reason, message } => {
                    problems.push(format!("container {}: {reason}: {message}", container.name));
                }
                ContainerState::Terminated(end) if end.exit_code != Some(0) => {
                    problems.push(format!(
                        "container {}: {} (exit code {})",
                        container.name,
                        end.reason,
                        end.exit_code
                            .map_or_else(|| "unknown".to_owned(), |code| code.to_string())
                    ));
                }
                _ => {}
            }
        }
        let not_ready: Vec<&str> = self
            .containers
            .iter()
            .filter(|container| !container.ready)
            .map(|container| container.name.as_str())
            .collect();
        let ready = api::Condition {
            type_: "Ready".to_owned(),
            status: if self.ready { "True" } else { "False" }.to_owned(),
            reason: if self.ready {
                String::new()
            } else {
                "ContainersNotReady".to_owned()
            },
            message: if not_ready.is_empty() {
                String::new()
            } else {
                format!("containers with unready status: [{}]", not_ready.join(" "))
            },
            ..api::Condition::default()
        };
        api::PodStatus {
            phase: self.phase.as_str().to_owned(),
            pod_ip: self.pod_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            host_ip: host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            conditions: vec![ready],
            message: problems.join("; "),
            container_statuses: self
                .containers
                .iter()
                .map(ContainerReport::to_api)
                .collect(),
        }
    }
}

impl Terminated {
    fn to_api(&self) -> api::ContainerStateTerminated {
        api::ContainerStateTerminated {
            exit_code: self.exit_code,
            reason: self.reason.clone(),
            finished_at: self.finished_at.clone().unwrap_or_default(),
        }
    }
}

impl ContainerReport {
    fn to_api(&self) -> api::ContainerStatus {
        let state = match &self.state {
            ContainerState::Waiting { reason, message } => api::ContainerState {
                waiting: Some(api::ContainerStateWaiting {
                    reason: reason.clone(),
                    message: message.clone(),
                }),
                ..api::ContainerState::default()
            },
            ContainerState::Running => api::ContainerState {
                running: Some(api::ContainerStateRunning {}),
                ..api::ContainerState::default()
            },
            ContainerState::Terminated(end) => api::ContainerState {
                terminated: Some(end.to_api()),
                ..api::ContainerState::default()
            },
        };
        api::ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            container_id: self
                .container_id
                .as_ref()
                .map(|id| format!("docker://{id}"))
                .unwrap_or_default(),
            ready: self.ready,
            started: self.started,
            restart_count: self.restart_count,
            state,
            last_state: api::ContainerState {
                terminated: self.last_termination.as_ref().map(Terminated::to_api),
                ..api::ContainerState::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_status_carries_phase_ip_ready_and_reasons() {
        let report = PodReport {
            namespace: "default".to_owned(),
            name: "web-0".to_owned(),
            uid: "u".to_owned(),
            phase: PodPhase::Pending,
            pod_ip: Some(Ipv4Addr::new(198, 18, 1, 2)),
            ready: false,
            message: String::new(),
            containers: vec![ContainerReport {
                name: "echo".to_owned(),
                image: "berth/nope:v0".to_owned(),
                container_id: None,
                state: ContainerState::Waiting {
                    reason: reason::IMAGE_NOT_FOUND.to_owned(),
                    message: "build it".to_owned(),
                },
                last_termination: None,
                ready: false,
                started: false,
                restart_count: 0,
                last_backoff: Duration::ZERO,
            }],
        };
        let status = report.to_api(Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(status.phase, "Pending");
        assert_eq!(status.pod_ip, "198.18.1.2");
        assert_eq!(status.host_ip, "198.18.0.1");
        assert_eq!(status.conditions[0].type_, "Ready");
        assert_eq!(status.conditions[0].status, "False");
        assert!(
            status.message.contains("ImageNotFound"),
            "{}",
            status.message
        );
        let json = serde_json::to_value(&status).expect("serialisable");
        assert_eq!(json["podIP"], "198.18.1.2");
        let container = &json["containerStatuses"][0];
        assert_eq!(container["name"], "echo");
        assert_eq!(container["restartCount"], 0);
        assert_eq!(container["state"]["waiting"]["reason"], "ImageNotFound");
    }
}
