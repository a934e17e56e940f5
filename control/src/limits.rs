//! What one client may hold of the server: connections per listener (with the TLS
//! handshake and idle timeouts around them) and API requests in flight per user, a simple
//! form of Kubernetes' API Priority and Fairness.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use crate::metrics::ConnectionMetrics;
use prometheus::IntCounterVec;

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::oneshot,
};

/// The limits on one listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once; past it the oldest still in its TLS handshake is shed.
    pub max: usize,
    /// Time a client has to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a client has to send a request's headers (HTTP/1; hyper also runs it while a
    /// connection waits for its next request).
    pub header_read_timeout: Duration,
    /// Time a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
}

/// Counts one listener's connections and decides who gets a slot.
///
/// When the listener is full, the oldest connection still in its TLS handshake is shed
/// to admit the new one; only when every open connection is established is the new one
/// refused. A real client's handshake takes a round trip or two, so it is among the
/// newest handshakes at any moment, while a flood of connections that never start TLS
/// is old by the time the listener fills up: shedding the oldest closes the flood's
/// connections first and lets real clients in while the flood goes on. Refusing new
/// connections instead (a plain cap) would lock everybody out for the handshake timeout;
/// shedding the newest would shed exactly the real clients.
#[derive(Clone)]
pub struct ConnectionLimiter {
    name: &'static str,
    max: usize,
    slots: Arc<Mutex<Slots>>,
    metrics: ConnectionMetrics,
}

#[derive(Default)]
struct Slots {
    /// Sockets open, shed ones not yet closed included.
    open: usize,
    next: u64,
    /// In order of arrival; the sender tells the connection's task it is shed.
    handshaking: BTreeMap<u64, oneshot::Sender<()>>,
    /// Shed but not yet closed: their slots already belong to newer connections.
    shed: HashSet<u64>,
}

/// An admitted connection: its socket, which frees the slot when dropped, and the signal
/// that it was shed during its handshake.
pub struct Admitted<T> {
    pub io: Tracked<T>,
    pub shed: oneshot::Receiver<()>,
}

impl ConnectionLimiter {
    pub fn new(name: &'static str, max: usize, metrics: ConnectionMetrics) -> Self {
        metrics.open.with_label_values(&[name]).set(0);
        // Every series from the start, so rates and alerts see a zero, not nothing.
        for counter in [&metrics.rejected, &metrics.shed] {
            counter.with_label_values(&[name]);
        }
        for phase in ["handshake", "idle"] {
            metrics.timed_out.with_label_values(&[name, phase]);
        }
        Self {
            name,
            max: max.max(1),
            slots: Arc::default(),
            metrics,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// A slot for `io`, counted as handshaking until [`Self::established`]; None when
    /// every slot holds an established connection (dropping `io` then closes it).
    pub fn admit<T>(&self, io: T) -> Option<Admitted<T>> {
        let mut slots = self.lock();
        if slots.open - slots.shed.len() >= self.max {
            let Some((oldest, shed)) = slots.handshaking.pop_first() else {
                self.metrics.rejected.with_label_values(&[self.name]).inc();
                return None;
            };
            // Its task may be gone already (then the slot is freed on drop anyway).
            let _ = shed.send(());
            slots.shed.insert(oldest);
            self.metrics.shed.with_label_values(&[self.name]).inc();
        }
        let id = slots.next;
        slots.next += 1;
        slots.open += 1;
        let (sender, receiver) = oneshot::channel();
        slots.handshaking.insert(id, sender);
        self.metrics.open.with_label_values(&[self.name]).inc();
        Some(Admitted {
            io: Tracked {
                inner: io,
                slot: Slot {
                    limiter: self.clone(),
                    id,
                },
            },
            shed: receiver,
        })
    }

    /// The connection finished its handshake: it is no longer shed for newcomers.
    pub fn established<T>(&self, io: &Tracked<T>) {
        self.lock().handshaking.remove(&io.slot.id);
    }

    pub fn timed_out(&self, phase: &'static str) {
        self.metrics
            .timed_out
            .with_label_values(&[self.name, phase])
            .inc();
    }

    fn release(&self, id: u64) {
        let mut slots = self.lock();
        if slots.handshaking.remove(&id).is_none() {
            slots.shed.remove(&id);
        }
        slots.open -= 1;
        self.metrics.open.with_label_values(&[self.name]).dec();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        // The counts stay consistent under every early return above: a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Slot {
    limiter: ConnectionLimiter,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limiter.release(self.id);
    }
}

/// A socket holding its listener slot for exactly as long as it is open, wherever it
/// goes (a TLS stream, an upgraded exec stream, tonic's connection).
pub struct Tracked<T> {
    inner: T,
    slot: Slot,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Tracked<tokio::net::TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Whether a connection has requests in flight, and since when it has none: what its
/// idle timeout counts from. Bytes are not activity: HTTP/2 pings and a slow client's
/// trickle keep no connection open.
#[derive(Clone)]
pub struct Activity {
    state: Arc<Mutex<(usize, tokio::time::Instant)>>,
    changed: Arc<tokio::sync::Notify>,
}

/// One request in flight on a connection, until dropped.
pub struct Busy(Activity);

impl Default for Activity {
    fn default() -> Self {
        Self {
            state: Arc::new(Mutex::new((0, tokio::time::Instant::now()))),
            changed: Arc::default(),
        }
    }
}

impl Activity {
    pub fn start(&self) -> Busy {
        self.lock().0 += 1;
        self.changed.notify_waiters();
        Busy(self.clone())
    }

    /// Returns once the connection has had no request in flight for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let changed = self.changed.notified();
            let (busy, since) = *self.lock();
            if busy > 0 {
                changed.await;
                continue;
            }
            let deadline = since + timeout;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = changed => {}
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, tokio::time::Instant)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        {
            let mut state = self.0.lock();
            state.0 = state.0.saturating_sub(1);
            state.1 = tokio::time::Instant::now();
        }
        self.0.changed.notify_waiters();
    }
}

/// `response` with `held` dropped only once its body is sent or abandoned: a watch
/// holds it until its stream ends, not only until its headers.
pub fn hold_until_sent<T: Send + Unpin + 'static>(
    response: axum::response::Response,
    held: T,
) -> axum::response::Response {
    response.map(|body| axum::body::Body::new(Held { body, _held: held }))
}

/// A body that keeps something alive as long as it is; its size is the inner body's, so
/// HTTP/1 answers keep their Content-Length.
struct Held<T> {
    body: axum::body::Body,
    _held: T,
}

impl<T: Unpin> hyper::body::Body for Held<T> {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The per-user limits on API requests.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Requests in flight per user, long-running ones (watches, exec, attach, port
    /// forwarding, followed logs, proxies) not counted.
    pub inflight_per_user: usize,
    /// Watches open per user.
    pub watches_per_user: usize,
}

/// How a request counts against its user's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestClass {
    /// Answered and done: counted in flight.
    Short,
    /// Counted against the watches.
    Watch,
    /// Exec, attach, port forwarding, followed logs, proxies: held by a person at a
    /// terminal, not counted (as Kubernetes exempts long-running requests).
    LongRunning,
}

impl RequestClass {
    pub fn of(attributes: &crate::authz::Attributes, query: &HashMap<String, String>) -> Self {
        let yes = |key: &str| {
            query
                .get(key)
                .is_some_and(|v| matches!(v.as_str(), "true" | "1"))
        };
        match attributes {
            crate::authz::Attributes::Resource { verb, .. } if verb == "watch" || yes("watch") => {
                Self::Watch
            }
            crate::authz::Attributes::Resource { subresource, .. }
                if matches!(
                    subresource.as_str(),
                    "exec" | "attach" | "portforward" | "proxy"
                ) || (subresource == "log" && yes("follow")) =>
            {
                Self::LongRunning
            }
            _ => Self::Short,
        }
    }
}

/// Which limit refused a request; the label of the rejection metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Inflight(usize),
    Watches(usize),
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Inflight(_) => "inflight",
            Self::Watches(_) => "watches",
        }
    }

    pub fn message(self, user: &str) -> String {
        match self {
            Self::Inflight(limit) => format!(
                "too many requests in flight for user {user:?}: the limit is {limit} \
                 (--max-requests-inflight-per-user); retry after the ones in flight are answered"
            ),
            Self::Watches(limit) => format!(
                "too many watches open for user {user:?}: the limit is {limit} \
                 (--max-watches-per-user); close some before opening more"
            ),
        }
    }
}

/// Requests in flight and watches open per user.
#[derive(Clone)]
pub struct UserLimiter {
    limits: RequestLimits,
    counts: Arc<Mutex<HashMap<String, Counts>>>,
    rejected: IntCounterVec,
}

#[derive(Default)]
struct Counts {
    inflight: usize,
    watches: usize,
}

/// A request's place in its user's counts, given back when dropped.
pub struct UserPermit {
    limiter: UserLimiter,
    user: String,
    class: RequestClass,
}

impl UserLimiter {
    /// `rejected` counts the refusals by `reason` (`inflight`, `watches`).
    pub fn new(limits: RequestLimits, rejected: IntCounterVec) -> Self {
        for reason in ["inflight", "watches"] {
            rejected.with_label_values(&[reason]);
        }
        Self {
            limits,
            counts: Arc::default(),
            rejected,
        }
    }

    /// A permit for one request of `user`, or the limit it is over.
    pub fn acquire(&self, user: &str, class: RequestClass) -> Result<UserPermit, Refused> {
        let mut counts = self.lock();
        let count = counts.entry(user.to_owned()).or_default();
        let refused = match class {
            RequestClass::Short if count.inflight >= self.limits.inflight_per_user => {
                Some(Refused::Inflight(self.limits.inflight_per_user))
            }
            RequestClass::Short => {
                count.inflight += 1;
                None
            }
            RequestClass::Watch if count.watches >= self.limits.watches_per_user => {
                Some(Refused::Watches(self.limits.watches_per_user))
            }
            RequestClass::Watch => {
                count.watches += 1;
                None
            }
            RequestClass::LongRunning => None,
        };
        if let Some(refused) = refused {
            if count.inflight == 0 && count.watches == 0 {
                counts.remove(user);
            }
            self.rejected.with_label_values(&[refused.reason()]).inc();
            return Err(refused);
        }
        Ok(UserPermit {
            limiter: self.clone(),
            user: user.to_owned(),
            class,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Counts>> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for UserPermit {
    fn drop(&mut self) {
        let mut counts = self.limiter.lock();
        let Some(count) = counts.get_mut(&self.user) else {
            return;
        };
        match self.class {
            RequestClass::Short => count.inflight = count.inflight.saturating_sub(1),
            RequestClass::Watch => count.watches = count.watches.saturating_sub(1),
            RequestClass::LongRunning => {}
        }
        // Users come and go: keep only those with something in flight.
        if count.inflight == 0 && count.watches == 0 {
            counts.remove(&self.user);
        }
    }
}

/// Raises the soft limit on open files to the hard limit, as servers do, so the
/// connection caps (not the default 1,024 descriptors) bound the connections.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and pass by valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads the struct we own and pass by valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// Turns transparent huge pages off for this process and its children, as databases
/// ask of their hosts (Redis, MongoDB). The control plane's heap grows by hundreds of
/// megabytes while it schedules thousands of pods, and with huge pages each first touch
/// of that growth zeroes 2 MiB at once: on a virtual machine whose memory the host backs
/// lazily that was a fifth of berth-control's CPU, and without them it scheduled about
/// a fifth more pods a second (docs/BENCHMARKS.md).
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_are_off_for_the_process_once_asked() {
        disable_transparent_huge_pages().expect("prctl");
        // SAFETY: PR_GET_THP_DISABLE takes integer arguments only and returns the flag.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1);
    }

    fn limiter(max: usize) -> (ConnectionLimiter, ConnectionMetrics) {
        let metrics = crate::metrics::Metrics::new().expect("metrics").connections;
        (ConnectionLimiter::new("api", max, metrics.clone()), metrics)
    }

    #[test]
    fn a_full_listener_sheds_its_oldest_handshake_first() {
        let (limiter, metrics) = limiter(3);
        let mut first = limiter.admit(1).expect("room");
        let second = limiter.admit(2).expect("room");
        let mut third = limiter.admit(3).expect("room");
        limiter.established(&second.io);
        // Full: the oldest handshake (the first) makes room, then the third; the
        // established second is never shed.
        let mut fourth = limiter.admit(4).expect("the first is shed");
        assert_eq!(first.shed.try_recv(), Ok(()));
        assert!(third.shed.try_recv().is_err());
        let _fifth = limiter.admit(5).expect("the third is shed");
        assert_eq!(third.shed.try_recv(), Ok(()));
        assert!(fourth.shed.try_recv().is_err());
        assert_eq!(metrics.shed.with_label_values(&["api"]).get(), 2);
        // Shed sockets still count as open until they close.
        assert_eq!(metrics.open.with_label_values(&["api"]).get(), 5);
        drop(first);
        drop(third);
        assert_eq!(metrics.open.with_label_values(&["api"]).get(), 3);
        assert_eq!(metrics.rejected.with_label_values(&["api"]).get(), 0);
    }

    #[test]
    fn a_listener_full_of_established_connections_refuses_new_ones() {
        let (limiter, metrics) = limiter(2);
        let a = limiter.admit(()).expect("room");
        let b = limiter.admit(()).expect("room");
        limiter.established(&a.io);
        limiter.established(&b.io);
        assert!(limiter.admit(()).is_none());
        assert_eq!(metrics.rejected.with_label_values(&["api"]).get(), 1);
        drop(a);
        assert!(
            limiter.admit(()).is_some(),
            "a closed connection frees its slot"
        );
    }

    #[test]
    fn a_shed_connection_closing_late_frees_no_second_slot() {
        let (limiter, _) = limiter(1);
        let old = limiter.admit(()).expect("room");
        let new = limiter.admit(()).expect("the old one is shed");
        limiter.established(&new.io);
        drop(old);
        // One slot, held by the established new connection.
        assert!(limiter.admit(()).is_none());
    }

    fn users(inflight: usize, watches: usize) -> UserLimiter {
        UserLimiter::new(
            RequestLimits {
                inflight_per_user: inflight,
                watches_per_user: watches,
            },
            crate::metrics::Metrics::new()
                .expect("metrics")
                .rejected_requests,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_with_no_request_in_flight() {
        let activity = Activity::default();
        let busy = activity.start();
        let idle = activity.idle_for(Duration::from_secs(5));
        tokio::pin!(idle);
        // Paused time jumps ahead whenever every task waits: a busy connection never
        // becomes idle however long its request takes.
        assert!(
            tokio::time::timeout(Duration::from_secs(60), idle.as_mut())
                .await
                .is_err()
        );
        drop(busy);
        let ended = tokio::time::Instant::now();
        idle.await;
        assert!(ended.elapsed() >= Duration::from_secs(5));
    }

    #[test]
    fn each_user_has_its_own_inflight_and_watch_limits() {
        let limiter = users(2, 1);
        let a1 = limiter.acquire("a", RequestClass::Short).expect("1 of 2");
        let _a2 = limiter.acquire("a", RequestClass::Short).expect("2 of 2");
        assert_eq!(
            limiter.acquire("a", RequestClass::Short).err(),
            Some(Refused::Inflight(2))
        );
        // Other users, watches and long-running requests are not held up by a's.
        let _b = limiter.acquire("b", RequestClass::Short).expect("b's own");
        let _w = limiter.acquire("a", RequestClass::Watch).expect("a watch");
        assert_eq!(
            limiter.acquire("a", RequestClass::Watch).err(),
            Some(Refused::Watches(1))
        );
        for _ in 0..5 {
            let _exec = limiter
                .acquire("a", RequestClass::LongRunning)
                .expect("not counted");
        }
        drop(a1);
        assert!(limiter.acquire("a", RequestClass::Short).is_ok());
        assert_eq!(limiter.rejected.with_label_values(&["inflight"]).get(), 1);
        assert_eq!(limiter.rejected.with_label_values(&["watches"]).get(), 1);
    }

    #[test]
    fn users_with_nothing_in_flight_are_forgotten() {
        let limiter = users(1, 1);
        let permit = limiter.acquire("a", RequestClass::Short).expect("room");
        assert!(limiter.acquire("a", RequestClass::Short).is_err());
        drop(limiter.acquire("b", RequestClass::Watch));
        drop(permit);
        assert!(limiter.lock().is_empty());
    }

    #[test]
    fn watches_and_long_running_requests_are_classed_by_their_attributes() {
        let class = |method: &str, path: &str, query: &[(&str, &str)]| {
            let query: HashMap<String, String> = query
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let method = axum::http::Method::from_bytes(method.as_bytes()).expect("method");
            RequestClass::of(
                &crate::authz::Attributes::of_request(&method, path, &query),
                &query,
            )
        };
        assert_eq!(
            class("GET", "/api/v1/pods", &[("watch", "true")]),
            RequestClass::Watch
        );
        assert_eq!(class("GET", "/api/v1/pods", &[]), RequestClass::Short);
        assert_eq!(
            class(
                "GET",
                "/api/v1/namespaces/d/pods/p/log",
                &[("follow", "true")]
            ),
            RequestClass::LongRunning
        );
        assert_eq!(
            class("GET", "/api/v1/namespaces/d/pods/p/log", &[]),
            RequestClass::Short
        );
        assert_eq!(
            class("POST", "/api/v1/namespaces/d/pods/p/exec", &[]),
            RequestClass::LongRunning
        );
        assert_eq!(class("GET", "/version", &[]), RequestClass::Short);
    }
}
