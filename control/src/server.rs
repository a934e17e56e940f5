//! Wires the parts together and serves the API: store, PKI, admin.conf, compaction,
//! and the HTTPS (or, when asked, plain HTTP) listener.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};
use tokio_rustls::TlsAcceptor;

use berth_api::{agent::agent_server::AgentServer, kubeconfig::Kubeconfig};

use crate::{
    agent_api::AgentService,
    api::{self, ApiState, auth::PeerUser},
    authn::{self, Authenticator},
    config::Config,
    controllers::Controllers,
    limits::{Activity, Admitted, ConnectionLimiter, ConnectionLimits, Tracked},
    metrics::Metrics,
    node_client::NodeClient,
    pki::{self, Pki},
    registry::Registry,
    store::{Elector, EncryptedStore, EtcdStore, Keyring, RedbStore, Store},
    tokens::{BootstrapTokens, TokenError},
    usage::Usage,
};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    ClusterFiles(#[from] crate::cluster_files::ClusterFilesError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("the Secrets' encryption keys: {0}")]
    Keyring(#[from] crate::store::KeyringError),
    #[error(transparent)]
    Kubeconfig(#[from] berth_api::kubeconfig::KubeconfigError),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error(transparent)]
    Tokens(#[from] TokenError),
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Authn(#[from] authn::AuthnError),
    #[error("metrics setup: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
}

/// The audit log the configuration asks for, if any; a bad policy file stops the start.
fn open_audit_log(config: &Config) -> Result<Option<Arc<crate::audit::AuditLog>>, ServerError> {
    let Some(path) = &config.audit_log_path else {
        return Ok(None);
    };
    let policy = match &config.audit_policy_file {
        Some(file) => crate::audit::Policy::load(file)?,
        None => crate::audit::Policy::default(),
    };
    let log = crate::audit::AuditLog::open(
        path,
        policy,
        config.audit_log_maxsize.saturating_mul(1 << 20),
        config.audit_log_maxbackup,
    )?;
    Ok(Some(Arc::new(log)))
}

/// A running server; dropping it does not stop it, `shutdown` does.
pub struct Server {
    pub local_addr: SocketAddr,
    /// `https://127.0.0.1:6443` or `http://...`.
    pub url: String,
    pub admin_config: PathBuf,
    /// The agents' gRPC endpoint, `https://host:port`.
    pub agent_url: String,
    /// Where `/metrics` and `/http-sd/agents` are served without authentication, if asked.
    pub metrics_addr: Option<SocketAddr>,
    store: Arc<dyn Store>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    controllers: Option<Controllers>,
}

impl Server {
    /// Opens the store, loads or creates the PKI and admin.conf, and starts the API
    /// listener, the agent API, the controllers and compaction.
    pub async fn start(config: &Config) -> Result<Self, ServerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::Io {
            what: format!("creating {}", config.data_dir.display()),
            source,
        })?;
        // Secrets are sealed below everything that reads or writes the store.
        let sealed = vec![crate::objects::prefix(&berth_api::kinds::SECRETS, None)];
        let etcd = config.etcd().map(EtcdStore::connect).transpose()?;
        // Before anything reads the CA or the keys: they must be the cluster's.
        let shared_files_taken = match &etcd {
            Some(etcd) => crate::cluster_files::take(etcd, config)?,
            None => true,
        };
        let keyring = Keyring::load_or_create(&config.encryption_keys_dir())?;
        let store: Arc<dyn Store> = match &etcd {
            Some(etcd) => Arc::new(EncryptedStore::new(etcd.clone(), keyring, sealed.clone())),
            None => Arc::new(EncryptedStore::new(
                RedbStore::open(&config.store_path())?,
                keyring,
                sealed.clone(),
            )),
        };
        // A Secret no key here decrypts would break every watch at its first event: say
        // which key is missing now instead.
        store
            .list(&crate::objects::prefix(&berth_api::kinds::SECRETS, None))
            .map_err(|e| ServerError::Setup(format!("reading the stored Secrets: {e}")))?;
        let metrics = Metrics::new()?;
        let (listener, local_addr) = bind(config.listen, "bound").await?;
        // A wildcard listen address is reached through loopback from this machine.
        let client_host = if local_addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            local_addr.ip().to_string()
        };
        let Identity {
            pki,
            auth,
            tls,
            url,
            admin_config,
        } = Identity::prepare(config, &client_host, local_addr.port())?;
        if let Some(etcd) = etcd.as_ref().filter(|_| !shared_files_taken) {
            crate::cluster_files::publish(etcd, config)?;
        }

        let registry = open_registry(config, &store, &metrics).await?;
        crate::policy::ensure_defaults(&registry)
            .await
            .map_err(|e| ServerError::Setup(format!("creating the default roles: {e}")))?;
        let usage = Usage::default();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let settings = crate::controllers::Settings {
            root_ca_pem: Some(pki.ca_cert_pem.as_str().into()),
            ..config.controller_settings()
        };
        let mut tasks = Vec::new();
        let controllers = match (&etcd, config.no_controllers) {
            (_, true) => None,
            (Some(etcd), false) => {
                let identity = format!("{}@{local_addr}", std::process::id());
                let elector = etcd.elector(
                    "controllers",
                    identity,
                    Duration::from_secs(config.leader_lease_secs),
                );
                tasks.push(tokio::spawn(lead(
                    Leadership {
                        elector,
                        etcd: etcd.clone(),
                        keys_dir: config.encryption_keys_dir(),
                        sealed,
                        registry: registry.clone(),
                        usage: usage.clone(),
                        settings,
                        metrics: metrics.clone(),
                    },
                    shutdown_rx.clone(),
                )));
                None
            }
            (None, false) => {
                metrics.leader.set(1);
                metrics.leader_elections.inc();
                Some(
                    Controllers::start(
                        registry.clone(),
                        Arc::clone(&store),
                        Controllers::all(&usage),
                        settings,
                        shutdown_rx.clone(),
                    )
                    .await?,
                )
            }
        };
        let tokens = Arc::new(BootstrapTokens::load(
            Arc::clone(&store),
            &config.pki_dir(),
            &pki.bootstrap_token,
            (config.bootstrap_token_ttl_secs > 0)
                .then(|| pki.bootstrap_token_issued + config.bootstrap_token_ttl_secs),
        )?);
        let pki = Arc::new(pki);
        let service = AgentService::new(
            registry.clone(),
            metrics.clone(),
            Arc::clone(&pki),
            Arc::clone(&tokens),
            config.cluster_cidr,
            usage.clone(),
            Duration::from_secs(config.node_grace_secs),
        )
        .with_reserved_names(config.tls_sans.iter().cloned())
        .with_certificate_validity(Duration::from_secs(config.node_certificate_validity_secs));
        let service = match auth.service_account_tokens() {
            Some(signer) => service.with_token_signer(Arc::clone(signer)),
            None => service,
        };
        let (agent, agent_port) =
            serve_agent_api(config, &pki, service, &metrics, shutdown_rx.clone()).await?;
        let agent_url = format!("https://{client_host}:{agent_port}");
        let state = ApiState {
            authorizer: crate::authz::Rbac::new(registry.clone()),
            registry,
            metrics: metrics.clone(),
            auth: Some(auth),
            tokens: Some(tokens),
            nodes: Arc::new(NodeClient::new(&pki)),
            usage,
            audit: open_audit_log(config)?,
            user_limits: crate::limits::UserLimiter::new(
                config.request_limits(),
                metrics.rejected_requests.clone(),
            ),
            config: Arc::new(config.clone()),
        };
        let mut metrics_addr = None;
        if let Some(address) = config.metrics_listen {
            let (listener, bound) = bind(address, "metrics").await?;
            let router = api::monitoring::router(state.clone());
            let limits = config.connection_limits(config.max_connections);
            tasks.push(tokio::spawn(serve_api(
                listener,
                None,
                router,
                ConnectionLimiter::new("metrics", limits.max, metrics.connections.clone()),
                limits,
                shutdown_rx.clone(),
            )));
            metrics_addr = Some(bound);
        }
        let router = api::router(state);
        let limits = config.connection_limits(config.max_connections);
        let accept = tokio::spawn(serve_api(
            listener,
            tls,
            router,
            ConnectionLimiter::new("api", limits.max, metrics.connections.clone()),
            limits,
            shutdown_rx.clone(),
        ));
        let compaction = tokio::spawn(compact_periodically(
            Arc::clone(&store),
            metrics,
            config.history_revisions,
            config.compaction_interval(),
            shutdown_rx,
        ));
        tracing::info!(%url, %agent_url, admin_config = %admin_config.display(), "serving the mesh control API");
        tasks.extend([accept, compaction, agent]);
        Ok(Self {
            local_addr,
            url,
            admin_config,
            agent_url,
            metrics_addr,
            store,
            shutdown,
            tasks,
            controllers,
        })
    }

    /// The store this server writes to, for in-process controllers and tests.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// Stops accepting connections and background work; open connections end with the runtime.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        if let Some(controllers) = self.controllers {
            controllers.join().await;
        }
    }
}

/// Who the server is and how clients reach it: its CA and certificates, the admin
/// token, the TLS acceptor (None for plain HTTP), its URL and the admin.conf written for
/// it.
struct Identity {
    pki: Pki,
    auth: Arc<Authenticator>,
    tls: Option<TlsAcceptor>,
    url: String,
    admin_config: PathBuf,
}

impl Identity {
    fn prepare(config: &Config, client_host: &str, port: u16) -> Result<Self, ServerError> {
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            client_host.to_owned(),
        ];
        names.extend(config.tls_sans.iter().cloned());
        let pki = Pki::load_or_create(&config.pki_dir(), &names)?;
        let auth = Arc::new(
            Authenticator::new(pki.admin_token_digest, config.token_auth_file.as_deref())?
                .with_service_account_tokens(crate::satokens::TokenSigner::load_or_create(
                    &config.pki_dir(),
                )?),
        );
        let (scheme, tls) = if config.insecure_http {
            tracing::warn!("serving plain HTTP: bearer tokens cross the network unencrypted");
            ("http", None)
        } else {
            ("https", Some(tls_acceptor(&pki, &[b"h2", b"http/1.1"])?))
        };
        let url = format!("{scheme}://{client_host}:{port}");
        let admin_config = config.admin_config_path();
        let failover: Vec<String> = config
            .control_plane_endpoints
            .iter()
            .filter(|endpoint| endpoint.trim_end_matches('/') != url)
            .cloned()
            .collect();
        write_admin_config(
            &admin_config,
            &url,
            &failover,
            (!config.insecure_http).then_some(pki.ca_cert_pem.as_str()),
            pki.new_admin_token.as_deref(),
        )?;
        Ok(Self {
            pki,
            auth,
            tls,
            url,
            admin_config,
        })
    }
}

/// A kubeconfig for `user` in `groups` (`berth-control kubeconfig user`, after kubeadm's
/// command of that name): the server and CA of `admin_config`, and a client certificate
/// the cluster CA in `config`'s data directory signs now.
pub fn user_kubeconfig(
    config: &Config,
    user: &str,
    groups: &[String],
) -> Result<String, ServerError> {
    let admin = Kubeconfig::load(&config.admin_config_path())?.settings()?;
    let (cert, key) = pki::sign_user(&config.pki_dir(), user, groups)?;
    Ok(
        Kubeconfig::with_certificate(&admin.server, admin.ca_pem.as_deref(), user, &cert, &key)
            .to_yaml()?,
    )
}

/// Connections the kernel completes and queues for a listener before the server accepts
/// them (capped by net.core.somaxconn, as Go servers ask for): a burst of connections
/// waits in the queue instead of being retried by the clients seconds later.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `address`; `name` says which listener in errors.
async fn bind(address: SocketAddr, name: &str) -> Result<(TcpListener, SocketAddr), ServerError> {
    let io = |what: String| move |source| ServerError::Io { what, source };
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(io(format!("creating the {name} socket")))?;
    // A restarted server binds its port again while old connections are in TIME_WAIT.
    socket
        .set_reuseaddr(true)
        .map_err(io(format!("setting SO_REUSEADDR on the {name} socket")))?;
    socket
        .bind(address)
        .map_err(io(format!("binding {address}")))?;
    let listener = socket
        .listen(LISTEN_BACKLOG)
        .map_err(io(format!("listening on {address}")))?;
    let local_addr = listener
        .local_addr()
        .map_err(io(format!("reading the {name} address")))?;
    Ok((listener, local_addr))
}

/// The registry over `store`, with what must hold before anything is served: the
/// `default` namespace, and the allocations of Services stored before they were kept.
/// What the elected leader runs the controllers with.
struct Leadership {
    elector: Elector,
    etcd: EtcdStore,
    keys_dir: std::path::PathBuf,
    sealed: Vec<String>,
    registry: Registry,
    usage: Usage,
    settings: crate::controllers::Settings,
    metrics: Metrics,
}

/// Campaigns for the leadership; while elected, runs the scheduler and controllers,
/// writing through a store fenced by the leadership's lease; stops them when the lease
/// is lost (and campaigns again), resigns at shutdown so the next leader need not wait
/// for the lease to expire.
async fn lead(leadership: Leadership, mut shutdown: watch::Receiver<bool>) {
    let Leadership {
        elector,
        etcd,
        keys_dir,
        sealed,
        registry,
        usage,
        settings,
        metrics,
    } = leadership;
    loop {
        let term = tokio::select! {
            term = elector.acquire() => term,
            _ = shutdown.changed() => return,
        };
        let term = match term {
            Ok(term) => term,
            Err(e) => {
                tracing::warn!("campaigning for the controller leadership: {e}");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        let started = async {
            let keyring = Keyring::load_or_create(&keys_dir)
                .map_err(|e| format!("the Secrets' encryption keys: {e}"))?;
            let fenced: Arc<dyn Store> = Arc::new(EncryptedStore::new(
                etcd.fenced(&term),
                keyring,
                sealed.clone(),
            ));
            let (stop, stop_rx) = watch::channel(false);
            let controllers = Controllers::start(
                registry.writing_to(Arc::clone(&fenced)),
                fenced,
                Controllers::all(&usage),
                settings.clone(),
                stop_rx,
            )
            .await
            .map_err(|e| e.to_string())?;
            Ok::<_, String>((stop, controllers))
        }
        .await;
        let (stop, controllers) = match started {
            Ok(running) => running,
            Err(e) => {
                tracing::warn!("starting the controllers as the leader: {e}");
                elector.resign(&term).await;
                continue;
            }
        };
        tracing::info!("elected leader: running the scheduler and controllers");
        metrics.leader.set(1);
        metrics.leader_elections.inc();
        let shutting_down = tokio::select! {
            () = elector.hold(&term) => false,
            _ = shutdown.changed() => true,
        };
        let _ = stop.send(true);
        controllers.join().await;
        metrics.leader.set(0);
        if shutting_down {
            elector.resign(&term).await;
            return;
        }
        tracing::warn!("lost the leadership: the scheduler and controllers stopped");
    }
}

async fn open_registry(
    config: &Config,
    store: &Arc<dyn Store>,
    metrics: &Metrics,
) -> Result<Registry, ServerError> {
    let ranges = config.ranges().map_err(ServerError::Setup)?;
    let registry = Registry::new(Arc::clone(store), metrics.clone(), ranges).with_admission(
        crate::registry::Admission {
            host_path_prefixes: config.allow_host_paths.clone(),
            default_toleration_seconds: i64::try_from(config.pod_eviction_timeout_secs)
                .unwrap_or(i64::MAX),
        },
    );
    for namespace in berth_api::meta::SYSTEM_NAMESPACES {
        registry
            .ensure_namespace(namespace)
            .await
            .map_err(|e| ServerError::Setup(format!("creating namespace {namespace}: {e}")))?;
    }
    registry
        .reserve_held_values()
        .await
        .map_err(|e| ServerError::Setup(format!("reserving Service allocations: {e}")))?;
    let outside = registry
        .allocations_outside_ranges()
        .await
        .map_err(|e| ServerError::Setup(format!("reading Service allocations: {e}")))?;
    if !outside.is_empty() {
        return Err(ServerError::Setup(outside.join("; ")));
    }
    Ok(registry)
}

/// Deadline of one unary agent API call (watches are streams and not bounded by it).
const AGENT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Calls one agent connection runs at once (more wait): an agent holds a few watches and
/// makes its heartbeats, status reports, events and a config fetch per object its pods
/// use; a node cannot take more of the server than this.
const AGENT_CONCURRENCY_PER_CONNECTION: usize = 256;
/// Handshaken agent connections waiting for the gRPC server to take them.
const AGENT_ACCEPT_QUEUE: usize = 128;

/// Serves the agents' gRPC API over mutual TLS until shutdown; returns its task and port.
/// The listener has its own connection cap and TLS handshake timeout, so no API client
/// can keep agents out; keepalive pings find agents that went away.
async fn serve_agent_api(
    config: &Config,
    pki: &Pki,
    service: AgentService,
    metrics: &Metrics,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(JoinHandle<()>, u16), ServerError> {
    let (listener, address) = bind(config.agent_listen, "agent API").await?;
    // The TLS handshake is ours, not tonic's, so a connection in it can be shed.
    let tls = tls_acceptor(pki, &[b"h2"])?;
    let limits = config.connection_limits(config.agent_max_connections);
    let limiter = ConnectionLimiter::new("agent", limits.max, metrics.connections.clone());
    let server = tonic::transport::Server::builder()
        .timeout(AGENT_CALL_TIMEOUT)
        .concurrency_limit_per_connection(AGENT_CONCURRENCY_PER_CONNECTION)
        .max_concurrent_streams(u32::try_from(AGENT_CONCURRENCY_PER_CONNECTION).ok())
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .add_service(AgentServer::new(service));
    // Bounded: when the server falls behind, handshakes wait instead of piling up.
    let (handshaken, mut incoming) = tokio::sync::mpsc::channel(AGENT_ACCEPT_QUEUE);
    let accept = accept_loop(
        listener,
        limiter.clone(),
        shutdown.clone(),
        move |admitted, peer| {
            let (tls, limiter, handshaken) = (tls.clone(), limiter.clone(), handshaken.clone());
            tokio::spawn(async move {
                if let Some(stream) =
                    handshake(&tls, admitted, &limiter, limits.handshake_timeout, peer).await
                {
                    let _ = handshaken.send(stream).await;
                }
            });
        },
    );
    let task = tokio::spawn(async move {
        let incoming = futures_util::stream::poll_fn(move |cx| {
            incoming
                .poll_recv(cx)
                .map(|stream| stream.map(Ok::<_, std::io::Error>))
        });
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        let serve = server.serve_with_incoming_shutdown(incoming, stop);
        let (served, ()) = tokio::join!(serve, accept);
        if let Err(e) = served {
            tracing::error!("agent API stopped: {e}");
        }
    });
    Ok((task, address.port()))
}

/// The server side of TLS with the cluster's certificate, offering `alpn`.
fn tls_acceptor(pki: &Pki, alpn: &[&[u8]]) -> Result<TlsAcceptor, ServerError> {
    let tls = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.server_cert_pem.as_bytes())
            .chain(CertificateDer::pem_slice_iter(pki.ca_cert_pem.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes()).map_err(|e| tls(&e))?;
    // An explicit provider: other crates in the workspace may enable a second one, and
    // then rustls refuses to pick a default.
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls(&e))?
    .with_client_cert_verifier(client_verifier(pki)?)
    .with_single_cert(certs, key)
    .map_err(|e| tls(&e))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Client certificates the cluster CA signed name a user (CN) and groups (O); one is
/// optional, so bearer tokens keep working over connections without one.
fn client_verifier(
    pki: &Pki,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, ServerError> {
    let tls = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.ca_cert_pem.as_bytes()) {
        roots.add(cert.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| tls(&e))
}

/// Writes admin.conf with this start's address. The token is only known when it was
/// just created; otherwise the token already in admin.conf is kept.
fn write_admin_config(
    path: &Path,
    url: &str,
    failover: &[String],
    ca_pem: Option<&str>,
    new_token: Option<&str>,
) -> Result<(), ServerError> {
    let token = match new_token {
        Some(token) => Some(token.to_owned()),
        None if path.exists() => Kubeconfig::load(path)?.settings()?.token,
        None => {
            tracing::warn!(
                "{} is missing and the admin token is only stored hashed: with several control \
                 planes on etcd, use the admin.conf the first one wrote (every one accepts it); \
                 alone, delete pki/admin-token.sha256 and restart to issue a new token",
                path.display()
            );
            return Ok(());
        }
    };
    let yaml = Kubeconfig::new(url, ca_pem, token.as_deref())
        .with_failover_servers(failover)
        .to_yaml()?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| ServerError::Io {
            what: format!("creating {}", parent.display()),
            source,
        })?;
    }
    pki::write_private(path, yaml.as_bytes())?;
    Ok(())
}

/// Accepts `listener`'s connections until shutdown, each admitted by `limiter` and
/// handed to `serve` with its peer's address.
async fn accept_loop(
    listener: TcpListener,
    limiter: ConnectionLimiter,
    mut shutdown: watch::Receiver<bool>,
    mut serve: impl FnMut(Admitted<TcpStream>, SocketAddr),
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = limiter.name(), "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        match limiter.admit(stream) {
            Some(admitted) => serve(admitted, peer),
            None => tracing::debug!(%peer, listener = limiter.name(), "full: connection refused"),
        }
    }
}

/// The TLS stream of an admitted connection; None when its handshake failed, took
/// longer than `timeout`, or was shed to make room for a newer connection.
async fn handshake(
    tls: &TlsAcceptor,
    admitted: Admitted<TcpStream>,
    limiter: &ConnectionLimiter,
    timeout: Duration,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<Tracked<TcpStream>>> {
    let Admitted { io, shed } = admitted;
    tokio::select! {
        result = tokio::time::timeout(timeout, tls.accept(io)) => match result {
            Ok(Ok(stream)) => {
                limiter.established(stream.get_ref().0);
                Some(stream)
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, "TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                limiter.timed_out("handshake");
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        },
        Ok(()) = shed => {
            tracing::debug!(%peer, "shed during its TLS handshake: the listener is full");
            None
        }
    }
}

/// Serves the API's HTTPS (or plain HTTP) connections until shutdown.
async fn serve_api(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: axum::Router,
    limiter: ConnectionLimiter,
    limits: ConnectionLimits,
    shutdown: watch::Receiver<bool>,
) {
    let serve = |admitted: Admitted<TcpStream>, peer: SocketAddr| {
        let (router, tls, limiter) = (router.clone(), tls.clone(), limiter.clone());
        tokio::spawn(async move {
            let Some(tls) = tls else {
                limiter.established(&admitted.io);
                return serve_http(admitted.io, None, router, &limiter, limits, peer).await;
            };
            let Some(stream) =
                handshake(&tls, admitted, &limiter, limits.handshake_timeout, peer).await
            else {
                return;
            };
            // The handshake verified the certificate against the cluster CA.
            let user = PeerUser(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|cert| authn::user_of_certificate(cert)),
            );
            serve_http(stream, Some(user), router, &limiter, limits, peer).await;
        });
    };
    accept_loop(listener, limiter.clone(), shutdown, serve).await;
}

/// HTTP/2 pings to find dead peers of connections with requests (watches) in flight.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams one HTTP/2 connection may have open: kube-apiserver's default
/// (`--http2-max-streams-per-connection`), as kubectl and client-go multiplex watches.
const HTTP2_MAX_STREAMS: u32 = 1000;

/// Serves HTTP on one connection until the client closes it, its headers take longer
/// than the header-read timeout, or it has no request in flight for the idle timeout.
async fn serve_http<I>(
    io: I,
    user: Option<PeerUser>,
    router: axum::Router,
    limiter: &ConnectionLimiter,
    limits: ConnectionLimits,
    peer: SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::default();
    let service = {
        let activity = activity.clone();
        tower::service_fn(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                if let Some(user) = &user {
                    request.extensions_mut().insert(user.clone());
                }
                let busy = activity.start();
                let router = router.clone();
                async move {
                    let response = tower::ServiceExt::oneshot(router, request).await?;
                    Ok::<_, std::convert::Infallible>(crate::limits::hold_until_sent(
                        response, busy,
                    ))
                }
            },
        )
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(HTTP2_MAX_STREAMS);
    let connection =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            return;
        }
        () = activity.idle_for(limits.idle_timeout) => {}
    }
    limiter.timed_out("idle");
    connection.as_mut().graceful_shutdown();
    // A client that ignores the shutdown (no close after GOAWAY) is cut off.
    if tokio::time::timeout(limits.header_read_timeout, connection)
        .await
        .is_err()
    {
        tracing::debug!(%peer, "connection closed without waiting for the client");
    }
}

async fn compact_periodically(
    store: Arc<dyn Store>,
    metrics: Metrics,
    keep: u64,
    interval: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        // At start and after each compaction (which is what shrinks it).
        if let Ok(size) = store.size_bytes() {
            metrics
                .store_size_bytes
                .set(i64::try_from(size).unwrap_or(i64::MAX));
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let store = Arc::clone(&store);
        let result = tokio::task::spawn_blocking(move || {
            let revision = store.revision()?;
            if revision > keep {
                store.compact(revision - keep)?;
            }
            store.compacted_revision()
        })
        .await;
        match result {
            Ok(Ok(compacted)) => metrics
                .store_compacted_revision
                .set(i64::try_from(compacted).unwrap_or(i64::MAX)),
            Ok(Err(e)) => tracing::warn!("compaction failed: {e}"),
            Err(e) => tracing::warn!("compaction task failed: {e}"),
        }
    }
}
