//! Local readiness for the datapath: the node's own probe results and container exits,
//! applied to the service backends the control plane sent, so an unready local backend stops getting new flows
//! at once — before the control plane has even heard of it (DESIGN: "unhealthy backends
//! are skipped for new flows at once by the local agent, then removed cluster-wide by the
//! control plane").
//!
//! The agent feeds every [`PodEvent`] to [`LocalReadiness::observe`]; when it returns
//! true, it writes again the services with a backend whose readiness flipped, each
//! [`mark`]ed; every service change on its way to the datapath is marked the same way.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use crate::{
    datapath::{BackendState, Service, ServiceSet},
    pods::{Action, ActionKind, PodEvent},
    probes::{ProbeKind, ProbeResult},
};

/// Which local pod addresses failed readiness or lost a container, by pod and container.
#[derive(Debug, Default, Clone)]
pub struct LocalReadiness {
    /// (pod uid, container name) → the pod's address, for each container whose last
    /// readiness result is Failure.
    unready: BTreeMap<(String, String), Ipv4Addr>,
    /// (pod uid, container name) → the pod's address, for each container that exited and
    /// has not been started again: nothing listens there, so new flows would be refused.
    exited: BTreeMap<(String, String), Ipv4Addr>,
    /// Pod uid → its address, from the sandbox actions (exits carry no address).
    pod_addresses: BTreeMap<String, Ipv4Addr>,
    /// Containers with a readiness probe: after a restart they stay out until it passes.
    probed: BTreeSet<(String, String)>,
}

impl LocalReadiness {
    /// Takes in one event; true when the set of unready addresses changed.
    pub fn observe(&mut self, event: &PodEvent) -> bool {
        let before = self.addresses();
        match event {
            PodEvent::Probe(probe) if probe.kind == ProbeKind::Readiness => {
                let key = (probe.pod_uid.clone(), probe.container.clone());
                self.probed.insert(key.clone());
                match probe.result {
                    ProbeResult::Failure => {
                        self.unready.insert(key, probe.pod_ip);
                    }
                    ProbeResult::Success => {
                        self.unready.remove(&key);
                        self.exited.remove(&key);
                    }
                }
            }
            PodEvent::Action(action) => self.observe_action(action),
            _ => {}
        }
        self.addresses() != before
    }

    /// A container that exits takes its pod out of the local datapath at once, before
    /// its status reaches the control plane (as a Kubernetes pod turns NotReady when a
    /// container dies). It comes back when started again — after its readiness probe's
    /// first success if it has one, since a started process may not listen yet.
    fn observe_action(&mut self, action: &Action) {
        let container = || {
            (
                action.uid.clone(),
                action.container.clone().unwrap_or_default(),
            )
        };
        match &action.kind {
            ActionKind::SandboxCreated { ip } | ActionKind::SandboxAdopted { ip } => {
                self.pod_addresses.insert(action.uid.clone(), *ip);
            }
            ActionKind::ContainerExited { .. } => {
                if let Some(ip) = self.pod_addresses.get(&action.uid) {
                    self.exited.insert(container(), *ip);
                }
            }
            ActionKind::ContainerCreated { .. }
            | ActionKind::ContainerAdopted { .. }
            | ActionKind::ContainerReplaced { .. } => {
                let key = container();
                if !self.probed.contains(&key) {
                    self.exited.remove(&key);
                }
            }
            ActionKind::SandboxLost | ActionKind::PodRemoved => {
                self.unready.retain(|(uid, _), _| *uid != action.uid);
                self.exited.retain(|(uid, _), _| *uid != action.uid);
                if action.kind == ActionKind::PodRemoved {
                    self.pod_addresses.remove(&action.uid);
                    self.probed.retain(|(uid, _)| *uid != action.uid);
                }
            }
            _ => {}
        }
    }

    /// The local pod addresses that must get no new flows.
    pub fn addresses(&self) -> BTreeSet<Ipv4Addr> {
        self.unready
            .values()
            .chain(self.exited.values())
            .copied()
            .collect()
    }

    pub fn is_ready(&self, addr: Ipv4Addr) -> bool {
        !self.addresses().contains(&addr)
    }

    /// `services` with every backend at an unready local address marked Failed: the
    /// datapath gives it no new flows, and its established flows move on their next
    /// packet. Backends already Terminating or Failed stay as they are.
    pub fn overlay(&self, services: &ServiceSet) -> ServiceSet {
        let unready = self.addresses();
        let mut set = services.clone();
        for service in &mut set.services {
            mark(&unready, service);
        }
        set
    }
}

/// One service's backends at `unready` addresses marked Failed (see
/// [`LocalReadiness::overlay`]): how each changed service is overlaid on its way to the
/// datapath.
pub fn mark(unready: &BTreeSet<Ipv4Addr>, service: &mut Service) {
    for backend in &mut service.backends {
        if unready.contains(&backend.addr) {
            backend.state = backend.state.max(BackendState::Failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        datapath::{Algorithm, BackendSpec, Frontend, Protocol, Service},
        probes::ProbeEvent,
    };

    const POD: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
    const OTHER: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);

    fn readiness(container: &str, result: ProbeResult) -> PodEvent {
        PodEvent::Probe(ProbeEvent {
            pod_namespace: "default".to_owned(),
            pod_name: "web-0".to_owned(),
            pod_uid: "u1".to_owned(),
            pod_ip: POD,
            container: container.to_owned(),
            container_id: "c1".to_owned(),
            kind: ProbeKind::Readiness,
            result,
            message: String::new(),
        })
    }

    fn services() -> ServiceSet {
        let backend = |addr| BackendSpec {
            addr,
            port: 8080,
            node_id: 1,
            state: BackendState::Active,
        };
        ServiceSet {
            services: vec![Service {
                name: "default/web:http".to_owned(),
                frontends: vec![Frontend {
                    addr: Ipv4Addr::new(198, 19, 0, 10),
                    port: 80,
                    protocol: Protocol::Tcp,
                    external: false,
                }],
                backends: vec![backend(POD), backend(OTHER)],
                algorithm: Algorithm::Maglev,
                affinity_timeout: None,
            }],
            nodes: Vec::new(),
        }
    }

    #[test]
    fn a_readiness_failure_fails_the_backend_until_success() {
        let mut local = LocalReadiness::default();
        assert!(!local.observe(&readiness("echo", ProbeResult::Success)));
        assert!(local.observe(&readiness("echo", ProbeResult::Failure)));
        assert!(!local.is_ready(POD));
        let set = local.overlay(&services());
        let states: Vec<_> = set.services[0]
            .backends
            .iter()
            .map(|backend| (backend.addr, backend.state))
            .collect();
        assert_eq!(
            states,
            [(POD, BackendState::Failed), (OTHER, BackendState::Active)]
        );
        // Another container of the pod failing too keeps the pod out until both pass.
        assert!(!local.observe(&readiness("sidecar", ProbeResult::Failure)));
        assert!(!local.observe(&readiness("echo", ProbeResult::Success)));
        assert!(local.observe(&readiness("sidecar", ProbeResult::Success)));
        assert_eq!(local.overlay(&services()), services());
    }

    fn action(container: Option<&str>, kind: ActionKind) -> PodEvent {
        PodEvent::Action(Action {
            pod: "default/web-0".to_owned(),
            uid: "u1".to_owned(),
            container: container.map(str::to_owned),
            kind,
        })
    }

    #[test]
    fn an_exited_container_fails_the_backend_until_it_is_started_again() {
        let mut local = LocalReadiness::default();
        assert!(!local.observe(&action(None, ActionKind::SandboxCreated { ip: POD })));
        let exited = ActionKind::ContainerExited {
            id: "c1".to_owned(),
            exit_code: Some(137),
            reason: "Error".to_owned(),
        };
        assert!(local.observe(&action(Some("echo"), exited)));
        assert!(!local.is_ready(POD));
        assert_eq!(
            local.overlay(&services()).services[0].backends[0].state,
            BackendState::Failed
        );
        let started = ActionKind::ContainerCreated {
            id: "c2".to_owned(),
            attempt: 1,
        };
        assert!(local.observe(&action(Some("echo"), started.clone())));
        assert!(local.is_ready(POD));
        assert_eq!(local.overlay(&services()), services());

        // With a readiness probe, a restarted container waits for it to pass.
        assert!(!local.observe(&readiness("echo", ProbeResult::Success)));
        let exited = ActionKind::ContainerExited {
            id: "c2".to_owned(),
            exit_code: Some(137),
            reason: "Error".to_owned(),
        };
        assert!(local.observe(&action(Some("echo"), exited)));
        assert!(!local.observe(&action(Some("echo"), started)));
        assert!(!local.is_ready(POD));
        assert!(local.observe(&readiness("echo", ProbeResult::Success)));
        assert!(local.is_ready(POD));
    }

    #[test]
    fn a_removed_pod_is_forgotten() {
        let mut local = LocalReadiness::default();
        local.observe(&readiness("echo", ProbeResult::Failure));
        let removed = PodEvent::Action(Action {
            pod: "default/web-0".to_owned(),
            uid: "u1".to_owned(),
            container: None,
            kind: ActionKind::PodRemoved,
        });
        assert!(local.observe(&removed));
        assert!(local.is_ready(POD));
    }
}
