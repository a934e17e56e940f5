//! Pod traffic between nodes that share no link: IPIP added and removed by TC programs
//! on the node's underlay interface (the one holding its address). No tunnel device is
//! involved, so nodes need no ipip module: the kernel's routes send packets for a
//! tunnelled pod range out of the underlay interface towards the next hop to the range's
//! node (with an MTU 20 bytes below the link's), `berth_tunnel_encap` puts the outer
//! header on as they leave, and `berth_tunnel_decap` takes it off on the other node
//! before the kernel routes the inner packet to its pod.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_OK, TC_ACT_SHOT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    macros::classifier,
    programs::TcContext,
};
use berth_ebpf_common::{DatapathConfig, IPPROTO_IPIP, POD_RANGE_TUNNEL, Reason};

use crate::{
    ip::{Ipv4Header, VERSION_IHL_PLAIN, ipip_header},
    maps::{NODES, config, count, pod_range},
    nat,
};

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;

/// The counted outcome, or None for packets that are none of the tunnel's business
/// (passed uncounted: every packet of the node crosses these programs).
#[inline(always)]
fn verdict(reason: Option<Reason>) -> i32 {
    match reason {
        None => TC_ACT_OK,
        Some(reason) => {
            count(reason);
            if reason.is_drop() {
                TC_ACT_SHOT
            } else {
                TC_ACT_OK
            }
        }
    }
}

#[inline(always)]
fn ipv4_header(ctx: &TcContext) -> Option<Ipv4Header> {
    let ether_type: u16 = ctx.load(12).ok()?;
    if ether_type != 0x0800u16.to_be() {
        return None;
    }
    ctx.load(ETH_HLEN).ok()
}

/// Egress of the underlay interface: IPIP for tunnelled pod ranges, then masquerade for
/// pods' traffic leaving the cluster (see `nat`).
#[classifier]
pub fn berth_tunnel_encap(ctx: TcContext) -> i32 {
    let Some(config) = config() else {
        return TC_ACT_OK;
    };
    verdict(encap(&ctx, &config).or_else(|| nat::masquerade(&ctx, &config)))
}

fn encap(ctx: &TcContext, config: &DatapathConfig) -> Option<Reason> {
    let inner = ipv4_header(ctx)?;
    let range = pod_range(inner.dst_addr)?;
    if range.flags & POD_RANGE_TUNNEL == 0 || inner.version_ihl >> 4 != 4 {
        return None;
    }
    // The outer length must fit its 16 bits (IPv4 BIG TCP packets, length 0, do not).
    let inner_len = u16::from_be(inner.total_len);
    if inner_len == 0 || inner_len > u16::MAX - IPV4_HLEN as u16 {
        return Some(Reason::DropRewriteFailed);
    }
    // Room for the outer header behind the Ethernet header. The kernel marks a GSO
    // packet as IPIP-encapsulated, so it is segmented with both headers; the segments'
    // size stays (the route's MTU already leaves room for the outer header).
    let flags = BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO;
    if ctx
        .adjust_room(IPV4_HLEN as i32, BPF_ADJ_ROOM_MAC, u64::from(flags))
        .is_err()
    {
        return Some(Reason::DropRewriteFailed);
    }
    let outer = ipip_header(config.node_addr, range.node_addr, inner_len, inner.tos, 0);
    if ctx.store(ETH_HLEN, &outer, 0).is_err() {
        return Some(Reason::DropRewriteFailed);
    }
    Some(Reason::PodEncapsulated)
}

/// Ingress of the underlay interface: IPIP from nodes for pods here, then replies to
/// masqueraded flows.
#[classifier]
pub fn berth_tunnel_decap(ctx: TcContext) -> i32 {
    let Some(config) = config() else {
        return TC_ACT_OK;
    };
    verdict(decap(&ctx, &config).or_else(|| nat::unmasquerade(&ctx, &config)))
}

/// Unwraps IPIP addressed to this node when it comes from a node (`BERTH_NODES`) and
/// carries a packet from that node's pods or the node itself to a pod of this node:
/// the tunnel reaches pods as plain routing between the nodes would, and nobody else can
/// use it to reach them (or, through this node, anything else).
fn decap(ctx: &TcContext, config: &DatapathConfig) -> Option<Reason> {
    let outer = ipv4_header(ctx)?;
    if outer.proto != IPPROTO_IPIP || outer.dst_addr != config.node_addr {
        return None;
    }
    // Fragments of IPIP are nobody's here: the programs never fragment the outer header.
    if outer.version_ihl != VERSION_IHL_PLAIN || u16::from_be(outer.frag) & 0x3fff != 0 {
        return Some(Reason::DropTunnelSource);
    }
    // SAFETY: only checked for presence.
    if unsafe { NODES.get(outer.src_addr) }.is_none() {
        return Some(Reason::DropTunnelSource);
    }
    let Ok(inner) = ctx.load::<Ipv4Header>(ETH_HLEN + IPV4_HLEN) else {
        return Some(Reason::DropTunnelSource);
    };
    let from_sender = inner.src_addr == outer.src_addr
        || pod_range(inner.src_addr).is_some_and(|range| range.node_addr == outer.src_addr);
    let to_local_pod =
        pod_range(inner.dst_addr).is_some_and(|range| range.node_addr == config.node_addr);
    if inner.version_ihl >> 4 != 4 || !from_sender || !to_local_pod {
        return Some(Reason::DropTunnelSource);
    }
    // The inner header is IPv4 like the outer one, so no DECAP_L3 flag is needed (and
    // kernels before 6.3 accept the call).
    let flags = BPF_F_ADJ_ROOM_FIXED_GSO;
    if ctx
        .adjust_room(-(IPV4_HLEN as i32), BPF_ADJ_ROOM_MAC, u64::from(flags))
        .is_err()
    {
        return Some(Reason::DropRewriteFailed);
    }
    Some(Reason::PodDecapsulated)
}
