//! A size-limited filesystem (a tmpfs) for tests of what a full disk does, unmounted and
//! removed when the test ends, also when it fails.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{require_root, unique_name};

pub struct SmallFs {
    path: PathBuf,
}

impl SmallFs {
    /// A tmpfs of `bytes` mounted on a new directory under the temp dir.
    pub fn mount(prefix: &str, bytes: u64) -> Self {
        require_root();
        let path = std::env::temp_dir().join(unique_name(&format!("berth-{prefix}-")));
        std::fs::create_dir(&path).expect("create the mount point");
        // From here on, Drop unmounts (if mounted) and removes the directory.
        let fs = SmallFs { path };
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0700"),
                "tmpfs",
            ])
            .arg(&fs.path)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs on {}", fs.path.display());
        fs
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `name` until the filesystem has no byte left; returns the bytes written.
    pub fn fill(&self, name: &str) -> u64 {
        let mut file = std::fs::File::create(self.path.join(name)).expect("create the filler");
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("writing the filler: {e}"),
            }
        }
        written
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazy: a process still holding a file there (a server being killed) does not
        // keep the mount alive.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}
