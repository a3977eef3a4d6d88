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

/// Why a forwarding request is refused. The `Display` text is shown to the user (in the SSH
/// channel-open failure) and written to the audit log, so it says what happened and never
/// more than the user may know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The target does not name an inventory host (loopback, metadata, unknown names, ...).
    #[error("'{target}' is not a host this bastion forwards to")]
    UnknownTarget { target: String },
    /// The target name matches more than one host.
    #[error("'{target}' is ambiguous: it names {}; use one of these ids", .candidates.join(", "))]
    Ambiguous {
        target: String,
        candidates: Vec<String>,
    },
    /// The port is outside 1..=65535.
    #[error("port {port} is not a TCP port")]
    InvalidPort { port: u32 },
    /// The user shares no group with the host.
    #[error("user '{user}' may not reach host '{host}'")]
    NoSharedGroup { user: String, host: String },
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
    SharedAddress { address: IpAddr, hosts: Vec<String> },
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
        match matches.as_slice() {
            [] => Err(unknown()),
            [one] => Ok(one),
            [first, rest @ ..] if rest.iter().all(|h| h.address == first.address) => {
                Err(Refusal::SharedAddress {
                    address: first.address,
                    hosts: self.sharing(first.address).unwrap_or_default(),
                })
            }
            many => Err(Refusal::Ambiguous {
                target: printable(target),
                candidates: many.iter().map(|h| h.id.clone()).collect(),
            }),
        }
    }

    /// Resolves `target` and decides whether `principal` may reach it on `port`.
    ///
    /// Never grants an address that more than one host has, by whatever name the host was
    /// asked for: the bastion's routes deliver it to one of them only, maybe to a host of
    /// another group. That refusal comes after the group check, so a user learns a host's
    /// address only for a host of their own groups (or when they typed the address).
    pub fn authorize(
        &self,
        principal: &Principal,
        target: &str,
        port: u32,
    ) -> Result<Grant, Refusal> {
        let host = self.resolve(target)?;
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(Refusal::InvalidPort { port })?;
        decide(principal, host, port)?;
        if let Some(hosts) = self.sharing(host.address) {
            return Err(Refusal::SharedAddress {
                address: host.address,
                hosts,
            });
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
