//! The compute family: the instances the plan launches itself (the bastion, unless the stack
//! is scaled out, and the private hosts), replaced when their launch changed, and the
//! bastion's Elastic IP association. A scaled-out stack's replicas are [`super::replicas`]'.

use std::collections::BTreeMap;

use super::{base_tags, host_tags, primary_by_key, Creates, Planner};
use crate::digest::sha256_hex;
use crate::model::*;
use crate::names::{role_name, REPLICA_KEY};
use crate::spec::Spec;

/// The instances the spec asks for: (key, launch spec, tags).
fn desired_instances(spec: &Spec) -> Vec<(String, LaunchSpec, Tags)> {
    let mut out = Vec::new();
    // Replicas are launched by their group (`replicas`), one bastion by the plan.
    out.extend((!spec.bastion.scaled_out()).then(|| {
        (
            "instance/bastion".to_string(),
            LaunchSpec {
                ami: spec.bastion.ami.clone(),
                instance_type: spec.bastion.instance_type.clone(),
                subnet: format!("subnet/{}", spec.bastion.subnet),
                security_group: "sg/bastion".into(),
                profile: Some(role_name(&spec.stack)),
                bastion: true,
                private_ip: None,
            },
            base_tags(spec, "instance/bastion"),
        )
    }));
    for h in &spec.hosts {
        out.push((
            format!("instance/{}", h.name),
            LaunchSpec {
                ami: h.ami.clone(),
                instance_type: h.instance_type.clone(),
                subnet: format!("subnet/{}", h.subnet),
                security_group: "sg/private".into(),
                profile: None,
                bastion: false,
                private_ip: h.private_ip.map(|ip| ip.to_string()),
            },
            host_tags(spec, h),
        ));
    }
    out
}

/// The digest of the user data the spec's bastions get (None while the VPC does not exist
/// yet: the user data names it). `binary_bucket`: where the binary comes from, if stored.
fn user_data_hash(
    spec: &Spec,
    obs: &Observed,
    p: &Planner,
    binary_bucket: Option<&str>,
) -> Option<String> {
    p.known.get("vpc").map(|vpc| {
        sha256_hex(&crate::userdata::render(
            spec,
            vpc,
            &obs.account,
            binary_bucket,
        ))
    })
}

/// The instances: launched, kept, or replaced. Returns the digest of the bastions' user
/// data, which the replicas' template compares too.
pub(super) fn plan_instances(
    spec: &Spec,
    obs: &Observed,
    c: &mut Creates,
    p: &mut Planner,
    binary_bucket: Option<&str>,
) -> Option<String> {
    let desired = desired_instances(spec);
    let user_data_hash = user_data_hash(spec, obs, p, binary_bucket);
    let replaced = keep_instances(spec, obs, p, &desired, user_data_hash.as_deref());
    for (key, launch, tags) in &desired {
        match p
            .known
            .get(key)
            .and_then(|id| obs.instances.iter().find(|i| &i.id == id))
        {
            Some(i) => c.retag(key, tags, &i.tags),
            None => {
                let detail = match replaced.get(key) {
                    Some(reasons) => format!("replace: {}", reasons.join("; ")),
                    None => format!(
                        "{} {} in {}",
                        launch.instance_type, launch.ami, launch.subnet
                    ),
                };
                c.push(
                    Sign::Create,
                    key,
                    detail,
                    Action::RunInstance {
                        key: key.clone(),
                        launch: launch.clone(),
                        tags: tags.clone(),
                    },
                );
            }
        }
    }
    user_data_hash
}

/// Sort the observed instances into kept and doomed. Returns why each replaced one is
/// replaced, by key.
fn keep_instances(
    spec: &Spec,
    obs: &Observed,
    p: &mut Planner,
    desired: &[(String, LaunchSpec, Tags)],
    user_data_hash: Option<&str>,
) -> BTreeMap<String, Vec<String>> {
    // The replicas are the group's: it launches and replaces them (without the group, they
    // are removed like any instance the spec does not ask for).
    let instances: Vec<ObsInstance> = obs
        .instances
        .iter()
        .filter(|i| !(spec.bastion.scaled_out() && i.key == REPLICA_KEY))
        .cloned()
        .collect();
    let (insts, extra) = primary_by_key(&instances, |i| (i.key.as_str(), i.id.as_str()));
    p.doomed.instances.extend(extra.into_iter().cloned());
    let mut replaced = BTreeMap::new();
    for (k, inst) in &insts {
        let Some((_, launch, _)) = desired.iter().find(|(dk, _, _)| dk == k) else {
            p.doomed.instances.push((*inst).clone());
            continue;
        };
        let reasons = instance_mismatch(inst, launch, &p.known, user_data_hash);
        if reasons.is_empty() {
            p.known.insert(k.clone(), inst.id.clone());
        } else {
            replaced.insert(k.clone(), reasons);
            p.doomed.instances.push((*inst).clone());
        }
    }
    replaced
}

/// Why an instance is not what the spec launches (empty: it is).
fn instance_mismatch(
    inst: &ObsInstance,
    launch: &LaunchSpec,
    known: &BTreeMap<String, String>,
    user_data_hash: Option<&str>,
) -> Vec<String> {
    let mut reasons = Vec::new();
    if inst.ami != launch.ami {
        reasons.push(format!("ami {} -> {}", inst.ami, launch.ami));
    }
    if inst.instance_type != launch.instance_type {
        reasons.push(format!(
            "type {} -> {}",
            inst.instance_type, launch.instance_type
        ));
    }
    if known.get(&launch.subnet) != Some(&inst.subnet_id) {
        reasons.push(format!("subnet {} -> {}", inst.subnet_id, launch.subnet));
    }
    let sg = known.get(&launch.security_group);
    if sg.is_none() || inst.security_groups.len() != 1 || inst.security_groups.first() != sg {
        reasons.push(format!("security groups -> {}", launch.security_group));
    }
    if let Some(profile) = &launch.profile {
        let ok = inst
            .profile_arn
            .as_ref()
            .is_some_and(|a| a.ends_with(&format!("/{profile}")));
        if !ok {
            reasons.push(format!("instance profile -> {profile}"));
        }
    }
    if launch.bastion && inst.tags.get(TAG_USER_DATA).map(String::as_str) != user_data_hash {
        reasons.push("user data changed".into());
    }
    if inst.http_tokens.as_deref().is_some_and(|t| t != "required")
        || inst.hop_limit.is_some_and(|h| h != 1)
    {
        reasons.push("IMDSv2 not enforced".into());
    }
    if let Some(ip) = &launch.private_ip {
        if inst.private_ip.as_ref() != Some(ip) {
            reasons.push(format!("private ip -> {ip}"));
        }
    }
    reasons
}

/// The bastion's Elastic IP, associated with the kept or new bastion (a scaled-out stack's
/// address is its balancer's).
pub(super) fn plan_bastion_address(spec: &Spec, obs: &Observed, c: &mut Creates, p: &Planner) {
    let (eips, _) = primary_by_key(&obs.eips, |e| (e.key.as_str(), e.allocation_id.as_str()));
    let bastion_known = p.known.get("instance/bastion");
    let eip_attached = eips
        .get("eip/bastion")
        .and_then(|e| e.instance_id.as_ref())
        .is_some_and(|i| Some(i) == bastion_known);
    if !eip_attached && !spec.bastion.scaled_out() {
        c.push(
            Sign::Change,
            "eip/bastion",
            "associate with instance/bastion",
            Action::AssociateAddress {
                eip: "eip/bastion".into(),
                instance: "instance/bastion".into(),
            },
        );
    }
}
