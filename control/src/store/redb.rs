//! The default backend: one redb file, fsynced on every commit.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use redb::{Database, ReadableDatabase as _, ReadableTable, TableDefinition};
use tokio::sync::watch;

use super::{Event, EventKind, KeyValue, Op, Precondition, Result, Revision, Store, StoreError};

/// key → create revision (u64 LE) ‖ mod revision (u64 LE) ‖ value
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// (revision, index within the transaction) → kind (u8) ‖ create revision ‖ key len (u32 LE) ‖ key ‖ value
const LOG: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

pub struct RedbStore {
    db: Database,
    path: std::path::PathBuf,
    notify: watch::Sender<Revision>,
    /// Transactions waiting for the next group commit.
    queue: Mutex<Vec<Arc<Slot>>>,
    /// Held by the thread committing a group.
    writer: Mutex<()>,
}

fn backend(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(error.into().to_string())
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        let revision = {
            // Creating the tables up front lets read transactions assume they exist.
            txn.open_table(KV).map_err(backend)?;
            txn.open_table(LOG).map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            meta.get(META_REVISION)
                .map_err(backend)?
                .map(|g| g.value())
                .unwrap_or(0)
        };
        txn.commit().map_err(backend)?;
        let (notify, _) = watch::channel(revision);
        Ok(Self {
            db,
            path: path.to_path_buf(),
            notify,
            queue: Mutex::new(Vec::new()),
            writer: Mutex::new(()),
        })
    }

    /// Applies each transaction whose preconditions hold as its own revision, all in one
    /// redb transaction; returns one result per transaction, in order.
    fn commit_group(&self, transactions: Vec<Vec<Op>>) -> Result<Vec<Result<Revision>>> {
        let txn = self.db.begin_write().map_err(backend)?;
        let mut results = Vec::with_capacity(transactions.len());
        let (first, last) = {
            let mut meta = txn.open_table(META).map_err(backend)?;
            let mut kv = txn.open_table(KV).map_err(backend)?;
            let mut log = txn.open_table(LOG).map_err(backend)?;
            let first = meta
                .get(META_REVISION)
                .map_err(backend)?
                .map(|g| g.value())
                .unwrap_or(0);
            let mut revision = first;
            for ops in transactions {
                // Check every precondition before writing anything, so a failed
                // transaction leaves no trace in the group.
                if let Err(e) = check_all(&kv, &ops) {
                    results.push(Err(e));
                    continue;
                }
                revision += 1;
                apply(&mut kv, &mut log, revision, ops)?;
                results.push(Ok(revision));
            }
            if revision > first {
                meta.insert(META_REVISION, revision).map_err(backend)?;
            }
            (first, revision)
        };
        if last == first {
            // Nothing to write: dropping the transaction aborts it without an fsync.
            return Ok(results);
        }
        txn.commit().map_err(backend)?;
        self.notify
            .send_modify(|latest| *latest = (*latest).max(last));
        Ok(results)
    }

    fn meta(&self, name: &str) -> Result<Revision> {
        let txn = self.db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        Ok(meta
            .get(name)
            .map_err(backend)?
            .map(|g| g.value())
            .unwrap_or(0))
    }
}

fn encode_kv(create: Revision, modified: Revision, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&modified.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode_kv(key: &str, raw: &[u8]) -> Result<KeyValue> {
    let corrupt = || StoreError::Corrupt(key.to_owned());
    let (create, rest) = split_u64(raw).ok_or_else(corrupt)?;
    let (modified, value) = split_u64(rest).ok_or_else(corrupt)?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: value.to_vec(),
        create_revision: create,
        mod_revision: modified,
    })
}

fn encode_event(kind: EventKind, create: Revision, key: &str, value: &[u8]) -> Result<Vec<u8>> {
    let key_len = u32::try_from(key.len())
        .map_err(|_| StoreError::Backend(format!("key too long: {key}")))?;
    let mut out = Vec::with_capacity(13 + key.len() + value.len());
    out.push(match kind {
        EventKind::Put => 0,
        EventKind::Delete => 1,
    });
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(value);
    Ok(out)
}

fn decode_event(revision: Revision, raw: &[u8]) -> Result<Event> {
    let corrupt = || StoreError::Corrupt(format!("log entry at revision {revision}"));
    let (&kind, rest) = raw.split_first().ok_or_else(corrupt)?;
    let kind = match kind {
        0 => EventKind::Put,
        1 => EventKind::Delete,
        _ => return Err(corrupt()),
    };
    let (create, rest) = split_u64(rest).ok_or_else(corrupt)?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err(corrupt());
    }
    let (key, value) = rest.split_at(len);
    let key = std::str::from_utf8(key).map_err(|_| corrupt())?;
    Ok(Event {
        kind,
        kv: KeyValue {
            key: key.to_owned(),
            value: value.to_vec(),
            create_revision: create,
            mod_revision: revision,
        },
    })
}

fn split_u64(raw: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = raw.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*head), rest))
}

fn read_kv(
    kv: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<KeyValue>> {
    kv.get(key)
        .map_err(backend)?
        .map(|g| decode_kv(key, g.value()))
        .transpose()
}

/// Preconditions of a whole transaction, each op seeing the effect of the ones before.
fn check_all(kv: &impl ReadableTable<&'static str, &'static [u8]>, ops: &[Op]) -> Result<()> {
    let mut overlay: HashMap<&str, Option<KeyValue>> = HashMap::new();
    for op in ops {
        let (key, precondition) = match op {
            Op::Put {
                key, precondition, ..
            }
            | Op::Delete { key, precondition }
            | Op::Check { key, precondition } => (key.as_str(), *precondition),
        };
        let existing = match overlay.get(key) {
            Some(state) => state.clone(),
            None => read_kv(kv, key)?,
        };
        check(key, precondition, existing.as_ref())?;
        let after = match op {
            // The revision is not known yet; a later op in the same transaction may
            // still require presence, which is all that is checked against it.
            Op::Put { .. } => Some(KeyValue {
                key: key.to_owned(),
                value: Vec::new(),
                create_revision: existing.as_ref().map_or(0, |e| e.create_revision),
                mod_revision: 0,
            }),
            Op::Delete { .. } => None,
            Op::Check { .. } => existing,
        };
        overlay.insert(key, after);
    }
    Ok(())
}

fn apply(
    kv: &mut redb::Table<'_, &'static str, &'static [u8]>,
    log: &mut redb::Table<'_, (u64, u32), &'static [u8]>,
    revision: Revision,
    ops: Vec<Op>,
) -> Result<()> {
    for (index, op) in (0u32..).zip(ops) {
        match op {
            Op::Put { key, value, .. } => {
                let create = read_kv(kv, &key)?.map_or(revision, |kv| kv.create_revision);
                kv.insert(key.as_str(), encode_kv(create, revision, &value).as_slice())
                    .map_err(backend)?;
                log.insert(
                    (revision, index),
                    encode_event(EventKind::Put, create, &key, &value)?.as_slice(),
                )
                .map_err(backend)?;
            }
            Op::Delete { key, .. } => {
                if let Some(old) = read_kv(kv, &key)? {
                    kv.remove(key.as_str()).map_err(backend)?;
                    let entry =
                        encode_event(EventKind::Delete, old.create_revision, &key, &old.value)?;
                    log.insert((revision, index), entry.as_slice())
                        .map_err(backend)?;
                }
            }
            Op::Check { .. } => {}
        }
    }
    Ok(())
}

struct Slot {
    ops: Mutex<Option<Vec<Op>>>,
    result: Mutex<Option<Result<Revision>>>,
}

/// Locks ignoring poisoning: the guarded data stays consistent because every critical
/// section only moves values in or out.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn check(key: &str, precondition: Precondition, existing: Option<&KeyValue>) -> Result<()> {
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

impl Store for RedbStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let kv = txn.open_table(KV).map_err(backend)?;
        let found = kv.get(key).map_err(backend)?;
        found.map(|g| decode_kv(key, g.value())).transpose()
    }

    fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let txn = self.db.begin_read().map_err(backend)?;
        let kv = txn.open_table(KV).map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        let revision = meta
            .get(META_REVISION)
            .map_err(backend)?
            .map(|g| g.value())
            .unwrap_or(0);
        let mut out = Vec::new();
        for entry in kv.range(prefix..).map_err(backend)? {
            let (key, value) = entry.map_err(backend)?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            out.push(decode_kv(key, value.value())?);
        }
        Ok((out, revision))
    }

    /// Group commit: concurrent callers queue their transactions; whoever holds the
    /// writer lock commits every queued one in a single redb transaction (one fsync),
    /// each still getting its own revision and its own precondition checks.
    fn commit(&self, ops: Vec<Op>) -> Result<Revision> {
        let slot = Arc::new(Slot {
            ops: Mutex::new(Some(ops)),
            result: Mutex::new(None),
        });
        lock(&self.queue).push(Arc::clone(&slot));
        let _writer = lock(&self.writer);
        if let Some(result) = lock(&slot.result).take() {
            // An earlier writer committed this transaction with its group.
            return result;
        }
        let group: Vec<Arc<Slot>> = std::mem::take(&mut *lock(&self.queue));
        let transactions: Vec<Vec<Op>> = group
            .iter()
            .map(|s| lock(&s.ops).take().unwrap_or_default())
            .collect();
        let results = match self.commit_group(transactions) {
            Ok(results) => results,
            Err(e) => {
                let message = e.to_string();
                group
                    .iter()
                    .map(|_| Err(StoreError::Backend(message.clone())))
                    .collect()
            }
        };
        for (member, result) in group.iter().zip(results) {
            *lock(&member.result) = Some(result);
        }
        lock(&slot.result).take().unwrap_or_else(|| {
            Err(StoreError::Backend(
                "transaction lost from its commit group".to_owned(),
            ))
        })
    }

    fn events_after(&self, after: Revision, limit: usize) -> Result<Vec<Event>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        let compacted = meta
            .get(META_COMPACTED)
            .map_err(backend)?
            .map(|g| g.value())
            .unwrap_or(0);
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        let log = txn.open_table(LOG).map_err(backend)?;
        let mut events: Vec<Event> = Vec::new();
        let mut revisions = 0usize;
        for entry in log.range((after.saturating_add(1), 0)..).map_err(backend)? {
            let (key, value) = entry.map_err(backend)?;
            let (revision, _) = key.value();
            if events.last().is_none_or(|e| e.revision() != revision) {
                if revisions == limit {
                    break;
                }
                revisions += 1;
            }
            events.push(decode_event(revision, value.value())?);
        }
        Ok(events)
    }

    fn compact(&self, revision: Revision) -> Result<()> {
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut meta = txn.open_table(META).map_err(backend)?;
            let current = meta
                .get(META_REVISION)
                .map_err(backend)?
                .map(|g| g.value())
                .unwrap_or(0);
            let compacted = meta
                .get(META_COMPACTED)
                .map_err(backend)?
                .map(|g| g.value())
                .unwrap_or(0);
            let target = revision.min(current);
            if target <= compacted {
                return Ok(());
            }
            let mut log = txn.open_table(LOG).map_err(backend)?;
            log.retain_in((0u64, 0u32)..=(target, u32::MAX), |_, _| false)
                .map_err(backend)?;
            meta.insert(META_COMPACTED, target).map_err(backend)?;
        }
        txn.commit().map_err(backend)
    }

    fn revision(&self) -> Result<Revision> {
        self.meta(META_REVISION)
    }

    fn compacted_revision(&self) -> Result<Revision> {
        self.meta(META_COMPACTED)
    }

    fn subscribe(&self) -> watch::Receiver<Revision> {
        self.notify.subscribe()
    }

    fn size_bytes(&self) -> Result<u64> {
        std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(|e| StoreError::Backend(format!("{}: {e}", self.path.display())))
    }
}
