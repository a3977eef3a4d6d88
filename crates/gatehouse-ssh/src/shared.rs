//! The bastion-wide state every connection reads (`Shared`): settings, the directory, the
//! audit sink, the pre-auth admission and per-source tables, the session, channel and tunnel
//! counts, the buffer budget, and the shutdown tokens. `server`, `handler`, `tunnel` and
//! `health` depend on this module, not on each other.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use gatehouse_config::{LimitsConfig, PenaltiesConfig, ServerConfig};
use gatehouse_directory::certificate::TrustedCas;
use gatehouse_directory::Snapshot;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{LocalPoolHandle, TaskTracker};

use crate::admission::{Admission, Deadlines};
use crate::audit::{Audit, Event, SourceCount};
use crate::budget::BufferBudget;
use crate::conn::Conn;
use crate::push::KeyPush;
use crate::refusals::{Refusals, INTERVAL as SUMMARY_INTERVAL};
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
    /// The CAs whose user certificates log users of the directory in
    /// (`[[trusted_user_ca]]`); empty: certificates are refused.
    pub trusted_cas: TrustedCas,
    /// The audit sink.
    pub audit: Audit,
    /// The health endpoint's listener (`server.health_listen`), bound by the binary.
    pub health: Option<TcpListener>,
    /// The operator's view (`server.control_socket`), bound by the binary with
    /// [`crate::control::bind`].
    pub control: Option<std::os::unix::net::UnixListener>,
    /// Gives the user's key to a host before a tunnel to its SSH port, for grants that ask
    /// for it (`Grant::key_push`). `None`: such tunnels are refused (a static config never
    /// asks; an AWS one does only with `aws.instance_connect`, which sets this).
    pub key_push: Option<Arc<dyn KeyPush>>,
    /// The bastion's own CA for `gatehouse login` (`[sso]`); its key must also be in
    /// `trusted_cas` (`TrustedCas::with_own`). `None`: no certificate is issued.
    pub issuer: Option<Arc<crate::issuer::Issuer>>,
    /// Tells a supervisor the daemon is alive while every connection worker answers
    /// (systemd's watchdog, when `WATCHDOG_USEC` is set). `None`: nobody asks.
    pub watchdog: Option<crate::liveness::Watchdog>,
}

/// State shared by all connections of one server.
pub(crate) struct Shared {
    pub settings: ServerConfig,
    pub limits: LimitsConfig,
    pub russh: Arc<russh::server::Config>,
    pub directory: watch::Receiver<Arc<Snapshot>>,
    pub trusted_cas: TrustedCas,
    pub audit: Audit,
    pub key_push: Option<Arc<dyn KeyPush>>,
    pub issuer: Option<Arc<crate::issuer::Issuer>>,
    /// Connection and tunnel tasks, awaited on shutdown.
    pub tasks: TaskTracker,
    /// Single-threaded runtimes, one per core: each connection lives on one of them with all
    /// its tasks (russh's session loop, tunnels, watchdogs), so handing a packet from the
    /// session to its tunnel never wakes another thread.
    pub(crate) workers: LocalPoolHandle,
    /// Cancelled when shutdown starts: stop accepting, refuse new tunnels.
    pub draining: CancellationToken,
    /// Cancelled at SIGTERM, `server.drain_delay` before `draining`: the health endpoint
    /// answers `503 draining` while everything else still serves.
    pub leaving: CancellationToken,
    /// Cancelled when the grace period is over: close everything.
    pub stop: CancellationToken,
    pub(crate) admission: Arc<Admission>,
    pub(crate) deadlines: Deadlines,
    pub(crate) refusals: Refusals,
    pub(crate) penalties: Penalties,
    pub(crate) unauthenticated: Unauthenticated,
    /// Authenticated connections per user.
    user_sessions: Mutex<HashMap<String, usize>>,
    /// Authenticated connections by session id, for the operator's view (`control`).
    listed: Mutex<BTreeMap<(std::time::SystemTime, String), Arc<Conn>>>,
    /// Tunnels open or being dialed, bastion-wide.
    tunnels: AtomicUsize,
    /// Client bytes held for slow targets, bastion-wide (`limits.max_buffered_mib`).
    pub budget: BufferBudget,
    /// What every session id of this process starts with (see [`Shared::new`]).
    id_prefix: String,
    next_session: AtomicU64,
    next_tunnel: AtomicU64,
}

impl Shared {
    pub(crate) fn new(b: Bastion) -> Self {
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
            listed: Mutex::new(BTreeMap::new()),
            tunnels: AtomicUsize::new(0),
            budget: BufferBudget::from_config(b.limits.max_buffered_mib),
            settings: b.settings,
            limits: b.limits,
            russh: b.russh,
            directory: b.directory,
            trusted_cas: b.trusted_cas,
            audit: b.audit,
            key_push: b.key_push,
            issuer: b.issuer,
            tasks: TaskTracker::new(),
            workers: LocalPoolHandle::new(worker_count()),
            draining: CancellationToken::new(),
            leaving: CancellationToken::new(),
            stop: CancellationToken::new(),
            id_prefix: session_prefix(epoch),
            next_session: AtomicU64::new(1),
            next_tunnel: AtomicU64::new(1),
        }
    }

    pub(crate) fn next_session_id(&self) -> String {
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

    /// Lists an authenticated connection for the operator's view until the guard is dropped.
    pub(crate) fn list_session(&self, conn: &Arc<Conn>) -> Listed<'_> {
        let key = (conn.started_at, conn.id.clone());
        lock(&self.listed).insert(key.clone(), conn.clone());
        Listed { shared: self, key }
    }

    /// The listed sessions, oldest first.
    pub(crate) fn listed_sessions(&self) -> Vec<Arc<Conn>> {
        lock(&self.listed).values().cloned().collect()
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
    pub(crate) fn refuse(
        &self,
        session: Option<&str>,
        source: SocketAddr,
        code: &'static str,
        reason: &str,
    ) {
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
    pub(crate) fn charge_cut(&self, source: SocketAddr, code: &str, offence: Offence) {
        match code {
            "shutting_down" => {}
            "version_grace" | "kex_grace" | "login_grace" => {
                self.charge(source, Offence::GraceExceeded)
            }
            _ => self.charge(source, offence),
        }
    }

    /// Writes the summaries of the refusals that had no line of their own.
    pub(crate) fn summarize_refusals(&self) {
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
                summarized: s.count.saturating_sub(s.itemized),
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
    pub(crate) fn charge(&self, source: SocketAddr, offence: Offence) {
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

/// Keeps a session in the operator's view; dropping it takes it out.
pub(crate) struct Listed<'a> {
    shared: &'a Shared,
    key: (std::time::SystemTime, String),
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        lock(&self.shared.listed).remove(&self.key);
    }
}

/// The registries hold plain data: a panic elsewhere cannot leave them inconsistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

/// What the session ids of a process started at `epoch` (seconds) begin with: the start
/// second, and 32 random bits, so replicas of a fleet started in the same second (an Auto
/// Scaling group's launch) still write different session ids into the shared audit log group.
fn session_prefix(epoch: u64) -> String {
    format!("{epoch:x}{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod id_tests {
    /// Two bastions started in the same second name their sessions differently.
    #[test]
    fn two_processes_started_together_have_different_session_prefixes() {
        let a = super::session_prefix(1_796_656_500);
        let b = super::session_prefix(1_796_656_500);
        // 2^-32 to collide: a failure here is a broken generator, not bad luck.
        assert_ne!(a, b);
        assert!(a.starts_with("6b16cd74") && a.len() == 16, "{a}");
    }
}
