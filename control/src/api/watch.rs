//! Watch streams, fed from the store's event log through the shared watch cache so a
//! watcher resuming from a resourceVersion sees every change after it, in order, or an
//! `Expired` error if that history was compacted. [`open`] is shared by the REST watch
//! (newline-delimited JSON) and the agents' gRPC watches.

use std::{collections::HashMap, convert::Infallible, pin::Pin, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::header,
    response::{IntoResponse, Response},
};
use berth_api::{
    ResourceType,
    kinds::NODES,
    selector::{FieldSelector, Selector},
};
use prometheus::IntCounter;
use serde_json::{Value, json};
use tokio::{
    sync::{mpsc, watch},
    time::Sleep,
};

use super::{ApiState, error::ApiError, query::selectors};
use crate::{
    metrics::Metrics,
    objects::labels_of,
    registry::{self, Registry, parse_resource_version, prefix},
    store::{Revision, Store, StoreError},
    watch_cache::{BATCH, CachedEvent, Filter, SharedObject, Subscription, WatchCache},
};

/// Kubernetes closes watches after 30–60 minutes so clients re-establish them through
/// load balancers; one fixed bound keeps tests deterministic.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// At most one bookmark per watcher this often (the first comes at once): with thousands
/// of watchers, one per commit would cost every watcher a wake-up per commit again, and
/// even one a second was two messages a second per agent (its pod and services watches),
/// as many as an Endpoints change sent to every node, all the time. kube-apiserver's
/// watch cache bookmarks about once a minute too; a watch resuming from an older point
/// reads the store's history, kept for many more revisions than a minute brings.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct WatchEvent {
    /// `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`, `SYNCED` or `ERROR`.
    pub type_: &'static str,
    pub kind: &'static str,
    /// Shared with every other watcher the event goes to.
    pub object: Arc<SharedObject>,
}

pub struct WatchOptions {
    pub kinds: Vec<&'static ResourceType>,
    pub namespace: Option<String>,
    pub labels: Selector,
    pub fields: FieldSelector,
    /// None: the current state as ADDED first, then changes.
    pub from: Option<Revision>,
    pub bookmarks: bool,
    /// Send `SYNCED` between the initial state and the changes.
    pub synced_marker: bool,
    pub timeout: Duration,
    /// Leave out Node changes that only moved heartbeat times (the agents' watch).
    pub skip_heartbeats: bool,
    /// List the current state from objects decoded once for every such watch (the agents'
    /// Services watch: see [`WatchCache::listed`]).
    pub share_list: bool,
    /// Hold a Node change back this long, with whatever follows it, and send each Node's
    /// latest state once (the agents' watch): see [`Held`].
    pub hold_nodes: Option<Duration>,
}

/// Starts a watch; events arrive on the returned channel until it is dropped, the
/// timeout passes, or an `ERROR` event ends it.
pub async fn open(
    registry: &Registry,
    metrics: &Metrics,
    options: WatchOptions,
) -> registry::Result<mpsc::Receiver<WatchEvent>> {
    let store = Arc::clone(registry.store());
    let cache = Arc::clone(registry.watch_cache());
    // Subscribe before reading so a commit between the read and the wait still wakes us.
    let wake = store.subscribe();
    let (initial, starts) = initial_state(registry, &options).await?;
    let label = options
        .kinds
        .iter()
        .map(|rt| rt.plural)
        .collect::<Vec<_>>()
        .join(",");
    let gauge = metrics.watches.with_label_values(&[label.as_str()]);
    let last = starts.iter().map(|(_, r)| *r).min().unwrap_or(0);
    let filter = Arc::new(Filter {
        kinds: starts
            .iter()
            .map(|(rt, start)| (prefix(rt, options.namespace.as_deref()), *rt, *start))
            .collect(),
        labels: options.labels,
        fields: options.fields,
        skip_heartbeats: options.skip_heartbeats,
    });
    // Taken before the initial state is sent, not after: sending thousands of objects to
    // a busy client (every agent lists every Node) can outlast the cache's window, and a
    // watcher that starts behind it reads and decodes the log by itself. Events queued
    // meanwhile wait in the subscription (past its queue, in the window).
    let early = cache.subscribe(Arc::clone(&filter), last).ok().flatten();
    let (tx, rx) = mpsc::channel::<WatchEvent>(64);
    let feed = Feed {
        tx,
        sent: metrics.watch_events.with_label_values(&[label.as_str()]),
        filter,
        bookmark_kind: options.kinds.first().map_or("", |rt| rt.kind),
    };
    tokio::spawn(async move {
        gauge.inc();
        let deadline = tokio::time::sleep(options.timeout);
        tokio::pin!(deadline);
        'stream: {
            // By value: each object is freed once the connection has taken it, so the
            // initial state shrinks as the client reads it.
            for event in initial {
                if !feed.send(event).await {
                    break 'stream;
                }
            }
            if options.synced_marker && !feed.send(marker("SYNCED", feed.bookmark_kind, last)).await
            {
                break 'stream;
            }
            let mut reported = last;
            let subscription = match early {
                Some(early) if early.can_go_on() => early,
                // Fell out of the window meanwhile (or none was taken): from the log.
                _ => {
                    let Some(subscription) = catch_up(
                        &feed,
                        store,
                        &cache,
                        wake,
                        last,
                        &mut reported,
                        deadline.as_mut(),
                    )
                    .await
                    else {
                        break 'stream;
                    };
                    subscription
                }
            };
            follow(
                &feed,
                subscription,
                options.bookmarks,
                options.hold_nodes,
                reported,
                deadline,
            )
            .await;
        }
        gauge.dec();
    });
    Ok(rx)
}

/// Where each kind's events start: the revision asked for, or (none asked for) the
/// revision its current state was listed at, with that state as ADDED events.
async fn initial_state(
    registry: &Registry,
    options: &WatchOptions,
) -> registry::Result<(Vec<WatchEvent>, Vec<(&'static ResourceType, Revision)>)> {
    let mut initial = Vec::new();
    let mut starts = Vec::new();
    match options.from {
        Some(revision) => {
            let compacted = registry.store().compacted_revision()?;
            if revision < compacted {
                return Err(StoreError::Compacted {
                    requested: revision,
                    compacted,
                }
                .into());
            }
            starts.extend(options.kinds.iter().map(|rt| (*rt, revision)));
        }
        None if options.share_list => {
            let cache = registry.watch_cache();
            for rt in &options.kinds {
                let store = Arc::clone(registry.store());
                let prefix = prefix(rt, options.namespace.as_deref());
                let (kvs, revision) = tokio::task::spawn_blocking(move || store.list(&prefix))
                    .await
                    .map_err(|e| registry::Error::internal(e.to_string()))??;
                for kv in &kvs {
                    let object = cache.listed(kv)?;
                    if options.labels.matches(&labels_of(&object))
                        && options.fields.matches(&object)
                    {
                        initial.push(WatchEvent {
                            type_: "ADDED",
                            kind: rt.kind,
                            object,
                        });
                    }
                }
                starts.push((*rt, revision));
            }
        }
        None => {
            for rt in &options.kinds {
                let (items, revision) = registry
                    .list(
                        rt,
                        options.namespace.as_deref(),
                        &options.labels,
                        &options.fields,
                    )
                    .await?;
                initial.extend(items.into_iter().map(|object| WatchEvent {
                    type_: "ADDED",
                    kind: rt.kind,
                    object: SharedObject::new(object),
                }));
                starts.push((*rt, revision));
            }
        }
    }
    Ok((initial, starts))
}

/// One watcher's side of the channel: what it wants, and the count of what it got.
struct Feed {
    tx: mpsc::Sender<WatchEvent>,
    sent: IntCounter,
    filter: Arc<Filter>,
    bookmark_kind: &'static str,
}

impl Feed {
    /// False once the watcher is gone.
    async fn send(&self, event: WatchEvent) -> bool {
        let ok = self.tx.send(event).await.is_ok();
        if ok {
            self.sent.inc();
        }
        ok
    }

    /// Ends the watch with `error` as its last event.
    async fn end(&self, error: registry::Error) {
        self.send(error_event(error)).await;
    }
}

/// A resume point older than the cache's window: reads the log from `last` until the
/// cache takes the watcher (a watch that lists is subscribed before it sends what it
/// listed, so this is rare). None when the watch ended meanwhile.
async fn catch_up(
    feed: &Feed,
    store: Arc<dyn Store>,
    cache: &Arc<WatchCache>,
    mut wake: watch::Receiver<Revision>,
    mut last: Revision,
    reported: &mut Revision,
    mut deadline: Pin<&mut Sleep>,
) -> Option<Subscription> {
    loop {
        match cache.subscribe(Arc::clone(&feed.filter), last) {
            Ok(Some(subscription)) => return Some(subscription),
            Ok(None) => {}
            Err(e) => {
                feed.end(registry::Error::from(e)).await;
                return None;
            }
        }
        wake.borrow_and_update();
        let read_from = last;
        let reader = Arc::clone(&store);
        let batch =
            tokio::task::spawn_blocking(move || reader.events_after(read_from, BATCH)).await;
        let events = match batch {
            Ok(Ok(events)) => events,
            Ok(Err(e)) => {
                feed.end(registry::Error::from(e)).await;
                return None;
            }
            Err(e) => {
                feed.end(registry::Error::internal(e.to_string())).await;
                return None;
            }
        };
        if events.is_empty() {
            tokio::select! {
                changed = wake.changed() => if changed.is_err() { return None },
                () = feed.tx.closed() => return None,
                () = &mut deadline => return None,
            }
            continue;
        }
        for event in events {
            last = event.revision();
            let Ok(event) = CachedEvent::decode(&event) else {
                continue;
            };
            let Some(rt) = feed.filter.kind_of(&event) else {
                continue;
            };
            if !feed.send(delivered(&event, rt)).await {
                return None;
            }
            *reported = last;
        }
    }
}

/// Passes on what the cache fans out to the watcher, with a bookmark now and then when
/// asked for, until the watcher goes, the deadline passes or the cache ends it.
async fn follow(
    feed: &Feed,
    mut subscription: Subscription,
    bookmarks: bool,
    hold_nodes: Option<Duration>,
    mut reported: Revision,
    mut deadline: Pin<&mut Sleep>,
) {
    let mut progress = subscription.progress();
    let mut next_bookmark = tokio::time::Instant::now();
    let mut held: Option<Held> = None;
    loop {
        let release = held.as_ref().map(|h| h.until);
        tokio::select! {
            // Events first: a bookmark must not overtake one that is waiting.
            biased;
            next = subscription.next() => match next {
                Ok(Some(event)) => {
                    let Some(rt) = feed.filter.kind_of(&event) else {
                        continue;
                    };
                    if let Some(hold) = hold_nodes
                        && (held.is_some() || rt.kind == NODES.kind)
                    {
                        let batch = held.get_or_insert_with(|| Held::new(hold));
                        batch.events.push((event, rt));
                        // A steady stream of events must not keep the batch from going.
                        if !batch.due() {
                            continue;
                        }
                        let Some(sent) = release_held(feed, held.take()).await else {
                            return;
                        };
                        reported = reported.max(sent);
                        continue;
                    }
                    if !feed.send(delivered(&event, rt)).await {
                        return;
                    }
                    reported = event.revision;
                }
                Ok(None) => return,
                Err(end) => {
                    feed.end(registry::Error::from(&end)).await;
                    return;
                }
            },
            () = sleep_until_some(release) => {
                let Some(sent) = release_held(feed, held.take()).await else {
                    return;
                };
                reported = reported.max(sent);
            }
            // Not while events are held: the bookmark's revision would pass them.
            Some(revision) = progressed(&mut progress, reported, next_bookmark), if bookmarks && held.is_none() => {
                // Everything up to `revision` was queued before it was reported, so an
                // empty queue means none of it is still on its way.
                if subscription.is_idle() {
                    if !feed.send(marker("BOOKMARK", feed.bookmark_kind, revision)).await {
                        return;
                    }
                    reported = revision;
                    next_bookmark = tokio::time::Instant::now() + BOOKMARK_INTERVAL;
                }
            }
            () = feed.tx.closed() => return,
            () = &mut deadline => return,
        }
    }
}

/// Events held back behind a Node change (the agents' watch). When thousands of nodes
/// join, each new Node is written twice within moments — created by its join, then its
/// first status — and every agent wants it: sent as they come, that is two messages per
/// join to every agent. Held for a moment, the batch goes out with each Node once, in its
/// latest state at its latest place (watch consumers act on the state, not the steps;
/// one that resumes after a break gets no less than the latest state either), and
/// together, so the connection sends it in few writes.
struct Held {
    until: tokio::time::Instant,
    events: Vec<(Arc<CachedEvent>, &'static ResourceType)>,
}

/// Events held at most: past this many the batch goes at once.
const HELD_AT_MOST: usize = 4096;

impl Held {
    fn new(hold: Duration) -> Self {
        Self {
            until: tokio::time::Instant::now() + hold,
            events: Vec::new(),
        }
    }

    fn due(&self) -> bool {
        self.events.len() >= HELD_AT_MOST || tokio::time::Instant::now() >= self.until
    }

    /// The events to send, in order, each with the type to send it as: a Node's event
    /// only where no later one of the same Node follows, as ADDED if the batch created it.
    fn coalesced(self) -> Vec<(Arc<CachedEvent>, &'static ResourceType, &'static str)> {
        let mut later: HashMap<String, usize> = HashMap::new();
        let mut kept: Vec<(Arc<CachedEvent>, &'static ResourceType, &'static str)> = Vec::new();
        for (event, rt) in self.events.into_iter().rev() {
            let type_ = event.type_;
            if rt.kind != NODES.kind {
                kept.push((event, rt, type_));
                continue;
            }
            match later.get(&event.key) {
                // Created in this batch and changed after: new to the watcher.
                Some(&at) if type_ == "ADDED" && kept[at].2 == "MODIFIED" => {
                    kept[at].2 = "ADDED";
                }
                Some(_) => {}
                None => {
                    later.insert(event.key.clone(), kept.len());
                    kept.push((event, rt, type_));
                }
            }
        }
        kept.reverse();
        kept
    }
}

/// Sends what was held; the revision of its last event, or None once the watcher is gone.
async fn release_held(feed: &Feed, held: Option<Held>) -> Option<Revision> {
    let mut last = 0;
    for (event, rt, type_) in held.map(Held::coalesced).unwrap_or_default() {
        let message = WatchEvent {
            type_,
            ..delivered(&event, rt)
        };
        if !feed.send(message).await {
            return None;
        }
        last = event.revision;
    }
    Some(last)
}

/// Sleeps until `until`, or forever without one (a `select!` branch that is off).
async fn sleep_until_some(until: Option<tokio::time::Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

/// Waits until `not_before`, then until the cache has fanned out past `reported`.
async fn progressed(
    progress: &mut watch::Receiver<Revision>,
    reported: Revision,
    not_before: tokio::time::Instant,
) -> Option<Revision> {
    tokio::time::sleep_until(not_before).await;
    progress.wait_for(|r| *r > reported).await.ok().map(|r| *r)
}

fn delivered(event: &CachedEvent, rt: &ResourceType) -> WatchEvent {
    WatchEvent {
        type_: event.type_,
        kind: rt.kind,
        object: Arc::clone(&event.object),
    }
}

fn marker(type_: &'static str, kind: &'static str, revision: Revision) -> WatchEvent {
    WatchEvent {
        type_,
        kind,
        object: SharedObject::new(
            json!({"kind": kind, "metadata": {"resourceVersion": revision.to_string()}}),
        ),
    }
}

/// The watch's last event: the error as the `Status` a REST client would get.
fn error_event(error: registry::Error) -> WatchEvent {
    WatchEvent {
        type_: "ERROR",
        kind: "Status",
        object: SharedObject::new(ApiError::from(error).status()),
    }
}

/// `GET <collection>?watch=true`: the stream as newline-delimited JSON.
pub async fn start(
    state: &ApiState,
    rt: &'static ResourceType,
    namespace: Option<String>,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(query)?;
    // "" and "0" mean "current state, then changes" as in Kubernetes.
    let from = match query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(rv) => parse_resource_version(rv)?,
    };
    let options = WatchOptions {
        kinds: vec![rt],
        namespace,
        labels,
        fields,
        from,
        bookmarks: query
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true"),
        synced_marker: false,
        timeout: query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs),
        skip_heartbeats: false,
        share_list: false,
        hold_nodes: None,
    };
    let rx = open(&state.registry, &state.metrics, options).await?;
    let api_version = rt.api_version();
    let stream = futures_util::stream::unfold(rx, move |mut rx| {
        let api_version = api_version.clone();
        async move {
            let event = rx.recv().await?;
            // Built around the shared encoding of the object, so it is not encoded again
            // for every watcher; the type is one of a few fixed words.
            let mut line = br#"{"object":"#.to_vec();
            if event.type_ == "BOOKMARK" {
                let mut object = Value::clone(&event.object);
                object["apiVersion"] = json!(api_version);
                line.extend(serde_json::to_vec(&object).unwrap_or_default());
            } else {
                line.extend_from_slice(event.object.json());
            }
            line.extend_from_slice(format!(r#","type":"{}"}}"#, event.type_).as_bytes());
            line.push(b'\n');
            Some((Ok::<_, Infallible>(Bytes::from(line)), rx))
        }
    });
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// The default watch duration, for other front ends of [`open`].
pub fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}
