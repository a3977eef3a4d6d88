//! The health endpoint for load balancers (`server.health_listen`): plain HTTP on a listener
//! of its own, so that a balancer's probes never reach the SSH port, where a probe that
//! connects and closes is an unauthenticated connection that earns its source (the balancer,
//! which every client comes through) penalties.
//!
//! Any request answers `200 serving` while this bastion serves, and `503 draining` once
//! shutdown has begun (so the balancer stops sending new connections while open ones drain).
//! A directory older than `max_staleness` (AWS unreachable) answers `200 directory stale: new
//! logins are refused`: stale is not dead. The balancer's check decides routing and, through
//! an Auto Scaling group's ELB health checks, replacement; an AWS outage reaches every replica
//! at once, and a 503 for it would get every replica replaced and every open session cut
//! while the replacements could not serve either. An outage stops new logins with the reason
//! (the SSH layer refuses them as `directory_stale`) and nothing else.
//!
//! An audit log that cannot be written answers `200 audit log unwritable: new logins are
//! refused` (or, with `audit.on_failure = "continue"`, `200 serving; audit log unwritable`):
//! the state shows, and no open session is cut for it.
//!
//! A probe that only connects (a TCP check) gets the same answer and may close at once. Each
//! connection is read for at most [`READ_WAIT`] and [`MAX_REQUEST`] bytes, answered, and
//! closed; at most [`MAX_PROBES`] are handled at once (more wait in the listen backlog), and
//! at most [`MAX_PROBES_PER_SOURCE`] from one address: a connection past that is closed at
//! once, so silent connections from one source cannot hold the slots a balancer's probe
//! needs. A hand-written responder: the answer is one status line, which hyper would add
//! nothing to.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::shared::Shared;

/// How long a probe's request may take to arrive.
const READ_WAIT: Duration = Duration::from_secs(2);
/// The most of a request that is read (the rest is ignored).
const MAX_REQUEST: usize = 1024;
/// Probes handled at once.
const MAX_PROBES: usize = 32;
/// Probes handled at once from one address.
pub(crate) const MAX_PROBES_PER_SOURCE: usize = 4;

/// The probes being handled, by source address (at most [`MAX_PROBES`] entries).
#[derive(Default)]
struct InFlight(Mutex<HashMap<IpAddr, usize>>);

impl InFlight {
    /// Counts one more probe from `source`, unless it has [`MAX_PROBES_PER_SOURCE`] already.
    fn enter(self: &Arc<Self>, source: IpAddr) -> Option<Probe> {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(source).or_default();
        if *count >= MAX_PROBES_PER_SOURCE {
            return None;
        }
        *count += 1;
        Some(Probe {
            in_flight: self.clone(),
            source,
        })
    }
}

/// One counted probe; uncounted when dropped.
struct Probe {
    in_flight: Arc<InFlight>,
    source: IpAddr,
}

impl Drop for Probe {
    fn drop(&mut self) {
        let mut counts = self
            .in_flight
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

/// Answers health probes on `listener` until the process ends (also while draining).
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_PROBES));
    let in_flight = Arc::new(InFlight::default());
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Past its share, a source's connection is closed at once (dropped here).
                let Some(probe) = in_flight.enter(peer.ip()) else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    answer(&shared, stream).await;
                    drop(probe);
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!("health endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The state a probe is told: (HTTP status, body).
pub(crate) fn state(shared: &Shared) -> (&'static str, &'static str) {
    if shared.draining.is_cancelled() || shared.leaving.is_cancelled() {
        ("503 Service Unavailable", "draining\n")
    } else if shared.audit.refusal().is_some() {
        ("200 OK", "audit log unwritable: new logins are refused\n")
    } else if shared.audit.unwritable() {
        (
            "200 OK",
            "serving; audit log unwritable (audit.on_failure = continue)\n",
        )
    } else if shared
        .directory
        .borrow()
        .is_stale(std::time::Instant::now())
    {
        ("200 OK", "directory stale: new logins are refused\n")
    } else {
        ("200 OK", "serving\n")
    }
}

async fn answer(shared: &Shared, mut stream: TcpStream) {
    let mut request = [0u8; MAX_REQUEST];
    let mut len = 0;
    let _ = tokio::time::timeout(READ_WAIT, async {
        while len < request.len() {
            match stream.read(&mut request[len..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => len += n,
            }
            if request[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                return;
            }
        }
    })
    .await;
    let (status, body) = state(shared);
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(READ_WAIT, async {
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
