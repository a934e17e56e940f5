//! One real berth-agent while Services arrive and change (issue 25); see
//! berth_bench::scale::arrival. Prints the figures as JSON. Needs root, bpffs and the
//! release binaries (`cargo build --release -p berth-agent -p berth-control`).

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Services to create.
    #[arg(long, default_value_t = 2000)]
    services: usize,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Ctrl-C stops the run between steps, and the processes it started go with it.
    berth_bench::procs::catch_interrupts();
    let arrival = berth_bench::scale::arrival::run(args.services, args.endpoints, &|line| {
        eprintln!("{line}")
    })?;
    println!("{}", serde_json::to_string_pretty(&arrival)?);
    Ok(())
}
