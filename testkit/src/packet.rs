//! Hand-built Ethernet/IPv4/TCP/UDP frames with correct checksums, and a parser that
//! checks them, for feeding programs through BPF_PROG_TEST_RUN.

use std::net::Ipv4Addr;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const IPIP: u8 = 4;

/// A frame to build. Defaults: TCP SYN, no options, no payload.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    pub ip_options: Vec<u8>,
    /// The IPv4 flags and fragment offset field (host order), e.g. 0x2000 for MF.
    pub fragment: u16,
    pub payload: Vec<u8>,
    /// UDP only: send a zero checksum ("no checksum").
    pub udp_zero_checksum: bool,
}

impl Frame {
    pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Self {
        Frame {
            src_mac: [0x02, 0, 0, 0, 0, 1],
            dst_mac: [0x02, 0, 0, 0, 0, 2],
            src: src.0,
            dst: dst.0,
            proto: TCP,
            src_port: src.1,
            dst_port: dst.1,
            tcp_flags: 0x02,
            ip_options: Vec::new(),
            fragment: 0,
            payload: Vec::new(),
            udp_zero_checksum: false,
        }
    }

    pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Self {
        Frame {
            proto: UDP,
            payload: b"ping".to_vec(),
            ..Frame::tcp(src, dst)
        }
    }

    /// The L4 header and payload.
    fn transport(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.src_port.to_be_bytes());
        l4.extend_from_slice(&self.dst_port.to_be_bytes());
        match self.proto {
            TCP => {
                l4.extend_from_slice(&1000u32.to_be_bytes()); // seq
                l4.extend_from_slice(&0u32.to_be_bytes()); // ack
                l4.push(5 << 4); // data offset
                l4.push(self.tcp_flags);
                l4.extend_from_slice(&64240u16.to_be_bytes()); // window
                l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
            }
            UDP => {
                let len = (8 + self.payload.len()) as u16;
                l4.extend_from_slice(&len.to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
            }
            _ => {}
        }
        l4.extend_from_slice(&self.payload);
        let check_at = match self.proto {
            TCP => Some(16),
            UDP if !self.udp_zero_checksum => Some(6),
            _ => None,
        };
        if let Some(at) = check_at {
            let mut sum = transport_checksum(self.src, self.dst, self.proto, &l4);
            if self.proto == UDP && sum == 0 {
                sum = 0xffff;
            }
            l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        l4
    }

    /// The IPv4 packet (header and everything after it).
    pub fn ipv4(&self) -> Vec<u8> {
        let l4 = self.transport();
        ipv4_packet(
            self.src,
            self.dst,
            self.proto,
            &self.ip_options,
            self.fragment,
            &l4,
        )
    }

    /// The whole Ethernet frame.
    pub fn build(&self) -> Vec<u8> {
        ethernet(self.dst_mac, self.src_mac, 0x0800, &self.ipv4())
    }
}

pub fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An IPv4 header (with options padded to 4 bytes) followed by `payload`.
pub fn ipv4_packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    options: &[u8],
    fragment: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut options = options.to_vec();
    while !options.len().is_multiple_of(4) {
        options.push(0);
    }
    let header_len = 20 + options.len();
    let total = (header_len + payload.len()) as u16;
    let mut header = vec![0x40 | (header_len / 4) as u8, 0];
    header.extend_from_slice(&total.to_be_bytes());
    header.extend_from_slice(&0x1234u16.to_be_bytes());
    header.extend_from_slice(&fragment.to_be_bytes());
    header.extend_from_slice(&[64, proto, 0, 0]);
    header.extend_from_slice(&src.octets());
    header.extend_from_slice(&dst.octets());
    header.extend_from_slice(&options);
    let check = internet_checksum(&header);
    header[10..12].copy_from_slice(&check.to_be_bytes());
    header.extend_from_slice(payload);
    header
}

fn sum_words(data: &[u8]) -> u32 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

pub fn internet_checksum(data: &[u8]) -> u16 {
    !fold(sum_words(data))
}

/// TCP/UDP checksum over the pseudo-header and `segment` (whose checksum field is zero).
pub fn transport_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    !fold(sum_words(&pseudo) + sum_words(segment))
}

/// What a frame carries, and whether its checksums verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub ip_checksum_ok: bool,
    /// True for a UDP datagram without checksum.
    pub l4_checksum_ok: bool,
    pub ip_id: u16,
    pub header_len: usize,
}

/// Parses an Ethernet frame holding IPv4 (TCP, UDP or anything else: ports then zero).
pub fn parse(frame: &[u8]) -> Option<Parsed> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    parse_ipv4(&frame[14..])
}

pub fn parse_ipv4(ip: &[u8]) -> Option<Parsed> {
    let header_len = usize::from(ip.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    if header_len < 20 || ip.len() < total || total < header_len {
        return None;
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let proto = ip[9];
    let ip_checksum_ok = fold(sum_words(&ip[..header_len])) == 0xffff;
    let segment = &ip[header_len..total];
    let (src_port, dst_port, l4_checksum_ok) = match proto {
        TCP | UDP if segment.len() >= 8 => {
            let ports = (
                u16::from_be_bytes([segment[0], segment[1]]),
                u16::from_be_bytes([segment[2], segment[3]]),
            );
            let zero_udp = proto == UDP && segment[6..8] == [0, 0];
            let mut pseudo = Vec::with_capacity(12);
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
            let ok = zero_udp || fold(sum_words(&pseudo) + sum_words(segment)) == 0xffff;
            (ports.0, ports.1, ok)
        }
        _ => (0, 0, true),
    };
    Some(Parsed {
        src,
        dst,
        proto,
        src_port,
        dst_port,
        ip_checksum_ok,
        l4_checksum_ok,
        ip_id: u16::from_be_bytes([ip[4], ip[5]]),
        header_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_verify() {
        let a = (Ipv4Addr::new(198, 18, 0, 1), 40000);
        let b = (Ipv4Addr::new(198, 18, 0, 2), 80);
        for frame in [Frame::tcp(a, b), Frame::udp(a, b)] {
            let parsed = parse(&frame.build()).expect("parses");
            assert!(parsed.ip_checksum_ok && parsed.l4_checksum_ok);
            assert_eq!((parsed.src, parsed.src_port), a);
            assert_eq!((parsed.dst, parsed.dst_port), b);
        }
    }

    #[test]
    fn corrupted_checksum_is_detected() {
        let frame = Frame::tcp(
            (Ipv4Addr::new(198, 18, 0, 1), 1),
            (Ipv4Addr::new(198, 18, 0, 2), 2),
        );
        let mut bytes = frame.build();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let parsed = parse(&bytes).expect("parses");
        assert!(!parsed.l4_checksum_ok);
    }
}
