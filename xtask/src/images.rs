//! `cargo xtask images`: builds the workload images locally (there is no registry).
//!
//! Each image is `FROM scratch` with two static binaries: berth-echo, and Debian's
//! busybox-static with a few applet links, so exec probes and `docker exec` have a shell.
//! `wget` and `nslookup` are links to berth-echo's own clients: busybox-static's wget
//! crashed inside pods, and its name lookups go through the static glibc's NSS.
//! Nothing is pulled, so the build works without a registry. An image carries the sha256 of
//! its inputs as labels; when those match, its build is skipped, so a second run is quick.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use berth_api::core::PAUSE_IMAGE;
use berth_echo::IMAGES;

use crate::{
    setup::{DOCKER_SOCKET, docker_answers},
    util::{output, run_command, workspace_root},
};

/// Debian's busybox-static (installed by `cargo xtask setup`).
const BUSYBOX: &str = "/bin/busybox";
/// Applets linked to busybox in the image: what exec probes, `docker exec` and debugging a
/// pod's network by hand use.
const APPLETS: &[&str] = &[
    "sh", "cat", "touch", "rm", "ls", "sleep", "echo", "env", "ps", "ip", "hostname",
];
/// Links to berth-echo, which runs as these clients when called by these names.
const ECHO_LINKS: &[&str] = &["wget", "nslookup"];
const MUSL: &str = "x86_64-unknown-linux-musl";
const GNU: &str = "x86_64-unknown-linux-gnu";
/// Label holding the sha256 of the echo binary in the image.
const BINARY_LABEL: &str = "berth.echo.sha256";
/// Label holding the sha256 of everything else that went in (Dockerfile, busybox, links).
const RECIPE_LABEL: &str = "berth.image.recipe";

#[derive(clap::Args, Default)]
pub struct Args {
    /// Rebuild the images even when they are up to date.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if !docker_answers() {
        bail!(
            "the Docker engine does not answer on {DOCKER_SOCKET}; run `cargo xtask setup` to start it"
        );
    }
    if !Path::new(BUSYBOX).exists() {
        bail!("{BUSYBOX} is missing; run `cargo xtask setup` (it installs busybox-static)");
    }
    if !is_static_elf(Path::new(BUSYBOX))? {
        bail!(
            "{BUSYBOX} is dynamically linked and would not run in an empty image; install busybox-static"
        );
    }
    let work_dir = workspace_root().join("target/images");
    let binary = build_echo_binary(&work_dir)?;
    let binary_sha = sha256_file(&binary)?;
    let busybox_sha = sha256_file(Path::new(BUSYBOX))?;

    for &(tag, version) in IMAGES {
        let recipe = dockerfile(version, None);
        let recipe_sha = sha256_bytes(
            format!("{recipe}\nbusybox {busybox_sha}\nlinks {APPLETS:?} {ECHO_LINKS:?}\n")
                .as_bytes(),
        )?;
        if !args.force && image_labels(tag) == Some(vec![binary_sha.clone(), recipe_sha.clone()]) {
            println!(
                "images: {tag} is up to date (echo binary {})",
                &binary_sha[..12]
            );
            continue;
        }
        let started = Instant::now();
        println!("images: building {tag} (docker build, FROM scratch: nothing is pulled)");
        let context = work_dir.join("context").join(tag.replace([':', '/'], "-"));
        write_context(
            &context,
            &binary,
            &dockerfile(version, Some((&binary_sha, &recipe_sha))),
        )?;
        docker_build(tag, &context)?;
        println!(
            "images: built {tag} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    build_pause(&work_dir, &busybox_sha, args.force)?;
    // Tags moved to new builds leave their old images behind untagged; only ours (they
    // all carry the recipe label) are pruned.
    let _ = output(docker().args([
        "image",
        "prune",
        "--force",
        "--filter",
        &format!("label={RECIPE_LABEL}"),
    ]));
    Ok(())
}

/// The pod sandbox image: busybox's shell, sleeping until SIGTERM. As PID 1 it would
/// ignore signals it has no handler for, so the trap makes it exit at once on stop.
const PAUSE_ENTRYPOINT: &str =
    r#"["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"]"#;

fn pause_dockerfile(recipe_sha: Option<&str>) -> String {
    let mut text = format!("FROM scratch\nCOPY rootfs/ /\nENTRYPOINT {PAUSE_ENTRYPOINT}\n");
    if let Some(sha) = recipe_sha {
        text.push_str(&format!("LABEL {RECIPE_LABEL}=\"{sha}\"\n"));
    }
    text
}

fn build_pause(work_dir: &Path, busybox_sha: &str, force: bool) -> anyhow::Result<()> {
    let recipe = pause_dockerfile(None);
    let recipe_sha = sha256_bytes(format!("{recipe}\nbusybox {busybox_sha}\n").as_bytes())?;
    let format = format!("{{{{index .Config.Labels \"{RECIPE_LABEL}\"}}}}");
    let current = output(docker().args(["image", "inspect", "--format", &format, PAUSE_IMAGE]));
    if !force && current.as_deref().map(str::trim) == Some(recipe_sha.as_str()) {
        println!("images: {PAUSE_IMAGE} is up to date");
        return Ok(());
    }
    let started = Instant::now();
    println!("images: building {PAUSE_IMAGE} (docker build, FROM scratch: nothing is pulled)");
    let context = work_dir
        .join("context")
        .join(PAUSE_IMAGE.replace([':', '/'], "-"));
    if context.exists() {
        fs::remove_dir_all(&context).with_context(|| format!("clearing {}", context.display()))?;
    }
    let bin = context.join("rootfs/bin");
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    fs::copy(BUSYBOX, bin.join("busybox")).context("copying busybox into the context")?;
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))
            .with_context(|| format!("linking the {applet} applet"))?;
    }
    fs::write(
        context.join("Dockerfile"),
        pause_dockerfile(Some(&recipe_sha)),
    )?;
    docker_build(PAUSE_IMAGE, &context)?;
    println!(
        "images: built {PAUSE_IMAGE} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn docker() -> Command {
    let mut command = Command::new("docker");
    command.args(["--host", &format!("unix://{DOCKER_SOCKET}")]);
    command
}

/// Builds berth-echo as a static binary in its own target directory (so it never waits
/// for, or invalidates, the main build) and returns its path.
fn build_echo_binary(work_dir: &Path) -> anyhow::Result<PathBuf> {
    let target = static_target();
    println!("images: building the berth-echo binary (release, static, {target})");
    let started = Instant::now();
    let target_dir = work_dir.join("cargo");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(workspace_root())
        .args(["build", "--quiet", "--release", "--package", "berth-echo"])
        .args(["--bin", "berth-echo", "--target", target, "--target-dir"])
        .arg(&target_dir)
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols");
    if target == GNU {
        // glibc's static libraries link a binary that needs no loader; std only warns about
        // name lookups (NSS), which the echo server never does.
        cargo.env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        );
    }
    run_command(&mut cargo).context("building berth-echo for the image")?;
    let binary = target_dir.join(target).join("release/berth-echo");
    if !is_static_elf(&binary)? {
        bail!(
            "{} needs a dynamic loader and would not run in an empty image",
            binary.display()
        );
    }
    println!(
        "images: berth-echo ready in {:.1} s ({} KiB)",
        started.elapsed().as_secs_f64(),
        fs::metadata(&binary)?.len() / 1024
    );
    Ok(binary)
}

/// musl links fully static on its own; when its standard library can't be installed (no
/// access to the toolchain server), glibc with crt-static does the job.
fn static_target() -> &'static str {
    let installed =
        output(Command::new("rustc").args(["--print", "sysroot"])).is_some_and(|sysroot| {
            Path::new(sysroot.trim())
                .join("lib/rustlib")
                .join(MUSL)
                .exists()
        });
    if installed {
        return MUSL;
    }
    println!("images: adding the Rust standard library for {MUSL}");
    let added = Command::new("rustup")
        .args(["target", "add", MUSL])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if added {
        MUSL
    } else {
        println!("images: {MUSL} is not available here; linking glibc statically instead");
        GNU
    }
}

/// The Dockerfile; `labels` is None for the text the recipe hash is taken over.
fn dockerfile(version: &str, labels: Option<(&str, &str)>) -> String {
    let mut text = format!(
        "FROM scratch\n\
         COPY rootfs/ /\n\
         ENV PATH=/bin ECHO_VERSION={version} ECHO_PORT={port}\n\
         EXPOSE {port}/tcp {port}/udp\n\
         ENTRYPOINT [\"/bin/berth-echo\"]\n",
        port = berth_echo::DEFAULT_PORT,
    );
    if let Some((binary_sha, recipe_sha)) = labels {
        text.push_str(&format!(
            "LABEL {BINARY_LABEL}=\"{binary_sha}\" {RECIPE_LABEL}=\"{recipe_sha}\"\n"
        ));
    }
    text
}

/// The build context: the Dockerfile and a rootfs/ tree that COPY takes over as it is
/// (an empty image has no shell to make links or directories with).
fn write_context(context: &Path, binary: &Path, dockerfile: &str) -> anyhow::Result<()> {
    if context.exists() {
        fs::remove_dir_all(context).with_context(|| format!("clearing {}", context.display()))?;
    }
    let bin = context.join("rootfs/bin");
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    fs::copy(binary, bin.join("berth-echo")).context("copying berth-echo into the context")?;
    fs::copy(BUSYBOX, bin.join("busybox")).context("copying busybox into the context")?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet))
            .with_context(|| format!("linking the {applet} applet"))?;
    }
    for client in ECHO_LINKS {
        std::os::unix::fs::symlink("berth-echo", bin.join(client))
            .with_context(|| format!("linking the {client} client"))?;
    }
    // The health files live in /tmp, which an empty image doesn't have.
    let tmp = context.join("rootfs/tmp");
    fs::create_dir_all(&tmp)?;
    fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777))?;
    fs::write(context.join("Dockerfile"), dockerfile)?;
    Ok(())
}

fn docker_build(tag: &str, context: &Path) -> anyhow::Result<()> {
    let out = docker()
        // The classic builder needs no BuildKit daemon or frontend image to pull.
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "--quiet", "--tag", tag])
        .arg(context)
        .output()
        .context("running docker build")?;
    if !out.status.success() {
        bail!(
            "docker build of {tag} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The image's two input hashes, or None when the image isn't there.
fn image_labels(tag: &str) -> Option<Vec<String>> {
    let format = format!(
        "{{{{index .Config.Labels \"{BINARY_LABEL}\"}}}} {{{{index .Config.Labels \"{RECIPE_LABEL}\"}}}}"
    );
    let text = output(docker().args(["image", "inspect", "--format", &format, tag]))?;
    Some(text.split_whitespace().map(str::to_owned).collect())
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let text = output(Command::new("sha256sum").arg(path))
        .with_context(|| format!("sha256sum {} failed", path.display()))?;
    first_word(&text)
}

fn sha256_bytes(bytes: &[u8]) -> anyhow::Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting sha256sum")?;
    child
        .stdin
        .take()
        .context("sha256sum has no stdin")?
        .write_all(bytes)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("sha256sum failed with {}", out.status);
    }
    first_word(&String::from_utf8_lossy(&out.stdout))
}

fn first_word(text: &str) -> anyhow::Result<String> {
    text.split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("unexpected sha256sum output {text:?}"))
}

/// Whether an ELF executable runs without a dynamic loader (has no PT_INTERP header).
fn is_static_elf(path: &Path) -> anyhow::Result<bool> {
    const PT_INTERP: u32 = 3;
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let not_elf = || anyhow::anyhow!("{} is not a 64-bit little-endian ELF file", path.display());
    if bytes.get(..6) != Some(&b"\x7fELF\x02\x01"[..]) {
        return Err(not_elf());
    }
    let u16_at = |at: usize| -> Option<u16> {
        Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
    };
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let phoff = bytes
        .get(32..40)
        .and_then(|field| field.try_into().ok())
        .map(u64::from_le_bytes)
        .and_then(|offset| usize::try_from(offset).ok())
        .ok_or_else(not_elf)?;
    let entry_size = usize::from(u16_at(54).ok_or_else(not_elf)?);
    let entries = usize::from(u16_at(56).ok_or_else(not_elf)?);
    for index in 0..entries {
        let kind = u32_at(phoff + index * entry_size).ok_or_else(not_elf)?;
        if kind == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_static_is_recognised_and_a_dynamic_binary_is_not() {
        if Path::new(BUSYBOX).exists() {
            assert!(is_static_elf(Path::new(BUSYBOX)).expect("an ELF file"));
        }
        assert!(!is_static_elf(Path::new("/bin/ls")).expect("an ELF file"));
        assert!(is_static_elf(Path::new("/etc/hostname")).is_err());
    }

    #[test]
    fn recipe_changes_with_the_version_not_the_labels() {
        assert_ne!(dockerfile("v1", None), dockerfile("v2", None));
        assert!(dockerfile("v2", Some(("a", "b"))).starts_with(&dockerfile("v2", None)));
    }
}
