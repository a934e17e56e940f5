//! Encryption at rest for the keys under some prefixes (Secrets), as a [`Store`] over
//! another: values are sealed with AES-256-GCM on the way in and opened on the way out,
//! so everything above the store (registry, watch cache, controllers' cache) sees plain
//! objects and the store's file holds only ciphertext. Kubernetes' EncryptionConfiguration
//! with the `aesgcm` provider does the same, in the same place (between the registry and
//! etcd).
//!
//! A sealed value is `berth:enc:aesgcm:v1:<key id>:` ‖ nonce (12 bytes) ‖ ciphertext ‖
//! tag, with the store key as associated data, so a value copied to another key does not
//! open. The key id beside each value is what makes rotation work: a new key file
//! encrypts new writes, older ones stay to open what they sealed. A value without the
//! prefix (written before encryption) is read as it is, like Kubernetes' `identity`
//! provider.
//!
//! Nonces are random (96 bits): safe for far more writes than a cluster's Secrets see
//! under one key (NIST's bound is 2^32 messages); rotate the key long before that.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom as _, SystemRandom},
};

use super::{CommitDone, Event, KeyValue, Op, Result, Revision, Store, StoreError};

const MAGIC: &str = "berth:enc:aesgcm:v1:";
const KEY_SUFFIX: &str = ".key";
const KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("writing {0}")]
    Write(#[from] crate::pki::PkiError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyringError + '_ {
    |source| KeyringError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The AES-256 keys of one directory: `key<N>.key` files, each the base64 of 32 random
/// bytes (Kubernetes' EncryptionConfiguration writes its keys the same way). The highest
/// `N` seals new values; every key opens what it sealed.
pub struct Keyring {
    keys: BTreeMap<u32, LessSafeKey>,
    rng: SystemRandom,
}

impl Keyring {
    /// Loads the keys of `dir`, creating the directory (0700) and `key1.key` (0600) the
    /// first time.
    pub fn load_or_create(dir: &Path) -> Result<Self, KeyringError> {
        berth_files::private_dir(dir).map_err(io(dir))?;
        if Self::numbers(dir)?.is_empty() {
            Self::rotate(dir)?;
        }
        let mut keys = BTreeMap::new();
        for (number, path) in Self::numbers(dir)? {
            let text = fs::read_to_string(&path).map_err(io(&path))?;
            let invalid = |reason: String| KeyringError::Invalid {
                path: path.clone(),
                reason,
            };
            let bytes = STANDARD
                .decode(text.trim())
                .map_err(|e| invalid(format!("not base64: {e}")))?;
            if bytes.len() != KEY_BYTES {
                return Err(invalid(format!(
                    "holds {} bytes; an AES-256 key is {KEY_BYTES}",
                    bytes.len()
                )));
            }
            let key = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| invalid("not an AES-256 key".to_owned()))?;
            keys.insert(number, LessSafeKey::new(key));
        }
        Ok(Self {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// Writes a new key (0600) after the highest in `dir`; the next start seals with it.
    /// Returns its path.
    pub fn rotate(dir: &Path) -> Result<PathBuf, KeyringError> {
        let next = Self::numbers(dir)?.last().map_or(1, |(n, _)| n + 1);
        let mut key = [0u8; KEY_BYTES];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| KeyringError::Invalid {
                path: dir.to_owned(),
                reason: "no randomness for a new key".to_owned(),
            })?;
        let path = dir.join(format!("key{next}{KEY_SUFFIX}"));
        crate::pki::write_private(&path, format!("{}\n", STANDARD.encode(key)).as_bytes())?;
        Ok(path)
    }

    /// The `key<N>.key` files of `dir` by `N`; other files are left alone.
    fn numbers(dir: &Path) -> Result<Vec<(u32, PathBuf)>, KeyringError> {
        let mut numbers = Vec::new();
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name();
            let number = name
                .to_str()
                .and_then(|n| n.strip_prefix("key"))
                .and_then(|n| n.strip_suffix(KEY_SUFFIX))
                .and_then(|n| n.parse::<u32>().ok());
            if let Some(number) = number {
                numbers.push((number, entry.path()));
            }
        }
        numbers.sort();
        Ok(numbers)
    }

    fn seal(&self, key: &str, plain: &[u8]) -> Result<Vec<u8>> {
        let (id, sealing) = self
            .keys
            .last_key_value()
            .ok_or_else(|| StoreError::Backend("no encryption key".to_owned()))?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| StoreError::Backend("no randomness for a nonce".to_owned()))?;
        let mut sealed = plain.to_vec();
        sealing
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| StoreError::Backend(format!("{key}: encryption failed")))?;
        let mut out = format!("{MAGIC}key{id}:").into_bytes();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn open(&self, key: &str, stored: Vec<u8>) -> Result<Vec<u8>> {
        let Some(rest) = stored.strip_prefix(MAGIC.as_bytes()) else {
            return Ok(stored);
        };
        let corrupt = |reason: &str| StoreError::Corrupt(format!("{key}: {reason}"));
        let colon = rest
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(|| corrupt("no key id before the ciphertext"))?;
        let id = std::str::from_utf8(&rest[..colon])
            .ok()
            .and_then(|id| id.strip_prefix("key"))
            .and_then(|n| n.parse::<u32>().ok())
            .ok_or_else(|| corrupt("unreadable key id"))?;
        let opening = self.keys.get(&id).ok_or_else(|| {
            StoreError::Backend(format!(
                "{key} is encrypted with key{id}{KEY_SUFFIX}, which is not in the key directory"
            ))
        })?;
        let body = &rest[colon + 1..];
        if body.len() < NONCE_LEN {
            return Err(corrupt("ciphertext too short"));
        }
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| corrupt("bad nonce"))?;
        let mut buffer = sealed.to_vec();
        let plain = opening
            .open_in_place(nonce, Aad::from(key.as_bytes()), &mut buffer)
            .map_err(|_| corrupt(&format!("does not decrypt with key{id}{KEY_SUFFIX}")))?;
        Ok(plain.to_vec())
    }
}

/// `inner` with the values of keys under `prefixes` encrypted by `keyring`.
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    keyring: Keyring,
    prefixes: Vec<String>,
}

impl EncryptedStore {
    /// `ops` with the values this store encrypts sealed.
    fn seal_ops(&self, ops: Vec<Op>) -> Result<Vec<Op>> {
        ops.into_iter()
            .map(|op| match op {
                Op::Put {
                    key,
                    value,
                    precondition,
                } if self.encrypts(&key) => Ok(Op::Put {
                    value: self.keyring.seal(&key, &value)?,
                    key,
                    precondition,
                }),
                op => Ok(op),
            })
            .collect()
    }

    pub fn new(inner: impl Store, keyring: Keyring, prefixes: Vec<String>) -> Self {
        Self {
            inner: Arc::new(inner),
            keyring,
            prefixes,
        }
    }

    fn encrypts(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    fn open(&self, mut kv: KeyValue) -> Result<KeyValue> {
        if self.encrypts(&kv.key) {
            kv.value = self.keyring.open(&kv.key, std::mem::take(&mut kv.value))?;
        }
        Ok(kv)
    }
}

impl Store for EncryptedStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner.get(key)?.map(|kv| self.open(kv)).transpose()
    }

    fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let (kvs, revision) = self.inner.list(prefix)?;
        let kvs = kvs
            .into_iter()
            .map(|kv| self.open(kv))
            .collect::<Result<_>>()?;
        Ok((kvs, revision))
    }

    fn commit(&self, ops: Vec<Op>) -> Result<Revision> {
        self.inner.commit(self.seal_ops(ops)?)
    }

    fn commit_then(self: Arc<Self>, ops: Vec<Op>, done: CommitDone) {
        match self.seal_ops(ops) {
            Ok(ops) => Arc::clone(&self.inner).commit_then(ops, done),
            Err(e) => done(Err(e)),
        }
    }

    fn events_after(&self, after: Revision, limit: usize) -> Result<Vec<Event>> {
        self.inner
            .events_after(after, limit)?
            .into_iter()
            .map(|event| {
                Ok(Event {
                    kind: event.kind,
                    kv: self.open(event.kv)?,
                })
            })
            .collect()
    }

    fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision)
    }

    fn revision(&self) -> Result<Revision> {
        self.inner.revision()
    }

    fn compacted_revision(&self) -> Result<Revision> {
        self.inner.compacted_revision()
    }

    fn size_bytes(&self) -> Result<u64> {
        self.inner.size_bytes()
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<Revision> {
        self.inner.subscribe()
    }

    fn health(&self) -> super::Health {
        self.inner.health()
    }

    fn max_ops_per_commit(&self) -> usize {
        self.inner.max_ops_per_commit()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::store::{Precondition, RedbStore};

    fn put(key: &str, value: &[u8]) -> Op {
        Op::Put {
            key: key.to_owned(),
            value: value.to_vec(),
            precondition: Precondition::Always,
        }
    }

    #[test]
    fn values_under_the_prefixes_are_sealed_and_open_after_a_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = dir.path().join("keys");
        let open = |path: &Path| {
            EncryptedStore::new(
                RedbStore::open(path).expect("store"),
                Keyring::load_or_create(&keys).expect("keyring"),
                vec!["/core/secrets/".to_owned()],
            )
        };
        let path = dir.path().join("store.redb");
        let store = open(&path);
        let mode = fs::metadata(keys.join("key1.key"))
            .expect("key1")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        store
            .commit(vec![
                put("/core/secrets/ns/a", b"hunter2"),
                put("/core/pods/ns/p", b"plain"),
            ])
            .expect("commit");
        drop(store);
        let raw = RedbStore::open(&path).expect("raw");
        let sealed = raw.get("/core/secrets/ns/a").expect("get").expect("there");
        assert!(sealed.value.starts_with(b"berth:enc:aesgcm:v1:key1:"));
        assert!(!sealed.value.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            raw.get("/core/pods/ns/p")
                .expect("get")
                .expect("there")
                .value,
            b"plain"
        );
        // A value moved to another key does not open there.
        raw.commit(vec![put("/core/secrets/ns/b", &sealed.value)])
            .expect("copy");
        drop(raw);

        Keyring::rotate(&keys).expect("rotate");
        let store = open(&path);
        store
            .commit(vec![put("/core/secrets/ns/c", b"new")])
            .expect("commit");
        assert_eq!(
            store
                .get("/core/secrets/ns/a")
                .expect("get")
                .expect("there")
                .value,
            b"hunter2"
        );
        assert!(matches!(
            store.get("/core/secrets/ns/b"),
            Err(StoreError::Corrupt(_))
        ));
        let events = store.events_after(0, 1).expect("events");
        assert_eq!(events[0].kv.value, b"hunter2");
        drop(store);
        let raw = RedbStore::open(&path).expect("raw");
        let newer = raw.get("/core/secrets/ns/c").expect("get").expect("there");
        assert!(newer.value.starts_with(b"berth:enc:aesgcm:v1:key2:"));
    }
}
