//! The controllers' local cache (a reflector): one list of the whole store, then the
//! store's event log applied in order. Reconcilers read snapshots of it instead of
//! calling the API, and the runtime waits for it to reach its own writes before
//! reconciling again, so a reconcile never acts on state older than its last write.

use std::{sync::Arc, time::Duration};

use berth_api::ResourceType;
use tokio::sync::{RwLock, mpsc, watch};

use super::index::Index;
use crate::{
    objects::{Kind, Object, key, prefix},
    store::{EventKind, KeyValue, Revision, Store, StoreError},
};

type Objects = imbl::OrdMap<String, Arc<Object>>;

/// An immutable view of every object at one revision, each decoded once to its kind's
/// type when the cache applied it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// A persistent map of shared objects: the cache changes its map while reconciles
    /// (one per lane of controllers) still read the last snapshot, and a change then
    /// copies only the path to it, not the whole map — with tens of thousands of pods a
    /// copy of every key on each change cost more than the reconciles.
    objects: Objects,
    /// Sums over the objects, changed with them (see [`Index`]).
    index: Index,
    pub revision: Revision,
}

impl Snapshot {
    fn new(objects: Objects, revision: Revision) -> Self {
        let mut index = Index::default();
        for object in objects.values() {
            index.count(object, true);
        }
        Self {
            objects,
            index,
            revision,
        }
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Stores `object` under `key`; returns what it replaced.
    fn insert(&mut self, key: String, object: Arc<Object>) -> Option<Arc<Object>> {
        let previous = self.objects.insert(key, Arc::clone(&object));
        // The old version leaves first: a Node keeps its place under the same name.
        if let Some(previous) = &previous {
            self.index.count(previous, false);
        }
        self.index.count(&object, true);
        previous
    }

    fn remove(&mut self, key: &str) -> Option<Arc<Object>> {
        let previous = self.objects.remove(key);
        if let Some(previous) = &previous {
            self.index.count(previous, false);
        }
        previous
    }

    pub fn get<K: Kind>(&self, namespace: &str, name: &str) -> Option<&K> {
        self.get_any(K::resource_type(), namespace, name)
            .and_then(K::of)
    }

    /// Objects of a kind, in one namespace or (None) all of them, in key order.
    pub fn list<'a, K: Kind>(
        &'a self,
        namespace: Option<&str>,
    ) -> impl Iterator<Item = &'a K> + 'a {
        self.list_any(K::resource_type(), namespace)
            .filter_map(K::of)
    }

    /// [`Self::get`] of a kind known only at run time (an owner reference's).
    pub fn get_any(&self, rt: &ResourceType, namespace: &str, name: &str) -> Option<&Object> {
        self.objects.get(&key(rt, namespace, name)).map(|o| &**o)
    }

    /// [`Self::list`] of a kind known only at run time (every kind of a namespace).
    pub fn list_any<'a>(
        &'a self,
        rt: &ResourceType,
        namespace: Option<&str>,
    ) -> impl Iterator<Item = &'a Object> + 'a {
        let prefix = prefix(rt, namespace);
        self.objects
            .range::<_, String>(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(_, o)| &**o)
    }

    /// For tests: a snapshot from objects, keyed like the store.
    #[cfg(test)]
    pub fn from_objects(objects: impl IntoIterator<Item = Object>, revision: Revision) -> Self {
        let objects = objects
            .into_iter()
            .map(|object| {
                let key = key(object.resource_type(), object.namespace(), object.name());
                (key, Arc::new(object))
            })
            .collect();
        Self::new(objects, revision)
    }
}

/// A change the cache applied: the object after it (for deletes, its last state).
/// Objects are shared with the snapshot, and a change with every lane of controllers.
#[derive(Debug, Clone)]
pub struct Change {
    pub object: Arc<Object>,
    pub deleted: bool,
    /// The object as the cache had it before, None if it had not (a creation, or the
    /// first list). It lets a reconciler tell which fields changed: a node's heartbeat
    /// rewrites its status every few seconds, and only some of those writes matter.
    pub previous: Option<Arc<Object>>,
}

impl Change {
    /// The changed object, if it is of kind `K`.
    pub fn as_kind<K: Kind>(&self) -> Option<&K> {
        K::of(&self.object)
    }

    /// The object before the change, if there was one and it is of kind `K`.
    pub fn previous_as<K: Kind>(&self) -> Option<&K> {
        self.previous.as_deref().and_then(K::of)
    }

    /// (namespace, name) of the changed object.
    pub fn key(&self) -> (String, String) {
        (
            self.object.namespace().to_owned(),
            self.object.name().to_owned(),
        )
    }
}

/// Where the cache sends what it applied: one receiver per lane of controllers.
pub type ChangeSenders = Vec<mpsc::UnboundedSender<Arc<Vec<Change>>>>;

pub struct Cache {
    snapshot: RwLock<Arc<Snapshot>>,
    revision: watch::Sender<Revision>,
}

impl Cache {
    /// Starts the reflector; each of `changes` receives every applied change (and, after
    /// a relist, every object) so the runtimes can enqueue work.
    pub async fn start(
        store: Arc<dyn Store>,
        changes: ChangeSenders,
    ) -> Result<Arc<Self>, StoreError> {
        let initial = list_all(&store).await?;
        let (revision, _) = watch::channel(initial.revision);
        let all = initial
            .objects
            .values()
            .map(|object| Change {
                object: Arc::clone(object),
                deleted: false,
                previous: None,
            })
            .collect();
        let cache = Arc::new(Self {
            snapshot: RwLock::new(Arc::new(initial)),
            revision,
        });
        send(&changes, all);
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

    async fn reflect(self: Arc<Self>, store: Arc<dyn Store>, changes: ChangeSenders) {
        let mut wake = store.subscribe();
        loop {
            wake.borrow_and_update();
            let from = self.snapshot.read().await.revision;
            let reader = Arc::clone(&store);
            let events = tokio::task::spawn_blocking(move || reader.events_after(from, 1000)).await;
            let applied = match events {
                Ok(Ok(events)) if events.is_empty() => {
                    if wake.changed().await.is_err() || changes.iter().all(|c| c.is_closed()) {
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
            if !send(&changes, applied) {
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
            let Some(object) = decode(&event.kv) else {
                continue;
            };
            let deleted = event.kind == EventKind::Delete;
            let object = Arc::new(object);
            let previous = if deleted {
                snapshot.remove(&event.kv.key)
            } else {
                snapshot.insert(event.kv.key.clone(), Arc::clone(&object))
            };
            applied.push(Change {
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
            .map(|(_, v)| Change {
                object: Arc::clone(v),
                deleted: true,
                previous: Some(Arc::clone(v)),
            })
            .collect();
        changes.extend(fresh.objects.iter().map(|(k, v)| Change {
            object: Arc::clone(v),
            deleted: false,
            previous: guard.objects.get(k).cloned(),
        }));
        let revision = fresh.revision;
        *guard = Arc::new(fresh);
        drop(guard);
        self.revision.send_replace(revision);
        changes
    }
}

/// Sends a batch to every lane; false once none is left to receive.
fn send(changes: &ChangeSenders, batch: Vec<Change>) -> bool {
    let batch = Arc::new(batch);
    let mut delivered = false;
    for lane in changes {
        delivered |= lane.send(Arc::clone(&batch)).is_ok();
    }
    delivered
}

async fn list_all(store: &Arc<dyn Store>) -> Result<Snapshot, StoreError> {
    let store = Arc::clone(store);
    let (kvs, revision) = tokio::task::spawn_blocking(move || store.list("/"))
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))??;
    let objects = kvs
        .iter()
        .filter_map(|kv| decode(kv).map(|object| (kv.key.clone(), Arc::new(object))))
        .collect();
    Ok(Snapshot::new(objects, revision))
}

/// The object at `kv`; None for keys that hold none. An object that does not decode was
/// validated on write, so only an incompatible upgrade gets here: it is left out, as if
/// it were not there, and said so.
fn decode(kv: &KeyValue) -> Option<Object> {
    match Object::decode(kv)? {
        Ok(object) => Some(object),
        Err(e) => {
            tracing::warn!("the controllers' cache leaves out an object: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use berth_api::core::{Node, Pod, PodStatus};
    use serde_json::json;

    use super::*;
    use crate::controllers::fixtures::typed;

    fn node(name: &str, ready: bool) -> Node {
        typed(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi"},
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}),
        )
    }

    fn pod(name: &str, owner: &str, cpu: &str) -> Pod {
        typed(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner, "uid": owner, "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "i",
                "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]}}))
    }

    /// Applies `object` (or deletes it) as the cache does, then checks the index kept
    /// up to date change by change against one computed afresh from the same objects.
    fn step(snapshot: &mut Snapshot, object: impl Kind, delete: bool) {
        let object = object.into_object();
        let key = key(object.resource_type(), object.namespace(), object.name());
        if delete {
            snapshot.remove(&key);
        } else {
            snapshot.insert(key, Arc::new(object));
        }
        let afresh = Snapshot::new(snapshot.objects.clone(), snapshot.revision);
        assert_eq!(snapshot.index(), afresh.index());
    }

    #[test]
    fn the_index_kept_change_by_change_equals_a_full_recount() {
        let mut snapshot = Snapshot::default();
        step(&mut snapshot, node("a", true), false);
        step(&mut snapshot, node("b", true), false);
        let pods: Vec<Pod> = (0..6)
            .map(|i| pod(&format!("p{i}"), ["rs1", "rs2"][i % 2], "250m"))
            .collect();
        for p in &pods {
            step(&mut snapshot, p.clone(), false);
        }
        // Bound, then running and ready.
        let mut bound = Vec::new();
        for (i, p) in pods.iter().enumerate() {
            let mut p = p.clone();
            p.spec.node_name = ["a", "b"][i % 3 % 2].to_owned();
            step(&mut snapshot, p.clone(), false);
            p.status = Some(typed::<PodStatus>(json!({"phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}]})));
            step(&mut snapshot, p.clone(), false);
            bound.push(p);
        }
        let index = snapshot.index();
        assert_eq!(index.usage("a").pods + index.usage("b").pods, 6);
        assert_eq!(index.usage("a").cpu() + index.usage("b").cpu(), 1500);
        assert_eq!(index.replicas("default", "rs1").ready, 3);
        assert_eq!(index.spread("rs2").map(|(_, n)| n).sum::<usize>(), 3);
        // One finishes, one is being deleted, one goes, a node changes and one goes.
        let mut done = bound[0].clone();
        if let Some(status) = done.status.as_mut() {
            status.phase = "Succeeded".to_owned();
        }
        step(&mut snapshot, done, false);
        let mut leaving = bound[1].clone();
        leaving.metadata.deletion_timestamp = "2026-01-01T00:00:00Z".to_owned();
        step(&mut snapshot, leaving, false);
        step(&mut snapshot, bound[2].clone(), true);
        step(&mut snapshot, node("a", false), false);
        step(&mut snapshot, node("b", true), true);
        let index = snapshot.index();
        assert_eq!(index.replicas("default", "rs1").active, 1);
        assert_eq!(index.replicas("default", "rs2").active, 2);
        assert_eq!(index.nodes().count(), 1);
        // Everything gone: nothing left behind.
        for p in &bound[1..] {
            step(&mut snapshot, p.clone(), true);
        }
        step(&mut snapshot, bound[0].clone(), true);
        step(&mut snapshot, node("a", true), true);
        assert_eq!(snapshot.index(), &Index::default());
    }
}
