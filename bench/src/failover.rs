//! Failover (issue 8, item 3): how long a failing backend keeps getting requests, how many
//! fail, and how long it takes to come back — with Berth's probe defaults and with
//! Kubernetes' (period 10 s, failure threshold 3), run through the same system.
//!
//! The system is the end-to-end cluster of berth-tests (`berth_tests::e2e`): three node
//! namespaces, the real berth-control, one real berth-agent per node and the real Docker
//! engine. A Deployment of three berth/echo replicas behind a NodePort Service, and a client
//! pod. During each trial two clients send one request every [`PACE`], each on a new
//! connection: the client pod to the ClusterIP, a machine outside the cluster to node 0's
//! NodePort. Every request is recorded (when it was sent, which pod answered or that it
//! failed), so the times come from what the clients saw, not from the control plane.
//!
//! Two failures: the backend's readiness starts failing (`/tmp/berth-unready` in its
//! container: it keeps serving, its `/readyz` answers 503), and its container is killed
//! (SIGKILL; the agent restarts it). The probe configuration changes with a rolling update
//! of the Deployment, so each configuration's trials run on its own fresh pods.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use berth_agent::runtime::DockerRuntime;
use berth_tests::{
    Load, Sample,
    e2e::{ControlOptions, E2eCluster, app_container, exec, names, wait_responders},
    process::{RunningPod, WebManifest, pod_netns},
};
use serde::{Deserialize, Serialize};

use crate::procs::check_interrupted;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 41);
const NODE_PORT: u16 = 30082;
/// One request every 10 ms from each client: 100 requests per second each.
pub const PACE: Duration = Duration::from_millis(10);
/// A backend that answered none of the two clients' ~400 requests in this long is out of
/// rotation: in rotation it gets about a third of them.
const QUIET: Duration = Duration::from_secs(2);
/// Longest wait for a backend to leave or rejoin (Kubernetes' readiness takes up to 30 s
/// to notice a failure, a restarted container up to one more period to pass).
const WITHIN: Duration = Duration::from_secs(90);
const UNREADY_FILE: &str = "/tmp/berth-unready";
/// Longer than the agent's start-up grace for unready reports (5 s).
const AGENT_STARTUP: Duration = Duration::from_secs(8);

/// The readiness probe settings a trial runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Probes {
    /// No period or threshold in the manifest: the agent's defaults (1 s, 1).
    Berth,
    /// `periodSeconds: 10, failureThreshold: 3` in the manifest: Kubernetes' defaults.
    Kubernetes,
}

impl Probes {
    pub const ALL: [Probes; 2] = [Probes::Berth, Probes::Kubernetes];

    pub fn label(self) -> &'static str {
        match self {
            Probes::Berth => "Berth's defaults (period 1 s, threshold 1)",
            Probes::Kubernetes => "Kubernetes' defaults (period 10 s, threshold 3)",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Probes::Berth => "Berth's defaults",
            Probes::Kubernetes => "Kubernetes' defaults",
        }
    }

    /// The probe period in effect.
    fn period(self) -> Duration {
        match self {
            Probes::Berth => berth_agent::probes::DEFAULT_PERIOD,
            Probes::Kubernetes => Duration::from_secs(10),
        }
    }

    /// (periodSeconds, failureThreshold) written into the manifest.
    fn fields(self) -> (Option<u32>, Option<u32>) {
        match self {
            Probes::Berth => (None, None),
            Probes::Kubernetes => (Some(10), Some(3)),
        }
    }

    fn manifest(self) -> String {
        let (period, threshold) = self.fields();
        WebManifest {
            replicas: 3,
            cluster_ip: &VIP.to_string(),
            image: "berth/echo:v1",
            node_port: Some(NODE_PORT),
            with_client: true,
            pre_stop_sleep: 0,
            readiness_period: period,
            readiness_failure_threshold: threshold,
        }
        .render()
    }
}

/// What goes wrong with one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Failure {
    /// Its readiness probe starts failing; it keeps serving.
    Unready,
    /// Its container is killed with SIGKILL; the agent restarts it.
    Killed,
}

impl Failure {
    pub const ALL: [Failure; 2] = [Failure::Unready, Failure::Killed];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Unready => "readiness fails",
            Failure::Killed => "container killed",
        }
    }
}

/// What one client saw during a trial.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PathOutcome {
    pub requests: u64,
    pub failed: u64,
    /// Requests the failing backend answered after the failure (an unready backend still
    /// serves; a real one failing its readiness may not).
    pub to_failing: u64,
    /// From the failure to the last request it affected (answered by the unready backend,
    /// or failed): how long until the service had failed over. 0 when none was affected.
    pub failover_secs: f64,
    /// From the backend being healthy again (its readiness passes again; killed: from the
    /// kill) to the first request it answered. None if it did not come back.
    pub recovery_secs: Option<f64>,
    /// When each failed request was sent, from the failure (negative: before it).
    #[serde(default)]
    pub failed_at_secs: Vec<f64>,
}

/// One failure, injected and recovered from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub probes: Probes,
    pub failure: Failure,
    pub repetition: u32,
    pub victim: String,
    /// The failing backend ran on the client pod's node (whose agent takes a local backend
    /// out of the datapath itself, without waiting for the control plane).
    pub victim_on_client_node: bool,
    /// The failing backend ran on node 0, where the NodePort client enters.
    pub victim_on_node_port_node: bool,
    /// How long the docker exec or kill that injected the failure took (the times count
    /// from before it).
    pub inject_secs: f64,
    /// Killed: when the agent had started a new container.
    pub restarted_secs: Option<f64>,
    /// When its address was seen to leave the Service's Endpoints (from the failure), and
    /// to come back (from healthy again, as `recovery_secs`); polled, so to within about
    /// 0.1 s, and a change shorter than that may be missed.
    #[serde(default)]
    pub endpoints_left_secs: Option<f64>,
    #[serde(default)]
    pub endpoints_back_secs: Option<f64>,
    pub cluster_ip: PathOutcome,
    pub node_port: PathOutcome,
    /// The first few different messages of failed requests.
    #[serde(default)]
    pub errors: Vec<String>,
}

impl Trial {
    pub fn failed(&self) -> u64 {
        self.cluster_ip.failed + self.node_port.failed
    }

    pub fn to_failing(&self) -> u64 {
        self.cluster_ip.to_failing + self.node_port.to_failing
    }

    /// Failed over for both clients.
    pub fn failover_secs(&self) -> f64 {
        self.cluster_ip
            .failover_secs
            .max(self.node_port.failover_secs)
    }

    /// Back for both clients.
    pub fn recovery_secs(&self) -> Option<f64> {
        Some(
            self.cluster_ip
                .recovery_secs?
                .max(self.node_port.recovery_secs?),
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailoverResults {
    pub smoke: bool,
    pub started: String,
    pub elapsed_secs: f64,
    pub repetitions: u32,
    pub pace_ms: u64,
    /// The build profile of berth-control and berth-agent.
    pub binaries: String,
    pub trials: Vec<Trial>,
}

pub struct Options {
    pub smoke: bool,
    pub repetitions: u32,
    pub probes: Vec<Probes>,
}

/// The build profile of the binaries next to this one ("release" under `cargo xtask bench`).
pub fn profile() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// Builds the cluster, runs every trial, removes everything (also on failure or Ctrl-C).
pub fn run(options: &Options, say: &dyn Fn(&str)) -> anyhow::Result<FailoverResults> {
    let started = Instant::now();
    let started_at = crate::procs::now_utc();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    // The harness reports what goes wrong by panicking (it is a test harness); its `run`
    // removes the cluster and resumes the panic, which becomes this part's error here.
    let trials = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async {
            // The control plane's own defaults: nodes and the autoscaler play no part here.
            let cluster = E2eCluster::new(
                3,
                ControlOptions {
                    node_grace_secs: 40,
                    pod_eviction_timeout_secs: 60,
                    autoscaler_sync_secs: 15,
                    autoscaler_downscale_stabilization_secs: 300,
                },
            );
            cluster
                .run(async |cluster| trials(cluster, options, say).await)
                .await
        })
    }))
    .map_err(|panic| {
        anyhow::anyhow!(
            "the failover cluster failed: {}",
            crate::procs::panic_message(panic.as_ref())
        )
    })??;
    Ok(FailoverResults {
        smoke: options.smoke,
        started: started_at,
        elapsed_secs: started.elapsed().as_secs_f64(),
        repetitions: options.repetitions,
        pace_ms: PACE.as_millis() as u64,
        binaries: profile(),
        trials,
    })
}

/// What stays the same over the trials: the client pod and the two targets.
struct Setting {
    runtime: DockerRuntime,
    client: RunningPod,
    client_ns: String,
    /// The namespace of the client outside the cluster.
    outside_ns: String,
    vip: SocketAddrV4,
    node_port: SocketAddrV4,
    node_port_node: String,
}

async fn trials(
    cluster: &mut E2eCluster,
    options: &Options,
    say: &dyn Fn(&str),
) -> anyhow::Result<Vec<Trial>> {
    let runtime = DockerRuntime::connect("/var/run/docker.sock")
        .await
        .context("connecting to Docker")?;
    say("failover: starting the cluster (3 nodes, berth-control, 3 berth-agents)");
    cluster.start().await;
    let agents_started = Instant::now();
    let mut kept: Option<Setting> = None;
    let mut trials = Vec::new();
    // Pods that were killed once: a second kill within 10 minutes meets the restart
    // back-off (CrashLoopBackOff, 10 s), so each kill takes a pod never killed before.
    let mut killed = BTreeSet::new();
    for probes in &options.probes {
        check_interrupted()?;
        say(&format!("failover: deploying web with {}", probes.label()));
        cluster.apply(&probes.manifest());
        cluster.rollout_status("web");
        let setting = match kept.take() {
            Some(setting) => setting,
            None => {
                let client = cluster
                    .wait_ready("client-", 1, Duration::from_secs(180))
                    .await
                    .remove(0);
                let client_ns = pod_netns(client.ip);
                Setting {
                    runtime: runtime.clone(),
                    client,
                    client_ns,
                    outside_ns: cluster.client.name().to_owned(),
                    vip: SocketAddrV4::new(VIP, 80),
                    node_port: SocketAddrV4::new(cluster.nodes[0].addr, NODE_PORT),
                    node_port_node: cluster.nodes[0].name.clone(),
                }
            }
        };
        // A starting agent holds back "unready" reports of pods the control plane has as
        // ready for its first 5 s (ADOPTION_GRACE in agent/src/run.rs: its adopted
        // containers' probes have not decided yet), which would delay the other nodes by up
        // to that much: the trials measure agents that have been running a while.
        let settled_agents = agents_started + AGENT_STARTUP;
        tokio::time::sleep_until(settled_agents.into()).await;
        for repetition in 1..=options.repetitions {
            for failure in Failure::ALL {
                check_interrupted()?;
                let web = settle(cluster, &setting).await;
                let victim = choose_victim(&web, &setting, failure, &killed)?;
                if failure == Failure::Killed {
                    killed.insert(victim.name.clone());
                }
                let trial = trial(cluster, &setting, *probes, failure, repetition, &victim).await?;
                say(&format!(
                    "failover: {} · {} · {repetition}/{}: {} failed, {} to the failing backend, failed over after {}, back after {} (Endpoints: out after {}, back after {})",
                    probes.short(),
                    failure.label(),
                    options.repetitions,
                    trial.failed(),
                    trial.to_failing(),
                    crate::figures::seconds(trial.failover_secs()),
                    trial
                        .recovery_secs()
                        .map_or("–".into(), crate::figures::seconds),
                    trial
                        .endpoints_left_secs
                        .map_or("–".into(), crate::figures::seconds),
                    trial
                        .endpoints_back_secs
                        .map_or("–".into(), crate::figures::seconds),
                ));
                trials.push(trial);
                if failure == Failure::Killed {
                    // A fresh pod replaces it, keeping three never-killed candidates.
                    cluster.berthctl_ok(&["delete", "pod", &victim.name]);
                }
            }
        }
        kept = Some(setting);
    }
    Ok(trials)
}

/// Waits until three web pods are ready and every one answers both clients.
async fn settle(cluster: &E2eCluster, setting: &Setting) -> Vec<RunningPod> {
    let web = cluster
        .wait_ready("web-", 3, Duration::from_secs(180))
        .await;
    let wanted = names(&web);
    wait_responders(&setting.client_ns, setting.vip, &wanted, WITHIN).await;
    wait_responders(&setting.outside_ns, setting.node_port, &wanted, WITHIN).await;
    web
}

/// A backend on neither client's node if there is one (the slower case: the control
/// plane must tell the clients' nodes), else one off the client pod's node, else any;
/// for a kill, one never killed before.
fn choose_victim(
    web: &[RunningPod],
    setting: &Setting,
    failure: Failure,
    killed: &BTreeSet<String>,
) -> anyhow::Result<RunningPod> {
    let candidates: Vec<&RunningPod> = web
        .iter()
        .filter(|pod| failure != Failure::Killed || !killed.contains(&pod.name))
        .collect();
    let remote = |pod: &&&RunningPod| pod.node != setting.client.node;
    candidates
        .iter()
        .find(|pod| remote(pod) && pod.node != setting.node_port_node)
        .or_else(|| candidates.iter().find(remote))
        .or_else(|| candidates.first())
        .map(|pod| (*pod).clone())
        .context("no web pod to fail")
}

/// The two steady clients of a trial.
struct Clients {
    cluster_ip: Load,
    node_port: Load,
}

impl Clients {
    /// The latest request each client sent that `pod` answered at or after `since`;
    /// None for a client it has not answered since.
    fn last_answer(&self, pod: &str, since: Instant) -> [Option<Instant>; 2] {
        [&self.cluster_ip, &self.node_port].map(|load| {
            load.with_samples(|samples| {
                samples
                    .iter()
                    .rev()
                    .take_while(|s| s.at >= since)
                    .find(|s| s.pod.as_deref() == Some(pod))
                    .map(|s| s.at)
            })
        })
    }

    /// Whether both clients sent requests over the last `window`.
    fn both_sent_within(&self, window: Duration) -> bool {
        [&self.cluster_ip, &self.node_port].iter().all(|load| {
            load.with_samples(|samples| {
                samples
                    .first()
                    .is_some_and(|first| first.at.elapsed() >= window)
            })
        })
    }
}

/// When the failing backend's address left the Service's Endpoints and came back, polled
/// with berthctl: the control plane's part of the failover, apart from the datapaths'.
struct EndpointsWatch {
    address: String,
    left: Option<Instant>,
    back: Option<Instant>,
}

impl EndpointsWatch {
    fn poll(&mut self, cluster: &E2eCluster) {
        if self.back.is_some() {
            return;
        }
        // The list, not `get endpoints web`: that one also asks every node's agent.
        let listing = cluster.berthctl(&["get", "endpoints"]);
        let listing = String::from_utf8_lossy(&listing.stdout);
        let listed = listing
            .lines()
            .filter(|line| line.starts_with("web "))
            .flat_map(|line| line.split([' ', ',']))
            .any(|endpoint| endpoint.starts_with(&self.address));
        let now = Instant::now();
        match (listed, self.left) {
            (false, None) => self.left = Some(now),
            (true, Some(_)) => self.back = Some(now),
            _ => {}
        }
    }
}

async fn trial(
    cluster: &E2eCluster,
    setting: &Setting,
    probes: Probes,
    failure: Failure,
    repetition: u32,
    victim: &RunningPod,
) -> anyhow::Result<Trial> {
    let runtime = &setting.runtime;
    let pod = victim.name.as_str();
    let container = app_container(runtime, pod)
        .await
        .with_context(|| format!("no running container in {pod}"))?;
    let clients = Clients {
        cluster_ip: Load::paced(&setting.client_ns, setting.vip, PACE),
        node_port: Load::paced(&setting.outside_ns, setting.node_port, PACE),
    };
    // A second of normal traffic first: the failing backend answers its share. Then a
    // random part of a probe period, so that failures fall anywhere between two probes:
    // trials of the same length would otherwise hit the same phase of the probes' ticks
    // every time.
    tokio::time::sleep(Duration::from_secs(1) + random_part(probes.period())).await;
    let failed_at = Instant::now();
    match failure {
        Failure::Unready => {
            exec(
                runtime,
                &container,
                &["/bin/busybox", "touch", UNREADY_FILE],
            )
            .await;
        }
        Failure::Killed => runtime
            .kill(&container, "SIGKILL")
            .await
            .with_context(|| format!("killing {pod}'s container"))?,
    }
    let injected = Instant::now();
    let mut restarted = None;
    let mut endpoints = EndpointsWatch {
        address: format!("{}:", victim.ip),
        left: None,
        back: None,
    };
    let healthy_at = match failure {
        Failure::Unready => {
            // Out of rotation: no answer from it for QUIET, to either client.
            loop {
                check_interrupted()?;
                endpoints.poll(cluster);
                let last = clients
                    .last_answer(pod, failed_at)
                    .into_iter()
                    .flatten()
                    .max()
                    .unwrap_or(failed_at);
                if last.elapsed() >= QUIET && clients.both_sent_within(QUIET) {
                    break;
                }
                if failed_at.elapsed() > WITHIN {
                    bail!("{pod} kept answering {WITHIN:?} after its readiness failed");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(random_part(probes.period())).await;
            let healthy_at = Instant::now();
            exec(runtime, &container, &["/bin/busybox", "rm", UNREADY_FILE]).await;
            healthy_at
        }
        // Killed: healthy again is the restarted container passing its probe, which only
        // the answers show; recovery counts from the kill.
        Failure::Killed => failed_at,
    };
    // Back: it answered both clients again.
    let back_since = if failure == Failure::Killed {
        // Requests sent while the kill was being delivered may still have reached the
        // old process.
        injected
    } else {
        healthy_at
    };
    loop {
        check_interrupted()?;
        endpoints.poll(cluster);
        if failure == Failure::Killed
            && restarted.is_none()
            && app_container(runtime, pod)
                .await
                .is_some_and(|id| id != container)
        {
            restarted = Some(failed_at.elapsed().as_secs_f64());
        }
        if clients
            .last_answer(pod, back_since)
            .iter()
            .all(Option::is_some)
        {
            break;
        }
        if back_since.elapsed() > WITHIN {
            bail!("{pod} did not answer again within {WITHIN:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut errors = Vec::new();
    let mut samples = |load: Load| {
        let samples = load.with_samples(<[Sample]>::to_vec);
        for error in load.finish().2 {
            if errors.len() < 3 && !errors.contains(&error) {
                errors.push(error);
            }
        }
        samples
    };
    let outcome = |samples: &[Sample]| {
        outcome(
            samples,
            pod,
            failure,
            failed_at,
            healthy_at,
            back_since,
            Instant::now(),
        )
    };
    let cluster_ip = outcome(&samples(clients.cluster_ip));
    let node_port = outcome(&samples(clients.node_port));
    Ok(Trial {
        probes,
        failure,
        repetition,
        victim: pod.to_owned(),
        victim_on_client_node: victim.node == setting.client.node,
        victim_on_node_port_node: victim.node == setting.node_port_node,
        inject_secs: injected.duration_since(failed_at).as_secs_f64(),
        restarted_secs: restarted,
        endpoints_left_secs: endpoints
            .left
            .map(|at| at.duration_since(failed_at).as_secs_f64()),
        endpoints_back_secs: endpoints
            .back
            .map(|at| at.saturating_duration_since(healthy_at).as_secs_f64()),
        cluster_ip,
        node_port,
        errors,
    })
}

/// A uniformly random part of `whole`.
fn random_part(whole: Duration) -> Duration {
    use std::hash::BuildHasher as _;
    // std's hasher keys are random per RandomState: enough randomness for a phase.
    let bits = std::collections::hash_map::RandomState::new().hash_one(Instant::now()) >> 11;
    whole.mul_f64(bits as f64 / (1u64 << 53) as f64)
}

/// One client's view of a trial, from its requests.
fn outcome(
    samples: &[Sample],
    pod: &str,
    failure: Failure,
    failed_at: Instant,
    healthy_at: Instant,
    back_since: Instant,
    end: Instant,
) -> PathOutcome {
    let secs = |at: Instant, from: Instant| at.saturating_duration_since(from).as_secs_f64();
    let from_failing = |s: &Sample| s.pod.as_deref() == Some(pod);
    // While failing: from the failure until it was healthy again (killed: until the end;
    // the restarted container's answers are recovery, not failing).
    let failing_until = if failure == Failure::Unready {
        healthy_at
    } else {
        end
    };
    let failing: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= failed_at && s.at < failing_until)
        .collect();
    let to_failing = match failure {
        Failure::Unready => failing.iter().filter(|s| from_failing(s)).count(),
        Failure::Killed => 0,
    };
    let last_affected = failing
        .iter()
        .filter(|s| s.pod.is_none() || (failure == Failure::Unready && from_failing(s)))
        .map(|s| s.at)
        .max();
    PathOutcome {
        requests: samples.len() as u64,
        failed: samples.iter().filter(|s| s.pod.is_none()).count() as u64,
        failed_at_secs: samples
            .iter()
            .filter(|s| s.pod.is_none())
            .map(|s| {
                if s.at >= failed_at {
                    secs(s.at, failed_at)
                } else {
                    -secs(failed_at, s.at)
                }
            })
            .collect(),
        to_failing: to_failing as u64,
        failover_secs: last_affected.map_or(0.0, |at| secs(at, failed_at)),
        recovery_secs: samples
            .iter()
            .filter(|s| s.at >= back_since)
            .find(|s| s.pod.as_deref() == Some(pod))
            .map(|s| {
                secs(
                    s.at,
                    if failure == Failure::Killed {
                        failed_at
                    } else {
                        healthy_at
                    },
                )
            }),
    }
}

/// Smoke: one trial of each failure with Berth's defaults (Kubernetes' take half a minute
/// per readiness failure by design); full: every configuration, `repetitions` times.
pub fn options(smoke: bool, repetitions: Option<u32>) -> Options {
    Options {
        smoke,
        repetitions: repetitions.unwrap_or(if smoke { 1 } else { 5 }),
        probes: if smoke {
            vec![Probes::Berth]
        } else {
            Probes::ALL.to_vec()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(start: Instant, ms: u64, pod: Option<&str>) -> Sample {
        Sample {
            at: start + Duration::from_millis(ms),
            took: Duration::from_millis(1),
            pod: pod.map(str::to_owned),
        }
    }

    #[test]
    fn an_unready_backend_counts_until_its_last_answer() {
        let t = Instant::now();
        let samples = vec![
            sample(t, 0, Some("a")),
            sample(t, 100, Some("a")),
            sample(t, 200, Some("b")),
            sample(t, 700, Some("a")),
            sample(t, 800, Some("b")),
            sample(t, 3000, Some("b")),
            sample(t, 3100, Some("a")),
        ];
        let at = |ms| t + Duration::from_millis(ms);
        let outcome = outcome(
            &samples,
            "a",
            Failure::Unready,
            at(50),
            at(2900),
            at(2900),
            at(4000),
        );
        assert_eq!(outcome.requests, 7);
        assert_eq!(outcome.failed, 0);
        assert_eq!(outcome.to_failing, 2);
        assert!((outcome.failover_secs - 0.65).abs() < 1e-9);
        assert!((outcome.recovery_secs.expect("back") - 0.2).abs() < 1e-9);
    }

    #[test]
    fn a_killed_backend_counts_until_the_last_failure() {
        let t = Instant::now();
        let samples = vec![
            sample(t, 0, Some("a")),
            sample(t, 110, None),
            sample(t, 120, Some("b")),
            sample(t, 300, None),
            sample(t, 900, Some("b")),
            sample(t, 1500, Some("a")),
        ];
        let at = |ms| t + Duration::from_millis(ms);
        let outcome = outcome(
            &samples,
            "a",
            Failure::Killed,
            at(100),
            at(100),
            at(105),
            at(2000),
        );
        assert_eq!(outcome.failed, 2);
        assert_eq!(outcome.to_failing, 0);
        assert!((outcome.failover_secs - 0.2).abs() < 1e-9);
        assert!((outcome.recovery_secs.expect("back") - 1.4).abs() < 1e-9);
    }

    #[test]
    fn kubernetes_defaults_are_written_berths_are_left_out() {
        let berth = Probes::Berth.manifest();
        assert!(!berth.contains("periodSeconds") && !berth.contains("failureThreshold"));
        let kubernetes = Probes::Kubernetes.manifest();
        assert!(kubernetes.contains("periodSeconds: 10, failureThreshold: 3"));
    }
}
