//! The store suite, run against both backends: the embedded redb file and a real etcd
//! (started by the test from Debian's etcd-server package, one per test so revisions are
//! the test's own). Revisions are counted from where each store started, since a fresh
//! etcd starts at revision 1 and its history before a client connected is not served.

use std::{sync::Arc, thread};

use berth_control::store::{
    EtcdConfig, EtcdStore, EventKind, Op, Precondition, RedbStore, Revision, Store, StoreError,
};
use berth_testkit::etcd::EtcdCluster;

fn put(key: &str, value: &str, precondition: Precondition) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        precondition,
    }
}

/// What a store runs on; `open` may be called again to get a second instance (a restart
/// of the embedded store, another control plane on the same etcd).
enum Backend {
    Redb(tempfile::TempDir),
    Etcd(EtcdCluster),
}

impl Backend {
    fn redb() -> Self {
        Self::Redb(tempfile::tempdir().expect("tempdir"))
    }

    fn etcd() -> Self {
        Self::Etcd(EtcdCluster::start(1))
    }

    fn open(&self) -> Arc<dyn Store> {
        match self {
            Self::Redb(dir) => {
                Arc::new(RedbStore::open(&dir.path().join("state.redb")).expect("open store"))
            }
            Self::Etcd(cluster) => Arc::new(
                EtcdStore::connect(EtcdConfig {
                    endpoints: cluster.endpoints(),
                    prefix: "/berth".to_owned(),
                    ca_file: None,
                    client_cert: None,
                    max_txn_ops: 128,
                })
                .expect("connect to etcd"),
            ),
        }
    }
}

/// Each scenario once per backend.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod redb {
            $(#[test]
            fn $scenario() {
                super::$scenario(&super::Backend::redb());
            })*
        }
        mod etcd {
            $(#[test]
            fn $scenario() {
                super::$scenario(&super::Backend::etcd());
            })*
        }
    };
}

on_both_backends!(
    revisions_are_stamped_and_monotonic,
    stale_revision_conflicts_and_create_twice_fails,
    a_transaction_applies_whole_or_not_at_all,
    event_log_is_ordered_and_complete_under_concurrent_writers,
    deletes_carry_the_last_value,
    compaction_drops_old_history_only,
    state_and_revision_survive_reopen,
    subscribers_are_woken_by_commits,
    concurrent_transactions_stay_separate,
);

fn revisions_are_stamped_and_monotonic(backend: &Backend) {
    let store = backend.open();
    let base = store.revision().expect("revision");
    let r1 = store
        .commit(vec![put("/a", "1", Precondition::Absent)])
        .expect("create a");
    let r2 = store
        .commit(vec![put("/b", "1", Precondition::Absent)])
        .expect("create b");
    let r3 = store
        .commit(vec![put("/a", "2", Precondition::ModRevision(r1))])
        .expect("update a");
    assert!(r1 < r2 && r2 < r3);
    let a = store.get("/a").expect("get").expect("present");
    assert_eq!(
        (a.create_revision, a.mod_revision, a.value.as_slice()),
        (r1, r3, b"2".as_slice())
    );
    let (items, at) = store.list("/").expect("list");
    assert!(base < r1, "revisions start after the store's");
    assert_eq!(at, r3);
    assert_eq!(
        items.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
        ["/a", "/b"]
    );
}

fn stale_revision_conflicts_and_create_twice_fails(backend: &Backend) {
    let store = backend.open();
    let r1 = store
        .commit(vec![put("/a", "1", Precondition::Absent)])
        .expect("create");
    store
        .commit(vec![put("/a", "2", Precondition::ModRevision(r1))])
        .expect("first update");
    let stale = store.commit(vec![put("/a", "3", Precondition::ModRevision(r1))]);
    assert!(
        matches!(stale, Err(StoreError::Conflict { expected, .. }) if expected == r1),
        "{stale:?}"
    );
    let twice = store.commit(vec![put("/a", "x", Precondition::Absent)]);
    assert!(
        matches!(twice, Err(StoreError::AlreadyExists { .. })),
        "{twice:?}"
    );
    let missing = store.commit(vec![Op::Delete {
        key: "/nope".to_owned(),
        precondition: Precondition::Present,
    }]);
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{missing:?}"
    );
    assert_eq!(store.get("/a").expect("get").expect("present").value, b"2");
}

fn a_transaction_applies_whole_or_not_at_all(backend: &Backend) {
    let store = backend.open();
    let before = store
        .commit(vec![put("/taken", "1", Precondition::Absent)])
        .expect("seed");
    let result = store.commit(vec![
        put("/new", "1", Precondition::Absent),
        put("/taken", "2", Precondition::Absent),
    ]);
    assert!(result.is_err());
    assert!(
        store.get("/new").expect("get").is_none(),
        "first op must be rolled back"
    );
    assert_eq!(
        store.revision().expect("revision"),
        before,
        "a failed transaction takes no revision"
    );
    let both = store
        .commit(vec![
            put("/x", "1", Precondition::Absent),
            put("/y", "1", Precondition::Absent),
        ])
        .expect("batch");
    let events = store.events_after(before, 100).expect("events");
    assert_eq!(events.len(), 2);
    assert!(
        events.iter().all(|e| e.revision() == both),
        "one revision for the whole batch"
    );
}

fn event_log_is_ordered_and_complete_under_concurrent_writers(backend: &Backend) {
    let store = backend.open();
    let base = store.revision().expect("revision");
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                for i in 0..10 {
                    store
                        .commit(vec![put(&format!("/w{w}/{i}"), "v", Precondition::Absent)])
                        .expect("commit");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer thread");
    }
    let events = store.events_after(base, usize::MAX).expect("events");
    let revisions: Vec<u64> = events.iter().map(|e| e.revision()).collect();
    assert_eq!(
        revisions,
        (base + 1..=base + 40).collect::<Vec<u64>>(),
        "no gaps, no reordering"
    );
    assert!(
        events
            .iter()
            .all(|e| e.kind == EventKind::Put && e.is_create())
    );
    // A limit never splits a revision and resumes where it stopped.
    let first = store.events_after(base, 15).expect("page 1");
    let rest = store
        .events_after(first.last().map_or(base, |e| e.revision()), usize::MAX)
        .expect("page 2");
    assert_eq!(first.len() + rest.len(), 40);
}

fn deletes_carry_the_last_value(backend: &Backend) {
    let store = backend.open();
    let created = store
        .commit(vec![put("/a", "last", Precondition::Absent)])
        .expect("create");
    let deleted = store
        .commit(vec![Op::Delete {
            key: "/a".to_owned(),
            precondition: Precondition::ModRevision(created),
        }])
        .expect("delete");
    let events = store.events_after(created, 10).expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Delete);
    assert_eq!(events[0].revision(), deleted);
    assert_eq!(events[0].kv.value, b"last");
    assert!(store.get("/a").expect("get").is_none());
}

fn compaction_drops_old_history_only(backend: &Backend) {
    let store = backend.open();
    let base = store.revision().expect("revision");
    for i in 0..10 {
        store
            .commit(vec![put(&format!("/k{i}"), "v", Precondition::Always)])
            .expect("commit");
    }
    store.compact(base + 6).expect("compact");
    assert_eq!(store.compacted_revision().expect("compacted"), base + 6);
    match store.events_after(base + 5, 100) {
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) if (requested, compacted) == (base + 5, base + 6) => {}
        other => panic!("{other:?}"),
    }
    let events = store
        .events_after(base + 6, 100)
        .expect("after the compacted revision");
    assert_eq!(
        events.iter().map(|e| e.revision()).collect::<Vec<_>>(),
        (base + 7..=base + 10).collect::<Vec<_>>()
    );
    // Current state is untouched by compaction.
    assert_eq!(store.list("/").expect("list").0.len(), 10);
    // Compacting backwards is a no-op.
    store.compact(base + 3).expect("no-op");
    assert_eq!(store.compacted_revision().expect("compacted"), base + 6);
}

/// A restart of the embedded store; another instance on the same etcd.
fn state_and_revision_survive_reopen(backend: &Backend) {
    let (base, last) = {
        let store = backend.open();
        let base = store.revision().expect("revision");
        store
            .commit(vec![put("/a", "1", Precondition::Absent)])
            .expect("a");
        let last = store
            .commit(vec![put("/b", "1", Precondition::Absent)])
            .expect("b");
        (base, last)
    };
    let store = backend.open();
    assert_eq!(store.revision().expect("revision"), last);
    assert_eq!(store.list("/").expect("list").0.len(), 2);
    let next = store
        .commit(vec![put("/c", "1", Precondition::Absent)])
        .expect("c");
    assert_eq!(next, last + 1, "the revision continues across restarts");
    let history = store.events_after(last, 100).expect("log");
    assert_eq!(history.len(), 1);
    // History from before this instance: the embedded file keeps it; an etcd instance
    // only serves what its own watch saw, so its clients list again.
    match backend {
        Backend::Redb(_) => {
            assert_eq!(store.events_after(base, 100).expect("log").len(), 3);
        }
        Backend::Etcd(_) => assert!(matches!(
            store.events_after(base, 100),
            Err(StoreError::Compacted { .. })
        )),
    }
}

fn subscribers_are_woken_by_commits(backend: &Backend) {
    let store = backend.open();
    let mut rx = store.subscribe();
    rx.mark_unchanged();
    let revision = store
        .commit(vec![put("/a", "1", Precondition::Absent)])
        .expect("commit");
    assert!(rx.has_changed().expect("sender alive"));
    assert_eq!(*rx.borrow_and_update(), revision);
}

fn concurrent_transactions_stay_separate(backend: &Backend) {
    let store = backend.open();
    let base = store.revision().expect("revision");
    // Many writers racing: some on their own keys, some fighting over one key.
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let key = if w % 2 == 0 {
                    "/contended".to_owned()
                } else {
                    format!("/own/{w}")
                };
                store.commit(vec![put(&key, &w.to_string(), Precondition::Absent)])
            })
        })
        .collect();
    let results: Vec<_> = writers
        .into_iter()
        .map(|w| w.join().expect("writer thread"))
        .collect();
    let won: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    let lost = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::AlreadyExists { .. })))
        .count();
    assert_eq!(
        (won.len(), lost),
        (9, 7),
        "8 own keys and one winner of the contended key"
    );
    let mut sorted = won.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (base + 1..=base + 9).collect::<Vec<Revision>>(),
        "failed transactions take no revision"
    );
    let events = store.events_after(base, usize::MAX).expect("events");
    assert_eq!(events.len(), 9);
    assert!(events.windows(2).all(|w| w[0].revision() < w[1].revision()));
}

/// Two control planes on one etcd: a write through either is in both one's history, at
/// the same revision.
#[test]
fn etcd_instances_share_state_and_history() {
    let backend = Backend::etcd();
    let first = backend.open();
    let second = backend.open();
    let base = first.revision().expect("revision");
    let written = first
        .commit(vec![put("/shared", "1", Precondition::Absent)])
        .expect("write through the first");
    let found = second.get("/shared").expect("get").expect("present");
    assert_eq!(found.mod_revision, written);
    let seen = eventually(|| {
        second
            .events_after(base, 10)
            .expect("history")
            .iter()
            .any(|e| e.kv.key == "/shared" && e.revision() == written)
    });
    assert!(
        seen,
        "the second instance's history has the first one's write"
    );
    let stale = second.commit(vec![put("/shared", "2", Precondition::ModRevision(base))]);
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
}

/// etcd down: the store says so (writes fail with the fault, health reports it); etcd
/// back with its data: the same store object works again and its history resumes.
#[test]
fn etcd_outage_faults_the_store_until_etcd_is_back() {
    let mut backend = Backend::etcd();
    let store = backend.open();
    let before = store
        .commit(vec![put("/before", "1", Precondition::Absent)])
        .expect("write");
    let Backend::Etcd(cluster) = &mut backend else {
        unreachable!("an etcd backend")
    };
    cluster.members[0].kill();
    let refused = store.commit(vec![put("/during", "1", Precondition::Absent)]);
    assert!(
        matches!(refused, Err(StoreError::Faulted(_))),
        "{refused:?}"
    );
    assert!(store.health().fault.is_some());
    assert_eq!(store.health().faults_total, 1);
    cluster.members[0].start();
    cluster.members[0].wait_until_serving();
    assert!(
        eventually(|| store
            .commit(vec![put("/after", "1", Precondition::Absent)])
            .is_ok()),
        "writes resume once etcd is back"
    );
    assert!(store.health().fault.is_none());
    let history = store.events_after(before, 10).expect("history resumes");
    assert!(history.iter().any(|e| e.kv.key == "/after"), "{history:?}");
}

/// Polls `done` for up to a minute (a bound against a hang on this slow, shared
/// machine, not a timing requirement).
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(60) {
        if done() {
            return true;
        }
        thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// Leader election on etcd: one leader at a time, the next one elected when the first
/// resigns; the deposed leader's fenced writes are refused, even though its handle still
/// works and its preconditions hold.
#[test]
fn etcd_leadership_fences_a_deposed_leaders_writes() {
    let backend = Backend::etcd();
    let Backend::Etcd(cluster) = &backend else {
        unreachable!("an etcd backend")
    };
    let store = EtcdStore::connect(EtcdConfig {
        endpoints: cluster.endpoints(),
        prefix: "/berth".to_owned(),
        ca_file: None,
        client_cert: None,
        max_txn_ops: 128,
    })
    .expect("connect");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let lease = std::time::Duration::from_secs(1);
    let first = store.elector("controllers", "first".to_owned(), lease);
    let second = store.elector("controllers", "second".to_owned(), lease);
    let term = runtime.block_on(first.acquire()).expect("first is elected");
    let fenced = store.fenced(&term);
    fenced
        .commit(vec![put("/by-leader", "1", Precondition::Absent)])
        .expect("the leader writes");
    // The second campaigns while the first leads: it waits.
    let campaign = runtime.spawn(async move { second.acquire().await });
    thread::sleep(std::time::Duration::from_millis(500));
    assert!(!campaign.is_finished(), "two leaders at once");
    runtime.block_on(first.resign(&term));
    let next = runtime
        .block_on(campaign)
        .expect("join")
        .expect("the second is elected once the first resigned");
    let refused = fenced.commit(vec![put("/by-old-leader", "1", Precondition::Absent)]);
    assert!(
        matches!(refused, Err(StoreError::Fenced { .. })),
        "{refused:?}"
    );
    assert!(store.get("/by-old-leader").expect("get").is_none());
    store
        .fenced(&next)
        .commit(vec![put("/by-new-leader", "1", Precondition::Absent)])
        .expect("the new leader writes");
}
