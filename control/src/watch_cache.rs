//! The shared watch fan-out (kube-apiserver's cacher): one task reads the store's event
//! log once per commit and decodes each event once, keeps a window of recent events, and
//! hands them, shared, to every watcher that wants them. Without it each watcher read
//! and decoded the whole log itself on every commit, so thousands of agent watches
//! multiplied every write (node heartbeats included) by thousands.
//!
//! Watchers are indexed by kind and by the value their field selector requires for
//! `spec.nodeName`, so a pod event costs its own node's watcher and the watchers without
//! such a selector, not every node's. Nobody waits for a slow watcher: when its queue
//! fills it catches up from the window on its own, and once it falls out of the window
//! it is ended with `Expired` so its client lists again. A watcher resuming from before
//! the window reads the store's log until it reaches the window.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak},
    time::Duration,
};

use berth_api::{
    ResourceType,
    selector::{FieldSelector, Selector, field_value},
};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::{
    objects::{decode_stored, labels_of, prefix},
    store::{Event, EventKind, KeyValue, Revision, Store, StoreError},
};

/// Revisions read from the log per batch; bounds memory for a reader far behind.
pub const BATCH: usize = 500;
/// Decoded events kept for watchers that start or resume a little behind the head.
/// Older resume points are served from the store's log, so this only trades memory for
/// how often that slower path is taken.
const WINDOW: usize = 10_000;
/// Events a watcher may have waiting before the fan-out stops queueing to it; it then
/// catches up from the window by itself, and is ended only once it falls out of it.
pub const QUEUE: usize = 1024;
/// The field whose required value watchers are indexed by: agents watch their pods
/// with `spec.nodeName=<node>`.
const INDEXED_FIELD: &str = "spec.nodeName";

/// An object as watchers get it: decoded once, and encoded as JSON at most once however
/// many watchers it goes to (an Endpoints update goes to every agent).
#[derive(Debug)]
pub struct SharedObject {
    value: Value,
    json: OnceLock<Vec<u8>>,
}

impl SharedObject {
    pub fn new(value: Value) -> Arc<Self> {
        Arc::new(Self {
            value,
            json: OnceLock::new(),
        })
    }

    pub fn json(&self) -> &[u8] {
        // Serializing a `Value` cannot fail: its keys are strings.
        self.json
            .get_or_init(|| serde_json::to_vec(&self.value).unwrap_or_default())
    }
}

impl std::ops::Deref for SharedObject {
    type Target = Value;

    fn deref(&self) -> &Value {
        &self.value
    }
}

/// One change from the log, decoded once and shared by every watcher it goes to.
#[derive(Debug)]
pub struct CachedEvent {
    pub revision: Revision,
    pub key: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub type_: &'static str,
    pub object: Arc<SharedObject>,
    labels: BTreeMap<String, String>,
    /// A Node change that only moved its heartbeat times (see [`Heartbeats`]).
    pub heartbeat_only: bool,
}

impl CachedEvent {
    pub fn decode(event: &Event) -> Result<Self, StoreError> {
        let object = decode_stored(&event.kv)?;
        let type_ = match event.kind {
            EventKind::Delete => "DELETED",
            EventKind::Put if event.is_create() => "ADDED",
            EventKind::Put => "MODIFIED",
        };
        Ok(Self {
            revision: event.revision(),
            key: event.kv.key.clone(),
            type_,
            labels: labels_of(&object),
            object: SharedObject::new(object),
            heartbeat_only: false,
        })
    }
}

/// What each Node looked like apart from its heartbeat times, as of the last event the
/// cache read for it. A change that leaves that alone is marked heartbeat-only, so the
/// agents' Services watch (which needs Nodes for their pod ranges and addresses) skips
/// it: with thousands of nodes, their periodic status refreshes would otherwise each go
/// to every agent. Skipping is safe for any watcher: the previous event of the same Node
/// already carried everything else, and a watcher that started later listed the Node.
#[derive(Debug, Default)]
pub struct Heartbeats {
    fingerprints: std::collections::HashMap<String, u64>,
}

impl Heartbeats {
    fn mark(&mut self, event: &mut CachedEvent) {
        if !event
            .key
            .starts_with(&prefix(&berth_api::kinds::NODES, None))
        {
            return;
        }
        if event.type_ == "DELETED" {
            self.fingerprints.remove(&event.key);
            return;
        }
        let mut rest = event.object.value.clone();
        if let Some(metadata) = rest.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.remove("resourceVersion");
        }
        if let Some(conditions) = rest
            .pointer_mut("/status/conditions")
            .and_then(Value::as_array_mut)
        {
            for condition in conditions.iter_mut().filter_map(Value::as_object_mut) {
                condition.remove("lastHeartbeatTime");
            }
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&rest.to_string(), &mut hasher);
        let fingerprint = std::hash::Hasher::finish(&hasher);
        let previous = self.fingerprints.insert(event.key.clone(), fingerprint);
        event.heartbeat_only = event.type_ == "MODIFIED" && previous == Some(fingerprint);
    }
}

/// What one watcher wants.
#[derive(Debug)]
pub struct Filter {
    /// Per kind: the key prefix (within the namespace, for a namespaced watch) and the
    /// revision its state was read at, after which its events are wanted.
    pub kinds: Vec<(String, &'static ResourceType, Revision)>,
    pub labels: Selector,
    pub fields: FieldSelector,
    /// Leave out Node changes that only moved heartbeat times.
    pub skip_heartbeats: bool,
}

impl Filter {
    /// The kind `event` is delivered as, if this watcher wants it.
    pub fn kind_of(&self, event: &CachedEvent) -> Option<&'static ResourceType> {
        if self.skip_heartbeats && event.heartbeat_only {
            return None;
        }
        let (_, rt, _) = self.kinds.iter().find(|(prefix, _, start)| {
            event.key.starts_with(prefix.as_str()) && event.revision > *start
        })?;
        (self.labels.matches(&event.labels) && self.fields.matches(&event.object)).then_some(*rt)
    }
}

/// Why the cache stopped feeding a watcher.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WatchEnd {
    #[error("the watcher fell more than {limit} events behind; list and watch again")]
    FellBehind { limit: usize },
    #[error(transparent)]
    Store(Arc<StoreError>),
}

/// Why the fan-out stopped queueing to a watcher.
#[derive(Debug)]
enum Stop {
    /// Its queue was full: it catches up from the window by itself, if still there.
    Lagging,
    End(WatchEnd),
}

/// A cached event with its place in the cache: one more than the event before it. Finer
/// than revisions, since a full queue can cut a revision's events in two.
type Sequenced = (u64, Arc<CachedEvent>);

pub struct WatchCache {
    store: Arc<dyn Store>,
    inner: Mutex<Inner>,
    /// The revision every event up to which has been queued to its watchers: a watcher
    /// with nothing queued may bookmark it.
    progress: watch::Sender<Revision>,
    /// Dropped with the cache, which ends the fan-out task (it holds no strong reference,
    /// so a stopped server releases its store).
    stop: watch::Sender<()>,
    /// Objects the agents' watches listed, by key: each stored version decoded and
    /// encoded once for all of them (see [`WatchCache::listed`]).
    listed: Mutex<HashMap<String, (Revision, Arc<SharedObject>)>>,
}

#[derive(Default)]
struct Inner {
    started: bool,
    /// Every event up to this revision has been fanned out.
    revision: Revision,
    /// Every event after this revision (up to `revision`) is in `window`.
    oldest: Revision,
    window: VecDeque<Sequenced>,
    /// The sequence number of the next event.
    next_seq: u64,
    /// Every event from this sequence number on is in `window`.
    first_seq: u64,
    next_id: u64,
    watchers: HashMap<u64, Watcher>,
    /// By kind prefix (`/core/pods/`).
    buckets: HashMap<String, Bucket>,
}

struct Watcher {
    filter: Arc<Filter>,
    tx: mpsc::Sender<Sequenced>,
    stop: Arc<OnceLock<Stop>>,
    /// Where it is registered: kind prefix and indexed value.
    slots: Vec<(String, Option<String>)>,
}

#[derive(Default)]
struct Bucket {
    /// Watchers whose field selector requires this `spec.nodeName`.
    by_value: HashMap<String, Vec<u64>>,
    others: Vec<u64>,
}

/// A watcher's feed from the cache; dropping it unregisters the watcher.
pub struct Subscription {
    cache: Weak<WatchCache>,
    filter: Arc<Filter>,
    id: u64,
    /// The sequence number of the next event this watcher has not been offered.
    next_seq: u64,
    /// What the window held after the resume point when the watcher (re)attached.
    backlog: VecDeque<Sequenced>,
    rx: mpsc::Receiver<Sequenced>,
    stop: Arc<OnceLock<Stop>>,
    progress: watch::Receiver<Revision>,
}

impl Subscription {
    /// The next event for this watcher, in revision order. `Ok(None)`: the cache is gone
    /// (the server is stopping). Cancel-safe: state only changes between awaits.
    pub async fn next(&mut self) -> Result<Option<Arc<CachedEvent>>, WatchEnd> {
        loop {
            let next = match self.backlog.pop_front() {
                Some(next) => Some(next),
                None => self.rx.recv().await,
            };
            if let Some((seq, event)) = next {
                self.next_seq = seq + 1;
                return Ok(Some(event));
            }
            match self.stop.get() {
                None => return Ok(None),
                Some(Stop::End(end)) => return Err(end.clone()),
                Some(Stop::Lagging) => {
                    let Some(cache) = self.cache.upgrade() else {
                        return Ok(None);
                    };
                    cache.lock().reattach(self)?;
                }
            }
        }
    }

    /// Whether the next call to [`Self::next`] can go on from where this subscription
    /// is: it was not ended, and if it lagged, the window still holds its position.
    pub fn can_go_on(&self) -> bool {
        match self.stop.get() {
            None => true,
            Some(Stop::End(_)) => false,
            Some(Stop::Lagging) => self
                .cache
                .upgrade()
                .is_some_and(|cache| self.next_seq >= cache.lock().first_seq),
        }
    }

    /// Nothing is waiting: a revision the cache reported as fanned out before this
    /// returned true is safe to bookmark.
    pub fn is_idle(&self) -> bool {
        self.backlog.is_empty() && self.rx.is_empty() && self.stop.get().is_none()
    }

    /// Follows the cache's progress (for bookmarks) without borrowing the subscription.
    pub fn progress(&self) -> watch::Receiver<Revision> {
        self.progress.clone()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(cache) = self.cache.upgrade() {
            cache.lock().remove(self.id);
        }
    }
}

/// The kind part of a store key: `/core/pods/ns/name` → `/core/pods/`.
fn kind_prefix(key: &str) -> &str {
    key.match_indices('/')
        .nth(2)
        .map_or(key, |(i, _)| &key[..=i])
}

/// Locks ignoring poisoning: every critical section leaves the state consistent before
/// anything in it can panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl WatchCache {
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            store,
            inner: Mutex::new(Inner::default()),
            progress: watch::channel(0).0,
            stop: watch::channel(()).0,
            listed: Mutex::default(),
        })
    }

    /// A listed object as watchers get it. Every agent lists every Service, Endpoints and
    /// Node when its watch starts: when thousands of nodes join, decoding and encoding
    /// each of them again for every agent made joining grow with the square of the node
    /// count. A version once decoded is kept until a later one or its deletion passes
    /// through the fan-out; an older one found only costs a decode.
    pub fn listed(&self, kv: &KeyValue) -> Result<Arc<SharedObject>, StoreError> {
        if let Some((revision, object)) = lock(&self.listed).get(&kv.key)
            && *revision == kv.mod_revision
        {
            return Ok(Arc::clone(object));
        }
        let object = SharedObject::new(decode_stored(kv)?);
        lock(&self.listed).insert(kv.key.clone(), (kv.mod_revision, Arc::clone(&object)));
        Ok(object)
    }

    /// Keeps [`Self::listed`]'s objects current with the events fanned out: a changed
    /// object's latest version replaces the one kept, a deleted one's is dropped.
    fn relist(&self, events: &[Arc<CachedEvent>]) {
        let mut listed = lock(&self.listed);
        if listed.is_empty() {
            return;
        }
        for event in events {
            if event.type_ == "DELETED" {
                listed.remove(&event.key);
            } else if let Some(kept) = listed.get_mut(&event.key)
                && kept.0 < event.revision
            {
                *kept = (event.revision, Arc::clone(&event.object));
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Feeds a watcher every event after `after` that `filter` wants, or `None` when the
    /// window no longer holds all of them (the caller reads the log up to it first).
    /// Starts the fan-out on first use, so it runs inside the server's runtime.
    pub fn subscribe(
        self: &Arc<Self>,
        filter: Arc<Filter>,
        after: Revision,
    ) -> Result<Option<Subscription>, StoreError> {
        let mut inner = self.lock();
        if !inner.started {
            let revision = self.store.revision()?;
            inner.revision = revision;
            inner.oldest = revision;
            inner.started = true;
            self.progress.send_replace(revision);
            tokio::spawn(fan_out(
                Arc::downgrade(self),
                self.store.subscribe(),
                self.stop.subscribe(),
            ));
        }
        if after < inner.oldest {
            return Ok(None);
        }
        let first = inner.window.partition_point(|(_, e)| e.revision <= after);
        let next_seq = inner
            .window
            .get(first)
            .map_or(inner.next_seq, |(seq, _)| *seq);
        let (id, rx, stop) = inner.register(&filter);
        let mut subscription = Subscription {
            cache: Arc::downgrade(self),
            filter,
            id,
            next_seq,
            backlog: VecDeque::new(),
            rx,
            stop,
            progress: self.progress.subscribe(),
        };
        subscription.backlog = inner.backlog(&subscription);
        Ok(Some(subscription))
    }

    /// Queues a batch (in revision order) to the watchers that want each event.
    fn publish(&self, events: Vec<Arc<CachedEvent>>, through: Revision) {
        self.relist(&events);
        let mut inner = self.lock();
        let mut stopped: Vec<(u64, Option<Stop>)> = Vec::new();
        let first_seq = inner.next_seq;
        {
            let Inner {
                buckets, watchers, ..
            } = &*inner;
            for (seq, event) in (first_seq..).zip(&events) {
                let Some(bucket) = buckets.get(kind_prefix(&event.key)) else {
                    continue;
                };
                let indexed = if bucket.by_value.is_empty() {
                    None
                } else {
                    bucket
                        .by_value
                        .get(&field_value(&event.object, INDEXED_FIELD))
                };
                for id in bucket.others.iter().chain(indexed.into_iter().flatten()) {
                    let Some(watcher) = watchers.get(id) else {
                        continue;
                    };
                    if watcher.filter.kind_of(event).is_none() {
                        continue;
                    }
                    match watcher.tx.try_send((seq, Arc::clone(event))) {
                        Ok(()) => {}
                        // Stopped once already; it resumes from its own position.
                        Err(_) if stopped.iter().any(|(s, _)| s == id) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            stopped.push((*id, Some(Stop::Lagging)));
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => stopped.push((*id, None)),
                    }
                }
            }
        }
        for (id, stop) in stopped {
            if let Some(watcher) = inner.remove(id)
                && let Some(stop) = stop
            {
                let _ = watcher.stop.set(stop);
            }
        }
        for event in events {
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.window.push_back((seq, event));
        }
        while inner.window.len() > WINDOW {
            if let Some((seq, evicted)) = inner.window.pop_front() {
                inner.oldest = inner.oldest.max(evicted.revision);
                inner.first_seq = seq + 1;
            }
        }
        inner.revision = through;
        drop(inner);
        self.progress.send_replace(through);
    }

    /// Ends every watcher: the cache cannot vouch for their streams any more.
    fn end_all(&self, end: &WatchEnd) {
        let mut inner = self.lock();
        let ids: Vec<u64> = inner.watchers.keys().copied().collect();
        for id in ids {
            if let Some(watcher) = inner.remove(id) {
                let _ = watcher.stop.set(Stop::End(end.clone()));
            }
        }
    }

    /// The log was compacted past what the cache had read: its watchers missed events
    /// and must relist, as a watcher reading the log itself would have to.
    fn restart_after_compaction(&self, error: StoreError, compacted: Revision) {
        self.end_all(&WatchEnd::Store(Arc::new(error)));
        let mut inner = self.lock();
        inner.window.clear();
        inner.revision = inner.revision.max(compacted);
        inner.oldest = inner.revision;
        // A gap in the sequence: no lagging watcher can catch up across the lost events.
        inner.next_seq += 1;
        inner.first_seq = inner.next_seq;
        let revision = inner.revision;
        drop(inner);
        self.progress.send_replace(revision);
    }
}

impl Inner {
    /// Adds a watcher to the fan-out under the kinds and node it can want.
    fn register(
        &mut self,
        filter: &Arc<Filter>,
    ) -> (u64, mpsc::Receiver<Sequenced>, Arc<OnceLock<Stop>>) {
        let id = self.next_id;
        self.next_id += 1;
        let indexed = filter.fields.required(INDEXED_FIELD).map(str::to_owned);
        let mut slots: Vec<(String, Option<String>)> = Vec::new();
        for (_, rt, _) in &filter.kinds {
            let kind = prefix(rt, None);
            if slots.iter().any(|(k, _)| *k == kind) {
                continue;
            }
            let bucket = self.buckets.entry(kind.clone()).or_default();
            match &indexed {
                Some(value) => bucket.by_value.entry(value.clone()).or_default().push(id),
                None => bucket.others.push(id),
            }
            slots.push((kind, indexed.clone()));
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let stop = Arc::new(OnceLock::new());
        self.watchers.insert(
            id,
            Watcher {
                filter: Arc::clone(filter),
                tx,
                stop: Arc::clone(&stop),
                slots,
            },
        );
        (id, rx, stop)
    }

    /// What the window holds for a subscription from its position on.
    fn backlog(&self, subscription: &Subscription) -> VecDeque<Sequenced> {
        let front = self.window.front().map_or(self.next_seq, |(seq, _)| *seq);
        let skip =
            usize::try_from(subscription.next_seq.saturating_sub(front)).unwrap_or(usize::MAX);
        self.window
            .iter()
            .skip(skip)
            .filter(|(_, e)| subscription.filter.kind_of(e).is_some())
            .cloned()
            .collect()
    }

    /// Feeds a lagging watcher again from its position, if the window still holds it.
    fn reattach(&mut self, subscription: &mut Subscription) -> Result<(), WatchEnd> {
        if subscription.next_seq < self.first_seq {
            return Err(WatchEnd::FellBehind { limit: WINDOW });
        }
        let (id, rx, stop) = self.register(&subscription.filter);
        subscription.id = id;
        subscription.rx = rx;
        subscription.stop = stop;
        subscription.backlog = self.backlog(subscription);
        Ok(())
    }

    fn remove(&mut self, id: u64) -> Option<Watcher> {
        let watcher = self.watchers.remove(&id)?;
        for (kind, value) in &watcher.slots {
            let Some(bucket) = self.buckets.get_mut(kind) else {
                continue;
            };
            let list = match value {
                Some(value) => bucket.by_value.get_mut(value),
                None => Some(&mut bucket.others),
            };
            if let Some(list) = list {
                list.retain(|w| *w != id);
            }
            if let Some(value) = value
                && bucket.by_value.get(value).is_some_and(Vec::is_empty)
            {
                bucket.by_value.remove(value);
            }
            if bucket.by_value.is_empty() && bucket.others.is_empty() {
                self.buckets.remove(kind);
            }
        }
        Some(watcher)
    }
}

/// Reads and decodes the log after `after`: the revision read through and its events.
fn read(
    store: &dyn Store,
    after: Revision,
    heartbeats: &mut Heartbeats,
) -> Result<(Vec<Arc<CachedEvent>>, Revision), StoreError> {
    let events = store.events_after(after, BATCH)?;
    let through = events.last().map_or(after, Event::revision);
    let decoded = events
        .iter()
        .filter_map(|event| match CachedEvent::decode(event) {
            Ok(mut decoded) => {
                heartbeats.mark(&mut decoded);
                Some(Arc::new(decoded))
            }
            Err(e) => {
                // Validated on write: only an incompatible upgrade gets here. Watchers
                // skipped such events before the cache too.
                tracing::warn!("watch cache: skipping {}: {e}", event.kv.key);
                None
            }
        })
        .collect();
    Ok((decoded, through))
}

/// The one task reading the log for every watcher.
async fn fan_out(
    cache: Weak<WatchCache>,
    mut wake: watch::Receiver<Revision>,
    mut stop: watch::Receiver<()>,
) {
    let mut heartbeats = Heartbeats::default();
    loop {
        // Marked seen before reading, so a commit during the read wakes the wait below.
        wake.borrow_and_update();
        let Some((store, after)) = cache
            .upgrade()
            .map(|c| (Arc::clone(&c.store), c.lock().revision))
        else {
            return;
        };
        let mut taken = std::mem::take(&mut heartbeats);
        let result = tokio::task::spawn_blocking(move || {
            let result = read(store.as_ref(), after, &mut taken);
            (result, taken)
        })
        .await
        .map(|(result, taken)| {
            // Lost only if the read task died: then every Node's next change is sent.
            heartbeats = taken;
            result
        });
        let Some(this) = cache.upgrade() else {
            return;
        };
        match result {
            Ok(Ok((events, through))) if through > after => this.publish(events, through),
            Ok(Ok(_)) => {
                drop(this);
                tokio::select! {
                    changed = wake.changed() => if changed.is_err() { return },
                    _ = stop.changed() => return,
                }
            }
            Ok(Err(error @ StoreError::Compacted { compacted, .. })) => {
                this.restart_after_compaction(error, compacted);
            }
            Ok(Err(error)) => {
                tracing::warn!("watch cache: reading the log: {error}");
                this.end_all(&WatchEnd::Store(Arc::new(error)));
                drop(this);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
            Err(error) => {
                tracing::error!("watch cache: read task failed: {error}");
                let error = StoreError::Backend(format!("watch cache read failed: {error}"));
                this.end_all(&WatchEnd::Store(Arc::new(error)));
                drop(this);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc, time::Duration};

    use berth_api::selector::{FieldSelector, Selector};
    use serde_json::json;
    use tokio::sync::mpsc;

    use super::{QUEUE, WINDOW, WatchCache};
    use berth_api::kinds::PODS;

    use crate::{
        api::watch::{self, WatchEvent, WatchOptions},
        metrics::Metrics,
        registry::{Registry, key},
        store::{Op, Precondition, Revision, StoreError},
    };

    struct Fixture {
        registry: Registry,
        metrics: Metrics,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::for_tests(dir.path());
        Fixture {
            metrics: registry.metrics().clone(),
            registry,
            _dir: dir,
        }
    }

    impl Fixture {
        fn cache(&self) -> &Arc<WatchCache> {
            self.registry.watch_cache()
        }

        async fn commit(&self, ops: Vec<Op>) -> Revision {
            let store = Arc::clone(self.registry.store());
            tokio::task::spawn_blocking(move || store.commit(ops))
                .await
                .expect("join")
                .expect("commit")
        }

        async fn open(&self, fields: &str, from: Option<Revision>) -> mpsc::Receiver<WatchEvent> {
            let options = WatchOptions {
                kinds: vec![&PODS],
                namespace: None,
                labels: Selector::default(),
                fields: FieldSelector::parse(fields).expect("field selector"),
                from,
                bookmarks: false,
                synced_marker: false,
                timeout: watch::default_timeout(),
                skip_heartbeats: false,
                share_list: false,
                hold_nodes: None,
            };
            watch::open(&self.registry, &self.metrics, options)
                .await
                .expect("watch")
        }

        /// Waits until `count` watchers are fed by the cache, so what is committed next
        /// reaches them through it (not as a backlog when they attach).
        async fn attached(&self, count: usize) {
            wait_until(|| self.cache().lock().watchers.len() == count).await;
        }

        /// Waits until the cache has fanned out `revision`.
        async fn published(&self, revision: Revision) {
            wait_until(|| self.cache().lock().revision >= revision).await;
        }
    }

    /// Polls a condition; the bound only keeps a broken build from hanging.
    async fn wait_until(mut condition: impl FnMut() -> bool) {
        let poll = async {
            while !condition() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), poll)
            .await
            .expect("condition reached");
    }

    async fn next(rx: &mut mpsc::Receiver<WatchEvent>) -> WatchEvent {
        tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("an event in time")
            .expect("watch still open")
    }

    fn pod(name: &str, node: Option<&str>) -> Op {
        let mut object = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"}, "spec": {}});
        if let Some(node) = node {
            object["spec"]["nodeName"] = json!(node);
        }
        Op::Put {
            key: key(&PODS, "default", name),
            value: serde_json::to_vec(&object).expect("json"),
            precondition: Precondition::Always,
        }
    }

    fn delete(name: &str) -> Op {
        Op::Delete {
            key: key(&PODS, "default", name),
            precondition: Precondition::Present,
        }
    }

    fn name(event: &WatchEvent) -> &str {
        event.object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
    }

    fn rv(event: &WatchEvent) -> Revision {
        event.object["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|rv| rv.parse().ok())
            .unwrap_or_default()
    }

    type Seen = (&'static str, String, Revision);

    fn seen(event: &WatchEvent) -> Seen {
        (event.type_, name(event).to_owned(), rv(event))
    }

    #[tokio::test]
    async fn node_watchers_get_exactly_their_pods_in_order() {
        const NODES: usize = 12;
        const PODS_: usize = 60;
        let f = fixture();
        let mut watchers = Vec::new();
        for n in 0..NODES {
            watchers.push(f.open(&format!("spec.nodeName=node-{n}"), Some(0)).await);
        }
        let mut everything = f.open("", Some(0)).await;
        f.attached(NODES + 1).await;

        // A model of where each pod is, to know which node each event belongs to: a
        // watcher gets the events whose object (the new state, or the deleted one) is on
        // its node, as the field selector says.
        let mut on: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut expected: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
        let mut all: Vec<Seen> = Vec::new();
        let node = |j: usize| format!("node-{}", j % NODES);
        let rounds: Vec<Vec<(String, Option<Option<String>>)>> = vec![
            // Created, a third of them unscheduled.
            (0..PODS_)
                .map(|j| (format!("p{j}"), Some((j % 3 != 0).then(|| node(j)))))
                .collect(),
            // The unscheduled ones bound; every fifth moved to the next node.
            (0..PODS_)
                .filter(|j| j % 3 == 0 || j % 5 == 0)
                .map(|j| {
                    let target = if j % 5 == 0 { node(j + 1) } else { node(j) };
                    (format!("p{j}"), Some(Some(target)))
                })
                .collect(),
            // Every fourth deleted (None).
            (0..PODS_)
                .filter(|j| j % 4 == 0)
                .map(|j| (format!("p{j}"), None))
                .collect(),
        ];
        for round in rounds {
            for chunk in round.chunks(7) {
                let ops = chunk
                    .iter()
                    .map(|(name, change)| match change {
                        Some(target) => pod(name, target.as_deref()),
                        None => delete(name),
                    })
                    .collect();
                let revision = f.commit(ops).await;
                for (name, change) in chunk {
                    let (type_, at) = match change {
                        Some(target) => {
                            let created = !on.contains_key(name);
                            on.insert(name.clone(), target.clone());
                            (if created { "ADDED" } else { "MODIFIED" }, target.clone())
                        }
                        None => ("DELETED", on.remove(name).flatten()),
                    };
                    let event = (type_, name.clone(), revision);
                    if let Some(at) = at {
                        expected.entry(at).or_default().push(event.clone());
                    }
                    all.push(event);
                }
            }
        }
        // One last pod per node marks the end of what each watcher should get.
        let sentinels: Vec<Op> = (0..NODES)
            .map(|n| pod(&format!("end-{n}"), Some(&format!("node-{n}"))))
            .collect();
        let last = f.commit(sentinels).await;
        for (n, rx) in watchers.iter_mut().enumerate() {
            let mut got = Vec::new();
            loop {
                let event = next(rx).await;
                if name(&event).starts_with("end-") {
                    assert_eq!(seen(&event), ("ADDED", format!("end-{n}"), last));
                    break;
                }
                got.push(seen(&event));
            }
            let want = expected.remove(&format!("node-{n}")).unwrap_or_default();
            assert!(!want.is_empty(), "node-{n} has pods in this test");
            assert_eq!(got, want, "node-{n}");
        }
        let mut got = Vec::new();
        for _ in 0..all.len() {
            got.push(seen(&next(&mut everything).await));
        }
        assert_eq!(
            got, all,
            "a watcher without a node selector sees everything"
        );
    }

    #[tokio::test]
    async fn resume_from_a_revision_is_served_from_the_window() {
        let f = fixture();
        let mut witness = f.open("", Some(0)).await;
        f.attached(1).await;
        let a = f.commit(vec![pod("p1", None)]).await;
        let b = f.commit(vec![pod("p1", Some("n1"))]).await;
        let c = f.commit(vec![pod("p2", Some("n2"))]).await;
        for want in [a, b, c] {
            assert_eq!(rv(&next(&mut witness).await), want);
        }
        assert!(
            f.cache().lock().oldest < a,
            "the window holds everything after a"
        );

        let mut resumed = f.open("", Some(a)).await;
        assert_eq!(
            seen(&next(&mut resumed).await),
            ("MODIFIED", "p1".to_owned(), b)
        );
        assert_eq!(
            seen(&next(&mut resumed).await),
            ("ADDED", "p2".to_owned(), c)
        );
        let mut on_n2 = f.open("spec.nodeName=n2", Some(a)).await;
        assert_eq!(seen(&next(&mut on_n2).await), ("ADDED", "p2".to_owned(), c));
        let d = f.commit(vec![delete("p1"), pod("p3", Some("n2"))]).await;
        assert_eq!(
            seen(&next(&mut resumed).await),
            ("DELETED", "p1".to_owned(), d)
        );
        assert_eq!(
            seen(&next(&mut resumed).await),
            ("ADDED", "p3".to_owned(), d)
        );
        assert_eq!(seen(&next(&mut on_n2).await), ("ADDED", "p3".to_owned(), d));
    }

    #[tokio::test]
    async fn a_slow_watcher_is_expired_without_holding_back_others() {
        let f = fixture();
        let mut slow = f.open("", Some(0)).await;
        let mut fast = f.open("", Some(0)).await;
        f.attached(2).await;
        // More than a queue in one revision: both queues fill mid-revision, and the fast
        // watcher catches up from the window without losing or repeating an event.
        let burst = QUEUE + 100;
        let ops = (0..burst).map(|i| pod(&format!("p{i}"), None)).collect();
        let revision = f.commit(ops).await;
        // Nobody reads `slow` meanwhile.
        for i in 0..burst {
            assert_eq!(
                seen(&next(&mut fast).await),
                ("ADDED", format!("p{i}"), revision)
            );
        }
        // A window's worth of other events: `slow` is now out of the window.
        let filler = (0..WINDOW)
            .map(|i| Op::Put {
                key: format!("/core/configmaps/default/c{i}"),
                value: b"{}".to_vec(),
                precondition: Precondition::Always,
            })
            .collect();
        f.commit(filler).await;
        let later = f.commit(vec![pod("after", None)]).await;
        assert_eq!(
            seen(&next(&mut fast).await),
            ("ADDED", "after".to_owned(), later)
        );

        // What the slow one had queued comes in order, then the error that makes its
        // client list again.
        let mut received = 0;
        let error = loop {
            let event = next(&mut slow).await;
            if event.type_ == "ERROR" {
                break event;
            }
            assert_eq!(seen(&event), ("ADDED", format!("p{received}"), revision));
            received += 1;
        };
        assert!(received < burst);
        assert_eq!(error.object["code"], 410);
        assert_eq!(error.object["reason"], "Expired");
        assert!(
            slow.recv().await.is_none(),
            "the watch ends after the error"
        );
        wait_until(|| f.cache().lock().watchers.len() == 1).await;
    }

    #[tokio::test]
    async fn resume_from_before_the_window_reads_the_log_then_the_cache() {
        let f = fixture();
        let _witness = f.open("", Some(0)).await;
        f.attached(1).await;
        let a = f.commit(vec![pod("p1", None)]).await;
        let b = f.commit(vec![pod("p1", Some("n1"))]).await;
        // Other kinds push a and b out of the window.
        let filler = (0..WINDOW)
            .map(|i| Op::Put {
                key: format!("/core/configmaps/default/c{i}"),
                value: b"{}".to_vec(),
                precondition: Precondition::Always,
            })
            .collect();
        let c = f.commit(filler).await;
        f.published(c).await;
        assert!(f.cache().lock().oldest >= b, "b left the window");

        let mut resumed = f.open("", Some(a)).await;
        assert_eq!(
            seen(&next(&mut resumed).await),
            ("MODIFIED", "p1".to_owned(), b)
        );
        f.attached(2).await;
        let d = f.commit(vec![delete("p1")]).await;
        assert_eq!(
            seen(&next(&mut resumed).await),
            ("DELETED", "p1".to_owned(), d)
        );

        // Once the log is compacted past a resume point, the watch is refused as before.
        let store = Arc::clone(f.registry.store());
        tokio::task::spawn_blocking(move || store.compact(b))
            .await
            .expect("join")
            .expect("compact");
        let options = WatchOptions {
            kinds: vec![&PODS],
            namespace: None,
            labels: Selector::default(),
            fields: FieldSelector::default(),
            from: Some(a),
            bookmarks: false,
            synced_marker: false,
            timeout: watch::default_timeout(),
            skip_heartbeats: false,
            share_list: false,
            hold_nodes: None,
        };
        let refused = watch::open(&f.registry, &f.metrics, options).await;
        assert!(
            matches!(refused, Err(crate::registry::Error::Expired(_))),
            "{:?}",
            refused.map(|_| ())
        );
    }

    #[tokio::test]
    async fn a_cache_behind_compaction_expires_its_watchers() {
        let f = fixture();
        let mut watcher = f.open("", Some(0)).await;
        f.attached(1).await;
        let a = f.commit(vec![pod("p1", None)]).await;
        assert_eq!(rv(&next(&mut watcher).await), a);
        // What the fan-out does when the log it has not read yet was compacted away.
        f.cache().restart_after_compaction(
            StoreError::Compacted {
                requested: a,
                compacted: a + 5,
            },
            a + 5,
        );
        let error = next(&mut watcher).await;
        assert_eq!(
            (error.type_, &error.object["code"], &error.object["reason"]),
            ("ERROR", &json!(410), &json!("Expired"))
        );
        assert!(f.cache().lock().watchers.is_empty());
        assert!(f.cache().lock().oldest >= a + 5);
    }

    #[test]
    fn node_changes_of_heartbeat_times_alone_are_marked() {
        use super::{CachedEvent, Heartbeats, SharedObject};
        let node = |rv: &str, heartbeat: &str, address: &str| {
            json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "n1", "resourceVersion": rv},
                "status": {"addresses": [{"type": "InternalIP", "address": address}],
                    "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}]}})
        };
        let event = |type_: &'static str, object: serde_json::Value| CachedEvent {
            revision: 1,
            key: key(&berth_api::kinds::NODES, "", "n1"),
            type_,
            object: SharedObject::new(object),
            labels: BTreeMap::new(),
            heartbeat_only: false,
        };
        let mut heartbeats = Heartbeats::default();
        let mut marked = |type_, object| {
            let mut event = event(type_, object);
            heartbeats.mark(&mut event);
            event.heartbeat_only
        };
        assert!(!marked("ADDED", node("1", "t1", "198.18.7.1")));
        assert!(marked("MODIFIED", node("2", "t2", "198.18.7.1")));
        assert!(
            !marked("MODIFIED", node("3", "t3", "198.18.7.2")),
            "address changed"
        );
        assert!(marked("MODIFIED", node("4", "t4", "198.18.7.2")));
        assert!(!marked("DELETED", node("5", "t4", "198.18.7.2")));
        assert!(
            !marked("ADDED", node("6", "t5", "198.18.7.2")),
            "a new node is news"
        );
    }

    /// The agents' Services watch: what it lists is decoded once for every such watch
    /// and kept current by the fan-out; a Node change holds the stream back, and the
    /// batch goes with each Node once, at its last place, followed by what came after.
    #[tokio::test]
    async fn agents_watches_share_their_lists_and_get_each_node_once_per_batch() {
        use berth_api::kinds::NODES;
        let f = fixture();
        let node = |name: &str, cidr: &str| Op::Put {
            key: key(&NODES, "", name),
            value: serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name}, "spec": {"podCIDR": cidr}}))
            .expect("json"),
            precondition: Precondition::Always,
        };
        let first = f.commit(vec![node("a", "10.0.0.0/24")]).await;
        let open = || async {
            let options = WatchOptions {
                kinds: vec![&NODES, &PODS],
                namespace: None,
                labels: Selector::default(),
                fields: FieldSelector::default(),
                from: None,
                bookmarks: true,
                synced_marker: true,
                timeout: watch::default_timeout(),
                skip_heartbeats: true,
                share_list: true,
                // Long enough for the commits below on a busy machine: the batch is
                // what is checked, not how long it waits.
                hold_nodes: Some(Duration::from_secs(3)),
            };
            watch::open(&f.registry, &f.metrics, options)
                .await
                .expect("watch")
        };
        let (mut one, mut two) = (open().await, open().await);
        let (listed_one, listed_two) = (next(&mut one).await, next(&mut two).await);
        assert_eq!(seen(&listed_one), ("ADDED", "a".to_owned(), first));
        assert!(
            Arc::ptr_eq(&listed_one.object, &listed_two.object),
            "both watches list the same decoded Node"
        );
        for rx in [&mut one, &mut two] {
            assert_eq!(next(rx).await.type_, "SYNCED");
        }
        f.attached(2).await;

        let b_created = f.commit(vec![node("b", "10.0.1.0/24")]).await;
        let b_changed = f.commit(vec![node("b", "10.0.2.0/24")]).await;
        let a_changed = f.commit(vec![node("a", "10.0.3.0/24")]).await;
        let pod_added = f.commit(vec![pod("p1", None)]).await;
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(next(&mut one).await);
        }
        assert_eq!(
            got.iter().map(seen).collect::<Vec<_>>(),
            vec![
                ("ADDED", "b".to_owned(), b_changed),
                ("MODIFIED", "a".to_owned(), a_changed),
                ("ADDED", "p1".to_owned(), pod_added),
            ],
            "b created at {b_created}: its two changes go as one, new, in its last state"
        );
        assert_eq!(got[0].object["spec"]["podCIDR"], "10.0.2.0/24");

        // A watch starting now lists the objects the fan-out decoded.
        let mut three = open().await;
        let a_listed = next(&mut three).await;
        assert_eq!(seen(&a_listed), ("ADDED", "a".to_owned(), a_changed));
        assert!(Arc::ptr_eq(&a_listed.object, &got[1].object));
    }
}
