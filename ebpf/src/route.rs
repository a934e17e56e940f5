//! The node's routing table, seen from the programs.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, bpf_fib_lookup__bindgen_ty_1,
        bpf_fib_lookup__bindgen_ty_2, bpf_fib_lookup__bindgen_ty_3, bpf_fib_lookup__bindgen_ty_4,
        bpf_fib_lookup__bindgen_ty_5,
    },
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
    // Every byte written field by field: `mem::zeroed()` compiled to a call of a byte-wise
    // memset loop (64 iterations on every packet handed to a local pod).
    let mut fib = FibParams {
        family: AF_INET,
        l4_protocol: proto,
        sport: 0,
        dport: 0,
        __bindgen_anon_1: bpf_fib_lookup__bindgen_ty_1 { tot_len },
        ifindex: ingress_ifindex,
        __bindgen_anon_2: bpf_fib_lookup__bindgen_ty_2 { flowinfo: 0 },
        __bindgen_anon_3: bpf_fib_lookup__bindgen_ty_3 {
            ipv6_src: [src, 0, 0, 0],
        },
        __bindgen_anon_4: bpf_fib_lookup__bindgen_ty_4 {
            ipv6_dst: [dst, 0, 0, 0],
        },
        __bindgen_anon_5: bpf_fib_lookup__bindgen_ty_5 { tbid: 0 },
        smac: [0; 6],
        dmac: [0; 6],
    };
    // SAFETY: ctx is the program's context (caller's contract) and fib a properly sized
    // request on the stack.
    let rc = unsafe { bpf_fib_lookup(ctx, &mut fib, size_of::<FibParams>() as i32, 0) };
    (rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS)).then_some(fib)
}
