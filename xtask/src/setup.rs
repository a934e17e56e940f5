//! `cargo xtask setup`: brings a fresh Debian machine to the point where Berth builds,
//! its tests run, and `cargo xtask up` works. Every step checks first and only acts when
//! something is missing, so a second run changes nothing.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::util::{is_root, output, run_command, spawn_detached, succeeds};

/// Debian packages the build, the tests and the demo use.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "docker.io",
    "iproute2",
    "bpftool",
    "ethtool",
    "iptables",
    "busybox-static",
    "protobuf-compiler",
    // protobuf's well-known types, which etcd's API (the etcd-client crate) imports.
    "libprotobuf-dev",
    "prometheus",
    "curl",
    // The benchmark's client, backends and userspace proxy (cargo xtask bench).
    "wrk",
    "nginx-light",
    "haproxy",
    // The registry the image pull tests push to and pull from (tests/tests/image_pull.rs).
    "docker-registry",
    // The store tests run against a real etcd (control/tests/store.rs).
    "etcd-server",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// bpf-linker must use the same LLVM as rustc; the toolchain ships it as this library.
const LLVM_FEATURE: &str = "llvm-22";

pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";
const DOCKERD_LOG: &str = "/var/log/berth-dockerd.log";

#[derive(clap::Args, Default)]
pub struct Args {
    /// Only report what is missing; change nothing.
    #[arg(long)]
    pub check: bool,
}

/// What one step found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    AlreadyDone,
    Done,
    /// Missing and not fixable here (not root, or --check); the commands that would fix it.
    Missing(Vec<String>),
}

struct Step {
    name: &'static str,
    /// Returns None when satisfied, or the commands that would fix it.
    check: fn() -> anyhow::Result<Option<Vec<String>>>,
    apply: fn() -> anyhow::Result<()>,
    needs_root: bool,
}

const STEPS: &[Step] = &[
    Step {
        name: "Debian packages",
        check: check_packages,
        apply: install_packages,
        needs_root: true,
    },
    Step {
        name: "rust-src component",
        check: check_rust_src,
        apply: install_rust_src,
        needs_root: false,
    },
    Step {
        name: "bpf-linker (against the toolchain's LLVM)",
        check: check_bpf_linker,
        apply: install_bpf_linker,
        needs_root: false,
    },
    Step {
        name: "bpffs at /sys/fs/bpf",
        check: check_bpffs,
        apply: mount_bpffs,
        needs_root: true,
    },
    Step {
        name: "Docker engine",
        check: check_docker,
        apply: start_docker,
        needs_root: true,
    },
];

/// Runs every step and returns what each one did.
pub fn run(args: &Args) -> anyhow::Result<Vec<(&'static str, Outcome)>> {
    let mut report = Vec::new();
    let mut missing = false;
    for step in STEPS {
        let started = Instant::now();
        let outcome = match (step.check)()? {
            None => Outcome::AlreadyDone,
            Some(fix) if args.check || (step.needs_root && !is_root()) => Outcome::Missing(fix),
            Some(_) => {
                println!("==> {}: installing", step.name);
                (step.apply)().with_context(|| format!("setting up {}", step.name))?;
                if let Some(still) = (step.check)()? {
                    bail!(
                        "{} is still not ready after setting it up; try by hand: {}",
                        step.name,
                        still.join(" && ")
                    );
                }
                Outcome::Done
            }
        };
        match &outcome {
            Outcome::AlreadyDone => println!("ok   {}", step.name),
            Outcome::Done => println!(
                "done {} ({:.1} s)",
                step.name,
                started.elapsed().as_secs_f64()
            ),
            Outcome::Missing(fix) => {
                missing = true;
                println!("MISSING {} — run:", step.name);
                for command in fix {
                    println!("    {command}");
                }
            }
        }
        report.push((step.name, outcome));
    }
    let changed = report
        .iter()
        .filter(|(_, outcome)| *outcome == Outcome::Done)
        .count();
    if missing {
        bail!("setup incomplete: run the commands above (as root where they need it)");
    }
    if changed == 0 {
        println!("setup: everything was already in place; nothing changed");
    } else {
        println!("setup: {changed} step(s) changed this machine; all in place now");
    }
    Ok(report)
}

fn check_packages() -> anyhow::Result<Option<Vec<String>>> {
    let missing = missing_packages();
    Ok((!missing.is_empty()).then(|| {
        vec![
            "apt-get update".to_owned(),
            format!(
                "DEBIAN_FRONTEND=noninteractive apt-get install -y {}",
                missing.join(" ")
            ),
        ]
    }))
}

fn missing_packages() -> Vec<&'static str> {
    DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|package| {
            let status = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]));
            status.is_none_or(|status| !status.contains("install ok installed"))
        })
        .collect()
}

fn install_packages() -> anyhow::Result<()> {
    let missing = missing_packages();
    run_command(Command::new("apt-get").args(["update", "-qq"]))?;
    run_command(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

fn check_rust_src() -> anyhow::Result<Option<Vec<String>>> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed"]))
        .context("rustup is needed to add rust-src")?;
    Ok(
        (!installed.lines().any(|line| line.starts_with("rust-src")))
            .then(|| vec!["rustup component add rust-src".to_owned()]),
    )
}

fn install_rust_src() -> anyhow::Result<()> {
    run_command(Command::new("rustup").args(["component", "add", "rust-src"]))
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

/// A directory whose lib/ holds the toolchain's libLLVM under the names bpf-linker's
/// build looks for. It must stay: bpf-linker finds the library through its rpath.
fn llvm_prefix() -> PathBuf {
    home().join(".local/share/berth/llvm-prefix")
}

fn toolchain_llvm() -> anyhow::Result<PathBuf> {
    let sysroot = output(Command::new("rustc").args(["--print", "sysroot"]))
        .context("rustc --print sysroot failed")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let entries = fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?;
    for entry in entries {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("libLLVM.so.") {
            return Ok(path);
        }
    }
    bail!("the toolchain at {} ships no libLLVM.so.*", lib.display())
}

fn cargo_bin(name: &str) -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map_or_else(|| home().join(".cargo"), PathBuf::from)
        .join("bin")
        .join(name)
}

fn check_bpf_linker() -> anyhow::Result<Option<Vec<String>>> {
    let version = output(Command::new(cargo_bin("bpf-linker")).arg("--version"));
    let ok = version.is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    let prefix = llvm_prefix();
    Ok((!ok).then(|| {
        vec![
            format!("mkdir -p {}/lib", prefix.display()),
            format!(
                "ln -sf $(rustc --print sysroot)/lib/libLLVM.so.* {}/lib/libLLVM.so",
                prefix.display()
            ),
            format!(
                "LLVM_PREFIX={} cargo install bpf-linker --version {BPF_LINKER_VERSION} --locked --no-default-features --features {LLVM_FEATURE}",
                prefix.display()
            ),
        ]
    }))
}

fn install_bpf_linker() -> anyhow::Result<()> {
    let llvm = toolchain_llvm()?;
    let lib_dir = llvm_prefix().join("lib");
    fs::create_dir_all(&lib_dir)?;
    let own_name = llvm
        .file_name()
        .context("libLLVM path has no file name")?
        .to_owned();
    for link in [lib_dir.join("libLLVM.so"), lib_dir.join(own_name)] {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    println!("    building bpf-linker {BPF_LINKER_VERSION} (about 3 minutes on 2 cores)");
    run_command(
        Command::new("cargo")
            .env("LLVM_PREFIX", llvm_prefix())
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                LLVM_FEATURE,
            ]),
    )
}

fn bpffs_mounted() -> bool {
    fs::read_to_string("/proc/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next();
            fields.next() == Some("/sys/fs/bpf") && fields.next() == Some("bpf")
        })
    })
}

fn check_bpffs() -> anyhow::Result<Option<Vec<String>>> {
    Ok((!bpffs_mounted()).then(|| vec!["mount -t bpf bpf /sys/fs/bpf".to_owned()]))
}

fn mount_bpffs() -> anyhow::Result<()> {
    fs::create_dir_all("/sys/fs/bpf").ok();
    run_command(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

pub fn docker_answers() -> bool {
    succeeds(Command::new("docker").args([
        "--host",
        &format!("unix://{DOCKER_SOCKET}"),
        "version",
        "--format",
        "{{.Server.Version}}",
    ]))
}

/// The flags keep the engine out of Berth's way: no docker0 bridge, no iptables rules,
/// no forwarding changes. Berth wires every container's network itself.
pub const DOCKERD_ARGS: &[&str] = &[
    "--bridge=none",
    "--iptables=false",
    "--ip6tables=false",
    "--ip-forward=false",
    "--ip-masq=false",
];

fn check_docker() -> anyhow::Result<Option<Vec<String>>> {
    Ok((!docker_answers()).then(|| {
        vec![format!(
            "setsid dockerd {} >{DOCKERD_LOG} 2>&1 &",
            DOCKERD_ARGS.join(" ")
        )]
    }))
}

fn start_docker() -> anyhow::Result<()> {
    let child = spawn_detached(
        Command::new("dockerd").args(DOCKERD_ARGS),
        Path::new(DOCKERD_LOG),
    )
    .context("starting dockerd (is docker.io installed?)")?;
    println!(
        "    dockerd started (pid {}), log in {DOCKERD_LOG}",
        child.id()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if docker_answers() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(250));
    }
    bail!("dockerd did not answer on {DOCKER_SOCKET} within 60 s; see {DOCKERD_LOG}")
}
