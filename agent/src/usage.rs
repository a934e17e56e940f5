//! Load figures for the heartbeat: CPU and memory of the node (from /proc) and of each
//! pod's containers (Docker stats, pause containers left out as metrics-server does), and
//! the new connections per second this node's service datapath sent to each backend
//! address. Counters are cumulative; rates come from the difference between two
//! readings, so the first reading after a start only primes them and is not reported,
//! and a pod whose containers were not all read before is left out until they were (the
//! control plane then treats it as unmeasured, never as idle).

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use berth_api::agent::{BackendRate, ContainerUsage, NodeUsage, PodUsage};

use crate::{
    datapath::TrafficReport,
    pods::PAUSE_CONTAINER,
    runtime::{ContainerStats, DockerRuntime, labels},
};

/// Millicores a container used between two samples: its share of the machine's CPU time
/// times the CPUs (`docker stats`' formula). None when a counter went backwards (a
/// restarted container) or no time passed.
pub fn cpu_millicores(previous: &ContainerStats, current: &ContainerStats) -> Option<u64> {
    let used = current.cpu_ns.checked_sub(previous.cpu_ns)?;
    let elapsed = current.system_cpu_ns.checked_sub(previous.system_cpu_ns)?;
    if elapsed == 0 {
        return None;
    }
    let millis =
        u128::from(used) * u128::from(current.online_cpus.max(1)) * 1000 / u128::from(elapsed);
    u64::try_from(millis).ok()
}

/// Memory the container cannot give back at once (Kubernetes' working set).
pub fn working_set(stats: &ContainerStats) -> u64 {
    stats.memory_bytes.saturating_sub(stats.inactive_file_bytes)
}

/// The `cpu` line of /proc/stat as (busy, total) jiffies; idle and iowait are not busy.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total.checked_sub(idle)?, total))
}

/// Millicores the whole node used between two /proc/stat samples.
pub fn node_cpu_millicores(previous: (u64, u64), current: (u64, u64), cpus: u64) -> Option<u64> {
    let busy = current.0.checked_sub(previous.0)?;
    let total = current.1.checked_sub(previous.1)?;
    (busy * cpus * 1000).checked_div(total)
}

/// A `/proc/meminfo` field in bytes (the file counts kB).
pub fn meminfo_bytes(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
}

/// Memory in use on the node: total minus what is available without swapping.
pub fn node_memory_bytes(meminfo: &str) -> Option<u64> {
    Some(
        meminfo_bytes(meminfo, "MemTotal")?.saturating_sub(meminfo_bytes(meminfo, "MemAvailable")?),
    )
}

/// New connections per second per backend address, from two readings of the datapath's
/// cumulative per-backend counters. A backend new since the previous reading, or whose
/// counter went down (its slot was reused), has no rate until the next reading.
pub fn connection_rates(
    previous: &BTreeMap<Ipv4Addr, u64>,
    current: &BTreeMap<Ipv4Addr, u64>,
    elapsed: Duration,
) -> BTreeMap<Ipv4Addr, f64> {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return BTreeMap::new();
    }
    current
        .iter()
        .map(|(ip, count)| {
            let before = previous
                .get(ip)
                .copied()
                .filter(|b| b <= count)
                .unwrap_or(*count);
            (*ip, (count - before) as f64 / seconds)
        })
        .collect()
}

/// New connections so far per backend address (summed over its ports).
pub fn connections_by_address(
    traffic: &[TrafficReport<(Ipv4Addr, u16)>],
) -> BTreeMap<Ipv4Addr, u64> {
    let mut totals = BTreeMap::new();
    for report in traffic {
        *totals.entry(report.key.0).or_insert(0) += report.traffic.new_connections;
    }
    totals
}

/// The previous reading of the datapath's per-backend counters, to turn them into rates.
#[derive(Default)]
pub struct BackendRates {
    previous: Option<(Instant, BTreeMap<Ipv4Addr, u64>)>,
}

impl BackendRates {
    /// New connections per second since the previous reading to each backend address
    /// that had any (None on the first reading). Addresses without any are left out: the
    /// control plane counts an address it is not told about as none, and listing every
    /// address made each heartbeat at 10,000 Services a message of 100,000 entries (1.5 MB)
    /// that the agent built and the control plane decoded, every 2 s from every node.
    pub fn next(&mut self, traffic: &[TrafficReport<(Ipv4Addr, u16)>]) -> Option<Vec<BackendRate>> {
        let now = Instant::now();
        let current = connections_by_address(traffic);
        let rates = self.previous.as_ref().map(|(then, previous)| {
            connection_rates(previous, &current, now - *then)
                .into_iter()
                .filter(|(_, rate)| *rate > 0.0)
                .map(|(ip, rate)| BackendRate {
                    ip: ip.to_string(),
                    connections_per_second: rate,
                })
                .collect()
        });
        self.previous = Some((now, current));
        rates
    }
}

/// The previous readings, to turn counters into rates.
#[derive(Default)]
pub struct Collector {
    containers: HashMap<String, ContainerStats>,
    node_cpu: Option<(u64, u64)>,
    last: Option<Instant>,
}

impl Collector {
    /// Reads everything once and returns the figures since the previous call (None on
    /// the first). `backends` is the datapath's rates per backend address
    /// ([`BackendRates::next`]; None if its counters could not be read or were read once).
    pub async fn collect(
        &mut self,
        runtime: &DockerRuntime,
        node: &str,
        backends: Option<Vec<BackendRate>>,
    ) -> Option<NodeUsage> {
        let now = Instant::now();
        let elapsed = self.last.map(|last| now - last);
        self.last = Some(now);
        let mut usage = NodeUsage {
            window_ms: elapsed.map_or(0, |e| u32::try_from(e.as_millis()).unwrap_or(u32::MAX)),
            ..NodeUsage::default()
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let proc_stat = std::fs::read_to_string("/proc/stat").ok();
        if let Some(current) = proc_stat.as_deref().and_then(parse_proc_stat) {
            if let Some(previous) = self.node_cpu {
                usage.cpu_millicores = node_cpu_millicores(previous, current, cpus).unwrap_or(0);
            }
            self.node_cpu = Some(current);
        }
        if let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") {
            usage.memory_bytes = node_memory_bytes(&meminfo).unwrap_or(0);
        }
        usage.backends = backends.unwrap_or_default();
        usage.pods = self.pods(runtime, node).await;
        elapsed.map(|_| usage)
    }

    async fn pods(&mut self, runtime: &DockerRuntime, node: &str) -> Vec<PodUsage> {
        let containers = match runtime.list_by_labels(&[(labels::NODE, node)]).await {
            Ok(containers) => containers,
            Err(error) => {
                tracing::debug!(%error, "no container figures");
                return Vec::new();
            }
        };
        let running: Vec<_> = containers
            .into_iter()
            .filter(|c| c.state == "running")
            .filter(|c| {
                c.labels.get(labels::CONTAINER_NAME).map(String::as_str) != Some(PAUSE_CONTAINER)
            })
            .collect();
        let samples =
            futures_util::future::join_all(running.iter().map(|c| runtime.stats(&c.id))).await;
        // Per pod: its figures, and whether every container had a previous reading.
        let mut pods: BTreeMap<(String, String, String), (PodUsage, bool)> = BTreeMap::new();
        let mut seen = HashMap::new();
        for (container, sample) in running.iter().zip(samples) {
            let Ok(sample) = sample else { continue };
            let label = |key: &str| container.labels.get(key).cloned().unwrap_or_default();
            let key = (
                label(labels::POD_NAMESPACE),
                label(labels::POD_NAME),
                label(labels::POD_UID),
            );
            let cpu = self
                .containers
                .get(&container.id)
                .and_then(|previous| cpu_millicores(previous, &sample));
            let memory = working_set(&sample);
            seen.insert(container.id.clone(), sample);
            let (pod, complete) = pods.entry(key.clone()).or_insert_with(|| {
                let pod = PodUsage {
                    namespace: key.0.clone(),
                    name: key.1.clone(),
                    uid: key.2.clone(),
                    ..PodUsage::default()
                };
                (pod, true)
            });
            *complete &= cpu.is_some();
            let cpu = cpu.unwrap_or(0);
            pod.cpu_millicores += cpu;
            pod.memory_bytes += memory;
            pod.containers.push(ContainerUsage {
                name: label(labels::CONTAINER_NAME),
                cpu_millicores: cpu,
                memory_bytes: memory,
            });
        }
        // Containers that are gone drop out of the previous readings.
        self.containers = seen;
        pods.into_values()
            .filter_map(|(pod, complete)| complete.then_some(pod))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use berth_ebpf_common::Traffic;

    use super::*;

    fn sample(cpu_ns: u64, system_cpu_ns: u64) -> ContainerStats {
        ContainerStats {
            cpu_ns,
            system_cpu_ns,
            online_cpus: 4,
            memory_bytes: 100 << 20,
            inactive_file_bytes: 30 << 20,
        }
    }

    #[test]
    fn container_cpu_from_two_samples() {
        // A quarter of the machine's CPU time on 4 CPUs: one core.
        assert_eq!(
            cpu_millicores(&sample(0, 0), &sample(1_000_000_000, 4_000_000_000)),
            Some(1000)
        );
        // 50 ms of CPU over 1 s of a 4-CPU machine (4 s of CPU time): 50m.
        assert_eq!(
            cpu_millicores(
                &sample(10_000_000, 4_000_000_000),
                &sample(60_000_000, 8_000_000_000)
            ),
            Some(50)
        );
        assert_eq!(
            cpu_millicores(&sample(5, 10), &sample(1, 20)),
            None,
            "restarted"
        );
        assert_eq!(
            cpu_millicores(&sample(1, 10), &sample(2, 10)),
            None,
            "no time"
        );
        assert_eq!(working_set(&sample(0, 0)), 70 << 20);
    }

    #[test]
    fn node_cpu_and_memory_from_proc() {
        let before = "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 50 0 50 350 50 0 0 0 0 0\n";
        let after = "cpu  300 0 200 1300 200 0 0 0 0 0\n";
        let (b, a) = (
            parse_proc_stat(before).expect("stat"),
            parse_proc_stat(after).expect("stat"),
        );
        assert_eq!(b, (200, 1000));
        // 300 busy of 1000 jiffies on 2 CPUs: 600m.
        assert_eq!(node_cpu_millicores(b, a, 2), Some(600));
        assert_eq!(node_cpu_millicores(a, a, 2), None);
        let meminfo = "MemTotal:        8000 kB\nMemFree:    1000 kB\nMemAvailable:    6000 kB\n";
        assert_eq!(node_memory_bytes(meminfo), Some(2000 * 1024));
        assert_eq!(meminfo_bytes(meminfo, "MemTotal"), Some(8000 * 1024));
        assert_eq!(meminfo_bytes(meminfo, "Mem"), None);
    }

    #[test]
    fn connection_rates_per_address() {
        let report = |ip: [u8; 4], port, new_connections| TrafficReport {
            key: (Ipv4Addr::from(ip), port),
            traffic: Traffic {
                packets: 0,
                bytes: 0,
                new_connections,
            },
        };
        let first = connections_by_address(&[report([198, 19, 0, 2], 80, 10)]);
        let second = connections_by_address(&[
            report([198, 19, 0, 2], 80, 30),
            report([198, 19, 0, 2], 443, 10),
            report([198, 19, 1, 2], 80, 5),
        ]);
        assert_eq!(second[&Ipv4Addr::new(198, 19, 0, 2)], 40);
        let rates = connection_rates(&first, &second, Duration::from_secs(2));
        assert_eq!(rates[&Ipv4Addr::new(198, 19, 0, 2)], 15.0);
        // New since the last reading: no baseline, no rate yet.
        assert_eq!(rates[&Ipv4Addr::new(198, 19, 1, 2)], 0.0);
        // A reused slot's counter went down: no rate this time, never a negative one.
        let reset = connection_rates(&second, &first, Duration::from_secs(1));
        assert_eq!(reset[&Ipv4Addr::new(198, 19, 0, 2)], 0.0);
    }

    #[test]
    fn only_backends_with_new_connections_are_reported() {
        let report = |ip: [u8; 4], new_connections| TrafficReport {
            key: (Ipv4Addr::from(ip), 80),
            traffic: Traffic {
                packets: 0,
                bytes: 0,
                new_connections,
            },
        };
        let mut rates = BackendRates::default();
        assert_eq!(
            rates.next(&[report([198, 19, 0, 2], 10), report([198, 19, 0, 3], 7)]),
            None,
            "the first reading only primes the rates"
        );
        // Some time passes, or there is no rate to compute.
        std::thread::sleep(Duration::from_millis(2));
        let reported = rates
            .next(&[
                report([198, 19, 0, 2], 30),
                report([198, 19, 0, 3], 7),
                report([198, 19, 0, 4], 0),
            ])
            .expect("rates after a second reading");
        let ips: Vec<&str> = reported.iter().map(|rate| rate.ip.as_str()).collect();
        assert_eq!(ips, ["198.19.0.2"], "idle backends are left out");
        assert!(reported[0].connections_per_second > 0.0);
    }
}
