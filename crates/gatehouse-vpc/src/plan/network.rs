//! The network family: the VPC (its default security group locked down), the subnets, the
//! internet gateway, the Elastic IPs, the NAT gateways and the route tables. Everything else
//! of the stack lives in it, so it is planned first.

use std::collections::{BTreeMap, BTreeSet};

use super::{base_tags, primary_by_key, tag_drift, Creates, PlanError, Planner};
use crate::model::*;
use crate::names::{nat_eip_key, nat_key, DEFAULT_ROUTE};
use crate::spec::{FoundNetwork, NatMode, Network, Spec, Tier};

/// The network's steps, in dependency order.
pub(super) fn plan_network(
    spec: &Spec,
    obs: &Observed,
    c: &mut Creates,
    p: &mut Planner,
) -> Result<(), PlanError> {
    match &spec.network {
        Network::Create => {
            plan_vpc(spec, obs, c, p)?;
            plan_subnets(spec, obs, c, p);
            plan_internet_gateway(spec, obs, c, p);
        }
        Network::Existing { found, .. } => {
            let found = found.as_ref().ok_or(PlanError::Unresolved)?;
            adopt_existing(found, obs, p);
            plan_subnets(spec, obs, c, p);
        }
    }
    plan_addresses(spec, obs, c, p);
    plan_nats(spec, obs, c, p);
    plan_route_tables(spec, obs, c, p);
    Ok(())
}

/// An existing VPC (`[vpc] id`): its id, its existing subnets' and its internet gateway's
/// become known keys, so what the stack creates can name them; none of them is changed. A
/// VPC or gateway of the stack's own (from when the spec described a new VPC) is removed.
fn adopt_existing(found: &FoundNetwork, obs: &Observed, p: &mut Planner) {
    p.doomed.vpcs.extend(obs.vpcs.iter().cloned());
    p.doomed.igws.extend(obs.igws.iter().cloned());
    p.known.insert("vpc".into(), found.vpc_id.clone());
    if let Some(igw) = &found.internet_gateway {
        p.known.insert("igw".into(), igw.clone());
    }
}

/// The VPC: kept if its CIDR is the spec's (a CIDR cannot change: the plan refuses).
fn plan_vpc(
    spec: &Spec,
    obs: &Observed,
    c: &mut Creates,
    p: &mut Planner,
) -> Result<(), PlanError> {
    let (vpcs, extra) = primary_by_key(&obs.vpcs, |v| (v.key.as_str(), v.id.as_str()));
    p.doomed.vpcs.extend(extra.into_iter().cloned());
    for (k, v) in &vpcs {
        if k != "vpc" {
            p.doomed.vpcs.push((*v).clone());
        }
    }
    let desired_cidr = spec.vpc_cidr.to_string();
    match vpcs.get("vpc").copied() {
        Some(v) if v.cidr != desired_cidr => Err(PlanError::Immutable {
            resource: format!("vpc ({})", v.id),
            message: format!(
                "cidr is {} but the spec says {desired_cidr}; a VPC's CIDR cannot change: destroy the stack first",
                v.cidr
            ),
        }),
        Some(v) => {
            p.known.insert("vpc".into(), v.id.clone());
            repair_vpc(spec, obs, c, v);
            Ok(())
        }
        None => {
            create_vpc(spec, c, desired_cidr);
            Ok(())
        }
    }
}

fn create_vpc(spec: &Spec, c: &mut Creates, cidr: String) {
    c.push(
        Sign::Create,
        "vpc",
        format!("cidr {cidr}, DNS hostnames on"),
        Action::CreateVpc {
            key: "vpc".into(),
            cidr,
            tags: base_tags(spec, "vpc"),
        },
    );
    c.push(
        Sign::Change,
        "vpc",
        "enable DNS hostnames",
        Action::EnableDns {
            vpc: "vpc".into(),
            hostnames: true,
            support: true,
        },
    );
    c.push(
        Sign::Change,
        "sg/default",
        "lock down: no rules",
        Action::LockDownDefaultSecurityGroup {
            vpc: "vpc".into(),
            tags: base_tags(spec, "sg/default"),
        },
    );
}

fn repair_vpc(spec: &Spec, obs: &Observed, c: &mut Creates, v: &ObsVpc) {
    if !v.dns_hostnames || !v.dns_support {
        c.push(
            Sign::Change,
            "vpc",
            "enable DNS hostnames and support",
            Action::EnableDns {
                vpc: "vpc".into(),
                hostnames: true,
                support: true,
            },
        );
    }
    c.retag("vpc", &base_tags(spec, "vpc"), &v.tags);
    // The default group comes with the VPC: it gets the stack's tags and no rules.
    let default_tags = base_tags(spec, "sg/default");
    let rules = obs
        .default_sg
        .as_ref()
        .map(|g| g.ingress.len() + g.egress.len())
        .unwrap_or(0);
    let drift = obs
        .default_sg
        .as_ref()
        .map(|g| !tag_drift(&default_tags, &g.tags).is_empty());
    if rules > 0 || drift != Some(false) {
        c.push(
            Sign::Change,
            "sg/default",
            format!("lock down: revoke {rules} rule(s)"),
            Action::LockDownDefaultSecurityGroup {
                vpc: "vpc".into(),
                tags: default_tags,
            },
        );
    }
}

/// The subnets: kept while their CIDR, zone and VPC are the spec's, replaced otherwise.
fn plan_subnets(spec: &Spec, obs: &Observed, c: &mut Creates, p: &mut Planner) {
    let (subnets, extra) = primary_by_key(&obs.subnets, |s| (s.key.as_str(), s.id.as_str()));
    p.doomed.subnets.extend(extra.into_iter().cloned());
    let desired_subnets: BTreeMap<String, &crate::spec::Subnet> = spec
        .subnets
        .iter()
        .map(|s| (format!("subnet/{}", s.name), s))
        .collect();
    for (k, s) in &subnets {
        let keep = desired_subnets.get(k).is_some_and(|d| {
            d.created()
                && d.cidr.to_string() == s.cidr
                && d.az == s.az
                && p.known.get("vpc") == Some(&s.vpc_id)
        });
        if keep {
            p.known.insert(k.clone(), s.id.clone());
        } else {
            p.doomed.subnets.push((*s).clone());
        }
    }
    for s in &spec.subnets {
        let key = format!("subnet/{}", s.name);
        if let Some(id) = &s.existing {
            p.known.insert(key, id.clone());
            continue;
        }
        let tags = base_tags(spec, &key);
        match p
            .known
            .get(&key)
            .and_then(|id| obs.subnets.iter().find(|o| &o.id == id))
        {
            Some(o) => c.retag(&key, &tags, &o.tags),
            None => create_subnet(c, s, key.clone(), tags, subnets.contains_key(&key)),
        }
    }
}

fn create_subnet(
    c: &mut Creates,
    s: &crate::spec::Subnet,
    key: String,
    tags: Tags,
    replacing: bool,
) {
    let tier = if s.tier == Tier::Public {
        "public"
    } else {
        "private"
    };
    c.push(
        Sign::Create,
        &key,
        format!(
            "{}{tier}, {} in {}",
            if replacing { "replace: " } else { "" },
            s.cidr,
            s.az
        ),
        Action::CreateSubnet {
            key: key.clone(),
            vpc: "vpc".into(),
            cidr: s.cidr.to_string(),
            az: s.az.clone(),
            tags,
        },
    );
}

/// The internet gateway, attached to the VPC.
fn plan_internet_gateway(spec: &Spec, obs: &Observed, c: &mut Creates, p: &mut Planner) {
    let (igws, extra) = primary_by_key(&obs.igws, |g| (g.key.as_str(), g.id.as_str()));
    p.doomed.igws.extend(extra.into_iter().cloned());
    for (k, g) in &igws {
        if k == "igw" {
            p.known.insert(k.clone(), g.id.clone());
        } else {
            p.doomed.igws.push((*g).clone());
        }
    }
    let attach = Action::AttachInternetGateway {
        igw: "igw".into(),
        vpc: "vpc".into(),
    };
    match igws.get("igw") {
        None => {
            c.push(
                Sign::Create,
                "igw",
                "internet gateway",
                Action::CreateInternetGateway {
                    key: "igw".into(),
                    tags: base_tags(spec, "igw"),
                },
            );
            c.push(Sign::Change, "igw", "attach to vpc", attach);
        }
        Some(g) => {
            let attached = p
                .known
                .get("vpc")
                .is_some_and(|v| g.attached_vpcs.contains(v));
            if !attached {
                c.push(Sign::Change, "igw", "attach to vpc", attach);
            }
            c.retag("igw", &base_tags(spec, "igw"), &g.tags);
        }
    }
}

/// The Elastic IPs the stack holds: one per NAT gateway, and the bastion's (or, scaled out,
/// the balancer's with `fixed_addresses`).
fn desired_eips(spec: &Spec) -> Vec<String> {
    let mut keys: Vec<String> = desired_nats(spec)
        .iter()
        .map(|(az, _)| nat_eip_key(az))
        .collect();
    if spec.bastion.scaled_out() {
        keys.extend(super::replicas::balancer_eip_keys(spec));
    } else {
        keys.push("eip/bastion".into());
    }
    keys
}

/// The Elastic IPs (their association is the bastion's and NAT gateways' business).
fn plan_addresses(spec: &Spec, obs: &Observed, c: &mut Creates, p: &mut Planner) {
    let eip_keys = desired_eips(spec);
    let (eips, extra) = primary_by_key(&obs.eips, |e| (e.key.as_str(), e.allocation_id.as_str()));
    p.doomed.eips.extend(extra.into_iter().cloned());
    for (k, e) in &eips {
        if eip_keys.contains(k) {
            p.known.insert(k.clone(), e.allocation_id.clone());
        } else {
            p.doomed.eips.push((*e).clone());
        }
    }
    for k in &eip_keys {
        match eips.get(k) {
            None => c.push(
                Sign::Create,
                k,
                "elastic IP",
                Action::AllocateAddress {
                    key: k.clone(),
                    tags: base_tags(spec, k),
                },
            ),
            Some(e) => c.retag(k, &base_tags(spec, k), &e.tags),
        }
    }
}

/// The NAT gateways the spec asks for: (AZ, key of the public subnet it lives in). They serve
/// the private subnets the stack creates (in an existing VPC, those only: the others are
/// routed by their owner).
fn desired_nats(spec: &Spec) -> Vec<(String, String)> {
    let created_private = || spec.private_subnets().filter(|s| s.created());
    match spec.nat {
        NatMode::None => vec![],
        NatMode::Single if !spec.builds_vpc() && created_private().next().is_none() => vec![],
        NatMode::Single => spec
            .public_subnets()
            .next()
            .map(|s| vec![(s.az.clone(), format!("subnet/{}", s.name))])
            .unwrap_or_default(),
        NatMode::PerAz => {
            let mut out: Vec<(String, String)> = Vec::new();
            for az in &spec.azs {
                let wants = created_private().any(|s| &s.az == az);
                let public = spec.public_subnets().find(|s| &s.az == az);
                if let (true, Some(p)) = (wants, public) {
                    out.push((az.clone(), format!("subnet/{}", p.name)));
                }
            }
            out
        }
    }
}

/// The NAT gateways: kept while in their subnet with their address, replaced otherwise.
fn plan_nats(spec: &Spec, obs: &Observed, c: &mut Creates, p: &mut Planner) {
    let (nats, extra) = primary_by_key(&obs.nats, |n| (n.key.as_str(), n.id.as_str()));
    p.doomed.nats.extend(extra.into_iter().cloned());
    // NAT key -> (subnet key, Elastic IP key).
    let wanted: BTreeMap<String, (String, String)> = desired_nats(spec)
        .iter()
        .map(|(az, subnet)| (nat_key(az), (subnet.clone(), nat_eip_key(az))))
        .collect();
    for (k, n) in &nats {
        let keep = wanted.get(k).is_some_and(|(subnet, eip)| {
            p.known.get(subnet) == Some(&n.subnet_id)
                && p.known.get(eip) == n.allocation_id.as_ref()
        });
        if keep {
            p.known.insert(k.clone(), n.id.clone());
        } else {
            p.doomed.nats.push((*n).clone());
        }
    }
    for (k, (subnet, eip)) in &wanted {
        match p
            .known
            .get(k)
            .and_then(|id| obs.nats.iter().find(|n| &n.id == id))
        {
            Some(n) => c.retag(k, &base_tags(spec, k), &n.tags),
            None => {
                let replacing = nats.contains_key(k);
                c.push(
                    Sign::Create,
                    k,
                    format!(
                        "{}NAT gateway in {subnet}",
                        if replacing { "replace: " } else { "" }
                    ),
                    Action::CreateNatGateway {
                        key: k.clone(),
                        subnet: subnet.clone(),
                        eip: eip.clone(),
                        tags: base_tags(spec, k),
                    },
                );
            }
        }
    }
}

/// A route table the spec asks for.
#[derive(Debug, Clone)]
struct DesiredTable {
    key: String,
    /// Destination -> key of the gateway.
    routes: BTreeMap<String, String>,
    subnets: Vec<String>,
}

/// The route tables of the subnets the stack creates: the public one through the internet
/// gateway; the private ones through the NAT gateway of their zone, the single one, or
/// nowhere. An existing subnet keeps its own table.
fn desired_tables(spec: &Spec) -> Vec<DesiredTable> {
    let public: Vec<String> = spec
        .public_subnets()
        .filter(|s| s.created())
        .map(|s| format!("subnet/{}", s.name))
        .collect();
    let mut tables = Vec::new();
    if spec.builds_vpc() || !public.is_empty() {
        tables.push(DesiredTable {
            key: "rt/public".into(),
            routes: BTreeMap::from([(DEFAULT_ROUTE.to_string(), "igw".to_string())]),
            subnets: public,
        });
    }
    let private: Vec<_> = spec.private_subnets().filter(|s| s.created()).collect();
    match spec.nat {
        NatMode::None | NatMode::Single if !private.is_empty() => {
            let nat = desired_nats(spec).into_iter().next();
            tables.push(DesiredTable {
                key: "rt/private".into(),
                routes: nat
                    .map(|(az, _)| BTreeMap::from([(DEFAULT_ROUTE.to_string(), nat_key(&az))]))
                    .unwrap_or_default(),
                subnets: private
                    .iter()
                    .map(|s| format!("subnet/{}", s.name))
                    .collect(),
            });
        }
        NatMode::PerAz => {
            for az in &spec.azs {
                let subnets: Vec<String> = private
                    .iter()
                    .filter(|s| &s.az == az)
                    .map(|s| format!("subnet/{}", s.name))
                    .collect();
                if subnets.is_empty() {
                    continue;
                }
                tables.push(DesiredTable {
                    key: format!("rt/private-{az}"),
                    routes: BTreeMap::from([(DEFAULT_ROUTE.to_string(), nat_key(az))]),
                    subnets,
                });
            }
        }
        _ => {}
    }
    tables
}

/// The route tables, their routes and their subnets. A subnet is moved between tables in one
/// call; a kept subnet no table wants is disassociated, a doomed one's association goes with
/// the removals.
fn plan_route_tables(spec: &Spec, obs: &Observed, c: &mut Creates, p: &mut Planner) {
    let tables = desired_tables(spec);
    let (rts, extra) = primary_by_key(&obs.route_tables, |r| (r.key.as_str(), r.id.as_str()));
    p.doomed.route_tables.extend(extra.into_iter().cloned());
    for (k, r) in &rts {
        if tables.iter().any(|t| &t.key == k) {
            p.known.insert(k.clone(), r.id.clone());
        } else {
            p.doomed.route_tables.push((*r).clone());
        }
    }
    let current = current_associations(&rts, obs, p);
    let mut claimed: BTreeSet<String> = BTreeSet::new();
    for t in &tables {
        let observed = rts
            .get(&t.key)
            .copied()
            .filter(|_| p.known.contains_key(&t.key));
        match observed {
            None => c.push(
                Sign::Create,
                &t.key,
                "route table",
                Action::CreateRouteTable {
                    key: t.key.clone(),
                    vpc: "vpc".into(),
                    tags: base_tags(spec, &t.key),
                },
            ),
            Some(r) => c.retag(&t.key, &base_tags(spec, &t.key), &r.tags),
        }
        plan_routes(c, p, t, observed);
        plan_associations(c, p, t, &current, &mut claimed);
    }
    disassociate_unclaimed(c, p, &current, &claimed);
}

/// Where each of the stack's subnets is associated now: subnet id -> (association id, table
/// key). A table that is not the stack's (another tool moved the subnet there) is named by its
/// id: the subnet is moved back, and nothing else of that table is touched.
fn current_associations(
    rts: &BTreeMap<String, &ObsRouteTable>,
    obs: &Observed,
    p: &Planner,
) -> BTreeMap<String, (String, String)> {
    let mut current = BTreeMap::new();
    for (table, a) in &obs.foreign_associations {
        current.insert(a.subnet_id.clone(), (a.id.clone(), table.clone()));
    }
    for (k, r) in rts {
        if p.known.contains_key(k) {
            for a in &r.associations {
                current.insert(a.subnet_id.clone(), (a.id.clone(), k.clone()));
            }
        }
    }
    current
}

/// A table's routes: the missing added, the wrong replaced, the unwanted deleted.
fn plan_routes(c: &mut Creates, p: &Planner, t: &DesiredTable, observed: Option<&ObsRouteTable>) {
    for (dest, target) in &t.routes {
        let seen = observed.and_then(|r| r.routes.iter().find(|x| &x.dest == dest));
        match seen {
            None => c.push(
                Sign::Change,
                &t.key,
                format!("+ route {dest} -> {target}"),
                Action::CreateRoute {
                    table: t.key.clone(),
                    dest: dest.clone(),
                    target: target.clone(),
                },
            ),
            Some(route) => {
                let now = match &route.target {
                    RouteTarget::Gateway(id) | RouteTarget::Nat(id) => p.key_of(id),
                    RouteTarget::Other(_) => None,
                };
                if now != Some(target.as_str()) {
                    c.push(
                        Sign::Change,
                        &t.key,
                        format!(
                            "route {dest}: {} -> {target}",
                            describe_target(&route.target)
                        ),
                        Action::ReplaceRoute {
                            table: t.key.clone(),
                            dest: dest.clone(),
                            target: target.clone(),
                        },
                    );
                }
            }
        }
    }
    let unwanted = observed
        .iter()
        .flat_map(|r| &r.routes)
        .filter(|route| !t.routes.contains_key(&route.dest));
    for route in unwanted {
        c.push(
            Sign::Change,
            &t.key,
            format!(
                "- route {} -> {}",
                route.dest,
                describe_target(&route.target)
            ),
            Action::DeleteRoute {
                table: t.key.clone(),
                dest: route.dest.clone(),
            },
        );
    }
}

/// A table's subnets: associated, or moved here from another table. The subnets the table
/// claims are added to `claimed`.
fn plan_associations(
    c: &mut Creates,
    p: &Planner,
    t: &DesiredTable,
    current: &BTreeMap<String, (String, String)>,
    claimed: &mut BTreeSet<String>,
) {
    for subnet in &t.subnets {
        let subnet_id = p.known.get(subnet).cloned();
        let now = subnet_id.as_ref().and_then(|id| current.get(id)).cloned();
        if let Some(id) = &subnet_id {
            claimed.insert(id.clone());
        }
        match now {
            Some((_, table)) if table == t.key => {}
            Some((assoc, table)) => c.push(
                Sign::Change,
                &t.key,
                format!("move {subnet} here from {table}"),
                Action::ReplaceAssociation {
                    association_id: assoc,
                    table: t.key.clone(),
                },
            ),
            None => c.push(
                Sign::Change,
                &t.key,
                format!("associate {subnet}"),
                Action::Associate {
                    table: t.key.clone(),
                    subnet: subnet.clone(),
                },
            ),
        }
    }
}

/// Associations no table claims: a doomed subnet's goes with the removals, any other is
/// disassociated here.
fn disassociate_unclaimed(
    c: &mut Creates,
    p: &mut Planner,
    current: &BTreeMap<String, (String, String)>,
    claimed: &BTreeSet<String>,
) {
    let doomed_subnet_ids: BTreeSet<&str> =
        p.doomed.subnets.iter().map(|s| s.id.as_str()).collect();
    for (subnet_id, (assoc, table)) in current {
        // A table that is not the stack's keeps its associations (the subnet goes with the
        // removals, and its association with it).
        if claimed.contains(subnet_id) || !table.starts_with("rt/") {
            continue;
        }
        if doomed_subnet_ids.contains(subnet_id.as_str()) {
            p.doomed_associations.push(assoc.clone());
        } else {
            c.push(
                Sign::Change,
                table,
                format!("disassociate {subnet_id}"),
                Action::Disassociate {
                    association_id: assoc.clone(),
                },
            );
        }
    }
}

fn describe_target(t: &RouteTarget) -> String {
    match t {
        RouteTarget::Gateway(id) | RouteTarget::Nat(id) | RouteTarget::Other(id) => id.clone(),
    }
}
