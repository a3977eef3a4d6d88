//! Which IP addresses a bastion must never be configured to forward to, and why.
//!
//! A tunnel to loopback reaches the bastion's own services; one to link-local reaches the EC2
//! instance metadata service at 169.254.169.254, which hands out the bastion's IAM
//! credentials. IPv6 spellings of IPv4 addresses (`::ffff:127.0.0.1`) are refused outright:
//! they would dodge both these checks in other code and the "unique address" rule here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why `ip` may not be a target address, or `None` if it may.
#[must_use]
pub fn forbidden_target_reason(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4).map(str::to_owned),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, d] = ip.octets();
    if ip.is_unspecified() {
        Some("0.0.0.0 is the unspecified address, not a host")
    } else if a == 0 {
        Some("0.0.0.0/8 means \"this network\", not a host")
    } else if ip.is_loopback() {
        Some("it is a loopback address (127.0.0.0/8): that would reach the bastion itself")
    } else if (a, b, c, d) == (169, 254, 169, 254) {
        Some(
            "it is the instance metadata service (169.254.169.254), which holds the bastion's \
             own IAM credentials",
        )
    } else if ip.is_link_local() {
        Some(
            "it is a link-local address (169.254.0.0/16), home of the instance metadata \
             service and AWS DNS",
        )
    } else if ip.is_multicast() {
        Some("it is a multicast address (224.0.0.0/4)")
    } else if ip.is_broadcast() {
        Some("it is the broadcast address")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<String> {
    let segments = ip.segments();
    if ip.is_unspecified() {
        return Some(":: is the unspecified address, not a host".to_owned());
    }
    if ip.is_loopback() {
        return Some(
            "it is the loopback address (::1): that would reach the bastion itself".to_owned(),
        );
    }
    if ip.is_multicast() {
        return Some("it is a multicast address (ff00::/8)".to_owned());
    }
    if segments[0] & 0xffc0 == 0xfe80 {
        return Some("it is a link-local address (fe80::/10)".to_owned());
    }
    if segments[0] == 0xfd00 && segments[1] == 0x0ec2 {
        return Some(
            "it is in fd00:ec2::/32, reserved by AWS for the instance metadata service, DNS \
             and time sync"
                .to_owned(),
        );
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(match forbidden_v4(v4) {
            Some(reason) => format!("it is the IPv4-mapped form of {v4}, and {reason}"),
            None => format!("it is an IPv4-mapped IPv6 address; write it as {v4}"),
        });
    }
    if segments[..6] == [0; 6] {
        let [.., a, b, c, d] = ip.octets();
        let v4 = Ipv4Addr::new(a, b, c, d);
        return Some(match forbidden_v4(v4) {
            Some(reason) => format!("it is the IPv4-compatible form of {v4}, and {reason}"),
            None => format!("it is a deprecated IPv4-compatible IPv6 address; write it as {v4}"),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(s: &str) -> Option<String> {
        forbidden_target_reason(s.parse().expect("test address"))
    }

    #[test]
    fn ordinary_private_and_public_addresses_are_allowed() {
        for ok in [
            "10.0.3.140",
            "172.16.0.1",
            "192.168.1.1",
            "192.0.2.10",
            "8.8.8.8",
            "fd12:3456::1",
            "2001:db8::1",
            "169.253.1.1",
            "169.255.0.1",
        ] {
            assert_eq!(reason(ok), None, "{ok}");
        }
    }

    #[test]
    fn forbidden_addresses_have_reasons() {
        let cases = [
            ("127.0.0.1", "loopback"),
            ("127.1.2.3", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network"),
            ("169.254.169.254", "instance metadata service"),
            ("169.254.0.1", "link-local"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("ff02::1", "multicast"),
            ("fd00:ec2::254", "fd00:ec2::/32"),
            (
                "::ffff:127.0.0.1",
                "IPv4-mapped form of 127.0.0.1, and it is a loopback",
            ),
            ("::ffff:169.254.169.254", "instance metadata"),
            ("::ffff:10.0.0.1", "write it as 10.0.0.1"),
            ("::127.0.0.1", "IPv4-compatible form of 127.0.0.1"),
            ("::10.0.0.1", "write it as 10.0.0.1"),
        ];
        for (addr, want) in cases {
            let got = reason(addr).unwrap_or_default();
            assert!(got.contains(want), "{addr}: {got:?} lacks {want:?}");
        }
    }
}
