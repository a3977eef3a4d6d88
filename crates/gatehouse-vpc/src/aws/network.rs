//! Reading the existing network a brownfield spec names (`[vpc] id`): the VPCs that match the
//! reference, and for the one that does, its subnets, route tables and internet gateway.
//! Read only; the same describe calls (and actions) as reading a stack.

use aws_sdk_ec2::types::Filter;
use ipnet::Ipv4Net;

use super::{fail, Clients, Error};
use crate::deploy;
use crate::existing::{FoundRouteTable, FoundSubnet, FoundVpc, NetworkFacts, Reference};
use crate::model::TAG_STACK;

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn tag<'a>(tags: &'a [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// A CIDR as AWS gives it; an answer without one is refused rather than guessed.
fn cidr(what: &str, value: Option<&str>) -> Result<Ipv4Net, Error> {
    value
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Missing {
            resource: what.to_owned(),
            op: "DescribeVpcs/DescribeSubnets",
            field: "an IPv4 CIDR block",
        })
}

/// What AWS has for `reference` in the clients' region.
pub async fn observe_network(c: &Clients, reference: &Reference) -> Result<NetworkFacts, Error> {
    let what = format!("vpc {}", reference.describe());
    let by = match reference {
        Reference::Id(id) => filter("vpc-id", id),
        Reference::Default => filter("is-default", "true"),
        Reference::Name(name) => filter("tag:Name", name),
    };
    let pages = c
        .ec2
        .describe_vpcs()
        .filters(by)
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| fail(what.clone(), &deploy::DESCRIBE_VPCS, e))?;
    let mut facts = NetworkFacts::default();
    for v in pages.iter().flat_map(|p| p.vpcs()) {
        let id = v.vpc_id().unwrap_or_default().to_string();
        let mut cidrs = vec![cidr(&id, v.cidr_block())?];
        for block in v.cidr_block_association_set() {
            let associated = block
                .cidr_block_state()
                .and_then(|s| s.state())
                .is_some_and(|s| s.as_str() == "associated");
            let block = block.cidr_block().and_then(|b| b.parse().ok());
            if let (true, Some(block)) = (associated, block) {
                if !cidrs.contains(&block) {
                    cidrs.push(block);
                }
            }
        }
        facts.vpcs.push(FoundVpc { id, cidrs });
    }
    if let [vpc] = facts.vpcs.as_slice() {
        let id = vpc.id.clone();
        facts.subnets = subnets(c, &id).await?;
        facts.route_tables = route_tables(c, &id).await?;
        facts.internet_gateway = internet_gateway(c, &id).await?;
    }
    Ok(facts)
}

async fn subnets(c: &Clients, vpc: &str) -> Result<Vec<FoundSubnet>, Error> {
    let pages = c
        .ec2
        .describe_subnets()
        .filters(filter("vpc-id", vpc))
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| fail(format!("subnets of {vpc}"), &deploy::DESCRIBE_SUBNETS, e))?;
    let mut out = Vec::new();
    for s in pages.iter().flat_map(|p| p.subnets()) {
        let id = s.subnet_id().unwrap_or_default().to_string();
        out.push(FoundSubnet {
            cidr: cidr(&id, s.cidr_block())?,
            az: s.availability_zone().unwrap_or_default().to_string(),
            name: tag(s.tags(), "Name").map(str::to_owned),
            stack: tag(s.tags(), TAG_STACK).map(str::to_owned),
            id,
        });
    }
    Ok(out)
}

async fn route_tables(c: &Clients, vpc: &str) -> Result<Vec<FoundRouteTable>, Error> {
    let pages = c
        .ec2
        .describe_route_tables()
        .filters(filter("vpc-id", vpc))
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| {
            fail(
                format!("route tables of {vpc}"),
                &deploy::DESCRIBE_ROUTE_TABLES,
                e,
            )
        })?;
    let mut out = Vec::new();
    for t in pages.iter().flat_map(|p| p.route_tables()) {
        let associations = t.associations();
        let default_route_igw = t
            .routes()
            .iter()
            .filter(|r| r.destination_cidr_block() == Some(crate::names::DEFAULT_ROUTE))
            .filter(|r| r.state().is_none_or(|s| s.as_str() == "active"))
            .filter_map(|r| r.gateway_id())
            .find(|g| g.starts_with("igw-"))
            .map(str::to_owned);
        out.push(FoundRouteTable {
            id: t.route_table_id().unwrap_or_default().to_string(),
            main: associations.iter().any(|a| a.main() == Some(true)),
            subnets: associations
                .iter()
                .filter_map(|a| a.subnet_id().map(str::to_owned))
                .collect(),
            default_route_igw,
        });
    }
    Ok(out)
}

async fn internet_gateway(c: &Clients, vpc: &str) -> Result<Option<String>, Error> {
    let out = c
        .ec2
        .describe_internet_gateways()
        .filters(filter("attachment.vpc-id", vpc))
        .send()
        .await
        .map_err(|e| {
            fail(
                format!("internet gateway of {vpc}"),
                &deploy::DESCRIBE_INTERNET_GATEWAYS,
                e,
            )
        })?;
    Ok(out
        .internet_gateways()
        .iter()
        .filter_map(|g| g.internet_gateway_id())
        .min()
        .map(str::to_owned))
}
