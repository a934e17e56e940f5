//! Writes of many objects in one store transaction, for the controllers: a ReplicaSet's
//! round of new pods, a scheduling pass's bindings, a pass's events. One transaction is
//! one revision and one trip through the store's commit queue, where the same writes
//! one by one cost a read of the namespace, a task and a commit slot each.

use std::collections::BTreeMap;

use berth_api::{
    Resource, ResourceType,
    core::{Event, ObjectReference, Pod},
    kinds::{EVENTS, PODS},
    meta::{DEFAULT_NAMESPACE, ObjectMeta},
};

use super::{
    Batch, Error, MAX_RETRIES, Registry, Result, decode_error, encode, key, of_kind,
    strategy::{Strategy, with_strategy},
};
use crate::{
    objects::{Kind as _, Object},
    store::{KeyValue, Op, Precondition, Revision, StoreError},
    util,
};

/// A pending pod to bind to a node, at the revision the scheduler decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub resource_version: Revision,
}

/// An event to record, and how many times it happened (Kubernetes' `count`).
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub involved: ObjectReference,
    pub reason: String,
    pub message: String,
    pub type_: &'static str,
    pub count: i32,
}

impl Registry {
    /// Creates every object of `objects` in one transaction: all of them or none (a name
    /// taken meanwhile fails the batch, and its controller plans it again) — or, on a
    /// store that takes fewer operations per transaction than that needs (etcd), in
    /// transactions of as many as fit, one after the other, stopping at the first that
    /// fails. Returns the last revision written, 0 for no objects.
    pub async fn create_many(
        &self,
        rt: &'static ResourceType,
        mut objects: Vec<Object>,
    ) -> Result<Revision> {
        // A namespace check and one or two operations an object fit in half the limit.
        let per_commit = (self.store.max_ops_per_commit() / 2).max(1);
        let mut revision = 0;
        while !objects.is_empty() {
            let rest = objects.split_off(per_commit.min(objects.len()));
            revision = self.create_in_one_commit(rt, objects).await?;
            objects = rest;
        }
        Ok(revision)
    }

    async fn create_in_one_commit(
        &self,
        rt: &'static ResourceType,
        objects: Vec<Object>,
    ) -> Result<Revision> {
        if objects.is_empty() {
            return Ok(0);
        }
        with_strategy!(rt, |strategy| {
            let objects = objects
                .into_iter()
                .map(|object| checked(strategy, rt, object))
                .collect::<Result<Vec<_>>>()?;
            let _counted = self.quota_guard(rt).await;
            let mut attempt = 0;
            loop {
                let ops = self.plan_creations(strategy, rt, &objects).await?;
                match self.commit(ops).await {
                    Ok(revision) => return Ok(revision),
                    // A lost allocation race or a namespace that changed: plan again.
                    Err(Error::Conflict(_)) if attempt < MAX_RETRIES => attempt += 1,
                    Err(e) => return Err(e),
                }
            }
        })
    }

    /// The ops creating `objects`: each namespace is checked once, not once per object.
    async fn plan_creations<S: Strategy>(
        &self,
        strategy: &S,
        rt: &'static ResourceType,
        objects: &[S::Object],
    ) -> Result<Vec<Op>> {
        // Namespaces already checked count as created by this transaction, so `plan`
        // adds no second check; the batch also keeps the objects' allocations apart.
        let mut batch = Batch::default();
        let mut ops = Vec::new();
        for object in objects {
            let namespace = &object.meta().namespace;
            if rt.namespaced && !batch.new_namespaces.contains(namespace) {
                ops.push(self.namespace_check(namespace).await?);
                batch.new_namespaces.insert(namespace.clone());
            }
            ops.extend(
                self.plan(strategy, rt, None, object.clone(), &mut batch, None)
                    .await?
                    .ops,
            );
        }
        Ok(ops)
    }

    /// Binds pending pods to nodes in one transaction, as Kubernetes' binding subresource
    /// does: only `spec.nodeName` changes (and the generation with the spec), so the pod
    /// is not decoded and validated again — the node is one the store holds. A pod that
    /// changed since the scheduler read it, or is bound already, gets a conflict of its
    /// own and the others are bound; should one change between this read and the commit,
    /// the whole batch gets the conflict. One result per binding, in order. A store that
    /// takes fewer operations per transaction than there are bindings (etcd) gets them in
    /// several transactions.
    pub async fn bind_many(&self, bindings: &[Binding]) -> Vec<Result<Revision>> {
        let mut results = Vec::with_capacity(bindings.len());
        for chunk in bindings.chunks(self.store.max_ops_per_commit().max(1)) {
            results.extend(self.bind_in_one_commit(chunk).await);
        }
        results
    }

    async fn bind_in_one_commit(&self, bindings: &[Binding]) -> Vec<Result<Revision>> {
        let rt = &PODS;
        let keys: Vec<String> = bindings
            .iter()
            .map(|b| key(rt, &b.namespace, &b.name))
            .collect();
        let stored = match self
            .blocking(move |s| {
                keys.iter()
                    .map(|k| s.get(k))
                    .collect::<Result<Vec<Option<KeyValue>>, StoreError>>()
            })
            .await
        {
            Ok(stored) => stored,
            Err(e) => return bindings.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut results: Vec<Result<Revision>> = Vec::with_capacity(bindings.len());
        let mut ops = Vec::with_capacity(bindings.len());
        for (binding, kv) in bindings.iter().zip(stored) {
            let op = match kv {
                None => Err(Error::not_found(rt.kind, &binding.name)),
                Some(kv) => bound_pod(binding, &kv.key, &kv.value, kv.mod_revision),
            };
            match op {
                Ok(op) => {
                    ops.push(op);
                    results.push(Ok(0));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if ops.is_empty() {
            return results;
        }
        let committed = self.commit(ops).await;
        results
            .into_iter()
            .map(|result| match (result, &committed) {
                (Ok(_), Ok(revision)) => Ok(*revision),
                (Ok(_), Err(e)) => Err(e.clone()),
                (Err(e), _) => Err(e),
            })
            .collect()
    }

    /// Records events in one transaction per namespace (one being deleted refuses its
    /// own events only); best effort, like [`Registry::record_event`]: an event that
    /// fails to write must not fail the actions it describes.
    pub async fn record_events(&self, events: Vec<EventRecord>) {
        let rt = &EVENTS;
        let now = util::rfc3339_now();
        let mut by_namespace: BTreeMap<String, Vec<Object>> = BTreeMap::new();
        for record in events {
            let event = event_object(record, &now);
            by_namespace
                .entry(event.metadata.namespace.clone())
                .or_default()
                .push(event.into_object());
        }
        let written = futures_util::future::join_all(by_namespace.into_iter().map(
            |(namespace, objects)| async move { (namespace, self.create_many(rt, objects).await) },
        ))
        .await;
        for (namespace, result) in written {
            if let Err(e) = result {
                tracing::warn!("could not record events in namespace {namespace}: {e}");
            }
        }
    }
}

/// An object a controller built, typed and checked as decoding would.
fn checked<S: Strategy>(strategy: &S, rt: &ResourceType, object: Object) -> Result<S::Object> {
    let name = object.name().to_owned();
    let mut typed = of_kind(strategy, object)?;
    berth_api::normalize(&mut typed).map_err(|e| decode_error(rt, &name, e))?;
    Ok(typed)
}

/// The op writing `binding` over the stored pod, or why it cannot be.
fn bound_pod(binding: &Binding, key: &str, stored: &[u8], mod_revision: Revision) -> Result<Op> {
    if mod_revision != binding.resource_version {
        return Err(Error::from(StoreError::Conflict {
            key: key.to_owned(),
            expected: binding.resource_version,
            found: Some(mod_revision),
        }));
    }
    let mut pod: Pod = serde_json::from_slice(stored)
        .map_err(|e| Error::internal(format!("corrupt object at {key}: {e}")))?;
    if !pod.spec.node_name.is_empty() {
        return Err(Error::Conflict(format!(
            "pod {} is already assigned to node {:?}",
            binding.name, pod.spec.node_name
        )));
    }
    pod.spec.node_name.clone_from(&binding.node);
    pod.metadata.generation = pod.metadata.generation.max(1) + 1;
    Ok(Op::Put {
        key: key.to_owned(),
        value: encode(&pod)?,
        precondition: Precondition::ModRevision(mod_revision),
    })
}

/// An Event as [`Registry::record_event`] writes it, with its count.
fn event_object(record: EventRecord, now: &str) -> Event {
    let namespace = match record.involved.namespace.as_str() {
        "" => DEFAULT_NAMESPACE.to_owned(),
        ns => ns.to_owned(),
    };
    Event {
        api_version: "v1".to_owned(),
        kind: "Event".to_owned(),
        metadata: ObjectMeta {
            name: format!(
                "{}.{}",
                record.involved.name,
                util::hex(&util::random_bytes::<8>())
            ),
            namespace,
            ..ObjectMeta::default()
        },
        involved_object: record.involved,
        reason: record.reason,
        message: record.message,
        type_: record.type_.to_owned(),
        count: record.count,
        first_timestamp: now.to_owned(),
        last_timestamp: now.to_owned(),
        source: Some(berth_api::core::EventSource {
            component: "apiserver".to_owned(),
            host: String::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A registry over a fresh store, with the `default` namespace.
    async fn registry(dir: &tempfile::TempDir) -> Registry {
        let registry = Registry::for_tests(dir.path());
        registry
            .ensure_namespace("default")
            .await
            .expect("namespace");
        registry
    }

    fn pod(name: &str) -> Object {
        let pod: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}))
        .expect("a pod");
        pod.into_object()
    }

    fn binding(name: &str, node: &str, resource_version: Revision) -> Binding {
        Binding {
            namespace: "default".to_owned(),
            name: name.to_owned(),
            node: node.to_owned(),
            resource_version,
        }
    }

    #[tokio::test]
    async fn creations_are_all_or_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = registry(&dir).await;
        let first = registry
            .create_many(&PODS, vec![pod("a"), pod("b")])
            .await
            .expect("created");
        let stored = |name: &'static str| {
            let registry = registry.clone();
            async move { registry.get(&PODS, "default", name).await }
        };
        assert_eq!(
            stored("a").await.expect("a")["metadata"]["resourceVersion"],
            first.to_string()
        );
        assert_eq!(
            stored("b").await.expect("b")["metadata"]["resourceVersion"],
            first.to_string()
        );
        let taken = registry
            .create_many(&PODS, vec![pod("c"), pod("a")])
            .await
            .expect_err("a is taken");
        assert!(matches!(taken, Error::AlreadyExists(_)), "{taken}");
        assert!(stored("c").await.is_err(), "c must not be created alone");
    }

    #[tokio::test]
    async fn binds_pods_still_at_the_revision_read_and_refuses_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = registry(&dir).await;
        let read = registry
            .create_many(&PODS, vec![pod("a"), pod("b"), pod("c")])
            .await
            .expect("created");
        let results = registry
            .bind_many(&[
                binding("a", "n1", read),
                binding("b", "n1", read - 1),
                binding("c", "n2", read),
                binding("gone", "n2", read),
            ])
            .await;
        let [Ok(bound), Err(stale), Ok(also_bound), Err(gone)] = results.as_slice() else {
            panic!("{results:?}");
        };
        assert_eq!(bound, also_bound, "one transaction");
        assert!(*bound > read);
        assert!(matches!(stale, Error::Conflict(_)), "{stale}");
        assert!(gone.is_not_found(), "{gone}");
        let a = registry.get(&PODS, "default", "a").await.expect("a");
        assert_eq!(a["spec"]["nodeName"], "n1");
        assert_eq!(a["metadata"]["generation"], 2);
        assert_eq!(a["metadata"]["resourceVersion"], bound.to_string());
        let b = registry.get(&PODS, "default", "b").await.expect("b");
        assert_eq!(b.pointer("/spec/nodeName"), None);
        // Bound already: even at its current revision, no second binding.
        let again = registry.bind_many(&[binding("a", "n2", *bound)]).await;
        let [Err(again)] = again.as_slice() else {
            panic!("{again:?}");
        };
        assert!(matches!(again, Error::Conflict(_)), "{again}");
        let a = registry.get(&PODS, "default", "a").await.expect("a");
        assert_eq!(a["spec"]["nodeName"], "n1");
    }
}
