//! The service sets every mode is programmed with: `n` services of which one — in the
//! middle of the list, where a linear rule walk meets it after half the others — has the
//! real backends, and the rest are dummies with `dummy_backends` endpoints each.

use std::net::Ipv4Addr;

use berth_agent::datapath::{
    Algorithm, BackendSpec, BackendState, Frontend, Node, Protocol, Service, ServiceSet,
};

/// Port every service listens on.
pub const SERVICE_PORT: u16 = 80;
/// Where service VIPs start (198.19.0.1, 198.19.0.2, ...): the benchmarking range, away
/// from the test cluster's 198.18.0.0/16 nodes and pods.
const VIP_BASE: u32 = u32::from_be_bytes([198, 19, 0, 1]);
/// Dummy endpoints: never routed anywhere, they only have to exist in the rules and maps.
const DUMMY_BACKEND_BASE: u32 = u32::from_be_bytes([198, 18, 128, 0]);
/// Dummy endpoints per address (distinct ports), so 100,000 of them fit in a /17.
const DUMMY_PORTS: u32 = 4;
/// The pod CIDR kube-proxy is told about (`--cluster-cidr`): pod sources are not masqueraded.
pub const CLUSTER_CIDR: &str = "198.18.0.0/16";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Svc {
    pub index: usize,
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub backends: Vec<(Ipv4Addr, u16)>,
}

pub fn vip(index: usize) -> Ipv4Addr {
    Ipv4Addr::from(VIP_BASE + index as u32)
}

/// The index of the service the load is sent to.
pub fn measured_index(count: usize) -> usize {
    count / 2
}

/// `count` services; the measured one gets `real` as its backends.
pub fn services(count: usize, real: &[(Ipv4Addr, u16)], dummy_backends: usize) -> Vec<Svc> {
    let measured = measured_index(count);
    (0..count)
        .map(|index| {
            let backends = if index == measured {
                real.to_vec()
            } else {
                (0..dummy_backends)
                    .map(|j| {
                        let n = (index * dummy_backends + j) as u32;
                        (
                            Ipv4Addr::from(DUMMY_BACKEND_BASE + n / DUMMY_PORTS),
                            8080 + (n % DUMMY_PORTS) as u16,
                        )
                    })
                    .collect()
            };
            Svc {
                index,
                name: format!("bench/svc-{index}:http"),
                vip: vip(index),
                port: SERVICE_PORT,
                backends,
            }
        })
        .collect()
}

/// The same services as Berth's datapath takes them; every backend is on `node`.
pub fn service_set(services: &[Svc], node: Node) -> ServiceSet {
    ServiceSet {
        services: services
            .iter()
            .map(|svc| Service {
                name: svc.name.clone(),
                frontends: vec![Frontend {
                    addr: svc.vip,
                    port: svc.port,
                    protocol: Protocol::Tcp,
                    external: false,
                }],
                backends: svc
                    .backends
                    .iter()
                    .map(|(addr, port)| BackendSpec {
                        addr: *addr,
                        port: *port,
                        node_id: node.id,
                        state: BackendState::Active,
                    })
                    .collect(),
                algorithm: Algorithm::Maglev,
                affinity_timeout: None,
            })
            .collect(),
        nodes: vec![node],
    }
}

/// One endpoint change: the first dummy service (or the only one) swaps its first backend
/// for a new address, as when a pod is replaced.
pub fn with_one_change(services: &[Svc]) -> Vec<Svc> {
    let mut changed = services.to_vec();
    let measured = measured_index(services.len());
    let target = changed.iter_mut().find(|svc| svc.index != measured);
    if let Some(svc) = target
        && let Some(first) = svc.backends.first_mut()
    {
        *first = (Ipv4Addr::new(198, 18, 255, 254), 9090);
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dummy_backends_are_distinct_and_the_measured_service_is_real() {
        let real = [(Ipv4Addr::new(198, 18, 1, 2), 8080)];
        let set = services(10_000, &real, 10);
        assert_eq!(set.len(), 10_000);
        assert_eq!(set[5_000].backends, real);
        let mut all: Vec<(Ipv4Addr, u16)> = set
            .iter()
            .filter(|svc| svc.index != 5_000)
            .flat_map(|svc| svc.backends.clone())
            .collect();
        assert_eq!(all.len(), 99_990);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 99_990, "every dummy endpoint is distinct");
        assert!(all.iter().all(|(addr, _)| addr.octets()[..2] == [198, 18]));
        assert_eq!(set[9_999].vip, Ipv4Addr::new(198, 19, 39, 16));
    }

    #[test]
    fn one_change_touches_one_dummy_service() {
        let real = [(Ipv4Addr::new(198, 18, 1, 2), 8080)];
        let set = services(3, &real, 2);
        let changed = with_one_change(&set);
        let differing: Vec<usize> = (0..3).filter(|i| set[*i] != changed[*i]).collect();
        assert_eq!(differing, vec![0]);
    }
}
