//! One established tunnel that moves data only when asked: `ssh -W` to the discard sink,
//! fed in bursts, its throughput measured at the sink. The siege opens it before the attack
//! and compares its bursts with and without attackers, without keeping a core busy between
//! bursts (which would also slow the logins being measured).

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::feed;
use crate::harness::PRIVATE_ADDR;
use crate::measure::mb_per_s;
use crate::rig::{Env, Side, DISCARD_PORT};
use crate::sink::Conn;

/// How long the tunnel may take to log in and reach the sink.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `ssh -W` to the sink; killed (its process group) on drop.
pub struct Tunnel {
    child: Child,
    /// Each message: keep writing until then.
    bursts: Option<mpsc::Sender<Instant>>,
    writer: Option<JoinHandle<()>>,
    /// The tunnel's connection as the sink sees it.
    conn: Option<Arc<Conn>>,
}

impl Tunnel {
    /// Logs in through `side`'s bastion (from the client namespace, aes128-gcm) and waits
    /// (bounded) until the sink has the connection.
    pub fn open(side: &Side, env: &Env) -> Result<Tunnel, String> {
        side.discard.reset();
        let stderr = env
            .scratch
            .join(format!("siege-{}-tunnel.stderr", side.kind.label()));
        let mut cmd = side.gcm.ssh();
        cmd.args(["-W", &format!("{PRIVATE_ADDR}:{DISCARD_PORT}"), "bastion"]);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).map_err(|e| e.to_string())?)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("start ssh: {e}"))?;
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        let writer = stdin.map(|stdin| thread::spawn(move || write_bursts(stdin, &rx)));
        let mut tunnel = Tunnel {
            child,
            bursts: Some(tx),
            writer,
            conn: None,
        };
        side.discard.wait_conns(1, OPEN_TIMEOUT);
        tunnel.conn = side.discard.conns().first().cloned();
        if tunnel.conn.is_none() {
            return Err(format!(
                "the tunnel did not reach the sink within {OPEN_TIMEOUT:?} (see {})",
                stderr.display()
            ));
        }
        Ok(tunnel)
    }

    /// Writes into the tunnel for `length`; returns the MB/s the sink received after the
    /// first sixth of it (the buffers on the way filling up), or 0 if the tunnel is gone.
    pub fn burst(&self, length: Duration) -> f64 {
        let Some(conn) = &self.conn else {
            return 0.0;
        };
        let start = Instant::now();
        let end = start + length;
        if let Some(tx) = &self.bursts {
            let _ = tx.send(end);
        }
        thread::sleep(length / 6);
        let (from, at) = (conn.bytes(), Instant::now());
        thread::sleep(end.saturating_duration_since(Instant::now()));
        mb_per_s(conn.bytes().saturating_sub(from), at.elapsed())
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.bursts = None;
        // Killing ssh breaks the pipe, so a write blocked in the writer returns.
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// Writes until each received deadline; ends when the sender is gone or a write fails.
fn write_bursts(mut stdin: ChildStdin, bursts: &mpsc::Receiver<Instant>) {
    let data = feed::block();
    while let Ok(until) = bursts.recv() {
        while Instant::now() < until {
            if stdin.write(data).is_err() {
                return;
            }
        }
    }
}
