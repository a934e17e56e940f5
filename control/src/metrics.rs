//! The control plane's Prometheus metrics, registered once in a registry of our own
//! (not the process-global one, so tests with several servers never collide).

use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// The process's own figures under their standard names (`process_cpu_seconds_total`,
    /// ...), apart from the `berth_` prefix of the rest.
    process: Registry,
    /// `verb` is the API verb (get, list, watch, create, update, delete, apply, scale, ...),
    /// not the HTTP method; `code` is the HTTP status.
    pub request_seconds: HistogramVec,
    pub watches: IntGaugeVec,
    pub watch_events: IntCounterVec,
    pub store_commit_seconds: prometheus::Histogram,
    pub store_revision: IntGauge,
    pub store_compacted_revision: IntGauge,
    pub store_size_bytes: IntGauge,
    /// Times the store went from taking writes to refusing them (an I/O error).
    pub store_faults: prometheus::IntCounter,
    /// 1 while the store takes writes, 0 while it refuses them after a fault.
    pub store_healthy: IntGauge,
    /// 1 while this control plane runs the scheduler and controllers (always, on the
    /// embedded store; the elected one, on etcd).
    pub leader: IntGauge,
    /// Times this control plane became the leader.
    pub leader_elections: prometheus::IntCounter,
    /// Per controller: `result` is `success`, or `error` when a write failed (the object
    /// is reconciled again shortly).
    pub reconciles: IntCounterVec,
    /// Per controller, the time to compute one object's reconcile (the scheduler's is its
    /// per-pod scheduling latency). Objects reconciled in one batch each count an equal
    /// share of the batch's time.
    pub reconcile_seconds: HistogramVec,
    /// `result`: `scheduled` or `unschedulable`.
    pub scheduling_attempts: IntCounterVec,
    /// Per listener (`api`, `agent`, `metrics`).
    pub connections: ConnectionMetrics,
    /// API requests answered 429 because their user was over a limit; `reason` names
    /// the limit (`inflight`, `watches`).
    pub rejected_requests: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("berth".to_owned()), None)?;
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "apiserver_request_duration_seconds",
                "Time to answer an API request (for watches: until the stream starts).",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["verb", "resource", "code"],
        )?;
        let watches = IntGaugeVec::new(
            Opts::new("apiserver_watches", "Open watch streams."),
            &["resource"],
        )?;
        let watch_events = IntCounterVec::new(
            Opts::new("apiserver_watch_events_total", "Events sent to watchers."),
            &["resource"],
        )?;
        let store_commit_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "store_commit_duration_seconds",
                "Time to commit a store transaction, fsync included.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        )?;
        let store_revision = IntGauge::new("store_revision", "The store's current revision.")?;
        let store_compacted_revision = IntGauge::new(
            "store_compacted_revision",
            "History at and below this revision has been compacted.",
        )?;
        let store_size_bytes = IntGauge::new("store_size_bytes", "Bytes the store takes on disk.")?;
        let store_faults = prometheus::IntCounter::new(
            "store_faults_total",
            "Times the store's file failed an I/O call and writes were refused until it recovered.",
        )?;
        let store_healthy = IntGauge::new(
            "store_healthy",
            "1 while the store takes writes, 0 while it refuses them after an I/O error.",
        )?;
        let leader = IntGauge::new(
            "leader",
            "1 while this control plane runs the scheduler and controllers (the elected leader).",
        )?;
        let leader_elections = prometheus::IntCounter::new(
            "leader_elections_total",
            "Times this control plane was elected leader and started the controllers.",
        )?;
        let reconciles = IntCounterVec::new(
            Opts::new(
                "controller_reconciles_total",
                "Objects reconciled, by controller and result.",
            ),
            &["controller", "result"],
        )?;
        let reconcile_seconds = HistogramVec::new(
            HistogramOpts::new(
                "controller_reconcile_duration_seconds",
                "Time to compute one object's reconcile, by controller.",
            )
            .buckets(vec![
                0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5,
            ]),
            &["controller"],
        )?;
        let scheduling_attempts = IntCounterVec::new(
            Opts::new(
                "scheduler_schedule_attempts_total",
                "Pods the scheduler tried to place, by result.",
            ),
            &["result"],
        )?;
        let connections = ConnectionMetrics::new(&registry)?;
        let rejected_requests = IntCounterVec::new(
            Opts::new(
                "apiserver_rejected_requests_total",
                "Requests answered 429 because their user was over a limit, by limit.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(rejected_requests.clone()))?;
        registry.register(Box::new(request_seconds.clone()))?;
        registry.register(Box::new(store_size_bytes.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_seconds.clone()))?;
        registry.register(Box::new(scheduling_attempts.clone()))?;
        registry.register(Box::new(watches.clone()))?;
        registry.register(Box::new(watch_events.clone()))?;
        registry.register(Box::new(store_commit_seconds.clone()))?;
        registry.register(Box::new(store_revision.clone()))?;
        registry.register(Box::new(store_compacted_revision.clone()))?;
        registry.register(Box::new(store_faults.clone()))?;
        registry.register(Box::new(store_healthy.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(leader_elections.clone()))?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "build_info",
                "Always 1; the version of the running control plane in its labels.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(build_info))?;
        let process = Registry::new();
        process.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            registry,
            process,
            request_seconds,
            watches,
            watch_events,
            store_commit_seconds,
            store_revision,
            store_compacted_revision,
            store_size_bytes,
            store_faults,
            store_healthy,
            leader,
            leader_elections,
            reconciles,
            reconcile_seconds,
            scheduling_attempts,
            connections,
            rejected_requests,
        })
    }

    /// The store's figures as of now, set just before a scrape renders them.
    pub fn observe_store(&self, store: &dyn crate::store::Store) {
        if let Ok(revision) = store.revision() {
            self.store_revision
                .set(i64::try_from(revision).unwrap_or(i64::MAX));
        }
        if let Ok(revision) = store.compacted_revision() {
            self.store_compacted_revision
                .set(i64::try_from(revision).unwrap_or(i64::MAX));
        }
        let health = store.health();
        self.store_healthy.set(i64::from(health.fault.is_none()));
        // The store counts its faults itself (it has no metrics); catch the counter up.
        let counted = self.store_faults.get();
        if health.faults_total > counted {
            self.store_faults.inc_by(health.faults_total - counted);
        }
    }

    /// The text exposition format Prometheus scrapes.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        TextEncoder::new().encode(&families, &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// The connection metrics of every listener; `listener` is one of a few fixed names.
#[derive(Clone)]
pub struct ConnectionMetrics {
    pub open: IntGaugeVec,
    pub rejected: IntCounterVec,
    pub shed: IntCounterVec,
    /// `phase`: `handshake` (the TLS handshake took too long) or `idle`.
    pub timed_out: IntCounterVec,
}

impl ConnectionMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let open = IntGaugeVec::new(
            Opts::new("connections_open", "Connections open, by listener."),
            &["listener"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "connections_rejected_total",
                "Connections closed at once because the listener was full of established ones.",
            ),
            &["listener"],
        )?;
        let shed = IntCounterVec::new(
            Opts::new(
                "connections_shed_total",
                "Connections still in their TLS handshake closed to make room for a new one.",
            ),
            &["listener"],
        )?;
        let timed_out = IntCounterVec::new(
            Opts::new(
                "connections_timed_out_total",
                "Connections closed by the server's timeouts, by listener and phase.",
            ),
            &["listener", "phase"],
        )?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(shed.clone()))?;
        registry.register(Box::new(timed_out.clone()))?;
        Ok(Self {
            open,
            rejected,
            shed,
            timed_out,
        })
    }
}
