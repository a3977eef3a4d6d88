//! Per-connection state shared between the russh handler, the connection task and the
//! tunnel tasks: identity once authenticated, open tunnels, last activity.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use russh::keys::PublicKey;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::admission::Progress;

/// How the connection authenticated: re-checked against every new directory snapshot.
pub(crate) struct Login {
    pub user: String,
    /// The key that signed: a plain key, or the key of the certificate.
    pub key: PublicKey,
    pub fingerprint: String,
    /// The certificate, for a certificate login: re-checked by user only (the CA vouched
    /// for the key), or by its `[sso]` mapping entry for the bastion's own CA, and the
    /// session ends at its `valid_before`.
    pub certificate: Option<gatehouse_directory::certificate::CertLogin>,
}

impl Login {
    /// The principal `snapshot` gives this login now, or why it gives none.
    pub fn recheck(
        &self,
        snapshot: &gatehouse_directory::Snapshot,
    ) -> Result<gatehouse_policy::Principal, gatehouse_directory::LoginRefusal> {
        match &self.certificate {
            None => snapshot.recheck(&self.user, &self.key),
            Some(cert) => {
                if let Some(end) = cert.valid_before.filter(|t| SystemTime::now() >= *t) {
                    return Err(gatehouse_directory::LoginRefusal::Expired(end));
                }
                match &cert.via {
                    Some(via) => snapshot.recheck_via(via, &self.user),
                    None => snapshot.recheck_user(&self.user),
                }
            }
        }
    }

    /// When this login's access ends under `snapshot`: the identity's (and key's) expiry,
    /// and a certificate's `valid_before`, whichever comes first. `None`: never.
    pub fn access_ends(&self, snapshot: &gatehouse_directory::Snapshot) -> Option<SystemTime> {
        let directory = match &self.certificate {
            None => snapshot.access_ends(&self.user, Some(&self.key)),
            Some(_) => snapshot.access_ends(&self.user, None),
        };
        let cert = self.certificate.as_ref().and_then(|c| c.valid_before);
        match (directory, cert) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// An open tunnel, as the revocation check needs it.
#[derive(Clone)]
pub(crate) struct OpenTunnel {
    /// The target exactly as the client sent it (re-resolved on every check).
    pub target: String,
    pub port: u32,
    /// Where it was dialed: a host that moved has its tunnels closed too.
    pub dial: SocketAddr,
    pub host: String,
    /// Cancelled to close this tunnel.
    pub revoked: CancellationToken,
    /// What it moved, as it moves (`gatehouse sessions` reads it).
    pub bytes: Arc<TunnelBytes>,
}

/// Bytes a tunnel moved each way and when it last moved any: for its audit line, the metrics
/// and the operator's view.
pub(crate) struct TunnelBytes {
    up: AtomicU64,
    down: AtomicU64,
    opened: Instant,
    /// Milliseconds after `opened` that bytes last moved.
    last_ms: AtomicU64,
}

impl TunnelBytes {
    pub fn new() -> Self {
        TunnelBytes {
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// `n` bytes written to the target.
    pub fn add_up(&self, n: u64) {
        self.up.fetch_add(n, Ordering::Relaxed);
        self.moved();
    }

    /// `n` bytes read from the target.
    pub fn add_down(&self, n: u64) {
        self.down.fetch_add(n, Ordering::Relaxed);
        self.moved();
    }

    fn moved(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Client to target, so far.
    pub fn up(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }

    /// Target to client, so far.
    pub fn down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }

    /// Time since bytes last moved (since it opened, if none has).
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }
}

/// State of one client connection.
pub(crate) struct Conn {
    /// Session id used in logs and audit lines.
    pub id: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// When the connection was accepted.
    pub started: Instant,
    /// The same on the wall clock, for the operator's view.
    pub started_at: SystemTime,
    /// Its pre-authentication slot and how far it has come (the socket and the handler move
    /// it on; authentication gives the slot back).
    pub progress: Arc<Progress>,
    /// Who authenticated, and with which key; set once authentication succeeds.
    pub login: OnceLock<Login>,
    /// Cancelled when the connection ends; tunnels stop with it.
    pub closed: CancellationToken,
    tunnels: Mutex<HashMap<u64, OpenTunnel>>,
    /// Tunnels open or being dialed (for `limits.max_channels_per_connection`).
    pub channels: AtomicUsize,
    auth_failures: AtomicU32,
    /// Signalled whenever a tunnel closes.
    pub tunnel_closed: Notify,
    last_activity_ms: AtomicU64,
}

impl Conn {
    pub fn new(id: String, peer: SocketAddr, progress: Arc<Progress>) -> Self {
        Conn {
            id,
            peer,
            started: Instant::now(),
            started_at: SystemTime::now(),
            progress,
            login: OnceLock::new(),
            closed: CancellationToken::new(),
            tunnels: Mutex::new(HashMap::new()),
            channels: AtomicUsize::new(0),
            auth_failures: AtomicU32::new(0),
            tunnel_closed: Notify::new(),
            last_activity_ms: AtomicU64::new(0),
        }
    }

    /// The login name, or "" before authentication.
    pub fn user(&self) -> &str {
        self.login.get().map(|l| l.user.as_str()).unwrap_or("")
    }

    /// Counts a refused authentication attempt (for the source's penalty).
    pub fn note_auth_failure(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Refused authentication attempts so far.
    pub fn auth_failures(&self) -> u32 {
        self.auth_failures.load(Ordering::Relaxed)
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
        self.lock_tunnels().len()
    }

    /// The open tunnels, by id.
    pub fn tunnels(&self) -> Vec<(u64, OpenTunnel)> {
        let tunnels = self.lock_tunnels();
        tunnels.iter().map(|(id, t)| (*id, t.clone())).collect()
    }

    /// Registers an open tunnel until the returned guard is dropped.
    pub fn open_tunnel(self: &Arc<Self>, id: u64, tunnel: OpenTunnel) -> TunnelGuard {
        self.lock_tunnels().insert(id, tunnel);
        self.touch();
        TunnelGuard {
            conn: self.clone(),
            id,
        }
    }

    fn lock_tunnels(&self) -> std::sync::MutexGuard<'_, HashMap<u64, OpenTunnel>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.tunnels.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keeps a tunnel registered; dropping it wakes the connection task.
pub(crate) struct TunnelGuard {
    conn: Arc<Conn>,
    id: u64,
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.conn.lock_tunnels().remove(&self.id);
        self.conn.touch();
        // notify_one stores a permit if nobody waits yet, so the wake-up is never lost.
        self.conn.tunnel_closed.notify_one();
    }
}
