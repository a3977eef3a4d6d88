//! The names of the stack's resources: what AWS calls them (role, bucket, queue, rule, log
//! group, parameter, balancer...), their ARNs, and the logical keys the planner and the
//! executor know them by (their `gatehouse:resource` tag). A leaf: it imports nothing of the
//! crate, so the planner, the policies, the spec and the user data all import it and never
//! each other for a name.

use gatehouse_aws::events::IAM_EVENTS_REGION;

/// The ARN partition of a region (`aws`, `aws-cn`, `aws-us-gov`).
pub fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

// ---- IAM and SSM ----

/// Name of the inline policy on the bastion role.
pub const POLICY_NAME: &str = "gatehouse-bastion";

/// IAM role and instance profile name of a stack's bastion.
pub fn role_name(stack: &str) -> String {
    format!("gatehouse-{stack}-bastion")
}

/// SSM parameter holding the bastion's host key.
pub fn host_key_parameter(stack: &str) -> String {
    format!("/gatehouse/{stack}/host_ed25519")
}

/// SSM parameter holding the key of the CA of `gatehouse login` (with `[bastion.daemon.sso]`).
pub fn user_ca_parameter(stack: &str) -> String {
    format!("/gatehouse/{stack}/user_ca_ed25519")
}

/// The SSM parameters a stack's bastion keeps its keys in: the host key's, and the SSO CA's
/// when `sso` is on. The daemon creates them tagged with the stack; `destroy` deletes them.
pub fn key_parameters(stack: &str, sso: bool) -> Vec<String> {
    let mut out = vec![host_key_parameter(stack)];
    if sso {
        out.push(user_ca_parameter(stack));
    }
    out
}

// ---- network ----

/// The only destination the stack routes: everything not local.
pub const DEFAULT_ROUTE: &str = "0.0.0.0/0";

/// Key of the NAT gateway (and its route table) serving an AZ.
pub fn nat_key(az: &str) -> String {
    format!("nat/{az}")
}

/// Key of the Elastic IP of the NAT gateway serving an AZ.
pub fn nat_eip_key(az: &str) -> String {
    format!("eip/nat-{az}")
}

// ---- storage: the bucket and the audit log group ----

/// The stack's bucket for a stored gatehouse binary (`gatehouse_binary`): one per stack and
/// account, like the role (at most 10 + 28 + 1 + 12 = 51 characters of the 63 S3 allows).
pub fn binary_bucket(stack: &str, account: &str) -> String {
    format!("gatehouse-{stack}-{account}")
}

/// The object key of a stored binary: named by its content, so a bastion launched months
/// later still fetches exactly the binary its user data names.
pub fn binary_object(sha256: &str) -> String {
    format!("gatehouse/{sha256}")
}

/// The object in the stack's bucket that the replicas of a scaled-out stack share their
/// listing through (`aws.shared_snapshot`).
pub const SHARED_SNAPSHOT_OBJECT: &str = "directory/aws-directory.json";

/// The objects of the bucket a bastion may read, as an S3 ARN's resource part.
pub fn binary_object_arn_path(bucket: &str) -> String {
    format!("{bucket}/{}", binary_object("*"))
}

/// The stack's audit log group, in the stack's region: every bastion of the stack ships its
/// audit lines there (`aws.audit_log_group`), one stream per instance. At most
/// 10 + 28 + 6 = 44 characters of the 512 CloudWatch Logs allows.
pub fn audit_log_group(stack: &str) -> String {
    format!("/gatehouse/{stack}/audit")
}

/// The log group's ARN in `account`, as `logGroupArn` reports it and the tagging calls take
/// it (without the `:*` that IAM's other CloudWatch Logs actions are checked against).
pub fn audit_log_group_arn(region: &str, account: &str, stack: &str) -> String {
    format!(
        "arn:{}:logs:{region}:{account}:log-group:{}",
        partition(region),
        audit_log_group(stack)
    )
}

/// Logical key of the audit log group (its `gatehouse:resource` tag).
pub const AUDIT_LOG_GROUP_KEY: &str = "log-group/audit";

// ---- IAM change events: the queue and the rule, in us-east-1 ----

/// The queue of a stack's IAM change events (`[bastion] iam_events`), in `us-east-1` (at
/// most 10 + 28 + 11 = 49 characters of the 80 SQS allows).
pub fn event_queue_name(stack: &str) -> String {
    format!("gatehouse-{stack}-iam-events")
}

/// The EventBridge rule that puts IAM's change events on the queue, on the default bus of
/// `us-east-1` (at most 50 characters of the 64 EventBridge allows).
pub fn event_rule_name(stack: &str) -> String {
    format!("gatehouse-{stack}-iam-changes")
}

/// The queue's ARN in `account`.
pub fn event_queue_arn(stack: &str, account: &str) -> String {
    format!(
        "arn:{}:sqs:{IAM_EVENTS_REGION}:{account}:{}",
        partition(IAM_EVENTS_REGION),
        event_queue_name(stack)
    )
}

/// The rule's ARN in `account`: the only source the queue accepts messages from.
pub fn event_rule_arn(stack: &str, account: &str) -> String {
    format!(
        "arn:{}:events:{IAM_EVENTS_REGION}:{account}:rule/{}",
        partition(IAM_EVENTS_REGION),
        event_rule_name(stack)
    )
}

/// The id of the rule's one target, the queue.
pub const EVENT_TARGET_ID: &str = "queue";
/// Logical keys of the queue and the rule (their `gatehouse:resource` tag).
pub const EVENT_QUEUE_KEY: &str = "queue/iam-events";
pub const EVENT_RULE_KEY: &str = "rule/iam-changes";

// ---- the replicas of a scaled-out stack ----

/// Logical keys (their `gatehouse:resource` tag).
pub const TEMPLATE_KEY: &str = "lt/bastion";
pub const GROUP_KEY: &str = "asg/bastion";
pub const BALANCER_KEY: &str = "nlb";
pub const TARGET_GROUP_KEY: &str = "tg/ssh";
pub const LISTENER_KEY: &str = "listener/ssh";
pub const BALANCER_SG_KEY: &str = "sg/nlb";
/// The key the replicas themselves carry (the template tags them at launch).
pub const REPLICA_KEY: &str = "replica/bastion";
/// Where a plan keeps the template version the group should launch (beside the template's id).
pub const TEMPLATE_VERSION_KEY: &str = "lt/bastion#version";

/// The balancer's name: `gh-<stack>` (ELB allows 32 characters; a stack name has at most 28).
pub fn balancer_name(stack: &str) -> String {
    format!("gh-{stack}")
}

/// The target group's name (its own namespace: the same as the balancer's).
pub fn target_group_name(stack: &str) -> String {
    format!("gh-{stack}")
}

/// The Auto Scaling group's and the launch template's name.
pub fn group_name(stack: &str) -> String {
    format!("gatehouse-{stack}-bastion")
}

/// Key of the balancer's Elastic IP in `az` (`fixed_addresses`).
pub fn balancer_eip_key(az: &str) -> String {
    format!("eip/nlb/{az}")
}

// ---- the alarms (the audit log group's metric filters, the alarms, their topic) ----

/// The name of one of the stack's alarms or metric filters: `gatehouse-<stack>-<what>` (at
/// most 10 + 28 + 1 + 20 characters; CloudWatch allows 255, CloudWatch Logs 512).
pub fn alarm_name(stack: &str, what: &str) -> String {
    format!("gatehouse-{stack}-{what}")
}

/// What each alarm of a stack is about; its name is [`alarm_name`] of one of these. Fixed,
/// so that the stack reads and the deployer's policy names its alarms one by one (a prefix
/// would also cover the alarms of a stack whose name starts with this one's and a `-`).
pub const ALARM_KINDS: &[&str] = &[
    FAILED_LOGINS,
    REFUSALS,
    KEY_PUSH_FAILURES,
    DIRECTORY_STALE,
    HEALTHY_REPLICAS,
];
pub const FAILED_LOGINS: &str = "failed-logins";
pub const REFUSALS: &str = "refusals";
pub const KEY_PUSH_FAILURES: &str = "key-push-failures";
pub const DIRECTORY_STALE: &str = "directory-stale";
/// The balancer's healthy replicas (a scaled-out stack only).
pub const HEALTHY_REPLICAS: &str = "healthy-replicas";
/// The metric filters beyond one per alarm: the refusals' summaries add to the refusals, and
/// key pushes are counted (for a dashboard) without an alarm.
pub const REFUSALS_SUMMARIZED: &str = "refusals-summarized";
pub const KEY_PUSHES: &str = "key-pushes";

/// The CloudWatch namespace of the stack's metrics (counted from its audit lines): one per
/// stack, so two stacks of an account never add to each other's counts.
pub fn metric_namespace(stack: &str) -> String {
    format!("gatehouse/{stack}")
}

/// The SNS topic the stack's alarms send to (`[alerts] emails` subscribe to it): at most
/// 10 + 28 + 7 = 45 characters of the 256 SNS allows.
pub fn alert_topic_name(stack: &str) -> String {
    format!("gatehouse-{stack}-alerts")
}

/// The topic's ARN: SNS names it after the account and region, so the plan knows it before
/// the topic exists.
pub fn alert_topic_arn(region: &str, account: &str, stack: &str) -> String {
    format!(
        "arn:{}:sns:{region}:{account}:{}",
        partition(region),
        alert_topic_name(stack)
    )
}
