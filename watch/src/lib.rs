//! berth-watch: the client side of the agent API's watches (`WatchPods`,
//! `WatchServices`, `WatchPolicies`), written once for the agent and the simulated nodes.
//!
//! A watch resumes from the last revision it saw; when the control plane's history no
//! longer reaches back that far (EXPIRED) it starts over from a snapshot. A snapshot is
//! collected aside and swapped in only at SYNCED, so a consumer never sees a partial view,
//! and while the control plane is unreachable it keeps what it has. Reconnects back off
//! (200 ms doubling to 5 s) with jitter, so a thousand nodes do not come back in step.
//!
//! The Services watch asks for Nodes as batches (`node_batches`): the control plane
//! gathers Node changes for a moment and sends each batch, encoded once, to every agent,
//! with only what agents read of a Node ([`NodeRecord`]); a batch's Nodes reach the
//! consumer as one change each, like the other kinds' events. They resume from a
//! revision of their own (`nodes_resource_version`).
//!
//! [`WatchState`] is the protocol without the network (tested on hand-made events);
//! [`run`] drives it over a gRPC client and hands every change to a [`Consumer`].

use std::{
    collections::{BTreeMap, btree_map::Entry},
    future::Future,
    hash::{BuildHasher as _, Hasher as _, RandomState},
    time::Duration,
};

use berth_api::agent::{
    NodeBatch, NodeRecord, WatchEvent, WatchRequest, agent_client::AgentClient, watch_event::Type,
};
use prost::Message as _;
use serde_json::{Value, json};
use tonic::transport::Channel;

/// Which watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    /// The pods bound to this node.
    Pods,
    /// All Services, Endpoints and Nodes.
    Services,
    /// All Services, EndpointSlices and Nodes: what the agent's datapath and DNS use.
    ServiceSlices,
    /// All NetworkPolicies, Namespaces and Pods.
    Policies,
}

/// What a watch keeps of an object, decoded from an event's JSON.
pub trait WatchObject: Sized + Send + Sync {
    /// The object's `namespace/name` (namespace empty for cluster-scoped kinds) and what
    /// is kept of it, from an event's kind and JSON; `None` for JSON that is not an
    /// object with a name (or not of a kind this type keeps).
    fn decode(kind: &str, json: &[u8]) -> Option<(String, Self)>;

    /// A Node as a batch carries it: by default, the record as a Node's JSON (what it
    /// holds of the Node: name, pod range, addresses) through [`Self::decode`].
    fn from_node(record: &NodeRecord) -> Option<Self> {
        Self::decode("Node", &node_json(record)).map(|(_, object)| object)
    }

    /// Whether two objects are the same to the consumer: a complete batch that replaces
    /// the Nodes of a live view reports only those that are not. By default none are
    /// (every Node is reported).
    fn same(&self, _other: &Self) -> bool {
        false
    }
}

/// A Node batch's record as a Node's JSON.
pub fn node_json(record: &NodeRecord) -> Vec<u8> {
    let addresses: Vec<Value> = record
        .addresses
        .iter()
        .map(|a| json!({"type": a.r#type, "address": a.address}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": record.name},
        "spec": {"podCIDR": record.pod_cidr},
        "status": {"addresses": addresses},
    })
    .to_string()
    .into_bytes()
}

/// The whole object, as the agent keeps it.
impl WatchObject for Value {
    fn decode(_kind: &str, json: &[u8]) -> Option<(String, Self)> {
        let object: Value = serde_json::from_slice(json).ok()?;
        let name = object.pointer("/metadata/name")?.as_str()?;
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Some((format!("{namespace}/{name}"), object))
    }

    fn same(&self, other: &Self) -> bool {
        self == other
    }
}

/// The keys of Nodes in [`Objects`]: `Node /name`, from the first to just past the last.
const NODE_KEYS_FROM: &str = "Node /";
const NODE_KEYS_TO: &str = "Node 0";

/// Objects by `Kind namespace/name`, kept current by a watch.
#[derive(Debug, Clone, PartialEq)]
pub struct Objects<T = Value> {
    pub by_key: BTreeMap<String, T>,
}

impl<T> Default for Objects<T> {
    fn default() -> Self {
        Self {
            by_key: BTreeMap::new(),
        }
    }
}

impl Objects<Value> {
    pub fn of_kind<U: serde::de::DeserializeOwned>(&self, kind: &str) -> Vec<U> {
        let prefix = format!("{kind} ");
        self.by_key
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .filter_map(|(_, value)| serde_json::from_value(value.clone()).ok())
            .collect()
    }
}

/// What an event changed in the objects a watch holds.
#[derive(Debug, PartialEq)]
pub enum Change<T> {
    /// A complete snapshot replaced the objects: the first one, or (`resync`) one that
    /// replaced an earlier view because the history it would have resumed from was gone.
    Snapshot { resync: bool },
    /// The object under this key was added or modified; it is in the objects.
    Applied { key: String },
    /// The object under this key was deleted: its last state.
    Deleted { key: String, object: T },
}

/// What the driver does after an event.
#[derive(Debug, PartialEq)]
pub enum Step<T> {
    Changed(Change<T>),
    /// Several objects changed (a batch of Nodes), each once.
    ChangedMany(Vec<Change<T>>),
    Nothing,
    /// History is gone: end this stream and watch again from a snapshot.
    StartOver,
}

/// The watch protocol's state between events: where to resume from, the objects
/// delivered, and a snapshot being collected.
#[derive(Debug)]
pub struct WatchState<T> {
    resource_version: String,
    /// Of the last Node batch (see the module's documentation).
    nodes_resource_version: String,
    live: Objects<T>,
    /// Objects of a snapshot being received; swapped in at SYNCED.
    pending: Option<Objects<T>>,
    snapshots: usize,
}

impl<T> Default for WatchState<T> {
    fn default() -> Self {
        Self {
            resource_version: String::new(),
            nodes_resource_version: String::new(),
            live: Objects::default(),
            pending: None,
            snapshots: 0,
        }
    }
}

impl<T: WatchObject> WatchState<T> {
    /// The request for the next stream: resume from the last revision, or (with none) a
    /// snapshot, collected aside while the objects delivered so far stay as they are.
    pub fn request(&mut self) -> WatchRequest {
        if self.resource_version.is_empty() {
            self.pending = Some(Objects::default());
        }
        WatchRequest {
            resource_version: self.resource_version.clone(),
            nodes_resource_version: self.nodes_resource_version.clone(),
            ..WatchRequest::default()
        }
    }

    /// The objects as delivered: complete snapshots and the changes after them.
    pub fn live(&self) -> &Objects<T> {
        &self.live
    }

    pub fn resource_version(&self) -> &str {
        &self.resource_version
    }

    pub fn event(&mut self, event: &WatchEvent) -> Step<T> {
        if event.r#type() == Type::Nodes {
            return self.nodes(event);
        }
        if !event.resource_version.is_empty() {
            self.resource_version.clone_from(&event.resource_version);
        }
        let kind = event.r#type();
        match kind {
            Type::Added | Type::Modified | Type::Deleted => {
                let Some((name, object)) = T::decode(&event.kind, &event.object_json) else {
                    tracing::warn!(kind = event.kind, "undecodable object in watch");
                    return Step::Nothing;
                };
                let key = format!("{} {name}", event.kind);
                match &mut self.pending {
                    Some(snapshot) => {
                        if kind == Type::Deleted {
                            snapshot.by_key.remove(&key);
                        } else {
                            snapshot.by_key.insert(key, object);
                        }
                        Step::Nothing
                    }
                    None if kind == Type::Deleted => {
                        self.live.by_key.remove(&key);
                        Step::Changed(Change::Deleted { key, object })
                    }
                    None => {
                        self.live.by_key.insert(key.clone(), object);
                        Step::Changed(Change::Applied { key })
                    }
                }
            }
            Type::Synced => match self.pending.take() {
                Some(snapshot) => {
                    self.live = snapshot;
                    self.snapshots += 1;
                    Step::Changed(Change::Snapshot {
                        resync: self.snapshots > 1,
                    })
                }
                None => Step::Nothing,
            },
            Type::Expired => {
                // Start over from a snapshot, keeping the live objects meanwhile.
                self.resource_version.clear();
                Step::StartOver
            }
            Type::Bookmark | Type::Unspecified | Type::Nodes => Step::Nothing,
        }
    }

    /// A batch of Node changes: into the snapshot being collected, or into the live
    /// objects, one change per Node.
    fn nodes(&mut self, event: &WatchEvent) -> Step<T> {
        let Ok(batch) = NodeBatch::decode(event.node_batch.as_slice()) else {
            // Nodes would be missing from here on: start over from a snapshot.
            tracing::warn!("undecodable Node batch in watch; starting over");
            self.resource_version.clear();
            self.nodes_resource_version.clear();
            return Step::StartOver;
        };
        self.nodes_resource_version
            .clone_from(&event.resource_version);
        let collecting = self.pending.is_some();
        let objects = self.pending.as_mut().unwrap_or(&mut self.live);
        let mut changes = Vec::new();
        // A complete batch replaces every Node: those it does not list are gone. Each
        // agent gets every Node of the cluster this way when it starts, and every batch
        // goes to every agent, so a record costs one look-up here.
        let mut unlisted = if batch.complete {
            let mut nodes = objects.by_key.split_off(NODE_KEYS_FROM);
            let mut after = nodes.split_off(NODE_KEYS_TO);
            objects.by_key.append(&mut after);
            nodes
        } else {
            BTreeMap::new()
        };
        for record in &batch.nodes {
            let key = format!("{NODE_KEYS_FROM}{}", record.name);
            if record.deleted {
                if let Some(object) = objects.by_key.remove(&key) {
                    changes.push(Change::Deleted { key, object });
                }
                continue;
            }
            let Some(object) = T::from_node(record) else {
                tracing::warn!(node = %record.name, "undecodable Node in a batch");
                continue;
            };
            let held = if batch.complete {
                unlisted.remove(&key)
            } else {
                None
            };
            match objects.by_key.entry(key) {
                Entry::Occupied(mut entry) => {
                    let same = entry.get().same(&object);
                    entry.insert(object);
                    if !same {
                        changes.push(Change::Applied {
                            key: entry.key().clone(),
                        });
                    }
                }
                Entry::Vacant(entry) => {
                    let same = held.is_some_and(|held| held.same(&object));
                    let key = (!same).then(|| entry.key().clone());
                    entry.insert(object);
                    if let Some(key) = key {
                        changes.push(Change::Applied { key });
                    }
                }
            }
        }
        for (key, object) in unlisted {
            changes.push(Change::Deleted { key, object });
        }
        if collecting || changes.is_empty() {
            Step::Nothing
        } else {
            Step::ChangedMany(changes)
        }
    }

    /// The stream ended. A snapshot cut off half-way is started over: resuming after its
    /// last object would bring changes but never the SYNCED that completes it.
    pub fn ended(&mut self) {
        if self.pending.take().is_some() {
            self.resource_version.clear();
        }
    }
}

/// Where a watch's changes go.
pub trait Consumer<T>: Send {
    /// Called after every change with all the objects the watch now holds; `false` ends
    /// the watch.
    fn changed(
        &mut self,
        objects: &Objects<T>,
        change: Change<T>,
    ) -> impl Future<Output = bool> + Send;

    /// Whether the watch is still wanted, asked before every (re)connect.
    fn wanted(&self) -> bool {
        true
    }

    /// A stream started: `resumed` when from the last revision seen, otherwise from a
    /// snapshot (the first one, or a resync when the history was gone).
    fn stream_started(&mut self, _resumed: bool) {}
}

/// Reconnect delays: 200 ms doubling to 5 s, each drawn from its upper half.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    fn delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (ceiling * 2).min(Self::MAX);
        jittered(ceiling, RandomState::new().build_hasher().finish())
    }
}

/// A delay in [ceiling/2, ceiling] chosen by `random`.
fn jittered(ceiling: Duration, random: u64) -> Duration {
    let half = ceiling / 2;
    let span = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
    half + Duration::from_micros(random % span.saturating_add(1))
}

/// Runs a watch until its consumer stops it (returns `false` or is no longer wanted).
/// Until the first snapshot is complete the consumer hears nothing; while the control
/// plane is unreachable it hears nothing either and keeps what it has.
pub async fn run<T, C>(mut client: AgentClient<Channel>, which: Watched, consumer: &mut C)
where
    T: WatchObject,
    C: Consumer<T>,
{
    // Big enough for a complete Node batch of tens of thousands of Nodes.
    client = client.max_decoding_message_size(64 << 20);
    let mut state = WatchState::<T>::default();
    let mut backoff = Backoff::new();
    loop {
        if !consumer.wanted() {
            return;
        }
        let mut request = state.request();
        request.endpoint_slices = which == Watched::ServiceSlices;
        request.node_batches = matches!(which, Watched::Services | Watched::ServiceSlices);
        let resumed = !request.resource_version.is_empty();
        let response = match which {
            Watched::Pods => client.watch_pods(request).await,
            Watched::Services | Watched::ServiceSlices => client.watch_services(request).await,
            Watched::Policies => client.watch_policies(request).await,
        };
        let mut stream = match response {
            Ok(response) => {
                consumer.stream_started(resumed);
                response.into_inner()
            }
            Err(status) => {
                let delay = backoff.delay();
                tracing::warn!(?which, %status, "watch failed; retrying in {delay:?}");
                state.ended();
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        loop {
            let event = match stream.message().await {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(status) => {
                    tracing::warn!(?which, %status, "watch stream broke; resuming");
                    break;
                }
            };
            backoff.reset();
            match state.event(&event) {
                Step::Changed(change) => {
                    if !consumer.changed(state.live(), change).await {
                        return;
                    }
                }
                Step::ChangedMany(changes) => {
                    for change in changes {
                        if !consumer.changed(state.live(), change).await {
                            return;
                        }
                    }
                }
                Step::Nothing => {}
                Step::StartOver => break,
            }
        }
        state.ended();
        tokio::time::sleep(backoff.delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(kind: Type, rv: &str, object: Option<Value>) -> WatchEvent {
        WatchEvent {
            r#type: kind.into(),
            kind: "Pod".to_owned(),
            resource_version: rv.to_owned(),
            object_json: object
                .map(|o| o.to_string().into_bytes())
                .unwrap_or_default(),
            node_batch: Vec::new(),
        }
    }

    fn pod(name: &str) -> Value {
        json!({"metadata": {"namespace": "default", "name": name}})
    }

    fn keys(state: &WatchState<Value>) -> Vec<&str> {
        state.live().by_key.keys().map(String::as_str).collect()
    }

    fn applied(key: &str) -> Step<Value> {
        Step::Changed(Change::Applied {
            key: key.to_owned(),
        })
    }

    /// A state that has received the snapshot `[a]` at revision 5.
    fn synced() -> WatchState<Value> {
        let mut state = WatchState::default();
        assert_eq!(state.request().resource_version, "");
        assert_eq!(
            state.event(&event(Type::Added, "4", Some(pod("a")))),
            Step::Nothing
        );
        assert_eq!(
            state.event(&event(Type::Synced, "5", None)),
            Step::Changed(Change::Snapshot { resync: false })
        );
        state
    }

    #[test]
    fn nothing_is_delivered_before_the_snapshot_is_complete() {
        let mut state = WatchState::<Value>::default();
        state.request();
        assert_eq!(
            state.event(&event(Type::Added, "3", Some(pod("a")))),
            Step::Nothing
        );
        assert_eq!(
            state.event(&event(Type::Added, "4", Some(pod("b")))),
            Step::Nothing
        );
        assert!(state.live().by_key.is_empty());
        assert_eq!(
            state.event(&event(Type::Synced, "5", None)),
            Step::Changed(Change::Snapshot { resync: false })
        );
        assert_eq!(keys(&state), ["Pod default/a", "Pod default/b"]);
    }

    #[test]
    fn changes_after_the_snapshot_are_delivered_one_by_one() {
        let mut state = synced();
        assert_eq!(
            state.event(&event(Type::Added, "6", Some(pod("b")))),
            applied("Pod default/b")
        );
        assert_eq!(
            state.event(&event(Type::Deleted, "7", Some(pod("a")))),
            Step::Changed(Change::Deleted {
                key: "Pod default/a".to_owned(),
                object: pod("a"),
            })
        );
        assert_eq!(keys(&state), ["Pod default/b"]);
    }

    #[test]
    fn a_broken_stream_resumes_from_the_last_revision_bookmarks_included() {
        let mut state = synced();
        state.event(&event(Type::Added, "6", Some(pod("b"))));
        assert_eq!(
            state.event(&event(Type::Bookmark, "9", None)),
            Step::Nothing
        );
        state.ended();
        assert_eq!(state.request().resource_version, "9");
        // Resumed: changes apply to what was delivered, no snapshot in between.
        assert_eq!(
            state.event(&event(Type::Modified, "10", Some(pod("a")))),
            applied("Pod default/a")
        );
        assert_eq!(keys(&state), ["Pod default/a", "Pod default/b"]);
    }

    #[test]
    fn expired_history_swaps_in_a_fresh_snapshot_only_when_it_is_complete() {
        let mut state = synced();
        state.ended();
        state.request();
        assert_eq!(
            state.event(&event(Type::Expired, "", None)),
            Step::StartOver
        );
        state.ended();
        assert_eq!(state.request().resource_version, "");
        // The fresh snapshot no longer has `a`: until SYNCED the old view stays.
        assert_eq!(
            state.event(&event(Type::Added, "20", Some(pod("c")))),
            Step::Nothing
        );
        assert_eq!(keys(&state), ["Pod default/a"]);
        assert_eq!(
            state.event(&event(Type::Synced, "21", None)),
            Step::Changed(Change::Snapshot { resync: true })
        );
        assert_eq!(keys(&state), ["Pod default/c"]);
        assert_eq!(state.resource_version(), "21");
    }

    #[test]
    fn a_snapshot_cut_off_half_way_starts_over() {
        let mut state = WatchState::<Value>::default();
        state.request();
        state.event(&event(Type::Added, "3", Some(pod("a"))));
        state.ended();
        assert_eq!(state.request().resource_version, "");
        assert_eq!(
            state.event(&event(Type::Synced, "5", None)),
            Step::Changed(Change::Snapshot { resync: false })
        );
        assert!(
            state.live().by_key.is_empty(),
            "the cut-off snapshot's objects are dropped"
        );
    }

    #[test]
    fn undecodable_objects_are_skipped() {
        let mut state = synced();
        let mut broken = event(Type::Added, "6", None);
        broken.object_json = b"{not json".to_vec();
        assert_eq!(state.event(&broken), Step::Nothing);
        assert_eq!(
            state.event(&event(Type::Added, "7", Some(json!({"metadata": {}})))),
            Step::Nothing
        );
        assert_eq!(keys(&state), ["Pod default/a"]);
        assert_eq!(state.resource_version(), "7");
    }

    fn nodes(rv: &str, complete: bool, records: Vec<NodeRecord>) -> WatchEvent {
        WatchEvent {
            r#type: Type::Nodes.into(),
            kind: "Node".to_owned(),
            resource_version: rv.to_owned(),
            node_batch: NodeBatch {
                complete,
                nodes: records,
            }
            .encode_to_vec(),
            ..WatchEvent::default()
        }
    }

    fn node(name: &str, address: &str) -> NodeRecord {
        NodeRecord {
            name: name.to_owned(),
            pod_cidr: "10.244.0.0/24".to_owned(),
            addresses: vec![berth_api::agent::NodeAddress {
                r#type: "InternalIP".to_owned(),
                address: address.to_owned(),
            }],
            deleted: false,
        }
    }

    fn gone(name: &str) -> NodeRecord {
        NodeRecord {
            name: name.to_owned(),
            deleted: true,
            ..NodeRecord::default()
        }
    }

    fn applied_keys(step: Step<Value>) -> Vec<String> {
        match step {
            Step::ChangedMany(changes) => changes
                .into_iter()
                .map(|change| match change {
                    Change::Applied { key } => key,
                    Change::Deleted { key, .. } => format!("-{key}"),
                    Change::Snapshot { .. } => "snapshot".to_owned(),
                })
                .collect(),
            other => panic!("not several changes: {other:?}"),
        }
    }

    #[test]
    fn node_batches_are_nodes_resumed_from_their_own_revision() {
        let mut state = WatchState::<Value>::default();
        state.request();
        // The complete batch of a snapshot goes into it, as the other kinds' objects.
        assert_eq!(
            state.event(&nodes("7", true, vec![node("n1", "198.18.0.1")])),
            Step::Nothing
        );
        state.event(&event(Type::Added, "4", Some(pod("a"))));
        assert_eq!(
            state.event(&event(Type::Synced, "5", None)),
            Step::Changed(Change::Snapshot { resync: false })
        );
        assert_eq!(keys(&state), ["Node /n1", "Pod default/a"]);
        assert_eq!(
            state.live().by_key["Node /n1"],
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                   "spec": {"podCIDR": "10.244.0.0/24"},
                   "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.1"}]}})
        );
        // A batch: one change per Node.
        let step = state.event(&nodes(
            "9",
            false,
            vec![node("n2", "198.18.0.2"), gone("n1")],
        ));
        assert_eq!(applied_keys(step), ["Node /n2", "-Node /n1"]);
        state.ended();
        let request = state.request();
        assert_eq!(
            (
                request.resource_version.as_str(),
                request.nodes_resource_version.as_str()
            ),
            ("5", "9")
        );
        // A complete batch to a live view: only what differs, and the Nodes not in it go.
        let step = state.event(&nodes(
            "12",
            true,
            vec![node("n2", "198.18.0.2"), node("n3", "198.18.0.3")],
        ));
        assert_eq!(applied_keys(step), ["Node /n3"]);
        let step = state.event(&nodes("13", true, vec![node("n3", "198.18.0.3")]));
        assert_eq!(applied_keys(step), ["-Node /n2"]);
        assert_eq!(keys(&state), ["Node /n3", "Pod default/a"]);
        // Nothing new: no change at all.
        assert_eq!(
            state.event(&nodes("14", true, vec![node("n3", "198.18.0.3")])),
            Step::Nothing
        );
    }

    #[test]
    fn a_node_record_as_json_is_a_node_with_what_agents_read() {
        let node: berth_api::core::Node =
            serde_json::from_slice(&node_json(&node("n1", "198.18.0.1"))).expect("a Node");
        assert_eq!(node.metadata.name, "n1");
        assert_eq!(node.spec.pod_cidr, "10.244.0.0/24");
        let addresses = node.status.expect("a status").addresses;
        assert_eq!(
            (addresses[0].type_.as_str(), addresses[0].address.as_str()),
            ("InternalIP", "198.18.0.1")
        );
    }

    #[test]
    fn an_undecodable_node_batch_starts_over_from_a_snapshot() {
        let mut state = synced();
        let mut broken = nodes("6", false, Vec::new());
        broken.node_batch = b"\xff\xff".to_vec();
        assert_eq!(state.event(&broken), Step::StartOver);
        state.ended();
        let request = state.request();
        assert_eq!(
            (
                request.resource_version.as_str(),
                request.nodes_resource_version.as_str()
            ),
            ("", "")
        );
    }

    #[test]
    fn backoff_doubles_to_five_seconds_with_jitter_in_the_upper_half() {
        assert_eq!(
            jittered(Duration::from_millis(200), 0),
            Duration::from_millis(100)
        );
        assert_eq!(
            jittered(Duration::from_millis(200), 100_000),
            Duration::from_millis(200)
        );
        let mut backoff = Backoff::new();
        let mut ceiling = Backoff::FIRST;
        for _ in 0..8 {
            let delay = backoff.delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} for {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(Backoff::MAX);
        }
        assert_eq!(ceiling, Backoff::MAX);
        backoff.reset();
        assert!(backoff.delay() <= Backoff::FIRST);
    }
}
