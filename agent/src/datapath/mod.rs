//! The eBPF service datapath seen from user space: loads the programs embedded in the
//! agent, keeps their maps pinned under the node's bpffs directory, attaches the programs
//! to interfaces, and turns a desired [`ServiceSet`] into map entries.
//!
//! Two-phase apply: [`Datapath::apply`] first computes every entry (ids, backends, Maglev
//! tables) without touching the kernel, and fails before writing anything if the input is
//! invalid; then it writes in an order that never exposes a half-built service: backends,
//! then the rebuilt table into the service's idle half, then the service entry that
//! switches to it, then removals.
//!
//! Restart: maps and attachments are pinned. A new agent process re-opens the maps,
//! rebuilds its bookkeeping from them, and atomically replaces the programs behind the
//! pinned links, so traffic keeps flowing while the agent is away and while it returns.

mod batch;
mod delta;
pub mod maglev;
mod mmap;
mod model;
mod neighbours;
mod policy;
mod slots;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fs, io,
    net::Ipv4Addr,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    programs::{
        CgroupAttachMode, CgroupSockAddr, ProgramError, SchedClassifier, TcAttachType, Xdp,
        links::{FdLink, LinkError, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
pub use berth_ebpf_common::Reason;
use berth_ebpf_common::{
    BACKEND_ACTIVE, BACKEND_FAILED, BACKEND_TERMINATING, Backend, BackendAddr, CONFIG_MASQUERADE,
    CT_FORWARD, CtEntry, DatapathConfig, FlowKey, PodNetns, PodRange, SVC_FLAG_AFFINITY,
    SVC_FLAG_EXTERNAL, SVC_FLAG_RANDOM, SVC_FLAG_ROUND_ROBIN, ServiceKey, ServiceValue, Traffic,
    ct_expired, defaults, map_names, program_names,
};
pub use maglev::BackendIdentity;
pub use model::*;
pub use neighbours::{NeighbourKeeper, resolve_neighbours};
pub use policy::{PolicyCounters, PolicyMaps, policy_drop};

/// The eBPF object built from ../ebpf by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/berth"));

/// Map capacities. Memory for array maps is reserved up front: the Maglev pool takes
/// `maglev_pool_slots * 4` bytes (128 MiB by default), the backend array 16 bytes a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_services: u32,
    pub max_backends: u32,
    pub max_connections: u32,
    pub max_affinity: u32,
    pub max_nodes: u32,
    /// The smallest Maglev table (a prime); services with more than 1/200 of it in
    /// backends get larger tables.
    pub maglev_min_table: u32,
    /// Slots in the pool the tables are carved from (rounded down to a power of two).
    pub maglev_pool_slots: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_services: defaults::MAX_SERVICES,
            max_backends: defaults::MAX_BACKENDS,
            max_connections: defaults::MAX_CONNECTIONS,
            max_affinity: defaults::MAX_AFFINITY,
            max_nodes: defaults::MAX_NODES,
            maglev_min_table: defaults::MAGLEV_MIN_TABLE,
            maglev_pool_slots: defaults::MAGLEV_POOL_SLOTS,
        }
    }
}

impl Limits {
    fn pool_slots(&self) -> u64 {
        slots::SlotPool::new(self.maglev_pool_slots).capacity()
    }

    /// Frontend keys per service port: ClusterIP, NodePort on a few node addresses and
    /// LoadBalancer IPs.
    const FRONTENDS_PER_SERVICE: u32 = 4;

    fn round_robin_slots(&self) -> u32 {
        self.max_services * defaults::ROUND_ROBIN_WIDTH
    }

    /// Entries of the half-open table: a forward and a reverse entry per connection.
    fn half_open_entries(&self) -> u32 {
        (self.max_connections * 2 / defaults::HALF_OPEN_SHARE).max(2)
    }

    /// Entries of the masquerade table: an outgoing and a reply entry per connection.
    fn masquerade_entries(&self) -> u32 {
        (self.max_connections * 2 / defaults::MASQUERADE_SHARE).max(2)
    }

    fn map_sizes(&self) -> [(&'static str, u32); 16] {
        [
            (map_names::CONFIG, 1),
            (
                map_names::SERVICES,
                self.max_services * Self::FRONTENDS_PER_SERVICE,
            ),
            // Backend id 0 is never used: a zeroed slot must not look like a backend.
            (map_names::BACKENDS, self.max_backends + 1),
            (map_names::MAGLEV, (self.pool_slots() / 2) as u32),
            (map_names::ROUND_ROBIN, self.round_robin_slots() / 2),
            // A forward and a reverse entry per connection.
            (map_names::CONNTRACK, self.max_connections * 2),
            (map_names::HALF_OPEN, self.half_open_entries()),
            (map_names::LOCAL_BACKENDS, self.max_backends),
            (map_names::AFFINITY, self.max_affinity),
            (map_names::NODES, self.max_nodes),
            (map_names::POD_RANGES, self.max_nodes),
            (map_names::NO_MASQUERADE, defaults::MAX_NO_MASQUERADE),
            (map_names::MASQUERADE, self.masquerade_entries()),
            // One entry per flow a pod opened, as many as masqueraded connections.
            (map_names::POLICY_CONNTRACK, self.masquerade_entries()),
            (map_names::SERVICE_STATS, self.max_services),
            (map_names::BACKEND_STATS, self.max_backends + 1),
        ]
    }
}

#[derive(Clone, Debug)]
pub struct DatapathOptions {
    /// bpffs directory holding this node's pinned maps and links, e.g.
    /// `/sys/fs/bpf/berth/<node>`. Everything Berth pins lives below it.
    pub pin_dir: PathBuf,
    pub node_id: u32,
    /// The node's underlay address: source of IPIP towards other nodes.
    pub node_addr: Ipv4Addr,
    pub limits: Limits,
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "loading the eBPF programs failed: {0} (the agent needs root, a kernel with BPF, and bpffs mounted at /sys/fs/bpf)"
    )]
    Load(#[from] aya::EbpfError),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("link pinned at {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("{0}")]
    Net(#[from] berth_net::NetError),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{0} is not on a BPF filesystem: mount one with `mount -t bpf bpf /sys/fs/bpf` (note that `ip netns exec` hides /sys/fs/bpf; start the agent in a network namespace with `nsenter --net=/run/netns/<name>` instead)"
    )]
    NotBpffs(PathBuf),
    #[error("the eBPF object has no map or program named {0}")]
    Missing(&'static str),
    #[error(
        "the map {map} pinned in {dir} holds {pinned} entries but the configuration asks for {configured}: keep the old limits, or remove {dir} to start over (this forgets tracked connections)"
    )]
    LimitsChanged {
        map: &'static str,
        dir: PathBuf,
        pinned: u32,
        configured: u32,
    },
    #[error(
        "the smallest Maglev table size {0} must be a prime number of at most 131071 (for example 251, 1021 or 4093)"
    )]
    MaglevSizeNotPrime(u32),
    #[error(
        "the Maglev pool ({capacity} slots) has no room for a {size}-slot table of service {service}: raise maglev_pool_slots"
    )]
    MaglevPoolFull {
        service: String,
        size: u32,
        capacity: u64,
    },
    #[error("{what}: {count} exceeds the configured limit of {limit}")]
    TooMany {
        what: &'static str,
        count: usize,
        limit: u32,
    },
    #[error("frontend {frontend} is claimed by both service {first} and service {second}")]
    DuplicateFrontend {
        frontend: Frontend,
        first: String,
        second: String,
    },
    #[error("service {service}: {reason}")]
    InvalidService { service: String, reason: String },
    #[error(
        "backend {addr}:{port} is on node {first} for one service and on node {second} for another"
    )]
    BackendNodeConflict {
        addr: Ipv4Addr,
        port: u16,
        first: u32,
        second: u32,
    },
}

fn map_error(map: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

/// Removes `key` from a hash map; a key already absent is fine.
fn forget<K: aya::Pod, V: aya::Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
    key: K,
    name: &'static str,
) -> Result<(), DatapathError> {
    match map.remove(&key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(error)) if error.io_error.kind() == io::ErrorKind::NotFound => {
            Ok(())
        }
        Err(error) => Err(map_error(name)(error)),
    }
}

/// Removes the entries of a map keyed by interface index whose interface is gone.
fn forget_vanished_interfaces(
    map: &mut BpfHashMap<MapData, u32, u32>,
    name: &'static str,
) -> Result<(), DatapathError> {
    let vanished: Vec<u32> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|index| interface_name(*index).is_none())
        .collect();
    for index in vanished {
        forget(map, index, name)?;
    }
    Ok(())
}

/// A failed batch call as the map error aya would give for one entry.
fn batch_error(map: &'static str, call: &'static str) -> impl FnOnce(io::Error) -> DatapathError {
    move |io_error| DatapathError::Map {
        map,
        source: MapError::SyscallError(aya::sys::SyscallError { call, io_error }),
    }
}

/// Entries read or written in one batch call.
const BATCH: u32 = 4096;

/// Each key's traffic summed over CPUs, from the batch values of a per-CPU array.
fn sum_per_cpu(values: &[Traffic], cpus: usize) -> impl Iterator<Item = Traffic> + '_ {
    values.chunks(cpus.max(1)).map(|per_cpu| {
        per_cpu.iter().fold(Traffic::default(), |sum, cpu| Traffic {
            packets: sum.packets + cpu.packets,
            bytes: sum.bytes + cpu.bytes,
            new_connections: sum.new_connections + cpu.new_connections,
        })
    })
}

/// The traffic of keys `first..first + count` of a per-CPU stats array, summed over
/// CPUs: in batches, or one key at a time where the kernel has no batch lookup.
fn read_traffic(
    map: &PerCpuArray<MapData, Traffic>,
    name: &'static str,
    first: u32,
    count: u32,
) -> Result<Vec<Traffic>, DatapathError> {
    use aya::maps::IterableMap as _;
    let cpus = aya::util::nr_cpus().map_err(|(_, error)| batch_error(name, "nr_cpus")(error))?;
    let fd = map.map().fd().as_fd();
    let mut out = Vec::with_capacity(count as usize);
    let mut values = Vec::new();
    let mut next = first;
    let end = first.saturating_add(count);
    while next < end {
        let want = (end - next).min(BATCH);
        match batch::lookup_array(fd, next, want, cpus, &mut values) {
            Ok(0) => break,
            Ok(read) => {
                out.extend(sum_per_cpu(&values, cpus));
                next += read;
            }
            Err(error) if batch::unsupported(&error) => {
                for index in next..end {
                    match Datapath::traffic(map, index) {
                        Ok(traffic) => out.push(traffic),
                        Err(MapError::OutOfBounds { .. }) => break,
                        Err(error) => return Err(map_error(name)(error)),
                    }
                }
                break;
            }
            Err(error) => return Err(batch_error(name, "bpf_map_lookup_batch")(error)),
        }
    }
    Ok(out)
}

fn program_error(program: &'static str) -> impl FnOnce(ProgramError) -> DatapathError {
    move |source| DatapathError::Program { program, source }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> DatapathError + '_ {
    move |source| DatapathError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What one `apply` changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub services: usize,
    pub frontends_written: usize,
    pub frontends_removed: usize,
    pub tables_written: usize,
    pub backends_written: usize,
    pub backends_removed: usize,
    pub elapsed: Duration,
}

impl ApplyReport {
    pub fn changed_anything(&self) -> bool {
        self.frontends_written
            + self.frontends_removed
            + self.tables_written
            + self.backends_written
            + self.backends_removed
            > 0
    }
}

/// Every entry of a hash map, read from the kernel.
fn entries<K: aya::Pod, V: aya::Pod>(
    map: &BpfHashMap<MapData, K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>, DatapathError> {
    map.iter()
        .map(|entry| entry.map_err(map_error(name)))
        .collect()
}

fn check_count(what: &'static str, count: usize, limit: u32) -> Result<(), DatapathError> {
    if count > limit as usize {
        return Err(DatapathError::TooMany { what, count, limit });
    }
    Ok(())
}

/// What every service must have, whatever the others hold.
fn check_service(service: &Service) -> Result<(), DatapathError> {
    let invalid = |reason: String| DatapathError::InvalidService {
        service: service.name.clone(),
        reason,
    };
    if service.frontends.is_empty() {
        return Err(invalid("it has no frontend address".into()));
    }
    if let Some(frontend) = service.frontends.iter().find(|f| f.port == 0) {
        return Err(invalid(format!("frontend {frontend} has port 0")));
    }
    if let Some(backend) = service.backends.iter().find(|b| b.port == 0) {
        return Err(invalid(format!("backend {} has port 0", backend.addr)));
    }
    Ok(())
}

/// Folds one service's view of a backend into the merged backends: every service must
/// place it on the same node, and the most cautious state wins (Failed over Terminating
/// over Active).
fn merge_backend(
    merged: &mut BTreeMap<(Ipv4Addr, u16), BackendSpec>,
    backend: &BackendSpec,
) -> Result<(), DatapathError> {
    match merged.get_mut(&(backend.addr, backend.port)) {
        None => {
            merged.insert((backend.addr, backend.port), *backend);
        }
        Some(existing) => {
            if existing.node_id != backend.node_id {
                return Err(DatapathError::BackendNodeConflict {
                    addr: backend.addr,
                    port: backend.port,
                    first: existing.node_id,
                    second: backend.node_id,
                });
            }
            existing.state = existing.state.max(backend.state);
        }
    }
    Ok(())
}

fn backend_value(spec: &BackendSpec) -> Backend {
    Backend {
        addr: u32::from(spec.addr).to_be(),
        port: spec.port.to_be(),
        state: match spec.state {
            BackendState::Active => BACKEND_ACTIVE,
            BackendState::Terminating => BACKEND_TERMINATING,
            BackendState::Failed => BACKEND_FAILED,
        },
        _pad: 0,
        node_id: spec.node_id,
    }
}

/// A backend's address and port, as the planner keys it.
fn backend_key(backend: &Backend) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::from(u32::from_be(backend.addr)),
        u16::from_be(backend.port),
    )
}

fn local_address(backend: &Backend) -> BackendAddr {
    BackendAddr {
        addr: backend.addr,
        port: backend.port,
        _pad: 0,
    }
}

/// The lowest id in `range`, from `cursor` on, that is neither `taken` nor `live`; when
/// every one is, the lowest that is not `taken` (an id being freed now). `cursor` moves
/// past the ids found taken, so a run of allocations scans the range once.
fn lowest_free(
    range: std::ops::Range<u32>,
    cursor: &mut u32,
    taken: impl Fn(u32) -> bool,
    live: impl Fn(u32) -> bool,
) -> u32 {
    let start = (*cursor).max(range.start);
    match (start..range.end).find(|id| !taken(*id) && !live(*id)) {
        Some(id) => {
            *cursor = id + 1;
            id
        }
        None => (range.start..).find(|id| !taken(*id)).unwrap_or(range.end),
    }
}

/// How the XDP program is attached to the external interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver: fastest. On a veth, XDP_TX needs the peer to have NAPI (GRO on).
    #[default]
    Native,
    /// After the kernel built the skb: works on any interface.
    Generic,
}

/// Per-service or per-backend traffic summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficReport<K> {
    pub key: K,
    pub traffic: Traffic,
}

/// The service maps' contents (see [`Datapath::dump`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapsDump {
    /// Each frontend's entry, its Maglev table (backend ids) and round-robin list.
    pub services: BTreeMap<ServiceKey, (ServiceValue, Vec<u32>, Vec<u32>)>,
    pub backends: BTreeMap<u32, Backend>,
    pub local_backends: BTreeMap<BackendAddr, u32>,
    pub nodes: BTreeMap<u32, u32>,
}

struct PlannedService {
    name: String,
    id: u32,
    /// Frontend keys, each with its own external flag.
    keys: Vec<(ServiceKey, u32)>,
    value: ServiceValue,
    /// Backend id per Maglev slot; empty when there is no active backend.
    table: Vec<u32>,
    /// What `table` is built from, when the live table cannot be kept.
    pending_table: Option<MaglevInput>,
    /// Whether `table` must be written at `value.table_offset` (a rebuilt table).
    write_table: bool,
    /// The active backends' ids for round robin (empty when the service does not use it).
    round_robin: Vec<u32>,
}

struct MaglevInput {
    identities: Vec<BackendIdentity>,
    /// The backend id of each identity, in the same order.
    backend_ids: Vec<u32>,
    size: u32,
}

/// Builds the Maglev tables a plan needs. They are independent and, for 10,000 services,
/// most of an apply's time: spread over the machine's cores.
fn build_tables(services: &mut [PlannedService]) {
    let mut pending: Vec<&mut PlannedService> = services
        .iter_mut()
        .filter(|service| service.pending_table.is_some())
        .collect();
    let build = |service: &mut PlannedService| {
        if let Some(input) = service.pending_table.take() {
            service.table = maglev::build_table(&input.identities, input.size)
                .into_iter()
                .map(|index| input.backend_ids[index as usize])
                .collect();
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    // Threads cost more than a few tables: one change stays on this thread.
    if cores == 1 || pending.len() < 64 {
        pending.into_iter().for_each(build);
        return;
    }
    let chunk = pending.len().div_ceil(cores);
    std::thread::scope(|scope| {
        for part in pending.chunks_mut(chunk) {
            scope.spawn(|| part.iter_mut().for_each(|service| build(service)));
        }
    });
}

struct Plan {
    services: Vec<PlannedService>,
    /// The slot pool after this apply, and the tables it retires: their slots are
    /// reused from the next apply on, when no packet can still be reading them.
    pool: slots::SlotPool,
    retiring: Vec<(u32, u32)>,
    backends: BTreeMap<u32, Backend>,
    backend_ids: HashMap<(Ipv4Addr, u16), u32>,
}

pub struct Datapath {
    ebpf: Ebpf,
    options: DatapathOptions,
    config: Array<MapData, DatapathConfig>,
    services: BpfHashMap<MapData, ServiceKey, ServiceValue>,
    backends: Array<MapData, Backend>,
    nodes: BpfHashMap<MapData, u32, u32>,
    conntrack: BpfHashMap<MapData, FlowKey, CtEntry>,
    half_open: BpfHashMap<MapData, FlowKey, CtEntry>,
    local_backends: BpfHashMap<MapData, BackendAddr, u32>,
    /// Mirror of the local backends map, read back at open.
    live_local_backends: HashMap<BackendAddr, u32>,
    service_stats: PerCpuArray<MapData, Traffic>,
    reasons: PerCpuArray<MapData, u64>,
    /// Host-side ifindex of each pod veth the programs are attached to → the pod's address.
    pod_interfaces: BpfHashMap<MapData, u32, u32>,
    pod_nsids: BpfHashMap<MapData, u32, u32>,
    /// Each pod's network namespace cookie → the pod (address, host-side veth).
    pod_netns: BpfHashMap<MapData, u64, PodNetns>,
    maglev: mmap::MappedArray,
    round_robin: mmap::MappedArray,
    /// What each service id's round-robin list holds; empty after a restart, so every
    /// list is rewritten once (plain stores into mapped memory).
    live_round_robin: HashMap<u32, Vec<u32>>,
    pool: slots::SlotPool,
    /// Tables unlinked by the last apply, as (offset, size): free from the next one on.
    retiring: Vec<(u32, u32)>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// Mirror of the services map, read back at open.
    live_services: HashMap<ServiceKey, ServiceValue>,
    /// Mirror of the in-use backend slots, read back at open.
    live_backends: BTreeMap<u32, Backend>,
    live_nodes: BTreeMap<u32, u32>,
    /// Every node's pod range → its node and how it is reached (see [`crate::routing`]).
    pod_ranges: LpmTrie<MapData, u32, PodRange>,
    /// Mirror of the pod ranges map, by (range address, prefix length), read back at open.
    live_pod_ranges: BTreeMap<(Ipv4Addr, u8), PodRange>,
    /// Destination ranges pods' traffic is not masqueraded to.
    no_masquerade: LpmTrie<MapData, u32, u32>,
    /// Mirror of the no-masquerade list, read back at open.
    live_no_masquerade: BTreeSet<(Ipv4Addr, u8)>,
    /// `CONFIG_*` flags of the config entry; a restarted agent keeps the pinned ones until
    /// it configures them again, so masqueraded flows keep their translation meanwhile.
    config_flags: u32,
    /// Service names by id; names are not stored in the kernel, so after a restart they
    /// are re-learned from the first apply.
    service_names: HashMap<u32, String>,
    /// The same, by name.
    service_ids: HashMap<String, u32>,
    /// Each written service's entry (without the per-frontend external flag), by id.
    live_by_id: HashMap<u32, ServiceValue>,
    /// Backend ids by address and port, for the backends in `live_backends`.
    live_backend_ids: HashMap<(Ipv4Addr, u16), u32>,
    /// Every id below these is in use: searches for a free id start here.
    backend_id_floor: u32,
    service_id_floor: u32,
    /// The services as last written, with the indexes a per-service change needs.
    desired: delta::Desired,
    /// The nodes as last written.
    node_list: Vec<Node>,
    /// Whether a full apply has made the mirror and `desired` agree; until then (a
    /// restarted agent) changes are applied as a full apply.
    synced: bool,
}

impl Datapath {
    /// Loads the programs and opens (or creates) the pinned maps.
    pub fn open(options: DatapathOptions) -> Result<Self, DatapathError> {
        let limits = options.limits;
        if !maglev::is_prime(limits.maglev_min_table) || limits.maglev_min_table > 131_071 {
            return Err(DatapathError::MaglevSizeNotPrime(limits.maglev_min_table));
        }
        let pin_dir = options.pin_dir.clone();
        if !on_bpffs(&pin_dir) {
            return Err(DatapathError::NotBpffs(pin_dir));
        }
        fs::create_dir_all(pin_dir.join("links")).map_err(io_error(&pin_dir))?;
        let sizes = limits.map_sizes();
        for (map, configured) in sizes {
            let path = pin_dir.join(map);
            if !path.exists() {
                continue;
            }
            let pinned = MapData::from_pin(&path)
                .and_then(|data| data.info())
                .map_err(map_error(map))?
                .max_entries();
            if pinned != configured {
                return Err(DatapathError::LimitsChanged {
                    map,
                    dir: pin_dir,
                    pinned,
                    configured,
                });
            }
        }
        // The reason counters grow with new reasons; an older agent's pinned array is
        // too short, so it is replaced (counters restart, as after a reboot).
        let reasons_pin = pin_dir.join(map_names::REASONS);
        if reasons_pin.exists()
            && MapData::from_pin(&reasons_pin)
                .and_then(|data| data.info())
                .map_err(map_error(map_names::REASONS))?
                .max_entries()
                != Reason::COUNT
        {
            fs::remove_file(&reasons_pin).map_err(io_error(&reasons_pin))?;
        }
        // Conntrack entries grew a state and a last-seen time: an older agent's table
        // cannot be read by these programs, so it is replaced. Connections it tracked
        // lose their translation, as after a reboot.
        // The config entry grew flags the same way; the agent rewrites it at once.
        for (table, value_size) in [
            (map_names::CONNTRACK, std::mem::size_of::<CtEntry>()),
            (map_names::HALF_OPEN, std::mem::size_of::<CtEntry>()),
            (map_names::CONFIG, std::mem::size_of::<DatapathConfig>()),
            // Grew a revision and the policies drops count under; the agent rewrites it
            // as soon as its first compilation is in (pods are not isolated until then).
            (
                map_names::POLICY_ENDPOINTS,
                std::mem::size_of::<berth_ebpf_common::EndpointPolicy>(),
            ),
        ] {
            let pin = pin_dir.join(table);
            if pin.exists()
                && MapData::from_pin(&pin)
                    .and_then(|data| data.info())
                    .map_err(map_error(table))?
                    .value_size() as usize
                    != value_size
            {
                fs::remove_file(&pin).map_err(io_error(&pin))?;
            }
        }
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&pin_dir);
        for (map, size) in sizes {
            loader.map_max_entries(map, size);
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        // Without a reader the programs' log records are simply dropped, so a failure to
        // set one up must not stop the datapath.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(error) => {
                tracing::warn!(%error, "eBPF log records will not be forwarded");
                None
            }
        };
        for program in [
            program_names::FROM_POD,
            program_names::TO_POD,
            program_names::TUNNEL_ENCAP,
            program_names::TUNNEL_DECAP,
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(program)
                .ok_or(DatapathError::Missing(program))?
                .try_into()
                .map_err(program_error(program))?;
            prog.load().map_err(program_error(program))?;
        }
        let xdp: &mut Xdp = ebpf
            .program_mut(program_names::EXTERNAL)
            .ok_or(DatapathError::Missing(program_names::EXTERNAL))?
            .try_into()
            .map_err(program_error(program_names::EXTERNAL))?;
        xdp.load().map_err(program_error(program_names::EXTERNAL))?;
        let connect4: &mut CgroupSockAddr = ebpf
            .program_mut(program_names::CONNECT4)
            .ok_or(DatapathError::Missing(program_names::CONNECT4))?
            .try_into()
            .map_err(program_error(program_names::CONNECT4))?;
        connect4
            .load()
            .map_err(program_error(program_names::CONNECT4))?;

        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(DatapathError::Missing(name));
        let config: Array<_, DatapathConfig> = take(map_names::CONFIG)?
            .try_into()
            .map_err(map_error(map_names::CONFIG))?;
        let services: BpfHashMap<_, ServiceKey, ServiceValue> = take(map_names::SERVICES)?
            .try_into()
            .map_err(map_error(map_names::SERVICES))?;
        let backends: Array<_, Backend> = take(map_names::BACKENDS)?
            .try_into()
            .map_err(map_error(map_names::BACKENDS))?;
        let nodes: BpfHashMap<_, u32, u32> = take(map_names::NODES)?
            .try_into()
            .map_err(map_error(map_names::NODES))?;
        let conntrack: BpfHashMap<_, FlowKey, CtEntry> = take(map_names::CONNTRACK)?
            .try_into()
            .map_err(map_error(map_names::CONNTRACK))?;
        let half_open: BpfHashMap<_, FlowKey, CtEntry> = take(map_names::HALF_OPEN)?
            .try_into()
            .map_err(map_error(map_names::HALF_OPEN))?;
        let local_backends: BpfHashMap<_, BackendAddr, u32> = take(map_names::LOCAL_BACKENDS)?
            .try_into()
            .map_err(map_error(map_names::LOCAL_BACKENDS))?;
        let service_stats: PerCpuArray<_, Traffic> = take(map_names::SERVICE_STATS)?
            .try_into()
            .map_err(map_error(map_names::SERVICE_STATS))?;
        let reasons: PerCpuArray<_, u64> = take(map_names::REASONS)?
            .try_into()
            .map_err(map_error(map_names::REASONS))?;
        let pod_interfaces: BpfHashMap<_, u32, u32> =
            take(map_names::POD_INTERFACES)?
                .try_into()
                .map_err(map_error(map_names::POD_INTERFACES))?;
        let pod_nsids: BpfHashMap<_, u32, u32> = take(map_names::POD_NSIDS)?
            .try_into()
            .map_err(map_error(map_names::POD_NSIDS))?;
        let pod_netns: BpfHashMap<_, u64, PodNetns> = take(map_names::POD_NETNS)?
            .try_into()
            .map_err(map_error(map_names::POD_NETNS))?;
        let pod_ranges: LpmTrie<_, u32, PodRange> = take(map_names::POD_RANGES)?
            .try_into()
            .map_err(map_error(map_names::POD_RANGES))?;
        let no_masquerade: LpmTrie<_, u32, u32> = take(map_names::NO_MASQUERADE)?
            .try_into()
            .map_err(map_error(map_names::NO_MASQUERADE))?;
        let maglev_map = match take(map_names::MAGLEV)? {
            Map::Array(data) => data,
            _ => return Err(DatapathError::Missing(map_names::MAGLEV)),
        };
        // Seen from user space the map is an array of u32 slots, two per map entry.
        let maglev = mmap::MappedArray::new(maglev_map, limits.pool_slots() as usize)
            .map_err(io_error(&pin_dir.join(map_names::MAGLEV)))?;
        let round_robin = match take(map_names::ROUND_ROBIN)? {
            Map::Array(data) => mmap::MappedArray::new(data, limits.round_robin_slots() as usize)
                .map_err(io_error(&pin_dir.join(map_names::ROUND_ROBIN)))?,
            _ => return Err(DatapathError::Missing(map_names::ROUND_ROBIN)),
        };

        let mut datapath = Datapath {
            ebpf,
            options,
            config,
            services,
            backends,
            nodes,
            conntrack,
            half_open,
            local_backends,
            live_local_backends: HashMap::new(),
            service_stats,
            reasons,
            pod_interfaces,
            pod_nsids,
            pod_netns,
            maglev,
            round_robin,
            live_round_robin: HashMap::new(),
            pool: slots::SlotPool::new(limits.maglev_pool_slots),
            retiring: Vec::new(),
            logger,
            live_services: HashMap::new(),
            live_backends: BTreeMap::new(),
            live_nodes: BTreeMap::new(),
            pod_ranges,
            live_pod_ranges: BTreeMap::new(),
            no_masquerade,
            live_no_masquerade: BTreeSet::new(),
            config_flags: 0,
            service_names: HashMap::new(),
            service_ids: HashMap::new(),
            live_by_id: HashMap::new(),
            live_backend_ids: HashMap::new(),
            backend_id_floor: 1,
            service_id_floor: 0,
            desired: delta::Desired::default(),
            node_list: Vec::new(),
            synced: false,
        };
        datapath.read_back()?;
        datapath.forget_vanished_pod_interfaces()?;
        datapath.write_config()?;
        Ok(datapath)
    }

    pub fn options(&self) -> &DatapathOptions {
        &self.options
    }

    /// Rebuilds the bookkeeping from what the pinned maps hold (empty on a first start).
    fn read_back(&mut self) -> Result<(), DatapathError> {
        let mut tables = HashSet::new();
        for entry in self.services.iter() {
            let (key, value) = entry.map_err(map_error(map_names::SERVICES))?;
            if value.table_size > 0 && tables.insert((value.table_offset, value.table_size)) {
                // A table the pool cannot place is rewritten by the next apply.
                let _ = self.pool.reserve(value.table_offset, value.table_size);
            }
            self.live_services.insert(key, value);
        }
        // Only slots some service's backend could use are scanned: ids are allocated from
        // the bottom, so the scan stops after a long run of free slots.
        let mut free_run = 0u32;
        for id in 1..=self.options.limits.max_backends {
            let backend = self
                .backends
                .get(&id, 0)
                .map_err(map_error(map_names::BACKENDS))?;
            if backend.state == 0 {
                free_run += 1;
                if free_run > 4096 {
                    break;
                }
                continue;
            }
            free_run = 0;
            self.live_backends.insert(id, backend);
            self.live_backend_ids.insert(backend_key(&backend), id);
        }
        self.live_nodes
            .extend(entries(&self.nodes, map_names::NODES)?);
        self.live_local_backends
            .extend(entries(&self.local_backends, map_names::LOCAL_BACKENDS)?);
        for entry in self.pod_ranges.iter() {
            let (key, range) = entry.map_err(map_error(map_names::POD_RANGES))?;
            let addr = Ipv4Addr::from(u32::from_be(key.data()));
            // Keys are at most 32 bits long.
            let prefix = key.prefix_len().min(32) as u8;
            self.live_pod_ranges.insert((addr, prefix), range);
        }
        for entry in self.no_masquerade.keys() {
            let key = entry.map_err(map_error(map_names::NO_MASQUERADE))?;
            let addr = Ipv4Addr::from(u32::from_be(key.data()));
            self.live_no_masquerade
                .insert((addr, key.prefix_len().min(32) as u8));
        }
        self.config_flags = self
            .config
            .get(&0, 0)
            .map_err(map_error(map_names::CONFIG))?
            .flags;
        Ok(())
    }

    fn write_config(&mut self) -> Result<(), DatapathError> {
        let config = DatapathConfig {
            maglev_pool_slots: self.options.limits.pool_slots() as u32,
            node_id: self.options.node_id,
            node_addr: u32::from(self.options.node_addr).to_be(),
            ready: 1,
            flags: self.config_flags,
            _pad: 0,
            netns_cookie: netns_cookie(),
        };
        let current = self
            .config
            .get(&0, 0)
            .map_err(map_error(map_names::CONFIG))?;
        if current != config {
            self.config
                .set(0, config, 0)
                .map_err(map_error(map_names::CONFIG))?;
        }
        Ok(())
    }

    /// Makes the maps serve exactly `set`: a full re-plan against the maps' mirror, for
    /// the start and for resyncs ([`Self::update`] carries single changes). Validation
    /// errors leave the maps untouched.
    pub fn apply(&mut self, set: &ServiceSet) -> Result<ApplyReport, DatapathError> {
        let started = Instant::now();
        let plan = self.plan(set)?;
        self.set_nodes(&set.nodes)?;
        let mut report = self.write(plan, set)?;
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Makes the nodes map hold exactly `nodes` (north-south traffic is tunnelled to them,
    /// IPIP accepted from them).
    pub fn set_nodes(&mut self, nodes: &[Node]) -> Result<(), DatapathError> {
        check_count("nodes", nodes.len(), self.options.limits.max_nodes)?;
        let wanted: BTreeMap<u32, u32> = nodes
            .iter()
            .map(|node| (u32::from(node.addr).to_be(), node.id))
            .collect();
        for (addr, id) in &wanted {
            if self.live_nodes.get(addr) != Some(id) {
                self.nodes
                    .insert(addr, id, 0)
                    .map_err(map_error(map_names::NODES))?;
                self.live_nodes.insert(*addr, *id);
            }
        }
        let stale: Vec<u32> = self
            .live_nodes
            .keys()
            .filter(|addr| !wanted.contains_key(addr))
            .copied()
            .collect();
        for addr in stale {
            match self.nodes.remove(&addr) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(error) => return Err(map_error(map_names::NODES)(error)),
            }
            self.live_nodes.remove(&addr);
        }
        self.node_list = nodes.to_vec();
        Ok(())
    }

    /// Phase one: every id, entry and table, computed without touching the kernel.
    fn plan(&self, set: &ServiceSet) -> Result<Plan, DatapathError> {
        let limits = self.options.limits;
        check_count("services", set.services.len(), limits.max_services)?;
        check_count("nodes", set.nodes.len(), limits.max_nodes)?;
        // In name order, as per-service changes are planned: both then hand out ids and
        // table slots alike.
        let mut ordered: Vec<&Service> = set.services.iter().collect();
        ordered.sort_by(|a, b| a.name.cmp(&b.name));
        let mut owners: HashMap<ServiceKey, &str> = HashMap::new();
        for (index, service) in ordered.iter().enumerate() {
            if index > 0 && ordered[index - 1].name == service.name {
                return Err(DatapathError::InvalidService {
                    service: service.name.clone(),
                    reason: "the name is used by two services".into(),
                });
            }
            check_service(service)?;
            for frontend in &service.frontends {
                if let Some(first) = owners.insert(service_key(frontend), &service.name)
                    && first != service.name
                {
                    return Err(DatapathError::DuplicateFrontend {
                        frontend: *frontend,
                        first: first.to_owned(),
                        second: service.name.clone(),
                    });
                }
            }
        }
        check_count(
            "frontends",
            owners.len(),
            limits.max_services * Limits::FRONTENDS_PER_SERVICE,
        )?;

        // Backends: one id per address and port, shared by the services that use it.
        let mut merged: BTreeMap<(Ipv4Addr, u16), BackendSpec> = BTreeMap::new();
        for backend in ordered.iter().flat_map(|s| &s.backends) {
            merge_backend(&mut merged, backend)?;
        }
        check_count("backends", merged.len(), limits.max_backends)?;
        let mut backend_ids = HashMap::new();
        let mut used_ids: HashSet<u32> = HashSet::new();
        for key in merged.keys() {
            if let Some(id) = self.live_backend_ids.get(key) {
                backend_ids.insert(*key, *id);
                used_ids.insert(*id);
            }
        }
        // New backends avoid ids still live for a backend being removed, so a tracked
        // flow never silently lands on a different backend that inherited its id.
        let mut cursor = self.backend_id_floor;
        let mut backends = BTreeMap::new();
        for (key, spec) in &merged {
            let id = match backend_ids.get(key) {
                Some(id) => *id,
                None => {
                    let id = lowest_free(
                        1..limits.max_backends + 1,
                        &mut cursor,
                        |id| used_ids.contains(&id),
                        |id| self.live_backends.contains_key(&id),
                    );
                    backend_ids.insert(*key, id);
                    used_ids.insert(id);
                    id
                }
            };
            backends.insert(id, backend_value(spec));
        }

        // Service ids: keep the id a service had (by name, else by a frontend it still
        // has), so its counters and tables carry on.
        let mut service_ids: Vec<Option<u32>> = vec![None; ordered.len()];
        let mut claimed: HashSet<u32> = HashSet::new();
        for (index, service) in ordered.iter().enumerate() {
            if let Some(id) = self.service_ids.get(service.name.as_str())
                && claimed.insert(*id)
            {
                service_ids[index] = Some(*id);
            }
        }
        for (index, service) in ordered.iter().enumerate() {
            if service_ids[index].is_some() {
                continue;
            }
            for frontend in &service.frontends {
                if let Some(value) = self.live_services.get(&service_key(frontend))
                    && !self.service_names.contains_key(&value.id)
                    && claimed.insert(value.id)
                {
                    service_ids[index] = Some(value.id);
                    break;
                }
            }
        }
        let live_tables: HashMap<u32, ServiceValue> = self
            .live_services
            .values()
            .map(|value| (value.id, *value))
            .collect();
        let mut cursor = self.service_id_floor;
        let mut services = Vec::with_capacity(ordered.len());
        for (index, service) in ordered.iter().enumerate() {
            let id = match service_ids[index] {
                Some(id) => id,
                None => {
                    let id = lowest_free(
                        0..limits.max_services,
                        &mut cursor,
                        |id| claimed.contains(&id),
                        |id| live_tables.contains_key(&id),
                    );
                    claimed.insert(id);
                    id
                }
            };
            services.push(self.plan_service(
                service,
                id,
                |key| {
                    merged
                        .get(key)
                        .is_some_and(|m| m.state == BackendState::Active)
                },
                &backend_ids,
                live_tables.get(&id),
            ));
        }
        build_tables(&mut services);
        let (pool, kept) = self.place_tables(&mut services, |id| live_tables.get(&id).copied())?;
        let retiring = live_tables
            .values()
            .filter(|live| live.table_size > 0 && !kept.contains(&live.id))
            .map(|live| (live.table_offset, live.table_size))
            .collect();
        Ok(Plan {
            services,
            pool,
            retiring,
            backends,
            backend_ids,
        })
    }

    /// One service's entries under id `id`: its table is built from the backends
    /// `active` says receive new flows (the merged state of every service's view).
    fn plan_service(
        &self,
        service: &Service,
        id: u32,
        active: impl Fn(&(Ipv4Addr, u16)) -> bool,
        backend_ids: &HashMap<(Ipv4Addr, u16), u32>,
        live: Option<&ServiceValue>,
    ) -> PlannedService {
        let limits = self.options.limits;
        let mut active: Vec<(BackendIdentity, u32)> = service
            .backends
            .iter()
            .filter(|backend| active(&(backend.addr, backend.port)))
            .filter_map(|backend| {
                let identity = BackendIdentity {
                    addr: backend.addr,
                    port: backend.port,
                };
                Some((identity, *backend_ids.get(&(backend.addr, backend.port))?))
            })
            .collect();
        active.sort_unstable();
        active.dedup();
        let identities: Vec<BackendIdentity> = active.iter().map(|(i, _)| *i).collect();
        let size = if identities.is_empty() {
            0
        } else {
            maglev::table_size(identities.len(), limits.maglev_min_table)
        };
        let table_hash = maglev::fingerprint(&identities, size);
        // Building a table is the costly part of a plan: skip it when the live one was
        // built from the same backends (one change among 10,000 services stays cheap).
        let unchanged =
            live.is_some_and(|live| live.table_hash == table_hash && live.table_size == size);
        // Tables are built after planning, on every core.
        let pending_table = (!unchanged).then(|| MaglevInput {
            backend_ids: active.iter().map(|(_, id)| *id).collect(),
            identities: identities.clone(),
            size,
        });
        let mut flags = 0;
        if service.algorithm == Algorithm::Random {
            flags |= SVC_FLAG_RANDOM;
        }
        // East-west flows of a Maglev service cycle through its backends (the
        // programs keep Maglev for north-south); affinity keeps its client hash.
        let round_robin: Vec<u32> = if service.algorithm == Algorithm::Maglev
            && service.affinity_timeout.is_none()
            && !active.is_empty()
            && active.len() <= defaults::ROUND_ROBIN_WIDTH as usize
        {
            flags |= SVC_FLAG_ROUND_ROBIN;
            active.iter().map(|(_, id)| *id).collect()
        } else {
            Vec::new()
        };
        let mut affinity_timeout_secs = 0;
        if let Some(timeout) = service.affinity_timeout {
            flags |= SVC_FLAG_AFFINITY;
            affinity_timeout_secs = u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX).max(1);
        }
        let value = ServiceValue {
            id,
            backend_count: identities.len() as u32,
            table_offset: 0,
            table_size: size,
            flags,
            affinity_timeout_secs,
            table_hash,
            _pad: 0,
        };
        // Each frontend carries its own external flag: a ClusterIP never answers on
        // the external interface even when the service also has a NodePort.
        let mut keys: Vec<(ServiceKey, u32)> = service
            .frontends
            .iter()
            .map(|frontend| {
                let external = if frontend.external {
                    SVC_FLAG_EXTERNAL
                } else {
                    0
                };
                (service_key(frontend), external)
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        PlannedService {
            name: service.name.clone(),
            id,
            keys,
            value,
            table: Vec::new(),
            pending_table,
            write_table: false,
            round_robin,
        }
    }

    /// Tables: keep a live table that is already right, else carve a new one. Slots of
    /// tables retired by the previous write are free again now. Returns the pool after
    /// this plan and the ids whose live table stays.
    fn place_tables(
        &self,
        services: &mut [PlannedService],
        live_table: impl Fn(u32) -> Option<ServiceValue>,
    ) -> Result<(slots::SlotPool, HashSet<u32>), DatapathError> {
        let mut pool = self.pool.clone();
        for (offset, size) in &self.retiring {
            pool.release(*offset, *size);
        }
        let mut kept = HashSet::new();
        for service in services {
            let live = live_table(service.id);
            match live {
                Some(live)
                    if live.table_hash == service.value.table_hash
                        && live.table_size == service.value.table_size =>
                {
                    service.value.table_offset = live.table_offset;
                    kept.insert(service.id);
                }
                _ if service.value.table_size == 0 => {}
                _ => {
                    let size = service.value.table_size;
                    service.write_table = true;
                    service.value.table_offset = match (pool.alloc(size), live) {
                        (Some(offset), _) => offset,
                        // No room for a second copy (many tables rebuilt at once, say when a
                        // node with backends of every service fails): rewrite this one in
                        // place. Each slot then holds the old or the new choice, and both
                        // are valid backends until the stale ones are removed below.
                        (None, Some(live)) if live.table_size == size => {
                            kept.insert(service.id);
                            live.table_offset
                        }
                        (None, _) => {
                            return Err(DatapathError::MaglevPoolFull {
                                service: service.name.clone(),
                                size,
                                capacity: pool.capacity(),
                            });
                        }
                    };
                }
            }
        }
        Ok((pool, kept))
    }

    /// Phase two: write the plan in an order that keeps every service consistent.
    fn write(&mut self, plan: Plan, set: &ServiceSet) -> Result<ApplyReport, DatapathError> {
        let mut report = ApplyReport {
            services: plan.services.len(),
            ..ApplyReport::default()
        };
        // 1. Backends the new tables refer to, and the local ones, where tunnelled
        // north-south flows may be delivered.
        let by_id: HashMap<u32, (Ipv4Addr, u16)> = plan
            .backend_ids
            .iter()
            .map(|(key, id)| (*id, *key))
            .collect();
        let local_backends: HashSet<BackendAddr> = plan
            .backends
            .values()
            .filter(|backend| backend.node_id == self.options.node_id)
            .map(local_address)
            .collect();
        // Gone first: a full table takes no new entry before old ones leave, and an
        // endpoint on its way out has no tunnelled flows to wait for.
        let stale_local: Vec<BackendAddr> = self
            .live_local_backends
            .keys()
            .filter(|addr| !local_backends.contains(addr))
            .copied()
            .collect();
        for addr in stale_local {
            self.remove_local_backend(&addr)?;
        }
        let changed: Vec<(u32, Backend)> = plan
            .backends
            .iter()
            .filter(|(id, backend)| self.live_backends.get(id) != Some(backend))
            .map(|(id, backend)| (*id, *backend))
            .collect();
        self.write_backend_entries(&changed)?;
        report.backends_written += changed.len();
        self.live_backends.extend(changed);
        for (id, backend) in &plan.backends {
            self.live_backend_ids.insert(by_id[id], *id);
            if backend.node_id == self.options.node_id {
                self.write_local_backend(local_address(backend), *id)?;
            }
        }

        // 2 and 3. Rebuilt tables into fresh slots, then the entries that switch to them.
        let mut wanted_keys = HashSet::new();
        for service in &plan.services {
            self.write_service(service, &mut report)?;
            wanted_keys.extend(service.keys.iter().map(|(key, _)| *key));
        }

        // 4. Frontends and backends that are gone.
        let stale_keys: Vec<ServiceKey> = self
            .live_services
            .keys()
            .filter(|key| !wanted_keys.contains(key))
            .copied()
            .collect();
        for key in stale_keys {
            self.remove_frontend(&key, &mut report)?;
        }
        let stale_backends: Vec<u32> = self
            .live_backends
            .keys()
            .filter(|id| !plan.backends.contains_key(id))
            .copied()
            .collect();
        for id in stale_backends {
            self.remove_backend(id, &mut report)?;
        }
        let planned: HashSet<u32> = plan.services.iter().map(|service| service.id).collect();
        self.service_names.retain(|id, _| planned.contains(id));
        self.service_ids.retain(|_, id| planned.contains(id));
        self.live_round_robin.retain(|id, _| planned.contains(id));
        self.live_by_id.retain(|id, _| planned.contains(id));
        self.pool = plan.pool;
        self.retiring = plan.retiring;
        self.desired = delta::Desired::of(set);
        self.synced = true;
        self.backend_id_floor = 1;
        self.service_id_floor = 0;
        self.refresh_floors();
        debug_assert!(
            plan.backend_ids
                .values()
                .all(|id| self.live_backends.contains_key(id))
        );
        Ok(report)
    }

    /// Writes one service's rebuilt table, its round-robin list and its frontend entries,
    /// in that order.
    fn write_service(
        &mut self,
        service: &PlannedService,
        report: &mut ApplyReport,
    ) -> Result<(), DatapathError> {
        if service.write_table {
            self.maglev
                .write(service.value.table_offset as usize, &service.table);
            report.tables_written += 1;
        }
        if service.round_robin.is_empty() {
            self.live_round_robin.remove(&service.id);
        } else if self.live_round_robin.get(&service.id) != Some(&service.round_robin) {
            let list = service.id * defaults::ROUND_ROBIN_WIDTH;
            self.round_robin.write(list as usize, &service.round_robin);
            self.live_round_robin
                .insert(service.id, service.round_robin.clone());
        }
        for (key, external) in &service.keys {
            let value = ServiceValue {
                flags: service.value.flags | external,
                ..service.value
            };
            if self.live_services.get(key) != Some(&value) {
                self.services
                    .insert(key, value, 0)
                    .map_err(map_error(map_names::SERVICES))?;
                self.live_services.insert(*key, value);
                report.frontends_written += 1;
            }
        }
        self.live_by_id.insert(service.id, service.value);
        self.service_names.insert(service.id, service.name.clone());
        self.service_ids.insert(service.name.clone(), service.id);
        Ok(())
    }

    fn remove_frontend(
        &mut self,
        key: &ServiceKey,
        report: &mut ApplyReport,
    ) -> Result<(), DatapathError> {
        match self.services.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(error) => return Err(map_error(map_names::SERVICES)(error)),
        }
        self.live_services.remove(key);
        report.frontends_removed += 1;
        Ok(())
    }

    fn write_backend(
        &mut self,
        key: (Ipv4Addr, u16),
        id: u32,
        backend: Backend,
        report: &mut ApplyReport,
    ) -> Result<(), DatapathError> {
        if self.live_backends.get(&id) != Some(&backend) {
            self.backends
                .set(id, backend, 0)
                .map_err(map_error(map_names::BACKENDS))?;
            self.live_backends.insert(id, backend);
            report.backends_written += 1;
        }
        self.live_backend_ids.insert(key, id);
        Ok(())
    }

    /// Writes backend entries (id, entry) into the backends array: in batches of
    /// `BPF_MAP_UPDATE_BATCH` (a resync writes 100,000), or one by one where the kernel
    /// has no batch update. The mirror is the caller's to update.
    fn write_backend_entries(&mut self, entries: &[(u32, Backend)]) -> Result<(), DatapathError> {
        use aya::maps::IterableMap as _;
        let mut written = 0;
        if entries.len() > 1 {
            let (ids, values): (Vec<u32>, Vec<Backend>) = entries.iter().copied().unzip();
            let fd = self.backends.map().fd().as_fd();
            for (ids, values) in ids
                .chunks(BATCH as usize)
                .zip(values.chunks(BATCH as usize))
            {
                match batch::update(fd, ids, values) {
                    Ok(()) => written += ids.len(),
                    Err((_, error)) if batch::unsupported(&error) => break,
                    Err((_, error)) => {
                        return Err(batch_error(map_names::BACKENDS, "bpf_map_update_batch")(
                            error,
                        ));
                    }
                }
            }
        }
        for (id, backend) in &entries[written..] {
            self.backends
                .set(*id, *backend, 0)
                .map_err(map_error(map_names::BACKENDS))?;
        }
        Ok(())
    }

    fn remove_backend(&mut self, id: u32, report: &mut ApplyReport) -> Result<(), DatapathError> {
        self.backends
            .set(id, Backend::default(), 0)
            .map_err(map_error(map_names::BACKENDS))?;
        if let Some(backend) = self.live_backends.remove(&id) {
            self.live_backend_ids.remove(&backend_key(&backend));
        }
        self.backend_id_floor = self.backend_id_floor.min(id);
        report.backends_removed += 1;
        Ok(())
    }

    fn write_local_backend(&mut self, addr: BackendAddr, id: u32) -> Result<(), DatapathError> {
        if self.live_local_backends.get(&addr) != Some(&id) {
            self.local_backends
                .insert(addr, id, 0)
                .map_err(map_error(map_names::LOCAL_BACKENDS))?;
            self.live_local_backends.insert(addr, id);
        }
        Ok(())
    }

    fn remove_local_backend(&mut self, addr: &BackendAddr) -> Result<(), DatapathError> {
        match self.local_backends.remove(addr) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(error) => return Err(map_error(map_names::LOCAL_BACKENDS)(error)),
        }
        self.live_local_backends.remove(addr);
        Ok(())
    }

    /// Moves the id floors up past the ids in use: every id below a floor is taken, so
    /// a search for a free one starts there.
    fn refresh_floors(&mut self) {
        // One pass over the live ids from the floor on, in order, to the first gap, not a
        // look-up per id: a replaced endpoint frees its backend's id anywhere below a
        // run of up to 100,000 live ones, and a look-up each made one change cost
        // milliseconds.
        for id in self
            .live_backends
            .range(self.backend_id_floor..)
            .map(|(id, _)| *id)
        {
            if id != self.backend_id_floor {
                break;
            }
            self.backend_id_floor += 1;
        }
        while self.live_by_id.contains_key(&self.service_id_floor) {
            self.service_id_floor += 1;
        }
    }

    /// Attaches the east-west programs to a pod's host-side veth: translation of packets
    /// leaving the pod (ingress) and of replies entering it (egress).
    /// The veth is first registered with the pod's address ([`Self::register_pod_interface`]).
    pub fn attach_pod_interface(
        &mut self,
        interface: &str,
        pod_addr: Ipv4Addr,
    ) -> Result<(), DatapathError> {
        self.register_pod_interface(interface, pod_addr)?;
        self.attach_tc(interface, program_names::FROM_POD, TcAttachType::Ingress)?;
        self.attach_tc(interface, program_names::TO_POD, TcAttachType::Egress)
    }

    /// Registers a pod's host-side veth with the pod's address: the programs may deliver
    /// packets straight into it, and drop packets leaving it from any other source
    /// address. [`Self::attach_pod_interface`] does this before attaching the programs,
    /// so a pod's first packet already meets the check.
    pub fn register_pod_interface(
        &mut self,
        interface: &str,
        pod_addr: Ipv4Addr,
    ) -> Result<(), DatapathError> {
        let index = existing_interface_index(interface)?;
        match berth_net::link_peer_netnsid(None, interface)? {
            Some(nsid) => self
                .pod_nsids
                .insert(index, nsid, 0)
                .map_err(map_error(map_names::POD_NSIDS))?,
            None => forget(&mut self.pod_nsids, index, map_names::POD_NSIDS)?,
        }
        self.pod_interfaces
            .insert(index, u32::from(pod_addr).to_be(), 0)
            .map_err(map_error(map_names::POD_INTERFACES))
    }

    /// Detaches the east-west programs from a pod's veth (a vanished interface is fine).
    pub fn detach_pod_interface(&mut self, interface: &str) -> Result<(), DatapathError> {
        for suffix in ["ingress", "egress"] {
            self.unpin_link(&self.link_pin(interface, suffix))?;
        }
        if let Some(index) = interface_index(interface) {
            forget(&mut self.pod_interfaces, index, map_names::POD_INTERFACES)?;
            forget(&mut self.pod_nsids, index, map_names::POD_NSIDS)?;
            self.forget_pod_sockets(|pod| pod.ifindex == index)?;
        }
        self.forget_vanished_pod_interfaces()
    }

    /// Sends the TCP connections a pod's sockets open to service frontends straight to a
    /// backend at `connect()` (the socket program, see [`Self::attach_node_sockets`]),
    /// instead of translating each packet on the pod's veth: registers the pod's network
    /// namespace (the file `netns`, e.g. /run/netns/NAME) with its address and its
    /// host-side veth `interface`, whose removal ([`Self::detach_pod_interface`], or its
    /// disappearance) forgets it again.
    pub fn register_pod_sockets(
        &mut self,
        netns: &Path,
        interface: &str,
        pod_addr: Ipv4Addr,
    ) -> Result<(), DatapathError> {
        let ifindex = existing_interface_index(interface)?;
        let cookie = berth_net::in_netns_at(netns, netns_cookie)?;
        if cookie == 0 {
            return Err(DatapathError::Io {
                path: netns.to_path_buf(),
                source: io::Error::other(
                    "the kernel gives no cookie for this network namespace (SO_NETNS_COOKIE needs Linux 5.14)",
                ),
            });
        }
        // A pod moved to another namespace under the same veth leaves its old entry.
        self.forget_pod_sockets(|pod| pod.ifindex == ifindex)?;
        let pod = PodNetns {
            addr: u32::from(pod_addr).to_be(),
            ifindex,
        };
        self.pod_netns
            .insert(cookie, pod, 0)
            .map_err(map_error(map_names::POD_NETNS))
    }

    /// Removes the pod namespaces `gone` picks from the socket program's map.
    fn forget_pod_sockets(
        &mut self,
        gone: impl Fn(&PodNetns) -> bool,
    ) -> Result<(), DatapathError> {
        let stale: Vec<u64> = self
            .pod_netns
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, pod)| gone(pod))
            .map(|(cookie, _)| cookie)
            .collect();
        for cookie in stale {
            match self.pod_netns.remove(&cookie) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(error) => return Err(map_error(map_names::POD_NETNS)(error)),
            }
        }
        Ok(())
    }

    /// Drops registered pod veths that no longer exist (removed with their pod while the
    /// agent was away, or before it could detach), so a later interface reusing the
    /// index is never mistaken for a pod's veth.
    fn forget_vanished_pod_interfaces(&mut self) -> Result<(), DatapathError> {
        forget_vanished_interfaces(&mut self.pod_interfaces, map_names::POD_INTERFACES)?;
        forget_vanished_interfaces(&mut self.pod_nsids, map_names::POD_NSIDS)?;
        self.forget_pod_sockets(|pod| interface_name(pod.ifindex).is_none())
    }

    /// Writes every entry of `ranges` (pod range address and prefix length → its node)
    /// that is not in the map yet or differs; removes nothing (see
    /// [`Self::retain_pod_ranges`]). Routes towards a range come after its entry, so the
    /// programs know the range by the time its first packet arrives.
    pub fn add_pod_ranges(
        &mut self,
        ranges: &BTreeMap<(Ipv4Addr, u8), PodRange>,
    ) -> Result<usize, DatapathError> {
        let mut written = 0;
        for (&(addr, prefix), range) in ranges {
            if self.live_pod_ranges.get(&(addr, prefix)) == Some(range) {
                continue;
            }
            let key = LpmKey::new(u32::from(prefix), u32::from(addr).to_be());
            self.pod_ranges
                .insert(&key, range, 0)
                .map_err(map_error(map_names::POD_RANGES))?;
            self.live_pod_ranges.insert((addr, prefix), *range);
            written += 1;
        }
        Ok(written)
    }

    /// Removes the pod ranges that are not in `ranges` (after the routes towards them).
    pub fn retain_pod_ranges(
        &mut self,
        ranges: &BTreeMap<(Ipv4Addr, u8), PodRange>,
    ) -> Result<usize, DatapathError> {
        let stale: Vec<(Ipv4Addr, u8)> = self
            .live_pod_ranges
            .keys()
            .filter(|range| !ranges.contains_key(range))
            .copied()
            .collect();
        for (addr, prefix) in &stale {
            let key = LpmKey::new(u32::from(*prefix), u32::from(*addr).to_be());
            match self.pod_ranges.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(error) => return Err(map_error(map_names::POD_RANGES)(error)),
            }
            self.live_pod_ranges.remove(&(*addr, *prefix));
        }
        Ok(stale.len())
    }

    /// Masquerades pods' TCP and UDP traffic leaving the underlay interface (the tunnel's
    /// programs, [`Self::attach_underlay_interface`]) for any address outside every pod
    /// range and the ranges of `except` (address, prefix length), which replace the
    /// previous list. New ranges are written before masquerading starts and stale ones
    /// removed after, so no packet is masqueraded that the list excludes.
    pub fn masquerade(&mut self, except: &[(Ipv4Addr, u8)]) -> Result<(), DatapathError> {
        let wanted: BTreeSet<(Ipv4Addr, u8)> = except
            .iter()
            .map(|&(addr, prefix)| {
                let prefix = prefix.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                (Ipv4Addr::from(u32::from(addr) & mask), prefix)
            })
            .collect();
        if wanted.len() > defaults::MAX_NO_MASQUERADE as usize {
            return Err(DatapathError::TooMany {
                what: "ranges not masqueraded",
                count: wanted.len(),
                limit: defaults::MAX_NO_MASQUERADE,
            });
        }
        let key = |(addr, prefix): (Ipv4Addr, u8)| {
            LpmKey::new(u32::from(prefix), u32::from(addr).to_be())
        };
        for range in &wanted {
            if !self.live_no_masquerade.contains(range) {
                self.no_masquerade
                    .insert(&key(*range), 1, 0)
                    .map_err(map_error(map_names::NO_MASQUERADE))?;
                self.live_no_masquerade.insert(*range);
            }
        }
        self.config_flags |= CONFIG_MASQUERADE;
        self.write_config()?;
        let stale: Vec<(Ipv4Addr, u8)> = self
            .live_no_masquerade
            .difference(&wanted)
            .copied()
            .collect();
        for range in stale {
            match self.no_masquerade.remove(&key(range)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(error) => return Err(map_error(map_names::NO_MASQUERADE)(error)),
            }
            self.live_no_masquerade.remove(&range);
        }
        Ok(())
    }

    /// The pod ranges map as the programs see it.
    pub fn pod_ranges(&self) -> &BTreeMap<(Ipv4Addr, u8), PodRange> {
        &self.live_pod_ranges
    }

    /// Attaches the tunnel's programs to the node's underlay interface (the one holding
    /// its address): IPIP around packets leaving for tunnelled pod ranges (egress), and
    /// off packets from other nodes for this node's pods (ingress).
    pub fn attach_underlay_interface(&mut self, interface: &str) -> Result<(), DatapathError> {
        self.attach_tc(interface, program_names::TUNNEL_ENCAP, TcAttachType::Egress)?;
        self.attach_tc(
            interface,
            program_names::TUNNEL_DECAP,
            TcAttachType::Ingress,
        )
    }

    /// Detaches the tunnel's programs (native routing only; a missing link is fine).
    pub fn detach_underlay_interface(&mut self, interface: &str) -> Result<(), DatapathError> {
        for suffix in ["ingress", "egress"] {
            self.unpin_link(&self.link_pin(interface, suffix))?;
        }
        Ok(())
    }

    /// Sends the node's own connections to service frontends (sockets of the agent's
    /// network namespace), and the TCP connections of the pods registered with
    /// [`Self::register_pod_sockets`], straight to a backend: the connect4 program,
    /// attached to the cgroup v2 directory `cgroup` (the hierarchy's root covers every
    /// process; the program leaves other namespaces' sockets alone). Attached next to
    /// other programs there; a restarted agent's replaces its predecessor's.
    pub fn attach_node_sockets(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        let pin = self.link_pin("cgroup", "connect4");
        let program = program_names::CONNECT4;
        let directory = fs::File::open(cgroup).map_err(io_error(cgroup))?;
        let prog: &mut CgroupSockAddr = self
            .ebpf
            .program_mut(program)
            .ok_or(DatapathError::Missing(program))?
            .try_into()
            .map_err(program_error(program))?;
        // Through bpf_link (Linux 5.7 on) a cgroup program always sits next to the
        // others attached there; the kernel refuses any mode flag with a link.
        let link_id = prog
            .attach(&directory, CgroupAttachMode::Single)
            .map_err(program_error(program))?;
        let link = prog.take_link(link_id).map_err(program_error(program))?;
        // Replacing the pin drops the previous agent's link: its program detaches.
        self.pin_link(link, &pin)
    }

    /// Detaches the connect4 program (a missing link is fine).
    pub fn detach_node_sockets(&mut self) -> Result<(), DatapathError> {
        self.unpin_link(&self.link_pin("cgroup", "connect4"))
    }

    /// Attaches the north-south program to the node's external interface.
    pub fn attach_external_interface(
        &mut self,
        interface: &str,
        mode: XdpMode,
    ) -> Result<(), DatapathError> {
        let pin = self.link_pin(interface, "xdp");
        let program = program_names::EXTERNAL;
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(program)
            .ok_or(DatapathError::Missing(program))?
            .try_into()
            .map_err(program_error(program))?;
        let replaced = PinnedLink::from_pin(&pin)
            .ok()
            .and_then(|pinned| XdpLink::try_from(FdLink::from(pinned)).ok())
            .and_then(|link| prog.attach_to_link(link).ok());
        let link_id = match replaced {
            Some(link_id) => link_id,
            None => {
                let flags = match mode {
                    XdpMode::Native => aya::programs::XdpMode::Driver,
                    XdpMode::Generic => aya::programs::XdpMode::Skb,
                };
                prog.attach(interface, flags)
                    .map_err(program_error(program))?
            }
        };
        let link = prog.take_link(link_id).map_err(program_error(program))?;
        self.pin_link(link, &pin)
    }

    pub fn detach_external_interface(&mut self, interface: &str) -> Result<(), DatapathError> {
        self.unpin_link(&self.link_pin(interface, "xdp"))
    }

    /// bpffs refuses names with dots, so a VLAN interface `eth0.100` pins as `eth0_100`.
    fn link_pin(&self, interface: &str, suffix: &str) -> PathBuf {
        self.options
            .pin_dir
            .join("links")
            .join(format!("{}-{suffix}", interface.replace('.', "_")))
    }

    /// Attaches through TCX and pins the link; when a pinned link exists (the agent
    /// restarted) the program behind it is replaced atomically instead.
    fn attach_tc(
        &mut self,
        interface: &str,
        program: &'static str,
        attach_type: TcAttachType,
    ) -> Result<(), DatapathError> {
        let suffix = match attach_type {
            TcAttachType::Ingress => "ingress",
            _ => "egress",
        };
        let pin = self.link_pin(interface, suffix);
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .ok_or(DatapathError::Missing(program))?
            .try_into()
            .map_err(program_error(program))?;
        let replaced = PinnedLink::from_pin(&pin)
            .ok()
            .and_then(|pinned| SchedClassifierLink::try_from(FdLink::from(pinned)).ok())
            .and_then(|link| prog.attach_to_link(link).ok());
        let link_id = match replaced {
            Some(link_id) => link_id,
            // No pinned link, or one whose interface is gone (a pod's veth recreated under
            // the same name): attach afresh; pinning below replaces the stale pin.
            None => prog
                .attach(interface, attach_type)
                .map_err(program_error(program))?,
        };
        let link = prog.take_link(link_id).map_err(program_error(program))?;
        self.pin_link(link, &pin)
    }

    /// Pins a link taken from its program, replacing a stale pin of the same name.
    fn pin_link<L>(&self, link: L, pin: &Path) -> Result<(), DatapathError>
    where
        FdLink: TryFrom<L, Error = LinkError>,
    {
        let link = FdLink::try_from(link).map_err(|source| DatapathError::Link {
            path: pin.to_path_buf(),
            source,
        })?;
        self.unpin_link(pin)?;
        link.pin(pin).map(drop).map_err(|error| DatapathError::Io {
            path: pin.to_path_buf(),
            source: io::Error::other(error),
        })
    }

    fn unpin_link(&self, pin: &Path) -> Result<(), DatapathError> {
        match fs::remove_file(pin) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error(pin)(error)),
        }
    }

    /// Forwards the programs' aya-log records to the agent's log. Call when the log
    /// file descriptor is readable (see [`Datapath::log_fd`]), or periodically.
    pub fn flush_logs(&mut self) {
        if let Some(logger) = self.logger.as_mut() {
            logger.flush();
        }
    }

    /// The descriptor to poll for program log records, if logs are forwarded.
    pub fn log_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.logger.as_ref().map(|logger| logger.as_fd())
    }

    /// Packets by reason, summed over CPUs.
    pub fn reasons(&self) -> Result<Vec<(Reason, u64)>, DatapathError> {
        Reason::ALL
            .iter()
            .map(|reason| {
                let per_cpu = self
                    .reasons
                    .get(&(*reason as u32), 0)
                    .map_err(map_error(map_names::REASONS))?;
                Ok((*reason, per_cpu.iter().sum()))
            })
            .collect()
    }

    fn traffic(map: &PerCpuArray<MapData, Traffic>, index: u32) -> Result<Traffic, MapError> {
        let per_cpu = map.get(&index, 0)?;
        Ok(per_cpu.iter().fold(Traffic::default(), |sum, cpu| Traffic {
            packets: sum.packets + cpu.packets,
            bytes: sum.bytes + cpu.bytes,
            new_connections: sum.new_connections + cpu.new_connections,
        }))
    }

    /// Traffic per service (by name), summed over CPUs: the stats of every id up to the
    /// highest in use read in batches.
    pub fn service_traffic(&self) -> Result<Vec<TrafficReport<String>>, DatapathError> {
        let Some(last) = self.service_names.keys().max() else {
            return Ok(Vec::new());
        };
        let traffic = read_traffic(&self.service_stats, map_names::SERVICE_STATS, 0, last + 1)?;
        let mut ids: Vec<(&u32, &String)> = self.service_names.iter().collect();
        ids.sort();
        Ok(ids
            .into_iter()
            .filter_map(|(id, name)| {
                Some(TrafficReport {
                    key: name.clone(),
                    traffic: *traffic.get(*id as usize)?,
                })
            })
            .collect())
    }

    /// A reader of the backends' counters of its own (see [`TrafficReader`]).
    pub fn traffic_reader(&self) -> Result<TrafficReader, DatapathError> {
        let path = |name: &'static str| self.options.pin_dir.join(name);
        let backends = MapData::from_pin(path(map_names::BACKENDS))
            .and_then(|data| Array::try_from(Map::Array(data)))
            .map_err(map_error(map_names::BACKENDS))?;
        let stats = MapData::from_pin(path(map_names::BACKEND_STATS))
            .and_then(|data| PerCpuArray::try_from(Map::PerCpuArray(data)))
            .map_err(map_error(map_names::BACKEND_STATS))?;
        Ok(TrafficReader {
            backends,
            stats,
            max_backends: self.options.limits.max_backends,
        })
    }

    /// The services as last written (by [`Self::apply`] or [`Self::update`]), by name.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.desired.services()
    }

    /// Service frontends (address, port, protocol) in the services map.
    pub fn frontend_count(&self) -> usize {
        self.live_services.len()
    }

    /// Slots of the Maglev pool in use, and its capacity.
    pub fn maglev_pool_usage(&self) -> (u64, u64) {
        (self.pool.used(), self.pool.capacity())
    }

    /// Connections currently tracked (forward entries in the conntrack tables, half-open
    /// ones included).
    pub fn tracked_connections(&self) -> Result<usize, DatapathError> {
        let mut count = 0;
        for (table, name) in [
            (&self.conntrack, map_names::CONNTRACK),
            (&self.half_open, map_names::HALF_OPEN),
        ] {
            for key in table.keys() {
                if key.map_err(map_error(name))?.direction == CT_FORWARD {
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    /// The NetworkPolicy maps, for writing compiled policies (`crate::policy`).
    pub fn policy_maps(&self) -> Result<PolicyMaps, DatapathError> {
        PolicyMaps::open(&self.options.pin_dir)
    }

    /// The per-policy verdict counters, for the metrics.
    pub fn policy_counters(&self) -> Result<PolicyCounters, DatapathError> {
        PolicyCounters::open(&self.options.pin_dir)
    }

    /// The ring buffer the programs report policy drops through; the first call takes it.
    pub fn take_policy_log(&mut self) -> Option<aya::maps::RingBuf<MapData>> {
        let map = self.ebpf.take_map(map_names::POLICY_LOG)?;
        aya::maps::RingBuf::try_from(map).ok()
    }

    /// A handle on the conntrack tables of its own, for collecting expired entries
    /// without holding the datapath (a sweep of a full table takes seconds).
    pub fn conntrack_sweeper(&self) -> Result<ConntrackSweeper, DatapathError> {
        let open = |name: &'static str| {
            MapData::from_pin(self.options.pin_dir.join(name))
                .map_err(map_error(name))
                .and_then(|data| {
                    BpfHashMap::<_, FlowKey, CtEntry>::try_from(Map::LruHashMap(data))
                        .map_err(map_error(name))
                })
        };
        Ok(ConntrackSweeper {
            tables: [
                (map_names::CONNTRACK, open(map_names::CONNTRACK)?),
                (map_names::HALF_OPEN, open(map_names::HALF_OPEN)?),
                (map_names::MASQUERADE, open(map_names::MASQUERADE)?),
            ],
        })
    }

    /// The live Maglev table of the service serving `frontend`, as backend addresses,
    /// read back from the kernel's map (what the programs actually use).
    pub fn live_table(
        &self,
        frontend: &Frontend,
    ) -> Result<Option<Vec<(Ipv4Addr, u16)>>, DatapathError> {
        let Some(value) = self.live_services.get(&service_key(frontend)) else {
            return Ok(None);
        };
        if value.backend_count == 0 {
            return Ok(Some(Vec::new()));
        }
        let ids = self
            .maglev
            .read(value.table_offset as usize, value.table_size as usize);
        let mut table = Vec::with_capacity(ids.len());
        for id in ids {
            let backend = self
                .backends
                .get(&id, 0)
                .map_err(map_error(map_names::BACKENDS))?;
            table.push((
                Ipv4Addr::from(u32::from_be(backend.addr)),
                u16::from_be(backend.port),
            ));
        }
        Ok(Some(table))
    }

    /// What the kernel's service maps hold, read back from them (not from the mirror):
    /// every frontend entry with its table's and round-robin list's contents, every
    /// backend slot in use, the local backends and the nodes. Tests compare two of them.
    pub fn dump(&self) -> Result<MapsDump, DatapathError> {
        let mut dump = MapsDump::default();
        for entry in self.services.iter() {
            let (key, value) = entry.map_err(map_error(map_names::SERVICES))?;
            let table = self
                .maglev
                .read(value.table_offset as usize, value.table_size as usize);
            let round_robin = if value.flags & SVC_FLAG_ROUND_ROBIN != 0 {
                let list = value.id * defaults::ROUND_ROBIN_WIDTH;
                self.round_robin
                    .read(list as usize, value.backend_count as usize)
            } else {
                Vec::new()
            };
            dump.services.insert(key, (value, table, round_robin));
        }
        for id in 1..=self.options.limits.max_backends {
            let backend = self
                .backends
                .get(&id, 0)
                .map_err(map_error(map_names::BACKENDS))?;
            if backend != Backend::default() {
                dump.backends.insert(id, backend);
            }
        }
        dump.local_backends
            .extend(entries(&self.local_backends, map_names::LOCAL_BACKENDS)?);
        dump.nodes.extend(entries(&self.nodes, map_names::NODES)?);
        Ok(dump)
    }

    /// Direct access to the loaded programs (tests run them with BPF_PROG_TEST_RUN).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Removes every pinned map and link under `pin_dir`: detaches the programs and
    /// forgets all state. For teardown; a running agent never calls this.
    pub fn remove_pins(pin_dir: &Path) -> Result<(), DatapathError> {
        match fs::remove_dir_all(pin_dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error(pin_dir)(error)),
        }
    }
}

/// Whether `dir`, or the nearest ancestor that exists, lives on a bpffs mount: pins only
/// survive the agent there.
fn on_bpffs(dir: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let existing = dir.ancestors().find(|path| path.exists());
    let Some(existing) = existing else {
        return false;
    };
    let Ok(path) = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stat` a properly sized buffer that
    // statfs fills on success.
    let rc = unsafe { libc::statfs(path.as_ptr(), stat.as_mut_ptr()) };
    // SAFETY: statfs returned 0, so it initialised `stat`.
    rc == 0 && unsafe { stat.assume_init() }.f_type == BPF_FS_MAGIC
}

/// [`interface_index`] of an interface that must exist.
fn existing_interface_index(name: &str) -> Result<u32, DatapathError> {
    interface_index(name).ok_or_else(|| DatapathError::Io {
        path: PathBuf::from("/sys/class/net").join(name),
        source: io::Error::from(io::ErrorKind::NotFound),
    })
}

fn interface_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

fn interface_name(index: u32) -> Option<String> {
    let mut buffer = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has the IF_NAMESIZE bytes the call may write.
    let name = unsafe { libc::if_indextoname(index, buffer.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buffer.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Reads every backend's traffic counters from handles of its own on the pinned maps,
/// in batches: the heartbeat's figures (100,000 backends at 10,000 Services) never hold
/// the datapath, whose lock every change waits for. A backend written while it reads
/// shows up on the next reading.
pub struct TrafficReader {
    backends: Array<MapData, Backend>,
    stats: PerCpuArray<MapData, Traffic>,
    max_backends: u32,
}

impl TrafficReader {
    /// Traffic per backend in use (address and port), summed over CPUs. As at the
    /// datapath's start, the scan of ids (allocated from the bottom) stops after a long
    /// run of free ones.
    pub fn backend_traffic(&self) -> Result<Vec<TrafficReport<(Ipv4Addr, u16)>>, DatapathError> {
        use aya::maps::IterableMap as _;
        let fd = self.backends.map().fd().as_fd();
        let mut reports = Vec::new();
        let mut backends: Vec<Backend> = Vec::new();
        let mut free_run = 0u32;
        let mut first = 1u32;
        while first <= self.max_backends && free_run <= 4096 {
            let want = (self.max_backends + 1 - first).min(BATCH);
            let read = match batch::lookup_array(fd, first, want, 1, &mut backends) {
                Ok(read) => read,
                Err(error) if batch::unsupported(&error) => {
                    backends.clear();
                    for id in first..first + want {
                        backends.push(
                            self.backends
                                .get(&id, 0)
                                .map_err(map_error(map_names::BACKENDS))?,
                        );
                    }
                    want
                }
                Err(error) => {
                    return Err(batch_error(map_names::BACKENDS, "bpf_map_lookup_batch")(
                        error,
                    ));
                }
            };
            if read == 0 {
                break;
            }
            let in_use = backends.iter().any(|backend| backend.state != 0);
            let traffic = if in_use {
                read_traffic(&self.stats, map_names::BACKEND_STATS, first, read)?
            } else {
                Vec::new()
            };
            for (backend, traffic) in backends
                .iter()
                .zip(traffic.iter().chain(std::iter::repeat(&Traffic::default())))
            {
                if backend.state == 0 {
                    free_run += 1;
                    continue;
                }
                free_run = 0;
                reports.push(TrafficReport {
                    key: backend_key(backend),
                    traffic: *traffic,
                });
            }
            first += read;
        }
        Ok(reports)
    }
}

/// Collects the conntrack entries past their lifetime (see
/// `berth_ebpf_common::ct_timeout_secs`). The programs already treat them as absent;
/// collecting frees their room for new connections before the LRU has to evict.
pub struct ConntrackSweeper {
    tables: [(&'static str, BpfHashMap<MapData, FlowKey, CtEntry>); 3],
}

impl ConntrackSweeper {
    /// Removes every entry expired at `now_secs` (CLOCK_MONOTONIC seconds, the
    /// programs' clock: [`monotonic_secs`]) and returns how many it removed.
    pub fn sweep(&mut self, now_secs: u32) -> Result<u64, DatapathError> {
        let mut collected = 0;
        for (name, table) in &mut self.tables {
            let name: &'static str = name;
            // Keys first: deleting while walking would restart the walk at each deletion.
            let mut expired = Vec::new();
            for entry in table.iter() {
                match entry {
                    Ok((key, value)) => {
                        if ct_expired(value.state, value.last_seen_secs, now_secs) {
                            expired.push(key);
                        }
                    }
                    // Removed by the LRU between the walk's steps.
                    Err(MapError::KeyNotFound) => {}
                    Err(error) => return Err(map_error(name)(error)),
                }
            }
            for key in expired {
                // A packet may have replaced the entry since the walk (the programs treat
                // an expired entry as absent and record the flow afresh): checked again
                // just before the removal, which leaves a window of microseconds instead
                // of the walk's seconds.
                match table.get(&key, 0) {
                    Ok(value) if ct_expired(value.state, value.last_seen_secs, now_secs) => {}
                    Ok(_) | Err(MapError::KeyNotFound) => continue,
                    Err(error) => return Err(map_error(name)(error)),
                }
                match table.remove(&key) {
                    Ok(()) => collected += 1,
                    Err(MapError::KeyNotFound) => {}
                    Err(error) => return Err(map_error(name)(error)),
                }
            }
        }
        Ok(collected)
    }
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, Linux 5.14),
/// or 0 where the kernel has none to give.
fn netns_cookie() -> u64 {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain socket call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return 0;
    }
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` describe a buffer of the size the option writes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    if rc == 0 { cookie } else { 0 }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on a unified system,
/// `/sys/fs/cgroup/unified` on a hybrid one), from /proc/self/mountinfo.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        (fs.split_whitespace().next() == Some("cgroup2"))
            .then(|| mount.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// CLOCK_MONOTONIC in whole seconds: the clock of the conntrack entries' last-seen times
/// (the programs read it with `bpf_ktime_get_coarse_ns`).
pub fn monotonic_secs() -> u32 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write into; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u32
}

pub fn service_key(frontend: &Frontend) -> ServiceKey {
    ServiceKey {
        addr: u32::from(frontend.addr).to_be(),
        port: frontend.port.to_be(),
        proto: frontend.protocol.number(),
        _pad: 0,
    }
}
