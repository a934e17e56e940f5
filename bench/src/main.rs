//! berth-bench: run the datapath benchmark and write the report. Normally started by
//! `cargo xtask bench`, which installs the tools and builds this in release mode.

use std::path::PathBuf;

use anyhow::Context as _;
use berth_bench::{procs, report, run};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "berth-bench",
    about = "Berth's eBPF datapath against direct, iptables (kube-proxy shape) and HAProxy"
)]
struct Args {
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
    let workdir = std::env::temp_dir().join(format!("berth-bench-{}", std::process::id()));
    let results = run::run(&parameters, workdir)?;
    report::write(&results, &out, &args.command)?;
    println!(
        "wrote {} and its charts in {} ({:.0} s)",
        out.join("BENCHMARKS.md").display(),
        out.join(report::ASSET_DIR).display(),
        results.elapsed_secs
    );
    Ok(())
}
