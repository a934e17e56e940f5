//! Where the agent's own memory goes with 10,000 Services × 10 endpoints (issue 25: its
//! own share ≤ 64 MB): the heap each part holds, counted by a counting allocator as the
//! agent's pieces take in the objects its watch would bring — the watch's decoded
//! objects and the typed cluster state, the DNS zones, and the datapath's user-space
//! mirror of what it wrote to the maps. The figures are printed; the bound asserted is
//! the 64 MB on the heap alone. With the reverse DNS names kept per service and
//! one backend user kept in place, the heap counted here went from 51.5 to 42.8 MiB;
//! the process's RssAnon adds malloc's headers and what it keeps of freed memory, the
//! runtime and what the heartbeat reads (72–75 MiB per agent in the agents benchmark,
//! docs/BENCHMARKS.md). Needs root and bpffs (the datapath is loaded for real).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::atomic::{AtomicUsize, Ordering},
};

use berth_agent::{
    cluster::{ClusterEvent, ClusterObject, ClusterState, Update},
    datapath::{Datapath, DatapathOptions, Limits},
    dns::DnsServer,
};
use berth_testkit::PinDir;
use berth_watch::WatchObject as _;
use serde_json::json;

/// The system allocator, counting the bytes held.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to the system allocator with the caller's arguments; only a
// counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: ptr came from alloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size, Ordering::Relaxed);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as GlobalAlloc::realloc requires, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SERVICES: u32 = 10_000;
const ENDPOINTS: u32 = 10;
const NODES: u32 = 10;
const OWN_MEMORY_TARGET: usize = 64_000_000;

fn held() -> usize {
    HELD.load(Ordering::Relaxed)
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// The watch's objects as the control plane sends them: Nodes, Services and a slice of
/// 10 endpoints per Service (as the benchmark's), decoded as the agent's watch does.
fn objects() -> BTreeMap<String, ClusterObject> {
    let mut objects = BTreeMap::new();
    let mut add = |kind: &str, json: serde_json::Value| {
        let (name, object) =
            ClusterObject::decode(kind, json.to_string().as_bytes()).expect("decodable");
        objects.insert(format!("{kind} {name}"), object);
    };
    for node in 0..NODES {
        add(
            "Node",
            json!({"metadata": {"name": format!("node-{node}")},
                   "spec": {"podCIDR": format!("10.{}.0.0/16", 64 + node)},
                   "status": {"addresses": [{"type": "InternalIP", "address": format!("198.18.0.{}", node + 1)}]}}),
        );
    }
    for index in 0..SERVICES {
        let name = format!("svc-{index:05}");
        let node = index % NODES;
        add(
            "Service",
            json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{index}"),
                                "resourceVersion": index.to_string()},
                   "spec": {"clusterIP": Ipv4Addr::from(u32::from_be_bytes([198, 18, 192, 16]) + index).to_string(),
                            "type": "ClusterIP",
                            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}),
        );
        let endpoints: Vec<serde_json::Value> = (0..ENDPOINTS)
            .map(|e| {
                let n = index * ENDPOINTS + e;
                json!({"addresses": [format!("10.{}.{}.{}", 64 + node, n / 256 % 256, n % 256)],
                       "conditions": {"ready": true, "serving": true, "terminating": false},
                       "nodeName": format!("node-{node}")})
            })
            .collect();
        add(
            "EndpointSlice",
            json!({"metadata": {"name": format!("{name}-0"), "namespace": "default",
                                "labels": {"kubernetes.io/service-name": name}},
                   "addressType": "IPv4", "endpoints": endpoints,
                   "ports": [{"port": 8080, "protocol": "TCP"}]}),
        );
    }
    objects
}

#[tokio::test]
async fn the_agents_own_heap_with_ten_thousand_services_stays_under_64_mb() {
    let pins = PinDir::new("memory");
    let mut datapath = Datapath::open(DatapathOptions {
        pin_dir: pins.path().to_path_buf(),
        node_id: u32::from(Ipv4Addr::new(10, 64, 0, 0)),
        node_addr: Ipv4Addr::new(198, 18, 0, 1),
        limits: Limits::default(),
    })
    .expect("loading the datapath");
    let dns = DnsServer::start(
        "127.0.0.1:0".parse().expect("address"),
        "cluster.local",
        &[],
    )
    .await
    .expect("DNS server");
    let start = held();

    let watch = objects();
    let decoded = held() - start;
    let mut cluster = ClusterState::new("node-0", "cluster.local");
    let before = held();
    let Update::Resync { set, records } = cluster.apply(ClusterEvent::Snapshot(watch.clone()))
    else {
        panic!("a snapshot gives a resync");
    };
    assert_eq!(set.services.len(), SERVICES as usize);
    let with_set = held();
    let records_bytes = {
        let before = held();
        let records = records.clone();
        let bytes = held() - before;
        drop(records);
        bytes
    };
    let before_dns = held();
    dns.update(records);
    let dns_bytes = held() + records_bytes - before_dns;
    let before_datapath = held();
    datapath
        .apply(&set)
        .expect("10,000 Services fit the defaults");
    let datapath_bytes = held() - before_datapath;
    let set_bytes = {
        let before = held();
        drop(set);
        before - held()
    };
    let state_bytes = with_set - before - set_bytes - records_bytes;
    let after = held();
    println!(
        "the watch's decoded objects: {}\n\
         the cluster state: {}\n\
         the set handed to the datapath (dropped once written): {}\n\
         the DNS records handed to the server: {}; its zones hold {}\n\
         the datapath's user-space mirror: {}\n\
         everything held once the set is written: {}",
        mib(decoded),
        mib(state_bytes),
        mib(set_bytes),
        mib(records_bytes),
        mib(dns_bytes),
        mib(datapath_bytes),
        mib(after - start),
    );
    assert!(
        after - start <= OWN_MEMORY_TARGET,
        "the agent's heap for 10,000 Services × 10 endpoints is {} (≤ 64 MB wanted)",
        mib(after - start)
    );
}
