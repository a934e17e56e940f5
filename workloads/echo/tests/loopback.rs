//! The echo server over loopback, as a probe, wrk or a test client would use it.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use berth_echo::{EchoConfig, EchoServer, Reply};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Health files of their own per server, so tests running in parallel don't see each other's.
fn config(pod: &str) -> EchoConfig {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = std::env::temp_dir().join(format!("berth-echo-test-{}-{n}", std::process::id()));
    EchoConfig {
        unhealthy_file: PathBuf::from(format!("{}-unhealthy", base.display())),
        unready_file: PathBuf::from(format!("{}-unready", base.display())),
        ..EchoConfig::loopback(pod)
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect to the echo server");
    stream.set_read_timeout(Some(TIMEOUT)).expect("set timeout");
    stream
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Reads one response framed by Content-Length, leaving the connection usable.
fn read_response(reader: &mut BufReader<&TcpStream>) -> Response {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("header has a colon");
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.parse().ok())
        .expect("Content-Length header");
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).expect("body");
    Response {
        status,
        headers,
        body: String::from_utf8(body).expect("text body"),
    }
}

fn request(addr: SocketAddr, method: &str, path: &str) -> Response {
    let stream = connect(addr);
    (&stream)
        .write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .expect("send request");
    read_response(&mut BufReader::new(&stream))
}

#[test]
fn get_root_names_pod_addresses_and_version() {
    let server = EchoServer::bind(EchoConfig {
        version: "v7".to_owned(),
        ..config("web-0")
    })
    .expect("bind");
    let stream = connect(server.local_addr());
    let client = stream.local_addr().expect("client address");
    (&stream)
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut reader = BufReader::new(&stream);
    let response = read_response(&mut reader);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("Connection"), Some("close"));
    assert_eq!(
        response.body,
        format!(
            "pod=web-0 addr={} client={client} version=v7\n",
            server.local_addr()
        )
    );
    let mut rest = Vec::new();
    reader
        .read_to_end(&mut rest)
        .expect("server closes after Connection: close");
    assert!(rest.is_empty());
    server.stop();
}

#[test]
fn keep_alive_serves_two_requests_on_one_connection() {
    let server = EchoServer::bind(config("web-1")).expect("bind");
    let stream = connect(server.local_addr());
    let client = stream.local_addr().expect("client address");
    let mut reader = BufReader::new(&stream);
    for _ in 0..2 {
        (&stream)
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send");
        let response = read_response(&mut reader);
        assert_eq!(response.status, 200);
        assert_eq!(response.header("Connection"), None);
        let reply = Reply::parse(&response.body).expect("a reply line");
        assert_eq!(
            reply.client, client,
            "both answers come over the same connection"
        );
    }
    // Pipelined: two requests in one write, two answers back in order.
    (&stream)
        .write_all(b"GET /healthz HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        .expect("send");
    assert_eq!(read_response(&mut reader).body, "ok\n");
    assert!(read_response(&mut reader).body.starts_with("pod=web-1 "));
    // stop() must not hang on the idle keep-alive connection still open here.
    let started = Instant::now();
    server.stop();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_stopping_server_answers_what_is_in_flight_and_closes() {
    let server = EchoServer::bind(config("web-9")).expect("bind");
    let kept = connect(server.local_addr());
    let mut kept_reader = BufReader::new(&kept);
    (&kept)
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    assert_eq!(read_response(&mut kept_reader).header("Connection"), None);
    // Connected, request not sent yet: as a client whose SYN beat the SIGTERM.
    let fresh = connect(server.local_addr());
    let stopping = std::thread::spawn(move || {
        let started = Instant::now();
        server.stop();
        started.elapsed()
    });
    std::thread::sleep(Duration::from_millis(200));
    for mut stream in [&fresh, &kept] {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send while stopping");
        let response = read_response(&mut BufReader::new(stream));
        assert_eq!(response.status, 200);
        // So a keep-alive client takes its next request elsewhere.
        assert_eq!(response.header("Connection"), Some("close"));
    }
    let took = stopping.join().expect("stop");
    assert!(took < Duration::from_secs(3), "stop took {took:?}");
}

#[test]
fn health_endpoints_follow_http_toggles() {
    let server = EchoServer::bind(config("web-2")).expect("bind");
    let addr = server.local_addr();
    assert_eq!(request(addr, "GET", "/healthz").status, 200);
    assert_eq!(request(addr, "GET", "/readyz").status, 200);

    assert_eq!(request(addr, "POST", "/fail/ready").status, 200);
    let ready = request(addr, "GET", "/readyz");
    assert_eq!((ready.status, ready.body.as_str()), (503, "failing\n"));
    assert_eq!(
        request(addr, "GET", "/healthz").status,
        200,
        "liveness is separate"
    );

    assert_eq!(request(addr, "POST", "/fail/live").status, 200);
    assert_eq!(request(addr, "GET", "/healthz").status, 503);

    assert_eq!(request(addr, "POST", "/recover").status, 200);
    assert_eq!(request(addr, "GET", "/healthz").status, 200);
    assert_eq!(request(addr, "GET", "/readyz").status, 200);

    assert_eq!(request(addr, "GET", "/nope").status, 404);
    assert_eq!(request(addr, "GET", "/fail/live").status, 405);
}

#[test]
fn health_endpoints_follow_files() {
    let config = config("web-3");
    let (unhealthy, unready) = (config.unhealthy_file.clone(), config.unready_file.clone());
    let server = EchoServer::bind(config).expect("bind");
    let addr = server.local_addr();

    std::fs::write(&unhealthy, b"").expect("create the unhealthy file");
    let live = request(addr, "GET", "/healthz");
    std::fs::remove_file(&unhealthy).expect("remove the unhealthy file");
    assert_eq!(live.status, 503);
    assert_eq!(request(addr, "GET", "/healthz").status, 200);

    std::fs::write(&unready, b"").expect("create the unready file");
    let ready = request(addr, "GET", "/readyz");
    let live = request(addr, "GET", "/healthz");
    std::fs::remove_file(&unready).expect("remove the unready file");
    assert_eq!(ready.status, 503);
    assert_eq!(live.status, 200);
    assert_eq!(request(addr, "GET", "/readyz").status, 200);
}

#[test]
fn udp_datagrams_get_the_reply_line() {
    let server = EchoServer::bind(config("web-4")).expect("bind");
    let socket = UdpSocket::bind("127.0.0.1:0").expect("client socket");
    socket.set_read_timeout(Some(TIMEOUT)).expect("set timeout");
    let client = socket.local_addr().expect("client address");
    for payload in [&b"hello"[..], &b""[..]] {
        socket
            .send_to(payload, server.local_addr())
            .expect("send datagram");
        let mut buf = [0u8; 512];
        let (len, from) = socket.recv_from(&mut buf).expect("an answer");
        assert_eq!(from, server.local_addr());
        let line = std::str::from_utf8(&buf[..len]).expect("text");
        assert_eq!(
            line,
            format!(
                "pod=web-4 addr={} client={client} version=v1\n",
                server.local_addr()
            )
        );
    }
}

#[test]
fn udp_on_the_wildcard_address_reports_the_address_it_answers_from() {
    let server = EchoServer::bind(EchoConfig {
        bind: "0.0.0.0".parse().expect("ip"),
        ..config("web-5")
    })
    .expect("bind");
    let port = server.local_addr().port();
    let socket = UdpSocket::bind("127.0.0.1:0").expect("client socket");
    socket.set_read_timeout(Some(TIMEOUT)).expect("set timeout");
    socket
        .send_to(b"x", ("127.0.0.1", port))
        .expect("send datagram");
    let mut buf = [0u8; 512];
    let (len, _) = socket.recv_from(&mut buf).expect("an answer");
    let reply = Reply::parse(std::str::from_utf8(&buf[..len]).expect("text")).expect("reply line");
    assert_eq!(reply.addr, SocketAddr::from(([127, 0, 0, 1], port)));
}

#[test]
fn malformed_requests_get_400_and_a_closed_connection() {
    let server = EchoServer::bind(config("web-6")).expect("bind");
    let stream = connect(server.local_addr());
    (&stream).write_all(b"NONSENSE\r\n\r\n").expect("send");
    let mut reader = BufReader::new(&stream);
    let response = read_response(&mut reader);
    assert_eq!(response.status, 400);
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("closed");
    assert!(rest.is_empty());
}
