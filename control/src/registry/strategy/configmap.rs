use crate::{
    registry::{Batch, Registry, Result},
    store::Op,
};
use berth_api::{configuration::ConfigMap, validation::FieldError};

use super::{Strategy, immutable_update};

pub(in crate::registry) struct ConfigMapStrategy;

impl Strategy for ConfigMapStrategy {
    type Object = ConfigMap;

    async fn complete(
        &self,
        registry: &Registry,
        old: Option<&ConfigMap>,
        object: &mut ConfigMap,
        batch: &mut Batch,
    ) -> Result<Vec<Op>> {
        if old.is_none() {
            super::admit_count(registry, "configmaps", object, batch).await?;
        }
        Ok(Vec::new())
    }

    fn validate_update(&self, object: &ConfigMap, old: &ConfigMap) -> Vec<FieldError> {
        immutable_update(
            old.immutable,
            object.immutable,
            (&object.data, &object.binary_data) != (&old.data, &old.binary_data),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_immutable_config_map_keeps_its_values_and_stays_immutable() {
        let mut old = ConfigMap::default();
        old.data.insert("a".into(), "1".into());
        let mut changed = old.clone();
        changed.data.insert("a".into(), "2".into());
        assert_eq!(ConfigMapStrategy.validate_update(&changed, &old), []);
        old.immutable = Some(true);
        changed.immutable = Some(true);
        let fields = |errors: Vec<FieldError>| -> Vec<String> {
            errors.into_iter().map(|e| e.field).collect()
        };
        assert_eq!(
            fields(ConfigMapStrategy.validate_update(&changed, &old)),
            ["data"]
        );
        let mut relabelled = old.clone();
        relabelled.metadata.labels.insert("x".into(), "y".into());
        assert_eq!(ConfigMapStrategy.validate_update(&relabelled, &old), []);
        relabelled.immutable = None;
        assert_eq!(
            fields(ConfigMapStrategy.validate_update(&relabelled, &old)),
            ["immutable"]
        );
    }
}
