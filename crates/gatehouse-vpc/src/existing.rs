//! What a brownfield spec (`[vpc] id`) is placed into: the existing VPC, its subnets, route
//! tables and internet gateway, as plain data read before validation (`aws::observe_network`)
//! and never changed by the stack. `spec` resolves the spec's references against it.

use ipnet::Ipv4Net;

/// How the spec names an existing VPC or subnet: its id, `default` (the region's default
/// VPC), or the value of its `Name` tag, which must match exactly one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "by", content = "value", rename_all = "snake_case")]
pub enum Reference {
    Id(String),
    Default,
    Name(String),
}

impl Reference {
    /// Read a spec's value: `vpc-…`/`subnet-…` (hex after the prefix) is an id, `default` (for
    /// a VPC) the default VPC, anything else a `Name` tag.
    pub fn parse(value: &str, prefix: &str, allow_default: bool) -> Reference {
        let is_id = value.strip_prefix(prefix).is_some_and(|h| {
            (8..=17).contains(&h.len()) && h.chars().all(|c| c.is_ascii_hexdigit())
        });
        if is_id {
            Reference::Id(value.to_owned())
        } else if allow_default && value == "default" {
            Reference::Default
        } else {
            Reference::Name(value.to_owned())
        }
    }

    /// How a message names it.
    pub fn describe(&self) -> String {
        match self {
            Reference::Id(id) => id.clone(),
            Reference::Default => "the default VPC".into(),
            Reference::Name(name) => format!("Name tag {name:?}"),
        }
    }
}

/// The existing network, as AWS reported it in the stack's region.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetworkFacts {
    /// The VPCs that match the spec's reference (none, one, or several for a shared name).
    pub vpcs: Vec<FoundVpc>,
    /// Every subnet of the VPC (when exactly one matched).
    pub subnets: Vec<FoundSubnet>,
    /// Every route table of the VPC.
    pub route_tables: Vec<FoundRouteTable>,
    /// The internet gateway attached to the VPC, if any.
    pub internet_gateway: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FoundVpc {
    pub id: String,
    /// The primary CIDR block first, then the associated ones.
    pub cidrs: Vec<Ipv4Net>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FoundSubnet {
    pub id: String,
    pub cidr: Ipv4Net,
    pub az: String,
    pub name: Option<String>,
    /// Its `gatehouse:stack` tag: a subnet this stack created earlier is the stack's own, not
    /// something to avoid overlapping.
    pub stack: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FoundRouteTable {
    pub id: String,
    /// The VPC's main table: the one of every subnet without an explicit association.
    pub main: bool,
    /// Subnets explicitly associated with it.
    pub subnets: Vec<String>,
    /// The internet gateway its `0.0.0.0/0` route goes to, if it goes to one.
    pub default_route_igw: Option<String>,
}

impl NetworkFacts {
    /// The route table that routes `subnet`: its explicit association, else the main table.
    pub fn table_of(&self, subnet: &str) -> Option<&FoundRouteTable> {
        self.route_tables
            .iter()
            .find(|t| t.subnets.iter().any(|s| s == subnet))
            .or_else(|| self.route_tables.iter().find(|t| t.main))
    }

    /// The subnets `reference` names (by id or `Name` tag).
    pub fn subnets_named(&self, reference: &Reference) -> Vec<&FoundSubnet> {
        self.subnets
            .iter()
            .filter(|s| match reference {
                Reference::Id(id) => &s.id == id,
                Reference::Name(name) => s.name.as_ref() == Some(name),
                Reference::Default => false,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_ids_default_or_names() {
        assert_eq!(
            Reference::parse("vpc-0123abcd", "vpc-", true),
            Reference::Id("vpc-0123abcd".into())
        );
        assert_eq!(
            Reference::parse("default", "vpc-", true),
            Reference::Default
        );
        assert_eq!(
            Reference::parse("default", "subnet-", false),
            Reference::Name("default".into())
        );
        // Not hex, or too short: a name that happens to start like an id.
        assert_eq!(
            Reference::parse("vpc-main", "vpc-", true),
            Reference::Name("vpc-main".into())
        );
        assert_eq!(
            Reference::parse("subnet-12", "subnet-", false),
            Reference::Name("subnet-12".into())
        );
    }

    #[test]
    fn a_subnet_without_an_association_is_routed_by_the_main_table() {
        let facts = NetworkFacts {
            route_tables: vec![
                FoundRouteTable {
                    id: "rtb-main".into(),
                    main: true,
                    subnets: vec![],
                    default_route_igw: None,
                },
                FoundRouteTable {
                    id: "rtb-public".into(),
                    main: false,
                    subnets: vec!["subnet-a".into()],
                    default_route_igw: Some("igw-1".into()),
                },
            ],
            ..NetworkFacts::default()
        };
        assert_eq!(
            facts.table_of("subnet-a").map(|t| t.id.as_str()),
            Some("rtb-public")
        );
        assert_eq!(
            facts.table_of("subnet-b").map(|t| t.id.as_str()),
            Some("rtb-main")
        );
    }
}
