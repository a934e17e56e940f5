//! Bootstrap tokens: what a node agent presents to join. The first one is created with
//! the PKI (`pki/bootstrap-token`) and expires like kubeadm's, 24 h after it was made
//! unless configured otherwise (`--bootstrap-token-ttl`); more are created through the API
//! (`berthctl token create`), each with an optional expiry, and kept in the store (one
//! record per token under `/cluster/bootstrap-tokens/`), so every control plane sharing
//! the store accepts a token made at any of them, and they survive restarts and restores.
//!
//! Like kubeadm's, a created token is `<id>.<secret>`: the id names it in lists and
//! deletes, the secret is only ever shown once. The store holds SHA-256 digests, not
//! tokens.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::{
    credentials::Auth,
    pki::{self, PkiError},
    store::{Op, Precondition, Store, StoreError},
    util,
};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("bootstrap token {0:?} not found")]
    NotFound(String),
    #[error("bootstrap tokens: {0}")]
    Store(#[from] StoreError),
}

/// One created token as stored and as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: String,
    /// Hex SHA-256 of the whole `<id>.<secret>` token.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub digest: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub creation_timestamp: String,
    /// RFC 3339; absent: never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

impl TokenRecord {
    fn expired(&self, now: u64) -> bool {
        self.expires
            .as_deref()
            .and_then(util::parse_rfc3339)
            .is_some_and(|at| at <= now)
    }
}

pub struct BootstrapTokens {
    store: Arc<dyn Store>,
    initial: Auth,
    /// Unix seconds the initial token stops joining at; None: never.
    initial_expires: Option<u64>,
}

/// Where the created tokens live in the store, one key per token id.
const PREFIX: &str = "/cluster/bootstrap-tokens/";
/// Where versions before the store kept them, per control plane: read once and moved.
const LEGACY_FILE: &str = "bootstrap-tokens.json";
/// Token alphabet and lengths as kubeadm's (`[a-z0-9]{6}.[a-z0-9]{16}`).
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const ID_LENGTH: usize = 6;

fn random_string<const N: usize>() -> String {
    util::random_bytes::<N>()
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

/// The store key of token `id`, or None if `id` cannot be one (so a made-up id from a
/// request never names another key).
fn key(id: &str) -> Option<String> {
    (id.len() == ID_LENGTH && id.bytes().all(|b| ALPHABET.contains(&b)))
        .then(|| format!("{PREFIX}{id}"))
}

impl BootstrapTokens {
    /// Serves the created tokens from `store`; `initial` is the token from the PKI,
    /// accepted until `initial_expires` (Unix seconds; None: always). Tokens an older
    /// version kept in `pki_dir` are moved into the store first.
    pub fn load(
        store: Arc<dyn Store>,
        pki_dir: &Path,
        initial: &str,
        initial_expires: Option<u64>,
    ) -> Result<Self, TokenError> {
        let tokens = Self {
            store,
            initial: Auth::from_digests(vec![Auth::digest(initial)]),
            initial_expires,
        };
        tokens.move_legacy_file(&pki_dir.join(LEGACY_FILE))?;
        Ok(tokens)
    }

    fn move_legacy_file(&self, path: &Path) -> Result<(), TokenError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(PkiError::Io {
                    path: path.to_owned(),
                    source,
                }
                .into());
            }
        };
        let invalid = |reason: String| TokenError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let records: Vec<TokenRecord> =
            serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        for record in records {
            let key = key(&record.id)
                .ok_or_else(|| invalid(format!("token id {:?} is not a token id", record.id)))?;
            match self.put(key, &record) {
                Ok(()) | Err(TokenError::Store(StoreError::AlreadyExists { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        std::fs::remove_file(path).map_err(|source| PkiError::Io {
            path: path.to_owned(),
            source,
        })?;
        tracing::info!(
            "moved the bootstrap tokens of {} into the store",
            path.display()
        );
        Ok(())
    }

    fn put(&self, key: String, record: &TokenRecord) -> Result<(), TokenError> {
        let value = serde_json::to_vec(record).map_err(|e| TokenError::Invalid {
            path: PathBuf::from(&key),
            reason: e.to_string(),
        })?;
        self.store.commit(vec![Op::Put {
            key,
            value,
            precondition: Precondition::Absent,
        }])?;
        Ok(())
    }

    /// Every stored record, with the store revision each was written at.
    fn records(&self) -> Result<Vec<(TokenRecord, u64)>, TokenError> {
        let (items, _) = self.store.list(PREFIX)?;
        items
            .into_iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value)
                    .map(|record| (record, kv.mod_revision))
                    .map_err(|e| TokenError::Invalid {
                        path: PathBuf::from(&kv.key),
                        reason: e.to_string(),
                    })
            })
            .collect()
    }

    /// Creates a token valid for `ttl_seconds` (0: no expiry); returns it and its record.
    pub fn create(
        &self,
        ttl_seconds: u64,
        description: &str,
    ) -> Result<(String, TokenRecord), TokenError> {
        let now = util::unix_now();
        self.drop_expired(now);
        loop {
            let id = random_string::<ID_LENGTH>();
            let secret = random_string::<16>();
            let token = format!("{id}.{secret}");
            let record = TokenRecord {
                id: id.clone(),
                digest: util::hex(&Auth::digest(&token)),
                description: description.to_owned(),
                creation_timestamp: util::rfc3339(now),
                expires: (ttl_seconds > 0).then(|| util::rfc3339(now.saturating_add(ttl_seconds))),
            };
            match self.put(format!("{PREFIX}{id}"), &record) {
                Ok(()) => return Ok((token, record)),
                // The id is taken (36^6 ids: rare): draw another.
                Err(TokenError::Store(StoreError::AlreadyExists { .. })) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Deletes the records of expired tokens; one changed meanwhile (by another control
    /// plane) is left for the next time.
    fn drop_expired(&self, now: u64) {
        let Ok(records) = self.records() else {
            return;
        };
        let ops: Vec<Op> = records
            .into_iter()
            .filter(|(record, _)| record.expired(now))
            .map(|(record, revision)| Op::Delete {
                key: format!("{PREFIX}{}", record.id),
                precondition: Precondition::ModRevision(revision),
            })
            .collect();
        if !ops.is_empty()
            && let Err(e) = self.store.commit(ops)
        {
            tracing::debug!("expired bootstrap tokens left for later: {e}");
        }
    }

    /// The tokens that can still be used, without their digests.
    pub fn list(&self) -> Result<Vec<TokenRecord>, TokenError> {
        let now = util::unix_now();
        Ok(self
            .records()?
            .into_iter()
            .filter(|(record, _)| !record.expired(now))
            .map(|(record, _)| TokenRecord {
                digest: String::new(),
                ..record
            })
            .collect())
    }

    pub fn delete(&self, id: &str) -> Result<(), TokenError> {
        let not_found = || TokenError::NotFound(id.to_owned());
        let key = key(id).ok_or_else(not_found)?;
        match self.store.commit(vec![Op::Delete {
            key,
            precondition: Precondition::Present,
        }]) {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => Err(not_found()),
            Err(e) => Err(e.into()),
        }
    }

    /// True for the initial token and any created one, until they expire. A store that
    /// cannot be read refuses created tokens (the join is retried by the agent).
    pub fn accepts(&self, token: &str) -> bool {
        let now = util::unix_now();
        if self.initial.accepts(token) {
            return self.initial_expires.is_none_or(|at| now < at);
        }
        let Some(key) = token.split_once('.').and_then(|(id, _)| key(id)) else {
            return false;
        };
        let stored = match self.store.get(&key) {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!("bootstrap token {key}: {e}");
                return false;
            }
        };
        stored
            .and_then(|kv| serde_json::from_slice::<TokenRecord>(&kv.value).ok())
            .filter(|record| !record.expired(now))
            .and_then(|record| pki::parse_hex32(&record.digest))
            .is_some_and(|digest| Auth::from_digests(vec![digest]).accepts(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbStore;

    fn store(dir: &Path) -> Arc<dyn Store> {
        Arc::new(RedbStore::open(&dir.join("store.redb")).expect("store"))
    }

    #[test]
    fn created_tokens_join_until_deleted_and_are_shared_through_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let tokens =
            BootstrapTokens::load(Arc::clone(&store), dir.path(), "initial", None).expect("load");
        assert!(tokens.accepts("initial"));
        let (token, record) = tokens.create(3600, "for node-2").expect("create");
        assert!(token.starts_with(&format!("{}.", record.id)) && token.len() == 23);
        assert!(tokens.accepts(&token));
        assert!(!tokens.accepts(&format!("{}.aaaaaaaaaaaaaaaa", record.id)));
        assert!(!tokens.accepts("made.up"));

        // Another control plane on the same store (its own PKI directory).
        let other_dir = tempfile::tempdir().expect("tempdir");
        let other = BootstrapTokens::load(store, other_dir.path(), "initial", None).expect("other");
        assert!(other.accepts(&token));
        let listed = other.list().expect("list");
        assert_eq!(listed.len(), 1);
        assert!(listed[0].digest.is_empty());
        other.delete(&record.id).expect("delete");
        assert!(!tokens.accepts(&token));
        assert!(matches!(
            tokens.delete(&record.id),
            Err(TokenError::NotFound(_))
        ));
        assert!(matches!(
            tokens.delete("../../files"),
            Err(TokenError::NotFound(_))
        ));
    }

    #[test]
    fn the_initial_token_expires_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let now = util::unix_now();
        let valid =
            BootstrapTokens::load(Arc::clone(&store), dir.path(), "initial", Some(now + 60))
                .expect("load");
        assert!(valid.accepts("initial"));
        let expired =
            BootstrapTokens::load(store, dir.path(), "initial", Some(now - 1)).expect("load");
        assert!(!expired.accepts("initial"));
    }

    #[test]
    fn tokens_of_the_older_file_move_into_the_store_and_expired_ones_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let stale_token = "abcdef.0123456789abcdef";
        let stale = TokenRecord {
            id: "abcdef".to_owned(),
            digest: util::hex(&Auth::digest(stale_token)),
            description: String::new(),
            creation_timestamp: util::rfc3339(util::unix_now() - 7200),
            expires: Some(util::rfc3339(util::unix_now() - 1)),
        };
        let fresh_token = "ghijkl.0123456789abcdef";
        let fresh = TokenRecord {
            id: "ghijkl".to_owned(),
            digest: util::hex(&Auth::digest(fresh_token)),
            expires: Some(util::rfc3339(util::unix_now() + 60)),
            ..stale.clone()
        };
        let file = dir.path().join(LEGACY_FILE);
        std::fs::write(&file, serde_json::to_vec(&[stale, fresh]).expect("json")).expect("write");
        let tokens =
            BootstrapTokens::load(Arc::clone(&store), dir.path(), "initial", None).expect("load");
        assert!(!file.exists(), "the file is moved into the store");
        assert!(!tokens.accepts(stale_token));
        assert!(tokens.accepts(fresh_token));
        let listed = tokens.list().expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, "ghijkl");
        // Creating a token drops the expired record from the store.
        tokens.create(0, "").expect("create");
        let (stored, _) = store.list(PREFIX).expect("list");
        assert_eq!(stored.len(), 2);
        assert!(stored.iter().all(|kv| !kv.key.ends_with("abcdef")));
    }

    #[test]
    fn a_broken_older_file_is_named_in_the_error_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(LEGACY_FILE);
        std::fs::write(&file, b"[{").expect("write");
        let error = BootstrapTokens::load(store(dir.path()), dir.path(), "initial", None)
            .err()
            .expect("refused");
        assert!(error.to_string().contains(LEGACY_FILE), "{error}");
        assert!(file.exists());
    }
}
