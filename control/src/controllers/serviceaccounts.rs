//! Every namespace has a `default` ServiceAccount (Kubernetes' serviceaccounts
//! controller) and the `kube-root-ca.crt` ConfigMap with the cluster CA that pods' token
//! volumes project as `ca.crt` (its root-ca-cert-publisher): made when the namespace
//! appears, made again if deleted, the CA put back if changed.

use berth_api::{
    accounts::{DEFAULT_SERVICE_ACCOUNT, ROOT_CA_CONFIG_MAP, ROOT_CA_KEY, ServiceAccount},
    configuration::ConfigMap,
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

pub struct RootCaPublisher;

impl Reconciler for RootCaPublisher {
    type Object = Namespace;

    fn name(&self) -> &'static str {
        "root-ca-cert-publisher"
    }

    fn affected(&self, change: &Change, _snapshot: &Snapshot) -> Vec<(String, String)> {
        if change.as_kind::<Namespace>().is_some() && !change.deleted {
            return vec![change.key()];
        }
        match change.as_kind::<ConfigMap>() {
            Some(map) if map.metadata.name == ROOT_CA_CONFIG_MAP => {
                vec![(String::new(), map.metadata.namespace.clone())]
            }
            _ => Vec::new(),
        }
    }

    fn reconcile(&self, namespace: &Namespace, snapshot: &Snapshot, ctx: &Context) -> Outcome {
        let Some(ca) = &ctx.settings.root_ca_pem else {
            return Outcome::default();
        };
        let name = &namespace.metadata.name;
        if !active(namespace) {
            return Outcome::default();
        }
        let data = [(ROOT_CA_KEY.to_owned(), ca.to_string())].into();
        match snapshot.get::<ConfigMap>(name, ROOT_CA_CONFIG_MAP) {
            Some(map) if map.data == data => Outcome::default(),
            Some(map) => {
                let mut map = map.clone();
                map.data = data;
                map.binary_data.clear();
                Outcome::writes(vec![Write::update(map)])
            }
            None => Outcome::writes(vec![Write::create(ConfigMap {
                metadata: ObjectMeta {
                    name: ROOT_CA_CONFIG_MAP.to_owned(),
                    namespace: name.clone(),
                    ..ObjectMeta::default()
                },
                data,
                ..ConfigMap::default()
            })]),
        }
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

    #[test]
    fn a_namespace_gets_the_cluster_ca_and_keeps_it_as_published() {
        let ctx = Context {
            now: 0,
            settings: Settings {
                root_ca_pem: Some("CA PEM".into()),
                ..Settings::default()
            },
        };
        let ns: Namespace =
            typed(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}));
        let empty = Snapshot::from_objects(vec![ns.clone().into_object()], 1);
        let outcome = RootCaPublisher.reconcile(&ns, &empty, &ctx);
        let [Write::Create(created)] = &outcome.writes[..] else {
            panic!("{outcome:?}");
        };
        let mut map = ConfigMap::of(created).expect("a ConfigMap").clone();
        assert_eq!(
            (
                map.metadata.name.as_str(),
                map.data.get("ca.crt").map(String::as_str)
            ),
            ("kube-root-ca.crt", Some("CA PEM"))
        );
        let full =
            Snapshot::from_objects(vec![ns.clone().into_object(), map.clone().into_object()], 2);
        assert_eq!(
            RootCaPublisher.reconcile(&ns, &full, &ctx),
            Outcome::default()
        );
        // Someone changed it: the CA goes back.
        map.data.insert("ca.crt".into(), "forged".into());
        let changed = Snapshot::from_objects(vec![ns.clone().into_object(), map.into_object()], 3);
        let outcome = RootCaPublisher.reconcile(&ns, &changed, &ctx);
        let [Write::Update(updated)] = &outcome.writes[..] else {
            panic!("{outcome:?}");
        };
        assert_eq!(
            ConfigMap::of(updated)
                .and_then(|m| m.data.get("ca.crt"))
                .map(String::as_str),
            Some("CA PEM")
        );
    }
}
