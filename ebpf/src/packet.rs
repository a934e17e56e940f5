//! Reads of a TC program's packet straight from its linear data: each read costs a bounds
//! check and the loads, where `TcContext::load` is a helper call (bpf_skb_load_bytes and
//! its copy) per field, a dozen or two on every packet.

use aya_ebpf::programs::TcContext;

/// The `T` (a u16 or u32: an aggregate read would compile to a copy loop the verifier
/// cannot follow into packet memory, and a byte's bounds check to a comparison it takes
/// no range from) at `offset` in the packet. Headers past the linear
/// data (rare: the kernel's own packets keep their headers linear) are pulled in first;
/// None if the packet is shorter than `offset` plus a `T`.
#[inline(always)]
pub fn read<T: Scalar>(ctx: &TcContext, offset: usize) -> Option<T> {
    if let Some(value) = linear(ctx, offset) {
        return Some(value);
    }
    let needed = offset + size_of::<T>();
    if (ctx.len() as usize) < needed {
        return None;
    }
    ctx.pull_data(needed as u32).ok()?;
    linear(ctx, offset)
}

/// What [`read`] reads.
pub trait Scalar: Copy {}
impl Scalar for u16 {}
impl Scalar for u32 {}

#[inline(always)]
fn linear<T: Scalar>(ctx: &TcContext, offset: usize) -> Option<T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: the bytes from `start + offset` to the end of a `T` lie inside the packet's
    // linear data (checked above); read unaligned, as headers sit at any offset.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
}
