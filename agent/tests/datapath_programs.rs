//! The datapath programs run on hand-built packets with BPF_PROG_TEST_RUN: one test per
//! behaviour, before any interface is involved. Needs root and bpffs.

mod common;

use std::{net::Ipv4Addr, time::Duration};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use berth_agent::datapath::{
    Algorithm, BackendSpec, BackendState, Datapath, Frontend, Protocol, Service, monotonic_secs,
};
use berth_ebpf_common::{
    CT_TIMEOUT_CLOSED, CT_TIMEOUT_ESTABLISHED, CT_TIMEOUT_SYN_SENT, CT_TIMEOUT_UDP, CtEntry,
    FlowKey, POD_RANGE_TUNNEL, PodRange, Reason, map_names, program_names,
};
use berth_testkit::{
    PinDir,
    packet::{self, Frame, ICMP, IPIP, Parsed},
    programs,
};
use common::*;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 10);
const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 18, 10, 5), 40_000);

fn backend(last: u8, state: BackendState) -> BackendSpec {
    BackendSpec {
        addr: Ipv4Addr::new(198, 18, 1, last),
        port: 8080,
        node_id: NODE_ID,
        state,
    }
}

fn frontend(addr: Ipv4Addr, protocol: Protocol, external: bool) -> Frontend {
    Frontend {
        addr,
        port: 80,
        protocol,
        external,
    }
}

fn web(backends: Vec<BackendSpec>) -> Service {
    Service {
        name: "default/web:80".into(),
        frontends: vec![
            frontend(VIP, Protocol::Tcp, false),
            frontend(VIP, Protocol::Udp, false),
            frontend(EXTERNAL_IP, Protocol::Tcp, true),
        ],
        backends,
        algorithm: Algorithm::Maglev,
        affinity_timeout: None,
    }
}

struct Harness {
    datapath: Datapath,
    // Dropped after the datapath, so its maps are unpinned last.
    pins: PinDir,
}

impl Harness {
    fn new(services: Vec<Service>) -> Self {
        let pins = PinDir::new("prog");
        let datapath = common::open(&pins, services);
        Harness { datapath, pins }
    }

    /// Applies `backends` as the service's set with the one at `addr` in `state`.
    fn mark_one(&mut self, backends: &[BackendSpec], addr: Ipv4Addr, state: BackendState) {
        let mut backends = backends.to_vec();
        for b in &mut backends {
            if b.addr == addr {
                b.state = state;
            }
        }
        self.datapath
            .apply(&set(vec![web(backends)]))
            .expect("apply");
    }

    /// Opens a connection (its SYN) from each of the client's `ports` to the VIP: each
    /// SYN and the backend it was sent to.
    fn open_flows(&mut self, ports: std::ops::Range<u16>) -> Vec<(Vec<u8>, Ipv4Addr)> {
        ports
            .map(|port| {
                let syn = Frame::tcp((CLIENT.0, port), (VIP, 80)).build();
                let dst = parsed(&self.run(program_names::FROM_POD, &syn).1).dst;
                (syn, dst)
            })
            .collect()
    }

    fn run(&mut self, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        programs::test_run(self.datapath.ebpf_mut(), program, frame)
    }

    fn reason(&self, reason: Reason) -> u64 {
        common::counted(&self.datapath, reason)
    }

    /// Runs `program` and returns the verdict, the output, and whether `reason` was
    /// counted for this packet.
    fn run_counting(
        &mut self,
        program: &str,
        frame: &[u8],
        reason: Reason,
    ) -> (u32, Vec<u8>, bool) {
        let before = self.reason(reason);
        let (verdict, out) = self.run(program, frame);
        (verdict, out, self.reason(reason) == before + 1)
    }
}

fn parsed(frame: &[u8]) -> Parsed {
    packet::parse(frame).expect("output is an IPv4 frame")
}

fn three_backends() -> Vec<BackendSpec> {
    (2..5).map(|i| backend(i, BackendState::Active)).collect()
}

#[test]
fn tcp_to_vip_is_translated_to_a_backend_with_valid_checksums() {
    let mut h = Harness::new(vec![web(three_backends())]);
    let frame = Frame::tcp(CLIENT, (VIP, 80)).build();
    let (verdict, out, counted) =
        h.run_counting(program_names::FROM_POD, &frame, Reason::Translated);
    assert_eq!(verdict, TC_ACT_OK);
    assert!(counted);
    let p = parsed(&out);
    assert!(three_backends().iter().any(|b| b.addr == p.dst));
    assert_eq!(p.dst_port, 8080);
    assert_eq!((p.src, p.src_port), CLIENT, "client address is kept");
    assert!(p.ip_checksum_ok, "IPv4 checksum");
    assert!(p.l4_checksum_ok, "TCP checksum");
}

#[test]
fn udp_to_vip_is_translated_and_zero_checksum_stays_zero() {
    let mut h = Harness::new(vec![web(three_backends())]);
    let frame = Frame::udp(CLIENT, (VIP, 80)).build();
    let (verdict, out) = h.run(program_names::FROM_POD, &frame);
    assert_eq!(verdict, TC_ACT_OK);
    let p = parsed(&out);
    assert_eq!(p.dst_port, 8080);
    assert!(p.ip_checksum_ok && p.l4_checksum_ok);

    let mut no_checksum = Frame::udp((CLIENT.0, 40_001), (VIP, 80));
    no_checksum.udp_zero_checksum = true;
    let (_, out) = h.run(program_names::FROM_POD, &no_checksum.build());
    assert_eq!(
        &out[14 + 20 + 6..14 + 20 + 8],
        &[0, 0],
        "no checksum stays none"
    );
    assert_eq!(parsed(&out).dst_port, 8080);
}

#[test]
fn established_flow_keeps_its_backend() {
    let mut h = Harness::new(vec![web(three_backends())]);
    let frame = Frame::tcp(CLIENT, (VIP, 80)).build();
    let first = parsed(&h.run(program_names::FROM_POD, &frame).1).dst;
    for _ in 0..5 {
        assert_eq!(parsed(&h.run(program_names::FROM_POD, &frame).1).dst, first);
    }
}

#[test]
fn the_counters_read_in_batches_are_each_backends_and_services_own() {
    let mut h = Harness::new(vec![web(three_backends())]);
    let flows = h.open_flows(41_000..41_030);
    let reader = h.datapath.traffic_reader().expect("traffic reader");
    let mut by_backend: Vec<(Ipv4Addr, u64)> = reader
        .backend_traffic()
        .expect("backend traffic")
        .iter()
        .map(|report| (report.key.0, report.traffic.new_connections))
        .collect();
    by_backend.sort();
    let mut expected: Vec<(Ipv4Addr, u64)> = three_backends()
        .iter()
        .map(|b| {
            let opened = flows.iter().filter(|(_, dst)| *dst == b.addr).count();
            (b.addr, opened as u64)
        })
        .collect();
    expected.sort();
    assert_eq!(
        by_backend, expected,
        "every backend, with its own new flows"
    );
    assert_eq!(h.new_connections(), 30, "the service's counter");
}

#[test]
fn reply_from_backend_is_reverse_translated_to_the_vip() {
    let mut h = Harness::new(vec![web(three_backends())]);
    let out = h
        .run(
            program_names::FROM_POD,
            &Frame::tcp(CLIENT, (VIP, 80)).build(),
        )
        .1;
    let chosen = parsed(&out).dst;
    let reply = Frame::tcp((chosen, 8080), CLIENT).build();
    // Replies are translated entering the client pod (backend on another node) ...
    let (verdict, out, counted) =
        h.run_counting(program_names::TO_POD, &reply, Reason::ReverseTranslated);
    assert_eq!(verdict, TC_ACT_OK);
    assert!(counted);
    let p = parsed(&out);
    assert_eq!((p.src, p.src_port), (VIP, 80));
    assert_eq!((p.dst, p.dst_port), CLIENT);
    assert!(p.ip_checksum_ok && p.l4_checksum_ok);
    // ... or leaving a local backend pod.
    let (_, out) = h.run(program_names::FROM_POD, &reply);
    assert_eq!(parsed(&out).src, VIP);
}

#[test]
fn traffic_not_for_a_service_passes_untouched() {
    let mut h = Harness::new(vec![web(three_backends())]);
    for frame in [
        Frame::tcp(CLIENT, (Ipv4Addr::new(198, 18, 7, 7), 80)).build(),
        // Right address, wrong port.
        Frame::tcp(CLIENT, (VIP, 81)).build(),
    ] {
        for program in [program_names::FROM_POD, program_names::TO_POD] {
            let (verdict, out, counted) = h.run_counting(program, &frame, Reason::PassNotService);
            assert_eq!(verdict, TC_ACT_OK);
            assert_eq!(out, frame);
            assert!(counted, "{program} counts pass_not_service");
        }
    }
}

#[test]
fn odd_packets_pass_untouched_or_drop_with_a_counted_reason() {
    let mut h = Harness::new(vec![web(three_backends())]);
    let to_vip = Frame::tcp(CLIENT, (VIP, 80));

    // An IPv4 header and nothing after it. (The kernel hands TC only frames with a whole
    // IPv4 header, and so does its test runner; the XDP test covers shorter frames.)
    let no_l4 = to_vip.build()[..14 + 20].to_vec();
    let (verdict, out, counted) =
        h.run_counting(program_names::FROM_POD, &no_l4, Reason::PassTruncated);
    assert_eq!(
        (verdict, out, counted),
        (TC_ACT_OK, no_l4, true),
        "no TCP header"
    );

    // TCP header cut short.
    let full = to_vip.build();
    let cut = full[..14 + 20 + 10].to_vec();
    let (verdict, out, counted) =
        h.run_counting(program_names::FROM_POD, &cut, Reason::PassTruncated);
    assert_eq!(
        (verdict, out, counted),
        (TC_ACT_OK, cut, true),
        "truncated TCP"
    );

    // IPv4 header length below 20 bytes.
    let mut short_header = to_vip.build();
    short_header[14] = 0x44;
    let (verdict, _, counted) = h.run_counting(
        program_names::FROM_POD,
        &short_header,
        Reason::DropBadIpHeader,
    );
    assert_eq!(
        (verdict, counted),
        (TC_ACT_SHOT, true),
        "IHL < 5 is dropped"
    );

    // Fragments carry no ports beyond the first: passed untouched.
    let mut fragment = to_vip.clone();
    fragment.fragment = 0x2000;
    let fragment = fragment.build();
    let (verdict, out, counted) =
        h.run_counting(program_names::FROM_POD, &fragment, Reason::PassFragment);
    assert_eq!(
        (verdict, out, counted),
        (TC_ACT_OK, fragment, true),
        "fragment"
    );

    // ICMP to the VIP.
    let mut icmp = to_vip.clone();
    icmp.proto = ICMP;
    icmp.payload = vec![8, 0, 0xf7, 0xff, 0, 0, 0, 0];
    let icmp = icmp.build();
    let (verdict, out, counted) =
        h.run_counting(program_names::FROM_POD, &icmp, Reason::PassNotTcpUdp);
    assert_eq!((verdict, out, counted), (TC_ACT_OK, icmp, true), "ICMP");

    // IPv6.
    let ipv6 = packet::ethernet([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], 0x86dd, &[0x60; 60]);
    let (verdict, out, counted) =
        h.run_counting(program_names::FROM_POD, &ipv6, Reason::PassNotIpv4);
    assert_eq!((verdict, out, counted), (TC_ACT_OK, ipv6, true), "IPv6");
}

#[test]
fn ip_options_are_kept_and_the_ports_found_behind_them() {
    let mut h = Harness::new(vec![web(three_backends())]);
    let mut frame = Frame::tcp(CLIENT, (VIP, 80));
    // Two NOPs, then a 2-byte option type 0x94 (router alert-like, harmless), padded.
    frame.ip_options = vec![1, 1, 0x94, 4, 0, 0, 0, 0];
    let (verdict, out) = h.run(program_names::FROM_POD, &frame.build());
    assert_eq!(verdict, TC_ACT_OK);
    let p = parsed(&out);
    assert_eq!(p.header_len, 28);
    assert_eq!(p.dst_port, 8080);
    assert_eq!((p.src_port, p.src), (CLIENT.1, CLIENT.0));
    assert!(p.ip_checksum_ok && p.l4_checksum_ok);
    assert_eq!(&out[34..42], &[1, 1, 0x94, 4, 0, 0, 0, 0]);
}

#[test]
fn a_service_without_active_backends_drops_new_flows_with_a_reason() {
    let mut h = Harness::new(vec![web(vec![backend(2, BackendState::Failed)])]);
    let frame = Frame::tcp(CLIENT, (VIP, 80)).build();
    let (verdict, _, counted) =
        h.run_counting(program_names::FROM_POD, &frame, Reason::DropNoBackend);
    assert_eq!((verdict, counted), (TC_ACT_SHOT, true));
}

/// Collects the log records that reach the `log` facade, as the agent's log would.
struct CaptureLog(std::sync::Mutex<Vec<String>>);

impl log::Log for CaptureLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut records) = self.0.lock() {
            records.push(format!("{} {}", record.level(), record.args()));
        }
    }
    fn flush(&self) {}
}

static CAPTURE: CaptureLog = CaptureLog(std::sync::Mutex::new(Vec::new()));

#[test]
fn program_log_records_reach_the_agent_log() {
    // The logger must be in place before the datapath opens its log reader.
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(log::LevelFilter::Trace);
    let mut h = Harness::new(vec![web(vec![backend(2, BackendState::Failed)])]);
    let frame = Frame::tcp(CLIENT, (VIP, 80)).build();
    let (verdict, _) = h.run(program_names::FROM_POD, &frame);
    assert_eq!(verdict, TC_ACT_SHOT);
    h.datapath.flush_logs();
    let records = CAPTURE.0.lock().expect("log records").clone();
    assert!(
        records
            .iter()
            .any(|r| r.starts_with("WARN") && r.contains("has no active backend")),
        "records: {records:?}"
    );
}

#[test]
fn failed_backend_gets_no_new_flows_and_its_flows_move_on_their_next_packet() {
    let mut h = Harness::new(vec![web(three_backends())]);
    // Find a flow on each backend.
    let flows = h.open_flows(40_000..40_200);
    let victim = flows[0].1;
    h.mark_one(&three_backends(), victim, BackendState::Failed);
    let rebalanced_before = h.reason(Reason::Rebalanced);
    let mut moved = 0;
    for (frame, before) in &flows {
        let after = parsed(&h.run(program_names::FROM_POD, frame).1).dst;
        assert_ne!(after, victim, "no packet reaches the failed backend");
        if *before == victim {
            moved += 1;
        } else {
            assert_eq!(after, *before, "flows on healthy backends stay");
        }
    }
    assert!(moved > 0);
    assert_eq!(h.reason(Reason::Rebalanced) - rebalanced_before, moved);
    assert_new_flows_avoid(&mut h, victim);
}

/// No new connection from the client (100 fresh ports) is sent to `backend`.
fn assert_new_flows_avoid(h: &mut Harness, backend: Ipv4Addr) {
    for port in 41_000..41_100u16 {
        let frame = Frame::tcp((CLIENT.0, port), (VIP, 80)).build();
        assert_ne!(
            parsed(&h.run(program_names::FROM_POD, &frame).1).dst,
            backend
        );
    }
}

/// A packet of an established TCP connection (ACK set).
fn tcp_established(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let mut frame = Frame::tcp(src, dst);
    frame.tcp_flags = 0x10;
    frame.build()
}

#[test]
fn terminating_backend_keeps_established_flows_but_gets_no_new_ones() {
    let mut h = Harness::new(vec![web(three_backends())]);
    let frame = Frame::tcp(CLIENT, (VIP, 80)).build();
    let chosen = parsed(&h.run(program_names::FROM_POD, &frame).1).dst;
    h.mark_one(&three_backends(), chosen, BackendState::Terminating);
    assert_eq!(
        parsed(
            &h.run(program_names::FROM_POD, &tcp_established(CLIENT, (VIP, 80)))
                .1
        )
        .dst,
        chosen,
        "the established connection stays"
    );
    assert_new_flows_avoid(&mut h, chosen);
}

#[test]
fn a_new_connection_on_reused_ports_avoids_a_terminating_backend() {
    // Clients reuse their ports after some thousands of connections, while the datapath
    // may still track the old connection: its SYN must be balanced as a new flow.
    let mut h = Harness::new(vec![web(three_backends())]);
    let tracked = h.open_flows(40_000..40_060);
    let draining = tracked[0].1;
    h.mark_one(&three_backends(), draining, BackendState::Terminating);
    let rebalanced_before = h.reason(Reason::Rebalanced);
    let mut reopened = 0;
    for (syn, before) in &tracked {
        let after = parsed(&h.run(program_names::FROM_POD, syn).1).dst;
        if *before == draining {
            assert_ne!(after, draining, "a new connection on the old one's ports");
            reopened += 1;
        } else {
            assert_eq!(
                after, *before,
                "a SYN on an active backend's flow stays (a retransmission)"
            );
        }
    }
    assert!(reopened > 0);
    assert_eq!(h.reason(Reason::Rebalanced) - rebalanced_before, reopened);
    // The same from outside the cluster, through XDP and Maglev.
    let mut h = Harness::new(vec![web(three_backends())]);
    let outside = (Ipv4Addr::new(198, 18, 20, 5), 50_000);
    let syn = Frame::tcp(outside, (EXTERNAL_IP, 80)).build();
    let first = parsed(&h.run(program_names::EXTERNAL, &syn).1).dst;
    h.mark_one(&three_backends(), first, BackendState::Terminating);
    let established = tcp_established(outside, (EXTERNAL_IP, 80));
    let (_, out) = h.run(program_names::EXTERNAL, &established);
    assert_eq!(parsed(&out).dst, first, "the established connection stays");
    let (_, out) = h.run(program_names::EXTERNAL, &syn);
    assert_ne!(
        parsed(&out).dst,
        first,
        "a new connection on the same ports moves"
    );
}

#[test]
fn session_affinity_sends_a_client_to_one_backend() {
    let mut service = web(three_backends());
    service.affinity_timeout = Some(Duration::from_secs(600));
    let mut h = Harness::new(vec![service]);
    let mut seen = std::collections::HashSet::new();
    for port in 40_000..40_050u16 {
        let frame = Frame::tcp((CLIENT.0, port), (VIP, 80)).build();
        seen.insert(parsed(&h.run(program_names::FROM_POD, &frame).1).dst);
    }
    assert_eq!(seen.len(), 1, "one backend for one client: {seen:?}");
    let mut spread = std::collections::HashSet::new();
    for last in 1..60u8 {
        let frame = Frame::tcp((Ipv4Addr::new(198, 18, 11, last), 40_000), (VIP, 80)).build();
        spread.insert(parsed(&h.run(program_names::FROM_POD, &frame).1).dst);
    }
    assert_eq!(spread.len(), 3, "different clients still spread");
}

#[test]
fn random_algorithm_spreads_flows() {
    let mut service = web(three_backends());
    service.algorithm = Algorithm::Random;
    let mut h = Harness::new(vec![service]);
    let mut seen = std::collections::HashSet::new();
    for port in 40_000..40_100u16 {
        let frame = Frame::tcp((CLIENT.0, port), (VIP, 80)).build();
        seen.insert(parsed(&h.run(program_names::FROM_POD, &frame).1).dst);
    }
    assert_eq!(seen.len(), 3);
}

#[test]
fn xdp_translates_external_frontends_only() {
    let mut h = Harness::new(vec![web(three_backends())]);
    let external = Frame::tcp(CLIENT, (EXTERNAL_IP, 80)).build();
    let (verdict, out, counted) =
        h.run_counting(program_names::EXTERNAL, &external, Reason::Translated);
    assert_eq!((verdict, counted), (XDP_PASS, true));
    let p = parsed(&out);
    assert_eq!(p.dst_port, 8080);
    assert_eq!(
        (p.src, p.src_port),
        CLIENT,
        "the client's address is preserved"
    );
    assert!(p.ip_checksum_ok && p.l4_checksum_ok);

    // A ClusterIP is not reachable from outside.
    let cluster_ip = Frame::tcp(CLIENT, (VIP, 80)).build();
    let (verdict, out, counted) =
        h.run_counting(program_names::EXTERNAL, &cluster_ip, Reason::PassNotService);
    assert_eq!((verdict, out, counted), (XDP_PASS, cluster_ip, true));
}

#[test]
fn xdp_handles_odd_packets() {
    let mut h = Harness::new(vec![web(three_backends())]);
    let to_external = Frame::tcp(CLIENT, (EXTERNAL_IP, 80));
    let runt = to_external.build()[..14].to_vec();
    let (verdict, out, counted) =
        h.run_counting(program_names::EXTERNAL, &runt, Reason::PassTruncated);
    assert_eq!(
        (verdict, out, counted),
        (XDP_PASS, runt, true),
        "runt Ethernet frame"
    );

    let short_ip = to_external.build()[..14 + 10].to_vec();
    let (verdict, out, counted) =
        h.run_counting(program_names::EXTERNAL, &short_ip, Reason::PassTruncated);
    assert_eq!(
        (verdict, out, counted),
        (XDP_PASS, short_ip, true),
        "short IPv4 header"
    );

    let mut ipv6 = to_external.build();
    ipv6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    let (verdict, out, counted) =
        h.run_counting(program_names::EXTERNAL, &ipv6, Reason::PassNotIpv4);
    assert_eq!((verdict, out, counted), (XDP_PASS, ipv6, true), "IPv6");

    let mut short_header = to_external.build();
    short_header[14] = 0x44;
    let (verdict, _, counted) = h.run_counting(
        program_names::EXTERNAL,
        &short_header,
        Reason::DropBadIpHeader,
    );
    assert_eq!((verdict, counted), (XDP_DROP, true));

    let cut = to_external.build()[..14 + 20 + 10].to_vec();
    let (verdict, out, counted) =
        h.run_counting(program_names::EXTERNAL, &cut, Reason::PassTruncated);
    assert_eq!((verdict, out, counted), (XDP_PASS, cut, true));

    let mut fragment = to_external.clone();
    fragment.fragment = 0x0010;
    let fragment = fragment.build();
    let (verdict, out, counted) =
        h.run_counting(program_names::EXTERNAL, &fragment, Reason::PassFragment);
    assert_eq!((verdict, out, counted), (XDP_PASS, fragment, true));

    let mut options = to_external.clone();
    options.ip_options = vec![1, 1, 1, 0];
    let (verdict, out) = h.run(program_names::EXTERNAL, &options.build());
    assert_eq!(verdict, XDP_PASS);
    let p = parsed(&out);
    assert_eq!((p.header_len, p.dst_port), (24, 8080));
    assert!(p.ip_checksum_ok && p.l4_checksum_ok);
}

/// `inner` as the peer node sends it to `backend` in IPIP: the backend's port in the
/// outer IP id.
fn tunnelled(inner: &Frame, (backend, port): (Ipv4Addr, u16)) -> Vec<u8> {
    let mut outer = packet::ipv4_packet(PEER_NODE_ADDR, backend, IPIP, &[], 0x4000, &inner.ipv4());
    outer[4..6].copy_from_slice(&port.to_be_bytes());
    outer[10..12].copy_from_slice(&[0, 0]);
    let check = packet::internet_checksum(&outer[..20]);
    outer[10..12].copy_from_slice(&check.to_be_bytes());
    packet::ethernet([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 9], 0x0800, &outer)
}

#[test]
fn xdp_unwraps_ipip_from_a_known_node_and_delivers_to_the_backend() {
    let mut h = Harness::new(vec![web(three_backends())]);
    let backend = Ipv4Addr::new(198, 18, 1, 3);
    let frame = tunnelled(&Frame::tcp(CLIENT, (EXTERNAL_IP, 80)), (backend, 8080));

    let (verdict, out, counted) =
        h.run_counting(program_names::EXTERNAL, &frame, Reason::TunnelDelivered);
    assert_eq!((verdict, counted), (XDP_PASS, true));
    assert_eq!(out.len(), frame.len() - 20, "outer header removed");
    let p = parsed(&out);
    assert_eq!((p.dst, p.dst_port), (backend, 8080));
    assert_eq!((p.src, p.src_port), CLIENT);
    assert!(p.ip_checksum_ok && p.l4_checksum_ok);

    // The backend's reply leaves with the external address restored.
    let reply = Frame::tcp((backend, 8080), CLIENT).build();
    let (_, out) = h.run(program_names::FROM_POD, &reply);
    let p = parsed(&out);
    assert_eq!((p.src, p.src_port), (EXTERNAL_IP, 80));
    assert!(p.ip_checksum_ok && p.l4_checksum_ok);

    // IPIP from an address that is not a node is someone else's tunnel.
    let mut foreign = frame.clone();
    foreign[14 + 12..14 + 16].copy_from_slice(&[198, 18, 99, 99]);
    let (verdict, out, counted) =
        h.run_counting(program_names::EXTERNAL, &foreign, Reason::PassForeignTunnel);
    assert_eq!((verdict, out, counted), (XDP_PASS, foreign, true));
}

#[test]
fn ipip_to_a_pod_port_that_is_no_local_service_backend_is_dropped_and_counted() {
    let mut backends = three_backends();
    let remote = Ipv4Addr::new(198, 18, 2, 9);
    backends.push(BackendSpec {
        addr: remote,
        port: 8080,
        node_id: 2,
        state: BackendState::Active,
    });
    let mut h = Harness::new(vec![web(backends)]);
    let backend = Ipv4Addr::new(198, 18, 1, 3);
    let to_external = Frame::tcp(CLIENT, (EXTERNAL_IP, 80));
    for (frame, what) in [
        (
            tunnelled(&to_external, (backend, 22)),
            "a backend pod's other port",
        ),
        (
            tunnelled(&to_external, (Ipv4Addr::new(198, 18, 1, 77), 8080)),
            "a pod that is no backend",
        ),
        (
            tunnelled(&to_external, (remote, 8080)),
            "another node's backend",
        ),
        (
            tunnelled(&Frame::tcp(CLIENT, (VIP, 80)), (backend, 8080)),
            "a ClusterIP, which is not reachable from outside",
        ),
        (
            tunnelled(
                &Frame::tcp(CLIENT, (Ipv4Addr::new(198, 18, 7, 7), 80)),
                (backend, 8080),
            ),
            "no frontend at all",
        ),
    ] {
        let (verdict, _, counted) = h.run_counting(
            program_names::EXTERNAL,
            &frame,
            Reason::DropTunnelNotBackend,
        );
        assert_eq!((verdict, counted), (XDP_DROP, true), "{what}");
    }
    // Nothing was recorded for the dropped packets: a reply is not translated.
    let reply = Frame::tcp((backend, 22), CLIENT).build();
    let (_, out) = h.run(program_names::FROM_POD, &reply);
    assert_eq!(out, reply);
    // The local backend itself is still delivered to.
    let frame = tunnelled(&to_external, (backend, 8080));
    let (verdict, _, counted) =
        h.run_counting(program_names::EXTERNAL, &frame, Reason::TunnelDelivered);
    assert_eq!((verdict, counted), (XDP_PASS, true));
}

#[test]
fn ipip_for_a_nodeport_on_the_peer_node_is_delivered_to_the_local_backend() {
    const NODE_PORT: u16 = 30_080;
    let mut service = web(three_backends());
    service.frontends.push(Frontend {
        port: NODE_PORT,
        ..frontend(NODE_ADDR, Protocol::Tcp, true)
    });
    let mut h = Harness::new(vec![service]);
    let backend = Ipv4Addr::new(198, 18, 1, 3);
    // The peer chose this node's backend for a client of its own NodePort address.
    let to_peer = Frame::tcp(CLIENT, (PEER_NODE_ADDR, NODE_PORT));
    let (verdict, out, counted) = h.run_counting(
        program_names::EXTERNAL,
        &tunnelled(&to_peer, (backend, 8080)),
        Reason::TunnelDelivered,
    );
    assert_eq!((verdict, counted), (XDP_PASS, true));
    let p = parsed(&out);
    assert_eq!((p.dst, p.dst_port), (backend, 8080));
    // The reply leaves as from the peer's NodePort, where the client sent it.
    let reply = Frame::tcp((backend, 8080), CLIENT).build();
    let (_, out) = h.run(program_names::FROM_POD, &reply);
    let p = parsed(&out);
    assert_eq!((p.src, p.src_port), (PEER_NODE_ADDR, NODE_PORT));
    // A port of the peer's address that is no NodePort names no service.
    let (verdict, _, counted) = h.run_counting(
        program_names::EXTERNAL,
        &tunnelled(
            &Frame::tcp(CLIENT, (PEER_NODE_ADDR, 30_081)),
            (backend, 8080),
        ),
        Reason::DropTunnelNotBackend,
    );
    assert_eq!((verdict, counted), (XDP_DROP, true));
}

/// The pod's address the anti-spoofing test registers for the test runs' interface.
const POD: Ipv4Addr = CLIENT.0;

#[test]
fn a_spoofed_source_leaving_a_pod_is_dropped_and_counted() {
    let mut h = Harness::new(vec![web(three_backends())]);
    // BPF_PROG_TEST_RUN hands TC programs a packet on the loopback interface: registered
    // as the pod's veth, its packets must come from the pod's address.
    h.datapath
        .register_pod_interface("lo", POD)
        .expect("registering the pod interface");
    let spoofer = Ipv4Addr::new(198, 18, 10, 99);
    let mut icmp = Frame::tcp((spoofer, 0), (Ipv4Addr::new(198, 18, 7, 7), 0));
    icmp.proto = ICMP;
    for frame in [
        Frame::tcp((spoofer, 40_000), (VIP, 80)).build(),
        Frame::udp((spoofer, 40_000), (Ipv4Addr::new(198, 18, 7, 7), 53)).build(),
        icmp.build(),
    ] {
        let (verdict, _, counted) =
            h.run_counting(program_names::FROM_POD, &frame, Reason::DropSpoofedSource);
        assert_eq!((verdict, counted), (TC_ACT_SHOT, true));
    }
    assert_eq!(
        h.datapath.tracked_connections().expect("conntrack"),
        0,
        "a spoofed packet leaves no state"
    );
    // The pod's own address goes through.
    let frame = Frame::tcp((POD, 40_000), (VIP, 80)).build();
    let (verdict, _, counted) = h.run_counting(program_names::FROM_POD, &frame, Reason::Translated);
    assert_ne!(verdict, TC_ACT_SHOT);
    assert!(counted);
    // Non-IP frames (ARP) pass as before: only IPv4 carries a source to check.
    let mut arp = Frame::tcp((spoofer, 0), (VIP, 0)).build();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let (verdict, out, counted) =
        h.run_counting(program_names::FROM_POD, &arp, Reason::PassNotIpv4);
    assert_eq!((verdict, out, counted), (TC_ACT_OK, arp, true));
    // The check is the pod veth's only: replies arriving for the pod are not checked.
    let reply = Frame::tcp((spoofer, 80), (POD, 40_000)).build();
    let (verdict, _) = h.run(program_names::TO_POD, &reply);
    assert_eq!(verdict, TC_ACT_OK);
}

#[test]
fn a_syn_flood_does_not_evict_established_connections() {
    let mut h = Harness::new(vec![web(three_backends())]);
    // Fifty connections through their handshake: the SYN, then the client's ACK.
    let established: Vec<(u16, Ipv4Addr)> = (40_000..40_050u16)
        .map(|port| {
            let syn = Frame::tcp((CLIENT.0, port), (VIP, 80)).build();
            let backend = parsed(&h.run(program_names::FROM_POD, &syn).1).dst;
            let ack = tcp_established((CLIENT.0, port), (VIP, 80));
            assert_eq!(parsed(&h.run(program_names::FROM_POD, &ack).1).dst, backend);
            (port, backend)
        })
        .collect();
    // SYNs from spoofed outside clients, ten times the size of the main table (4,096
    // connections, 8,192 entries) and forty times the half-open one's.
    let mut flooded = 0;
    for source in 0..80u8 {
        for port in 0..1_000u16 {
            let syn = Frame::tcp(
                (Ipv4Addr::new(198, 18, 100, source), 10_000 + port),
                (EXTERNAL_IP, 80),
            )
            .build();
            let (verdict, _) = h.run(program_names::EXTERNAL, &syn);
            assert_eq!(verdict, XDP_PASS);
            flooded += 1;
        }
    }
    assert_eq!(flooded, 80_000);
    for (port, backend) in established {
        let reply = tcp_established((backend, 8080), (CLIENT.0, port));
        let (verdict, out, counted) =
            h.run_counting(program_names::TO_POD, &reply, Reason::ReverseTranslated);
        assert_eq!(
            (verdict, counted),
            (TC_ACT_OK, true),
            "reply of port {port}"
        );
        let p = parsed(&out);
        assert_eq!((p.src, p.src_port), (VIP, 80));
        let next = tcp_established((CLIENT.0, port), (VIP, 80));
        assert_eq!(
            parsed(&h.run(program_names::FROM_POD, &next).1).dst,
            backend,
            "the connection keeps its backend"
        );
    }
}

impl Harness {
    /// Moves every conntrack entry's last packet `secs` into the past, as if that much
    /// time went by without traffic.
    fn age_connections(&self, secs: u32) {
        for name in [map_names::CONNTRACK, map_names::HALF_OPEN] {
            let data = MapData::from_pin(self.pins.path().join(name)).expect("pinned table");
            let mut table: BpfHashMap<_, FlowKey, CtEntry> =
                BpfHashMap::try_from(Map::LruHashMap(data)).expect("conntrack table");
            let entries: Vec<(FlowKey, CtEntry)> =
                table.iter().map(|entry| entry.expect("entry")).collect();
            for (key, mut entry) in entries {
                entry.last_seen_secs = entry.last_seen_secs.wrapping_sub(secs);
                table.insert(key, entry, 0).expect("aging an entry");
            }
        }
    }

    fn new_connections(&self) -> u64 {
        self.datapath
            .service_traffic()
            .expect("service traffic")
            .iter()
            .map(|report| report.traffic.new_connections)
            .sum()
    }
}

#[test]
fn expired_entries_are_absent_for_the_programs() {
    let mut h = Harness::new(vec![web(three_backends())]);
    let request = Frame::udp(CLIENT, (VIP, 80)).build();
    let backend = parsed(&h.run(program_names::FROM_POD, &request).1).dst;
    let reply = Frame::udp((backend, 8080), CLIENT).build();
    let (_, out) = h.run(program_names::TO_POD, &reply);
    assert_eq!(parsed(&out).src, VIP, "a fresh flow's reply is translated");
    // A UDP flow with replies lives two minutes from its last packet.
    h.age_connections(CT_TIMEOUT_UDP + 5);
    let (_, out) = h.run(program_names::TO_POD, &reply);
    assert_eq!(
        parsed(&out).src,
        VIP,
        "a UDP stream outlives the one-way timeout"
    );
    let before = h.new_connections();
    h.run(program_names::FROM_POD, &request);
    assert_eq!(
        h.new_connections(),
        before,
        "the reply kept the client's direction alive too"
    );
    h.age_connections(121);
    let (_, out, counted) = h.run_counting(program_names::TO_POD, &reply, Reason::PassNotService);
    assert_eq!((out, counted), (reply, true), "an expired flow's reply");
    let before = h.new_connections();
    h.run(program_names::FROM_POD, &request);
    assert_eq!(
        h.new_connections(),
        before + 1,
        "the next packet opens a new flow"
    );
}

#[test]
fn the_sweep_collects_entries_past_their_lifetime() {
    let mut h = Harness::new(vec![web(three_backends())]);
    let mut sweeper = h.datapath.conntrack_sweeper().expect("sweeper");
    // One connection of each kind: established, reset, half-open, and a UDP flow.
    let established = tcp_established((CLIENT.0, 40_001), (VIP, 80));
    h.run(
        program_names::FROM_POD,
        &Frame::tcp((CLIENT.0, 40_001), (VIP, 80)).build(),
    );
    h.run(program_names::FROM_POD, &established);
    h.run(
        program_names::FROM_POD,
        &Frame::tcp((CLIENT.0, 40_002), (VIP, 80)).build(),
    );
    let mut reset = Frame::tcp((CLIENT.0, 40_002), (VIP, 80));
    reset.tcp_flags = 0x10;
    h.run(program_names::FROM_POD, &reset.build());
    reset.tcp_flags = 0x14;
    h.run(program_names::FROM_POD, &reset.build());
    h.run(
        program_names::FROM_POD,
        &Frame::tcp((CLIENT.0, 40_003), (VIP, 80)).build(),
    );
    h.run(
        program_names::FROM_POD,
        &Frame::udp(CLIENT, (VIP, 80)).build(),
    );
    let tracked = |h: &Harness| h.datapath.tracked_connections().expect("conntrack");
    assert_eq!(tracked(&h), 4);

    let now = monotonic_secs();
    // Each step collects one connection: its forward and its reverse entry.
    assert_eq!(sweeper.sweep(now + 2).expect("sweep"), 0);
    assert_eq!(
        sweeper.sweep(now + CT_TIMEOUT_CLOSED + 2).expect("sweep"),
        2
    );
    assert_eq!(tracked(&h), 3, "the reset connection went first");
    assert_eq!(sweeper.sweep(now + CT_TIMEOUT_UDP + 2).expect("sweep"), 2);
    assert_eq!(
        sweeper.sweep(now + CT_TIMEOUT_SYN_SENT + 2).expect("sweep"),
        2
    );
    assert_eq!(tracked(&h), 1);
    assert_eq!(
        sweeper
            .sweep(now + CT_TIMEOUT_ESTABLISHED - 10)
            .expect("sweep"),
        0,
        "an established connection lives a day"
    );
    assert_eq!(
        sweeper
            .sweep(now + CT_TIMEOUT_ESTABLISHED + 2)
            .expect("sweep"),
        2
    );
    assert_eq!(tracked(&h), 0);
}

#[test]
fn a_new_connection_on_ports_of_an_expired_one_gets_its_syn_ack_translated() {
    // One backend, so the new connection's replies have the old one's reverse key.
    let mut h = Harness::new(vec![web(vec![backend(1, BackendState::Active)])]);
    let syn = Frame::tcp(CLIENT, (VIP, 80));
    let backend = parsed(&h.run(program_names::FROM_POD, &syn.build()).1).dst;
    let mut ack = syn.clone();
    ack.tcp_flags = 0x10;
    h.run(program_names::FROM_POD, &ack.build());
    let mut reset = syn.clone();
    reset.tcp_flags = 0x14;
    h.run(program_names::FROM_POD, &reset.build());
    // The reset connection's entries outlive their lifetime until the agent's sweep.
    h.age_connections(CT_TIMEOUT_CLOSED + 1);
    // The client wraps its ports and opens a connection on the same ones.
    let (_, out) = h.run(program_names::FROM_POD, &syn.build());
    assert_eq!(parsed(&out).dst, backend);
    let mut syn_ack = Frame::tcp((backend, 8080), CLIENT);
    syn_ack.tcp_flags = 0x12;
    let (_, out) = h.run(program_names::FROM_POD, &syn_ack.build());
    let p = parsed(&out);
    assert_eq!(
        (p.src, p.src_port),
        (VIP, 80),
        "the SYN-ACK of the new connection, past the old one's expired entry"
    );
}

#[test]
fn a_tunnelled_connection_moves_to_the_main_table_on_the_clients_ack() {
    let mut h = Harness::new(vec![web(three_backends())]);
    let backend = Ipv4Addr::new(198, 18, 1, 3);
    let syn = Frame::tcp(CLIENT, (EXTERNAL_IP, 80));
    assert_eq!(
        h.run(program_names::EXTERNAL, &tunnelled(&syn, (backend, 8080)))
            .0,
        XDP_PASS
    );
    let mut syn_ack = Frame::tcp((backend, 8080), CLIENT);
    syn_ack.tcp_flags = 0x12;
    let (_, out) = h.run(program_names::FROM_POD, &syn_ack.build());
    assert_eq!(
        parsed(&out).src,
        EXTERNAL_IP,
        "the SYN-ACK of a half-open connection"
    );
    let mut ack = syn.clone();
    ack.tcp_flags = 0x10;
    h.run(program_names::EXTERNAL, &tunnelled(&ack, (backend, 8080)));
    // Data from the backend (no SYN, no RST) finds its entry in the main table only.
    let data = tcp_established((backend, 8080), CLIENT);
    let (_, out, counted) =
        h.run_counting(program_names::FROM_POD, &data, Reason::ReverseTranslated);
    assert!(counted);
    assert_eq!(parsed(&out).src, EXTERNAL_IP);
}

/// This node's pod range (its backends are there), the peer's tunnelled, and a third
/// node's on the shared link.
fn pod_ranges(h: &mut Harness) {
    let range = |node: Ipv4Addr, flags| PodRange {
        node_addr: u32::from(node).to_be(),
        flags,
    };
    let ranges = [
        ((Ipv4Addr::new(198, 18, 1, 0), 24), range(NODE_ADDR, 0)),
        (
            (Ipv4Addr::new(198, 18, 2, 0), 24),
            range(PEER_NODE_ADDR, POD_RANGE_TUNNEL),
        ),
        (
            (Ipv4Addr::new(198, 18, 3, 0), 24),
            range(Ipv4Addr::new(198, 18, 0, 3), 0),
        ),
    ];
    h.datapath
        .add_pod_ranges(&ranges.into_iter().collect())
        .expect("pod ranges");
}

/// `inner` inside IPIP from `src` to `dst`, as the tunnel puts it on the wire.
fn in_ipip(src: Ipv4Addr, dst: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    let outer = packet::ipv4_packet(src, dst, IPIP, &[], 0x4000, inner);
    packet::ethernet([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 9], 0x0800, &outer)
}

#[test]
fn packets_for_a_tunnelled_pod_range_leave_inside_ipip_to_its_node() {
    let mut h = Harness::new(vec![web(three_backends())]);
    pod_ranges(&mut h);
    let pod = (Ipv4Addr::new(198, 18, 1, 5), 40_000);
    let to_peer_pod = Frame::tcp(pod, (Ipv4Addr::new(198, 18, 2, 7), 8080));
    let (verdict, out, counted) = h.run_counting(
        program_names::TUNNEL_ENCAP,
        &to_peer_pod.build(),
        Reason::PodEncapsulated,
    );
    assert_eq!((verdict, counted), (TC_ACT_OK, true));
    assert_eq!(
        out[..14],
        to_peer_pod.build()[..14],
        "the Ethernet header stays"
    );
    let outer = parsed(&out);
    assert_eq!(
        (outer.src, outer.dst, outer.proto),
        (NODE_ADDR, PEER_NODE_ADDR, IPIP)
    );
    assert!(outer.ip_checksum_ok);
    assert_eq!(
        &out[34..],
        to_peer_pod.ipv4(),
        "the inner packet is untouched"
    );

    // Pods of a node on the shared link, other addresses and non-IP frames: untouched
    // and uncounted.
    for frame in [
        Frame::tcp(pod, (Ipv4Addr::new(198, 18, 3, 7), 8080)).build(),
        Frame::tcp(pod, (Ipv4Addr::new(192, 0, 2, 1), 80)).build(),
        Frame::tcp(pod, (PEER_NODE_ADDR, 80)).build(),
    ] {
        let (verdict, out, counted) =
            h.run_counting(program_names::TUNNEL_ENCAP, &frame, Reason::PodEncapsulated);
        assert_eq!((verdict, out, counted), (TC_ACT_OK, frame, false));
    }
}

#[test]
fn ipip_from_a_node_is_unwrapped_only_for_its_pods_traffic_to_pods_here() {
    let mut h = Harness::new(vec![web(three_backends())]);
    pod_ranges(&mut h);
    let here = (Ipv4Addr::new(198, 18, 1, 3), 8080);
    let peer_pod = (Ipv4Addr::new(198, 18, 2, 7), 40_000);
    let inner = Frame::tcp(peer_pod, here);
    let frame = in_ipip(PEER_NODE_ADDR, NODE_ADDR, &inner.ipv4());
    let (verdict, out, counted) =
        h.run_counting(program_names::TUNNEL_DECAP, &frame, Reason::PodDecapsulated);
    assert_eq!((verdict, counted), (TC_ACT_OK, true));
    let unwrapped: Vec<u8> = frame[..14].iter().chain(&inner.ipv4()).copied().collect();
    assert_eq!(
        out, unwrapped,
        "the outer header is gone, the inner packet untouched"
    );
    // The peer node itself (not one of its pods) may reach pods here too.
    let from_node = Frame::tcp((PEER_NODE_ADDR, 40_000), here);
    let (verdict, _, counted) = h.run_counting(
        program_names::TUNNEL_DECAP,
        &in_ipip(PEER_NODE_ADDR, NODE_ADDR, &from_node.ipv4()),
        Reason::PodDecapsulated,
    );
    assert_eq!((verdict, counted), (TC_ACT_OK, true));
    // XDP leaves such packets to this program.
    let (verdict, out, counted) =
        h.run_counting(program_names::EXTERNAL, &frame, Reason::PassNodeTunnel);
    assert_eq!((verdict, out, counted), (XDP_PASS, frame.clone(), true));

    for (frame, what) in [
        (
            in_ipip(Ipv4Addr::new(198, 18, 99, 9), NODE_ADDR, &inner.ipv4()),
            "from an address that is no node",
        ),
        (
            in_ipip(PEER_NODE_ADDR, NODE_ADDR, &Frame::tcp(CLIENT, here).ipv4()),
            "a source that is not the sender's pod (an outside client)",
        ),
        (
            in_ipip(
                PEER_NODE_ADDR,
                NODE_ADDR,
                &Frame::tcp((Ipv4Addr::new(198, 18, 3, 7), 40_000), here).ipv4(),
            ),
            "a pod of another node than the sender",
        ),
        (
            in_ipip(
                PEER_NODE_ADDR,
                NODE_ADDR,
                &Frame::tcp(peer_pod, (Ipv4Addr::new(192, 0, 2, 1), 80)).ipv4(),
            ),
            "a destination that is no pod here (a relay)",
        ),
        (
            in_ipip(
                PEER_NODE_ADDR,
                NODE_ADDR,
                &Frame::tcp(peer_pod, (Ipv4Addr::new(198, 18, 3, 7), 80)).ipv4(),
            ),
            "a pod of another node",
        ),
    ] {
        let (verdict, _, counted) = h.run_counting(
            program_names::TUNNEL_DECAP,
            &frame,
            Reason::DropTunnelSource,
        );
        assert_eq!((verdict, counted), (TC_ACT_SHOT, true), "{what}");
    }
    // IPIP that is not addressed to this node (north-south, handled by XDP) and plain
    // packets are none of its business.
    for frame in [
        tunnelled(&Frame::tcp(CLIENT, (EXTERNAL_IP, 80)), (here.0, 8080)),
        inner.build(),
    ] {
        let (verdict, out, counted) = h.run_counting(
            program_names::TUNNEL_DECAP,
            &frame,
            Reason::DropTunnelSource,
        );
        assert_eq!((verdict, out, counted), (TC_ACT_OK, frame, false));
    }
}

#[test]
fn north_south_wrapped_once_more_to_cross_the_underlay_is_delivered_to_the_backend() {
    let mut h = Harness::new(vec![web(three_backends())]);
    pod_ranges(&mut h);
    // The peer, on another link, wrapped its IPIP to a backend here in one more IPIP
    // addressed to this node: the underlay routes node addresses only.
    let backend = Ipv4Addr::new(198, 18, 1, 3);
    let once = tunnelled(&Frame::tcp(CLIENT, (EXTERNAL_IP, 80)), (backend, 8080));
    let twice = in_ipip(PEER_NODE_ADDR, NODE_ADDR, &once[14..]);
    let (verdict, out, counted) =
        h.run_counting(program_names::EXTERNAL, &twice, Reason::TunnelDelivered);
    assert_eq!((verdict, counted), (XDP_PASS, true));
    assert_eq!(out.len(), twice.len() - 40, "both outer headers removed");
    let p = parsed(&out);
    assert_eq!((p.src, p.src_port), CLIENT);
    assert_eq!((p.dst, p.dst_port), (backend, 8080));
    assert!(p.ip_checksum_ok && p.l4_checksum_ok);
    // Both headers must come from the same node; otherwise the packet is left to the
    // tunnel's program, which drops what is not pod traffic from the sender.
    let mut forged = twice.clone();
    forged[14 + 20 + 12..14 + 20 + 16].copy_from_slice(&[198, 18, 0, 3]);
    let (verdict, out, counted) =
        h.run_counting(program_names::EXTERNAL, &forged, Reason::PassNodeTunnel);
    assert_eq!((verdict, out, counted), (XDP_PASS, forged.clone(), true));
    let (verdict, _, counted) = h.run_counting(
        program_names::TUNNEL_DECAP,
        &forged,
        Reason::DropTunnelSource,
    );
    assert_eq!((verdict, counted), (TC_ACT_SHOT, true));
}

/// An address outside the cluster.
const OUTSIDE: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 18, 100, 1), 80);
/// A range the agent is told not to masquerade to (a service range, say).
const NOT_MASQUERADED: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 200, 0), 24);

/// The pod ranges of [`pod_ranges`], masquerade on, [`NOT_MASQUERADED`] excluded.
fn masquerading() -> Harness {
    let mut h = Harness::new(vec![web(three_backends())]);
    pod_ranges(&mut h);
    h.datapath
        .masquerade(&[NOT_MASQUERADED])
        .expect("masquerade");
    h
}

/// Runs the underlay's egress program on a pod's packet that must be masqueraded, and
/// returns the node port it left with.
fn masqueraded(h: &mut Harness, frame: &[u8]) -> u16 {
    let (verdict, out, counted) =
        h.run_counting(program_names::TUNNEL_ENCAP, frame, Reason::Masqueraded);
    assert_eq!((verdict, counted), (TC_ACT_OK, true));
    let sent = parsed(&out);
    let original = parsed(frame);
    assert_eq!(
        (sent.src, sent.dst, sent.dst_port),
        (NODE_ADDR, original.dst, original.dst_port)
    );
    assert!(sent.ip_checksum_ok && sent.l4_checksum_ok);
    assert!(
        sent.src_port >= berth_ebpf_common::MASQUERADE_PORT_MIN,
        "node port {} is in the node's own ephemeral range",
        sent.src_port
    );
    sent.src_port
}

#[test]
fn pod_traffic_leaving_the_cluster_takes_the_node_address_and_replies_come_back() {
    let mut h = masquerading();
    let pod = (Ipv4Addr::new(198, 18, 1, 5), 40_000);
    let port = masqueraded(&mut h, &Frame::tcp(pod, OUTSIDE).build());
    // The connection's next packets keep their node port.
    assert_eq!(masqueraded(&mut h, &tcp_established(pod, OUTSIDE)), port);
    // Another pod's flow to the same destination from the same port gets another one.
    let other_pod = (Ipv4Addr::new(198, 18, 1, 6), 40_000);
    let other_port = masqueraded(&mut h, &Frame::tcp(other_pod, OUTSIDE).build());
    assert_ne!(other_port, port, "two pods' flows share a node port");

    // Replies to each node port reach their own pod.
    for (node_port, (addr, pod_port)) in [(port, pod), (other_port, other_pod)] {
        let mut reply = Frame::tcp(OUTSIDE, (NODE_ADDR, node_port));
        reply.tcp_flags = 0x12;
        let (verdict, out, counted) = h.run_counting(
            program_names::TUNNEL_DECAP,
            &reply.build(),
            Reason::Unmasqueraded,
        );
        assert_eq!((verdict, counted), (TC_ACT_OK, true));
        let back = parsed(&out);
        assert_eq!(
            (back.src, back.src_port, back.dst, back.dst_port),
            (OUTSIDE.0, OUTSIDE.1, addr, pod_port)
        );
        assert!(back.ip_checksum_ok && back.l4_checksum_ok);
    }

    // UDP too, its checksum kept valid.
    let dns = (Ipv4Addr::new(198, 18, 100, 53), 53);
    let udp_port = masqueraded(&mut h, &Frame::udp(pod, dns).build());
    let (verdict, out, counted) = h.run_counting(
        program_names::TUNNEL_DECAP,
        &Frame::udp(dns, (NODE_ADDR, udp_port)).build(),
        Reason::Unmasqueraded,
    );
    assert_eq!((verdict, counted), (TC_ACT_OK, true));
    assert_eq!(parsed(&out).dst, pod.0);

    // Packets to the node's address that answer no masqueraded flow (another source,
    // a port nobody holds, the node's own connections) pass untouched and uncounted.
    let unheld = (berth_ebpf_common::MASQUERADE_PORT_MIN..)
        .find(|candidate| ![port, other_port].contains(candidate))
        .expect("a free port");
    for frame in [
        tcp_established((Ipv4Addr::new(198, 18, 100, 2), 80), (NODE_ADDR, port)),
        tcp_established(OUTSIDE, (NODE_ADDR, unheld)),
        tcp_established(OUTSIDE, (NODE_ADDR, 40_000)),
    ] {
        let (verdict, out, counted) =
            h.run_counting(program_names::TUNNEL_DECAP, &frame, Reason::Unmasqueraded);
        assert_eq!((verdict, out, counted), (TC_ACT_OK, frame, false));
    }
}

#[test]
fn pod_ranges_and_excluded_ranges_are_not_masqueraded() {
    let mut h = masquerading();
    let pod = (Ipv4Addr::new(198, 18, 1, 5), 40_000);
    for frame in [
        // A pod on this node, a node's pod on the shared link, an excluded range.
        Frame::tcp(pod, (Ipv4Addr::new(198, 18, 1, 9), 8080)).build(),
        Frame::tcp(pod, (Ipv4Addr::new(198, 18, 3, 7), 8080)).build(),
        Frame::tcp(pod, (Ipv4Addr::new(198, 18, 200, 10), 80)).build(),
        // Not this node's pods: the node itself, another node's pod routed through it.
        Frame::tcp((NODE_ADDR, 40_000), OUTSIDE).build(),
        Frame::tcp((Ipv4Addr::new(198, 18, 3, 7), 40_000), OUTSIDE).build(),
    ] {
        let (verdict, out, counted) =
            h.run_counting(program_names::TUNNEL_ENCAP, &frame, Reason::Masqueraded);
        assert_eq!((verdict, out, counted), (TC_ACT_OK, frame, false));
    }
    // A tunnelled pod range: encapsulated, the inner source still the pod's.
    let to_peer_pod = Frame::tcp(pod, (Ipv4Addr::new(198, 18, 2, 7), 8080));
    let (verdict, out, counted) = h.run_counting(
        program_names::TUNNEL_ENCAP,
        &to_peer_pod.build(),
        Reason::PodEncapsulated,
    );
    assert_eq!((verdict, counted), (TC_ACT_OK, true));
    assert_eq!(
        &out[34..],
        to_peer_pod.ipv4(),
        "the inner packet is untouched"
    );

    // Taking a range off the list masquerades it from then on.
    h.datapath.masquerade(&[]).expect("masquerade");
    masqueraded(
        &mut h,
        &Frame::tcp(pod, (Ipv4Addr::new(198, 18, 200, 10), 80)).build(),
    );
}

#[test]
fn masqueraded_flows_expire_and_are_collected() {
    let mut h = masquerading();
    let pod = (Ipv4Addr::new(198, 18, 1, 5), 40_000);
    let port = masqueraded(&mut h, &Frame::udp(pod, OUTSIDE).build());
    let mut sweeper = h.datapath.conntrack_sweeper().expect("sweeper");
    let now = monotonic_secs();
    assert_eq!(sweeper.sweep(now + 2).expect("sweep"), 0);
    assert_eq!(
        sweeper.sweep(now + CT_TIMEOUT_UDP + 2).expect("sweep"),
        2,
        "the flow's outgoing and reply entries"
    );
    // A reply after that finds nothing to translate.
    let reply = Frame::udp(OUTSIDE, (NODE_ADDR, port)).build();
    let (verdict, out, counted) =
        h.run_counting(program_names::TUNNEL_DECAP, &reply, Reason::Unmasqueraded);
    assert_eq!((verdict, out, counted), (TC_ACT_OK, reply, false));
}

/// A datapath whose one Service has the pod as its only backend (its interface
/// registered), and the hairpin address.
fn pod_behind_its_own_service() -> (Harness, Ipv4Addr) {
    let itself = BackendSpec {
        addr: POD,
        port: 8080,
        node_id: NODE_ID,
        state: BackendState::Active,
    };
    let mut h = Harness::new(vec![web(vec![itself])]);
    h.datapath
        .register_pod_interface("lo", POD)
        .expect("registering the pod interface");
    let hairpin = Ipv4Addr::from(u32::from_be(berth_ebpf_common::HAIRPIN_ADDR));
    (h, hairpin)
}

#[test]
fn a_pod_reaches_itself_through_its_service_and_the_reply_comes_back_translated() {
    let (mut h, hairpin) = pod_behind_its_own_service();
    assert_eq!(hairpin, Ipv4Addr::new(169, 254, 42, 1));
    let client = (POD, 40_000);
    let (verdict, out, counted) = h.run_counting(
        program_names::FROM_POD,
        &Frame::tcp(client, (VIP, 80)).build(),
        Reason::Translated,
    );
    assert!(counted && verdict != TC_ACT_SHOT);
    let sent = parsed(&out);
    assert_eq!(
        (sent.src, sent.src_port, sent.dst, sent.dst_port),
        (hairpin, 40_000, POD, 8080),
        "from its own address the pod would answer itself inside its namespace"
    );
    assert!(sent.ip_checksum_ok && sent.l4_checksum_ok);

    // The pod's answer goes out through its veth and comes back as the Service's.
    let mut syn_ack = Frame::tcp((POD, 8080), (hairpin, 40_000));
    syn_ack.tcp_flags = 0x12;
    let (verdict, out, counted) = h.run_counting(
        program_names::FROM_POD,
        &syn_ack.build(),
        Reason::ReverseTranslated,
    );
    assert!(counted && verdict != TC_ACT_SHOT);
    let back = parsed(&out);
    assert_eq!(
        (back.src, back.src_port, back.dst, back.dst_port),
        (VIP, 80, POD, 40_000)
    );
    assert!(back.ip_checksum_ok && back.l4_checksum_ok);

    // The rest of the connection takes the same way, tracked like any other.
    let (_, out) = h.run(program_names::FROM_POD, &tcp_established(client, (VIP, 80)));
    let sent = parsed(&out);
    assert_eq!((sent.src, sent.dst, sent.dst_port), (hairpin, POD, 8080));
    let (_, out) = h.run(
        program_names::FROM_POD,
        &tcp_established((POD, 8080), (hairpin, 40_000)),
    );
    assert_eq!(parsed(&out).src, VIP);
    assert_eq!(h.datapath.tracked_connections().expect("conntrack"), 1);
}

#[test]
fn a_packet_from_outside_with_a_pods_address_leaves_its_hairpin_replies_alone() {
    // Found by datapath_properties.rs: XDP filed the replies of a flow whose client is
    // the chosen backend under the hairpin address, though it keeps the source.
    let (mut h, hairpin) = pod_behind_its_own_service();
    let client = (POD, 40_000);
    let (_, out) = h.run(
        program_names::FROM_POD,
        &Frame::tcp(client, (VIP, 80)).build(),
    );
    assert_eq!(parsed(&out).src, hairpin, "the pod reaches itself");
    // The same address and port from outside, to the external frontend (spoofed).
    let (verdict, out) = h.run(
        program_names::EXTERNAL,
        &Frame::tcp(client, (EXTERNAL_IP, 80)).build(),
    );
    assert_eq!((verdict, parsed(&out).dst), (XDP_PASS, POD));
    // The pod's answer to its own connection still comes from the ClusterIP.
    let mut syn_ack = Frame::tcp((POD, 8080), (hairpin, 40_000));
    syn_ack.tcp_flags = 0x12;
    let (_, out) = h.run(program_names::FROM_POD, &syn_ack.build());
    let back = parsed(&out);
    assert_eq!(
        (back.src, back.src_port, back.dst, back.dst_port),
        (VIP, 80, POD, 40_000)
    );
}

#[test]
fn masqueraded_flows_keep_their_translation_across_an_agent_restart() {
    let mut h = masquerading();
    let pod = (Ipv4Addr::new(198, 18, 1, 5), 40_000);
    let port = masqueraded(&mut h, &Frame::tcp(pod, OUTSIDE).build());
    // A new agent opens the pinned maps: until it configures the masquerade itself, the
    // pinned configuration keeps it on, so the flow's packets stay translated.
    let options = h.datapath.options().clone();
    h.datapath = Datapath::open(options).expect("reopening the datapath");
    assert_eq!(masqueraded(&mut h, &tcp_established(pod, OUTSIDE)), port);
    let reply = tcp_established(OUTSIDE, (NODE_ADDR, port));
    let (verdict, out, counted) =
        h.run_counting(program_names::TUNNEL_DECAP, &reply, Reason::Unmasqueraded);
    assert_eq!((verdict, counted), (TC_ACT_OK, true));
    assert_eq!(parsed(&out).dst, pod.0);
    // The excluded range was read back too: configuring the same list changes nothing.
    h.datapath
        .masquerade(&[NOT_MASQUERADED])
        .expect("masquerade");
    let excluded = Frame::tcp(pod, (Ipv4Addr::new(198, 18, 200, 10), 80)).build();
    let (_, out, counted) =
        h.run_counting(program_names::TUNNEL_ENCAP, &excluded, Reason::Masqueraded);
    assert_eq!((out, counted), (excluded, false));
}
