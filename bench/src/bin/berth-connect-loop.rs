//! berth-connect-loop: the benchmark's own new-connection client
//! ([`berth_bench::connect_loop`]); berth-bench starts it in the client pod's namespace and
//! reads the JSON it prints.

use std::{net::SocketAddrV4, time::Duration};

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "berth-connect-loop",
    about = "Closed-loop HTTP client: a new connection per request, each to the next target"
)]
struct Args {
    /// Client threads, one connection each at a time.
    #[arg(long)]
    threads: u32,
    /// How long to send, in milliseconds.
    #[arg(long)]
    duration_ms: u64,
    /// Where to connect (address:port); repeat to spread the connections.
    #[arg(long = "target", required = true)]
    targets: Vec<SocketAddrV4>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let result = berth_bench::connect_loop::run_here(
        &args.targets,
        args.threads,
        Duration::from_millis(args.duration_ms),
    )?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
