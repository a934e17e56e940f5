//! What the binaries link, read from `cargo tree`: berthctl is a client only (no store,
//! HTTP server, metrics or gRPC crates) and the agent does not link the test workload.

use std::{collections::BTreeSet, path::Path, process::Command};

/// The names of every crate `package` links (normal dependencies, features as built).
fn linked(package: &str) -> BTreeSet<String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace");
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args([
            "tree", "--edges", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .args(["--package", package])
        .current_dir(workspace)
        .output()
        .expect("running cargo tree");
    assert!(
        output.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn berthctl_links_no_store_server_metrics_or_grpc_crates() {
    let linked = linked("berth-ctl");
    assert!(linked.contains("berth-api"), "{linked:?}");
    for server_side in [
        "redb",
        "axum",
        "prometheus",
        "imbl",
        "tonic",
        "berth-control",
    ] {
        assert!(
            !linked.contains(server_side),
            "berthctl links {server_side}: {linked:?}"
        );
    }
}

#[test]
fn the_agent_does_not_link_the_echo_workload() {
    let linked = linked("berth-agent");
    assert!(linked.contains("berth-api"), "{linked:?}");
    assert!(!linked.contains("berth-echo"), "{linked:?}");
}
