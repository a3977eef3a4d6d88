//! Targets in the private namespace: a discard sink that times what it receives, a server
//! that closes every connection at once (for login timing), and a server that never reads
//! (the stuck target of the head-of-line measurement).
//!
//! The harness's `TcpServer` hashes everything through `sha256sum`, which would compete for
//! the two cores with the bastion being measured; these only count.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::harness::Netns;

/// Connections one sink accepts at most (the largest measurement opens about a hundred).
const MAX_CONNECTIONS: usize = 4096;
/// A sink connection that receives nothing for this long is dropped.
const IDLE: Duration = Duration::from_secs(120);
const READ_BUFFER: usize = 256 * 1024;

/// What a sink does with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Read to EOF counting bytes, reply `"<count>\n"`, close.
    Discard,
    /// Close at once.
    Close,
    /// Accept and never read; hold the socket until the sink is dropped.
    Stall,
}

/// One accepted connection, as seen by a discard sink.
#[derive(Debug)]
pub struct Conn {
    pub bytes: AtomicU64,
    pub first_byte: OnceLock<Instant>,
    pub eof: OnceLock<Instant>,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            bytes: AtomicU64::new(0),
            first_byte: OnceLock::new(),
            eof: OnceLock::new(),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn eof(&self) -> Option<Instant> {
        self.eof.get().copied()
    }
}

struct State {
    conns: Mutex<Vec<Arc<Conn>>>,
    held: Mutex<Vec<TcpStream>>,
    accepted: AtomicUsize,
}

/// A server thread in a namespace; stopped on drop.
pub struct Sink {
    ns: Netns,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl Sink {
    pub fn start(ns: &Netns, addr: SocketAddr, mode: Mode) -> io::Result<Sink> {
        let listener = ns.listen(addr)?;
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(State {
            conns: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
        });
        let accept = {
            let (stop, state) = (stop.clone(), state.clone());
            thread::Builder::new()
                .name(format!("sink-{}", addr.port()))
                .spawn(move || accept_loop(listener, mode, &stop, &state))?
        };
        Ok(Sink {
            ns: ns.clone(),
            addr,
            stop,
            state,
            accept: Some(accept),
        })
    }

    /// The connections accepted since the last [`Sink::reset`], oldest first.
    pub fn conns(&self) -> Vec<Arc<Conn>> {
        lock(&self.state.conns).clone()
    }

    /// Forgets the connections recorded so far (they keep running).
    pub fn reset(&self) {
        lock(&self.state.conns).clear();
    }

    /// Closes the connections a stalling sink holds.
    pub fn release_held(&self) {
        lock(&self.state.held).clear();
    }

    /// Waits (bounded) until `n` connections were accepted since the last reset.
    pub fn wait_conns(&self, n: usize, timeout: Duration) -> bool {
        wait(timeout, || self.conns().len() >= n)
    }

    /// Waits (bounded) until `n` connections since the last reset have reached EOF.
    pub fn wait_eofs(&self, n: usize, timeout: Duration) -> bool {
        wait(timeout, || {
            self.conns().iter().filter(|c| c.eof().is_some()).count() >= n
        })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept with a connection of our own. If that fails (the namespace
        // was deleted under us, e.g. by another run's sweep), the thread stays blocked in
        // accept: leave it behind rather than hang the benchmark.
        let woken = self.ns.connect(self.addr, Duration::from_secs(1)).is_ok();
        if let Some(accept) = self.accept.take() {
            if woken {
                let _ = accept.join();
            }
        }
        self.release_held();
    }
}

/// Polls `cond` every 5 ms until it holds or `timeout` passes.
pub fn wait(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Blocking accept (a polling loop would add its period to every login measured).
fn accept_loop(listener: TcpListener, mode: Mode, stop: &AtomicBool, state: &Arc<State>) {
    while state.accepted.load(Ordering::Relaxed) < MAX_CONNECTIONS {
        let accepted = listener.accept();
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok((stream, _)) = accepted else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        state.accepted.fetch_add(1, Ordering::Relaxed);
        match mode {
            Mode::Close => drop(stream),
            Mode::Stall => lock(&state.held).push(stream),
            Mode::Discard => {
                let conn = Arc::new(Conn::new());
                lock(&state.conns).push(conn.clone());
                let _ = thread::Builder::new()
                    .name("sink-conn".into())
                    .spawn(move || discard(stream, &conn));
            }
        }
    }
}

fn discard(mut stream: TcpStream, conn: &Conn) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_write_timeout(Some(IDLE))?;
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let _ = conn.first_byte.set(Instant::now());
                conn.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let _ = conn.eof.set(Instant::now());
    stream.write_all(format!("{}\n", conn.bytes()).as_bytes())?;
    stream.shutdown(Shutdown::Write)
}
