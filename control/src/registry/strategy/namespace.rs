use berth_api::core::{Namespace, NamespaceStatus};
use serde_json::Value;

use super::Strategy;
use crate::{
    registry::{Registry, Result},
    store::Revision,
};

pub(in crate::registry) struct NamespaceStrategy;

impl Strategy for NamespaceStrategy {
    type Object = Namespace;

    fn prepare_for_create(&self, namespace: &mut Namespace) {
        namespace.status = Some(NamespaceStatus {
            phase: "Active".to_owned(),
        });
    }

    fn prepare_for_update(&self, namespace: &mut Namespace, old: &Namespace) {
        namespace.status = old.status.clone();
    }

    async fn begin_delete(
        &self,
        registry: &Registry,
        name: &str,
        wanted: Option<Revision>,
    ) -> Result<Option<Value>> {
        registry.begin_namespace_deletion(name, wanted).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_namespace_is_active_and_an_update_keeps_its_phase() {
        let mut created = Namespace::default();
        NamespaceStrategy.prepare_for_create(&mut created);
        assert_eq!(
            created.status.as_ref().map(|s| s.phase.as_str()),
            Some("Active")
        );
        let terminating = Namespace {
            status: Some(NamespaceStatus {
                phase: "Terminating".into(),
            }),
            ..Namespace::default()
        };
        let mut update = created.clone();
        NamespaceStrategy.prepare_for_update(&mut update, &terminating);
        assert_eq!(update.status, terminating.status);
    }
}
