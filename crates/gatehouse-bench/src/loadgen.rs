//! Many authenticated idle SSH sessions from one process: a russh client in the client
//! namespace (10,000 OpenSSH client processes would measure the clients, not the server).
//!
//! A thread enters the namespace, builds a single-threaded tokio runtime there (sockets keep
//! the namespace they were created in) and opens the sessions with a bounded number of
//! handshakes in flight. It then holds them, idle, until told to let go.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use russh::client;
use russh::keys::{load_secret_key, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use tokio::sync::{oneshot, Semaphore};

use crate::harness::Netns;

/// What opening the sessions achieved.
#[derive(Clone, Debug, Default)]
pub struct Opened {
    pub ok: usize,
    pub failed: usize,
    /// The first few failure messages.
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

struct AcceptAnyHostKey;

impl client::Handler for AcceptAnyHostKey {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        // The benchmark's own throwaway bastion, inside its own namespaces.
        Ok(true)
    }
}

/// Sessions being held; dropping (or [`Held::release`]) disconnects them all.
pub struct Held {
    release: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    pub opened: Opened,
}

impl Held {
    /// Disconnects everything and waits (bounded by the runtime's shutdown) for the thread.
    pub fn release(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(tx) = self.release.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Opens `n` sessions to `server` as `user` with the ed25519 key at `key`, at most
/// `concurrency` handshakes at a time, each bounded by `timeout`; returns once all attempts
/// ended, with the successful ones held.
pub fn open_idle_sessions(
    ns: &Netns,
    server: SocketAddr,
    user: &str,
    key: &Path,
    n: usize,
    concurrency: usize,
    timeout: Duration,
) -> anyhow::Result<Held> {
    let key = Arc::new(load_secret_key(key, None)?);
    let user = user.to_string();
    let (opened_tx, opened_rx) = mpsc::channel();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let ns = ns.clone();
    let thread = thread::Builder::new()
        .name("loadgen".into())
        .spawn(move || {
            let run = move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = opened_tx.send(Opened {
                            failed: n,
                            errors: vec![format!("tokio runtime: {e}")],
                            ..Opened::default()
                        });
                        return;
                    }
                };
                runtime.block_on(async move {
                    let (handles, opened) =
                        open_all(server, &user, key, n, concurrency, timeout).await;
                    let _ = opened_tx.send(opened);
                    // Held until released (or the benchmark gives up on us).
                    let _ = tokio::time::timeout(Duration::from_secs(3600), release_rx).await;
                    for h in &handles {
                        let _ = h
                            .disconnect(russh::Disconnect::ByApplication, "", "en")
                            .await;
                    }
                    drop(handles);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                });
            };
            if let Err(e) = ns.run_in(run) {
                eprintln!("loadgen: cannot enter {}: {e}", ns.name());
            }
        })?;
    let opened = opened_rx
        .recv_timeout(
            timeout * (n as u32 / concurrency.max(1) as u32 + 2) + Duration::from_secs(60),
        )
        .unwrap_or_else(|_| Opened {
            failed: n,
            errors: vec!["the load generator did not report".into()],
            ..Opened::default()
        });
    Ok(Held {
        release: Some(release_tx),
        thread: Some(thread),
        opened,
    })
}

async fn open_all(
    server: SocketAddr,
    user: &str,
    key: Arc<russh::keys::PrivateKey>,
    n: usize,
    concurrency: usize,
    timeout: Duration,
) -> (Vec<client::Handle<AcceptAnyHostKey>>, Opened) {
    let started = Instant::now();
    let config = Arc::new(client::Config {
        nodelay: true,
        inactivity_timeout: None,
        ..client::Config::default()
    });
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (config, key, user, permits) = (
            config.clone(),
            key.clone(),
            user.to_string(),
            permits.clone(),
        );
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
            tokio::time::timeout(timeout, open_one(config, server, user, key))
                .await
                .map_err(|_| format!("no session within {timeout:?}"))?
        });
    }
    let mut handles = Vec::with_capacity(n);
    let mut opened = Opened::default();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(h)) => {
                opened.ok += 1;
                handles.push(h);
            }
            Ok(Err(e)) => {
                opened.failed += 1;
                if opened.errors.len() < 5 {
                    opened.errors.push(e);
                }
            }
            Err(e) => {
                opened.failed += 1;
                if opened.errors.len() < 5 {
                    opened.errors.push(e.to_string());
                }
            }
        }
    }
    opened.elapsed = started.elapsed();
    (handles, opened)
}

async fn open_one(
    config: Arc<client::Config>,
    server: SocketAddr,
    user: String,
    key: Arc<russh::keys::PrivateKey>,
) -> Result<client::Handle<AcceptAnyHostKey>, String> {
    let tcp = tokio::net::TcpStream::connect(server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut handle = client::connect_stream(config, tcp, AcceptAnyHostKey)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let auth = handle
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, None))
        .await
        .map_err(|e| format!("auth: {e}"))?;
    if auth.success() {
        Ok(handle)
    } else {
        Err("authentication refused".into())
    }
}
