//! North-south: XDP on the node's external interface. Traffic to a service's external
//! frontend (NodePort address, LoadBalancer IP) is accepted by any node. The backend is
//! chosen by the same Maglev table on every node; a local backend gets the packet
//! translated in place, a backend on another node gets it inside IPIP (outer destination
//! the backend, outer IP id its port) and that node translates and delivers it. Replies
//! leave the backend's node directly with the frontend restored as their source, and
//! the client's address is never rewritten.

use core::{
    mem::{MaybeUninit, size_of},
    ptr,
};

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    macros::xdp,
    programs::XdpContext,
};
use berth_ebpf_common::{
    BackendAddr, CT_FLAG_REMOTE, CtEntry, DatapathConfig, IPPROTO_IPIP, IPPROTO_TCP, IPPROTO_UDP,
    POD_RANGE_TUNNEL, Reason, SVC_FLAG_EXTERNAL,
};

use crate::{
    csum,
    ip::{Ipv4Header, VERSION_IHL_PLAIN, ipip_header},
    lb::{self, Flow},
    maps::{LOCAL_BACKENDS, NODES, account, config, count, pod_range},
    route,
};

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;

#[xdp]
pub fn berth_external(ctx: XdpContext) -> u32 {
    let (reason, action) = external(&ctx);
    count(reason);
    action
}

#[inline(always)]
fn pass(reason: Reason) -> (Reason, u32) {
    (reason, xdp_action::XDP_PASS)
}

#[inline(always)]
fn drop(reason: Reason) -> (Reason, u32) {
    (reason, xdp_action::XDP_DROP)
}

/// Reads a value at `offset` through bpf_xdp_load_bytes. The helper checks bounds
/// itself, which keeps the verifier independent of how the compiler rearranges direct
/// packet pointer arithmetic (variable IP header lengths defeat its range tracking).
#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let mut value = MaybeUninit::<T>::uninit();
    // SAFETY: the helper writes exactly size_of::<T>() bytes into `value` or fails.
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            offset as u32,
            value.as_mut_ptr().cast(),
            size_of::<T>() as u32,
        )
    };
    // SAFETY: rc == 0 means every byte of `value` was written; T is plain data.
    (rc == 0).then(|| unsafe { value.assume_init() })
}

#[inline(always)]
fn write<T>(ctx: &XdpContext, offset: usize, value: T) -> Option<()> {
    let mut value = value;
    // SAFETY: the helper reads size_of::<T>() bytes from `value` and checks packet bounds.
    let rc = unsafe {
        bpf_xdp_store_bytes(
            ctx.ctx,
            offset as u32,
            ptr::addr_of_mut!(value).cast(),
            size_of::<T>() as u32,
        )
    };
    (rc == 0).then_some(())
}

/// Where an IPv4 TCP/UDP packet's fields are, and their values.
struct Parsed {
    flow: Flow,
    /// IPv4 total length.
    ip_len: u16,
    /// Offset of the IPv4 header.
    l3: usize,
    /// Offset of the TCP/UDP header.
    l4: usize,
}

/// Parses the IPv4 header at `l3` and the ports after it.
#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize) -> Result<Parsed, Reason> {
    // One bounds check for the whole fixed header first: the verifier then knows every
    // fixed-offset field is inside the packet, whatever the compiler merges later.
    let header: Ipv4Header = read(ctx, l3).ok_or(Reason::PassTruncated)?;
    let header_len = usize::from(header.version_ihl & 0x0f) * 4;
    if header.version_ihl >> 4 != 4 || header_len < IPV4_HLEN {
        return Err(Reason::DropBadIpHeader);
    }
    if u16::from_be(header.frag) & 0x3fff != 0 {
        return Err(Reason::PassFragment);
    }
    let proto = header.proto;
    let l4 = l3 + header_len;
    let (src_port, dst_port, tcp_flags) = match proto {
        IPPROTO_TCP => {
            // The whole header, checksum included: translation rewrites it.
            let tcp: [u16; 10] = read(ctx, l4).ok_or(Reason::PassTruncated)?;
            // Bytes 12 and 13: data offset, then the flags.
            (tcp[0], tcp[1], u16::from_be(tcp[6]) as u8)
        }
        IPPROTO_UDP => {
            let ports: [u16; 4] = read(ctx, l4).ok_or(Reason::PassTruncated)?;
            (ports[0], ports[1], 0)
        }
        IPPROTO_IPIP => (0, 0, 0),
        _ => return Err(Reason::PassNotTcpUdp),
    };
    Ok(Parsed {
        ip_len: u16::from_be(header.total_len),
        flow: Flow {
            src_addr: header.src_addr,
            dst_addr: header.dst_addr,
            src_port,
            dst_port,
            proto,
            opens_connection: lb::opens_connection(proto, tcp_flags),
            tcp_flags,
            hairpins: false,
        },
        l3,
        l4,
    })
}

fn external(ctx: &XdpContext) -> (Reason, u32) {
    let Some(config) = config() else {
        return pass(Reason::PassNotConfigured);
    };
    let Some(ether_type) = read::<u16>(ctx, 12) else {
        return pass(Reason::PassTruncated);
    };
    if ether_type != 0x0800u16.to_be() {
        return pass(Reason::PassNotIpv4);
    }
    let packet = match parse_ipv4(ctx, ETH_HLEN) {
        Ok(packet) => packet,
        Err(reason) if reason.is_drop() => return drop(reason),
        Err(reason) => return pass(reason),
    };
    if packet.flow.proto == IPPROTO_IPIP {
        if packet.flow.dst_addr == config.node_addr {
            return from_node_tunnel(ctx, &packet, &config);
        }
        return from_tunnel(ctx, &packet, &config);
    }
    let Some(service) = lb::service(&packet.flow) else {
        return pass(Reason::PassNotService);
    };
    if service.flags & SVC_FLAG_EXTERNAL == 0 {
        return pass(Reason::PassNotService);
    }
    let target = match lb::forward(&service, &packet.flow, &config, lb::Spread::Consistent) {
        Ok(target) => target,
        Err(reason) => return drop(reason),
    };
    let bytes = u64::from(packet.ip_len) + ETH_HLEN as u64;
    account(&target.entry, bytes, target.new_flow);
    if target.entry.flags & CT_FLAG_REMOTE != 0 {
        // The backend's node translates the replies: it records them when it unwraps.
        return to_tunnel(ctx, &packet, &config, &target.entry);
    }
    lb::track_reply(&packet.flow, &target.entry, target.reply);
    match translate_destination(ctx, &packet, target.entry.addr, target.entry.port) {
        Some(()) => pass(Reason::Translated),
        None => drop(Reason::DropRewriteFailed),
    }
}

/// DNAT in place with incremental checksum updates.
#[inline(always)]
fn translate_destination(
    ctx: &XdpContext,
    packet: &Parsed,
    new_addr: u32,
    new_port: u16,
) -> Option<()> {
    let flow = &packet.flow;
    let ip_check: u16 = read(ctx, packet.l3 + 10)?;
    write(
        ctx,
        packet.l3 + 10,
        csum::replace4(ip_check, flow.dst_addr, new_addr),
    )?;
    write(ctx, packet.l3 + 16, new_addr)?;
    let check_at = packet.l4 + if flow.proto == IPPROTO_TCP { 16 } else { 6 };
    let l4_check: u16 = read(ctx, check_at)?;
    // A zero UDP checksum means "none" and stays zero.
    if flow.proto == IPPROTO_TCP || l4_check != 0 {
        let mut updated = csum::replace4(l4_check, flow.dst_addr, new_addr);
        updated = csum::replace2(updated, flow.dst_port, new_port);
        if flow.proto == IPPROTO_UDP && updated == 0 {
            updated = 0xffff;
        }
        write(ctx, check_at, updated)?;
    }
    write(ctx, packet.l4 + 2, new_port)
}

/// Sends the untouched packet to the backend's node inside IPIP. The outer destination
/// is the backend itself, its port in the IP id; when the backend's node is on another
/// link (its pod range is tunnelled), the underlay cannot route a pod address, so that
/// packet travels inside one more IPIP header addressed to the node.
#[inline(always)]
fn to_tunnel(
    ctx: &XdpContext,
    packet: &Parsed,
    config: &DatapathConfig,
    entry: &CtEntry,
) -> (Reason, u32) {
    let node = pod_range(entry.addr)
        .filter(|range| range.flags & POD_RANGE_TUNNEL != 0)
        .map(|range| range.node_addr);
    let headers = if node.is_some() { 2 } else { 1 } * IPV4_HLEN;
    let outer_len = packet.ip_len.saturating_add(headers as u16);
    let ingress = ctx.ingress_ifindex() as u32;
    // Route first, so an unreachable node leaves the packet unchanged.
    // SAFETY: ctx.ctx is this program's context.
    let route = unsafe {
        route::lookup(
            ctx.ctx.cast(),
            ingress,
            (config.node_addr, node.unwrap_or(entry.addr)),
            IPPROTO_IPIP,
            outer_len,
        )
    };
    let Some(fib) = route else {
        return drop(Reason::DropNoRoute);
    };
    // SAFETY: growing the headroom by the outer headers; pointers are re-derived after.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(headers as i32)) } != 0 {
        return drop(Reason::DropRewriteFailed);
    }
    // The backend's port rides in the id field: the outer header is never fragmented
    // (DF is set), so the id carries no other meaning (RFC 6864).
    let to_backend = ipip_header(config.node_addr, entry.addr, packet.ip_len, 0, entry.port);
    let headers_written = match node {
        Some(node) => {
            let to_node = ipip_header(
                config.node_addr,
                node,
                packet.ip_len.saturating_add(IPV4_HLEN as u16),
                0,
                0,
            );
            write(ctx, ETH_HLEN, to_node).is_some()
                && write(ctx, ETH_HLEN + IPV4_HLEN, to_backend).is_some()
        }
        None => write(ctx, ETH_HLEN, to_backend).is_some(),
    };
    let ethernet = (fib.dmac, fib.smac, 0x0800u16.to_be());
    if !headers_written
        || write(ctx, 0, ethernet.0).is_none()
        || write(ctx, 6, ethernet.1).is_none()
        || write(ctx, 12, ethernet.2).is_none()
    {
        return drop(Reason::DropRewriteFailed);
    }
    if fib.ifindex == ingress {
        (Reason::ForwardedToNode, xdp_action::XDP_TX)
    } else {
        // SAFETY: helper without memory arguments; returns XDP_REDIRECT or XDP_ABORTED.
        let action = unsafe { bpf_redirect(fib.ifindex, 0) } as u32;
        (Reason::ForwardedToNode, action)
    }
}

/// Removes the outer IPv4 header behind the Ethernet header, which moves up by as much.
#[inline(always)]
fn strip_outer_header(ctx: &XdpContext) -> Result<(), (Reason, u32)> {
    let ethernet = read::<[u8; ETH_HLEN]>(ctx, 0).ok_or(pass(Reason::PassTruncated))?;
    write(ctx, IPV4_HLEN, ethernet).ok_or(drop(Reason::DropRewriteFailed))?;
    // SAFETY: shrinking the headroom by the outer header; pointers are re-derived after.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, IPV4_HLEN as i32) } != 0 {
        return Err(drop(Reason::DropRewriteFailed));
    }
    Ok(())
}

/// IPIP addressed to this node itself: a north-south flow that a node on another link
/// wrapped once more around its IPIP to a backend here (see [`to_tunnel`]) is unwrapped
/// to that IPIP and handled as one; anything else is pod traffic of the tunnel, left to
/// the underlay interface's TC program, which checks and unwraps it.
#[inline(always)]
fn from_node_tunnel(ctx: &XdpContext, outer: &Parsed, config: &DatapathConfig) -> (Reason, u32) {
    // SAFETY: only checked for presence.
    if unsafe { NODES.get(outer.flow.src_addr) }.is_none() || outer.l4 != ETH_HLEN + IPV4_HLEN {
        return pass(Reason::PassNodeTunnel);
    }
    let Some(inner) = read::<Ipv4Header>(ctx, ETH_HLEN + IPV4_HLEN) else {
        return pass(Reason::PassTruncated);
    };
    if inner.proto != IPPROTO_IPIP
        || inner.version_ihl != VERSION_IHL_PLAIN
        || inner.src_addr != outer.flow.src_addr
    {
        return pass(Reason::PassNodeTunnel);
    }
    if let Err(verdict) = strip_outer_header(ctx) {
        return verdict;
    }
    match parse_ipv4(ctx, ETH_HLEN) {
        Ok(packet) => from_tunnel(ctx, &packet, config),
        Err(reason) if reason.is_drop() => drop(reason),
        Err(reason) => pass(reason),
    }
}

/// Unwraps a north-south flow another node sent here and hands it to the local backend.
#[inline(always)]
fn from_tunnel(ctx: &XdpContext, outer: &Parsed, config: &DatapathConfig) -> (Reason, u32) {
    // SAFETY: copied out at once.
    if unsafe { NODES.get(outer.flow.src_addr) }.is_none() {
        return pass(Reason::PassForeignTunnel);
    }
    if outer.l4 != ETH_HLEN + IPV4_HLEN {
        return pass(Reason::PassForeignTunnel);
    }
    let backend_addr = outer.flow.dst_addr;
    let Some(backend_port) = read::<u16>(ctx, ETH_HLEN + 4) else {
        return pass(Reason::PassTruncated);
    };
    let inner = match parse_ipv4(ctx, ETH_HLEN + IPV4_HLEN) {
        Ok(inner) if inner.flow.proto != IPPROTO_IPIP => inner,
        Ok(_) => return pass(Reason::PassForeignTunnel),
        Err(reason) if reason.is_drop() => return drop(reason),
        Err(reason) => return pass(reason),
    };
    let client = inner.flow;
    // Only a local backend of an external frontend is a tunnel's destination: anything
    // else (a pod's port that serves no Service, a ClusterIP) would let any node, or
    // anyone who can forge a node's address, reach pods past the network's policy. The
    // inner destination is the frontend on the node that chose the backend: a NodePort
    // there carries that node's address, so it is looked up as the same port on this
    // node's own address (NodePorts are the same on every node).
    let mut frontend = client;
    // SAFETY: only checked for presence.
    if unsafe { NODES.get(client.dst_addr) }.is_some() {
        frontend.dst_addr = config.node_addr;
    }
    let local_backend = BackendAddr {
        addr: backend_addr,
        port: backend_port,
        _pad: 0,
    };
    let service = lb::service(&frontend).filter(|service| service.flags & SVC_FLAG_EXTERNAL != 0);
    // SAFETY: only checked for presence.
    let Some(service) = service.filter(|_| unsafe { LOCAL_BACKENDS.get(local_backend) }.is_some())
    else {
        return drop(Reason::DropTunnelNotBackend);
    };
    if let Err(verdict) = strip_outer_header(ctx) {
        return verdict;
    }
    let packet = Parsed {
        ip_len: inner.ip_len,
        flow: client,
        l3: inner.l3 - IPV4_HLEN,
        l4: inner.l4 - IPV4_HLEN,
    };
    if translate_destination(ctx, &packet, backend_addr, backend_port).is_none() {
        return drop(Reason::DropRewriteFailed);
    }
    let entry = CtEntry {
        addr: backend_addr,
        port: backend_port,
        // Backend ids are node-local; the node that chose the backend counts per backend.
        backend_id: u32::MAX,
        service_id: service.id,
        ..CtEntry::default()
    };
    lb::track_tunnelled_reply(&client, &entry);
    pass(Reason::TunnelDelivered)
}
