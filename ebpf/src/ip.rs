//! The IPv4 header as the programs read and write it.

/// The fixed part of an IPv4 header, fields as in the packet (network order).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Header {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: u16,
    pub id: u16,
    pub frag: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src_addr: u32,
    pub dst_addr: u32,
}

/// Version 4, no options.
pub const VERSION_IHL_PLAIN: u8 = 0x45;
/// The flags and fragment offset of an unfragmented packet that must not be fragmented.
pub const DONT_FRAGMENT: u16 = 0x4000;

/// An outer IPIP header from `src` to `dst` (network order) around `inner_len` bytes, its
/// checksum filled in. DF is set: the routes towards tunnelled ranges carry an MTU 20
/// bytes below the link's, so an outer packet never needs fragmenting.
#[inline(always)]
pub fn ipip_header(src: u32, dst: u32, inner_len: u16, tos: u8, id: u16) -> [u16; 10] {
    let mut header = [
        u16::from_be_bytes([VERSION_IHL_PLAIN, tos]).to_be(),
        inner_len.wrapping_add(20).to_be(),
        id,
        DONT_FRAGMENT.to_be(),
        u16::from_be_bytes([64, berth_ebpf_common::IPPROTO_IPIP]).to_be(),
        0,
        src as u16,
        (src >> 16) as u16,
        dst as u16,
        (dst >> 16) as u16,
    ];
    header[5] = crate::csum::ipv4_header(&header);
    header
}
