//! The control plane at scale (issue 8, item 4), with simulated agents.
//!
//! The real `berth-control` (release build) runs in a network namespace of its own, and
//! the benchmark joins hollow nodes to it (`berth_sim::hollow`, kubemark's idea): each
//! speaks the real agent API over its own mTLS connection — bootstrap-token join, a
//! heartbeat every [`HEARTBEAT`] like a real agent, a pod watch and a Services/Endpoints
//! watch — and reports each pod bound to it running and ready at once. Times are taken
//! where users would see them: on the nodes.
//!
//! Per cluster size (1,000 and 5,000 nodes, a fresh control plane each):
//! - **endpoint propagation**: a Service and a Deployment scaled up one replica at a time;
//!   from a pod's node reporting it ready (just before the report) until each node's watch
//!   delivers the Endpoints that list it, and until the last node has it;
//! - **scheduling**: one Deployment of 50,000 replicas; from its creation until the last
//!   pod arrived on its node's pod watch (so the ReplicaSet controller's pod creation, the
//!   scheduler, the store and the watches are all in it);
//! - the control plane's resident memory after each step.
//!
//! Then memory with 10,000 Services × 10 endpoints (Services without selectors and their
//! Endpoints, as a user writes them): the control plane's, and that of one real
//! `berth-agent` that has programmed them all into its datapath.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use berth_ctl::client::Client;
use berth_sim::hollow::{HollowHandle, HollowNode, Timeline};
use berth_testkit::{PinDir, netns::NetNs};
use berth_tests::process::{NODE_ADDR, binary};
use futures_util::{StreamExt as _, stream};
use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::procs::{Guarded, check_interrupted, machine_cpu, process_cpu_time};

/// A real agent's heartbeat period (agent/src/run.rs).
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// Pod CIDRs are /24 per node: a /10 has room for 16,384 nodes. Hollow nodes send no
/// traffic; these addresses exist only in the store.
const CLUSTER_CIDR: &str = "10.64.0.0/10";
/// Joins in flight at once (each one a key, a CSR and two TLS handshakes).
const JOINING: usize = 64;
/// REST writes in flight at once while creating Services.
const WRITING: usize = 16;
const PROPAGATION_SERVICE: &str = "prop";
const SCALE_DEPLOYMENT: &str = "scale";

pub struct Options {
    pub smoke: bool,
    pub node_counts: Vec<usize>,
    pub pods: usize,
    /// Pods turned ready one at a time for the propagation figures.
    pub propagation_pods: usize,
    pub services: usize,
    pub endpoints_per_service: usize,
    /// Longest wait for the 50,000 pods.
    pub scheduling_limit: Duration,
}

pub fn options(smoke: bool) -> Options {
    if smoke {
        Options {
            smoke,
            node_counts: vec![20],
            pods: 200,
            propagation_pods: 5,
            services: 100,
            endpoints_per_service: 10,
            scheduling_limit: Duration::from_secs(120),
        }
    } else {
        Options {
            smoke,
            node_counts: vec![1_000, 5_000],
            pods: 50_000,
            propagation_pods: 100,
            services: 10_000,
            endpoints_per_service: 10,
            scheduling_limit: Duration::from_secs(900),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleResults {
    pub smoke: bool,
    pub started: String,
    pub elapsed_secs: f64,
    pub heartbeat_secs: f64,
    pub clusters: Vec<ClusterRun>,
    pub memory: Memory,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRun {
    pub nodes: usize,
    /// Time to join every node (the benchmark's own setup).
    pub join_secs: f64,
    pub propagation: Propagation,
    pub scheduling: Scheduling,
    pub control_rss_bytes: RssSteps,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RssSteps {
    pub joined: u64,
    pub after_propagation: u64,
    pub after_scheduling: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Propagation {
    pub pods: usize,
    /// Milliseconds from a pod reported ready to one node having it, over every (pod,
    /// node) pair: its percentiles 0 to 100 (half a million pairs at 5,000 nodes are too
    /// many to keep in results.json).
    pub per_node_ms: Vec<f64>,
    /// Milliseconds from a pod reported ready to the last node having it, per pod.
    pub all_nodes_ms: Vec<f64>,
    /// (pod, node) pairs that never saw the address within the wait.
    pub missed: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scheduling {
    pub pods: usize,
    /// Pods that arrived on their nodes within the limit.
    pub arrived: usize,
    /// From the Deployment's creation to the first and the last pod on its node.
    pub first_secs: f64,
    pub last_secs: f64,
    /// Arrivals per second over the whole run.
    pub pods_per_second: f64,
    /// Arrivals in each second from the Deployment's creation (the rate as it went).
    pub per_second: Vec<usize>,
    /// CPU time the control plane used over the run, in seconds (0 in results from
    /// before it was measured).
    #[serde(default)]
    pub control_cpu_secs: f64,
    /// The whole machine's busy and total CPU time over the run, in seconds: the
    /// simulated nodes, the control plane and anything else running.
    #[serde(default)]
    pub machine_busy_secs: f64,
    #[serde(default)]
    pub machine_total_secs: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub services: usize,
    pub endpoints_per_service: usize,
    pub control_rss_bytes: u64,
    pub agent_rss_bytes: u64,
    /// From the agent's start until its datapath held every Service.
    pub agent_programmed_secs: f64,
}

/// Runs the part; `say` prints progress.
pub fn run(options: &Options, say: &(dyn Fn(&str) + Sync)) -> anyhow::Result<ScaleResults> {
    let started = Instant::now();
    let started_at = crate::procs::now_utc();
    let mut clusters = Vec::new();
    for &nodes in &options.node_counts {
        clusters.push(in_cluster_namespace(|ns| async move {
            cluster_run(ns, nodes, options, say).await
        })?);
    }
    let memory = in_cluster_namespace(|ns| async move { memory_run(ns, options, say).await })?;
    Ok(ScaleResults {
        smoke: options.smoke,
        started: started_at,
        elapsed_secs: started.elapsed().as_secs_f64(),
        heartbeat_secs: HEARTBEAT.as_secs_f64(),
        clusters,
        memory,
    })
}

/// Runs `body` on a runtime whose threads are all in a fresh network namespace, so the
/// control plane, the hollow nodes and the agent talk over that namespace's loopback;
/// the namespace is deleted afterwards, also on failure.
pub(crate) fn in_cluster_namespace<T, F, Fut>(body: F) -> anyhow::Result<T>
where
    F: FnOnce(String) -> Fut + Send,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
    T: Send,
{
    let ns = NetNs::new("bscale").map_err(|error| anyhow::anyhow!("namespace: {error}"))?;
    ns.ip(&["addr", "add", &format!("{NODE_ADDR}/32"), "dev", "lo"])
        .map_err(|error| anyhow::anyhow!("node address: {error}"))?;
    let name = ns.name().to_owned();
    in_namespace(&name, || body(name.clone()))
}

/// Runs `body` on a runtime whose threads are all in network namespace `name`.
pub fn in_namespace<T, F, Fut>(name: &str, body: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
    T: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                berth_net::enter_netns(name)?;
                let entering = name.to_owned();
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .on_thread_start(move || {
                        if let Err(error) = berth_net::enter_netns(&entering) {
                            eprintln!("entering {entering}: {error}");
                        }
                    })
                    .build()
                    .context("starting tokio")?;
                runtime.block_on(body())
            })
            .join()
            .map_err(|panic| {
                anyhow::anyhow!(
                    "the benchmark's thread in {name} panicked: {}",
                    crate::procs::panic_message(panic.as_ref())
                )
            })?
    })
}

/// The control plane of one run, killed when dropped.
pub(crate) struct Control {
    process: Guarded,
    data: tempfile::TempDir,
    client: Client,
}

impl Control {
    async fn start(ns: &str, log: &Path) -> anyhow::Result<Control> {
        Self::start_with(ns, log, &[]).await
    }

    /// With `extra` arguments (another store).
    pub(crate) async fn start_with(
        ns: &str,
        log: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Control> {
        let data = tempfile::tempdir().context("data directory")?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns])
            .arg(binary("berth-control"))
            .arg("--data-dir")
            .arg(data.path())
            .args(["--listen", "127.0.0.1:6443"])
            .args(["--agent-listen", "127.0.0.1:6444"])
            .args(["--cluster-cidr", CLUSTER_CIDR])
            .args(["--log", "warn"])
            .args(extra);
        let mut process = Guarded::spawn("berth-control", command, log)?;
        let admin = data.path().join("admin.conf");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            process.check_running()?;
            if admin.exists() {
                let client = Client::from_kubeconfig(&admin).context("admin.conf")?;
                if client
                    .json(Method::GET, "/api/v1/nodes", None)
                    .await
                    .is_ok()
                {
                    return Ok(Control {
                        process,
                        data,
                        client,
                    });
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "berth-control did not answer within 30 s (log: {})",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pki(&self, file: &str) -> anyhow::Result<String> {
        let path = self.data.path().join("pki").join(file);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    fn rss(&self) -> u64 {
        rss_bytes(self.process.pid())
    }

    /// A write that must succeed.
    async fn write(&self, method: Method, path: &str, body: &Value) -> anyhow::Result<Value> {
        write(&self.client, method, path, body).await
    }
}

/// A write to the control plane that must succeed; its answer.
pub async fn write(
    client: &Client,
    method: Method,
    path: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let (status, reply) = client
        .json(method, path, Some(body))
        .await
        .with_context(|| path.to_owned())?;
    if !status.is_success() {
        bail!("{path}: {status}: {}", reply["message"]);
    }
    Ok(reply)
}

/// `VmRSS` of a process, in bytes (0 once it is gone).
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| berth_agent::usage::meminfo_bytes(&status, "VmRSS"))
        .unwrap_or(0)
}

pub(crate) fn log_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("berth-bench-{}-{name}.log", std::process::id()))
}

async fn join_nodes(
    control: &Control,
    count: usize,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Vec<HollowHandle>> {
    let ca = control.pki("ca.crt")?;
    let token = control.pki("bootstrap-token")?;
    let endpoint = "https://127.0.0.1:6444";
    let mut joined = Vec::with_capacity(count);
    let mut joining = stream::iter(0..count)
        .map(|i| {
            let (ca, token) = (ca.clone(), token.clone());
            async move {
                let name = format!("hollow-{i:05}");
                let node = HollowNode::join(endpoint, &ca, &token, &name)
                    .await
                    .with_context(|| format!("{name} joining"))?
                    .track_endpoints([format!("default/{PROPAGATION_SERVICE}")]);
                node.start(HEARTBEAT)
                    .await
                    .with_context(|| format!("{name} starting"))
            }
        })
        .buffer_unordered(JOINING);
    while let Some(node) = joining.next().await {
        joined.push(node?);
        if joined.len() % 500 == 0 || joined.len() == count {
            say(&format!(
                "scale: {} of {count} hollow nodes joined",
                joined.len()
            ));
            check_interrupted()?;
        }
    }
    Ok(joined)
}

async fn cluster_run(
    ns: String,
    nodes: usize,
    options: &Options,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<ClusterRun> {
    let log = log_path(&format!("control-{nodes}"));
    cluster_run_on(&Control::start(&ns, &log).await?, nodes, options, say).await
}

/// One cluster's figures on `control`, a control plane just started.
pub(crate) async fn cluster_run_on(
    control: &Control,
    nodes: usize,
    options: &Options,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<ClusterRun> {
    say(&format!(
        "scale: {nodes} nodes: control plane up, joining hollow nodes"
    ));
    let joining = Instant::now();
    let hollow = join_nodes(control, nodes, say).await?;
    let join_secs = joining.elapsed().as_secs_f64();
    // A watch that fell out of the control plane's window lists everything again: at
    // thousands of nodes, these relists are what turns joining worse than quadratic.
    let resyncs: usize = hollow.iter().map(HollowHandle::resyncs).sum();
    say(&format!(
        "scale: {nodes} nodes joined in {join_secs:.1} s; their watches started over {resyncs} times"
    ));
    let joined_rss = control.rss();
    let propagation = propagation(control, &hollow, options.propagation_pods, say).await?;
    let after_propagation = control.rss();
    let scheduling = scheduling(control, &hollow, options, say).await?;
    let after_scheduling = control.rss();
    say(&format!(
        "scale: {nodes} nodes: {:.0} pods/s; propagation p50 {:.1} ms, p99 {:.1} ms to every node; control plane {} MiB",
        scheduling.pods_per_second,
        percentile(&propagation.all_nodes_ms, 0.5),
        percentile(&propagation.all_nodes_ms, 0.99),
        after_scheduling >> 20
    ));
    drop(hollow);
    Ok(ClusterRun {
        nodes,
        join_secs,
        propagation,
        scheduling,
        control_rss_bytes: RssSteps {
            joined: joined_rss,
            after_propagation,
            after_scheduling,
        },
    })
}

fn deployment(name: &str, replicas: usize) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "main",
                    "image": "berth/echo:v1",
                    "ports": [{"containerPort": 8080}],
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                }]},
            },
        },
    })
}

async fn scale_to(control: &Control, name: &str, replicas: usize) -> anyhow::Result<()> {
    let path = format!("/apis/apps/v1/namespaces/default/deployments/{name}/scale");
    let scale = json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": replicas},
    });
    control.write(Method::PUT, &path, &scale).await.map(drop)
}

/// Scales a Deployment behind a Service up one pod at a time and times how long each new
/// ready address takes to reach every node.
async fn propagation(
    control: &Control,
    hollow: &[HollowHandle],
    pods: usize,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Propagation> {
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": PROPAGATION_SERVICE, "namespace": "default"},
        "spec": {"selector": {"app": PROPAGATION_SERVICE}, "ports": [{"port": 80, "targetPort": 8080}]},
    });
    control
        .write(
            Method::POST,
            "/api/v1/namespaces/default/services",
            &service,
        )
        .await?;
    control
        .write(
            Method::POST,
            "/apis/apps/v1/namespaces/default/deployments",
            &deployment(PROPAGATION_SERVICE, 0),
        )
        .await?;
    let mut known: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut per_node_ms = Vec::new();
    let mut all_nodes_ms = Vec::new();
    let mut missed = 0;
    for replicas in 1..=pods {
        scale_to(control, PROPAGATION_SERVICE, replicas).await?;
        // The new pod: the one address reported ready that was not there before.
        let deadline = Instant::now() + Duration::from_secs(30);
        let (address, ready_at) = loop {
            let fresh = hollow.iter().find_map(|node| node.pod_ready_except(&known));
            if let Some(fresh) = fresh {
                break fresh;
            }
            if Instant::now() > deadline {
                bail!(
                    "replica {replicas} of {PROPAGATION_SERVICE} was not reported ready within 30 s"
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        known.insert(address.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !hollow.iter().all(|node| node.has_endpoint(&address)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut last = 0.0f64;
        for node in hollow {
            let seen = node.endpoint_seen_at(&address);
            match seen {
                Some(seen) => {
                    let ms = millis_between(ready_at, seen);
                    per_node_ms.push(ms);
                    last = last.max(ms);
                }
                None => missed += 1,
            }
        }
        all_nodes_ms.push(last);
        if replicas % 20 == 0 || replicas == pods {
            say(&format!(
                "scale: {} nodes: propagation {replicas}/{pods}: last node after {last:.1} ms",
                hollow.len()
            ));
            check_interrupted()?;
        }
        // Lets the heartbeats and status reports of the previous step settle.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Propagation {
        pods,
        per_node_ms: (0..=100)
            .map(|i| percentile(&per_node_ms, f64::from(i) / 100.0))
            .collect(),
        all_nodes_ms,
        missed,
    })
}

/// Milliseconds from `from` to `to`; an event seen "before" it was reported (the
/// Endpoints can arrive while the report's reply is still on its way) counts as 0.
fn millis_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1e3
}

async fn scheduling(
    control: &Control,
    hollow: &[HollowHandle],
    options: &Options,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Scheduling> {
    let pods = options.pods;
    let already: usize = hollow.iter().map(HollowHandle::pods_arrived).sum();
    say(&format!(
        "scale: {} nodes: creating a Deployment of {pods} replicas",
        hollow.len()
    ));
    let control_cpu_before = process_cpu_time(control.process.pid());
    let (busy_before, total_before) = machine_cpu();
    let created = Instant::now();
    control
        .write(
            Method::POST,
            "/apis/apps/v1/namespaces/default/deployments",
            &deployment(SCALE_DEPLOYMENT, pods),
        )
        .await?;
    let deadline = created + options.scheduling_limit;
    let mut last_report = Instant::now();
    loop {
        let arrived = hollow.iter().map(HollowHandle::pods_arrived).sum::<usize>() - already;
        if arrived >= pods || Instant::now() > deadline {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            say(&format!(
                "scale: {} nodes: {arrived} of {pods} pods on their nodes after {:.0} s",
                hollow.len(),
                created.elapsed().as_secs_f64()
            ));
            check_interrupted()?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let control_cpu = process_cpu_time(control.process.pid()).saturating_sub(control_cpu_before);
    let (busy_after, total_after) = machine_cpu();
    let prefix = format!("default/{SCALE_DEPLOYMENT}-");
    let arrivals: Vec<f64> = hollow
        .iter()
        .flat_map(|node| {
            let Timeline { pods_arrived, .. } = node.timeline();
            pods_arrived
                .into_iter()
                .filter(|(key, _)| key.starts_with(&prefix))
                .map(|(_, at)| at.saturating_duration_since(created).as_secs_f64())
                .collect::<Vec<_>>()
        })
        .collect();
    let first_secs = arrivals.iter().copied().fold(f64::INFINITY, f64::min);
    let last_secs = arrivals.iter().copied().fold(0.0, f64::max);
    let mut per_second = vec![0usize; last_secs.ceil() as usize + 1];
    for at in &arrivals {
        per_second[*at as usize] += 1;
    }
    Ok(Scheduling {
        pods,
        arrived: arrivals.len(),
        first_secs: if first_secs.is_finite() {
            first_secs
        } else {
            0.0
        },
        last_secs,
        pods_per_second: if last_secs > 0.0 {
            arrivals.len() as f64 / last_secs
        } else {
            0.0
        },
        per_second,
        control_cpu_secs: control_cpu.as_secs_f64(),
        machine_busy_secs: busy_after.saturating_sub(busy_before).as_secs_f64(),
        machine_total_secs: total_after.saturating_sub(total_before).as_secs_f64(),
    })
}

/// 10,000 Services × 10 endpoints: the control plane's memory, and one real agent's once
/// it has programmed them all.
async fn memory_run(
    ns: String,
    options: &Options,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Memory> {
    let control = Control::start(&ns, &log_path("control-memory")).await?;
    let services = options.services;
    say(&format!(
        "scale: creating {services} Services with {} endpoints each",
        options.endpoints_per_service
    ));
    let mut writes = stream::iter(0..services)
        .map(|i| {
            let control = &control;
            async move {
                let name = format!("svc-{i:05}");
                control
                    .write(
                        Method::POST,
                        "/api/v1/namespaces/default/services",
                        &json!({
                            "apiVersion": "v1", "kind": "Service",
                            "metadata": {"name": name, "namespace": "default"},
                            "spec": {"ports": [{"port": 80, "targetPort": 8080}]},
                        }),
                    )
                    .await?;
                let addresses: Vec<Value> = (0..options.endpoints_per_service)
                    .map(|e| {
                        let n = i * options.endpoints_per_service + e;
                        json!({"ip": format!("10.{}.{}.{}", 64 + n / 65_536, n / 256 % 256, n % 256)})
                    })
                    .collect();
                control
                    .write(
                        Method::POST,
                        "/api/v1/namespaces/default/endpoints",
                        &json!({
                            "apiVersion": "v1", "kind": "Endpoints",
                            "metadata": {"name": name, "namespace": "default"},
                            "subsets": [{"addresses": addresses, "ports": [{"port": 8080}]}],
                        }),
                    )
                    .await
                    .map(drop)
            }
        })
        .buffer_unordered(WRITING);
    let mut written = 0;
    while let Some(result) = writes.next().await {
        result?;
        written += 1;
        if written % 1000 == 0 {
            say(&format!("scale: {written} of {services} Services"));
            check_interrupted()?;
        }
    }
    drop(writes);
    let control_rss = control.rss();

    say("scale: starting a berth-agent to program them");
    let agent_started = Instant::now();
    let (mut agent, _state, pins) = start_agent(&ns, &control)?;
    wait_programmed(
        &mut agent,
        services,
        agent_started + Duration::from_secs(300),
    )
    .await?;
    let agent_programmed_secs = agent_started.elapsed().as_secs_f64();
    // Settled: what it holds while serving them, not the peak of the first apply.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let agent_rss = rss_bytes(agent.pid());
    say(&format!(
        "scale: {services} Services: control plane {} MiB, agent {} MiB (programmed after {agent_programmed_secs:.1} s)",
        control_rss >> 20,
        agent_rss >> 20
    ));
    drop(agent);
    drop(pins);
    Ok(Memory {
        services,
        endpoints_per_service: options.endpoints_per_service,
        control_rss_bytes: control_rss,
        agent_rss_bytes: agent_rss,
        agent_programmed_secs,
    })
}

/// A berth-agent in `ns` joined to `control` as node `agent-0`, with its state and pin
/// directories (removed when dropped).
fn start_agent(
    ns: &str,
    control: &Control,
) -> anyhow::Result<(Guarded, tempfile::TempDir, PinDir)> {
    let state = tempfile::tempdir().context("agent state directory")?;
    let pins = PinDir::new("bscale");
    // nsenter, not `ip netns exec`: the latter hides /sys/fs/bpf, where the agent pins.
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/run/netns/{ns}"))
        .arg(binary("berth-agent"))
        .args(["--node-name", "agent-0"])
        .args(["--server", "https://127.0.0.1:6444"])
        .arg("--ca-file")
        .arg(control.data.path().join("pki/ca.crt"))
        .arg("--bootstrap-token-file")
        .arg(control.data.path().join("pki/bootstrap-token"))
        .arg("--state-dir")
        .arg(state.path())
        .arg("--pin-dir")
        .arg(pins.path())
        .args(["--node-address", NODE_ADDR]);
    let agent = Guarded::spawn("berth-agent", command, &log_path("agent"))?;
    Ok((agent, state, pins))
}

/// Waits until the agent's datapath serves `services` Services (by the frontends it
/// reports; one per Service here), checking every 100 ms.
async fn wait_programmed(
    agent: &mut Guarded,
    services: usize,
    deadline: Instant,
) -> anyhow::Result<()> {
    loop {
        agent.check_running()?;
        check_interrupted()?;
        if programmed_services(&format!("{NODE_ADDR}:9102")).await >= services {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the agent did not program {services} Services in time");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Services in the agent's datapath, from its /metrics (0 while it does not answer).
async fn programmed_services(metrics: &str) -> usize {
    let Ok(text) = http_get(metrics, "/metrics").await else {
        return 0;
    };
    text.lines()
        .find_map(|line| line.strip_prefix("berth_datapath_service_frontends "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map_or(0, |value| value as usize)
}

pub(crate) async fn http_get(address: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(address),
    )
    .await??;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut body)).await??;
    Ok(body)
}

/// The `q` quantile (0..1) of `values`, nearest rank; 0 for none.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
