//! The real binaries together: berth-control and berth-agent in a node network namespace,
//! a Deployment and a Service applied with berthctl, pods run through Docker, a client pod
//! reaching the service through the eBPF datapath — and the agent restarted under load
//! without a failed request or a restarted container. Needs root, BPF and Docker, and the
//! images from `cargo xtask images`.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    time::{Duration, Instant},
};

use berth_agent::runtime::DockerRuntime;
use berth_testkit::{PinDir, netns::NetNs, unique_name};
use berth_tests::{Load, get_here};

const NODE_ADDR: &str = "198.18.0.1";
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 10);

/// A binary of the workspace, next to this test's own executable's directory.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(path.exists(), "{} is not built", path.display());
    path
}

/// A process killed by pid and reaped on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Setup {
    node: String,
    data: tempfile::TempDir,
    state: tempfile::TempDir,
    pins: PinDir,
    ns: NetNs,
}

impl Setup {
    fn berthctl(&self, args: &[&str]) -> Output {
        let kubeconfig = self.data.path().join("admin.conf");
        Command::new("ip")
            .args(["netns", "exec", self.ns.name()])
            .arg(binary("berthctl"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .expect("berthctl")
    }

    fn agent(&self) -> Process {
        let data = self.data.path();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns.name()))
            .arg(binary("berth-agent"))
            .args(["--node-name", &self.node])
            .args(["--server", "https://127.0.0.1:6444"])
            .arg("--ca-file")
            .arg(data.join("pki/ca.crt"))
            .arg("--bootstrap-token-file")
            .arg(data.join("pki/bootstrap-token"))
            .arg("--state-dir")
            .arg(self.state.path())
            .arg("--pin-dir")
            .arg(self.pins.path())
            .args(["--node-address", NODE_ADDR])
            .spawn()
            .expect("starting berth-agent");
        Process(child)
    }

    /// `name IP` of running pods, from `berthctl get pods -o wide`.
    fn running_pods(&self) -> Vec<(String, Ipv4Addr)> {
        let output = self.berthctl(&["get", "pods", "-o", "wide"]);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                match fields.as_slice() {
                    [name, _ready, "Running", _restarts, _age, ip, _node] => {
                        Some(((*name).to_owned(), ip.parse().ok()?))
                    }
                    _ => None,
                }
            })
            .collect()
    }
}

/// Names of the pod namespaces the agents gave names to.
fn pod_netns_names() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("berth-pod-"))
        .collect()
}

/// The /run/netns name of the pod namespace holding `ip`.
fn pod_netns(ip: Ipv4Addr) -> String {
    for name in pod_netns_names() {
        let addresses = berth_net::ip(Some(&name), &["-o", "addr", "show"]).unwrap_or_default();
        if addresses.contains(&format!("inet {ip}/32")) {
            return name;
        }
    }
    panic!("no pod namespace holds {ip}");
}

async fn container_ids(node: &str) -> Vec<String> {
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

async fn remove_containers(node: &str) {
    let Ok(runtime) = DockerRuntime::connect("/var/run/docker.sock").await else {
        return;
    };
    for container in runtime
        .list_by_labels(&[("berth.node", node)])
        .await
        .unwrap_or_default()
    {
        let _ = runtime.remove(&container.id).await;
    }
}

const MANIFEST: &str = "
# Three echo replicas behind a service, and a client that is not one of them.
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: echo
          image: berth/echo:v1
          ports: [{containerPort: 8080}]
          readinessProbe: {httpGet: {path: /readyz, port: 8080}}
---
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
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 198.18.200.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
";

#[tokio::test(flavor = "multi_thread")]
async fn agent_runs_pods_serves_the_service_and_restarts_without_a_failed_request() {
    let node = unique_name("agt");
    let ns = NetNs::new("bagt").expect("node namespace");
    ns.ip(&["addr", "add", &format!("{NODE_ADDR}/32"), "dev", "lo"])
        .expect("node address");
    let setup = Setup {
        node: node.clone(),
        data: tempfile::tempdir().expect("data dir"),
        state: tempfile::tempdir().expect("state dir"),
        pins: PinDir::new("agent"),
        ns,
    };
    let pod_namespaces_before = pod_netns_names();
    let result =
        futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run(&setup))).await;
    // Cleanup whatever happened: the agent's containers and the pods' namespace names.
    remove_containers(&node).await;
    for name in pod_netns_names() {
        if !pod_namespaces_before.contains(&name) {
            let _ = berth_net::netns_delete(&name);
        }
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

async fn run(setup: &Setup) {
    let _control = Process(
        Command::new("ip")
            .args(["netns", "exec", setup.ns.name()])
            .arg(binary("berth-control"))
            .arg("--data-dir")
            .arg(setup.data.path())
            .args(["--listen", "127.0.0.1:6443"])
            .args(["--agent-listen", "127.0.0.1:6444"])
            .spawn()
            .expect("starting berth-control"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !setup.data.path().join("admin.conf").exists() {
        assert!(Instant::now() < deadline, "the control plane did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut agent = setup.agent();

    let manifest = setup.data.path().join("app.yaml");
    std::fs::write(&manifest, MANIFEST).expect("manifest");
    let applied = setup.berthctl(&["apply", "-f", &manifest.display().to_string()]);
    assert!(
        applied.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let deadline = Instant::now() + Duration::from_secs(90);
    let pods = loop {
        let pods = setup.running_pods();
        if pods.len() == 4 {
            break pods;
        }
        assert!(Instant::now() < deadline, "pods not running: {pods:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let client_ip = pods
        .iter()
        .find(|(name, _)| name.starts_with("client-"))
        .map(|(_, ip)| *ip)
        .expect("the client pod");
    let client_ns = pod_netns(client_ip);

    // The service answers from every replica through the datapath.
    let target = SocketAddrV4::new(VIP, 80);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 3 {
        assert!(Instant::now() < deadline, "replicas answering: {seen:?}");
        let reply = berth_net::in_netns(&client_ns, move || get_here(target)).expect("netns");
        if let Ok(reply) = reply {
            assert_eq!(reply.client.ip(), std::net::IpAddr::V4(client_ip));
            seen.insert(reply.pod);
        }
    }

    // Service discovery from inside a pod: its resolv.conf points at the node's DNS.
    let runtime = DockerRuntime::connect("/var/run/docker.sock")
        .await
        .expect("docker");
    let client = runtime
        .list_by_labels(&[
            ("berth.node", &setup.node),
            ("berth.container.name", "echo"),
        ])
        .await
        .expect("containers")
        .into_iter()
        .find(|container| container.name.contains("_client-"))
        .expect("the client container");
    let lookup = runtime
        .exec(
            &client.id,
            &[
                "/bin/busybox".to_owned(),
                "nslookup".to_owned(),
                "web.default.svc.cluster.local".to_owned(),
            ],
            Duration::from_secs(10),
        )
        .await
        .expect("nslookup in the client pod");
    assert!(
        lookup.output.contains(&VIP.to_string()),
        "nslookup web from a pod: {lookup:?}"
    );

    // Restart the agent while the client keeps connecting.
    let before = container_ids(&setup.node).await;
    let load = Load::start(&client_ns, target);
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(agent);
    tokio::time::sleep(Duration::from_secs(1)).await;
    agent = setup.agent();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (ok, failed, errors) = load.finish();
    assert!(ok > 20, "only {ok} requests went through");
    assert_eq!(
        failed, 0,
        "{failed} requests failed across the agent restart: {errors:?}"
    );
    assert_eq!(
        container_ids(&setup.node).await,
        before,
        "the restarted agent adopted the containers instead of recreating them"
    );
    drop(agent);
}
