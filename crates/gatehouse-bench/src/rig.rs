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
/// The siege's second listener, on the bastion namespace's loopback: attackers bind any
/// 127.x.y.z there without setting up addresses (see `siege`).
pub const LOOPBACK_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), SSH_PORT);
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

/// How a bastion treats connections that have not authenticated yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preauth {
    /// Limits, grace times and penalties raised so that a measurement's thousands of logins
    /// from one address are never refused (measurements 1 to 6).
    Raised,
    /// The daemon's own defaults (gatehouse's, and Debian's for sshd), plus a listener on the
    /// bastion namespace's loopback ([`LOOPBACK_LISTEN`]): the siege.
    Defaults,
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
    /// The benchmark's user CA (trusted by both bastions) and a key it certified for
    /// [`TEST_USER`] (`<key>-cert.pub` beside it, which ssh picks up by itself).
    pub ca: KeyPair,
    pub cert_key: KeyPair,
    pub gatehouse_bin: PathBuf,
    /// The gatehouse config (written once, with the limits this gatehouse version knows).
    pub gatehouse_config: PathBuf,
    /// The same with the pre-authentication settings left at their defaults ([`Preauth`]).
    pub gatehouse_siege_config: PathBuf,
    /// Extra environment for the gatehouse process.
    pub gatehouse_env: Vec<(String, String)>,
}

impl Env {
    pub fn new(gatehouse_bin: PathBuf) -> anyhow::Result<Env> {
        let scratch = Scratch::new();
        let key = KeyPair::ed25519(&scratch, "bench_key");
        let ca = KeyPair::ed25519(&scratch, "bench_ca");
        let cert_key = KeyPair::ed25519(&scratch, "bench_cert_key");
        certify(&ca, &cert_key)?;
        scratch.subdir("gatehouse-state");
        let gatehouse_config =
            write_gatehouse_config(&scratch, &key, &ca, &gatehouse_bin, Preauth::Raised)?;
        let gatehouse_siege_config =
            write_gatehouse_config(&scratch, &key, &ca, &gatehouse_bin, Preauth::Defaults)?;
        Ok(Env {
            scratch,
            key,
            ca,
            cert_key,
            gatehouse_bin,
            gatehouse_config,
            gatehouse_siege_config,
            gatehouse_env: Vec::new(),
        })
    }
}

/// The gatehouse config. With [`Preauth::Raised`], limits and penalties that would refuse a
/// benchmark's thousands of logins from one address are raised (if this gatehouse version has
/// them: the richer file is tried with `gatehouse check` first). With [`Preauth::Defaults`],
/// every pre-authentication setting is left out (so at its default) and the bastion also
/// listens on [`LOOPBACK_LISTEN`]; the post-authentication limits are raised as before.
fn write_gatehouse_config(
    scratch: &Scratch,
    key: &KeyPair,
    ca: &KeyPair,
    bin: &Path,
    preauth: Preauth,
) -> anyhow::Result<PathBuf> {
    // The certificate logins' CA, in the measurements' config only: with a CA, a key the
    // directory does not know is decided after it signs, which would change what the siege's
    // attackers cost.
    let trusted = match preauth {
        Preauth::Raised => format!(
            "\n[[trusted_user_ca]]\nname = \"bench-ca\"\nkeys = [\"{}\"]\n",
            ca.public_line.trim()
        ),
        Preauth::Defaults => String::new(),
    };
    let (name, listen, server_preauth, per_source, penalties) = match preauth {
        Preauth::Raised => (
            "gatehouse.toml",
            format!("\"{}\"", addr(BASTION_CLIENT_ADDR, SSH_PORT)),
            "login_grace = \"60s\"\nmax_unauthenticated = 2048\n",
            "per_source_max_unauthenticated = 2048\n",
            "\n[penalties]\nenabled = false\n",
        ),
        Preauth::Defaults => (
            "gatehouse-siege.toml",
            format!(
                "\"{}\", \"{LOOPBACK_LISTEN}\"",
                addr(BASTION_CLIENT_ADDR, SSH_PORT)
            ),
            "",
            "",
            "",
        ),
    };
    let base = format!(
        r#"[server]
listen = [{listen}]
host_key = "{dir}/gatehouse-state/ssh_host_ed25519_key"
{server_preauth}idle_timeout = "1h"
connect_timeout = "5s"
shutdown_grace = "1s"

[audit]
file = "{audit}"

[[users]]
name = "{TEST_USER}"
keys = ["{key}"]
groups = ["bench"]

[[hosts]]
name = "{PRIVATE_HOST}"
address = "{PRIVATE_ADDR}"
groups = ["bench"]
ports = [{SSH_PORT}, {DISCARD_PORT}, {CLOSE_PORT}, {STALL_PORT}]
{trusted}"#,
        dir = scratch.path().display(),
        audit = gatehouse_audit_file(scratch).display(),
        key = key.public_line.trim(),
    );
    let limits = format!(
        "\n[limits]\nmax_sessions_per_user = 100000\nmax_channels_per_connection = 1024\n\
         max_tunnels = 100000\n{per_source}{penalties}"
    );
    let rich = scratch.write(name, format!("{base}{limits}"));
    let out = Command::new(bin)
        .arg("check")
        .arg("--config")
        .arg(&rich)
        .output()
        .with_context(|| format!("run {} check", bin.display()))?;
    if out.status.success() {
        return Ok(rich);
    }
    let plain = scratch.write(name, base);
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

/// Certifies `key` with `ca` for [`TEST_USER`], a day long, port forwarding only (what a
/// jump host needs), as `<key>-cert.pub`.
fn certify(ca: &KeyPair, key: &KeyPair) -> anyhow::Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&ca.private)
        .args(["-I", "bench", "-n", TEST_USER, "-V", "-5m:+1d"])
        .args(["-O", "clear", "-O", "permit-port-forwarding"])
        .arg(&key.public)
        .output()
        .context("run ssh-keygen -s")?;
    if !out.status.success() {
        bail!("ssh-keygen -s: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The audit file of both gatehouse configs.
fn gatehouse_audit_file(scratch: &Scratch) -> PathBuf {
    scratch.join("gatehouse-audit.jsonl")
}

/// An OpenSSH client in `ns` for the bastion at `bastion`, with `cipher` and the benchmark's
/// key exchange, and the private host as a target.
fn ssh_client(ns: &Netns, env: &Env, bastion: SocketAddr, cipher: &str) -> SshClient {
    ssh_client_with(ns, env, bastion, cipher, &env.key)
}

/// [`ssh_client`] with `key` as the identity (its certificate, if any, comes with it).
fn ssh_client_with(
    ns: &Netns,
    env: &Env,
    bastion: SocketAddr,
    cipher: &str,
    key: &KeyPair,
) -> SshClient {
    let mut c = SshClient::new(ns, &env.scratch, bastion, TEST_USER, &key.private);
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
    /// The pre-authentication settings the bastion runs with now.
    preauth: Preauth,
    /// How many times the bastion was started (names its logs and host key).
    starts: u32,
    /// OpenSSH client configs: aes128-gcm and chacha20-poly1305.
    pub gcm: SshClient,
    pub chacha: SshClient,
    /// aes128-gcm, logging in with the certified key instead of the plain one.
    pub cert: SshClient,
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
        let client_side = addr(BASTION_CLIENT_ADDR, SSH_PORT);
        let mut side = Side {
            kind,
            server: None,
            preauth: Preauth::Raised,
            starts: 0,
            gcm: ssh_client(&topology.client, env, client_side, AES_GCM),
            chacha: ssh_client(&topology.client, env, client_side, CHACHA),
            cert: ssh_client_with(&topology.client, env, client_side, AES_GCM, &env.cert_key),
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
        let name = self.server_name();
        let gatehouse_config = match self.preauth {
            Preauth::Raised => &env.gatehouse_config,
            Preauth::Defaults => &env.gatehouse_siege_config,
        };
        self.server = Some(match self.kind {
            Kind::Gatehouse => {
                // 10,000 sessions need more descriptors than the default 1024: raise the
                // soft limit to the hard one (raising the hard one needs CAP_SYS_RESOURCE).
                let mut cmd = bastion.command("sh");
                cmd.args(["-c", "ulimit -n \"$(ulimit -Hn)\"; exec \"$0\" \"$@\""])
                    .arg(&env.gatehouse_bin)
                    .arg("serve")
                    .arg("--config")
                    .arg(gatehouse_config)
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
                let ca_keys = env
                    .scratch
                    .write("bench_ca_keys", env.ca.public_line.as_bytes());
                let config = SshdConfig::jump_host(addr(BASTION_CLIENT_ADDR, SSH_PORT), &permit)
                    .authorize(&env.key.public_line)
                    .config_line(&format!("TrustedUserCAKeys {}", ca_keys.display()));
                let config = match self.preauth {
                    // The load generator keeps up to 64 handshakes in flight; 100 tunnels
                    // log in at once.
                    Preauth::Raised => config.config_line("MaxStartups 1000"),
                    // Debian's (and OpenSSH's) defaults, over the harness's test values
                    // (extra lines come first, and sshd keeps the first value it reads).
                    Preauth::Defaults => config
                        .config_line(&format!("ListenAddress {LOOPBACK_LISTEN}"))
                        .config_line("MaxStartups 10:30:100")
                        .config_line("LoginGraceTime 120"),
                };
                Server::OpenSsh(config.start(bastion, &env.scratch, &name))
            }
        });
    }

    /// The name of the running bastion's process guard (and of its log files).
    fn server_name(&self) -> String {
        format!("{}-bastion-{}", self.kind.label(), self.starts)
    }

    /// Stops the bastion and starts a fresh one (no heap grown by earlier measurements).
    pub fn restart(&mut self, env: &Env) {
        self.restart_with(env, self.preauth);
    }

    /// Stops the bastion and starts a fresh one with `preauth`.
    pub fn restart_with(&mut self, env: &Env, preauth: Preauth) {
        self.server = None;
        sink::wait(Duration::from_secs(10), || self.bastion_pids().is_empty());
        self.preauth = preauth;
        self.start_server(env);
        thread::sleep(Duration::from_millis(300));
    }

    /// An OpenSSH client (aes128-gcm) run in the bastion namespace, for the bastion's
    /// loopback listener ([`Preauth::Defaults`] only).
    pub fn loopback_client(&self, env: &Env) -> SshClient {
        ssh_client(&self.topology.bastion, env, LOOPBACK_LISTEN, AES_GCM)
    }

    /// The bastion namespace.
    pub fn bastion_ns(&self) -> &Netns {
        &self.topology.bastion
    }

    /// Every file the running bastion logs or audits to: its stdout and stderr (sshd runs
    /// with `-e`, gatehouse logs to stderr), and gatehouse's audit file.
    pub fn log_files(&self, env: &Env) -> Vec<PathBuf> {
        let name = self.server_name();
        let mut files = vec![
            env.scratch.join(format!("{name}.stdout")),
            env.scratch.join(format!("{name}.stderr")),
        ];
        if self.kind == Kind::Gatehouse {
            files.push(gatehouse_audit_file(&env.scratch));
        }
        files
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
