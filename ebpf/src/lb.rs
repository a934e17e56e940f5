//! Backend choice and connection tracking, shared by the TC and XDP programs.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    maps::{Array, LruHashMap},
};
use berth_ebpf_common::{
    AffinityKey, AffinityValue, BACKEND_ACTIVE, BACKEND_FAILED, Backend, CT_CLOSED, CT_CLOSING,
    CT_ESTABLISHED, CT_FLAG_REMOTE, CT_FORWARD, CT_REVERSE, CT_SYN_SENT, CT_UDP, CT_UDP_STREAM,
    CtEntry, DatapathConfig, FlowKey, HAIRPIN_ADDR, IPPROTO_TCP, Reason, SVC_FLAG_AFFINITY,
    SVC_FLAG_RANDOM, SVC_FLAG_ROUND_ROBIN, ServiceKey, ServiceValue, client_hash, ct_expired,
    defaults::ROUND_ROBIN_WIDTH, flow_hash, maglev_position,
};

use crate::maps::{
    AFFINITY, BACKENDS, CT, HALF_OPEN, MAGLEV, ROUND_ROBIN, SERVICE_STATS, SERVICES, count,
};

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
    /// The TCP header's flags byte (0 for UDP).
    pub tcp_flags: u8,
    /// Whether a packet whose backend is its own client leaves with [`HAIRPIN_ADDR`] as
    /// its source (the TC programs), so its replies come back addressed there. XDP keeps
    /// every source: such a packet from outside is spoofed, and filing its replies under
    /// the hairpin address would re-point that pod's own hairpin connection.
    pub hairpins: bool,
}

/// TCP's flag bits (the header's 14th byte).
pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
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
pub(crate) fn choose_with_affinity(
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

/// CLOCK_MONOTONIC in seconds, the conntrack entries' clock. The coarse clock is the
/// cheapest the kernel has, and a second is all the lifetimes need.
#[inline(always)]
pub fn now_secs() -> u32 {
    // SAFETY: helper without arguments.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}

/// The state an entry moves to on this packet. States only advance (TCP: established,
/// closing, closed; UDP: one-way, stream), so a late packet never reopens a connection.
#[inline(always)]
fn next_state(state: u8, flow: &Flow) -> u8 {
    let seen = if flow.proto != IPPROTO_TCP {
        state
    } else if flow.tcp_flags & TCP_RST != 0 {
        CT_CLOSED
    } else if flow.tcp_flags & TCP_FIN != 0 {
        CT_CLOSING
    } else {
        state
    };
    if seen > state { seen } else { state }
}

/// Refreshes a tracked entry in place: its state, and its last packet's second only when
/// the second changed, so a busy flow writes its entry at most once a second.
///
/// # Safety
/// `entry` must point at a value in a conntrack map.
#[inline(always)]
pub(crate) unsafe fn touch(entry: *mut CtEntry, state: u8, now: u32) {
    // SAFETY: the caller's contract; racing writers store the same kind of value.
    unsafe {
        if (*entry).last_seen_secs != now {
            (*entry).last_seen_secs = now;
        }
        if (*entry).state < state {
            (*entry).state = state;
        }
    }
}

/// Moves the other direction's entry of a connection to `state` (a FIN or RST, or the
/// first UDP reply, seen in this direction), so both age out together. Only on packets
/// that change a state: a few per connection.
#[inline(always)]
pub(crate) fn advance_partner(table: &LruHashMap<FlowKey, CtEntry>, partner: FlowKey, state: u8) {
    if let Some(entry) = table.get_ptr_mut(partner) {
        // SAFETY: a pointer into the conntrack map.
        unsafe {
            if (*entry).state < state {
                (*entry).state = state;
            }
        }
    }
}

/// Whether a tracked flow keeps its backend for this packet: the backend still exists
/// and has not failed, and a new connection on reused ports (a SYN) goes to an active
/// backend only.
#[inline(always)]
fn keeps_backend(tracked: &CtEntry, flow: &Flow) -> bool {
    match BACKENDS.get(tracked.backend_id) {
        Some(backend) => {
            backend.addr == tracked.addr
                && backend.port == tracked.port
                && backend.state != BACKEND_FAILED
                && backend.state != 0
                && (backend.state == BACKEND_ACTIVE || !flow.opens_connection)
        }
        None => false,
    }
}

/// Where the reverse entry of a flow's replies is to be recorded, after [`forward`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ReplyEntry {
    /// Nothing to do: the flow was tracked already.
    Recorded,
    /// A new half-open connection: in the half-open table.
    HalfOpen,
    /// A new flow past any handshake (UDP, or a TCP packet of a connection the table
    /// does not know): in the main table.
    Established,
    /// The client's first ACK completed the handshake: from the half-open table into
    /// the main one.
    Promoted,
}

/// A flow's translation: the backend for this packet and whether the flow is new.
pub struct Target {
    pub entry: CtEntry,
    pub new_flow: bool,
    pub reply: ReplyEntry,
}

/// Conntrack first (established flows keep their backend while the set changes), then
/// the half-open table for TCP, then a fresh choice. An established flow costs one
/// lookup, as before half-open tracking. For a new flow the caller records the reverse
/// entry where the replies will pass ([`track_reply`]). A tracked flow whose backend
/// failed or was replaced is re-balanced here, on its next packet: UDP continues on the
/// new backend, TCP gets a reset from it instead of silence. A SYN on a tracked flow
/// whose backend is terminating, or whose connection closed, is a new connection on
/// reused ports and is balanced like one: kept there, it would reach a server that is
/// about to close its listener. Expired entries count as absent.
#[inline(always)]
pub fn forward(
    service: &ServiceValue,
    flow: &Flow,
    config: &DatapathConfig,
    spread: Spread,
) -> Result<Target, Reason> {
    let key = flow.key(CT_FORWARD);
    let now = now_secs();
    let mut stale = false;
    if let Some(pointer) = CT.get_ptr_mut(key) {
        // SAFETY: a pointer into the map, copied at once; the agent replaces whole entries.
        let tracked = unsafe { *pointer };
        if !ct_expired(tracked.state, tracked.last_seen_secs, now) {
            let reopened = flow.opens_connection && tracked.state >= CT_CLOSING;
            if !reopened && keeps_backend(&tracked, flow) {
                let state = next_state(tracked.state, flow);
                // SAFETY: a pointer into the conntrack map.
                unsafe { touch(pointer, state, now) };
                if state != tracked.state && tracked.flags & CT_FLAG_REMOTE == 0 {
                    advance_partner(&CT, reverse_key(flow, &tracked), state);
                }
                return Ok(Target {
                    entry: tracked,
                    new_flow: false,
                    reply: ReplyEntry::Recorded,
                });
            }
            if !reopened {
                count(Reason::Rebalanced);
            }
        }
        stale = true;
    }
    let opening = flow.proto == IPPROTO_TCP && flow.opens_connection;
    if flow.proto == IPPROTO_TCP {
        // SAFETY: copied out at once (see `service`).
        if let Some(pending) = unsafe { HALF_OPEN.get(key).copied() }
            && !ct_expired(pending.state, pending.last_seen_secs, now)
        {
            if keeps_backend(&pending, flow) {
                if opening {
                    // A retransmitted SYN.
                    return Ok(Target {
                        entry: pending,
                        new_flow: false,
                        reply: ReplyEntry::Recorded,
                    });
                }
                let entry = CtEntry {
                    state: next_state(CT_ESTABLISHED, flow),
                    last_seen_secs: now,
                    ..pending
                };
                let _ = CT.insert(key, entry, 0);
                let _ = HALF_OPEN.remove(key);
                return Ok(Target {
                    entry,
                    new_flow: false,
                    reply: ReplyEntry::Promoted,
                });
            }
            count(Reason::Rebalanced);
        }
    }
    let Some((backend_id, backend)) = choose_with_affinity(service, flow, spread) else {
        return Err(Reason::DropNoBackend);
    };
    let remote = backend.node_id != config.node_id;
    let state = if flow.proto != IPPROTO_TCP {
        CT_UDP
    } else if opening {
        CT_SYN_SENT
    } else {
        next_state(CT_ESTABLISHED, flow)
    };
    let entry = CtEntry {
        addr: backend.addr,
        port: backend.port,
        flags: if remote { CT_FLAG_REMOTE } else { 0 },
        state,
        backend_id,
        service_id: service.id,
        last_seen_secs: now,
        _pad: 0,
    };
    if opening {
        let _ = HALF_OPEN.insert(key, entry, 0);
        if stale {
            // The old connection's entry would otherwise catch this one's next packets.
            let _ = CT.remove(key);
        }
    } else {
        let _ = CT.insert(key, entry, 0);
    }
    Ok(Target {
        entry,
        new_flow: true,
        reply: if opening {
            ReplyEntry::HalfOpen
        } else {
            ReplyEntry::Established
        },
    })
}

/// The source a client's packets reach the backend in `entry` with: the client's own,
/// or [`HAIRPIN_ADDR`] when the backend is the client itself and the program hairpins.
#[inline(always)]
pub fn client_source(flow: &Flow, entry: &CtEntry) -> u32 {
    if flow.hairpins && entry.addr == flow.src_addr {
        HAIRPIN_ADDR
    } else {
        flow.src_addr
    }
}

/// The key of the replies of `flow` (the client's packet before translation) sent to
/// the backend in `entry`.
#[inline(always)]
fn reverse_key(flow: &Flow, entry: &CtEntry) -> FlowKey {
    FlowKey {
        src_addr: entry.addr,
        dst_addr: client_source(flow, entry),
        src_port: entry.port,
        dst_port: flow.src_port,
        proto: flow.proto,
        direction: CT_REVERSE,
        _pad: 0,
    }
}

/// The reverse entry restoring the frontend `flow` addressed on its replies.
#[inline(always)]
fn reverse_entry(flow: &Flow, entry: &CtEntry) -> CtEntry {
    CtEntry {
        addr: flow.dst_addr,
        port: flow.dst_port,
        flags: 0,
        state: entry.state,
        backend_id: entry.backend_id,
        service_id: entry.service_id,
        last_seen_secs: entry.last_seen_secs,
        _pad: 0,
    }
}

/// Records how to restore the frontend address on the replies of a translated flow.
/// `flow` is the client's packet before translation, `entry` its backend.
#[inline(always)]
pub fn track_reply(flow: &Flow, entry: &CtEntry, how: ReplyEntry) {
    let key = reverse_key(flow, entry);
    let value = reverse_entry(flow, entry);
    match how {
        ReplyEntry::Recorded => {}
        ReplyEntry::HalfOpen => {
            let _ = HALF_OPEN.insert(key, value, 0);
        }
        ReplyEntry::Established => {
            let _ = CT.insert(key, value, 0);
        }
        ReplyEntry::Promoted => {
            let _ = CT.insert(key, value, 0);
            let _ = HALF_OPEN.remove(key);
        }
    }
}

/// The reverse entry for a client's packet that another node translated and tunnelled
/// here (this node sees no forward entry of such a flow): a SYN records a half-open
/// entry, later packets an established one, which they also keep fresh. Entries already
/// right are not rewritten.
#[inline(always)]
pub fn track_tunnelled_reply(flow: &Flow, entry: &CtEntry) {
    let now = now_secs();
    let key = reverse_key(flow, entry);
    let wanted = reverse_entry(flow, entry);
    if flow.proto == IPPROTO_TCP && flow.opens_connection {
        // SAFETY: copied out at once (see `service`).
        let current = unsafe { HALF_OPEN.get(key).copied() };
        let fresh = current.is_some_and(|current| {
            current.same_translation(&wanted)
                && !ct_expired(current.state, current.last_seen_secs, now)
        });
        if !fresh {
            let pending = CtEntry {
                state: CT_SYN_SENT,
                last_seen_secs: now,
                ..*entry
            };
            let _ = HALF_OPEN.insert(key, reverse_entry(flow, &pending), 0);
        }
        return;
    }
    if let Some(pointer) = CT.get_ptr_mut(key) {
        // SAFETY: a pointer into the map, copied at once.
        let current = unsafe { *pointer };
        if current.same_translation(&wanted)
            && !ct_expired(current.state, current.last_seen_secs, now)
        {
            // SAFETY: a pointer into the conntrack map.
            unsafe { touch(pointer, next_state(current.state, flow), now) };
            return;
        }
    }
    let state = if flow.proto == IPPROTO_TCP {
        next_state(CT_ESTABLISHED, flow)
    } else {
        CT_UDP
    };
    let established = CtEntry {
        state,
        last_seen_secs: now,
        ..*entry
    };
    let how = if flow.proto == IPPROTO_TCP {
        ReplyEntry::Promoted
    } else {
        ReplyEntry::Established
    };
    track_reply(flow, &established, how);
}

/// The reverse entry of a reply packet, if it belongs to a translated flow and is not
/// past its lifetime. A reply moves its connection's state on (FIN, RST, the first UDP
/// reply), in the client's direction too.
#[inline(always)]
pub fn reply(flow: &Flow) -> Option<CtEntry> {
    let key = flow.key(CT_REVERSE);
    if let Some(pointer) = CT.get_ptr_mut(key) {
        // SAFETY: a pointer into the map, copied at once.
        let entry = unsafe { *pointer };
        // Read here, not before the lookup: traffic of no service skips the clock too.
        let now = now_secs();
        // An expired entry is an old connection's on ports the client now reuses: the
        // new connection's SYN-ACK is in the half-open table (below), not here.
        if !ct_expired(entry.state, entry.last_seen_secs, now) {
            return Some(reply_seen(pointer, entry, flow, now));
        }
    }
    // Only a half-open connection's SYN-ACK (or RST) can be in the half-open table:
    // other packets skip the lookup, so traffic of no service pays nothing for it.
    if flow.proto != IPPROTO_TCP || flow.tcp_flags & (TCP_SYN | TCP_RST) == 0 {
        return None;
    }
    // SAFETY: copied out at once (see `service`).
    let entry = unsafe { HALF_OPEN.get(key).copied() }?;
    (!ct_expired(entry.state, entry.last_seen_secs, now_secs())).then_some(entry)
}

/// Moves a tracked connection's state on for a reply (FIN, RST, the first UDP reply),
/// in the client's direction too; returns the entry as it was read.
#[inline(always)]
fn reply_seen(pointer: *mut CtEntry, entry: CtEntry, flow: &Flow, now: u32) -> CtEntry {
    let state = if entry.state == CT_UDP {
        CT_UDP_STREAM
    } else {
        next_state(entry.state, flow)
    };
    // SAFETY: `pointer` is the conntrack map's value `entry` was read from.
    unsafe { touch(pointer, state, now) };
    if state != entry.state {
        // A hairpin reply goes to HAIRPIN_ADDR; its client is the backend itself.
        let client = if flow.dst_addr == HAIRPIN_ADDR {
            flow.src_addr
        } else {
            flow.dst_addr
        };
        let client_leg = FlowKey {
            src_addr: client,
            dst_addr: entry.addr,
            src_port: flow.dst_port,
            dst_port: entry.port,
            proto: flow.proto,
            direction: CT_FORWARD,
            _pad: 0,
        };
        advance_partner(&CT, client_leg, state);
    }
    entry
}
