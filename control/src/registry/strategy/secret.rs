use crate::{
    registry::{Batch, Registry, Result},
    store::Op,
};
use berth_api::{
    configuration::Secret,
    validation::{FieldError, FieldPath, Validator},
};

use super::{Strategy, immutable_update};

/// `stringData` is folded into `data` on every write, so it is never stored. The values
/// are encrypted below the registry, by the store the server opens
/// (`crate::store::encrypted`).
pub(in crate::registry) struct SecretStrategy;

impl Strategy for SecretStrategy {
    type Object = Secret;

    async fn complete(
        &self,
        registry: &Registry,
        old: Option<&Secret>,
        object: &mut Secret,
        batch: &mut Batch,
    ) -> Result<Vec<Op>> {
        if old.is_none() {
            super::admit_count(registry, "secrets", object, batch).await?;
        }
        Ok(Vec::new())
    }

    fn prepare_for_create(&self, secret: &mut Secret) {
        secret.fold_string_data();
    }

    fn prepare_for_update(&self, secret: &mut Secret, _old: &Secret) {
        secret.fold_string_data();
    }

    fn validate_update(&self, secret: &Secret, old: &Secret) -> Vec<FieldError> {
        let mut errors = immutable_update(old.immutable, secret.immutable, secret.data != old.data);
        if secret.secret_type() != old.secret_type() {
            let mut v = Validator::default();
            v.error(&FieldPath::root("type"), "field is immutable");
            errors.extend(v.into_errors());
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use berth_api::configuration::Bytes;

    use super::*;

    #[test]
    fn string_data_is_folded_into_data_and_the_type_is_fixed() {
        let mut secret = Secret::default();
        secret.data.insert("a".into(), Bytes(b"old".to_vec()));
        secret.string_data.insert("a".into(), "new".into());
        SecretStrategy.prepare_for_create(&mut secret);
        assert!(secret.string_data.is_empty());
        assert_eq!(secret.data["a"], Bytes(b"new".to_vec()));
        let mut retyped = secret.clone();
        retyped.type_ = "kubernetes.io/dockerconfigjson".into();
        let fields: Vec<String> = SecretStrategy
            .validate_update(&retyped, &secret)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["type"]);
        // Opaque spelled out is the default.
        retyped.type_ = "Opaque".into();
        assert_eq!(SecretStrategy.validate_update(&retyped, &secret), []);
    }
}
