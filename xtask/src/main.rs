//! `cargo xtask <task>`: the project's build, setup and test entry points.

mod bench;
mod cycles;
mod e2e;
mod images;
mod setup;
mod test;
mod up;
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
    /// The end-to-end scenarios on a three-node cluster on this machine (as root).
    E2e(e2e::Args),
    /// Benchmark the datapath against direct, iptables and HAProxy; writes docs/BENCHMARKS.md.
    Bench(bench::Args),
    /// List import cycles between the modules of every workspace crate (fails if any).
    Cycles(cycles::Args),
    /// Bring up a one-node cluster on this machine with a demo service (as root).
    Up(up::UpArgs),
    /// Stop what `up` started and remove its namespaces, containers and BPF pins.
    Down(up::DownArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup(args) => setup::run(&args).map(drop),
        Task::Images(args) => images::run(&args),
        Task::Test(args) => test::run(&args),
        Task::E2e(args) => e2e::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::Cycles(args) => cycles::run(&args),
        Task::Up(args) => up::up(&args),
        Task::Down(args) => up::down(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
