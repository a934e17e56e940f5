//! NetworkPolicy at the door of each pod on this node (Cilium's model): the peer's
//! address gives an identity (ipcache), and the pod's policy entries say whether that
//! identity may reach the port — the source for packets entering the pod, the
//! destination (after service translation) for packets leaving it. A flow once allowed
//! is remembered in the policy conntrack, so its later packets cost one lookup; replies
//! of flows a pod opened, or accepted, pass whatever its policies say.

use aya_ebpf::{
    bindings::{
        bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
    },
    helpers::{bpf_sk_lookup_tcp, bpf_sk_release},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use berth_ebpf_common::{
    CT_ESTABLISHED, CT_FLAG_POLICY_RULE, CT_POLICY_IN, CT_POLICY_IN_PEER, CT_POLICY_OUT,
    CT_UDP_STREAM, CtEntry, ENDPOINT_EGRESS_ISOLATED, ENDPOINT_INGRESS_ISOLATED, EndpointPolicy,
    FlowKey, HAIRPIN_ADDR, IDENTITY_ANY, IDENTITY_HOST, IDENTITY_WORLD, IPPROTO_TCP, POLICY_EGRESS,
    POLICY_INGRESS, POLICY_LOG_PER_SECOND, POLICY_PREFIX_FULL, PolicyDrop, PolicyKey, Reason,
    ct_expired,
};

use crate::{
    lb::{Flow, now_secs, touch},
    maps::{
        IPCACHE, POD_NSIDS, POLICY, POLICY_CT, POLICY_ENDPOINTS, POLICY_LOG, POLICY_LOG_BUDGET,
        POLICY_STATS,
    },
};

/// A policy conntrack key of `flow`'s own packets, or (`reply`) of its replies:
/// `direction` is `CT_POLICY_IN` (packets entering the pod at the key's destination) or
/// `CT_POLICY_OUT` (packets leaving the pod at its source).
#[inline(always)]
fn flow_key(flow: &Flow, direction: u8, reply: bool) -> FlowKey {
    let (near, far) = (
        (flow.src_addr, flow.src_port),
        (flow.dst_addr, flow.dst_port),
    );
    let (src, dst) = if reply { (far, near) } else { (near, far) };
    FlowKey {
        src_addr: src.0,
        dst_addr: dst.0,
        src_port: src.1,
        dst_port: dst.1,
        proto: flow.proto,
        direction,
        _pad: 0,
    }
}

/// The key of an ingress-isolated pod's verdict on TCP from `flow`'s source address to
/// its destination port, whatever the source port (see `CT_POLICY_IN_PEER`).
#[inline(always)]
fn peer_key(flow: &Flow) -> FlowKey {
    FlowKey {
        src_port: 0,
        ..flow_key(flow, CT_POLICY_IN_PEER, false)
    }
}

/// A listening socket's state (include/net/tcp_states.h).
const TCP_LISTEN: u32 = 10;

/// The state policy entries live in: a day for TCP, two minutes of silence for UDP.
#[inline(always)]
fn state_of(proto: u8) -> u8 {
    if proto == IPPROTO_TCP {
        CT_ESTABLISHED
    } else {
        CT_UDP_STREAM
    }
}

/// The isolation of the pod at `addr`, if some policy selects it.
#[inline(always)]
fn endpoint(addr: u32) -> Option<EndpointPolicy> {
    // SAFETY: copied out at once; the agent replaces whole entries.
    unsafe { POLICY_ENDPOINTS.get(addr) }.copied()
}

/// Whether the policy conntrack lets this packet through: an entry alive, and either a
/// reply's or allowed by a rule at the endpoint's current revision. Refreshes it, and
/// returns its flags and the policy id it holds (0: none).
#[inline(always)]
fn tracked(key: FlowKey, revision: u32) -> Option<(u8, u32)> {
    let entry = POLICY_CT.get_ptr_mut(key)?;
    // SAFETY: a pointer into the conntrack map, read at once.
    let (state, last_seen, flags, allowed_at, policy) = unsafe {
        (
            (*entry).state,
            (*entry).last_seen_secs,
            (*entry).flags,
            (*entry).backend_id,
            (*entry).service_id,
        )
    };
    let now = now_secs();
    if ct_expired(state, last_seen, now)
        || (flags & CT_FLAG_POLICY_RULE != 0 && allowed_at != revision)
    {
        return None;
    }
    // SAFETY: as above.
    unsafe { touch(entry, state, now) };
    Some((flags, policy))
}

/// Remembers a flow as let through: by a rule at `revision` (checked again when it
/// moves on), or as a reply (`None`, held while the flow lives); `policy` is the id a
/// peer's verdict counts its connections under (0 for the other keys).
#[inline(always)]
fn remember(key: FlowKey, revision: Option<u32>, policy: u32) {
    let entry = CtEntry {
        state: state_of(key.proto),
        flags: if revision.is_some() {
            CT_FLAG_POLICY_RULE
        } else {
            0
        },
        backend_id: revision.unwrap_or(0),
        service_id: policy,
        last_seen_secs: now_secs(),
        ..CtEntry::default()
    };
    let _ = POLICY_CT.insert(key, entry, 0);
}

/// Records a flow leaving a pod (before any translation), so its replies pass the pod's
/// ingress policy: on a TCP SYN, and on UDP packets (kept fresh by them; at most one
/// write a second per flow).
#[inline(always)]
fn track_opened(flow: &Flow) {
    let tcp = flow.proto == IPPROTO_TCP;
    if tcp && !flow.opens_connection {
        return;
    }
    let key = flow_key(flow, CT_POLICY_IN, true);
    if !tcp && let Some(entry) = POLICY_CT.get_ptr_mut(key) {
        // SAFETY: a pointer into the conntrack map.
        unsafe { touch(entry, CT_UDP_STREAM, now_secs()) };
        return;
    }
    remember(key, None, 0);
}

/// The pod's entry for `identity` covering the flow's protocol and the peer's port
/// (longest prefix: the rule for every protocol, one protocol, or a port range): the id
/// of the policy that allows it.
#[inline(always)]
fn rule(endpoint: u32, identity: u32, direction: u8, proto: u8, port: u16) -> Option<u32> {
    POLICY
        .get(Key::new(
            POLICY_PREFIX_FULL,
            PolicyKey {
                endpoint,
                identity,
                direction,
                proto,
                port,
            },
        ))
        .copied()
}

/// The verdict of an isolated pod's rules on a new flow with `peer` on the peer's
/// `port`: the allowing policy's id, or None. The host is always allowed (kubelet's
/// probes, and their answers), under no policy (0).
#[inline(always)]
fn verdict(endpoint: u32, peer: u32, direction: u8, proto: u8, port: u16) -> Option<u32> {
    let identity = IPCACHE
        .get(Key::new(32, peer))
        .copied()
        .unwrap_or(IDENTITY_WORLD);
    if identity == IDENTITY_HOST {
        return Some(0);
    }
    rule(endpoint, identity, direction, proto, port)
        .or_else(|| rule(endpoint, IDENTITY_ANY, direction, proto, port))
}

/// Counts a verdict under `policy` (0: none).
#[inline(always)]
fn count_verdict(policy: u32, direction: u8, allowed: bool) {
    if policy == 0 {
        return;
    }
    if let Some(verdicts) = POLICY_STATS.get_ptr_mut(policy) {
        // SAFETY: per-CPU slot; programs on this CPU run to completion without
        // preemption by another program touching the same slot.
        unsafe {
            match (direction == POLICY_INGRESS, allowed) {
                (true, true) => (*verdicts).ingress_allowed += 1,
                (true, false) => (*verdicts).ingress_denied += 1,
                (false, true) => (*verdicts).egress_allowed += 1,
                (false, false) => (*verdicts).egress_denied += 1,
            }
        }
    }
}

/// Counts a drop and reports it to the agent, within this CPU's budget of records a
/// second (the rest are counted only).
#[inline(always)]
fn denied(flow: &Flow, direction: u8, endpoint: u32, policy: u32) {
    count_verdict(policy, direction, false);
    let Some(budget) = POLICY_LOG_BUDGET.get_ptr_mut(0) else {
        return;
    };
    let now = now_secs();
    // SAFETY: per-CPU slot, as in `count_verdict`.
    unsafe {
        if (*budget).second != now {
            (*budget).second = now;
            (*budget).sent = 0;
        }
        if (*budget).sent >= POLICY_LOG_PER_SECOND {
            return;
        }
        (*budget).sent += 1;
    }
    let record = PolicyDrop {
        flow: FlowKey {
            direction,
            ..flow_key(flow, direction, false)
        },
        endpoint,
        policy,
    };
    let _ = POLICY_LOG.output::<PolicyDrop>(&record, 0);
}

/// Whether a packet may enter the pod it is addressed to (`flow` as it is delivered,
/// after any translation; `pod_ifindex` the pod's host-side veth): Err(reason) when the
/// pod's policies isolate it for ingress and neither a rule nor a flow the pod opened
/// lets it in. A pod isolated for egress gets the replies of what it accepts let out.
#[inline(always)]
pub fn ingress(ctx: &TcContext, flow: &Flow, pod_ifindex: u32) -> Result<(), Reason> {
    let Some(endpoint) = endpoint(flow.dst_addr) else {
        return Ok(());
    };
    let isolated = endpoint.flags & ENDPOINT_INGRESS_ISOLATED != 0 && flow.src_addr != HAIRPIN_ADDR;
    let answers = endpoint.flags & ENDPOINT_EGRESS_ISOLATED != 0;
    if !isolated && !answers {
        return Ok(());
    }
    // TCP into a pod isolated for ingress only is let in on its peer's verdict: a peer's
    // next connection to the port costs one lookup and writes nothing. A pod isolated for
    // egress too keeps an entry per flow, whose flags say whether a packet answers a flow
    // the pod opened (below).
    let by_peer = isolated && !answers && flow.proto == IPPROTO_TCP;
    if by_peer && let Some((_, policy)) = tracked(peer_key(flow), endpoint.revision) {
        if flow.opens_connection {
            count_verdict(policy, POLICY_INGRESS, true);
        }
        return Ok(());
    }
    let seen = tracked(flow_key(flow, CT_POLICY_IN, false), endpoint.revision);
    // A reply of a flow the pod opened (an entry without a rule) needs no answer
    // recorded: the flow's own egress entry lets it out, checked at each revision.
    let mut opened_by_pod = seen.is_some_and(|(flags, _)| flags & CT_FLAG_POLICY_RULE == 0);
    if isolated && seen.is_none() {
        match verdict(
            flow.dst_addr,
            flow.src_addr,
            POLICY_INGRESS,
            flow.proto,
            flow.dst_port,
        ) {
            Some(policy) => {
                count_verdict(policy, POLICY_INGRESS, true);
                if by_peer {
                    remember(peer_key(flow), Some(endpoint.revision), policy);
                } else {
                    remember(
                        flow_key(flow, CT_POLICY_IN, false),
                        Some(endpoint.revision),
                        0,
                    );
                }
            }
            // A TCP connection the pod opened before any policy selected it has no
            // record (see `Egress::let_out`): its pod's sockets say whether it is one.
            None if replies_to_pod(ctx, flow, pod_ifindex) => {
                remember(flow_key(flow, CT_POLICY_IN, false), None, 0);
                opened_by_pod = true;
            }
            None => {
                denied(flow, POLICY_INGRESS, flow.dst_addr, endpoint.ingress_policy);
                return Err(Reason::DropPolicyIngress);
            }
        }
    }
    if answers && !opened_by_pod {
        let reply = flow_key(flow, CT_POLICY_OUT, true);
        if tracked(reply, endpoint.revision).is_none() {
            remember(reply, None, 0);
        }
    }
    Ok(())
}

/// Whether a TCP packet entering the pod behind host veth `pod_ifindex` belongs to a
/// connection the pod opened: its network namespace holds a socket of exactly this
/// connection, and nothing there listens on the pod's port (with a listener the
/// connection may have been accepted, which only the rules may let in). A connection's
/// first packet (SYN) is never a reply.
#[inline(always)]
fn replies_to_pod(ctx: &TcContext, flow: &Flow, pod_ifindex: u32) -> bool {
    if flow.proto != IPPROTO_TCP || flow.opens_connection {
        return false;
    }
    // SAFETY: copied out at once.
    let Some(nsid) = (unsafe { POD_NSIDS.get(pod_ifindex) }).copied() else {
        return false;
    };
    let local = (flow.dst_addr, flow.dst_port);
    let connected = socket_state(ctx, nsid, (flow.src_addr, flow.src_port), local)
        .is_some_and(|state| state != TCP_LISTEN);
    // Without a socket of its own, a peer of (0.0.0.0, 0) finds the listener, if any.
    connected && socket_state(ctx, nsid, (0, 0), local).is_none()
}

/// The state of the TCP socket in the namespace `nsid` a packet from `peer` to `local`
/// (addresses and ports in network order) is delivered to: a connected socket's, else
/// the listener's on `local`; None if there is neither.
#[inline(always)]
fn socket_state(ctx: &TcContext, nsid: u32, peer: (u32, u16), local: (u32, u16)) -> Option<u32> {
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: peer.0,
                daddr: local.0,
                sport: peer.1,
                dport: local.1,
            },
        },
    };
    // SAFETY: ctx is this program's context and `tuple` an initialised IPv4 tuple of the
    // size given; a socket found is released below before anything else happens.
    let socket = unsafe {
        bpf_sk_lookup_tcp(
            ctx.skb.skb.cast(),
            &mut tuple,
            size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32,
            u64::from(nsid),
            0,
        )
    };
    if socket.is_null() {
        return None;
    }
    // SAFETY: a socket the lookup returned, read before its release.
    let state = unsafe { (*socket).state };
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(socket.cast()) };
    Some(state)
}

/// The egress check of a packet leaving a pod, taken before translation: `None` when
/// the pod is not isolated for egress or the flow is already let out (one hash lookup
/// for a pod no policy selects, two for an isolated pod's established flow).
#[derive(Clone, Copy)]
pub struct Egress {
    isolated: Option<EndpointPolicy>,
    /// Some policy selects the pod (any direction): its TCP replies are recorded.
    selected: bool,
}

impl Egress {
    #[inline(always)]
    pub fn of(flow: &Flow) -> Self {
        let Some(endpoint) = endpoint(flow.src_addr) else {
            return Egress {
                isolated: None,
                selected: false,
            };
        };
        let let_out = endpoint.flags & ENDPOINT_EGRESS_ISOLATED == 0
            || tracked(flow_key(flow, CT_POLICY_OUT, false), endpoint.revision).is_some();
        Egress {
            isolated: (!let_out).then_some(endpoint),
            selected: true,
        }
    }

    /// Whether `flow` (as it left the pod) may go on to `dst` (the chosen backend through
    /// a Service, or what the pod addressed), and if so records it for its replies
    /// ([`track_opened`]): every pod's UDP flows, and the TCP connections of pods some
    /// policy selects. Recording every pod's connections would cost each new connection a
    /// write; the replies of a connection opened before its pod became isolated are
    /// recognised by the pod's socket instead (`replies_to_pod`). Err(reason) when no
    /// rule allows it; the pod reaching itself through its own Service is always let out.
    #[inline(always)]
    pub fn let_out(self, flow: &Flow, dst: (u32, u16)) -> Result<(), Reason> {
        self.check(flow, dst)?;
        if self.selected || flow.proto != IPPROTO_TCP {
            track_opened(flow);
        }
        Ok(())
    }

    #[inline(always)]
    fn check(self, flow: &Flow, dst: (u32, u16)) -> Result<(), Reason> {
        let Some(endpoint) = self.isolated else {
            return Ok(());
        };
        let policy = if dst.0 == flow.src_addr || dst.0 == HAIRPIN_ADDR {
            Some(0)
        } else {
            verdict(flow.src_addr, dst.0, POLICY_EGRESS, flow.proto, dst.1)
        };
        match policy {
            Some(policy) => {
                count_verdict(policy, POLICY_EGRESS, true);
                remember(
                    flow_key(flow, CT_POLICY_OUT, false),
                    Some(endpoint.revision),
                    0,
                );
                Ok(())
            }
            None => {
                let seen = Flow {
                    dst_addr: dst.0,
                    dst_port: dst.1,
                    ..*flow
                };
                denied(&seen, POLICY_EGRESS, flow.src_addr, endpoint.egress_policy);
                Err(Reason::DropPolicyEgress)
            }
        }
    }
}
