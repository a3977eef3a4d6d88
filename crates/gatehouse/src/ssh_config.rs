//! `gatehouse ssh-config`: the `~/.ssh/config` block that makes the bastion transparent for
//! one user: the bastion itself, one `Host` per reachable target that takes SSH (with
//! `ProxyJump`), and one `<name>-tunnel` host per target with other ports (Jupyter, databases)
//! whose `LocalForward` lines open those ports on the user's machine.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context};
use gatehouse_config::Config;
use gatehouse_directory::Snapshot;
use gatehouse_policy::Host;

/// Options of the command, as given on the command line.
pub struct Options<'a> {
    /// The login name (or IAM user name) to write the config for.
    pub user: &'a str,
    /// How clients reach the bastion: `HOST` or `HOST:PORT` (`[v6]:PORT`).
    pub bastion: &'a str,
    /// The `Host` alias of the bastion.
    pub alias: &'a str,
    /// `IdentityFile` for the bastion (and the targets).
    pub identity_file: Option<&'a Path>,
    /// `UserKnownHostsFile` for every host.
    pub known_hosts: Option<&'a Path>,
    /// `User` on the targets (their own accounts, unknown to the bastion).
    pub target_user: Option<&'a str>,
}

/// The SSH port; targets that list it get a `ProxyJump` host.
const SSH_PORT: u16 = 22;
/// Privileged target ports are opened locally at this offset (port 80 -> 10080), so no local
/// root is needed.
const LOW_PORT_OFFSET: u16 = 10000;

/// Prints the ssh_config text for `options.user`.
pub fn print(config: &Config, options: &Options<'_>) -> anyhow::Result<()> {
    let snapshot = crate::aws::snapshot_now(config)?;
    print!("{}", render(&snapshot, options)?);
    Ok(())
}

/// Splits `HOST[:PORT]`.
fn split_bastion(text: &str) -> anyhow::Result<(String, u16)> {
    let bad = || format!("--bastion `{text}`: write HOST, HOST:PORT or [IPv6]:PORT");
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').with_context(bad)?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => bail!(bad()),
        }
    } else if text.matches(':').count() == 1 {
        let (host, port) = text.split_once(':').with_context(bad)?;
        (host, Some(port))
    } else {
        (text, None)
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .with_context(bad)?,
        None => SSH_PORT,
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c))
    {
        bail!(bad());
    }
    Ok((host.to_owned(), port))
}

/// A path as an ssh_config value; refused if ssh_config could not carry it.
fn path_value(flag: &str, path: &Path) -> anyhow::Result<String> {
    let text = path
        .to_str()
        .with_context(|| format!("{flag}: not UTF-8"))?;
    if text.is_empty() || text.contains(|c: char| c.is_whitespace() || c == '"' || c.is_control()) {
        bail!("{flag} `{text}`: ssh_config paths here may not contain spaces or quotes");
    }
    Ok(text.to_owned())
}

/// The name a client should type for `host`: its first name if that names it alone, else its
/// id (two instances with one Name tag).
fn name_for(snapshot: &Snapshot, host: &Host) -> String {
    host.names
        .iter()
        .find(|n| {
            snapshot
                .inventory()
                .resolve(n)
                .is_ok_and(|h| h.id == host.id)
        })
        .cloned()
        .unwrap_or_else(|| host.id.clone())
}

fn render(snapshot: &Snapshot, o: &Options<'_>) -> anyhow::Result<String> {
    let login = crate::aws::login_for(snapshot, o.user)
        .with_context(|| format!("no user named '{}' in the directory", o.user))?;
    let principal = snapshot
        .principal(&login)
        .with_context(|| format!("no user named '{}' in the directory", o.user))?;
    if !o
        .alias
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
        || o.alias.is_empty()
    {
        bail!(
            "--alias `{}`: use letters, digits, `.`, `-` and `_`",
            o.alias
        );
    }
    if let Some(user) = o.target_user {
        if user.is_empty()
            || user.contains(|c: char| c.is_whitespace() || c == '"' || c.is_control())
        {
            bail!("--target-user `{user}`: not a user name");
        }
    }
    let (host, port) = split_bastion(o.bastion)?;
    let identity = o
        .identity_file
        .map(|p| path_value("--identity-file", p))
        .transpose()?;
    let known_hosts = o
        .known_hosts
        .map(|p| path_value("--known-hosts", p))
        .transpose()?;
    // The settings every block that logs in to the bastion repeats.
    let bastion_lines = |out: &mut String| {
        let _ = writeln!(out, "    HostName {host}");
        let _ = writeln!(out, "    Port {port}");
        let _ = writeln!(out, "    User {login}");
        if let Some(id) = &identity {
            let _ = writeln!(out, "    IdentityFile {id}");
            let _ = writeln!(out, "    IdentitiesOnly yes");
        }
        if let Some(kh) = &known_hosts {
            let _ = writeln!(out, "    UserKnownHostsFile {kh}");
        }
    };
    let alias = o.alias;
    let reachable = snapshot.inventory().reachable(&principal);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# ~/.ssh/config for {login}, written by `gatehouse ssh-config`: the bastion and the {} \
         host(s) {login} may reach through it.",
        reachable.len()
    );
    let _ = writeln!(
        out,
        "# `ssh NAME` logs in to a host through the bastion; `ssh NAME-tunnel` opens its other \
         ports on localhost."
    );
    let _ = writeln!(out, "\nHost {alias}");
    bastion_lines(&mut out);
    let mut used_local = BTreeSet::new();
    for target in reachable {
        let name = name_for(snapshot, target);
        if target.ports.contains(&SSH_PORT) {
            let _ = writeln!(out, "\nHost {name}");
            let _ = writeln!(out, "    HostName {name}");
            let _ = writeln!(out, "    ProxyJump {alias}");
            if let Some(user) = o.target_user {
                let _ = writeln!(out, "    User {user}");
            }
            if let Some(id) = &identity {
                let _ = writeln!(out, "    IdentityFile {id}");
            }
            if let Some(kh) = &known_hosts {
                let _ = writeln!(out, "    UserKnownHostsFile {kh}");
            }
        }
        let others: Vec<u16> = target
            .ports
            .iter()
            .copied()
            .filter(|p| *p != SSH_PORT)
            .collect();
        if others.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\nHost {name}-tunnel");
        bastion_lines(&mut out);
        let _ = writeln!(out, "    SessionType none");
        let _ = writeln!(out, "    ExitOnForwardFailure yes");
        for remote in others {
            let mut local = if remote < 1024 {
                remote.saturating_add(LOW_PORT_OFFSET)
            } else {
                remote
            };
            while used_local.contains(&local) && local < u16::MAX {
                local += 1;
            }
            used_local.insert(local);
            let _ = writeln!(out, "    LocalForward 127.0.0.1:{local} {name}:{remote}");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_directory::Identity;
    use gatehouse_policy::Inventory;

    fn snapshot() -> Snapshot {
        let host = |id: &str, names: &[&str], addr: &str, ports: &[u16]| Host {
            id: id.into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            address: addr.parse().unwrap(),
            groups: ["research".to_string()].into(),
            ports: ports.iter().copied().collect(),
            login_users: Vec::new(),
        };
        Snapshot::new(
            vec![Identity::new(
                "jane~40example.org".into(),
                ["research".to_string()].into(),
                vec![],
            )],
            Inventory::new(vec![
                host("i-1", &["jupyter", "i-1"], "10.0.3.140", &[22, 8888]),
                host("i-2", &["dup", "i-2"], "10.0.3.141", &[22]),
                host("i-3", &["dup", "i-3"], "10.0.3.142", &[80, 8888]),
            ]),
        )
    }

    fn options<'a>() -> Options<'a> {
        Options {
            user: "jane@example.org",
            bastion: "bastion.example.org:2222",
            alias: "bastion",
            identity_file: Some(Path::new("~/.ssh/id_ed25519")),
            known_hosts: None,
            target_user: Some("ubuntu"),
        }
    }

    #[test]
    fn bastion_jump_hosts_and_tunnels() {
        let text = render(&snapshot(), &options()).unwrap();
        assert!(text.contains(
            "\nHost bastion\n    HostName bastion.example.org\n    Port 2222\n    User jane~40example.org\n    IdentityFile ~/.ssh/id_ed25519\n"
        ), "{text}");
        assert!(
            text.contains(
                "\nHost jupyter\n    HostName jupyter\n    ProxyJump bastion\n    User ubuntu\n"
            ),
            "{text}"
        );
        // Ambiguous names fall back to the instance id.
        assert!(text.contains("\nHost i-2\n    HostName i-2\n"), "{text}");
        assert!(
            text.contains("LocalForward 127.0.0.1:8888 jupyter:8888"),
            "{text}"
        );
        // Port 80 opens at 10080; a second 8888 moves to 8889.
        assert!(text.contains("\nHost i-3-tunnel\n"), "{text}");
        assert!(
            text.contains("LocalForward 127.0.0.1:10080 i-3:80"),
            "{text}"
        );
        assert!(
            text.contains("LocalForward 127.0.0.1:8889 i-3:8888"),
            "{text}"
        );
        assert!(
            !text.contains("Host i-3\n"),
            "no SSH block without port 22: {text}"
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        let mut o = options();
        o.user = "mallory";
        assert!(render(&snapshot(), &o).is_err());
        for bastion in ["", "a b", "host:0", "host:x", "[::1", "[::1]x"] {
            let mut o = options();
            o.bastion = bastion;
            assert!(render(&snapshot(), &o).is_err(), "{bastion:?}");
        }
        assert_eq!(
            split_bastion("[fd00::1]:22").unwrap(),
            ("fd00::1".into(), 22)
        );
        assert_eq!(split_bastion("10.0.0.1").unwrap(), ("10.0.0.1".into(), 22));
        let mut o = options();
        o.identity_file = Some(Path::new("/a b"));
        assert!(render(&snapshot(), &o).is_err());
    }
}
