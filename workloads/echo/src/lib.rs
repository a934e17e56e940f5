//! berth-echo: the workload Berth's tests, demo and benchmarks run in pods.
//!
//! An HTTP/1.1 server and a UDP echo on the same port number. Every answer names the pod,
//! the address that took the request and the client it came from, so a test can see which
//! backend a service picked and whether the client's address survived the datapath.
//! Liveness and readiness can be made to fail over HTTP or by a file (for exec probes and
//! `docker exec`).
//!
//! Plain std threads, no async runtime: the binary stays small and static, and a test can
//! start a server from a thread that has entered another network namespace (sockets belong
//! to the namespace they were created in, and threads inherit their creator's).

pub mod client;
mod http;

use std::{
    collections::HashMap,
    io::{self, Read as _, Write as _},
    net::{
        IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream,
        UdpSocket,
    },
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use http::{Parsed, Status};

/// The workload's container images. There is no registry: `cargo xtask images` builds them
/// locally, and the tests and the demo name them through these constants.
pub const IMAGE_V1: &str = "berth/echo:v1";
/// Same binary, `ECHO_VERSION=v2` baked in, so a rolling update shows in the replies.
pub const IMAGE_V2: &str = "berth/echo:v2";
/// Every image with the version it reports.
pub const IMAGES: &[(&str, &str)] = &[(IMAGE_V1, "v1"), (IMAGE_V2, "v2")];

pub const DEFAULT_PORT: u16 = 8080;
pub const DEFAULT_VERSION: &str = "v1";
/// While this file exists the liveness endpoint fails (`docker exec <c> touch ...`).
pub const UNHEALTHY_FILE: &str = "/tmp/berth-unhealthy";
/// While this file exists the readiness endpoint fails.
pub const UNREADY_FILE: &str = "/tmp/berth-unready";

/// How long a blocked thread waits before looking at the stop flag again: it bounds how
/// long `stop()` takes, and costs a wake-up per thread per interval while idle.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    #[error("could not listen on {addr} ({proto}): {source}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArg {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("unknown argument {0:?} (usage: berth-echo [--port N] [--bind ADDR])")]
    UnknownArg(String),
    #[error("could not start a server thread: {0}")]
    Spawn(#[source] io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoConfig {
    pub bind: IpAddr,
    /// 0 picks a free port (the UDP socket then takes the same number).
    pub port: u16,
    pub pod_name: String,
    pub version: String,
    pub unhealthy_file: PathBuf,
    pub unready_file: PathBuf,
    /// Numbered lines written to stdout at start (as agnhost's logs-generator does), so
    /// tests can fill a container's log past its rotation size.
    pub log_lines: u64,
}

impl EchoConfig {
    /// A server on a free loopback port, for tests.
    pub fn loopback(pod_name: &str) -> Self {
        EchoConfig {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            pod_name: pod_name.to_owned(),
            version: DEFAULT_VERSION.to_owned(),
            unhealthy_file: PathBuf::from(UNHEALTHY_FILE),
            unready_file: PathBuf::from(UNREADY_FILE),
            log_lines: 0,
        }
    }

    /// The binary's configuration: flags win over the environment (`ECHO_PORT`,
    /// `POD_NAME`, `ECHO_VERSION`). The environment comes in as a lookup function so tests
    /// never touch the process environment.
    pub fn from_args_and_env<I, F>(args: I, env: F) -> Result<Self, EchoError>
    where
        I: IntoIterator<Item = String>,
        F: Fn(&str) -> Option<String>,
    {
        let mut port = match env("ECHO_PORT") {
            Some(value) => parse_port(&value)?,
            None => DEFAULT_PORT,
        };
        let mut bind = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let mut log_lines = 0;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (arg.clone(), None),
            };
            let mut value = |what: &'static str| {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| EchoError::InvalidArg {
                        what,
                        value: String::new(),
                        reason: format!("{flag} needs a value"),
                    })
            };
            match flag.as_str() {
                "--port" => port = parse_port(&value("port")?)?,
                "--bind" => {
                    let text = value("bind address")?;
                    bind = text.parse().map_err(|error| EchoError::InvalidArg {
                        what: "bind address",
                        value: text.clone(),
                        reason: format!("{error}"),
                    })?;
                }
                "--log-lines" => {
                    let text = value("log lines")?;
                    log_lines = text.trim().parse().map_err(|error| EchoError::InvalidArg {
                        what: "log lines",
                        value: text.clone(),
                        reason: format!("{error}"),
                    })?;
                }
                _ => return Err(EchoError::UnknownArg(arg)),
            }
        }
        let pod_name = env("POD_NAME")
            .filter(|name| !name.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|name| name.trim().to_owned())
            })
            .or_else(|| env("HOSTNAME"))
            .unwrap_or_else(|| "unknown".to_owned());
        let version = env("ECHO_VERSION")
            .filter(|version| !version.is_empty())
            .unwrap_or_else(|| DEFAULT_VERSION.to_owned());
        Ok(EchoConfig {
            bind,
            port,
            pod_name,
            version,
            unhealthy_file: PathBuf::from(UNHEALTHY_FILE),
            unready_file: PathBuf::from(UNREADY_FILE),
            log_lines,
        })
    }
}

fn parse_port(value: &str) -> Result<u16, EchoError> {
    value.trim().parse().map_err(|error| EchoError::InvalidArg {
        what: "port",
        value: value.to_owned(),
        reason: format!("{error}"),
    })
}

/// One answer of the echo server, as tests read it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub pod: String,
    pub addr: SocketAddr,
    pub client: SocketAddr,
    pub version: String,
}

impl Reply {
    /// The one line the server sends (with its newline).
    pub fn line(&self) -> String {
        format!(
            "pod={} addr={} client={} version={}\n",
            self.pod, self.addr, self.client, self.version
        )
    }

    /// Reads back a line the server sent; None when it isn't one.
    pub fn parse(line: &str) -> Option<Reply> {
        let mut pod = None;
        let mut addr = None;
        let mut client = None;
        let mut version = None;
        for field in line.split_whitespace() {
            let (key, value) = field.split_once('=')?;
            match key {
                "pod" => pod = Some(value.to_owned()),
                "addr" => addr = value.parse().ok(),
                "client" => client = value.parse().ok(),
                "version" => version = Some(value.to_owned()),
                _ => return None,
            }
        }
        Some(Reply {
            pod: pod?,
            addr: addr?,
            client: client?,
            version: version?,
        })
    }
}

struct Shared {
    config: EchoConfig,
    stop: AtomicBool,
    live_failed: AtomicBool,
    ready_failed: AtomicBool,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn live(&self) -> bool {
        !self.live_failed.load(Ordering::Relaxed) && !self.config.unhealthy_file.exists()
    }

    fn ready(&self) -> bool {
        !self.ready_failed.load(Ordering::Relaxed) && !self.config.unready_file.exists()
    }

    fn reply(&self, addr: SocketAddr, client: SocketAddr) -> String {
        Reply {
            pod: self.config.pod_name.clone(),
            addr,
            client,
            version: self.config.version.clone(),
        }
        .line()
    }
}

/// A running server. `stop()` or dropping it shuts every thread down and joins them.
pub struct EchoServer {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    /// Binds TCP and UDP on `config.port` in the calling thread's network namespace and
    /// starts serving.
    pub fn bind(config: EchoConfig) -> Result<EchoServer, EchoError> {
        let (listener, udp) = bind_pair(config.bind, config.port)?;
        let local_addr = listener.local_addr().map_err(|source| EchoError::Bind {
            addr: SocketAddr::new(config.bind, config.port),
            proto: "tcp",
            source,
        })?;
        let bind_error = |proto, source| EchoError::Bind {
            addr: local_addr,
            proto,
            source,
        };
        // Accept waits in poll() instead, so the thread can notice stop() without a wake-up
        // connection (which could not reach it from another network namespace anyway).
        listener
            .set_nonblocking(true)
            .map_err(|source| bind_error("tcp", source))?;
        udp.set_read_timeout(Some(POLL_INTERVAL))
            .map_err(|source| bind_error("udp", source))?;

        let shared = Arc::new(Shared {
            config,
            stop: AtomicBool::new(false),
            live_failed: AtomicBool::new(false),
            ready_failed: AtomicBool::new(false),
        });
        let mut server = EchoServer {
            local_addr,
            shared: Arc::clone(&shared),
            threads: Vec::new(),
        };
        let http_shared = Arc::clone(&shared);
        let http = thread::Builder::new()
            .name("echo-http".to_owned())
            .spawn(move || accept_loop(&listener, &http_shared))
            .map_err(EchoError::Spawn)?;
        server.threads.push(http);
        // On failure here, dropping `server` stops the HTTP thread again.
        let udp = thread::Builder::new()
            .name("echo-udp".to_owned())
            .spawn(move || udp_loop(&udp, &shared))
            .map_err(EchoError::Spawn)?;
        server.threads.push(udp);
        Ok(server)
    }

    /// The TCP address (the UDP socket has the same one).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn set_live(&self, live: bool) {
        self.shared.live_failed.store(!live, Ordering::Relaxed);
    }

    pub fn set_ready(&self, ready: bool) {
        self.shared.ready_failed.store(!ready, Ordering::Relaxed);
    }

    /// Stops serving and waits for every thread (open connections are closed).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for thread in self.threads.drain(..) {
            // A panicked thread has nothing left to clean up; stopping the rest matters more.
            let _ = thread.join();
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds TCP and UDP to the same port number; with port 0 the UDP side may find the port
/// the kernel gave TCP already taken, so that case tries a few more times.
fn bind_pair(ip: IpAddr, port: u16) -> Result<(TcpListener, UdpSocket), EchoError> {
    const ATTEMPTS: usize = 16;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let requested = SocketAddr::new(ip, port);
        let listener = TcpListener::bind(requested).map_err(|source| EchoError::Bind {
            addr: requested,
            proto: "tcp",
            source,
        })?;
        let tcp_addr = listener.local_addr().map_err(|source| EchoError::Bind {
            addr: requested,
            proto: "tcp",
            source,
        })?;
        match UdpSocket::bind(tcp_addr) {
            Ok(udp) => return Ok((listener, udp)),
            Err(source)
                if port == 0 && source.kind() == io::ErrorKind::AddrInUse && attempt < ATTEMPTS => {
            }
            Err(source) => {
                return Err(EchoError::Bind {
                    addr: tcp_addr,
                    proto: "udp",
                    source,
                });
            }
        }
    }
}

/// Waits until `listener` has a connection to accept, or `timeout` passes.
fn wait_readable(listener: &TcpListener, timeout: Duration) {
    let mut fds = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is one valid pollfd that outlives the call, and nfds says one; the fd
    // stays open because `listener` is borrowed for the duration.
    unsafe {
        libc::poll(&mut fds, 1, millis);
    }
}

/// How long a stopping server still waits for a request on an open connection.
const STOP_DRAIN: Duration = Duration::from_secs(1);

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    let mut serve = |stream: TcpStream, peer: SocketAddr| {
        // Finished threads need no join; keep only the ones stop() must wait for.
        connections.retain(|connection| !connection.is_finished());
        let shared = Arc::clone(shared);
        match thread::Builder::new()
            .name("echo-conn".to_owned())
            .spawn(move || serve_connection(stream, peer, &shared))
        {
            Ok(connection) => connections.push(connection),
            Err(error) => eprintln!("berth-echo: dropping a connection from {peer}: {error}"),
        }
    };
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, peer)) => serve(stream, peer),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                wait_readable(listener, POLL_INTERVAL);
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                eprintln!("berth-echo: accept failed: {error}");
                thread::sleep(POLL_INTERVAL);
            }
        }
    }
    // A graceful stop: connections the kernel completed before it are served, not reset
    // when the listener closes (the listener is non-blocking, so this ends at the first
    // WouldBlock).
    while let Ok((stream, peer)) = listener.accept() {
        serve(stream, peer);
    }
    for connection in connections {
        let _ = connection.join();
    }
}

fn serve_connection(mut stream: TcpStream, peer: SocketAddr, shared: &Shared) {
    // The accepted socket's local address is the one the client reached (the pod's own
    // address, whatever the listener was bound to).
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(POLL_INTERVAL)))
        .and_then(|()| stream.set_nodelay(true));
    if setup.is_err() {
        return;
    }
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    // Once stopping: until when a connection may still bring its request.
    let mut drain_until: Option<Instant> = None;
    loop {
        // Answer every complete request already buffered (clients may pipeline).
        loop {
            let (response, consumed, keep_alive) = match http::parse(&buf) {
                Parsed::Partial => break,
                Parsed::Invalid(status) => {
                    let body = format!("{} {}\n", status.code, status.reason);
                    let _ = stream.write_all(&http::response(status, &body, false, false, false));
                    let _ = stream.shutdown(Shutdown::Write);
                    return;
                }
                Parsed::Complete { request, consumed } => {
                    let (status, body) = route(shared, &request, local, peer);
                    // While stopping, the answer says `Connection: close`, so a keep-alive
                    // client opens its next connection elsewhere instead of losing it.
                    let keep_alive = request.keep_alive && !shared.stopping();
                    let response = http::response(
                        status,
                        &body,
                        keep_alive,
                        request.http10,
                        request.method == "HEAD",
                    );
                    (response, consumed, keep_alive)
                }
            };
            if stream.write_all(&response).is_err() {
                return;
            }
            buf.drain(..consumed);
            if !keep_alive {
                let _ = stream.shutdown(Shutdown::Write);
                return;
            }
        }
        // A graceful stop finishes what is in flight: a request already sent (or still on
        // its way on a just-accepted connection) is answered, an idle connection closed.
        if shared.stopping() {
            let until = *drain_until.get_or_insert_with(|| Instant::now() + STOP_DRAIN);
            if Instant::now() >= until {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(read) => buf.extend_from_slice(&chunk[..read]),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

fn route(
    shared: &Shared,
    request: &http::Request<'_>,
    local: SocketAddr,
    peer: SocketAddr,
) -> (Status, String) {
    let health = |ok: bool| {
        if ok {
            (Status::OK, "ok\n".to_owned())
        } else {
            (Status::SERVICE_UNAVAILABLE, "failing\n".to_owned())
        }
    };
    let done = || (Status::OK, "ok\n".to_owned());
    match (request.method, request.path) {
        ("GET" | "HEAD", "/") => (Status::OK, shared.reply(local, peer)),
        ("GET" | "HEAD", "/healthz") => health(shared.live()),
        ("GET" | "HEAD", "/readyz") => health(shared.ready()),
        ("POST", "/fail/live") => {
            shared.live_failed.store(true, Ordering::Relaxed);
            done()
        }
        ("POST", "/fail/ready") => {
            shared.ready_failed.store(true, Ordering::Relaxed);
            done()
        }
        ("POST", "/recover") => {
            shared.live_failed.store(false, Ordering::Relaxed);
            shared.ready_failed.store(false, Ordering::Relaxed);
            done()
        }
        (_, "/" | "/healthz" | "/readyz" | "/fail/live" | "/fail/ready" | "/recover") => (
            Status::METHOD_NOT_ALLOWED,
            "method not allowed\n".to_owned(),
        ),
        _ => (Status::NOT_FOUND, "not found\n".to_owned()),
    }
}

fn udp_loop(socket: &UdpSocket, shared: &Shared) {
    let Ok(bound) = socket.local_addr() else {
        return;
    };
    let mut sources = HashMap::new();
    // Datagram contents don't matter; a short buffer just truncates big ones.
    let mut buf = [0u8; 2048];
    while !shared.stopping() {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                let local =
                    SocketAddr::new(reply_source(bound.ip(), peer, &mut sources), bound.port());
                // A client that went away can't be answered; nothing else to do about it.
                let _ = socket.send_to(shared.reply(local, peer).as_bytes(), peer);
            }
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(error) => {
                eprintln!("berth-echo: udp receive failed: {error}");
                thread::sleep(POLL_INTERVAL);
            }
        }
    }
}

/// The address a UDP reply to `peer` leaves from. A socket bound to the wildcard address
/// doesn't know which address a datagram was sent to; the kernel's choice of source for the
/// reply (learnt by connecting a throwaway socket: a route lookup, nothing is sent) is the
/// pod's address, which is what the reply line should show. Cached per client address.
fn reply_source(bound: IpAddr, peer: SocketAddr, cache: &mut HashMap<IpAddr, IpAddr>) -> IpAddr {
    if !bound.is_unspecified() {
        return bound;
    }
    if let Some(source) = cache.get(&peer.ip()) {
        return *source;
    }
    let wildcard = match peer {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let source = UdpSocket::bind(wildcard)
        .and_then(|probe| {
            probe.connect(peer)?;
            probe.local_addr()
        })
        .map_or(bound, |addr| addr.ip());
    if cache.len() >= 1024 {
        cache.clear();
    }
    cache.insert(peer.ip(), source);
    source
}

/// One HTTP GET / on a new connection from the current thread's network namespace.
pub fn http_get(target: SocketAddrV4) -> Result<Reply, String> {
    let response = client::http_fetch(SocketAddr::V4(target), "berth", "/", Duration::from_secs(2))
        .map_err(|error| error.to_string())?;
    let body = String::from_utf8_lossy(&response.body);
    Reply::parse(body.trim()).ok_or_else(|| format!("not an echo reply from {target}: {body:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |key| {
            pairs
                .iter()
                .find(|(name, _)| *name == key)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| (*word).to_owned()).collect()
    }

    #[test]
    fn flags_win_over_environment() {
        let env = env_of(&[
            ("ECHO_PORT", "9000"),
            ("POD_NAME", "web-1"),
            ("ECHO_VERSION", "v2"),
        ]);
        let config = EchoConfig::from_args_and_env(args(&[]), &env).expect("valid config");
        assert_eq!(config.port, 9000);
        assert_eq!(config.pod_name, "web-1");
        assert_eq!(config.version, "v2");
        let config =
            EchoConfig::from_args_and_env(args(&["--port", "81", "--bind=127.0.0.1"]), &env)
                .expect("valid config");
        assert_eq!(config.port, 81);
        assert_eq!(config.bind, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(config.log_lines, 0);
        let config = EchoConfig::from_args_and_env(args(&["--log-lines", "2000"]), &env)
            .expect("valid config");
        assert_eq!(config.log_lines, 2000);
        assert!(EchoConfig::from_args_and_env(args(&["--log-lines", "-1"]), &env).is_err());
    }

    #[test]
    fn defaults_without_environment() {
        let config = EchoConfig::from_args_and_env(args(&[]), env_of(&[])).expect("valid config");
        assert_eq!(config.port, DEFAULT_PORT);
        assert_eq!(config.version, DEFAULT_VERSION);
        assert!(!config.pod_name.is_empty(), "falls back to the hostname");
    }

    #[test]
    fn bad_arguments_are_errors() {
        let env = env_of(&[]);
        assert!(matches!(
            EchoConfig::from_args_and_env(args(&["--port", "http"]), &env),
            Err(EchoError::InvalidArg { what: "port", .. })
        ));
        assert!(matches!(
            EchoConfig::from_args_and_env(args(&["--port"]), &env),
            Err(EchoError::InvalidArg { .. })
        ));
        assert!(matches!(
            EchoConfig::from_args_and_env(args(&["--verbose"]), &env),
            Err(EchoError::UnknownArg(_))
        ));
        assert!(EchoConfig::from_args_and_env(args(&[]), env_of(&[("ECHO_PORT", "x")])).is_err());
    }

    #[test]
    fn reply_lines_round_trip() {
        let reply = Reply {
            pod: "web-1".to_owned(),
            addr: "198.18.1.2:8080".parse().expect("addr"),
            client: "198.18.0.1:40000".parse().expect("addr"),
            version: "v1".to_owned(),
        };
        let line = reply.line();
        assert_eq!(
            line,
            "pod=web-1 addr=198.18.1.2:8080 client=198.18.0.1:40000 version=v1\n"
        );
        assert_eq!(Reply::parse(&line), Some(reply));
        assert_eq!(Reply::parse("ok\n"), None);
    }
}
