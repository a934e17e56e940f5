//! The test control plane and hollow nodes are berth-sim's; berthctl runs in-process.

#![allow(dead_code, unused_imports)]

use std::io::Write as _;

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
