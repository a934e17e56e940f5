//! How objects sit in the store: their keys and their stored JSON. Shared by the
//! registry, which writes them, and the watch cache, which reads the store's log.

use std::collections::BTreeMap;

use berth_api::ResourceType;
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
