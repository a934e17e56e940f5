//! The real binaries together: berth-control and berth-agent in a node network namespace,
//! a Deployment and a Service applied with berthctl, pods run through Docker, a client pod
//! reaching the service through the eBPF datapath — and the agent restarted under load
//! without a failed request or a restarted container. Needs root, BPF and Docker, and the
//! images from `cargo xtask images`.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use berth_tests::{
    Load,
    process::{
        PodShell, Setup, answers_from_every_replica, container_ids, pod_netns, web_manifest,
    },
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 10);

#[tokio::test(flavor = "multi_thread")]
async fn agent_runs_pods_serves_the_service_and_restarts_without_a_failed_request() {
    Setup::new("agt").run(run).await;
}

async fn run(setup: &Setup) {
    let _control = setup.control_plane().await;
    let mut agent = setup.agent();

    setup.apply(&web_manifest(3, "198.18.200.10", true));
    let pods = setup.wait_running(4).await;
    let client_ip = pods
        .iter()
        .find(|(name, _)| name.starts_with("client-"))
        .map(|(_, ip)| *ip)
        .expect("the client pod");
    let client_ns = pod_netns(client_ip);

    // The service answers from every replica through the datapath.
    let target = SocketAddrV4::new(VIP, 80);
    for reply in answers_from_every_replica(&client_ns, target, 3) {
        assert_eq!(reply.client.ip(), std::net::IpAddr::V4(client_ip));
    }

    // Service discovery from inside a pod: its resolv.conf points at the node's DNS,
    // with the image's own clients, the ones users are told to exec into.
    let client = PodShell::find(&setup.node, "client-").await;
    let lookup = client
        .run(&["nslookup", "web.default.svc.cluster.local"])
        .await;
    assert!(
        lookup.output.contains(&VIP.to_string()),
        "nslookup web from a pod: {lookup:?}"
    );
    let fetched = client
        .run(&["wget", "-qO-", "http://web.default.svc.cluster.local/"])
        .await;
    assert!(
        fetched.output.starts_with("pod=web-"),
        "wget by the Service's name from a pod: {fetched:?}"
    );

    // kubectl's exec (a WebSocket to the control plane, which runs the command on the
    // pod's node) and logs.
    let client_pod = pods
        .iter()
        .find(|(name, _)| name.starts_with("client-"))
        .map(|(name, _)| name.clone())
        .expect("the client pod");
    match setup.kubectl(&[
        "exec",
        &client_pod,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]) {
        None => eprintln!("SKIPPED kubectl exec and logs: no kubectl on this machine"),
        Some(exec) => {
            let (stdout, stderr) = (
                String::from_utf8_lossy(&exec.stdout),
                String::from_utf8_lossy(&exec.stderr),
            );
            assert_eq!(exec.status.code(), Some(3), "{stdout}{stderr}");
            assert_eq!(stdout.trim(), "out", "{stderr}");
            assert!(stderr.contains("err"), "{stderr}");
            let logs = setup.kubectl(&["logs", &client_pod]).expect("kubectl");
            let ours = setup.berthctl(&["logs", &client_pod]);
            assert!(
                logs.status.success(),
                "{}",
                String::from_utf8_lossy(&logs.stderr)
            );
            let first = |output: &std::process::Output| {
                String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .next()
                    .map(str::to_owned)
            };
            assert_eq!(
                first(&logs),
                first(&ours),
                "kubectl and berthctl logs agree"
            );
        }
    }

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
