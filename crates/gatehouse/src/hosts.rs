//! `gatehouse hosts`: what each user may reach, host by host and port by port. With `[aws]`
//! the directory is one fresh AWS listing.

use anyhow::bail;
use gatehouse_config::Config;
use gatehouse_directory::Snapshot;

/// Prints the reachability table for every user, or for one.
pub fn print(config: &Config, only: Option<&str>) -> anyhow::Result<()> {
    print!("{}", render(&crate::aws::snapshot_now(config)?, only)?);
    Ok(())
}

fn render(snapshot: &Snapshot, only: Option<&str>) -> anyhow::Result<String> {
    let identities = match only {
        Some(name) => match crate::aws::login_for(snapshot, name)
            .and_then(|login| snapshot.identity(&login))
        {
            Some(identity) => vec![identity],
            None => bail!("no user named '{name}' in the directory"),
        },
        None => snapshot.identities(),
    };
    let mut out = String::new();
    for identity in identities {
        let groups: Vec<&str> = identity.groups.iter().map(String::as_str).collect();
        out.push_str(&format!(
            "{} (groups: {})\n",
            identity.name,
            groups.join(", ")
        ));
        let Some(principal) = snapshot.principal(&identity.name) else {
            continue;
        };
        let hosts = snapshot.inventory().reachable(&principal);
        if hosts.is_empty() {
            out.push_str("  (no hosts)\n");
        }
        for host in hosts {
            let ports: Vec<String> = host.ports.iter().map(u16::to_string).collect();
            out.push_str(&format!(
                "  {:<24} {:<40} ports {}\n",
                host.id,
                host.address,
                ports.join(", ")
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_directory::Identity;
    use gatehouse_policy::{Host, Inventory};

    fn snapshot() -> Snapshot {
        let host = |id: &str, addr: &str, group: &str, ports: &[u16]| Host {
            id: id.into(),
            names: vec![id.into()],
            address: addr.parse().unwrap(),
            groups: [group.to_string()].into(),
            ports: ports.iter().copied().collect(),
            login_users: Vec::new(),
        };
        let user = |name: &str, group: &str| {
            Identity::new(name.into(), [group.to_string()].into(), vec![])
        };
        Snapshot::new(
            vec![
                user("bob", "ops"),
                user("alice", "research"),
                user("eve", "none"),
            ],
            Inventory::new(vec![
                host("jupyter", "10.0.3.140", "research", &[8888, 22]),
                host("db", "10.0.4.10", "ops", &[5432]),
            ]),
        )
    }

    #[test]
    fn every_user_with_hosts_and_ports() {
        let text = render(&snapshot(), None).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        assert_eq!(lines[0], "alice (groups: research)");
        assert!(lines[1].starts_with("  jupyter"), "{text}");
        assert!(lines[1].contains("10.0.3.140"), "{text}");
        assert!(lines[1].ends_with("ports 22, 8888"), "{text}");
        assert_eq!(lines[2], "bob (groups: ops)");
        assert!(lines[3].contains("db") && lines[3].ends_with("ports 5432"));
        assert_eq!(lines[4], "eve (groups: none)");
        assert_eq!(lines[5], "  (no hosts)");
    }

    #[test]
    fn one_user_or_a_clear_error() {
        let text = render(&snapshot(), Some("bob")).unwrap();
        assert!(text.starts_with("bob (groups: ops)\n"));
        assert!(!text.contains("alice"));
        let err = render(&snapshot(), Some("mallory")).unwrap_err();
        assert_eq!(err.to_string(), "no user named 'mallory' in the directory");
    }
}
