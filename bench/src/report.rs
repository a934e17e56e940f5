//! docs/BENCHMARKS.md, its charts and the raw results, from one run's [`Results`].

use std::{fmt::Write as _, path::Path};

use anyhow::Context as _;

use crate::{
    Mode,
    figures::{median, seconds, thousands},
    policies,
    programming::Step,
    run::{Results, RunRecord},
    svg::{self, BarChart, COLORS, Series},
    wrk::Kind,
};

/// Where the charts and raw results go, relative to the report.
pub const ASSET_DIR: &str = "bench";

/// Why the control plane misses a scale target, where it does (from the measurements).
const SCALE_GAP: &str = "in that run every pod was a JSON document written four times (created, bound, \
    its Scheduled event, reported running) — since then a ReplicaSet's pods and a scheduling pass's bindings \
    are written in one transaction each and Scheduled events aggregated (see Batched writes, below) — each \
    write read back and decoded by the controllers' cache and the watch cache, and each sent to its node; \
    propagation is the pod's status write, the Endpoints write and one delivery per node (HTTP/2 over TLS); \
    all of it on the 2 CPUs the simulated nodes also use";

/// What the control-plane-at-scale figures come from (from the measurements).
const SCALE_ANALYSIS: &str = "**Batched writes, side by side.** Before a ReplicaSet's pods and a \
    scheduling pass's bindings were written in one transaction each and Scheduled events aggregated, both \
    builds ran the 1,000-node part one after the other on the machine of earlier rounds (2026-12-05; commit 73c09f5, then the change; `berth-bench --parts scale --scale-nodes 1000`): \
    the control plane's CPU per scheduled pod went from 1.83 ms to 0.80 ms (0.44 times), scheduling from 478 \
    to 1,796 pods/s, endpoint propagation p99 to every node from 97.0 ms to 71.8 ms, and its memory after \
    the pods from 1408 MiB to 1499 MiB. The profile below is from before that change.\n\n\
    **Where the time goes.** A profile of berth-control while it scheduled pods on \
    1,000 nodes (perf, the machine of earlier rounds): the controllers' own decisions — scheduler, ReplicaSet, garbage \
    collector, Endpoints — are about 5% of its CPU; the rest is writing and serving: a fifth the store's \
    commits (redb's commit and its fsync), a fifth the registry's writes (each pod created, bound, its \
    event, its status report: typed round trips and JSON), a tenth the rest of the nodes' gRPC calls \
    (HTTP/2, TLS, heartbeats), another tenth reading back and decoding each change for the controllers' \
    cache and the watch cache; malloc and free are a fifth of all of it. Before the work done for \
    this part the control plane scheduled 25 pods/s on 200 nodes and took 1.5 s to bring a new endpoint to \
    1,000 nodes. Built for it: heartbeats that change nothing are answered from memory and their periodic \
    refresh writes skip the agents' watches (every heartbeat was a Node write sent to every agent); a \
    watch cache that reads and decodes each store event once for all watchers and sends a pod event only \
    to its node's watch; watch bookmarks at most once a minute (one a second was two messages a second per \
    agent, as many as an Endpoints change sent to every node, all the time); an index in the controllers' \
    snapshots kept change by change (kube-scheduler's cache, client-go's indexers: what the pods bound to \
    each node request, each owner's pods per node, its live and ready pods, every Node parsed once), so a \
    scheduling pass costs one pass over the nodes and a ReplicaSet a look-up, not a pass over every pod; \
    the Endpoints controller in a loop of its own beside the other controllers', so a ready pod's \
    Endpoints write never waits behind thousands of creations or bindings; snapshots that share objects \
    and structure (persistent maps) instead of copying them; ReplicaSets that create pods in slow-start batches of up to 2,000; a node's \
    status report written with one read of the store; a ReplicaSet's round of pods created, and a \
    scheduling batch's pods bound, in one transaction each (a binding changes only the pod's node, as \
    Kubernetes' binding subresource does); Scheduled events aggregated, as Kubernetes' event aggregator \
    does (a batch of 2,000 bindings writes 11 events). Next: a typed controllers' cache, one decode of \
    each store event for both caches, cheaper commits, and an allocator that suits the many small JSON \
    values. Joining grows with the \
    square of the node count: each agent lists every Node when it starts watching, and each new Node goes \
    to every agent (agents need all Nodes for their pod ranges and addresses). With 5,000 nodes the \
    heartbeats alone are 2,500 calls and 500 status refresh writes a second, on the same 2 CPUs as the \
    controllers and the simulated nodes, which is why propagation is slower there than with 1,000.";

/// Medians over the rounds of one mode at one service count.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_us: f64,
    pub errors: u64,
    pub requests: u64,
    pub background_cores: f64,
}

pub fn summarize(runs: &[RunRecord], kind: Kind, mode: Mode, services: usize) -> Option<Summary> {
    let selected: Vec<&RunRecord> = runs
        .iter()
        .filter(|r| {
            r.kind == kind && r.mode == mode && (!mode.has_services() || r.services == services)
        })
        .collect();
    if selected.is_empty() {
        return None;
    }
    let pick = |f: &dyn Fn(&RunRecord) -> f64| {
        let mut values: Vec<f64> = selected.iter().map(|r| f(r)).collect();
        median(&mut values).unwrap_or(0.0)
    };
    Some(Summary {
        rate: pick(&|r| r.wrk.requests_per_sec),
        p50_us: pick(&|r| r.wrk.p50_us),
        p99_us: pick(&|r| r.wrk.p99_us),
        cpu_us: pick(&|r| r.cpu_us_per_request),
        errors: selected.iter().map(|r| r.wrk.errors).sum(),
        requests: selected.iter().map(|r| r.wrk.requests).sum(),
        background_cores: pick(&|r| r.background_cores),
    })
}

fn programming_median(results: &Results, mode: Mode, services: usize, step: Step) -> Option<f64> {
    let mut values: Vec<f64> = results
        .programming
        .iter()
        .filter(|r| r.mode == mode && r.services == services && r.step == step)
        .map(|r| r.seconds)
        .collect();
    median(&mut values)
}

fn programming_detail(results: &Results, mode: Mode, services: usize, step: Step) -> String {
    results
        .programming
        .iter()
        .find(|r| r.mode == mode && r.services == services && r.step == step)
        .map(|r| r.detail.clone())
        .unwrap_or_default()
}

fn rate(value: f64) -> String {
    thousands(value.round() as usize)
}

fn micros(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.1} ms", value / 1000.0)
    } else {
        format!("{value:.0} µs")
    }
}

fn ratio(value: f64, reference: f64) -> String {
    if reference > 0.0 {
        format!("{:.2}", value / reference)
    } else {
        "–".into()
    }
}

const SERVICE_MODES: [Mode; 3] = [Mode::Ebpf, Mode::Iptables, Mode::Haproxy];

fn mode_color(mode: Mode) -> &'static str {
    match mode {
        Mode::Ebpf | Mode::EbpfPolicies => COLORS[0],
        Mode::EbpfPerPacket => COLORS[5],
        Mode::Iptables => COLORS[1],
        Mode::Haproxy => COLORS[2],
        Mode::Direct => COLORS[4],
        Mode::DirectOne => COLORS[3],
        Mode::DirectEbpfAttached => COLORS[5],
    }
}

/// Charts: (file name, alt text, svg).
fn charts(results: &Results) -> Vec<(String, String, String)> {
    let counts = &results.parameters.services;
    let groups: Vec<String> = counts
        .iter()
        .map(|n| format!("{} services", thousands(*n)))
        .collect();
    let series = |kind: Kind, value: fn(&Summary) -> f64| -> Vec<Series> {
        SERVICE_MODES
            .iter()
            .map(|mode| Series {
                name: mode.label().to_owned(),
                color: mode_color(*mode),
                values: counts
                    .iter()
                    .map(|n| summarize(&results.runs, kind, *mode, *n).map(|s| value(&s)))
                    .collect(),
            })
            .collect()
    };
    let direct = |kind: Kind, value: fn(&Summary) -> f64| {
        summarize(&results.runs, kind, Mode::Direct, 0).map(|s| {
            (
                format!("direct, 3 pod IPs: {}", svg::compact(value(&s))),
                value(&s),
            )
        })
    };
    let mut charts = vec![
        (
            "requests.svg".to_owned(),
            "Keep-alive requests per second by mode and service count".to_owned(),
            svg::bar_chart(&BarChart {
                title: "HTTP requests/s over keep-alive connections (higher is better)".into(),
                y_label: "requests/s".into(),
                groups: groups.clone(),
                series: series(Kind::KeepAlive, |s| s.rate),
                reference: direct(Kind::KeepAlive, |s| s.rate),
                log: false,
                format: svg::compact,
            }),
        ),
        (
            "p99.svg".to_owned(),
            "p99 latency by mode and service count".to_owned(),
            svg::bar_chart(&BarChart {
                title: "p99 latency, keep-alive, µs (lower is better)".into(),
                y_label: "p99 latency (µs)".into(),
                groups: groups.clone(),
                series: series(Kind::KeepAlive, |s| s.p99_us),
                reference: direct(Kind::KeepAlive, |s| s.p99_us),
                log: false,
                format: svg::compact,
            }),
        ),
        (
            "connections.svg".to_owned(),
            "New connections per second by mode and service count".to_owned(),
            svg::bar_chart(&BarChart {
                title: "New TCP connections/s, one request each (higher is better)".into(),
                y_label: "connections/s".into(),
                groups: groups.clone(),
                series: series(Kind::NewConnections, |s| s.rate),
                reference: direct(Kind::NewConnections, |s| s.rate),
                log: false,
                format: svg::compact,
            }),
        ),
        (
            "cpu.svg".to_owned(),
            "CPU time per request by mode and service count".to_owned(),
            svg::bar_chart(&BarChart {
                title: "CPU per keep-alive request, µs, whole path (lower is better)".into(),
                y_label: "CPU µs per request".into(),
                groups,
                series: series(Kind::KeepAlive, |s| s.cpu_us),
                reference: direct(Kind::KeepAlive, |s| s.cpu_us),
                log: false,
                format: svg::compact,
            }),
        ),
    ];
    let prog_groups: Vec<String> = counts
        .iter()
        .map(|n| format!("{} services", thousands(*n)))
        .collect();
    let mut prog_series = Vec::new();
    for (mode, step, name, color) in [
        (
            Mode::Ebpf,
            Step::Full,
            "Berth eBPF: all services",
            COLORS[0],
        ),
        (
            Mode::Iptables,
            Step::Full,
            "iptables-restore: all services",
            COLORS[1],
        ),
        (
            Mode::Ebpf,
            Step::OneChange,
            "Berth eBPF: one change",
            COLORS[3],
        ),
        (
            Mode::Iptables,
            Step::OneChange,
            "iptables-restore: one change",
            COLORS[5],
        ),
    ] {
        prog_series.push(Series {
            name: name.into(),
            color,
            values: counts
                .iter()
                .map(|n| programming_median(results, mode, *n, step))
                .collect(),
        });
    }
    charts.push((
        "programming.svg".to_owned(),
        "Programming time, Berth against iptables-restore".to_owned(),
        svg::bar_chart(&BarChart {
            title: format!(
                "Programming time, {} endpoints per service, seconds (log scale, lower is better)",
                results.parameters.dummy_backends
            ),
            y_label: "seconds".into(),
            groups: prog_groups,
            series: prog_series,
            reference: None,
            log: true,
            format: |v| {
                if v < 0.001 {
                    format!("{:.0}µs", v * 1e6)
                } else if v < 1.0 {
                    format!("{:.1}ms", v * 1e3)
                } else {
                    format!("{v:.1}s")
                }
            },
        }),
    ));
    if let Some(failover) = &results.failover {
        charts.push(crate::failover_report::chart(failover));
    }
    if let Some(scale) = &results.scale {
        charts.extend(crate::scale_report::charts(scale));
    }
    charts
}

/// The report's markdown. `command` is how this run was started.
pub fn markdown(results: &Results, command: &str) -> String {
    let p = &results.parameters;
    let counts = &p.services;
    let max_n = counts.iter().copied().max().unwrap_or(0);
    let min_n = counts.iter().copied().min().unwrap_or(0);
    let runs = &results.runs;
    let direct_ka = summarize(runs, Kind::KeepAlive, Mode::Direct, 0).unwrap_or_default();
    let direct_nc = summarize(runs, Kind::NewConnections, Mode::Direct, 0).unwrap_or_default();
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "<!-- Generated by `cargo xtask bench` (bench/src/report.rs). Edit the generator, not this file. -->\n"
    );
    if p.smoke {
        let _ = writeln!(
            md,
            "> **Smoke run** ({} s per run, {} round): shows that the benchmark works, not how fast anything is.\n",
            p.duration_secs, p.rounds
        );
    }
    let _ = writeln!(
        md,
        "Berth's eBPF datapath side by side with what users run today, measured in one run on one machine \
         ({}), {}. Reproduce with:\n\n```sh\n{command}\n```\n\n\
         It takes about {:.0} minutes; `cargo xtask bench --smoke` is the seconds-long version CI runs. \
         Raw results: [{ASSET_DIR}/results.json]({ASSET_DIR}/results.json).\n",
        results.machine.cpu_model,
        results.started,
        ((results.elapsed_secs
            + results.failover.as_ref().map_or(0.0, |f| f.elapsed_secs)
            + results.scale.as_ref().map_or(0.0, |s| s.elapsed_secs)
            + results.agents.as_ref().map_or(0.0, |a| a.elapsed_secs))
            / 60.0)
            .ceil()
    );

    // Targets.
    let _ = writeln!(md, "## Targets (issue 8)\n");
    let _ = writeln!(md, "| target | measured | |");
    let _ = writeln!(md, "|---|---|---|");
    let mut rate_ratios = Vec::new();
    let mut p99_ratios = Vec::new();
    for n in counts {
        if let Some(s) = summarize(runs, Kind::KeepAlive, Mode::Ebpf, *n) {
            rate_ratios.push((*n, s.rate / direct_ka.rate.max(1e-9)));
            p99_ratios.push((*n, s.p99_us / direct_ka.p99_us.max(1e-9)));
        }
    }
    let list = |ratios: &[(usize, f64)]| {
        ratios
            .iter()
            .map(|(n, r)| format!("{r:.2} ({} svc)", thousands(*n)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    let worst_rate = rate_ratios
        .iter()
        .map(|(_, r)| *r)
        .fold(f64::INFINITY, f64::min);
    let worst_p99 = p99_ratios.iter().map(|(_, r)| *r).fold(0.0, f64::max);
    // Without the datapath part (a run of other parts alone) there is nothing to judge.
    if !rate_ratios.is_empty() {
        let _ = writeln!(
            md,
            "| eBPF VIP requests/s ≥ 0.95 × direct | {} | {} |",
            list(&rate_ratios),
            verdict(worst_rate >= 0.95)
        );
        let _ = writeln!(
            md,
            "| eBPF VIP p99 ≤ 1.10 × direct | {} | {} |",
            list(&p99_ratios),
            verdict(worst_p99 <= 1.10)
        );
    }
    let change = |mode: Mode, kind: Kind| {
        let first = summarize(runs, kind, mode, min_n)?.rate;
        let last = summarize(runs, kind, mode, max_n)?.rate;
        Some(last / first - 1.0)
    };
    if let (Some(ebpf), Some(ipt)) = (
        change(Mode::Ebpf, Kind::KeepAlive),
        change(Mode::Iptables, Kind::KeepAlive),
    ) {
        let ebpf_nc = change(Mode::Ebpf, Kind::NewConnections).unwrap_or(0.0);
        let ipt_nc = change(Mode::Iptables, Kind::NewConnections).unwrap_or(0.0);
        // CPU per new connection: the steadier sign of a per-service cost on a busy machine.
        let cpu_change = |mode: Mode| {
            let first = summarize(runs, Kind::NewConnections, mode, min_n)?.cpu_us;
            let last = summarize(runs, Kind::NewConnections, mode, max_n)?.cpu_us;
            Some((last / first - 1.0) * 100.0)
        };
        let _ = writeln!(
            md,
            "| flat from {} to {} services (≤ 5% change) while iptables degrades | eBPF {:+.1}% requests/s, {:+.1}% connections/s, {:+.0}% CPU/connection; iptables {:+.1}% requests/s, {:+.1}% connections/s, {:+.0}% CPU/connection | {} |",
            thousands(min_n),
            thousands(max_n),
            ebpf * 100.0,
            ebpf_nc * 100.0,
            cpu_change(Mode::Ebpf).unwrap_or(0.0),
            ipt * 100.0,
            ipt_nc * 100.0,
            cpu_change(Mode::Iptables).unwrap_or(0.0),
            verdict(ebpf.abs() <= 0.05 && ebpf_nc.abs() <= 0.05)
        );
    }
    if let Some(full) = programming_median(results, Mode::Ebpf, max_n, Step::Full) {
        let ipt = programming_median(results, Mode::Iptables, max_n, Step::Full);
        let _ = writeln!(
            md,
            "| programming {} services in under 1 s | {} (iptables-restore: {}) | {} |",
            thousands(max_n),
            seconds(full),
            ipt.map_or("–".into(), seconds),
            verdict(full < 1.0)
        );
    }
    if let Some(failover) = &results.failover {
        crate::failover_report::target_row(&mut md, failover);
    }
    if let Some(scale) = &results.scale {
        crate::scale_report::target_rows(&mut md, scale, SCALE_GAP);
    }
    md.push('\n');

    // Summary ratios.
    let _ = writeln!(
        md,
        "## Summary: Berth eBPF against the limit and each baseline\n"
    );
    let _ = writeln!(
        md,
        "Ratios of medians; above 1 is better for requests/s and connections/s, below 1 is better for p99 and CPU.\n"
    );
    let _ = writeln!(
        md,
        "| services | vs | requests/s | p99 | CPU/request | new connections/s |"
    );
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|");
    for n in counts {
        let (Some(e_ka), Some(e_nc)) = (
            summarize(runs, Kind::KeepAlive, Mode::Ebpf, *n),
            summarize(runs, Kind::NewConnections, Mode::Ebpf, *n),
        ) else {
            continue;
        };
        for (label, mode) in [
            ("direct (limit)", Mode::Direct),
            ("iptables", Mode::Iptables),
            ("HAProxy", Mode::Haproxy),
        ] {
            let (Some(ka), Some(nc)) = (
                summarize(runs, Kind::KeepAlive, mode, *n),
                summarize(runs, Kind::NewConnections, mode, *n),
            ) else {
                continue;
            };
            let _ = writeln!(
                md,
                "| {} | {label} | {} | {} | {} | {} |",
                thousands(*n),
                ratio(e_ka.rate, ka.rate),
                ratio(e_ka.p99_us, ka.p99_us),
                ratio(e_ka.cpu_us, ka.cpu_us),
                ratio(e_nc.rate, nc.rate)
            );
        }
    }
    md.push('\n');

    // Per-mode tables.
    let _ = writeln!(md, "## Request/response over keep-alive connections\n");
    let _ = writeln!(
        md,
        "wrk, {} threads, {} connections, {} s per run, HTTP GET of a 7-byte body; medians of {} interleaved rounds. \
         CPU is the whole machine's cost of a request: client, backends, proxy and the kernel work they cause.\n",
        p.threads, p.connections, p.duration_secs, p.rounds
    );
    let _ = writeln!(
        md,
        "| path | services | requests/s | ÷ direct | p50 | p99 | p99 ÷ direct | CPU/request | errors |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows: Vec<(Mode, usize)> = vec![
        (Mode::Direct, 0),
        (Mode::DirectOne, 0),
        (Mode::DirectEbpfAttached, 0),
    ];
    for mode in SERVICE_MODES {
        for n in counts {
            rows.push((mode, *n));
        }
        if mode == Mode::Ebpf {
            rows.push((Mode::EbpfPerPacket, min_n));
            rows.push((Mode::EbpfPolicies, min_n));
        }
    }
    for (mode, n) in &rows {
        if let Some(s) = summarize(runs, Kind::KeepAlive, *mode, *n) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {:.1} µs | {} |",
                mode.label(),
                if mode.has_services() {
                    thousands(*n)
                } else {
                    "–".into()
                },
                rate(s.rate),
                ratio(s.rate, direct_ka.rate),
                micros(s.p50_us),
                micros(s.p99_us),
                ratio(s.p99_us, direct_ka.p99_us),
                s.cpu_us,
                s.errors
            );
        }
    }
    let _ = writeln!(md, "\n![Requests per second]({ASSET_DIR}/requests.svg)\n");
    let _ = writeln!(md, "![p99 latency]({ASSET_DIR}/p99.svg)\n");
    let _ = writeln!(md, "![CPU per request]({ASSET_DIR}/cpu.svg)\n");

    let _ = writeln!(md, "## New connections per second\n");
    let _ = writeln!(
        md,
        "The same load with `Connection: close`: every request opens a TCP connection, so each request pays a connection's setup \
         (for a ClusterIP: the service lookup and backend choice, and whatever the path keeps per connection).\n"
    );
    let _ = writeln!(
        md,
        "| path | services | connections/s | ÷ direct | p99 | CPU/connection | errors |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for (mode, n) in &rows {
        if let Some(s) = summarize(runs, Kind::NewConnections, *mode, *n) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {:.1} µs | {} |",
                mode.label(),
                if mode.has_services() {
                    thousands(*n)
                } else {
                    "–".into()
                },
                rate(s.rate),
                ratio(s.rate, direct_nc.rate),
                micros(s.p99_us),
                s.cpu_us,
                s.errors
            );
        }
    }
    let _ = writeln!(
        md,
        "\n![New connections per second]({ASSET_DIR}/connections.svg)\n"
    );
    connection_targets(&mut md, results);

    // Programming.
    let _ = writeln!(md, "## Programming time\n");
    let _ = writeln!(
        md,
        "From N services (the measured one with its 3 backends, every other with {} endpoints) to serving them, \
         and one endpoint change among them. Medians of {} repetitions (a change and its reversal each count). \
         Berth: `Datapath::apply` into freshly created maps (the programs read the maps per packet: when apply \
         returns, the services are served — checked with a request through the measured service each time). \
         iptables: `iptables-legacy-restore --noflush` of the rules kube-proxy writes in a full sync, into empty \
         tables; the change is what kube-proxy 1.28+ writes for it (a partial sync: the top-level chains in full, \
         the changed service's chains). HAProxy: from process start until the measured service answers (a reload \
         parses the whole configuration the same way).\n",
        p.dummy_backends, p.programming_reps
    );
    let _ = writeln!(
        md,
        "| path | services | all services | one change | what is written |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---|");
    for mode in SERVICE_MODES {
        for n in counts {
            let Some(full) = programming_median(results, mode, *n, Step::Full) else {
                continue;
            };
            let change = programming_median(results, mode, *n, Step::OneChange);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                mode.label(),
                thousands(*n),
                seconds(full),
                change.map_or("–".into(), seconds),
                programming_detail(results, mode, *n, Step::Full)
            );
        }
    }
    if let Some(open) = programming_median(results, Mode::Ebpf, max_n, Step::Open) {
        let _ = writeln!(
            md,
            "\nOpening Berth's datapath once at agent start (load and verify the programs, create the maps, attach to \
             the pod veths) took {} more; it is not repeated per change.",
            seconds(open)
        );
    }
    let _ = writeln!(md, "\n![Programming time]({ASSET_DIR}/programming.svg)\n");

    analysis(&mut md, results);

    if let Some(failover) = &results.failover {
        crate::failover_report::section(&mut md, failover, ASSET_DIR);
    }
    if let Some(scale) = &results.scale {
        crate::scale_report::section(&mut md, scale, ASSET_DIR, SCALE_ANALYSIS);
    }
    if let Some(store) = &results.store {
        crate::store::section(&mut md, store);
    }
    if let Some(agents) = &results.agents {
        crate::agents_report::section(&mut md, agents);
    }

    // Method.
    let _ = writeln!(md, "## How it is measured\n");
    let _ = writeln!(
        md,
        "- **Topology**: berth-tests' `Cluster` — network namespaces on one machine. One node namespace per path \
         and service count, so the paths never share rules, programs or connection tracking; on each node a client \
         pod and three backend pods, wired by the agent's own pod networking (`podnet`: a veth per pod, /32 routes, \
         the node routes between pods). Every path crosses the same two veths each way.\n\
         - **Backends**: nginx, one worker process each (`master_process off`), answering `200` with a 7-byte body \
         — the server this machine's earlier iptables/HAProxy baselines were measured with; an \
         event loop with a small, well-known cost per request, so differences come from the path, not the server.\n\
         - **Paths**: *direct (3 pod IPs)* — the limit: the client spreads its threads over the three backends' pod \
         IPs itself (wrk's `setup`/`thread.addr`), so as many server processes are busy as behind a VIP; *direct (1 \
         pod IP)* — one backend; *Berth eBPF* — the ClusterIP translated by Berth's TC programs on the pod veths \
         (round robin for east-west flows, connection tracking) and handed straight into the destination pod \
         (`bpf_redirect_peer`), maps programmed with `Datapath::apply`; *direct, Berth programs attached* — the \
         direct client on a node where Berth's programs are attached (nothing to translate, same shortcut); *iptables (kube-proxy)* — \
         KUBE-SERVICES → KUBE-SVC-* (`statistic --mode random`) → KUBE-SEP-* (DNAT), plus kube-proxy's filter \
         rules, loaded into iptables-legacy (iptables-nft needed 6.8 s for 1,000 services and did not finish 10,000 \
         in 45 minutes on the machine of earlier rounds, see the notes); *HAProxy* — TCP mode, round robin, one `listen` per \
         service, in the node namespace with the VIPs local.\n\
         - **Services**: N services with a VIP each; the measured one sits in the middle of the list (a linear rule \
         walk passes half the others), the rest have {} endpoints each.\n\
         - **Load**: wrk {}, {} threads × {} connections total, closed loop, {} s per run, after a 1 s warm-up of every \
         path. One connection per thread by default, because wrk assigns addresses per thread: with several \
         connections per thread, each direct thread talks to one backend only and its requests reach that server \
         in batches (one wakeup serves many), a pattern no VIP can reproduce — it spreads each thread's \
         connections over all backends. In trial runs on the machine of earlier rounds, with the same programs, Berth's VIP \
         measured 0.86 × direct with 3 threads × 10 connections and 1.19 × direct with 30 × 1: the difference \
         came from the client's shape, not from the path. New connections are measured with wrk and, for \
         direct and the ClusterIP, with berth-bench's own client as well (`berth-connect-loop`: as many threads, one \
         connection each at a time, each connection to the next address in turn; see New connections through a \
         ClusterIP). Rounds interleave the paths (a b c … a b c …) so drifts of the machine hit all of them alike; tables \
         show medians.\n\
         - **CPU per request**: CPU time of the benchmark's cgroup (wrk, nginx, HAProxy) plus the kernel's softirq \
         threads, over the run, divided by the requests. This kernel has no IRQ time accounting, so the network \
         stack's work is charged to the process it runs for — on veths, mostly the sender — and the figure is the \
         whole path's cost. Other work on the machine used a median of {:.2} CPUs during the runs (the runs share the \
         {} CPUs with it).\n\
         - **Not measured**: IPVS (kube-proxy's ipvs mode) — this kernel is built without IPVS (`CONFIG_IP_VS` unset, \
         no loadable modules), so there is no IPVS to measure.\n",
        p.dummy_backends,
        results
            .machine
            .tools
            .iter()
            .find(|(name, _)| name == "wrk")
            .map_or("", |(_, v)| v.as_str()),
        p.threads,
        p.connections,
        p.duration_secs,
        {
            let mut bg: Vec<f64> = runs.iter().map(|r| r.background_cores).collect();
            median(&mut bg).unwrap_or(0.0)
        },
        results.machine.cpus
    );

    let _ = writeln!(md, "## The machine\n");
    let m = &results.machine;
    let _ = writeln!(
        md,
        "{} · {} CPUs · {:.0} GiB · {} · Linux {}\n",
        m.cpu_model, m.cpus, m.memory_gib, m.os, m.kernel
    );
    for (tool, version) in &m.tools {
        let _ = writeln!(md, "- {tool}: `{version}`");
    }
    md.push('\n');

    let _ = writeln!(md, "<details><summary>Every run</summary>\n");
    let _ = writeln!(
        md,
        "| round | load | path | services | rate/s | p50 | p99 | CPU/request | other load (CPUs) | errors |"
    );
    let _ = writeln!(md, "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} µs | {:.2} | {} |",
            r.round,
            r.kind.label(),
            r.mode.label(),
            if r.mode.has_services() {
                thousands(r.services)
            } else {
                "–".into()
            },
            rate(r.wrk.requests_per_sec),
            micros(r.wrk.p50_us),
            micros(r.wrk.p99_us),
            r.cpu_us_per_request,
            r.background_cores,
            r.wrk.errors
        );
    }
    let _ = writeln!(md, "\n</details>");
    md
}

/// Each round's ratio of `mode`'s new connections/s to `reference`'s (the two measured
/// within a minute of each other), sorted.
fn round_ratios(
    runs: &[RunRecord],
    kind: Kind,
    mode: (Mode, usize),
    reference: (Mode, usize),
) -> Vec<f64> {
    let rate = |round: u32, (mode, n): (Mode, usize)| {
        runs.iter()
            .find(|r| {
                r.round == round
                    && r.kind == kind
                    && r.mode == mode
                    && (!mode.has_services() || r.services == n)
            })
            .map(|r| r.wrk.requests_per_sec)
    };
    let mut rounds: Vec<u32> = runs.iter().map(|r| r.round).collect();
    rounds.dedup();
    let mut ratios: Vec<f64> = rounds
        .into_iter()
        .filter_map(|round| Some(rate(round, mode)? / rate(round, reference)?))
        .filter(|ratio| ratio.is_finite())
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios
}

/// The new-connection targets of issues 25 and 22: a ClusterIP against direct at the
/// smallest and largest service counts, and with 1,000 NetworkPolicies against without.
fn connection_targets(md: &mut String, results: &Results) {
    let runs = &results.runs;
    let counts = &results.parameters.services;
    let min_n = counts.iter().copied().min().unwrap_or(0);
    let max_n = counts.iter().copied().max().unwrap_or(0);
    let mut rows = Vec::new();
    let mut push_of = |kind: Kind, what: String, mode: (Mode, usize), reference: (Mode, usize)| {
        let nc = |(mode, n): (Mode, usize)| summarize(runs, kind, mode, n);
        if let (Some(a), Some(b)) = (nc(mode), nc(reference)) {
            rows.push((what, a, b, round_ratios(runs, kind, mode, reference)));
        }
    };
    let direct = (Mode::Direct, 0);
    let service_counts = if min_n == max_n {
        vec![min_n]
    } else {
        vec![min_n, max_n]
    };
    for (kind, client) in [
        (Kind::NewConnections, "wrk"),
        (
            Kind::SpreadConnections,
            "each connection to the next backend",
        ),
    ] {
        for n in &service_counts {
            push_of(
                kind,
                format!(
                    "ClusterIP at {} services ÷ direct (3 pod IPs), {client}",
                    thousands(*n)
                ),
                (Mode::Ebpf, *n),
                direct,
            );
        }
    }
    push_of(
        Kind::SpreadConnections,
        "direct, Berth programs attached ÷ direct, each connection to the next backend".into(),
        (Mode::DirectEbpfAttached, 0),
        direct,
    );
    let mut push = |what: String, mode: (Mode, usize), reference: (Mode, usize)| {
        push_of(Kind::NewConnections, what, mode, reference)
    };
    push(
        format!(
            "ClusterIP with {} NetworkPolicies ÷ without ({} services)",
            thousands(policies::POLICIES),
            thousands(min_n)
        ),
        (Mode::EbpfPolicies, min_n),
        (Mode::Ebpf, min_n),
    );
    push(
        format!(
            "per-packet translation only ÷ direct ({} services)",
            thousands(min_n)
        ),
        (Mode::EbpfPerPacket, min_n),
        direct,
    );
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "### New connections through a ClusterIP (issues 25 and 22)\n"
    );
    let _ = writeln!(
        md,
        "Goal: at least 0.95 for the ClusterIP rows and the policies row. Ratio of the medians, and the lowest \
         and highest of the rounds' own ratios (both measured within a minute of each other in each round). \
         Two clients, each the same for the direct and the ClusterIP runs it compares: *wrk* (the tables above) \
         gives each of its threads one address for the whole run, so its direct threads each keep one backend, \
         while through the ClusterIP each thread's next connection goes to the next backend; *each connection to \
         the next backend* is berth-bench's own closed-loop client (`berth-connect-loop`, {} threads, one \
         connection each at a time, `Connection: close`), whose threads send each connection to the next of the \
         three pod IPs in turn, as the ClusterIP's load balancer does — so its two runs differ in the path alone. \
         The policies: \
         one isolates the three backends and lets in TCP to their port from pods labelled `role: client` in any \
         namespace (the client and 500 other pods, each its own identity); {} others select other labels in \
         {} other namespaces, over {} pods in all, half of them on the measured node (isolated there too). \
         Compiled by the agent's policy compiler and written by its map writer.\n",
        results.parameters.threads,
        thousands(policies::POLICIES - 1),
        policies::NAMESPACES,
        thousands(policies::PODS)
    );
    let _ = writeln!(
        md,
        "| comparison | connections/s | against | ratio | rounds' ratios |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    for (what, a, b, ratios) in rows {
        let range = match (ratios.first(), ratios.last()) {
            (Some(lo), Some(hi)) => format!("{lo:.2}–{hi:.2}"),
            _ => "–".into(),
        };
        let _ = writeln!(
            md,
            "| {what} | {} | {} | {} | {range} |",
            rate(a.rate),
            rate(b.rate),
            ratio(a.rate, b.rate)
        );
    }
    md.push('\n');
}

/// Where the gaps come from: the figures that explain them, computed from this run; the
/// explanations are what the code and the kernel do (see the comments in bench/src).
fn analysis(md: &mut String, results: &Results) {
    let runs = &results.runs;
    let counts = &results.parameters.services;
    let max_n = counts.iter().copied().max().unwrap_or(0);
    let min_n = counts.iter().copied().min().unwrap_or(0);
    let _ = writeln!(md, "## Where the gaps come from\n");
    let ka = |mode: Mode, n: usize| summarize(runs, Kind::KeepAlive, mode, n);
    let nc = |mode: Mode, n: usize| summarize(runs, Kind::NewConnections, mode, n);
    if let (Some(direct), Some(attached), Some(ebpf), Some(ipt)) = (
        ka(Mode::Direct, 0),
        ka(Mode::DirectEbpfAttached, 0),
        ka(Mode::Ebpf, min_n),
        ka(Mode::Iptables, min_n),
    ) {
        let spread = |mode: Mode| {
            let rates: Vec<f64> = runs
                .iter()
                .filter(|r| r.kind == Kind::KeepAlive && r.mode == mode)
                .map(|r| r.wrk.requests_per_sec)
                .collect();
            let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = rates.iter().copied().fold(0.0, f64::max);
            (lo, hi)
        };
        let (lo, hi) = spread(Mode::Direct);
        let _ = writeln!(
            md,
            "**Requests/s and CPU against direct.** The client, the three nginx workers and the kernel's network \
             work share {cpus} CPUs and keep them busy, so requests/s follows the inverse of the CPU a request \
             costs. Medians per keep-alive request: direct {:.1} µs; direct with Berth's programs attached to the \
             pod veths but nothing to translate (each packet parsed, the service map and the connection table \
             looked up, then passed on) {:.1} µs; through Berth's ClusterIP {:.1} µs; through iptables {:.1} µs. \
             What Berth adds per packet: the lookups above, a DNAT of each request packet on the client's veth and \
             the reverse of each reply on the backend's, checksum fixes through kernel helpers, and the write \
             itself — TCP's transmitted packets are clones (the original stays queued for retransmission), so the \
             kernel copies a clone's headers before a program may change them. iptables' NAT pays the same per \
             packet, plus netfilter's hooks and connection tracking; direct pays none of it. Per-packet \
             translation costs a little on every packet; what Berth saves is larger: a packet for a pod on the same \
             node is handed straight into that pod's namespace (`bpf_redirect_peer` after a FIB lookup), skipping \
             the node's routing, netfilter hooks and the second veth's backlog queue that the direct path (plain \
             Linux routing between pod veths) goes through. The direct client on a node with Berth's programs \
             shows the shortcut alone.\n\n\
             These differences are a few µs per request, while the machine's other work moved direct's own \
             requests/s between {} and {} from round to round: single ratios in the tables above carry that \
             noise (the per-request CPU figures much less of it).\n",
            direct.cpu_us,
            attached.cpu_us,
            ebpf.cpu_us,
            ipt.cpu_us,
            rate(lo),
            rate(hi),
            cpus = results.machine.cpus,
        );
    }
    let per_flow = (
        nc(Mode::Direct, 0),
        nc(Mode::DirectOne, 0),
        nc(Mode::DirectEbpfAttached, 0),
        nc(Mode::EbpfPerPacket, min_n),
        nc(Mode::Ebpf, min_n),
        nc(Mode::EbpfPolicies, min_n),
    );
    if let (Some(direct), Some(one), Some(attached), Some(packet), Some(socket), Some(policies)) =
        per_flow
    {
        let _ = writeln!(
            md,
            "**New connections.** CPU per new connection (medians): direct {:.1} µs; direct to one pod IP \
             {:.1} µs; direct with Berth's programs attached to the veths {:.1} µs; through a ClusterIP \
             translated per packet (the client's namespace not registered with the socket program) {:.1} µs; \
             through a ClusterIP set up at `connect()` {:.1} µs; the same with {} NetworkPolicies {:.1} µs. \
             Translated per packet, a new connection pays the service lookup on every packet of the client's \
             veth, a forward and a reverse conntrack entry written (the half-open table first, then the main \
             one), a DNAT of every request packet and an SNAT of every reply, and the client's kernel picks \
             its source port among its recent connections to one address, the VIP. At `connect()` the socket \
             program chooses the backend once and the socket connects to it, so none of that remains \
             ([DATAPATH.md](DATAPATH.md#connections-set-up-at-connect)): {:.1} µs less per connection in \
             this run. What remains above direct is what the veths' programs do on every packet whatever it \
             is (parse, the anti-spoofing check, the service and connection-table lookups that miss, the \
             policy lookups, the redirect past the node's stack) — the attached-only row shows it — plus \
             the socket program's choice at each `connect()`. With policies, the backends' veths also look \
             up the backend's isolation and the client's verdict on each packet (a hash lookup each); the \
             client's identity and the backend's rules (an LPM trie each) only for a peer and port not seen \
             since the policies last changed ([DATAPATH.md](DATAPATH.md#networkpolicy)).\n",
            direct.cpu_us,
            one.cpu_us,
            attached.cpu_us,
            packet.cpu_us,
            socket.cpu_us,
            thousands(policies::POLICIES),
            policies.cpu_us,
            packet.cpu_us - socket.cpu_us,
        );
    }
    if let (Some(e1), Some(e2), Some(i1), Some(i2)) = (
        nc(Mode::Ebpf, min_n),
        nc(Mode::Ebpf, max_n),
        nc(Mode::Iptables, min_n),
        nc(Mode::Iptables, max_n),
    ) {
        let pct = |a: f64, b: f64| (b / a - 1.0) * 100.0;
        let _ = writeln!(
            md,
            "**Service count.** Berth finds a service with one hash lookup whatever the count; kube-proxy's \
             KUBE-SERVICES chain is a list that the first packet of every connection walks until its service's \
             rule (half of it for the service measured here), while established connections skip the nat table \
             (conntrack remembers the translation). CPU per new connection, {} → {} services: Berth {:.1} → {:.1} µs \
             ({:+.0}%), iptables {:.1} → {:.1} µs ({:+.0}%).\n",
            thousands(min_n),
            thousands(max_n),
            e1.cpu_us,
            e2.cpu_us,
            pct(e1.cpu_us, e2.cpu_us),
            i1.cpu_us,
            i2.cpu_us,
            pct(i1.cpu_us, i2.cpu_us),
        );
    }
    let mut backgrounds: Vec<f64> = runs.iter().map(|r| r.background_cores).collect();
    let background = median(&mut backgrounds).unwrap_or(0.0);
    let _ = writeln!(
        md,
        "**Tail latency.** On {} CPUs, wrk's threads, three nginx workers and the kernel's packet \
         processing take turns, and the machine also ran other work (a median of {:.2} CPUs' worth during the \
         runs), so p99 is set by scheduling — milliseconds — not by the datapath's microseconds, and it varies \
         from round to round more than the paths differ. The benchmark's processes run at nice -20 and ask for \
         a 0.1 ms scheduler slice so that they preempt other work at wakeup; p50 is the steadier comparison. \
         Keep-alive connections are balanced per connection: Berth's round robin gives each backend the same \
         number of a client's connections, as the direct client does; iptables' random choice (and a Maglev \
         hash) splits a few dozen connections unevenly — one more way for the busiest backend to set the tail.\n",
        results.machine.cpus, background
    );
    if let (Some(full), Some(compute)) = (
        programming_median(results, Mode::Ebpf, max_n, Step::Full),
        programming_median(results, Mode::Ebpf, max_n, Step::MaglevCompute),
    ) {
        let change = programming_median(results, Mode::Ebpf, max_n, Step::OneChange).unwrap_or(0.0);
        let _ = writeln!(
            md,
            "**Programming.** Berth's apply takes {} for {} services × {} endpoints. Computing the {} Maglev \
             tables one after another on one core takes {} (measured apart); the apply builds them on all of the \
             machine's cores, as they are independent. The rest is one `bpf()` system call per map entry ({} \
             backends and {} service entries) and the plan's bookkeeping. A single change takes {} because \
             `apply` re-plans the whole service set (it fingerprints every service to find the one whose table \
             changed). Further ways down: write the backend and service maps with batched updates \
             (`BPF_MAP_UPDATE_BATCH`), and plan only the services a change touches. iptables-legacy-restore, for comparison, replaces the whole nat table in the kernel on \
             every restore, so even kube-proxy's partial sync of one change grows with the rule set.\n",
            seconds(full),
            thousands(max_n),
            results.parameters.dummy_backends,
            thousands(max_n),
            seconds(compute),
            thousands(max_n * results.parameters.dummy_backends),
            thousands(max_n),
            seconds(change)
        );
    }
}

/// Writes `<out>/BENCHMARKS.md`, `<out>/bench/*.svg` and `<out>/bench/results.json`.
pub fn write(results: &Results, out: &Path, command: &str) -> anyhow::Result<()> {
    let assets = out.join(ASSET_DIR);
    std::fs::create_dir_all(&assets).with_context(|| format!("creating {}", assets.display()))?;
    for (name, _, svg) in charts(results) {
        std::fs::write(assets.join(&name), svg)?;
    }
    std::fs::write(
        assets.join("results.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    let report = out.join("BENCHMARKS.md");
    std::fs::write(&report, markdown(results, command))
        .with_context(|| format!("writing {}", report.display()))?;
    Ok(())
}
