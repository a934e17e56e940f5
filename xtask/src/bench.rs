//! `cargo xtask bench`: the benchmark of issue 8 — Berth's eBPF datapath against the
//! limit (direct to pod IPs), kube-proxy-shaped iptables and HAProxy, programming time
//! against iptables-restore, failover on the end-to-end cluster against Kubernetes'
//! probe defaults, the control plane with simulated nodes, and real agents while 10,000
//! Services arrive and change — run in one go on this machine. Writes docs/BENCHMARKS.md,
//! docs/bench/*.svg and docs/bench/results.json. `--smoke` is the short version (written to
//! a temporary directory unless `--out` is given); `cargo xtask bench -- --parts failover`
//! reruns one part and keeps the others' figures.

use std::process::Command;

use anyhow::bail;

use crate::{
    test::prepare,
    util::{CLUSTER_PACKAGES, is_root, run_command, workspace_root},
};

#[derive(clap::Args)]
pub struct Args {
    /// A seconds-long run that only shows the benchmark works.
    #[arg(long)]
    smoke: bool,
    /// Arguments passed on to berth-bench (see `berth-bench --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    bench_args: Vec<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark loads BPF programs and creates network namespaces: run it as root");
    }
    // The machine, and the workload images the failover part's cluster runs.
    prepare()?;
    let root = workspace_root();
    // The failover and agents parts run the control plane and the agents: release builds,
    // as users would, found next to berth-bench.
    println!(
        "==> cargo build --release -p berth-bench -p berth-control -p berth-agent -p berth-ctl"
    );
    run_command(
        Command::new(env!("CARGO"))
            .current_dir(&root)
            .args(["build", "--release", "-p", "berth-bench"])
            .args(CLUSTER_PACKAGES),
    )?;
    let mut command = Command::new(root.join("target/release/berth-bench"));
    command.current_dir(&root);
    if args.smoke {
        command.arg("--smoke");
        command.args(["--command", "cargo xtask bench --smoke"]);
    } else if !args.bench_args.iter().any(|arg| arg == "--out") {
        command.arg("--out").arg(root.join("docs"));
    }
    command.args(&args.bench_args);
    println!(
        "==> berth-bench {}",
        if args.smoke { "--smoke" } else { "" }
    );
    run_command(&mut command)
}
