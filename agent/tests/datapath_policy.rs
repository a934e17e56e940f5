//! NetworkPolicy in the datapath, run with BPF_PROG_TEST_RUN: policies compiled by the
//! agent (`berth_agent::policy`) from typed pods, namespaces and policies, written with
//! `PolicyMaps`, and packets through `berth_to_pod` (every delivery into a pod through
//! the node's stack) and `berth_from_pod` (flows a pod opens, its egress policy, service
//! translation). Needs root and bpffs.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use berth_agent::{
    datapath::{
        Algorithm, BackendSpec, BackendState, Frontend, PolicyMaps, Protocol, Service, policy_drop,
    },
    policy::{Identities, PolicyInput, PolicyPlan, compile},
};
use berth_api::{
    Source,
    core::{Namespace, Pod},
    decode_typed,
    networking::NetworkPolicy,
};
use berth_ebpf_common::{
    CT_POLICY_IN, CT_POLICY_IN_PEER, CtEntry, FlowKey, POLICY_EGRESS, Reason, map_names,
    program_names,
};
use berth_testkit::{
    PinDir,
    netns::NetNs,
    packet::{self, Frame},
    programs, unique_name,
};
use common::*;

const NODE: &str = "policy-node";
/// Namespace a: the server on this node, isolated by the policies below.
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
/// Namespace b, on another node: role=client, and a pod without the role.
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 20);
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 30);
/// A backend on another node, behind `REMOTE_VIP`.
const REMOTE_BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 40);
/// ClusterIPs: the server's, and the remote backend's.
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 20);
const REMOTE_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 21);
/// The server's LoadBalancer address (north-south, `berth_external`).
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 20);
/// Outside the cluster: in the ipBlock, in its exception, and elsewhere.
const IN_BLOCK: Ipv4Addr = Ipv4Addr::new(198, 19, 140, 1);
const IN_EXCEPTION: Ipv4Addr = Ipv4Addr::new(198, 19, 130, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 19, 100, 7);
/// Namespace c, on this node: isolated both ways, with the egress rules below.
const EGRESS_POD: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 50);

/// A running pod with a container port `admin` (9090/TCP); `labels` a YAML map.
fn pod(namespace: &str, ip: Ipv4Addr, node: &str, labels: &str) -> Pod {
    let yaml = format!(
        "metadata: {{name: pod-{ip}, namespace: {namespace}, labels: {labels}}}\nspec: {{nodeName: {node}, containers: [{{name: web, image: echo, ports: [{{name: admin, containerPort: 9090}}]}}]}}\nstatus: {{phase: Running, podIP: {ip}}}"
    );
    decode_typed(Source::Yaml(&yaml)).expect("a valid pod")
}

fn namespace(name: &str, team: &str) -> Namespace {
    let yaml = format!("metadata: {{name: {name}, labels: {{team: {team}}}}}");
    decode_typed(Source::Yaml(&yaml)).expect("a valid namespace")
}

fn policy(yaml: &str) -> NetworkPolicy {
    decode_typed(Source::Yaml(yaml)).expect("a valid policy")
}

fn head(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n"
    )
}

/// Namespace a: default-deny ingress; b's role=client pods on TCP 80; the named port
/// `admin` from the namespace's own pods; a range from outside, but not its exception.
/// Namespace c: default-deny both ways (`lock`), and `rules`: in from b's role=client
/// pods on 8080; out to them on TCP 80, to a's server on TCP 80, and to a range but not
/// its exception.
fn policies() -> Vec<NetworkPolicy> {
    let head = |name: &str| head("a", name);
    vec![
        policy(&format!("{}  podSelector: {{}}\n", head("deny"))),
        policy(&format!(
            "{}  podSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  - from:\n    - namespaceSelector: {{matchLabels: {{team: b}}}}\n      podSelector: {{matchLabels: {{role: client}}}}\n    ports: [{{protocol: TCP, port: 80}}]\n  - from: [{{podSelector: {{}}}}]\n    ports: [{{port: admin}}]\n  - from: [{{ipBlock: {{cidr: 198.19.128.0/17, except: [198.19.130.0/24]}}}}]\n",
            head("web")
        )),
        policy(&format!(
            "{}  podSelector: {{}}\n  policyTypes: [Ingress, Egress]\n",
            self::head("c", "lock")
        )),
        policy(&format!(
            "{}  podSelector: {{}}\n  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{team: b}}}}, podSelector: {{matchLabels: {{role: client}}}}}}]\n    ports: [{{port: 8080}}]\n  egress:\n  - to: [{{namespaceSelector: {{matchLabels: {{team: b}}}}, podSelector: {{matchLabels: {{role: client}}}}}}]\n    ports: [{{protocol: TCP, port: 80}}]\n  - to: [{{namespaceSelector: {{matchLabels: {{team: a}}}}, podSelector: {{matchLabels: {{app: server}}}}}}]\n    ports: [{{port: 80}}]\n  - to: [{{ipBlock: {{cidr: 198.19.128.0/17, except: [198.19.130.0/24]}}}}]\n",
            self::head("c", "rules")
        )),
    ]
}

fn plan(policies: &[NetworkPolicy]) -> PolicyPlan {
    let pods = [
        pod("a", SERVER, NODE, "{app: server}"),
        pod("b", CLIENT, "elsewhere", "{role: client}"),
        pod("b", OTHER, "elsewhere", "{role: other}"),
        pod("b", REMOTE_BACKEND, "elsewhere", "{app: api}"),
        pod("c", EGRESS_POD, NODE, "{app: egress}"),
    ];
    let namespaces = [
        namespace("a", "a"),
        namespace("b", "b"),
        namespace("c", "c"),
    ];
    compile(
        &PolicyInput {
            node_name: NODE,
            host_addrs: &[NODE_ADDR],
            pods: &pods,
            namespaces: &namespaces,
            policies,
        },
        &mut Identities::default(),
    )
}

/// The counter id `plan` gives the policy `name`.
fn counter_id(plan: &PolicyPlan, name: &str) -> u32 {
    plan.policies
        .iter()
        .find(|(_, (_, policy))| policy == name)
        .map(|(id, _)| *id)
        .unwrap_or_else(|| panic!("{name} has a counter id"))
}

fn service(name: &str, vip: Ipv4Addr, backend: Ipv4Addr, port: u16, node_id: u32) -> Service {
    let frontend = |addr, external| Frontend {
        addr,
        port: 80,
        protocol: Protocol::Tcp,
        external,
    };
    let mut frontends = vec![frontend(vip, false)];
    if vip == VIP {
        frontends.push(frontend(EXTERNAL_IP, true));
    }
    Service {
        name: name.into(),
        frontends,
        backends: vec![BackendSpec {
            addr: backend,
            port,
            node_id,
            state: BackendState::Active,
        }],
        algorithm: Algorithm::Maglev,
        affinity_timeout: None,
    }
}

struct Harness {
    datapath: berth_agent::datapath::Datapath,
    maps: PolicyMaps,
    pins: PinDir,
}

impl Harness {
    fn new() -> Self {
        let pins = PinDir::new("policy");
        let datapath = common::open(
            &pins,
            vec![
                service("a/web:80", VIP, SERVER, 80, NODE_ID),
                service("b/api:80", REMOTE_VIP, REMOTE_BACKEND, 8080, 2),
            ],
        );
        let mut maps = datapath.policy_maps().expect("policy maps");
        maps.apply(&plan(&policies()))
            .expect("writing the policies");
        Harness {
            datapath,
            maps,
            pins,
        }
    }

    /// Runs `frame` through `program`: its verdict and output, and whether the packet
    /// was counted as a policy drop.
    fn run(&mut self, program: &str, frame: &Frame) -> (u32, Vec<u8>, bool) {
        self.run_bytes(program, &frame.build())
    }

    fn run_bytes(&mut self, program: &str, frame: &[u8]) -> (u32, Vec<u8>, bool) {
        let drops = |datapath: &berth_agent::datapath::Datapath| {
            counted(datapath, Reason::DropPolicyIngress)
                + counted(datapath, Reason::DropPolicyEgress)
        };
        let before = drops(&self.datapath);
        let (verdict, out) = programs::test_run(self.datapath.ebpf_mut(), program, frame);
        let dropped = drops(&self.datapath) == before + 1;
        assert_eq!(
            verdict == TC_ACT_SHOT,
            dropped,
            "a shot packet is a policy drop here"
        );
        (verdict, out, dropped)
    }

    /// Checks that a translated `frame` is let into its pod (or dropped for the policy)
    /// as the node's stack delivers it.
    fn assert_delivered(&mut self, frame: &[u8], allowed: bool) {
        let (verdict, _, dropped) = self.run_bytes(program_names::TO_POD, frame);
        let seen = packet::parse(frame).expect("an IPv4 frame");
        assert_eq!(
            (verdict == TC_ACT_OK, dropped),
            (allowed, !allowed),
            "{}:{} -> {}:{}",
            seen.src,
            seen.src_port,
            seen.dst,
            seen.dst_port
        );
    }

    /// Whether `frame` is let into its destination pod through the node's stack.
    fn enters(&mut self, frame: &Frame) -> bool {
        self.run(program_names::TO_POD, frame).0 == TC_ACT_OK
    }

    /// The policy conntrack's keys of flows into `pod`: (peer, peer's port, pod's port,
    /// direction).
    fn entries_into(&self, pod: Ipv4Addr) -> Vec<(Ipv4Addr, u16, u16, u8)> {
        let data = MapData::from_pin(self.pins.path().join(map_names::POLICY_CONNTRACK))
            .expect("pinned policy conntrack");
        let table: BpfHashMap<_, FlowKey, CtEntry> =
            BpfHashMap::try_from(Map::LruHashMap(data)).expect("policy conntrack");
        let mut keys: Vec<_> = table
            .keys()
            .map(|key| key.expect("key"))
            .filter(|key| key.dst_addr == u32::from(pod).to_be())
            .map(|key| {
                (
                    Ipv4Addr::from(u32::from_be(key.src_addr)),
                    u16::from_be(key.src_port),
                    u16::from_be(key.dst_port),
                    key.direction,
                )
            })
            .collect();
        keys.sort();
        keys
    }

    /// Whether `frame` is let out of its source pod.
    fn leaves(&mut self, frame: &Frame) -> bool {
        self.run(program_names::FROM_POD, frame).0 == TC_ACT_OK
    }
}

fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Frame {
    Frame::tcp(src, dst)
}

#[test]
fn an_allowed_peer_enters_on_its_port_only() {
    let mut h = Harness::new();
    assert!(h.enters(&tcp((CLIENT, 40_000), (SERVER, 80))));
    assert!(
        !h.enters(&tcp((CLIENT, 40_001), (SERVER, 81))),
        "port 80 only"
    );
    assert!(
        !h.enters(&Frame::udp((CLIENT, 40_002), (SERVER, 80))),
        "TCP only"
    );
    assert!(
        !h.enters(&tcp((OTHER, 40_000), (SERVER, 80))),
        "not role=client"
    );
    // Through the named port: the server's `admin` (9090) from a's own pods only.
    assert!(!h.enters(&tcp((CLIENT, 40_003), (SERVER, 9090))));
    // The node itself (kubelet's probes) is always let in.
    assert!(h.enters(&tcp((NODE_ADDR, 50_000), (SERVER, 8443))));
    // A pod no policy selects is not isolated.
    assert!(h.enters(&tcp((SERVER, 40_000), (OTHER, 22))));
}

#[test]
fn ip_blocks_let_their_range_in_but_not_its_exception() {
    let mut h = Harness::new();
    assert!(h.enters(&tcp((IN_BLOCK, 40_000), (SERVER, 22))));
    assert!(!h.enters(&tcp((IN_EXCEPTION, 40_000), (SERVER, 22))));
    assert!(!h.enters(&tcp((OUTSIDE, 40_000), (SERVER, 22))));
}

#[test]
fn replies_of_a_flow_the_pod_opened_pass() {
    let mut h = Harness::new();
    let (verdict, _, _) = h.run(
        program_names::FROM_POD,
        &tcp((SERVER, 45_000), (OUTSIDE, 443)),
    );
    assert_eq!(verdict, TC_ACT_OK);
    let mut syn_ack = tcp((OUTSIDE, 443), (SERVER, 45_000));
    syn_ack.tcp_flags = 0x12;
    assert!(h.enters(&syn_ack));
    // The same peer to another port of the pod is a new flow, and denied.
    assert!(!h.enters(&tcp((OUTSIDE, 443), (SERVER, 45_001))));
}

#[test]
fn through_a_service_the_chosen_backend_decides() {
    let mut h = Harness::new();
    for (client, allowed) in [(CLIENT, true), (OTHER, false)] {
        let (verdict, out, _) = h.run(program_names::FROM_POD, &tcp((client, 41_000), (VIP, 80)));
        assert_eq!(verdict, TC_ACT_OK);
        let translated = packet::parse(&out).expect("an IPv4 frame");
        assert_eq!((translated.dst, translated.dst_port), (SERVER, 80));
        // As the node's stack delivers it to the server's veth.
        h.assert_delivered(&out, allowed);
    }
}

#[test]
fn north_south_the_local_backend_decides_after_translation() {
    let mut h = Harness::new();
    for (client, allowed) in [(IN_BLOCK, true), (OUTSIDE, false)] {
        let frame = tcp((client, 43_000), (EXTERNAL_IP, 80)).build();
        let (verdict, out) =
            programs::test_run(h.datapath.ebpf_mut(), program_names::EXTERNAL, &frame);
        assert_eq!(verdict, XDP_PASS, "to the stack, translated");
        assert_eq!(packet::parse(&out).expect("an IPv4 frame").dst, SERVER);
        h.assert_delivered(&out, allowed);
    }
}

#[test]
fn replies_through_a_service_pass_after_their_translation_back() {
    let mut h = Harness::new();
    let (verdict, out, _) = h.run(
        program_names::FROM_POD,
        &tcp((SERVER, 46_000), (REMOTE_VIP, 80)),
    );
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        packet::parse(&out).expect("an IPv4 frame").dst,
        REMOTE_BACKEND
    );
    let mut reply = tcp((REMOTE_BACKEND, 8080), (SERVER, 46_000));
    reply.tcp_flags = 0x12;
    let (verdict, out, _) = h.run(program_names::TO_POD, &reply);
    assert_eq!(verdict, TC_ACT_OK);
    let restored = packet::parse(&out).expect("an IPv4 frame");
    assert_eq!((restored.src, restored.src_port), (REMOTE_VIP, 80));
    // The backend opening a flow of its own to the server is not a reply.
    assert!(!h.enters(&tcp((REMOTE_BACKEND, 8080), (SERVER, 46_001))));
}

#[test]
fn removing_the_policies_lifts_isolation_and_a_new_agent_cleans_up() {
    let mut h = Harness::new();
    let denied = tcp((OTHER, 42_000), (SERVER, 80));
    assert!(!h.enters(&denied));
    // Only the deny policy left: the allow rules go, the client is denied too.
    h.maps.apply(&plan(&policies()[..1])).expect("apply");
    assert!(!h.enters(&tcp((CLIENT, 42_001), (SERVER, 80))));
    // A restarted agent finds the maps as they are and writes what it computes.
    let mut reopened = h.datapath.policy_maps().expect("policy maps");
    assert_eq!(reopened.policy_entries(), 0);
    reopened.apply(&plan(&[])).expect("apply");
    assert!(h.enters(&denied));
    assert!(h.enters(&tcp((CLIENT, 42_001), (SERVER, 80))));
}

fn ack(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Frame {
    let mut frame = tcp(src, dst);
    frame.tcp_flags = 0x10;
    frame
}

#[test]
fn egress_lets_out_what_the_rules_allow_only() {
    let mut h = Harness::new();
    assert!(h.leaves(&tcp((EGRESS_POD, 40_000), (CLIENT, 80))));
    assert!(
        !h.leaves(&tcp((EGRESS_POD, 40_001), (CLIENT, 81))),
        "port 80 only"
    );
    assert!(
        !h.leaves(&Frame::udp((EGRESS_POD, 40_002), (CLIENT, 80))),
        "TCP only"
    );
    assert!(
        !h.leaves(&tcp((EGRESS_POD, 40_003), (OTHER, 80))),
        "not role=client"
    );
    // The node itself is always reachable.
    assert!(h.leaves(&tcp((EGRESS_POD, 40_004), (NODE_ADDR, 10_250))));
    // A pod isolated for ingress only reaches anything.
    assert!(h.leaves(&tcp((SERVER, 40_005), (OTHER, 22))));
}

#[test]
fn egress_ip_blocks_let_their_range_out_but_not_its_exception() {
    let mut h = Harness::new();
    assert!(h.leaves(&tcp((EGRESS_POD, 40_000), (IN_BLOCK, 443))));
    assert!(h.leaves(&Frame::udp((EGRESS_POD, 40_000), (IN_BLOCK, 53))));
    assert!(!h.leaves(&tcp((EGRESS_POD, 40_001), (IN_EXCEPTION, 443))));
    assert!(!h.leaves(&tcp((EGRESS_POD, 40_002), (OUTSIDE, 443))));
}

#[test]
fn replies_pass_both_ways_and_nothing_else_does() {
    let mut h = Harness::new();
    // A flow the pod opened: its replies enter, though the pod is isolated for ingress.
    assert!(h.leaves(&tcp((EGRESS_POD, 41_000), (CLIENT, 80))));
    let mut syn_ack = tcp((CLIENT, 80), (EGRESS_POD, 41_000));
    syn_ack.tcp_flags = 0x12;
    assert!(h.enters(&syn_ack));
    assert!(
        !h.enters(&tcp((CLIENT, 80), (EGRESS_POD, 41_001))),
        "not a reply"
    );
    // A flow the pod accepted (its ingress rule): its replies leave, though no egress
    // rule lets the pod reach the client's port.
    assert!(h.enters(&tcp((CLIENT, 42_000), (EGRESS_POD, 8080))));
    let mut answer = tcp((EGRESS_POD, 8080), (CLIENT, 42_000));
    answer.tcp_flags = 0x12;
    assert!(h.leaves(&answer));
    assert!(h.leaves(&ack((EGRESS_POD, 8080), (CLIENT, 42_000))));
    assert!(
        !h.leaves(&ack((EGRESS_POD, 8080), (CLIENT, 42_001))),
        "not a reply of an accepted flow"
    );
}

#[test]
fn through_a_cluster_ip_egress_is_checked_against_the_chosen_backend() {
    let mut h = Harness::new();
    let (verdict, out, dropped) = h.run(
        program_names::FROM_POD,
        &tcp((EGRESS_POD, 44_000), (VIP, 80)),
    );
    assert_eq!((verdict, dropped), (TC_ACT_OK, false));
    let translated = packet::parse(&out).expect("an IPv4 frame");
    assert_eq!((translated.dst, translated.dst_port), (SERVER, 80));
    // Same frontend port, but the backend (b's api pod on 8080) is not allowed.
    let (verdict, _, dropped) = h.run(
        program_names::FROM_POD,
        &tcp((EGRESS_POD, 44_001), (REMOTE_VIP, 80)),
    );
    assert_eq!((verdict, dropped), (TC_ACT_SHOT, true));
}

#[test]
fn established_flows_pass_on_the_connection_table_until_a_change_revokes_them() {
    let mut h = Harness::new();
    let all = policies();
    let rules = counter_id(&plan(&all), "rules");
    let counters = h.datapath.policy_counters().expect("counters");
    assert!(h.leaves(&tcp((EGRESS_POD, 45_000), (CLIENT, 80))));
    for _ in 0..3 {
        assert!(h.leaves(&ack((EGRESS_POD, 45_000), (CLIENT, 80))));
    }
    // Counted once, as the new flow it was; later packets took the connection table.
    assert_eq!(counters.read(rules).expect("read").egress_allowed, 1);
    // A change that still allows the flow keeps it: the revision moves on, the flow is
    // checked again and passes.
    let before = h.maps.revision(EGRESS_POD).expect("isolated");
    let mut more = all.clone();
    more.push(policy(&format!(
        "{}  podSelector: {{}}\n  egress:\n  - to: [{{ipBlock: {{cidr: 198.19.200.0/24}}}}]\n",
        head("c", "extra")
    )));
    h.maps.apply(&plan(&more)).expect("apply");
    assert_ne!(h.maps.revision(EGRESS_POD), Some(before));
    assert!(h.leaves(&ack((EGRESS_POD, 45_000), (CLIENT, 80))));
    // Removing the rule cuts the established flow at its next packet.
    let without_rules: Vec<_> = all
        .iter()
        .filter(|p| p.metadata.name != "rules")
        .cloned()
        .collect();
    h.maps.apply(&plan(&without_rules)).expect("apply");
    assert!(!h.leaves(&ack((EGRESS_POD, 45_000), (CLIENT, 80))));
    // The drop is counted under the policy that isolates the pod.
    let lock = plan(&without_rules).endpoints[&EGRESS_POD].egress_policy;
    assert_eq!(counters.read(lock).expect("read").egress_denied, 1);
    // The removed policy's id, given to a new policy, counts from zero again.
    let mut renamed = without_rules;
    renamed.push(policy(&format!(
        "{}  podSelector: {{}}\n  egress:\n  - to: [{{ipBlock: {{cidr: 198.19.200.0/24}}}}]\n",
        head("c", "successor")
    )));
    let successor = plan(&renamed);
    assert_eq!(successor.policies[&rules].1, "successor");
    h.maps.apply(&successor).expect("apply");
    assert_eq!(counters.read(rules).expect("read"), Default::default());
}

#[test]
fn dropped_flows_are_reported_within_a_budget() {
    let mut h = Harness::new();
    let mut log = h.datapath.take_policy_log().expect("the drop log");
    let sent = 200;
    for port in 0..sent {
        assert!(!h.leaves(&tcp((EGRESS_POD, 46_000 + port), (OUTSIDE, 443))));
    }
    let mut records = Vec::new();
    while let Some(item) = log.next() {
        records.push(policy_drop(&item).expect("a whole record"));
    }
    let first = &records.first().expect("at least one record").flow;
    assert_eq!(
        (
            Ipv4Addr::from(u32::from_be(first.src_addr)),
            Ipv4Addr::from(u32::from_be(first.dst_addr)),
            u16::from_be(first.dst_port),
            first.direction,
        ),
        (EGRESS_POD, OUTSIDE, 443, POLICY_EGRESS)
    );
    // Ten a second per CPU: the 200 drops of a few milliseconds are mostly counted only.
    assert!(records.len() < 100, "{} records", records.len());
}

#[test]
fn a_peer_s_next_connections_pass_on_its_verdict_until_a_change_revokes_it() {
    let mut h = Harness::new();
    let all = policies();
    let web = counter_id(&plan(&all), "web");
    let counters = h.datapath.policy_counters().expect("counters");
    // Three connections from the client to the server (isolated for ingress only): the
    // first one's verdict is kept for the peer and the port, and serves the others.
    for port in [47_000, 47_001, 47_002] {
        assert!(h.enters(&tcp((CLIENT, port), (SERVER, 80))));
        assert!(h.enters(&ack((CLIENT, port), (SERVER, 80))));
    }
    assert_eq!(
        h.entries_into(SERVER),
        vec![(CLIENT, 0, 80, CT_POLICY_IN_PEER)],
        "one entry for the peer and the port, none per connection"
    );
    // Each connection's SYN counts, the packets after it do not.
    assert_eq!(counters.read(web).expect("read").ingress_allowed, 3);
    // Another port, another peer: verdicts of their own.
    assert!(!h.enters(&tcp((CLIENT, 47_003), (SERVER, 81))));
    assert!(!h.enters(&tcp((OTHER, 47_000), (SERVER, 80))));
    // A pod isolated for egress too keeps an entry per flow (its replies need them).
    assert!(h.enters(&tcp((CLIENT, 47_004), (EGRESS_POD, 8080))));
    assert_eq!(
        h.entries_into(EGRESS_POD),
        vec![(CLIENT, 47_004, 8080, CT_POLICY_IN)]
    );
    // A change that still allows the peer keeps its connections.
    let mut more = all.clone();
    more.push(policy(&format!(
        "{}  podSelector: {{}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 198.19.200.0/24}}}}]\n",
        head("a", "extra")
    )));
    h.maps.apply(&plan(&more)).expect("apply");
    assert!(h.enters(&ack((CLIENT, 47_001), (SERVER, 80))));
    // Removing the rule cuts the established connections at their next packet, and
    // refuses the peer's new ones.
    h.maps.apply(&plan(&all[..1])).expect("apply");
    assert!(!h.enters(&ack((CLIENT, 47_000), (SERVER, 80))));
    assert!(!h.enters(&tcp((CLIENT, 47_005), (SERVER, 80))));
}

/// A pod's namespace behind a veth whose host side is in this test's namespace, as the
/// agent wires pods: the peer's namespace id is what the policy finds the pod's sockets
/// by. Dropping it deletes the namespace and with it the veth pair.
struct PodNamespace {
    netns: NetNs,
    host_veth: String,
}

impl PodNamespace {
    fn new(addresses: &[Ipv4Addr]) -> Self {
        let netns = NetNs::new("polsk").expect("pod namespace");
        let host_veth = unique_name("psk");
        let peer = unique_name("psp");
        berth_net::veth_add(None, &host_veth, &peer).expect("veth");
        let wired = berth_net::link_set_netns(None, &peer, netns.name())
            .and_then(|()| berth_net::link_up(None, &host_veth));
        if let Err(error) = wired {
            let _ = berth_net::link_delete(None, &host_veth);
            panic!("wiring the pod's veth: {error}");
        }
        for address in addresses {
            berth_net::addr_add(Some(netns.name()), "lo", &format!("{address}/32"))
                .expect("address");
        }
        PodNamespace { netns, host_veth }
    }

    /// A TCP connection inside the namespace from `client` to `server` (a listener
    /// there): the three sockets, kept open while they are held.
    fn connect(
        &self,
        client: (Ipv4Addr, u16),
        server: (Ipv4Addr, u16),
    ) -> (TcpListener, socket2::Socket, TcpStream) {
        self.netns.run(|| {
            let listener = TcpListener::bind(server).expect("listener");
            let socket = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )
            .expect("socket");
            socket
                .bind(&SocketAddr::from(client).into())
                .expect("bind the client");
            socket
                .connect(&SocketAddr::from(server).into())
                .expect("connect");
            let (accepted, _) = listener.accept().expect("accept");
            (listener, socket, accepted)
        })
    }
}

/// TCP replies of a connection the pod opened before any policy selected it — nothing
/// recorded them, as only selected pods' connections are recorded — pass on the pod's
/// socket of that connection, and are recorded then. Neither a connection the pod has
/// no socket of nor one it accepted on a port it listens on passes that way.
#[test]
fn replies_of_a_connection_the_pod_opened_before_its_isolation_pass_on_its_socket() {
    let mut h = Harness::new();
    let pod = PodNamespace::new(&[SERVER, OUTSIDE]);
    h.datapath
        .register_pod_interface(&pod.host_veth, SERVER)
        .expect("register the pod's veth");
    let veth = berth_net::link_index(None, &pod.host_veth).expect("veth index");
    let opened = pod.connect((SERVER, 45_100), (OUTSIDE, 443));
    let accepted = pod.connect((OUTSIDE, 46_100), (SERVER, 7_000));
    let mut enters = |frame: &Frame| {
        let (verdict, _) = programs::test_run_on(
            h.datapath.ebpf_mut(),
            program_names::TO_POD,
            &frame.build(),
            veth,
        );
        verdict == TC_ACT_OK
    };
    // A connection's first packet is never a reply.
    assert!(!enters(&tcp((OUTSIDE, 443), (SERVER, 45_100))));
    assert!(enters(&ack((OUTSIDE, 443), (SERVER, 45_100))));
    assert!(!enters(&ack((OUTSIDE, 443), (SERVER, 45_101))));
    assert!(!enters(&ack((OUTSIDE, 46_100), (SERVER, 7_000))));
    assert!(
        h.entries_into(SERVER)
            .contains(&(OUTSIDE, 443, 45_100, CT_POLICY_IN)),
        "the reply is recorded once its socket vouched for it"
    );
    drop((opened, accepted));
}
