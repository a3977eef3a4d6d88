//! `[vpc]` and `[[subnets]]`: a VPC the stack creates (`cidr`), or an existing one (`id`)
//! resolved against what AWS reported ([`NetworkFacts`]). A brownfield spec validated without
//! facts comes back unresolved (the offline checks only); with them, each refusal names the
//! existing resource it is about.

use ipnet::Ipv4Net;
use toml::Spanned;

use super::{
    is_az_of, is_name, FoundNetwork, NatMode, Network, RawSpec, RawSubnet, Subnet, Tier, Validator,
};
use crate::existing::{FoundVpc, NetworkFacts, Reference};

/// The network part of a validated spec.
pub(super) struct NetworkOut {
    pub network: Network,
    pub vpc_cidr: Ipv4Net,
    pub azs: Vec<String>,
    pub subnets: Vec<Subnet>,
    /// Every subnet's CIDR and zone are known (greenfield, or brownfield with facts).
    pub resolved: bool,
}

impl Validator<'_> {
    pub(super) fn network(
        &mut self,
        raw: &RawSpec,
        region: &str,
        facts: Option<&NetworkFacts>,
    ) -> NetworkOut {
        let vpc = raw.vpc.get_ref();
        let (network, vpc_cidrs) = match (&vpc.cidr, &vpc.id) {
            (Some(cidr), None) => {
                self.check_cidr(cidr, "vpc cidr");
                (Network::Create, vec![*cidr.get_ref()])
            }
            (None, Some(id)) => self.existing_vpc(id, region, facts),
            (Some(cidr), Some(_)) => {
                self.at(
                    cidr,
                    "[vpc] takes cidr (a VPC the stack creates) or id (an existing VPC), not both",
                );
                (Network::Create, vec![*cidr.get_ref()])
            }
            (None, None) => {
                self.push(
                    raw.vpc.span().start,
                    "[vpc] needs cidr (a VPC the stack creates) or id (an existing VPC: its id, \
                     \"default\" or its Name tag)"
                        .into(),
                );
                (Network::Create, Vec::new())
            }
        };
        // The facts a brownfield spec's subnets resolve against: only once its VPC was found.
        let placed = match &network {
            Network::Existing { found: Some(_), .. } => facts,
            _ => None,
        };
        let resolved = network == Network::Create || placed.is_some();
        let given_azs = self.azs(raw, region, network == Network::Create);
        let mut subnets: Vec<Subnet> = Vec::new();
        for s in &raw.subnets {
            if let Some(subnet) =
                self.subnet(raw, s, region, &network, &vpc_cidrs, &given_azs, placed)
            {
                subnets.push(subnet);
            }
        }
        if resolved {
            self.check_overlaps(raw, &subnets);
        }
        self.check_tiers(raw, &subnets, resolved);
        if let Network::Existing {
            found: Some(found), ..
        } = &network
        {
            self.check_gateway(raw, &subnets, found);
        }
        let azs = given_azs.unwrap_or_else(|| {
            let mut zones: Vec<String> = Vec::new();
            for s in subnets.iter().filter(|s| !s.az.is_empty()) {
                if !zones.contains(&s.az) {
                    zones.push(s.az.clone());
                }
            }
            zones
        });
        NetworkOut {
            vpc_cidr: vpc_cidrs.first().copied().unwrap_or_default(),
            network,
            azs,
            subnets,
            resolved,
        }
    }

    /// `[vpc] id`: the one VPC the facts hold for it (none when validating without facts).
    fn existing_vpc(
        &mut self,
        id: &Spanned<String>,
        region: &str,
        facts: Option<&NetworkFacts>,
    ) -> (Network, Vec<Ipv4Net>) {
        let reference = Reference::parse(id.get_ref(), "vpc-", true);
        if id.get_ref().is_empty() {
            self.at(id, "[vpc] id is empty");
        }
        let unresolved = |reference| Network::Existing {
            reference,
            found: None,
        };
        let Some(facts) = facts else {
            return (unresolved(reference), Vec::new());
        };
        match facts.vpcs.as_slice() {
            [] => {
                self.at(
                    id,
                    format!(
                        "vpc {}: not found in {region} (the stack must be in the VPC's own \
                         region and account: set [stack] region to the VPC's)",
                        reference.describe()
                    ),
                );
                (unresolved(reference), Vec::new())
            }
            [vpc] => {
                let found = FoundNetwork {
                    vpc_id: vpc.id.clone(),
                    internet_gateway: facts.internet_gateway.clone(),
                };
                let network = Network::Existing {
                    reference,
                    found: Some(found),
                };
                (network, vpc.cidrs.clone())
            }
            many => {
                self.at(
                    id,
                    format!(
                        "vpc {} is ambiguous: it matches {}; name it by its id",
                        reference.describe(),
                        ids(many.iter().map(|v: &FoundVpc| v.id.as_str()))
                    ),
                );
                (unresolved(reference), Vec::new())
            }
        }
    }

    /// `[vpc] azs`: required for a new VPC; optional with `id` (`None`: not given).
    fn azs(&mut self, raw: &RawSpec, region: &str, required: bool) -> Option<Vec<String>> {
        let Some(listed) = &raw.vpc.get_ref().azs else {
            if required {
                self.push(
                    raw.vpc.span().start,
                    "vpc azs must list at least one availability zone".into(),
                );
            }
            return None;
        };
        if listed.get_ref().is_empty() {
            self.at(listed, "vpc azs must list at least one availability zone");
        }
        let mut azs = Vec::new();
        for az in listed.get_ref() {
            let name = az.get_ref();
            if !region.is_empty() && !is_az_of(name, region) {
                self.at(
                    az,
                    format!("unknown availability zone {name:?} for region {region}"),
                );
            }
            if azs.contains(name) {
                self.at(az, format!("availability zone {name:?} listed twice"));
            }
            azs.push(name.clone());
        }
        Some(azs)
    }

    /// One `[[subnets]]` entry: created (`cidr` and `az`) or existing (`id`).
    #[allow(clippy::too_many_arguments)]
    fn subnet(
        &mut self,
        raw: &RawSpec,
        s: &RawSubnet,
        region: &str,
        network: &Network,
        vpc_cidrs: &[Ipv4Net],
        azs: &Option<Vec<String>>,
        placed: Option<&NetworkFacts>,
    ) -> Option<Subnet> {
        let name = s.name.get_ref();
        if !is_name(name, 24) {
            self.at(
                &s.name,
                format!(
                    "subnet name {name:?} must be 1-24 of a-z, 0-9, '-', starting with a letter"
                ),
            );
        }
        if raw
            .subnets
            .iter()
            .take_while(|o| !std::ptr::eq(*o, s))
            .any(|o| o.name.get_ref() == name)
        {
            self.at(&s.name, format!("subnet name {name:?} used twice"));
        }
        match (&s.id, &s.cidr, &s.az) {
            (Some(id), None, None) => self.existing_subnet(raw, s, id, network, placed),
            (None, Some(cidr), Some(az)) => {
                self.check_cidr(cidr, &format!("subnet {name} cidr"));
                let cidr = *cidr.get_ref();
                if !vpc_cidrs.is_empty() && !vpc_cidrs.iter().any(|v| v.contains(&cidr)) {
                    let blocks: Vec<String> = vpc_cidrs.iter().map(Ipv4Net::to_string).collect();
                    self.at(
                        s.cidr.as_ref()?,
                        format!(
                            "subnet {name} cidr {cidr} is outside the vpc cidr {}",
                            blocks.join(", ")
                        ),
                    );
                }
                match azs {
                    Some(azs) if !azs.contains(az.get_ref()) => self.at(
                        az,
                        format!(
                            "subnet {name}: unknown availability zone {:?} (not in vpc azs)",
                            az.get_ref()
                        ),
                    ),
                    None if !region.is_empty() && !is_az_of(az.get_ref(), region) => self.at(
                        az,
                        format!(
                            "subnet {name}: unknown availability zone {:?} for region {region}",
                            az.get_ref()
                        ),
                    ),
                    _ => {}
                }
                if let Some(facts) = placed {
                    self.check_free(raw, s, cidr, facts);
                }
                Some(Subnet {
                    name: name.clone(),
                    tier: s.tier,
                    cidr,
                    az: az.get_ref().clone(),
                    existing: None,
                })
            }
            _ => {
                self.at(
                    &s.name,
                    format!(
                        "subnet {name}: give cidr and az (a subnet the stack creates) or id (an \
                         existing subnet of [vpc] id), not both"
                    ),
                );
                None
            }
        }
    }

    /// `[[subnets]] id`: with `[vpc] id` only; resolved against the VPC's subnets.
    fn existing_subnet(
        &mut self,
        raw: &RawSpec,
        s: &RawSubnet,
        id: &Spanned<String>,
        network: &Network,
        placed: Option<&NetworkFacts>,
    ) -> Option<Subnet> {
        let name = s.name.get_ref();
        let Network::Existing { found, .. } = network else {
            self.at(
                id,
                format!(
                    "subnet {name}: id names an existing subnet, which needs [vpc] id (an \
                     existing VPC); a VPC the stack creates has only the subnets it creates"
                ),
            );
            return None;
        };
        let reference = Reference::parse(id.get_ref(), "subnet-", false);
        let unresolved = Subnet {
            name: name.clone(),
            tier: s.tier,
            cidr: Ipv4Net::default(),
            az: String::new(),
            existing: Some(id.get_ref().clone()),
        };
        let (Some(facts), Some(found)) = (placed, found) else {
            return Some(unresolved);
        };
        let matches = facts.subnets_named(&reference);
        let one = match matches.as_slice() {
            [] => {
                self.at(
                    id,
                    format!(
                        "subnet {name}: {} is not a subnet of {}",
                        reference.describe(),
                        found.vpc_id
                    ),
                );
                return None;
            }
            [one] => *one,
            many => {
                self.at(
                    id,
                    format!(
                        "subnet {name}: {} is ambiguous: it matches {}; name it by its id",
                        reference.describe(),
                        ids(many.iter().map(|s| s.id.as_str()))
                    ),
                );
                return None;
            }
        };
        if s.tier == Tier::Public {
            let table = facts.table_of(&one.id);
            if table.and_then(|t| t.default_route_igw.as_ref()).is_none() {
                self.at(
                    id,
                    format!(
                        "subnet {name} ({}) is public in the spec but has no route to an \
                         internet gateway (its route table {} has no 0.0.0.0/0 route to an \
                         igw-): the bastion there could not be reached",
                        one.id,
                        table.map_or("(none)", |t| t.id.as_str())
                    ),
                );
            }
        }
        let first = raw
            .subnets
            .iter()
            .take_while(|o| !std::ptr::eq(*o, s))
            .filter_map(|o| o.id.as_ref())
            .find(|o| {
                facts.subnets_named(&Reference::parse(o.get_ref(), "subnet-", false)) == [one]
            });
        if first.is_some() {
            self.at(id, format!("subnet {name}: {} is listed twice", one.id));
        }
        Some(Subnet {
            cidr: one.cidr,
            az: one.az.clone(),
            existing: Some(one.id.clone()),
            ..unresolved
        })
    }

    /// A subnet the stack creates in an existing VPC must not overlap the VPC's other subnets
    /// (those the stack created earlier are its own, replaced or kept by the plan).
    fn check_free(&mut self, raw: &RawSpec, s: &RawSubnet, cidr: Ipv4Net, facts: &NetworkFacts) {
        let stack = raw.stack.name.get_ref();
        let taken = facts.subnets.iter().filter(|o| {
            o.stack.as_ref() != Some(stack) && (o.cidr.contains(&cidr) || cidr.contains(&o.cidr))
        });
        for other in taken {
            if let Some(at) = &s.cidr {
                let named = other
                    .name
                    .as_ref()
                    .map(|n| format!(", Name {n:?}"))
                    .unwrap_or_default();
                self.at(
                    at,
                    format!(
                        "subnet {} cidr {cidr} overlaps existing subnet {} ({}{named})",
                        s.name.get_ref(),
                        other.id,
                        other.cidr
                    ),
                );
            }
        }
    }

    /// The spec's subnets may not overlap each other (existing ones are AWS's to keep apart).
    fn check_overlaps(&mut self, raw: &RawSpec, subnets: &[Subnet]) {
        for (i, s) in subnets.iter().enumerate() {
            for o in subnets.iter().take(i) {
                let both_existing = !s.created() && !o.created();
                if both_existing || !(o.cidr.contains(&s.cidr) || s.cidr.contains(&o.cidr)) {
                    continue;
                }
                let at = raw
                    .subnets
                    .iter()
                    .find(|r| r.name.get_ref() == &s.name)
                    .map_or(0, |r| {
                        r.cidr
                            .as_ref()
                            .map_or(r.name.span().start, |c| c.span().start)
                    });
                self.push(
                    at,
                    format!(
                        "subnet {} cidr {} overlaps subnet {} cidr {}",
                        s.name, s.cidr, o.name, o.cidr
                    ),
                );
            }
        }
    }

    /// A public subnet for the bastion; with `per_az`, one in each zone of a private subnet
    /// the stack creates; a public subnet the stack creates needs the VPC's internet gateway.
    fn check_tiers(&mut self, raw: &RawSpec, subnets: &[Subnet], resolved: bool) {
        let span_of = |name: &str| {
            raw.subnets
                .iter()
                .find(|r| r.name.get_ref() == name)
                .map_or(0, |r| r.name.span().start)
        };
        if !subnets.iter().any(|s| s.tier == Tier::Public) {
            let first = raw.subnets.first().map_or(0, |s| s.name.span().start);
            self.push(
                first,
                "at least one public subnet is needed (for the bastion)".into(),
            );
        }
        if !resolved {
            return;
        }
        if raw.vpc.get_ref().nat == NatMode::PerAz {
            let created_private = subnets
                .iter()
                .filter(|s| s.tier == Tier::Private && s.created());
            for s in created_private {
                if !subnets
                    .iter()
                    .any(|p| p.tier == Tier::Public && p.az == s.az)
                {
                    self.push(
                        span_of(&s.name),
                        format!(
                            "nat = \"per_az\" needs a public subnet in {} for private subnet {}",
                            s.az, s.name
                        ),
                    );
                }
            }
        }
    }
}

impl Validator<'_> {
    /// A public subnet the stack creates routes to the VPC's internet gateway, which must
    /// exist: the stack does not attach one to a VPC it does not own.
    fn check_gateway(&mut self, raw: &RawSpec, subnets: &[Subnet], found: &FoundNetwork) {
        if found.internet_gateway.is_some() {
            return;
        }
        for s in subnets
            .iter()
            .filter(|s| s.tier == Tier::Public && s.created())
        {
            let at = raw
                .subnets
                .iter()
                .find(|r| r.name.get_ref() == &s.name)
                .map_or(0, |r| r.name.span().start);
            self.push(
                at,
                format!(
                    "subnet {}: public, but {} has no internet gateway attached, so it would \
                     have no route to an internet gateway (the stack does not attach one to a \
                     VPC it does not own)",
                    s.name, found.vpc_id
                ),
            );
        }
    }
}

/// `a, b, c`.
fn ids<'a>(ids: impl Iterator<Item = &'a str>) -> String {
    ids.collect::<Vec<_>>().join(", ")
}
