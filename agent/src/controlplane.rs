//! The agent's side of the control plane's agent API: joining once with the bootstrap
//! token (the key never leaves the node; the certificate, CA and pod range are kept in the
//! state directory so a restarted agent does not join again), and watches that survive
//! reconnects — resumed from the last revision seen, or started over from a snapshot
//! when the control plane's history no longer reaches back that far.

use std::{path::Path, time::Duration};

use berth_api::agent::{JoinRequest, agent_client::AgentClient};
use berth_watch::{Change, Consumer, Objects, Watched};
use rcgen::{CertificateParams, DnType, KeyPair};
use serde_json::Value;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "this node has not joined yet and no bootstrap token was given (--bootstrap-token-file)"
    )]
    NoToken,
    #[error("making the node's key or certificate request: {0}")]
    Key(#[from] rcgen::Error),
    #[error("control plane at {server}: {source}")]
    Transport {
        server: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("joining the cluster: {0}")]
    Join(tonic::Status),
    #[error("server address {0:?} is not a valid URL")]
    Url(String),
}

/// What the node holds after joining.
#[derive(Debug, Clone)]
pub struct Membership {
    pub pod_cidr: String,
    pub channel: Channel,
    /// The node certificate and key (PEM): the agent's identity as a client of the
    /// control plane and as the server of the node API.
    pub cert_pem: String,
    pub key_pem: String,
    /// The cluster CA (PEM).
    pub ca_pem: String,
}

fn read(path: &Path) -> Result<String, ControlPlaneError> {
    std::fs::read_to_string(path).map_err(|source| ControlPlaneError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_private(path: &Path, contents: &str) -> Result<(), ControlPlaneError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| ControlPlaneError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    std::io::Write::write_all(&mut file, contents.as_bytes()).map_err(io)
}

/// Joins the cluster (or reuses an earlier join) and opens an mTLS channel. The channel
/// connects lazily, so an unreachable control plane does not stop the agent from starting.
pub async fn connect(config: &Config) -> Result<Membership, ControlPlaneError> {
    let dir = &config.state_dir;
    std::fs::create_dir_all(dir).map_err(|source| ControlPlaneError::Io {
        path: dir.clone(),
        source,
    })?;
    let (key_path, cert_path, cidr_path) = (
        dir.join("node.key"),
        dir.join("node.crt"),
        dir.join("pod-cidr"),
    );
    let ca_pem = read(&config.ca_file)?;
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem));
    let transport = |source| ControlPlaneError::Transport {
        server: config.server.clone(),
        source,
    };
    let endpoint = Channel::from_shared(config.server.clone())
        .map_err(|_| ControlPlaneError::Url(config.server.clone()))?
        .connect_timeout(Duration::from_secs(5));
    if !(key_path.exists() && cert_path.exists() && cidr_path.exists()) {
        let token_file = config
            .bootstrap_token_file
            .as_ref()
            .ok_or(ControlPlaneError::NoToken)?;
        let token = read(token_file)?.trim().to_owned();
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, config.node_name.as_str());
        let csr_pem = params.serialize_request(&key)?.pem()?;
        let anonymous = endpoint
            .clone()
            .tls_config(tls.clone())
            .map_err(transport)?
            .connect()
            .await
            .map_err(transport)?;
        let joined = AgentClient::new(anonymous)
            .join(JoinRequest {
                bootstrap_token: token,
                node_name: config.node_name.clone(),
                csr_pem,
            })
            .await
            .map_err(ControlPlaneError::Join)?
            .into_inner();
        write_private(&key_path, &key.serialize_pem())?;
        write_private(&cert_path, &joined.certificate_pem)?;
        write_private(&cidr_path, &joined.pod_cidr)?;
        tracing::info!(node = %config.node_name, pod_cidr = %joined.pod_cidr, "joined the cluster");
    }
    let (cert_pem, key_pem) = (read(&cert_path)?, read(&key_path)?);
    let identity = Identity::from_pem(&cert_pem, &key_pem);
    let channel = endpoint
        .tls_config(tls.identity(identity))
        .map_err(transport)?
        .connect_lazy();
    Ok(Membership {
        pod_cidr: read(&cidr_path)?.trim().to_owned(),
        channel,
        cert_pem,
        key_pem,
        ca_pem,
    })
}

/// Delivers the full object set whenever it changes, as long as `run` listens.
struct Deliver(mpsc::Sender<Objects>);

impl Consumer<Value> for Deliver {
    async fn changed(&mut self, objects: &Objects, _change: Change<Value>) -> bool {
        self.0.send(objects.clone()).await.is_ok()
    }

    fn wanted(&self) -> bool {
        !self.0.is_closed()
    }
}

/// Runs a watch for as long as `updates` has a receiver, sending the full object set
/// whenever it changes (and is complete: a fresh snapshot is only sent once SYNCED). Until
/// the first snapshot nothing is sent, so a consumer never acts on a partial view; while
/// the control plane is unreachable nothing is sent either, and the consumer keeps
/// serving what it has.
pub async fn watch(client: AgentClient<Channel>, which: Watched, updates: mpsc::Sender<Objects>) {
    berth_watch::run(client, which, &mut Deliver(updates)).await;
}
