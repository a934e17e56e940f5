//! The node's routing table, seen from the programs.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::bpf_fib_lookup,
};

const AF_INET: u8 = 2;

/// Routes an IPv4 packet as the node would forward it: egress interface and the MAC
/// addresses to put on it. `tot_len` 0 skips the MTU check (GSO packets exceed the MTU
/// until they are segmented). None when the node would not forward it (local, no route,
/// neighbour unresolved): the caller leaves the packet to the stack or drops it.
///
/// # Safety
/// `ctx` must be the running program's context (`__sk_buff` or `xdp_md`).
#[inline(always)]
pub unsafe fn lookup(
    ctx: *mut core::ffi::c_void,
    ingress_ifindex: u32,
    (src, dst): (u32, u32),
    proto: u8,
    tot_len: u16,
) -> Option<FibParams> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = proto;
    fib.__bindgen_anon_1.tot_len = tot_len;
    fib.ifindex = ingress_ifindex;
    fib.__bindgen_anon_3.ipv4_src = src;
    fib.__bindgen_anon_4.ipv4_dst = dst;
    // SAFETY: ctx is the program's context (caller's contract) and fib a properly sized
    // request on the stack.
    let rc = unsafe { bpf_fib_lookup(ctx, &mut fib, size_of::<FibParams>() as i32, 0) };
    (rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS)).then_some(fib)
}
