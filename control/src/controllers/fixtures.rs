//! Test objects written as the manifests users write, decoded to their kinds' types: the
//! controllers' tests build their fixtures from JSON, the one place here that handles
//! `serde_json::Value`.

use berth_api::ResourceType;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Snapshot;
use crate::{objects::Object, store::Revision};

/// `manifest` as a `T`; a fixture that does not decode is a broken test.
pub fn typed<T: DeserializeOwned>(manifest: Value) -> T {
    match serde_json::from_value(manifest) {
        Ok(typed) => typed,
        Err(e) => panic!("a test fixture does not decode: {e}"),
    }
}

/// `manifest` as an object of kind `rt`.
pub fn object(rt: &ResourceType, manifest: Value) -> Object {
    match Object::from_manifest(rt, &manifest) {
        Some(Ok(object)) => object,
        Some(Err(e)) => panic!("a test fixture does not decode as a {}: {e}", rt.kind),
        None => panic!("no object kind for {}", rt.kind),
    }
}

/// A snapshot of manifests, each of the kind it is paired with.
pub fn snapshot(manifests: Vec<(&'static ResourceType, Value)>, revision: Revision) -> Snapshot {
    Snapshot::from_objects(
        manifests
            .into_iter()
            .map(|(rt, manifest)| object(rt, manifest)),
        revision,
    )
}
