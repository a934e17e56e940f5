//! What the client tests share: the image's tool links, an echo server, and a DNS server
//! for a small test zone over UDP and TCP.
#![allow(dead_code)] // each test binary uses its own part

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    thread,
};

use berth_echo::{EchoConfig, EchoServer};
use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{RData, Record, rdata::A},
};

/// Links named like the image's (`wget`, `nslookup`) to `binary`, in a directory of their own.
pub fn tools(binary: &Path) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let wget = dir.path().join("wget");
    let nslookup = dir.path().join("nslookup");
    std::os::unix::fs::symlink(binary, &wget).expect("link wget");
    std::os::unix::fs::symlink(binary, &nslookup).expect("link nslookup");
    (dir, wget, nslookup)
}

/// An echo server on a free loopback port with health files of its own.
pub fn echo_server(pod: &str) -> EchoServer {
    echo_server_on(pod, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
}

pub fn echo_server_on(pod: &str, addr: SocketAddr) -> EchoServer {
    let n = std::process::id();
    let base = std::env::temp_dir().join(format!("berth-clients-test-{pod}-{n}"));
    EchoServer::bind(EchoConfig {
        bind: addr.ip(),
        port: addr.port(),
        unhealthy_file: base.with_extension("unhealthy"),
        unready_file: base.with_extension("unready"),
        ..EchoConfig::loopback(pod)
    })
    .expect("echo server")
}

/// How many A records the test server gives `many.test.`: more than fit in 512 bytes, so
/// the UDP answer is truncated and the client must ask again over TCP.
pub const MANY: u8 = 40;

/// A DNS server for the zone `test.`: `web.test` and `web.default.svc.test` have one
/// address each, `many.test` has [`MANY`]; everything else does not exist.
fn answer(query: &[u8], over_udp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let question = request.queries().first()?.clone();
    let mut reply = Message::new();
    reply
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .add_query(question.clone());
    let name = question.name().to_ascii().to_ascii_lowercase();
    let addresses: Vec<Ipv4Addr> = match name.as_str() {
        "web.test." | "web.default.svc.test." => vec![Ipv4Addr::new(198, 19, 0, 10)],
        "many.test." => (1..=MANY).map(|n| Ipv4Addr::new(198, 18, 1, n)).collect(),
        _ => Vec::new(),
    };
    if addresses.is_empty() {
        reply.set_response_code(ResponseCode::NXDomain);
    }
    for ip in addresses {
        reply.add_answer(Record::from_rdata(
            question.name().clone(),
            5,
            RData::A(A(ip)),
        ));
    }
    let bytes = reply.to_vec().ok()?;
    if over_udp && bytes.len() > 512 {
        reply.take_answers();
        reply.set_truncated(true);
        return reply.to_vec().ok();
    }
    Some(bytes)
}

/// Serves [`answer`] over UDP and TCP on the same port at `bind`, until the test ends.
pub fn dns_server(bind: &str) -> SocketAddr {
    let udp = UdpSocket::bind(bind).expect("bind UDP");
    let addr = udp.local_addr().expect("address");
    let tcp = TcpListener::bind(addr).expect("bind TCP on the same port");
    thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok((len, peer)) = udp.recv_from(&mut buffer) {
            if let Some(reply) = answer(&buffer[..len], true) {
                let _ = udp.send_to(&reply, peer);
            }
        }
    });
    thread::spawn(move || {
        for mut stream in tcp.incoming().flatten() {
            let mut len = [0u8; 2];
            if stream.read_exact(&mut len).is_err() {
                continue;
            }
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if stream.read_exact(&mut query).is_err() {
                continue;
            }
            if let Some(reply) = answer(&query, false) {
                let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&reply);
                let _ = stream.write_all(&framed);
            }
        }
    });
    addr
}
