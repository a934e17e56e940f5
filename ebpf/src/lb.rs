//! Backend choice and connection tracking, shared by the TC and XDP programs.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    maps::Array,
};
use berth_ebpf_common::{
    AffinityKey, AffinityValue, BACKEND_ACTIVE, BACKEND_FAILED, Backend, CT_FLAG_REMOTE,
    CT_FORWARD, CT_REVERSE, CtEntry, DatapathConfig, FlowKey, IPPROTO_TCP, Reason,
    SVC_FLAG_AFFINITY, SVC_FLAG_RANDOM, SVC_FLAG_ROUND_ROBIN, ServiceKey, ServiceValue,
    client_hash, defaults::ROUND_ROBIN_WIDTH, flow_hash, maglev_position,
};

use crate::maps::{AFFINITY, BACKENDS, CT, MAGLEV, ROUND_ROBIN, SERVICE_STATS, SERVICES, count};

/// The fields of an IPv4 TCP/UDP packet the datapath works on, in network byte order.
#[derive(Clone, Copy)]
pub struct Flow {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    /// A TCP SYN without ACK: a client opening a connection. On a tracked flow it means
    /// the client reused the ports of an earlier connection (ports wrap after some 14,000
    /// connections to one destination), so it is a new flow, not the old one's packet.
    pub opens_connection: bool,
}

/// TCP's flag bits (the header's 14th byte).
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Whether a TCP header's flags byte opens a connection.
#[inline(always)]
pub fn opens_connection(proto: u8, tcp_flags: u8) -> bool {
    proto == IPPROTO_TCP && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

impl Flow {
    #[inline(always)]
    pub fn service_key(&self) -> ServiceKey {
        ServiceKey {
            addr: self.dst_addr,
            port: self.dst_port,
            proto: self.proto,
            _pad: 0,
        }
    }

    #[inline(always)]
    fn key(&self, direction: u8) -> FlowKey {
        FlowKey {
            src_addr: self.src_addr,
            dst_addr: self.dst_addr,
            src_port: self.src_port,
            dst_port: self.dst_port,
            proto: self.proto,
            direction,
            _pad: 0,
        }
    }
}

#[inline(always)]
pub fn service(flow: &Flow) -> Option<ServiceValue> {
    // SAFETY: the value is copied out at once; a concurrent update by the agent replaces
    // whole entries, so the copy is either the old or the new service.
    unsafe { SERVICES.get(flow.service_key()).copied() }
}

/// How many table slots past the hashed one are tried when the agent has marked a
/// backend unusable but not yet swapped in the rebuilt table.
const PROBES: u32 = 4;

#[inline(always)]
fn usable(backend_id: u32) -> Option<Backend> {
    let backend = BACKENDS.get(backend_id)?;
    (backend.state == BACKEND_ACTIVE).then_some(*backend)
}

/// How a new flow's backend is chosen when the service asks for no particular algorithm.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    /// Maglev: every node picks the same backend for the same flow. North-south traffic
    /// needs it (a flow may enter through any node, or a different node after a change).
    Consistent,
    /// Round robin over the active backends: east-west flows are translated and tracked
    /// on the client's node only, so nothing needs agreeing with other nodes, and a few
    /// long-lived connections (a client's keep-alive pool) are spread evenly instead of
    /// as unevenly as a hash happens to split them.
    RoundRobin,
}

/// The backend id in a u32 slot of the Maglev pool or the round-robin lists (both store
/// two ids per 8-byte entry).
#[inline(always)]
fn slot_backend(map: &Array<u64>, slot: u32) -> Option<u32> {
    let (entry, half) = maglev_position(slot);
    let pair = *map.get(entry)?;
    Some(if half == 0 {
        pair as u32
    } else {
        (pair >> 32) as u32
    })
}

/// This CPU's next turn for the service: the count of new flows this CPU gave it so far
/// (the per-CPU service counter every new flow bumps), so consecutive new flows on one
/// CPU cycle through the backends without a shared, contended counter.
#[inline(always)]
fn round_robin_turn(service: &ServiceValue) -> u32 {
    SERVICE_STATS
        .get(service.id)
        .map_or(0, |traffic| traffic.new_connections as u32)
}

/// Maglev, round-robin or random choice among the service's active backends.
#[inline(always)]
fn choose(service: &ServiceValue, flow: &Flow, spread: Spread) -> Option<(u32, Backend)> {
    let size = service.table_size;
    let count = service.backend_count;
    if size == 0 || count == 0 {
        return None;
    }
    if spread == Spread::RoundRobin && service.flags & SVC_FLAG_ROUND_ROBIN != 0 {
        let turn = round_robin_turn(service);
        let list = service.id * ROUND_ROBIN_WIDTH;
        for probe in 0..PROBES {
            let backend_id = slot_backend(&ROUND_ROBIN, list + turn.wrapping_add(probe) % count)?;
            if let Some(backend) = usable(backend_id) {
                return Some((backend_id, backend));
            }
        }
        return None;
    }
    let hash = if service.flags & SVC_FLAG_AFFINITY != 0 {
        client_hash(flow.src_addr)
    } else if service.flags & SVC_FLAG_RANDOM != 0 {
        // SAFETY: helper without preconditions.
        unsafe { bpf_get_prandom_u32() }
    } else {
        flow_hash(
            flow.src_addr,
            flow.dst_addr,
            flow.src_port,
            flow.dst_port,
            flow.proto,
        )
    };
    let slot = hash % size;
    for probe in 0..PROBES {
        let backend_id = slot_backend(&MAGLEV, service.table_offset + (slot + probe) % size)?;
        if let Some(backend) = usable(backend_id) {
            return Some((backend_id, backend));
        }
    }
    None
}

/// Session affinity: reuse the client's backend while it is active and the entry fresh.
#[inline(always)]
fn choose_with_affinity(
    service: &ServiceValue,
    flow: &Flow,
    spread: Spread,
) -> Option<(u32, Backend)> {
    if service.flags & SVC_FLAG_AFFINITY == 0 {
        return choose(service, flow, spread);
    }
    let key = AffinityKey {
        service_id: service.id,
        client_addr: flow.src_addr,
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout_ns = u64::from(service.affinity_timeout_secs) * 1_000_000_000;
    // SAFETY: copied out at once (see `service`).
    if let Some(previous) = unsafe { AFFINITY.get(key).copied() }
        && now.saturating_sub(previous.last_used_ns) < timeout_ns
        && let Some(backend) = usable(previous.backend_id)
    {
        let refreshed = AffinityValue {
            last_used_ns: now,
            ..previous
        };
        let _ = AFFINITY.insert(key, refreshed, 0);
        return Some((previous.backend_id, backend));
    }
    let (backend_id, backend) = choose(service, flow, spread)?;
    let value = AffinityValue {
        backend_id,
        _pad: 0,
        last_used_ns: now,
    };
    let _ = AFFINITY.insert(key, value, 0);
    Some((backend_id, backend))
}

/// A flow's translation: the backend for this packet and whether the flow is new.
pub struct Target {
    pub entry: CtEntry,
    pub new_flow: bool,
}

/// Conntrack first (established flows keep their backend while the set changes), then a
/// fresh choice. For a new flow the caller records the reverse entry where the replies
/// will pass ([`track_reply`]). A tracked flow whose backend failed or was replaced is re-balanced here,
/// on its next packet: UDP continues on the new backend, TCP gets a reset from it instead
/// of silence. A SYN on a tracked flow whose backend is terminating is a new connection
/// on reused ports and is balanced like one: kept there, it would reach a server that is
/// about to close its listener.
#[inline(always)]
pub fn forward(
    service: &ServiceValue,
    flow: &Flow,
    config: &DatapathConfig,
    spread: Spread,
) -> Result<Target, Reason> {
    let key = flow.key(CT_FORWARD);
    // SAFETY: copied out at once (see `service`).
    if let Some(tracked) = unsafe { CT.get(key).copied() } {
        if let Some(backend) = BACKENDS.get(tracked.backend_id)
            && backend.addr == tracked.addr
            && backend.port == tracked.port
            && backend.state != BACKEND_FAILED
            && backend.state != 0
            && (backend.state == BACKEND_ACTIVE || !flow.opens_connection)
        {
            return Ok(Target {
                entry: tracked,
                new_flow: false,
            });
        }
        count(Reason::Rebalanced);
    }
    let Some((backend_id, backend)) = choose_with_affinity(service, flow, spread) else {
        return Err(Reason::DropNoBackend);
    };
    let remote = backend.node_id != config.node_id;
    let entry = CtEntry {
        addr: backend.addr,
        port: backend.port,
        flags: if remote { CT_FLAG_REMOTE } else { 0 },
        _pad: 0,
        backend_id,
        service_id: service.id,
    };
    let _ = CT.insert(key, entry, 0);
    Ok(Target {
        entry,
        new_flow: true,
    })
}

/// Records how to restore the frontend address on the replies of a translated flow.
/// `flow` is the client's packet before translation, `entry` its backend.
#[inline(always)]
pub fn track_reply(flow: &Flow, entry: &CtEntry) {
    let key = FlowKey {
        src_addr: entry.addr,
        dst_addr: flow.src_addr,
        src_port: entry.port,
        dst_port: flow.src_port,
        proto: flow.proto,
        direction: CT_REVERSE,
        _pad: 0,
    };
    let value = CtEntry {
        addr: flow.dst_addr,
        port: flow.dst_port,
        flags: 0,
        _pad: 0,
        backend_id: entry.backend_id,
        service_id: entry.service_id,
    };
    // SAFETY: copied out at once (see `service`).
    let current = unsafe { CT.get(key).copied() };
    if current != Some(value) {
        let _ = CT.insert(key, value, 0);
    }
}

/// The reverse entry of a reply packet, if it belongs to a translated flow.
#[inline(always)]
pub fn reply(flow: &Flow) -> Option<CtEntry> {
    // SAFETY: copied out at once (see `service`).
    unsafe { CT.get(flow.key(CT_REVERSE)).copied() }
}
