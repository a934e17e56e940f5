//! The whole benchmark: topology, programming, interleaved load rounds, results.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{
    Mode, connect_loop,
    procs::{self, check_interrupted, first_line, now_utc},
    programming,
    topology::Topology,
    wrk::{self, Kind, WrkResult},
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Parameters {
    pub smoke: bool,
    /// Service counts installed in the service modes.
    pub services: Vec<usize>,
    /// Endpoints of each service other than the measured one.
    pub dummy_backends: usize,
    pub duration_secs: u64,
    pub rounds: u32,
    pub threads: u32,
    pub connections: u32,
    pub programming_reps: u32,
    /// Nice level of the benchmark's processes.
    #[serde(default)]
    pub nice: i32,
    /// Scheduler slice they request (µs; 0 = the kernel's default).
    #[serde(default)]
    pub slice_us: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub round: u32,
    pub kind: Kind,
    pub mode: Mode,
    pub services: usize,
    pub wrk: WrkResult,
    /// CPU time of client, backends, proxy and ksoftirqd, per request.
    pub cpu_us_per_request: f64,
    /// CPUs' worth of time the rest of the machine used meanwhile (noise indicator).
    pub background_cores: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
    pub tools: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub parameters: Parameters,
    pub machine: Machine,
    pub started: String,
    pub elapsed_secs: f64,
    pub programming: Vec<programming::Record>,
    pub runs: Vec<RunRecord>,
    /// The failover part (absent in results of runs before it existed, or without it).
    #[serde(default)]
    pub failover: Option<crate::failover::FailoverResults>,
    /// The control plane at scale (absent without that part).
    #[serde(default)]
    pub scale: Option<crate::scale::ScaleResults>,
    /// The control plane on etcd against embedded (absent without that part).
    #[serde(default)]
    pub store: Option<crate::store::StoreResults>,
    /// Real agents while Services arrive and change (absent without that part).
    #[serde(default)]
    pub agents: Option<crate::agents::AgentsResults>,
}

/// Nodes of the topology: direct first, then per service count eBPF, iptables, HAProxy;
/// at the smallest count also Berth with per-packet translation only and Berth with
/// NetworkPolicies, each beside Berth at that count.
pub fn layout(services: &[usize]) -> Vec<(Mode, usize)> {
    let mut layout = vec![(Mode::Direct, 0), (Mode::DirectEbpfAttached, 0)];
    let smallest = services.iter().copied().min();
    for count in services {
        for mode in [Mode::Ebpf, Mode::Iptables, Mode::Haproxy] {
            layout.push((mode, *count));
        }
        if Some(*count) == smallest {
            layout.push((Mode::EbpfPerPacket, *count));
            layout.push((Mode::EbpfPolicies, *count));
        }
    }
    layout
}

/// The loads of a round, in order.
const KINDS: [Kind; 3] = [
    Kind::KeepAlive,
    Kind::NewConnections,
    Kind::SpreadConnections,
];

/// Whether a round sends `kind` to `mode`: the spread client only where it tells the
/// ClusterIP's cost per new connection from the client's shape.
fn runs_with(kind: Kind, mode: Mode) -> bool {
    kind != Kind::SpreadConnections
        || matches!(mode, Mode::Direct | Mode::DirectEbpfAttached | Mode::Ebpf)
}

/// (bed index, mode) pairs a round visits, in order.
fn targets(topology: &Topology) -> Vec<(usize, Mode)> {
    let mut targets = Vec::new();
    for (index, bed) in topology.beds.iter().enumerate() {
        if bed.mode == Mode::Direct {
            targets.push((index, Mode::Direct));
            targets.push((index, Mode::DirectOne));
        } else {
            // Every other bed, the diagnostic one included, is measured in its own mode.
            targets.push((index, bed.mode));
        }
    }
    targets
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: f64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("PRETTY_NAME="))
        .map(|name| name.trim_matches('"').to_owned())
        .unwrap_or_default();
    Machine {
        cpu_model,
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        memory_gib: memory_kib / 1024.0 / 1024.0,
        kernel: first_line("uname", &["-r"]),
        os,
        tools: vec![
            ("wrk".into(), wrk::version()),
            ("nginx".into(), first_line("nginx", &["-v"])),
            ("HAProxy".into(), first_line("haproxy", &["-v"])),
            (
                "iptables".into(),
                first_line("iptables-legacy-restore", &["--version"]),
            ),
        ],
    }
}

/// Programs the services (timed) and, with `load`, runs the load rounds.
pub fn run(parameters: &Parameters, workdir: PathBuf, load: bool) -> anyhow::Result<Results> {
    let started = Instant::now();
    let started_at = now_utc();
    let say = |text: &str| {
        println!("[{:>6.1} s] {text}", started.elapsed().as_secs_f64());
    };
    let layout = layout(&parameters.services);
    say(&format!(
        "building {} nodes (client pod + 3 nginx backends each)",
        layout.len()
    ));
    let mut topology = Topology::build(&layout, parameters.dummy_backends, &workdir)
        .context("building the topology")?;
    say("programming the services (timed)");
    let mut progress = |text: &str| say(text);
    let programming =
        programming::program_all(&mut topology, parameters.programming_reps, &mut progress)?;

    let targets = if load { targets(&topology) } else { Vec::new() };
    let duration = Duration::from_secs(parameters.duration_secs);
    let load = |topology: &Topology, bed: usize, mode: Mode, kind: Kind, duration: Duration| {
        let bed = topology.bed(bed);
        let targets = bed.targets(mode);
        if kind == Kind::SpreadConnections {
            return connect_loop::run(
                &bed.client_netns,
                &targets,
                parameters.threads,
                duration,
                &topology.cgroup,
            );
        }
        wrk::run(
            &wrk::Load {
                netns: &bed.client_netns,
                targets: &targets,
                threads: parameters.threads,
                connections: parameters.connections,
                duration,
                kind,
                workdir: &topology.workdir,
            },
            &topology.cgroup,
        )
    };
    say("warm-up: every target once, 1 s");
    for (bed, mode) in &targets {
        check_interrupted()?;
        let result = load(
            &topology,
            *bed,
            *mode,
            Kind::KeepAlive,
            Duration::from_secs(1),
        )
        .with_context(|| format!("warm-up of {}", mode.label()))?;
        anyhow::ensure!(
            result.requests > 0,
            "{}: no request went through in the warm-up",
            mode.label()
        );
    }

    let per_round: usize = KINDS
        .iter()
        .map(|kind| {
            targets
                .iter()
                .filter(|(_, mode)| runs_with(*kind, *mode))
                .count()
        })
        .sum();
    let total = per_round * parameters.rounds as usize;
    let mut runs = Vec::new();
    for round in 1..=parameters.rounds {
        for kind in KINDS {
            for (bed, mode) in targets.iter().filter(|(_, mode)| runs_with(kind, *mode)) {
                check_interrupted()?;
                let services = topology.bed(*bed).services;
                let cpu_before = topology.cgroup.usage()? + procs::ksoftirqd_time();
                let (busy_before, _) = procs::machine_cpu();
                let wall = Instant::now();
                let result = load(&topology, *bed, *mode, kind, duration)
                    .with_context(|| format!("{} with {services} services", mode.label()))?;
                let wall = wall.elapsed();
                let ours =
                    (topology.cgroup.usage()? + procs::ksoftirqd_time()).saturating_sub(cpu_before);
                let (busy_after, _) = procs::machine_cpu();
                let background = busy_after.saturating_sub(busy_before).saturating_sub(ours);
                let record = RunRecord {
                    round,
                    kind,
                    mode: *mode,
                    services,
                    cpu_us_per_request: ours.as_secs_f64() * 1e6 / result.requests.max(1) as f64,
                    background_cores: background.as_secs_f64() / wall.as_secs_f64(),
                    wrk: result,
                };
                let what = if mode.has_services() {
                    format!("{}, {services} services", mode.label())
                } else {
                    mode.label().to_owned()
                };
                say(&format!(
                    "[{:>3}/{total}] round {round} {:<15} {what:<36} {:>9.0}/s p50 {:>7.0} us p99 {:>7.0} us {:>5.1} us CPU/req{}",
                    runs.len() + 1,
                    kind.label(),
                    record.wrk.requests_per_sec,
                    record.wrk.p50_us,
                    record.wrk.p99_us,
                    record.cpu_us_per_request,
                    if record.wrk.errors > 0 {
                        format!(" ({} errors)", record.wrk.errors)
                    } else {
                        String::new()
                    }
                ));
                runs.push(record);
            }
        }
    }
    say("done; removing the topology");
    drop(topology);
    Ok(Results {
        parameters: parameters.clone(),
        machine: machine(),
        started: started_at,
        elapsed_secs: started.elapsed().as_secs_f64(),
        programming,
        runs,
        failover: None,
        scale: None,
        store: None,
        agents: None,
    })
}
