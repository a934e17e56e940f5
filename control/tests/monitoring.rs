//! Berth watched by the real Prometheus of the machine (Debian's `prometheus` and
//! `promtool`): the shipped rules pass `promtool check` and their unit tests, and a
//! Prometheus scraping a running control plane gets data for every panel of the shipped
//! Grafana dashboard and every control-plane recording rule. Skipped, with a message,
//! only where the binaries are absent.

mod common;

use std::{path::PathBuf, process::Stdio};

use axum::http::Method;
use berth_api::kubeconfig::ClientSettings;
use berth_ctl::client::Client;
use common::{DEPLOYMENTS, HollowCluster, deployment, eventually};
use serde_json::Value;

fn monitoring_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/monitoring")
}

/// `program`'s output, or None when it is not installed.
async fn run(program: &str, args: &[&str]) -> Option<std::process::Output> {
    match tokio::process::Command::new(program)
        .args(args)
        .current_dir(monitoring_dir())
        .output()
        .await
    {
        Ok(output) => Some(output),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("running {program}: {e}"),
    }
}

#[tokio::test]
async fn the_rules_pass_promtool_and_their_unit_tests() {
    let Some(checked) = run("promtool", &["check", "rules", "rules.yml"]).await else {
        eprintln!("SKIPPED: no promtool on this machine");
        return;
    };
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    let tested = run("promtool", &["test", "rules", "rules_test.yml"])
        .await
        .expect("promtool");
    assert!(
        tested.status.success(),
        "{}{}",
        String::from_utf8_lossy(&tested.stdout),
        String::from_utf8_lossy(&tested.stderr)
    );
    let config = run("promtool", &["check", "config", "prometheus.yml"])
        .await
        .expect("promtool");
    assert!(
        config.status.success(),
        "{}",
        String::from_utf8_lossy(&config.stderr)
    );
}

/// A Prometheus of its own on a free port; killed when dropped.
struct Prometheus {
    child: tokio::process::Child,
    client: Client,
    _data: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Prometheus {
    async fn start(control_plane: &str) -> Option<Self> {
        let data = tempfile::tempdir().expect("prometheus dir");
        let rules = monitoring_dir().join("rules.yml");
        let config = data.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [{rules:?}]
scrape_configs:
  - job_name: berth-control-plane
    static_configs: [{{targets: [{control_plane:?}]}}]
  - job_name: berth-agents
    http_sd_configs: [{{url: \"http://{control_plane}/http-sd/agents\", refresh_interval: 1s}}]
"
            ),
        )
        .expect("prometheus.yml");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = tokio::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => panic!("starting prometheus: {e}"),
        };
        let client = Client::new(ClientSettings {
            server: format!("http://127.0.0.1:{port}"),
            failover_servers: Vec::new(),
            ca_pem: None,
            token: None,
            client_certificate: None,
        })
        .expect("client");
        Some(Self {
            child,
            client,
            _data: data,
        })
    }

    /// The series an instant query returns (none while Prometheus starts).
    async fn query(&self, expr: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", berth_ctl::encode(expr));
        match self.client.request(Method::GET, &path, None).await {
            Ok(reply) => reply
                .json()
                .ok()
                .and_then(|body| body["data"]["result"].as_array().cloned())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }
}

#[tokio::test]
async fn prometheus_has_data_for_every_panel_and_recording_rule() {
    let c = HollowCluster::start(&["--metrics-listen", "127.0.0.1:0"]).await;
    let metrics =
        c.t.server
            .metrics_addr
            .expect("metrics listener")
            .to_string();
    let Some(prometheus) = Prometheus::start(&metrics).await else {
        eprintln!("SKIPPED: no prometheus on this machine");
        return;
    };
    // Something for every panel to show: a scheduled Deployment, a watch, API traffic.
    let _n0 = c.node("n0").await;
    let (status, body) =
        c.t.call(
            Method::POST,
            DEPLOYMENTS,
            Some(&deployment("web", "echo:1")),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let _watch =
        c.t.client
            .watch(&format!("{DEPLOYMENTS}?watch=true"))
            .await
            .expect("watch");
    let sd = Client::new(ClientSettings {
        server: format!("http://{metrics}"),
        failover_servers: Vec::new(),
        ca_pem: None,
        token: None,
        client_certificate: None,
    })
    .expect("client")
    .request(Method::GET, "/http-sd/agents", None)
    .await
    .expect("http-sd")
    .json()
    .expect("json");
    assert!(sd.is_array(), "Prometheus HTTP SD format: {sd}");

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring_dir().join("grafana-control-plane.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut queries: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(queries.len() >= 10, "{queries:?}");
    let rules = std::fs::read_to_string(monitoring_dir().join("rules.yml")).expect("rules");
    let group = rules
        .split("- name: berth-agents")
        .next()
        .expect("the control plane's group comes first");
    queries.extend(
        group
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- record: "))
            .map(str::to_owned),
    );
    for query in &queries {
        let series = eventually(&format!("data for {query}"), || async {
            // Traffic while waiting, so rates have two samples to tell apart.
            let _ = c.t.call(Method::GET, DEPLOYMENTS, None).await;
            let series = prometheus.query(query).await;
            (!series.is_empty()).then_some(series)
        })
        .await;
        assert!(!series.is_empty(), "{query}");
    }
    let up = prometheus.query(r#"up{job="berth-control-plane"}"#).await;
    assert_eq!(up.first().map(|s| &s["value"][1]), Some(&Value::from("1")));
}
