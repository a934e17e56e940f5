//! The controllers' local cache (a reflector): one list of the whole store, then the
//! store's event log applied in order. Reconcilers read snapshots of it instead of
//! calling the API, and the runtime waits for it to reach its own writes before
//! reconciling again, so a reconcile never acts on state older than its last write.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use berth_api::ResourceType;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{RwLock, mpsc, watch};

use crate::{
    registry::{decode_stored, key, prefix},
    store::{EventKind, Revision, Store, StoreError},
};

/// An immutable view of every object at one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Objects are shared: the cache copies the map when it changes while a reconcile
    /// still reads the last snapshot, and with tens of thousands of pods a copy of every
    /// object each time would cost more than the reconcile.
    objects: BTreeMap<String, Arc<Value>>,
    pub revision: Revision,
}

impl Snapshot {
    pub fn get(&self, rt: &ResourceType, namespace: &str, name: &str) -> Option<&Value> {
        self.objects.get(&key(rt, namespace, name)).map(|v| &**v)
    }

    /// Objects of a kind, in one namespace or (None) all of them, in key order.
    pub fn list<'a>(
        &'a self,
        rt: &ResourceType,
        namespace: Option<&str>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        let prefix = prefix(rt, namespace);
        self.objects
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| &**v)
    }

    /// Typed objects of a kind; objects that do not decode are skipped (they were
    /// validated on write, so this only happens across incompatible upgrades).
    pub fn typed<T: DeserializeOwned>(&self, rt: &ResourceType, namespace: Option<&str>) -> Vec<T> {
        self.list(rt, namespace)
            .filter_map(|v| T::deserialize(v).ok())
            .collect()
    }

    /// For tests and hollow setups: a snapshot from objects, keyed like the store.
    pub fn from_objects(
        objects: impl IntoIterator<Item = (&'static ResourceType, Value)>,
        revision: Revision,
    ) -> Self {
        let objects = objects
            .into_iter()
            .map(|(rt, v)| {
                let ns = v
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let name = v
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                (key(rt, ns, name), Arc::new(v))
            })
            .collect();
        Self { objects, revision }
    }
}

/// A change the cache applied: the object after it (for deletes, its last state).
#[derive(Debug, Clone)]
pub struct Change {
    pub key: String,
    pub object: Value,
    pub deleted: bool,
    /// The object as the cache had it before, None if it had not (a creation, or the
    /// first list). It lets a reconciler tell which fields changed: a node's heartbeat
    /// rewrites its status every few seconds, and only some of those writes matter.
    pub previous: Option<Value>,
}

pub struct Cache {
    snapshot: RwLock<Arc<Snapshot>>,
    revision: watch::Sender<Revision>,
}

impl Cache {
    /// Starts the reflector; `changes` receives every applied change (and, after a
    /// relist, every object) so the runtime can enqueue work.
    pub async fn start(
        store: Arc<dyn Store>,
        changes: mpsc::UnboundedSender<Vec<Change>>,
    ) -> Result<Arc<Self>, StoreError> {
        let initial = list_all(&store).await?;
        let (revision, _) = watch::channel(initial.revision);
        let all = initial
            .objects
            .iter()
            .map(|(k, v)| Change {
                key: k.clone(),
                object: Value::clone(v),
                deleted: false,
                previous: None,
            })
            .collect();
        let cache = Arc::new(Self {
            snapshot: RwLock::new(Arc::new(initial)),
            revision,
        });
        let _ = changes.send(all);
        tokio::spawn(Arc::clone(&cache).reflect(store, changes));
        Ok(cache)
    }

    pub async fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&*self.snapshot.read().await)
    }

    /// Waits until the cache has applied `revision`.
    pub async fn wait_for(&self, revision: Revision) {
        let mut rx = self.revision.subscribe();
        // Ends early only if the reflector is gone, when waiting longer cannot help.
        let _ = rx.wait_for(|r| *r >= revision).await;
    }

    async fn reflect(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        changes: mpsc::UnboundedSender<Vec<Change>>,
    ) {
        let mut wake = store.subscribe();
        loop {
            wake.borrow_and_update();
            let from = self.snapshot.read().await.revision;
            let reader = Arc::clone(&store);
            let events = tokio::task::spawn_blocking(move || reader.events_after(from, 1000)).await;
            let applied = match events {
                Ok(Ok(events)) if events.is_empty() => {
                    if wake.changed().await.is_err() || changes.is_closed() {
                        return;
                    }
                    continue;
                }
                Ok(Ok(events)) => self.apply(events).await,
                Ok(Err(StoreError::Compacted { .. })) => match list_all(&store).await {
                    // Fell behind compaction: start over from a fresh list, like a watch 410.
                    Ok(fresh) => self.replace(fresh).await,
                    Err(e) => {
                        tracing::warn!("cache relist failed: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
                Ok(Err(e)) => {
                    tracing::warn!("cache watch failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!("cache task failed: {e}");
                    return;
                }
            };
            if changes.send(applied).is_err() {
                return;
            }
        }
    }

    async fn apply(&self, events: Vec<crate::store::Event>) -> Vec<Change> {
        let mut guard = self.snapshot.write().await;
        let snapshot = Arc::make_mut(&mut guard);
        let mut applied = Vec::with_capacity(events.len());
        for event in events {
            snapshot.revision = event.revision();
            let Ok(object) = decode_stored(&event.kv) else {
                continue;
            };
            let deleted = event.kind == EventKind::Delete;
            // The replaced value is moved out of the map, not copied.
            let previous = if deleted {
                snapshot.objects.remove(&event.kv.key)
            } else {
                snapshot
                    .objects
                    .insert(event.kv.key.clone(), Arc::new(object.clone()))
            };
            // Copied only if a snapshot still being read shares it.
            let previous = previous.map(Arc::unwrap_or_clone);
            applied.push(Change {
                key: event.kv.key,
                object,
                deleted,
                previous,
            });
        }
        let revision = snapshot.revision;
        drop(guard);
        self.revision.send_replace(revision);
        applied
    }

    async fn replace(&self, fresh: Snapshot) -> Vec<Change> {
        let mut guard = self.snapshot.write().await;
        let mut changes: Vec<Change> = guard
            .objects
            .iter()
            .filter(|(k, _)| !fresh.objects.contains_key(*k))
            .map(|(k, v)| Change {
                key: k.clone(),
                object: Value::clone(v),
                deleted: true,
                previous: Some(Value::clone(v)),
            })
            .collect();
        changes.extend(fresh.objects.iter().map(|(k, v)| Change {
            key: k.clone(),
            object: Value::clone(v),
            deleted: false,
            previous: guard.objects.get(k).map(|v| Value::clone(v)),
        }));
        let revision = fresh.revision;
        *guard = Arc::new(fresh);
        drop(guard);
        self.revision.send_replace(revision);
        changes
    }
}

async fn list_all(store: &Arc<dyn Store>) -> Result<Snapshot, StoreError> {
    let store = Arc::clone(store);
    let (kvs, revision) = tokio::task::spawn_blocking(move || store.list("/"))
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))??;
    let objects = kvs
        .iter()
        .filter_map(|kv| {
            decode_stored(kv)
                .ok()
                .map(|v| (kv.key.clone(), Arc::new(v)))
        })
        .collect();
    Ok(Snapshot { objects, revision })
}
