//! The agent process: joins the cluster, then keeps three things in step with the control
//! plane — the node's pods (Docker), the datapath (eBPF maps) and the DNS records — and
//! reports back pod status and node heartbeats. Everything it serves keeps being served
//! while the control plane is away: the last known state stays programmed and crashed
//! containers keep being restarted.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use berth_api::{
    agent::{HeartbeatRequest, NodeUsage, PodDeletion, PodStatusReport, agent_client::AgentClient},
    core::{Node, Pod},
};
use berth_watch::Objects;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::{
    cluster::{self, ClusterEvent, ClusterState, Update},
    config::Config,
    controlplane::{self, ControlPlaneError, Membership},
    datapath::{
        self, ConntrackSweeper, Datapath, DatapathOptions, Limits, NeighbourKeeper, TrafficReader,
        monotonic_secs,
    },
    dns::DnsServer,
    enforcer,
    ipam::Cidr,
    metrics::AgentMetrics,
    nodeapi::{NodeApi, NodeApiTls},
    podnet,
    pods::{BackoffConfig, PodDesired, PodEvent, PodManager, PodManagerConfig, PodReport},
    programmer::{Programmer, Work},
    readiness::{self, LocalReadiness},
    routing::{self, KernelUnderlay, NodeRoute},
    runtime::DockerRuntime,
    services,
    statefile::StateFile,
    usage::{self, BackendRates, Collector},
};

const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// How often a state file write that failed (a full disk) is tried again.
const STATE_RETRY: Duration = Duration::from_secs(5);

/// After a start, how long a pod the control plane knows as ready is not reported
/// unready: an adopted container's probes have not run yet, and reporting it unready would
/// take it out of every node's endpoints (resetting its connections) for nothing. Long
/// enough for the first probes (period 1 s, timeout 1 s) to decide.
const ADOPTION_GRACE: Duration = Duration::from_secs(5);
/// Kubernetes Events waiting to be sent to the control plane (client-go's recorder
/// queues 1,000 too).
const POD_EVENT_QUEUE: usize = 1000;

fn ready_in_api(pods: &[Pod], uid: &str) -> bool {
    pods.iter()
        .filter(|pod| pod.metadata.uid == uid)
        .filter_map(|pod| pod.status.as_ref())
        .flat_map(|status| &status.conditions)
        .any(|condition| condition.type_ == "Ready" && condition.status == "True")
}

/// CPU (cores) and memory (bytes) the node offers.
fn node_capacity() -> (u64, u64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| usage::meminfo_bytes(&text, "MemTotal"))
        .unwrap_or(0);
    (cpus as u64, memory)
}

/// CPU and memory the node offers, as Kubernetes quantities.
fn allocatable() -> serde_json::Value {
    let (cpus, memory) = node_capacity();
    json!({"cpu": cpus.to_string(), "memory": format!("{}Ki", memory / 1024)})
}

/// Why the agent stopped without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The node certificate was renewed and stored: the agent must start again to use
    /// it everywhere (the node API's server certificate and every connection to the
    /// control plane). A restart leaves containers and the datapath untouched.
    CertificateRenewed,
}

pub async fn run(config: Config) -> anyhow::Result<Ended> {
    let started = Instant::now();
    let membership = connect_when_reachable(&config)
        .await
        .context("connecting to the control plane")?;
    let pod_cidr: Cidr = membership
        .pod_cidr
        .parse()
        .with_context(|| format!("pod range {:?} from the control plane", membership.pod_cidr))?;
    let node_id = services::node_id(&Node {
        spec: berth_api::core::NodeSpec {
            pod_cidr: membership.pod_cidr.clone(),
            ..berth_api::core::NodeSpec::default()
        },
        ..Node::default()
    })
    .context("the node's pod range has no network address")?;

    // Pods' traffic is routed through the node: forwarding must be on (a CNI plugin or
    // kubelet's prerequisites would say the same).
    crate::net::sysctl_set(None, "net/ipv4/ip_forward", "1").context("enabling IPv4 forwarding")?;
    let mut datapath = Datapath::open(DatapathOptions {
        pin_dir: config.pin_dir.clone(),
        node_id,
        node_addr: config.node_address,
        limits: Limits::default(),
    })
    .context("opening the eBPF datapath")?;
    if let Some(interface) = &config.external_interface {
        datapath
            .attach_external_interface(interface, config.xdp_mode)
            .with_context(|| format!("attaching XDP to {interface}"))?;
    }
    // The link holding the node's address carries the traffic to other nodes and out of
    // the cluster: the tunnel's and the masquerade's programs go there (in native mode
    // no range is tunnelled), and with a tunnel its MTU less the overhead is the pods'.
    let underlay_link = KernelUnderlay::read(None)
        .context("reading the node's addresses")?
        .link_of(config.node_address);
    let non_masquerade: Vec<(Ipv4Addr, u8)> = config
        .non_masquerade_cidrs
        .iter()
        .map(|cidr| (cidr.network(), cidr.prefix()))
        .collect();
    datapath
        .masquerade(&non_masquerade)
        .context("configuring the masquerade")?;
    let pod_mtu = match &underlay_link {
        Some(link) => {
            datapath
                .attach_underlay_interface(&link.name)
                .with_context(|| format!("attaching the underlay programs to {}", link.name))?;
            config
                .routing_mode
                .may_tunnel()
                .then(|| config.routing_mode.pod_mtu(link.mtu))
        }
        None if config.routing_mode == routing::RoutingMode::Encapsulation => {
            anyhow::bail!(
                "no interface holds the node address {}: encapsulation needs it",
                config.node_address
            );
        }
        None => {
            tracing::warn!(node_address = %config.node_address, "no interface holds the node address: no tunnel to other nodes, no masquerade");
            None
        }
    };
    // The node's own connections to ClusterIPs (a health checker, a host agent) are
    // balanced at connect() by the socket program on the cgroup v2 root.
    match datapath::cgroup2_root() {
        Some(root) => datapath
            .attach_node_sockets(&root)
            .with_context(|| format!("attaching the socket program to {}", root.display()))?,
        None => {
            tracing::warn!(
                "no cgroup v2 hierarchy is mounted: the node's own connections to ClusterIPs are not balanced"
            );
            datapath
                .detach_node_sockets()
                .context("detaching the socket program")?;
        }
    }
    let sweeper = datapath
        .conntrack_sweeper()
        .context("opening the conntrack tables for the sweep")?;
    let policy_maps = datapath
        .policy_maps()
        .context("opening the NetworkPolicy maps")?;
    let policy_counters = datapath
        .policy_counters()
        .context("opening the NetworkPolicy verdict counters")?;
    let policy_log = datapath.take_policy_log();
    let datapath = Arc::new(Mutex::new(datapath));
    // None until the control plane's first Node list: routes of a restarted agent stay as
    // they are until then.
    let (routes_tx, routes_rx) = watch::channel(None::<Vec<NodeRoute>>);
    tokio::spawn(routing::run(
        NodeRoute {
            addr: config.node_address,
            pod_cidr,
        },
        config.routing_mode,
        datapath.clone(),
        routes_rx,
    ));
    let metrics = AgentMetrics::new(Some(datapath.clone()))?;
    let policy_names = enforcer::SharedPolicyNames::default();
    metrics.register_policies(policy_counters, policy_names.clone())?;
    if let Some(log) = policy_log {
        tokio::spawn(enforcer::log_drops(log, policy_names.clone()));
    }
    tokio::spawn(sweep_conntrack(
        sweeper,
        metrics.conntrack_collected.clone(),
    ));
    let (metrics_addr, _metrics_task) = metrics.serve(config.metrics_listen).await?;
    let dns = DnsServer::start(
        config.dns_listen,
        &config.cluster_domain,
        &config.dns_upstreams,
    )
    .await?;

    let runtime = DockerRuntime::connect(&config.docker_socket)
        .await
        .context("connecting to the Docker engine")?;
    let node_api_addr = NodeApi::new(runtime.clone(), &config.node_name, datapath.clone())
        .serve(
            config.node_api_listen,
            &NodeApiTls {
                cert_pem: membership.cert_pem.clone(),
                key_pem: membership.key_pem.clone(),
                ca_pem: membership.ca_pem.clone(),
            },
            config.node_api_max_connections,
        )
        .await?;
    let mut pods_config = PodManagerConfig::new(&config.node_name, pod_cidr);
    pods_config.pod_mtu = pod_mtu;
    pods_config.dns = Some((
        config.dns_listen.ip().to_string(),
        config.cluster_domain.clone(),
    ));
    pods_config.volumes_dir = config.state_dir.join("pods");
    pods_config.local_volume_dir = config.local_volume_dir.clone();
    pods_config.pids_limit = config.container_pids_limit;
    pods_config.log_rotation = Some(config.container_log_rotation);
    let (cpus, memory) = node_capacity();
    pods_config.allocatable = crate::runtime::Limits {
        cpu_millis: Some(cpus * 1000),
        memory_bytes: Some(memory),
    };
    let (manager, mut pod_events) = PodManager::new(runtime.clone(), pods_config)?;
    let (pod_configs, pod_waker) = (manager.configs(), manager.waker());
    // Until the control plane's snapshot arrives, the pods to run are the last ones it
    // sent: a restarted agent must neither tear down healthy pods nor stop restarting
    // crashed ones because the control plane is slow or away.
    let mut pods_file = StateFile::new(
        config.state_dir.join("pods.json"),
        metrics.state_write_failures.clone(),
        metrics.state_saved.clone(),
    );
    let remembered: Vec<Pod> = std::fs::read(pods_file.path())
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let (desired_tx, desired_rx) = watch::channel(desired_pods(&remembered));
    let (reports_tx, mut reports_rx) = watch::channel(Vec::<PodReport>::new());
    tokio::spawn(manager.run(desired_rx.clone(), reports_tx, std::future::pending()));
    tracing::info!(
        node = %config.node_name,
        %node_id,
        metrics = %metrics_addr,
        dns = %dns.local_addr(),
        node_api = %node_api_addr,
        "agent started in {:?}",
        started.elapsed()
    );

    let client = AgentClient::new(membership.channel.clone());
    let (figures_tx, figures_rx) = watch::channel(None);
    tokio::spawn(collect_figures(
        Figures {
            runtime,
            traffic: datapath
                .lock()
                .map_err(|_| anyhow::anyhow!("the datapath's lock is poisoned"))?
                .traffic_reader()
                .map(Arc::new)
                .context("opening the backends' counters")?,
            node: config.node_name.clone(),
        },
        figures_tx,
    ));
    tokio::spawn(heartbeats(
        client.clone(),
        config.node_address,
        Ports {
            node_api: node_api_addr.port(),
            metrics: metrics_addr.port(),
        },
        figures_rx,
    ));
    tokio::spawn(controlplane::follow_pod_configs(
        client.clone(),
        desired_rx,
        pod_configs,
        pod_waker,
        controlplane::CONFIG_REFRESH,
    ));
    tokio::spawn(controlplane::reclaim_local_volumes(
        client.clone(),
        config.local_volume_dir.clone(),
        controlplane::VOLUME_RECLAIM_EVERY,
    ));
    let (pods_tx, mut pods_rx) = mpsc::channel::<Objects>(16);
    let (services_tx, mut services_rx) = mpsc::channel(1024);
    tokio::spawn(controlplane::watch_pods(
        client.clone(),
        pods_tx,
        metrics.watch_streams.clone(),
    ));
    tokio::spawn(cluster::follow(
        client.clone(),
        services_tx,
        metrics.watch_streams.clone(),
    ));
    tokio::spawn(enforcer::enforce(
        client.clone(),
        policy_maps,
        enforcer::NodeSelf {
            name: config.node_name.clone(),
            addrs: vec![config.node_address],
        },
        policy_names.clone(),
    ));

    let mut readiness = LocalReadiness::default();
    let mut cluster = ClusterState::new(&config.node_name, &config.cluster_domain);
    let programmer = Programmer::start(datapath.clone(), metrics.clone())
        .context("starting the datapath thread")?;
    let (api_pods_tx, api_pods_rx) = watch::channel(remembered);
    tokio::spawn(report_pod_status(
        client.clone(),
        reports_rx.clone(),
        api_pods_rx,
        started,
        config.node_address,
    ));
    // Bounded, and an Event that finds it full is dropped: Events are best-effort (as
    // client-go's recorder drops them when its queue is full), and a control plane that
    // is away must not make the agent's memory grow with every pod action meanwhile.
    let (events_tx, events_rx) = mpsc::channel(POD_EVENT_QUEUE);
    tokio::spawn(record_pod_events(client.clone(), events_rx));
    // Host veths with the east-west programs attached, and their pods' addresses.
    let mut attached: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
    let mut logs = tokio::time::interval(Duration::from_secs(1));
    let mut state_retry = tokio::time::interval(STATE_RETRY);
    let neighbours = NeighbourKeeper::start().context("following the neighbour table")?;
    let renewal = controlplane::renew_certificate(&config, &membership);
    tokio::pin!(renewal);
    loop {
        tokio::select! {
            renewed = &mut renewal => {
                renewed.context("the node certificate")?;
                return Ok(Ended::CertificateRenewed);
            }
            Some(objects) = pods_rx.recv() => {
                let pods: Vec<Pod> = objects.of_kind("Pod");
                remember(&mut pods_file, &pods);
                desired_tx.send_replace(desired_pods(&pods));
                api_pods_tx.send_replace(pods);
            }
            Some((event, received)) = services_rx.recv() => {
                let node_event = matches!(&event, ClusterEvent::Changed { key, .. } if key.starts_with("Node "));
                let resync = matches!(event, ClusterEvent::Snapshot(_));
                match cluster.apply(event) {
                    Update::Resync { set, records } => {
                        dns.update(records);
                        warm_neighbours(&neighbours, &set.nodes, config.node_address);
                        programmer.send(Work::Resync(readiness.overlay(&set)), Some(received));
                    }
                    Update::Changes { mut services, dns: records, nodes } => {
                        // The datapath first: its thread writes while the zones are edited.
                        if let Some(nodes) = nodes {
                            warm_neighbours(&neighbours, &nodes, config.node_address);
                            programmer.send(Work::Nodes(nodes), None);
                        }
                        if !services.is_empty() {
                            let unready = readiness.addresses();
                            services.values_mut().flatten().for_each(|s| readiness::mark(&unready, s));
                            programmer.send(Work::Changes(services), Some(received));
                        }
                        for (before, after) in &records {
                            dns.replace(before, after).await;
                        }
                    }
                }
                if resync || node_event {
                    let node_routes = node_routes(cluster.nodes());
                    routes_tx.send_if_modified(|routes| {
                        let changed = routes.as_ref() != Some(&node_routes);
                        *routes = Some(node_routes);
                        changed
                    });
                }
            }
            Some(event) = pod_events.recv() => {
                let before = readiness.addresses();
                if readiness.observe(&event) {
                    // Only the services with a backend whose local readiness flipped.
                    let after = readiness.addresses();
                    let flipped = before.symmetric_difference(&after).copied().collect();
                    let services = cluster
                        .services_at(&flipped)
                        .into_iter()
                        .map(|mut service| {
                            readiness::mark(&after, &mut service);
                            (service.name.clone(), Some(service))
                        })
                        .collect();
                    programmer.send(Work::Changes(services), None);
                }
                if let PodEvent::Action(action) = &event {
                    tracing::info!(?action, "pod");
                    for kube_event in action.kube_events() {
                        if let Err(mpsc::error::TrySendError::Full((_, dropped))) =
                            events_tx.try_send((action.clone(), kube_event))
                        {
                            tracing::debug!(pod = %action.pod, reason = dropped.reason, "pod event dropped: the queue to the control plane is full");
                        }
                    }
                }
            }
            Ok(()) = reports_rx.changed() => {
                let reports = reports_rx.borrow_and_update().clone();
                attach_pod_programs(&datapath, &reports, &mut attached);
            }
            _ = logs.tick() => {
                if let Ok(mut datapath) = datapath.lock() {
                    datapath.flush_logs();
                }
            }
            _ = state_retry.tick(), if !pods_file.is_saved() => {
                pods_file.retry();
            }
        }
    }
}

/// Joins or reconnects, waiting out a control plane that does not answer yet (nodes and
/// the control plane start in any order, as kubelets and their API server do); a refusal
/// (a bad token, an expired certificate) ends the agent at once.
async fn connect_when_reachable(config: &Config) -> Result<Membership, ControlPlaneError> {
    let backoff = BackoffConfig {
        base: Duration::from_millis(500),
        cap: Duration::from_secs(30),
        ..BackoffConfig::default()
    };
    let mut attempt = 0;
    loop {
        match controlplane::connect(config).await {
            Err(error) if error.is_unreachable() => {
                attempt += 1;
                let wait = backoff.delay(attempt);
                tracing::warn!(%error, retry_in = ?wait, "the control plane does not answer yet");
                tokio::time::sleep(wait).await;
            }
            result => return result,
        }
    }
}

/// The nodes that have an address and a pod range, as routing needs them.
fn node_routes<'a>(nodes: impl Iterator<Item = &'a Node>) -> Vec<NodeRoute> {
    nodes
        .filter_map(|node| {
            Some(NodeRoute {
                addr: services::node_address(node)?,
                pod_cidr: node.spec.pod_cidr.parse().ok()?,
            })
        })
        .collect()
}

fn desired_pods(pods: &[Pod]) -> Vec<PodDesired> {
    pods.iter()
        .filter_map(|pod| match PodDesired::from_api(pod) {
            Ok(desired) => Some(desired),
            Err(error) => {
                tracing::warn!(%error, "cannot run pod");
                None
            }
        })
        .collect()
}

/// Keeps the last pods the control plane sent for the agent's next start.
fn remember(file: &mut StateFile, pods: &[Pod]) {
    match serde_json::to_vec(pods) {
        Ok(bytes) => file.save(bytes),
        Err(error) => tracing::warn!(%error, "could not encode the node's pods"),
    }
}

/// Keeps the east-west programs on exactly the veths of the pods that have a network,
/// each registered with its pod's address (anti-spoofing), and the pods' namespaces
/// registered with the socket program (their TCP connections to Services).
/// Attaching an interface that is already attached (a restarted agent, whose links are
/// pinned) replaces the program behind its link, which is harmless.
fn attach_pod_programs(
    datapath: &Arc<Mutex<Datapath>>,
    reports: &[PodReport],
    attached: &mut BTreeMap<String, Ipv4Addr>,
) {
    let wanted: BTreeMap<String, Ipv4Addr> = reports
        .iter()
        .filter_map(|report| {
            let veth = podnet::host_veth_name(&report.uid).ok()?;
            Some((veth, report.pod_ip?))
        })
        .collect();
    let mut datapath = match datapath.lock() {
        Ok(datapath) => datapath,
        Err(poisoned) => poisoned.into_inner(),
    };
    for (veth, pod_ip) in &wanted {
        if attached.get(veth) == Some(pod_ip) {
            continue;
        }
        if let Err(error) = datapath.attach_pod_interface(veth, *pod_ip) {
            tracing::error!(%veth, %error, "attaching the datapath to a pod");
        }
        // Without it the pod's connections to Services are still translated per packet.
        let netns = Path::new("/run/netns").join(podnet::pod_netns_name(veth));
        if let Err(error) = datapath.register_pod_sockets(&netns, veth, *pod_ip) {
            tracing::warn!(%veth, %error, "the pod's connections to Services are translated per packet");
        }
    }
    for veth in attached.keys().filter(|veth| !wanted.contains_key(*veth)) {
        if let Err(error) = datapath.detach_pod_interface(veth) {
            tracing::warn!(%veth, %error, "detaching the datapath from a pod");
        }
    }
    *attached = wanted;
}

/// How often expired conntrack entries are collected: the shortest lifetime (a reset
/// connection's 10 seconds) is not worth chasing, a table full of dead UDP flows is.
const CONNTRACK_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Collects expired conntrack entries, off the event loop and without the datapath's
/// lock (a full table's walk takes seconds).
async fn sweep_conntrack(sweeper: ConntrackSweeper, collected: prometheus::IntCounter) {
    let sweeper = Arc::new(Mutex::new(sweeper));
    let mut interval = tokio::time::interval(CONNTRACK_SWEEP_INTERVAL);
    loop {
        interval.tick().await;
        let sweeper = sweeper.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let mut sweeper = match sweeper.lock() {
                Ok(sweeper) => sweeper,
                Err(poisoned) => poisoned.into_inner(),
            };
            sweeper.sweep(monotonic_secs())
        })
        .await;
        match swept {
            Ok(Ok(count)) => collected.inc_by(count),
            Ok(Err(error)) => tracing::warn!(%error, "collecting expired conntrack entries"),
            Err(error) => tracing::warn!(%error, "the conntrack sweep stopped"),
        }
    }
}

fn warm_neighbours(keeper: &NeighbourKeeper, nodes: &[datapath::Node], own: std::net::Ipv4Addr) {
    keeper.set_peers(
        nodes
            .iter()
            .map(|node| node.addr)
            .filter(|addr| *addr != own),
    );
}

/// Sends each pod's status to the control plane when it changes, on a task of its own so
/// an unreachable control plane never holds up the datapath. What did not get through is
/// sent again every second until it does, so the control plane learns what happened while
/// it was away (a container restarted during an outage shows up once it is back).
async fn report_pod_status(
    client: AgentClient<tonic::transport::Channel>,
    mut reports_rx: watch::Receiver<Vec<PodReport>>,
    api_pods_rx: watch::Receiver<Vec<Pod>>,
    started: Instant,
    node_address: std::net::Ipv4Addr,
) {
    let mut delivered: Vec<PodReport> = Vec::new();
    // Until the pod manager's first pass, its empty reports say nothing about what runs.
    let mut reconciled = false;
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = reports_rx.changed() => match changed {
                Ok(()) => reconciled = true,
                Err(_) => return,
            },
            _ = retry.tick() => {}
        }
        let reports = reports_rx.borrow_and_update().clone();
        let api_pods = api_pods_rx.borrow().clone();
        if reconciled {
            confirm_deletions(&client, &api_pods, &reports).await;
        }
        let mut sent = Vec::new();
        // Sent again when the control plane has the pod unready while it is ready here:
        // it marks the pods of a node it lost touch with unready.
        let stale = |r: &PodReport| {
            r.ready
                && api_pods.iter().any(|pod| pod.metadata.uid == r.uid)
                && !ready_in_api(&api_pods, &r.uid)
        };
        for report in reports
            .iter()
            .filter(|r| !delivered.contains(r) || stale(r))
        {
            if !report.ready
                && started.elapsed() < ADOPTION_GRACE
                && ready_in_api(&api_pods, &report.uid)
            {
                continue;
            }
            let status = report.to_api(Some(node_address));
            let request = PodStatusReport {
                namespace: report.namespace.clone(),
                name: report.name.clone(),
                status_json: serde_json::to_vec(&status).unwrap_or_default(),
            };
            match client.clone().report_pod_status(request).await {
                Ok(_) => sent.push(report.clone()),
                Err(status) => {
                    // The rest would fail the same way; all of it goes again on the retry.
                    tracing::debug!(pod = %report.name, %status, "pod status not reported");
                    break;
                }
            }
        }
        // What was held back or failed is compared again on the next round.
        delivered = reports
            .into_iter()
            .filter(|r| sent.contains(r) || delivered.contains(r))
            .collect();
    }
}

/// Sends the pod manager's events (image pulls) to the control plane in order, on a task
/// of its own; best effort, as events are: one that cannot be delivered is logged and
/// dropped.
async fn record_pod_events(
    client: AgentClient<tonic::transport::Channel>,
    mut events: mpsc::Receiver<(crate::pods::Action, crate::pods::KubeEvent)>,
) {
    while let Some((action, event)) = events.recv().await {
        let Some((namespace, name)) = action.pod.split_once('/') else {
            continue;
        };
        let request = berth_api::agent::PodEventReport {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: action.uid.clone(),
            reason: event.reason.to_owned(),
            message: event.message,
            r#type: event.type_.to_owned(),
        };
        if let Err(status) = client.clone().record_pod_event(request).await {
            tracing::debug!(pod = %action.pod, reason = event.reason, %status, "pod event not recorded");
        }
    }
}

/// Ends the graceful deletions this node has carried out: a terminating pod the pod
/// manager no longer runs (stopped and removed after its preStop hook and grace) may leave
/// the store. A failed call is tried again on the next round, so an agent restarted or cut
/// off in the middle still confirms once it is back.
async fn confirm_deletions(
    client: &AgentClient<tonic::transport::Channel>,
    api_pods: &[Pod],
    reports: &[PodReport],
) {
    let done = api_pods.iter().filter(|pod| {
        !pod.metadata.deletion_timestamp.is_empty()
            && !reports.iter().any(|report| report.uid == pod.metadata.uid)
    });
    for pod in done {
        let request = PodDeletion {
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
        };
        match client.clone().confirm_pod_deletion(request).await {
            Ok(_) => tracing::info!(pod = %pod.metadata.name, "pod deletion confirmed"),
            Err(status) => {
                tracing::debug!(pod = %pod.metadata.name, %status, "pod deletion not confirmed");
                return;
            }
        }
    }
}

/// Where the heartbeat's load figures come from.
struct Figures {
    runtime: DockerRuntime,
    traffic: Arc<TrafficReader>,
    node: String,
}

/// Figures older than this are not sent: a stuck Docker engine must not make stale
/// figures look current.
const FIGURES_MAX_AGE: Duration = Duration::from_secs(10);

/// Collects figures once per heartbeat period, in a task of its own: Docker answers a
/// one-shot stats request at its next collection tick (up to a second), which the
/// heartbeat must not wait for.
async fn collect_figures(figures: Figures, latest: watch::Sender<Option<(Instant, NodeUsage)>>) {
    let mut collector = Collector::default();
    let rates = Arc::new(Mutex::new(BackendRates::default()));
    loop {
        // Off the event loop and without the datapath's lock: 100,000 backends' counters
        // take a while to read and sum, and a change would wait for them.
        let (reader, rates) = (figures.traffic.clone(), rates.clone());
        let backends = tokio::task::spawn_blocking(move || {
            let traffic = reader.backend_traffic().ok()?;
            let mut rates = match rates.lock() {
                Ok(rates) => rates,
                Err(poisoned) => poisoned.into_inner(),
            };
            rates.next(&traffic)
        })
        .await
        .ok()
        .flatten();
        let usage = collector
            .collect(&figures.runtime, &figures.node, backends)
            .await;
        if let Some(usage) = usage
            && latest.send(Some((Instant::now(), usage))).is_err()
        {
            return;
        }
        tokio::time::sleep(HEARTBEAT_EVERY).await;
    }
}

/// Where this agent serves, as its Node reports it.
struct Ports {
    node_api: u16,
    metrics: u16,
}

async fn heartbeats(
    client: AgentClient<tonic::transport::Channel>,
    address: std::net::Ipv4Addr,
    ports: Ports,
    figures: watch::Receiver<Option<(Instant, NodeUsage)>>,
) {
    let status = json!({
        "addresses": [{"type": "InternalIP", "address": address.to_string()}],
        "allocatable": allocatable(),
        "daemonEndpoints": {
            "agentEndpoint": {"Port": ports.node_api},
            "metricsEndpoint": {"Port": ports.metrics},
        },
    });
    let body = serde_json::to_vec(&status).unwrap_or_default();
    loop {
        // Liveness never depends on Docker answering: without fresh figures the heartbeat
        // still goes out, and the control plane treats this node's pods as unmeasured.
        let usage = figures
            .borrow()
            .as_ref()
            .filter(|(at, _)| at.elapsed() < FIGURES_MAX_AGE)
            .map(|(_, usage)| usage.clone());
        if let Err(status) = client
            .clone()
            .heartbeat(HeartbeatRequest {
                status_json: body.clone(),
                usage,
            })
            .await
        {
            tracing::warn!(%status, "heartbeat not delivered");
        }
        tokio::time::sleep(HEARTBEAT_EVERY).await;
    }
}
