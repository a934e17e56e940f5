//! The agent's configuration, parsed in one place: command-line flags, then `BERTH_AGENT_*`
//! environment variables, then a YAML file (`--config`), then defaults. Tests build it
//! with [`Config::from_args`] and never touch the process environment.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use clap::Parser;
use serde::Deserialize;

use crate::{
    datapath::XdpMode,
    ipam::Cidr,
    pods::{DEFAULT_LOG_ROTATION, DEFAULT_PIDS_LIMIT},
    routing::RoutingMode,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Args(#[from] clap::Error),
    #[error("reading the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Flags and environment. Every setting is optional here so that the file can fill it.
#[derive(Debug, Parser)]
#[command(
    name = "berth-agent",
    about = "Berth node agent: runs the node's pods through Docker and programs the eBPF datapath",
    after_help = "Example:\n  berth-agent --node-name node-1 --server https://198.18.0.254:6444 \\\n    --ca-file /var/lib/berth/control/ca.crt --bootstrap-token-file token \\\n    --node-address 198.18.0.1 --external-interface eth0"
)]
struct Args {
    /// YAML file with any of the settings below (flag names, with dashes or underscores).
    #[arg(long, env = "BERTH_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// This node's name in the cluster [default: the host name].
    #[arg(long, env = "BERTH_AGENT_NODE_NAME")]
    node_name: Option<String>,
    /// The control plane's agent API (gRPC over TLS); with several control planes on
    /// etcd, each one's, comma-separated: the agent uses the first that answers and moves
    /// to another when it stops answering.
    #[arg(long, env = "BERTH_AGENT_SERVER")]
    server: Option<String>,
    /// The control plane's CA certificate (PEM).
    #[arg(long, env = "BERTH_AGENT_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// File holding the bootstrap token used to join the first time.
    #[arg(long, env = "BERTH_AGENT_BOOTSTRAP_TOKEN_FILE")]
    bootstrap_token_file: Option<PathBuf>,
    /// Where the node's key, certificate and pod range are kept
    /// [default: /var/lib/berth/agent/<node>].
    #[arg(long, env = "BERTH_AGENT_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// bpffs directory for the datapath's pinned maps and links
    /// [default: /sys/fs/bpf/berth/<node>].
    #[arg(long, env = "BERTH_AGENT_PIN_DIR")]
    pin_dir: Option<PathBuf>,
    /// Where the volumes of PersistentVolumeClaims are kept on this node; the control
    /// plane's `--local-volume-dir` must be the same [default: /var/lib/berth/volumes].
    #[arg(long, env = "BERTH_AGENT_LOCAL_VOLUME_DIR")]
    local_volume_dir: Option<PathBuf>,
    /// The node's address on the network between nodes.
    #[arg(long, env = "BERTH_AGENT_NODE_ADDRESS")]
    node_address: Option<Ipv4Addr>,
    /// Interface for north-south traffic (XDP). Berth attaches to no other interface
    /// than this and the pods' own veths; leave it out to serve east-west only.
    #[arg(long, env = "BERTH_AGENT_EXTERNAL_INTERFACE")]
    external_interface: Option<String>,
    /// How XDP attaches to the external interface: native or generic [default: native].
    #[arg(long, env = "BERTH_AGENT_XDP_MODE")]
    xdp_mode: Option<String>,
    /// How pods reach pods on other nodes: native (a route via each node, which must
    /// share a link with this one), encapsulation (IPIP to each node, over any underlay)
    /// or auto (native to nodes on a connected subnet, IPIP to the others) [default: auto].
    #[arg(long, env = "BERTH_AGENT_ROUTING_MODE")]
    routing_mode: Option<String>,
    /// Destination ranges pods' traffic keeps its pod address to, comma-separated or
    /// repeated; to any other address outside the cluster's pod ranges it leaves with the
    /// node's address [default: 198.19.0.0/16,198.18.192.0/18, berth-control's default
    /// --cluster-cidr and --service-cidr].
    #[arg(
        long = "non-masquerade-cidr",
        env = "BERTH_AGENT_NON_MASQUERADE_CIDRS",
        value_delimiter = ','
    )]
    non_masquerade_cidrs: Vec<String>,
    /// Where the DNS server listens (UDP and TCP) [default: <node address>:53].
    #[arg(long, env = "BERTH_AGENT_DNS_LISTEN")]
    dns_listen: Option<SocketAddr>,
    /// Where names outside the cluster domain are forwarded: IP or IP:PORT, comma-separated
    /// or repeated [default: the nameservers of the node's /etc/resolv.conf].
    #[arg(
        long = "dns-upstream",
        env = "BERTH_AGENT_DNS_UPSTREAMS",
        value_delimiter = ','
    )]
    dns_upstreams: Vec<String>,
    /// The resolv.conf whose nameservers are the upstreams when none are configured
    /// [default: /etc/resolv.conf].
    #[arg(long, env = "BERTH_AGENT_DNS_RESOLV_CONF")]
    dns_resolv_conf: Option<PathBuf>,
    /// The cluster's DNS domain [default: cluster.local].
    #[arg(long, env = "BERTH_AGENT_CLUSTER_DOMAIN")]
    cluster_domain: Option<String>,
    /// Where /metrics is served [default: <node address>:9102].
    #[arg(long, env = "BERTH_AGENT_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// The Docker engine's socket [default: /var/run/docker.sock].
    #[arg(long, env = "BERTH_AGENT_DOCKER_SOCKET")]
    docker_socket: Option<String>,
    /// Where the node API (logs, exec, datapath views for the control plane; mTLS)
    /// listens [default: <node address>:10250].
    #[arg(long, env = "BERTH_AGENT_NODE_API_LISTEN")]
    node_api_listen: Option<SocketAddr>,
    /// The most connections the node API holds open; more wait until one closes
    /// [default: 1000].
    #[arg(long, env = "BERTH_AGENT_NODE_API_MAX_CONNECTIONS")]
    node_api_max_connections: Option<usize>,
    /// The most processes each container may run (the kubelet's podPidsLimit, per
    /// container); 0: no limit [default: 4096].
    #[arg(
        long,
        env = "BERTH_AGENT_CONTAINER_PIDS_LIMIT",
        allow_negative_numbers = true
    )]
    container_pids_limit: Option<i64>,
    /// The size at which a container's log file is rotated, a quantity such as 10Mi (the
    /// kubelet's containerLogMaxSize) [default: 10Mi].
    #[arg(long, env = "BERTH_AGENT_CONTAINER_LOG_MAX_SIZE")]
    container_log_max_size: Option<String>,
    /// The log files kept per container, the one being written included; at least 2 (the
    /// kubelet's containerLogMaxFiles) [default: 5].
    #[arg(long, env = "BERTH_AGENT_CONTAINER_LOG_MAX_FILES")]
    container_log_max_files: Option<u32>,
}

/// The same settings as the file spells them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    #[serde(alias = "node_name")]
    node_name: Option<String>,
    server: Option<String>,
    #[serde(alias = "ca_file")]
    ca_file: Option<PathBuf>,
    #[serde(alias = "bootstrap_token_file")]
    bootstrap_token_file: Option<PathBuf>,
    #[serde(alias = "state_dir")]
    state_dir: Option<PathBuf>,
    #[serde(alias = "pin_dir")]
    pin_dir: Option<PathBuf>,
    #[serde(alias = "local_volume_dir")]
    local_volume_dir: Option<PathBuf>,
    #[serde(alias = "node_address")]
    node_address: Option<Ipv4Addr>,
    #[serde(alias = "external_interface")]
    external_interface: Option<String>,
    #[serde(alias = "xdp_mode")]
    xdp_mode: Option<String>,
    #[serde(alias = "routing_mode")]
    routing_mode: Option<String>,
    #[serde(alias = "non_masquerade_cidrs")]
    non_masquerade_cidrs: Option<Vec<String>>,
    #[serde(alias = "dns_listen")]
    dns_listen: Option<SocketAddr>,
    #[serde(alias = "dns_upstreams")]
    dns_upstreams: Option<Vec<String>>,
    #[serde(alias = "dns_resolv_conf")]
    dns_resolv_conf: Option<PathBuf>,
    #[serde(alias = "cluster_domain")]
    cluster_domain: Option<String>,
    #[serde(alias = "metrics_listen")]
    metrics_listen: Option<SocketAddr>,
    #[serde(alias = "docker_socket")]
    docker_socket: Option<String>,
    #[serde(alias = "node_api_listen")]
    node_api_listen: Option<SocketAddr>,
    #[serde(alias = "node_api_max_connections")]
    node_api_max_connections: Option<usize>,
    #[serde(alias = "container_pids_limit")]
    container_pids_limit: Option<i64>,
    #[serde(alias = "container_log_max_size")]
    container_log_max_size: Option<String>,
    #[serde(alias = "container_log_max_files")]
    container_log_max_files: Option<u32>,
}

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub node_name: String,
    /// The control planes' agent API URLs, in order of preference.
    pub servers: Vec<String>,
    pub ca_file: PathBuf,
    pub bootstrap_token_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub local_volume_dir: PathBuf,
    pub node_address: Ipv4Addr,
    pub external_interface: Option<String>,
    pub xdp_mode: XdpMode,
    pub routing_mode: RoutingMode,
    /// Destination ranges pods' traffic is not masqueraded to (besides every pod range).
    pub non_masquerade_cidrs: Vec<Cidr>,
    pub dns_listen: SocketAddr,
    /// Upstream resolvers for names outside the cluster domain (never the agent's own
    /// DNS address, which would loop).
    pub dns_upstreams: Vec<SocketAddr>,
    pub cluster_domain: String,
    pub metrics_listen: SocketAddr,
    pub docker_socket: String,
    pub node_api_listen: SocketAddr,
    pub node_api_max_connections: usize,
    /// None: containers may start any number of processes.
    pub container_pids_limit: Option<i64>,
    /// Each container's log rotation: (bytes per file, files kept).
    pub container_log_rotation: (u64, u32),
}

/// The ranges not masqueraded unless configured: berth-control's default `--cluster-cidr`
/// (pods) and `--service-cidr` (ClusterIPs). A cluster whose control plane has other
/// ranges configures the agents with them, as kube-proxy's `--cluster-cidr` or Cilium's
/// `ipv4-native-routing-cidr` are.
pub const DEFAULT_NON_MASQUERADE_CIDRS: [&str; 2] = ["198.19.0.0/16", "198.18.192.0/18"];

/// berth-control's default `--local-volume-dir`.
pub const DEFAULT_LOCAL_VOLUME_DIR: &str = "/var/lib/berth/volumes";

/// The most connections the node API holds unless configured.
pub const DEFAULT_NODE_API_MAX_CONNECTIONS: usize = 1000;

/// The node API's port unless configured: the kubelet's.
pub const DEFAULT_NODE_API_PORT: u16 = 10250;

fn required<T>(value: Option<T>, field: &'static str) -> Result<T, ConfigError> {
    value.ok_or(ConfigError::Invalid {
        field,
        reason: "is required (flag, BERTH_AGENT_* variable or configuration file)".into(),
    })
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

impl Config {
    /// Parses the process's arguments and environment (and the file they name).
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::resolve(Args::try_parse()?)
    }

    /// Parses the given arguments (the first is the program name). The environment is
    /// still consulted for unset flags; tests pass everything explicitly.
    pub fn from_args<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::resolve(Args::try_parse_from(args)?)
    }

    fn resolve(args: Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let node_name = required(
            args.node_name.or(file.node_name).or_else(hostname),
            "node-name",
        )?;
        let node_address = required(args.node_address.or(file.node_address), "node-address")?;
        let xdp_mode = match args
            .xdp_mode
            .or(file.xdp_mode)
            .as_deref()
            .unwrap_or("native")
        {
            "native" => XdpMode::Native,
            "generic" => XdpMode::Generic,
            other => {
                return Err(ConfigError::Invalid {
                    field: "xdp-mode",
                    reason: format!("{other:?} is not one of: native, generic"),
                });
            }
        };
        let routing_mode = match args.routing_mode.or(file.routing_mode) {
            None => RoutingMode::default(),
            Some(text) => text.parse().map_err(|reason| ConfigError::Invalid {
                field: "routing-mode",
                reason,
            })?,
        };
        let server = required(args.server.or(file.server), "server")?;
        let servers: Vec<String> = server
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect();
        if servers.is_empty() {
            return Err(ConfigError::Invalid {
                field: "server",
                reason: "no URL given".to_owned(),
            });
        }
        if let Some(url) = servers.iter().find(|url| !url.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                field: "server",
                reason: format!("{url:?} must be an https:// URL (the agent API is TLS only)"),
            });
        }
        let non_masquerade = match args.non_masquerade_cidrs {
            cidrs if !cidrs.is_empty() => cidrs,
            _ => file
                .non_masquerade_cidrs
                .unwrap_or_else(|| DEFAULT_NON_MASQUERADE_CIDRS.map(str::to_owned).to_vec()),
        };
        let non_masquerade_cidrs = non_masquerade
            .iter()
            .map(|text| {
                text.trim()
                    .parse::<Cidr>()
                    .map_err(|_| ConfigError::Invalid {
                        field: "non-masquerade-cidr",
                        reason: format!("{text:?} is not an IPv4 range such as 10.0.0.0/8"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let dns_listen = args
            .dns_listen
            .or(file.dns_listen)
            .unwrap_or(SocketAddr::from((node_address, 53)));
        let configured = match args.dns_upstreams {
            upstreams if !upstreams.is_empty() => upstreams,
            _ => file.dns_upstreams.unwrap_or_default(),
        };
        let dns_upstreams = if configured.is_empty() {
            let path = args
                .dns_resolv_conf
                .or(file.dns_resolv_conf)
                .unwrap_or_else(|| PathBuf::from("/etc/resolv.conf"));
            // A node without resolv.conf has no upstream: names outside the cluster fail.
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            resolv_conf_nameservers(&text)
        } else {
            configured
                .iter()
                .map(|text| parse_upstream(text))
                .collect::<Result<_, _>>()?
        };
        let dns_upstreams = dns_upstreams
            .into_iter()
            .filter(|upstream| *upstream != dns_listen)
            .collect();
        let container_pids_limit = match args
            .container_pids_limit
            .or(file.container_pids_limit)
            .unwrap_or(DEFAULT_PIDS_LIMIT)
        {
            0 => None,
            limit if limit > 0 => Some(limit),
            limit => {
                return Err(ConfigError::Invalid {
                    field: "container-pids-limit",
                    reason: format!("{limit} is negative; 0 means no limit"),
                });
            }
        };
        let log_max_size = match args.container_log_max_size.or(file.container_log_max_size) {
            None => DEFAULT_LOG_ROTATION.0,
            Some(text) => berth_api::core::parse_memory_bytes(text.trim())
                .ok()
                .filter(|bytes| *bytes > 0)
                .ok_or_else(|| ConfigError::Invalid {
                    field: "container-log-max-size",
                    reason: format!("{text:?} is not a positive size such as 10Mi"),
                })?,
        };
        let log_max_files = args
            .container_log_max_files
            .or(file.container_log_max_files)
            .unwrap_or(DEFAULT_LOG_ROTATION.1);
        if log_max_files < 2 {
            // With one file, rotation truncates what `logs` just showed.
            return Err(ConfigError::Invalid {
                field: "container-log-max-files",
                reason: format!("{log_max_files} is less than 2"),
            });
        }
        let node_api_max_connections = args
            .node_api_max_connections
            .or(file.node_api_max_connections)
            .unwrap_or(DEFAULT_NODE_API_MAX_CONNECTIONS);
        if node_api_max_connections == 0 {
            return Err(ConfigError::Invalid {
                field: "node-api-max-connections",
                reason: "must be at least 1".into(),
            });
        }
        Ok(Config {
            node_api_max_connections,
            container_pids_limit,
            container_log_rotation: (log_max_size, log_max_files),
            state_dir: args
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| Path::new("/var/lib/berth/agent").join(&node_name)),
            pin_dir: args
                .pin_dir
                .or(file.pin_dir)
                .unwrap_or_else(|| Path::new("/sys/fs/bpf/berth").join(&node_name)),
            local_volume_dir: args
                .local_volume_dir
                .or(file.local_volume_dir)
                .unwrap_or_else(|| DEFAULT_LOCAL_VOLUME_DIR.into()),
            servers,
            ca_file: required(args.ca_file.or(file.ca_file), "ca-file")?,
            bootstrap_token_file: args.bootstrap_token_file.or(file.bootstrap_token_file),
            external_interface: args.external_interface.or(file.external_interface),
            xdp_mode,
            routing_mode,
            non_masquerade_cidrs,
            dns_listen,
            dns_upstreams,
            cluster_domain: args
                .cluster_domain
                .or(file.cluster_domain)
                .unwrap_or_else(|| "cluster.local".into()),
            metrics_listen: args
                .metrics_listen
                .or(file.metrics_listen)
                .unwrap_or(SocketAddr::from((node_address, 9102))),
            docker_socket: args
                .docker_socket
                .or(file.docker_socket)
                .unwrap_or_else(|| "/var/run/docker.sock".into()),
            node_api_listen: args
                .node_api_listen
                .or(file.node_api_listen)
                .unwrap_or(SocketAddr::from((node_address, DEFAULT_NODE_API_PORT))),
            node_name,
            node_address,
        })
    }
}

/// `IP` (port 53) or `IP:PORT`.
fn parse_upstream(text: &str) -> Result<SocketAddr, ConfigError> {
    let text = text.trim();
    text.parse::<SocketAddr>()
        .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| ConfigError::Invalid {
            field: "dns-upstream",
            reason: format!("{text:?} is not an IP address or IP:PORT"),
        })
}

/// The `nameserver` lines of a resolv.conf, on port 53.
fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_norway::from_str(&text).map_err(|error| ConfigError::File {
        path: path.to_path_buf(),
        message: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &[&str] = &[
        "berth-agent",
        "--node-name",
        "n1",
        "--server",
        "https://198.18.0.254:6444",
        "--ca-file",
        "/tmp/ca.crt",
        "--node-address",
        "198.18.0.1",
    ];

    #[test]
    fn several_control_planes_in_order_each_https() {
        let with = |servers: &str| {
            let mut args: Vec<&str> = BASE.to_vec();
            args[4] = servers;
            Config::from_args(args)
        };
        assert_eq!(
            with("https://a:6444, https://b:6444")
                .map(|c| c.servers)
                .ok(),
            Some(vec![
                "https://a:6444".to_owned(),
                "https://b:6444".to_owned()
            ])
        );
        assert!(with("https://a:6444,http://b:6444").is_err());
        assert!(with(",").is_err());
    }

    #[test]
    fn defaults_follow_the_node() {
        let config = Config::from_args(BASE).expect("valid");
        assert_eq!(config.pin_dir, Path::new("/sys/fs/bpf/berth/n1"));
        assert_eq!(config.state_dir, Path::new("/var/lib/berth/agent/n1"));
        assert_eq!(config.servers, ["https://198.18.0.254:6444"]);
        assert_eq!(config.dns_listen, "198.18.0.1:53".parse().expect("addr"));
        assert_eq!(
            config.metrics_listen,
            "198.18.0.1:9102".parse().expect("addr")
        );
        assert_eq!(
            config.node_api_listen,
            "198.18.0.1:10250".parse().expect("addr")
        );
        assert_eq!(config.external_interface, None);
        assert_eq!(config.xdp_mode, XdpMode::Native);
        assert_eq!(config.routing_mode, RoutingMode::Auto);
        let ranges: Vec<String> = config
            .non_masquerade_cidrs
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(ranges, DEFAULT_NON_MASQUERADE_CIDRS);
        assert_eq!(config.container_pids_limit, Some(DEFAULT_PIDS_LIMIT));
        assert_eq!(config.container_log_rotation, DEFAULT_LOG_ROTATION);
        assert_eq!(
            config.node_api_max_connections,
            DEFAULT_NODE_API_MAX_CONNECTIONS
        );
    }

    #[test]
    fn container_limits_from_flags_and_their_mistakes_named() {
        let with = |extra: &[&str]| {
            let mut args: Vec<&str> = BASE.to_vec();
            args.extend(extra);
            Config::from_args(&args)
        };
        let config = with(&[
            "--container-pids-limit",
            "0",
            "--container-log-max-size",
            "16Ki",
            "--container-log-max-files",
            "2",
        ])
        .expect("valid");
        assert_eq!(config.container_pids_limit, None, "0 is no limit");
        assert_eq!(config.container_log_rotation, (16 << 10, 2));
        for (extra, field) in [
            (["--container-pids-limit", "-1"], "container-pids-limit"),
            (["--container-log-max-size", "0"], "container-log-max-size"),
            (
                ["--container-log-max-size", "ten"],
                "container-log-max-size",
            ),
            (
                ["--container-log-max-files", "1"],
                "container-log-max-files",
            ),
            (
                ["--node-api-max-connections", "0"],
                "node-api-max-connections",
            ),
        ] {
            let error = with(&extra).expect_err("refused").to_string();
            assert!(error.starts_with(field), "{extra:?}: {error}");
        }
    }

    #[test]
    fn non_masquerade_ranges_from_flags_or_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.yaml");
        std::fs::write(&file, "non-masquerade-cidrs: [\"10.0.0.0/8\"]\n").expect("write");
        let mut args: Vec<String> = BASE.iter().map(|s| s.to_string()).collect();
        args.extend(["--config".into(), file.display().to_string()]);
        let config = Config::from_args(&args).expect("valid");
        assert_eq!(
            config.non_masquerade_cidrs,
            ["10.0.0.0/8".parse::<Cidr>().expect("cidr")]
        );
        args.extend([
            "--non-masquerade-cidr".into(),
            "172.16.0.0/12,192.168.1.7/24".into(),
        ]);
        let config = Config::from_args(&args).expect("valid");
        let ranges: Vec<String> = config
            .non_masquerade_cidrs
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            ranges,
            ["172.16.0.0/12", "192.168.1.0/24"],
            "the flag wins over the file; host bits are cleared"
        );
        args.extend(["--non-masquerade-cidr".into(), "10.0.0.0".into()]);
        let error = Config::from_args(&args).expect_err("no prefix").to_string();
        assert!(error.contains("non-masquerade-cidr"), "{error}");
    }

    #[test]
    fn the_file_fills_what_flags_leave_out_and_flags_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.yaml");
        std::fs::write(
            &file,
            "external-interface: eth0\nxdp_mode: generic\nnode-name: from-file\nnode-api-listen: 127.0.0.1:11250\nrouting-mode: encapsulation\n",
        )
        .expect("write");
        let mut args: Vec<String> = BASE.iter().map(|s| s.to_string()).collect();
        args.extend(["--config".into(), file.display().to_string()]);
        let config = Config::from_args(&args).expect("valid");
        assert_eq!(config.external_interface.as_deref(), Some("eth0"));
        assert_eq!(config.xdp_mode, XdpMode::Generic);
        assert_eq!(config.node_name, "n1", "the flag wins over the file");
        assert_eq!(config.routing_mode, RoutingMode::Encapsulation);
        args.extend(["--routing-mode".into(), "native".into()]);
        let config = Config::from_args(&args).expect("valid");
        assert_eq!(config.routing_mode, RoutingMode::Native);
        assert_eq!(
            config.node_api_listen,
            "127.0.0.1:11250".parse().expect("addr")
        );
    }

    #[test]
    fn mistakes_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.yaml");
        std::fs::write(&file, "external-interfaces: eth0\n").expect("write");
        let mut args: Vec<String> = BASE.iter().map(|s| s.to_string()).collect();
        args.extend(["--config".into(), file.display().to_string()]);
        let error = Config::from_args(&args)
            .expect_err("unknown key")
            .to_string();
        assert!(
            error.contains("agent.yaml") && error.contains("external-interfaces"),
            "{error}"
        );

        let mut args: Vec<&str> = BASE.to_vec();
        args.extend(["--xdp-mode", "fast"]);
        let error = Config::from_args(&args).expect_err("bad mode").to_string();
        assert!(
            error.contains("xdp-mode") && error.contains("fast"),
            "{error}"
        );
        let mut args: Vec<&str> = BASE.to_vec();
        args.extend(["--routing-mode", "vxlan"]);
        let error = Config::from_args(&args).expect_err("bad mode").to_string();
        assert!(
            error.contains("routing-mode") && error.contains("vxlan"),
            "{error}"
        );

        let error = Config::from_args(["berth-agent", "--node-name", "n1"])
            .expect_err("missing")
            .to_string();
        assert!(error.contains("is required"), "{error}");
    }

    #[test]
    fn dns_upstreams_from_flags_file_or_resolv_conf() {
        let dir = tempfile::tempdir().expect("tempdir");
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(
            &resolv,
            "# the node's\nnameserver 10.0.0.2\nnameserver 198.18.0.1\nsearch lan\n",
        )
        .expect("write");
        let mut args: Vec<String> = BASE.iter().map(|s| s.to_string()).collect();
        args.extend(["--dns-resolv-conf".into(), resolv.display().to_string()]);
        let config = Config::from_args(&args).expect("valid");
        // The agent's own DNS address (198.18.0.1:53) would forward to itself.
        assert_eq!(
            config.dns_upstreams,
            ["10.0.0.2:53".parse::<SocketAddr>().expect("addr")]
        );

        let file = dir.path().join("agent.yaml");
        std::fs::write(
            &file,
            "dns-upstreams: [\"192.0.2.1\", \"192.0.2.2:5353\"]\n",
        )
        .expect("write");
        args.extend(["--config".into(), file.display().to_string()]);
        let config = Config::from_args(&args).expect("valid");
        assert_eq!(
            config.dns_upstreams,
            [
                "192.0.2.1:53".parse::<SocketAddr>().expect("addr"),
                "192.0.2.2:5353".parse().expect("addr")
            ]
        );
        args.extend(["--dns-upstream".into(), "127.0.0.1:1053,127.0.0.2".into()]);
        let config = Config::from_args(&args).expect("valid");
        assert_eq!(
            config.dns_upstreams,
            [
                "127.0.0.1:1053".parse::<SocketAddr>().expect("addr"),
                "127.0.0.2:53".parse().expect("addr")
            ],
            "the flag wins over the file"
        );
        args.extend(["--dns-upstream".into(), "resolver.lan".into()]);
        let error = Config::from_args(&args).expect_err("a name").to_string();
        assert!(error.contains("dns-upstream"), "{error}");
    }
}
