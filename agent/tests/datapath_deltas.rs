//! Per-service changes against full applies, on the kernel's maps: a run of
//! `Datapath::update` calls must leave every service map as `Datapath::apply` of each
//! resulting set leaves it. Needs root and bpffs.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use berth_agent::datapath::{
    Algorithm, BackendSpec, BackendState, Datapath, DatapathOptions, Frontend, Limits, Node,
    Protocol, Service, ServiceSet,
};
use berth_testkit::PinDir;

const OWN_NODE: u32 = 1;

fn open(pins: &PinDir) -> Datapath {
    Datapath::open(DatapathOptions {
        pin_dir: pins.path().to_path_buf(),
        node_id: OWN_NODE,
        node_addr: Ipv4Addr::new(198, 18, 0, 1),
        limits: Limits {
            max_services: 64,
            max_backends: 256,
            max_connections: 1024,
            max_affinity: 64,
            max_nodes: 8,
            maglev_min_table: 251,
            maglev_pool_slots: 1 << 16,
        },
    })
    .expect("loading the datapath")
}

/// A deterministic stream of numbers (a linear congruential generator).
struct Draws(u64);

impl Draws {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

/// Service `index` as drawn: its own ClusterIP (and sometimes a NodePort), backends from
/// a small shared pool (so services share backends, with different states), on this node
/// or another.
fn service(index: u64, draws: &mut Draws) -> Service {
    let mut frontends = vec![Frontend {
        addr: Ipv4Addr::new(198, 19, 0, index as u8 + 1),
        port: 80,
        protocol: Protocol::Tcp,
        external: false,
    }];
    if draws.next(3) == 0 {
        frontends.push(Frontend {
            addr: Ipv4Addr::new(198, 18, 0, 1),
            port: 30_000 + index as u16,
            protocol: Protocol::Tcp,
            external: true,
        });
    }
    let backends = (0..draws.next(6))
        .map(|_| {
            let host = draws.next(40) as u8;
            BackendSpec {
                addr: Ipv4Addr::new(198, 18, 1 + host % 2, host + 2),
                port: 8080,
                // The pod range decides the node, as for real endpoints.
                node_id: 1 + u32::from(host % 2),
                state: match draws.next(6) {
                    0 => BackendState::Failed,
                    1 => BackendState::Terminating,
                    _ => BackendState::Active,
                },
            }
        })
        .collect();
    Service {
        name: format!("default/svc-{index}:80"),
        frontends,
        backends,
        algorithm: if draws.next(5) == 0 {
            Algorithm::Random
        } else {
            Algorithm::Maglev
        },
        affinity_timeout: (draws.next(5) == 0).then_some(Duration::from_secs(600)),
    }
}

fn nodes() -> Vec<Node> {
    vec![
        Node {
            id: 1,
            addr: Ipv4Addr::new(198, 18, 0, 1),
        },
        Node {
            id: 2,
            addr: Ipv4Addr::new(198, 18, 0, 2),
        },
    ]
}

fn set(services: &BTreeMap<String, Service>) -> ServiceSet {
    ServiceSet {
        services: services.values().cloned().collect(),
        nodes: nodes(),
    }
}

/// The two datapaths' maps are the same; else the entries that differ.
fn assert_same(by_delta: &Datapath, by_full: &Datapath, context: &str) {
    let (delta, full) = (
        by_delta.dump().expect("dump"),
        by_full.dump().expect("dump"),
    );
    if delta == full {
        return;
    }
    let mut differences = Vec::new();
    for key in delta.services.keys().chain(full.services.keys()) {
        let (a, b) = (delta.services.get(key), full.services.get(key));
        if a != b {
            let brief = |entry: Option<&(_, Vec<u32>, Vec<u32>)>| {
                entry.map(|(value, table, list)| (*value, table.len(), list.clone()))
            };
            differences.push(format!("{key:?}: {:?} / {:?}", brief(a), brief(b)));
        }
    }
    for id in delta.backends.keys().chain(full.backends.keys()) {
        if delta.backends.get(id) != full.backends.get(id) {
            differences.push(format!(
                "backend {id}: {:?} / {:?}",
                delta.backends.get(id),
                full.backends.get(id)
            ));
        }
    }
    if delta.local_backends != full.local_backends {
        differences.push(format!(
            "local backends: {:?} / {:?}",
            delta.local_backends, full.local_backends
        ));
    }
    if delta.nodes != full.nodes {
        differences.push(format!("nodes: {:?} / {:?}", delta.nodes, full.nodes));
    }
    panic!(
        "{context}: the maps differ (per-service / full):\n{}",
        differences.join("\n")
    );
}

#[test]
fn per_service_changes_leave_the_maps_a_full_apply_leaves() {
    let (pins_delta, pins_full) = (PinDir::new("deltas"), PinDir::new("full"));
    let (mut by_delta, mut by_full) = (open(&pins_delta), open(&pins_full));
    let mut draws = Draws(25);
    let mut services: BTreeMap<String, Service> = (0..20)
        .map(|index| service(index, &mut draws))
        .map(|service| (service.name.clone(), service))
        .collect();
    by_delta.apply(&set(&services)).expect("first apply");
    by_full.apply(&set(&services)).expect("first apply");
    assert_same(&by_delta, &by_full, "first apply");

    for step in 0..150 {
        // One to eight changes at once: new services, changed ones, deleted ones.
        let mut changes = BTreeMap::new();
        for _ in 0..=draws.next(8) {
            let index = draws.next(48);
            let name = format!("default/svc-{index}:80");
            let change = if services.contains_key(&name) && draws.next(4) == 0 {
                None
            } else {
                Some(service(index, &mut draws))
            };
            changes.insert(name, change);
        }
        for (name, change) in &changes {
            match change {
                Some(service) => services.insert(name.clone(), service.clone()),
                None => services.remove(name),
            };
        }
        let delta = by_delta.update(&changes).expect("per-service changes");
        let full = by_full.apply(&set(&services)).expect("full apply");
        assert_same(&by_delta, &by_full, &format!("step {step}: {changes:?}"));
        // The per-service path touches no more than the services it was given and the
        // ones sharing a backend; the full apply plans them all.
        assert!(delta.services <= full.services, "step {step}");
    }

    // A frontend moving from one service to another in one batch.
    let (from, to) = ("default/svc-1:80", "default/svc-2:80");
    let mut giver = services
        .get(from)
        .cloned()
        .unwrap_or_else(|| service(1, &mut draws));
    let mut taker = services
        .get(to)
        .cloned()
        .unwrap_or_else(|| service(2, &mut draws));
    let moved = giver.frontends[0];
    giver.frontends[0].addr = Ipv4Addr::new(198, 19, 1, 1);
    taker.frontends.push(moved);
    let changes = BTreeMap::from([
        (from.to_owned(), Some(giver.clone())),
        (to.to_owned(), Some(taker.clone())),
    ]);
    services.insert(from.to_owned(), giver);
    services.insert(to.to_owned(), taker);
    by_delta.update(&changes).expect("moving a frontend");
    by_full.apply(&set(&services)).expect("moving a frontend");
    assert_same(&by_delta, &by_full, "moving a frontend");
}

#[test]
fn an_invalid_change_is_refused_and_leaves_the_maps_alone() {
    let pins = PinDir::new("deltas-invalid");
    let mut datapath = open(&pins);
    let mut draws = Draws(7);
    let services: BTreeMap<String, Service> = (0..4)
        .map(|index| service(index, &mut draws))
        .map(|service| (service.name.clone(), service))
        .collect();
    datapath.apply(&set(&services)).expect("first apply");
    let before = datapath.dump().expect("dump");
    // A new service claiming svc-0's ClusterIP.
    let mut thief = service(9, &mut draws);
    thief.frontends = vec![services["default/svc-0:80"].frontends[0]];
    let error = datapath
        .update(&BTreeMap::from([(thief.name.clone(), Some(thief))]))
        .expect_err("a frontend of another service");
    assert!(
        error.to_string().contains("default/svc-0:80") && error.to_string().contains("svc-9"),
        "{error}"
    );
    assert_eq!(datapath.dump().expect("dump"), before);
}

/// A Service per entry of `firsts`, each with 16 endpoints on this node: Service `i`'s
/// on ports from `firsts[i]`.
fn local_services(firsts: &[u16]) -> BTreeMap<String, Service> {
    firsts
        .iter()
        .enumerate()
        .map(|(index, first)| {
            let service = Service {
                name: format!("default/full-{index}:80"),
                frontends: vec![Frontend {
                    addr: Ipv4Addr::new(198, 19, 2, index as u8 + 1),
                    port: 80,
                    protocol: Protocol::Tcp,
                    external: false,
                }],
                backends: (0..16)
                    .map(|offset| BackendSpec {
                        addr: Ipv4Addr::new(198, 18, 1, 2),
                        port: first + offset,
                        node_id: OWN_NODE,
                        state: BackendState::Active,
                    })
                    .collect(),
                algorithm: Algorithm::Maglev,
                affinity_timeout: None,
            };
            (service.name.clone(), service)
        })
        .collect()
}

/// With as many endpoints on this node as the backend limit allows (a full table of
/// local endpoints), a change that replaces some of them applies, per Service and in
/// full: the endpoints leaving make room before the new ones are written.
#[test]
fn at_the_backend_limit_replacing_local_endpoints_applies() {
    let (pins_delta, pins_full) = (PinDir::new("deltas-limit"), PinDir::new("full-limit"));
    let (mut by_delta, mut by_full) = (open(&pins_delta), open(&pins_full));
    // 16 Services × 16 endpoints: the limit of 256.
    let firsts: Vec<u16> = (0..16).map(|index| 10_000 + index * 16).collect();
    let services = local_services(&firsts);
    by_delta.apply(&set(&services)).expect("filling the table");
    by_full.apply(&set(&services)).expect("filling the table");
    let mut replaced = firsts.clone();
    replaced[3] = 20_000;
    let services = local_services(&replaced);
    let name = "default/full-3:80".to_owned();
    by_delta
        .update(&BTreeMap::from([(
            name.clone(),
            Some(services[&name].clone()),
        )]))
        .expect("replacing a Service's endpoints at the limit");
    by_full
        .apply(&set(&services))
        .expect("replacing a Service's endpoints at the limit, in full");
    assert_same(&by_delta, &by_full, "endpoints replaced at the limit");
    assert_eq!(by_full.dump().expect("dump").local_backends.len(), 256);
}
