//! Service → EndpointSlices (`discovery.k8s.io/v1`): the same endpoints as the Service's
//! Endpoints, in slices of at most [`MAX_ENDPOINTS_PER_SLICE`]. As Kubernetes' controller
//! does, an endpoint stays in the slice it is in while it exists, new ones fill the
//! slices that have room before a new slice is made, and only slices whose content
//! changed are written: one pod turning ready rewrites one slice, not the Service's
//! whole list. A Service without a selector gets its slices mirrored from the Endpoints
//! its user writes (Kubernetes' mirroring controller), one group of slices per distinct
//! port list, so the nodes, which read slices, serve those too.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use berth_api::{
    core::{self, EndpointAddress, Endpoints, ObjectReference, Pod, Service},
    discovery::{
        Endpoint, EndpointConditions, EndpointPort, EndpointSlice, MANAGED_BY, MANAGED_BY_LABEL,
        MAX_ENDPOINTS_PER_SLICE, MIRRORED_BY, SERVICE_NAME_LABEL,
    },
    meta::ObjectMeta,
};

use super::{
    Change, Context, Outcome, Reconciler, Snapshot, Write,
    endpoints::{Selected, SelectedEndpoint, select, selecting},
    owner_reference,
};

pub struct EndpointSliceController;

impl Reconciler for EndpointSliceController {
    type Object = Service;

    fn name(&self) -> &'static str {
        "endpointslices"
    }

    fn affected(&self, change: &Change, snapshot: &Snapshot) -> Vec<(String, String)> {
        if let Some(pod) = change.as_kind::<Pod>() {
            return selecting(pod, snapshot);
        }
        if change.as_kind::<Service>().is_some() || change.as_kind::<Endpoints>().is_some() {
            // Endpoints: a Service without a selector mirrors its user's.
            return vec![change.key()];
        }
        if let Some(slice) = change.as_kind::<EndpointSlice>() {
            // Someone else edited or deleted one of ours: put it back.
            if managed_by(slice).is_some()
                && let Some(service) = slice.service_name()
            {
                return vec![(slice.metadata.namespace.clone(), service.to_owned())];
            }
        }
        Vec::new()
    }

    fn reconcile(&self, service: &Service, snapshot: &Snapshot, _ctx: &Context) -> Outcome {
        let ns = &service.metadata.namespace;
        let name = &service.metadata.name;
        let (mut selected_slices, mut mirrored_slices) = (Vec::new(), Vec::new());
        for slice in snapshot.list::<EndpointSlice>(Some(ns)) {
            if slice.service_name() != Some(name.as_str()) {
                continue;
            }
            match managed_by(slice) {
                Some(MANAGED_BY) => selected_slices.push(slice),
                Some(_) => mirrored_slices.push(slice),
                None => {}
            }
        }
        let mut taken: BTreeSet<String> = selected_slices
            .iter()
            .chain(&mirrored_slices)
            .map(|s| s.metadata.name.clone())
            .collect();
        let mut writes = Vec::new();
        // A Service that gained or lost its selector drops the other kind's slices.
        let stale = match select(service, snapshot) {
            Some(selected) => {
                let plan = plan(&selected_slices, selected);
                write_plan(service, plan, MANAGED_BY, &mut taken, &mut writes);
                mirrored_slices
            }
            None => {
                let user_endpoints = snapshot.get::<Endpoints>(ns, name);
                let groups = user_endpoints.map(mirrored_groups).unwrap_or_default();
                let mut left = mirrored_slices;
                for (ports, endpoints) in groups {
                    let as_sliced: Vec<EndpointPort> = ports.iter().map(slice_port).collect();
                    let (group, rest): (Vec<&EndpointSlice>, Vec<&EndpointSlice>) =
                        left.into_iter().partition(|slice| slice.ports == as_sliced);
                    left = rest;
                    let plan = plan(&group, Selected { endpoints, ports });
                    write_plan(service, plan, MIRRORED_BY, &mut taken, &mut writes);
                }
                left.extend(selected_slices);
                left
            }
        };
        writes.extend(stale.into_iter().map(Write::delete));
        Outcome::writes(writes)
    }
}

/// The writes that carry out `plan` for `service`'s slices managed by `manager`.
fn write_plan(
    service: &Service,
    plan: Plan<'_>,
    manager: &str,
    taken: &mut BTreeSet<String>,
    writes: &mut Vec<Write>,
) {
    for (existing, endpoints, ports) in plan.keep {
        if existing.endpoints != endpoints || existing.ports != ports {
            let mut updated = existing.clone();
            updated.endpoints = endpoints;
            updated.ports = ports;
            writes.push(Write::update(updated));
        }
    }
    for existing in plan.delete {
        writes.push(Write::delete(existing));
    }
    for (endpoints, ports) in plan.create {
        let slice_name = free_name(&service.metadata.name, taken);
        writes.push(Write::create(new_slice(
            service, slice_name, endpoints, ports, manager,
        )));
    }
}

/// Which of the control plane's controllers manages `slice`, if one does.
fn managed_by(slice: &EndpointSlice) -> Option<&'static str> {
    match slice.metadata.labels.get(MANAGED_BY_LABEL)?.as_str() {
        MANAGED_BY => Some(MANAGED_BY),
        MIRRORED_BY => Some(MIRRORED_BY),
        _ => None,
    }
}

/// A user's Endpoints as slices' contents: the addresses of its subsets grouped by their
/// port lists (an address listed twice in a group counts once, ready if listed ready).
type MirroredGroup = (Vec<core::EndpointPort>, Vec<SelectedEndpoint>);

fn mirrored_groups(user: &Endpoints) -> Vec<MirroredGroup> {
    let mut groups: BTreeMap<
        String,
        (Vec<core::EndpointPort>, BTreeMap<String, SelectedEndpoint>),
    > = BTreeMap::new();
    for subset in &user.subsets {
        let key = serde_json::to_string(&subset.ports).unwrap_or_default();
        let (_, endpoints) = groups
            .entry(key)
            .or_insert_with(|| (subset.ports.clone(), BTreeMap::new()));
        let listed = subset
            .addresses
            .iter()
            .map(|address| (address, true))
            .chain(
                subset
                    .not_ready_addresses
                    .iter()
                    .map(|address| (address, false)),
            );
        for (address, ready) in listed {
            let endpoint = endpoints
                .entry(address.ip.clone())
                .or_insert_with(|| mirrored_endpoint(address, ready));
            endpoint.ready |= ready;
        }
    }
    groups
        .into_values()
        .map(|(ports, endpoints)| (ports, endpoints.into_values().collect()))
        .collect()
}

fn mirrored_endpoint(address: &EndpointAddress, ready: bool) -> SelectedEndpoint {
    SelectedEndpoint {
        address: address.clone(),
        ready,
        pod_uid: String::new(),
    }
}

/// What to do with a Service's slices: each kept slice with its new content, the slices
/// to delete, the contents of slices to create.
#[derive(Default)]
struct Plan<'a> {
    keep: Vec<(&'a EndpointSlice, Vec<Endpoint>, Vec<EndpointPort>)>,
    delete: Vec<&'a EndpointSlice>,
    create: Vec<(Vec<Endpoint>, Vec<EndpointPort>)>,
}

fn slice_port(port: &core::EndpointPort) -> EndpointPort {
    EndpointPort {
        name: Some(port.name.clone()),
        port: Some(port.port),
        protocol: Some(port.protocol.clone()),
        app_protocol: None,
    }
}

fn plan<'a>(current: &[&'a EndpointSlice], selected: Selected) -> Plan<'a> {
    let ports: Vec<EndpointPort> = selected.ports.iter().map(slice_port).collect();
    let mut wanted: BTreeMap<String, Endpoint> = selected
        .endpoints
        .into_iter()
        .map(|endpoint| (endpoint.address.ip.clone(), endpoint_of(endpoint)))
        .collect();
    let mut sorted: Vec<&EndpointSlice> = current.to_vec();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    // Endpoints stay where they are.
    let mut kept: Vec<(&EndpointSlice, Vec<Endpoint>)> = sorted
        .iter()
        .map(|slice| {
            let still: Vec<Endpoint> = slice
                .endpoints
                .iter()
                .filter_map(|old| wanted.remove(old.addresses.first()?))
                .collect();
            (*slice, still)
        })
        .collect();
    // New ones, in address order, fill the slices with room, then new slices.
    let mut new: Vec<Endpoint> = wanted.into_values().collect();
    new.sort_by_key(|endpoint| {
        let first = endpoint.addresses.first();
        (
            first.and_then(|ip| ip.parse::<Ipv4Addr>().ok()),
            first.cloned(),
        )
    });
    let mut new = new.into_iter();
    for (_, endpoints) in &mut kept {
        while endpoints.len() < MAX_ENDPOINTS_PER_SLICE {
            let Some(endpoint) = new.next() else { break };
            endpoints.push(endpoint);
        }
    }
    let mut plan = Plan::default();
    let rest: Vec<Endpoint> = new.collect();
    for chunk in rest.chunks(MAX_ENDPOINTS_PER_SLICE) {
        plan.create.push((chunk.to_vec(), ports.clone()));
    }
    // An empty slice is kept only when the Service has no endpoints at all (Kubernetes'
    // placeholder, so consumers see the Service's ports).
    let any_endpoints = !plan.create.is_empty() || kept.iter().any(|(_, e)| !e.is_empty());
    let mut placeholder_kept = false;
    for (slice, endpoints) in kept {
        if endpoints.is_empty() && (any_endpoints || placeholder_kept) {
            plan.delete.push(slice);
            continue;
        }
        placeholder_kept |= endpoints.is_empty();
        plan.keep.push((slice, endpoints, ports.clone()));
    }
    if plan.keep.is_empty() && plan.create.is_empty() {
        plan.create.push((Vec::new(), ports));
    }
    plan
}

fn endpoint_of(selected: SelectedEndpoint) -> Endpoint {
    let terminating = selected.address.terminating;
    Endpoint {
        addresses: vec![selected.address.ip],
        conditions: EndpointConditions {
            ready: Some(selected.ready && !terminating),
            serving: Some(selected.ready),
            terminating: Some(terminating),
        },
        node_name: Some(selected.address.node_name).filter(|n| !n.is_empty()),
        hostname: Some(selected.address.hostname).filter(|h| !h.is_empty()),
        target_ref: (!selected.address.target_pod.is_empty()).then(|| ObjectReference {
            api_version: String::new(),
            kind: "Pod".to_owned(),
            name: selected.address.target_pod,
            namespace: String::new(),
            uid: selected.pod_uid,
        }),
    }
}

/// `<service>-<n>` with the smallest n no slice of the namespace's Service has.
fn free_name(service: &str, taken: &mut BTreeSet<String>) -> String {
    let name = (0..)
        .map(|n| format!("{service}-{n}"))
        .find(|candidate| !taken.contains(candidate))
        .unwrap_or_else(|| service.to_owned());
    taken.insert(name.clone());
    name
}

fn new_slice(
    service: &Service,
    name: String,
    endpoints: Vec<Endpoint>,
    ports: Vec<EndpointPort>,
    manager: &str,
) -> EndpointSlice {
    let mut labels = service.metadata.labels.clone();
    labels.insert(SERVICE_NAME_LABEL.to_owned(), service.metadata.name.clone());
    labels.insert(MANAGED_BY_LABEL.to_owned(), manager.to_owned());
    EndpointSlice {
        api_version: "discovery.k8s.io/v1".to_owned(),
        kind: "EndpointSlice".to_owned(),
        metadata: ObjectMeta {
            name,
            namespace: service.metadata.namespace.clone(),
            labels,
            owner_references: vec![owner_reference(service)],
            ..ObjectMeta::default()
        },
        address_type: "IPv4".to_owned(),
        endpoints,
        ports,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        controllers::{Settings, fixtures::typed},
        objects::{Kind as _, Object},
    };

    fn pod(i: usize, ready: bool) -> Pod {
        typed(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("web-{i}"), "namespace": "default", "uid": format!("u{i}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": format!("198.18.{}.{}", i / 200, i % 200 + 1),
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
    }

    fn service() -> Service {
        typed(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default", "uid": "s", "labels": {"tier": "front"}},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
    }

    fn ctx() -> Context {
        Context {
            now: 0,
            settings: Settings::default(),
        }
    }

    /// Applies `outcome`'s slice writes to `slices`, as the store would.
    fn apply(slices: &mut BTreeMap<String, EndpointSlice>, outcome: &Outcome) {
        for write in &outcome.writes {
            match write {
                Write::Create(Object::EndpointSlice(slice))
                | Write::Update(Object::EndpointSlice(slice)) => {
                    slices.insert(slice.metadata.name.clone(), slice.clone());
                }
                Write::Delete { name, .. } => {
                    slices.remove(name);
                }
                other => panic!("unexpected write {other:?}"),
            }
        }
    }

    fn reconcile(pods: &[Pod], slices: &BTreeMap<String, EndpointSlice>) -> Outcome {
        let service = service();
        let objects: Vec<Object> = std::iter::once(service.clone().into_object())
            .chain(pods.iter().cloned().map(Pod::into_object))
            .chain(slices.values().cloned().map(EndpointSlice::into_object))
            .collect();
        EndpointSliceController.reconcile(&service, &Snapshot::from_objects(objects, 1), &ctx())
    }

    #[test]
    fn slices_hold_at_most_100_and_one_change_rewrites_one_slice() {
        let mut pods: Vec<Pod> = (0..250).map(|i| pod(i, true)).collect();
        let mut slices = BTreeMap::new();
        let first = reconcile(&pods, &slices);
        apply(&mut slices, &first);
        let sizes: Vec<usize> = slices.values().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        let slice = &slices["web-0"];
        assert_eq!(slice.service_name(), Some("web"));
        assert_eq!(slice.metadata.labels["tier"], "front");
        assert_eq!(slice.metadata.owner_references[0].uid, "s");
        assert_eq!(
            slice.ports,
            [EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]
        );
        assert_eq!(reconcile(&pods, &slices), Outcome::default(), "idempotent");

        pods[120] = pod(120, false);
        let one = reconcile(&pods, &slices);
        assert_eq!(one.writes.len(), 1, "{one:?}");
        apply(&mut slices, &one);
        let changed = slices
            .values()
            .flat_map(|s| &s.endpoints)
            .find(|e| e.target_ref.as_ref().is_some_and(|r| r.name == "web-120"))
            .expect("still listed");
        assert_eq!(changed.conditions.ready, Some(false));

        // Gone pods leave their slice; new ones fill the room before a slice is made.
        pods.truncate(180);
        let shrunk = reconcile(&pods, &slices);
        apply(&mut slices, &shrunk);
        let sizes: Vec<usize> = slices.values().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, [100, 80], "the emptied slice is deleted");
        pods.extend((250..270).map(|i| pod(i, true)));
        let filled = reconcile(&pods, &slices);
        assert_eq!(filled.writes.len(), 1, "{filled:?}");
        apply(&mut slices, &filled);
        let sizes: Vec<usize> = slices.values().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, [100, 100]);
    }

    #[test]
    fn a_service_without_a_selector_mirrors_its_users_endpoints() {
        let mut service = service();
        service.spec.selector.clear();
        let user: Endpoints = typed(json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "web", "namespace": "default"},
        "subsets": [
            {"addresses": [{"ip": "198.18.9.1"}, {"ip": "198.18.9.2"}],
             "notReadyAddresses": [{"ip": "198.18.9.3"}],
             "ports": [{"name": "http", "port": 8080}]},
            {"addresses": [{"ip": "198.18.9.4"}], "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}
        ]}));
        let run = |service: &Service,
                   user: Option<&Endpoints>,
                   slices: &BTreeMap<String, EndpointSlice>| {
            let objects: Vec<Object> = std::iter::once(service.clone().into_object())
                .chain(user.cloned().map(Endpoints::into_object))
                .chain(slices.values().cloned().map(EndpointSlice::into_object))
                .collect();
            EndpointSliceController.reconcile(service, &Snapshot::from_objects(objects, 1), &ctx())
        };
        let mut slices = BTreeMap::new();
        let first = run(&service, Some(&user), &slices);
        apply(&mut slices, &first);
        assert_eq!(slices.len(), 2, "one group per port list: {slices:?}");
        for slice in slices.values() {
            assert_eq!(slice.metadata.labels[MANAGED_BY_LABEL], MIRRORED_BY);
            assert_eq!(slice.service_name(), Some("web"));
        }
        let http = slices
            .values()
            .find(|slice| slice.ports[0].port == Some(8080))
            .expect("the http group");
        let ready: Vec<(&str, Option<bool>)> = http
            .endpoints
            .iter()
            .map(|e| (e.addresses[0].as_str(), e.conditions.ready))
            .collect();
        assert_eq!(
            ready,
            [
                ("198.18.9.1", Some(true)),
                ("198.18.9.2", Some(true)),
                ("198.18.9.3", Some(false))
            ]
        );
        assert!(http.endpoints[0].target_ref.is_none());
        assert_eq!(
            run(&service, Some(&user), &slices),
            Outcome::default(),
            "idempotent"
        );

        // The user's edit changes one group's slice only.
        let mut edited = user.clone();
        edited.subsets[0].addresses.pop();
        let one = run(&service, Some(&edited), &slices);
        assert_eq!(one.writes.len(), 1, "{one:?}");
        apply(&mut slices, &one);

        // Deleting the Endpoints deletes the mirrored slices.
        let gone = run(&service, None, &slices);
        apply(&mut slices, &gone);
        assert!(slices.is_empty(), "{slices:?}");

        // A Service that gains a selector drops the mirrored slices for its own.
        let mirrored = run(&service, Some(&user), &slices);
        apply(&mut slices, &mirrored);
        let selecting = run(&super::tests::service(), Some(&user), &slices);
        apply(&mut slices, &selecting);
        assert!(
            slices
                .values()
                .all(|s| s.metadata.labels[MANAGED_BY_LABEL] == MANAGED_BY),
            "{slices:?}"
        );
    }

    #[test]
    fn a_service_without_endpoints_has_one_empty_slice_and_terminating_pods_are_marked() {
        let mut slices = BTreeMap::new();
        let empty = reconcile(&[], &slices);
        apply(&mut slices, &empty);
        assert_eq!(slices.len(), 1);
        assert!(slices["web-0"].endpoints.is_empty());
        assert_eq!(slices["web-0"].ports.len(), 1);

        let mut leaving = pod(1, true);
        leaving.metadata.deletion_timestamp = "2026-01-01T00:00:30Z".to_owned();
        let terminating = reconcile(&[leaving], &slices);
        apply(&mut slices, &terminating);
        assert_eq!(slices.len(), 1);
        assert_eq!(
            slices["web-0"].endpoints[0].conditions,
            EndpointConditions {
                ready: Some(false),
                serving: Some(true),
                terminating: Some(true),
            }
        );
    }
}
