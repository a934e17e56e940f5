//! The agent's /metrics: datapath counters read from the per-CPU maps, valid for
//! Prometheus' own checker. Needs root, bpffs and promtool (`cargo xtask setup`).

use std::{
    io::Write as _,
    net::Ipv4Addr,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
};

use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use berth_agent::{
    datapath::{
        Algorithm, BackendSpec, BackendState, Datapath, DatapathOptions, Frontend, Limits,
        Protocol, Service, ServiceSet,
    },
    metrics::AgentMetrics,
};
use berth_ebpf_common::program_names;
use berth_testkit::{PinDir, packet::Frame};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);

fn datapath(pins: &PinDir) -> Datapath {
    let mut datapath = Datapath::open(DatapathOptions {
        pin_dir: pins.path().to_path_buf(),
        node_id: 1,
        node_addr: Ipv4Addr::new(198, 18, 0, 1),
        limits: Limits {
            max_services: 16,
            max_backends: 64,
            max_connections: 1024,
            max_affinity: 64,
            max_nodes: 4,
            maglev_min_table: 251,
            maglev_pool_slots: 1 << 12,
        },
    })
    .expect("loading the datapath");
    datapath
        .apply(&ServiceSet {
            services: vec![Service {
                name: "default/web:http".into(),
                frontends: vec![Frontend {
                    addr: VIP,
                    port: 80,
                    protocol: Protocol::Tcp,
                    external: false,
                }],
                backends: vec![BackendSpec {
                    addr: Ipv4Addr::new(198, 18, 1, 2),
                    port: 8080,
                    node_id: 1,
                    state: BackendState::Active,
                }],
                algorithm: Algorithm::Maglev,
                affinity_timeout: None,
            }],
            nodes: Vec::new(),
        })
        .expect("apply");
    let program: &SchedClassifier = datapath
        .ebpf_mut()
        .program(program_names::FROM_POD)
        .expect("program")
        .try_into()
        .expect("tc");
    for port in 40_000..40_003u16 {
        let frame = Frame::tcp((Ipv4Addr::new(198, 18, 10, 5), port), (VIP, 80)).build();
        let mut out = vec![0u8; frame.len() + 64];
        program
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .expect("test run");
    }
    datapath
}

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; run `cargo xtask setup`)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    let output = child.wait_with_output().expect("promtool");
    assert!(
        output.status.success(),
        "promtool check metrics:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn metrics_show_datapath_counters_and_pass_promtool() {
    let pins = PinDir::new("metrics");
    let datapath = Arc::new(Mutex::new(datapath(&pins)));
    let metrics = AgentMetrics::new(Some(datapath.clone())).expect("metrics");
    metrics.apply_duration.observe(0.002);

    let (addr, server) = metrics
        .serve("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("serve");
    let text = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
            .expect("request");
        let mut response = String::new();
        std::io::Read::read_to_string(&mut stream, &mut response).expect("response");
        response
    })
    .await
    .expect("client");
    server.abort();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    for expected in [
        "berth_datapath_service_connections_total{namespace=\"default\",port=\"http\",service=\"web\"} 3",
        "berth_datapath_service_packets_total{namespace=\"default\",port=\"http\",service=\"web\"} 3",
        "berth_datapath_packets_total{reason=\"translated\",verdict=\"translate\"} 3",
        "berth_datapath_packets_total{reason=\"drop_no_backend\",verdict=\"drop\"} 0",
        "berth_datapath_packets_total{reason=\"drop_spoofed_source\",verdict=\"drop\"} 0",
        "berth_datapath_packets_total{reason=\"drop_tunnel_not_backend\",verdict=\"drop\"} 0",
        "berth_datapath_conntrack_collected_total 0",
        "berth_datapath_tracked_connections 3",
        "berth_datapath_service_frontends 1",
        "berth_datapath_apply_duration_seconds_count 1",
    ] {
        assert!(body.contains(expected), "missing {expected:?} in:\n{body}");
    }
    assert!(
        !body.contains("198.18.1.2"),
        "no series is labelled with a pod's address:\n{body}"
    );
    promtool_check(&metrics.render());
}
