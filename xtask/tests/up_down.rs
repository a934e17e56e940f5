//! The README's first command: `cargo xtask up` brings up a one-node cluster whose demo
//! service answers from all three replicas through the eBPF datapath, a second `up`
//! changes nothing, and `cargo xtask down` leaves no process, container, namespace, link
//! or pinned map behind; then the same with `cargo xtask up --ha` (three etcd members,
//! three control planes), whose leader is killed. Needs root, BPF and Docker, like the
//! rest of the privileged tests.

use std::{
    collections::BTreeSet,
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

const DEMO: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 10, 2), 30080);

/// The cluster's home for this test (BERTH_HOME), so a cluster of the machine's own in
/// /var/lib/berth is not touched; removed by `down --purge`.
fn home() -> PathBuf {
    std::env::temp_dir().join(format!("berth-up-test-{}", std::process::id()))
}

fn cargo_xtask(args: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let output = Command::new(env!("CARGO"))
        .current_dir(root)
        .env("BERTH_HOME", home())
        .arg("xtask")
        .args(args)
        .output()
        .expect("running cargo xtask");
    println!(
        "$ cargo xtask {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `down` if the test ends before it did, so a failure leaves nothing running.
struct Teardown {
    done: bool,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if !self.done {
            cargo_xtask(&["down", "--purge"]);
        }
    }
}

/// The pod namespaces of the node's pods, from its containers' pod uids (other tests on
/// the machine have pod namespaces of their own).
fn pod_namespaces(node: &str) -> BTreeSet<String> {
    let listing = Command::new("docker")
        .args(["ps", "--all", "--filter"])
        .arg(format!("label=berth.node={node}"))
        .args(["--format", "{{.Label \"berth.pod.uid\"}}"])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter_map(berth_net::pod_host_veth)
        .map(|veth| berth_net::pod_netns_name(&veth))
        .collect()
}

fn pid(file: &str) -> u32 {
    let path = home().join("run").join(file);
    fs::read_to_string(&path)
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no pid in {}", path.display()))
}

#[test]
fn up_serves_the_demo_from_every_replica_and_down_leaves_nothing() {
    let mut teardown = Teardown { done: false };

    let up = cargo_xtask(&["up"]);
    assert!(up.status.success(), "cargo xtask up failed");
    let printed = String::from_utf8_lossy(&up.stdout);
    assert!(printed.contains("Berth is up"), "{printed}");
    assert!(
        printed.contains("get pods -o wide"),
        "next steps: {printed}"
    );

    // New connections from this host land on every replica.
    let mut replicas = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while replicas.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "replicas answering: {replicas:?}"
        );
        if let Ok(reply) = berth_echo::http_get(DEMO) {
            assert_eq!(reply.client.ip(), Ipv4Addr::new(198, 18, 10, 1));
            replicas.insert(reply.pod);
        }
    }

    let again = cargo_xtask(&["up"]);
    assert!(again.status.success(), "second up failed");
    let printed = String::from_utf8_lossy(&again.stdout);
    assert!(
        printed.contains("already up") && printed.contains("nothing changed"),
        "second up: {printed}"
    );

    let node = fs::read_to_string(home().join("run/node-name"))
        .expect("node name")
        .trim()
        .to_owned();
    let pids = [pid("berth-control.pid"), pid("berth-agent.pid")];
    let namespaces = pod_namespaces(&node);
    assert!(
        namespaces.len() >= 3 && namespaces.iter().all(|ns| berth_net::netns_exists(ns)),
        "the demo's pod namespaces: {namespaces:?}"
    );

    teardown.done = true;
    let down = cargo_xtask(&["down", "--purge"]);
    assert!(down.status.success(), "cargo xtask down failed");
    assert!(!home().exists(), "--purge left {}", home().display());

    for pid in pids {
        let alive = fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| !cmd.is_empty());
        assert!(!alive, "process {pid} is still running");
    }
    let containers = Command::new("docker")
        .args(["ps", "--all", "--quiet", "--filter"])
        .arg(format!("label=berth.node={node}"))
        .output()
        .expect("docker ps");
    assert!(
        containers.stdout.is_empty(),
        "containers left: {}",
        String::from_utf8_lossy(&containers.stdout)
    );
    assert!(
        !berth_net::netns_exists("berth-node"),
        "node namespace left"
    );
    assert!(!berth_net::link_exists(None, "berth0"), "host link left");
    assert!(
        !Path::new("/sys/fs/bpf/berth").join(&node).exists(),
        "pinned maps left"
    );
    let left: Vec<&String> = namespaces
        .iter()
        .filter(|ns| berth_net::netns_exists(ns))
        .collect();
    assert!(left.is_empty(), "pod namespaces left: {left:?}");

    highly_available_up_survives_the_leader_and_down_leaves_nothing();
}

/// berthctl with `up`'s admin.conf; `server` overrides its address.
fn berthctl(server: Option<&str>, args: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let mut command = Command::new(target.join("release/berthctl"));
    command.arg("--kubeconfig").arg(home().join("admin.conf"));
    if let Some(server) = server {
        command.args(["--server", server]);
    }
    command.args(args).output().expect("berthctl")
}

/// `up --ha` (after the plain cluster is gone, on the same names): three etcd members and
/// three control planes; the first control plane (the leader) killed with SIGKILL, the
/// demo keeps answering, a scale-up through berthctl's admin.conf (which names the dead
/// control plane first) goes to another and reaches the node; then
/// `down --purge` stops all seven processes.
fn highly_available_up_survives_the_leader_and_down_leaves_nothing() {
    let mut teardown = Teardown { done: false };
    let up = cargo_xtask(&["up", "--ha"]);
    assert!(up.status.success(), "cargo xtask up --ha failed");
    let printed = String::from_utf8_lossy(&up.stdout);
    assert!(
        printed.contains("Highly available: 3 control planes"),
        "{printed}"
    );
    let pids: Vec<u32> = [
        "berth-control.pid",
        "berth-control-1.pid",
        "berth-control-2.pid",
        "etcd-0.pid",
        "etcd-1.pid",
        "etcd-2.pid",
        "berth-agent.pid",
    ]
    .iter()
    .map(|file| pid(file))
    .collect();

    // The first control plane leads (it started first); it dies.
    let killed = Command::new("kill")
        .args(["-KILL", &pids[0].to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    for _ in 0..20 {
        assert!(
            berth_echo::http_get(DEMO).is_ok(),
            "the demo stopped answering"
        );
    }
    // admin.conf names the first control plane, and the other two to fail over to.
    let scaled = berthctl(None, &["scale", "deployment", "echo", "--replicas", "4"]);
    assert!(
        scaled.status.success(),
        "{}",
        String::from_utf8_lossy(&scaled.stderr)
    );
    let mut replicas = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while replicas.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "replicas answering after the leader died: {replicas:?}"
        );
        if let Ok(reply) = berth_echo::http_get(DEMO) {
            replicas.insert(reply.pod);
        }
    }

    teardown.done = true;
    let down = cargo_xtask(&["down", "--purge"]);
    assert!(down.status.success(), "cargo xtask down failed");
    for pid in pids {
        let alive = fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| !cmd.is_empty());
        assert!(!alive, "process {pid} is still running");
    }
    assert!(!home().exists(), "--purge left {}", home().display());
}
