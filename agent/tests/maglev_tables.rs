//! Maglev on the real tables: what the programs read from the kernel's map, not a model.
//! Needs root and bpffs.

use std::net::Ipv4Addr;

use std::collections::BTreeMap;

use berth_agent::datapath::{
    Algorithm, BackendSpec, BackendState, Datapath, DatapathOptions, Frontend, Limits, Protocol,
    Service, ServiceSet,
};
use berth_ebpf_common::{IPPROTO_TCP, flow_hash, program_names};
use berth_testkit::{
    PinDir,
    packet::{self, Frame},
    programs,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const FLOWS: u32 = 100_000;

fn open(pins: &PinDir, node_id: u32) -> Datapath {
    Datapath::open(DatapathOptions {
        pin_dir: pins.path().to_path_buf(),
        node_id,
        node_addr: Ipv4Addr::new(198, 18, 0, node_id as u8),
        limits: Limits {
            max_services: 16,
            max_backends: 256,
            max_connections: 4096,
            max_affinity: 256,
            max_nodes: 16,
            maglev_pool_slots: 1 << 20,
            ..Limits::default()
        },
    })
    .expect("loading the datapath")
}

fn frontend() -> Frontend {
    Frontend {
        addr: VIP,
        port: 80,
        protocol: Protocol::Tcp,
        // North-south: the XDP program chooses by Maglev (east-west flows go round robin).
        external: true,
    }
}

fn backends(hosts: impl Iterator<Item = u8>) -> Vec<BackendSpec> {
    hosts
        .map(|host| BackendSpec {
            addr: Ipv4Addr::new(198, 18, 1, host),
            port: 8080,
            node_id: 1,
            state: BackendState::Active,
        })
        .collect()
}

fn set(backends: Vec<BackendSpec>) -> ServiceSet {
    ServiceSet {
        services: vec![Service {
            name: "default/web:80".into(),
            frontends: vec![frontend()],
            backends,
            algorithm: Algorithm::Maglev,
            affinity_timeout: None,
        }],
        nodes: Vec::new(),
    }
}

/// A client flow, deterministic per index: many clients, many ports.
fn flow(index: u32) -> (Ipv4Addr, u16) {
    let client = Ipv4Addr::new(
        198,
        18,
        100 + (index % 50) as u8,
        (index / 50 % 250) as u8 + 1,
    );
    (client, 10_000 + (index * 7919 % 50_000) as u16)
}

/// The backend the programs pick for a new flow: the live table's slot for its hash.
fn pick(table: &[(Ipv4Addr, u16)], index: u32) -> (Ipv4Addr, u16) {
    let (client, port) = flow(index);
    let hash = flow_hash(
        u32::from(client).to_be(),
        u32::from(VIP).to_be(),
        port.to_be(),
        80u16.to_be(),
        IPPROTO_TCP,
    );
    table[(hash % table.len() as u32) as usize]
}

fn live_table(datapath: &Datapath) -> Vec<(Ipv4Addr, u16)> {
    datapath
        .live_table(&frontend())
        .expect("reading the table")
        .expect("the service has a table")
}

/// The frame `program` puts out for `frame`.
fn run(datapath: &mut Datapath, program: &str, frame: &[u8]) -> packet::Parsed {
    let (_, out) = programs::test_run(datapath.ebpf_mut(), program, frame);
    packet::parse(&out).expect("an IPv4 frame")
}

#[test]
fn the_programs_pick_what_the_live_table_says() {
    let pins = PinDir::new("maglev-pick");
    let mut datapath = open(&pins, 1);
    datapath
        .apply(&set(backends(2..12)))
        .expect("applying 10 backends");
    let table = live_table(&datapath);
    for index in 0..300 {
        let (client, port) = flow(index);
        let frame = Frame::tcp((client, port), (VIP, 80)).build();
        let sent_to = run(&mut datapath, program_names::EXTERNAL, &frame);
        assert_eq!((sent_to.dst, sent_to.dst_port), pick(&table, index));
    }
}

#[test]
fn east_west_new_flows_take_the_backends_in_turn() {
    // The turn is counted per CPU: stay on one so the count below is exact.
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity only
    // touch the set passed by reference.
    unsafe {
        let mut cpus: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut cpus);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &cpus),
            0
        );
    }
    let pins = PinDir::new("round-robin");
    let mut datapath = open(&pins, 1);
    datapath
        .apply(&set(backends(2..5)))
        .expect("applying 3 backends");
    let mut per_backend = BTreeMap::new();
    let mut order = Vec::new();
    // Few flows from one client, as a keep-alive pool opens them: a hash would split
    // 30 flows unevenly; round robin gives each backend 10, in a fixed cycle.
    for index in 0..30 {
        let frame = Frame::tcp((Ipv4Addr::new(198, 18, 9, 9), 40_000 + index), (VIP, 80)).build();
        let sent_to = run(&mut datapath, program_names::FROM_POD, &frame);
        *per_backend.entry(sent_to.dst).or_insert(0) += 1;
        order.push(sent_to.dst);
    }
    assert_eq!(per_backend.len(), 3, "{per_backend:?}");
    assert!(
        per_backend.values().all(|count| *count == 10),
        "{per_backend:?}"
    );
    assert!(
        order
            .windows(4)
            .all(|w| w[0] == w[3] && w[0] != w[1] && w[1] != w[2])
    );
    // An established flow keeps its backend: its next packet is not a new turn.
    let first = Frame::tcp((Ipv4Addr::new(198, 18, 9, 9), 40_000), (VIP, 80)).build();
    let again = run(&mut datapath, program_names::FROM_POD, &first);
    assert_eq!(again.dst, order[0]);
}

#[test]
fn removing_one_of_n_backends_moves_at_most_one_nth_plus_two_percent_of_flows() {
    let pins = PinDir::new("maglev-move");
    let mut datapath = open(&pins, 1);
    for n in [3u8, 5, 10, 20, 50] {
        let all = backends(2..2 + n);
        datapath.apply(&set(all.clone())).expect("apply");
        let before = live_table(&datapath);
        let removed = all[usize::from(n / 2)];
        let rest: Vec<BackendSpec> = all.into_iter().filter(|b| *b != removed).collect();
        datapath.apply(&set(rest)).expect("apply without one");
        let after = live_table(&datapath);
        assert!(!after.contains(&(removed.addr, removed.port)));
        let moved = (0..FLOWS)
            .filter(|index| pick(&before, *index) != pick(&after, *index))
            .count();
        let moved_share = moved as f64 / f64::from(FLOWS);
        let bound = 1.0 / f64::from(n) + 0.02;
        println!(
            "N={n}: {:.2}% of flows moved (bound {:.2}%)",
            moved_share * 100.0,
            bound * 100.0
        );
        assert!(
            moved_share <= bound,
            "N={n}: {moved_share:.4} of flows moved, more than 1/N + 2% = {bound:.4}"
        );
    }
}

#[test]
fn every_node_builds_the_same_table_for_the_same_backends() {
    let pins_a = PinDir::new("maglev-a");
    let pins_b = PinDir::new("maglev-b");
    let mut node_a = open(&pins_a, 1);
    let mut node_b = open(&pins_b, 2);
    let mut listed = backends(2..12);
    node_a.apply(&set(listed.clone())).expect("apply on node a");
    // Another node may learn the endpoints in another order.
    listed.reverse();
    node_b.apply(&set(listed)).expect("apply on node b");
    assert_eq!(live_table(&node_a), live_table(&node_b));
}
