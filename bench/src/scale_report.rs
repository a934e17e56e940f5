//! The control-plane-at-scale part of docs/BENCHMARKS.md: target rows, tables, charts.

use std::fmt::Write as _;

use crate::{
    scale::{ClusterRun, ScaleResults, Scheduling, percentile},
    svg::{self, BarChart, COLORS, Series},
};

/// Target sizes of issue 8: scheduling on 5,000 nodes, propagation to 1,000.
const SCHEDULING_NODES: usize = 5_000;
const PROPAGATION_NODES: usize = 1_000;
const SCHEDULING_TARGET: f64 = 5_000.0;
const PROPAGATION_TARGET_MS: f64 = 100.0;

/// Mebibytes, with a decimal below 10.
pub fn mib(bytes: u64) -> String {
    let mib = bytes as f64 / f64::from(1 << 20);
    if mib < 10.0 {
        format!("{mib:.1} MiB")
    } else {
        format!("{mib:.0} MiB")
    }
}

pub fn ms(value: f64) -> String {
    if value >= 1000.0 {
        format!("{:.2} s", value / 1e3)
    } else {
        format!("{value:.1} ms")
    }
}

/// The run a target is judged on: the one with that many nodes, else (smoke) the largest.
fn judged(results: &ScaleResults, nodes: usize) -> Option<&ClusterRun> {
    results
        .clusters
        .iter()
        .find(|run| run.nodes == nodes)
        .or_else(|| results.clusters.iter().max_by_key(|run| run.nodes))
}

fn complete(run: &ClusterRun) -> bool {
    run.scheduling.arrived >= run.scheduling.pods
}

/// The control plane's CPU time per pod scheduled, in milliseconds, and the share of the
/// machine's CPU time that was busy; None for results from before they were measured.
pub(crate) fn cpu_use(s: &Scheduling) -> Option<(f64, f64)> {
    (s.arrived > 0 && s.machine_total_secs > 0.0).then(|| {
        (
            s.control_cpu_secs * 1e3 / s.arrived as f64,
            s.machine_busy_secs / s.machine_total_secs,
        )
    })
}

pub fn target_rows(md: &mut String, results: &ScaleResults, cause: &str) {
    if let Some(run) = judged(results, SCHEDULING_NODES) {
        let s = &run.scheduling;
        let measured = if complete(run) {
            format!(
                "{:.0} pods/s on {} nodes ({} pods in {:.1} s)",
                s.pods_per_second, run.nodes, s.pods, s.last_secs
            )
        } else {
            format!(
                "{:.0} pods/s on {} nodes: only {} of {} pods on their nodes within {:.0} s",
                s.pods_per_second, run.nodes, s.arrived, s.pods, s.last_secs
            )
        };
        let met = complete(run) && s.pods_per_second >= SCHEDULING_TARGET;
        let cpu = cpu_use(s).map_or_else(String::new, |(per_pod_ms, busy)| {
            // All the machine's CPUs over the run, per pod at the target rate.
            let budget_ms = s.machine_total_secs / s.last_secs.max(1e-3) * 1e3 / SCHEDULING_TARGET;
            format!(
                " — the control plane alone used {per_pod_ms:.2} ms of CPU per pod, while 5,000 pods/s \
                 allows {budget_ms:.2} ms per pod of all this machine's CPUs for the control plane and the \
                 nodes together; the CPUs were {:.0}% busy",
                busy * 100.0
            )
        });
        let _ = writeln!(
            md,
            "| scheduling ≥ 5,000 pods/s on 5,000 simulated nodes (see [Control plane at scale](#control-plane-at-scale)) | {measured}{} | {} |",
            if met {
                String::new()
            } else {
                format!("{cpu}; {cause}")
            },
            verdict(met)
        );
    }
    if let Some(run) = judged(results, PROPAGATION_NODES) {
        let p = &run.propagation;
        let p99 = percentile(&p.all_nodes_ms, 0.99);
        let met = p.missed == 0 && p99 < PROPAGATION_TARGET_MS;
        let _ = writeln!(
            md,
            "| endpoint propagation p99 under 100 ms to 1,000 agents | p99 {} (p50 {}) from a pod reported ready to the last of {} nodes having it, {} pods{}{} | {} |",
            ms(p99),
            ms(percentile(&p.all_nodes_ms, 0.5)),
            run.nodes,
            p.pods,
            if p.missed > 0 {
                format!("; {} deliveries missing after 30 s", p.missed)
            } else {
                String::new()
            },
            if met {
                String::new()
            } else {
                format!(" — {cause}")
            },
            verdict(met)
        );
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

pub fn charts(results: &ScaleResults) -> Vec<(String, String, String)> {
    let groups: Vec<String> = results
        .clusters
        .iter()
        .map(|run| format!("{} nodes", run.nodes))
        .collect();
    let scheduling = svg::bar_chart(&BarChart {
        title: format!(
            "Scheduling: pods on their nodes per second ({} pods; higher is better)",
            results
                .clusters
                .first()
                .map_or(0, |run| run.scheduling.pods)
        ),
        y_label: "pods/s".into(),
        groups: groups.clone(),
        series: vec![Series {
            name: "Berth".into(),
            color: COLORS[0],
            values: results
                .clusters
                .iter()
                .map(|run| Some(run.scheduling.pods_per_second))
                .collect(),
        }],
        reference: Some(("target: 5,000 pods/s".into(), SCHEDULING_TARGET)),
        log: false,
        format: svg::compact,
    });
    let quantile = |name: &str, color, q: f64, every: bool| Series {
        name: name.to_owned(),
        color,
        values: results
            .clusters
            .iter()
            .map(|run| {
                let values = if every {
                    &run.propagation.all_nodes_ms
                } else {
                    &run.propagation.per_node_ms
                };
                Some(percentile(values, q))
            })
            .collect(),
    };
    let propagation = svg::bar_chart(&BarChart {
        title: "Endpoint propagation: pod ready → on the nodes, ms (lower is better)".into(),
        y_label: "milliseconds".into(),
        groups,
        series: vec![
            quantile("p50, one node", COLORS[4], 0.5, false),
            quantile("p50, every node", COLORS[0], 0.5, true),
            quantile("p99, every node", COLORS[1], 0.99, true),
        ],
        reference: Some(("target p99: 100 ms".into(), PROPAGATION_TARGET_MS)),
        log: false,
        format: |v| format!("{v:.0}"),
    });
    vec![
        (
            "scheduling.svg".to_owned(),
            "Scheduling throughput with simulated nodes".to_owned(),
            scheduling,
        ),
        (
            "propagation.svg".to_owned(),
            "Endpoint propagation to every node".to_owned(),
            propagation,
        ),
    ]
}

pub fn section(md: &mut String, results: &ScaleResults, asset_dir: &str, analysis: &str) {
    let _ = writeln!(md, "## Control plane at scale\n");
    if results.smoke {
        let _ = writeln!(
            md,
            "> **Smoke run**: a few simulated nodes and pods, to show the part works.\n"
        );
    }
    let _ = writeln!(
        md,
        "The real berth-control (release build) in a network namespace of its own, and simulated nodes joined to it: \
         hollow nodes (`sim/src/hollow.rs`, kubemark's idea) that speak the real agent API, each over its own mTLS \
         connection — bootstrap-token join, a heartbeat every {:.0} s like a real agent, a pod watch and a \
         Services/Endpoints watch — and report each pod bound to them running and ready at once. They run in the \
         benchmark's process, on the same {} CPUs as the control plane. Times are taken on the nodes, where an agent \
         would act on them, as each event arrives (a node then parses only the fields it reads: a thousand nodes \
         parsing whole objects in one process would charge the agents' own work to the control plane). A fresh control plane for each cluster size. This part took {:.0} minutes ({}). Rerun \
         it alone, keeping the other parts' figures, with `cargo xtask bench -- --parts scale`.\n",
        results.heartbeat_secs,
        std::thread::available_parallelism().map_or(0, usize::from),
        (results.elapsed_secs / 60.0).ceil(),
        results.started
    );
    let _ = writeln!(
        md,
        "- **scheduling**: one Deployment of {} replicas (10m CPU, 16Mi each); from its creation to the last pod \
         arriving on its node's pod watch — the ReplicaSet controller creating the pods, the scheduler binding \
         them, the store and the watches are all in it; pods/s = pods / that time.\n\
         - **propagation**: a Service and its Deployment scaled up one replica at a time, {} times; from the \
         moment a pod's node reports it ready (just before the report, so the store write is included) until \
         each node's watch delivers Endpoints listing it as ready (\"one node\": every pair) and until the last \
         node has it (\"every node\": per pod — the figure the target is about).\n\
         - **memory**: resident set (VmRSS) of the control plane after the nodes joined and after the pods were \
         scheduled.\n",
        results
            .clusters
            .first()
            .map_or(0, |run| run.scheduling.pods),
        results
            .clusters
            .first()
            .map_or(0, |run| run.propagation.pods),
    );
    let _ = writeln!(
        md,
        "| nodes | pods/s | first pod on its node | last pod on its node | propagation p50 / p99, one node | p50 / p99, every node | control plane memory: joined / after the pods | joining took | control plane CPU per pod / machine busy, scheduling |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for run in &results.clusters {
        let s = &run.scheduling;
        let p = &run.propagation;
        let last = if complete(run) {
            format!("{:.1} s", s.last_secs)
        } else {
            format!("{} of {} after {:.0} s", s.arrived, s.pods, s.last_secs)
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2} s | {last} | {} / {} | {} / {} | {} / {} | {:.0} s | {} |",
            run.nodes,
            s.pods_per_second,
            s.first_secs,
            ms(percentile(&p.per_node_ms, 0.5)),
            ms(percentile(&p.per_node_ms, 0.99)),
            ms(percentile(&p.all_nodes_ms, 0.5)),
            ms(percentile(&p.all_nodes_ms, 0.99)),
            mib(run.control_rss_bytes.joined),
            mib(run.control_rss_bytes.after_scheduling),
            run.join_secs,
            cpu_use(s).map_or_else(
                || "–".to_owned(),
                |(per_pod_ms, busy)| format!("{per_pod_ms:.2} ms / {:.0}%", busy * 100.0)
            )
        );
    }
    let m = &results.memory;
    let _ = writeln!(
        md,
        "\nWith {} Services × {} endpoints (Services without selectors and their Endpoints, as a user writes them), \
         no pods: the control plane holds **{}**; one real berth-agent that has programmed all of them into its \
         datapath (its `berth_datapath_service_frontends` metric) holds **{}** (it had them programmed {:.1} s after \
         it started, joining included).\n",
        m.services,
        m.endpoints_per_service,
        mib(m.control_rss_bytes),
        mib(m.agent_rss_bytes),
        m.agent_programmed_secs
    );
    let _ = writeln!(
        md,
        "![Scheduling]({asset_dir}/scheduling.svg)\n\n![Propagation]({asset_dir}/propagation.svg)\n"
    );
    if !analysis.is_empty() {
        let _ = writeln!(md, "{analysis}\n");
    }
}
