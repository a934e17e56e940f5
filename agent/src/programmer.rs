//! Datapath writes on a thread of their own, fed by a channel: the event loop hands over
//! what changed and goes on; the thread drains everything queued, keeps only the latest
//! state of each service, and writes the batch under the datapath's lock once. A full
//! set (a resync) replaces everything queued before it. One service whose change the
//! datapath refuses is refused alone: a refused batch is tried again change by change.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use crate::{
    datapath::{ApplyReport, Datapath, DatapathError, Node, Service, ServiceSet},
    metrics::AgentMetrics,
};

/// Services written since the allocator last handed freed memory back to the kernel
/// above which it does so once the changes pause ([`QUIET`]): each service's Maglev
/// table is built in a 64 KiB buffer (16,381 slots), its watch event decoded and its DNS
/// names rebuilt on other threads, and glibc keeps what those freed in its heap, for
/// the rest of the process's life, unless asked to give it back.
const RELEASE_AFTER: usize = 64;

/// How long without work counts as the end of a burst of changes: the release waits for
/// it, so it neither delays a change in a burst nor runs once per batch of one.
const QUIET: Duration = Duration::from_secs(1);

/// Work for the datapath thread.
#[derive(Debug)]
pub enum Work {
    /// Everything to serve: a full apply.
    Resync(ServiceSet),
    /// Changes to single services, by name (`None`: gone).
    Changes(BTreeMap<String, Option<Service>>),
    /// The cluster's nodes changed.
    Nodes(Vec<Node>),
}

/// The sending side; the thread ends when it is dropped.
#[derive(Clone)]
pub struct Programmer {
    work: mpsc::Sender<(Work, Option<Instant>)>,
}

impl Programmer {
    /// Starts the thread. `received` given with a piece of work is when its watch
    /// event arrived: its propagation time is observed once the maps hold it.
    pub fn start(datapath: Arc<Mutex<Datapath>>, metrics: AgentMetrics) -> std::io::Result<Self> {
        let (work, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("datapath".into())
            .spawn(move || run(&datapath, &metrics, &queue))?;
        Ok(Programmer { work })
    }

    pub fn send(&self, work: Work, received: Option<Instant>) {
        // The thread only ends with the process, or by a bug (its panic is printed).
        if self.work.send((work, received)).is_err() {
            tracing::error!("the datapath thread has stopped: changes are not programmed");
        }
    }
}

/// What one round writes: the latest state of everything queued.
#[derive(Debug, Default)]
pub struct Batch {
    full: Option<ServiceSet>,
    changes: BTreeMap<String, Option<Service>>,
    nodes: Option<Vec<Node>>,
    /// When each change's event arrived.
    received: Vec<Instant>,
}

impl Batch {
    /// Folds in one piece of work, after everything already in.
    pub fn add(&mut self, work: Work, received: Option<Instant>) {
        match work {
            Work::Resync(set) => {
                self.changes.clear();
                self.nodes = None;
                self.full = Some(set);
            }
            Work::Changes(changes) => match &mut self.full {
                Some(set) => {
                    for (name, change) in changes {
                        set.services.retain(|service| service.name != name);
                        set.services.extend(change);
                    }
                }
                None => self.changes.extend(changes),
            },
            Work::Nodes(nodes) => match &mut self.full {
                Some(set) => set.nodes = nodes,
                None => self.nodes = Some(nodes),
            },
        }
        self.received.extend(received);
    }

    /// How many services the batch writes.
    pub fn services(&self) -> usize {
        self.full
            .as_ref()
            .map_or(self.changes.len(), |set| set.services.len())
    }

    /// Writes the batch. Returns one report per write.
    pub fn write(self, datapath: &mut Datapath) -> Vec<Result<ApplyReport, DatapathError>> {
        if let Some(set) = self.full {
            return vec![datapath.apply(&set)];
        }
        let mut results = Vec::new();
        if let Some(nodes) = &self.nodes
            && let Err(error) = datapath.set_nodes(nodes)
        {
            results.push(Err(error));
        }
        if self.changes.is_empty() {
            return results;
        }
        match datapath.update(&self.changes) {
            Ok(report) => results.push(Ok(report)),
            Err(_) if self.changes.len() > 1 => {
                for (name, change) in self.changes {
                    results.push(datapath.update(&BTreeMap::from([(name, change)])));
                }
            }
            Err(error) => results.push(Err(error)),
        }
        results
    }
}

fn run(
    datapath: &Mutex<Datapath>,
    metrics: &AgentMetrics,
    queue: &mpsc::Receiver<(Work, Option<Instant>)>,
) {
    // Services written since the last release.
    let mut unreleased = 0;
    loop {
        let next = if unreleased > RELEASE_AFTER {
            queue.recv_timeout(QUIET)
        } else {
            queue.recv().map_err(mpsc::RecvTimeoutError::from)
        };
        let (work, received) = match next {
            Ok(next) => next,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                release_freed_memory();
                unreleased = 0;
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = Batch::default();
        batch.add(work, received);
        while let Ok((work, received)) = queue.try_recv() {
            batch.add(work, received);
        }
        let arrivals = std::mem::take(&mut batch.received);
        unreleased += batch.services();
        let results = {
            let mut datapath = match datapath.lock() {
                Ok(datapath) => datapath,
                Err(poisoned) => poisoned.into_inner(),
            };
            batch.write(&mut datapath)
        };
        for result in results {
            match result {
                Ok(report) => {
                    metrics.apply_duration.observe(report.elapsed.as_secs_f64());
                    if report.changed_anything() {
                        tracing::debug!(?report, "datapath updated");
                    }
                }
                // The previous state stays programmed; the next change tries again.
                Err(error) => tracing::error!(%error, "datapath update refused"),
            }
        }
        for received in arrivals {
            metrics
                .propagation
                .observe(received.elapsed().as_secs_f64());
        }
    }
}

/// Allocations from this size on are mapped on their own and unmapped when freed.
/// glibc's default threshold rises to the largest block freed (up to 32 MiB), after which
/// the heartbeat's read of every backend's counters (4 MiB with 100,000 backends, every
/// 2 s) lands in the heap and its pages stay there between trims. 256 KiB keeps the
/// Maglev tables' 64 KiB buffers in the heap.
const MMAP_THRESHOLD: i32 = 256 << 10;

/// Sets up glibc's malloc for the agent: one arena for every thread, and large blocks
/// mapped on their own ([`MMAP_THRESHOLD`]). With an arena per thread that allocated
/// (up to eight times the CPUs), what a burst freed stayed spread over arenas that other
/// threads' allocations never reuse: with 10,000 Services × 10 endpoints the agent's
/// RssAnon was 87 MiB with them and 80 MiB with one (issue 25, one agent, once the
/// changes paused). The agent allocates little outside bursts of changes, so one arena's
/// lock costs nothing measurable. Called before any thread starts.
pub fn configure_malloc() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets parameters of glibc's malloc; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Returns the allocator's free pages to the kernel.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own free lists; it takes the arenas' locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::datapath::{Algorithm, Frontend, Protocol};

    fn service(name: &str, port: u16) -> Service {
        Service {
            name: name.to_owned(),
            frontends: vec![Frontend {
                addr: Ipv4Addr::new(198, 19, 0, 1),
                port,
                protocol: Protocol::Tcp,
                external: false,
            }],
            backends: Vec::new(),
            algorithm: Algorithm::Maglev,
            affinity_timeout: None,
        }
    }

    fn changes(list: &[(&str, Option<u16>)]) -> Work {
        Work::Changes(
            list.iter()
                .map(|(name, port)| (name.to_string(), port.map(|port| service(name, port))))
                .collect(),
        )
    }

    #[test]
    fn a_batch_keeps_the_latest_state_of_each_service() {
        let mut batch = Batch::default();
        let now = Instant::now();
        batch.add(changes(&[("a", Some(80)), ("b", Some(80))]), Some(now));
        batch.add(changes(&[("a", Some(81)), ("b", None)]), Some(now));
        batch.add(Work::Nodes(Vec::new()), None);
        assert!(batch.full.is_none());
        assert_eq!(batch.changes.len(), 2);
        assert_eq!(batch.services(), 2);
        assert_eq!(
            batch.changes["a"].as_ref().map(|s| s.frontends[0].port),
            Some(81)
        );
        assert_eq!(batch.changes["b"], None);
        assert_eq!(batch.nodes, Some(Vec::new()));
        assert_eq!(batch.received.len(), 2, "every change's arrival is timed");
    }

    #[test]
    fn a_resync_replaces_what_came_before_and_takes_in_what_comes_after() {
        let mut batch = Batch::default();
        batch.add(changes(&[("a", Some(80))]), None);
        batch.add(
            Work::Resync(ServiceSet {
                services: vec![service("b", 80), service("c", 80)],
                nodes: Vec::new(),
            }),
            None,
        );
        batch.add(changes(&[("c", None), ("d", Some(80))]), None);
        assert!(batch.changes.is_empty());
        let names: Vec<&str> = batch
            .full
            .as_ref()
            .map(|set| set.services.iter().map(|s| s.name.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(names, ["b", "d"]);
        assert_eq!(batch.services(), 2, "a resync writes its set's services");
    }
}
