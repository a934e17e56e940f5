//! Container probes: startup, liveness and readiness, by HTTP GET, TCP connect or exec.
//!
//! One worker task per running container does what Kubernetes' prober does: the startup
//! probe first (it gates the other two), then liveness and readiness side by side. A
//! probe's *result* changes only after `success_threshold` consecutive successes or
//! `failure_threshold` consecutive failures; every change is reported at once through the
//! worker's reporter, so the agent can take a backend out of the datapath without waiting
//! for anything else. A liveness (or startup) failure stops the container right there:
//! the pod manager then restarts it under the pod's restart policy, as the kubelet does.
//!
//! HTTP and TCP probes connect from the agent's network namespace (or the node namespace
//! given, in tests) to the pod's IP, the way the kubelet probes from the host.
//!
//! ## Defaults (tighter than Kubernetes': failover is the point)
//!
//! | probe     | period | timeout | success | failure | Kubernetes          |
//! |-----------|--------|---------|---------|---------|---------------------|
//! | readiness | 1 s    | 1 s     | 1       | 1       | 10 s, 1 s, 1, 3     |
//! | liveness  | 1 s    | 1 s     | 1       | 2       | 10 s, 1 s, 1, 3     |
//! | startup   | 1 s    | 1 s     | 1       | 10      | 10 s, 1 s, 1, 3     |
//!
//! Readiness fails on the first failed probe: taking a backend out of the datapath is
//! cheap and undone by the next success, so a readiness failure shows within one period
//! (plus the probe's timeout). Liveness waits for a second failure, because a restart is
//! not cheap and one lost probe on a busy node should not cause one. Startup allows
//! 10 s (failure threshold × period) before a slow starter is restarted.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
    time::MissedTickBehavior,
};

use crate::{net, runtime::DockerRuntime};

pub const DEFAULT_PERIOD: Duration = Duration::from_secs(1);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;
pub const DEFAULT_READINESS_FAILURE_THRESHOLD: u32 = 1;
pub const DEFAULT_LIVENESS_FAILURE_THRESHOLD: u32 = 2;
pub const DEFAULT_STARTUP_FAILURE_THRESHOLD: u32 = 10;
/// Only the status line is read: a probe doesn't need the body, and a huge or endless
/// one must not keep the probe reading.
const MAX_HTTP_HEAD: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    pub fn default_failure_threshold(self) -> u32 {
        match self {
            ProbeKind::Startup => DEFAULT_STARTUP_FAILURE_THRESHOLD,
            ProbeKind::Liveness => DEFAULT_LIVENESS_FAILURE_THRESHOLD,
            ProbeKind::Readiness => DEFAULT_READINESS_FAILURE_THRESHOLD,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    /// Success is a 2xx or 3xx answer to `GET path` on podIP:port.
    HttpGet { port: u16, path: String },
    /// Success is an accepted connection to podIP:port.
    TcpSocket { port: u16 },
    /// Success is exit code 0 of `command` run in the container (docker exec).
    Exec { command: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub action: ProbeAction,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    /// Consecutive successes that make the result Success (always 1 for liveness and
    /// startup, as in Kubernetes).
    pub success_threshold: u32,
    /// Consecutive failures that make the result Failure.
    pub failure_threshold: u32,
}

impl ProbeSpec {
    /// A probe with this module's defaults for `kind`.
    pub fn new(kind: ProbeKind, action: ProbeAction) -> Self {
        ProbeSpec {
            action,
            initial_delay: Duration::ZERO,
            period: DEFAULT_PERIOD,
            timeout: DEFAULT_TIMEOUT,
            success_threshold: DEFAULT_SUCCESS_THRESHOLD,
            failure_threshold: kind.default_failure_threshold(),
        }
    }
}

/// The probes of one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerProbes {
    pub startup: Option<ProbeSpec>,
    pub liveness: Option<ProbeSpec>,
    pub readiness: Option<ProbeSpec>,
}

impl ContainerProbes {
    pub fn is_empty(&self) -> bool {
        self.startup.is_none() && self.liveness.is_none() && self.readiness.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeResult {
    Success,
    Failure,
}

/// A probe's result changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeEvent {
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub pod_ip: Ipv4Addr,
    pub container: String,
    pub container_id: String,
    pub kind: ProbeKind,
    pub result: ProbeResult,
    /// What the last probe saw ("HTTP 503", "connection refused", "exit code 1", ...).
    pub message: String,
}

/// What the probes have decided about one container instance, read by the pod manager
/// for the container's status.
#[derive(Debug, Default)]
pub struct ProbeState {
    inner: Mutex<ProbeStateInner>,
}

#[derive(Debug, Default, Clone, Copy)]
struct ProbeStateInner {
    started: bool,
    ready: Option<bool>,
    /// The probe whose failure made the worker stop the container.
    killed_by: Option<ProbeKind>,
}

impl ProbeState {
    /// Whether the startup probe has passed (true at once without one).
    pub fn started(&self) -> bool {
        self.read().started
    }

    /// The readiness result; None before the first one.
    pub fn ready(&self) -> Option<bool> {
        self.read().ready
    }

    /// Whether the worker stopped the container after a liveness or startup failure.
    pub fn killed(&self) -> bool {
        self.read().killed_by.is_some()
    }

    /// Which probe's failure made the worker stop the container.
    pub fn killed_by(&self) -> Option<ProbeKind> {
        self.read().killed_by
    }

    fn read(&self) -> ProbeStateInner {
        // A poisoned lock only means a reporter panicked mid-update of plain flags.
        *self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut ProbeStateInner)) {
        f(&mut self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()));
    }
}

/// What a worker needs to know about the container it probes.
#[derive(Clone)]
pub struct ProbeTarget {
    pub runtime: DockerRuntime,
    /// The network namespace (a /run/netns name) to connect from; None is the agent's.
    pub netns: Option<String>,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub pod_ip: Ipv4Addr,
    pub container: String,
    pub container_id: String,
    /// How long a container stopped for failing its probe gets to exit before SIGKILL.
    pub stop_grace: Duration,
}

/// Receives every probe result change; called from the worker task, so it must be quick
/// (send on a channel, wake a loop).
pub type Reporter = Arc<dyn Fn(ProbeEvent) + Send + Sync>;

/// Runs the container's probes until the container is killed for failing one, or the
/// task is aborted (the pod manager does that when the container goes).
///
/// `adopted` skips the initial delays: the container was running before the agent
/// (re)started, and its state should be known again within one period.
pub async fn run_worker(
    target: ProbeTarget,
    probes: ContainerProbes,
    state: Arc<ProbeState>,
    report: Reporter,
    adopted: bool,
) {
    let worker = Worker {
        target,
        state,
        report,
        adopted,
    };
    if let Some(startup) = &probes.startup {
        let mut failed = false;
        worker
            .probe_loop(ProbeKind::Startup, startup, |result| {
                failed = result == ProbeResult::Failure;
                true
            })
            .await;
        if failed {
            worker.kill(ProbeKind::Startup).await;
            return;
        }
    }
    worker.state.update(|state| state.started = true);
    let liveness = async {
        if let Some(spec) = &probes.liveness {
            let mut failed = false;
            worker
                .probe_loop(ProbeKind::Liveness, spec, |result| {
                    failed = result == ProbeResult::Failure;
                    failed
                })
                .await;
            if failed {
                worker.kill(ProbeKind::Liveness).await;
            }
        }
    };
    let readiness = async {
        match &probes.readiness {
            Some(spec) => {
                worker
                    .probe_loop(ProbeKind::Readiness, spec, |result| {
                        worker
                            .state
                            .update(|state| state.ready = Some(result == ProbeResult::Success));
                        false
                    })
                    .await;
            }
            None => {
                worker.state.update(|state| state.ready = Some(true));
                std::future::pending::<()>().await;
            }
        }
    };
    // A liveness kill ends the container; readiness of a dead container means nothing,
    // so the first of the two to finish ends the worker (readiness never finishes on its
    // own, and liveness only by a kill).
    tokio::select! {
        () = liveness, if probes.liveness.is_some() => {}
        () = readiness => {}
    }
}

struct Worker {
    target: ProbeTarget,
    state: Arc<ProbeState>,
    report: Reporter,
    adopted: bool,
}

impl Worker {
    /// Probes every period and calls `on_change` with each new result; returns when
    /// `on_change` says so.
    async fn probe_loop(
        &self,
        kind: ProbeKind,
        spec: &ProbeSpec,
        mut on_change: impl FnMut(ProbeResult) -> bool,
    ) {
        if !self.adopted && !spec.initial_delay.is_zero() {
            tokio::time::sleep(spec.initial_delay).await;
        }
        // Delay, not burst: after a slow probe the next one comes a period later rather
        // than a catch-up volley against a struggling container.
        let mut ticks = tokio::time::interval(spec.period.max(Duration::from_millis(10)));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut current = None;
        let (mut successes, mut failures) = (0u32, 0u32);
        loop {
            ticks.tick().await;
            let (result, message) = probe_once(&self.target, &spec.action, spec.timeout).await;
            match result {
                ProbeResult::Success => {
                    successes = successes.saturating_add(1);
                    failures = 0;
                }
                ProbeResult::Failure => {
                    failures = failures.saturating_add(1);
                    successes = 0;
                }
            }
            let decided = if successes >= spec.success_threshold.max(1) {
                Some(ProbeResult::Success)
            } else if failures >= spec.failure_threshold.max(1) {
                Some(ProbeResult::Failure)
            } else {
                None
            };
            let Some(decided) = decided.filter(|decided| current != Some(*decided)) else {
                continue;
            };
            current = Some(decided);
            tracing::info!(
                pod = %format!("{}/{}", self.target.pod_namespace, self.target.pod_name),
                container = %self.target.container,
                ?kind,
                ?decided,
                %message,
                "probe result changed"
            );
            // The state changes before the report goes out, so whoever reacts to the
            // event and reads the state sees them agree.
            let done = on_change(decided);
            (self.report)(ProbeEvent {
                pod_namespace: self.target.pod_namespace.clone(),
                pod_name: self.target.pod_name.clone(),
                pod_uid: self.target.pod_uid.clone(),
                pod_ip: self.target.pod_ip,
                container: self.target.container.clone(),
                container_id: self.target.container_id.clone(),
                kind,
                result: decided,
                message,
            });
            if done {
                return;
            }
        }
    }

    async fn kill(&self, kind: ProbeKind) {
        self.state.update(|state| {
            state.killed_by = Some(kind);
            state.ready = Some(false);
        });
        tracing::warn!(
            pod = %format!("{}/{}", self.target.pod_namespace, self.target.pod_name),
            container = %self.target.container,
            ?kind,
            "probe failed: stopping the container so it is restarted"
        );
        if let Err(error) = self
            .target
            .runtime
            .stop(&self.target.container_id, self.target.stop_grace)
            .await
        {
            tracing::warn!(%error, container = %self.target.container_id, "stopping a container that failed its probe");
        }
    }
}

/// Runs one probe; the message says what was seen either way.
pub async fn probe_once(
    target: &ProbeTarget,
    action: &ProbeAction,
    timeout: Duration,
) -> (ProbeResult, String) {
    let outcome = match action {
        ProbeAction::HttpGet { port, path } => {
            let addr = SocketAddrV4::new(target.pod_ip, *port);
            with_timeout(timeout, http_get(target.netns.as_deref(), addr, path)).await
        }
        ProbeAction::TcpSocket { port } => {
            let addr = SocketAddrV4::new(target.pod_ip, *port);
            with_timeout(timeout, async {
                connect(target.netns.as_deref(), addr)
                    .await
                    .map(|_| format!("connected to {addr}"))
            })
            .await
        }
        ProbeAction::Exec { command } => {
            match target
                .runtime
                .exec(&target.container_id, command, timeout)
                .await
            {
                Ok(output) if output.exit_code == 0 => Ok("exit code 0".to_owned()),
                Ok(output) => Err(format!(
                    "exit code {}: {}",
                    output.exit_code,
                    output.output.trim()
                )),
                Err(error) => Err(error.to_string()),
            }
        }
    };
    match outcome {
        Ok(message) => (ProbeResult::Success, message),
        Err(message) => (ProbeResult::Failure, message),
    }
}

async fn with_timeout(
    timeout: Duration,
    probe: impl Future<Output = Result<String, String>>,
) -> Result<String, String> {
    tokio::time::timeout(timeout, probe)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// Connects to `addr` from `netns`. A socket belongs to the namespace it was created in
/// for its whole life, so only its creation needs to happen there: the short-lived
/// helper thread of `in_netns` makes it, and the connect runs on the async runtime.
async fn connect(netns: Option<&str>, addr: SocketAddrV4) -> Result<TcpStream, String> {
    let socket = match netns {
        None => TcpSocket::new_v4(),
        Some(name) => net::in_netns(name, TcpSocket::new_v4).map_err(|error| error.to_string())?,
    }
    .map_err(|error| format!("creating a socket: {error}"))?;
    socket
        .connect(SocketAddr::V4(addr))
        .await
        .map_err(|error| format!("connecting to {addr}: {error}"))
}

async fn http_get(netns: Option<&str>, addr: SocketAddrV4, path: &str) -> Result<String, String> {
    let mut stream = connect(netns, addr).await?;
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: berth-probe/1\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|error| format!("sending to {addr}: {error}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|pair| pair == b"\r\n") && head.len() < MAX_HTTP_HEAD {
        let read = stream
            .read(&mut buf)
            .await
            .map_err(|error| format!("reading from {addr}: {error}"))?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buf[..read]);
    }
    let code = parse_status_code(&head)
        .ok_or_else(|| format!("{addr} did not answer with an HTTP status line"))?;
    if (200..400).contains(&code) {
        Ok(format!("HTTP {code}"))
    } else {
        Err(format!("HTTP {code} from GET {path}"))
    }
}

fn parse_status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|byte| *byte == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    if !words.next()?.starts_with("HTTP/") {
        return None;
    }
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_tighter_than_kubernetes() {
        let readiness = ProbeSpec::new(ProbeKind::Readiness, ProbeAction::TcpSocket { port: 8080 });
        assert_eq!(readiness.period, Duration::from_secs(1));
        assert_eq!(readiness.failure_threshold, 1);
        let liveness = ProbeSpec::new(ProbeKind::Liveness, ProbeAction::TcpSocket { port: 1 });
        assert_eq!(liveness.failure_threshold, 2);
        assert_eq!(liveness.success_threshold, 1);
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_code(b"HTTP/1.0 503 Service Unavailable\r\nX: y"),
            Some(503)
        );
        assert_eq!(parse_status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_code(b"HTTP/1.1 abc\r\n"), None);
        assert_eq!(parse_status_code(b""), None);
    }

    #[tokio::test]
    async fn probes_a_local_http_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind on loopback");
        let port = listener.local_addr().expect("local address").port();
        let server = tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        assert_eq!(
            http_get(None, addr, "/healthz").await,
            Ok("HTTP 200".to_owned())
        );
        let failed = http_get(None, addr, "readyz").await;
        assert!(
            failed
                .as_ref()
                .is_err_and(|message| message.contains("503")),
            "{failed:?}"
        );
        server.await.expect("the server task");
        // Nothing listens any more: refused, not hung.
        assert!(connect(None, addr).await.is_err());
    }
}
