//! `gatehouse demo`: the bastion on its embedded default config (`config/demo.toml`: static
//! users and hosts, no AWS), with everything it needs generated into a state directory: the
//! host key, a demo user's key pair, and an `ssh_config` that uses them.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use gatehouse_config::Config;
use gatehouse_ssh::hostkey;

/// The embedded demo config. Relative paths in it resolve against the state directory.
const DEMO_CONFIG: &str = include_str!("../../../config/demo.toml");

/// Name of the demo user's private key file in the state directory.
const DEMO_KEY: &str = "demo_key";

/// Creates the state directory's contents and returns the config to serve and the hint to
/// print once listening.
pub fn prepare(state_dir: &Path, listen: SocketAddr) -> anyhow::Result<(Config, String)> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let state_dir = state_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", state_dir.display()))?;
    let key_path = state_dir.join(DEMO_KEY);
    let key = hostkey::load_or_create(&key_path)?;
    let public = key
        .public_key()
        .to_openssh()
        .context("cannot encode the demo public key")?;
    fs::write(
        key_path.with_extension("pub"),
        format!("{public} demo@gatehouse\n"),
    )
    .context("cannot write the demo public key")?;

    let mut config = gatehouse_config::parse(DEMO_CONFIG, &state_dir.join("demo.toml"))
        .context("the embedded demo config is invalid (a bug)")?;
    config.server.listen = vec![listen];

    let ssh_config = state_dir.join("ssh_config");
    fs::write(
        &ssh_config,
        ssh_config_text(&state_dir, &key_path, listen, &config),
    )
    .with_context(|| format!("cannot write {}", ssh_config.display()))?;
    let hint = hint(&ssh_config, &config);
    Ok((config, hint))
}

fn ssh_config_text(state_dir: &Path, key: &Path, listen: SocketAddr, config: &Config) -> String {
    let known_hosts: PathBuf = state_dir.join("known_hosts");
    let mut text = format!(
        "# Written by `gatehouse demo`.\n\
         Host gatehouse-demo\n  HostName {}\n  Port {}\n  User demo\n  IdentityFile {}\n  \
         IdentitiesOnly yes\n  StrictHostKeyChecking accept-new\n  UserKnownHostsFile {}\n",
        listen.ip(),
        listen.port(),
        key.display(),
        known_hosts.display()
    );
    for host in &config.hosts {
        text.push_str(&format!(
            "\nHost {}\n  ProxyJump gatehouse-demo\n",
            host.name
        ));
    }
    text
}

fn hint(ssh_config: &Path, config: &Config) -> String {
    let f = ssh_config.display();
    let mut text = format!(
        "\ngatehouse demo is up. In another terminal:\n\
         \n  ssh -F {f} gatehouse-demo\n      logs in as 'demo'; the bastion explains itself (it gives no shell)\n\
         \n  ssh -F {f} -W 169.254.169.254:80 gatehouse-demo\n      a tunnel the bastion refuses, with its reason\n"
    );
    if let Some(host) = config.hosts.first() {
        text.push_str(&format!(
            "\nThe demo's one host, '{}', is a placeholder at {} (a documentation address):\n\
             `ssh -F {f} you@{}` would jump there. To reach your own machines, copy\n\
             config/gatehouse.toml, list your users and hosts, and run\n\
             gatehouse serve --config that.toml\n",
            host.name, host.address, host.name
        ));
    }
    text.push_str("\nCtrl-C stops the demo.\n");
    text
}
