//! Brownfield specs (`[vpc] id`): unresolved without facts, each refusal with facts, and the
//! `iam_events` decision from the account's trails.

use super::*;
use crate::existing::{FoundRouteTable, FoundSubnet, FoundVpc, NetworkFacts};

pub(crate) const BROWNFIELD: &str = r#"
[stack]
name = "lab"
region = "us-east-1"

[vpc]
id = "vpc-0aaaaaaaaaaaaaaaa"
nat = "single"

[[subnets]]
name = "dmz"
tier = "public"
id = "subnet-0aaaaaaaaaaaaaaa1"

[[subnets]]
name = "team"
tier = "private"
id = "team-private"

[[subnets]]
name = "analysis"
tier = "private"
cidr = "10.77.50.0/24"
az = "us-east-1a"

[bastion]
subnet = "dmz"
ami = "ami-0123456789abcdef0"
allowed_cidrs = ["198.51.100.0/24"]
gatehouse_download_url = "https://example.org/gatehouse"
"#;

fn subnet(id: &str, cidr: &str, az: &str, name: Option<&str>) -> FoundSubnet {
    FoundSubnet {
        id: id.into(),
        cidr: cidr.parse().expect("cidr"),
        az: az.into(),
        name: name.map(str::to_owned),
        stack: None,
    }
}

/// The team's VPC: two public subnets behind a table to the gateway, a private one on the
/// main table (no default route).
pub(crate) fn facts() -> NetworkFacts {
    NetworkFacts {
        vpcs: vec![FoundVpc {
            id: "vpc-0aaaaaaaaaaaaaaaa".into(),
            cidrs: vec!["10.77.0.0/16".parse().expect("cidr")],
        }],
        subnets: vec![
            subnet(
                "subnet-0aaaaaaaaaaaaaaa1",
                "10.77.0.0/24",
                "us-east-1a",
                None,
            ),
            subnet(
                "subnet-0aaaaaaaaaaaaaaa2",
                "10.77.1.0/24",
                "us-east-1b",
                None,
            ),
            subnet(
                "subnet-0aaaaaaaaaaaaaaa3",
                "10.77.10.0/24",
                "us-east-1a",
                Some("team-private"),
            ),
        ],
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
                subnets: vec![
                    "subnet-0aaaaaaaaaaaaaaa1".into(),
                    "subnet-0aaaaaaaaaaaaaaa2".into(),
                ],
                default_route_igw: Some("igw-0aaaaaaaaaaaaaaaa".into()),
            },
        ],
        internet_gateway: Some("igw-0aaaaaaaaaaaaaaaa".into()),
    }
}

pub(crate) fn resolve(text: &str, facts: &NetworkFacts) -> Result<Spec, Vec<String>> {
    parse_in("t.toml", text, None, ReadBinary::Yes, Some(facts)).map_err(|e| match e {
        SpecError::Invalid { issues, .. } => issues
            .iter()
            .map(|i| format!("{}:{}: {}", i.line, i.col, i.message))
            .collect(),
        e => vec![e.to_string()],
    })
}

#[track_caller]
fn assert_refused(text: &str, facts: &NetworkFacts, needle: &str) {
    match resolve(text, facts) {
        Ok(_) => panic!("expected a refusal containing {needle:?}"),
        Err(errs) => assert!(
            errs.iter().any(|e| e.contains(needle)),
            "expected {needle:?} in {errs:#?}"
        ),
    }
}

#[test]
fn without_facts_a_brownfield_spec_is_valid_but_unresolved() {
    let spec = parse("t.toml", BROWNFIELD, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(spec.unresolved());
    assert!(!spec.builds_vpc());
    assert_eq!(
        spec.existing_vpc(),
        Some(&crate::existing::Reference::Id(
            "vpc-0aaaaaaaaaaaaaaaa".into()
        ))
    );
    // The planner refuses it rather than guess.
    let obs = crate::model::Observed::default();
    assert_eq!(
        crate::plan::plan_apply(&spec, &obs).err(),
        Some(crate::plan::PlanError::Unresolved)
    );
}

#[test]
fn with_facts_existing_subnets_take_their_cidr_and_zone_and_the_zones_follow() {
    let spec = resolve(BROWNFIELD, &facts()).unwrap_or_else(|e| panic!("{e:#?}"));
    assert!(!spec.unresolved());
    let found = match &spec.network {
        Network::Existing {
            found: Some(found), ..
        } => found.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(found.vpc_id, "vpc-0aaaaaaaaaaaaaaaa");
    assert_eq!(
        found.internet_gateway.as_deref(),
        Some("igw-0aaaaaaaaaaaaaaaa")
    );
    assert_eq!(spec.vpc_cidr.to_string(), "10.77.0.0/16");
    let placed: Vec<(&str, String, &str, Option<&str>)> = spec
        .subnets
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.cidr.to_string(),
                s.az.as_str(),
                s.existing.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        placed,
        [
            (
                "dmz",
                "10.77.0.0/24".into(),
                "us-east-1a",
                Some("subnet-0aaaaaaaaaaaaaaa1")
            ),
            (
                "team",
                "10.77.10.0/24".into(),
                "us-east-1a",
                Some("subnet-0aaaaaaaaaaaaaaa3")
            ),
            ("analysis", "10.77.50.0/24".into(), "us-east-1a", None),
        ]
    );
    assert_eq!(spec.azs, ["us-east-1a"]);
    assert!(spec.creates_subnets());
}

#[test]
fn a_public_subnet_without_a_route_to_an_internet_gateway_is_refused() {
    let text = BROWNFIELD.replacen(
        "tier = \"private\"\nid = \"team-private\"",
        "tier = \"public\"\nid = \"team-private\"",
        1,
    );
    assert_refused(
        &text,
        &facts(),
        "subnet team (subnet-0aaaaaaaaaaaaaaa3) is public in the spec but has no route to an \
         internet gateway (its route table rtb-main",
    );
}

#[test]
fn a_created_public_subnet_needs_the_vpcs_internet_gateway() {
    let text = BROWNFIELD.replacen(
        "name = \"analysis\"\ntier = \"private\"",
        "name = \"analysis\"\ntier = \"public\"",
        1,
    );
    let mut facts = facts();
    facts.internet_gateway = None;
    assert_refused(
        &text,
        &facts,
        "subnet analysis: public, but vpc-0aaaaaaaaaaaaaaaa has no internet gateway attached",
    );
}

#[test]
fn replicas_need_public_subnets_in_two_zones_of_the_existing_vpc() {
    let text = BROWNFIELD.replacen("subnet = \"dmz\"", "subnet = \"dmz\"\nreplicas = 2", 1);
    assert_refused(&text, &facts(), "at least two availability zones");
    // The second public subnet in us-east-1b makes it valid.
    let text = text.replacen(
        "[[subnets]]\nname = \"team\"",
        "[[subnets]]\nname = \"dmz-b\"\ntier = \"public\"\nid = \"subnet-0aaaaaaaaaaaaaaa2\"\n\n[[subnets]]\nname = \"team\"",
        1,
    );
    let spec = resolve(&text, &facts()).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(spec.bastion.replicas, 2);
}

#[test]
fn a_vpc_not_in_the_region_is_refused() {
    let mut facts = facts();
    facts.vpcs.clear();
    assert_refused(
        BROWNFIELD,
        &facts,
        "vpc vpc-0aaaaaaaaaaaaaaaa: not found in us-east-1",
    );
}

#[test]
fn a_created_subnet_overlapping_an_existing_one_is_refused_unless_it_is_the_stacks_own() {
    let text = BROWNFIELD.replacen("10.77.50.0/24", "10.77.10.0/25", 1);
    assert_refused(
        &text,
        &facts(),
        "subnet analysis cidr 10.77.10.0/25 overlaps existing subnet subnet-0aaaaaaaaaaaaaaa3 \
         (10.77.10.0/24, Name \"team-private\")",
    );
    // After apply the stack's own subnet is in the VPC too: not an overlap.
    let mut facts = facts();
    let mut own = subnet(
        "subnet-0bbbbbbbbbbbbbbb1",
        "10.77.50.0/24",
        "us-east-1a",
        None,
    );
    own.stack = Some("lab".into());
    facts.subnets.push(own);
    resolve(BROWNFIELD, &facts).unwrap_or_else(|e| panic!("{e:#?}"));
    // Another stack's is.
    facts.subnets.last_mut().expect("own").stack = Some("other".into());
    assert_refused(
        BROWNFIELD,
        &facts,
        "overlaps existing subnet subnet-0bbbbbbbbbbbbbbb1",
    );
}

#[test]
fn a_cidr_outside_the_vpc_is_refused() {
    let text = BROWNFIELD.replacen("10.77.50.0/24", "10.78.50.0/24", 1);
    assert_refused(
        &text,
        &facts(),
        "subnet analysis cidr 10.78.50.0/24 is outside the vpc cidr 10.77.0.0/16",
    );
}

#[test]
fn an_ambiguous_name_is_refused() {
    let mut facts = facts();
    facts.subnets[1].name = Some("team-private".into());
    assert_refused(
        BROWNFIELD,
        &facts,
        "subnet team: Name tag \"team-private\" is ambiguous: it matches \
         subnet-0aaaaaaaaaaaaaaa2, subnet-0aaaaaaaaaaaaaaa3; name it by its id",
    );
    let mut two = self::facts();
    two.vpcs.push(two.vpcs[0].clone());
    two.vpcs[1].id = "vpc-0bbbbbbbbbbbbbbbb".into();
    let text = BROWNFIELD.replacen("id = \"vpc-0aaaaaaaaaaaaaaaa\"", "id = \"team\"", 1);
    assert_refused(&text, &two, "vpc Name tag \"team\" is ambiguous");
}

#[test]
fn a_subnet_of_another_vpc_and_ids_without_an_existing_vpc_are_refused() {
    let text = BROWNFIELD.replacen("subnet-0aaaaaaaaaaaaaaa1", "subnet-0ccccccccccccccc1", 1);
    assert_refused(
        &text,
        &facts(),
        "subnet dmz: subnet-0ccccccccccccccc1 is not a subnet of vpc-0aaaaaaaaaaaaaaaa",
    );
    let text = BROWNFIELD.replacen(
        "id = \"vpc-0aaaaaaaaaaaaaaaa\"",
        "cidr = \"10.77.0.0/16\"\nazs = [\"us-east-1a\"]",
        1,
    );
    assert_refused(
        &text,
        &facts(),
        "id names an existing subnet, which needs [vpc] id",
    );
    let text = BROWNFIELD.replacen(
        "id = \"vpc-0aaaaaaaaaaaaaaaa\"",
        "id = \"vpc-0aaaaaaaaaaaaaaaa\"\ncidr = \"10.77.0.0/16\"",
        1,
    );
    assert_refused(&text, &facts(), "[vpc] takes cidr");
    let text = BROWNFIELD.replacen(
        "id = \"subnet-0aaaaaaaaaaaaaaa1\"",
        "id = \"subnet-0aaaaaaaaaaaaaaa1\"\ncidr = \"10.77.0.0/24\"",
        1,
    );
    assert_refused(&text, &facts(), "subnet dmz: give cidr and az");
}

#[test]
fn the_same_existing_subnet_listed_twice_is_refused() {
    let text = BROWNFIELD.replacen(
        "id = \"team-private\"",
        "id = \"subnet-0aaaaaaaaaaaaaaa3\"",
        1,
    );
    let text = text.replacen(
        "[[subnets]]\nname = \"analysis\"",
        "[[subnets]]\nname = \"again\"\ntier = \"private\"\nid = \"team-private\"\n\n[[subnets]]\nname = \"analysis\"",
        1,
    );
    assert_refused(
        &text,
        &facts(),
        "subnet again: subnet-0aaaaaaaaaaaaaaa3 is listed twice",
    );
}

fn trail(name: &str, multi_region: bool, logging: bool) -> crate::model::ObsTrail {
    crate::model::ObsTrail {
        name: name.into(),
        arn: format!("arn:aws:cloudtrail:us-east-1:123456789012:trail/{name}"),
        home_region: "eu-west-1".into(),
        multi_region,
        global_service_events: true,
        logging: Some(logging),
        management_writes: Some(true),
    }
}

#[test]
fn an_unset_iam_events_follows_the_accounts_trails_and_an_explicit_one_is_kept() {
    let verdict = |trails: &[crate::model::ObsTrail]| {
        crate::plan::events::trail_for_iam_events(trails)
            .map(str::to_owned)
            .map_err(|e| e.to_string())
    };
    let decide = |text: &str, trails: Option<&[crate::model::ObsTrail]>| {
        let mut spec = parse("t.toml", text, None).unwrap_or_else(|e| panic!("{e}"));
        let v = trails.map(verdict);
        let note = spec.decide_iam_events(v.as_ref().map(|r| r.as_deref().map_err(String::clone)));
        (spec.bastion.iam_events, note)
    };
    let org = [trail("org-trail", true, true)];
    let (on, note) = decide(BROWNFIELD, Some(&org));
    assert!(on);
    assert_eq!(
        note.as_deref(),
        Some(
            "iam_events (not set in the spec): on: CloudTrail trail org-trail delivers IAM's \
             calls to EventBridge in us-east-1; set iam_events = false to keep it off"
        )
    );
    let off = [trail("regional", false, true), trail("paused", true, false)];
    let (on, note) = decide(BROWNFIELD, Some(&off));
    assert!(!on);
    assert_eq!(
        note.as_deref(),
        Some(
            "iam_events (not set in the spec): off: no CloudTrail trail delivers IAM's calls to \
             EventBridge in us-east-1. Trails: regional (single-region, in eu-west-1); paused \
             (logging is off); revocations wait for the IAM sweep"
        )
    );
    let (on, note) = decide(BROWNFIELD, None);
    assert!(!on);
    assert!(note.is_some_and(|n| n.contains("outside this region's partition")));
    // An explicit false stays off whatever the trails; an explicit true is the planner's to
    // check (it refuses without a trail).
    let explicit = BROWNFIELD.replacen(
        "gatehouse_download_url",
        "iam_events = false\ngatehouse_download_url",
        1,
    );
    assert_eq!(decide(&explicit, Some(&org)), (false, None));
    let explicit = explicit.replacen("iam_events = false", "iam_events = true", 1);
    assert_eq!(decide(&explicit, Some(&off)), (true, None));
}
