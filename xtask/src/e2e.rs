//! `cargo xtask e2e`: the end-to-end scenarios (tests/tests/e2e.rs) on a three-node
//! cluster built on this machine — real control plane, one real agent per node, the real
//! Docker engine — with their report. `cargo xtask test` runs the same test among the
//! others; this task runs it alone, shows its output as it goes and keeps the report.

use std::process::Command;

use anyhow::Context as _;

use crate::{
    test::{prepare, run_tallied},
    util::{CLUSTER_PACKAGES, run_command, workspace_root},
};

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the report (a Markdown table per routing mode: per scenario,
    /// requests sent and failed, detection and recovery times).
    #[arg(long, default_value = "target/e2e-report.md")]
    report: std::path::PathBuf,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    prepare()?;
    println!("==> building the control plane, berthctl and the agent");
    run_command(
        Command::new(env!("CARGO"))
            .current_dir(workspace_root())
            .arg("build")
            .args(CLUSTER_PACKAGES),
    )?;
    let report = workspace_root().join(&args.report);
    if let Some(dir) = report.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Each of the test's clusters (native routing, encapsulation) adds its section.
    match std::fs::remove_file(&report) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("removing {}", report.display())),
    }
    println!("==> cargo test -p berth-tests --test e2e");
    let mut command = Command::new(env!("CARGO"));
    command
        .args([
            "test",
            "-p",
            "berth-tests",
            "--test",
            "e2e",
            "--",
            "--nocapture",
        ])
        .env("BERTH_E2E_REPORT", &report);
    run_tallied(command)?;
    println!("report: {}", report.display());
    Ok(())
}
