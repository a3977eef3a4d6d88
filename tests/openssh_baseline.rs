//! Self-tests of the harness, with OpenSSH's sshd as the bastion: the topology isolates the
//! private subnet, and the client tooling, the Jupyter probe and the byte helpers work through a
//! real jump host. So when a gatehouse test fails, it is gatehouse that failed.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::harness::{
    jupyter_check, run_feeding, run_with_timeout, Daemon, Digest, Jupyter, KeyPair, Pattern,
    Scratch, SshClient, Sshd, SshdConfig, TcpServer, Topology, BASTION_CLIENT_ADDR, PRIVATE_ADDR,
    PRIVATE_ADDR_2, TEST_USER,
};

const SSH_PORT: u16 = 22;
const JUPYTER_PORT: u16 = 8888;
const SINK_PORT: u16 = 9000;
/// A port the jump host's `PermitOpen` does not list.
const UNLISTED_PORT: u16 = 9001;
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

fn addr(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// The namespaces, an OpenSSH jump host in the bastion namespace, an OpenSSH private host on
/// 10.0.3.140:22, and a client configured for both. Fields drop in order: processes first, the
/// namespaces last.
struct Rig {
    client: SshClient,
    private_sshd: Sshd,
    jump_host: Sshd,
    scratch: Scratch,
    topology: Topology,
}

fn rig() -> Rig {
    let topology = Topology::new();
    let scratch = Scratch::new();
    let key = KeyPair::ed25519(&scratch, "client_key");
    let permit_open = [
        addr(PRIVATE_ADDR, SSH_PORT),
        addr(PRIVATE_ADDR, JUPYTER_PORT),
        addr(PRIVATE_ADDR, SINK_PORT),
        addr(PRIVATE_ADDR_2, SINK_PORT),
    ]
    .map(|a| a.to_string());
    let jump_host = SshdConfig::jump_host(addr(BASTION_CLIENT_ADDR, SSH_PORT), &permit_open)
        .authorize(&key.public_line)
        .start(&topology.bastion, &scratch, "jump_sshd");
    let private_sshd = SshdConfig::private_host(addr(PRIVATE_ADDR, SSH_PORT))
        .authorize(&key.public_line)
        .start(&topology.private, &scratch, "private_sshd");
    let client = SshClient::new(
        &topology.client,
        &scratch,
        jump_host.addr(),
        TEST_USER,
        &key.private,
    );
    Rig {
        client,
        private_sshd,
        jump_host,
        scratch,
        topology,
    }
}

#[test]
fn jump_to_private_host_runs_commands() {
    let mut rig = rig();
    let mut ssh = rig.client.ssh();
    ssh.args([
        "-J",
        "bastion",
        &format!("{TEST_USER}@{PRIVATE_ADDR}"),
        "true",
    ]);
    run_with_timeout(ssh, CMD_TIMEOUT).expect_success("ssh -J bastion ghtest@10.0.3.140 true");

    // The command really ran on the private host, as the test user.
    let mut ssh = rig.client.ssh();
    ssh.args([
        "-J",
        "bastion",
        &format!("{TEST_USER}@{PRIVATE_ADDR}"),
        "id -un",
    ]);
    let out = run_with_timeout(ssh, CMD_TIMEOUT);
    out.expect_success("ssh -J ... id -un");
    assert_eq!(out.stdout_str().trim(), TEST_USER);

    // The private sshd logged the login; the jump host logged the forwarding.
    rig.private_sshd
        .daemon()
        .wait_for_stderr("Accepted publickey for ghtest", Duration::from_secs(5));
    // The guard stops sshd within a bound (terminate panics otherwise).
    rig.jump_host.daemon().terminate(Duration::from_secs(10));
}

#[test]
fn scp_through_jump_host_round_trips_a_file() {
    let rig = rig();
    let user = rig.private_sshd.user().clone();
    let remote_dir = rig.scratch.owned_subdir("private_home", user.uid, user.gid);
    let data = Pattern::new(3 * 1024 * 1024 + 17, 7).to_vec();
    let local = rig.scratch.write("upload.bin", &data);
    let remote = format!(
        "{TEST_USER}@{PRIVATE_ADDR}:{}/copy.bin",
        remote_dir.display()
    );

    let mut scp = rig.client.scp();
    scp.args(["-J", "bastion"]).arg(&local).arg(&remote);
    run_with_timeout(scp, CMD_TIMEOUT).expect_success("scp upload via the jump host");

    let back = rig.scratch.join("download.bin");
    let mut scp = rig.client.scp();
    scp.args(["-J", "bastion"]).arg(&remote).arg(&back);
    run_with_timeout(scp, CMD_TIMEOUT).expect_success("scp download via the jump host");

    assert_eq!(
        std::fs::read(remote_dir.join("copy.bin")).expect("read the uploaded copy"),
        data
    );
    assert_eq!(std::fs::read(&back).expect("read the download"), data);
}

#[test]
fn client_cannot_reach_private_subnet_directly() {
    let rig = rig();
    let topology = &rig.topology;
    let quick = Duration::from_secs(2);

    // Positive controls: the network itself works on each side of the bastion.
    topology
        .client
        .connect(addr(BASTION_CLIENT_ADDR, SSH_PORT), quick)
        .expect("client ns reaches the bastion's sshd");
    topology
        .bastion
        .connect(addr(PRIVATE_ADDR, SSH_PORT), quick)
        .expect("bastion ns reaches the private sshd");

    // The client cannot reach either private address without a bastion process.
    for ip in [PRIVATE_ADDR, PRIVATE_ADDR_2] {
        let target = addr(ip, SSH_PORT);
        let result = topology.client.connect(target, quick);
        assert!(
            result.is_err(),
            "client ns connected straight to {target}: isolation broken"
        );
    }

    // And why: no default route anywhere, no forwarding in the bastion namespace.
    for ns in [&topology.client, &topology.bastion, &topology.private] {
        let mut ip = Command::new("ip");
        ip.args(["-n", ns.name(), "route", "show", "default"]);
        let out = run_with_timeout(ip, CMD_TIMEOUT);
        out.expect_success("ip route show default");
        assert_eq!(
            out.stdout_str().trim(),
            "",
            "default route in {}",
            ns.name()
        );
    }
    let mut sysctl = topology.bastion.command("sysctl");
    sysctl.args(["-n", "net.ipv4.ip_forward"]);
    let out = run_with_timeout(sysctl, CMD_TIMEOUT);
    out.expect_success("sysctl in the bastion ns");
    assert_eq!(out.stdout_str().trim(), "0", "ip_forward in the bastion ns");
}

#[test]
fn openssh_jump_host_refuses_shells_and_unlisted_targets() {
    let rig = rig();
    let _sink = TcpServer::digest(&rig.topology.private, addr(PRIVATE_ADDR, UNLISTED_PORT), 0);

    let mut ssh = rig.client.ssh();
    ssh.args(["bastion", "true"]);
    let out = run_with_timeout(ssh, CMD_TIMEOUT);
    out.expect_failure("a command on the jump host");
    assert!(
        out.stderr_str().contains("only forwards connections"),
        "unexpected refusal: {out}"
    );

    let mut ssh = rig.client.ssh();
    ssh.args([
        "-W",
        &addr(PRIVATE_ADDR, UNLISTED_PORT).to_string(),
        "bastion",
    ]);
    run_with_timeout(ssh, CMD_TIMEOUT).expect_failure("-W to a port PermitOpen does not list");
}

#[test]
fn jupyter_through_local_forward() {
    let rig = rig();
    let jupyter = Jupyter::start(
        &rig.topology.private,
        &rig.scratch,
        addr(PRIVATE_ADDR, JUPYTER_PORT),
    );
    let local_port = 18888;
    let _tunnel: Daemon = rig.client.local_forward(
        &rig.scratch,
        "ssh_tunnel",
        local_port,
        &PRIVATE_ADDR.to_string(),
        JUPYTER_PORT,
        "bastion",
    );
    let out = jupyter_check(
        &rig.topology.client,
        &format!("http://127.0.0.1:{local_port}"),
        jupyter.token(),
        Duration::from_secs(90),
    );
    out.expect_success("jupyter_check.py through ssh -L via the OpenSSH jump host");
    let summary = out.stdout_str();
    eprintln!("jupyter_check: {}", summary.trim());
    assert!(summary.contains("\"ok\": true"), "summary: {summary}");
    assert!(summary.contains("\"result\": \"42\""), "summary: {summary}");

    // A wrong token must be refused (the probe checks real answers, not just connectivity).
    let out = jupyter_check(
        &rig.topology.client,
        &format!("http://127.0.0.1:{local_port}"),
        "wrong-token",
        Duration::from_secs(30),
    );
    out.expect_failure("jupyter_check.py with a wrong token");
    eprintln!("jupyter_check, wrong token: {}", out.stdout_str().trim());
    assert!(out.stdout_str().contains("403"), "{out}");
}

#[test]
fn w_moves_256_mib_intact() {
    let rig = rig();
    let sink = TcpServer::digest(&rig.topology.private, addr(PRIVATE_ADDR, SINK_PORT), 0);
    let mut ssh = rig.client.ssh();
    ssh.args(["-W", &sink.addr().to_string(), "bastion"]);
    let (out, sent) = run_feeding(ssh, Pattern::new(256 << 20, 42), Duration::from_secs(180));
    out.expect_success("ssh -W with 256 MiB");
    assert_eq!(sent.len, 256 << 20, "the whole pattern went into ssh");

    let (reply, rest) =
        Digest::parse_reply(&out.stdout).unwrap_or_else(|| panic!("no digest reply: {out}"));
    assert_eq!(
        reply, sent,
        "what the sink received vs what the client sent"
    );
    assert!(rest.is_empty());
    let received = sink.wait_for_connections(1, Duration::from_secs(10));
    assert_eq!(received, vec![Ok(sent)]);
    eprintln!("256 MiB through ssh -W in {:.2?}", out.elapsed);
}

#[test]
fn half_close_server_answers_after_client_eof() {
    let rig = rig();
    // The server only starts sending after it saw EOF, then sends 4 MiB more and closes.
    let reply_len = 4 << 20;
    let sink = TcpServer::digest(
        &rig.topology.private,
        addr(PRIVATE_ADDR_2, SINK_PORT),
        reply_len,
    );
    let mut ssh = rig.client.ssh();
    ssh.args(["-W", &sink.addr().to_string(), "bastion"]);
    let (out, sent) = run_feeding(ssh, Pattern::new(100_000, 3), CMD_TIMEOUT);
    out.expect_success("ssh -W with a half-closed stream");

    let (reply, rest) =
        Digest::parse_reply(&out.stdout).unwrap_or_else(|| panic!("no digest reply: {out}"));
    assert_eq!(reply, sent);
    assert_eq!(Digest::of(rest), Pattern::new(reply_len, 1).digest());

    // Echo mode mirrors the half-close too.
    let echo = TcpServer::echo(&rig.topology.private, addr(PRIVATE_ADDR, SINK_PORT));
    let mut ssh = rig.client.ssh();
    ssh.args(["-W", &echo.addr().to_string(), "bastion"]);
    let (out, sent) = run_feeding(ssh, Pattern::new(1 << 20, 9), CMD_TIMEOUT);
    out.expect_success("ssh -W to the echo server");
    assert_eq!(Digest::of(&out.stdout), sent);
    drop(sink);
}

#[test]
fn timeouts_kill_the_whole_process_group() {
    // Killed at the deadline, background child included (it holds the stdout pipe).
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "sleep 30 & echo started; sleep 30"]);
    let out = run_with_timeout(cmd, Duration::from_millis(500));
    assert!(out.timed_out(), "{out}");
    assert_eq!(out.stdout_str(), "started\n");

    // Exits at once but leaves a child holding stdout: the output is still collected, and the
    // leftover killed, within a bound.
    let started = std::time::Instant::now();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "sleep 30 & echo done"]);
    let out = run_with_timeout(cmd, Duration::from_secs(10));
    out.expect_success("sh with a background child");
    assert_eq!(out.stdout_str(), "done\n");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
}
