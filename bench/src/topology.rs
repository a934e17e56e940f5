//! The benchmark's machine layout: one berth-tests [`Cluster`] whose nodes each carry one
//! way to reach a service — direct, Berth's eBPF datapath, kube-proxy-shaped iptables,
//! HAProxy — at one service count. Each node has a client pod and three backend pods
//! (nginx), wired by the agent's own pod networking. Separate node namespaces keep the
//! modes from touching each other: netfilter rules (and with them conntrack) exist only
//! in the iptables nodes, BPF programs only on the eBPF nodes' veths.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use berth_agent::datapath::{ApplyReport, Datapath, Limits};
use berth_tests::Cluster;

use crate::{
    Mode, kubeproxy, policies,
    procs::{self, Cgroup, Guarded},
    servers,
    services::{self, Svc},
};

pub const BACKEND_PORT: u16 = 8080;
const CLIENT_HOST: u8 = 10;
const BACKEND_HOSTS: [u8; 3] = [2, 3, 4];

/// One node of the benchmark cluster and what runs on it.
pub struct Bed {
    pub mode: Mode,
    /// Services installed (0 for the direct node, which has none).
    pub services: usize,
    pub node_id: u32,
    pub client_netns: String,
    pub client_index: usize,
    pub backends: Vec<(Ipv4Addr, u16)>,
    pub node_netns: String,
    pub haproxy: Option<Guarded>,
    pub set: Vec<Svc>,
}

impl Bed {
    /// The address(es) the client sends to.
    pub fn targets(&self, mode: Mode) -> Vec<(Ipv4Addr, u16)> {
        match mode {
            Mode::Direct | Mode::DirectEbpfAttached => self.backends.clone(),
            Mode::DirectOne => self.backends[..1].to_vec(),
            _ => vec![(
                services::vip(services::measured_index(self.services)),
                services::SERVICE_PORT,
            )],
        }
    }
}

/// Everything the benchmark started; dropped in field order: processes first, then the
/// namespaces, then the cgroup that accounted them.
pub struct Topology {
    pub beds: Vec<Bed>,
    pub nginx: Vec<Guarded>,
    pub cluster: Cluster,
    pub workdir: PathBuf,
    pub cgroup: Cgroup,
    pub dummy_backends: usize,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for bed in &mut self.beds {
            bed.haproxy = None;
        }
        self.nginx.clear();
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

/// One GET / over a new connection from the calling thread's namespace.
fn http_ok(addr: Ipv4Addr, port: u16) -> anyhow::Result<()> {
    let target = SocketAddr::from((addr, port));
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if !response.starts_with("HTTP/1.1 200") {
        bail!("{target} answered {:?}", response.lines().next());
    }
    Ok(())
}

/// Waits until `addr:port` answers from the client pod; returns how long that took.
pub fn wait_serving(
    cluster: &Cluster,
    client_index: usize,
    addr: Ipv4Addr,
    port: u16,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let pod = &cluster.pods[client_index];
    pod.ns.run(move || {
        let mut last = None;
        while started.elapsed() < limit {
            match http_ok(addr, port) {
                Ok(()) => return Ok(started.elapsed()),
                Err(error) => last = Some(error),
            }
            thread::sleep(Duration::from_millis(5));
        }
        bail!(
            "{addr}:{port} did not answer within {:.0} s: {}",
            limit.as_secs_f64(),
            last.map(|e| e.to_string()).unwrap_or_default()
        )
    })
}

impl Topology {
    /// Builds the nodes: `(mode, services)` per node, in order.
    pub fn build(
        layout: &[(Mode, usize)],
        dummy_backends: usize,
        workdir: &Path,
    ) -> anyhow::Result<Topology> {
        std::fs::create_dir_all(workdir)?;
        let cgroup = Cgroup::create(&format!("berth-bench-{}", std::process::id()))?;
        let cluster = Cluster::new(layout.len() as u32);
        let mut topology = Topology {
            beds: Vec::new(),
            nginx: Vec::new(),
            cluster,
            workdir: workdir.to_path_buf(),
            cgroup,
            dummy_backends,
        };
        for (i, (mode, count)) in layout.iter().enumerate() {
            procs::check_interrupted()?;
            let node_id = i as u32 + 1;
            let client_index = topology.cluster.add_pod(
                node_id,
                CLIENT_HOST,
                &format!("n{node_id}-client"),
                false,
            );
            let client_netns = topology.cluster.pods[client_index].ns.name().to_owned();
            // Many connections per second from one client: all its ports are usable, and
            // TIME-WAIT ports are reused, as a busy client pod would have it.
            for (key, value) in [
                ("net/ipv4/ip_local_port_range", "1024 65000"),
                ("net/ipv4/tcp_tw_reuse", "1"),
            ] {
                topology.cluster.pods[client_index].ns.sysctl(key, value);
            }
            let mut backends = Vec::new();
            for (b, host) in BACKEND_HOSTS.iter().enumerate() {
                let name = format!("n{node_id}-b{}", b + 1);
                let index = topology.cluster.add_pod(node_id, *host, &name, false);
                let pod = &topology.cluster.pods[index];
                let config = servers::nginx_config(&name, pod.ip, BACKEND_PORT, workdir);
                let conf_path = workdir.join(format!("{name}.conf"));
                std::fs::write(&conf_path, config)?;
                let conf = conf_path.display().to_string();
                let command = procs::in_netns_and_cgroup(
                    pod.ns.name(),
                    &topology.cgroup,
                    "nginx",
                    &[
                        "-p",
                        &workdir.display().to_string(),
                        "-c",
                        &conf,
                        "-e",
                        "stderr",
                    ],
                );
                let log = workdir.join(format!("{name}.log"));
                topology.nginx.push(Guarded::spawn(&name, command, &log)?);
                backends.push((pod.ip, BACKEND_PORT));
            }
            let node_netns = topology.cluster.node(node_id).ns.name().to_owned();
            let set = match mode {
                Mode::Direct | Mode::DirectOne | Mode::DirectEbpfAttached => Vec::new(),
                _ => services::services(*count, &backends, dummy_backends),
            };
            topology.beds.push(Bed {
                mode: *mode,
                services: *count,
                node_id,
                client_netns,
                client_index,
                backends,
                node_netns,
                haproxy: None,
                set,
            });
        }
        // Every backend answers directly before anything else is measured.
        for bed in &topology.beds {
            for (addr, port) in &bed.backends {
                wait_serving(
                    &topology.cluster,
                    bed.client_index,
                    *addr,
                    *port,
                    Duration::from_secs(10),
                )
                .with_context(|| format!("nginx backend {addr}:{port}"))?;
            }
        }
        for guard in &mut topology.nginx {
            guard.check_running()?;
        }
        Ok(topology)
    }

    pub fn bed(&self, index: usize) -> &Bed {
        &self.beds[index]
    }

    /// Opens a fresh datapath on the bed's node (pins removed first) and attaches it to the
    /// node's pod veths; returns how long opening took (load, verify, create maps, attach).
    pub fn open_fresh_datapath(&mut self, bed: usize) -> anyhow::Result<Duration> {
        let node_id = self.beds[bed].node_id;
        let veths = self.cluster.pod_veths(node_id);
        let node = self.cluster.node(node_id);
        node.close_datapath();
        Datapath::remove_pins(node.pins.path())?;
        node.limits = Limits::default();
        let started = Instant::now();
        node.open_datapath(&veths);
        let opened = started.elapsed();
        if matches!(
            self.beds[bed].mode,
            Mode::Ebpf | Mode::EbpfPolicies | Mode::DirectEbpfAttached
        ) {
            self.attach_socket_program(bed)?;
        }
        Ok(opened)
    }

    /// Registers the bed's pods with its datapath's socket program and attaches that to
    /// the benchmark's cgroup, where the client runs, as the agent does on the cgroup v2
    /// root: the client's connects to a ClusterIP go straight to a backend.
    fn attach_socket_program(&mut self, bed: usize) -> anyhow::Result<()> {
        let node_id = self.beds[bed].node_id;
        let pods: Vec<(String, String, Ipv4Addr)> = self
            .cluster
            .pods
            .iter()
            .filter(|pod| pod.node_id == node_id)
            .map(|pod| (pod.ns.name().to_owned(), pod.host_veth.clone(), pod.ip))
            .collect();
        let cgroup = self
            .cgroup
            .v2_dir()
            .context("the socket program needs the cgroup v2 hierarchy")?
            .to_path_buf();
        self.cluster
            .node(node_id)
            .balance_pod_sockets(&pods, &cgroup)
            .context("attaching the socket program")
    }

    /// Puts the NetworkPolicies of [`policies`] in place on the bed's node, its backends
    /// isolated and its client let in.
    pub fn apply_policies(&mut self, bed: usize) -> anyhow::Result<policies::Written> {
        let node_id = self.beds[bed].node_id;
        let client = self.cluster.pods[self.beds[bed].client_index].ip;
        let backends: Vec<Ipv4Addr> = self.beds[bed]
            .backends
            .iter()
            .map(|(addr, _)| *addr)
            .collect();
        let node = self.cluster.node(node_id);
        policies::apply(
            node.pins.path(),
            &format!("n{node_id}"),
            node.addr,
            client,
            &backends,
            BACKEND_PORT,
        )
    }

    /// Programs `set` into the bed's datapath.
    pub fn apply_ebpf(&mut self, bed: usize, set: &[Svc]) -> anyhow::Result<ApplyReport> {
        let node_id = self.beds[bed].node_id;
        let node = self.cluster.node(node_id);
        let service_set = services::service_set(set, node.as_datapath_node());
        Ok(node.datapath().apply(&service_set)?)
    }

    /// `iptables-legacy-restore` in the bed's node namespace; returns its wall time.
    pub fn iptables_restore(
        &self,
        bed: usize,
        rules: &str,
        noflush: bool,
    ) -> anyhow::Result<Duration> {
        let path = self.workdir.join(format!("rules-{bed}.txt"));
        std::fs::write(&path, rules)?;
        let mut command = Command::new("ip");
        command.args([
            "netns",
            "exec",
            &self.beds[bed].node_netns,
            "iptables-legacy-restore",
            "-w",
            "30",
        ]);
        if noflush {
            command.arg("--noflush");
        }
        command.arg(&path);
        command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let started = Instant::now();
        let output = procs::output_within(command, Duration::from_secs(600))
            .context("iptables-legacy-restore")?;
        let elapsed = started.elapsed();
        if !output.status.success() {
            bail!(
                "iptables-legacy-restore failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(elapsed)
    }

    /// Empties the node's filter and nat tables and installs kube-proxy's jumps from the
    /// built-in chains, as a node looks before kube-proxy's first full sync.
    pub fn iptables_reset(&self, bed: usize) -> anyhow::Result<()> {
        self.iptables_restore(bed, "*filter\nCOMMIT\n*nat\nCOMMIT\n", false)?;
        self.iptables_restore(bed, kubeproxy::BUILTIN_JUMPS, true)?;
        Ok(())
    }

    /// Starts HAProxy with the bed's services in its node namespace; returns the time from
    /// start until the measured service answers.
    pub fn start_haproxy(&mut self, bed: usize) -> anyhow::Result<Duration> {
        self.beds[bed].haproxy = None;
        let node_netns = self.beds[bed].node_netns.clone();
        // The VIPs are local addresses of the node, so HAProxy can bind them.
        let _ = berth_net::ip(
            Some(&node_netns),
            &["route", "replace", "local", "198.19.0.0/16", "dev", "lo"],
        )?;
        let config = servers::haproxy_config(&self.beds[bed].set);
        let path = self.workdir.join(format!("haproxy-{bed}.cfg"));
        std::fs::write(&path, config)?;
        let conf = path.display().to_string();
        let command =
            procs::in_netns_and_cgroup(&node_netns, &self.cgroup, "haproxy", &["-db", "-f", &conf]);
        let log = self.workdir.join(format!("haproxy-{bed}.log"));
        let started = Instant::now();
        self.beds[bed].haproxy = Some(Guarded::spawn("haproxy", command, &log)?);
        let (addr, port) = self.beds[bed].targets(Mode::Haproxy)[0];
        let client = self.beds[bed].client_index;
        // Probe in short slices so a HAProxy that exited (bad configuration) fails at once.
        loop {
            let exited = match self.beds[bed].haproxy.as_mut() {
                Some(guard) => guard.check_running().err(),
                None => None,
            };
            if let Some(error) = exited {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("{error:#}\n{log}");
            }
            let slice = Duration::from_millis(500);
            match wait_serving(&self.cluster, client, addr, port, slice) {
                Ok(_) => return Ok(started.elapsed()),
                Err(error) if started.elapsed() > Duration::from_secs(120) => {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    bail!("haproxy: {error:#}\n{log}");
                }
                Err(_) => {}
            }
        }
    }
}
