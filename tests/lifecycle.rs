//! Lifecycle torture: connections that end at every phase of their life, several of each,
//! straight and behind a PROXY v2 load balancer, against one gatehouse. Asserted:
//!
//! - the daemon never panics (its stderr is read after every batch);
//! - each ending is charged to its source exactly as documented (README "Per-source
//!   penalties", `[penalties]` in config/gatehouse.toml): ended before authenticating without
//!   trying -> `no_auth`; failed authentication -> `auth_failure`; cut at `login_grace` ->
//!   `grace_exceeded`; over its source's unauthenticated cap -> `no_auth`; authenticated
//!   sessions (whatever happens after) and pre-auth connections cut by shutdown -> nothing;
//! - every pre-auth slot is released: afterwards `max_unauthenticated` connections are admitted
//!   at once (and one more is refused: these rigs turn eviction off with a long
//!   `eviction_min_age`), and a legitimate `ssh -J` works, many times over;
//! - with eviction on and every slot taken, a login evicts the connection with the least
//!   progress (no version line before mid key exchange; then the longest in the key exchange),
//!   which is audited `evicted` and charged `no_auth`;
//! - shutdown with pre-auth connections held open at every phase exits at once (nothing holds
//!   a tunnel, so nothing may use the grace), charging nothing.
//!
//! How charges are observed exactly: every connection has a source of its own (a client-side
//! address of its own, or its own address in the PROXY header) and `[penalties] threshold =
//! "0s"`, so each charge to a fresh source crosses the threshold and writes exactly one
//! `source.penalized` line naming the source and the offence. The Prometheus counter
//! `gatehouse_penalties_total{offence}` is scraped before and after each batch as well, and its
//! deltas must match exactly (it also counts charges that write no line).
//!
//! The handshake phases are made by `tests/py/cutter.py`, the OpenSSH client's ProxyCommand: it
//! relays the real client's bytes, parses the plaintext packets before NEWKEYS, and cuts (FIN
//! or RST) or holds the connection at the requested point.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::bastion::{
    addr, is, read_audit, start_rig, write_config, Rig, ServerOptions, CMD_TIMEOUT, SSH_PORT,
};
use crate::harness::jupyter::py_script;
use crate::harness::{
    run_with_timeout, venv_python, CmdOutput, Daemon, KeyPair, KeyType, Scratch, SshClient,
    Topology, BASTION_CLIENT_ADDR, PRIVATE_ADDR, TEST_USER,
};

/// The PROXY protocol listener (its peer, the "load balancer", is the cutter in the client
/// namespace).
const PROXY_PORT: u16 = 2222;
/// The metrics endpoint, on the bastion namespace's loopback.
const METRICS_PORT: u16 = 9100;
/// Connections per phase and per listener.
const PER_PHASE: usize = 3;
/// `server.max_unauthenticated` of the torture rig.
const MAX_UNAUTH: usize = 5;
/// `limits.per_source_max_unauthenticated`.
const PER_SOURCE: usize = 2;
/// `server.login_grace` of the torture rig, in seconds.
const LOGIN_GRACE_SECS: u64 = 5;
/// An address in the private subnet that nobody has, with a static neighbour entry (see
/// [`lab`]): a dial to it hangs until `connect_timeout` (3s in these tests).
const BLACKHOLE: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 150);
/// Bound on each cutter/ssh run.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long charges may take to appear after a batch ended (a session ending on its own may
/// take `DISCONNECT_WAIT`, 1s).
const CHARGE_WAIT: Duration = Duration::from_secs(4);
/// After the expected charges are there, how long to wait for unexpected extra ones.
const SETTLE: Duration = Duration::from_millis(400);

const OFFENCES: [&str; 3] = ["no_auth", "auth_failure", "grace_exceeded"];

/// Where a connection comes from: its own client-side address on the plain listener, or its
/// own client address in a PROXY header on the PROXY listener.
#[derive(Clone, Copy, Debug)]
enum Via {
    Direct(Ipv4Addr),
    Proxy(SocketAddr),
}

impl Via {
    /// The source as gatehouse sees it (and names it in `source.penalized`).
    fn ip(&self) -> String {
        match self {
            Via::Direct(ip) => ip.to_string(),
            Via::Proxy(client) => client.ip().to_string(),
        }
    }

    fn listener(&self) -> &'static str {
        match self {
            Via::Direct(_) => "plain",
            Via::Proxy(_) => "PROXY",
        }
    }
}

/// How the cutter ends its connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// Close (FIN).
    Fin,
    /// Close with a TCP RST.
    Rst,
    /// Stop forwarding but keep the connection open, until the bastion closes it.
    Hold,
}

/// The torture rig: one gatehouse with a plain and a PROXY listener, metrics, penalties with a
/// zero threshold, small pre-auth caps, a black-holed host; plus failure collection, so that
/// one run reports every phase that misbehaves, not just the first.
struct Lab {
    rig: Rig,
    /// alice with a key gatehouse does not know.
    stranger: SshClient,
    next_direct: Mutex<u8>,
    next_proxy: Mutex<u8>,
    next_report: Mutex<u32>,
    failures: Mutex<Vec<String>>,
    /// Expected `source.penalized` lines: source -> offence (no entry: no line).
    expected_lines: Mutex<BTreeMap<String, &'static str>>,
    /// Every source used, charged or not.
    sources: Mutex<BTreeSet<String>>,
    /// Expected totals of `gatehouse_penalties_total`.
    expected_metric: Mutex<BTreeMap<&'static str, u64>>,
}

/// Options for [`lab`].
struct LabOptions {
    login_grace: &'static str,
    shutdown_grace: &'static str,
    max_unauthenticated: usize,
    per_source: usize,
    /// `server.eviction_min_age`: "10m" (past `login_grace`) makes the cap a hard cap.
    eviction_min_age: &'static str,
}

fn lab(o: LabOptions) -> Lab {
    let topology = Topology::new();
    let scratch = Scratch::new();
    let alice_key = KeyPair::ed25519(&scratch, "alice_key");
    let bob_key = KeyPair::generate(&scratch, "bob_key", KeyType::Rsa);
    let stranger_key = KeyPair::ed25519(&scratch, "stranger_key");
    let opts = ServerOptions {
        extra: format!(
            r#"
[[hosts]]
name = "blackhole"
address = "{BLACKHOLE}"
groups = ["research"]
ports = [22]

[limits]
per_source_max_unauthenticated = {per_source}

[penalties]
enabled = true
no_auth = "2m"
auth_failure = "5m"
grace_exceeded = "10m"
threshold = "0s"
max = "1h"

[metrics]
listen = "127.0.0.1:{METRICS_PORT}"
"#,
            per_source = o.per_source
        ),
        login_grace: o.login_grace,
        idle_timeout: "1h",
        max_unauthenticated: o.max_unauthenticated,
        eviction_min_age: o.eviction_min_age,
        shutdown_grace: o.shutdown_grace,
        server_extra: format!(
            "proxy_listen = [\"{}\"]\ntrusted_proxies = [\"10.240.0.0/24\"]",
            addr(BASTION_CLIENT_ADDR, PROXY_PORT)
        ),
        ..ServerOptions::default()
    };
    let config = write_config(&scratch, &alice_key, &bob_key, &opts);

    // Client-side addresses 10.240.0.10-99, one per plain-listener connection (inside the
    // test's own client namespace, on the subnet of its veth).
    let mut ip = topology.client.command("sh");
    ip.arg("-c")
        .arg("for i in $(seq 10 99); do ip addr add 10.240.0.$i/24 dev to-bastion || exit 1; done");
    run_with_timeout(ip, CMD_TIMEOUT).expect_success("add the client-side source addresses");
    // The black hole: a permanent neighbour entry with a MAC nobody has, so the bastion's SYNs
    // to it leave on its private veth and are dropped by the private namespace (an unanswered
    // ARP would instead fail the dials with "No route to host" after about 3s, racing
    // connect_timeout).
    let mut neigh = Command::new("ip");
    neigh
        .args(["-n", topology.bastion.name(), "neigh", "replace"])
        .arg(BLACKHOLE.to_string())
        .args([
            "lladdr",
            "02:00:5e:00:53:99",
            "dev",
            "to-private",
            "nud",
            "permanent",
        ]);
    run_with_timeout(neigh, CMD_TIMEOUT).expect_success("black-hole the blackhole host");

    let rig = start_rig(topology, scratch, alice_key, bob_key, config);
    let stranger = rig.client("alice", &stranger_key.private);
    Lab {
        rig,
        stranger,
        next_direct: Mutex::new(10),
        next_proxy: Mutex::new(1),
        next_report: Mutex::new(0),
        failures: Mutex::new(Vec::new()),
        expected_lines: Mutex::new(BTreeMap::new()),
        sources: Mutex::new(BTreeSet::new()),
        expected_metric: Mutex::new(OFFENCES.iter().map(|o| (*o, 0)).collect()),
    }
}

/// One connection's cutter: its source and its report file.
struct Cut {
    via: Via,
    report: PathBuf,
}

impl Cut {
    /// The cutter's report lines (see tests/py/cutter.py).
    fn events(&self) -> Vec<Value> {
        read_audit(&self.report)
    }

    fn has(&self, event: &str) -> bool {
        self.events().iter().any(|e| e["event"] == event)
    }

    fn describe(&self) -> String {
        let events: Vec<String> = self.events().iter().map(Value::to_string).collect();
        format!(
            "{} source {}: cutter said [{}]",
            self.via.listener(),
            self.via.ip(),
            events.join(", ")
        )
    }
}

impl Lab {
    fn fail(&self, msg: String) {
        let msg = strip_ansi(&msg);
        eprintln!("lifecycle FAILURE: {msg}");
        self.failures.lock().unwrap().push(msg);
    }

    /// A source used by no other connection of this test.
    fn source(&self, proxied: bool) -> Via {
        let via = if proxied {
            let mut n = self.next_proxy.lock().unwrap();
            let via = Via::Proxy(SocketAddr::from(([203, 0, 113, *n], 40000 + u16::from(*n))));
            *n += 1;
            via
        } else {
            let mut n = self.next_direct.lock().unwrap();
            assert!(*n <= 99, "out of client-side addresses");
            let via = Via::Direct(Ipv4Addr::new(10, 240, 0, *n));
            *n += 1;
            via
        };
        self.sources.lock().unwrap().insert(via.ip());
        via
    }

    /// A cutter for `via`, ending at `phase` with `end` ("pass" relays without a cut).
    fn cut(&self, via: Via, phase: &str, end: End) -> (Cut, String) {
        let report = {
            let mut n = self.next_report.lock().unwrap();
            *n += 1;
            self.rig.scratch.join(format!("cutter-{n}.jsonl"))
        };
        let (port, from) = match via {
            Via::Direct(ip) => (SSH_PORT, format!("--bind {ip}")),
            Via::Proxy(client) => (PROXY_PORT, format!("--proxy-source {client}")),
        };
        let end = match end {
            End::Fin => "",
            End::Rst => " --rst",
            End::Hold => " --hold",
        };
        let command = format!(
            "{} {} {BASTION_CLIENT_ADDR} {port} {phase} {from} --report {} --max-seconds 25{end}",
            venv_python().display(),
            py_script("cutter.py").display(),
            report.display(),
        );
        (Cut { via, report }, command)
    }

    /// `ssh` as `client` through a cutter.
    fn ssh_via(&self, client: &SshClient, proxy_command: &str, args: &[&str]) -> Command {
        let mut ssh = client.ssh();
        ssh.arg("-o")
            .arg(format!("ProxyCommand={proxy_command}"))
            .args(args);
        ssh
    }

    /// Starts a held connection (ssh through a cutter that holds at `phase`) and waits until
    /// the cutter reports it is holding.
    fn hold(&self, via: Via, phase: &str, name: &str) -> (Cut, Daemon) {
        let (cut, command) = self.cut(via, phase, End::Hold);
        let ssh = self.ssh_via(&self.rig.alice, &command, &["-N", "bastion"]);
        let daemon = Daemon::spawn(name, ssh, &self.rig.scratch);
        self.wait_report(&cut, "held", Duration::from_secs(10));
        (cut, daemon)
    }

    fn wait_report(&self, cut: &Cut, event: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cut.has(event) {
                return true;
            }
            if cut.has("ended-early") || Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `gatehouse_penalties_total` by offence (0 where not exported yet).
    fn penalties_metric(&self) -> BTreeMap<&'static str, u64> {
        let text = self.scrape();
        let mut out: BTreeMap<&'static str, u64> = OFFENCES.iter().map(|o| (*o, 0)).collect();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("gatehouse_penalties_total{offence=\"") else {
                continue;
            };
            let Some((label, value)) = rest.split_once("\"} ") else {
                continue;
            };
            let value: f64 = value
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("metric line {line:?}"));
            match OFFENCES.iter().find(|o| **o == label) {
                Some(o) => {
                    out.insert(o, value as u64);
                }
                None => self.fail(format!("unknown offence label in {line:?}")),
            }
        }
        out
    }

    /// GET /metrics over HTTP/1.0 (no chunking), on the bastion namespace's loopback.
    fn scrape(&self) -> String {
        let target = addr(Ipv4Addr::LOCALHOST, METRICS_PORT);
        let mut last = String::new();
        for _ in 0..50 {
            match self
                .rig
                .topology
                .bastion
                .connect(target, Duration::from_secs(5))
            {
                Ok(mut s) => {
                    s.set_read_timeout(Some(Duration::from_secs(5)))
                        .expect("read timeout");
                    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                        .expect("send the metrics request");
                    let mut body = String::new();
                    s.read_to_string(&mut body).expect("read /metrics");
                    assert!(body.starts_with("HTTP/1."), "{body}");
                    return body;
                }
                Err(e) => last = e.to_string(),
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("cannot reach the metrics endpoint: {last}");
    }

    fn penalized_lines(&self) -> Vec<(String, String)> {
        self.rig
            .audit()
            .iter()
            .filter(|l| is(l, "source.penalized"))
            .map(|l| {
                (
                    l["source"].as_str().unwrap_or("?").to_owned(),
                    l["offence"].as_str().unwrap_or("?").to_owned(),
                )
            })
            .collect()
    }

    /// Lines of the daemon's stderr that report a panic.
    fn panics(&self) -> Vec<String> {
        self.rig
            .gatehouse
            .stderr()
            .lines()
            .filter(|l| l.contains("panicked"))
            .map(str::to_owned)
            .collect()
    }

    /// Checks one batch: the `source.penalized` lines of `charged` (source -> offence) and
    /// `uncharged` sources are exactly as expected, the counter moved by exactly `metric` since
    /// `before`, and the daemon printed no new panic since `panics_before`.
    fn check_batch(
        &self,
        what: &str,
        before: &BTreeMap<&'static str, u64>,
        panics_before: usize,
        charged: &[(String, &'static str)],
        uncharged: &[String],
        metric: &[(&'static str, u64)],
    ) {
        let want_metric: BTreeMap<&'static str, u64> = OFFENCES
            .iter()
            .map(|o| {
                let more = metric
                    .iter()
                    .filter(|(m, _)| m == o)
                    .map(|(_, n)| n)
                    .sum::<u64>();
                (*o, before[o] + more)
            })
            .collect();
        let lines_of = |lines: &[(String, String)], source: &str| -> Vec<String> {
            lines
                .iter()
                .filter(|(s, _)| s == source)
                .map(|(_, o)| o.clone())
                .collect()
        };
        let deadline = Instant::now() + CHARGE_WAIT;
        loop {
            let lines = self.penalized_lines();
            let all_lines = charged.iter().all(|(s, _)| !lines_of(&lines, s).is_empty());
            let now = self.penalties_metric();
            let all_counted = OFFENCES.iter().all(|o| now[o] >= want_metric[o]);
            if (all_lines && all_counted) || Instant::now() >= deadline {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        thread::sleep(SETTLE);
        let lines = self.penalized_lines();
        let now = self.penalties_metric();
        let mut problems = Vec::new();
        for (source, offence) in charged {
            let got = lines_of(&lines, source);
            if got != [offence.to_string()] {
                problems.push(format!(
                    "source {source}: expected exactly one source.penalized with offence \
                     {offence}, got {got:?}"
                ));
            }
        }
        for source in uncharged {
            let got = lines_of(&lines, source);
            if !got.is_empty() {
                problems.push(format!(
                    "source {source}: expected no charge, got source.penalized {got:?}"
                ));
            }
        }
        let delta = |m: &BTreeMap<&'static str, u64>| -> BTreeMap<&'static str, i64> {
            OFFENCES
                .iter()
                .map(|o| (*o, m[o] as i64 - before[o] as i64))
                .collect()
        };
        if now != want_metric {
            problems.push(format!(
                "gatehouse_penalties_total moved by {:?}, expected {:?}",
                delta(&now),
                delta(&want_metric)
            ));
        }
        let panics = self.panics();
        if panics.len() > panics_before {
            problems.push(format!(
                "the daemon panicked {} time(s), first: {}",
                panics.len() - panics_before,
                panics[panics_before]
            ));
        }
        {
            let mut expected = self.expected_lines.lock().unwrap();
            for (source, offence) in charged {
                expected.insert(source.clone(), offence);
            }
            *self.expected_metric.lock().unwrap() = want_metric;
        }
        if problems.is_empty() {
            eprintln!("lifecycle: {what}: ok");
        } else {
            self.fail(format!("{what}:\n    {}", problems.join("\n    ")));
        }
    }

    /// Marks the start of a batch: the counter and the number of panics so far.
    fn mark(&self) -> (BTreeMap<&'static str, u64>, usize) {
        (self.penalties_metric(), self.panics().len())
    }

    /// `PER_PHASE` connections through cutters that cut at `phase` (alternately FIN and RST),
    /// at once. Each must really have been cut there (the cutter says so) and is charged
    /// `no_auth`.
    fn handshake_phase(&self, phase: &str, proxied: bool) {
        let what = format!(
            "cut at {phase} ({} listener)",
            if proxied { "PROXY" } else { "plain" }
        );
        let (before, panics) = self.mark();
        let mut runs = Vec::new();
        for k in 0..PER_PHASE {
            let end = if k % 2 == 0 { End::Fin } else { End::Rst };
            let (cut, command) = self.cut(self.source(proxied), phase, end);
            let ssh = self.ssh_via(&self.rig.alice, &command, &["-N", "bastion"]);
            runs.push((
                cut,
                thread::spawn(move || run_with_timeout(ssh, RUN_TIMEOUT)),
            ));
        }
        let mut charged = Vec::new();
        for (cut, run) in runs {
            let out: CmdOutput = run.join().expect("ssh thread");
            if out.timed_out() || out.success() || !cut.has("cut") {
                self.fail(format!(
                    "{what}: the connection did not end at its phase: {}\n{out}",
                    cut.describe()
                ));
            }
            charged.push((cut.via.ip(), "no_auth"));
        }
        let n = charged.len() as u64;
        self.check_batch(&what, &before, panics, &charged, &[], &[("no_auth", n)]);
    }

    /// Logins with a key gatehouse does not know: ssh gives up by itself. Charged
    /// `auth_failure`, after exactly one audited failure each.
    fn failed_publickey(&self, proxied: bool) {
        let what = format!(
            "failed publickey ({} listener)",
            if proxied { "PROXY" } else { "plain" }
        );
        let (before, panics) = self.mark();
        let mut runs = Vec::new();
        for _ in 0..PER_PHASE {
            let (cut, command) = self.cut(self.source(proxied), "pass", End::Fin);
            let ssh = self.ssh_via(&self.stranger, &command, &["-N", "bastion"]);
            runs.push((
                cut,
                thread::spawn(move || run_with_timeout(ssh, RUN_TIMEOUT)),
            ));
        }
        let mut charged = Vec::new();
        for (cut, run) in runs {
            let out = run.join().expect("ssh thread");
            if out.timed_out() || out.success() {
                self.fail(format!(
                    "{what}: ssh should fail by itself: {}\n{out}",
                    cut.describe()
                ));
            }
            charged.push((cut.via.ip(), "auth_failure"));
        }
        let n = charged.len() as u64;
        self.check_batch(
            &what,
            &before,
            panics,
            &charged,
            &[],
            &[("auth_failure", n)],
        );
        let audit = self.rig.audit();
        for (source, _) in &charged {
            let failures = audit
                .iter()
                .filter(|l| is(l, "auth.failure"))
                .filter(|l| {
                    l["source"]
                        .as_str()
                        .is_some_and(|s| s.starts_with(&format!("{source}:")))
                })
                .count();
            if failures != 1 {
                self.fail(format!(
                    "{what}: source {source}: expected one auth.failure line, got {failures}"
                ));
            }
        }
    }

    /// Authenticated sessions that are then killed: `-N` (after success), `-W blackhole:22`
    /// killed as soon as it authenticated (the channel open in flight), or `kill_after` later
    /// (the dial pending). Never charged; each session's close is audited; for a pending dial
    /// the dial still ends with its `connect_timeout` refusal.
    fn authenticated(&self, what: &str, proxied: bool, args: &[&str], kill_after: Duration) {
        let what = format!(
            "{what} ({} listener)",
            if proxied { "PROXY" } else { "plain" }
        );
        let (before, panics) = self.mark();
        let mut held = Vec::new();
        for k in 0..PER_PHASE {
            let (cut, command) = self.cut(self.source(proxied), "pass", End::Fin);
            let ssh = self.ssh_via(&self.rig.alice, &command, args);
            let name = format!("ssh-{}-{k}", what.split_whitespace().next().unwrap_or("x"));
            held.push((cut, Some(Daemon::spawn(&name, ssh, &self.rig.scratch))));
        }
        // Each is killed `kill_after` after its own auth.success.
        let mut sessions: Vec<Option<(String, Instant)>> = vec![None; held.len()];
        let deadline = Instant::now() + Duration::from_secs(20);
        while held.iter().any(|(_, d)| d.is_some()) && Instant::now() < deadline {
            let audit = self.rig.audit();
            for (i, (cut, daemon)) in held.iter_mut().enumerate() {
                if daemon.is_none() {
                    continue;
                }
                if sessions[i].is_none() {
                    let prefix = format!("{}:", cut.via.ip());
                    if let Some(line) = audit.iter().find(|l| {
                        is(l, "auth.success")
                            && l["source"].as_str().is_some_and(|s| s.starts_with(&prefix))
                    }) {
                        let session = line["session"].as_str().unwrap_or("?").to_owned();
                        sessions[i] = Some((session, Instant::now()));
                    }
                }
                if let Some((_, at)) = &sessions[i] {
                    if at.elapsed() >= kill_after {
                        daemon.take().expect("running").kill();
                    }
                }
            }
            thread::sleep(Duration::from_millis(10));
        }
        for (cut, daemon) in held.iter_mut() {
            if let Some(mut d) = daemon.take() {
                d.kill();
                self.fail(format!(
                    "{what}: no auth.success within 20s: {}\n{}",
                    cut.describe(),
                    d.logs()
                ));
            }
        }
        let sessions: Vec<String> = sessions.into_iter().flatten().map(|(s, _)| s).collect();
        let closed = |audit: &[Value], s: &str| {
            audit
                .iter()
                .any(|l| is(l, "session.close") && l["session"] == s)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let audit = self.rig.audit();
            if sessions.iter().all(|s| closed(&audit, s)) || Instant::now() >= deadline {
                for s in &sessions {
                    if !closed(&audit, s) {
                        self.fail(format!("{what}: session {s} has no session.close line"));
                    }
                }
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let uncharged: Vec<String> = held.iter().map(|(c, _)| c.via.ip()).collect();
        self.check_batch(&what, &before, panics, &[], &uncharged, &[]);
        if kill_after > Duration::ZERO && args.contains(&"-W") {
            // The dial was pending when the client left. The end of the connection abandons
            // it at once, audited with exactly one tunnel.deny `connection_closed` ("the
            // connection ended while dialing"), not at its connect_timeout (3s).
            let deadline = Instant::now() + Duration::from_secs(8);
            loop {
                let audit = self.rig.audit();
                let denials = |s: &String| -> Vec<String> {
                    audit
                        .iter()
                        .filter(|l| is(l, "tunnel.deny") && l["session"] == s.as_str())
                        .map(|l| l["reason_code"].as_str().unwrap_or("?").to_owned())
                        .collect()
                };
                let done = sessions.iter().all(|s| !denials(s).is_empty());
                if done || Instant::now() >= deadline {
                    for s in &sessions {
                        let got = denials(s);
                        let ok = got.len() == 1 && got[0] == "connection_closed";
                        if !ok {
                            self.fail(format!(
                                "{what}: session {s}: the pending dial should end with one \
                                 tunnel.deny (connection_closed), got {got:?}"
                            ));
                        }
                    }
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// `login_grace` and both caps. Held open: two connections from one PROXY source (at
    /// mid-kex), one plain before its version line, one plain at mid-kex. A third from the
    /// PROXY source is over its per-source cap: refused, charged `no_auth`. One PROXY
    /// connection before its version line takes the last slot; one more (plain) is over
    /// `max_unauthenticated`: refused, not charged. At `login_grace` the five held ones are cut
    /// and charged `grace_exceeded` (the PROXY source's line is already written: one line per
    /// crossing).
    fn grace_and_caps(&self) {
        let what = "login_grace and the caps";
        let (before, panics) = self.mark();
        let started = Instant::now();
        let shared = self.source(true);
        let mut held = Vec::new();
        for (k, (via, phase)) in [
            (shared, "mid-kex"),
            (shared, "mid-kex"),
            (self.source(false), "before-version"),
            (self.source(false), "mid-kex"),
        ]
        .into_iter()
        .enumerate()
        {
            held.push(self.hold(via, phase, &format!("ssh-grace-{k}")));
        }
        // The third from the shared PROXY source.
        let (over_source, command) = self.cut(shared, "before-version", End::Hold);
        let ssh = self.ssh_via(&self.rig.alice, &command, &["-N", "bastion"]);
        let out = run_with_timeout(ssh, RUN_TIMEOUT);
        if !over_source.has("ended-early") {
            self.fail(format!(
                "{what}: a third connection from {} should be refused (per-source cap {PER_SOURCE}): {}\n{out}",
                shared.ip(),
                over_source.describe()
            ));
        }
        held.push(self.hold(self.source(true), "before-version", "ssh-grace-4"));
        // All MAX_UNAUTH slots are taken: one more is refused.
        let over_cap = self.source(false);
        let (over_cap_cut, command) = self.cut(over_cap, "before-version", End::Hold);
        let ssh = self.ssh_via(&self.rig.alice, &command, &["-N", "bastion"]);
        let out = run_with_timeout(ssh, RUN_TIMEOUT);
        if !over_cap_cut.has("ended-early") {
            self.fail(format!(
                "{what}: connection {} over max_unauthenticated ({MAX_UNAUTH}) was admitted: {}\n{out}",
                MAX_UNAUTH + 1,
                over_cap_cut.describe()
            ));
        }
        for (cut, _) in &held {
            if !cut.has("held") || cut.has("server-closed") {
                self.fail(format!(
                    "{what}: setup took longer than login_grace ({:?}): {}",
                    started.elapsed(),
                    cut.describe()
                ));
            }
        }
        let audit = self.rig.audit();
        for (via, code) in [
            (shared, "too_many_from_source"),
            (over_cap, "too_many_unauthenticated"),
        ] {
            let prefix = format!("{}:", via.ip());
            if !audit.iter().any(|l| {
                is(l, "connection.refused")
                    && l["reason_code"] == code
                    && l["source"].as_str().is_some_and(|s| s.starts_with(&prefix))
            }) {
                self.fail(format!(
                    "{what}: no connection.refused {code} for {}",
                    via.ip()
                ));
            }
        }
        // Cut at login_grace: the version-line one at once, the mid-kex ones after
        // DISCONNECT_WAIT (1s), since russh does not act on a DISCONNECT during a key exchange.
        let grace = Duration::from_secs(LOGIN_GRACE_SECS);
        for (cut, _) in &held {
            if !self.wait_report(cut, "server-closed", grace + Duration::from_secs(6)) {
                self.fail(format!(
                    "{what}: not closed within login_grace + 6s: {}",
                    cut.describe()
                ));
                continue;
            }
            let after = cut
                .events()
                .iter()
                .find(|e| e["event"] == "server-closed")
                .and_then(|e| e["after"].as_f64())
                .unwrap_or(0.0);
            if after > (LOGIN_GRACE_SECS + 3) as f64 {
                self.fail(format!(
                    "{what}: closed {after}s after it started holding: {}",
                    cut.describe()
                ));
            }
        }
        let charged = vec![
            (shared.ip(), "no_auth"),
            (held[2].0.via.ip(), "grace_exceeded"),
            (held[3].0.via.ip(), "grace_exceeded"),
            (held[4].0.via.ip(), "grace_exceeded"),
        ];
        drop(held);
        self.check_batch(
            what,
            &before,
            panics,
            &charged,
            &[over_cap.ip()],
            &[("no_auth", 1), ("grace_exceeded", 5)],
        );
    }
}

impl Lab {
    /// Every pre-auth slot is free again: `MAX_UNAUTH` connections are admitted at once (each
    /// gets the bastion's version line), one more is refused, and the admitted ones, released
    /// before their version line, are charged `no_auth`.
    fn slots_released(&self) {
        let what = "every pre-auth slot released";
        let (before, panics) = self.mark();
        let mut holds = Vec::new();
        for k in 0..MAX_UNAUTH {
            let (cut, command) = self.cut(self.source(false), "before-version", End::Hold);
            let ssh = self.ssh_via(&self.rig.alice, &command, &["-N", "bastion"]);
            holds.push((
                cut,
                Daemon::spawn(&format!("ssh-slot-{k}"), ssh, &self.rig.scratch),
            ));
        }
        for (cut, _) in &holds {
            if !self.wait_report(cut, "held", Duration::from_secs(10)) {
                self.fail(format!(
                    "{what}: {MAX_UNAUTH} connections at once should all be admitted \
                     (max_unauthenticated = {MAX_UNAUTH}): {}",
                    cut.describe()
                ));
            }
        }
        let over = self.source(false);
        let (over_cut, command) = self.cut(over, "before-version", End::Hold);
        let ssh = self.ssh_via(&self.rig.alice, &command, &["-N", "bastion"]);
        let out = run_with_timeout(ssh, RUN_TIMEOUT);
        if !over_cut.has("ended-early") {
            self.fail(format!(
                "{what}: connection {} over max_unauthenticated was admitted: {}\n{out}",
                MAX_UNAUTH + 1,
                over_cut.describe()
            ));
        }
        let charged: Vec<(String, &'static str)> =
            holds.iter().map(|(c, _)| (c.via.ip(), "no_auth")).collect();
        drop(holds);
        self.check_batch(
            what,
            &before,
            panics,
            &charged,
            &[over.ip()],
            &[("no_auth", MAX_UNAUTH as u64)],
        );
    }

    /// `count` legitimate `ssh -J` logins through to the private sshd, `PER_SOURCE` at a time
    /// (they all come from alice's one address).
    fn legitimate_logins(&self, count: usize) {
        self.sources
            .lock()
            .unwrap()
            .insert(crate::harness::CLIENT_ADDR.to_string());
        let mut done = 0;
        while done < count {
            let wave: Vec<_> = (0..PER_SOURCE.min(count - done))
                .map(|_| {
                    let mut ssh = self.rig.alice.ssh();
                    ssh.args([
                        "-J",
                        "bastion",
                        &format!("{TEST_USER}@{PRIVATE_ADDR}"),
                        "id -un",
                    ]);
                    thread::spawn(move || run_with_timeout(ssh, RUN_TIMEOUT))
                })
                .collect();
            for run in wave {
                let out = run.join().expect("ssh thread");
                if !out.success() || out.stdout_str().trim() != TEST_USER {
                    self.fail(format!("legitimate ssh -J login {}: {out}", done + 1));
                }
                done += 1;
            }
        }
        eprintln!("lifecycle: {count} legitimate ssh -J logins: done");
    }

    /// The whole run: every `source.penalized` line is an expected one (each source at most
    /// once), the counter totals match, no panic; then fails with every failure collected.
    fn finish(&self, started: Instant) {
        let lines = self.penalized_lines();
        let expected = self.expected_lines.lock().unwrap().clone();
        let mut seen = BTreeMap::new();
        for (source, offence) in &lines {
            *seen.entry(source.clone()).or_insert(0) += 1;
            match expected.get(source) {
                Some(want) if want == offence => {}
                Some(want) => self.fail(format!(
                    "source.penalized {source} with offence {offence}, expected {want}"
                )),
                None => self.fail(format!(
                    "unexpected source.penalized {source} ({offence}){}",
                    if self.sources.lock().unwrap().contains(source) {
                        ""
                    } else {
                        " from a source this test never used"
                    }
                )),
            }
        }
        for (source, n) in &seen {
            if *n > 1 {
                self.fail(format!(
                    "source {source} penalized {n} times (expected once)"
                ));
            }
        }
        for (source, offence) in &expected {
            if !seen.contains_key(source) {
                self.fail(format!(
                    "source {source} was never charged ({offence} expected)"
                ));
            }
        }
        let metric = self.penalties_metric();
        let want = self.expected_metric.lock().unwrap().clone();
        if metric != want {
            self.fail(format!(
                "gatehouse_penalties_total at the end: {metric:?}, expected {want:?}"
            ));
        }
        self.finish_without_metrics(started);
    }

    fn finish_without_metrics(&self, started: Instant) {
        let panics = self.panics();
        if !panics.is_empty() {
            self.fail(format!(
                "the daemon printed {} panic(s); the first:\n{}",
                panics.len(),
                panic_context(&self.rig.gatehouse.stderr())
            ));
        }
        eprintln!("lifecycle: ran for {:.1?}", started.elapsed());
        let failures = self.failures.lock().unwrap();
        if !failures.is_empty() {
            panic!(
                "{} lifecycle failure(s):\n- {}\n{}",
                failures.len(),
                failures.join("\n- "),
                self.rig.gatehouse.logs()
            );
        }
    }
}

impl Lab {
    /// With every pre-auth slot taken, a legitimate login takes the slot of the connection
    /// that made the least progress for the longest: first one without a version line (held
    /// after two mid-kex ones), then, with only mid-kex ones left, the one in the key exchange
    /// longest. Each evicted one is cut at once, audited `evicted` and charged `no_auth`; the
    /// others stay held.
    fn evictions(&self) {
        let what = "eviction by progress";
        let (before, panics) = self.mark();
        let oldest_kex = self.hold(self.source(false), "mid-kex", "ssh-evict-kex-1");
        let silent = self.hold(self.source(false), "before-version", "ssh-evict-silent");
        let younger_kex = self.hold(self.source(false), "mid-kex", "ssh-evict-kex-2");
        let check = |evicted: &(Cut, Daemon), kept: &[&(Cut, Daemon)]| {
            if !self.wait_report(&evicted.0, "server-closed", Duration::from_secs(5)) {
                self.fail(format!(
                    "{what}: not evicted by the login: {}",
                    evicted.0.describe()
                ));
            }
            for k in kept {
                if !k.0.has("held") || k.0.has("server-closed") {
                    self.fail(format!("{what}: evicted too: {}", k.0.describe()));
                }
            }
        };
        self.legitimate_logins(1);
        check(&silent, &[&oldest_kex, &younger_kex]);
        let youngest_kex = self.hold(self.source(false), "mid-kex", "ssh-evict-kex-3");
        self.legitimate_logins(1);
        check(&oldest_kex, &[&younger_kex, &youngest_kex]);
        let audit = self.rig.audit();
        for evicted in [&silent, &oldest_kex] {
            let prefix = format!("{}:", evicted.0.via.ip());
            if !audit.iter().any(|l| {
                is(l, "connection.refused")
                    && l["reason_code"] == "evicted"
                    && l["source"].as_str().is_some_and(|s| s.starts_with(&prefix))
            }) {
                self.fail(format!(
                    "{what}: no connection.refused evicted for {prefix}"
                ));
            }
        }
        let all = [silent, oldest_kex, younger_kex, youngest_kex];
        let charged: Vec<(String, &'static str)> =
            all.iter().map(|(c, _)| (c.via.ip(), "no_auth")).collect();
        // The two still held are released now, ending without authenticating.
        drop(all);
        self.check_batch(what, &before, panics, &charged, &[], &[("no_auth", 4)]);
    }
}

#[test]
fn with_every_slot_taken_a_login_evicts_the_least_progressed_connection() {
    let lab = lab(LabOptions {
        login_grace: "20s",
        shutdown_grace: "10s",
        max_unauthenticated: 3,
        per_source: PER_SOURCE,
        eviction_min_age: "0s",
    });
    let started = Instant::now();
    lab.evictions();
    lab.finish(started);
}

/// Now, in seconds since the Unix epoch (the cutter's report timestamps).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// `text` without ANSI escape sequences (the daemon's log is coloured).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The first panic in a log, with the lines around it.
fn panic_context(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    match lines.iter().position(|l| l.contains("panicked")) {
        Some(i) => lines[i.saturating_sub(2)..(i + 4).min(lines.len())].join("\n"),
        None => String::new(),
    }
}

#[test]
fn connections_ending_at_every_phase_are_charged_as_documented_and_release_their_slots() {
    let lab = lab(LabOptions {
        login_grace: "5s",
        shutdown_grace: "10s",
        max_unauthenticated: MAX_UNAUTH,
        per_source: PER_SOURCE,
        // The caps as hard caps: one more is refused (eviction has a test of its own).
        eviction_min_age: "10m",
    });
    let started = Instant::now();
    for proxied in [false, true] {
        for phase in [
            "before-version",
            "mid-version",
            "after-kexinit",
            "mid-kex",
            "after-newkeys",
        ] {
            lab.handshake_phase(phase, proxied);
        }
        lab.failed_publickey(proxied);
        lab.authenticated(
            "after success",
            proxied,
            &["-N", "bastion"],
            Duration::from_millis(300),
        );
        lab.authenticated(
            "during the channel open",
            proxied,
            &["-W", "blackhole:22", "bastion"],
            Duration::ZERO,
        );
        lab.authenticated(
            "during the dial",
            proxied,
            &["-W", "blackhole:22", "bastion"],
            Duration::from_millis(1500),
        );
    }
    lab.grace_and_caps();
    lab.slots_released();
    lab.legitimate_logins(2 * MAX_UNAUTH);
    lab.finish(started);
}

#[test]
fn shutdown_with_connections_held_at_every_preauth_phase_exits_at_once_and_charges_nothing() {
    const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);
    const CLOSED_WITHIN: Duration = Duration::from_millis(2500);
    let mut lab = lab(LabOptions {
        login_grace: "20s",
        shutdown_grace: "4s",
        max_unauthenticated: 16,
        per_source: PER_SOURCE,
        eviction_min_age: "10m",
    });
    let started = Instant::now();
    let mut held = Vec::new();
    let mut after_version = Vec::new();
    for proxied in [false, true] {
        for phase in [
            "before-version",
            "after-kexinit",
            "mid-kex",
            "after-newkeys",
        ] {
            let via = lab.source(proxied);
            if phase != "before-version" {
                after_version.push(via);
            }
            let name = format!("ssh-held-{}-{phase}", via.listener());
            held.push((phase, lab.hold(via, phase, &name)));
        }
    }
    // A connection to the PROXY listener that never sends its header.
    held.push((
        "silent (no PROXY header)",
        lab.hold(lab.source(true), "silent", "ssh-held-silent"),
    ));
    for (phase, (cut, _)) in &held {
        if !cut.has("held") {
            lab.fail(format!("not held at {phase}: {}", cut.describe()));
        }
    }
    // And an authenticated session without tunnels.
    let via = lab.source(false);
    let (_session_cut, command) = lab.cut(via, "pass", End::Fin);
    let ssh = lab.ssh_via(&lab.rig.alice, &command, &["-N", "bastion"]);
    let _session = Daemon::spawn("ssh-session", ssh, &lab.rig.scratch);
    lab.rig.wait_audit("the session's auth.success", |l| {
        is(l, "auth.success")
            && l["source"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("{}:", via.ip())))
    });

    let signalled = Instant::now();
    let signalled_at = unix_now();
    lab.rig.gatehouse.signal(Signal::SIGTERM);
    let status = lab
        .rig
        .gatehouse
        .wait_exit(SHUTDOWN_GRACE + Duration::from_secs(5));
    let took = signalled.elapsed();
    eprintln!("lifecycle: gatehouse exited {took:.2?} after SIGTERM ({status:?})");
    match status {
        None => lab.fail("gatehouse did not exit within shutdown_grace + 5s of SIGTERM".to_owned()),
        Some(s) if !s.success() => lab.fail(format!("gatehouse exited with {s} after SIGTERM")),
        Some(_) => {}
    }
    // Nothing holds a tunnel: "closes sessions without tunnels at once", so the grace is
    // not used (and never overrun).
    if took >= SHUTDOWN_GRACE {
        lab.fail(format!(
            "with only pre-auth connections and a session without tunnels, the drain took \
             {took:.2?} (shutdown_grace {SHUTDOWN_GRACE:?})"
        ));
    }
    let stderr = lab.rig.gatehouse.stderr();
    for warning in ["grace period over", "did not close in time"] {
        if let Some(line) = stderr.lines().find(|l| l.contains(warning)) {
            lab.fail(format!("the drain needed the grace: {line}"));
        }
    }
    // Cut by the shutdown: audited as such, charged nothing.
    let audit = lab.rig.audit();
    for via in &after_version {
        let prefix = format!("{}:", via.ip());
        if !audit.iter().any(|l| {
            is(l, "connection.refused")
                && l["reason_code"] == "shutting_down"
                && l["source"].as_str().is_some_and(|s| s.starts_with(&prefix))
        }) {
            lab.fail(format!(
                "no connection.refused shutting_down for the connection held by {} ({})",
                via.ip(),
                via.listener()
            ));
        }
    }
    for (source, offence) in lab.penalized_lines() {
        lab.fail(format!(
            "source {source} charged {offence}: a shutdown charges nothing"
        ));
    }
    // Each held connection closed by the drain itself, at once: a polite DISCONNECT, and
    // for a stalled key exchange the socket shut down after DISCONNECT_WAIT (1s).
    for (phase, (cut, _)) in &held {
        lab.wait_report(cut, "server-closed", Duration::from_secs(2));
        let closed = cut
            .events()
            .iter()
            .find(|e| e["event"] == "server-closed")
            .and_then(|e| e["at"].as_f64());
        match closed {
            Some(at) if at - signalled_at <= CLOSED_WITHIN.as_secs_f64() => {}
            Some(at) => lab.fail(format!(
                "held at {phase} ({} listener): closed {:.2}s after SIGTERM, expected within \
                 {CLOSED_WITHIN:?}",
                cut.via.listener(),
                at - signalled_at
            )),
            None => lab.fail(format!(
                "held at {phase}: still open after the exit: {}",
                cut.describe()
            )),
        }
    }
    drop(held);
    lab.finish_without_metrics(started);
}
