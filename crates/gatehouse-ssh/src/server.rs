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

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use russh::Disconnect;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{timeout, Instant, MissedTickBehavior};

use crate::admission::{Admit, Admitted, Grant, Phase, Progress};
use crate::audit::Event;
use crate::conn::Conn;
use crate::handler::Handler;
use crate::proxy;
use crate::refusals::INTERVAL as SUMMARY_INTERVAL;
use crate::revoke::{expired, recheck};
use crate::shared::{Bastion, Shared};
use crate::socket::{with_cutter, ClientSocket, VersionLine};
use crate::sources::{Offence, OverCap, Source};

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

/// Serves SSH on `listeners` until `shutdown` completes, then drains (see module docs).
pub async fn serve(
    mut bastion: Bastion,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()>,
) {
    crate::telemetry::init();
    let health = bastion.health.take();
    let control = bastion.control.take();
    let watchdog = bastion.watchdog.take();
    let shared = Arc::new(Shared::new(bastion));
    // Lines the audit log could not take are tried again until the process ends.
    tokio::spawn(shared.audit.clone().retry_pending());
    // Not tracked with the sessions either: it pings until the process ends.
    if let Some(watchdog) = watchdog {
        tokio::spawn(crate::liveness::run(shared.workers.clone(), watchdog));
    }
    // Not tracked with the sessions either: it answers until the process ends.
    if let Some(listener) = control {
        match tokio::net::UnixListener::from_std(listener) {
            Ok(listener) => {
                tokio::spawn(crate::control::serve(shared.clone(), listener));
            }
            Err(e) => tracing::warn!("control socket unusable: {e}"),
        }
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

    let _listed = shared.list_session(&conn);
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
    // Access that ends by itself (an expiry, a certificate's valid_before) ends exactly
    // then, not at the next snapshot: a timer, moved whenever a snapshot moves the end.
    let mut ends = None;
    let expiry = tokio::time::sleep(Duration::ZERO);
    let mut expiry = pin!(expiry);
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
                ends = conn.login.get().and_then(|l| l.access_ends(&snapshot));
                if let Some(at) = ends {
                    let left = at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
                    match Instant::now().checked_add(left) {
                        Some(deadline) => expiry.as_mut().reset(deadline),
                        // Past what a clock can hold: never, in practice.
                        None => ends = None,
                    }
                }
            }
            _ = &mut expiry, if ends.is_some() => {
                if let Some(at) = ends {
                    break expired(shared, conn, at);
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
