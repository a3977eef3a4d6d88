//! One permitted tunnel: dial the inventory address with a deadline, accept the SSH channel
//! only once the dial succeeded, splice both ways with half-close preserved, audit the close.
//!
//! Runs in its own task: a slow or black-holed target never stalls the connection's loop or
//! its other channels.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use gatehouse_policy::Grant;
use russh::server::Msg;
use russh::{Channel, ChannelOpenFailure};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::audit::Event;
use crate::conn::{Conn, OpenTunnel};
use crate::server::{Shared, TunnelSlot};
use crate::telemetry;

/// Copy buffer per direction. 64 KiB: the default 8 KiB costs four writes per SSH packet.
const COPY_BUFFER: usize = 64 * 1024;

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
    let timeout = shared.settings.connect_timeout;
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(grant.dial)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            let reason = format!("connecting to host '{}' failed: {e}", grant.host_id);
            deny("connect_failed", &reason);
            reply.reject(connect_failed(reason)).await;
            return;
        }
        Err(_) => {
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
    let _ = tcp.set_nodelay(true);
    let tunnel = shared.next_tunnel_id();
    let revoked = conn.closed.child_token();
    let _registered = conn.open_tunnel(
        tunnel,
        OpenTunnel {
            target: request.raw_target.clone(),
            port: request.port,
            dial: grant.dial,
            host: grant.host_id.clone(),
            revoked: revoked.clone(),
        },
    );
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
    let counters = Arc::new(Counters::default());
    let mut target = Counted {
        inner: tcp,
        conn: conn.clone(),
        counters: counters.clone(),
    };
    let mut stream = channel.into_stream();
    let reason = tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut target, COPY_BUFFER, COPY_BUFFER) => {
            match r {
                Ok(_) => "closed".to_owned(),
                Err(e) => format!("error: {e}"),
            }
        }
        _ = revoked.cancelled() => if conn.closed.is_cancelled() {
            "connection ended".to_owned()
        } else {
            "revoked".to_owned()
        },
    };
    shared.audit.record(Event::TunnelClose {
        session: &conn.id,
        tunnel,
        user: &user,
        host: &grant.host_id,
        dial: grant.dial,
        bytes_up: counters.up.load(Ordering::Relaxed),
        bytes_down: counters.down.load(Ordering::Relaxed),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        reason: &reason,
    });
}

fn connect_failed(reason: String) -> ChannelOpenFailure {
    ChannelOpenFailure::Other {
        code: ChannelOpenFailure::ConnectFailed.code(),
        reason,
    }
}

#[derive(Default)]
struct Counters {
    /// Client to target.
    up: AtomicU64,
    /// Target to client.
    down: AtomicU64,
}

/// The target socket, counting bytes each way and marking the connection active.
struct Counted {
    inner: TcpStream,
    conn: Arc<Conn>,
    counters: Arc<Counters>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.counters.down.fetch_add(n as u64, Ordering::Relaxed);
            telemetry::tunnel_bytes("down", n as u64);
            self.conn.touch();
        }
        poll
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.counters.up.fetch_add(n as u64, Ordering::Relaxed);
            telemetry::tunnel_bytes("up", n as u64);
            self.conn.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
