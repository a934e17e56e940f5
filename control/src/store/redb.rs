//! The default backend: one redb file, fsynced on every commit.
//!
//! After one I/O error redb fails every later call until the database is reopened. The
//! store then refuses writes with the cause (disk full or otherwise), and a recovery thread
//! reopens the file with back-off, so reads work again, and clears the fault once a probe
//! write commits (after a disk-full fault, only once the filesystem has room for an
//! object again). Every write acknowledged before the fault was committed with fsync, and
//! the reopened file holds it.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redb::{Database, ReadableDatabase as _, ReadableTable, TableDefinition};
use tokio::sync::watch;

use super::{
    CommitDone, Event, EventKind, Health, KeyValue, Op, Result, Revision, Store, StoreError,
    StoreFault,
};

/// key → create revision (u64 LE) ‖ mod revision (u64 LE) ‖ value
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// (revision, index within the transaction) → kind (u8) ‖ create revision ‖ key len (u32 LE) ‖ key ‖ value
const LOG: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
/// Bumped by the recovery probe: a write that needs a page, as any commit does.
const META_PROBE: &str = "probe";

/// Back-off between recovery attempts.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// After a disk-full fault, writes resume only with room for two of the largest objects,
/// so a nearly full disk does not flip between ready and failing at every write.
const MIN_FREE_BYTES: u64 = 2 * berth_api::MAX_OBJECT_BYTES as u64;
/// How long a reopen waits for reads still using the failed database.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct RedbStore {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    /// None only while a failed database is being reopened (or could not be).
    db: RwLock<Option<Arc<Database>>>,
    notify: watch::Sender<Revision>,
    /// Transactions waiting for the next group commit.
    queue: Mutex<Vec<Arc<Slot>>>,
    /// A blocking thread is committing queued transactions that have no writer waiting.
    draining: AtomicBool,
    /// Held by the thread committing a group, and by recovery.
    writer: Mutex<()>,
    state: Mutex<FaultState>,
}

#[derive(Default)]
struct FaultState {
    fault: Option<StoreFault>,
    /// The open database returned an I/O error, so it must be reopened before any call
    /// can succeed again.
    poisoned: bool,
    /// A recovery thread is running.
    recovering: bool,
    faults_total: u64,
}

/// Redb's error as ours: an I/O error (or the latch one leaves) is a fault of the store
/// file; the path is filled in by [`Shared::on_error`].
fn backend(error: impl Into<redb::Error>) -> StoreError {
    let error = error.into();
    let (cause, no_space) = match &error {
        redb::Error::Io(io) => (
            io.to_string(),
            matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ),
        ),
        redb::Error::PreviousIo | redb::Error::DatabaseClosed => (
            "an earlier I/O error left the database unusable until it is reopened".to_owned(),
            false,
        ),
        _ => return StoreError::Backend(error.to_string()),
    };
    StoreError::Faulted(StoreFault {
        path: PathBuf::new(),
        cause,
        no_space,
    })
}

/// Opens (creating, or repairing after a crash or failed write) the file and its tables;
/// returns the database and its revision.
fn open_database(path: &Path) -> Result<(Database, Revision)> {
    let db = Database::create(path).map_err(backend)?;
    // A file that has its tables is only read: a reopen on a full disk must not need a
    // write to give reads back.
    let existing = {
        let txn = db.begin_read().map_err(backend)?;
        match txn.open_table(META) {
            Ok(meta) => Some(meta_value(&meta, META_REVISION)?),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(backend(e)),
        }
    };
    if let Some(revision) = existing {
        return Ok((db, revision));
    }
    let txn = db.begin_write().map_err(backend)?;
    {
        // Creating the tables up front lets read transactions assume they exist.
        txn.open_table(KV).map_err(backend)?;
        txn.open_table(LOG).map_err(backend)?;
        txn.open_table(META).map_err(backend)?;
    }
    txn.commit().map_err(backend)?;
    Ok((db, 0))
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<Self> {
        // 0600 in a 0700 directory before redb writes a byte: the store holds every object.
        berth_files::create_private(path)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        let (db, revision) = open_database(path).map_err(|e| with_path(e, path))?;
        let (notify, _) = watch::channel(revision);
        Ok(Self {
            shared: Arc::new(Shared {
                path: path.to_path_buf(),
                db: RwLock::new(Some(Arc::new(db))),
                notify,
                queue: Mutex::new(Vec::new()),
                draining: AtomicBool::new(false),
                writer: Mutex::new(()),
                state: Mutex::new(FaultState::default()),
            }),
        })
    }
}

impl RedbStore {
    /// Makes an empty store start after `revision`, with all history up to it compacted:
    /// a restored cluster's revisions continue above every resourceVersion a client may
    /// hold from before, and any watch from such a version starts over from a list.
    pub fn start_after(&self, revision: Revision) -> Result<()> {
        let _writer = lock(&self.shared.writer);
        self.shared.with_db(|db| {
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut meta = txn.open_table(META).map_err(backend)?;
                if meta_value(&meta, META_REVISION)? != 0 {
                    return Err(StoreError::Backend(
                        "the store is not empty: a snapshot is restored into a new one".to_owned(),
                    ));
                }
                meta.insert(META_REVISION, revision).map_err(backend)?;
                meta.insert(META_COMPACTED, revision).map_err(backend)?;
            }
            txn.commit().map_err(backend)
        })?;
        self.shared.notify.send_replace(revision);
        Ok(())
    }
}

fn with_path(error: StoreError, path: &Path) -> StoreError {
    match error {
        StoreError::Faulted(fault) => StoreError::Faulted(StoreFault {
            path: path.to_path_buf(),
            ..fault
        }),
        other => other,
    }
}

impl Shared {
    /// Runs `f` against the open database; an I/O error faults the store.
    fn with_db<T>(self: &Arc<Self>, f: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        let db = read_lock(&self.db).clone();
        let Some(db) = db else {
            return Err(self.refusal());
        };
        f(&db).map_err(|e| self.on_error(e))
    }

    fn on_error(self: &Arc<Self>, error: StoreError) -> StoreError {
        let error = with_path(error, &self.path);
        if let StoreError::Faulted(fault) = &error {
            self.record_fault(fault.clone());
        }
        error
    }

    /// The first cause is kept (later calls only see redb's latch) until recovery
    /// learns a newer one.
    fn record_fault(self: &Arc<Self>, fault: StoreFault) {
        let mut state = lock(&self.state);
        state.poisoned = true;
        if state.fault.is_none() {
            state.faults_total += 1;
            tracing::error!("{fault}; writes are refused until it recovers");
            state.fault = Some(fault);
        }
        if !state.recovering {
            let weak = Arc::downgrade(self);
            match std::thread::Builder::new()
                .name("store-recovery".to_owned())
                .spawn(move || recover(&weak))
            {
                Ok(_) => state.recovering = true,
                Err(e) => tracing::error!("starting the store's recovery thread: {e}"),
            }
        }
    }

    /// The error a refused call gets while the store is faulted.
    fn refusal(&self) -> StoreError {
        StoreError::Faulted(
            lock(&self.state)
                .fault
                .clone()
                .unwrap_or_else(|| StoreFault {
                    path: self.path.clone(),
                    cause: "the database is being reopened".to_owned(),
                    no_space: false,
                }),
        )
    }

    fn refuse_writes_if_faulted(&self) -> Result<()> {
        match &lock(&self.state).fault {
            Some(fault) => Err(StoreError::Faulted(fault.clone())),
            None => Ok(()),
        }
    }

    /// One recovery attempt: reopen a failed database, then clear the fault if a probe
    /// write commits. Holds the writer lock, so no commit runs against a half-reopened
    /// store.
    fn try_recover(&self) -> Result<()> {
        let _writer = lock(&self.writer);
        if lock(&self.state).poisoned {
            self.reopen()?;
            lock(&self.state).poisoned = false;
        }
        let no_space = lock(&self.state)
            .fault
            .as_ref()
            .is_some_and(|fault| fault.no_space);
        if no_space {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            let free = free_bytes(dir).map_err(|e| {
                StoreError::Backend(format!("checking free space in {}: {e}", dir.display()))
            })?;
            if free < MIN_FREE_BYTES {
                return Err(StoreError::Backend(format!(
                    "{free} bytes free in {}, waiting for {MIN_FREE_BYTES}",
                    dir.display()
                )));
            }
        }
        let probed = read_lock(&self.db).clone().map(|db| probe(&db));
        match probed {
            Some(Ok(revision)) => {
                // A commit that failed at its last flush may still have reached the
                // disk: watchers must see it now rather than never.
                self.notify.send_if_modified(|latest| {
                    std::mem::replace(latest, revision.max(*latest)) < revision
                });
                let mut state = lock(&self.state);
                if let Some(fault) = state.fault.take() {
                    tracing::warn!(
                        "store {} recovered from: {}",
                        self.path.display(),
                        fault.cause
                    );
                }
                state.recovering = false;
                Ok(())
            }
            Some(Err(error)) => {
                let error = with_path(error, &self.path);
                let mut state = lock(&self.state);
                if let StoreError::Faulted(fault) = &error {
                    state.poisoned = true;
                    state.fault = Some(fault.clone());
                }
                Err(error)
            }
            None => Err(self.refusal()),
        }
    }

    /// Closes the failed database once no read still uses it, and opens the file again.
    fn reopen(&self) -> Result<()> {
        let old = write_lock(&self.db).take();
        if let Some(mut old) = old {
            let started = std::time::Instant::now();
            // redb locks the file: the old handle must be gone before it opens again.
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(shared) if started.elapsed() < DRAIN_TIMEOUT => {
                        old = shared;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(shared) => {
                        *write_lock(&self.db) = Some(shared);
                        return Err(StoreError::Backend(
                            "reads still hold the failed database".to_owned(),
                        ));
                    }
                }
            }
        }
        let (db, _) = open_database(&self.path).map_err(|e| {
            let error = with_path(e, &self.path);
            if let StoreError::Faulted(fault) = &error {
                lock(&self.state).fault = Some(fault.clone());
            }
            error
        })?;
        *write_lock(&self.db) = Some(Arc::new(db));
        tracing::info!("store {} reopened", self.path.display());
        Ok(())
    }

    /// Commits every queued transaction as one group and answers each. The caller holds
    /// the writer lock.
    fn commit_queued(self: &Arc<Self>) {
        let group: Vec<Arc<Slot>> = std::mem::take(&mut *lock(&self.queue));
        if group.is_empty() {
            return;
        }
        let transactions: Vec<Vec<Op>> = group
            .iter()
            .map(|s| lock(&s.ops).take().unwrap_or_default())
            .collect();
        let results = match self.commit_group(transactions) {
            Ok(results) => results,
            // The whole group failed: none of it is acknowledged.
            Err(e) => {
                let error = |e: &StoreError| match e {
                    StoreError::Faulted(fault) => StoreError::Faulted(fault.clone()),
                    other => StoreError::Backend(other.to_string()),
                };
                group.iter().map(|_| Err(error(&e))).collect()
            }
        };
        for (member, result) in group.iter().zip(results) {
            member.answer(result);
        }
    }

    /// Commits queued transactions until the queue stays empty (see
    /// [`Store::commit_then`]).
    fn drain(self: &Arc<Self>) {
        /// Lowers the flag however a round ends, a panic included, so the next write
        /// starts another drainer instead of waiting for one that is gone.
        struct Lower<'a>(&'a AtomicBool);
        impl Drop for Lower<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        loop {
            {
                let _lower = Lower(&self.draining);
                let _writer = lock(&self.writer);
                self.commit_queued();
            }
            // A transaction queued after the last group but before the flag went down
            // found a drainer running: take it, unless a new drainer already did.
            if lock(&self.queue).is_empty() || self.draining.swap(true, Ordering::SeqCst) {
                return;
            }
        }
    }

    /// Applies each transaction whose preconditions hold as its own revision, all in one
    /// redb transaction; returns one result per transaction, in order.
    fn commit_group(self: &Arc<Self>, transactions: Vec<Vec<Op>>) -> Result<Vec<Result<Revision>>> {
        // Writes wait for recovery to prove the file writable, even if a small one might
        // fit now: a failing write is refused the same way every time.
        self.refuse_writes_if_faulted()?;
        let (results, first, last) = self.with_db(|db| {
            let txn = db.begin_write().map_err(backend)?;
            let mut results = Vec::with_capacity(transactions.len());
            let (first, last) = {
                let mut meta = txn.open_table(META).map_err(backend)?;
                let mut kv = txn.open_table(KV).map_err(backend)?;
                let mut log = txn.open_table(LOG).map_err(backend)?;
                let first = meta_value(&meta, META_REVISION)?;
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
                return Ok((results, first, last));
            }
            txn.commit().map_err(backend)?;
            Ok((results, first, last))
        })?;
        if last > first {
            self.notify
                .send_modify(|latest| *latest = (*latest).max(last));
        }
        Ok(results)
    }

    fn meta(self: &Arc<Self>, name: &str) -> Result<Revision> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            meta_value(&meta, name)
        })
    }
}

/// One recovery thread per fault: tries again with back-off until the store is healthy,
/// or the store is dropped.
fn recover(shared: &Weak<Shared>) {
    let mut delay = RETRY_FIRST;
    loop {
        std::thread::sleep(delay);
        delay = (delay * 2).min(RETRY_MAX);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match shared.try_recover() {
            Ok(()) => return,
            Err(e) => tracing::debug!("store recovery: {e}"),
        }
    }
}

/// A counter of the meta table; 0 until first written.
fn meta_value(meta: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64> {
    Ok(meta
        .get(name)
        .map_err(backend)?
        .map(|g| g.value())
        .unwrap_or(0))
}

/// A write that allocates a page and commits with fsync; returns the revision.
fn probe(db: &Database) -> Result<Revision> {
    let txn = db.begin_write().map_err(backend)?;
    let revision = {
        let mut meta = txn.open_table(META).map_err(backend)?;
        let probes = meta_value(&meta, META_PROBE)?;
        meta.insert(META_PROBE, probes.wrapping_add(1))
            .map_err(backend)?;
        meta.get(META_REVISION)
            .map_err(backend)?
            .map(|g| g.value())
            .unwrap_or(0)
    };
    txn.commit().map_err(backend)?;
    Ok(revision)
}

/// Bytes this process may still write on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and outlives the call; `stat` is a valid place for
    // statvfs to write a `struct statvfs`.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // Root may write into the blocks a filesystem reserves (ext4's 5 %): counting only
    // the unreserved ones would keep the store refusing writes long after space is freed.
    let blocks = if root { stat.f_bfree } else { stat.f_bavail };
    Ok(blocks.saturating_mul(stat.f_frsize))
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
        super::check(key, precondition, existing.as_ref())?;
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

/// A queued transaction and where its result goes: to `done`, or kept in `result` for
/// the writer waiting on it.
struct Slot {
    ops: Mutex<Option<Vec<Op>>>,
    done: Mutex<Option<CommitDone>>,
    result: Mutex<Option<Result<Revision>>>,
}

impl Slot {
    fn new(ops: Vec<Op>, done: Option<CommitDone>) -> Self {
        Self {
            ops: Mutex::new(Some(ops)),
            done: Mutex::new(done),
            result: Mutex::new(None),
        }
    }

    fn answer(&self, result: Result<Revision>) {
        match lock(&self.done).take() {
            Some(done) => done(result),
            None => *lock(&self.result) = Some(result),
        }
    }
}

/// Locks ignoring poisoning: the guarded data stays consistent because every critical
/// section only moves values in or out.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl Store for RedbStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.shared.with_db(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let kv = txn.open_table(KV).map_err(backend)?;
            let found = kv.get(key).map_err(backend)?;
            found.map(|g| decode_kv(key, g.value())).transpose()
        })
    }

    fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        self.shared.with_db(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let kv = txn.open_table(KV).map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            let revision = meta_value(&meta, META_REVISION)?;
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
        })
    }

    /// Group commit: concurrent callers queue their transactions; whoever holds the
    /// writer lock commits every queued one in a single redb transaction (one fsync),
    /// each still getting its own revision and its own precondition checks.
    fn commit(&self, ops: Vec<Op>) -> Result<Revision> {
        let shared = &self.shared;
        shared.refuse_writes_if_faulted()?;
        let slot = Arc::new(Slot::new(ops, None));
        lock(&shared.queue).push(Arc::clone(&slot));
        let _writer = lock(&shared.writer);
        if let Some(result) = lock(&slot.result).take() {
            // An earlier writer committed this transaction with its group.
            return result;
        }
        shared.commit_queued();
        lock(&slot.result).take().unwrap_or_else(|| {
            Err(StoreError::Backend(
                "transaction lost from its commit group".to_owned(),
            ))
        })
    }

    /// Queues the transaction for the next group commit; one blocking thread at a time
    /// commits the queue, so thousands of writers in flight (the nodes' pod status
    /// reports) hold no thread each while they wait, and a large transaction queued
    /// behind them is in the next group instead of behind them in the runtime's pool.
    fn commit_then(self: Arc<Self>, ops: Vec<Op>, done: CommitDone) {
        let shared = Arc::clone(&self.shared);
        if let Err(e) = shared.refuse_writes_if_faulted() {
            done(Err(e));
            return;
        }
        lock(&shared.queue).push(Arc::new(Slot::new(ops, Some(done))));
        if !shared.draining.swap(true, Ordering::SeqCst) {
            tokio::task::spawn_blocking(move || shared.drain());
        }
    }

    fn events_after(&self, after: Revision, limit: usize) -> Result<Vec<Event>> {
        self.shared.with_db(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            let compacted = meta_value(&meta, META_COMPACTED)?;
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
        })
    }

    fn compact(&self, revision: Revision) -> Result<()> {
        let shared = &self.shared;
        shared.refuse_writes_if_faulted()?;
        // Serialized with group commits and recovery, which may swap the database.
        let _writer = lock(&shared.writer);
        shared.with_db(|db| {
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut meta = txn.open_table(META).map_err(backend)?;
                let current = meta_value(&meta, META_REVISION)?;
                let compacted = meta_value(&meta, META_COMPACTED)?;
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
        })
    }

    fn revision(&self) -> Result<Revision> {
        self.shared.meta(META_REVISION)
    }

    fn compacted_revision(&self) -> Result<Revision> {
        self.shared.meta(META_COMPACTED)
    }

    fn subscribe(&self) -> watch::Receiver<Revision> {
        self.shared.notify.subscribe()
    }

    fn size_bytes(&self) -> Result<u64> {
        let path = &self.shared.path;
        std::fs::metadata(path)
            .map(|m| m.len())
            .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))
    }

    fn health(&self) -> Health {
        let state = lock(&self.shared.state);
        Health {
            fault: state.fault.clone(),
            faults_total: state.faults_total,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use berth_testkit::smallfs::SmallFs;

    use super::*;
    use crate::store::Precondition;

    fn put(key: &str, value: Vec<u8>) -> Vec<Op> {
        vec![Op::Put {
            key: key.to_owned(),
            value,
            precondition: Precondition::Always,
        }]
    }

    /// Polls `done` for up to a minute: recovery retries with back-off, and this machine
    /// is slow and shared; the bound only stops a broken recovery from hanging the test.
    fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(60), "never: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn a_full_disk_refuses_writes_keeps_reads_and_recovers_without_losing_any() {
        let fs = SmallFs::mount("store-unit", 8 << 20);
        let path = fs.path().join("state.redb");
        let store = RedbStore::open(&path).expect("open");
        let mut wake = store.subscribe();
        let mut acknowledged = Vec::new();
        for i in 0..5 {
            let key = format!("/small/{i}");
            let revision = store.commit(put(&key, vec![1; 100])).expect("commit");
            acknowledged.push((key, revision, vec![1; 100]));
        }
        fs.fill("filler");
        // Big values until one does not fit in what the file has free inside.
        let mut failed = None;
        for i in 0..64 {
            let key = format!("/big/{i}");
            let value = vec![2; 256 * 1024];
            match store.commit(put(&key, value.clone())) {
                Ok(revision) => acknowledged.push((key, revision, value)),
                Err(e) => {
                    failed = Some((key, e));
                    break;
                }
            }
        }
        let (failed_key, error) = failed.expect("a write fails on a full disk");
        let StoreError::Faulted(fault) = &error else {
            panic!("not a fault: {error:?}");
        };
        assert!(fault.no_space, "{fault}");
        assert_eq!(fault.path, path);
        assert!(error.to_string().contains("state.redb"), "{error}");
        let health = store.health();
        assert_eq!(health.faults_total, 1);
        assert_eq!(health.fault.as_ref(), Some(fault));
        // Refused, even a write that might fit.
        assert!(matches!(
            store.commit(put("/tiny", vec![3])),
            Err(StoreError::Faulted(_))
        ));
        // Recovery reopens the file while the disk is still full: reads work again.
        eventually("reads work on the full disk", || {
            store.get(&acknowledged[0].0).is_ok()
        });
        assert!(store.health().fault.is_some(), "still refusing writes");
        for (key, revision, value) in &acknowledged {
            let kv = store
                .get(key)
                .expect("get")
                .expect("acknowledged write present");
            assert_eq!((kv.mod_revision, &kv.value), (*revision, value));
        }

        std::fs::remove_file(fs.path().join("filler")).expect("free the space");
        eventually("the store takes writes again", || {
            store.health().fault.is_none()
        });
        wake.borrow_and_update();
        let after = store
            .commit(put("/after", vec![4; 10]))
            .expect("commit after recovery");
        assert!(after > acknowledged.last().map_or(0, |a| a.1));
        assert!(wake.has_changed().expect("notify survives the reopen"));
        assert_eq!(*wake.borrow(), after);
        assert!(
            store.get(&failed_key).expect("get").is_none(),
            "the refused write was not applied"
        );
        assert_eq!(store.health().faults_total, 1);
        drop(store);

        let store = RedbStore::open(&path).expect("open again");
        for (key, revision, value) in &acknowledged {
            let kv = store.get(key).expect("get").expect("present after restart");
            assert_eq!((kv.mod_revision, &kv.value), (*revision, value));
        }
        assert_eq!(store.revision().expect("revision"), after);
    }

    #[test]
    fn concurrent_writers_hitting_a_full_disk_get_an_answer_that_holds() {
        let fs = SmallFs::mount("store-group", 8 << 20);
        let path = fs.path().join("state.redb");
        let store = Arc::new(RedbStore::open(&path).expect("open"));
        fs.fill("filler");
        // Group commits: several writers until each is refused.
        let writers: Vec<_> = (0..4)
            .map(|writer| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let (mut acknowledged, mut refused) = (Vec::new(), Vec::new());
                    for i in 0..200 {
                        let key = format!("/w{writer}/{i}");
                        match store.commit(put(&key, vec![5; 64 * 1024])) {
                            Ok(revision) => acknowledged.push((key, revision)),
                            Err(StoreError::Faulted(_)) => {
                                refused.push(key);
                                if refused.len() == 3 {
                                    break;
                                }
                            }
                            Err(e) => panic!("{key}: {e}"),
                        }
                    }
                    (acknowledged, refused)
                })
            })
            .collect();
        let (mut acknowledged, mut refused) = (Vec::new(), Vec::new());
        for writer in writers {
            let (a, r) = writer.join().expect("writer");
            acknowledged.extend(a);
            refused.extend(r);
        }
        assert_eq!(refused.len(), 12, "every writer was refused in the end");
        std::fs::remove_file(fs.path().join("filler")).expect("free the space");
        eventually("recovery", || store.health().fault.is_none());
        drop(store);
        let store = RedbStore::open(&path).expect("open again");
        for (key, revision) in &acknowledged {
            let kv = store
                .get(key)
                .expect("get")
                .expect("acknowledged write present");
            assert_eq!(kv.mod_revision, *revision);
        }
        for key in &refused {
            assert!(store.get(key).expect("get").is_none(), "{key} was refused");
        }
    }

    /// Queued writers (no thread each) and blocking writers share the group commits;
    /// each transaction gets a revision of its own, and a failed precondition fails only
    /// its own transaction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_and_blocking_writers_each_get_their_own_revision() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(RedbStore::open(&dir.path().join("state.redb")).expect("open"));
        let queued = (0..300).map(|i| {
            let (sender, answer) = tokio::sync::oneshot::channel();
            Arc::clone(&store).commit_then(
                put(&format!("/queued/{i}"), vec![1; 100]),
                Box::new(move |result| {
                    let _ = sender.send(result);
                }),
            );
            answer
        });
        let queued: Vec<_> = queued.collect();
        let blocking: Vec<_> = (0..4)
            .map(|writer| {
                let store = Arc::clone(&store);
                tokio::task::spawn_blocking(move || {
                    (0..20)
                        .map(|i| {
                            store.commit(put(&format!("/blocking/{writer}/{i}"), vec![2; 100]))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let (refused_sender, refused) = tokio::sync::oneshot::channel();
        Arc::clone(&store).commit_then(
            vec![Op::Put {
                key: "/queued/0".to_owned(),
                value: vec![3],
                precondition: Precondition::Absent,
            }],
            Box::new(move |result| {
                let _ = refused_sender.send(result);
            }),
        );
        let mut revisions = std::collections::BTreeSet::new();
        for answer in queued {
            let revision = answer.await.expect("answered").expect("committed");
            assert!(
                revisions.insert(revision),
                "revision {revision} given twice"
            );
        }
        for writer in blocking {
            for result in writer.await.expect("writer") {
                let revision = result.expect("committed");
                assert!(
                    revisions.insert(revision),
                    "revision {revision} given twice"
                );
            }
        }
        let refusal = refused.await.expect("answered");
        assert!(
            matches!(refusal, Err(StoreError::AlreadyExists { .. })),
            "{refusal:?}"
        );
        assert_eq!(revisions.len(), 380);
        assert_eq!(store.revision().expect("revision"), 380);
        assert_eq!(store.list("/queued/").expect("list").0.len(), 300);
        assert_eq!(store.list("/blocking/").expect("list").0.len(), 80);
    }
}
