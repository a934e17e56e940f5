//! Controllers in the kube-rs style: each is an idempotent `reconcile(object, snapshot,
//! ctx) -> Outcome` over the local cache that returns the writes it wants. The runtime
//! applies them through the registry, re-queues on conflicts, and waits for the cache
//! to reflect its writes before looking again, so a reconcile never acts twice on the
//! same stale state (the reason Kubernetes controllers need "expectations").
//!
//! Everything here is typed: the cache holds each object decoded once to its kind's
//! type, a reconciler reads the types of the kinds it looks at, and its writes are typed
//! objects the registry stores without decoding them again.

pub mod aggregation;
pub mod autoscaler;
mod cache;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod endpointslices;
pub mod events;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod gc;
pub mod index;
pub mod job;
pub mod loadbalancer;
pub mod namespace;
pub mod nodes;
pub mod placement;
pub mod quota;
pub mod replicaset;
pub mod scheduler;
pub mod serviceaccounts;
pub mod statefulset;
pub mod taints;
pub mod volumes;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use berth_api::{
    ResourceType,
    core::{ObjectReference, Pod},
    meta::{ObjectMeta, OwnerReference},
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};

pub use self::cache::{Cache, Change, Snapshot};
use crate::{
    objects::{Kind, Object},
    registry::{
        self, DeleteOptions, Registry,
        batch::{Binding, EventRecord},
    },
    store::Store,
    util,
};

/// A write a reconciler asks for. Updates carry the `resourceVersion` they were computed
/// from, so a write based on stale state fails with a conflict and is retried.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Create(Object),
    Update(Object),
    /// Only the object's status is written (the `/status` subresource).
    UpdateStatus(Object),
    Delete {
        rt: &'static ResourceType,
        namespace: String,
        name: String,
        /// Gone at once, skipping a pod's graceful termination.
        force: bool,
    },
    /// A pending pod bound to a node. The bindings of one pass are written together, in
    /// one transaction.
    Bind(Binding),
    /// Events of one pass are written together, similar ones aggregated (see
    /// [`aggregate`]).
    Event {
        involved: ObjectReference,
        reason: String,
        message: String,
        type_: &'static str,
    },
}

impl Write {
    pub fn create(object: impl Kind) -> Self {
        Self::Create(object.into_object())
    }

    pub fn update(object: impl Kind) -> Self {
        Self::Update(object.into_object())
    }

    pub fn update_status(object: impl Kind) -> Self {
        Self::UpdateStatus(object.into_object())
    }

    /// An Event about `object`.
    pub fn event<K: Kind>(object: &K, type_: &'static str, reason: &str, message: &str) -> Self {
        Self::Event {
            involved: reference(object),
            reason: reason.to_owned(),
            message: message.to_owned(),
            type_,
        }
    }

    /// Deletes `object` (gracefully, for a pod).
    pub fn delete<K: Kind>(object: &K) -> Self {
        Self::Delete {
            rt: K::resource_type(),
            namespace: object.meta().namespace.clone(),
            name: object.meta().name.clone(),
            force: false,
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub writes: Vec<Write>,
    /// Look again after this long even if nothing changes (time-based conditions).
    pub requeue_after: Option<Duration>,
}

impl Outcome {
    pub fn writes(writes: Vec<Write>) -> Self {
        Self {
            writes,
            requeue_after: None,
        }
    }
}

/// Where nodes keep provisioned volumes unless configured otherwise (the agent's default
/// too).
pub const DEFAULT_LOCAL_VOLUME_DIR: &str = "/var/lib/berth/volumes";

/// Timing knobs (tests shrink them) and the LoadBalancer pool.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A node whose last heartbeat is older than this is marked `Ready=Unknown`.
    pub node_grace: Duration,
    /// Everything is reconciled again this often, to heal missed mappings.
    pub resync: Duration,
    /// Where LoadBalancer Services get their addresses; None leaves them pending.
    pub load_balancer_pool: Option<crate::allocation::Cidr>,
    /// Unix seconds from which these controllers have been watching. Nodes are judged
    /// silent only from then on, so a control plane that was down itself gives every node
    /// a full grace period instead of evicting pods whose agents kept running (Kubernetes'
    /// node lifecycle controller does the same with its own observation times).
    pub observing_since: u64,
    /// How often each HorizontalPodAutoscaler is evaluated.
    pub autoscaler_sync: Duration,
    /// Scale-down stabilisation window of autoscalers that do not set one.
    pub downscale_stabilization: Duration,
    /// Where on a node the volumes provisioned for claims are made (each agent keeps
    /// them under its own `--local-volume-dir`, which must match).
    pub local_volume_dir: std::path::PathBuf,
    /// The cluster CA (PEM) each namespace's `kube-root-ca.crt` ConfigMap holds; None
    /// publishes none.
    pub root_ca_pem: Option<std::sync::Arc<str>>,
    /// How long an Event is kept after it last happened.
    pub event_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            node_grace: Duration::from_secs(40),
            resync: Duration::from_secs(60),
            load_balancer_pool: None,
            observing_since: 0,
            autoscaler_sync: Duration::from_secs(15),
            downscale_stabilization: Duration::from_secs(300),
            local_volume_dir: DEFAULT_LOCAL_VOLUME_DIR.into(),
            root_ca_pem: None,
            event_ttl: Duration::from_secs(3600),
        }
    }
}

pub struct Context {
    /// Unix seconds; passed in so reconcilers stay pure and tests deterministic.
    pub now: u64,
    pub settings: Settings,
}

pub trait Reconciler: Send + Sync {
    /// The kind whose objects `reconcile` is called for.
    type Object: Kind;

    fn name(&self) -> &'static str;
    /// Objects of the reconciled kind (namespace, name) to reconcile after `change`. The
    /// default maps a change of that kind to itself.
    fn affected(&self, change: &Change, snapshot: &Snapshot) -> Vec<(String, String)> {
        let _ = snapshot;
        if change.as_kind::<Self::Object>().is_some() {
            vec![change.key()]
        } else {
            Vec::new()
        }
    }
    /// `affected` over a batch of changes. The default asks about each change in turn; a
    /// reconciler whose answer may be "every object waiting for X" overrides it to look
    /// that up once per batch rather than once per change.
    fn affected_batch(&self, changes: &[Change], snapshot: &Snapshot) -> Vec<(String, String)> {
        changes
            .iter()
            .flat_map(|change| self.affected(change, snapshot))
            .collect()
    }
    fn reconcile(&self, object: &Self::Object, snapshot: &Snapshot, ctx: &Context) -> Outcome;
    /// Reconciles a batch of objects on one snapshot: one outcome per object, in order.
    /// The default reconciles each on its own. A reconciler whose decisions depend on the
    /// ones before it in the batch (the scheduler counts what it has just bound, the
    /// load balancer the addresses it has just given) overrides this and carries that
    /// state itself, like kube-scheduler's assume cache, so nothing waits for the store
    /// between two decisions and nobody copies the snapshot to record them.
    fn reconcile_batch(
        &self,
        objects: &[&Self::Object],
        snapshot: &Snapshot,
        ctx: &Context,
    ) -> Vec<Outcome> {
        objects
            .iter()
            .map(|object| self.reconcile(object, snapshot, ctx))
            .collect()
    }
}

/// A [`Reconciler`] of any kind, as a lane runs it: the runtime knows keys, the
/// reconciler its kind.
pub trait Controller: Send + Sync {
    fn name(&self) -> &'static str;
    fn kind(&self) -> &'static ResourceType;
    fn affected_batch(&self, changes: &[Change], snapshot: &Snapshot) -> Vec<(String, String)>;
    /// Reconciles the objects of `keys` the snapshot still has: their keys, and one
    /// outcome each.
    fn reconcile_keys(
        &self,
        keys: Vec<WorkKey>,
        snapshot: &Snapshot,
        ctx: &Context,
    ) -> (Vec<WorkKey>, Vec<Outcome>);
}

impl<R: Reconciler> Controller for R {
    fn name(&self) -> &'static str {
        Reconciler::name(self)
    }

    fn kind(&self) -> &'static ResourceType {
        R::Object::resource_type()
    }

    fn affected_batch(&self, changes: &[Change], snapshot: &Snapshot) -> Vec<(String, String)> {
        Reconciler::affected_batch(self, changes, snapshot)
    }

    fn reconcile_keys(
        &self,
        keys: Vec<WorkKey>,
        snapshot: &Snapshot,
        ctx: &Context,
    ) -> (Vec<WorkKey>, Vec<Outcome>) {
        let (keys, objects): (Vec<WorkKey>, Vec<&R::Object>) = keys
            .into_iter()
            .filter_map(|key| {
                let object = snapshot.get::<R::Object>(&key.1, &key.2)?;
                Some((key, object))
            })
            .unzip();
        if objects.is_empty() {
            return (keys, Vec::new());
        }
        let outcomes = self.reconcile_batch(&objects, snapshot, ctx);
        (keys, outcomes)
    }
}

/// The controller that owns an object.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().find(|r| r.controller)
}

/// The objects of kind `O` a change concerns, for a controller of `O` that owns objects
/// of kind `C`: the changed `O` itself, or the `O` controlling a changed `C`.
pub fn self_or_owner<O: Kind, C: Kind>(change: &Change) -> Vec<(String, String)> {
    if change.as_kind::<O>().is_some() {
        return vec![change.key()];
    }
    if let Some(owned) = change.as_kind::<C>()
        && let Some(owner) = controller_of(owned.meta())
        && owner.kind == O::KIND
    {
        return vec![(owned.meta().namespace.clone(), owner.name.clone())];
    }
    Vec::new()
}

/// The uid of the controller that owns an object.
pub fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    controller_of(meta).map(|owner| owner.uid.as_str())
}

/// What an Event names as its object.
pub fn reference<K: Kind>(object: &K) -> ObjectReference {
    let meta = object.meta();
    ObjectReference {
        api_version: K::api_version(),
        kind: K::KIND.to_owned(),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
    }
}

/// What an object a controller creates says of the controller that owns it.
pub fn owner_reference<K: Kind>(owner: &K) -> OwnerReference {
    let meta = owner.meta();
    OwnerReference {
        api_version: K::api_version(),
        kind: K::KIND.to_owned(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        controller: true,
    }
}

pub fn pod_is_terminal(pod: &Pod) -> bool {
    pod.is_terminal()
}

pub fn pod_is_terminating(pod: &Pod) -> bool {
    pod.is_terminating()
}

pub fn pod_is_ready(pod: &Pod) -> bool {
    pod.is_ready()
}

/// Runs the reconcilers until `shutdown` flips.
pub struct Controllers {
    tasks: Vec<JoinHandle<()>>,
}

/// Reconcilers that share one loop (see [`Controllers::all`]).
pub type Lane = Vec<Box<dyn Controller>>;

impl Controllers {
    /// Runs each lane as a loop of its own over one shared cache.
    pub async fn start(
        registry: Registry,
        store: Arc<dyn Store>,
        lanes: Vec<Lane>,
        mut settings: Settings,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, crate::store::StoreError> {
        settings.observing_since = util::unix_now();
        // Unbounded on purpose: a bound would make the cache's reflector wait for the
        // slowest lane, holding every other lane's view of the store behind it, and a
        // lane must see every change batch (dropping one would miss an object). The
        // batches are shared (`Arc`) with the cache, so a lagging lane holds references,
        // and the store's write rate, which the API's per-user limits bound, bounds them.
        let (senders, receivers): (Vec<_>, Vec<_>) =
            lanes.iter().map(|_| mpsc::unbounded_channel()).unzip();
        let cache = Cache::start(store, senders).await?;
        let tasks = lanes
            .into_iter()
            .zip(receivers)
            .map(|(reconcilers, rx)| {
                let runtime = Runtime {
                    registry: registry.clone(),
                    cache: Arc::clone(&cache),
                    reconcilers,
                    settings: settings.clone(),
                    requeue: BTreeMap::new(),
                    panics: BTreeMap::new(),
                };
                tokio::spawn(runtime.run(rx, shutdown.clone()))
            })
            .collect();
        Ok(Self { tasks })
    }

    pub async fn join(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Every controller Berth runs (the autoscaler reads the agents' load figures), in
    /// lanes. Each lane is one loop — a batch of changes, its reconciles on one snapshot,
    /// its writes, a wait for the cache to have them — and the lanes run side by side,
    /// like Kubernetes' controllers with their own work queues, so a pod turning ready
    /// reaches the Endpoints controller while thousands of pods are being created and
    /// bound. The scheduler stays in the ReplicaSets' loop: binding each round of new
    /// pods in one batch, with the next round's creations, makes few large group commits
    /// (in a loop of its own it bound pods as they trickled in, in many small commits,
    /// and scheduled fewer pods a second).
    pub fn all(usage: &crate::usage::Usage) -> Vec<Lane> {
        vec![
            vec![
                Box::new(endpoints::EndpointsController),
                Box::new(endpointslices::EndpointSliceController),
            ],
            vec![
                Box::new(deployment::DeploymentController),
                Box::new(replicaset::ReplicaSetController),
                Box::new(daemonset::DaemonSetController),
                Box::new(disruption::DisruptionController),
                Box::new(job::JobController),
                Box::new(cronjob::CronJobController),
                Box::new(statefulset::StatefulSetController),
                Box::new(scheduler::Scheduler),
                Box::new(nodes::NodeLifecycle),
                Box::new(taints::TaintManager),
                Box::new(loadbalancer::LoadBalancerController),
                Box::new(namespace::NamespaceController),
                Box::new(volumes::VolumeBinder),
                Box::new(quota::QuotaController),
                Box::new(serviceaccounts::ServiceAccountController),
                Box::new(serviceaccounts::RootCaPublisher),
                Box::new(events::EventExpiry),
                Box::new(volumes::VolumeReclaimer),
                Box::new(gc::GarbageCollector::<Pod>::new()),
                Box::new(gc::GarbageCollector::<berth_api::apps::ReplicaSet>::new()),
                Box::new(gc::GarbageCollector::<berth_api::batch::Job>::new()),
                Box::new(gc::GarbageCollector::<
                    berth_api::storage::PersistentVolumeClaim,
                >::new()),
                Box::new(gc::GarbageCollector::<berth_api::core::Endpoints>::new()),
                Box::new(gc::GarbageCollector::<berth_api::discovery::EndpointSlice>::new()),
                Box::new(autoscaler::Autoscaler::new(usage.clone())),
                Box::new(aggregation::AggregationController),
            ],
        ]
    }
}

/// A reconciler of the lane (its position) and the (namespace, name) of an object.
pub type WorkKey = (usize, String, String);

struct Runtime {
    registry: Registry,
    cache: Arc<Cache>,
    reconcilers: Lane,
    settings: Settings,
    requeue: BTreeMap<WorkKey, Instant>,
    /// Objects whose reconcile panicked, with how many times in a row: looked at again
    /// after a back-off that doubles each time.
    panics: BTreeMap<WorkKey, u32>,
}

/// The longest wait before an object whose reconcile keeps panicking is tried again.
const PANIC_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What came of one outcome's writes.
struct Applied {
    key: WorkKey,
    /// The highest revision written, 0 if none.
    written: u64,
    /// A write failed: the object is looked at again shortly, its events are dropped.
    failed: bool,
    events: Vec<EventRecord>,
    requeue_after: Option<Duration>,
}

/// Similar events of one pass (same namespace, kind of object, reason and type) past
/// the first this many become one Event with their count, as Kubernetes' event
/// aggregator does: scheduling a ReplicaSet's thousands of pods writes a few Scheduled
/// events, not one per pod.
const SIMILAR_EVENTS_KEPT: usize = 10;

/// Kubernetes' EventAggregator over one pass: each group of similar events keeps its
/// first [`SIMILAR_EVENTS_KEPT`] as they are; the rest are one event naming the last of
/// them, "(combined from similar events)", with their count.
pub fn aggregate(events: Vec<EventRecord>) -> Vec<EventRecord> {
    let mut seen: BTreeMap<(String, String, String, &'static str), usize> = BTreeMap::new();
    let mut combined: BTreeMap<(String, String, String, &'static str), EventRecord> =
        BTreeMap::new();
    let mut kept = Vec::new();
    for event in events {
        let similar = (
            event.involved.namespace.clone(),
            event.involved.kind.clone(),
            event.reason.clone(),
            event.type_,
        );
        let count = seen.entry(similar.clone()).or_default();
        *count += 1;
        if *count <= SIMILAR_EVENTS_KEPT {
            kept.push(event);
            continue;
        }
        let earlier = combined.get(&similar).map_or(0, |e| e.count);
        combined.insert(
            similar,
            EventRecord {
                message: format!("(combined from similar events): {}", event.message),
                count: earlier.saturating_add(event.count),
                ..event
            },
        );
    }
    kept.extend(combined.into_values());
    kept
}

impl Runtime {
    async fn run(
        mut self,
        mut changes: mpsc::UnboundedReceiver<Arc<Vec<Change>>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut next_resync = Instant::now() + self.settings.resync;
        loop {
            let wake_at = self
                .requeue
                .values()
                .min()
                .copied()
                .unwrap_or(next_resync)
                .min(next_resync);
            let mut batch: Vec<Change> = Vec::new();
            tokio::select! {
                received = changes.recv() => match received {
                    Some(received) => batch.extend(received.iter().cloned()),
                    None => return,
                },
                () = tokio::time::sleep_until(wake_at) => {}
                _ = shutdown.changed() => return,
            }
            while let Ok(more) = changes.try_recv() {
                batch.extend(more.iter().cloned());
            }
            let snapshot = self.cache.snapshot().await;
            let mut queue: BTreeSet<WorkKey> = BTreeSet::new();
            for (i, reconciler) in self.reconcilers.iter().enumerate() {
                for (ns, name) in reconciler.affected_batch(&batch, &snapshot) {
                    queue.insert((i, ns, name));
                }
            }
            let now = Instant::now();
            if now >= next_resync {
                next_resync = now + self.settings.resync;
                for (i, reconciler) in self.reconcilers.iter().enumerate() {
                    for object in snapshot.list_any(reconciler.kind(), None) {
                        queue.insert((i, object.namespace().to_owned(), object.name().to_owned()));
                    }
                }
            }
            let due: Vec<WorkKey> = self
                .requeue
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for key in due {
                self.requeue.remove(&key);
                queue.insert(key);
            }
            self.process(queue, snapshot).await;
        }
    }

    async fn process(&mut self, queue: BTreeSet<WorkKey>, snapshot: Arc<Snapshot>) {
        let ctx = Context {
            now: util::unix_now(),
            settings: self.settings.clone(),
        };
        // The queue is ordered by reconciler first, so each one's work is a contiguous
        // batch, planned on the same snapshot.
        let mut planned: Vec<(WorkKey, Outcome)> = Vec::new();
        let mut panicked: Vec<WorkKey> = Vec::new();
        let mut batch: Vec<WorkKey> = Vec::new();
        for key in queue {
            if batch.last().is_some_and(|last| last.0 != key.0) {
                let (outcomes, failed) =
                    self.reconcile_batch(std::mem::take(&mut batch), &snapshot, &ctx);
                planned.extend(outcomes);
                panicked.extend(failed);
            }
            batch.push(key);
        }
        let (outcomes, failed) = self.reconcile_batch(batch, &snapshot, &ctx);
        planned.extend(outcomes);
        panicked.extend(failed);
        for (key, _) in &planned {
            self.panics.remove(key);
        }
        for key in panicked {
            let times = self.panics.entry(key.clone()).or_default();
            *times = times.saturating_add(1);
            let delay = Duration::from_secs(1)
                .saturating_mul(1 << (*times - 1).min(16))
                .min(PANIC_BACKOFF_MAX);
            self.requeue_after(key, Some(delay));
        }
        // Let go of the snapshot before waiting for the writes: the cache copies its
        // whole map on its next change while anyone still holds the old one.
        drop(snapshot);
        // The pass's bindings go out in one transaction, beside the other writes.
        let mut bindings: Vec<(usize, Binding)> = Vec::new();
        for (at, (_, outcome)) in planned.iter_mut().enumerate() {
            for write in std::mem::take(&mut outcome.writes) {
                match write {
                    Write::Bind(binding) => bindings.push((at, binding)),
                    other => outcome.writes.push(other),
                }
            }
        }
        let (owners, bindings): (Vec<usize>, Vec<Binding>) = bindings.into_iter().unzip();
        // All writes at once: the store commits concurrent writes in groups.
        let this = &*self;
        let (bound, mut applied) = tokio::join!(
            async {
                if bindings.is_empty() {
                    Vec::new()
                } else {
                    this.registry.bind_many(&bindings).await
                }
            },
            futures_util::future::join_all(
                planned
                    .into_iter()
                    .map(|(key, outcome)| this.apply(key, outcome))
            )
        );
        for (at, result) in owners.into_iter().zip(bound) {
            let Some(applied) = applied.get_mut(at) else {
                continue;
            };
            match result {
                Ok(revision) => applied.written = applied.written.max(revision),
                Err(e) => {
                    self.log_failure(&applied.key, &e);
                    applied.failed = true;
                }
            }
        }
        let reconciles = self.registry.metrics().reconciles.clone();
        let mut written = 0;
        let mut events = Vec::new();
        for applied in applied {
            written = written.max(applied.written);
            let reconciler = self.reconcilers[applied.key.0].name();
            let result = if applied.failed { "error" } else { "success" };
            reconciles.with_label_values(&[reconciler, result]).inc();
            // Events only once the writes they report succeeded.
            let delay = if applied.failed {
                Some(Duration::from_millis(200))
            } else {
                events.extend(applied.events);
                applied.requeue_after
            };
            self.requeue_after(applied.key, delay);
        }
        // The events' commit and the cache catching up with the writes overlap.
        tokio::join!(self.record_events(events), async {
            if written > 0 {
                self.cache.wait_for(written).await;
            }
        });
    }

    /// Reconciles keys of one reconciler (objects gone from the snapshot are skipped);
    /// also the keys whose reconcile panicked. A panic is one object's problem (a value
    /// no one expected): it is caught, logged and counted, and the batch's other objects
    /// are reconciled one by one so they go on.
    fn reconcile_batch(
        &self,
        keys: Vec<WorkKey>,
        snapshot: &Snapshot,
        ctx: &Context,
    ) -> (Vec<(WorkKey, Outcome)>, Vec<WorkKey>) {
        let Some((i, _, _)) = keys.first() else {
            return (Vec::new(), Vec::new());
        };
        let reconciler = &self.reconcilers[*i];
        let started = std::time::Instant::now();
        let reconcile = |keys: Vec<WorkKey>| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                reconciler.reconcile_keys(keys, snapshot, ctx)
            }))
        };
        let mut panicked = Vec::new();
        let (keys, outcomes) = match reconcile(keys.clone()) {
            Ok(done) => done,
            Err(_) => {
                let (mut done_keys, mut done) = (Vec::new(), Vec::new());
                for key in keys {
                    match reconcile(vec![key.clone()]) {
                        Ok((k, o)) => {
                            done_keys.extend(k);
                            done.extend(o);
                        }
                        Err(payload) => {
                            let message = payload
                                .downcast_ref::<&str>()
                                .map(|m| (*m).to_owned())
                                .or_else(|| payload.downcast_ref::<String>().cloned())
                                .unwrap_or_default();
                            tracing::error!(controller = reconciler.name(), object = %format!("{}/{}", key.1, key.2), %message, "reconcile panicked; trying again later");
                            self.registry
                                .metrics()
                                .reconciles
                                .with_label_values(&[reconciler.name(), "panic"])
                                .inc();
                            panicked.push(key);
                        }
                    }
                }
                (done_keys, done)
            }
        };
        if keys.is_empty() {
            return (Vec::new(), panicked);
        }
        // A batch shares its setup (the scheduler's per-node sums), so each object is
        // charged an equal part of the whole: the histogram still counts one observation
        // per object, and its sum is the time spent.
        let each = started.elapsed().as_secs_f64() / keys.len() as f64;
        let histogram = self
            .registry
            .metrics()
            .reconcile_seconds
            .with_label_values(&[reconciler.name()]);
        for _ in &keys {
            histogram.observe(each);
        }
        if outcomes.len() != keys.len() {
            tracing::warn!(
                controller = reconciler.name(),
                "reconcile_batch returned {} outcomes for {} objects",
                outcomes.len(),
                keys.len()
            );
        }
        (keys.into_iter().zip(outcomes).collect(), panicked)
    }

    /// Writes an outcome's object writes (a kind's creations in one transaction); its
    /// events wait for the pass's end.
    async fn apply(&self, key: WorkKey, outcome: Outcome) -> Applied {
        let mut creations: Vec<(&'static ResourceType, Vec<Object>)> = Vec::new();
        let mut events = Vec::new();
        let mut writes = Vec::new();
        for write in outcome.writes {
            match write {
                Write::Create(object) => {
                    let rt = object.resource_type();
                    match creations.iter_mut().find(|(kind, _)| *kind == rt) {
                        Some((_, objects)) => objects.push(object),
                        None => creations.push((rt, vec![object])),
                    }
                }
                Write::Event {
                    involved,
                    reason,
                    message,
                    type_,
                } => events.push(EventRecord {
                    involved,
                    reason,
                    message,
                    type_,
                    count: 1,
                }),
                other => writes.push(other),
            }
        }
        let (created, others) = tokio::join!(
            futures_util::future::join_all(
                creations
                    .into_iter()
                    .map(|(rt, objects)| self.registry.create_many(rt, objects))
            ),
            futures_util::future::join_all(writes.into_iter().map(|w| self.execute(w)))
        );
        let mut applied = Applied {
            key,
            written: 0,
            failed: false,
            events,
            requeue_after: outcome.requeue_after,
        };
        for result in created.into_iter().chain(others) {
            match result {
                Ok(revision) => applied.written = applied.written.max(revision),
                Err(e) => {
                    self.log_failure(&applied.key, &e);
                    applied.failed = true;
                }
            }
        }
        applied
    }

    /// A conflict is expected (the write was planned on a stale snapshot) and retried
    /// quietly; anything else is worth a line.
    fn log_failure(&self, (i, ns, name): &WorkKey, error: &registry::Error) {
        if !error.is_conflict() {
            tracing::warn!(controller = self.reconcilers[*i].name(), object = %format!("{ns}/{name}"), "write failed: {error}");
        }
    }

    /// Writes a pass's events, similar ones aggregated, and counts the scheduler's
    /// verdicts among them as attempts.
    async fn record_events(&self, events: Vec<EventRecord>) {
        if events.is_empty() {
            return;
        }
        let metrics = self.registry.metrics();
        for event in &events {
            let result = match event.reason.as_str() {
                "Scheduled" => "scheduled",
                "FailedScheduling" => "unschedulable",
                _ => continue,
            };
            metrics
                .scheduling_attempts
                .with_label_values(&[result])
                .inc();
        }
        self.registry.record_events(aggregate(events)).await;
    }

    fn requeue_after(&mut self, key: WorkKey, delay: Option<Duration>) {
        if let Some(delay) = delay {
            let at = Instant::now() + delay;
            let entry = self.requeue.entry(key).or_insert(at);
            *entry = (*entry).min(at);
        }
    }

    /// Applies one write; returns the store revision it produced (0 if none).
    async fn execute(&self, write: Write) -> registry::Result<u64> {
        match write {
            Write::Create(object) => {
                self.registry
                    .create_many(object.resource_type(), vec![object])
                    .await
            }
            // The registry validates what it writes over the stored object.
            Write::Update(object) => self.registry.update_object(object).await,
            Write::UpdateStatus(object) => self.registry.update_status_object(object).await,
            Write::Delete {
                rt,
                namespace,
                name,
                force,
            } => {
                let options = if force {
                    DeleteOptions::force()
                } else {
                    DeleteOptions::default()
                };
                match self.registry.delete(rt, &namespace, &name, &options).await {
                    Ok(deleted) => Ok(registry::written_revision(&deleted)),
                    Err(e) if e.is_not_found() => Ok(0),
                    Err(e) => Err(e),
                }
            }
            Write::Bind(binding) => self
                .registry
                .bind_many(std::slice::from_ref(&binding))
                .await
                .pop()
                .unwrap_or(Ok(0)),
            Write::Event {
                involved,
                reason,
                message,
                type_,
            } => {
                self.record_events(vec![EventRecord {
                    involved,
                    reason,
                    message,
                    type_,
                    count: 1,
                }])
                .await;
                Ok(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Marks every ConfigMap it sees, and panics on the one named `bad`.
    struct PanicsOnBad;

    impl Reconciler for PanicsOnBad {
        type Object = berth_api::configuration::ConfigMap;

        fn name(&self) -> &'static str {
            "panics-on-bad"
        }

        fn affected(&self, change: &Change, _snapshot: &Snapshot) -> Vec<(String, String)> {
            match change.as_kind::<Self::Object>() {
                Some(_) if !change.deleted => vec![change.key()],
                _ => Vec::new(),
            }
        }

        fn reconcile(&self, map: &Self::Object, _snapshot: &Snapshot, _ctx: &Context) -> Outcome {
            assert_ne!(map.metadata.name, "bad", "a value no one expected");
            if map.metadata.annotations.contains_key("seen") {
                return Outcome::default();
            }
            let mut seen = map.clone();
            seen.metadata
                .annotations
                .insert("seen".into(), "yes".into());
            Outcome::writes(vec![Write::update(seen)])
        }
    }

    #[tokio::test]
    async fn a_panicking_reconcile_is_counted_and_retried_while_the_others_go_on() {
        let dir = tempfile::tempdir().expect("dir");
        let registry = Registry::for_tests(dir.path());
        let store = Arc::clone(registry.store());
        registry
            .ensure_namespace("default")
            .await
            .expect("namespace");
        for name in ["a", "bad", "c"] {
            let map = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "default"}, "data": {"k": "v"}});
            registry
                .create(&berth_api::kinds::CONFIG_MAPS, map)
                .await
                .expect("created");
        }
        let (_stop, shutdown) = watch::channel(false);
        let _controllers = Controllers::start(
            registry.clone(),
            store,
            vec![vec![Box::new(PanicsOnBad)]],
            Settings::default(),
            shutdown,
        )
        .await
        .expect("controllers");
        let panics = || {
            registry
                .metrics()
                .reconciles
                .with_label_values(&["panics-on-bad", "panic"])
                .get()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = futures_util::future::join_all(
                ["a", "c"]
                    .map(|name| registry.get(&berth_api::kinds::CONFIG_MAPS, "default", name)),
            )
            .await
            .into_iter()
            .all(|map| map.is_ok_and(|m| m["metadata"]["annotations"]["seen"] == "yes"));
            // Tried again after its back-off, and counted each time.
            if seen && panics() >= 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "seen: {seen}, panics: {}",
                panics()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn scheduled(pod: &str, namespace: &str) -> EventRecord {
        EventRecord {
            involved: ObjectReference {
                api_version: "v1".to_owned(),
                kind: "Pod".to_owned(),
                name: pod.to_owned(),
                namespace: namespace.to_owned(),
                uid: format!("uid-{pod}"),
            },
            reason: "Scheduled".to_owned(),
            message: format!("Successfully assigned {namespace}/{pod} to n1"),
            type_: "Normal",
            count: 1,
        }
    }

    #[test]
    fn similar_events_past_the_first_ten_become_one_with_their_count() {
        let mut events: Vec<EventRecord> = (0..25)
            .map(|i| scheduled(&format!("web-{i}"), "default"))
            .collect();
        events.push(scheduled("db-0", "other"));
        let mut failed = scheduled("web-25", "default");
        failed.reason = "FailedScheduling".to_owned();
        failed.type_ = "Warning";
        events.push(failed.clone());

        let written = aggregate(events);

        let kept: Vec<&str> = written
            .iter()
            .filter(|e| e.count == 1)
            .map(|e| e.involved.name.as_str())
            .collect();
        let mut expected: Vec<String> = (0..10).map(|i| format!("web-{i}")).collect();
        expected.extend(["db-0".to_owned(), "web-25".to_owned()]);
        assert_eq!(kept, expected);
        let combined: Vec<&EventRecord> = written.iter().filter(|e| e.count > 1).collect();
        let [combined] = combined.as_slice() else {
            panic!("{written:?}");
        };
        assert_eq!(combined.count, 15);
        assert_eq!(combined.involved.name, "web-24");
        assert_eq!(
            combined.message,
            "(combined from similar events): Successfully assigned default/web-24 to n1"
        );
        assert!(written.contains(&failed));
    }
}
