//! The node API (berth.node.v1): what the control plane asks of this node for a user —
//! a container's logs, a command run in a container (to its end, or interactively),
//! an attach to a container, a TCP connection to a pod's port, and the backends the
//! datapath really serves a service with. The kubelet's port, behind the API server's
//! proxy.
//!
//! It is served over TLS with the node certificate (which names the node as a DNS name:
//! the control plane checks that name, whichever address it dials) and accepts only
//! clients whose certificate the cluster CA issued to the control plane
//! (O = berth:control-plane): other nodes hold certificates of the same CA and must not
//! run commands here.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use berth_api::{
    identity::{CONTROL_PLANE_ORGANIZATION, name_in_role},
    node::{
        ContainerRef, ExecRequest, ExecResponse, LogChunk, LogsRequest, PortForwardInput,
        PortForwardOutput, ServiceBackendsRequest, ServiceBackendsResponse, ServicePortBackends,
        SessionEnd, SessionInput, SessionOutput, TerminalSize,
        node_server::{Node, NodeServer},
        port_forward_input, session_input, session_output,
    },
};
use futures_util::{Stream, StreamExt as _};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    sync::mpsc,
};
use tonic::{
    Request, Response, Status, Streaming,
    transport::{Certificate, Identity, Server, ServerTlsConfig},
};

use crate::{
    datapath::Datapath,
    runtime::{
        ContainerSummary, DockerRuntime, LogOptions, RuntimeError, SessionChunk, SessionStreams,
        labels,
    },
};

/// Commands given no timeout get this long.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// And none gets longer: the control plane holds a request open meanwhile.
pub const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(600);
/// Output of one exec kept beyond this is dropped (and said to be).
pub const MAX_EXEC_OUTPUT: usize = 1 << 20;
/// A pod's port that does not accept a connection within this long is an error.
const PORT_FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from a forwarded connection per message.
const PORT_FORWARD_CHUNK: usize = 32 * 1024;
/// Time the control plane has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Calls one connection runs at once: the control plane opens one connection per node
/// and multiplexes every user's logs, exec and port forwarding over it.
const CONCURRENCY_PER_CONNECTION: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum NodeApiError {
    #[error("binding the node API to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("node API TLS: {0}")]
    Tls(#[source] tonic::transport::Error),
}

/// The TLS material the node API serves with: the node's own certificate and key from
/// joining, and the cluster CA clients must be issued by.
pub struct NodeApiTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

pub struct NodeApi {
    runtime: DockerRuntime,
    node: String,
    datapath: Arc<Mutex<Datapath>>,
}

impl NodeApi {
    pub fn new(runtime: DockerRuntime, node: &str, datapath: Arc<Mutex<Datapath>>) -> Self {
        NodeApi {
            runtime,
            node: node.to_owned(),
            datapath,
        }
    }

    /// Binds `addr` and serves until the runtime ends; returns the bound address.
    /// Serves until the process ends, with at most `max_connections` connections open:
    /// past it, new ones wait in the listen backlog until one closes (a connection that
    /// never finishes TLS is closed after the handshake timeout).
    pub async fn serve(
        self,
        addr: SocketAddr,
        tls: &NodeApiTls,
        max_connections: usize,
    ) -> Result<SocketAddr, NodeApiError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| NodeApiError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| NodeApiError::Bind { addr, source })?;
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
            .client_ca_root(Certificate::from_pem(&tls.ca_pem))
            .client_auth_optional(false)
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        // Only the control plane calls here (mutual TLS), but a stuck or vanished peer
        // must not hold a connection or a call for ever: logs and exec are streams, so
        // no per-call deadline, and keepalive pings find peers that went away.
        let server = Server::builder()
            .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
            .concurrency_limit_per_connection(CONCURRENCY_PER_CONNECTION)
            .max_concurrent_streams(u32::try_from(CONCURRENCY_PER_CONNECTION).ok())
            .tls_config(tls)
            .map_err(NodeApiError::Tls)?
            .add_service(NodeServer::new(self));
        tokio::spawn(async move {
            let incoming = capped_incoming(listener, max_connections);
            if let Err(error) = server.serve_with_incoming(incoming).await {
                tracing::error!(%error, "the node API stopped");
            }
        });
        Ok(bound)
    }

    /// The pod's attempts of one container, newest first.
    async fn attempts(&self, container: &ContainerRef) -> Result<Vec<ContainerSummary>, Status> {
        for (field, value) in [
            ("namespace", &container.namespace),
            ("pod", &container.pod),
            ("pod_uid", &container.pod_uid),
            ("container", &container.container),
        ] {
            if value.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "container.{field} is empty"
                )));
            }
        }
        let mut found = self
            .runtime
            .list_by_labels(&[
                (labels::NODE, &self.node),
                (labels::POD_UID, &container.pod_uid),
                (labels::CONTAINER_NAME, &container.container),
            ])
            .await
            .map_err(runtime_status)?;
        found.sort_by_key(|summary| std::cmp::Reverse(attempt_of(summary)));
        Ok(found)
    }
}

impl NodeApi {
    /// The current attempt of the container, which must be running (exec, attach).
    async fn running(&self, container: &ContainerRef) -> Result<ContainerSummary, Status> {
        let attempts = self.attempts(container).await?;
        let current = pick_attempt(&attempts, false, container)?;
        if current.state != "running" {
            return Err(Status::failed_precondition(format!(
                "container {:?} in pod {:?} is not running (it is {})",
                container.container,
                pod_of(container),
                current.state
            )));
        }
        Ok(current.clone())
    }

    /// The pid of the pod's sandbox (pause) container, which holds its network
    /// namespace: the container that carries the pod's address.
    async fn sandbox_pid(&self, pod: &ContainerRef) -> Result<u32, Status> {
        if pod.pod_uid.is_empty() {
            return Err(Status::invalid_argument("pod.pod_uid is empty"));
        }
        let found = self
            .runtime
            .list_by_labels(&[(labels::NODE, &self.node), (labels::POD_UID, &pod.pod_uid)])
            .await
            .map_err(runtime_status)?;
        let sandbox = found
            .iter()
            .find(|summary| summary.labels.contains_key(labels::POD_IP))
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "pod {:?} has no sandbox on this node",
                    pod_of(pod)
                ))
            })?;
        let status = self
            .runtime
            .inspect(&sandbox.id)
            .await
            .map_err(runtime_status)?;
        status.pid.filter(|pid| *pid > 0).ok_or_else(|| {
            Status::failed_precondition(format!(
                "the sandbox of pod {:?} is not running",
                pod_of(pod)
            ))
        })
    }
}

/// The first message of a client stream, which must be the opening one.
async fn opening<T, O>(
    inputs: &mut Streaming<T>,
    open: impl FnOnce(T) -> Option<O>,
) -> Result<O, Status> {
    inputs
        .message()
        .await?
        .and_then(open)
        .ok_or_else(|| Status::invalid_argument("the first message must open the stream"))
}

/// A terminal size as the engine takes it; Kubernetes clients send 16-bit sizes.
fn terminal_size(size: &TerminalSize) -> (u16, u16) {
    let clamp = |n: u32| u16::try_from(n).unwrap_or(u16::MAX);
    (clamp(size.width), clamp(size.height))
}

fn receiver_stream<T: Send + 'static>(
    receiver: mpsc::Receiver<Result<T, Status>>,
) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>> {
    let mut receiver = receiver;
    Box::pin(futures_util::stream::poll_fn(move |context| {
        receiver.poll_recv(context)
    }))
}

fn attempt_of(container: &ContainerSummary) -> u64 {
    container
        .labels
        .get(labels::ATTEMPT)
        .and_then(|attempt| attempt.parse().ok())
        .unwrap_or(0)
}

/// Only the control plane may call: the certificate was verified against the cluster CA
/// by TLS, its organisation says whose it is.
fn require_control_plane<T>(request: &Request<T>) -> Result<(), Status> {
    let caller = request.peer_certs().and_then(|certs| {
        certs
            .first()
            .and_then(|der| name_in_role(der, CONTROL_PLANE_ORGANIZATION))
    });
    match caller {
        Some(_) => Ok(()),
        None => Err(Status::permission_denied(format!(
            "the node API only serves the control plane (a client certificate with O={CONTROL_PLANE_ORGANIZATION})"
        ))),
    }
}

fn runtime_status(error: RuntimeError) -> Status {
    match error {
        RuntimeError::ContainerNotFound { .. } => Status::not_found(error.to_string()),
        RuntimeError::InvalidSpec(_) => Status::invalid_argument(error.to_string()),
        RuntimeError::Timeout { .. } => Status::deadline_exceeded(error.to_string()),
        RuntimeError::Connect { .. } => Status::unavailable(error.to_string()),
        _ => Status::internal(error.to_string()),
    }
}

fn pod_of(container: &ContainerRef) -> String {
    format!("{}/{}", container.namespace, container.pod)
}

/// Which container's logs: the newest attempt, or the one before it.
fn pick_attempt<'a>(
    attempts: &'a [ContainerSummary],
    previous: bool,
    container: &ContainerRef,
) -> Result<&'a ContainerSummary, Status> {
    let index = usize::from(previous);
    attempts.get(index).ok_or_else(|| {
        if previous {
            Status::not_found(format!(
                "previous terminated container {:?} in pod {:?} not found",
                container.container,
                pod_of(container)
            ))
        } else {
            Status::failed_precondition(format!(
                "container {:?} in pod {:?} has not been created yet",
                container.container,
                pod_of(container)
            ))
        }
    })
}

/// `namespace/name:port` names of the datapath's service ports belonging to one Service.
fn is_port_of(port_name: &str, namespace: &str, name: &str) -> bool {
    port_name
        .strip_prefix(namespace)
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(|rest| rest.strip_prefix(name))
        .is_some_and(|rest| rest.starts_with(':'))
}

type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;
type SessionStream = Pin<Box<dyn Stream<Item = Result<SessionOutput, Status>> + Send>>;
type PortForwardStream = Pin<Box<dyn Stream<Item = Result<PortForwardOutput, Status>> + Send>>;

fn output(output: session_output::Output) -> Result<SessionOutput, Status> {
    Ok(SessionOutput {
        output: Some(output),
    })
}

#[tonic::async_trait]
impl Node for NodeApi {
    type LogsStream = LogStream;
    type SessionStream = SessionStream;
    type PortForwardStream = PortForwardStream;

    async fn logs(&self, request: Request<LogsRequest>) -> Result<Response<LogStream>, Status> {
        require_control_plane(&request)?;
        let request = request.into_inner();
        let container = request.container.unwrap_or_default();
        let attempts = self.attempts(&container).await?;
        let chosen = pick_attempt(&attempts, request.previous, &container)?;
        let options = LogOptions {
            // A previous attempt has ended: there is nothing to follow.
            follow: request.follow && !request.previous,
            tail_lines: request.tail_lines.filter(|lines| *lines > 0),
            timestamps: request.timestamps,
        };
        let stream = self
            .runtime
            .logs(&chosen.id, &options)
            .map(|chunk| chunk.map(|data| LogChunk { data }).map_err(runtime_status));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        require_control_plane(&request)?;
        let request = request.into_inner();
        let container = request.container.unwrap_or_default();
        if request.command.is_empty() {
            return Err(Status::invalid_argument("command is empty"));
        }
        let current = self.running(&container).await?;
        let timeout = match request.timeout_seconds {
            0 => DEFAULT_EXEC_TIMEOUT,
            seconds => Duration::from_secs(u64::from(seconds)).min(MAX_EXEC_TIMEOUT),
        };
        let captured = self
            .runtime
            .exec_captured(&current.id, &request.command, timeout, MAX_EXEC_OUTPUT)
            .await
            .map_err(runtime_status)?;
        Ok(Response::new(ExecResponse {
            exit_code: captured.exit_code,
            stdout: captured.stdout,
            stderr: captured.stderr,
            truncated: captured.truncated,
        }))
    }

    async fn session(
        &self,
        request: Request<Streaming<SessionInput>>,
    ) -> Result<Response<SessionStream>, Status> {
        require_control_plane(&request)?;
        let mut inputs = request.into_inner();
        let open = opening(&mut inputs, |input| match input.input {
            Some(session_input::Input::Open(open)) => Some(open),
            _ => None,
        })
        .await?;
        let container = open.container.unwrap_or_default();
        let current = self.running(&container).await?;
        let streams = SessionStreams {
            stdin: open.stdin,
            stdout: open.stdout,
            stderr: open.stderr,
            tty: open.tty,
        };
        let size = open.size.as_ref().map(terminal_size);
        let session = if open.command.is_empty() {
            self.runtime.attach(&current.id, streams).await
        } else {
            self.runtime
                .exec_session(&current.id, &open.command, streams, size)
                .await
        }
        .map_err(runtime_status)?;
        let exec_id = session.exec_id.clone();

        // Input: written to the process as it comes; the caller's end of the stream (or
        // an explicit close) is the process's end of file.
        let runtime = self.runtime.clone();
        let container_id = current.id.clone();
        let resize_target = exec_id.clone();
        let mut input = session.input;
        let feeder = tokio::spawn(async move {
            while let Ok(Some(message)) = inputs.message().await {
                match message.input {
                    Some(session_input::Input::Stdin(data)) => {
                        if input.write_all(&data).await.is_err() {
                            break;
                        }
                        let _ = input.flush().await;
                    }
                    Some(session_input::Input::Resize(size)) => {
                        let (width, height) = terminal_size(&size);
                        let resized = match &resize_target {
                            Some(exec) => runtime.resize_exec(exec, width, height).await,
                            None => runtime.resize_container(&container_id, width, height).await,
                        };
                        if let Err(error) = resized {
                            tracing::debug!(%error, "terminal resize");
                        }
                    }
                    Some(session_input::Input::CloseStdin(true)) => break,
                    _ => {}
                }
            }
            let _ = input.shutdown().await;
        });

        let (sender, receiver) = mpsc::channel(16);
        let runtime = self.runtime.clone();
        let mut session_output = session.output;
        tokio::spawn(async move {
            loop {
                // A caller gone (the user's connection closed) ends the session now, not
                // at the process's next output.
                let chunk = tokio::select! {
                    chunk = session_output.next() => chunk,
                    () = sender.closed() => None,
                };
                let Some(chunk) = chunk else { break };
                let message = match chunk {
                    Ok(SessionChunk::Stdout(data)) => output(session_output::Output::Stdout(data)),
                    Ok(SessionChunk::Stderr(data)) => output(session_output::Output::Stderr(data)),
                    Err(error) => Err(runtime_status(error)),
                };
                let failed = message.is_err();
                if sender.send(message).await.is_err() || failed {
                    feeder.abort();
                    return;
                }
            }
            if sender.is_closed() {
                feeder.abort();
                return;
            }
            let end = match exec_id {
                Some(exec) => match runtime.exec_exit_code(&exec).await {
                    Ok(code) => output(session_output::Output::End(SessionEnd {
                        exit_code: Some(code),
                    })),
                    Err(error) => Err(runtime_status(error)),
                },
                None => output(session_output::Output::End(SessionEnd { exit_code: None })),
            };
            let _ = sender.send(end).await;
            feeder.abort();
        });
        Ok(Response::new(receiver_stream(receiver)))
    }

    async fn port_forward(
        &self,
        request: Request<Streaming<PortForwardInput>>,
    ) -> Result<Response<PortForwardStream>, Status> {
        require_control_plane(&request)?;
        let mut inputs = request.into_inner();
        let open = opening(&mut inputs, |input| match input.input {
            Some(port_forward_input::Input::Open(open)) => Some(open),
            _ => None,
        })
        .await?;
        let pod = open.pod.unwrap_or_default();
        let port = u16::try_from(open.port)
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| {
                Status::invalid_argument(format!("port {} is not a TCP port", open.port))
            })?;
        let pid = self.sandbox_pid(&pod).await?;
        // Inside the pod's namespace, as the kubelet does: its loopback is reachable too.
        let path = std::path::PathBuf::from(format!("/proc/{pid}/ns/net"));
        let connected = tokio::task::spawn_blocking(move || {
            berth_net::in_netns_at(&path, || {
                let target = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
                std::net::TcpStream::connect_timeout(&target, PORT_FORWARD_CONNECT_TIMEOUT)
            })
        })
        .await
        .map_err(|error| Status::internal(format!("port forward task: {error}")))?
        .map_err(|error| Status::internal(error.to_string()))?
        .and_then(|stream| {
            stream.set_nonblocking(true)?;
            tokio::net::TcpStream::from_std(stream)
        })
        .map_err(|error| {
            Status::unavailable(format!(
                "error forwarding port {port} to pod {}: {error}",
                pod_of(&pod)
            ))
        })?;
        let (mut reader, mut writer) = connected.into_split();
        let feeder = tokio::spawn(async move {
            while let Ok(Some(message)) = inputs.message().await {
                match message.input {
                    Some(port_forward_input::Input::Data(data))
                        if writer.write_all(&data).await.is_err() =>
                    {
                        return;
                    }
                    Some(port_forward_input::Input::CloseWrite(true)) => break,
                    _ => {}
                }
            }
            let _ = writer.shutdown().await;
        });
        let (sender, receiver) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut buffer = vec![0u8; PORT_FORWARD_CHUNK];
            loop {
                let read = tokio::select! {
                    read = reader.read(&mut buffer) => read,
                    () = sender.closed() => break,
                };
                let message = match read {
                    Ok(0) => break,
                    Ok(read) => Ok(PortForwardOutput {
                        data: buffer[..read].to_vec(),
                    }),
                    Err(error) => Err(Status::aborted(format!("reading from the pod: {error}"))),
                };
                let failed = message.is_err();
                if sender.send(message).await.is_err() || failed {
                    break;
                }
            }
            // The pod's side is done; the caller's side may still be sending, which goes
            // nowhere once the stream ends.
            feeder.abort();
        });
        Ok(Response::new(receiver_stream(receiver)))
    }

    async fn service_backends(
        &self,
        request: Request<ServiceBackendsRequest>,
    ) -> Result<Response<ServiceBackendsResponse>, Status> {
        require_control_plane(&request)?;
        let request = request.into_inner();
        let datapath = match self.datapath.lock() {
            Ok(datapath) => datapath,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut ports = Vec::new();
        // What the datapath serves (readiness applied), as last written.
        for service in datapath
            .services()
            .filter(|service| is_port_of(&service.name, &request.namespace, &request.name))
        {
            let Some(frontend) = service.frontends.first() else {
                continue;
            };
            let table = datapath
                .live_table(frontend)
                .map_err(|error| Status::internal(format!("reading the datapath: {error}")))?;
            let (programmed, table) = match table {
                Some(table) => (true, table),
                None => (false, Vec::new()),
            };
            let mut backends = table.clone();
            backends.sort_unstable();
            backends.dedup();
            ports.push(ServicePortBackends {
                port_name: service.name.clone(),
                frontend: frontend.to_string(),
                backends: backends
                    .iter()
                    .map(|(ip, port)| format!("{ip}:{port}"))
                    .collect(),
                table_size: u32::try_from(table.len()).unwrap_or(u32::MAX),
                programmed,
            });
        }
        Ok(Response::new(ServiceBackendsResponse { ports }))
    }
}

/// Accepted connections, each holding one of `max` slots until it closes: the listener
/// accepts only when a slot is free.
fn capped_incoming(
    listener: TcpListener,
    max: usize,
) -> impl Stream<Item = Result<Capped, std::io::Error>> {
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    futures_util::stream::unfold((listener, slots), |(listener, slots)| async move {
        loop {
            let slot = Arc::clone(&slots).acquire_owned().await.ok()?;
            match listener.accept().await {
                Ok((io, _)) => {
                    // Finds control planes that vanished without closing; best effort.
                    let _ = socket2::SockRef::from(&io)
                        .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
                    let _ = io.set_nodelay(true);
                    return Some((Ok(Capped { io, _slot: slot }), (listener, slots)));
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "node API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// A node API connection and the slot it holds.
struct Capped {
    io: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl tokio::io::AsyncRead for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Capped {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn summary(id: &str, attempt: &str) -> ContainerSummary {
        ContainerSummary {
            id: id.to_owned(),
            name: String::new(),
            image: String::new(),
            state: "exited".to_owned(),
            labels: BTreeMap::from([(labels::ATTEMPT.to_owned(), attempt.to_owned())]),
        }
    }

    #[test]
    fn service_ports_are_matched_by_whole_names() {
        assert!(is_port_of("default/web:80", "default", "web"));
        assert!(is_port_of("default/web:http", "default", "web"));
        assert!(!is_port_of("default/web2:80", "default", "web"));
        assert!(!is_port_of("other/web:80", "default", "web"));
        assert!(!is_port_of("default/web", "default", "web"));
    }

    #[test]
    fn previous_is_the_attempt_before_the_newest() {
        let container = ContainerRef {
            namespace: "default".into(),
            pod: "web-0".into(),
            pod_uid: "u".into(),
            container: "echo".into(),
        };
        let mut attempts = vec![summary("a", "2"), summary("b", "10")];
        attempts.sort_by_key(|summary| std::cmp::Reverse(attempt_of(summary)));
        let current = pick_attempt(&attempts, false, &container).expect("current");
        assert_eq!(current.id, "b", "attempts compare as numbers");
        let previous = pick_attempt(&attempts, true, &container).expect("previous");
        assert_eq!(previous.id, "a");

        let only = vec![summary("c", "0")];
        let error = pick_attempt(&only, true, &container).expect_err("no previous");
        assert_eq!(error.code(), tonic::Code::NotFound);
        assert!(error.message().contains("previous terminated container"));
        let error = pick_attempt(&[], false, &container).expect_err("none yet");
        assert_eq!(error.code(), tonic::Code::FailedPrecondition);
    }
}
