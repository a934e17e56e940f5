//! Every namespace has a `default` ServiceAccount (Kubernetes' serviceaccounts
//! controller): made when the namespace appears, made again if deleted.

use berth_api::{
    accounts::{DEFAULT_SERVICE_ACCOUNT, ServiceAccount},
    core::Namespace,
    meta::ObjectMeta,
};

use super::{Change, Context, Outcome, Reconciler, Snapshot, Write};

pub struct ServiceAccountController;

fn active(namespace: &Namespace) -> bool {
    namespace
        .status
        .as_ref()
        .is_none_or(|s| s.phase != "Terminating")
}

impl Reconciler for ServiceAccountController {
    type Object = Namespace;

    fn name(&self) -> &'static str {
        "serviceaccount"
    }

    fn affected(&self, change: &Change, _snapshot: &Snapshot) -> Vec<(String, String)> {
        if change.as_kind::<Namespace>().is_some() && !change.deleted {
            return vec![change.key()];
        }
        if let Some(account) = change.as_kind::<ServiceAccount>()
            && change.deleted
            && account.metadata.name == DEFAULT_SERVICE_ACCOUNT
        {
            return vec![(String::new(), account.metadata.namespace.clone())];
        }
        Vec::new()
    }

    fn reconcile(&self, namespace: &Namespace, snapshot: &Snapshot, _ctx: &Context) -> Outcome {
        let name = &namespace.metadata.name;
        if !active(namespace)
            || snapshot
                .get::<ServiceAccount>(name, DEFAULT_SERVICE_ACCOUNT)
                .is_some()
        {
            return Outcome::default();
        }
        Outcome::writes(vec![Write::create(ServiceAccount {
            metadata: ObjectMeta {
                name: DEFAULT_SERVICE_ACCOUNT.to_owned(),
                namespace: name.clone(),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        })])
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        controllers::{Settings, fixtures::typed},
        objects::Kind as _,
    };

    #[test]
    fn a_namespace_gets_its_default_service_account_once() {
        let ctx = Context {
            now: 0,
            settings: Settings::default(),
        };
        let ns: Namespace =
            typed(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}));
        let empty = Snapshot::from_objects(vec![ns.clone().into_object()], 1);
        let outcome = ServiceAccountController.reconcile(&ns, &empty, &ctx);
        let [Write::Create(created)] = &outcome.writes[..] else {
            panic!("{outcome:?}");
        };
        let account = ServiceAccount::of(created)
            .expect("a ServiceAccount")
            .clone();
        assert_eq!(
            (
                account.metadata.namespace.as_str(),
                account.metadata.name.as_str()
            ),
            ("shop", "default")
        );
        let full = Snapshot::from_objects(vec![ns.clone().into_object(), account.into_object()], 2);
        assert_eq!(
            ServiceAccountController.reconcile(&ns, &full, &ctx),
            Outcome::default()
        );
    }
}
