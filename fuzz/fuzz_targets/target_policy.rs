//! Any target string and port against a fixed inventory: never a panic, and the invariant
//! that matters: a granted tunnel always dials an inventory address, and only targets that
//! are an inventory name or the exact text of an inventory address are ever granted.
#![no_main]

use std::collections::BTreeSet;
use std::net::IpAddr;

use gatehouse_policy::{Host, Inventory, Principal};
use libfuzzer_sys::fuzz_target;

fn inventory() -> Inventory {
    let host = |id: &str, addr: &str, ports: &[u16]| Host {
        id: id.into(),
        names: vec![id.into(), format!("{id}.internal")],
        address: addr.parse().expect("address"),
        groups: BTreeSet::from(["research".to_string()]),
        ports: ports.iter().copied().collect(),
        login_users: Vec::new(),
    };
    Inventory::new(vec![
        host("jupyter", "10.0.3.140", &[22, 8888]),
        host("db", "10.0.4.10", &[5432]),
        host("v6", "fd00::10", &[22]),
    ])
}

fuzz_target!(|input: (&str, u32)| {
    let (target, port) = input;
    let inventory = inventory();
    let alice = Principal {
        user: "alice".into(),
        groups: BTreeSet::from(["research".to_string()]),
    };
    let _ = inventory.resolve(target).map_err(|r| r.to_string());
    if let Ok(grant) = inventory.authorize(&alice, target, port) {
        let host = inventory
            .hosts()
            .iter()
            .find(|h| h.id == grant.host_id)
            .expect("granted host is in the inventory");
        assert_eq!(grant.dial.ip(), host.address);
        assert_eq!(u32::from(grant.dial.port()), port);
        let name = target.strip_suffix('.').unwrap_or(target).to_ascii_lowercase();
        let by_name = host.names.contains(&name);
        let by_address = target.parse::<IpAddr>() == Ok(host.address);
        assert!(by_name || by_address, "granted {target:?} -> {grant:?}");
    }
});
