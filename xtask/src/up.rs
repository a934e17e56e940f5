//! `cargo xtask up` and `cargo xtask down`: a one-node Berth cluster on this machine.
//!
//! The node is a network namespace, `berth-node`, joined to the host by one veth pair
//! (`berth0` with 198.18.10.1 on the host, `eth0` with 198.18.10.2 in the node). The
//! control plane runs on the host (the API on 127.0.0.1:6443, the agents' API on the link's
//! host address); the agent runs in the node namespace, where it wires pods, attaches its
//! TC programs to their veths and its XDP program to the node's `eth0`. The host is outside
//! the cluster and reaches services through the node's address like any client: Berth
//! creates that one link and attaches nothing to the host's own interfaces.
//!
//! `cargo xtask up --ha` runs the control plane highly available instead: three etcd
//! members (Debian's etcd-server; clients on 127.0.0.1:12379, :12389, :12399, clear of a
//! packaged etcd on 2379) and three
//! control planes on them (APIs on 127.0.0.1:6443, :6453, :6463; agent APIs on the link's
//! host address, ports 6444, 6454, 6464); the agent knows all three.
//!
//! Everything lives under one directory (`--home`, default /var/lib/berth): the control
//! plane's store and PKI, the agent's state, logs, pid files, and `admin.conf`, which is
//! where berthctl looks by default.

use std::{
    fs,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    images, setup,
    util::{CLUSTER_PACKAGES, is_root, output, run_command, spawn_detached, workspace_root},
};

const NODE_NETNS: &str = "berth-node";
const HOST_LINK: &str = "berth0";
const NODE_LINK: &str = "eth0";
const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 10, 1);
const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 10, 2);
const LINK_PREFIX: u8 = 30;
const API_LISTEN: &str = "127.0.0.1:6443";
const AGENT_API_PORT: u16 = 6444;
/// The agent's metrics port (its default) on the node address: answering means it runs.
const AGENT_METRICS_PORT: u16 = 9102;
const DEMO_NODE_PORT: u16 = 30080;
const DEMO_REPLICAS: usize = 3;
const DEMO_CLUSTER_IP: &str = "198.18.200.10";

const DEMO_MANIFEST: &str = "\
# The demo `cargo xtask up` deploys: three echo servers behind one Service. Each answer
# names the pod that sent it. Change it and run `berthctl apply -f` on this file.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
  labels: {app: echo}
spec:
  replicas: 3
  selector:
    matchLabels: {app: echo}
  template:
    metadata:
      labels: {app: echo}
    spec:
      containers:
        - name: echo
          image: berth/echo:v1
          ports:
            - containerPort: 8080
          readinessProbe:
            httpGet: {path: /readyz, port: 8080}
---
apiVersion: v1
kind: Service
metadata:
  name: echo
spec:
  type: NodePort
  clusterIP: 198.18.200.10
  selector: {app: echo}
  ports:
    - name: http
      port: 80
      targetPort: 8080
      nodePort: 30080
";

#[derive(clap::Args)]
pub struct UpArgs {
    /// Where the cluster keeps its data, logs and client configuration.
    #[arg(long, env = "BERTH_HOME", default_value = "/var/lib/berth")]
    home: PathBuf,
    /// Three etcd members and three control planes on them (one elected leader runs the
    /// controllers) instead of one control plane on its embedded store.
    #[arg(long)]
    ha: bool,
}

/// Control planes (and etcd members) of `up --ha`.
const HA_INSTANCES: usize = 3;
/// Ports of instance `i` are these plus 10 × i.
const ETCD_CLIENT_PORT: u16 = 12379;
const ETCD_PEER_PORT: u16 = 12380;
const API_PORT: u16 = 6443;

#[derive(clap::Args)]
pub struct DownArgs {
    /// The directory `up` used.
    #[arg(long, env = "BERTH_HOME", default_value = "/var/lib/berth")]
    home: PathBuf,
    /// Also delete the data, logs and client configuration (the next `up` starts afresh).
    #[arg(long)]
    purge: bool,
}

/// Where each part keeps its files under the home directory.
struct Layout {
    home: PathBuf,
}

impl Layout {
    fn control_data(&self) -> PathBuf {
        self.home.join("control")
    }
    /// Control plane `i` of `up --ha` (the first one is the plain control plane's).
    fn control_data_of(&self, i: usize) -> PathBuf {
        if i == 0 {
            self.control_data()
        } else {
            self.home.join(format!("control-{i}"))
        }
    }
    fn etcd_data(&self, i: usize) -> PathBuf {
        self.home.join(format!("etcd-{i}"))
    }
    fn admin_config(&self) -> PathBuf {
        self.home.join("admin.conf")
    }
    fn agent_state(&self) -> PathBuf {
        self.home.join("agent")
    }
    /// The node's claims' volumes, under the cluster's home so `down --purge` takes them.
    fn local_volumes(&self) -> PathBuf {
        self.home.join("volumes")
    }
    fn logs(&self) -> PathBuf {
        self.home.join("logs")
    }
    fn run(&self) -> PathBuf {
        self.home.join("run")
    }
    fn demo_manifest(&self) -> PathBuf {
        self.home.join("demo.yaml")
    }
    fn node_name_file(&self) -> PathBuf {
        self.run().join("node-name")
    }
    fn pin_dir(node: &str) -> PathBuf {
        Path::new("/sys/fs/bpf/berth").join(node)
    }
}

/// A process `up` starts and `down` stops, remembered by a pid file.
#[derive(Clone, Copy)]
struct Component {
    /// Its pid and log files' name.
    name: &'static str,
    /// The binary, also what /proc/<pid>/cmdline must name for the pid to still be ours.
    binary: &'static str,
    what: &'static str,
}

const CONTROL: Component = Component {
    name: "berth-control",
    binary: "berth-control",
    what: "control plane",
};
const AGENT: Component = Component {
    name: "berth-agent",
    binary: "berth-agent",
    what: "node agent",
};
/// `up --ha`'s control planes; the first is [`CONTROL`].
const CONTROLS: [Component; HA_INSTANCES] = [
    CONTROL,
    Component {
        name: "berth-control-1",
        binary: "berth-control",
        what: "control plane 1",
    },
    Component {
        name: "berth-control-2",
        binary: "berth-control",
        what: "control plane 2",
    },
];
const ETCD: [Component; HA_INSTANCES] = [
    Component {
        name: "etcd-0",
        binary: "etcd",
        what: "etcd member 0",
    },
    Component {
        name: "etcd-1",
        binary: "etcd",
        what: "etcd member 1",
    },
    Component {
        name: "etcd-2",
        binary: "etcd",
        what: "etcd member 2",
    },
];

impl Component {
    fn pid_file(self, layout: &Layout) -> PathBuf {
        layout.run().join(format!("{}.pid", self.name))
    }

    fn log(self, layout: &Layout) -> PathBuf {
        layout.logs().join(format!("{}.log", self.name))
    }

    /// The pid of the running process, when the pid file names one that is still running
    /// this binary (a stale file whose pid was reused by something else does not count).
    fn running(self, layout: &Layout) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.pid_file(layout))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        // Any argument, not just the first: right after the start the agent's process is
        // still nsenter, about to exec it.
        cmdline
            .split(|byte| *byte == 0)
            .filter_map(|arg| Path::new(std::str::from_utf8(arg).ok()?).file_name())
            .any(|name| name == self.binary)
            .then_some(pid)
    }

    /// Starts the process detached, with its output in its log file.
    fn start(self, layout: &Layout, command: &mut Command) -> anyhow::Result<u32> {
        let child = spawn_detached(command, &self.log(layout))
            .with_context(|| format!("starting the {}", self.what))?;
        fs::write(self.pid_file(layout), format!("{}\n", child.id()))?;
        Ok(child.id())
    }

    /// SIGTERM, then SIGKILL after 10 s. Returns the pid it stopped.
    fn stop(self, layout: &Layout) -> anyhow::Result<Option<u32>> {
        let Some(pid) = self.running(layout) else {
            remove_if_present(&self.pid_file(layout))?;
            return Ok(None);
        };
        let pid_t = libc::pid_t::try_from(pid).context("pid out of range")?;
        // SAFETY: kill has no memory preconditions; the pid was just checked to be ours.
        unsafe { libc::kill(pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.running(layout).is_some() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        if self.running(layout).is_some() {
            // SAFETY: as above.
            unsafe { libc::kill(pid_t, libc::SIGKILL) };
            while self.running(layout).is_some() {
                thread::sleep(Duration::from_millis(50));
            }
        }
        remove_if_present(&self.pid_file(layout))?;
        Ok(Some(pid))
    }

    /// Waits for `ready`, failing with the end of the log when the process dies or the
    /// deadline passes.
    fn wait(
        self,
        layout: &Layout,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if self.running(layout).is_none() {
                bail!(
                    "the {} exited; the end of {}:\n{}",
                    self.what,
                    self.log(layout).display(),
                    log_tail(&self.log(layout))
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the {} did not get ready within {} s; the end of {}:\n{}",
                    self.what,
                    timeout.as_secs(),
                    self.log(layout).display(),
                    log_tail(&self.log(layout))
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != ErrorKind::NotFound => {
            Err(error).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Prints a step and, when it is done, how long it took.
fn step<T>(what: &str, run: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    println!("==> {what}");
    let started = Instant::now();
    let result = run()?;
    println!("    done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(result)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// A cluster binary as `up` builds it (release).
fn binary(name: &str) -> PathBuf {
    target_dir().join("release").join(name)
}

/// The node's name: this machine's host name made a valid DNS label, like k3s does.
fn node_name_for_host() -> String {
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let label: String = host
        .trim()
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let label = label.trim_matches('-').to_owned();
    if label.is_empty() {
        "node1".to_owned()
    } else {
        label
    }
}

fn tcp_answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// The node namespace and its link to the host. Returns whether anything was created.
fn ensure_node_network() -> anyhow::Result<bool> {
    if berth_net::netns_exists(NODE_NETNS) && berth_net::link_exists(None, HOST_LINK) {
        return Ok(false);
    }
    // A half-made network from an interrupted run is rebuilt from scratch.
    if berth_net::netns_exists(NODE_NETNS) {
        berth_net::netns_delete(NODE_NETNS)?;
    }
    if berth_net::link_exists(None, HOST_LINK) {
        berth_net::link_delete(None, HOST_LINK)?;
    }
    berth_net::netns_add(NODE_NETNS)?;
    // The node end is created inside the namespace: the host has an eth0 of its own.
    berth_net::veth_add_peer_in(None, HOST_LINK, NODE_LINK, NODE_NETNS)?;
    berth_net::addr_add(None, HOST_LINK, &format!("{HOST_ADDR}/{LINK_PREFIX}"))?;
    berth_net::addr_add(
        Some(NODE_NETNS),
        NODE_LINK,
        &format!("{NODE_ADDR}/{LINK_PREFIX}"),
    )?;
    berth_net::link_up(None, HOST_LINK)?;
    berth_net::link_up(Some(NODE_NETNS), NODE_LINK)?;
    berth_net::link_up(Some(NODE_NETNS), "lo")?;
    Ok(true)
}

fn start_control(layout: &Layout) -> anyhow::Result<u32> {
    CONTROL.start(
        layout,
        Command::new(binary(CONTROL.binary))
            .arg("--data-dir")
            .arg(layout.control_data())
            .arg("--admin-config")
            .arg(layout.admin_config())
            .args(["--listen", API_LISTEN])
            .args(["--agent-listen", &format!("{HOST_ADDR}:{AGENT_API_PORT}")])
            .args(["--tls-san", &HOST_ADDR.to_string()])
            .arg("--local-volume-dir")
            .arg(layout.local_volumes()),
    )
}

/// Port `base` of HA instance `i`.
fn ha_port(base: u16, i: usize) -> u16 {
    base + 10 * u16::try_from(i).unwrap_or(0)
}

fn etcd_store_url() -> String {
    let members: Vec<String> = (0..HA_INSTANCES)
        .map(|i| format!("127.0.0.1:{}", ha_port(ETCD_CLIENT_PORT, i)))
        .collect();
    format!("etcd://{}", members.join(","))
}

fn start_etcd(layout: &Layout, i: usize) -> anyhow::Result<u32> {
    let cluster: Vec<String> = (0..HA_INSTANCES)
        .map(|m| format!("m{m}=http://127.0.0.1:{}", ha_port(ETCD_PEER_PORT, m)))
        .collect();
    let client = format!("http://127.0.0.1:{}", ha_port(ETCD_CLIENT_PORT, i));
    let peer = format!("http://127.0.0.1:{}", ha_port(ETCD_PEER_PORT, i));
    ETCD[i].start(
        layout,
        Command::new("etcd")
            .args(["--name", &format!("m{i}"), "--data-dir"])
            .arg(layout.etcd_data(i))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "berth"]),
    )
}

/// Control plane `i` of `up --ha`; the first writes admin.conf where berthctl looks,
/// the others beside their data (every one accepts its token).
fn start_ha_control(layout: &Layout, i: usize) -> anyhow::Result<u32> {
    let data = layout.control_data_of(i);
    let admin = if i == 0 {
        layout.admin_config()
    } else {
        data.join("admin.conf")
    };
    CONTROLS[i].start(
        layout,
        Command::new(binary(CONTROL.binary))
            .arg("--data-dir")
            .arg(&data)
            .arg("--admin-config")
            .arg(admin)
            .args(["--store", &etcd_store_url()])
            .args(["--listen", &format!("127.0.0.1:{}", ha_port(API_PORT, i))])
            .args([
                "--agent-listen",
                &format!("{HOST_ADDR}:{}", ha_port(AGENT_API_PORT, i)),
            ])
            .args(["--tls-san", &HOST_ADDR.to_string()])
            .args(["--control-plane-endpoints", &ha_api_servers().join(",")])
            .arg("--local-volume-dir")
            .arg(layout.local_volumes()),
    )
}

/// The API address of each `up --ha` control plane: admin.conf lists them all, so
/// berthctl goes on when one is down.
fn ha_api_servers() -> Vec<String> {
    (0..HA_INSTANCES)
        .map(|i| format!("https://127.0.0.1:{}", ha_port(API_PORT, i)))
        .collect()
}

fn start_agent(layout: &Layout, node: &str, ha: bool) -> anyhow::Result<u32> {
    let instances = if ha { HA_INSTANCES } else { 1 };
    let servers: Vec<String> = (0..instances)
        .map(|i| format!("https://{HOST_ADDR}:{}", ha_port(AGENT_API_PORT, i)))
        .collect();
    let pki = layout.control_data().join("pki");
    // nsenter rather than `ip netns exec`: the latter remounts /sys, hiding bpffs.
    AGENT.start(
        layout,
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{NODE_NETNS}"))
            .arg(binary(AGENT.binary))
            .args(["--node-name", node])
            .args(["--server", &servers.join(",")])
            .arg("--ca-file")
            .arg(pki.join("ca.crt"))
            .arg("--bootstrap-token-file")
            .arg(pki.join("bootstrap-token"))
            .arg("--state-dir")
            .arg(layout.agent_state())
            .arg("--pin-dir")
            .arg(Layout::pin_dir(node))
            .args(["--node-address", &NODE_ADDR.to_string()])
            .arg("--local-volume-dir")
            .arg(layout.local_volumes())
            .args(["--external-interface", NODE_LINK])
            // A veth: native XDP_TX needs a program on the peer too, generic works alone.
            .args(["--xdp-mode", "generic"]),
    )
}

fn berthctl(layout: &Layout) -> Command {
    let mut command = Command::new(binary("berthctl"));
    command.arg("--kubeconfig").arg(layout.admin_config());
    command
}

/// Waits until every demo replica has answered through the node's NodePort.
fn wait_for_demo(layout: &Layout) -> anyhow::Result<Vec<String>> {
    let target = SocketAddrV4::new(NODE_ADDR, DEMO_NODE_PORT);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut answered = std::collections::BTreeSet::new();
    let mut reported = usize::MAX;
    loop {
        if let Ok(reply) = berth_echo::http_get(target) {
            answered.insert(reply.pod);
        }
        if answered.len() != reported {
            reported = answered.len();
            println!("    {reported} of {DEMO_REPLICAS} replicas answering at http://{target}/");
        }
        if answered.len() >= DEMO_REPLICAS {
            return Ok(answered.into_iter().collect());
        }
        if AGENT.running(layout).is_none() {
            bail!(
                "the node agent exited; the end of {}:\n{}",
                AGENT.log(layout).display(),
                log_tail(&AGENT.log(layout))
            );
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {DEMO_REPLICAS} replicas answered within 180 s; see `{} get pods` and \
                 {}",
                answered.len(),
                binary("berthctl").display(),
                AGENT.log(layout).display()
            );
        }
        thread::sleep(Duration::from_millis(300));
    }
}

pub fn up(args: &UpArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask up` creates a network namespace, loads BPF programs and runs containers: run it as root"
        );
    }
    let started = Instant::now();
    let layout = Layout {
        home: args.home.clone(),
    };
    for dir in [layout.logs(), layout.run()] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    step("Checking the machine (cargo xtask setup)", || {
        setup::run(&setup::Args::default()).map(drop)
    })?;
    step("Building the workload images (cargo xtask images)", || {
        images::run(&images::Args::default())
    })?;
    // Release binaries, what a cluster should run: debug ones are many times slower at
    // programming Services. The first build takes minutes (README): cargo shows progress.
    step(
        "Building berth-control, berth-agent and berthctl (release)",
        || {
            run_command(
                Command::new(env!("CARGO"))
                    .current_dir(workspace_root())
                    .args(["build", "--release"])
                    .args(CLUSTER_PACKAGES),
            )
        },
    )?;

    let node = match fs::read_to_string(layout.node_name_file()) {
        Ok(name) if !name.trim().is_empty() => name.trim().to_owned(),
        _ => node_name_for_host(),
    };
    let control_pid = CONTROL.running(&layout);
    let agent_pid = AGENT.running(&layout);
    let all_running = !args.ha
        || CONTROLS
            .iter()
            .chain(&ETCD)
            .all(|c| c.running(&layout).is_some());
    if let (Some(control_pid), Some(agent_pid)) = (control_pid, agent_pid)
        && all_running
        && berth_net::netns_exists(NODE_NETNS)
        && berth_echo::http_get(SocketAddrV4::new(NODE_ADDR, DEMO_NODE_PORT)).is_ok()
    {
        println!(
            "Berth is already up (control plane pid {control_pid}, agent pid {agent_pid} on node \
             {node}); nothing changed."
        );
        print_next_steps(&layout);
        return Ok(());
    }
    fs::write(layout.node_name_file(), format!("{node}\n"))?;

    step(
        &format!(
            "Node network: namespace {NODE_NETNS} ({NODE_ADDR}), linked to this host by \
             {HOST_LINK} ({HOST_ADDR})"
        ),
        || {
            if !ensure_node_network()? {
                println!("    already in place");
            }
            Ok(())
        },
    )?;
    if args.ha {
        start_ha_control_planes(&layout)?;
    } else {
        step(
            &format!(
                "Control plane (API https://{API_LISTEN}, data in {})",
                layout.control_data().display()
            ),
            || {
                match control_pid {
                    Some(pid) => println!("    already running (pid {pid})"),
                    None => println!("    started (pid {})", start_control(&layout)?),
                }
                let api: SocketAddr = API_LISTEN.parse()?;
                CONTROL.wait(&layout, Duration::from_secs(60), || {
                    layout.admin_config().exists()
                        && layout.control_data().join("pki/bootstrap-token").exists()
                        && tcp_answers(api)
                })
            },
        )?;
    }
    step(
        &format!("Node agent for node {node} in {NODE_NETNS}"),
        || {
            match agent_pid {
                Some(pid) => println!("    already running (pid {pid})"),
                None => println!(
                    "    started (pid {})",
                    start_agent(&layout, &node, args.ha)?
                ),
            }
            let metrics = SocketAddr::from((NODE_ADDR, AGENT_METRICS_PORT));
            AGENT.wait(&layout, Duration::from_secs(60), || tcp_answers(metrics))
        },
    )?;
    let replicas = step(
        &format!("Demo: Deployment echo ({DEMO_REPLICAS} replicas) and Service echo"),
        || {
            fs::write(layout.demo_manifest(), DEMO_MANIFEST)?;
            run_command(
                berthctl(&layout)
                    .args(["apply", "-f"])
                    .arg(layout.demo_manifest()),
            )?;
            wait_for_demo(&layout)
        },
    )?;
    println!(
        "\nBerth is up in {:.0} s: node {node}, replicas answering: {}.",
        started.elapsed().as_secs_f64(),
        replicas.join(", ")
    );
    if args.ha {
        let apis: Vec<String> = (0..HA_INSTANCES)
            .map(|i| format!("https://127.0.0.1:{}", ha_port(API_PORT, i)))
            .collect();
        println!(
            "Highly available: {HA_INSTANCES} control planes ({}) on etcd ({}); one leader runs \
             the controllers, any of them answers berthctl (`--server`).",
            apis.join(", "),
            etcd_store_url()
        );
    }
    print_next_steps(&layout);
    Ok(())
}

/// `up --ha`: the etcd members, then the control planes, the first alone so that it
/// publishes the cluster's CA and keys before the others take them.
fn start_ha_control_planes(layout: &Layout) -> anyhow::Result<()> {
    step(
        &format!("etcd: {HA_INSTANCES} members ({})", etcd_store_url()),
        || {
            for (i, member) in ETCD.iter().enumerate() {
                match member.running(layout) {
                    Some(pid) => println!("    {} already running (pid {pid})", member.what),
                    None => println!(
                        "    {} started (pid {})",
                        member.what,
                        start_etcd(layout, i)?
                    ),
                }
            }
            for (i, member) in ETCD.iter().enumerate() {
                let client = SocketAddr::from(([127, 0, 0, 1], ha_port(ETCD_CLIENT_PORT, i)));
                member.wait(layout, Duration::from_secs(60), || tcp_answers(client))?;
            }
            Ok(())
        },
    )?;
    for (i, control) in CONTROLS.iter().enumerate() {
        let api = SocketAddr::from(([127, 0, 0, 1], ha_port(API_PORT, i)));
        step(
            &format!(
                "{} on etcd (API https://{api}, data in {})",
                control.what,
                layout.control_data_of(i).display()
            ),
            || {
                match control.running(layout) {
                    Some(pid) => println!("    already running (pid {pid})"),
                    None => println!("    started (pid {})", start_ha_control(layout, i)?),
                }
                let data = layout.control_data_of(i);
                control.wait(layout, Duration::from_secs(60), || {
                    data.join("pki/bootstrap-token").exists() && tcp_answers(api)
                })
            },
        )?;
    }
    Ok(())
}

fn print_next_steps(layout: &Layout) {
    let berthctl = binary("berthctl");
    let berthctl = berthctl.display();
    println!(
        "
The demo Service `echo` answers on
  ClusterIP {DEMO_CLUSTER_IP}:80 (from pods) and NodePort {NODE_ADDR}:{DEMO_NODE_PORT} (from this host).

Try next:
  {berthctl} get pods -o wide
  for i in 1 2 3 4 5 6; do curl -s http://{NODE_ADDR}:{DEMO_NODE_PORT}/; done
  {berthctl} scale deployment echo --replicas 5

The client configuration is {admin} (berthctl's default), logs are in {logs},
node metrics at http://{NODE_ADDR}:{AGENT_METRICS_PORT}/metrics. Stop everything with
`cargo xtask down` (add --purge to delete the data too).",
        admin = layout.admin_config().display(),
        logs = layout.logs().display(),
    );
}

/// Container id and pod uid of every container the node's agent made.
fn node_containers(node: &str) -> anyhow::Result<Vec<(String, String)>> {
    let listing = output(Command::new("docker").args([
        "ps",
        "--all",
        "--filter",
        &format!("label=berth.node={node}"),
        "--format",
        "{{.ID}} {{.Label \"berth.pod.uid\"}}",
    ]))
    .context("listing the node's containers (is the Docker engine running?)")?;
    Ok(listing
        .lines()
        .filter_map(|line| {
            let (id, uid) = line.split_once(' ')?;
            Some((id.to_owned(), uid.trim().to_owned()))
        })
        .collect())
}

pub fn down(args: &DownArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!("`cargo xtask down` removes namespaces, BPF pins and containers: run it as root");
    }
    let layout = Layout {
        home: args.home.clone(),
    };
    let node = fs::read_to_string(layout.node_name_file())
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| node_name_for_host());

    // The agent first, so nothing restarts what is being removed.
    match AGENT.stop(&layout)? {
        Some(pid) => println!("stopped the node agent (pid {pid})"),
        None => println!("the node agent was not running"),
    }
    let containers = node_containers(&node)?;
    if !containers.is_empty() {
        let mut remove = Command::new("docker");
        remove.args(["rm", "--force", "--volumes"]);
        remove.args(containers.iter().map(|(id, _)| id));
        crate::util::succeeds(&mut remove);
        println!("removed {} containers of node {node}", containers.len());
    }
    let mut pod_namespaces = 0;
    for (_, uid) in &containers {
        let Some(veth) = berth_net::pod_host_veth(uid) else {
            continue;
        };
        let name = berth_net::pod_netns_name(&veth);
        if berth_net::netns_exists(&name) {
            berth_net::netns_delete(&name)?;
            pod_namespaces += 1;
        }
    }
    if pod_namespaces > 0 {
        println!("removed {pod_namespaces} pod network namespaces");
    }
    if berth_net::netns_exists(NODE_NETNS) {
        berth_net::netns_delete(NODE_NETNS)?;
        println!("removed network namespace {NODE_NETNS} (and the pods' links in it)");
    }
    if berth_net::link_exists(None, HOST_LINK) {
        berth_net::link_delete(None, HOST_LINK)?;
    }
    let pins = Layout::pin_dir(&node);
    if pins.exists() {
        fs::remove_dir_all(&pins).with_context(|| format!("removing {}", pins.display()))?;
        println!(
            "removed the pinned BPF maps and links in {}",
            pins.display()
        );
    }
    match CONTROL.stop(&layout)? {
        Some(pid) => println!("stopped the control plane (pid {pid})"),
        None => println!("the control plane was not running"),
    }
    // `up --ha`'s other control planes and the etcd members under them, if it ran.
    for component in CONTROLS[1..].iter().chain(&ETCD) {
        if let Some(pid) = component.stop(&layout)? {
            println!("stopped {} (pid {pid})", component.what);
        }
    }
    if args.purge {
        if layout.home.exists() {
            fs::remove_dir_all(&layout.home)
                .with_context(|| format!("removing {}", layout.home.display()))?;
        }
        println!("deleted {}", layout.home.display());
    } else {
        println!(
            "Berth is down. Data and logs are kept in {} (`cargo xtask down --purge` deletes them).",
            layout.home.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_manifest_agrees_with_the_constants() {
        assert!(DEMO_MANIFEST.contains(&format!("replicas: {DEMO_REPLICAS}")));
        assert!(DEMO_MANIFEST.contains(&format!("nodePort: {DEMO_NODE_PORT}")));
        assert!(DEMO_MANIFEST.contains(&format!("clusterIP: {DEMO_CLUSTER_IP}")));
    }

    #[test]
    fn a_stale_pid_file_is_not_a_running_process() {
        let home = std::env::temp_dir().join(format!("berth-up-test-{}", std::process::id()));
        let layout = Layout { home: home.clone() };
        fs::create_dir_all(layout.run()).expect("run dir");
        // Our own pid is alive but is not berth-control.
        fs::write(CONTROL.pid_file(&layout), std::process::id().to_string()).expect("pid");
        assert_eq!(CONTROL.running(&layout), None);
        fs::write(CONTROL.pid_file(&layout), "not a pid").expect("pid");
        assert_eq!(CONTROL.running(&layout), None);
        fs::remove_dir_all(home).expect("cleanup");
    }
}
