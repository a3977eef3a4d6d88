//! The operator's read-only view of who is in (`gatehouse sessions`): a Unix socket
//! (`server.control_socket`) that answers each connection with one JSON document, [`View`],
//! and closes it. It reads nothing from its clients, so there is nothing they can ask for and
//! nothing the daemon could trust; who may connect is the socket's mode (0660: root and the
//! daemon's group), set by [`bind`].

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;

use crate::shared::Shared;

/// Mode of the control socket: the daemon's user and group only.
const SOCKET_MODE: u32 = 0o660;
/// Answers written at once; more wait (a local client cannot pile up tasks).
const AT_ONCE: usize = 4;
/// Longest time to write one answer to a client that does not read.
const WRITE_WAIT: Duration = Duration::from_secs(2);

/// What `gatehouse sessions` gets: the live authenticated sessions, oldest first.
#[derive(Debug, Serialize, Deserialize)]
pub struct View {
    pub sessions: Vec<SessionView>,
}

/// One authenticated session.
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionView {
    pub session: String,
    pub user: String,
    pub source: SocketAddr,
    /// When it connected (RFC 3339, UTC).
    pub since: String,
    /// Seconds since anything moved on any of its channels.
    pub idle_s: u64,
    pub tunnels: Vec<TunnelView>,
}

/// One open tunnel (or one being dialed).
#[derive(Debug, Serialize, Deserialize)]
pub struct TunnelView {
    pub tunnel: u64,
    /// The inventory host.
    pub host: String,
    /// The target as the client typed it.
    pub target: String,
    pub port: u32,
    /// The address dialed.
    pub dial: SocketAddr,
    /// Client to target.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Seconds since bytes last moved either way.
    pub idle_s: u64,
}

/// Binds the control socket at `path` with mode 0660. A socket left there by an earlier run is
/// replaced; any other file (or a link) is refused, never removed.
pub fn bind(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "something other than a socket is there; not removing it",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The live sessions now.
pub(crate) fn view(shared: &Shared) -> View {
    let sessions = shared
        .listed_sessions()
        .into_iter()
        .map(|conn| SessionView {
            session: conn.id.clone(),
            user: conn.user().to_owned(),
            source: conn.peer,
            since: humantime::format_rfc3339_seconds(conn.started_at).to_string(),
            idle_s: conn.idle_for().as_secs(),
            tunnels: conn
                .tunnels()
                .into_iter()
                .map(|(id, t)| TunnelView {
                    tunnel: id,
                    host: t.host,
                    target: t.target,
                    port: t.port,
                    dial: t.dial,
                    bytes_up: t.bytes.up(),
                    bytes_down: t.bytes.down(),
                    idle_s: t.bytes.idle_for().as_secs(),
                })
                .collect(),
        })
        .collect();
    View { sessions }
}

/// Answers every connection to `listener` with [`view`], until the process ends.
pub(crate) async fn serve(shared: Arc<Shared>, listener: UnixListener) {
    let at_once = Arc::new(Semaphore::new(AT_ONCE));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = at_once.clone().acquire_owned().await else {
            return;
        };
        let mut answer = serde_json::to_vec(&view(&shared)).unwrap_or_default();
        answer.push(b'\n');
        tokio::spawn(async move {
            let _ = tokio::time::timeout(WRITE_WAIT, stream.write_all(&answer)).await;
            let _ = stream.shutdown().await;
            drop(permit);
        });
    }
}
