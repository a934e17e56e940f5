//! NetworkPolicy on the real multi-node cluster (`berth_tests::e2e`): two nodes, the
//! real control plane, a real agent per node and real Docker, once with the nodes on one
//! link in native routing and once on links of their own (joined by a router that knows
//! nothing of pods) through the tunnel. Two echo servers in namespace `a`, one per node,
//! each answering on port 80 (named `http`) and 8080 (named `alt`), behind a ClusterIP;
//! in namespace `b` a `role=client` pod and a stranger on node 0, in namespace `c` a
//! `role=client` pod on node 1. Every check opens new connections from the pods'
//! namespaces: to each server by pod IP on each port (one on the client's node, one
//! across nodes) and to the ClusterIP (both backends).
//!
//! Default-deny ingress in `a` shuts everyone out; a rule for b's `role=client` pods on
//! port 80 lets exactly that pod in, on port 80 only; a named-port rule lets the stranger
//! in on `alt` only. Relabelling the client moves it out of the rule and back in; the
//! time from the PATCH's answer (`berthctl label` returning) to the first connection showing
//! the new verdict is measured on the client's node and on the other one, and printed.
//! Needs root, BPF, Docker and the images from `cargo xtask images`.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use berth_echo::{EchoConfig, EchoServer};
use berth_tests::e2e::{ControlOptions, E2eCluster, E2eNetwork, Underlay};
use serde_json::Value;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 203, 10);
/// The bound "Done means" states for a relabelled pod to move in or out of a policy.
const RELABEL_BOUND: Duration = Duration::from_secs(1);
const RELABEL_ROUNDS: usize = 3;

/// One cluster at a time: two at once would share the machine's two cores and blur the
/// relabel timings.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn network_policy_on_the_cluster_native_routing() {
    run(
        "native routing",
        E2eNetwork {
            underlay: Underlay::OneLink,
            routing_mode: Some("native"),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn network_policy_on_the_cluster_encapsulation() {
    run(
        "encapsulation",
        E2eNetwork {
            underlay: Underlay::Routed,
            routing_mode: Some("encapsulation"),
        },
    )
    .await;
}

async fn run(title: &'static str, network: E2eNetwork) {
    let _turn = ONE_CLUSTER.lock().await;
    let cluster = E2eCluster::with_network(
        2,
        ControlOptions {
            node_grace_secs: 40,
            pod_eviction_timeout_secs: 300,
            autoscaler_sync_secs: 15,
            autoscaler_downscale_stabilization_secs: 300,
        },
        network,
    );
    cluster
        .run(async |cluster| scenarios(title, cluster).await)
        .await;
}

const NAMESPACES: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b, labels: {team: b}}
---
apiVersion: v1
kind: Namespace
metadata: {name: c, labels: {team: c}}
";

/// A server of namespace `a` on node `node`: echo on port 80 (`http`) and 8080 (`alt`).
fn server(name: &str, node: &str) -> String {
    format!(
        "
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: a, labels: {{app: web}}}}
spec:
  nodeName: {node}
  containers:
    - name: echo
      image: berth/echo:v1
      env: [{{name: ECHO_PORT, value: '80'}}]
      ports: [{{name: http, containerPort: 80}}]
    - name: alt
      image: berth/echo:v1
      ports: [{{name: alt, containerPort: 8080}}]
"
    )
}

/// A pod to connect from, pinned to `node`, with `labels` (YAML flow map entries).
fn client(name: &str, namespace: &str, node: &str, labels: &str) -> String {
    format!(
        "
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {{{labels}}}}}
spec:
  nodeName: {node}
  containers: [{{name: echo, image: berth/echo:v1}}]
"
    )
}

const SERVICE: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: a}
spec:
  clusterIP: 198.18.203.10
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
";

const DENY: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

/// A policy `name` of `a` letting b's pods with `labels` (a YAML flow map's entries) into
/// the servers on `port` (a number or a name).
fn allow(name: &str, labels: &str, port: &str) -> String {
    format!(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {name}, namespace: a}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress:
    - from:
        - namespaceSelector: {{matchLabels: {{team: b}}}}
          podSelector: {{matchLabels: {{{labels}}}}}
      ports: [{{protocol: TCP, port: {port}}}]
"
    )
}

/// A running pod of the test: where it runs and the namespace to connect from.
#[derive(Debug, Clone)]
struct TestPod {
    name: String,
    ip: Ipv4Addr,
    node: String,
    netns: String,
}

/// Waits (up to 3 minutes) until the pods of `namespace` are exactly `names`, all running
/// and ready.
async fn wait_pods(cluster: &E2eCluster, namespace: &str, names: &[&str]) -> Vec<TestPod> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let list: Value = serde_json::from_str(
            &cluster.berthctl_ok(&["get", "pods", "-n", namespace, "-o", "json"]),
        )
        .expect("pods as JSON");
        let ready: Vec<TestPod> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|pod| {
                pod["status"]["phase"] == "Running"
                    && pod["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            })
            .filter_map(|pod| {
                let uid = pod["metadata"]["uid"].as_str()?;
                Some(TestPod {
                    name: pod["metadata"]["name"].as_str()?.to_owned(),
                    ip: pod["status"]["podIP"].as_str()?.parse().ok()?,
                    node: pod["spec"]["nodeName"].as_str()?.to_owned(),
                    netns: berth_net::pod_netns_name(&berth_net::pod_host_veth(uid)?),
                })
            })
            .collect();
        let wanted: Vec<TestPod> = names
            .iter()
            .filter_map(|name| ready.iter().find(|pod| pod.name == *name).cloned())
            .collect();
        if wanted.len() == names.len() {
            return wanted;
        }
        assert!(
            Instant::now() < deadline,
            "{namespace}: {names:?} not all ready: {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One GET over a new connection from pod namespace `netns`; the pod that answered.
fn answer(netns: &str, target: SocketAddrV4) -> Option<String> {
    berth_net::in_netns(netns, move || {
        let response = berth_echo::client::http_fetch(
            SocketAddr::V4(target),
            "berth",
            "/",
            Duration::from_secs(1),
        )
        .ok()?;
        berth_echo::Reply::parse(String::from_utf8_lossy(&response.body).trim())
            .map(|reply| reply.pod)
    })
    .expect("pod namespace")
}

/// A destination of the checks and the new connections opened to it per check: the
/// ClusterIP gets several, so both backends are chosen.
#[derive(Clone, Copy)]
struct Target {
    label: &'static str,
    addr: SocketAddrV4,
    tries: usize,
}

/// What every (client, target) pair gets, all at once: the pods that answered and the
/// number of connections that got no answer.
fn observe(pairs: &[(&TestPod, Target)]) -> Vec<(BTreeSet<String>, usize)> {
    thread::scope(|scope| {
        let handles: Vec<Vec<_>> = pairs
            .iter()
            .map(|(from, to)| {
                (0..to.tries)
                    .map(|_| scope.spawn(|| answer(&from.netns, to.addr)))
                    .collect()
            })
            .collect();
        handles
            .into_iter()
            .map(|tries| {
                let mut answered = BTreeSet::new();
                let mut failed = 0;
                for handle in tries {
                    match handle.join().expect("a connection attempt") {
                        Some(pod) => {
                            answered.insert(pod);
                        }
                        None => failed += 1,
                    }
                }
                (answered, failed)
            })
            .collect()
    })
}

/// Waits (up to 20 s) until every client gets exactly the answers `expected` gives it
/// from each target (the pods that must answer every connection; none: every connection
/// refused).
async fn expect(
    step: &str,
    clients: &[&TestPod],
    targets: &[Target],
    expected: impl Fn(&TestPod, &Target) -> BTreeSet<String>,
) {
    let started = Instant::now();
    let pairs: Vec<(&TestPod, Target)> = clients
        .iter()
        .flat_map(|client| targets.iter().map(move |target| (*client, *target)))
        .collect();
    loop {
        let seen = observe(&pairs);
        let wrong: Vec<String> = pairs
            .iter()
            .zip(&seen)
            .filter_map(|((from, to), (answered, failed))| {
                let wanted = expected(from, to);
                let right = if wanted.is_empty() {
                    answered.is_empty()
                } else {
                    *answered == wanted && *failed == 0
                };
                (!right).then(|| {
                    format!(
                        "{} → {}: answered by {answered:?} ({failed} of {} unanswered), wanted {wanted:?}",
                        from.name, to.label, to.tries
                    )
                })
            })
            .collect();
        if wrong.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{step}:\n{}",
            wrong.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// New TCP connections from one pod namespace to one target, a new one every 10 ms or
/// so (several threads, as a refused SYN costs a connect timeout), each recorded with its
/// start and whether it connected.
struct Prober {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(Instant, bool)>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

const PROBE_THREADS: u32 = 10;
/// How often each thread opens a connection, when the last one took less.
const PROBE_PERIOD: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

impl Prober {
    fn start(netns: &str, target: SocketAddrV4) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..PROBE_THREADS)
            .map(|index| {
                let (stop, samples, netns) = (stop.clone(), samples.clone(), netns.to_owned());
                thread::spawn(move || {
                    thread::sleep(PROBE_PERIOD / PROBE_THREADS * index);
                    berth_net::in_netns(&netns, || {
                        while !stop.load(Ordering::Relaxed) {
                            let started = Instant::now();
                            let connected =
                                TcpStream::connect_timeout(&SocketAddr::V4(target), PROBE_TIMEOUT)
                                    .is_ok();
                            samples
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push((started, connected));
                            thread::sleep(PROBE_PERIOD.saturating_sub(started.elapsed()));
                        }
                    })
                    .expect("pod namespace");
                })
            })
            .collect();
        Prober {
            stop,
            samples,
            threads,
        }
    }

    fn since(&self, since: Instant) -> Vec<(Instant, bool)> {
        let mut samples: Vec<(Instant, bool)> = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .filter(|(at, _)| *at >= since)
            .collect();
        samples.sort();
        samples
    }

    /// The start of the first connection since `since` that shows the verdict `allowed`,
    /// once connections have shown it for 500 ms after that one. A connection that got
    /// through shows that the policy let it in; one that did not, only when every later
    /// one failed too (now and then a SYN is lost with no policy in the way).
    fn settled(&self, since: Instant, allowed: bool) -> Option<Instant> {
        let samples = self.since(since);
        let first = if allowed {
            samples.iter().find(|(_, ok)| *ok)?.0
        } else {
            let after = samples.iter().rposition(|(_, ok)| *ok).map_or(0, |i| i + 1);
            samples.get(after)?.0
        };
        let last = samples.last()?.0;
        (last.duration_since(first) >= Duration::from_millis(500)).then_some(first)
    }

    /// The outcomes since `since` in the order the connections started: `+` connected,
    /// `-` not.
    fn outcomes(&self, since: Instant) -> String {
        self.since(since)
            .iter()
            .map(|(_, ok)| if *ok { '+' } else { '-' })
            .collect()
    }

    /// Whether the latest connection got through (None before the first one ended).
    fn latest(&self) -> Option<bool> {
        self.samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .max()
            .map(|(_, ok)| *ok)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// When a relabel showed on one server: from berthctl's answer to the first connection
/// with the new verdict (zero when it came before the answer), and from berthctl's start
/// (an upper bound that includes berthctl's own run and the PATCH).
#[derive(Clone, Copy)]
struct Shown {
    after_answer: Duration,
    after_start: Duration,
}

/// Relabels `client` with `berthctl label` (`change`: `role=client` or `role-`), with
/// probers from it to each of `servers` on port 80 running; when each server showed the
/// verdict `wanted`.
async fn relabel(
    cluster: &E2eCluster,
    client: &TestPod,
    servers: &[&TestPod],
    change: &str,
    wanted: bool,
) -> Vec<Shown> {
    let probers: Vec<Prober> = servers
        .iter()
        .map(|server| Prober::start(&client.netns, SocketAddrV4::new(server.ip, 80)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while probers.iter().any(|p| p.latest() != Some(!wanted)) {
        assert!(
            Instant::now() < deadline,
            "{} → port 80 before the relabel: not {}",
            client.name,
            if wanted { "refused" } else { "answered" }
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = Instant::now();
    cluster.berthctl_ok(&["label", "pod", &client.name, change, "-n", "b"]);
    let answered = Instant::now();
    let deadline = answered + Duration::from_secs(10);
    loop {
        let firsts: Vec<Option<Instant>> =
            probers.iter().map(|p| p.settled(sent, wanted)).collect();
        if firsts.iter().all(Option::is_some) {
            return firsts
                .into_iter()
                .flatten()
                .map(|first| Shown {
                    after_answer: first.saturating_duration_since(answered),
                    after_start: first.duration_since(sent),
                })
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} → port 80 still not {} 10 s after the relabel: {}",
            client.name,
            if wanted { "answered" } else { "refused" },
            servers
                .iter()
                .zip(&probers)
                .map(|(server, prober)| format!("{}: {}", server.name, prober.outcomes(sent)))
                .collect::<Vec<_>>()
                .join("; ")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn millis(duration: Duration) -> String {
    format!("{} ms", duration.as_millis())
}

async fn scenarios(title: &str, cluster: &mut E2eCluster) {
    let started = Instant::now();
    cluster.start().await;
    cluster.wait_pod_routes().await;
    let nodes: Vec<String> = cluster.nodes.iter().map(|node| node.name.clone()).collect();
    cluster.apply(NAMESPACES);
    cluster.apply(&format!(
        "{}---{}---{}---{}---{}---{SERVICE}",
        server("web-0", &nodes[0]),
        server("web-1", &nodes[1]),
        client("client", "b", &nodes[0], "app: client, role: client"),
        client("stranger", "b", &nodes[0], "app: stranger"),
        client("outsider", "c", &nodes[1], "role: client"),
    ));
    let web = wait_pods(cluster, "a", &["web-0", "web-1"]).await;
    let b = wait_pods(cluster, "b", &["client", "stranger"]).await;
    let c = wait_pods(cluster, "c", &["outsider"]).await;
    println!("[{title}] cluster and pods up in {:?}", started.elapsed());
    let (web0, web1) = (&web[0], &web[1]);
    let (trusted, stranger, outsider) = (&b[0], &b[1], &c[0]);
    assert_eq!(web0.node, trusted.node, "web-0 is on the client's node");
    assert_ne!(web1.node, trusted.node, "web-1 is on the other node");

    let target = |label, ip, port| Target {
        label,
        addr: SocketAddrV4::new(ip, port),
        tries: 1,
    };
    let targets = [
        target("web-0:80", web0.ip, 80),
        target("web-0:8080", web0.ip, 8080),
        target("web-1:80", web1.ip, 80),
        target("web-1:8080", web1.ip, 8080),
        Target {
            label: "ClusterIP:80",
            addr: SocketAddrV4::new(VIP, 80),
            tries: 12,
        },
    ];
    let clients = [trusted, stranger, outsider];
    let server_of = |target: &Target| -> BTreeSet<String> {
        if target.label == "ClusterIP:80" {
            BTreeSet::from([web0.name.clone(), web1.name.clone()])
        } else {
            let name = &target.label[..target.label.find(':').expect("label")];
            BTreeSet::from([name.to_owned()])
        }
    };

    // No policy: everyone reaches everything.
    expect("no policy", &clients, &targets, |_, to| server_of(to)).await;

    // Default-deny: nobody, by pod IP (same node and across) or by ClusterIP.
    cluster.apply(DENY);
    expect("default-deny", &clients, &targets, |_, _| BTreeSet::new()).await;

    // b's role=client pods on port 80: the client only, on port 80 only; not b's other
    // pod, not c's role=client pod.
    cluster.apply(&allow("clients", "role: client", "80"));
    let clients_rule = |from: &TestPod, to: &Target| {
        if from.name == "client" && !to.label.ends_with(":8080") {
            server_of(to)
        } else {
            BTreeSet::new()
        }
    };
    expect("role=client on port 80", &clients, &targets, clients_rule).await;
    // describe lists the pods the rule isolates, on both nodes, with their addresses.
    let described = cluster.berthctl_ok(&["describe", "networkpolicy", "clients", "-n", "a"]);
    assert!(
        described.contains("Selected Pods:  (2 in total)"),
        "{described}"
    );
    for pod in [web0, web1] {
        assert!(
            described.lines().any(|line| {
                line.split_whitespace().collect::<Vec<_>>()
                    == ["a", pod.name.as_str(), &pod.ip.to_string()]
            }),
            "{} in\n{described}",
            pod.name
        );
    }

    // The named port: the stranger on `alt` (8080) only, the client as before.
    cluster.apply(&allow("alt", "app: stranger", "alt"));
    expect(
        "the stranger on the named port alt",
        &clients,
        &targets,
        |from, to| {
            if from.name == "stranger" && to.label.ends_with(":8080") {
                server_of(to)
            } else {
                clients_rule(from, to)
            }
        },
    )
    .await;

    // Relabelling the client moves it out of the rule and back in, on its own node
    // (web-0) and on the other one (web-1).
    let mut out_times = Vec::new();
    let mut in_times = Vec::new();
    for _ in 0..RELABEL_ROUNDS {
        out_times.push(relabel(cluster, trusted, &[web0, web1], "role-", false).await);
        in_times.push(relabel(cluster, trusted, &[web0, web1], "role=client", true).await);
    }
    let show = |times: &[Vec<Shown>], node: usize| {
        times
            .iter()
            .map(|round| {
                format!(
                    "{} ({})",
                    millis(round[node].after_answer),
                    millis(round[node].after_start)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "[{title}] relabel, from the PATCH's answer (from berthctl's start) to the first \
         connection with the new verdict:\n  \
         out of the rule: client's node {}; other node {}\n  \
         into the rule:   client's node {}; other node {}",
        show(&out_times, 0),
        show(&out_times, 1),
        show(&in_times, 0),
        show(&in_times, 1),
    );
    // The bound on the upper bound: berthctl's own run counts against it.
    let slowest = out_times
        .iter()
        .chain(&in_times)
        .flatten()
        .map(|shown| shown.after_start)
        .max()
        .unwrap_or_default();
    assert!(
        slowest <= RELABEL_BOUND,
        "a relabel took {} from berthctl's start to take effect (bound {})",
        millis(slowest),
        millis(RELABEL_BOUND)
    );

    // Back where the rules left it: the stranger still kept to `alt`.
    expect("after the relabels", &clients, &targets, |from, to| {
        if from.name == "stranger" && to.label.ends_with(":8080") {
            server_of(to)
        } else {
            clients_rule(from, to)
        }
    })
    .await;

    egress_to_an_outside_server(cluster, [outsider, trusted, stranger], &server_of).await;
    println!("[{title}] all scenarios in {:?}", started.elapsed());
}

/// Servers outside the cluster, in the client namespace on the underlay (node 0's link):
/// the one c's egress policy lets its pods reach, and its ipBlock's exception.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 64, 100);
const EXCEPTED: Ipv4Addr = Ipv4Addr::new(198, 18, 64, 101);

const EGRESS: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress, namespace: c}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
    - to: [{ipBlock: {cidr: 198.18.64.0/24, except: [198.18.64.101/32]}}]
";

/// Default-deny egress in `c` with an ipBlock exception: c's pod (on node 1) reaches the
/// outside server in the block (masqueraded on its way out) and nothing else — not the
/// excepted server, not b's pods on node 0, which are not isolated for ingress; b's
/// pod, whose namespace has no egress policy, still reaches everything.
async fn egress_to_an_outside_server(
    cluster: &E2eCluster,
    [outsider, trusted, stranger]: [&TestPod; 3],
    server_of: &dyn Fn(&Target) -> BTreeSet<String>,
) {
    cluster
        .client
        .ip(&["addr", "add", &format!("{EXCEPTED}/24"), "dev", "eth0"])
        .expect("the excepted server's address");
    let _servers = [(OUTSIDE, "outside-100"), (EXCEPTED, "outside-101")].map(|(addr, name)| {
        let config = EchoConfig {
            bind: addr.into(),
            port: 80,
            ..EchoConfig::loopback(name)
        };
        cluster
            .client
            .run(move || EchoServer::bind(config))
            .unwrap_or_else(|error| panic!("the outside server at {addr}: {error}"))
    });
    let target = |label, ip, port| Target {
        label,
        addr: SocketAddrV4::new(ip, port),
        tries: 1,
    };
    let targets = [
        target("outside-100:80", OUTSIDE, 80),
        target("outside-101:80", EXCEPTED, 80),
        target("client:8080", trusted.ip, 8080),
        target("stranger:8080", stranger.ip, 8080),
    ];
    let clients = [outsider, trusted];
    expect("no egress policy", &clients, &targets, |_, to| {
        server_of(to)
    })
    .await;
    cluster.apply(EGRESS);
    expect(
        "default-deny egress in c",
        &clients,
        &targets,
        |from, to| {
            if from.name != "outsider" || to.label == "outside-100:80" {
                server_of(to)
            } else {
                BTreeSet::new()
            }
        },
    )
    .await;
}
