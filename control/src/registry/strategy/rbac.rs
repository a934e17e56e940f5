//! RoleBinding and ClusterRoleBinding: the role a binding grants is fixed once it is
//! created, as in Kubernetes (pkg/apis/rbac/validation: "cannot change roleRef"), so a
//! binding's name always means one role; delete and recreate it to grant another.

use berth_api::{
    rbac::{ClusterRoleBinding, RoleBinding, RoleRef},
    validation::FieldError,
};

use super::Strategy;

fn fixed_role_ref(object: &RoleRef, old: &RoleRef) -> Vec<FieldError> {
    if object == old {
        return Vec::new();
    }
    vec![FieldError {
        field: "roleRef".to_owned(),
        reason: "cannot change roleRef".to_owned(),
    }]
}

pub(in crate::registry) struct RoleBindingStrategy;

impl Strategy for RoleBindingStrategy {
    type Object = RoleBinding;

    fn validate_update(&self, object: &RoleBinding, old: &RoleBinding) -> Vec<FieldError> {
        fixed_role_ref(&object.role_ref, &old.role_ref)
    }
}

pub(in crate::registry) struct ClusterRoleBindingStrategy;

impl Strategy for ClusterRoleBindingStrategy {
    type Object = ClusterRoleBinding;

    fn validate_update(
        &self,
        object: &ClusterRoleBinding,
        old: &ClusterRoleBinding,
    ) -> Vec<FieldError> {
        fixed_role_ref(&object.role_ref, &old.role_ref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binding_keeps_its_role() {
        let old = RoleBinding {
            role_ref: RoleRef {
                api_group: berth_api::rbac::GROUP.to_owned(),
                kind: "ClusterRole".to_owned(),
                name: "view".to_owned(),
            },
            ..RoleBinding::default()
        };
        let mut more_subjects = old.clone();
        more_subjects.subjects.push(berth_api::rbac::Subject {
            kind: "User".to_owned(),
            api_group: berth_api::rbac::GROUP.to_owned(),
            name: "alice".to_owned(),
            namespace: String::new(),
        });
        assert_eq!(
            RoleBindingStrategy.validate_update(&more_subjects, &old),
            []
        );
        let mut other_role = old.clone();
        other_role.role_ref.name = "edit".to_owned();
        let errors = RoleBindingStrategy.validate_update(&other_role, &old);
        assert_eq!(
            errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
            ["roleRef"]
        );
    }
}
