//! The real-agents part of docs/BENCHMARKS.md: issue 25's targets, a row per agent, the
//! BPF maps beside Cilium's for the same Services.

use std::fmt::Write as _;

use crate::{
    agents::{AgentsResults, SERVICE_MAPS, bucket_quantile},
    figures::thousands,
    scale::percentile,
    scale_report::{mib, ms},
};

/// Issue 25's "Done means" 1–3.
const PROGRAMMED_TARGET_SECS: f64 = 60.0;
const EACH_AGENT_P99_MS: f64 = 10.0;
const LAST_AGENT_P99_MS: f64 = 100.0;
const OWN_MEMORY_TARGET: u64 = 64_000_000;

/// Entries of Cilium's load-balancer maps by default (`--bpf-lb-map-max`).
const CILIUM_LB_MAP_MAX: usize = 65_536;
/// Cilium's Maglev table size (M) by default.
const CILIUM_MAGLEV_M: u64 = 16_381;
/// Bytes of Cilium's lb4 entries (bpf/lib/common.h): `lb4_key` and `lb4_service` (the
/// services map, one entry per Service and one per backend slot), the backends map's
/// `__u32` id and `lb4_backend`, the reverse-NAT map's `__u16` and `lb4_reverse_nat`.
const CILIUM_SERVICE_ENTRY: u64 = 12 + 12;
const CILIUM_BACKEND_ENTRY: u64 = 4 + 12;
const CILIUM_REVERSE_NAT_ENTRY: u64 = 2 + 6;

fn secs(value: Option<f64>, limit: f64) -> String {
    value.map_or_else(
        || format!("not within {limit:.0} s"),
        |s| format!("{s:.1} s"),
    )
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// Bytes of Cilium's lb4 map entries for `services` Services of `endpoints` backends
/// each: (Maglev tables, the other entries).
pub fn cilium_bytes(services: u64, endpoints: u64) -> (u64, u64) {
    let maglev = services * 4 * CILIUM_MAGLEV_M;
    let entries = services * (1 + endpoints) * CILIUM_SERVICE_ENTRY
        + services * endpoints * CILIUM_BACKEND_ENTRY
        + services * CILIUM_REVERSE_NAT_ENTRY;
    (maglev, entries)
}

/// `≤ p50 / ≤ p99` of an agent's own buckets over the changes.
fn in_agent(buckets: &[(f64, u64)]) -> String {
    let bound = |q| match bucket_quantile(buckets, q) {
        Some(le) if le < f64::MAX => format!("≤ {}", ms(le * 1e3)),
        Some(_) => format!(
            "> {}",
            ms(buckets.iter().rev().nth(1).map_or(0.0, |b| b.0 * 1e3))
        ),
        None => "–".to_owned(),
    };
    format!("{} / {}", bound(0.5), bound(0.99))
}

/// Every agent's own buckets added up (bucket by bucket; agents whose bounds differ from
/// the first's are left out).
fn all_buckets(results: &AgentsResults) -> Vec<(f64, u64)> {
    let mut all: Vec<(f64, u64)> = Vec::new();
    for buckets in results.agents.iter().map(|a| &a.own_buckets) {
        if all.is_empty() {
            all.clone_from(buckets);
        } else if all.len() == buckets.len() && all.iter().zip(buckets).all(|(a, b)| a.0 == b.0) {
            all.iter_mut().zip(buckets).for_each(|(a, b)| a.1 += b.1);
        }
    }
    all
}

pub fn section(md: &mut String, results: &AgentsResults) {
    let n = results.agents.len();
    let _ = writeln!(md, "## Real agents while Services arrive and change\n");
    if results.smoke {
        let _ = writeln!(
            md,
            "> **Smoke run**: two agents and a few Services, to show the part works.\n"
        );
    }
    let _ = writeln!(
        md,
        "{n} real berth-agents ({} builds), each in a node network namespace of its own on a routed underlay (a \
         link per node), joined to the real berth-control (berth-tests' `E2eCluster`, as the failover part), all \
         on this machine's {} CPUs. While they run, {} Services (ClusterIP, one port) and their EndpointSlices \
         ({} addresses each, on the nodes in turn) are applied through `/apply` in manifests of {} Services with \
         their slices, one after the other; then {} single EndpointSlice changes, one at a time. Run {} ({:.0} minutes); \
         the machine's CPUs were {:.0}% busy over the arrival and {:.0}% over the changes — everything on it: the \
         agents, the control plane, the benchmark and any other work. Rerun it alone, keeping the other parts' \
         figures, with `cargo xtask bench -- --parts agents` (`--agents N`, `--agents-services S`).\n",
        results.binaries,
        std::thread::available_parallelism().map_or(0, usize::from),
        thousands(results.services),
        results.endpoints_per_service,
        results.manifest,
        results.changes.len(),
        results.started,
        (results.elapsed_secs / 60.0).ceil(),
        results.arrival_machine_busy * 100.0,
        results.changes_machine_busy * 100.0,
    );
    let _ = writeln!(
        md,
        "- **programmed**: a Service is programmed on an agent once the agent's pinned `BERTH_SERVICES` map holds \
         its frontend with all its backends (`backend_count`), read by the benchmark every 100 ms; from the first \
         apply, and from the last apply's answer, until an agent has every Service.\n\
         - **one change**: from the answer to the change's apply (the write committed in the store) until each \
         agent's `BERTH_SERVICES` entry for that Service changes — the agent switching the Service to its rebuilt \
         Maglev table, its last write for the change — read in a loop every 0.2 ms from before the apply is sent \
         (a change written before the answer arrived counts 0). This is the control plane's revision to the maps \
         end to end; the agent's own `berth_datapath_propagation_seconds` starts later, at the watch event's \
         arrival at the agent: **in the agent** is its buckets over the changes (read from each agent's \
         /metrics before and after them), the bucket's upper bound the p50 and p99 fall in; the rest of the time \
         is the control plane's fan-out and the watch's stream to the agent.\n\
         - **CPU per change**: the agent's CPU time over the changes, less its idle rate (measured over 5 s \
         before) over as long, per change.\n\
         - **memory**, once every Service is programmed: the agent's own (`RssAnon`), its file-backed pages \
         (`RssFile`: its executable and the BPF maps it maps), and the kernel's memory for its BPF maps: the \
         `memlock` of every map it holds (`/proc/PID/fdinfo`), and of the maps whose contents are the Services' \
         ({}).\n",
        SERVICE_MAPS
            .iter()
            .map(|name| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Issue 25's targets.
    let after_last = results.after_last_apply_secs();
    let per_agent_p99: Vec<f64> = (0..n)
        .map(|i| percentile(&results.agent_ms(i), 0.99))
        .collect();
    let worst_p99 = per_agent_p99.iter().copied().fold(0.0, f64::max);
    let last = results.last_agent_ms();
    let last_p99 = percentile(&last, 0.99);
    let missed = results.missed();
    let own = results
        .agents
        .iter()
        .map(|agent| agent.rss_anon_bytes)
        .max()
        .unwrap_or(0);
    let _ = writeln!(md, "| issue 25 target | measured | |");
    let _ = writeln!(md, "|---|---|---|");
    let _ = writeln!(
        md,
        "| every agent has all {} Services programmed within 60 s of the last apply | {} after the last apply's answer ({} applying) | {} |",
        thousands(results.services),
        after_last.map_or_else(
            || format!("not all within {:.0} s", results.arrival_limit_secs),
            |s| format!("{s:.1} s")
        ),
        ms(results.applying_secs * 1e3),
        verdict(after_last.is_some_and(|s| s <= PROGRAMMED_TARGET_SECS))
    );
    let _ = writeln!(
        md,
        "| one endpoints change: p99 ≤ 10 ms on each agent | the worst agent's p99 {} (the best's {}){} | {} |",
        ms(worst_p99),
        ms(per_agent_p99.iter().copied().fold(f64::INFINITY, f64::min)),
        if missed > 0 {
            format!("; {missed} (change, agent) pairs not seen within 30 s")
        } else {
            String::new()
        },
        verdict(missed == 0 && worst_p99 <= EACH_AGENT_P99_MS)
    );
    let _ = writeln!(
        md,
        "| one endpoints change: p99 ≤ 100 ms to the last of the {n} agents | p99 {} (p50 {}) | {} |",
        ms(last_p99),
        ms(percentile(&last, 0.5)),
        verdict(missed == 0 && last_p99 <= LAST_AGENT_P99_MS)
    );
    let _ = writeln!(
        md,
        "| agent memory, its own share ≤ 64 MB with {} Services × {} endpoints | the largest agent's RssAnon {} | {} |\n",
        thousands(results.services),
        results.endpoints_per_service,
        mib(own),
        verdict(own <= OWN_MEMORY_TARGET)
    );

    // A row per agent, then all of them.
    let _ = writeln!(
        md,
        "| agent | all programmed: from the first apply (after the last) | CPU over the arrival | one change: p50 / p99 | of which in the agent: p50 / p99 | CPU per change | own memory (RssAnon) | file-backed (RssFile) | BPF maps: all (joined) | BPF maps: the Services' |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, agent) in results.agents.iter().enumerate() {
        let changes = results.agent_ms(i);
        let _ = writeln!(
            md,
            "| {} | {}{} | {:.1} s | {} / {} | {} | {:.2} ms | {} | {} | {} ({}) | {} |",
            i + 1,
            secs(agent.programmed_secs, results.arrival_limit_secs),
            agent.programmed_secs.map_or_else(String::new, |s| format!(
                " ({:.1} s)",
                s - results.applying_secs
            )),
            agent.arrival_cpu_secs,
            ms(percentile(&changes, 0.5)),
            ms(percentile(&changes, 0.99)),
            in_agent(&agent.own_buckets),
            agent.change_cpu_ms,
            mib(agent.rss_anon_bytes),
            mib(agent.rss_file_bytes),
            mib(agent.bpf_bytes),
            mib(agent.bpf_bytes_joined),
            mib(agent.bpf_service_bytes),
        );
    }
    let all = results.all_ms();
    let mean = |f: &dyn Fn(&crate::agents::AgentFigures) -> f64| {
        results.agents.iter().map(f).sum::<f64>() / n.max(1) as f64
    };
    let _ = writeln!(
        md,
        "| **all {n}** (mean, or every change × agent) | {} | {:.1} s | {} / {} | {} | {:.2} ms | {} | {} | {} | {} |",
        after_last.map_or_else(
            || "not all".to_owned(),
            |s| format!("{:.1} s ({s:.1} s)", s + results.applying_secs)
        ),
        mean(&|a| a.arrival_cpu_secs),
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        in_agent(&all_buckets(results)),
        mean(&|a| a.change_cpu_ms),
        mib(mean(&|a| a.rss_anon_bytes as f64) as u64),
        mib(mean(&|a| a.rss_file_bytes as f64) as u64),
        mib(mean(&|a| a.bpf_bytes as f64) as u64),
        mib(mean(&|a| a.bpf_service_bytes as f64) as u64),
    );
    let apply: Vec<f64> = results.changes.iter().map(|c| c.apply_ms).collect();
    let _ = writeln!(
        md,
        "\nTo the last of the {n} agents: p50 {}, p99 {}, the slowest {} over {} changes. The change's apply took \
         {} (p50; p99 {}) from sending it to its answer.\n",
        ms(percentile(&last, 0.5)),
        ms(percentile(&last, 0.99)),
        ms(percentile(&last, 1.0)),
        results.changes.len(),
        ms(percentile(&apply, 0.5)),
        ms(percentile(&apply, 0.99)),
    );

    // Beside Cilium.
    let (maglev, entries) = cilium_bytes(
        results.services as u64,
        results.endpoints_per_service as u64,
    );
    let service_bpf = results
        .agents
        .iter()
        .map(|agent| agent.bpf_service_bytes)
        .max()
        .unwrap_or(0);
    let service_entries = results.services * (1 + results.endpoints_per_service);
    let _ = writeln!(
        md,
        "**BPF maps beside Cilium's** for the same {} Services × {} backends. Berth's Services' maps: {} per agent, \
         measured (the kernel's `memlock`; they are allocated whole at the agent's limits when it starts, so the \
         figure is the same with no Service — the \"joined\" column is every map before the first apply). Cilium's \
         lb4 maps, computed from its map definitions (not measured): a Maglev table per Service of M = {} \
         `__u32` backend ids by default — the inner map of `cilium_lb4_maglev` is an array of one value of \
         `sizeof(__u32) * LB_MAGLEV_LUT_SIZE` bytes ([bpf/lib/lb.h](https://github.com/cilium/cilium/blob/main/bpf/lib/lb.h)) — \
         {} in all; and {} of entries: one `cilium_lb4_services_v2` entry per Service and one per backend slot \
         (`lb4_key` 12 B + `lb4_service` 12 B), one `cilium_lb4_backends_v3` entry per backend (`__u32` + \
         `lb4_backend` 12 B) and one `cilium_lb4_reverse_nat` entry per Service (`__u16` + `lb4_reverse_nat` 6 B) \
         ([bpf/lib/common.h](https://github.com/cilium/cilium/blob/main/bpf/lib/common.h)): {} together. That is \
         the entries' bytes only: the kernel's per-element overhead comes on top, and Cilium's hash maps are \
         preallocated at their limits ([eBPF maps](https://docs.cilium.io/en/stable/network/ebpf/maps/): 65,536 \
         entries for the load balancer by default){}.\n",
        thousands(results.services),
        results.endpoints_per_service,
        mib(service_bpf),
        CILIUM_MAGLEV_M,
        mib(maglev),
        mib(entries),
        mib(maglev + entries),
        if service_entries > CILIUM_LB_MAP_MAX {
            format!(
                "; these Services need {} service-map entries, so `--bpf-lb-map-max` would have to be raised",
                thousands(service_entries)
            )
        } else {
            String::new()
        },
    );
    let _ = writeln!(md, "{HISTORY}\n");
}

/// One agent measured by hand before this part existed (the former `agent-arrival`
/// binary): the control plane and one agent in one namespace, debug builds, the machine
/// shared with other builds.
const HISTORY: &str = "**Before** (2026-12-06, measured by hand with one agent and the control plane in one \
namespace, debug builds, other builds running): the agent that re-planned its whole datapath on every watch event \
had programmed only 396 of 2,000 Services after 14 min 50 s (517 s of its CPU; 322 MiB resident, 164 MiB of it \
its own). With per-Service changes, the same agent programmed 2,000 Services 13.1 s after the first apply (7.3 s \
after the last; 77 MiB its own) and 10,000 after 64.9 s (31.8 s after the last; 367 MiB its own), one change \
taking ≤ 10 ms / ≤ 500 ms (p50 / p99, from the watch event's arrival at the agent: its \
`berth_datapath_propagation_seconds` buckets).";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_own_share_is_given_by_bucket_bounds() {
        let buckets = [(0.001, 60), (0.01, 99), (0.1, 100), (f64::MAX, 100)];
        assert_eq!(in_agent(&buckets), "≤ 1.0 ms / ≤ 10.0 ms");
        assert_eq!(
            in_agent(&[(0.001, 1), (f64::MAX, 2)]),
            "≤ 1.0 ms / > 1.0 ms"
        );
        assert_eq!(in_agent(&[]), "– / –");
    }

    #[test]
    fn cilium_needs_a_maglev_table_of_m_ids_per_service() {
        let (maglev, entries) = cilium_bytes(10_000, 10);
        assert_eq!(maglev, 10_000 * 65_524);
        assert_eq!(entries, 110_000 * 24 + 100_000 * 16 + 10_000 * 8);
    }
}
