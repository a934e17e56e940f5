//! A small HTTPS client for the control API, configured from admin.conf: what berthctl
//! and the tests use. One connection per request keeps it simple; watches hold theirs.
//! With several control planes (admin.conf's failover servers) a request that cannot
//! connect to one goes to the next, and the client stays with the one that answered.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::http::{HeaderMap, Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use berth_api::kubeconfig::{ClientSettings, Kubeconfig, KubeconfigError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Config(#[from] KubeconfigError),
    #[error("server address {0:?}: expected http(s)://host:port")]
    BadServer(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("building request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("response is not JSON: {0}")]
    Json(#[from] serde_json::Error),
}

pub struct Client {
    /// The control planes, in the configuration's order; at least one.
    endpoints: Vec<Endpoint>,
    /// The endpoint that answered last: where the next request goes first.
    current: AtomicUsize,
    token: Option<String>,
    tls: Option<TlsConnector>,
}

struct Endpoint {
    host: String,
    port: u16,
    /// The name its certificate must carry (https only).
    tls_name: Option<ServerName<'static>>,
}

impl Endpoint {
    fn parse(server: &str, https: bool) -> Result<Self, ClientError> {
        let bad = || ClientError::BadServer(server.to_owned());
        let rest = server
            .strip_prefix(if https { "https://" } else { "http://" })
            .ok_or_else(bad)?;
        let (host, port) = rest
            .trim_end_matches('/')
            .rsplit_once(':')
            .ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls_name = https
            .then(|| {
                ServerName::try_from(host.clone()).map_err(|e| ClientError::Tls(e.to_string()))
            })
            .transpose()?;
        Ok(Self {
            host,
            port,
            tls_name,
        })
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// How long one control plane of several gets to accept a connection and finish the TLS
/// handshake before the next is tried: a frozen or cut-off host accepts TCP in its kernel
/// and then never answers.
const FAILOVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A response read in full.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Result<Value, ClientError> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

impl Client {
    pub fn from_kubeconfig(path: &Path) -> Result<Self, ClientError> {
        Self::new(Kubeconfig::load(path)?.settings()?)
    }

    pub fn new(settings: ClientSettings) -> Result<Self, ClientError> {
        let https = if settings.server.starts_with("https://") {
            true
        } else if settings.server.starts_with("http://") {
            false
        } else {
            return Err(ClientError::BadServer(settings.server.clone()));
        };
        let endpoints = std::iter::once(&settings.server)
            .chain(&settings.failover_servers)
            .map(|server| Endpoint::parse(server, https))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = if https {
            let mut roots = rustls::RootCertStore::empty();
            let pem = settings.ca_pem.as_deref().ok_or_else(|| {
                ClientError::Tls("no certificate-authority-data to trust".to_owned())
            })?;
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots
                    .add(cert.map_err(|e| ClientError::Tls(e.to_string()))?)
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots);
            let config = match &settings.client_certificate {
                Some((cert, key)) => {
                    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| ClientError::Tls(format!("client certificate: {e}")))?;
                    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
                        .map_err(|e| ClientError::Tls(format!("client key: {e}")))?;
                    config
                        .with_client_auth_cert(chain, key)
                        .map_err(|e| ClientError::Tls(e.to_string()))?
                }
                None => config.with_no_client_auth(),
            };
            Some(TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(Self {
            endpoints,
            current: AtomicUsize::new(0),
            token: settings.token,
            tls,
        })
    }

    /// Every control plane this client knows, the configured server first.
    pub fn servers(&self) -> usize {
        self.endpoints.len()
    }

    /// The same client with another token (or none): for testing authentication.
    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.token = token.map(str::to_owned);
        self
    }

    /// Sends a request and returns the response as it starts: for bodies read as they
    /// come (`logs -f`).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&[u8], &str)>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        self.send_with(method, path, body, &[]).await
    }

    /// Opens a WebSocket at `path` (a GET with the RFC 6455 handshake) offering the
    /// subprotocols `protocols`: the upgraded connection and the protocol the server
    /// chose, or the server's answer when it did not switch protocols.
    pub async fn websocket(
        &self,
        path: &str,
        protocols: &[&str],
    ) -> Result<Result<(hyper::upgrade::Upgraded, String), Reply>, ClientError> {
        use base64::Engine as _;
        // The key only has to be fresh, so caches cannot answer for the server.
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_nanos())
            .unwrap_or_default()
            ^ u128::from(std::process::id());
        let key = base64::engine::general_purpose::STANDARD.encode(nonce.to_le_bytes());
        let headers = [
            (header::CONNECTION, "Upgrade".to_owned()),
            (header::UPGRADE, "websocket".to_owned()),
            (header::SEC_WEBSOCKET_VERSION, "13".to_owned()),
            (header::SEC_WEBSOCKET_KEY, key),
            (header::SEC_WEBSOCKET_PROTOCOL, protocols.join(", ")),
        ];
        let response = self.send_with(Method::GET, path, None, &headers).await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await?.to_bytes();
            return Ok(Err(Reply {
                status,
                headers,
                body,
            }));
        }
        let protocol = response
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let upgraded = hyper::upgrade::on(response).await?;
        Ok(Ok((upgraded, protocol)))
    }

    async fn send_with(
        &self,
        method: Method,
        path: &str,
        body: Option<(&[u8], &str)>,
        headers: &[(header::HeaderName, String)],
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let (endpoint, io) = self.connect().await?;
        let addr = endpoint.addr();
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &addr);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let (bytes, content_type) = body.unwrap_or((b"", "application/json"));
        let request = request
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::copy_from_slice(bytes)))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(connection.with_upgrades());
        Ok(sender.send_request(request).await?)
    }

    /// A connection to the first control plane that takes one, starting with the one that
    /// answered last; nothing has been sent yet, so trying another is always safe. The
    /// error is the last one's when none does.
    async fn connect(&self) -> Result<(&Endpoint, TokioIo<Connection>), ClientError> {
        let first = self.current.load(Ordering::Relaxed);
        let count = self.endpoints.len();
        let mut last_error = None;
        for i in (first..first + count).map(|i| i % count) {
            let endpoint = &self.endpoints[i];
            let attempt = self.connect_to(endpoint);
            let outcome = if count > 1 {
                tokio::time::timeout(FAILOVER_CONNECT_TIMEOUT, attempt)
                    .await
                    .unwrap_or_else(|_| {
                        Err(ClientError::Connect {
                            addr: endpoint.addr(),
                            source: std::io::ErrorKind::TimedOut.into(),
                        })
                    })
            } else {
                attempt.await
            };
            match outcome {
                Ok(io) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok((endpoint, TokioIo::new(io)));
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::BadServer(String::new())))
    }

    async fn connect_to(&self, endpoint: &Endpoint) -> Result<Connection, ClientError> {
        let addr = endpoint.addr();
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?;
        match (&self.tls, &endpoint.tls_name) {
            (Some(connector), Some(name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
                Ok(Either::Right(stream))
            }
            _ => Ok(Either::Left(tcp)),
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<(&[u8], &str)>,
    ) -> Result<Reply, ClientError> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// A JSON request; returns the status and the JSON body (a `Status` on errors).
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), ClientError> {
        let encoded = body.map(serde_json::to_vec).transpose()?;
        let reply = self
            .request(
                method,
                path,
                encoded.as_deref().map(|b| (b, "application/json")),
            )
            .await?;
        let value = if reply.body.is_empty() {
            Value::Null
        } else {
            reply.json()?
        };
        Ok((reply.status, value))
    }

    /// Starts a watch (`path` should carry `?watch=true`); events arrive in order.
    pub async fn watch(&self, path: &str) -> Result<Watch, ClientError> {
        let response = self.send(Method::GET, path, None).await?;
        Ok(Watch {
            status: response.status(),
            body: response.into_body(),
            buffer: Vec::new(),
        })
    }
}

/// One connection to a control plane, TLS or not.
type Connection = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

pub struct Watch {
    pub status: StatusCode,
    body: Incoming,
    buffer: Vec<u8>,
}

impl Watch {
    /// The next event, or None when the server closed the stream.
    pub async fn next(&mut self) -> Result<Option<Value>, ClientError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Ok(Some(serde_json::from_slice(&line)?));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(frame) => {
                    if let Some(data) = frame?.data_ref() {
                        self.buffer.extend_from_slice(data);
                    }
                }
            }
        }
    }
}
