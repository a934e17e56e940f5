//! Hollow nodes: simulated agents for scale and integration tests (kubemark's idea).
//! They speak the real agent gRPC API — bootstrap-token join with a CSR, mTLS,
//! heartbeats, pod and service watches with resume — but run no containers and load
//! no programs: a pod is "running" as soon as it is reported so, with an address from
//! the node's pod CIDR. Their load figures are whatever a test sets per pod. A pod whose
//! `restartPolicy` is `Never` or `OnFailure` (a Job's) ends as its command says
//! ([`crate::script`]); one under `Always` runs until it is deleted.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use berth_api::agent::{
    BackendRate, ContainerUsage, HeartbeatRequest, JoinRequest, NodeRecord, NodeUsage, PodDeletion,
    PodStatusReport, PodUsage, agent_client::AgentClient,
};
use berth_watch::{Change, Consumer, Objects, WatchObject, Watched};
use rcgen::{CertificateParams, DnType, KeyPair};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::script::{self, Ending};

#[derive(Debug, thiserror::Error)]
pub enum HollowError {
    #[error("connecting: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}")]
    Rpc(#[from] tonic::Status),
    #[error("key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

/// What a hollow node has seen and done, for assertions.
#[derive(Debug, Default, Clone)]
pub struct HollowStats {
    /// `namespace/name` → pod IP of pods it runs.
    pub pods: BTreeMap<String, String>,
    /// `Kind namespace/name` of Services and Endpoints it knows.
    pub services: BTreeSet<String>,
    /// Times a watch had to start over from a snapshot (compaction, reconnects).
    pub resyncs: usize,
}

/// When things happened on a hollow node, for benchmarks: scheduling throughput and
/// endpoint propagation are measured from what the nodes saw, not from the control plane.
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    /// `namespace/name` → when the pod first arrived on this node's pod watch.
    pub pods_arrived: BTreeMap<String, Instant>,
    /// Pod IP → just before this node reported the pod running and ready (the store write
    /// that makes it ready is part of what follows).
    pub pods_ready: BTreeMap<String, Instant>,
    /// Address → when it first appeared as ready in one of the tracked Endpoints.
    pub endpoints_seen: BTreeMap<String, Instant>,
}

/// Figures a test makes a hollow pod report; its node reports the connection rate as
/// its own datapath's (one node's share of what a real pod would get).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PodLoad {
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
    pub connections_per_second: f64,
}

/// Loads set by the test and what the node needs to report them, by `namespace/name`.
#[derive(Debug, Default)]
struct Loads {
    set: BTreeMap<String, PodLoad>,
    /// uid, first container name and address of the pods it runs.
    running: BTreeMap<String, (String, String, String)>,
}

pub struct HollowNode {
    pub name: String,
    pub pod_cidr: String,
    client: AgentClient<Channel>,
    loads: Arc<Mutex<Loads>>,
    heartbeat_every: Duration,
    /// `namespace/name` of Endpoints whose ready addresses go into the timeline.
    tracked_endpoints: BTreeSet<String>,
    /// How many of the next containers to end exit with 1 whatever their command says.
    crashes: Arc<Mutex<usize>>,
}

impl HollowNode {
    /// Joins the cluster: a fresh key, a CSR, and the bootstrap token for a certificate.
    pub async fn join(
        endpoint: &str,
        ca_pem: &str,
        bootstrap_token: &str,
        name: &str,
    ) -> Result<Self, HollowError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        let csr_pem = params.serialize_request(&key)?.pem()?;
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        let anonymous = Channel::from_shared(endpoint.to_owned())
            .map_err(|e| HollowError::Invalid(e.to_string()))?
            .tls_config(tls.clone())?
            .connect()
            .await?;
        let joined = AgentClient::new(anonymous)
            .join(JoinRequest {
                bootstrap_token: bootstrap_token.to_owned(),
                node_name: name.to_owned(),
                csr_pem,
            })
            .await?
            .into_inner();
        let identity = Identity::from_pem(joined.certificate_pem, key.serialize_pem());
        let channel = Channel::from_shared(endpoint.to_owned())
            .map_err(|e| HollowError::Invalid(e.to_string()))?
            .tls_config(tls.identity(identity))?
            .connect()
            .await?;
        Ok(Self {
            name: name.to_owned(),
            pod_cidr: joined.pod_cidr,
            client: AgentClient::new(channel),
            loads: Arc::default(),
            heartbeat_every: Duration::from_secs(1),
            tracked_endpoints: BTreeSet::new(),
            crashes: Arc::default(),
        })
    }

    /// Records in the timeline when each ready address of these Endpoints
    /// (`namespace/name`) first reaches this node.
    pub fn track_endpoints(mut self, endpoints: impl IntoIterator<Item = String>) -> Self {
        self.tracked_endpoints.extend(endpoints);
        self
    }

    pub fn client(&self) -> AgentClient<Channel> {
        self.client.clone()
    }

    pub async fn heartbeat(&self) -> Result<(), HollowError> {
        let status = json!({
            "allocatable": {"cpu": "4", "memory": "8Gi"},
            "addresses": [{"type": "InternalIP", "address": self.gateway().to_string()}],
        });
        self.client
            .clone()
            .heartbeat(HeartbeatRequest {
                status_json: serde_json::to_vec(&status).unwrap_or_default(),
                usage: Some(self.usage()),
            })
            .await?;
        Ok(())
    }

    /// The figures set for pods this node runs; the node's usage is their sum.
    fn usage(&self) -> NodeUsage {
        let mut usage = NodeUsage {
            window_ms: u32::try_from(self.heartbeat_every.as_millis()).unwrap_or(u32::MAX),
            ..NodeUsage::default()
        };
        let Ok(loads) = self.loads.lock() else {
            return usage;
        };
        for (key, load) in &loads.set {
            let (Some((uid, container, ip)), Some((namespace, name))) =
                (loads.running.get(key), key.split_once('/'))
            else {
                continue;
            };
            usage.backends.push(BackendRate {
                ip: ip.clone(),
                connections_per_second: load.connections_per_second,
            });
            usage.cpu_millicores += load.cpu_millicores;
            usage.memory_bytes += load.memory_bytes;
            usage.pods.push(PodUsage {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                uid: uid.clone(),
                cpu_millicores: load.cpu_millicores,
                memory_bytes: load.memory_bytes,
                containers: vec![ContainerUsage {
                    name: container.clone(),
                    cpu_millicores: load.cpu_millicores,
                    memory_bytes: load.memory_bytes,
                }],
            });
        }
        usage
    }

    fn gateway(&self) -> Ipv4Addr {
        let base: Ipv4Addr = self
            .pod_cidr
            .split_once('/')
            .and_then(|(a, _)| a.parse().ok())
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        Ipv4Addr::from(u32::from(base) + 1)
    }

    /// Runs heartbeats and both watches until the handle is dropped.
    pub async fn start(mut self, heartbeat_every: Duration) -> Result<HollowHandle, HollowError> {
        self.heartbeat_every = heartbeat_every;
        self.heartbeat().await?;
        let stats = Arc::new(Mutex::new(HollowStats::default()));
        let timeline = Arc::new(Mutex::new(Timeline::default()));
        let node = Arc::new(self);
        let heartbeat = {
            let node = Arc::clone(&node);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(heartbeat_every).await;
                    if let Err(e) = node.heartbeat().await {
                        tracing::debug!(node = %node.name, "heartbeat failed: {e}");
                    }
                }
            })
        };
        let pods = tokio::spawn(run_pods(
            Arc::clone(&node),
            Arc::clone(&stats),
            Arc::clone(&timeline),
        ));
        let services = tokio::spawn(run_services(
            Arc::clone(&node),
            Arc::clone(&stats),
            Arc::clone(&timeline),
        ));
        Ok(HollowHandle {
            name: node.name.clone(),
            pod_cidr: node.pod_cidr.clone(),
            client: node.client.clone(),
            stats,
            timeline,
            loads: Arc::clone(&node.loads),
            crashes: Arc::clone(&node.crashes),
            tasks: vec![heartbeat, pods, services],
        })
    }
}

/// A running hollow node; dropping it stops it (as a crashed agent would).
pub struct HollowHandle {
    pub name: String,
    pub pod_cidr: String,
    client: AgentClient<Channel>,
    stats: Arc<Mutex<HollowStats>>,
    timeline: Arc<Mutex<Timeline>>,
    loads: Arc<Mutex<Loads>>,
    crashes: Arc<Mutex<usize>>,
    tasks: Vec<JoinHandle<()>>,
}

impl HollowHandle {
    /// The node's own agent API client (its certificate).
    pub fn client(&self) -> AgentClient<Channel> {
        self.client.clone()
    }

    pub fn stats(&self) -> HollowStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn timeline(&self) -> Timeline {
        self.timeline.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Pods that have arrived on this node so far (without copying the timeline).
    pub fn pods_arrived(&self) -> usize {
        self.timeline
            .lock()
            .map(|t| t.pods_arrived.len())
            .unwrap_or(0)
    }

    /// Times its watches started over from a snapshot (without copying the stats).
    pub fn resyncs(&self) -> usize {
        self.stats.lock().map(|s| s.resyncs).unwrap_or(0)
    }

    /// Whether `address` has reached this node in a tracked Endpoints.
    pub fn has_endpoint(&self, address: &str) -> bool {
        self.endpoint_seen_at(address).is_some()
    }

    /// When `address` first reached this node in a tracked Endpoints. The lookups below
    /// copy one entry, not the timeline: benchmarks poll them on thousands of nodes.
    pub fn endpoint_seen_at(&self, address: &str) -> Option<Instant> {
        self.timeline
            .lock()
            .ok()
            .and_then(|t| t.endpoints_seen.get(address).copied())
    }

    /// A pod this node reported ready whose address is not in `known`, with when.
    pub fn pod_ready_except(&self, known: &BTreeSet<String>) -> Option<(String, Instant)> {
        self.timeline.lock().ok().and_then(|t| {
            t.pods_ready
                .iter()
                .find(|(ip, _)| !known.contains(*ip))
                .map(|(ip, at)| (ip.clone(), *at))
        })
    }

    /// Makes the next `count` containers to end on this node exit with code 1, whatever
    /// their command says (a crash the workload did not plan, as a node sees one).
    pub fn crash_next(&self, count: usize) {
        update(&self.crashes, |crashes| *crashes += count);
    }

    /// Makes the pod report `load` with every heartbeat from now on (once it runs here).
    pub fn set_load(&self, namespace: &str, name: &str, load: PodLoad) {
        if let Ok(mut loads) = self.loads.lock() {
            loads.set.insert(format!("{namespace}/{name}"), load);
        }
    }
}

impl Drop for HollowHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn update<T>(shared: &Mutex<T>, f: impl FnOnce(&mut T)) {
    if let Ok(mut shared) = shared.lock() {
        f(&mut shared);
    }
}

/// The part of a key after the kind: `namespace/name`.
fn object_key(key: &str) -> &str {
    key.split_once(' ').map_or(key, |(_, rest)| rest)
}

/// Watches its pods and reports each new one running and ready.
async fn run_pods(
    node: Arc<HollowNode>,
    stats: Arc<Mutex<HollowStats>>,
    timeline: Arc<Mutex<Timeline>>,
) {
    let client = node.client();
    let mut pods = PodsWatch {
        node,
        stats,
        timeline,
        next_host: 2,
        runs: BTreeMap::new(),
    };
    berth_watch::run::<Value, _>(client, Watched::Pods, &mut pods).await;
}

struct PodsWatch {
    node: Arc<HollowNode>,
    stats: Arc<Mutex<HollowStats>>,
    timeline: Arc<Mutex<Timeline>>,
    next_host: u32,
    /// `namespace/name` → the task running a pod that ends to its end.
    runs: BTreeMap<String, JoinHandle<()>>,
}

impl Drop for PodsWatch {
    fn drop(&mut self) {
        for run in self.runs.values() {
            run.abort();
        }
    }
}

impl Consumer<Value> for PodsWatch {
    async fn changed(&mut self, objects: &Objects, change: Change<Value>) -> bool {
        match change {
            Change::Snapshot { resync } => {
                let gone = |key: &String| !objects.by_key.contains_key(&format!("Pod {key}"));
                update(&self.stats, |s| {
                    s.pods.retain(|key, _| !gone(key));
                    s.resyncs += usize::from(resync);
                });
                if let Ok(mut loads) = self.node.loads.lock() {
                    loads.running.retain(|key, _| !gone(key));
                }
                for (key, pod) in &objects.by_key {
                    self.applied(object_key(key), pod).await;
                }
            }
            Change::Applied { key } => {
                if let Some(pod) = objects.by_key.get(&key) {
                    self.applied(object_key(&key), pod).await;
                }
            }
            Change::Deleted { key, .. } => {
                let key = object_key(&key);
                if let Some(run) = self.runs.remove(key) {
                    run.abort();
                }
                update(&self.stats, |s| {
                    s.pods.remove(key);
                });
                if let Ok(mut loads) = self.node.loads.lock() {
                    loads.running.remove(key);
                    loads.set.remove(key);
                }
            }
        }
        true
    }
}

impl PodsWatch {
    /// A pod added or changed: a new one is reported running and ready, a terminating one
    /// is confirmed deleted.
    async fn applied(&mut self, key: &str, pod: &Value) {
        let node = &self.node;
        let now = Instant::now();
        update(&self.timeline, |t| {
            t.pods_arrived.entry(key.to_owned()).or_insert(now);
        });
        let (namespace, name) = key.split_once('/').unwrap_or(("", key));
        // A graceful deletion: nothing runs, so it is stopped at once and confirmed. The
        // watch then brings the DELETED event; a failed confirmation is tried again when
        // the watch starts over (its snapshot lists the pod again).
        if pod
            .pointer("/metadata/deletionTimestamp")
            .and_then(Value::as_str)
            .is_some_and(|at| !at.is_empty())
        {
            if let Some(run) = self.runs.remove(key) {
                run.abort();
            }
            let deletion = PodDeletion {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                uid: pod["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            };
            let _ = node.client().confirm_pod_deletion(deletion).await;
            return;
        }
        let running = |ip: &str| {
            if let Ok(mut loads) = node.loads.lock() {
                let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
                let container = pod
                    .pointer("/spec/containers/0/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                loads.running.insert(
                    key.to_owned(),
                    (uid.to_owned(), container.to_owned(), ip.to_owned()),
                );
            }
        };
        if let Some(ip) = pod.pointer("/status/podIP").and_then(Value::as_str) {
            running(ip);
            return;
        }
        let ip = Ipv4Addr::from(u32::from(node.gateway()) - 1 + self.next_host);
        self.next_host = if self.next_host >= 254 {
            2
        } else {
            self.next_host + 1
        };
        let status = json!({
            "phase": "Running", "podIP": ip.to_string(), "hostIP": node.gateway().to_string(),
            "conditions": [{"type": "Ready", "status": "True"}],
        });
        let report = PodStatusReport {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            status_json: serde_json::to_vec(&status).unwrap_or_default(),
        };
        let reporting = Instant::now();
        if node.client().report_pod_status(report).await.is_ok() {
            update(&self.timeline, |t| {
                t.pods_ready.insert(ip.to_string(), reporting);
            });
            running(&ip.to_string());
            update(&self.stats, |s| {
                s.pods.insert(key.to_owned(), ip.to_string());
            });
            let restart_policy = pod
                .pointer("/spec/restartPolicy")
                .and_then(Value::as_str)
                .unwrap_or("Always");
            if matches!(restart_policy, "Never" | "OnFailure") {
                let run = tokio::spawn(run_to_end(
                    Arc::clone(node),
                    (namespace.to_owned(), name.to_owned()),
                    containers(pod),
                    ip,
                    restart_policy == "OnFailure",
                ));
                if let Some(earlier) = self.runs.insert(key.to_owned(), run) {
                    earlier.abort();
                }
            }
        }
    }
}

/// Each container's name and how it ends.
fn containers(pod: &Value) -> Vec<(String, Ending)> {
    let words = |container: &Value, field: &str| -> Vec<String> {
        container[field]
            .as_array()
            .map(|words| {
                words
                    .iter()
                    .filter_map(|w| w.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|containers| {
            containers
                .iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or_default().to_owned(),
                        script::ending(&words(c, "command"), &words(c, "args")),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs a pod's containers to their end and reports it: Succeeded when all exited 0,
/// else Failed, or under `OnFailure` restarted in place (a second later, counted in
/// `restartCount`) until they succeed.
async fn run_to_end(
    node: Arc<HollowNode>,
    (namespace, name): (String, String),
    containers: Vec<(String, Ending)>,
    ip: Ipv4Addr,
    restart_on_failure: bool,
) {
    let mut restarts = 0u32;
    loop {
        let longest = containers.iter().map(|(_, e)| e.after).max();
        tokio::time::sleep(longest.unwrap_or_default()).await;
        let crashed = node
            .crashes
            .lock()
            .map(|mut crashes| {
                let crashed = *crashes > 0;
                *crashes = crashes.saturating_sub(1);
                crashed
            })
            .unwrap_or(false);
        let finished_at = berth_api::time::rfc3339_now();
        let ended: Vec<(String, i32)> = containers
            .iter()
            .enumerate()
            .map(|(i, (container, ending))| {
                let code = if crashed && i == 0 {
                    1
                } else {
                    ending.exit_code
                };
                (container.clone(), code)
            })
            .collect();
        let failed = ended.iter().any(|(_, code)| *code != 0);
        let terminated = |code: i32| {
            json!({"terminated": {"exitCode": code,
                "reason": if code == 0 { "Completed" } else { "Error" },
                "finishedAt": finished_at}})
        };
        let status = if failed && restart_on_failure {
            restarts += 1;
            json!({"phase": "Running", "podIP": ip.to_string(), "hostIP": node.gateway().to_string(),
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": ended.iter().map(|(container, code)| json!({
                    "name": container, "ready": true, "started": true, "restartCount": restarts,
                    "state": {"running": {}}, "lastState": terminated(*code)})).collect::<Vec<_>>()})
        } else {
            json!({"phase": if failed { "Failed" } else { "Succeeded" },
                "podIP": ip.to_string(), "hostIP": node.gateway().to_string(),
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": ended.iter().map(|(container, code)| json!({
                    "name": container, "restartCount": restarts,
                    "state": terminated(*code)})).collect::<Vec<_>>()})
        };
        let report = PodStatusReport {
            namespace: namespace.clone(),
            name: name.clone(),
            status_json: serde_json::to_vec(&status).unwrap_or_default(),
        };
        if let Err(e) = node.client().report_pod_status(report).await {
            tracing::debug!(pod = %format!("{namespace}/{name}"), "reporting the end failed: {e}");
        }
        if !(failed && restart_on_failure) {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What a hollow node keeps of a Service, Endpoints or Node: an Endpoints' ready
/// addresses (nothing for the others). A thousand simulated agents in one process parse
/// each Endpoints change a thousand times; parsed whole, that work (each agent's own, on
/// its own machine in a real cluster) took the CPUs the measured control plane shares
/// with them.
#[derive(PartialEq)]
struct ReadyAddresses(Vec<String>);

#[derive(serde::Deserialize)]
struct Brief {
    metadata: BriefMetadata,
    #[serde(default)]
    subsets: Vec<BriefSubset>,
}

#[derive(serde::Deserialize)]
struct BriefMetadata {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
}

#[derive(serde::Deserialize)]
struct BriefSubset {
    #[serde(default)]
    addresses: Vec<BriefAddress>,
}

#[derive(serde::Deserialize)]
struct BriefAddress {
    ip: String,
}

impl WatchObject for ReadyAddresses {
    fn decode(_kind: &str, json: &[u8]) -> Option<(String, Self)> {
        let brief: Brief = serde_json::from_slice(json).ok()?;
        let ready = brief
            .subsets
            .into_iter()
            .flat_map(|subset| subset.addresses)
            .map(|address| address.ip)
            .collect();
        Some((
            format!("{}/{}", brief.metadata.namespace, brief.metadata.name),
            Self(ready),
        ))
    }

    /// Nothing of a Node: its record, decoded from the batch already, is not made JSON.
    fn from_node(_record: &NodeRecord) -> Option<Self> {
        Some(Self(Vec::new()))
    }

    fn same(&self, other: &Self) -> bool {
        self == other
    }
}

/// Keeps the set of Services and Endpoints, as an agent's datapath would.
async fn run_services(
    node: Arc<HollowNode>,
    stats: Arc<Mutex<HollowStats>>,
    timeline: Arc<Mutex<Timeline>>,
) {
    let client = node.client();
    let mut services = ServicesWatch {
        node,
        stats,
        timeline,
    };
    berth_watch::run::<ReadyAddresses, _>(client, Watched::Services, &mut services).await;
}

struct ServicesWatch {
    node: Arc<HollowNode>,
    stats: Arc<Mutex<HollowStats>>,
    timeline: Arc<Mutex<Timeline>>,
}

impl ServicesWatch {
    /// Records when each ready address of a tracked Endpoints first reached this node.
    fn seen(&self, key: &str, ready: &ReadyAddresses, now: Instant) {
        let tracked = key
            .strip_prefix("Endpoints ")
            .is_some_and(|name| self.node.tracked_endpoints.contains(name));
        if tracked {
            update(&self.timeline, |t| {
                for ip in &ready.0 {
                    t.endpoints_seen.entry(ip.clone()).or_insert(now);
                }
            });
        }
    }
}

impl Consumer<ReadyAddresses> for ServicesWatch {
    async fn changed(
        &mut self,
        objects: &Objects<ReadyAddresses>,
        change: Change<ReadyAddresses>,
    ) -> bool {
        // Delivered now: what the node does with it comes after.
        let now = Instant::now();
        match change {
            Change::Snapshot { resync } => {
                for (key, ready) in &objects.by_key {
                    self.seen(key, ready, now);
                }
                update(&self.stats, |s| {
                    s.services = objects.by_key.keys().cloned().collect();
                    s.resyncs += usize::from(resync);
                });
            }
            Change::Applied { key } => {
                if let Some(ready) = objects.by_key.get(&key) {
                    self.seen(&key, ready, now);
                }
                update(&self.stats, |s| {
                    s.services.insert(key);
                });
            }
            Change::Deleted { key, .. } => update(&self.stats, |s| {
                s.services.remove(&key);
            }),
        }
        true
    }
}
