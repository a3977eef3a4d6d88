//! The accept loop and the life of a connection.
//!
//! Pre-auth limits live here because russh has none: the pre-auth slots, admitted by progress
//! right after accept (see `admission`: over the cap a newcomer takes the slot of the
//! least-progressed connection, or is closed at once), per-source and per-prefix caps and
//! per-source penalties (see `sources`), and deadlines per phase (`version_grace`, `kex_grace`,
//! `login_grace`) covering the PROXY header, version exchange, key exchange and
//! authentication. Refusals before authentication are counted exactly and written in bounded
//! ink (see `refusals`). After authentication the connection is watched for idleness and for
//! shutdown. Shutdown first waits `drain_delay` with the health endpoint answering 503 and
//! everything else serving (so a load balancer takes this bastion out), then stops accepting,
//! closes sessions without tunnels at once, lets tunnels drain for the grace period, then
//! closes everything.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_config::{LimitsConfig, PenaltiesConfig, ServerConfig};
use gatehouse_directory::Snapshot;
use russh::Disconnect;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{LocalPoolHandle, TaskTracker};

use crate::admission::{Admission, Admit, Admitted, Deadlines, Grant, Phase, Progress};
use crate::audit::{Audit, Event, SourceCount};
use crate::budget::BufferBudget;
use crate::conn::{Conn, OpenTunnel};
use crate::handler::Handler;
use crate::proxy;
use crate::push::KeyPush;
use crate::refusals::{Refusals, INTERVAL as SUMMARY_INTERVAL};
use crate::socket::{with_cutter, ClientSocket, VersionLine};
use crate::sources::{Offence, OverCap, Penalties, Source, Unauthenticated};

/// Everything the SSH server needs, built by the binary.
pub struct Bastion {
    /// The `[server]` settings.
    pub settings: ServerConfig,
    /// The `[limits]` settings.
    pub limits: LimitsConfig,
    /// The `[penalties]` settings.
    pub penalties: PenaltiesConfig,
    /// The russh configuration (algorithms, host key); see [`crate::russh_config`].
    pub russh: Arc<russh::server::Config>,
    /// The directory snapshots.
    pub directory: watch::Receiver<Arc<Snapshot>>,
    /// The audit sink.
    pub audit: Audit,
    /// The health endpoint's listener (`server.health_listen`), bound by the binary.
    pub health: Option<TcpListener>,
    /// Gives the user's key to a host before a tunnel to its SSH port, for grants that ask
    /// for it (`Grant::key_push`). `None`: such tunnels are refused (a static config never
    /// asks; an AWS one does only with `aws.instance_connect`, which sets this).
    pub key_push: Option<Arc<dyn KeyPush>>,
    /// Tells a supervisor the daemon is alive while every connection worker answers
    /// (systemd's watchdog, when `WATCHDOG_USEC` is set). `None`: nobody asks.
    pub watchdog: Option<crate::liveness::Watchdog>,
}

/// A bound listening socket.
pub struct Listener {
    /// The socket.
    pub socket: TcpListener,
    /// Whether connections start with a PROXY protocol v2 header (`server.proxy_listen`).
    pub proxy: bool,
}

/// How long a session gets to act on our DISCONNECT before its socket is shut down under it.
/// russh does not process a disconnect while a key exchange is in progress, so a client that
/// stalls the key exchange would otherwise hold its connection forever.
const DISCONNECT_WAIT: Duration = Duration::from_secs(1);

/// Longest pause between accept retries after accept errors (e.g. out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Longest wait for a load balancer's PROXY header (less if `login_grace` is shorter).
const PROXY_HEADER_WAIT: Duration = Duration::from_secs(5);

/// How often the penalized-sources gauge is refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// State shared by all connections of one server.
pub(crate) struct Shared {
    pub settings: ServerConfig,
    pub limits: LimitsConfig,
    pub russh: Arc<russh::server::Config>,
    pub directory: watch::Receiver<Arc<Snapshot>>,
    pub audit: Audit,
    pub key_push: Option<Arc<dyn KeyPush>>,
    /// Connection and tunnel tasks, awaited on shutdown.
    pub tasks: TaskTracker,
    /// Single-threaded runtimes, one per core: each connection lives on one of them with all
    /// its tasks (russh's session loop, tunnels, watchdogs), so handing a packet from the
    /// session to its tunnel never wakes another thread.
    workers: LocalPoolHandle,
    /// Cancelled when shutdown starts: stop accepting, refuse new tunnels.
    pub draining: CancellationToken,
    /// Cancelled at SIGTERM, `server.drain_delay` before `draining`: the health endpoint
    /// answers `503 draining` while everything else still serves.
    pub leaving: CancellationToken,
    /// Cancelled when the grace period is over: close everything.
    pub stop: CancellationToken,
    admission: Arc<Admission>,
    deadlines: Deadlines,
    refusals: Refusals,
    penalties: Penalties,
    unauthenticated: Unauthenticated,
    /// Authenticated connections per user.
    user_sessions: Mutex<HashMap<String, usize>>,
    /// Tunnels open or being dialed, bastion-wide.
    tunnels: AtomicUsize,
    /// Client bytes held for slow targets, bastion-wide (`limits.max_buffered_mib`).
    pub budget: BufferBudget,
    id_prefix: String,
    next_session: AtomicU64,
    next_tunnel: AtomicU64,
}

impl Shared {
    fn new(b: Bastion) -> Self {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Shared {
            admission: Admission::new(
                b.settings.max_unauthenticated,
                b.settings.eviction_min_age,
                b.settings.login_grace,
            ),
            deadlines: Deadlines {
                version: b.settings.version_grace,
                kex: b.settings.kex_grace,
                login: b.settings.login_grace,
            },
            refusals: Refusals::default(),
            penalties: Penalties::new(b.penalties),
            unauthenticated: Unauthenticated::new(
                b.limits.per_source_max_unauthenticated,
                b.limits.per_prefix_max_unauthenticated,
            ),
            user_sessions: Mutex::new(HashMap::new()),
            tunnels: AtomicUsize::new(0),
            budget: BufferBudget::from_config(b.limits.max_buffered_mib),
            settings: b.settings,
            limits: b.limits,
            russh: b.russh,
            directory: b.directory,
            audit: b.audit,
            key_push: b.key_push,
            tasks: TaskTracker::new(),
            workers: LocalPoolHandle::new(worker_count()),
            draining: CancellationToken::new(),
            leaving: CancellationToken::new(),
            stop: CancellationToken::new(),
            id_prefix: format!("{epoch:x}"),
            next_session: AtomicU64::new(1),
            next_tunnel: AtomicU64::new(1),
        }
    }

    fn next_session_id(&self) -> String {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.id_prefix)
    }

    pub fn next_tunnel_id(&self) -> u64 {
        self.next_tunnel.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts one more authenticated session of `user`, unless the user is at the limit.
    pub fn try_add_user_session(&self, user: &str) -> bool {
        let mut sessions = self.user_sessions.lock().unwrap_or_else(|e| e.into_inner());
        let count = sessions.entry(user.to_owned()).or_insert(0);
        if *count >= self.limits.max_sessions_per_user {
            return false;
        }
        *count += 1;
        true
    }

    pub(crate) fn remove_user_session(&self, user: &str) {
        let mut sessions = self.user_sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = sessions.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                sessions.remove(user);
            }
        }
    }

    /// Reserves a channel on `conn`, within `limits.max_channels_per_connection`: every
    /// channel counts, session channels too (each costs memory until the client closes it).
    pub fn try_channel_slot(&self, conn: &Arc<Conn>) -> Result<ChannelSlot, String> {
        let per_conn = self.limits.max_channels_per_connection;
        if conn
            .channels
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < per_conn).then_some(n + 1)
            })
            .is_err()
        {
            return Err(format!(
                "too many channels on this connection (limit {per_conn})"
            ));
        }
        Ok(ChannelSlot { conn: conn.clone() })
    }

    /// Reserves a tunnel on `conn`, within the per-connection and bastion-wide limits.
    pub fn try_tunnel_slot(self: &Arc<Self>, conn: &Arc<Conn>) -> Result<TunnelSlot, String> {
        let channel = self.try_channel_slot(conn)?;
        let total = self.limits.max_tunnels;
        if self
            .tunnels
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < total).then_some(n + 1)
            })
            .is_err()
        {
            return Err(format!("the bastion is at its tunnel limit ({total})"));
        }
        Ok(TunnelSlot {
            shared: self.clone(),
            _channel: channel,
        })
    }

    /// Refuses (or cuts) a connection before authentication: counted always, written in full
    /// only while its reason has few refusals this interval (`refusals`).
    fn refuse(&self, session: Option<&str>, source: SocketAddr, code: &'static str, reason: &str) {
        crate::telemetry::connection_refused(code);
        if !self.refusals.note(code, source.ip()) {
            return;
        }
        tracing::info!(session, %source, "connection refused: {reason}");
        self.audit.record(Event::ConnectionRefused {
            session,
            source,
            reason_code: code,
            reason,
        });
    }

    /// Charges a connection we cut before it authenticated (see [`cut`]): deadlines are
    /// `grace_exceeded`, shutdown nothing, an eviction like ending without authenticating
    /// (`offence`: `auth_failure` if it tried).
    fn charge_cut(&self, source: SocketAddr, code: &str, offence: Offence) {
        match code {
            "shutting_down" => {}
            "version_grace" | "kex_grace" | "login_grace" => {
                self.charge(source, Offence::GraceExceeded)
            }
            _ => self.charge(source, offence),
        }
    }

    /// Writes the summaries of the refusals that had no line of their own.
    fn summarize_refusals(&self) {
        for s in self.refusals.take() {
            let top: Vec<String> = s
                .top_sources
                .iter()
                .map(|(source, n)| format!("{source} ({n})"))
                .collect();
            tracing::warn!(
                reason_code = s.reason_code,
                "{} connections refused in the last {}s ({} logged one by one); {} sources, most from: {}",
                s.count,
                SUMMARY_INTERVAL.as_secs(),
                s.itemized,
                s.sources,
                top.join(", ")
            );
            self.audit.record(Event::ConnectionRefusedSummary {
                reason_code: s.reason_code,
                count: s.count,
                itemized: s.itemized,
                interval_s: SUMMARY_INTERVAL.as_secs(),
                sources: s.sources,
                top_sources: s
                    .top_sources
                    .iter()
                    .map(|(source, count)| SourceCount {
                        source,
                        count: *count,
                    })
                    .collect(),
            });
        }
    }

    /// Charges a connection that ended without authenticating to its source.
    fn charge(&self, source: SocketAddr, offence: Offence) {
        metrics::counter!("gatehouse_penalties_total", "offence" => offence.label()).increment(1);
        if let Some(balance) =
            self.penalties
                .charge(source.ip(), offence, Instant::now().into_std())
        {
            let who = Source::of(source.ip()).to_string();
            tracing::warn!(source = %who, "penalized: new connections refused for {}s", balance.as_secs());
            self.audit.record(Event::SourcePenalized {
                source: &who,
                seconds: balance.as_secs(),
                offence: offence.label(),
            });
        }
    }
}

/// A reserved channel of a connection: released when dropped.
pub(crate) struct ChannelSlot {
    conn: Arc<Conn>,
}

impl Drop for ChannelSlot {
    fn drop(&mut self) {
        self.conn.channels.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A reserved tunnel: released (on the connection and bastion-wide) when dropped.
pub(crate) struct TunnelSlot {
    shared: Arc<Shared>,
    _channel: ChannelSlot,
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        self.shared.tunnels.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves SSH on `listeners` until `shutdown` completes, then drains (see module docs).
pub async fn serve(
    mut bastion: Bastion,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()>,
) {
    let health = bastion.health.take();
    let watchdog = bastion.watchdog.take();
    let shared = Arc::new(Shared::new(bastion));
    // Lines the audit log could not take are tried again until the process ends.
    tokio::spawn(shared.audit.clone().retry_pending());
    // Not tracked with the sessions either: it pings until the process ends.
    if let Some(watchdog) = watchdog {
        tokio::spawn(crate::liveness::run(shared.workers.clone(), watchdog));
    }
    // Not tracked with the sessions: it answers `503 draining` until the process ends.
    if let Some(listener) = health {
        tokio::spawn(crate::health::serve(shared.clone(), listener));
    }
    tracing::info!(
        "client bytes held for slow targets: at most {} MiB bastion-wide (limits.max_buffered_mib)",
        shared.budget.limit() >> 20
    );
    for listener in listeners {
        shared.tasks.spawn(accept_loop(shared.clone(), listener));
    }
    let gauges = tokio::spawn(update_gauges(shared.clone()));
    let summaries = tokio::spawn(summarize_refusals(shared.clone()));
    let dispatch = tokio::spawn(shared.admission.clone().dispatch());
    shutdown.await;
    gauges.abort();
    let delay = shared.settings.drain_delay;
    if !delay.is_zero() {
        tracing::info!(
            "shutting down: health checks answer 503 from now; still serving for {} \
             (server.drain_delay) so the load balancer takes this bastion out first",
            humantime::format_duration(delay)
        );
        shared.leaving.cancel();
        tokio::time::sleep(delay).await;
    }
    let grace = shared.settings.shutdown_grace;
    tracing::info!(
        "shutting down: no new connections; open tunnels may drain for {}",
        humantime::format_duration(grace)
    );
    shared.draining.cancel();
    shared.tasks.close();
    if timeout(grace, shared.tasks.wait()).await.is_err() {
        tracing::warn!("grace period over: closing the remaining sessions");
        shared.stop.cancel();
        if timeout(DISCONNECT_WAIT * 2, shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some sessions did not close in time; exiting anyway");
        }
    }
    summaries.abort();
    dispatch.abort();
    shared.summarize_refusals();
    tracing::info!("stopped");
}

async fn update_gauges(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(GAUGE_INTERVAL);
    loop {
        tick.tick().await;
        let refused = shared.penalties.refused_sources(Instant::now().into_std());
        metrics::gauge!("gatehouse_penalized_sources").set(refused as f64);
        metrics::gauge!("gatehouse_buffered_bytes").set(shared.budget.used() as f64);
        metrics::gauge!("gatehouse_unauthenticated").set(shared.admission.held() as f64);
        let untracked = shared.penalties.take_untracked();
        if untracked > 0 {
            tracing::warn!(
                "penalty table full (penalties.max_sources): {untracked} charges to untracked \
                 sources in the last {}s",
                GAUGE_INTERVAL.as_secs()
            );
        }
    }
}

/// Every [`SUMMARY_INTERVAL`], the summaries of refusals that had no line of their own.
async fn summarize_refusals(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SUMMARY_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        shared.summarize_refusals();
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: Listener) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = shared.draining.cancelled() => return,
            r = listener.socket.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                if listener.proxy
                    && !shared
                        .settings
                        .trusted_proxies
                        .iter()
                        .any(|net| net.contains(&peer.ip().to_canonical()))
                {
                    shared.refuse(
                        None,
                        peer,
                        "untrusted_proxy",
                        "PROXY listener: the peer is not in server.trusted_proxies",
                    );
                    continue;
                }
                // The socket moves to the worker's runtime: deregister it from this one first.
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        let reason = format!("cannot set up the connection: {e}");
                        shared.refuse(None, peer, "internal", &reason);
                        continue;
                    }
                };
                let phase = if version_line_waiting(&stream, listener.proxy) {
                    Phase::Version
                } else {
                    Phase::Connected
                };
                let entry = match shared.admission.admit(Instant::now(), phase) {
                    // An evicted connection is cut, audited and charged by its own task.
                    Admit::Now((admitted, _evicted)) => Entry::Admitted(admitted),
                    Admit::Wait(turn) => Entry::Waiting(turn),
                    Admit::Full => {
                        shared.refuse(
                            None,
                            peer,
                            "too_many_unauthenticated",
                            "too many unauthenticated connections",
                        );
                        continue;
                    }
                };
                // Boxed: `spawn_pinned` keeps a task of its own, sized to hold the
                // closure, for the connection's whole life; a pointer keeps that task
                // small (the future itself is several KiB: 3.3 KiB per idle session
                // measured).
                let task = Box::pin(shared.tasks.track_future(on_worker(
                    shared.clone(),
                    stream,
                    peer,
                    listener.proxy,
                    entry,
                )));
                shared.workers.spawn_pinned(move || task);
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
}

/// How many single-threaded runtimes serve connections: `TOKIO_WORKER_THREADS` if set (the
/// variable tokio's own runtime reads), else one per available core.
fn worker_count() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

/// A connection, on the worker runtime that polls this future: the socket is registered
/// here, once.
async fn on_worker(
    shared: Arc<Shared>,
    stream: std::net::TcpStream,
    peer: SocketAddr,
    proxied: bool,
    entry: Entry,
) {
    let (stream, cutter) = match with_cutter(stream) {
        Ok(registered) => registered,
        Err(e) => {
            let reason = format!("cannot set up the connection: {e}");
            return shared.refuse(None, peer, "internal", &reason);
        }
    };
    let admitted = match entry {
        Entry::Admitted(admitted) => admitted,
        Entry::Waiting(turn) => match wait_for_slot(&shared, &stream, proxied, turn).await {
            Ok((admitted, _evicted)) => admitted,
            Err((code, reason)) => return shared.refuse(None, peer, code, reason),
        },
    };
    connection(shared, stream, cutter, peer, proxied, admitted).await
}

/// Whether the client's SSH version line is already waiting on the socket (peeked: nothing is
/// read), behind the PROXY header on a PROXY listener: the progress a newcomer brings to
/// admission. OpenSSH sends its version line as soon as it is connected.
fn version_line_waiting(stream: &std::net::TcpStream, proxied: bool) -> bool {
    let mut buf = [0u8; proxy::PEEK_LEN];
    let Ok(n) = stream.peek(&mut buf) else {
        return false;
    };
    speaks(&buf[..n], proxied)
}

/// Whether the first bytes of a connection (peeked) hold the client's whole version line,
/// behind the PROXY header on a PROXY listener.
fn speaks(bytes: &[u8], proxied: bool) -> bool {
    let ssh = if proxied {
        proxy::after_header(bytes)
    } else {
        Some(bytes)
    };
    ssh.is_some_and(VersionLine::complete_in)
}

/// How a connection entered: with its pre-auth slot, or in the queue for one.
enum Entry {
    Admitted(Admitted),
    Waiting(oneshot::Receiver<Grant>),
}

/// How often a waiting connection that spoke up tries to go ahead of the queue.
const AHEAD_RETRY: Duration = Duration::from_millis(20);

/// Waits in the queue for a pre-auth slot (see `admission`), at most `version_grace`. Nothing
/// is read meanwhile, but once the client's version line is there (peeked) it tries to go
/// ahead. Not charged if it gets none (like the cap).
async fn wait_for_slot(
    shared: &Shared,
    stream: &TcpStream,
    proxied: bool,
    mut turn: oneshot::Receiver<Grant>,
) -> Result<Grant, (&'static str, &'static str)> {
    let full = (
        "too_many_unauthenticated",
        "too many unauthenticated connections (no slot while it waited)",
    );
    let deadline = Instant::now() + shared.deadlines.version;
    let mut spoke = false;
    loop {
        tokio::select! {
            // An error: pushed out of a full queue.
            grant = &mut turn => return grant.map_err(|_| full),
            ready = stream.readable(), if !spoke => {
                let mut buf = [0u8; proxy::PEEK_LEN];
                let n = match ready {
                    Ok(()) => stream.peek(&mut buf).await.unwrap_or(0),
                    Err(_) => 0,
                };
                if n == 0 {
                    return Err(full);
                }
                if speaks(&buf[..n], proxied) {
                    spoke = true;
                } else {
                    // Part of it: look again in a moment (readiness stays set until a read).
                    tokio::time::sleep(AHEAD_RETRY).await;
                }
            }
            _ = tokio::time::sleep(AHEAD_RETRY), if spoke => {}
            _ = tokio::time::sleep_until(deadline) => return Err(full),
            _ = shared.draining.cancelled() => {
                return Err(("shutting_down", "the bastion is shutting down"));
            }
        }
        if spoke {
            if let Some(grant) = shared.admission.try_ahead(Instant::now(), Phase::Version) {
                return Ok(grant);
            }
        }
    }
}

async fn connection(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    cutter: std::net::TcpStream,
    peer: SocketAddr,
    proxied: bool,
    admitted: Admitted,
) {
    let progress = admitted.0.clone();
    // Whatever cuts this connection before it authenticates: its phase's deadline, a
    // newcomer taking its slot, shutdown.
    let mut cut = pin!(cut(&shared, admitted.0.clone()));
    // Behind a load balancer, the client is the one the PROXY header names.
    let source = if proxied {
        let wait = Instant::now() + PROXY_HEADER_WAIT.min(shared.settings.login_grace);
        let header = tokio::select! {
            r = proxy::read_header(&mut stream, wait) => r,
            // Not charged: until the header is read, the peer is the balancer.
            (code, reason) = &mut cut => return shared.refuse(None, peer, code, reason),
        };
        match header {
            Ok(Some(client)) => client,
            Ok(None) => peer,
            Err(e) => {
                return shared.refuse(None, peer, "bad_proxy_header", &e.to_string());
            }
        }
    } else {
        peer
    };
    if let Some(left) = shared
        .penalties
        .refused(source.ip(), Instant::now().into_std())
    {
        let reason = format!(
            "source {} is penalized for {}s more",
            Source::of(source.ip()),
            left.as_secs().max(1)
        );
        return shared.refuse(None, source, "penalized", &reason);
    }
    let source_slot = match shared.unauthenticated.try_take(source.ip()) {
        Ok(slot) => slot,
        Err(over) => {
            let (code, reason) = match over {
                OverCap::Source => (
                    "too_many_from_source",
                    "too many unauthenticated connections from this source",
                ),
                OverCap::Prefix => (
                    "too_many_from_prefix",
                    "too many unauthenticated connections from this source's network",
                ),
            };
            shared.refuse(None, source, code, reason);
            // A source that keeps opening more than its share never authenticates them either.
            shared.charge(source, Offence::NoAuth);
            return;
        }
    };

    let conn = Arc::new(Conn::new(shared.next_session_id(), source, progress));
    // Tunnels of this connection stop when this task ends, however it ends.
    let _closed = conn.closed.clone().drop_guard();
    // The per-user session count, taken by the handler on success, is returned on every path.
    let _user_session = UserSessionGuard {
        shared: &shared,
        conn: &conn,
    };
    let _ = stream.set_nodelay(true);
    let stream = ClientSocket::new(stream, conn.clone());

    let (auth_tx, auth_rx) = oneshot::channel();
    let handler = Handler::new(shared.clone(), conn.clone(), auth_tx);
    // The version exchange happens in here: a client that never sends its version line is
    // cut by its deadline, an eviction or shutdown like any other.
    let started = tokio::select! {
        r = russh::server::run_stream(shared.russh.clone(), stream, handler) => r,
        (code, reason) = &mut cut => {
            shared.refuse(Some(&conn.id), source, code, reason);
            shared.charge_cut(source, code, Offence::NoAuth);
            return;
        }
    };
    let session = match started {
        Ok(session) => session,
        Err(e) => {
            tracing::debug!(session = %conn.id, %source, "handshake failed: {e}");
            shared.charge(source, Offence::NoAuth);
            return;
        }
    };
    let handle = session.handle();
    let mut session = pin!(session);

    // Each arm says how the pre-auth phase ended. The session future is polled again only
    // where it has not completed: a completed `RunningSession` panics if polled again.
    let phase = tokio::select! {
        r = &mut session => {
            if let Err(e) = r {
                tracing::debug!(session = %conn.id, %source, "ended before authentication: {e}");
            }
            PreAuthEnd::Ended
        }
        r = auth_rx => match r {
            Ok(()) => PreAuthEnd::Authenticated,
            // The handler is gone: the session is ending on its own.
            Err(_) => PreAuthEnd::Ending,
        },
        (code, reason) = &mut cut => PreAuthEnd::Cut(code, reason),
    };
    let offence = if conn.auth_failures() > 0 {
        Offence::AuthFailure
    } else {
        Offence::NoAuth
    };
    // The handler records the login before russh reports success: a client that leaves in
    // between has authenticated (auth.success is in the audit log), so it is not charged and
    // its session is closed like any other.
    let logged_in = conn.login.get().is_some();
    match phase {
        PreAuthEnd::Authenticated => {}
        PreAuthEnd::Ended | PreAuthEnd::Ending if logged_in => {
            if matches!(phase, PreAuthEnd::Ending) {
                let _ = timeout(DISCONNECT_WAIT, &mut session).await;
            }
            drop((admitted, source_slot));
            return record_close(&shared, &conn, "client disconnected");
        }
        PreAuthEnd::Ended => {
            shared.charge(source, offence);
            return;
        }
        PreAuthEnd::Ending => {
            let _ = timeout(DISCONNECT_WAIT, &mut session).await;
            shared.charge(source, offence);
            return;
        }
        PreAuthEnd::Cut(code, reason) => {
            shared.refuse(Some(&conn.id), source, code, reason);
            if code == EVICTED.0 {
                // Its slot is someone else's already: no politeness, the socket goes now.
                let _ = cutter.shutdown(std::net::Shutdown::Both);
                let _ = timeout(DISCONNECT_WAIT, &mut session).await;
            } else {
                close(&handle, session, &cutter, reason).await;
            }
            if !logged_in {
                shared.charge_cut(source, code, offence);
            }
            // The per-source slots are released only now, when the socket is really gone.
            drop((admitted, source_slot));
            return;
        }
    }
    drop((admitted, source_slot));

    let reason = authenticated_phase(&shared, &conn, &handle, session, &cutter).await;
    record_close(&shared, &conn, &reason);
}

/// The audit code and reason of an eviction.
const EVICTED: (&str, &str) = (
    "evicted",
    "every pre-authentication slot is taken and this connection had made the least progress",
);

/// Completes when a connection that has not authenticated must be cut: its phase's deadline
/// passed, a newcomer took its slot, or shutdown began. The audit code and reason.
async fn cut(shared: &Shared, progress: Arc<Progress>) -> (&'static str, &'static str) {
    tokio::select! {
        c = progress.deadline(shared.deadlines) => c,
        _ = progress.evicted.cancelled() => EVICTED,
        _ = shared.draining.cancelled() => ("shutting_down", "the bastion is shutting down"),
    }
}

/// Logs and audits the end of an authenticated session.
fn record_close(shared: &Shared, conn: &Conn, reason: &str) {
    tracing::info!(session = %conn.id, user = conn.user(), "session closed: {reason}");
    shared.audit.record(Event::SessionClose {
        session: &conn.id,
        user: conn.user(),
        duration_ms: u64::try_from(conn.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        reason,
    });
}

/// How the pre-authentication phase of a connection ended.
enum PreAuthEnd {
    /// The client authenticated.
    Authenticated,
    /// The session future completed (the client left or the protocol failed).
    Ended,
    /// The handler is gone, so the session is ending; its future has not completed yet.
    Ending,
    /// We cut it: (audit reason code, reason).
    Cut(&'static str, &'static str),
}

/// Returns the user's session count when the connection ends, if the handler took one.
struct UserSessionGuard<'a> {
    shared: &'a Shared,
    conn: &'a Conn,
}

impl Drop for UserSessionGuard<'_> {
    fn drop(&mut self) {
        if let Some(login) = self.conn.login.get() {
            self.shared.remove_user_session(&login.user);
        }
    }
}

/// Ends a session: a polite DISCONNECT with `reason`, then, if the session has not ended
/// within [`DISCONNECT_WAIT`], the socket shut down under it.
async fn close<F: Future>(
    handle: &russh::server::Handle,
    mut session: std::pin::Pin<&mut F>,
    cutter: &std::net::TcpStream,
    reason: &str,
) {
    let polite = async {
        let _ = handle
            .disconnect(Disconnect::ByApplication, reason.into(), "en".into())
            .await;
        (&mut session).await;
    };
    if timeout(DISCONNECT_WAIT, polite).await.is_err() {
        let _ = cutter.shutdown(std::net::Shutdown::Both);
        let _ = timeout(DISCONNECT_WAIT, &mut session).await;
    }
}

/// Re-checks an open session against a new snapshot. Closes the tunnels that are no longer
/// allowed; returns a reason if the whole session must close (its key was revoked).
fn recheck(shared: &Shared, conn: &Conn, snapshot: &Snapshot) -> Option<String> {
    let login = conn.login.get()?;
    let principal = match snapshot.recheck(&login.user, &login.key) {
        Ok(principal) => principal,
        Err(refusal) => {
            let reason = format!(
                "key {} is no longer valid for user '{}' ({})",
                login.fingerprint,
                login.user,
                refusal.code()
            );
            tracing::info!(session = %conn.id, user = %login.user, "session revoked: {reason}");
            shared.audit.record(Event::SessionRevoked {
                session: &conn.id,
                user: &login.user,
                key: &login.fingerprint,
                reason: &reason,
            });
            return Some(format!("revoked: {reason}"));
        }
    };
    for (id, tunnel) in conn.tunnels() {
        recheck_tunnel(shared, conn, &principal, id, &tunnel, snapshot);
    }
    None
}

/// Re-checks one tunnel (open, or registered and still dialing) of an authenticated session:
/// if `snapshot` no longer allows it, audits the revocation and cancels the tunnel. Returns
/// whether it was revoked.
pub(crate) fn recheck_tunnel(
    shared: &Shared,
    conn: &Conn,
    principal: &gatehouse_policy::Principal,
    id: u64,
    tunnel: &OpenTunnel,
    snapshot: &Snapshot,
) -> bool {
    let verdict = match snapshot
        .inventory()
        .authorize(principal, &tunnel.target, tunnel.port)
    {
        Ok(grant) if grant.dial == tunnel.dial => return false,
        Ok(grant) => format!(
            "host '{}' is now at {}, not {}",
            grant.host_id, grant.dial, tunnel.dial
        ),
        Err(refusal) => refusal.to_string(),
    };
    let user = conn.user();
    tracing::info!(session = %conn.id, user, tunnel = id, "tunnel revoked: {verdict}");
    shared.audit.record(Event::TunnelRevoked {
        session: &conn.id,
        tunnel: id,
        user,
        host: &tunnel.host,
        reason: &verdict,
    });
    tunnel.revoked.cancel();
    true
}

/// Watches an authenticated session until it ends; returns why it ended.
async fn authenticated_phase<F>(
    shared: &Shared,
    conn: &Conn,
    handle: &russh::server::Handle,
    mut session: std::pin::Pin<&mut F>,
    cutter: &std::net::TcpStream,
) -> String
where
    F: Future<Output = Result<(), russh::Error>>,
{
    let idle_limit = shared.settings.idle_timeout;
    let mut idle_check = tokio::time::interval(
        (idle_limit / 4).clamp(Duration::from_millis(100), Duration::from_secs(30)),
    );
    idle_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut draining = false;
    // Every snapshot published after authentication is checked against this session.
    let mut directory = shared.directory.clone();
    directory.mark_changed();
    let mut directory_open = true;
    let close_reason = loop {
        tokio::select! {
            changed = directory.changed(), if directory_open => {
                if changed.is_err() {
                    // The publisher is gone: the last snapshot stays in force.
                    directory_open = false;
                    continue;
                }
                let snapshot = directory.borrow_and_update().clone();
                if let Some(reason) = recheck(shared, conn, &snapshot) {
                    break reason;
                }
            }
            r = &mut session => {
                return match r {
                    Ok(()) => "client disconnected".into(),
                    // OpenSSH ends a `-W` / ProxyJump session by closing the connection,
                    // without a disconnect message: an ordinary logout, not an error. A client
                    // that closes while our last packets (a channel's close) are unread sends
                    // a reset instead, which can overtake its own DISCONNECT: a logout too.
                    Err(russh::Error::IO(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                        ) =>
                    {
                        "client closed the connection".into()
                    }
                    Err(e) => format!("connection error: {e}"),
                };
            }
            _ = idle_check.tick() => {
                if conn.idle_for() >= idle_limit {
                    break format!("idle for {}", humantime::format_duration(idle_limit));
                }
            }
            _ = shared.draining.cancelled(), if !draining => {
                draining = true;
                if conn.open_tunnels() == 0 {
                    break "the bastion is shutting down".to_owned();
                }
            }
            _ = conn.tunnel_closed.notified(), if draining => {
                if conn.open_tunnels() == 0 {
                    break "the bastion is shutting down".to_owned();
                }
            }
            _ = shared.stop.cancelled() => {
                break "the bastion is shutting down (grace period over)".to_owned();
            }
        }
    };
    close(handle, session, cutter, &close_reason).await;
    close_reason
}
