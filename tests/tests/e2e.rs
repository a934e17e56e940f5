//! End to end (`cargo xtask e2e`): three nodes, the real control plane, one real agent per
//! node and the real Docker engine on one machine (see `berth_tests::e2e`), and the
//! scenarios users care about, one after the other on the same cluster. During each, two
//! clients send requests at a steady rate — a pod to the Service's ClusterIP, and a
//! machine outside the cluster to its NodePort on node 0 — and every failed request is
//! counted. The report at the end gives, per scenario, requests sent and failed and the
//! measured detection and recovery times. Needs root, BPF and Docker.
//!
//! The scenarios run twice, on a cluster each: nodes on one link with the agents in
//! native-routing mode, and nodes on links of their own (joined by a router that knows
//! nothing of pods) in encapsulation mode. The two tests take turns: two clusters at
//! once would share the machine's two cores and blur the timings.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use berth_agent::runtime::DockerRuntime;
use berth_tests::{
    Load,
    e2e::{
        ControlOptions, E2eCluster, E2eNetwork, Underlay, app_container, exec, names, responders,
        wait_responders,
    },
    get_here,
    process::{WebManifest, pod_netns},
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 31);
const NODE_PORT: u16 = 30081;
/// One request every 20 ms from each client: 50 requests per second each.
const PACE: Duration = Duration::from_millis(20);
/// The web pods' `lifecycle.preStop.sleep`: longer than it takes every node's datapath to
/// drop a deleted pod's endpoint, so the server gets SIGTERM only after the last new
/// connection reached it.
const PRE_STOP_SLEEP: u32 = 2;

/// One cluster at a time (see the module's documentation).
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn end_to_end_scenarios_native_routing() {
    run_scenarios(
        "Native routing (nodes on one link)",
        E2eNetwork {
            underlay: Underlay::OneLink,
            routing_mode: Some("native"),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn end_to_end_scenarios_encapsulation() {
    run_scenarios(
        "Encapsulation (each node on a link of its own, joined by a router)",
        E2eNetwork {
            underlay: Underlay::Routed,
            routing_mode: Some("encapsulation"),
        },
    )
    .await;
}

async fn run_scenarios(title: &str, network: E2eNetwork) {
    let _turn = ONE_CLUSTER.lock().await;
    let cluster = E2eCluster::with_network(
        3,
        ControlOptions {
            node_grace_secs: 4,
            pod_eviction_timeout_secs: 10,
            autoscaler_sync_secs: 2,
            autoscaler_downscale_stabilization_secs: 10,
        },
        network,
    );
    let started = Instant::now();
    let report = cluster.run(async |cluster| scenarios(cluster).await).await;
    let report = format!(
        "### {title}\n\n{report}\nAll scenarios in {}.\n\n",
        seconds(started.elapsed())
    );
    println!("{report}");
    // Each test adds its section; `cargo xtask e2e` starts from an empty file.
    if let Ok(path) = std::env::var("BERTH_E2E_REPORT") {
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(report.as_bytes()))
            .unwrap_or_else(|error| panic!("writing {path}: {error}"));
    }
}

/// One scenario's line in the report.
struct Row {
    scenario: &'static str,
    sent: u64,
    failed: u64,
    times: String,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(
        &mut self,
        scenario: &'static str,
        traffic: Traffic,
        times: String,
    ) -> (u64, Vec<String>) {
        let (sent, failed, errors) = traffic.finish();
        println!("scenario {scenario}: {sent} requests, {failed} failed; {times}");
        self.rows.push(Row {
            scenario,
            sent,
            failed,
            times,
        });
        (failed, errors)
    }

    fn render(&self) -> String {
        let mut out = String::from(
            "| scenario | requests | failed | detection / recovery |\n|---|---:|---:|---|\n",
        );
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                row.scenario, row.sent, row.failed, row.times
            );
        }
        out
    }
}

/// The two steady clients: a pod to the ClusterIP, the outside client to the NodePort.
struct Traffic {
    inside: Load,
    outside: Load,
}

impl Traffic {
    fn start(cluster: &E2eCluster, client_ns: &str) -> Traffic {
        Traffic {
            inside: Load::paced(client_ns, SocketAddrV4::new(VIP, 80), PACE),
            outside: Load::paced(
                cluster.client.name(),
                SocketAddrV4::new(cluster.nodes[0].addr, NODE_PORT),
                PACE,
            ),
        }
    }

    /// (sent, failed, the failures' messages).
    fn finish(self) -> (u64, u64, Vec<String>) {
        let (ok_in, failed_in, mut errors) = self.inside.finish();
        let (ok_out, failed_out, errors_out) = self.outside.finish();
        errors.extend(errors_out.into_iter().map(|e| format!("outside: {e}")));
        errors.truncate(20);
        (
            ok_in + failed_in + ok_out + failed_out,
            failed_in + failed_out,
            errors,
        )
    }
}

fn manifest(replicas: u32, image: &str) -> String {
    WebManifest {
        replicas,
        cluster_ip: &VIP.to_string(),
        image,
        node_port: Some(NODE_PORT),
        with_client: true,
        pre_stop_sleep: PRE_STOP_SLEEP,
        readiness_period: Some(1),
        readiness_failure_threshold: None,
    }
    .render()
}

/// A StatefulSet under its headless Service: pods `db-0`..`db-2`.
const STATEFUL: &str = "apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
        - name: echo
          image: berth/echo:v1
          ports: [{containerPort: 8080}]
          readinessProbe: {httpGet: {path: /readyz, port: 8080}, periodSeconds: 1}
";

/// Each StatefulSet pod resolves by its own name (`db-1.db.default.svc.cluster.local`)
/// from another pod, through the DNS server of that pod's node, answers at the shorter
/// `db-1.db.default.svc` (the search path), and calls itself by its name.
async fn stateful_pods_resolve_by_name(
    cluster: &E2eCluster,
    runtime: &DockerRuntime,
    client_container: &str,
) {
    let started = Instant::now();
    cluster.apply(STATEFUL);
    let pods = cluster.wait_ready("db-", 3, Duration::from_secs(180)).await;
    println!(
        "statefulset db ready in {} on {:?}",
        seconds(started.elapsed()),
        pods.iter().map(|p| &p.node).collect::<Vec<_>>()
    );
    let resolve = async |name: &str| -> Option<Ipv4Addr> {
        let lookup = exec(
            runtime,
            client_container,
            &["/bin/busybox", "nslookup", name],
        )
        .await;
        lookup
            .lines()
            .filter_map(|line| line.strip_prefix("Address:"))
            .filter_map(|address| address.trim().parse().ok())
            .next_back()
    };
    for pod in &pods {
        let name = format!("{}.db.default.svc.cluster.local", pod.name);
        // The agents learn the endpoints a moment after the pods turn ready.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let resolved = resolve(&name).await;
            if resolved == Some(pod.ip) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} from a pod: {resolved:?}, not {}",
                pod.ip
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // The shorter name through the pod's search path (the image's own resolver,
        // which searches as the C library does; busybox's nslookup does not), and the
        // pod answers on it.
        let url = format!("http://{}.db.default.svc:8080/", pod.name);
        let fetched = exec(runtime, client_container, &["wget", "-qO-", &url]).await;
        assert!(
            fetched.starts_with(&format!("pod={}", pod.name)),
            "{url} from a pod: {fetched:?}"
        );
        let container = app_container(runtime, &pod.name)
            .await
            .expect("the pod's container");
        let hostname = exec(runtime, &container, &["/bin/busybox", "hostname"]).await;
        assert_eq!(hostname.trim(), pod.name, "the pod's host name");
    }
    cluster.berthctl_ok(&["delete", "statefulset", "db"]);
    cluster.berthctl_ok(&["delete", "service", "db"]);
    cluster.wait_ready("db-", 0, Duration::from_secs(120)).await;
}

fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

async fn scenarios(cluster: &mut E2eCluster) -> String {
    let mut report = Report::default();
    let runtime = DockerRuntime::connect("/var/run/docker.sock")
        .await
        .expect("docker");
    let vip = SocketAddrV4::new(VIP, 80);
    let outside = cluster.client.name().to_owned();
    let node_port = |cluster: &E2eCluster| SocketAddrV4::new(cluster.nodes[0].addr, NODE_PORT);
    let started = Instant::now();
    cluster.start().await;
    println!("cluster up in {}", seconds(started.elapsed()));
    // The agents route each other's pod ranges (the harness adds no route); through the
    // tunnel, the routes leave room for the IPIP header.
    let routes = cluster.wait_pod_routes().await;
    println!("the agents' routes: {routes:?}");
    let tunnelled = cluster.network.routing_mode == Some("encapsulation");
    for node_routes in &routes {
        for line in node_routes.lines() {
            assert_eq!(line.contains("mtu 1480"), tunnelled, "{line}");
        }
    }

    // 1. Deploy: reach the service by VIP and DNS name from a pod, by the NodePort from
    // outside; every replica answers.
    let started = Instant::now();
    cluster.apply(&manifest(3, "berth/echo:v1"));
    let client = cluster
        .wait_ready("client-", 1, Duration::from_secs(180))
        .await
        .remove(0);
    let web = cluster
        .wait_ready("web-", 3, Duration::from_secs(180))
        .await;
    let client_ns = pod_netns(client.ip);
    let deployed = started.elapsed();
    let traffic = Traffic::start(cluster, &client_ns);
    let by_vip = wait_responders(&client_ns, vip, &names(&web), Duration::from_secs(30)).await;
    let by_node_port = wait_responders(
        &outside,
        node_port(cluster),
        &names(&web),
        Duration::from_secs(30),
    )
    .await;
    let client_container = app_container(&runtime, &client.name)
        .await
        .expect("the client pod's container");
    // By name: the pod's resolver (its resolv.conf names its node's DNS server) answers,
    // then the pod connects to the answer (busybox's nslookup here; the image's own
    // `nslookup` and `wget` are exercised in agent_process.rs).
    let lookup = exec(
        &runtime,
        &client_container,
        &["/bin/busybox", "nslookup", "web.default.svc.cluster.local"],
    )
    .await;
    let resolved: Ipv4Addr = lookup
        .lines()
        .filter_map(|line| line.strip_prefix("Address:"))
        .filter_map(|address| address.trim().parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("nslookup web from a pod: {lookup:?}"));
    assert_eq!(resolved, VIP, "nslookup web from a pod: {lookup:?}");
    let by_name = responders(&client_ns, SocketAddrV4::new(resolved, 80), 30);
    assert_eq!(by_name, names(&web), "by DNS name from a pod");
    stateful_pods_resolve_by_name(cluster, &runtime, &client_container).await;
    // Pod to pod, by pod IP, no Service: every replica answers the client pod, those on
    // other nodes through the agents' routes (native, or the tunnel).
    let mut direct = BTreeSet::new();
    for pod in &web {
        let target = SocketAddrV4::new(pod.ip, 8080);
        let reply = berth_net::in_netns(&client_ns, move || get_here(target))
            .expect("netns")
            .unwrap_or_else(|error| {
                panic!("pod {} at {target} from the client pod: {error}", pod.name)
            });
        direct.insert(reply.pod);
    }
    assert_eq!(direct, names(&web), "by pod IP from a pod");
    let remote = web.iter().filter(|pod| pod.node != client.node).count();
    assert!(
        remote > 0,
        "no replica on another node than the client pod's: {web:?}"
    );
    let nodes: BTreeSet<&str> = web.iter().map(|pod| pod.node.as_str()).collect();
    let (failed, errors) = report.add(
        "1 deploy 3 replicas",
        traffic,
        format!(
            "ready in {}; all replicas answer by VIP after {}, by NodePort after {}; on {} nodes; \
             by pod IP from the client pod, {remote} of them on other nodes",
            seconds(deployed),
            seconds(by_vip),
            seconds(by_node_port),
            nodes.len()
        ),
    );
    assert_eq!(failed, 0, "deploy: {errors:?}");

    // 2. Scale 3 → 6 → 2: traffic keeps flowing, the answering pods follow.
    let traffic = Traffic::start(cluster, &client_ns);
    cluster.berthctl_ok(&["scale", "deployment", "web", "--replicas", "6"]);
    let scaled = Instant::now();
    let six = cluster
        .wait_ready("web-", 6, Duration::from_secs(180))
        .await;
    let up_ready = scaled.elapsed();
    let up_follow = wait_responders(&client_ns, vip, &names(&six), Duration::from_secs(30)).await;
    cluster.berthctl_ok(&["scale", "deployment", "web", "--replicas", "2"]);
    let scaled = Instant::now();
    let two = cluster
        .wait_ready("web-", 2, Duration::from_secs(120))
        .await;
    let down_done = scaled.elapsed();
    let down_follow = wait_responders(&client_ns, vip, &names(&two), Duration::from_secs(30)).await;
    let (failed, errors) = report.add(
        "2 scale 3→6→2",
        traffic,
        format!(
            "6 ready after {}, all answering {} later; 2 left after {}, only they answer {} later",
            seconds(up_ready),
            seconds(up_follow),
            seconds(down_done),
            seconds(down_follow)
        ),
    );
    // Deleted pods terminate gracefully: out of the endpoints at once, SIGTERM after the
    // preStop sleep, so no request is lost.
    assert_eq!(failed, 0, "scale: {errors:?}");

    // 3. Rolling update to v2, then rollout undo: no failed request.
    cluster.berthctl_ok(&["scale", "deployment", "web", "--replicas", "3"]);
    let web = cluster
        .wait_ready("web-", 3, Duration::from_secs(120))
        .await;
    wait_responders(&client_ns, vip, &names(&web), Duration::from_secs(30)).await;
    let traffic = Traffic::start(cluster, &client_ns);
    let started = Instant::now();
    cluster.apply(&manifest(3, "berth/echo:v2"));
    cluster.rollout_status("web");
    let updated = started.elapsed();
    let versions = |ns: &str| -> BTreeSet<String> {
        berth_net::in_netns(ns, move || {
            (0..20)
                .filter_map(|_| get_here(vip).ok().map(|reply| reply.version))
                .collect()
        })
        .expect("netns")
    };
    let web = cluster.wait_ready("web-", 3, Duration::from_secs(60)).await;
    wait_responders(&client_ns, vip, &names(&web), Duration::from_secs(30)).await;
    assert_eq!(versions(&client_ns), BTreeSet::from(["v2".to_owned()]));
    let started = Instant::now();
    cluster.berthctl_ok(&["rollout", "undo", "deployment", "web"]);
    cluster.rollout_status("web");
    let undone = started.elapsed();
    let web = cluster.wait_ready("web-", 3, Duration::from_secs(60)).await;
    wait_responders(&client_ns, vip, &names(&web), Duration::from_secs(30)).await;
    assert_eq!(versions(&client_ns), BTreeSet::from(["v1".to_owned()]));
    let (failed, errors) = report.add(
        "3 rolling update, undo",
        traffic,
        format!("update {}, undo {}", seconds(updated), seconds(undone)),
    );
    assert_eq!(failed, 0, "rolling update: {errors:?}");

    // 7. An agent restarts: no failed request.
    let traffic = Traffic::start(cluster, &client_ns);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted = cluster.nodes[0].name.clone();
    cluster.kill_agent(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.start_agent(0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        cluster.wait_ready("web-", 3, Duration::from_secs(30)).await,
        web
    );
    let (failed, errors) = report.add(
        "7 agent restart",
        traffic,
        format!("agent on {restarted} down 1 s"),
    );
    assert_eq!(failed, 0, "agent restart: {errors:?}");

    // 8. The control plane is killed -9 and restarted: nothing lost, traffic unaffected.
    let objects = |cluster: &E2eCluster| -> Vec<String> {
        ["deployments", "replicasets", "services", "pods", "nodes"]
            .iter()
            .flat_map(|kind| {
                cluster
                    .berthctl_ok(&["get", kind, "-o", "name"])
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let before = objects(cluster);
    let traffic = Traffic::start(cluster, &client_ns);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.kill_control();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    cluster.start_control().await;
    let back = started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        objects(cluster),
        before,
        "objects after the control plane's restart"
    );
    assert_eq!(
        cluster.wait_ready("web-", 3, Duration::from_secs(30)).await,
        web
    );
    let (failed, errors) = report.add(
        "8 control plane kill -9",
        traffic,
        format!("down 3 s, answering {} after the restart", seconds(back)),
    );
    assert_eq!(failed, 0, "control-plane restart: {errors:?}");

    // 5. A backend container is killed: restarted, and back in the service when ready.
    let traffic = Traffic::start(cluster, &client_ns);
    let victim = web[0].name.clone();
    let container = app_container(&runtime, &victim)
        .await
        .expect("the victim's container");
    runtime
        .kill(&container, "SIGKILL")
        .await
        .expect("killing a backend");
    let killed = Instant::now();
    let restarted_after = loop {
        if app_container(&runtime, &victim)
            .await
            .is_some_and(|id| id != container)
        {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "{victim} was not restarted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let back_after = loop {
        if responders(&client_ns, vip, 10).contains(&victim) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "the restarted {victim} did not return to the service"
        );
    };
    report.add(
        "5 container killed",
        traffic,
        format!(
            "restarted after {}, answering again after {}",
            seconds(restarted_after),
            seconds(back_after)
        ),
    );

    // 4. A backend starts failing its readiness check: requests stop reaching it after the
    // configured detection time (period 1 s × failureThreshold 1, the agent's default), and it returns when it
    // passes again.
    let web = cluster.wait_ready("web-", 3, Duration::from_secs(60)).await;
    wait_responders(&client_ns, vip, &names(&web), Duration::from_secs(30)).await;
    let traffic = Traffic::start(cluster, &client_ns);
    let victim = web[1].name.clone();
    let container = app_container(&runtime, &victim)
        .await
        .expect("the victim's container");
    exec(
        &runtime,
        &container,
        &["/bin/busybox", "touch", "/tmp/berth-unready"],
    )
    .await;
    let failed_at = Instant::now();
    let detection = last_answer_from(&client_ns, vip, &victim, failed_at);
    assert!(
        detection < Duration::from_secs(20),
        "{victim} kept answering {} after failing its readiness check",
        seconds(detection)
    );
    exec(
        &runtime,
        &container,
        &["/bin/busybox", "rm", "/tmp/berth-unready"],
    )
    .await;
    let recovery = wait_responders(&client_ns, vip, &names(&web), Duration::from_secs(30)).await;
    report.add(
        "4 readiness fails",
        traffic,
        format!(
            "last request reached it {} after it failed (configured 1 s); back {} after it passed",
            seconds(detection),
            seconds(recovery)
        ),
    );

    // 6. A node is cut off (agent killed, link down): its endpoints leave, its pods come
    // back on the other nodes after the eviction timeout.
    let cut = (1..cluster.nodes.len())
        .find(|&index| {
            let name = &cluster.nodes[index].name;
            *name != client.node && web.iter().any(|pod| &pod.node == name)
        })
        .expect("a node with a web pod, other than the NodePort's and the client pod's");
    let cut_name = cluster.nodes[cut].name.clone();
    let cut_pods: BTreeSet<String> = web
        .iter()
        .filter(|pod| pod.node == cut_name)
        .map(|pod| pod.name.clone())
        .collect();
    let remaining: BTreeSet<String> = names(&web).difference(&cut_pods).cloned().collect();
    println!(
        "cutting {cut_name} off (pods {cut_pods:?}); the client pod is on {}; web: {web:?}",
        client.node
    );
    let traffic = Traffic::start(cluster, &client_ns);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.kill_agent(cut);
    cluster.disconnect(cut);
    let cut_at = Instant::now();
    // The Endpoints object, polled: what every node's datapath follows. Requests alone
    // measure it coarsely, as each one to the unreachable pod waits out a connect timeout.
    let cut_addresses: Vec<String> = web
        .iter()
        .filter(|pod| pod.node == cut_name)
        .map(|pod| format!("{}:", pod.ip))
        .collect();
    let endpoints_left = loop {
        // The list, not `get endpoints web`: that one also asks every node's agent.
        let endpoints = cluster.berthctl_ok(&["get", "endpoints"]);
        if !cut_addresses.iter().any(|address| {
            endpoints
                .split([' ', ','])
                .any(|e| e.starts_with(address.as_str()))
        }) {
            break cut_at.elapsed();
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(60),
            "the cut node's endpoints stayed: {endpoints}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let traffic_left = wait_responders(&client_ns, vip, &remaining, Duration::from_secs(60)).await;
    let moved = cluster
        .wait_ready_off("web-", 3, Some(&cut_name), Duration::from_secs(120))
        .await;
    let pods_back = cut_at.elapsed();
    wait_responders(&client_ns, vip, &names(&moved), Duration::from_secs(30)).await;
    let (_, errors) = report.add(
        "6 node cut off",
        traffic,
        format!(
            "its endpoints gone after {} (node grace 4 s), only the others answer after {}, \
             its pods running elsewhere after {} (eviction timeout 10 s)",
            seconds(endpoints_left),
            seconds(traffic_left),
            seconds(pods_back)
        ),
    );
    println!("node cut failures: {errors:?}");
    cluster.reconnect(cut);
    cluster.start_agent(cut);
    cluster.wait_nodes_ready().await;

    // 9. The autoscaler scales up under load and back down after it.
    cluster.apply(AUTOSCALER);
    let traffic = Traffic::start(cluster, &client_ns);
    let loaded = Instant::now();
    cluster
        .wait_ready("web-", 6, Duration::from_secs(120))
        .await;
    let up = loaded.elapsed();
    let (sent, failed, errors) = traffic.finish();
    let unloaded = Instant::now();
    cluster
        .wait_ready("web-", 2, Duration::from_secs(120))
        .await;
    let down = unloaded.elapsed();
    let times = format!(
        "3→6 replicas {} after the load started, →2 {} after it stopped (stabilisation 10 s)",
        seconds(up),
        seconds(down)
    );
    println!("scenario 9 autoscaler: {sent} requests, {failed} failed; {times}: {errors:?}");
    report.rows.push(Row {
        scenario: "9 autoscaler",
        sent,
        failed,
        times,
    });

    // 10. Jobs in real containers (the image's busybox shell): three completions two at
    // a time, each pod Succeeded; a pod exiting 3 fails its Job (backoffLimit 0).
    let started = Instant::now();
    cluster.apply(JOBS);
    let count = wait_job(cluster, "count", "Complete").await;
    assert_eq!(count["status"]["succeeded"], 3, "{count}");
    let fail = wait_job(cluster, "fail", "Failed").await;
    assert_eq!(fail["status"]["failed"], 1, "{fail}");
    let pods: serde_json::Value = serde_json::from_str(&cluster.berthctl_ok(&[
        "get",
        "pods",
        "-l",
        "job-name=fail",
        "-o",
        "json",
    ]))
    .expect("pods as JSON");
    let pod = &pods["items"][0];
    assert_eq!(pod["status"]["phase"], "Failed", "{pod}");
    assert_eq!(
        pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 3,
        "{pod}"
    );
    let times = format!("both finished {} after apply", seconds(started.elapsed()));
    println!("scenario 10 jobs: {times}");
    report.rows.push(Row {
        scenario: "10 jobs",
        sent: 0,
        failed: 0,
        times,
    });

    report.render()
}

/// Two Jobs whose pods run the echo image's busybox shell.
const JOBS: &str = r#"apiVersion: batch/v1
kind: Job
metadata: {name: count}
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: count, image: "berth/echo:v1", command: [/bin/busybox, sh, -c, "sleep 1; exit 0"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: fail}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers: [{name: fail, image: "berth/echo:v1", command: [/bin/busybox, sh, -c, "exit 3"]}]
"#;

/// Job `name` once its condition `type_` (`Complete`, `Failed`) is true (2 minutes at
/// most).
async fn wait_job(cluster: &E2eCluster, name: &str, type_: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let output = cluster.berthctl(&["get", "job", name, "-o", "json"]);
        let job: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
        let done = job["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == type_ && c["status"] == "True")
        });
        if done {
            return job;
        }
        assert!(Instant::now() < deadline, "job {name} not {type_}: {job}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A HorizontalPodAutoscaler for `web`: 10 new connections per second per pod, 2 to 6
/// replicas. The two clients open 100 connections a second together.
const AUTOSCALER: &str = "
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 2
  maxReplicas: 6
  metrics:
  - type: Pods
    pods: {metric: {name: new_connections_per_second}, target: {type: AverageValue, averageValue: '10'}}
";

/// Sends requests to `target` from `ns` until `pod` has not answered for 5 s; how long
/// after `since` it answered last.
fn last_answer_from(ns: &str, target: SocketAddrV4, pod: &str, since: Instant) -> Duration {
    let pod = pod.to_owned();
    berth_net::in_netns(ns, move || {
        let mut last = since;
        while last.elapsed() < Duration::from_secs(5) || since.elapsed() < Duration::from_secs(5) {
            if get_here(target).is_ok_and(|reply| reply.pod == pod) {
                last = Instant::now();
            }
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "{pod} kept answering"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        last.duration_since(since)
    })
    .expect("netns")
}
