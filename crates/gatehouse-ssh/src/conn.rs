//! Per-connection state shared between the russh handler, the connection task and the
//! tunnel tasks: identity once authenticated, open tunnels, last activity.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// State of one client connection.
pub(crate) struct Conn {
    /// Session id used in logs and audit lines.
    pub id: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// When the connection was accepted.
    pub started: Instant,
    /// The login name, set once authentication succeeds.
    pub user: OnceLock<String>,
    /// Cancelled when the connection ends; tunnels stop with it.
    pub closed: CancellationToken,
    open_tunnels: AtomicUsize,
    /// Signalled whenever a tunnel closes.
    pub tunnel_closed: Notify,
    last_activity_ms: AtomicU64,
}

impl Conn {
    pub fn new(id: String, peer: SocketAddr) -> Self {
        Conn {
            id,
            peer,
            started: Instant::now(),
            user: OnceLock::new(),
            closed: CancellationToken::new(),
            open_tunnels: AtomicUsize::new(0),
            tunnel_closed: Notify::new(),
            last_activity_ms: AtomicU64::new(0),
        }
    }

    /// The login name, or "" before authentication.
    pub fn user(&self) -> &str {
        self.user.get().map(String::as_str).unwrap_or("")
    }

    /// Records activity now (bytes moved, a channel opened).
    pub fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last activity.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Number of tunnels open right now.
    pub fn open_tunnels(&self) -> usize {
        self.open_tunnels.load(Ordering::Acquire)
    }

    /// Counts a tunnel as open until the returned guard is dropped.
    pub fn tunnel_guard(self: &Arc<Self>) -> TunnelGuard {
        self.open_tunnels.fetch_add(1, Ordering::AcqRel);
        self.touch();
        TunnelGuard(self.clone())
    }
}

/// Keeps a tunnel counted as open; dropping it wakes the connection task.
pub(crate) struct TunnelGuard(Arc<Conn>);

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.0.open_tunnels.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
        // notify_one stores a permit if nobody waits yet, so the wake-up is never lost.
        self.0.tunnel_closed.notify_one();
    }
}
