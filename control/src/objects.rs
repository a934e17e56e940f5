//! How objects sit in the store: their keys and their stored JSON. Shared by the
//! registry, which writes them, and the watch cache, which reads the store's log.

use std::collections::BTreeMap;

use berth_api::{
    Resource, ResourceType,
    accounts::ServiceAccount,
    apps::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet},
    autoscaling::HorizontalPodAutoscaler,
    batch::{CronJob, Job},
    configuration::{ConfigMap, Secret},
    core::{Endpoints, Event, Namespace, Node, Pod, Service},
    discovery::EndpointSlice,
    disruption::PodDisruptionBudget,
    meta::ObjectMeta,
    networking::NetworkPolicy,
    policy::{LimitRange, ResourceQuota},
    rbac::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    storage::{PersistentVolume, PersistentVolumeClaim},
};
use serde_json::{Value, json};

use crate::store::{KeyValue, StoreError};

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
pub fn decode_stored(kv: &KeyValue) -> Result<Value, StoreError> {
    let mut object: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", kv.key)))?;
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

pub(crate) fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
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

/// A stored object of any kind, decoded to its kind's type: what the controllers' cache
/// holds and what they write back. One variant per kind of the kind table, so a key of
/// the store always decodes to one.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    Endpoints(Endpoints),
    EndpointSlice(EndpointSlice),
    Node(Node),
    Event(Event),
    Deployment(Deployment),
    ReplicaSet(ReplicaSet),
    DaemonSet(DaemonSet),
    PodDisruptionBudget(PodDisruptionBudget),
    NetworkPolicy(NetworkPolicy),
    StatefulSet(StatefulSet),
    ControllerRevision(ControllerRevision),
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
    Job(Job),
    CronJob(CronJob),
    ConfigMap(ConfigMap),
    Secret(Secret),
    PersistentVolumeClaim(PersistentVolumeClaim),
    PersistentVolume(PersistentVolume),
    LimitRange(LimitRange),
    ResourceQuota(ResourceQuota),
    ServiceAccount(ServiceAccount),
    Role(Role),
    ClusterRole(ClusterRole),
    RoleBinding(RoleBinding),
    ClusterRoleBinding(ClusterRoleBinding),
}

/// A kind of [`Object`]: how to get it in and out of the enum, and its entry in the kind
/// table.
pub trait Kind: Resource + PartialEq {
    fn resource_type() -> &'static ResourceType;
    fn into_object(self) -> Object;
    fn of(object: &Object) -> Option<&Self>;
    fn from_object(object: Object) -> Option<Self>;
    /// Takes `from`'s status, for a write through the `/status` subresource; nothing for
    /// kinds without one.
    fn copy_status(&mut self, from: &Self);
}

macro_rules! kinds {
    ($($variant:ident => $table:ident $([$status:ident])?),* $(,)?) => {
        $(
            impl Kind for $variant {
                fn resource_type() -> &'static ResourceType {
                    &berth_api::kinds::$table
                }

                fn into_object(self) -> Object {
                    Object::$variant(self)
                }

                fn of(object: &Object) -> Option<&Self> {
                    match object {
                        Object::$variant(typed) => Some(typed),
                        _ => None,
                    }
                }

                fn from_object(object: Object) -> Option<Self> {
                    match object {
                        Object::$variant(typed) => Some(typed),
                        _ => None,
                    }
                }

                fn copy_status(&mut self, _from: &Self) {
                    $(self.$status.clone_from(&_from.$status);)?
                }
            }
        )*

        impl Object {
            pub fn meta(&self) -> &ObjectMeta {
                match self {
                    $(Object::$variant(typed) => typed.meta(),)*
                }
            }

            pub fn meta_mut(&mut self) -> &mut ObjectMeta {
                match self {
                    $(Object::$variant(typed) => typed.meta_mut(),)*
                }
            }

            pub fn resource_type(&self) -> &'static ResourceType {
                match self {
                    $(Object::$variant(_) => $variant::resource_type(),)*
                }
            }

            /// `bytes` as an object of kind `rt`; None for a kind without a variant.
            fn decode_as(
                rt: &ResourceType,
                bytes: &[u8],
            ) -> Option<Result<Object, serde_json::Error>> {
                $(
                    if rt == $variant::resource_type() {
                        return Some(serde_json::from_slice(bytes).map(Object::$variant));
                    }
                )*
                None
            }
        }
    };
}

kinds! {
    Namespace => NAMESPACES [status],
    Pod => PODS [status],
    Service => SERVICES [status],
    Endpoints => ENDPOINTS,
    EndpointSlice => ENDPOINT_SLICES,
    Node => NODES [status],
    Event => EVENTS,
    Deployment => DEPLOYMENTS [status],
    ReplicaSet => REPLICASETS [status],
    DaemonSet => DAEMON_SETS [status],
    PodDisruptionBudget => PDBS [status],
    NetworkPolicy => NETWORK_POLICIES,
    StatefulSet => STATEFULSETS [status],
    ControllerRevision => CONTROLLER_REVISIONS,
    HorizontalPodAutoscaler => HPAS [status],
    Job => JOBS [status],
    CronJob => CRON_JOBS [status],
    ConfigMap => CONFIG_MAPS,
    Secret => SECRETS,
    PersistentVolumeClaim => PERSISTENT_VOLUME_CLAIMS [status],
    PersistentVolume => PERSISTENT_VOLUMES [status],
    LimitRange => LIMIT_RANGES,
    ResourceQuota => RESOURCE_QUOTAS [status],
    ServiceAccount => SERVICE_ACCOUNTS,
    Role => ROLES,
    ClusterRole => CLUSTER_ROLES,
    RoleBinding => ROLE_BINDINGS,
    ClusterRoleBinding => CLUSTER_ROLE_BINDINGS,
}

impl Object {
    /// A test's manifest as an object of kind `rt`.
    #[cfg(test)]
    pub fn from_manifest(
        rt: &ResourceType,
        manifest: &Value,
    ) -> Option<Result<Object, serde_json::Error>> {
        Self::decode_as(rt, manifest.to_string().as_bytes())
    }

    /// The object stored at `kv`, with its `resourceVersion`; None for keys that hold no
    /// object (allocations, tokens).
    pub fn decode(kv: &KeyValue) -> Option<Result<Object, StoreError>> {
        let rt = kind_of_key(&kv.key)?;
        let decoded = Self::decode_as(rt, &kv.value)?;
        Some(
            decoded
                .map(|mut object| {
                    object.meta_mut().resource_version = kv.mod_revision.to_string();
                    object
                })
                .map_err(|e| StoreError::Corrupt(format!("{}: {e}", kv.key))),
        )
    }

    pub fn name(&self) -> &str {
        &self.meta().name
    }

    pub fn namespace(&self) -> &str {
        &self.meta().namespace
    }

    pub fn uid(&self) -> &str {
        &self.meta().uid
    }
}

/// The kind whose objects live under `key` (`/<group or core>/<plural>/...`).
fn kind_of_key(key: &str) -> Option<&'static ResourceType> {
    let mut segments = key.strip_prefix('/')?.split('/');
    let group = match segments.next()? {
        "core" => "",
        group => group,
    };
    berth_api::find_by_plural(group, segments.next()?)
}
