//! Measurement 7, under siege: what a legitimate user and an open tunnel get while many
//! sources attack the bastion before authentication. Each side in turn is restarted with its
//! default pre-authentication settings ([`Preauth::Defaults`]), an `ssh -W` tunnel is opened,
//! then:
//!
//! 1. *slowloris*: sources connect, say nothing and wait for the server to close, then come
//!    back after 1 s from a fresh address;
//! 2. *flood*: the same sources, back at once.
//!
//! During each, a legitimate user logs in (the bastion hop of measurement 3) on a fixed
//! schedule, the tunnel moves a burst of data, and the bastion's log and audit files are
//! weighed. Attackers and the legitimate client run in the bastion namespace and reach the
//! bastion on its loopback listener ([`LOOPBACK_LISTEN`]); see `attack`.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::attack::{Addresses, Attack, Pace, Tally};
use crate::burst::Tunnel;
use crate::feed::timed_run;
use crate::harness::{SshClient, PRIVATE_ADDR};
use crate::rig::{Env, Preauth, Side, CLOSE_PORT, LOOPBACK_LISTEN};
use crate::sink;
use gatehouse_bench::stats::{median, percentile};

/// The slowloris sources' pause between a close and their next connection.
const SLOWLORIS_PAUSE: Duration = Duration::from_secs(1);
/// From the attack's start to the first legitimate login: the sources take their places.
const RAMP: Duration = Duration::from_secs(1);
/// Bound on the wait for the bastion to drop a phase's connections before the next phase.
const SETTLE: Duration = Duration::from_secs(10);

/// Sizes of the siege.
#[derive(Clone, Debug)]
pub struct SiegePlan {
    /// Attacking sources (tasks), each with a fresh address per connection.
    pub sources: usize,
    /// How long the legitimate logins are scheduled for, per phase.
    pub slowloris: Duration,
    pub flood: Duration,
    /// One legitimate login is started every `every`, whether or not earlier ones ended.
    pub every: Duration,
    /// A legitimate login not done by then is killed and counted as failed.
    pub login_timeout: Duration,
    /// Length of each tunnel burst (without attack, then in the middle of each phase).
    pub burst: Duration,
}

impl SiegePlan {
    /// The siege of a full or `--quick` run (about a minute per side).
    pub fn full() -> SiegePlan {
        SiegePlan {
            sources: 200,
            slowloris: Duration::from_secs(25),
            flood: Duration::from_secs(20),
            every: Duration::from_millis(250),
            login_timeout: Duration::from_secs(10),
            burst: Duration::from_secs(3),
        }
    }

    /// A toy siege for the smoke test.
    pub fn smoke() -> SiegePlan {
        SiegePlan {
            sources: 20,
            slowloris: Duration::from_secs(3),
            flood: Duration::from_secs(3),
            every: Duration::from_millis(250),
            login_timeout: Duration::from_secs(10),
            burst: Duration::from_secs(1),
        }
    }

    /// Legitimate logins per phase of `length`.
    pub fn logins(&self, length: Duration) -> usize {
        (length.as_secs_f64() / self.every.as_secs_f64()).round() as usize
    }
}

/// The legitimate user's logins during one phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Legit {
    pub attempts: usize,
    /// Wall time of each successful login, ms.
    pub ms: Vec<f64>,
    pub failed: usize,
}

/// One phase of the siege. Its window runs from the attack's start to the end of the last
/// legitimate login (the first starts [`RAMP`] after the attack).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Phase {
    pub seconds: f64,
    pub legit: Legit,
    /// The attackers' connections within the window.
    pub attack: Tally,
    /// Bytes the bastion wrote to its log and audit files within the window.
    pub log_bytes: u64,
    /// The tunnel's burst in the middle of the phase.
    pub tunnel_mb_per_s: f64,
}

impl Phase {
    pub fn success_pct(&self) -> f64 {
        100.0 * self.legit.ms.len() as f64 / self.legit.attempts.max(1) as f64
    }

    /// p95 of the successful logins; `None` if none succeeded.
    pub fn p95_ms(&self) -> Option<f64> {
        percentile(&self.legit.ms, 95.0)
    }

    fn per_s(&self, n: u64) -> f64 {
        n as f64 / self.seconds.max(1e-9)
    }

    pub fn connected_per_s(&self) -> f64 {
        self.per_s(self.attack.connected)
    }

    pub fn admitted_per_s(&self) -> f64 {
        self.per_s(self.attack.admitted)
    }

    /// Log and audit bytes per second, in KB/s (10^3 bytes).
    pub fn log_kb_per_s(&self) -> f64 {
        self.per_s(self.log_bytes) / 1e3
    }
}

/// Everything the siege measured on one side.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Siege {
    pub sources: usize,
    /// The tunnel's bursts without attack: before the slowloris, between the two phases and
    /// after the flood.
    pub tunnel_idle_bursts: Vec<f64>,
    /// Their median.
    pub tunnel_idle_mb_per_s: f64,
    pub slowloris: Phase,
    pub flood: Phase,
    /// Source addresses used (never twice).
    pub addresses_used: u32,
}

/// Restarts `side` with its default pre-authentication settings, lays the siege, and
/// restarts it as the other measurements want it (after a failed siege too).
pub fn measure(
    side: &mut Side,
    env: &Env,
    plan: &SiegePlan,
    problems: &mut Vec<String>,
) -> Option<Siege> {
    side.restart_with(env, Preauth::Defaults);
    let siege = lay_siege(side, env, plan, problems);
    side.restart_with(env, Preauth::Raised);
    match siege {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(format!("siege on {}: {e}", side.kind.label()));
            None
        }
    }
}

fn lay_siege(
    side: &Side,
    env: &Env,
    plan: &SiegePlan,
    problems: &mut Vec<String>,
) -> Result<Siege, String> {
    let label = side.kind.label();
    Addresses::prepare(side.bastion_ns()).map_err(|e| format!("source addresses: {e}"))?;
    let tunnel = Tunnel::open(side, env)?;
    let mut idle = Vec::new();
    let mut quiet_burst = || {
        let rate = tunnel.burst(plan.burst);
        eprintln!("  {label}: tunnel without attack {rate:.0} MB/s");
        idle.push(rate);
    };
    quiet_burst();
    let pool = Arc::new(Addresses::default());
    let run = |name: &str, pace, length| {
        let phase = phase(side, env, &tunnel, &pool, pace, length, plan);
        if let Ok(p) = &phase {
            eprintln!(
                "  {label}: {name}: {:.0}% of {} logins (p95 {:.0} ms), {:.0} attack \
                 connections/s ({:.0}/s taken in), log+audit {:.1} KB/s, tunnel {:.0} MB/s",
                p.success_pct(),
                p.legit.attempts,
                p.p95_ms().unwrap_or(f64::NAN),
                p.connected_per_s(),
                p.admitted_per_s(),
                p.log_kb_per_s(),
                p.tunnel_mb_per_s
            );
        }
        phase
    };
    let slowloris = run("slowloris", Pace::Pause(SLOWLORIS_PAUSE), plan.slowloris)?;
    quiet_burst();
    let flood = run("flood", Pace::Flood, plan.flood)?;
    quiet_burst();
    if pool.used() >= Addresses::SIZE {
        problems.push(format!(
            "siege on {label}: all {} source addresses were used; the flood ended early",
            Addresses::SIZE
        ));
    }
    Ok(Siege {
        sources: plan.sources,
        tunnel_idle_mb_per_s: median(&idle).unwrap_or(0.0),
        tunnel_idle_bursts: idle,
        slowloris,
        flood,
        addresses_used: pool.used(),
    })
}

/// One attack with the legitimate logins and a tunnel burst in it; then waits (bounded) for
/// the bastion to let go of the attackers' connections.
fn phase(
    side: &Side,
    env: &Env,
    tunnel: &Tunnel,
    pool: &Arc<Addresses>,
    pace: Pace,
    length: Duration,
    plan: &SiegePlan,
) -> Result<Phase, String> {
    let processes = side.bastion_pids().len();
    let client = side.loopback_client(env);
    let limit = RAMP + length + plan.login_timeout + Duration::from_secs(30);
    let (logs0, start) = (bytes_in(&side.log_files(env)), Instant::now());
    let attack = Attack::start(
        side.bastion_ns(),
        LOOPBACK_LISTEN,
        plan.sources,
        pace,
        pool.clone(),
        limit,
    )
    .map_err(|e| format!("start the attack: {e}"))?;
    thread::sleep(RAMP);
    let (legit, tunnel_mb_per_s) = thread::scope(|s| {
        let burst = s.spawn(|| {
            thread::sleep(length.saturating_sub(plan.burst) / 2);
            tunnel.burst(plan.burst)
        });
        let legit = legit_logins(&client, plan.logins(length), plan.every, plan.login_timeout);
        (legit, burst.join().unwrap_or(0.0))
    });
    let phase = Phase {
        seconds: start.elapsed().as_secs_f64(),
        legit,
        attack: attack.tally(),
        log_bytes: bytes_in(&side.log_files(env)).saturating_sub(logs0),
        tunnel_mb_per_s,
    };
    attack.stop();
    sink::wait(SETTLE, || side.bastion_pids().len() <= processes);
    thread::sleep(Duration::from_secs(1));
    Ok(phase)
}

/// `n` bastion-hop logins (`ssh -W` to the closing target) from the bastion namespace's
/// loopback, one started every `every` however long the earlier ones take, each killed
/// after `timeout`.
fn legit_logins(client: &SshClient, n: usize, every: Duration, timeout: Duration) -> Legit {
    let start = Instant::now();
    let target = format!("{PRIVATE_ADDR}:{CLOSE_PORT}");
    let mut runs = Vec::with_capacity(n);
    for i in 0..n {
        let at = start + every * i as u32;
        thread::sleep(at.saturating_duration_since(Instant::now()));
        let mut cmd = client.ssh();
        cmd.args(["-W", &target, "bastion"]);
        runs.push(
            thread::Builder::new()
                .name("legit-login".into())
                .spawn(move || timed_run(cmd, timeout)),
        );
    }
    let mut legit = Legit {
        attempts: n,
        ..Legit::default()
    };
    for run in runs {
        match run.map(|t| t.join()) {
            Ok(Ok(Ok((elapsed, Some(status))))) if status.success() => {
                legit.ms.push(elapsed.as_secs_f64() * 1e3)
            }
            _ => legit.failed += 1,
        }
    }
    legit
}

/// The total size of `files` (a missing one counts 0).
fn bytes_in(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}
