//! Namespace lifecycle: `default` always there, no create in a namespace that is absent
//! or terminating, and a delete that first marks the namespace `Terminating` (the
//! namespace controller then deletes what is in it and deletes it again).

use berth_api::{
    RESOURCE_TYPES, Source,
    core::{Namespace, NamespaceStatus},
    kinds::NAMESPACES,
    meta::SYSTEM_NAMESPACES,
};
use serde_json::json;

use super::{
    Error, Registry, Result, decode_error, decode_typed, key, prefix, strategy::NamespaceStrategy,
};
use crate::store::{Op, Precondition, Revision};

pub(super) const TERMINATING: &str = "Terminating";

fn is_terminating(namespace: &Namespace) -> bool {
    namespace
        .status
        .as_ref()
        .is_some_and(|status| status.phase == TERMINATING)
}

impl Registry {
    /// Creates namespace `name` unless it exists (`default`, at every start).
    pub async fn ensure_namespace(&self, name: &str) -> Result<()> {
        let object = NAMESPACES
            .decode(Source::Value(json!({"metadata": {"name": name}})))
            .map_err(|e| decode_error(&NAMESPACES, name, e))?
            .object;
        match self.create(&NAMESPACES, object).await {
            Ok(_) | Err(Error::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The op that makes a create in `namespace` depend on the namespace as read: it must
    /// exist and not be terminating, and must not change before the commit.
    pub(super) async fn namespace_check(&self, namespace: &str) -> Result<Op> {
        let Some(kv) = self.read(key(&NAMESPACES, "", namespace)).await? else {
            return Err(Error::not_found(NAMESPACES.plural, namespace));
        };
        if is_terminating(&decode_typed(&kv)?) {
            return Err(Error::Forbidden(format!(
                "unable to create new content in namespace {namespace} because it is being terminated"
            )));
        }
        Ok(Op::Check {
            key: kv.key,
            precondition: Precondition::ModRevision(kv.mod_revision),
        })
    }

    /// Deleting a namespace first marks it `Terminating`; returns None once it is empty
    /// and may go.
    pub(super) async fn begin_namespace_deletion(
        &self,
        name: &str,
        wanted: Option<Revision>,
    ) -> Result<Option<serde_json::Value>> {
        if SYSTEM_NAMESPACES.contains(&name) {
            return Err(Error::Forbidden(format!(
                "namespaces {name:?} is forbidden: this namespace may not be deleted"
            )));
        }
        let Some(kv) = self.read(key(&NAMESPACES, "", name)).await? else {
            return Err(Error::not_found(NAMESPACES.kind, name));
        };
        if !is_terminating(&decode_typed(&kv)?) {
            let terminating = self
                .write_raw(
                    &NamespaceStrategy,
                    &NAMESPACES,
                    "",
                    name,
                    wanted,
                    |namespace| {
                        namespace
                            .status
                            .get_or_insert_with(NamespaceStatus::default)
                            .phase = TERMINATING.to_owned();
                        Ok(())
                    },
                )
                .await
                .and_then(|(namespace, revision)| super::answer(&namespace, revision))?;
            return Ok(Some(terminating));
        }
        for rt in RESOURCE_TYPES.iter().filter(|rt| rt.namespaced) {
            if !self.read_prefix(prefix(rt, Some(name))).await?.is_empty() {
                return Ok(Some(super::decode_stored(&kv)?));
            }
        }
        Ok(None)
    }
}
