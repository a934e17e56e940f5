//! `cargo xtask <task>`: the project's build, setup and test entry points.

mod bench;
mod images;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Berth project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install and start what Berth needs on this machine (idempotent).
    Setup(setup::Args),
    /// Build the workload images the tests and the demo use (no registry needed).
    Images(images::Args),
    /// Run every test, including the privileged ones (BPF, netns, Docker).
    Test(test::Args),
    /// Benchmark the datapath against direct, iptables and HAProxy; writes docs/BENCHMARKS.md.
    Bench(bench::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup(args) => setup::run(&args).map(drop),
        Task::Images(args) => images::run(&args),
        Task::Test(args) => test::run(&args),
        Task::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
