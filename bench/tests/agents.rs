//! The agents part of `cargo xtask bench` alone at its smoke size: two real agents in node
//! namespaces, 200 Services arriving in manifests of 100, 20 changes. Needs root, BPF and
//! Docker (`cargo xtask setup`) and the debug binaries of berth-agent, berth-control and
//! berthctl (`cargo build -p berth-agent -p berth-control -p berth-ctl`).

use std::process::Command;

#[test]
fn agents_part_programs_every_service_on_every_agent_and_sees_every_change() {
    berth_testkit::require_root();
    let out = tempfile::tempdir().expect("temporary directory");
    let status = Command::new(env!("CARGO_BIN_EXE_berth-bench"))
        .args(["--smoke", "--parts", "agents", "--out"])
        .arg(out.path())
        .status()
        .expect("starting berth-bench");
    assert!(
        status.success(),
        "berth-bench --parts agents failed: {status}"
    );
    let report =
        std::fs::read_to_string(out.path().join("BENCHMARKS.md")).expect("BENCHMARKS.md written");
    for line in [
        "## Real agents while Services arrive and change",
        "| every agent has all 200 Services programmed within 60 s of the last apply |",
        "| one endpoints change: p99 ≤ 100 ms to the last of the 2 agents |",
        "**BPF maps beside Cilium's**",
    ] {
        assert!(report.contains(line), "{line:?} missing from:\n{report}");
    }
    let results = std::fs::read_to_string(out.path().join("bench/results.json")).expect("results");
    let results: berth_bench::run::Results = serde_json::from_str(&results).expect("parses");
    let agents = results.agents.expect("the agents part's figures");
    assert_eq!(agents.agents.len(), 2);
    assert_eq!(agents.changes.len(), 20);
    for agent in &agents.agents {
        assert!(
            agent.programmed_secs.is_some(),
            "{} programmed every Service",
            agent.node
        );
        assert!(
            agent.rss_anon_bytes > 0 && agent.bpf_service_bytes > 0,
            "{}'s memory was read: {agent:?}",
            agent.node
        );
        assert!(
            agent.bpf_bytes > agent.bpf_service_bytes,
            "the Services' maps are a part of all its maps: {agent:?}"
        );
        assert!(
            agent.own_buckets.last().map_or(0, |(_, count)| *count) >= 20,
            "{}'s own share of every change was read from its /metrics: {:?}",
            agent.node,
            agent.own_buckets
        );
    }
    assert_eq!(agents.missed(), 0, "every agent wrote every change");
}
