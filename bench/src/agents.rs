//! Real agents while Services arrive and change (issue 25): N real berth-agents, each in
//! a node network namespace of its own on a routed underlay (berth-tests' [`E2eCluster`],
//! as the failover part), joined to the real berth-control.
//!
//! - **arrival**: S Services (ClusterIP, one port, an explicit clusterIP so the benchmark
//!   knows each one's key in the datapath) and their EndpointSlices (10 addresses each,
//!   on the nodes in turn; the agents' datapath feeds from slices) applied through
//!   `/apply` in manifests of 100 Services with their slices, one after the other. A Service is programmed on an agent once the agent's
//!   pinned `BERTH_SERVICES` map holds its frontend with all its backends
//!   (`backend_count`); figures: from the first apply, and from the last apply's answer,
//!   until each agent has every Service programmed (checked every [`ARRIVAL_POLL`]).
//! - **changes**: single EndpointSlice changes, one at a time, each to a Service of its
//!   own: one address replaced by a new one. Each agent's frontend entry of
//!   that Service is read in a loop from before the apply is sent; it changes when the
//!   agent switches the Service to its rebuilt Maglev table, the last of the Service's
//!   writes. Figures: from the apply's answer (the write committed in the store) to that
//!   entry changing on each agent, and on the last agent.
//! - **CPU and memory**: each agent's CPU time over the arrival and per change (less what
//!   it uses idle over as long), its own memory (`RssAnon`), file-backed pages
//!   (`RssFile`: its executable and the BPF maps it maps) and the kernel's memory for its
//!   BPF maps (`memlock` in `/proc/PID/fdinfo` of every map it holds), of which the maps
//!   whose contents are the Services'.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use berth_agent::datapath::{Frontend, Protocol, service_key};
use berth_ctl::client::Client;
use berth_ebpf_common::{ServiceKey, ServiceValue, map_names};
use berth_tests::e2e::{ControlOptions, E2eCluster, E2eNetwork, Underlay};
use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::procs::{check_interrupted, machine_cpu, panic_message, process_cpu_time};

/// Services per manifest, as the user applied them.
pub const MANIFEST: usize = 100;
/// The Services' port.
const PORT: u16 = 80;
/// How often the arrival is checked on every agent.
const ARRIVAL_POLL: Duration = Duration::from_millis(100);
/// How often a change is looked for on every agent.
const CHANGE_POLL: Duration = Duration::from_micros(200);
/// Longest wait for one change on every agent.
const CHANGE_LIMIT: Duration = Duration::from_secs(30);
/// Agent CPU time idle is measured over this long, to take it out of the changes' CPU.
const IDLE: Duration = Duration::from_secs(5);
/// Where each agent serves /metrics: its node address's default port.
const METRICS_PORT: u16 = 9102;
/// The agent's histogram from a watch event's arrival to the maps written.
const PROPAGATION: &str = "berth_datapath_propagation_seconds";
/// Memory the default agent count reserves per agent, 1.5 GiB: its BPF maps (460 MiB at
/// the default limits, whatever the Service count) and its heap with 10,000 Services
/// (367 MiB for a debug build in the first measurements), with room to spare.
const MEMORY_PER_AGENT: u64 = 3 << 29;
/// The default agent count is at least this (the "at least 10").
const MIN_AGENTS: usize = 10;
/// The control plane's default Service range (198.18.192.0/18): explicit clusterIPs
/// from its 16th address on.
const FIRST_CLUSTER_IP: u32 = u32::from_be_bytes([198, 18, 192, 16]);
const MAX_SERVICES: usize = 16_000;
/// The maps whose contents are the Services' (the rest hold connections, nodes, masquerade
/// state, whatever the Service count).
pub const SERVICE_MAPS: [&str; 7] = [
    map_names::SERVICES,
    map_names::BACKENDS,
    map_names::MAGLEV,
    map_names::ROUND_ROBIN,
    map_names::LOCAL_BACKENDS,
    map_names::SERVICE_STATS,
    map_names::BACKEND_STATS,
];

pub struct Options {
    pub smoke: bool,
    pub agents: usize,
    pub services: usize,
    pub endpoints_per_service: usize,
    pub changes: usize,
    /// Longest wait for every agent to program every Service after the last apply.
    pub arrival_limit: Duration,
}

/// The part's options: `agents` and `services` override the defaults (as many agents as
/// the machine's memory holds, at least 10, and 10,000 Services; smoke: 2 and 200).
pub fn options(
    smoke: bool,
    agents: Option<usize>,
    services: Option<usize>,
) -> anyhow::Result<Options> {
    let options = Options {
        smoke,
        agents: agents.unwrap_or_else(|| if smoke { 2 } else { default_agents() }),
        services: services.unwrap_or(if smoke { 200 } else { 10_000 }),
        endpoints_per_service: 10,
        changes: 0,
        arrival_limit: Duration::from_secs(if smoke { 120 } else { 900 }),
    };
    // Each change goes to a Service of its own.
    let options = Options {
        changes: (if smoke { 20 } else { 200 }).min(options.services),
        ..options
    };
    if options.agents == 0 || options.agents > 190 {
        bail!(
            "--agents {}: from 1 to 190 (one underlay link each, 198.18.64.0/24 to 198.18.253.0/24)",
            options.agents
        );
    }
    if options.services == 0 || options.services > MAX_SERVICES {
        bail!(
            "--agents-services {}: from 1 to {MAX_SERVICES} (explicit clusterIPs in the control plane's default range 198.18.192.0/18)",
            options.services
        );
    }
    Ok(options)
}

/// As many agents as the machine's available memory holds at [`MEMORY_PER_AGENT`] each,
/// at least [`MIN_AGENTS`].
pub fn default_agents() -> usize {
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| berth_agent::usage::meminfo_bytes(&meminfo, "MemAvailable"))
        .unwrap_or(0);
    ((available / MEMORY_PER_AGENT) as usize).max(MIN_AGENTS)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentsResults {
    pub smoke: bool,
    pub started: String,
    pub elapsed_secs: f64,
    /// The build profile of berth-control and berth-agent.
    pub binaries: String,
    pub services: usize,
    pub endpoints_per_service: usize,
    pub manifest: usize,
    /// From the first manifest's apply to the last one's answer.
    pub applying_secs: f64,
    /// Longest wait for the arrival after the last apply.
    pub arrival_limit_secs: f64,
    /// The whole machine's busy share of its CPU time over the arrival and over the
    /// changes (the agents, the control plane, the benchmark and anything else running).
    pub arrival_machine_busy: f64,
    pub changes_machine_busy: f64,
    pub agents: Vec<AgentFigures>,
    pub changes: Vec<Change>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentFigures {
    pub node: String,
    /// From the first apply until this agent had every Service programmed (None: not
    /// within the limit).
    pub programmed_secs: Option<f64>,
    /// Its CPU time from the first apply until every agent had every Service.
    pub arrival_cpu_secs: f64,
    /// Its CPU time per change, less its idle rate over as long.
    pub change_cpu_ms: f64,
    /// Its idle CPU use (a share of one CPU), measured before the changes.
    pub idle_cpu: f64,
    pub rss_anon_bytes: u64,
    pub rss_file_bytes: u64,
    /// The kernel's memory for every BPF map the agent holds, joined and then with every
    /// Service programmed.
    pub bpf_bytes_joined: u64,
    pub bpf_bytes: u64,
    /// Of which the maps in [`SERVICE_MAPS`].
    pub bpf_service_bytes: u64,
    /// The agent's own share of the changes: its `berth_datapath_propagation_seconds`
    /// buckets over them (upper bound in seconds, changes up to it), from the watch
    /// event's arrival at the agent to the maps written; `+Inf` is `f64::MAX`. Empty when
    /// /metrics did not answer.
    #[serde(default)]
    pub own_buckets: Vec<(f64, u64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub service: usize,
    /// From sending the apply to its answer.
    pub apply_ms: f64,
    /// From the answer to the maps written, per agent (None: not within 30 s); 0 when the
    /// agent had written them before the answer arrived.
    pub agent_ms: Vec<Option<f64>>,
}

impl AgentsResults {
    /// Seconds from the last apply's answer until every agent had every Service.
    pub fn after_last_apply_secs(&self) -> Option<f64> {
        self.agents
            .iter()
            .map(|agent| agent.programmed_secs)
            .collect::<Option<Vec<f64>>>()
            .map(|all| all.into_iter().fold(0.0, f64::max) - self.applying_secs)
    }

    /// Agent `index`'s propagation of every change it saw, in milliseconds.
    pub fn agent_ms(&self, index: usize) -> Vec<f64> {
        self.changes
            .iter()
            .filter_map(|change| change.agent_ms.get(index).copied().flatten())
            .collect()
    }

    /// Every (change, agent) pair seen, in milliseconds.
    pub fn all_ms(&self) -> Vec<f64> {
        self.changes
            .iter()
            .flat_map(|change| change.agent_ms.iter().flatten().copied())
            .collect()
    }

    /// Per change, to the last agent (changes some agent missed left out).
    pub fn last_agent_ms(&self) -> Vec<f64> {
        self.changes
            .iter()
            .filter_map(|change| {
                change
                    .agent_ms
                    .iter()
                    .copied()
                    .collect::<Option<Vec<f64>>>()
                    .map(|all| all.into_iter().fold(0.0, f64::max))
            })
            .collect()
    }

    /// (change, agent) pairs not seen within the limit.
    pub fn missed(&self) -> usize {
        self.changes
            .iter()
            .map(|change| change.agent_ms.iter().filter(|ms| ms.is_none()).count())
            .sum()
    }
}

/// Builds the cluster, measures, removes everything (also on failure or Ctrl-C).
pub fn run(options: &Options, say: &(dyn Fn(&str) + Sync)) -> anyhow::Result<AgentsResults> {
    let started = Instant::now();
    let started_at = crate::procs::now_utc();
    // The harness reports what goes wrong by panicking; its `run` removes the cluster and
    // resumes the panic, which becomes this part's error here.
    let measured = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let cluster = E2eCluster::with_network(
            options.agents,
            // The control plane's own defaults: node failures play no part here.
            ControlOptions {
                node_grace_secs: 40,
                pod_eviction_timeout_secs: 60,
                autoscaler_sync_secs: 15,
                autoscaler_downscale_stabilization_secs: 300,
            },
            // A link per node: one underlay link has room for 9 nodes beside the
            // control plane's address.
            E2eNetwork {
                underlay: Underlay::Routed,
                routing_mode: None,
            },
        );
        let control_ns = cluster.control_ns.name().to_owned();
        // The control plane's REST API listens on its namespace's loopback.
        crate::scale::in_namespace(&control_ns, || async move {
            cluster
                .run(async |cluster| measure(cluster, options, say).await)
                .await
        })
    }))
    .map_err(|panic| {
        anyhow::anyhow!(
            "the agents' cluster failed: {}",
            panic_message(panic.as_ref())
        )
    })??;
    Ok(AgentsResults {
        smoke: options.smoke,
        started: started_at,
        elapsed_secs: started.elapsed().as_secs_f64(),
        ..measured
    })
}

/// One agent as the benchmark sees it.
struct Agent {
    node: String,
    addr: Ipv4Addr,
    pid: u32,
    pins: std::path::PathBuf,
    services: ServiceMap,
}

/// An agent's pinned `BERTH_SERVICES` map, read by the benchmark.
struct ServiceMap(BpfHashMap<MapData, ServiceKey, ServiceValue>);

impl ServiceMap {
    fn open(pins: &Path) -> anyhow::Result<ServiceMap> {
        let path = pins.join(map_names::SERVICES);
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let map = BpfHashMap::try_from(Map::HashMap(data))
            .with_context(|| format!("{} as a hash map", path.display()))?;
        Ok(ServiceMap(map))
    }

    fn get(&self, key: &ServiceKey) -> Option<ServiceValue> {
        self.0.get(key, 0).ok()
    }
}

/// Service `index`'s clusterIP.
fn cluster_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::from(FIRST_CLUSTER_IP + index as u32)
}

fn key(index: usize) -> ServiceKey {
    service_key(&Frontend {
        addr: cluster_ip(index),
        port: PORT,
        protocol: Protocol::Tcp,
        external: false,
    })
}

/// Service `index` of `services` and its EndpointSlice: `endpoints` addresses of its own,
/// on `node`; `changed` replaces the first by an address no Service had (past every
/// Service's), as a pod replaced by a new one. An address on two nodes would be refused.
fn objects(
    index: usize,
    endpoints: usize,
    services: usize,
    changed: bool,
    node: &str,
) -> [Value; 2] {
    let name = format!("svc-{index:05}");
    let addresses: Vec<Value> = (0..endpoints)
        .map(|e| {
            let n = if changed && e == 0 {
                services * endpoints + index
            } else {
                index * endpoints + e
            };
            json!({
                "addresses": [format!("10.{}.{}.{}", 64 + n / 65_536, n / 256 % 256, n % 256)],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": node,
            })
        })
        .collect();
    [
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "clusterIP": cluster_ip(index).to_string(),
                "ports": [{"port": PORT, "targetPort": 8080}],
            },
        }),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-0"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": addresses,
            "ports": [{"port": 8080, "protocol": "TCP"}],
        }),
    ]
}

/// The Service change `change` is made to: spread over the Services (a prime stride),
/// none twice while `change < services`.
fn changed_service(change: usize, services: usize) -> usize {
    const STRIDE: usize = 7919;
    let stride = if services.is_multiple_of(STRIDE) {
        1
    } else {
        STRIDE
    };
    change * stride % services
}

fn cpu_secs(agents: &[Agent]) -> Vec<f64> {
    agents
        .iter()
        .map(|agent| process_cpu_time(agent.pid).as_secs_f64())
        .collect()
}

fn busy_share(before: (Duration, Duration)) -> f64 {
    let (busy, total) = machine_cpu();
    let total = total.saturating_sub(before.1).as_secs_f64();
    if total > 0.0 {
        busy.saturating_sub(before.0).as_secs_f64() / total
    } else {
        0.0
    }
}

async fn measure(
    cluster: &mut E2eCluster,
    options: &Options,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<AgentsResults> {
    say(&format!(
        "agents: starting the control plane and {} agents",
        options.agents
    ));
    cluster.start().await;
    let client = Client::from_kubeconfig(&cluster.kubeconfig()).context("admin.conf")?;
    let agents = cluster
        .nodes
        .iter()
        .map(|node| {
            let pid = node
                .agent
                .as_ref()
                .map(|process| process.0.id())
                .context("an agent that was not started")?;
            Ok(Agent {
                node: node.name.clone(),
                addr: node.addr,
                pid,
                pins: node.pins.path().to_path_buf(),
                services: ServiceMap::open(node.pins.path())?,
            })
        })
        .collect::<anyhow::Result<Vec<Agent>>>()?;
    let agents = Arc::new(agents);
    let joined_bpf: Vec<u64> = agents
        .iter()
        .map(|agent| bpf_memory(agent.pid, &agent.pins).map(|(all, _)| all))
        .collect::<anyhow::Result<_>>()?;

    // Arrival.
    let (services, endpoints) = (options.services, options.endpoints_per_service);
    say(&format!(
        "agents: applying {services} Services × {endpoints} endpoints in manifests of {MANIFEST} to {} agents",
        agents.len()
    ));
    let cpu_before = cpu_secs(&agents);
    let machine_before = machine_cpu();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (agents, stop) = (Arc::clone(&agents), Arc::clone(&stop));
        tokio::task::spawn_blocking(move || arrival_poll(&agents, services, endpoints, &stop))
    };
    let nodes: Vec<String> = agents.iter().map(|agent| agent.node.clone()).collect();
    let applied = async {
        for first in (0..services).step_by(MANIFEST) {
            check_interrupted()?;
            let manifest: Vec<Value> = (first..(first + MANIFEST).min(services))
                .flat_map(|index| {
                    objects(
                        index,
                        endpoints,
                        services,
                        false,
                        &nodes[index % nodes.len()],
                    )
                })
                .collect();
            crate::scale::write(&client, Method::POST, "/apply", &Value::Array(manifest))
                .await
                .with_context(|| format!("applying Services from {first}"))?;
        }
        anyhow::Ok(())
    }
    .await;
    let applying = started.elapsed();
    if let Err(error) = applied {
        stop.store(true, Ordering::SeqCst);
        return Err(error);
    }
    say(&format!(
        "agents: applied in {:.1} s; waiting for every agent to program them",
        applying.as_secs_f64()
    ));
    let limit = Instant::now() + options.arrival_limit;
    let waiting = async {
        while !poller.is_finished() {
            if Instant::now() > limit || check_interrupted().is_err() {
                stop.store(true, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    waiting.await;
    check_interrupted()?;
    let programmed_at = poller.await.context("the arrival poller")?;
    let arrival_cpu: Vec<f64> = cpu_secs(&agents)
        .iter()
        .zip(&cpu_before)
        .map(|(after, before)| after - before)
        .collect();
    let arrival_machine_busy = busy_share(machine_before);
    let programmed_secs: Vec<Option<f64>> = programmed_at
        .iter()
        .map(|at| at.map(|at| at.saturating_duration_since(started).as_secs_f64()))
        .collect();
    say(&format!(
        "agents: every Service programmed on {} of {} agents; the last after {:.1} s",
        programmed_secs.iter().flatten().count(),
        agents.len(),
        programmed_secs
            .iter()
            .flatten()
            .fold(0.0, |a: f64, b| a.max(*b))
    ));
    // Settled: what they hold while serving them, not the peak of the arrival.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let memory = agents
        .iter()
        .map(|agent| {
            let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid))
                .with_context(|| format!("{}'s agent's /proc status", agent.node))?;
            let field = |name| berth_agent::usage::meminfo_bytes(&status, name).unwrap_or(0);
            let (bpf, service) = bpf_memory(agent.pid, &agent.pins)?;
            Ok((field("RssAnon"), field("RssFile"), bpf, service))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    // Idle, then the changes.
    let buckets_before = propagation_buckets(&agents, say).await;
    let idle_before = cpu_secs(&agents);
    tokio::time::sleep(IDLE).await;
    let idle: Vec<f64> = cpu_secs(&agents)
        .iter()
        .zip(&idle_before)
        .map(|(after, before)| (after - before) / IDLE.as_secs_f64())
        .collect();
    say(&format!(
        "agents: {} EndpointSlice changes, one at a time",
        options.changes
    ));
    let cpu_before = cpu_secs(&agents);
    let machine_before = machine_cpu();
    let changing = Instant::now();
    let mut changes = Vec::with_capacity(options.changes);
    for change in 0..options.changes {
        check_interrupted()?;
        let index = changed_service(change, services);
        let key = key(index);
        let before: Vec<Option<ServiceValue>> = agents
            .iter()
            .map(|agent| agent.services.get(&key))
            .collect();
        let seen = {
            let agents = Arc::clone(&agents);
            tokio::task::spawn_blocking(move || change_poll(&agents, &key, &before))
        };
        let manifest = Value::Array(
            objects(
                index,
                endpoints,
                services,
                true,
                &nodes[index % nodes.len()],
            )[1..]
                .to_vec(),
        );
        let sent = Instant::now();
        crate::scale::write(&client, Method::POST, "/apply", &manifest)
            .await
            .with_context(|| format!("changing the EndpointSlice of Service {index}"))?;
        let answered = Instant::now();
        let seen = seen.await.context("the change poller")?;
        changes.push(Change {
            service: index,
            apply_ms: (answered - sent).as_secs_f64() * 1e3,
            agent_ms: seen
                .iter()
                .map(|at| at.map(|at| at.saturating_duration_since(answered).as_secs_f64() * 1e3))
                .collect(),
        });
        if (change + 1) % 50 == 0 {
            say(&format!(
                "agents: {} of {} changes",
                change + 1,
                options.changes
            ));
        }
    }
    let changing = changing.elapsed().as_secs_f64();
    let changes_machine_busy = busy_share(machine_before);
    let change_cpu: Vec<f64> = cpu_secs(&agents)
        .iter()
        .zip(&cpu_before)
        .zip(&idle)
        .map(|((after, before), idle)| {
            ((after - before - idle * changing).max(0.0)) * 1e3 / options.changes.max(1) as f64
        })
        .collect();
    let own_buckets: Vec<Vec<(f64, u64)>> = propagation_buckets(&agents, say)
        .await
        .iter()
        .zip(&buckets_before)
        .map(|(after, before)| bucket_difference(before, after))
        .collect();

    let figures = agents
        .iter()
        .enumerate()
        .map(|(i, agent)| {
            let (rss_anon_bytes, rss_file_bytes, bpf_bytes, bpf_service_bytes) = memory[i];
            AgentFigures {
                node: agent.node.clone(),
                programmed_secs: programmed_secs[i],
                arrival_cpu_secs: arrival_cpu[i],
                change_cpu_ms: change_cpu[i],
                idle_cpu: idle[i],
                rss_anon_bytes,
                rss_file_bytes,
                bpf_bytes_joined: joined_bpf[i],
                bpf_bytes,
                bpf_service_bytes,
                own_buckets: own_buckets[i].clone(),
            }
        })
        .collect();
    Ok(AgentsResults {
        smoke: options.smoke,
        started: String::new(),
        elapsed_secs: 0.0,
        binaries: crate::failover::profile(),
        services,
        endpoints_per_service: endpoints,
        manifest: MANIFEST,
        applying_secs: applying.as_secs_f64(),
        arrival_limit_secs: options.arrival_limit.as_secs_f64(),
        arrival_machine_busy,
        changes_machine_busy,
        agents: figures,
        changes,
    })
}

/// Each agent's [`PROPAGATION`] buckets (empty for one whose /metrics did not answer).
async fn propagation_buckets(
    agents: &[Agent],
    say: &(dyn Fn(&str) + Sync),
) -> Vec<Vec<(f64, u64)>> {
    let mut all = Vec::with_capacity(agents.len());
    for agent in agents {
        let address = format!("{}:{METRICS_PORT}", agent.addr);
        all.push(match crate::scale::http_get(&address, "/metrics").await {
            Ok(text) => histogram_buckets(&text, PROPAGATION),
            Err(error) => {
                say(&format!(
                    "agents: {}'s /metrics did not answer: {error:#}",
                    agent.node
                ));
                Vec::new()
            }
        });
    }
    all
}

/// A histogram's cumulative buckets in Prometheus' text format: (upper bound, count),
/// `+Inf` last as `f64::MAX` (JSON has no infinity: the results file would not read back).
fn histogram_buckets(text: &str, name: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|line| {
            let (le, count) = line.strip_prefix(&prefix)?.split_once("\"} ")?;
            let le = match le {
                "+Inf" => f64::MAX,
                le => le.parse().ok()?,
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// What was observed between two readings of a histogram's buckets (none when either
/// is missing or their bounds differ).
fn bucket_difference(before: &[(f64, u64)], after: &[(f64, u64)]) -> Vec<(f64, u64)> {
    if before.len() != after.len() || before.iter().zip(after).any(|(b, a)| b.0 != a.0) {
        return Vec::new();
    }
    before
        .iter()
        .zip(after)
        .map(|((le, before), (_, after))| (*le, after.saturating_sub(*before)))
        .collect()
}

/// The upper bound of the bucket the `q` quantile (0..1) falls in; None without
/// observations.
pub fn bucket_quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    buckets
        .iter()
        .find(|(_, count)| *count >= rank)
        .map(|(le, _)| *le)
}

/// Whether an agent serves Service `key` with all its `endpoints`.
fn programmed(value: Option<ServiceValue>, endpoints: usize) -> bool {
    value.is_some_and(|value| value.backend_count as usize == endpoints)
}

/// When each agent had every Service programmed (None: stopped first). Services are
/// checked in the order they are applied, each agent from the first it has not shown yet,
/// so a round costs a lookup per newly programmed Service and one more per agent.
fn arrival_poll(
    agents: &[Agent],
    services: usize,
    endpoints: usize,
    stop: &AtomicBool,
) -> Vec<Option<Instant>> {
    let keys: Vec<ServiceKey> = (0..services).map(key).collect();
    let mut next = vec![0usize; agents.len()];
    let mut done = vec![None; agents.len()];
    while done.iter().any(Option::is_none) && !stop.load(Ordering::SeqCst) {
        for (i, agent) in agents.iter().enumerate() {
            while next[i] < services && programmed(agent.services.get(&keys[next[i]]), endpoints) {
                next[i] += 1;
            }
            if next[i] == services && done[i].is_none() {
                done[i] = Some(Instant::now());
            }
        }
        std::thread::sleep(ARRIVAL_POLL);
    }
    done
}

/// When each agent's entry for `key` stopped being what it was `before` (None: not within
/// [`CHANGE_LIMIT`]).
fn change_poll(
    agents: &[Agent],
    key: &ServiceKey,
    before: &[Option<ServiceValue>],
) -> Vec<Option<Instant>> {
    let limit = Instant::now() + CHANGE_LIMIT;
    let mut seen = vec![None; agents.len()];
    while seen.iter().any(Option::is_none) && Instant::now() < limit {
        for (i, agent) in agents.iter().enumerate() {
            if seen[i].is_none() && agent.services.get(key) != before[i] {
                seen[i] = Some(Instant::now());
            }
        }
        std::thread::sleep(CHANGE_POLL);
    }
    seen
}

/// The kernel's memory for the BPF maps process `pid` holds (the `memlock` of each map,
/// counted once however many descriptors it has), and of those the maps in
/// [`SERVICE_MAPS`] pinned in `pins`.
fn bpf_memory(pid: u32, pins: &Path) -> anyhow::Result<(u64, u64)> {
    let maps = held_maps(pid)?;
    let mut service = 0;
    for name in SERVICE_MAPS {
        let path = pins.join(name);
        let id = MapData::from_pin(&path)
            .and_then(|data| data.info())
            .with_context(|| format!("opening {}", path.display()))?
            .id();
        service += maps.get(&id).copied().unwrap_or(0);
    }
    Ok((maps.values().sum(), service))
}

/// Map id → memlock bytes of every BPF map among process `pid`'s descriptors.
fn held_maps(pid: u32) -> anyhow::Result<BTreeMap<u32, u64>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut maps = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        // Descriptors come and go while it runs: one gone since the listing is skipped.
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        if let Some((id, memlock)) = map_fdinfo(&text) {
            maps.insert(id, memlock);
        }
    }
    Ok(maps)
}

/// (map_id, memlock) of a BPF map descriptor's fdinfo; None for other descriptors.
fn map_fdinfo(text: &str) -> Option<(u32, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    field("map_type")?;
    Some((
        field("map_id")?.parse().ok()?,
        field("memlock")?.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_of_a_map_gives_its_id_and_memlock() {
        let map = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t1\n\
                   key_size:\t8\nvalue_size:\t28\nmax_entries:\t20000\nmap_flags:\t0x0\n\
                   map_extra:\t0x0\nmemlock:\t1837408\nmap_id:\t42\nfrozen:\t0\n";
        assert_eq!(map_fdinfo(map), Some((42, 1_837_408)));
        let file = "pos:\t0\nflags:\t0100002\nmnt_id:\t29\nino:\t4242\n";
        assert_eq!(map_fdinfo(file), None);
    }

    #[test]
    fn a_histogram_read_twice_gives_what_was_observed_between() {
        let text = |counts: [u64; 3]| {
            format!(
                "# TYPE berth_datapath_propagation_seconds histogram\n\
                 berth_datapath_propagation_seconds_bucket{{le=\"0.001\"}} {}\n\
                 berth_datapath_propagation_seconds_bucket{{le=\"0.01\"}} {}\n\
                 berth_datapath_propagation_seconds_bucket{{le=\"+Inf\"}} {}\n\
                 berth_datapath_propagation_seconds_sum 1.5\n\
                 berth_datapath_apply_duration_seconds_bucket{{le=\"0.001\"}} 7\n",
                counts[0], counts[1], counts[2]
            )
        };
        let before = histogram_buckets(&text([10, 20, 20]), PROPAGATION);
        assert_eq!(before, [(0.001, 10), (0.01, 20), (f64::MAX, 20)]);
        let after = histogram_buckets(&text([100, 198, 200]), PROPAGATION);
        let between = bucket_difference(&before, &after);
        assert_eq!(between, [(0.001, 90), (0.01, 178), (f64::MAX, 180)]);
        // 90 of 180 up to 1 ms, 178 up to 10 ms.
        assert_eq!(bucket_quantile(&between, 0.5), Some(0.001));
        assert_eq!(bucket_quantile(&between, 0.9), Some(0.01));
        assert_eq!(bucket_quantile(&between, 0.99), Some(f64::MAX));
        assert_eq!(bucket_difference(&before, &[]), []);
        assert_eq!(bucket_quantile(&[(0.001, 0), (f64::MAX, 0)], 0.99), None);
    }

    #[test]
    fn clusterips_stay_in_the_default_service_range() {
        assert_eq!(cluster_ip(0), Ipv4Addr::new(198, 18, 192, 16));
        let last = u32::from(cluster_ip(MAX_SERVICES - 1));
        assert!(last < u32::from_be_bytes([198, 19, 0, 0]));
    }

    #[test]
    fn a_change_replaces_one_address_by_one_no_service_had() {
        let addresses = |index, changed| -> Vec<String> {
            objects(index, 10, 100, changed, "n")[1]["endpoints"]
                .as_array()
                .expect("endpoints")
                .iter()
                .map(|endpoint| endpoint["addresses"][0].as_str().expect("ip").to_owned())
                .collect()
        };
        let (before, after) = (addresses(7, false), addresses(7, true));
        assert_ne!(before[0], after[0]);
        assert_eq!(before[1..], after[1..], "the rest stays");
        let every: std::collections::BTreeSet<String> = (0..100)
            .flat_map(|index| addresses(index, false))
            .chain((0..100).map(|index| addresses(index, true)[0].clone()))
            .collect();
        assert_eq!(every.len(), 100 * 10 + 100, "no address is on two Services");
    }

    #[test]
    fn changes_go_to_services_of_their_own() {
        for services in [200, 7919, 10_000] {
            let changed: std::collections::BTreeSet<usize> =
                (0..200).map(|c| changed_service(c, services)).collect();
            assert_eq!(changed.len(), 200, "{services} Services");
        }
    }

    #[test]
    fn the_last_agent_and_misses_come_from_every_agent_figure() {
        let results = AgentsResults {
            smoke: true,
            started: String::new(),
            elapsed_secs: 0.0,
            binaries: "debug".into(),
            services: 2,
            endpoints_per_service: 10,
            manifest: MANIFEST,
            applying_secs: 1.0,
            arrival_limit_secs: 60.0,
            arrival_machine_busy: 0.5,
            changes_machine_busy: 0.5,
            agents: Vec::new(),
            changes: vec![
                Change {
                    service: 0,
                    apply_ms: 1.0,
                    agent_ms: vec![Some(2.0), Some(5.0)],
                },
                Change {
                    service: 1,
                    apply_ms: 1.0,
                    agent_ms: vec![Some(3.0), None],
                },
            ],
        };
        assert_eq!(results.last_agent_ms(), vec![5.0]);
        assert_eq!(results.agent_ms(1), vec![5.0]);
        assert_eq!(results.all_ms().len(), 3);
        assert_eq!(results.missed(), 1);
    }
}
