//! Resource semantics on top of the key-value store: keys, server-owned metadata,
//! optimistic concurrency, status subresources, and each kind's own rules through its
//! strategy (graceful pod deletion, Service allocation, Deployment revision history,
//! namespace lifecycle). Free of HTTP: its errors are domain errors ([`Error`]) the API
//! turns into a `Status`, so controllers and the agent API in this process use it
//! directly.
//!
//! A write is decoded to the kind's typed object once, stays typed through the
//! strategy's hooks, and is encoded once for the store.

pub mod allocation;
mod apply;
pub mod batch;
mod error;
mod events;
mod eviction;
mod history;
mod namespace;
pub(crate) mod quota;
mod scale;
mod strategy;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use berth_api::{
    MAX_OBJECT_BYTES, Resource, ResourceType,
    selector::{FieldSelector, Selector},
};
use serde_json::{Value, json};

pub use self::{
    allocation::LOAD_BALANCER_CONDITION,
    error::{Error, Result, decode_error},
};
use self::{
    allocation::Ranges,
    strategy::{Strategy, with_strategy},
};
use crate::objects::{Kind as _, Object};
pub use crate::objects::{decode_stored, key, labels_of, name_of, namespace_of, prefix};
use crate::{
    metrics::Metrics,
    objects::str_at,
    store::{KeyValue, Op, Precondition, Revision, Store, StoreError},
    watch_cache::WatchCache,
};

/// Server-driven read-modify-write loops retry this often on a conflict before giving up.
const MAX_RETRIES: usize = 8;

#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    metrics: Metrics,
    ranges: Arc<Ranges>,
    admission: Arc<Admission>,
    /// Held while a create of a kind quotas count is planned and committed.
    quota_lock: Arc<tokio::sync::Mutex<()>>,
    watch_cache: Arc<WatchCache>,
}

/// What the cluster's admin allows pods beyond the API's own rules, and gives them.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Node paths (each with everything under it) hostPath volumes may name; empty, the
    /// default, refuses every hostPath volume.
    pub host_path_prefixes: Vec<std::path::PathBuf>,
    /// The `tolerationSeconds` of the not-ready and unreachable `NoExecute` tolerations
    /// a new pod gets when it has none of its own: how long it stays on a node that went
    /// down (`--pod-eviction-timeout`).
    pub default_toleration_seconds: i64,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            host_path_prefixes: Vec::new(),
            // Kubernetes' default.
            default_toleration_seconds: 300,
        }
    }
}

impl Admission {
    /// Kubernetes' DefaultTolerationSeconds admission: a pod that does not tolerate a
    /// node being not ready or unreachable (`NoExecute`) does for this long.
    fn default_tolerations(&self, spec: &mut berth_api::core::PodSpec) {
        use berth_api::scheduling::{
            NO_EXECUTE, TAINT_NOT_READY, TAINT_UNREACHABLE, Taint, Toleration,
        };
        for key in [TAINT_NOT_READY, TAINT_UNREACHABLE] {
            let taint = Taint {
                key: key.to_owned(),
                effect: NO_EXECUTE.to_owned(),
                ..Taint::default()
            };
            if !spec.tolerations.iter().any(|t| t.tolerates(&taint)) {
                spec.tolerations.push(Toleration {
                    key: key.to_owned(),
                    operator: "Exists".to_owned(),
                    value: String::new(),
                    effect: NO_EXECUTE.to_owned(),
                    toleration_seconds: Some(self.default_toleration_seconds),
                });
            }
        }
    }

    /// The fields of `spec` (at `path`) the admin does not allow.
    fn pod_spec(
        &self,
        spec: &berth_api::core::PodSpec,
        path: &berth_api::validation::FieldPath,
    ) -> Vec<berth_api::validation::FieldError> {
        let mut v = berth_api::validation::Validator::default();
        for (i, volume) in spec.volumes.iter().enumerate() {
            let Some(host_path) = &volume.host_path else {
                continue;
            };
            let node_path = std::path::Path::new(&host_path.path);
            if self
                .host_path_prefixes
                .iter()
                .any(|prefix| node_path.starts_with(prefix))
            {
                continue;
            }
            let allowed = if self.host_path_prefixes.is_empty() {
                "none is allowed".to_owned()
            } else {
                let prefixes: Vec<String> = self
                    .host_path_prefixes
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                format!("only paths under {} are allowed", prefixes.join(", "))
            };
            v.error(
                &path.child("volumes").index(i).child("hostPath").child("path"),
                &format!(
                    "hostPath volume {:?} is not allowed: {allowed} (berth-control --allow-host-path)",
                    host_path.path
                ),
            );
        }
        v.into_errors()
    }
}

/// `resourceVersion` as a client sent it: empty means "no precondition".
pub fn parse_resource_version(text: &str) -> Result<Option<Revision>> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        Error::bad_request(format!("resourceVersion {text:?} is not a revision number"))
    })
}

/// The stored form of a typed object; `resourceVersion` is derived from the store's own
/// revision on every read, so storing it would go stale.
fn encode<R: Resource>(object: &R) -> Result<Vec<u8>> {
    let bytes = if object.meta().resource_version.is_empty() {
        serde_json::to_vec(object)
    } else {
        let mut object = object.clone();
        object.meta_mut().resource_version.clear();
        serde_json::to_vec(&object)
    }
    .map_err(|e| Error::internal(e.to_string()))?;
    if bytes.len() > MAX_OBJECT_BYTES {
        return Err(Error::TooLarge(format!(
            "object is {} bytes; the limit is {MAX_OBJECT_BYTES}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// The typed object stored at `kv`, with its `resourceVersion`.
fn decode_typed<R: Resource>(kv: &KeyValue) -> Result<R> {
    let mut object: R = serde_json::from_slice(&kv.value)
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", kv.key)))?;
    object.meta_mut().resource_version = kv.mod_revision.to_string();
    Ok(object)
}

/// The typed object of `strategy`'s kind from a `Value` the API already decoded and
/// validated.
fn typed<S: Strategy>(_strategy: &S, object: Value) -> Result<S::Object> {
    serde_json::from_value(object).map_err(|e| {
        Error::internal(format!(
            "a decoded {} does not decode: {e}",
            <S::Object as Resource>::KIND
        ))
    })
}

/// `object` as the kind of `strategy`: a controller's write names its kind by variant.
fn of_kind<S: Strategy>(_strategy: &S, object: Object) -> Result<S::Object> {
    let kind = object.resource_type().kind;
    S::Object::from_object(object).ok_or_else(|| {
        Error::internal(format!(
            "a {kind} was written as a {}",
            <S::Object as Resource>::KIND
        ))
    })
}

/// The revision an answer was written at (0 if it does not say).
pub fn written_revision(answer: &Value) -> Revision {
    str_at(answer, "/metadata/resourceVersion")
        .parse()
        .unwrap_or(0)
}

/// The object as the API returns it, stamped with the revision that wrote it.
fn answer<R: Resource>(object: &R, revision: Revision) -> Result<Value> {
    let mut value = serde_json::to_value(object).map_err(|e| Error::internal(e.to_string()))?;
    value["metadata"]["resourceVersion"] = json!(revision.to_string());
    Ok(value)
}

/// Who makes a write through the API, for `metadata.managedFields`: Kubernetes'
/// `fieldManager` (an `Update` entry owning what the write changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldManager {
    pub name: String,
    /// Empty, or the subresource written through (`scale`).
    pub subresource: &'static str,
}

/// What the objects planned into one store transaction share: later ones see what
/// earlier ones create or take before any of it is stored.
#[derive(Debug, Default)]
struct Batch {
    /// Namespaces the transaction creates: objects may be created in them.
    new_namespaces: BTreeSet<String>,
    /// What the objects planned so far take of each namespace's quotas.
    quota_planned: BTreeMap<String, quota::Usage>,
    /// The values its Services hold.
    allocations: allocation::Allocations,
    /// What admission read from the store for its objects.
    reads: AdmissionReads,
}

/// What admission reads of a namespace, read once per transaction: a ReplicaSet's batch
/// of pods reads its Namespace, ServiceAccount, LimitRanges and quotas once, not once per
/// pod. A retried transaction is planned on a new batch, so it reads them again.
#[derive(Debug, Default)]
struct AdmissionReads {
    /// Each Namespace read, None when it does not exist.
    namespaces: BTreeMap<String, Option<Value>>,
    /// Each ServiceAccount's `automountServiceAccountToken` by (namespace, name), None
    /// when unset or when the account does not exist.
    automount: BTreeMap<(String, String), Option<bool>>,
    limit_ranges: BTreeMap<String, Vec<berth_api::policy::LimitRange>>,
    quotas: BTreeMap<String, Vec<berth_api::policy::ResourceQuota>>,
    /// What each namespace uses in the store, without what the transaction plans.
    usage: BTreeMap<String, quota::Usage>,
}

/// A planned write of one object: the ops and the object as it will read back.
struct Planned<R> {
    ops: Vec<Op>,
    object: R,
    changed: bool,
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, metrics: Metrics, ranges: Ranges) -> Self {
        Self {
            watch_cache: WatchCache::new(Arc::clone(&store)),
            store,
            metrics,
            ranges: Arc::new(ranges),
            admission: Arc::default(),
            quota_lock: Arc::default(),
        }
    }

    /// The quota lock, for a create of a kind quotas count.
    async fn quota_guard(&self, rt: &ResourceType) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if berth_api::policy::QUOTA_COUNTED.contains(&rt.plural) {
            Some(self.quota_lock.lock().await)
        } else {
            None
        }
    }

    /// The same registry (and watch cache) writing through `store`: the elected
    /// controllers' writes go through a store fenced by their leadership.
    pub fn writing_to(&self, store: Arc<dyn Store>) -> Self {
        Self {
            store,
            ..self.clone()
        }
    }

    /// The registry with what the admin allows pods (every hostPath refused otherwise).
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = Arc::new(admission);
        self
    }

    /// Kubernetes' ServiceAccount admission on a new pod (see
    /// [`berth_api::accounts::admit_service_account`]). An account that does not exist
    /// yet is not a refusal: the pod waits on its node for the token, as for a missing
    /// ConfigMap, so a pod made right after its namespace does not fail on the race with
    /// the serviceaccount controller.
    async fn admit_service_account(
        &self,
        pod: &mut berth_api::core::Pod,
        batch: &mut Batch,
    ) -> Result<()> {
        use berth_api::{accounts::ServiceAccount, kinds::SERVICE_ACCOUNTS};
        let spec = &pod.spec;
        let name = [&spec.service_account_name, &spec.service_account]
            .into_iter()
            .find(|n| !n.is_empty())
            .map_or(berth_api::accounts::DEFAULT_SERVICE_ACCOUNT, String::as_str);
        let account = (pod.metadata.namespace.clone(), name.to_owned());
        let automount = match batch.reads.automount.get(&account) {
            Some(automount) => *automount,
            None => {
                let automount = match self.get(&SERVICE_ACCOUNTS, &account.0, &account.1).await {
                    Ok(stored) => {
                        serde_json::from_value::<ServiceAccount>(stored)
                            .map_err(|e| Error::internal(format!("a stored ServiceAccount: {e}")))?
                            .automount_service_account_token
                    }
                    Err(e) if e.is_not_found() => None,
                    Err(e) => return Err(e),
                };
                batch.reads.automount.insert(account, automount);
                automount
            }
        };
        let suffix = &crate::util::hex(&crate::util::random_bytes::<3>())[..5];
        berth_api::accounts::admit_service_account(&mut pod.spec, automount, suffix);
        Ok(())
    }

    /// Kubernetes' Pod Security admission on a new pod: the level its namespace's
    /// `pod-security.kubernetes.io/enforce` label names (Berth's default, `baseline`,
    /// without one) must be met, else 403 naming each violation.
    async fn admit_pod_security(
        &self,
        pod: &berth_api::core::Pod,
        batch: &mut Batch,
    ) -> Result<()> {
        use berth_api::{
            kinds::NAMESPACES,
            podsecurity::violations,
            security::{DEFAULT_LEVEL, ENFORCE_LABEL, Level},
        };
        let name = &pod.metadata.namespace;
        if !batch.reads.namespaces.contains_key(name) {
            let namespace = match self.get(&NAMESPACES, "", name).await {
                Ok(namespace) => Some(namespace),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e),
            };
            batch.reads.namespaces.insert(name.clone(), namespace);
        }
        // The namespace check of the write names a missing namespace.
        let Some(Some(namespace)) = batch.reads.namespaces.get(name) else {
            return Ok(());
        };
        let label = namespace
            .pointer("/metadata/labels")
            .and_then(|labels| labels.get(ENFORCE_LABEL))
            .and_then(Value::as_str);
        let level = match label {
            None => DEFAULT_LEVEL,
            Some(text) => Level::parse(text).ok_or_else(|| {
                Error::Forbidden(format!(
                    "pods {:?} is forbidden: namespace {:?} has label {ENFORCE_LABEL}={text:?}, not one of privileged, baseline, restricted",
                    pod.metadata.name, pod.metadata.namespace
                ))
            })?,
        };
        let found = violations(level, &pod.spec);
        if found.is_empty() {
            return Ok(());
        }
        Err(Error::Forbidden(format!(
            "pods {:?} is forbidden: violates PodSecurity {:?}: {}",
            pod.metadata.name,
            level.as_str(),
            found.join("; ")
        )))
    }

    /// The LimitRanges of a new pod's namespace, as Kubernetes' LimitRanger admission
    /// applies them: each container without a limit or request gets the default, then
    /// every container must lie within the bounds (403 naming them otherwise).
    async fn apply_limit_ranges(
        &self,
        pod: &mut berth_api::core::Pod,
        batch: &mut Batch,
    ) -> Result<()> {
        use berth_api::{
            kinds::LIMIT_RANGES,
            policy::{LimitRange, quantity},
        };
        let namespace = &pod.metadata.namespace;
        if !batch.reads.limit_ranges.contains_key(namespace) {
            let (stored, _) = self
                .list(
                    &LIMIT_RANGES,
                    Some(namespace),
                    &Selector::default(),
                    &FieldSelector::default(),
                )
                .await?;
            let ranges = stored
                .into_iter()
                .map(|range| {
                    serde_json::from_value::<LimitRange>(range)
                        .map_err(|e| Error::internal(format!("a stored LimitRange: {e}")))
                })
                .collect::<Result<Vec<_>>>()?;
            batch.reads.limit_ranges.insert(namespace.clone(), ranges);
        }
        let ranges = batch
            .reads
            .limit_ranges
            .get(namespace)
            .map_or(&[][..], Vec::as_slice);
        let mut refusals = Vec::new();
        for range in ranges {
            for item in range.spec.limits.iter().filter(|i| i.type_ == "Container") {
                for container in &mut pod.spec.containers {
                    let resources = &mut container.resources;
                    for (resource, value) in &item.default {
                        resources
                            .limits
                            .entry(resource.clone())
                            .or_insert_with(|| value.clone());
                    }
                    // Without a defaultRequest, the default limit is the request too.
                    for (resource, value) in item.default.iter().chain(&item.default_request) {
                        let value = item.default_request.get(resource).unwrap_or(value);
                        resources
                            .requests
                            .entry(resource.clone())
                            .or_insert_with(|| value.clone());
                    }
                    let amount = |r: &str, text: Option<&String>| {
                        text.and_then(|t| quantity(r, t).ok().map(|q| (q, t.clone())))
                    };
                    for (resource, min) in &item.min {
                        let floor = quantity(resource, min).unwrap_or(0);
                        match amount(resource, resources.requests.get(resource)) {
                            None => refusals.push(format!(
                                "minimum {resource} usage per Container is {min}. No request is specified"
                            )),
                            Some((q, text)) if q < floor => refusals.push(format!(
                                "minimum {resource} usage per Container is {min}, but request is {text}"
                            )),
                            Some(_) => {}
                        }
                    }
                    for (resource, max) in &item.max {
                        let ceiling = quantity(resource, max).unwrap_or(u64::MAX);
                        match amount(resource, resources.limits.get(resource)) {
                            None => refusals.push(format!(
                                "maximum {resource} usage per Container is {max}. No limit is specified"
                            )),
                            Some((q, text)) if q > ceiling => refusals.push(format!(
                                "maximum {resource} usage per Container is {max}, but limit is {text}"
                            )),
                            Some(_) => {}
                        }
                    }
                }
            }
        }
        if refusals.is_empty() {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "pods {:?} is forbidden: {}",
                pod.metadata.name,
                refusals.join(", ")
            )))
        }
    }

    /// The default tolerations of a new pod (see [`Admission`]).
    fn admit_default_tolerations(&self, pod: &mut berth_api::core::Pod) {
        self.admission.default_tolerations(&mut pod.spec);
    }

    /// Refuses a pod spec (of `kind` `name`, at `path`) using what the admin does not
    /// allow.
    fn admit_pod_spec(
        &self,
        kind: &str,
        name: &str,
        spec: &berth_api::core::PodSpec,
        path: &berth_api::validation::FieldPath,
    ) -> Result<()> {
        let refused = self.admission.pod_spec(spec, path);
        if refused.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(kind, name, refused))
        }
    }

    /// A registry over a new store in `dir`, with the Service ranges the tests use.
    #[cfg(test)]
    pub(crate) fn for_tests(dir: &std::path::Path) -> Self {
        use crate::{
            allocation::{Cidr, PortRange, Ranges},
            store::RedbStore,
        };
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&dir.join("store.redb")).expect("store"));
        let ranges = Ranges {
            service_cidr: Cidr {
                network: [10, 96, 0, 0].into(),
                prefix: 12,
            },
            node_ports: PortRange::DEFAULT,
            load_balancer_pool: None,
        };
        Registry::new(store, Metrics::new().expect("metrics"), ranges)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
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
    ) -> Result<T> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| Error::internal(format!("store task failed: {e}")))?
            .map_err(Error::from)
    }

    async fn commit(&self, ops: Vec<Op>) -> Result<Revision> {
        let timer = self.metrics.store_commit_seconds.start_timer();
        let (sender, committed) = tokio::sync::oneshot::channel();
        Arc::clone(&self.store).commit_then(
            ops,
            Box::new(move |result| {
                // The writer may have gone (its request was cancelled): nothing to tell.
                let _ = sender.send(result);
            }),
        );
        let result = committed
            .await
            .map_err(|_| Error::internal("the store dropped a commit without an answer"))?
            .map_err(|e| match e {
                // Another write took the same address or port first: plan again.
                StoreError::AlreadyExists { key } if allocation::is_allocation_key(&key) => {
                    Error::Conflict(format!("{key} was allocated by a concurrent write; retry"))
                }
                e => Error::from(e),
            });
        timer.observe_duration();
        if let Ok(revision) = &result {
            self.metrics
                .store_revision
                .set(i64::try_from(*revision).unwrap_or(i64::MAX));
        }
        result
    }

    async fn read(&self, key: String) -> Result<Option<KeyValue>> {
        self.blocking(move |s| s.get(&key)).await
    }

    /// Every key under `prefix`, as stored.
    async fn read_prefix(&self, prefix: String) -> Result<Vec<KeyValue>> {
        let (kvs, _) = self.blocking(move |s| s.list(&prefix)).await?;
        Ok(kvs)
    }

    pub async fn get(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Value> {
        match self.read(key(rt, namespace, name)).await? {
            Some(kv) => Ok(decode_stored(&kv)?),
            None => Err(Error::not_found(rt.kind, name)),
        }
    }

    /// Every object of a kind, in every namespace.
    pub async fn list_all(&self, rt: &'static ResourceType) -> Result<Vec<Value>> {
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
    ) -> Result<(Vec<Value>, Revision)> {
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

    /// Creates `object`, decoded and validated as `rt` by the caller.
    pub async fn create(&self, rt: &'static ResourceType, object: Value) -> Result<Value> {
        self.create_by(rt, object, None).await
    }

    /// [`Self::create`], `manager` (if any) recorded as the owner of the object's fields.
    pub async fn create_by(
        &self,
        rt: &'static ResourceType,
        object: Value,
        manager: Option<&FieldManager>,
    ) -> Result<Value> {
        with_strategy!(rt, |strategy| {
            let object = typed(strategy, object)?;
            self.create_typed(strategy, rt, object, manager).await
        })
    }

    async fn create_typed<S: Strategy>(
        &self,
        strategy: &S,
        rt: &'static ResourceType,
        object: S::Object,
        manager: Option<&FieldManager>,
    ) -> Result<Value> {
        let _counted = self.quota_guard(rt).await;
        let mut attempt = 0;
        loop {
            let planned = self
                .plan(
                    strategy,
                    rt,
                    None,
                    object.clone(),
                    &mut Batch::default(),
                    manager,
                )
                .await?;
            match self.commit(planned.ops).await {
                Ok(revision) => return answer(&planned.object, revision),
                // A lost allocation race or a namespace that changed: plan again.
                Err(Error::Conflict(_)) if attempt < MAX_RETRIES => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Replaces an object. With `metadata.resourceVersion` set, the write only happens if
    /// that is still the stored revision (409 otherwise); without, the last writer wins.
    pub async fn update(&self, rt: &'static ResourceType, object: Value) -> Result<Value> {
        self.update_by(rt, object, None).await
    }

    /// [`Self::update`], `manager` (if any) recorded as the owner of what it changes.
    pub async fn update_by(
        &self,
        rt: &'static ResourceType,
        object: Value,
        manager: Option<&FieldManager>,
    ) -> Result<Value> {
        let wanted = parse_resource_version(str_at(&object, "/metadata/resourceVersion"))?;
        let (namespace, name) = (
            namespace_of(&object).to_owned(),
            name_of(&object).to_owned(),
        );
        with_strategy!(rt, |strategy| {
            let object = typed(strategy, object)?;
            self.read_modify_write(strategy, rt, (&namespace, &name), wanted, manager, |_| {
                Ok(object.clone())
            })
            .await
        })
    }

    /// What writing `object` (a create or a replace) would store, planned in full —
    /// validated, server-owned fields set, allocations chosen — and not written:
    /// Kubernetes' `dryRun=All`, which `kubectl diff` asks for.
    pub async fn dry_run(
        &self,
        rt: &'static ResourceType,
        object: Value,
        manager: Option<&FieldManager>,
    ) -> Result<Value> {
        let (namespace, name) = (
            namespace_of(&object).to_owned(),
            name_of(&object).to_owned(),
        );
        let existing = self.read(key(rt, &namespace, &name)).await?;
        with_strategy!(rt, |strategy| {
            let stored = existing.as_ref().map(decode_typed).transpose()?;
            let planned = self
                .plan(
                    strategy,
                    rt,
                    existing.as_ref().zip(stored.as_ref()),
                    typed(strategy, object)?,
                    &mut Batch::default(),
                    manager,
                )
                .await?;
            answer(
                &planned.object,
                existing.as_ref().map_or(0, |kv| kv.mod_revision),
            )
        })
    }

    /// [`Self::update`] of a controller's typed object; returns the revision written.
    pub async fn update_object(&self, object: Object) -> Result<Revision> {
        let rt = object.resource_type();
        let wanted = parse_resource_version(&object.meta().resource_version)?;
        let (namespace, name) = (object.namespace().to_owned(), object.name().to_owned());
        with_strategy!(rt, |strategy| {
            let object = of_kind(strategy, object)?;
            let written = self
                .read_modify_write(strategy, rt, (&namespace, &name), wanted, None, |_| {
                    Ok(object.clone())
                })
                .await?;
            Ok(written_revision(&written))
        })
    }

    /// [`Self::update_status`] of a controller's typed object; returns the revision
    /// written.
    pub async fn update_status_object(&self, object: Object) -> Result<Revision> {
        let rt = object.resource_type();
        let wanted = parse_resource_version(&object.meta().resource_version)?;
        let (namespace, name) = (object.namespace().to_owned(), object.name().to_owned());
        with_strategy!(rt, |strategy| {
            let reported = of_kind(strategy, object)?;
            let (_, revision) = self
                .write_raw(strategy, rt, &namespace, &name, wanted, |stored| {
                    stored.copy_status(&reported);
                    berth_api::normalize(stored).map_err(|e| decode_error(rt, &name, e))
                })
                .await?;
            Ok(revision)
        })
    }

    /// Replaces only `status`; everything else is kept as stored.
    pub async fn update_status(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        name: &str,
        body: Value,
    ) -> Result<Value> {
        let wanted = parse_resource_version(str_at(&body, "/metadata/resourceVersion"))?;
        let status = body.get("status").cloned().unwrap_or(Value::Null);
        with_strategy!(rt, |strategy| {
            self.write_raw(strategy, rt, namespace, name, wanted, |object| {
                // The status is the kind's own type: set it through the JSON form, and
                // check the result as the kind.
                let mut value =
                    serde_json::to_value(&*object).map_err(|e| Error::internal(e.to_string()))?;
                value["status"] = status.clone();
                let mut written = serde_json::from_value(value).map_err(|e| {
                    decode_error(
                        rt,
                        name,
                        berth_api::DecodeError::Malformed {
                            line: None,
                            message: e.to_string(),
                        },
                    )
                })?;
                berth_api::normalize(&mut written).map_err(|e| decode_error(rt, name, e))?;
                *object = written;
                Ok(())
            })
            .await
            .and_then(|(object, revision)| answer(&object, revision))
        })
    }

    /// A node's report of the status of a pod bound to it: the status subresource's write,
    /// refused for a pod bound elsewhere (checked on the object the write replaces: one
    /// read of the store, not one to check and one to write). Typed from end to end —
    /// every pod's status goes through here once or more, and a detour through its JSON
    /// tree cost more than the rest of the write outside the store. Returns the revision
    /// written.
    pub async fn report_pod_status(
        &self,
        node: &str,
        namespace: &str,
        name: &str,
        status: Option<berth_api::core::PodStatus>,
    ) -> Result<Revision> {
        let rt = &berth_api::kinds::PODS;
        let (_, revision) = self
            .write_raw(&strategy::PodStrategy, rt, namespace, name, None, |pod| {
                if pod.spec.node_name != node {
                    return Err(Error::Forbidden(format!(
                        "pod {namespace}/{name} is not bound to node {node}"
                    )));
                }
                pod.status.clone_from(&status);
                berth_api::normalize(pod).map_err(|e| decode_error(rt, name, e))
            })
            .await?;
        Ok(revision)
    }

    pub async fn delete(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Value> {
        with_strategy!(rt, |strategy| {
            self.delete_typed(strategy, rt, namespace, name, options)
                .await
        })
    }

    async fn delete_typed<S: Strategy>(
        &self,
        strategy: &S,
        rt: &'static ResourceType,
        namespace: &str,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Value> {
        let wanted = options.resource_version;
        if let Some(kept) = strategy.begin_delete(self, name, wanted).await? {
            return Ok(kept);
        }
        let mut attempt = 0;
        loop {
            let Some(kv) = self.read(key(rt, namespace, name)).await? else {
                return Err(Error::not_found(rt.kind, name));
            };
            let object: S::Object = decode_typed(&kv)?;
            let uid = &object.meta().uid;
            if let Some(wanted_uid) = &options.uid
                && uid != wanted_uid
            {
                return Err(Error::Conflict(format!(
                    "Precondition failed: UID in precondition: {wanted_uid}, UID in object meta: {uid}"
                )));
            }
            if let Some(grace) = strategy.graceful_deletion(&object, options) {
                // Already terminating with no more grace than this asks for: unchanged.
                if object
                    .meta()
                    .deletion_grace_period_seconds
                    .is_some_and(|current| current <= grace)
                {
                    return Ok(decode_stored(&kv)?);
                }
                return self
                    .write_raw(strategy, rt, namespace, name, wanted, |object| {
                        let meta = object.meta_mut();
                        meta.deletion_timestamp =
                            crate::util::rfc3339(crate::util::unix_now() + grace.unsigned_abs());
                        meta.deletion_grace_period_seconds = Some(grace);
                        Ok(())
                    })
                    .await
                    .and_then(|(object, revision)| answer(&object, revision));
            }
            let mut ops = vec![Op::Delete {
                key: kv.key.clone(),
                precondition: Precondition::ModRevision(wanted.unwrap_or(kv.mod_revision)),
            }];
            ops.extend(strategy.delete_ops(self, &object).await?);
            if options.orphan_dependents {
                ops.extend(self.orphan_ops(namespace, uid).await?);
            }
            match self.commit(ops).await {
                // The revision of the deletion, as the DELETED watch event carries it.
                Ok(revision) => return answer(&object, revision),
                // Without a precondition from the caller, a concurrent status write is no
                // reason to refuse the delete.
                Err(e) if e.is_conflict() && wanted.is_none() && attempt < MAX_RETRIES => {
                    attempt += 1
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The writes that take the owner `uid` out of the ownerReferences of its dependents
    /// in `namespace`, each conditional on the dependent as read (a concurrent change
    /// makes the delete plan again).
    async fn orphan_ops(&self, namespace: &str, uid: &str) -> Result<Vec<Op>> {
        let mut ops = Vec::new();
        for rt in OWNED_KINDS {
            for kv in self.read_prefix(prefix(rt, Some(namespace))).await? {
                let mut object: Value = serde_json::from_slice(&kv.value)
                    .map_err(|e| Error::internal(format!("{}: {e}", kv.key)))?;
                let Some(owners) = object
                    .pointer_mut("/metadata/ownerReferences")
                    .and_then(Value::as_array_mut)
                else {
                    continue;
                };
                let before = owners.len();
                owners.retain(|owner| owner["uid"] != uid);
                if owners.len() == before {
                    continue;
                }
                if owners.is_empty()
                    && let Some(meta) = object["metadata"].as_object_mut()
                {
                    meta.remove("ownerReferences");
                }
                ops.push(Op::Put {
                    key: kv.key.clone(),
                    value: serde_json::to_vec(&object)
                        .map_err(|e| Error::internal(e.to_string()))?,
                    precondition: Precondition::ModRevision(kv.mod_revision),
                });
            }
        }
        Ok(ops)
    }

    /// Reads the object, lets `modify` produce the new version, and writes it with the
    /// read revision as precondition. A conflict is retried when the caller did not ask
    /// for a specific revision (the change is re-derived from fresh state each time).
    async fn read_modify_write<S: Strategy>(
        &self,
        strategy: &S,
        rt: &'static ResourceType,
        (namespace, name): (&str, &str),
        wanted: Option<Revision>,
        manager: Option<&FieldManager>,
        mut modify: impl FnMut(&S::Object) -> Result<S::Object>,
    ) -> Result<Value> {
        let mut attempt = 0;
        loop {
            let Some(kv) = self.read(key(rt, namespace, name)).await? else {
                return Err(Error::not_found(rt.kind, name));
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
            let existing: S::Object = decode_typed(&kv)?;
            let modified = modify(&existing)?;
            match self
                .write_over(strategy, rt, (&kv, &existing), modified, manager)
                .await
            {
                Err(e) if e.is_conflict() && wanted.is_none() && attempt < MAX_RETRIES => {
                    attempt += 1
                }
                result => return result,
            }
        }
    }

    /// Validates `modified` and writes it over the stored `kv` if that is still current.
    async fn write_over<S: Strategy>(
        &self,
        strategy: &S,
        rt: &'static ResourceType,
        (kv, existing): (&KeyValue, &S::Object),
        mut modified: S::Object,
        manager: Option<&FieldManager>,
    ) -> Result<Value> {
        let (namespace, name) = (&existing.meta().namespace, &existing.meta().name);
        berth_api::normalize(&mut modified).map_err(|e| decode_error(rt, name, e))?;
        if &modified.meta().namespace != namespace || &modified.meta().name != name {
            return Err(Error::bad_request(
                "metadata.name and metadata.namespace must match the URL; renaming is not supported",
            ));
        }
        let planned = self
            .plan(
                strategy,
                rt,
                Some((kv, existing)),
                modified,
                &mut Batch::default(),
                manager,
            )
            .await?;
        if !planned.changed {
            return answer(existing, kv.mod_revision);
        }
        let revision = self.commit(planned.ops).await?;
        answer(&planned.object, revision)
    }

    /// Like `read_modify_write` but `modify` changes the stored object in place,
    /// bypassing the metadata and status merge (the status subresource owns status only,
    /// a deletion owns its timestamps). Returns the object as written and its revision
    /// (a writer that answers the API makes its answer with [`answer`]).
    async fn write_raw<S: Strategy>(
        &self,
        strategy: &S,
        rt: &'static ResourceType,
        namespace: &str,
        name: &str,
        wanted: Option<Revision>,
        modify: impl Fn(&mut S::Object) -> Result<()>,
    ) -> Result<(S::Object, Revision)> {
        let mut attempt = 0;
        loop {
            let Some(kv) = self.read(key(rt, namespace, name)).await? else {
                return Err(Error::not_found(rt.kind, name));
            };
            let existing: S::Object = decode_typed(&kv)?;
            let mut object = existing.clone();
            // Not stored (it is the store's revision, stamped on read): cleared here so
            // `encode` has no copy to make.
            object.meta_mut().resource_version.clear();
            modify(&mut object)?;
            let mut ops = vec![Op::Put {
                key: kv.key.clone(),
                value: encode(&object)?,
                precondition: Precondition::ModRevision(wanted.unwrap_or(kv.mod_revision)),
            }];
            ops.extend(strategy.status_ops(&existing, &object));
            match self.commit(ops).await {
                Ok(revision) => return Ok((object, revision)),
                Err(e) if e.is_conflict() && wanted.is_none() && attempt < MAX_RETRIES => {
                    attempt += 1
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Fills server-owned fields and computes the store ops for writing `object` over
    /// `existing` (the stored record and its object; None = create). Reads revision
    /// history, allocations and the namespace; `batch` holds what the objects planned
    /// before into the same transaction create and take. `metadata.managedFields` is kept
    /// from `existing` when the write leaves it out, and `manager`'s write recorded in it.
    async fn plan<S: Strategy>(
        &self,
        strategy: &S,
        rt: &'static ResourceType,
        existing: Option<(&KeyValue, &S::Object)>,
        mut object: S::Object,
        batch: &mut Batch,
        manager: Option<&FieldManager>,
    ) -> Result<Planned<S::Object>> {
        let old = existing.map(|(_, old)| old);
        let meta = object.meta_mut();
        meta.resource_version.clear();
        match old {
            Some(old) => {
                let old_meta = old.meta();
                meta.uid.clone_from(&old_meta.uid);
                meta.creation_timestamp
                    .clone_from(&old_meta.creation_timestamp);
                // Server-owned: a deletion in progress survives any update.
                meta.deletion_timestamp
                    .clone_from(&old_meta.deletion_timestamp);
                meta.deletion_grace_period_seconds = old_meta.deletion_grace_period_seconds;
                // As Kubernetes: a write that sends managedFields replaces them, one that
                // leaves them out keeps them.
                if meta.managed_fields.is_empty() {
                    meta.managed_fields.clone_from(&old_meta.managed_fields);
                }
                strategy.prepare_for_update(&mut object, old);
                let causes = strategy.validate_update(&object, old);
                if !causes.is_empty() {
                    return Err(Error::invalid(rt.kind, &object.meta().name, causes));
                }
            }
            None => {
                meta.uid = crate::util::uuid_v4();
                meta.creation_timestamp = crate::util::rfc3339_now();
                meta.generation = 1;
                meta.deletion_timestamp.clear();
                meta.deletion_grace_period_seconds = None;
                strategy.prepare_for_create(&mut object);
            }
        }
        let namespace = object.meta().namespace.clone();
        let mut ops = Vec::new();
        if old.is_none() && rt.namespaced && !batch.new_namespaces.contains(&namespace) {
            ops.push(self.namespace_check(&namespace).await?);
        }
        ops.extend(strategy.complete(self, old, &mut object, batch).await?);
        if let Some(old) = old {
            // After the strategy filled in what the server allocates, so re-sending a spec
            // without those fields is no change.
            let generation = old.meta().generation.max(1);
            object.meta_mut().generation =
                generation + i64::from(strategy.spec_changed(&object, old));
        }
        if let Some(manager) = manager {
            record_manager(rt, old, &mut object, manager)?;
        }
        let changed = match old {
            Some(old) => {
                let mut old = old.clone();
                old.meta_mut().resource_version.clear();
                old != object
            }
            None => true,
        };
        let precondition = match existing {
            Some((kv, _)) => Precondition::ModRevision(kv.mod_revision),
            None => Precondition::Absent,
        };
        ops.insert(
            0,
            Op::Put {
                key: key(rt, &namespace, &object.meta().name),
                value: encode(&object)?,
                precondition,
            },
        );
        Ok(Planned {
            ops,
            object,
            changed,
        })
    }
}

/// Records `manager`'s write of `object` over `old` (None: a create) in the object's
/// managedFields: what the write changed becomes the manager's.
fn record_manager<R: Resource>(
    rt: &ResourceType,
    old: Option<&R>,
    object: &mut R,
    manager: &FieldManager,
) -> Result<()> {
    let value =
        |object: &R| serde_json::to_value(object).map_err(|e| Error::internal(e.to_string()));
    let old = old.map(value).transpose()?;
    let api_version = rt.api_version();
    let time = crate::util::rfc3339_now();
    let writer = berth_api::managed::Writer {
        manager: &manager.name,
        api_version: &api_version,
        subresource: manager.subresource,
        time: &time,
    };
    let entries = berth_api::managed::record_update(
        old.as_ref(),
        &value(object)?,
        &object.meta().managed_fields,
        &writer,
    );
    object.meta_mut().managed_fields = entries;
    Ok(())
}

/// How a DELETE was asked for: the preconditions and the grace (Kubernetes' DeleteOptions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    pub resource_version: Option<Revision>,
    pub uid: Option<String>,
    pub grace_period_seconds: Option<i64>,
    /// `propagationPolicy: Orphan`: the dependents stay, without their reference to the
    /// deleted owner (otherwise the garbage collector deletes them after it).
    pub orphan_dependents: bool,
}

/// The kinds the garbage collector deletes with their owner: what an orphaning delete
/// leaves behind.
const OWNED_KINDS: [&ResourceType; 4] = [
    &berth_api::kinds::REPLICASETS,
    &berth_api::kinds::PODS,
    &berth_api::kinds::ENDPOINTS,
    &berth_api::kinds::ENDPOINT_SLICES,
];

impl DeleteOptions {
    /// Gone at once, whatever the pod's grace: for what no agent will confirm.
    pub fn force() -> Self {
        DeleteOptions {
            grace_period_seconds: Some(0),
            ..DeleteOptions::default()
        }
    }
}
