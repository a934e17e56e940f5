//! Watch streams: newline-delimited `{"type": ..., "object": ...}` events, read from the
//! store's event log so a watcher resuming from a resourceVersion sees every change
//! after it, in order, or a 410 `Expired` error if that history was compacted.

use std::{collections::HashMap, convert::Infallible, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::header,
    response::{IntoResponse, Response},
};
use berth_api::ResourceType;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{ApiState, error::ApiError, resources::selectors};
use crate::{
    registry::{decode_stored, labels_of, parse_resource_version, prefix},
    store::{EventKind, Revision, StoreError},
};

/// Revisions read from the log per batch; bounds memory for a watcher far behind.
const BATCH: usize = 500;
/// Kubernetes closes watches after 30–60 minutes so clients re-establish them through
/// load balancers; one fixed bound keeps tests deterministic.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

pub async fn start(
    state: &ApiState,
    rt: &'static ResourceType,
    namespace: Option<String>,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(query)?;
    // "" and "0" mean "current state, then changes" as in Kubernetes.
    let from = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => parse_resource_version(rv)?,
    };
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let prefix = prefix(rt, namespace.as_deref());
    let store = std::sync::Arc::clone(state.registry.store());
    let metrics = state.metrics.clone();

    // Subscribe before reading so a commit between the read and the wait still wakes us.
    let mut wake = store.subscribe();
    let start = match from {
        Some(revision) => {
            let compacted = store.compacted_revision()?;
            if revision < compacted {
                return Err(StoreError::Compacted {
                    requested: revision,
                    compacted,
                }
                .into());
            }
            Initial {
                revision,
                items: Vec::new(),
            }
        }
        None => {
            let (items, revision) = state
                .registry
                .list(rt, namespace.as_deref(), &labels, &fields)
                .await?;
            Initial { revision, items }
        }
    };

    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let gauge = metrics.watches.with_label_values(&[rt.plural]);
        gauge.inc();
        let events_sent = metrics.watch_events.with_label_values(&[rt.plural]);
        let send = async |value: Value| -> bool {
            let mut line = value.to_string().into_bytes();
            line.push(b'\n');
            let ok = tx.send(Bytes::from(line)).await.is_ok();
            if ok {
                events_sent.inc();
            }
            ok
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut last = start.revision;
        let mut reported = last;
        'stream: {
            for object in start.items {
                if !send(json!({"type": "ADDED", "object": object})).await {
                    break 'stream;
                }
            }
            loop {
                wake.borrow_and_update();
                let read_from = last;
                let store = std::sync::Arc::clone(&store);
                let batch =
                    tokio::task::spawn_blocking(move || store.events_after(read_from, BATCH)).await;
                let events = match batch {
                    Ok(Ok(events)) => events,
                    Ok(Err(e)) => {
                        send(json!({"type": "ERROR", "object": ApiError::from(e).status()})).await;
                        break 'stream;
                    }
                    Err(e) => {
                        send(json!({"type": "ERROR", "object": ApiError::internal(e.to_string()).status()})).await;
                        break 'stream;
                    }
                };
                if events.is_empty() {
                    if bookmarks && last > reported {
                        reported = last;
                        let bookmark = json!({"type": "BOOKMARK", "object": {
                            "apiVersion": rt.api_version(), "kind": rt.kind,
                            "metadata": {"resourceVersion": last.to_string()},
                        }});
                        if !send(bookmark).await {
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
                    if !event.kv.key.starts_with(&prefix) {
                        continue;
                    }
                    let Ok(object) = decode_stored(&event.kv) else {
                        continue;
                    };
                    if !labels.matches(&labels_of(&object)) || !fields.matches(&object) {
                        continue;
                    }
                    let kind = match event.kind {
                        EventKind::Delete => "DELETED",
                        EventKind::Put if event.is_create() => "ADDED",
                        EventKind::Put => "MODIFIED",
                    };
                    if !send(json!({"type": kind, "object": object})).await {
                        break 'stream;
                    }
                    reported = last;
                }
            }
        }
        gauge.dec();
    });

    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

struct Initial {
    revision: Revision,
    items: Vec<Value>,
}
