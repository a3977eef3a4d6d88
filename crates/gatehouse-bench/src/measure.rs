//! The six measurements. Each takes both sides and alternates between them (gatehouse,
//! OpenSSH, gatehouse, ...), so that machine noise hits both; each returns its samples.
//! Every wait is bounded; a failure becomes a reported problem, never a panic.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::feed::{self, timed_run, Fed, Gate};
use crate::harness::PRIVATE_ADDR;
use crate::harness::{Daemon, SshClient, TEST_USER};
use crate::loadgen;
use crate::rig::{Env, Kind, Side, CLOSE_PORT, DISCARD_PORT, PRIVATE_HOST, STALL_PORT};
use gatehouse_bench::procfs;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// MB/s (10^6 bytes a second) of `bytes` moved in `elapsed`.
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn ticks_to_s(ticks: u64) -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    ticks as f64 / *TCK.get_or_init(clock_ticks_per_sec)
}

/// Generous deadline for moving `bytes` (at 10 MB/s, plus login time).
fn transfer_timeout(bytes: u64) -> Duration {
    Duration::from_secs(30 + bytes / 10_000_000)
}

fn w_target(port: u16) -> String {
    format!("{PRIVATE_ADDR}:{port}")
}

/// Per-side samples of one measurement, in the order taken.
#[derive(Clone, Debug, Serialize)]
pub struct PerSide<T> {
    pub gatehouse: Vec<T>,
    pub openssh: Vec<T>,
}

impl<T> Default for PerSide<T> {
    fn default() -> Self {
        PerSide {
            gatehouse: Vec::new(),
            openssh: Vec::new(),
        }
    }
}

impl<T> PerSide<T> {
    pub fn push(&mut self, kind: Kind, v: T) {
        match kind {
            Kind::Gatehouse => self.gatehouse.push(v),
            Kind::OpenSsh => self.openssh.push(v),
        }
    }

    pub fn get(&self, kind: Kind) -> &[T] {
        match kind {
            Kind::Gatehouse => &self.gatehouse,
            Kind::OpenSsh => &self.openssh,
        }
    }
}

// ---- 1 and 2: one tunnel, throughput and bastion CPU ------------------------------------------

#[derive(Clone, Debug, Serialize)]
pub struct Transfer {
    pub bytes: u64,
    /// Measured at the sink, first byte to EOF.
    pub mb_per_s: f64,
    /// Bastion CPU seconds for the whole transfer (login included), per GiB moved.
    pub cpu_s_per_gib: f64,
}

fn client_for<'a>(side: &'a Side, cipher: &str) -> &'a SshClient {
    if cipher == crate::rig::CHACHA {
        &side.chacha
    } else {
        &side.gcm
    }
}

/// `reps` uploads of `bytes` through `ssh -W` per side, alternating.
pub fn one_tunnel(
    sides: &[&Side],
    env: &Env,
    cipher: &str,
    bytes: u64,
    reps: usize,
    problems: &mut Vec<String>,
) -> PerSide<Transfer> {
    let mut out = PerSide::default();
    for rep in 0..reps {
        for side in sides {
            let tag = format!(
                "{}-{}-{rep}",
                side.kind.label(),
                cipher.split('@').next().unwrap_or(cipher)
            );
            match transfer(side, client_for(side, cipher), bytes, env, &tag) {
                Ok(t) => {
                    eprintln!(
                        "  {tag}: {:.0} MB/s, {:.2} CPU-s/GiB",
                        t.mb_per_s, t.cpu_s_per_gib
                    );
                    out.push(side.kind, t);
                }
                Err(e) => problems.push(format!("one tunnel {tag}: {e}")),
            }
        }
    }
    out
}

fn transfer(
    side: &Side,
    client: &SshClient,
    bytes: u64,
    env: &Env,
    tag: &str,
) -> Result<Transfer, String> {
    side.discard.reset();
    let cpu0 = side.quiescent_cpu_ticks();
    let mut cmd = client.ssh();
    cmd.args(["-W", &w_target(DISCARD_PORT), "bastion"]);
    let stderr = env.scratch.join(format!("{tag}.stderr"));
    let fed = Fed::spawn(cmd, bytes, None, &stderr).map_err(|e| format!("start ssh: {e}"))?;
    let (status, sent) = fed.wait(transfer_timeout(bytes));
    side.discard.wait_eofs(1, Duration::from_secs(5));
    let cpu1 = side.quiescent_cpu_ticks();
    let conn = side.discard.conns().last().cloned().ok_or_else(|| {
        format!(
            "the sink saw no connection (ssh: {status:?}, {})",
            read_tail(&stderr)
        )
    })?;
    let (Some(first), Some(eof)) = (conn.first_byte.get(), conn.eof()) else {
        return Err(format!(
            "incomplete: {} of {bytes} bytes arrived (ssh: {status:?}, {})",
            conn.bytes(),
            read_tail(&stderr)
        ));
    };
    if conn.bytes() != bytes || sent != bytes {
        return Err(format!(
            "sent {sent}, received {} of {bytes} bytes",
            conn.bytes()
        ));
    }
    Ok(Transfer {
        bytes,
        mb_per_s: mb_per_s(bytes, eof.duration_since(*first)),
        cpu_s_per_gib: ticks_to_s(cpu1.saturating_sub(cpu0)) / (bytes as f64 / GIB as f64),
    })
}

fn read_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let t = text.trim();
    let start = t.len().saturating_sub(300);
    let start = (start..t.len())
        .find(|&i| t.is_char_boundary(i))
        .unwrap_or(t.len());
    format!("stderr: {:?}", &t[start..])
}

// ---- 3: logins --------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize)]
pub struct Logins {
    /// Wall time of each login, ms.
    pub ms: Vec<f64>,
    pub failures: usize,
    /// Bastion CPU over all of them, divided by their number, ms.
    pub cpu_ms_per_login: f64,
}

/// How a login authenticates to the bastion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// The plain key the bastion lists.
    Key,
    /// A certificate from the CA both bastions trust (`trusted_user_ca` / `TrustedUserCAKeys`).
    Certificate,
}

/// `n` sequential logins per side, alternating. `full`: `ssh -J bastion private true` (the
/// last hop is the private sshd); otherwise the bastion hop alone: `ssh -W` to a target that
/// closes at once (login, channel open, dial, close), which is what `-J` asks of a bastion.
pub fn logins(
    sides: &[&Side],
    n: usize,
    full: bool,
    credential: Credential,
    problems: &mut Vec<String>,
) -> PerSide<Logins> {
    let mut out: PerSide<Logins> = PerSide::default();
    let cpu0: Vec<u64> = sides.iter().map(|s| s.quiescent_cpu_ticks()).collect();
    let mut results: Vec<Logins> = sides.iter().map(|_| Logins::default()).collect();
    for _ in 0..n {
        for (side, r) in sides.iter().zip(results.iter_mut()) {
            let mut cmd = match credential {
                Credential::Key => side.gcm.ssh(),
                Credential::Certificate => side.cert.ssh(),
            };
            if full {
                cmd.args([PRIVATE_HOST, "true"]);
            } else {
                cmd.args(["-W", &w_target(CLOSE_PORT), "bastion"]);
            }
            match timed_run(cmd, Duration::from_secs(30)) {
                Ok((elapsed, Some(status))) if status.success() => {
                    r.ms.push(elapsed.as_secs_f64() * 1e3)
                }
                _ => r.failures += 1,
            }
        }
    }
    for ((side, mut r), c0) in sides.iter().zip(results).zip(cpu0) {
        let c1 = side.quiescent_cpu_ticks();
        let done = r.ms.len().max(1);
        r.cpu_ms_per_login = ticks_to_s(c1.saturating_sub(c0)) * 1e3 / done as f64;
        if r.failures > 0 {
            problems.push(format!(
                "logins ({}{}) on {}: {} of {n} failed",
                if full { "ssh -J" } else { "bastion hop" },
                if credential == Credential::Certificate {
                    ", certificate"
                } else {
                    ""
                },
                side.kind.label(),
                r.failures
            ));
        }
        out.push(side.kind, r);
    }
    out
}

// ---- 4: memory of idle authenticated sessions -------------------------------------------------

#[derive(Clone, Debug, Default, Serialize)]
pub struct IdleMemory {
    pub requested: usize,
    pub opened: usize,
    pub open_seconds: f64,
    pub baseline_pss_kib: u64,
    pub held_pss_kib: u64,
    pub held_rss_kib: u64,
    pub processes: usize,
    pub pss_kib_per_session: f64,
    pub rss_kib_per_session: f64,
}

/// Restarts the bastion, then holds `n` authenticated idle sessions and sums PSS over every
/// bastion process.
pub fn idle_memory(
    side: &mut Side,
    env: &Env,
    n: usize,
    problems: &mut Vec<String>,
) -> Option<IdleMemory> {
    side.restart(env);
    let base = procfs::memory(&side.bastion_pids());
    let held = match loadgen::open_idle_sessions(
        side.client_ns(),
        side.bastion_addr(),
        TEST_USER,
        &env.key.private,
        n,
        32,
        Duration::from_secs(60),
    ) {
        Ok(h) => h,
        Err(e) => {
            problems.push(format!("idle sessions on {}: {e:#}", side.kind.label()));
            return None;
        }
    };
    let opened = held.opened.clone();
    if opened.failed > 0 {
        problems.push(format!(
            "idle sessions on {}: {} of {n} failed: {:?}",
            side.kind.label(),
            opened.failed,
            opened.errors
        ));
    }
    // Let post-authentication work (sshd forks the user's child) settle.
    thread::sleep(Duration::from_secs(2));
    let mem = procfs::memory(&side.bastion_pids());
    held.release();
    let ok = opened.ok.max(1) as f64;
    let m = IdleMemory {
        requested: n,
        opened: opened.ok,
        open_seconds: opened.elapsed.as_secs_f64(),
        baseline_pss_kib: base.pss_kib,
        held_pss_kib: mem.pss_kib,
        held_rss_kib: mem.rss_kib,
        processes: mem.processes,
        pss_kib_per_session: mem.pss_kib.saturating_sub(base.pss_kib) as f64 / ok,
        rss_kib_per_session: mem.rss_kib.saturating_sub(base.rss_kib) as f64 / ok,
    };
    eprintln!(
        "  {}: {} sessions in {:.1} s: {:.1} KiB PSS each, {:.1} MiB PSS in all ({} processes)",
        side.kind.label(),
        m.opened,
        m.open_seconds,
        m.pss_kib_per_session,
        m.held_pss_kib as f64 / 1024.0,
        m.processes
    );
    Some(m)
}

// ---- 5: many tunnels at once ------------------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize)]
pub struct Many {
    pub tunnels: usize,
    pub bytes_each: u64,
    pub aggregate_mb_per_s: f64,
    /// Per tunnel, from the common start to its EOF at the sink.
    pub per_tunnel_mb_per_s: Vec<f64>,
    pub slowest_over_fastest: f64,
    pub cpu_s_per_gib: f64,
}

/// `n` `ssh -W` uploads of `bytes` each, released together once all are connected.
pub fn many_tunnels(
    sides: &[&Side],
    env: &Env,
    n: usize,
    bytes: u64,
    reps: usize,
    problems: &mut Vec<String>,
) -> PerSide<Many> {
    let mut out = PerSide::default();
    for rep in 0..reps {
        for side in sides {
            match many_once(side, env, n, bytes, rep) {
                Ok(m) => {
                    eprintln!(
                        "  {}: {:.0} MB/s aggregate, slowest/fastest {:.2}",
                        side.kind.label(),
                        m.aggregate_mb_per_s,
                        m.slowest_over_fastest
                    );
                    out.push(side.kind, m);
                }
                Err(e) => problems.push(format!("{n} tunnels on {}: {e}", side.kind.label())),
            }
        }
    }
    out
}

fn many_once(side: &Side, env: &Env, n: usize, bytes: u64, rep: usize) -> Result<Many, String> {
    side.discard.reset();
    let cpu0 = side.quiescent_cpu_ticks();
    let gate = Gate::default();
    let mut feds = Vec::with_capacity(n);
    for i in 0..n {
        let mut cmd = side.gcm.ssh();
        cmd.args(["-W", &w_target(DISCARD_PORT), "bastion"]);
        let stderr = env
            .scratch
            .join(format!("many-{}-{rep}-{i}.stderr", side.kind.label()));
        feds.push(Fed::spawn(cmd, bytes, Some(gate.clone()), &stderr).map_err(|e| e.to_string())?);
    }
    let connected = side.discard.wait_conns(n, Duration::from_secs(120));
    // The sink sees the dial; the client's channel is confirmed a moment later.
    thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    gate.open();
    if !connected {
        let got = side.discard.conns().len();
        drop(feds);
        return Err(format!("only {got} of {n} tunnels connected within 120 s"));
    }
    let deadline = transfer_timeout(bytes * n as u64);
    let mut short = 0;
    for fed in feds {
        let (_, sent) = fed.wait(deadline.saturating_sub(start.elapsed()));
        if sent != bytes {
            short += 1;
        }
    }
    side.discard.wait_eofs(n, Duration::from_secs(10));
    let cpu1 = side.quiescent_cpu_ticks();
    let conns = side.discard.conns();
    let mut rates = Vec::with_capacity(n);
    let mut last = start;
    for c in &conns {
        match c.eof() {
            Some(eof) if c.bytes() == bytes => {
                rates.push(mb_per_s(bytes, eof.duration_since(start)));
                last = last.max(eof);
            }
            _ => short += 1,
        }
    }
    if short > 0 || rates.len() != n {
        return Err(format!(
            "{short} of {n} tunnels did not move all {bytes} bytes"
        ));
    }
    let (lo, hi) = gatehouse_bench::stats::min_max(&rates).unwrap_or((0.0, 1.0));
    let total = bytes * n as u64;
    Ok(Many {
        tunnels: n,
        bytes_each: bytes,
        aggregate_mb_per_s: mb_per_s(total, last.duration_since(start)),
        per_tunnel_mb_per_s: rates,
        slowest_over_fastest: lo / hi,
        cpu_s_per_gib: ticks_to_s(cpu1.saturating_sub(cpu0)) / (total as f64 / GIB as f64),
    })
}

// ---- 6: head-of-line blocking -----------------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize)]
pub struct Hol {
    /// Channel B alone on the connection, MB/s (one per repetition).
    pub b_alone_mb_per_s: Vec<f64>,
    /// Channel B while channel A's target does not read, MB/s.
    pub b_with_a_stuck_mb_per_s: f64,
    /// Whether B finished within the deadline while A was stuck.
    pub b_with_a_stuck_finished: bool,
    /// Bytes B moved while A was stuck.
    pub b_with_a_stuck_bytes: u64,
    /// Bytes the client accepted on A before it stopped moving.
    pub a_bytes_accepted: u64,
    /// Median of B alone over B with A stuck... as a ratio: with / alone.
    pub ratio: f64,
}

const HOL_A_PORT: u16 = 7001;
const HOL_B_PORT: u16 = 7002;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Two local forwards on one OpenSSH client connection: A (to a target that never reads) and
/// B (to the discard sink). B's throughput alone, then with A stuck.
pub fn head_of_line(
    sides: &[&Side],
    env: &Env,
    bytes: u64,
    reps: usize,
    deadline: Duration,
    problems: &mut Vec<String>,
) -> PerSide<Hol> {
    let mut out = PerSide::default();
    for side in sides {
        match hol_once(side, env, bytes, reps, deadline) {
            Ok(h) => {
                eprintln!(
                    "  {}: B alone {:.0} MB/s, with A stuck {:.0} MB/s{} (A took {} KiB): {:.2}",
                    side.kind.label(),
                    gatehouse_bench::stats::median(&h.b_alone_mb_per_s).unwrap_or(0.0),
                    h.b_with_a_stuck_mb_per_s,
                    if h.b_with_a_stuck_finished {
                        ""
                    } else {
                        " (did not finish)"
                    },
                    h.a_bytes_accepted / 1024,
                    h.ratio
                );
                out.push(side.kind, h);
            }
            Err(e) => problems.push(format!("head-of-line on {}: {e}", side.kind.label())),
        }
        side.stall.release_held();
    }
    out
}

fn hol_once(
    side: &Side,
    env: &Env,
    bytes: u64,
    reps: usize,
    deadline: Duration,
) -> Result<Hol, String> {
    let ns = side.client_ns().clone();
    let mut cmd = side.gcm.ssh();
    cmd.args([
        "-N",
        "-L",
        &format!("127.0.0.1:{HOL_A_PORT}:{}", w_target(STALL_PORT)),
        "-L",
        &format!("127.0.0.1:{HOL_B_PORT}:{}", w_target(DISCARD_PORT)),
        "bastion",
    ]);
    let mut forwarder = Daemon::spawn(&format!("{}-hol-ssh", side.kind.label()), cmd, &env.scratch);
    // (The probe itself opens and closes one channel to each port that answers.)
    forwarder.wait_for_port(&ns, local(HOL_B_PORT), Duration::from_secs(30));
    thread::sleep(Duration::from_millis(300));
    let mut hol = Hol::default();
    for _ in 0..reps {
        side.discard.reset();
        let b = ns
            .connect(local(HOL_B_PORT), Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let r = push(side, b, bytes, deadline)?;
        if !r.finished {
            return Err(format!(
                "B alone did not finish: {} of {bytes} bytes",
                r.bytes
            ));
        }
        hol.b_alone_mb_per_s.push(r.mb_per_s);
    }
    // B's channel is open (its target dialed) before A gets stuck.
    side.discard.reset();
    let b = ns
        .connect(local(HOL_B_PORT), Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    if !side.discard.wait_conns(1, Duration::from_secs(10)) {
        return Err("channel B did not reach its target".into());
    }
    let a = ns
        .connect(local(HOL_A_PORT), Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let stop_a = Arc::new(AtomicBool::new(false));
    let a_writer = {
        let stop = stop_a.clone();
        thread::spawn(move || {
            let mut a = a;
            let _ = a.set_write_timeout(Some(Duration::from_millis(100)));
            // Until told to stop; each write gives up after 100 ms, so this ends promptly.
            feed::write_bytes(&mut a, u64::MAX, &stop)
        })
    };
    // Long enough for A to fill every buffer between the client and its target.
    thread::sleep(Duration::from_secs(3));
    let r = push(side, b, bytes, deadline);
    stop_a.store(true, Ordering::Relaxed);
    hol.a_bytes_accepted = a_writer.join().unwrap_or(0);
    let r = r?;
    hol.b_with_a_stuck_mb_per_s = r.mb_per_s;
    hol.b_with_a_stuck_finished = r.finished;
    hol.b_with_a_stuck_bytes = r.bytes;
    hol.ratio =
        r.mb_per_s / gatehouse_bench::stats::median(&hol.b_alone_mb_per_s).unwrap_or(f64::NAN);
    drop(forwarder);
    Ok(hol)
}

struct Pushed {
    mb_per_s: f64,
    bytes: u64,
    finished: bool,
}

/// Writes `bytes` into `stream` (a local forward) and half-closes it; the rate is what the
/// sink received, from the first write to its EOF (or to `deadline`, if B stalls).
fn push(side: &Side, stream: TcpStream, bytes: u64, deadline: Duration) -> Result<Pushed, String> {
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut s = stream;
            let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
            let sent = feed::write_bytes(&mut s, bytes, &stop);
            let _ = s.shutdown(Shutdown::Write);
            // Hold the socket until the reply (or the stop) so the tunnel is not torn down.
            let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => {}
                }
            }
            sent
        })
    };
    let conn = loop {
        if let Some(c) = side.discard.conns().last().cloned() {
            break Some(c);
        }
        if start.elapsed() >= deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(2));
    };
    let finished = match &conn {
        Some(c) => crate::sink::wait(deadline.saturating_sub(start.elapsed()), || {
            c.eof().is_some()
        }),
        None => false,
    };
    let end = conn
        .as_ref()
        .and_then(|c| c.eof())
        .unwrap_or_else(Instant::now);
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let got = conn.as_ref().map_or(0, |c| c.bytes());
    let _ = std::io::stdout().flush();
    Ok(Pushed {
        mb_per_s: mb_per_s(got, end.duration_since(start)),
        bytes: got,
        finished: finished && got == bytes,
    })
}
