//! The IAM documents of the bastion role: who may assume it (EC2) and what it may do (exactly
//! what the daemon reads and writes, nothing else).

use gatehouse_aws::actions::{self, Mode, Resource};
use gatehouse_config::AwsConfig;
use serde_json::{json, Value};

use crate::names::{audit_log_group, event_queue_arn, host_key_parameter, partition};
use crate::spec::Spec;

/// Trust policy: only the EC2 service may assume the role (through the instance profile).
pub fn trust_policy() -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole"
        }]
    })
}

/// The `[aws]` table of the daemon config gatehouse-vpc writes for `spec`, as the daemon's own
/// parser reads it. `None` only for a spec the daemon would refuse, which `spec::parse` never
/// returns (it runs the same check).
pub fn daemon_settings(spec: &Spec, account: &str) -> Option<AwsConfig> {
    // The VPC id does not change what the daemon calls; any valid one will do. The account
    // names the shared listing's bucket.
    let account = if account.is_empty() {
        crate::userdata::PLACEHOLDER_ACCOUNT
    } else {
        account
    };
    crate::userdata::check_daemon_config(spec, "vpc-00000000", account)
        .ok()
        .and_then(|c| c.aws)
}

/// The inline policy of the bastion role: exactly the actions
/// [`gatehouse_aws::actions::needed`] lists for the daemon config gatehouse-vpc writes
/// ([`daemon_settings`]), one statement per kind of resource.
///
/// - Describe and list calls have no resource-level permissions, hence `*`.
/// - IAM users: `user/*` of any account (the role's own, in practice).
/// - IAM groups: only those named with `aws.iam_group_prefix`.
/// - SSM: the host key parameter only. A SecureString encrypted with the AWS managed key
///   `aws/ssm` needs no extra KMS statement.
/// - With `[bastion] iam_events`: the stack's event queue in `account`
///   (`arn:aws:sqs:us-east-1:ACCOUNT:gatehouse-<stack>-iam-events`), whose messages the
///   daemon receives (and never deletes).
/// - With a stored binary (`bucket`): `s3:GetObject` on the bucket's `gatehouse/` objects, for
///   the boot-time fetch (not the daemon).
pub fn bastion_policy(spec: &Spec, bucket: Option<&str>, account: &str) -> Value {
    let part = partition(&spec.region);
    let settings = daemon_settings(spec, account);
    let mode = match &settings {
        Some(aws) => Mode::of(aws),
        // Unreachable for a parsed spec (see `daemon_settings`): what gatehouse-vpc itself
        // writes without `[bastion.daemon]`.
        None => Mode {
            ssm_host_key: true,
            host_key_tags: true,
            instance_connect: false,
            events: spec.bastion.iam_events,
            iam_group_prefix: false,
            shared_snapshot: false,
            audit_shipping: true,
        },
    };
    let parameter = settings
        .as_ref()
        .and_then(|a| a.host_key_ssm_parameter.clone())
        .unwrap_or_else(|| host_key_parameter(&spec.stack));
    // The name starts with `/`, which the ARN does not repeat.
    let parameter_arn = |name: &str| {
        format!(
            "arn:{part}:ssm:{}:*:parameter/{}",
            spec.region,
            name.trim_start_matches('/')
        )
    };
    let mut key_parameters = vec![parameter_arn(&parameter)];
    if let Some(ca) = settings
        .as_ref()
        .and_then(|a| a.user_ca_ssm_parameter.as_deref())
    {
        key_parameters.push(parameter_arn(ca));
    }
    let audit_group = settings
        .as_ref()
        .and_then(|a| a.audit_log_group.clone())
        .unwrap_or_else(|| audit_log_group(&spec.stack));
    // Pushes go only to instances that carry both tags the daemon reads for them, and never
    // for an OS user the daemon never pushes for (root), whatever a tag says.
    let tagged = settings.as_ref().map_or(Value::Null, |a| {
        json!({
            "Null": {
                format!("aws:ResourceTag/{}", a.groups_tag()): "false",
                format!("aws:ResourceTag/{}", a.login_tag()): "false",
            },
            "StringNotEquals": {"ec2:osuser": gatehouse_config::NEVER_PUSHED_OS_USERS},
        })
    });
    let mut statements = Vec::new();
    for (sid, resource, arn, condition) in [
        ("ListAndDescribe", Resource::Any, json!("*"), Value::Null),
        (
            "ReadUserKeys",
            Resource::IamUsers,
            json!(format!("arn:{part}:iam::*:user/*")),
            Value::Null,
        ),
        (
            "HostKey",
            Resource::HostKeyParameter,
            match key_parameters.as_slice() {
                [one] => json!(one),
                many => json!(many),
            },
            Value::Null,
        ),
        (
            PUSH_KEYS_SID,
            Resource::InstancesWithLoginTag,
            json!(format!("arn:{part}:ec2:{}:*:instance/*", spec.region)),
            tagged,
        ),
        (
            EVENTS_SID,
            Resource::EventQueue,
            json!(event_queue_arn(&spec.stack, account)),
            Value::Null,
        ),
        (
            "SharedListing",
            Resource::SharedSnapshot,
            // Only with `[bastion.daemon.aws] shared_snapshot`; no action needs it otherwise.
            json!(settings
                .as_ref()
                .and_then(|a| a.shared_snapshot.as_ref())
                .map_or_else(String::new, |o| {
                    format!("arn:{part}:s3:::{}/{}", o.bucket, o.key)
                })),
            Value::Null,
        ),
        (
            AUDIT_SID,
            Resource::AuditLogGroup,
            json!(format!(
                "arn:{part}:logs:{}:{account}:log-group:{audit_group}:*",
                spec.region
            )),
            Value::Null,
        ),
    ] {
        let actions: Vec<&str> = actions::needed(mode)
            .iter()
            .filter(|a| a.resource() == resource)
            .map(|a| a.name())
            .collect();
        if !actions.is_empty() {
            let mut statement = json!({
                "Sid": sid,
                "Effect": "Allow",
                "Action": actions,
                "Resource": arn,
            });
            if !condition.is_null() {
                statement["Condition"] = condition;
            }
            statements.push(statement);
        }
    }
    if let Some(bucket) = bucket {
        statements.push(json!({
            "Sid": FETCH_BINARY_SID,
            "Effect": "Allow",
            "Action": [FETCH_BINARY_ACTION],
            "Resource": format!("arn:{part}:s3:::{}", crate::names::binary_object_arn_path(bucket)),
        }));
    }
    json!({
        "Version": "2012-10-17",
        "Statement": statements,
    })
}

/// The statement of the bastion role for EC2 Instance Connect (`aws.instance_connect`).
pub const PUSH_KEYS_SID: &str = "PushKeysToTaggedInstances";

/// The statement of the bastion role for the IAM change-event queue (`[bastion] iam_events`).
pub const EVENTS_SID: &str = "ReceiveIamChangeEvents";

/// The statement of the bastion role for shipping the audit log to the stack's log group.
pub const AUDIT_SID: &str = "ShipAuditLog";

/// The statement of the bastion role that lets the instance fetch its binary at boot.
pub const FETCH_BINARY_SID: &str = "FetchGatehouseBinary";
/// Its one action.
pub const FETCH_BINARY_ACTION: &str = "s3:GetObject";

/// The binary bucket's policy: any request that is not over TLS is denied, whoever makes it.
pub fn bucket_policy(region: &str, bucket: &str) -> Value {
    let part = partition(region);
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "TlsOnly",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [
                format!("arn:{part}:s3:::{bucket}"),
                format!("arn:{part}:s3:::{bucket}/*"),
            ],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }]
    })
}

/// The event queue's policy: only EventBridge may send to it, and only for the stack's rule;
/// every other sender is denied, the account's own principals with an `sqs:SendMessage`
/// grant included (a forged event cannot grant, but a standing pool of them could hide a real
/// revocation until it expires; the daemon sweeps when it sees a backlog, and this keeps the
/// pool from forming). The role's own policy grants the receive.
pub fn event_queue_policy(queue_arn: &str, rule_arn: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "OnlyTheStacksRule",
                "Effect": "Allow",
                "Principal": {"Service": "events.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}},
            },
            {
                "Sid": "NoOtherSender",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnNotEquals": {"aws:SourceArn": rule_arn}},
            },
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The account the role's queue statement names.
    const ACCOUNT: &str = "123456789012";

    fn spec(extra: &str) -> Spec {
        let text = format!(
            "[stack]\nname = \"lab\"\nregion = \"eu-central-1\"\n\n\
             [vpc]\ncidr = \"10.0.0.0/16\"\nazs = [\"eu-central-1a\"]\nnat = \"single\"\n\n\
             [[subnets]]\nname = \"dmz-a\"\ntier = \"public\"\ncidr = \"10.0.0.0/24\"\naz = \"eu-central-1a\"\n\n\
             [bastion]\nsubnet = \"dmz-a\"\nami = \"ami-0123456789abcdef0\"\n\
             allowed_cidrs = [\"198.51.100.0/24\"]\n\
             gatehouse_download_url = \"https://example.org/gatehouse\"\n{extra}"
        );
        crate::spec::parse("t.toml", &text, None).unwrap_or_else(|e| panic!("{e}"))
    }

    fn granted(policy: &Value) -> Vec<String> {
        policy["Statement"]
            .as_array()
            .expect("statements")
            .iter()
            .flat_map(|s| s["Action"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect()
    }

    #[test]
    fn the_role_grants_exactly_what_the_written_config_needs() {
        let spec = spec("");
        let settings = daemon_settings(&spec, "").expect("the written config is valid");
        let policy = bastion_policy(&spec, None, ACCOUNT);
        let mut got = granted(&policy);
        got.sort();
        let mut want: Vec<String> = actions::needed(Mode::of(&settings))
            .iter()
            .map(|a| a.name().to_owned())
            .collect();
        want.sort();
        assert_eq!(got, want);
        // The config writes the SSM host key with the stack tag: its three SSM actions, on
        // that one parameter; and it ships the audit log to the stack's log group.
        assert_eq!(
            want,
            [
                "ec2:DescribeInstances",
                "iam:GetAccountAuthorizationDetails",
                "iam:GetSSHPublicKey",
                "iam:ListSSHPublicKeys",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
                "ssm:AddTagsToResource",
                "ssm:GetParameter",
                "ssm:PutParameter",
            ]
        );
        assert!(Mode::of(&settings).audit_shipping);
        let by_sid = |sid: &str| {
            policy["Statement"]
                .as_array()
                .and_then(|l| l.iter().find(|s| s["Sid"] == sid).cloned())
                .unwrap_or_else(|| panic!("no statement {sid}: {policy:#}"))
        };
        assert_eq!(
            by_sid("HostKey")["Resource"],
            "arn:aws:ssm:eu-central-1:*:parameter/gatehouse/lab/host_ed25519"
        );
        assert_eq!(by_sid("ReadUserKeys")["Resource"], "arn:aws:iam::*:user/*");
        assert_eq!(by_sid("ListAndDescribe")["Resource"], "*");
        // The stack's log group in this account and region; `:*` covers its streams.
        assert_eq!(
            by_sid(AUDIT_SID),
            json!({
                "Sid": AUDIT_SID,
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": "arn:aws:logs:eu-central-1:123456789012:log-group:/gatehouse/lab/audit:*",
            })
        );
        assert_eq!(
            settings.audit_log_group.as_deref(),
            Some("/gatehouse/lab/audit")
        );
    }

    #[test]
    fn an_iam_group_prefix_needs_no_more_actions() {
        // The account listing names every user's IAM groups: no group reads.
        let with_prefix = spec("\n[bastion.daemon.aws]\niam_group_prefix = \"gatehouse-\"\n");
        assert_eq!(
            bastion_policy(&with_prefix, None, ACCOUNT),
            bastion_policy(&spec(""), None, ACCOUNT)
        );
    }

    #[test]
    fn instance_connect_adds_the_push_on_instances_with_both_tags_only() {
        let spec = spec("\n[bastion.daemon.aws]\ninstance_connect = true\n");
        let policy = bastion_policy(&spec, None, ACCOUNT);
        let push = policy["Statement"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["Sid"] == PUSH_KEYS_SID).cloned())
            .unwrap_or_else(|| panic!("no push statement: {policy:#}"));
        assert_eq!(
            push,
            json!({
                "Sid": PUSH_KEYS_SID,
                "Effect": "Allow",
                "Action": ["ec2-instance-connect:SendSSHPublicKey"],
                "Resource": "arn:aws:ec2:eu-central-1:*:instance/*",
                "Condition": {
                    "Null": {
                        "aws:ResourceTag/gatehouse:groups": "false",
                        "aws:ResourceTag/gatehouse:login": "false",
                    },
                    "StringNotEquals": {"ec2:osuser": ["root"]},
                },
            })
        );
        // Off by default: not granted.
        assert!(!granted(&bastion_policy(&self::spec(""), None, ACCOUNT))
            .iter()
            .any(|a| a.starts_with("ec2-instance-connect:")));
    }

    /// The text between `heading` and the next heading of the same level or above.
    fn section<'a>(text: &'a str, heading: &str) -> &'a str {
        let start = text
            .find(heading)
            .unwrap_or_else(|| panic!("no {heading:?}"));
        let body = &text[start + heading.len()..];
        let end = body
            .find("\n## ")
            .into_iter()
            .chain(body.find("\n### "))
            .min();
        &body[..end.unwrap_or(body.len())]
    }

    fn json_block(section: &str) -> Value {
        let start = section.find("```json\n").expect("a json block") + "```json\n".len();
        let end = section[start..].find("```").expect("its end") + start;
        serde_json::from_str(&section[start..end]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// How the README's table writes each kind of resource.
    fn readme_resource(resource: Resource) -> &'static str {
        match resource {
            Resource::Any => "`*`",
            Resource::IamUsers => "`arn:aws:iam::ACCOUNT:user/*`",
            Resource::HostKeyParameter => "the parameter's ARN",
            Resource::InstancesWithLoginTag => {
                "`arn:aws:ec2:REGION:ACCOUNT:instance/*` with the groups and login tags"
            }
            Resource::EventQueue => "the queue's ARN",
            Resource::SharedSnapshot => "the object's ARN",
            Resource::AuditLogGroup => "`arn:aws:logs:REGION:ACCOUNT:log-group:NAME:*`",
        }
    }

    #[test]
    fn the_readme_lists_exactly_the_declared_actions() {
        let readme = include_str!("../../../README.md");
        let part = section(readme, "### The IAM policy the bastion needs");
        let rows: Vec<&str> = part.lines().filter(|l| l.starts_with("| `")).collect();
        let want: Vec<String> = actions::ALL
            .iter()
            .map(|a| {
                format!(
                    "| `{}` | {} | {} |",
                    a.name(),
                    a.why(),
                    readme_resource(a.resource())
                )
            })
            .collect();
        assert_eq!(
            rows, want,
            "README.md's table vs gatehouse_aws::actions::ALL"
        );
        // The example policy: every declared action once, on its kind of resource.
        let doc = json_block(part);
        let mut listed = Vec::new();
        for statement in doc["Statement"].as_array().expect("statements") {
            let names: Vec<&str> = match &statement["Action"] {
                Value::String(one) => vec![one.as_str()],
                many => many
                    .as_array()
                    .expect("actions")
                    .iter()
                    .filter_map(Value::as_str)
                    .collect(),
            };
            let arn = statement["Resource"].as_str().expect("resource");
            for name in names {
                let action = actions::ALL
                    .iter()
                    .find(|a| a.name() == name)
                    .unwrap_or_else(|| panic!("README.md's policy grants undeclared {name}"));
                let fits = match action.resource() {
                    Resource::Any => arn == "*",
                    Resource::IamUsers => arn.ends_with(":user/*"),
                    Resource::HostKeyParameter => arn.contains(":parameter/"),
                    Resource::InstancesWithLoginTag => {
                        arn.ends_with(":instance/*")
                            && statement["Condition"]["Null"]["aws:ResourceTag/gatehouse:login"]
                                == "false"
                    }
                    Resource::EventQueue => arn.starts_with("arn:aws:sqs:"),
                    Resource::SharedSnapshot => arn.starts_with("arn:aws:s3:::"),
                    Resource::AuditLogGroup => {
                        arn.starts_with("arn:aws:logs:") && arn.contains(":log-group:")
                    }
                };
                assert!(fits, "README.md's policy: {name} on {arn}");
                listed.push(name);
            }
        }
        listed.sort_unstable();
        let mut all: Vec<&str> = actions::ALL.iter().map(|a| a.name()).collect();
        all.sort_unstable();
        assert_eq!(
            listed, all,
            "README.md's policy vs gatehouse_aws::actions::ALL"
        );
    }

    #[test]
    fn the_vpc_readme_shows_the_policy_gatehouse_vpc_creates() {
        let readme = include_str!("../README.md");
        let doc = json_block(section(readme, "### The bastion's IAM policy"));
        let text = doc
            .to_string()
            .replace("<region>", "eu-central-1")
            .replace("<stack>", "lab")
            .replace("<account>", ACCOUNT);
        let doc: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(doc, bastion_policy(&spec(""), None, ACCOUNT));
        // The statement a stored binary adds.
        let part = section(readme, "### The bastion's IAM policy");
        let second = &part[part.find("```json\n").expect("first block") + 8..];
        let second = &second[second.find("```").expect("its end") + 3..];
        let statement = json_block(second)
            .to_string()
            .replace("<stack>", "lab")
            .replace("<account>", "123456789012");
        let statement: Value = serde_json::from_str(&statement).expect("json");
        let bucket = crate::names::binary_bucket("lab", "123456789012");
        let with_bucket = bastion_policy(&spec(""), Some(&bucket), ACCOUNT);
        let statements = with_bucket["Statement"].as_array().expect("statements");
        assert_eq!(statements.last(), Some(&statement));
        assert_eq!(
            statements.len(),
            doc["Statement"].as_array().map_or(0, Vec::len) + 1
        );
        // The statement `iam_events` adds.
        let third = &second[second.find("```json\n").expect("second block") + 8..];
        let third = &third[third.find("```").expect("its end") + 3..];
        let statement = json_block(third)
            .to_string()
            .replace("<stack>", "lab")
            .replace("<account>", ACCOUNT);
        let statement: Value = serde_json::from_str(&statement).expect("json");
        let with_events = bastion_policy(&spec("iam_events = true\n"), None, ACCOUNT);
        let found = with_events["Statement"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["Sid"] == EVENTS_SID));
        assert_eq!(found, Some(&statement), "{with_events:#}");
    }

    #[test]
    fn iam_events_add_the_receive_on_the_stacks_queue_and_the_user_rereads() {
        let off = granted(&bastion_policy(&spec(""), None, ACCOUNT));
        let policy = bastion_policy(&spec("iam_events = true\n"), None, ACCOUNT);
        let mut added: Vec<String> = granted(&policy)
            .into_iter()
            .filter(|a| !off.contains(a))
            .collect();
        added.sort();
        assert_eq!(added, ["iam:GetUser", "sqs:ReceiveMessage"]);
        let queue = policy["Statement"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["Sid"] == EVENTS_SID).cloned())
            .unwrap_or_else(|| panic!("no queue statement: {policy:#}"));
        assert_eq!(
            queue["Resource"],
            "arn:aws:sqs:us-east-1:123456789012:gatehouse-lab-iam-events"
        );
        // The user re-read goes where the other user reads are: IAM users only.
        let users = policy["Statement"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["Sid"] == "ReadUserKeys").cloned())
            .expect("user statement");
        assert!(users["Action"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("iam:GetUser"))));
        assert_eq!(users["Resource"], "arn:aws:iam::*:user/*");
        // With a group prefix, the user's groups are re-read too.
        let both = bastion_policy(
            &spec("iam_events = true\n\n[bastion.daemon.aws]\niam_group_prefix = \"gh-\"\n"),
            None,
            ACCOUNT,
        );
        assert!(granted(&both).contains(&"iam:ListGroupsForUser".to_owned()));
        assert!(!granted(&policy).contains(&"iam:ListGroupsForUser".to_owned()));
    }
}
