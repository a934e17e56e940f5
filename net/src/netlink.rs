//! A synchronous rtnetlink socket: one request, its replies, and the kernel's errno.
//!
//! Synchronous because every caller is: pod wiring runs on a blocking thread, tests and
//! harnesses on plain threads. A socket serves the namespace it was created in for its
//! whole life, so work in another namespace creates the socket on a helper thread that
//! entered it ([`crate::in_netns`]) and then uses it from the caller's thread.

use std::{io, os::fd::AsRawFd as _, time::Duration};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

pub(crate) struct Rtnl {
    socket: Socket,
    sequence: u32,
}

impl Rtnl {
    /// A socket in the calling thread's network namespace.
    pub(crate) fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl {
            socket,
            sequence: 0,
        })
    }

    /// A socket that receives the multicast `group` (an `RTNLGRP_*` number) of the calling
    /// thread's namespace.
    pub(crate) fn subscribe(group: u32) -> io::Result<Self> {
        let rtnl = Self::open()?;
        rtnl.socket.add_membership(group)?;
        Ok(rtnl)
    }

    /// Blocks the next receive for at most `timeout`; a receive that times out returns
    /// `WouldBlock`.
    pub(crate) fn set_receive_timeout(&self, timeout: Duration) -> io::Result<()> {
        let value = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: the socket is open for the duration of the call, and `value` is a
        // timeval of the size passed.
        let set = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const value).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends a change (or a single get) and waits for the kernel's acknowledgement.
    /// Returns what the kernel answered before it (a get's reply).
    pub(crate) fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.exchange(message, NLM_F_REQUEST | NLM_F_ACK | flags)
    }

    /// Sends a dump request and collects every entry until the kernel says it is done.
    pub(crate) fn dump(
        &mut self,
        message: RouteNetlinkMessage,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.exchange(message, NLM_F_REQUEST | NLM_F_DUMP)
    }

    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut buffer = vec![0; packet.buffer_len()];
        packet.serialize(&mut buffer);
        self.socket.send(&buffer, 0)?;

        let mut replies = Vec::new();
        loop {
            let (received, _) = self.socket.recv_from_full()?;
            for packet in parse(&received)? {
                if packet.header.sequence_number != self.sequence {
                    continue;
                }
                match packet.payload {
                    NetlinkPayload::InnerMessage(reply) => replies.push(reply),
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            None => Ok(replies),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    _ => {}
                }
            }
        }
    }

    /// The next batch of multicast messages. `ENOBUFS` means the kernel dropped some: the
    /// subscriber must read the state afresh.
    pub(crate) fn receive(&self) -> io::Result<Vec<RouteNetlinkMessage>> {
        let (received, _) = self.socket.recv_from_full()?;
        Ok(parse(&received)?
            .into_iter()
            .filter_map(|packet| match packet.payload {
                NetlinkPayload::InnerMessage(message) => Some(message),
                _ => None,
            })
            .collect())
    }
}

fn parse(mut bytes: &[u8]) -> io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
    let mut packets = Vec::new();
    while !bytes.is_empty() {
        let packet = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error.to_string()))?;
        // Messages are padded to four bytes; the header's length leaves the padding out.
        let length = (packet.header.length as usize).next_multiple_of(4);
        if length == 0 {
            break;
        }
        bytes = bytes.get(length..).unwrap_or_default();
        packets.push(packet);
    }
    Ok(packets)
}
