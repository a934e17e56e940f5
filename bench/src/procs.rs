//! Processes the benchmark starts (servers, proxies, clients), the cgroup that accounts
//! their CPU time, and interruption (Ctrl-C) handling.
//!
//! CPU accounting: this kernel has no IRQ time accounting, so the network stack's softirq
//! work is charged to the task it runs on — the sender, on veths — or to ksoftirqd. The
//! CPU time of the benchmark's cgroup (client, backends, proxy) plus ksoftirqd's is what
//! a request costs the machine, independent of unrelated load elsewhere on it.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into a flag checked between runs, so the benchmark unwinds
/// and removes its namespaces and processes instead of dying with them in place.
pub fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                signal,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

pub fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// A cgroup (v2, or v1 cpuacct) holding the processes the benchmark starts.
pub struct Cgroup {
    dir: PathBuf,
    v2: bool,
}

impl Cgroup {
    pub fn create(name: &str) -> anyhow::Result<Cgroup> {
        let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
        let mut v2_root = None;
        let mut v1_root = None;
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 4 {
                continue;
            }
            if fields[2] == "cgroup2" && v2_root.is_none() {
                v2_root = Some(PathBuf::from(fields[1]));
            } else if fields[2] == "cgroup" && fields[3].split(',').any(|opt| opt == "cpuacct") {
                v1_root = Some(PathBuf::from(fields[1]));
            }
        }
        let (root, v2) = match (v2_root, v1_root) {
            (Some(root), _) => (root, true),
            (None, Some(root)) => (root, false),
            (None, None) => bail!("no cgroup2 or cpuacct cgroup hierarchy is mounted"),
        };
        let dir = root.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        Ok(Cgroup { dir, v2 })
    }

    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// CPU time used by the cgroup's processes so far.
    pub fn usage(&self) -> anyhow::Result<Duration> {
        if self.v2 {
            let path = self.dir.join("cpu.stat");
            let stat =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let usec = stat
                .lines()
                .find_map(|line| line.strip_prefix("usage_usec "))
                .context("cpu.stat has no usage_usec")?
                .trim()
                .parse::<u64>()?;
            Ok(Duration::from_micros(usec))
        } else {
            let path = self.dir.join("cpuacct.usage");
            let nanos = fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .trim()
                .parse::<u64>()?;
            Ok(Duration::from_nanos(nanos))
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Everything in it was started by the benchmark; the guards have normally killed
        // it all already, so this only catches stragglers (nothing else is ever put here).
        let kill = self.dir.join("cgroup.kill");
        if kill.exists() {
            let _ = fs::write(&kill, "1");
        }
        for _ in 0..100 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("cleanup: could not remove cgroup {}", self.dir.display());
    }
}

/// Scheduling of every process the benchmark starts. The machine's CPUs are shared with
/// other work (builds). Two knobs, both on the benchmark's own processes only, the same
/// for every path:
/// - nice -20: under the fair scheduler they outweigh nice-0 work about 90 to 1;
/// - a 0.1 ms slice request (`sched_setattr`'s `sched_runtime` for SCHED_OTHER, EEVDF,
///   Linux 6.12+): a task with a shorter slice than the running one preempts it at wakeup,
///   so a packet's receiver is not left waiting out a compiler's 3 ms slice. Without it,
///   tail latency measures the neighbours more than the path.
static NICE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-20);
static SLICE_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(100_000);

pub fn set_scheduling(nice: i32, slice: Duration) {
    NICE.store(nice, Ordering::SeqCst);
    SLICE_NS.store(slice.as_nanos() as u64, Ordering::SeqCst);
}

/// `struct sched_attr`, first version (SCHED_ATTR_SIZE_VER0, 48 bytes).
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// Applies the benchmark's scheduling to the calling process. Async-signal-safe (only
/// system calls), so it can run between fork and exec.
fn apply_scheduling(nice: i32, slice_ns: u64) -> std::io::Result<()> {
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice,
        priority: 0,
        runtime: slice_ns,
        deadline: 0,
        period: 0,
    };
    // SAFETY: sched_setattr reads `size` bytes from a valid, initialized struct of that size.
    let result = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if result == 0 {
        return Ok(());
    }
    // Kernels before 6.12 refuse a slice request: keep only the nice level.
    // SAFETY: setpriority has no memory preconditions.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Gives the benchmark process itself the same scheduling as what it starts: programming
/// is timed in this process (Berth's apply) and its children (iptables-restore).
pub fn apply_scheduling_to_self() -> anyhow::Result<()> {
    apply_scheduling(NICE.load(Ordering::SeqCst), SLICE_NS.load(Ordering::SeqCst))
        .context("setting the benchmark's scheduling priority")
}

/// `program args...` inside the named network namespace, moved into `cgroup` before it
/// starts and with the benchmark's scheduling (the shell writes its own pid, then execs
/// `ip netns exec`, which execs the program: one pid from start to end; scheduling
/// attributes survive exec and are inherited by threads and children).
pub fn in_netns_and_cgroup(netns: &str, cgroup: &Cgroup, program: &str, args: &[&str]) -> Command {
    use std::os::unix::process::CommandExt as _;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("echo $$ > \"$0\" && exec \"$@\"")
        .arg(cgroup.procs_file())
        .args(["ip", "netns", "exec", netns, program])
        .args(args)
        .stdin(Stdio::null());
    let nice = NICE.load(Ordering::SeqCst);
    let slice_ns = SLICE_NS.load(Ordering::SeqCst);
    // SAFETY: the closure only makes system calls (async-signal-safe) and allocates nothing.
    unsafe {
        command.pre_exec(move || apply_scheduling(nice, slice_ns));
    }
    command
}

/// Runs a command to completion, killing it (by pid) if it outlives `limit`.
pub fn output_within(mut command: Command, limit: Duration) -> anyhow::Result<Output> {
    let mut child = command.spawn().context("starting")?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    // Drain the pipes on threads so a chatty child never blocks on a full pipe.
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(pipe) = stdout.as_mut() {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(pipe) = stderr.as_mut() {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    });
    let status = wait_within(&mut child, limit)?;
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn wait_within(child: &mut Child, limit: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {:.0} s: killed", limit.as_secs_f64());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A long-running process (server, proxy), killed by pid and reaped on drop.
pub struct Guarded {
    pub name: String,
    child: Child,
}

impl Guarded {
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Guarded> {
        let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        command.stdout(file.try_clone()?).stderr(file);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Guarded {
            name: name.to_owned(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited (say, it could not bind).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited: {status}", self.name);
        }
        Ok(())
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clock ticks the kernel's softirq threads (ksoftirqd/N) have used.
pub fn ksoftirqd_time() -> Duration {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    entries
        .flatten()
        .filter(|entry| {
            fs::read_to_string(entry.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with("ksoftirqd/"))
        })
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .map(process_cpu_time)
        .sum()
}

/// CPU time (user and system) process `pid` has used so far; zero once it is gone.
pub fn process_cpu_time(pid: u32) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    // Fields after the name: state is field 3; utime and stime are 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&index| fields.get(index)?.parse::<u64>().ok())
        .sum();
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Busy and total CPU time of the whole machine (/proc/stat), to tell how much of it other
/// work used during a run.
pub fn machine_cpu() -> (Duration, Duration) {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|line| line.starts_with("cpu ")) else {
        return (Duration::ZERO, Duration::ZERO);
    };
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    // idle and iowait
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    let to_duration = |ticks: u64| Duration::from_micros(ticks * 1_000_000 / hz);
    (to_duration(total - idle), to_duration(total))
}

/// The first line a program prints (stdout, or stderr when stdout is empty): versions
/// and the date for the report.
pub fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|out| {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

pub fn now_utc() -> String {
    first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
}

/// What a panic said (the harnesses report failures by panicking).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}
