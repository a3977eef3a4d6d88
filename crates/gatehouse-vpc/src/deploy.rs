//! The AWS calls gatehouse-vpc makes, declared once: the IAM action each needs, which
//! commands make it and what it can be narrowed to. Every call site names its constant (the
//! error path, [`crate::aws::fail`], takes a [`Call`], and a test reads the sources for calls
//! not declared and declarations never called), and `gatehouse-vpc policy` prints the
//! deployer's policy from [`ALL`], so the code, the policy and the docs cannot drift apart.

use serde_json::{json, Value};

use gatehouse_aws::events::IAM_EVENTS_REGION;

use crate::model::TAG_STACK;
use crate::names::{alarm_name, alert_topic_name, ALARM_KINDS};
use crate::names::{
    audit_log_group, binary_bucket, event_queue_name, event_rule_name, key_parameters, partition,
    role_name,
};

/// The four commands, as a bit set.
pub const PLAN: u8 = 1;
pub const APPLY: u8 = 2;
pub const DESTROY: u8 = 4;
pub const OUTPUT: u8 = 8;
/// Every command reads the stack first.
pub const READ: u8 = PLAN | APPLY | DESTROY | OUTPUT;
/// Removals: `destroy`, and `apply` when it replaces or removes something.
pub const REMOVE: u8 = APPLY | DESTROY;
/// What planning a spec reads beyond the stack (`apply` plans too): the CloudTrail trails a
/// spec with `iam_events` needs.
pub const PLAN_CHECK: u8 = PLAN | APPLY;

/// What an action can be narrowed to in the deployer's policy (resource types and condition
/// keys as the AWS Service Authorization Reference gives them for each action; a test lints
/// the policy against that reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// `*`: describe calls, which have no resource-level permissions.
    Any,
    /// EC2 creates: `*` without a condition. Their requests also name existing resources
    /// (the VPC of a subnet, the image of an instance) that a tag condition on the new
    /// resource does not cover; see the README for why they are not narrowed further.
    Ec2Create,
    /// `ec2:CreateTags`: at creation (`ec2:CreateAction` is one of the creates above), on the
    /// stack's resources, and the stack's tag onto a security group (the VPC's default group,
    /// which AWS creates untagged).
    Ec2Tags,
    /// Changes to and deletions of existing EC2 resources: only those carrying the stack's
    /// tag (`aws:ResourceTag`).
    StackTagged,
    /// The stack's bastion role, `role/gatehouse-<stack>-bastion`.
    StackRole,
    /// The stack's instance profile of the same name.
    StackProfile,
    /// `iam:PassRole` of the stack's role, and only to EC2.
    PassStackRoleToEc2,
    /// The host key parameter `/gatehouse/<stack>/host_ed25519`.
    HostKeyParameter,
    /// The binary bucket, `gatehouse-<stack>-<account>`.
    StackBucket,
    /// The objects in it.
    StackBucketObjects,
    /// The IAM change-event queue, `gatehouse-<stack>-iam-events` in `us-east-1`.
    EventQueue,
    /// The rule that feeds it, `rule/gatehouse-<stack>-iam-changes` on the default bus of
    /// `us-east-1`.
    EventRule,
    /// Listing the CloudTrail trails (`DescribeTrails` has no resource-level permissions).
    TrailList,
    /// Reading a trail that may deliver IAM's events: any trail of any region (their names
    /// and home regions are the account's), read only.
    Trails,
    /// Listing log groups (`DescribeLogGroups` has no resource-level permissions).
    LogGroupList,
    /// The audit log group `/gatehouse/<stack>/audit` in the stack's region, in the ARN form
    /// with `:*` that CloudWatch Logs checks most of its actions against.
    AuditLogGroup,
    /// The same group in the ARN form without `:*`, which its tagging actions are checked
    /// against (`TagResource`, `ListTagsForResource`).
    AuditLogGroupTags,
    /// The stack's alarms, `alarm:gatehouse-<stack>-*` in its region.
    StackAlarms,
    /// The stack's alarm topic, `gatehouse-<stack>-alerts` in its region.
    AlertTopic,
    /// The balancer `loadbalancer/net/gh-<stack>/*` (its creation, attributes, listeners).
    StackBalancer,
    /// The target group `targetgroup/gh-<stack>/*`.
    StackTargetGroup,
    /// The balancer, its target group and its listeners (tagging, deleting a listener).
    StackElb,
    /// The Auto Scaling group `gatehouse-<stack>-bastion`.
    StackGroup,
    /// Auto Scaling's and ELB's service-linked roles, which AWS creates on an account's
    /// first use of them.
    ServiceLinkedRoles,
    /// Needs no permission (`sts:GetCallerIdentity`): not in the policy.
    NoPermission,
}

/// One AWS call of gatehouse-vpc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// The SDK's service, as the IAM action prefix: `ec2`, `iam`, `ssm`, `s3`, `sts`, `logs`, ...
    pub service: &'static str,
    /// The API operation, e.g. `HeadBucket`.
    pub operation: &'static str,
    /// The IAM action it needs, e.g. `s3:ListBucket`.
    pub action: &'static str,
    /// Which commands make it ([`PLAN`] | [`APPLY`] ...).
    pub commands: u8,
    pub scope: Scope,
    /// False for a permission AWS checks inside another call (`iam:PassRole` in RunInstances).
    pub called: bool,
}

macro_rules! calls {
    ($($ident:ident = $service:literal $operation:literal $action:literal, $commands:expr, $scope:ident, $called:literal;)*) => {
        $(
            pub const $ident: Call = Call {
                service: $service,
                operation: $operation,
                action: $action,
                commands: $commands,
                scope: Scope::$scope,
                called: $called,
            };
        )*
        /// Every call, in the order the policy lists them.
        pub const ALL: &[Call] = &[$($ident),*];
        /// (constant name, call), for the test that reads the call sites.
        #[cfg(test)]
        const BY_IDENT: &[(&str, Call)] = &[$((stringify!($ident), $ident)),*];
    };
}

calls! {
    // ---- reading the stack (every command) ----
    GET_CALLER_IDENTITY = "sts" "GetCallerIdentity" "sts:GetCallerIdentity", READ, NoPermission, true;
    DESCRIBE_VPCS = "ec2" "DescribeVpcs" "ec2:DescribeVpcs", READ, Any, true;
    DESCRIBE_VPC_ATTRIBUTE = "ec2" "DescribeVpcAttribute" "ec2:DescribeVpcAttribute", READ, StackTagged, true;
    DESCRIBE_SUBNETS = "ec2" "DescribeSubnets" "ec2:DescribeSubnets", READ, Any, true;
    DESCRIBE_INTERNET_GATEWAYS = "ec2" "DescribeInternetGateways" "ec2:DescribeInternetGateways", READ, Any, true;
    DESCRIBE_ADDRESSES = "ec2" "DescribeAddresses" "ec2:DescribeAddresses", READ, Any, true;
    DESCRIBE_NAT_GATEWAYS = "ec2" "DescribeNatGateways" "ec2:DescribeNatGateways", READ, Any, true;
    DESCRIBE_ROUTE_TABLES = "ec2" "DescribeRouteTables" "ec2:DescribeRouteTables", READ, Any, true;
    DESCRIBE_SECURITY_GROUPS = "ec2" "DescribeSecurityGroups" "ec2:DescribeSecurityGroups", READ, Any, true;
    DESCRIBE_INSTANCES = "ec2" "DescribeInstances" "ec2:DescribeInstances", READ, Any, true;
    GET_ROLE = "iam" "GetRole" "iam:GetRole", READ, StackRole, true;
    LIST_ROLE_TAGS = "iam" "ListRoleTags" "iam:ListRoleTags", READ, StackRole, true;
    GET_ROLE_POLICY = "iam" "GetRolePolicy" "iam:GetRolePolicy", READ, StackRole, true;
    GET_INSTANCE_PROFILE = "iam" "GetInstanceProfile" "iam:GetInstanceProfile", READ, StackProfile, true;
    LIST_TAGS_FOR_RESOURCE = "ssm" "ListTagsForResource" "ssm:ListTagsForResource", READ, HostKeyParameter, true;
    HEAD_BUCKET = "s3" "HeadBucket" "s3:ListBucket", READ, StackBucket, true;
    GET_BUCKET_TAGGING = "s3" "GetBucketTagging" "s3:GetBucketTagging", READ, StackBucket, true;
    GET_PUBLIC_ACCESS_BLOCK = "s3" "GetPublicAccessBlock" "s3:GetBucketPublicAccessBlock", READ, StackBucket, true;
    GET_BUCKET_ENCRYPTION = "s3" "GetBucketEncryption" "s3:GetEncryptionConfiguration", READ, StackBucket, true;
    GET_BUCKET_POLICY = "s3" "GetBucketPolicy" "s3:GetBucketPolicy", READ, StackBucket, true;
    LIST_OBJECTS_V2 = "s3" "ListObjectsV2" "s3:ListBucket", READ, StackBucket, true;
    GET_QUEUE_URL = "sqs" "GetQueueUrl" "sqs:GetQueueUrl", READ, EventQueue, true;
    LIST_QUEUE_TAGS = "sqs" "ListQueueTags" "sqs:ListQueueTags", READ, EventQueue, true;
    GET_QUEUE_ATTRIBUTES = "sqs" "GetQueueAttributes" "sqs:GetQueueAttributes", READ, EventQueue, true;
    DESCRIBE_RULE = "events" "DescribeRule" "events:DescribeRule", READ, EventRule, true;
    LIST_TAGS_FOR_RULE = "events" "ListTagsForResource" "events:ListTagsForResource", READ, EventRule, true;
    LIST_TARGETS_BY_RULE = "events" "ListTargetsByRule" "events:ListTargetsByRule", READ, EventRule, true;
    DESCRIBE_LOG_GROUPS = "logs" "DescribeLogGroups" "logs:DescribeLogGroups", READ, LogGroupList, true;
    LIST_LOG_GROUP_TAGS = "logs" "ListTagsForResource" "logs:ListTagsForResource", READ, AuditLogGroupTags, true;
    DESCRIBE_METRIC_FILTERS = "logs" "DescribeMetricFilters" "logs:DescribeMetricFilters", READ, AuditLogGroup, true;
    DESCRIBE_ALARMS = "cloudwatch" "DescribeAlarms" "cloudwatch:DescribeAlarms", READ, StackAlarms, true;
    LIST_ALARM_TAGS = "cloudwatch" "ListTagsForResource" "cloudwatch:ListTagsForResource", READ, StackAlarms, true;
    GET_TOPIC_ATTRIBUTES = "sns" "GetTopicAttributes" "sns:GetTopicAttributes", READ, AlertTopic, true;
    LIST_TOPIC_TAGS = "sns" "ListTagsForResource" "sns:ListTagsForResource", READ, AlertTopic, true;
    LIST_SUBSCRIPTIONS_BY_TOPIC = "sns" "ListSubscriptionsByTopic" "sns:ListSubscriptionsByTopic", READ, AlertTopic, true;
    DESCRIBE_LAUNCH_TEMPLATES = "ec2" "DescribeLaunchTemplates" "ec2:DescribeLaunchTemplates", READ, Any, true;
    DESCRIBE_LAUNCH_TEMPLATE_VERSIONS = "ec2" "DescribeLaunchTemplateVersions" "ec2:DescribeLaunchTemplateVersions", READ, Any, true;
    DESCRIBE_LOAD_BALANCERS = "elasticloadbalancing" "DescribeLoadBalancers" "elasticloadbalancing:DescribeLoadBalancers", READ, Any, true;
    DESCRIBE_ELB_TAGS = "elasticloadbalancing" "DescribeTags" "elasticloadbalancing:DescribeTags", READ, Any, true;
    DESCRIBE_LOAD_BALANCER_ATTRIBUTES = "elasticloadbalancing" "DescribeLoadBalancerAttributes" "elasticloadbalancing:DescribeLoadBalancerAttributes", READ, Any, true;
    DESCRIBE_LISTENERS = "elasticloadbalancing" "DescribeListeners" "elasticloadbalancing:DescribeListeners", READ, Any, true;
    DESCRIBE_TARGET_GROUPS = "elasticloadbalancing" "DescribeTargetGroups" "elasticloadbalancing:DescribeTargetGroups", READ, Any, true;
    DESCRIBE_TARGET_GROUP_ATTRIBUTES = "elasticloadbalancing" "DescribeTargetGroupAttributes" "elasticloadbalancing:DescribeTargetGroupAttributes", READ, Any, true;
    DESCRIBE_AUTO_SCALING_GROUPS = "autoscaling" "DescribeAutoScalingGroups" "autoscaling:DescribeAutoScalingGroups", READ, Any, true;
    // ---- the precondition of `iam_events` (plan, and apply, which plans) ----
    DESCRIBE_TRAILS = "cloudtrail" "DescribeTrails" "cloudtrail:DescribeTrails", PLAN_CHECK, TrailList, true;
    GET_TRAIL_STATUS = "cloudtrail" "GetTrailStatus" "cloudtrail:GetTrailStatus", PLAN_CHECK, Trails, true;
    GET_EVENT_SELECTORS = "cloudtrail" "GetEventSelectors" "cloudtrail:GetEventSelectors", PLAN_CHECK, Trails, true;
    // ---- creating and repairing (apply) ----
    CREATE_VPC = "ec2" "CreateVpc" "ec2:CreateVpc", APPLY, Ec2Create, true;
    MODIFY_VPC_ATTRIBUTE = "ec2" "ModifyVpcAttribute" "ec2:ModifyVpcAttribute", APPLY, StackTagged, true;
    CREATE_SUBNET = "ec2" "CreateSubnet" "ec2:CreateSubnet", APPLY, Ec2Create, true;
    CREATE_INTERNET_GATEWAY = "ec2" "CreateInternetGateway" "ec2:CreateInternetGateway", APPLY, Ec2Create, true;
    ATTACH_INTERNET_GATEWAY = "ec2" "AttachInternetGateway" "ec2:AttachInternetGateway", APPLY, StackTagged, true;
    ALLOCATE_ADDRESS = "ec2" "AllocateAddress" "ec2:AllocateAddress", APPLY, Ec2Create, true;
    CREATE_NAT_GATEWAY = "ec2" "CreateNatGateway" "ec2:CreateNatGateway", APPLY, Ec2Create, true;
    CREATE_ROUTE_TABLE = "ec2" "CreateRouteTable" "ec2:CreateRouteTable", APPLY, Ec2Create, true;
    CREATE_ROUTE = "ec2" "CreateRoute" "ec2:CreateRoute", APPLY, StackTagged, true;
    REPLACE_ROUTE = "ec2" "ReplaceRoute" "ec2:ReplaceRoute", APPLY, StackTagged, true;
    DELETE_ROUTE = "ec2" "DeleteRoute" "ec2:DeleteRoute", APPLY, StackTagged, true;
    ASSOCIATE_ROUTE_TABLE = "ec2" "AssociateRouteTable" "ec2:AssociateRouteTable", APPLY, StackTagged, true;
    REPLACE_ROUTE_TABLE_ASSOCIATION = "ec2" "ReplaceRouteTableAssociation" "ec2:ReplaceRouteTableAssociation", APPLY, StackTagged, true;
    CREATE_SECURITY_GROUP = "ec2" "CreateSecurityGroup" "ec2:CreateSecurityGroup", APPLY, Ec2Create, true;
    AUTHORIZE_SECURITY_GROUP_INGRESS = "ec2" "AuthorizeSecurityGroupIngress" "ec2:AuthorizeSecurityGroupIngress", APPLY, StackTagged, true;
    AUTHORIZE_SECURITY_GROUP_EGRESS = "ec2" "AuthorizeSecurityGroupEgress" "ec2:AuthorizeSecurityGroupEgress", APPLY, StackTagged, true;
    REVOKE_SECURITY_GROUP_EGRESS = "ec2" "RevokeSecurityGroupEgress" "ec2:RevokeSecurityGroupEgress", APPLY, StackTagged, true;
    RUN_INSTANCES = "ec2" "RunInstances" "ec2:RunInstances", APPLY, Ec2Create, true;
    PASS_ROLE = "iam" "PassRole" "iam:PassRole", APPLY, PassStackRoleToEc2, false;
    ASSOCIATE_ADDRESS = "ec2" "AssociateAddress" "ec2:AssociateAddress", APPLY, StackTagged, true;
    // ---- the replicas of a scaled-out stack (apply) ----
    CREATE_LAUNCH_TEMPLATE = "ec2" "CreateLaunchTemplate" "ec2:CreateLaunchTemplate", APPLY, Ec2Create, true;
    CREATE_LAUNCH_TEMPLATE_VERSION = "ec2" "CreateLaunchTemplateVersion" "ec2:CreateLaunchTemplateVersion", APPLY, StackTagged, true;
    MODIFY_LAUNCH_TEMPLATE = "ec2" "ModifyLaunchTemplate" "ec2:ModifyLaunchTemplate", APPLY, StackTagged, true;
    CREATE_TARGET_GROUP = "elasticloadbalancing" "CreateTargetGroup" "elasticloadbalancing:CreateTargetGroup", APPLY, StackTargetGroup, true;
    MODIFY_TARGET_GROUP = "elasticloadbalancing" "ModifyTargetGroup" "elasticloadbalancing:ModifyTargetGroup", APPLY, StackTargetGroup, true;
    MODIFY_TARGET_GROUP_ATTRIBUTES = "elasticloadbalancing" "ModifyTargetGroupAttributes" "elasticloadbalancing:ModifyTargetGroupAttributes", APPLY, StackTargetGroup, true;
    CREATE_LOAD_BALANCER = "elasticloadbalancing" "CreateLoadBalancer" "elasticloadbalancing:CreateLoadBalancer", APPLY, StackBalancer, true;
    MODIFY_LOAD_BALANCER_ATTRIBUTES = "elasticloadbalancing" "ModifyLoadBalancerAttributes" "elasticloadbalancing:ModifyLoadBalancerAttributes", APPLY, StackBalancer, true;
    CREATE_LISTENER = "elasticloadbalancing" "CreateListener" "elasticloadbalancing:CreateListener", APPLY, StackBalancer, true;
    // Also checked inside the creates above, which tag what they create.
    ADD_ELB_TAGS = "elasticloadbalancing" "AddTags" "elasticloadbalancing:AddTags", APPLY, StackElb, true;
    DESCRIBE_TARGET_HEALTH = "elasticloadbalancing" "DescribeTargetHealth" "elasticloadbalancing:DescribeTargetHealth", APPLY, Any, true;
    // AWS creates Auto Scaling's and ELB's service-linked roles on an account's first use.
    CREATE_SERVICE_LINKED_ROLE = "iam" "CreateServiceLinkedRole" "iam:CreateServiceLinkedRole", APPLY, ServiceLinkedRoles, false;
    CREATE_AUTO_SCALING_GROUP = "autoscaling" "CreateAutoScalingGroup" "autoscaling:CreateAutoScalingGroup", APPLY, StackGroup, true;
    UPDATE_AUTO_SCALING_GROUP = "autoscaling" "UpdateAutoScalingGroup" "autoscaling:UpdateAutoScalingGroup", APPLY, StackGroup, true;
    ATTACH_LOAD_BALANCER_TARGET_GROUPS = "autoscaling" "AttachLoadBalancerTargetGroups" "autoscaling:AttachLoadBalancerTargetGroups", APPLY, StackGroup, true;
    DETACH_LOAD_BALANCER_TARGET_GROUPS = "autoscaling" "DetachLoadBalancerTargetGroups" "autoscaling:DetachLoadBalancerTargetGroups", APPLY, StackGroup, true;
    CREATE_OR_UPDATE_ASG_TAGS = "autoscaling" "CreateOrUpdateTags" "autoscaling:CreateOrUpdateTags", APPLY, StackGroup, true;
    TERMINATE_INSTANCE_IN_AUTO_SCALING_GROUP = "autoscaling" "TerminateInstanceInAutoScalingGroup" "autoscaling:TerminateInstanceInAutoScalingGroup", APPLY, StackGroup, true;
    CREATE_TAGS = "ec2" "CreateTags" "ec2:CreateTags", APPLY, Ec2Tags, true;
    CREATE_ROLE = "iam" "CreateRole" "iam:CreateRole", APPLY, StackRole, true;
    TAG_ROLE = "iam" "TagRole" "iam:TagRole", APPLY, StackRole, false;
    PUT_ROLE_POLICY = "iam" "PutRolePolicy" "iam:PutRolePolicy", APPLY, StackRole, true;
    CREATE_INSTANCE_PROFILE = "iam" "CreateInstanceProfile" "iam:CreateInstanceProfile", APPLY, StackProfile, true;
    TAG_INSTANCE_PROFILE = "iam" "TagInstanceProfile" "iam:TagInstanceProfile", APPLY, StackProfile, false;
    ADD_ROLE_TO_INSTANCE_PROFILE = "iam" "AddRoleToInstanceProfile" "iam:AddRoleToInstanceProfile", APPLY, StackProfile, true;
    CREATE_BUCKET = "s3" "CreateBucket" "s3:CreateBucket", APPLY, StackBucket, true;
    PUT_BUCKET_TAGGING = "s3" "PutBucketTagging" "s3:PutBucketTagging", APPLY, StackBucket, true;
    PUT_PUBLIC_ACCESS_BLOCK = "s3" "PutPublicAccessBlock" "s3:PutBucketPublicAccessBlock", APPLY, StackBucket, true;
    PUT_BUCKET_ENCRYPTION = "s3" "PutBucketEncryption" "s3:PutEncryptionConfiguration", APPLY, StackBucket, true;
    PUT_BUCKET_POLICY = "s3" "PutBucketPolicy" "s3:PutBucketPolicy", APPLY, StackBucket, true;
    PUT_OBJECT = "s3" "PutObject" "s3:PutObject", APPLY, StackBucketObjects, true;
    CREATE_QUEUE = "sqs" "CreateQueue" "sqs:CreateQueue", APPLY, EventQueue, true;
    // Also checked inside CreateQueue, which tags the new queue.
    TAG_QUEUE = "sqs" "TagQueue" "sqs:TagQueue", APPLY, EventQueue, true;
    SET_QUEUE_ATTRIBUTES = "sqs" "SetQueueAttributes" "sqs:SetQueueAttributes", APPLY, EventQueue, true;
    PUT_RULE = "events" "PutRule" "events:PutRule", APPLY, EventRule, true;
    // Also checked inside PutRule, which tags the new rule.
    TAG_RULE = "events" "TagResource" "events:TagResource", APPLY, EventRule, true;
    PUT_TARGETS = "events" "PutTargets" "events:PutTargets", APPLY, EventRule, true;
    CREATE_LOG_GROUP = "logs" "CreateLogGroup" "logs:CreateLogGroup", APPLY, AuditLogGroup, true;
    // Also checked inside CreateLogGroup, which tags the new group.
    TAG_LOG_GROUP = "logs" "TagResource" "logs:TagResource", APPLY, AuditLogGroupTags, true;
    PUT_RETENTION_POLICY = "logs" "PutRetentionPolicy" "logs:PutRetentionPolicy", APPLY, AuditLogGroup, true;
    // ---- the alarms: metric filters on the audit log group, alarms, their topic ----
    PUT_METRIC_FILTER = "logs" "PutMetricFilter" "logs:PutMetricFilter", APPLY, AuditLogGroup, true;
    CREATE_TOPIC = "sns" "CreateTopic" "sns:CreateTopic", APPLY, AlertTopic, true;
    // Also checked inside CreateTopic, which tags the new topic.
    TAG_TOPIC = "sns" "TagResource" "sns:TagResource", APPLY, AlertTopic, true;
    SUBSCRIBE = "sns" "Subscribe" "sns:Subscribe", APPLY, AlertTopic, true;
    PUT_METRIC_ALARM = "cloudwatch" "PutMetricAlarm" "cloudwatch:PutMetricAlarm", APPLY, StackAlarms, true;
    // Also checked inside PutMetricAlarm, which tags a new alarm.
    TAG_ALARM = "cloudwatch" "TagResource" "cloudwatch:TagResource", APPLY, StackAlarms, true;
    // ---- removing (destroy, and apply when it replaces or removes) ----
    DELETE_AUTO_SCALING_GROUP = "autoscaling" "DeleteAutoScalingGroup" "autoscaling:DeleteAutoScalingGroup", REMOVE, StackGroup, true;
    DELETE_LISTENER = "elasticloadbalancing" "DeleteListener" "elasticloadbalancing:DeleteListener", REMOVE, StackElb, true;
    DELETE_LOAD_BALANCER = "elasticloadbalancing" "DeleteLoadBalancer" "elasticloadbalancing:DeleteLoadBalancer", REMOVE, StackBalancer, true;
    DELETE_TARGET_GROUP = "elasticloadbalancing" "DeleteTargetGroup" "elasticloadbalancing:DeleteTargetGroup", REMOVE, StackTargetGroup, true;
    DELETE_LAUNCH_TEMPLATE = "ec2" "DeleteLaunchTemplate" "ec2:DeleteLaunchTemplate", REMOVE, StackTagged, true;
    TERMINATE_INSTANCES = "ec2" "TerminateInstances" "ec2:TerminateInstances", REMOVE, StackTagged, true;
    DELETE_NAT_GATEWAY = "ec2" "DeleteNatGateway" "ec2:DeleteNatGateway", REMOVE, StackTagged, true;
    DISASSOCIATE_ADDRESS = "ec2" "DisassociateAddress" "ec2:DisassociateAddress", REMOVE, StackTagged, true;
    RELEASE_ADDRESS = "ec2" "ReleaseAddress" "ec2:ReleaseAddress", REMOVE, StackTagged, true;
    DISASSOCIATE_ROUTE_TABLE = "ec2" "DisassociateRouteTable" "ec2:DisassociateRouteTable", REMOVE, StackTagged, true;
    DELETE_ROUTE_TABLE = "ec2" "DeleteRouteTable" "ec2:DeleteRouteTable", REMOVE, StackTagged, true;
    DELETE_SUBNET = "ec2" "DeleteSubnet" "ec2:DeleteSubnet", REMOVE, StackTagged, true;
    REVOKE_SECURITY_GROUP_INGRESS = "ec2" "RevokeSecurityGroupIngress" "ec2:RevokeSecurityGroupIngress", REMOVE, StackTagged, true;
    DELETE_SECURITY_GROUP = "ec2" "DeleteSecurityGroup" "ec2:DeleteSecurityGroup", REMOVE, StackTagged, true;
    DETACH_INTERNET_GATEWAY = "ec2" "DetachInternetGateway" "ec2:DetachInternetGateway", REMOVE, StackTagged, true;
    DELETE_INTERNET_GATEWAY = "ec2" "DeleteInternetGateway" "ec2:DeleteInternetGateway", REMOVE, StackTagged, true;
    DELETE_VPC = "ec2" "DeleteVpc" "ec2:DeleteVpc", REMOVE, StackTagged, true;
    REMOVE_ROLE_FROM_INSTANCE_PROFILE = "iam" "RemoveRoleFromInstanceProfile" "iam:RemoveRoleFromInstanceProfile", REMOVE, StackProfile, true;
    DELETE_INSTANCE_PROFILE = "iam" "DeleteInstanceProfile" "iam:DeleteInstanceProfile", REMOVE, StackProfile, true;
    DELETE_ROLE_POLICY = "iam" "DeleteRolePolicy" "iam:DeleteRolePolicy", REMOVE, StackRole, true;
    DELETE_ROLE = "iam" "DeleteRole" "iam:DeleteRole", REMOVE, StackRole, true;
    DELETE_PARAMETER = "ssm" "DeleteParameter" "ssm:DeleteParameter", REMOVE, HostKeyParameter, true;
    DELETE_OBJECT = "s3" "DeleteObject" "s3:DeleteObject", REMOVE, StackBucketObjects, true;
    DELETE_BUCKET = "s3" "DeleteBucket" "s3:DeleteBucket", REMOVE, StackBucket, true;
    REMOVE_TARGETS = "events" "RemoveTargets" "events:RemoveTargets", REMOVE, EventRule, true;
    DELETE_RULE = "events" "DeleteRule" "events:DeleteRule", REMOVE, EventRule, true;
    DELETE_QUEUE = "sqs" "DeleteQueue" "sqs:DeleteQueue", REMOVE, EventQueue, true;
    DELETE_ALARMS = "cloudwatch" "DeleteAlarms" "cloudwatch:DeleteAlarms", REMOVE, StackAlarms, true;
    DELETE_METRIC_FILTER = "logs" "DeleteMetricFilter" "logs:DeleteMetricFilter", REMOVE, AuditLogGroup, true;
    DELETE_TOPIC = "sns" "DeleteTopic" "sns:DeleteTopic", REMOVE, AlertTopic, true;
    // Only `destroy --delete-audit-log`: apply never removes the audit trail.
    DELETE_LOG_GROUP = "logs" "DeleteLogGroup" "logs:DeleteLogGroup", DESTROY, AuditLogGroup, true;
}

/// One IAM action of the deployer and everything that needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionUse {
    pub action: &'static str,
    /// The API calls that need it (`s3:HeadBucket` and `s3:ListObjectsV2` need s3:ListBucket).
    pub calls: Vec<String>,
    /// The commands that need it (bit set).
    pub commands: u8,
    /// False when AWS checks it only inside another call (iam:PassRole in RunInstances).
    pub called: bool,
}

/// The calls that build a VPC of the stack's own (and its internet gateway): not needed by
/// a stack placed into an existing VPC.
const VPC_CALLS: &[Call] = &[
    DESCRIBE_VPC_ATTRIBUTE,
    CREATE_VPC,
    MODIFY_VPC_ATTRIBUTE,
    CREATE_INTERNET_GATEWAY,
    ATTACH_INTERNET_GATEWAY,
    DETACH_INTERNET_GATEWAY,
    DELETE_INTERNET_GATEWAY,
    DELETE_VPC,
];

/// The calls that build subnets and route them: only for a stack that creates subnets.
const SUBNET_CALLS: &[Call] = &[
    CREATE_SUBNET,
    CREATE_ROUTE_TABLE,
    CREATE_ROUTE,
    REPLACE_ROUTE,
    DELETE_ROUTE,
    ASSOCIATE_ROUTE_TABLE,
    REPLACE_ROUTE_TABLE_ASSOCIATION,
    DISASSOCIATE_ROUTE_TABLE,
    DELETE_ROUTE_TABLE,
    DELETE_SUBNET,
];

/// The NAT gateway's calls: only for a stack with NAT.
const NAT_CALLS: &[Call] = &[CREATE_NAT_GATEWAY, DELETE_NAT_GATEWAY];

/// What of the network the stack builds, which decides the network-building actions of the
/// deployer's policy: a VPC of its own needs them all; a stack in an existing VPC only those
/// for the subnets (and NAT) it creates there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Builds {
    pub vpc: bool,
    pub subnets: bool,
    pub nat: bool,
}

impl Builds {
    /// A stack that creates its VPC (the spec's `[vpc] cidr`).
    pub const EVERYTHING: Builds = Builds {
        vpc: true,
        subnets: true,
        nat: true,
    };

    /// What `spec` builds.
    pub fn of(spec: &crate::spec::Spec) -> Builds {
        if spec.builds_vpc() {
            return Builds::EVERYTHING;
        }
        let created_private = spec.private_subnets().any(|s| s.created());
        Builds {
            vpc: false,
            subnets: spec.creates_subnets(),
            nat: created_private && spec.nat != crate::spec::NatMode::None,
        }
    }

    /// Whether the stack makes `call`.
    pub fn needs(&self, call: &Call) -> bool {
        if VPC_CALLS.contains(call) {
            self.vpc
        } else if SUBNET_CALLS.contains(call) {
            self.subnets
        } else if NAT_CALLS.contains(call) {
            self.nat
        } else {
            true
        }
    }

    /// The EC2 resource types the stack creates.
    fn owned(&self) -> Vec<&'static str> {
        EC2_OWNED
            .iter()
            .copied()
            .filter(|t| match *t {
                "vpc" | "internet-gateway" => self.vpc,
                "subnet" | "route-table" => self.subnets,
                "natgateway" => self.nat,
                _ => true,
            })
            .collect()
    }
}

/// The actions of the deployer's policy, each once, in [`ALL`]'s order.
pub fn actions(builds: Builds) -> Vec<ActionUse> {
    let mut out: Vec<ActionUse> = Vec::new();
    let needed = ALL.iter().filter(|c| builds.needs(c));
    for c in needed.filter(|c| c.scope != Scope::NoPermission) {
        let call = format!("{}:{}", c.service, c.operation);
        match out.iter_mut().find(|u| u.action == c.action) {
            Some(u) => {
                u.calls.push(call);
                u.commands |= c.commands;
                u.called |= c.called;
            }
            None => out.push(ActionUse {
                action: c.action,
                calls: if c.called { vec![call] } else { Vec::new() },
                commands: c.commands,
                called: c.called,
            }),
        }
    }
    out
}

/// The names of the commands in a bit set.
pub fn command_names(commands: u8) -> Vec<&'static str> {
    [
        (PLAN, "plan"),
        (APPLY, "apply"),
        (DESTROY, "destroy"),
        (OUTPUT, "output"),
    ]
    .into_iter()
    .filter(|(bit, _)| commands & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

/// EC2 resource types the stack creates, and so owns (tagged at creation: the network
/// interface of an instance too).
const EC2_OWNED: &[&str] = &[
    "vpc",
    "subnet",
    "internet-gateway",
    "elastic-ip",
    "natgateway",
    "route-table",
    "security-group",
    "instance",
    "volume",
    "network-interface",
    "launch-template",
];

/// The deployer's policy for `stack` in `region`: every action of [`ALL`], each narrowed as
/// its [`Scope`] says. The IAM change-event resources live in `us-east-1`: a stack of another
/// partition (China, GovCloud) has none and its policy names none. The audit log group is in
/// the stack's region. The SSM statement names both key parameters the stack's bastion may
/// create (the host key's, and the SSO CA's), so that `destroy` deletes whichever exists.
pub fn deployer_policy(stack: &str, region: &str, builds: Builds) -> Value {
    let part = partition(region);
    let events_part = partition(IAM_EVENTS_REGION);
    let events = part == events_part;
    let role = role_name(stack);
    // The bucket is named after the account: twelve digits, matched by twelve `?` (a `*` would
    // also match the bucket of a stack whose name starts with this one's and a `-`).
    let bucket = binary_bucket(stack, "????????????");
    let actions_of = |scopes: &[Scope]| {
        let mut actions: Vec<&str> = ALL
            .iter()
            .filter(|c| scopes.contains(&c.scope) && builds.needs(c))
            .map(|c| c.action)
            .collect();
        actions.sort_unstable();
        actions.dedup();
        actions
    };
    // The IAM change-event statements only where us-east-1 is (see above).
    let events_actions_of = |scopes: &[Scope]| {
        if events {
            actions_of(scopes)
        } else {
            Vec::new()
        }
    };
    let ec2 = |types: &[&str]| -> Vec<String> {
        types
            .iter()
            .map(|t| format!("arn:{part}:ec2:{region}:*:{t}/*"))
            .collect()
    };
    let tagged = |key: &str| json!({"StringEquals": {format!("{key}/{TAG_STACK}"): stack}});
    let log_group = format!(
        "arn:{part}:logs:{region}:*:log-group:{}",
        audit_log_group(stack)
    );
    let owned = builds.owned();
    let create_operations: Vec<&str> = ALL
        .iter()
        .filter(|c| c.scope == Scope::Ec2Create && builds.needs(c))
        .map(|c| c.operation)
        .collect();
    let balancer = format!(
        "arn:{part}:elasticloadbalancing:{region}:*:loadbalancer/net/{}/*",
        crate::names::balancer_name(stack)
    );
    let target_group = format!(
        "arn:{part}:elasticloadbalancing:{region}:*:targetgroup/{}/*",
        crate::names::target_group_name(stack)
    );
    // `listener/*/`: the Service Authorization Reference requires DeleteListener's resource
    // to be of both listener types (app and net); the name is the stack's either way.
    let listeners = format!(
        "arn:{part}:elasticloadbalancing:{region}:*:listener/*/{}/*/*",
        crate::names::balancer_name(stack)
    );
    let group = format!(
        "arn:{part}:autoscaling:{region}:*:autoScalingGroup:*:autoScalingGroupName/{}",
        crate::names::group_name(stack)
    );
    let statements = vec![
        ("Describe", actions_of(&[Scope::Any]), json!("*"), None),
        ("Create", actions_of(&[Scope::Ec2Create]), json!("*"), None),
        (
            "TagOnCreate",
            actions_of(&[Scope::Ec2Tags]),
            json!(ec2(&owned)),
            Some(json!({"StringEquals": {"ec2:CreateAction": create_operations}})),
        ),
        (
            "RetagTheStacksResources",
            actions_of(&[Scope::Ec2Tags]),
            json!(ec2(&owned)),
            Some(tagged("aws:ResourceTag")),
        ),
        // Only the default group of a VPC the stack creates (an existing VPC's is not its).
        (
            "TagTheDefaultSecurityGroup",
            actions_of(&[Scope::Ec2Tags])
                .into_iter()
                .filter(|_| builds.vpc)
                .collect(),
            json!(ec2(&["security-group"])),
            Some(tagged("aws:RequestTag")),
        ),
        (
            "ChangeOnlyTheStacksEc2Resources",
            actions_of(&[Scope::StackTagged]),
            json!(ec2(&owned)),
            Some(tagged("aws:ResourceTag")),
        ),
        (
            "TheBastionRole",
            actions_of(&[Scope::StackRole]),
            json!(format!("arn:{part}:iam::*:role/{role}")),
            None,
        ),
        (
            "TheBastionInstanceProfile",
            actions_of(&[Scope::StackProfile]),
            json!(format!("arn:{part}:iam::*:instance-profile/{role}")),
            None,
        ),
        (
            "PassTheBastionRoleToEc2Only",
            actions_of(&[Scope::PassStackRoleToEc2]),
            json!(format!("arn:{part}:iam::*:role/{role}")),
            Some(json!({"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}})),
        ),
        (
            "TheHostKeyParameter",
            actions_of(&[Scope::HostKeyParameter]),
            json!(key_parameters(stack, true)
                .iter()
                .map(|p| format!("arn:{part}:ssm:{region}:*:parameter/{}", p.trim_start_matches('/')))
                .collect::<Vec<_>>()),
            None,
        ),
        (
            "TheBinaryBucket",
            actions_of(&[Scope::StackBucket]),
            json!(format!("arn:{part}:s3:::{bucket}")),
            None,
        ),
        (
            "TheBinaries",
            actions_of(&[Scope::StackBucketObjects]),
            json!(format!("arn:{part}:s3:::{bucket}/*")),
            None,
        ),
        (
            "TheLoadBalancer",
            actions_of(&[Scope::StackBalancer]),
            json!(balancer),
            None,
        ),
        (
            "TheTargetGroup",
            actions_of(&[Scope::StackTargetGroup]),
            json!(target_group),
            None,
        ),
        (
            "TagTheBalancerAndItsParts",
            actions_of(&[Scope::StackElb]),
            json!([balancer, target_group, listeners]),
            None,
        ),
        (
            "TheAutoScalingGroup",
            actions_of(&[Scope::StackGroup]),
            json!(group),
            None,
        ),
        (
            "ServiceLinkedRolesOfAutoScalingAndElb",
            actions_of(&[Scope::ServiceLinkedRoles]),
            json!([
                format!("arn:{part}:iam::*:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"),
                format!("arn:{part}:iam::*:role/aws-service-role/elasticloadbalancing.amazonaws.com/AWSServiceRoleForElasticLoadBalancing"),
            ]),
            Some(json!({"StringEquals": {"iam:AWSServiceName": [
                "autoscaling.amazonaws.com",
                "elasticloadbalancing.amazonaws.com"
            ]}})),
        ),
        (
            "ListTheLogGroups",
            actions_of(&[Scope::LogGroupList]),
            json!("*"),
            None,
        ),
        (
            "TheAuditLogGroup",
            actions_of(&[Scope::AuditLogGroup]),
            json!(format!("{log_group}:*")),
            None,
        ),
        (
            "TagTheAuditLogGroup",
            actions_of(&[Scope::AuditLogGroupTags]),
            json!(log_group),
            None,
        ),
        (
            "TheStacksAlarms",
            actions_of(&[Scope::StackAlarms]),
            json!(ALARM_KINDS
                .iter()
                .map(|kind| format!(
                    "arn:{part}:cloudwatch:{region}:*:alarm:{}",
                    alarm_name(stack, kind)
                ))
                .collect::<Vec<_>>()),
            None,
        ),
        (
            "TheAlarmTopic",
            actions_of(&[Scope::AlertTopic]),
            json!(format!(
                "arn:{part}:sns:{region}:*:{}",
                alert_topic_name(stack)
            )),
            None,
        ),
        (
            "TheIamEventQueue",
            events_actions_of(&[Scope::EventQueue]),
            json!(format!(
                "arn:{events_part}:sqs:{IAM_EVENTS_REGION}:*:{}",
                event_queue_name(stack)
            )),
            None,
        ),
        (
            "TheIamEventRule",
            events_actions_of(&[Scope::EventRule]),
            json!(format!(
                "arn:{events_part}:events:{IAM_EVENTS_REGION}:*:rule/{}",
                event_rule_name(stack)
            )),
            None,
        ),
        (
            "ListTheTrails",
            events_actions_of(&[Scope::TrailList]),
            json!("*"),
            None,
        ),
        (
            "ReadTheTrailsOfIamEvents",
            events_actions_of(&[Scope::Trails]),
            json!(format!("arn:{events_part}:cloudtrail:*:*:trail/*")),
            None,
        ),
    ];
    let statements: Vec<Value> = statements
        .into_iter()
        .filter(|(_, actions, _, _)| !actions.is_empty())
        .map(|(sid, actions, resource, condition)| {
            let mut statement = json!({
                "Sid": sid,
                "Effect": "Allow",
                "Action": actions,
                "Resource": resource,
            });
            if let Some(condition) = condition {
                statement["Condition"] = condition;
            }
            statement
        })
        .collect();
    json!({"Version": "2012-10-17", "Statement": statements})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The modules that call AWS, as compiled.
    const SOURCES: &[(&str, &str)] = &[
        ("aws/observe.rs", include_str!("aws/observe.rs")),
        ("aws/execute.rs", include_str!("aws/execute.rs")),
        ("aws/replicas.rs", include_str!("aws/replicas.rs")),
        ("aws/alarms.rs", include_str!("aws/alarms.rs")),
        ("aws/network.rs", include_str!("aws/network.rs")),
    ];

    /// Every `deploy::NAME` the call sites name.
    fn named() -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (file, text) in SOURCES {
            for (i, _) in text.match_indices("deploy::") {
                let rest = &text[i + "deploy::".len()..];
                let ident: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                // Constants only (not `deploy::Call`, the type).
                if !ident.is_empty() && !ident.chars().any(|c| c.is_ascii_lowercase()) {
                    out.push((*file, ident));
                }
            }
        }
        out
    }

    #[test]
    fn every_call_site_names_a_declared_call_and_every_declared_call_is_made() {
        let named = named();
        assert!(named.len() >= 60, "{named:?}");
        let mut made = BTreeSet::new();
        for (file, ident) in &named {
            assert!(
                BY_IDENT.iter().any(|(name, _)| name == ident),
                "{file}: deploy::{ident} is not declared"
            );
            made.insert(ident.as_str());
        }
        for (ident, call) in BY_IDENT {
            assert_eq!(
                made.contains(ident),
                call.called,
                "deploy::{ident}: called = {} but the sources {} it",
                call.called,
                if made.contains(ident) {
                    "name"
                } else {
                    "never name"
                }
            );
        }
        // Every SDK operation string in the sources belongs to a declared call.
        for (file, text) in SOURCES {
            for line in text.lines().filter(|l| l.contains(".map_err(|e| fail(")) {
                assert!(line.contains("deploy::"), "{file}: {line}");
            }
        }
    }

    #[test]
    fn the_policy_grants_every_action_once_and_narrows_what_can_be_narrowed() {
        let policy = deployer_policy("lab", "eu-central-1", Builds::EVERYTHING);
        let mut granted = Vec::new();
        for s in policy["Statement"].as_array().expect("statements") {
            for a in s["Action"].as_array().expect("actions") {
                granted.push(a.as_str().expect("action").to_owned());
            }
            assert_ne!(s["Sid"], "", "{s}");
        }
        let mut want: Vec<String> = ALL
            .iter()
            .filter(|c| c.scope != Scope::NoPermission)
            .map(|c| c.action.to_owned())
            .collect();
        want.sort();
        want.dedup();
        let mut sorted = granted.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, want, "every action granted");
        assert!(!granted.iter().any(|a| a.ends_with(":*") || a == "*"));
        let text = policy.to_string();
        assert!(
            text.contains("arn:aws:iam::*:role/gatehouse-lab-bastion"),
            "{text}"
        );
        assert!(
            text.contains("\"iam:PassedToService\":\"ec2.amazonaws.com\""),
            "{text}"
        );
        assert!(
            text.contains("\"aws:ResourceTag/gatehouse:stack\":\"lab\""),
            "{text}"
        );
        assert!(
            text.contains("arn:aws:s3:::gatehouse-lab-????????????\""),
            "{text}"
        );
        // Nothing that could widen the deployer: no IAM user, policy or other role changes.
        for a in &granted {
            assert!(
                ![
                    "iam:CreateUser",
                    "iam:AttachRolePolicy",
                    "iam:CreatePolicy",
                    "iam:PutUserPolicy"
                ]
                .contains(&a.as_str()),
                "{a}"
            );
        }
    }

    #[test]
    fn the_readme_explains_every_statement() {
        let readme = include_str!("../README.md");
        let section = &readme[readme
            .find("### The deployer's IAM policy")
            .expect("section")..];
        let policy = deployer_policy("lab", "eu-central-1", Builds::EVERYTHING);
        for s in policy["Statement"].as_array().expect("statements") {
            let sid = s["Sid"].as_str().expect("sid");
            assert!(section.contains(&format!("`{sid}`")), "README lacks {sid}");
        }
        let walked = actions(Builds::EVERYTHING)
            .iter()
            .filter(|u| u.called)
            .count();
        assert!(
            section.contains(&format!("removes each action in turn ({walked} of them)")),
            "README's count of walked actions is not {walked}"
        );
    }

    #[test]
    fn plan_and_output_only_read() {
        for command in [PLAN, OUTPUT] {
            for call in ALL.iter().filter(|c| c.commands & command != 0) {
                assert!([READ, PLAN_CHECK].contains(&call.commands), "{call:?}");
                let op = call.operation;
                assert!(
                    ["Describe", "Get", "List", "Head"]
                        .iter()
                        .any(|p| op.starts_with(p)),
                    "{op}"
                );
            }
        }
    }
}
