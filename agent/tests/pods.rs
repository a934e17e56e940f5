//! The pod manager against the real Docker engine: pods in pause sandboxes wired into a
//! node network namespace of the test's own, restarts with back-off, probes, adoption by a
//! new manager, a missing image with pull policy Never, teardown. Needs root, a running engine (`cargo xtask
//! setup`) and the images (`cargo xtask images`; `cargo xtask test` builds them first).
//!
//! Each test is its own node (namespace and node label), so tests run side by side and
//! never see each other's containers. Guards remove every container of the node, the
//! pods' wiring and the namespace, also when an assertion fails. Only 198.18.0.0/15
//! addresses are used. Timing is asserted as order and generous bounds: the machine is
//! shared and slow.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use berth_agent::{
    datapath::{
        Algorithm, BackendSpec, BackendState, Datapath, DatapathOptions, Frontend, Node, Protocol,
        Service, ServiceSet,
    },
    ipam::Cidr,
    net, podnet,
    pods::{
        ActionKind, BackoffConfig, ContainerDesired, ContainerState, EnvValue, PodDesired,
        PodEvent, PodManager, PodManagerConfig, PodPhase, PodReport, PreStop, RestartPolicy,
        images::PullPolicy, reason,
    },
    probes::{ProbeAction, ProbeEvent, ProbeKind, ProbeResult, ProbeSpec},
    readiness::LocalReadiness,
    runtime::{DEFAULT_SOCKET, DockerRuntime, Limits, labels},
};
use berth_api::core::PAUSE_IMAGE;
use berth_echo::{DEFAULT_PORT, IMAGE_V1, Reply, UNHEALTHY_FILE, UNREADY_FILE};
use berth_testkit::PinDir;
use tokio::{
    runtime::{Handle, Runtime},
    sync::{mpsc::UnboundedReceiver, oneshot, watch},
};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// How long anything may take before a test gives up: generous, the machine is shared.
const PATIENCE: Duration = Duration::from_secs(60);

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test creates network namespaces and containers: run it as root (cargo xtask test)"
    );
}

/// Several threads: probe workers must run while a test thread blocks on a socket.
fn tokio_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn unique(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "bt{}{what}{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A uid whose first 13 letters and digits (what the host veth is named after) differ
/// between pods of concurrent tests.
fn unique_uid() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{:08x}{:05x}-0000-4000-8000-000000000000",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A node: a network namespace with the node address, and the node label its
/// containers carry. Dropping it removes the node's containers, its pods' wiring and the
/// namespace.
struct TestNode {
    name: String,
    cidr: Cidr,
    handle: Handle,
    docker: DockerRuntime,
    uids: Vec<String>,
}

impl TestNode {
    fn new(rt: &Runtime, cidr: &str) -> Self {
        require_root();
        let docker = rt
            .block_on(DockerRuntime::connect(DEFAULT_SOCKET))
            .unwrap_or_else(|error| panic!("{error}"));
        for image in [IMAGE_V1, PAUSE_IMAGE] {
            let present = rt
                .block_on(docker.image_present(image))
                .unwrap_or_else(|error| panic!("checking for {image}: {error}"));
            assert!(
                present,
                "image {image} is missing: run `cargo xtask images` (there is no registry)"
            );
        }
        let name = unique("node");
        net::netns_delete(&name).expect("remove a leftover namespace");
        net::netns_add(&name).expect("create the node namespace");
        let node = TestNode {
            name,
            cidr: cidr.parse().expect("a pod CIDR"),
            handle: rt.handle().clone(),
            docker,
            uids: Vec::new(),
        };
        net::link_up(Some(&node.name), "lo").expect("lo up in the node namespace");
        // The source address of the node's connections (and probes) to its pods.
        net::addr_add(Some(&node.name), "lo", &format!("{NODE_IP}/32")).expect("node address");
        node
    }

    fn config(&self, backoff: BackoffConfig) -> PodManagerConfig {
        let mut config = PodManagerConfig::new(&self.name, self.cidr);
        config.host_netns = Some(self.name.clone());
        config.backoff = backoff;
        config.resync_period = Duration::from_millis(300);
        config
    }

    fn manager(&self, backoff: BackoffConfig) -> (PodManager, Events) {
        let (manager, events) =
            PodManager::new(self.docker.clone(), self.config(backoff)).expect("a pod manager");
        (manager, Events::new(events))
    }

    /// An echo pod; its uid is remembered for cleanup.
    fn echo_pod(&mut self, name: &str, policy: RestartPolicy) -> PodDesired {
        let uid = unique_uid();
        self.uids.push(uid.clone());
        PodDesired {
            namespace: "default".to_owned(),
            name: name.to_owned(),
            uid,
            restart_policy: policy,
            termination_grace: Duration::from_secs(5),
            terminating: false,
            containers: vec![ContainerDesired {
                name: "echo".to_owned(),
                image: IMAGE_V1.to_owned(),
                env: vec![
                    ("POD_NAME".to_owned(), EnvValue::Literal(name.to_owned())),
                    (
                        "GREETING".to_owned(),
                        EnvValue::Literal("hello pod".to_owned()),
                    ),
                ],
                limits: Limits {
                    cpu_millis: Some(250),
                    memory_bytes: Some(64 << 20),
                },
                ..ContainerDesired::default()
            }],
            ..PodDesired::default()
        }
    }

    fn containers_of(&self, uid: &str) -> Vec<berth_agent::runtime::ContainerSummary> {
        self.handle
            .block_on(
                self.docker
                    .list_by_labels(&[(labels::NODE, &self.name), (labels::POD_UID, uid)]),
            )
            .expect("list containers")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let docker = self.docker.clone();
        let node = self.name.clone();
        self.handle.block_on(async move {
            match docker.list_by_labels(&[(labels::NODE, &node)]).await {
                Ok(containers) => {
                    for container in containers {
                        if let Err(error) = docker.remove(&container.id).await {
                            eprintln!("cleanup: removing {}: {error}", container.name);
                        }
                    }
                }
                Err(error) => eprintln!("cleanup: listing {node}'s containers: {error}"),
            }
        });
        for uid in &self.uids {
            if let Ok(veth) = podnet::host_veth_name(uid)
                && let Err(error) = podnet::teardown(Some(&self.name), &veth)
            {
                eprintln!("cleanup: pod {uid}: {error}");
            }
        }
        if let Err(error) = net::netns_delete(&self.name) {
            eprintln!("cleanup: deleting namespace {}: {error}", self.name);
        }
    }
}

fn http_probe(spec_path: &str, kind: ProbeKind) -> ProbeSpec {
    ProbeSpec::new(
        kind,
        ProbeAction::HttpGet {
            port: DEFAULT_PORT,
            path: spec_path.to_owned(),
        },
    )
}

/// Reconciles until `done` holds for the pod's report; returns that report.
async fn drive(
    manager: &mut PodManager,
    desired: &[PodDesired],
    uid: &str,
    what: &str,
    mut done: impl FnMut(&PodReport) -> bool,
) -> PodReport {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let pass = manager
            .reconcile(desired)
            .await
            .unwrap_or_else(|error| panic!("reconcile: {error}"));
        if let Some(report) = manager.report(uid)
            && done(&report)
        {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "waited {PATIENCE:?} for {what}; last report: {:#?}",
            manager.report(uid)
        );
        tokio::time::sleep(pass.requeue_after.min(Duration::from_millis(200))).await;
    }
}

/// The manager's probe events, kept until a test asks for them: waiting for one pod's
/// event must not throw away another's that came first.
struct Events {
    receiver: UnboundedReceiver<PodEvent>,
    backlog: Vec<(ProbeEvent, Instant)>,
}

impl Events {
    fn new(receiver: UnboundedReceiver<PodEvent>) -> Self {
        Events {
            receiver,
            backlog: Vec::new(),
        }
    }

    /// The first probe event matching `wanted`, with when it arrived.
    async fn wait(
        &mut self,
        what: &str,
        wanted: impl Fn(&ProbeEvent) -> bool,
    ) -> (ProbeEvent, Instant) {
        if let Some(index) = self.backlog.iter().position(|(event, _)| wanted(event)) {
            return self.backlog.remove(index);
        }
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.receiver.recv()).await {
                Ok(Some(PodEvent::Probe(event))) => {
                    let arrived = Instant::now();
                    if wanted(&event) {
                        return (event, arrived);
                    }
                    self.backlog.push((event, arrived));
                }
                Ok(Some(PodEvent::Action(_))) => {}
                Ok(None) => panic!("the event channel closed while waiting for {what}"),
                Err(_) => panic!(
                    "no {what} within {PATIENCE:?}; other events: {:#?}",
                    self.backlog
                ),
            }
        }
    }

    /// The next event of any kind, with when it arrived (after the backlog's).
    async fn next(&mut self) -> (PodEvent, Instant) {
        if !self.backlog.is_empty() {
            let (event, arrived) = self.backlog.remove(0);
            return (PodEvent::Probe(event), arrived);
        }
        match tokio::time::timeout(PATIENCE, self.receiver.recv()).await {
            Ok(Some(event)) => (event, Instant::now()),
            Ok(None) => panic!("the event channel closed"),
            Err(_) => panic!("no event within {PATIENCE:?}"),
        }
    }

    /// Every probe event so far.
    fn drain(&mut self) -> Vec<ProbeEvent> {
        while let Ok(event) = self.receiver.try_recv() {
            if let PodEvent::Probe(event) = event {
                self.backlog.push((event, Instant::now()));
            }
        }
        self.backlog.drain(..).map(|(event, _)| event).collect()
    }
}

fn running_and_ready(report: &PodReport) -> bool {
    report.phase == PodPhase::Running && report.ready
}

/// One HTTP request from the node namespace to the pod; returns status code and body.
fn http(node: &str, ip: Ipv4Addr, method: &str, path: &str) -> (u16, String) {
    let server = SocketAddr::V4(SocketAddrV4::new(ip, DEFAULT_PORT));
    let method = method.to_owned();
    let path = path.to_owned();
    net::in_netns(node, move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut stream = loop {
            match TcpStream::connect_timeout(&server, Duration::from_secs(1)) {
                Ok(stream) => break stream,
                Err(error) if Instant::now() < deadline => {
                    eprintln!("waiting for {server}: {error}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(error) => panic!("could not reach {server} from the node: {error}"),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("a read timeout");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: echo\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("send the request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("read the response");
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (code, body)
    })
    .expect("enter the node namespace")
}

fn container_id(report: &PodReport) -> String {
    report
        .container("echo")
        .and_then(|container| container.container_id.clone())
        .expect("the echo container has an id")
}

#[test]
fn pod_starts_with_limits_and_env_and_answers_on_its_ip() {
    let rt = tokio_runtime();
    let mut node = TestNode::new(&rt, "198.18.101.0/24");
    let (mut manager, _events) = node.manager(BackoffConfig::default());
    let mut pod = node.echo_pod("web-0", RestartPolicy::Always);
    pod.containers[0].probes.readiness = Some(http_probe("/readyz", ProbeKind::Readiness));
    let desired = vec![pod.clone()];

    let report = rt.block_on(drive(
        &mut manager,
        &desired,
        &pod.uid,
        "the pod to run and be ready",
        running_and_ready,
    ));
    let ip = report.pod_ip.expect("a running pod has an IP");
    assert!(node.cidr.contains(ip), "{ip} is from the node's pod CIDR");
    assert_ne!(ip, node.cidr.network());
    let echo = report.container("echo").expect("the echo container");
    assert_eq!(echo.state, ContainerState::Running);
    assert_eq!(echo.restart_count, 0);
    assert!(echo.ready && echo.started);
    let api = report.to_api(Some(NODE_IP));
    assert_eq!(api.phase, "Running");
    assert_eq!(api.pod_ip, ip.to_string());
    assert_eq!(api.conditions[0].status, "True");

    // Reconciling a settled pod changes nothing.
    let pass = rt.block_on(manager.reconcile(&desired)).expect("reconcile");
    assert!(pass.actions.is_empty(), "{:?}", pass.actions);

    let status = rt
        .block_on(node.docker.inspect(&container_id(&report)))
        .expect("inspect the app container");
    assert!(status.running);
    assert_eq!(
        status.limits,
        Limits {
            cpu_millis: Some(250),
            memory_bytes: Some(64 << 20)
        }
    );
    for var in ["POD_NAME=web-0", "GREETING=hello pod"] {
        assert!(
            status.env.iter().any(|env| env == var),
            "{var} in {:?}",
            status.env
        );
    }
    assert_eq!(
        status.labels.get(labels::POD_UID).map(String::as_str),
        Some(pod.uid.as_str())
    );
    assert_eq!(
        status.labels.get(labels::ATTEMPT).map(String::as_str),
        Some("0")
    );

    // The sandbox: a pause container holding the address, and the host veth.
    let containers = node.containers_of(&pod.uid);
    assert_eq!(containers.len(), 2, "pause and echo: {containers:?}");
    let pause = containers
        .iter()
        .find(|container| {
            container
                .labels
                .get(labels::CONTAINER_NAME)
                .map(String::as_str)
                == Some("POD")
        })
        .expect("a pause container");
    assert_eq!(pause.image, PAUSE_IMAGE);
    assert_eq!(
        pause.labels.get(labels::POD_IP).map(String::as_str),
        Some(ip.to_string().as_str())
    );
    let veth = podnet::host_veth_name(&pod.uid).expect("a veth name");
    assert!(net::link_exists(Some(&node.name), &veth));

    let (code, body) = http(&node.name, ip, "GET", "/");
    assert_eq!(code, 200);
    let reply = Reply::parse(&body).unwrap_or_else(|| panic!("not a reply: {body:?}"));
    assert_eq!(reply.pod, "web-0");
    assert_eq!(
        reply.addr,
        SocketAddr::V4(SocketAddrV4::new(ip, DEFAULT_PORT))
    );
    assert_eq!(reply.client.ip(), NODE_IP);
}

#[test]
fn a_killed_container_is_restarted_with_growing_back_off() {
    let rt = tokio_runtime();
    let mut node = TestNode::new(&rt, "198.18.102.0/24");
    let backoff = BackoffConfig {
        base: Duration::from_millis(1500),
        cap: Duration::from_secs(20),
        reset_after: Duration::from_secs(600),
    };
    let (mut manager, _events) = node.manager(backoff);
    let pod = node.echo_pod("crashy", RestartPolicy::Always);
    let desired = vec![pod.clone()];
    let report = rt.block_on(drive(
        &mut manager,
        &desired,
        &pod.uid,
        "the pod to run",
        |report| report.phase == PodPhase::Running,
    ));
    let ip = report.pod_ip.expect("an IP");
    let mut id = container_id(&report);

    let mut waits = Vec::new();
    for kill in 1..=3u32 {
        rt.block_on(node.docker.kill(&id, "SIGKILL"))
            .expect("kill the app container");
        let killed_at = Instant::now();
        let mut saw_back_off = false;
        let report = rt.block_on(drive(
            &mut manager,
            &desired,
            &pod.uid,
            "the container to be restarted",
            |report| {
                let echo = report.container("echo").expect("the echo container");
                if let ContainerState::Waiting { reason, .. } = &echo.state {
                    saw_back_off |= reason == reason::CRASH_LOOP_BACK_OFF;
                }
                echo.restart_count == kill && echo.state == ContainerState::Running
            },
        ));
        let waited = killed_at.elapsed();
        let echo = report.container("echo").expect("the echo container");
        let new_id = container_id(&report);
        assert_ne!(new_id, id, "a restart is a new container");
        id = new_id;
        let last = echo
            .last_termination
            .as_ref()
            .expect("the kill is recorded");
        assert_eq!(last.exit_code, Some(137), "SIGKILL");
        assert_eq!(report.pod_ip, Some(ip), "the pod keeps its address");
        // The first restart is immediate, then base, then twice the base.
        let expected = backoff.delay(kill - 1);
        assert_eq!(echo.last_backoff, expected, "restart {kill}");
        assert!(
            waited >= expected.mul_f64(0.9),
            "restart {kill} came after {waited:?}, before its back-off of {expected:?}"
        );
        if kill > 1 {
            assert!(saw_back_off, "restart {kill} went through CrashLoopBackOff");
        }
        waits.push(waited);
    }
    assert!(
        waits[2] > waits[0],
        "the back-off grows: waits were {waits:?}"
    );
    // The restarted container answers on the same address, through the same veth.
    let (code, body) = http(&node.name, ip, "GET", "/");
    assert_eq!(code, 200, "{body}");
    let containers = node.containers_of(&pod.uid);
    let attempt = containers
        .iter()
        .find(|container| container.id == id)
        .and_then(|container| container.labels.get(labels::ATTEMPT).cloned());
    assert_eq!(attempt.as_deref(), Some("3"));
    // Besides the pause container, only the killed attempt before it is kept (for
    // `logs --previous`); older attempts are gone.
    let mut attempts: Vec<String> = containers
        .iter()
        .filter_map(|container| container.labels.get(labels::ATTEMPT).cloned())
        .collect();
    attempts.sort();
    assert_eq!(attempts, ["2", "3"], "{containers:?}");
}

#[test]
fn liveness_failures_restart_the_container_http_and_exec() {
    let rt = tokio_runtime();
    let mut node = TestNode::new(&rt, "198.18.103.0/24");
    let backoff = BackoffConfig {
        base: Duration::from_millis(500),
        ..BackoffConfig::default()
    };
    let (mut manager, mut events) = node.manager(backoff);
    let mut by_http = node.echo_pod("live-http", RestartPolicy::Always);
    by_http.containers[0].probes.liveness = Some(http_probe("/healthz", ProbeKind::Liveness));
    let mut by_exec = node.echo_pod("live-exec", RestartPolicy::OnFailure);
    by_exec.containers[0].probes.liveness = Some(ProbeSpec::new(
        ProbeKind::Liveness,
        ProbeAction::Exec {
            command: vec![
                "sh".to_owned(),
                "-c".to_owned(),
                format!("! test -e {UNHEALTHY_FILE}"),
            ],
        },
    ));
    let desired = vec![by_http.clone(), by_exec.clone()];
    let mut reports = BTreeMap::new();
    for pod in &desired {
        let report = rt.block_on(drive(
            &mut manager,
            &desired,
            &pod.uid,
            "the pod to run",
            |report| report.phase == PodPhase::Running,
        ));
        reports.insert(pod.uid.clone(), report);
    }
    // Both liveness probes pass first.
    for pod in &desired {
        rt.block_on(events.wait("a liveness success", |event| {
            event.pod_uid == pod.uid
                && event.kind == ProbeKind::Liveness
                && event.result == ProbeResult::Success
        }));
    }

    let http_ip = reports[&by_http.uid].pod_ip.expect("an IP");
    let (code, _) = http(&node.name, http_ip, "POST", "/fail/live");
    assert_eq!(code, 200);
    let exec_id = container_id(&reports[&by_exec.uid]);
    let touched = rt
        .block_on(node.docker.exec(
            &exec_id,
            &["touch".to_owned(), UNHEALTHY_FILE.to_owned()],
            Duration::from_secs(10),
        ))
        .expect("docker exec touch");
    assert_eq!(touched.exit_code, 0, "{}", touched.output);

    for pod in &desired {
        let old_id = container_id(&reports[&pod.uid]);
        let (event, _) = rt.block_on(events.wait("a liveness failure", |event| {
            event.pod_uid == pod.uid
                && event.kind == ProbeKind::Liveness
                && event.result == ProbeResult::Failure
        }));
        assert_eq!(event.container_id, old_id);
        let report = rt.block_on(drive(
            &mut manager,
            &desired,
            &pod.uid,
            "the restart after the liveness failure",
            |report| {
                let echo = report.container("echo").expect("the echo container");
                echo.restart_count == 1 && echo.state == ContainerState::Running
            },
        ));
        let echo = report.container("echo").expect("the echo container");
        assert_ne!(container_id(&report), old_id);
        assert_eq!(
            echo.last_termination
                .as_ref()
                .map(|ended| ended.reason.as_str()),
            Some(reason::LIVENESS_PROBE_FAILED),
            "{}: {echo:?}",
            pod.name
        );
        // The new container is healthy again.
        let new_id = container_id(&report);
        rt.block_on(events.wait("liveness success after the restart", |event| {
            event.container_id == new_id
                && event.kind == ProbeKind::Liveness
                && event.result == ProbeResult::Success
        }));
    }
}

#[test]
fn readiness_failure_is_an_event_within_one_period() {
    let rt = tokio_runtime();
    let mut node = TestNode::new(&rt, "198.18.104.0/24");
    let (mut manager, mut events) = node.manager(BackoffConfig::default());
    let mut pod = node.echo_pod("ready", RestartPolicy::Always);
    let readiness = http_probe("/readyz", ProbeKind::Readiness);
    let period = readiness.period;
    let timeout = readiness.timeout;
    pod.containers[0].probes.readiness = Some(readiness);
    let desired = vec![pod.clone()];
    let report = rt.block_on(drive(
        &mut manager,
        &desired,
        &pod.uid,
        "ready",
        running_and_ready,
    ));
    let ip = report.pod_ip.expect("an IP");
    let (ready, _) = rt.block_on(events.wait("readiness success", |event| {
        event.kind == ProbeKind::Readiness && event.result == ProbeResult::Success
    }));
    assert_eq!(ready.pod_ip, ip, "the event names the backend's address");

    let (code, _) = http(&node.name, ip, "POST", "/fail/ready");
    assert_eq!(code, 200);
    let failed_at = Instant::now();
    let (event, seen_at) = rt.block_on(events.wait("readiness failure", |event| {
        event.kind == ProbeKind::Readiness && event.result == ProbeResult::Failure
    }));
    let took = seen_at.duration_since(failed_at);
    // One period plus the probe's timeout, and slack for a busy machine.
    let bound = period + timeout + Duration::from_secs(3);
    assert!(
        took <= bound,
        "readiness failure took {took:?} (bound {bound:?})"
    );
    assert!(event.message.contains("503"), "{}", event.message);
    assert_eq!(event.pod_ip, ip);
    let report = manager.report(&pod.uid).expect("a report");
    assert!(!report.ready, "the status follows the probe at once");
    assert_eq!(report.to_api(None).conditions[0].status, "False");
    // Not ready is not dead: no restart.
    assert_eq!(
        report.container("echo").map(|echo| echo.restart_count),
        Some(0)
    );

    let (code, _) = http(&node.name, ip, "POST", "/recover");
    assert_eq!(code, 200);
    rt.block_on(events.wait("readiness success after recovery", |event| {
        event.kind == ProbeKind::Readiness && event.result == ProbeResult::Success
    }));
    assert!(manager.report(&pod.uid).is_some_and(|report| report.ready));
}

#[test]
fn the_startup_probe_gates_readiness() {
    let rt = tokio_runtime();
    let mut node = TestNode::new(&rt, "198.18.105.0/24");
    let (mut manager, mut events) = node.manager(BackoffConfig::default());
    let mut pod = node.echo_pod("slow", RestartPolicy::Always);
    let mut startup = ProbeSpec::new(
        ProbeKind::Startup,
        ProbeAction::Exec {
            command: vec!["cat".to_owned(), "/tmp/started".to_owned()],
        },
    );
    startup.failure_threshold = 120;
    pod.containers[0].probes.startup = Some(startup);
    pod.containers[0].probes.readiness = Some(http_probe("/readyz", ProbeKind::Readiness));
    let desired = vec![pod.clone()];
    let report = rt.block_on(drive(
        &mut manager,
        &desired,
        &pod.uid,
        "running",
        |report| report.phase == PodPhase::Running,
    ));
    // Several startup periods pass without readiness being probed.
    std::thread::sleep(Duration::from_secs(3));
    let report_now = manager.report(&pod.uid).expect("a report");
    let echo = report_now.container("echo").expect("echo");
    assert!(
        !echo.started && !echo.ready && !report_now.ready,
        "{echo:?}"
    );
    for event in events.drain() {
        assert_eq!(
            event.kind,
            ProbeKind::Startup,
            "only the startup probe runs before it passes: {event:?}"
        );
    }

    let touched = rt
        .block_on(node.docker.exec(
            &container_id(&report),
            &["touch".to_owned(), "/tmp/started".to_owned()],
            Duration::from_secs(10),
        ))
        .expect("docker exec touch");
    assert_eq!(touched.exit_code, 0);
    let (started, started_at) =
        rt.block_on(events.wait("startup success", |event| event.kind == ProbeKind::Startup));
    assert_eq!(started.result, ProbeResult::Success);
    let (_, ready_at) = rt.block_on(events.wait("readiness success", |event| {
        event.kind == ProbeKind::Readiness && event.result == ProbeResult::Success
    }));
    assert!(ready_at >= started_at);
    let report = manager.report(&pod.uid).expect("a report");
    assert!(report.ready, "{report:?}");
}

#[test]
fn a_new_manager_adopts_running_pods_without_restarting_them() {
    let rt = tokio_runtime();
    let mut node = TestNode::new(&rt, "198.18.106.0/24");
    let (manager, _events) = node.manager(BackoffConfig::default());
    let mut pod = node.echo_pod("steady", RestartPolicy::Always);
    pod.containers[0].probes.readiness = Some(http_probe("/readyz", ProbeKind::Readiness));

    // The first agent runs the pod through its driver loop, then goes away.
    let (desired_tx, desired_rx) = watch::channel(vec![pod.clone()]);
    let (reports_tx, mut reports_rx) = watch::channel(Vec::new());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let running = rt.spawn(manager.run(desired_rx, reports_tx, async move {
        let _ = stop_rx.await;
    }));
    let before = rt.block_on(async {
        let found = tokio::time::timeout(
            PATIENCE,
            reports_rx.wait_for(|reports| reports.iter().any(running_and_ready)),
        )
        .await
        .expect("the pod got ready under run()")
        .expect("the manager publishes reports");
        found.iter().find(|report| report.uid == pod.uid).cloned()
    });
    let before = before.expect("a report of the pod");
    let _ = stop_tx.send(());
    let first = rt.block_on(running).expect("the run loop ends on shutdown");
    drop(first);
    drop(desired_tx);
    let ip = before.pod_ip.expect("an IP");
    let id = container_id(&before);

    // The second agent finds it.
    let (mut manager, _events) = node.manager(BackoffConfig::default());
    let desired = vec![pod.clone()];
    let pass = rt.block_on(manager.reconcile(&desired)).expect("reconcile");
    assert!(
        pass.actions
            .iter()
            .any(|action| action.kind == ActionKind::SandboxAdopted { ip }),
        "{:?}",
        pass.actions
    );
    assert!(
        pass.actions.iter().all(|action| !matches!(
            action.kind,
            ActionKind::ContainerCreated { .. }
                | ActionKind::SandboxCreated { .. }
                | ActionKind::SandboxLost
        )),
        "nothing is recreated: {:?}",
        pass.actions
    );
    let after = rt.block_on(drive(
        &mut manager,
        &desired,
        &pod.uid,
        "ready again",
        running_and_ready,
    ));
    assert_eq!(container_id(&after), id, "the same container runs on");
    assert_eq!(after.pod_ip, Some(ip));
    assert_eq!(
        after.container("echo").map(|echo| echo.restart_count),
        Some(0)
    );
    let status = rt.block_on(node.docker.inspect(&id)).expect("inspect");
    assert_eq!(status.restart_count, 0);
    assert!(status.running);
    let (code, _) = http(&node.name, ip, "GET", "/");
    assert_eq!(code, 200);

    // The address book came back: a new pod gets another address.
    assert_eq!(manager.ipam().owner(ip), Some(pod.uid.as_str()));
    let other = node.echo_pod("newcomer", RestartPolicy::Always);
    let desired = vec![pod.clone(), other.clone()];
    let report = rt.block_on(drive(
        &mut manager,
        &desired,
        &other.uid,
        "the newcomer runs",
        |report| report.phase == PodPhase::Running,
    ));
    let other_ip = report.pod_ip.expect("an IP");
    assert_ne!(other_ip, ip);
    let pass = rt.block_on(manager.reconcile(&desired)).expect("reconcile");
    assert!(pass.actions.is_empty(), "settled: {:?}", pass.actions);
}

#[test]
fn a_missing_image_with_pull_policy_never_says_so_on_the_pod() {
    let rt = tokio_runtime();
    let mut node = TestNode::new(&rt, "198.18.107.0/24");
    let (mut manager, _events) = node.manager(BackoffConfig {
        base: Duration::from_millis(200),
        ..BackoffConfig::default()
    });
    let mut pod = node.echo_pod("nothere", RestartPolicy::Always);
    pod.containers[0].image = "berth/no-such-image:v0".to_owned();
    pod.containers[0].pull_policy = PullPolicy::Never;
    let desired = vec![pod.clone()];
    let report = rt.block_on(drive(&mut manager, &desired, &pod.uid, "ErrImageNeverPull", |report| {
        report.container("echo").is_some_and(|echo| {
            matches!(&echo.state, ContainerState::Waiting { reason, .. } if reason == reason::ERR_IMAGE_NEVER_PULL)
        })
    }));
    assert_eq!(report.phase, PodPhase::Pending);
    assert!(!report.ready);
    let ContainerState::Waiting { message, .. } = &report.containers[0].state else {
        panic!("waiting: {report:?}");
    };
    assert_eq!(
        message,
        "Container image \"berth/no-such-image:v0\" is not present with pull policy of Never"
    );
    let api = report.to_api(None);
    assert_eq!(api.phase, "Pending");
    assert!(
        api.message.contains(reason::ERR_IMAGE_NEVER_PULL),
        "{}",
        api.message
    );
    // Only the sandbox exists; retries keep the reason.
    let containers = node.containers_of(&pod.uid);
    assert_eq!(containers.len(), 1, "{containers:?}");
    std::thread::sleep(Duration::from_millis(500));
    rt.block_on(manager.reconcile(&desired)).expect("reconcile");
    let report = manager.report(&pod.uid).expect("a report");
    assert!(matches!(
        &report.containers[0].state,
        ContainerState::Waiting { reason, .. } if reason == reason::ERR_IMAGE_NEVER_PULL
    ));
}

#[test]
fn a_pod_no_longer_desired_is_torn_down() {
    let rt = tokio_runtime();
    let mut node = TestNode::new(&rt, "198.18.108.0/24");
    let (mut manager, _events) = node.manager(BackoffConfig::default());
    let mut pod = node.echo_pod("goner", RestartPolicy::Always);
    pod.containers[0].probes.liveness = Some(http_probe("/healthz", ProbeKind::Liveness));
    let desired = vec![pod.clone()];
    let report = rt.block_on(drive(
        &mut manager,
        &desired,
        &pod.uid,
        "running",
        |report| report.phase == PodPhase::Running,
    ));
    let ip = report.pod_ip.expect("an IP");
    let veth = podnet::host_veth_name(&pod.uid).expect("a veth name");
    assert!(net::link_exists(Some(&node.name), &veth));
    assert_eq!(manager.ipam().allocated(), 1);

    let started = Instant::now();
    let pass = rt.block_on(manager.reconcile(&[])).expect("reconcile");
    assert!(
        pass.actions
            .iter()
            .any(|action| action.kind == ActionKind::PodRemoved && action.uid == pod.uid),
        "{:?}",
        pass.actions
    );
    // SIGTERM ends the echo server well inside its grace.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(
        node.containers_of(&pod.uid).is_empty(),
        "no container is left"
    );
    assert!(
        !net::link_exists(Some(&node.name), &veth),
        "no veth is left"
    );
    assert!(!net::netns_exists(&podnet::pod_netns_name(&veth)));
    assert_eq!(manager.ipam().owner(ip), None, "the address is free again");
    assert_eq!(manager.ipam().allocated(), 0);
    assert!(manager.report(&pod.uid).is_none());
    let pass = rt.block_on(manager.reconcile(&[])).expect("reconcile");
    assert!(pass.actions.is_empty(), "{:?}", pass.actions);
}

#[test]
fn a_terminating_pod_runs_its_pre_stop_hook_before_sigterm() {
    let rt = tokio_runtime();
    let mut node = TestNode::new(&rt, "198.18.113.0/24");
    let (mut manager, _events) = node.manager(BackoffConfig::default());
    let mut pod = node.echo_pod("draining", RestartPolicy::Always);
    // The hook marks the server unready from inside the container, then waits: while it
    // runs, the server must still answer (no SIGTERM yet) and say it is unready.
    pod.containers[0].pre_stop = Some(PreStop::Exec(
        ["sh", "-c", &format!("touch {UNREADY_FILE}; sleep 2")]
            .map(str::to_owned)
            .to_vec(),
    ));
    let report = rt.block_on(drive(
        &mut manager,
        std::slice::from_ref(&pod),
        &pod.uid,
        "running",
        |report| report.phase == PodPhase::Running,
    ));
    let ip = report.pod_ip.expect("an IP");
    assert_eq!(http(&node.name, ip, "GET", "/readyz").0, 200);

    let mut terminating = pod.clone();
    terminating.terminating = true;
    terminating.termination_grace = Duration::from_secs(10);
    let started = Instant::now();
    let removal = rt.spawn(async move {
        let pass = manager.reconcile(&[terminating]).await;
        (manager, pass)
    });
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut unready_while_serving = false;
    while Instant::now() < deadline && !unready_while_serving {
        unready_while_serving = http(&node.name, ip, "GET", "/readyz").0 == 503;
        std::thread::sleep(Duration::from_millis(100));
    }
    let (manager, pass) = rt.block_on(removal).expect("the removal task");
    let pass = pass.expect("reconcile");
    let took = started.elapsed();
    assert!(
        unready_while_serving,
        "the preStop hook ran in the container before it was stopped"
    );
    assert!(
        pass.actions
            .iter()
            .any(|action| action.kind == ActionKind::PodRemoved && action.uid == pod.uid),
        "{:?}",
        pass.actions
    );
    // The hook's 2 s, then SIGTERM, which the echo server handles well inside the rest
    // of the 10 s grace.
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(
        node.containers_of(&pod.uid).is_empty(),
        "no container is left"
    );
    assert!(manager.report(&pod.uid).is_none());
}

#[test]
fn a_readiness_failure_takes_the_backend_out_of_the_datapath_within_one_period() {
    let rt = tokio_runtime();
    let mut node = TestNode::new(&rt, "198.18.109.0/24");
    let (mut manager, mut events) = node.manager(BackoffConfig::default());
    let mut pod = node.echo_pod("backend", RestartPolicy::Always);
    let readiness = http_probe("/readyz", ProbeKind::Readiness);
    let bound = readiness.period + readiness.timeout + Duration::from_secs(3);
    pod.containers[0].probes.readiness = Some(readiness);
    let desired = vec![pod.clone()];
    let report = rt.block_on(drive(
        &mut manager,
        &desired,
        &pod.uid,
        "ready",
        running_and_ready,
    ));
    let ip = report.pod_ip.expect("an IP");

    // The service the control plane would send: this pod and a backend elsewhere.
    let pins = PinDir::new("pods");
    let mut datapath = Datapath::open(DatapathOptions {
        pin_dir: pins.path().to_path_buf(),
        node_id: 1,
        node_addr: NODE_IP,
        limits: berth_agent::datapath::Limits {
            max_services: 8,
            max_backends: 64,
            max_connections: 1024,
            max_affinity: 64,
            max_nodes: 4,
            maglev_min_table: 1021,
            maglev_pool_slots: 1 << 14,
        },
    })
    .expect("loading the datapath");
    let frontend = Frontend {
        addr: Ipv4Addr::new(198, 19, 0, 10),
        port: 80,
        protocol: Protocol::Tcp,
        external: false,
    };
    let backend = |addr| BackendSpec {
        addr,
        port: DEFAULT_PORT,
        node_id: 1,
        state: BackendState::Active,
    };
    let elsewhere = Ipv4Addr::new(198, 18, 9, 2);
    let services = ServiceSet {
        services: vec![Service {
            name: "default/backend:http".to_owned(),
            frontends: vec![frontend],
            backends: vec![backend(ip), backend(elsewhere)],
            algorithm: Algorithm::Maglev,
            affinity_timeout: None,
        }],
        nodes: vec![Node {
            id: 1,
            addr: NODE_IP,
        }],
    };
    let mut local = LocalReadiness::default();
    let in_table = |datapath: &Datapath, addr: Ipv4Addr| {
        datapath
            .live_table(&frontend)
            .expect("read the Maglev table")
            .expect("the service is programmed")
            .contains(&(addr, DEFAULT_PORT))
    };
    // Whatever happened so far (the first readiness success) goes in first.
    for event in events.drain() {
        local.observe(&PodEvent::Probe(event));
    }
    datapath
        .apply(&local.overlay(&services))
        .expect("apply the services");
    assert!(in_table(&datapath, ip), "the ready pod is a backend");

    let (code, _) = http(&node.name, ip, "POST", "/fail/ready");
    assert_eq!(code, 200);
    let failed_at = Instant::now();
    let applied_at = rt.block_on(async {
        loop {
            let (event, _) = events.next().await;
            if local.observe(&event) {
                datapath
                    .apply(&local.overlay(&services))
                    .expect("apply the services");
                break Instant::now();
            }
        }
    });
    let took = applied_at.duration_since(failed_at);
    assert!(
        !in_table(&datapath, ip),
        "the unready pod gets no new flows"
    );
    assert!(
        in_table(&datapath, elsewhere),
        "the other backend takes them"
    );
    assert!(
        took <= bound,
        "out of the datapath after {took:?} (bound {bound:?})"
    );

    let (code, _) = http(&node.name, ip, "POST", "/recover");
    assert_eq!(code, 200);
    rt.block_on(async {
        loop {
            let (event, _) = events.next().await;
            if local.observe(&event) {
                datapath
                    .apply(&local.overlay(&services))
                    .expect("apply the services");
                break;
            }
        }
    });
    assert!(in_table(&datapath, ip), "back in once ready again");
    drop(datapath);
    drop(pins);
}

#[test]
fn the_run_loop_keeps_restarting_crashed_containers_without_its_feed() {
    let rt = tokio_runtime();
    let mut node = TestNode::new(&rt, "198.18.110.0/24");
    // A resync far longer than the test: restarts come from the engine's death events.
    let mut config = node.config(BackoffConfig::default());
    config.resync_period = Duration::from_secs(600);
    let (manager, _events) = PodManager::new(node.docker.clone(), config).expect("a pod manager");
    let pod = node.echo_pod("orphan", RestartPolicy::Always);
    let (desired_tx, desired_rx) = watch::channel(vec![pod.clone()]);
    let (reports_tx, mut reports_rx) = watch::channel(Vec::new());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let running = rt.spawn(manager.run(desired_rx, reports_tx, async move {
        let _ = stop_rx.await;
    }));
    let uid = pod.uid.clone();
    let wait_for = |reports_rx: &mut watch::Receiver<Vec<PodReport>>,
                    what: &str,
                    done: &dyn Fn(&PodReport) -> bool| {
        rt.block_on(async {
            let reports = tokio::time::timeout(
                PATIENCE,
                reports_rx.wait_for(|reports| {
                    reports
                        .iter()
                        .any(|report| report.uid == uid && done(report))
                }),
            )
            .await
            .unwrap_or_else(|_| panic!("no report of {what} within {PATIENCE:?}"))
            .expect("the manager publishes reports");
            reports
                .iter()
                .find(|report| report.uid == uid)
                .cloned()
                .expect("the pod's report")
        })
    };
    let report = wait_for(&mut reports_rx, "the pod running", &|report| {
        report.phase == PodPhase::Running
    });
    // The control plane is unreachable: nothing feeds desired pods any more.
    drop(desired_tx);
    rt.block_on(node.docker.kill(&container_id(&report), "SIGKILL"))
        .expect("kill the app container");
    let killed_at = Instant::now();
    let restarted = wait_for(&mut reports_rx, "the restart", &|report| {
        report
            .container("echo")
            .is_some_and(|echo| echo.restart_count == 1 && echo.state == ContainerState::Running)
    });
    eprintln!("restarted {:?} after the kill", killed_at.elapsed());
    assert_ne!(container_id(&restarted), container_id(&report));
    assert_eq!(restarted.pod_ip, report.pod_ip);
    let _ = stop_tx.send(());
    drop(rt.block_on(running).expect("the run loop ends on shutdown"));
}

#[test]
fn a_lost_sandbox_is_set_up_again_with_the_same_address() {
    let rt = tokio_runtime();
    let mut node = TestNode::new(&rt, "198.18.111.0/24");
    let (mut manager, _events) = node.manager(BackoffConfig::default());
    let pod = node.echo_pod("sandboxed", RestartPolicy::Always);
    let desired = vec![pod.clone()];
    let report = rt.block_on(drive(
        &mut manager,
        &desired,
        &pod.uid,
        "running",
        |report| report.phase == PodPhase::Running,
    ));
    let ip = report.pod_ip.expect("an IP");
    let old_app = container_id(&report);
    let pause = node
        .containers_of(&pod.uid)
        .into_iter()
        .find(|container| {
            container
                .labels
                .get(labels::CONTAINER_NAME)
                .map(String::as_str)
                == Some("POD")
        })
        .expect("a pause container");
    rt.block_on(node.docker.kill(&pause.id, "SIGKILL"))
        .expect("kill the pause container");

    let mut lost = false;
    let report = rt.block_on(async {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let pass = manager.reconcile(&desired).await.expect("reconcile");
            lost |= pass
                .actions
                .iter()
                .any(|action| action.kind == ActionKind::SandboxLost);
            if let Some(report) = manager.report(&pod.uid)
                && lost
                && report.phase == PodPhase::Running
                && report
                    .container("echo")
                    .is_some_and(|echo| echo.state == ContainerState::Running)
            {
                return report;
            }
            assert!(Instant::now() < deadline, "{:#?}", manager.report(&pod.uid));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    assert_eq!(report.pod_ip, Some(ip), "the pod keeps its address");
    assert_ne!(
        container_id(&report),
        old_app,
        "the app container was set up again"
    );
    assert_eq!(
        report.container("echo").map(|echo| echo.restart_count),
        Some(1)
    );
    let containers = node.containers_of(&pod.uid);
    assert_eq!(containers.len(), 2, "no leftovers: {containers:?}");
    assert!(containers.iter().all(|container| container.id != pause.id));
    let (code, _) = http(&node.name, ip, "GET", "/");
    assert_eq!(code, 200);
}

#[test]
fn a_failed_startup_probe_restarts_the_container() {
    let rt = tokio_runtime();
    let mut node = TestNode::new(&rt, "198.18.112.0/24");
    let (mut manager, mut events) = node.manager(BackoffConfig {
        base: Duration::from_millis(500),
        ..BackoffConfig::default()
    });
    let mut pod = node.echo_pod("never-starts", RestartPolicy::OnFailure);
    let mut startup = ProbeSpec::new(
        ProbeKind::Startup,
        ProbeAction::Exec {
            command: vec!["cat".to_owned(), "/tmp/never".to_owned()],
        },
    );
    startup.failure_threshold = 2;
    pod.containers[0].probes.startup = Some(startup);
    pod.containers[0].probes.liveness = Some(http_probe("/healthz", ProbeKind::Liveness));
    let desired = vec![pod.clone()];
    let report = rt.block_on(drive(
        &mut manager,
        &desired,
        &pod.uid,
        "running",
        |report| report.phase == PodPhase::Running,
    ));
    let first = container_id(&report);
    let (event, _) =
        rt.block_on(events.wait("startup failure", |event| event.kind == ProbeKind::Startup));
    assert_eq!(event.result, ProbeResult::Failure);
    assert_eq!(event.container_id, first);
    assert!(event.message.contains("exit code"), "{}", event.message);
    let report = rt.block_on(drive(
        &mut manager,
        &desired,
        &pod.uid,
        "the restart after the startup failure",
        |report| {
            report
                .container("echo")
                .is_some_and(|echo| echo.restart_count >= 1)
        },
    ));
    let echo = report.container("echo").expect("echo");
    assert_eq!(
        echo.last_termination
            .as_ref()
            .map(|ended| ended.reason.as_str()),
        Some(reason::STARTUP_PROBE_FAILED),
        "{echo:?}"
    );
    // Liveness never ran: the startup probe gates it.
    for event in events.drain() {
        assert_ne!(event.kind, ProbeKind::Liveness, "{event:?}");
    }
}
