//! kubectl's streaming subresources of pods, bridged to the pod's agent: `exec` and
//! `attach` over Kubernetes' channel WebSockets (`v5.channel.k8s.io`, `v4.channel.k8s.io`)
//! to the node API's `Session`, and `portforward` — a SPDY/3.1 session tunnelled in a
//! WebSocket (`SPDY/3.1+portforward.k8s.io`, what kubectl 1.32 asks first) — with one
//! node API `PortForward` call per forwarded connection.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code},
    response::Response,
};
use berth_api::channels::{self, CLOSE, ERROR, RESIZE, STDERR, STDIN, STDOUT};
use berth_api::node::{
    ContainerRef, PortForwardInput, PortForwardOpen, SessionInput, SessionOpen, TerminalSize,
    node_client::NodeClient as GrpcClient, port_forward_input, session_input, session_output,
};
use futures_util::{SinkExt as _, Stream, StreamExt as _, stream::SplitSink};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{
    ApiState,
    error::ApiError,
    node_proxy::{pod_target, target},
};
use crate::{
    node_client::from_node,
    spdy::{self, Frame, FrameReader, FrameWriter},
};

/// The channel subprotocols this server speaks, preferred first.
const CHANNEL_PROTOCOLS: [&str; 2] = [channels::PROTOCOL_V5, channels::PROTOCOL_V4];

type NodeClient = GrpcClient<tonic::transport::Channel>;

/// kubectl 1.32's port-forward protocol, inside a WebSocket tunnelling SPDY/3.1.
const PORT_FORWARD_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// What an exec or attach request asks for, from its query.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StreamOptions {
    pub command: Vec<String>,
    pub container: Option<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl StreamOptions {
    /// Parses the query; repeated `command` parameters are the command's words.
    pub fn parse(raw_query: &str) -> Result<StreamOptions, ApiError> {
        let mut options = StreamOptions::default();
        for (key, value) in form_urlencoded::parse(raw_query.as_bytes()) {
            let flag = || match value.as_ref() {
                "" | "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                other => Err(ApiError::bad_request(format!(
                    "query parameter {key}={other:?}: expected true or false"
                ))),
            };
            match key.as_ref() {
                "command" => options.command.push(value.clone().into_owned()),
                "container" if !value.is_empty() => {
                    options.container = Some(value.clone().into_owned());
                }
                "stdin" => options.stdin = flag()?,
                "stdout" => options.stdout = flag()?,
                "stderr" => options.stderr = flag()?,
                "tty" => options.tty = flag()?,
                _ => {}
            }
        }
        if !(options.stdin || options.stdout || options.stderr) {
            return Err(ApiError::bad_request(
                "you must specify at least 1 of stdin, stdout, stderr",
            ));
        }
        Ok(options)
    }
}

/// One message of a channel protocol, as kubectl sends it.
#[derive(Debug, PartialEq, Eq)]
enum ClientMessage {
    Stdin(Vec<u8>),
    Resize(TerminalSize),
    CloseStdin,
    Ignored,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Size {
    width: u32,
    height: u32,
}

fn client_message(frame: &[u8]) -> ClientMessage {
    match frame.split_first() {
        Some((&STDIN, data)) if !data.is_empty() => ClientMessage::Stdin(data.to_vec()),
        Some((&RESIZE, json)) => match serde_json::from_slice::<Size>(json) {
            Ok(size) => ClientMessage::Resize(TerminalSize {
                width: size.width,
                height: size.height,
            }),
            Err(_) => ClientMessage::Ignored,
        },
        Some((&CLOSE, [STDIN, ..])) => ClientMessage::CloseStdin,
        _ => ClientMessage::Ignored,
    }
}

fn channel_frame(channel: u8, data: &[u8]) -> Message {
    Message::Binary(channels::frame(channel, data).into())
}

/// The Status kubectl reads an exec's end from: Success, or the exit code as Kubernetes
/// reports it (`NonZeroExitCode` with an `ExitCode` cause).
pub fn exec_status(exit_code: i64, command: &str) -> Value {
    if exit_code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command [{command}], exit code {exit_code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": exit_code.to_string()}]},
    })
}

/// A normal closure (1000): kubectl reads a close without a code as an error.
fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: close_code::NORMAL,
        reason: "".into(),
    }))
}

fn failure(message: &str) -> Value {
    json!({"metadata": {}, "status": "Failure", "message": message})
}

/// Which session a WebSocket GET asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    Exec,
    Attach,
}

/// `GET .../pods/{name}/exec?command=...` or `.../attach` upgraded to a channel
/// WebSocket: standard input, output, error and terminal resizes go both ways until the
/// process ends (exec: its exit code is the closing Status) or the container stops
/// (attach).
pub async fn session(
    state: &ApiState,
    namespace: &str,
    name: &str,
    kind: SessionKind,
    raw_query: &str,
    upgrade: Option<WebSocketUpgrade>,
) -> Result<Response, ApiError> {
    let mut options = StreamOptions::parse(raw_query)?;
    match kind {
        SessionKind::Exec if options.command.first().is_none_or(String::is_empty) => {
            return Err(ApiError::bad_request("command: must name a program to run"));
        }
        SessionKind::Exec => {}
        // An attach runs nothing: a command in its query is not its business.
        SessionKind::Attach => options.command.clear(),
    }
    let Some(upgrade) = upgrade else {
        return Err(ApiError::bad_request(match kind {
            SessionKind::Exec => {
                "GET exec is a WebSocket (v5.channel.k8s.io); POST runs a command and returns its output"
            }
            SessionKind::Attach => "attach is a WebSocket (v5.channel.k8s.io)",
        }));
    };
    // Before the upgrade, so a missing pod or node is an HTTP error kubectl reports.
    let target = target(state, namespace, name, options.container.as_deref()).await?;
    let mut client = state.nodes.connect(&target.node).await?;
    let node_name = target.node_name.clone();
    let shown = options.command.join(" ");
    let open = SessionOpen {
        container: Some(target.container),
        command: options.command,
        stdin: options.stdin,
        stdout: options.stdout,
        stderr: options.stderr && !options.tty,
        tty: options.tty,
        size: None,
    };
    Ok(upgrade
        .protocols(CHANNEL_PROTOCOLS)
        .on_upgrade(move |socket| async move {
            let (inputs, receiver) = mpsc::channel(16);
            let _ = inputs
                .send(SessionInput {
                    input: Some(session_input::Input::Open(open)),
                })
                .await;
            let (mut sink, mut source) = socket.split();
            let opened = client
                .session(tonic::Request::new(ReceiverStream(receiver)))
                .await;
            let mut outputs = match opened {
                Ok(outputs) => outputs.into_inner(),
                Err(status) => {
                    let message = from_node(&node_name, &status).to_string();
                    finish(&mut sink, &failure(&message)).await;
                    return;
                }
            };
            // kubectl's messages to the process, until it closes the socket; then the
            // session ends (dropping the node's stream cancels it there).
            let (gone, mut client_gone) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(async move {
                while let Some(Ok(message)) = source.next().await {
                    let input = match message {
                        Message::Binary(frame) => match client_message(&frame) {
                            ClientMessage::Stdin(data) => session_input::Input::Stdin(data),
                            ClientMessage::Resize(size) => session_input::Input::Resize(size),
                            ClientMessage::CloseStdin => session_input::Input::CloseStdin(true),
                            ClientMessage::Ignored => continue,
                        },
                        Message::Close(_) => {
                            let _ = gone.send(());
                            return;
                        }
                        _ => continue,
                    };
                    let message = SessionInput { input: Some(input) };
                    // The node may stop reading input (its end of file) while output
                    // still comes: keep reading the socket for its close.
                    let _ = inputs.send(message).await;
                }
                let _ = gone.send(());
            });
            let mut status = failure("the node ended the session without an exit status");
            loop {
                let output = tokio::select! {
                    output = outputs.next() => output,
                    _ = &mut client_gone => return,
                };
                let Some(output) = output else { break };
                let output = output.map(|output| output.output);
                let sent = match output {
                    Ok(Some(session_output::Output::Stdout(data))) => {
                        sink.send(channel_frame(STDOUT, &data)).await
                    }
                    Ok(Some(session_output::Output::Stderr(data))) => {
                        sink.send(channel_frame(STDERR, &data)).await
                    }
                    Ok(Some(session_output::Output::End(end))) => {
                        status = match end.exit_code {
                            Some(code) => exec_status(code, &shown),
                            None => exec_status(0, &shown),
                        };
                        break;
                    }
                    Ok(None) => Ok(()),
                    Err(error) => {
                        status = failure(&from_node(&node_name, &error).to_string());
                        break;
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
            finish(&mut sink, &status).await;
        }))
}

/// The closing Status on the error channel, then a normal closure (1000): kubectl reads
/// a close without a code as an error.
async fn finish(sink: &mut SplitSink<WebSocket, Message>, status: &Value) {
    let _ = sink
        .send(channel_frame(ERROR, status.to_string().as_bytes()))
        .await;
    let _ = sink.send(normal_close()).await;
}

/// A channel's receiving end as a stream (what tokio-stream's `ReceiverStream` is): a
/// named type, because a closure-made stream handed to a tonic streaming call trips
/// rustc's higher-ranked lifetime check when the call's future must be `Send`.
struct ReceiverStream<T>(mpsc::Receiver<T>);

impl<T> Stream for ReceiverStream<T> {
    type Item = T;

    fn poll_next(
        mut self: Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(context)
    }
}

/// `GET .../pods/{name}/portforward` upgraded to a WebSocket. kubectl 1.32 asks for
/// SPDY/3.1 tunnelled in it: an error stream and a data stream per local connection
/// (same `requestID`), the pair's data through one node API `PortForward` call, and a
/// failure to connect written on the error stream, as the kubelet does. Asked with
/// `v4.channel.k8s.io` and `ports=P[,P...]` (the kubelet's WebSocket form, berthctl's),
/// the socket carries one connection per port: data on channel 2i, errors on 2i+1, each
/// channel's first message the port (16 bits, little-endian).
pub async fn port_forward(
    state: &ApiState,
    namespace: &str,
    name: &str,
    query: &HashMap<String, String>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.protocols([PORT_FORWARD_PROTOCOL, channels::PROTOCOL_V4]);
    let spdy = match upgrade.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some(PORT_FORWARD_PROTOCOL) => true,
        Some(_) => false,
        None => {
            return Err(ApiError::bad_request(format!(
                "port forwarding is SPDY/3.1 in a WebSocket (subprotocol {PORT_FORWARD_PROTOCOL}) or {} channels",
                channels::PROTOCOL_V4
            )));
        }
    };
    let ports = if spdy {
        Vec::new()
    } else {
        forwarded_ports(query.get("ports").map(String::as_str).unwrap_or_default())?
    };
    let target = pod_target(state, namespace, name).await?;
    let client = state.nodes.connect(&target.node).await?;
    let node_name = target.node_name;
    let pod = target.container;
    Ok(upgrade.on_upgrade(move |socket| async move {
        if spdy {
            forward_session(socket, client, pod, node_name).await;
        } else {
            forward_channels(socket, client, pod, ports, node_name).await;
        }
    }))
}

/// `ports=8080,9090`: the ports of a channel port-forward.
fn forwarded_ports(list: &str) -> Result<Vec<u16>, ApiError> {
    let ports: Vec<u16> = list
        .split(',')
        .filter(|port| !port.is_empty())
        .map(|port| {
            port.trim()
                .parse::<u16>()
                .ok()
                .filter(|port| *port > 0)
                .ok_or_else(|| ApiError::bad_request(format!("ports: {port:?} is not a port")))
        })
        .collect::<Result<_, _>>()?;
    if ports.is_empty() {
        return Err(ApiError::bad_request(
            "ports: at least one port is required",
        ));
    }
    Ok(ports)
}

fn port_prefix(channel: u8, port: u16) -> Message {
    channel_frame(channel, &port.to_le_bytes())
}

/// The channel form: one connection per port, for the socket's life.
async fn forward_channels(
    socket: WebSocket,
    client: NodeClient,
    pod: ContainerRef,
    ports: Vec<u16>,
    node: String,
) {
    let (mut sink, mut source) = socket.split();
    let (outgoing, mut queue) = mpsc::channel::<Message>(64);
    let mut to_pod = Vec::new();
    let mut tasks = Vec::new();
    for (index, port) in ports.iter().enumerate() {
        let Ok(data_channel) = u8::try_from(index * 2) else {
            break;
        };
        let error_channel = data_channel + 1;
        let _ = outgoing.send(port_prefix(data_channel, *port)).await;
        let _ = outgoing.send(port_prefix(error_channel, *port)).await;
        let (sender, inputs) = mpsc::channel(16);
        let _ = sender
            .send(PortForwardInput {
                input: Some(port_forward_input::Input::Open(PortForwardOpen {
                    pod: Some(pod.clone()),
                    port: u32::from(*port),
                })),
            })
            .await;
        to_pod.push(Some(sender));
        tasks.push(tokio::spawn(forward_channel(
            client.clone(),
            inputs,
            outgoing.clone(),
            (data_channel, error_channel),
            node.clone(),
        )));
    }
    drop(outgoing);
    let reader = async {
        while let Some(Ok(message)) = source.next().await {
            let Message::Binary(bytes) = message else {
                if matches!(message, Message::Close(_)) {
                    break;
                }
                continue;
            };
            let Some((&channel, data)) = bytes.split_first() else {
                continue;
            };
            let index = usize::from(channel / 2);
            if channel % 2 != 0 || data.is_empty() {
                continue;
            }
            if let Some(Some(sender)) = to_pod.get(index) {
                let input = port_forward_input::Input::Data(data.to_vec());
                if sender
                    .send(PortForwardInput { input: Some(input) })
                    .await
                    .is_err()
                {
                    to_pod[index] = None;
                }
            }
        }
    };
    let writer = async {
        while let Some(message) = queue.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        // Every port's connection has ended.
        let _ = sink.send(normal_close()).await;
    };
    // Either side ending ends the socket: the client leaving, or every pod connection.
    tokio::select! {
        () = reader => {}
        () = writer => {}
    }
    for task in tasks {
        task.abort();
    }
}

/// One port of the channel form: the pod's data on the data channel, a failure on the
/// error channel.
async fn forward_channel(
    mut client: NodeClient,
    inputs: mpsc::Receiver<PortForwardInput>,
    outgoing: mpsc::Sender<Message>,
    (data_channel, error_channel): (u8, u8),
    node: String,
) {
    let opened = client
        .port_forward(tonic::Request::new(ReceiverStream(inputs)))
        .await;
    let failure = match opened {
        Ok(outputs) => {
            let mut outputs = outputs.into_inner();
            let mut failure = None;
            while let Some(output) = outputs.next().await {
                match output {
                    Ok(output) => {
                        let data = channel_frame(data_channel, &output.data);
                        if outgoing.send(data).await.is_err() {
                            return;
                        }
                    }
                    Err(status) => {
                        failure = Some(from_node(&node, &status).to_string());
                        break;
                    }
                }
            }
            failure
        }
        Err(status) => Some(from_node(&node, &status).to_string()),
    };
    if let Some(failure) = failure {
        let _ = outgoing
            .send(channel_frame(error_channel, failure.as_bytes()))
            .await;
    }
}

/// What the session sends kubectl, encoded in order by one writer (header compression
/// is one context for the whole session).
enum Outgoing {
    Reply(u32),
    Data(u32, Vec<u8>, bool),
    Frame(Vec<u8>),
}

/// A forwarded connection: its two streams, and the call that carries it once both
/// are open.
#[derive(Default)]
struct Connection {
    error: Option<u32>,
    data: Option<u32>,
    port: u32,
    started: bool,
}

/// A running connection, by its data stream.
struct Running {
    to_pod: Option<mpsc::Sender<PortForwardInput>>,
    error_stream: u32,
    /// Whoever closes the error stream first (the connection's end, or kubectl's reset
    /// of the data stream) sets it.
    error_closed: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

async fn forward_session(socket: WebSocket, client: NodeClient, pod: ContainerRef, node: String) {
    let (mut sink, mut source) = socket.split();
    let (outgoing, mut queue) = mpsc::channel::<Outgoing>(64);
    let writer = tokio::spawn(async move {
        let mut frames = FrameWriter::default();
        while let Some(out) = queue.recv().await {
            let bytes = match out {
                Outgoing::Reply(stream) => frames.syn_reply(stream),
                Outgoing::Data(stream, data, fin) => FrameWriter::data(stream, &data, fin),
                Outgoing::Frame(frame) => frame,
            };
            if sink.send(Message::Binary(bytes.into())).await.is_err() {
                return;
            }
        }
        let _ = sink.send(normal_close()).await;
    });
    let mut reader = FrameReader::default();
    let mut connections: HashMap<String, Connection> = HashMap::new();
    let mut running: HashMap<u32, Running> = HashMap::new();
    'session: while let Some(Ok(message)) = source.next().await {
        match message {
            Message::Binary(bytes) => reader.push(&bytes),
            Message::Close(_) => break,
            _ => continue,
        }
        loop {
            let frame = match reader.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(%error, "port forward: bad SPDY from the client");
                    break 'session;
                }
            };
            match frame {
                Frame::SynStream {
                    stream_id, headers, ..
                } => {
                    let header = |name: &str| {
                        headers
                            .iter()
                            .find(|(key, _)| key == name)
                            .map(|(_, value)| value.as_str())
                    };
                    let port = header("port").and_then(|port| port.parse::<u16>().ok());
                    let (Some(kind @ ("error" | "data")), Some(port)) =
                        (header("streamtype"), port.filter(|port| *port > 0))
                    else {
                        let refused = FrameWriter::rst_stream(stream_id, spdy::REFUSED_STREAM);
                        let _ = outgoing.send(Outgoing::Frame(refused)).await;
                        continue;
                    };
                    let _ = outgoing.send(Outgoing::Reply(stream_id)).await;
                    let request = header("requestid").unwrap_or_default().to_owned();
                    let connection = connections.entry(request.clone()).or_default();
                    connection.port = u32::from(port);
                    match kind {
                        "error" => connection.error = Some(stream_id),
                        _ => connection.data = Some(stream_id),
                    }
                    let (Some(error_stream), Some(data_stream), false) =
                        (connection.error, connection.data, connection.started)
                    else {
                        continue;
                    };
                    connection.started = true;
                    let port = connection.port;
                    connections.remove(&request);
                    let (to_pod, inputs) = mpsc::channel(16);
                    let _ = to_pod
                        .send(PortForwardInput {
                            input: Some(port_forward_input::Input::Open(PortForwardOpen {
                                pod: Some(pod.clone()),
                                port,
                            })),
                        })
                        .await;
                    let error_closed = Arc::new(AtomicBool::new(false));
                    let task = tokio::spawn(forward(
                        client.clone(),
                        inputs,
                        outgoing.clone(),
                        (error_stream, data_stream),
                        Arc::clone(&error_closed),
                        node.clone(),
                    ));
                    running.insert(
                        data_stream,
                        Running {
                            to_pod: Some(to_pod),
                            error_stream,
                            error_closed,
                            task,
                        },
                    );
                }
                Frame::Data {
                    stream_id,
                    flags,
                    data,
                } => {
                    let Some(connection) = running.get_mut(&stream_id) else {
                        continue;
                    };
                    let Some(to_pod) = &connection.to_pod else {
                        continue;
                    };
                    if !data.is_empty() {
                        let input = port_forward_input::Input::Data(data);
                        let _ = to_pod.send(PortForwardInput { input: Some(input) }).await;
                    }
                    if flags & spdy::FLAG_FIN != 0 {
                        let input = port_forward_input::Input::CloseWrite(true);
                        let _ = to_pod.send(PortForwardInput { input: Some(input) }).await;
                        connection.to_pod = None;
                    }
                }
                Frame::RstStream { stream_id, .. } => {
                    // kubectl resets the data stream when its side is done, then waits
                    // for the error stream to close.
                    if let Some(connection) = running.remove(&stream_id) {
                        connection.task.abort();
                        if !connection.error_closed.swap(true, Ordering::SeqCst) {
                            let close = Outgoing::Data(connection.error_stream, Vec::new(), true);
                            let _ = outgoing.send(close).await;
                        }
                    }
                }
                Frame::Ping { id } => {
                    let _ = outgoing.send(Outgoing::Frame(FrameWriter::ping(id))).await;
                }
                Frame::GoAway => break 'session,
                Frame::Other => {}
            }
        }
    }
    for connection in running.into_values() {
        connection.task.abort();
    }
    drop(outgoing);
    let _ = writer.await;
}

/// Carries one connection: kubectl's data to the pod through `inputs`, the pod's back
/// on the data stream; then closes both streams, the error stream with the reason if
/// the connection failed.
async fn forward(
    mut client: NodeClient,
    inputs: mpsc::Receiver<PortForwardInput>,
    outgoing: mpsc::Sender<Outgoing>,
    (error_stream, data_stream): (u32, u32),
    error_closed: Arc<AtomicBool>,
    node: String,
) {
    let mut failure = None;
    let opened = client
        .port_forward(tonic::Request::new(ReceiverStream(inputs)))
        .await;
    match opened {
        Ok(outputs) => {
            let mut outputs = outputs.into_inner();
            while let Some(output) = outputs.next().await {
                match output {
                    Ok(output) => {
                        let data = Outgoing::Data(data_stream, output.data, false);
                        if outgoing.send(data).await.is_err() {
                            return;
                        }
                    }
                    Err(status) => {
                        failure = Some(from_node(&node, &status).to_string());
                        break;
                    }
                }
            }
        }
        Err(status) => failure = Some(from_node(&node, &status).to_string()),
    }
    let _ = outgoing
        .send(Outgoing::Data(data_stream, Vec::new(), true))
        .await;
    if !error_closed.swap(true, Ordering::SeqCst) {
        if let Some(failure) = failure {
            let _ = outgoing
                .send(Outgoing::Data(error_stream, failure.into_bytes(), false))
                .await;
        }
        let _ = outgoing
            .send(Outgoing::Data(error_stream, Vec::new(), true))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_come_from_the_query() {
        let options = StreamOptions::parse(
            "command=sh&command=-c&command=echo+hi&container=app&stdin=true&stdout=true&tty=true",
        )
        .expect("valid");
        assert_eq!(
            options,
            StreamOptions {
                command: vec!["sh".into(), "-c".into(), "echo hi".into()],
                container: Some("app".into()),
                stdin: true,
                stdout: true,
                stderr: false,
                tty: true,
            }
        );
        assert!(
            StreamOptions::parse("command=ls").is_err(),
            "no stream at all"
        );
        assert!(StreamOptions::parse("stdout=maybe").is_err());
    }

    #[test]
    fn channel_messages_are_read_as_kubectl_sends_them() {
        assert_eq!(
            client_message(b"\x00ls\n"),
            ClientMessage::Stdin(b"ls\n".to_vec())
        );
        assert_eq!(
            client_message(b"\x04{\"Width\":120,\"Height\":40}"),
            ClientMessage::Resize(TerminalSize {
                width: 120,
                height: 40
            })
        );
        assert_eq!(client_message(&[255, 0]), ClientMessage::CloseStdin);
        assert_eq!(client_message(&[255, 1]), ClientMessage::Ignored);
        assert_eq!(client_message(&[0]), ClientMessage::Ignored, "empty stdin");
        assert_eq!(client_message(b"\x04not json"), ClientMessage::Ignored);
        assert_eq!(client_message(&[]), ClientMessage::Ignored);
        let Message::Binary(frame) = channel_frame(STDOUT, b"out") else {
            panic!("binary");
        };
        assert_eq!(&frame[..], b"\x01out");
    }

    #[test]
    fn exit_codes_become_kubernetes_statuses() {
        assert_eq!(exec_status(0, "true")["status"], "Success");
        let failed = exec_status(3, "sh -c exit 3");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
    }
}
