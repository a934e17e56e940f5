//! `berthctl apply`: every object of a manifest created or replaced in one transaction.

use berth_api::{ResourceType, kinds::NAMESPACES, manifest::ManifestObject};
use serde::Serialize;
use serde_json::Value;

use super::{
    Batch, Error, MAX_RETRIES, Registry, Result, decode_typed, key, name_of, namespace_of,
    strategy::{Strategy, with_strategy},
    typed,
};
use crate::store::{KeyValue, Op};

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

impl Registry {
    /// Creates or replaces every object of a manifest in one transaction: all or nothing.
    pub async fn apply(
        &self,
        objects: Vec<ManifestObject>,
        dry_run: bool,
    ) -> Result<Vec<ApplyResult>> {
        let mut attempt = 0;
        loop {
            // Namespaces this manifest creates: objects may be created in them in the same
            // transaction, before they are in the store.
            let mut batch = Batch::default();
            for object in objects
                .iter()
                .filter(|o| o.resource_type.kind == NAMESPACES.kind)
            {
                let name = name_of(&object.decoded.object);
                if self.read(key(&NAMESPACES, "", name)).await?.is_none() {
                    batch.new_namespaces.insert(name.to_owned());
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
                let (planned_ops, changed) = with_strategy!(rt, |strategy| {
                    self.plan_applied(strategy, rt, existing.as_ref(), incoming, &mut batch)
                        .await
                })?;
                results.push(ApplyResult {
                    api_version: rt.api_version(),
                    kind: rt.kind.to_owned(),
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    action: if changed { action } else { "unchanged" },
                    resource_version: existing
                        .as_ref()
                        .map(|kv| kv.mod_revision.to_string())
                        .unwrap_or_default(),
                    warnings: object.decoded.warnings.clone(),
                });
                if changed {
                    ops.extend(planned_ops);
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
                Err(e) if e.is_conflict() && attempt < MAX_RETRIES => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The ops writing one manifest object over what is stored, and whether it changes.
    async fn plan_applied<S: Strategy>(
        &self,
        strategy: &S,
        rt: &'static ResourceType,
        existing: Option<&KeyValue>,
        incoming: &Value,
        batch: &mut Batch,
    ) -> Result<(Vec<Op>, bool), Error> {
        let stored: Option<S::Object> = existing.map(decode_typed).transpose()?;
        let planned = self
            .plan(
                strategy,
                rt,
                existing.zip(stored.as_ref()),
                typed(strategy, incoming.clone())?,
                batch,
                None,
            )
            .await?;
        Ok((planned.ops, planned.changed))
    }
}
