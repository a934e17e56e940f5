//! Watch streams, read from the store's event log so a watcher resuming from a
//! resourceVersion sees every change after it, in order, or an `Expired` error if that
//! history was compacted. [`open`] is shared by the REST watch (newline-delimited JSON)
//! and the agents' gRPC watches.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::header,
    response::{IntoResponse, Response},
};
use berth_api::{
    ResourceType,
    selector::{FieldSelector, Selector},
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{ApiState, error::ApiError, resources::selectors};
use crate::{
    metrics::Metrics,
    registry::{Registry, decode_stored, labels_of, parse_resource_version, prefix},
    store::{EventKind, Revision, StoreError},
};

/// Revisions read from the log per batch; bounds memory for a watcher far behind.
const BATCH: usize = 500;
/// Kubernetes closes watches after 30–60 minutes so clients re-establish them through
/// load balancers; one fixed bound keeps tests deterministic.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent {
    /// `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`, `SYNCED` or `ERROR`.
    pub type_: &'static str,
    pub kind: &'static str,
    pub object: Value,
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
}

/// Starts a watch; events arrive on the returned channel until it is dropped, the
/// timeout passes, or an `ERROR` event ends it.
pub async fn open(
    registry: &Registry,
    metrics: &Metrics,
    options: WatchOptions,
) -> Result<mpsc::Receiver<WatchEvent>, ApiError> {
    let store = Arc::clone(registry.store());
    // Subscribe before reading so a commit between the read and the wait still wakes us.
    let mut wake = store.subscribe();
    let mut initial = Vec::new();
    // Per kind: deliver log events only after the revision its state was read at.
    let mut starts = Vec::new();
    match options.from {
        Some(revision) => {
            let compacted = store.compacted_revision()?;
            if revision < compacted {
                return Err(StoreError::Compacted {
                    requested: revision,
                    compacted,
                }
                .into());
            }
            starts.extend(options.kinds.iter().map(|rt| (*rt, revision)));
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
                    object,
                }));
                starts.push((*rt, revision));
            }
        }
    }
    let label = options
        .kinds
        .iter()
        .map(|rt| rt.plural)
        .collect::<Vec<_>>()
        .join(",");
    let gauge = metrics.watches.with_label_values(&[label.as_str()]);
    let sent = metrics.watch_events.with_label_values(&[label.as_str()]);
    let prefixes: Vec<(String, &'static ResourceType, Revision)> = starts
        .iter()
        .map(|(rt, start)| (prefix(rt, options.namespace.as_deref()), *rt, *start))
        .collect();
    let mut last = starts.iter().map(|(_, r)| *r).min().unwrap_or(0);
    let (tx, rx) = mpsc::channel::<WatchEvent>(64);
    tokio::spawn(async move {
        gauge.inc();
        let send = async |event: WatchEvent| -> bool {
            let ok = tx.send(event).await.is_ok();
            if ok {
                sent.inc();
            }
            ok
        };
        let deadline = tokio::time::sleep(options.timeout);
        tokio::pin!(deadline);
        let bookmark_kind = options.kinds.first().map_or("", |rt| rt.kind);
        let mut reported = last;
        'stream: {
            for event in initial {
                if !send(event).await {
                    break 'stream;
                }
            }
            if options.synced_marker && !send(marker("SYNCED", bookmark_kind, last)).await {
                break 'stream;
            }
            loop {
                wake.borrow_and_update();
                let read_from = last;
                let reader = Arc::clone(&store);
                let batch =
                    tokio::task::spawn_blocking(move || reader.events_after(read_from, BATCH))
                        .await;
                let events = match batch {
                    Ok(Ok(events)) => events,
                    Ok(Err(e)) => {
                        send(error_event(&ApiError::from(e))).await;
                        break 'stream;
                    }
                    Err(e) => {
                        send(error_event(&ApiError::internal(e.to_string()))).await;
                        break 'stream;
                    }
                };
                if events.is_empty() {
                    if options.bookmarks && last > reported {
                        reported = last;
                        if !send(marker("BOOKMARK", bookmark_kind, last)).await {
                            break 'stream;
                        }
                    }
                    tokio::select! {
                        changed = wake.changed() => if changed.is_err() { break 'stream },
                        () = tx.closed() => break 'stream,
                        () = &mut deadline => break 'stream,
                    }
                    continue;
                }
                for event in events {
                    last = event.revision();
                    let Some((_, rt, _)) = prefixes.iter().find(|(p, _, start)| {
                        event.kv.key.starts_with(p.as_str()) && last > *start
                    }) else {
                        continue;
                    };
                    let Ok(object) = decode_stored(&event.kv) else {
                        continue;
                    };
                    if !options.labels.matches(&labels_of(&object))
                        || !options.fields.matches(&object)
                    {
                        continue;
                    }
                    let type_ = match event.kind {
                        EventKind::Delete => "DELETED",
                        EventKind::Put if event.is_create() => "ADDED",
                        EventKind::Put => "MODIFIED",
                    };
                    if !send(WatchEvent {
                        type_,
                        kind: rt.kind,
                        object,
                    })
                    .await
                    {
                        break 'stream;
                    }
                    reported = last;
                }
            }
        }
        gauge.dec();
    });
    Ok(rx)
}

fn marker(type_: &'static str, kind: &'static str, revision: Revision) -> WatchEvent {
    WatchEvent {
        type_,
        kind,
        object: json!({"kind": kind, "metadata": {"resourceVersion": revision.to_string()}}),
    }
}

fn error_event(error: &ApiError) -> WatchEvent {
    WatchEvent {
        type_: "ERROR",
        kind: "Status",
        object: error.status(),
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
    };
    let rx = open(&state.registry, &state.metrics, options).await?;
    let api_version = rt.api_version();
    let stream = futures_util::stream::unfold(rx, move |mut rx| {
        let api_version = api_version.clone();
        async move {
            let event = rx.recv().await?;
            let mut object = event.object;
            if event.type_ == "BOOKMARK" {
                object["apiVersion"] = json!(api_version);
            }
            let mut line = json!({"type": event.type_, "object": object})
                .to_string()
                .into_bytes();
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
