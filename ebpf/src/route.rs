//! The node's routing table, seen from the programs.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::bpf_fib_lookup,
};

use core::{mem::MaybeUninit, ptr::write_volatile};

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
    // Built from eight words: `mem::zeroed()` or a struct literal compiled to calls of a
    // byte-wise memset loop (up to 64 iterations on every packet handed to a local pod).
    let [t0, t1] = tot_len.to_ne_bytes();
    let [i0, i1, i2, i3] = ingress_ifindex.to_ne_bytes();
    let [s0, s1, s2, s3] = src.to_ne_bytes();
    let [d0, d1, d2, d3] = dst.to_ne_bytes();
    let words: [u64; 8] = [
        // family, l4_protocol, sport, dport, tot_len
        u64::from_ne_bytes([AF_INET, proto, 0, 0, 0, 0, t0, t1]),
        // ifindex, tos and flowinfo
        u64::from_ne_bytes([i0, i1, i2, i3, 0, 0, 0, 0]),
        // the IPv4 source, then the rest of an IPv6 one
        u64::from_ne_bytes([s0, s1, s2, s3, 0, 0, 0, 0]),
        0,
        // the IPv4 destination, then the rest of an IPv6 one
        u64::from_ne_bytes([d0, d1, d2, d3, 0, 0, 0, 0]),
        0,
        // VLAN or table id, then the MAC addresses the lookup fills in
        0,
        0,
    ];
    // Volatile stores: plain ones of the zero words were merged into a memset call again.
    let mut request = MaybeUninit::<[u64; 8]>::uninit();
    let slots = request.as_mut_ptr().cast::<u64>();
    for (index, word) in words.into_iter().enumerate() {
        // SAFETY: `index` < 8, inside `request`.
        unsafe { write_volatile(slots.add(index), word) };
    }
    // SAFETY: every word was written above; bpf_fib_lookup is 64 bytes of plain integers
    // (repr(C)), laid out as those words.
    let mut fib: FibParams = unsafe { core::mem::transmute(request.assume_init()) };
    // SAFETY: ctx is the program's context (caller's contract) and fib a properly sized
    // request on the stack.
    let rc = unsafe { bpf_fib_lookup(ctx, &mut fib, size_of::<FibParams>() as i32, 0) };
    (rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS)).then_some(fib)
}
