//! From plain AWS data to a directory: which IAM users become identities and which EC2
//! instances become hosts. Pure functions over the records the fetchers return, so every rule
//! here is unit-tested without AWS.
//!
//! Everything an AWS answer carries is input: a tag value that does not parse, a key that is
//! not a key, an address the bastion must never dial. Such an item is skipped with a
//! [`Skipped`] note naming the user or instance, and the rest of the listing is used.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use gatehouse_config::{
    check_group_name, check_host_name, check_os_user, forbidden_target_reason, AwsConfig,
};
use gatehouse_directory::callers::TaggedRole;
use gatehouse_directory::Identity;
use gatehouse_policy::{Host, Inventory};
use ssh_key::PublicKey;

use crate::names::login_name;

/// Default ports of an instance without a ports tag.
pub const DEFAULT_PORTS: &[u16] = &[22];

/// One IAM user as the fetchers saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    /// IAM user name.
    pub name: String,
    /// The user's tags, as (key, value).
    pub tags: Vec<(String, String)>,
    /// Names of the IAM groups the user is in (only read when `iam_group_prefix` is set).
    pub iam_groups: Vec<String>,
    /// The user's Active SSH public keys: (key id, parsed key or why it was not usable).
    pub keys: Vec<(String, Result<PublicKey, String>)>,
}

/// One IAM role that carries the groups tag, as the account listing named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRecord {
    /// The role's name.
    pub name: String,
    /// Its ARN (`arn:aws:iam::<account>:role/<path/>name`), which names its account.
    pub arn: String,
    /// Its tags, as (key, value).
    pub tags: Vec<(String, String)>,
}

/// One EC2 instance as the fetchers saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    /// `i-...`.
    pub id: String,
    /// State name (`running`, `stopped`, ...).
    pub state: String,
    /// Primary private IPv4 address, as text.
    pub private_ip: Option<String>,
    /// Private DNS name (`ip-10-0-3-140.ec2.internal`).
    pub private_dns: Option<String>,
    /// The instance's tags, as (key, value).
    pub tags: Vec<(String, String)>,
}

/// Something in the listing that was left out, and why. Logged as a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// `user NAME`, `user NAME key ID`, `instance ID`.
    pub what: String,
    /// Why.
    pub why: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.why)
    }
}

fn skipped(what: impl Into<String>, why: impl Into<String>) -> Skipped {
    Skipped {
        what: what.into(),
        why: why.into(),
    }
}

fn tag<'a>(tags: &'a [(String, String)], key: &str) -> Option<&'a str> {
    tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Splits a list tag value on commas and whitespace, dropping empty items.
fn items(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
}

/// Parses a groups tag (`research, ops` or `research ops`): lowercased, each a valid group
/// name, duplicates merged.
///
/// # Errors
/// The first item that is not a valid group name.
pub fn parse_groups(value: &str) -> Result<BTreeSet<String>, String> {
    items(value)
        .map(|g| {
            let g = g.to_ascii_lowercase();
            check_group_name(&g).map(|()| g)
        })
        .collect()
}

/// Parses a ports tag (`22, 8888` or `22 8888`): each 1..65535, at least one.
///
/// # Errors
/// An item that is not a TCP port, or no item at all.
pub fn parse_ports(value: &str) -> Result<BTreeSet<u16>, String> {
    let ports = items(value)
        .map(|p| match p.parse::<u16>() {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(format!("`{p}` is not a TCP port (1..65535)")),
        })
        .collect::<Result<BTreeSet<u16>, String>>()?;
    if ports.is_empty() {
        return Err("no ports listed".to_owned());
    }
    Ok(ports)
}

/// Most OS users one instance's login tag may list: each is one EC2 Instance Connect call per
/// tunnel to its SSH port.
pub const MAX_LOGIN_USERS: usize = 4;

/// Parses a login tag (`ubuntu` or `ec2-user, ubuntu`): OS user names (see
/// [`gatehouse_config::check_os_user`]), in the order given, duplicates dropped, at most
/// [`MAX_LOGIN_USERS`].
///
/// # Errors
/// The first item that is not an OS user name, too many names, or none.
pub fn parse_login_users(value: &str) -> Result<Vec<String>, String> {
    let mut users: Vec<String> = Vec::new();
    for item in items(value) {
        check_os_user(item)?;
        if !users.iter().any(|u| u == item) {
            users.push(item.to_owned());
        }
    }
    match users.len() {
        0 => Err("no OS user listed".to_owned()),
        n if n > MAX_LOGIN_USERS => Err(format!(
            "{n} OS users; at most {MAX_LOGIN_USERS} (each is one push per connection)"
        )),
        _ => Ok(users),
    }
}

/// The identities among `users`: users with a login name, at least one usable Active key, and
/// at least one group (from the groups tag and from IAM groups named `iam_group_prefix` +
/// NAME). Bad keys are skipped, never the user's other keys.
pub fn identities(users: &[UserRecord], settings: &AwsConfig) -> (Vec<Identity>, Vec<Skipped>) {
    let groups_tag = settings.groups_tag();
    let expires_tag = settings.expires_tag();
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for user in users {
        let who = format!("IAM user {}", user.name);
        // An expiry that cannot be read refuses the user: never read as "no expiry".
        let expires = match tag(&user.tags, &expires_tag).map(gatehouse_config::parse_rfc3339) {
            None => None,
            Some(Ok(at)) => Some(at),
            Some(Err(why)) => {
                notes.push(skipped(
                    format!("{who} tag {expires_tag}"),
                    format!("user refused: {why}"),
                ));
                continue;
            }
        };
        let login = match login_name(&user.name) {
            Ok(login) => login,
            Err(e) => {
                notes.push(skipped(who, e.to_string()));
                continue;
            }
        };
        let mut keys = Vec::new();
        for (id, key) in &user.keys {
            match key {
                Ok(key) => keys.push(key.clone()),
                Err(why) => notes.push(skipped(
                    format!("{who} key {id}"),
                    format!("key skipped: {why}"),
                )),
            }
        }
        let mut groups = BTreeSet::new();
        if let Some(value) = tag(&user.tags, &groups_tag) {
            match parse_groups(value) {
                Ok(g) => groups.extend(g),
                // One bad group name drops the whole tag: a half-read tag could grant a
                // narrower or wider set than the administrator wrote.
                Err(why) => notes.push(skipped(
                    format!("{who} tag {groups_tag}"),
                    format!("tag ignored: {why}"),
                )),
            }
        }
        if let Some(prefix) = &settings.iam_group_prefix {
            for iam_group in &user.iam_groups {
                let Some(name) = iam_group.strip_prefix(prefix.as_str()) else {
                    continue;
                };
                let name = name.to_ascii_lowercase();
                match check_group_name(&name) {
                    Ok(()) => {
                        groups.insert(name);
                    }
                    Err(why) => notes.push(skipped(
                        format!("{who} IAM group {iam_group}"),
                        format!("group ignored: {why}"),
                    )),
                }
            }
        }
        if keys.is_empty() || groups.is_empty() {
            // Not an error: most IAM users are not bastion users.
            continue;
        }
        out.push(Identity {
            name: login,
            groups,
            keys,
            expires,
            key_expires: Vec::new(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    (out, notes)
}

/// The roles among `roles` that map callers by their groups tag (`sso.roles` in the config
/// wins over a tag): a valid role name, an ARN that names its account, and a tag of valid
/// groups (one bad group name drops the role: a half-read tag could grant a narrower or wider
/// set than the administrator wrote).
pub fn tagged_roles(roles: &[RoleRecord], settings: &AwsConfig) -> (Vec<TaggedRole>, Vec<Skipped>) {
    let groups_tag = settings.groups_tag();
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for role in roles {
        let who = format!("IAM role {}", role.name);
        if let Err(e) = login_name(&role.name) {
            notes.push(skipped(who, e.to_string()));
            continue;
        }
        let account = role
            .arn
            .split(':')
            .nth(4)
            .filter(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()));
        let Some(account) = account else {
            notes.push(skipped(who, format!("ARN {} names no account", role.arn)));
            continue;
        };
        let Some(value) = tag(&role.tags, &groups_tag) else {
            continue;
        };
        match parse_groups(value) {
            Ok(groups) if !groups.is_empty() => out.push(TaggedRole {
                name: role.name.clone(),
                account: account.to_owned(),
                groups,
            }),
            Ok(_) => {}
            Err(why) => notes.push(skipped(
                format!("{who} tag {groups_tag}"),
                format!("role not mapped: {why}"),
            )),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    (out, notes)
}

/// The hosts among `instances`: running, tagged with groups, with a usable private address.
/// Names: the `Name` tag (lowercased, when it is a valid host name), the instance id, and the
/// private DNS name (lowercased).
///
/// Instances that share a private address (VPCs with overlapping CIDRs) are kept, so that a
/// refusal can name them, with a note each: the policy never dials such an address
/// ([`gatehouse_policy::Refusal::SharedAddress`]).
pub fn hosts(instances: &[InstanceRecord], settings: &AwsConfig) -> (Vec<Host>, Vec<Skipped>) {
    let groups_tag = settings.groups_tag();
    let ports_tag = settings.ports_tag();
    let login_tag = settings.login_tag();
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for instance in instances {
        let who = format!("instance {}", instance.id);
        if instance.state != "running" {
            continue;
        }
        let Some(groups_value) = tag(&instance.tags, &groups_tag) else {
            continue;
        };
        let groups = match parse_groups(groups_value) {
            Ok(g) if !g.is_empty() => g,
            Ok(_) => {
                notes.push(skipped(who, format!("tag {groups_tag} lists no group")));
                continue;
            }
            Err(why) => {
                notes.push(skipped(who, format!("tag {groups_tag}: {why}")));
                continue;
            }
        };
        let ports = match tag(&instance.tags, &ports_tag) {
            None => DEFAULT_PORTS.iter().copied().collect(),
            Some(value) => match parse_ports(value) {
                Ok(p) => p,
                Err(why) => {
                    notes.push(skipped(who, format!("tag {ports_tag}: {why}")));
                    continue;
                }
            },
        };
        let address = match instance.private_ip.as_deref().map(str::parse::<IpAddr>) {
            Some(Ok(ip)) => ip,
            Some(Err(_)) | None => {
                notes.push(skipped(who, "no private IPv4 address"));
                continue;
            }
        };
        if let Some(why) = forbidden_target_reason(address) {
            notes.push(skipped(who, format!("address {address}: {why}")));
            continue;
        }
        let mut names = Vec::new();
        if let Some(name) = tag(&instance.tags, "Name").filter(|n| !n.trim().is_empty()) {
            match check_host_name(name.trim()) {
                Ok(name) => names.push(name),
                Err(why) => notes.push(skipped(
                    format!("{who} Name tag"),
                    format!("not usable as a host name, reach it by id instead: {why}"),
                )),
            }
        }
        names.push(instance.id.to_ascii_lowercase());
        if let Some(dns) = instance.private_dns.as_deref().filter(|d| !d.is_empty()) {
            names.push(dns.trim_end_matches('.').to_ascii_lowercase());
        }
        names.dedup();
        // A bad login tag costs the push, not the host: its ports stay reachable (with keys
        // installed on it by other means).
        let login_users = match tag(&instance.tags, &login_tag) {
            // Empty: explicitly none (what gatehouse-vpc leaves when a spec drops `login`).
            Some(value) if settings.instance_connect && !value.trim().is_empty() => {
                parse_login_users(value).unwrap_or_else(|why| {
                    notes.push(skipped(
                        format!("{who} tag {login_tag}"),
                        format!("no key will be pushed to it: {why}"),
                    ));
                    Vec::new()
                })
            }
            _ => Vec::new(),
        };
        out.push(Host {
            id: instance.id.clone(),
            names,
            address,
            groups,
            ports,
            login_users,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    for (address, ids) in Inventory::new(out.clone()).shared_addresses() {
        notes.push(skipped(
            format!("instances {}", ids.join(", ")),
            format!(
                "address {address} belongs to {} instances (VPCs with overlapping CIDRs?); \
                 the bastion cannot tell which one a dial would reach, so it forwards to none \
                 of them, by any name, until each has an address of its own",
                ids.len()
            ),
        ));
    }
    (out, notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_policy::{Principal, Refusal};

    const K1: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMzQnTZ1QB2clN1RVs8twk5/t+5CEwiIXdcNoxcQmsgc alice@laptop";
    const K2: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINmlGXI7OASyXk4O6d+gTUjFFoKRkucGwcPn6U7HGaSw bob@laptop";

    fn settings() -> AwsConfig {
        let config = gatehouse_config::parse(
            "[server]\nlisten = [\"0.0.0.0:22\"]\n[aws]\niam_group_prefix = \"gatehouse-\"\n\
             vpc_ids = [\"vpc-1\"]\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        config.aws.unwrap()
    }

    fn tags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn key(line: &str) -> Result<PublicKey, String> {
        gatehouse_config::parse_public_key(line)
    }

    fn user(name: &str, t: &[(&str, &str)], keys: &[&str]) -> UserRecord {
        UserRecord {
            name: name.into(),
            tags: tags(t),
            iam_groups: vec![],
            keys: keys
                .iter()
                .enumerate()
                .map(|(i, k)| (format!("APKA{i}"), key(k)))
                .collect(),
        }
    }

    #[test]
    fn roles_map_by_a_valid_groups_tag_and_name_their_account() {
        let role = |name: &str, arn: &str, t: &[(&str, &str)]| RoleRecord {
            name: name.into(),
            arn: arn.into(),
            tags: tags(t),
        };
        let records = [
            role(
                "deploy",
                "arn:aws:iam::123456789012:role/ci/deploy",
                &[("gatehouse:groups", "Ops, research")],
            ),
            role(
                "bad-groups",
                "arn:aws:iam::123456789012:role/bad-groups",
                &[("gatehouse:groups", "ops, b@d")],
            ),
            role(
                "no-account",
                "arn:aws:iam:::role/x",
                &[("gatehouse:groups", "ops")],
            ),
            role(
                "bad name",
                "arn:aws:iam::123456789012:role/x",
                &[("gatehouse:groups", "ops")],
            ),
            role("untagged", "arn:aws:iam::123456789012:role/untagged", &[]),
            role(
                "empty",
                "arn:aws:iam::123456789012:role/empty",
                &[("gatehouse:groups", " ")],
            ),
        ];
        let (roles, skipped) = tagged_roles(&records, &settings());
        assert_eq!(
            roles,
            [TaggedRole {
                name: "deploy".into(),
                account: "123456789012".into(),
                groups: ["ops".to_string(), "research".to_string()].into(),
            }]
        );
        let what: Vec<&str> = skipped.iter().map(|s| s.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "IAM role bad-groups tag gatehouse:groups",
                "IAM role no-account",
                "IAM role bad name"
            ]
        );
    }

    fn instance(id: &str, ip: &str, t: &[(&str, &str)]) -> InstanceRecord {
        InstanceRecord {
            id: id.into(),
            state: "running".into(),
            private_ip: Some(ip.into()),
            private_dns: Some(format!("ip-{}.ec2.internal", ip.replace('.', "-"))),
            tags: tags(t),
        }
    }

    #[test]
    fn group_and_port_tags_parse_with_commas_or_spaces() {
        let g = parse_groups("Research, ops  ops,,ml").unwrap();
        assert_eq!(g.into_iter().collect::<Vec<_>>(), ["ml", "ops", "research"]);
        assert!(parse_groups("research, data science!").is_err());
        assert!(parse_groups("").unwrap().is_empty());
        let p = parse_ports("22, 8888 8888").unwrap();
        assert_eq!(p.into_iter().collect::<Vec<_>>(), [22, 8888]);
        for bad in ["", "0", "65536", "22,ssh", "-1"] {
            assert!(parse_ports(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_user_needs_an_active_usable_key_and_a_group() {
        let users = vec![
            user("alice", &[("gatehouse:groups", "research")], &[K1]),
            user("nogroup", &[], &[K2]),
            user("nokey", &[("gatehouse:groups", "research")], &[]),
            user(
                "jane@example.org",
                &[("gatehouse:groups", "ops research")],
                &[K2],
            ),
        ];
        let (ids, notes) = identities(&users, &settings());
        let names: Vec<&str> = ids.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["alice", "jane~40example.org"]);
        assert_eq!(ids[1].groups.len(), 2);
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn the_expires_tag_ends_access_and_an_unreadable_one_refuses_the_user() {
        let users = vec![
            user(
                "alice",
                &[
                    ("gatehouse:groups", "research"),
                    ("gatehouse:expires", "2026-12-31T18:00:00Z"),
                ],
                &[K1],
            ),
            user(
                "bob",
                &[
                    ("gatehouse:groups", "research"),
                    ("gatehouse:expires", "next friday"),
                ],
                &[K2],
            ),
            user(
                "carol",
                &[
                    ("gatehouse:groups", "research"),
                    ("gatehouse:expires", "2026-12-31T18:00:00"),
                ],
                &[K2],
            ),
        ];
        let (ids, notes) = identities(&users, &settings());
        let names: Vec<&str> = ids.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["alice"]);
        assert_eq!(
            ids[0].expires,
            Some(gatehouse_config::parse_rfc3339("2026-12-31T18:00:00Z").unwrap())
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
        let text = format!("{notes:?}");
        assert!(
            text.contains("IAM user bob tag gatehouse:expires"),
            "{text}"
        );
        assert!(text.contains("user refused"), "{text}");
        assert!(text.contains("IAM user carol"), "{text}");
    }

    #[test]
    fn a_bad_key_is_skipped_with_a_note_and_the_others_kept() {
        let users = vec![user(
            "alice",
            &[("gatehouse:groups", "research")],
            &["ssh-dss AAAAB3NzaC1kc3MAAACBAP", "not a key at all", K1],
        )];
        let (ids, notes) = identities(&users, &settings());
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[0].keys.len(), 1);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].what.contains("alice") && notes[0].what.contains("APKA0"));
        assert!(notes[1].what.contains("APKA1"), "{}", notes[1]);
    }

    #[test]
    fn iam_groups_with_the_prefix_become_groups() {
        let mut u = user("bob", &[], &[K2]);
        u.iam_groups = vec![
            "gatehouse-Ops".into(),
            "admins".into(),
            "gatehouse-bad name".into(),
        ];
        let (ids, notes) = identities(&[u.clone()], &settings());
        assert_eq!(ids[0].groups.iter().collect::<Vec<_>>(), ["ops"]);
        assert_eq!(notes.len(), 1);
        // Without a prefix configured, IAM groups count for nothing.
        let mut s = settings();
        s.iam_group_prefix = None;
        assert!(identities(&[u], &s).0.is_empty());
    }

    #[test]
    fn a_bad_groups_tag_is_ignored_whole() {
        let users = vec![user(
            "eve",
            &[("gatehouse:groups", "research, Root!")],
            &[K1],
        )];
        let (ids, notes) = identities(&users, &settings());
        assert!(ids.is_empty());
        assert_eq!(notes.len(), 1);
        assert!(notes[0].to_string().contains("gatehouse:groups"));
    }

    #[test]
    fn instances_become_hosts_with_names_ports_and_groups() {
        let list = vec![
            instance(
                "i-0aa",
                "10.0.3.140",
                &[
                    ("Name", "Jupyter"),
                    ("gatehouse:groups", "research"),
                    ("gatehouse:ports", "22,8888"),
                ],
            ),
            instance("i-0bb", "10.0.3.141", &[("gatehouse:groups", "ops")]),
            instance("i-0cc", "10.0.3.142", &[("Name", "untagged")]),
        ];
        let (hosts, notes) = hosts(&list, &settings());
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(hosts.len(), 2);
        assert_eq!(
            hosts[0].names,
            ["jupyter", "i-0aa", "ip-10-0-3-140.ec2.internal"]
        );
        assert_eq!(
            hosts[0].ports.iter().copied().collect::<Vec<_>>(),
            [22, 8888]
        );
        assert_eq!(hosts[1].ports.iter().copied().collect::<Vec<_>>(), [22]);
        assert_eq!(hosts[1].names[0], "i-0bb");
    }

    #[test]
    fn stopped_bad_tags_and_forbidden_addresses_are_left_out() {
        let mut stopped = instance("i-1", "10.0.3.140", &[("gatehouse:groups", "research")]);
        stopped.state = "stopped".into();
        let list = vec![
            stopped,
            instance(
                "i-2",
                "10.0.3.141",
                &[("gatehouse:groups", "research"), ("gatehouse:ports", "ssh")],
            ),
            instance(
                "i-3",
                "169.254.169.254",
                &[("gatehouse:groups", "research")],
            ),
            instance("i-4", "127.0.0.1", &[("gatehouse:groups", "research")]),
            instance("i-5", "10.0.3.142", &[("gatehouse:groups", " , ")]),
            instance(
                "i-6",
                "10.0.3.143",
                &[("gatehouse:groups", "research"), ("Name", "my box!")],
            ),
        ];
        let (hosts, notes) = hosts(&list, &settings());
        assert_eq!(hosts.len(), 1, "{hosts:?}");
        assert_eq!(hosts[0].id, "i-6");
        assert_eq!(hosts[0].names[0], "i-6", "a bad Name tag is not a name");
        let text: Vec<String> = notes.iter().map(ToString::to_string).collect();
        for id in ["i-2", "i-3", "i-4", "i-5", "i-6"] {
            assert!(text.iter().any(|t| t.contains(id)), "{id}: {text:?}");
        }
    }

    #[test]
    fn two_instances_with_one_name_are_refused_listing_both_ids() {
        let list = vec![
            instance(
                "i-1",
                "10.0.3.140",
                &[("Name", "dup"), ("gatehouse:groups", "research")],
            ),
            instance(
                "i-2",
                "10.0.3.141",
                &[("Name", "dup"), ("gatehouse:groups", "research")],
            ),
        ];
        let inventory = Inventory::new(hosts(&list, &settings()).0);
        let alice = Principal {
            user: "alice".into(),
            groups: ["research".to_string()].into(),
        };
        match inventory.authorize(&alice, "dup", 22) {
            Err(Refusal::Ambiguous { candidates, .. }) => assert_eq!(candidates, ["i-1", "i-2"]),
            other => panic!("{other:?}"),
        }
        assert!(inventory.authorize(&alice, "i-2", 22).is_ok());
        assert!(inventory.authorize(&alice, "10.0.3.141", 22).is_ok());
        assert!(inventory
            .authorize(&alice, "IP-10-0-3-140.ec2.internal", 22)
            .is_ok());
    }

    #[test]
    fn two_instances_with_one_address_are_warned_about_and_never_dialed() {
        // dev-box (research) in VPC A and prod-box (ops) in VPC B, both 10.20.10.10.
        let list = vec![
            instance(
                "i-0bbb",
                "10.20.10.10",
                &[("Name", "prod-box"), ("gatehouse:groups", "ops")],
            ),
            instance(
                "i-0aaa",
                "10.20.10.10",
                &[("Name", "dev-box"), ("gatehouse:groups", "research")],
            ),
            instance("i-0ccc", "10.20.10.11", &[("gatehouse:groups", "research")]),
        ];
        let (hosts, notes) = hosts(&list, &settings());
        assert_eq!(hosts.len(), 3, "both are kept, to be named in refusals");
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0].what, "instances i-0aaa, i-0bbb");
        assert!(
            notes[0]
                .why
                .starts_with("address 10.20.10.10 belongs to 2 instances"),
            "{}",
            notes[0]
        );
        let inventory = Inventory::new(hosts);
        let alice = Principal {
            user: "alice".into(),
            groups: ["research".to_string()].into(),
        };
        for target in [
            "dev-box",
            "i-0aaa",
            "ip-10-20-10-10.ec2.internal",
            "10.20.10.10",
        ] {
            match inventory.authorize(&alice, target, 22) {
                Err(Refusal::SharedAddress { address, hosts, .. }) => {
                    assert_eq!(address.to_string(), "10.20.10.10");
                    assert_eq!(hosts, ["i-0aaa", "i-0bbb"]);
                }
                other => panic!("{target}: {other:?}"),
            }
        }
        assert!(inventory.authorize(&alice, "i-0ccc", 22).is_ok());
    }

    #[test]
    fn a_custom_tag_prefix_is_used() {
        let mut s = settings();
        s.tag_prefix = "bastion/".into();
        let list = vec![instance(
            "i-1",
            "10.0.3.140",
            &[("bastion/groups", "research")],
        )];
        assert_eq!(hosts(&list, &s).0.len(), 1);
        let list = vec![instance(
            "i-1",
            "10.0.3.140",
            &[("gatehouse:groups", "research")],
        )];
        assert!(hosts(&list, &s).0.is_empty());
    }

    #[test]
    fn login_tags_are_read_only_with_instance_connect_and_a_bad_one_costs_the_push_only() {
        assert_eq!(
            parse_login_users("ec2-user, ubuntu ec2-user").unwrap(),
            ["ec2-user", "ubuntu"]
        );
        for bad in [
            "",
            " , ",
            "root",
            "Ubuntu",
            "9lives",
            "a b c d e",
            "ubuntu;id",
            &"u".repeat(33),
        ] {
            assert!(parse_login_users(bad).is_err(), "{bad:?}");
        }
        let list = vec![
            instance(
                "i-1",
                "10.0.3.140",
                &[
                    ("gatehouse:groups", "research"),
                    ("gatehouse:login", "ubuntu"),
                ],
            ),
            instance(
                "i-2",
                "10.0.3.141",
                &[
                    ("gatehouse:groups", "research"),
                    ("gatehouse:login", "root"),
                ],
            ),
            instance(
                "i-3",
                "10.0.3.142",
                &[("gatehouse:groups", "research"), ("gatehouse:login", " ")],
            ),
        ];
        // Off (the default): the tag is not read.
        let (hosts_off, notes) = hosts(&list, &settings());
        assert!(notes.is_empty(), "{notes:?}");
        assert!(hosts_off.iter().all(|h| h.login_users.is_empty()));
        let mut s = settings();
        s.instance_connect = true;
        let (on, notes) = hosts(&list, &s);
        assert_eq!(on.len(), 3, "a bad login tag keeps the host");
        // i-3's empty tag means none, without a note.
        assert_eq!(on[0].login_users, ["ubuntu"]);
        assert!(on[1].login_users.is_empty() && on[2].login_users.is_empty());
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0]
                .to_string()
                .starts_with("instance i-2 tag gatehouse:login: no key")
                && notes[0].why.contains("never pushed for root"),
            "{}",
            notes[0]
        );
    }
}
