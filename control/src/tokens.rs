//! Bootstrap tokens: what a node agent presents to join. The first one is created with
//! the PKI (`pki/bootstrap-token`) and expires like kubeadm's, 24 h after it was made
//! unless configured otherwise (`--bootstrap-token-ttl`); more are created through the API
//! (`berthctl token create`), each with an optional expiry, and kept in
//! `pki/bootstrap-tokens.json` so they survive a restart.
//!
//! Like kubeadm's, a created token is `<id>.<secret>`: the id names it in lists and
//! deletes, the secret is only ever shown once. The file holds SHA-256 digests, not tokens.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde::{Deserialize, Serialize};

use crate::{
    credentials::Auth,
    pki::{self, PkiError},
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
    path: PathBuf,
    initial: Auth,
    /// Unix seconds the initial token stops joining at; None: never.
    initial_expires: Option<u64>,
    records: Mutex<Vec<TokenRecord>>,
}

const FILE: &str = "bootstrap-tokens.json";
/// Token alphabet and lengths as kubeadm's (`[a-z0-9]{6}.[a-z0-9]{16}`).
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

fn random_string<const N: usize>() -> String {
    util::random_bytes::<N>()
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

impl BootstrapTokens {
    /// Loads the created tokens from `pki_dir`; `initial` is the token from the PKI,
    /// accepted until `initial_expires` (Unix seconds; None: always).
    pub fn load(
        pki_dir: &Path,
        initial: &str,
        initial_expires: Option<u64>,
    ) -> Result<Self, TokenError> {
        let path = pki_dir.join(FILE);
        let records = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| TokenError::Invalid {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(PkiError::Io {
                    path: path.clone(),
                    source,
                }
                .into());
            }
        };
        Ok(Self {
            path,
            initial: Auth::from_digests(vec![Auth::digest(initial)]),
            initial_expires,
            records: Mutex::new(records),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<TokenRecord>> {
        // A panic while holding the lock cannot leave the list half-written: every
        // change is made on a copy and swapped in after it reached the disk.
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the file whole (a temporary file renamed over it), so a crash leaves
    /// either the old or the new list, never a torn one.
    fn persist(&self, records: &[TokenRecord]) -> Result<(), TokenError> {
        let text = serde_json::to_vec_pretty(records).map_err(|e| TokenError::Invalid {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        pki::write_private(&self.path, &text)?;
        Ok(())
    }

    /// Creates a token valid for `ttl_seconds` (0: no expiry); returns it and its record.
    pub fn create(
        &self,
        ttl_seconds: u64,
        description: &str,
    ) -> Result<(String, TokenRecord), TokenError> {
        let mut records = self.lock();
        let now = util::unix_now();
        let (id, secret) = loop {
            let id = random_string::<6>();
            if !records.iter().any(|r| r.id == id) {
                break (id, random_string::<16>());
            }
        };
        let token = format!("{id}.{secret}");
        let record = TokenRecord {
            id,
            digest: util::hex(&Auth::digest(&token)),
            description: description.to_owned(),
            creation_timestamp: util::rfc3339(now),
            expires: (ttl_seconds > 0).then(|| util::rfc3339(now.saturating_add(ttl_seconds))),
        };
        // Expired tokens are dropped whenever the list is written anyway.
        let mut next: Vec<TokenRecord> = records
            .iter()
            .filter(|r| !r.expired(now))
            .cloned()
            .collect();
        next.push(record.clone());
        self.persist(&next)?;
        *records = next;
        Ok((token, record))
    }

    /// The tokens that can still be used, without their digests.
    pub fn list(&self) -> Vec<TokenRecord> {
        let now = util::unix_now();
        self.lock()
            .iter()
            .filter(|r| !r.expired(now))
            .map(|r| TokenRecord {
                digest: String::new(),
                ..r.clone()
            })
            .collect()
    }

    pub fn delete(&self, id: &str) -> Result<(), TokenError> {
        let mut records = self.lock();
        if !records.iter().any(|r| r.id == id) {
            return Err(TokenError::NotFound(id.to_owned()));
        }
        let next: Vec<TokenRecord> = records.iter().filter(|r| r.id != id).cloned().collect();
        self.persist(&next)?;
        *records = next;
        Ok(())
    }

    /// True for the initial token and any created one, until they expire.
    pub fn accepts(&self, token: &str) -> bool {
        let now = util::unix_now();
        if self.initial.accepts(token) {
            return self.initial_expires.is_none_or(|at| now < at);
        }
        let Some((id, _)) = token.split_once('.') else {
            return false;
        };
        let records = self.lock();
        records
            .iter()
            .filter(|r| r.id == id && !r.expired(now))
            .any(|r| {
                pki::parse_hex32(&r.digest)
                    .is_some_and(|d| Auth::from_digests(vec![d]).accepts(token))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_tokens_join_until_deleted_or_expired_and_survive_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = BootstrapTokens::load(dir.path(), "initial", None).expect("load");
        assert!(tokens.accepts("initial"));
        let (token, record) = tokens.create(3600, "for node-2").expect("create");
        assert!(token.starts_with(&format!("{}.", record.id)) && token.len() == 23);
        assert!(tokens.accepts(&token));
        assert!(!tokens.accepts(&format!("{}.aaaaaaaaaaaaaaaa", record.id)));
        assert!(!tokens.accepts("made.up"));

        let reloaded = BootstrapTokens::load(dir.path(), "initial", None).expect("reload");
        assert!(reloaded.accepts(&token));
        assert_eq!(reloaded.list().len(), 1);
        assert!(reloaded.list()[0].digest.is_empty());
        reloaded.delete(&record.id).expect("delete");
        assert!(!reloaded.accepts(&token));
        assert!(matches!(
            reloaded.delete(&record.id),
            Err(TokenError::NotFound(_))
        ));
    }

    #[test]
    fn the_initial_token_expires_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = util::unix_now();
        let valid = BootstrapTokens::load(dir.path(), "initial", Some(now + 60)).expect("load");
        assert!(valid.accepts("initial"));
        let expired = BootstrapTokens::load(dir.path(), "initial", Some(now - 1)).expect("load");
        assert!(!expired.accepts("initial"));
    }

    #[test]
    fn expired_tokens_are_refused_and_not_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = "abcdef.0123456789abcdef";
        let stale = TokenRecord {
            id: "abcdef".to_owned(),
            digest: util::hex(&Auth::digest(token)),
            description: String::new(),
            creation_timestamp: util::rfc3339(util::unix_now() - 7200),
            expires: Some(util::rfc3339(util::unix_now() - 1)),
        };
        std::fs::write(
            dir.path().join(FILE),
            serde_json::to_vec(std::slice::from_ref(&stale)).expect("json"),
        )
        .expect("write");
        let tokens = BootstrapTokens::load(dir.path(), "initial", None).expect("load");
        assert!(!tokens.accepts(token));
        assert!(tokens.list().is_empty());
        let fresh = TokenRecord {
            expires: Some(util::rfc3339(util::unix_now() + 60)),
            ..stale
        };
        std::fs::write(
            dir.path().join(FILE),
            serde_json::to_vec(&[fresh]).expect("json"),
        )
        .expect("write");
        let tokens = BootstrapTokens::load(dir.path(), "initial", None).expect("load");
        assert!(tokens.accepts(token));
    }
}
