//! All of the control plane's settings, parsed in one place from flags and `BERTH_*`
//! environment variables. Tests build it with `Config::parse_from`, never from the
//! process environment.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::Parser;

use crate::allocation::{Cidr, PortRange, Ranges};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "berth-control",
    version,
    about = "Berth control plane: the mesh control API server"
)]
pub struct Config {
    /// Where the store, the PKI and admin.conf live.
    #[arg(long, env = "BERTH_DATA_DIR", default_value = "/var/lib/berth")]
    pub data_dir: PathBuf,

    /// Address to serve the API on; port 0 picks a free port.
    #[arg(long, env = "BERTH_LISTEN", default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,

    /// Where to serve `/metrics` and the agents' Prometheus service discovery
    /// (`/http-sd/agents`) over plain HTTP without authentication, for Prometheus (like
    /// etcd's `--listen-metrics-urls`); unset: only the authenticated `/metrics` of the API.
    #[arg(long, env = "BERTH_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Address of the agents' gRPC API (always TLS; mTLS after joining).
    #[arg(long, env = "BERTH_AGENT_LISTEN", default_value = "127.0.0.1:6444")]
    pub agent_listen: SocketAddr,

    /// Range pod CIDRs (/24 per node) are allocated from.
    #[arg(long, env = "BERTH_CLUSTER_CIDR", default_value = "198.19.0.0/16", value_parser = parse_cidr)]
    pub cluster_cidr: (Ipv4Addr, u8),

    /// Range Service clusterIPs are allocated from. Must not overlap the cluster CIDR or
    /// the nodes' network. May grow across restarts; it may not shrink past a clusterIP
    /// a Service holds (the server refuses to start).
    #[arg(
        long,
        alias = "service-cluster-ip-range",
        env = "BERTH_SERVICE_CIDR",
        default_value = "198.18.192.0/18"
    )]
    pub service_cidr: Cidr,

    /// Ports Service nodePorts are allocated from, `first-last`. May grow across
    /// restarts; it may not shrink past a nodePort a Service holds.
    #[arg(
        long,
        env = "BERTH_SERVICE_NODE_PORT_RANGE",
        default_value_t = PortRange::DEFAULT
    )]
    pub service_node_port_range: PortRange,

    /// Pool LoadBalancer Services get their external address from (what MetalLB or k3s'
    /// servicelb provide elsewhere); `none` leaves them pending.
    #[arg(long, env = "BERTH_LOAD_BALANCER_CIDR", default_value = "198.18.128.0/18", value_parser = parse_pool)]
    pub load_balancer_cidr: ::std::option::Option<Cidr>,

    /// Extra names or addresses for the serving certificate (comma-separated).
    #[arg(long = "tls-san", env = "BERTH_TLS_SAN", value_delimiter = ',')]
    pub tls_sans: Vec<String>,

    /// Every control plane's API address of this cluster (https://host:port,
    /// comma-separated), written into admin.conf after this one's own so berthctl fails
    /// over between them; with one control plane, leave it out.
    #[arg(long, env = "BERTH_CONTROL_PLANE_ENDPOINTS", value_delimiter = ',', value_parser = parse_endpoint)]
    pub control_plane_endpoints: Vec<String>,

    /// Users of static bearer tokens, one per line: `token,user,uid[,"group1,group2"]`
    /// (kube-apiserver's format). Read at start; only the tokens' digests are kept.
    #[arg(long, env = "BERTH_TOKEN_AUTH_FILE")]
    pub token_auth_file: Option<PathBuf>,

    /// Serve plain HTTP instead of HTTPS. Tokens then cross the network in clear text.
    #[arg(long, env = "BERTH_INSECURE_HTTP")]
    pub insecure_http: bool,

    /// Where to write the admin client configuration [default: <data-dir>/admin.conf].
    #[arg(long, env = "BERTH_ADMIN_CONFIG")]
    pub admin_config: Option<PathBuf>,

    /// Where the cluster's state lives: `embedded` (a file in the data directory, for one
    /// control plane) or `etcd://HOST:PORT[,HOST:PORT...]` (an etcd v3 cluster that
    /// several control planes share).
    #[arg(long, env = "BERTH_STORE", default_value = "embedded", value_parser = parse_store)]
    pub store: StoreLocation,

    /// The key prefix Berth's objects live under in etcd.
    #[arg(long, env = "BERTH_ETCD_PREFIX", default_value = "/berth")]
    pub etcd_prefix: String,

    /// The etcd members' `--max-txn-ops` (etcd's default 128): the control plane writes
    /// batches of objects (a ReplicaSet's pods, a scheduling pass's bindings) in
    /// transactions of at most that many operations.
    #[arg(long, env = "BERTH_ETCD_MAX_TXN_OPS", default_value_t = 128, value_parser = clap::value_parser!(u32).range(2..))]
    pub etcd_max_txn_ops: u32,

    /// CA certificate (PEM) that signed the etcd members' certificates: TLS to etcd.
    #[arg(long, env = "BERTH_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,

    /// Client certificate (PEM) for etcd members that require one; with --etcd-keyfile.
    #[arg(
        long,
        env = "BERTH_ETCD_CERTFILE",
        requires = "etcd_keyfile",
        requires = "etcd_cafile"
    )]
    pub etcd_certfile: Option<PathBuf>,

    /// Key (PEM) of --etcd-certfile.
    #[arg(long, env = "BERTH_ETCD_KEYFILE", requires = "etcd_certfile")]
    pub etcd_keyfile: Option<PathBuf>,

    /// Seconds of the etcd lease the elected leader among the control planes on one etcd
    /// holds (it renews it four times a lease and steps down after two thirds of a lease
    /// without a renewal); the scheduler and controllers run on the leader only.
    #[arg(
        long = "leader-elect-lease-duration",
        env = "BERTH_LEADER_ELECT_LEASE_DURATION",
        default_value_t = 15,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub leader_lease_secs: u64,

    /// Store revisions of watch history to keep; older history is compacted.
    #[arg(long, env = "BERTH_HISTORY_REVISIONS", default_value_t = 100_000)]
    pub history_revisions: u64,

    /// How often to compact the store's history, in seconds.
    #[arg(
        long = "compaction-interval",
        env = "BERTH_COMPACTION_INTERVAL",
        default_value_t = 300
    )]
    pub compaction_interval_secs: u64,

    /// Serve the API only; run no scheduler or controllers (for an API-only replica, and
    /// for tests of the API alone).
    #[arg(long, env = "BERTH_NO_CONTROLLERS")]
    pub no_controllers: bool,

    /// Seconds without a heartbeat before a node is marked `Ready=Unknown`.
    #[arg(long = "node-grace", env = "BERTH_NODE_GRACE", default_value_t = 40)]
    pub node_grace_secs: u64,

    /// Seconds a pod stays on a node that is not ready or unreachable before it is
    /// deleted and rescheduled: the `tolerationSeconds` of the `NoExecute` tolerations
    /// for `node.kubernetes.io/not-ready` and `node.kubernetes.io/unreachable` admission
    /// gives every pod that has none of its own (Kubernetes'
    /// `--default-not-ready-toleration-seconds`).
    #[arg(
        long = "pod-eviction-timeout",
        env = "BERTH_POD_EVICTION_TIMEOUT",
        default_value_t = 300
    )]
    pub pod_eviction_timeout_secs: u64,

    /// Seconds between evaluations of each HorizontalPodAutoscaler.
    #[arg(
        long = "autoscaler-sync-period",
        env = "BERTH_AUTOSCALER_SYNC_PERIOD",
        default_value_t = 15
    )]
    pub autoscaler_sync_secs: u64,

    /// Scale-down stabilisation window (seconds) of autoscalers that set none in
    /// `behavior.scaleDown.stabilizationWindowSeconds`.
    #[arg(
        long = "autoscaler-downscale-stabilization",
        env = "BERTH_AUTOSCALER_DOWNSCALE_STABILIZATION",
        default_value_t = 300
    )]
    pub autoscaler_downscale_stabilization_secs: u64,

    /// Where on each node the volumes provisioned for PersistentVolumeClaims are made; the
    /// agents' `--local-volume-dir` must be the same.
    #[arg(long, env = "BERTH_LOCAL_VOLUME_DIR", default_value = crate::controllers::DEFAULT_LOCAL_VOLUME_DIR)]
    pub local_volume_dir: PathBuf,

    /// Node paths hostPath volumes may name, each with everything under it
    /// (comma-separated); none by default, so every hostPath volume is refused.
    #[arg(
        long = "allow-host-path",
        env = "BERTH_ALLOW_HOST_PATH",
        value_delimiter = ','
    )]
    pub allow_host_paths: Vec<PathBuf>,

    /// Seconds an Event is kept after it last happened (kube-apiserver's `--event-ttl`).
    #[arg(
        long = "event-ttl",
        env = "BERTH_EVENT_TTL",
        default_value_t = 3600,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub event_ttl_secs: u64,

    /// Seconds a node certificate is valid (kubeadm's one year by default); agents renew
    /// theirs after 80 % of that.
    #[arg(
        long = "node-certificate-validity",
        env = "BERTH_NODE_CERTIFICATE_VALIDITY",
        default_value_t = 365 * 86_400,
        value_parser = clap::value_parser!(u64).range(60..)
    )]
    pub node_certificate_validity_secs: u64,

    /// Seconds the first bootstrap token (`pki/bootstrap-token`) joins nodes for, from
    /// when it was made, like kubeadm's `--token-ttl`; 0: it never expires. Make more
    /// with `berthctl token create`.
    #[arg(
        long = "bootstrap-token-ttl",
        env = "BERTH_BOOTSTRAP_TOKEN_TTL",
        default_value_t = 86_400
    )]
    pub bootstrap_token_ttl_secs: u64,

    /// Where to write the audit log, one JSON line per request (audit.k8s.io/v1 Event);
    /// unset: no audit log.
    #[arg(long, env = "BERTH_AUDIT_LOG_PATH")]
    pub audit_log_path: Option<PathBuf>,

    /// The audit policy (kube-apiserver's audit.k8s.io/v1 Policy file); unset: every
    /// request at level Metadata.
    #[arg(long, env = "BERTH_AUDIT_POLICY_FILE")]
    pub audit_policy_file: Option<PathBuf>,

    /// Megabytes the audit log grows to before it is rotated.
    #[arg(long, env = "BERTH_AUDIT_LOG_MAXSIZE", default_value_t = 100)]
    pub audit_log_maxsize: u64,

    /// Rotated audit logs to keep.
    #[arg(long, env = "BERTH_AUDIT_LOG_MAXBACKUP", default_value_t = 5)]
    pub audit_log_maxbackup: u32,

    /// Connections the API listener holds at once (the metrics listener has as many of
    /// its own). When full, the oldest connection still in its TLS handshake is closed to
    /// make room; when every one is established, new ones are closed at once.
    #[arg(
        long,
        env = "BERTH_MAX_CONNECTIONS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_connections: u64,

    /// Connections the agents' gRPC listener holds at once, apart from the API's, so a
    /// flood of API clients cannot keep the agents out.
    #[arg(
        long,
        env = "BERTH_AGENT_MAX_CONNECTIONS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub agent_max_connections: u64,

    /// Seconds a client has to finish the TLS handshake, on both listeners.
    #[arg(
        long = "tls-handshake-timeout",
        env = "BERTH_TLS_HANDSHAKE_TIMEOUT",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub tls_handshake_timeout_secs: u64,

    /// Seconds a client has to send an HTTP/1 request's headers (also the longest an
    /// HTTP/1 connection waits for its next request).
    #[arg(
        long = "header-read-timeout",
        env = "BERTH_HEADER_READ_TIMEOUT",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub header_read_timeout_secs: u64,

    /// Seconds an API connection may stay open with no request in flight (an open watch
    /// or exec keeps it busy).
    #[arg(
        long = "idle-timeout",
        env = "BERTH_IDLE_TIMEOUT",
        default_value_t = 90,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub idle_timeout_secs: u64,

    /// API requests one user may have in flight at once; more are answered 429 with
    /// Retry-After. Watches, exec, attach, port forwarding, followed logs and proxies are
    /// long-running and not counted (like kube-apiserver's priority and fairness).
    #[arg(
        long,
        env = "BERTH_MAX_REQUESTS_INFLIGHT_PER_USER",
        default_value_t = 100,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_requests_inflight_per_user: u64,

    /// Watches one user may hold open at once; more are answered 429.
    #[arg(
        long,
        env = "BERTH_MAX_WATCHES_PER_USER",
        default_value_t = 1_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_watches_per_user: u64,

    /// Log filter (tracing-subscriber env-filter syntax).
    #[arg(long, env = "BERTH_LOG", default_value = "info")]
    pub log: String,
}

impl Config {
    pub fn admin_config_path(&self) -> PathBuf {
        self.admin_config
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.conf"))
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("state.redb")
    }

    /// How to reach etcd, when the store is there.
    pub fn etcd(&self) -> Option<crate::store::EtcdConfig> {
        let StoreLocation::Etcd(endpoints) = &self.store else {
            return None;
        };
        Some(crate::store::EtcdConfig {
            endpoints: endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            ca_file: self.etcd_cafile.clone(),
            client_cert: self.etcd_certfile.clone().zip(self.etcd_keyfile.clone()),
            max_txn_ops: usize::try_from(self.etcd_max_txn_ops).unwrap_or(usize::MAX),
        })
    }

    /// The AES keys Secrets are encrypted with in the store (`key<N>.key`; the highest
    /// `N` encrypts, every one decrypts).
    pub fn encryption_keys_dir(&self) -> PathBuf {
        self.data_dir.join("encryption")
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.data_dir.join("pki")
    }

    pub fn controller_settings(&self) -> crate::controllers::Settings {
        crate::controllers::Settings {
            node_grace: Duration::from_secs(self.node_grace_secs),
            load_balancer_pool: self.load_balancer_cidr,
            autoscaler_sync: Duration::from_secs(self.autoscaler_sync_secs.max(1)),
            downscale_stabilization: Duration::from_secs(
                self.autoscaler_downscale_stabilization_secs,
            ),
            local_volume_dir: self.local_volume_dir.clone(),
            event_ttl: Duration::from_secs(self.event_ttl_secs),
            ..crate::controllers::Settings::default()
        }
    }

    /// The Service ranges, refused when they overlap each other or the pod range.
    pub fn ranges(&self) -> Result<Ranges, String> {
        let (network, prefix) = self.cluster_cidr;
        let pods = Cidr { network, prefix };
        let mut named = vec![
            ("--cluster-cidr", pods),
            ("--service-cidr", self.service_cidr),
        ];
        named.extend(self.load_balancer_cidr.map(|c| ("--load-balancer-cidr", c)));
        for (i, (a, x)) in named.iter().enumerate() {
            for (b, y) in &named[i + 1..] {
                if x.overlaps(*y) {
                    return Err(format!("{a} {x} overlaps {b} {y}"));
                }
            }
        }
        Ok(Ranges {
            service_cidr: self.service_cidr,
            node_ports: self.service_node_port_range,
            load_balancer_pool: self.load_balancer_cidr,
        })
    }

    /// The limits of a listener holding `max` connections.
    pub fn connection_limits(&self, max: u64) -> crate::limits::ConnectionLimits {
        crate::limits::ConnectionLimits {
            max: usize::try_from(max).unwrap_or(usize::MAX),
            handshake_timeout: Duration::from_secs(self.tls_handshake_timeout_secs),
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
        }
    }

    pub fn request_limits(&self) -> crate::limits::RequestLimits {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        crate::limits::RequestLimits {
            inflight_per_user: size(self.max_requests_inflight_per_user),
            watches_per_user: size(self.max_watches_per_user),
        }
    }

    pub fn compaction_interval(&self) -> Duration {
        Duration::from_secs(self.compaction_interval_secs.max(1))
    }
}

/// Where the store is (`--store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Embedded,
    /// `host:port` of each etcd member.
    Etcd(Vec<String>),
}

fn parse_store(text: &str) -> Result<StoreLocation, String> {
    if text == "embedded" {
        return Ok(StoreLocation::Embedded);
    }
    let members = text
        .strip_prefix("etcd://")
        .ok_or("expected `embedded` or etcd://HOST:PORT[,HOST:PORT...]")?;
    let endpoints = members
        .split(',')
        .map(|member| {
            let (host, port) = member
                .rsplit_once(':')
                .ok_or_else(|| format!("etcd member {member:?}: expected HOST:PORT"))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(format!("etcd member {member:?}: expected HOST:PORT"));
            }
            Ok(member.to_owned())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(StoreLocation::Etcd(endpoints))
}

/// `https://host:port` (or `http://` with `--insecure-http`), as admin.conf's `server`.
fn parse_endpoint(text: &str) -> Result<String, String> {
    let expected = || format!("{text:?}: expected https://HOST:PORT");
    let uri: hyper::Uri = text.parse().map_err(|_| expected())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("https" | "http"));
    let bare = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
    if !scheme_ok || uri.host().is_none() || uri.port_u16().is_none() || !bare {
        return Err(expected());
    }
    Ok(text.trim_end_matches('/').to_owned())
}

fn parse_pool(text: &str) -> Result<Option<Cidr>, String> {
    match text {
        "" | "none" => Ok(None),
        cidr => cidr.parse().map(Some),
    }
}

/// `a.b.c.d/len` with len 8..=24, so it holds whole /24s.
fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, len) = text.split_once('/').ok_or("expected a.b.c.d/len")?;
    let addr: Ipv4Addr = addr.parse().map_err(|e| format!("{e}"))?;
    let len: u8 = len.parse().map_err(|e| format!("{e}"))?;
    if !(8..=24).contains(&len) {
        return Err("prefix length must be between 8 and 24".to_owned());
    }
    let mask = u32::MAX << (32 - u32::from(len));
    Ok((Ipv4Addr::from(u32::from(addr) & mask), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_without_the_environment() {
        let config = Config::parse_from([
            "berth-control",
            "--data-dir",
            "/tmp/x",
            "--listen",
            "127.0.0.1:0",
            "--tls-san",
            "a.example,198.18.0.1",
        ]);
        assert_eq!(config.tls_sans, ["a.example", "198.18.0.1"]);
        assert_eq!(
            parse_endpoint("https://198.18.0.1:6443/"),
            Ok("https://198.18.0.1:6443".to_owned())
        );
        for bad in [
            "198.18.0.1:6443",
            "https://a.example",
            "https://a:1/api",
            "ftp://a:1",
        ] {
            assert!(
                parse_endpoint(bad).expect_err("refused").contains(bad),
                "{bad}"
            );
        }
        assert_eq!(
            config.admin_config_path(),
            PathBuf::from("/tmp/x/admin.conf")
        );
        assert!(!config.insecure_http);
        assert_eq!(config.store, StoreLocation::Embedded);
        assert_eq!(config.etcd(), None);
        let etcd = Config::parse_from([
            "berth-control",
            "--store",
            "etcd://127.0.0.1:2379,[::1]:2379",
        ]);
        assert_eq!(
            etcd.etcd().map(|e| (e.url(), e.prefix)),
            Some((
                "etcd://127.0.0.1:2379,[::1]:2379".to_owned(),
                "/berth".to_owned()
            ))
        );
        for bad in [
            "etcd",
            "etcd://",
            "etcd://a",
            "etcd://a:x",
            "etcd://:1",
            "mysql://a:1",
        ] {
            assert!(parse_store(bad).is_err(), "{bad}");
        }
        assert_eq!(config.cluster_cidr, (Ipv4Addr::new(198, 19, 0, 0), 16));
        assert!(parse_cidr("10.1.2.3/16").is_ok_and(|c| c == (Ipv4Addr::new(10, 1, 0, 0), 16)));
        assert!(parse_cidr("10.0.0.0/28").is_err());
        assert_eq!(config.service_cidr.to_string(), "198.18.192.0/18");
        assert_eq!(
            config.load_balancer_cidr.map(|c| c.to_string()).as_deref(),
            Some("198.18.128.0/18")
        );
        let none = Config::parse_from(["berth-control", "--load-balancer-cidr", "none"]);
        assert_eq!(none.load_balancer_cidr, None);
        assert!(config.ranges().is_ok());
        assert_eq!(config.service_node_port_range, PortRange::DEFAULT);
        let grown = Config::parse_from([
            "berth-control",
            "--service-cluster-ip-range",
            "198.18.192.0/17",
            "--service-node-port-range",
            "30000-40000",
        ]);
        assert_eq!(grown.service_cidr.to_string(), "198.18.128.0/17");
        assert_eq!(grown.service_node_port_range.to_string(), "30000-40000");
        for bad in ["30000", "0-10", "40000-30000", "30000-70000"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
        let limits = config.connection_limits(config.max_connections);
        assert_eq!(limits.max, 10_000);
        assert_eq!(limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(config.request_limits().inflight_per_user, 100);
        assert_eq!(config.request_limits().watches_per_user, 1_000);
        assert!(
            Config::try_parse_from(["berth-control", "--max-requests-inflight-per-user", "0"])
                .is_err()
        );
        let clash = Config::parse_from(["berth-control", "--service-cidr", "198.19.0.0/20"]);
        assert_eq!(
            clash.ranges(),
            Err("--cluster-cidr 198.19.0.0/16 overlaps --service-cidr 198.19.0.0/20".to_owned())
        );
    }
}
