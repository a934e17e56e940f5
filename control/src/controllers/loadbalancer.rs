//! LoadBalancer addresses, the way MetalLB or k3s' servicelb provide them elsewhere: each
//! Service of type LoadBalancer gets an address from `--load-balancer-cidr` (its
//! `spec.loadBalancerIP` if that is in the pool and free) in
//! `status.loadBalancer.ingress`. Without a pool, or with no address to give, it stays
//! pending with a `LoadBalancerReady=False` condition and an event saying why.
//!
//! Uniqueness does not rest on this controller's view: the registry writes the address's
//! allocation key in the same transaction as the status, so a stale choice is a conflict
//! and is retried.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use berth_api::core::{Condition, LoadBalancerIngress, Service, ServiceStatus};

use super::{Change, Context, Outcome, Reconciler, Snapshot, Write, reference};
use crate::{registry::LOAD_BALANCER_CONDITION, util};

pub struct LoadBalancerController;

fn is_load_balancer(service: &Service) -> bool {
    service.spec.type_ == "LoadBalancer"
}

impl Reconciler for LoadBalancerController {
    type Object = Service;

    fn name(&self) -> &'static str {
        "load-balancer"
    }

    fn affected(&self, change: &Change, snapshot: &Snapshot) -> Vec<(String, String)> {
        let Some(service) = change.as_kind::<Service>() else {
            return Vec::new();
        };
        if change.deleted || !is_load_balancer(service) {
            // An address may have come free (the service went, or stopped being a
            // LoadBalancer, which the registry clears): pending services may take it.
            return snapshot
                .list::<Service>(None)
                .filter(|s| is_load_balancer(s) && s.load_balancer_ips().next().is_none())
                .map(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()))
                .collect();
        }
        vec![change.key()]
    }

    fn reconcile(&self, object: &Service, snapshot: &Snapshot, ctx: &Context) -> Outcome {
        let mut assigned = assigned_addresses(snapshot);
        reconcile_with(object, &mut assigned, ctx)
    }

    /// Each assignment must see the ones before it in the same batch: they are recorded
    /// in the batch's table of assigned addresses as they are made.
    fn reconcile_batch(
        &self,
        objects: &[&Service],
        snapshot: &Snapshot,
        ctx: &Context,
    ) -> Vec<Outcome> {
        let mut assigned = assigned_addresses(snapshot);
        objects
            .iter()
            .map(|object| reconcile_with(object, &mut assigned, ctx))
            .collect()
    }
}

/// Per service (namespace, name): its uid and the addresses its status has.
type Assigned = BTreeMap<(String, String), (String, Vec<Ipv4Addr>)>;

fn assigned_addresses(snapshot: &Snapshot) -> Assigned {
    snapshot
        .list::<Service>(None)
        .map(|service| {
            let ips = service
                .load_balancer_ips()
                .filter_map(|ip| ip.parse().ok())
                .collect();
            let meta = &service.metadata;
            (
                (meta.namespace.clone(), meta.name.clone()),
                (meta.uid.clone(), ips),
            )
        })
        .collect()
}

/// Reconciles one service against `assigned`, which it updates with its own decision so
/// the next service of a batch sees it.
fn reconcile_with(service: &Service, assigned: &mut Assigned, ctx: &Context) -> Outcome {
    if !is_load_balancer(service) {
        return Outcome::default();
    }
    let uid = &service.metadata.uid;
    let used: BTreeSet<Ipv4Addr> = assigned
        .values()
        .filter(|(other, _)| other != uid)
        .flat_map(|(_, ips)| ips.iter().copied())
        .collect();
    let decision = decide(service, &used, ctx);
    assigned.insert(
        (
            service.metadata.namespace.clone(),
            service.metadata.name.clone(),
        ),
        (uid.clone(), decision.iter().copied().collect()),
    );
    let current = service.status.clone().unwrap_or_default();
    let current_condition = current
        .conditions
        .iter()
        .find(|c| c.type_ == LOAD_BALANCER_CONDITION);
    let (ingress, status, reason, message) = match &decision {
        Ok(ip) => (
            vec![LoadBalancerIngress { ip: ip.to_string() }],
            "True",
            "IPAllocated",
            format!("Assigned IP [{:?}]", ip.to_string()),
        ),
        Err((reason, message)) => (Vec::new(), "False", *reason, message.clone()),
    };
    if current.load_balancer.ingress == ingress
        && current_condition
            .is_some_and(|c| c.status == status && c.reason == reason && c.message == message)
    {
        return Outcome::default();
    }
    let mut next = ServiceStatus {
        load_balancer: current.load_balancer.clone(),
        conditions: current
            .conditions
            .iter()
            .filter(|c| c.type_ != LOAD_BALANCER_CONDITION)
            .cloned()
            .collect(),
    };
    next.load_balancer.ingress = ingress;
    next.conditions.push(Condition {
        type_: LOAD_BALANCER_CONDITION.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.clone(),
        last_transition_time: util::rfc3339(ctx.now),
        last_heartbeat_time: String::new(),
    });
    let mut updated = service.clone();
    updated.status = Some(next);
    let (event_reason, type_) = if decision.is_ok() {
        ("IPAllocated", "Normal")
    } else {
        ("AllocationFailed", "Warning")
    };
    Outcome::writes(vec![
        Write::update_status(updated),
        Write::Event {
            involved: reference(service),
            reason: event_reason.to_owned(),
            message,
            type_,
        },
    ])
}

/// The address the service should have, or why it has none: (condition reason, message).
fn decide(
    service: &Service,
    used: &BTreeSet<Ipv4Addr>,
    ctx: &Context,
) -> Result<Ipv4Addr, (&'static str, String)> {
    let Some(pool) = ctx.settings.load_balancer_pool else {
        return Err((
            "NoAddressPool",
            "no load-balancer address pool is configured (berth-control --load-balancer-cidr); \
             the service stays pending"
                .to_owned(),
        ));
    };
    let free = |ip: Ipv4Addr| pool.contains(ip) && !used.contains(&ip);
    let wanted = &service.spec.load_balancer_ip;
    if !wanted.is_empty() {
        let ip: Ipv4Addr = wanted.parse().map_err(|_| {
            (
                "InvalidAddress",
                format!("loadBalancerIP {wanted:?} is not an IPv4 address"),
            )
        })?;
        return if !pool.contains(ip) {
            Err((
                "AddressNotInPool",
                format!("loadBalancerIP {ip} is not in the load-balancer pool {pool}"),
            ))
        } else if used.contains(&ip) {
            Err((
                "AddressInUse",
                format!("loadBalancerIP {ip} is already assigned to another service"),
            ))
        } else {
            Ok(ip)
        };
    }
    if let Some(ip) = service
        .load_balancer_ips()
        .filter_map(|ip| ip.parse().ok())
        .find(|ip| free(*ip))
    {
        return Ok(ip);
    }
    pool.hosts()
        .map(Ipv4Addr::from)
        .find(|ip| !used.contains(ip))
        .ok_or_else(|| {
            (
                "PoolExhausted",
                format!("every address of the load-balancer pool {pool} is assigned"),
            )
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        controllers::{Settings, fixtures::typed},
        objects::{Kind as _, Object},
    };

    fn ctx(pool: Option<&str>) -> Context {
        Context {
            now: 1_700_000_000,
            settings: Settings {
                load_balancer_pool: pool.map(|p| p.parse().expect("a CIDR")),
                ..Settings::default()
            },
        }
    }

    fn service(name: &str, wanted: &str, assigned: Option<&str>) -> Service {
        let mut object = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "resourceVersion": "5"},
            "spec": {"type": "LoadBalancer", "clusterIP": "198.18.192.5", "ports": [{"port": 80, "nodePort": 30080}]}});
        if !wanted.is_empty() {
            object["spec"]["loadBalancerIP"] = json!(wanted);
        }
        if let Some(ip) = assigned {
            object["status"] = json!({"loadBalancer": {"ingress": [{"ip": ip}]},
                "conditions": [{"type": LOAD_BALANCER_CONDITION, "status": "True", "reason": "IPAllocated",
                    "message": format!("Assigned IP [{ip:?}]")}]});
        }
        typed(object)
    }

    fn snapshot(services: &[&Service]) -> Snapshot {
        Snapshot::from_objects(services.iter().map(|s| (*s).clone().into_object()), 1)
    }

    fn assigned(outcome: &Outcome) -> Option<String> {
        outcome.writes.iter().find_map(|w| match w {
            Write::UpdateStatus(Object::Service(service)) => Some(
                service
                    .load_balancer_ips()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            _ => None,
        })
    }

    fn event(outcome: &Outcome) -> Option<(String, String)> {
        outcome.writes.iter().find_map(|w| match w {
            Write::Event {
                reason, message, ..
            } => Some((reason.clone(), message.clone())),
            _ => None,
        })
    }

    #[test]
    fn assigns_the_first_free_address_then_leaves_it_alone() {
        let taken = service("a", "", Some("198.18.128.1"));
        let web = service("web", "", None);
        let c = ctx(Some("198.18.128.0/24"));
        let outcome = LoadBalancerController.reconcile(&web, &snapshot(&[&taken, &web]), &c);
        assert_eq!(assigned(&outcome).as_deref(), Some("198.18.128.2"));
        assert_eq!(event(&outcome).map(|e| e.0).as_deref(), Some("IPAllocated"));
        let done = service("web", "", Some("198.18.128.2"));
        let again = LoadBalancerController.reconcile(&done, &snapshot(&[&taken, &done]), &c);
        assert_eq!(again, Outcome::default(), "idempotent");
    }

    #[test]
    fn honours_load_balancer_ip_in_the_pool_and_refuses_others() {
        let c = ctx(Some("198.18.128.0/24"));
        let wanted = service("web", "198.18.128.77", None);
        let outcome = LoadBalancerController.reconcile(&wanted, &snapshot(&[&wanted]), &c);
        assert_eq!(assigned(&outcome).as_deref(), Some("198.18.128.77"));

        let outside = service("web", "10.0.0.1", None);
        let outcome = LoadBalancerController.reconcile(&outside, &snapshot(&[&outside]), &c);
        assert_eq!(assigned(&outcome).as_deref(), Some(""));
        let (reason, message) = event(&outcome).expect("an event");
        assert_eq!(reason, "AllocationFailed");
        assert!(
            message.contains("not in the load-balancer pool 198.18.128.0/24"),
            "{message}"
        );

        let other = service("other", "", Some("198.18.128.77"));
        let outcome = LoadBalancerController.reconcile(&wanted, &snapshot(&[&wanted, &other]), &c);
        assert!(event(&outcome).is_some_and(|e| e.1.contains("already assigned")));
    }

    #[test]
    fn without_a_pool_the_service_stays_pending_with_one_event() {
        let web = service("web", "", None);
        let outcome = LoadBalancerController.reconcile(&web, &snapshot(&[&web]), &ctx(None));
        let (_, message) = event(&outcome).expect("an event");
        assert!(
            message.contains("no load-balancer address pool"),
            "{message}"
        );
        let Some(Write::UpdateStatus(Object::Service(pending))) = outcome.writes.first() else {
            panic!("a status write: {outcome:?}");
        };
        assert_eq!(
            pending
                .status
                .as_ref()
                .map(|s| s.conditions[0].status.as_str()),
            Some("False")
        );
        // Once the condition says so, nothing more is written (no event per resync).
        let again = LoadBalancerController.reconcile(pending, &snapshot(&[pending]), &ctx(None));
        assert_eq!(again, Outcome::default());
    }

    #[test]
    fn an_exhausted_pool_leaves_the_service_pending() {
        let a = service("a", "", Some("198.18.128.1"));
        let b = service("b", "", Some("198.18.128.2"));
        let web = service("web", "", None);
        let outcome = LoadBalancerController.reconcile(
            &web,
            &snapshot(&[&a, &b, &web]),
            &ctx(Some("198.18.128.0/30")),
        );
        assert!(event(&outcome).is_some_and(|e| e.1.contains("every address")));
    }

    #[test]
    fn other_types_are_left_alone() {
        let mut web = service("web", "", None);
        web.spec.type_ = "ClusterIP".to_owned();
        let outcome = LoadBalancerController.reconcile(
            &web,
            &snapshot(&[&web]),
            &ctx(Some("198.18.128.0/24")),
        );
        assert_eq!(outcome, Outcome::default());
    }

    #[test]
    fn a_batch_gives_each_service_its_own_address() {
        let (a, b, wanted) = (
            service("a", "", None),
            service("b", "", None),
            service("wanted", "198.18.128.1", None),
        );
        let c = ctx(Some("198.18.128.0/24"));
        let outcomes = LoadBalancerController.reconcile_batch(
            &[&a, &b, &wanted],
            &snapshot(&[&a, &b, &wanted]),
            &c,
        );
        let ips: Vec<Option<String>> = outcomes.iter().map(assigned).collect();
        assert_eq!(
            ips,
            [
                Some("198.18.128.1".to_owned()),
                Some("198.18.128.2".to_owned()),
                Some(String::new()),
            ],
            "the address a took in this batch is in use for the next ones"
        );
        assert!(event(&outcomes[2]).is_some_and(|e| e.1.contains("already assigned")));
    }
}
