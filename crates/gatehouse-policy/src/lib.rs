//! Pure authorization decisions for gatehouse: which inventory host a typed target names, and
//! whether a principal may reach (host, port).
//!
//! This crate does no I/O and knows nothing about SSH or AWS. Everything a user may reach is
//! derived from two inputs that callers build from their sources of truth: the [`Principal`]
//! (who authenticated, with which groups) and the [`Inventory`] (hosts, their names, groups and
//! ports). A target that is not an inventory host is refused whatever its spelling: the bastion
//! only ever dials the address recorded in the inventory, never the string the client typed.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// An authenticated user, as the policy sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Login name.
    pub user: String,
    /// Groups the user belongs to.
    pub groups: BTreeSet<String>,
}

/// One host a bastion may forward to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Stable identifier (config name, or EC2 instance id), used in messages and audit.
    pub id: String,
    /// Names the host may be reached by, lowercase (config name; Name tag, instance id, private
    /// DNS name on AWS).
    pub names: Vec<String>,
    /// The one address the bastion dials.
    pub address: IpAddr,
    /// Groups allowed to reach the host.
    pub groups: BTreeSet<String>,
    /// Ports that may be forwarded to.
    pub ports: BTreeSet<u16>,
    /// OS users the bastion gives the client's key to, on this host, before a tunnel to its
    /// SSH port ([`SSH_PORT`]): EC2 Instance Connect on AWS. Empty: nothing is pushed.
    pub login_users: Vec<String>,
}

/// The port a tunnel must be for to carry a key push ([`Host::login_users`]): the one sshd
/// listens on in the images that ship EC2 Instance Connect.
pub const SSH_PORT: u16 = 22;

/// The hosts a bastion may forward to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    hosts: Vec<Host>,
    /// Addresses that more than one host has, with those hosts' ids: derived once here, not
    /// on every decision (each tunnel open and each re-check asks).
    shared: BTreeMap<IpAddr, Vec<String>>,
}

/// Why a forwarding request is refused. The `Display` text is the whole truth, for the audit
/// log and the bastion's own log; [`Refusal::for_user`] is what the user is shown (in the SSH
/// channel-open failure), which never says more than the user may know: nothing about hosts
/// outside their groups.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The target does not name an inventory host (loopback, metadata, unknown names, ...).
    #[error("'{target}' is not a host this bastion forwards to")]
    UnknownTarget { target: String },
    /// The target name matches more than one host the user may reach (only those are
    /// candidates: a host outside the user's groups never makes a name ambiguous).
    #[error("'{target}' is ambiguous: it names {}; use one of these ids", .candidates.join(", "))]
    Ambiguous {
        target: String,
        candidates: Vec<String>,
    },
    /// The port is outside 1..=65535.
    #[error("port {port} is not a TCP port")]
    InvalidPort { port: u32 },
    /// The user shares no group with the host (or hosts) the target names. The user is told
    /// what an unknown target tells, so refusals cannot map the inventory.
    #[error("user '{user}' may not reach host '{host}'")]
    NoSharedGroup {
        user: String,
        /// The id of the host, or the ids of the hosts, the target names (", "-separated).
        host: String,
        /// The target as typed (printable).
        target: String,
    },
    /// The port is not in the host's list.
    #[error("port {port} is not open on host '{host}' (allowed: {})", fmt_ports(.allowed))]
    PortNotAllowed {
        host: String,
        port: u16,
        allowed: Vec<u16>,
    },
    /// The host's address is also another inventory host's (two VPCs with overlapping CIDRs):
    /// the bastion cannot know which of them a dial would reach, so it dials neither.
    #[error(
        "address {address} belongs to {} hosts ({}); refusing to guess which one you mean",
        .hosts.len(),
        .hosts.join(", ")
    )]
    SharedAddress {
        address: IpAddr,
        /// Every host at the address.
        hosts: Vec<String>,
        /// Those of them the user may reach (the only ones the user is told of).
        reachable: Vec<String>,
    },
}

impl Refusal {
    /// A short stable label for metrics and audit (`reason_code`).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::UnknownTarget { .. } => "unknown_target",
            Refusal::Ambiguous { .. } => "ambiguous_target",
            Refusal::InvalidPort { .. } => "invalid_port",
            Refusal::NoSharedGroup { .. } => "no_shared_group",
            Refusal::PortNotAllowed { .. } => "port_not_allowed",
            Refusal::SharedAddress { .. } => "shared_address",
        }
    }
}

impl Refusal {
    /// What the user is told: the `Display` text, except that hosts outside the user's groups
    /// are never named nor counted. A target that names only such hosts is refused exactly as
    /// an unknown target is (echoing only what was typed).
    pub fn for_user(&self) -> String {
        match self {
            Refusal::NoSharedGroup { target, .. } => Refusal::UnknownTarget {
                target: target.clone(),
            }
            .to_string(),
            Refusal::SharedAddress {
                address,
                hosts,
                reachable,
            } if reachable.len() < hosts.len() => format!(
                "address {address} belongs to {} and to another host; refusing to guess which \
                 one you mean",
                if reachable.is_empty() {
                    "a host".to_owned()
                } else {
                    reachable.join(", ")
                }
            ),
            other => other.to_string(),
        }
    }
}

fn fmt_ports(ports: &[u16]) -> String {
    let parts: Vec<String> = ports.iter().map(u16::to_string).collect();
    parts.join(", ")
}

/// A permitted forwarding: where to dial, and which host it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The inventory host's id.
    pub host_id: String,
    /// The address to dial: always the inventory's, never the client's spelling.
    pub dial: SocketAddr,
    /// OS users to give the client's key to on the host before the channel opens: the host's
    /// [`Host::login_users`] for a tunnel to [`SSH_PORT`], else none.
    pub key_push: Vec<String>,
}

impl Inventory {
    /// Builds an inventory. Host names are matched case-insensitively; callers pass them
    /// lowercase.
    pub fn new(hosts: Vec<Host>) -> Self {
        let mut by_address: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        for host in &hosts {
            by_address
                .entry(host.address)
                .or_default()
                .push(host.id.clone());
        }
        by_address.retain(|_, ids| ids.len() > 1);
        Inventory {
            hosts,
            shared: by_address,
        }
    }

    /// All hosts, in the order given.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The ids of the hosts at `address`, when there is more than one: such an address
    /// names no host (see [`Refusal::SharedAddress`]).
    pub fn sharing(&self, address: IpAddr) -> Option<Vec<String>> {
        self.shared.get(&address).cloned()
    }

    /// Every address that more than one host has, with those hosts' ids, in address order.
    /// Never dialed; callers warn about them (the AWS builder does).
    pub fn shared_addresses(&self) -> Vec<(IpAddr, Vec<String>)> {
        self.shared
            .iter()
            .map(|(address, ids)| (*address, ids.clone()))
            .collect()
    }

    /// The host a client-typed target names: by one of its names (case-insensitive, a trailing
    /// dot ignored) or by its exact address in canonical form. Any other spelling of an address
    /// (IPv4-mapped IPv6, leading zeros, decimal or hex integers, `[brackets]`) names nothing.
    ///
    /// A target that names several hosts is refused: as [`Refusal::SharedAddress`] when they
    /// all have one address (the address itself, or the private DNS name both carry), else as
    /// [`Refusal::Ambiguous`]. A single host is returned even if its address is shared;
    /// [`Inventory::authorize`] refuses that.
    pub fn resolve(&self, target: &str) -> Result<&Host, Refusal> {
        let matches = self.matches(target)?;
        self.pick(target, &matches, None)
    }

    /// The hosts a client-typed target names (see [`Inventory::resolve`]); refused as unknown
    /// when it names none.
    fn matches(&self, target: &str) -> Result<Vec<&Host>, Refusal> {
        let unknown = || Refusal::UnknownTarget {
            target: printable(target),
        };
        let matches: Vec<&Host> = match target.parse::<IpAddr>() {
            // Only the canonical text form counts: "::ffff:10.0.0.1" parses as an IPv6 address
            // that differs from 10.0.0.1, so it matches no IPv4 host.
            Ok(addr) => self.hosts.iter().filter(|h| h.address == addr).collect(),
            Err(_) => {
                let name = target
                    .strip_suffix('.')
                    .unwrap_or(target)
                    .to_ascii_lowercase();
                if name.is_empty() {
                    return Err(unknown());
                }
                self.hosts
                    .iter()
                    .filter(|h| h.names.contains(&name))
                    .collect()
            }
        };
        if matches.is_empty() {
            return Err(unknown());
        }
        Ok(matches)
    }

    /// The one host among `candidates` (not empty) that `target` names: several at one
    /// address are [`Refusal::SharedAddress`], several elsewhere [`Refusal::Ambiguous`].
    /// `asker`: whose groups decide which hosts a `SharedAddress` may name to them.
    fn pick<'a>(
        &self,
        target: &str,
        candidates: &[&'a Host],
        asker: Option<&Principal>,
    ) -> Result<&'a Host, Refusal> {
        match candidates {
            [one] => Ok(one),
            [first, rest @ ..] if rest.iter().all(|h| h.address == first.address) => {
                Err(self.shared_address(first.address, asker))
            }
            many => Err(Refusal::Ambiguous {
                target: printable(target),
                candidates: many.iter().map(|h| h.id.clone()).collect(),
            }),
        }
    }

    /// The refusal of `address`, which several hosts have; only those `asker` shares a group
    /// with are `reachable` (all of them without an asker).
    fn shared_address(&self, address: IpAddr, asker: Option<&Principal>) -> Refusal {
        let hosts = self.sharing(address).unwrap_or_default();
        let reachable = self
            .hosts
            .iter()
            .filter(|h| h.address == address && asker.is_none_or(|p| shares_group(p, h)))
            .map(|h| h.id.clone())
            .collect();
        Refusal::SharedAddress {
            address,
            hosts,
            reachable,
        }
    }

    /// Resolves `target` among the hosts `principal` may reach and decides whether they may
    /// reach it on `port`.
    ///
    /// Hosts outside the principal's groups take no part in the resolution: a target that
    /// names only such hosts is [`Refusal::NoSharedGroup`] (shown to the user as an unknown
    /// target), and they never make a name ambiguous. So the answers a user gets tell them
    /// nothing about hosts outside their groups, whatever they type.
    ///
    /// Never grants an address that more than one host has, by whatever name the host was
    /// asked for: the bastion's routes deliver it to one of them only, maybe to a host of
    /// another group.
    pub fn authorize(
        &self,
        principal: &Principal,
        target: &str,
        port: u32,
    ) -> Result<Grant, Refusal> {
        let matches = self.matches(target)?;
        let visible: Vec<&Host> = matches
            .iter()
            .copied()
            .filter(|h| shares_group(principal, h))
            .collect();
        if visible.is_empty() {
            return Err(Refusal::NoSharedGroup {
                user: principal.user.clone(),
                host: matches
                    .iter()
                    .map(|h| h.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                target: printable(target),
            });
        }
        let host = self.pick(target, &visible, Some(principal))?;
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(Refusal::InvalidPort { port })?;
        decide(principal, host, port)?;
        if self.shared.contains_key(&host.address) {
            return Err(self.shared_address(host.address, Some(principal)));
        }
        Ok(Grant {
            host_id: host.id.clone(),
            dial: SocketAddr::new(host.address, port),
            key_push: if port == SSH_PORT {
                host.login_users.clone()
            } else {
                Vec::new()
            },
        })
    }

    /// For each host `principal` may reach, the ports it may use (hosts without any are left
    /// out, and so are hosts whose address another host has). Used by `gatehouse hosts` and
    /// the session-channel hint.
    pub fn reachable(&self, principal: &Principal) -> Vec<&Host> {
        self.hosts
            .iter()
            .filter(|h| shares_group(principal, h) && !self.shared.contains_key(&h.address))
            .collect()
    }
}

/// The policy: `principal` may reach `host` on `port` iff they share a group and the port is
/// listed for the host.
pub fn decide(principal: &Principal, host: &Host, port: u16) -> Result<(), Refusal> {
    if !shares_group(principal, host) {
        return Err(Refusal::NoSharedGroup {
            user: principal.user.clone(),
            host: host.id.clone(),
            target: host.id.clone(),
        });
    }
    if !host.ports.contains(&port) {
        return Err(Refusal::PortNotAllowed {
            host: host.id.clone(),
            port,
            allowed: host.ports.iter().copied().collect(),
        });
    }
    Ok(())
}

fn shares_group(principal: &Principal, host: &Host) -> bool {
    !principal.groups.is_disjoint(&host.groups)
}

/// Client-supplied text made safe for messages and logs: control characters escaped and the
/// length capped, so a hostile target string cannot forge log lines or flood them.
pub fn printable(text: &str) -> String {
    const MAX: usize = 128;
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.user)
    }
}

#[cfg(test)]
mod tests;
