//! Backup and restore: a snapshot is every key of the store at one revision plus the
//! cluster's CA, tokens and encryption keys (without which the restored objects — node
//! certificates, Secrets — would be useless), in one JSON file (`berthctl snapshot save`,
//! `berth-control snapshot restore`). It holds the CA's private key and Secrets in the
//! clear: keep it like the CA key.
//!
//! A restored store starts above the snapshot's revision with that history marked
//! compacted (etcdutl's `--bump-revision --mark-compacted`), so clients holding newer
//! resourceVersions from the lost cluster list again instead of waiting for revisions
//! that will never come.

use std::collections::BTreeMap;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize};

use crate::{
    cluster_files::{self, ClusterFilesError},
    config::Config,
    store::{EncryptedStore, Keyring, Op, Precondition, RedbStore, Revision, Store, StoreError},
};

/// How far above the snapshot's revision a restored store starts: more writes than the
/// lost cluster can have made after the snapshot, in practice.
const REVISION_BUMP: Revision = 1_000_000;
/// Keys per restoring transaction.
const BATCH: usize = 500;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// What this file is, for a reader who finds it.
    pub kind: String,
    pub revision: Revision,
    /// The cluster's shared files by path in the data directory, base64.
    pub files: BTreeMap<String, String>,
    /// Every key of the store, values in base64.
    pub items: Vec<Item>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Item {
    pub key: String,
    pub value: String,
}

const KIND: &str = "BerthSnapshot";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Files(#[from] ClusterFilesError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Target(String),
}

/// Everything in `store` now, and the cluster's files from `config`'s data directory.
pub fn take(store: &dyn Store, config: &Config) -> Result<Snapshot, SnapshotError> {
    let (items, revision) = store.list("/")?;
    Ok(Snapshot {
        kind: KIND.to_owned(),
        revision,
        files: cluster_files::read_all(config)?,
        items: items
            .into_iter()
            // The restored cluster publishes its files itself.
            .filter(|kv| kv.key != cluster_files::KEY)
            .map(|kv| Item {
                key: kv.key,
                value: STANDARD.encode(kv.value),
            })
            .collect(),
    })
}

/// Restores `snapshot` into `config`'s data directory and store, which must be new (no
/// store file; on etcd, nothing under the prefix). Returns the keys restored.
pub fn restore(snapshot: &Snapshot, config: &Config) -> Result<usize, SnapshotError> {
    if snapshot.kind != KIND {
        return Err(SnapshotError::Invalid(format!(
            "kind {:?}: not a Berth snapshot (expected {KIND})",
            snapshot.kind
        )));
    }
    let store_path = config.store_path();
    if config.etcd().is_none() && store_path.exists() {
        return Err(SnapshotError::Target(format!(
            "{} exists: restore into a new data directory (--data-dir), nothing was changed",
            store_path.display()
        )));
    }
    let mut values = Vec::with_capacity(snapshot.items.len());
    for item in &snapshot.items {
        let value = STANDARD
            .decode(&item.value)
            .map_err(|e| SnapshotError::Invalid(format!("item {}: {e}", item.key)))?;
        values.push((item.key.clone(), value));
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        SnapshotError::Target(format!("creating {}: {e}", config.data_dir.display()))
    })?;
    for (name, content) in &snapshot.files {
        let content = STANDARD
            .decode(content)
            .map_err(|e| SnapshotError::Invalid(format!("file {name}: {e}")))?;
        cluster_files::write(&config.data_dir, name, &content)?;
    }
    let keyring = Keyring::load_or_create(&config.encryption_keys_dir())
        .map_err(|e| SnapshotError::Target(e.to_string()))?;
    let sealed = vec![crate::objects::prefix(&berth_api::kinds::SECRETS, None)];
    let store: Box<dyn Store> = match config.etcd() {
        Some(etcd) => {
            let etcd = crate::store::EtcdStore::connect(etcd)?;
            if !etcd.list("/")?.0.is_empty() {
                return Err(SnapshotError::Target(
                    "the etcd prefix holds objects already: restore into an empty one (--etcd-prefix), nothing was changed".to_owned(),
                ));
            }
            cluster_files::publish(&etcd, config)?;
            Box::new(EncryptedStore::new(etcd, keyring, sealed))
        }
        None => {
            let redb = RedbStore::open(&store_path)?;
            redb.start_after(snapshot.revision + REVISION_BUMP)?;
            Box::new(EncryptedStore::new(redb, keyring, sealed))
        }
    };
    let restored = values.len();
    let mut values = values.into_iter().peekable();
    while values.peek().is_some() {
        let ops = values
            .by_ref()
            .take(BATCH)
            .map(|(key, value)| Op::Put {
                key,
                value,
                precondition: Precondition::Absent,
            })
            .collect();
        store.commit(ops)?;
    }
    Ok(restored)
}
