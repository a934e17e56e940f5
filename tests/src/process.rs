//! The real binaries on one node: berth-control and berth-agent run inside a node network
//! namespace (the agent with real Docker and its eBPF datapath), berthctl against them.
//! Processes are killed by pid and reaped on drop; [`Setup::cleanup`] removes the node's
//! containers and the pod namespaces the agent named.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use berth_agent::runtime::DockerRuntime;
use berth_testkit::{PinDir, netns::NetNs, unique_name};

/// The node's address (on its namespace's loopback).
pub const NODE_ADDR: &str = "198.18.0.1";

/// A binary of the workspace, of the same build profile as the running executable: next
/// to it (a binary such as berth-bench in target/release) or in the directory above (a test
/// executable in target/<profile>/deps).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("running executable");
    let dir = exe.parent().expect("target directory");
    let next_to = dir.join(name);
    if next_to.is_file() {
        return next_to;
    }
    let path = dir.parent().expect("target directory").join(name);
    assert!(path.exists(), "{} is not built", path.display());
    path
}

/// A process killed by pid and reaped on drop.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Setup {
    pub node: String,
    pub data: tempfile::TempDir,
    pub state: tempfile::TempDir,
    pub pins: PinDir,
    pub ns: NetNs,
}

impl Setup {
    /// A node namespace holding [`NODE_ADDR`]; `prefix` names it and the node.
    pub fn new(prefix: &str) -> Setup {
        let ns = NetNs::new(&format!("b{prefix}")).expect("node namespace");
        ns.ip(&["addr", "add", &format!("{NODE_ADDR}/32"), "dev", "lo"])
            .expect("node address");
        Setup {
            node: unique_name(prefix),
            data: tempfile::tempdir().expect("data dir"),
            state: tempfile::tempdir().expect("state dir"),
            pins: PinDir::new(prefix),
            ns,
        }
    }

    /// Makes a link to `outside` (whose end is `router`, on a /24 with the node) the
    /// node's only way out: the node's address moves from its loopback to the link, which
    /// makes that link the node's underlay interface (where the agent masquerades), and
    /// the default route goes through it.
    pub fn link_out(&self, outside: &NetNs, router: &str) {
        self.ns
            .ip(&["addr", "del", &format!("{NODE_ADDR}/32"), "dev", "lo"])
            .expect("node address off lo");
        berth_testkit::netns::veth_between(
            &self.ns,
            "uplink",
            Some(&format!("{NODE_ADDR}/24")),
            outside,
            "downlink",
            Some(&format!("{router}/24")),
        )
        .expect("link out");
        self.ns
            .ip(&["route", "add", "default", "via", router])
            .expect("default route");
    }

    /// Where the node keeps claims' volumes: the test's own directory, given to the
    /// control plane and the agent alike.
    pub fn local_volume_dir(&self) -> PathBuf {
        self.data.path().join("volumes")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data.path().join("admin.conf")
    }

    /// berthctl with the admin configuration.
    pub fn berthctl(&self, args: &[&str]) -> Output {
        self.berthctl_with(&self.kubeconfig(), args)
    }

    /// berthctl with another client configuration.
    pub fn berthctl_with(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        self.berthctl_command(kubeconfig, args)
            .output()
            .expect("berthctl")
    }

    /// The machine's kubectl with the admin configuration, in the node namespace where the
    /// control plane listens; None when no kubectl is installed.
    pub fn kubectl(&self, args: &[&str]) -> Option<Output> {
        let output = self.kubectl_command(args)?.output().expect("kubectl");
        Some(output)
    }

    /// The kubectl command of [`Setup::kubectl`], for callers that feed its input or read
    /// its output as it comes; None when no kubectl is installed.
    pub fn kubectl_command(&self, args: &[&str]) -> Option<Command> {
        match Command::new("kubectl")
            .args(["version", "--client"])
            .output()
        {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            _ => {}
        }
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", self.ns.name(), "kubectl"])
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.data.path().join("kubectl-cache"))
            .args(args);
        Some(command)
    }

    /// The berthctl command, for callers that read its output as it comes.
    pub fn berthctl_command(&self, kubeconfig: &Path, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", self.ns.name()])
            .arg(binary("berthctl"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args);
        command
    }

    /// Starts the control plane in the node namespace (REST on 127.0.0.1:6443, agent API
    /// on :6444) and waits for its admin.conf.
    pub async fn control_plane(&self) -> Process {
        self.control_plane_with(&[]).await
    }

    /// The control plane with `extra` flags after the ones [`Setup::control_plane`] passes.
    pub async fn control_plane_with(&self, extra: &[&str]) -> Process {
        let control = Process(
            Command::new("ip")
                .args(["netns", "exec", self.ns.name()])
                .arg(binary("berth-control"))
                .arg("--data-dir")
                .arg(self.data.path())
                .args(["--listen", "127.0.0.1:6443"])
                .args(["--agent-listen", "127.0.0.1:6444"])
                .arg("--local-volume-dir")
                .arg(self.local_volume_dir())
                .args(extra)
                .spawn()
                .expect("starting berth-control"),
        );
        wait_for_admin_config(&self.kubeconfig()).await;
        control
    }

    pub fn agent(&self) -> Process {
        self.agent_with(&[])
    }

    /// The agent with `extra` flags after the ones [`Setup::agent`] passes.
    pub fn agent_with(&self, extra: &[&str]) -> Process {
        self.agent_of("https://127.0.0.1:6444", extra)
    }

    /// The agent of the control plane(s) at `servers` (`--server`).
    pub fn agent_of(&self, servers: &str, extra: &[&str]) -> Process {
        let data = self.data.path();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns.name()))
            .arg(binary("berth-agent"))
            .args(["--node-name", &self.node])
            .args(["--server", servers])
            .arg("--ca-file")
            .arg(data.join("pki/ca.crt"))
            .arg("--bootstrap-token-file")
            .arg(data.join("pki/bootstrap-token"))
            .arg("--state-dir")
            .arg(self.state.path())
            .arg("--pin-dir")
            .arg(self.pins.path())
            .args(["--node-address", NODE_ADDR])
            .arg("--local-volume-dir")
            .arg(self.local_volume_dir())
            .args(extra)
            .spawn()
            .expect("starting berth-agent");
        Process(child)
    }

    /// Applies `manifest` with berthctl, failing the test if it is refused.
    pub fn apply(&self, manifest: &str) {
        let path = self.data.path().join(format!("{}.yaml", unique_name("m")));
        std::fs::write(&path, manifest).expect("manifest");
        let applied = self.berthctl(&["apply", "-f", &path.display().to_string()]);
        assert!(
            applied.status.success(),
            "apply: {}",
            String::from_utf8_lossy(&applied.stderr)
        );
    }

    /// `name IP` of running pods, from `berthctl get pods`.
    pub fn running_pods(&self) -> Vec<(String, Ipv4Addr)> {
        running_pods(&self.berthctl(&["get", "pods", "-o", "wide"]))
            .into_iter()
            .map(|pod| (pod.name, pod.ip))
            .collect()
    }

    /// Waits until `count` pods run, and returns them.
    pub async fn wait_running(&self, count: usize) -> Vec<(String, Ipv4Addr)> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let pods = self.running_pods();
            if pods.len() == count {
                return pods;
            }
            if Instant::now() >= deadline {
                let described = self.berthctl(&["describe", "pods"]);
                panic!(
                    "{} pods running, not {count}: {pods:?}\n{}{}",
                    pods.len(),
                    String::from_utf8_lossy(&described.stdout),
                    String::from_utf8_lossy(&described.stderr)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Runs a test's body, then cleans up, also when the body panicked (its processes
    /// are dropped, so killed, while the panic unwinds out of it).
    pub async fn run<'a, F>(&'a self, body: impl FnOnce(&'a Setup) -> F)
    where
        F: std::future::Future<Output = ()> + 'a,
    {
        let result =
            futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(body(self))).await;
        self.cleanup().await;
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    /// Removes the node's containers and the pod namespaces the agent named.
    pub async fn cleanup(&self) {
        remove_node_pods(&self.node, &self.ns).await;
    }
}

/// Removes the containers of node `name` (whose namespace is `node`) and the pod
/// namespaces its agent named. Those are found from the containers' pod uids and from the
/// host veths in the node's namespace (a pod whose containers are already gone), so other
/// tests' pods, made while this one ran, are never touched.
pub async fn remove_node_pods(name: &str, node: &NetNs) {
    let mut namespaces = std::collections::BTreeSet::new();
    if let Ok(runtime) = DockerRuntime::connect("/var/run/docker.sock").await {
        for container in runtime
            .list_by_labels(&[("berth.node", name)])
            .await
            .unwrap_or_default()
        {
            if let Some(veth) = container
                .labels
                .get("berth.pod.uid")
                .and_then(|uid| berth_net::pod_host_veth(uid))
            {
                namespaces.insert(berth_net::pod_netns_name(&veth));
            }
            let _ = runtime.remove(&container.id).await;
        }
        // Memory emptyDirs: tmpfs volumes the engine keeps for the node's pods.
        let _ = runtime.remove_volumes(&[("berth.node", name)]).await;
    }
    let links = node.ip(&["-o", "link", "show"]).unwrap_or_default();
    for line in links.lines() {
        let Some(link) = line.split(':').nth(1) else {
            continue;
        };
        let veth = link.trim().split('@').next().unwrap_or_default();
        namespaces.insert(berth_net::pod_netns_name(veth));
    }
    for namespace in namespaces {
        if berth_net::netns_exists(&namespace) {
            let _ = berth_net::netns_delete(&namespace);
        }
    }
}

pub use berth_net::pod_netns_names;

/// A running pod as `berthctl get pods -o wide` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningPod {
    pub name: String,
    pub ready: bool,
    pub ip: Ipv4Addr,
    pub node: String,
}

/// The running pods in the output of `berthctl get pods -o wide`.
pub fn running_pods(output: &Output) -> Vec<RunningPod> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [name, ready, "Running", _restarts, _age, ip, node] => Some(RunningPod {
                    name: (*name).to_owned(),
                    ready: ready.split_once('/').is_some_and(|(r, t)| r == t),
                    ip: ip.parse().ok()?,
                    node: (*node).to_owned(),
                }),
                _ => None,
            }
        })
        .collect()
}

/// The /run/netns name of the pod namespace holding `ip`.
pub fn pod_netns(ip: Ipv4Addr) -> String {
    for name in pod_netns_names() {
        let addresses = berth_net::ip(Some(&name), &["-o", "addr", "show"]).unwrap_or_default();
        if addresses.contains(&format!("inet {ip}/32")) {
            return name;
        }
    }
    panic!("no pod namespace holds {ip}");
}

/// The `echo` container of a pod of node `node` (the first whose container name holds
/// `_<pod_prefix>`), to run the image's own clients in as a user would with exec.
pub struct PodShell {
    runtime: DockerRuntime,
    id: String,
}

impl PodShell {
    pub async fn find(node: &str, pod_prefix: &str) -> PodShell {
        let runtime = DockerRuntime::connect("/var/run/docker.sock")
            .await
            .expect("docker");
        let id = runtime
            .list_by_labels(&[("berth.node", node), ("berth.container.name", "echo")])
            .await
            .expect("containers")
            .into_iter()
            .find(|container| container.name.contains(&format!("_{pod_prefix}")))
            .unwrap_or_else(|| panic!("no {pod_prefix} container on node {node}"))
            .id;
        PodShell { runtime, id }
    }

    /// Runs `command` in the container (15 s at most).
    pub async fn run(&self, command: &[&str]) -> berth_agent::runtime::ExecOutput {
        let command: Vec<String> = command.iter().map(|part| (*part).to_owned()).collect();
        self.runtime
            .exec(&self.id, &command, Duration::from_secs(15))
            .await
            .unwrap_or_else(|error| panic!("{command:?} in the pod: {error}"))
    }
}

/// Ids of the node's containers, sorted.
pub async fn container_ids(node: &str) -> Vec<String> {
    let runtime = DockerRuntime::connect("/var/run/docker.sock")
        .await
        .expect("docker");
    let mut ids: Vec<String> = runtime
        .list_by_labels(&[("berth.node", node)])
        .await
        .expect("list containers")
        .into_iter()
        .map(|container| container.id)
        .collect();
    ids.sort();
    ids
}

/// A Deployment `web` of `replicas` echo servers behind Service `web` at `cluster_ip`
/// (port 80 → 8080, readiness checked every second), optionally with a one-replica
/// Deployment `client` that is not a backend, to send requests from.
pub fn web_manifest(replicas: u32, cluster_ip: &str, with_client: bool) -> String {
    WebManifest {
        replicas,
        cluster_ip,
        image: "berth/echo:v1",
        node_port: None,
        with_client,
        pre_stop_sleep: 0,
        readiness_period: Some(1),
        readiness_failure_threshold: None,
    }
    .render()
}

/// The web Deployment and Service of [`web_manifest`], every part chosen.
pub struct WebManifest<'a> {
    pub replicas: u32,
    pub cluster_ip: &'a str,
    pub image: &'a str,
    /// Makes the Service a NodePort one, answering on every node's address at this port.
    pub node_port: Option<u16>,
    pub with_client: bool,
    /// Seconds of `lifecycle.preStop.sleep` for the echo container (0: no hook): what a
    /// Kubernetes user gives a server so that every node's datapath has dropped a deleted
    /// pod's endpoint before it gets SIGTERM.
    pub pre_stop_sleep: u32,
    /// The readiness probe's `periodSeconds` and `failureThreshold`; None leaves the field
    /// out, so the agent's default applies (1 s and 1; Kubernetes': 10 s and 3).
    pub readiness_period: Option<u32>,
    pub readiness_failure_threshold: Option<u32>,
}

impl WebManifest<'_> {
    pub fn render(&self) -> String {
        let WebManifest {
            replicas,
            cluster_ip,
            image,
            node_port,
            with_client,
            pre_stop_sleep,
            readiness_period,
            readiness_failure_threshold,
        } = self;
        let readiness = [
            ("periodSeconds", readiness_period),
            ("failureThreshold", readiness_failure_threshold),
        ]
        .iter()
        .filter_map(|(field, value)| value.map(|value| format!(", {field}: {value}")))
        .collect::<String>();
        let pre_stop = if *pre_stop_sleep > 0 {
            format!("\n          lifecycle: {{preStop: {{sleep: {{seconds: {pre_stop_sleep}}}}}}}")
        } else {
            String::new()
        };
        let (service_type, node_port) = match node_port {
            Some(port) => ("NodePort", format!(", nodePort: {port}")),
            None => ("ClusterIP", String::new()),
        };
        let mut manifest = format!(
            "
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: echo
          image: {image}
          ports: [{{containerPort: 8080}}]
          readinessProbe: {{httpGet: {{path: /readyz, port: 8080}}{readiness}}}{pre_stop}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: {service_type}
  clusterIP: {cluster_ip}
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080{node_port}}}]
"
        );
        if *with_client {
            manifest.push_str(
                "---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers: [{name: echo, image: berth/echo:v1}]
",
            );
        }
        manifest
    }
}

/// Waits up to 30 s for a starting control plane to write its admin.conf.
pub async fn wait_for_admin_config(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "the control plane did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asks `target` from the pod namespace `client_ns` on new connections until `count`
/// different pods have answered (30 s at most); returns one answer of each.
pub fn answers_from_every_replica(
    client_ns: &str,
    target: std::net::SocketAddrV4,
    count: usize,
) -> Vec<berth_echo::Reply> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen: std::collections::BTreeMap<String, berth_echo::Reply> =
        std::collections::BTreeMap::new();
    while seen.len() < count {
        assert!(
            Instant::now() < deadline,
            "replicas answering: {:?}",
            seen.keys()
        );
        let reply = berth_net::in_netns(client_ns, move || crate::get_here(target)).expect("netns");
        if let Ok(reply) = reply {
            seen.insert(reply.pod.clone(), reply);
        }
    }
    seen.into_values().collect()
}

/// An HTTP server outside the cluster (in a namespace a test made) on port 80 of `addr`
/// that answers `client=<the address it sees the client at>`, and records it.
pub struct OutsideServer {
    pub clients: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OutsideServer {
    pub fn start(outside: &NetNs, addr: Ipv4Addr) -> OutsideServer {
        let listener = outside.run(|| TcpListener::bind((addr, 80)).expect("bind web"));
        listener.set_nonblocking(true).expect("nonblocking");
        let clients = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (clients.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Ok((mut stream, peer)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                seen.lock().expect("clients").push(peer);
                let body = format!("client={}\n", peer.ip());
                let _ = write!(
                    stream,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        OutsideServer {
            clients,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for OutsideServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
