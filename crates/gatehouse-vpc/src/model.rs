//! Plain data: what AWS reports for a stack (`Observed`) and the steps a plan is made of
//! (`Action`). No I/O here, so the planner over these types is a pure function.

use std::collections::BTreeMap;

use serde::Serialize;

/// Every resource of a stack carries this tag; its value is the stack name.
pub const TAG_STACK: &str = "gatehouse:stack";
/// The logical key of a resource inside its stack, e.g. `subnet/dmz`, `nat/eu-central-1a`.
pub const TAG_RESOURCE: &str = "gatehouse:resource";
/// SHA-256 of the user data an instance was launched with (user data cannot be read back cheaply).
pub const TAG_USER_DATA: &str = "gatehouse:user-data-sha256";
/// Groups that may reach a private host (comma separated); read by the daemon.
pub const TAG_GROUPS: &str = "gatehouse:groups";
/// Ports of a private host the daemon forwards to (comma separated).
pub const TAG_PORTS: &str = "gatehouse:ports";
/// OS users of a private host the daemon pushes keys for (comma separated; EC2 Instance
/// Connect). Only on hosts with a `login` in the spec.
pub const TAG_LOGIN: &str = "gatehouse:login";

pub type Tags = BTreeMap<String, String>;

/// A security group rule in AWS terms. `proto` is `tcp`, `udp`, `icmp` or `-1` (all).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Rule {
    pub proto: String,
    pub from: i32,
    pub to: i32,
    pub peer: Peer,
}

/// The other side of a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Peer {
    /// An IPv4 CIDR.
    Cidr(String),
    /// An IPv6 CIDR (never desired; only observed).
    Cidr6(String),
    /// A security group by AWS id.
    Group(String),
    /// A security group by logical key (desired rules only; resolved by the executor).
    GroupKey(String),
    /// A prefix list (never desired; only observed).
    PrefixList(String),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsVpc {
    pub id: String,
    pub key: String,
    pub cidr: String,
    pub dns_hostnames: bool,
    pub dns_support: bool,
    pub tags: Tags,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsSubnet {
    pub id: String,
    pub key: String,
    pub vpc_id: String,
    pub cidr: String,
    pub az: String,
    pub tags: Tags,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsIgw {
    pub id: String,
    pub key: String,
    pub attached_vpcs: Vec<String>,
    pub tags: Tags,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsEip {
    pub allocation_id: String,
    pub key: String,
    pub public_ip: String,
    pub association_id: Option<String>,
    pub instance_id: Option<String>,
    pub tags: Tags,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsNat {
    pub id: String,
    pub key: String,
    pub subnet_id: String,
    pub allocation_id: Option<String>,
    /// `pending` or `available` (deleted, deleting and failed gateways are not observed).
    pub state: String,
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum RouteTarget {
    Gateway(String),
    Nat(String),
    /// Anything else (instance, peering, blackhole...), described for the plan.
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObsRoute {
    pub dest: String,
    pub target: RouteTarget,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObsAssociation {
    pub id: String,
    pub subnet_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsRouteTable {
    pub id: String,
    pub key: String,
    /// Routes other than the VPC's `local` route, IPv4 only.
    pub routes: Vec<ObsRoute>,
    pub associations: Vec<ObsAssociation>,
    pub tags: Tags,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsSecurityGroup {
    pub id: String,
    pub key: String,
    pub name: String,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    pub tags: Tags,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsInstance {
    pub id: String,
    pub key: String,
    pub state: String,
    pub ami: String,
    pub instance_type: String,
    pub subnet_id: String,
    pub security_groups: Vec<String>,
    pub profile_arn: Option<String>,
    /// `required` when IMDSv2 is enforced; None when AWS did not say.
    pub http_tokens: Option<String>,
    pub hop_limit: Option<i32>,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
    pub tags: Tags,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsRole {
    pub name: String,
    pub tags: Tags,
    /// The inline policy document `gatehouse-bastion`, parsed; None when absent.
    pub policy: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsProfile {
    pub name: String,
    pub tags: Tags,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsParameter {
    pub name: String,
    pub tags: Tags,
}

/// The stack's bucket for the gatehouse binary, found by its name ([`crate::names::binary_bucket`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsBucket {
    pub name: String,
    pub tags: Tags,
    /// All four public access blocks are on.
    pub public_access_blocked: bool,
    /// Default encryption is configured.
    pub encrypted: bool,
    /// The bucket policy, parsed; None when there is none.
    pub policy: Option<serde_json::Value>,
    /// Every object key in the bucket.
    pub objects: Vec<String>,
}

impl ObsBucket {
    /// The stack's: tagged with `stack`, or untagged and empty under the stack's exact name
    /// in this account, which is what an apply interrupted between CreateBucket and
    /// PutBucketTagging leaves; the next apply tags it, destroy deletes it. (Observed buckets
    /// are always in this account: every read names it as the expected owner.)
    pub fn is_ours(&self, stack: &str) -> bool {
        self.tags.get(TAG_STACK).map(String::as_str) == Some(stack)
            || (self.tags.is_empty() && self.objects.is_empty())
    }
}

/// The queue of IAM change events (`[bastion] iam_events`), found by its name
/// ([`crate::names::event_queue_name`]) in `us-east-1`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsQueue {
    pub name: String,
    pub url: String,
    pub tags: Tags,
    /// The attributes gatehouse-vpc sets ([`crate::plan::events::event_queue_attributes`])
    /// as SQS reports them; `Policy` is the JSON text.
    pub attributes: BTreeMap<String, String>,
}

/// One target of the event rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsTarget {
    pub id: String,
    pub arn: String,
    /// The target rewrites the event (`Input`, `InputPath` or `InputTransformer`): the queue
    /// would no longer hold the events the daemon reads.
    pub rewrites: bool,
}

/// The EventBridge rule that feeds the queue, found by its name
/// ([`crate::names::event_rule_name`]) on the default bus of `us-east-1`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsRule {
    pub name: String,
    pub arn: String,
    pub tags: Tags,
    /// The event pattern, parsed; None when the rule has none (a schedule).
    pub pattern: Option<serde_json::Value>,
    /// `ENABLED`, `DISABLED`, ...
    pub state: String,
    pub targets: Vec<ObsTarget>,
}

/// The stack's audit log group (`/gatehouse/<stack>/audit`, [`crate::names::audit_log_group`]),
/// found by its name in the stack's region (CloudWatch Logs has no tag filter).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsLogGroup {
    pub name: String,
    /// Its ARN without the trailing `:*` (`logGroupArn`): what the tagging calls take.
    pub arn: String,
    pub tags: Tags,
    /// `retentionInDays`; None: the events never expire.
    pub retention_days: Option<i32>,
}

/// A CloudTrail trail as `us-east-1` sees it (shadow trails of multi-region trails too):
/// what decides whether IAM's API calls reach EventBridge there. Read only for a spec with
/// `iam_events`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsTrail {
    pub name: String,
    pub arn: String,
    pub home_region: String,
    pub multi_region: bool,
    pub global_service_events: bool,
    /// `GetTrailStatus`'s `IsLogging`; None when not asked (the trail cannot carry IAM's
    /// events to `us-east-1` whatever its status).
    pub logging: Option<bool>,
    /// Its event selectors record management write events (IAM's changes); None when not
    /// asked.
    pub management_writes: Option<bool>,
}

impl ObsTrail {
    /// IAM's events (a global service's, recorded in `us-east-1`) reach EventBridge in
    /// `us-east-1` through this trail: multi-region, or in `us-east-1` with global service
    /// events.
    pub fn reaches_iam_events_region(&self) -> bool {
        self.multi_region
            || (self.home_region == gatehouse_aws::events::IAM_EVENTS_REGION
                && self.global_service_events)
    }

    /// Delivers IAM's change events to EventBridge in `us-east-1`.
    pub fn delivers_iam_events(&self) -> bool {
        self.reaches_iam_events_region()
            && self.logging == Some(true)
            && self.management_writes == Some(true)
    }
}

/// The launch template of the replicas (`lt/bastion`, `[bastion] replicas` >= 2), found by
/// the stack tag, with what its latest version launches.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsLaunchTemplate {
    pub id: String,
    pub name: String,
    pub key: String,
    pub tags: Tags,
    /// The latest version's number: the one the group launches.
    pub latest_version: i64,
    /// The default version's number (kept equal to the latest).
    pub default_version: i64,
    pub ami: String,
    pub instance_type: String,
    /// The instance profile, by name or ARN as it was given.
    pub profile: Option<String>,
    pub security_groups: Vec<String>,
    pub http_tokens: Option<String>,
    pub hop_limit: Option<i32>,
    /// SHA-256 of the latest version's user data (decoded); None when it has none.
    pub user_data_sha256: Option<String>,
}

/// The stack's Network Load Balancer (`nlb`), found by its name ([`crate::names::balancer_name`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsLoadBalancer {
    pub arn: String,
    pub name: String,
    pub key: String,
    pub tags: Tags,
    pub dns_name: String,
    /// `internet-facing` or `internal`.
    pub scheme: String,
    /// `network`, `application`, ...
    pub kind: String,
    /// `provisioning`, `active`, `failed`, ...
    pub state: String,
    pub vpc_id: String,
    /// (subnet id, Elastic IP allocation id) of each availability zone it serves.
    pub subnets: Vec<(String, Option<String>)>,
    pub security_groups: Vec<String>,
    /// `load_balancing.cross_zone.enabled`.
    pub cross_zone: bool,
}

/// The target group of the replicas' port 22 (`tg/ssh`), found by its name.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsTargetGroup {
    pub arn: String,
    pub name: String,
    pub key: String,
    pub tags: Tags,
    pub protocol: String,
    pub port: i32,
    pub vpc_id: String,
    pub health_protocol: String,
    pub health_port: String,
    pub health_path: Option<String>,
    pub health_interval: Option<i32>,
    pub healthy_threshold: Option<i32>,
    pub unhealthy_threshold: Option<i32>,
    /// Its attributes as ELB reports them; the planner compares those gatehouse-vpc sets
    /// ([`crate::plan::replicas::target_group_attributes`]).
    pub attributes: BTreeMap<String, String>,
}

/// A listener of the balancer (`listener/ssh`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsListener {
    pub arn: String,
    pub protocol: String,
    pub port: i32,
    /// The target groups its default action forwards to.
    pub forwards_to: Vec<String>,
}

/// One instance of the group, as the group sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsMember {
    pub id: String,
    /// The launch template version it was launched from, when the group says.
    pub version: Option<String>,
    /// `InService`, `Pending`, `Terminating`, ...
    pub lifecycle: String,
}

/// The replicas' Auto Scaling group (`asg/bastion`), found by its name.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObsAutoScalingGroup {
    pub name: String,
    pub key: String,
    pub tags: Tags,
    pub min: i32,
    pub max: i32,
    pub desired: i32,
    pub subnets: Vec<String>,
    pub launch_template_id: Option<String>,
    pub launch_template_version: Option<String>,
    pub target_groups: Vec<String>,
    pub health_check_type: String,
    pub health_check_grace: Option<i32>,
    pub members: Vec<ObsMember>,
    pub termination_policies: Vec<String>,
    /// `Delete in progress`: the group is going away.
    pub deleting: bool,
}

/// Everything AWS reports for one stack tag. Only resources whose `gatehouse:stack` tag equals
/// the stack name are in here, with exceptions that only ever matter for refusing: an IAM
/// role, instance profile, bucket, event queue, event rule or log group found by its
/// (deterministic) name
/// whose tags say it is not ours (`plan::only_ours` drops them before anything is planned).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Observed {
    pub vpcs: Vec<ObsVpc>,
    /// The default security group of the stack's VPC (created by AWS with the VPC).
    pub default_sg: Option<ObsSecurityGroup>,
    pub subnets: Vec<ObsSubnet>,
    pub igws: Vec<ObsIgw>,
    pub eips: Vec<ObsEip>,
    pub nats: Vec<ObsNat>,
    pub route_tables: Vec<ObsRouteTable>,
    /// Explicit associations of the stack's subnets with route tables that are not the
    /// stack's (another tool moved a subnet there): (table id, association).
    pub foreign_associations: Vec<(String, ObsAssociation)>,
    pub security_groups: Vec<ObsSecurityGroup>,
    pub instances: Vec<ObsInstance>,
    pub role: Option<ObsRole>,
    pub profile: Option<ObsProfile>,
    pub parameters: Vec<ObsParameter>,
    /// The binary bucket, when a bucket of its name exists.
    pub bucket: Option<ObsBucket>,
    /// The IAM change-event queue, when a queue of its name exists.
    pub queue: Option<ObsQueue>,
    /// The rule that feeds it, when a rule of its name exists.
    pub rule: Option<ObsRule>,
    /// The audit log group, when a log group of its name exists.
    pub log_group: Option<ObsLogGroup>,
    /// The replicas' launch templates (stack tag).
    pub launch_templates: Vec<ObsLaunchTemplate>,
    /// The balancer, when one of its name exists.
    pub balancer: Option<ObsLoadBalancer>,
    /// Its listeners (read only with the balancer).
    pub listeners: Vec<ObsListener>,
    /// The target group, when one of its name exists.
    pub target_group: Option<ObsTargetGroup>,
    /// The Auto Scaling group, when one of its name exists.
    pub group: Option<ObsAutoScalingGroup>,
    /// The metric filters on the audit log group whose names are the stack's (read only
    /// with the log group).
    pub metric_filters: Vec<MetricFilter>,
    /// The stack's alarms, found by their names' prefix.
    pub alarms: Vec<ObsAlarm>,
    /// The alarm topic, when a topic of its name exists.
    pub topic: Option<ObsTopic>,
    /// The trails `us-east-1` sees; None when not read (a spec without `iam_events`, destroy,
    /// output).
    pub trails: Option<Vec<ObsTrail>>,
    /// The AWS account the credentials belong to (STS GetCallerIdentity).
    pub account: String,
}

impl Observed {
    /// True when nothing of the stack exists.
    pub fn is_empty(&self) -> bool {
        self.vpcs.is_empty()
            && self.subnets.is_empty()
            && self.igws.is_empty()
            && self.eips.is_empty()
            && self.nats.is_empty()
            && self.route_tables.is_empty()
            && self.security_groups.is_empty()
            && self.instances.is_empty()
            && self.role.is_none()
            && self.profile.is_none()
            && self.parameters.is_empty()
            && self.bucket.is_none()
            && self.queue.is_none()
            && self.rule.is_none()
            && self.log_group.is_none()
            && self.launch_templates.is_empty()
            && self.balancer.is_none()
            && self.target_group.is_none()
            && self.group.is_none()
            && self.metric_filters.is_empty()
            && self.alarms.is_empty()
            && self.topic.is_none()
    }
}

/// A metric filter on the stack's audit log group: a count in the stack's CloudWatch
/// namespace of the audit lines that match a pattern. Desired and observed alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetricFilter {
    /// The log group it is on (the stack's audit log group).
    pub log_group: String,
    /// `gatehouse-<stack>-<what>`.
    pub name: String,
    /// CloudWatch Logs' JSON filter pattern, e.g. `{ $.event = "auth.failure" }`.
    pub pattern: String,
    pub namespace: String,
    pub metric: String,
    /// What one matching line adds: `1`, or a field of the line (`$.summarized`).
    pub value: String,
}

/// A dimension's value in an alarm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum DimensionValue {
    Value(String),
    /// The CloudWatch form of the ARN of the stack's resource known by this key (the
    /// balancer, `net/<name>/<id>`; its target group, `targetgroup/<name>/<id>`), which may
    /// be created earlier in the same apply.
    ElbOf(String),
}

/// A CloudWatch alarm of the stack on one metric, sending to the stack's topic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alarm {
    /// `gatehouse-<stack>-<what>`.
    pub name: String,
    pub description: String,
    pub namespace: String,
    pub metric: String,
    /// `Sum`, `Minimum`, ...
    pub statistic: String,
    pub period_secs: i32,
    pub evaluation_periods: i32,
    pub threshold: f64,
    /// `GreaterThanOrEqualToThreshold`, `LessThanThreshold`, ...
    pub comparison: String,
    /// `notBreaching`, `breaching`, ...
    pub treat_missing: String,
    pub dimensions: Vec<(String, DimensionValue)>,
    /// The topic ARN it sends to when it goes off and when it is OK again.
    pub topic_arn: String,
}

/// An alarm of the stack's name as CloudWatch reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObsAlarm {
    /// Its settings, dimensions as values.
    pub alarm: Alarm,
    pub arn: String,
    /// Its `AlarmActions` and `OKActions` are exactly the topic ([`Alarm::topic_arn`]).
    pub actions_ok: bool,
    pub tags: Tags,
}

/// The stack's alarm topic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObsTopic {
    pub arn: String,
    pub tags: Tags,
    pub subscriptions: Vec<ObsSubscription>,
}

/// A subscription to the alarm topic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObsSubscription {
    /// `PendingConfirmation` until the address confirms.
    pub arn: String,
    pub protocol: String,
    pub endpoint: String,
}

/// The CloudWatch dimension value of an Elastic Load Balancing ARN: the resource part, without
/// `loadbalancer/` (`net/<name>/<id>`, `targetgroup/<name>/<id>`).
pub fn elb_dimension(arn: &str) -> String {
    let resource = arn.splitn(6, ':').nth(5).unwrap_or(arn);
    resource
        .strip_prefix("loadbalancer/")
        .unwrap_or(resource)
        .to_owned()
}

/// What to launch for one instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LaunchSpec {
    pub ami: String,
    pub instance_type: String,
    pub subnet: String,
    pub security_group: String,
    /// Instance profile name (the bastion only).
    pub profile: Option<String>,
    /// True for the bastion: the executor renders its user data (it needs the VPC id).
    pub bastion: bool,
    pub private_ip: Option<String>,
}

/// One change to make. Keys (`vpc`, `subnet/dmz`, ...) refer to resources of the stack that
/// either exist (the plan's `known` map gives their id) or are created earlier in the same plan;
/// ids refer to observed resources being removed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    // ---- removal (ids) ----
    /// Delete the replicas' group with its instances (ForceDelete), and wait until it is gone.
    DeleteAutoScalingGroup {
        name: String,
    },
    DeleteListener {
        arn: String,
    },
    /// Delete the balancer and wait until it is gone (its addresses are then free).
    DeleteLoadBalancer {
        arn: String,
    },
    DeleteTargetGroup {
        arn: String,
    },
    DeleteLaunchTemplate {
        id: String,
    },
    TerminateInstance {
        id: String,
    },
    DeleteNatGateway {
        id: String,
    },
    ReleaseAddress {
        allocation_id: String,
        association_id: Option<String>,
    },
    DeleteRouteTable {
        id: String,
        association_ids: Vec<String>,
    },
    Disassociate {
        association_id: String,
    },
    DeleteSubnet {
        id: String,
    },
    RevokeIngressById {
        group_id: String,
        rules: Vec<Rule>,
    },
    DeleteSecurityGroup {
        id: String,
    },
    DeleteInternetGateway {
        id: String,
        attached_vpcs: Vec<String>,
    },
    DeleteVpc {
        id: String,
    },
    DeleteInstanceProfile {
        name: String,
        roles: Vec<String>,
    },
    DeleteRole {
        name: String,
        has_policy: bool,
    },
    DeleteParameter {
        name: String,
    },
    /// Delete every object in the bucket, then the bucket.
    DeleteBucket {
        name: String,
    },
    DeleteObject {
        bucket: String,
        object: String,
    },
    /// Remove the rule's targets (`ids`), then the rule.
    DeleteEventRule {
        name: String,
        target_ids: Vec<String>,
    },
    DeleteEventQueue {
        url: String,
    },
    /// Delete alarms of the stack by name.
    DeleteAlarms {
        names: Vec<String>,
    },
    /// Delete a metric filter of the audit log group.
    DeleteMetricFilter {
        log_group: String,
        name: String,
    },
    /// Delete the alarm topic with its subscriptions.
    DeleteAlertTopic {
        arn: String,
    },
    /// Delete the audit log group and its lines (`destroy --delete-audit-log` only).
    DeleteAuditLogGroup {
        name: String,
    },
    // ---- creation and repair (keys) ----
    CreateVpc {
        key: String,
        cidr: String,
        tags: Tags,
    },
    EnableDns {
        vpc: String,
        hostnames: bool,
        support: bool,
    },
    /// Tag the default security group of the VPC and revoke all of its rules.
    LockDownDefaultSecurityGroup {
        vpc: String,
        tags: Tags,
    },
    CreateSubnet {
        key: String,
        vpc: String,
        cidr: String,
        az: String,
        tags: Tags,
    },
    CreateInternetGateway {
        key: String,
        tags: Tags,
    },
    AttachInternetGateway {
        igw: String,
        vpc: String,
    },
    AllocateAddress {
        key: String,
        tags: Tags,
    },
    CreateNatGateway {
        key: String,
        subnet: String,
        eip: String,
        tags: Tags,
    },
    CreateRouteTable {
        key: String,
        vpc: String,
        tags: Tags,
    },
    CreateRoute {
        table: String,
        dest: String,
        target: String,
    },
    ReplaceRoute {
        table: String,
        dest: String,
        target: String,
    },
    DeleteRoute {
        table: String,
        dest: String,
    },
    Associate {
        table: String,
        subnet: String,
    },
    ReplaceAssociation {
        association_id: String,
        table: String,
    },
    CreateSecurityGroup {
        key: String,
        vpc: String,
        name: String,
        description: String,
        tags: Tags,
    },
    Authorize {
        group: String,
        ingress: bool,
        rule: Rule,
    },
    Revoke {
        group: String,
        ingress: bool,
        rule: Rule,
    },
    CreateRole {
        name: String,
        tags: Tags,
    },
    PutRolePolicy {
        role: String,
        policy: serde_json::Value,
    },
    CreateInstanceProfile {
        name: String,
        tags: Tags,
    },
    AddRoleToProfile {
        profile: String,
        role: String,
    },
    /// Create the binary bucket (in the stack's region, owned by the account) with its tags.
    CreateBucket {
        key: String,
        name: String,
        tags: Tags,
    },
    /// Block all public access, turn on default encryption (SSE-S3) and set the bucket
    /// policy (TLS only).
    SecureBucket {
        bucket: String,
        policy: serde_json::Value,
    },
    TagBucket {
        bucket: String,
        tags: Tags,
    },
    /// Upload the local binary as `object`, with its SHA-256 for S3 to check.
    PutBinary {
        bucket: String,
        object: String,
        path: std::path::PathBuf,
        sha256: String,
    },
    /// Create the IAM change-event queue with its attributes (policy included) and tags.
    CreateEventQueue {
        key: String,
        name: String,
        attributes: BTreeMap<String, String>,
        tags: Tags,
    },
    /// Set the queue's drifted attributes.
    SetEventQueueAttributes {
        queue: String,
        attributes: BTreeMap<String, String>,
    },
    TagEventQueue {
        queue: String,
        tags: Tags,
    },
    /// Create the rule (with its tags), or put its pattern back and enable it (PutRule does
    /// both).
    PutEventRule {
        key: String,
        name: String,
        pattern: serde_json::Value,
        tags: Tags,
    },
    TagEventRule {
        rule: String,
        tags: Tags,
    },
    /// Point the rule's one target at the queue, as is (no input rewriting).
    PutEventTarget {
        rule: String,
        id: String,
        arn: String,
    },
    /// Remove targets that are not the queue.
    RemoveEventTargets {
        rule: String,
        ids: Vec<String>,
    },
    /// Create the audit log group with its tags (in the same call), then set its retention.
    CreateAuditLogGroup {
        name: String,
        tags: Tags,
        retention_days: i32,
    },
    SetAuditLogRetention {
        name: String,
        retention_days: i32,
    },
    /// Put back drifted tags of the audit log group (by its ARN).
    TagAuditLogGroup {
        arn: String,
        tags: Tags,
    },
    /// Create or update a metric filter of the audit log group.
    PutMetricFilter {
        filter: MetricFilter,
    },
    /// Create the alarm topic (tagged; idempotent by name).
    CreateAlertTopic {
        name: String,
        tags: Tags,
    },
    TagAlertTopic {
        arn: String,
        tags: Tags,
    },
    /// Subscribe an email address to the alarm topic (AWS mails it a link to confirm).
    SubscribeEmail {
        topic_arn: String,
        email: String,
    },
    /// Create or update an alarm (tagged at creation; tags of an existing one are put back
    /// by [`Action::TagAlarm`]).
    PutAlarm {
        alarm: Alarm,
        tags: Tags,
    },
    TagAlarm {
        arn: String,
        tags: Tags,
    },
    RunInstance {
        key: String,
        launch: LaunchSpec,
        tags: Tags,
    },
    /// Create the replicas' launch template (version 1: `launch`, IMDSv2, the bastion's user
    /// data; its instances, volumes and network interfaces tagged `instance_tags`).
    CreateLaunchTemplate {
        key: String,
        name: String,
        launch: LaunchSpec,
        tags: Tags,
        instance_tags: Tags,
    },
    /// A new version of the template, made its default too (it becomes the one the group
    /// launches).
    CreateLaunchTemplateVersion {
        template: String,
        launch: LaunchSpec,
        instance_tags: Tags,
    },
    /// Make the template's latest version its default.
    SetDefaultTemplateVersion {
        template: String,
    },
    /// Create the target group (TCP 22, instances, the health check on the health port).
    CreateTargetGroup {
        key: String,
        name: String,
        vpc: String,
        tags: Tags,
    },
    /// Put the health check back.
    SetTargetGroupHealthCheck {
        group: String,
    },
    SetTargetGroupAttributes {
        group: String,
        attributes: BTreeMap<String, String>,
    },
    /// Create the balancer: internet-facing, network, one subnet per availability zone (each
    /// with its Elastic IP when `eip` is given), behind its security group.
    CreateLoadBalancer {
        key: String,
        name: String,
        /// (subnet key, Elastic IP key).
        subnets: Vec<(String, Option<String>)>,
        security_group: String,
        tags: Tags,
    },
    SetLoadBalancerAttributes {
        balancer: String,
        attributes: BTreeMap<String, String>,
    },
    CreateListener {
        key: String,
        balancer: String,
        target_group: String,
        tags: Tags,
    },
    /// Put back drifted tags of a balancer, target group or listener (by its key).
    TagElb {
        resource: String,
        tags: Tags,
    },
    /// Create the group: `size` replicas (up to twice as many during a refresh) over
    /// `subnets`, launched from `template`'s version in this plan, registered in
    /// `target_group`, replaced when the balancer finds them unhealthy.
    CreateAutoScalingGroup {
        key: String,
        name: String,
        template: String,
        subnets: Vec<String>,
        target_group: String,
        size: i32,
        tags: Tags,
    },
    /// Put the group's template version, subnets, sizes and health check back.
    UpdateAutoScalingGroup {
        group: String,
        template: String,
        subnets: Vec<String>,
        size: i32,
        /// Leave the desired count alone (a roll under way holds more; it puts it back).
        keep_desired: bool,
    },
    AttachTargetGroup {
        group: String,
        target_group: String,
    },
    DetachTargetGroups {
        group: String,
        arns: Vec<String>,
    },
    TagAutoScalingGroup {
        group: String,
        tags: Tags,
    },
    /// Replace the replicas not on the template's current version, new ones first: raise
    /// the group's desired count by the outdated ones, wait until `size` replicas of the
    /// current version are in service and healthy behind the balancer, then terminate the
    /// outdated ones through the group (each deregistered first and drained for the target
    /// group's deregistration delay).
    RollReplicas {
        group: String,
        size: i32,
        /// The replicas to replace (instance ids).
        outdated: Vec<String>,
    },
    AssociateAddress {
        eip: String,
        instance: String,
    },
    SetTags {
        resource: String,
        tags: Tags,
    },
}

/// `+` create, `~` change in place, `-` delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sign {
    Create,
    Change,
    Delete,
}

impl Sign {
    pub fn symbol(self) -> char {
        match self {
            Sign::Create => '+',
            Sign::Change => '~',
            Sign::Delete => '-',
        }
    }
}

/// One line of a plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub sign: Sign,
    /// What it concerns, e.g. `subnet/dmz` or `vpc (vpc-0abc)`.
    pub resource: String,
    /// Why, in words.
    pub detail: String,
    pub action: Action,
}

/// A resource of the stack that a plan leaves on purpose, and why (`destroy` keeps the audit
/// log group).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Kept {
    /// What it is, e.g. `log group /gatehouse/lab/audit`.
    pub resource: String,
    /// Why it stays, in words.
    pub detail: String,
}

/// An ordered list of steps plus the ids of the resources that exist and are kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    pub stack: String,
    pub steps: Vec<Step>,
    /// Logical key -> AWS id of each observed resource the plan keeps.
    pub known: BTreeMap<String, String>,
    /// The AWS account it is for (the bastion's user data names its event queue by it).
    pub account: String,
    /// What `destroy` leaves on purpose (the audit log group); empty for `apply`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<Kept>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The human-readable diff; what is kept on purpose is marked `=`.
    pub fn render(&self) -> String {
        let kept: String = self
            .kept
            .iter()
            .map(|k| format!("= {:<28} {}\n", k.resource, k.detail))
            .collect();
        if self.steps.is_empty() {
            return format!("{kept}stack {}: no changes\n", self.stack);
        }
        let mut out = String::new();
        for s in &self.steps {
            out.push_str(&format!(
                "{} {:<28} {}\n",
                s.sign.symbol(),
                s.resource,
                s.detail
            ));
        }
        out.push_str(&kept);
        let count = |sign| self.steps.iter().filter(|s| s.sign == sign).count();
        out.push_str(&format!(
            "stack {}: {} to create, {} to change, {} to delete\n",
            self.stack,
            count(Sign::Create),
            count(Sign::Change),
            count(Sign::Delete)
        ));
        out
    }
}
