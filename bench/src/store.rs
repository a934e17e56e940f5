//! The control plane on etcd against the embedded store (issue 23): the scale part's
//! scheduling and endpoint propagation figures, on the same number of simulated nodes,
//! one store after the other in one run. etcd is three members of Debian's etcd-server
//! (a real cluster: every write is agreed by two of them and fsynced), in the control
//! plane's network namespace on the same machine.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::{
    scale::{
        self, ClusterRun, Control, cluster_run_on, in_cluster_namespace, log_path, percentile,
    },
    scale_report::{cpu_use, mib, ms},
};
use berth_testkit::etcd::EtcdCluster;

pub struct Options {
    pub nodes: usize,
    pub etcd_members: usize,
    pub scale: scale::Options,
}

pub fn options(smoke: bool) -> Options {
    let mut scale = scale::options(smoke);
    if !smoke {
        scale.pods = 10_000;
        scale.propagation_pods = 50;
    }
    Options {
        nodes: if smoke { 20 } else { 200 },
        etcd_members: 3,
        scale,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreResults {
    pub smoke: bool,
    pub started: String,
    pub etcd_members: usize,
    pub embedded: ClusterRun,
    pub etcd: ClusterRun,
}

/// Runs the embedded store, then etcd, each in a fresh namespace with a fresh control
/// plane; `say` prints progress.
pub fn run(options: &Options, say: &(dyn Fn(&str) + Sync)) -> anyhow::Result<StoreResults> {
    let started = crate::procs::now_utc();
    let nodes = options.nodes;
    let embedded = in_cluster_namespace(|ns| async move {
        say("store: the embedded store");
        let control = Control::start_with(&ns, &log_path("control-embedded"), &[]).await?;
        cluster_run_on(&control, nodes, &options.scale, say).await
    })?;
    let etcd = in_cluster_namespace(|ns| async move {
        say(&format!("store: etcd, {} members", options.etcd_members));
        let etcd = EtcdCluster::start_in(Some(&ns), options.etcd_members);
        let store = etcd.store_url();
        let control =
            Control::start_with(&ns, &log_path("control-etcd"), &["--store", &store]).await?;
        let run = cluster_run_on(&control, nodes, &options.scale, say).await;
        drop(control);
        drop(etcd);
        run
    })?;
    Ok(StoreResults {
        smoke: options.scale.smoke,
        started,
        etcd_members: options.etcd_members,
        embedded,
        etcd,
    })
}

/// The section of docs/BENCHMARKS.md.
pub fn section(md: &mut String, results: &StoreResults) {
    let _ = writeln!(md, "## Control plane on etcd against the embedded store\n");
    if results.smoke {
        let _ = writeln!(
            md,
            "> **Smoke run**: a few simulated nodes and pods, to show the part works.\n"
        );
    }
    let _ = writeln!(
        md,
        "The scale part's measurements (simulated nodes; see \"Control plane at scale\") on {} nodes with {} pods \
         and {} propagation steps, run once with berth-control on its embedded store and once on a {}-member etcd \
         cluster (Debian's etcd-server 3.4, all members on this machine, in the control plane's namespace), one \
         after the other in one run ({}). Rerun with `cargo xtask bench -- --parts store`.\n",
        results.embedded.nodes,
        results.embedded.scheduling.pods,
        results.embedded.propagation.pods,
        results.etcd_members,
        results.started
    );
    let _ = writeln!(
        md,
        "| store | pods/s | last pod on its node | propagation p50 / p99, every node | control plane CPU per pod | control plane memory after the pods | joining took |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    let label = format!("etcd ({} members)", results.etcd_members);
    for (store, run) in [
        ("embedded", &results.embedded),
        (label.as_str(), &results.etcd),
    ] {
        let s = &run.scheduling;
        let p = &run.propagation;
        let _ = writeln!(
            md,
            "| {store} | {:.0} | {:.1} s{} | {} / {} | {} | {} | {:.0} s |",
            s.pods_per_second,
            s.last_secs,
            if s.arrived < s.pods {
                format!(" ({} of {})", s.arrived, s.pods)
            } else {
                String::new()
            },
            ms(percentile(&p.all_nodes_ms, 0.5)),
            ms(percentile(&p.all_nodes_ms, 0.99)),
            cpu_use(s).map_or_else(|| "–".to_owned(), |(per_pod, _)| format!("{per_pod:.2} ms")),
            mib(run.control_rss_bytes.after_scheduling),
            run.join_secs,
        );
    }
    let ratio = results.etcd.scheduling.pods_per_second
        / results
            .embedded
            .scheduling
            .pods_per_second
            .max(f64::MIN_POSITIVE);
    let _ = writeln!(
        md,
        "\nOn etcd the control plane scheduled at {:.2} × its rate on the embedded store; endpoint propagation p99 \
         to every node was {} against {}.\n",
        ratio,
        ms(percentile(&results.etcd.propagation.all_nodes_ms, 0.99)),
        ms(percentile(&results.embedded.propagation.all_nodes_ms, 0.99)),
    );
}
