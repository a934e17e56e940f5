//! The shared watch fan-out (kube-apiserver's cacher): one task reads the store's event
//! log once per commit and decodes each event once, keeps a window of recent events, and
//! hands them, shared, to every watcher that wants them. Without it each watcher read
//! and decoded the whole log itself on every commit, so thousands of agent watches
//! multiplied every write (node heartbeats included) by thousands.
//!
//! Watchers are indexed by kind and by the value their field selector requires for
//! `spec.nodeName`, so a pod event costs its own node's watcher and the watchers without
//! such a selector, not every node's. A watcher whose queue fills up is ended with
//! `Expired` so its client lists again, instead of holding the others back; a watcher
//! resuming from before the window reads the store's log until it reaches the window.

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
    api::error::ApiError,
    registry::{decode_stored, labels_of, prefix},
    store::{Event, EventKind, Revision, Store, StoreError},
};

/// Revisions read from the log per batch; bounds memory for a reader far behind.
pub const BATCH: usize = 500;
/// Decoded events kept for watchers that start or resume a little behind the head.
/// Older resume points are served from the store's log, so this only trades memory for
/// how often that slower path is taken.
const WINDOW: usize = 10_000;
/// Events a watcher may have waiting before it is ended as too slow. Generous, because an
/// ended watcher's client lists everything again, which costs far more than the queue.
pub const QUEUE: usize = 4096;
/// The field whose required value watchers are indexed by: agents watch their pods
/// with `spec.nodeName=<node>`.
const INDEXED_FIELD: &str = "spec.nodeName";

/// One change from the log, decoded once and shared by every watcher it goes to.
#[derive(Debug)]
pub struct CachedEvent {
    pub revision: Revision,
    pub key: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub type_: &'static str,
    pub object: Arc<Value>,
    labels: BTreeMap<String, String>,
}

impl CachedEvent {
    pub fn decode(event: &Event) -> Result<Self, ApiError> {
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
            object: Arc::new(object),
        })
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
}

impl Filter {
    /// The kind `event` is delivered as, if this watcher wants it.
    pub fn kind_of(&self, event: &CachedEvent) -> Option<&'static ResourceType> {
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

impl From<&WatchEnd> for ApiError {
    fn from(end: &WatchEnd) -> Self {
        match end {
            WatchEnd::FellBehind { .. } => Self::expired(end.to_string()),
            WatchEnd::Store(e) => Self::from(e.as_ref()),
        }
    }
}

pub struct WatchCache {
    store: Arc<dyn Store>,
    inner: Mutex<Inner>,
    /// The revision every event up to which has been queued to its watchers: a watcher
    /// with nothing queued may bookmark it.
    progress: watch::Sender<Revision>,
    /// Dropped with the cache, which ends the fan-out task (it holds no strong reference,
    /// so a stopped server releases its store).
    stop: watch::Sender<()>,
}

#[derive(Default)]
struct Inner {
    started: bool,
    /// Every event up to this revision has been fanned out.
    revision: Revision,
    /// Every event after this revision (up to `revision`) is in `window`.
    oldest: Revision,
    window: VecDeque<Arc<CachedEvent>>,
    next_id: u64,
    watchers: HashMap<u64, Watcher>,
    /// By kind prefix (`/core/pods/`).
    buckets: HashMap<String, Bucket>,
}

struct Watcher {
    filter: Arc<Filter>,
    tx: mpsc::Sender<Arc<CachedEvent>>,
    end: Arc<OnceLock<WatchEnd>>,
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
    id: u64,
    /// What the window held after the resume point when the watcher attached.
    backlog: VecDeque<Arc<CachedEvent>>,
    rx: mpsc::Receiver<Arc<CachedEvent>>,
    end: Arc<OnceLock<WatchEnd>>,
    progress: watch::Receiver<Revision>,
}

impl Subscription {
    /// The next event for this watcher, in revision order. `Ok(None)`: the cache is gone
    /// (the server is stopping).
    pub async fn next(&mut self) -> Result<Option<Arc<CachedEvent>>, WatchEnd> {
        if let Some(event) = self.backlog.pop_front() {
            return Ok(Some(event));
        }
        match self.rx.recv().await {
            Some(event) => Ok(Some(event)),
            None => self.end.get().cloned().map_or(Ok(None), Err),
        }
    }

    /// Nothing is waiting: a revision [`WatchCache`] reported as fanned out before this
    /// returned true is safe to bookmark.
    pub fn is_idle(&self) -> bool {
        self.backlog.is_empty() && self.rx.is_empty()
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
        })
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
        let first = inner.window.partition_point(|e| e.revision <= after);
        let backlog = inner
            .window
            .range(first..)
            .filter(|e| filter.kind_of(e).is_some())
            .cloned()
            .collect();
        let id = inner.next_id;
        inner.next_id += 1;
        let indexed = filter.fields.required(INDEXED_FIELD).map(str::to_owned);
        let mut slots: Vec<(String, Option<String>)> = Vec::new();
        for (_, rt, _) in &filter.kinds {
            let kind = prefix(rt, None);
            if slots.iter().any(|(k, _)| *k == kind) {
                continue;
            }
            let bucket = inner.buckets.entry(kind.clone()).or_default();
            match &indexed {
                Some(value) => bucket.by_value.entry(value.clone()).or_default().push(id),
                None => bucket.others.push(id),
            }
            slots.push((kind, indexed.clone()));
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let end = Arc::new(OnceLock::new());
        inner.watchers.insert(
            id,
            Watcher {
                filter,
                tx,
                end: Arc::clone(&end),
                slots,
            },
        );
        Ok(Some(Subscription {
            cache: Arc::downgrade(self),
            id,
            backlog,
            rx,
            end,
            progress: self.progress.subscribe(),
        }))
    }

    /// Queues a batch (in revision order) to the watchers that want each event.
    fn publish(&self, events: Vec<Arc<CachedEvent>>, through: Revision) {
        let mut inner = self.lock();
        let mut ended: Vec<(u64, Option<WatchEnd>)> = Vec::new();
        {
            let Inner {
                buckets, watchers, ..
            } = &*inner;
            for event in &events {
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
                    match watcher.tx.try_send(Arc::clone(event)) {
                        Ok(()) => {}
                        // Ending it once is enough; later events find it already ended.
                        Err(_) if ended.iter().any(|(e, _)| e == id) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            ended.push((*id, Some(WatchEnd::FellBehind { limit: QUEUE })));
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => ended.push((*id, None)),
                    }
                }
            }
        }
        for (id, end) in ended {
            if let Some(watcher) = inner.remove(id)
                && let Some(end) = end
            {
                let _ = watcher.end.set(end);
            }
        }
        for event in events {
            inner.window.push_back(event);
        }
        while inner.window.len() > WINDOW {
            if let Some(evicted) = inner.window.pop_front() {
                inner.oldest = inner.oldest.max(evicted.revision);
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
                let _ = watcher.end.set(end.clone());
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
        let revision = inner.revision;
        drop(inner);
        self.progress.send_replace(revision);
    }
}

impl Inner {
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
) -> Result<(Vec<Arc<CachedEvent>>, Revision), StoreError> {
    let events = store.events_after(after, BATCH)?;
    let through = events.last().map_or(after, Event::revision);
    let decoded = events
        .iter()
        .filter_map(|event| match CachedEvent::decode(event) {
            Ok(decoded) => Some(Arc::new(decoded)),
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
    loop {
        // Marked seen before reading, so a commit during the read wakes the wait below.
        wake.borrow_and_update();
        let Some((store, after)) = cache
            .upgrade()
            .map(|c| (Arc::clone(&c.store), c.lock().revision))
        else {
            return;
        };
        let result = tokio::task::spawn_blocking(move || read(store.as_ref(), after)).await;
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
