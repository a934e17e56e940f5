//! The agents' gRPC API (berth.agent.v1): join with a bootstrap token, then mTLS with a
//! node certificate from the control plane's CA. The node a call acts for is read from
//! its certificate, so a node can only heartbeat as itself, see its own pods, read the
//! ConfigMaps and Secrets they use, and report status for pods bound to it.

use std::{net::Ipv4Addr, pin::Pin, sync::Arc, time::Duration};

use berth_api::{
    Resource as _,
    agent::{
        HeartbeatRequest, HeartbeatResponse, JoinRequest, JoinResponse, PodConfigRequest,
        PodConfigResponse, PodDeletion, PodDeletionAck, PodEventAck, PodEventReport, PodStatusAck,
        PodStatusReport, PodTokenRequest, PodTokenResponse, RenewCertificateRequest, WatchEvent,
        WatchRequest, agent_server, watch_event::Type,
    },
    core::Pod,
    kinds::{
        CONFIG_MAPS, ENDPOINT_SLICES, ENDPOINTS, NAMESPACES, NETWORK_POLICIES, NODES,
        PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES, PODS, SECRETS, SERVICE_ACCOUNTS, SERVICES,
    },
    selector::{FieldSelector, Selector},
    storage::{PersistentVolume, PersistentVolumeClaim},
    validation::check_dns_subdomain,
};
use futures_util::Stream;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use crate::{
    api::watch::{self, WatchOptions},
    metrics::Metrics,
    node_batches::{self, Follower, NodeBatches},
    objects::str_at,
    pki::{Pki, node_name_of_certificate},
    registry::{self, DeleteOptions, Registry, name_of, parse_resource_version},
    tokens::BootstrapTokens,
    usage::Usage,
    util,
};

pub struct AgentService {
    registry: Registry,
    metrics: Metrics,
    pki: Arc<Pki>,
    bootstrap: Arc<BootstrapTokens>,
    cluster_cidr: (Ipv4Addr, u8),
    usage: Usage,
    /// Joins allocate pod CIDRs one at a time, which keeps them distinct.
    join_lock: Mutex<Option<PodCidrs>>,
    /// How stale a Node's stored heartbeat may get before an unchanged status is written
    /// again (see `heartbeat`).
    status_refresh: Duration,
    /// Per node, the status its agent last reported as stored: while the agent keeps
    /// reporting the same and the stored heartbeat is fresh, a heartbeat needs neither a
    /// store read nor a write. Lost on restart, when the first heartbeats take the long way.
    confirmed: Mutex<std::collections::HashMap<String, ConfirmedStatus>>,
    /// A node whose agent heartbeated within this long is live: no other may join under
    /// its name.
    node_grace: Duration,
    /// Names no node may take: the control plane's own (its certificate's names).
    reserved_names: Vec<String>,
    /// Each Node's accepted certificate, refreshed from the store.
    known_nodes: Arc<KnownNodes>,
    /// Signs the ServiceAccount tokens projected into pods; None issues none.
    token_signer: Option<Arc<crate::satokens::TokenSigner>>,
    /// How long node certificates are valid.
    certificate_validity: Duration,
    /// The Nodes as agents read them, in batches shared by the agents' Services watches:
    /// started by the first watch that asks for them.
    node_batches: tokio::sync::OnceCell<Arc<NodeBatches>>,
}

struct ConfirmedStatus {
    /// The agent's `status_json`, byte for byte.
    reported: Vec<u8>,
    /// Unix seconds of the heartbeat time stored with it.
    stored_heartbeat: u64,
    resource_version: String,
}

impl AgentService {
    pub fn new(
        registry: Registry,
        metrics: Metrics,
        pki: Arc<Pki>,
        bootstrap: Arc<BootstrapTokens>,
        cluster_cidr: (Ipv4Addr, u8),
        usage: Usage,
        node_grace: Duration,
    ) -> Self {
        let known_nodes = Arc::new(KnownNodes::default());
        tokio::spawn(refresh_known_nodes(
            registry.clone(),
            Arc::downgrade(&known_nodes),
        ));
        Self {
            known_nodes,
            registry,
            metrics,
            pki,
            bootstrap,
            cluster_cidr,
            usage,
            join_lock: Mutex::new(None),
            // Four refreshes per grace period, as kubelet's 10 s status updates against
            // the node controller's 40 s grace: a missed write or two never looks like
            // a silent node.
            status_refresh: node_grace / 4,
            confirmed: Mutex::default(),
            node_grace,
            reserved_names: vec!["localhost".to_owned()],
            token_signer: None,
            certificate_validity: Duration::from_secs(365 * 86_400),
            node_batches: tokio::sync::OnceCell::new(),
        }
    }

    /// The node calling: the name in its client certificate, if that certificate is the
    /// one its Node accepts (a deleted Node's, or one replaced by a later join, is not).
    async fn identity<T>(&self, request: &Request<T>) -> Result<String, Status> {
        self.caller(request).await.map(|caller| caller.name)
    }

    /// [`Self::identity`], with the certificate's serial.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let der = request
            .peer_certs()
            .and_then(|certs| certs.first().cloned())
            .ok_or_else(|| {
                Status::unauthenticated("a node client certificate is required (call Join first)")
            })?;
        let name = node_name_of_certificate(&der).ok_or_else(|| {
            Status::unauthenticated("the client certificate is not a node's (call Join first)")
        })?;
        // TLS checked the validity when the connection was made; a connection may
        // outlive it.
        let expired = berth_api::identity::validity_of(&der)
            .is_none_or(|(_, not_after)| not_after <= util::unix_now() as i64);
        if expired {
            return Err(Status::unauthenticated(format!(
                "the certificate of node {name} has expired: the agent must renew it before expiry, or join again"
            )));
        }
        let serial = berth_api::identity::serial_of(&der);
        check_node_certificate(&self.registry, &self.known_nodes, &name, serial.as_deref()).await?;
        Ok(Caller { name, serial })
    }

    /// The pod range of `node`, from what joins handed out (read from the store the first
    /// time).
    async fn pod_cidr_of(&self, node: &str) -> Result<Option<crate::allocation::Cidr>, Status> {
        let mut allocated = self.join_lock.lock().await;
        let cidrs = self.known_pod_cidrs(&mut allocated).await?;
        Ok(cidrs
            .by_node
            .get(node)
            .and_then(|cidr| cidr.parse::<crate::allocation::Cidr>().ok()))
    }

    /// Refuses node addresses other nodes' traffic could not reach the node at: not
    /// IPv4, loopback, unspecified, multicast or broadcast.
    fn check_addresses(node: &str, reported: &Value) -> Result<(), Status> {
        let addresses = reported
            .get("addresses")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for address in addresses {
            let text = address["address"].as_str().unwrap_or_default();
            let refused = match text.parse::<Ipv4Addr>() {
                Err(_) => Some("not an IPv4 address"),
                Ok(ip) if ip.is_loopback() || ip.is_unspecified() => {
                    Some("a loopback or unspecified address")
                }
                Ok(ip) if ip.is_multicast() || ip.is_broadcast() => {
                    Some("a multicast or broadcast address")
                }
                Ok(_) => None,
            };
            if let Some(reason) = refused {
                return Err(Status::invalid_argument(format!(
                    "node {node} reports address {text:?}: {reason}"
                )));
            }
        }
        Ok(())
    }

    /// Node certificates are valid for `validity`.
    pub fn with_certificate_validity(mut self, validity: Duration) -> Self {
        self.certificate_validity = validity;
        self
    }

    /// Issues pods' ServiceAccount tokens signed by `signer`.
    pub fn with_token_signer(mut self, signer: Arc<crate::satokens::TokenSigner>) -> Self {
        self.token_signer = Some(signer);
        self
    }

    /// Also refuses joins under `names` (the control plane's server names), besides
    /// `localhost`.
    pub fn with_reserved_names(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.reserved_names.extend(names);
        self
    }

    /// Why a node may not join as `name`: a name of the control plane, or the name of a
    /// Node whose agent is heartbeating (a second machine must not take over its pods and
    /// its Service traffic).
    async fn refuse_join_name(&self, name: &str) -> Result<(), Status> {
        if self
            .reserved_names
            .iter()
            .any(|reserved| reserved.eq_ignore_ascii_case(name))
        {
            return Err(Status::invalid_argument(format!(
                "node_name {name:?} is a name of the control plane: a node cannot join under it"
            )));
        }
        let node = match self.registry.get(&NODES, "", name).await {
            Ok(node) => node,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(status(e)),
        };
        let heartbeat = node
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|c| {
                c.iter()
                    .find(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .and_then(|c| c["lastHeartbeatTime"].as_str())
            .and_then(util::parse_rfc3339);
        if let Some(at) = heartbeat {
            let age = util::unix_now().saturating_sub(at);
            if age < self.node_grace.as_secs() {
                return Err(Status::already_exists(format!(
                    "node {name} is live (its agent reported {age} s ago): another node cannot join under its name; delete the Node or wait until it is not ready"
                )));
            }
        }
        Ok(())
    }

    /// The pod ranges handed out. Read from the store once; afterwards joins keep the map
    /// current, so a join costs no listing of every node (thousands of nodes joining at
    /// once).
    async fn known_pod_cidrs<'a>(
        &self,
        allocated: &'a mut Option<PodCidrs>,
    ) -> Result<&'a mut PodCidrs, Status> {
        if allocated.is_none() {
            let mut cidrs = PodCidrs::default();
            for n in self.registry.list_all(&NODES).await.map_err(status)? {
                if let Some(cidr) = n.pointer("/spec/podCIDR").and_then(Value::as_str)
                    && !cidr.is_empty()
                {
                    cidrs.insert(name_of(&n), cidr);
                }
            }
            *allocated = Some(cidrs);
        }
        allocated
            .as_mut()
            .ok_or_else(|| Status::internal("pod ranges not loaded"))
    }

    /// A free /24 of the cluster range, or the node's own if it has one. Called under
    /// `join_lock`, which guards `allocated`.
    async fn pod_cidr_for(
        &self,
        node: &str,
        allocated: &mut Option<PodCidrs>,
    ) -> Result<String, Status> {
        let cidrs = self.known_pod_cidrs(allocated).await?;
        if let Some(existing) = cidrs.by_node.get(node) {
            return Ok(existing.clone());
        }
        let (base, len) = self.cluster_cidr;
        let base = u32::from(base);
        let subnets = 1u32 << (24u8.saturating_sub(len)).min(16);
        // From where the last search ended: scanning from the start made each of
        // thousands of joins in a row pass every range handed out before it.
        let from = cidrs.next.min(subnets);
        let (at, free) = (from..subnets)
            .chain(0..from)
            .map(|i| (i, format!("{}/24", Ipv4Addr::from(base + (i << 8)))))
            .find(|(_, c)| !cidrs.used.contains(c))
            .ok_or_else(|| {
                Status::resource_exhausted("the cluster CIDR has no free /24 for another node")
            })?;
        cidrs.next = at + 1;
        cidrs.insert(node, &free);
        Ok(free)
    }
}

/// Pod CIDRs handed out, by node and as a set. A deleted node's range stays reserved until
/// the control plane restarts (it is then read back from the Nodes that exist).
#[derive(Default)]
struct PodCidrs {
    by_node: std::collections::HashMap<String, String>,
    used: std::collections::HashSet<String>,
    /// Where the search for a free range starts: after the last one handed out.
    next: u32,
}

impl PodCidrs {
    fn insert(&mut self, node: &str, cidr: &str) {
        self.by_node.insert(node.to_owned(), cidr.to_owned());
        self.used.insert(cidr.to_owned());
    }
}

/// A registry error as the agent sees it: the gRPC code it acts on, the same message.
fn status(error: registry::Error) -> Status {
    use registry::Error as E;
    let message = error.to_string();
    match error {
        E::BadRequest(_) | E::Invalid { .. } => Status::invalid_argument(message),
        E::Forbidden(_) => Status::permission_denied(message),
        E::NotFound { .. } | E::KeyNotFound { .. } => Status::not_found(message),
        E::Conflict(_) | E::AlreadyExists(_) => Status::aborted(message),
        E::Expired(_) => Status::out_of_range(message),
        E::TooLarge(_) | E::Internal(_) => Status::internal(message),
        // The agent retries either; the code says whether waiting may help by itself.
        E::StoreUnavailable { no_space: true, .. } => Status::resource_exhausted(message),
        E::StoreUnavailable { .. } | E::TooManyRequests { .. } => Status::unavailable(message),
    }
}

/// The node name from the verified client certificate.
/// The annotation of a Node that holds the serial number of the one certificate its
/// agent may call with (the last one it joined with).
pub const CERTIFICATE_SERIAL_ANNOTATION: &str = "berth.io/certificate-serial";

/// How often the Nodes' recorded certificates are read again: how long a deleted Node's
/// certificate may still be accepted.
const KNOWN_NODES_REFRESH: Duration = Duration::from_secs(2);

/// Node name → the serial of the certificate it accepts (None: a Node that joined
/// before serials were recorded, which accepts any certificate with its name).
type KnownNodes = std::sync::RwLock<std::collections::HashMap<String, Option<String>>>;

fn recorded_serial(node: &Value) -> Option<String> {
    node.pointer("/metadata/annotations")
        .and_then(|a| a.get(CERTIFICATE_SERIAL_ANNOTATION))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Keeps `known` equal to the Nodes in the store, until the service holding it is gone.
async fn refresh_known_nodes(registry: Registry, known: std::sync::Weak<KnownNodes>) {
    loop {
        let listed = registry.list_all(&NODES).await;
        let Some(known) = known.upgrade() else {
            return;
        };
        if let Ok(nodes) = listed {
            let current = nodes
                .iter()
                .map(|n| (name_of(n).to_owned(), recorded_serial(n)))
                .collect();
            *known
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = current;
        }
        drop(known);
        tokio::time::sleep(KNOWN_NODES_REFRESH).await;
    }
}

/// Whether the node `name`'s certificate with `serial` is the one its Node accepts:
/// Err(why not) for a deleted Node or a replaced certificate.
async fn check_node_certificate(
    registry: &Registry,
    known: &KnownNodes,
    name: &str,
    serial: Option<&str>,
) -> Result<(), Status> {
    let cached = known
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(name)
        .cloned();
    // Not in the last listing: deleted, or joined since; the store says which.
    let recorded = match cached {
        Some(recorded) => recorded,
        None => match registry.get(&NODES, "", name).await {
            Ok(node) => {
                let recorded = recorded_serial(&node);
                known
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(name.to_owned(), recorded.clone());
                recorded
            }
            Err(e) if e.is_not_found() => {
                return Err(Status::unauthenticated(format!(
                    "node {name} no longer exists: its certificate is not accepted; the agent must join again"
                )));
            }
            Err(e) => return Err(status(e)),
        },
    };
    match recorded {
        Some(recorded) if serial != Some(recorded.as_str()) => Err(Status::unauthenticated(
            format!("this certificate of node {name} was replaced when the node joined again"),
        )),
        _ => Ok(()),
    }
}

/// A node calling, by its certificate.
struct Caller {
    name: String,
    serial: Option<String>,
}

/// A watch stream's state: its events, and whose it is, checked again as it runs so the
/// watch of a deleted node ends within seconds.
struct Watching {
    rx: tokio::sync::mpsc::Receiver<watch::WatchEvent>,
    /// Node batches to send first, and as they come (a watch with `node_batches`).
    first_nodes: Option<Arc<node_batches::Batch>>,
    nodes: Option<Follower>,
    caller: Caller,
    registry: Registry,
    known: Arc<KnownNodes>,
    check: tokio::time::Interval,
    ended: bool,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

impl AgentService {
    /// The volume bound to claim `name`, in place of the claim: what the agent of `node`
    /// mounts. A claim not bound yet, or bound to a volume on another node, is why the
    /// pod waits.
    async fn claimed_volume(&self, node: &str, name: &str, claim: Value) -> Result<Value, Status> {
        let claim: PersistentVolumeClaim =
            serde_json::from_value(claim).map_err(|e| Status::internal(e.to_string()))?;
        if claim.spec.volume_name.is_empty() {
            return Err(Status::failed_precondition(format!(
                "persistentvolumeclaim {name:?} is not bound yet"
            )));
        }
        let volume = self
            .registry
            .get(&PERSISTENT_VOLUMES, "", &claim.spec.volume_name)
            .await
            .map_err(status)?;
        if !is_on(&volume, node)? {
            return Err(Status::failed_precondition(format!(
                "persistentvolume {:?} of persistentvolumeclaim {name:?} is not on node {node}",
                claim.spec.volume_name
            )));
        }
        Ok(volume)
    }

    /// A volume on `node`: the agent asks whether a directory it keeps still has its
    /// volume (NotFound: the volume was deleted, the directory can go).
    async fn local_volume(
        &self,
        node: &str,
        name: &str,
    ) -> Result<Response<PodConfigResponse>, Status> {
        let volume = self
            .registry
            .get(&PERSISTENT_VOLUMES, "", name)
            .await
            .map_err(status)?;
        if !is_on(&volume, node)? {
            return Err(Status::permission_denied(format!(
                "persistentvolume {name:?} is not on node {node}"
            )));
        }
        config_reply(&volume)
    }

    /// A watch of every object of `kinds`, for the caller of `request`.
    async fn watch_all(
        &self,
        request: &Request<WatchRequest>,
        kinds: Vec<&'static berth_api::ResourceType>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = self.caller(request).await?;
        self.watch(
            caller,
            kinds,
            FieldSelector::default(),
            &request.get_ref().resource_version,
            None,
        )
        .await
    }

    /// A watch of `kinds` for `caller`; with `nodes`, the Node batches to send besides
    /// (the first of them before anything else).
    async fn watch(
        &self,
        caller: Caller,
        kinds: Vec<&'static berth_api::ResourceType>,
        fields: FieldSelector,
        resource_version: &str,
        nodes: Option<(Option<Arc<node_batches::Batch>>, Follower)>,
    ) -> Result<Response<EventStream>, Status> {
        let from = parse_resource_version(resource_version).map_err(status)?;
        // The Services watch: every agent lists everything. Not the pods watch, whose
        // nodes each list their own.
        let share_list = fields == FieldSelector::default();
        let options = WatchOptions {
            kinds,
            namespace: None,
            labels: Selector::default(),
            fields,
            from,
            bookmarks: true,
            synced_marker: from.is_none(),
            timeout: watch::default_timeout(),
            // Agents use Nodes for their pod ranges and addresses, never their heartbeats.
            skip_heartbeats: true,
            share_list,
            // Batched apart when the watch takes Node batches (then it has no Nodes).
            hold_nodes: Some(node_batches::NODE_HOLD),
        };
        let rx = match watch::open(&self.registry, &self.metrics, options).await {
            Ok(rx) => rx,
            // A resume point that was compacted: tell the agent to resync, in-band.
            Err(registry::Error::Expired(_)) => {
                let expired = WatchEvent {
                    r#type: Type::Expired.into(),
                    ..WatchEvent::default()
                };
                return Ok(Response::new(Box::pin(futures_util::stream::iter([Ok(
                    expired,
                )]))));
            }
            Err(e) => return Err(status(e)),
        };
        let (first_nodes, nodes) = nodes.unzip();
        let watching = Watching {
            rx,
            first_nodes: first_nodes.flatten(),
            nodes,
            caller,
            registry: self.registry.clone(),
            known: Arc::clone(&self.known_nodes),
            check: tokio::time::interval(KNOWN_NODES_REFRESH),
            ended: false,
        };
        let stream = futures_util::stream::unfold(watching, |mut w| async move {
            if w.ended {
                return None;
            }
            if let Some(batch) = w.first_nodes.take() {
                return Some((Ok(nodes_message(&batch)), w));
            }
            let event = loop {
                tokio::select! {
                    event = w.rx.recv() => break event?,
                    batch = next_batch(&mut w.nodes) => match batch {
                        Some(batch) => return Some((Ok(nodes_message(&batch)), w)),
                        // The control plane is stopping: the other events end too.
                        None => w.nodes = None,
                    },
                    _ = w.check.tick() => {
                        let checked = check_node_certificate(
                            &w.registry,
                            &w.known,
                            &w.caller.name,
                            w.caller.serial.as_deref(),
                        )
                        .await;
                        if let Err(refused) = checked {
                            w.ended = true;
                            return Some((Err(refused), w));
                        }
                    }
                }
            };
            let type_ = match event.type_ {
                "ADDED" => Type::Added,
                "MODIFIED" => Type::Modified,
                "DELETED" => Type::Deleted,
                "SYNCED" => Type::Synced,
                "BOOKMARK" => Type::Bookmark,
                _ => Type::Expired,
            };
            // Not `Value::pointer`: it allocates per path segment, and this runs for every
            // message to every agent (each join's Node goes to thousands of them).
            let resource_version = event
                .object
                .get("metadata")
                .and_then(|metadata| metadata.get("resourceVersion"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let object_json = if matches!(type_, Type::Added | Type::Modified | Type::Deleted) {
                event.object.json().to_vec()
            } else {
                Vec::new()
            };
            let message = WatchEvent {
                r#type: type_.into(),
                kind: event.kind.to_owned(),
                resource_version,
                object_json,
                node_batch: Vec::new(),
            };
            Some((Ok(message), w))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The next Node batch of a watch that takes them; never, for one that does not.
async fn next_batch(nodes: &mut Option<Follower>) -> Option<Arc<node_batches::Batch>> {
    match nodes {
        Some(follower) => follower.next().await,
        None => std::future::pending().await,
    }
}

/// A Node batch as the agent gets it: its encoding as it is, shared by every watch.
fn nodes_message(batch: &node_batches::Batch) -> WatchEvent {
    WatchEvent {
        r#type: Type::Nodes.into(),
        kind: NODES.kind.to_owned(),
        resource_version: batch.to.to_string(),
        node_batch: batch.encoded.clone(),
        ..WatchEvent::default()
    }
}

/// `object` as the answer to `GetPodConfig`.
fn config_reply(object: &Value) -> Result<Response<PodConfigResponse>, Status> {
    let object_json = serde_json::to_vec(object).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(PodConfigResponse { object_json }))
}

/// Whether the stored PersistentVolume `volume` is pinned to `node` by its node affinity.
fn is_on(volume: &Value, node: &str) -> Result<bool, Status> {
    let volume: PersistentVolume =
        serde_json::from_value(volume.clone()).map_err(|e| Status::internal(e.to_string()))?;
    Ok(volume
        .spec
        .node_affinity
        .as_ref()
        .is_some_and(|a| a.required.matches(node, &Default::default())))
}

/// A Node status as stored (the typed form fills in defaults) with its conditions'
/// heartbeat times left out: what a heartbeat changes when nothing else did. None if it
/// does not decode.
fn without_heartbeat_times(status: &Value) -> Option<berth_api::core::NodeStatus> {
    let mut status: berth_api::core::NodeStatus = serde_json::from_value(status.clone()).ok()?;
    for condition in &mut status.conditions {
        condition.last_heartbeat_time.clear();
    }
    Some(status)
}

#[tonic::async_trait]
impl agent_server::Agent for AgentService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let request = request.into_inner();
        if !self.bootstrap.accepts(&request.bootstrap_token) {
            return Err(Status::unauthenticated("invalid bootstrap token"));
        }
        check_dns_subdomain(&request.node_name)
            .map_err(|reason| Status::invalid_argument(format!("node_name: {reason}")))?;
        self.refuse_join_name(&request.node_name).await?;
        let (certificate_pem, serial) = self
            .pki
            .sign_node_csr(
                &request.csr_pem,
                &request.node_name,
                self.certificate_validity,
            )
            .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
        let mut allocated = self.join_lock.lock().await;
        let pod_cidr = self
            .pod_cidr_for(&request.node_name, &mut allocated)
            .await?;
        // The Node records the new certificate: from now on only it is accepted.
        let existing = self.registry.get(&NODES, "", &request.node_name).await;
        match existing {
            Ok(mut node) => {
                node["spec"]["podCIDR"] = json!(pod_cidr);
                node["metadata"]["annotations"][CERTIFICATE_SERIAL_ANNOTATION] = json!(serial);
                self.registry.update(&NODES, node).await.map_err(status)?;
            }
            Err(e) if e.is_not_found() => {
                let node = json!({"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": request.node_name,
                        "annotations": {CERTIFICATE_SERIAL_ANNOTATION: serial}},
                    "spec": {"podCIDR": pod_cidr}});
                let decoded = NODES
                    .decode(berth_api::Source::Value(node))
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                self.registry
                    .create(&NODES, decoded.object)
                    .await
                    .map_err(status)?;
            }
            Err(e) => return Err(status(e)),
        }
        self.known_nodes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(request.node_name.clone(), Some(serial));
        // A node that joins again may have been deleted and made anew without a status:
        // its next heartbeat must write one.
        self.confirmed.lock().await.remove(&request.node_name);
        tracing::info!(node = %request.node_name, %pod_cidr, "node joined");
        Ok(Response::new(JoinResponse {
            certificate_pem,
            ca_pem: self.pki.ca_cert_pem.clone(),
            pod_cidr,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let node = self.identity(&request).await?;
        let fresh = |stored_heartbeat: u64| {
            util::unix_now().saturating_sub(stored_heartbeat) < self.status_refresh.as_secs()
        };
        let confirmed = self.confirmed.lock().await.get(&node).and_then(|c| {
            (c.reported == request.get_ref().status_json && fresh(c.stored_heartbeat))
                .then(|| c.resource_version.clone())
        });
        if let Some(resource_version) = confirmed {
            if let Some(usage) = &request.get_ref().usage {
                self.usage.record(&node, usage, util::unix_now());
            }
            return Ok(Response::new(HeartbeatResponse { resource_version }));
        }
        let mut reported: Value = if request.get_ref().status_json.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(&request.get_ref().status_json)
                .map_err(|e| Status::invalid_argument(format!("status_json: {e}")))?
        };
        Self::check_addresses(&node, &reported)?;
        let current = self.registry.get(&NODES, "", &node).await.map_err(status)?;
        let now = util::rfc3339_now();
        let was_ready = current
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .filter(|c| c["status"] == "True")
            .and_then(|c| c.get("lastTransitionTime").cloned());
        // The server's clock stamps heartbeats, so node clock skew cannot fake liveness.
        reported["conditions"] = json!([{
            "type": "Ready", "status": "True", "reason": "AgentReady",
            "lastHeartbeatTime": now,
            "lastTransitionTime": was_ready.unwrap_or(json!(now)),
        }]);
        // Every Node write goes to every agent (they watch Nodes for pod ranges and
        // addresses): an unchanged status is written again only when its heartbeat gets
        // stale, not on every heartbeat, so 5,000 agents heartbeating every 2 s do not
        // turn into 2,500 writes a second, each sent to 5,000 agents.
        let stored_heartbeat = current
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .and_then(|c| c["lastHeartbeatTime"].as_str())
            .and_then(util::parse_rfc3339);
        let unchanged = without_heartbeat_times(&current["status"])
            .is_some_and(|stored| Some(stored) == without_heartbeat_times(&reported));
        let (stored, stored_heartbeat) = match stored_heartbeat {
            Some(at) if fresh(at) && unchanged => (current, at),
            _ => (
                self.registry
                    .update_status(&NODES, "", &node, json!({"status": reported}))
                    .await
                    .map_err(status)?,
                util::unix_now(),
            ),
        };
        // After the status write: figures of a node that is not there are not kept.
        if let Some(usage) = &request.get_ref().usage {
            self.usage.record(&node, usage, util::unix_now());
        }
        let resource_version = stored["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.confirmed.lock().await.insert(
            node,
            ConfirmedStatus {
                reported: request.into_inner().status_json,
                stored_heartbeat,
                resource_version: resource_version.clone(),
            },
        );
        Ok(Response::new(HeartbeatResponse { resource_version }))
    }

    type WatchPodsStream = EventStream;

    async fn watch_pods(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = self.caller(&request).await?;
        let fields = FieldSelector::parse(&format!("spec.nodeName={}", caller.name))
            .map_err(|e| Status::internal(e.to_string()))?;
        self.watch(
            caller,
            vec![&PODS],
            fields,
            &request.get_ref().resource_version,
            None,
        )
        .await
    }

    type WatchServicesStream = EventStream;

    async fn watch_services(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<EventStream>, Status> {
        // Nodes too: agents place endpoints on nodes by their pod ranges and send
        // north-south flows to other nodes' addresses. Agents ask for EndpointSlices;
        // the simulated nodes (and older agents) still read Endpoints.
        let endpoints = if request.get_ref().endpoint_slices {
            &ENDPOINT_SLICES
        } else {
            &ENDPOINTS
        };
        if !request.get_ref().node_batches {
            return self
                .watch_all(&request, vec![&SERVICES, endpoints, &NODES])
                .await;
        }
        let caller = self.caller(&request).await?;
        let WatchRequest {
            resource_version,
            nodes_resource_version,
            ..
        } = request.into_inner();
        // A snapshot gets every Node; a resumed watch the changes since its last batch.
        let resume = if resource_version.is_empty() {
            None
        } else {
            parse_resource_version(&nodes_resource_version).map_err(status)?
        };
        let feed = self
            .node_batches
            .get_or_try_init(|| NodeBatches::start(&self.registry))
            .await
            .map_err(status)?;
        let nodes = feed.follow(resume);
        self.watch(
            caller,
            vec![&SERVICES, endpoints],
            FieldSelector::default(),
            &resource_version,
            Some(nodes),
        )
        .await
    }

    type WatchPoliciesStream = EventStream;

    async fn watch_policies(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<EventStream>, Status> {
        // Every node's pods: a policy's peers are pods anywhere, known by their labels
        // and addresses.
        self.watch_all(&request, vec![&NETWORK_POLICIES, &NAMESPACES, &PODS])
            .await
    }

    async fn report_pod_status(
        &self,
        request: Request<PodStatusReport>,
    ) -> Result<Response<PodStatusAck>, Status> {
        let node = self.identity(&request).await?;
        let report = request.into_inner();
        let pod_status: Option<berth_api::core::PodStatus> =
            serde_json::from_slice(&report.status_json)
                .map_err(|e| Status::invalid_argument(format!("status_json: {e}")))?;
        // The Endpoints controller publishes what a node says its pods' addresses are:
        // only addresses of the node's own pod range, or it could draw any Service's
        // traffic anywhere.
        if let Some(ip) = pod_status
            .as_ref()
            .map(|status| status.pod_ip.as_str())
            .filter(|ip| !ip.is_empty())
        {
            let range = self.pod_cidr_of(&node).await?;
            let inside = ip
                .parse::<Ipv4Addr>()
                .is_ok_and(|ip| range.is_some_and(|cidr| cidr.contains(ip)));
            if !inside {
                return Err(Status::permission_denied(format!(
                    "podIP {ip} of pod {}/{} is outside node {node}'s pod range {}",
                    report.namespace,
                    report.name,
                    range.map_or_else(|| "(none)".to_owned(), |c| c.to_string())
                )));
            }
        }
        let revision = self
            .registry
            .report_pod_status(&node, &report.namespace, &report.name, pod_status)
            .await
            .map_err(status)?;
        Ok(Response::new(PodStatusAck {
            resource_version: revision.to_string(),
        }))
    }

    async fn confirm_pod_deletion(
        &self,
        request: Request<PodDeletion>,
    ) -> Result<Response<PodDeletionAck>, Status> {
        let node = self.identity(&request).await?;
        let deletion = request.into_inner();
        let pod = match self
            .registry
            .get(&PODS, &deletion.namespace, &deletion.name)
            .await
        {
            Ok(pod) => pod,
            // Gone already (forced, or confirmed before): nothing left to do.
            Err(e) if e.is_not_found() => {
                return Ok(Response::new(PodDeletionAck {}));
            }
            Err(e) => return Err(status(e)),
        };
        if pod.pointer("/metadata/uid").and_then(Value::as_str) != Some(deletion.uid.as_str()) {
            return Ok(Response::new(PodDeletionAck {}));
        }
        if pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node.as_str()) {
            return Err(Status::permission_denied(format!(
                "pod {}/{} is not bound to node {node}",
                deletion.namespace, deletion.name
            )));
        }
        // A node may only end deletions the control plane started.
        if str_at(&pod, "/metadata/deletionTimestamp").is_empty() {
            return Err(Status::failed_precondition(format!(
                "pod {}/{} is not being deleted",
                deletion.namespace, deletion.name
            )));
        }
        let options = DeleteOptions {
            uid: Some(deletion.uid),
            ..DeleteOptions::force()
        };
        match self
            .registry
            .delete(&PODS, &deletion.namespace, &deletion.name, &options)
            .await
        {
            Ok(_) => Ok(Response::new(PodDeletionAck {})),
            Err(e) if e.is_not_found() => Ok(Response::new(PodDeletionAck {})),
            Err(e) => Err(status(e)),
        }
    }

    async fn get_pod_config(
        &self,
        request: Request<PodConfigRequest>,
    ) -> Result<Response<PodConfigResponse>, Status> {
        let node = self.identity(&request).await?;
        let wanted = request.into_inner();
        if wanted.kind == PersistentVolume::KIND {
            return self.local_volume(&node, &wanted.name).await;
        }
        let rt = match wanted.kind.as_str() {
            "ConfigMap" => &CONFIG_MAPS,
            "Secret" => &SECRETS,
            "PersistentVolumeClaim" => &PERSISTENT_VOLUME_CLAIMS,
            other => {
                return Err(Status::invalid_argument(format!(
                    "kind {other:?}: a node reads ConfigMaps, Secrets, PersistentVolumeClaims and PersistentVolumes only"
                )));
            }
        };
        // The node authorizer's rule: only what a pod bound to this node references.
        let fields = FieldSelector::parse(&format!("spec.nodeName={node}"))
            .map_err(|e| Status::internal(e.to_string()))?;
        let (pods, _) = self
            .registry
            .list(
                &PODS,
                Some(&wanted.namespace),
                &Selector::default(),
                &fields,
            )
            .await
            .map_err(status)?;
        let used = pods.into_iter().any(|pod| {
            serde_json::from_value::<Pod>(pod).is_ok_and(|pod| {
                pod.spec
                    .config_references()
                    .contains(&(rt.kind, wanted.name.as_str()))
            })
        });
        if !used {
            return Err(Status::permission_denied(format!(
                "no pod bound to node {node} uses {} {}/{}",
                rt.kind, wanted.namespace, wanted.name
            )));
        }
        let mut object = self
            .registry
            .get(rt, &wanted.namespace, &wanted.name)
            .await
            .map_err(status)?;
        if rt == &PERSISTENT_VOLUME_CLAIMS {
            object = self.claimed_volume(&node, &wanted.name, object).await?;
        }
        config_reply(&object)
    }

    async fn renew_certificate(
        &self,
        request: Request<RenewCertificateRequest>,
    ) -> Result<Response<JoinResponse>, Status> {
        let node = self.identity(&request).await?;
        let (certificate_pem, serial) = self
            .pki
            .sign_node_csr(&request.get_ref().csr_pem, &node, self.certificate_validity)
            .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
        // Serialized with joins: the Node's recorded certificate is changed by both.
        let _joining = self.join_lock.lock().await;
        let mut stored = self.registry.get(&NODES, "", &node).await.map_err(status)?;
        let pod_cidr = str_at(&stored, "/spec/podCIDR").to_owned();
        stored["metadata"]["annotations"][CERTIFICATE_SERIAL_ANNOTATION] = json!(serial);
        self.registry.update(&NODES, stored).await.map_err(status)?;
        self.known_nodes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(node.clone(), Some(serial));
        tracing::info!(%node, "node certificate renewed");
        Ok(Response::new(JoinResponse {
            certificate_pem,
            ca_pem: self.pki.ca_cert_pem.clone(),
            pod_cidr,
        }))
    }

    async fn request_pod_token(
        &self,
        request: Request<PodTokenRequest>,
    ) -> Result<Response<PodTokenResponse>, Status> {
        use crate::satokens::ObjectClaim;
        let node = self.identity(&request).await?;
        let wanted = request.into_inner();
        let signer = self.token_signer.as_ref().ok_or_else(|| {
            Status::unavailable("this control plane issues no ServiceAccount tokens")
        })?;
        let pod = self
            .registry
            .get(&PODS, &wanted.namespace, &wanted.pod_name)
            .await
            .map_err(status)?;
        // The node authorizer's rule: a token only for a pod of this node, as it is now.
        if str_at(&pod, "/spec/nodeName") != node || str_at(&pod, "/metadata/uid") != wanted.pod_uid
        {
            return Err(Status::permission_denied(format!(
                "pod {}/{} (uid {}) is not bound to node {node}",
                wanted.namespace, wanted.pod_name, wanted.pod_uid
            )));
        }
        let account_name = match str_at(&pod, "/spec/serviceAccountName") {
            "" => berth_api::accounts::DEFAULT_SERVICE_ACCOUNT,
            name => name,
        };
        let account = self
            .registry
            .get(&SERVICE_ACCOUNTS, &wanted.namespace, account_name)
            .await
            .map_err(status)?;
        let audience = if wanted.audience.is_empty() {
            berth_api::accounts::API_AUDIENCE.to_owned()
        } else {
            wanted.audience
        };
        let asked = (wanted.expiration_seconds != 0).then_some(wanted.expiration_seconds);
        let (token, expires) = signer.grant(
            &wanted.namespace,
            ObjectClaim {
                name: account_name.to_owned(),
                uid: str_at(&account, "/metadata/uid").to_owned(),
            },
            Some(ObjectClaim {
                name: wanted.pod_name,
                uid: wanted.pod_uid,
            }),
            vec![audience],
            util::unix_now(),
            crate::satokens::lifetime(asked),
        );
        Ok(Response::new(PodTokenResponse {
            token,
            expiration_unix: expires,
        }))
    }

    async fn record_pod_event(
        &self,
        request: Request<PodEventReport>,
    ) -> Result<Response<PodEventAck>, Status> {
        let node = self.identity(&request).await?;
        let report = request.into_inner();
        if !matches!(report.r#type.as_str(), "Normal" | "Warning") {
            return Err(Status::invalid_argument(format!(
                "type {:?}: an event is Normal or Warning",
                report.r#type
            )));
        }
        let pod = self
            .registry
            .get(&PODS, &report.namespace, &report.name)
            .await
            .map_err(status)?;
        if pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node.as_str()) {
            return Err(Status::permission_denied(format!(
                "pod {}/{} is not bound to node {node}",
                report.namespace, report.name
            )));
        }
        if pod.pointer("/metadata/uid").and_then(Value::as_str) == Some(report.uid.as_str()) {
            self.registry
                .record_event_from(
                    &pod,
                    &report.reason,
                    &report.message,
                    &report.r#type,
                    ("berth-agent", &node),
                )
                .await;
        }
        Ok(Response::new(PodEventAck {}))
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn registry_errors_reach_the_agent_as_the_grpc_code_it_acts_on() {
        use registry::Error as E;
        let cases = [
            (E::not_found("Pod", "web"), Code::NotFound),
            (E::KeyNotFound { key: "/k".into() }, Code::NotFound),
            (E::Conflict("stale".into()), Code::Aborted),
            (E::AlreadyExists("there".into()), Code::Aborted),
            (E::invalid("Pod", "web", Vec::new()), Code::InvalidArgument),
            (E::bad_request("bad"), Code::InvalidArgument),
            (E::Forbidden("not yours".into()), Code::PermissionDenied),
            (E::Expired("compacted".into()), Code::OutOfRange),
            (E::internal("broken"), Code::Internal),
            (
                E::StoreUnavailable {
                    message: "disk full".into(),
                    no_space: true,
                },
                Code::ResourceExhausted,
            ),
            (
                E::StoreUnavailable {
                    message: "i/o error".into(),
                    no_space: false,
                },
                Code::Unavailable,
            ),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            let status = status(error);
            assert_eq!((status.code(), status.message()), (code, message.as_str()));
        }
    }
}
