//! The firewall family: the stack's security groups (the bastion's, the private hosts', and a
//! scaled-out stack's balancer's) and their rules, compared in key terms.

use std::collections::BTreeMap;

use super::{base_tags, primary_by_key, Creates, Planner};
use crate::model::*;
use crate::names::{BALANCER_SG_KEY, DEFAULT_ROUTE};
use crate::spec::Spec;

/// The security groups and their rules. Every group comes before any rule: rules name other
/// groups (the replicas admit the balancer's group).
pub(super) fn plan_security_groups(spec: &Spec, obs: &Observed, c: &mut Creates, p: &mut Planner) {
    let sg_keys: &[&str] = if spec.bastion.scaled_out() {
        &[BALANCER_SG_KEY, "sg/bastion", "sg/private"]
    } else {
        &["sg/bastion", "sg/private"]
    };
    let (sgs, extra) = primary_by_key(&obs.security_groups, |g| (g.key.as_str(), g.id.as_str()));
    p.doomed.security_groups.extend(extra.into_iter().cloned());
    for (k, g) in &sgs {
        if sg_keys.contains(&k.as_str()) && p.known.contains_key("vpc") {
            p.known.insert(k.clone(), g.id.clone());
        } else {
            p.doomed.security_groups.push((*g).clone());
        }
    }
    let mut rule_steps = Vec::new();
    for &key in sg_keys {
        let (ingress, egress) = desired_rules(spec, key);
        match sgs.get(key).filter(|_| p.known.contains_key(key)) {
            None => {
                create_group(spec, c, key);
                rule_steps.extend(new_group_rules(key, ingress, egress));
            }
            Some(g) => {
                c.retag(key, &base_tags(spec, key), &g.tags);
                let mut rules = Creates {
                    steps: &mut rule_steps,
                    later: Vec::new(),
                };
                diff_rules(&mut rules, key, true, &ingress, &g.ingress, &p.known);
                diff_rules(&mut rules, key, false, &egress, &g.egress, &p.known);
            }
        }
    }
    c.steps.extend(rule_steps);
}

/// Desired rules of a security group: (ingress, egress).
fn desired_rules(spec: &Spec, key: &str) -> (Vec<Rule>, Vec<Rule>) {
    let all_out = vec![Rule {
        proto: "-1".into(),
        from: -1,
        to: -1,
        peer: Peer::Cidr(DEFAULT_ROUTE.into()),
    }];
    let from_balancer = |port: u16| Rule {
        proto: "tcp".into(),
        from: i32::from(port),
        to: i32::from(port),
        peer: Peer::GroupKey(BALANCER_SG_KEY.into()),
    };
    let ingress = if key == "sg/bastion" && spec.bastion.scaled_out() {
        vec![
            from_balancer(gatehouse_policy::SSH_PORT),
            from_balancer(crate::userdata::HEALTH_PORT),
        ]
    } else if key == "sg/bastion" || key == BALANCER_SG_KEY {
        spec.bastion
            .allowed_cidrs
            .iter()
            .map(|c| Rule {
                proto: "tcp".into(),
                from: 22,
                to: 22,
                peer: Peer::Cidr(c.to_string()),
            })
            .collect()
    } else {
        spec.private_ports
            .iter()
            .map(|p| Rule {
                proto: "tcp".into(),
                from: i32::from(*p),
                to: i32::from(*p),
                peer: Peer::GroupKey("sg/bastion".into()),
            })
            .collect()
    };
    (ingress, all_out)
}

/// What a group is for, in its AWS description.
fn group_description(spec: &Spec, key: &str) -> String {
    let stack = &spec.stack;
    if key == BALANCER_SG_KEY {
        format!("gatehouse {stack}: SSH to the load balancer from allowed_cidrs only")
    } else if key == "sg/bastion" && spec.bastion.scaled_out() {
        format!(
            "gatehouse {stack}: SSH and health checks to the replicas from the load balancer only"
        )
    } else if key == "sg/bastion" {
        format!("gatehouse {stack}: SSH to the bastion from allowed_cidrs only")
    } else {
        format!("gatehouse {stack}: private hosts, reachable from the bastion only")
    }
}

fn create_group(spec: &Spec, c: &mut Creates, key: &str) {
    let name = format!("{}-{}", spec.stack, key.trim_start_matches("sg/"));
    c.push(
        Sign::Create,
        key,
        format!("security group {name}"),
        Action::CreateSecurityGroup {
            key: key.into(),
            vpc: "vpc".into(),
            name,
            description: group_description(spec, key),
            tags: base_tags(spec, key),
        },
    );
}

/// The rules of a new group. It comes with an allow-all egress rule that AWS adds itself.
fn new_group_rules(key: &str, ingress: Vec<Rule>, egress: Vec<Rule>) -> Vec<Step> {
    let ingress = ingress.into_iter().map(|rule| (true, rule));
    let egress = egress
        .into_iter()
        .filter(|r| r.proto != "-1")
        .map(|rule| (false, rule));
    ingress
        .chain(egress)
        .map(|(ingress, rule)| Step {
            sign: Sign::Change,
            resource: key.into(),
            detail: format!(
                "+ {} {}",
                if ingress { "ingress" } else { "egress" },
                describe_rule(&rule)
            ),
            action: Action::Authorize {
                group: key.into(),
                ingress,
                rule,
            },
        })
        .collect()
}

/// The rules of a kept group: the missing authorized, the unwanted revoked.
fn diff_rules(
    c: &mut Creates<'_>,
    key: &str,
    ingress: bool,
    desired: &[Rule],
    observed: &[Rule],
    known: &BTreeMap<String, String>,
) {
    let dir = if ingress { "ingress" } else { "egress" };
    // Compare in key terms: a rule naming a kept group by id equals the one naming its key.
    let by_key = |r: &Rule| -> Rule {
        let mut r = r.clone();
        if let Peer::Group(id) = &r.peer {
            if let Some((k, _)) = known.iter().find(|(_, v)| *v == id) {
                r.peer = Peer::GroupKey(k.clone());
            }
        }
        r
    };
    let observed_keyed: Vec<Rule> = observed.iter().map(by_key).collect();
    for rule in desired {
        if !observed_keyed.contains(rule) {
            c.push(
                Sign::Change,
                key,
                format!("+ {dir} {}", describe_rule(rule)),
                Action::Authorize {
                    group: key.into(),
                    ingress,
                    rule: rule.clone(),
                },
            );
        }
    }
    for (rule, keyed) in observed.iter().zip(&observed_keyed) {
        if !desired.contains(keyed) {
            c.push(
                Sign::Change,
                key,
                format!("- {dir} {}", describe_rule(keyed)),
                Action::Revoke {
                    group: key.into(),
                    ingress,
                    rule: rule.clone(),
                },
            );
        }
    }
}

fn describe_rule(r: &Rule) -> String {
    let peer = match &r.peer {
        Peer::Cidr(c) | Peer::Cidr6(c) => c.clone(),
        Peer::Group(g) | Peer::GroupKey(g) | Peer::PrefixList(g) => g.clone(),
    };
    if r.proto == "-1" {
        format!("all traffic {peer}")
    } else if r.from == r.to {
        format!("{} {} {peer}", r.proto, r.from)
    } else {
        format!("{} {}-{} {peer}", r.proto, r.from, r.to)
    }
}
