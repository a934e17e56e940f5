//! `exec -i/-t` and `attach`: a session with a container's standard streams over the
//! WebSocket kubectl uses (`v5.channel.k8s.io`: the first byte of a binary message is its
//! channel — 0 stdin, 1 stdout, 2 stderr, 3 the closing Status, 4 terminal size,
//! 255 a closed channel).

use std::io::Write;

use futures_util::{SinkExt as _, StreamExt as _};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::Role},
};

use super::{CtlError, Ctx};
use berth_api::channels::{self, CLOSE, ERROR, PROTOCOL_V5, RESIZE, STDERR, STDIN, STDOUT};

/// The standard streams asked for.
#[derive(Debug, Clone, Copy)]
pub struct Streams {
    pub stdin: bool,
    pub tty: bool,
}

/// The query of an exec (with `command`) or attach request.
pub fn query(command: &[String], container: Option<&str>, streams: Streams) -> String {
    let mut query: Vec<String> = command
        .iter()
        .map(|part| format!("command={}", super::encode(part)))
        .collect();
    if let Some(container) = container {
        query.push(format!("container={}", super::encode(container)));
    }
    query.push(format!("stdin={}", streams.stdin));
    query.push("stdout=true".to_owned());
    query.push(format!("stderr={}", !streams.tty));
    query.push(format!("tty={}", streams.tty));
    query.join("&")
}

/// Our terminal in raw mode while a session with a remote terminal runs: keys go to the
/// remote side as typed. Restored when dropped.
struct RawTerminal(libc::termios);

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        // SAFETY: isatty only inspects descriptor 0.
        if unsafe { libc::isatty(0) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data that tcgetattr fills in completely on success.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios for tcgetattr to write.
        if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the termios it is given; tcsetattr reads it.
        unsafe {
            libc::cfmakeraw(&mut raw);
            libc::tcsetattr(0, libc::TCSANOW, &raw);
        }
        Some(RawTerminal(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter` on the same descriptor.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.0);
        }
    }
}

/// Our terminal's size as the resize channel carries it, if stdout is a terminal.
fn terminal_size() -> Option<Value> {
    // SAFETY: winsize is plain data the ioctl fills in on success.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize through the pointer, which is valid.
    let asked = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut size) };
    (asked == 0 && size.ws_col > 0).then(|| json!({"Width": size.ws_col, "Height": size.ws_row}))
}

/// Standard input, read on a thread of its own: tokio's stdin reads on its blocking pool,
/// which the runtime waits for at exit, so berthctl would hang in a read after the
/// session ended. The channel closes at the end of input.
fn read_stdin() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            let read = match std::io::Read::read(&mut stdin, &mut buffer) {
                Ok(0) => return,
                Ok(read) => read,
                // A terminal resize (SIGWINCH) may interrupt the read.
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if sender.blocking_send(buffer[..read].to_vec()).is_err() {
                return;
            }
        }
    });
    receiver
}

fn frame(channel: u8, data: &[u8]) -> Message {
    Message::Binary(channels::frame(channel, data).into())
}

/// The end a closing Status says: Ok, the command's exit code, or the server's error.
pub fn status_result(status: &Value) -> Result<(), CtlError> {
    if status["status"] == "Success" {
        return Ok(());
    }
    if status["reason"] == "NonZeroExitCode" {
        let code = status
            .pointer("/details/causes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|cause| cause["reason"] == "ExitCode")
            .and_then(|cause| cause["message"].as_str())
            .and_then(|code| code.parse::<i32>().ok());
        if let Some(code) = code {
            return Err(CtlError::CommandExited(code));
        }
    }
    Err(CtlError::Server {
        reason: status["reason"]
            .as_str()
            .unwrap_or("InternalError")
            .to_owned(),
        message: status["message"]
            .as_str()
            .unwrap_or("the session failed")
            .to_owned(),
    })
}

/// Runs the session at `path` (an exec or attach URL with its query) until the server
/// closes it with a Status.
pub async fn run(
    ctx: &Ctx,
    path: &str,
    streams: Streams,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CtlError> {
    let upgraded = match ctx
        .client
        .websocket(path, &[PROTOCOL_V5])
        .await
        .map_err(|e| ctx.transport(e))?
    {
        Ok((upgraded, _)) => upgraded,
        Err(reply) => {
            let value = reply.json().unwrap_or_else(
                |_| json!({"message": String::from_utf8_lossy(&reply.body).into_owned()}),
            );
            return Err(ctx.failure(reply.status, &value, None));
        }
    };
    let mut socket =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    let _raw = if streams.tty && streams.stdin {
        RawTerminal::enter()
    } else {
        None
    };
    if streams.tty
        && let Some(size) = terminal_size()
    {
        let _ = socket
            .send(frame(RESIZE, size.to_string().as_bytes()))
            .await;
    }
    let mut resizes = if streams.tty {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok()
    } else {
        None
    };
    let mut stdin = streams.stdin.then(read_stdin);
    loop {
        tokio::select! {
            message = socket.next() => {
                let Some(Ok(message)) = message else {
                    return Err(CtlError::Usage(
                        "the connection closed before the command's status".to_owned(),
                    ));
                };
                let Message::Binary(bytes) = message else {
                    continue;
                };
                match bytes.split_first() {
                    Some((&STDOUT, data)) => {
                        let _ = out.write_all(data);
                        let _ = out.flush();
                    }
                    Some((&STDERR, data)) => {
                        let _ = err.write_all(data);
                        let _ = err.flush();
                    }
                    Some((&ERROR, data)) => {
                        let status: Value = serde_json::from_slice(data).unwrap_or_else(
                            |_| json!({"message": String::from_utf8_lossy(data).into_owned()}),
                        );
                        return status_result(&status);
                    }
                    _ => {}
                }
            }
            read = async {
                match stdin.as_mut() {
                    Some(stdin) => stdin.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                match read {
                    None => {
                        stdin = None;
                        let _ = socket.send(frame(CLOSE, &[STDIN])).await;
                    }
                    Some(data) => {
                        let _ = socket.send(frame(STDIN, &data)).await;
                    }
                }
            }
            Some(()) = async {
                match resizes.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(size) = terminal_size() {
                    let _ = socket.send(frame(RESIZE, size.to_string().as_bytes())).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_ask_for_what_kubectl_asks() {
        let command = vec!["sh".to_owned(), "-c".to_owned(), "echo hi".to_owned()];
        assert_eq!(
            query(
                &command,
                Some("app"),
                Streams {
                    stdin: true,
                    tty: true
                }
            ),
            "command=sh&command=-c&command=echo%20hi&container=app&stdin=true&stdout=true&stderr=false&tty=true"
        );
        assert_eq!(
            query(
                &[],
                None,
                Streams {
                    stdin: false,
                    tty: false
                }
            ),
            "stdin=false&stdout=true&stderr=true&tty=false"
        );
    }

    #[test]
    fn statuses_become_exit_codes_or_errors() {
        assert!(status_result(&json!({"status": "Success"})).is_ok());
        let exited = status_result(&json!({
            "status": "Failure", "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}
        }));
        assert!(
            matches!(exited, Err(CtlError::CommandExited(3))),
            "{exited:?}"
        );
        let failed = status_result(&json!({"status": "Failure", "message": "node down"}));
        assert!(
            matches!(&failed, Err(CtlError::Server { message, .. }) if message == "node down"),
            "{failed:?}"
        );
    }
}
