//! Pure authorization decisions for gatehouse: which inventory host a typed target names, and
//! whether a principal may reach (host, port).
//!
//! This crate does no I/O and knows nothing about SSH or AWS. Everything a user may reach is
//! derived from two inputs that callers build from their sources of truth: the [`Principal`]
//! (who authenticated, with which groups) and the [`Inventory`] (hosts, their names, groups and
//! ports). A target that is not an inventory host is refused whatever its spelling: the bastion
//! only ever dials the address recorded in the inventory, never the string the client typed.

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
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
}

/// The hosts a bastion may forward to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    hosts: Vec<Host>,
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
}

impl Inventory {
    /// Builds an inventory. Host names are matched case-insensitively; callers pass them
    /// lowercase.
    pub fn new(hosts: Vec<Host>) -> Self {
        Inventory { hosts }
    }

    /// All hosts, in the order given.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The host a client-typed target names: by one of its names (case-insensitive, a trailing
    /// dot ignored) or by its exact address in canonical form. Any other spelling of an address
    /// (IPv4-mapped IPv6, leading zeros, decimal or hex integers, `[brackets]`) names nothing.
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
            many => Err(Refusal::Ambiguous {
                target: printable(target),
                candidates: many.iter().map(|h| h.id.clone()).collect(),
            }),
        }
    }

    /// Resolves `target` and decides whether `principal` may reach it on `port`.
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
        Ok(Grant {
            host_id: host.id.clone(),
            dial: SocketAddr::new(host.address, port),
        })
    }

    /// For each host `principal` may reach, the ports it may use (hosts without any are left
    /// out). Used by `gatehouse hosts` and the session-channel hint.
    pub fn reachable(&self, principal: &Principal) -> Vec<&Host> {
        self.hosts
            .iter()
            .filter(|h| shares_group(principal, h))
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
