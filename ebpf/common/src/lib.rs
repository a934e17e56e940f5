//! Map layouts shared by Berth's eBPF programs and the agent.
//!
//! Every type here is `#[repr(C)]` with explicit padding fields so the kernel and user
//! space agree on the bytes, and so no uninitialised padding is ever hashed as part of a
//! map key. Addresses and ports are stored in network byte order, exactly as they appear
//! in packets: the programs compare them without swapping, user space converts once.
#![no_std]

/// Names of the maps in the eBPF object. Pinned by these names under the agent's bpffs
/// directory, so a restarted agent re-opens the same maps.
pub mod map_names {
    pub const CONFIG: &str = "BERTH_CONFIG";
    pub const SERVICES: &str = "BERTH_SERVICES";
    pub const BACKENDS: &str = "BERTH_BACKENDS";
    pub const MAGLEV: &str = "BERTH_MAGLEV";
    pub const CONNTRACK: &str = "BERTH_CT";
    /// TCP flows that have only sent a SYN, apart from the established ones.
    pub const HALF_OPEN: &str = "BERTH_CT_SYN";
    /// (address, port) of every backend on this node: where IPIP may deliver.
    pub const LOCAL_BACKENDS: &str = "BERTH_LOCAL_BE";
    pub const AFFINITY: &str = "BERTH_AFFINITY";
    pub const NODES: &str = "BERTH_NODES";
    pub const SERVICE_STATS: &str = "BERTH_SVC_STATS";
    pub const BACKEND_STATS: &str = "BERTH_BE_STATS";
    pub const REASONS: &str = "BERTH_REASONS";
    pub const POD_INTERFACES: &str = "BERTH_POD_IFACES";
    /// Pod veths → the id of the pod's namespace: where the policy finds its sockets.
    pub const POD_NSIDS: &str = "BERTH_POD_NSIDS";
    /// Pod network namespaces (their cookies) → the pod: whose `connect()` is translated.
    pub const POD_NETNS: &str = "BERTH_POD_NETNS";
    pub const ROUND_ROBIN: &str = "BERTH_RR";
    /// Every node's pod range → the node's address: where cross-node pod traffic goes
    /// and whether it is encapsulated.
    pub const POD_RANGES: &str = "BERTH_POD_RANGES";
    /// Destination ranges pod traffic is not masqueraded to (besides every pod range).
    pub const NO_MASQUERADE: &str = "BERTH_NO_MASQ";
    /// Masqueraded flows: the node port each pod flow leaves with, and back.
    pub const MASQUERADE: &str = "BERTH_MASQ";
    /// Address (LPM: pod /32s, the ranges policies name) → identity.
    pub const IPCACHE: &str = "BERTH_IPCACHE";
    /// Local pod address → which directions its policies isolate it in.
    pub const POLICY_ENDPOINTS: &str = "BERTH_POLICY_EPS";
    /// (endpoint, identity, direction, protocol, port prefix) → allowed.
    pub const POLICY: &str = "BERTH_POLICY";
    /// Flows the policies let into or out of pods ([`crate::CT_POLICY_IN`] and
    /// [`crate::CT_POLICY_OUT`] keys).
    pub const POLICY_CONNTRACK: &str = "BERTH_POLICY_CT";
    /// Per policy id: new flows allowed and packets denied, per direction.
    pub const POLICY_STATS: &str = "BERTH_POLICY_STATS";
    /// Records of dropped flows, at most [`crate::POLICY_LOG_PER_SECOND`] a second per CPU.
    pub const POLICY_LOG: &str = "BERTH_POLICY_LOG";
    /// Per CPU: the second and count of the policy drop records sent in it.
    pub const POLICY_LOG_BUDGET: &str = "BERTH_POLICY_LOG_BUDGET";
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// TC ingress on a pod's host-side veth: packets leaving the pod.
    pub const FROM_POD: &str = "berth_from_pod";
    /// TC egress on a pod's host-side veth: packets entering the pod.
    pub const TO_POD: &str = "berth_to_pod";
    /// XDP on the node's external interface: north-south service traffic.
    pub const EXTERNAL: &str = "berth_external";
    /// TC egress on the node's underlay interface: IPIP around packets for pods of nodes
    /// reached through the tunnel.
    pub const TUNNEL_ENCAP: &str = "berth_tunnel_encap";
    /// TC ingress on the node's underlay interface: unwraps IPIP from nodes carrying
    /// their pods' packets for this node's pods.
    pub const TUNNEL_DECAP: &str = "berth_tunnel_decap";
    /// cgroup connect4: the node's own and its pods' TCP connections to service frontends
    /// go straight to a backend.
    pub const CONNECT4: &str = "berth_connect4";
}

/// Default sizes. The agent overrides them at load time from its configuration.
pub mod defaults {
    pub const MAX_SERVICES: u32 = 10_000;
    pub const MAX_BACKENDS: u32 = 100_000;
    /// Tracked connections; the conntrack map holds a forward and a reverse entry each.
    pub const MAX_CONNECTIONS: u32 = 1_000_000;
    /// Half-open (SYN only) connections are tracked in their own table, this fraction of
    /// the established one's size: a SYN flood churns that table only.
    pub const HALF_OPEN_SHARE: u32 = 4;
    pub const MAX_AFFINITY: u32 = 100_000;
    pub const MAX_NODES: u32 = 4_096;
    /// Backends listed per service for round robin; services with more use Maglev only.
    pub const ROUND_ROBIN_WIDTH: u32 = 64;
    /// Host-side pod veths on one node the programs may deliver straight into.
    pub const MAX_POD_INTERFACES: u32 = 4_096;
    /// Ranges in the no-masquerade list.
    pub const MAX_NO_MASQUERADE: u32 = 256;
    /// Masqueraded connections are tracked in a table of this fraction of the
    /// conntrack table's entries (two entries each: out and back): a quarter, 250,000
    /// connections to outside the cluster by default.
    pub const MASQUERADE_SHARE: u32 = 4;
    /// Smallest Maglev table (prime). Larger services get larger tables (200 slots per
    /// backend): the Maglev paper keeps M > 100 * N for near-minimal disruption.
    pub const MAGLEV_MIN_TABLE: u32 = 1_021;
    /// Entries of the ipcache: every pod of the cluster, and the ranges policies name.
    pub const MAX_IPCACHE: u32 = 65_536;
    /// Policy entries of all endpoints of a node together.
    pub const MAX_POLICY_ENTRIES: u32 = 65_536;
    /// NetworkPolicies a node counts verdicts for (policy ids; 0 is "no policy").
    pub const MAX_POLICIES: u32 = 16_384;
    /// Bytes of the ring buffer the programs report policy drops through.
    pub const POLICY_LOG_BYTES: u32 = 64 * 1024;
    /// Slots in the pool all tables are carved from (u32 each, two per map entry):
    /// 128 MiB, enough for 10,000 services of 10 backends (2,048 slots each) with a third
    /// to spare for rebuilding tables.
    pub const MAGLEV_POOL_SLOTS: u32 = 1 << 25;
}

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Datapath-wide settings, one entry at index 0 of the config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Slots in the Maglev pool (for inspection; tables carry their own bounds).
    pub maglev_pool_slots: u32,
    /// This node's id; backends with another node id are remote.
    pub node_id: u32,
    /// This node's underlay address (network order): the outer source of IPIP packets
    /// that forward north-south flows to backends on other nodes.
    pub node_addr: u32,
    /// Zero until the agent has written the config; the programs pass everything until then.
    pub ready: u32,
    /// `CONFIG_*` flags.
    pub flags: u32,
    pub _pad: u32,
    /// The cookie of the node's network namespace (`SO_NETNS_COOKIE`): the socket
    /// program translates connections of that namespace's sockets only (it is attached to
    /// a cgroup, which spans namespaces). Zero: no socket is translated.
    pub netns_cookie: u64,
}

/// Pod traffic leaving the underlay interface for addresses outside every pod range and
/// the no-masquerade list takes the node's address (SNAT).
pub const CONFIG_MASQUERADE: u32 = 1 << 0;

/// The node ports masqueraded flows are given: above Linux's default ephemeral range
/// (`ip_local_port_range` 32768-60999), so they never meet the node's own connections.
pub const MASQUERADE_PORT_MIN: u16 = 61_000;
/// How many ports from [`MASQUERADE_PORT_MIN`]: up to 65535.
pub const MASQUERADE_PORTS: u32 = 65_536 - MASQUERADE_PORT_MIN as u32;
/// Ports tried for a new masqueraded flow before it is dropped
/// (`drop_masquerade_ports`): only flows to the same destination address and port compete.
pub const MASQUERADE_PROBES: u32 = 32;

/// Value of the pod ranges map, an LPM trie keyed by (prefix length, range address in
/// network order): the node that owns the range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRange {
    /// The node's underlay address (network order).
    pub node_addr: u32,
    /// `POD_RANGE_*` flags.
    pub flags: u32,
}

/// Value of the pod network namespaces map, keyed by the namespace's cookie
/// (`SO_NETNS_COOKIE`): the pod whose sockets live there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodNetns {
    /// The pod's address (network order): the client of its connections.
    pub addr: u32,
    /// Its host-side veth, whose removal takes the entry with it.
    pub ifindex: u32,
}

/// The range's node is not on a directly connected link: packets for its pods travel
/// inside IPIP addressed to the node.
pub const POD_RANGE_TUNNEL: u32 = 1 << 0;

/// Service lookup key: a frontend address (ClusterIP, NodePort address, LoadBalancer IP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// The frontend accepts traffic arriving on the node's external interface (XDP).
pub const SVC_FLAG_EXTERNAL: u32 = 1 << 0;
/// Session affinity by client address.
pub const SVC_FLAG_AFFINITY: u32 = 1 << 1;
/// New flows pick a random table slot instead of hashing the 5-tuple.
pub const SVC_FLAG_RANDOM: u32 = 1 << 2;
/// The service's round-robin list (`ROUND_ROBIN_WIDTH` slots at `id * ROUND_ROBIN_WIDTH`
/// in the round-robin map) holds its `backend_count` active backends: east-west flows
/// cycle through it.
pub const SVC_FLAG_ROUND_ROBIN: u32 = 1 << 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Index into the per-service tables (Maglev, counters); below `max_services`.
    pub id: u32,
    /// Backends in the live Maglev table; zero means new flows are dropped (counted).
    pub backend_count: u32,
    /// First slot of the live Maglev table in the pool. A rebuilt table is written to
    /// fresh slots and this entry switched to them in one update.
    pub table_offset: u32,
    /// Slots in the live table: a prime.
    pub table_size: u32,
    pub flags: u32,
    pub affinity_timeout_secs: u32,
    /// Fingerprint of the backend list the live table was built from: lets a restarted
    /// agent skip rewriting tables that are already right.
    pub table_hash: u32,
    pub _pad: u32,
}

/// Backend states. Only `ACTIVE` backends receive new flows.
pub const BACKEND_ACTIVE: u8 = 1;
/// Draining: established flows continue, new flows go elsewhere.
pub const BACKEND_TERMINATING: u8 = 2;
/// Failed its health check: established flows are moved on their next packet.
pub const BACKEND_FAILED: u8 = 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: u32,
    pub port: u16,
    pub state: u8,
    pub _pad: u8,
    pub node_id: u32,
}

/// The source a pod's packets to its own Service carry when the backend chosen is the pod
/// itself (hairpin), network order of 169.254.42.1 as Cilium's service loopback address:
/// with its own address as source the pod would answer itself inside its namespace and the
/// reply would never be translated back. Link-local and assigned nowhere; the pod's
/// default route takes replies to it out through its veth.
pub const HAIRPIN_ADDR: u32 = u32::from_be_bytes([169, 254, 42, 1]).to_be();

/// Key direction of the policy conntrack (`BERTH_POLICY_CT`): packets entering a pod,
/// keyed as they arrive (source: the peer as the pod sees it, before any translation of
/// the pod's own flows). Written for the replies of every flow a pod opens, and for the
/// flows an ingress-isolated pod's rules let in (TCP into a pod isolated for ingress
/// only is kept per peer instead: [`CT_POLICY_IN_PEER`]).
pub const CT_POLICY_IN: u8 = 5;
/// Key direction of the policy conntrack: packets leaving a pod, keyed as they leave it
/// (destination: what the pod addressed, before service translation). Written for the
/// flows an egress-isolated pod's rules let out, and for the replies of flows such a pod
/// accepted.
pub const CT_POLICY_OUT: u8 = 6;
/// Key direction of the policy conntrack: an ingress-isolated pod's verdict on TCP from
/// one peer address to one of its ports (source port 0), shared by every connection
/// between them, so a peer's next connection costs one lookup instead of the ipcache's
/// and the policy map's LPM lookups and an entry of its own. Always a rule's entry
/// ([`CT_FLAG_POLICY_RULE`], checked again when the revision moves on); the id of the
/// allowing policy in `CtEntry::service_id`, counted on each connection's SYN. A verdict
/// depends on nothing else: the peer's identity comes from its address, and any change
/// of an identity gives every pod of the node a new revision.
pub const CT_POLICY_IN_PEER: u8 = 7;
/// Policy conntrack flag: the entry was allowed by a rule at the endpoint's
/// [`EndpointPolicy::revision`] held in `CtEntry::backend_id`, and is checked again once
/// the revision moves on. Entries without it (replies) hold while their flow lives.
pub const CT_FLAG_POLICY_RULE: u8 = 1 << 1;

/// Identities (Cilium's model): what the policy map is keyed by instead of addresses.
/// Any peer: the key of a rule that allows every source.
pub const IDENTITY_ANY: u32 = 0;
/// This node itself (its addresses): always allowed in, as kubelet probes need.
pub const IDENTITY_HOST: u32 = 1;
/// An address in no entry of the ipcache.
pub const IDENTITY_WORLD: u32 = 2;
/// First identity of a (namespace, labels) set of pods.
pub const IDENTITY_FIRST_POD: u32 = 256;
/// First identity of an address range a policy names (ipBlock), node-local like
/// Cilium's CIDR identities.
pub const IDENTITY_FIRST_CIDR: u32 = 1 << 24;

/// Policy key direction: traffic into the endpoint.
pub const POLICY_INGRESS: u8 = 1;
/// Policy key direction: traffic out of the endpoint (the peer is the destination).
pub const POLICY_EGRESS: u8 = 2;
/// Endpoint flag: some policy isolates the pod for ingress.
pub const ENDPOINT_INGRESS_ISOLATED: u32 = 1 << 0;
/// Endpoint flag: some policy isolates the pod for egress.
pub const ENDPOINT_EGRESS_ISOLATED: u32 = 1 << 1;

/// Value of the policy endpoints map: how a pod of this node is isolated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// `ENDPOINT_*_ISOLATED` bits.
    pub flags: u32,
    /// Moves on whenever what the pod allows changes: flows a rule allowed under an
    /// older revision are checked again on their next packet.
    pub revision: u32,
    /// The policy id denied packets are counted under, per direction (the first policy,
    /// by namespace and name, that isolates the pod in it).
    pub ingress_policy: u32,
    pub egress_policy: u32,
}

/// Verdict counters of one policy id (per CPU): new flows its rules allowed, packets
/// dropped for pods it isolates, per direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyVerdicts {
    pub ingress_allowed: u64,
    pub ingress_denied: u64,
    pub egress_allowed: u64,
    pub egress_denied: u64,
}

/// A dropped flow, reported through the policy log ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyDrop {
    /// The packet's addresses, ports and protocol as the policy saw them (an egress
    /// drop through a Service: the chosen backend); `direction` is [`POLICY_INGRESS`] or
    /// [`POLICY_EGRESS`].
    pub flow: FlowKey,
    /// The pod whose policy dropped it (network order).
    pub endpoint: u32,
    /// The policy id it was counted under.
    pub policy: u32,
}

/// Policy drop records each CPU sends a second at most; the rest are only counted.
pub const POLICY_LOG_PER_SECOND: u32 = 10;

/// Per-CPU budget of the policy drop records: the second it is for and the records sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogBudget {
    pub second: u32,
    pub sent: u32,
}

/// Key of the policy map (an LPM trie): the endpoint's address and the peer's identity
/// and direction always match in full ([`POLICY_PREFIX_ANY_PROTO`] bits); a rule for one
/// protocol adds its 8 bits, a port range the port's leading bits (up to
/// [`POLICY_PREFIX_FULL`]). Port in network order, so its leading bits come first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    /// The pod's IPv4 address, network order.
    pub endpoint: u32,
    pub identity: u32,
    pub direction: u8,
    pub proto: u8,
    pub port: u16,
}

/// Prefix lengths of [`PolicyKey`]: every protocol and port; one protocol, every port;
/// one port.
pub const POLICY_PREFIX_ANY_PROTO: u32 = 72;
pub const POLICY_PREFIX_ANY_PORT: u32 = 80;
pub const POLICY_PREFIX_FULL: u32 = 96;

/// Conntrack key direction: the client-to-service leg (before translation).
pub const CT_FORWARD: u8 = 1;
/// Conntrack key direction: replies from a backend (after translation).
pub const CT_REVERSE: u8 = 2;
/// Masquerade key direction: a pod's flow leaving the node (before translation); the
/// entry holds the node address and port it leaves with.
pub const CT_MASQ_OUT: u8 = 3;
/// Masquerade key direction: replies to the node's address and port (before
/// translation); the entry holds the pod's address and port.
pub const CT_MASQ_IN: u8 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub direction: u8,
    pub _pad: u16,
}

/// The flow was forwarded to a backend on another node (north-south, IPIP).
pub const CT_FLAG_REMOTE: u8 = 1 << 0;

/// Connection states, as the programs see them from the packets they handle. Each
/// state has its lifetime since the entry's last packet ([`ct_timeout_secs`]).
/// A TCP SYN was sent and nothing else yet: only in the half-open table.
pub const CT_SYN_SENT: u8 = 1;
/// TCP past its handshake (the client's first ACK), or a mid-connection packet.
pub const CT_ESTABLISHED: u8 = 2;
/// A FIN was seen: the connection is closing.
pub const CT_CLOSING: u8 = 3;
/// A RST was seen: the connection is gone.
pub const CT_CLOSED: u8 = 4;
/// UDP, no reply seen yet.
pub const CT_UDP: u8 = 5;
/// UDP with replies seen (a stream, Linux's "assured").
pub const CT_UDP_STREAM: u8 = 6;

/// Lifetimes after the last packet, in seconds. Linux conntrack's defaults
/// (nf_conntrack_tcp_timeout_syn_sent, _fin_wait/_time_wait, _close, udp_timeout and
/// udp_timeout_stream) except for established TCP: 24 hours, kube-proxy's
/// `conntrack.tcpEstablishedTimeout`, which is what Kubernetes users get today, instead
/// of Linux's 5 days that keeps dead connections in the table for most of a week.
pub const CT_TIMEOUT_SYN_SENT: u32 = 120;
pub const CT_TIMEOUT_ESTABLISHED: u32 = 86_400;
pub const CT_TIMEOUT_CLOSING: u32 = 120;
pub const CT_TIMEOUT_CLOSED: u32 = 10;
pub const CT_TIMEOUT_UDP: u32 = 30;
pub const CT_TIMEOUT_UDP_STREAM: u32 = 120;

/// How long an entry in `state` lives after its last packet.
#[inline(always)]
pub const fn ct_timeout_secs(state: u8) -> u32 {
    match state {
        CT_SYN_SENT => CT_TIMEOUT_SYN_SENT,
        CT_CLOSING => CT_TIMEOUT_CLOSING,
        CT_CLOSED => CT_TIMEOUT_CLOSED,
        CT_UDP => CT_TIMEOUT_UDP,
        CT_UDP_STREAM => CT_TIMEOUT_UDP_STREAM,
        _ => CT_TIMEOUT_ESTABLISHED,
    }
}

/// Whether an entry last seen at `last_seen_secs` (CLOCK_MONOTONIC seconds) is past its
/// lifetime at `now_secs`. The programs treat such entries as absent, the agent collects
/// them.
#[inline(always)]
pub const fn ct_expired(state: u8, last_seen_secs: u32, now_secs: u32) -> bool {
    now_secs.wrapping_sub(last_seen_secs) > ct_timeout_secs(state)
}

/// Forward entries: `addr:port` is the backend. Reverse entries: `addr:port` is the
/// frontend the client addressed, restored as the source of replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub addr: u32,
    pub port: u16,
    pub flags: u8,
    /// One of the `CT_*` states.
    pub state: u8,
    pub backend_id: u32,
    pub service_id: u32,
    /// CLOCK_MONOTONIC seconds (`bpf_ktime_get_coarse_ns`) of the entry's last packet,
    /// written at most once a second so a busy flow does not dirty its cache line on
    /// every packet.
    pub last_seen_secs: u32,
    pub _pad: u32,
}

impl CtEntry {
    /// The same translation: everything but the state and the last packet's time.
    #[inline(always)]
    pub const fn same_translation(&self, other: &CtEntry) -> bool {
        self.addr == other.addr
            && self.port == other.port
            && self.flags == other.flags
            && self.backend_id == other.backend_id
            && self.service_id == other.service_id
    }
}

/// A backend's address and port (network order): key of the local backends map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub service_id: u32,
    pub client_addr: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` of the last new flow that used this entry.
    pub last_used_ns: u64,
}

/// Per-CPU traffic counters of a service or a backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_connections: u64,
}

/// Why a packet was passed untouched, translated, or dropped. Indexes the reasons array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Not IPv4 (IPv6, ARP, ...): not handled yet, passed untouched.
    PassNotIpv4 = 0,
    /// IPv4 but neither TCP nor UDP (ICMP, ...).
    PassNotTcpUdp = 1,
    /// IPv4 fragment: ports are not visible, passed untouched.
    PassFragment = 2,
    /// Frame too short for the headers it claims.
    PassTruncated = 3,
    /// Not addressed to a service and not a reply of a translated flow.
    PassNotService = 4,
    /// IPv4 header length below 20 bytes or beyond the packet.
    DropBadIpHeader = 5,
    /// A service frontend with no active backend.
    DropNoBackend = 6,
    /// Rewriting the packet failed (helper error).
    DropRewriteFailed = 7,
    /// IPIP from an address that is not a known node: someone else's tunnel.
    PassForeignTunnel = 8,
    /// The datapath is loaded but not configured yet.
    PassNotConfigured = 9,
    /// Forward translation to a backend (new or tracked flow).
    Translated = 10,
    /// Reply translated back to the frontend address.
    ReverseTranslated = 11,
    /// North-south flow sent to a backend's node inside IPIP.
    ForwardedToNode = 12,
    /// IPIP from another node unwrapped and delivered to a local backend.
    TunnelDelivered = 13,
    /// A tracked flow whose backend failed or vanished got a new backend.
    Rebalanced = 14,
    /// No route to a remote backend's node (FIB lookup failed).
    DropNoRoute = 15,
    /// Delivered straight into a pod on this node, past the node's stack. Counted in
    /// addition to the packet's translation reason (translated, reverse, not a service).
    DeliveredToPod = 16,
    /// A packet leaving a pod with a source address that is not the pod's.
    DropSpoofedSource = 17,
    /// IPIP from a node whose inner destination is not a backend on this node.
    DropTunnelNotBackend = 18,
    /// A packet for a pod on a node reached through the tunnel, sent inside IPIP.
    PodEncapsulated = 19,
    /// IPIP from a node carrying a packet of its pods (or its own) for a pod here,
    /// unwrapped.
    PodDecapsulated = 20,
    /// IPIP addressed to this node, left by XDP to the underlay interface's TC program.
    PassNodeTunnel = 21,
    /// IPIP addressed to this node from an address that is not a node, or whose inner
    /// packet is not from that node's pods or not for a pod of this node.
    DropTunnelSource = 22,
    /// A pod's packet leaving the node for outside the cluster, given the node's address.
    Masqueraded = 23,
    /// A reply to a masqueraded flow, given back the pod's address.
    Unmasqueraded = 24,
    /// A new masqueraded flow found no free node port towards its destination.
    DropMasqueradePorts = 25,
    /// A connection of the node's own (a socket in its network namespace) to a service
    /// frontend, sent to a backend at connect().
    SocketTranslated = 26,
    /// A packet for a pod its NetworkPolicies isolate for ingress that no rule allows
    /// and that is not a reply of a flow the pod opened.
    DropPolicyIngress = 27,
    /// A packet leaving a pod its NetworkPolicies isolate for egress that no rule allows
    /// (checked against the chosen backend through a Service) and that is not a reply
    /// of a flow the pod accepted.
    DropPolicyEgress = 28,
}

impl Reason {
    pub const COUNT: u32 = 29;
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::PassNotIpv4,
        Reason::PassNotTcpUdp,
        Reason::PassFragment,
        Reason::PassTruncated,
        Reason::PassNotService,
        Reason::DropBadIpHeader,
        Reason::DropNoBackend,
        Reason::DropRewriteFailed,
        Reason::PassForeignTunnel,
        Reason::PassNotConfigured,
        Reason::Translated,
        Reason::ReverseTranslated,
        Reason::ForwardedToNode,
        Reason::TunnelDelivered,
        Reason::Rebalanced,
        Reason::DropNoRoute,
        Reason::DeliveredToPod,
        Reason::DropSpoofedSource,
        Reason::DropTunnelNotBackend,
        Reason::PodEncapsulated,
        Reason::PodDecapsulated,
        Reason::PassNodeTunnel,
        Reason::DropTunnelSource,
        Reason::Masqueraded,
        Reason::Unmasqueraded,
        Reason::DropMasqueradePorts,
        Reason::SocketTranslated,
        Reason::DropPolicyIngress,
        Reason::DropPolicyEgress,
    ];

    /// Label used in metrics.
    pub const fn label(self) -> &'static str {
        match self {
            Reason::PassNotIpv4 => "pass_not_ipv4",
            Reason::PassNotTcpUdp => "pass_not_tcp_udp",
            Reason::PassFragment => "pass_fragment",
            Reason::PassTruncated => "pass_truncated",
            Reason::PassNotService => "pass_not_service",
            Reason::DropBadIpHeader => "drop_bad_ip_header",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropRewriteFailed => "drop_rewrite_failed",
            Reason::PassForeignTunnel => "pass_foreign_tunnel",
            Reason::PassNotConfigured => "pass_not_configured",
            Reason::Translated => "translated",
            Reason::ReverseTranslated => "reverse_translated",
            Reason::ForwardedToNode => "forwarded_to_node",
            Reason::TunnelDelivered => "tunnel_delivered",
            Reason::Rebalanced => "rebalanced",
            Reason::DropNoRoute => "drop_no_route",
            Reason::DeliveredToPod => "delivered_to_pod",
            Reason::DropSpoofedSource => "drop_spoofed_source",
            Reason::DropTunnelNotBackend => "drop_tunnel_not_backend",
            Reason::PodEncapsulated => "pod_encapsulated",
            Reason::PodDecapsulated => "pod_decapsulated",
            Reason::PassNodeTunnel => "pass_node_tunnel",
            Reason::DropTunnelSource => "drop_tunnel_source",
            Reason::Masqueraded => "masqueraded",
            Reason::Unmasqueraded => "unmasqueraded",
            Reason::DropMasqueradePorts => "drop_masquerade_ports",
            Reason::SocketTranslated => "socket_translated",
            Reason::DropPolicyIngress => "drop_policy_ingress",
            Reason::DropPolicyEgress => "drop_policy_egress",
        }
    }

    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::DropBadIpHeader
                | Reason::DropNoBackend
                | Reason::DropRewriteFailed
                | Reason::DropNoRoute
                | Reason::DropSpoofedSource
                | Reason::DropTunnelNotBackend
                | Reason::DropTunnelSource
                | Reason::DropMasqueradePorts
                | Reason::DropPolicyIngress
                | Reason::DropPolicyEgress
        )
    }
}

/// Where a pool slot lives in the Maglev map: the kernel stores array values in 8-byte
/// strides, so each u64 entry holds two u32 backend ids (even slot in the low half, odd
/// slot in the high half) and no memory goes to padding. Seen from user space through
/// mmap, the map is then simply an array of u32 slots.
#[inline(always)]
pub const fn maglev_position(slot: u32) -> (u32, u32) {
    (slot / 2, slot & 1)
}

/// Hash of a flow used to pick its Maglev slot. Shared by the programs and user space so
/// that every node, and the agent's own tests, make the same choice for the same flow.
/// Inputs are taken in network byte order as they appear in the packet.
#[inline(always)]
pub const fn flow_hash(
    src_addr: u32,
    dst_addr: u32,
    src_port: u16,
    dst_port: u16,
    proto: u8,
) -> u32 {
    let mut h = mix(0x9e37_79b9, src_addr);
    h = mix(h, dst_addr);
    h = mix(h, ((src_port as u32) << 16) | dst_port as u32);
    h = mix(h, proto as u32);
    finalize(h)
}

/// Hash of a client address alone, for session affinity.
#[inline(always)]
pub const fn client_hash(src_addr: u32) -> u32 {
    finalize(mix(0x85eb_ca6b, src_addr))
}

// murmur3's 32-bit block mix and finaliser: cheap, branch-free, verifier-friendly.
#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finalize(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY: each type is #[repr(C)], built only from integers, with every padding
    // byte spelled out as a field, so any bit pattern is valid and no byte is uninit.
    unsafe impl aya::Pod for DatapathConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BackendAddr {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AffinityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AffinityValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Traffic {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PodRange {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PodNetns {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EndpointPolicy {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyVerdicts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyDrop {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LogBudget {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<DatapathConfig>(), 32);
        assert_eq!(size_of::<ServiceKey>(), 8);
        assert_eq!(size_of::<ServiceValue>(), 32);
        assert_eq!(size_of::<Backend>(), 12);
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(size_of::<CtEntry>(), 24);
        assert_eq!(size_of::<BackendAddr>(), 8);
        assert_eq!(size_of::<AffinityKey>(), 8);
        assert_eq!(size_of::<AffinityValue>(), 16);
        assert_eq!(size_of::<Traffic>(), 24);
        assert_eq!(size_of::<PodRange>(), 8);
        assert_eq!(size_of::<PolicyKey>() as u32 * 8, POLICY_PREFIX_FULL);
        assert_eq!(size_of::<EndpointPolicy>(), 16);
        assert_eq!(size_of::<PolicyVerdicts>(), 32);
        assert_eq!(size_of::<PolicyDrop>(), 24);
        assert_eq!(size_of::<LogBudget>(), 8);
    }

    #[test]
    fn reasons_are_indexed_in_order() {
        for (index, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index);
        }
    }

    #[test]
    fn flow_hash_depends_on_every_field() {
        let base = flow_hash(1, 2, 3, 4, 6);
        assert_ne!(base, flow_hash(9, 2, 3, 4, 6));
        assert_ne!(base, flow_hash(1, 9, 3, 4, 6));
        assert_ne!(base, flow_hash(1, 2, 9, 4, 6));
        assert_ne!(base, flow_hash(1, 2, 3, 9, 6));
        assert_ne!(base, flow_hash(1, 2, 3, 4, 17));
    }

    #[test]
    fn conntrack_lifetimes_follow_the_state() {
        assert!(!ct_expired(
            CT_ESTABLISHED,
            100,
            100 + CT_TIMEOUT_ESTABLISHED
        ));
        assert!(ct_expired(
            CT_ESTABLISHED,
            100,
            101 + CT_TIMEOUT_ESTABLISHED
        ));
        assert!(ct_expired(CT_CLOSED, 100, 111));
        assert!(!ct_expired(CT_UDP_STREAM, 100, 200));
        assert!(ct_expired(CT_UDP, 100, 200));
        // The clock is monotonic; a wrapped difference is far in the past.
        assert!(!ct_expired(CT_SYN_SENT, u32::MAX - 5, 10));
    }

    #[test]
    fn maglev_slots_pack_two_per_entry() {
        assert_eq!(maglev_position(0), (0, 0));
        assert_eq!(maglev_position(1), (0, 1));
        assert_eq!(maglev_position(1021), (510, 1));
    }
}
