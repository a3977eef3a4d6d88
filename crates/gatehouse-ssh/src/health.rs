//! The health endpoint for load balancers (`server.health_listen`): plain HTTP on a listener
//! of its own, so that a balancer's probes never reach the SSH port, where a probe that
//! connects and closes is an unauthenticated connection that earns its source (the balancer,
//! which every client comes through) penalties.
//!
//! Any request answers `200 serving` while this bastion can take a new login, `503 draining`
//! once shutdown has begun (so the balancer stops sending new connections while open ones
//! drain), and `503 directory stale` while its directory is older than `max_staleness`. A
//! probe that only connects (a TCP check) gets the same answer and may close at once. Each
//! connection is read for at most [`READ_WAIT`] and [`MAX_REQUEST`] bytes, answered, and
//! closed; at most [`MAX_PROBES`] are handled at once (more wait in the listen backlog).
//! A hand-written responder: the answer is one status line, which hyper would add nothing to.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::server::Shared;

/// How long a probe's request may take to arrive.
const READ_WAIT: Duration = Duration::from_secs(2);
/// The most of a request that is read (the rest is ignored).
const MAX_REQUEST: usize = 1024;
/// Probes handled at once.
const MAX_PROBES: usize = 32;

/// Answers health probes on `listener` until the process ends (also while draining).
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_PROBES));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    answer(&shared, stream).await;
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
    } else if shared
        .directory
        .borrow()
        .is_stale(std::time::Instant::now())
    {
        ("503 Service Unavailable", "directory stale\n")
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
