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

use super::{base_tags, primary_by_key, role_name, tag_drift, Creates, Planner};
use crate::model::*;
use crate::spec::Spec;
use crate::userdata::{HEALTH_PATH, HEALTH_PORT};

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

/// The replicas' steps. `user_data_hash`: of the user data the spec's bastions get (None
/// while the VPC does not exist yet).
pub(super) fn plan_replicas(
    spec: &Spec,
    obs: &Observed,
    c: &mut Creates,
    p: &mut Planner,
    user_data_hash: Option<&str>,
) {
    let stack = &spec.stack;
    if !spec.bastion.scaled_out() {
        p.doomed.group = obs.group.clone();
        p.doomed.listeners = obs.listeners.clone();
        p.doomed.balancer = obs.balancer.clone();
        p.doomed.target_group = obs.target_group.clone();
        p.doomed.launch_templates = obs.launch_templates.clone();
        return;
    }
    let vpc = p.known.get("vpc").cloned();
    let launch = replica_launch(spec);
    let instance_tags = base_tags(spec, REPLICA_KEY);

    // ---- launch template ----
    let (templates, extra) =
        primary_by_key(&obs.launch_templates, |t| (t.key.as_str(), t.id.as_str()));
    p.doomed.launch_templates.extend(extra.into_iter().cloned());
    for (k, t) in &templates {
        if k != TEMPLATE_KEY {
            p.doomed.launch_templates.push((*t).clone());
        }
    }
    let mut new_version = false;
    match templates.get(TEMPLATE_KEY) {
        None => {
            new_version = true;
            c.push(
                Sign::Create,
                TEMPLATE_KEY,
                format!(
                    "launch template {}: {} {}, IMDSv2",
                    group_name(stack),
                    launch.instance_type,
                    launch.ami
                ),
                Action::CreateLaunchTemplate {
                    key: TEMPLATE_KEY.into(),
                    name: group_name(stack),
                    launch: launch.clone(),
                    tags: base_tags(spec, TEMPLATE_KEY),
                    instance_tags: instance_tags.clone(),
                },
            );
        }
        Some(t) => {
            p.known.insert(TEMPLATE_KEY.into(), t.id.clone());
            c.retag(TEMPLATE_KEY, &base_tags(spec, TEMPLATE_KEY), &t.tags);
            let reasons = template_mismatch(t, &launch, &p.known, user_data_hash);
            if reasons.is_empty() {
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
            } else {
                new_version = true;
                c.push(
                    Sign::Change,
                    TEMPLATE_KEY,
                    format!("version {}: {}", t.latest_version + 1, reasons.join("; ")),
                    Action::CreateLaunchTemplateVersion {
                        template: TEMPLATE_KEY.into(),
                        launch: launch.clone(),
                        instance_tags: instance_tags.clone(),
                    },
                );
            }
        }
    }

    // ---- target group ----
    let tg_name = target_group_name(stack);
    let attributes = target_group_attributes(spec);
    let tg = obs.target_group.as_ref().filter(|g| {
        let keep = g.protocol == "TCP" && g.port == 22 && vpc.as_ref() == Some(&g.vpc_id);
        if !keep {
            p.doomed.target_group = Some((*g).clone());
        }
        keep
    });
    match tg {
        None => {
            c.push(
                Sign::Create,
                TARGET_GROUP_KEY,
                format!(
                    "target group {tg_name}: TCP 22, health check HTTP {HEALTH_PORT}{HEALTH_PATH}"
                ),
                Action::CreateTargetGroup {
                    key: TARGET_GROUP_KEY.into(),
                    name: tg_name.clone(),
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
                    attributes: attributes.clone(),
                },
            );
        }
        Some(g) => {
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
                .iter()
                .filter(|(k, v)| g.attributes.get(*k) != Some(v))
                .map(|(k, v)| (k.clone(), v.clone()))
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
    }

    // ---- balancer ----
    let lb_name = balancer_name(stack);
    let subnets: Vec<(String, Option<String>)> = balancer_subnets(spec)
        .iter()
        .map(|s| {
            (
                format!("subnet/{}", s.name),
                spec.bastion
                    .fixed_addresses
                    .then(|| balancer_eip_key(&s.az)),
            )
        })
        .collect();
    let lb_attributes = balancer_attributes();
    let lb = obs.balancer.as_ref().filter(|b| {
        let mut want: Vec<(Option<&String>, Option<&String>)> = subnets
            .iter()
            .map(|(s, e)| (p.known.get(s), e.as_ref().and_then(|e| p.known.get(e))))
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
        let sg = p.known.get(BALANCER_SG_KEY);
        let keep = b.kind == "network"
            && b.scheme == "internet-facing"
            && b.state != "failed"
            && vpc.as_ref() == Some(&b.vpc_id)
            && want == have
            && sg.is_some()
            && b.security_groups.len() == 1
            && b.security_groups.first() == sg;
        if !keep {
            p.doomed.balancer = Some((*b).clone());
            p.doomed.listeners = obs.listeners.clone();
        }
        keep
    });
    let replacing = obs.balancer.is_some() && lb.is_none();
    match lb {
        None => {
            c.push(
                Sign::Create,
                BALANCER_KEY,
                format!(
                    "{}network load balancer {lb_name}: internet-facing, TCP 22, in {}{}",
                    if replacing { "replace: " } else { "" },
                    subnets
                        .iter()
                        .map(|(s, _)| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if spec.bastion.fixed_addresses {
                        ", an Elastic IP in each"
                    } else {
                        ""
                    }
                ),
                Action::CreateLoadBalancer {
                    key: BALANCER_KEY.into(),
                    name: lb_name.clone(),
                    subnets: subnets.clone(),
                    security_group: BALANCER_SG_KEY.into(),
                    tags: base_tags(spec, BALANCER_KEY),
                },
            );
        }
        Some(b) => {
            p.known.insert(BALANCER_KEY.into(), b.arn.clone());
            elb_retag(c, BALANCER_KEY, &base_tags(spec, BALANCER_KEY), &b.tags);
        }
    }
    // A new balancer, or one whose attributes drifted.
    if lb.is_none_or(|b| !b.cross_zone) {
        c.push(
            Sign::Change,
            BALANCER_KEY,
            describe_attributes(&lb_attributes),
            Action::SetLoadBalancerAttributes {
                balancer: BALANCER_KEY.into(),
                attributes: lb_attributes,
            },
        );
    }

    // ---- listener ----
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

    // ---- group ----
    let size = i32::try_from(spec.bastion.replicas).unwrap_or(i32::MAX);
    let group_subnets: Vec<String> = spec
        .public_subnets()
        .map(|s| format!("subnet/{}", s.name))
        .collect();
    let name = group_name(stack);
    let group = obs.group.as_ref().filter(|g| !g.deleting);
    match group {
        None => {
            c.push(
                Sign::Create,
                GROUP_KEY,
                format!(
                    "auto scaling group {name}: {size} replicas over {}, behind {TARGET_GROUP_KEY}",
                    group_subnets.join(", ")
                ),
                Action::CreateAutoScalingGroup {
                    key: GROUP_KEY.into(),
                    name,
                    template: TEMPLATE_KEY.into(),
                    subnets: group_subnets,
                    target_group: TARGET_GROUP_KEY.into(),
                    size,
                    tags: base_tags(spec, GROUP_KEY),
                },
            );
        }
        Some(g) => {
            p.known.insert(GROUP_KEY.into(), g.name.clone());
            let tags = base_tags(spec, GROUP_KEY);
            let drift = tag_drift(&tags, &g.tags);
            if !drift.is_empty() {
                let names: Vec<&str> = drift.keys().map(String::as_str).collect();
                c.push(
                    Sign::Change,
                    GROUP_KEY,
                    format!("tags {}", names.join(", ")),
                    Action::TagAutoScalingGroup {
                        group: GROUP_KEY.into(),
                        tags: drift,
                    },
                );
            }
            let mut want_subnets: Vec<Option<&String>> =
                group_subnets.iter().map(|s| p.known.get(s)).collect();
            want_subnets.sort();
            let mut have_subnets: Vec<Option<&String>> = g.subnets.iter().map(Some).collect();
            have_subnets.sort();
            let version = p.known.get(TEMPLATE_VERSION_KEY);
            // Replicas launched from an older template are replaced, new ones first (see
            // [`Action::RollReplicas`]); those already terminating are on their way out.
            // Told by what EC2 says of each replica (its image, type and the digest of its
            // user data, which the template tags it with), not by the version the group
            // reports for it, which moto does not keep.
            let outdated: Vec<String> = g
                .members
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
                .collect();
            let mut reasons = Vec::new();
            if new_version
                || g.launch_template_id.as_ref() != p.known.get(TEMPLATE_KEY)
                || g.launch_template_version.as_ref() != version
            {
                reasons.push(format!(
                    "launch {TEMPLATE_KEY} version {}",
                    version.map_or("(new)", String::as_str)
                ));
            }
            if want_subnets != have_subnets {
                reasons.push(format!("subnets {}", group_subnets.join(", ")));
            }
            if g.termination_policies != TERMINATION_POLICIES {
                reasons.push(format!(
                    "termination policies {}",
                    TERMINATION_POLICIES.join(", ")
                ));
            }
            // A roll under way holds more (its new replicas before the old go): the roll
            // below puts the count back.
            let rolling = !outdated.is_empty() && g.desired > size && g.desired <= 2 * size;
            if g.min != size || (g.desired != size && !rolling) || g.max != 2 * size {
                reasons.push(format!(
                    "size {}/{}/{} -> {size}/{size}/{} (min/desired/max)",
                    g.min,
                    g.desired,
                    g.max,
                    2 * size
                ));
            }
            if g.health_check_type != "ELB" || g.health_check_grace != Some(HEALTH_CHECK_GRACE_SECS)
            {
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
                        subnets: group_subnets,
                        size,
                        keep_desired: rolling,
                    },
                );
            }
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
            if !outdated.is_empty() {
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
                        size,
                        outdated,
                    },
                });
            }
        }
    }
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
    let drift = tag_drift(desired, observed);
    if !drift.is_empty() {
        let names: Vec<&str> = drift.keys().map(String::as_str).collect();
        c.push(
            Sign::Change,
            key,
            format!("tags {}", names.join(", ")),
            Action::TagElb {
                resource: key.into(),
                tags: drift,
            },
        );
    }
}
