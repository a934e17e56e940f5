//! Egress masquerade: a pod's TCP or UDP packet leaving the node's underlay interface for
//! an address outside every pod range and the no-masquerade list leaves with the node's
//! address and a node port of its own (SNAT), and the replies to that address and port
//! get the pod's back as they arrive. Both directions are tracked in `BERTH_MASQ` with the
//! same states and lifetimes as the service connections.
//!
//! Node ports come from [`MASQUERADE_PORT_MIN`] up, above the kernel's default ephemeral
//! range, so a masqueraded flow never takes the ports of one of the node's own
//! connections. Only flows to the same destination address and port compete for them:
//! the reply key holds the destination, so each destination has the whole range.

use aya_ebpf::{bindings::BPF_NOEXIST, programs::TcContext};
use berth_ebpf_common::{
    CONFIG_MASQUERADE, CT_CLOSED, CT_CLOSING, CT_ESTABLISHED, CT_MASQ_IN, CT_MASQ_OUT, CT_SYN_SENT,
    CT_UDP, CT_UDP_STREAM, CtEntry, DatapathConfig, FlowKey, IPPROTO_TCP, MASQUERADE_PORT_MIN,
    MASQUERADE_PORTS, MASQUERADE_PROBES, Reason, ct_expired, flow_hash,
};

use crate::{
    lb::{self, Flow, TCP_FIN, TCP_RST},
    maps::{MASQUERADE, keeps_pod_source, pod_range},
    tc::{self, Side},
};

/// The state a masquerade entry moves to on this packet (`reply`: from the destination).
/// States only advance, as in the service connection table.
#[inline(always)]
fn state_after(state: u8, flow: &Flow, reply: bool) -> u8 {
    let seen = if flow.proto != IPPROTO_TCP {
        if reply && state == CT_UDP {
            CT_UDP_STREAM
        } else {
            state
        }
    } else if flow.tcp_flags & TCP_RST != 0 {
        CT_CLOSED
    } else if flow.tcp_flags & TCP_FIN != 0 {
        CT_CLOSING
    } else if state == CT_SYN_SENT && !flow.opens_connection {
        // The SYN-ACK, or the client's ACK after it.
        CT_ESTABLISHED
    } else {
        state
    };
    if seen > state { seen } else { state }
}

/// The key of a pod flow leaving the node.
#[inline(always)]
fn out_key(pod: (u32, u16), dst: (u32, u16), proto: u8) -> FlowKey {
    FlowKey {
        src_addr: pod.0,
        dst_addr: dst.0,
        src_port: pod.1,
        dst_port: dst.1,
        proto,
        direction: CT_MASQ_OUT,
        _pad: 0,
    }
}

/// The key of the replies to a masqueraded flow.
#[inline(always)]
fn in_key(dst: (u32, u16), node: (u32, u16), proto: u8) -> FlowKey {
    FlowKey {
        src_addr: dst.0,
        dst_addr: node.0,
        src_port: dst.1,
        dst_port: node.1,
        proto,
        direction: CT_MASQ_IN,
        _pad: 0,
    }
}

#[inline(always)]
fn entry(addr: u32, port: u16, state: u8, now: u32) -> CtEntry {
    CtEntry {
        addr,
        port,
        state,
        last_seen_secs: now,
        ..CtEntry::default()
    }
}

/// Whether the node port of the reply entry at `back` (whose value is `taken`) is free for
/// a new flow to the same destination: the entry has expired and the flow that held it
/// no longer leaves with that port.
#[inline(always)]
fn reusable(taken: &CtEntry, flow: &Flow, node_port: u16, now: u32) -> bool {
    if !ct_expired(taken.state, taken.last_seen_secs, now) {
        return false;
    }
    let owner = out_key(
        (taken.addr, taken.port),
        (flow.dst_addr, flow.dst_port),
        flow.proto,
    );
    // SAFETY: copied out at once.
    match unsafe { MASQUERADE.get(owner) } {
        Some(held) => held.port != node_port || ct_expired(held.state, held.last_seen_secs, now),
        None => true,
    }
}

/// The node port `flow` leaves with: its tracked one, or a free one for a new flow (the
/// reply entry is claimed first, with BPF_NOEXIST, so two CPUs never give one port to
/// two flows).
#[inline(always)]
fn node_port(flow: &Flow, node_addr: u32) -> Result<u16, Reason> {
    let now = lb::now_secs();
    let pod = (flow.src_addr, flow.src_port);
    let dst = (flow.dst_addr, flow.dst_port);
    let key = out_key(pod, dst, flow.proto);
    if let Some(pointer) = MASQUERADE.get_ptr_mut(key) {
        // SAFETY: a pointer into the map, copied at once.
        let tracked = unsafe { *pointer };
        if !ct_expired(tracked.state, tracked.last_seen_secs, now) {
            let back = in_key(dst, (node_addr, tracked.port), flow.proto);
            if flow.opens_connection && tracked.state >= CT_CLOSING {
                // A new connection on the ports of a closed one: the same node port,
                // tracked afresh.
                let _ = MASQUERADE.insert(key, entry(node_addr, tracked.port, CT_SYN_SENT, now), 0);
                let _ = MASQUERADE.insert(back, entry(pod.0, pod.1, CT_SYN_SENT, now), 0);
                return Ok(tracked.port);
            }
            let state = state_after(tracked.state, flow, false);
            // SAFETY: a pointer into the masquerade map.
            unsafe { lb::touch(pointer, state, now) };
            if state != tracked.state {
                lb::advance_partner(&MASQUERADE, back, state);
            }
            return Ok(tracked.port);
        }
    }
    let state = if flow.proto != IPPROTO_TCP {
        CT_UDP
    } else if flow.opens_connection {
        CT_SYN_SENT
    } else {
        state_after(CT_ESTABLISHED, flow, false)
    };
    let start = flow_hash(pod.0, dst.0, pod.1, dst.1, flow.proto) % MASQUERADE_PORTS;
    for probe in 0..MASQUERADE_PROBES {
        let port = (u32::from(MASQUERADE_PORT_MIN) + (start + probe) % MASQUERADE_PORTS) as u16;
        let port = port.to_be();
        let back = in_key(dst, (node_addr, port), flow.proto);
        let value = entry(pod.0, pod.1, state, now);
        // SAFETY: copied out at once.
        let claimed = match unsafe { MASQUERADE.get(back).copied() } {
            None => MASQUERADE
                .insert(back, value, u64::from(BPF_NOEXIST))
                .is_ok(),
            Some(taken) if reusable(&taken, flow, port, now) => {
                MASQUERADE.insert(back, value, 0).is_ok()
            }
            Some(_) => false,
        };
        if claimed {
            let _ = MASQUERADE.insert(key, entry(node_addr, port, state, now), 0);
            return Ok(port);
        }
    }
    Err(Reason::DropMasqueradePorts)
}

/// SNAT of a packet leaving the underlay interface. None for packets that are none of its
/// business (passed uncounted, like the tunnel's): anything but TCP or UDP from one of
/// this node's pods to an address outside every pod range and the no-masquerade list.
#[inline(always)]
pub fn masquerade(ctx: &TcContext, config: &DatapathConfig) -> Option<Reason> {
    if config.flags & CONFIG_MASQUERADE == 0 {
        return None;
    }
    let (flow, l4) = tc::parse(ctx).ok()?;
    if pod_range(flow.src_addr)?.node_addr != config.node_addr
        || flow.src_addr == config.node_addr
        || keeps_pod_source(flow.dst_addr)
    {
        return None;
    }
    let port = match node_port(&flow, config.node_addr) {
        Ok(port) => port,
        Err(reason) => return Some(reason),
    };
    let rewritten = tc::rewrite(
        ctx,
        l4,
        flow.proto,
        Side::Source,
        (flow.src_addr, config.node_addr),
        (flow.src_port, port),
    );
    Some(match rewritten {
        Ok(()) => Reason::Masqueraded,
        Err(_) => Reason::DropRewriteFailed,
    })
}

/// Gives a reply to a masqueraded flow (arriving on the underlay interface) its pod's
/// address and port back. The node's own traffic pays a port comparison (its ports are
/// below the masquerade range) or one lookup that misses.
#[inline(always)]
pub fn unmasquerade(ctx: &TcContext, config: &DatapathConfig) -> Option<Reason> {
    if config.flags & CONFIG_MASQUERADE == 0 {
        return None;
    }
    let (flow, l4) = tc::parse(ctx).ok()?;
    if flow.dst_addr != config.node_addr || u16::from_be(flow.dst_port) < MASQUERADE_PORT_MIN {
        return None;
    }
    let key = in_key(
        (flow.src_addr, flow.src_port),
        (flow.dst_addr, flow.dst_port),
        flow.proto,
    );
    let pointer = MASQUERADE.get_ptr_mut(key)?;
    // SAFETY: a pointer into the map, copied at once.
    let pod = unsafe { *pointer };
    let now = lb::now_secs();
    if ct_expired(pod.state, pod.last_seen_secs, now) {
        return None;
    }
    let state = state_after(pod.state, &flow, true);
    // SAFETY: a pointer into the masquerade map.
    unsafe { lb::touch(pointer, state, now) };
    if state != pod.state {
        lb::advance_partner(
            &MASQUERADE,
            out_key(
                (pod.addr, pod.port),
                (flow.src_addr, flow.src_port),
                flow.proto,
            ),
            state,
        );
    }
    let rewritten = tc::rewrite(
        ctx,
        l4,
        flow.proto,
        Side::Destination,
        (flow.dst_addr, pod.addr),
        (flow.dst_port, pod.port),
    );
    Some(match rewritten {
        Ok(()) => Reason::Unmasqueraded,
        Err(_) => Reason::DropRewriteFailed,
    })
}
