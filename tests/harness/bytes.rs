//! Bytes for transfer tests: a deterministic [`Pattern`] source, SHA-256 digests, and
//! [`TcpServer`], a sink/echo server listening inside a namespace.
//!
//! SHA-256 runs in coreutils' `sha256sum` ([`Sha256Pipe`]): the test crate is built without
//! optimisation, where a Rust SHA-256 manages about 30 MB/s, ten times slower than `sha256sum`.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::netns::Netns;

/// Size of the pattern's repeating table; chunks of it are copied, never computed per byte.
const BLOCK: usize = 1 << 16;
/// Idle limit on a server connection: a stuck peer ends the connection thread.
const IDLE: Duration = Duration::from_secs(120);
/// Connections a [`TcpServer`] accepts at most.
const MAX_CONNECTIONS: usize = 1024;

/// A byte count and the lowercase hex SHA-256 of those bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    pub len: u64,
    pub sha256: String,
}

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        let mut pipe = Sha256Pipe::new();
        pipe.update(data);
        pipe.finish()
    }

    /// The digest of everything `source` yields.
    pub fn of_reader(mut source: impl Read) -> Digest {
        let mut pipe = Sha256Pipe::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match source.read(&mut buf) {
                Ok(0) => return pipe.finish(),
                Ok(n) => pipe.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read bytes to hash: {e}"),
            }
        }
    }

    /// Parses the `"<len> <sha256>\n"` line a digest [`TcpServer`] sends after EOF, returning
    /// the digest and the bytes after the line.
    pub fn parse_reply(reply: &[u8]) -> Option<(Digest, &[u8])> {
        let end = reply.iter().position(|&b| b == b'\n')?;
        let line = std::str::from_utf8(&reply[..end]).ok()?;
        let (len, sha256) = line.split_once(' ')?;
        let digest = Digest {
            len: len.parse().ok()?,
            sha256: sha256.to_string(),
        };
        Some((digest, &reply[end + 1..]))
    }

    /// The `"<len> <sha256>\n"` line.
    pub fn reply_line(&self) -> String {
        format!("{} {}\n", self.len, self.sha256)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes, sha256 {}", self.len, self.sha256)
    }
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    Digest::of(data).sha256
}

/// Incremental SHA-256 through a `sha256sum` child process.
pub struct Sha256Pipe {
    child: Child,
    stdin: Option<ChildStdin>,
    len: u64,
}

impl Sha256Pipe {
    pub fn new() -> Sha256Pipe {
        let mut child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sha256sum (coreutils)");
        let stdin = child.stdin.take();
        Sha256Pipe {
            child,
            stdin,
            len: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.stdin
            .as_mut()
            .expect("update after finish")
            .write_all(data)
            .expect("write to sha256sum");
        self.len += data.len() as u64;
    }

    pub fn finish(mut self) -> Digest {
        drop(self.stdin.take());
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .expect("sha256sum stdout is piped")
            .read_to_string(&mut out)
            .expect("read sha256sum output");
        let status = self.child.wait().expect("wait for sha256sum");
        assert!(status.success(), "sha256sum failed: {status}");
        let sha256 = out
            .split_whitespace()
            .next()
            .expect("sha256sum prints the digest")
            .to_string();
        Digest {
            len: self.len,
            sha256,
        }
    }
}

impl Default for Sha256Pipe {
    fn default() -> Self {
        Sha256Pipe::new()
    }
}

impl Drop for Sha256Pipe {
    fn drop(&mut self) {
        // Unfinished (a panic mid-way): close stdin so sha256sum exits, then reap it.
        if self.stdin.take().is_some() {
            let _ = self.child.wait();
        }
    }
}

/// `len` deterministic pseudo-random bytes (the same for the same `seed`), generated at memcpy
/// speed. Implements `Read`.
#[derive(Clone)]
pub struct Pattern {
    table: Arc<Vec<u8>>,
    pos: u64,
    len: u64,
}

impl Pattern {
    pub fn new(len: u64, seed: u64) -> Pattern {
        // xorshift64*, seeded away from zero.
        let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
        let mut table = Vec::with_capacity(2 * BLOCK);
        while table.len() < 2 * BLOCK {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            table.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        Pattern {
            table: Arc::new(table),
            pos: 0,
            len,
        }
    }

    /// The total length.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole pattern in memory (for small ones).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len as usize);
        self.clone()
            .read_to_end(&mut out)
            .expect("reading a pattern cannot fail");
        out
    }

    /// Its digest.
    pub fn digest(&self) -> Digest {
        Digest::of_reader(self.clone())
    }
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let remaining = self.len - self.pos;
        if remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        // Chunk k of the output is the table window starting at a k-dependent offset.
        let block = BLOCK as u64;
        let within = (self.pos % block) as usize;
        let start = ((self.pos / block).wrapping_mul(4099) % block) as usize + within;
        let n = buf.len().min(BLOCK - within).min(remaining as usize);
        buf[..n].copy_from_slice(&self.table[start..start + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Digest { reply_after_eof: u64 },
    Echo,
}

/// A TCP server inside a namespace, one thread per connection, stopped on drop.
///
/// - digest mode: reads each connection to EOF, then (after the EOF, so this exercises
///   half-close) writes `"<len> <sha256>\n"` followed by `reply_after_eof` bytes of
///   `Pattern::new(reply_after_eof, 1)`, and closes.
/// - echo mode: writes back everything it reads; on EOF it shuts down its sending side.
///
/// Either way it records, per connection, the digest of what it received.
pub struct TcpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<Result<Digest, String>>>>,
    accept: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// A digest server on `addr` in `ns` (see the type's docs).
    pub fn digest(ns: &Netns, addr: SocketAddr, reply_after_eof: u64) -> TcpServer {
        TcpServer::start(ns, addr, Mode::Digest { reply_after_eof })
    }

    /// An echo server on `addr` in `ns`.
    pub fn echo(ns: &Netns, addr: SocketAddr) -> TcpServer {
        TcpServer::start(ns, addr, Mode::Echo)
    }

    fn start(ns: &Netns, addr: SocketAddr, mode: Mode) -> TcpServer {
        let listener = ns
            .listen(addr)
            .unwrap_or_else(|e| panic!("listen on {addr} in {}: {e}", ns.name()));
        listener
            .set_nonblocking(true)
            .expect("make the listener non-blocking");
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let stop = stop.clone();
            let received = received.clone();
            thread::Builder::new()
                .name(format!("tcp-server-{addr}"))
                .spawn(move || accept_loop(listener, mode, &stop, &received))
                .expect("spawn the accept thread")
        };
        TcpServer {
            addr,
            stop,
            received,
            accept: Some(accept),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// One entry per finished connection, in finishing order: what it received, or the error
    /// that ended it.
    pub fn connections(&self) -> Vec<Result<Digest, String>> {
        self.received.lock().expect("server results lock").clone()
    }

    /// Waits until `n` connections have finished and returns them; panics on timeout.
    pub fn wait_for_connections(&self, n: usize, timeout: Duration) -> Vec<Result<Digest, String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self.connections();
            if done.len() >= n {
                return done;
            }
            if Instant::now() >= deadline {
                panic!(
                    "server on {}: {} of {n} connections finished within {timeout:?}: {done:?}",
                    self.addr,
                    done.len()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    mode: Mode,
    stop: &AtomicBool,
    received: &Arc<Mutex<Vec<Result<Digest, String>>>>,
) {
    let mut accepted = 0;
    while !stop.load(Ordering::Relaxed) && accepted < MAX_CONNECTIONS {
        match listener.accept() {
            Ok((stream, _)) => {
                accepted += 1;
                let received = received.clone();
                thread::spawn(move || {
                    let result = serve(stream, mode).map_err(|e| e.to_string());
                    received.lock().expect("server results lock").push(result);
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve(mut stream: TcpStream, mode: Mode) -> io::Result<Digest> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_write_timeout(Some(IDLE))?;
    let mut hasher = Sha256Pipe::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        if let Mode::Echo = mode {
            stream.write_all(&buf[..n])?;
        }
    }
    let digest = hasher.finish();
    match mode {
        Mode::Echo => stream.shutdown(Shutdown::Write)?,
        Mode::Digest { reply_after_eof } => {
            stream.write_all(digest.reply_line().as_bytes())?;
            io::copy(&mut Pattern::new(reply_after_eof, 1), &mut stream)?;
            stream.flush()?;
            stream.shutdown(Shutdown::Write)?;
        }
    }
    Ok(digest)
}
