//! The accept loop and the life of a connection.
//!
//! Pre-auth limits live here because russh has none: a cap on connections that have not
//! authenticated yet (checked right after accept; over the cap the connection is closed at
//! once), a per-source cap and per-source penalties (see `sources`), and a login-grace
//! deadline covering the PROXY header, version exchange, key exchange and authentication. After authentication the connection is watched for idleness and for
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
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep_until, timeout, timeout_at, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{LocalPoolHandle, TaskTracker};

use crate::audit::{Audit, Event};
use crate::budget::BufferBudget;
use crate::conn::{Conn, OpenTunnel};
use crate::handler::Handler;
use crate::proxy;
use crate::push::KeyPush;
use crate::socket::{with_cutter, ClientSocket};
use crate::sources::{Offence, Penalties, Source, Unauthenticated};

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
    preauth: Arc<Semaphore>,
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
            preauth: Arc::new(Semaphore::new(b.settings.max_unauthenticated)),
            penalties: Penalties::new(b.penalties),
            unauthenticated: Unauthenticated::new(b.limits.per_source_max_unauthenticated),
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

    fn refuse(&self, session: Option<&str>, source: SocketAddr, code: &str, reason: &str) {
        tracing::info!(session, %source, "connection refused: {reason}");
        self.audit.record(Event::ConnectionRefused {
            session,
            source,
            reason_code: code,
            reason,
        });
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
    tracing::info!("stopped");
}

async fn update_gauges(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(GAUGE_INTERVAL);
    loop {
        tick.tick().await;
        let refused = shared.penalties.refused_sources(Instant::now().into_std());
        metrics::gauge!("gatehouse_penalized_sources").set(refused as f64);
        metrics::gauge!("gatehouse_buffered_bytes").set(shared.budget.used() as f64);
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
                match shared.preauth.clone().try_acquire_owned() {
                    Ok(permit) => {
                        // The socket moves to the worker's runtime: deregister it from this
                        // one first.
                        let stream = match stream.into_std() {
                            Ok(s) => s,
                            Err(e) => {
                                let reason = format!("cannot set up the connection: {e}");
                                shared.refuse(None, peer, "internal", &reason);
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
                            permit,
                        )));
                        shared.workers.spawn_pinned(move || task);
                    }
                    Err(_) => shared.refuse(
                        None,
                        peer,
                        "too_many_unauthenticated",
                        "too many unauthenticated connections",
                    ),
                }
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
    preauth: OwnedSemaphorePermit,
) {
    match with_cutter(stream) {
        Ok((stream, cutter)) => connection(shared, stream, cutter, peer, proxied, preauth).await,
        Err(e) => {
            let reason = format!("cannot set up the connection: {e}");
            shared.refuse(None, peer, "internal", &reason);
        }
    }
}

async fn connection(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    cutter: std::net::TcpStream,
    peer: SocketAddr,
    proxied: bool,
    preauth: OwnedSemaphorePermit,
) {
    let deadline = Instant::now() + shared.settings.login_grace;
    // Behind a load balancer, the client is the one the PROXY header names.
    let source = if proxied {
        let wait = deadline.min(Instant::now() + PROXY_HEADER_WAIT);
        let header = tokio::select! {
            r = proxy::read_header(&mut stream, wait) => r,
            _ = shared.draining.cancelled() => {
                return shared.refuse(None, peer, "shutting_down", "the bastion is shutting down");
            }
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
    let Some(source_slot) = shared.unauthenticated.try_take(source.ip()) else {
        shared.refuse(
            None,
            source,
            "too_many_from_source",
            "too many unauthenticated connections from this source",
        );
        // A source that keeps opening more than its share never authenticates them either.
        shared.charge(source, Offence::NoAuth);
        return;
    };

    let conn = Arc::new(Conn::new(shared.next_session_id(), source));
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
    // cut by shutdown as well as by the grace deadline.
    let started = tokio::select! {
        r = timeout_at(
            deadline,
            russh::server::run_stream(shared.russh.clone(), stream, handler),
        ) => r,
        _ = shared.draining.cancelled() => {
            let reason = "the bastion is shutting down";
            shared.refuse(Some(&conn.id), source, "shutting_down", reason);
            return;
        }
    };
    let session = match started {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => {
            tracing::debug!(session = %conn.id, %source, "handshake failed: {e}");
            shared.charge(source, Offence::NoAuth);
            return;
        }
        Err(_) => {
            shared.refuse(
                Some(&conn.id),
                source,
                "login_grace",
                "login grace time exceeded",
            );
            shared.charge(source, Offence::GraceExceeded);
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
        _ = sleep_until(deadline) => PreAuthEnd::Cut("login_grace", "login grace time exceeded"),
        _ = shared.draining.cancelled() => {
            PreAuthEnd::Cut("shutting_down", "the bastion is shutting down")
        }
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
            drop((preauth, source_slot));
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
            close(&handle, session, &cutter, reason).await;
            match code {
                _ if logged_in => {}
                "login_grace" => shared.charge(source, Offence::GraceExceeded),
                "shutting_down" => {}
                _ => shared.charge(source, offence),
            }
            // The pre-auth slots are released only now, when the socket is really gone.
            drop((preauth, source_slot));
            return;
        }
    }
    drop((preauth, source_slot));

    let reason = authenticated_phase(&shared, &conn, &handle, session, &cutter).await;
    record_close(&shared, &conn, &reason);
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
