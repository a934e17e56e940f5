//! An agent with two control planes on one etcd (`--server a,b`): the one it uses is
//! killed with SIGKILL while a client pod sends steady traffic through a Service; no
//! request fails, the agent moves to the other control plane, its node stays Ready, and
//! a pod scheduled afterwards (through the other control plane) runs on it, and its
//! watches resumed there from their last revision (no full resync). Real binaries, real
//! Docker, a real etcd; needs root and BPF.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use std::io::{Read as _, Write as _};

use berth_testkit::etcd::EtcdCluster;
use berth_tests::{
    Load,
    process::{
        Process, Setup, answers_from_every_replica, binary, pod_netns, wait_for_admin_config,
        web_manifest,
    },
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 12);

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_moves_to_another_control_plane_without_a_failed_request() {
    Setup::new("cpf").run(run).await;
}

/// The second control plane: its own data directory and ports, the same etcd.
async fn second_control_plane(setup: &Setup, store: &str, data: &Path) -> Process {
    let process = Process(
        Command::new("ip")
            .args(["netns", "exec", setup.ns.name()])
            .arg(binary("berth-control"))
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", "127.0.0.1:6445"])
            .args(["--agent-listen", "127.0.0.1:6446"])
            .args(["--store", store])
            .arg("--local-volume-dir")
            .arg(setup.local_volume_dir())
            .spawn()
            .expect("starting the second berth-control"),
    );
    // It publishes nothing of its own: it writes admin.conf only once its API is up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !data.join("pki/ca.crt").exists() {
        assert!(
            Instant::now() < deadline,
            "the second control plane did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    process
}

async fn run(setup: &Setup) {
    let etcd = EtcdCluster::start_in(Some(setup.ns.name()), 1);
    let store = etcd.store_url();
    let first = setup.control_plane_with(&["--store", &store]).await;
    let second_data = tempfile::tempdir().expect("data dir");
    let _second = second_control_plane(setup, &store, second_data.path()).await;
    // The admin credentials of the first work at the second: the same CA and token.
    let second_kubeconfig = second_data.path().join("admin-of-first.conf");
    let admin = std::fs::read_to_string(setup.kubeconfig()).expect("admin.conf");
    std::fs::write(
        &second_kubeconfig,
        admin.replace("127.0.0.1:6443", "127.0.0.1:6445"),
    )
    .expect("kubeconfig for the second");
    wait_for_admin_config(&second_kubeconfig).await;

    let _agent = setup.agent_of("https://127.0.0.1:6444,https://127.0.0.1:6446", &[]);
    setup.apply(&web_manifest(3, "198.18.200.12", true));
    let pods = setup.wait_running(4).await;
    let client_ip = pods
        .iter()
        .find(|(name, _)| name.starts_with("client-"))
        .map(|(_, ip)| *ip)
        .expect("the client pod");
    let client_ns = pod_netns(client_ip);
    let target = SocketAddrV4::new(VIP, 80);
    answers_from_every_replica(&client_ns, target, 3);

    let load = Load::start(&client_ns, target);
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(first);
    let killed = Instant::now();

    // Scaled up through the second control plane: the new pod runs on the agent, which
    // gets it from the second control plane's watch.
    let scaled = setup.berthctl_with(
        &second_kubeconfig,
        &["scale", "deployment", "web", "--replicas", "4"],
    );
    assert!(
        scaled.status.success(),
        "{}",
        String::from_utf8_lossy(&scaled.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let running = berth_tests::process::running_pods(
            &setup.berthctl_with(&second_kubeconfig, &["get", "pods", "-o", "wide"]),
        );
        if running.len() == 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fourth replica never ran after the failover: {running:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let running_after = killed.elapsed();
    // The node kept reporting: Ready at the second control plane.
    let nodes = setup.berthctl_with(&second_kubeconfig, &["get", "nodes"]);
    let nodes = String::from_utf8_lossy(&nodes.stdout).into_owned();
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with(&setup.node) && l.split_whitespace().nth(1) == Some("Ready")),
        "{nodes}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, failed, errors) = load.finish();
    println!(
        "control plane failover: the new replica ran {} ms after the agent's control plane \
         was killed; {ok} requests answered, {failed} failed",
        running_after.as_millis()
    );
    assert!(ok > 10, "only {ok} requests answered");
    assert_eq!(failed, 0, "failed requests across the failover: {errors:?}");

    // Both watches went on at the second control plane from where they were: one
    // snapshot each (the first), and at least one resumed stream.
    let metrics = agent_metrics(setup);
    for watch in ["pods", "services"] {
        let streams = |start: &str| {
            let series =
                format!("berth_agent_watch_streams_total{{start=\"{start}\",watch=\"{watch}\"}} ");
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(&series))
                .and_then(|value| value.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        println!(
            "control plane failover: the agent's {watch} watch: {} snapshot(s), {} resumed stream(s)",
            streams("snapshot"),
            streams("resumed")
        );
        assert_eq!(streams("snapshot"), 1, "{watch}: a resync:\n{metrics}");
        assert!(
            streams("resumed") >= 1,
            "{watch}: never resumed:\n{metrics}"
        );
    }
}

/// The agent's /metrics, read inside the node's namespace.
fn agent_metrics(setup: &Setup) -> String {
    setup.ns.run(|| {
        let mut stream =
            std::net::TcpStream::connect((berth_tests::process::NODE_ADDR, 9102)).expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")
            .expect("request");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("metrics");
        text
    })
}
