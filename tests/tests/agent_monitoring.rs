//! The agents' Grafana dashboard (docs/monitoring/grafana-agents.json) against the real
//! Prometheus of the machine (Debian's `prometheus` and `promtool`), scraping a running
//! node: the control plane with `--metrics-listen`, the real berth-agent found through the
//! control plane's HTTP service discovery, and traffic through a Service. Every panel's
//! query and every recording rule of the agents' group returns series. Prometheus runs
//! in the node's namespace, where both listen. Skipped, with a message, only where the
//! binaries are absent. Needs root, BPF and Docker, and the images from `cargo xtask images`.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use berth_tests::process::{PodShell, Process, Setup, web_manifest};
use serde_json::Value;

const METRICS_LISTEN: &str = "127.0.0.1:9634";
const PROMETHEUS_LISTEN: &str = "127.0.0.1:9090";

fn monitoring_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/monitoring")
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_has_data_for_every_agent_panel_and_rule() {
    if !installed("prometheus") || !installed("promtool") {
        eprintln!("SKIPPED: no prometheus or promtool on this machine");
        return;
    }
    Setup::new("mon").run(run).await;
}

/// The queries the agents' dashboard and recording rules make.
fn queries() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring_dir().join("grafana-agents.json")).expect("dashboard"),
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
    let agents = rules
        .split("- name: berth-agents")
        .nth(1)
        .expect("the agents' group");
    queries.extend(
        agents
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- record: "))
            .map(str::to_owned),
    );
    queries
}

async fn run(setup: &Setup) {
    let metrics = format!("--metrics-listen={METRICS_LISTEN}");
    let _control = setup.control_plane_with(&[&metrics]).await;
    let _agent = setup.agent();
    setup.apply(&web_manifest(2, "198.18.200.30", true));
    setup.wait_running(3).await;

    let config = setup.data.path().join("prometheus.yml");
    let rules = monitoring_dir().join("rules.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [{rules:?}]
scrape_configs:
  - job_name: berth-control-plane
    static_configs: [{{targets: [{METRICS_LISTEN:?}]}}]
  - job_name: berth-agents
    http_sd_configs: [{{url: \"http://{METRICS_LISTEN}/http-sd/agents\", refresh_interval: 1s}}]
"
        ),
    )
    .expect("prometheus.yml");
    let _prometheus = Process(
        Command::new("ip")
            .args(["netns", "exec", setup.ns.name(), "prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                setup.data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS_LISTEN}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus"),
    );

    let client = PodShell::find(&setup.node, "client-").await;
    for query in queries() {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            // Traffic through the Service while waiting, so rates have samples that differ.
            let _ = client
                .run(&["wget", "-qO-", "http://web.default.svc.cluster.local/"])
                .await;
            let answer = Command::new("ip")
                .args(["netns", "exec", setup.ns.name(), "promtool", "query"])
                .args(["instant", "-o", "json"])
                .arg(format!("http://{PROMETHEUS_LISTEN}"))
                .arg(&query)
                .output()
                .expect("promtool");
            let series: Vec<Value> = serde_json::from_slice(&answer.stdout).unwrap_or_default();
            if !series.is_empty() {
                println!("{query}: {} series", series.len());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no data for {query} within 90 s: {}",
                String::from_utf8_lossy(&answer.stderr)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
