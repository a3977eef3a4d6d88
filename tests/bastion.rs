//! gatehouse itself, end to end: the real binary in the bastion namespace, OpenSSH sshd and a
//! real Jupyter Server in the private namespace, the stock OpenSSH client in the client
//! namespace. What users do (ssh -J, ProxyJump, -L for Jupyter, scp, -W) works; everything
//! else is refused with a reason the user sees and an audit line; shutdown drains.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::harness::{
    gatehouse_bin, jupyter_check, run_feeding, run_with_timeout, CmdOutput, Daemon, Digest,
    Jupyter, KeyPair, KeyType, Pattern, Scratch, SshClient, Sshd, SshdConfig, TcpServer, Topology,
    BASTION_CLIENT_ADDR, BASTION_PRIVATE_ADDR, PRIVATE_ADDR, PRIVATE_ADDR_2, TEST_USER,
};

pub(crate) const SSH_PORT: u16 = 22;
pub(crate) const JUPYTER_PORT: u16 = 8888;
pub(crate) const SINK_PORT: u16 = 9000;
pub(crate) const CMD_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// Settings a test may change in the `[server]` table.
pub(crate) struct ServerOptions {
    /// Extra TOML appended to the config (e.g. `[limits]`, `[penalties]`, `[metrics]`).
    pub extra: String,
    /// Extra `[server]` keys, one per line.
    pub server_extra: String,
    pub login_grace: &'static str,
    pub idle_timeout: &'static str,
    pub max_unauthenticated: usize,
    /// `server.eviction_min_age`: at `login_grace` or more, the pre-auth cap is a hard cap.
    pub eviction_min_age: &'static str,
    pub shutdown_grace: &'static str,
    pub connect_timeout: &'static str,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            // Tests fail logins on purpose from one source: no penalties unless a test asks.
            extra: "[penalties]\nenabled = false\n".into(),
            server_extra: String::new(),
            login_grace: "20s",
            idle_timeout: "1h",
            max_unauthenticated: 64,
            eviction_min_age: "100ms",
            shutdown_grace: "10s",
            connect_timeout: "3s",
        }
    }
}

/// The inventory the tests use. `jupyter` (10.0.3.140) is open to `research` on 22, 8888 and
/// the sink port; `opsbox` belongs to `ops` only. 10.0.3.141 is a live private address that is
/// NOT in the inventory.
pub(crate) fn write_config(
    scratch: &Scratch,
    alice: &KeyPair,
    bob: &KeyPair,
    opts: &ServerOptions,
) -> PathBuf {
    let text = format!(
        r#"
[server]
listen = ["{listen}"]
host_key = "{dir}/state/ssh_host_ed25519_key"
login_grace = "{login_grace}"
idle_timeout = "{idle_timeout}"
max_unauthenticated = {max_unauth}
eviction_min_age = "{eviction_min_age}"
connect_timeout = "{connect_timeout}"
shutdown_grace = "{shutdown_grace}"
{server_extra}

[audit]
file = "{dir}/audit.jsonl"

[[users]]
name = "alice"
keys = ["{alice}"]
groups = ["research"]

[[users]]
name = "bob"
keys = ["{bob}"]
groups = ["ops"]

[[hosts]]
name = "jupyter"
address = "{private}"
groups = ["research"]
ports = [{SSH_PORT}, {JUPYTER_PORT}, {SINK_PORT}]

[[hosts]]
name = "opsbox"
address = "10.0.3.142"
groups = ["ops"]
ports = [22]

{extra}
"#,
        extra = opts.extra,
        server_extra = opts.server_extra,
        listen = addr(BASTION_CLIENT_ADDR, SSH_PORT),
        dir = scratch.path().display(),
        login_grace = opts.login_grace,
        idle_timeout = opts.idle_timeout,
        max_unauth = opts.max_unauthenticated,
        eviction_min_age = opts.eviction_min_age,
        shutdown_grace = opts.shutdown_grace,
        connect_timeout = opts.connect_timeout,
        alice = alice.public_line.trim(),
        bob = bob.public_line.trim(),
        private = PRIVATE_ADDR,
    );
    scratch.write("gatehouse.toml", text.as_bytes())
}

/// Starts `gatehouse serve` in the bastion namespace and waits for its "listening" line
/// (not a port probe, which would itself be a connection in the audit log).
pub(crate) fn start_gatehouse(
    topology: &Topology,
    scratch: &Scratch,
    config: &Path,
    name: &str,
) -> Daemon {
    let mut cmd = topology.bastion.command(gatehouse_bin());
    cmd.arg("serve").arg("--config").arg(config);
    let mut daemon = Daemon::spawn(name, cmd, scratch);
    daemon.wait_for_stderr("gatehouse listening", START_TIMEOUT);
    daemon
}

/// Fields drop in order: processes first, the namespaces last.
pub(crate) struct Rig {
    pub alice: SshClient,
    pub gatehouse: Daemon,
    pub private_sshd: Sshd,
    pub alice_key: KeyPair,
    pub bob_key: KeyPair,
    pub config: PathBuf,
    pub scratch: Scratch,
    pub topology: Topology,
}

pub(crate) fn rig() -> Rig {
    rig_with(ServerOptions::default())
}

pub(crate) fn rig_with(opts: ServerOptions) -> Rig {
    let topology = Topology::new();
    let scratch = Scratch::new();
    let alice_key = KeyPair::ed25519(&scratch, "alice_key");
    let bob_key = KeyPair::generate(&scratch, "bob_key", KeyType::Rsa);
    let config = write_config(&scratch, &alice_key, &bob_key, &opts);
    start_rig(topology, scratch, alice_key, bob_key, config)
}

/// The rest of a [`Rig`] once its namespaces, keys and config exist: gatehouse on `config`,
/// the private sshd (alice's key authorized) and alice's client.
pub(crate) fn start_rig(
    topology: Topology,
    scratch: Scratch,
    alice_key: KeyPair,
    bob_key: KeyPair,
    config: PathBuf,
) -> Rig {
    let gatehouse = start_gatehouse(&topology, &scratch, &config, "gatehouse");
    let private_sshd = SshdConfig::private_host(addr(PRIVATE_ADDR, SSH_PORT))
        .authorize(&alice_key.public_line)
        .start(&topology.private, &scratch, "private_sshd");
    let alice = SshClient::new(
        &topology.client,
        &scratch,
        addr(BASTION_CLIENT_ADDR, SSH_PORT),
        "alice",
        &alice_key.private,
    );
    Rig {
        alice,
        gatehouse,
        private_sshd,
        alice_key,
        bob_key,
        config,
        scratch,
        topology,
    }
}

impl Rig {
    /// A client logging in to the bastion as `user` with `key`.
    pub fn client(&self, user: &str, key: &Path) -> SshClient {
        SshClient::new(
            &self.topology.client,
            &self.scratch,
            addr(BASTION_CLIENT_ADDR, SSH_PORT),
            user,
            key,
        )
    }

    /// Every audit line so far.
    pub fn audit(&self) -> Vec<Value> {
        read_audit(&self.scratch.join("audit.jsonl"))
    }

    /// Waits (bounded) for an audit line matching `pred`, and returns it.
    pub fn wait_audit(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.audit().into_iter().find(|l| pred(l)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no audit line for {what}; audit log:\n{}",
                self.audit()
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ssh -W target bastion` as alice, feeding nothing.
    pub fn dash_w(&self, target: &str) -> CmdOutput {
        dash_w(&self.alice, target)
    }
}

/// `ssh -W target bastion`, at OpenSSH's default log level (the harness's is ERROR), so that
/// stderr shows what the user sees: "channel 0: open failed: <code>: <reason>".
/// A tunnel held open: an echo server on jupyter's sink port, alice's
/// `ssh -N -L 127.0.0.1:<local>:jupyter:9000 bastion`, and one connection through it, proven
/// alive by echoing `hello`. Drops in order: the connection, ssh, then the echo server.
pub(crate) struct EchoTunnel {
    pub stream: std::net::TcpStream,
    pub ssh: Daemon,
    _echo: TcpServer,
}

impl Rig {
    pub fn echo_tunnel(&self, local_port: u16, hello: &[u8]) -> EchoTunnel {
        let echo = TcpServer::echo(&self.topology.private, addr(PRIVATE_ADDR, SINK_PORT));
        let ssh = self.alice.local_forward(
            &self.scratch,
            "ssh_tunnel",
            local_port,
            "jupyter",
            SINK_PORT,
            "bastion",
        );
        let mut stream = self
            .topology
            .client
            .connect(
                addr(Ipv4Addr::LOCALHOST, local_port),
                Duration::from_secs(5),
            )
            .expect("connect to the forwarded port");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        stream.write_all(hello).expect("write through the tunnel");
        let mut back = vec![0u8; hello.len()];
        stream
            .read_exact(&mut back)
            .expect("echo through the tunnel");
        assert_eq!(back, hello);
        EchoTunnel {
            stream,
            ssh,
            _echo: echo,
        }
    }
}

pub(crate) fn dash_w(client: &SshClient, target: &str) -> CmdOutput {
    let mut ssh = client.ssh();
    ssh.args(["-o", "LogLevel=INFO", "-W", target, "bastion"]);
    run_with_timeout(ssh, CMD_TIMEOUT)
}

pub(crate) fn read_audit(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"))
        })
        .collect()
}

pub(crate) fn is(line: &Value, event: &str) -> bool {
    line["event"] == event
}

#[test]
fn jump_with_dash_j_and_with_proxyjump_config() {
    let mut rig = rig();
    // ssh -J by address, then by inventory name (sent to the bastion exactly as typed).
    for target in [PRIVATE_ADDR.to_string(), "jupyter".to_string()] {
        let mut ssh = rig.alice.ssh();
        ssh.args(["-J", "bastion", &format!("{TEST_USER}@{target}"), "id -un"]);
        let out = run_with_timeout(ssh, CMD_TIMEOUT);
        out.expect_success(&format!("ssh -J bastion {TEST_USER}@{target} id -un"));
        assert_eq!(out.stdout_str().trim(), TEST_USER);
    }
    // ProxyJump in an ssh_config, as users write it in ~/.ssh/config.
    rig.alice
        .add_target("research-box", "jupyter", SSH_PORT, TEST_USER, None);
    let mut ssh = rig.alice.ssh();
    ssh.args(["research-box", "true"]);
    run_with_timeout(ssh, CMD_TIMEOUT).expect_success("ssh research-box (ProxyJump bastion)");

    rig.private_sshd
        .daemon()
        .wait_for_stderr("Accepted publickey for ghtest", Duration::from_secs(5));
    let auth = rig.wait_audit("auth.success", |l| is(l, "auth.success"));
    assert_eq!(auth["user"], "alice");
    assert_eq!(auth["key"], rig.alice_key.fingerprint());
    assert!(
        auth["source"]
            .as_str()
            .unwrap_or("")
            .starts_with("10.240.0.2:"),
        "{auth}"
    );
    let open = rig.wait_audit("tunnel.open by name", |l| {
        is(l, "tunnel.open") && l["target"] == "jupyter"
    });
    assert_eq!(open["host"], "jupyter");
    assert_eq!(open["dial"], addr(PRIVATE_ADDR, SSH_PORT).to_string());
    let close = rig.wait_audit("tunnel.close", |l| is(l, "tunnel.close"));
    assert!(close["bytes_up"].as_u64().unwrap_or(0) > 0, "{close}");
    assert!(close["bytes_down"].as_u64().unwrap_or(0) > 0, "{close}");
    assert!(close["duration_ms"].is_u64(), "{close}");
    // Bare `ssh -W` (what ProxyCommand setups and scripts run): OpenSSH ends it by closing the
    // connection without a disconnect message, an ordinary logout. Audited as such, never as
    // a connection error.
    let mut ssh = rig.alice.ssh();
    ssh.args(["-W", &format!("jupyter:{SSH_PORT}"), "bastion"]);
    let out = run_with_timeout(ssh, CMD_TIMEOUT);
    assert!(out.stdout_str().starts_with("SSH-2.0-"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let closes = loop {
        let closes: Vec<Value> = rig
            .audit()
            .into_iter()
            .filter(|l| is(l, "session.close"))
            .collect();
        if closes.len() == 4 || Instant::now() > deadline {
            break closes;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(closes.len(), 4, "{closes:?}");
    for close in &closes[..3] {
        // `-J` sends DISCONNECT; when it closes with our channel close unread, its reset can
        // overtake the DISCONNECT (seen once in a full run): a logout either way.
        assert!(
            close["reason"] == "client disconnected"
                || close["reason"] == "client closed the connection",
            "{close}"
        );
    }
    assert_eq!(
        closes[3]["reason"], "client closed the connection",
        "{}",
        closes[3]
    );
}

#[test]
fn jupyter_kernel_runs_code_through_a_local_forward() {
    let rig = rig();
    let jupyter = Jupyter::start(
        &rig.topology.private,
        &rig.scratch,
        addr(PRIVATE_ADDR, JUPYTER_PORT),
    );
    let local_port = 18888;
    // The recipe from the README: ssh -N -L 8888:jupyter:8888 bastion
    let _tunnel = rig.alice.local_forward(
        &rig.scratch,
        "ssh_tunnel",
        local_port,
        "jupyter",
        JUPYTER_PORT,
        "bastion",
    );
    let out = jupyter_check(
        &rig.topology.client,
        &format!("http://127.0.0.1:{local_port}"),
        jupyter.token(),
        Duration::from_secs(90),
    );
    out.expect_success("jupyter_check.py through ssh -L via gatehouse");
    let summary = out.stdout_str();
    assert!(summary.contains("\"ok\": true"), "summary: {summary}");
    assert!(summary.contains("\"result\": \"42\""), "summary: {summary}");
    // Jupyter's REST calls and the kernel websocket each went through a tunnel of their own.
    let opens = rig
        .audit()
        .iter()
        .filter(|l| is(l, "tunnel.open") && l["port"] == JUPYTER_PORT)
        .count();
    assert!(
        opens >= 2,
        "expected several tunnels to jupyter:8888, saw {opens}"
    );
}

#[test]
fn scp_through_the_bastion_is_byte_exact() {
    let rig = rig();
    let user = rig.private_sshd.user().clone();
    let remote_dir = rig.scratch.owned_subdir("private_home", user.uid, user.gid);
    let data = Pattern::new(5 * 1024 * 1024 + 3, 11).to_vec();
    let local = rig.scratch.write("upload.bin", &data);
    let remote = format!("{TEST_USER}@jupyter:{}/copy.bin", remote_dir.display());
    let mut scp = rig.alice.scp();
    scp.args(["-J", "bastion"]).arg(&local).arg(&remote);
    run_with_timeout(scp, CMD_TIMEOUT).expect_success("scp -J bastion upload");
    let back = rig.scratch.join("download.bin");
    let mut scp = rig.alice.scp();
    scp.args(["-J", "bastion"]).arg(&remote).arg(&back);
    run_with_timeout(scp, CMD_TIMEOUT).expect_success("scp -J bastion download");
    assert_eq!(
        std::fs::read(remote_dir.join("copy.bin")).expect("uploaded copy"),
        data
    );
    assert_eq!(std::fs::read(&back).expect("downloaded copy"), data);
}

#[test]
fn dash_w_moves_256_mib_intact() {
    let rig = rig();
    let sink = TcpServer::digest(&rig.topology.private, addr(PRIVATE_ADDR, SINK_PORT), 0);
    let mut ssh = rig.alice.ssh();
    ssh.args(["-W", &format!("jupyter:{SINK_PORT}"), "bastion"]);
    let (out, sent) = run_feeding(ssh, Pattern::new(256 << 20, 42), Duration::from_secs(240));
    out.expect_success("ssh -W with 256 MiB");
    let (reply, rest) =
        Digest::parse_reply(&out.stdout).unwrap_or_else(|| panic!("no digest reply: {out}"));
    assert_eq!(
        reply, sent,
        "what the sink received vs what the client sent"
    );
    assert!(rest.is_empty());
    assert_eq!(
        sink.wait_for_connections(1, Duration::from_secs(10)),
        vec![Ok(sent)]
    );
    let close = rig.wait_audit("tunnel.close", |l| is(l, "tunnel.close"));
    assert_eq!(close["bytes_up"].as_u64(), Some(256 << 20), "{close}");
    eprintln!("256 MiB through gatehouse -W in {:.2?}", out.elapsed);
}

#[test]
fn half_closed_stream_keeps_flowing_back() {
    let rig = rig();
    // The server answers only after it has seen EOF, with a digest and 4 MiB more.
    let reply_len = 4 << 20;
    let sink = TcpServer::digest(
        &rig.topology.private,
        addr(PRIVATE_ADDR, SINK_PORT),
        reply_len,
    );
    let mut ssh = rig.alice.ssh();
    ssh.args(["-W", &sink.addr().to_string(), "bastion"]);
    let (out, sent) = run_feeding(ssh, Pattern::new(100_000, 3), CMD_TIMEOUT);
    out.expect_success("ssh -W with a half-closed stream");
    let (reply, rest) =
        Digest::parse_reply(&out.stdout).unwrap_or_else(|| panic!("no digest reply: {out}"));
    assert_eq!(reply, sent);
    assert_eq!(Digest::of(rest), Pattern::new(reply_len, 1).digest());
}

#[test]
fn wrong_key_unknown_user_and_passwords_are_refused() {
    let rig = rig();
    let mallory = KeyPair::ed25519(&rig.scratch, "mallory_key");

    // alice's name with a key that is not hers.
    let client = rig.client("alice", &mallory.private);
    let mut ssh = client.ssh();
    ssh.args(["-W", &format!("jupyter:{SSH_PORT}"), "bastion"]);
    let out = run_with_timeout(ssh, CMD_TIMEOUT);
    out.expect_failure("alice with mallory's key");
    assert!(
        out.stderr_str().contains("Permission denied (publickey)"),
        "{out}"
    );
    let line = rig.wait_audit("auth.failure unknown_key", |l| {
        is(l, "auth.failure") && l["reason"] == "unknown_key"
    });
    assert_eq!(line["user"], "alice");
    assert_eq!(line["key"], mallory.fingerprint());

    // A user the bastion does not know, with a key that is valid for someone else.
    let client = rig.client("mallory", &rig.alice_key.private);
    let mut ssh = client.ssh();
    ssh.args(["-W", &format!("jupyter:{SSH_PORT}"), "bastion"]);
    run_with_timeout(ssh, CMD_TIMEOUT).expect_failure("unknown user");
    rig.wait_audit("auth.failure unknown_user", |l| {
        is(l, "auth.failure") && l["reason"] == "unknown_user" && l["user"] == "mallory"
    });

    // Password and keyboard-interactive, sent although the server offers only publickey
    // (the OpenSSH client would not send them): refused by the handler, and audited.
    let mut probe = rig.topology.client.command(crate::harness::venv_python());
    probe
        .arg(crate::harness::jupyter::py_script("auth_probe.py"))
        .arg(BASTION_CLIENT_ADDR.to_string())
        .arg(SSH_PORT.to_string())
        .arg("alice");
    let out = run_with_timeout(probe, CMD_TIMEOUT);
    out.expect_success("auth_probe.py: none, password and keyboard-interactive all refused");
    let summary: Value = serde_json::from_str(out.stdout_str().trim()).expect("probe JSON");
    for method in ["none", "password", "keyboard-interactive"] {
        assert_eq!(summary[method]["accepted"], false, "{summary}");
        assert_eq!(
            summary[method]["allowed"],
            serde_json::json!(["publickey"]),
            "{summary}"
        );
    }
    for method in ["password", "keyboard-interactive"] {
        rig.wait_audit(method, |l| is(l, "auth.failure") && l["method"] == method);
    }
    assert!(
        !rig.audit().iter().any(|l| is(l, "auth.success")),
        "nothing may have authenticated"
    );
}

#[test]
fn shell_exec_and_subsystems_get_the_hint_and_a_refusal() {
    let rig = rig();
    for (args, request) in [
        (vec!["bastion"], "shell"),
        (vec!["bastion", "true"], "exec"),
        (vec!["-s", "bastion", "sftp"], "subsystem sftp"),
    ] {
        let mut ssh = rig.alice.ssh();
        ssh.args(&args);
        let out = run_with_timeout(ssh, CMD_TIMEOUT);
        out.expect_failure(&format!("ssh {args:?}"));
        let stderr = out.stderr_str();
        assert!(stderr.contains("this is a jump host"), "{out}");
        assert!(stderr.contains("ssh -J alice@<bastion> <host>"), "{out}");
        assert!(
            stderr.contains("you may reach: jupyter (ports 22, 8888, 9000)"),
            "{out}"
        );
        assert!(
            !stderr.contains("opsbox"),
            "hint lists a host alice may not reach: {out}"
        );
        rig.wait_audit(request, |l| {
            is(l, "request.deny") && l["request"] == request
        });
    }
}

#[test]
fn remote_forwarding_agent_and_x11_are_refused() {
    let rig = rig();
    // -R, TCP and Unix socket flavours; ExitOnForwardFailure makes the client give up.
    for spec in [
        "127.0.0.1:9999:localhost:22",
        "/tmp/gatehouse-test.sock:localhost:22",
    ] {
        let mut ssh = rig.alice.ssh();
        ssh.args(["-N", "-R", spec, "bastion"]);
        let out = run_with_timeout(ssh, CMD_TIMEOUT);
        out.expect_failure(&format!("ssh -R {spec}"));
        assert!(out.stderr_str().contains("forwarding failed"), "{out}");
    }
    rig.wait_audit("-R", |l| {
        is(l, "request.deny") && l["request"] == "remote forwarding 127.0.0.1:9999"
    });
    rig.wait_audit("-R unix socket", |l| {
        is(l, "request.deny")
            && l["request"]
                .as_str()
                .is_some_and(|r| r.starts_with("remote streamlocal forwarding"))
    });

    // Agent forwarding, with a real agent for the client to offer.
    let sock = rig.scratch.join("agent.sock");
    let mut agent_cmd = rig.topology.client.command("ssh-agent");
    agent_cmd.args(["-D", "-a"]).arg(&sock);
    let _agent = Daemon::spawn("ssh_agent", agent_cmd, &rig.scratch);
    crate::harness::wait_until(Duration::from_secs(10), "agent socket", || sock.exists());
    let mut ssh = rig.alice.ssh();
    // The harness's config says IdentityAgent none, which also unsets SSH_AUTH_SOCK: name the
    // agent explicitly.
    ssh.env("SSH_AUTH_SOCK", &sock)
        .arg("-o")
        .arg(format!("IdentityAgent={}", sock.display()))
        .arg("-o")
        .arg(format!("ForwardAgent={}", sock.display()))
        .args(["bastion", "true"]);
    run_with_timeout(ssh, CMD_TIMEOUT).expect_failure("ssh -A bastion true");
    rig.wait_audit("agent forwarding", |l| {
        is(l, "request.deny") && l["request"] == "agent forwarding"
    });

    // X11 forwarding (fake auth data: there is no X server, nothing is ever connected).
    let mut ssh = rig.alice.ssh();
    ssh.env("DISPLAY", "127.0.0.1:0")
        .args(["-o", "ForwardX11=yes", "bastion", "true"]);
    run_with_timeout(ssh, CMD_TIMEOUT).expect_failure("ssh -X bastion true");
    rig.wait_audit("x11", |l| is(l, "request.deny") && l["request"] == "x11");
}

#[test]
fn targets_outside_the_inventory_are_refused_in_every_spelling() {
    let rig = rig();
    // Live listeners a broken policy could reach: loopback and both addresses of the bastion
    // namespace, and a private address that is not an inventory host.
    let decoys = [
        TcpServer::digest(
            &rig.topology.bastion,
            addr(Ipv4Addr::LOCALHOST, SINK_PORT),
            0,
        ),
        TcpServer::digest(
            &rig.topology.bastion,
            addr(BASTION_PRIVATE_ADDR, SINK_PORT),
            0,
        ),
        TcpServer::digest(
            &rig.topology.bastion,
            addr(BASTION_CLIENT_ADDR, SINK_PORT),
            0,
        ),
        TcpServer::digest(&rig.topology.private, addr(PRIVATE_ADDR_2, SINK_PORT), 0),
    ];
    let refused = [
        ("127.0.0.1:9000", "127.0.0.1"),
        ("localhost:9000", "localhost"),
        ("[::1]:22", "::1"),
        ("0x7f000001:9000", "0x7f000001"),
        ("2130706433:9000", "2130706433"),
        ("127.1:9000", "127.1"),
        ("169.254.169.254:80", "169.254.169.254"),
        ("[fd00:ec2::254]:80", "fd00:ec2::254"),
        ("10.0.3.1:9000", "10.0.3.1"),
        ("10.240.0.1:22", "10.240.0.1"),
        ("10.0.3.141:9000", "10.0.3.141"),
        ("[::ffff:10.0.3.140]:9000", "::ffff:10.0.3.140"),
        ("010.000.003.140:9000", "010.000.003.140"),
        ("jupyter.evil.example:9000", "jupyter.evil.example"),
    ];
    for (spec, target) in refused {
        let out = rig.dash_w(spec);
        out.expect_failure(&format!("-W {spec}"));
        assert!(
            out.stderr_str().contains("administratively prohibited")
                && out
                    .stderr_str()
                    .contains("is not a host this bastion forwards to"),
            "-W {spec}: {out}"
        );
        rig.wait_audit(spec, |l| {
            is(l, "tunnel.deny") && l["target"] == target && l["reason_code"] == "unknown_target"
        });
    }
    for decoy in &decoys {
        assert_eq!(decoy.connections().len(), 0, "a refused target was dialed");
    }
}

#[test]
fn unlisted_ports_and_other_groups_hosts_are_refused() {
    let rig = rig();
    let out = rig.dash_w("jupyter:23");
    out.expect_failure("-W jupyter:23");
    assert!(
        out.stderr_str()
            .contains("port 23 is not open on host 'jupyter' (allowed: 22, 8888, 9000)"),
        "{out}"
    );
    // A host outside alice's groups is refused exactly as a name or address that is no host
    // (echoing only what she typed), so refusals cannot map the inventory; the audit line
    // keeps the truth.
    for (hidden, free) in [
        ("opsbox:22", "nobox:22"),
        ("10.0.3.142:22", "10.0.3.143:22"),
    ] {
        let shown = |spec: &str| {
            let out = rig.dash_w(spec);
            out.expect_failure(&format!("-W {spec}"));
            let target = spec.rsplit_once(':').expect("host:port").0;
            let line = out
                .stderr_str()
                .lines()
                .find(|l| l.contains("open failed"))
                .unwrap_or_else(|| panic!("-W {spec}: no refusal: {out}"))
                .replace(target, "TARGET");
            line.split_once("open failed")
                .expect("open failed")
                .1
                .to_owned()
        };
        assert_eq!(shown(hidden), shown(free), "{hidden} against {free}");
        assert!(shown(hidden).contains("'TARGET' is not a host this bastion forwards to"));
        let target = hidden.rsplit_once(':').expect("host:port").0;
        rig.wait_audit(hidden, |l| {
            is(l, "tunnel.deny")
                && l["target"] == target
                && l["reason_code"] == "no_shared_group"
                && l["reason"] == "user 'alice' may not reach host 'opsbox'"
        });
    }
    rig.wait_audit("port", |l| {
        is(l, "tunnel.deny") && l["reason_code"] == "port_not_allowed"
    });

    // bob (RSA key, rsa-sha2 signatures) authenticates but may not reach alice's host.
    let bob = rig.client("bob", &rig.bob_key.private);
    let out = dash_w(&bob, &format!("jupyter:{SSH_PORT}"));
    out.expect_failure("bob to jupyter");
    assert!(
        out.stderr_str()
            .contains("'jupyter' is not a host this bastion forwards to"),
        "{out}"
    );
    rig.wait_audit("bob's refusal", |l| {
        is(l, "tunnel.deny") && l["reason"] == "user 'bob' may not reach host 'jupyter'"
    });
    rig.wait_audit("bob auth", |l| is(l, "auth.success") && l["user"] == "bob");
}

#[test]
fn a_target_that_refuses_fails_the_channel_with_connect_failed() {
    let rig = rig();
    // jupyter:8888 is allowed, but nothing listens there in this test.
    let out = rig.dash_w(&format!("jupyter:{JUPYTER_PORT}"));
    out.expect_failure("-W to a closed port");
    assert!(
        out.stderr_str()
            .contains("connect failed: connecting to host 'jupyter' failed"),
        "{out}"
    );
    rig.wait_audit("connect_failed", |l| {
        is(l, "tunnel.deny") && l["reason_code"] == "connect_failed"
    });
}

#[test]
fn unauthenticated_connections_are_capped_and_cut_at_login_grace() {
    let rig = rig_with(ServerOptions {
        login_grace: "2s",
        max_unauthenticated: 2,
        // Nobody is old enough to be evicted: the cap refuses (eviction: tests/lifecycle.rs).
        eviction_min_age: "1m",
        ..ServerOptions::default()
    });
    let bastion = addr(BASTION_CLIENT_ADDR, SSH_PORT);
    let quick = Duration::from_secs(5);
    let connect = || {
        let s = rig
            .topology
            .client
            .connect(bastion, quick)
            .expect("connect to gatehouse");
        s.set_read_timeout(Some(Duration::from_secs(8)))
            .expect("read timeout");
        s
    };
    let read_all = |s: &mut std::net::TcpStream| {
        let mut buf = Vec::new();
        let r = s.read_to_end(&mut buf);
        (r, buf)
    };
    // Two silent connections hold both pre-auth slots: each gets the server's version line.
    let mut held: Vec<_> = (0..2).map(|_| connect()).collect();
    for s in &mut held {
        let mut line = [0u8; 17];
        s.read_exact(&mut line).expect("version line");
        assert_eq!(&line, b"SSH-2.0-bastion\r\n");
    }
    // A third is closed at once, without a version line.
    let mut third = connect();
    let (r, buf) = read_all(&mut third);
    assert!(
        r.is_ok() && buf.is_empty(),
        "third connection: {r:?} {buf:?}"
    );
    rig.wait_audit("cap", |l| {
        is(l, "connection.refused") && l["reason"] == "too many unauthenticated connections"
    });
    // The silent ones are cut at the login grace time.
    let started = Instant::now();
    for s in &mut held {
        let _ = s.write_all(b"SSH-2.0-slowpoke\r\n");
        let (r, _) = read_all(s);
        assert!(r.is_ok(), "held connection not closed by the server: {r:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "cut after {:?}",
        started.elapsed()
    );
    let cut = rig
        .audit()
        .iter()
        .filter(|l| is(l, "connection.refused") && l["reason"] == "login grace time exceeded")
        .count();
    assert_eq!(cut, 2);
    // The slots are free again: a real login works.
    let out = rig.dash_w("jupyter:22");
    out.expect_success("ssh -W jupyter:22 after the flood");
}

#[test]
fn sigterm_drains_open_tunnels_then_exits_within_the_grace_period() {
    let mut rig = rig_with(ServerOptions {
        shutdown_grace: "2s",
        ..ServerOptions::default()
    });
    let _tunnel = rig.echo_tunnel(19000, b"ping");
    rig.wait_audit("tunnel open", |l| is(l, "tunnel.open"));

    let started = Instant::now();
    rig.gatehouse.signal(Signal::SIGTERM);
    let status = rig
        .gatehouse
        .wait_exit(Duration::from_secs(10))
        .expect("gatehouse exited");
    let took = started.elapsed();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        rig.gatehouse.logs()
    );
    // It waited for the open tunnel (grace 2 s), and no longer than the grace plus slack.
    assert!(
        took >= Duration::from_millis(1500),
        "exited after {took:?}: did not drain"
    );
    assert!(took < Duration::from_secs(8), "exited after {took:?}");
    assert!(
        rig.gatehouse.stderr().contains("grace period over"),
        "{}",
        rig.gatehouse.logs()
    );
    // (The harness's port probe opened and closed a tunnel of its own before this one.)
    let close = rig.wait_audit("tunnel.close of the held tunnel", |l| {
        is(l, "tunnel.close") && l["bytes_up"] == 4
    });
    assert_eq!(close["bytes_down"], 4, "{close}");
    // Cancelled with its connection, or finished first because the echo server mirrored the
    // EOF of the closing channel: either way it closed with the session.
    assert!(
        close["reason"] == "connection ended" || close["reason"] == "closed",
        "{close}"
    );
}

#[test]
fn sessions_are_closed_after_idle_timeout_but_not_while_bytes_move() {
    let rig = rig_with(ServerOptions {
        idle_timeout: "2s",
        ..ServerOptions::default()
    });
    let mut tunnel = rig.echo_tunnel(19001, b"\xff");
    let conn = &mut tunnel.stream;
    // Twice the idle timeout with a byte moving every 400 ms: the session stays.
    for i in 0..10u8 {
        conn.write_all(&[i]).expect("write through the tunnel");
        let mut back = [0u8; 1];
        conn.read_exact(&mut back)
            .expect("echo through a live session");
        assert_eq!(back[0], i);
        std::thread::sleep(Duration::from_millis(400));
    }
    assert!(
        tunnel.ssh.is_running(),
        "ssh -N exited while bytes moved:\n{}",
        tunnel.ssh.logs()
    );
    // Then silence: the bastion closes the session, and ssh -N exits.
    let exited = tunnel.ssh.wait_exit(Duration::from_secs(10));
    assert!(exited.is_some(), "session not closed after idling");
    let line = rig.wait_audit("session.close", |l| is(l, "session.close"));
    assert_eq!(line["reason"], "idle for 2s", "{line}");
}

/// Rewrites the config file with `edit` applied, then sends SIGHUP.
pub(crate) fn reload(rig: &Rig, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(&rig.config).expect("read config");
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit changed nothing");
    std::fs::write(&rig.config, edited).expect("write config");
    rig.gatehouse.signal(Signal::SIGHUP);
}

#[test]
fn sighup_reload_revokes_tunnels_and_sessions_and_refuses_a_broken_config() {
    let mut rig = rig();
    let alice_line = rig.alice_key.public_line.trim().to_owned();
    let mut tunnel = rig.echo_tunnel(19002, b"x");
    let mut byte = [0u8; 1];

    // 1. A broken file is refused; the running config stays and the tunnel keeps working.
    let good = std::fs::read_to_string(&rig.config).expect("read config");
    reload(&rig, |t| t.replace("[[hosts]]", "[[hosts]]\nbogus = 1"));
    let line = rig.wait_audit("reload refused", |l| is(l, "config.reload"));
    assert_eq!(line["result"], "refused", "{line}");
    assert!(
        line["detail"]
            .as_str()
            .unwrap_or("")
            .contains("unknown field `bogus`"),
        "{line}"
    );
    assert!(
        rig.gatehouse.is_running(),
        "a broken reload stopped the daemon"
    );
    tunnel
        .stream
        .write_all(b"y")
        .expect("write after the refused reload");
    tunnel
        .stream
        .read_exact(&mut byte)
        .expect("echo after the refused reload");
    std::fs::write(&rig.config, &good).expect("restore config");

    // 2. alice loses the group: her open tunnel to jupyter is closed, her session stays, and
    //    a new tunnel is refused.
    reload(&rig, |t| {
        t.replace(
            &format!("keys = [\"{alice_line}\"]\ngroups = [\"research\"]"),
            &format!("keys = [\"{alice_line}\"]\ngroups = [\"ops\"]"),
        )
    });
    let revoked = rig.wait_audit("tunnel.revoked", |l| is(l, "tunnel.revoked"));
    assert_eq!(
        revoked["reason"], "user 'alice' may not reach host 'jupyter'",
        "{revoked}"
    );
    assert_eq!(revoked["host"], "jupyter");
    let mut rest = Vec::new();
    let eof = tunnel.stream.read_to_end(&mut rest);
    assert!(
        eof.is_ok(),
        "tunnel not closed after the revocation: {eof:?}"
    );
    let close = rig.wait_audit("tunnel.close revoked", |l| {
        is(l, "tunnel.close") && l["reason"] == "revoked"
    });
    assert_eq!(close["bytes_up"], 2, "{close}");
    assert!(
        tunnel.ssh.is_running(),
        "the session itself must stay:\n{}",
        tunnel.ssh.logs()
    );
    let out = rig.dash_w(&format!("jupyter:{SINK_PORT}"));
    out.expect_failure("a new tunnel after losing the group");
    assert!(
        out.stderr_str()
            .contains("'jupyter' is not a host this bastion forwards to"),
        "{out}"
    );

    // 3. alice's key is removed: her session is disconnected.
    let mallory = KeyPair::ed25519(&rig.scratch, "mallory_key");
    reload(&rig, |t| t.replace(&alice_line, mallory.public_line.trim()));
    let line = rig.wait_audit("session.revoked", |l| is(l, "session.revoked"));
    assert_eq!(line["user"], "alice");
    assert_eq!(line["key"], rig.alice_key.fingerprint());
    assert!(
        tunnel.ssh.wait_exit(Duration::from_secs(10)).is_some(),
        "ssh -N still running after its key was revoked"
    );
    rig.wait_audit("session.close revoked", |l| {
        is(l, "session.close")
            && l["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("revoked: key "))
    });
    let applied = rig
        .audit()
        .iter()
        .filter(|l| is(l, "config.reload") && l["result"] == "applied")
        .count();
    assert_eq!(applied, 2);
}

#[test]
fn sigterm_without_tunnels_exits_promptly_and_the_host_key_survives_restarts() {
    let mut rig = rig_with(ServerOptions {
        shutdown_grace: "30s",
        ..ServerOptions::default()
    });
    let known_hosts = rig.scratch.join("known_hosts");
    let strict = |mode: &str| {
        let mut ssh = rig.alice.ssh();
        ssh.arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", &format!("StrictHostKeyChecking={mode}")])
            .args(["-W", "jupyter:22", "bastion"]);
        run_with_timeout(ssh, CMD_TIMEOUT)
    };
    strict("accept-new").expect_success("first connection records the host key");

    let started = Instant::now();
    rig.gatehouse.signal(Signal::SIGTERM);
    let status = rig
        .gatehouse
        .wait_exit(Duration::from_secs(10))
        .expect("gatehouse exited");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?} with nothing open",
        started.elapsed()
    );

    let key_file = rig.scratch.join("state/ssh_host_ed25519_key");
    let mode = std::fs::metadata(&key_file)
        .expect("host key file")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    let _again = start_gatehouse(&rig.topology, &rig.scratch, &rig.config, "gatehouse_again");
    strict("yes").expect_success("same host key after a restart");
}

#[test]
fn check_exits_64_naming_file_line_and_key() {
    let bad = crate::harness::repo_root().join("crates/gatehouse-config/tests/bad");
    let cases = [
        ("unknown_key.toml", ":4:1: ", "lisen"),
        ("bad_port.toml", ":15:14: ", "hosts[0].ports[1]"),
        ("bad_key.toml", ":14:5: ", "users[1].keys[0]"),
        ("bad_duration.toml", ":4:15: ", "server.login_grace"),
        ("syntax.toml", ":4:15: ", "server.login_grace"),
        (
            "metadata_host.toml",
            ":12:11: ",
            "instance metadata service",
        ),
    ];
    for (file, position, key) in cases {
        let path = bad.join(file);
        let mut cmd = Command::new(gatehouse_bin());
        cmd.arg("check").arg("--config").arg(&path);
        let out = run_with_timeout(cmd, CMD_TIMEOUT);
        assert_eq!(out.code(), Some(64), "{file}: {out}");
        let first = out.stderr_str().lines().next().unwrap_or("").to_owned();
        assert!(
            first.starts_with(&format!("{}{position}", path.display())),
            "{file}: {first}"
        );
        assert!(first.contains(key), "{file}: {first}");
    }
    // The shipped reference config is valid, and so is the demo.
    let mut cmd = Command::new(gatehouse_bin());
    cmd.arg("check")
        .arg("--config")
        .arg(crate::harness::repo_root().join("config/gatehouse.toml"));
    let out = run_with_timeout(cmd, CMD_TIMEOUT);
    out.expect_success("check config/gatehouse.toml");
    assert!(out.stdout_str().contains(": OK"), "{out}");
}

#[test]
fn hosts_lists_what_each_user_may_reach() {
    let scratch = Scratch::new();
    let alice = KeyPair::ed25519(&scratch, "alice_key");
    let bob = KeyPair::ed25519(&scratch, "bob_key");
    let config = write_config(&scratch, &alice, &bob, &ServerOptions::default());
    let mut cmd = Command::new(gatehouse_bin());
    cmd.arg("hosts")
        .arg("--config")
        .arg(&config)
        .args(["--user", "alice"]);
    let out = run_with_timeout(cmd, CMD_TIMEOUT);
    out.expect_success("gatehouse hosts --user alice");
    let text = out.stdout_str();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "alice (groups: research)", "{text}");
    assert!(
        lines[1].contains("jupyter") && lines[1].contains("10.0.3.140"),
        "{text}"
    );
    assert!(
        lines[1].trim_end().ends_with("ports 22, 8888, 9000"),
        "{text}"
    );
    assert_eq!(lines.len(), 2, "{text}");

    let mut cmd = Command::new(gatehouse_bin());
    cmd.arg("hosts")
        .arg("--config")
        .arg(&config)
        .args(["--user", "nobody"]);
    let out = run_with_timeout(cmd, CMD_TIMEOUT);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr_str().contains("no user named 'nobody'"), "{out}");
}

#[test]
fn demo_command_serves_the_embedded_config() {
    let topology = Topology::new();
    let scratch = Scratch::new();
    let state = scratch.join("demo-state");
    let mut cmd = topology.bastion.command(gatehouse_bin());
    cmd.arg("demo")
        .arg("--state-dir")
        .arg(&state)
        .args(["--listen", &addr(BASTION_CLIENT_ADDR, 2222).to_string()]);
    let mut demo = Daemon::spawn("demo", cmd, &scratch);
    let banner = demo.wait_for_stderr("gatehouse demo is up", START_TIMEOUT);
    assert!(banner.contains("ssh -F"), "{banner}");

    // Exactly the command the hint prints.
    let mut ssh = topology.client.command("ssh");
    ssh.arg("-F")
        .arg(state.join("ssh_config"))
        .args(["-o", "BatchMode=yes", "gatehouse-demo"]);
    let out = run_with_timeout(ssh, CMD_TIMEOUT);
    out.expect_failure("the demo gives no shell");
    assert!(out.stderr_str().contains("this is a jump host"), "{out}");
    assert!(out.stderr_str().contains("you may reach: example"), "{out}");
    demo.wait_for_stdout("\"event\":\"auth.success\"", Duration::from_secs(5));
    demo.terminate(Duration::from_secs(10));
    drop(topology);
}

/// `GET /health` on the health endpoint at `at`, from the client namespace: the whole answer.
pub(crate) fn health(topology: &Topology, at: SocketAddr) -> String {
    let mut stream = topology
        .client
        .connect(at, Duration::from_secs(5))
        .expect("connect to the health endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    stream
        .write_all(
            b"GET /health HTTP/1.1\r\nHost: bastion\r\nUser-Agent: ELB-HealthChecker/2.0\r\n\r\n",
        )
        .expect("write the probe");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    answer
}

/// A load balancer's health checks go to `server.health_listen`, never to the SSH port: 80
/// probes (HTTP and bare TCP) earn the balancer's address no penalty, where 20 bare probes
/// of the SSH port do (the negative control: that is how a balancer gets every client behind
/// it locked out). The endpoint keeps answering a penalized source, and says `503 draining`
/// as soon as shutdown begins, while open tunnels drain.
#[test]
fn health_checks_answer_on_their_own_port_and_earn_no_penalties() {
    let topology = Topology::new();
    let scratch = Scratch::new();
    let alice_key = KeyPair::ed25519(&scratch, "alice_key");
    let bob_key = KeyPair::ed25519(&scratch, "bob_key");
    let opts = ServerOptions {
        extra: "[penalties]\nenabled = true\n".into(),
        shutdown_grace: "3s",
        ..ServerOptions::default()
    };
    let config = write_config(&scratch, &alice_key, &bob_key, &opts);
    let health_at = addr(BASTION_CLIENT_ADDR, 8080);
    let text = std::fs::read_to_string(&config).expect("config").replacen(
        "[server]\n",
        &format!("[server]\nhealth_listen = \"{health_at}\"\n"),
        1,
    );
    std::fs::write(&config, text).expect("config");
    let mut rig = start_rig(topology, scratch, alice_key, bob_key, config);

    for _ in 0..40 {
        let answer = health(&rig.topology, health_at);
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("\r\n\r\nserving\n"),
            "{answer:?}"
        );
    }
    for _ in 0..40 {
        drop(
            rig.topology
                .client
                .connect(health_at, Duration::from_secs(5))
                .expect("a TCP health check"),
        );
    }
    assert!(rig
        .dash_w("jupyter:22")
        .stdout_str()
        .starts_with("SSH-2.0-"));
    let _tunnel = rig.echo_tunnel(19003, b"ping");
    assert!(
        !rig.audit().iter().any(|l| is(l, "source.penalized")),
        "{:?}",
        rig.audit()
    );

    // The negative control: the same bare probes against the SSH port.
    let ssh_at = addr(BASTION_CLIENT_ADDR, SSH_PORT);
    for _ in 0..20 {
        if let Ok(stream) = rig.topology.client.connect(ssh_at, Duration::from_secs(5)) {
            drop(stream);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    rig.wait_audit("the SSH-port probes penalize their source", |l| {
        is(l, "source.penalized")
    });
    assert!(health(&rig.topology, health_at).ends_with("serving\n"));

    // Silent connections from one source (here the bastion namespace's own address, not the
    // prober's) hold at most its share of the probe slots: a probe is answered while they
    // are all still open, instead of after their read deadline (2 s).
    let silent: Vec<_> = (0..300)
        .filter_map(|_| {
            rig.topology
                .bastion
                .connect(health_at, Duration::from_secs(5))
                .ok()
        })
        .collect();
    assert!(silent.len() >= 250, "{} silent connections", silent.len());
    let probe = std::time::Instant::now();
    let answer = health(&rig.topology, health_at);
    let took = probe.elapsed();
    assert!(answer.ends_with("serving\n"), "{answer:?}");
    // The first four (the source's share) are still held open by the endpoint, waiting for a
    // request: the probe did not wait for them to time out.
    for (i, stream) in silent.iter().take(4).enumerate() {
        stream.set_nonblocking(true).expect("nonblocking");
        let mut byte = [0u8; 1];
        match (&*stream).read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!(
                "silent connection {i} was answered or closed before the probe ({other:?}, \
                 the probe took {took:?})"
            ),
        }
    }
    eprintln!("health probe answered in {took:?} behind 300 silent connections");
    drop(silent);

    // Shutdown: new connections are sent elsewhere at once, the open tunnel drains.
    rig.gatehouse.signal(Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let answer = health(&rig.topology, health_at);
        if answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n") {
            assert!(answer.ends_with("draining\n"), "{answer:?}");
            break;
        }
        assert!(Instant::now() < deadline, "still {answer:?} after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = rig
        .gatehouse
        .wait_exit(Duration::from_secs(10))
        .expect("gatehouse exited");
    assert!(status.success(), "{}", rig.gatehouse.logs());
    assert!(!rig.gatehouse.stderr().contains("panicked"));
}
