//! The test control plane and hollow nodes are berth-sim's; berthctl runs in-process.

#![allow(dead_code, unused_imports)]

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
};

pub use berth_sim::server::*;
use clap::Parser as _;

/// Runs berthctl's command line in-process: (exit code 0, stdout, stderr). Errors are
/// rendered onto stderr as the binary renders them.
pub async fn berthctl(admin: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let admin = admin.to_str().expect("utf-8 path");
    let cli =
        berth_ctl::Cli::try_parse_from(["berthctl", "--kubeconfig", admin].iter().chain(args))
            .expect("valid berthctl arguments");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let result = berth_ctl::run(cli, &mut out, &mut err).await;
    if let Err(error) = &result {
        writeln!(err, "{}", error.render()).expect("write to a Vec");
    }
    (
        result.is_ok(),
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// The machine's kubectl with `admin` as its kubeconfig and `cache` as its discovery
/// cache (one per server, so no answer of another server is reused): (exit 0, stdout,
/// stderr), or None when no kubectl binary is installed.
pub async fn kubectl_as(
    admin: &Path,
    cache: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Option<(bool, String, String)> {
    let output = tokio::process::Command::new("kubectl")
        .envs(envs.iter().copied())
        .arg("--kubeconfig")
        .arg(admin)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .output()
        .await;
    match output {
        Ok(output) => Some((
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("running kubectl: {e}"),
    }
}

/// A LimitRange for the default namespace: containers get 200m CPU and 128Mi limits and
/// a 100m CPU request by default, and at most 256Mi.
pub const LIMIT_RANGE: &str = "apiVersion: v1
kind: LimitRange
metadata: {name: bounds}
spec:
  limits:
    - type: Container
      default: {cpu: 200m, memory: 128Mi}
      defaultRequest: {cpu: 100m}
      max: {memory: 256Mi}
";

/// The real `berth-control` binary on `data_dir`; killed on drop, so a failing assertion
/// never leaves a server behind.
pub struct ServerProcess {
    child: Child,
    pub url: String,
    /// The agents' gRPC API, `https://127.0.0.1:PORT`.
    pub agent_url: String,
}

impl ServerProcess {
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    /// With `extra` flags after the test's own.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth-control"))
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--agent-listen",
                "127.0.0.1:0",
                // Its start line names the agents' address.
                "--log",
                "warn,berth_control::server=info",
            ])
            .args(extra)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn berth-control");
        // Read on (and passed on) for as long as the server runs, so it never blocks on
        // a full pipe.
        let stderr = child.stderr.take().expect("stderr");
        let (agent_url_tx, agent_url_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                if let Some((_, rest)) = line.split_once("agent_url=") {
                    let url = rest.split_whitespace().next().unwrap_or_default();
                    let _ = agent_url_tx.send(url.to_owned());
                }
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the address line");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        let agent_url = agent_url_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the agents' address in the start line");
        Self {
            child,
            url,
            agent_url,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts each `(name, resourceVersion)` is under `collection` with that resourceVersion
/// (a write acknowledged `when` is still there).
pub async fn assert_acknowledged(
    client: &berth_ctl::client::Client,
    collection: &str,
    acknowledged: &[(String, u64)],
    when: &str,
) {
    for (name, resource_version) in acknowledged {
        let (status, object) = client
            .json(
                axum::http::Method::GET,
                &format!("{collection}/{name}"),
                None,
            )
            .await
            .expect("get");
        assert_eq!(status.as_u16(), 200, "{name} lost {when}: {object}");
        assert_eq!(rv(&object), *resource_version, "{name} {when}");
    }
}
