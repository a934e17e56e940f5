//! The files every control plane of one cluster must hold alike — the CA, the admin
//! token's digest, the bootstrap token, the service-account signing key and the Secrets'
//! encryption keys — shared through a store several control planes use (etcd): the
//! first one publishes its files there, every other one takes them, so certificates,
//! tokens and sealed Secrets from any instance are good at every other.
//!
//! The record holds the CA's private key: etcd must be protected as Kubernetes' etcd is
//! (TLS with client certificates, `--etcd-cafile`/`--etcd-certfile`).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};

use crate::{
    config::Config,
    store::{Op, Precondition, Store, StoreError},
};

/// The store key of the shared files.
pub(crate) const KEY: &str = "/cluster/files";

#[derive(Debug, thiserror::Error)]
pub enum ClusterFilesError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the cluster's shared files in the store ({KEY}) are unreadable: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Outside(String),
    #[error(
        "another control plane started on this empty etcd at the same time and published its CA and keys first: start this one again to take them"
    )]
    Raced,
}

/// Writes the cluster's shared files into the data directory if another control plane
/// published them; returns whether it did. Runs before anything reads them.
pub fn take(store: &dyn Store, config: &Config) -> Result<bool, ClusterFilesError> {
    let Some(published) = store.get(KEY)? else {
        return Ok(false);
    };
    let files: BTreeMap<String, String> = serde_json::from_slice(&published.value)
        .map_err(|e| ClusterFilesError::Corrupt(e.to_string()))?;
    for (name, content) in files {
        let content = STANDARD
            .decode(content)
            .map_err(|e| ClusterFilesError::Corrupt(format!("{name}: {e}")))?;
        write(&config.data_dir, &name, &content)?;
    }
    tracing::info!("took the cluster's CA, tokens and keys from the shared store");
    Ok(true)
}

/// Publishes this control plane's files (created by its start) as the cluster's; the
/// first control plane on a new etcd does.
pub fn publish(store: &dyn Store, config: &Config) -> Result<(), ClusterFilesError> {
    let value = serde_json::to_vec(&read_all(config)?)
        .map_err(|e| ClusterFilesError::Corrupt(e.to_string()))?;
    match store.commit(vec![Op::Put {
        key: KEY.to_owned(),
        value,
        precondition: Precondition::Absent,
    }]) {
        Ok(_) => {
            tracing::info!("published this cluster's CA, tokens and keys to the shared store");
            Ok(())
        }
        Err(StoreError::AlreadyExists { .. }) => Err(ClusterFilesError::Raced),
        Err(e) => Err(e.into()),
    }
}

/// The shared files, by path relative to the data directory.
pub(crate) fn read_all(config: &Config) -> Result<BTreeMap<String, String>, ClusterFilesError> {
    let data_dir = &config.data_dir;
    let mut paths: Vec<PathBuf> = crate::pki::SHARED_FILES
        .iter()
        .chain([&crate::satokens::KEY_FILE])
        .map(|name| config.pki_dir().join(name))
        .collect();
    let keys_dir = config.encryption_keys_dir();
    for entry in fs::read_dir(&keys_dir).map_err(io(&keys_dir))? {
        paths.push(entry.map_err(io(&keys_dir))?.path());
    }
    let mut files = BTreeMap::new();
    for path in paths {
        let content = fs::read(&path).map_err(io(&path))?;
        let name = path.strip_prefix(data_dir).map_err(|_| {
            ClusterFilesError::Outside(format!("{} is outside the data directory", path.display()))
        })?;
        files.insert(
            name.to_string_lossy().into_owned(),
            STANDARD.encode(content),
        );
    }
    Ok(files)
}

pub(crate) fn write(data_dir: &Path, name: &str, content: &[u8]) -> Result<(), ClusterFilesError> {
    let relative = Path::new(name);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(ClusterFilesError::Corrupt(format!(
            "{name} is not a path inside the data directory"
        )));
    }
    let path = data_dir.join(relative);
    if let Some(dir) = path.parent() {
        berth_files::private_dir(dir).map_err(io(dir))?;
    }
    berth_files::write_private(&path, content).map_err(io(&path))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterFilesError + '_ {
    |source| ClusterFilesError::Io {
        path: path.to_owned(),
        source,
    }
}
