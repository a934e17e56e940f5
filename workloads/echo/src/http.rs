//! Just enough HTTP/1.x for the echo workload: request heads with Content-Length bodies,
//! keep-alive and pipelining. Chunked request bodies are refused: no probe or benchmark
//! client sends them, and refusing is safer than guessing where the next request starts.

/// Request heads larger than this are refused, so a client can't make us buffer forever.
pub const MAX_HEAD: usize = 16 * 1024;
/// Request bodies are read and dropped; bigger ones are refused.
pub const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub code: u16,
    pub reason: &'static str,
}

impl Status {
    pub const OK: Status = Status::new(200, "OK");
    pub const BAD_REQUEST: Status = Status::new(400, "Bad Request");
    pub const NOT_FOUND: Status = Status::new(404, "Not Found");
    pub const METHOD_NOT_ALLOWED: Status = Status::new(405, "Method Not Allowed");
    pub const PAYLOAD_TOO_LARGE: Status = Status::new(413, "Payload Too Large");
    pub const HEADERS_TOO_LARGE: Status = Status::new(431, "Request Header Fields Too Large");
    pub const NOT_IMPLEMENTED: Status = Status::new(501, "Not Implemented");
    pub const SERVICE_UNAVAILABLE: Status = Status::new(503, "Service Unavailable");
    pub const VERSION_NOT_SUPPORTED: Status = Status::new(505, "HTTP Version Not Supported");

    const fn new(code: u16, reason: &'static str) -> Self {
        Status { code, reason }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The request target without its query string.
    pub path: &'a str,
    /// HTTP/1.0 keeps a connection open only when asked to, and must then be told so.
    pub http10: bool,
    pub keep_alive: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole request (head and body) is buffered; it took `consumed` bytes.
    Complete {
        request: Request<'a>,
        consumed: usize,
    },
    /// More bytes are needed.
    Partial,
    /// The connection can't be trusted any more: answer with this status and close.
    Invalid(Status),
}

pub fn parse(buf: &[u8]) -> Parsed<'_> {
    let Some(head_len) = buf.windows(4).position(|window| window == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Parsed::Invalid(Status::HEADERS_TOO_LARGE)
        } else {
            Parsed::Partial
        };
    };
    if head_len > MAX_HEAD {
        return Parsed::Invalid(Status::HEADERS_TOO_LARGE);
    }
    let Ok(head) = std::str::from_utf8(&buf[..head_len]) else {
        return Parsed::Invalid(Status::BAD_REQUEST);
    };
    let mut lines = head.split("\r\n");
    let mut words = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Parsed::Invalid(Status::BAD_REQUEST);
    };
    if method.is_empty() || !target.starts_with('/') {
        return Parsed::Invalid(Status::BAD_REQUEST);
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Parsed::Invalid(Status::VERSION_NOT_SUPPORTED),
    };
    let mut keep_alive = !http10;
    let mut content_length: Option<usize> = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Parsed::Invalid(Status::BAD_REQUEST);
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let Ok(length) = value.parse::<usize>() else {
                return Parsed::Invalid(Status::BAD_REQUEST);
            };
            // Two different lengths is the classic request-smuggling shape.
            if content_length.is_some_and(|seen| seen != length) {
                return Parsed::Invalid(Status::BAD_REQUEST);
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Invalid(Status::NOT_IMPLEMENTED);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && http10 {
                    keep_alive = true;
                }
            }
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY {
        return Parsed::Invalid(Status::PAYLOAD_TOO_LARGE);
    }
    let consumed = head_len + 4 + body_len;
    if buf.len() < consumed {
        return Parsed::Partial;
    }
    let path = target.split_once('?').map_or(target, |(path, _query)| path);
    Parsed::Complete {
        request: Request {
            method,
            path,
            http10,
            keep_alive,
        },
        consumed,
    }
}

/// A complete response; `head_only` answers HEAD (same headers, no body).
pub fn response(
    status: Status,
    body: &str,
    keep_alive: bool,
    http10: bool,
    head_only: bool,
) -> Vec<u8> {
    let connection = match (keep_alive, http10) {
        (false, _) => "Connection: close\r\n",
        (true, true) => "Connection: keep-alive\r\n",
        (true, false) => "",
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{connection}\r\n",
        status.code,
        status.reason,
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (Request<'_>, usize) {
        match parse(buf) {
            Parsed::Complete { request, consumed } => (request, consumed),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    #[test]
    fn http11_keeps_alive_unless_told_to_close() {
        let (request, consumed) = complete(b"GET /x?y=1 HTTP/1.1\r\nHost: a\r\n\r\nrest");
        assert_eq!(request.path, "/x");
        assert!(request.keep_alive);
        assert_eq!(consumed, 32);
        let (request, _) = complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!request.keep_alive);
    }

    #[test]
    fn http10_closes_unless_asked_to_keep_alive() {
        let (request, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!request.keep_alive);
        let (request, _) = complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(request.keep_alive && request.http10);
    }

    #[test]
    fn waits_for_the_whole_body() {
        assert_eq!(
            parse(b"POST /recover HTTP/1.1\r\nContent-Length: 4\r\n\r\nab"),
            Parsed::Partial
        );
        let (request, consumed) =
            complete(b"POST /recover HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd");
        assert_eq!(request.method, "POST");
        assert_eq!(consumed, 49);
    }

    #[test]
    fn refuses_what_it_cannot_frame() {
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parsed::Invalid(Status::NOT_IMPLEMENTED)
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Parsed::Invalid(Status::BAD_REQUEST)
        );
        assert_eq!(
            parse(b"GARBAGE\r\n\r\n"),
            Parsed::Invalid(Status::BAD_REQUEST)
        );
        assert_eq!(
            parse(b"GET / HTTP/2.0\r\n\r\n"),
            Parsed::Invalid(Status::VERSION_NOT_SUPPORTED)
        );
        assert_eq!(
            parse(&vec![b'a'; MAX_HEAD + 1]),
            Parsed::Invalid(Status::HEADERS_TOO_LARGE)
        );
    }

    #[test]
    fn responses_carry_length_and_connection() {
        let text = String::from_utf8(response(Status::OK, "hi\n", false, false, false))
            .expect("ascii response");
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\nConnection: close\r\n\r\nhi\n"
        );
        let head = response(Status::OK, "hi\n", true, false, true);
        assert!(head.ends_with(b"Content-Length: 3\r\n\r\n"));
    }
}
