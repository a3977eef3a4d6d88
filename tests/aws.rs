//! gatehouse with AWS as the source of truth, end to end: moto (the AWS API, in memory) runs on
//! the bastion namespace's own loopback behind a small fault-injecting proxy
//! (`tests/py/aws_proxy.py`), the real `gatehouse` binary reads it with the real AWS SDK, and
//! the stock OpenSSH client logs in from the client namespace. IAM users, keys and tags and
//! EC2 instances (placed on addresses the private namespace owns) are created with boto3
//! (`tests/py/aws_fixture.py`).
//!
//! Covered: who gets in and where (tags, IAM groups, inactive keys, ports, stopped and
//! terminated instances, VPC filter, duplicate names, name mapping), one private address in
//! two VPCs (never dialed), live revocation (key deactivated, tag removed), access that ends at
//! an IAM user's `gatehouse:expires` (the open tunnel closed at that instant), users deleted
//! during a refresh (gone, not a failed refresh), an AWS outage (cached users until
//! `max_staleness`, then refused, then recovery without a restart), throttling (no
//! revocation), a denied call (the missing action named, no SDK dump), the shared SSM host
//! key, and `gatehouse ssh-config` / `gatehouse hosts` in AWS mode.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::harness::moto_ns::{AccessKey, NsMoto as Moto};
use crate::harness::{
    gatehouse_bin, run_with_timeout, venv_python, wait_until, CmdOutput, Daemon, KeyPair, Scratch,
    SshClient, Sshd, SshdConfig, TcpServer, Topology, BASTION_CLIENT_ADDR, PRIVATE_ADDR,
    PRIVATE_ADDR_2, TEST_USER,
};

pub(super) const SSH_PORT: u16 = 22;
pub(super) const ECHO_PORT: u16 = 9000;
pub(super) const CMD_TIMEOUT: Duration = Duration::from_secs(60);
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// `refresh_interval` in these tests.
const REFRESH: Duration = Duration::from_secs(1);
/// Slack on top of one refresh interval for the refresh itself and the revocation to act.
const SLACK: Duration = Duration::from_secs(4);
const HOST_KEY_PARAMETER: &str = "/gatehouse/test/host_ed25519";

pub(super) fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn py_script(name: &str) -> PathBuf {
    crate::harness::jupyter::py_script(name)
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The fault-injecting proxy in front of moto, in the bastion namespace.
pub(super) struct Proxy {
    /// Kept for its lifetime (killed on drop) and its logs.
    _daemon: Daemon,
    port: u16,
    ns: crate::harness::Netns,
}

impl Proxy {
    pub(super) fn start(topology: &Topology, scratch: &Scratch, upstream: u16) -> Proxy {
        Proxy::start_recording(topology, scratch, upstream, None)
    }

    /// [`Proxy::start`], appending every EC2 Instance Connect push moto accepted to `pushes`
    /// (JSON lines; see `tests/py/aws_proxy.py`).
    pub(super) fn start_recording(
        topology: &Topology,
        scratch: &Scratch,
        upstream: u16,
        pushes: Option<&Path>,
    ) -> Proxy {
        let port = topology
            .bastion
            .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut cmd = topology.bastion.command(venv_python());
        cmd.arg(py_script("aws_proxy.py"))
            .arg(port.to_string())
            .arg(upstream.to_string());
        if let Some(pushes) = pushes {
            cmd.arg(pushes);
        }
        let mut daemon = Daemon::spawn("aws_proxy", cmd, scratch);
        daemon.wait_for_port(
            &topology.bastion,
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(20),
        );
        Proxy {
            _daemon: daemon,
            port,
            ns: topology.bastion.clone(),
        }
    }

    pub(super) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A control request (`/__proxy/...`); returns the JSON answer.
    pub(super) fn control(&self, path: &str) -> Value {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream = self
            .ns
            .connect(addr, Duration::from_secs(5))
            .expect("connect to the proxy");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n"
        )
        .expect("write to the proxy");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read the proxy");
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("proxy answer {text:?}: {e}"))
    }
}

/// Runs `tests/py/aws_fixture.py` against moto (directly, not through the proxy) in the
/// bastion namespace and returns one result per operation.
pub(super) fn fixture(topology: &Topology, moto: &Moto, ops: Value) -> Vec<Value> {
    fixture_as(topology, moto, None, ops)
}

/// [`fixture`] signed with `key` (moto with IAM enforced) instead of moto's "test" key.
pub(super) fn fixture_as(
    topology: &Topology,
    moto: &Moto,
    key: Option<&AccessKey>,
    ops: Value,
) -> Vec<Value> {
    let mut cmd = topology.bastion.command(venv_python());
    cmd.arg(py_script("aws_fixture.py"))
        .arg(moto.url())
        .arg(ops.to_string());
    for (var, value) in key.map(AccessKey::env).into_iter().flatten() {
        cmd.env(var, value);
    }
    let out = run_with_timeout(cmd, CMD_TIMEOUT);
    out.expect_success("aws_fixture.py");
    let value: Value = serde_json::from_str(out.stdout_str().trim())
        .unwrap_or_else(|e| panic!("fixture output is not JSON ({e}): {out}"));
    value.as_array().cloned().unwrap_or_default()
}

/// Settings of one test's gatehouse config.
pub(super) struct Settings {
    pub(super) max_staleness: &'static str,
    /// `aws.vpc_ids` (required, at least one).
    pub(super) vpc_ids: Vec<String>,
    pub(super) listen_port: u16,
}

pub(super) fn write_config(scratch: &Scratch, name: &str, endpoint: &str, s: &Settings) -> PathBuf {
    let vpcs = serde_json::to_string(&s.vpc_ids).expect("a list of strings");
    let text = format!(
        r#"
[server]
listen = ["{listen}"]
connect_timeout = "3s"
shutdown_grace = "1s"

[audit]
file = "{dir}/{name}.audit.jsonl"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"
vpc_ids = {vpcs}
refresh_interval = "{refresh}s"
max_staleness = "{staleness}"
iam_group_prefix = "gatehouse-"
host_key_ssm_parameter = "{HOST_KEY_PARAMETER}"
"#,
        listen = addr(BASTION_CLIENT_ADDR, s.listen_port),
        dir = scratch.path().display(),
        refresh = REFRESH.as_secs(),
        staleness = s.max_staleness,
    );
    scratch.write(format!("{name}.toml"), text.as_bytes())
}

/// A gatehouse command in the bastion namespace with AWS credentials for moto (and nothing
/// that could reach a real AWS endpoint or the metadata service).
pub(super) fn gatehouse_cmd(topology: &Topology) -> Command {
    gatehouse_cmd_from(topology, gatehouse_bin())
}

/// [`gatehouse_cmd`] for the gatehouse binary at `binary`.
pub(super) fn gatehouse_cmd_from(topology: &Topology, binary: &Path) -> Command {
    let mut cmd = topology.bastion.command(binary);
    AccessKey::moto_test().apply(&mut cmd);
    // Every refresh logs a line at debug (at info only when it changed something): tests count
    // them to know that a refresh started after a change (see `wait_for_refreshes`).
    cmd.env("RUST_LOG", "info,russh=warn,gatehouse_aws::refresh=debug");
    cmd
}

/// Waits (bounded) until `daemon` has logged two more IAM sweeps and two more instance
/// listings than when called. The refresher runs one of each at a time, so the second of each
/// started after this call and saw every change AWS had taken before it.
#[track_caller]
pub(super) fn wait_for_refreshes(daemon: &Daemon) {
    let count = |part: &str| {
        daemon
            .stderr()
            .lines()
            .filter(|l| l.contains("AWS directory refreshed") && l.contains(part))
            .count()
    };
    let (users, hosts) = (count(" users="), count(" hosts="));
    let timeout = START_TIMEOUT;
    let deadline = Instant::now() + timeout;
    while count(" users=") < users + 2 || count(" hosts=") < hosts + 2 {
        assert!(
            Instant::now() < deadline,
            "not two IAM sweeps and two instance listings within {timeout:?}\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(super) fn start_gatehouse(
    topology: &Topology,
    scratch: &Scratch,
    config: &Path,
    name: &str,
) -> Daemon {
    let mut cmd = gatehouse_cmd(topology);
    cmd.arg("serve").arg("--config").arg(config);
    let mut daemon = Daemon::spawn(name, cmd, scratch);
    daemon.wait_for_stderr("gatehouse listening", START_TIMEOUT);
    daemon
}

pub(super) fn read_audit(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The standard world: a VPC with a subnet on the private namespace's addresses, alice
/// (tagged `research`), and `jupyter` (10.0.3.140, research, SSH and the echo port).
pub(super) struct World {
    pub(super) vpc_id: String,
    subnet_id: String,
    alice_key_id: String,
    jupyter_id: String,
}

pub(super) fn standard_world(topology: &Topology, moto: &Moto, alice: &KeyPair) -> World {
    let r = fixture(
        topology,
        moto,
        json!([
            {"op": "vpc", "cidr": "10.0.0.0/16", "subnet": "10.0.3.0/24"},
            {"op": "user", "name": "alice", "groups": "research", "keys": [alice.public_line.trim()]},
        ]),
    );
    let vpc_id = r[0]["vpc_id"].as_str().expect("vpc id").to_owned();
    let subnet_id = r[0]["subnet_id"].as_str().expect("subnet id").to_owned();
    let alice_key_id = r[1]["key_ids"][0].as_str().expect("key id").to_owned();
    let r = fixture(
        topology,
        moto,
        json!([{"op": "instance", "subnet_id": subnet_id, "ip": PRIVATE_ADDR.to_string(),
                "tags": {"Name": "jupyter", "gatehouse:groups": "research",
                         "gatehouse:ports": format!("{SSH_PORT},{ECHO_PORT}")}}]),
    );
    World {
        vpc_id,
        subnet_id,
        alice_key_id,
        jupyter_id: r[0]["id"].as_str().expect("instance id").to_owned(),
    }
}

/// Fields drop in order: processes first, the namespaces last.
struct Rig {
    gatehouse: Daemon,
    sshd: Sshd,
    proxy: Proxy,
    moto: Moto,
    world: World,
    alice_key: KeyPair,
    config: PathBuf,
    scratch: Scratch,
    topology: Topology,
}

fn rig(max_staleness: &'static str) -> Rig {
    rig_seeded(max_staleness, None)
}

/// A rig whose moto hands out ids from `seed` (see the fixture's `seed` op), when given.
fn rig_seeded(max_staleness: &'static str, seed: Option<u64>) -> Rig {
    rig_with(max_staleness, seed, None)
}

/// The IAM event channel of a [`rig_with`].
struct Events {
    /// `aws.iam_sweep_interval`.
    sweep: &'static str,
    /// The proxy refuses `sqs:ReceiveMessage` from the start (the role lacks it).
    deny_receive: bool,
}

/// The IAM change-event queue and rule of the events tests, in moto.
const EVENT_QUEUE: &str = "gatehouse-test-iam-events";

/// A rig as [`rig_seeded`]'s; with `events`, moto also has the IAM event channel (the queue
/// and the rule gatehouse-vpc would provision, from the daemon's own pattern and retention),
/// and the daemon reads it and sweeps IAM every `events`.
fn rig_with(max_staleness: &'static str, seed: Option<u64>, events: Option<Events>) -> Rig {
    let topology = Topology::new();
    let scratch = Scratch::new();
    let moto = Moto::start_in(&topology.bastion);
    let proxy = Proxy::start(&topology, &scratch, moto.addr().port());
    let alice_key = KeyPair::ed25519(&scratch, "alice_key");
    if let Some(seed) = seed {
        fixture(&topology, &moto, json!([{"op": "seed", "value": seed}]));
    }
    let world = standard_world(&topology, &moto, &alice_key);
    let config = write_config(
        &scratch,
        "gatehouse",
        &proxy.url(),
        &Settings {
            max_staleness,
            vpc_ids: vec![world.vpc_id.clone()],
            listen_port: SSH_PORT,
        },
    );
    if let Some(Events {
        sweep,
        deny_receive,
    }) = events
    {
        let url = event_channel(&topology, &moto, &proxy);
        if deny_receive {
            proxy.control("/__proxy/deny?action=sqs:ReceiveMessage");
        }
        let mut text = std::fs::read_to_string(&config).expect("config");
        text.push_str(&format!(
            "events_queue_url = \"{url}\"\niam_sweep_interval = \"{sweep}\"\n"
        ));
        std::fs::write(&config, text).expect("config");
    }
    let gatehouse = start_gatehouse(&topology, &scratch, &config, "gatehouse");
    let sshd = SshdConfig::private_host(addr(PRIVATE_ADDR, SSH_PORT))
        .authorize(&alice_key.public_line)
        .start(&topology.private, &scratch, "private_sshd");
    Rig {
        gatehouse,
        sshd,
        proxy,
        moto,
        world,
        alice_key,
        config,
        scratch,
        topology,
    }
}

/// Creates the IAM event queue and its rule in moto as gatehouse-vpc provisions them (the
/// pattern and the retention are the daemon's own); returns the queue URL as the daemon,
/// behind the proxy, reaches it.
fn event_channel(topology: &Topology, moto: &Moto, proxy: &Proxy) -> String {
    use gatehouse_aws::events::{iam_event_pattern, QUEUE_RETENTION_SECS};
    let r = fixture(
        topology,
        moto,
        json!([
            {"op": "call", "service": "sqs", "method": "create_queue", "args": {
                "QueueName": EVENT_QUEUE,
                "Attributes": {"MessageRetentionPeriod": QUEUE_RETENTION_SECS.to_string(),
                               "VisibilityTimeout": "0"}}},
            {"op": "call", "service": "events", "method": "put_rule", "args": {
                "Name": "gatehouse-test-iam-changes",
                "EventPattern": iam_event_pattern().to_string()}},
            {"op": "call", "service": "events", "method": "put_targets", "args": {
                "Rule": "gatehouse-test-iam-changes",
                "Targets": [{"Id": "queue",
                             "Arn": format!("arn:aws:sqs:us-east-1:123456789012:{EVENT_QUEUE}")}]}},
        ]),
    );
    let url = r[0]["QueueUrl"].as_str().expect("queue url");
    assert!(
        url.ends_with(&format!("/123456789012/{EVENT_QUEUE}")),
        "{url}"
    );
    format!("{}/123456789012/{EVENT_QUEUE}", proxy.url())
}

/// What CloudTrail puts on EventBridge for a successful IAM call `name` with `params` (a
/// fixture op).
pub(super) fn iam_event(name: &str, params: Value) -> Value {
    json!({"op": "call", "service": "events", "method": "put_events", "args": {"Entries": [{
        "Source": "aws.iam",
        "DetailType": "AWS API Call via CloudTrail",
        "Detail": json!({
            "eventVersion": "1.08",
            "eventSource": "iam.amazonaws.com",
            "eventName": name,
            "awsRegion": "us-east-1",
            "requestParameters": params,
        }).to_string(),
    }]}})
}

/// A rig with the IAM event channel and a sweep every 10 minutes: only events make IAM
/// changes seen within a test.
fn rig_with_slow_sweeps() -> Rig {
    rig_with(
        "1m",
        None,
        Some(Events {
            sweep: "10m",
            deny_receive: false,
        }),
    )
}

impl Rig {
    /// How many batches of IAM change events gatehouse has applied so far.
    fn events_applied(&self) -> usize {
        self.gatehouse
            .stderr()
            .matches("IAM change events applied")
            .count()
    }

    /// Another replica's config (`name`, listening on `port`), its `[aws]` table ending with
    /// `aws_lines`, and alice's client for it.
    fn replica(&self, name: &str, port: u16, aws_lines: &str) -> (PathBuf, SshClient) {
        let config = write_config(
            &self.scratch,
            name,
            &self.proxy.url(),
            &Settings {
                max_staleness: "1m",
                vpc_ids: vec![self.world.vpc_id.clone()],
                listen_port: port,
            },
        );
        let mut text = std::fs::read_to_string(&config).expect("config");
        text.push_str(aws_lines);
        std::fs::write(&config, text).expect("config");
        let client = SshClient::new(
            &self.topology.client,
            &self.scratch,
            addr(BASTION_CLIENT_ADDR, port),
            "alice",
            &self.alice_key.private,
        );
        (config, client)
    }

    /// Makes the bucket `gatehouse-test-shared`; returns the `[aws]` line that shares the
    /// listing in it.
    fn shared_listing_bucket(&self) -> &'static str {
        self.fixture(
            json!([{"op": "call", "service": "s3", "method": "create_bucket",
                    "args": {"Bucket": "gatehouse-test-shared"}}]),
        );
        "shared_snapshot = \"s3://gatehouse-test-shared/aws-directory.json\"\n"
    }

    /// Makes the log group `/gatehouse/test/audit`; returns a replica (as [`Rig::replica`])
    /// that ships its audit file to `stream` of it.
    fn shipping_replica(&self, name: &str, port: u16, stream: &str) -> (PathBuf, SshClient) {
        self.fixture(
            json!([{"op": "call", "service": "logs", "method": "create_log_group",
                    "args": {"logGroupName": "/gatehouse/test/audit"}}]),
        );
        self.replica(
            name,
            port,
            &format!(
                "audit_log_group = \"/gatehouse/test/audit\"\naudit_log_stream = \"{stream}\"\n"
            ),
        )
    }

    fn client(&self, user: &str, key: &Path) -> SshClient {
        SshClient::new(
            &self.topology.client,
            &self.scratch,
            addr(BASTION_CLIENT_ADDR, SSH_PORT),
            user,
            key,
        )
    }

    fn alice(&self) -> SshClient {
        self.client("alice", &self.alice_key.private)
    }

    fn fixture(&self, ops: Value) -> Vec<Value> {
        fixture(&self.topology, &self.moto, ops)
    }

    fn audit(&self) -> Vec<Value> {
        read_audit(&self.scratch.join("gatehouse.audit.jsonl"))
    }

    /// Waits (bounded) for an audit line matching `pred`.
    fn wait_audit(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.audit().into_iter().find(|l| pred(l)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no audit line for {what} within {timeout:?}; audit log:\n{}\n{}",
                self.audit()
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.gatehouse.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until gatehouse's refresh has picked up every change made so far.
    #[track_caller]
    fn let_refresh_run(&self) {
        wait_for_refreshes(&self.gatehouse);
    }
}

/// `ssh -W target bastion` (stdin closed at once): on success stdout begins with the
/// target's SSH banner; on refusal stderr has the bastion's reason.
pub(super) fn dash_w(client: &SshClient, target: &str) -> CmdOutput {
    let mut ssh = client.ssh();
    ssh.args(["-o", "LogLevel=INFO", "-W", target, "bastion"]);
    run_with_timeout(ssh, CMD_TIMEOUT)
}

#[track_caller]
fn assert_reaches_sshd(client: &SshClient, target: &str) {
    let out = dash_w(client, target);
    assert!(
        out.stdout_str().starts_with("SSH-2.0-"),
        "expected the target's SSH banner through -W {target}: {out}"
    );
}

#[track_caller]
fn assert_refused(client: &SshClient, target: &str, reason: &str) {
    let out = dash_w(client, target);
    assert!(
        !out.stdout_str().starts_with("SSH-2.0-") && out.stderr_str().contains(reason),
        "expected -W {target} to be refused with {reason:?}: {out}"
    );
}

#[track_caller]
fn assert_login_refused(client: &SshClient) {
    let out = dash_w(client, &format!("jupyter:{SSH_PORT}"));
    out.expect_failure("login that must be refused");
    assert!(
        out.stderr_str().contains("Permission denied (publickey)"),
        "{out}"
    );
}

/// A tunnel held open: `ssh -N -L` in the client namespace plus one TCP connection through
/// it to the echo server, proven alive by a round trip.
struct OpenTunnel {
    ssh: Daemon,
    stream: TcpStream,
}

impl OpenTunnel {
    fn open(client: &SshClient, scratch: &Scratch, name: &str, local: u16, target: &str) -> Self {
        let ssh = client.local_forward(scratch, name, local, target, ECHO_PORT, "bastion");
        let mut stream = client
            .netns()
            .connect(
                SocketAddr::from(([127, 0, 0, 1], local)),
                Duration::from_secs(5),
            )
            .expect("connect to the local forward");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream
            .write_all(b"ping\n")
            .expect("write through the tunnel");
        let mut buf = [0u8; 5];
        stream
            .read_exact(&mut buf)
            .expect("echo through the tunnel");
        assert_eq!(&buf, b"ping\n");
        OpenTunnel { ssh, stream }
    }

    /// Whether the TCP connection still carries a round trip.
    fn alive(&mut self) -> bool {
        if self.stream.write_all(b"ping\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 5];
        self.stream.read_exact(&mut buf).is_ok() && &buf == b"ping\n"
    }

    /// Waits until the connection is closed (EOF or error) and returns the wall-clock time it
    /// was seen closed; panics after `timeout`.
    fn wait_closed(&mut self, timeout: Duration) -> f64 {
        self.stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 64];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return now_unix(),
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return now_unix(),
            }
            assert!(
                Instant::now() < deadline,
                "the tunnel was still open {timeout:?} later"
            );
        }
    }
}

fn rfc3339_to_unix(ts: &str) -> f64 {
    // "2026-05-01T12:34:56.789Z" -> seconds; enough for latency differences within a test.
    let out = Command::new("date")
        .args(["-u", "-d", ts, "+%s.%N"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0)
}

#[test]
fn aws_tagged_user_reaches_tagged_host_and_the_rest_is_refused() {
    let rig = rig("1m");
    let bob = KeyPair::ed25519(&rig.scratch, "bob_key");
    let carol = KeyPair::ed25519(&rig.scratch, "carol_key");
    let dave = KeyPair::ed25519(&rig.scratch, "dave_key");
    let jane = KeyPair::ed25519(&rig.scratch, "jane_key");
    let subnet = rig.world.subnet_id.clone();
    let r = rig.fixture(json!([
        {"op": "user", "name": "bob", "keys": [bob.public_line.trim()]},
        {"op": "user", "name": "carol", "groups": "research", "keys": [carol.public_line.trim()]},
        {"op": "user", "name": "dave", "iam_groups": ["gatehouse-ops"], "keys": [dave.public_line.trim()]},
        {"op": "user", "name": "jane@example.org", "groups": "research",
         "keys": ["ssh-dss AAAAB3NzaC1kc3MAAACBAP not-a-usable-key", jane.public_line.trim()]},
        {"op": "instance", "subnet_id": subnet, "ip": PRIVATE_ADDR_2.to_string(),
         "tags": {"Name": "stopped-box", "gatehouse:groups": "research"}},
        {"op": "instance", "subnet_id": subnet, "ip": "10.0.3.150",
         "tags": {"Name": "twin", "gatehouse:groups": "research"}},
        {"op": "instance", "subnet_id": subnet, "ip": "10.0.3.151",
         "tags": {"Name": "twin", "gatehouse:groups": "research"}},
        {"op": "instance", "subnet_id": subnet, "ip": "10.0.3.160",
         "tags": {"Name": "gone-box", "gatehouse:groups": "research"}},
        {"op": "instance", "tags": {"Name": "other-vpc", "gatehouse:groups": "research"}},
    ]));
    let carol_key_id = r[1]["key_ids"][0]
        .as_str()
        .expect("carol's key id")
        .to_owned();
    let stopped = r[4]["id"].as_str().expect("id").to_owned();
    let twins = [
        r[5]["id"].as_str().expect("id").to_owned(),
        r[6]["id"].as_str().expect("id").to_owned(),
    ];
    let gone = r[7]["id"].as_str().expect("id").to_owned();
    let jupyter_dns = format!(
        "ip-{}.ec2.internal",
        PRIVATE_ADDR.to_string().replace('.', "-")
    );
    rig.fixture(json!([
        {"op": "deactivate_key", "user": "carol", "key_id": carol_key_id},
        {"op": "stop", "id": stopped},
        {"op": "terminate", "id": gone},
    ]));
    rig.let_refresh_run();

    // alice, tagged research, reaches the tagged host by every name it has.
    let alice = rig.alice();
    let mut ssh = alice.ssh();
    ssh.args(["-J", "bastion", &format!("{TEST_USER}@jupyter"), "id -un"]);
    let out = run_with_timeout(ssh, CMD_TIMEOUT);
    out.expect_success("ssh -J bastion ghtest@jupyter");
    assert_eq!(out.stdout_str().trim(), TEST_USER);
    for target in [
        rig.world.jupyter_id.clone(),
        PRIVATE_ADDR.to_string(),
        jupyter_dns.clone(),
    ] {
        assert_reaches_sshd(&alice, &format!("{target}:{SSH_PORT}"));
    }
    // Wrong port, stopped and terminated instances, an instance outside the VPC, duplicates.
    assert_refused(&alice, "jupyter:2222", "port 2222 is not open");
    assert_refused(
        &alice,
        &format!("stopped-box:{SSH_PORT}"),
        "is not a host this bastion forwards to",
    );
    assert_refused(
        &alice,
        &format!("{PRIVATE_ADDR_2}:{SSH_PORT}"),
        "is not a host this bastion forwards to",
    );
    assert_refused(
        &alice,
        "gone-box:22",
        "is not a host this bastion forwards to",
    );
    assert_refused(
        &alice,
        "other-vpc:22",
        "is not a host this bastion forwards to",
    );
    let out = dash_w(&alice, "twin:22");
    assert!(
        out.stderr_str().contains("is ambiguous")
            && twins
                .iter()
                .all(|id| out.stderr_str().contains(id.as_str())),
        "{out}"
    );

    // An untagged user and an inactive key: not logged in at all.
    assert_login_refused(&rig.client("bob", &bob.private));
    assert_login_refused(&rig.client("carol", &carol.private));
    // dave is in group ops through the IAM group gatehouse-ops: logged in, but not to jupyter.
    assert_refused(
        &rig.client("dave", &dave.private),
        "jupyter:22",
        "'jupyter' is not a host this bastion forwards to",
    );
    // jane@example.org logs in as jane~40example.org; her bad key was skipped, not her.
    let jane_client = rig.client("jane~40example.org", &jane.private);
    assert_reaches_sshd(&jane_client, "jupyter:22");
    let log = rig.gatehouse.stderr();
    assert!(
        log.contains("IAM user jane@example.org key") && log.contains("key skipped"),
        "a warning names the user and the key id:\n{log}"
    );

    let auth = rig
        .audit()
        .into_iter()
        .find(|l| l["event"] == "auth.failure" && l["user"] == "carol")
        .expect("carol's failure is audited");
    assert_eq!(auth["reason"], "unknown_user", "{auth}");

    // `gatehouse hosts` works in AWS mode (one listing), also by IAM name.
    let mut cmd = gatehouse_cmd(&rig.topology);
    cmd.arg("hosts")
        .arg("--config")
        .arg(&rig.config)
        .args(["--user", "jane@example.org"]);
    let out = run_with_timeout(cmd, CMD_TIMEOUT);
    out.expect_success("gatehouse hosts in AWS mode");
    let text = out.stdout_str();
    assert!(
        text.starts_with("jane~40example.org (groups: research)"),
        "{out}"
    );
    assert!(text.contains(&rig.world.jupyter_id), "{out}");
    assert!(!text.contains(&stopped), "{out}");
}

#[test]
fn aws_revocation_closes_sessions_and_tunnels_within_one_refresh() {
    let rig = rig("1m");
    let _echo = TcpServer::echo(&rig.topology.private, addr(PRIVATE_ADDR, ECHO_PORT));
    let _echo2 = TcpServer::echo(&rig.topology.private, addr(PRIVATE_ADDR_2, ECHO_PORT));
    let erin = KeyPair::ed25519(&rig.scratch, "erin_key");
    let r = rig.fixture(json!([
        {"op": "user", "name": "erin", "groups": "research", "keys": [erin.public_line.trim()]},
        {"op": "instance", "subnet_id": rig.world.subnet_id, "ip": PRIVATE_ADDR_2.to_string(),
         "tags": {"Name": "sinkbox", "gatehouse:groups": "research",
                  "gatehouse:ports": ECHO_PORT.to_string()}},
    ]));
    let sinkbox = r[1]["id"].as_str().expect("id").to_owned();
    rig.let_refresh_run();

    // alice holds a tunnel to jupyter, erin one to sinkbox.
    let alice = rig.alice();
    let mut alice_tunnel = OpenTunnel::open(&alice, &rig.scratch, "alice_tunnel", 15000, "jupyter");
    let erin_client = rig.client("erin", &erin.private);
    let mut erin_tunnel =
        OpenTunnel::open(&erin_client, &rig.scratch, "erin_tunnel", 15001, "sinkbox");

    // Deactivate alice's key: her session is cut within one refresh interval.
    let r = rig.fixture(json!([
        {"op": "deactivate_key", "user": "alice", "key_id": rig.world.alice_key_id},
    ]));
    let deactivated_at = r[0]["at"].as_f64().expect("time");
    let closed_at = alice_tunnel.wait_closed(REFRESH + SLACK);
    let revoked = rig.wait_audit("session.revoked for alice", SLACK, |l| {
        l["event"] == "session.revoked" && l["user"] == "alice"
    });
    let audit_at = rfc3339_to_unix(revoked["ts"].as_str().unwrap_or(""));
    eprintln!(
        "revocation latency (key deactivated -> audit line): {:.3}s; -> client saw the tunnel close: {:.3}s",
        audit_at - deactivated_at,
        closed_at - deactivated_at
    );
    assert!(alice_tunnel.ssh.wait_exit(SLACK).is_some(), "ssh -N exits");
    assert_login_refused(&alice);
    // erin was not touched.
    assert!(
        erin_tunnel.alive(),
        "erin's tunnel survives alice's revocation"
    );

    // Remove sinkbox's groups tag: erin's tunnel to it closes, her session stays.
    let r = rig.fixture(json!([{"op": "untag", "id": sinkbox, "key": "gatehouse:groups"}]));
    let untagged_at = r[0]["at"].as_f64().expect("time");
    let closed_at = erin_tunnel.wait_closed(REFRESH + SLACK);
    rig.wait_audit("tunnel.revoked for erin", SLACK, |l| {
        l["event"] == "tunnel.revoked" && l["user"] == "erin"
    });
    eprintln!(
        "tag removal -> tunnel closed at the client: {:.3}s",
        closed_at - untagged_at
    );
    assert!(
        erin_tunnel.ssh.is_running(),
        "erin's session outlives the tunnel\n{}",
        erin_tunnel.ssh.logs()
    );
    assert_refused(
        &erin_client,
        "sinkbox:9000",
        "is not a host this bastion forwards to",
    );
}

#[test]
fn aws_an_iam_change_event_revokes_and_grants_long_before_the_sweep() {
    // IAM is swept every 10 minutes: only the event can make these changes seen in seconds.
    let mut rig = rig_with(
        "1m",
        None,
        Some(Events {
            sweep: "10m",
            deny_receive: false,
        }),
    );
    let _echo = TcpServer::echo(&rig.topology.private, addr(PRIVATE_ADDR, ECHO_PORT));
    let alice = rig.alice();
    assert_reaches_sshd(&alice, &format!("jupyter:{SSH_PORT}"));
    let mut tunnel = OpenTunnel::open(&alice, &rig.scratch, "alice_tunnel", 15000, "jupyter");

    // The key is deactivated, and no event says so (yet): the sweep alone would take minutes,
    // so alice is still admitted and her tunnel stays open. (This is what fails without
    // events, and proves the revocation below is the event's doing.)
    let key = &rig.world.alice_key_id;
    rig.fixture(json!([{"op": "deactivate_key", "user": "alice", "key_id": key}]));
    std::thread::sleep(REFRESH * 3);
    assert_reaches_sshd(&alice, &format!("jupyter:{SSH_PORT}"));
    assert!(tunnel.alive(), "the tunnel was cut before any event");

    // The event CloudTrail would deliver: the tunnel closes and logins are refused, within
    // seconds.
    // (Timed from before the fixture starts: an upper bound, Python's start included.)
    let sent = now_unix();
    let r = rig.fixture(json!([iam_event(
        "UpdateSSHPublicKey",
        json!({"userName": "alice", "sSHPublicKeyId": key, "status": "Inactive"}),
    )]));
    assert_eq!(r[0]["FailedEntryCount"], 0, "{r:?}");
    let closed_at = tunnel.wait_closed(SLACK);
    let revoked = rig.wait_audit("session.revoked for alice", SLACK, |l| {
        l["event"] == "session.revoked" && l["user"] == "alice"
    });
    let audit_at = rfc3339_to_unix(revoked["ts"].as_str().unwrap_or(""));
    eprintln!(
        "event-driven revocation: event sent -> audit line {:.3}s, -> tunnel closed at the \
         client {:.3}s",
        audit_at - sent,
        closed_at - sent
    );
    assert_login_refused(&alice);
    rig.gatehouse
        .wait_for_stderr("IAM change events applied", SLACK);

    // An event grants as fast: the key active again, and said so.
    rig.fixture(json!([
        {"op": "call", "service": "iam", "method": "update_ssh_public_key", "args": {
            "UserName": "alice", "SSHPublicKeyId": key, "Status": "Active"}},
        iam_event("UpdateSSHPublicKey",
                  json!({"userName": "alice", "sSHPublicKeyId": key, "status": "Active"})),
    ]));
    // Waited for in the daemon's log, then tried once: failed logins while waiting would
    // earn the client's address a penalty (5 of them in a row, under a loaded machine).
    let applied = |text: &str| text.matches("IAM change events applied").count();
    let deadline = Instant::now() + SLACK;
    while applied(&rig.gatehouse.stderr()) < 2 {
        assert!(
            Instant::now() < deadline,
            "the granting event not applied within {SLACK:?}\n{}",
            rig.gatehouse.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // (The line is logged just before the listing is published: up to three tries.)
    for attempt in 1..=3 {
        let out = dash_w(&alice, &format!("jupyter:{SSH_PORT}"));
        if out.stdout_str().starts_with("SSH-2.0-") {
            break;
        }
        assert!(
            attempt < 3,
            "alice not admitted again once the event was applied: {out}\n{}",
            rig.gatehouse.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Every event is read by every replica: the daemon never deleted a message.
    let r = rig.fixture(
        json!([{"op": "call", "service": "sqs", "method": "get_queue_attributes",
        "args": {"QueueUrl": format!("http://127.0.0.1/123456789012/{EVENT_QUEUE}"),
                 "AttributeNames": ["ApproximateNumberOfMessages"]}}]),
    );
    assert_eq!(
        r[0]["Attributes"]["ApproximateNumberOfMessages"], "2",
        "both events stay on the queue for the other replicas: {r:?}"
    );
    let log = rig.gatehouse.logs();
    assert!(!log.contains("cannot read the IAM event queue"), "{log}");
    assert!(!log.contains("sweeping IAM"), "{log}");
}

/// IAM user names are case-insensitive, and an event carries the name as its caller typed it
/// (`aws iam tag-user --user-name ALICE` changes alice). The re-read takes IAM's spelling:
/// no second identity `ALICE` with alice's keys appears, and a later revocation of alice
/// (spelled either way) leaves nothing behind. (moto is made case-insensitive as IAM is, in
/// `py/moto_fixes.py`.)
#[test]
fn aws_an_event_spelling_a_user_in_another_case_changes_that_user_and_makes_no_other() {
    let rig = rig_with_slow_sweeps();
    let applied = || rig.events_applied();
    let wait_applied = |before: usize| {
        wait_until(SLACK, "the event is applied", || applied() > before);
    };
    let as_upper = rig.client("ALICE", &rig.alice_key.private);
    let before = applied();
    rig.fixture(json!([iam_event("TagUser", json!({"userName": "ALICE"}))]));
    wait_applied(before);
    assert_login_refused(&as_upper);
    assert_reaches_sshd(&rig.alice(), &format!("jupyter:{SSH_PORT}"));

    // alice's key deactivated; the event spells her name as IAM lists it.
    let key = &rig.world.alice_key_id;
    rig.fixture(json!([{"op": "deactivate_key", "user": "alice", "key_id": key}]));
    let before = applied();
    rig.fixture(json!([iam_event(
        "UpdateSSHPublicKey",
        json!({"userName": "alice", "sSHPublicKeyId": key, "status": "Inactive"}),
    )]));
    wait_applied(before);
    assert_login_refused(&rig.alice());
    assert_login_refused(&as_upper);
    rig.gatehouse.assert_no_panic();
}

/// A sender other than the rule (any account principal allowed `sqs:SendMessage`, which the
/// queue policy gatehouse-vpc writes now denies) keeps a standing pool of messages on the
/// queue. moto returns the oldest ten to every receive, so a real revocation behind them would
/// never be shown before it expired; the daemon reads a full batch as a backlog it cannot
/// drain, and sweeps IAM, so the revocation still lands within a sweep.
#[test]
fn aws_a_standing_pool_of_queue_messages_cannot_hide_a_revocation() {
    let rig = rig_with_slow_sweeps();
    let applied = || rig.events_applied();
    let queue_url = format!("http://127.0.0.1/123456789012/{EVENT_QUEUE}");
    let forged: Vec<Value> = (0..15)
        .map(|i| {
            let body = json!({"detail": {"eventSource": "iam.amazonaws.com",
                "eventName": "TagUser", "requestParameters": {"userName": format!("nobody{i}")}}});
            json!({"op": "call", "service": "sqs", "method": "send_message",
                   "args": {"QueueUrl": queue_url, "MessageBody": body.to_string()}})
        })
        .collect();
    let before = applied();
    rig.fixture(Value::Array(forged));
    // The pool is read (its messages name nobody: nothing changes); from now on every
    // receive shows the same ten.
    wait_until(SLACK * 2, "the pool is read", || applied() > before);
    assert_reaches_sshd(&rig.alice(), &format!("jupyter:{SSH_PORT}"));

    // The revocation, and its real event behind the pool.
    let key = &rig.world.alice_key_id;
    rig.fixture(json!([
        {"op": "deactivate_key", "user": "alice", "key_id": key},
        iam_event("UpdateSSHPublicKey",
                  json!({"userName": "alice", "sSHPublicKeyId": key, "status": "Inactive"})),
    ]));
    let deadline = Instant::now() + SLACK * 3;
    loop {
        let out = dash_w(&rig.alice(), &format!("jupyter:{SSH_PORT}"));
        if out.stderr_str().contains("Permission denied (publickey)") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alice's key still works {:?} after its revocation, behind a pool of queue \
             messages: {out}\n{}",
            SLACK * 3,
            rig.gatehouse.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        rig.gatehouse
            .stderr()
            .contains("the IAM event queue holds more messages than one receive shows"),
        "{}",
        rig.gatehouse.logs()
    );
    rig.gatehouse.assert_no_panic();
}

#[test]
fn aws_an_unreadable_event_queue_falls_back_to_sweeping_every_refresh() {
    // The role lacks sqs:ReceiveMessage: no event arrives, so IAM is swept every
    // refresh_interval as if there were no events, not every 10 minutes.
    let mut rig = rig_with(
        "1m",
        None,
        Some(Events {
            sweep: "10m",
            deny_receive: true,
        }),
    );
    let log = rig
        .gatehouse
        .wait_for_stderr("cannot read the IAM event queue", SLACK);
    assert!(log.contains("sqs:ReceiveMessage"), "{log}");
    let alice = rig.alice();
    assert_reaches_sshd(&alice, &format!("jupyter:{SSH_PORT}"));
    let key = &rig.world.alice_key_id;
    rig.fixture(json!([{"op": "deactivate_key", "user": "alice", "key_id": key}]));
    let deadline = Instant::now() + REFRESH * 2 + SLACK;
    loop {
        let out = dash_w(&alice, &format!("jupyter:{SSH_PORT}"));
        if !out.stdout_str().starts_with("SSH-2.0-") {
            // Refused at login, or (the sweep landing during this login) disconnected by the
            // revocation right after it: the key no longer works either way.
            assert!(
                out.stderr_str().contains("Permission denied")
                    || out.stderr_str().contains("revoked: key"),
                "refused for another reason: {out}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a key deactivated with the event queue unreadable still works after {:?}:\n{}",
            REFRESH * 2 + SLACK,
            rig.gatehouse.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The queue readable again: the reader says so.
    rig.proxy
        .control("/__proxy/allow?action=sqs:ReceiveMessage");
    // (The first receive that succeeds is a long poll of an empty queue: it answers after
    // its 20 s wait.)
    rig.gatehouse
        .wait_for_stderr("the IAM event queue answers again", Duration::from_secs(40));
}

#[test]
fn aws_a_new_replica_serves_from_the_fleets_shared_listing_while_iam_is_down() {
    let rig = rig("1m");
    let shared = rig.shared_listing_bucket();
    let replica = |name: &str, port: u16| rig.replica(name, port, shared);
    // The first replica lists AWS and shares its listing.
    let (first_config, _) = replica("first", 2201);
    let first = start_gatehouse(&rig.topology, &rig.scratch, &first_config, "first");
    let deadline = Instant::now() + SLACK;
    let shared = loop {
        let r = rig.fixture(
            json!([{"op": "call", "service": "s3", "method": "list_objects_v2",
                                    "args": {"Bucket": "gatehouse-test-shared"}}]),
        );
        if r[0]["KeyCount"] == 1 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no shared listing within {SLACK:?}: {r:?}\n{}",
            first.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(shared[0]["Contents"][0]["Key"], "aws-directory.json");

    // IAM refuses the account listing from now on: a replica starting without the shared
    // listing could not serve (tests/aws.rs's outage tests show that). This one serves at once
    // from the fleet's listing, with the same host key (SSM still answers).
    rig.proxy
        .control("/__proxy/deny?action=iam:GetAccountAuthorizationDetails");
    let (second_config, second_client) = replica("second", 2202);
    let started = Instant::now();
    let mut second = start_gatehouse(&rig.topology, &rig.scratch, &second_config, "second");
    let ready = started.elapsed();
    let log = second.logs();
    assert!(
        log.contains("the fleet's shared listing may be served"),
        "{log}"
    );
    assert!(!log.contains("first AWS listing failed"), "{log}");
    eprintln!("new replica ready from the shared listing in {ready:?} with IAM refusing");
    assert_reaches_sshd(&second_client, &format!("jupyter:{SSH_PORT}"));
    // It sweeps at once and keeps what it has while IAM refuses.
    second.wait_for_stderr("AWS refresh failed", SLACK);
    assert_reaches_sshd(&second_client, &format!("jupyter:{SSH_PORT}"));
    rig.proxy
        .control("/__proxy/allow?action=iam:GetAccountAuthorizationDetails");
}

/// The review's attack on the shared listing: someone who may write the stack's bucket (an
/// account-wide `s3:PutObject`), but does not hold the fleet's host key, rewrites the listing
/// with their own key for alice and makes it the youngest. A new replica, starting while IAM
/// refuses, must not admit them as alice: it refuses the listing with the reason, waits for
/// IAM, and then admits alice's real key and refuses the attacker's.
#[test]
fn aws_a_shared_listing_the_fleet_did_not_sign_admits_nobody() {
    let rig = rig("1m");
    let shared = rig.shared_listing_bucket();
    let (first_config, _) = rig.replica("first", 2201, shared);
    let first = start_gatehouse(&rig.topology, &rig.scratch, &first_config, "first");
    let get = json!([{"op": "call", "service": "s3", "method": "get_object",
                      "args": {"Bucket": "gatehouse-test-shared", "Key": "aws-directory.json"},
                      "may_fail": true}]);
    let mut object = None;
    wait_until(SLACK, "the first replica shares its listing", || {
        let r = rig.fixture(get.clone());
        object = r[0]["Body"].as_str().map(str::to_owned);
        object.is_some()
    });
    let object = object.expect("the shared listing");
    // The first replica shares again after each sweep: it stops before the forgery is put,
    // or it could overwrite it (seen once in CI).
    drop(first);

    // The forgery: alice's keys replaced with the attacker's, listed now (the youngest).
    let attacker = KeyPair::ed25519(&rig.scratch, "attacker");
    let forge = |listing: &mut Value| {
        let now_ms = (now_unix() * 1000.0) as u64;
        listing["listed_at_ms"] = json!(now_ms);
        for identity in listing["identities"].as_array_mut().expect("identities") {
            if identity["name"] == "alice" {
                identity["keys"] = json!([attacker.public_line]);
            }
        }
    };
    let mut forged: Value = serde_json::from_str(&object).expect("the listing is JSON");
    match forged["listing"].as_str().map(str::to_owned) {
        // Signed: the listing inside is forged, and signed again with the attacker's own key
        // in the listing's namespace (ssh-keygen -Y sign, as the format allows anyone to).
        Some(inner) => {
            let mut listing: Value = serde_json::from_str(&inner).expect("listing");
            forge(&mut listing);
            let text = listing.to_string();
            let message = rig.scratch.write("forged-listing", text.as_bytes());
            let mut sign = Command::new("ssh-keygen");
            sign.args(["-Y", "sign", "-n", "listing@gatehouse", "-f"])
                .arg(&attacker.private)
                .arg(&message);
            run_with_timeout(sign, CMD_TIMEOUT).expect_success("ssh-keygen -Y sign");
            let mut sig = message.into_os_string();
            sig.push(".sig");
            forged["listing"] = json!(text);
            forged["signature"] = json!(std::fs::read_to_string(&sig).expect("signature"));
        }
        // Unsigned (the format before signing): the object itself.
        None => forge(&mut forged),
    }
    rig.fixture(
        json!([{"op": "call", "service": "s3", "method": "put_object",
        "args": {"Bucket": "gatehouse-test-shared", "Key": "aws-directory.json",
                 "Body": forged.to_string()}}]),
    );

    rig.proxy
        .control("/__proxy/deny?action=iam:GetAccountAuthorizationDetails");
    let (second_config, second_alice) = rig.replica("second", 2202, shared);
    let mut cmd = gatehouse_cmd(&rig.topology);
    cmd.arg("serve").arg("--config").arg(&second_config);
    let mut second = Daemon::spawn("second", cmd, &rig.scratch);
    wait_until(
        START_TIMEOUT,
        "the second replica decides on the listing",
        || {
            let log = second.stderr();
            log.contains("gatehouse listening")
                || log.contains("not using the fleet's shared listing")
        },
    );
    let as_attacker = SshClient::new(
        &rig.topology.client,
        &rig.scratch,
        addr(BASTION_CLIENT_ADDR, 2202),
        "alice",
        &attacker.private,
    );
    let out = dash_w(&as_attacker, &format!("jupyter:{SSH_PORT}"));
    assert!(
        !out.stdout_str().starts_with("SSH-2.0-"),
        "the attacker's key logged in as alice through a forged shared listing: {out}\n{}",
        second.logs()
    );
    let log = second.stderr();
    assert!(
        log.contains("not using the fleet's shared listing")
            && log.contains("does not verify with this bastion's host key"),
        "{}",
        second.logs()
    );
    assert!(!log.contains("gatehouse listening"), "{}", second.logs());

    // IAM answers again: the replica lists it and serves the truth.
    rig.proxy
        .control("/__proxy/allow?action=iam:GetAccountAuthorizationDetails");
    second.wait_for_stderr("gatehouse listening", START_TIMEOUT);
    assert_login_refused(&as_attacker);
    assert_reaches_sshd(&second_alice, &format!("jupyter:{SSH_PORT}"));
    second.assert_no_panic();
}

/// Every message of the audit stream `stream` of the test's log group in moto.
fn shipped_audit(rig: &Rig, stream: &str) -> Vec<String> {
    let r = rig.fixture(
        json!([{"op": "call", "service": "logs", "method": "get_log_events",
        "args": {"logGroupName": "/gatehouse/test/audit", "logStreamName": stream,
                 "startFromHead": true, "limit": 10000}}]),
    );
    r[0]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["message"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// An audit file written over days (a day-long CloudWatch outage, a lost position, or shipping
/// turned on over an old file): CloudWatch rejects a batch spanning more than 24 hours whole
/// (moto made to, as AWS does, in `py/moto_fixes.py`), so every batch spans less; a line
/// older than CloudWatch takes (14 days) is never sent, and the log says so.
#[test]
fn aws_audit_lines_written_over_days_are_shipped_in_batches_cloudwatch_takes() {
    let rig = rig("1m");
    let (config, _) = rig.shipping_replica("spanning", 2205, "replica-2");
    let now = SystemTime::now();
    let line = |days_ago: f64, n: &str| {
        let at = now - Duration::from_secs_f64(days_ago * 86_400.0);
        json!({"ts": humantime::format_rfc3339_millis(at).to_string(), "event": "test.line",
               "n": n})
        .to_string()
    };
    let lines = [
        line(20.0, "too-old"),
        line(3.0, "a"),
        line(2.5, "b"),
        line(1.5, "c"),
        line(0.5, "d"),
    ];
    std::fs::write(
        rig.scratch.join("spanning.audit.jsonl"),
        lines.join("\n") + "\n",
    )
    .expect("the audit file");
    let daemon = start_gatehouse(&rig.topology, &rig.scratch, &config, "spanning");
    let mut shipped = Vec::new();
    wait_until(SLACK * 3, "every shippable line in the stream", || {
        shipped = shipped_audit(&rig, "replica-2");
        lines[1..].iter().all(|l| shipped.contains(l))
    });
    assert!(!shipped.contains(&lines[0]), "{shipped:?}");
    let log = daemon.stderr();
    assert!(
        log.contains("audit lines not shipped") && log.contains("too_old=1"),
        "{}",
        daemon.logs()
    );
    assert!(
        !log.contains("cannot ship audit lines"),
        "{}",
        daemon.logs()
    );
    daemon.assert_no_panic();
}

#[test]
fn aws_audit_lines_reach_cloudwatch_logs_and_none_is_lost_across_kill_9() {
    let rig = rig("1m");
    let (config, client) = rig.shipping_replica("shipping", 2204, "replica-1");
    let audit_file = rig.scratch.join("shipping.audit.jsonl");
    let written = || -> Vec<String> {
        std::fs::read_to_string(&audit_file)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let login_twice = || {
        for _ in 0..2 {
            assert_reaches_sshd(&client, &format!("jupyter:{SSH_PORT}"));
        }
    };
    // Waits until the stream holds every line of the audit file; returns how long after the
    // last line was written that was.
    let wait_shipped = |what: &str| -> Duration {
        let lines = written();
        let started = Instant::now();
        let deadline = started + SLACK * 2;
        loop {
            let shipped = shipped_audit(&rig, "replica-1");
            if lines.iter().all(|l| shipped.contains(l)) {
                return started.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {} of {} audit lines shipped within {:?}",
                lines.iter().filter(|l| shipped.contains(l)).count(),
                lines.len(),
                SLACK * 2
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let mut daemon = start_gatehouse(&rig.topology, &rig.scratch, &config, "shipping");
    login_twice();
    let delay = wait_shipped("while CloudWatch answers");
    eprintln!(
        "audit shipping: {} lines in the stream {delay:?} after the test saw them written",
        written().len()
    );

    // CloudWatch refuses: lines wait in the file; the daemon dies by kill -9 with lines
    // unshipped; the restart ships them.
    rig.proxy.control("/__proxy/deny?action=logs:PutLogEvents");
    login_twice();
    daemon.wait_for_stderr("cannot ship audit lines to CloudWatch Logs", SLACK);
    let before_kill = written().len();
    daemon.kill();
    rig.proxy.control("/__proxy/allow?action=logs:PutLogEvents");
    let shipped = shipped_audit(&rig, "replica-1");
    let unshipped = written().iter().filter(|l| !shipped.contains(l)).count();
    assert!(
        unshipped >= 4,
        "lines left unshipped at the kill: {unshipped}"
    );
    let mut daemon = start_gatehouse(&rig.topology, &rig.scratch, &config, "shipping");
    let delay = wait_shipped("after kill -9 and a restart");
    eprintln!(
        "after kill -9: {unshipped} unshipped lines of {before_kill} in the stream {delay:?} \
         after the restart's listing"
    );
    // And once more with nothing pending: a kill -9 after the position was saved ships no
    // line twice.
    login_twice();
    wait_shipped("after the restart");
    std::thread::sleep(ship_poll());
    daemon.kill();
    let _daemon = start_gatehouse(&rig.topology, &rig.scratch, &config, "shipping");
    login_twice();
    wait_shipped("after the second restart");
    let lines = written();
    let shipped = shipped_audit(&rig, "replica-1");
    let twice: Vec<&String> = lines
        .iter()
        .filter(|l| shipped.iter().filter(|s| s == l).count() > 1)
        .collect();
    assert!(twice.is_empty(), "lines shipped twice: {twice:?}");
    assert_eq!(
        shipped.len(),
        lines.len(),
        "the stream holds exactly the file's lines"
    );
}

/// How often the shipper looks at the file.
fn ship_poll() -> Duration {
    gatehouse_aws::ship::POLL * 2
}

#[test]
fn aws_outage_serves_cached_users_until_max_staleness_then_recovers() {
    // moto seeded, so that a restarted (empty) moto given the same world hands out the same
    // VPC id, which the config lists.
    const SEED: u64 = 4242;
    let mut rig = rig_seeded("6s", Some(SEED));
    // With a health endpoint: it says when this bastion cannot admit new logins.
    rig.gatehouse.terminate(Duration::from_secs(10));
    let health_at = addr(BASTION_CLIENT_ADDR, 8080);
    let text = std::fs::read_to_string(&rig.config)
        .expect("config")
        .replacen(
            "[server]\n",
            &format!("[server]\nhealth_listen = \"{health_at}\"\n"),
            1,
        );
    std::fs::write(&rig.config, text).expect("config");
    rig.gatehouse = start_gatehouse(&rig.topology, &rig.scratch, &rig.config, "gatehouse-h");
    let health = || crate::bastion::health(&rig.topology, health_at);
    assert!(health().ends_with("\r\n\r\nserving\n"), "{}", health());
    let alice = rig.alice();
    assert_reaches_sshd(&alice, "jupyter:22");

    // Stop moto: the proxy's upstream is gone, AWS is unreachable.
    let stopped_at = Instant::now();
    rig.moto.stop();
    assert_reaches_sshd(&alice, "jupyter:22");
    rig.gatehouse
        .wait_for_stderr("AWS refresh failed", Duration::from_secs(10));
    assert_reaches_sshd(&alice, "jupyter:22");
    rig.gatehouse
        .wait_for_stderr("AWS directory is stale", Duration::from_secs(15));
    let stale_after = stopped_at.elapsed();
    assert!(
        stale_after >= Duration::from_secs(4),
        "stale after only {stale_after:?}"
    );
    assert_login_refused(&alice);
    rig.wait_audit("auth.failure directory_stale", SLACK, |l| {
        l["event"] == "auth.failure" && l["reason"] == "directory_stale"
    });
    // The stale directory has a line of its own (the stack's "directory stale" alarm counts
    // them), whether or not anyone tries to log in.
    // Looked at every 5 s.
    rig.wait_audit("directory.stale", Duration::from_secs(8), |l| {
        l["event"] == "directory.stale" && l["age_s"].as_u64().is_some_and(|a| a >= 6)
    });
    // Stale is not dead: the health check keeps the replica in the balancer (and out of an
    // Auto Scaling group's replacement), saying why new logins are refused.
    let answer = health();
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\n")
            && answer.ends_with("directory stale: new logins are refused\n"),
        "{answer:?}"
    );

    // Restart moto (empty: re-create the world) and point the proxy at it.
    let moto = Moto::start_in(&rig.topology.bastion);
    fixture(&rig.topology, &moto, json!([{"op": "seed", "value": SEED}]));
    let world = standard_world(&rig.topology, &moto, &rig.alice_key);
    assert_eq!(
        world.vpc_id, rig.world.vpc_id,
        "the seeded moto repeats its VPC id"
    );
    rig.proxy
        .control(&format!("/__proxy/upstream?port={}", moto.addr().port()));
    rig.moto = moto;
    rig.world = world;
    rig.gatehouse
        .wait_for_stderr("AWS directory is fresh again", Duration::from_secs(20));
    assert_reaches_sshd(&alice, "jupyter:22");
    assert!(health().ends_with("serving\n"), "{}", health());
    rig.wait_audit("directory.fresh", Duration::from_secs(8), |l| {
        l["event"] == "directory.fresh" && l["stale_s"].as_u64().is_some()
    });
    assert!(rig.gatehouse.is_running(), "no restart was needed");
}

/// Stale is not death: a replica behind the balancer (HAProxy, as the NLB: HTTP checks of
/// `health_listen`, PROXY v2) whose AWS reads fail past `max_staleness` stays in the pool and
/// keeps its open tunnel; new logins through the balancer are refused with the reason. With
/// the old `503 directory stale`, the balancer took it out (and an Auto Scaling group with
/// ELB health checks would have replaced it, cutting the tunnel).
#[test]
fn aws_a_stale_replica_stays_behind_the_balancer_and_keeps_its_sessions() {
    use crate::harness::haproxy::{BackendServer, BalancerConfig, Haproxy};
    let mut rig = rig("6s");
    let _echo = TcpServer::echo(&rig.topology.private, addr(PRIVATE_ADDR, ECHO_PORT));
    let replica_at = Ipv4Addr::new(127, 0, 0, 21);
    let (config, _) = rig.replica("behind", 2206, "");
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("max_staleness = \"1m\"", "max_staleness = \"6s\"")
        .replace(
            &format!("listen = [\"{}\"]", addr(BASTION_CLIENT_ADDR, 2206)),
            &format!(
                "listen = []\nproxy_listen = [\"{}\"]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
             health_listen = \"{}\"",
                addr(replica_at, 22),
                addr(replica_at, 8080)
            ),
        );
    std::fs::write(&config, text).expect("config");
    let mut replica = start_gatehouse(&rig.topology, &rig.scratch, &config, "behind");
    let haproxy = Haproxy::start(
        &rig.topology.bastion,
        &rig.scratch,
        "haproxy",
        &BalancerConfig::like_an_nlb(
            addr(BASTION_CLIENT_ADDR, 2207),
            vec![BackendServer {
                name: "r1".into(),
                addr: addr(replica_at, 22),
                check_port: 8080,
                enabled: true,
            }],
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        ),
    );
    haproxy.wait_server("r1", "up", Duration::from_secs(10), |s| s.is_up());
    let alice = SshClient::new(
        &rig.topology.client,
        &rig.scratch,
        addr(BASTION_CLIENT_ADDR, 2207),
        "alice",
        &rig.alice_key.private,
    );
    assert_reaches_sshd(&alice, &format!("jupyter:{SSH_PORT}"));
    let mut tunnel = OpenTunnel::open(&alice, &rig.scratch, "behind_tunnel", 15010, "jupyter");

    // AWS gone: the directory goes stale.
    rig.moto.stop();
    replica.wait_for_stderr("AWS directory is stale", Duration::from_secs(20));
    // A second of checks (ten) after it went stale: still up, every check passed.
    std::thread::sleep(Duration::from_secs(1));
    let stat = haproxy.server("r1");
    assert!(
        stat.is_up() && stat.check_status == "L7OK",
        "the balancer took the stale replica out: {stat:?}\n{}",
        haproxy.log()
    );
    assert!(
        tunnel.alive(),
        "the open tunnel was cut while the replica was stale"
    );
    // New logins stop, with the reason, and nothing else.
    assert_login_refused(&alice);
    let audit = read_audit(&rig.scratch.join("behind.audit.jsonl"));
    assert!(
        audit
            .iter()
            .any(|l| l["event"] == "auth.failure" && l["reason"] == "directory_stale"),
        "{audit:?}"
    );
    assert!(
        tunnel.alive(),
        "the open tunnel was cut while the replica was stale"
    );
    assert!(replica.is_running(), "{}", replica.logs());
    replica.assert_no_panic();
}

/// An IAM user's `gatehouse:expires` tag ends their access at that instant, not at the next
/// sweep: the open tunnel closes within a second or two of it, with `session.expired`, and a
/// login after it is refused.
#[test]
fn aws_an_iam_users_expires_tag_ends_access_at_that_time() {
    let rig = rig("1m");
    let _echo = TcpServer::echo(&rig.topology.private, addr(PRIVATE_ADDR, ECHO_PORT));
    let frank = KeyPair::ed25519(&rig.scratch, "frank_key");
    // Whole seconds (the tag's precision), far enough ahead to log in and open a tunnel.
    let expires_unix = now_unix().ceil() + 15.0;
    let expires = std::time::UNIX_EPOCH + Duration::from_secs_f64(expires_unix);
    let tag = humantime::format_rfc3339_seconds(expires).to_string();
    rig.fixture(json!([
        {"op": "user", "name": "frank", "groups": "research", "keys": [frank.public_line.trim()]},
        {"op": "call", "service": "iam", "method": "tag_user", "args": {
            "UserName": "frank", "Tags": [{"Key": "gatehouse:expires", "Value": tag}]}},
    ]));
    rig.let_refresh_run();
    let client = rig.client("frank", &frank.private);
    let mut tunnel = OpenTunnel::open(&client, &rig.scratch, "frank_tunnel", 15002, "jupyter");
    assert!(
        now_unix() < expires_unix,
        "the tunnel opened after the expiry: raise the margin"
    );
    let closed_at = tunnel.wait_closed(Duration::from_secs(20) + SLACK);
    let late = closed_at - expires_unix;
    eprintln!("gatehouse:expires -> tunnel closed at the client: {late:+.3}s");
    assert!(
        (-0.05..2.0).contains(&late),
        "closed {late:+.3}s from the expiry {tag}"
    );
    let expired = rig.wait_audit("session.expired for frank", SLACK, |l| {
        l["event"] == "session.expired" && l["user"] == "frank"
    });
    assert!(
        expired.to_string().contains(&tag.replace(".000", "")),
        "{expired}"
    );
    assert!(tunnel.ssh.wait_exit(SLACK).is_some(), "ssh -N exits");
    assert_login_refused(&client);
    rig.wait_audit("frank refused: access expired", SLACK, |l| {
        l["event"] == "auth.failure"
            && l["user"] == "frank"
            && l.to_string().contains("access expired at")
    });
}

#[test]
fn aws_throttling_causes_no_revocation() {
    let rig = rig("30s");
    let _echo = TcpServer::echo(&rig.topology.private, addr(PRIVATE_ADDR, ECHO_PORT));
    let alice = rig.alice();
    let mut tunnel = OpenTunnel::open(&alice, &rig.scratch, "alice_tunnel", 15000, "jupyter");

    rig.proxy.control("/__proxy/throttle?seconds=6");
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert!(tunnel.alive(), "the tunnel survives throttling");
        assert_reaches_sshd(&alice, "jupyter:22");
        std::thread::sleep(Duration::from_millis(500));
    }
    let counts = rig.proxy.control("/__proxy/counts");
    assert!(
        counts["_throttled"].as_u64().unwrap_or(0) > 0,
        "the proxy throttled: {counts}"
    );
    // Recognized as throttling, whichever listing met it: IAM answers `Throttling`, EC2
    // `RequestLimitExceeded` (one CI run saw only the instance listing run in the window).
    // And the log has no color codes (stderr is no terminal here, as under systemd).
    assert!(
        !rig.gatehouse.stderr().contains('\x1b'),
        "escape codes in the log"
    );
    let log = rig.gatehouse.stderr();
    assert!(
        log.contains("AWS refresh failed") && log.contains("(AWS is throttling: retried"),
        "{log}"
    );
    // After the throttling ends, refreshes succeed again and still nothing was revoked.
    rig.let_refresh_run();
    assert!(tunnel.alive(), "the tunnel survives the end of throttling");
    assert!(tunnel.ssh.is_running());
    let revoked: Vec<Value> = rig
        .audit()
        .into_iter()
        .filter(|l| l["event"].as_str().is_some_and(|e| e.ends_with(".revoked")))
        .collect();
    assert!(revoked.is_empty(), "{revoked:?}");
}

#[test]
fn aws_two_replicas_present_the_same_ssm_host_key() {
    let rig = rig("1m");
    // A second and a third replica on other ports, started at the same moment, on a fresh
    // parameter name: they race to create it.
    let parameter = "/gatehouse/race/host_ed25519";
    let mut replicas = Vec::new();
    for (i, port) in [(1, 2201u16), (2, 2202u16)] {
        let config = write_config(
            &rig.scratch,
            &format!("replica{i}"),
            &rig.proxy.url(),
            &Settings {
                max_staleness: "1m",
                vpc_ids: vec![rig.world.vpc_id.clone()],
                listen_port: port,
            },
        );
        let text = std::fs::read_to_string(&config)
            .expect("config")
            .replace(HOST_KEY_PARAMETER, parameter);
        std::fs::write(&config, text).expect("config");
        let mut cmd = gatehouse_cmd(&rig.topology);
        cmd.arg("serve").arg("--config").arg(&config);
        replicas.push((
            port,
            Daemon::spawn(&format!("replica{i}"), cmd, &rig.scratch),
        ));
    }
    let mut keys = Vec::new();
    for (port, daemon) in &mut replicas {
        daemon.wait_for_stderr("gatehouse listening", START_TIMEOUT);
        let mut scan = rig.topology.client.command("ssh-keyscan");
        scan.args(["-t", "ed25519", "-p", &port.to_string()])
            .arg(BASTION_CLIENT_ADDR.to_string());
        let out = run_with_timeout(scan, CMD_TIMEOUT);
        let line = out
            .stdout_str()
            .lines()
            .find(|l| l.contains("ssh-ed25519"))
            .unwrap_or_else(|| panic!("no host key from replica on {port}: {out}"))
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ");
        keys.push(line);
    }
    assert_eq!(keys[0], keys[1], "both replicas present one host key");
    let created = replicas
        .iter()
        .filter(|(_, d)| d.stderr().contains("created a new ed25519 host key in SSM"))
        .count();
    assert!(created <= 1, "at most one replica created the key");
    let stored = rig.fixture(json!([{"op": "get_parameter", "name": parameter}]));
    assert!(
        stored[0]["value"]
            .as_str()
            .is_some_and(|v| v.contains("BEGIN OPENSSH PRIVATE KEY")),
        "the key is in SSM"
    );
}

#[test]
fn aws_ssh_config_output_reaches_the_host_as_is() {
    let rig = rig("1m");
    let _echo = TcpServer::echo(&rig.topology.private, addr(PRIVATE_ADDR, ECHO_PORT));
    // known_hosts: the bastion's key (scanned) and jupyter's (the private sshd's own).
    let mut scan = rig.topology.client.command("ssh-keyscan");
    scan.args(["-t", "ed25519"])
        .arg(BASTION_CLIENT_ADDR.to_string());
    let bastion_key = run_with_timeout(scan, CMD_TIMEOUT).stdout_str();
    assert!(bastion_key.contains("ssh-ed25519"), "{bastion_key}");
    let known = format!(
        "{}jupyter {}\n",
        bastion_key,
        rig.sshd.host_key().public_line.trim()
    );
    let known_hosts = rig.scratch.write("known_hosts", known.as_bytes());

    let mut cmd = gatehouse_cmd(&rig.topology);
    cmd.arg("ssh-config")
        .arg("--config")
        .arg(&rig.config)
        .args(["--user", "alice", "--bastion"])
        .arg(format!("{BASTION_CLIENT_ADDR}:{SSH_PORT}"))
        .arg("--identity-file")
        .arg(&rig.alice_key.private)
        .arg("--known-hosts")
        .arg(&known_hosts)
        .args(["--target-user", TEST_USER]);
    let out = run_with_timeout(cmd, CMD_TIMEOUT);
    out.expect_success("gatehouse ssh-config");
    let text = out.stdout_str();
    assert!(text.contains("Host jupyter\n"), "{text}");
    assert!(text.contains("ProxyJump bastion"), "{text}");
    assert!(
        text.contains(&format!(
            "LocalForward 127.0.0.1:{ECHO_PORT} jupyter:{ECHO_PORT}"
        )),
        "{text}"
    );
    let ssh_config = rig.scratch.write("generated_ssh_config", text.as_bytes());

    // Used as-is: `ssh -F generated jupyter` goes through the bastion.
    let mut ssh = rig.topology.client.command("ssh");
    ssh.arg("-F").arg(&ssh_config).args(["jupyter", "id -un"]);
    let out = run_with_timeout(ssh, CMD_TIMEOUT);
    out.expect_success("ssh -F generated jupyter id -un");
    assert_eq!(out.stdout_str().trim(), TEST_USER);

    // And `ssh -F generated jupyter-tunnel` opens the echo port on localhost.
    let mut ssh = rig.topology.client.command("ssh");
    ssh.arg("-F").arg(&ssh_config).arg("jupyter-tunnel");
    let mut tunnel = Daemon::spawn("generated_tunnel", ssh, &rig.scratch);
    let local = SocketAddr::from(([127, 0, 0, 1], ECHO_PORT));
    tunnel.wait_for_port(&rig.topology.client, local, Duration::from_secs(30));
    let mut stream = rig
        .topology
        .client
        .connect(local, Duration::from_secs(5))
        .expect("connect to the generated LocalForward");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(b"hello\n").expect("write");
    let mut buf = [0u8; 6];
    stream.read_exact(&mut buf).expect("echo");
    assert_eq!(&buf, b"hello\n");
}

/// Refresh cost, counted by the proxy: one cold listing (`gatehouse hosts`) and the steady
/// state of the daemon's loop. N users (K with an Active key and a tag), 2 prefixed IAM
/// groups, M tagged instances.
#[test]
fn aws_refresh_cost_is_linear_in_users_and_constant_in_instances() {
    const WITH_KEYS: usize = 30;
    const WITHOUT_KEYS: usize = 10;
    const OUTSIDERS: usize = 10;
    const INSTANCES: usize = 20;
    let mut rig = rig("1m");
    let mut ops = Vec::new();
    for i in 0..WITH_KEYS {
        ops.push(json!({"op": "user", "name": format!("user{i:02}"), "groups": "research",
                        "gen_keys": 1,
                        "iam_groups": if i % 2 == 0 { vec!["gatehouse-ops"] } else { vec!["gatehouse-ml"] }}));
    }
    for i in 0..WITHOUT_KEYS {
        ops.push(json!({"op": "user", "name": format!("nokey{i:02}"), "groups": "research"}));
    }
    // Users of the account who are no gatehouse users (no tag, no prefixed group), keys or
    // not: the account listing names them, and that is all they cost.
    for i in 0..OUTSIDERS {
        ops.push(
            json!({"op": "user", "name": format!("outsider{i:02}"), "gen_keys": i % 2,
                        "iam_groups": ["developers"]}),
        );
    }
    for i in 0..INSTANCES {
        ops.push(json!({"op": "instance", "subnet_id": rig.world.subnet_id,
                        "ip": format!("10.0.3.{}", 10 + i),
                        "tags": {"Name": format!("box{i:02}"), "gatehouse:groups": "research"}}));
    }
    // IAM's throttling as the proxy plays it: 10 calls a second per API, bursts of 20. The
    // daemon paces its per-user calls at 8 a second (bursts of 16): none is throttled.
    rig.proxy
        .control("/__proxy/iam_rate?per_second=10&burst=20");
    rig.fixture(Value::Array(ops));
    // alice and jupyter come with the rig. C: the users who can be gatehouse users (tagged).
    let n = WITH_KEYS + WITHOUT_KEYS + OUTSIDERS + 1;
    let c = WITH_KEYS + WITHOUT_KEYS + 1;
    let k = WITH_KEYS + 1;
    let m = INSTANCES + 1;

    let count = |v: &Value, action: &str| v[action].as_u64().unwrap_or(0) as usize;
    // The daemon's steady state: no key bodies, C + 2 calls per refresh. It starts once
    // the daemon has fetched every key body (K since the proxy started: alice's and the
    // fixture's) and the refresh that fetched them is over. A fixed wait was not enough when
    // other tests loaded the machine and one refresh took longer than the wait.
    let warmed = Instant::now();
    while count(&rig.proxy.control("/__proxy/counts"), "iam:GetSSHPublicKey") < k {
        assert!(
            warmed.elapsed() < Duration::from_secs(60),
            "the daemon did not fetch all {k} key bodies within 60 s: {}",
            rig.proxy.control("/__proxy/counts")
        );
        std::thread::sleep(REFRESH / 5);
    }
    rig.let_refresh_run();
    rig.proxy.control("/__proxy/reset");
    // Counted in refreshes, not in time: a loaded machine makes each refresh slower, never
    // different. The window holds at most one partial refresh (the one running at the reset),
    // which the tolerance below allows for.
    let window = Instant::now();
    let warm = loop {
        let counts = rig.proxy.control("/__proxy/counts");
        if count(&counts, "iam:GetAccountAuthorizationDetails") >= 4 {
            break counts;
        }
        assert!(
            window.elapsed() < Duration::from_secs(120),
            "fewer than 4 refreshes within 120 s: {counts}"
        );
        std::thread::sleep(REFRESH / 10);
    };
    let refreshes = count(&warm, "iam:GetAccountAuthorizationDetails");
    assert_eq!(count(&warm, "iam:GetSSHPublicKey"), 0, "{warm}");
    let per_refresh = count(&warm, "iam:ListSSHPublicKeys") as f64 / refreshes as f64;
    assert!(
        (per_refresh - c as f64).abs() <= c as f64 / refreshes as f64,
        "{warm}"
    );
    eprintln!(
        "refresh cost, steady state, N={n} C={c} K={k} M={m}: {refreshes} refreshes, per refresh about {} calls: {warm}",
        c + 2
    );
    // A cold listing (the daemon stopped, so only `gatehouse hosts` counts): every key body
    // is fetched once.
    rig.gatehouse.terminate(Duration::from_secs(10));
    rig.proxy.control("/__proxy/reset");
    // IAM's buckets full again, as they are a few seconds after the daemon's last call: the
    // daemon's last refresh may have drained them to below the listing's first burst (one
    // CI run saw one throttled call there, which the listing's retry absorbed).
    rig.proxy
        .control("/__proxy/iam_rate?per_second=10&burst=20");
    let mut cmd = gatehouse_cmd(&rig.topology);
    cmd.arg("hosts").arg("--config").arg(&rig.config);
    let out = run_with_timeout(cmd, CMD_TIMEOUT);
    out.expect_success("gatehouse hosts");
    assert!(
        out.stdout_str().contains("user29 (groups: ml, research)"),
        "{out}"
    );
    let cold = rig.proxy.control("/__proxy/counts");
    assert_eq!(count(&warm, "_iam_throttled"), 0, "{warm}");
    assert_eq!(count(&cold, "_iam_throttled"), 0, "{cold}");
    assert_eq!(
        count(&cold, "iam:GetAccountAuthorizationDetails"),
        1,
        "{cold}"
    );
    assert_eq!(count(&cold, "iam:ListSSHPublicKeys"), c, "{cold}");
    assert_eq!(count(&cold, "iam:GetSSHPublicKey"), k, "{cold}");
    assert_eq!(count(&cold, "ec2:DescribeInstances"), 1, "{cold}");
    for gone in [
        "iam:ListUsers",
        "iam:ListUserTags",
        "iam:ListGroups",
        "iam:GetGroup",
    ] {
        assert_eq!(count(&cold, gone), 0, "{gone}: {cold}");
    }
    let cold_total: usize = cold
        .as_object()
        .map(|o| o.values().filter_map(Value::as_u64).sum::<u64>() as usize)
        .unwrap_or(0);
    eprintln!("refresh cost, cold, N={n} users (K={k} with keys), M={m} instances: {cold_total} calls {cold}");
}

/// A restart with AWS down: the bastion serves the listing it saved (`aws.snapshot_file`)
/// at once, instead of waiting for AWS; a saved listing older than `max_staleness` is not
/// used (the bastion waits for AWS, as without a file); and the first refresh after a
/// restart with AWS back replaces it.
#[test]
fn aws_a_restart_serves_the_saved_listing_while_aws_is_down() {
    let mut rig = rig("1m");
    rig.gatehouse.terminate(Duration::from_secs(10));
    let saved = rig.scratch.join("aws-directory.json");
    // [aws] is the config's last table.
    // The host key's copy (the SSM key, for a restart while SSM cannot be read) goes to
    // server.host_key, here in the scratch directory.
    let text = std::fs::read_to_string(&rig.config)
        .expect("config")
        .replacen(
            "[server]\n",
            &format!(
                "[server]\nhost_key = \"{}\"\n",
                rig.scratch.join("host_key_copy").display()
            ),
            1,
        )
        + &format!("snapshot_file = \"{}\"\n", saved.display());
    std::fs::write(&rig.config, text).expect("config");
    rig.gatehouse = start_gatehouse(&rig.topology, &rig.scratch, &rig.config, "gatehouse-2");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !saved.exists() {
        assert!(Instant::now() < deadline, "no saved listing after 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_reaches_sshd(&rig.alice(), &format!("jupyter:{SSH_PORT}"));
    rig.gatehouse.terminate(Duration::from_secs(10));

    // AWS unreachable: the proxy forwards to a port where nothing listens.
    let dead = rig
        .topology
        .bastion
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    rig.proxy.control(&format!("/__proxy/upstream?port={dead}"));
    rig.gatehouse = start_gatehouse(&rig.topology, &rig.scratch, &rig.config, "gatehouse-3");
    let log = rig.gatehouse.stderr();
    assert!(log.contains("serving the saved AWS listing"), "{log}");
    assert!(log.contains("using the copy kept at"), "{log}");
    assert_reaches_sshd(&rig.alice(), &format!("jupyter:{SSH_PORT}"));
    rig.gatehouse.wait_for_stderr(
        "AWS refresh failed; keeping the last snapshot",
        Duration::from_secs(30),
    );
    rig.gatehouse.terminate(Duration::from_secs(10));

    // Listed longer than max_staleness (1m) ago: not used; the bastion waits for AWS. The
    // aged listing is signed again with the host key (its copy, with ssh-keygen -Y sign), so
    // that it is refused for its age, not for its signature.
    let mut file: Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).expect("saved")).expect("json");
    let mut listing: Value =
        serde_json::from_str(file["listing"].as_str().expect("a signed listing")).expect("json");
    listing["listed_at_ms"] = json!(listing["listed_at_ms"].as_u64().expect("time") - 61_000);
    let text = listing.to_string();
    let message = rig.scratch.write("aged-listing", text.as_bytes());
    let mut sign = Command::new("ssh-keygen");
    sign.args(["-Y", "sign", "-n", "listing@gatehouse", "-f"])
        .arg(rig.scratch.join("host_key_copy"))
        .arg(&message);
    run_with_timeout(sign, CMD_TIMEOUT).expect_success("ssh-keygen -Y sign");
    let mut sig = message.into_os_string();
    sig.push(".sig");
    file["listing"] = json!(text);
    file["signature"] = json!(std::fs::read_to_string(&sig).expect("signature"));
    std::fs::write(&saved, file.to_string()).expect("age the file");
    let mut cmd = gatehouse_cmd(&rig.topology);
    cmd.arg("serve").arg("--config").arg(&rig.config);
    let mut old = Daemon::spawn("gatehouse-4", cmd, &rig.scratch);
    old.wait_for_stderr("not using the saved AWS listing", SLACK);
    old.wait_for_stderr(
        "first AWS listing failed; not serving until one succeeds",
        Duration::from_secs(30),
    );
    assert!(
        !old.stderr().contains("gatehouse listening"),
        "{}",
        old.logs()
    );
    old.terminate(Duration::from_secs(10));

    // AWS back: a restart serves (from the file it no longer trusts: from AWS) and saves anew.
    rig.proxy.control(&format!(
        "/__proxy/upstream?port={}",
        rig.moto.addr().port()
    ));
    rig.gatehouse = start_gatehouse(&rig.topology, &rig.scratch, &rig.config, "gatehouse-5");
    assert_reaches_sshd(&rig.alice(), &format!("jupyter:{SSH_PORT}"));
    for daemon in [&rig.gatehouse, &old] {
        assert!(!daemon.stderr().contains("panicked"), "{}", daemon.logs());
    }
}

/// Under systemd (Type=notify), the first AWS listing of a large directory may outlast the
/// start timeout: the daemon asks systemd for more time (EXTEND_TIMEOUT_USEC) while it lists,
/// before READY=1. Checked on a NOTIFY_SOCKET of the test's own, with AWS 300 ms away.
#[test]
fn aws_the_first_listing_extends_systemds_start_timeout() {
    let mut rig = rig("1m");
    rig.gatehouse.terminate(Duration::from_secs(10));
    rig.proxy.control("/__proxy/delay?ms=300");
    let socket_path = rig.scratch.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut cmd = gatehouse_cmd(&rig.topology);
    cmd.env("NOTIFY_SOCKET", &socket_path)
        .arg("serve")
        .arg("--config")
        .arg(&rig.config);
    let daemon = Daemon::spawn("gatehouse-notify", cmd, &rig.scratch);
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !seen.iter().any(|m: &String| m.contains("READY=1")) {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no READY=1 ({e}); got {seen:?}\n{}", daemon.logs()));
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let extend = seen
        .iter()
        .position(|m| m.contains("EXTEND_TIMEOUT_USEC=60000000"))
        .unwrap_or_else(|| panic!("no extension before READY: {seen:?}"));
    let ready = seen
        .iter()
        .position(|m| m.contains("READY=1"))
        .expect("ready");
    assert!(extend < ready, "{seen:?}");
    assert!(!daemon.stderr().contains("panicked"), "{}", daemon.logs());
}

#[test]
fn aws_iam_path_prefix_admits_only_users_under_it() {
    let rig = rig("1m");
    let sam = KeyPair::ed25519(&rig.scratch, "sam_key");
    let ext = KeyPair::ed25519(&rig.scratch, "ext_key");
    rig.fixture(json!([
        {"op": "user", "name": "sam", "groups": "research", "path": "/staff/",
         "keys": [sam.public_line.trim()]},
        {"op": "user", "name": "ext", "groups": "research", "path": "/contractors/",
         "keys": [ext.public_line.trim()]},
    ]));
    rig.let_refresh_run();
    // A second gatehouse on the same AWS state, listing only users under /staff/.
    let config = write_config(
        &rig.scratch,
        "staff",
        &rig.proxy.url(),
        &Settings {
            max_staleness: "1m",
            vpc_ids: vec![rig.world.vpc_id.clone()],
            listen_port: 2203,
        },
    );
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("[aws]\n", "[aws]\niam_path_prefix = \"/staff/\"\n");
    std::fs::write(&config, text).expect("config");
    let mut cmd = gatehouse_cmd(&rig.topology);
    cmd.arg("serve").arg("--config").arg(&config);
    let mut staff = Daemon::spawn("gatehouse_staff", cmd, &rig.scratch);
    staff.wait_for_stderr("gatehouse listening", START_TIMEOUT);

    let via_staff = |user: &str, key: &KeyPair| {
        SshClient::new(
            &rig.topology.client,
            &rig.scratch,
            addr(BASTION_CLIENT_ADDR, 2203),
            user,
            &key.private,
        )
    };
    assert_reaches_sshd(&via_staff("sam", &sam), &format!("jupyter:{SSH_PORT}"));
    assert_login_refused(&via_staff("ext", &ext));
    assert_login_refused(&via_staff("alice", &rig.alice_key));
    // The unfiltered gatehouse admits all three: the difference is the prefix alone.
    assert_reaches_sshd(
        &rig.client("ext", &ext.private),
        &format!("jupyter:{SSH_PORT}"),
    );
}

/// Two VPCs with one CIDR (every default `10.0.0.0/16` overlaps): jupyter (research, VPC A)
/// and prod-box (ops, VPC B) end up on one private address. The bastion's routes deliver that
/// address to one of them only, so a grant to dial it could land on a host of another group.
/// A gatehouse listing both VPCs refuses the address by every name of either host, naming
/// both instance ids and nothing else, closes a tunnel opened before the address became
/// shared, and says so in a warning; a gatehouse listing VPC A only still serves jupyter.
#[test]
fn aws_an_address_shared_by_two_vpcs_is_never_dialed() {
    const PORT: u16 = 2204;
    let rig = rig("1m");
    let _echo = TcpServer::echo(&rig.topology.private, addr(PRIVATE_ADDR, ECHO_PORT));
    let olga = KeyPair::ed25519(&rig.scratch, "olga_key");
    let r = rig.fixture(json!([
        {"op": "vpc", "cidr": "10.0.0.0/16", "subnet": "10.0.3.0/24"},
        {"op": "user", "name": "olga", "groups": "ops", "keys": [olga.public_line.trim()]},
    ]));
    let vpc_b = r[0]["vpc_id"].as_str().expect("vpc id").to_owned();
    let subnet_b = r[0]["subnet_id"].as_str().expect("subnet id").to_owned();
    assert_ne!(vpc_b, rig.world.vpc_id);

    // A second gatehouse on the same AWS state, listing both VPCs.
    let config = write_config(
        &rig.scratch,
        "twovpc",
        &rig.proxy.url(),
        &Settings {
            max_staleness: "1m",
            vpc_ids: vec![rig.world.vpc_id.clone(), vpc_b.clone()],
            listen_port: PORT,
        },
    );
    let mut cmd = gatehouse_cmd(&rig.topology);
    cmd.arg("serve").arg("--config").arg(&config);
    let mut twovpc = Daemon::spawn("gatehouse_twovpc", cmd, &rig.scratch);
    twovpc.wait_for_stderr("gatehouse listening", START_TIMEOUT);
    let via = |user: &str, key: &Path| {
        SshClient::new(
            &rig.topology.client,
            &rig.scratch,
            addr(BASTION_CLIENT_ADDR, PORT),
            user,
            key,
        )
    };
    let alice = via("alice", &rig.alice_key.private);
    let olga_client = via("olga", &olga.private);

    // While the address is jupyter's alone, alice holds a tunnel to it.
    let mut tunnel = OpenTunnel::open(&alice, &rig.scratch, "alice_tunnel", 15002, "jupyter");

    // prod-box appears in VPC B on jupyter's address.
    let r = rig.fixture(json!([
        {"op": "instance", "subnet_id": subnet_b, "ip": PRIVATE_ADDR.to_string(),
         "tags": {"Name": "prod-box", "gatehouse:groups": "ops",
                  "gatehouse:ports": format!("{SSH_PORT},{ECHO_PORT}")}},
    ]));
    let prod_id = r[0]["id"].as_str().expect("instance id").to_owned();
    assert_eq!(
        r[0]["ip"].as_str(),
        Some(PRIVATE_ADDR.to_string().as_str()),
        "moto placed prod-box on the shared address: {r:?}"
    );
    let jupyter_id = rig.world.jupyter_id.clone();
    let shared = format!(
        "address {PRIVATE_ADDR} belongs to 2 hosts ({}); refusing to guess which one you mean",
        {
            let mut ids = [jupyter_id.clone(), prod_id.clone()];
            ids.sort();
            ids.join(", ")
        }
    );

    // The open tunnel is closed within one refresh, with the reason in the audit log.
    tunnel.wait_closed(REFRESH + SLACK);
    let audit = || read_audit(&rig.scratch.join("twovpc.audit.jsonl"));
    let deadline = Instant::now() + SLACK;
    let revoked = loop {
        if let Some(line) = audit()
            .into_iter()
            .find(|l| l["event"] == "tunnel.revoked" && l["user"] == "alice")
        {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no tunnel.revoked for alice: {:?}\n{}",
            audit(),
            twovpc.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(revoked["reason"], shared.as_str(), "{revoked}");

    // Refused by every name of either host, for a user of either group; each is told only
    // of the host of their own group.
    let shown = |mine: &str| {
        format!(
            "address {PRIVATE_ADDR} belongs to {mine} and to another host; refusing to guess \
             which one you mean"
        )
    };
    let dns = format!(
        "ip-{}.ec2.internal",
        PRIVATE_ADDR.to_string().replace('.', "-")
    );
    for target in [
        "jupyter".to_owned(),
        jupyter_id.clone(),
        dns.clone(),
        PRIVATE_ADDR.to_string(),
    ] {
        assert_refused(&alice, &format!("{target}:{SSH_PORT}"), &shown(&jupyter_id));
    }
    for target in [
        "prod-box".to_owned(),
        prod_id.clone(),
        PRIVATE_ADDR.to_string(),
    ] {
        assert_refused(
            &olga_client,
            &format!("{target}:{SSH_PORT}"),
            &shown(&prod_id),
        );
    }
    // A host of another group is refused for the group, as before.
    assert_refused(
        &alice,
        &format!("prod-box:{SSH_PORT}"),
        "'prod-box' is not a host this bastion forwards to",
    );
    let denies: Vec<Value> = audit()
        .into_iter()
        .filter(|l| l["event"] == "tunnel.deny" && l["reason_code"] == "shared_address")
        .collect();
    assert_eq!(denies.len(), 7, "{denies:?}");
    // The audit keeps the whole truth: both instances.
    assert!(
        denies.iter().all(|d| d["reason"] == shared.as_str()),
        "{denies:?}"
    );

    // The daemon says why, once, naming both instances.
    let log = twovpc.stderr();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains(&PRIVATE_ADDR.to_string())
            && l.contains(&jupyter_id)
            && l.contains(&prod_id)),
        "a warning names the address and both instances:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    // The gatehouse listing VPC A only never sees prod-box: jupyter is served as before.
    assert_reaches_sshd(&rig.alice(), &format!("jupyter:{SSH_PORT}"));
    assert_reaches_sshd(&rig.alice(), &format!("{PRIVATE_ADDR}:{SSH_PORT}"));
    assert!(!rig.gatehouse.stderr().contains("panicked"));
}

/// IAM users deleted while a refresh lists them: the account listing still named them, and
/// their per-user call answers NoSuchEntity (the proxy plays the deletion: bob's and carol's
/// ListSSHPublicKeys). That is not a failed refresh: the listing is published without
/// them, so their session and tunnel end and they cannot log in, while everyone else is
/// served and no refresh fails.
#[test]
fn aws_a_user_deleted_during_a_refresh_is_gone_not_a_failed_refresh() {
    let rig = rig("1m");
    let _echo = TcpServer::echo(&rig.topology.private, addr(PRIVATE_ADDR, ECHO_PORT));
    let bob = KeyPair::ed25519(&rig.scratch, "bob_key");
    let carol = KeyPair::ed25519(&rig.scratch, "carol_key");
    rig.fixture(json!([
        {"op": "user", "name": "bob", "groups": "research", "keys": [bob.public_line.trim()]},
        {"op": "user", "name": "carol", "groups": "research", "keys": [carol.public_line.trim()]},
    ]));
    rig.let_refresh_run();
    let bob_client = rig.client("bob", &bob.private);
    let carol_client = rig.client("carol", &carol.private);
    assert_reaches_sshd(&carol_client, &format!("jupyter:{SSH_PORT}"));
    let mut alice_tunnel =
        OpenTunnel::open(&rig.alice(), &rig.scratch, "alice_tunnel", 15003, "jupyter");
    let mut bob_tunnel =
        OpenTunnel::open(&bob_client, &rig.scratch, "bob_tunnel", 15004, "jupyter");

    rig.proxy
        .control("/__proxy/gone?user=bob&action=ListSSHPublicKeys");
    rig.proxy
        .control("/__proxy/gone?user=carol&action=ListSSHPublicKeys");
    bob_tunnel.wait_closed(REFRESH + SLACK);
    rig.wait_audit("session.revoked for bob", SLACK, |l| {
        l["event"] == "session.revoked" && l["user"] == "bob"
    });
    assert_login_refused(&bob_client);
    assert_login_refused(&carol_client);
    assert!(alice_tunnel.alive(), "alice's tunnel is untouched");
    assert_reaches_sshd(&rig.alice(), &format!("jupyter:{SSH_PORT}"));

    let counts = rig.proxy.control("/__proxy/counts");
    assert!(counts["_gone"].as_u64().unwrap_or(0) >= 2, "{counts}");
    let log = rig.gatehouse.stderr();
    assert!(!log.contains("AWS refresh failed"), "{log}");
    for who in ["bob", "carol"] {
        assert!(
            log.lines().any(
                |l| l.contains("IAM user deleted since the account listing named it")
                    && l.contains(who)
            ),
            "an info line says {who} is gone:\n{log}"
        );
    }
    assert!(!log.contains("panicked"), "{log}");
}

/// A call the role may not make: `gatehouse hosts` (a person) and the daemon's refresh log (the
/// journal) say which action is missing, with AWS's code and message, and never dump the SDK's
/// structures (`SdkBody { inner: Once(Some(b"<?xml ...`).
#[test]
fn aws_a_denied_call_names_the_missing_action_not_a_debug_dump() {
    let mut rig = rig("1m");
    rig.proxy
        .control("/__proxy/deny?action=iam:GetAccountAuthorizationDetails");
    let assert_readable = |text: &str| {
        for dump in [
            "SdkBody",
            "Once(",
            "Some(",
            "{ inner",
            "<?xml",
            "ErrorMetadata",
        ] {
            assert!(!text.contains(dump), "{dump:?} in:\n{text}");
        }
        let line = text
            .lines()
            .find(|l| {
                l.contains(
                    "AWS call iam:GetAccountAuthorizationDetails failed: AccessDenied: User: ",
                )
            })
            .unwrap_or_else(|| panic!("no line names the denied action:\n{text}"));
        assert!(
            line.contains("is not authorized to perform: iam:GetAccountAuthorizationDetails")
                && line.contains("lacks the action iam:GetAccountAuthorizationDetails"),
            "{line}"
        );
    };

    let mut cmd = gatehouse_cmd(&rig.topology);
    cmd.arg("hosts").arg("--config").arg(&rig.config);
    let out = run_with_timeout(cmd, CMD_TIMEOUT);
    out.expect_failure("gatehouse hosts with iam:GetAccountAuthorizationDetails denied");
    assert_eq!(out.code(), Some(1), "{out}");
    assert_readable(&out.stderr_str());

    rig.gatehouse
        .wait_for_stderr("AWS refresh failed", REFRESH + SLACK);
    assert_readable(&rig.gatehouse.stderr());
    let counts = rig.proxy.control("/__proxy/counts");
    assert!(counts["_denied"].as_u64().unwrap_or(0) >= 2, "{counts}");
    rig.gatehouse.terminate(Duration::from_secs(10));
}
