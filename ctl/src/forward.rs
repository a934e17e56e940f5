//! `port-forward`: local TCP ports to a pod's ports. Each accepted connection opens its
//! own WebSocket on the pod's `portforward` URL (`v4.channel.k8s.io`, `ports=REMOTE`):
//! data on channel 0, an error on channel 1, each channel's first message the port.

use std::io::Write;

use clap::Args;
use futures_util::{
    SinkExt as _, StreamExt as _,
    stream::{FuturesUnordered, SelectAll},
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::Role},
};

use super::{CtlError, Ctx, emit, resolve};
use berth_api::channels::{self, PROTOCOL_V4};

/// Forward local ports to a pod's ports until interrupted.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  berthctl port-forward web-7d4b9-x2k1p 8080:8080\n  \
                        berthctl port-forward pod/web-7d4b9-x2k1p 18080:8080 9090\n  \
                        berthctl port-forward web-7d4b9-x2k1p :8080   # a free local port"
)]
pub struct PortForwardArgs {
    /// The pod (`NAME` or `pod/NAME`).
    pub pod: String,
    /// `LOCAL:REMOTE`, `PORT` (the same both sides) or `:REMOTE` (a free local port).
    #[arg(required = true)]
    pub ports: Vec<String>,
}

/// `LOCAL:REMOTE` as kubectl reads it: LOCAL 0 or empty picks a free port.
fn parse_ports(spec: &str) -> Result<(u16, u16), CtlError> {
    let bad = || {
        CtlError::Usage(format!(
            "invalid port {spec:?}: expected LOCAL:REMOTE or PORT"
        ))
    };
    let (local, remote) = spec.split_once(':').unwrap_or((spec, spec));
    let local = if local.is_empty() {
        0
    } else {
        local.parse::<u16>().map_err(|_| bad())?
    };
    let remote = remote
        .parse::<u16>()
        .ok()
        .filter(|port| *port > 0)
        .ok_or_else(bad)?;
    Ok((local, remote))
}

/// Carries one local connection through its own WebSocket until either side ends.
async fn carry(ctx: &Ctx, path: &str, remote: u16, local: TcpStream) -> Result<(), String> {
    let upgraded = match ctx
        .client
        .websocket(&format!("{path}?ports={remote}"), &[PROTOCOL_V4])
        .await
        .map_err(|error| error.to_string())?
    {
        Ok((upgraded, _)) => upgraded,
        Err(reply) => {
            return Err(format!(
                "{}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            ));
        }
    };
    let mut socket =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    let (mut reader, mut writer) = local.into_split();
    // The first message of each channel is its port, not data.
    let mut prefixed = [true, true];
    let mut buffer = vec![0u8; 32 * 1024];
    let mut local_open = true;
    loop {
        tokio::select! {
            message = socket.next() => {
                let Some(Ok(message)) = message else { return Ok(()) };
                let bytes = match message {
                    Message::Binary(bytes) => bytes,
                    Message::Close(_) => return Ok(()),
                    _ => continue,
                };
                let Some((&channel, data)) = bytes.split_first() else { continue };
                let Some(first) = prefixed.get_mut(usize::from(channel)) else { continue };
                if std::mem::take(first) {
                    continue;
                }
                match channel {
                    0 => writer.write_all(data).await.map_err(|e| e.to_string())?,
                    _ => return Err(String::from_utf8_lossy(data).into_owned()),
                }
            }
            read = reader.read(&mut buffer), if local_open => {
                match read {
                    // The channel protocol cannot say "no more from this side": keep
                    // reading the pod's answer until it closes.
                    Ok(0) | Err(_) => local_open = false,
                    Ok(read) => {
                        let frame = channels::frame(0, &buffer[..read]);
                        socket
                            .send(Message::Binary(frame.into()))
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                }
            }
        }
    }
}

/// Listens on 127.0.0.1 for each port pair and forwards every connection, until
/// interrupted (Ctrl-C).
pub async fn run(
    ctx: &Ctx,
    args: &PortForwardArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CtlError> {
    let pod = args.pod.strip_prefix("pod/").unwrap_or(&args.pod);
    let pod = pod.strip_prefix("pods/").unwrap_or(pod);
    let pairs = args
        .ports
        .iter()
        .map(|spec| parse_ports(spec))
        .collect::<Result<Vec<_>, _>>()?;
    let pod_path = ctx.object_path(resolve("pods")?, pod);
    // A missing pod is an error now, not at the first connection.
    ctx.call(hyper::http::Method::GET, &pod_path, None, None)
        .await?;
    let path = format!("{pod_path}/portforward");
    let mut accepts = SelectAll::new();
    for (local, remote) in pairs {
        let listener = TcpListener::bind(("127.0.0.1", local))
            .await
            .map_err(|e| CtlError::Usage(format!("unable to listen on port {local}: {e}")))?;
        let bound = listener.local_addr().map(|a| a.port()).unwrap_or(local);
        emit(
            out,
            &format!("Forwarding from 127.0.0.1:{bound} -> {remote}"),
        );
        let incoming = futures_util::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await;
            Some((accepted, listener))
        });
        accepts.push(Box::pin(
            incoming.map(move |accepted| (accepted, bound, remote)),
        ));
    }
    let path = &path;
    let mut connections = FuturesUnordered::new();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = &mut interrupted => return Ok(()),
            Some((accepted, local, remote)) = accepts.next() => {
                let Ok((stream, _)) = accepted else { continue };
                emit(out, &format!("Handling connection for {local}"));
                connections.push(async move { (remote, carry(ctx, path, remote, stream).await) });
            }
            Some((remote, result)) = connections.next(), if !connections.is_empty() => {
                if let Err(error) = result {
                    let _ = writeln!(err, "error forwarding port {remote}: {error}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_pairs_are_read_as_kubectl_reads_them() {
        assert_eq!(parse_ports("8080:80").ok(), Some((8080, 80)));
        assert_eq!(parse_ports("9090").ok(), Some((9090, 9090)));
        assert_eq!(parse_ports(":80").ok(), Some((0, 80)));
        assert!(parse_ports("80:0").is_err());
        assert!(parse_ports("a:80").is_err());
        assert!(parse_ports("1:2:3").is_err());
    }
}
