//! One permitted tunnel: dial the inventory address with a deadline, accept the SSH channel
//! only once the dial succeeded, splice both ways with half-close preserved, audit the close.
//!
//! Runs in its own task: a slow or black-holed target never stalls the connection's loop or
//! its other channels.
//!
//! Flow control, and why the splice is hand-written: russh 0.65 re-opens a channel's SSH window
//! as soon as data *arrives*, not when it is consumed, and hands the data to a bounded
//! per-channel queue that the connection's loop awaits. So a target that stops reading fills
//! that queue and then freezes the whole connection, every other channel included
//! (head-of-line blocking; OpenSSH stops only the one channel, by not re-opening its window).
//! Until russh re-opens windows on consumption (see BENCHMARKS.md), the client-to-target
//! direction drains the channel into a backlog of its own as data comes, without waiting for
//! the target, up to [`BACKLOG_LIMIT`] bytes. Past that it takes no more (memory stays
//! bounded, and the connection stalls as before), and if the target then takes nothing for
//! [`STALL_LIMIT`] the tunnel is cut, with an audit reason, so that the stall is bounded and
//! visible instead of permanent.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use gatehouse_policy::Grant;
use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelOpenFailure, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::audit::Event;
use crate::budget::BufferBudget;
use crate::conn::{Conn, OpenTunnel, TunnelBytes};
use crate::local::is_own_address;
use crate::push::PushError;
use crate::revoke::recheck_tunnel;
use crate::shared::{Shared, TunnelSlot};
use crate::telemetry;

/// Read buffer for the target-to-client direction. 64 KiB: 8 KiB costs four writes per SSH
/// packet.
const COPY_BUFFER: usize = 64 * 1024;

/// Client bytes a tunnel holds for a target that is slower than the client, before it stops
/// draining its SSH channel: one SSH window, what the client may have in flight anyway.
pub(crate) const BACKLOG_LIMIT: usize = crate::algorithms::WINDOW_SIZE as usize;

/// How long a full backlog waits for the target to take any byte before the tunnel is cut.
/// While it waits, the whole connection is stalled (see the module docs).
pub(crate) const STALL_LIMIT: Duration = Duration::from_secs(5);

/// How often a tunnel waiting for room in the bastion-wide buffer budget tries again.
const BUDGET_RETRY: Duration = Duration::from_millis(50);

/// Chunks handed to one vectored write to the target (32 KiB SSH packets: 512 KiB at most).
const MAX_WRITE_CHUNKS: usize = 16;

/// How long the CLOSE for a finished tunnel may wait for room in the connection's queue.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What the client asked for.
pub(crate) struct Request {
    /// The target exactly as sent: re-resolved by revocation checks.
    pub raw_target: String,
    /// The same, made safe for logs and audit lines.
    pub target: String,
    pub port: u32,
}

/// Dials, accepts the channel and splices until either side is done or the connection ends.
pub(crate) async fn run(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    // Held until the tunnel ends: it counts against the connection's and the bastion's limits.
    _slot: TunnelSlot,
    request: Request,
    grant: Grant,
    channel: Channel<Msg>,
    reply: russh::server::ChannelOpenHandle,
) {
    let user = conn.user().to_owned();
    let deny = |code: &str, reason: &str| {
        shared.audit.record(Event::TunnelDeny {
            session: &conn.id,
            user: &user,
            target: &request.target,
            port: request.port,
            reason_code: code,
            reason,
        });
    };
    // Registered before the dial, so that a snapshot published while it is pending
    // (connect_timeout may be long) is applied to it like to any open tunnel.
    let tunnel = shared.next_tunnel_id();
    let revoked = conn.closed.child_token();
    let open = OpenTunnel {
        target: request.raw_target.clone(),
        port: request.port,
        dial: grant.dial,
        host: grant.host_id.clone(),
        revoked: revoked.clone(),
        bytes: Arc::new(TunnelBytes::new()),
    };
    let _registered = conn.open_tunnel(tunnel, open.clone());
    // The grant was made on the snapshot current when the request arrived; one published
    // since, before the registration above, would have missed this tunnel: check it now.
    let snapshot = shared.directory.borrow().clone();
    match conn.login.get().map(|l| l.recheck(&snapshot)) {
        Some(Ok(principal)) => {
            recheck_tunnel(&shared, &conn, &principal, tunnel, &open, &snapshot);
        }
        // The session itself is revoked (its own check closes it) or was never logged in.
        _ => revoked.cancel(),
    }
    match is_own_address(grant.dial.ip()) {
        Ok(false) => {}
        Ok(true) => {
            let reason = format!(
                "host '{}' is at {}, an address of this bastion itself: the bastion never \
                 forwards to itself",
                grant.host_id,
                grant.dial.ip()
            );
            tracing::warn!(session = %conn.id, user = %user, "tunnel refused: {reason}");
            deny("own_address", &reason);
            reply.reject(prohibited(reason)).await;
            return;
        }
        Err(e) => {
            let reason = format!("cannot read this bastion's own addresses: {e}");
            deny("internal", &reason);
            reply.reject(connect_failed(reason)).await;
            return;
        }
    }
    let timeout = shared.settings.connect_timeout;
    // The key push (if the grant asks for one) runs with the dial: the channel is accepted
    // only when both succeeded, so the host accepts the key by the time the client uses it.
    let pushing = push_keys(&shared, &conn, &grant);
    let (dialed, pushed) = match tokio::select! {
        biased;
        _ = revoked.cancelled() => None,
        r = async {
            tokio::join!(
                tokio::time::timeout(timeout, TcpStream::connect(grant.dial)),
                pushing
            )
        } => Some(r),
    } {
        Some((dialed, pushed)) => (Some(dialed), Some(pushed)),
        None => (None, None),
    };
    // Logged whatever became of the dial: a failed push is for the operator to fix.
    if let Some(Err(e)) = &pushed {
        tracing::warn!(session = %conn.id, user = %user, host = %grant.host_id,
            "key push failed: {}", e.detail);
    }
    let tcp = match dialed {
        Some(Ok(Ok(tcp))) if !revoked.is_cancelled() => tcp,
        None | Some(Ok(Ok(_))) => {
            if conn.closed.is_cancelled() {
                // Nobody is left to answer; the dial is abandoned.
                deny("connection_closed", "the connection ended while dialing");
                return;
            }
            let reason = format!(
                "access to host '{}' was withdrawn while connecting to it",
                grant.host_id
            );
            deny("revoked", &reason);
            reply.reject(prohibited(reason)).await;
            return;
        }
        Some(Ok(Err(e))) => {
            let reason = format!("connecting to host '{}' failed: {e}", grant.host_id);
            deny("connect_failed", &reason);
            reply.reject(connect_failed(reason)).await;
            return;
        }
        Some(Err(_)) => {
            let reason = format!(
                "connecting to host '{}' timed out after {}",
                grant.host_id,
                humantime::format_duration(timeout)
            );
            deny("connect_timeout", &reason);
            reply.reject(connect_failed(reason)).await;
            return;
        }
    };
    match pushed {
        Some(Ok(None)) | None => {}
        Some(Ok(Some(pushed))) => shared.audit.record(Event::KeyPushed {
            session: &conn.id,
            user: &user,
            host: &grant.host_id,
            os_users: &grant.key_push,
            key: &pushed.fingerprint,
            duration_ms: pushed.duration_ms,
        }),
        Some(Err(e)) => {
            let reason = format!(
                "could not give your key to host '{}' for its login ({}): {}",
                grant.host_id,
                grant.key_push.join(", "),
                e.brief
            );
            shared.audit.record(Event::TunnelDeny {
                session: &conn.id,
                user: &user,
                target: &request.target,
                port: request.port,
                reason_code: "key_push_failed",
                reason: &if e.detail == e.brief {
                    reason.clone()
                } else {
                    format!("{reason} ({})", e.detail)
                },
            });
            reply.reject(connect_failed(reason)).await;
            return;
        }
    }
    let _ = tcp.set_nodelay(true);
    reply.accept().await;
    shared.audit.record(Event::TunnelOpen {
        session: &conn.id,
        tunnel,
        user: &user,
        target: &request.target,
        port: request.port,
        host: &grant.host_id,
        dial: grant.dial,
    });
    let started = Instant::now();
    let counters = Counters::new(open.bytes.clone());
    let (mut from_client, to_client) = channel.split();
    let (target_read, target_write) = tcp.into_split();
    let reason = tokio::select! {
        r = async {
            tokio::try_join!(
                upload(&mut from_client, target_write, &conn, &counters, &shared.budget),
                download(target_read, &to_client, &conn, &counters),
            )
        } => match r {
            Ok(_) => "closed".to_owned(),
            Err(e) => format!("error: {e}"),
        },
        _ = revoked.cancelled() => if conn.closed.is_cancelled() {
            "connection ended".to_owned()
        } else {
            "revoked".to_owned()
        },
    };
    drop(from_client);
    let _ = tokio::time::timeout(CLOSE_WAIT, to_client.close()).await;
    shared.audit.record(Event::TunnelClose {
        session: &conn.id,
        tunnel,
        user: &user,
        host: &grant.host_id,
        dial: grant.dial,
        bytes_up: counters.bytes.up(),
        bytes_down: counters.bytes.down(),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        reason: &reason,
    });
}

/// A push that was made: for the audit line.
struct Pushed {
    fingerprint: String,
    duration_ms: u64,
}

/// Gives the session's key to the grant's host for each of `grant.key_push` at once. `None`
/// when the grant asks for no push.
async fn push_keys(
    shared: &Shared,
    conn: &Conn,
    grant: &Grant,
) -> Result<Option<Pushed>, PushError> {
    if grant.key_push.is_empty() {
        return Ok(None);
    }
    let (Some(pusher), Some(login)) = (shared.key_push.as_ref(), conn.login.get()) else {
        return Err(PushError {
            brief: "this bastion is not set up to push keys".to_owned(),
            detail: "the host asks for a key push (login users) but no key push is configured"
                .to_owned(),
        });
    };
    let started = Instant::now();
    try_join_all(
        grant
            .key_push
            .iter()
            .map(|os_user| pusher.push(&grant.host_id, os_user, &login.key)),
    )
    .await?;
    Ok(Some(Pushed {
        fingerprint: login.fingerprint.clone(),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }))
}

fn connect_failed(reason: String) -> ChannelOpenFailure {
    ChannelOpenFailure::Other {
        code: ChannelOpenFailure::ConnectFailed.code(),
        reason,
    }
}

/// Bytes each way, for this tunnel's audit line and for the metrics. The metric handles are
/// looked up once per tunnel, not on every read and write.
struct Counters {
    /// Shared with the tunnel's registration (the operator's view).
    bytes: Arc<TunnelBytes>,
    metric_up: metrics::Counter,
    metric_down: metrics::Counter,
}

impl Counters {
    fn new(bytes: Arc<TunnelBytes>) -> Self {
        Counters {
            bytes,
            metric_up: telemetry::tunnel_bytes("up"),
            metric_down: telemetry::tunnel_bytes("down"),
        }
    }

    /// `n` bytes written to the target; the connection is active.
    fn up(&self, conn: &Conn, n: usize) {
        self.bytes.add_up(n as u64);
        self.metric_up.increment(n as u64);
        conn.touch();
    }

    /// `n` bytes read from the target; the connection is active.
    fn down(&self, conn: &Conn, n: usize) {
        self.bytes.add_down(n as u64);
        self.metric_down.increment(n as u64);
        conn.touch();
    }
}

/// Client to target: drains the SSH channel into a bounded backlog as data arrives, and
/// writes the backlog to the target as fast as it takes it (see the module docs). Ends after
/// the client's EOF, once everything is written and the target's write side is shut down.
///
/// Every backlogged byte is taken from the bastion-wide `budget` first. A chunk that does not
/// fit is held (one SSH packet at most) and the channel is not drained until it fits, retried
/// every [`BUDGET_RETRY`]: the client is then held back by TCP. A tunnel whose target is the
/// slow one is cut at [`STALL_LIMIT`] as with a full backlog, which gives its bytes back.
async fn upload(
    from_client: &mut ChannelReadHalf,
    mut target: OwnedWriteHalf,
    conn: &Conn,
    counters: &Counters,
    budget: &BufferBudget,
) -> io::Result<()> {
    let mut backlog = Backlog::new(budget);
    // A chunk received while the budget was spent, waiting for room.
    let mut held = None;
    let mut client_done = false;
    // Since when the backlog waits on a target that takes nothing (no write completed).
    let mut blocked_since: Option<tokio::time::Instant> = None;
    loop {
        if client_done && backlog.is_empty() && held.is_none() {
            return target.shutdown().await;
        }
        let full = backlog.pending >= BACKLOG_LIMIT;
        let starved = held.is_some();
        if (full || starved) && !backlog.is_empty() {
            blocked_since.get_or_insert_with(tokio::time::Instant::now);
        } else {
            blocked_since = None;
        }
        let stall_deadline = blocked_since.map(|since| since + STALL_LIMIT);
        tokio::select! {
            // Writing first: a backlog that the target takes never grows.
            biased;
            written = async { target.write_vectored(&backlog.slices()).await }, if !backlog.is_empty() => {
                let n = written?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                counters.up(conn, n);
                backlog.consume(n);
                blocked_since = None;
            }
            _ = tokio::time::sleep(BUDGET_RETRY), if starved => {
                if let Some(chunk) = held.take() {
                    held = backlog.try_push(chunk).err();
                }
            }
            msg = from_client.wait(), if !client_done && !full && !starved => match msg {
                Some(ChannelMsg::Data { data }) => held = backlog.try_push(data).err(),
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => client_done = true,
                Some(_) => {}
            },
            // Only while blocked: any byte the target takes restarts the wait.
            _ = sleep_until_opt(stall_deadline), if stall_deadline.is_some() => {
                let why = if starved {
                    format!(
                        " (the bastion's buffer budget of {} MiB is spent: limits.max_buffered_mib)",
                        budget.limit() >> 20
                    )
                } else {
                    String::new()
                };
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "target stopped reading: {} KiB pending for {}{why}",
                        backlog.pending / 1024,
                        humantime::format_duration(STALL_LIMIT)
                    ),
                ));
            }
        }
    }
}

/// Sleeps until `deadline`; never completes without one.
async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Client data not yet taken by the target: chunks as they came, and how far into the first
/// one the target has got. Its bytes are taken from the bastion-wide budget while held.
struct Backlog<'a, B> {
    chunks: VecDeque<B>,
    /// Bytes of the first chunk already written.
    offset: usize,
    /// Bytes not yet written, in all.
    pending: usize,
    budget: &'a BufferBudget,
}

impl<B> Drop for Backlog<'_, B> {
    fn drop(&mut self) {
        self.budget.give_back(self.pending);
    }
}

impl<'a, B: AsRef<[u8]>> Backlog<'a, B> {
    fn new(budget: &'a BufferBudget) -> Self {
        Backlog {
            chunks: VecDeque::new(),
            offset: 0,
            pending: 0,
            budget,
        }
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Appends `chunk` if the budget has room for it; gives it back otherwise.
    fn try_push(&mut self, chunk: B) -> Result<(), B> {
        let len = chunk.as_ref().len();
        if len == 0 {
            return Ok(());
        }
        if !self.budget.try_take(len) {
            return Err(chunk);
        }
        self.pending += len;
        self.chunks.push_back(chunk);
        Ok(())
    }

    /// The first chunks, for one vectored write.
    fn slices(&self) -> Vec<IoSlice<'_>> {
        self.chunks
            .iter()
            .take(MAX_WRITE_CHUNKS)
            .enumerate()
            .map(|(i, c)| {
                let skip = if i == 0 { self.offset } else { 0 };
                IoSlice::new(&c.as_ref()[skip..])
            })
            .collect()
    }

    /// Drops the first `n` pending bytes (written) and gives them back to the budget.
    fn consume(&mut self, mut n: usize) {
        self.pending -= n;
        self.budget.give_back(n);
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.as_ref().len() - self.offset;
            if n >= left {
                n -= left;
                self.offset = 0;
                self.chunks.pop_front();
            } else {
                self.offset += n;
                n = 0;
            }
        }
    }
}

/// Target to client, until the target's EOF (passed on as the channel's EOF).
async fn download(
    mut target: OwnedReadHalf,
    to_client: &ChannelWriteHalf<Msg>,
    conn: &Conn,
    counters: &Counters,
) -> io::Result<()> {
    let mut writer = to_client.make_writer();
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = target.read(&mut buf).await?;
        if n == 0 {
            return writer.shutdown().await;
        }
        counters.down(conn, n);
        writer.write_all(&buf[..n]).await?;
    }
}

/// A refusal the OpenSSH client prints as "administratively prohibited: <reason>".
pub(crate) fn prohibited(reason: impl Into<String>) -> ChannelOpenFailure {
    ChannelOpenFailure::Other {
        code: ChannelOpenFailure::AdministrativelyProhibited.code(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_consumes_across_chunks() {
        let budget = BufferBudget::new(1 << 20);
        let mut b = Backlog::new(&budget);
        b.try_push(vec![1u8, 2, 3]).unwrap();
        b.try_push(Vec::new()).unwrap();
        b.try_push(vec![4u8, 5]).unwrap();
        assert_eq!(b.pending, 5);
        b.consume(2);
        let flat: Vec<u8> = b.slices().iter().flat_map(|s| s.to_vec()).collect();
        assert_eq!(flat, [3, 4, 5]);
        b.consume(2);
        assert_eq!(b.slices().len(), 1);
        assert_eq!(&*b.slices()[0], &[5]);
        b.consume(1);
        assert!(b.is_empty());
        assert_eq!(b.pending, 0);
    }

    #[test]
    fn backlogs_share_the_budget_and_give_it_back() {
        let budget = BufferBudget::new(10);
        let mut a = Backlog::new(&budget);
        let mut b = Backlog::new(&budget);
        a.try_push(vec![0u8; 6]).unwrap();
        assert_eq!(b.try_push(vec![0u8; 5]), Err(vec![0u8; 5]));
        b.try_push(vec![0u8; 4]).unwrap();
        assert_eq!(budget.used(), 10);
        a.consume(3);
        assert_eq!(budget.used(), 7);
        drop(a);
        assert_eq!(budget.used(), 4);
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
