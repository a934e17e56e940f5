//! The agent's side of the control plane's agent API: joining once with the bootstrap
//! token (the key never leaves the node; the certificate, CA and pod range are kept in the
//! state directory so a restarted agent does not join again), and watches that survive
//! reconnects — resumed from the last revision seen, or started over from a snapshot
//! when the control plane's history no longer reaches back that far — and the
//! ConfigMaps and Secrets this node's pods use, fetched again every few seconds.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use berth_api::{
    Resource as _,
    agent::{
        JoinRequest, PodConfigRequest, PodTokenRequest, RenewCertificateRequest,
        agent_client::AgentClient,
    },
    configuration::{ConfigMap, Secret},
    storage::PersistentVolume,
};
use berth_watch::{Change, Consumer, Objects, Watched};
use prometheus::IntCounterVec;
use rcgen::{CertificateParams, DnType, KeyPair};
use serde_json::Value;
use tokio::{
    sync::{Notify, mpsc, watch},
    time::Instant,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::{
    config::Config,
    pods::{
        PodDesired,
        configs::{
            ConfigKey, ConfigKind, ConfigValues, Fetched, PodConfigs, Token, TokenKey,
            VOLUME_PATH_KEY,
        },
    },
};

/// How often the ConfigMaps and Secrets in use are fetched again: the bound on how long a
/// change takes to reach mounted files (the kubelet's default sync is a minute; Berth's
/// are small clusters).
pub const CONFIG_REFRESH: Duration = Duration::from_secs(2);

/// How often the local volume directory is checked for volumes deleted from the cluster.
pub const VOLUME_RECLAIM_EVERY: Duration = Duration::from_secs(10);

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
    #[error(
        "the node certificate {} has expired: give the agent a bootstrap token (--bootstrap-token-file) to join again",
        .0.display()
    )]
    Expired(PathBuf),
    #[error("renewing the node certificate: {0}")]
    Renew(tonic::Status),
}

impl ControlPlaneError {
    /// The control plane could not be reached or is not serving yet: worth trying again.
    pub fn is_unreachable(&self) -> bool {
        match self {
            ControlPlaneError::Transport { .. } => true,
            ControlPlaneError::Join(status) => status.code() == tonic::Code::Unavailable,
            _ => false,
        }
    }
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

/// Replaces `path` whole, readable by the agent only (`berth_files::write_private`).
fn write_private(path: &Path, contents: &str) -> Result<(), ControlPlaneError> {
    berth_files::write_private(path, contents.as_bytes()).map_err(|source| ControlPlaneError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Joins the cluster (or reuses an earlier join) and opens an mTLS channel. The channel
/// connects lazily, so an unreachable control plane does not stop the agent from starting.
pub async fn connect(config: &Config) -> Result<Membership, ControlPlaneError> {
    let dir = &config.state_dir;
    berth_files::private_dir(dir).map_err(|source| ControlPlaneError::Io {
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
    let transport = |server: &str| {
        let server = server.to_owned();
        move |source| ControlPlaneError::Transport { server, source }
    };
    let endpoints = config
        .servers
        .iter()
        .map(|url| {
            Channel::from_shared(url.clone())
                .map_err(|_| ControlPlaneError::Url(url.clone()))
                .map(|endpoint| {
                    endpoint
                        .connect_timeout(Duration::from_secs(5))
                        // The watches are long-lived streams over one connection: pings
                        // find a control plane that went away (or a dropped NAT entry)
                        // within a minute instead of the kernel's hours, and the agent
                        // reconnects.
                        .tcp_keepalive(Some(Duration::from_secs(60)))
                        .http2_keep_alive_interval(Duration::from_secs(30))
                        .keep_alive_timeout(Duration::from_secs(20))
                        .keep_alive_while_idle(true)
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    finish_renewal(dir)?;
    if cert_path.exists() && certificate_expired(&read(&cert_path)?) {
        // Only a join can bring the node back; without a token it stays out, saying why.
        if config.bootstrap_token_file.is_none() {
            return Err(ControlPlaneError::Expired(cert_path));
        }
        tracing::warn!(path = %cert_path.display(), "the node certificate expired: joining again");
        let _ = std::fs::remove_file(&cert_path);
    }
    if !(key_path.exists() && cert_path.exists() && cidr_path.exists()) {
        let token_file = config
            .bootstrap_token_file
            .as_ref()
            .ok_or(ControlPlaneError::NoToken)?;
        let token = read(token_file)?.trim().to_owned();
        let (key, csr_pem) = new_key_and_csr(&config.node_name)?;
        // The first control plane that answers.
        let mut anonymous = None;
        let mut unreachable = None;
        for (url, endpoint) in config.servers.iter().zip(&endpoints) {
            let connected = endpoint
                .clone()
                .tls_config(tls.clone())
                .map_err(transport(url))?
                .connect()
                .await
                .map_err(transport(url));
            match connected {
                Ok(channel) => {
                    anonymous = Some(channel);
                    break;
                }
                Err(e) => unreachable = Some(e),
            }
        }
        let anonymous = match (anonymous, unreachable) {
            (Some(channel), _) => channel,
            (None, Some(e)) => return Err(e),
            (None, None) => return Err(ControlPlaneError::Url(String::new())),
        };
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
    if let Some((_, not_after)) = berth_api::identity::validity_of_pem(&cert_pem) {
        tracing::info!(expires = %berth_api::time::rfc3339(not_after.max(0).unsigned_abs()), "node certificate");
    }
    let tls = tls.identity(identity);
    let endpoints = config
        .servers
        .iter()
        .zip(endpoints)
        .map(|(url, endpoint)| {
            endpoint
                .tls_config(tls.clone())
                .map(|endpoint| (url.clone(), endpoint))
                .map_err(transport(url))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let channel = crate::failover::channel(endpoints);
    Ok(Membership {
        pod_cidr: read(&cidr_path)?.trim().to_owned(),
        channel,
        cert_pem,
        key_pem,
        ca_pem,
    })
}

/// A new node key and the certificate request for it (PEM), naming the node; the key
/// never leaves the node.
fn new_key_and_csr(node_name: &str) -> Result<(KeyPair, String), ControlPlaneError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, node_name);
    let csr_pem = params.serialize_request(&key)?.pem()?;
    Ok((key, csr_pem))
}

/// Where a renewal writes the new key and certificate before putting them in place.
fn renewed_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("node.key.new"), dir.join("node.crt.new"))
}

/// Whether a certificate's validity has ended (or cannot be read).
fn certificate_expired(cert_pem: &str) -> bool {
    berth_api::identity::validity_of_pem(cert_pem)
        .is_none_or(|(_, not_after)| not_after <= berth_api::time::unix_now() as i64)
}

/// Completes a renewal that stopped between writing the new key and certificate and
/// putting them in place: both new files, or neither, replace the old ones.
fn finish_renewal(dir: &Path) -> Result<(), ControlPlaneError> {
    let (key_new, cert_new) = renewed_paths(dir);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ControlPlaneError::Io { path, source }
    };
    match (key_new.exists(), cert_new.exists()) {
        (true, true) => {
            berth_files::replace(&key_new, &dir.join("node.key")).map_err(io(&key_new))?;
            berth_files::replace(&cert_new, &dir.join("node.crt")).map_err(io(&cert_new))?;
        }
        // Only a key: the certificate for it never arrived.
        (true, false) => std::fs::remove_file(&key_new).map_err(io(&key_new))?,
        // A certificate whose key was put in place already: finish.
        (false, true) => {
            berth_files::replace(&cert_new, &dir.join("node.crt")).map_err(io(&cert_new))?
        }
        (false, false) => {}
    }
    Ok(())
}

/// When a certificate valid from `not_before` to `not_after` is renewed: after 80 % of
/// its lifetime, as the kubelet's rotation does (it picks 70–90 %).
fn renewal_time(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before) * 4 / 5
}

/// Waits until the node certificate is due, then trades a new key's CSR for a new
/// certificate and stores both in the state directory; returns once they are stored
/// (the caller starts the agent again on them). Failures are retried every 10 s.
pub async fn renew_certificate(
    config: &Config,
    membership: &Membership,
) -> Result<(), ControlPlaneError> {
    let Some((not_before, not_after)) = berth_api::identity::validity_of_pem(&membership.cert_pem)
    else {
        return std::future::pending().await;
    };
    let due = renewal_time(not_before, not_after);
    let wait = due
        .saturating_sub(berth_api::time::unix_now() as i64)
        .max(0);
    tokio::time::sleep(Duration::from_secs(wait.unsigned_abs())).await;
    let dir = &config.state_dir;
    loop {
        let (key, csr_pem) = new_key_and_csr(&config.node_name)?;
        let mut client = AgentClient::new(membership.channel.clone());
        match client
            .renew_certificate(RenewCertificateRequest { csr_pem })
            .await
        {
            Ok(renewed) => {
                let renewed = renewed.into_inner();
                let (key_new, cert_new) = renewed_paths(dir);
                write_private(&key_new, &key.serialize_pem())?;
                write_private(&cert_new, &renewed.certificate_pem)?;
                finish_renewal(dir)?;
                tracing::info!(node = %config.node_name, "node certificate renewed");
                return Ok(());
            }
            // Refused for good: this node is not a member any more.
            Err(status) if status.code() == tonic::Code::Unauthenticated => {
                return Err(ControlPlaneError::Renew(status));
            }
            Err(status) => {
                tracing::warn!(%status, "renewing the node certificate; trying again in 10 s");
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    }
}

/// Delivers the full object set whenever it changes, as long as `run` listens; counts
/// the watch's streams in `streams` (see [`count_stream`]).
struct Deliver(mpsc::Sender<Objects>, IntCounterVec);

impl Consumer<Value> for Deliver {
    async fn changed(&mut self, objects: &Objects, _change: Change<Value>) -> bool {
        self.0.send(objects.clone()).await.is_ok()
    }

    fn wanted(&self) -> bool {
        !self.0.is_closed()
    }

    fn stream_started(&mut self, resumed: bool) {
        count_stream(&self.1, "pods", resumed);
    }
}

/// Counts a started watch stream in `berth_agent_watch_streams_total`.
pub fn count_stream(streams: &IntCounterVec, watch: &str, resumed: bool) {
    let start = if resumed { "resumed" } else { "snapshot" };
    streams.with_label_values(&[watch, start]).inc();
}

/// Runs a watch for as long as `updates` has a receiver, sending the full object set
/// whenever it changes (and is complete: a fresh snapshot is only sent once SYNCED). Until
/// the first snapshot nothing is sent, so a consumer never acts on a partial view; while
/// the control plane is unreachable nothing is sent either, and the consumer keeps
/// serving what it has.
pub async fn watch_pods(
    client: AgentClient<Channel>,
    updates: mpsc::Sender<Objects>,
    streams: IntCounterVec,
) {
    berth_watch::run(client, Watched::Pods, &mut Deliver(updates, streams)).await;
}

/// Keeps `configs` current with the ConfigMaps and Secrets the desired pods use: fetched
/// at once when a pod starts using one, then every `every`; `wake` is notified when any
/// changed, so the pod manager starts a waiting container or rewrites a volume at once.
/// While the control plane is unreachable the last values stay.
pub async fn follow_pod_configs(
    client: AgentClient<Channel>,
    mut desired: watch::Receiver<Vec<PodDesired>>,
    configs: PodConfigs,
    wake: Arc<Notify>,
    every: Duration,
) {
    let mut feeding = true;
    // When each token held is due to be replaced.
    let mut refresh_at: BTreeMap<TokenKey, Instant> = BTreeMap::new();
    loop {
        let (keys, tokens): (BTreeSet<ConfigKey>, BTreeSet<TokenKey>) = {
            let pods = desired.borrow_and_update();
            let live = || pods.iter().filter(|pod| !pod.terminating);
            (
                live().flat_map(PodDesired::config_keys).collect(),
                live().flat_map(PodDesired::token_keys).collect(),
            )
        };
        configs.retain(&keys, &tokens);
        refresh_at.retain(|key, _| tokens.contains(key));
        let mut changed = false;
        for key in &keys {
            if let Some(fetched) = fetch(client.clone(), key).await {
                changed |= configs.set(key.clone(), fetched);
            }
        }
        for key in &tokens {
            if refresh_at.get(key).is_some_and(|at| Instant::now() < *at) {
                continue;
            }
            match request_token(client.clone(), key).await {
                Some(Ok((token, refresh))) => {
                    refresh_at.insert(key.clone(), refresh);
                    changed |= configs.set_token(key.clone(), Ok(token));
                }
                Some(Err(reason)) => changed |= configs.set_token(key.clone(), Err(reason)),
                None => {}
            }
        }
        if changed {
            wake.notify_one();
        }
        tokio::select! {
            result = desired.changed(), if feeding => feeding = result.is_ok(),
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Removes the directories under `dir` whose volume the control plane no longer has
/// (a claim's volume goes with its claim when its reclaim policy is `Delete`), every
/// `every`. Only a definite "not found" removes anything: a volume of another node
/// sharing the directory, or a control plane that cannot answer, leaves it be.
pub async fn reclaim_local_volumes(client: AgentClient<Channel>, dir: PathBuf, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let request = PodConfigRequest {
                kind: PersistentVolume::KIND.to_owned(),
                namespace: String::new(),
                name: name.clone(),
            };
            match client.clone().get_pod_config(request).await {
                Err(status) if status.code() == tonic::Code::NotFound => {
                    match tokio::fs::remove_dir_all(entry.path()).await {
                        Ok(()) => {
                            tracing::info!(volume = %name, "removed the data of a deleted volume")
                        }
                        Err(error) => {
                            tracing::warn!(volume = %name, %error, "removing a deleted volume's data")
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// When a token valid for `lifetime` seconds from now is replaced: as the kubelet, after
/// 80 % of its lifetime, and at least daily.
fn token_refresh_after(lifetime: u64) -> Duration {
    Duration::from_secs((lifetime.saturating_mul(4) / 5).min(24 * 3600))
}

/// A token for `key` and when to replace it (see [`token_refresh_after`]), or why the control plane refused one; None when it could not say.
async fn request_token(
    mut client: AgentClient<Channel>,
    key: &TokenKey,
) -> Option<Result<(Token, Instant), String>> {
    let request = PodTokenRequest {
        namespace: key.namespace.clone(),
        pod_name: key.pod.clone(),
        pod_uid: key.uid.clone(),
        audience: key.audience.clone(),
        expiration_seconds: key.expiration_seconds,
    };
    match client.request_pod_token(request).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let lifetime = reply.expiration_unix.saturating_sub(now);
            Some(Ok((
                Token(reply.token.into_bytes().into()),
                Instant::now() + token_refresh_after(lifetime),
            )))
        }
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::NotFound | tonic::Code::PermissionDenied
            ) =>
        {
            Some(Err(status.message().to_owned()))
        }
        Err(status) => {
            tracing::debug!(namespace = %key.namespace, pod = %key.pod, %status, "requesting a ServiceAccount token");
            None
        }
    }
}

/// One object as the control plane has it; None when it could not say.
async fn fetch(mut client: AgentClient<Channel>, key: &ConfigKey) -> Option<Fetched> {
    let request = PodConfigRequest {
        kind: key.kind.as_str().to_owned(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    };
    let reply = match client.get_pod_config(request).await {
        Ok(reply) => reply.into_inner(),
        Err(status) if status.code() == tonic::Code::NotFound => {
            return Some(Fetched::Missing(key.not_found()));
        }
        // The pod watch can be ahead of what the control plane's store answers for a
        // moment; the message says which.
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::PermissionDenied | tonic::Code::FailedPrecondition
            ) =>
        {
            return Some(Fetched::Missing(status.message().to_owned()));
        }
        Err(status) => {
            tracing::debug!(kind = key.kind.as_str(), namespace = %key.namespace, name = %key.name, %status, "fetching pod config");
            return None;
        }
    };
    let values = match key.kind {
        ConfigKind::ConfigMap => serde_json::from_slice::<ConfigMap>(&reply.object_json)
            .map(|config_map| ConfigValues::from(&config_map)),
        ConfigKind::Secret => serde_json::from_slice::<Secret>(&reply.object_json)
            .map(|secret| ConfigValues::from(&secret)),
        ConfigKind::PersistentVolumeClaim => {
            serde_json::from_slice::<PersistentVolume>(&reply.object_json).map(|volume| {
                let path = volume.spec.local.map(|l| l.path).unwrap_or_default();
                ConfigValues([(VOLUME_PATH_KEY.to_owned(), path.into_bytes())].into())
            })
        }
    };
    match values {
        Ok(values) => Some(Fetched::Found(Arc::new(values))),
        Err(error) => {
            tracing::warn!(kind = key.kind.as_str(), namespace = %key.namespace, name = %key.name, %error, "undecodable pod config");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_renewed_after_four_fifths_of_their_life() {
        assert_eq!(renewal_time(1000, 2000), 1800);
        assert_eq!(renewal_time(0, 365 * 86_400), 292 * 86_400);
    }

    #[test]
    fn an_interrupted_renewal_is_finished_or_undone() {
        let dir = tempfile::tempdir().expect("dir");
        let path = |name: &str| dir.path().join(name);
        let read = |name: &str| std::fs::read_to_string(path(name)).ok();
        for (name, text) in [("node.key", "old key"), ("node.crt", "old cert")] {
            std::fs::write(path(name), text).expect("write");
        }
        // Only a new key: the certificate never came, the old pair stays.
        std::fs::write(path("node.key.new"), "new key").expect("write");
        finish_renewal(dir.path()).expect("finish");
        assert_eq!(
            (read("node.key"), read("node.crt"), read("node.key.new")),
            (Some("old key".into()), Some("old cert".into()), None)
        );
        // Both: both replace the old ones.
        std::fs::write(path("node.key.new"), "new key").expect("write");
        std::fs::write(path("node.crt.new"), "new cert").expect("write");
        finish_renewal(dir.path()).expect("finish");
        assert_eq!(
            (read("node.key"), read("node.crt")),
            (Some("new key".into()), Some("new cert".into()))
        );
        assert!(read("node.key.new").is_none() && read("node.crt.new").is_none());
    }

    #[test]
    fn tokens_are_replaced_after_four_fifths_of_their_life_and_at_least_daily() {
        assert_eq!(token_refresh_after(3607), Duration::from_secs(2885));
        assert_eq!(token_refresh_after(600), Duration::from_secs(480));
        assert_eq!(
            token_refresh_after(7 * 24 * 3600),
            Duration::from_secs(24 * 3600)
        );
        assert_eq!(token_refresh_after(0), Duration::ZERO);
    }
}
