//! Wires the parts together and serves the API: store, PKI, admin.conf, compaction,
//! and the HTTPS (or, when asked, plain HTTP) listener.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_rustls::TlsAcceptor;

use berth_api::{agent::agent_server::AgentServer, kubeconfig::Kubeconfig};

use crate::{
    agent_api::AgentService,
    api::{self, ApiState, auth::PeerUser},
    authn::{self, Authenticator},
    config::Config,
    controllers::Controllers,
    metrics::Metrics,
    node_client::NodeClient,
    pki::{self, Pki},
    registry::Registry,
    store::{EncryptedStore, Keyring, RedbStore, Store},
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
        let store: Arc<dyn Store> = Arc::new(EncryptedStore::new(
            RedbStore::open(&config.store_path())?,
            Keyring::load_or_create(&config.encryption_keys_dir())?,
            vec![crate::objects::prefix(&berth_api::kinds::SECRETS, None)],
        ));
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

        let registry = open_registry(config, &store, &metrics).await?;
        crate::policy::ensure_defaults(&registry)
            .await
            .map_err(|e| ServerError::Setup(format!("creating the default roles: {e}")))?;
        let usage = Usage::default();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let controllers = if config.no_controllers {
            None
        } else {
            Some(
                Controllers::start(
                    registry.clone(),
                    Arc::clone(&store),
                    Controllers::all(&usage),
                    crate::controllers::Settings {
                        root_ca_pem: Some(pki.ca_cert_pem.as_str().into()),
                        ..config.controller_settings()
                    },
                    shutdown_rx.clone(),
                )
                .await?,
            )
        };
        let tokens = Arc::new(BootstrapTokens::load(
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
            serve_agent_api(config, &pki, service, shutdown_rx.clone()).await?;
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
        };
        let mut tasks = Vec::new();
        let mut metrics_addr = None;
        if let Some(address) = config.metrics_listen {
            let (listener, bound) = bind(address, "metrics").await?;
            let router = api::monitoring::router(state.clone());
            tasks.push(tokio::spawn(accept_loop(
                listener,
                None,
                router,
                shutdown_rx.clone(),
            )));
            metrics_addr = Some(bound);
        }
        let router = api::router(state);
        let accept = tokio::spawn(accept_loop(listener, tls, router, shutdown_rx.clone()));
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
            ("https", Some(tls_acceptor(&pki)?))
        };
        let url = format!("{scheme}://{client_host}:{port}");
        let admin_config = config.admin_config_path();
        write_admin_config(
            &admin_config,
            &url,
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

/// Binds `address`; `name` says which listener in errors.
async fn bind(address: SocketAddr, name: &str) -> Result<(TcpListener, SocketAddr), ServerError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ServerError::Io {
            what: format!("binding {address}"),
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServerError::Io {
        what: format!("reading the {name} address"),
        source,
    })?;
    Ok((listener, local_addr))
}

/// The registry over `store`, with what must hold before anything is served: the
/// `default` namespace, and the allocations of Services stored before they were kept.
async fn open_registry(
    config: &Config,
    store: &Arc<dyn Store>,
    metrics: &Metrics,
) -> Result<Registry, ServerError> {
    let ranges = config.ranges().map_err(ServerError::Setup)?;
    let registry = Registry::new(Arc::clone(store), metrics.clone(), ranges).with_admission(
        crate::registry::Admission {
            host_path_prefixes: config.allow_host_paths.clone(),
        },
    );
    registry
        .ensure_namespace(berth_api::meta::DEFAULT_NAMESPACE)
        .await
        .map_err(|e| ServerError::Setup(format!("creating the default namespace: {e}")))?;
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

/// Serves the agents' gRPC API over mutual TLS until shutdown; returns its task and port.
async fn serve_agent_api(
    config: &Config,
    pki: &Pki,
    service: AgentService,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(JoinHandle<()>, u16), ServerError> {
    let (listener, address) = bind(config.agent_listen, "agent API").await?;
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            &pki.server_cert_pem,
            &pki.server_key_pem,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(&pki.ca_cert_pem))
        // Join is the one call made before the node has a certificate.
        .client_auth_optional(true);
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .add_service(AgentServer::new(service));
    let task = tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = server.serve_with_incoming_shutdown(incoming, stop).await {
            tracing::error!("agent API stopped: {e}");
        }
    });
    Ok((task, address.port()))
}

fn tls_acceptor(pki: &Pki) -> Result<TlsAcceptor, ServerError> {
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
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
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
    ca_pem: Option<&str>,
    new_token: Option<&str>,
) -> Result<(), ServerError> {
    let token = match new_token {
        Some(token) => Some(token.to_owned()),
        None if path.exists() => Kubeconfig::load(path)?.settings()?.token,
        None => {
            tracing::warn!(
                "{} is missing and the admin token is only stored hashed; delete pki/admin-token.sha256 \
                 and restart to issue a new one",
                path.display()
            );
            return Ok(());
        }
    };
    let yaml = Kubeconfig::new(url, ca_pem, token.as_deref()).to_yaml()?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| ServerError::Io {
            what: format!("creating {}", parent.display()),
            source,
        })?;
    }
    pki::write_private(path, yaml.as_bytes())?;
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let router = router.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let result = match tls {
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => {
                        // The handshake verified the certificate against the cluster CA.
                        let peer = PeerUser(
                            stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|certs| certs.first())
                                .and_then(|cert| authn::user_of_certificate(cert)),
                        );
                        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
                            router,
                            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                                request.extensions_mut().insert(peer.clone());
                                request
                            },
                        ));
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await
                    }
                    Err(e) => {
                        tracing::debug!(%peer, "TLS handshake failed: {e}");
                        return;
                    }
                },
                None => {
                    builder
                        .serve_connection_with_upgrades(
                            TokioIo::new(stream),
                            TowerToHyperService::new(router),
                        )
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
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
