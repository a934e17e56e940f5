//! Programming time: how long each mode takes from "here are N services" to serving them,
//! and to apply one endpoint change among them.
//!
//! - Berth: `Datapath::apply` on a freshly opened datapath (maps empty), then one change.
//!   The programs read the maps on every packet, so when `apply` returns, they serve.
//! - iptables: `iptables-legacy-restore --noflush` of a kube-proxy full sync into empty
//!   tables; the change is what kube-proxy 1.28+ writes for it (a partial sync).
//! - HAProxy: start until the measured service answers (a reload starts a new process that
//!   parses the whole configuration too).

use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{
    Mode, kubeproxy,
    procs::check_interrupted,
    services::{self, Svc},
    topology::{Topology, wait_serving},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Step {
    /// Loading and attaching the programs, creating the maps (Berth only).
    Open,
    /// All N services into an empty datapath / empty tables / a new process.
    Full,
    /// One endpoint of one service replaced.
    OneChange,
    /// Berth only, a breakdown of `Full`: computing the Maglev tables alone, in this
    /// process, without touching the kernel.
    MaglevCompute,
}

/// Builds every service's Maglev table the way the loader's plan does (sorted backends,
/// the table size for their count) and returns how long that took.
fn maglev_compute(set: &[Svc]) -> Duration {
    use berth_agent::datapath::{Limits, maglev};
    let min = Limits::default().maglev_min_table;
    let started = std::time::Instant::now();
    let mut slots = 0usize;
    for svc in set {
        let mut identities: Vec<maglev::BackendIdentity> = svc
            .backends
            .iter()
            .map(|(addr, port)| maglev::BackendIdentity {
                addr: *addr,
                port: *port,
            })
            .collect();
        identities.sort_unstable();
        let size = maglev::table_size(identities.len(), min);
        slots += std::hint::black_box(maglev::build_table(&identities, size)).len();
    }
    std::hint::black_box(slots);
    started.elapsed()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub mode: Mode,
    pub services: usize,
    pub step: Step,
    pub seconds: f64,
    /// What was written: map entries (Berth), nat rules (iptables), listeners (HAProxy).
    pub detail: String,
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// Programs every bed (leaving each in its full state for the datapath runs) and returns
/// the timings. `reps` full programmings and `reps` pairs of changes per bed.
pub fn program_all(
    topology: &mut Topology,
    reps: u32,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    for index in 0..topology.beds.len() {
        let (mode, count) = (topology.beds[index].mode, topology.beds[index].services);
        let set = topology.beds[index].set.clone();
        match mode {
            Mode::Direct | Mode::DirectOne => {}
            Mode::DirectEbpfAttached => {
                topology.open_fresh_datapath(index)?;
            }
            Mode::Ebpf => program_ebpf(topology, index, &set, reps, &mut records, progress)?,
            Mode::EbpfPerPacket | Mode::EbpfPolicies => {
                check_interrupted()?;
                topology.open_fresh_datapath(index)?;
                topology.apply_ebpf(index, &set)?;
                if mode == Mode::EbpfPolicies {
                    let written = topology.apply_policies(index)?;
                    progress(&format!(
                        "Berth eBPF, {count} services: {} NetworkPolicies over {} pods, {} policy entries",
                        written.policies, written.pods, written.policy_entries
                    ));
                }
                serving_measured(topology, index)
                    .with_context(|| format!("{} serving the measured service", mode.label()))?;
            }
            Mode::Iptables => {
                program_iptables(topology, index, &set, reps, &mut records, progress)?
            }
            Mode::Haproxy => {
                check_interrupted()?;
                let elapsed = topology.start_haproxy(index)?;
                progress(&format!(
                    "HAProxy, {count} services: serving {:.3} s after start",
                    secs(elapsed)
                ));
                records.push(Record {
                    mode,
                    services: count,
                    step: Step::Full,
                    seconds: secs(elapsed),
                    detail: format!("{count} listeners"),
                });
            }
        }
    }
    Ok(records)
}

fn measured(topology: &Topology, index: usize) -> (usize, std::net::Ipv4Addr, u16) {
    let bed = topology.bed(index);
    let (addr, port) = bed.targets(bed.mode)[0];
    (bed.client_index, addr, port)
}

/// Waits until the bed's measured service answers its client (5 s at most).
fn serving_measured(topology: &Topology, index: usize) -> anyhow::Result<()> {
    let (client, addr, port) = measured(topology, index);
    wait_serving(
        &topology.cluster,
        client,
        addr,
        port,
        Duration::from_secs(5),
    )?;
    Ok(())
}

fn program_ebpf(
    topology: &mut Topology,
    index: usize,
    set: &[Svc],
    reps: u32,
    records: &mut Vec<Record>,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<()> {
    let count = set.len();
    for _ in 0..reps {
        check_interrupted()?;
        let opened = topology.open_fresh_datapath(index)?;
        let report = topology.apply_ebpf(index, set)?;
        serving_measured(topology, index)
            .context("Berth serving the measured service after apply")?;
        progress(&format!(
            "Berth eBPF, {count} services: open {:.3} s, apply {:.3} s ({} frontends, {} tables, {} backends)",
            secs(opened),
            secs(report.elapsed),
            report.frontends_written,
            report.tables_written,
            report.backends_written
        ));
        records.push(Record {
            mode: Mode::Ebpf,
            services: count,
            step: Step::Open,
            seconds: secs(opened),
            detail: "load + verify programs, create maps, attach to 4 veths".into(),
        });
        records.push(Record {
            mode: Mode::Ebpf,
            services: count,
            step: Step::Full,
            seconds: secs(report.elapsed),
            detail: format!(
                "{} service entries, {} Maglev tables, {} backends",
                report.frontends_written, report.tables_written, report.backends_written
            ),
        });
    }
    let compute = maglev_compute(set);
    progress(&format!(
        "Berth eBPF, {count} services: Maglev tables alone {:.3} s",
        secs(compute)
    ));
    records.push(Record {
        mode: Mode::Ebpf,
        services: count,
        step: Step::MaglevCompute,
        seconds: secs(compute),
        detail: "Maglev table builds alone".into(),
    });
    let changed = services::with_one_change(set);
    for _ in 0..reps {
        for (to, label) in [(&changed, "change"), (&set.to_vec(), "change back")] {
            check_interrupted()?;
            let report = topology.apply_ebpf(index, to)?;
            progress(&format!(
                "Berth eBPF, {count} services: {label} {:.4} s",
                secs(report.elapsed)
            ));
            records.push(Record {
                mode: Mode::Ebpf,
                services: count,
                step: Step::OneChange,
                seconds: secs(report.elapsed),
                detail: format!(
                    "{} table, {} entry, {} backend written; {} backend removed",
                    report.tables_written,
                    report.frontends_written,
                    report.backends_written,
                    report.backends_removed
                ),
            });
        }
    }
    serving_measured(topology, index)
}

fn program_iptables(
    topology: &mut Topology,
    index: usize,
    set: &[Svc],
    reps: u32,
    records: &mut Vec<Record>,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<()> {
    let count = set.len();
    let full = kubeproxy::full_sync(set);
    let rules = kubeproxy::nat_rule_count(set);
    for _ in 0..reps {
        check_interrupted()?;
        topology.iptables_reset(index)?;
        let elapsed = topology.iptables_restore(index, &full, true)?;
        serving_measured(topology, index)
            .context("iptables serving the measured service after restore")?;
        progress(&format!(
            "iptables, {count} services: full restore {:.3} s ({rules} nat rules)",
            secs(elapsed)
        ));
        records.push(Record {
            mode: Mode::Iptables,
            services: count,
            step: Step::Full,
            seconds: secs(elapsed),
            detail: format!("{rules} nat rules"),
        });
    }
    let changed = services::with_one_change(set);
    if let Some(position) = (0..count).find(|i| set[*i] != changed[*i]) {
        let forth = kubeproxy::partial_sync(&changed, &set[position], &changed[position]);
        let back = kubeproxy::partial_sync(set, &changed[position], &set[position]);
        for _ in 0..reps {
            for (rules, label) in [(&forth, "change"), (&back, "change back")] {
                check_interrupted()?;
                let elapsed = topology.iptables_restore(index, rules, true)?;
                progress(&format!(
                    "iptables, {count} services: {label} {:.3} s",
                    secs(elapsed)
                ));
                records.push(Record {
                    mode: Mode::Iptables,
                    services: count,
                    step: Step::OneChange,
                    seconds: secs(elapsed),
                    detail: format!(
                        "partial sync: {} lines",
                        rules.lines().filter(|l| l.starts_with("-A ")).count()
                    ),
                });
            }
        }
    }
    serving_measured(topology, index)
}
