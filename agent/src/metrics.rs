//! The agent's Prometheus metrics. Datapath counters live in per-CPU maps and are read
//! at scrape time (summed over CPUs), so a scrape always shows what the kernel counted;
//! the agent's own measurements are ordinary registered metrics.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
    core::{Collector, Desc},
    proto::MetricFamily,
};

use crate::datapath::Datapath;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metric: {0}")]
    Register(#[from] prometheus::Error),
    #[error("metrics endpoint on {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How a reason's packets were treated, as a label.
fn verdict(reason: berth_ebpf_common::Reason) -> &'static str {
    use berth_ebpf_common::Reason;
    if reason.is_drop() {
        "drop"
    } else if matches!(
        reason,
        Reason::Translated
            | Reason::ReverseTranslated
            | Reason::ForwardedToNode
            | Reason::TunnelDelivered
            | Reason::Rebalanced
    ) {
        "translate"
    } else {
        "pass"
    }
}

/// Reads the datapath's maps on every scrape.
pub struct DatapathCollector {
    datapath: Arc<Mutex<Datapath>>,
    descs: Vec<Desc>,
}

/// Labels of a service's series, as users filter them. No series is per backend: pod
/// addresses come and go, and series keyed by them would grow without bound.
const SERVICE_LABELS: &[&str] = &["namespace", "service", "port"];

/// (namespace, service, port name or number) of a datapath service, which
/// `services::service_set` names `<namespace>/<service>:<port>`.
fn service_labels(name: &str) -> [&str; 3] {
    let (qualified, port) = name.rsplit_once(':').unwrap_or((name, ""));
    let (namespace, service) = qualified.split_once('/').unwrap_or(("", qualified));
    [namespace, service, port]
}

fn family_opts() -> Vec<(Opts, &'static [&'static str])> {
    vec![
        (
            Opts::new(
                "berth_datapath_service_packets_total",
                "Packets translated for a service (both directions)",
            ),
            SERVICE_LABELS,
        ),
        (
            Opts::new(
                "berth_datapath_service_bytes_total",
                "Bytes of packets translated for a service (both directions)",
            ),
            SERVICE_LABELS,
        ),
        (
            Opts::new(
                "berth_datapath_service_connections_total",
                "New connections (flows) balanced for a service",
            ),
            SERVICE_LABELS,
        ),
        (
            Opts::new(
                "berth_datapath_packets_total",
                "Packets seen by the datapath programs, by what happened to them and why",
            ),
            &["reason", "verdict"],
        ),
    ]
}

impl DatapathCollector {
    pub fn new(datapath: Arc<Mutex<Datapath>>) -> Result<Self, MetricsError> {
        let mut descs = Vec::new();
        for (opts, labels) in family_opts() {
            descs.extend(
                IntCounterVec::new(opts, labels)?
                    .desc()
                    .into_iter()
                    .cloned(),
            );
        }
        let (tracked, slots, frontends) = gauges()?;
        descs.extend(tracked.desc().into_iter().cloned());
        descs.extend(slots.desc().into_iter().cloned());
        descs.extend(frontends.desc().into_iter().cloned());
        Ok(DatapathCollector { datapath, descs })
    }

    fn gather(&self) -> Result<Vec<MetricFamily>, MetricsError> {
        let datapath = match self.datapath.lock() {
            Ok(datapath) => datapath,
            Err(poisoned) => poisoned.into_inner(),
        };
        let [service_packets, service_bytes, service_connections, reasons]: [IntCounterVec; 4] =
            family_opts()
                .into_iter()
                .map(|(opts, labels)| IntCounterVec::new(opts, labels))
                .collect::<Result<Vec<_>, _>>()?
                .try_into()
                .map_err(|_| prometheus::Error::Msg("metric families changed".into()))?;
        // Map read errors leave a family empty for this scrape rather than failing it.
        if let Ok(services) = datapath.service_traffic() {
            for report in services {
                let labels = service_labels(&report.key);
                service_packets
                    .with_label_values(&labels)
                    .inc_by(report.traffic.packets);
                service_bytes
                    .with_label_values(&labels)
                    .inc_by(report.traffic.bytes);
                service_connections
                    .with_label_values(&labels)
                    .inc_by(report.traffic.new_connections);
            }
        }
        if let Ok(counts) = datapath.reasons() {
            for (reason, count) in counts {
                reasons
                    .with_label_values(&[reason.label(), verdict(reason)])
                    .inc_by(count);
            }
        }
        let (tracked, slots, frontends) = gauges()?;
        if let Ok(count) = datapath.tracked_connections() {
            tracked.set(count as i64);
        }
        frontends.set(datapath.frontend_count() as i64);
        let (used, capacity) = datapath.maglev_pool_usage();
        slots.with_label_values(&["used"]).set(used as i64);
        slots
            .with_label_values(&["free"])
            .set(capacity.saturating_sub(used) as i64);
        let mut families = Vec::new();
        for vec in [
            &service_packets,
            &service_bytes,
            &service_connections,
            &reasons,
        ] {
            families.extend(vec.collect());
        }
        families.extend(tracked.collect());
        families.extend(frontends.collect());
        families.extend(slots.collect());
        Ok(families)
    }
}

fn gauges() -> Result<(IntGauge, IntGaugeVec, IntGauge), prometheus::Error> {
    Ok((
        IntGauge::new(
            "berth_datapath_tracked_connections",
            "Connections in the datapath's connection tracking table",
        )?,
        IntGaugeVec::new(
            Opts::new(
                "berth_datapath_maglev_slots",
                "Slots of the Maglev table pool, used and free",
            ),
            &["state"],
        )?,
        IntGauge::new(
            "berth_datapath_service_frontends",
            "Service frontends (address, port, protocol) programmed in the datapath",
        )?,
    ))
}

impl Collector for DatapathCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        match self.gather() {
            Ok(families) => families,
            Err(error) => {
                tracing::warn!(%error, "collecting datapath metrics");
                Vec::new()
            }
        }
    }
}

/// The agent's registry and the metrics it updates itself.
#[derive(Clone)]
pub struct AgentMetrics {
    pub registry: Registry,
    /// How long an apply of the service set took (plan and writes).
    pub apply_duration: Histogram,
    /// From the moment a change arrived from the control plane to the maps being written.
    pub propagation: Histogram,
    /// Conntrack entries collected by the agent's sweep after their lifetime.
    pub conntrack_collected: IntCounter,
    /// Failed writes of the agent's state file (pods.json), each retried.
    pub state_write_failures: IntCounter,
    /// 1 when the state file holds the latest state, 0 while a write is pending a retry.
    pub state_saved: IntGauge,
    /// Watch streams started, by watch and by whether they resumed or started from a
    /// snapshot: every snapshot after a watch's first is a full resync.
    pub watch_streams: IntCounterVec,
}

impl AgentMetrics {
    pub fn new(datapath: Option<Arc<Mutex<Datapath>>>) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let apply_duration = Histogram::with_opts(
            HistogramOpts::new(
                "berth_datapath_apply_duration_seconds",
                "Time to compute and write one datapath update",
            )
            .buckets(buckets.clone()),
        )?;
        let propagation = Histogram::with_opts(
            HistogramOpts::new(
                "berth_datapath_propagation_seconds",
                "Time from a control-plane change reaching the agent to the maps being written",
            )
            .buckets(buckets),
        )?;
        let conntrack_collected = IntCounter::new(
            "berth_datapath_conntrack_collected_total",
            "Connection tracking entries removed by the agent after their lifetime",
        )?;
        registry.register(Box::new(conntrack_collected.clone()))?;
        let state_write_failures = IntCounter::new(
            "berth_agent_state_write_failures_total",
            "Failed writes of the agent's state file (the last pods sent), each retried",
        )?;
        let state_saved = IntGauge::new(
            "berth_agent_state_saved",
            "1 when the agent's state file holds the latest state, 0 while a write waits for a retry",
        )?;
        registry.register(Box::new(state_write_failures.clone()))?;
        registry.register(Box::new(state_saved.clone()))?;
        let watch_streams = IntCounterVec::new(
            Opts::new(
                "berth_agent_watch_streams_total",
                "Watch streams started from the control plane, by watch (pods, services) and \
                 start (resumed from the last revision, or snapshot: the first, or a resync)",
            ),
            &["watch", "start"],
        )?;
        registry.register(Box::new(watch_streams.clone()))?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "berth_agent_build_info",
                "Always 1; the version of the running agent in its labels",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        registry.register(Box::new(apply_duration.clone()))?;
        registry.register(Box::new(propagation.clone()))?;
        if let Some(datapath) = datapath {
            registry.register(Box::new(DatapathCollector::new(datapath)?))?;
        }
        Ok(AgentMetrics {
            registry,
            apply_duration,
            propagation,
            conntrack_collected,
            state_write_failures,
            state_saved,
            watch_streams,
        })
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which the types rule out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Serves `/metrics` on `addr` until the returned task is aborted.
    pub async fn serve(
        &self,
        addr: SocketAddr,
    ) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), MetricsError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Io { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| MetricsError::Io { addr, source })?;
        let metrics = self.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        );
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "metrics endpoint stopped");
            }
        });
        Ok((local, task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_split_into_their_labels() {
        assert_eq!(service_labels("shop/web:http"), ["shop", "web", "http"]);
        assert_eq!(service_labels("default/dns:53"), ["default", "dns", "53"]);
    }
}
