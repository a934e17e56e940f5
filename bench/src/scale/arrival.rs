//! One real berth-agent while Services arrive (issue 25): the control plane and the agent
//! in one network namespace, as in the memory figures of [`super`]; Services with their
//! Endpoints applied in manifests of 100 Services while the agent runs; then single
//! Endpoints changes among them. Figures: the time from the first apply until the agent's
//! datapath serves every Service (and from the last apply), each change's propagation
//! inside the agent (`berth_datapath_propagation_seconds`: the watch event's arrival to
//! the maps written, read as bucket bounds), and the agent's resident memory.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    Control, http_get, in_cluster_namespace, log_path, rss_bytes, start_agent, wait_programmed,
};
use crate::procs::{check_interrupted, process_cpu_time};
use berth_tests::process::NODE_ADDR;

/// Services per manifest.
const MANIFEST: usize = 100;
/// Endpoints changes timed once every Service is programmed, one at a time.
const CHANGES: usize = 200;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Arrival {
    pub services: usize,
    pub endpoints_per_service: usize,
    /// From the first manifest's apply to the last one's answer.
    pub applying_secs: f64,
    /// From the first apply until the agent serves every Service.
    pub programmed_secs: f64,
    /// From the last apply's answer until the agent serves every Service.
    pub after_last_apply_secs: f64,
    /// The agent's CPU time over the arrival.
    pub agent_cpu_secs: f64,
    pub agent_rss_bytes: u64,
    /// Of which the process's own (anonymous) memory, and file-backed pages: its
    /// executable and the BPF maps it maps (the Maglev pool and round-robin lists).
    pub agent_rss_anon_bytes: u64,
    pub agent_rss_file_bytes: u64,
    pub changes: usize,
    /// Upper bounds of the histogram buckets holding the 50th and 99th percentile.
    pub change_p50_secs: f64,
    pub change_p99_secs: f64,
    /// The same for `berth_datapath_apply_duration_seconds` over the changes (one write).
    pub apply_p50_secs: f64,
    pub apply_p99_secs: f64,
}

pub fn run(
    services: usize,
    endpoints_per_service: usize,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Arrival> {
    in_cluster_namespace(
        |ns| async move { arrival(ns, services, endpoints_per_service, say).await },
    )
}

fn objects(index: usize, endpoints: usize, generation: usize) -> [Value; 2] {
    let name = format!("svc-{index:05}");
    let addresses: Vec<Value> = (0..endpoints)
        .map(|e| {
            let n = index * endpoints + e + generation;
            json!({
                "ip": format!("10.{}.{}.{}", 64 + n / 65_536, n / 256 % 256, n % 256),
                "nodeName": "agent-0",
            })
        })
        .collect();
    [
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"port": 80, "targetPort": 8080}]},
        }),
        json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": name, "namespace": "default"},
            "subsets": [{"addresses": addresses, "ports": [{"port": 8080}]}],
        }),
    ]
}

async fn arrival(
    ns: String,
    services: usize,
    endpoints: usize,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Arrival> {
    let control = Control::start(&ns, &log_path("control-arrival")).await?;
    let (mut agent, _state, _pins) = start_agent(&ns, &control)?;
    let metrics = format!("{NODE_ADDR}:9102");
    // Joined and watching: its metrics answer (and its first, empty, snapshot is in).
    while http_get(&metrics, "/metrics").await.is_err() {
        agent.check_running()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_before = process_cpu_time(agent.pid());
    say(&format!(
        "arrival: applying {services} Services × {endpoints} endpoints in manifests of {MANIFEST}"
    ));
    let started = Instant::now();
    for first in (0..services).step_by(MANIFEST) {
        check_interrupted()?;
        let manifest: Vec<Value> = (first..(first + MANIFEST).min(services))
            .flat_map(|index| objects(index, endpoints, 0))
            .collect();
        control
            .write(Method::POST, "/apply", &Value::Array(manifest))
            .await
            .with_context(|| format!("applying Services from {first}"))?;
    }
    let applying = started.elapsed();
    wait_programmed(&mut agent, services, started + Duration::from_secs(1800)).await?;
    let programmed = started.elapsed();
    let agent_cpu = process_cpu_time(agent.pid()).saturating_sub(cpu_before);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let agent_rss = rss_bytes(agent.pid());
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))
        .context("the agent's /proc status")?;
    let field = |name| berth_agent::usage::meminfo_bytes(&status, name).unwrap_or(0);
    let (rss_anon, rss_file) = (field("RssAnon"), field("RssFile"));
    say(&format!(
        "arrival: applied in {:.1} s, programmed after {:.1} s, agent {} MiB",
        applying.as_secs_f64(),
        programmed.as_secs_f64(),
        agent_rss >> 20
    ));

    let before = http_get(&metrics, "/metrics").await?;
    for change in 0..CHANGES {
        let index = change * 7919 % services;
        let manifest = Value::Array(objects(index, endpoints, change + 1)[1..].to_vec());
        control.write(Method::POST, "/apply", &manifest).await?;
        // Apart, so each is its own event and write rather than one batch.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = http_get(&metrics, "/metrics").await?;
    let propagation = difference(&before, &after, "berth_datapath_propagation_seconds");
    let apply = difference(&before, &after, "berth_datapath_apply_duration_seconds");
    Ok(Arrival {
        services,
        endpoints_per_service: endpoints,
        applying_secs: applying.as_secs_f64(),
        programmed_secs: programmed.as_secs_f64(),
        after_last_apply_secs: (programmed - applying).as_secs_f64(),
        agent_cpu_secs: agent_cpu.as_secs_f64(),
        agent_rss_bytes: agent_rss,
        agent_rss_anon_bytes: rss_anon,
        agent_rss_file_bytes: rss_file,
        changes: CHANGES,
        change_p50_secs: quantile_bound(&propagation, 0.5),
        change_p99_secs: quantile_bound(&propagation, 0.99),
        apply_p50_secs: quantile_bound(&apply, 0.5),
        apply_p99_secs: quantile_bound(&apply, 0.99),
    })
}

/// What histogram `name` counted between two scrapes: its cumulative buckets.
fn difference(before: &str, after: &str, name: &str) -> Vec<(f64, f64)> {
    let before = buckets(before, name);
    buckets(after, name)
        .into_iter()
        .map(|(bound, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0.0, |(_, c)| *c);
            (bound, count - earlier)
        })
        .collect()
}

/// Histogram `name`'s cumulative buckets: (upper bound, count).
fn buckets(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (bound, count) = rest.split_once("\"} ")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect()
}

/// The smallest bucket bound holding the `q` quantile of cumulative `counts`.
fn quantile_bound(counts: &[(f64, f64)], q: f64) -> f64 {
    let total = counts.last().map_or(0.0, |(_, count)| *count);
    counts
        .iter()
        .find(|(_, count)| *count >= q * total && total > 0.0)
        .map_or(f64::NAN, |(bound, _)| *bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_read_from_cumulative_buckets() {
        let text = "berth_datapath_propagation_seconds_bucket{le=\"0.001\"} 10\n\
                    berth_datapath_propagation_seconds_bucket{le=\"0.005\"} 98\n\
                    berth_datapath_propagation_seconds_bucket{le=\"0.01\"} 100\n\
                    berth_datapath_propagation_seconds_bucket{le=\"+Inf\"} 100\n";
        let counts = buckets(text, "berth_datapath_propagation_seconds");
        assert_eq!(counts.len(), 4);
        assert_eq!(quantile_bound(&counts, 0.5), 0.005);
        assert_eq!(quantile_bound(&counts, 0.99), 0.01);
    }
}
