//! The storage family: the stack's S3 bucket (the stored gatehouse binary, and the replicas'
//! shared listing) and its audit log group in CloudWatch Logs.

use std::path::PathBuf;

use super::{base_tags, check_owned, tagged_ours, Creates, PlanError, Planner};
use crate::model::*;
use crate::names::{
    audit_log_group, binary_bucket, binary_object, AUDIT_LOG_GROUP_KEY, SHARED_SNAPSHOT_OBJECT,
};
use crate::spec::{Binary, Spec};

/// The log group and the bucket are found by name: refuse ones that are not the stack's.
pub(super) fn check_ownership(spec: &Spec, obs: &Observed) -> Result<(), PlanError> {
    // The stack always has its audit log group: one of the name without the tag is refused.
    if let Some(g) = &obs.log_group {
        check_owned(
            spec,
            "CloudWatch Logs log group",
            &g.name,
            tagged_ours(spec, &g.tags),
        )?;
    }
    let bucket_needed =
        matches!(spec.bastion.binary, Binary::Stored { .. }) || spec.bastion.scaled_out();
    match &obs.bucket {
        Some(b) if bucket_needed => check_owned(spec, "S3 bucket", &b.name, b.is_ours(&spec.stack)),
        _ => Ok(()),
    }
}

/// The stored binary of the spec: (path, SHA-256, size); None for a download URL.
fn stored_binary(spec: &Spec) -> Option<(&PathBuf, &String, &u64)> {
    match &spec.bastion.binary {
        Binary::Stored { path, sha256, size } => Some((path, sha256, size)),
        Binary::Url { .. } => None,
    }
}

/// The bucket the binary comes from, of the bucket [`plan_bucket`] returns: a scaled-out stack
/// has one for its shared listing whatever the binary's source.
pub(super) fn binary_source(spec: &Spec, bucket: Option<String>) -> Option<String> {
    bucket.filter(|_| matches!(spec.bastion.binary, Binary::Stored { .. }))
}

/// The bucket steps: a stored binary needs the stack's bucket, secured, holding
/// `gatehouse/<sha256>` and nothing else (older binaries are deleted after the bastion that
/// used them is replaced); a spec without one needs no bucket. Returns the bucket name when the
/// spec needs one.
pub(super) fn plan_bucket(
    spec: &Spec,
    obs: &Observed,
    c: &mut Creates,
    p: &mut Planner,
) -> Result<Option<String>, PlanError> {
    let stored = stored_binary(spec);
    let shared = spec.bastion.scaled_out();
    if stored.is_none() && !shared {
        if let Some(b) = &obs.bucket {
            p.doomed.bucket = Some(b.clone());
        }
        return Ok(None);
    }
    check_bucket_preconditions(spec, obs)?;
    let name = binary_bucket(&spec.stack, &obs.account);
    let resource = format!("bucket {name}");
    let objects = match &obs.bucket {
        None => {
            create_bucket(spec, c, &name, &resource);
            Vec::new()
        }
        Some(b) => {
            p.known.insert("bucket".into(), b.name.clone());
            repair_bucket(spec, c, b, &name, &resource);
            b.objects.clone()
        }
    };
    plan_objects(spec, c, &resource, &objects);
    Ok(Some(name))
}

/// A bucket needs the binary's digest (read with the spec) and the account (its name).
fn check_bucket_preconditions(spec: &Spec, obs: &Observed) -> Result<(), PlanError> {
    if stored_binary(spec).is_some_and(|(_, sha256, _)| sha256 == crate::spec::UNREAD_SHA256) {
        return Err(PlanError::Immutable {
            resource: "bucket".into(),
            message: "the spec was loaded without reading gatehouse_binary".into(),
        });
    }
    if obs.account.is_empty() {
        return Err(PlanError::Immutable {
            resource: "bucket".into(),
            message:
                "the AWS account is not known (STS GetCallerIdentity), so the bucket has no name"
                    .into(),
        });
    }
    Ok(())
}

fn create_bucket(spec: &Spec, c: &mut Creates, name: &str, resource: &str) {
    let purpose = match (stored_binary(spec).is_some(), spec.bastion.scaled_out()) {
        (true, true) => "private bucket for the gatehouse binary and the replicas' listing",
        (true, false) => "private bucket for the gatehouse binary",
        _ => "private bucket for the replicas' listing",
    };
    c.push(
        Sign::Create,
        resource,
        purpose,
        Action::CreateBucket {
            key: "bucket".into(),
            name: name.to_owned(),
            tags: base_tags(spec, "bucket"),
        },
    );
    c.push(
        Sign::Change,
        resource,
        "block public access, encrypt (SSE-S3), TLS-only policy",
        Action::SecureBucket {
            bucket: "bucket".into(),
            policy: crate::policy::bucket_policy(&spec.region, name),
        },
    );
}

/// Tags (S3 replaces them all: the drifted ones are merged into what the bucket has), then
/// the public access block, the encryption and the policy.
fn repair_bucket(spec: &Spec, c: &mut Creates, b: &ObsBucket, name: &str, resource: &str) {
    c.retag_with(resource, &base_tags(spec, "bucket"), &b.tags, |drift| {
        let mut all = b.tags.clone();
        all.extend(drift);
        Action::TagBucket {
            bucket: "bucket".into(),
            tags: all,
        }
    });
    let policy = crate::policy::bucket_policy(&spec.region, name);
    let mut what = Vec::new();
    if !b.public_access_blocked {
        what.push("block public access");
    }
    if !b.encrypted {
        what.push("encrypt (SSE-S3)");
    }
    if b.policy.as_ref() != Some(&policy) {
        what.push("TLS-only policy");
    }
    if !what.is_empty() {
        c.push(
            Sign::Change,
            resource,
            what.join(", "),
            Action::SecureBucket {
                bucket: "bucket".into(),
                policy,
            },
        );
    }
}

/// What the bucket holds: the binary the user data names (uploaded before the bastion), and
/// the listing the replicas share (written by the daemons, never by apply). Anything else is
/// deleted after every creation.
fn plan_objects(spec: &Spec, c: &mut Creates, resource: &str, objects: &[String]) {
    let mut wanted = Vec::new();
    if let Some((path, sha256, size)) = stored_binary(spec) {
        let object = binary_object(sha256);
        if !objects.contains(&object) {
            c.push(
                Sign::Create,
                format!("{resource}/{object}"),
                format!("upload {} ({size} bytes)", path.display()),
                Action::PutBinary {
                    bucket: "bucket".into(),
                    object: object.clone(),
                    path: path.clone(),
                    sha256: sha256.clone(),
                },
            );
        }
        wanted.push(object);
    }
    if spec.bastion.scaled_out() {
        wanted.push(SHARED_SNAPSHOT_OBJECT.to_owned());
    }
    for stale in objects.iter().filter(|o| !wanted.contains(o)) {
        c.later.push(Step {
            sign: Sign::Delete,
            resource: format!("{resource}/{stale}"),
            detail: "no longer named by the bastion's user data".into(),
            action: Action::DeleteObject {
                bucket: "bucket".into(),
                object: stale.clone(),
            },
        });
    }
}

/// A log group's retention in words.
pub(super) fn describe_retention(days: Option<i32>) -> String {
    match days {
        Some(days) => format!("retention {days} days"),
        None => "retention: never expires".to_owned(),
    }
}

/// The audit log group: `/gatehouse/<stack>/audit`, with the spec's retention and the stack's
/// tags. Never removed by apply (only `destroy --delete-audit-log` deletes it).
pub(super) fn plan_audit_log(spec: &Spec, obs: &Observed, c: &mut Creates) {
    let name = audit_log_group(&spec.stack);
    let days = spec.bastion.audit_retention_days;
    let tags = base_tags(spec, AUDIT_LOG_GROUP_KEY);
    let resource = format!("log group {name}");
    let Some(g) = &obs.log_group else {
        c.push(
            Sign::Create,
            &resource,
            format!(
                "the bastions' audit lines, retention {days} days; destroy keeps it \
                 (--delete-audit-log deletes it)"
            ),
            Action::CreateAuditLogGroup {
                name,
                tags,
                retention_days: days,
            },
        );
        return;
    };
    if g.retention_days != Some(days) {
        c.push(
            Sign::Change,
            &resource,
            format!(
                "{} -> retention {days} days",
                describe_retention(g.retention_days)
            ),
            Action::SetAuditLogRetention {
                name: g.name.clone(),
                retention_days: days,
            },
        );
    }
    c.retag_with(&resource, &tags, &g.tags, |tags| Action::TagAuditLogGroup {
        arn: g.arn.clone(),
        tags,
    });
}
