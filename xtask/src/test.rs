//! `cargo xtask test`: the README's test command. Makes sure the machine is set up and the
//! workload images exist, then runs every test of the workspace — the privileged ones
//! (BPF, network namespaces, Docker) included — and ends with one summary line.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{
    images, setup,
    util::{is_root, workspace_root},
};

#[derive(clap::Args)]
pub struct Args {
    /// Arguments passed on to `cargo test` after `--` (for example a test name filter).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    test_args: Vec<String>,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
    suites: u64,
}

impl Tally {
    /// Adds one libtest line `test result: ok. 3 passed; 0 failed; 1 ignored; ...`.
    fn add_result_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        self.suites += 1;
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    prepare()?;
    let mut command = Command::new(env!("CARGO"));
    command.args([
        "test",
        "--workspace",
        "--exclude",
        "berth-ebpf",
        "--no-fail-fast",
        "--",
    ]);
    command.args(&args.test_args);
    println!("==> cargo test --workspace");
    run_tallied(command)
}

/// What every privileged test run needs first: root, the machine set up, the images built.
pub fn prepare() -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the test suite includes privileged tests (BPF, network namespaces, Docker): run it as root"
        );
    }
    println!("==> checking the machine (cargo xtask setup)");
    setup::run(&setup::Args::default())?;
    println!("==> building workload images (cargo xtask images)");
    images::run(&images::Args::default())?;
    Ok(())
}

/// Runs a `cargo test` command in the workspace, echoing its output, and ends with one
/// summary line; fails when any test failed.
pub fn run_tallied(mut command: Command) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut child = command
        .current_dir(workspace_root())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test has no stdout")?;
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        tally.add_result_line(&line);
        if let Some(name) = line.strip_prefix("test ")
            && let Some(name) = name.strip_suffix(" ... FAILED")
        {
            failures.push(name.to_owned());
        }
    }
    let status = child.wait()?;
    let elapsed = started.elapsed().as_secs_f64();
    for name in &failures {
        println!("FAILED: {name}");
    }
    println!(
        "SUMMARY: {} passed, {} failed, {} ignored in {} test binaries ({elapsed:.0} s)",
        tally.passed, tally.failed, tally.ignored, tally.suites
    );
    if !status.success() || tally.failed > 0 {
        bail!("tests failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_libtest_result_lines() {
        let mut tally = Tally::default();
        tally.add_result_line(
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
        );
        tally.add_result_line(
            "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        tally.add_result_line("running 3 tests");
        assert_eq!(
            tally,
            Tally {
                passed: 4,
                failed: 2,
                ignored: 1,
                suites: 2
            }
        );
    }
}
