//! `ip` itself, for tests and harnesses that show or change what the code under test does
//! not (`ip route show`, `ip neigh del`). Behind the `testing` feature: the agent never
//! runs it.

use std::process::Command;

use crate::NetError;

/// Runs `ip [-n netns] args...` and returns its standard output.
pub fn ip(netns: Option<&str>, args: &[&str]) -> Result<String, NetError> {
    let mut full: Vec<&str> = Vec::with_capacity(args.len() + 2);
    if let Some(ns) = netns {
        full.extend(["-n", ns]);
    }
    full.extend_from_slice(args);
    let shown = full.join(" ");
    let output = Command::new("ip")
        .args(&full)
        .output()
        .map_err(|source| NetError::Spawn {
            args: shown.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(NetError::Failed {
            args: shown,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}
