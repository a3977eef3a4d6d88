//! Child processes with bounded lifetimes: one-shot commands with a wall-clock timeout, and
//! [`Daemon`], a guard for a long-running server.
//!
//! Every child is started in a process group of its own, so that a timeout or a drop can kill
//! the whole group (an `ssh -J` leaves a proxy `ssh` behind otherwise, holding the pipes open).

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::bytes::{Digest, Sha256Pipe};
use super::netns::Netns;
use super::panics::assert_no_panic;
use super::scratch::Scratch;

/// How often waiting loops poll.
const POLL: Duration = Duration::from_millis(20);
/// How long to wait for a dead child's output pipes to drain before killing its group.
const DRAIN: Duration = Duration::from_secs(2);
/// How much of a log is quoted in a panic message.
const QUOTE_CHARS: usize = 4000;

/// What a finished (or killed) one-shot command did.
pub struct CmdOutput {
    /// The command line, for messages.
    pub command: String,
    /// The exit status; `None` when it was killed because it ran out of time.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl CmdOutput {
    /// Exited by itself with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Was killed because it ran out of time.
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    /// The exit code, if it exited by itself (not by a signal or a timeout).
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// stdout as text (lossy).
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (lossy).
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Panics with the whole story unless the command succeeded; `what` says what it was for.
    #[track_caller]
    pub fn expect_success(&self, what: &str) -> &CmdOutput {
        if !self.success() {
            panic!("{what}: expected success, got {self}");
        }
        self
    }

    /// Panics unless the command exited by itself with a non-zero status (a timeout is not the
    /// failure a test means).
    #[track_caller]
    pub fn expect_failure(&self, what: &str) -> &CmdOutput {
        if self.success() || self.timed_out() {
            panic!("{what}: expected a failure exit, got {self}");
        }
        self
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            None => "TIMED OUT (killed)".to_string(),
            Some(s) => match (s.code(), s.signal()) {
                (Some(code), _) => format!("exit {code}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                (None, None) => format!("{s}"),
            },
        };
        write!(
            f,
            "`{}`: {status} after {:.2?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.elapsed,
            tail(&self.stdout_str()),
            tail(&self.stderr_str()),
        )
    }
}

impl fmt::Debug for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Runs `cmd` with stdin from /dev/null, collecting stdout and stderr, and kills its process
/// group if it is still running after `timeout`. Panics only if it cannot be started.
#[track_caller]
pub fn run_with_timeout(cmd: Command, timeout: Duration) -> CmdOutput {
    let line = command_line(&cmd);
    try_run_with_timeout(cmd, timeout).unwrap_or_else(|e| panic!("start `{line}`: {e}"))
}

/// [`run_with_timeout`] that reports a failure to start instead of panicking (for `Drop`).
pub(crate) fn try_run_with_timeout(mut cmd: Command, timeout: Duration) -> io::Result<CmdOutput> {
    cmd.stdin(Stdio::null());
    let child = spawn_piped(&mut cmd)?;
    Ok(finish(child, command_line(&cmd), Instant::now(), timeout))
}

/// Runs `cmd` with its stdin fed from `source` until `source` ends (then stdin is closed: the
/// child sees EOF), with the same timeout rules as [`run_with_timeout`]. Also returns the
/// digest of the bytes actually written to stdin.
#[track_caller]
pub fn run_feeding(
    mut cmd: Command,
    source: impl Read + Send + 'static,
    timeout: Duration,
) -> (CmdOutput, Digest) {
    let line = command_line(&cmd);
    cmd.stdin(Stdio::piped());
    let mut child = spawn_piped(&mut cmd).unwrap_or_else(|e| panic!("start `{line}`: {e}"));
    let pid = child.id();
    let stdin = child.stdin.take().expect("child stdin is piped");
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(feed(source, stdin));
    });
    let output = finish(child, line, started, timeout);
    // A leftover grandchild may still hold stdin open: then kill the group to unblock the feeder.
    let sent = rx
        .recv_timeout(DRAIN)
        .or_else(|_| {
            kill_group(pid, Signal::SIGKILL);
            rx.recv_timeout(DRAIN)
        })
        .expect("the stdin feeder finished after the child exited");
    (output, sent)
}

/// Copies `source` into `sink`, hashing what was written; stops at the first write error (the
/// child closed its stdin), then closes `sink`.
fn feed(mut source: impl Read, mut sink: impl Write) -> Digest {
    let mut hasher = Sha256Pipe::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("read the stdin source: {e}"),
        };
        if sink.write_all(&buf[..n]).is_err() {
            break;
        }
        hasher.update(&buf[..n]);
    }
    drop(sink);
    hasher.finish()
}

fn spawn_piped(cmd: &mut Command) -> io::Result<Child> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
}

/// Waits for `child` until `timeout` after `started`, collecting its output.
fn finish(mut child: Child, command: String, started: Instant, timeout: Duration) -> CmdOutput {
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    let pid = child.id();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= timeout => {
                kill_group(pid, Signal::SIGKILL);
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(POLL),
            Err(e) => panic!("wait for `{command}`: {e}"),
        }
    };
    let elapsed = started.elapsed();
    // A leftover grandchild may still hold the pipes: give it a moment, then kill the group.
    let collect = |rx: mpsc::Receiver<Vec<u8>>| {
        rx.recv_timeout(DRAIN).unwrap_or_else(|_| {
            kill_group(pid, Signal::SIGKILL);
            rx.recv_timeout(DRAIN).unwrap_or_default()
        })
    };
    let stdout = collect(stdout);
    let stderr = collect(stderr);
    let output = CmdOutput {
        command,
        status,
        stdout,
        stderr,
        elapsed,
    };
    // The harness rule (see `panics`): a command that panicked fails the test, whatever the
    // test goes on to check.
    assert_no_panic(&output.command, &output.stdout_str(), &output);
    assert_no_panic(&output.command, &output.stderr_str(), &output);
    output
}

fn read_in_background(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

fn kill_group(pgid: u32, sig: Signal) {
    let _ = signal::killpg(Pid::from_raw(pgid as i32), sig);
}

/// The command line as text, for messages.
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Polls `cond` every 20 ms until it holds; panics with "timed out waiting for {what}" after
/// `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(POLL);
    }
}

/// The last few thousand characters of a log, for panic messages.
fn tail(text: &str) -> &str {
    let trimmed = text.trim_end();
    if trimmed.len() <= QUOTE_CHARS {
        return trimmed;
    }
    let mut start = trimmed.len() - QUOTE_CHARS;
    while !trimmed.is_char_boundary(start) {
        start += 1;
    }
    &trimmed[start..]
}

/// A long-running child process (a server under test, sshd, Jupyter, an `ssh -N` tunnel).
///
/// stdout and stderr go to `<scratch>/<name>.stdout` and `.stderr`. Dropping the guard kills
/// the child's whole process group.
pub struct Daemon {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    /// The program is the gatehouse daemon: an exit nobody asked for fails the test.
    guarded: bool,
    /// The test stopped it (a signal, a kill) or looked at its exit: that exit was asked for.
    exit_expected: std::cell::Cell<bool>,
}

impl Daemon {
    /// Spawns `cmd` (typically from [`Netns::command`]) with stdin from /dev/null and its output
    /// captured to files in `scratch`. `name` names the log files and appears in messages.
    pub fn spawn(name: &str, mut cmd: Command, scratch: &Scratch) -> Daemon {
        let stdout_path = scratch.join(format!("{name}.stdout"));
        let stderr_path = scratch.join(format!("{name}.stderr"));
        let create = |path: &Path| {
            File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
        };
        let line = command_line(&cmd);
        // The gatehouse binary (run directly or through `ip netns exec`).
        let guarded = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .any(|arg| Path::new(arg).file_name() == Some(std::ffi::OsStr::new("gatehouse")));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(create(&stdout_path))
            .stderr(create(&stderr_path))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} (`{line}`): {e}"));
        Daemon {
            name: name.to_string(),
            child,
            status: None,
            stdout_path,
            stderr_path,
            guarded,
            exit_expected: std::cell::Cell::new(false),
        }
    }

    /// The name given to [`Daemon::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if it has exited, without blocking. A test that looks at the exit
    /// asked for it: the harness rule against unasked exits no longer applies.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.exit_expected.set(true);
        self.poll_exit()
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("wait for {}: {e}", self.name));
        }
        self.status
    }

    /// Still running.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits until the process accepts TCP connections on `addr` inside `ns`. Panics, quoting
    /// the logs, if it exits first or `timeout` passes.
    #[track_caller]
    pub fn wait_for_port(&mut self, ns: &Netns, addr: SocketAddr, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "{} exited ({status}) before listening on {addr} in {}\n{}",
                    self.name,
                    ns.name(),
                    self.logs()
                );
            }
            if ns.connect(addr, Duration::from_millis(500)).is_ok() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not listen on {addr} in {} within {timeout:?}\n{}",
                    self.name,
                    ns.name(),
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until stderr contains `needle` and returns the whole stderr; panics, quoting the
    /// logs, on timeout.
    #[track_caller]
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for_log(needle, timeout, Daemon::stderr)
    }

    /// Waits until stdout contains `needle` and returns the whole stdout; panics on timeout.
    #[track_caller]
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for_log(needle, timeout, Daemon::stdout)
    }

    #[track_caller]
    fn wait_for_log(
        &mut self,
        needle: &str,
        timeout: Duration,
        read: fn(&Daemon) -> String,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = read(self);
            if text.contains(needle) {
                return text;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}: no {needle:?} in its output within {timeout:?}\n{}",
                    self.name,
                    self.logs()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Sends `sig` to the process (not its group).
    pub fn signal(&self, sig: Signal) {
        self.exit_expected.set(true);
        signal::kill(Pid::from_raw(self.pid() as i32), sig)
            .unwrap_or_else(|e| panic!("send {sig} to {}: {e}", self.name));
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit. Panics (after SIGKILL), quoting the
    /// logs, if the process did not exit in time.
    #[track_caller]
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        self.signal(Signal::SIGTERM);
        match self.wait_exit(timeout) {
            Some(status) => status,
            None => {
                self.kill();
                panic!(
                    "{} did not exit within {timeout:?} of SIGTERM\n{}",
                    self.name,
                    self.logs()
                );
            }
        }
    }

    /// SIGKILLs the whole process group (unless the child was already reaped) and reaps it.
    pub fn kill(&mut self) {
        self.exit_expected.set(true);
        // An unreaped leader (even a zombie) pins its pid, so the group id is still ours.
        if self.status.is_none() {
            kill_group(self.pid(), Signal::SIGKILL);
            self.status = self.child.wait().ok();
        }
    }

    /// Everything written to stdout so far (lossy).
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Everything written to stderr so far (lossy).
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Fails the test if the process printed a Rust panic on stdout or stderr (the harness
    /// rule; also checked when the guard is dropped).
    #[track_caller]
    pub fn assert_no_panic(&self) {
        assert_no_panic(
            &format!("{} (stdout)", self.name),
            &self.stdout(),
            &self.logs(),
        );
        assert_no_panic(
            &format!("{} (stderr)", self.name),
            &self.stderr(),
            &self.logs(),
        );
    }

    /// Both logs, trimmed to their tails, for panic messages.
    pub fn logs(&self) -> String {
        format!(
            "--- {name} stdout ({}) ---\n{}\n--- {name} stderr ({}) ---\n{}",
            self.stdout_path.display(),
            tail(&self.stdout()),
            self.stderr_path.display(),
            tail(&self.stderr()),
            name = self.name,
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The harness rule for gatehouse: it never exits unless the test stopped it or looked
        // for its exit. An abort, a stack overflow, an OOM kill or an exit(1) prints no panic,
        // and a test that only looked at its clients (refused, as a dead bastion refuses
        // everyone) would pass over it.
        let died = if self.guarded && !self.exit_expected.get() {
            self.poll_exit()
        } else {
            None
        };
        // Leftovers of a daemon that was already reaped die with the namespace teardown.
        self.kill();
        // The harness rule: every test fails if a daemon it ran panicked, even one that kept
        // serving. Not while the test is already failing (a second panic would abort).
        if !thread::panicking() {
            self.assert_no_panic();
            if let Some(status) = died {
                panic!(
                    "{} exited by itself ({status}) while the test ran: nobody asked it to\n{}",
                    self.name,
                    self.logs()
                );
            }
        }
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program named `gatehouse` (a shell behind that name) that dies as the test goes on.
    fn dying(scratch: &Scratch, name: &str, script: &str) -> Daemon {
        let program = scratch.join("gatehouse");
        if !program.exists() {
            std::os::unix::fs::symlink("/bin/sh", &program).expect("symlink");
        }
        let mut cmd = Command::new(&program);
        cmd.args(["-c", script]);
        let mut daemon = Daemon::spawn(name, cmd, scratch);
        // Its end, seen without looking (as a test that only watched its clients).
        let deadline = Instant::now() + Duration::from_secs(10);
        while daemon.child.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "{name} did not end");
            thread::sleep(POLL);
        }
        daemon
    }

    /// The harness rule sees a daemon that died without a panic message: an abort, a kill
    /// (as the OOM killer's), an exit nobody asked for; a stop the test asked for is none.
    #[test]
    fn a_gatehouse_that_exits_unasked_fails_the_test_without_a_panic_message() {
        let scratch = Scratch::new();
        for (name, script) in [
            ("aborted", "kill -ABRT $$"),
            ("killed", "kill -KILL $$"),
            ("exited", "exit 1"),
        ] {
            let daemon = dying(&scratch, name, script);
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(daemon)));
            let message = caught
                .err()
                .and_then(|e| e.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| panic!("{name}: the harness did not fail the test"));
            assert!(message.contains("exited by itself"), "{name}: {message}");
        }
        // Looked at, or stopped by the test: no failure.
        let mut looked = dying(&scratch, "looked", "exit 3");
        assert_eq!(looked.try_wait().and_then(|s| s.code()), Some(3));
        drop(looked);
    }
}
