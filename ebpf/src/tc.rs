//! East-west: TC programs on each pod's host-side veth. Packets leaving a pod for a
//! service frontend are translated to a backend; replies are translated back, either as
//! they leave a local backend (`berth_from_pod`) or as they enter the client pod
//! (`berth_to_pod`) when the backend is on another node.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_redirect_peer,
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::warn;
use berth_ebpf_common::{HAIRPIN_ADDR, IPPROTO_TCP, IPPROTO_UDP, Reason};

use crate::{
    lb::{self, Flow},
    maps::{POD_INTERFACES, account, config, count},
    packet, policy, route,
};

const ETH_HLEN: usize = 14;
const IP_TTL: usize = ETH_HLEN + 8;
const IP_CHECK: usize = ETH_HLEN + 10;
const IP_SRC: usize = ETH_HLEN + 12;
const IP_DST: usize = ETH_HLEN + 16;

#[classifier]
pub fn berth_from_pod(ctx: TcContext) -> i32 {
    let reason = from_pod(&ctx);
    let action = verdict(reason);
    if matches!(
        reason,
        Reason::Translated | Reason::ReverseTranslated | Reason::PassNotService
    ) {
        deliver_to_local_pod(&ctx).unwrap_or(action)
    } else {
        action
    }
}

#[classifier]
pub fn berth_to_pod(ctx: TcContext) -> i32 {
    verdict(to_pod(&ctx))
}

#[inline(always)]
fn verdict(reason: Reason) -> i32 {
    count(reason);
    if reason.is_drop() {
        TC_ACT_SHOT
    } else {
        TC_ACT_OK
    }
}

fn from_pod(ctx: &TcContext) -> Reason {
    let Some(config) = config() else {
        return Reason::PassNotConfigured;
    };
    if spoofed(ctx) {
        return Reason::DropSpoofedSource;
    }
    let (flow, l4) = match parse(ctx) {
        Ok(parsed) => parsed,
        Err(reason) => return reason,
    };
    // Taken before translation: a flow already let out costs one lookup here.
    let egress = policy::Egress::of(&flow);
    let Some(service) = lb::service(&flow) else {
        if let Err(reason) = egress.let_out(&flow, (flow.dst_addr, flow.dst_port)) {
            return reason;
        }
        return reverse(ctx, &flow, l4);
    };
    let target = match lb::forward(&service, &flow, &config, lb::Spread::RoundRobin) {
        Ok(target) => target,
        Err(reason) => {
            warn!(
                ctx,
                "service {} has no active backend; dropping", service.id
            );
            return reason;
        }
    };
    let entry = target.entry;
    // The egress policy decides on the chosen backend, as the ingress policy does.
    if let Err(reason) = egress.let_out(&flow, (entry.addr, entry.port)) {
        return reason;
    }
    // Replies come back through this node whatever node the backend is on: the client
    // pod's veth (remote backend) or the backend's own veth (local backend).
    lb::track_reply(&flow, &entry, target.reply);
    if rewrite(
        ctx,
        l4,
        flow.proto,
        Side::Destination,
        (flow.dst_addr, entry.addr),
        (flow.dst_port, entry.port),
    )
    .is_err()
    {
        return Reason::DropRewriteFailed;
    }
    // Hairpin: the pod reaches itself through its Service. From its own address the
    // packet would be answered inside the pod, past this program; from HAIRPIN_ADDR the
    // answer leaves through the veth and is translated back like any backend's.
    let source = lb::client_source(&flow, &entry);
    if source != flow.src_addr
        && rewrite_address(ctx, l4, flow.proto, Side::Source, (flow.src_addr, source)).is_err()
    {
        return Reason::DropRewriteFailed;
    }
    account(&entry, u64::from(ctx.len()), target.new_flow);
    Reason::Translated
}

/// Whether an IPv4 packet leaving a pod carries a source address other than the pod's
/// (the agent registers each pod veth with its pod's address before it attaches the
/// programs). Only IPv4 is checked: ARP and IPv6 pass as before, and IPv4 packets too
/// short to hold a source address are left to the parser's reasons.
#[inline(always)]
fn spoofed(ctx: &TcContext) -> bool {
    // SAFETY: reading a field of the program's own context.
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: copied out at once; the agent replaces whole entries.
    let Some(pod_addr) = (unsafe { POD_INTERFACES.get(ingress) }).copied() else {
        return false;
    };
    match (
        packet::read::<u16>(ctx, 12),
        packet::read::<u32>(ctx, IP_SRC),
    ) {
        (Some(ether_type), Some(src)) => ether_type == 0x0800u16.to_be() && src != pod_addr,
        _ => false,
    }
}

/// Every packet the node's stack delivers into a pod passes here: from other nodes (in
/// either routing mode), from outside through a NodePort or LoadBalancer address, from
/// the node itself, and from pods of this node when the shortcut past the stack is not
/// taken. So the pod's ingress policy is checked here, on the packet as the pod will see
/// it (after a reply's translation back to its frontend).
fn to_pod(ctx: &TcContext) -> Reason {
    if config().is_none() {
        return Reason::PassNotConfigured;
    }
    let (flow, l4) = match parse(ctx) {
        Ok(parsed) => parsed,
        Err(reason) => return reason,
    };
    let reason = reverse(ctx, &flow, l4);
    let delivered = if reason == Reason::ReverseTranslated {
        match parse(ctx) {
            Ok((rewritten, _)) => rewritten,
            Err(reason) => return reason,
        }
    } else {
        flow
    };
    // SAFETY: reading a field of the program's own context.
    let pod_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    match policy::ingress(ctx, &delivered, pod_ifindex) {
        Ok(()) => reason,
        Err(drop) => drop,
    }
}

/// Restores the frontend as the source of a reply from a backend.
#[inline(always)]
fn reverse(ctx: &TcContext, flow: &Flow, l4: usize) -> Reason {
    let Some(entry) = lb::reply(flow) else {
        return Reason::PassNotService;
    };
    // A hairpin reply: the client is the backend pod itself.
    if flow.dst_addr == HAIRPIN_ADDR
        && rewrite_address(
            ctx,
            l4,
            flow.proto,
            Side::Destination,
            (HAIRPIN_ADDR, flow.src_addr),
        )
        .is_err()
    {
        return Reason::DropRewriteFailed;
    }
    if rewrite(
        ctx,
        l4,
        flow.proto,
        Side::Source,
        (flow.src_addr, entry.addr),
        (flow.src_port, entry.port),
    )
    .is_err()
    {
        return Reason::DropRewriteFailed;
    }
    account(&entry, u64::from(ctx.len()), false);
    Reason::ReverseTranslated
}

/// Hands a packet for a pod on this node straight to that pod's namespace
/// (bpf_redirect_peer), the way Cilium's host routing does: it skips the node's routing,
/// netfilter and the second veth hop's backlog queue, which is most of what a pod-to-pod
/// packet costs. The packet is routed as the node would (FIB lookup: a pod's /32 route
/// names its veth), so anything not for a local pod — other nodes, the node itself, an
/// unresolved neighbour, an expiring TTL — returns None and takes the normal path.
/// Replies from the destination pod come back through its own `berth_from_pod`, so
/// skipping `berth_to_pod` on the way in loses nothing: that program only restores
/// replies arriving from other nodes.
#[inline(always)]
fn deliver_to_local_pod(ctx: &TcContext) -> Option<i32> {
    let src: u32 = packet::read(ctx, IP_SRC)?;
    let dst: u32 = packet::read(ctx, IP_DST)?;
    let ttl_proto: u16 = packet::read(ctx, IP_TTL)?;
    let [ttl, proto] = ttl_proto.to_ne_bytes();
    if ttl <= 1 {
        return None;
    }
    // SAFETY: reading a field of the program's own context.
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: ctx.skb.skb is this program's context.
    let fib = unsafe { route::lookup(ctx.skb.skb.cast(), ingress, (src, dst), proto, 0) }?;
    POD_INTERFACES.get_ptr(fib.ifindex)?;
    // The destination pod's ingress policy, on the packet as it will arrive (after its
    // translation). Packets that are not TCP or UDP are not checked (see DATAPATH.md).
    if let Ok((flow, _)) = parse(ctx)
        && let Err(reason) = policy::ingress(ctx, &flow, fib.ifindex)
    {
        count(reason);
        return Some(TC_ACT_SHOT);
    }
    // A router's hop: TTL down by one, the header checksum adjusted to match.
    let decremented = u16::from_ne_bytes([ttl - 1, proto]);
    ctx.l3_csum_replace(IP_CHECK, u64::from(ttl_proto), u64::from(decremented), 2)
        .ok()?;
    ctx.store(IP_TTL, &decremented, 0).ok()?;
    let [d0, d1, d2, d3, d4, d5] = fib.dmac;
    let [s0, s1, s2, s3, s4, s5] = fib.smac;
    let macs = [d0, d1, d2, d3, d4, d5, s0, s1, s2, s3, s4, s5];
    ctx.store(0, &macs, 0).ok()?;
    count(Reason::DeliveredToPod);
    // SAFETY: helper without memory arguments; returns TC_ACT_REDIRECT or TC_ACT_SHOT.
    Some(unsafe { bpf_redirect_peer(fib.ifindex, 0) } as i32)
}

/// Reads the IPv4 TCP/UDP fields; everything else is a pass (or drop) reason.
#[inline(always)]
pub(crate) fn parse(ctx: &TcContext) -> Result<(Flow, usize), Reason> {
    let ether_type: u16 = packet::read(ctx, 12).ok_or(Reason::PassTruncated)?;
    if ether_type != 0x0800u16.to_be() {
        return Err(Reason::PassNotIpv4);
    }
    let version_tos: u16 = packet::read(ctx, ETH_HLEN).ok_or(Reason::PassTruncated)?;
    let [version_ihl, _] = version_tos.to_ne_bytes();
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < 20 {
        return Err(Reason::DropBadIpHeader);
    }
    let frag: u16 = packet::read(ctx, ETH_HLEN + 6).ok_or(Reason::PassTruncated)?;
    if u16::from_be(frag) & 0x3fff != 0 {
        return Err(Reason::PassFragment);
    }
    let ttl_proto: u16 = packet::read(ctx, IP_TTL).ok_or(Reason::PassTruncated)?;
    let [_, proto] = ttl_proto.to_ne_bytes();
    let l4 = ETH_HLEN + header_len;
    let l4_needed = match proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        _ => return Err(Reason::PassNotTcpUdp),
    };
    if (ctx.len() as usize) < l4 + l4_needed {
        return Err(Reason::PassTruncated);
    }
    let src_addr: u32 = packet::read(ctx, IP_SRC).ok_or(Reason::PassTruncated)?;
    let dst_addr: u32 = packet::read(ctx, IP_DST).ok_or(Reason::PassTruncated)?;
    // Both ports in one read, each kept in network order as the maps' keys hold them.
    let ports: u32 = packet::read(ctx, l4).ok_or(Reason::PassTruncated)?;
    let [s0, s1, d0, d1] = ports.to_ne_bytes();
    let (src_port, dst_port) = (u16::from_ne_bytes([s0, s1]), u16::from_ne_bytes([d0, d1]));
    let tcp_flags: u8 = if proto == IPPROTO_TCP {
        let offset_flags: u16 = packet::read(ctx, l4 + 12).ok_or(Reason::PassTruncated)?;
        offset_flags.to_ne_bytes()[1]
    } else {
        0
    };
    Ok((
        Flow {
            src_addr,
            dst_addr,
            src_port,
            dst_port,
            proto,
            opens_connection: lb::opens_connection(proto, tcp_flags),
            tcp_flags,
            hairpins: true,
        },
        l4,
    ))
}

#[derive(Clone, Copy)]
pub(crate) enum Side {
    Source,
    Destination,
}

/// Rewrites one side's address alone (see [`rewrite`]).
#[inline(always)]
fn rewrite_address(
    ctx: &TcContext,
    l4: usize,
    proto: u8,
    side: Side,
    (old_addr, new_addr): (u32, u32),
) -> Result<(), i64> {
    let addr_at = match side {
        Side::Source => IP_SRC,
        Side::Destination => IP_DST,
    };
    let (check_at, mangled) = l4_checksum(l4, proto);
    ctx.l4_csum_replace(
        check_at,
        u64::from(old_addr),
        u64::from(new_addr),
        u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
    )?;
    ctx.l3_csum_replace(IP_CHECK, u64::from(old_addr), u64::from(new_addr), 4)?;
    ctx.store(addr_at, &new_addr, 0)
}

/// Where the L4 checksum is, and the flag that keeps a zero UDP checksum ("none") zero.
#[inline(always)]
fn l4_checksum(l4: usize, proto: u8) -> (usize, u64) {
    if proto == IPPROTO_TCP {
        (l4 + 16, 0)
    } else {
        (l4 + 6, u64::from(BPF_F_MARK_MANGLED_0))
    }
}

/// Rewrites one side's address and port, fixing the IPv4 and L4 checksums through the
/// kernel helpers, which also handle checksum-offloaded (CHECKSUM_PARTIAL) packets from
/// local pods correctly.
#[inline(always)]
pub(crate) fn rewrite(
    ctx: &TcContext,
    l4: usize,
    proto: u8,
    side: Side,
    (old_addr, new_addr): (u32, u32),
    (old_port, new_port): (u16, u16),
) -> Result<(), i64> {
    let port_at = match side {
        Side::Source => l4,
        Side::Destination => l4 + 2,
    };
    let (check_at, mangled) = l4_checksum(l4, proto);
    ctx.l4_csum_replace(
        check_at,
        u64::from(old_port),
        u64::from(new_port),
        mangled | 2,
    )?;
    ctx.store(port_at, &new_port, 0)?;
    rewrite_address(ctx, l4, proto, side, (old_addr, new_addr))
}
