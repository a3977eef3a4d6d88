//! The identity family: the bastion's IAM role (assumable by EC2, with its one inline policy,
//! [`crate::policy::bastion_policy`]) and the instance profile that carries it.

use super::{base_tags, check_owned, tagged_ours, Creates, PlanError};
use crate::model::*;
use crate::names::{role_name, POLICY_NAME};
use crate::spec::Spec;

/// The role and the profile are found by name: refuse ones that are not the stack's.
pub(super) fn check_ownership(spec: &Spec, obs: &Observed) -> Result<(), PlanError> {
    if let Some(r) = &obs.role {
        check_owned(spec, "IAM role", &r.name, tagged_ours(spec, &r.tags))?;
    }
    if let Some(p) = &obs.profile {
        check_owned(
            spec,
            "IAM instance profile",
            &p.name,
            tagged_ours(spec, &p.tags),
        )?;
    }
    Ok(())
}

/// The role and its profile. `binary_bucket`: the bucket the bastion fetches its binary
/// from, if any (the policy grants reading it).
pub(super) fn plan_identity(
    spec: &Spec,
    obs: &Observed,
    c: &mut Creates,
    binary_bucket: Option<&str>,
) {
    plan_role(spec, obs, c, binary_bucket);
    plan_profile(spec, obs, c);
}

fn plan_role(spec: &Spec, obs: &Observed, c: &mut Creates, binary_bucket: Option<&str>) {
    let role = role_name(&spec.stack);
    let policy = crate::policy::bastion_policy(spec, binary_bucket, &obs.account);
    let resource = format!("iam role {role}");
    let put_policy = Action::PutRolePolicy {
        role: role.clone(),
        policy: policy.clone(),
    };
    match &obs.role {
        None => {
            c.push(
                Sign::Create,
                &resource,
                "assumable by EC2",
                Action::CreateRole {
                    name: role.clone(),
                    tags: base_tags(spec, "iam/role"),
                },
            );
            c.push(
                Sign::Create,
                &resource,
                format!("inline policy {POLICY_NAME}"),
                put_policy,
            );
        }
        Some(r) if r.policy.as_ref() != Some(&policy) => {
            let what = if r.policy.is_none() { "add" } else { "update" };
            c.push(
                Sign::Change,
                &resource,
                format!("{what} inline policy {POLICY_NAME}"),
                put_policy,
            );
        }
        Some(_) => {}
    }
}

fn plan_profile(spec: &Spec, obs: &Observed, c: &mut Creates) {
    let role = role_name(&spec.stack);
    let resource = format!("instance profile {role}");
    let add_role = Action::AddRoleToProfile {
        profile: role.clone(),
        role: role.clone(),
    };
    match &obs.profile {
        None => {
            c.push(
                Sign::Create,
                &resource,
                "",
                Action::CreateInstanceProfile {
                    name: role.clone(),
                    tags: base_tags(spec, "iam/profile"),
                },
            );
            c.push(
                Sign::Change,
                &resource,
                format!("add role {role}"),
                add_role,
            );
        }
        Some(pr) if !pr.roles.contains(&role) => {
            c.push(
                Sign::Change,
                &resource,
                format!("add role {role}"),
                add_role,
            );
        }
        Some(_) => {}
    }
}
