//! Kubernetes' channel WebSocket protocol of exec, attach (and port forwarding without
//! SPDY): every binary message starts with the byte of its channel. Shared by the server
//! (berth-control) and berthctl.

/// The subprotocols, newest first; v5 adds [`CLOSE`].
pub const PROTOCOL_V5: &str = "v5.channel.k8s.io";
pub const PROTOCOL_V4: &str = "v4.channel.k8s.io";

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// The closing `Status` of an exec or attach.
pub const ERROR: u8 = 3;
/// The terminal's size, `{"Width": W, "Height": H}`.
pub const RESIZE: u8 = 4;
/// v5: the channel in the next byte is closed (for stdin: its end of file).
pub const CLOSE: u8 = 255;

/// A message on `channel`.
pub fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(1 + data.len());
    frame.push(channel);
    frame.extend_from_slice(data);
    frame
}
