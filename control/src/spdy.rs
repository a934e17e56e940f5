//! SPDY/3.1 framing, as much of it as `kubectl port-forward` needs from a server: kubectl
//! 1.32 tunnels a SPDY session through a WebSocket (subprotocol
//! `SPDY/3.1+portforward.k8s.io`) and opens two streams per forwarded connection. Frames
//! are read from a byte buffer (a frame may span WebSocket messages, or share one) and
//! written whole. Header blocks are zlib with SPDY/3's preset dictionary, one
//! compression context per direction for the whole session, as moby/spdystream (the
//! client's SPDY library) does.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// A frame larger than this is refused, so a peer cannot make the server buffer 16 MiB:
/// kubectl's frames carry at most 32 KiB.
const MAX_FRAME: usize = 1 << 20;
/// Header blocks inflating beyond this are refused.
const MAX_HEADERS: usize = 64 * 1024;
const VERSION: u16 = 3;
const CONTROL: u32 = 0x8000_0000;
pub const FLAG_FIN: u8 = 0x01;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;

/// RST_STREAM status: the stream was refused (before any processing).
pub const REFUSED_STREAM: u32 = 3;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpdyError {
    #[error("SPDY frame of {0} bytes is too large")]
    TooLarge(usize),
    #[error("SPDY version {0} is not 3")]
    Version(u16),
    #[error("malformed SPDY {0} frame")]
    Malformed(&'static str),
    #[error("SPDY header block: {0}")]
    Headers(String),
}

/// A frame as read; frames this server has no use for (SETTINGS, WINDOW_UPDATE, ...)
/// are `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        flags: u8,
        headers: Vec<(String, String)>,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Ping {
        id: u32,
    },
    GoAway,
    Data {
        stream_id: u32,
        flags: u8,
        data: Vec<u8>,
    },
    Other,
}

/// The dictionary SPDY/3 header compression starts from (the SPDY/3 draft, 2.6.10.1):
/// header names each with its 32-bit length, then a run of common values.
pub fn header_dictionary() -> Vec<u8> {
    const NAMES: [&str; 66] = [
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
        // The last name runs straight into the values below.
        "",
    ];
    const VALUES: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information",
        "204 No Content",
        "301 Moved Permanently",
        "400 Bad Request",
        "401 Unauthorized",
        "403 Forbidden",
        "404 Not Found",
        "500 Internal Server Error",
        "501 Not Implemented",
        "503 Service Unavailable",
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,",
        "application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut dictionary = Vec::with_capacity(1423);
    for name in NAMES.iter().filter(|name| !name.is_empty()) {
        let length = u32::try_from(name.len()).unwrap_or_default();
        dictionary.extend_from_slice(&length.to_be_bytes());
        dictionary.extend_from_slice(name.as_bytes());
    }
    dictionary.extend_from_slice(VALUES.as_bytes());
    dictionary
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..at + 4)
        .and_then(|word| word.try_into().ok())
        .map(u32::from_be_bytes)
}

/// Reads frames from the bytes a peer sent, in order.
pub struct FrameReader {
    buffer: Vec<u8>,
    inflate: Decompress,
    dictionary: Vec<u8>,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader {
            buffer: Vec::new(),
            inflate: Decompress::new(true),
            dictionary: header_dictionary(),
        }
    }
}

impl FrameReader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame, or None until more bytes come.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SpdyError> {
        let (Some(first), Some(second)) = (be32(&self.buffer, 0), be32(&self.buffer, 4)) else {
            return Ok(None);
        };
        let flags = (second >> 24) as u8;
        let length = (second & 0x00ff_ffff) as usize;
        if length > MAX_FRAME {
            return Err(SpdyError::TooLarge(length));
        }
        if self.buffer.len() < 8 + length {
            return Ok(None);
        }
        let payload: Vec<u8> = self.buffer.drain(..8 + length).skip(8).collect();
        if first & CONTROL == 0 {
            return Ok(Some(Frame::Data {
                stream_id: first & 0x7fff_ffff,
                flags,
                data: payload,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let frame = match (first & 0xffff) as u16 {
            SYN_STREAM => {
                let stream_id = be32(&payload, 0).ok_or(SpdyError::Malformed("SYN_STREAM"))?;
                let block = payload
                    .get(10..)
                    .ok_or(SpdyError::Malformed("SYN_STREAM"))?;
                let headers = parse_headers(&self.inflate_block(block)?)?;
                Frame::SynStream {
                    stream_id: stream_id & 0x7fff_ffff,
                    flags,
                    headers,
                }
            }
            // Their header blocks go through the shared context even though unused.
            SYN_REPLY | HEADERS => {
                let block = payload.get(4..).ok_or(SpdyError::Malformed("HEADERS"))?;
                self.inflate_block(block)?;
                Frame::Other
            }
            RST_STREAM => Frame::RstStream {
                stream_id: be32(&payload, 0).ok_or(SpdyError::Malformed("RST_STREAM"))?
                    & 0x7fff_ffff,
                status: be32(&payload, 4).ok_or(SpdyError::Malformed("RST_STREAM"))?,
            },
            PING => Frame::Ping {
                id: be32(&payload, 0).ok_or(SpdyError::Malformed("PING"))?,
            },
            GOAWAY => Frame::GoAway,
            _ => Frame::Other,
        };
        Ok(Some(frame))
    }

    fn inflate_block(&mut self, mut input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let error = |e: flate2::DecompressError| SpdyError::Headers(e.to_string());
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADERS {
                    return Err(SpdyError::Headers("too large".to_owned()));
                }
                out.reserve(out.capacity());
            }
            let consumed_before = self.inflate.total_in();
            let produced_before = out.len();
            let result = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let consumed = usize::try_from(self.inflate.total_in() - consumed_before)
                .unwrap_or(input.len())
                .min(input.len());
            input = &input[consumed..];
            match result {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {
                    let full = out.len() == out.capacity();
                    if input.is_empty() && !full {
                        break;
                    }
                    if consumed == 0 && out.len() == produced_before && !full {
                        return Err(SpdyError::Headers("no progress".to_owned()));
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&self.dictionary)
                        .map_err(error)?;
                }
                Err(e) => return Err(error(e)),
            }
        }
        Ok(out)
    }
}

/// A header block: a count, then each name and value with its 32-bit length. Several
/// values of one name are joined by NUL; the first is kept.
fn parse_headers(block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
    let malformed = || SpdyError::Headers("malformed name/value block".to_owned());
    let count = be32(block, 0).ok_or_else(malformed)?;
    let mut at = 4;
    let field = |at: &mut usize| -> Result<String, SpdyError> {
        let length = be32(block, *at).ok_or_else(malformed)? as usize;
        let bytes = block.get(*at + 4..*at + 4 + length).ok_or_else(malformed)?;
        *at += 4 + length;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    };
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = field(&mut at)?;
        let value = field(&mut at)?;
        let first = value.split('\0').next().unwrap_or_default().to_owned();
        headers.push((name.to_ascii_lowercase(), first));
    }
    Ok(headers)
}

/// Encodes the frames this server sends.
pub struct FrameWriter {
    deflate: Compress,
}

impl Default for FrameWriter {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // Right after creation, as zlib requires; it cannot fail then.
        let _ = deflate.set_dictionary(&header_dictionary());
        FrameWriter { deflate }
    }
}

fn control_frame(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.extend_from_slice(&(CONTROL | u32::from(VERSION) << 16 | u32::from(kind)).to_be_bytes());
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX) & 0x00ff_ffff;
    frame.extend_from_slice(&(u32::from(flags) << 24 | length).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

impl FrameWriter {
    /// Accepts a stream the peer opened (no headers).
    pub fn syn_reply(&mut self, stream_id: u32) -> Vec<u8> {
        let mut payload = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
        payload.extend_from_slice(&self.deflate_block(&0u32.to_be_bytes()));
        control_frame(SYN_REPLY, 0, &payload)
    }

    pub fn data(stream_id: u32, data: &[u8], fin: bool) -> Vec<u8> {
        let mut frame = Vec::with_capacity(8 + data.len());
        frame.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
        let length = u32::try_from(data.len()).unwrap_or(u32::MAX) & 0x00ff_ffff;
        let flags = if fin { FLAG_FIN } else { 0 };
        frame.extend_from_slice(&(u32::from(flags) << 24 | length).to_be_bytes());
        frame.extend_from_slice(data);
        frame
    }

    pub fn rst_stream(stream_id: u32, status: u32) -> Vec<u8> {
        let mut payload = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
        payload.extend_from_slice(&status.to_be_bytes());
        control_frame(RST_STREAM, 0, &payload)
    }

    pub fn ping(id: u32) -> Vec<u8> {
        control_frame(PING, 0, &id.to_be_bytes())
    }

    fn deflate_block(&mut self, mut input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() + 64);
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let before = self.deflate.total_in();
            if self
                .deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .is_err()
            {
                break;
            }
            let consumed = usize::try_from(self.deflate.total_in() - before)
                .unwrap_or(input.len())
                .min(input.len());
            input = &input[consumed..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        out
    }

    /// A SYN_STREAM as a client sends it: for tests of the reader.
    #[cfg(test)]
    fn syn_stream(&mut self, stream_id: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut block = u32::try_from(headers.len())
            .unwrap_or_default()
            .to_be_bytes()
            .to_vec();
        for (name, value) in headers {
            for part in [name, value] {
                block.extend_from_slice(
                    &u32::try_from(part.len()).unwrap_or_default().to_be_bytes(),
                );
                block.extend_from_slice(part.as_bytes());
            }
        }
        let mut payload = stream_id.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        payload.extend_from_slice(&self.deflate_block(&block));
        control_frame(SYN_STREAM, 0, &payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy3s() {
        let dictionary = header_dictionary();
        assert_eq!(
            dictionary.len(),
            1423,
            "the draft's dictionary is 1423 bytes"
        );
        assert_eq!(&dictionary[..11], b"\0\0\0\x07options");
        assert!(dictionary.ends_with(b",*,enq=0."));
        // zlib names a preset dictionary by its Adler-32, which the peer checks.
        let mut deflate = Compress::new(Compression::default(), true);
        let adler = deflate.set_dictionary(&dictionary).expect("dictionary");
        assert_eq!(adler, 0xe3c6_a7c2, "Adler-32 of SPDY/3's dictionary");
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex"))
            .collect()
    }

    /// A SYN_STREAM compressed by another SPDY/3 implementation (node-spdy's parser
    /// tests): the dictionary and the inflating agree with theirs.
    #[test]
    fn another_implementations_syn_stream_is_read() {
        let mut reader = FrameReader::default();
        reader.push(&hex(concat!(
            "800300010000002c0000000100000000000078",
            "f9e3c6a7c202e50e507ab442a45a77d7105006",
            "b32a4804974d8cfa00000000ffff"
        )));
        let Some(Frame::SynStream {
            stream_id, headers, ..
        }) = reader.next_frame().expect("valid")
        else {
            panic!("a SYN_STREAM");
        };
        assert_eq!(stream_id, 1);
        assert!(
            headers.contains(&(":method".into(), "GET".into())),
            "{headers:?}"
        );
        assert!(
            headers.contains(&(":path".into(), "/".into())),
            "{headers:?}"
        );
    }

    #[test]
    fn frames_are_read_across_and_within_messages() {
        let mut client = FrameWriter::default();
        let mut bytes = client.syn_stream(
            1,
            &[
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", "0"),
            ],
        );
        bytes.extend(client.syn_stream(3, &[("streamType", "data"), ("port", "8080")]));
        bytes.extend(FrameWriter::data(3, b"GET / HTTP/1.0\r\n\r\n", false));
        bytes.extend(FrameWriter::data(1, b"", true));
        bytes.extend(FrameWriter::ping(1));
        bytes.extend(FrameWriter::rst_stream(3, 5));

        let mut reader = FrameReader::default();
        let mut frames = Vec::new();
        // One byte at a time: frames split anywhere are still whole when read.
        for byte in bytes {
            reader.push(&[byte]);
            while let Some(frame) = reader.next_frame().expect("valid") {
                frames.push(frame);
            }
        }
        assert_eq!(
            frames,
            vec![
                Frame::SynStream {
                    stream_id: 1,
                    flags: 0,
                    headers: vec![
                        ("streamtype".into(), "error".into()),
                        ("port".into(), "8080".into()),
                        ("requestid".into(), "0".into())
                    ],
                },
                Frame::SynStream {
                    stream_id: 3,
                    flags: 0,
                    headers: vec![
                        ("streamtype".into(), "data".into()),
                        ("port".into(), "8080".into())
                    ],
                },
                Frame::Data {
                    stream_id: 3,
                    flags: 0,
                    data: b"GET / HTTP/1.0\r\n\r\n".to_vec()
                },
                Frame::Data {
                    stream_id: 1,
                    flags: FLAG_FIN,
                    data: Vec::new()
                },
                Frame::Ping { id: 1 },
                Frame::RstStream {
                    stream_id: 3,
                    status: 5
                },
            ]
        );
    }

    #[test]
    fn replies_carry_an_empty_header_block_the_peer_can_inflate() {
        let mut server = FrameWriter::default();
        let mut peer = FrameReader::default();
        for stream_id in [1, 3] {
            let reply = server.syn_reply(stream_id);
            assert_eq!(&reply[..4], &[0x80, 0x03, 0x00, 0x02]);
            assert_eq!(be32(&reply, 8), Some(stream_id));
            let block = peer.inflate_block(&reply[12..]).expect("inflates");
            assert_eq!(block, 0u32.to_be_bytes(), "no headers");
        }
    }

    #[test]
    fn other_versions_and_huge_frames_are_refused() {
        let mut reader = FrameReader::default();
        reader.push(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1]);
        assert_eq!(reader.next_frame(), Err(SpdyError::Version(2)));
        let mut reader = FrameReader::default();
        reader.push(&[0, 0, 0, 1, 0x00, 0xff, 0xff, 0xff]);
        assert_eq!(reader.next_frame(), Err(SpdyError::TooLarge(0xff_ffff)));
    }
}
