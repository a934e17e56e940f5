//! The revisioned key-value store under the API server.
//!
//! etcd's model, so an etcd backend can be added behind the same trait: one cluster-wide
//! revision counter bumped by every committed transaction, each key remembering the
//! revisions that created and last modified it, and an ordered event log that watchers
//! read from a revision onward. Watchers are woken through a channel but always read the
//! log itself, so a slow watcher can fall behind but never miss or reorder an event.

use std::sync::Arc;

mod encrypted;
mod etcd;
mod redb;

pub use self::{
    encrypted::{EncryptedStore, Keyring, KeyringError},
    etcd::{Elector, EtcdConfig, EtcdStore, Term},
    redb::RedbStore,
};

/// A store-wide, strictly increasing transaction number (Kubernetes' `resourceVersion`).
pub type Revision = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
}

/// What must hold for a write to proceed; checked inside the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    Always,
    /// Create only.
    Absent,
    /// Must exist, any revision.
    Present,
    /// Optimistic concurrency: the key's last write must be this revision.
    ModRevision(Revision),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        precondition: Precondition,
    },
    Delete {
        key: String,
        precondition: Precondition,
    },
    /// Writes nothing: the transaction only proceeds if `key` meets `precondition` (an
    /// object created in a namespace requires the namespace as it was read).
    Check {
        key: String,
        precondition: Precondition,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change in the log. For a delete, `kv` is the value the key had when deleted, with
/// `mod_revision` set to the deleting revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

impl Event {
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }

    /// Whether the key was created by this event (vs. modified).
    pub fn is_create(&self) -> bool {
        self.kind == EventKind::Put && self.kv.create_revision == self.kv.mod_revision
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key} was modified: expected revision {expected}, found {}", found.map(|r| r.to_string()).unwrap_or_else(|| "none (deleted)".to_owned()))]
    Conflict {
        key: String,
        expected: Revision,
        found: Option<Revision>,
    },
    #[error("{key} already exists")]
    AlreadyExists { key: String },
    #[error("{key} not found")]
    NotFound { key: String },
    /// History before `compacted` is gone; the watcher must list again.
    #[error("revision {requested} has been compacted; the oldest available is {compacted}")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("store backend: {0}")]
    Backend(String),
    #[error("corrupt store record for {0}")]
    Corrupt(String),
    /// A write of the elected controllers after this control plane lost the leadership.
    #[error("writes are fenced: this control plane no longer holds the leadership {key}")]
    Fenced { key: String },
    /// The store's file failed an I/O call: writes are refused until it recovers.
    #[error(transparent)]
    Faulted(StoreFault),
}

/// Why the store is not accepting writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store {}: {cause}", path.display())]
pub struct StoreFault {
    pub path: std::path::PathBuf,
    pub cause: String,
    /// The filesystem is full or over quota (ENOSPC, EDQUOT), not otherwise broken.
    pub no_space: bool,
}

/// Whether the store takes writes, and how often it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Set while writes are refused.
    pub fault: Option<StoreFault>,
    /// Faults since the process started (each healthy → faulted transition once).
    pub faults_total: u64,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where [`Store::commit_then`] sends a commit's result.
pub type CommitDone = Box<dyn FnOnce(Result<Revision>) + Send>;

/// Blocking by design (redb transactions are synchronous); the API layer calls it from
/// `spawn_blocking` for writes, which wait for fsync.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Every key starting with `prefix`, in key order, and the revision of that snapshot.
    fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)>;
    /// Applies all ops atomically as one revision, or none of them. Returns the new
    /// revision; durable when this returns.
    fn commit(&self, ops: Vec<Op>) -> Result<Revision>;
    /// Commits like [`Store::commit`] without a thread waiting for it: `done` gets the
    /// result once it is durable (or refused). Called from the async runtime; this
    /// default commits on one of its blocking threads.
    fn commit_then(self: Arc<Self>, ops: Vec<Op>, done: CommitDone) {
        tokio::task::spawn_blocking(move || done(self.commit(ops)));
    }

    /// Events with revision greater than `after`, oldest first, at most `limit` revisions'
    /// worth (a revision's events are never split).
    fn events_after(&self, after: Revision, limit: usize) -> Result<Vec<Event>>;
    /// Drops history at and below `revision`; watches from before it get `Compacted`.
    fn compact(&self, revision: Revision) -> Result<()>;
    fn revision(&self) -> Result<Revision>;
    fn compacted_revision(&self) -> Result<Revision>;
    /// Bytes the store takes on disk (etcd: its db size).
    fn size_bytes(&self) -> Result<u64>;
    /// Woken with the latest revision after every commit.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Revision>;
    /// Whether writes are accepted now; readiness reports it.
    fn health(&self) -> Health;

    /// The most operations one [`Store::commit`] may hold: etcd refuses larger
    /// transactions (its `--max-txn-ops`), so writers of many objects split them to fit.
    fn max_ops_per_commit(&self) -> usize {
        usize::MAX
    }
}

/// Whether `precondition` holds for `key`, whose current state is `existing`; the error
/// every backend returns when it does not.
pub(crate) fn check(
    key: &str,
    precondition: Precondition,
    existing: Option<&KeyValue>,
) -> Result<()> {
    match (precondition, existing) {
        (Precondition::Always, _) => Ok(()),
        (Precondition::Absent, None) => Ok(()),
        (Precondition::Absent, Some(_)) => Err(StoreError::AlreadyExists {
            key: key.to_owned(),
        }),
        (Precondition::Present, Some(_)) => Ok(()),
        (Precondition::Present, None) => Err(StoreError::NotFound {
            key: key.to_owned(),
        }),
        (Precondition::ModRevision(expected), Some(kv)) if kv.mod_revision == expected => Ok(()),
        (Precondition::ModRevision(expected), found) => Err(StoreError::Conflict {
            key: key.to_owned(),
            expected,
            found: found.map(|kv| kv.mod_revision),
        }),
    }
}
