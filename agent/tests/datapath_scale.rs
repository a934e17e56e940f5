//! The default limits hold what the datapath promises: 10,000 services with 10 backends
//! each (100,000 backends) and 1,000,000 tracked connections. Timings are printed for
//! information only; the benchmarks (`cargo xtask bench`) measure them properly.
//! Needs root and bpffs.

use std::{net::Ipv4Addr, time::Instant};

use aya::maps::MapData;
use berth_agent::datapath::{
    Algorithm, BackendSpec, BackendState, Datapath, DatapathOptions, Frontend, Limits, Protocol,
    Service, ServiceSet,
};
use berth_ebpf_common::map_names;
use berth_testkit::PinDir;

const SERVICES: u32 = 10_000;
const BACKENDS_PER_SERVICE: u32 = 10;

/// Addresses counted up from 198.18.0.1 (backends) and 198.19.0.1 (frontends).
fn nth(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + n + 1)
}

fn service(index: u32) -> Service {
    Service {
        name: format!("bench/svc-{index}:80"),
        frontends: vec![Frontend {
            addr: nth(Ipv4Addr::new(198, 19, 0, 0), index),
            port: 80,
            protocol: Protocol::Tcp,
            external: false,
        }],
        backends: (0..BACKENDS_PER_SERVICE)
            .map(|b| BackendSpec {
                addr: nth(
                    Ipv4Addr::new(198, 18, 0, 0),
                    index * BACKENDS_PER_SERVICE + b,
                ),
                port: 8080,
                node_id: 1 + b % 3,
                state: BackendState::Active,
            })
            .collect(),
        algorithm: Algorithm::Maglev,
        affinity_timeout: None,
    }
}

fn max_entries(pins: &PinDir, map: &str) -> u32 {
    MapData::from_pin(pins.path().join(map))
        .and_then(|data| data.info())
        .expect("pinned map")
        .max_entries()
}

#[test]
fn default_limits_hold_ten_thousand_services_and_a_million_connections() {
    let pins = PinDir::new("scale");
    let started = Instant::now();
    let mut datapath = Datapath::open(DatapathOptions {
        pin_dir: pins.path().to_path_buf(),
        node_id: 1,
        node_addr: Ipv4Addr::new(198, 18, 255, 1),
        limits: Limits::default(),
    })
    .expect("loading the datapath with the default limits");
    println!("loaded with default limits in {:?}", started.elapsed());

    assert!(max_entries(&pins, map_names::CONNTRACK) >= 2 * 1_000_000);
    assert!(max_entries(&pins, map_names::BACKENDS) >= 100_000);
    assert!(max_entries(&pins, map_names::SERVICES) >= 10_000);

    let mut set = ServiceSet {
        services: (0..SERVICES).map(service).collect(),
        nodes: Vec::new(),
    };
    let report = datapath
        .apply(&set)
        .expect("10,000 services fit the defaults");
    println!(
        "programmed {SERVICES} services x {BACKENDS_PER_SERVICE} backends in {:?}",
        report.elapsed
    );
    assert_eq!(report.tables_written, SERVICES as usize);
    assert_eq!(
        report.backends_written,
        (SERVICES * BACKENDS_PER_SERVICE) as usize
    );

    // One backend leaves one service: only that service's table and entry change.
    set.services[4321].backends.pop();
    let report = datapath.apply(&set).expect("one change");
    println!("applied one change in {:?}", report.elapsed);
    assert_eq!(report.tables_written, 1);
    assert_eq!(report.frontends_written, 1);
    assert_eq!(report.backends_removed, 1);

    // Every backend's node loses it at once: all tables rebuild in one apply even though
    // the pool cannot hold a second copy of every table.
    for service in &mut set.services {
        service.backends.retain(|backend| backend.node_id != 2);
    }
    let report = datapath.apply(&set).expect("rebuilding every table");
    println!("rebuilt every table in {:?}", report.elapsed);
    assert_eq!(report.tables_written, SERVICES as usize);
    let table = datapath
        .live_table(&set.services[7].frontends[0])
        .expect("reading a table")
        .expect("service 7 has a table");
    let expected: Vec<(Ipv4Addr, u16)> = set.services[7]
        .backends
        .iter()
        .map(|backend| (backend.addr, backend.port))
        .collect();
    assert!(table.iter().all(|entry| expected.contains(entry)));
}
