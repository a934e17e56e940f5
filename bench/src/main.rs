//! berth-bench: run the datapath benchmark and write the report. Normally started by
//! `cargo xtask bench`, which installs the tools and builds this in release mode.

use std::path::PathBuf;

use anyhow::Context as _;
use berth_bench::{agents, failover, procs, report, run, scale, store};
use clap::Parser;

/// The scale part runs thousands of simulated nodes in this process, each decoding every
/// Node batch and Endpoints change as an agent does: glibc's malloc was a tenth of its
/// CPU while 5,000 nodes joined, on the CPUs the control plane measured also uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "berth-bench",
    about = "Berth's eBPF datapath against direct, iptables (kube-proxy shape) and HAProxy; failover against Kubernetes' probe defaults"
)]
struct Args {
    /// Parts to run, comma separated: datapath (the load rounds; it programs the services
    /// too), programming (programming time only), failover, scale (the control plane with
    /// simulated nodes), store (the scale figures on etcd against embedded), agents (real
    /// agents while Services arrive and change). The figures of parts left out are kept from
    /// <out>/bench/results.json, so one part can be rerun alone.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "datapath,programming,failover,scale,store,agents"
    )]
    parts: Vec<Part>,
    /// Cluster sizes of the scale part, comma separated (default 1000,5000; smoke 20).
    #[arg(long, value_delimiter = ',')]
    scale_nodes: Option<Vec<usize>>,
    /// Pods the scale part schedules (default 50000; smoke 200).
    #[arg(long)]
    scale_pods: Option<usize>,
    /// Simulated nodes of the store part (default 200; smoke 20).
    #[arg(long)]
    store_nodes: Option<usize>,
    /// Pods the store part schedules on each store (default 10000; smoke 200).
    #[arg(long)]
    store_pods: Option<usize>,
    /// Real agents the agents part runs, each in a node namespace of its own (default: as
    /// many as the machine's available memory holds at 1.5 GiB each, at least 10; smoke 2).
    #[arg(long)]
    agents: Option<usize>,
    /// Services the agents part applies, 10 endpoints each (default 10000; smoke 200).
    #[arg(long)]
    agents_services: Option<usize>,
    /// Repetitions of each failover trial (default 5; smoke 1, Berth's defaults only).
    #[arg(long)]
    failover_reps: Option<u32>,
    /// A seconds-long run that shows the benchmark works (CI): few services, 1 s runs.
    #[arg(long)]
    smoke: bool,
    /// Directory for BENCHMARKS.md and bench/*.svg, bench/results.json
    /// (default: docs, or a temporary directory with --smoke).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Service counts to install, comma separated (default 1,1000,10000; smoke 1,100).
    #[arg(long, value_delimiter = ',')]
    services: Option<Vec<usize>>,
    /// Seconds per load run (default 6; smoke 1).
    #[arg(long)]
    duration: Option<u64>,
    /// Interleaved rounds (default 5; smoke 1).
    #[arg(long)]
    rounds: Option<u32>,
    /// Client threads. wrk gives each thread one address, so one connection per thread
    /// keeps the direct client and the VIP clients the same shape (see the report).
    #[arg(long, default_value_t = 30)]
    threads: u32,
    /// Client connections in total (divisible by the thread count keeps them even).
    #[arg(long, default_value_t = 30)]
    connections: u32,
    /// Endpoints of each service other than the measured one.
    #[arg(long, default_value_t = 10)]
    dummy_backends: usize,
    /// Repetitions of each programming measurement (default 3; smoke 1).
    #[arg(long)]
    programming_reps: Option<u32>,
    /// Only rewrite the report (and charts) from a results.json of an earlier run.
    #[arg(long)]
    report_only: Option<PathBuf>,
    /// Nice level of the benchmark's processes (client, servers, proxy): -20 keeps other
    /// work on the machine from skewing the figures; 0 measures without that.
    #[arg(long, default_value_t = -20, allow_negative_numbers = true)]
    nice: i32,
    /// Scheduler slice the benchmark's processes request, in microseconds (EEVDF, Linux
    /// 6.12+): short slices let them preempt other work at wakeup. 0: the kernel's default.
    #[arg(long, default_value_t = 100)]
    slice_us: u64,
    /// How the report says to reproduce it.
    #[arg(long, default_value = "cargo xtask bench")]
    command: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Datapath,
    Programming,
    Failover,
    Scale,
    Store,
    Agents,
}

/// The results of an earlier run in `out`, to keep the figures of the parts not rerun.
fn previous_results(out: &std::path::Path) -> Option<run::Results> {
    let text = std::fs::read_to_string(out.join(report::ASSET_DIR).join("results.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let out = args.out.clone().unwrap_or_else(|| {
        if args.smoke {
            std::env::temp_dir().join("berth-bench-smoke")
        } else {
            PathBuf::from("docs")
        }
    });
    if let Some(path) = &args.report_only {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let results: run::Results = serde_json::from_str(&text)?;
        report::write(&results, &out, &args.command)?;
        println!("wrote {}", out.join("BENCHMARKS.md").display());
        return Ok(());
    }
    let parameters = run::Parameters {
        smoke: args.smoke,
        services: args.services.clone().unwrap_or_else(|| {
            if args.smoke {
                vec![1, 100]
            } else {
                vec![1, 1_000, 10_000]
            }
        }),
        dummy_backends: args.dummy_backends,
        duration_secs: args.duration.unwrap_or(if args.smoke { 1 } else { 6 }),
        rounds: args.rounds.unwrap_or(if args.smoke { 1 } else { 5 }),
        threads: args.threads,
        connections: args.connections,
        programming_reps: args
            .programming_reps
            .unwrap_or(if args.smoke { 1 } else { 3 }),
        nice: args.nice,
        slice_us: args.slice_us,
    };
    anyhow::ensure!(
        parameters.services.iter().all(|n| *n >= 1),
        "service counts start at 1"
    );
    procs::catch_interrupts();
    procs::set_scheduling(
        parameters.nice,
        std::time::Duration::from_micros(parameters.slice_us),
    );
    procs::apply_scheduling_to_self()?;
    let started = std::time::Instant::now();
    let has = |part: Part| args.parts.contains(&part);
    let mut results = previous_results(&out)
        .filter(|_| {
            ![
                Part::Datapath,
                Part::Programming,
                Part::Failover,
                Part::Scale,
                Part::Store,
                Part::Agents,
            ]
            .into_iter()
            .all(has)
        })
        .unwrap_or_else(|| run::Results {
            parameters: parameters.clone(),
            machine: run::machine(),
            started: procs::now_utc(),
            elapsed_secs: 0.0,
            programming: Vec::new(),
            runs: Vec::new(),
            failover: None,
            scale: None,
            store: None,
            agents: None,
        });
    if has(Part::Datapath) || has(Part::Programming) {
        let workdir = std::env::temp_dir().join(format!("berth-bench-{}", std::process::id()));
        let fresh = run::run(&parameters, workdir, has(Part::Datapath))?;
        if has(Part::Datapath) {
            results = run::Results {
                failover: results.failover.take(),
                scale: results.scale.take(),
                store: results.store.take(),
                agents: results.agents.take(),
                ..fresh
            };
        } else {
            results.programming = fresh.programming;
        }
    }
    // A failed part still leaves the other parts' report written.
    let mut failed = None;
    if has(Part::Failover) {
        let say = |text: &str| println!("[{:>6.1} s] {text}", started.elapsed().as_secs_f64());
        match failover::run(&failover::options(args.smoke, args.failover_reps), &say) {
            Ok(figures) => results.failover = Some(figures),
            Err(error) => failed = Some(error.context("the failover part")),
        }
    }
    if has(Part::Scale) {
        let say = |text: &str| println!("[{:>6.1} s] {text}", started.elapsed().as_secs_f64());
        let mut options = scale::options(args.smoke);
        if let Some(nodes) = &args.scale_nodes {
            options.node_counts.clone_from(nodes);
        }
        if let Some(pods) = args.scale_pods {
            options.pods = pods;
        }
        match scale::run(&options, &say) {
            Ok(figures) => results.scale = Some(figures),
            Err(error) if failed.is_some() => eprintln!("the scale part: {error:#}"),
            Err(error) => failed = Some(error.context("the scale part")),
        }
    }
    if has(Part::Store) {
        let say = |text: &str| println!("[{:>6.1} s] {text}", started.elapsed().as_secs_f64());
        let mut options = store::options(args.smoke);
        if let Some(nodes) = args.store_nodes {
            options.nodes = nodes;
        }
        if let Some(pods) = args.store_pods {
            options.scale.pods = pods;
        }
        match store::run(&options, &say) {
            Ok(figures) => results.store = Some(figures),
            Err(error) if failed.is_some() => eprintln!("the store part: {error:#}"),
            Err(error) => failed = Some(error.context("the store part")),
        }
    }
    if has(Part::Agents) {
        let say = |text: &str| println!("[{:>6.1} s] {text}", started.elapsed().as_secs_f64());
        match agents::options(args.smoke, args.agents, args.agents_services)
            .and_then(|options| agents::run(&options, &say))
        {
            Ok(figures) => results.agents = Some(figures),
            Err(error) if failed.is_some() => eprintln!("the agents part: {error:#}"),
            Err(error) => failed = Some(error.context("the agents part")),
        }
    }
    if failed.is_some() {
        // Interrupted: leave the report as it was.
        procs::check_interrupted()?;
    }
    report::write(&results, &out, &args.command)?;
    println!(
        "wrote {} and its charts in {} ({:.0} s)",
        out.join("BENCHMARKS.md").display(),
        out.join(report::ASSET_DIR).display(),
        started.elapsed().as_secs_f64()
    );
    if let Some(error) = failed {
        return Err(error);
    }
    Ok(())
}
