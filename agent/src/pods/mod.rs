//! The pod manager: runs this node's pods through the Docker Engine.
//!
//! [`PodManager::reconcile`] is a function of the desired pods and what the engine
//! reports (kube-rs style): it may be called any number of times, and each call moves
//! every pod one step closer to its spec, then says when to call again. It keeps no state
//! that can't be found again on the engine, so a new manager (an agent restart) adopts
//! the containers the last one left running instead of recreating them:
//!
//! - Each pod has a **pause container** that owns its network namespace (as in
//!   Kubernetes). The agent wires that namespace (`crate::podnet`: veth, IP from the
//!   node's pod CIDR, routes); app containers join it (network mode `container:<id>`), so
//!   an app container can restart without the pod losing its address or veth.
//! - Container labels carry what must survive a restart: pod identity and node
//!   (`crate::runtime::labels`), the pod IP on the pause container (IPAM is rebuilt from
//!   them), the restart count (attempt) and a spec hash on app containers.
//! - Restarts follow the pod's policy with exponential back-off (CrashLoopBackOff).
//!   A restart creates a fresh container (Kubernetes does the same), numbered by attempt.
//! - Probes run in a worker task per container (`crate::probes`); their result changes
//!   come out of [`PodManager::new`]'s event channel at once, ahead of any status.
//!
//! [`PodManager::run`] drives it: it reconciles whenever the desired pods change, a probe
//! result changes, a back-off ends, or at least every resync period, and publishes pod
//! reports on a watch channel. It follows the engine's `die` events for the node's
//! containers, so a crash is handled at once. It reconciles against the last desired pods
//! it was given, so while the control plane is unreachable crashed containers keep being
//! restarted.

mod backoff;
pub mod configs;
mod env;
pub mod images;
mod spec;
mod status;
mod volumes;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    sync::{Notify, mpsc, watch},
    task::AbortHandle,
};

pub use self::{
    backoff::BackoffConfig,
    spec::{
        ContainerDesired, DEFAULT_TERMINATION_GRACE, EnvFrom, EnvValue, MountDesired, PodDesired,
        PreStop, RestartPolicy, SpecError, VolumeDesired, VolumeSource,
    },
    status::{ContainerReport, ContainerState, PodPhase, PodReport, Terminated, reason},
};
use self::{
    configs::{ConfigKey, ConfigKind, Fetched, PodConfigs},
    images::{PullOutcome, PullPolicy, PullState, Pulls},
};
use crate::{
    ipam::{Cidr, Ipam, IpamError},
    net,
    podnet::{self, PodNetwork},
    probes::{self, ProbeEvent, ProbeKind, ProbeState, ProbeTarget},
    runtime::{
        Confinement, ContainerSpec, ContainerSummary, DnsSettings, DockerRuntime, Limits,
        NetworkMode, RegistryCredentials, RuntimeError, labels, registry_host,
    },
};

/// The container name of a pod's pause container. Not a DNS label (upper case), so no
/// app container of a valid pod can be called that.
pub const PAUSE_CONTAINER: &str = "POD";
/// The default pause image, built by `cargo xtask images`.
pub const DEFAULT_PAUSE_IMAGE: &str = berth_api::core::PAUSE_IMAGE;
/// How often the manager looks at the engine when nothing else wakes it: the bound on
/// noticing a crashed container.
pub const DEFAULT_RESYNC_PERIOD: Duration = Duration::from_secs(1);
/// The pause container only sleeps; it gets no grace.
const PAUSE_STOP_GRACE: Duration = Duration::ZERO;
/// What a container still gets after a preStop hook that used up the grace (the kubelet's
/// minimum).
const MIN_GRACE_AFTER_PRE_STOP: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct PodManagerConfig {
    /// The node's name: its containers carry it as a label, so agents of several (test)
    /// nodes can share one engine.
    pub node: String,
    pub pod_cidr: Cidr,
    /// The named network namespace the pods' host veths live in and probes connect
    /// from; None is the agent's own. Tests pass a node namespace of their own.
    pub host_netns: Option<String>,
    pub pause_image: String,
    /// The cluster DNS server (the node's) and domain for the pods' resolv.conf; None
    /// leaves the engine's default.
    pub dns: Option<(String, String)>,
    /// The MTU of the pods' interfaces; None leaves the kernel's.
    pub pod_mtu: Option<u32>,
    pub backoff: BackoffConfig,
    pub resync_period: Duration,
    /// The node's CPU and memory: what `limits.*` resource fields read for a container
    /// without limits.
    pub allocatable: Limits,
    /// Where pods' volumes live on the node (`<dir>/<pod uid>/<volume>`).
    pub volumes_dir: std::path::PathBuf,
    /// Where the volumes of PersistentVolumeClaims live (`<dir>/<volume>`): only paths
    /// directly under it are mounted.
    pub local_volume_dir: std::path::PathBuf,
    /// The most processes a container may have (the kubelet's `podPidsLimit`, per
    /// container here); None: no limit.
    pub pids_limit: Option<i64>,
    /// Each container's log rotation: (bytes per file, files kept), the kubelet's
    /// `containerLogMaxSize` and `containerLogMaxFiles`.
    pub log_rotation: Option<(u64, u32)>,
}

/// Default of [`PodManagerConfig::pids_limit`]: a fork bomb stops there, not at the node's.
pub const DEFAULT_PIDS_LIMIT: i64 = 4096;
/// Default of [`PodManagerConfig::log_rotation`]: the kubelet's 10 MiB and 5 files.
pub const DEFAULT_LOG_ROTATION: (u64, u32) = (10 << 20, 5);

impl PodManagerConfig {
    pub fn new(node: &str, pod_cidr: Cidr) -> Self {
        PodManagerConfig {
            node: node.to_owned(),
            pod_cidr,
            host_netns: None,
            pause_image: DEFAULT_PAUSE_IMAGE.to_owned(),
            dns: None,
            pod_mtu: None,
            backoff: BackoffConfig::default(),
            resync_period: DEFAULT_RESYNC_PERIOD,
            allocatable: Limits::default(),
            volumes_dir: std::env::temp_dir().join("berth-pods").join(node),
            local_volume_dir: std::env::temp_dir().join("berth-volumes"),
            pids_limit: Some(DEFAULT_PIDS_LIMIT),
            log_rotation: Some(DEFAULT_LOG_ROTATION),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("listing this node's containers: {0}")]
    List(#[source] RuntimeError),
    #[error("invalid pod manager configuration: {0}")]
    Config(#[source] IpamError),
}

/// Marks a container waiting with CreateContainerConfigError for `message` (tried again
/// on every pass, and at once when a missing object arrives); the action to report when
/// that is news.
fn waits_for_config(
    track: &mut ContainerTrack,
    next_attempt: Option<u32>,
    message: String,
) -> Option<ActionKind> {
    let waiting = (reason::CREATE_CONTAINER_CONFIG_ERROR.to_owned(), message);
    let news = (track.waiting.as_ref() != Some(&waiting)).then(|| ActionKind::ConfigError {
        message: waiting.1.clone(),
    });
    if let Some(attempt) = next_attempt {
        track.restart_count = attempt;
    }
    track.waiting = Some(waiting);
    news
}

/// Something the manager did or saw, for logs, events and the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// `namespace/name`.
    pub pod: String,
    pub uid: String,
    pub container: Option<String>,
    pub kind: ActionKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionKind {
    SandboxCreated {
        ip: Ipv4Addr,
    },
    SandboxAdopted {
        ip: Ipv4Addr,
    },
    /// The pause container is gone or stopped: the pod's containers and network are set
    /// up again.
    SandboxLost,
    SandboxFailed {
        message: String,
    },
    ContainerCreated {
        id: String,
        attempt: u32,
    },
    ContainerAdopted {
        id: String,
        attempt: u32,
    },
    ContainerExited {
        id: String,
        exit_code: Option<i64>,
        reason: String,
    },
    /// The container's spec changed: it was replaced.
    ContainerReplaced {
        id: String,
    },
    BackOff {
        delay: Duration,
    },
    ImageNotFound {
        image: String,
        message: String,
    },
    /// A pull of the image started (on a task of its own).
    Pulling {
        image: String,
    },
    /// The image is there: pulled in `took`, or None when it was present already.
    Pulled {
        image: String,
        took: Option<Duration>,
    },
    /// The pull failed (`ErrImagePull`); `message` is the engine's, with the registry's.
    PullFailed {
        image: String,
        message: String,
    },
    /// Waiting before pulling again (`ImagePullBackOff`).
    PullBackOff {
        image: String,
        delay: Duration,
    },
    /// `imagePullPolicy: Never` and the image is not on the node (`ErrImageNeverPull`).
    ImageNeverPull {
        image: String,
        message: String,
    },
    CreateFailed {
        message: String,
    },
    /// A ConfigMap, Secret or key the container needs is missing: it waits for it.
    ConfigError {
        message: String,
    },
    PodRemoved,
}

/// An event for the control plane, as the kubelet words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeEvent {
    /// `Normal` or `Warning`.
    pub type_: &'static str,
    pub reason: &'static str,
    pub message: String,
}

impl Action {
    /// The events Kubernetes records for this action (image pulls for now).
    pub fn kube_events(&self) -> Vec<KubeEvent> {
        let event = |type_, reason, message| KubeEvent {
            type_,
            reason,
            message,
        };
        let error = |reason: &str| event("Warning", "Failed", format!("Error: {reason}"));
        match &self.kind {
            ActionKind::Pulling { image } => {
                vec![event(
                    "Normal",
                    "Pulling",
                    format!("Pulling image {image:?}"),
                )]
            }
            ActionKind::Pulled {
                image,
                took: Some(took),
            } => vec![event(
                "Normal",
                "Pulled",
                format!(
                    "Successfully pulled image {image:?} in {:.3}s",
                    took.as_secs_f64()
                ),
            )],
            ActionKind::Pulled { image, took: None } => vec![event(
                "Normal",
                "Pulled",
                format!("Container image {image:?} already present on machine"),
            )],
            ActionKind::PullFailed { message, .. } => vec![
                event("Warning", "Failed", message.clone()),
                error(reason::ERR_IMAGE_PULL),
            ],
            ActionKind::PullBackOff { image, .. } => vec![
                event(
                    "Normal",
                    "BackOff",
                    format!("Back-off pulling image {image:?}"),
                ),
                error(reason::IMAGE_PULL_BACK_OFF),
            ],
            ActionKind::ImageNeverPull { message, .. } => vec![
                event("Warning", "ErrImageNeverPull", message.clone()),
                error(reason::ERR_IMAGE_NEVER_PULL),
            ],
            _ => Vec::new(),
        }
    }
}

/// What comes out of the manager's event channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodEvent {
    /// A probe result changed. A readiness failure is the signal to take the pod's
    /// backends out of the local datapath.
    Probe(ProbeEvent),
    Action(Action),
}

/// What one reconcile did, and when to call it again at the latest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled {
    pub actions: Vec<Action>,
    pub requeue_after: Duration,
}

pub struct PodManager {
    runtime: DockerRuntime,
    config: PodManagerConfig,
    ipam: Ipam,
    pods: BTreeMap<String, PodState>,
    events: mpsc::UnboundedSender<PodEvent>,
    wake: Arc<Notify>,
    configs: PodConfigs,
    pulls: Pulls,
}

struct PodState {
    desired: PodDesired,
    sandbox: Option<Sandbox>,
    containers: BTreeMap<String, ContainerTrack>,
    message: String,
    /// What each file volume holds now.
    written: BTreeMap<String, volumes::Payload>,
    /// Each claim volume's directory, once its claim is bound here.
    claim_dirs: BTreeMap<String, std::path::PathBuf>,
    /// Why the volumes could not be set up (a missing ConfigMap or Secret): no container
    /// is created until they are.
    volume_error: Option<String>,
}

struct Sandbox {
    pause_id: String,
    network: PodNetwork,
}

/// A pod on its way out, taken from the manager's book.
struct Removal {
    uid: String,
    /// What the pod was (the terminating one from the API first: it carries the grace
    /// of the deletion), if known; after an agent restart only the API knows it.
    spec: Option<PodDesired>,
    containers: Vec<ContainerSummary>,
    network: Option<PodNetwork>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SandboxOutcome {
    /// Running already (or adopted): the observed app containers are its own.
    Running,
    /// Set up in this pass: any app containers seen before were removed.
    New,
    /// None could be set up.
    Missing,
}

#[derive(Default)]
struct ContainerTrack {
    instance: Option<Instance>,
    restart_count: u32,
    /// Restarts in a row without the container staying up for `reset_after`.
    backoff_step: u32,
    /// In back-off until then.
    next_start: Option<Instant>,
    last_backoff: Duration,
    waiting: Option<(String, String)>,
    last_termination: Option<Terminated>,
    /// Image pulls that failed in a row: the pull back-off's step.
    pull_step: u32,
    /// When the last pull failed: the status says ErrImagePull for a resync period before
    /// it says ImagePullBackOff, so both are seen, as with the kubelet.
    pull_failed_at: Option<Instant>,
    /// The ended container (id) this one's next attempt (number) replaces, while that
    /// attempt waits for its image or config: the ended one stays for its logs and must
    /// not be taken for the current one.
    replacing: Option<(String, u32)>,
}

/// Whether a container's image is there to create it from.
enum ImageStep {
    Ready,
    Wait,
}

struct Instance {
    id: String,
    attempt: u32,
    spec_hash: String,
    /// When this manager first saw it running (created or adopted).
    since: Instant,
    probes: Arc<ProbeState>,
    worker: Option<AbortHandle>,
    /// Set once the container is seen not running.
    ended: Option<Terminated>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.abort();
        }
    }
}

impl Instance {
    fn stop_probing(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.abort();
        }
    }
}

fn is_running(container: &ContainerSummary) -> bool {
    matches!(container.state.as_str(), "running" | "paused")
}

fn label<'a>(container: &'a ContainerSummary, key: &str) -> Option<&'a str> {
    container.labels.get(key).map(String::as_str)
}

fn attempt_of(container: &ContainerSummary) -> u32 {
    label(container, labels::ATTEMPT)
        .and_then(|attempt| attempt.parse().ok())
        .unwrap_or(0)
}

impl PodManager {
    /// A manager for `config.node`, and the receiving end of its events. Nothing happens
    /// on the engine until the first [`PodManager::reconcile`], which also adopts what
    /// an earlier agent left running.
    pub fn new(
        runtime: DockerRuntime,
        config: PodManagerConfig,
    ) -> Result<(Self, mpsc::UnboundedReceiver<PodEvent>), PodError> {
        let ipam = Ipam::new(config.pod_cidr).map_err(PodError::Config)?;
        // Unbounded on purpose: the probes report from a synchronous callback that cannot
        // wait, and a readiness change dropped would leave the datapath sending traffic
        // to a pod that failed its probe. What is queued is bounded by the work that
        // made it (one event per pod action or probe transition), and the agent's main
        // loop drains it continually.
        let (events, receiver) = mpsc::unbounded_channel();
        Ok((
            PodManager {
                runtime,
                config,
                ipam,
                pods: BTreeMap::new(),
                events,
                wake: Arc::new(Notify::new()),
                configs: PodConfigs::default(),
                pulls: Pulls::default(),
            },
            receiver,
        ))
    }

    pub fn config(&self) -> &PodManagerConfig {
        &self.config
    }

    /// The ConfigMaps and Secrets the manager reads, for whoever keeps them current.
    pub fn configs(&self) -> PodConfigs {
        self.configs.clone()
    }

    /// Wakes [`PodManager::run`] for a pass (a ConfigMap or Secret changed).
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// The status of every pod the manager knows.
    pub fn reports(&self) -> Vec<PodReport> {
        self.pods.values().map(report).collect()
    }

    pub fn report(&self, uid: &str) -> Option<PodReport> {
        self.pods.get(uid).map(report)
    }

    /// Reconciles with the last desired pods until `shutdown` resolves, publishing pod
    /// reports after every pass; returns the manager (its containers keep running).
    pub async fn run(
        mut self,
        mut desired: watch::Receiver<Vec<PodDesired>>,
        reports: watch::Sender<Vec<PodReport>>,
        shutdown: impl Future<Output = ()>,
    ) -> Self {
        tokio::pin!(shutdown);
        let deaths = tokio::spawn(wake_on_deaths(
            self.runtime.clone(),
            self.config.node.clone(),
            Arc::clone(&self.wake),
            self.config.resync_period,
        ));
        // Stops the watcher however this future ends (returned or dropped).
        let _deaths = AbortOnDrop(deaths.abort_handle());
        let mut feeding = true;
        loop {
            let pods = desired.borrow_and_update().clone();
            let requeue_after = match self.reconcile(&pods).await {
                Ok(done) => done.requeue_after,
                Err(error) => {
                    tracing::warn!(%error, "reconciling pods");
                    self.config.resync_period
                }
            };
            reports.send_replace(self.reports());
            tokio::select! {
                biased;
                () = &mut shutdown => return self,
                changed = desired.changed(), if feeding => {
                    // Whoever fed the desired pods is gone: keep running the last ones.
                    feeding = changed.is_ok();
                }
                () = self.wake.notified() => {}
                () = tokio::time::sleep(requeue_after) => {}
            }
        }
    }

    /// Moves every pod a step towards `desired` (this node's pods) and removes the pods
    /// that are no longer in it. Problems with one pod show on its status and do not stop
    /// the others; only an engine that can't list containers fails the whole pass.
    pub async fn reconcile(&mut self, desired: &[PodDesired]) -> Result<Reconciled, PodError> {
        let observed = self
            .runtime
            .list_by_labels(&[(labels::NODE, &self.config.node)])
            .await
            .map_err(PodError::List)?;
        let mut by_uid: BTreeMap<String, Vec<ContainerSummary>> = BTreeMap::new();
        for container in observed {
            if let Some(uid) = label(&container, labels::POD_UID) {
                by_uid.entry(uid.to_owned()).or_default().push(container);
            }
        }
        let mut wanted: BTreeMap<&str, &PodDesired> = BTreeMap::new();
        // Deleted gracefully: stopped with their preStop hooks and grace, never started.
        let terminating: BTreeMap<&str, &PodDesired> = desired
            .iter()
            .filter(|pod| pod.terminating)
            .map(|pod| (pod.uid.as_str(), pod))
            .collect();
        for pod in desired.iter().filter(|pod| !pod.terminating) {
            if wanted.insert(&pod.uid, pod).is_some() {
                tracing::warn!(uid = %pod.uid, "pod uid given twice; using the last one");
            }
        }
        let mut actions = Vec::new();

        // Addresses of running sandboxes this manager doesn't know yet (after a restart)
        // go into the book before any new pod gets an address.
        for (uid, containers) in &by_uid {
            if self.pods.contains_key(uid) {
                continue;
            }
            let pause = containers.iter().find(|container| {
                label(container, labels::CONTAINER_NAME) == Some(PAUSE_CONTAINER)
                    && is_running(container)
            });
            let Some(ip) = pause.and_then(|pause| label(pause, labels::POD_IP)) else {
                continue;
            };
            match ip.parse::<Ipv4Addr>() {
                Ok(ip) => {
                    if let Err(error) = self.ipam.reserve(ip, uid) {
                        tracing::warn!(%uid, %error, "a running pod's address can't be kept; its sandbox will be set up again");
                    }
                }
                Err(_) => {
                    tracing::warn!(%uid, ip, "pause container has an unreadable pod IP label")
                }
            }
        }

        let unwanted: BTreeSet<String> = self
            .pods
            .keys()
            .chain(by_uid.keys())
            .filter(|uid| !wanted.contains_key(uid.as_str()))
            .cloned()
            .collect();
        // Together: one pod's preStop hook and grace must not hold up another's.
        let removals: Vec<Removal> = unwanted
            .into_iter()
            .map(|uid| {
                let containers = by_uid.remove(&uid).unwrap_or_default();
                // Dropping the state aborts the probe workers first: a container being
                // stopped must not be reported as failing its probes.
                let state = self.pods.remove(&uid);
                let spec = terminating
                    .get(uid.as_str())
                    .map(|pod| (*pod).clone())
                    .or_else(|| state.as_ref().map(|state| state.desired.clone()));
                let network = state.and_then(|state| state.sandbox.map(|sandbox| sandbox.network));
                Removal {
                    uid,
                    spec,
                    containers,
                    network,
                }
            })
            .collect();
        let removed =
            futures_util::future::join_all(removals.into_iter().map(|r| self.remove_pod(r))).await;
        for (uid, action) in removed {
            self.ipam.release(&uid);
            actions.push(action);
        }

        self.pulls.retain(|(uid, container)| {
            wanted.get(uid.as_str()).is_some_and(|pod| {
                pod.containers
                    .iter()
                    .any(|desired| &desired.name == container)
            })
        });
        for pod in wanted.values() {
            let containers = by_uid.remove(&pod.uid).unwrap_or_default();
            self.sync_pod(pod, containers, &mut actions).await;
        }

        for action in &actions {
            tracing::info!(pod = %action.pod, container = ?action.container, kind = ?action.kind, "pod action");
            // Nobody listening is fine: the agent may only want statuses.
            let _ = self.events.send(PodEvent::Action(action.clone()));
        }
        Ok(Reconciled {
            actions,
            requeue_after: self.requeue_after(),
        })
    }

    fn requeue_after(&self) -> Duration {
        let now = Instant::now();
        self.pods
            .values()
            .flat_map(|pod| pod.containers.values())
            .filter_map(|track| track.next_start)
            .map(|at| at.saturating_duration_since(now))
            .min()
            .map_or(self.config.resync_period, |wait| {
                wait.clamp(Duration::from_millis(10), self.config.resync_period)
            })
    }

    /// Stops and removes a pod that is no longer wanted: each running app container's
    /// preStop hook, then SIGTERM with what is left of the grace, then the network and the
    /// sandbox. Returns the uid and the action; the caller releases the address.
    async fn remove_pod(&self, removal: Removal) -> (String, Action) {
        let Removal {
            uid,
            spec,
            containers,
            network,
        } = removal;
        let pod = spec.as_ref().map(PodDesired::key).or_else(|| {
            containers.first().map(|container| {
                format!(
                    "{}/{}",
                    label(container, labels::POD_NAMESPACE).unwrap_or_default(),
                    label(container, labels::POD_NAME).unwrap_or_default()
                )
            })
        });
        let grace = spec
            .as_ref()
            .map_or(DEFAULT_TERMINATION_GRACE, |spec| spec.termination_grace);
        let (pauses, apps): (Vec<_>, Vec<_>) = containers.iter().partition(|container| {
            label(container, labels::CONTAINER_NAME) == Some(PAUSE_CONTAINER)
        });
        // App containers get their grace together, then the sandbox goes.
        let stops = apps.iter().map(|container| {
            let pre_stop = spec
                .as_ref()
                .and_then(|spec| {
                    spec.containers
                        .iter()
                        .find(|c| Some(c.name.as_str()) == label(container, labels::CONTAINER_NAME))
                })
                .and_then(|c| c.pre_stop.clone())
                .filter(|_| is_running(container) && !grace.is_zero());
            async move {
                let started = Instant::now();
                if let Some(hook) = pre_stop {
                    self.run_pre_stop(&container.id, &hook, grace).await;
                }
                // As the kubelet does: a hook that used up the grace still leaves the
                // container a moment to handle SIGTERM.
                let left = grace
                    .saturating_sub(started.elapsed())
                    .max(MIN_GRACE_AFTER_PRE_STOP.min(grace));
                self.stop_and_remove(&container.id, left).await
            }
        });
        futures_util::future::join_all(stops).await;
        self.teardown_network(&uid, network).await;
        for pause in pauses {
            self.stop_and_remove(&pause.id, PAUSE_STOP_GRACE).await;
        }
        volumes::remove(&self.config.volumes_dir, &uid, &self.runtime).await;
        let action = Action {
            pod: pod.unwrap_or_default(),
            uid: uid.clone(),
            container: None,
            kind: ActionKind::PodRemoved,
        };
        (uid, action)
    }

    /// Runs a preStop hook, bounded by the grace; a failing hook is logged and the
    /// container stopped all the same, as in Kubernetes.
    async fn run_pre_stop(&self, id: &str, hook: &PreStop, grace: Duration) {
        match hook {
            PreStop::Sleep(duration) => tokio::time::sleep((*duration).min(grace)).await,
            PreStop::Exec(command) => match self.runtime.exec(id, command, grace).await {
                Ok(output) if output.exit_code == 0 => {}
                Ok(output) => tracing::warn!(
                    container = %id,
                    exit_code = output.exit_code,
                    output = %output.output,
                    "preStop hook failed"
                ),
                Err(error) => tracing::warn!(container = %id, %error, "preStop hook failed"),
            },
        }
    }

    async fn stop_and_remove(&self, id: &str, grace: Duration) {
        if !grace.is_zero()
            && let Err(error) = self.runtime.stop(id, grace).await
            && !matches!(error, RuntimeError::ContainerNotFound { .. })
        {
            tracing::warn!(%error, container = %id, "stopping a container");
        }
        if let Err(error) = self.runtime.remove(id).await {
            tracing::warn!(%error, container = %id, "removing a container");
        }
    }

    async fn teardown_network(&self, uid: &str, network: Option<PodNetwork>) {
        let host_netns = self.config.host_netns.clone();
        let uid = uid.to_owned();
        // Netlink requests and namespace threads block; they stay off the async threads.
        let done = tokio::task::spawn_blocking(move || match network {
            Some(network) => network.teardown(),
            None => match podnet::host_veth_name(&uid) {
                Ok(veth) => podnet::teardown(host_netns.as_deref(), &veth),
                Err(error) => Err(error),
            },
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "tearing down a pod's network"),
            Err(error) => tracing::warn!(%error, "the network teardown task failed"),
        }
    }

    async fn sync_pod(
        &mut self,
        desired: &PodDesired,
        containers: Vec<ContainerSummary>,
        actions: &mut Vec<Action>,
    ) {
        let mut state = self.pods.remove(&desired.uid).unwrap_or_else(|| PodState {
            desired: desired.clone(),
            sandbox: None,
            containers: BTreeMap::new(),
            message: String::new(),
            written: BTreeMap::new(),
            claim_dirs: BTreeMap::new(),
            volume_error: None,
        });
        state.desired = desired.clone();
        let (pauses, mut apps): (Vec<_>, Vec<_>) = containers.into_iter().partition(|container| {
            label(container, labels::CONTAINER_NAME) == Some(PAUSE_CONTAINER)
        });
        let sandbox = self
            .ensure_sandbox(&mut state, &pauses, &apps, actions)
            .await;
        if sandbox != SandboxOutcome::Missing {
            if sandbox == SandboxOutcome::New {
                // The old sandbox's app containers were removed with it.
                apps.clear();
            }
            state.message.clear();
            self.sync_volumes(&mut state);
            let wanted: BTreeSet<&str> = desired
                .containers
                .iter()
                .map(|container| container.name.as_str())
                .collect();
            for container in &desired.containers {
                let mine: Vec<&ContainerSummary> = apps
                    .iter()
                    .filter(|app| label(app, labels::CONTAINER_NAME) == Some(&container.name))
                    .collect();
                self.sync_container(&mut state, container, &mine, actions)
                    .await;
            }
            // Containers the spec no longer has.
            for app in &apps {
                let name = label(app, labels::CONTAINER_NAME).unwrap_or_default();
                if !wanted.contains(name) {
                    self.stop_and_remove(&app.id, desired.termination_grace)
                        .await;
                }
            }
            state
                .containers
                .retain(|name, _| wanted.contains(name.as_str()));
        }
        self.pods.insert(desired.uid.clone(), state);
    }

    /// Writes the pod's volumes as they should be now (files following their ConfigMaps
    /// and Secrets); what fails is kept as the reason its containers wait.
    fn sync_volumes(&self, state: &mut PodState) {
        let Some(sandbox) = &state.sandbox else {
            return;
        };
        if state.desired.volumes.is_empty() {
            state.volume_error = None;
            return;
        }
        let Some(pod_dir) = volumes::pod_dir(&self.config.volumes_dir, &state.desired.uid) else {
            state.volume_error = Some(format!(
                "pod uid {:?} is not a path name",
                state.desired.uid
            ));
            return;
        };
        let cx = env::EnvContext {
            pod: &state.desired,
            pod_ip: sandbox.network.pod_ip,
            node: &self.config.node,
            allocatable: self.config.allocatable,
            configs: &self.configs,
        };
        let mut placed = volumes::Placed {
            written: &mut state.written,
            claim_dirs: &mut state.claim_dirs,
            local_volume_dir: &self.config.local_volume_dir,
        };
        let result = volumes::sync(&pod_dir, &state.desired, &cx, &mut placed).and_then(|()| {
            volumes::make_sub_paths(&pod_dir, &state.desired)
                .map_err(|e| format!("making a subPath: {e}"))
        });
        state.volume_error = result.err();
    }

    /// Makes sure the pod has a running pause container with its network wired;
    /// adopts one that runs already. When there is none, the reason is on the pod.
    async fn ensure_sandbox(
        &mut self,
        state: &mut PodState,
        pauses: &[ContainerSummary],
        apps: &[ContainerSummary],
        actions: &mut Vec<Action>,
    ) -> SandboxOutcome {
        let pod = state.desired.key();
        let uid = state.desired.uid.clone();
        let running_pause = pauses.iter().find(|pause| is_running(pause));
        if let (Some(sandbox), Some(pause)) = (&state.sandbox, running_pause)
            && sandbox.pause_id == pause.id
        {
            return SandboxOutcome::Running;
        }
        if state.sandbox.is_none()
            && let Some(pause) = running_pause
        {
            match self.adopt_sandbox(&uid, pause).await {
                Ok(sandbox) => {
                    actions.push(Action {
                        pod: pod.clone(),
                        uid: uid.clone(),
                        container: None,
                        kind: ActionKind::SandboxAdopted {
                            ip: sandbox.network.pod_ip,
                        },
                    });
                    state.sandbox = Some(sandbox);
                    return SandboxOutcome::Running;
                }
                Err(message) => {
                    tracing::warn!(%pod, %message, "can't adopt the pod's sandbox; setting it up again");
                }
            }
        }

        // No usable sandbox. Whatever is left of an old one goes, app containers too:
        // they live in its network namespace.
        if state.sandbox.is_some() || !pauses.is_empty() || !apps.is_empty() {
            if state.sandbox.is_some() {
                actions.push(Action {
                    pod: pod.clone(),
                    uid: uid.clone(),
                    container: None,
                    kind: ActionKind::SandboxLost,
                });
            }
            for track in state.containers.values_mut() {
                if track.instance.take().is_some() {
                    // The new sandbox's containers are restarts of these.
                    track.restart_count = track.restart_count.saturating_add(1);
                }
            }
            for app in apps {
                self.stop_and_remove(&app.id, Duration::ZERO).await;
            }
            let network = state.sandbox.take().map(|sandbox| sandbox.network);
            self.teardown_network(&uid, network).await;
            for pause in pauses {
                self.stop_and_remove(&pause.id, PAUSE_STOP_GRACE).await;
            }
        }
        match self.create_sandbox(&state.desired).await {
            Ok(sandbox) => {
                actions.push(Action {
                    pod,
                    uid,
                    container: None,
                    kind: ActionKind::SandboxCreated {
                        ip: sandbox.network.pod_ip,
                    },
                });
                state.sandbox = Some(sandbox);
                SandboxOutcome::New
            }
            Err(message) => {
                state.message = format!("{}: {message}", reason::SANDBOX_ERROR);
                actions.push(Action {
                    pod,
                    uid,
                    container: None,
                    kind: ActionKind::SandboxFailed { message },
                });
                SandboxOutcome::Missing
            }
        }
    }

    async fn adopt_sandbox(
        &mut self,
        uid: &str,
        pause: &ContainerSummary,
    ) -> Result<Sandbox, String> {
        let ip: Ipv4Addr = label(pause, labels::POD_IP)
            .and_then(|ip| ip.parse().ok())
            .ok_or("the pause container has no pod IP label")?;
        if self.ipam.owner(ip) != Some(uid) {
            return Err(format!("{ip} is not this pod's in the address book"));
        }
        let host_veth = podnet::host_veth_name(uid).map_err(|error| error.to_string())?;
        let host_netns = self.config.host_netns.clone();
        let wired = {
            let (host_netns, host_veth) = (host_netns.clone(), host_veth.clone());
            tokio::task::spawn_blocking(move || {
                net::link_exists(host_netns.as_deref(), &host_veth)
                    && net::netns_exists(&podnet::pod_netns_name(&host_veth))
            })
            .await
            .unwrap_or(false)
        };
        let network = if wired {
            PodNetwork {
                pod_ip: ip,
                host_veth: host_veth.clone(),
                host_netns,
                pod_netns: podnet::pod_netns_name(&host_veth),
            }
        } else {
            // The pause container survived but its wiring didn't (a node reboot of the
            // network, a crash mid-setup): wire it again, same address.
            self.wire(&pause.id, uid, ip).await?
        };
        Ok(Sandbox {
            pause_id: pause.id.clone(),
            network,
        })
    }

    async fn create_sandbox(&mut self, pod: &PodDesired) -> Result<Sandbox, String> {
        self.runtime
            .ensure_image(&self.config.pause_image)
            .await
            .map_err(|error| error.to_string())?;
        let ip = self
            .ipam
            .allocate(&pod.uid)
            .map_err(|error| error.to_string())?;
        let spec = ContainerSpec {
            pod_namespace: pod.namespace.clone(),
            pod_name: pod.name.clone(),
            pod_uid: pod.uid.clone(),
            container_name: PAUSE_CONTAINER.to_owned(),
            node: self.config.node.clone(),
            image: self.config.pause_image.clone(),
            extra_labels: BTreeMap::from([(labels::POD_IP.to_owned(), ip.to_string())]),
            // Kubernetes' pod resolv.conf: short names resolve in the pod's namespace.
            dns: self
                .config
                .dns
                .as_ref()
                .map(|(server, domain)| DnsSettings {
                    servers: vec![server.clone()],
                    search: vec![
                        format!("{}.svc.{domain}", pod.namespace),
                        format!("svc.{domain}"),
                        domain.clone(),
                    ],
                    options: vec!["ndots:5".to_owned()],
                }),
            hostname: pod.hostname.clone(),
            domainname: match &self.config.dns {
                Some((_, domain)) if !pod.subdomain.is_empty() => {
                    format!("{}.{domain}", pod.subdomain)
                }
                _ => String::new(),
            },
            ..ContainerSpec::default()
        };
        let pause_id = match self.runtime.create_and_start(&spec).await {
            Ok(id) => id,
            // A pause container of this pod that the listing didn't show as ours
            // (another node label, half removed): its name is in the way.
            Err(RuntimeError::AlreadyExists { name }) => {
                self.stop_and_remove(&name, PAUSE_STOP_GRACE).await;
                self.runtime
                    .create_and_start(&spec)
                    .await
                    .map_err(|error| error.to_string())?
            }
            Err(error) => return Err(error.to_string()),
        };
        match self.wire(&pause_id, &pod.uid, ip).await {
            Ok(network) => Ok(Sandbox { pause_id, network }),
            Err(message) => {
                self.stop_and_remove(&pause_id, PAUSE_STOP_GRACE).await;
                Err(message)
            }
        }
    }

    /// With `runAsNonRoot`, the user the container would run as must be known and not 0
    /// (the kubelet's check, in its words): Err(why) otherwise, which keeps it waiting
    /// with CreateContainerConfigError. The image is on the node by now.
    async fn check_non_root(
        &self,
        pod: &PodDesired,
        container: &ContainerDesired,
    ) -> Result<(), String> {
        let security = &container.security;
        if !security.run_as_non_root {
            return Ok(());
        }
        let whose = format!("(pod: {:?}, container: {})", pod.key(), container.name);
        let uid = match security.run_as_user {
            Some(uid) => uid,
            None => {
                let user = self
                    .runtime
                    .image_user(&container.image)
                    .await
                    .map_err(|error| error.to_string())?;
                let name = user.split(':').next().unwrap_or_default();
                match name {
                    "" | "root" => 0,
                    _ => name.parse::<i64>().map_err(|_| {
                        format!(
                            "container has runAsNonRoot and image has non-numeric user ({name}), cannot verify user is non-root {whose}"
                        )
                    })?,
                }
            }
        };
        if uid != 0 {
            return Ok(());
        }
        Err(if security.run_as_user.is_some() {
            format!("container's runAsUser breaks non-root policy {whose}")
        } else {
            format!("container has runAsNonRoot and image will run as root {whose}")
        })
    }

    /// Wires the pause container's namespace; a stale host veth of the same pod (left by
    /// a crash) is removed and the wiring tried once more.
    async fn wire(&self, pause_id: &str, uid: &str, ip: Ipv4Addr) -> Result<PodNetwork, String> {
        let pid = self
            .runtime
            .inspect(pause_id)
            .await
            .map_err(|error| error.to_string())?
            .pid
            .ok_or("the pause container exited before its network was wired")?;
        let host_veth = podnet::host_veth_name(uid).map_err(|error| error.to_string())?;
        let host_netns = self.config.host_netns.clone();
        let pod_mtu = self.config.pod_mtu;
        tokio::task::spawn_blocking(move || {
            let spec = podnet::PodNetSpec {
                pid,
                pod_ip: ip,
                host_veth: &host_veth,
                host_netns: host_netns.as_deref(),
                mtu: pod_mtu,
            };
            match podnet::setup(&spec) {
                Err(podnet::PodNetError::AlreadyWired { .. }) => {
                    podnet::teardown(spec.host_netns, spec.host_veth)?;
                    podnet::setup(&spec)
                }
                other => other,
            }
        })
        .await
        .map_err(|error| format!("the wiring task failed: {error}"))?
        .map_err(|error| format!("wiring the pod network: {error}"))
    }

    async fn sync_container(
        &mut self,
        state: &mut PodState,
        desired: &ContainerDesired,
        observed: &[&ContainerSummary],
        actions: &mut Vec<Action>,
    ) {
        let pod = state.desired.key();
        let uid = state.desired.uid.clone();
        let policy = state.desired.restart_policy;
        let grace = state.desired.termination_grace;
        let Some(sandbox) = &state.sandbox else {
            return;
        };
        let (pause_id, pod_ip) = (sandbox.pause_id.clone(), sandbox.network.pod_ip);
        let track = state.containers.entry(desired.name.clone()).or_default();
        let action = |kind| Action {
            pod: pod.clone(),
            uid: uid.clone(),
            container: Some(desired.name.clone()),
            kind,
        };
        let hash = desired.spec_hash();
        let now = Instant::now();

        // The newest attempt is the container. The one before it stays while it is
        // stopped, for its logs (`logs --previous`, as the kubelet keeps one dead
        // container); anything older, or still running, is a leftover.
        let mut observed: Vec<&ContainerSummary> = observed.to_vec();
        observed.sort_by_key(|container| std::cmp::Reverse(attempt_of(container)));
        for (index, leftover) in observed.iter().enumerate().skip(1) {
            if index == 1 && !is_running(leftover) {
                continue;
            }
            self.stop_and_remove(&leftover.id, Duration::ZERO).await;
        }
        // A next attempt waiting for its image or config keeps its number, whether the
        // ended container it replaces is still there or not.
        let waiting_attempt = track.replacing.clone().filter(|_| track.instance.is_none());
        let mut next_attempt = waiting_attempt.as_ref().map(|(_, attempt)| *attempt);
        let current = observed.first().copied().filter(|container| {
            waiting_attempt
                .as_ref()
                .is_none_or(|(id, _)| *id != container.id)
        });
        match current {
            Some(container) => {
                if track.instance.as_ref().map(|instance| &instance.id) != Some(&container.id) {
                    let attempt = attempt_of(container);
                    let mut instance = Instance {
                        id: container.id.clone(),
                        attempt,
                        spec_hash: label(container, labels::SPEC_HASH)
                            .unwrap_or_default()
                            .to_owned(),
                        since: now,
                        probes: Arc::new(ProbeState::default()),
                        worker: None,
                        ended: None,
                    };
                    if is_running(container) {
                        instance.worker = Some(self.spawn_worker(
                            &state.desired,
                            desired,
                            &instance,
                            pod_ip,
                            true,
                        ));
                    }
                    track.restart_count = attempt;
                    track.instance = Some(instance);
                    actions.push(action(ActionKind::ContainerAdopted {
                        id: container.id.clone(),
                        attempt,
                    }));
                }
                let Some(instance) = track.instance.as_mut() else {
                    return;
                };
                if is_running(container) {
                    if instance.spec_hash == hash {
                        if instance.since.elapsed() >= self.config.backoff.reset_after {
                            track.backoff_step = 0;
                        }
                        track.waiting = None;
                        return;
                    }
                    // A new spec: replace the container at once, no back-off.
                    instance.stop_probing();
                    self.stop_and_remove(&container.id, grace).await;
                    actions.push(action(ActionKind::ContainerReplaced {
                        id: container.id.clone(),
                    }));
                    next_attempt = Some(instance.attempt.saturating_add(1));
                    track.instance = None;
                    track.next_start = None;
                } else {
                    if instance.ended.is_none() {
                        instance.stop_probing();
                        let ended = self.termination(&container.id, &instance.probes).await;
                        if instance.since.elapsed() >= self.config.backoff.reset_after {
                            track.backoff_step = 0;
                        }
                        actions.push(action(ActionKind::ContainerExited {
                            id: container.id.clone(),
                            exit_code: ended.exit_code,
                            reason: ended.reason.clone(),
                        }));
                        track.last_termination = Some(ended.clone());
                        instance.ended = Some(ended);
                    }
                    let exit_code = instance.ended.as_ref().and_then(|ended| ended.exit_code);
                    if !policy.restarts(exit_code, instance.probes.killed()) {
                        track.waiting = None;
                        track.next_start = None;
                        return;
                    }
                    if track.next_start.is_none() {
                        let delay = self.config.backoff.delay(track.backoff_step);
                        track.backoff_step = track.backoff_step.saturating_add(1);
                        track.last_backoff = delay;
                        track.next_start = Some(now + delay);
                        if !delay.is_zero() {
                            actions.push(action(ActionKind::BackOff { delay }));
                        }
                    }
                    let next_start = track.next_start.unwrap_or(now);
                    if now < next_start {
                        track.waiting = Some((
                            reason::CRASH_LOOP_BACK_OFF.to_owned(),
                            format!(
                                "back-off {:?} restarting failed container {} of pod {pod}",
                                track.last_backoff, desired.name
                            ),
                        ));
                        return;
                    }
                    // The ended container stays as the previous attempt, so the one
                    // kept before it goes; the new one has a name of its own.
                    if let Some(older) = observed.get(1) {
                        self.stop_and_remove(&older.id, Duration::ZERO).await;
                    }
                    next_attempt = Some(instance.attempt.saturating_add(1));
                    track.replacing = next_attempt.map(|attempt| (container.id.clone(), attempt));
                    track.instance = None;
                    track.next_start = None;
                }
            }
            None => {
                if let Some(instance) = track.instance.take() {
                    // Removed behind the agent's back: that is a container that ended.
                    let killed = instance.probes.killed();
                    if !policy.restarts(None, killed) {
                        track.waiting = None;
                        return;
                    }
                    next_attempt = Some(instance.attempt.saturating_add(1));
                }
            }
        }

        // Create the container (first start, restart or image retry).
        if track.next_start.is_some_and(|at| now < at) {
            if let Some((reason, message)) = track.waiting.clone()
                && reason == reason::ERR_IMAGE_PULL
                && track
                    .pull_failed_at
                    .is_none_or(|at| now.saturating_duration_since(at) >= self.config.resync_period)
            {
                let delay = track.last_backoff;
                track.waiting = Some((
                    reason::IMAGE_PULL_BACK_OFF.to_owned(),
                    format!("Back-off pulling image {:?}: {message}", desired.image),
                ));
                actions.push(action(ActionKind::PullBackOff {
                    image: desired.image.clone(),
                    delay,
                }));
            }
            return;
        }
        let attempt = next_attempt.unwrap_or(track.restart_count);
        let resolved = match &state.volume_error {
            Some(error) => Err(error.clone()),
            None => env::resolve(
                desired,
                &env::EnvContext {
                    pod: &state.desired,
                    pod_ip,
                    node: &self.config.node,
                    allocatable: self.config.allocatable,
                    configs: &self.configs,
                },
            ),
        };
        let env = match resolved {
            Ok(env) => env,
            Err(message) => {
                actions.extend(waits_for_config(track, next_attempt, message).map(action));
                return;
            }
        };
        // After the config: a container that waits for a Secret does not pull again and
        // again meanwhile.
        let mut kinds = Vec::new();
        let step = self
            .image_step(&state.desired, desired, track, now, &mut kinds)
            .await;
        actions.extend(kinds.into_iter().map(action));
        if let ImageStep::Wait = step {
            return;
        }
        // After the image step: the image says who the container would run as.
        if let Err(message) = self.check_non_root(&state.desired, desired).await {
            actions.extend(waits_for_config(track, next_attempt, message).map(action));
            return;
        }
        let spec = ContainerSpec {
            pod_namespace: state.desired.namespace.clone(),
            pod_name: state.desired.name.clone(),
            pod_uid: uid.clone(),
            container_name: desired.name.clone(),
            node: self.config.node.clone(),
            image: desired.image.clone(),
            command: desired.command.clone(),
            args: desired.args.clone(),
            working_dir: desired.working_dir.clone(),
            env,
            mounts: volumes::pod_dir(&self.config.volumes_dir, &uid)
                .map(|pod_dir| {
                    volumes::mounts(
                        &pod_dir,
                        &state.desired,
                        &state.claim_dirs,
                        &self.config.node,
                        desired,
                    )
                })
                .unwrap_or_default(),
            limits: desired.limits,
            network: NetworkMode::Container(pause_id),
            extra_labels: BTreeMap::from([
                (labels::ATTEMPT.to_owned(), attempt.to_string()),
                (labels::SPEC_HASH.to_owned(), hash.clone()),
            ]),
            // In the pause container's network, it shares that one's resolv.conf and
            // host name.
            dns: None,
            hostname: String::new(),
            domainname: String::new(),
            confinement: Confinement {
                pids_limit: self.config.pids_limit,
                log_rotation: self.config.log_rotation,
                ..Confinement::of(&desired.security)
            },
        };
        match self.runtime.create_and_start(&spec).await {
            Ok(id) => {
                let mut instance = Instance {
                    id: id.clone(),
                    attempt,
                    spec_hash: hash,
                    since: Instant::now(),
                    probes: Arc::new(ProbeState::default()),
                    worker: None,
                    ended: None,
                };
                instance.worker =
                    Some(self.spawn_worker(&state.desired, desired, &instance, pod_ip, false));
                // An image or engine error before must not count as crashes later.
                if track
                    .waiting
                    .as_ref()
                    .is_some_and(|(reason, _)| reason != reason::CRASH_LOOP_BACK_OFF)
                {
                    track.backoff_step = 0;
                }
                track.instance = Some(instance);
                track.restart_count = attempt;
                track.next_start = None;
                track.waiting = None;
                track.replacing = None;
                actions.push(action(ActionKind::ContainerCreated { id, attempt }));
            }
            Err(error) => {
                let message = error.to_string();
                let (waiting_reason, kind) = match &error {
                    RuntimeError::ImageNotFound { image } => (
                        reason::IMAGE_NOT_FOUND,
                        ActionKind::ImageNotFound {
                            image: image.clone(),
                            message: message.clone(),
                        },
                    ),
                    _ => (
                        reason::CREATE_CONTAINER_ERROR,
                        ActionKind::CreateFailed {
                            message: message.clone(),
                        },
                    ),
                };
                if let RuntimeError::AlreadyExists { name } = &error {
                    // A container of this name the listing didn't show as ours.
                    self.stop_and_remove(name, Duration::ZERO).await;
                }
                // Retries back off like restarts, starting at the base delay.
                let delay = self.config.backoff.delay(track.backoff_step.max(1));
                track.backoff_step = track.backoff_step.saturating_add(1);
                track.next_start = Some(now + delay);
                if let Some(attempt) = next_attempt {
                    // The old container is gone: this attempt number is used up either way.
                    track.restart_count = attempt;
                }
                track.waiting = Some((waiting_reason.to_owned(), message));
                actions.push(action(kind));
            }
        }
    }

    /// Makes sure the container's image is on the node as its pull policy says: present
    /// already, or pulled on a task of its own (a pass starts it and moves on; the pull
    /// wakes the manager when done). `Wait` leaves the reason on the container.
    async fn image_step(
        &mut self,
        pod: &PodDesired,
        desired: &ContainerDesired,
        track: &mut ContainerTrack,
        now: Instant,
        act: &mut Vec<ActionKind>,
    ) -> ImageStep {
        let image = desired.image.clone();
        let key = (pod.uid.clone(), desired.name.clone());
        match self.pulls.take(&key, &image) {
            PullState::Running => return ImageStep::Wait,
            PullState::Done(PullOutcome::Pulled { took }) => {
                track.pull_step = 0;
                act.push(ActionKind::Pulled {
                    image,
                    took: Some(took),
                });
                return ImageStep::Ready;
            }
            PullState::Done(PullOutcome::Failed(message)) => {
                let delay = images::pull_backoff(track.pull_step);
                track.pull_step = track.pull_step.saturating_add(1);
                track.last_backoff = delay;
                track.next_start = Some(now + delay);
                track.pull_failed_at = Some(now);
                track.waiting = Some((reason::ERR_IMAGE_PULL.to_owned(), message.clone()));
                act.push(ActionKind::PullFailed { image, message });
                return ImageStep::Wait;
            }
            PullState::Idle => {}
        }
        if desired.pull_policy != PullPolicy::Always {
            match self.runtime.image_present(&image).await {
                Ok(true) => {
                    act.push(ActionKind::Pulled { image, took: None });
                    return ImageStep::Ready;
                }
                Ok(false) if desired.pull_policy == PullPolicy::Never => {
                    let message = format!(
                        "Container image {image:?} is not present with pull policy of Never"
                    );
                    let waiting = (reason::ERR_IMAGE_NEVER_PULL.to_owned(), message.clone());
                    if track.waiting.as_ref() != Some(&waiting) {
                        act.push(ActionKind::ImageNeverPull { image, message });
                    }
                    // Looked at again on every pass: an image loaded by hand is used at once.
                    track.waiting = Some(waiting);
                    return ImageStep::Wait;
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%image, %error, "inspecting an image; pulling it");
                }
            }
        }
        let Some(credentials) = self.pull_credentials(pod, &image) else {
            // A pull Secret not fetched yet: pulling without it would fail and back off.
            return ImageStep::Wait;
        };
        self.pulls.start(
            key,
            &image,
            credentials,
            self.runtime.clone(),
            Arc::clone(&self.wake),
        );
        track.waiting = Some((reason::CONTAINER_CREATING.to_owned(), String::new()));
        act.push(ActionKind::Pulling { image });
        ImageStep::Wait
    }

    /// The credentials of the pod's pull Secrets for the image's registry: Some(None) when
    /// none has any (pulled anonymously, as the kubelet does with a missing Secret), None
    /// while a Secret has not been fetched yet.
    fn pull_credentials(
        &self,
        pod: &PodDesired,
        image: &str,
    ) -> Option<Option<RegistryCredentials>> {
        let host = registry_host(image);
        for name in &pod.pull_secrets {
            let key = ConfigKey {
                kind: ConfigKind::Secret,
                namespace: pod.namespace.clone(),
                name: name.clone(),
            };
            match self.configs.get(&key)? {
                Fetched::Found(values) => {
                    if let Some(credentials) = values
                        .0
                        .get(images::DOCKER_CONFIG_JSON_KEY)
                        .and_then(|config| images::credentials_for(config, host))
                    {
                        return Some(Some(credentials));
                    }
                }
                Fetched::Missing(reason) => {
                    tracing::warn!(pod = %pod.key(), secret = %name, %reason, "image pull secret not available; pulling without it");
                }
            }
        }
        Some(None)
    }

    async fn termination(&self, id: &str, probes: &ProbeState) -> Terminated {
        match self.runtime.inspect(id).await {
            Ok(status) => {
                let reason = if probes.killed_by() == Some(ProbeKind::Startup) {
                    reason::STARTUP_PROBE_FAILED
                } else if probes.killed() {
                    reason::LIVENESS_PROBE_FAILED
                } else if status.oom_killed {
                    reason::OOM_KILLED
                } else if status.exit_code == Some(0) {
                    reason::COMPLETED
                } else {
                    reason::ERROR
                };
                Terminated {
                    exit_code: status.exit_code,
                    reason: reason.to_owned(),
                    finished_at: status.finished_at,
                }
            }
            Err(error) => Terminated {
                exit_code: None,
                reason: format!("{}: {error}", reason::ERROR),
                finished_at: None,
            },
        }
    }

    fn spawn_worker(
        &self,
        pod: &PodDesired,
        container: &ContainerDesired,
        instance: &Instance,
        pod_ip: Ipv4Addr,
        adopted: bool,
    ) -> AbortHandle {
        let target = ProbeTarget {
            runtime: self.runtime.clone(),
            netns: self.config.host_netns.clone(),
            pod_namespace: pod.namespace.clone(),
            pod_name: pod.name.clone(),
            pod_uid: pod.uid.clone(),
            pod_ip,
            container: container.name.clone(),
            container_id: instance.id.clone(),
            stop_grace: pod.termination_grace,
        };
        let events = self.events.clone();
        let wake = Arc::clone(&self.wake);
        let report: probes::Reporter = Arc::new(move |event| {
            let _ = events.send(PodEvent::Probe(event));
            // A failed liveness probe stopped the container: restart it without waiting
            // for the next resync.
            wake.notify_one();
        });
        tokio::spawn(probes::run_worker(
            target,
            container.probes.clone(),
            Arc::clone(&instance.probes),
            report,
            adopted,
        ))
        .abort_handle()
    }
}

struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Wakes the run loop whenever one of the node's containers dies, so a crash is handled
/// at once rather than at the next resync; reconnects when the event stream breaks (the
/// resync still covers the gap).
async fn wake_on_deaths(runtime: DockerRuntime, node: String, wake: Arc<Notify>, retry: Duration) {
    use futures_util::StreamExt as _;
    loop {
        let deaths = runtime.container_deaths(&[(labels::NODE, &node)]);
        tokio::pin!(deaths);
        while let Some(death) = deaths.next().await {
            match death {
                Ok(id) => {
                    // The event can come before the engine reports the container as
                    // stopped; a reconcile then would still see it running.
                    for _ in 0..40 {
                        match runtime.inspect(&id).await {
                            Ok(status) if status.running => {
                                tokio::time::sleep(Duration::from_millis(25)).await;
                            }
                            _ => break,
                        }
                    }
                    wake.notify_one();
                }
                Err(error) => {
                    tracing::debug!(%error, "the engine's event stream broke; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(retry).await;
    }
}

fn report(state: &PodState) -> PodReport {
    let containers: Vec<ContainerReport> = state
        .desired
        .containers
        .iter()
        .map(|desired| {
            let track = state.containers.get(&desired.name);
            let instance = track.and_then(|track| track.instance.as_ref());
            let running = instance.is_some_and(|instance| instance.ended.is_none());
            let started = running && instance.is_some_and(|instance| instance.probes.started());
            let ready =
                started && instance.is_some_and(|instance| instance.probes.ready() == Some(true));
            let state = match (track.and_then(|track| track.waiting.as_ref()), instance) {
                (Some((reason, message)), _) => ContainerState::Waiting {
                    reason: reason.clone(),
                    message: message.clone(),
                },
                (None, Some(instance)) => match &instance.ended {
                    None => ContainerState::Running,
                    Some(ended) => ContainerState::Terminated(ended.clone()),
                },
                (None, None) => ContainerState::Waiting {
                    reason: reason::CONTAINER_CREATING.to_owned(),
                    message: String::new(),
                },
            };
            ContainerReport {
                name: desired.name.clone(),
                image: desired.image.clone(),
                container_id: instance.map(|instance| instance.id.clone()),
                state,
                // The termination now shown as the state is not "last" yet.
                last_termination: track
                    .and_then(|track| track.last_termination.clone())
                    .filter(|_| running || track.is_some_and(|track| track.waiting.is_some())),
                ready,
                started,
                restart_count: track.map_or(0, |track| track.restart_count),
                last_backoff: track.map_or(Duration::ZERO, |track| track.last_backoff),
            }
        })
        .collect();
    let ever_ran = |container: &ContainerReport| {
        container.restart_count > 0 || !matches!(container.state, ContainerState::Waiting { .. })
    };
    let terminated: Vec<&Terminated> = containers
        .iter()
        .filter_map(|container| match &container.state {
            ContainerState::Terminated(ended) => Some(ended),
            _ => None,
        })
        .collect();
    let phase = if state.sandbox.is_none() || !containers.iter().all(ever_ran) {
        PodPhase::Pending
    } else if !containers.is_empty() && terminated.len() == containers.len() {
        if terminated.iter().all(|ended| ended.exit_code == Some(0)) {
            PodPhase::Succeeded
        } else {
            PodPhase::Failed
        }
    } else {
        PodPhase::Running
    };
    PodReport {
        namespace: state.desired.namespace.clone(),
        name: state.desired.name.clone(),
        uid: state.desired.uid.clone(),
        phase,
        pod_ip: state.sandbox.as_ref().map(|sandbox| sandbox.network.pod_ip),
        ready: phase == PodPhase::Running && containers.iter().all(|container| container.ready),
        message: state.message.clone(),
        containers,
    }
}
