//! The failover part of docs/BENCHMARKS.md: its row in the targets table, its section
//! and its chart, from [`FailoverResults`].

use std::fmt::Write as _;

use crate::{
    failover::{FailoverResults, Failure, PACE, Probes, Trial},
    figures::{median, seconds},
    svg::{self, BarChart, COLORS, Series},
};

/// Medians over the repetitions of one failure under one probe configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub trials: usize,
    pub failed: f64,
    pub to_failing: f64,
    pub failover_secs: f64,
    pub failover_max_secs: f64,
    pub recovery_secs: Option<f64>,
    pub restarted_secs: Option<f64>,
    pub endpoints_left_secs: Option<f64>,
    /// Trials in which the backend was seen to leave the Endpoints.
    pub endpoints_left_seen: usize,
}

fn selected(results: &FailoverResults, probes: Probes, failure: Failure) -> Vec<&Trial> {
    results
        .trials
        .iter()
        .filter(|t| t.probes == probes && t.failure == failure)
        .collect()
}

pub fn summarize(results: &FailoverResults, probes: Probes, failure: Failure) -> Option<Summary> {
    let trials = selected(results, probes, failure);
    if trials.is_empty() {
        return None;
    }
    let pick = |f: &dyn Fn(&Trial) -> Option<f64>| {
        let mut values: Vec<f64> = trials.iter().filter_map(|t| f(t)).collect();
        median(&mut values)
    };
    Some(Summary {
        trials: trials.len(),
        failed: pick(&|t| Some(t.failed() as f64)).unwrap_or(0.0),
        to_failing: pick(&|t| Some(t.to_failing() as f64)).unwrap_or(0.0),
        failover_secs: pick(&|t| Some(t.failover_secs())).unwrap_or(0.0),
        failover_max_secs: trials.iter().map(|t| t.failover_secs()).fold(0.0, f64::max),
        recovery_secs: pick(&|t| t.recovery_secs()),
        restarted_secs: pick(&|t| t.restarted_secs),
        endpoints_left_secs: pick(&|t| t.endpoints_left_secs),
        endpoints_left_seen: trials
            .iter()
            .filter(|t| t.endpoints_left_secs.is_some())
            .count(),
    })
}

/// The median time the backend left the Endpoints, and in how many trials it was seen to.
fn endpoints_left(s: &Summary) -> String {
    match s.endpoints_left_secs {
        Some(secs) if s.endpoints_left_seen == s.trials => seconds(secs),
        Some(secs) => format!(
            "{} ({} of {} trials)",
            seconds(secs),
            s.endpoints_left_seen,
            s.trials
        ),
        None => "not seen".into(),
    }
}

/// A failover time; 0 means no request was affected.
fn failover(value: f64) -> String {
    if value == 0.0 {
        "0".into()
    } else {
        seconds(value)
    }
}

fn count(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn ratio(value: f64, reference: f64) -> String {
    if reference > 0.0 {
        format!("{:.1}×", value / reference)
    } else if value > 0.0 {
        "more (none with Berth's)".into()
    } else {
        "same (none)".into()
    }
}

/// The targets-table row: failover with Berth's defaults under 1 s.
pub fn target_row(md: &mut String, results: &FailoverResults) {
    let parts: Vec<(Failure, Summary)> = Failure::ALL
        .iter()
        .filter_map(|f| Some((*f, summarize(results, Probes::Berth, *f)?)))
        .collect();
    if parts.is_empty() {
        return;
    }
    let measured = parts
        .iter()
        .map(|(failure, s)| {
            format!(
                "{}: {} (worst {})",
                failure.label(),
                failover(s.failover_secs),
                failover(s.failover_max_secs)
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let met = parts.iter().all(|(_, s)| s.failover_secs < 1.0);
    // The cause, whichever way it went: what bounds each kind of failover.
    let cause = "a failing readiness check is decided by the next probe (0 to 1 s later with a 1 s period) and \
                 reaches the other nodes through the control plane's Endpoints; a killed container needs no probe: \
                 the agent restarts it at once and requests fail only until the new one listens";
    let _ = writeln!(
        md,
        "| failover with Berth's defaults under 1 s (median; see [Failover](#failover)) | {measured} — {cause} | {} |",
        if met { "met" } else { "**missed**" }
    );
}

/// The chart: failover and recovery times, Berth's defaults against Kubernetes'.
pub fn chart(results: &FailoverResults) -> (String, String, String) {
    type Metric = (&'static str, Failure, fn(&Summary) -> Option<f64>);
    let metrics: [Metric; 4] = [
        ("readiness: failed over", Failure::Unready, |s| {
            Some(s.failover_secs)
        }),
        ("readiness: back", Failure::Unready, |s| s.recovery_secs),
        ("killed: failed over", Failure::Killed, |s| {
            Some(s.failover_secs)
        }),
        ("killed: back", Failure::Killed, |s| s.recovery_secs),
    ];
    let series = Probes::ALL
        .iter()
        .zip([COLORS[0], COLORS[1]])
        .map(|(probes, color)| Series {
            name: probes.label().to_owned(),
            color,
            values: metrics
                .iter()
                .map(|(_, failure, value)| value(&summarize(results, *probes, *failure)?))
                .collect(),
        })
        .collect();
    (
        "failover.svg".to_owned(),
        "Failover and recovery times, Berth's probe defaults against Kubernetes'".to_owned(),
        svg::bar_chart(&BarChart {
            title: "Failover and recovery, seconds (median; log scale, lower is better)".into(),
            y_label: "seconds".into(),
            groups: metrics
                .iter()
                .map(|(name, ..)| (*name).to_owned())
                .collect(),
            series,
            reference: Some(("target: 1 s".into(), 1.0)),
            log: true,
            format: |v| {
                if v < 1.0 {
                    format!("{:.0}ms", v * 1e3)
                } else {
                    format!("{v:.1}s")
                }
            },
        }),
    )
}

/// The Failover section.
pub fn section(md: &mut String, results: &FailoverResults, asset_dir: &str) {
    let _ = writeln!(md, "## Failover\n");
    if results.smoke {
        let _ = writeln!(
            md,
            "> **Smoke run**: one trial of each failure with Berth's defaults only, to show the part works.\n"
        );
    }
    let _ = writeln!(
        md,
        "One backend of a Service fails while clients send requests at a steady rate, on the end-to-end cluster \
         ([E2E.md](E2E.md)): three node namespaces, the real berth-control, one real berth-agent per node \
         ({} build) and the real Docker engine. The Service has three berth/echo replicas; two clients send one \
         request every {} ms each, every request on a new connection — a pod to the ClusterIP, and a machine \
         outside the cluster to node 0's NodePort — and record when each was sent and which pod answered it. \
         Two failures: the backend's **readiness** starts failing (`/tmp/berth-unready` in its container: `/readyz` \
         answers 503, the server keeps serving), and its container is **killed** (SIGKILL; the agent restarts it). \
         Two probe configurations run through the same system: **Berth's defaults** (a readiness probe with no \
         period or threshold in the manifest: the agent's period 1 s, failure threshold 1) and **Kubernetes' \
         defaults** (`periodSeconds: 10, failureThreshold: 3` written in the manifest); a rolling update switches \
         between them. Each failure hits a backend on neither client's node where there is one, at a random \
         moment of a probe period (trials of equal length would otherwise always meet the probes in the same \
         phase), and is undone the same way. {}; this part took {:.0} minutes ({}). Rerun it alone, keeping the \
         other parts' figures, with `cargo xtask bench -- --parts failover`.\n",
        if results.binaries.is_empty() {
            "unknown"
        } else {
            results.binaries.as_str()
        },
        results.pace_ms,
        if results.repetitions == 1 {
            "One repetition".to_owned()
        } else {
            format!("Medians of {} repetitions", results.repetitions)
        },
        (results.elapsed_secs / 60.0).ceil(),
        results.started
    );
    let _ = writeln!(
        md,
        "- **failed over after**: from the failure (before the `docker exec` or kill that makes it) to the last \
         request it affected — answered by the unready backend, or failed — over both clients: after that, new \
         requests only reach the healthy backends.\n\
         - **out of the Endpoints after**: from the failure until the backend's address was seen gone from the \
         Service's Endpoints: the control plane's part. Polled with `berthctl get endpoints` (a run every 0.1 s \
         plus its own time), so up to about 0.2 s late, and a shorter absence can go unseen.\n\
         - **back after**: readiness — from its check passing again (before the `docker exec` that removes the file) \
         to the first request it answered again; killed — from the kill to the first request the restarted container \
         answered, for both clients.\n\
         - **failed**: requests that got no answer (refused, reset, timed out), both clients together; **to the \
         failing backend**: requests the unready backend still answered after its readiness failed (it still \
         serves here; a backend that fails its check because it is broken would fail them).\n"
    );
    let _ = writeln!(
        md,
        "| failure | probes | failed requests | to the failing backend | failed over after | out of the Endpoints after | back after | restarted after |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|");
    for failure in Failure::ALL {
        for probes in Probes::ALL {
            let Some(s) = summarize(results, probes, failure) else {
                continue;
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} (worst {}) | {} | {} | {} |",
                failure.label(),
                probes.label(),
                count(s.failed),
                if failure == Failure::Unready {
                    count(s.to_failing)
                } else {
                    "–".into()
                },
                failover(s.failover_secs),
                failover(s.failover_max_secs),
                endpoints_left(&s),
                s.recovery_secs.map_or("–".into(), seconds),
                s.restarted_secs.map_or("–".into(), seconds),
            );
        }
    }
    let pairs: Vec<(Failure, Summary, Summary)> = Failure::ALL
        .iter()
        .filter_map(|f| {
            Some((
                *f,
                summarize(results, Probes::Berth, *f)?,
                summarize(results, Probes::Kubernetes, *f)?,
            ))
        })
        .collect();
    if !pairs.is_empty() {
        let _ = writeln!(
            md,
            "\nKubernetes' defaults against Berth's (ratios of the medians; above 1: Kubernetes' take longer or lose more):\n"
        );
        let _ = writeln!(
            md,
            "| failure | failed over after | back after | failed requests | to the failing backend |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        for (failure, berth, kubernetes) in &pairs {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                failure.label(),
                ratio(kubernetes.failover_secs, berth.failover_secs),
                match (kubernetes.recovery_secs, berth.recovery_secs) {
                    (Some(k), Some(b)) => ratio(k, b),
                    _ => "–".into(),
                },
                ratio(kubernetes.failed, berth.failed),
                if *failure == Failure::Unready {
                    ratio(kubernetes.to_failing, berth.to_failing)
                } else {
                    "–".into()
                }
            );
        }
    }
    let _ = writeln!(md, "\n![Failover]({asset_dir}/failover.svg)\n");
    analysis(md, results);
    let _ = writeln!(md, "<details><summary>Every failover trial</summary>\n");
    let _ = writeln!(
        md,
        "| probes | failure | # | backend | on the client pod's node | on node 0 | failed (ClusterIP + NodePort) | to the failing backend | failed over after (ClusterIP / NodePort) | Endpoints: out / back after | back after (ClusterIP / NodePort) | restarted after | exec/kill took |"
    );
    let _ = writeln!(
        md,
        "|---|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    let yes = |b: bool| if b { "yes" } else { "no" };
    let opt = |v: Option<f64>| v.map_or("–".into(), seconds);
    for t in &results.trials {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} + {} | {} | {} / {} | {} / {} | {} / {} | {} | {} |",
            t.probes.short(),
            t.failure.label(),
            t.repetition,
            t.victim,
            yes(t.victim_on_client_node),
            yes(t.victim_on_node_port_node),
            t.cluster_ip.failed,
            t.node_port.failed,
            t.to_failing(),
            failover(t.cluster_ip.failover_secs),
            failover(t.node_port.failover_secs),
            opt(t.endpoints_left_secs),
            opt(t.endpoints_back_secs),
            opt(t.cluster_ip.recovery_secs),
            opt(t.node_port.recovery_secs),
            opt(t.restarted_secs),
            seconds(t.inject_secs),
        );
    }
    let _ = writeln!(md, "\n</details>\n");
}

/// Requests that failed in readiness trials (where the backend keeps serving): when, and
/// when the backend left the Endpoints.
fn resets(md: &mut String, results: &FailoverResults) {
    let mut lines = Vec::new();
    for probes in Probes::ALL {
        let trials = selected(results, probes, Failure::Unready);
        let failing: Vec<&&Trial> = trials.iter().filter(|t| t.failed() > 0).collect();
        if failing.is_empty() {
            continue;
        }
        let detail = failing
            .iter()
            .map(|t| {
                let at = t
                    .cluster_ip
                    .failed_at_secs
                    .iter()
                    .chain(&t.node_port.failed_at_secs)
                    .map(|secs| seconds(*secs))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "sent {at} after the failure, out of the Endpoints after {}",
                    t.endpoints_left_secs.map_or("–".into(), seconds)
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        lines.push(format!(
            "with {}, {} of {} trials ({detail}{})",
            probes.short(),
            failing.len(),
            trials.len(),
            failing
                .iter()
                .find_map(|t| t.errors.first())
                .map_or(String::new(), |e| format!(": `{e}`"))
        ));
    }
    if !lines.is_empty() {
        let _ = writeln!(
            md,
            "**Failed requests while a backend turns unready.** The unready backend keeps serving, yet requests \
             failed {}.\n",
            lines.join("; ")
        );
    }
}

/// The first message of a failed request in the trials of `probes` and `failure`.
fn first_error(results: &FailoverResults, probes: Probes, failure: Failure) -> Option<String> {
    selected(results, probes, failure)
        .iter()
        .find_map(|t| t.errors.first().cloned())
}

/// Where the times come from, with this run's figures.
fn analysis(md: &mut String, results: &FailoverResults) {
    let requests_per_sec = 2.0 / PACE.as_secs_f64();
    if let Some(b) = summarize(results, Probes::Berth, Failure::Unready) {
        let remote = selected(results, Probes::Berth, Failure::Unready)
            .iter()
            .filter(|t| !t.victim_on_client_node && !t.victim_on_node_port_node)
            .count();
        let _ = write!(
            md,
            "**Readiness.** A probe's result changes after `failureThreshold` failed probes `periodSeconds` \
             apart, and the first of them comes 0 to 1 period after the failure: with Berth's defaults the failure \
             is decided within about 1 s. The backend's own agent then takes it out of its node's datapath at once \
             and reports the pod unready; the control plane takes its address out of the Endpoints, and every other \
             node's agent applies that. The failing backend ran on neither client's node in {remote} of {0} trials, \
             so both clients waited for that round trip: the clients' nodes had failed over after {2} (medians; \
             worst {3}), and the backend was seen gone from the Endpoints after {1} (polled, so somewhat late); {4} \
             requests (of {5:.0} a second) still reached it. A readiness \
             failure in an agent's first 5 s would reach the other nodes only after those 5 s (a starting agent holds \
             back unready reports of pods the control plane has as ready until its probes have run); the trials \
             start later than that.",
            b.trials,
            endpoints_left(&b),
            seconds(b.failover_secs),
            seconds(b.failover_max_secs),
            count(b.to_failing),
            requests_per_sec,
        );
        if let Some(k) = summarize(results, Probes::Kubernetes, Failure::Unready) {
            let _ = write!(
                md,
                " With Kubernetes' defaults the same takes 20 to 30 s by construction (three failures 10 s apart): \
                 {} here, with {} requests sent to the unready backend.",
                seconds(k.failover_secs),
                count(k.to_failing)
            );
            if let (Some(kb), Some(bb)) = (k.recovery_secs, b.recovery_secs) {
                let _ = write!(
                    md,
                    " Coming back takes one passing probe (successThreshold 1), so it waits for the next one: \
                     {} with a 1 s period, {} with a 10 s one.",
                    seconds(bb),
                    seconds(kb)
                );
            }
        }
        md.push_str("\n\n");
    }
    resets(md, results);
    if let Some(b) = summarize(results, Probes::Berth, Failure::Killed) {
        let _ = write!(
            md,
            "**Killed container.** No probe notices a killed container: the agent sees it exit (Docker's `die` \
             event), takes it out of its own node's datapath and starts a new container at once — the first restart \
             has no back-off; another within 10 minutes would wait 10 s, like Kubernetes' CrashLoopBackOff, so each \
             kill here takes a pod never killed before. The new container ran after {} and answered after {} \
             (medians; the restart as seen by polling Docker): its first readiness probe runs as it starts, and \
             passes. Its address was seen to leave the Endpoints in {} of {} trials, briefly: the restart is about \
             over before the control plane takes the pod out, so the nodes other than its own keep sending it new \
             connections until about when the new container listens, and those fail{}: {} requests (median), the last {} after the kill (worst {}). Failover after a kill is \
             the restart; a container that stays down (a crash loop's back-off) is not measured here.",
            b.restarted_secs.map_or("–".into(), seconds),
            b.recovery_secs.map_or("–".into(), seconds),
            b.endpoints_left_seen,
            b.trials,
            first_error(results, Probes::Berth, Failure::Killed)
                .map_or(String::new(), |e| format!(" (`{e}`)")),
            count(b.failed),
            seconds(b.failover_secs),
            seconds(b.failover_max_secs),
        );
        if let Some(k) = summarize(results, Probes::Kubernetes, Failure::Killed) {
            let _ = write!(
                md,
                " Kubernetes' probe settings change little here, as no probe decides anything until the new \
                 container's first, which passes: {} failed, failed over after {}, back after {}.",
                count(k.failed),
                seconds(k.failover_secs),
                k.recovery_secs.map_or("–".into(), seconds)
            );
        }
        md.push_str("\n\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::PathOutcome;

    fn trial(probes: Probes, failure: Failure, failover: f64, recovery: f64) -> Trial {
        let path = PathOutcome {
            requests: 100,
            failed: u64::from(failure == Failure::Killed),
            to_failing: if failure == Failure::Unready { 10 } else { 0 },
            failover_secs: failover,
            recovery_secs: Some(recovery),
            failed_at_secs: Vec::new(),
        };
        Trial {
            probes,
            failure,
            repetition: 1,
            victim: "web-1".into(),
            victim_on_client_node: false,
            victim_on_node_port_node: false,
            inject_secs: 0.05,
            restarted_secs: (failure == Failure::Killed).then_some(0.2),
            endpoints_left_secs: (failure == Failure::Unready).then_some(failover),
            endpoints_back_secs: Some(recovery),
            cluster_ip: path.clone(),
            node_port: path,
            errors: Vec::new(),
        }
    }

    fn results(berth_readiness: f64) -> FailoverResults {
        FailoverResults {
            smoke: false,
            started: "2026-12-04 04:00 UTC".into(),
            elapsed_secs: 300.0,
            repetitions: 1,
            pace_ms: 10,
            binaries: "release".into(),
            trials: vec![
                trial(Probes::Berth, Failure::Unready, berth_readiness, 1.0),
                trial(Probes::Berth, Failure::Killed, 0.15, 0.2),
                trial(Probes::Kubernetes, Failure::Unready, 25.0, 5.0),
                trial(Probes::Kubernetes, Failure::Killed, 0.15, 0.2),
            ],
        }
    }

    #[test]
    fn the_target_follows_the_slowest_failover() {
        let mut met = String::new();
        target_row(&mut met, &results(0.7));
        assert!(met.trim_end().ends_with("| met |"), "{met}");
        let mut missed = String::new();
        target_row(&mut missed, &results(1.2));
        assert!(missed.contains("**missed**"), "{missed}");
    }

    #[test]
    fn the_section_compares_the_configurations() {
        let mut md = String::new();
        section(&mut md, &results(0.5), "bench");
        assert!(md.starts_with("## Failover"));
        // Kubernetes' readiness failover over Berth's: 25 s / 0.5 s.
        assert!(md.contains("| readiness fails | 50.0× | 5.0× |"), "{md}");
        assert!(md.contains("bench/failover.svg"));
        let (name, _, svg) = chart(&results(0.5));
        assert_eq!(name, "failover.svg");
        assert_eq!(svg.matches("<title>").count(), 8);
    }
}
