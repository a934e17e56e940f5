//! Per-service changes: [`Datapath::update`] plans and writes only the services that
//! changed (and those whose tables a shared backend's new state touches), against the
//! same mirror [`Datapath::apply`] keeps. Both hand out ids and table slots by the same
//! rules in the same (name) order, so a run of changes leaves the maps as a full apply of
//! each resulting set would (agent/tests/datapath_deltas.rs checks it on the kernel's
//! maps).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, hash_map::Entry},
    net::Ipv4Addr,
    sync::Arc,
    time::Instant,
};

use berth_ebpf_common::{BACKEND_ACTIVE, Backend, ServiceKey};

use super::{
    ApplyReport, BackendSpec, BackendState, Datapath, DatapathError, Limits, PlannedService,
    Service, ServiceSet, backend_value, build_tables, check_count, check_service, local_address,
    lowest_free, merge_backend, service_key, slots,
};

/// A service using a backend (its name, shared by all its backends) and its view of it.
type User = (Arc<str>, BackendSpec);

/// The services using one backend. Most backends have one, kept in place: a list each
/// was 100,000 allocations with 10,000 Services × 10 endpoints (issue 25).
#[derive(Debug)]
enum Users {
    One(User),
    Many(Vec<User>),
}

impl Users {
    fn as_slice(&self) -> &[User] {
        match self {
            Users::One(user) => std::slice::from_ref(user),
            Users::Many(users) => users,
        }
    }

    fn add(&mut self, user: User) {
        match self {
            Users::One(first) => *self = Users::Many(vec![first.clone(), user]),
            Users::Many(users) => users.push(user),
        }
    }

    /// Takes out the views of the service `name`; false when no user is left.
    fn remove(&mut self, name: &str) -> bool {
        match self {
            Users::One((user, _)) => **user != *name,
            Users::Many(users) => {
                users.retain(|(user, _)| **user != *name);
                match users.as_slice() {
                    [] => false,
                    [only] => {
                        *self = Users::One(only.clone());
                        true
                    }
                    _ => true,
                }
            }
        }
    }
}

/// The services as last written, indexed for per-service planning.
#[derive(Debug, Default)]
pub(super) struct Desired {
    services: BTreeMap<String, Service>,
    /// Which service each frontend belongs to.
    owners: HashMap<ServiceKey, String>,
    /// Every service's view of each backend, by address and port: the service's name
    /// shared by its backends.
    users: HashMap<(Ipv4Addr, u16), Users>,
}

impl Desired {
    pub(super) fn of(set: &ServiceSet) -> Desired {
        let mut desired = Desired::default();
        for service in &set.services {
            desired.insert(service.clone());
        }
        desired
    }

    pub(super) fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    fn insert(&mut self, service: Service) {
        self.remove(&service.name);
        for frontend in &service.frontends {
            self.owners
                .insert(service_key(frontend), service.name.clone());
        }
        let name: Arc<str> = Arc::from(service.name.as_str());
        for backend in &service.backends {
            let user = (name.clone(), *backend);
            match self.users.entry((backend.addr, backend.port)) {
                Entry::Occupied(mut users) => users.get_mut().add(user),
                Entry::Vacant(slot) => {
                    slot.insert(Users::One(user));
                }
            }
        }
        self.services.insert(service.name.clone(), service);
    }

    fn remove(&mut self, name: &str) {
        let Some(service) = self.services.remove(name) else {
            return;
        };
        for frontend in &service.frontends {
            let key = service_key(frontend);
            if self.owners.get(&key).is_some_and(|owner| owner == name) {
                self.owners.remove(&key);
            }
        }
        for backend in &service.backends {
            let key = (backend.addr, backend.port);
            if let Some(users) = self.users.get_mut(&key)
                && !users.remove(name)
            {
                self.users.remove(&key);
            }
        }
    }
}

/// Distinct frontend keys of a service.
fn frontend_keys(service: &Service) -> HashSet<ServiceKey> {
    service.frontends.iter().map(service_key).collect()
}

/// What one batch of changes writes.
struct DeltaPlan {
    /// The services whose entries are written, in name order.
    services: Vec<PlannedService>,
    /// Every backend a changed service had or has: its id and entry, or None when no
    /// service uses it any more.
    backends: BTreeMap<(Ipv4Addr, u16), Option<(u32, Backend)>>,
    changes: Vec<(String, Option<Service>)>,
    pool: slots::SlotPool,
    retiring: Vec<(u32, u32)>,
}

impl Datapath {
    /// Applies changes to single services (`None`: the service is gone), keyed by
    /// service name: plans and writes only those services' entries, and those of the
    /// services sharing a backend whose merged state changed. A change equal to what is
    /// written is skipped. Before the first [`Self::apply`] (a restarted agent, whose
    /// maps hold entries no name explains yet) this is a full apply. Invalid changes
    /// leave the maps untouched.
    pub fn update(
        &mut self,
        changes: &BTreeMap<String, Option<Service>>,
    ) -> Result<ApplyReport, DatapathError> {
        if !self.synced {
            let mut services: BTreeMap<&str, &Service> = self
                .desired
                .services()
                .map(|service| (service.name.as_str(), service))
                .collect();
            for (name, change) in changes {
                match change {
                    Some(service) => services.insert(name, service),
                    None => services.remove(name.as_str()),
                };
            }
            let set = ServiceSet {
                services: services.into_values().cloned().collect(),
                nodes: self.node_list.clone(),
            };
            return self.apply(&set);
        }
        let started = Instant::now();
        let plan = self.plan_changes(changes)?;
        let mut report = self.write_changes(plan)?;
        report.elapsed = started.elapsed();
        Ok(report)
    }

    fn plan_changes(
        &self,
        changes: &BTreeMap<String, Option<Service>>,
    ) -> Result<DeltaPlan, DatapathError> {
        let limits = self.options.limits;
        let desired = &self.desired;
        let changes: BTreeMap<&str, Option<&Service>> = changes
            .iter()
            .filter(|(name, new)| desired.services.get(*name) != new.as_ref())
            .map(|(name, new)| (name.as_str(), new.as_ref()))
            .collect();

        // Validation, against the services that stay as they are.
        let mut count = desired.services.len();
        let mut frontends = desired.owners.len();
        let mut new_owners: HashMap<ServiceKey, &str> = HashMap::new();
        for (name, new) in &changes {
            if let Some(old) = desired.services.get(*name) {
                count -= 1;
                frontends -= frontend_keys(old).len();
            }
            let Some(service) = new else { continue };
            count += 1;
            if service.name != *name {
                return Err(DatapathError::InvalidService {
                    service: service.name.clone(),
                    reason: format!("given as the change of service {name}"),
                });
            }
            check_service(service)?;
            let keys = frontend_keys(service);
            frontends += keys.len();
            for frontend in &service.frontends {
                let key = service_key(frontend);
                let other = new_owners.insert(key, name).filter(|first| first != name);
                let kept = desired
                    .owners
                    .get(&key)
                    .filter(|owner| owner != name && !changes.contains_key(owner.as_str()))
                    .map(String::as_str);
                if let Some(first) = other.or(kept) {
                    return Err(DatapathError::DuplicateFrontend {
                        frontend: *frontend,
                        first: first.to_owned(),
                        second: service.name.clone(),
                    });
                }
            }
        }
        check_count("services", count, limits.max_services)?;
        check_count(
            "frontends",
            frontends,
            limits.max_services * Limits::FRONTENDS_PER_SERVICE,
        )?;

        // Backends the changed services had or have, merged over all their users.
        let mut incoming: HashMap<(Ipv4Addr, u16), Vec<&BackendSpec>> = HashMap::new();
        for backend in changes.values().flatten().flat_map(|s| &s.backends) {
            incoming
                .entry((backend.addr, backend.port))
                .or_default()
                .push(backend);
        }
        let touched: BTreeSet<(Ipv4Addr, u16)> = changes
            .keys()
            .filter_map(|name| desired.services.get(*name))
            .flat_map(|old| &old.backends)
            .map(|backend| (backend.addr, backend.port))
            .chain(incoming.keys().copied())
            .collect();
        let mut merged: BTreeMap<(Ipv4Addr, u16), BackendSpec> = BTreeMap::new();
        // Services left as they are whose tables a backend's new state changes.
        let mut affected: BTreeSet<&str> = BTreeSet::new();
        for key in &touched {
            let others = desired
                .users
                .get(key)
                .map(Users::as_slice)
                .into_iter()
                .flatten()
                .filter(|(user, _)| !changes.contains_key(&**user));
            for (_, spec) in others.clone() {
                merge_backend(&mut merged, spec)?;
            }
            for spec in incoming.get(key).into_iter().flatten() {
                merge_backend(&mut merged, spec)?;
            }
            let was_active = self
                .live_backend_ids
                .get(key)
                .and_then(|id| self.live_backends.get(id))
                .is_some_and(|live| live.state == BACKEND_ACTIVE);
            let is_active = merged
                .get(key)
                .is_some_and(|spec| spec.state == BackendState::Active);
            if was_active != is_active {
                affected.extend(others.map(|(user, _)| &**user));
            }
        }
        let vanishing: HashSet<u32> = touched
            .iter()
            .filter(|key| !merged.contains_key(key))
            .filter_map(|key| self.live_backend_ids.get(key).copied())
            .collect();
        let new_backends = merged
            .keys()
            .filter(|key| !self.live_backend_ids.contains_key(key))
            .count();
        check_count(
            "backends",
            self.live_backend_ids.len() + new_backends - vanishing.len(),
            limits.max_backends,
        )?;
        let mut backend_ids: HashMap<(Ipv4Addr, u16), u32> = HashMap::new();
        let mut assigned: HashSet<u32> = HashSet::new();
        // Ids assigned here that no live backend holds: with the live ones, how many of
        // the table's ids are in use.
        let mut assigned_unused = 0usize;
        let mut cursor = self.backend_id_floor;
        let mut backends = BTreeMap::new();
        for key in &touched {
            let Some(spec) = merged.get(key) else {
                backends.insert(*key, None);
                continue;
            };
            let id = match self.live_backend_ids.get(key) {
                Some(id) => *id,
                // At the limit the only ids left are those the batch's vanishing endpoints
                // give up: the lowest of them, without walking every live id (100,000 by
                // default) to learn that no other is free.
                None if self.live_backends.len() + assigned_unused
                    >= limits.max_backends as usize =>
                {
                    let id = vanishing
                        .iter()
                        .copied()
                        .filter(|id| !assigned.contains(id))
                        .min()
                        .unwrap_or(limits.max_backends + 1);
                    assigned.insert(id);
                    id
                }
                None => {
                    assigned_unused += 1;
                    let id = lowest_free(
                        1..limits.max_backends + 1,
                        &mut cursor,
                        |id| {
                            assigned.contains(&id)
                                || (self.live_backends.contains_key(&id)
                                    && !vanishing.contains(&id))
                        },
                        |id| self.live_backends.contains_key(&id),
                    );
                    assigned.insert(id);
                    id
                }
            };
            backend_ids.insert(*key, id);
            backends.insert(*key, Some((id, backend_value(spec))));
        }

        // The services to plan, in name order, with their ids.
        let mut to_plan: BTreeMap<&str, &Service> = changes
            .iter()
            .filter_map(|(name, new)| Some((*name, (*new)?)))
            .collect();
        for name in affected {
            if let Some(service) = desired.services.get(name) {
                to_plan.insert(name, service);
            }
        }
        let removed: HashSet<u32> = changes
            .iter()
            .filter(|(_, new)| new.is_none())
            .filter_map(|(name, _)| self.service_ids.get(*name).copied())
            .collect();
        let mut claimed: HashSet<u32> = HashSet::new();
        let mut cursor = self.service_id_floor;
        let mut services = Vec::with_capacity(to_plan.len());
        for (name, service) in &to_plan {
            let known = self.service_ids.get(*name).copied().or_else(|| {
                service.frontends.iter().find_map(|frontend| {
                    let live = self.live_services.get(&service_key(frontend))?;
                    (!self.service_names.contains_key(&live.id) && !claimed.contains(&live.id))
                        .then_some(live.id)
                })
            });
            let id = known.unwrap_or_else(|| {
                lowest_free(
                    0..limits.max_services,
                    &mut cursor,
                    |id| {
                        claimed.contains(&id)
                            || (self.service_names.contains_key(&id) && !removed.contains(&id))
                    },
                    |id| self.live_by_id.contains_key(&id),
                )
            });
            claimed.insert(id);
            let active = |key: &(Ipv4Addr, u16)| match merged.get(key) {
                Some(spec) => spec.state == BackendState::Active,
                // Not touched by these changes: its live entry is its merged state.
                None => self
                    .live_backend_ids
                    .get(key)
                    .and_then(|id| self.live_backends.get(id))
                    .is_some_and(|live| live.state == BACKEND_ACTIVE),
            };
            let ids = |key: &(Ipv4Addr, u16)| {
                backend_ids
                    .get(key)
                    .or_else(|| self.live_backend_ids.get(key))
                    .copied()
            };
            let all_ids: HashMap<(Ipv4Addr, u16), u32> = service
                .backends
                .iter()
                .filter_map(|b| Some(((b.addr, b.port), ids(&(b.addr, b.port))?)))
                .collect();
            services.push(self.plan_service(
                service,
                id,
                active,
                &all_ids,
                self.live_by_id.get(&id),
            ));
        }
        build_tables(&mut services);
        let (pool, kept) =
            self.place_tables(&mut services, |id| self.live_by_id.get(&id).copied())?;
        let retiring = services
            .iter()
            .map(|service| service.id)
            .chain(removed.iter().copied())
            .filter(|id| !kept.contains(id))
            .filter_map(|id| self.live_by_id.get(&id))
            .filter(|live| live.table_size > 0)
            .map(|live| (live.table_offset, live.table_size))
            .collect();
        Ok(DeltaPlan {
            services,
            backends,
            changes: changes
                .into_iter()
                .map(|(name, new)| (name.to_owned(), new.cloned()))
                .collect(),
            pool,
            retiring,
        })
    }

    /// Writes a batch in the order of a full apply: gone local endpoints, backends, tables
    /// and the entries that switch to them, then what else is gone.
    fn write_changes(&mut self, plan: DeltaPlan) -> Result<ApplyReport, DatapathError> {
        let mut report = ApplyReport {
            services: plan.services.len(),
            ..ApplyReport::default()
        };
        let reassigned: HashSet<u32> = plan
            .backends
            .values()
            .flatten()
            .map(|(id, _)| *id)
            .collect();
        // Local endpoints that are gone leave first, as in a full apply.
        for (key, entry) in &plan.backends {
            if entry.is_none()
                && let Some(backend) = self
                    .live_backend_ids
                    .get(key)
                    .and_then(|id| self.live_backends.get(id))
            {
                let local = local_address(backend);
                if self.live_local_backends.contains_key(&local) {
                    self.remove_local_backend(&local)?;
                }
            }
        }
        for (key, entry) in &plan.backends {
            if let Some((id, backend)) = entry {
                self.write_backend(*key, *id, *backend, &mut report)?;
                let local = local_address(backend);
                if backend.node_id == self.options.node_id {
                    self.write_local_backend(local, *id)?;
                } else if self.live_local_backends.contains_key(&local) {
                    self.remove_local_backend(&local)?;
                }
            }
        }
        let mut wanted_keys = HashSet::new();
        for service in &plan.services {
            self.write_service(service, &mut report)?;
            wanted_keys.extend(service.keys.iter().map(|(key, _)| *key));
        }
        for (name, _) in &plan.changes {
            let Some(old) = self.desired.services.get(name) else {
                continue;
            };
            let stale: Vec<ServiceKey> = frontend_keys(old)
                .into_iter()
                .filter(|key| !wanted_keys.contains(key))
                .collect();
            for key in stale {
                self.remove_frontend(&key, &mut report)?;
            }
        }
        for (key, entry) in &plan.backends {
            if entry.is_none()
                && let Some(id) = self.live_backend_ids.get(key).copied()
            {
                if reassigned.contains(&id) {
                    // A new endpoint of this batch has the id now (a full table has no
                    // other): only the old endpoint's name for it goes.
                    self.live_backend_ids.remove(key);
                } else {
                    self.remove_backend(id, &mut report)?;
                }
            }
        }
        for (name, new) in plan.changes {
            match new {
                Some(service) => self.desired.insert(service),
                None => {
                    self.desired.remove(&name);
                    if let Some(id) = self.service_ids.remove(&name) {
                        self.service_names.remove(&id);
                        self.live_by_id.remove(&id);
                        self.live_round_robin.remove(&id);
                        self.service_id_floor = self.service_id_floor.min(id);
                    }
                }
            }
        }
        self.pool = plan.pool;
        self.retiring = plan.retiring;
        self.refresh_floors();
        Ok(report)
    }
}
