//! Helpers for Berth's privileged tests: hand-built packets for BPF_PROG_TEST_RUN,
//! network namespaces that act as nodes and pods, and bpffs directories that are removed
//! when the test ends, also when it fails.

pub mod etcd;
pub mod netns;
pub mod packet;
pub mod programs;
pub mod smallfs;

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

/// A name unique to this test process and call, short enough for interface names when
/// `prefix` is at most 4 characters (`<prefix><pid%100000>x<n>`).
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Fails the test early, with the reason, when it does not run as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (BPF, network namespaces); run the suite with `cargo xtask test` as root"
    );
}

/// A bpffs directory for one test's pinned maps and links, removed on drop.
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    pub fn new(prefix: &str) -> Self {
        require_root();
        assert!(
            Path::new("/sys/fs/bpf").exists(),
            "bpffs is not mounted at /sys/fs/bpf: run `cargo xtask setup`"
        );
        let path = Path::new("/sys/fs/bpf").join(unique_name(&format!("berth-test-{prefix}-")));
        PinDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
