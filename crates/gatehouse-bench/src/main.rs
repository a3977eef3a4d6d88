//! `gatehouse-bench`: gatehouse and OpenSSH sshd as jump hosts, measured side by side in the
//! same run, written to `BENCHMARKS.md` and a JSON file. See `BENCHMARKS.md` for the method.
//!
//! Needs root (network namespaces, sshd) and a release build of gatehouse
//! (`cargo build --release -p gatehouse`; found next to this binary, or `--gatehouse PATH`).
//! Traffic stays inside the namespaces it creates (no default route anywhere) and loopback.
//! It never fails on a number: a missed target is reported, not an error.

#![forbid(unsafe_code)]

mod attack;
mod burst;
mod feed;
mod harness;
mod interrupt;
mod loadgen;
mod measure;
mod rig;
mod siege;
mod sink;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use serde_json::json;

use gatehouse_bench::report::{Bound, Machine, Report, Row, Target};
use gatehouse_bench::stats::{median, percentile};
use measure::{PerSide, GIB, MIB};
use rig::{Env, Kind, Side, AES_GCM, CHACHA};
use siege::{Siege, SiegePlan};

/// Benchmarks gatehouse side by side with OpenSSH sshd as a jump host.
#[derive(Parser, Debug)]
#[command(name = "gatehouse-bench")]
struct Cli {
    /// Smaller sizes and fewer repetitions (about a minute); writes benchmarks/quick.{md,json}.
    #[arg(long)]
    quick: bool,
    /// Tiny sizes, for the smoke test; writes nothing unless --markdown/--json are given.
    #[arg(long, hide = true)]
    smoke: bool,
    /// The gatehouse binary to benchmark (default: `gatehouse` next to this binary, built with
    /// `cargo build --release -p gatehouse` if missing).
    #[arg(long)]
    gatehouse: Option<PathBuf>,
    /// Where to write the Markdown report (default: BENCHMARKS.md at the repository root, or
    /// benchmarks/quick.md with --quick).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Where to write the JSON report (default: benchmarks/latest.json, or
    /// benchmarks/quick.json with --quick).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Extra environment for the gatehouse process, e.g. `TOKIO_WORKER_THREADS=1` (repeatable).
    #[arg(long = "gatehouse-env", value_name = "KEY=VALUE")]
    gatehouse_env: Vec<String>,
    /// Measure nothing: re-render the Markdown report from this JSON report (e.g. after
    /// editing benchmarks/NOTES.md).
    #[arg(long, value_name = "JSON")]
    render: Option<PathBuf>,
    /// Only these measurements (comma-separated: tunnel, many, login, hol, memory, siege).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Repetitions of each single-tunnel measurement, instead of the mode's (5 in a full run):
    /// more of them narrow the medians when comparing two builds.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=100))]
    tunnel_reps: Option<u16>,
}

/// Sizes and repetitions of one run.
struct Plan {
    mode: &'static str,
    tunnel_bytes: u64,
    tunnel_reps: usize,
    many_tunnels: usize,
    many_bytes: u64,
    many_reps: usize,
    logins: usize,
    full_logins: usize,
    hol_bytes: u64,
    hol_reps: usize,
    hol_deadline: Duration,
    idle_sessions: usize,
    idle_sessions_gatehouse: usize,
    siege: SiegePlan,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            mode: "full",
            tunnel_bytes: GIB,
            tunnel_reps: 5,
            many_tunnels: 100,
            many_bytes: 32 * MIB,
            many_reps: 3,
            logins: 200,
            full_logins: 200,
            hol_bytes: 256 * MIB,
            hol_reps: 3,
            hol_deadline: Duration::from_secs(30),
            idle_sessions: 1000,
            idle_sessions_gatehouse: 10_000,
            siege: SiegePlan::full(),
        }
    }

    fn quick() -> Plan {
        Plan {
            mode: "quick",
            tunnel_bytes: 256 * MIB,
            tunnel_reps: 3,
            many_tunnels: 100,
            many_bytes: 4 * MIB,
            many_reps: 1,
            logins: 40,
            full_logins: 20,
            hol_bytes: 64 * MIB,
            hol_reps: 1,
            hol_deadline: Duration::from_secs(10),
            idle_sessions: 200,
            idle_sessions_gatehouse: 2000,
            siege: SiegePlan::full(),
        }
    }

    fn smoke() -> Plan {
        Plan {
            mode: "smoke",
            tunnel_bytes: 8 * MIB,
            tunnel_reps: 1,
            many_tunnels: 4,
            many_bytes: MIB,
            many_reps: 1,
            logins: 3,
            full_logins: 2,
            hol_bytes: 4 * MIB,
            hol_reps: 1,
            hol_deadline: Duration::from_secs(5),
            idle_sessions: 10,
            idle_sessions_gatehouse: 20,
            siege: SiegePlan::smoke(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = interrupt::install() {
        eprintln!("gatehouse-bench: cannot take over SIGINT/SIGTERM ({e}); an interrupted run may leave namespaces behind");
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn repo_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    dir.canonicalize().unwrap_or(dir)
}

/// What the rig needs that a fresh machine lacks: OpenSSH's sshd (the comparison bastion and
/// the private host) is refused with what to install; the private host's login user is
/// created as `tests/run` creates it.
fn prepare_machine() -> anyhow::Result<()> {
    if !Path::new("/usr/sbin/sshd").is_file() {
        bail!(
            "no /usr/sbin/sshd: install openssh-server (`tests/run` installs it with everything \
             the tests need)"
        );
    }
    let user = harness::TEST_USER;
    if nix::unistd::User::from_name(user)?.is_none() {
        eprintln!(
            "gatehouse-bench: creating the private host's login user {user} (as tests/run does)"
        );
        for args in [
            vec!["useradd", "-m", "-s", "/bin/sh", user],
            // `*`: no password matches, and the account is not locked (sshd without PAM
            // refuses locked accounts even for key logins).
            vec!["usermod", "-p", "*", user],
        ] {
            let status = Command::new(args[0])
                .args(&args[1..])
                .status()
                .with_context(|| format!("run {}", args[0]))?;
            if !status.success() {
                bail!("{} {user} failed ({status})", args[0]);
            }
        }
    }
    Ok(())
}

/// The version of `package` in the workspace's Cargo.lock under `root`.
fn locked_version(root: &Path, package: &str) -> Option<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).ok()?;
    let entry = format!("name = \"{package}\"\n");
    let after = &lock[lock.find(&entry)? + entry.len()..];
    let version = after.strip_prefix("version = \"")?;
    Some(version[..version.find('"')?].to_owned())
}

/// The gatehouse binary: given, or next to ours, or built.
fn locate_gatehouse(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(p) = &cli.gatehouse {
        if !p.is_file() {
            bail!("--gatehouse {}: no such file", p.display());
        }
        return Ok(p.canonicalize()?);
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .context("the benchmark binary has no directory")?;
    let candidate = dir.join("gatehouse");
    if !candidate.is_file() {
        eprintln!("gatehouse-bench: building gatehouse: cargo build --release -p gatehouse");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "-p", "gatehouse"])
            .current_dir(repo_root())
            .status()
            .context("run cargo build --release -p gatehouse")?;
        if !status.success() || !candidate.is_file() {
            bail!(
                "no gatehouse binary at {}: run `cargo build --release -p gatehouse` first, \
                 or pass --gatehouse PATH",
                candidate.display()
            );
        }
    }
    if dir.ends_with("debug") {
        eprintln!("gatehouse-bench: WARNING: a debug build measures nothing useful; use --release");
    }
    Ok(candidate)
}

fn wanted(cli: &Cli, name: &str) -> bool {
    cli.only.is_empty() || cli.only.iter().any(|o| o == name)
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if let Some(json) = &cli.render {
        let text =
            std::fs::read_to_string(json).with_context(|| format!("read {}", json.display()))?;
        let report =
            Report::from_json(&text).with_context(|| format!("parse {}", json.display()))?;
        let root = repo_root();
        let md_path = cli
            .markdown
            .clone()
            .unwrap_or_else(|| match report.mode.as_str() {
                "quick" => root.join("benchmarks/quick.md"),
                _ => root.join("BENCHMARKS.md"),
            });
        let notes = std::fs::read_to_string(root.join("benchmarks/NOTES.md")).unwrap_or_default();
        write(
            &md_path,
            &report.to_markdown(include_str!("method.md"), &notes),
        )?;
        eprintln!("gatehouse-bench: wrote {}", md_path.display());
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("needs root (network namespaces, sshd): sudo target/release/gatehouse-bench");
    }
    prepare_machine()?;
    let plan = if cli.smoke {
        Plan::smoke()
    } else if cli.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    let plan = Plan {
        tunnel_reps: cli.tunnel_reps.map_or(plan.tunnel_reps, usize::from),
        ..plan
    };
    let root = repo_root();
    let (md_path, json_path) = match plan.mode {
        "full" => (
            root.join("BENCHMARKS.md"),
            root.join("benchmarks/latest.json"),
        ),
        "quick" => (
            root.join("benchmarks/quick.md"),
            root.join("benchmarks/quick.json"),
        ),
        _ => (PathBuf::new(), PathBuf::new()),
    };
    let md_path = cli.markdown.clone().unwrap_or(md_path);
    let json_path = cli.json.clone().unwrap_or(json_path);
    let gatehouse = locate_gatehouse(cli)?;
    // 10,000 client sessions need 10,000 descriptors in this process.
    {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }

    let started = Instant::now();
    let mut report = Report {
        mode: plan.mode.into(),
        started: utc_now(),
        command: command_line(cli),
        machine: machine(&gatehouse),
        ..Report::default()
    };
    eprintln!(
        "gatehouse-bench: {} run, gatehouse {}",
        plan.mode,
        gatehouse.display()
    );
    let mut env = Env::new(gatehouse)?;
    for kv in &cli.gatehouse_env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--gatehouse-env {kv}: expected KEY=VALUE"))?;
        env.gatehouse_env.push((k.into(), v.into()));
    }
    let mut gh = Side::new(Kind::Gatehouse, &env)?;
    let mut os = Side::new(Kind::OpenSsh, &env)?;
    let mut problems = Vec::new();

    // Each measurement is isolated: a panic in one (a harness wait that timed out) is reported
    // and the others still run. The guards (namespaces, processes) clean up either way.
    let guarded = |name: &str, problems: &mut Vec<String>, f: &mut dyn FnMut(&mut Vec<String>)| {
        eprintln!("== {name}");
        if catch_unwind(AssertUnwindSafe(|| f(problems))).is_err() {
            problems.push(format!("{name}: aborted (see the panic message above)"));
        }
    };

    let mut gcm = PerSide::default();
    let mut chacha = PerSide::default();
    if wanted(cli, "tunnel") {
        guarded("1+2. one tunnel, aes128-gcm", &mut problems, &mut |p| {
            gcm = measure::one_tunnel(
                &[&gh, &os],
                &env,
                AES_GCM,
                plan.tunnel_bytes,
                plan.tunnel_reps,
                p,
            )
        });
        guarded(
            "1+2. one tunnel, chacha20-poly1305",
            &mut problems,
            &mut |p| {
                chacha = measure::one_tunnel(
                    &[&gh, &os],
                    &env,
                    CHACHA,
                    plan.tunnel_bytes,
                    plan.tunnel_reps,
                    p,
                )
            },
        );
    }
    let mut many = PerSide::default();
    if wanted(cli, "many") {
        guarded("5. many tunnels", &mut problems, &mut |p| {
            many = measure::many_tunnels(
                &[&gh, &os],
                &env,
                plan.many_tunnels,
                plan.many_bytes,
                plan.many_reps,
                p,
            )
        });
    }
    let mut hop = PerSide::default();
    let mut full = PerSide::default();
    let mut cert_hop = PerSide::default();
    if wanted(cli, "login") {
        use measure::Credential;
        guarded("3. logins, bastion hop", &mut problems, &mut |p| {
            hop = measure::logins(&[&gh, &os], plan.logins, false, Credential::Key, p)
        });
        guarded(
            "3. logins, bastion hop, certificate",
            &mut problems,
            &mut |p| {
                cert_hop =
                    measure::logins(&[&gh, &os], plan.logins, false, Credential::Certificate, p)
            },
        );
        guarded("3. logins, ssh -J ... true", &mut problems, &mut |p| {
            full = measure::logins(&[&gh, &os], plan.full_logins, true, Credential::Key, p)
        });
    }
    let mut hol = PerSide::default();
    if wanted(cli, "hol") {
        guarded("6. head-of-line", &mut problems, &mut |p| {
            hol = measure::head_of_line(
                &[&gh, &os],
                &env,
                plan.hol_bytes,
                plan.hol_reps,
                plan.hol_deadline,
                p,
            )
        });
    }
    let (mut mem_gh, mut mem_os, mut mem_gh_big) = (None, None, None);
    if wanted(cli, "memory") {
        guarded("4. idle sessions", &mut problems, &mut |p| {
            mem_gh = measure::idle_memory(&mut gh, &env, plan.idle_sessions, p);
            mem_os = measure::idle_memory(&mut os, &env, plan.idle_sessions, p);
            mem_gh_big = measure::idle_memory(&mut gh, &env, plan.idle_sessions_gatehouse, p);
        });
    }
    let mut siege = PerSide::default();
    if wanted(cli, "siege") {
        guarded("7. under siege", &mut problems, &mut |p| {
            for side in [&mut gh, &mut os] {
                if let Some(s) = siege::measure(side, &env, &plan.siege, p) {
                    siege.push(side.kind, s);
                }
            }
        });
    }
    drop(os);
    drop(gh);

    // ---- the report ----
    let r = &mut report;
    let med = |v: Vec<f64>| median(&v);
    let per = |k: Kind, p: &PerSide<measure::Transfer>, f: fn(&measure::Transfer) -> f64| {
        med(p.get(k).iter().map(f).collect())
    };
    let reps = format!("median of {}", plan.tunnel_reps);
    let size = human_bytes(plan.tunnel_bytes);
    for (cipher, p) in [("aes128-gcm", &gcm), ("chacha20-poly1305", &chacha)] {
        r.rows.push(row(
            "1. one tunnel (`ssh -W`)",
            &format!("{cipher}: throughput of {size}, MB/s"),
            per(Kind::Gatehouse, p, |t| t.mb_per_s),
            per(Kind::OpenSsh, p, |t| t.mb_per_s),
            &reps,
        ));
    }
    for (cipher, p) in [("aes128-gcm", &gcm), ("chacha20-poly1305", &chacha)] {
        r.rows.push(row(
            "2. bastion CPU",
            &format!("{cipher}: bastion CPU seconds per GiB"),
            per(Kind::Gatehouse, p, |t| t.cpu_s_per_gib),
            per(Kind::OpenSsh, p, |t| t.cpu_s_per_gib),
            &reps,
        ));
    }
    let login_rows = |r: &mut Report, what: &str, p: &PerSide<measure::Logins>, n: usize| {
        let g = p.get(Kind::Gatehouse).first();
        let o = p.get(Kind::OpenSsh).first();
        let q = |l: Option<&measure::Logins>, pct: f64| l.and_then(|l| percentile(&l.ms, pct));
        let sum = format!("{n} sequential");
        r.rows.push(row(
            "3. logins",
            &format!("{what}: median, ms"),
            q(g, 50.0),
            q(o, 50.0),
            &sum,
        ));
        r.rows.push(row(
            "3. logins",
            &format!("{what}: p95, ms"),
            q(g, 95.0),
            q(o, 95.0),
            &sum,
        ));
        r.rows.push(row(
            "3. logins",
            &format!("{what}: bastion CPU per login, ms"),
            g.map(|l| l.cpu_ms_per_login),
            o.map(|l| l.cpu_ms_per_login),
            &format!("total over {n} / {n}"),
        ));
    };
    login_rows(
        r,
        "bastion hop (`ssh -W` to a closing target)",
        &hop,
        plan.logins,
    );
    login_rows(
        r,
        "bastion hop with a CA's certificate (`ssh -W` to a closing target)",
        &cert_hop,
        plan.logins,
    );
    login_rows(r, "`ssh -J bastion private true`", &full, plan.full_logins);
    let pss = |m: &Option<measure::IdleMemory>| m.as_ref().map(|m| m.pss_kib_per_session);
    let rss = |m: &Option<measure::IdleMemory>| m.as_ref().map(|m| m.rss_kib_per_session);
    let n_idle = plan.idle_sessions;
    r.rows.push(row(
        "4. idle authenticated sessions",
        &format!("{n_idle} sessions: PSS per session, KiB"),
        pss(&mem_gh),
        pss(&mem_os),
        "all bastion processes, minus the idle bastion",
    ));
    r.rows.push(row(
        "4. idle authenticated sessions",
        &format!("{n_idle} sessions: RSS per session, KiB"),
        rss(&mem_gh),
        rss(&mem_os),
        "(double-counts OpenSSH's shared pages)",
    ));
    r.rows.push(row(
        "4. idle authenticated sessions",
        &format!("{n_idle} sessions: total PSS, MiB"),
        mem_gh.as_ref().map(|m| m.held_pss_kib as f64 / 1024.0),
        mem_os.as_ref().map(|m| m.held_pss_kib as f64 / 1024.0),
        "bastion with the sessions held",
    ));
    let n_big = plan.idle_sessions_gatehouse;
    r.rows.push(row(
        "4. idle authenticated sessions",
        &format!("{n_big} sessions: PSS per session, KiB"),
        pss(&mem_gh_big),
        None,
        "gatehouse only",
    ));
    r.rows.push(row(
        "4. idle authenticated sessions",
        &format!("{n_big} sessions: total PSS, MiB"),
        mem_gh_big.as_ref().map(|m| m.held_pss_kib as f64 / 1024.0),
        None,
        "gatehouse only",
    ));
    let many_med = |k: Kind, f: fn(&measure::Many) -> f64| med(many.get(k).iter().map(f).collect());
    let many_sum = format!(
        "{} x {}, median of {}",
        plan.many_tunnels,
        human_bytes(plan.many_bytes),
        plan.many_reps
    );
    r.rows.push(row(
        "5. many tunnels at once",
        "aggregate MB/s",
        many_med(Kind::Gatehouse, |m| m.aggregate_mb_per_s),
        many_med(Kind::OpenSsh, |m| m.aggregate_mb_per_s),
        &many_sum,
    ));
    r.rows.push(row(
        "5. many tunnels at once",
        "slowest / fastest tunnel",
        many_med(Kind::Gatehouse, |m| m.slowest_over_fastest),
        many_med(Kind::OpenSsh, |m| m.slowest_over_fastest),
        &many_sum,
    ));
    r.rows.push(row(
        "5. many tunnels at once",
        "bastion CPU seconds per GiB",
        many_med(Kind::Gatehouse, |m| m.cpu_s_per_gib),
        many_med(Kind::OpenSsh, |m| m.cpu_s_per_gib),
        &many_sum,
    ));
    let hol_f = |k: Kind, f: fn(&measure::Hol) -> f64| hol.get(k).first().map(f);
    let hol_sum = format!(
        "{} on B; B alone: median of {}",
        human_bytes(plan.hol_bytes),
        plan.hol_reps
    );
    r.rows.push(row(
        "6. head-of-line (two channels, one connection)",
        "channel B alone, MB/s",
        hol_f(Kind::Gatehouse, |h| {
            median(&h.b_alone_mb_per_s).unwrap_or(f64::NAN)
        }),
        hol_f(Kind::OpenSsh, |h| {
            median(&h.b_alone_mb_per_s).unwrap_or(f64::NAN)
        }),
        &hol_sum,
    ));
    r.rows.push(row(
        "6. head-of-line (two channels, one connection)",
        "channel B while A's target does not read, MB/s",
        hol_f(Kind::Gatehouse, |h| h.b_with_a_stuck_mb_per_s),
        hol_f(Kind::OpenSsh, |h| h.b_with_a_stuck_mb_per_s),
        &format!(
            "stalled B counts as what moved in {} s",
            plan.hol_deadline.as_secs()
        ),
    ));
    r.rows.push(row(
        "6. head-of-line (two channels, one connection)",
        "B kept (with A stuck / alone)",
        hol_f(Kind::Gatehouse, |h| h.ratio),
        hol_f(Kind::OpenSsh, |h| h.ratio),
        "",
    ));

    // ---- targets ----
    let ratio_of = |r: &Report, metric_prefix: &str| {
        r.rows
            .iter()
            .find(|row| row.metric.starts_with(metric_prefix))
            .and_then(Row::ratio)
    };
    let t = |name: &str, bound: Bound, threshold: f64, value: Option<f64>, unit: &str| Target {
        name: name.into(),
        bound,
        threshold,
        value,
        unit: unit.into(),
    };
    let targets = vec![
        t(
            "throughput aes128-gcm, gatehouse / OpenSSH",
            Bound::AtLeast,
            1.2,
            ratio_of(r, "aes128-gcm: throughput"),
            "x",
        ),
        t(
            "throughput chacha20-poly1305, gatehouse / OpenSSH",
            Bound::AtLeast,
            1.1,
            ratio_of(r, "chacha20-poly1305: throughput"),
            "x",
        ),
        t(
            "bastion CPU per GiB aes128-gcm, gatehouse / OpenSSH",
            Bound::AtMost,
            0.75,
            ratio_of(r, "aes128-gcm: bastion CPU"),
            "x",
        ),
        t(
            "bastion CPU per GiB chacha20-poly1305, gatehouse / OpenSSH",
            Bound::AtMost,
            0.85,
            ratio_of(r, "chacha20-poly1305: bastion CPU"),
            "x",
        ),
        t(
            "bastion CPU per login (`ssh -J ... true`), gatehouse / OpenSSH",
            Bound::AtMost,
            0.1,
            ratio_of(r, "`ssh -J bastion private true`: bastion CPU"),
            "x",
        ),
        t(
            "login latency, bastion hop, median, gatehouse / OpenSSH",
            Bound::AtMost,
            0.3,
            ratio_of(r, "bastion hop (`ssh -W` to a closing target): median"),
            "x",
        ),
        t(
            "login latency, `ssh -J ... true`, median, gatehouse / OpenSSH",
            Bound::AtMost,
            0.3,
            ratio_of(r, "`ssh -J bastion private true`: median"),
            "x",
        ),
        t(
            &format!("PSS per idle authenticated session ({n_idle} sessions), gatehouse"),
            Bound::AtMost,
            48.0,
            pss(&mem_gh),
            " KiB",
        ),
        t(
            &format!("total PSS with {n_big} idle sessions, gatehouse"),
            Bound::AtMost,
            500.0 * n_big as f64 / 10_000.0,
            mem_gh_big.as_ref().map(|m| m.held_pss_kib as f64 / 1024.0),
            " MiB",
        ),
        t(
            &format!(
                "{} concurrent tunnels: slowest / fastest, gatehouse",
                plan.many_tunnels
            ),
            Bound::AtLeast,
            0.8,
            many_med(Kind::Gatehouse, |m| m.slowest_over_fastest),
            "x",
        ),
        t(
            "head-of-line: B keeps of its throughput with A stuck, gatehouse",
            Bound::AtLeast,
            0.8,
            hol_f(Kind::Gatehouse, |h| h.ratio),
            "x",
        ),
    ];
    r.targets = targets;
    siege_rows(r, &siege, &plan.siege);
    r.targets.extend(siege_targets(&siege));
    r.raw.insert("tunnel_aes128_gcm".into(), json!(gcm));
    r.raw
        .insert("tunnel_chacha20_poly1305".into(), json!(chacha));
    r.raw.insert("logins_bastion_hop".into(), json!(hop));
    r.raw.insert("logins_ssh_j".into(), json!(full));
    r.raw
        .insert("logins_bastion_hop_certificate".into(), json!(cert_hop));
    r.raw.insert(
        "idle_memory".into(),
        json!({"gatehouse": mem_gh, "openssh": mem_os, "gatehouse_large": mem_gh_big}),
    );
    r.raw.insert("many_tunnels".into(), json!(many));
    r.raw.insert("head_of_line".into(), json!(hol));
    r.raw.insert("siege".into(), json!(siege));
    r.problems = problems;
    r.duration_s = started.elapsed().as_secs_f64();
    r.machine.load_average = format!("{} -> {}", r.machine.load_average, load_average());

    let method = include_str!("method.md");
    let notes = std::fs::read_to_string(root.join("benchmarks/NOTES.md")).unwrap_or_default();
    let md = report.to_markdown(method, &notes);
    println!("{}", summary(&report));
    if !md_path.as_os_str().is_empty() {
        write(&md_path, &md)?;
        eprintln!("gatehouse-bench: wrote {}", md_path.display());
    }
    if !json_path.as_os_str().is_empty() {
        write(&json_path, &report.to_json())?;
        eprintln!("gatehouse-bench: wrote {}", json_path.display());
    }
    Ok(())
}

/// The rows of measurement 7 (see `siege`).
fn siege_rows(r: &mut Report, siege: &PerSide<Siege>, plan: &SiegePlan) {
    const SECTION: &str = "7. under siege (default pre-auth settings)";
    let of = |k: Kind, f: &dyn Fn(&Siege) -> Option<f64>| siege.get(k).first().and_then(f);
    let mut add = |metric: &str, summary: &str, f: &dyn Fn(&Siege) -> Option<f64>| {
        let (g, o) = (of(Kind::Gatehouse, f), of(Kind::OpenSsh, f));
        r.rows.push(row(SECTION, metric, g, o, summary));
    };
    let secs = |d: Duration| d.as_secs_f64();
    let legit = |d: Duration| {
        format!(
            "{} logins, one every {} s, each bounded to {} s",
            plan.logins(d),
            secs(plan.every),
            secs(plan.login_timeout)
        )
    };
    let slow = format!(
        "{} sources, back 1 s after each close; {}",
        plan.sources,
        legit(plan.slowloris)
    );
    let flood = format!(
        "{} sources, back at once; {}",
        plan.sources,
        legit(plan.flood)
    );
    add(
        "slowloris: legitimate logins that succeeded, %",
        &slow,
        &|s| Some(s.slowloris.success_pct()),
    );
    add("slowloris: p95 of the successful logins, ms", &slow, &|s| {
        s.slowloris.p95_ms()
    });
    add(
        "slowloris: attack connections the bastion took in, per s",
        "sent its version line",
        &|s| Some(s.slowloris.admitted_per_s()),
    );
    add(
        "flood: attack connections, per s",
        "TCP connections established",
        &|s| Some(s.flood.connected_per_s()),
    );
    add(
        "flood: attack connections the bastion took in, per s",
        "sent its version line",
        &|s| Some(s.flood.admitted_per_s()),
    );
    add(
        "flood: log + audit written, KB/s",
        "growth of the bastion's log (and audit) files",
        &|s| Some(s.flood.log_kb_per_s()),
    );
    add("flood: legitimate logins that succeeded, %", &flood, &|s| {
        Some(s.flood.success_pct())
    });
    let burst = format!("{} s burst on one open tunnel", secs(plan.burst));
    let quiet = format!("{burst}; median of 3 (before, between, after)");
    add("one tunnel, no attack, MB/s", &quiet, &|s| {
        Some(s.tunnel_idle_mb_per_s)
    });
    add("one tunnel during the slowloris, MB/s", &burst, &|s| {
        Some(s.slowloris.tunnel_mb_per_s)
    });
    add("one tunnel during the flood, MB/s", &burst, &|s| {
        Some(s.flood.tunnel_mb_per_s)
    });
}

/// The targets of measurement 7, all on gatehouse's own figures.
fn siege_targets(siege: &PerSide<Siege>) -> Vec<Target> {
    let g = siege.get(Kind::Gatehouse).first();
    let t = |name: &str, bound, threshold, value, unit: &str| Target {
        name: name.into(),
        bound,
        threshold,
        value,
        unit: unit.into(),
    };
    vec![
        t(
            "siege, slowloris: legitimate logins that succeeded, gatehouse",
            Bound::AtLeast,
            99.0,
            g.map(|s| s.slowloris.success_pct()),
            " %",
        ),
        t(
            "siege, slowloris: p95 of the successful logins, gatehouse",
            Bound::AtMost,
            1000.0,
            g.and_then(|s| s.slowloris.p95_ms()),
            " ms",
        ),
        t(
            "siege, flood: log + audit written, gatehouse",
            Bound::AtMost,
            100.0,
            g.map(|s| s.flood.log_kb_per_s()),
            " KB/s",
        ),
    ]
}

fn row(
    section: &str,
    metric: &str,
    gatehouse: Option<f64>,
    openssh: Option<f64>,
    summary: &str,
) -> Row {
    Row {
        section: section.into(),
        metric: metric.into(),
        gatehouse: gatehouse.filter(|v| v.is_finite()),
        openssh: openssh.filter(|v| v.is_finite()),
        summary: summary.into(),
    }
}

/// The results and targets tables only, for the terminal.
fn summary(report: &Report) -> String {
    let md = report.to_markdown("", "");
    let start = md.find("## Results").unwrap_or(0);
    let end = md.find("## Method").unwrap_or(md.len());
    md[start..end].trim().to_string()
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

fn human_bytes(b: u64) -> String {
    if b >= GIB && (b / GIB) * GIB == b {
        format!("{} GiB", b / GIB)
    } else {
        format!("{} MiB", b / MIB)
    }
}

fn command_line(cli: &Cli) -> String {
    let mut s = String::from("gatehouse-bench");
    if cli.quick {
        s.push_str(" --quick");
    }
    if cli.smoke {
        s.push_str(" --smoke");
    }
    for kv in &cli.gatehouse_env {
        s.push_str(&format!(" --gatehouse-env {kv}"));
    }
    if !cli.only.is_empty() {
        s.push_str(&format!(" --only {}", cli.only.join(",")));
    }
    if let Some(n) = cli.tunnel_reps {
        s.push_str(&format!(" --tunnel-reps {n}"));
    }
    s
}

fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text).trim().to_string()
        })
        .unwrap_or_default()
}

fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn utc_now() -> String {
    output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
}

fn machine(gatehouse: &Path) -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let mem_kib =
        gatehouse_bench::procfs::parse_kib(&read("/proc/meminfo"), "MemTotal").unwrap_or(0);
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| {
            l.strip_prefix("PRETTY_NAME=")
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_default();
    // The commit of the tree the gatehouse binary was built in: ours, for the binary built
    // beside this one (wherever CARGO_TARGET_DIR put both), else the tree around the given
    // binary (…/target/release/gatehouse).
    let beside_us = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("gatehouse")))
        .is_some_and(|ours| ours == gatehouse);
    let root = repo_root();
    let tree = if beside_us {
        root.as_path()
    } else {
        gatehouse.ancestors().nth(3).unwrap_or(Path::new("."))
    };
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(tree)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = match git(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => {
            let dirty = git(&[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "crates",
            ])
            .is_some_and(|s| !s.is_empty());
            format!(
                "commit {c}{}",
                if dirty { " + uncommitted changes" } else { "" }
            )
        }
        None => "unknown commit".into(),
    };
    Machine {
        cpu,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        memory_gib: mem_kib as f64 / (1024.0 * 1024.0),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        os,
        openssh: output("ssh", &["-V"]),
        gatehouse_commit: commit,
        russh: locked_version(&root, "russh").map_or_else(
            || "russh (version unknown)".into(),
            |v| format!("russh {v}"),
        ),
        load_average: load_average(),
    }
}
