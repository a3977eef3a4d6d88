//! `[[trusted_user_ca]]`, `users[].expires` and a key's `expiry-time`, through the public API:
//! what is accepted, and each refusal at its `LINE:COLUMN`.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

mod common;

use common::one_error;
use gatehouse_config::parse;

const ALICE: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA/QDyYe4rrdgqzIM35BWrczCDZdu7xlBwE9876P1IVv alice@example";
const CA: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAID1/epXfixlSMRU/+nXXI0MBdkXyddgu850H/WDey7iC ca@example";
const SERVER: &str = "[server]\nlisten = [\"0.0.0.0:22\"]\n";

#[test]
fn a_trusted_ca_with_principals_and_max_validity_is_read() {
    let text = format!(
        "{SERVER}[[trusted_user_ca]]\nname = \"step-ca\"\nkeys = [\"{CA}\"]\n\
         principals = {{ \"alice@example.org\" = \"alice\" }}\nmax_validity = \"1d\"\n"
    );
    let config = parse(&text, Path::new("g.toml")).unwrap();
    let ca = &config.trusted_user_ca[0];
    assert_eq!(ca.name, "step-ca");
    assert_eq!(ca.keys.len(), 1);
    assert_eq!(
        ca.principals.as_ref().unwrap()["alice@example.org"],
        "alice"
    );
    assert_eq!(ca.max_validity, Some(Duration::from_secs(86_400)));
    assert!(config.summary().contains("trusted user CAs: step-ca"));
}

#[test]
fn trusted_ca_refusals_point_at_the_value() {
    // Line 3 is `[[trusted_user_ca]]`, 4 `name`, 5 `keys`, 6 the next key.
    let ca = |rest: &str| format!("{SERVER}[[trusted_user_ca]]\nname = \"step-ca\"\n{rest}");
    one_error(&ca(""), 3, 1, "CA has no public keys");
    one_error(
        &ca("keys = [\"junk\"]\n"),
        5,
        9,
        "trusted_user_ca[0].keys[0]: not an SSH public key",
    );
    one_error(
        &ca(&format!("keys = ['expiry-time=\"20300101Z\" {CA}']\n")),
        5,
        9,
        "authorized_keys options are not supported",
    );
    one_error(
        &ca(&format!(
            "keys = [\"{CA}\"]\nprincipals = {{ \"a@b\" = \"Alice\" }}\n"
        )),
        6,
        24,
        "lowercase",
    );
    one_error(
        &ca(&format!("keys = [\"{CA}\"]\nmax_validity = \"1s\"\n")),
        6,
        16,
        "out of range",
    );
    one_error(
        &format!("{SERVER}[[trusted_user_ca]]\nname = \"step ca\"\nkeys = [\"{CA}\"]\n"),
        4,
        8,
        "must be 1 to 64",
    );
    // A CA key is never also a user's key.
    one_error(
        &format!(
            "{SERVER}[[users]]\nname = \"alice\"\nkeys = [\"{CA}\"]\ngroups = [\"g\"]\n\
             [[trusted_user_ca]]\nname = \"ca\"\nkeys = [\"{CA}\"]\n"
        ),
        9,
        9,
        "already given at users[0].keys[0]",
    );
}

#[test]
fn expires_is_a_date_time_with_an_offset_in_either_spelling() {
    let user = |expires: &str| {
        format!("{SERVER}[[users]]\nname = \"alice\"\nkeys = [\"{ALICE}\"]\ngroups = [\"g\"]\nexpires = {expires}\n")
    };
    let at = UNIX_EPOCH + Duration::from_secs(1_798_740_000);
    for spelling in [
        "2026-12-31T18:00:00Z",
        "\"2026-12-31T18:00:00Z\"",
        "2026-12-31T19:00:00+01:00",
    ] {
        let config = parse(&user(spelling), Path::new("g.toml")).unwrap();
        assert_eq!(config.users[0].expires, Some(at), "{spelling}");
    }
    one_error(&user("2026-12-31T18:00:00"), 7, 11, "users[0].expires");
    one_error(&user("\"next friday\""), 7, 11, "not an RFC 3339 date-time");
}

#[test]
fn a_key_may_carry_expiry_time_and_nothing_else() {
    let user = |key: &str| {
        format!("{SERVER}[[users]]\nname = \"alice\"\nkeys = ['{key}']\ngroups = [\"g\"]\n")
    };
    let config = parse(
        &user(&format!("expiry-time=\"202612311800Z\" {ALICE}")),
        Path::new("g.toml"),
    )
    .unwrap();
    let (key, at) = &config.users[0].key_expires[0];
    assert_eq!(key, &config.users[0].keys[0]);
    assert_eq!(*at, UNIX_EPOCH + Duration::from_secs(1_798_740_000));
    let config = parse(
        &user(&format!("EXPIRY-TIME=\"20261231Z\" {ALICE}")),
        Path::new("g.toml"),
    )
    .unwrap();
    assert_eq!(config.users[0].key_expires.len(), 1);
    for (bad, needle) in [
        (format!("expiry-time=\"20261231\" {ALICE}"), "no trailing Z"),
        (
            format!("expiry-time=\"20261331Z\" {ALICE}"),
            "not a valid date",
        ),
        (format!("expiry-time=\"2026Z\" {ALICE}"), "not a date"),
        (
            format!("expiry-time=\"20261231Z\",no-pty {ALICE}"),
            "options are not supported",
        ),
        (format!("expiry-time=20261231Z {ALICE}"), "must be quoted"),
        (
            format!("no-pty,expiry-time=\"20261231Z\" {ALICE}"),
            "options are not supported",
        ),
    ] {
        one_error(&user(&bad), 5, 9, needle);
    }
}
