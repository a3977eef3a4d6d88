//! The OpenSSH client (`ssh`, `scp`) run in the client namespace with an `-F` config file.
//!
//! Everything goes through the `-F` file because `ssh -J` passes only `-F` (not `-i` or `-o`)
//! to the jump hop. The file has a `Host bastion` block, one block per added target (with
//! `ProxyJump bastion`), and defaults for every host: one identity only, no known-hosts state,
//! batch mode, bounded connect time.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::netns::Netns;
use super::process::Daemon;
use super::scratch::Scratch;

/// `ConnectTimeout` for every host, in seconds.
pub const CONNECT_TIMEOUT_SECS: u32 = 10;

/// The host alias of the bastion in the config file.
pub const BASTION_ALIAS: &str = "bastion";

static COUNTER: AtomicU32 = AtomicU32::new(0);

#[derive(Clone, Debug)]
struct Target {
    alias: String,
    host: String,
    port: u16,
    user: String,
    identity: Option<PathBuf>,
}

/// An OpenSSH client configuration for one test, used from the client namespace.
pub struct SshClient {
    ns: Netns,
    config_path: PathBuf,
    bastion: SocketAddr,
    user: String,
    identity: PathBuf,
    targets: Vec<Target>,
    overrides: Vec<(String, String)>,
}

impl SshClient {
    /// A client for the bastion at `bastion`, logging in as `user` with the private key
    /// `identity` (also the default key for targets). Writes `<scratch>/ssh_config.<n>`.
    pub fn new(
        ns: &Netns,
        scratch: &Scratch,
        bastion: SocketAddr,
        user: &str,
        identity: &Path,
    ) -> SshClient {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let client = SshClient {
            ns: ns.clone(),
            config_path: scratch.join(format!("ssh_config.{n}")),
            bastion,
            user: user.to_string(),
            identity: identity.to_path_buf(),
            targets: Vec::new(),
            overrides: Vec::new(),
        };
        client.write_config();
        client
    }

    /// Adds `Host alias` reached through the bastion (`ProxyJump bastion`), so that
    /// `ssh alias cmd` goes client -> bastion -> host:port. `identity` overrides the key.
    pub fn add_target(
        &mut self,
        alias: &str,
        host: &str,
        port: u16,
        user: &str,
        identity: Option<&Path>,
    ) -> &mut SshClient {
        self.targets.push(Target {
            alias: alias.into(),
            host: host.into(),
            port,
            user: user.into(),
            identity: identity.map(Path::to_path_buf),
        });
        self.write_config();
        self
    }

    /// Sets an option for every host (e.g. `("Ciphers", "aes128-gcm@openssh.com")`); it wins
    /// over the harness's own settings.
    pub fn option(&mut self, key: &str, value: &str) -> &mut SshClient {
        self.overrides.push((key.into(), value.into()));
        self.write_config();
        self
    }

    /// The `-F` file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The client namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// `ssh -F <config>` in the client namespace; add the rest (`-J bastion user@host cmd`,
    /// `-W host:port bastion`, `-N -L ...`, a target alias, ...).
    pub fn ssh(&self) -> Command {
        let mut cmd = self.ns.command("ssh");
        cmd.arg("-F").arg(&self.config_path);
        cmd
    }

    /// `scp -F <config>` in the client namespace (use `-J bastion` or a target alias).
    pub fn scp(&self) -> Command {
        let mut cmd = self.ns.command("scp");
        cmd.arg("-F").arg(&self.config_path);
        cmd
    }

    /// Starts `ssh -N -L 127.0.0.1:<local_port>:<host>:<port> <via>` in the client namespace
    /// and waits (bounded) until the local port accepts connections, i.e. the login is done.
    pub fn local_forward(
        &self,
        scratch: &Scratch,
        name: &str,
        local_port: u16,
        host: &str,
        port: u16,
        via: &str,
    ) -> Daemon {
        let mut cmd = self.ssh();
        cmd.args([
            "-N",
            "-L",
            &format!("127.0.0.1:{local_port}:{host}:{port}"),
            via,
        ]);
        let mut daemon = Daemon::spawn(name, cmd, scratch);
        let local = SocketAddr::from(([127, 0, 0, 1], local_port));
        daemon.wait_for_port(&self.ns, local, Duration::from_secs(30));
        daemon
    }

    fn write_config(&self) {
        let mut text = String::new();
        if !self.overrides.is_empty() {
            text.push_str("Host *\n");
            for (key, value) in &self.overrides {
                let _ = writeln!(text, "  {key} {value}");
            }
        }
        let _ = writeln!(
            text,
            "Host {BASTION_ALIAS}\n  HostName {}\n  Port {}\n  User {}",
            self.bastion.ip(),
            self.bastion.port(),
            self.user
        );
        for t in &self.targets {
            let _ = writeln!(
                text,
                "Host {}\n  HostName {}\n  Port {}\n  User {}\n  ProxyJump {BASTION_ALIAS}",
                t.alias, t.host, t.port, t.user
            );
            if let Some(identity) = &t.identity {
                let _ = writeln!(text, "  IdentityFile {}", identity.display());
            }
        }
        let _ = writeln!(
            text,
            "Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  IdentityAgent none\n  \
             StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  \
             GlobalKnownHostsFile /dev/null\n  CheckHostIP no\n  UpdateHostKeys no\n  \
             BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout {CONNECT_TIMEOUT_SECS}\n  \
             ServerAliveInterval 10\n  ServerAliveCountMax 3\n  ExitOnForwardFailure yes\n  \
             ControlMaster no\n  ControlPath none\n  ForwardAgent no\n  ForwardX11 no",
            self.identity.display()
        );
        std::fs::write(&self.config_path, text)
            .unwrap_or_else(|e| panic!("write {}: {e}", self.config_path.display()));
    }
}
