//! Writes a [`PolicyPlan`] into the ipcache, policy endpoint and policy maps, touching
//! only the entries that differ from what the maps hold, in an order that never isolates
//! a pod before what it allows is in, and never keeps an allow once nothing needs it;
//! and reads the per-policy verdict counters.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
};

use aya::maps::{
    HashMap as BpfHashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuValues, lpm_trie::Key,
};
use berth_ebpf_common::{
    EndpointPolicy, POLICY_EGRESS, POLICY_INGRESS, PolicyDrop, PolicyKey, PolicyVerdicts, map_names,
};

use super::{DatapathError, map_error};
use crate::policy::{Allow, Cidr, PolicyPlan};

/// The policy maps of a node's datapath, with what they hold.
pub struct PolicyMaps {
    ipcache: LpmTrie<MapData, u32, u32>,
    endpoints: BpfHashMap<MapData, u32, EndpointPolicy>,
    policy: LpmTrie<MapData, PolicyKey, u32>,
    counters: PolicyCounters,
    live_ipcache: BTreeMap<Cidr, u32>,
    live_endpoints: BTreeMap<Ipv4Addr, EndpointPolicy>,
    live_policy: BTreeMap<(u32, PolicyKey), u32>,
    live_policies: BTreeMap<u32, (String, String)>,
    /// The revision the next change gives the endpoints it affects.
    next_revision: u32,
}

fn lpm_key(cidr: Cidr) -> Key<u32> {
    Key::new(u32::from(cidr.1), u32::from(cidr.0).to_be())
}

fn policy_key(endpoint: Ipv4Addr, direction: u8, allow: &Allow) -> (u32, PolicyKey) {
    (
        allow.prefix_len,
        PolicyKey {
            endpoint: u32::from(endpoint).to_be(),
            identity: allow.identity,
            direction,
            proto: allow.proto,
            port: allow.port.to_be(),
        },
    )
}

/// A record of the policy drop ring buffer, if `bytes` is a whole one.
pub fn policy_drop(bytes: &[u8]) -> Option<PolicyDrop> {
    if bytes.len() != std::mem::size_of::<PolicyDrop>() {
        return None;
    }
    // SAFETY: the length is PolicyDrop's; it is plain integers (aya::Pod), so any bytes
    // are a valid value, and read_unaligned copes with the buffer's alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<PolicyDrop>()) })
}

/// The per-policy verdict counters (`BERTH_POLICY_STATS`), summed over CPUs.
pub struct PolicyCounters {
    stats: PerCpuArray<MapData, PolicyVerdicts>,
}

impl PolicyCounters {
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let name = map_names::POLICY_STATS;
        let data = MapData::from_pin(pin_dir.join(name)).map_err(map_error(name))?;
        let stats = PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(map_error(name))?;
        Ok(Self { stats })
    }

    /// The verdicts counted under policy `id`.
    pub fn read(&self, id: u32) -> Result<PolicyVerdicts, DatapathError> {
        let per_cpu = self
            .stats
            .get(&id, 0)
            .map_err(map_error(map_names::POLICY_STATS))?;
        Ok(per_cpu
            .iter()
            .fold(PolicyVerdicts::default(), |sum, cpu| PolicyVerdicts {
                ingress_allowed: sum.ingress_allowed + cpu.ingress_allowed,
                ingress_denied: sum.ingress_denied + cpu.ingress_denied,
                egress_allowed: sum.egress_allowed + cpu.egress_allowed,
                egress_denied: sum.egress_denied + cpu.egress_denied,
            }))
    }

    /// Starts policy `id`'s counters again: the id now names another policy.
    fn zero(&mut self, id: u32) -> Result<(), DatapathError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| DatapathError::Io {
            path: "/sys/devices/system/cpu/possible".into(),
            source,
        })?;
        let zeros =
            PerCpuValues::try_from(vec![PolicyVerdicts::default(); cpus]).map_err(|source| {
                DatapathError::Io {
                    path: "/sys/devices/system/cpu/possible".into(),
                    source,
                }
            })?;
        self.stats
            .set(id, zeros, 0)
            .map_err(map_error(map_names::POLICY_STATS))
    }
}

impl PolicyMaps {
    /// Opens the maps pinned under `pin_dir` (by a loaded datapath) and reads what they
    /// hold, so a restarted agent removes what its predecessor wrote and no longer
    /// applies. The verdict counters start again: policy ids are the agent's own.
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let open =
            |name: &'static str| MapData::from_pin(pin_dir.join(name)).map_err(map_error(name));
        let ipcache = LpmTrie::<_, u32, u32>::try_from(Map::LpmTrie(open(map_names::IPCACHE)?))
            .map_err(map_error(map_names::IPCACHE))?;
        let endpoints = BpfHashMap::<_, u32, EndpointPolicy>::try_from(Map::HashMap(open(
            map_names::POLICY_ENDPOINTS,
        )?))
        .map_err(map_error(map_names::POLICY_ENDPOINTS))?;
        let policy = LpmTrie::<_, PolicyKey, u32>::try_from(Map::LpmTrie(open(map_names::POLICY)?))
            .map_err(map_error(map_names::POLICY))?;
        let mut counters = PolicyCounters::open(pin_dir)?;
        let mut live_ipcache = BTreeMap::new();
        for entry in ipcache.iter() {
            let (key, id) = entry.map_err(map_error(map_names::IPCACHE))?;
            let len = u8::try_from(key.prefix_len()).unwrap_or(32);
            live_ipcache.insert((Ipv4Addr::from(u32::from_be(key.data())), len), id);
        }
        let mut live_endpoints = BTreeMap::new();
        for entry in endpoints.iter() {
            let (addr, endpoint) = entry.map_err(map_error(map_names::POLICY_ENDPOINTS))?;
            live_endpoints.insert(Ipv4Addr::from(u32::from_be(addr)), endpoint);
        }
        let mut live_policy = BTreeMap::new();
        for entry in policy.iter() {
            let (key, id) = entry.map_err(map_error(map_names::POLICY))?;
            live_policy.insert((key.prefix_len(), key.data()), id);
        }
        let mut ids = BTreeSet::from_iter(live_policy.values().copied());
        ids.extend(
            live_endpoints
                .values()
                .flat_map(|e| [e.ingress_policy, e.egress_policy]),
        );
        for id in ids {
            counters.zero(id)?;
        }
        let next_revision = live_endpoints
            .values()
            .map(|e| e.revision)
            .max()
            .unwrap_or(0)
            .wrapping_add(1);
        Ok(Self {
            ipcache,
            endpoints,
            policy,
            counters,
            live_ipcache,
            live_endpoints,
            live_policy,
            live_policies: BTreeMap::new(),
            next_revision,
        })
    }

    /// Makes the maps hold `plan`. Allows go in before the identities that use them and
    /// before any pod is isolated; isolation is lifted before allows go out. Pods whose
    /// verdicts may change (their entries changed, or any identity did) get a new
    /// revision last, once the maps hold the new plan, so their established flows are
    /// checked again against it and none is remembered under an allow about to go. What
    /// was written is remembered write by write, so after a failure the next call picks
    /// up from what the maps hold.
    pub fn apply(&mut self, plan: &PolicyPlan) -> Result<(), DatapathError> {
        for (id, name) in &plan.policies {
            if self.live_policies.get(id) != Some(name) {
                if self.live_policies.contains_key(id) {
                    self.counters.zero(*id)?;
                }
                self.live_policies.insert(*id, name.clone());
            }
        }
        self.live_policies
            .retain(|id, _| plan.policies.contains_key(id));
        let directions = [
            (POLICY_INGRESS, &plan.ingress),
            (POLICY_EGRESS, &plan.egress),
        ];
        let wanted_policy: BTreeMap<(u32, PolicyKey), u32> = directions
            .iter()
            .flat_map(|(direction, by_endpoint)| {
                by_endpoint.iter().flat_map(move |(endpoint, allows)| {
                    allows
                        .iter()
                        .map(move |(a, id)| (policy_key(*endpoint, *direction, a), *id))
                })
            })
            .collect();
        let mut changed: BTreeSet<u32> = BTreeSet::new();
        let adds: Vec<_> = wanted_policy
            .iter()
            .filter(|(key, id)| self.live_policy.get(key) != Some(id))
            .map(|(key, id)| (*key, *id))
            .collect();
        for ((prefix, key), id) in adds {
            self.policy
                .insert(&Key::new(prefix, key), id, 0)
                .map_err(map_error(map_names::POLICY))?;
            self.live_policy.insert((prefix, key), id);
            changed.insert(key.endpoint);
        }
        let mut identities_changed = false;
        for (cidr, id) in &plan.ipcache {
            if self.live_ipcache.get(cidr) != Some(id) {
                self.ipcache
                    .insert(&lpm_key(*cidr), *id, 0)
                    .map_err(map_error(map_names::IPCACHE))?;
                self.live_ipcache.insert(*cidr, *id);
                identities_changed = true;
            }
        }
        let revision = self.next_revision;
        for (addr, endpoint) in &plan.endpoints {
            let live = self.live_endpoints.get(addr).copied();
            let wanted = EndpointPolicy {
                flags: endpoint.flags,
                // Kept until the new plan is all in (below); a new pod has no flows yet.
                revision: live.map_or(revision, |live| live.revision),
                ingress_policy: endpoint.ingress_policy,
                egress_policy: endpoint.egress_policy,
            };
            if live.is_some_and(|live| live.flags != wanted.flags) {
                changed.insert(u32::from(*addr).to_be());
            }
            if live != Some(wanted) {
                self.write_endpoint(*addr, wanted)?;
            }
        }
        let gone: Vec<Ipv4Addr> = self
            .live_endpoints
            .keys()
            .filter(|addr| !plan.endpoints.contains_key(addr))
            .copied()
            .collect();
        for addr in gone {
            self.endpoints
                .remove(&u32::from(addr).to_be())
                .map_err(map_error(map_names::POLICY_ENDPOINTS))?;
            self.live_endpoints.remove(&addr);
        }
        let gone: Vec<Cidr> = self
            .live_ipcache
            .keys()
            .filter(|cidr| !plan.ipcache.contains_key(cidr))
            .copied()
            .collect();
        for cidr in gone {
            self.ipcache
                .remove(&lpm_key(cidr))
                .map_err(map_error(map_names::IPCACHE))?;
            self.live_ipcache.remove(&cidr);
            identities_changed = true;
        }
        let gone: Vec<_> = self
            .live_policy
            .keys()
            .filter(|key| !wanted_policy.contains_key(key))
            .copied()
            .collect();
        for (prefix, key) in gone {
            self.policy
                .remove(&Key::new(prefix, key))
                .map_err(map_error(map_names::POLICY))?;
            self.live_policy.remove(&(prefix, key));
            changed.insert(key.endpoint);
        }
        let affected: Vec<(Ipv4Addr, EndpointPolicy)> = self
            .live_endpoints
            .iter()
            .filter(|(addr, endpoint)| {
                endpoint.revision != revision
                    && (identities_changed || changed.contains(&u32::from(**addr).to_be()))
            })
            .map(|(addr, endpoint)| (*addr, *endpoint))
            .collect();
        for (addr, endpoint) in affected {
            self.write_endpoint(
                addr,
                EndpointPolicy {
                    revision,
                    ..endpoint
                },
            )?;
        }
        if self.live_endpoints.values().any(|e| e.revision == revision) {
            self.next_revision = revision.wrapping_add(1);
        }
        Ok(())
    }

    fn write_endpoint(
        &mut self,
        addr: Ipv4Addr,
        endpoint: EndpointPolicy,
    ) -> Result<(), DatapathError> {
        self.endpoints
            .insert(u32::from(addr).to_be(), endpoint, 0)
            .map_err(map_error(map_names::POLICY_ENDPOINTS))?;
        self.live_endpoints.insert(addr, endpoint);
        Ok(())
    }

    /// Entries in the policy map (all endpoints together).
    pub fn policy_entries(&self) -> usize {
        self.live_policy.len()
    }

    /// The revision of the pod at `addr`'s entry (flows allowed under another are
    /// checked again), if some policy selects it.
    pub fn revision(&self, addr: Ipv4Addr) -> Option<u32> {
        self.live_endpoints.get(&addr).map(|e| e.revision)
    }
}
