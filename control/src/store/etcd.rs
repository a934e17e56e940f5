//! The store on an etcd v3 cluster (`--store etcd://host:port,...`), so that several
//! control planes share one state. etcd's revision is the store's revision (and so the
//! resourceVersion); preconditions are compares inside one etcd transaction.
//!
//! etcd serves history only through watches, so each instance keeps one watch on its
//! key prefix, from the revision it started at, and serves `events_after` from the events
//! that watch delivered — as the Kubernetes API server's watch cache does. History from
//! before the instance started counts as compacted: a client asking for it lists again.
//! A commit returns once its own events are in that log, so a writer reads its writes
//! in the history as it does with the embedded store.

use std::{
    collections::{HashSet, VecDeque},
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::{runtime::Runtime, sync::watch};

use super::{
    Event, EventKind, Health, KeyValue, Op, Precondition, Result, Revision, Store, StoreError,
    StoreFault, check,
};

/// How long one etcd request may take before it counts as a failure of the store.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys per range request when listing: bounded responses whatever the list's size.
const LIST_PAGE: i64 = 1_000;
/// Pause before a request that met a dead member is sent again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Pause before the history watch is opened again after it failed.
const WATCH_RETRY: Duration = Duration::from_millis(500);

/// Where the etcd cluster is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `host:port` of each member; the client fails over between them.
    pub endpoints: Vec<String>,
    /// Prepended to every key, so one etcd cluster can hold other data too.
    pub prefix: String,
    /// PEM files for TLS to etcd: the CA that signed the members' certificates, and this
    /// client's certificate and key if the members require client certificates.
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The members' `--max-txn-ops`: the most operations etcd takes in one transaction.
    pub max_txn_ops: usize,
}

impl EtcdConfig {
    /// `etcd://a:2379,b:2379` as printed in messages (and accepted by `--store`).
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints.join(","))
    }
}

/// The store on etcd. Blocking like every `Store`: requests run on a runtime of its own,
/// so callers on any thread (async or not) may wait for them.
#[derive(Clone)]
pub struct EtcdStore {
    shared: Arc<Shared>,
    runtime: Arc<OwnedRuntime>,
    /// Set on the handle the elected controllers write through.
    fence: Option<Fence>,
}

/// A write fence: the transaction proceeds only while `key` is held by `lease`, so a
/// control plane that lost its leadership (and so its lease) cannot write any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    key: Vec<u8>,
    lease: i64,
}

/// The client's runtime, shut down without blocking when the last handle goes.
struct OwnedRuntime(Option<Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics when the store is dropped on an async
        // thread; its tasks (the history watch) need no orderly end.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

struct Shared {
    client: Client,
    config: EtcdConfig,
    log: Mutex<History>,
    notify: watch::Sender<Revision>,
    state: Mutex<FaultState>,
}

/// The events this instance's watch delivered: every event with a revision in
/// `(start, through]`, oldest first.
struct History {
    start: Revision,
    through: Revision,
    events: VecDeque<Event>,
}

#[derive(Default)]
struct FaultState {
    fault: Option<StoreFault>,
    faults_total: u64,
}

impl EtcdStore {
    /// Connects and starts the history watch; fails if etcd cannot be reached now.
    pub fn connect(config: EtcdConfig) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("etcd-client")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("starting the etcd client: {e}")))?;
        let options = connect_options(&config)?;
        let endpoints = config.endpoints.clone();
        let url = config.url();
        let client = wait_for(&runtime, async move {
            let mut client = Client::connect(endpoints, Some(options)).await?;
            // Connecting is lazy: one request proves a member answers.
            client.status().await?;
            Ok::<_, etcd_client::Error>(client)
        })
        .ok_or_else(|| "no answer".to_owned())
        .and_then(|connected| connected.map_err(|e| e.to_string()))
        .map_err(|e| StoreError::Backend(format!("connecting to {url}: {e}")))?;
        let (notify, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            client,
            config,
            log: Mutex::new(History {
                start: 0,
                through: 0,
                events: VecDeque::new(),
            }),
            notify,
            state: Mutex::new(FaultState::default()),
        });
        let start = shared.call(&runtime, Retry::Reads, |mut client, key| async move {
            let response = client
                .get(key, Some(GetOptions::new().with_count_only()))
                .await?;
            Ok(header_revision(response.header()))
        })?;
        {
            let mut log = lock(&shared.log);
            log.start = start;
            log.through = start;
        }
        shared.notify.send_replace(start);
        runtime.spawn(watch_history(Arc::clone(&shared)));
        Ok(Self {
            shared,
            runtime: Arc::new(OwnedRuntime(Some(runtime))),
            fence: None,
        })
    }

    fn runtime(&self) -> Result<&Runtime> {
        self.runtime
            .0
            .as_ref()
            .ok_or_else(|| StoreError::Backend("the etcd client was shut down".to_owned()))
    }

    /// The same store, writing only while `term` lasts.
    pub fn fenced(&self, term: &Term) -> Self {
        Self {
            fence: Some(term.fence.clone()),
            ..self.clone()
        }
    }

    /// Leader election among the control planes sharing this etcd, under `name`.
    pub fn elector(&self, name: &str, identity: String, lease: Duration) -> Elector {
        Elector {
            client: self.shared.client.clone(),
            key: format!("{}:leases/{name}", self.shared.config.prefix).into_bytes(),
            identity,
            lease,
        }
    }
}

/// Campaigns for one leadership with an etcd lease: the leader is whoever created the
/// election key under its lease; the key goes when the lease expires, and the next
/// campaigner creates it.
pub struct Elector {
    client: Client,
    key: Vec<u8>,
    identity: String,
    lease: Duration,
}

/// One tenure as leader.
#[derive(Debug, Clone)]
pub struct Term {
    fence: Fence,
    /// The lease etcd granted, which may be longer than asked (etcd's minimum follows
    /// its election timeout).
    lease: Duration,
}

impl Elector {
    /// Waits until this instance is the leader.
    pub async fn acquire(&self) -> Result<Term, etcd_client::Error> {
        let mut client = self.client.clone();
        let ttl = i64::try_from(self.lease.as_secs().max(1)).unwrap_or(i64::MAX);
        loop {
            let granted = client.lease_grant(ttl, None).await?;
            let lease = granted.id();
            let txn = Txn::new()
                .when([Compare::create_revision(
                    self.key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(
                    self.key.clone(),
                    self.identity.clone(),
                    Some(etcd_client::PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(self.key.clone(), None)]);
            let response = client.txn(txn).await?;
            if response.succeeded() {
                return Ok(Term {
                    fence: Fence {
                        key: self.key.clone(),
                        lease,
                    },
                    lease: Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(1).max(1)),
                });
            }
            // Somebody leads: the lease granted for nothing goes, and the campaign
            // waits for the key to go (the leader resigned or its lease expired).
            let _ = client.lease_revoke(lease).await;
            let held_at = response
                .op_responses()
                .iter()
                .find_map(|r| match r {
                    TxnOpResponse::Get(found) => found.kvs().first().map(|kv| kv.mod_revision()),
                    _ => None,
                })
                .unwrap_or(0);
            if held_at == 0 {
                continue;
            }
            let options = WatchOptions::new().with_start_revision(held_at + 1);
            let mut stream = client.watch(self.key.clone(), Some(options)).await?;
            'watch: while let Some(message) = stream.message().await? {
                if message.canceled() || message.compact_revision() > 0 {
                    break;
                }
                for event in message.events() {
                    if event.event_type() == EventType::Delete {
                        break 'watch;
                    }
                }
            }
        }
    }

    /// Keeps the lease alive until it is lost; returns then. Steps down (returns) once no
    /// renewal has succeeded for two thirds of the lease, before the lease can expire
    /// and another instance take over, so two leaders never act at once.
    pub async fn hold(&self, term: &Term) {
        let renew_every = term.lease / 4;
        let deadline = term.lease * 2 / 3;
        let mut last_renewed = tokio::time::Instant::now();
        let mut client = self.client.clone();
        let mut keeper = None;
        loop {
            tokio::time::sleep(renew_every).await;
            if keeper.is_none() {
                keeper = tokio::time::timeout(deadline, client.lease_keep_alive(term.fence.lease))
                    .await
                    .ok()
                    .and_then(Result::ok);
            }
            let renewed = match keeper.as_mut() {
                Some((sender, responses)) => {
                    let round = async {
                        sender.keep_alive().await?;
                        responses.message().await
                    };
                    match tokio::time::timeout(renew_every.max(Duration::from_millis(100)), round)
                        .await
                    {
                        Ok(Ok(Some(answer))) if answer.ttl() > 0 => true,
                        Ok(Ok(Some(_))) => {
                            tracing::warn!("the controller lease expired: stepping down");
                            return;
                        }
                        _ => {
                            keeper = None;
                            false
                        }
                    }
                }
                None => false,
            };
            if renewed {
                last_renewed = tokio::time::Instant::now();
            } else if last_renewed.elapsed() >= deadline {
                tracing::warn!(
                    "the controller lease was not renewed for {} ms: stepping down",
                    last_renewed.elapsed().as_millis()
                );
                return;
            }
        }
    }

    /// Gives the leadership up at once (a clean shutdown), so the next leader need not
    /// wait for the lease to expire.
    pub async fn resign(&self, term: &Term) {
        let _ = self.client.clone().lease_revoke(term.fence.lease).await;
    }
}

fn connect_options(config: &EtcdConfig) -> Result<ConnectOptions> {
    let mut options = ConnectOptions::new()
        .with_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        // A member cut off from the others must not answer with stale data.
        .with_require_leader(true);
    if let Some(ca) = &config.ca_file {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| {
                StoreError::Backend(format!("reading etcd TLS file {}: {e}", path.display()))
            })
        };
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let Some((cert, key)) = &config.client_cert {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(tls);
    }
    Ok(options)
}

/// Runs `future` on `runtime` and waits for it from this (any) thread; `None` if it did
/// not finish in time (it then goes on, and its result is dropped).
fn wait_for<T: Send + 'static>(
    runtime: &Runtime,
    future: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv_timeout(REQUEST_TIMEOUT * 2).ok()
}

impl Shared {
    fn key(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.config.prefix).into_bytes()
    }

    /// The store's key for an etcd key, which must be under the prefix.
    fn store_key(&self, etcd_key: &[u8]) -> Result<String> {
        etcd_key
            .strip_prefix(self.config.prefix.as_bytes())
            .and_then(|key| std::str::from_utf8(key).ok())
            .map(str::to_owned)
            .ok_or_else(|| StoreError::Corrupt(String::from_utf8_lossy(etcd_key).into_owned()))
    }

    fn key_value(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        Ok(KeyValue {
            key: self.store_key(kv.key())?,
            value: kv.value().to_vec(),
            create_revision: to_revision(kv.create_revision()),
            mod_revision: to_revision(kv.mod_revision()),
        })
    }

    /// One request to etcd with a client of its own (clients are cheap handles on one
    /// connection pool). The pool spreads requests over the members, so a request that
    /// met a dead member is sent again (to another): any request if it never reached
    /// etcd, a read also when etcd answered "unavailable". An unreachable cluster marks
    /// the store faulted until a request succeeds again.
    fn call<T, F>(
        &self,
        runtime: &Runtime,
        retry: Retry,
        request: impl Fn(Client, Vec<u8>) -> F + Send + 'static,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let client = self.client.clone();
        let key = self.key("");
        let attempts = 2 * self.config.endpoints.len() + 1;
        let future = async move {
            let mut attempt = 1;
            loop {
                match request(client.clone(), key.clone()).await {
                    Err(e) if attempt < attempts && retry.allows(&e) => {
                        attempt += 1;
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    outcome => return outcome,
                }
            }
        };
        let outcome = match wait_for(runtime, future) {
            Some(result) => result.map_err(|e| self.classify(e)),
            None => Err(StoreError::Faulted(self.fault(
                format!("no answer within {} s", (REQUEST_TIMEOUT * 2).as_secs()),
                false,
            ))),
        };
        match &outcome {
            Ok(_) => self.healthy(),
            Err(StoreError::Faulted(fault)) => self.faulted(fault.clone()),
            Err(_) => {}
        }
        outcome
    }

    fn fault(&self, cause: String, no_space: bool) -> StoreFault {
        StoreFault {
            path: PathBuf::from(self.config.url()),
            cause,
            no_space,
        }
    }

    /// Unreachable members and a full database stop writes (503/507 with the reason);
    /// anything else is an error of this request alone.
    fn classify(&self, error: etcd_client::Error) -> StoreError {
        use etcd_client::Error as E;
        use tonic::Code;
        match &error {
            E::TransportError(_) | E::IoError(_) => {
                StoreError::Faulted(self.fault(error.to_string(), false))
            }
            E::GRpcStatus(status) => match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                    StoreError::Faulted(self.fault(status.message().to_owned(), false))
                }
                Code::ResourceExhausted => {
                    StoreError::Faulted(self.fault(status.message().to_owned(), true))
                }
                _ => StoreError::Backend(format!("etcd: {}", status.message())),
            },
            _ => StoreError::Backend(format!("etcd: {error}")),
        }
    }

    fn healthy(&self) {
        lock(&self.state).fault = None;
    }

    fn faulted(&self, fault: StoreFault) {
        let mut state = lock(&self.state);
        if state.fault.is_none() {
            state.faults_total += 1;
            tracing::warn!("store unavailable: {fault}");
        }
        state.fault = Some(fault);
    }

    fn event(&self, event: &etcd_client::Event) -> Result<Option<Event>> {
        let Some(kv) = event.kv() else {
            return Ok(None);
        };
        Ok(Some(match event.event_type() {
            EventType::Put => Event {
                kind: EventKind::Put,
                kv: self.key_value(kv)?,
            },
            // etcd's delete event carries only the key and the deleting revision; the
            // value it had comes with `prev_kv`, which the watch asks for.
            EventType::Delete => {
                let previous = event.prev_kv();
                Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: self.store_key(kv.key())?,
                        value: previous.map(|p| p.value().to_vec()).unwrap_or_default(),
                        create_revision: previous.map_or(0, |p| to_revision(p.create_revision())),
                        mod_revision: to_revision(kv.mod_revision()),
                    },
                }
            }
        }))
    }

    /// Appends what the watch delivered; `progress` is a revision up to which etcd has
    /// sent every event (0 if unknown). The watch resumes after `through`, so nothing
    /// arrives twice.
    fn record(&self, events: Vec<Event>, progress: Revision) {
        let through = {
            let mut log = lock(&self.log);
            for event in events {
                log.through = log.through.max(event.revision());
                log.events.push_back(event);
            }
            log.through = log.through.max(progress);
            log.through
        };
        self.notify
            .send_modify(|latest| *latest = (*latest).max(through));
    }

    /// History the watch needed is gone from etcd: start again from now, and let every
    /// watcher list again (they get `Compacted`).
    fn restart_history(&self, now: Revision) {
        {
            let mut log = lock(&self.log);
            log.events.clear();
            log.start = now;
            log.through = now;
        }
        self.notify
            .send_modify(|latest| *latest = (*latest).max(now));
    }

    /// Reads the watch until it fails; the caller opens it again from where it stopped.
    async fn follow(&self) -> Result<(), etcd_client::Error> {
        let from = lock(&self.log).through + 1;
        let mut client = self.client.clone();
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_progress_notify()
            .with_start_revision(from_revision(from));
        let mut stream = client.watch(self.key("/"), Some(options)).await?;
        while let Some(response) = stream.message().await? {
            if response.compact_revision() > 0 {
                let now = client
                    .get(self.key("/"), Some(GetOptions::new().with_count_only()))
                    .await?;
                tracing::warn!(
                    "etcd compacted revision {} before this instance read it; watchers list again",
                    response.compact_revision()
                );
                self.restart_history(header_revision(now.header()));
                return Ok(());
            }
            if response.canceled() {
                return Err(etcd_client::Error::WatchError(format!(
                    "etcd cancelled the history watch: {}",
                    response.cancel_reason()
                )));
            }
            if response.created() {
                continue;
            }
            let mut events = Vec::with_capacity(response.events().len());
            for event in response.events() {
                match self.event(event) {
                    Ok(Some(event)) => events.push(event),
                    Ok(None) => {}
                    Err(e) => tracing::warn!("skipping an etcd event: {e}"),
                }
            }
            // A response without events is a progress notification: everything up to
            // its header's revision has been sent.
            let progress = if events.is_empty() {
                header_revision(response.header())
            } else {
                0
            };
            self.record(events, progress);
        }
        Err(etcd_client::Error::WatchError(
            "etcd closed the history watch".to_owned(),
        ))
    }
}

async fn watch_history(shared: Arc<Shared>) {
    loop {
        if let Err(e) = shared.follow().await {
            tracing::warn!("store history watch on {}: {e}", shared.config.url());
        }
        tokio::time::sleep(WATCH_RETRY).await;
    }
}

/// Which failed requests may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads: sending them twice changes nothing.
    Reads,
    /// Writes: only if etcd never got them (the connection was not made).
    Writes,
}

impl Retry {
    fn allows(self, error: &etcd_client::Error) -> bool {
        use etcd_client::Error as E;
        let unsent = |message: &str| message.contains("connect");
        match error {
            E::TransportError(e) => unsent(&e.to_string()) || self == Self::Reads,
            E::GRpcStatus(status) if status.code() == tonic::Code::Unavailable => {
                self == Self::Reads || unsent(status.message())
            }
            _ => false,
        }
    }
}

fn to_revision(revision: i64) -> Revision {
    u64::try_from(revision).unwrap_or(0)
}

fn from_revision(revision: Revision) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| to_revision(h.revision()))
}

/// The first key after every key starting with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: no end, which etcd spells "\0" (to the end of the keyspace).
    vec![0]
}

fn compare(key: Vec<u8>, precondition: Precondition) -> Option<Compare> {
    match precondition {
        Precondition::Always => None,
        Precondition::Absent => Some(Compare::create_revision(key, CompareOp::Equal, 0)),
        Precondition::Present => Some(Compare::create_revision(key, CompareOp::Greater, 0)),
        Precondition::ModRevision(revision) => Some(Compare::mod_revision(
            key,
            CompareOp::Equal,
            from_revision(revision),
        )),
    }
}

/// Locks ignoring poisoning: every critical section only moves values in or out.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let shared = &self.shared;
        let full = shared.key(key);
        let kvs = shared.call(self.runtime()?, Retry::Reads, move |mut client, _| {
            let full = full.clone();
            async move { Ok(client.get(full, None).await?.take_kvs()) }
        })?;
        kvs.first().map(|kv| shared.key_value(kv)).transpose()
    }

    fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let shared = &self.shared;
        let runtime = self.runtime()?;
        let start = shared.key(prefix);
        let end = prefix_end(&start);
        let mut from = start;
        let mut revision = 0;
        let mut items = Vec::new();
        // Pages of one snapshot: every page after the first reads at the first's revision.
        loop {
            let end = end.clone();
            let page_from = from.clone();
            let mut response = shared.call(runtime, Retry::Reads, move |mut client, _| {
                let mut options = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(LIST_PAGE);
                if revision > 0 {
                    options = options.with_revision(from_revision(revision));
                }
                let page_from = page_from.clone();
                async move { client.get(page_from, Some(options)).await }
            })?;
            if revision == 0 {
                revision = header_revision(response.header());
            }
            let more = response.more();
            let kvs = response.take_kvs();
            for kv in &kvs {
                items.push(shared.key_value(kv)?);
            }
            match kvs.last() {
                Some(last) if more => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok((items, revision)),
            }
        }
    }

    fn commit(&self, ops: Vec<Op>) -> Result<Revision> {
        let shared = &self.shared;
        if ops.len() > self.max_ops_per_commit() {
            return Err(StoreError::Backend(format!(
                "one transaction of {} operations: etcd takes at most {} (its --max-txn-ops, \
                 and this control plane's --etcd-max-txn-ops); raise both, or write in \
                 smaller parts",
                ops.len(),
                self.max_ops_per_commit()
            )));
        }
        let mut compares = Vec::new();
        let mut writes = Vec::new();
        // Read back on failure, to say which precondition failed.
        let mut checked: Vec<(String, Precondition)> = Vec::new();
        let mut written = HashSet::new();
        let mut puts = false;
        for op in &ops {
            let (key, precondition) = match op {
                Op::Put {
                    key,
                    value,
                    precondition,
                } => {
                    writes.push(TxnOp::put(shared.key(key), value.clone(), None));
                    puts = true;
                    (key, *precondition)
                }
                Op::Delete { key, precondition } => {
                    writes.push(TxnOp::delete(shared.key(key), None));
                    (key, *precondition)
                }
                Op::Check { key, precondition } => (key, *precondition),
            };
            if !matches!(op, Op::Check { .. }) && !written.insert(key.as_str()) {
                return Err(StoreError::Backend(format!(
                    "a transaction writes {key} twice, which etcd refuses"
                )));
            }
            if let Some(c) = compare(shared.key(key), precondition) {
                compares.push(c);
                checked.push((key.clone(), precondition));
            }
        }
        let reads: Vec<TxnOp> = checked
            .iter()
            .map(|(key, _)| TxnOp::get(shared.key(key), None))
            .collect();
        if let Some(fence) = &self.fence {
            compares.push(Compare::lease(
                fence.key.clone(),
                CompareOp::Equal,
                fence.lease,
            ));
        }
        let txn = Txn::new().when(compares).and_then(writes).or_else(reads);
        let response = shared.call(self.runtime()?, Retry::Writes, move |mut client, _| {
            let txn = txn.clone();
            async move { client.txn(txn).await }
        })?;
        let revision = header_revision(response.header());
        if !response.succeeded() {
            for ((key, precondition), read) in checked.iter().zip(response.op_responses()) {
                let existing = match read {
                    TxnOpResponse::Get(found) => found
                        .kvs()
                        .first()
                        .map(|kv| shared.key_value(kv))
                        .transpose()?,
                    _ => None,
                };
                check(key, *precondition, existing.as_ref())?;
            }
            return Err(match &self.fence {
                Some(fence) => StoreError::Fenced {
                    key: String::from_utf8_lossy(&fence.key).into_owned(),
                },
                None => {
                    StoreError::Backend("etcd refused the transaction's preconditions".to_owned())
                }
            });
        }
        let deleted = response
            .op_responses()
            .iter()
            .any(|r| matches!(r, TxnOpResponse::Delete(d) if d.deleted() > 0));
        if puts || deleted {
            // The transaction's events are in the history before the writer goes on.
            let mut observed = shared.notify.subscribe();
            let seen = wait_for(self.runtime()?, async move {
                tokio::time::timeout(REQUEST_TIMEOUT, observed.wait_for(|r| *r >= revision))
                    .await
                    .is_ok()
            });
            if seen != Some(true) {
                tracing::warn!(
                    "revision {revision} is committed but the history watch has not delivered it yet"
                );
            }
        }
        Ok(revision)
    }

    fn events_after(&self, after: Revision, limit: usize) -> Result<Vec<Event>> {
        let log = lock(&self.shared.log);
        if after < log.start {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: log.start,
            });
        }
        let first = log.events.partition_point(|e| e.revision() <= after);
        let mut events: Vec<Event> = Vec::new();
        let mut revisions = 0usize;
        for event in log.events.range(first..) {
            if events
                .last()
                .is_none_or(|e| e.revision() != event.revision())
            {
                if revisions == limit {
                    break;
                }
                revisions += 1;
            }
            events.push(event.clone());
        }
        Ok(events)
    }

    fn compact(&self, revision: Revision) -> Result<()> {
        let shared = &self.shared;
        let target = {
            let log = lock(&shared.log);
            let target = revision.min(log.through);
            if target <= log.start {
                return Ok(());
            }
            target
        };
        let compacted = shared.call(
            self.runtime()?,
            Retry::Reads,
            move |mut client, _| async move {
                match client.compact(from_revision(target), None).await {
                    Ok(_) => Ok(()),
                    // Another instance compacted as far already.
                    Err(etcd_client::Error::GRpcStatus(status))
                        if status.message().contains("compacted") =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            },
        );
        compacted?;
        let mut log = lock(&shared.log);
        while log.events.front().is_some_and(|e| e.revision() <= target) {
            log.events.pop_front();
        }
        log.start = log.start.max(target);
        Ok(())
    }

    fn revision(&self) -> Result<Revision> {
        self.shared.call(
            self.runtime()?,
            Retry::Reads,
            |mut client, key| async move {
                let response = client
                    .get(key, Some(GetOptions::new().with_count_only()))
                    .await?;
                Ok(header_revision(response.header()))
            },
        )
    }

    fn compacted_revision(&self) -> Result<Revision> {
        Ok(lock(&self.shared.log).start)
    }

    fn size_bytes(&self) -> Result<u64> {
        self.shared
            .call(self.runtime()?, Retry::Reads, |mut client, _| async move {
                Ok(u64::try_from(client.status().await?.db_size()).unwrap_or(0))
            })
    }

    fn subscribe(&self) -> watch::Receiver<Revision> {
        self.shared.notify.subscribe()
    }

    /// A fenced writer's transactions also compare its lease: one operation less.
    fn max_ops_per_commit(&self) -> usize {
        self.shared.config.max_txn_ops - usize::from(self.fence.is_some())
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
    use super::*;

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/berth/a"), b"/berth/b");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }
}
