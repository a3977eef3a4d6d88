//! The accept loop and the life of a connection.
//!
//! Pre-auth limits live here because russh has none: a cap on connections that have not
//! authenticated yet (checked right after accept; over the cap the connection is closed at
//! once) and a login-grace deadline covering the version exchange, key exchange and
//! authentication. After authentication the connection is watched for idleness and for
//! shutdown. Shutdown stops accepting, closes sessions without tunnels at once, lets tunnels
//! drain for the grace period, then closes everything.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_config::ServerConfig;
use gatehouse_directory::Snapshot;
use russh::Disconnect;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep_until, timeout, timeout_at, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{Audit, Event};
use crate::conn::Conn;
use crate::handler::Handler;

/// Everything the SSH server needs, built by the binary.
pub struct Bastion {
    /// The `[server]` settings.
    pub settings: ServerConfig,
    /// The russh configuration (algorithms, host key); see [`crate::russh_config`].
    pub russh: Arc<russh::server::Config>,
    /// The directory snapshots.
    pub directory: watch::Receiver<Arc<Snapshot>>,
    /// The audit sink.
    pub audit: Audit,
}

/// How long a session gets to act on our DISCONNECT before its socket is shut down under it.
/// russh does not process a disconnect while a key exchange is in progress, so a client that
/// stalls the key exchange would otherwise hold its connection forever.
const DISCONNECT_WAIT: Duration = Duration::from_secs(1);

/// Longest pause between accept retries after accept errors (e.g. out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// State shared by all connections of one server.
pub(crate) struct Shared {
    pub settings: ServerConfig,
    pub russh: Arc<russh::server::Config>,
    pub directory: watch::Receiver<Arc<Snapshot>>,
    pub audit: Audit,
    /// Connection and tunnel tasks, awaited on shutdown.
    pub tasks: TaskTracker,
    /// Cancelled when shutdown starts: stop accepting, refuse new tunnels.
    pub draining: CancellationToken,
    /// Cancelled when the grace period is over: close everything.
    pub stop: CancellationToken,
    preauth: Arc<Semaphore>,
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
            settings: b.settings,
            russh: b.russh,
            directory: b.directory,
            audit: b.audit,
            tasks: TaskTracker::new(),
            draining: CancellationToken::new(),
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
}

/// Serves SSH on `listeners` until `shutdown` completes, then drains (see module docs).
pub async fn serve(
    bastion: Bastion,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    let shared = Arc::new(Shared::new(bastion));
    for listener in listeners {
        shared.tasks.spawn(accept_loop(shared.clone(), listener));
    }
    shutdown.await;
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
        if timeout(DISCONNECT_WAIT, shared.tasks.wait()).await.is_err() {
            tracing::warn!("some sessions did not close in time; exiting anyway");
        }
    }
    tracing::info!("stopped");
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = shared.draining.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                match shared.preauth.clone().try_acquire_owned() {
                    Ok(permit) => {
                        shared
                            .tasks
                            .spawn(connection(shared.clone(), stream, peer, permit));
                    }
                    Err(_) => {
                        let reason = "too many unauthenticated connections";
                        tracing::warn!(%peer, "refused: {reason}");
                        shared.audit.record(Event::ConnectionRefused {
                            session: None,
                            source: peer,
                            reason,
                        });
                    }
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

async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    preauth: OwnedSemaphorePermit,
) {
    let conn = Arc::new(Conn::new(shared.next_session_id(), peer));
    // Tunnels of this connection stop when this task ends, however it ends.
    let _closed = conn.closed.clone().drop_guard();
    let refused = |reason: &str| {
        tracing::info!(session = %conn.id, %peer, "connection cut: {reason}");
        shared.audit.record(Event::ConnectionRefused {
            session: Some(&conn.id),
            source: peer,
            reason,
        });
    };
    let (stream, cutter) = match with_cutter(stream) {
        Ok(pair) => pair,
        Err(e) => return refused(&format!("cannot set up the connection: {e}")),
    };
    let _ = stream.set_nodelay(true);

    let deadline = Instant::now() + shared.settings.login_grace;
    let (auth_tx, auth_rx) = oneshot::channel();
    let handler = Handler::new(shared.clone(), conn.clone(), auth_tx);
    let session = match timeout_at(
        deadline,
        russh::server::run_stream(shared.russh.clone(), stream, handler),
    )
    .await
    {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => {
            tracing::debug!(session = %conn.id, %peer, "handshake failed: {e}");
            return;
        }
        Err(_) => return refused("login grace time exceeded"),
    };
    let handle = session.handle();
    let mut session = pin!(session);

    let cut = tokio::select! {
        r = &mut session => {
            if let Err(e) = r {
                tracing::debug!(session = %conn.id, %peer, "ended before authentication: {e}");
            }
            return;
        }
        r = auth_rx => match r {
            Ok(()) => None,
            // The handler is gone: the session is ending on its own.
            Err(_) => Some("connection ended before authentication"),
        },
        _ = sleep_until(deadline) => Some("login grace time exceeded"),
        _ = shared.draining.cancelled() => Some("the bastion is shutting down"),
    };
    if let Some(reason) = cut {
        refused(reason);
        close(&handle, session, &cutter, reason).await;
        // The pre-auth slot is released only now, when the socket is really gone.
        drop(preauth);
        return;
    }
    drop(preauth);

    let reason = authenticated_phase(&shared, &conn, &handle, session, &cutter).await;
    tracing::info!(session = %conn.id, user = conn.user(), "session closed: {reason}");
    shared.audit.record(Event::SessionClose {
        session: &conn.id,
        user: conn.user(),
        duration_ms: u64::try_from(conn.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        reason: &reason,
    });
}

/// Splits off a duplicate of the socket that can shut it down from outside the session.
fn with_cutter(stream: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let std_stream = stream.into_std()?;
    let cutter = std_stream.try_clone()?;
    Ok((TcpStream::from_std(std_stream)?, cutter))
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
        let verdict = match snapshot
            .inventory()
            .authorize(&principal, &tunnel.target, tunnel.port)
        {
            Ok(grant) if grant.dial == tunnel.dial => continue,
            Ok(grant) => format!(
                "host '{}' is now at {}, not {}",
                grant.host_id, grant.dial, tunnel.dial
            ),
            Err(refusal) => refusal.to_string(),
        };
        tracing::info!(session = %conn.id, user = %login.user, tunnel = id, "tunnel revoked: {verdict}");
        shared.audit.record(Event::TunnelRevoked {
            session: &conn.id,
            tunnel: id,
            user: &login.user,
            host: &tunnel.host,
            reason: &verdict,
        });
        tunnel.revoked.cancel();
    }
    None
}

/// Watches an authenticated session until it ends; returns why it ended.
async fn authenticated_phase<F, E>(
    shared: &Shared,
    conn: &Conn,
    handle: &russh::server::Handle,
    mut session: std::pin::Pin<&mut F>,
    cutter: &std::net::TcpStream,
) -> String
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
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
