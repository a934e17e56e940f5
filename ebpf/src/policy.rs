//! NetworkPolicy at the door of each pod on this node (Cilium's model): the source
//! address gives an identity (ipcache), and the destination pod's policy entries say
//! whether that identity may reach the port. Replies of flows a pod opened pass through
//! the connection table, whatever its policies say.

use aya_ebpf::maps::lpm_trie::Key;
use berth_ebpf_common::{
    CT_ESTABLISHED, CT_POLICY_REPLY, CT_UDP_STREAM, CtEntry, ENDPOINT_INGRESS_ISOLATED, FlowKey,
    HAIRPIN_ADDR, IDENTITY_ANY, IDENTITY_HOST, IDENTITY_WORLD, IPPROTO_TCP, POLICY_INGRESS,
    POLICY_PREFIX_FULL, PolicyKey, Reason, ct_expired,
};

use crate::{
    lb::{Flow, now_secs, touch},
    maps::{IPCACHE, POLICY, POLICY_CT, POLICY_ENDPOINTS},
};

/// The key a flow's replies arrive with at the pod that opened it.
#[inline(always)]
fn reply_key(flow: &Flow) -> FlowKey {
    FlowKey {
        src_addr: flow.dst_addr,
        dst_addr: flow.src_addr,
        src_port: flow.dst_port,
        dst_port: flow.src_port,
        proto: flow.proto,
        direction: CT_POLICY_REPLY,
        _pad: 0,
    }
}

/// Records a flow leaving a pod (before any translation), so its replies pass the pod's
/// ingress policy: on a TCP SYN, and on UDP packets (kept fresh by them; at most one
/// write a second per flow).
#[inline(always)]
pub fn track_opened(flow: &Flow) {
    let tcp = flow.proto == IPPROTO_TCP;
    if tcp && !flow.opens_connection {
        return;
    }
    let key = reply_key(flow);
    let now = now_secs();
    let state = if tcp { CT_ESTABLISHED } else { CT_UDP_STREAM };
    if !tcp && let Some(entry) = POLICY_CT.get_ptr_mut(key) {
        // SAFETY: a pointer into the conntrack map.
        unsafe { touch(entry, state, now) };
        return;
    }
    let entry = CtEntry {
        state,
        last_seen_secs: now,
        ..CtEntry::default()
    };
    let _ = POLICY_CT.insert(key, entry, 0);
}

/// Whether a packet may enter the pod it is addressed to (`flow` as it is delivered,
/// after any translation): Err(reason) when the pod's policies isolate it for ingress
/// and neither a rule nor a flow the pod opened lets it in.
#[inline(always)]
pub fn ingress(flow: &Flow) -> Result<(), Reason> {
    // SAFETY: copied out at once; the agent replaces whole entries.
    let Some(flags) = (unsafe { POLICY_ENDPOINTS.get(flow.dst_addr) }).copied() else {
        return Ok(());
    };
    if flags & ENDPOINT_INGRESS_ISOLATED == 0 || flow.src_addr == HAIRPIN_ADDR {
        return Ok(());
    }
    if let Some(entry) = POLICY_CT.get_ptr_mut(FlowKey {
        src_addr: flow.src_addr,
        dst_addr: flow.dst_addr,
        src_port: flow.src_port,
        dst_port: flow.dst_port,
        proto: flow.proto,
        direction: CT_POLICY_REPLY,
        _pad: 0,
    }) {
        // SAFETY: a pointer into the conntrack map, read at once.
        let (state, last_seen) = unsafe { ((*entry).state, (*entry).last_seen_secs) };
        let now = now_secs();
        if !ct_expired(state, last_seen, now) {
            // SAFETY: as above.
            unsafe { touch(entry, state, now) };
            return Ok(());
        }
    }
    let identity = IPCACHE
        .get(Key::new(32, flow.src_addr))
        .copied()
        .unwrap_or(IDENTITY_WORLD);
    if identity == IDENTITY_HOST || allows(flow, identity) || allows(flow, IDENTITY_ANY) {
        return Ok(());
    }
    Err(Reason::DropPolicyIngress)
}

/// Whether the destination pod has an entry for `identity` covering the flow's protocol
/// and port (longest prefix: the rule for every protocol, one protocol, or a port range).
#[inline(always)]
fn allows(flow: &Flow, identity: u32) -> bool {
    POLICY
        .get(Key::new(
            POLICY_PREFIX_FULL,
            PolicyKey {
                endpoint: flow.dst_addr,
                identity,
                direction: POLICY_INGRESS,
                proto: flow.proto,
                port: flow.dst_port,
            },
        ))
        .is_some()
}
