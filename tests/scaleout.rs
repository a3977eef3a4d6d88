//! Several gatehouse replicas behind a real TCP load balancer, as behind AWS's Network Load
//! Balancer. HAProxy stands in for the NLB: `mode tcp`, round robin, a PROXY protocol v2
//! header to every replica, HTTP health checks against each replica's `health_listen`. It
//! listens in the bastion namespace on the address clients use (10.240.0.1:22); the replicas
//! listen behind it on loopback addresses of that namespace (127.0.0.11, .12, ...). Every
//! replica has the same users, hosts and host key file; their configs differ only in their
//! addresses. Their audit logs go to their stdout.
//!
//! What a fleet owes its users, checked with the real client:
//! - one host key, whichever replica answers, and the real client address (from the PROXY
//!   header, not the balancer's) in every replica's audit log;
//! - health checks that never earn the balancer a penalty;
//! - no failed login once the balancer has noticed a replica that stopped answering (its
//!   packets dropped, as a dead instance's are: SIGSTOP, not a kill that resets connections);
//! - a rolling replacement, one replica at a time, without a failed login, an open tunnel
//!   on a replaced replica draining until `shutdown_grace` and then closed, not cut.
//!
//! HAProxy is configured as an NLB behaves: no retry and no redispatch of a connection that
//! failed, so what the balancer cannot hide is seen; the tests report the logins that fail
//! before a balancer can notice, and assert what the daemon controls (its health answer, its
//! drain, `drain_delay`). Each test prints what it measured (`--no-capture` shows it).

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::harness::haproxy::{BackendServer, BalancerConfig, Haproxy, ServerStat};
use crate::harness::{
    gatehouse_bin, run_with_timeout, Daemon, KeyPair, Scratch, SshClient, Sshd, SshdConfig,
    TcpServer, Topology, BASTION_CLIENT_ADDR, CLIENT_ADDR, PRIVATE_ADDR,
};

/// The balancer's frontend: the address and port clients use.
const FRONTEND_PORT: u16 = 22;
/// A replica's ports on its own loopback address, as gatehouse-vpc configures replicas behind
/// its balancer: no plain SSH listener (`listen = []`), port 22 speaks PROXY v2.
const PROXY_PORT: u16 = 22;
const HEALTH_PORT: u16 = 8080;
const METRICS_PORT: u16 = 9100;
/// The echo server behind `jupyter`, for tunnels.
const SINK_PORT: u16 = 9000;
/// The balancer's source address towards the replicas: the only trusted proxy.
const BALANCER_SOURCE: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Health checks: every 100 ms, down after 2 failures, up after 2 successes. Short, so that
/// the tests are; the shape is the NLB's (interval x threshold), scaled down.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);
const FALL: u32 = 2;
const RISE: u32 = 2;
/// What we allow on top of `CHECK_INTERVAL x FALL` for a replica to be marked down: the check
/// in progress, HAProxy's scheduling, our 10 ms polling of its runtime API, a busy 2-core box.
const DETECTION_SLACK: Duration = Duration::from_millis(500);
/// A health check that gets no answer fails after this long.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

const START_TIMEOUT: Duration = Duration::from_secs(20);
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one login of the loop (the client's own `ConnectTimeout` is 10 s).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Bounds on a login loop, whatever the test does meanwhile.
const LOOP_MAX_LOGINS: usize = 600;
const LOOP_MAX_TIME: Duration = Duration::from_secs(40);

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// Replica slot `slot` (1, 2, ...) lives on 127.0.0.(10 + slot) of the bastion namespace.
fn replica_ip(slot: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 10 + slot)
}

fn replica_name(slot: u8) -> String {
    format!("r{slot}")
}

/// Replica `slot`'s config. Penalties are on, with their defaults: that is what the tests
/// are about.
fn replica_config(
    scratch: &Scratch,
    slot: u8,
    alice: &KeyPair,
    shutdown_grace: Duration,
    drain_delay: Duration,
) -> PathBuf {
    let ip = replica_ip(slot);
    let text = format!(
        r#"
[server]
listen = []
proxy_listen = ["{proxy}"]
trusted_proxies = ["{BALANCER_SOURCE}/32"]
health_listen = "{health}"
host_key = "{dir}/state/ssh_host_ed25519_key"
connect_timeout = "3s"
shutdown_grace = "{grace}s"
drain_delay = "{delay}ms"

[metrics]
listen = "{metrics}"

[[users]]
name = "alice"
keys = ["{alice}"]
groups = ["research"]

[[hosts]]
name = "jupyter"
address = "{PRIVATE_ADDR}"
groups = ["research"]
ports = [22, {SINK_PORT}]
"#,
        proxy = addr(ip, PROXY_PORT),
        health = addr(ip, HEALTH_PORT),
        metrics = addr(ip, METRICS_PORT),
        dir = scratch.path().display(),
        grace = shutdown_grace.as_secs(),
        delay = drain_delay.as_millis(),
        alice = alice.public_line.trim(),
    );
    scratch.write(format!("{}.toml", replica_name(slot)), text.as_bytes())
}

/// One gatehouse replica; its audit log is its stdout.
struct Replica {
    slot: u8,
    daemon: Daemon,
}

impl Replica {
    /// Starts `gatehouse serve` for `slot` (its config written by [`replica_config`]) without
    /// waiting for it.
    fn spawn(topology: &Topology, scratch: &Scratch, slot: u8) -> Replica {
        let name = replica_name(slot);
        let mut cmd = topology.bastion.command(gatehouse_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(scratch.join(format!("{name}.toml")));
        Replica {
            slot,
            daemon: Daemon::spawn(&name, cmd, scratch),
        }
    }

    /// Waits for its "listening" line (not a port probe, which would be a connection).
    fn wait_ready(&mut self) {
        self.daemon
            .wait_for_stderr("gatehouse listening", START_TIMEOUT);
    }

    fn name(&self) -> String {
        replica_name(self.slot)
    }

    /// Its audit lines so far (a line still being written is left out).
    fn audit(&self) -> Vec<Value> {
        let text = self.daemon.stdout();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("{}: audit line is not JSON ({e}): {l}", self.name())
                })
            })
            .collect()
    }

    fn events(&self, event: &str) -> Vec<Value> {
        self.audit()
            .into_iter()
            .filter(|l| l["event"] == event)
            .collect()
    }

    /// The sum of a counter over its labels, from the replica's metrics endpoint (a counter
    /// never incremented is absent: 0).
    fn counter(&self, topology: &Topology, name: &str) -> u64 {
        let at = addr(replica_ip(self.slot), METRICS_PORT);
        let mut stream = topology
            .bastion
            .connect(at, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{}: connect to metrics on {at}: {e}", self.name()));
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .expect("send the metrics request");
        let mut body = String::new();
        stream.read_to_string(&mut body).expect("read /metrics");
        body.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }

    /// The host key fingerprint its "listening" line names.
    fn host_key_fingerprint(&self) -> String {
        let log = self.daemon.stderr();
        let line = log
            .lines()
            .find(|l| l.contains("gatehouse listening"))
            .unwrap_or_else(|| panic!("{}: no listening line\n{log}", self.name()));
        let start = line
            .find("SHA256:")
            .unwrap_or_else(|| panic!("{}: no fingerprint in {line:?}", self.name()));
        line[start..]
            .split(|c: char| c.is_whitespace() || c == ',' || c == '"')
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

/// The fleet: replicas in slots 1..=N (index = slot - 1), HAProxy in front with a server
/// line per slot, spare slots declared in maintenance. Fields drop in order: the balancer and
/// the processes first, the namespaces last.
struct Fleet {
    haproxy: Haproxy,
    replicas: Vec<Replica>,
    _private_sshd: Sshd,
    _echo: TcpServer,
    alice: SshClient,
    scratch: Scratch,
    topology: Topology,
}

impl Fleet {
    /// `serving` replicas started at once (they share one host key file: the first to
    /// create it wins, the others read it), `spare` more slots declared in HAProxy in
    /// maintenance, HAProxy started and every serving replica seen up by its checks.
    /// Every replica has `shutdown_grace` and `drain_delay`.
    fn start(serving: u8, spare: u8, shutdown_grace: Duration, drain_delay: Duration) -> Fleet {
        let topology = Topology::new();
        let scratch = Scratch::new();
        let alice_key = KeyPair::ed25519(&scratch, "alice_key");
        for slot in 1..=serving + spare {
            replica_config(&scratch, slot, &alice_key, shutdown_grace, drain_delay);
        }
        let mut replicas: Vec<Replica> = (1..=serving)
            .map(|slot| Replica::spawn(&topology, &scratch, slot))
            .collect();
        for replica in &mut replicas {
            replica.wait_ready();
        }
        let private_sshd = SshdConfig::private_host(addr(PRIVATE_ADDR, 22))
            .authorize(&alice_key.public_line)
            .start(&topology.private, &scratch, "private_sshd");
        let echo = TcpServer::echo(&topology.private, addr(PRIVATE_ADDR, SINK_PORT));
        let alice = SshClient::new(
            &topology.client,
            &scratch,
            addr(BASTION_CLIENT_ADDR, FRONTEND_PORT),
            "alice",
            &alice_key.private,
        );
        let servers = (1..=serving + spare)
            .map(|slot| BackendServer {
                name: replica_name(slot),
                addr: addr(replica_ip(slot), PROXY_PORT),
                check_port: HEALTH_PORT,
                enabled: slot <= serving,
            })
            .collect();
        let haproxy = Haproxy::start(
            &topology.bastion,
            &scratch,
            "haproxy",
            &BalancerConfig {
                bind: addr(BASTION_CLIENT_ADDR, FRONTEND_PORT),
                servers,
                send_proxy_v2: true,
                source: Some(IpAddr::V4(BALANCER_SOURCE)),
                check_path: "/health".into(),
                check_interval: CHECK_INTERVAL,
                fall: FALL,
                rise: RISE,
                // As an NLB: a connection that fails is not tried again elsewhere.
                retries: 0,
                redispatch: false,
                timeout_connect: Duration::from_secs(1),
                timeout_idle: Duration::from_secs(60),
                timeout_check: CHECK_TIMEOUT,
            },
        );
        for slot in 1..=serving {
            haproxy.wait_server(
                &replica_name(slot),
                "up with a passed check",
                Duration::from_secs(10),
                |s| s.is_up() && s.check_status == "L7OK",
            );
        }
        Fleet {
            haproxy,
            replicas,
            _private_sshd: private_sshd,
            _echo: echo,
            alice,
            scratch,
            topology,
        }
    }

    fn replica(&self, slot: u8) -> &Replica {
        &self.replicas[usize::from(slot - 1)]
    }

    /// Every replica's audit lines, one string, for failure messages.
    fn audits(&self) -> String {
        self.replicas
            .iter()
            .map(|r| {
                let lines: Vec<String> = r.audit().iter().map(Value::to_string).collect();
                format!("--- {} audit ---\n{}", r.name(), lines.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Lines every replica's audit log must not hold: a penalized source, a refused
    /// connection.
    #[track_caller]
    fn assert_nothing_penalized_or_refused(&self) {
        for replica in &self.replicas {
            for line in replica.audit() {
                assert!(
                    line["event"] != "source.penalized" && line["event"] != "connection.refused",
                    "{}: {line}\n{}",
                    replica.name(),
                    self.audits()
                );
            }
        }
    }
}

/// `ssh-keyscan` of the balancer's address from the client namespace: "ssh-ed25519 AAAA...".
fn keyscan(topology: &Topology) -> String {
    let mut scan = topology.client.command("ssh-keyscan");
    scan.args(["-T", "5", "-t", "ed25519", "-p", &FRONTEND_PORT.to_string()])
        .arg(BASTION_CLIENT_ADDR.to_string());
    let out = run_with_timeout(scan, CMD_TIMEOUT);
    out.stdout_str()
        .lines()
        .find(|l| l.contains("ssh-ed25519"))
        .unwrap_or_else(|| panic!("no host key through the balancer: {out}"))
        .split_whitespace()
        .skip(1)
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One login through the balancer: `ssh -W jupyter:22 bastion`, as a ProxyJump does. It
/// worked if ssh exited 0 and the private sshd's banner came back through the tunnel.
struct Login {
    started: Instant,
    took: Duration,
    ok: bool,
    /// ssh's output, for a failed one.
    detail: String,
}

fn login(client: &SshClient) -> Login {
    let started = Instant::now();
    let mut ssh = client.ssh();
    ssh.args(["-W", "jupyter:22", "bastion"]);
    let out = run_with_timeout(ssh, LOGIN_TIMEOUT);
    let ok = out.success() && out.stdout_str().starts_with("SSH-2.0-OpenSSH");
    Login {
        started,
        took: started.elapsed(),
        ok,
        detail: if ok { String::new() } else { out.to_string() },
    }
}

/// The logins of a running login loop.
#[derive(Default)]
struct Logins {
    done: Mutex<Vec<Login>>,
    stop: AtomicBool,
}

impl Logins {
    fn count(&self) -> usize {
        self.done.lock().expect("logins lock").len()
    }

    /// Waits (bounded) until `n` logins that started at or after `since` have finished.
    #[track_caller]
    fn wait_for(&self, n: usize, since: Instant, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (done, failed) = {
                let logins = self.done.lock().expect("logins lock");
                let after: Vec<&Login> = logins.iter().filter(|l| l.started >= since).collect();
                (after.len(), after.iter().filter(|l| !l.ok).count())
            };
            if done >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {done} of {n} logins ({failed} failed) within {timeout:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs `body` while a thread logs in through the balancer, one login after the other, until
/// `body` returns (or panics), or [`LOOP_MAX_LOGINS`] or [`LOOP_MAX_TIME`] is reached.
/// Returns what `body` returned and every login.
fn with_login_loop<R>(client: &SshClient, body: impl FnOnce(&Logins) -> R) -> (R, Vec<Login>) {
    /// Stops the loop when `body` is done, also when it panics.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let logins = Logins::default();
    let result = thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let started = Instant::now();
            while !logins.stop.load(Ordering::Relaxed)
                && logins.count() < LOOP_MAX_LOGINS
                && started.elapsed() < LOOP_MAX_TIME
            {
                let one = login(client);
                logins.done.lock().expect("logins lock").push(one);
            }
        });
        let stop = StopOnDrop(&logins.stop);
        let result = body(&logins);
        drop(stop);
        worker.join().expect("the login loop panicked");
        result
    });
    let done = logins.done.into_inner().expect("logins lock");
    (result, done)
}

/// Failed logins, described for a message: when each started relative to `origin`, and what
/// ssh said.
fn describe_failures(logins: &[Login], origin: Instant) -> String {
    logins
        .iter()
        .filter(|l| !l.ok)
        .map(|l| {
            format!(
                "login started at {:+.3}s, took {:.3?}:\n{}",
                signed_secs(l.started, origin),
                l.took,
                l.detail
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `at - origin` in seconds, negative when `at` is earlier.
fn signed_secs(at: Instant, origin: Instant) -> f64 {
    if at >= origin {
        (at - origin).as_secs_f64()
    } else {
        -(origin - at).as_secs_f64()
    }
}

/// Logins per replica (audited `auth.success` lines), for the figures.
fn per_replica(fleet: &Fleet) -> String {
    fleet
        .replicas
        .iter()
        .map(|r| format!("{} {}", r.name(), r.events("auth.success").len()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A tunnel held open through the balancer: `ssh -N -L` (at log level INFO, so that its
/// stderr shows why the bastion disconnected it) and one connection through it to the echo
/// server, proven alive with `hello`.
struct HeldTunnel {
    stream: TcpStream,
    ssh: Daemon,
    /// Bytes sent (all echoed so far).
    bytes: u64,
}

impl HeldTunnel {
    fn open(fleet: &Fleet, local_port: u16) -> HeldTunnel {
        let mut cmd = fleet.alice.ssh();
        cmd.args([
            "-o",
            "LogLevel=INFO",
            "-N",
            "-L",
            &format!("127.0.0.1:{local_port}:jupyter:{SINK_PORT}"),
            "bastion",
        ]);
        let mut ssh = Daemon::spawn("ssh_tunnel", cmd, &fleet.scratch);
        let local = addr(Ipv4Addr::LOCALHOST, local_port);
        ssh.wait_for_port(&fleet.topology.client, local, Duration::from_secs(30));
        let stream = fleet
            .topology
            .client
            .connect(local, Duration::from_secs(5))
            .expect("connect to the forwarded port");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut tunnel = HeldTunnel {
            stream,
            ssh,
            bytes: 0,
        };
        tunnel.ping(0).expect("echo through the tunnel");
        tunnel
    }

    /// Sends a 16-byte message and reads it back whole.
    fn ping(&mut self, n: u32) -> std::io::Result<()> {
        let message = format!("ping {n:010}\n");
        self.stream.write_all(message.as_bytes())?;
        let mut back = [0u8; 16];
        self.stream.read_exact(&mut back)?;
        assert_eq!(&back[..], message.as_bytes(), "the echo came back altered");
        self.bytes += 16;
        Ok(())
    }
}

/// Three replicas behind HAProxy: whichever replica a connection reaches, the client sees
/// one host key; the replicas see the client's own address (from the PROXY header), not the
/// balancer's; and a few seconds of health checks penalize nothing.
#[test]
fn three_replicas_behind_haproxy_present_one_host_key_and_see_the_real_client() {
    let fleet = Fleet::start(3, 0, Duration::from_secs(10), Duration::ZERO);

    // One host key: six scans through the balancer, two per replica by round robin.
    let before: Vec<ServerStat> = fleet.haproxy.servers();
    let keys: Vec<String> = (0..6).map(|_| keyscan(&fleet.topology)).collect();
    let after = fleet.haproxy.servers();
    for (b, a) in before.iter().zip(&after) {
        assert!(
            a.total > b.total,
            "round robin sent no scan to {}: {before:?} -> {after:?}",
            a.name
        );
    }
    let mut keygen = Command::new("ssh-keygen");
    keygen
        .arg("-y")
        .arg("-f")
        .arg(fleet.scratch.join("state/ssh_host_ed25519_key"));
    let file_key = run_with_timeout(keygen, CMD_TIMEOUT)
        .expect_success("ssh-keygen -y of the shared host key")
        .stdout_str()
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    for key in &keys {
        assert_eq!(key, &file_key, "a replica presented another host key");
    }
    let fingerprints: Vec<String> = fleet
        .replicas
        .iter()
        .map(Replica::host_key_fingerprint)
        .collect();
    assert!(
        fingerprints.iter().all(|f| f == &fingerprints[0]),
        "{fingerprints:?}"
    );
    // The scans ended before authenticating: each is a `no_auth` charge, which shows that the
    // penalty counter below is live.
    let charges: Vec<u64> = fleet
        .replicas
        .iter()
        .map(|r| r.counter(&fleet.topology, "gatehouse_penalties_total"))
        .collect();
    assert!(charges.iter().all(|&c| c >= 1), "{charges:?}");

    // Logins and a tunnel through the balancer: six logins, two per replica.
    for i in 0..6 {
        let one = login(&fleet.alice);
        assert!(one.ok, "login {i} through the balancer:\n{}", one.detail);
    }
    let mut tunnel = HeldTunnel::open(&fleet, 19200);
    tunnel.ping(1).expect("echo through the tunnel");
    // Every replica names the client namespace's address as the source, never the balancer's.
    let client_prefix = format!("{CLIENT_ADDR}:");
    for replica in &fleet.replicas {
        let logins = replica.events("auth.success");
        assert!(
            !logins.is_empty(),
            "{} saw no login\n{}",
            replica.name(),
            fleet.audits()
        );
        for line in &logins {
            assert!(
                line["source"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(&client_prefix)),
                "{}: {line}",
                replica.name()
            );
        }
    }
    let tunnel_opened = fleet
        .replicas
        .iter()
        .filter(|r| {
            r.events("tunnel.open")
                .iter()
                .any(|l| l["port"] == SINK_PORT)
        })
        .count();
    assert_eq!(tunnel_opened, 1, "{}", fleet.audits());

    // Health checks for a while: at least 45 per replica (the balancer checks every
    // CHECK_INTERVAL since it started). Why it matters: a probe of the SSH port is a
    // connection that ends without a login, charged to its source, and a probe's source is
    // the balancer (a check's PROXY header names no client). Once the balancer's address is
    // penalized, every client behind a balancer without PROXY is locked out, and with PROXY
    // the checks themselves are refused and the balancer takes the replicas out. On the
    // health port they earn nothing: no charge at all, not merely none over the threshold.
    let probes_wanted = 45;
    let checked_for = CHECK_INTERVAL * (probes_wanted + 1);
    let since_start = fleet.haproxy.started().elapsed();
    if since_start < checked_for {
        thread::sleep(checked_for - since_start);
    }
    let checked_for = fleet.haproxy.started().elapsed();
    let probes = checked_for.as_millis() / CHECK_INTERVAL.as_millis();
    let charges_after: Vec<u64> = fleet
        .replicas
        .iter()
        .map(|r| r.counter(&fleet.topology, "gatehouse_penalties_total"))
        .collect();
    assert_eq!(
        charges_after, charges,
        "charges changed while only health checks came"
    );
    for stat in fleet.haproxy.servers() {
        assert!(
            stat.is_up() && stat.check_status == "L7OK" && stat.check_failures == 0,
            "{stat:?}"
        );
    }
    fleet.assert_nothing_penalized_or_refused();
    // Logins are still admitted by every replica.
    let admitted_before: Vec<usize> = fleet
        .replicas
        .iter()
        .map(|r| r.events("auth.success").len())
        .collect();
    for i in 0..3 {
        let one = login(&fleet.alice);
        assert!(one.ok, "login {i} after the health checks:\n{}", one.detail);
    }
    for (replica, before) in fleet.replicas.iter().zip(admitted_before) {
        assert!(
            replica.events("auth.success").len() > before,
            "{}",
            fleet.audits()
        );
    }
    tunnel
        .ping(2)
        .expect("echo through the tunnel after the checks");
    eprintln!(
        "scaleout: 6 scans, 1 host key ({}); logins per replica: {}; \
         ~{probes} health checks per replica in {checked_for:.1?} (every {CHECK_INTERVAL:?}), \
         0 charged, 0 failed; penalty charges per replica (the scans): {charges:?}",
        fingerprints[0],
        per_replica(&fleet),
    );
}

/// A replica that stops answering while logins go on: its packets are dropped, as a dead
/// instance's are (SIGSTOP: connections to it hang, nothing resets them), and the balancer,
/// like an NLB, neither retries nor redispatches. The logins it takes before its health checks
/// time out (`FALL x (CHECK_INTERVAL + CHECK_TIMEOUT)`) fail, and are reported as they are;
/// once it is marked down, no login fails, and the others take them all.
#[test]
fn a_replica_that_stops_answering_costs_no_login_after_the_balancer_notices() {
    let mut fleet = Fleet::start(3, 0, Duration::from_secs(5), Duration::ZERO);
    let victim: u8 = 2;
    let bound = (CHECK_INTERVAL + CHECK_TIMEOUT) * FALL + DETECTION_SLACK;
    let survivors = [1u8, 3];
    let Fleet {
        haproxy,
        replicas,
        alice,
        ..
    } = &mut fleet;
    let ((stopped_at, detected, served_before), logins) = with_login_loop(alice, |logins| {
        logins.wait_for(9, Instant::now(), Duration::from_secs(20));
        let served_before: Vec<usize> = survivors
            .iter()
            .map(|&slot| replicas[usize::from(slot - 1)].events("auth.success").len())
            .collect();
        let stopped_at = Instant::now();
        replicas[usize::from(victim - 1)]
            .daemon
            .signal(Signal::SIGSTOP);
        let detected = haproxy.wait_server(
            &replica_name(victim),
            "marked down",
            Duration::from_secs(10),
            ServerStat::is_down,
        );
        // Logins after the bound: at least 20, over at least 3 s.
        let after = stopped_at + bound;
        logins.wait_for(20, after, Duration::from_secs(35));
        thread::sleep((after + Duration::from_secs(3)).saturating_duration_since(Instant::now()));
        (stopped_at, detected, served_before)
    });
    // The stopped replica goes now (SIGKILL ends a stopped process too).
    fleet.replicas[usize::from(victim - 1)].daemon.kill();
    let failed: Vec<&Login> = logins.iter().filter(|l| !l.ok).collect();
    let after_bound = logins
        .iter()
        .filter(|l| l.started >= stopped_at + bound)
        .count();
    eprintln!(
        "scaleout: {} stopped answering: marked down after {detected:.3?} (bound {bound:?}); \
         logins attempted {}, failed {} (all started before the bound: what an NLB without \
         retries loses to a dead target before its checks notice), {after_bound} started after \
         the bound; logins per replica: {}",
        replica_name(victim),
        logins.len(),
        failed.len(),
        per_replica(&fleet),
    );
    if !failed.is_empty() {
        eprintln!(
            "scaleout: the failed logins:\n{}",
            describe_failures(&logins, stopped_at)
        );
    }
    assert!(
        detected <= bound,
        "HAProxy took {detected:?} to mark the stopped replica down (bound {bound:?})\n{}",
        fleet.haproxy.log()
    );
    assert!(
        failed.iter().all(|l| l.started < stopped_at + bound),
        "logins failed after the balancer noticed:\n{}",
        describe_failures(&logins, stopped_at)
    );
    // The survivors took the logins.
    for (&slot, before) in survivors.iter().zip(served_before) {
        let served = fleet.replica(slot).events("auth.success").len();
        assert!(served > before, "{}", fleet.audits());
    }
    assert!(
        after_bound >= 20,
        "only {after_bound} logins after the bound"
    );
}

/// Every replica replaced, one at a time, as an instance refresh does behind a target group:
/// the new replica starts, its slot is enabled in HAProxy and seen up by its checks; the old
/// one is deregistered (HAProxy's `drain` state: no new connections, open ones stay) until
/// the logins in flight on it are done, then it gets SIGTERM (its health port answers
/// `503 draining`, HAProxy marks it down) and exits. A client logging in over and over sees
/// no failure. A tunnel held through one of the old replicas keeps echoing while its replica
/// drains, and is closed when `shutdown_grace` ends: the client's ssh is told why and exits,
/// every byte sent came back, the audit log has the close.
///
/// Why deregistration comes first: a replica that gets SIGTERM while the balancer still
/// sends it connections cuts the logins in flight on it (before authentication, or by
/// refusing the first tunnel of a session that just authenticated: `shutting_down`), and
/// the balancer only learns of the drain at its next checks. An Auto Scaling group does the
/// same: it deregisters the instance and waits for the deregistration delay before it
/// terminates it.
#[test]
fn a_rolling_replacement_drops_no_login_and_drains_open_tunnels() {
    let grace = Duration::from_secs(3);
    let mut fleet = Fleet::start(3, 3, grace, Duration::ZERO);
    let mut tunnel = HeldTunnel::open(&fleet, 19300);
    // Before the login loop, the tunnel's is the only login: its replica is the holder.
    let holder = fleet
        .replicas
        .iter()
        .find(|r| !r.events("auth.success").is_empty())
        .map(|r| r.slot)
        .unwrap_or_else(|| panic!("no replica saw the tunnel's login\n{}", fleet.audits()));
    let tunnel_session = fleet.replica(holder).events("auth.success")[0]["session"].clone();

    struct Step {
        old: u8,
        new: u8,
        /// From the start of the new replica to HAProxy's first passed check after enabling.
        new_up: Duration,
        /// From deregistration to no login in flight on the old replica.
        deregistered: Duration,
        /// When the old replica got SIGTERM, from the start of the loop.
        term_at: f64,
        /// From SIGTERM to HAProxy's checks marking it down, and the check that did.
        marked_down: Duration,
        check: String,
        /// From SIGTERM to its exit, as seen after the mark-down (and the tunnel's drain).
        exited: Duration,
    }
    struct Drain {
        pings: u32,
        last_ping: Duration,
        closed: Duration,
        ssh_exit: Duration,
    }
    let Fleet {
        haproxy,
        replicas,
        alice,
        scratch,
        topology,
        ..
    } = &mut fleet;
    let started = Instant::now();
    let ((steps, drain), logins) = with_login_loop(alice, |logins| {
        logins.wait_for(6, started, Duration::from_secs(20));
        let mut steps = Vec::new();
        let mut drain = None;
        for old in 1..=3u8 {
            let new = old + 3;
            // Register the new replica once it serves.
            let begun = Instant::now();
            let mut replica = Replica::spawn(topology, scratch, new);
            replica.wait_ready();
            replicas.push(replica);
            haproxy.set_state(&replica_name(new), "ready");
            haproxy.wait_server(
                &replica_name(new),
                "up with a passed check",
                Duration::from_secs(10),
                |s| s.is_up() && s.check_status == "L7OK",
            );
            let new_up = begun.elapsed();
            // Deregister the old one; wait until only the held tunnel (if it is there) is left.
            let held = u64::from(old == holder);
            haproxy.set_state(&replica_name(old), "drain");
            let deregistered = haproxy.wait_server(
                &replica_name(old),
                "left with no login in flight",
                Duration::from_secs(10),
                |s| s.current <= held,
            );
            // Then stop it.
            let term_at = Instant::now();
            replicas[usize::from(old - 1)]
                .daemon
                .signal(Signal::SIGTERM);
            let marked_down = haproxy.wait_server(
                &replica_name(old),
                "marked down",
                Duration::from_secs(10),
                ServerStat::is_down,
            );
            let stat = haproxy.server(&replica_name(old));
            let mut check = stat.check_status;
            if old == holder {
                // Its health port says so while it drains: 503, not a refused connection.
                haproxy.wait_server(
                    &replica_name(old),
                    "answering its checks 503",
                    Duration::from_secs(2),
                    |s| !s.check_in_progress && s.check_status == "L7STS" && s.check_code == "503",
                );
                check = "L7STS 503".into();
                // The tunnel echoes while its replica drains, until a second before the end.
                let mut pings = 0;
                let mut last_ping = Duration::ZERO;
                while term_at.elapsed() + Duration::from_secs(1) < grace {
                    pings += 1;
                    tunnel
                        .ping(100 + pings)
                        .unwrap_or_else(|e| panic!("the tunnel broke while draining: {e}"));
                    last_ping = term_at.elapsed();
                    thread::sleep(Duration::from_millis(150));
                }
                // Then it is closed: end of stream, no stray byte.
                tunnel
                    .stream
                    .set_read_timeout(Some(grace + Duration::from_secs(5)))
                    .expect("read timeout");
                let mut rest = Vec::new();
                match tunnel.stream.read_to_end(&mut rest) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                    Err(e) => panic!("the tunnel's end: {e}"),
                }
                assert!(rest.is_empty(), "stray bytes at the close: {rest:?}");
                let closed = term_at.elapsed();
                tunnel
                    .ssh
                    .wait_exit(Duration::from_secs(5))
                    .unwrap_or_else(|| panic!("ssh -N still running\n{}", tunnel.ssh.logs()));
                drain = Some(Drain {
                    pings,
                    last_ping,
                    closed,
                    ssh_exit: term_at.elapsed(),
                });
            }
            let replica = &mut replicas[usize::from(old - 1)];
            let status = replica
                .daemon
                .wait_exit(grace + Duration::from_secs(5))
                .unwrap_or_else(|| panic!("r{old} still running\n{}", replica.daemon.logs()));
            assert!(status.success(), "{status:?}\n{}", replica.daemon.logs());
            steps.push(Step {
                old,
                new,
                new_up,
                deregistered,
                term_at: signed_secs(term_at, started),
                marked_down,
                check,
                exited: term_at.elapsed(),
            });
            // A few logins on the new fleet before the next step.
            logins.wait_for(3, Instant::now(), Duration::from_secs(20));
        }
        (steps, drain.expect("the holder was replaced"))
    });

    let failed = logins.iter().filter(|l| !l.ok).count();
    let attempted = logins.len();
    let took = started.elapsed();
    for s in &steps {
        eprintln!(
            "scaleout: r{} -> r{}: new one up in {:.3?} (start, enable, a passed check); old \
             one deregistered, no login in flight after {:.3?}; SIGTERM at {:+.3}s, marked \
             down {:.3?} later ({}), exit seen {:.3?} after SIGTERM",
            s.old, s.new, s.new_up, s.deregistered, s.term_at, s.marked_down, s.check, s.exited
        );
    }
    eprintln!(
        "scaleout: rolling replacement of 3 replicas in {took:.1?}: logins attempted \
         {attempted}, failed {failed}; logins per replica: {}; tunnel on r{holder}: {} pings \
         while draining (last at {:.2?} after SIGTERM), closed at {:.2?} (shutdown_grace \
         {grace:?}), ssh exited at {:.2?}",
        per_replica(&fleet),
        drain.pings,
        drain.last_ping,
        drain.closed,
        drain.ssh_exit,
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {attempted} logins failed:\n{}\n{}",
        describe_failures(&logins, started),
        fleet.audits()
    );
    for slot in 4..=6 {
        assert!(
            !fleet.replica(slot).events("auth.success").is_empty(),
            "r{slot} served no login\n{}",
            fleet.audits()
        );
    }
    // The drain: the tunnel echoed for most of the grace period and closed when it ended.
    assert!(
        drain.pings >= 5,
        "only {} pings while draining",
        drain.pings
    );
    assert!(
        drain.closed + Duration::from_millis(300) >= grace
            && drain.closed <= grace + Duration::from_secs(3),
        "closed {:?} after SIGTERM, grace {grace:?}",
        drain.closed
    );
    let ssh_log = tunnel.ssh.stderr();
    assert!(
        ssh_log.contains("the bastion is shutting down (grace period over)"),
        "the client was not told why:\n{ssh_log}"
    );
    let holder_replica = fleet.replica(holder);
    let close = holder_replica
        .events("tunnel.close")
        .into_iter()
        .find(|l| l["session"] == tunnel_session && l["bytes_up"] == tunnel.bytes)
        .unwrap_or_else(|| {
            panic!(
                "no tunnel.close of {} bytes in r{holder}'s audit\n{}",
                tunnel.bytes,
                fleet.audits()
            )
        });
    assert_eq!(close["bytes_down"], tunnel.bytes, "{close}");
    let session_close = holder_replica
        .events("session.close")
        .into_iter()
        .find(|l| l["session"] == tunnel_session)
        .unwrap_or_else(|| {
            panic!(
                "no session.close for the tunnel's session\n{}",
                fleet.audits()
            )
        });
    assert_eq!(
        session_close["reason"], "the bastion is shutting down (grace period over)",
        "{session_close}"
    );
}

/// Stopping a replica without deregistering it first (SIGTERM while the balancer still sends
/// to it): with `server.drain_delay` longer than the balancer's detection (check interval ×
/// fall, plus a login), the health port answers 503 at once while the replica still serves,
/// the balancer takes it out on that 503, and only then does the drain refuse anything. Two
/// replicas stopped one after the other while a client logs in: no login fails. (Without the
/// delay, the login in flight on the stopped replica failed in 6 of 11 runs.)
#[test]
fn a_stop_with_a_drain_delay_drops_no_login() {
    let delay = CHECK_INTERVAL * FALL + Duration::from_millis(600);
    let mut fleet = Fleet::start(3, 0, Duration::from_secs(2), delay);
    let Fleet {
        haproxy,
        replicas,
        alice,
        ..
    } = &mut fleet;
    let started = Instant::now();
    let (downs, logins) = with_login_loop(alice, |logins| {
        logins.wait_for(6, started, Duration::from_secs(20));
        let mut downs = Vec::new();
        for slot in [1u8, 2] {
            let term_at = Instant::now();
            replicas[usize::from(slot - 1)]
                .daemon
                .signal(Signal::SIGTERM);
            let down = haproxy.wait_server(
                &replica_name(slot),
                "marked down",
                Duration::from_secs(10),
                ServerStat::is_down,
            );
            let stat = haproxy.server(&replica_name(slot));
            let replica = &mut replicas[usize::from(slot - 1)];
            let status = replica
                .daemon
                .wait_exit(Duration::from_secs(10))
                .unwrap_or_else(|| panic!("r{slot} still running\n{}", replica.daemon.logs()));
            assert!(status.success(), "{status:?}\n{}", replica.daemon.logs());
            downs.push((
                slot,
                down,
                stat.check_status,
                stat.check_code,
                term_at.elapsed(),
            ));
            logins.wait_for(4, Instant::now(), Duration::from_secs(20));
        }
        downs
    });
    let failed = logins.iter().filter(|l| !l.ok).count();
    for (slot, down, check, code, exited) in &downs {
        eprintln!(
            "scaleout: r{slot} stopped with drain_delay {delay:?}: marked down {down:.3?} after \
             SIGTERM by its check ({check} {code}), exited {exited:.3?} after SIGTERM"
        );
    }
    eprintln!(
        "scaleout: two stops without deregistration: logins attempted {}, failed {failed}; \
         logins per replica: {}",
        logins.len(),
        per_replica(&fleet)
    );
    for (slot, down, check, code, _) in &downs {
        // Taken out by its 503 while it still served, not by a refused connection.
        assert!(
            check == "L7STS" && code == "503",
            "r{slot} was marked down by {check} {code}, not by its 503\n{}",
            fleet.haproxy.log()
        );
        assert!(
            *down < delay,
            "r{slot} marked down {down:?} after SIGTERM, delay {delay:?}"
        );
    }
    assert_eq!(
        failed,
        0,
        "{failed} of {} logins failed:\n{}\n{}",
        logins.len(),
        describe_failures(&logins, started),
        fleet.audits()
    );
    let log = fleet.replica(1).daemon.logs();
    assert!(log.contains("health checks answer 503 from now"), "{log}");
}

/// What the daemon controls in a stop without deregistration: with `drain_delay`, a
/// connection the balancer still sends straight to the stopping replica during the delay is
/// served (here one sent to it directly, with the balancer's PROXY header, after SIGTERM),
/// its health port says 503 meanwhile, and it exits no earlier than the delay.
#[test]
fn a_stopping_replica_serves_what_reaches_it_during_its_drain_delay() {
    let delay = Duration::from_secs(3);
    let mut fleet = Fleet::start(2, 0, Duration::from_secs(2), delay);
    // alice, straight to r1's PROXY port: the balancer's header, from the balancer's source.
    let mut direct = SshClient::new(
        &fleet.topology.client,
        &fleet.scratch,
        addr(BASTION_CLIENT_ADDR, FRONTEND_PORT),
        "alice",
        &fleet.scratch.join("keys/alice_key"),
    );
    direct.option(
        "ProxyCommand",
        &format!(
            "ip netns exec {} {} {} {} {PROXY_PORT} {CLIENT_ADDR} 40000 {BALANCER_SOURCE}",
            fleet.topology.bastion.name(),
            crate::harness::venv_python().display(),
            crate::harness::jupyter::py_script("proxy_connect.py").display(),
            replica_ip(1),
        ),
    );
    let hop = || {
        let mut ssh = direct.ssh();
        ssh.args(["-W", "jupyter:22", "bastion"]);
        run_with_timeout(ssh, CMD_TIMEOUT)
    };
    let out = hop();
    assert!(out.stdout_str().starts_with("SSH-2.0-OpenSSH"), "{out}");

    let term_at = Instant::now();
    fleet.replicas[0].daemon.signal(Signal::SIGTERM);
    fleet.haproxy.wait_server(
        &replica_name(1),
        "marked down by its 503",
        Duration::from_secs(10),
        ServerStat::is_down,
    );
    let out = hop();
    let served_at = term_at.elapsed();
    assert!(
        served_at < delay,
        "the direct login ended {served_at:?} after SIGTERM, past the delay {delay:?}: {out}"
    );
    assert!(
        out.stdout_str().starts_with("SSH-2.0-OpenSSH"),
        "a login sent straight to the stopping replica {served_at:?} into its {delay:?} \
         delay was not served: {out}\n{}",
        fleet.replicas[0].daemon.logs()
    );
    let replica = &mut fleet.replicas[0];
    let status = replica
        .daemon
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("r1 still running\n{}", replica.daemon.logs()));
    let exited = term_at.elapsed();
    assert!(status.success(), "{status:?}\n{}", replica.daemon.logs());
    eprintln!(
        "scaleout: r1 stopped with drain_delay {delay:?}: a direct login served {served_at:.3?} \
         after SIGTERM, exit {exited:.3?} after SIGTERM"
    );
    assert!(
        exited >= delay,
        "r1 exited {exited:?} after SIGTERM, before its drain_delay {delay:?}"
    );
}
