//! The image's `wget` and `nslookup` (berth-echo run through links of those names) against
//! an echo server and a DNS server on loopback.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
};

use berth_echo::{
    EchoConfig, EchoServer, Reply,
    client::{self, ResolvConf},
};
use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{RData, Record, rdata::A},
};

/// Links named like the image's, to the binary cargo built.
fn tools() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let binary = Path::new(env!("CARGO_BIN_EXE_berth-echo"));
    let wget = dir.path().join("wget");
    let nslookup = dir.path().join("nslookup");
    std::os::unix::fs::symlink(binary, &wget).expect("link wget");
    std::os::unix::fs::symlink(binary, &nslookup).expect("link nslookup");
    (dir, wget, nslookup)
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("running {}: {error}", program.display()))
}

fn echo_server() -> EchoServer {
    let n = std::process::id();
    let base = std::env::temp_dir().join(format!("berth-clients-test-{n}"));
    EchoServer::bind(EchoConfig {
        unhealthy_file: base.with_extension("unhealthy"),
        unready_file: base.with_extension("unready"),
        ..EchoConfig::loopback("web-0")
    })
    .expect("echo server")
}

/// How many A records the test server gives `many.test.`: more than fit in 512 bytes, so
/// the UDP answer is truncated and the client must ask again over TCP.
const MANY: u8 = 40;

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

/// Serves [`answer`] over UDP and TCP on the same loopback port, until the test ends.
fn dns_server() -> SocketAddr {
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
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

#[test]
fn wget_prints_the_body_of_a_page() {
    let (_dir, wget, _) = tools();
    let server = echo_server();
    let url = format!("http://{}/", server.local_addr());
    let out = run(&wget, &["-qO-", &url]);
    assert!(out.status.success(), "wget failed: {out:?}");
    let body = String::from_utf8_lossy(&out.stdout);
    let reply = Reply::parse(body.trim()).expect("an echo reply");
    assert_eq!(reply.pod, "web-0");
    // The usual spelling, with the options apart.
    let out = run(&wget, &["-q", "-O", "-", &format!("{url}healthz")]);
    assert!(out.status.success(), "wget failed: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    server.stop();
}

#[test]
fn wget_saves_to_a_file_and_fails_on_errors() {
    let (dir, wget, _) = tools();
    let server = echo_server();
    let file = dir.path().join("page");
    let url = format!("http://{}/", server.local_addr());
    let out = run(
        &wget,
        &["-q", "-O", file.to_str().expect("utf-8 path"), &url],
    );
    assert!(out.status.success(), "wget failed: {out:?}");
    let saved = std::fs::read_to_string(&file).expect("the saved page");
    assert!(Reply::parse(saved.trim()).is_some(), "saved {saved:?}");

    server.set_ready(false);
    let out = run(&wget, &["-qO-", &format!("{url}readyz")]);
    assert!(!out.status.success(), "a 503 must fail: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("503"));
    let port = server.local_addr().port();
    server.stop();
    let out = run(&wget, &["-qO-", &format!("http://127.0.0.1:{port}/")]);
    assert!(!out.status.success(), "nothing listens any more: {out:?}");
    let out = run(&wget, &["-qO-", "ftp://example/"]);
    assert!(!out.status.success());
}

#[test]
fn nslookup_asks_the_given_server() {
    let (_dir, _, nslookup) = tools();
    let dns = dns_server();
    let server = dns.to_string();
    let out = run(&nslookup, &["web.test.", &server]);
    assert!(out.status.success(), "nslookup failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("Address:\t{dns}")), "{text}");
    assert!(
        text.contains("Name:\tweb.test\nAddress: 198.19.0.10\n"),
        "{text}"
    );

    let out = run(&nslookup, &["nope.test.", &server]);
    assert!(!out.status.success(), "an unknown name must fail: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("can't resolve 'nope.test.'"));
}

#[test]
fn truncated_answers_are_asked_again_over_tcp() {
    let (_dir, _, nslookup) = tools();
    let dns = dns_server();
    let out = run(&nslookup, &["many.test.", &dns.to_string()]);
    assert!(out.status.success(), "nslookup failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("Address: 198.18.1.").count(),
        usize::from(MANY),
        "{text}"
    );
}

#[test]
fn names_resolve_through_search_domains_and_hosts() {
    let dns = dns_server();
    let conf = ResolvConf {
        nameservers: vec![dns],
        ..ResolvConf::parse("search default.svc.test test\noptions ndots:5\n")
    };
    let (_, answer) = client::resolve("web", "", &conf)
        .expect("an answer")
        .expect("the name exists");
    // The first search domain that has it wins.
    assert_eq!(answer.name, "web.default.svc.test");
    assert_eq!(answer.addresses, [Ipv4Addr::new(198, 19, 0, 10)]);
    assert!(
        client::resolve("nope", "", &conf)
            .expect("an answer")
            .is_none()
    );
    // /etc/hosts comes first, and literals need no lookup at all.
    let (_, answer) = client::resolve("web", "198.18.9.9 web\n", &conf)
        .expect("an answer")
        .expect("in hosts");
    assert_eq!(answer.addresses, [Ipv4Addr::new(198, 18, 9, 9)]);
    let (_, answer) = client::resolve("10.1.2.3", "", &conf)
        .expect("an answer")
        .expect("a literal");
    assert_eq!(answer.addresses, [Ipv4Addr::new(10, 1, 2, 3)]);
}
