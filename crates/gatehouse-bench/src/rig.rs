//! The two bastions under test, each in a topology of its own (client ns -> bastion ns ->
//! private ns), so that "every process in the bastion namespace" is exactly one bastion.
//!
//! Both sides get the same targets in their private namespace: OpenSSH sshd on port 22 (for
//! full `ssh -J` logins), a discard sink, a closing server and a server that never reads.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::harness::{
    Daemon, KeyPair, Netns, Scratch, SshClient, Sshd, SshdConfig, Topology, BASTION_CLIENT_ADDR,
    PRIVATE_ADDR, TEST_USER,
};
use crate::sink::{self, Mode, Sink};
use gatehouse_bench::procfs;

pub const SSH_PORT: u16 = 22;
pub const DISCARD_PORT: u16 = 9000;
pub const CLOSE_PORT: u16 = 9001;
pub const STALL_PORT: u16 = 9002;
/// The inventory name / host alias of the private host.
pub const PRIVATE_HOST: &str = "private";

pub const AES_GCM: &str = "aes128-gcm@openssh.com";
pub const CHACHA: &str = "chacha20-poly1305@openssh.com";
/// Both bastions are offered the same key exchange: OpenSSH 9.2's default is the post-quantum
/// sntrup761 hybrid, which gatehouse does not implement (it has mlkem768, which the 9.2 client
/// lacks), so without this the comparison would be of two different key exchanges.
pub const KEX: &str = "curve25519-sha256";

pub fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// Which bastion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gatehouse,
    OpenSsh,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Gatehouse => "gatehouse",
            Kind::OpenSsh => "openssh",
        }
    }
}

/// What both sides share: the scratch directory, the user's key, the gatehouse binary.
pub struct Env {
    pub scratch: Scratch,
    pub key: KeyPair,
    pub gatehouse_bin: PathBuf,
    /// The gatehouse config (written once, with the limits this gatehouse version knows).
    pub gatehouse_config: PathBuf,
    /// Extra environment for the gatehouse process.
    pub gatehouse_env: Vec<(String, String)>,
}

impl Env {
    pub fn new(gatehouse_bin: PathBuf) -> anyhow::Result<Env> {
        let scratch = Scratch::new();
        let key = KeyPair::ed25519(&scratch, "bench_key");
        let gatehouse_config = write_gatehouse_config(&scratch, &key, &gatehouse_bin)?;
        Ok(Env {
            scratch,
            key,
            gatehouse_bin,
            gatehouse_config,
            gatehouse_env: Vec::new(),
        })
    }
}

/// The gatehouse config. Limits and penalties that would refuse a benchmark's thousands of
/// logins from one address are raised (if this gatehouse version has them: the richer file
/// is tried with `gatehouse check` first).
fn write_gatehouse_config(scratch: &Scratch, key: &KeyPair, bin: &Path) -> anyhow::Result<PathBuf> {
    scratch.subdir("gatehouse-state");
    let base = format!(
        r#"[server]
listen = ["{listen}"]
host_key = "{dir}/gatehouse-state/ssh_host_ed25519_key"
login_grace = "60s"
max_unauthenticated = 2048
idle_timeout = "1h"
connect_timeout = "5s"
shutdown_grace = "1s"

[audit]
file = "{dir}/gatehouse-audit.jsonl"

[[users]]
name = "{TEST_USER}"
keys = ["{key}"]
groups = ["bench"]

[[hosts]]
name = "{PRIVATE_HOST}"
address = "{PRIVATE_ADDR}"
groups = ["bench"]
ports = [{SSH_PORT}, {DISCARD_PORT}, {CLOSE_PORT}, {STALL_PORT}]
"#,
        listen = addr(BASTION_CLIENT_ADDR, SSH_PORT),
        dir = scratch.path().display(),
        key = key.public_line.trim(),
    );
    let limits = "\n[limits]\nmax_sessions_per_user = 100000\nmax_channels_per_connection = 1024\n\
                  max_tunnels = 100000\nper_source_max_unauthenticated = 2048\n\n\
                  [penalties]\nenabled = false\n";
    let rich = scratch.write("gatehouse.toml", format!("{base}{limits}"));
    let out = Command::new(bin)
        .arg("check")
        .arg("--config")
        .arg(&rich)
        .output()
        .with_context(|| format!("run {} check", bin.display()))?;
    if out.status.success() {
        return Ok(rich);
    }
    let plain = scratch.write("gatehouse.toml", base);
    let out = Command::new(bin)
        .arg("check")
        .arg("--config")
        .arg(&plain)
        .output()?;
    if !out.status.success() {
        bail!(
            "gatehouse check rejects the benchmark config:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(plain)
}

/// The running bastion; held for its drop (which kills it).
enum Server {
    Gatehouse(#[allow(dead_code)] Daemon),
    OpenSsh(#[allow(dead_code)] Sshd),
}

/// One bastion with its own namespaces and targets. Fields drop in order: the processes
/// first, the namespaces last.
pub struct Side {
    pub kind: Kind,
    server: Option<Server>,
    /// How many times the bastion was started (names its logs and host key).
    starts: u32,
    /// OpenSSH client configs: aes128-gcm and chacha20-poly1305.
    pub gcm: SshClient,
    pub chacha: SshClient,
    _private_sshd: Sshd,
    pub discard: Sink,
    /// Holds the closing target up (logins dial it).
    pub _close: Sink,
    pub stall: Sink,
    pub topology: Topology,
}

impl Side {
    pub fn new(kind: Kind, env: &Env) -> anyhow::Result<Side> {
        let topology = Topology::new();
        let private = &topology.private;
        let discard = Sink::start(private, addr(PRIVATE_ADDR, DISCARD_PORT), Mode::Discard)?;
        let close = Sink::start(private, addr(PRIVATE_ADDR, CLOSE_PORT), Mode::Close)?;
        let stall = Sink::start(private, addr(PRIVATE_ADDR, STALL_PORT), Mode::Stall)?;
        let private_sshd = SshdConfig::private_host(addr(PRIVATE_ADDR, SSH_PORT))
            .authorize(&env.key.public_line)
            .start(
                private,
                &env.scratch,
                &format!("{}-private-sshd", kind.label()),
            );
        let client = |cipher: &str| {
            let mut c = SshClient::new(
                &topology.client,
                &env.scratch,
                addr(BASTION_CLIENT_ADDR, SSH_PORT),
                TEST_USER,
                &env.key.private,
            );
            c.option("Ciphers", cipher)
                .option("KexAlgorithms", KEX)
                .add_target(
                    PRIVATE_HOST,
                    &PRIVATE_ADDR.to_string(),
                    SSH_PORT,
                    TEST_USER,
                    None,
                );
            c
        };
        let mut side = Side {
            kind,
            server: None,
            starts: 0,
            gcm: client(AES_GCM),
            chacha: client(CHACHA),
            _private_sshd: private_sshd,
            discard,
            _close: close,
            stall,
            topology,
        };
        side.start_server(env);
        Ok(side)
    }

    fn start_server(&mut self, env: &Env) {
        let bastion = &self.topology.bastion;
        self.starts += 1;
        let name = format!("{}-bastion-{}", self.kind.label(), self.starts);
        self.server = Some(match self.kind {
            Kind::Gatehouse => {
                // 10,000 sessions need more descriptors than the default 1024: raise the
                // soft limit to the hard one (raising the hard one needs CAP_SYS_RESOURCE).
                let mut cmd = bastion.command("sh");
                cmd.args(["-c", "ulimit -n \"$(ulimit -Hn)\"; exec \"$0\" \"$@\""])
                    .arg(&env.gatehouse_bin)
                    .arg("serve")
                    .arg("--config")
                    .arg(&env.gatehouse_config)
                    .envs(env.gatehouse_env.iter().map(|(k, v)| (k, v)));
                let mut daemon = Daemon::spawn(&name, cmd, &env.scratch);
                daemon.wait_for_stderr("gatehouse listening", Duration::from_secs(20));
                Server::Gatehouse(daemon)
            }
            Kind::OpenSsh => {
                let permit: Vec<String> = [SSH_PORT, DISCARD_PORT, CLOSE_PORT, STALL_PORT]
                    .iter()
                    .map(|p| format!("{PRIVATE_ADDR}:{p}"))
                    .collect();
                let sshd = SshdConfig::jump_host(addr(BASTION_CLIENT_ADDR, SSH_PORT), &permit)
                    .authorize(&env.key.public_line)
                    // The load generator keeps up to 64 handshakes in flight; 100 tunnels
                    // log in at once.
                    .config_line("MaxStartups 1000")
                    .start(bastion, &env.scratch, &name);
                Server::OpenSsh(sshd)
            }
        });
    }

    /// Stops the bastion and starts a fresh one (no heap grown by earlier measurements).
    pub fn restart(&mut self, env: &Env) {
        self.server = None;
        sink::wait(Duration::from_secs(10), || self.bastion_pids().is_empty());
        self.start_server(env);
        thread::sleep(Duration::from_millis(300));
    }

    /// Where the bastion listens.
    pub fn bastion_addr(&self) -> SocketAddr {
        addr(BASTION_CLIENT_ADDR, SSH_PORT)
    }

    pub fn client_ns(&self) -> &Netns {
        &self.topology.client
    }

    /// Every process in the bastion namespace: gatehouse, or sshd's listener and its
    /// per-connection children.
    pub fn bastion_pids(&self) -> Vec<u32> {
        self.topology.bastion.pids()
    }

    /// Waits (bounded) until the bastion is back to its listener alone, then returns the CPU
    /// ticks of everything it ever ran (see `procfs`).
    pub fn quiescent_cpu_ticks(&self) -> u64 {
        sink::wait(Duration::from_secs(5), || self.bastion_pids().len() <= 1);
        // An exited child is not listed while it is a zombie, and its time reaches the
        // listener's cutime only once reaped: give the listener a moment to reap.
        thread::sleep(Duration::from_millis(150));
        procfs::cpu_ticks_sum(&self.bastion_pids())
    }
}
