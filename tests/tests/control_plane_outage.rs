//! The agent on its own: with the control plane stopped for 60 s, service traffic keeps
//! flowing, a crashed backend container is restarted and comes back into the service,
//! and once the control plane returns the agent reconnects and reports without
//! restarting anything that was fine. Real binaries, real Docker; needs root and BPF.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use berth_agent::runtime::{DockerRuntime, labels};
use berth_tests::{
    Load, get_here,
    process::{Setup, answers_from_every_replica, container_ids, pod_netns, web_manifest},
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 11);
const OUTAGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn without_the_control_plane_traffic_flows_and_crashes_are_restarted() {
    Setup::new("out").run(run).await;
}

/// The running app container of each web pod: pod name → container id.
async fn web_containers(runtime: &DockerRuntime, node: &str) -> BTreeMap<String, String> {
    runtime
        .list_by_labels(&[(labels::NODE, node), (labels::CONTAINER_NAME, "echo")])
        .await
        .expect("containers")
        .into_iter()
        .filter(|c| c.state == "running")
        .filter_map(|c| {
            let pod = c.labels.get(labels::POD_NAME)?.clone();
            pod.starts_with("web-").then_some((pod, c.id))
        })
        .collect()
}

/// The RESTARTS column of `berthctl get pods -o wide` for `pod`.
fn reported_restarts(setup: &Setup, pod: &str) -> Option<String> {
    let output = setup.berthctl(&["get", "pods", "-o", "wide"]);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&pod))
        .and_then(|fields| fields.get(3).map(|s| (*s).to_owned()))
}

async fn run(setup: &Setup) {
    let control = setup.control_plane().await;
    let _agent = setup.agent();
    setup.apply(&web_manifest(3, "198.18.200.11", true));
    let pods = setup.wait_running(4).await;
    let client_ip = pods
        .iter()
        .find(|(name, _)| name.starts_with("client-"))
        .map(|(_, ip)| *ip)
        .expect("the client pod");
    let client_ns = pod_netns(client_ip);
    let target = SocketAddrV4::new(VIP, 80);
    answers_from_every_replica(&client_ns, target, 3);
    let runtime = DockerRuntime::connect("/var/run/docker.sock")
        .await
        .expect("docker");

    // The control plane goes away (SIGKILL) for OUTAGE.
    drop(control);
    let outage_started = Instant::now();
    let before_crash = Load::start(&client_ns, target);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (ok, failed, errors) = before_crash.finish();
    assert!(
        ok > 10,
        "only {ok} requests answered with the control plane gone"
    );
    assert_eq!(
        failed, 0,
        "failures with the control plane gone: {errors:?}"
    );

    // A backend crashes; the agent restarts it and it rejoins the service.
    let web = web_containers(&runtime, &setup.node).await;
    let (crashed_pod, crashed_id) = web.iter().next().expect("a web container");
    let around_crash = Load::start(&client_ns, target);
    runtime
        .kill(crashed_id, "SIGKILL")
        .await
        .expect("killing a backend");
    let crashed_at = Instant::now();
    let restarted_id = loop {
        let now = web_containers(&runtime, &setup.node).await;
        if let Some(id) = now.get(crashed_pod).filter(|id| *id != crashed_id) {
            break id.clone();
        }
        assert!(
            crashed_at.elapsed() < Duration::from_secs(30),
            "{crashed_pod} was not restarted without the control plane"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let restarted_after = crashed_at.elapsed();
    loop {
        let reply = berth_net::in_netns(&client_ns, move || get_here(target)).expect("netns");
        if reply.is_ok_and(|reply| &reply.pod == crashed_pod) {
            break;
        }
        assert!(
            crashed_at.elapsed() < Duration::from_secs(30),
            "the restarted {crashed_pod} did not rejoin the service"
        );
    }
    let back_after = crashed_at.elapsed();
    let (ok, failed, errors) = around_crash.finish();
    println!(
        "backend crash without the control plane: restarted after {restarted_after:?}, \
         answering again after {back_after:?}; {ok} requests answered, {failed} failed: {errors:?}"
    );
    assert!(ok > 0, "no request answered while a backend restarted");

    // The rest of the outage: steady traffic, no failure.
    let steady = Load::start(&client_ns, target);
    tokio::time::sleep(OUTAGE.saturating_sub(outage_started.elapsed())).await;
    let (ok, failed, errors) = steady.finish();
    assert!(ok > 10, "only {ok} requests answered late in the outage");
    assert_eq!(failed, 0, "failures late in the outage: {errors:?}");

    // The control plane returns: the agent reconnects, reports the restart, and leaves
    // every container as it was.
    let settled = container_ids(&setup.node).await;
    let across_return = Load::start(&client_ns, target);
    let _control = setup.control_plane().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while reported_restarts(setup, crashed_pod).as_deref() != Some("1") {
        assert!(
            Instant::now() < deadline,
            "the control plane never heard of the restart of {crashed_pod}: {:?}",
            reported_restarts(setup, crashed_pod)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (ok, failed, errors) = across_return.finish();
    assert!(ok > 10, "only {ok} requests answered after the return");
    assert_eq!(
        failed, 0,
        "failures as the control plane returned: {errors:?}"
    );
    assert_eq!(setup.wait_running(4).await.len(), 4);
    assert_eq!(
        container_ids(&setup.node).await,
        settled,
        "the agent restarted or replaced containers after the control plane returned"
    );
    assert_eq!(
        web_containers(&runtime, &setup.node).await.get(crashed_pod),
        Some(&restarted_id)
    );
}
