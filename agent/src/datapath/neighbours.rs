//! The kernel's neighbour entries for the other nodes, kept valid for XDP.
//!
//! XDP forwards north-south flows to a backend's node with `bpf_fib_lookup`, which reads
//! the kernel's neighbour table and fails (the packet is dropped, counted as
//! `drop_no_route`) while the entry for that node is missing or unresolved; it never
//! triggers resolution itself. [`NeighbourKeeper`] subscribes to the table's changes
//! (RTNLGRP_NEIGH) and re-resolves a node's entry the moment the kernel removes it or
//! fails to resolve it, and keeps each node's current MAC as the kernel reports it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, UdpSocket},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use berth_net::{Neighbour, NeighbourEvent, NeighbourEvents};

use super::DatapathError;

/// How long the watching thread waits for an event before it checks whether to stop.
const WAKE_INTERVAL: Duration = Duration::from_millis(250);
/// A node that does not answer ARP is asked again at most this often.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Sends one UDP datagram to the discard port of each address: the kernel resolves the
/// neighbour entry to send it. A node that is down or filters port 9 is fine: only the
/// ARP exchange matters.
fn poke(socket: &UdpSocket, addrs: impl IntoIterator<Item = Ipv4Addr>) {
    for addr in addrs {
        let _ = socket.send_to(b"berth", (addr, 9));
    }
}

fn unbound_socket() -> Result<UdpSocket, DatapathError> {
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|source| DatapathError::Io {
        path: "udp socket".into(),
        source,
    })
}

/// Makes the kernel resolve the link-layer addresses of other nodes and waits up to a
/// second for the entries to become valid, in the calling thread's network namespace.
pub fn resolve_neighbours(addrs: &[Ipv4Addr]) -> Result<(), DatapathError> {
    let socket = unbound_socket()?;
    poke(&socket, addrs.iter().copied());
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut pending: BTreeSet<Ipv4Addr> = addrs.iter().copied().collect();
    while !pending.is_empty() && Instant::now() < deadline {
        for neighbour in berth_net::neighbours(None)? {
            if neighbour.valid {
                pending.remove(&neighbour.addr);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

#[derive(Default)]
struct Peers {
    /// The other nodes' addresses, and when each was last asked to resolve.
    asked: BTreeMap<Ipv4Addr, Option<Instant>>,
    /// Each node's MAC while its entry is valid.
    macs: BTreeMap<Ipv4Addr, [u8; 6]>,
}

impl Peers {
    /// Takes a change of the table into account; returns the address to resolve again.
    fn observe(&mut self, event: NeighbourEvent, now: Instant) -> Option<Ipv4Addr> {
        let (neighbour, removed): (Neighbour, bool) = match event {
            NeighbourEvent::Changed(neighbour) => (neighbour, false),
            NeighbourEvent::Removed(neighbour) => (neighbour, true),
            NeighbourEvent::Lost => return None,
        };
        let asked = self.asked.get_mut(&neighbour.addr)?;
        match neighbour.mac {
            Some(mac) if neighbour.valid && !removed => {
                self.macs.insert(neighbour.addr, mac);
                None
            }
            _ => {
                self.macs.remove(&neighbour.addr);
                // Resolution still under way (incomplete) ends in valid or failed. A node
                // that does not answer fails again after each try: it is asked at most
                // once per RETRY_INTERVAL.
                let due = asked.is_none_or(|at| now.duration_since(at) >= RETRY_INTERVAL);
                (removed || (neighbour.failed && due)).then(|| {
                    *asked = Some(now);
                    neighbour.addr
                })
            }
        }
    }

    /// Reads the whole table again (at the start and after the kernel dropped events);
    /// returns the nodes that have no valid entry.
    fn resync(&mut self, table: &[Neighbour], now: Instant) -> Vec<Ipv4Addr> {
        self.macs.clear();
        for neighbour in table.iter().filter(|neighbour| neighbour.valid) {
            if let (true, Some(mac)) = (self.asked.contains_key(&neighbour.addr), neighbour.mac) {
                self.macs.insert(neighbour.addr, mac);
            }
        }
        let missing: Vec<Ipv4Addr> = self
            .asked
            .keys()
            .filter(|addr| !self.macs.contains_key(addr))
            .copied()
            .collect();
        for addr in &missing {
            self.asked.insert(*addr, Some(now));
        }
        missing
    }
}

/// Keeps the other nodes' neighbour entries valid, in the namespace of the thread that
/// starts it, by following the kernel's announcements instead of polling the table.
pub struct NeighbourKeeper {
    peers: Arc<Mutex<Peers>>,
    socket: UdpSocket,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn lock(peers: &Mutex<Peers>) -> MutexGuard<'_, Peers> {
    match peers.lock() {
        Ok(peers) => peers,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl NeighbourKeeper {
    /// Subscribes to the neighbour table of the calling thread's namespace and starts the
    /// thread that follows it.
    pub fn start() -> Result<Self, DatapathError> {
        let events = NeighbourEvents::subscribe(WAKE_INTERVAL)?;
        let socket = unbound_socket()?;
        let thread_socket = socket.try_clone().map_err(|source| DatapathError::Io {
            path: "udp socket".into(),
            source,
        })?;
        let peers = Arc::new(Mutex::new(Peers::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let peers = peers.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("neighbours".into())
                .spawn(move || follow(&events, &peers, &thread_socket, &stop))
                .map_err(|source| DatapathError::Io {
                    path: "neighbour thread".into(),
                    source,
                })?
        };
        Ok(NeighbourKeeper {
            peers,
            socket,
            stop,
            thread: Some(thread),
        })
    }

    /// Sets the nodes to keep resolved; nodes new to the set are resolved at once.
    pub fn set_peers(&self, addrs: impl IntoIterator<Item = Ipv4Addr>) {
        let wanted: BTreeSet<Ipv4Addr> = addrs.into_iter().collect();
        let now = Instant::now();
        let added: Vec<Ipv4Addr> = {
            let mut peers = lock(&self.peers);
            peers.asked.retain(|addr, _| wanted.contains(addr));
            peers.macs.retain(|addr, _| wanted.contains(addr));
            let added: Vec<Ipv4Addr> = wanted
                .into_iter()
                .filter(|addr| !peers.asked.contains_key(addr))
                .collect();
            for addr in &added {
                peers.asked.insert(*addr, Some(now));
            }
            added
        };
        poke(&self.socket, added);
    }

    /// The MAC the kernel currently resolves `addr` to, while its entry is valid.
    pub fn mac(&self, addr: Ipv4Addr) -> Option<[u8; 6]> {
        lock(&self.peers).macs.get(&addr).copied()
    }
}

impl Drop for NeighbourKeeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn follow(events: &NeighbourEvents, peers: &Mutex<Peers>, socket: &UdpSocket, stop: &AtomicBool) {
    // The table as it is before the first event; again whenever events were lost.
    let mut stale = true;
    while !stop.load(Ordering::Relaxed) {
        if stale {
            match berth_net::neighbours(None) {
                Ok(table) => {
                    let missing = lock(peers).resync(&table, Instant::now());
                    poke(socket, missing);
                    stale = false;
                }
                Err(error) => tracing::warn!(%error, "reading the neighbour table"),
            }
        }
        match events.next() {
            Ok(batch) => {
                let now = Instant::now();
                let mut again = Vec::new();
                let mut peers = lock(peers);
                for event in batch {
                    stale |= event == NeighbourEvent::Lost;
                    again.extend(peers.observe(event, now));
                }
                drop(peers);
                poke(socket, again);
            }
            Err(error) => {
                tracing::warn!(%error, "following the neighbour table");
                std::thread::sleep(RETRY_INTERVAL);
                stale = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn entry(valid: bool, failed: bool, mac: Option<[u8; 6]>) -> Neighbour {
        Neighbour {
            addr: NODE,
            ifindex: 2,
            mac,
            valid,
            failed,
        }
    }

    fn peers() -> Peers {
        let mut peers = Peers::default();
        peers.asked.insert(NODE, None);
        peers
    }

    #[test]
    fn a_removed_node_entry_is_resolved_again_and_a_failed_one_at_most_once_a_second() {
        let mut peers = peers();
        let now = Instant::now();
        let valid = NeighbourEvent::Changed(entry(true, false, Some(MAC)));
        assert_eq!(peers.observe(valid, now), None);
        assert_eq!(peers.macs.get(&NODE), Some(&MAC));

        let removed = NeighbourEvent::Removed(entry(true, false, Some(MAC)));
        assert_eq!(peers.observe(removed, now), Some(NODE));
        assert_eq!(peers.macs.get(&NODE), None);
        assert_eq!(
            peers.observe(removed, now),
            Some(NODE),
            "a removal is never ignored"
        );

        let failed = NeighbourEvent::Changed(entry(false, true, None));
        assert_eq!(peers.observe(failed, now), None, "asked a moment ago");
        assert_eq!(peers.observe(failed, now + RETRY_INTERVAL), Some(NODE));

        let incomplete = NeighbourEvent::Changed(entry(false, false, None));
        assert_eq!(peers.observe(incomplete, now + RETRY_INTERVAL * 3), None);
    }

    #[test]
    fn entries_of_other_addresses_are_ignored() {
        let mut peers = peers();
        let other = Neighbour {
            addr: Ipv4Addr::new(198, 18, 0, 9),
            ..entry(true, false, Some(MAC))
        };
        assert_eq!(
            peers.observe(NeighbourEvent::Removed(other), Instant::now()),
            None
        );
        assert!(peers.macs.is_empty());
    }

    #[test]
    fn a_resync_asks_for_the_nodes_without_a_valid_entry() {
        let mut peers = peers();
        let second = Ipv4Addr::new(198, 18, 0, 3);
        peers.asked.insert(second, None);
        let table = [entry(true, false, Some(MAC))];
        assert_eq!(peers.resync(&table, Instant::now()), vec![second]);
        assert_eq!(peers.macs.get(&NODE), Some(&MAC));
    }
}
