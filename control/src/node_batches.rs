//! The Nodes as agents read them, sent to every agent's Services watch as shared batches
//! (`node_batches` in the agent API). Every agent needs every Node — its pod range and
//! addresses, for routes and for placing endpoints — so when thousands of nodes join,
//! each new Node went to every agent as a message of its own on that agent's stream,
//! and each joining agent listed every Node one message at a time: the square of the
//! node count in messages, each encrypted, framed and decoded. Here one task follows
//! the Nodes, keeps what agents read of each ([`NodeRecord`]), and every
//! [`NODE_HOLD`] sends the records that changed as one batch, encoded once, that every
//! agent's stream sends as it is; a watch that starts (or missed batches) gets every
//! record in one message, encoded once per change of the Nodes however many agents
//! start meanwhile. Changes agents do not read (conditions, heartbeats, labels) send
//! nothing.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
    time::Duration,
};

use berth_api::{
    agent::{NodeAddress, NodeBatch, NodeRecord},
    kinds::NODES,
};
use prost::Message as _;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::{
    objects::{decode_stored, prefix},
    registry::{self, Registry},
    store::Revision,
    watch_cache::{CachedEvent, Filter, Subscription},
};

/// How long Node changes are gathered into one batch: a new Node reaches the agents this
/// much later, its creation and first status go as one record, and each agent gets one
/// message per interval however many nodes join in it.
pub const NODE_HOLD: Duration = Duration::from_millis(250);

/// Batches kept for streams that are behind: one further behind gets a complete batch.
const KEPT: usize = 256;

/// Node changes, encoded as the `node_batch` of a NODES event.
#[derive(Debug)]
pub struct Batch {
    /// The batch holds every change of what agents read of the Nodes after `from` up to
    /// `to` (for a complete batch, from the start).
    pub from: Revision,
    pub to: Revision,
    pub encoded: Vec<u8>,
}

/// The Nodes as agents read them, and the batches of their changes.
pub struct NodeBatches {
    state: Mutex<State>,
    batches: broadcast::Sender<Arc<Batch>>,
}

struct State {
    records: BTreeMap<String, NodeRecord>,
    /// Every Node change up to this revision is in `records`.
    revision: Revision,
    /// The `to` of the last batch sent: the next one's `from`.
    sent: Revision,
    /// Every record, encoded (for `revision`), until they change.
    complete: Option<Arc<Batch>>,
}

/// One watch's side: the batches it has not sent yet.
pub struct Follower {
    feed: Arc<NodeBatches>,
    rx: broadcast::Receiver<Arc<Batch>>,
    /// What the watch has sent covers the changes up to here.
    at: Revision,
}

impl Follower {
    /// The next batch for this watch: the changes after what it sent, or all the Nodes
    /// when it missed some. None once the control plane is stopping.
    pub async fn next(&mut self) -> Option<Arc<Batch>> {
        loop {
            match self.rx.recv().await {
                Ok(batch) if batch.to <= self.at => {}
                Ok(batch) if batch.from <= self.at => {
                    self.at = batch.to;
                    return Some(batch);
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    // From the newest on: what is queued is older than what it sends now.
                    self.rx = self.rx.resubscribe();
                    let complete = self.feed.complete();
                    self.at = complete.to;
                    return Some(complete);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl NodeBatches {
    /// Lists the Nodes and follows their changes for as long as the returned value lives.
    pub async fn start(registry: &Registry) -> registry::Result<Arc<Self>> {
        let (records, revision, subscription) = list_and_follow(registry).await?;
        let feed = Arc::new(Self {
            state: Mutex::new(State {
                records,
                revision,
                sent: revision,
                complete: None,
            }),
            batches: broadcast::channel(KEPT).0,
        });
        tokio::spawn(run(Arc::downgrade(&feed), registry.clone(), subscription));
        Ok(feed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A watch's batches: the first, if any, is what it sends before the others — every
    /// Node when it has none (`resume` None) or when its `resume` point is older than
    /// the batches reach back.
    pub fn follow(self: &Arc<Self>, resume: Option<Revision>) -> (Option<Arc<Batch>>, Follower) {
        let state = self.lock();
        // Taken under the lock that sending takes: no batch falls between the two.
        let rx = self.batches.subscribe();
        let (first, at) = match resume {
            Some(at) if state.sent <= at && at <= state.revision => (None, at),
            _ => {
                drop(state);
                let complete = self.complete();
                let at = complete.to;
                (Some(complete), at)
            }
        };
        let follower = Follower {
            feed: Arc::clone(self),
            rx,
            at,
        };
        (first, follower)
    }

    /// Every record, encoded once for every watch that needs them until they change.
    fn complete(&self) -> Arc<Batch> {
        let mut state = self.lock();
        if let Some(complete) = &state.complete {
            return Arc::clone(complete);
        }
        let batch = NodeBatch {
            complete: true,
            nodes: state.records.values().cloned().collect(),
        };
        let complete = Arc::new(Batch {
            from: 0,
            to: state.revision,
            encoded: batch.encode_to_vec(),
        });
        state.complete = Some(Arc::clone(&complete));
        complete
    }

    /// Takes in `changes` (in revision order; `None`: the Node is gone), up to `through`,
    /// and sends those agents see as one batch.
    fn take(&self, changes: Vec<(String, Option<NodeRecord>)>, through: Revision) {
        let mut state = self.lock();
        let mut changed = Vec::new();
        for (name, record) in changes {
            let differs = match &record {
                Some(record) => state.records.get(&name) != Some(record),
                None => state.records.contains_key(&name),
            };
            if !differs {
                continue;
            }
            match record {
                Some(record) => state.records.insert(name.clone(), record),
                None => state.records.remove(&name),
            };
            changed.push(name);
        }
        state.revision = state.revision.max(through);
        if changed.is_empty() {
            return;
        }
        // Each Node once, where it last changed.
        let mut seen = HashSet::new();
        let mut nodes: Vec<NodeRecord> = changed
            .into_iter()
            .rev()
            .filter(|name| seen.insert(name.clone()))
            .map(|name| {
                state.records.get(&name).cloned().unwrap_or(NodeRecord {
                    name,
                    deleted: true,
                    ..NodeRecord::default()
                })
            })
            .collect();
        nodes.reverse();
        let batch = Arc::new(Batch {
            from: state.sent,
            to: state.revision,
            encoded: NodeBatch {
                complete: false,
                nodes,
            }
            .encode_to_vec(),
        });
        state.sent = state.revision;
        state.complete = None;
        // None following is fine: a watch that starts later gets the complete batch.
        let _ = self.batches.send(batch);
    }

    /// After the Nodes were listed anew (the fan-out ended the task's subscription):
    /// every difference from the records kept, as one batch.
    fn replace(&self, records: BTreeMap<String, NodeRecord>, revision: Revision) {
        let gone: Vec<(String, Option<NodeRecord>)> = self
            .lock()
            .records
            .keys()
            .filter(|name| !records.contains_key(*name))
            .map(|name| (name.clone(), None))
            .collect();
        let changes = gone
            .into_iter()
            .chain(records.into_iter().map(|(name, r)| (name, Some(r))))
            .collect();
        self.take(changes, revision);
    }
}

/// What agents read of a Node.
pub fn record_of(node: &Value) -> NodeRecord {
    fn text(value: Option<&Value>) -> String {
        value.and_then(Value::as_str).unwrap_or_default().to_owned()
    }
    let addresses = node
        .get("status")
        .and_then(|status| status.get("addresses"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    NodeRecord {
        name: text(node.get("metadata").and_then(|m| m.get("name"))),
        pod_cidr: text(node.get("spec").and_then(|s| s.get("podCIDR"))),
        addresses: addresses
            .iter()
            .map(|address| NodeAddress {
                r#type: text(address.get("type")),
                address: text(address.get("address")),
            })
            .collect(),
        deleted: false,
    }
}

/// The Nodes' records now, and a subscription to their changes after.
async fn list_and_follow(
    registry: &Registry,
) -> registry::Result<(BTreeMap<String, NodeRecord>, Revision, Subscription)> {
    let prefix = prefix(&NODES, None);
    loop {
        let store = Arc::clone(registry.store());
        let listing = prefix.clone();
        let (kvs, revision) = tokio::task::spawn_blocking(move || store.list(&listing))
            .await
            .map_err(|e| registry::Error::internal(e.to_string()))??;
        let mut records = BTreeMap::new();
        for kv in &kvs {
            let record = record_of(&decode_stored(kv)?);
            records.insert(record.name.clone(), record);
        }
        let filter = Arc::new(Filter {
            kinds: vec![(prefix.clone(), &NODES, revision)],
            labels: Default::default(),
            fields: Default::default(),
            skip_heartbeats: true,
        });
        // None: the window moved past the listing meanwhile; list again.
        if let Some(subscription) = registry.watch_cache().subscribe(filter, revision)? {
            return Ok((records, revision, subscription));
        }
    }
}

/// Gathers Node changes for [`NODE_HOLD`] from the first, then hands them to the feed;
/// lists again when the fan-out ends the subscription. Ends with the feed or the cache.
async fn run(feed: Weak<NodeBatches>, registry: Registry, mut subscription: Subscription) {
    loop {
        let first = subscription.next().await;
        let mut gathered: Vec<Arc<CachedEvent>> = Vec::new();
        let mut ended = match first {
            Ok(Some(event)) => {
                gathered.push(event);
                false
            }
            Ok(None) => return,
            Err(_) => true,
        };
        if !ended {
            let until = tokio::time::Instant::now() + NODE_HOLD;
            loop {
                tokio::select! {
                    next = subscription.next() => match next {
                        Ok(Some(event)) => gathered.push(event),
                        Ok(None) => return,
                        Err(_) => {
                            ended = true;
                            break;
                        }
                    },
                    () = tokio::time::sleep_until(until) => break,
                }
            }
        }
        let Some(feed) = feed.upgrade() else {
            return;
        };
        let through = gathered.last().map_or(0, |event| event.revision);
        let changes = gathered
            .iter()
            .map(|event| {
                let record = record_of(&event.object);
                let name = record.name.clone();
                (name, (event.type_ != "DELETED").then_some(record))
            })
            .collect();
        feed.take(changes, through);
        if ended {
            match list_and_follow(&registry).await {
                Ok((records, revision, followed)) => {
                    feed.replace(records, revision);
                    subscription = followed;
                }
                Err(error) => {
                    tracing::warn!(%error, "listing the Nodes for the agents' Node batches; trying again in 1 s");
                    drop(feed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    // Ended: the next `next` errs again and the listing is tried again.
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(name: &str, cidr: &str, address: &str) -> NodeRecord {
        NodeRecord {
            name: name.to_owned(),
            pod_cidr: cidr.to_owned(),
            addresses: vec![NodeAddress {
                r#type: "InternalIP".to_owned(),
                address: address.to_owned(),
            }],
            deleted: false,
        }
    }

    fn feed(records: &[NodeRecord], revision: Revision) -> Arc<NodeBatches> {
        Arc::new(NodeBatches {
            state: Mutex::new(State {
                records: records
                    .iter()
                    .map(|r| (r.name.clone(), r.clone()))
                    .collect(),
                revision,
                sent: revision,
                complete: None,
            }),
            batches: broadcast::channel(2).0,
        })
    }

    fn decoded(batch: &Batch) -> NodeBatch {
        NodeBatch::decode(batch.encoded.as_slice()).expect("a NodeBatch")
    }

    #[test]
    fn a_record_holds_what_agents_read_of_a_node() {
        let node = json!({
            "metadata": {"name": "n1", "labels": {"a": "b"}, "annotations": {"x": "y"}},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "198.18.0.1"},
                              {"type": "Hostname", "address": "n1"}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "allocatable": {"cpu": "4"},
            },
        });
        let mut expected = record("n1", "10.244.1.0/24", "198.18.0.1");
        expected.addresses.push(NodeAddress {
            r#type: "Hostname".to_owned(),
            address: "n1".to_owned(),
        });
        assert_eq!(record_of(&node), expected);
        assert_eq!(
            record_of(&json!({"metadata": {"name": "new"}})),
            NodeRecord {
                name: "new".to_owned(),
                ..NodeRecord::default()
            }
        );
    }

    #[tokio::test]
    async fn each_change_agents_read_goes_once_in_one_batch_shared_by_every_watch() {
        let a = record("a", "10.244.0.0/24", "198.18.0.1");
        let feed = feed(std::slice::from_ref(&a), 10);
        let (first, mut one) = feed.follow(Some(10));
        assert!(
            first.is_none(),
            "a watch that is up to date gets nothing first"
        );
        let (_, mut other) = feed.follow(Some(10));
        // b created then given its address, a's heartbeat (nothing agents read), a gone.
        let mut b_created = record("b", "10.244.1.0/24", "");
        b_created.addresses.clear();
        let b = record("b", "10.244.1.0/24", "198.18.0.2");
        feed.take(
            vec![
                ("b".to_owned(), Some(b_created)),
                ("a".to_owned(), Some(a.clone())),
                ("b".to_owned(), Some(b.clone())),
            ],
            13,
        );
        let batch = one.next().await.expect("a batch");
        assert_eq!((batch.from, batch.to), (10, 13));
        assert_eq!(
            decoded(&batch),
            NodeBatch {
                complete: false,
                nodes: vec![b.clone()]
            }
        );
        let shared = other.next().await.expect("a batch");
        assert!(Arc::ptr_eq(&batch, &shared), "encoded once for both");
        // Changes agents do not read send nothing, but move the revision on.
        feed.take(vec![("a".to_owned(), Some(a.clone()))], 14);
        feed.take(vec![("a".to_owned(), None)], 15);
        let gone = one.next().await.expect("a batch");
        assert_eq!((gone.from, gone.to), (13, 15));
        assert_eq!(
            decoded(&gone).nodes,
            vec![NodeRecord {
                name: "a".to_owned(),
                deleted: true,
                ..NodeRecord::default()
            }]
        );
    }

    #[tokio::test]
    async fn a_watch_that_starts_or_falls_behind_gets_every_node_at_once() {
        let (a, b) = (
            record("a", "10.244.0.0/24", "198.18.0.1"),
            record("b", "10.244.1.0/24", "198.18.0.2"),
        );
        let feed = feed(&[a.clone(), b.clone()], 20);
        let (first, _) = feed.follow(None);
        let first = first.expect("every Node first");
        assert_eq!(first.to, 20);
        assert_eq!(
            decoded(&first),
            NodeBatch {
                complete: true,
                nodes: vec![a.clone(), b.clone()]
            }
        );
        let (again, _) = feed.follow(Some(3));
        assert!(
            Arc::ptr_eq(&first, &again.expect("every Node")),
            "encoded once while the Nodes stay the same"
        );
        // Three batches while the queue keeps two: the follower lagged.
        let (_, mut slow) = feed.follow(Some(20));
        for (i, revision) in [(1, 21), (2, 22), (3, 23)] {
            let mut changed = a.clone();
            changed.addresses[0].address = format!("198.18.1.{i}");
            feed.take(vec![("a".to_owned(), Some(changed))], revision);
        }
        let caught_up = slow.next().await.expect("a batch");
        let nodes = decoded(&caught_up);
        assert!(nodes.complete);
        assert_eq!(caught_up.to, 23);
        assert_eq!(nodes.nodes[0].addresses[0].address, "198.18.1.3");
        // What was queued is older than what it sent: the next batch follows on.
        feed.take(vec![("b".to_owned(), None)], 24);
        let next = slow.next().await.expect("a batch");
        assert_eq!((next.from, next.to), (23, 24));
    }
}
