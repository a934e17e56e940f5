//! What the agent runs, in its own terms: converted and checked from berth-api's Pod once,
//! before the pod manager acts on it (so the manager never meets a quantity string or a
//! named port).

use std::time::Duration;

use berth_api::core::{self as api, IntOrString};

use crate::{
    probes::{ContainerProbes, ProbeAction, ProbeKind, ProbeSpec},
    runtime::Limits,
};

/// Kubernetes' default: what a pod gets to shut down after SIGTERM before SIGKILL.
pub const DEFAULT_TERMINATION_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// Whether a container that ended this way is started again. A container stopped
    /// for failing its liveness or startup probe counts as failed, whatever its exit code
    /// (it exits cleanly on the SIGTERM that stopped it).
    pub fn restarts(self, exit_code: Option<i64>, killed_by_probe: bool) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => killed_by_probe || exit_code != Some(0),
            RestartPolicy::Never => false,
        }
    }
}

/// A pod this node should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDesired {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub restart_policy: RestartPolicy,
    /// The pod's grace, or the one its deletion was given once it is terminating.
    pub termination_grace: Duration,
    /// Deleted gracefully (the API pod has a deletionTimestamp): the node stops it, runs
    /// no more of it, and then confirms the deletion.
    pub terminating: bool,
    pub containers: Vec<ContainerDesired>,
}

/// A container's `lifecycle.preStop` hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreStop {
    /// Runs in the container; the pod's grace bounds it.
    Exec(Vec<String>),
    /// The agent waits, so images without a `sleep` binary can have one too.
    Sleep(Duration),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerDesired {
    pub name: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    pub probes: ContainerProbes,
    pub pre_stop: Option<PreStop>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pod {pod}: {field}: {reason}")]
pub struct SpecError {
    pub pod: String,
    pub field: String,
    pub reason: String,
}

impl PodDesired {
    /// `namespace/name`, as logs and messages name a pod.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Converts a pod from the API. The API validated it already; what is checked here is
    /// what the agent needs on top (a uid, ports that fit, quantities it can use).
    pub fn from_api(pod: &api::Pod) -> Result<Self, SpecError> {
        let key = format!("{}/{}", pod.metadata.namespace, pod.metadata.name);
        let error = |field: String, reason: String| SpecError {
            pod: key.clone(),
            field,
            reason,
        };
        for (field, value) in [
            ("metadata.namespace", &pod.metadata.namespace),
            ("metadata.name", &pod.metadata.name),
            ("metadata.uid", &pod.metadata.uid),
        ] {
            if value.is_empty() {
                return Err(error(field.to_owned(), "is empty".to_owned()));
            }
        }
        let restart_policy = match pod.spec.restart_policy.as_str() {
            "" | "Always" => RestartPolicy::Always,
            "OnFailure" => RestartPolicy::OnFailure,
            "Never" => RestartPolicy::Never,
            other => {
                return Err(error(
                    "spec.restartPolicy".to_owned(),
                    format!("{other:?} is not Always, OnFailure or Never"),
                ));
            }
        };
        let grace_seconds = pod
            .metadata
            .deletion_grace_period_seconds
            .or(pod.spec.termination_grace_period_seconds);
        let termination_grace = match grace_seconds {
            None => DEFAULT_TERMINATION_GRACE,
            Some(seconds) => Duration::from_secs(u64::try_from(seconds).map_err(|_| {
                error(
                    "spec.terminationGracePeriodSeconds".to_owned(),
                    "is negative".to_owned(),
                )
            })?),
        };
        let containers = pod
            .spec
            .containers
            .iter()
            .enumerate()
            .map(|(index, container)| {
                ContainerDesired::from_api(container).map_err(|(field, reason)| {
                    error(format!("spec.containers[{index}].{field}"), reason)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if containers.is_empty() {
            return Err(error("spec.containers".to_owned(), "is empty".to_owned()));
        }
        Ok(PodDesired {
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            restart_policy,
            termination_grace,
            terminating: !pod.metadata.deletion_timestamp.is_empty(),
            containers,
        })
    }
}

fn pre_stop_from_api(container: &api::Container) -> Result<Option<PreStop>, (String, String)> {
    let Some(handler) = container
        .lifecycle
        .as_ref()
        .and_then(|lifecycle| lifecycle.pre_stop.as_ref())
    else {
        return Ok(None);
    };
    let error = |reason: &str| Err(("lifecycle.preStop".to_owned(), reason.to_owned()));
    match (&handler.exec, &handler.sleep) {
        (Some(exec), None) if !exec.command.is_empty() => {
            Ok(Some(PreStop::Exec(exec.command.clone())))
        }
        (None, Some(sleep)) => match u64::try_from(sleep.seconds) {
            Ok(seconds) => Ok(Some(PreStop::Sleep(Duration::from_secs(seconds)))),
            Err(_) => error("sleep.seconds is negative"),
        },
        _ => error("needs exactly one of a non-empty exec command or sleep"),
    }
}

impl ContainerDesired {
    fn from_api(container: &api::Container) -> Result<Self, (String, String)> {
        let non_empty = |list: &Vec<String>| (!list.is_empty()).then(|| list.clone());
        let limits = &container.resources.limits;
        let cpu_millis = limits
            .get("cpu")
            .map(|quantity| api::parse_cpu_millis(quantity))
            .transpose()
            .map_err(|reason| ("resources.limits.cpu".to_owned(), reason))?;
        let memory_bytes = limits
            .get("memory")
            .map(|quantity| api::parse_memory_bytes(quantity))
            .transpose()
            .map_err(|reason| ("resources.limits.memory".to_owned(), reason))?;
        let probe = |field: &str, kind, probe: &Option<api::Probe>| {
            probe
                .as_ref()
                .map(|probe| probe_from_api(kind, probe, container))
                .transpose()
                .map_err(|reason| (field.to_owned(), reason))
        };
        Ok(ContainerDesired {
            name: container.name.clone(),
            image: container.image.clone(),
            command: non_empty(&container.command),
            args: non_empty(&container.args),
            env: container
                .env
                .iter()
                .map(|var| (var.name.clone(), var.value.clone()))
                .collect(),
            limits: Limits {
                // A limit of 0 means "none" in a manifest, as in Kubernetes.
                cpu_millis: cpu_millis.filter(|millis| *millis > 0),
                memory_bytes: memory_bytes.filter(|bytes| *bytes > 0),
            },
            probes: ContainerProbes {
                // berth-api has no startup or exec probes yet; the agent's model has both.
                startup: None,
                liveness: probe(
                    "livenessProbe",
                    ProbeKind::Liveness,
                    &container.liveness_probe,
                )?,
                readiness: probe(
                    "readinessProbe",
                    ProbeKind::Readiness,
                    &container.readiness_probe,
                )?,
            },
            pre_stop: pre_stop_from_api(container)?,
        })
    }

    /// A hash of what the container runs. It is a label on the container, so a changed
    /// spec is noticed even across agent restarts; FNV-1a because std's hasher may change
    /// between Rust releases, which would restart every container after an upgrade.
    /// Probes are left out: changing them needs no new container.
    pub fn spec_hash(&self) -> String {
        let mut hash = Fnv::default();
        hash.field(self.image.as_bytes());
        for list in [&self.command, &self.args] {
            match list {
                None => hash.field(b"-"),
                Some(words) => {
                    hash.field(b"+");
                    for word in words {
                        hash.field(word.as_bytes());
                    }
                }
            }
        }
        for (key, value) in &self.env {
            hash.field(key.as_bytes());
            hash.field(value.as_bytes());
        }
        for limit in [self.limits.cpu_millis, self.limits.memory_bytes] {
            hash.field(limit.map(|n| n.to_string()).unwrap_or_default().as_bytes());
        }
        format!("{:016x}", hash.0)
    }
}

fn probe_from_api(
    kind: ProbeKind,
    probe: &api::Probe,
    container: &api::Container,
) -> Result<ProbeSpec, String> {
    let port = |port: &IntOrString| -> Result<u16, String> {
        let number = match port {
            IntOrString::Int(number) => *number,
            IntOrString::String(name) => container
                .ports
                .iter()
                .find(|port| &port.name == name)
                .map(|port| port.container_port)
                .ok_or_else(|| format!("no container port is named {name:?}"))?,
        };
        u16::try_from(number)
            .ok()
            .filter(|number| *number > 0)
            .ok_or_else(|| format!("port {number} is not in 1-65535"))
    };
    let action = match (&probe.http_get, &probe.tcp_socket) {
        (Some(http), None) => ProbeAction::HttpGet {
            port: port(&http.port)?,
            path: http.path.clone(),
        },
        (None, Some(tcp)) => ProbeAction::TcpSocket {
            port: port(&tcp.port)?,
        },
        _ => return Err("needs exactly one of httpGet or tcpSocket".to_owned()),
    };
    let mut spec = ProbeSpec::new(kind, action);
    let seconds = |field: &str, value: i32, minimum: i32| {
        if value < minimum {
            Err(format!("{field} must be at least {minimum}"))
        } else {
            Ok(Duration::from_secs(u64::from(value.unsigned_abs())))
        }
    };
    spec.initial_delay = seconds("initialDelaySeconds", probe.initial_delay_seconds, 0)?;
    if let Some(period) = probe.period_seconds {
        spec.period = seconds("periodSeconds", period, 1)?;
    }
    if let Some(timeout) = probe.timeout_seconds {
        spec.timeout = seconds("timeoutSeconds", timeout, 1)?;
    }
    let threshold = |field: &str, value: i32| {
        u32::try_from(value)
            .ok()
            .filter(|value| *value >= 1)
            .ok_or_else(|| format!("{field} must be at least 1"))
    };
    if let Some(failures) = probe.failure_threshold {
        spec.failure_threshold = threshold("failureThreshold", failures)?;
    }
    if let Some(successes) = probe.success_threshold {
        spec.success_threshold = threshold("successThreshold", successes)?;
        // As in Kubernetes: one success is all a liveness or startup probe can need.
        if kind != ProbeKind::Readiness && spec.success_threshold != 1 {
            return Err("successThreshold must be 1 for liveness and startup probes".to_owned());
        }
    }
    Ok(spec)
}

/// 64-bit FNV-1a; each field ends with a 0xff byte (never in UTF-8) so fields can't run
/// into each other.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn field(&mut self, bytes: &[u8]) {
        for byte in bytes.iter().chain(&[0xff]) {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_pod() -> api::Pod {
        let manifest = serde_json::json!({
            "metadata": {"namespace": "default", "name": "web-0", "uid": "u-1"},
            "spec": {
                "restartPolicy": "OnFailure",
                "terminationGracePeriodSeconds": 3,
                "containers": [{
                    "name": "echo",
                    "image": "berth/echo:v1",
                    "args": ["--port", "8080"],
                    "env": [{"name": "POD_NAME", "value": "web-0"}],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2},
                    "livenessProbe": {"tcpSocket": {"port": 8080}, "failureThreshold": 5}
                }]
            }
        });
        serde_json::from_value(manifest).expect("a pod")
    }

    #[test]
    fn a_deleted_pod_is_terminating_with_its_deletion_grace_and_hooks() {
        let mut pod = api_pod();
        assert!(!PodDesired::from_api(&pod).expect("convertible").terminating);
        pod.metadata.deletion_timestamp = "2026-01-01T00:00:10Z".to_owned();
        pod.metadata.deletion_grace_period_seconds = Some(10);
        pod.spec.containers[0].lifecycle = Some(api::Lifecycle {
            pre_stop: Some(api::LifecycleHandler {
                sleep: Some(api::SleepAction { seconds: 2 }),
                ..api::LifecycleHandler::default()
            }),
        });
        let desired = PodDesired::from_api(&pod).expect("convertible");
        assert!(desired.terminating);
        assert_eq!(desired.termination_grace, Duration::from_secs(10));
        assert_eq!(
            desired.containers[0].pre_stop,
            Some(PreStop::Sleep(Duration::from_secs(2)))
        );
        // The hook is no part of what the container runs: changing it restarts nothing.
        let mut without = desired.containers[0].clone();
        without.pre_stop = None;
        assert_eq!(without.spec_hash(), desired.containers[0].spec_hash());
    }

    #[test]
    fn converts_an_api_pod() {
        let pod = PodDesired::from_api(&api_pod()).expect("convertible");
        assert_eq!(pod.key(), "default/web-0");
        assert_eq!(pod.restart_policy, RestartPolicy::OnFailure);
        assert_eq!(pod.termination_grace, Duration::from_secs(3));
        let container = &pod.containers[0];
        assert_eq!(container.command, None);
        assert_eq!(container.args.as_deref().map(<[String]>::len), Some(2));
        assert_eq!(container.limits.cpu_millis, Some(250));
        assert_eq!(container.limits.memory_bytes, Some(64 << 20));
        let readiness = container
            .probes
            .readiness
            .as_ref()
            .expect("a readiness probe");
        assert_eq!(
            readiness.action,
            ProbeAction::HttpGet {
                port: 8080,
                path: "/readyz".to_owned()
            }
        );
        assert_eq!(readiness.period, Duration::from_secs(2));
        assert_eq!(readiness.failure_threshold, 1, "the default");
        let liveness = container
            .probes
            .liveness
            .as_ref()
            .expect("a liveness probe");
        assert_eq!(liveness.failure_threshold, 5);
        assert_eq!(liveness.timeout, Duration::from_secs(1));
    }

    #[test]
    fn refuses_what_the_agent_cannot_run() {
        let mut pod = api_pod();
        pod.metadata.uid.clear();
        assert!(PodDesired::from_api(&pod).is_err());
        let mut pod = api_pod();
        pod.spec.containers[0]
            .liveness_probe
            .as_mut()
            .expect("a probe")
            .success_threshold = Some(2);
        let error = PodDesired::from_api(&pod).expect_err("liveness needs one success");
        assert!(error.field.ends_with("livenessProbe"), "{error}");
    }

    #[test]
    fn spec_hash_follows_what_runs_not_probes() {
        let container = PodDesired::from_api(&api_pod())
            .expect("convertible")
            .containers[0]
            .clone();
        let mut probes_changed = container.clone();
        probes_changed.probes = ContainerProbes::default();
        assert_eq!(container.spec_hash(), probes_changed.spec_hash());
        let mut image_changed = container.clone();
        image_changed.image = "berth/echo:v2".to_owned();
        assert_ne!(container.spec_hash(), image_changed.spec_hash());
        let mut moved = container.clone();
        moved.args = Some(vec!["--port8080".to_owned()]);
        assert_ne!(container.spec_hash(), moved.spec_hash());
        assert_eq!(container.spec_hash().len(), 16);
    }

    #[test]
    fn restart_policies() {
        assert!(RestartPolicy::Always.restarts(Some(0), false));
        assert!(!RestartPolicy::OnFailure.restarts(Some(0), false));
        assert!(RestartPolicy::OnFailure.restarts(Some(0), true));
        assert!(RestartPolicy::OnFailure.restarts(Some(137), false));
        assert!(RestartPolicy::OnFailure.restarts(None, false));
        assert!(!RestartPolicy::Never.restarts(Some(1), true));
    }
}
