//! A state file the agent keeps for its next start (the last pods the control plane
//! sent). The copy in memory is what the agent acts on; the file only lets a restarted
//! agent go on before the control plane answers. So a failed write (a full disk) does
//! not stop anything: it is logged, counted, and retried until a write gets through, and
//! the `berth_agent_state_saved` gauge says whether the file holds the latest state.

use std::path::{Path, PathBuf};

use prometheus::{IntCounter, IntGauge};

pub struct StateFile {
    path: PathBuf,
    /// The latest contents, while the file does not hold them yet.
    pending: Option<Vec<u8>>,
    failures: IntCounter,
    saved: IntGauge,
}

impl StateFile {
    /// `failures` and `saved` are the agent's `berth_agent_state_write_failures_total` and
    /// `berth_agent_state_saved`.
    pub fn new(path: PathBuf, failures: IntCounter, saved: IntGauge) -> Self {
        saved.set(1);
        Self {
            path,
            pending: None,
            failures,
            saved,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's contents with `contents`, now or at a later [`Self::retry`].
    pub fn save(&mut self, contents: Vec<u8>) {
        self.pending = Some(contents);
        self.retry();
    }

    /// Writes what is pending, if anything; true when the file holds the latest state.
    pub fn retry(&mut self) -> bool {
        let Some(contents) = &self.pending else {
            return true;
        };
        let failing = self.saved.get() == 0;
        // 0600 (pod specs carry environment values), the old contents or the new, and
        // no temporary file left behind to take space from the next attempt.
        match berth_files::write_private(&self.path, contents) {
            Ok(()) => {
                if failing {
                    tracing::info!(path = %self.path.display(), "state file written again");
                }
                self.pending = None;
                self.saved.set(1);
                true
            }
            Err(error) => {
                self.failures.inc();
                self.saved.set(0);
                // Once per episode at warn: a full disk would otherwise log at every retry.
                if failing {
                    tracing::debug!(path = %self.path.display(), %error, "state file still not written");
                } else {
                    tracing::warn!(
                        path = %self.path.display(),
                        %error,
                        "could not write the state file; the agent goes on with the state in memory and retries"
                    );
                }
                false
            }
        }
    }

    /// Whether the file holds the latest state.
    pub fn is_saved(&self) -> bool {
        self.pending.is_none()
    }
}

#[cfg(test)]
mod tests {
    use berth_testkit::smallfs::SmallFs;

    use super::*;

    #[test]
    fn a_failed_write_is_counted_and_retried_until_the_disk_has_room() {
        let fs = SmallFs::mount("agent-state", 1 << 20);
        let path = fs.path().join("pods.json");
        let failures = IntCounter::new("failures", "test").expect("counter");
        let saved = IntGauge::new("saved", "test").expect("gauge");
        let mut file = StateFile::new(path.clone(), failures.clone(), saved.clone());
        file.save(b"[\"first\"]".to_vec());
        assert!(file.is_saved());
        assert_eq!(std::fs::read(&path).expect("read"), b"[\"first\"]");

        fs.fill("filler");
        let latest = vec![b'x'; 64 * 1024];
        file.save(latest.clone());
        assert!(!file.is_saved());
        assert_eq!((failures.get(), saved.get()), (1, 0));
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"[\"first\"]",
            "the old state is kept whole"
        );
        assert!(!file.retry(), "still full");
        assert_eq!(failures.get(), 2);
        let mut names: Vec<_> = std::fs::read_dir(fs.path())
            .expect("read_dir")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["filler", "pods.json"],
            "no partial temporary file left"
        );

        std::fs::remove_file(fs.path().join("filler")).expect("free the space");
        assert!(file.retry());
        assert!(file.is_saved());
        assert_eq!((failures.get(), saved.get()), (2, 1));
        assert_eq!(std::fs::read(&path).expect("read"), latest);
        assert!(file.retry(), "nothing pending");
        assert_eq!(failures.get(), 2);
    }
}
