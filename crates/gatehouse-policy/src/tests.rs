//! Unit tests of target resolution and the policy.

use super::*;

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn host(id: &str, addr: &str, groups: &[&str], ports: &[u16]) -> Host {
    Host {
        id: id.into(),
        names: vec![id.into()],
        address: addr.parse().unwrap(),
        groups: set(groups),
        ports: ports.iter().copied().collect(),
        login_users: Vec::new(),
    }
}

fn alice() -> Principal {
    Principal {
        user: "alice".into(),
        groups: set(&["research"]),
    }
}

fn inventory() -> Inventory {
    Inventory::new(vec![
        host("jupyter", "10.0.3.140", &["research"], &[22, 8888]),
        host("prod-db", "10.0.4.10", &["ops"], &[5432]),
        host("v6box", "fd00::10", &["research"], &[22]),
    ])
}

#[test]
fn allowed_by_name_and_exact_address() {
    let inv = inventory();
    let g = inv.authorize(&alice(), "jupyter", 8888).unwrap();
    assert_eq!(g.host_id, "jupyter");
    assert_eq!(g.dial, "10.0.3.140:8888".parse().unwrap());
    let g = inv.authorize(&alice(), "10.0.3.140", 22).unwrap();
    assert_eq!(g.dial, "10.0.3.140:22".parse().unwrap());
    let g = inv.authorize(&alice(), "fd00::10", 22).unwrap();
    assert_eq!(g.dial, "[fd00::10]:22".parse().unwrap());
}

#[test]
fn names_are_case_insensitive_and_ignore_a_trailing_dot() {
    let inv = inventory();
    assert_eq!(inv.resolve("JuPyTeR").unwrap().id, "jupyter");
    assert_eq!(inv.resolve("jupyter.").unwrap().id, "jupyter");
    assert!(inv.resolve(".").is_err());
    assert!(inv.resolve("").is_err());
}

#[test]
fn dial_address_is_the_inventorys_never_the_clients() {
    let inv = inventory();
    let g = inv.authorize(&alice(), "JUPYTER.", 22).unwrap();
    assert_eq!(g.dial.ip(), "10.0.3.140".parse::<IpAddr>().unwrap());
}

#[test]
fn non_inventory_targets_of_any_spelling_are_refused() {
    let inv = inventory();
    for target in [
        "localhost",
        "127.0.0.1",
        "127.1",
        "0x7f000001",
        "2130706433",
        "0.0.0.0",
        "::1",
        "[::1]",
        "169.254.169.254",
        "instance-data",
        "metadata.google.internal",
        "fd00:ec2::254",
        "10.0.3.141",
        "010.000.003.140",
        "0x0a.0.3.140",
        "167773068", // 10.0.3.140 as an integer
        "::ffff:10.0.3.140",
        "::ffff:a00:38c",
        "[10.0.3.140]",
        "10.0.3.140.",
        " jupyter",
        "jupyter ",
        "jupyter\0",
        "jupyter.evil.example",
    ] {
        let err = inv.authorize(&alice(), target, 22).unwrap_err();
        assert_eq!(err.code(), "unknown_target", "target {target:?}: {err}");
    }
}

#[test]
fn wrong_group_is_audited_with_the_host_and_shown_as_an_unknown_target() {
    let inv = inventory();
    let err = inv.authorize(&alice(), "prod-db", 5432).unwrap_err();
    assert_eq!(
        err,
        Refusal::NoSharedGroup {
            user: "alice".into(),
            host: "prod-db".into(),
            target: "prod-db".into(),
        }
    );
    assert_eq!(err.to_string(), "user 'alice' may not reach host 'prod-db'");
    assert_eq!(
        err.for_user(),
        "'prod-db' is not a host this bastion forwards to"
    );
    // By address, as typed: the user sees what a free address answers, whatever the port.
    for port in [5432, 22, 70_000] {
        let hidden = inv.authorize(&alice(), "10.0.4.10", port).unwrap_err();
        let free = inv.authorize(&alice(), "10.0.4.11", port).unwrap_err();
        assert_eq!(hidden.code(), "no_shared_group");
        assert_eq!(
            hidden.for_user().replace("10.0.4.10", "X"),
            free.for_user().replace("10.0.4.11", "X"),
            "port {port}"
        );
        assert!(hidden.to_string().contains("prod-db"), "{hidden}");
    }
}

/// The review's probe: a user maps hosts outside their groups by the refusals they get. Every
/// answer about such a host is the answer about a name or address that is no host at all.
#[test]
fn refusals_never_tell_a_user_about_hosts_outside_their_groups() {
    let mut db = host("i-0db", "10.99.0.9", &["ops"], &[5432]);
    db.names = vec!["prod-db".into(), "i-0db".into(), "worker".into()];
    let mut twin = host("i-0twin", "10.99.0.20", &["ops"], &[22]);
    twin.names = vec!["i-0twin".into()];
    let mut mine = host("i-0mine", "10.99.0.20", &["research"], &[22]);
    mine.names = vec!["i-0mine".into(), "worker".into()];
    let mut other = host("i-0other", "10.99.0.30", &["research"], &[22]);
    other.names = vec!["i-0other".into(), "analysis".into()];
    let mut other_ops = host("i-0ops", "10.99.0.31", &["ops"], &[22]);
    other_ops.names = vec!["i-0ops".into(), "analysis".into()];
    let inv = Inventory::new(vec![db, twin, mine, other, other_ops]);
    let shown = |target: &str, port: u32| {
        inv.authorize(&alice(), target, port)
            .map(|g| g.host_id)
            .map_err(|r| r.for_user())
    };
    // An ops host, by every name and its address, on its own port and another.
    for target in ["prod-db", "i-0db", "10.99.0.9"] {
        for port in [5432, 22] {
            assert_eq!(
                shown(target, port),
                Err(format!("'{target}' is not a host this bastion forwards to"))
            );
        }
    }
    // A name that an ops host shares with alice's host names alice's host alone.
    assert_eq!(shown("analysis", 22), Ok("i-0other".to_owned()));
    // An address alice's host shares with an ops host: refused (never dialed), naming only
    // alice's host.
    for target in ["i-0mine", "10.99.0.20"] {
        let err = inv.authorize(&alice(), target, 22).unwrap_err();
        assert_eq!(err.code(), "shared_address");
        assert!(err.to_string().contains("(i-0twin, i-0mine)"), "{err}");
        assert_eq!(
            err.for_user(),
            "address 10.99.0.20 belongs to i-0mine and to another host; refusing to guess \
             which one you mean"
        );
    }
    // "worker" names the ops database and alice's host: it is alice's host, whose address is
    // shared.
    let err = inv.authorize(&alice(), "worker", 22).unwrap_err();
    assert_eq!(err.code(), "shared_address");
    assert!(!err.for_user().contains("i-0twin") && !err.for_user().contains("i-0db"));
    // And the truth is the audit's: the ops host is named there.
    let err = inv.authorize(&alice(), "10.99.0.9", 5432).unwrap_err();
    assert_eq!(err.to_string(), "user 'alice' may not reach host 'i-0db'");
}

#[test]
fn port_not_listed_is_refused_with_allowed_list() {
    let err = inventory()
        .authorize(&alice(), "jupyter", 8889)
        .unwrap_err();
    assert_eq!(err.code(), "port_not_allowed");
    assert_eq!(
        err.to_string(),
        "port 8889 is not open on host 'jupyter' (allowed: 22, 8888)"
    );
}

#[test]
fn out_of_range_ports_are_refused() {
    let inv = inventory();
    for port in [0u32, 65536, u32::MAX] {
        let err = inv.authorize(&alice(), "jupyter", port).unwrap_err();
        assert_eq!(err, Refusal::InvalidPort { port });
    }
}

#[test]
fn group_check_comes_before_port_check() {
    // A user outside the host's groups learns nothing about the host's ports.
    let err = inventory().authorize(&alice(), "prod-db", 1).unwrap_err();
    assert_eq!(err.code(), "no_shared_group");
}

#[test]
fn principal_without_groups_reaches_nothing() {
    let nobody = Principal {
        user: "nobody".into(),
        groups: BTreeSet::new(),
    };
    let inv = inventory();
    assert_eq!(inv.reachable(&nobody).len(), 0);
    assert!(inv.authorize(&nobody, "jupyter", 22).is_err());
}

#[test]
fn ambiguous_names_list_candidates() {
    let mut a = host("i-0aaa", "10.0.3.10", &["research"], &[22]);
    let mut b = host("i-0bbb", "10.0.3.11", &["research"], &[22]);
    a.names.push("worker".into());
    b.names.push("worker".into());
    let inv = Inventory::new(vec![a, b]);
    let err = inv.authorize(&alice(), "worker", 22).unwrap_err();
    assert_eq!(
        err,
        Refusal::Ambiguous {
            target: "worker".into(),
            candidates: vec!["i-0aaa".into(), "i-0bbb".into()]
        }
    );
    assert!(err.to_string().contains("i-0aaa, i-0bbb"));
    // The unique id still works.
    assert_eq!(inv.resolve("i-0bbb").unwrap().id, "i-0bbb");
}

#[test]
fn duplicate_address_is_refused_not_first_wins() {
    let inv = Inventory::new(vec![
        host("a", "10.0.3.10", &["research"], &[22]),
        host("b", "10.0.3.10", &["research"], &[22]),
    ]);
    assert_eq!(
        inv.resolve("10.0.3.10").unwrap_err(),
        Refusal::SharedAddress {
            address: "10.0.3.10".parse().unwrap(),
            hosts: vec!["a".into(), "b".into()],
            reachable: vec!["a".into(), "b".into()],
        }
    );
    assert_eq!(
        inv.shared_addresses(),
        [(
            "10.0.3.10".parse::<IpAddr>().unwrap(),
            vec!["a".to_owned(), "b".to_owned()]
        )]
    );
    assert!(inventory().shared_addresses().is_empty());
}

#[test]
fn reachable_lists_only_shared_group_hosts() {
    let inv = inventory();
    let ids: Vec<&str> = inv
        .reachable(&alice())
        .iter()
        .map(|h| h.id.as_str())
        .collect();
    assert_eq!(ids, ["jupyter", "v6box"]);
}

#[test]
fn hostile_target_text_is_escaped_and_capped() {
    let inv = inventory();
    let err = inv.resolve("evil\n{\"event\":\"forged\"}").unwrap_err();
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(text.contains("\\n"), "{text}");
    let long = "a".repeat(10_000);
    let text = inv.resolve(&long).unwrap_err().to_string();
    assert!(text.len() < 200, "{}", text.len());
}

/// dev-box (research, VPC A) and prod-box (ops, VPC B) share 10.20.10.10: two VPCs with one
/// CIDR. The bastion's routes deliver that address to one of them only, so it names neither.
fn twin_vpcs() -> Inventory {
    let mut dev = host("i-0aaa", "10.20.10.10", &["research"], &[22]);
    dev.names = vec![
        "dev-box".into(),
        "i-0aaa".into(),
        "ip-10-20-10-10.ec2.internal".into(),
    ];
    let mut prod = host("i-0bbb", "10.20.10.10", &["ops"], &[22]);
    prod.names = vec![
        "prod-box".into(),
        "i-0bbb".into(),
        "ip-10-20-10-10.ec2.internal".into(),
    ];
    Inventory::new(vec![
        dev,
        host("jupyter", "10.0.3.140", &["research"], &[22]),
        prod,
    ])
}

#[test]
fn an_address_of_two_hosts_is_never_dialed_however_the_host_is_named() {
    let inv = twin_vpcs();
    for target in [
        "dev-box",
        "DEV-BOX.",
        "i-0aaa",
        "ip-10-20-10-10.ec2.internal",
        "10.20.10.10",
    ] {
        let err = inv.authorize(&alice(), target, 22).unwrap_err();
        assert_eq!(err.code(), "shared_address", "target {target:?}: {err}");
        assert_eq!(
            err.to_string(),
            "address 10.20.10.10 belongs to 2 hosts (i-0aaa, i-0bbb); refusing to guess \
             which one you mean",
            "target {target:?}"
        );
    }
    // The other hosts are untouched.
    assert!(inv.authorize(&alice(), "jupyter", 22).is_ok());
    // The user is told only of the host they may reach.
    let err = inv.authorize(&alice(), "dev-box", 22).unwrap_err();
    assert_eq!(
        err.for_user(),
        "address 10.20.10.10 belongs to i-0aaa and to another host; refusing to guess which \
         one you mean"
    );
    // A host of another group is refused for the group, as before: its address stays unsaid.
    let err = inv.authorize(&alice(), "prod-box", 22).unwrap_err();
    assert_eq!(err.code(), "no_shared_group", "{err}");
    assert!(!err.to_string().contains("10.20.10.10"), "{err}");
    assert_eq!(
        err.for_user(),
        "'prod-box' is not a host this bastion forwards to"
    );
    // Nor is a shared-address host reachable for anyone, so it is not listed as such.
    let ids: Vec<&str> = inv
        .reachable(&alice())
        .iter()
        .map(|h| h.id.as_str())
        .collect();
    assert_eq!(ids, ["jupyter"]);
}

#[test]
fn an_address_of_two_hosts_of_one_group_is_refused_too() {
    // Even when the user may reach both, the bastion cannot say which one it would dial.
    let inv = Inventory::new(vec![
        host("a", "10.0.3.10", &["research"], &[22]),
        host("b", "10.0.3.10", &["research"], &[22]),
    ]);
    for target in ["a", "b", "10.0.3.10"] {
        let err = inv.authorize(&alice(), target, 22).unwrap_err();
        assert_eq!(err.code(), "shared_address", "target {target:?}: {err}");
        assert!(err.to_string().contains("(a, b)"), "{err}");
    }
}

#[test]
fn a_key_push_comes_only_with_a_tunnel_to_the_ssh_port_of_a_host_that_wants_one() {
    let mut jupyter = host("jupyter", "10.0.3.140", &["research"], &[22, 8888]);
    jupyter.login_users = vec!["ubuntu".into(), "ec2-user".into()];
    let inv = Inventory::new(vec![
        jupyter,
        host("plain", "10.0.3.141", &["research"], &[22]),
        host("prod-db", "10.0.4.10", &["ops"], &[22]),
    ]);
    let g = inv.authorize(&alice(), "jupyter", 22).unwrap();
    assert_eq!(g.key_push, ["ubuntu", "ec2-user"]);
    // Another port of the same host: nothing to push.
    assert!(inv
        .authorize(&alice(), "jupyter", 8888)
        .unwrap()
        .key_push
        .is_empty());
    // A host without login users: nothing.
    assert!(inv
        .authorize(&alice(), "plain", 22)
        .unwrap()
        .key_push
        .is_empty());
    // A refusal is a refusal: no grant, so no push either.
    assert!(inv.authorize(&alice(), "prod-db", 22).is_err());
}
