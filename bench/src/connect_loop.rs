//! A closed-loop client that opens a new connection for every request and sends each
//! connection of a thread to the next of its targets in turn.
//!
//! wrk gives each thread one address for the whole run (`thread.addr`), so a direct wrk
//! client spread over three pod IPs keeps every thread on one backend, while a VIP's
//! load balancer sends each thread's next connection to the next backend. That
//! difference in shape — not in the path — separated the two in the new-connection runs
//! (see the report). This client spreads its connections over the pod IPs as the VIP
//! does, so the direct and the VIP runs differ only in the path: the same threads, the
//! same syscalls, the same request.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    procs::{self, Cgroup},
    wrk::WrkResult,
};

/// The binary built beside berth-bench that runs [`run_here`].
pub const BINARY: &str = "berth-connect-loop";

/// wrk's `--timeout` in the other runs.
const TIMEOUT: Duration = Duration::from_secs(2);

/// What one thread saw: each answered request's latency, and the failures.
#[derive(Default)]
struct ThreadTally {
    latencies_us: Vec<u32>,
    errors: u64,
}

/// Runs the load in this process: `threads` threads for `duration`, thread `i`'s `k`th
/// connection to `targets[(i + k) % targets.len()]`.
pub fn run_here(
    targets: &[SocketAddrV4],
    threads: u32,
    duration: Duration,
) -> anyhow::Result<WrkResult> {
    if targets.is_empty() {
        bail!("no target");
    }
    let started = Instant::now();
    let deadline = started + duration;
    let tallies: Vec<ThreadTally> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads as usize)
            .map(|index| scope.spawn(move || thread_loop(targets, index, deadline)))
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap_or_default())
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let errors = tallies.iter().map(|t| t.errors).sum();
    let mut latencies: Vec<u32> = tallies.into_iter().flat_map(|t| t.latencies_us).collect();
    latencies.sort_unstable();
    let requests = latencies.len() as u64;
    Ok(WrkResult {
        requests,
        seconds,
        requests_per_sec: requests as f64 / seconds.max(1e-9),
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
        errors,
    })
}

fn thread_loop(targets: &[SocketAddrV4], index: usize, deadline: Instant) -> ThreadTally {
    let mut tally = ThreadTally::default();
    let mut next = index;
    let mut answer = Vec::with_capacity(512);
    while Instant::now() < deadline {
        let target = SocketAddr::V4(targets[next % targets.len()]);
        next += 1;
        let sent = Instant::now();
        match exchange(&target, &mut answer) {
            Ok(()) if answer.starts_with(b"HTTP/1.1 200") => {
                let micros = sent.elapsed().as_micros();
                tally
                    .latencies_us
                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
            }
            _ => tally.errors += 1,
        }
    }
    tally
}

/// One request on a connection of its own: connect, send, read the answer until the
/// server closes (it was asked to), close.
fn exchange(target: &SocketAddr, answer: &mut Vec<u8>) -> std::io::Result<()> {
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    answer.clear();
    let mut stream = TcpStream::connect_timeout(target, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(REQUEST)?;
    stream.read_to_end(answer)?;
    Ok(())
}

/// The `q` quantile of sorted latencies (nearest rank), in microseconds.
fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1])
}

/// Runs [`BINARY`] in the client's namespace and the benchmark's cgroup, as wrk runs;
/// bounded in time.
pub fn run(
    netns: &str,
    targets: &[(std::net::Ipv4Addr, u16)],
    threads: u32,
    duration: Duration,
    cgroup: &Cgroup,
) -> anyhow::Result<WrkResult> {
    let binary = std::env::current_exe()
        .context("locating berth-bench")?
        .with_file_name(BINARY);
    let mut args = vec![
        "--threads".to_owned(),
        threads.to_string(),
        "--duration-ms".to_owned(),
        duration.as_millis().to_string(),
    ];
    for (addr, port) in targets {
        args.extend(["--target".to_owned(), format!("{addr}:{port}")]);
    }
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut command = procs::in_netns_and_cgroup(netns, cgroup, path_str(&binary)?, &arg_refs);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let output = procs::output_within(command, duration + Duration::from_secs(20))
        .with_context(|| format!("{BINARY} {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "{BINARY} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "{BINARY}'s report: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let sorted: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 0.50), 50.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&[7], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    /// Three local servers answering like the benchmark's nginx: every thread's
    /// connections go to each of them in turn, so each gets a third.
    #[test]
    fn each_connection_goes_to_the_next_target() {
        use std::{
            net::TcpListener,
            sync::{
                Arc,
                atomic::{AtomicU64, Ordering},
            },
        };
        let mut targets = Vec::new();
        let mut counts = Vec::new();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut servers = Vec::new();
        for _ in 0..3 {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let SocketAddr::V4(addr) = listener.local_addr().expect("addr") else {
                panic!("not IPv4");
            };
            listener.set_nonblocking(true).expect("nonblocking");
            targets.push(addr);
            let count = Arc::new(AtomicU64::new(0));
            counts.push(Arc::clone(&count));
            let stop = Arc::clone(&stop);
            servers.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            stream.set_nonblocking(false).expect("blocking");
                            let mut request = [0u8; 256];
                            let _ = stream.read(&mut request);
                            let _ = stream.write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nanswer\n",
                            );
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
            }));
        }
        let result = run_here(&targets, 3, Duration::from_millis(300)).expect("runs");
        stop.store(true, Ordering::Relaxed);
        for server in servers {
            server.join().expect("server");
        }
        assert_eq!(result.errors, 0);
        assert!(result.requests > 0);
        let counts: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let (least, most) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        // Each thread rotates, so the servers' counts differ by at most one per thread.
        assert!(most - least <= 3, "{counts:?}");
        assert!(result.p50_us > 0.0 && result.p99_us >= result.p50_us);
    }
}
