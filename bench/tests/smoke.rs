//! CI's version of `cargo xtask bench`: the whole benchmark at a seconds-long scale, so it
//! keeps working. Needs root, BPF, nginx, HAProxy, wrk and iptables (`cargo xtask setup`).

use std::process::Command;

#[test]
fn smoke_run_writes_the_report_and_charts() {
    berth_testkit::require_root();
    let out = tempfile::tempdir().expect("temporary directory");
    let status = Command::new(env!("CARGO_BIN_EXE_berth-bench"))
        .args(["--smoke", "--out"])
        .arg(out.path())
        .status()
        .expect("starting berth-bench");
    assert!(status.success(), "berth-bench --smoke failed: {status}");
    let report =
        std::fs::read_to_string(out.path().join("BENCHMARKS.md")).expect("BENCHMARKS.md written");
    for section in [
        "## Targets",
        "## Request/response over keep-alive connections",
        "## New connections per second",
        "## Programming time",
        "| Berth eBPF | 100 |",
        "| iptables (kube-proxy) | 100 |",
        "| HAProxy | 100 |",
        "## Failover",
        "| readiness fails | Berth's defaults",
        "| container killed | Berth's defaults",
        "## Control plane at scale",
        "| scheduling ≥ 5,000 pods/s",
        "| endpoint propagation p99 under 100 ms",
        "## Real agents while Services arrive and change",
        "## Control plane on etcd against the embedded store",
        "| etcd (3 members) |",
    ] {
        assert!(
            report.contains(section),
            "{section:?} missing from:\n{report}"
        );
    }
    for chart in [
        "requests.svg",
        "p99.svg",
        "connections.svg",
        "cpu.svg",
        "programming.svg",
        "failover.svg",
        "scheduling.svg",
        "propagation.svg",
    ] {
        let svg = std::fs::read_to_string(out.path().join("bench").join(chart))
            .unwrap_or_else(|error| panic!("{chart}: {error}"));
        assert!(svg.starts_with("<svg"), "{chart}");
    }
    let results = std::fs::read_to_string(out.path().join("bench/results.json")).expect("results");
    let results: berth_bench::run::Results = serde_json::from_str(&results).expect("parses");
    assert!(
        results.runs.iter().all(|run| run.wrk.requests > 0),
        "every path served requests"
    );
    let failover = results.failover.expect("failover figures");
    assert_eq!(failover.trials.len(), 2, "a readiness failure and a kill");
    let scale = results.scale.expect("control plane at scale figures");
    for cluster in &scale.clusters {
        assert_eq!(
            cluster.scheduling.arrived, cluster.scheduling.pods,
            "every pod reached its node"
        );
        assert_eq!(
            cluster.propagation.missed, 0,
            "every node got every endpoint"
        );
        assert!(
            cluster.scheduling.control_cpu_secs > 0.0
                && cluster.scheduling.machine_total_secs > 0.0,
            "the CPU the control plane and the machine used while scheduling was measured"
        );
    }
    assert_eq!(
        scale.memory.services, 100,
        "the agent programmed the smoke run's Services"
    );
    let agents = results.agents.expect("real agents figures");
    assert_eq!(agents.missed(), 0, "every agent wrote every change");
}
