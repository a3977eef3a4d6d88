//! Callers of `gatehouse login`: who STS says signed a proof (an IAM Identity Center session,
//! another assumed role, an IAM user), and how `[sso]` maps one to a login and groups.
//!
//! The mapping is looked up twice: when a certificate is issued (to choose its login), and at
//! every login and directory change with the certificate (its [`Via`] extension says which
//! entry it came through), so a mapping removed from the config stops new logins and closes
//! open tunnels like any other revocation. A certificate carries no groups.
//!
//! An ordinary IAM role maps through `sso.roles`, or, in the bastion's own account, through
//! its groups tag (`<tag_prefix>groups`, as on IAM users), which the AWS directory reads with
//! the users ([`TaggedRoles`]): removing the tag is then a revocation like any other.

use std::collections::{BTreeMap, BTreeSet};

use gatehouse_config::SsoConfig;

use crate::names::{login_name, role_login};

/// A caller, as STS's answer names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An IAM Identity Center (SSO) session: the role `AWSReservedSSO_<PermissionSet>_<id>`
    /// assumed with the user's name as the session name.
    Sso {
        /// The permission set's name.
        permission_set: String,
        /// The role IAM Identity Center made for it in this account.
        role: String,
        /// The session name: the user's name in the identity store (often an email).
        session: String,
    },
    /// Another assumed role.
    Role {
        /// The role's name.
        role: String,
        /// The session name its assumer chose.
        session: String,
    },
    /// An IAM user.
    User {
        /// The user's name (without its path).
        name: String,
    },
}

/// Read a caller ARN (`arn:aws:sts::<account>:assumed-role/<role>/<session>` or
/// `arn:aws:iam::<account>:user/<path/>name`) into its account and caller.
///
/// # Errors
/// Any other principal (the account root, a federated user): refused, with the ARN.
pub fn caller(arn: &str) -> Result<(String, Caller), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let refuse = || format!("{arn} is not an assumed role or an IAM user");
    let [_, _, service, _, account, resource] = parts.as_slice() else {
        return Err(refuse());
    };
    let account = (*account).to_owned();
    match (*service, resource.split_once('/')) {
        ("sts", Some(("assumed-role", rest))) => {
            let (role, session) = rest.split_once('/').ok_or_else(refuse)?;
            if role.is_empty() || session.is_empty() {
                return Err(refuse());
            }
            let sso = role
                .strip_prefix("AWSReservedSSO_")
                .and_then(|r| r.rsplit_once('_'))
                .filter(|(set, id)| !set.is_empty() && !id.is_empty());
            Ok((
                account,
                match sso {
                    Some((set, _)) => Caller::Sso {
                        permission_set: set.to_owned(),
                        role: role.to_owned(),
                        session: session.to_owned(),
                    },
                    None => Caller::Role {
                        role: role.to_owned(),
                        session: session.to_owned(),
                    },
                },
            ))
        }
        ("iam", Some(("user", rest))) => {
            let name = rest.rsplit('/').next().unwrap_or(rest);
            if name.is_empty() {
                return Err(refuse());
            }
            Ok((
                account,
                Caller::User {
                    name: name.to_owned(),
                },
            ))
        }
        _ => Err(refuse()),
    }
}

/// The certificate extension that records which mapping entry a certificate was issued
/// through (its value is [`Via::encode`]).
pub const VIA_EXTENSION: &str = "gatehouse-via@gatehouse";

/// The mapping entry a login comes through.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Via {
    /// `sso.permission_sets.<name>`.
    PermissionSet(String),
    /// `sso.roles.<name>`.
    Role(String),
    /// An IAM role of the bastion's account, by its groups tag ([`TaggedRoles`]).
    TaggedRole(String),
    /// An IAM user of the directory (`sso.iam_users`).
    IamUser,
}

impl Via {
    /// As the certificate extension's value: `permission-set:<name>`, `role:<name>`,
    /// `tagged-role:<name>`, `iam-user`.
    pub fn encode(&self) -> String {
        match self {
            Via::PermissionSet(name) => format!("permission-set:{name}"),
            Via::Role(name) => format!("role:{name}"),
            Via::TaggedRole(name) => format!("tagged-role:{name}"),
            Via::IamUser => "iam-user".to_owned(),
        }
    }

    /// The inverse of [`Via::encode`]; `None` for anything else.
    pub fn decode(text: &str) -> Option<Via> {
        match text.split_once(':') {
            Some(("permission-set", name)) if !name.is_empty() => {
                Some(Via::PermissionSet(name.to_owned()))
            }
            Some(("role", name)) if !name.is_empty() => Some(Via::Role(name.to_owned())),
            Some(("tagged-role", name)) if !name.is_empty() => {
                Some(Via::TaggedRole(name.to_owned()))
            }
            None if text == "iam-user" => Some(Via::IamUser),
            _ => None,
        }
    }
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Via::PermissionSet(name) => write!(f, "permission set {name}"),
            Via::Role(name) => write!(f, "role {name}"),
            Via::TaggedRole(name) => write!(f, "role {name} (by its groups tag)"),
            Via::IamUser => f.write_str("IAM user"),
        }
    }
}

/// A caller mapped to a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The login name the certificate is issued for.
    pub login: String,
    /// The entry it came through.
    pub via: Via,
}

/// An IAM role that carries the groups tag, as the AWS directory read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedRole {
    /// The role's name (without its path).
    pub name: String,
    /// The account it is in (from its ARN).
    pub account: String,
    /// Its groups, from the tag.
    pub groups: BTreeSet<String>,
}

/// The IAM roles of the bastion's account that carry the groups tag (read only with `[sso]`
/// and `[aws]`; empty otherwise). A role caller not in `sso.roles` maps through these when
/// its account and role name match one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaggedRoles {
    roles: BTreeMap<String, TaggedRole>,
}

impl TaggedRoles {
    /// From the roles read (a role named twice keeps its last entry).
    pub fn new(roles: impl IntoIterator<Item = TaggedRole>) -> Self {
        TaggedRoles {
            roles: roles.into_iter().map(|r| (r.name.clone(), r)).collect(),
        }
    }

    /// The tagged role `name` of `account`.
    pub fn get(&self, account: &str, name: &str) -> Option<&TaggedRole> {
        self.roles.get(name).filter(|r| r.account == account)
    }

    /// The tagged role `name`, whatever its account (a certificate issued through it was
    /// issued for the account it had).
    pub fn named(&self, name: &str) -> Option<&TaggedRole> {
        self.roles.get(name)
    }
}

/// `[sso]`'s mapping (empty without `[sso]`: nothing maps).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Callers {
    accounts: Vec<String>,
    permission_sets: BTreeMap<String, BTreeSet<String>>,
    roles: BTreeMap<String, BTreeSet<String>>,
    iam_users: bool,
}

impl Callers {
    /// From `[sso]`.
    pub fn from_config(sso: Option<&SsoConfig>) -> Self {
        let Some(sso) = sso else {
            return Callers::default();
        };
        let groups = |m: &BTreeMap<String, Vec<String>>| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
                .collect()
        };
        Callers {
            accounts: sso.accounts.clone(),
            permission_sets: groups(&sso.permission_sets),
            roles: groups(&sso.roles),
            iam_users: sso.iam_users,
        }
    }

    /// The login `caller` (in `account`) maps to, through `[sso]` or, for a role not in
    /// `sso.roles`, through its groups tag (`tagged`), or why it maps to none (the reason the
    /// user sees). Whether the login is free is the snapshot's to say
    /// ([`crate::Snapshot::map_caller`]).
    pub fn map(
        &self,
        account: &str,
        caller: &Caller,
        tagged: &TaggedRoles,
    ) -> Result<Mapped, String> {
        if !self.accounts.iter().any(|a| a == account) {
            return Err(format!(
                "account {account} is not one whose callers may log in (sso.accounts)"
            ));
        }
        let typeable = |name: &str| {
            login_name(name).map_err(|e| format!("session name {name:?} cannot be a login: {e}"))
        };
        match caller {
            Caller::Sso {
                permission_set,
                session,
                ..
            } if self.permission_sets.contains_key(permission_set) => Ok(Mapped {
                login: typeable(session)?,
                via: Via::PermissionSet(permission_set.clone()),
            }),
            Caller::Sso { permission_set, .. } => Err(format!(
                "permission set {permission_set} is not mapped to any group (sso.permission_sets)"
            )),
            Caller::Role { role, session } => {
                let via = if self.roles.contains_key(role) {
                    Via::Role(role.clone())
                } else if tagged.get(account, role).is_some() {
                    Via::TaggedRole(role.clone())
                } else {
                    return Err(format!(
                        "role {role} is not mapped to any group (sso.roles, or a groups tag \
                         on the role)"
                    ));
                };
                let login = role_login(role, session)
                    .map_err(|e| format!("role session {session:?} cannot be a login: {e}"))?;
                Ok(Mapped { login, via })
            }
            Caller::User { name } if self.iam_users => Ok(Mapped {
                login: login_name(name).map_err(|e| e.to_string())?,
                via: Via::IamUser,
            }),
            Caller::User { name } => Err(format!(
                "IAM user {name} may not log in this way (sso.iam_users is off)"
            )),
        }
    }

    /// The groups of a mapping entry, or `None` if it is gone. `IamUser` has none here (the
    /// directory's IAM user has them), and a tagged role has those of `tagged`.
    pub fn groups<'a>(
        &'a self,
        via: &Via,
        tagged: &'a TaggedRoles,
    ) -> Option<&'a BTreeSet<String>> {
        match via {
            Via::PermissionSet(name) => self.permission_sets.get(name),
            Via::Role(name) => self.roles.get(name),
            Via::TaggedRole(name) => tagged.named(name).map(|r| &r.groups),
            Via::IamUser => None,
        }
    }

    /// Whether IAM user callers map.
    pub fn iam_users(&self) -> bool {
        self.iam_users
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callers() -> Callers {
        let text = "[server]\nlisten = [\"0.0.0.0:22\"]\n[sso]\naccounts = [\"123456789012\"]\n\
                    permission_sets = { Research = [\"research\"] }\nroles = { ci = [\"ci\"] }\n";
        let config = gatehouse_config::parse(text, std::path::Path::new("g.toml")).unwrap();
        Callers::from_config(config.sso.as_ref())
    }

    #[test]
    fn arns_are_read_as_sso_sessions_roles_and_users() {
        let (account, sso) = caller(
            "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Data_Admin_0123abcd/alice@example.org",
        )
        .unwrap();
        assert_eq!(account, "123456789012");
        assert_eq!(
            sso,
            Caller::Sso {
                permission_set: "Data_Admin".into(),
                role: "AWSReservedSSO_Data_Admin_0123abcd".into(),
                session: "alice@example.org".into()
            }
        );
        let (_, role) = caller("arn:aws:sts::123456789012:assumed-role/ci/run-42").unwrap();
        assert_eq!(
            role,
            Caller::Role {
                role: "ci".into(),
                session: "run-42".into()
            }
        );
        let (_, user) = caller("arn:aws:iam::123456789012:user/staff/bob").unwrap();
        assert_eq!(user, Caller::User { name: "bob".into() });
        for arn in [
            "arn:aws:iam::123456789012:root",
            "arn:aws:sts::123456789012:federated-user/bob",
            "arn:aws:sts::123456789012:assumed-role/ci",
            "not an arn",
        ] {
            assert!(caller(arn).is_err(), "{arn}");
        }
    }

    #[test]
    fn callers_map_by_permission_set_role_or_not_at_all() {
        let c = callers();
        let none = TaggedRoles::default();
        let sso = |set: &str, session: &str| Caller::Sso {
            permission_set: set.into(),
            role: format!("AWSReservedSSO_{set}_0a"),
            session: session.into(),
        };
        assert_eq!(
            c.map("123456789012", &sso("Research", "alice@example.org"), &none),
            Ok(Mapped {
                login: "alice~40example.org".into(),
                via: Via::PermissionSet("Research".into())
            })
        );
        let role = Caller::Role {
            role: "ci".into(),
            session: "run-42".into(),
        };
        assert_eq!(
            c.map("123456789012", &role, &none),
            Ok(Mapped {
                login: "ci/run-42".into(),
                via: Via::Role("ci".into())
            })
        );
        let refusals = [
            (
                "210987654321",
                sso("Research", "alice"),
                "account 210987654321 is not",
            ),
            (
                "123456789012",
                sso("Admin", "alice"),
                "permission set Admin is not mapped",
            ),
            (
                "123456789012",
                Caller::Role {
                    role: "other".into(),
                    session: "x".into(),
                },
                "role other is not mapped",
            ),
            (
                "123456789012",
                Caller::User { name: "bob".into() },
                "sso.iam_users is off",
            ),
        ];
        for (account, caller, needle) in refusals {
            let why = c.map(account, &caller, &none).unwrap_err();
            assert!(why.contains(needle), "{why}");
        }
        assert_eq!(
            c.groups(&Via::PermissionSet("Research".into()), &none),
            Some(&["research".to_string()].into())
        );
        assert_eq!(c.groups(&Via::Role("gone".into()), &none), None);
    }

    #[test]
    fn a_role_maps_by_its_groups_tag_in_the_bastions_account_only() {
        let c = callers();
        let tagged = TaggedRoles::new([
            TaggedRole {
                name: "deploy".into(),
                account: "123456789012".into(),
                groups: ["ops".to_string()].into(),
            },
            // sso.roles wins over a tag.
            TaggedRole {
                name: "ci".into(),
                account: "123456789012".into(),
                groups: ["ops".to_string()].into(),
            },
        ]);
        let role = |name: &str| Caller::Role {
            role: name.into(),
            session: "alice@example.org".into(),
        };
        assert_eq!(
            c.map("123456789012", &role("deploy"), &tagged),
            Ok(Mapped {
                login: "deploy/alice~40example.org".into(),
                via: Via::TaggedRole("deploy".into())
            })
        );
        assert_eq!(
            c.map("123456789012", &role("ci"), &tagged).unwrap().via,
            Via::Role("ci".into())
        );
        assert_eq!(
            c.groups(&Via::TaggedRole("deploy".into()), &tagged),
            Some(&["ops".to_string()].into())
        );
        assert_eq!(
            c.groups(&Via::TaggedRole("deploy".into()), &TaggedRoles::default()),
            None
        );
        // A role of that name in another account listed in sso.accounts does not match.
        let text = "[server]\nlisten = [\"0.0.0.0:22\"]\n[sso]\n\
                    accounts = [\"123456789012\", \"210987654321\"]\n\
                    permission_sets = { Research = [\"research\"] }\n";
        let config = gatehouse_config::parse(text, std::path::Path::new("g.toml")).unwrap();
        let two = Callers::from_config(config.sso.as_ref());
        let why = two
            .map("210987654321", &role("deploy"), &tagged)
            .unwrap_err();
        assert!(why.contains("role deploy is not mapped"), "{why}");
        assert!(two.map("123456789012", &role("deploy"), &tagged).is_ok());
    }

    #[test]
    fn via_round_trips_through_its_extension_value() {
        for via in [
            Via::PermissionSet("Data_Admin".into()),
            Via::Role("ci".into()),
            Via::TaggedRole("deploy".into()),
            Via::IamUser,
        ] {
            assert_eq!(Via::decode(&via.encode()), Some(via));
        }
        for junk in [
            "",
            "role:",
            "tagged-role:",
            "iam-user:x",
            "permission-set",
            "admin",
        ] {
            assert_eq!(Via::decode(junk), None, "{junk:?}");
        }
    }
}
