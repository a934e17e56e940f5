//! The maps, pinned by name so a restarted agent re-opens them instead of starting empty.
//! Sizes here are defaults; the agent sets the real ones at load time.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
};
use berth_ebpf_common::{
    AffinityKey, AffinityValue, Backend, BackendAddr, CtEntry, DatapathConfig, EndpointPolicy,
    FlowKey, LogBudget, PodNetns, PodRange, PolicyKey, PolicyVerdicts, Reason, ServiceKey,
    ServiceValue, Traffic, defaults,
};

#[map(name = "BERTH_CONFIG")]
pub static CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

#[map(name = "BERTH_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(defaults::MAX_SERVICES * 4, 0);

#[map(name = "BERTH_BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::pinned(defaults::MAX_BACKENDS, 0);

/// The pool the services' Maglev tables are carved from: backend ids, two per entry.
/// Memory-mapped by the agent: a table is written with plain stores instead of one
/// syscall per slot, which is what makes programming 10,000 services fast.
#[map(name = "BERTH_MAGLEV")]
pub static MAGLEV: Array<u64> = Array::pinned(defaults::MAGLEV_POOL_SLOTS / 2, BPF_F_MMAPABLE);

/// Each service's active backends in a fixed-width list (see SVC_FLAG_ROUND_ROBIN), two
/// u32 backend ids per entry like the Maglev pool, and memory-mapped the same way.
#[map(name = "BERTH_RR")]
pub static ROUND_ROBIN: Array<u64> = Array::pinned(
    defaults::MAX_SERVICES * defaults::ROUND_ROBIN_WIDTH / 2,
    BPF_F_MMAPABLE,
);

/// Established connections (and UDP flows): what every packet of a tracked flow looks up.
#[map(name = "BERTH_CT")]
pub static CT: LruHashMap<FlowKey, CtEntry> = LruHashMap::pinned(defaults::MAX_CONNECTIONS * 2, 0);

/// TCP connections that have sent only their SYN, moved to `CT` by the client's first
/// ACK. A SYN flood evicts entries of this table only, never an established connection.
#[map(name = "BERTH_CT_SYN")]
pub static HALF_OPEN: LruHashMap<FlowKey, CtEntry> =
    LruHashMap::pinned(defaults::MAX_CONNECTIONS * 2 / defaults::HALF_OPEN_SHARE, 0);

/// (address, port) of every backend on this node → its backend id: the only places
/// IPIP from other nodes is delivered to.
#[map(name = "BERTH_LOCAL_BE")]
pub static LOCAL_BACKENDS: HashMap<BackendAddr, u32> = HashMap::pinned(defaults::MAX_BACKENDS, 0);

#[map(name = "BERTH_AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(defaults::MAX_AFFINITY, 0);

/// Underlay address of every node → node id: the peers IPIP is accepted from.
#[map(name = "BERTH_NODES")]
pub static NODES: HashMap<u32, u32> = HashMap::pinned(defaults::MAX_NODES, 0);

/// Host-side ifindex of every pod veth on this node → the pod's IPv4 address (network
/// order): where a packet may be handed straight to the pod with bpf_redirect_peer (only
/// a veth has a peer to hand it to), and the only source address its packets may carry.
#[map(name = "BERTH_POD_IFACES")]
pub static POD_INTERFACES: HashMap<u32, u32> = HashMap::pinned(defaults::MAX_POD_INTERFACES, 0);

/// Host-side ifindex of every pod veth on this node → the id this node's namespace knows
/// the pod's network namespace by (the veth's link netnsid): where the policy looks for
/// the pod's own sockets (see `policy::opened_by_pod`).
#[map(name = "BERTH_POD_NSIDS")]
pub static POD_NSIDS: HashMap<u32, u32> = HashMap::pinned(defaults::MAX_POD_INTERFACES, 0);

/// The network namespace of every pod on this node (its cookie) → the pod: the sockets
/// whose TCP `connect()` to a service frontend `berth_connect4` sends to a backend.
#[map(name = "BERTH_POD_NETNS")]
pub static POD_NETNS: HashMap<u64, PodNetns> = HashMap::pinned(defaults::MAX_POD_INTERFACES, 0);

/// Every node's pod range (this node's too) → the node's address and whether its pods
/// are reached through the tunnel. Keyed by (prefix length, range address in network
/// order).
#[map(name = "BERTH_POD_RANGES")]
pub static POD_RANGES: LpmTrie<u32, PodRange> = LpmTrie::pinned(defaults::MAX_NODES, 0);

/// Destination ranges pod traffic is not masqueraded to (the agent's
/// `--non-masquerade-cidr`), keyed like the pod ranges. The value is unused.
#[map(name = "BERTH_NO_MASQ")]
pub static NO_MASQUERADE: LpmTrie<u32, u32> = LpmTrie::pinned(defaults::MAX_NO_MASQUERADE, 0);

/// Masqueraded flows: (pod, destination, ports, `CT_MASQ_OUT`) → the node address and
/// port the flow leaves with, and (destination, node, ports, `CT_MASQ_IN`) → the pod's
/// address and port. An LRU of its own, so pods' connections to the outside never evict
/// service connections.
#[map(name = "BERTH_MASQ")]
pub static MASQUERADE: LruHashMap<FlowKey, CtEntry> = LruHashMap::pinned(
    defaults::MAX_CONNECTIONS * 2 / defaults::MASQUERADE_SHARE,
    0,
);

/// Addresses → identities: every pod of the cluster as a /32, and the ranges the
/// policies' ipBlocks name (and their exceptions), so the longest match of an address is
/// the most specific thing a policy can say about it. Keyed like the pod ranges.
#[map(name = "BERTH_IPCACHE")]
pub static IPCACHE: LpmTrie<u32, u32> = LpmTrie::pinned(defaults::MAX_IPCACHE, 0);

/// Each pod of this node that some NetworkPolicy selects (by address, network order) →
/// the directions it is isolated in, its revision and the policies its drops count
/// under. A pod absent here is not isolated at all.
#[map(name = "BERTH_POLICY_EPS")]
pub static POLICY_ENDPOINTS: HashMap<u32, EndpointPolicy> =
    HashMap::pinned(defaults::MAX_POD_INTERFACES, 0);

/// What the isolated pods allow: see `PolicyKey`. The value is the id of the policy
/// whose rule allows it, for the verdict counters.
#[map(name = "BERTH_POLICY")]
pub static POLICY: LpmTrie<PolicyKey, u32> = LpmTrie::pinned(defaults::MAX_POLICY_ENTRIES, 0);

/// Flows the policies let through (`CT_POLICY_IN` and `CT_POLICY_OUT` keys): the
/// replies of flows pods opened (TCP: of pods some policy selects, and of connections a
/// pod opened before it became isolated once their first reply is found among its
/// sockets; UDP: of every pod, so a pod that becomes isolated keeps them), the replies of flows egress-isolated pods
/// accepted, and the flows isolated pods' rules allowed (for TCP into a pod isolated for
/// ingress only: the verdict per peer address and port), so their later packets cost one
/// lookup. An LRU of its own, so pods' flows never evict service connections; entries
/// past their lifetime count as absent.
#[map(name = "BERTH_POLICY_CT")]
pub static POLICY_CT: LruHashMap<FlowKey, CtEntry> = LruHashMap::pinned(
    defaults::MAX_CONNECTIONS * 2 / defaults::MASQUERADE_SHARE,
    0,
);

/// Verdicts per policy id (see `PolicyVerdicts`).
#[map(name = "BERTH_POLICY_STATS")]
pub static POLICY_STATS: PerCpuArray<PolicyVerdicts> =
    PerCpuArray::pinned(defaults::MAX_POLICIES, 0);

/// Dropped flows for the agent to print (`PolicyDrop` records), rate-limited per CPU by
/// `POLICY_LOG_BUDGET`. Not pinned: only the agent that loaded the programs reads it.
#[map(name = "BERTH_POLICY_LOG")]
pub static POLICY_LOG: RingBuf = RingBuf::with_byte_size(defaults::POLICY_LOG_BYTES, 0);

#[map(name = "BERTH_POLICY_LOG_BUDGET")]
pub static POLICY_LOG_BUDGET: PerCpuArray<LogBudget> = PerCpuArray::with_max_entries(1, 0);

/// Whether pod traffic to `addr` keeps its pod source: `addr` is in the no-masquerade
/// list or in a pod range (this node's or another's, whether routed or tunnelled).
#[inline(always)]
pub fn keeps_pod_source(addr: u32) -> bool {
    NO_MASQUERADE.get(Key::new(32, addr)).is_some() || POD_RANGES.get(Key::new(32, addr)).is_some()
}

/// The pod range holding `addr` (network order), if any.
#[inline(always)]
pub fn pod_range(addr: u32) -> Option<PodRange> {
    POD_RANGES.get(Key::new(32, addr)).copied()
}

#[map(name = "BERTH_SVC_STATS")]
pub static SERVICE_STATS: PerCpuArray<Traffic> = PerCpuArray::pinned(defaults::MAX_SERVICES, 0);

#[map(name = "BERTH_BE_STATS")]
pub static BACKEND_STATS: PerCpuArray<Traffic> = PerCpuArray::pinned(defaults::MAX_BACKENDS, 0);

#[map(name = "BERTH_REASONS")]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::pinned(Reason::COUNT, 0);

#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(counter) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot; programs on this CPU run to completion without preemption
        // by another program touching the same slot.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn add_traffic(map: &PerCpuArray<Traffic>, index: u32, bytes: u64, new_connection: bool) {
    if let Some(traffic) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, as in `count`.
        unsafe {
            (*traffic).packets += 1;
            (*traffic).bytes += bytes;
            if new_connection {
                (*traffic).new_connections += 1;
            }
        }
    }
}

#[inline(always)]
pub fn account(entry: &CtEntry, bytes: u64, new_connection: bool) {
    add_traffic(&SERVICE_STATS, entry.service_id, bytes, new_connection);
    add_traffic(&BACKEND_STATS, entry.backend_id, bytes, new_connection);
}

#[inline(always)]
pub fn config() -> Option<DatapathConfig> {
    let config = CONFIG.get(0)?;
    (config.ready != 0).then_some(*config)
}
