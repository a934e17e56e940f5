//! Writes a [`PolicyPlan`] into the ipcache, policy endpoint and policy maps, touching
//! only the entries that differ from what the maps hold, in an order that never isolates
//! a pod before what it allows is in, and never keeps an allow once nothing needs it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
};

use aya::maps::{HashMap as BpfHashMap, LpmTrie, Map, MapData, lpm_trie::Key};
use berth_ebpf_common::{POLICY_INGRESS, PolicyKey, map_names};

use super::{DatapathError, map_error};
use crate::policy::{Cidr, PolicyPlan};

/// The policy maps of a node's datapath, with what they hold.
pub struct PolicyMaps {
    ipcache: LpmTrie<MapData, u32, u32>,
    endpoints: BpfHashMap<MapData, u32, u32>,
    policy: LpmTrie<MapData, PolicyKey, u32>,
    live_ipcache: BTreeMap<Cidr, u32>,
    live_endpoints: BTreeMap<Ipv4Addr, u32>,
    live_policy: BTreeSet<(u32, PolicyKey)>,
}

fn lpm_key(cidr: Cidr) -> Key<u32> {
    Key::new(u32::from(cidr.1), u32::from(cidr.0).to_be())
}

fn policy_key(endpoint: Ipv4Addr, allow: &crate::policy::Allow) -> (u32, PolicyKey) {
    (
        allow.prefix_len,
        PolicyKey {
            endpoint: u32::from(endpoint).to_be(),
            identity: allow.identity,
            direction: POLICY_INGRESS,
            proto: allow.proto,
            port: allow.port.to_be(),
        },
    )
}

impl PolicyMaps {
    /// Opens the maps pinned under `pin_dir` (by a loaded datapath) and reads what they
    /// hold, so a restarted agent removes what its predecessor wrote and no longer
    /// applies.
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let open =
            |name: &'static str| MapData::from_pin(pin_dir.join(name)).map_err(map_error(name));
        let ipcache = LpmTrie::<_, u32, u32>::try_from(Map::LpmTrie(open(map_names::IPCACHE)?))
            .map_err(map_error(map_names::IPCACHE))?;
        let endpoints =
            BpfHashMap::<_, u32, u32>::try_from(Map::HashMap(open(map_names::POLICY_ENDPOINTS)?))
                .map_err(map_error(map_names::POLICY_ENDPOINTS))?;
        let policy = LpmTrie::<_, PolicyKey, u32>::try_from(Map::LpmTrie(open(map_names::POLICY)?))
            .map_err(map_error(map_names::POLICY))?;
        let mut live_ipcache = BTreeMap::new();
        for entry in ipcache.iter() {
            let (key, id) = entry.map_err(map_error(map_names::IPCACHE))?;
            let len = u8::try_from(key.prefix_len()).unwrap_or(32);
            live_ipcache.insert((Ipv4Addr::from(u32::from_be(key.data())), len), id);
        }
        let mut live_endpoints = BTreeMap::new();
        for entry in endpoints.iter() {
            let (addr, flags) = entry.map_err(map_error(map_names::POLICY_ENDPOINTS))?;
            live_endpoints.insert(Ipv4Addr::from(u32::from_be(addr)), flags);
        }
        let mut live_policy = BTreeSet::new();
        for key in policy.keys() {
            let key = key.map_err(map_error(map_names::POLICY))?;
            live_policy.insert((key.prefix_len(), key.data()));
        }
        Ok(Self {
            ipcache,
            endpoints,
            policy,
            live_ipcache,
            live_endpoints,
            live_policy,
        })
    }

    /// Makes the maps hold `plan`. Allows go in before the identities that use them and
    /// before any pod is isolated; isolation is lifted before allows go out. What was
    /// written is remembered write by write, so after a failure the next call picks up
    /// from what the maps hold.
    pub fn apply(&mut self, plan: &PolicyPlan) -> Result<(), DatapathError> {
        let wanted_policy: BTreeSet<(u32, PolicyKey)> = plan
            .ingress
            .iter()
            .flat_map(|(endpoint, allows)| allows.iter().map(|a| policy_key(*endpoint, a)))
            .collect();
        let adds: Vec<_> = wanted_policy
            .difference(&self.live_policy)
            .copied()
            .collect();
        for (prefix, key) in adds {
            self.policy
                .insert(&Key::new(prefix, key), 1, 0)
                .map_err(map_error(map_names::POLICY))?;
            self.live_policy.insert((prefix, key));
        }
        for (cidr, id) in &plan.ipcache {
            if self.live_ipcache.get(cidr) != Some(id) {
                self.ipcache
                    .insert(&lpm_key(*cidr), *id, 0)
                    .map_err(map_error(map_names::IPCACHE))?;
                self.live_ipcache.insert(*cidr, *id);
            }
        }
        for (addr, flags) in &plan.endpoints {
            if self.live_endpoints.get(addr) != Some(flags) {
                self.endpoints
                    .insert(u32::from(*addr).to_be(), *flags, 0)
                    .map_err(map_error(map_names::POLICY_ENDPOINTS))?;
                self.live_endpoints.insert(*addr, *flags);
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
        }
        let gone: Vec<_> = self
            .live_policy
            .difference(&wanted_policy)
            .copied()
            .collect();
        for (prefix, key) in gone {
            self.policy
                .remove(&Key::new(prefix, key))
                .map_err(map_error(map_names::POLICY))?;
            self.live_policy.remove(&(prefix, key));
        }
        Ok(())
    }

    /// Entries in the policy map (all endpoints together).
    pub fn policy_entries(&self) -> usize {
        self.live_policy.len()
    }
}
