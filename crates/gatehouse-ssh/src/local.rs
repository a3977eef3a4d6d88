//! The bastion's own addresses, read from the OS when a tunnel is about to dial.
//!
//! The inventory never names loopback or link-local addresses (the config and the AWS builder
//! refuse them), but it cannot know the bastion's own interface addresses: a static host or a
//! tagged instance (the bastion itself, tagged by mistake) may carry one. A tunnel there would
//! reach the bastion's own services from the inside, so it is refused whatever the inventory
//! says. Read at each dial, not once at start: addresses change (DHCP, an added interface).

use std::io;
use std::net::IpAddr;

/// Whether `ip` is an address of one of this machine's interfaces (in this network namespace).
pub(crate) fn is_own_address(ip: IpAddr) -> io::Result<bool> {
    let ip = ip.to_canonical();
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    Ok(addrs
        .filter_map(|ifa| ifa.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .any(|own| own.to_canonical() == ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_own_and_a_documentation_address_is_not() {
        assert!(is_own_address("127.0.0.1".parse().unwrap()).unwrap());
        assert!(!is_own_address("192.0.2.77".parse().unwrap()).unwrap());
    }
}
