//! Container runtime: the agent runs each pod's containers through the Docker Engine.
//!
//! Containers start with network mode "none"; `crate::podnet` wires their network the way
//! a CNI plugin does. Every container carries labels naming its pod and node, so an agent
//! that restarts finds its containers again with [`DockerRuntime::list_by_labels`], and
//! agents of several test nodes can share one engine without touching each other's.

mod docker;

use std::collections::BTreeMap;

pub use docker::DockerRuntime;

/// Labels the agent puts on every container it creates.
pub mod labels {
    pub const POD_NAMESPACE: &str = "berth.pod.namespace";
    pub const POD_NAME: &str = "berth.pod.name";
    pub const POD_UID: &str = "berth.pod.uid";
    pub const CONTAINER_NAME: &str = "berth.container.name";
    pub const NODE: &str = "berth.node";
    /// On a pod's pause container: the pod's IP, so an agent that restarts gets its
    /// address book (IPAM) back from what runs.
    pub const POD_IP: &str = "berth.pod.ip";
    /// On app containers: how many times the container was restarted before this one
    /// was created, so the restart count survives an agent restart.
    pub const ATTEMPT: &str = "berth.container.attempt";
    /// On app containers: a hash of the container's spec, to notice a changed spec.
    pub const SPEC_HASH: &str = "berth.container.spec-hash";
}

/// Which network namespace a container gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// A namespace of its own with only loopback: `crate::podnet` wires it.
    #[default]
    None,
    /// The namespace of another container (a pod's pause container), so the app
    /// container can restart without its pod losing the IP and veth.
    Container(String),
}

/// What a command run in a container with [`DockerRuntime::exec`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i64,
    /// Standard output and error, interleaved, lossily decoded and cut short.
    pub output: String,
}

/// What a command run with [`DockerRuntime::exec_captured`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecCapture {
    pub exit_code: i64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Both streams in the order the engine sent them.
    pub interleaved: Vec<u8>,
    /// Output beyond the limit was dropped.
    pub truncated: bool,
}

impl ExecCapture {
    /// Keeps what fits of one chunk of output.
    fn push(&mut self, chunk: SessionChunk, max_bytes: usize) {
        let (is_stderr, bytes) = match chunk {
            SessionChunk::Stdout(bytes) => (false, bytes),
            SessionChunk::Stderr(bytes) => (true, bytes),
        };
        let room = max_bytes.saturating_sub(self.interleaved.len());
        let kept = &bytes[..bytes.len().min(room)];
        self.truncated |= kept.len() < bytes.len();
        self.interleaved.extend_from_slice(kept);
        if is_stderr {
            self.stderr.extend_from_slice(kept);
        } else {
            self.stdout.extend_from_slice(kept);
        }
    }
}

/// Which standard streams a session ([`DockerRuntime::exec_session`],
/// [`DockerRuntime::attach`]) connects, and whether through a terminal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStreams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Output of a session; with a terminal, everything is standard output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChunk {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// A live session with a container's standard streams. The output ends when the
/// process does (exec) or when the container stops or detaches us (attach); dropping
/// `input` or shutting it down is the process's end of file on standard input.
pub struct Session {
    pub output: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<SessionChunk, RuntimeError>> + Send>,
    >,
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    /// The exec's id (its terminal size and exit code are asked by it); None for an
    /// attach.
    pub exec_id: Option<String>,
}

/// Which part of a container's output [`DockerRuntime::logs`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    /// Only the last lines; None: all.
    pub tail_lines: Option<u64>,
    /// Prefix each line with the engine's RFC 3339 timestamp.
    pub timestamps: bool,
}

/// Credentials for one registry, as the engine takes them for a pull. `Debug` shows the
/// registry and user only: these come from Secrets and must not reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    /// The registry's host (and port), as the image names it.
    pub server: String,
    pub username: String,
    pub password: String,
    /// A token the registry gave in place of a password (`identitytoken`).
    pub identity_token: Option<String>,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("server", &self.server)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Docker Hub, where an image whose name has no registry host comes from.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// The registry host an image reference names (`registry.example:5000/app:v1` →
/// `registry.example:5000`), Docker Hub's for names without one (`nginx`, `library/nginx`),
/// by the engine's rule: the first part is a host when it has a `.` or `:` or is
/// `localhost`.
pub fn registry_host(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => DEFAULT_REGISTRY,
    }
}

/// Whether the reference names a tag or digest; without one the engine would pull
/// every tag, and Kubernetes means `:latest`.
pub fn image_tag(image: &str) -> Option<&str> {
    if let Some((_, digest)) = image.split_once('@') {
        return Some(digest);
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split_once(':').map(|(_, tag)| tag)
}

/// The engine's usual socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// What to run: one container of one pod on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub container_name: String,
    pub node: String,
    pub image: String,
    /// Replaces the image's entrypoint when set (a Kubernetes container's `command`).
    pub command: Option<Vec<String>>,
    /// Replaces the image's CMD when set (a Kubernetes container's `args`).
    pub args: Option<Vec<String>>,
    /// Replaces the image's working directory when set.
    pub working_dir: Option<String>,
    /// The pod's volumes this container mounts.
    pub mounts: Vec<Mount>,
    /// Environment variables in the order given.
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    pub network: NetworkMode,
    /// Labels besides the identifying ones (which win on a clash).
    pub extra_labels: BTreeMap<String, String>,
    /// The container's resolv.conf; None keeps the engine's default. Containers that join
    /// another's network (app containers in a pod) share that one's resolv.conf.
    pub dns: Option<DnsSettings>,
    pub confinement: Confinement,
    /// The host name of a container with a network of its own (the pod's pause
    /// container); the pod's name when empty.
    pub hostname: String,
    /// Its domain, making `hostname -f` `<hostname>.<domainname>`; none when empty.
    pub domainname: String,
}

/// What the engine confines a container to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confinement {
    /// `uid` or `uid:gid`; None runs as the image's user.
    pub user: Option<String>,
    pub read_only_root: bool,
    pub no_new_privileges: bool,
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// None leaves the engine's default (no limit).
    pub pids_limit: Option<i64>,
    /// The json-file log driver's rotation: (bytes per file, files kept); None leaves the
    /// engine's logging as configured.
    pub log_rotation: Option<(u64, u32)>,
}

impl Confinement {
    /// The engine's settings for `security`; NET_RAW is dropped unless the container is
    /// privileged or adds it (Kubernetes' restricted profile drops it; raw sockets let a
    /// pod forge packets on its network).
    pub fn of(security: &berth_api::podsecurity::Effective) -> Self {
        let user = security.run_as_user.map(|uid| match security.run_as_group {
            Some(gid) => format!("{uid}:{gid}"),
            None => uid.to_string(),
        });
        let mut cap_drop = security.drop.clone();
        let keeps_raw = security.privileged
            || security.add.iter().any(|c| c == "NET_RAW")
            || cap_drop.iter().any(|c| c == "ALL" || c == "NET_RAW");
        if !keeps_raw {
            cap_drop.push("NET_RAW".to_owned());
        }
        Confinement {
            user,
            read_only_root: security.read_only_root_filesystem,
            no_new_privileges: !security.allow_privilege_escalation,
            privileged: security.privileged,
            cap_add: security.add.clone(),
            cap_drop,
            pids_limit: None,
            log_rotation: None,
        }
    }
}

/// A volume mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: MountSource,
    /// Absolute, inside the container.
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A directory or file of the node, bind-mounted.
    Host(std::path::PathBuf),
    /// A tmpfs the engine keeps as a named volume, so a pod's containers share it: the
    /// engine mounts it in its own mount namespace, wherever the agent runs. Created
    /// with the first container that mounts it, removed with the pod
    /// ([`DockerRuntime::remove_volumes`]).
    Tmpfs {
        name: String,
        size_bytes: Option<u64>,
        /// A path inside it to mount instead of its root.
        sub_path: Option<String>,
        /// Identify the pod, for removal.
        labels: BTreeMap<String, String>,
    },
}

/// What goes into a container's /etc/resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsSettings {
    pub servers: Vec<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// Resource limits; None leaves the resource unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Thousandths of a CPU (Kubernetes' `500m` is 500).
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
}

impl ContainerSpec {
    /// The labels that identify this container's pod, container and node.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.extra_labels.clone();
        labels.extend(self.identity_labels());
        labels
    }

    fn identity_labels(&self) -> BTreeMap<String, String> {
        [
            (labels::POD_NAMESPACE, &self.pod_namespace),
            (labels::POD_NAME, &self.pod_name),
            (labels::POD_UID, &self.pod_uid),
            (labels::CONTAINER_NAME, &self.container_name),
            (labels::NODE, &self.node),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.clone()))
        .collect()
    }

    /// The Docker container name: readable in `docker ps`, and unique per node, pod
    /// (uid included, so a recreated pod of the same name doesn't collide), container
    /// and attempt (the previous attempt is kept for its logs while the next one runs).
    pub fn docker_name(&self) -> String {
        let uid: String = self
            .pod_uid
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(8)
            .collect();
        let mut raw = format!(
            "berth_{}_{}_{}_{}_{uid}",
            self.node, self.pod_namespace, self.pod_name, self.container_name
        );
        if let Some(attempt) = self.extra_labels.get(labels::ATTEMPT) {
            raw.push('_');
            raw.push_str(attempt);
        }
        // Docker accepts [a-zA-Z0-9_.-] only; names from the API are DNS labels already,
        // this keeps anything else from turning into a confusing engine error.
        raw.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    }

    fn validate(&self) -> Result<(), RuntimeError> {
        let required = [
            ("image", &self.image),
            ("pod namespace", &self.pod_namespace),
            ("pod name", &self.pod_name),
            ("pod uid", &self.pod_uid),
            ("container name", &self.container_name),
            ("node", &self.node),
        ];
        for (what, value) in required {
            if value.is_empty() {
                return Err(RuntimeError::InvalidSpec(format!("{what} is empty")));
            }
        }
        if let Some((key, _)) = self
            .env
            .iter()
            .find(|(key, _)| key.is_empty() || key.contains('='))
        {
            return Err(RuntimeError::InvalidSpec(format!(
                "environment variable name {key:?} is empty or contains '='"
            )));
        }
        if self.network == NetworkMode::Container(String::new()) {
            return Err(RuntimeError::InvalidSpec(
                "network mode container: names no container".to_owned(),
            ));
        }
        if self.limits.cpu_millis == Some(0) || self.limits.memory_bytes == Some(0) {
            return Err(RuntimeError::InvalidSpec(
                "a limit of 0 would never let the container run; leave it unset for no limit"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

/// A container's state as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub id: String,
    pub name: String,
    pub image: String,
    pub running: bool,
    /// The container's init process on the host; None when it isn't running.
    pub pid: Option<u32>,
    /// Set once the container has exited.
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub restart_count: u64,
    /// RFC 3339, as the engine reports it; None before the first start.
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `KEY=value` entries: the image's environment merged with the spec's.
    pub env: Vec<String>,
    pub limits: Limits,
}

/// Cumulative counters of a running container, from [`DockerRuntime::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerStats {
    /// CPU time the container used since it started.
    pub cpu_ns: u64,
    /// CPU time of the whole machine (all CPUs) since boot, as the engine reads it.
    pub system_cpu_ns: u64,
    pub online_cpus: u32,
    /// Memory charged to the container, page cache included.
    pub memory_bytes: u64,
    /// Page cache the kernel can drop at once.
    pub inactive_file_bytes: u64,
}

/// One entry of [`DockerRuntime::list_by_labels`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSummary {
    pub id: String,
    pub name: String,
    pub image: String,
    /// The engine's word: created, running, exited, ...
    pub state: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "cannot reach the Docker engine at {socket}: {source} (is dockerd running? `cargo xtask setup` starts it)"
    )]
    Connect {
        socket: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "image {image} is not on this node (Berth's own images are built with `cargo xtask images`)"
    )]
    ImageNotFound { image: String },
    /// What the engine said, which carries the registry's own message.
    #[error("failed to pull image {image:?}: {message}")]
    Pull { image: String, message: String },
    #[error("no container {container}")]
    ContainerNotFound { container: String },
    #[error("a container named {name} already exists")]
    AlreadyExists { name: String },
    #[error("invalid container spec: {0}")]
    InvalidSpec(String),
    #[error("Docker {operation} failed: {source}")]
    Docker {
        operation: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("{operation} did not finish within {timeout:?}")]
    Timeout {
        operation: &'static str,
        timeout: std::time::Duration,
    },
    #[error("Docker answered {operation} without {missing}")]
    Incomplete {
        operation: &'static str,
        missing: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            pod_namespace: "default".to_owned(),
            pod_name: "web-0".to_owned(),
            pod_uid: "0f8e2a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b".to_owned(),
            container_name: "echo".to_owned(),
            node: "node-1".to_owned(),
            image: "berth/echo:v1".to_owned(),
            ..ContainerSpec::default()
        }
    }

    #[test]
    fn docker_names_are_readable_and_valid() {
        assert_eq!(
            spec().docker_name(),
            "berth_node-1_default_web-0_echo_0f8e2a4c"
        );
        let odd = ContainerSpec {
            pod_name: "we b/0".to_owned(),
            ..spec()
        };
        assert_eq!(
            odd.docker_name(),
            "berth_node-1_default_we-b-0_echo_0f8e2a4c"
        );
        let restarted = ContainerSpec {
            extra_labels: BTreeMap::from([(labels::ATTEMPT.to_owned(), "3".to_owned())]),
            ..spec()
        };
        assert_eq!(
            restarted.docker_name(),
            "berth_node-1_default_web-0_echo_0f8e2a4c_3"
        );
    }

    #[test]
    fn image_references_name_their_registry_and_tag() {
        assert_eq!(registry_host("nginx"), "docker.io");
        assert_eq!(registry_host("library/nginx:1.27"), "docker.io");
        assert_eq!(registry_host("berth/echo:v1"), "docker.io");
        assert_eq!(
            registry_host("198.18.7.2:5000/berth/echo:v1"),
            "198.18.7.2:5000"
        );
        assert_eq!(registry_host("registry.example/app"), "registry.example");
        assert_eq!(registry_host("localhost/app:v1"), "localhost");
        assert_eq!(image_tag("nginx"), None);
        assert_eq!(image_tag("198.18.7.2:5000/berth/echo"), None);
        assert_eq!(image_tag("198.18.7.2:5000/berth/echo:v1"), Some("v1"));
        assert_eq!(image_tag("app@sha256:abc"), Some("sha256:abc"));
    }

    #[test]
    fn credentials_never_show_their_password() {
        let credentials = RegistryCredentials {
            server: "r.example".to_owned(),
            username: "puller".to_owned(),
            password: "hunter2".to_owned(),
            identity_token: Some("tok3n".to_owned()),
        };
        let shown = format!("{credentials:?}");
        assert!(
            shown.contains("puller") && shown.contains("r.example"),
            "{shown}"
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok3n"),
            "{shown}"
        );
    }

    #[test]
    fn labels_name_pod_container_and_node() {
        let labels = spec().labels();
        assert_eq!(labels[labels::POD_NAME], "web-0");
        assert_eq!(
            labels[labels::POD_UID],
            "0f8e2a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b"
        );
        assert_eq!(labels[labels::NODE], "node-1");
        assert_eq!(labels.len(), 5);
    }

    #[test]
    fn validation_catches_what_the_engine_would_reject_obscurely() {
        assert!(spec().validate().is_ok());
        let no_image = ContainerSpec {
            image: String::new(),
            ..spec()
        };
        assert!(matches!(
            no_image.validate(),
            Err(RuntimeError::InvalidSpec(_))
        ));
        let bad_env = ContainerSpec {
            env: vec![("A=B".to_owned(), "c".to_owned())],
            ..spec()
        };
        assert!(bad_env.validate().is_err());
        let zero_cpu = ContainerSpec {
            limits: Limits {
                cpu_millis: Some(0),
                memory_bytes: None,
            },
            ..spec()
        };
        assert!(zero_cpu.validate().is_err());
    }
}
