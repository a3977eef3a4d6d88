//! Read what AWS reports for a stack into plain data. Every EC2 describe call filters on the
//! stack tag, and the planner checks the tag again on each item (see `plan::only_ours`).

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, IpPermission, VpcAttributeName};

use super::{fail, Clients, Error};
use crate::deploy;
use crate::model::*;
use crate::names::{
    audit_log_group, audit_log_group_arn, binary_bucket, event_queue_name, event_rule_name,
    key_parameters, partition, role_name, POLICY_NAME,
};
use gatehouse_aws::events::IAM_EVENTS_REGION;

fn tag_filter(stack: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{TAG_STACK}"))
        .values(stack)
        .build()
}

fn ec2_tags(tags: &[aws_sdk_ec2::types::Tag]) -> Tags {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

fn key_of(tags: &Tags) -> String {
    tags.get(TAG_RESOURCE).cloned().unwrap_or_default()
}

/// Flatten AWS's grouped permissions into one [`Rule`] per peer.
pub fn flatten_rules(perms: &[IpPermission]) -> Vec<Rule> {
    let mut out = Vec::new();
    for p in perms {
        let proto = match p.ip_protocol().unwrap_or("-1") {
            "6" => "tcp",
            "17" => "udp",
            "1" => "icmp",
            other => other,
        }
        .to_string();
        let (from, to) = if proto == "-1" {
            (-1, -1)
        } else {
            (p.from_port().unwrap_or(-1), p.to_port().unwrap_or(-1))
        };
        let rule = |peer| Rule {
            proto: proto.clone(),
            from,
            to,
            peer,
        };
        for r in p.ip_ranges() {
            if let Some(c) = r.cidr_ip() {
                out.push(rule(Peer::Cidr(c.to_string())));
            }
        }
        for r in p.ipv6_ranges() {
            if let Some(c) = r.cidr_ipv6() {
                out.push(rule(Peer::Cidr6(c.to_string())));
            }
        }
        for g in p.user_id_group_pairs() {
            if let Some(id) = g.group_id() {
                out.push(rule(Peer::Group(id.to_string())));
            }
        }
        for pl in p.prefix_list_ids() {
            if let Some(id) = pl.prefix_list_id() {
                out.push(rule(Peer::PrefixList(id.to_string())));
            }
        }
    }
    out.sort();
    out
}

fn security_group(g: &aws_sdk_ec2::types::SecurityGroup) -> ObsSecurityGroup {
    let tags = ec2_tags(g.tags());
    ObsSecurityGroup {
        id: g.group_id().unwrap_or_default().to_string(),
        key: key_of(&tags),
        name: g.group_name().unwrap_or_default().to_string(),
        ingress: flatten_rules(g.ip_permissions()),
        egress: flatten_rules(g.ip_permissions_egress()),
        tags,
    }
}

/// Everything of stack `stack` that AWS reports.
pub async fn observe(c: &Clients, stack: &str) -> Result<Observed, Error> {
    let mut obs = Observed::default();
    observe_vpcs(c, stack, &mut obs).await?;
    observe_default_security_group(c, stack, &mut obs).await?;
    observe_subnets(c, stack, &mut obs).await?;
    observe_internet_gateways(c, stack, &mut obs).await?;
    observe_addresses(c, stack, &mut obs).await?;
    observe_nats(c, stack, &mut obs).await?;
    observe_route_tables(c, stack, &mut obs).await?;
    observe_foreign_associations(c, &mut obs).await?;
    observe_security_groups(c, stack, &mut obs).await?;
    observe_instances(c, stack, &mut obs).await?;
    observe_iam(c, stack, &mut obs).await?;
    observe_ssm(c, stack, &mut obs).await?;
    observe_s3(c, stack, &mut obs).await?;
    observe_log_group(c, stack, &mut obs).await?;
    super::alarms::observe(c, stack, &mut obs).await?;
    super::replicas::observe(c, stack, &mut obs).await?;
    // The event queue and rule live in us-east-1; a stack of another partition (China,
    // GovCloud) cannot have them (the spec refuses `iam_events` there) and cannot reach it.
    if partition(&c.region) == partition(IAM_EVENTS_REGION) {
        observe_queue(c, stack, &mut obs).await?;
        observe_rule(c, stack, &mut obs).await?;
    }
    Ok(obs)
}

/// [`observe`], and what planning `spec` needs beyond the stack: with `[bastion] iam_events`,
/// the CloudTrail trails that could deliver IAM's events (`plan` and `apply`).
pub async fn observe_for(c: &Clients, spec: &crate::spec::Spec) -> Result<Observed, Error> {
    let mut obs = observe(c, &spec.stack).await?;
    if spec.bastion.iam_events {
        obs.trails = Some(observe_trails(c).await?);
    }
    Ok(obs)
}

/// The resource a failed describe call was about.
fn of_stack(what: &str, stack: &str) -> String {
    format!("{what} of stack {stack}")
}

/// The stack's VPCs, with their DNS attributes.
async fn observe_vpcs(c: &Clients, stack: &str, obs: &mut Observed) -> Result<(), Error> {
    let pages = c
        .ec2
        .describe_vpcs()
        .filters(tag_filter(stack))
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| fail(of_stack("vpcs", stack), &deploy::DESCRIBE_VPCS, e))?;
    for v in pages.iter().flat_map(|p| p.vpcs()) {
        let tags = ec2_tags(v.tags());
        let id = v.vpc_id().unwrap_or_default().to_string();
        let hostnames = vpc_attribute(c, &id, VpcAttributeName::EnableDnsHostnames)
            .await?
            .enable_dns_hostnames()
            .and_then(|a| a.value())
            .unwrap_or(false);
        let support = vpc_attribute(c, &id, VpcAttributeName::EnableDnsSupport)
            .await?
            .enable_dns_support()
            .and_then(|a| a.value())
            .unwrap_or(false);
        obs.vpcs.push(ObsVpc {
            key: key_of(&tags),
            cidr: v.cidr_block().unwrap_or_default().to_string(),
            dns_hostnames: hostnames,
            dns_support: support,
            id,
            tags,
        });
    }
    Ok(())
}

async fn vpc_attribute(
    c: &Clients,
    id: &str,
    name: VpcAttributeName,
) -> Result<aws_sdk_ec2::operation::describe_vpc_attribute::DescribeVpcAttributeOutput, Error> {
    c.ec2
        .describe_vpc_attribute()
        .vpc_id(id)
        .attribute(name)
        .send()
        .await
        .map_err(|e| fail(format!("vpc {id}"), &deploy::DESCRIBE_VPC_ATTRIBUTE, e))
}

/// The default security group of the stack's own VPC (AWS creates it untagged).
async fn observe_default_security_group(
    c: &Clients,
    stack: &str,
    obs: &mut Observed,
) -> Result<(), Error> {
    let own_vpc = obs
        .vpcs
        .iter()
        .find(|v| v.key == "vpc" && v.tags.get(TAG_STACK).map(String::as_str) == Some(stack))
        .map(|v| v.id.clone());
    let Some(vpc) = &own_vpc else {
        return Ok(());
    };
    let out = c
        .ec2
        .describe_security_groups()
        .filters(Filter::builder().name("vpc-id").values(vpc).build())
        .filters(
            Filter::builder()
                .name("group-name")
                .values("default")
                .build(),
        )
        .send()
        .await
        .map_err(|e| {
            fail(
                format!("default security group of {vpc}"),
                &deploy::DESCRIBE_SECURITY_GROUPS,
                e,
            )
        })?;
    obs.default_sg = out
        .security_groups()
        .iter()
        .find(|g| g.group_name() == Some("default") && g.vpc_id() == Some(vpc.as_str()))
        .map(security_group);
    Ok(())
}

async fn observe_subnets(c: &Clients, stack: &str, obs: &mut Observed) -> Result<(), Error> {
    let pages = c
        .ec2
        .describe_subnets()
        .filters(tag_filter(stack))
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| fail(of_stack("subnets", stack), &deploy::DESCRIBE_SUBNETS, e))?;
    for s in pages.iter().flat_map(|p| p.subnets()) {
        let tags = ec2_tags(s.tags());
        obs.subnets.push(ObsSubnet {
            id: s.subnet_id().unwrap_or_default().to_string(),
            key: key_of(&tags),
            vpc_id: s.vpc_id().unwrap_or_default().to_string(),
            cidr: s.cidr_block().unwrap_or_default().to_string(),
            az: s.availability_zone().unwrap_or_default().to_string(),
            tags,
        });
    }
    Ok(())
}

async fn observe_internet_gateways(
    c: &Clients,
    stack: &str,
    obs: &mut Observed,
) -> Result<(), Error> {
    let pages = c
        .ec2
        .describe_internet_gateways()
        .filters(tag_filter(stack))
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| {
            fail(
                of_stack("internet gateways", stack),
                &deploy::DESCRIBE_INTERNET_GATEWAYS,
                e,
            )
        })?;
    for g in pages.iter().flat_map(|p| p.internet_gateways()) {
        let tags = ec2_tags(g.tags());
        obs.igws.push(ObsIgw {
            id: g.internet_gateway_id().unwrap_or_default().to_string(),
            key: key_of(&tags),
            attached_vpcs: g
                .attachments()
                .iter()
                .filter_map(|a| a.vpc_id().map(str::to_string))
                .collect(),
            tags,
        });
    }
    Ok(())
}

async fn observe_addresses(c: &Clients, stack: &str, obs: &mut Observed) -> Result<(), Error> {
    let out = c
        .ec2
        .describe_addresses()
        .filters(tag_filter(stack))
        .send()
        .await
        .map_err(|e| {
            fail(
                of_stack("elastic IPs", stack),
                &deploy::DESCRIBE_ADDRESSES,
                e,
            )
        })?;
    for a in out.addresses() {
        let tags = ec2_tags(a.tags());
        obs.eips.push(ObsEip {
            allocation_id: a.allocation_id().unwrap_or_default().to_string(),
            key: key_of(&tags),
            public_ip: a.public_ip().unwrap_or_default().to_string(),
            association_id: a.association_id().map(str::to_string),
            instance_id: a.instance_id().map(str::to_string),
            tags,
        });
    }
    Ok(())
}

/// The NAT gateways that are pending or available (deleted ones linger in the answer).
async fn observe_nats(c: &Clients, stack: &str, obs: &mut Observed) -> Result<(), Error> {
    let pages = c
        .ec2
        .describe_nat_gateways()
        .filter(tag_filter(stack))
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| {
            fail(
                of_stack("NAT gateways", stack),
                &deploy::DESCRIBE_NAT_GATEWAYS,
                e,
            )
        })?;
    for n in pages.iter().flat_map(|p| p.nat_gateways()) {
        let state = n
            .state()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        if state != "pending" && state != "available" {
            continue;
        }
        let tags = ec2_tags(n.tags());
        obs.nats.push(ObsNat {
            id: n.nat_gateway_id().unwrap_or_default().to_string(),
            key: key_of(&tags),
            subnet_id: n.subnet_id().unwrap_or_default().to_string(),
            allocation_id: n
                .nat_gateway_addresses()
                .iter()
                .find_map(|a| a.allocation_id().map(str::to_string)),
            state,
            tags,
        });
    }
    Ok(())
}

async fn observe_route_tables(c: &Clients, stack: &str, obs: &mut Observed) -> Result<(), Error> {
    let pages = c
        .ec2
        .describe_route_tables()
        .filters(tag_filter(stack))
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| {
            fail(
                of_stack("route tables", stack),
                &deploy::DESCRIBE_ROUTE_TABLES,
                e,
            )
        })?;
    for r in pages.iter().flat_map(|p| p.route_tables()) {
        let tags = ec2_tags(r.tags());
        let routes = r
            .routes()
            .iter()
            .filter(|x| x.gateway_id() != Some("local"))
            .filter_map(route)
            .collect();
        let associations = r
            .associations()
            .iter()
            .filter(|a| a.main() != Some(true))
            .filter_map(|a| {
                Some(ObsAssociation {
                    id: a.route_table_association_id()?.to_string(),
                    subnet_id: a.subnet_id()?.to_string(),
                })
            })
            .collect();
        obs.route_tables.push(ObsRouteTable {
            id: r.route_table_id().unwrap_or_default().to_string(),
            key: key_of(&tags),
            routes,
            associations,
            tags,
        });
    }
    Ok(())
}

/// Where the stack's subnets are associated with a route table that is not the stack's (read
/// only to move them back; such a table is never changed otherwise).
async fn observe_foreign_associations(c: &Clients, obs: &mut Observed) -> Result<(), Error> {
    let ids: Vec<String> = obs.subnets.iter().map(|s| s.id.clone()).collect();
    if ids.is_empty() {
        return Ok(());
    }
    let own: Vec<String> = obs.route_tables.iter().map(|r| r.id.clone()).collect();
    let pages = c
        .ec2
        .describe_route_tables()
        .filters(
            Filter::builder()
                .name("association.subnet-id")
                .set_values(Some(ids.clone()))
                .build(),
        )
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| {
            fail(
                "route tables of the stack's subnets",
                &deploy::DESCRIBE_ROUTE_TABLES,
                e,
            )
        })?;
    for r in pages.iter().flat_map(|p| p.route_tables()) {
        let table = r.route_table_id().unwrap_or_default().to_string();
        if own.contains(&table) {
            continue;
        }
        for a in r.associations().iter().filter(|a| a.main() != Some(true)) {
            let (Some(id), Some(subnet)) = (a.route_table_association_id(), a.subnet_id()) else {
                continue;
            };
            if ids.iter().any(|s| s == subnet) {
                obs.foreign_associations.push((
                    table.clone(),
                    ObsAssociation {
                        id: id.to_string(),
                        subnet_id: subnet.to_string(),
                    },
                ));
            }
        }
    }
    Ok(())
}

/// An IPv4 route and where it goes.
fn route(x: &aws_sdk_ec2::types::Route) -> Option<ObsRoute> {
    let dest = x.destination_cidr_block()?.to_string();
    let target = if let Some(n) = x.nat_gateway_id() {
        RouteTarget::Nat(n.to_string())
    } else if let Some(g) = x.gateway_id() {
        RouteTarget::Gateway(g.to_string())
    } else {
        let other = x
            .instance_id()
            .or(x.vpc_peering_connection_id())
            .or(x.transit_gateway_id())
            .or(x.network_interface_id())
            .unwrap_or("blackhole");
        RouteTarget::Other(other.to_string())
    };
    Some(ObsRoute { dest, target })
}

async fn observe_security_groups(
    c: &Clients,
    stack: &str,
    obs: &mut Observed,
) -> Result<(), Error> {
    let pages = c
        .ec2
        .describe_security_groups()
        .filters(tag_filter(stack))
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| {
            fail(
                of_stack("security groups", stack),
                &deploy::DESCRIBE_SECURITY_GROUPS,
                e,
            )
        })?;
    for g in pages.iter().flat_map(|p| p.security_groups()) {
        if g.group_name() == Some("default") {
            continue; // the VPC's default group is tracked separately
        }
        obs.security_groups.push(security_group(g));
    }
    Ok(())
}

/// The instances that are not (being) terminated.
async fn observe_instances(c: &Clients, stack: &str, obs: &mut Observed) -> Result<(), Error> {
    let pages = c
        .ec2
        .describe_instances()
        .filters(tag_filter(stack))
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .values("stopping")
                .values("stopped")
                .build(),
        )
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| fail(of_stack("instances", stack), &deploy::DESCRIBE_INSTANCES, e))?;
    let instances = pages
        .iter()
        .flat_map(|p| p.reservations())
        .flat_map(|r| r.instances());
    obs.instances.extend(instances.filter_map(instance));
    Ok(())
}

/// An instance as the planner sees it; None when it is not pending, running or stopped.
fn instance(i: &aws_sdk_ec2::types::Instance) -> Option<ObsInstance> {
    let state = i
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string())
        .unwrap_or_default();
    if !["pending", "running", "stopping", "stopped"].contains(&state.as_str()) {
        return None;
    }
    let tags = ec2_tags(i.tags());
    let meta = i.metadata_options();
    Some(ObsInstance {
        id: i.instance_id().unwrap_or_default().to_string(),
        key: key_of(&tags),
        state,
        ami: i.image_id().unwrap_or_default().to_string(),
        instance_type: i
            .instance_type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        subnet_id: i.subnet_id().unwrap_or_default().to_string(),
        security_groups: i
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_string))
            .collect(),
        profile_arn: i
            .iam_instance_profile()
            .and_then(|p| p.arn())
            .map(str::to_string),
        http_tokens: meta
            .and_then(|m| m.http_tokens())
            .map(|t| t.as_str().to_string()),
        hop_limit: meta.and_then(|m| m.http_put_response_hop_limit()),
        private_ip: i.private_ip_address().map(str::to_string),
        public_ip: i.public_ip_address().map(str::to_string),
        tags,
    })
}

/// The audit log group, if a log group of its name exists in the stack's region (CloudWatch
/// Logs has no tag filter): its ARN, tags and retention. Needs the account (read first).
async fn observe_log_group(c: &Clients, stack: &str, obs: &mut Observed) -> Result<(), Error> {
    let name = audit_log_group(stack);
    let what = format!("log group {name}");
    // A prefix, not the name: the answer may hold others that start with it.
    let mut pages = c
        .logs
        .describe_log_groups()
        .log_group_name_prefix(&name)
        .into_paginator()
        .send();
    let mut found = None;
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| fail(&what, &deploy::DESCRIBE_LOG_GROUPS, e))?;
        found = page
            .log_groups()
            .iter()
            .find(|g| g.log_group_name() == Some(name.as_str()))
            .cloned();
        if found.is_some() {
            break;
        }
    }
    let Some(group) = found else {
        return Ok(());
    };
    let arn = group
        .log_group_arn()
        .map(str::to_owned)
        .or_else(|| group.arn().map(|a| a.trim_end_matches(":*").to_owned()))
        .unwrap_or_else(|| audit_log_group_arn(&c.region, &obs.account, stack));
    // A group deleted between the two calls is simply not there.
    let tags = match c
        .logs
        .list_tags_for_resource()
        .resource_arn(&arn)
        .send()
        .await
    {
        Ok(out) => out
            .tags()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        Err(e) => {
            let err = fail(&what, &deploy::LIST_LOG_GROUP_TAGS, e);
            return if err.is_not_found() { Ok(()) } else { Err(err) };
        }
    };
    obs.log_group = Some(ObsLogGroup {
        name,
        arn,
        tags,
        retention_days: group.retention_in_days(),
    });
    Ok(())
}

/// The IAM change-event queue, if a queue of its name exists (SQS has no tag filter): its
/// URL, tags and attributes.
async fn observe_queue(c: &Clients, stack: &str, obs: &mut Observed) -> Result<(), Error> {
    let name = event_queue_name(stack);
    let what = format!("sqs queue {name}");
    // A queue deleted between two of these calls is simply not there.
    let absent = |err: Error| if err.is_not_found() { Ok(()) } else { Err(err) };
    let url = match c.sqs.get_queue_url().queue_name(&name).send().await {
        Ok(out) => out.queue_url().unwrap_or_default().to_owned(),
        Err(e) => return absent(fail(&what, &deploy::GET_QUEUE_URL, e)),
    };
    let tags = match c.sqs.list_queue_tags().queue_url(&url).send().await {
        Ok(out) => out
            .tags()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        Err(e) => return absent(fail(&what, &deploy::LIST_QUEUE_TAGS, e)),
    };
    let attributes = match c
        .sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
    {
        Ok(out) => out
            .attributes()
            .map(|a| {
                a.iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        Err(e) => return absent(fail(&what, &deploy::GET_QUEUE_ATTRIBUTES, e)),
    };
    obs.queue = Some(ObsQueue {
        name,
        url,
        tags,
        attributes,
    });
    Ok(())
}

/// The rule that feeds the queue, if a rule of its name exists on the default bus: its
/// pattern, state, tags and targets.
async fn observe_rule(c: &Clients, stack: &str, obs: &mut Observed) -> Result<(), Error> {
    let name = event_rule_name(stack);
    let what = format!("events rule {name}");
    let absent = |err: Error| if err.is_not_found() { Ok(()) } else { Err(err) };
    let rule = match c.events.describe_rule().name(&name).send().await {
        Ok(out) => out,
        Err(e) => return absent(fail(&what, &deploy::DESCRIBE_RULE, e)),
    };
    let arn = rule.arn().unwrap_or_default().to_owned();
    let tags = match c
        .events
        .list_tags_for_resource()
        .resource_arn(&arn)
        .send()
        .await
    {
        Ok(out) => out
            .tags()
            .iter()
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect(),
        Err(e) => return absent(fail(&what, &deploy::LIST_TAGS_FOR_RULE, e)),
    };
    let mut targets = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let page = match c
            .events
            .list_targets_by_rule()
            .rule(&name)
            .set_next_token(next.take())
            .send()
            .await
        {
            Ok(page) => page,
            Err(e) => return absent(fail(&what, &deploy::LIST_TARGETS_BY_RULE, e)),
        };
        targets.extend(page.targets().iter().map(|t| ObsTarget {
            id: t.id().to_owned(),
            arn: t.arn().to_owned(),
            rewrites: t.input().is_some()
                || t.input_path().is_some()
                || t.input_transformer().is_some(),
        }));
        match page.next_token() {
            Some(token) if !token.is_empty() => next = Some(token.to_owned()),
            _ => break,
        }
    }
    obs.rule = Some(ObsRule {
        name,
        arn,
        tags,
        // An unreadable pattern is kept as text: it differs from the wanted one.
        pattern: rule.event_pattern().map(parse_policy),
        state: rule
            .state()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        targets,
    });
    Ok(())
}

/// The trails `us-east-1` sees (its own and the shadows of multi-region trails), and for
/// those that can deliver IAM's events there, whether they log and record management write
/// events.
pub async fn observe_trails(c: &Clients) -> Result<Vec<ObsTrail>, Error> {
    let what = format!("cloudtrail trails in {IAM_EVENTS_REGION}");
    let list = c
        .cloudtrail
        .describe_trails()
        .include_shadow_trails(true)
        .send()
        .await
        .map_err(|e| fail(&what, &deploy::DESCRIBE_TRAILS, e))?;
    let mut trails = Vec::new();
    for t in list.trail_list() {
        let mut trail = ObsTrail {
            name: t.name().unwrap_or_default().to_owned(),
            arn: t.trail_arn().unwrap_or_default().to_owned(),
            home_region: t.home_region().unwrap_or_default().to_owned(),
            multi_region: t.is_multi_region_trail() == Some(true),
            global_service_events: t.include_global_service_events() == Some(true),
            logging: None,
            management_writes: None,
        };
        if trail.reaches_iam_events_region() {
            // By ARN: the only way to name a shadow trail.
            let what = format!("cloudtrail trail {}", trail.arn);
            let status = c
                .cloudtrail
                .get_trail_status()
                .name(&trail.arn)
                .send()
                .await
                .map_err(|e| fail(&what, &deploy::GET_TRAIL_STATUS, e))?;
            trail.logging = Some(status.is_logging() == Some(true));
            if trail.logging == Some(true) {
                let selectors = c
                    .cloudtrail
                    .get_event_selectors()
                    .trail_name(&trail.arn)
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::GET_EVENT_SELECTORS, e))?;
                trail.management_writes = Some(records_management_writes(
                    selectors.event_selectors(),
                    selectors.advanced_event_selectors(),
                ));
            }
        }
        trails.push(trail);
    }
    Ok(trails)
}

/// Whether a trail's event selectors record IAM's management write events. None at all is
/// CloudTrail's default: every management event.
pub fn records_management_writes(
    basic: &[aws_sdk_cloudtrail::types::EventSelector],
    advanced: &[aws_sdk_cloudtrail::types::AdvancedEventSelector],
) -> bool {
    use aws_sdk_cloudtrail::types::ReadWriteType;
    if basic.is_empty() && advanced.is_empty() {
        return true;
    }
    let by_basic = basic.iter().any(|s| {
        s.include_management_events() != Some(false)
            && !matches!(s.read_write_type(), Some(ReadWriteType::ReadOnly))
    });
    let by_advanced = advanced.iter().any(|s| {
        let fields = s.field_selectors();
        let field = |name: &str| fields.iter().find(|f| f.field() == name);
        let has = |list: &[String], value: &str| list.iter().any(|v| v == value);
        let management = field("eventCategory").is_some_and(|f| has(f.equals(), "Management"));
        let writes = field("readOnly")
            .is_none_or(|f| !has(f.equals(), "true") && !has(f.not_equals(), "false"));
        let iam = field("eventSource").is_none_or(|f| {
            (f.equals().is_empty() || has(f.equals(), "iam.amazonaws.com"))
                && !has(f.not_equals(), "iam.amazonaws.com")
        });
        management && writes && iam
    });
    by_basic || by_advanced
}

fn iam_tags(tags: &[aws_sdk_iam::types::Tag]) -> Tags {
    tags.iter()
        .map(|t| (t.key().to_string(), t.value().to_string()))
        .collect()
}

/// IAM has no tag filter: the role and profile have deterministic names, read their tags.
async fn observe_iam(c: &Clients, stack: &str, obs: &mut Observed) -> Result<(), Error> {
    let name = role_name(stack);
    let what = format!("iam role {name}");
    match c.iam.get_role().role_name(&name).send().await {
        Ok(_) => {
            let tags = c
                .iam
                .list_role_tags()
                .role_name(&name)
                .send()
                .await
                .map_err(|e| fail(&what, &deploy::LIST_ROLE_TAGS, e))?;
            let policy = match c
                .iam
                .get_role_policy()
                .role_name(&name)
                .policy_name(POLICY_NAME)
                .send()
                .await
            {
                Ok(out) => Some(parse_policy(out.policy_document())),
                Err(e) => {
                    let err = fail(&what, &deploy::GET_ROLE_POLICY, e);
                    if !err.is_not_found() {
                        return Err(err);
                    }
                    None
                }
            };
            obs.role = Some(ObsRole {
                name: name.clone(),
                tags: iam_tags(tags.tags()),
                policy,
            });
        }
        Err(e) => {
            let err = fail(&what, &deploy::GET_ROLE, e);
            if !err.is_not_found() {
                return Err(err);
            }
        }
    }
    let what = format!("instance profile {name}");
    match c
        .iam
        .get_instance_profile()
        .instance_profile_name(&name)
        .send()
        .await
    {
        Ok(out) => {
            let roles = out
                .instance_profile()
                .map(|p| {
                    p.roles()
                        .iter()
                        .map(|r| r.role_name().to_string())
                        .collect()
                })
                .unwrap_or_default();
            // GetInstanceProfile carries the tags (moto 5.2 lacks ListInstanceProfileTags).
            let tags = out
                .instance_profile()
                .map(|p| iam_tags(p.tags()))
                .unwrap_or_default();
            obs.profile = Some(ObsProfile {
                name: name.clone(),
                tags,
                roles,
            });
        }
        Err(e) => {
            let err = fail(&what, &deploy::GET_INSTANCE_PROFILE, e);
            if !err.is_not_found() {
                return Err(err);
            }
        }
    }
    Ok(())
}

/// The key parameters (the host key's, the SSO CA's) that exist: the daemon creates them and
/// should tag them.
async fn observe_ssm(c: &Clients, stack: &str, obs: &mut Observed) -> Result<(), Error> {
    for name in key_parameters(stack, true) {
        let what = format!("ssm parameter {name}");
        let tags = c
            .ssm
            .list_tags_for_resource()
            .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::Parameter)
            .resource_id(&name)
            .send()
            .await;
        match tags {
            Ok(out) => {
                let tags: Tags = out
                    .tag_list()
                    .iter()
                    .map(|t| (t.key().to_string(), t.value().to_string()))
                    .collect();
                obs.parameters.push(ObsParameter { name, tags });
            }
            Err(e) => {
                let err = fail(&what, &deploy::LIST_TAGS_FOR_RESOURCE, e);
                let missing = err.is_not_found() || err.code() == Some("InvalidResourceId");
                if !missing {
                    return Err(err);
                }
            }
        }
    }
    Ok(())
}

/// The account of the credentials, and the binary bucket if its name exists: found by name
/// (S3 has no tag filter), owned by this account (HeadBucket's expected owner), then read.
async fn observe_s3(c: &Clients, stack: &str, obs: &mut Observed) -> Result<(), Error> {
    let who = c
        .sts
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| fail("the AWS account", &deploy::GET_CALLER_IDENTITY, e))?;
    let account = who
        .account()
        .ok_or_else(|| Error::Missing {
            resource: "the AWS account".into(),
            op: "GetCallerIdentity",
            field: "Account",
        })?
        .to_string();
    obs.account = account.clone();
    let name = binary_bucket(stack, &account);
    let what = format!("bucket {name}");
    let s3 = &c.s3;
    if let Err(e) = s3
        .head_bucket()
        .bucket(&name)
        .expected_bucket_owner(&account)
        .send()
        .await
    {
        match e.raw_response().map(|r| r.status().as_u16()) {
            Some(404) => return Ok(()),
            // HEAD has no body, so S3 cannot say which of the two it is.
            Some(403) => {
                return Err(Error::BucketForbidden {
                    resource: what,
                    action: deploy::HEAD_BUCKET.action,
                })
            }
            _ => return Err(fail(&what, &deploy::HEAD_BUCKET, e)),
        }
    }
    let tags = configured(
        s3.get_bucket_tagging()
            .bucket(&name)
            .expected_bucket_owner(&account)
            .send()
            .await,
        &what,
        &deploy::GET_BUCKET_TAGGING,
        "NoSuchTagSet",
        |out| {
            out.tag_set()
                .iter()
                .map(|t| (t.key().to_string(), t.value().to_string()))
                .collect()
        },
    )?;
    let public_access_blocked = configured(
        s3.get_public_access_block()
            .bucket(&name)
            .expected_bucket_owner(&account)
            .send()
            .await,
        &what,
        &deploy::GET_PUBLIC_ACCESS_BLOCK,
        "NoSuchPublicAccessBlockConfiguration",
        |out| {
            out.public_access_block_configuration().is_some_and(|b| {
                b.block_public_acls() == Some(true)
                    && b.ignore_public_acls() == Some(true)
                    && b.block_public_policy() == Some(true)
                    && b.restrict_public_buckets() == Some(true)
            })
        },
    )?;
    let encrypted = configured(
        s3.get_bucket_encryption()
            .bucket(&name)
            .expected_bucket_owner(&account)
            .send()
            .await,
        &what,
        &deploy::GET_BUCKET_ENCRYPTION,
        "ServerSideEncryptionConfigurationNotFoundError",
        |out| {
            out.server_side_encryption_configuration()
                .is_some_and(|c| !c.rules().is_empty())
        },
    )?;
    let policy = configured(
        s3.get_bucket_policy()
            .bucket(&name)
            .expected_bucket_owner(&account)
            .send()
            .await,
        &what,
        &deploy::GET_BUCKET_POLICY,
        "NoSuchBucketPolicy",
        |out| out.policy().map(parse_policy),
    )?;
    let mut objects = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(&name)
        .expected_bucket_owner(&account)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| fail(&what, &deploy::LIST_OBJECTS_V2, e))?;
        objects.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string)),
        );
    }
    obs.bucket = Some(ObsBucket {
        name,
        tags,
        public_access_blocked,
        encrypted,
        policy,
        objects,
    });
    Ok(())
}

/// A bucket setting read: `read` of the answer, or its default when S3 answers `absent_code`
/// (each "not configured" answer has its own code); any other error fails.
fn configured<O, E, T: Default>(
    answer: Result<O, SdkError<E, HttpResponse>>,
    what: &str,
    call: &'static deploy::Call,
    absent_code: &str,
    read: impl FnOnce(O) -> T,
) -> Result<T, Error>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match answer {
        Ok(out) => Ok(read(out)),
        Err(e) => {
            let err = fail(what, call, e);
            if err.code() == Some(absent_code) {
                Ok(T::default())
            } else {
                Err(err)
            }
        }
    }
}

/// IAM returns policy documents URL-encoded (RFC 3986); accept plain JSON too.
pub fn parse_policy(doc: &str) -> serde_json::Value {
    if let Ok(v) = serde_json::from_str(doc) {
        return v;
    }
    serde_json::from_str(&percent_decode(doc)).unwrap_or(serde_json::Value::String(doc.to_string()))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::records_management_writes;
    use aws_sdk_cloudtrail::types::{
        AdvancedEventSelector, AdvancedFieldSelector, EventSelector, ReadWriteType,
    };

    fn basic(management: Option<bool>, rw: Option<ReadWriteType>) -> EventSelector {
        EventSelector::builder()
            .set_include_management_events(management)
            .set_read_write_type(rw)
            .build()
    }

    fn advanced(fields: &[(&str, &[&str], &[&str])]) -> AdvancedEventSelector {
        let mut s = AdvancedEventSelector::builder().name("s");
        for (field, equals, not_equals) in fields {
            let mut f = AdvancedFieldSelector::builder().field(*field);
            for v in *equals {
                f = f.equals(*v);
            }
            for v in *not_equals {
                f = f.not_equals(*v);
            }
            s = s.field_selectors(f.build().expect("field selector"));
        }
        s.build().expect("selector")
    }

    #[test]
    fn iam_changes_are_recorded_by_management_write_selectors_only() {
        // CloudTrail's default: every management event.
        assert!(records_management_writes(&[], &[]));
        assert!(records_management_writes(
            &[basic(Some(true), Some(ReadWriteType::All))],
            &[]
        ));
        assert!(records_management_writes(
            &[basic(None, Some(ReadWriteType::WriteOnly))],
            &[]
        ));
        assert!(!records_management_writes(
            &[basic(Some(true), Some(ReadWriteType::ReadOnly))],
            &[]
        ));
        assert!(!records_management_writes(
            &[basic(Some(false), Some(ReadWriteType::All))],
            &[]
        ));
        // Advanced: management events, not read-only, not excluding IAM.
        let management = ("eventCategory", &["Management"][..], &[][..]);
        assert!(records_management_writes(&[], &[advanced(&[management])]));
        assert!(records_management_writes(
            &[],
            &[advanced(&[management, ("readOnly", &["false"], &[])])]
        ));
        assert!(!records_management_writes(
            &[],
            &[advanced(&[management, ("readOnly", &["true"], &[])])]
        ));
        assert!(!records_management_writes(
            &[],
            &[advanced(&[
                management,
                ("eventSource", &[], &["iam.amazonaws.com"])
            ])]
        ));
        assert!(records_management_writes(
            &[],
            &[advanced(&[
                management,
                ("eventSource", &[], &["kms.amazonaws.com"])
            ])]
        ));
        // Data events only.
        assert!(!records_management_writes(
            &[],
            &[advanced(&[("eventCategory", &["Data"], &[])])]
        ));
    }
}
