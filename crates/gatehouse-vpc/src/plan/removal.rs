//! Removal: the steps that delete what is doomed, in reverse dependency order, family by
//! family. Both `apply` (what the spec no longer asks for, before anything is created) and
//! `destroy` (everything of the stack) use it.

use std::collections::BTreeSet;

use crate::model::*;

/// Removal steps for the given resources, in reverse dependency order.
/// `extra_associations`: route table associations of doomed subnets in kept tables.
/// `kept_groups`: security groups that stay, whose rules naming a doomed group go first.
pub(super) fn removal_steps(
    doomed: &Observed,
    extra_associations: &[String],
    kept_groups: &[ObsSecurityGroup],
) -> Vec<Step> {
    // The alarms first: none goes off over what is being removed, nor sends to a topic
    // about to go.
    let mut r = Removals(super::alarms::removal_steps(doomed));
    remove_replicas(&mut r, doomed);
    remove_instances(&mut r, doomed);
    remove_routing(&mut r, doomed, extra_associations);
    remove_security_groups(&mut r, doomed, kept_groups);
    remove_vpc(&mut r, doomed);
    remove_identity(&mut r, doomed);
    remove_storage(&mut r, doomed);
    remove_events(&mut r, doomed);
    // Last, and only when asked (`destroy --delete-audit-log`): the audit trail.
    remove_audit_log(&mut r, doomed);
    r.0
}

/// The collector of removal steps.
struct Removals(Vec<Step>);

impl Removals {
    fn push(&mut self, resource: String, detail: &str, action: Action) {
        self.0.push(Step {
            sign: Sign::Delete,
            resource,
            detail: detail.to_string(),
            action,
        });
    }
}

/// The replicas first (the group takes its instances along), then what sends them traffic:
/// the listeners, the balancer (its addresses free after it), its target group; then the
/// launch templates.
fn remove_replicas(r: &mut Removals, doomed: &Observed) {
    if let Some(g) = &doomed.group {
        r.push(
            format!("{} ({})", g.key, g.name),
            &format!("auto scaling group and its {} replica(s)", g.members.len()),
            Action::DeleteAutoScalingGroup {
                name: g.name.clone(),
            },
        );
    }
    for l in &doomed.listeners {
        r.push(
            format!("listener {}:{}", l.protocol, l.port),
            "",
            Action::DeleteListener { arn: l.arn.clone() },
        );
    }
    if let Some(b) = &doomed.balancer {
        r.push(
            format!("{} ({})", b.key, b.name),
            "network load balancer",
            Action::DeleteLoadBalancer { arn: b.arn.clone() },
        );
    }
    if let Some(t) = &doomed.target_group {
        r.push(
            format!("{} ({})", t.key, t.name),
            "target group",
            Action::DeleteTargetGroup { arn: t.arn.clone() },
        );
    }
    for t in &doomed.launch_templates {
        r.push(
            format!("{} ({})", t.key, t.id),
            "launch template",
            Action::DeleteLaunchTemplate { id: t.id.clone() },
        );
    }
}

fn remove_instances(r: &mut Removals, doomed: &Observed) {
    for i in &doomed.instances {
        r.push(
            format!("{} ({})", i.key, i.id),
            "terminate instance",
            Action::TerminateInstance { id: i.id.clone() },
        );
    }
}

/// NAT gateways, their addresses, route tables and subnets: everything in the VPC but the
/// security groups.
fn remove_routing(r: &mut Removals, doomed: &Observed, extra_associations: &[String]) {
    for n in &doomed.nats {
        r.push(
            format!("{} ({})", n.key, n.id),
            "NAT gateway",
            Action::DeleteNatGateway { id: n.id.clone() },
        );
    }
    for e in &doomed.eips {
        r.push(
            format!("{} ({})", e.key, e.public_ip),
            "release elastic IP",
            Action::ReleaseAddress {
                allocation_id: e.allocation_id.clone(),
                // The balancer's addresses are associated with its own network interfaces,
                // which its deletion (earlier in the plan) frees; nobody else may detach them.
                association_id: e
                    .association_id
                    .clone()
                    .filter(|_| !e.key.starts_with("eip/nlb/")),
            },
        );
    }
    for a in extra_associations {
        r.push(
            a.clone(),
            "route table association",
            Action::Disassociate {
                association_id: a.clone(),
            },
        );
    }
    for t in &doomed.route_tables {
        r.push(
            format!("{} ({})", t.key, t.id),
            "route table",
            Action::DeleteRouteTable {
                id: t.id.clone(),
                association_ids: t.associations.iter().map(|a| a.id.clone()).collect(),
            },
        );
    }
    for s in &doomed.subnets {
        r.push(
            format!("{} ({})", s.key, s.id),
            &format!("subnet {}", s.cidr),
            Action::DeleteSubnet { id: s.id.clone() },
        );
    }
}

/// A group cannot go while a rule names it: the kept groups' rules naming a doomed one go
/// first, then the doomed groups' own rules naming groups, then the groups.
fn remove_security_groups(r: &mut Removals, doomed: &Observed, kept_groups: &[ObsSecurityGroup]) {
    let doomed_ids: BTreeSet<&str> = doomed
        .security_groups
        .iter()
        .map(|g| g.id.as_str())
        .collect();
    for g in kept_groups {
        let refs = rules_naming(g, |id| doomed_ids.contains(id));
        if !refs.is_empty() {
            r.push(
                format!("{} ({})", g.key, g.id),
                "revoke rules naming a group being deleted",
                Action::RevokeIngressById {
                    group_id: g.id.clone(),
                    rules: refs,
                },
            );
        }
    }
    for g in &doomed.security_groups {
        let refs = rules_naming(g, |_| true);
        if !refs.is_empty() {
            r.push(
                format!("{} ({})", g.key, g.id),
                "revoke rules naming other groups",
                Action::RevokeIngressById {
                    group_id: g.id.clone(),
                    rules: refs,
                },
            );
        }
    }
    for g in &doomed.security_groups {
        r.push(
            format!("{} ({})", g.key, g.id),
            "security group",
            Action::DeleteSecurityGroup { id: g.id.clone() },
        );
    }
}

/// The ingress rules of `g` that name a group `which` picks (by id).
fn rules_naming(g: &ObsSecurityGroup, which: impl Fn(&str) -> bool) -> Vec<Rule> {
    g.ingress
        .iter()
        .filter(|r| matches!(&r.peer, Peer::Group(id) if which(id)))
        .cloned()
        .collect()
}

/// The internet gateway (detached first), then the VPC itself.
fn remove_vpc(r: &mut Removals, doomed: &Observed) {
    for g in &doomed.igws {
        r.push(
            format!("{} ({})", g.key, g.id),
            "internet gateway",
            Action::DeleteInternetGateway {
                id: g.id.clone(),
                attached_vpcs: g.attached_vpcs.clone(),
            },
        );
    }
    for v in &doomed.vpcs {
        r.push(
            format!("{} ({})", v.key, v.id),
            &format!("vpc {}", v.cidr),
            Action::DeleteVpc { id: v.id.clone() },
        );
    }
}

/// The instance profile (its role removed from it first), then the role.
fn remove_identity(r: &mut Removals, doomed: &Observed) {
    if let Some(p) = &doomed.profile {
        r.push(
            format!("instance profile {}", p.name),
            "",
            Action::DeleteInstanceProfile {
                name: p.name.clone(),
                roles: p.roles.clone(),
            },
        );
    }
    if let Some(role) = &doomed.role {
        r.push(
            format!("iam role {}", role.name),
            "",
            Action::DeleteRole {
                name: role.name.clone(),
                has_policy: role.policy.is_some(),
            },
        );
    }
}

/// The bucket with its objects, and the host key parameter.
fn remove_storage(r: &mut Removals, doomed: &Observed) {
    if let Some(b) = &doomed.bucket {
        r.push(
            format!("bucket {}", b.name),
            &format!("and its {} object(s)", b.objects.len()),
            Action::DeleteBucket {
                name: b.name.clone(),
            },
        );
    }
    for prm in &doomed.parameters {
        r.push(
            format!("ssm parameter {}", prm.name),
            "",
            Action::DeleteParameter {
                name: prm.name.clone(),
            },
        );
    }
}

/// The rule first: no more messages for a queue about to go.
fn remove_events(r: &mut Removals, doomed: &Observed) {
    if let Some(rule) = &doomed.rule {
        r.push(
            format!("events rule {}", rule.name),
            &format!("and its {} target(s)", rule.targets.len()),
            Action::DeleteEventRule {
                name: rule.name.clone(),
                target_ids: rule.targets.iter().map(|t| t.id.clone()).collect(),
            },
        );
    }
    if let Some(q) = &doomed.queue {
        r.push(
            format!("sqs queue {}", q.name),
            "",
            Action::DeleteEventQueue { url: q.url.clone() },
        );
    }
}

fn remove_audit_log(r: &mut Removals, doomed: &Observed) {
    if let Some(g) = &doomed.log_group {
        r.push(
            format!("log group {}", g.name),
            "the audit trail, with every line in it",
            Action::DeleteAuditLogGroup {
                name: g.name.clone(),
            },
        );
    }
}
