//! The redb store against a real file.

use std::{sync::Arc, thread};

use berth_control::store::{EventKind, Op, Precondition, RedbStore, Store, StoreError};

fn put(key: &str, value: &str, precondition: Precondition) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        precondition,
    }
}

fn open(dir: &tempfile::TempDir) -> RedbStore {
    RedbStore::open(&dir.path().join("state.redb")).expect("open store")
}

#[test]
fn revisions_are_stamped_and_monotonic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    assert_eq!(store.revision().expect("revision"), 0);
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
    assert_eq!(at, r3);
    assert_eq!(
        items.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
        ["/a", "/b"]
    );
}

#[test]
fn stale_revision_conflicts_and_create_twice_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
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

#[test]
fn a_transaction_applies_whole_or_not_at_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
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

#[test]
fn event_log_is_ordered_and_complete_under_concurrent_writers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(&dir));
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
    let events = store.events_after(0, usize::MAX).expect("events");
    let revisions: Vec<u64> = events.iter().map(|e| e.revision()).collect();
    assert_eq!(
        revisions,
        (1..=40).collect::<Vec<u64>>(),
        "no gaps, no reordering"
    );
    assert!(
        events
            .iter()
            .all(|e| e.kind == EventKind::Put && e.is_create())
    );
    // A limit never splits a revision and resumes where it stopped.
    let first = store.events_after(0, 15).expect("page 1");
    let rest = store
        .events_after(first.last().map_or(0, |e| e.revision()), usize::MAX)
        .expect("page 2");
    assert_eq!(first.len() + rest.len(), 40);
}

#[test]
fn deletes_carry_the_last_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
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

#[test]
fn compaction_drops_old_history_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    for i in 0..10 {
        store
            .commit(vec![put(&format!("/k{i}"), "v", Precondition::Always)])
            .expect("commit");
    }
    store.compact(6).expect("compact");
    assert_eq!(store.compacted_revision().expect("compacted"), 6);
    match store.events_after(5, 100) {
        Err(StoreError::Compacted {
            requested: 5,
            compacted: 6,
        }) => {}
        other => panic!("{other:?}"),
    }
    let events = store
        .events_after(6, 100)
        .expect("after the compacted revision");
    assert_eq!(
        events.iter().map(|e| e.revision()).collect::<Vec<_>>(),
        [7, 8, 9, 10]
    );
    // Current state is untouched by compaction.
    assert_eq!(store.list("/").expect("list").0.len(), 10);
    // Compacting backwards is a no-op.
    store.compact(3).expect("no-op");
    assert_eq!(store.compacted_revision().expect("compacted"), 6);
}

#[test]
fn state_and_revision_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let last = {
        let store = open(&dir);
        store
            .commit(vec![put("/a", "1", Precondition::Absent)])
            .expect("a");
        store
            .commit(vec![put("/b", "1", Precondition::Absent)])
            .expect("b")
    };
    let store = open(&dir);
    assert_eq!(store.revision().expect("revision"), last);
    let next = store
        .commit(vec![put("/c", "1", Precondition::Absent)])
        .expect("c");
    assert_eq!(next, last + 1, "the revision continues across restarts");
    assert_eq!(store.events_after(0, 100).expect("log").len(), 3);
}

#[tokio::test]
async fn subscribers_are_woken_by_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(&dir));
    let mut rx = store.subscribe();
    let writer = Arc::clone(&store);
    let revision = tokio::task::spawn_blocking(move || {
        writer.commit(vec![put("/a", "1", Precondition::Absent)])
    })
    .await
    .expect("join")
    .expect("commit");
    rx.changed().await.expect("sender alive");
    assert_eq!(*rx.borrow(), revision);
}

#[test]
fn group_commit_keeps_each_transaction_separate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(&dir));
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
        (1..=9).collect::<Vec<u64>>(),
        "failed transactions take no revision"
    );
    let events = store.events_after(0, usize::MAX).expect("events");
    assert_eq!(events.len(), 9);
    assert!(events.windows(2).all(|w| w[0].revision() < w[1].revision()));
}
