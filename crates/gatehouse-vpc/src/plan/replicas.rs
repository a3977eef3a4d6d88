//! The replicas of a scaled-out stack (`[bastion] replicas` >= 2): a launch template, an Auto
//! Scaling group over the public subnets, and an internet-facing Network Load Balancer with
//! its target group and listener. Without replicas, whatever of these the stack has is
//! removed.
//!
//! How clients reach a replica: the balancer speaks PROXY protocol v2 to it with client-address
//! preservation off, so the TCP source is the balancer (trusted by `server.trusted_proxies`,
//! the public subnets) and the client's address arrives in the header, for the audit and the
//! per-source limits. Preservation on without PROXY would also work, but then the replicas'
//! security group would have to admit every allowed client (and health checks come from the
//! balancer anyway); with PROXY the replicas admit only the balancer's security group, and
//! `allowed_cidrs` is enforced once, on the balancer. Health checks go to the daemon's health
//! endpoint ([`crate::userdata::HEALTH_PORT`]), never to port 22: a probe is never a failed
//! login and never earns the balancer a penalty.

use std::collections::{BTreeMap, BTreeSet};

use super::{base_tags, check_owned, primary_by_key, tagged_ours, Creates, PlanError, Planner};
use crate::model::*;
use crate::names::{
    balancer_eip_key, balancer_name, group_name, role_name, target_group_name, BALANCER_KEY,
    BALANCER_SG_KEY, GROUP_KEY, LISTENER_KEY, REPLICA_KEY, TARGET_GROUP_KEY, TEMPLATE_KEY,
    TEMPLATE_VERSION_KEY,
};
use crate::spec::Spec;
use crate::userdata::{HEALTH_PATH, HEALTH_PORT};

/// Seconds between the balancer's health checks, and how many in a row decide.
pub const HEALTH_INTERVAL_SECS: i32 = 10;
pub const HEALTHY_THRESHOLD: i32 = 3;
pub const UNHEALTHY_THRESHOLD: i32 = 2;
/// Which replicas the group removes first when it has more than it needs (after a roll or a
/// failed one): those of an older template version, then the oldest.
pub const TERMINATION_POLICIES: [&str; 2] = ["OldestLaunchTemplate", "OldestInstance"];
/// How long a new replica may take to boot before the group acts on the balancer's verdict.
pub const HEALTH_CHECK_GRACE_SECS: i32 = 300;
/// The deregistration delay when the daemon's `shutdown_grace` is unknown (its default).
const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;
/// The longest deregistration delay ELB accepts.
const MAX_DEREGISTRATION_DELAY_SECS: u64 = 3600;

/// The balancer's subnets: the first public subnet of each availability zone, in spec order
/// (a balancer takes one subnet per zone).
pub fn balancer_subnets(spec: &Spec) -> Vec<&crate::spec::Subnet> {
    let mut seen = BTreeSet::new();
    spec.public_subnets()
        .filter(|s| seen.insert(s.az.clone()))
        .collect()
}

/// The Elastic IP keys the balancer needs (none without `fixed_addresses`).
pub fn balancer_eip_keys(spec: &Spec) -> Vec<String> {
    if !spec.bastion.scaled_out() || !spec.bastion.fixed_addresses {
        return Vec::new();
    }
    balancer_subnets(spec)
        .iter()
        .map(|s| balancer_eip_key(&s.az))
        .collect()
}

/// The target group's attributes: the deregistration delay is the daemon's `shutdown_grace`
/// (a replica taken out keeps its sessions for as long as the daemon drains them), PROXY v2
/// on, client-address preservation off (see the module docs).
pub fn target_group_attributes(spec: &Spec) -> BTreeMap<String, String> {
    let grace = crate::userdata::check_daemon_config(
        spec,
        "vpc-00000000",
        crate::userdata::PLACEHOLDER_ACCOUNT,
    )
    .map_or(DEFAULT_SHUTDOWN_GRACE_SECS, |c| {
        c.server.shutdown_grace.as_secs()
    })
    .min(MAX_DEREGISTRATION_DELAY_SECS);
    BTreeMap::from([
        (
            "deregistration_delay.timeout_seconds".to_owned(),
            grace.to_string(),
        ),
        ("proxy_protocol_v2.enabled".to_owned(), "true".to_owned()),
        ("preserve_client_ip.enabled".to_owned(), "false".to_owned()),
    ])
}

/// The balancer's attributes: every node sends to replicas in every zone.
pub fn balancer_attributes() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "load_balancing.cross_zone.enabled".to_owned(),
        "true".to_owned(),
    )])
}

/// What the template launches.
pub fn replica_launch(spec: &Spec) -> LaunchSpec {
    LaunchSpec {
        ami: spec.bastion.ami.clone(),
        instance_type: spec.bastion.instance_type.clone(),
        // Not used: the group picks the subnet.
        subnet: String::new(),
        security_group: "sg/bastion".into(),
        profile: Some(role_name(&spec.stack)),
        bastion: true,
        private_ip: None,
    }
}

/// Why the template's latest version is not what the spec launches.
fn template_mismatch(
    t: &ObsLaunchTemplate,
    launch: &LaunchSpec,
    known: &BTreeMap<String, String>,
    user_data_hash: Option<&str>,
) -> Vec<String> {
    let mut reasons = Vec::new();
    if t.ami != launch.ami {
        reasons.push(format!("ami {} -> {}", t.ami, launch.ami));
    }
    if t.instance_type != launch.instance_type {
        reasons.push(format!(
            "type {} -> {}",
            t.instance_type, launch.instance_type
        ));
    }
    let sg = known.get(&launch.security_group);
    if sg.is_none() || t.security_groups.len() != 1 || t.security_groups.first() != sg {
        reasons.push(format!("security groups -> {}", launch.security_group));
    }
    if let Some(profile) = &launch.profile {
        let ok = t
            .profile
            .as_ref()
            .is_some_and(|p| p == profile || p.ends_with(&format!("/{profile}")));
        if !ok {
            reasons.push(format!("instance profile -> {profile}"));
        }
    }
    if t.user_data_sha256.as_deref() != user_data_hash || user_data_hash.is_none() {
        reasons.push("user data changed".into());
    }
    if t.http_tokens.as_deref() != Some("required") || t.hop_limit.is_some_and(|h| h != 1) {
        reasons.push("IMDSv2 not enforced".into());
    }
    reasons
}

/// A scaled-out stack's balancer, target group and group have fixed names: refuse ones that
/// are not the stack's.
pub(super) fn check_ownership(spec: &Spec, obs: &Observed) -> Result<(), PlanError> {
    if !spec.bastion.scaled_out() {
        return Ok(());
    }
    if let Some(b) = &obs.balancer {
        check_owned(
            spec,
            "Network Load Balancer",
            &b.name,
            tagged_ours(spec, &b.tags),
        )?;
    }
    if let Some(t) = &obs.target_group {
        check_owned(spec, "target group", &t.name, tagged_ours(spec, &t.tags))?;
    }
    if let Some(g) = &obs.group {
        check_owned(
            spec,
            "Auto Scaling group",
            &g.name,
            tagged_ours(spec, &g.tags),
        )?;
    }
    Ok(())
}

/// The replicas' steps. `user_data_hash`: of the user data the spec's bastions get (None
/// while the VPC does not exist yet).
pub(super) fn plan_replicas(
    spec: &Spec,
    obs: &Observed,
    c: &mut Creates,
    p: &mut Planner,
    user_data_hash: Option<&str>,
) {
    if !spec.bastion.scaled_out() {
        p.doomed.group = obs.group.clone();
        p.doomed.listeners = obs.listeners.clone();
        p.doomed.balancer = obs.balancer.clone();
        p.doomed.target_group = obs.target_group.clone();
        p.doomed.launch_templates = obs.launch_templates.clone();
        return;
    }
    let launch = replica_launch(spec);
    let new_version = plan_template(spec, obs, c, p, &launch, user_data_hash);
    plan_target_group(spec, obs, c, p);
    plan_balancer(spec, obs, c, p);
    plan_listener(spec, obs, c, p);
    let Some(g) = obs.group.as_ref().filter(|g| !g.deleting) else {
        create_group(spec, c);
        return;
    };
    p.known.insert(GROUP_KEY.into(), g.name.clone());
    c.retag_with(GROUP_KEY, &base_tags(spec, GROUP_KEY), &g.tags, |tags| {
        Action::TagAutoScalingGroup {
            group: GROUP_KEY.into(),
            tags,
        }
    });
    let outdated = outdated_replicas(obs, g, &launch, new_version, user_data_hash);
    update_group(spec, c, p, g, new_version, !outdated.is_empty());
    plan_group_target_groups(c, p, g);
    roll_replicas(spec, c, g, outdated);
}

/// The launch template: a new version when the launch changed. Returns whether the group
/// gets a new version to launch.
fn plan_template(
    spec: &Spec,
    obs: &Observed,
    c: &mut Creates,
    p: &mut Planner,
    launch: &LaunchSpec,
    user_data_hash: Option<&str>,
) -> bool {
    let (templates, extra) =
        primary_by_key(&obs.launch_templates, |t| (t.key.as_str(), t.id.as_str()));
    p.doomed.launch_templates.extend(extra.into_iter().cloned());
    for (k, t) in &templates {
        if k != TEMPLATE_KEY {
            p.doomed.launch_templates.push((*t).clone());
        }
    }
    let instance_tags = base_tags(spec, REPLICA_KEY);
    let Some(t) = templates.get(TEMPLATE_KEY) else {
        create_template(spec, c, launch, instance_tags);
        return true;
    };
    p.known.insert(TEMPLATE_KEY.into(), t.id.clone());
    c.retag(TEMPLATE_KEY, &base_tags(spec, TEMPLATE_KEY), &t.tags);
    let reasons = template_mismatch(t, launch, &p.known, user_data_hash);
    if !reasons.is_empty() {
        c.push(
            Sign::Change,
            TEMPLATE_KEY,
            format!("version {}: {}", t.latest_version + 1, reasons.join("; ")),
            Action::CreateLaunchTemplateVersion {
                template: TEMPLATE_KEY.into(),
                launch: launch.clone(),
                instance_tags,
            },
        );
        return true;
    }
    p.known
        .insert(TEMPLATE_VERSION_KEY.into(), t.latest_version.to_string());
    if t.default_version != t.latest_version {
        c.push(
            Sign::Change,
            TEMPLATE_KEY,
            format!(
                "default version {} -> {}",
                t.default_version, t.latest_version
            ),
            Action::SetDefaultTemplateVersion {
                template: TEMPLATE_KEY.into(),
            },
        );
    }
    false
}

fn create_template(spec: &Spec, c: &mut Creates, launch: &LaunchSpec, instance_tags: Tags) {
    let name = group_name(&spec.stack);
    c.push(
        Sign::Create,
        TEMPLATE_KEY,
        format!(
            "launch template {name}: {} {}, IMDSv2",
            launch.instance_type, launch.ami
        ),
        Action::CreateLaunchTemplate {
            key: TEMPLATE_KEY.into(),
            name,
            launch: launch.clone(),
            tags: base_tags(spec, TEMPLATE_KEY),
            instance_tags,
        },
    );
}

/// The target group: TCP 22 in the stack's VPC (replaced otherwise), its health check on the
/// daemon's health endpoint, its attributes.
fn plan_target_group(spec: &Spec, obs: &Observed, c: &mut Creates, p: &mut Planner) {
    let vpc = p.known.get("vpc");
    let kept = obs
        .target_group
        .as_ref()
        .filter(|g| g.protocol == "TCP" && g.port == 22 && vpc == Some(&g.vpc_id));
    if let (Some(g), None) = (&obs.target_group, kept) {
        p.doomed.target_group = Some(g.clone());
    }
    let attributes = target_group_attributes(spec);
    let Some(g) = kept else {
        create_target_group(spec, c, attributes);
        return;
    };
    p.known.insert(TARGET_GROUP_KEY.into(), g.arn.clone());
    elb_retag(
        c,
        TARGET_GROUP_KEY,
        &base_tags(spec, TARGET_GROUP_KEY),
        &g.tags,
    );
    let health_ok = g.health_protocol == "HTTP"
        && g.health_port == HEALTH_PORT.to_string()
        && g.health_path.as_deref() == Some(HEALTH_PATH)
        && g.health_interval == Some(HEALTH_INTERVAL_SECS)
        && g.healthy_threshold == Some(HEALTHY_THRESHOLD)
        && g.unhealthy_threshold == Some(UNHEALTHY_THRESHOLD);
    if !health_ok {
        c.push(
            Sign::Change,
            TARGET_GROUP_KEY,
            format!(
                "health check {} {}{} -> HTTP {HEALTH_PORT}{HEALTH_PATH}",
                g.health_protocol,
                g.health_port,
                g.health_path.as_deref().unwrap_or("")
            ),
            Action::SetTargetGroupHealthCheck {
                group: TARGET_GROUP_KEY.into(),
            },
        );
    }
    let drift: BTreeMap<String, String> = attributes
        .into_iter()
        .filter(|(k, v)| g.attributes.get(k) != Some(v))
        .collect();
    if !drift.is_empty() {
        c.push(
            Sign::Change,
            TARGET_GROUP_KEY,
            describe_attributes(&drift),
            Action::SetTargetGroupAttributes {
                group: TARGET_GROUP_KEY.into(),
                attributes: drift,
            },
        );
    }
}

fn create_target_group(spec: &Spec, c: &mut Creates, attributes: BTreeMap<String, String>) {
    let name = target_group_name(&spec.stack);
    c.push(
        Sign::Create,
        TARGET_GROUP_KEY,
        format!("target group {name}: TCP 22, health check HTTP {HEALTH_PORT}{HEALTH_PATH}"),
        Action::CreateTargetGroup {
            key: TARGET_GROUP_KEY.into(),
            name,
            vpc: "vpc".into(),
            tags: base_tags(spec, TARGET_GROUP_KEY),
        },
    );
    c.push(
        Sign::Change,
        TARGET_GROUP_KEY,
        describe_attributes(&attributes),
        Action::SetTargetGroupAttributes {
            group: TARGET_GROUP_KEY.into(),
            attributes,
        },
    );
}

/// The balancer's subnets by key, each with its Elastic IP's key (`fixed_addresses`).
fn balancer_subnet_keys(spec: &Spec) -> Vec<(String, Option<String>)> {
    balancer_subnets(spec)
        .iter()
        .map(|s| {
            (
                format!("subnet/{}", s.name),
                spec.bastion
                    .fixed_addresses
                    .then(|| balancer_eip_key(&s.az)),
            )
        })
        .collect()
}

/// The balancer: internet-facing in the stack's VPC, in its subnets with its addresses, in
/// its security group (replaced otherwise, with its listeners), cross-zone.
fn plan_balancer(spec: &Spec, obs: &Observed, c: &mut Creates, p: &mut Planner) {
    let subnets = balancer_subnet_keys(spec);
    let lb = obs
        .balancer
        .as_ref()
        .filter(|b| balancer_matches(b, &subnets, &p.known));
    if let (Some(b), None) = (&obs.balancer, lb) {
        p.doomed.balancer = Some(b.clone());
        p.doomed.listeners = obs.listeners.clone();
    }
    match lb {
        None => create_balancer(spec, c, subnets, obs.balancer.is_some()),
        Some(b) => {
            p.known.insert(BALANCER_KEY.into(), b.arn.clone());
            elb_retag(c, BALANCER_KEY, &base_tags(spec, BALANCER_KEY), &b.tags);
        }
    }
    // A new balancer, or one whose attributes drifted.
    if lb.is_none_or(|b| !b.cross_zone) {
        let attributes = balancer_attributes();
        c.push(
            Sign::Change,
            BALANCER_KEY,
            describe_attributes(&attributes),
            Action::SetLoadBalancerAttributes {
                balancer: BALANCER_KEY.into(),
                attributes,
            },
        );
    }
}

/// Whether the observed balancer is the one the spec asks for.
fn balancer_matches(
    b: &ObsLoadBalancer,
    subnets: &[(String, Option<String>)],
    known: &BTreeMap<String, String>,
) -> bool {
    let mut want: Vec<(Option<&String>, Option<&String>)> = subnets
        .iter()
        .map(|(s, e)| (known.get(s), e.as_ref().and_then(|e| known.get(e))))
        .collect();
    let mut have: Vec<(Option<&String>, Option<&String>)> = b
        .subnets
        .iter()
        .map(|(s, e)| (Some(s), e.as_ref()))
        .collect();
    // Which Elastic IP each zone holds is known only when AWS reports the balancer's
    // addresses (moto reports none): without any, the subnets alone are compared.
    if b.subnets.iter().all(|(_, e)| e.is_none()) {
        for w in &mut want {
            w.1 = None;
        }
    }
    want.sort();
    have.sort();
    let sg = known.get(BALANCER_SG_KEY);
    b.kind == "network"
        && b.scheme == "internet-facing"
        && b.state != "failed"
        && known.get("vpc") == Some(&b.vpc_id)
        && want == have
        && sg.is_some()
        && b.security_groups.len() == 1
        && b.security_groups.first() == sg
}

fn create_balancer(
    spec: &Spec,
    c: &mut Creates,
    subnets: Vec<(String, Option<String>)>,
    replacing: bool,
) {
    let name = balancer_name(&spec.stack);
    let keys: Vec<&str> = subnets.iter().map(|(s, _)| s.as_str()).collect();
    c.push(
        Sign::Create,
        BALANCER_KEY,
        format!(
            "{}network load balancer {name}: internet-facing, TCP 22, in {}{}",
            if replacing { "replace: " } else { "" },
            keys.join(", "),
            if spec.bastion.fixed_addresses {
                ", an Elastic IP in each"
            } else {
                ""
            }
        ),
        Action::CreateLoadBalancer {
            key: BALANCER_KEY.into(),
            name,
            subnets,
            security_group: BALANCER_SG_KEY.into(),
            tags: base_tags(spec, BALANCER_KEY),
        },
    );
}

/// The listener: TCP 22 to the target group, on the kept balancer; any other removed.
fn plan_listener(spec: &Spec, obs: &Observed, c: &mut Creates, p: &mut Planner) {
    let kept_lb = p.known.contains_key(BALANCER_KEY);
    let kept_tg = p.known.get(TARGET_GROUP_KEY).cloned();
    let mut listener_ok = false;
    for l in obs.listeners.iter().filter(|_| kept_lb) {
        let right = l.protocol == "TCP"
            && l.port == 22
            && kept_tg
                .as_ref()
                .is_some_and(|tg| l.forwards_to == [tg.clone()]);
        if right && !listener_ok {
            listener_ok = true;
            p.known.insert(LISTENER_KEY.into(), l.arn.clone());
        } else {
            p.doomed.listeners.push(l.clone());
        }
    }
    if !listener_ok {
        c.push(
            Sign::Create,
            LISTENER_KEY,
            format!("TCP 22 -> {TARGET_GROUP_KEY}"),
            Action::CreateListener {
                key: LISTENER_KEY.into(),
                balancer: BALANCER_KEY.into(),
                target_group: TARGET_GROUP_KEY.into(),
                tags: base_tags(spec, LISTENER_KEY),
            },
        );
    }
}

/// How many replicas the group keeps.
fn group_size(spec: &Spec) -> i32 {
    i32::try_from(spec.bastion.replicas).unwrap_or(i32::MAX)
}

/// The group's subnets by key: every public subnet.
fn group_subnets(spec: &Spec) -> Vec<String> {
    spec.public_subnets()
        .map(|s| format!("subnet/{}", s.name))
        .collect()
}

fn create_group(spec: &Spec, c: &mut Creates) {
    let name = group_name(&spec.stack);
    let size = group_size(spec);
    let subnets = group_subnets(spec);
    c.push(
        Sign::Create,
        GROUP_KEY,
        format!(
            "auto scaling group {name}: {size} replicas over {}, behind {TARGET_GROUP_KEY}",
            subnets.join(", ")
        ),
        Action::CreateAutoScalingGroup {
            key: GROUP_KEY.into(),
            name,
            template: TEMPLATE_KEY.into(),
            subnets,
            target_group: TARGET_GROUP_KEY.into(),
            size,
            tags: base_tags(spec, GROUP_KEY),
        },
    );
}

/// Replicas launched from an older template, to be replaced, new ones first (see
/// [`Action::RollReplicas`]); those already terminating are on their way out. Told by what EC2
/// says of each replica (its image, type and the digest of its user data, which the template
/// tags it with), not by the version the group reports for it, which moto does not keep.
fn outdated_replicas(
    obs: &Observed,
    g: &ObsAutoScalingGroup,
    launch: &LaunchSpec,
    new_version: bool,
    user_data_hash: Option<&str>,
) -> Vec<String> {
    g.members
        .iter()
        .filter(|m| !m.lifecycle.starts_with("Terminating"))
        .filter(|m| {
            new_version
                || obs.instances.iter().find(|i| i.id == m.id).is_none_or(|i| {
                    i.ami != launch.ami
                        || i.instance_type != launch.instance_type
                        || i.tags.get(TAG_USER_DATA).map(String::as_str) != user_data_hash
                })
        })
        .map(|m| m.id.clone())
        .collect()
}

/// The group's launch, subnets, termination policies, size and health check. `outdated`:
/// whether replicas are to be rolled.
fn update_group(
    spec: &Spec,
    c: &mut Creates,
    p: &Planner,
    g: &ObsAutoScalingGroup,
    new_version: bool,
    outdated: bool,
) {
    let size = group_size(spec);
    let subnets = group_subnets(spec);
    let mut reasons = Vec::new();
    let version = p.known.get(TEMPLATE_VERSION_KEY);
    if new_version
        || g.launch_template_id.as_ref() != p.known.get(TEMPLATE_KEY)
        || g.launch_template_version.as_ref() != version
    {
        reasons.push(format!(
            "launch {TEMPLATE_KEY} version {}",
            version.map_or("(new)", String::as_str)
        ));
    }
    let mut want_subnets: Vec<Option<&String>> = subnets.iter().map(|s| p.known.get(s)).collect();
    want_subnets.sort();
    let mut have_subnets: Vec<Option<&String>> = g.subnets.iter().map(Some).collect();
    have_subnets.sort();
    if want_subnets != have_subnets {
        reasons.push(format!("subnets {}", subnets.join(", ")));
    }
    if g.termination_policies != TERMINATION_POLICIES {
        reasons.push(format!(
            "termination policies {}",
            TERMINATION_POLICIES.join(", ")
        ));
    }
    // A roll under way holds more (its new replicas before the old go): the roll puts the
    // count back.
    let rolling = outdated && g.desired > size && g.desired <= 2 * size;
    if g.min != size || (g.desired != size && !rolling) || g.max != 2 * size {
        reasons.push(format!(
            "size {}/{}/{} -> {size}/{size}/{} (min/desired/max)",
            g.min,
            g.desired,
            g.max,
            2 * size
        ));
    }
    if g.health_check_type != "ELB" || g.health_check_grace != Some(HEALTH_CHECK_GRACE_SECS) {
        reasons.push("health check: the balancer's".into());
    }
    if !reasons.is_empty() {
        c.push(
            Sign::Change,
            GROUP_KEY,
            reasons.join("; "),
            Action::UpdateAutoScalingGroup {
                group: GROUP_KEY.into(),
                template: TEMPLATE_KEY.into(),
                subnets,
                size,
                keep_desired: rolling,
            },
        );
    }
}

/// The group registers its replicas in the stack's target group, and in no other.
fn plan_group_target_groups(c: &mut Creates, p: &Planner, g: &ObsAutoScalingGroup) {
    let tg = p.known.get(TARGET_GROUP_KEY);
    let stale: Vec<String> = g
        .target_groups
        .iter()
        .filter(|a| Some(*a) != tg)
        .cloned()
        .collect();
    if !stale.is_empty() {
        c.push(
            Sign::Change,
            GROUP_KEY,
            format!("detach {} other target group(s)", stale.len()),
            Action::DetachTargetGroups {
                group: GROUP_KEY.into(),
                arns: stale,
            },
        );
    }
    if tg.is_none_or(|a| !g.target_groups.contains(a)) {
        c.push(
            Sign::Change,
            GROUP_KEY,
            format!("register in {TARGET_GROUP_KEY}"),
            Action::AttachTargetGroup {
                group: GROUP_KEY.into(),
                target_group: TARGET_GROUP_KEY.into(),
            },
        );
    }
}

/// Replace the outdated replicas, after every creation.
fn roll_replicas(spec: &Spec, c: &mut Creates, g: &ObsAutoScalingGroup, outdated: Vec<String>) {
    if outdated.is_empty() {
        return;
    }
    c.later.push(Step {
        sign: Sign::Change,
        resource: GROUP_KEY.into(),
        detail: format!(
            "replace {} of {} replica(s), new ones first",
            outdated.len(),
            g.members.len()
        ),
        action: Action::RollReplicas {
            group: GROUP_KEY.into(),
            size: group_size(spec),
            outdated,
        },
    });
}

/// Attribute changes in words.
fn describe_attributes(attributes: &BTreeMap<String, String>) -> String {
    attributes
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Put back drifted tags of an ELB resource.
fn elb_retag(c: &mut Creates, key: &str, desired: &Tags, observed: &Tags) {
    c.retag_with(key, desired, observed, |tags| Action::TagElb {
        resource: key.into(),
        tags,
    });
}
