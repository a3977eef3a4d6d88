//! The siege's attackers: many sources that connect to the bastion and never say a word.
//!
//! One thread enters the bastion namespace and runs a single-threaded tokio runtime there
//! (sockets keep the namespace they were created in), with one task per source. A source
//! binds a fresh address, connects, sends nothing and reads until the server closes; then it
//! comes back from another fresh address, after a pause (slowloris) or at once (flood).
//! Addresses are never reused while an [`Addresses`] pool lasts, and each lies in a /24 of
//! its own, so neither per-address penalties nor per-/24 caps can tell the sources apart.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::harness::process::try_run_with_timeout;
use crate::harness::Netns;

/// A connect that takes longer (the server's backlog is full) is given up and counted failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// After a failed connect, before the next address.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// The source addresses: x.y.z.1 for each /24 of these ranges in turn, so every address
/// lies in a /24 of its own. 127/8 is local on `lo` as it is (127.0.0.0/24, where the
/// legitimate client is, is left out); 240.0.0.0/4 (reserved, routed nowhere) is made local
/// on the bastion namespace's `lo` by [`Addresses::prepare`]. Its last /24 (up to the
/// broadcast address) is left out.
const RANGES: [(Ipv4Addr, u32); 2] = [
    (Ipv4Addr::new(127, 1, 0, 0), 255 * 256),
    (Ipv4Addr::new(240, 0, 0, 0), 16 * 65_536 - 1),
];
/// The local route [`Addresses::prepare`] adds for the second range.
const EXTRA_RANGE: &str = "240.0.0.0/4";

/// A pool of source addresses, each handed out once.
#[derive(Debug, Default)]
pub struct Addresses {
    next: AtomicU32,
}

impl Addresses {
    /// How many addresses the pool has (1,113,855).
    pub const SIZE: u32 = RANGES[0].1 + RANGES[1].1;

    /// Makes every address of the pool local in `ns` (127/8 already is). The route lives and
    /// dies with the namespace.
    pub fn prepare(ns: &Netns) -> io::Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", ns.name(), "route", "replace", "local", EXTRA_RANGE])
            .args(["dev", "lo", "table", "local"]);
        let out = try_run_with_timeout(cmd, Duration::from_secs(10))?;
        if out.success() {
            Ok(())
        } else {
            Err(io::Error::other(out.to_string()))
        }
    }

    /// The next unused address; `None` once all are used.
    pub fn take(&self) -> Option<Ipv4Addr> {
        let n = self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < Self::SIZE).then_some(n + 1)
            })
            .ok()?;
        let (base, index) = match n.checked_sub(RANGES[0].1) {
            None => (RANGES[0].0, n),
            Some(i) => (RANGES[1].0, i),
        };
        Some(Ipv4Addr::from(u32::from(base) + (index << 8) + 1))
    }

    /// How many were handed out.
    pub fn used(&self) -> u32 {
        self.next.load(Ordering::Relaxed).min(Self::SIZE)
    }
}

/// How a source comes back after the server closed its connection.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// After this pause (slowloris).
    Pause(Duration),
    /// At once (flood).
    Flood,
}

/// Running totals since the attack started.
#[derive(Debug, Default)]
struct Counters {
    connected: AtomicU64,
    admitted: AtomicU64,
    closed: AtomicU64,
    failed: AtomicU64,
}

/// A snapshot of the totals.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Tally {
    /// TCP connections established (the kernel accepted them; the server may not have).
    pub connected: u64,
    /// Connections on which the server sent its SSH version line: it took them in.
    pub admitted: u64,
    /// Connections the server closed (EOF or reset).
    pub closed: u64,
    /// Connects that failed or timed out.
    pub failed: u64,
}

/// A running attack; [`Attack::stop`] (or dropping it) ends every source and closes every
/// socket.
pub struct Attack {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Attack {
    /// Starts `sources` sources in `ns` against `server`, taking addresses from `pool`. The
    /// attack ends by itself after `limit` if nobody stops it.
    pub fn start(
        ns: &Netns,
        server: SocketAddr,
        sources: usize,
        pace: Pace,
        pool: Arc<Addresses>,
        limit: Duration,
    ) -> io::Result<Attack> {
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let ns = ns.clone();
        let c = counters.clone();
        let thread = thread::Builder::new()
            .name("attack".into())
            .spawn(move || {
                let name = ns.name().to_owned();
                let run = move || run(server, sources, pace, pool, c, stopped, limit);
                match ns.run_in(run) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => eprintln!("attack: tokio runtime: {e}"),
                    Err(e) => eprintln!("attack: cannot enter {name}: {e}"),
                }
            })?;
        Ok(Attack {
            stop,
            thread: Some(thread),
            counters,
        })
    }

    /// The totals so far.
    pub fn tally(&self) -> Tally {
        let c = &self.counters;
        Tally {
            connected: c.connected.load(Ordering::Relaxed),
            admitted: c.admitted.load(Ordering::Relaxed),
            closed: c.closed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        }
    }

    /// Ends every source and waits for the thread (its sockets are closed by then).
    pub fn stop(mut self) {
        self.end();
    }

    fn end(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.end();
    }
}

/// The attack thread's body, inside the namespace: runs the sources until stopped or `limit`,
/// then drops them all (aborting their tasks closes their sockets).
fn run(
    server: SocketAddr,
    sources: usize,
    pace: Pace,
    pool: Arc<Addresses>,
    counters: Arc<Counters>,
    mut stopped: watch::Receiver<bool>,
    limit: Duration,
) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..sources {
            tasks.spawn(source(server, pace, pool.clone(), counters.clone()));
        }
        let _ = tokio::time::timeout(limit, stopped.wait_for(|s| *s)).await;
        tasks.shutdown().await;
    });
    Ok(())
}

/// One source: connect from a fresh address, wait for the server to close, again.
async fn source(server: SocketAddr, pace: Pace, pool: Arc<Addresses>, counters: Arc<Counters>) {
    while let Some(ip) = pool.take() {
        match connect_from(ip, server).await {
            Ok(stream) => {
                counters.connected.fetch_add(1, Ordering::Relaxed);
                read_until_closed(stream, &counters.admitted).await;
                counters.closed.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
        if let Pace::Pause(pause) = pace {
            tokio::time::sleep(pause).await;
        }
    }
}

async fn connect_from(ip: Ipv4Addr, server: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((ip, 0)))?;
    tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(server))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// Reads (and ignores) what the server sends until it closes. A connection whose first bytes
/// are `SSH-` (the server's version line: it took the connection in, rather than refusing it
/// with a message or nothing) counts in `admitted` as they arrive, so that a connection the
/// server holds counts within the window it was admitted in.
async fn read_until_closed(mut stream: TcpStream, admitted: &AtomicU64) {
    let mut buf = [0u8; 1024];
    let (mut head, mut got) = ([0u8; 4], 0);
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) if got < head.len() => {
                let take = n.min(head.len() - got);
                head[got..got + take].copy_from_slice(&buf[..take]);
                got += take;
                if got == head.len() && &head == b"SSH-" {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_each_in_a_slash_24_of_their_own() {
        let pool = Addresses::default();
        let first: Vec<Ipv4Addr> = (0..3).filter_map(|_| pool.take()).collect();
        assert_eq!(first[0], Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(first[2], Ipv4Addr::new(127, 1, 2, 1));
        pool.next.store(RANGES[0].1 - 1, Ordering::Relaxed);
        assert_eq!(pool.take(), Some(Ipv4Addr::new(127, 255, 255, 1)));
        assert_eq!(pool.take(), Some(Ipv4Addr::new(240, 0, 0, 1)));
        pool.next.store(Addresses::SIZE - 1, Ordering::Relaxed);
        assert_eq!(pool.take(), Some(Ipv4Addr::new(255, 255, 254, 1)));
        assert_eq!(pool.take(), None);
        assert_eq!(pool.used(), Addresses::SIZE);
    }
}
