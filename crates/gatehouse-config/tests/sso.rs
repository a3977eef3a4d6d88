//! `[sso]` through the public API: what is read, the defaults, and each refusal at its
//! `LINE:COLUMN`.

use std::path::Path;
use std::time::Duration;

mod common;

use common::one_error;
use gatehouse_config::{parse, DEFAULT_SSO_VALIDITY};

const SERVER: &str = "[server]\nlisten = [\"0.0.0.0:22\"]\n";
const AWS: &str = "[aws]\nvpc_ids = [\"vpc-0123456789abcdef0\"]\n";

#[test]
fn sso_mappings_and_defaults_are_read() {
    let text = format!(
        "{SERVER}[sso]\naccounts = [\"123456789012\"]\nca_key = \"ca/user_ca\"\n\
         permission_sets = {{ Research = [\"research\"], Data_Admin = [\"research\", \"ops\"] }}\n\
         roles = {{ \"ci-runner\" = [\"ci\"] }}\n"
    );
    let config = parse(&text, Path::new("/etc/gatehouse/g.toml")).unwrap();
    let sso = config.sso.as_ref().expect("[sso]");
    assert_eq!(sso.accounts, ["123456789012"]);
    assert_eq!(sso.validity, DEFAULT_SSO_VALIDITY);
    assert_eq!(sso.validity, Duration::from_secs(10 * 3600));
    assert_eq!(sso.ca_key, Path::new("/etc/gatehouse/ca/user_ca"));
    assert_eq!(sso.permission_sets["Data_Admin"], ["research", "ops"]);
    assert_eq!(sso.roles["ci-runner"], ["ci"]);
    assert!(!sso.iam_users, "static users are not IAM users");
    assert!(config.summary().contains("sso: accounts 123456789012"));

    let with_aws =
        format!("{SERVER}{AWS}[sso]\naccounts = [\"123456789012\"]\nvalidity = \"1h\"\n");
    let sso = parse(&with_aws, Path::new("g.toml")).unwrap().sso.unwrap();
    assert!(sso.iam_users, "with [aws], IAM users map by default");
    assert_eq!(sso.validity, Duration::from_secs(3600));
    assert!(sso.permission_sets.is_empty());

    // With [aws] and no IAM users, roles with the groups tag may still map.
    let roles_by_tag =
        format!("{SERVER}{AWS}[sso]\naccounts = [\"123456789012\"]\niam_users = false\n");
    let sso = parse(&roles_by_tag, Path::new("g.toml"))
        .unwrap()
        .sso
        .unwrap();
    assert!(!sso.iam_users);
    assert!(sso.roles.is_empty());
}

#[test]
fn sso_refusals_point_at_the_value() {
    // Line 3 is `[sso]`, 4 the first key.
    let sso = |rest: &str| format!("{SERVER}[sso]\n{rest}");
    let mapped = "permission_sets = { Research = [\"research\"] }\n";
    one_error(&sso(mapped), 3, 1, "sso.accounts: missing");
    one_error(
        &sso(&format!("accounts = [\"12345\"]\n{mapped}")),
        4,
        13,
        "`12345` is not an AWS account id",
    );
    one_error(
        &sso("accounts = [\"123456789012\"]\n"),
        3,
        1,
        "sso: maps no caller",
    );
    one_error(
        &sso(&format!(
            "accounts = [\"123456789012\"]\nvalidity = \"1m\"\n{mapped}"
        )),
        5,
        12,
        "sso.validity: 1m is out of range",
    );
    one_error(
        &sso("accounts = [\"123456789012\"]\niam_users = true\n"),
        5,
        13,
        "sso.iam_users: needs [aws]",
    );
    one_error(
        &sso("accounts = [\"123456789012\"]\npermission_sets = { \"a b\" = [\"research\"] }\n"),
        5,
        29,
        "`a b` is not an IAM name",
    );
    one_error(
        &sso("accounts = [\"123456789012\"]\nroles = { ci = [] }\n"),
        5,
        16,
        "sso.roles.ci.groups: empty",
    );
    one_error(
        &sso(&format!(
            "accounts = [\"123456789012\"]\n{mapped}colour = \"red\"\n"
        )),
        6,
        1,
        "unknown field `colour`",
    );
}
