//! The AWS actions the daemon needs, declared once: what each is for, what it applies to and
//! in which mode it is needed. The fetchers count every call they make with these constants
//! ([`crate::Calls::count`] takes an [`Action`], and only this module can make one), and
//! gatehouse-vpc builds the bastion role from [`needed`], so the role, the calls and the
//! documentation (tested against [`ALL`]) cannot drift apart.

use gatehouse_config::AwsConfig;

/// What an action is allowed on, in an IAM policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// `*`: the action has no resource-level permissions (list and describe calls).
    Any,
    /// IAM users: `arn:PARTITION:iam::ACCOUNT:user/*`.
    IamUsers,
    /// The key parameters `aws.host_key_ssm_parameter` and `aws.user_ca_ssm_parameter`:
    /// `arn:PARTITION:ssm:REGION:ACCOUNT:parameter/NAME` of each.
    HostKeyParameter,
    /// Instances of the region that carry both the groups tag and the login tag
    /// (`arn:PARTITION:ec2:REGION:ACCOUNT:instance/*`, conditioned on `aws:ResourceTag`).
    InstancesWithLoginTag,
    /// The IAM change-event queue `aws.events_queue_url`:
    /// `arn:PARTITION:sqs:REGION:ACCOUNT:NAME` (IAM's events arrive in `us-east-1`).
    EventQueue,
    /// The object `aws.shared_snapshot`: `arn:PARTITION:s3:::BUCKET/KEY`.
    SharedSnapshot,
    /// The log group `aws.audit_log_group` and its streams:
    /// `arn:PARTITION:logs:REGION:ACCOUNT:log-group:NAME:*`.
    AuditLogGroup,
}

/// When the daemon needs an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Always, in AWS mode.
    Always,
    /// With `aws.host_key_ssm_parameter` or `aws.user_ca_ssm_parameter`.
    SsmHostKey,
    /// With one of those and `aws.host_key_tags`.
    SsmHostKeyTags,
    /// With `aws.instance_connect`; used on a tunnel, not at start.
    InstanceConnect,
    /// With `aws.events_queue_url`.
    Events,
    /// With `aws.events_queue_url` and `aws.iam_group_prefix`.
    EventsGroupPrefix,
    /// With `aws.shared_snapshot`.
    SharedSnapshot,
    /// With `aws.audit_log_group`.
    AuditShipping,
}

/// One IAM action of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    name: &'static str,
    why: &'static str,
    resource: Resource,
    need: Need,
    called: bool,
}

impl Action {
    /// The IAM action name, e.g. `iam:ListUsers`.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// What the daemon uses it for.
    pub fn why(&self) -> &'static str {
        self.why
    }
    /// What it must be allowed on.
    pub fn resource(&self) -> Resource {
        self.resource
    }
    /// In which mode it is needed.
    pub fn need(&self) -> Need {
        self.need
    }
    /// True when it is an API call the daemon makes; false for a permission IAM checks as
    /// part of another call (`ssm:AddTagsToResource` for a `PutParameter` with tags).
    pub fn is_call(&self) -> bool {
        self.called
    }
}

/// Declares the actions, [`ALL`], and (for tests) their constant names.
macro_rules! actions {
    ($($(#[$doc:meta])* $ident:ident = $name:literal, $resource:ident, $need:ident, $called:literal, $why:literal;)*) => {
        $(
            $(#[$doc])*
            pub const $ident: Action = Action {
                name: $name,
                why: $why,
                resource: Resource::$resource,
                need: Need::$need,
                called: $called,
            };
        )*
        /// Every action the daemon may need, in the order the docs list them.
        pub const ALL: &[Action] = &[$($ident),*];
        /// (constant name, action), for the test that reads the fetchers' sources.
        #[cfg(test)]
        const BY_IDENT: &[(&str, Action)] = &[$((stringify!($ident), $ident)),*];
    };
}

actions! {
    /// Lists every user with their tags and IAM groups (and, with `[sso]`, every role with
    /// its tags).
    GET_ACCOUNT_AUTHORIZATION_DETAILS = "iam:GetAccountAuthorizationDetails", Any, Always, true,
        "every user with their tags and IAM groups, 1000 a page (no resource-level permissions exist); with `[sso]`, every role with its tags too";
    /// Lists a user's key ids.
    LIST_SSH_PUBLIC_KEYS = "iam:ListSSHPublicKeys", IamUsers, Always, true,
        "the key ids and Active/Inactive status of users with a gatehouse group";
    /// Reads a key body.
    GET_SSH_PUBLIC_KEY = "iam:GetSSHPublicKey", IamUsers, Always, true,
        "a key body, once per new key id";
    /// Lists the candidate instances.
    DESCRIBE_INSTANCES = "ec2:DescribeInstances", Any, Always, true,
        "the tagged, running instances (no resource-level permissions exist)";
    /// Reads the host key.
    GET_PARAMETER = "ssm:GetParameter", HostKeyParameter, SsmHostKey, true,
        "read the host key (and the SSO CA key)";
    /// Creates the host key.
    PUT_PARAMETER = "ssm:PutParameter", HostKeyParameter, SsmHostKey, true,
        "create the host key (and the SSO CA key) on first start (never overwrites)";
    /// Tags the host key as it is created.
    ADD_TAGS_TO_RESOURCE = "ssm:AddTagsToResource", HostKeyParameter, SsmHostKeyTags, false,
        "only with `host_key_tags`: tag the key as it is created (checked by PutParameter)";
    /// Pushes a user's key to an instance for 60 seconds.
    SEND_SSH_PUBLIC_KEY = "ec2-instance-connect:SendSSHPublicKey", InstancesWithLoginTag,
        InstanceConnect, true,
        "only with `instance_connect`: give the user's key to a tagged instance for 60 s";
    /// Reads the change events of IAM users.
    RECEIVE_MESSAGE = "sqs:ReceiveMessage", EventQueue, Events, true,
        "only with `events_queue_url`: read the IAM change events (never deletes: every replica reads them)";
    /// Re-reads one changed user.
    GET_USER = "iam:GetUser", IamUsers, Events, true,
        "only with `events_queue_url`: re-read the path and tags of a user an event names";
    /// Re-reads one changed user's IAM groups.
    LIST_GROUPS_FOR_USER = "iam:ListGroupsForUser", IamUsers, EventsGroupPrefix, true,
        "only with `events_queue_url` and `iam_group_prefix`: re-read the IAM groups of a user an event names";
    /// Reads the fleet's shared listing.
    GET_OBJECT = "s3:GetObject", SharedSnapshot, SharedSnapshot, true,
        "only with `shared_snapshot`: start from the fleet's shared listing";
    /// Shares this replica's listing.
    PUT_OBJECT = "s3:PutObject", SharedSnapshot, SharedSnapshot, true,
        "only with `shared_snapshot`: share the listing after each IAM sweep, at most once a minute otherwise";
    /// Creates this bastion's stream in the audit log group.
    CREATE_LOG_STREAM = "logs:CreateLogStream", AuditLogGroup, AuditShipping, true,
        "only with `audit_log_group`: create this bastion's stream (at start; an existing one is used)";
    /// Ships audit lines.
    PUT_LOG_EVENTS = "logs:PutLogEvents", AuditLogGroup, AuditShipping, true,
        "only with `audit_log_group`: ship the audit lines";
}

/// What the daemon is configured to do, as far as its AWS permissions are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mode {
    /// `aws.host_key_ssm_parameter` or `aws.user_ca_ssm_parameter` is set.
    pub ssm_host_key: bool,
    /// `aws.host_key_tags` is not empty (with `ssm_host_key`).
    pub host_key_tags: bool,
    /// `aws.instance_connect` is true.
    pub instance_connect: bool,
    /// `aws.events_queue_url` is set.
    pub events: bool,
    /// `aws.iam_group_prefix` is set.
    pub iam_group_prefix: bool,
    /// `aws.shared_snapshot` is set.
    pub shared_snapshot: bool,
    /// `aws.audit_log_group` is set.
    pub audit_shipping: bool,
}

impl Mode {
    /// The mode of a validated `[aws]` table.
    pub fn of(settings: &AwsConfig) -> Mode {
        let ssm_host_key =
            settings.host_key_ssm_parameter.is_some() || settings.user_ca_ssm_parameter.is_some();
        Mode {
            ssm_host_key,
            host_key_tags: ssm_host_key && !settings.host_key_tags.is_empty(),
            instance_connect: settings.instance_connect,
            events: settings.events_queue_url.is_some(),
            iam_group_prefix: settings.iam_group_prefix.is_some(),
            shared_snapshot: settings.shared_snapshot.is_some(),
            audit_shipping: settings.audit_log_group.is_some(),
        }
    }

    fn wants(self, need: Need) -> bool {
        match need {
            Need::Always => true,
            Need::SsmHostKey => self.ssm_host_key,
            Need::SsmHostKeyTags => self.ssm_host_key && self.host_key_tags,
            Need::InstanceConnect => self.instance_connect,
            Need::Events => self.events,
            Need::EventsGroupPrefix => self.events && self.iam_group_prefix,
            Need::SharedSnapshot => self.shared_snapshot,
            Need::AuditShipping => self.audit_shipping,
        }
    }
}

/// The actions a daemon in `mode` needs, no more, in [`ALL`]'s order.
pub fn needed(mode: Mode) -> Vec<Action> {
    ALL.iter().copied().filter(|a| mode.wants(a.need)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The fetchers, as compiled.
    const SOURCES: &[(&str, &str)] = &[
        ("iam.rs", include_str!("iam.rs")),
        ("ec2.rs", include_str!("ec2.rs")),
        ("hostkey.rs", include_str!("hostkey.rs")),
        ("refresh.rs", include_str!("refresh.rs")),
        ("build.rs", include_str!("build.rs")),
        ("instance_connect.rs", include_str!("instance_connect.rs")),
        ("events.rs", include_str!("events.rs")),
        ("shared.rs", include_str!("shared.rs")),
        ("ship.rs", include_str!("ship.rs")),
    ];

    /// The argument of every `.count(` in the fetchers' sources.
    fn counted() -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (file, text) in SOURCES {
            for (i, _) in text.match_indices("calls.count(") {
                let rest = &text[i + "calls.count(".len()..];
                let arg = rest.split(')').next().unwrap_or_default().trim();
                out.push((*file, arg.to_owned()));
            }
        }
        out
    }

    #[test]
    fn every_counted_call_is_a_declared_action_and_every_declared_call_is_made() {
        let counted = counted();
        assert!(counted.len() >= 7, "{counted:?}");
        let mut made = BTreeSet::new();
        for (file, arg) in &counted {
            let ident = arg.strip_prefix("actions::").unwrap_or_else(|| {
                panic!("{file}: calls.count({arg}) does not name an actions:: constant")
            });
            let action = BY_IDENT
                .iter()
                .find(|(name, _)| *name == ident)
                .map(|(_, a)| *a)
                .unwrap_or_else(|| panic!("{file}: {ident} is not declared"));
            assert!(action.is_call(), "{file}: {ident} is not a call");
            made.insert(action.name());
        }
        let declared: BTreeSet<_> = ALL
            .iter()
            .filter(|a| a.is_call())
            .map(|a| a.name())
            .collect();
        assert_eq!(made, declared, "declared calls that no fetcher makes");
    }

    #[test]
    fn names_are_unique_and_well_formed() {
        let names: BTreeSet<_> = ALL.iter().map(|a| a.name()).collect();
        assert_eq!(names.len(), ALL.len());
        for a in ALL {
            let (service, call) = a.name().split_once(':').expect("service:Action");
            assert!(
                [
                    "iam",
                    "ec2",
                    "ssm",
                    "ec2-instance-connect",
                    "sqs",
                    "s3",
                    "logs"
                ]
                .contains(&service),
                "{}",
                a.name()
            );
            assert!(
                call.chars().all(|c| c.is_ascii_alphanumeric()),
                "{}",
                a.name()
            );
        }
    }

    #[test]
    fn needed_follows_the_mode() {
        let names = |mode| -> Vec<&str> { needed(mode).iter().map(|a| a.name()).collect() };
        let base = [
            "iam:GetAccountAuthorizationDetails",
            "iam:ListSSHPublicKeys",
            "iam:GetSSHPublicKey",
            "ec2:DescribeInstances",
        ];
        assert_eq!(names(Mode::default()), base);
        let key = names(Mode {
            ssm_host_key: true,
            ..Mode::default()
        });
        assert_eq!(&key[base.len()..], ["ssm:GetParameter", "ssm:PutParameter"]);
        // Tags without the parameter tag nothing.
        assert_eq!(
            names(Mode {
                host_key_tags: true,
                ..Mode::default()
            }),
            base
        );
        let push = names(Mode {
            instance_connect: true,
            ..Mode::default()
        });
        assert_eq!(
            &push[base.len()..],
            ["ec2-instance-connect:SendSSHPublicKey"]
        );
        let events = names(Mode {
            events: true,
            ..Mode::default()
        });
        assert_eq!(&events[base.len()..], ["sqs:ReceiveMessage", "iam:GetUser"]);
        let shared = names(Mode {
            shared_snapshot: true,
            ..Mode::default()
        });
        assert_eq!(&shared[base.len()..], ["s3:GetObject", "s3:PutObject"]);
        let shipping = names(Mode {
            audit_shipping: true,
            ..Mode::default()
        });
        assert_eq!(
            &shipping[base.len()..],
            ["logs:CreateLogStream", "logs:PutLogEvents"]
        );
        // The group prefix alone needs nothing more: the account listing names the groups.
        assert_eq!(
            names(Mode {
                iam_group_prefix: true,
                ..Mode::default()
            }),
            base
        );
        let everything = names(Mode {
            ssm_host_key: true,
            host_key_tags: true,
            instance_connect: true,
            events: true,
            iam_group_prefix: true,
            shared_snapshot: true,
            audit_shipping: true,
        });
        assert_eq!(everything.len(), ALL.len());
    }

    #[test]
    fn mode_of_a_config() {
        let config = gatehouse_config::parse(
            "[server]\nlisten = [\"0.0.0.0:22\"]\n[aws]\nvpc_ids = [\"vpc-1\"]\n\
             iam_group_prefix = \"gatehouse-\"\nhost_key_ssm_parameter = \"/g/k\"\n\
             host_key_tags = { \"gatehouse:stack\" = \"lab\" }\ninstance_connect = true\n\
             events_queue_url = \"https://sqs.us-east-1.amazonaws.com/123456789012/q\"\n\
             shared_snapshot = \"s3://b-1/k\"\naudit_log_group = \"/g/a\"\n\
             [audit]\nfile = \"/a.jsonl\"\n",
            std::path::Path::new("t.toml"),
        )
        .expect("config");
        let aws = config.aws.expect("aws");
        assert_eq!(
            Mode::of(&aws),
            Mode {
                ssm_host_key: true,
                host_key_tags: true,
                instance_connect: true,
                events: true,
                iam_group_prefix: true,
                shared_snapshot: true,
                audit_shipping: true,
            }
        );
    }
}
