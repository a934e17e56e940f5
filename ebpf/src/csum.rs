//! Incremental Internet checksum updates (RFC 1624) for XDP, which has no csum helpers.
//! Values are taken exactly as loaded from the packet: the one's complement sum does not
//! depend on byte order, so no swapping is needed as long as loads and stores match.

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// New checksum after a 32-bit field of the covered data changed from `old` to `new`.
#[inline(always)]
pub fn replace4(check: u16, old: u32, new: u32) -> u16 {
    let mut sum = u32::from(!check);
    sum += (!old >> 16) + (!old & 0xffff);
    sum += (new >> 16) + (new & 0xffff);
    !fold(sum)
}

/// New checksum after a 16-bit field of the covered data changed from `old` to `new`.
#[inline(always)]
pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    !fold(sum)
}

/// Checksum of a 20-byte IPv4 header given as ten 16-bit words (check field zeroed).
#[inline(always)]
pub fn ipv4_header(words: &[u16; 10]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 10 {
        sum += u32::from(words[i]);
        i += 1;
    }
    !fold(sum)
}
