//! The IAM documents of the bastion role: who may assume it (EC2) and what it may do (exactly
//! what the daemon reads and writes, nothing else).

use serde_json::{json, Value};

use crate::spec::Spec;

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

/// The inline policy of the bastion role.
///
/// - EC2 describe calls have no resource-level permissions, hence `*`.
/// - IAM: list users, their tags, groups and SSH public keys (read only).
/// - SSM: get/put only below the stack's own parameter path. SecureString parameters encrypted
///   with the AWS managed key `aws/ssm` need no extra KMS statement.
pub fn bastion_policy(spec: &Spec) -> Value {
    let part = partition(&spec.region);
    let params = format!(
        "arn:{part}:ssm:{}:*:parameter/gatehouse/{}/*",
        spec.region, spec.stack
    );
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DiscoverHosts",
                "Effect": "Allow",
                "Action": ["ec2:DescribeInstances", "ec2:DescribeTags"],
                "Resource": "*"
            },
            {
                "Sid": "ReadUsersAndSshKeys",
                "Effect": "Allow",
                "Action": [
                    "iam:GetSSHPublicKey",
                    "iam:GetUser",
                    "iam:ListGroupsForUser",
                    "iam:ListSSHPublicKeys",
                    "iam:ListUserTags",
                    "iam:ListUsers"
                ],
                "Resource": "*"
            },
            {
                "Sid": "HostKey",
                "Effect": "Allow",
                "Action": ["ssm:GetParameter", "ssm:PutParameter", "ssm:AddTagsToResource"],
                "Resource": params
            }
        ]
    })
}
