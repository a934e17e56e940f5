//! Resource semantics on top of the key-value store: keys, server-owned metadata,
//! optimistic concurrency, status subresources, Deployment revision history, apply,
//! scale and rollback. HTTP-free, so controllers in this process can use it directly.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
};

use axum::http::StatusCode;
use berth_api::{
    MAX_OBJECT_BYTES, RESOURCE_TYPES, ResourceType, Source,
    apps::REVISION_ANNOTATION,
    core::{Namespace, Service},
    find_by_plural,
    manifest::ManifestObject,
    meta::DEFAULT_NAMESPACE,
    selector::{FieldSelector, Selector},
    validation::FieldError,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    allocation::{self, Ranges},
    api::error::ApiError,
    metrics::Metrics,
    store::{KeyValue, Op, Precondition, Revision, Store, StoreError},
    util,
    watch_cache::WatchCache,
};

pub mod batch;

/// Server-driven read-modify-write loops retry this often on a conflict before giving up.
const MAX_RETRIES: usize = 8;

#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    metrics: Metrics,
    ranges: Arc<Ranges>,
    watch_cache: Arc<WatchCache>,
}

static NAMESPACES: ResourceType = ResourceType::of::<Namespace>();
static SERVICES: ResourceType = ResourceType::of::<Service>();

/// Where an object lives in the store: `/<group or core>/<plural>/<namespace>/<name>`
/// (no namespace segment for cluster-scoped kinds).
pub fn key(rt: &ResourceType, namespace: &str, name: &str) -> String {
    format!("{}{name}", prefix(rt, Some(namespace)))
}

pub fn prefix(rt: &ResourceType, namespace: Option<&str>) -> String {
    let group = if rt.group.is_empty() {
        "core"
    } else {
        rt.group
    };
    match namespace {
        Some(ns) if rt.namespaced => format!("/{group}/{}/{ns}/", rt.plural),
        _ => format!("/{group}/{}/", rt.plural),
    }
}

/// The stored JSON with `metadata.resourceVersion` stamped from the store's revision.
pub fn decode_stored(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut object: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("corrupt object at {}: {e}", kv.key)))?;
    object["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
    Ok(object)
}

pub fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn name_of(object: &Value) -> &str {
    str_at(object, "/metadata/name")
}

pub fn namespace_of(object: &Value) -> &str {
    str_at(object, "/metadata/namespace")
}

/// `resourceVersion` as a client sent it: empty means "no precondition".
pub fn parse_resource_version(text: &str) -> Result<Option<Revision>, ApiError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        ApiError::bad_request(format!("resourceVersion {text:?} is not a revision number"))
    })
}

fn encode(object: &Value) -> Result<Vec<u8>, ApiError> {
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        // Derived from the store's own revision on every read; storing it would go stale.
        meta.remove("resourceVersion");
    }
    let bytes = serde_json::to_vec(&object).map_err(|e| ApiError::internal(e.to_string()))?;
    if bytes.len() > MAX_OBJECT_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!(
                "object is {} bytes; the limit is {MAX_OBJECT_BYTES}",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

/// What `apply` did with one object.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `created`, `configured` or `unchanged`.
    pub action: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A planned write of one object: the ops and the object as it will read back.
struct Planned {
    ops: Vec<Op>,
    object: Value,
    changed: bool,
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, metrics: Metrics, ranges: Ranges) -> Self {
        Self {
            watch_cache: WatchCache::new(Arc::clone(&store)),
            store,
            metrics,
            ranges: Arc::new(ranges),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn ranges(&self) -> &Ranges {
        &self.ranges
    }

    /// Writes the allocation keys of Services that hold values without them (stored
    /// before allocation existed), so nothing else can take those values. Two Services
    /// holding the same value are reported; the first keeps it.
    pub async fn reserve_held_values(&self) -> Result<(), ApiError> {
        let (services, _) = self
            .list(
                &SERVICES,
                None,
                &Selector::default(),
                &FieldSelector::default(),
            )
            .await?;
        for object in services {
            let service = typed_service(&object)?;
            for key in allocation::claims(&service) {
                if let Some(kv) = self.read(key.clone()).await? {
                    let holder = decode_stored(&kv)?;
                    let owner = str_at(&holder, "/owner/uid");
                    if owner != service.metadata.uid {
                        tracing::warn!(service = %name_of(&object), "{key} is held by another object ({owner})");
                    }
                    continue;
                }
                let ops = allocation::claim_ops(
                    &BTreeSet::new(),
                    &BTreeSet::from([key.clone()]),
                    &object,
                );
                if let Err(e) = self.commit(ops).await {
                    tracing::warn!(service = %name_of(&object), "could not reserve {key}: {e}");
                }
            }
        }
        Ok(())
    }

    /// Creates namespace `name` unless it exists (`default`, at every start).
    pub async fn ensure_namespace(&self, name: &str) -> Result<(), ApiError> {
        let object = NAMESPACES
            .decode(Source::Value(json!({"metadata": {"name": name}})))
            .map_err(|e| decode_error(&NAMESPACES, name, e))?
            .object;
        match self.create(&NAMESPACES, object).await {
            Ok(_) => Ok(()),
            Err(e) if e.reason == "AlreadyExists" => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The one reader of the store's log that every watch is fed from.
    pub fn watch_cache(&self) -> &Arc<WatchCache> {
        &self.watch_cache
    }

    /// Runs a blocking store call off the async workers (commits wait for fsync).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| ApiError::internal(format!("store task failed: {e}")))?
            .map_err(ApiError::from)
    }

    async fn commit(&self, ops: Vec<Op>) -> Result<Revision, ApiError> {
        let timer = self.metrics.store_commit_seconds.start_timer();
        let store = Arc::clone(&self.store);
        let result = tokio::task::spawn_blocking(move || store.commit(ops))
            .await
            .map_err(|e| ApiError::internal(format!("store task failed: {e}")))?
            .map_err(|e| match e {
                // Another write took the same address or port first: plan again.
                StoreError::AlreadyExists { key } if allocation::is_allocation_key(&key) => {
                    ApiError::new(
                        StatusCode::CONFLICT,
                        "Conflict",
                        format!("{key} was allocated by a concurrent write; retry"),
                    )
                }
                e => ApiError::from(e),
            });
        timer.observe_duration();
        if let Ok(revision) = &result {
            self.metrics
                .store_revision
                .set(i64::try_from(*revision).unwrap_or(i64::MAX));
        }
        result
    }

    async fn read(&self, key: String) -> Result<Option<KeyValue>, ApiError> {
        self.blocking(move |s| s.get(&key)).await
    }

    pub async fn get(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        match self.read(key(rt, namespace, name)).await? {
            Some(kv) => decode_stored(&kv),
            None => Err(ApiError::not_found(rt.kind, name)),
        }
    }

    /// Every object of a kind, in every namespace.
    pub async fn list_all(&self, rt: &'static ResourceType) -> Result<Vec<Value>, ApiError> {
        let (objects, _) = self
            .list(rt, None, &Selector::default(), &FieldSelector::default())
            .await?;
        Ok(objects)
    }

    pub async fn list(
        &self,
        rt: &'static ResourceType,
        namespace: Option<&str>,
        labels: &Selector,
        fields: &FieldSelector,
    ) -> Result<(Vec<Value>, Revision), ApiError> {
        let prefix = prefix(rt, namespace);
        let (kvs, revision) = self.blocking(move |s| s.list(&prefix)).await?;
        let mut items = Vec::with_capacity(kvs.len());
        for kv in &kvs {
            let object = decode_stored(kv)?;
            if labels.matches(&labels_of(&object)) && fields.matches(&object) {
                items.push(object);
            }
        }
        Ok((items, revision))
    }

    pub async fn create(
        &self,
        rt: &'static ResourceType,
        object: Value,
    ) -> Result<Value, ApiError> {
        let mut attempt = 0;
        loop {
            let planned = self
                .plan(rt, None, object.clone(), &BTreeSet::new())
                .await?;
            match self.commit(planned.ops).await {
                Ok(revision) => return Ok(stamp(planned.object, revision)),
                // A lost allocation race or a namespace that changed: plan again.
                Err(e) if is_retryable(&e) && attempt < MAX_RETRIES => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Replaces an object. With `metadata.resourceVersion` set, the write only happens if
    /// that is still the stored revision (409 otherwise); without, the last writer wins.
    pub async fn update(
        &self,
        rt: &'static ResourceType,
        object: Value,
    ) -> Result<Value, ApiError> {
        let wanted = parse_resource_version(str_at(&object, "/metadata/resourceVersion"))?;
        let (namespace, name) = (
            namespace_of(&object).to_owned(),
            name_of(&object).to_owned(),
        );
        self.read_modify_write(
            rt,
            &namespace,
            &name,
            wanted,
            |_existing| Ok(object.clone()),
        )
        .await
    }

    /// Replaces only `status`; everything else is kept as stored.
    pub async fn update_status(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        name: &str,
        body: Value,
    ) -> Result<Value, ApiError> {
        self.update_status_checked(rt, namespace, name, body, |_| Ok(()))
            .await
    }

    /// [`Self::update_status`] for a writer that may only change objects `allowed`
    /// accepts (a node reporting for the pods bound to it), checked on the object the
    /// write replaces: one read of the store, not one to check and one to write.
    pub async fn update_status_checked(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        name: &str,
        body: Value,
        allowed: impl Fn(&Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let wanted = parse_resource_version(str_at(&body, "/metadata/resourceVersion"))?;
        let status = body.get("status").cloned().unwrap_or(Value::Null);
        let written = self
            .read_modify_write_raw(rt, namespace, name, wanted, |existing| {
                allowed(existing)?;
                let mut object = existing.clone();
                object["status"] = status.clone();
                // Round-trip through the typed model so a bad status is rejected here.
                let decoded = rt
                    .decode(Source::Value(object.clone()))
                    .map_err(|e| decode_error(rt, name, e))?;
                Ok(decoded.object)
            })
            .await?;
        Ok(written)
    }

    pub async fn delete(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let wanted = options.resource_version;
        if rt.kind == NAMESPACES.kind
            && let Some(terminating) = self.begin_namespace_deletion(name, wanted).await?
        {
            return Ok(terminating);
        }
        let mut attempt = 0;
        loop {
            let Some(kv) = self.read(key(rt, namespace, name)).await? else {
                return Err(ApiError::not_found(rt.kind, name));
            };
            let object = decode_stored(&kv)?;
            if let Some(uid) = &options.uid
                && str_at(&object, "/metadata/uid") != uid
            {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        str_at(&object, "/metadata/uid")
                    ),
                ));
            }
            if rt.kind == "Pod"
                && let Some(grace) = graceful_pod_deletion(&object, options.grace_period_seconds)
            {
                if grace_already_shorter(&object, grace) {
                    return Ok(object);
                }
                let terminating = self
                    .read_modify_write_raw(rt, namespace, name, wanted, |existing| {
                        let mut object = existing.clone();
                        object["metadata"]["deletionTimestamp"] =
                            json!(util::rfc3339(util::unix_now() + grace.unsigned_abs()));
                        object["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                        Ok(object)
                    })
                    .await?;
                return Ok(terminating);
            }
            let mut ops = vec![Op::Delete {
                key: kv.key.clone(),
                precondition: Precondition::ModRevision(wanted.unwrap_or(kv.mod_revision)),
            }];
            ops.extend(claim_ops(rt, Some(&object), None)?);
            // Revision history is owned by its Deployment and goes with it.
            if rt.kind == "Deployment" {
                for revision in self
                    .controller_revisions(namespace, str_at(&object, "/metadata/uid"))
                    .await?
                {
                    ops.push(Op::Delete {
                        key: revision.0.key.clone(),
                        precondition: Precondition::ModRevision(revision.0.mod_revision),
                    });
                }
            }
            match self.commit(ops).await {
                // The revision of the deletion, as the DELETED watch event carries it.
                Ok(revision) => return Ok(stamp(object, revision)),
                // Without a precondition from the caller, a concurrent status write is no
                // reason to refuse the delete.
                Err(e)
                    if e.code == StatusCode::CONFLICT
                        && wanted.is_none()
                        && attempt < MAX_RETRIES =>
                {
                    attempt += 1
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Creates or replaces every object of a manifest in one transaction: all or nothing.
    pub async fn apply(
        &self,
        objects: Vec<ManifestObject>,
        dry_run: bool,
    ) -> Result<Vec<ApplyResult>, ApiError> {
        let mut attempt = 0;
        loop {
            // Namespaces this manifest creates: objects may be created in them in the same
            // transaction, before they are in the store.
            let mut new_namespaces = BTreeSet::new();
            for object in objects
                .iter()
                .filter(|o| o.resource_type.kind == NAMESPACES.kind)
            {
                let name = name_of(&object.decoded.object);
                if self.read(key(&NAMESPACES, "", name)).await?.is_none() {
                    new_namespaces.insert(name.to_owned());
                }
            }
            let mut ops = Vec::new();
            let mut results = Vec::new();
            for object in &objects {
                let rt = object.resource_type;
                let incoming = &object.decoded.object;
                let (namespace, name) = (namespace_of(incoming), name_of(incoming));
                let existing = self.read(key(rt, namespace, name)).await?;
                let action = if existing.is_none() {
                    "created"
                } else {
                    "configured"
                };
                let planned = self
                    .plan(rt, existing.as_ref(), incoming.clone(), &new_namespaces)
                    .await?;
                results.push(ApplyResult {
                    api_version: rt.api_version(),
                    kind: rt.kind.to_owned(),
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    action: if planned.changed { action } else { "unchanged" },
                    resource_version: existing
                        .as_ref()
                        .map(|kv| kv.mod_revision.to_string())
                        .unwrap_or_default(),
                    warnings: object.decoded.warnings.clone(),
                });
                if planned.changed {
                    ops.extend(planned.ops);
                }
            }
            if dry_run || ops.is_empty() {
                return Ok(results);
            }
            match self.commit(ops).await {
                Ok(revision) => {
                    for result in &mut results {
                        if result.action != "unchanged" {
                            result.resource_version = revision.to_string();
                        }
                    }
                    return Ok(results);
                }
                // Also a concurrent create of one of the objects: it is configured instead.
                Err(e) if e.code == StatusCode::CONFLICT && attempt < MAX_RETRIES => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sets `spec.replicas` of a Deployment or ReplicaSet; returns the `Scale` view.
    pub async fn scale(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        name: &str,
        replicas: i32,
        wanted: Option<Revision>,
    ) -> Result<Value, ApiError> {
        let mut previous = 0;
        let object = self
            .read_modify_write(rt, namespace, name, wanted, |existing| {
                previous = existing
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                let mut object = existing.clone();
                object["spec"]["replicas"] = json!(replicas);
                Ok(object)
            })
            .await?;
        if i64::from(replicas) != previous {
            let message = format!(
                "Scaled {} {name} from {previous} to {replicas} replicas",
                rt.kind
            );
            self.record_event(&object, "Scaled", &message, "Normal")
                .await;
        }
        Ok(scale_view(&object))
    }

    pub async fn get_scale(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        Ok(scale_view(&self.get(rt, namespace, name).await?))
    }

    /// `rollout undo`: puts back the pod template of `to_revision`, or of the revision
    /// before the current one when 0. The restored template becomes the newest revision.
    pub async fn rollback(
        &self,
        namespace: &str,
        name: &str,
        to_revision: i64,
    ) -> Result<Value, ApiError> {
        let rt = deployment_type()?;
        let mut attempt = 0;
        let (object, chosen) = loop {
            let Some(kv) = self.read(key(rt, namespace, name)).await? else {
                return Err(ApiError::not_found(rt.kind, name));
            };
            let existing = decode_stored(&kv)?;
            let mut history = self
                .controller_revisions(namespace, str_at(&existing, "/metadata/uid"))
                .await?;
            history.sort_by_key(|(_, r)| r.revision);
            let current = revision_of(&existing);
            let target = if to_revision == 0 {
                history.iter().rev().find(|(_, r)| r.revision < current)
            } else {
                history.iter().find(|(_, r)| r.revision == to_revision)
            };
            let Some((_, target)) = target else {
                return Err(ApiError::bad_request(if to_revision == 0 {
                    format!("deployment {name:?} has no previous revision to roll back to")
                } else {
                    format!("deployment {name:?} has no revision {to_revision}")
                }));
            };
            let mut modified = existing.clone();
            modified["spec"]["template"] = target.data.clone();
            match self.write_over(rt, &kv, &existing, modified).await {
                Ok(object) => break (object, target.revision),
                Err(e) if e.code == StatusCode::CONFLICT && attempt < MAX_RETRIES => attempt += 1,
                Err(e) => return Err(e),
            }
        };
        self.record_event(
            &object,
            "DeploymentRollback",
            &format!(
                "Rolled back to the template of revision {chosen}, now revision {}",
                revision_of(&object)
            ),
            "Normal",
        )
        .await;
        Ok(object)
    }

    /// Best effort: an event that fails to write must not fail the action it describes.
    pub async fn record_event(&self, involved: &Value, reason: &str, message: &str, type_: &str) {
        let Some(rt) = find_by_plural("", "events") else {
            return;
        };
        let namespace = match namespace_of(involved) {
            "" => berth_api::meta::DEFAULT_NAMESPACE,
            ns => ns,
        };
        let now = util::rfc3339_now();
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": format!("{}.{}", name_of(involved), util::hex(&util::random_bytes::<8>())),
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": str_at(involved, "/apiVersion"),
                "kind": str_at(involved, "/kind"),
                "name": name_of(involved),
                "namespace": namespace_of(involved),
                "uid": str_at(involved, "/metadata/uid"),
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": "apiserver",
        });
        let result = match rt.decode(Source::Value(event)) {
            Ok(decoded) => self.create(rt, decoded.object).await.map(drop),
            Err(e) => Err(ApiError::internal(e.to_string())),
        };
        if let Err(e) = result {
            tracing::warn!(
                "could not record event {reason} for {}: {e}",
                name_of(involved)
            );
        }
    }

    /// Reads the object, lets `modify` produce the new version, and writes it with the
    /// read revision as precondition. A conflict is retried when the caller did not ask
    /// for a specific revision (the change is re-derived from fresh state each time).
    async fn read_modify_write(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        name: &str,
        wanted: Option<Revision>,
        mut modify: impl FnMut(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut attempt = 0;
        loop {
            let Some(kv) = self.read(key(rt, namespace, name)).await? else {
                return Err(ApiError::not_found(rt.kind, name));
            };
            if let Some(wanted) = wanted
                && wanted != kv.mod_revision
            {
                return Err(StoreError::Conflict {
                    key: kv.key,
                    expected: wanted,
                    found: Some(kv.mod_revision),
                }
                .into());
            }
            let existing = decode_stored(&kv)?;
            let modified = modify(&existing)?;
            match self.write_over(rt, &kv, &existing, modified).await {
                Err(e)
                    if e.code == StatusCode::CONFLICT
                        && wanted.is_none()
                        && attempt < MAX_RETRIES =>
                {
                    attempt += 1
                }
                result => return result,
            }
        }
    }

    /// Validates `modified` and writes it over the stored `kv` if that is still current.
    async fn write_over(
        &self,
        rt: &'static ResourceType,
        kv: &KeyValue,
        existing: &Value,
        modified: Value,
    ) -> Result<Value, ApiError> {
        let (namespace, name) = (namespace_of(existing), name_of(existing));
        let decoded = rt
            .decode(Source::Value(modified))
            .map_err(|e| decode_error(rt, name, e))?;
        if namespace_of(&decoded.object) != namespace || name_of(&decoded.object) != name {
            return Err(ApiError::bad_request(
                "metadata.name and metadata.namespace must match the URL; renaming is not supported",
            ));
        }
        let planned = self
            .plan(rt, Some(kv), decoded.object, &BTreeSet::new())
            .await?;
        if !planned.changed {
            return Ok(existing.clone());
        }
        let revision = self.commit(planned.ops).await?;
        Ok(stamp(planned.object, revision))
    }

    /// Like `read_modify_write` but `modify` returns the final stored object, bypassing
    /// the metadata and status merge (the status subresource owns status only).
    async fn read_modify_write_raw(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        name: &str,
        wanted: Option<Revision>,
        modify: impl Fn(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut attempt = 0;
        loop {
            let Some(kv) = self.read(key(rt, namespace, name)).await? else {
                return Err(ApiError::not_found(rt.kind, name));
            };
            let existing = decode_stored(&kv)?;
            let object = modify(&existing)?;
            let mut ops = vec![Op::Put {
                key: kv.key.clone(),
                value: encode(&object)?,
                precondition: Precondition::ModRevision(wanted.unwrap_or(kv.mod_revision)),
            }];
            // A status write can take or release LoadBalancer addresses.
            ops.extend(claim_ops(rt, Some(&existing), Some(&object))?);
            match self.commit(ops).await {
                Ok(revision) => return Ok(stamp(object, revision)),
                Err(e)
                    if e.code == StatusCode::CONFLICT
                        && wanted.is_none()
                        && attempt < MAX_RETRIES =>
                {
                    attempt += 1
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Fills server-owned fields and computes the store ops for writing `incoming` over
    /// `existing` (None = create). Reads revision history, allocations and the namespace;
    /// `new_namespaces` are created in the same transaction.
    async fn plan(
        &self,
        rt: &'static ResourceType,
        existing: Option<&KeyValue>,
        mut incoming: Value,
        new_namespaces: &BTreeSet<String>,
    ) -> Result<Planned, ApiError> {
        let (namespace, name) = (
            namespace_of(&incoming).to_owned(),
            name_of(&incoming).to_owned(),
        );
        let stored = existing.map(decode_stored).transpose()?;
        let meta = incoming
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::internal("decoded object has no metadata"))?;
        meta.remove("resourceVersion");
        match &stored {
            Some(old) => {
                for field in ["uid", "creationTimestamp"] {
                    meta.insert(field.to_owned(), old["metadata"][field].clone());
                }
                // Server-owned: a deletion in progress survives any update.
                for field in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
                    match old["metadata"].get(field) {
                        Some(value) => drop(meta.insert(field.to_owned(), value.clone())),
                        None => drop(meta.remove(field)),
                    }
                }
                if rt.has_status {
                    match old.get("status") {
                        Some(status) => incoming["status"] = status.clone(),
                        None => drop(incoming.as_object_mut().map(|o| o.remove("status"))),
                    }
                }
            }
            None => {
                meta.insert("uid".to_owned(), json!(util::uuid_v4()));
                meta.insert("creationTimestamp".to_owned(), json!(util::rfc3339_now()));
                meta.insert("generation".to_owned(), json!(1));
                meta.remove("deletionTimestamp");
                meta.remove("deletionGracePeriodSeconds");
                if rt.has_status
                    && let Some(object) = incoming.as_object_mut()
                {
                    object.remove("status");
                }
            }
        }
        let mut ops = Vec::new();
        if existing.is_none() && rt.namespaced && !new_namespaces.contains(&namespace) {
            ops.push(self.namespace_check(&namespace).await?);
        }
        if existing.is_none() && rt.kind == NAMESPACES.kind {
            incoming["status"] = json!({"phase": "Active"});
        }
        if rt.kind == SERVICES_KIND {
            self.complete_service(stored.as_ref(), &mut incoming)
                .await?;
            ops.extend(claim_ops(rt, stored.as_ref(), Some(&incoming))?);
        }
        if let Some(old) = &stored {
            // After the server filled in what it allocates, so re-sending a spec without
            // those fields is no change.
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
            let spec_changed = incoming.get("spec") != old.get("spec");
            incoming["metadata"]["generation"] = json!(generation + i64::from(spec_changed));
        }
        if rt.kind == "Deployment" {
            // The annotation is server-owned: keep what is stored unless a new revision is cut.
            let current = stored.as_ref().map(revision_of).unwrap_or(0);
            set_revision(&mut incoming, current);
            ops.extend(
                self.plan_revision_history(&namespace, &mut incoming)
                    .await?,
            );
        }
        let changed = match &stored {
            Some(old) => {
                let mut old = old.clone();
                if let Some(meta) = old.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("resourceVersion");
                }
                old != incoming
            }
            None => true,
        };
        let precondition = match existing {
            Some(kv) => Precondition::ModRevision(kv.mod_revision),
            None => Precondition::Absent,
        };
        ops.insert(
            0,
            Op::Put {
                key: key(rt, &namespace, &name),
                value: encode(&incoming)?,
                precondition,
            },
        );
        Ok(Planned {
            ops,
            object: incoming,
            changed,
        })
    }

    /// Records the Deployment's pod template as a ControllerRevision when it is new, or
    /// renumbers the matching old one (a rollback, or re-applying an old template), and
    /// prunes history past `revisionHistoryLimit`. Sets the revision annotation.
    async fn plan_revision_history(
        &self,
        namespace: &str,
        deployment: &mut Value,
    ) -> Result<Vec<Op>, ApiError> {
        let uid = str_at(deployment, "/metadata/uid").to_owned();
        let name = name_of(deployment).to_owned();
        let template = deployment
            .pointer("/spec/template")
            .cloned()
            .unwrap_or(Value::Null);
        let mut history = self.controller_revisions(namespace, &uid).await?;
        history.sort_by_key(|(_, r)| r.revision);
        let current = revision_of(deployment);
        if history
            .iter()
            .any(|(_, r)| r.revision == current && r.data == template)
        {
            return Ok(Vec::new());
        }
        let Some(rt) = find_by_plural("apps", "controllerrevisions") else {
            return Err(ApiError::internal("ControllerRevision kind missing"));
        };
        let next = history.last().map_or(0, |(_, r)| r.revision).max(current) + 1;
        set_revision(deployment, next);
        let mut ops = Vec::new();
        let reused = history.iter().position(|(_, r)| r.data == template);
        let (revision_name, precondition, create_meta) = match reused {
            Some(i) => {
                let (kv, _) = &history[i];
                let old = decode_stored(kv)?;
                (
                    name_of(&old).to_owned(),
                    Precondition::ModRevision(kv.mod_revision),
                    old["metadata"].clone(),
                )
            }
            None => {
                let hash = util::template_hash(&template);
                let revision_name = format!("{name}-{hash}");
                (
                    revision_name.clone(),
                    Precondition::Absent,
                    json!({
                        "name": revision_name,
                        "namespace": namespace,
                        "uid": util::uuid_v4(),
                        "creationTimestamp": util::rfc3339_now(),
                        "generation": 1,
                        "labels": deployment.pointer("/spec/template/metadata/labels").cloned().unwrap_or(json!({})),
                        "ownerReferences": [{
                            "apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": uid, "controller": true,
                        }],
                    }),
                )
            }
        };
        let mut meta = create_meta;
        if let Some(m) = meta.as_object_mut() {
            m.remove("resourceVersion");
        }
        // `rollout history` shows why each revision was made, as kubectl does.
        if let Some(cause) = deployment
            .pointer("/metadata/annotations/kubernetes.io~1change-cause")
            .cloned()
        {
            meta["annotations"]["kubernetes.io/change-cause"] = cause;
        }
        let revision = json!({
            "apiVersion": "apps/v1",
            "kind": "ControllerRevision",
            "metadata": meta,
            "revision": next,
            "data": template,
        });
        ops.push(Op::Put {
            key: key(rt, namespace, &revision_name),
            value: encode(&revision)?,
            precondition,
        });
        // Keep `revisionHistoryLimit` old revisions besides the current one.
        let limit = deployment
            .pointer("/spec/revisionHistoryLimit")
            .and_then(Value::as_u64)
            .unwrap_or(10) as usize;
        let old: Vec<&(KeyValue, RevisionRecord)> = history
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != reused)
            .map(|(_, entry)| entry)
            .collect();
        let excess = old.len().saturating_sub(limit);
        for (kv, _) in old.into_iter().take(excess) {
            ops.push(Op::Delete {
                key: kv.key.clone(),
                precondition: Precondition::ModRevision(kv.mod_revision),
            });
        }
        Ok(ops)
    }

    /// The op that makes a create in `namespace` depend on the namespace as read: it must
    /// exist and not be terminating, and must not change before the commit.
    async fn namespace_check(&self, namespace: &str) -> Result<Op, ApiError> {
        let Some(kv) = self.read(key(&NAMESPACES, "", namespace)).await? else {
            return Err(ApiError::not_found(NAMESPACES.plural, namespace));
        };
        if str_at(&decode_stored(&kv)?, "/status/phase") == "Terminating" {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "unable to create new content in namespace {namespace} because it is being terminated"
                ),
            ));
        }
        Ok(Op::Check {
            key: kv.key,
            precondition: Precondition::ModRevision(kv.mod_revision),
        })
    }

    /// Deleting a namespace first marks it `Terminating` (the namespace controller then
    /// deletes its objects and deletes it again); returns None once it is empty and may go.
    async fn begin_namespace_deletion(
        &self,
        name: &str,
        wanted: Option<Revision>,
    ) -> Result<Option<Value>, ApiError> {
        if name == DEFAULT_NAMESPACE {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!("namespaces {name:?} is forbidden: this namespace may not be deleted"),
            ));
        }
        let current = self.get(&NAMESPACES, "", name).await?;
        if str_at(&current, "/status/phase") != "Terminating" {
            let terminating = self
                .read_modify_write_raw(&NAMESPACES, "", name, wanted, |existing| {
                    let mut object = existing.clone();
                    object["status"]["phase"] = json!("Terminating");
                    Ok(object)
                })
                .await?;
            return Ok(Some(terminating));
        }
        for rt in RESOURCE_TYPES.iter().filter(|rt| rt.namespaced) {
            let prefix = prefix(rt, Some(name));
            let (kvs, _) = self.blocking(move |s| s.list(&prefix)).await?;
            if !kvs.is_empty() {
                return Ok(Some(current));
            }
        }
        Ok(None)
    }

    /// Gives a Service what the control plane allocates: a clusterIP and the nodePorts
    /// left empty, kept across updates (an apply that leaves them out keeps them);
    /// checks the ones the user chose. LoadBalancer status goes when the type does.
    async fn complete_service(
        &self,
        stored: Option<&Value>,
        incoming: &mut Value,
    ) -> Result<(), ApiError> {
        let old = stored.map(typed_service).transpose()?;
        let mut new = typed_service(incoming)?;
        let held = old.as_ref().map(allocation::claims).unwrap_or_default();
        let mut errors = Vec::new();
        let mut error = |field: String, reason: String| errors.push(FieldError { field, reason });

        let old_ip = old
            .as_ref()
            .map(|o| o.spec.cluster_ip.clone())
            .filter(|ip| !ip.is_empty());
        match old_ip {
            Some(ip) if new.spec.cluster_ip.is_empty() => new.spec.cluster_ip = ip,
            Some(ip) if new.spec.cluster_ip != ip => error(
                "spec.clusterIP".into(),
                format!("field is immutable (it is {ip})"),
            ),
            Some(_) => {}
            None if new.spec.cluster_ip.is_empty() => {
                new.spec.cluster_ip = self.allocate_cluster_ip().await?;
            }
            None if new.spec.is_headless() => {}
            None => {
                let cidr = self.ranges.service_cidr;
                let ip: Ipv4Addr = new.spec.cluster_ip.parse().map_err(|_| {
                    ApiError::internal("a validated clusterIP did not parse as IPv4")
                })?;
                if !cidr.contains(ip) {
                    error(
                        "spec.clusterIP".into(),
                        format!(
                            "failed to allocate IP {ip}: the provided IP is not in the valid range; the range of valid IPs is {cidr}"
                        ),
                    );
                } else if self
                    .read(allocation::cluster_ip_key(&new.spec.cluster_ip))
                    .await?
                    .is_some()
                {
                    error(
                        "spec.clusterIP".into(),
                        format!("failed to allocate IP {ip}: provided IP is already allocated"),
                    );
                }
            }
        }

        if new.spec.has_node_ports() {
            let mut chosen: BTreeSet<i32> = BTreeSet::new();
            for (i, port) in new.spec.ports.iter().enumerate() {
                let Some(node_port) = port.node_port else {
                    continue;
                };
                let key = allocation::node_port_key(node_port);
                if chosen.insert(node_port)
                    && !held.contains(&key)
                    && self.read(key).await?.is_some()
                {
                    error(
                        format!("spec.ports[{i}].nodePort"),
                        format!("provided port {node_port} is already allocated"),
                    );
                }
            }
            let taken = if new.spec.ports.iter().any(|p| p.node_port.is_none()) {
                self.allocated("nodeports", |t| t.parse().ok()).await?
            } else {
                BTreeSet::new()
            };
            for port in new.spec.ports.iter_mut().filter(|p| p.node_port.is_none()) {
                // The same service port keeps its nodePort across updates.
                let kept = old
                    .iter()
                    .flat_map(|o| &o.spec.ports)
                    .find(|p| p.port == port.port && p.protocol == port.protocol)
                    .and_then(|p| p.node_port)
                    .filter(|n| !chosen.contains(n));
                let node_port = match kept {
                    Some(n) => n,
                    None => {
                        let free = allocation::pick_free(allocation::node_port_range(), |v| {
                            taken.contains(&v) || chosen.contains(&(v as i32))
                        })
                        .ok_or_else(|| {
                            ApiError::internal(
                                "failed to allocate a nodePort: the range 30000-32767 is full",
                            )
                        })?;
                        free as i32
                    }
                };
                chosen.insert(node_port);
                port.node_port = Some(node_port);
            }
        }

        if new.spec.type_ != "LoadBalancer"
            && let Some(status) = &mut new.status
        {
            status.load_balancer = Default::default();
            status
                .conditions
                .retain(|c| c.type_ != LOAD_BALANCER_CONDITION);
        }
        if !errors.is_empty() {
            return Err(ApiError::invalid("Service", &new.metadata.name, errors));
        }
        *incoming = serde_json::to_value(&new).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(())
    }

    async fn allocate_cluster_ip(&self) -> Result<String, ApiError> {
        let taken = self
            .allocated("clusterips", |t| t.parse::<Ipv4Addr>().ok().map(u32::from))
            .await?;
        let cidr = self.ranges.service_cidr;
        allocation::pick_free(cidr.hosts(), |v| taken.contains(&v))
            .map(|ip| Ipv4Addr::from(ip).to_string())
            .ok_or_else(|| {
                ApiError::internal(format!(
                    "failed to allocate a cluster IP: the service range {cidr} is full"
                ))
            })
    }

    /// The values held under `/allocations/<kind>/`.
    async fn allocated(
        &self,
        kind: &str,
        parse: impl Fn(&str) -> Option<u32>,
    ) -> Result<BTreeSet<u32>, ApiError> {
        let prefix = format!("{}{kind}/", allocation::PREFIX);
        let list_prefix = prefix.clone();
        let (kvs, _) = self.blocking(move |s| s.list(&list_prefix)).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(&prefix).and_then(&parse))
            .collect())
    }

    async fn controller_revisions(
        &self,
        namespace: &str,
        owner_uid: &str,
    ) -> Result<Vec<(KeyValue, RevisionRecord)>, ApiError> {
        let Some(rt) = find_by_plural("apps", "controllerrevisions") else {
            return Ok(Vec::new());
        };
        let prefix = prefix(rt, Some(namespace));
        let (kvs, _) = self.blocking(move |s| s.list(&prefix)).await?;
        let mut out = Vec::new();
        for kv in kvs {
            let object = decode_stored(&kv)?;
            let owned = object
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == owner_uid));
            if owned {
                let record = RevisionRecord {
                    revision: object["revision"].as_i64().unwrap_or(0),
                    data: object["data"].clone(),
                };
                out.push((kv, record));
            }
        }
        Ok(out)
    }
}

const SERVICES_KIND: &str = "Service";
/// The Service condition saying whether a LoadBalancer address was assigned.
pub const LOAD_BALANCER_CONDITION: &str = "LoadBalancerReady";

fn typed_service(object: &Value) -> Result<Service, ApiError> {
    serde_json::from_value(object.clone())
        .map_err(|e| ApiError::internal(format!("stored Service does not decode: {e}")))
}

/// The allocation ops for writing `after` over `before` (None: absent) when the kind
/// holds allocations.
fn claim_ops(
    rt: &ResourceType,
    before: Option<&Value>,
    after: Option<&Value>,
) -> Result<Vec<Op>, ApiError> {
    if rt.kind != SERVICES_KIND {
        return Ok(Vec::new());
    }
    let claims = |object: Option<&Value>| -> Result<BTreeSet<String>, ApiError> {
        Ok(object
            .map(typed_service)
            .transpose()?
            .map(|s| allocation::claims(&s))
            .unwrap_or_default())
    };
    let owner = after.or(before).cloned().unwrap_or(Value::Null);
    Ok(allocation::claim_ops(
        &claims(before)?,
        &claims(after)?,
        &owner,
    ))
}

/// Conflicts a server-side retry can resolve: a stale read, a lost allocation race.
fn is_retryable(error: &ApiError) -> bool {
    error.code == StatusCode::CONFLICT && error.reason == "Conflict"
}

struct RevisionRecord {
    revision: i64,
    data: Value,
}

fn deployment_type() -> Result<&'static ResourceType, ApiError> {
    find_by_plural("apps", "deployments")
        .ok_or_else(|| ApiError::internal("Deployment kind missing"))
}

fn revision_of(deployment: &Value) -> i64 {
    deployment
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(REVISION_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn set_revision(deployment: &mut Value, revision: i64) {
    if revision == 0 {
        return;
    }
    let meta = &mut deployment["metadata"];
    if !meta.get("annotations").is_some_and(Value::is_object) {
        meta["annotations"] = json!({});
    }
    meta["annotations"][REVISION_ANNOTATION] = json!(revision.to_string());
}

fn stamp(mut object: Value, revision: Revision) -> Value {
    object["metadata"]["resourceVersion"] = json!(revision.to_string());
    object
}

fn scale_view(object: &Value) -> Value {
    let selector = object
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": name_of(object),
            "namespace": namespace_of(object),
            "uid": str_at(object, "/metadata/uid"),
            "resourceVersion": str_at(object, "/metadata/resourceVersion"),
        },
        "spec": {"replicas": object.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": object.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

/// How a DELETE was asked for: the preconditions and the grace (Kubernetes' DeleteOptions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    pub resource_version: Option<Revision>,
    pub uid: Option<String>,
    pub grace_period_seconds: Option<i64>,
}

impl DeleteOptions {
    /// Gone at once, whatever the pod's grace: for what no agent will confirm.
    pub fn force() -> Self {
        DeleteOptions {
            grace_period_seconds: Some(0),
            ..DeleteOptions::default()
        }
    }
}

/// Kubernetes' default `terminationGracePeriodSeconds`.
pub const DEFAULT_POD_GRACE_SECONDS: i64 = 30;

/// The grace a pod's deletion gets, or None when it goes at once: grace 0, or a pod no
/// node runs (unbound, or already finished), which has no agent to stop it.
fn graceful_pod_deletion(pod: &Value, asked: Option<i64>) -> Option<i64> {
    if str_at(pod, "/spec/nodeName").is_empty()
        || matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed")
    {
        return None;
    }
    let grace = asked
        .or_else(|| {
            pod.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(DEFAULT_POD_GRACE_SECONDS);
    (grace > 0).then_some(grace)
}

/// A pod already terminating keeps its deletion unless this one asks for less grace.
fn grace_already_shorter(pod: &Value, grace: i64) -> bool {
    pod.pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .is_some_and(|current| current <= grace)
}

pub fn decode_error(rt: &ResourceType, name: &str, error: berth_api::DecodeError) -> ApiError {
    match error {
        berth_api::DecodeError::Invalid { errors } => ApiError::invalid(rt.kind, name, errors),
        berth_api::DecodeError::Malformed { line, message } => ApiError::bad_request(match line {
            Some(line) => format!("{} body, line {line}: {message}", rt.kind),
            None => format!("{} body: {message}", rt.kind),
        }),
    }
}
