//! A whole cluster on one machine, for the end-to-end scenarios (`cargo xtask e2e`): three
//! node namespaces and a control-plane namespace on an underlay, a client namespace
//! outside the cluster on it too, the real `berth-control`, one real `berth-agent` per
//! node with its XDP program on the node's `eth0`, and the real Docker engine. The
//! underlay is one bridge (198.18.64.0/24) or, with [`Underlay::Routed`], a bridge per
//! node (198.18.64.0/24 for node 0, the control plane and the client, 198.18.65.0/24 for
//! node 1, ...) joined by a router namespace: the "physical network", which routes the
//! bridges' subnets and knows nothing of pods. Routes to the nodes' pod ranges are the
//! agents' own job.
//!
//! Everything the cluster made is removed when it drops, also when a scenario fails:
//! processes by pid, containers by the run's own node names, pod namespaces the agents
//! made, pin directories and the namespaces.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use berth_agent::runtime::{DockerRuntime, labels};
use berth_testkit::{PinDir, netns::NetNs, unique_name};

use crate::{
    full_checksums, node_sysctls, plug, plug_into,
    process::{Process, RunningPod, binary, remove_node_pods, running_pods},
};

/// The underlay: node N at 198.18.64.N+1 on one link, or on its own link 198.18.64+N.0/24.
pub fn node_addr(index: usize, underlay: Underlay) -> Ipv4Addr {
    let link = match underlay {
        Underlay::OneLink => 0,
        Underlay::Routed => index as u8,
    };
    Ipv4Addr::new(198, 18, 64 + link, index as u8 + 1)
}

/// The router's address on each link of a routed underlay.
const ROUTER_HOST: u8 = 254;

/// How the nodes are connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Underlay {
    /// Every node on one bridge: nodes reach each other directly.
    OneLink,
    /// A bridge per node, joined by a router namespace that routes the bridges' subnets
    /// (node addresses only, never pod ranges): no two nodes share a link.
    Routed,
}

/// The cluster's network: the underlay and the agents' `--routing-mode`.
#[derive(Clone, Copy, Debug)]
pub struct E2eNetwork {
    pub underlay: Underlay,
    /// None leaves the agents' default (auto).
    pub routing_mode: Option<&'static str>,
}
/// The control plane's address on the underlay (its agent API and node-API client side).
pub const CONTROL_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 64, 10);
/// The client outside the cluster.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 64, 100);
const AGENT_API_PORT: u16 = 6444;

pub struct E2eNode {
    pub name: String,
    pub addr: Ipv4Addr,
    pub state: tempfile::TempDir,
    pub pins: PinDir,
    pub ns: NetNs,
    pub agent: Option<Process>,
}

impl E2eNode {
    /// The pod range the control plane gave the node, once its agent joined.
    pub fn pod_cidr(&self) -> Option<String> {
        let cidr = std::fs::read_to_string(self.state.path().join("pod-cidr")).ok()?;
        let cidr = cidr.trim();
        (!cidr.is_empty()).then(|| cidr.to_owned())
    }
}

/// `BERTH_E2E_LOGS=DIR` keeps every process's log at level info in DIR (control.log,
/// agent-N.log, appended across restarts) to find out afterwards why a scenario failed;
/// without it the processes log warnings to the test's stderr.
fn log_dir() -> Option<PathBuf> {
    std::env::var_os("BERTH_E2E_LOGS").map(PathBuf::from)
}

fn log_level() -> &'static str {
    if log_dir().is_some() { "info" } else { "warn" }
}

/// Points a process's output at its log in `BERTH_E2E_LOGS` (stdout too: tracing's
/// default writer), or leaves it on the test's.
fn log_to<'a>(command: &'a mut Command, process: &str) -> &'a mut Command {
    let Some(dir) = log_dir() else {
        return command;
    };
    let path = dir.join(format!("{process}.log"));
    let (stdout, stderr) = std::fs::create_dir_all(&dir)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
        })
        .and_then(|file| Ok((file.try_clone()?, file)))
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    command.stdout(stdout).stderr(stderr)
}

/// Control-plane flags that make the node-failure and autoscaler scenarios fit in minutes.
pub struct ControlOptions {
    pub node_grace_secs: u64,
    pub pod_eviction_timeout_secs: u64,
    pub autoscaler_sync_secs: u64,
    pub autoscaler_downscale_stabilization_secs: u64,
}

pub struct E2eCluster {
    // Drop order: processes first (control, then agents in nodes), then everything else.
    pub control: Option<Process>,
    pub nodes: Vec<E2eNode>,
    pub options: ControlOptions,
    pub network: E2eNetwork,
    pub data: tempfile::TempDir,
    pub client: NetNs,
    pub control_ns: NetNs,
    /// The routed underlay's router.
    pub router: Option<NetNs>,
    pub fabric: NetNs,
}

impl E2eCluster {
    /// The namespaces and one underlay link for all; no process runs yet. The agents
    /// route with their default mode.
    pub fn new(nodes: usize, options: ControlOptions) -> E2eCluster {
        Self::with_network(
            nodes,
            options,
            E2eNetwork {
                underlay: Underlay::OneLink,
                routing_mode: None,
            },
        )
    }

    /// The namespaces and the underlay `network` asks for; no process runs yet.
    pub fn with_network(nodes: usize, options: ControlOptions, network: E2eNetwork) -> E2eCluster {
        let fabric = NetNs::new("befab").expect("fabric namespace");
        let links = match network.underlay {
            Underlay::OneLink => 1,
            Underlay::Routed => nodes.max(1),
        };
        for link in 0..links {
            let bridge = format!("br{link}");
            fabric
                .ip(&["link", "add", &bridge, "type", "bridge"])
                .expect("bridge");
            fabric
                .ip(&["link", "set", &bridge, "up"])
                .expect("bridge up");
        }
        let router = (network.underlay == Underlay::Routed).then(|| {
            let router = NetNs::new("bertr").expect("router namespace");
            node_sysctls(&router);
            for link in 0..links {
                let addr = Ipv4Addr::new(198, 18, 64 + link as u8, ROUTER_HOST);
                plug_into(
                    &fabric,
                    &format!("br{link}"),
                    &router,
                    &format!("r{link}"),
                    &format!("eth{link}"),
                    addr,
                );
            }
            router
        });
        // Everything off its own link goes through the router.
        let via_router = |ns: &NetNs, link: u8| {
            if router.is_some() {
                let gateway = Ipv4Addr::new(198, 18, 64 + link, ROUTER_HOST).to_string();
                ns.ip(&["route", "add", "default", "via", &gateway])
                    .expect("default route via the router");
            }
        };
        let control_ns = NetNs::new("bectl").expect("control-plane namespace");
        plug(&fabric, &control_ns, "ctl", CONTROL_ADDR);
        via_router(&control_ns, 0);
        let client = NetNs::new("becli").expect("client namespace");
        plug(&fabric, &client, "cli", CLIENT_ADDR);
        via_router(&client, 0);
        full_checksums(&client);
        let nodes = (0..nodes)
            .map(|index| {
                let ns = NetNs::new(&format!("ben{index}")).expect("node namespace");
                node_sysctls(&ns);
                let addr = node_addr(index, network.underlay);
                let link = addr.octets()[2] - 64;
                plug_into(
                    &fabric,
                    &format!("br{link}"),
                    &ns,
                    &format!("n{index}"),
                    "eth0",
                    addr,
                );
                via_router(&ns, link);
                E2eNode {
                    name: unique_name(&format!("e2e{index}")),
                    addr,
                    state: tempfile::tempdir().expect("state dir"),
                    pins: PinDir::new(&format!("e2e{index}")),
                    ns,
                    agent: None,
                }
            })
            .collect();
        E2eCluster {
            control: None,
            nodes,
            options,
            network,
            data: tempfile::tempdir().expect("data dir"),
            client,
            control_ns,
            router,
            fabric,
        }
    }

    /// Starts every process and waits until every node joined and is Ready.
    pub async fn start(&mut self) {
        self.start_control().await;
        for index in 0..self.nodes.len() {
            self.start_agent(index);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.nodes.iter().any(|node| node.pod_cidr().is_none()) {
            assert!(Instant::now() < deadline, "the agents did not join");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.wait_nodes_ready().await;
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data.path().join("admin.conf")
    }

    /// Starts the control plane (REST on 127.0.0.1:6443 in its namespace, the agent API
    /// on the underlay) and waits for its admin.conf.
    pub async fn start_control(&mut self) {
        let options = &self.options;
        let control = Process(
            log_to(&mut Command::new("ip"), "control")
                .args(["netns", "exec", self.control_ns.name()])
                .arg(binary("berth-control"))
                .arg("--data-dir")
                .arg(self.data.path())
                .args(["--listen", "127.0.0.1:6443"])
                .args([
                    "--agent-listen",
                    &format!("{CONTROL_ADDR}:{AGENT_API_PORT}"),
                ])
                .args(["--tls-san", &CONTROL_ADDR.to_string()])
                .arg("--local-volume-dir")
                .arg(self.data.path().join("volumes"))
                .args(["--node-grace", &options.node_grace_secs.to_string()])
                .args([
                    "--pod-eviction-timeout",
                    &options.pod_eviction_timeout_secs.to_string(),
                ])
                .args([
                    "--autoscaler-sync-period",
                    &options.autoscaler_sync_secs.to_string(),
                ])
                .args([
                    "--autoscaler-downscale-stabilization",
                    &options.autoscaler_downscale_stabilization_secs.to_string(),
                ])
                .args(["--log", log_level()])
                .spawn()
                .expect("starting berth-control"),
        );
        crate::process::wait_for_admin_config(&self.kubeconfig()).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        // The REST API answers a little after admin.conf is written.
        while !self.berthctl(&["get", "nodes"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "the control plane does not answer"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.control = Some(control);
    }

    /// Kills the control plane with SIGKILL.
    pub fn kill_control(&mut self) {
        self.control = None;
    }

    pub fn start_agent(&mut self, index: usize) {
        let pki = self.data.path().join("pki");
        let routing_mode = self.network.routing_mode;
        let local_volume_dir = self.data.path().join("volumes");
        let node = &mut self.nodes[index];
        // nsenter rather than `ip netns exec`: the latter remounts /sys, hiding bpffs.
        let mut command = Command::new("nsenter");
        log_to(&mut command, &format!("agent-{index}"))
            .arg(format!("--net=/run/netns/{}", node.ns.name()))
            .arg(binary("berth-agent"))
            .args(["--node-name", &node.name])
            .args([
                "--server",
                &format!("https://{CONTROL_ADDR}:{AGENT_API_PORT}"),
            ])
            .arg("--ca-file")
            .arg(pki.join("ca.crt"))
            .arg("--bootstrap-token-file")
            .arg(pki.join("bootstrap-token"))
            .arg("--state-dir")
            .arg(node.state.path())
            .arg("--pin-dir")
            .arg(node.pins.path())
            .args(["--node-address", &node.addr.to_string()])
            // The nodes share one machine: one directory holds every node's volumes,
            // each volume a directory of its own.
            .arg("--local-volume-dir")
            .arg(&local_volume_dir)
            .args(["--external-interface", "eth0"])
            // A veth: native XDP_TX needs a program on the peer too, generic works alone.
            .args(["--xdp-mode", "generic"])
            .env("RUST_LOG", log_level());
        if let Some(mode) = routing_mode {
            command.args(["--routing-mode", mode]);
        }
        let child = command.spawn().expect("starting berth-agent");
        node.agent = Some(Process(child));
    }

    /// Cuts node `index` off the underlay: its `eth0` goes down (and with it every route
    /// through it).
    pub fn disconnect(&self, index: usize) {
        self.nodes[index]
            .ns
            .ip(&["link", "set", "eth0", "down"])
            .expect("cutting the node off");
    }

    /// Plugs node `index` back in; on a routed underlay its default route returns too, as
    /// the node's own network configuration would restore it.
    pub fn reconnect(&self, index: usize) {
        let node = &self.nodes[index];
        node.ns
            .ip(&["link", "set", "eth0", "up"])
            .expect("reconnecting the node");
        if self.router.is_some() {
            let [a, b, link, _] = node.addr.octets();
            let gateway = Ipv4Addr::new(a, b, link, ROUTER_HOST).to_string();
            node.ns
                .ip(&["route", "replace", "default", "via", &gateway])
                .expect("default route via the router");
        }
    }

    /// Kills a node's agent with SIGKILL; its pods and datapath stay.
    pub fn kill_agent(&mut self, index: usize) {
        self.nodes[index].agent = None;
    }

    /// Waits until every node routes every other node's pod range with the agent's
    /// routes (`proto 190`); each node's route lines.
    pub async fn wait_pod_routes(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let shown: Vec<String> = self
                .nodes
                .iter()
                .map(|node| {
                    node.ns
                        .ip(&["route", "show", "proto", "190"])
                        .expect("routes")
                })
                .collect();
            let complete = self.nodes.iter().zip(&shown).all(|(node, routes)| {
                self.nodes
                    .iter()
                    .filter(|other| other.name != node.name)
                    .all(|other| {
                        other.pod_cidr().is_some_and(|range| {
                            routes.lines().any(|line| line.starts_with(&range))
                        })
                    })
            });
            if complete {
                return shown;
            }
            assert!(
                Instant::now() < deadline,
                "the agents did not route each other's pod ranges: {shown:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every node is Ready.
    pub async fn wait_nodes_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let output = self.berthctl(&["get", "nodes"]);
            let ready = String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter(|line| line.split_whitespace().nth(1) == Some("Ready"))
                .count();
            if ready == self.nodes.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nodes not ready: {}",
                String::from_utf8_lossy(&output.stdout)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// berthctl with the admin configuration, from the control plane's namespace.
    pub fn berthctl(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", self.control_ns.name()])
            .arg(binary("berthctl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .expect("berthctl")
    }

    /// berthctl that must succeed; its standard output.
    pub fn berthctl_ok(&self, args: &[&str]) -> String {
        let output = self.berthctl(args);
        assert!(
            output.status.success(),
            "berthctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Waits (up to 3 minutes) until the rollout of Deployment `name` has finished.
    pub fn rollout_status(&self, name: &str) {
        self.berthctl_ok(&["rollout", "status", "deployment", name, "--timeout", "180s"]);
    }

    /// Applies `manifest` with berthctl, failing the test if it is refused.
    pub fn apply(&self, manifest: &str) {
        let path = self.write_manifest(manifest);
        self.berthctl_ok(&["apply", "-f", &path.display().to_string()]);
    }

    fn write_manifest(&self, manifest: &str) -> PathBuf {
        let path = self.data.path().join(format!("{}.yaml", unique_name("m")));
        std::fs::write(&path, manifest).expect("manifest");
        path
    }

    pub fn running_pods(&self) -> Vec<RunningPod> {
        running_pods(&self.berthctl(&["get", "pods", "-o", "wide"]))
    }

    /// Waits until exactly `count` pods whose name starts with `prefix` exist, all running
    /// and ready.
    pub async fn wait_ready(
        &self,
        prefix: &str,
        count: usize,
        within: Duration,
    ) -> Vec<RunningPod> {
        self.wait_ready_off(prefix, count, None, within).await
    }

    /// Like [`E2eCluster::wait_ready`], none of them listed on node `avoid`.
    pub async fn wait_ready_off(
        &self,
        prefix: &str,
        count: usize,
        avoid: Option<&str>,
        within: Duration,
    ) -> Vec<RunningPod> {
        let deadline = Instant::now() + within;
        loop {
            let listing = self.berthctl(&["get", "pods", "-o", "wide"]);
            let pods: Vec<RunningPod> = running_pods(&listing)
                .into_iter()
                .filter(|pod| pod.name.starts_with(prefix))
                .collect();
            let listing = String::from_utf8_lossy(&listing.stdout);
            let listed: Vec<&str> = listing
                .lines()
                .filter(|line| line.starts_with(prefix))
                .collect();
            let on_avoided = avoid.is_some_and(|node| {
                listed
                    .iter()
                    .any(|line| line.split_whitespace().last() == Some(node))
            });
            if pods.len() == count
                && listed.len() == count
                && !on_avoided
                && pods.iter().all(|pod| pod.ready)
            {
                return pods;
            }
            assert!(
                Instant::now() < deadline,
                "{count} ready {prefix}* pods wanted (none on {avoid:?}): {listing}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub fn node_index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|node| node.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Removes the run's containers and the pod namespaces its agents made.
    pub async fn cleanup(&mut self) {
        self.control = None;
        for node in &mut self.nodes {
            node.agent = None;
        }
        for node in &self.nodes {
            remove_node_pods(&node.name, &node.ns).await;
        }
    }

    /// Runs the scenarios, then cleans up, also when they panicked.
    pub async fn run<F>(mut self, body: impl AsyncFnOnce(&mut E2eCluster) -> F) -> F {
        let result =
            futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(body(&mut self)))
                .await;
        self.cleanup().await;
        match result {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// The pods answering `target` from namespace `ns` over `tries` requests.
pub fn responders(ns: &str, target: SocketAddrV4, tries: usize) -> BTreeSet<String> {
    berth_net::in_netns(ns, move || {
        (0..tries)
            .filter_map(|_| crate::get_here(target).ok().map(|reply| reply.pod))
            .collect()
    })
    .expect("netns")
}

/// Waits until exactly the pods `wanted` answer `target` (over 30 requests); the time it took.
pub async fn wait_responders(
    ns: &str,
    target: SocketAddrV4,
    wanted: &BTreeSet<String>,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let seen = responders(ns, target, 30);
        if &seen == wanted {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{target} answered from {seen:?}, wanted {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn names(pods: &[RunningPod]) -> BTreeSet<String> {
    pods.iter().map(|pod| pod.name.clone()).collect()
}

/// The app container (named `echo`, as in [`crate::process::WebManifest`]) of pod `pod`,
/// running, by the agent's labels.
pub async fn app_container(runtime: &DockerRuntime, pod: &str) -> Option<String> {
    runtime
        .list_by_labels(&[(labels::POD_NAME, pod), (labels::CONTAINER_NAME, "echo")])
        .await
        .expect("containers")
        .into_iter()
        .find(|c| c.state == "running")
        .map(|c| c.id)
}

/// Runs `command` in `container` (docker exec); its output.
pub async fn exec(runtime: &DockerRuntime, container: &str, command: &[&str]) -> String {
    let command: Vec<String> = command.iter().map(|s| (*s).to_owned()).collect();
    let output = runtime
        .exec(container, &command, Duration::from_secs(15))
        .await
        .unwrap_or_else(|error| panic!("exec {command:?}: {error}"));
    output.output
}
