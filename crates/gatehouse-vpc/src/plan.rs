//! The planner: a pure function from (validated spec, observed AWS state) to an ordered list of
//! steps. Removals come first, in reverse dependency order; then creations and repairs in
//! dependency order. The same removal code is the whole of `destroy`.

pub mod replicas;
use std::collections::{BTreeMap, BTreeSet};

use gatehouse_aws::events::{iam_event_pattern, IAM_EVENTS_REGION, QUEUE_RETENTION_SECS};

use crate::model::*;
use crate::spec::{NatMode, Spec, Tier};

/// Name of the inline policy on the bastion role.
pub const POLICY_NAME: &str = "gatehouse-bastion";
/// The only destination the stack routes: everything not local.
pub const DEFAULT_ROUTE: &str = "0.0.0.0/0";

/// A plan that cannot be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    /// A resource with the stack's deterministic name exists but is not tagged as ours.
    #[error(
        "{what} {name:?} exists but does not carry {TAG_STACK} = {stack}; refusing to touch it"
    )]
    NotOurs {
        what: &'static str,
        name: String,
        stack: String,
    },
    /// The spec asks for a change AWS cannot make in place.
    #[error("{resource}: {message}")]
    Immutable { resource: String, message: String },
    /// `[bastion] iam_events` without a CloudTrail trail that delivers IAM's API calls to
    /// EventBridge in `us-east-1`: the rule would never match anything.
    #[error(
        "[bastion] iam_events: no CloudTrail trail delivers IAM's API calls to EventBridge in \
         {region}, so the bastion would never hear of an IAM change. That takes a trail with \
         logging on that records management write events and is multi-region (or in {region} \
         with global service events). {found} Create one (`aws cloudtrail create-trail --name \
         NAME --s3-bucket-name BUCKET --is-multi-region-trail`, the bucket with CloudTrail's \
         bucket policy, then `aws cloudtrail start-logging --name NAME`), or set iam_events = \
         false.",
        region = IAM_EVENTS_REGION
    )]
    NoIamEventTrail {
        /// What the account has, and why each trail does not count.
        found: String,
    },
}

/// IAM role and instance profile name of a stack's bastion.
pub fn role_name(stack: &str) -> String {
    format!("gatehouse-{stack}-bastion")
}

/// SSM parameter holding the bastion's host key.
pub fn host_key_parameter(stack: &str) -> String {
    format!("/gatehouse/{stack}/host_ed25519")
}

/// The stack's bucket for a stored gatehouse binary (`gatehouse_binary`): one per stack and
/// account, like the role (at most 10 + 28 + 1 + 12 = 51 characters of the 63 S3 allows).
pub fn binary_bucket(stack: &str, account: &str) -> String {
    format!("gatehouse-{stack}-{account}")
}

/// The object key of a stored binary: named by its content, so a bastion launched months
/// later still fetches exactly the binary its user data names.
pub fn binary_object(sha256: &str) -> String {
    format!("gatehouse/{sha256}")
}

/// The object in the stack's bucket that the replicas of a scaled-out stack share their
/// listing through (`aws.shared_snapshot`).
pub const SHARED_SNAPSHOT_OBJECT: &str = "directory/aws-directory.json";

/// The objects of the bucket a bastion may read, as an S3 ARN's resource part.
pub fn binary_object_arn_path(bucket: &str) -> String {
    format!("{bucket}/{}", binary_object("*"))
}

/// The queue of a stack's IAM change events (`[bastion] iam_events`), in `us-east-1` (at
/// most 10 + 28 + 11 = 49 characters of the 80 SQS allows).
pub fn event_queue_name(stack: &str) -> String {
    format!("gatehouse-{stack}-iam-events")
}

/// The EventBridge rule that puts IAM's change events on the queue, on the default bus of
/// `us-east-1` (at most 50 characters of the 64 EventBridge allows).
pub fn event_rule_name(stack: &str) -> String {
    format!("gatehouse-{stack}-iam-changes")
}

/// The queue's ARN in `account`.
pub fn event_queue_arn(stack: &str, account: &str) -> String {
    format!(
        "arn:{}:sqs:{IAM_EVENTS_REGION}:{account}:{}",
        crate::policy::partition(IAM_EVENTS_REGION),
        event_queue_name(stack)
    )
}

/// The rule's ARN in `account`: the only source the queue accepts messages from.
pub fn event_rule_arn(stack: &str, account: &str) -> String {
    format!(
        "arn:{}:events:{IAM_EVENTS_REGION}:{account}:rule/{}",
        crate::policy::partition(IAM_EVENTS_REGION),
        event_rule_name(stack)
    )
}

/// The stack's audit log group, in the stack's region: every bastion of the stack ships its
/// audit lines there (`aws.audit_log_group`), one stream per instance. At most
/// 10 + 28 + 6 = 44 characters of the 512 CloudWatch Logs allows.
pub fn audit_log_group(stack: &str) -> String {
    format!("/gatehouse/{stack}/audit")
}

/// The log group's ARN in `account`, as `logGroupArn` reports it and the tagging calls take
/// it (without the `:*` that IAM's other CloudWatch Logs actions are checked against).
pub fn audit_log_group_arn(region: &str, account: &str, stack: &str) -> String {
    format!(
        "arn:{}:logs:{region}:{account}:log-group:{}",
        crate::policy::partition(region),
        audit_log_group(stack)
    )
}

/// Logical key of the audit log group (its `gatehouse:resource` tag).
pub const AUDIT_LOG_GROUP_KEY: &str = "log-group/audit";

/// What `destroy` does with the stack's audit log group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditLog {
    /// Leave it, with its lines: the audit trail outlives the stack (the default).
    #[default]
    Keep,
    /// Delete it too (`destroy --delete-audit-log`).
    Delete,
}

/// The id of the rule's one target, the queue.
pub const EVENT_TARGET_ID: &str = "queue";
/// Logical keys of the queue and the rule (their `gatehouse:resource` tag).
pub const EVENT_QUEUE_KEY: &str = "queue/iam-events";
pub const EVENT_RULE_KEY: &str = "rule/iam-changes";
/// How long a receive waits for a message (SQS's longest long poll), so an idle replica makes
/// 3 calls a minute.
pub const EVENT_QUEUE_WAIT_SECS: u32 = 20;

/// The queue's attributes. A broadcast, not a work queue (see `gatehouse_aws::events`):
/// every replica receives every message and nobody deletes one, so a message is visible
/// again at once (visibility timeout 0) and kept for [`QUEUE_RETENTION_SECS`]. Encrypted
/// with SQS's own key, and only the rule may send to it.
pub fn event_queue_attributes(stack: &str, account: &str) -> BTreeMap<String, String> {
    let policy = crate::policy::event_queue_policy(
        &event_queue_arn(stack, account),
        &event_rule_arn(stack, account),
    );
    BTreeMap::from([
        (
            "MessageRetentionPeriod".to_owned(),
            QUEUE_RETENTION_SECS.to_string(),
        ),
        ("VisibilityTimeout".to_owned(), "0".to_owned()),
        (
            "ReceiveMessageWaitTimeSeconds".to_owned(),
            EVENT_QUEUE_WAIT_SECS.to_string(),
        ),
        ("SqsManagedSseEnabled".to_owned(), "true".to_owned()),
        ("Policy".to_owned(), policy.to_string()),
    ])
}

/// Whether an observed queue attribute is the desired one: the policy as JSON (SQS may
/// reformat it), the others as SQS writes them.
fn same_attribute(name: &str, desired: &str, observed: Option<&String>) -> bool {
    match (name, observed) {
        (_, None) => false,
        ("Policy", Some(o)) => {
            serde_json::from_str::<serde_json::Value>(o).ok()
                == serde_json::from_str::<serde_json::Value>(desired).ok()
        }
        (_, Some(o)) => o == desired,
    }
}

/// Key of the NAT gateway (and its route table) serving an AZ.
fn nat_key(az: &str) -> String {
    format!("nat/{az}")
}

fn nat_eip_key(az: &str) -> String {
    format!("eip/nat-{az}")
}

/// Tags every resource of the stack gets.
pub fn base_tags(spec: &Spec, key: &str) -> Tags {
    let mut tags = spec.tags.clone();
    tags.insert(
        "Name".into(),
        format!("{}-{}", spec.stack, key.replace('/', "-")),
    );
    tags.insert(TAG_STACK.into(), spec.stack.clone());
    tags.insert(TAG_RESOURCE.into(), key.into());
    tags
}

/// Tags of a private host: its `Name` is the name gatehouse users type.
pub fn host_tags(spec: &Spec, host: &crate::spec::Host) -> Tags {
    let mut tags = base_tags(spec, &format!("instance/{}", host.name));
    tags.insert("Name".into(), host.name.clone());
    tags.insert(TAG_GROUPS.into(), host.groups.join(","));
    let ports: Vec<String> = host.ports.iter().map(u16::to_string).collect();
    tags.insert(TAG_PORTS.into(), ports.join(","));
    if !host.login.is_empty() {
        tags.insert(TAG_LOGIN.into(), host.login.join(","));
    }
    tags
}

/// The NAT gateways the spec asks for: (AZ, key of the public subnet it lives in).
pub fn desired_nats(spec: &Spec) -> Vec<(String, String)> {
    match spec.nat {
        NatMode::None => vec![],
        NatMode::Single => spec
            .public_subnets()
            .next()
            .map(|s| vec![(s.az.clone(), format!("subnet/{}", s.name))])
            .unwrap_or_default(),
        NatMode::PerAz => {
            let mut out: Vec<(String, String)> = Vec::new();
            for az in &spec.azs {
                let wants = spec.private_subnets().any(|s| &s.az == az);
                let public = spec.public_subnets().find(|s| &s.az == az);
                if let (true, Some(p)) = (wants, public) {
                    out.push((az.clone(), format!("subnet/{}", p.name)));
                }
            }
            out
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

fn desired_tables(spec: &Spec) -> Vec<DesiredTable> {
    let mut tables = vec![DesiredTable {
        key: "rt/public".into(),
        routes: BTreeMap::from([(DEFAULT_ROUTE.to_string(), "igw".to_string())]),
        subnets: spec
            .public_subnets()
            .map(|s| format!("subnet/{}", s.name))
            .collect(),
    }];
    let private: Vec<_> = spec.private_subnets().collect();
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
        peer: Peer::GroupKey(replicas::BALANCER_SG_KEY.into()),
    };
    let ingress = if key == "sg/bastion" && spec.bastion.scaled_out() {
        vec![
            from_balancer(gatehouse_policy::SSH_PORT),
            from_balancer(crate::userdata::HEALTH_PORT),
        ]
    } else if key == "sg/bastion" || key == replicas::BALANCER_SG_KEY {
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

/// The instances the spec asks for: (key, launch spec, tags).
fn desired_instances(spec: &Spec) -> Vec<(String, LaunchSpec, Tags)> {
    let mut out = Vec::new();
    // Replicas are launched by their group (`replicas`), one bastion by the plan.
    out.extend((!spec.bastion.scaled_out()).then(|| {
        (
            "instance/bastion".to_string(),
            LaunchSpec {
                ami: spec.bastion.ami.clone(),
                instance_type: spec.bastion.instance_type.clone(),
                subnet: format!("subnet/{}", spec.bastion.subnet),
                security_group: "sg/bastion".into(),
                profile: Some(role_name(&spec.stack)),
                bastion: true,
                private_ip: None,
            },
            base_tags(spec, "instance/bastion"),
        )
    }));
    for h in &spec.hosts {
        out.push((
            format!("instance/{}", h.name),
            LaunchSpec {
                ami: h.ami.clone(),
                instance_type: h.instance_type.clone(),
                subnet: format!("subnet/{}", h.subnet),
                security_group: "sg/private".into(),
                profile: None,
                bastion: false,
                private_ip: h.private_ip.map(|ip| ip.to_string()),
            },
            host_tags(spec, h),
        ));
    }
    out
}

/// SHA-256 (hex) of a text.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(text.as_bytes()))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Tags in `desired` that `observed` lacks or holds with another value.
/// A login tag the spec no longer sets is emptied (the daemon reads an empty one as none): a
/// host taken out of EC2 Instance Connect in the spec gets no more pushes.
fn tag_drift(desired: &Tags, observed: &Tags) -> Tags {
    let mut drift: Tags = desired
        .iter()
        .filter(|(k, v)| observed.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !desired.contains_key(TAG_LOGIN)
        && observed
            .get(TAG_LOGIN)
            .is_some_and(|v| !v.trim().is_empty())
    {
        drift.insert(TAG_LOGIN.into(), String::new());
    }
    drift
}

/// Split observed resources by key: the kept one (lowest id) per key and the extras.
fn primary_by_key<T>(
    items: &[T],
    key: impl Fn(&T) -> (&str, &str),
) -> (BTreeMap<String, &T>, Vec<&T>) {
    let mut sorted: Vec<&T> = items.iter().collect();
    sorted.sort_by(|a, b| key(a).cmp(&key(b)));
    let mut primary = BTreeMap::new();
    let mut extra = Vec::new();
    for item in sorted {
        let (k, _) = key(item);
        if primary.contains_key(k) {
            extra.push(item);
        } else {
            primary.insert(k.to_string(), item);
        }
    }
    (primary, extra)
}

struct Planner {
    known: BTreeMap<String, String>,
    doomed: Observed,
    /// Route table associations of subnets being removed that sit in kept tables.
    doomed_associations: Vec<String>,
}

impl Planner {
    /// Id -> key for every kept resource (to read observed references).
    fn key_of(&self, id: &str) -> Option<&str> {
        self.known
            .iter()
            .find(|(_, v)| v.as_str() == id)
            .map(|(k, _)| k.as_str())
    }
}

/// Plan the changes that make AWS match the spec.
pub fn plan_apply(spec: &Spec, obs: &Observed) -> Result<Plan, PlanError> {
    let mut p = Planner {
        known: BTreeMap::new(),
        doomed: Observed::default(),
        doomed_associations: Vec::new(),
    };
    check_iam_ownership(spec, obs)?;
    let owned = only_ours(&spec.stack, obs);
    let obs = &owned;

    // ---- VPC ----
    let (vpcs, extra) = primary_by_key(&obs.vpcs, |v| (v.key.as_str(), v.id.as_str()));
    p.doomed.vpcs.extend(extra.into_iter().cloned());
    for (k, v) in &vpcs {
        if k != "vpc" {
            p.doomed.vpcs.push((*v).clone());
        }
    }
    let vpc = vpcs.get("vpc").copied();
    let desired_cidr = spec.vpc_cidr.to_string();
    let mut create = Vec::new();
    match vpc {
        Some(v) if v.cidr != desired_cidr => {
            return Err(PlanError::Immutable {
                resource: format!("vpc ({})", v.id),
                message: format!(
                    "cidr is {} but the spec says {desired_cidr}; a VPC's CIDR cannot change: destroy the stack first",
                    v.cidr
                ),
            });
        }
        Some(v) => {
            p.known.insert("vpc".into(), v.id.clone());
        }
        None => {}
    }

    // Everything below is decided with `known` holding the kept resources; steps that create
    // go to `create`, removals are derived from `doomed` at the end.
    let mut c = Creates {
        steps: &mut create,
        later: Vec::new(),
    };
    match vpc {
        None => {
            c.push(
                Sign::Create,
                "vpc",
                format!("cidr {desired_cidr}, DNS hostnames on"),
                Action::CreateVpc {
                    key: "vpc".into(),
                    cidr: desired_cidr.clone(),
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
        Some(v) => {
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
    }

    // ---- subnets ----
    let (subnets, extra) = primary_by_key(&obs.subnets, |s| (s.key.as_str(), s.id.as_str()));
    p.doomed.subnets.extend(extra.into_iter().cloned());
    let desired_subnets: BTreeMap<String, &crate::spec::Subnet> = spec
        .subnets
        .iter()
        .map(|s| (format!("subnet/{}", s.name), s))
        .collect();
    for (k, s) in &subnets {
        let keep = desired_subnets.get(k).is_some_and(|d| {
            d.cidr.to_string() == s.cidr && d.az == s.az && p.known.get("vpc") == Some(&s.vpc_id)
        });
        if keep {
            p.known.insert(k.clone(), s.id.clone());
        } else {
            p.doomed.subnets.push((*s).clone());
        }
    }
    for s in &spec.subnets {
        let key = format!("subnet/{}", s.name);
        let tags = base_tags(spec, &key);
        match p
            .known
            .get(&key)
            .and_then(|id| obs.subnets.iter().find(|o| &o.id == id))
        {
            Some(o) => c.retag(&key, &tags, &o.tags),
            None => {
                let tier = if s.tier == Tier::Public {
                    "public"
                } else {
                    "private"
                };
                let replacing = subnets.contains_key(&key);
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
        }
    }

    // ---- internet gateway ----
    let (igws, extra) = primary_by_key(&obs.igws, |g| (g.key.as_str(), g.id.as_str()));
    p.doomed.igws.extend(extra.into_iter().cloned());
    for (k, g) in &igws {
        if k == "igw" {
            p.known.insert(k.clone(), g.id.clone());
        } else {
            p.doomed.igws.push((*g).clone());
        }
    }
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
            c.push(
                Sign::Change,
                "igw",
                "attach to vpc",
                Action::AttachInternetGateway {
                    igw: "igw".into(),
                    vpc: "vpc".into(),
                },
            );
        }
        Some(g) => {
            let attached = p
                .known
                .get("vpc")
                .is_some_and(|v| g.attached_vpcs.contains(v));
            if !attached {
                c.push(
                    Sign::Change,
                    "igw",
                    "attach to vpc",
                    Action::AttachInternetGateway {
                        igw: "igw".into(),
                        vpc: "vpc".into(),
                    },
                );
            }
            c.retag("igw", &base_tags(spec, "igw"), &g.tags);
        }
    }

    // ---- elastic IPs (NAT and bastion) ----
    let nats_wanted = desired_nats(spec);
    let mut eip_keys: Vec<String> = nats_wanted.iter().map(|(az, _)| nat_eip_key(az)).collect();
    if spec.bastion.scaled_out() {
        eip_keys.extend(replicas::balancer_eip_keys(spec));
    } else {
        eip_keys.push("eip/bastion".into());
    }
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

    // ---- NAT gateways ----
    let (nats, extra) = primary_by_key(&obs.nats, |n| (n.key.as_str(), n.id.as_str()));
    p.doomed.nats.extend(extra.into_iter().cloned());
    let wanted: BTreeMap<String, (String, String)> = nats_wanted
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

    // ---- route tables ----
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
    // Where each kept subnet is associated now (in our tables): subnet id -> (assoc id, table key).
    let mut current: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (k, r) in &rts {
        if p.known.contains_key(k) {
            for a in &r.associations {
                current.insert(a.subnet_id.clone(), (a.id.clone(), k.clone()));
            }
        }
    }
    let mut claimed: BTreeSet<String> = BTreeSet::new();
    for t in &tables {
        let observed = rts.get(&t.key).filter(|_| p.known.contains_key(&t.key));
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
                        RouteTarget::Gateway(id) | RouteTarget::Nat(id) => {
                            p.key_of(id).map(str::to_string)
                        }
                        RouteTarget::Other(_) => None,
                    };
                    if now.as_deref() != Some(target.as_str()) {
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
        if let Some(r) = observed {
            for route in &r.routes {
                if !t.routes.contains_key(&route.dest) {
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
        }
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
    let doomed_subnet_ids: BTreeSet<&str> =
        p.doomed.subnets.iter().map(|s| s.id.as_str()).collect();
    for (subnet_id, (assoc, table)) in &current {
        if claimed.contains(subnet_id) {
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

    // ---- security groups ----
    let sg_keys: &[&str] = if spec.bastion.scaled_out() {
        &[replicas::BALANCER_SG_KEY, "sg/bastion", "sg/private"]
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
    // Every group before any rule: rules name other groups (the replicas admit the
    // balancer's group).
    let mut rule_steps = Vec::new();
    for &key in sg_keys {
        let (ingress, egress) = desired_rules(spec, key);
        let name = format!("{}-{}", spec.stack, key.trim_start_matches("sg/"));
        let observed = sgs.get(key).filter(|_| p.known.contains_key(key));
        match observed {
            None => {
                let description = if key == replicas::BALANCER_SG_KEY {
                    format!(
                        "gatehouse {}: SSH to the load balancer from allowed_cidrs only",
                        spec.stack
                    )
                } else if key == "sg/bastion" && spec.bastion.scaled_out() {
                    format!(
                        "gatehouse {}: SSH and health checks to the replicas from the load balancer only",
                        spec.stack
                    )
                } else if key == "sg/bastion" {
                    format!(
                        "gatehouse {}: SSH to the bastion from allowed_cidrs only",
                        spec.stack
                    )
                } else {
                    format!(
                        "gatehouse {}: private hosts, reachable from the bastion only",
                        spec.stack
                    )
                };
                c.push(
                    Sign::Create,
                    key,
                    format!("security group {name}"),
                    Action::CreateSecurityGroup {
                        key: key.into(),
                        vpc: "vpc".into(),
                        name,
                        description,
                        tags: base_tags(spec, key),
                    },
                );
                // A new group comes with an allow-all egress rule that AWS adds itself.
                let mut default_egress = egress.clone();
                default_egress.retain(|r| r.proto != "-1");
                for rule in ingress {
                    rule_steps.push(Step {
                        sign: Sign::Change,
                        resource: key.into(),
                        detail: format!("+ ingress {}", describe_rule(&rule)),
                        action: Action::Authorize {
                            group: key.into(),
                            ingress: true,
                            rule,
                        },
                    });
                }
                for rule in default_egress {
                    rule_steps.push(Step {
                        sign: Sign::Change,
                        resource: key.into(),
                        detail: format!("+ egress {}", describe_rule(&rule)),
                        action: Action::Authorize {
                            group: key.into(),
                            ingress: false,
                            rule,
                        },
                    });
                }
            }
            Some(g) => {
                c.retag(key, &base_tags(spec, key), &g.tags);
                let known = p.known.clone();
                let mut rules = Creates {
                    steps: &mut rule_steps,
                    later: Vec::new(),
                };
                diff_rules(&mut rules, key, true, &ingress, &g.ingress, &known);
                diff_rules(&mut rules, key, false, &egress, &g.egress, &known);
            }
        }
    }
    c.steps.extend(rule_steps);

    // ---- the binary's bucket ----
    let bucket = plan_bucket(spec, obs, &mut c, &mut p)?;
    // The bucket the binary comes from (a scaled-out stack has one for its shared listing
    // whatever the binary's source).
    let bucket =
        bucket.filter(|_| matches!(spec.bastion.binary, crate::spec::Binary::Stored { .. }));

    // ---- IAM change events: queue and rule (before the bastion that reads them) ----
    plan_events(spec, obs, &mut c, &mut p)?;

    // ---- the audit log group (before the bastion that ships to it) ----
    plan_audit_log(spec, obs, &mut c);

    // ---- IAM ----
    let role = role_name(&spec.stack);
    let policy = crate::policy::bastion_policy(spec, bucket.as_deref(), &obs.account);
    match &obs.role {
        None => {
            c.push(
                Sign::Create,
                format!("iam role {role}"),
                "assumable by EC2",
                Action::CreateRole {
                    name: role.clone(),
                    tags: base_tags(spec, "iam/role"),
                },
            );
            c.push(
                Sign::Create,
                format!("iam role {role}"),
                format!("inline policy {POLICY_NAME}"),
                Action::PutRolePolicy {
                    role: role.clone(),
                    policy: policy.clone(),
                },
            );
        }
        Some(r) => {
            if r.policy.as_ref() != Some(&policy) {
                let what = if r.policy.is_none() { "add" } else { "update" };
                c.push(
                    Sign::Change,
                    format!("iam role {role}"),
                    format!("{what} inline policy {POLICY_NAME}"),
                    Action::PutRolePolicy {
                        role: role.clone(),
                        policy: policy.clone(),
                    },
                );
            }
        }
    }
    match &obs.profile {
        None => {
            c.push(
                Sign::Create,
                format!("instance profile {role}"),
                "",
                Action::CreateInstanceProfile {
                    name: role.clone(),
                    tags: base_tags(spec, "iam/profile"),
                },
            );
            c.push(
                Sign::Change,
                format!("instance profile {role}"),
                format!("add role {role}"),
                Action::AddRoleToProfile {
                    profile: role.clone(),
                    role: role.clone(),
                },
            );
        }
        Some(pr) if !pr.roles.contains(&role) => c.push(
            Sign::Change,
            format!("instance profile {role}"),
            format!("add role {role}"),
            Action::AddRoleToProfile {
                profile: role.clone(),
                role: role.clone(),
            },
        ),
        Some(_) => {}
    }

    // ---- instances ----
    let desired = desired_instances(spec);
    // The replicas are the group's: it launches and replaces them (without the group, they
    // are removed like any instance the spec does not ask for).
    let instances: Vec<ObsInstance> = obs
        .instances
        .iter()
        .filter(|i| !(spec.bastion.scaled_out() && i.key == replicas::REPLICA_KEY))
        .cloned()
        .collect();
    let (insts, extra) = primary_by_key(&instances, |i| (i.key.as_str(), i.id.as_str()));
    p.doomed.instances.extend(extra.into_iter().cloned());
    let user_data_hash = p.known.get("vpc").map(|vpc| {
        sha256_hex(&crate::userdata::render(
            spec,
            vpc,
            &obs.account,
            bucket.as_deref(),
        ))
    });
    let mut replaced: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, inst) in &insts {
        let Some((_, launch, _)) = desired.iter().find(|(dk, _, _)| dk == k) else {
            p.doomed.instances.push((*inst).clone());
            continue;
        };
        let reasons = instance_mismatch(inst, launch, &p.known, user_data_hash.as_deref());
        if reasons.is_empty() {
            p.known.insert(k.clone(), inst.id.clone());
        } else {
            replaced.insert(k.clone(), reasons);
            p.doomed.instances.push((*inst).clone());
        }
    }
    for (key, launch, tags) in &desired {
        match p
            .known
            .get(key)
            .and_then(|id| obs.instances.iter().find(|i| &i.id == id))
        {
            Some(i) => c.retag(key, tags, &i.tags),
            None => {
                let detail = match replaced.get(key) {
                    Some(reasons) => format!("replace: {}", reasons.join("; ")),
                    None => format!(
                        "{} {} in {}",
                        launch.instance_type, launch.ami, launch.subnet
                    ),
                };
                c.push(
                    Sign::Create,
                    key,
                    detail,
                    Action::RunInstance {
                        key: key.clone(),
                        launch: launch.clone(),
                        tags: tags.clone(),
                    },
                );
            }
        }
    }

    // ---- the replicas behind the balancer ----
    replicas::plan_replicas(spec, obs, &mut c, &mut p, user_data_hash.as_deref());

    // ---- bastion address ----
    let bastion_known = p.known.get("instance/bastion").cloned();
    let eip_attached = eips
        .get("eip/bastion")
        .and_then(|e| e.instance_id.as_ref())
        .is_some_and(|i| Some(i) == bastion_known.as_ref());
    if !eip_attached && !spec.bastion.scaled_out() {
        c.push(
            Sign::Change,
            "eip/bastion",
            "associate with instance/bastion",
            Action::AssociateAddress {
                eip: "eip/bastion".into(),
                instance: "instance/bastion".into(),
            },
        );
    }

    // ---- assemble: removals first ----
    let later = std::mem::take(&mut c.later);
    let kept_groups: Vec<ObsSecurityGroup> = obs
        .security_groups
        .iter()
        .filter(|g| !p.doomed.security_groups.iter().any(|d| d.id == g.id))
        .cloned()
        .collect();
    let mut steps = removal_steps(&p.doomed, &p.doomed_associations, &kept_groups);
    steps.extend(create);
    steps.extend(later);
    Ok(Plan {
        stack: spec.stack.clone(),
        steps,
        known: p.known,
        account: obs.account.clone(),
        kept: Vec::new(),
    })
}

/// The IAM change-event steps (`[bastion] iam_events`): the queue with its attributes and
/// policy, the rule with its pattern, enabled, and exactly one target, the queue; all tagged.
/// Without the switch, a queue and rule of the stack are removed. With it, a CloudTrail trail
/// must deliver IAM's events ([`check_iam_event_trails`]).
fn plan_events(
    spec: &Spec,
    obs: &Observed,
    c: &mut Creates,
    p: &mut Planner,
) -> Result<(), PlanError> {
    if !spec.bastion.iam_events {
        p.doomed.rule = obs.rule.clone();
        p.doomed.queue = obs.queue.clone();
        return Ok(());
    }
    check_iam_event_trails(obs)?;
    if obs.account.is_empty() {
        return Err(PlanError::Immutable {
            resource: "iam events".into(),
            message: "the AWS account is not known (STS GetCallerIdentity), so the queue and \
                      the rule have no ARN"
                .into(),
        });
    }
    let stack = &spec.stack;
    let account = &obs.account;
    let queue_name = event_queue_name(stack);
    let rule_name = event_rule_name(stack);
    let queue_arn = event_queue_arn(stack, account);

    let attributes = event_queue_attributes(stack, account);
    let tags = base_tags(spec, EVENT_QUEUE_KEY);
    let resource = format!("sqs queue {queue_name}");
    match &obs.queue {
        None => c.push(
            Sign::Create,
            &resource,
            format!(
                "IAM change events in {IAM_EVENTS_REGION}, kept {QUEUE_RETENTION_SECS} s, \
                 sent only by rule {rule_name}"
            ),
            Action::CreateEventQueue {
                key: EVENT_QUEUE_KEY.into(),
                name: queue_name.clone(),
                attributes,
                tags,
            },
        ),
        Some(q) => {
            p.known.insert(EVENT_QUEUE_KEY.into(), q.url.clone());
            let drifted: Vec<&str> = attributes
                .iter()
                .filter(|(k, v)| !same_attribute(k, v, q.attributes.get(*k)))
                .map(|(k, _)| k.as_str())
                .collect();
            if !drifted.is_empty() {
                // All of them, not only the drifted: one call puts the queue back whole (and
                // a SetQueueAttributes that leaves the policy out must not be able to lose it).
                c.push(
                    Sign::Change,
                    &resource,
                    format!("attributes {}", drifted.join(", ")),
                    Action::SetEventQueueAttributes {
                        queue: EVENT_QUEUE_KEY.into(),
                        attributes: attributes.clone(),
                    },
                );
            }
            let drift = tag_drift(&tags, &q.tags);
            if !drift.is_empty() {
                let names: Vec<&str> = drift.keys().map(String::as_str).collect();
                c.push(
                    Sign::Change,
                    &resource,
                    format!("tags {}", names.join(", ")),
                    Action::TagEventQueue {
                        queue: EVENT_QUEUE_KEY.into(),
                        tags: drift,
                    },
                );
            }
        }
    }

    let pattern = iam_event_pattern();
    let tags = base_tags(spec, EVENT_RULE_KEY);
    let resource = format!("events rule {rule_name}");
    let put_rule = |tags: Tags| Action::PutEventRule {
        key: EVENT_RULE_KEY.into(),
        name: rule_name.clone(),
        pattern: pattern.clone(),
        tags,
    };
    let targets: &[ObsTarget] = match &obs.rule {
        None => {
            c.push(
                Sign::Create,
                &resource,
                format!(
                    "the IAM calls that change who may log in, on the default bus of \
                     {IAM_EVENTS_REGION}"
                ),
                put_rule(tags),
            );
            &[]
        }
        Some(r) => {
            p.known.insert(EVENT_RULE_KEY.into(), r.arn.clone());
            let mut what = Vec::new();
            if r.pattern.as_ref() != Some(&pattern) {
                what.push("event pattern".to_owned());
            }
            if r.state != "ENABLED" {
                what.push(format!("state {} -> ENABLED", r.state));
            }
            if !what.is_empty() {
                c.push(
                    Sign::Change,
                    &resource,
                    what.join(", "),
                    put_rule(tags.clone()),
                );
            }
            let drift = tag_drift(&tags, &r.tags);
            if !drift.is_empty() {
                let names: Vec<&str> = drift.keys().map(String::as_str).collect();
                c.push(
                    Sign::Change,
                    &resource,
                    format!("tags {}", names.join(", ")),
                    Action::TagEventRule {
                        rule: EVENT_RULE_KEY.into(),
                        tags: drift,
                    },
                );
            }
            &r.targets
        }
    };
    let extra: Vec<String> = targets
        .iter()
        .filter(|t| t.id != EVENT_TARGET_ID)
        .map(|t| t.id.clone())
        .collect();
    if !extra.is_empty() {
        c.push(
            Sign::Change,
            &resource,
            format!("- targets {}", extra.join(", ")),
            Action::RemoveEventTargets {
                rule: rule_name.clone(),
                ids: extra,
            },
        );
    }
    let target_ok = targets
        .iter()
        .any(|t| t.id == EVENT_TARGET_ID && t.arn == queue_arn && !t.rewrites);
    if !target_ok {
        c.push(
            Sign::Change,
            &resource,
            format!("target {EVENT_TARGET_ID} -> {queue_name}, events as they are"),
            Action::PutEventTarget {
                rule: rule_name,
                id: EVENT_TARGET_ID.into(),
                arn: queue_arn,
            },
        );
    }
    Ok(())
}

/// The precondition of `[bastion] iam_events`: EventBridge sees IAM's API calls only through
/// CloudTrail, in `us-east-1`, from a trail that is logging, records management write events
/// and reaches `us-east-1` (multi-region, or there with global service events).
fn check_iam_event_trails(obs: &Observed) -> Result<(), PlanError> {
    let Some(trails) = &obs.trails else {
        return Err(PlanError::Immutable {
            resource: "iam events".into(),
            message: "the CloudTrail trails were not read".into(),
        });
    };
    if trails.iter().any(ObsTrail::delivers_iam_events) {
        return Ok(());
    }
    let found = if trails.is_empty() {
        format!("The account has no trail that {IAM_EVENTS_REGION} sees.")
    } else {
        let each: Vec<String> = trails
            .iter()
            .map(|t| {
                let why = if !t.reaches_iam_events_region() {
                    if t.home_region == IAM_EVENTS_REGION {
                        "without global service events".to_owned()
                    } else {
                        format!("single-region, in {}", t.home_region)
                    }
                } else if t.logging != Some(true) {
                    "logging is off".to_owned()
                } else {
                    "its event selectors record no management write events".to_owned()
                };
                format!("{} ({why})", t.name)
            })
            .collect();
        format!("Trails: {}.", each.join("; "))
    };
    Err(PlanError::NoIamEventTrail { found })
}

/// The bucket steps: a stored binary needs the stack's bucket, secured, holding
/// `gatehouse/<sha256>` and nothing else (older binaries are deleted after the bastion that
/// used them is replaced); a spec without one needs no bucket. Returns the bucket name when the
/// spec needs one.
fn plan_bucket(
    spec: &Spec,
    obs: &Observed,
    c: &mut Creates,
    p: &mut Planner,
) -> Result<Option<String>, PlanError> {
    let stored = match &spec.bastion.binary {
        crate::spec::Binary::Stored { path, sha256, size } => Some((path, sha256, size)),
        crate::spec::Binary::Url { .. } => None,
    };
    let shared = spec.bastion.scaled_out();
    if stored.is_none() && !shared {
        if let Some(b) = &obs.bucket {
            p.doomed.bucket = Some(b.clone());
        }
        return Ok(None);
    }
    if stored.is_some_and(|(_, sha256, _)| sha256 == crate::spec::UNREAD_SHA256) {
        return Err(PlanError::Immutable {
            resource: "bucket".into(),
            message: "the spec was loaded without reading gatehouse_binary".into(),
        });
    }
    if obs.account.is_empty() {
        return Err(PlanError::Immutable {
            resource: "bucket".into(),
            message:
                "the AWS account is not known (STS GetCallerIdentity), so the bucket has no name"
                    .into(),
        });
    }
    let name = binary_bucket(&spec.stack, &obs.account);
    let policy = crate::policy::bucket_policy(&spec.region, &name);
    let tags = base_tags(spec, "bucket");
    let resource = format!("bucket {name}");
    let objects = match &obs.bucket {
        None => {
            c.push(
                Sign::Create,
                &resource,
                match (stored.is_some(), shared) {
                    (true, true) => {
                        "private bucket for the gatehouse binary and the replicas' listing"
                    }
                    (true, false) => "private bucket for the gatehouse binary",
                    _ => "private bucket for the replicas' listing",
                },
                Action::CreateBucket {
                    key: "bucket".into(),
                    name: name.clone(),
                    tags,
                },
            );
            c.push(
                Sign::Change,
                &resource,
                "block public access, encrypt (SSE-S3), TLS-only policy",
                Action::SecureBucket {
                    bucket: "bucket".into(),
                    policy,
                },
            );
            Vec::new()
        }
        Some(b) => {
            p.known.insert("bucket".into(), b.name.clone());
            let drift = tag_drift(&tags, &b.tags);
            if !drift.is_empty() {
                let names: Vec<&str> = drift.keys().map(String::as_str).collect();
                let mut all = b.tags.clone();
                all.extend(drift.clone());
                c.push(
                    Sign::Change,
                    &resource,
                    format!("tags {}", names.join(", ")),
                    Action::TagBucket {
                        bucket: "bucket".into(),
                        tags: all,
                    },
                );
            }
            if !b.public_access_blocked || !b.encrypted || b.policy.as_ref() != Some(&policy) {
                let mut what = Vec::new();
                if !b.public_access_blocked {
                    what.push("block public access");
                }
                if !b.encrypted {
                    what.push("encrypt (SSE-S3)");
                }
                if b.policy.as_ref() != Some(&policy) {
                    what.push("TLS-only policy");
                }
                c.push(
                    Sign::Change,
                    &resource,
                    what.join(", "),
                    Action::SecureBucket {
                        bucket: "bucket".into(),
                        policy,
                    },
                );
            }
            b.objects.clone()
        }
    };
    // What the bucket holds: the binary the user data names, and the listing the replicas
    // share (written by the daemons, never by apply).
    let mut wanted = Vec::new();
    if let Some((path, sha256, size)) = stored {
        let object = binary_object(sha256);
        if !objects.contains(&object) {
            c.push(
                Sign::Create,
                format!("{resource}/{object}"),
                format!("upload {} ({size} bytes)", path.display()),
                Action::PutBinary {
                    bucket: "bucket".into(),
                    object: object.clone(),
                    path: path.clone(),
                    sha256: sha256.clone(),
                },
            );
        }
        wanted.push(object);
    }
    if shared {
        wanted.push(SHARED_SNAPSHOT_OBJECT.to_owned());
    }
    for stale in objects.iter().filter(|o| !wanted.contains(o)) {
        c.later.push(Step {
            sign: Sign::Delete,
            resource: format!("{resource}/{stale}"),
            detail: "no longer named by the bastion's user data".into(),
            action: Action::DeleteObject {
                bucket: "bucket".into(),
                object: stale.clone(),
            },
        });
    }
    Ok(Some(name))
}

/// The collector for creation and repair steps.
struct Creates<'s> {
    steps: &'s mut Vec<Step>,
    /// Steps that go after every creation (deleting what the replaced bastion used).
    later: Vec<Step>,
}

impl Creates<'_> {
    fn push(
        &mut self,
        sign: Sign,
        resource: impl Into<String>,
        detail: impl Into<String>,
        action: Action,
    ) {
        self.steps.push(Step {
            sign,
            resource: resource.into(),
            detail: detail.into(),
            action,
        });
    }

    fn retag(&mut self, key: &str, desired: &Tags, observed: &Tags) {
        let drift = tag_drift(desired, observed);
        if !drift.is_empty() {
            let names: Vec<&str> = drift.keys().map(String::as_str).collect();
            self.push(
                Sign::Change,
                key,
                format!("tags {}", names.join(", ")),
                Action::SetTags {
                    resource: key.into(),
                    tags: drift,
                },
            );
        }
    }
}

fn check_iam_ownership(spec: &Spec, obs: &Observed) -> Result<(), PlanError> {
    let ours = |tags: &Tags| tags.get(TAG_STACK) == Some(&spec.stack);
    if let Some(r) = &obs.role {
        if !ours(&r.tags) {
            return Err(PlanError::NotOurs {
                what: "IAM role",
                name: r.name.clone(),
                stack: spec.stack.clone(),
            });
        }
    }
    if let Some(p) = &obs.profile {
        if !ours(&p.tags) {
            return Err(PlanError::NotOurs {
                what: "IAM instance profile",
                name: p.name.clone(),
                stack: spec.stack.clone(),
            });
        }
    }
    if spec.bastion.iam_events {
        if let Some(q) = obs.queue.as_ref().filter(|q| !ours(&q.tags)) {
            return Err(PlanError::NotOurs {
                what: "SQS queue",
                name: q.name.clone(),
                stack: spec.stack.clone(),
            });
        }
        if let Some(r) = obs.rule.as_ref().filter(|r| !ours(&r.tags)) {
            return Err(PlanError::NotOurs {
                what: "EventBridge rule",
                name: r.name.clone(),
                stack: spec.stack.clone(),
            });
        }
    }
    // A scaled-out stack's balancer, target group and group have fixed names.
    if spec.bastion.scaled_out() {
        let named = [
            (
                "Network Load Balancer",
                obs.balancer.as_ref().map(|b| (&b.name, &b.tags)),
            ),
            (
                "target group",
                obs.target_group.as_ref().map(|t| (&t.name, &t.tags)),
            ),
            (
                "Auto Scaling group",
                obs.group.as_ref().map(|g| (&g.name, &g.tags)),
            ),
        ];
        for (what, found) in named {
            if let Some((name, _)) = found.filter(|(_, tags)| !ours(tags)) {
                return Err(PlanError::NotOurs {
                    what,
                    name: name.clone(),
                    stack: spec.stack.clone(),
                });
            }
        }
    }
    // The stack always has its audit log group: one of the name without the tag is refused.
    if let Some(g) = obs.log_group.as_ref().filter(|g| !ours(&g.tags)) {
        return Err(PlanError::NotOurs {
            what: "CloudWatch Logs log group",
            name: g.name.clone(),
            stack: spec.stack.clone(),
        });
    }
    let bucket_needed = matches!(spec.bastion.binary, crate::spec::Binary::Stored { .. })
        || spec.bastion.scaled_out();
    if let (true, Some(b)) = (bucket_needed, &obs.bucket) {
        if !b.is_ours(&spec.stack) {
            return Err(PlanError::NotOurs {
                what: "S3 bucket",
                name: b.name.clone(),
                stack: spec.stack.clone(),
            });
        }
    }
    Ok(())
}

fn instance_mismatch(
    inst: &ObsInstance,
    launch: &LaunchSpec,
    known: &BTreeMap<String, String>,
    user_data_hash: Option<&str>,
) -> Vec<String> {
    let mut reasons = Vec::new();
    if inst.ami != launch.ami {
        reasons.push(format!("ami {} -> {}", inst.ami, launch.ami));
    }
    if inst.instance_type != launch.instance_type {
        reasons.push(format!(
            "type {} -> {}",
            inst.instance_type, launch.instance_type
        ));
    }
    if known.get(&launch.subnet) != Some(&inst.subnet_id) {
        reasons.push(format!("subnet {} -> {}", inst.subnet_id, launch.subnet));
    }
    let sg = known.get(&launch.security_group);
    if sg.is_none() || inst.security_groups.len() != 1 || inst.security_groups.first() != sg {
        reasons.push(format!("security groups -> {}", launch.security_group));
    }
    if let Some(profile) = &launch.profile {
        let ok = inst
            .profile_arn
            .as_ref()
            .is_some_and(|a| a.ends_with(&format!("/{profile}")));
        if !ok {
            reasons.push(format!("instance profile -> {profile}"));
        }
    }
    if launch.bastion && inst.tags.get(TAG_USER_DATA).map(String::as_str) != user_data_hash {
        reasons.push("user data changed".into());
    }
    if inst.http_tokens.as_deref().is_some_and(|t| t != "required")
        || inst.hop_limit.is_some_and(|h| h != 1)
    {
        reasons.push("IMDSv2 not enforced".into());
    }
    if let Some(ip) = &launch.private_ip {
        if inst.private_ip.as_ref() != Some(ip) {
            reasons.push(format!("private ip -> {ip}"));
        }
    }
    reasons
}

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

fn describe_target(t: &RouteTarget) -> String {
    match t {
        RouteTarget::Gateway(id) | RouteTarget::Nat(id) | RouteTarget::Other(id) => id.clone(),
    }
}

/// Keep only what carries `gatehouse:stack = stack`. The observer already asks AWS for that
/// tag; this second check makes the invariant hold even if a filter were ignored.
pub fn only_ours(stack: &str, obs: &Observed) -> Observed {
    let ours = |tags: &Tags| tags.get(TAG_STACK).map(String::as_str) == Some(stack);
    let mut o = obs.clone();
    o.vpcs.retain(|x| ours(&x.tags));
    o.subnets.retain(|x| ours(&x.tags));
    o.igws.retain(|x| ours(&x.tags));
    o.eips.retain(|x| ours(&x.tags));
    o.nats.retain(|x| ours(&x.tags));
    o.route_tables.retain(|x| ours(&x.tags));
    o.security_groups.retain(|x| ours(&x.tags));
    o.instances.retain(|x| ours(&x.tags));
    o.parameters.retain(|x| ours(&x.tags));
    o.role = o.role.filter(|x| ours(&x.tags));
    o.profile = o.profile.filter(|x| ours(&x.tags));
    o.bucket = o.bucket.filter(|x| x.is_ours(stack));
    o.queue = o.queue.filter(|x| ours(&x.tags));
    o.rule = o.rule.filter(|x| ours(&x.tags));
    o.log_group = o.log_group.filter(|x| ours(&x.tags));
    o.launch_templates.retain(|x| ours(&x.tags));
    o.balancer = o.balancer.filter(|x| ours(&x.tags));
    o.target_group = o.target_group.filter(|x| ours(&x.tags));
    o.group = o.group.filter(|x| ours(&x.tags));
    // Listeners are read from the balancer: only the stack's balancer's count.
    if o.balancer.is_none() {
        o.listeners.clear();
    }
    // The default group belongs to the VPC: only consider it when the VPC is ours.
    if o.vpcs.is_empty() {
        o.default_sg = None;
    }
    o
}

/// Plan the removal of everything observed for a stack (and nothing else). The audit log
/// group goes only with [`AuditLog::Delete`]; kept, it is named in [`Plan::kept`] with its
/// retention, and so is a log group of its name that is not the stack's (never touched).
pub fn plan_destroy(stack: &str, obs: &Observed, audit: AuditLog) -> Plan {
    let mut kept = Vec::new();
    if let Some(g) = obs
        .log_group
        .as_ref()
        .filter(|g| g.tags.get(TAG_STACK).map(String::as_str) != Some(stack))
    {
        kept.push(Kept {
            resource: format!("log group {}", g.name),
            detail: format!("does not carry {TAG_STACK} = {stack}: not the stack's, left alone"),
        });
    }
    let mut obs = only_ours(stack, obs);
    if audit == AuditLog::Keep {
        if let Some(g) = obs.log_group.take() {
            kept.push(Kept {
                resource: format!("log group {}", g.name),
                detail: format!(
                    "the audit trail outlives the stack ({}); `destroy --delete-audit-log` \
                     deletes it",
                    describe_retention(g.retention_days)
                ),
            });
        }
    }
    Plan {
        stack: stack.to_string(),
        steps: removal_steps(&obs, &[], &[]),
        known: BTreeMap::new(),
        account: obs.account.clone(),
        kept,
    }
}

/// A log group's retention in words.
pub fn describe_retention(days: Option<i32>) -> String {
    match days {
        Some(days) => format!("retention {days} days"),
        None => "retention: never expires".to_owned(),
    }
}

/// The audit log group: `/gatehouse/<stack>/audit`, with the spec's retention and the stack's
/// tags. Never removed by apply (only `destroy --delete-audit-log` deletes it).
fn plan_audit_log(spec: &Spec, obs: &Observed, c: &mut Creates) {
    let name = audit_log_group(&spec.stack);
    let days = spec.bastion.audit_retention_days;
    let tags = base_tags(spec, AUDIT_LOG_GROUP_KEY);
    let resource = format!("log group {name}");
    match &obs.log_group {
        None => c.push(
            Sign::Create,
            &resource,
            format!(
                "the bastions' audit lines, retention {days} days; destroy keeps it \
                 (--delete-audit-log deletes it)"
            ),
            Action::CreateAuditLogGroup {
                name,
                tags,
                retention_days: days,
            },
        ),
        Some(g) => {
            if g.retention_days != Some(days) {
                c.push(
                    Sign::Change,
                    &resource,
                    format!(
                        "{} -> retention {days} days",
                        describe_retention(g.retention_days)
                    ),
                    Action::SetAuditLogRetention {
                        name: g.name.clone(),
                        retention_days: days,
                    },
                );
            }
            let drift = tag_drift(&tags, &g.tags);
            if !drift.is_empty() {
                let names: Vec<&str> = drift.keys().map(String::as_str).collect();
                c.push(
                    Sign::Change,
                    &resource,
                    format!("tags {}", names.join(", ")),
                    Action::TagAuditLogGroup {
                        arn: g.arn.clone(),
                        tags: drift,
                    },
                );
            }
        }
    }
}

/// Removal steps for the given resources, in reverse dependency order.
/// `kept_groups`: security groups that stay, whose rules naming a doomed group go first.
fn removal_steps(
    doomed: &Observed,
    extra_associations: &[String],
    kept_groups: &[ObsSecurityGroup],
) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut push = |resource: String, detail: &str, action: Action| {
        steps.push(Step {
            sign: Sign::Delete,
            resource,
            detail: detail.to_string(),
            action,
        })
    };
    // The replicas first (the group takes its instances along), then what sends them
    // traffic: the listeners, the balancer (its addresses free after it), its target group.
    if let Some(g) = &doomed.group {
        push(
            format!("{} ({})", g.key, g.name),
            &format!("auto scaling group and its {} replica(s)", g.members.len()),
            Action::DeleteAutoScalingGroup {
                name: g.name.clone(),
            },
        );
    }
    for l in &doomed.listeners {
        push(
            format!("listener {}:{}", l.protocol, l.port),
            "",
            Action::DeleteListener { arn: l.arn.clone() },
        );
    }
    if let Some(b) = &doomed.balancer {
        push(
            format!("{} ({})", b.key, b.name),
            "network load balancer",
            Action::DeleteLoadBalancer { arn: b.arn.clone() },
        );
    }
    if let Some(t) = &doomed.target_group {
        push(
            format!("{} ({})", t.key, t.name),
            "target group",
            Action::DeleteTargetGroup { arn: t.arn.clone() },
        );
    }
    for t in &doomed.launch_templates {
        push(
            format!("{} ({})", t.key, t.id),
            "launch template",
            Action::DeleteLaunchTemplate { id: t.id.clone() },
        );
    }
    for i in &doomed.instances {
        push(
            format!("{} ({})", i.key, i.id),
            "terminate instance",
            Action::TerminateInstance { id: i.id.clone() },
        );
    }
    for n in &doomed.nats {
        push(
            format!("{} ({})", n.key, n.id),
            "NAT gateway",
            Action::DeleteNatGateway { id: n.id.clone() },
        );
    }
    for e in &doomed.eips {
        push(
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
        push(
            a.clone(),
            "route table association",
            Action::Disassociate {
                association_id: a.clone(),
            },
        );
    }
    for r in &doomed.route_tables {
        push(
            format!("{} ({})", r.key, r.id),
            "route table",
            Action::DeleteRouteTable {
                id: r.id.clone(),
                association_ids: r.associations.iter().map(|a| a.id.clone()).collect(),
            },
        );
    }
    for s in &doomed.subnets {
        push(
            format!("{} ({})", s.key, s.id),
            &format!("subnet {}", s.cidr),
            Action::DeleteSubnet { id: s.id.clone() },
        );
    }
    let doomed_ids: BTreeSet<&str> = doomed
        .security_groups
        .iter()
        .map(|g| g.id.as_str())
        .collect();
    for g in kept_groups {
        let refs: Vec<Rule> = g
            .ingress
            .iter()
            .filter(|r| matches!(&r.peer, Peer::Group(id) if doomed_ids.contains(id.as_str())))
            .cloned()
            .collect();
        if !refs.is_empty() {
            push(
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
        let refs: Vec<Rule> = g
            .ingress
            .iter()
            .filter(|r| matches!(r.peer, Peer::Group(_)))
            .cloned()
            .collect();
        if !refs.is_empty() {
            push(
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
        push(
            format!("{} ({})", g.key, g.id),
            "security group",
            Action::DeleteSecurityGroup { id: g.id.clone() },
        );
    }
    for g in &doomed.igws {
        push(
            format!("{} ({})", g.key, g.id),
            "internet gateway",
            Action::DeleteInternetGateway {
                id: g.id.clone(),
                attached_vpcs: g.attached_vpcs.clone(),
            },
        );
    }
    for v in &doomed.vpcs {
        push(
            format!("{} ({})", v.key, v.id),
            &format!("vpc {}", v.cidr),
            Action::DeleteVpc { id: v.id.clone() },
        );
    }
    if let Some(p) = &doomed.profile {
        push(
            format!("instance profile {}", p.name),
            "",
            Action::DeleteInstanceProfile {
                name: p.name.clone(),
                roles: p.roles.clone(),
            },
        );
    }
    if let Some(r) = &doomed.role {
        push(
            format!("iam role {}", r.name),
            "",
            Action::DeleteRole {
                name: r.name.clone(),
                has_policy: r.policy.is_some(),
            },
        );
    }
    if let Some(b) = &doomed.bucket {
        push(
            format!("bucket {}", b.name),
            &format!("and its {} object(s)", b.objects.len()),
            Action::DeleteBucket {
                name: b.name.clone(),
            },
        );
    }
    for prm in &doomed.parameters {
        push(
            format!("ssm parameter {}", prm.name),
            "",
            Action::DeleteParameter {
                name: prm.name.clone(),
            },
        );
    }
    // The rule first: no more messages for a queue about to go.
    if let Some(r) = &doomed.rule {
        push(
            format!("events rule {}", r.name),
            &format!("and its {} target(s)", r.targets.len()),
            Action::DeleteEventRule {
                name: r.name.clone(),
                target_ids: r.targets.iter().map(|t| t.id.clone()).collect(),
            },
        );
    }
    if let Some(q) = &doomed.queue {
        push(
            format!("sqs queue {}", q.name),
            "",
            Action::DeleteEventQueue { url: q.url.clone() },
        );
    }
    // Last, and only when asked (`destroy --delete-audit-log`): the audit trail.
    if let Some(g) = &doomed.log_group {
        push(
            format!("log group {}", g.name),
            "the audit trail, with every line in it",
            Action::DeleteAuditLogGroup {
                name: g.name.clone(),
            },
        );
    }
    steps
}

#[cfg(test)]
mod tests;
