//! Service → Endpoints: the addresses of the pods a service selects, ready ones in
//! `addresses` and the rest in `notReadyAddresses`, with target ports resolved.

use std::collections::BTreeMap;

use berth_api::ResourceType;
use serde_json::{Value, json};

use super::{
    Change, Context, ENDPOINTS, Outcome, PODS, Reconciler, SERVICES, Snapshot, Write, is_kind,
    owner_reference, pod_is_ready, pod_is_terminal, pod_is_terminating,
};
use crate::registry::{labels_of, name_of, namespace_of};

pub struct EndpointsController;

fn selector_of(service: &Value) -> BTreeMap<String, String> {
    service
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, pod: &Value) -> bool {
    let labels = labels_of(pod);
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Reconciler for EndpointsController {
    fn name(&self) -> &'static str {
        "endpoints"
    }

    fn kind(&self) -> &'static ResourceType {
        &SERVICES
    }

    fn affected(&self, change: &Change, snapshot: &Snapshot) -> Vec<(String, String)> {
        let ns = namespace_of(&change.object);
        if is_kind(change, &SERVICES) {
            return vec![(ns.to_owned(), name_of(&change.object).to_owned())];
        }
        if is_kind(change, &PODS) {
            // A pod whose labels changed away from a selector is caught by the resync.
            return snapshot
                .list(&SERVICES, Some(ns))
                .filter(|s| selects(&selector_of(s), &change.object))
                .map(|s| (ns.to_owned(), name_of(s).to_owned()))
                .collect();
        }
        if is_kind(change, &ENDPOINTS) {
            // Someone else edited our Endpoints: put them back.
            return vec![(ns.to_owned(), name_of(&change.object).to_owned())];
        }
        Vec::new()
    }

    fn reconcile(&self, service: &Value, snapshot: &Snapshot, _ctx: &Context) -> Outcome {
        let selector = selector_of(service);
        if selector.is_empty() {
            // Without a selector the user manages Endpoints by hand.
            return Outcome::default();
        }
        let ns = namespace_of(service);
        let mut ready = Vec::new();
        let mut not_ready = Vec::new();
        let mut pods: Vec<&Value> = Vec::new();
        for pod in snapshot.list(&PODS, Some(ns)) {
            let ip = pod
                .pointer("/status/podIP")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !selects(&selector, pod) || ip.is_empty() || pod_is_terminal(pod) {
                continue;
            }
            let mut address = json!({
                "ip": ip,
                "nodeName": pod.pointer("/spec/nodeName").cloned().unwrap_or(json!("")),
                "targetPod": name_of(pod),
            });
            if pod_is_terminating(pod) {
                // Out of the ready addresses at once, so every node stops sending it new
                // connections while the pod's preStop hook and grace run.
                address["terminating"] = json!(true);
                not_ready.push(address)
            } else if pod_is_ready(pod) {
                ready.push(address)
            } else {
                not_ready.push(address)
            }
            pods.push(pod);
        }
        let ports: Vec<Value> = service
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .map(|ports| {
                ports
                    .iter()
                    .filter_map(|p| resolve_port(p, &pods))
                    .collect()
            })
            .unwrap_or_default();
        let subsets = if ready.is_empty() && not_ready.is_empty() {
            json!([])
        } else {
            let mut subset = json!({"addresses": ready, "ports": ports});
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] = json!(not_ready);
            }
            json!([subset])
        };
        let existing = snapshot.get(&ENDPOINTS, ns, name_of(service));
        let write = match existing {
            Some(current) if current.get("subsets") == Some(&subsets) => return Outcome::default(),
            Some(current) => {
                let mut updated = current.clone();
                updated["subsets"] = subsets;
                Write::Update {
                    rt: &ENDPOINTS,
                    object: updated,
                }
            }
            None => Write::Create {
                rt: &ENDPOINTS,
                object: json!({
                    "apiVersion": "v1",
                    "kind": "Endpoints",
                    "metadata": {
                        "name": name_of(service),
                        "namespace": ns,
                        "labels": service.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
                        "ownerReferences": [owner_reference(service)],
                    },
                    "subsets": subsets,
                }),
            },
        };
        Outcome::writes(vec![write])
    }
}

/// A service port's target: its own number, a number, or a named container port.
fn resolve_port(port: &Value, pods: &[&Value]) -> Option<Value> {
    let number = match port.get("targetPort") {
        None | Some(Value::Null) => port.get("port")?.as_i64()?,
        Some(Value::Number(n)) => n.as_i64()?,
        Some(Value::String(name)) => pods.iter().find_map(|pod| {
            pod.pointer("/spec/containers")?
                .as_array()?
                .iter()
                .find_map(|c| {
                    c.get("ports")?
                        .as_array()?
                        .iter()
                        .find(|p| p["name"].as_str() == Some(name))
                        .and_then(|p| p["containerPort"].as_i64())
                })
        })?,
        Some(_) => return None,
    };
    let mut out =
        json!({"port": number, "protocol": port.get("protocol").cloned().unwrap_or(json!("TCP"))});
    if let Some(name) = port
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        out["name"] = json!(name);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::Settings;

    fn pod(name: &str, ip: &str, ready: bool, app: &str) -> (&'static ResourceType, Value) {
        (
            &PODS,
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}),
        )
    }

    #[test]
    fn ready_and_not_ready_pods_with_named_ports() {
        let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default", "uid": "s"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}});
        let snapshot = Snapshot::from_objects(
            vec![
                (&SERVICES, service.clone()),
                pod("a", "198.18.1.2", true, "web"),
                pod("b", "198.18.1.3", false, "web"),
                pod("c", "198.18.1.4", true, "other"),
                pod("d", "", true, "web"),
            ],
            1,
        );
        let ctx = Context {
            now: 0,
            settings: Settings::default(),
        };
        let outcome = EndpointsController.reconcile(&service, &snapshot, &ctx);
        let [Write::Create { object, .. }] = outcome.writes.as_slice() else {
            panic!("{outcome:?}")
        };
        let subset = &object["subsets"][0];
        assert_eq!(subset["addresses"][0]["ip"], "198.18.1.2");
        assert_eq!(subset["notReadyAddresses"][0]["ip"], "198.18.1.3");
        assert_eq!(subset["addresses"].as_array().map(Vec::len), Some(1));
        assert_eq!(subset["ports"], json!([{"port": 8080, "protocol": "TCP"}]));

        let mut with_endpoints = vec![(&SERVICES, service.clone()), (&ENDPOINTS, object.clone())];
        with_endpoints.extend([
            pod("a", "198.18.1.2", true, "web"),
            pod("b", "198.18.1.3", false, "web"),
        ]);
        let snapshot = Snapshot::from_objects(with_endpoints, 2);
        assert_eq!(
            EndpointsController.reconcile(&service, &snapshot, &ctx),
            Outcome::default(),
            "idempotent"
        );
    }

    #[test]
    fn terminating_pods_leave_the_ready_addresses_at_once() {
        let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default", "uid": "s"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}});
        let (rt, mut leaving) = pod("b", "198.18.1.3", true, "web");
        leaving["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:30Z");
        let snapshot = Snapshot::from_objects(
            vec![
                (&SERVICES, service.clone()),
                pod("a", "198.18.1.2", true, "web"),
                (rt, leaving),
            ],
            1,
        );
        let ctx = Context {
            now: 0,
            settings: Settings::default(),
        };
        let outcome = EndpointsController.reconcile(&service, &snapshot, &ctx);
        let [Write::Create { object, .. }] = outcome.writes.as_slice() else {
            panic!("{outcome:?}")
        };
        let subset = &object["subsets"][0];
        assert_eq!(
            subset["addresses"],
            json!([{"ip": "198.18.1.2", "nodeName": "n1", "targetPod": "a"}])
        );
        assert_eq!(
            subset["notReadyAddresses"],
            json!([{"ip": "198.18.1.3", "nodeName": "n1", "targetPod": "b", "terminating": true}])
        );
    }
}
