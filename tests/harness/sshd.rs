//! Throwaway OpenSSH servers (`/usr/sbin/sshd -D -e`) with their own config, host key, pid file
//! and `authorized_keys`, in two flavours:
//! - a *private host*: an ordinary server the test user can run commands and scp/sftp on;
//! - a *jump host*: OpenSSH configured as a strict bastion (local forwarding only, to a
//!   `PermitOpen` list; no TTY, no shell or command, no agent/X11/stream-local forwarding). It is
//!   the comparison bastion for gatehouse, and the harness's own self-test bastion.
//!
//! Both let only the test user [`TEST_USER`] in, by public key.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::keys::{KeyPair, KeyType};
use super::netns::Netns;
use super::process::Daemon;
use super::scratch::Scratch;

/// The unprivileged user every test logs in as (created by `tests/run`, password field `*`).
pub const TEST_USER: &str = "ghtest";

/// OpenSSH's server binary (sshd re-executes itself, so the path must be absolute).
const SSHD: &str = "/usr/sbin/sshd";

/// How long sshd may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The test user's account.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Looks up [`TEST_USER`]; panics with a pointer to `tests/run` if it does not exist.
pub fn test_user() -> TestUser {
    let user = nix::unistd::User::from_name(TEST_USER)
        .expect("look up the test user in the passwd database")
        .unwrap_or_else(|| {
            panic!("user {TEST_USER} does not exist: run the tests with `sudo tests/run`")
        });
    TestUser {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir,
    }
}

#[derive(Clone, Debug)]
enum Role {
    PrivateHost,
    JumpHost { permit_open: Vec<String> },
}

/// What an [`Sshd`] should be; build with [`SshdConfig::private_host`] or
/// [`SshdConfig::jump_host`], then [`SshdConfig::start`].
#[derive(Clone, Debug)]
pub struct SshdConfig {
    role: Role,
    listen: SocketAddr,
    authorized_keys: Vec<String>,
    extra: Vec<String>,
}

impl SshdConfig {
    /// An ordinary server on `listen`: commands, TTYs and sftp (scp) allowed; no forwarding.
    pub fn private_host(listen: SocketAddr) -> SshdConfig {
        SshdConfig {
            role: Role::PrivateHost,
            listen,
            authorized_keys: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// OpenSSH as a jump host on `listen`, forwarding only to the `host:port` entries of
    /// `permit_open` (e.g. `"10.0.3.140:22"`).
    pub fn jump_host<S: AsRef<str>>(listen: SocketAddr, permit_open: &[S]) -> SshdConfig {
        let permit_open: Vec<String> = permit_open.iter().map(|s| s.as_ref().into()).collect();
        assert!(
            !permit_open.is_empty(),
            "a jump host needs a PermitOpen list"
        );
        SshdConfig {
            role: Role::JumpHost { permit_open },
            listen,
            authorized_keys: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// Adds a public key line to the test user's `authorized_keys`.
    pub fn authorize(mut self, public_line: &str) -> SshdConfig {
        self.authorized_keys.push(public_line.trim().to_string());
        self
    }

    /// Adds a raw `sshd_config` line. Extra lines go *before* the harness's own, so they win
    /// (sshd keeps the first value of a keyword); no `Match` blocks.
    pub fn config_line(mut self, line: &str) -> SshdConfig {
        self.extra.push(line.to_string());
        self
    }

    /// The config file text, given the host key and `authorized_keys` paths.
    fn render(&self, dir: &Path, host_key: &Path, authorized_keys: &Path) -> String {
        let mut lines = self.extra.clone();
        lines.extend([
            format!("ListenAddress {}", self.listen),
            "AddressFamily inet".into(),
            format!("HostKey {}", host_key.display()),
            format!("PidFile {}", dir.join("sshd.pid").display()),
            format!("AuthorizedKeysFile {}", authorized_keys.display()),
            format!("AllowUsers {TEST_USER}"),
            "UsePAM no".into(),
            "StrictModes no".into(),
            "PermitRootLogin no".into(),
            "PubkeyAuthentication yes".into(),
            "PasswordAuthentication no".into(),
            "KbdInteractiveAuthentication no".into(),
            "HostbasedAuthentication no".into(),
            "UseDNS no".into(),
            "PrintMotd no".into(),
            "PrintLastLog no".into(),
            "LoginGraceTime 30".into(),
            // Tests open many connections at once; the default 10:30:100 drops some.
            "MaxStartups 100".into(),
            "X11Forwarding no".into(),
            "AllowAgentForwarding no".into(),
            "PermitTunnel no".into(),
            "GatewayPorts no".into(),
        ]);
        match &self.role {
            Role::PrivateHost => lines.extend([
                "AllowTcpForwarding no".into(),
                "AllowStreamLocalForwarding no".into(),
                // scp uses the sftp protocol since OpenSSH 9.0.
                "Subsystem sftp internal-sftp".into(),
            ]),
            Role::JumpHost { permit_open } => lines.extend([
                "AllowTcpForwarding local".into(),
                format!("PermitOpen {}", permit_open.join(" ")),
                "AllowStreamLocalForwarding no".into(),
                "PermitTTY no".into(),
                "PermitUserRC no".into(),
                "ForceCommand echo 'this host only forwards connections' >&2; exit 1".into(),
            ]),
        }
        lines.join("\n") + "\n"
    }

    /// Writes the config (in `<scratch>/<name>/`) with a fresh ed25519 host key, starts sshd in
    /// `ns` and waits until it accepts connections (bounded).
    pub fn start(self, ns: &Netns, scratch: &Scratch, name: &str) -> Sshd {
        let user = test_user();
        let dir = scratch.subdir(name);
        let host_key = KeyPair::generate(scratch, &format!("{name}_host_key"), KeyType::Ed25519);
        let authorized_keys = scratch.write(
            Path::new(name).join("authorized_keys"),
            self.authorized_keys.join("\n") + "\n",
        );
        let config_path = scratch.write(
            Path::new(name).join("sshd_config"),
            self.render(&dir, &host_key.private, &authorized_keys),
        );
        // sshd's privilege-separation directory must exist and be root-owned, not writable.
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755))
            .expect("chmod 0755 /run/sshd");
        let mut cmd = ns.command(SSHD);
        cmd.args(["-D", "-e", "-f"]).arg(&config_path);
        let mut daemon = Daemon::spawn(name, cmd, scratch);
        daemon.wait_for_port(ns, self.listen, START_TIMEOUT);
        Sshd {
            daemon,
            addr: self.listen,
            host_key,
            config_path,
            user,
        }
    }
}

/// A running sshd; killed on drop.
pub struct Sshd {
    daemon: Daemon,
    addr: SocketAddr,
    host_key: KeyPair,
    config_path: PathBuf,
    user: TestUser,
}

impl Sshd {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its host key (public line in `.public_line`), e.g. for a known_hosts file.
    pub fn host_key(&self) -> &KeyPair {
        &self.host_key
    }

    /// Its `sshd_config`.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The user it lets in.
    pub fn user(&self) -> &TestUser {
        &self.user
    }

    /// The process guard (logs, signals, terminate).
    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}
