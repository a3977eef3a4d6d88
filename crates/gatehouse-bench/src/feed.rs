//! OpenSSH client processes driven by the benchmark: one fed with N bytes on stdin (`ssh -W`
//! uploads), and one timed from start to exit (logins). Each runs in its own process group,
//! killed on timeout and on drop.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Size of the block written over and over.
const BLOCK: usize = 256 * 1024;

/// Pseudo-random bytes (incompressible, though compression is off everywhere anyway).
pub fn block() -> &'static [u8] {
    static BLOCK_DATA: OnceLock<Vec<u8>> = OnceLock::new();
    BLOCK_DATA.get_or_init(|| {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut v = Vec::with_capacity(BLOCK);
        while v.len() < BLOCK {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            v.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        v
    })
}

/// Writes `len` bytes of [`block`] to `sink`; stops early on a write error or when `stop` is
/// set. Returns the bytes written.
pub fn write_bytes(sink: &mut impl Write, len: u64, stop: &AtomicBool) -> u64 {
    let data = block();
    let mut sent = 0u64;
    while sent < len && !stop.load(Ordering::Relaxed) {
        let n = (len - sent).min(data.len() as u64) as usize;
        match sink.write(&data[..n]) {
            Ok(0) => break,
            Ok(n) => sent += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    sent
}

/// A gate the feeders wait at, so that many transfers start together.
#[derive(Clone, Default)]
pub struct Gate(Arc<AtomicBool>);

impl Gate {
    pub fn open(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Waits until opened or `stop` is set, bounded by `timeout`; true if opened.
    fn wait(&self, stop: &AtomicBool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.0.load(Ordering::Acquire) {
            if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

/// An `ssh` (or any) process whose stdin gets `len` bytes, then EOF.
pub struct Fed {
    child: Child,
    feeder: Option<JoinHandle<u64>>,
    stop: Arc<AtomicBool>,
    status: Option<ExitStatus>,
}

impl Fed {
    /// Starts `cmd` with stdout discarded and stderr to `stderr`; a thread writes `len` bytes
    /// to its stdin once `gate` (if any) opens.
    pub fn spawn(mut cmd: Command, len: u64, gate: Option<Gate>, stderr: &Path) -> io::Result<Fed> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(File::create(stderr)?)
            .process_group(0)
            .spawn()?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("stdin not piped"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let feeder = {
            let stop = stop.clone();
            thread::Builder::new()
                .name("feeder".into())
                .spawn(move || {
                    if let Some(gate) = gate {
                        if !gate.wait(&stop, Duration::from_secs(300)) {
                            return 0;
                        }
                    }
                    write_bytes(&mut stdin, len, &stop)
                })?
        };
        Ok(Fed {
            child,
            feeder: Some(feeder),
            stop,
            status: None,
        })
    }

    /// Waits for the exit, killing the process group after `timeout`. Returns the exit status
    /// (`None` if it was killed) and the bytes fed.
    pub fn wait(mut self, timeout: Duration) -> (Option<ExitStatus>, u64) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.status = Some(status);
                    break;
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                _ => {
                    self.kill();
                    break;
                }
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.feeder.take().and_then(|f| f.join().ok()).unwrap_or(0);
        (self.status, sent)
    }

    fn kill(&mut self) {
        if self.status.is_none() {
            let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            self.status = None;
            let _ = self.child.wait();
        }
    }
}

impl Drop for Fed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.feeder.is_some() {
            self.kill();
        }
    }
}

/// Runs `cmd` (stdio to /dev/null) and returns its wall-clock time and exit status; kills its
/// process group after `timeout` (then the status is `None`). The wait is a blocking `wait`
/// in a helper thread, so the timing has no polling granularity.
pub fn timed_run(
    mut cmd: Command,
    timeout: Duration,
) -> io::Result<(Duration, Option<ExitStatus>)> {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(Instant::now());
        status
    });
    let done = rx.recv_timeout(timeout);
    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    let status = waiter.join().ok().and_then(|s| s.ok());
    match done {
        Ok(at) => Ok((at - started, status)),
        Err(_) => Ok((started.elapsed(), None)),
    }
}
