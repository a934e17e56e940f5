//! The runtime and pod networking against the real engine: a berth/echo container started
//! through bollard, wired into a node network namespace of this test's own, and reached
//! over HTTP and UDP from inside that namespace. Needs root and a running Docker engine
//! (`cargo xtask setup`), and the workload images (`cargo xtask images`; `cargo xtask test`
//! builds them first).
//!
//! Everything the tests create is removed by guards, also when an assertion fails. Only
//! addresses from 198.18.0.0/15, inside the test's own namespace, are used.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use berth_agent::{
    net, podnet,
    runtime::{ContainerSpec, DEFAULT_SOCKET, DockerRuntime, Limits, RuntimeError, labels},
};
use berth_echo::{DEFAULT_PORT, IMAGE_V1, Reply};
use tokio::runtime::Runtime;

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const POD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const TIMEOUT: Duration = Duration::from_secs(10);

/// Guards run outside the async runtime (each engine call is its own `block_on`), so they
/// can still call the engine while a failed assertion unwinds.
fn tokio_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test creates network namespaces and containers: run it as root (cargo xtask test)"
    );
}

fn connect(rt: &Runtime) -> DockerRuntime {
    rt.block_on(DockerRuntime::connect(DEFAULT_SOCKET))
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Fails with the fix in the message when the image was never built.
fn require_image(rt: &Runtime, docker: &DockerRuntime, image: &str) {
    let present = rt
        .block_on(docker.image_present(image))
        .unwrap_or_else(|error| panic!("checking for {image}: {error}"));
    assert!(
        present,
        "image {image} is missing: run `cargo xtask images` (there is no registry; `cargo xtask test` builds the images before testing)"
    );
}

/// A name unique to this run, so concurrent or leftover runs never collide.
fn unique(suffix: &str) -> String {
    format!("bt-{}-{suffix}", std::process::id())
}

fn unique_uid() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{:08x}-{nanos:08x}-4000-8000-000000000000",
        std::process::id()
    )
}

struct NetnsGuard(String);

impl NetnsGuard {
    fn create(name: String) -> Self {
        // A namespace left by an earlier run with the same pid would make add fail.
        net::netns_delete(&name).expect("remove a leftover namespace");
        net::netns_add(&name).expect("create the node namespace");
        NetnsGuard(name)
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(error) = net::netns_delete(&self.0) {
            eprintln!("cleanup: deleting namespace {}: {error}", self.0);
        }
    }
}

struct ContainerGuard<'a> {
    rt: &'a Runtime,
    docker: &'a DockerRuntime,
    id: String,
}

impl Drop for ContainerGuard<'_> {
    fn drop(&mut self) {
        if let Err(error) = self.rt.block_on(self.docker.remove(&self.id)) {
            eprintln!("cleanup: removing container {}: {error}", self.id);
        }
    }
}

fn start<'a>(
    rt: &'a Runtime,
    docker: &'a DockerRuntime,
    spec: &ContainerSpec,
) -> ContainerGuard<'a> {
    let id = rt
        .block_on(docker.create_and_start(spec))
        .unwrap_or_else(|error| panic!("starting {}: {error}", spec.image));
    ContainerGuard { rt, docker, id }
}

struct PodNetGuard(podnet::PodNetwork);

impl Drop for PodNetGuard {
    fn drop(&mut self) {
        if let Err(error) = self.0.teardown() {
            eprintln!("cleanup: tearing down {}: {error}", self.0.host_veth);
        }
    }
}

fn echo_spec(pod_name: &str, uid: &str, node: &str, image: &str) -> ContainerSpec {
    ContainerSpec {
        pod_namespace: "default".to_owned(),
        pod_name: pod_name.to_owned(),
        pod_uid: uid.to_owned(),
        container_name: "echo".to_owned(),
        node: node.to_owned(),
        image: image.to_owned(),
        env: vec![("POD_NAME".to_owned(), pod_name.to_owned())],
        limits: Limits {
            cpu_millis: Some(250),
            memory_bytes: Some(64 << 20),
        },
        ..ContainerSpec::default()
    }
}

/// GET / over a fresh connection, retrying while the server is still starting.
fn http_get_root(server: SocketAddr) -> String {
    let deadline = Instant::now() + TIMEOUT;
    let mut stream = loop {
        match TcpStream::connect_timeout(&server, Duration::from_secs(1)) {
            Ok(stream) => break stream,
            Err(error) if Instant::now() < deadline => {
                eprintln!("waiting for {server}: {error}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(error) => panic!("could not reach {server} from the node namespace: {error}"),
        }
    };
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("set a read timeout");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    assert!(
        response.starts_with("HTTP/1.1 200 "),
        "unexpected response {response:?}"
    );
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_else(|| panic!("no body in {response:?}"))
}

fn udp_echo(server: SocketAddr) -> String {
    let socket = UdpSocket::bind((NODE_IP, 0)).expect("bind a UDP socket on the node address");
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("set a read timeout");
    let mut buf = [0u8; 512];
    for _ in 0..5 {
        socket.send_to(b"ping", server).expect("send a datagram");
        if let Ok((len, from)) = socket.recv_from(&mut buf) {
            assert_eq!(from, server);
            return String::from_utf8_lossy(&buf[..len]).into_owned();
        }
    }
    panic!("no UDP answer from {server}");
}

#[test]
fn echo_container_is_wired_into_the_node_namespace_and_answers() {
    require_root();
    let rt = tokio_runtime();
    let docker = connect(&rt);
    require_image(&rt, &docker, IMAGE_V1);

    let node = NetnsGuard::create(unique("node"));
    net::link_up(Some(&node.0), "lo").expect("lo up in the node namespace");
    // The node's own address: the source of the test's connections to the pod.
    net::addr_add(Some(&node.0), "lo", &format!("{NODE_IP}/32")).expect("node address");

    let pod_name = unique("echo");
    let uid = unique_uid();
    let spec = echo_spec(&pod_name, &uid, &node.0, IMAGE_V1);
    let container = start(&rt, &docker, &spec);

    let status = rt
        .block_on(docker.inspect(&container.id))
        .expect("inspect the container");
    assert!(status.running, "container is not running: {status:?}");
    let pid = status.pid.expect("a running container has a pid");
    assert_eq!(status.exit_code, None);
    assert!(status.started_at.is_some());
    assert_eq!(status.limits, spec.limits, "limits as requested");
    assert!(
        status.env.contains(&format!("POD_NAME={pod_name}")),
        "env {:?}",
        status.env
    );
    assert_eq!(
        status.labels.get(labels::POD_UID).map(String::as_str),
        Some(uid.as_str())
    );
    assert_eq!(
        status.labels.get(labels::NODE).map(String::as_str),
        Some(node.0.as_str())
    );

    let listed = rt
        .block_on(docker.list_by_labels(&[(labels::POD_UID, &uid), (labels::NODE, &node.0)]))
        .expect("list by labels");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, container.id);
    assert_eq!(listed[0].state, "running");

    let host_veth = podnet::host_veth_name(&uid).expect("a veth name from the uid");
    let wired = PodNetGuard(
        podnet::setup(&podnet::PodNetSpec {
            pid,
            pod_ip: POD_IP,
            host_veth: &host_veth,
            host_netns: Some(&node.0),
            mtu: None,
        })
        .unwrap_or_else(|error| panic!("wiring the pod: {error}")),
    );
    assert!(net::link_exists(Some(&node.0), &host_veth));
    assert!(
        !net::link_exists(None, &host_veth),
        "the host side belongs in the node namespace, not the test's"
    );

    let server = SocketAddr::V4(SocketAddrV4::new(POD_IP, DEFAULT_PORT));
    let body = net::in_netns(&node.0, || http_get_root(server)).expect("enter the node namespace");
    let reply = Reply::parse(&body).unwrap_or_else(|| panic!("not a reply line: {body:?}"));
    assert_eq!(reply.pod, pod_name, "the reply names the pod");
    assert_eq!(reply.addr, server);
    assert_eq!(
        reply.client.ip(),
        NODE_IP,
        "the client address arrives unchanged"
    );
    assert_eq!(reply.version, "v1");

    let line = net::in_netns(&node.0, || udp_echo(server)).expect("enter the node namespace");
    let reply = Reply::parse(&line).unwrap_or_else(|| panic!("not a reply line: {line:?}"));
    assert_eq!(reply.pod, pod_name);
    assert_eq!(reply.addr, server, "UDP answers name the pod address too");

    // SIGTERM reaches the server as PID 1 and it exits cleanly, well inside the grace.
    let started = Instant::now();
    rt.block_on(docker.stop(&container.id, Duration::from_secs(10)))
        .expect("stop the container");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        started.elapsed()
    );
    let status = rt
        .block_on(docker.inspect(&container.id))
        .expect("inspect the stopped container");
    assert!(!status.running);
    assert_eq!(status.pid, None);
    assert_eq!(status.exit_code, Some(0));
    assert!(status.finished_at.is_some());

    drop(wired);
    assert!(!net::link_exists(Some(&node.0), &host_veth));
    assert!(!net::netns_exists(&podnet::pod_netns_name(&host_veth)));
}

#[test]
fn missing_image_is_image_not_found() {
    require_root();
    let rt = tokio_runtime();
    let docker = connect(&rt);
    let image = "berth/no-such-image:v0";
    let uid = unique_uid();
    let spec = echo_spec(&unique("missing"), &uid, &unique("node"), image);
    let error = rt
        .block_on(docker.create_and_start(&spec))
        .expect_err("a missing image can't start");
    match &error {
        RuntimeError::ImageNotFound { image: missing } => assert_eq!(missing, image),
        other => panic!("expected ImageNotFound, got {other:?}"),
    }
    assert!(
        error.to_string().contains("cargo xtask images"),
        "the message says how to fix it: {error}"
    );
    let left = rt
        .block_on(docker.list_by_labels(&[(labels::POD_UID, &uid)]))
        .expect("list by labels");
    assert!(left.is_empty(), "nothing was created: {left:?}");
}

#[test]
fn operations_on_a_missing_container_are_typed() {
    require_root();
    let rt = tokio_runtime();
    let docker = connect(&rt);
    let name = unique("never-created");
    assert!(matches!(
        rt.block_on(docker.inspect(&name)),
        Err(RuntimeError::ContainerNotFound { .. })
    ));
    assert!(matches!(
        rt.block_on(docker.stop(&name, Duration::from_secs(1))),
        Err(RuntimeError::ContainerNotFound { .. })
    ));
    assert!(matches!(
        rt.block_on(docker.stats(&name)),
        Err(RuntimeError::ContainerNotFound { .. })
    ));
    rt.block_on(docker.remove(&name))
        .expect("removing what is gone already is fine");
}

/// Docker stats of a running container, and the agent's figures built from them: the
/// pod's container with its working set, CPU from the second reading on.
#[test]
fn stats_feed_the_pod_figures() {
    require_root();
    let rt = tokio_runtime();
    let docker = connect(&rt);
    require_image(&rt, &docker, IMAGE_V1);
    let node = unique("stats-node");
    let pod_name = unique("stats");
    let spec = echo_spec(&pod_name, &unique_uid(), &node, IMAGE_V1);
    let container = start(&rt, &docker, &spec);
    let first = rt.block_on(docker.stats(&container.id)).expect("stats");
    assert!(first.memory_bytes > 0, "{first:?}");
    assert!(first.online_cpus >= 1, "{first:?}");
    std::thread::sleep(Duration::from_millis(200));
    let second = rt.block_on(docker.stats(&container.id)).expect("stats");
    assert!(
        second.system_cpu_ns > first.system_cpu_ns,
        "{first:?} {second:?}"
    );
    assert!(second.cpu_ns >= first.cpu_ns);

    let mut collector = berth_agent::usage::Collector::default();
    let primed = rt.block_on(collector.collect(&docker, &node, None));
    assert_eq!(primed, None, "no figures before a second reading");
    std::thread::sleep(Duration::from_millis(200));
    let usage = rt
        .block_on(collector.collect(&docker, &node, None))
        .expect("figures");
    assert!(usage.window_ms >= 200, "{usage:?}");
    assert!(usage.memory_bytes > 0, "node memory in use: {usage:?}");
    let [pod] = usage.pods.as_slice() else {
        panic!("one pod on this test's node: {usage:?}")
    };
    assert_eq!(pod.name, pod_name);
    assert_eq!(pod.uid, spec.pod_uid);
    assert_eq!(pod.containers.len(), 1);
    assert_eq!(pod.containers[0].name, "echo");
    assert!(
        pod.memory_bytes > 0 && pod.memory_bytes <= 64 << 20,
        "{pod:?}"
    );
}
