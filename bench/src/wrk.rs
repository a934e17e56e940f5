//! Load generation with wrk (closed loop, HTTP/1.1) and parsing of its `--latency` report.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::procs::{self, Cgroup};

/// What one wrk run measured.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Socket errors (connect, read, write, timeout) and non-2xx answers.
    pub errors: u64,
}

/// Parses a wrk duration or latency such as `387.00us`, `1.32ms`, `2.00s`, `1.00m`.
fn parse_micros(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3600e6)
    } else {
        return None;
    };
    number.trim().parse::<f64>().ok().map(|n| n * scale)
}

pub fn parse(output: &str) -> anyhow::Result<WrkResult> {
    let mut result = WrkResult::default();
    let mut in_distribution = false;
    let (mut have_rate, mut have_p50, mut have_p99, mut have_count) = (false, false, false, false);
    for line in output.lines() {
        let line = line.trim();
        if line.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            if let Some((percent, value)) = line.split_once('%') {
                match percent.trim() {
                    "50" => {
                        result.p50_us = parse_micros(value).context("p50 latency")?;
                        have_p50 = true;
                    }
                    "99" => {
                        result.p99_us = parse_micros(value).context("p99 latency")?;
                        have_p99 = true;
                    }
                    _ => {}
                }
                continue;
            }
            in_distribution = false;
        }
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            result.requests_per_sec = rest.trim().parse().context("Requests/sec")?;
            have_rate = true;
        } else if let Some((count, rest)) = line.split_once(" requests in ") {
            result.requests = count.trim().parse().context("request count")?;
            let seconds = rest.split(',').next().unwrap_or_default();
            result.seconds = parse_micros(seconds).context("run time")? / 1e6;
            have_count = true;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                if let Some(n) = part.split_whitespace().last() {
                    result.errors += n.parse::<u64>().context("socket errors")?;
                }
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            result.errors += rest.trim().parse::<u64>().context("non-2xx responses")?;
        }
    }
    if !(have_rate && have_p50 && have_p99 && have_count) {
        bail!("wrk printed no complete report:\n{output}");
    }
    Ok(result)
}

/// How the client connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// Keep-alive connections: request/response rate and latency.
    KeepAlive,
    /// `Connection: close`: every request is a new TCP connection.
    NewConnections,
    /// Every request a new TCP connection from berth-bench's own client
    /// ([`crate::connect_loop`]), each to the next target in turn: direct and VIP clients
    /// of one shape.
    SpreadConnections,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::KeepAlive => "keep-alive",
            Kind::NewConnections => "new connections",
            Kind::SpreadConnections => "new connections, each to the next backend",
        }
    }
}

pub struct Load<'a> {
    /// The client pod's network namespace.
    pub netns: &'a str,
    /// Where the threads send: one address for all (a VIP), or one per thread (direct).
    pub targets: &'a [(Ipv4Addr, u16)],
    pub threads: u32,
    pub connections: u32,
    pub duration: Duration,
    pub kind: Kind,
    /// Scratch directory for the Lua script.
    pub workdir: &'a Path,
}

/// A Lua script that gives wrk's threads different addresses, round-robin: wrk resolves
/// the URL once, and this is its documented way (`setup(thread)`, `thread.addr`) to spread
/// a client over several servers without running several clients.
fn spread_script(targets: &[(Ipv4Addr, u16)]) -> String {
    let mut script = String::from("local addrs = {}\n");
    for (addr, port) in targets {
        let _ = writeln!(
            script,
            "for _, a in ipairs(wrk.lookup(\"{addr}\", \"{port}\")) do table.insert(addrs, a) end"
        );
    }
    script.push_str(
        "local next = 0\nfunction setup(thread)\n  thread.addr = addrs[next % #addrs + 1]\n  next = next + 1\nend\n",
    );
    script
}

/// Runs wrk in the client's namespace, in the benchmark's cgroup; bounded in time.
pub fn run(load: &Load<'_>, cgroup: &Cgroup) -> anyhow::Result<WrkResult> {
    let (addr, port) = *load.targets.first().context("no target")?;
    let secs = load.duration.as_secs_f64().max(1.0).ceil() as u64;
    let mut args: Vec<String> = vec![
        "-t".into(),
        load.threads.to_string(),
        "-c".into(),
        load.connections.to_string(),
        "-d".into(),
        format!("{secs}s"),
        "--timeout".into(),
        "2s".into(),
        "--latency".into(),
    ];
    if load.kind == Kind::NewConnections {
        args.extend(["-H".into(), "Connection: close".into()]);
    }
    if load.targets.len() > 1 {
        let script = load.workdir.join("spread.lua");
        std::fs::write(&script, spread_script(load.targets))
            .with_context(|| format!("writing {}", script.display()))?;
        args.extend(["-s".into(), script.display().to_string()]);
    }
    args.push(format!("http://{addr}:{port}/"));
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut command = procs::in_netns_and_cgroup(load.netns, cgroup, "wrk", &arg_refs);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let output = procs::output_within(command, Duration::from_secs(secs + 20))
        .with_context(|| format!("wrk {}", args.join(" ")))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed ({}) after {:.1} s: {}{}",
            output.status,
            started.elapsed().as_secs_f64(),
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse(&text)
}

/// `wrk --version`'s first line, for the report.
pub fn version() -> String {
    procs::first_line("wrk", &["--version"])
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 8s test @ http://198.19.0.1:80/
  3 threads and 30 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   431.20us  228.32us  10.12ms   89.12%
    Req/Sec    23.41k     1.39k   26.14k    72.50%
  Latency Distribution
     50%  387.00us
     75%  480.00us
     90%  621.00us
     99%    1.32ms
  558836 requests in 8.00s, 82.16MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  69852.21
Transfer/sec:     10.27MB
";

    #[test]
    fn parses_a_latency_report() {
        let result = parse(REPORT).expect("parses");
        assert_eq!(result.requests, 558_836);
        assert!((result.seconds - 8.0).abs() < 1e-9);
        assert!((result.requests_per_sec - 69_852.21).abs() < 1e-6);
        assert!((result.p50_us - 387.0).abs() < 1e-9);
        assert!((result.p99_us - 1_320.0).abs() < 1e-6);
        assert_eq!(result.errors, 8);
    }

    #[test]
    fn an_incomplete_report_is_an_error() {
        assert!(parse("unable to connect to 198.19.0.1:80 Connection refused").is_err());
    }

    #[test]
    fn spread_script_assigns_addresses_round_robin() {
        let script = spread_script(&[
            (Ipv4Addr::new(198, 18, 1, 2), 8080),
            (Ipv4Addr::new(198, 18, 1, 3), 8080),
        ]);
        assert!(script.contains("wrk.lookup(\"198.18.1.3\", \"8080\")"));
        assert!(script.contains("thread.addr = addrs[next % #addrs + 1]"));
    }
}
