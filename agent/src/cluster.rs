//! The agent's typed view of the cluster's Services, EndpointSlices and Nodes, kept
//! current one watch event at a time. Each object is parsed once, when its event arrives
//! ([`ClusterObject`] is what the watch keeps); a Service or EndpointSlice change recomputes
//! that one Service's datapath ports and DNS records, and hands on only what differs
//! ([`Update::Changes`]); a Node change recomputes every Service only when what the
//! services depend on ([`NodeView`]) changed, which heartbeats do not. A new snapshot
//! (the first one, or a resync after the control plane's history ran out) is handed on
//! whole ([`Update::Resync`]).

use std::{
    cell::Cell,
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::Arc,
    time::Instant,
};

use berth_api::{
    agent::agent_client::AgentClient,
    core::{Node as ApiNode, Service as ApiService},
    discovery::EndpointSlice,
    meta::ObjectMeta,
};
use berth_watch::{Change, Consumer, Objects, WatchObject, Watched};
use prometheus::IntCounterVec;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::{
    datapath::{Node, Service, ServiceSet},
    dns::Records,
    endpoints::{Endpoints, Subset},
    services::{self, KeptService, NodeView},
};

thread_local! {
    /// Objects decoded from watch events on this thread: one per event, whatever the
    /// number of objects held. The unit tests check it; per thread, so tests running
    /// side by side do not count each other's.
    static DECODED: Cell<u64> = const { Cell::new(0) };
}

/// Objects decoded on this thread so far.
pub fn objects_decoded() -> u64 {
    DECODED.get()
}

/// One object of the Services watch, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterObject {
    Service(Arc<KeptService>),
    /// One EndpointSlice: the Service it belongs to (`namespace/name`) and its endpoints.
    EndpointSlice {
        service: Box<str>,
        subset: Arc<Subset>,
    },
    Node(Arc<ApiNode>),
}

/// Keeps of a Node's metadata only what the agent reads: its name. The rest (field
/// managers, labels, annotations) would be most of what the Nodes hold.
fn slim(metadata: &mut ObjectMeta) {
    *metadata = ObjectMeta {
        name: std::mem::take(&mut metadata.name),
        namespace: std::mem::take(&mut metadata.namespace),
        ..ObjectMeta::default()
    };
}

fn key_of(metadata: &ObjectMeta) -> String {
    format!("{}/{}", metadata.namespace, metadata.name)
}

impl WatchObject for ClusterObject {
    fn decode(kind: &str, json: &[u8]) -> Option<(String, Self)> {
        DECODED.set(DECODED.get() + 1);
        let undecodable = |error: serde_json::Error| {
            tracing::warn!(kind, %error, "undecodable object in the Services watch");
        };
        let (metadata, object) = match kind {
            "Service" => {
                let service: ApiService = serde_json::from_slice(json).map_err(undecodable).ok()?;
                let kept = KeptService::from(&service);
                (service.metadata, Self::Service(Arc::new(kept)))
            }
            // Kept in the agent's own form: the API object's strings are most of its size,
            // and of its metadata only the name (in the key) and the Service's are read.
            // A slice that names no Service serves none (Kubernetes' proxies skip it too).
            "EndpointSlice" => {
                let slice: EndpointSlice =
                    serde_json::from_slice(json).map_err(undecodable).ok()?;
                let service = slice.service_name()?;
                let object = Self::EndpointSlice {
                    service: format!("{}/{service}", slice.metadata.namespace).into(),
                    subset: Arc::new(Subset::from(&slice)),
                };
                (slice.metadata, object)
            }
            "Node" => {
                let mut node: ApiNode = serde_json::from_slice(json).map_err(undecodable).ok()?;
                slim(&mut node.metadata);
                (node.metadata.clone(), Self::Node(Arc::new(node)))
            }
            _ => return None,
        };
        let key = (!metadata.name.is_empty()).then(|| key_of(&metadata))?;
        Some((key, object))
    }

    // A complete Node batch after a gap then reports only the Nodes that changed, not
    // every Node (each a recomputation of the node view).
    fn same(&self, other: &Self) -> bool {
        self == other
    }
}

/// What the Services watch delivers: a whole snapshot, or one object's change (its key
/// is `Kind namespace/name`; `None`: deleted), with when it arrived.
#[derive(Debug)]
pub enum ClusterEvent {
    Snapshot(BTreeMap<String, ClusterObject>),
    Changed {
        key: String,
        object: Option<ClusterObject>,
    },
}

impl ClusterEvent {
    /// The event for one change of the watch's objects.
    fn of(objects: &Objects<ClusterObject>, change: Change<ClusterObject>) -> ClusterEvent {
        match change {
            // Only here is the whole map copied (its objects are shared, not cloned).
            Change::Snapshot { .. } => ClusterEvent::Snapshot(objects.by_key.clone()),
            Change::Applied { key } => {
                let object = objects.by_key.get(&key).cloned();
                ClusterEvent::Changed { key, object }
            }
            Change::Deleted { key, .. } => ClusterEvent::Changed { key, object: None },
        }
    }
}

struct Deliver(mpsc::Sender<(ClusterEvent, Instant)>, IntCounterVec);

impl Consumer<ClusterObject> for Deliver {
    async fn changed(
        &mut self,
        objects: &Objects<ClusterObject>,
        change: Change<ClusterObject>,
    ) -> bool {
        let received = Instant::now();
        self.0
            .send((ClusterEvent::of(objects, change), received))
            .await
            .is_ok()
    }

    fn wanted(&self) -> bool {
        !self.0.is_closed()
    }

    fn stream_started(&mut self, resumed: bool) {
        crate::controlplane::count_stream(&self.1, "services", resumed);
    }
}

/// Follows the Services watch (Services, EndpointSlices, Nodes) for as long as `updates` has
/// a receiver; its streams are counted in `streams`.
pub async fn follow(
    client: AgentClient<Channel>,
    updates: mpsc::Sender<(ClusterEvent, Instant)>,
    streams: IntCounterVec,
) {
    berth_watch::run(
        client,
        Watched::ServiceSlices,
        &mut Deliver(updates, streams),
    )
    .await;
}

/// What a watch event changes for the datapath and DNS.
#[derive(Debug)]
pub enum Update {
    /// Everything, from a new snapshot: a full apply and new zones.
    Resync { set: ServiceSet, records: Records },
    Changes {
        /// Datapath services (one per Service port) to write, by name; `None`: gone.
        services: BTreeMap<String, Option<Service>>,
        /// Each changed Service's DNS records before and after.
        dns: Vec<(Records, Records)>,
        /// The datapath's nodes, when they changed.
        nodes: Option<Vec<Node>>,
    },
}

/// The typed objects and what was computed from them.
#[derive(Debug, Default)]
pub struct ClusterState {
    me: String,
    domain: String,
    services: BTreeMap<String, Arc<KeptService>>,
    /// Each Service's endpoints, from its slices.
    endpoints: BTreeMap<String, Endpoints>,
    /// The Service of each slice (`namespace/name` of both): where a deleted slice was.
    slice_services: HashMap<Box<str>, Box<str>>,
    nodes: BTreeMap<String, Arc<ApiNode>>,
    view: NodeView,
    /// How many times one Service's ports were computed (the unit tests check it). The
    /// ports are not kept: the datapath keeps what it wrote, and a change computes the
    /// Service's ports before and after (a few microseconds) rather than holding 10,000
    /// Services' backends twice.
    computed: Cell<u64>,
}

impl ClusterState {
    /// The state of node `me`, whose DNS answers for `domain`.
    pub fn new(me: &str, domain: &str) -> ClusterState {
        ClusterState {
            me: me.to_owned(),
            domain: domain.to_owned(),
            ..ClusterState::default()
        }
    }

    pub fn nodes(&self) -> impl Iterator<Item = &ApiNode> {
        self.nodes.values().map(|node| node.as_ref())
    }

    /// Every datapath service (before the readiness overlay).
    pub fn service_set(&self) -> ServiceSet {
        ServiceSet {
            services: self
                .services
                .keys()
                .flat_map(|name| self.compute(name))
                .collect(),
            nodes: self.view.nodes.clone(),
        }
    }

    /// The datapath services with a backend at one of `addresses`: the ports of the
    /// Services with an endpoint there.
    pub fn services_at(&self, addresses: &BTreeSet<Ipv4Addr>) -> Vec<Service> {
        self.endpoints
            .iter()
            .filter(|(_, endpoints)| {
                endpoints.subsets.iter().any(|subset| {
                    subset
                        .addresses
                        .iter()
                        .chain(&subset.not_ready_addresses)
                        .any(|address| addresses.contains(&address.ip))
                })
            })
            .flat_map(|(name, _)| self.compute(name))
            .filter(|service| {
                service
                    .backends
                    .iter()
                    .any(|backend| addresses.contains(&backend.addr))
            })
            .collect()
    }

    pub fn computed(&self) -> u64 {
        self.computed.get()
    }

    pub fn apply(&mut self, event: ClusterEvent) -> Update {
        match event {
            ClusterEvent::Snapshot(objects) => self.resync(objects),
            ClusterEvent::Changed { key, object } => self.change(&key, object),
        }
    }

    fn resync(&mut self, objects: BTreeMap<String, ClusterObject>) -> Update {
        self.services.clear();
        self.endpoints.clear();
        self.slice_services.clear();
        self.nodes.clear();
        for (key, object) in objects {
            let name = key.split_once(' ').map_or(key.as_str(), |(_, name)| name);
            match object {
                ClusterObject::Service(service) => {
                    self.services.insert(name.to_owned(), service);
                }
                ClusterObject::EndpointSlice { service, subset } => {
                    self.set_slice(name, Some((service, subset)));
                }
                ClusterObject::Node(node) => {
                    self.nodes.insert(name.to_owned(), node);
                }
            }
        }
        self.view = NodeView::new(self.nodes(), &self.me);
        self.log_skipped_nodes();
        let mut records = Records::new(&self.domain);
        for name in self.services.keys() {
            records.extend(self.records_of(name));
        }
        Update::Resync {
            set: self.service_set(),
            records,
        }
    }

    fn change(&mut self, key: &str, object: Option<ClusterObject>) -> Update {
        let (kind, name) = key.split_once(' ').unwrap_or(("", key));
        let mut services = BTreeMap::new();
        let mut dns = Vec::new();
        let mut nodes = None;
        match (kind, object) {
            ("Node", object) => {
                match object {
                    Some(ClusterObject::Node(node)) => self.nodes.insert(name.to_owned(), node),
                    _ => self.nodes.remove(name),
                };
                let view = NodeView::new(self.nodes(), &self.me);
                if view != self.view {
                    if view.nodes != self.view.nodes {
                        nodes = Some(view.nodes.clone());
                    }
                    let names: Vec<String> = self.services.keys().cloned().collect();
                    let old: Vec<Vec<Service>> =
                        names.iter().map(|name| self.compute(name)).collect();
                    self.view = view;
                    self.log_skipped_nodes();
                    for (name, old) in names.iter().zip(old) {
                        self.recompute(name, old, &mut services);
                    }
                }
            }
            (kind, object) => {
                // The Services whose endpoints or spec changed: a slice's (its old one's
                // too, if it moved to another), or the Service itself.
                let mut changed = Vec::new();
                let before: Vec<(Records, Vec<Service>)> = match (kind, object) {
                    ("EndpointSlice", object) => {
                        let slice = object.and_then(|object| match object {
                            ClusterObject::EndpointSlice { service, subset } => {
                                Some((service, subset))
                            }
                            _ => None,
                        });
                        changed.extend(self.slice_services.get(name).map(|s| s.to_string()));
                        if let Some((service, _)) = &slice
                            && !changed.iter().any(|s| **s == **service)
                        {
                            changed.push(service.to_string());
                        }
                        let before = changed.iter().map(|s| self.before(s)).collect();
                        self.set_slice(name, slice);
                        before
                    }
                    (_, object) => {
                        changed.push(name.to_owned());
                        let before = vec![self.before(name)];
                        match object {
                            Some(ClusterObject::Service(service)) => {
                                self.services.insert(name.to_owned(), service);
                            }
                            _ => {
                                self.services.remove(name);
                            }
                        }
                        before
                    }
                };
                for (service, (records, ports)) in changed.iter().zip(before) {
                    self.recompute(service, ports, &mut services);
                    let after = self.records_of(service);
                    if records != after {
                        dns.push((records, after));
                    }
                }
            }
        }
        Update::Changes {
            services,
            dns,
            nodes,
        }
    }

    /// Puts slice `name` (`namespace/name`) in its Service's endpoints, in place of what
    /// it held before, wherever that was (`None`: the slice is gone).
    fn set_slice(&mut self, name: &str, slice: Option<(Box<str>, Arc<Subset>)>) {
        let slice_name = name.split_once('/').map_or(name, |(_, name)| name);
        let moved_from = match &slice {
            Some((service, _)) => self
                .slice_services
                .insert(name.into(), service.clone())
                .filter(|old| old != service),
            None => self.slice_services.remove(name),
        };
        if let Some(old) = moved_from
            && let Some(endpoints) = self.endpoints.get_mut(&*old)
        {
            endpoints.set_slice(slice_name, None);
            if endpoints.is_empty() {
                self.endpoints.remove(&*old);
            }
        }
        if let Some((service, subset)) = slice {
            self.endpoints
                .entry(service.into())
                .or_default()
                .set_slice(slice_name, Some(subset));
        }
    }

    /// A Service's DNS records and datapath ports before a change.
    fn before(&self, name: &str) -> (Records, Vec<Service>) {
        (self.records_of(name), self.compute(name))
    }

    /// Computes one Service's ports again and adds what differs from `old` to `changes`.
    fn recompute(
        &self,
        name: &str,
        old: Vec<Service>,
        changes: &mut BTreeMap<String, Option<Service>>,
    ) {
        let new = self.compute(name);
        for port in &old {
            if !new.iter().any(|n| n.name == port.name) {
                changes.insert(port.name.clone(), None);
            }
        }
        for port in new {
            if !old.contains(&port) {
                changes.insert(port.name.clone(), Some(port));
            }
        }
    }

    /// One Service's datapath ports as the state holds it (none without the Service).
    fn compute(&self, name: &str) -> Vec<Service> {
        let Some(service) = self.services.get(name) else {
            return Vec::new();
        };
        self.computed.set(self.computed.get() + 1);
        let mut skipped = Vec::new();
        let ports =
            services::service_ports(service, self.endpoints.get(name), &self.view, &mut skipped);
        for skip in skipped {
            tracing::debug!(object = %skip.object, reason = %skip.reason, "not served");
        }
        ports
    }

    /// The DNS records of one Service as the state holds it (none without the Service).
    fn records_of(&self, name: &str) -> Records {
        match self.services.get(name) {
            Some(service) => Records::of_service(service, self.endpoints.get(name), &self.domain),
            None => Records::new(&self.domain),
        }
    }

    fn log_skipped_nodes(&self) {
        for skip in self.view.skipped() {
            tracing::debug!(object = %skip.object, reason = %skip.reason, "not served");
        }
    }
}

#[cfg(test)]
mod tests {
    use berth_api::agent::{WatchEvent, watch_event::Type};
    use berth_watch::{Step, WatchState};
    use serde_json::{Value, json};

    use super::*;

    fn event(type_: Type, kind: &str, revision: u64, object: Value) -> WatchEvent {
        WatchEvent {
            r#type: type_.into(),
            kind: kind.to_owned(),
            resource_version: revision.to_string(),
            object_json: object.to_string().into_bytes(),
            node_batch: Vec::new(),
        }
    }

    fn service(index: u32) -> Value {
        json!({
            "metadata": {"namespace": "default", "name": format!("web-{index}")},
            "spec": {
                "clusterIP": format!("198.19.{}.{}", index / 250, index % 250 + 1),
                "type": "NodePort",
                "ports": [{"name": "http", "port": 80, "nodePort": 30000 + index}],
            },
        })
    }

    /// Slice `slice` of Service `web-{index}`: `hosts` ready endpoints from `first`.
    fn endpoints_slice(index: u32, slice: u32, first: u32, hosts: u32) -> Value {
        let endpoints: Vec<Value> = (first..first + hosts)
            .map(|host| {
                json!({"addresses": [format!("198.18.1.{}", host + 2)], "nodeName": "n1",
                       "conditions": {"ready": true}})
            })
            .collect();
        json!({
            "metadata": {"namespace": "default", "name": format!("web-{index}-{slice}"),
                         "labels": {"kubernetes.io/service-name": format!("web-{index}")}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        })
    }

    fn endpoints(index: u32, hosts: u32) -> Value {
        endpoints_slice(index, 0, 0, hosts)
    }

    fn node(name: &str, address: &str, cidr: &str, load: u32) -> Value {
        json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr},
            // What a heartbeat changes: nothing the datapath uses.
            "status": {"addresses": [{"type": "InternalIP", "address": address}],
                       "allocatable": {"cpu": load.to_string()}},
        })
    }

    /// Feeds one event through the watch protocol and the state.
    fn feed(
        watch: &mut WatchState<ClusterObject>,
        state: &mut ClusterState,
        event: &WatchEvent,
    ) -> Option<Update> {
        match watch.event(event) {
            Step::Changed(change) => Some(state.apply(ClusterEvent::of(watch.live(), change))),
            _ => None,
        }
    }

    fn changed_services(update: Option<Update>) -> BTreeMap<String, Option<Service>> {
        match update {
            Some(Update::Changes { services, .. }) => services,
            other => panic!("changes expected: {other:?}"),
        }
    }

    #[test]
    fn each_event_is_parsed_once_and_recomputes_one_service() {
        const SERVICES: u32 = 200;
        let mut watch = WatchState::<ClusterObject>::default();
        let mut state = ClusterState::new("n1", "cluster.local");
        let decoded = objects_decoded();
        let _ = watch.request();
        let mut revision = 0;
        let mut next = || {
            revision += 1;
            revision
        };
        let nodes = [
            node("n1", "198.18.0.1", "198.18.1.0/24", 1),
            node("n2", "198.18.0.2", "198.18.2.0/24", 1),
        ];
        for object in nodes {
            feed(
                &mut watch,
                &mut state,
                &event(Type::Added, "Node", next(), object),
            );
        }
        for index in 0..SERVICES {
            feed(
                &mut watch,
                &mut state,
                &event(Type::Added, "Service", next(), service(index)),
            );
            feed(
                &mut watch,
                &mut state,
                &event(Type::Added, "EndpointSlice", next(), endpoints(index, 3)),
            );
        }
        let synced = event(Type::Synced, "", next(), Value::Null);
        let Some(Update::Resync { set, .. }) = feed(&mut watch, &mut state, &synced) else {
            panic!("a snapshot");
        };
        assert_eq!(set.services.len(), SERVICES as usize);
        assert_eq!(objects_decoded() - decoded, u64::from(2 + 2 * SERVICES));
        assert_eq!(state.computed(), u64::from(SERVICES));

        // One slice's change: one object parsed, one service computed (before and after),
        // its port handed on.
        let change = event(Type::Modified, "EndpointSlice", next(), endpoints(7, 4));
        let services = changed_services(feed(&mut watch, &mut state, &change));
        assert_eq!(objects_decoded() - decoded, u64::from(3 + 2 * SERVICES));
        assert_eq!(state.computed(), u64::from(SERVICES + 2));
        let names: Vec<&String> = services.keys().collect();
        assert_eq!(names, ["default/web-7:http"]);
        let backends = services["default/web-7:http"]
            .as_ref()
            .map(|s| s.backends.len());
        assert_eq!(backends, Some(4));

        // A heartbeat's Node change: nothing the services depend on.
        let heartbeat = event(
            Type::Modified,
            "Node",
            next(),
            node("n2", "198.18.0.2", "198.18.2.0/24", 2),
        );
        assert!(changed_services(feed(&mut watch, &mut state, &heartbeat)).is_empty());
        assert_eq!(state.computed(), u64::from(SERVICES + 2));

        // This node's address changes: every NodePort changes, every service is computed.
        let moved = event(
            Type::Modified,
            "Node",
            next(),
            node("n1", "198.18.0.9", "198.18.1.0/24", 1),
        );
        let services = changed_services(feed(&mut watch, &mut state, &moved));
        assert_eq!(services.len(), SERVICES as usize);
        assert_eq!(state.computed(), u64::from(3 * SERVICES + 2));

        // A deleted Service: its port goes, nothing else is computed.
        let deleted = event(Type::Deleted, "Service", next(), service(3));
        let services = changed_services(feed(&mut watch, &mut state, &deleted));
        assert_eq!(
            services.into_iter().collect::<Vec<_>>(),
            [("default/web-3:http".to_owned(), None)]
        );
        assert_eq!(state.computed(), u64::from(3 * SERVICES + 3));
    }

    /// The backends of the one port a change hands on.
    fn backends(update: Option<Update>) -> Vec<(Ipv4Addr, crate::datapath::BackendState)> {
        let services = changed_services(update);
        let [(_, Some(service))] = services.iter().collect::<Vec<_>>()[..] else {
            panic!("one changed port: {services:?}");
        };
        service.backends.iter().map(|b| (b.addr, b.state)).collect()
    }

    #[test]
    fn a_services_slices_add_up_and_each_changes_alone() {
        use crate::datapath::BackendState::{Active, Failed, Terminating};
        let mut watch = WatchState::<ClusterObject>::default();
        let mut state = ClusterState::new("n1", "cluster.local");
        let _ = watch.request();
        let mut revision = 0;
        let mut send = |type_, kind, object| {
            revision += 1;
            feed(
                &mut watch,
                &mut state,
                &event(type_, kind, revision, object),
            )
        };
        send(
            Type::Added,
            "Node",
            node("n1", "198.18.0.1", "198.18.1.0/24", 1),
        );
        send(Type::Added, "Service", service(1));
        send(Type::Added, "EndpointSlice", endpoints_slice(1, 0, 0, 2));
        let Some(Update::Resync { set, .. }) = send(Type::Synced, "", Value::Null) else {
            panic!("a snapshot");
        };
        assert_eq!(set.services[0].backends.len(), 2);

        // A second slice adds to the first.
        let added = send(Type::Added, "EndpointSlice", endpoints_slice(1, 1, 2, 2));
        let ip = |host: u8| Ipv4Addr::new(198, 18, 1, host + 2);
        assert_eq!(
            backends(added),
            [
                (ip(0), Active),
                (ip(1), Active),
                (ip(2), Active),
                (ip(3), Active)
            ]
        );

        // Conditions: not ready fails at once; terminating drains, serving or not; unset
        // ready is ready.
        let mut slice = endpoints_slice(1, 1, 2, 4);
        slice["endpoints"][0]["conditions"] = json!({"ready": false});
        slice["endpoints"][1]["conditions"] =
            json!({"ready": false, "serving": true, "terminating": true});
        slice["endpoints"][2]["conditions"] = json!({});
        slice["endpoints"][3]["conditions"] =
            json!({"ready": false, "serving": false, "terminating": true});
        let changed = send(Type::Modified, "EndpointSlice", slice);
        assert_eq!(
            backends(changed),
            [
                (ip(0), Active),
                (ip(1), Active),
                (ip(4), Active),
                (ip(2), Failed),
                (ip(3), Terminating),
                (ip(5), Terminating),
            ]
        );

        // The first slice deleted: the second's endpoints stay.
        let deleted = send(Type::Deleted, "EndpointSlice", endpoints_slice(1, 0, 0, 2));
        assert_eq!(
            backends(deleted),
            [
                (ip(4), Active),
                (ip(2), Failed),
                (ip(3), Terminating),
                (ip(5), Terminating)
            ]
        );

        // A slice without the Service's label serves nothing.
        let mut stray = endpoints_slice(1, 7, 9, 1);
        stray["metadata"]["labels"] = json!({});
        assert!(send(Type::Added, "EndpointSlice", stray).is_none());
    }

    #[test]
    fn dns_records_follow_one_service_at_a_time() {
        let mut watch = WatchState::<ClusterObject>::default();
        let mut state = ClusterState::new("n1", "cluster.local");
        let _ = watch.request();
        feed(
            &mut watch,
            &mut state,
            &event(Type::Added, "Service", 1, service(1)),
        );
        feed(
            &mut watch,
            &mut state,
            &event(Type::Synced, "", 2, Value::Null),
        );
        let change = event(Type::Added, "EndpointSlice", 3, endpoints(1, 2));
        let Some(Update::Changes { dns, .. }) = feed(&mut watch, &mut state, &change) else {
            panic!("changes expected");
        };
        // The ClusterIP's records stay; the two endpoints' reverse names come.
        let [(before, after)] = dns.as_slice() else {
            panic!("one service's records: {dns:?}");
        };
        assert_eq!(after.len(), before.len() + 2, "{before:?} / {after:?}");
    }
}
