//! Planner tests with no AWS: a tiny in-memory "AWS" (`Fake`) applies plan steps to an
//! [`Observed`] the way EC2/IAM would, so convergence, ordering, drift and the stack-tag
//! invariant are checked as pure functions.

use super::*;
use crate::digest::sha256_hex;
use crate::names::*;
use crate::spec::parse;

const SPEC: &str = r#"
[stack]
name = "lab"
region = "eu-central-1"

[vpc]
cidr = "10.0.0.0/16"
azs = ["eu-central-1a", "eu-central-1b"]
nat = "NAT"

[[subnets]]
name = "dmz-a"
tier = "public"
cidr = "10.0.0.0/24"
az = "eu-central-1a"

[[subnets]]
name = "dmz-b"
tier = "public"
cidr = "10.0.1.0/24"
az = "eu-central-1b"

[[subnets]]
name = "private-a"
tier = "private"
cidr = "10.0.10.0/24"
az = "eu-central-1a"

[[subnets]]
name = "private-b"
tier = "private"
cidr = "10.0.11.0/24"
az = "eu-central-1b"

[bastion]
subnet = "dmz-a"
ami = "ami-0123456789abcdef0"
allowed_cidrs = ["198.51.100.0/24"]
gatehouse_download_url = "https://example.org/gatehouse"

[private]
ports = [22, 8888]

[[hosts]]
name = "jupyter"
subnet = "private-a"
ami = "ami-0123456789abcdef0"
groups = ["research"]
ports = [22, 8888]
"#;

fn spec(nat: &str) -> Spec {
    parse("t.toml", &SPEC.replace("NAT", nat), None).expect("valid spec")
}

/// An in-memory AWS that applies plan steps to an `Observed`.
struct Fake {
    obs: Observed,
    next: u32,
}

impl Fake {
    /// An empty account (STS always names one; the alarm topic's ARN needs it).
    fn new() -> Fake {
        Fake {
            obs: Observed {
                account: "123456789012".into(),
                ..Observed::default()
            },
            next: 0,
        }
    }

    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}-{:04}", self.next)
    }

    fn apply(&mut self, spec: &Spec, plan: &Plan) {
        let mut ids = plan.known.clone();
        for step in &plan.steps {
            self.step(spec, &mut ids, &step.action);
        }
    }

    /// Plan and apply until the plan is empty; returns the number of rounds (must be 1).
    fn converge(&mut self, spec: &Spec) -> usize {
        for round in 1..=3 {
            let plan = plan_apply(spec, &self.obs).expect("plan");
            if plan.is_empty() {
                return round - 1;
            }
            self.apply(spec, &plan);
        }
        let plan = plan_apply(spec, &self.obs).expect("plan");
        panic!("did not converge:\n{}", plan.render());
    }

    fn bucket(&mut self) -> &mut ObsBucket {
        self.obs.bucket.as_mut().expect("the bucket exists")
    }

    fn all_tags_mut(&mut self, id: &str) -> Option<&mut Tags> {
        let o = &mut self.obs;
        o.vpcs
            .iter_mut()
            .find(|x| x.id == id)
            .map(|x| &mut x.tags)
            .or_else(|| {
                o.subnets
                    .iter_mut()
                    .find(|x| x.id == id)
                    .map(|x| &mut x.tags)
                    .or_else(|| {
                        o.igws
                            .iter_mut()
                            .find(|x| x.id == id)
                            .map(|x| &mut x.tags)
                            .or_else(|| {
                                o.eips
                                    .iter_mut()
                                    .find(|x| x.allocation_id == id)
                                    .map(|x| &mut x.tags)
                                    .or_else(|| {
                                        o.nats
                                            .iter_mut()
                                            .find(|x| x.id == id)
                                            .map(|x| &mut x.tags)
                                            .or_else(|| {
                                                o.route_tables
                                                    .iter_mut()
                                                    .find(|x| x.id == id)
                                                    .map(|x| &mut x.tags)
                                                    .or_else(|| {
                                                        o.security_groups
                                                            .iter_mut()
                                                            .find(|x| x.id == id)
                                                            .map(|x| &mut x.tags)
                                                            .or_else(|| {
                                                                o.instances
                                                                    .iter_mut()
                                                                    .find(|x| x.id == id)
                                                                    .map(|x| &mut x.tags)
                                                            })
                                                    })
                                            })
                                    })
                            })
                    })
            })
    }

    fn step(&mut self, spec: &Spec, ids: &mut BTreeMap<String, String>, action: &Action) {
        let get = |ids: &BTreeMap<String, String>, k: &str| {
            ids.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("unresolved {k}"))
        };
        let resolve_rule = |ids: &BTreeMap<String, String>, r: &Rule| {
            let mut r = r.clone();
            if let Peer::GroupKey(k) = &r.peer {
                r.peer = Peer::Group(get(ids, k));
            }
            r
        };
        match action {
            Action::TerminateInstance { id } => self.obs.instances.retain(|i| &i.id != id),
            Action::DeleteNatGateway { id } => self.obs.nats.retain(|n| &n.id != id),
            Action::ReleaseAddress { allocation_id, .. } => {
                self.obs.eips.retain(|e| &e.allocation_id != allocation_id)
            }
            Action::DeleteRouteTable { id, .. } => self.obs.route_tables.retain(|r| &r.id != id),
            Action::Disassociate { association_id } => {
                for r in &mut self.obs.route_tables {
                    r.associations.retain(|a| &a.id != association_id);
                }
            }
            Action::DeleteSubnet { id } => {
                assert!(
                    !self.obs.instances.iter().any(|i| &i.subnet_id == id),
                    "subnet {id} still has instances"
                );
                assert!(
                    !self.obs.nats.iter().any(|n| &n.subnet_id == id),
                    "subnet {id} still has a NAT"
                );
                self.obs.subnets.retain(|s| &s.id != id);
            }
            Action::RevokeIngressById { group_id, rules } => {
                if let Some(g) = self
                    .obs
                    .security_groups
                    .iter_mut()
                    .find(|g| &g.id == group_id)
                {
                    g.ingress.retain(|r| !rules.contains(r));
                }
            }
            Action::DeleteSecurityGroup { id } => self.obs.security_groups.retain(|g| &g.id != id),
            Action::DeleteInternetGateway { id, .. } => self.obs.igws.retain(|g| &g.id != id),
            Action::DeleteVpc { id } => {
                assert!(
                    !self.obs.subnets.iter().any(|s| &s.vpc_id == id),
                    "vpc {id} still has subnets"
                );
                self.obs.vpcs.retain(|v| &v.id != id);
                self.obs.default_sg = None;
            }
            Action::DeleteInstanceProfile { .. } => self.obs.profile = None,
            Action::DeleteRole { .. } => self.obs.role = None,
            Action::DeleteParameter { name } => self.obs.parameters.retain(|p| &p.name != name),
            Action::CreateVpc { key, cidr, tags } => {
                let id = self.id("vpc");
                self.obs.vpcs.push(ObsVpc {
                    id: id.clone(),
                    key: key.clone(),
                    cidr: cidr.clone(),
                    dns_hostnames: false,
                    dns_support: true,
                    tags: tags.clone(),
                });
                let sg = self.id("sg");
                self.obs.default_sg = Some(ObsSecurityGroup {
                    id: sg.clone(),
                    name: "default".into(),
                    ingress: vec![Rule {
                        proto: "-1".into(),
                        from: -1,
                        to: -1,
                        peer: Peer::Group(sg),
                    }],
                    egress: vec![all_out()],
                    ..Default::default()
                });
                ids.insert(key.clone(), id);
            }
            Action::EnableDns {
                vpc,
                hostnames,
                support,
            } => {
                let id = get(ids, vpc);
                let v = self.obs.vpcs.iter_mut().find(|v| v.id == id).expect("vpc");
                v.dns_hostnames = *hostnames;
                v.dns_support = *support;
            }
            Action::LockDownDefaultSecurityGroup { tags, .. } => {
                let g = self.obs.default_sg.as_mut().expect("default sg");
                g.ingress.clear();
                g.egress.clear();
                g.tags.extend(tags.clone());
            }
            Action::CreateSubnet {
                key,
                vpc,
                cidr,
                az,
                tags,
            } => {
                let id = self.id("subnet");
                self.obs.subnets.push(ObsSubnet {
                    id: id.clone(),
                    key: key.clone(),
                    vpc_id: get(ids, vpc),
                    cidr: cidr.clone(),
                    az: az.clone(),
                    tags: tags.clone(),
                });
                ids.insert(key.clone(), id);
            }
            Action::CreateInternetGateway { key, tags } => {
                let id = self.id("igw");
                self.obs.igws.push(ObsIgw {
                    id: id.clone(),
                    key: key.clone(),
                    attached_vpcs: vec![],
                    tags: tags.clone(),
                });
                ids.insert(key.clone(), id);
            }
            Action::AttachInternetGateway { igw, vpc } => {
                let (g, v) = (get(ids, igw), get(ids, vpc));
                self.obs
                    .igws
                    .iter_mut()
                    .find(|x| x.id == g)
                    .expect("igw")
                    .attached_vpcs
                    .push(v);
            }
            Action::AllocateAddress { key, tags } => {
                let id = self.id("eipalloc");
                self.obs.eips.push(ObsEip {
                    allocation_id: id.clone(),
                    key: key.clone(),
                    public_ip: format!("192.0.2.{}", self.next),
                    tags: tags.clone(),
                    ..Default::default()
                });
                ids.insert(key.clone(), id);
            }
            Action::CreateNatGateway {
                key,
                subnet,
                eip,
                tags,
            } => {
                let id = self.id("nat");
                self.obs.nats.push(ObsNat {
                    id: id.clone(),
                    key: key.clone(),
                    subnet_id: get(ids, subnet),
                    allocation_id: Some(get(ids, eip)),
                    state: "available".into(),
                    tags: tags.clone(),
                });
                ids.insert(key.clone(), id);
            }
            Action::CreateRouteTable { key, tags, .. } => {
                let id = self.id("rtb");
                self.obs.route_tables.push(ObsRouteTable {
                    id: id.clone(),
                    key: key.clone(),
                    tags: tags.clone(),
                    ..Default::default()
                });
                ids.insert(key.clone(), id);
            }
            Action::CreateRoute {
                table,
                dest,
                target,
            }
            | Action::ReplaceRoute {
                table,
                dest,
                target,
            } => {
                let (t, target_id) = (get(ids, table), get(ids, target));
                let rt = self
                    .obs
                    .route_tables
                    .iter_mut()
                    .find(|r| r.id == t)
                    .expect("rt");
                rt.routes.retain(|r| &r.dest != dest);
                let target = if target.starts_with("nat/") {
                    RouteTarget::Nat(target_id)
                } else {
                    RouteTarget::Gateway(target_id)
                };
                rt.routes.push(ObsRoute {
                    dest: dest.clone(),
                    target,
                });
            }
            Action::DeleteRoute { table, dest } => {
                let t = get(ids, table);
                let rt = self
                    .obs
                    .route_tables
                    .iter_mut()
                    .find(|r| r.id == t)
                    .expect("rt");
                rt.routes.retain(|r| &r.dest != dest);
            }
            Action::Associate { table, subnet } => {
                let (t, s) = (get(ids, table), get(ids, subnet));
                let assoc = self.id("rtbassoc");
                for r in &self.obs.route_tables {
                    assert!(
                        !r.associations.iter().any(|a| a.subnet_id == s),
                        "{s} already associated"
                    );
                }
                let rt = self
                    .obs
                    .route_tables
                    .iter_mut()
                    .find(|r| r.id == t)
                    .expect("rt");
                rt.associations.push(ObsAssociation {
                    id: assoc,
                    subnet_id: s,
                });
            }
            Action::ReplaceAssociation {
                association_id,
                table,
            } => {
                let t = get(ids, table);
                let mut moved = None;
                for r in &mut self.obs.route_tables {
                    if let Some(pos) = r.associations.iter().position(|a| &a.id == association_id) {
                        moved = Some(r.associations.remove(pos));
                    }
                }
                // Or from a table that is not the stack's.
                let foreign = &mut self.obs.foreign_associations;
                if let Some(pos) = foreign.iter().position(|(_, a)| &a.id == association_id) {
                    moved = Some(foreign.remove(pos).1);
                }
                let a = moved.expect("association");
                self.obs
                    .route_tables
                    .iter_mut()
                    .find(|r| r.id == t)
                    .expect("rt")
                    .associations
                    .push(a);
            }
            Action::CreateSecurityGroup {
                key, name, tags, ..
            } => {
                let id = self.id("sg");
                self.obs.security_groups.push(ObsSecurityGroup {
                    id: id.clone(),
                    key: key.clone(),
                    name: name.clone(),
                    ingress: vec![],
                    egress: vec![all_out()],
                    tags: tags.clone(),
                });
                ids.insert(key.clone(), id);
            }
            Action::Authorize {
                group,
                ingress,
                rule,
            } => {
                let (g, rule) = (get(ids, group), resolve_rule(ids, rule));
                let sg = self
                    .obs
                    .security_groups
                    .iter_mut()
                    .find(|x| x.id == g)
                    .expect("sg");
                let list = if *ingress {
                    &mut sg.ingress
                } else {
                    &mut sg.egress
                };
                assert!(!list.contains(&rule), "duplicate rule {rule:?}");
                list.push(rule);
            }
            Action::Revoke {
                group,
                ingress,
                rule,
            } => {
                let g = get(ids, group);
                let sg = self
                    .obs
                    .security_groups
                    .iter_mut()
                    .find(|x| x.id == g)
                    .expect("sg");
                let list = if *ingress {
                    &mut sg.ingress
                } else {
                    &mut sg.egress
                };
                list.retain(|r| r != rule);
            }
            Action::CreateRole { name, tags } => {
                self.obs.role = Some(ObsRole {
                    name: name.clone(),
                    tags: tags.clone(),
                    policy: None,
                })
            }
            Action::PutRolePolicy { policy, .. } => {
                self.obs.role.as_mut().expect("role").policy = Some(policy.clone())
            }
            Action::CreateInstanceProfile { name, tags } => {
                self.obs.profile = Some(ObsProfile {
                    name: name.clone(),
                    tags: tags.clone(),
                    roles: vec![],
                })
            }
            Action::AddRoleToProfile { role, .. } => {
                assert!(
                    self.obs.role.is_some(),
                    "role must exist before it joins the profile"
                );
                self.obs
                    .profile
                    .as_mut()
                    .expect("profile")
                    .roles
                    .push(role.clone());
            }
            Action::RunInstance { key, launch, tags } => {
                if let Some(p) = &launch.profile {
                    let prof = self.obs.profile.as_ref().expect("profile before instance");
                    assert!(
                        prof.roles.iter().any(|r| r == p),
                        "profile has its role before launch"
                    );
                }
                let id = self.id("i");
                let mut tags = tags.clone();
                if launch.bastion {
                    let bucket = ids.get("bucket").cloned();
                    let text = crate::userdata::render(
                        spec,
                        &get(ids, "vpc"),
                        &self.obs.account,
                        bucket.as_deref(),
                    );
                    tags.insert(TAG_USER_DATA.into(), sha256_hex(&text));
                }
                self.obs.instances.push(ObsInstance {
                    id: id.clone(),
                    key: key.clone(),
                    state: "running".into(),
                    ami: launch.ami.clone(),
                    instance_type: launch.instance_type.clone(),
                    subnet_id: get(ids, &launch.subnet),
                    security_groups: vec![get(ids, &launch.security_group)],
                    profile_arn: launch
                        .profile
                        .as_ref()
                        .map(|p| format!("arn:aws:iam::123:instance-profile/{p}")),
                    http_tokens: Some("required".into()),
                    hop_limit: Some(1),
                    private_ip: launch.private_ip.clone(),
                    public_ip: None,
                    tags,
                });
                ids.insert(key.clone(), id);
            }
            Action::AssociateAddress { eip, instance } => {
                let (e, i) = (get(ids, eip), get(ids, instance));
                let assoc = self.id("eipassoc");
                let a = self
                    .obs
                    .eips
                    .iter_mut()
                    .find(|x| x.allocation_id == e)
                    .expect("eip");
                a.instance_id = Some(i);
                a.association_id = Some(assoc);
            }
            Action::DeleteBucket { name } => {
                assert_eq!(self.obs.bucket.as_ref().map(|b| &b.name), Some(name));
                self.obs.bucket = None;
            }
            Action::DeleteObject { bucket, object } => {
                assert_eq!(ids.get(bucket.as_str()), Some(&self.bucket().name));
                self.bucket().objects.retain(|o| o != object);
            }
            Action::CreateBucket { key, name, tags } => {
                assert!(self.obs.bucket.is_none(), "bucket created twice");
                self.obs.bucket = Some(ObsBucket {
                    name: name.clone(),
                    tags: tags.clone(),
                    ..ObsBucket::default()
                });
                ids.insert(key.clone(), name.clone());
            }
            Action::TagBucket { tags, .. } => self.bucket().tags = tags.clone(),
            Action::SecureBucket { policy, .. } => {
                let b = self.bucket();
                b.public_access_blocked = true;
                b.encrypted = true;
                b.policy = Some(policy.clone());
            }
            Action::PutBinary { bucket, object, .. } => {
                assert_eq!(ids.get(bucket.as_str()), Some(&self.bucket().name));
                self.bucket().objects.push(object.clone());
            }
            Action::DeleteEventRule { name, target_ids } => {
                let rule = self.obs.rule.as_ref().expect("the rule exists");
                assert_eq!(&rule.name, name);
                let ids: Vec<&String> = rule.targets.iter().map(|t| &t.id).collect();
                assert_eq!(ids, target_ids.iter().collect::<Vec<_>>(), "targets first");
                self.obs.rule = None;
            }
            Action::DeleteEventQueue { url } => {
                assert!(self.obs.rule.is_none(), "the rule goes before its queue");
                assert_eq!(self.obs.queue.as_ref().map(|q| &q.url), Some(url));
                self.obs.queue = None;
            }
            Action::CreateEventQueue {
                key,
                name,
                attributes,
                tags,
            } => {
                assert!(self.obs.queue.is_none(), "queue created twice");
                let url = format!(
                    "https://sqs.us-east-1.amazonaws.com/{}/{name}",
                    self.obs.account
                );
                self.obs.queue = Some(ObsQueue {
                    name: name.clone(),
                    url: url.clone(),
                    tags: tags.clone(),
                    attributes: attributes.clone(),
                });
                ids.insert(key.clone(), url);
            }
            Action::SetEventQueueAttributes { queue, attributes } => {
                let q = self.obs.queue.as_mut().expect("queue");
                assert_eq!(ids.get(queue.as_str()), Some(&q.url));
                q.attributes.extend(attributes.clone());
            }
            Action::TagEventQueue { queue, tags } => {
                let q = self.obs.queue.as_mut().expect("queue");
                assert_eq!(ids.get(queue.as_str()), Some(&q.url));
                q.tags.extend(tags.clone());
            }
            Action::PutEventRule {
                key,
                name,
                pattern,
                tags,
            } => {
                let arn = format!("arn:aws:events:us-east-1:{}:rule/{name}", self.obs.account);
                let rule = self.obs.rule.get_or_insert_with(|| ObsRule {
                    name: name.clone(),
                    arn: arn.clone(),
                    // Tags only on create, as EventBridge does.
                    tags: tags.clone(),
                    ..ObsRule::default()
                });
                rule.pattern = Some(pattern.clone());
                rule.state = "ENABLED".into();
                ids.insert(key.clone(), arn);
            }
            Action::TagEventRule { rule, tags } => {
                let r = self.obs.rule.as_mut().expect("rule");
                assert_eq!(ids.get(rule.as_str()), Some(&r.arn));
                r.tags.extend(tags.clone());
            }
            Action::PutEventTarget { rule, id, arn } => {
                let r = self.obs.rule.as_mut().expect("the rule before its target");
                assert_eq!(&r.name, rule);
                r.targets.retain(|t| &t.id != id);
                r.targets.push(ObsTarget {
                    id: id.clone(),
                    arn: arn.clone(),
                    rewrites: false,
                });
            }
            Action::RemoveEventTargets { rule, ids } => {
                let r = self.obs.rule.as_mut().expect("rule");
                assert_eq!(&r.name, rule);
                r.targets.retain(|t| !ids.contains(&t.id));
            }
            Action::CreateAuditLogGroup {
                name,
                tags,
                retention_days,
            } => {
                assert!(self.obs.log_group.is_none(), "log group created twice");
                self.obs.log_group = Some(ObsLogGroup {
                    name: name.clone(),
                    arn: audit_log_group_arn(&spec.region, &self.obs.account, &spec.stack),
                    tags: tags.clone(),
                    retention_days: Some(*retention_days),
                });
            }
            Action::SetAuditLogRetention {
                name,
                retention_days,
            } => {
                let g = self.obs.log_group.as_mut().expect("log group");
                assert_eq!(&g.name, name);
                g.retention_days = Some(*retention_days);
            }
            Action::TagAuditLogGroup { arn, tags } => {
                let g = self.obs.log_group.as_mut().expect("log group");
                assert_eq!(&g.arn, arn);
                g.tags.extend(tags.clone());
            }
            Action::DeleteAuditLogGroup { name } => {
                assert_eq!(self.obs.log_group.as_ref().map(|g| &g.name), Some(name));
                self.obs.log_group = None;
                self.obs.metric_filters.clear();
            }
            Action::PutMetricFilter { filter } => {
                let g = self
                    .obs
                    .log_group
                    .as_ref()
                    .expect("a filter needs its log group");
                assert_eq!(g.name, filter.log_group);
                self.obs.metric_filters.retain(|f| f.name != filter.name);
                self.obs.metric_filters.push(filter.clone());
            }
            Action::DeleteMetricFilter { log_group, name } => {
                assert!(self
                    .obs
                    .metric_filters
                    .iter()
                    .any(|f| &f.name == name && &f.log_group == log_group));
                self.obs.metric_filters.retain(|f| &f.name != name);
            }
            Action::CreateAlertTopic { name, tags } => {
                assert!(self.obs.topic.is_none(), "topic created twice");
                self.obs.topic = Some(ObsTopic {
                    arn: format!("arn:aws:sns:{}:{}:{name}", spec.region, self.obs.account),
                    tags: tags.clone(),
                    subscriptions: Vec::new(),
                });
            }
            Action::TagAlertTopic { arn, tags } => {
                let t = self.obs.topic.as_mut().expect("topic");
                assert_eq!(&t.arn, arn);
                t.tags.extend(tags.clone());
            }
            Action::SubscribeEmail { topic_arn, email } => {
                let t = self
                    .obs
                    .topic
                    .as_mut()
                    .expect("a subscription needs its topic");
                assert_eq!(&t.arn, topic_arn);
                t.subscriptions.push(ObsSubscription {
                    arn: "PendingConfirmation".into(),
                    protocol: "email".into(),
                    endpoint: email.clone(),
                });
            }
            Action::DeleteAlertTopic { arn } => {
                assert_eq!(self.obs.topic.as_ref().map(|t| &t.arn), Some(arn));
                self.obs.topic = None;
            }
            Action::PutAlarm { alarm, tags } => {
                let mut alarm = alarm.clone();
                for (_, value) in &mut alarm.dimensions {
                    if let DimensionValue::ElbOf(key) = value {
                        *value = DimensionValue::Value(elb_dimension(&get(ids, key)));
                    }
                }
                let arn = format!(
                    "arn:aws:cloudwatch:{}:{}:alarm:{}",
                    spec.region, self.obs.account, alarm.name
                );
                // PutMetricAlarm tags a new alarm only.
                let tags = match self.obs.alarms.iter().find(|a| a.alarm.name == alarm.name) {
                    Some(a) => a.tags.clone(),
                    None => tags.clone(),
                };
                self.obs.alarms.retain(|a| a.alarm.name != alarm.name);
                self.obs.alarms.push(ObsAlarm {
                    alarm,
                    arn,
                    actions_ok: true,
                    tags,
                });
            }
            Action::TagAlarm { arn, tags } => {
                let a = self
                    .obs
                    .alarms
                    .iter_mut()
                    .find(|a| &a.arn == arn)
                    .expect("alarm");
                a.tags.extend(tags.clone());
            }
            Action::DeleteAlarms { names } => {
                for name in names {
                    assert!(self.obs.alarms.iter().any(|a| &a.alarm.name == name));
                }
                self.obs.alarms.retain(|a| !names.contains(&a.alarm.name));
            }
            Action::SetTags { resource, tags } => {
                let id = get(ids, resource);
                let t = self.obs.launch_templates.iter_mut().find(|t| t.id == id);
                match t {
                    Some(t) => t.tags.extend(tags.clone()),
                    None => self
                        .all_tags_mut(&id)
                        .expect("tagged resource")
                        .extend(tags.clone()),
                }
            }
            Action::SetDefaultTemplateVersion { template } => {
                let id = get(ids, template);
                let t = self
                    .obs
                    .launch_templates
                    .iter_mut()
                    .find(|t| t.id == id)
                    .expect("template");
                t.default_version = t.latest_version;
            }
            Action::DeleteAutoScalingGroup { name } => {
                let g = self.obs.group.take().expect("group");
                assert_eq!(&g.name, name);
                let members: Vec<String> = g.members.iter().map(|m| m.id.clone()).collect();
                self.obs.instances.retain(|i| !members.contains(&i.id));
            }
            Action::DeleteListener { arn } => self.obs.listeners.retain(|l| &l.arn != arn),
            Action::DeleteLoadBalancer { arn } => {
                assert!(
                    self.obs.group.is_none(),
                    "the group goes before the balancer"
                );
                assert_eq!(self.obs.balancer.as_ref().map(|b| &b.arn), Some(arn));
                self.obs.balancer = None;
                self.obs.listeners.clear();
            }
            Action::DeleteTargetGroup { arn } => {
                assert!(self.obs.listeners.is_empty(), "no listener forwards to it");
                assert_eq!(self.obs.target_group.as_ref().map(|t| &t.arn), Some(arn));
                self.obs.target_group = None;
            }
            Action::DeleteLaunchTemplate { id } => {
                assert!(
                    self.obs.group.is_none(),
                    "the group goes before its template"
                );
                self.obs.launch_templates.retain(|t| &t.id != id);
            }
            Action::CreateLaunchTemplate {
                key,
                name,
                launch,
                tags,
                ..
            } => {
                let id = self.id("lt");
                let t = self.template(spec, ids, id.clone(), name, launch, tags, 1);
                self.obs.launch_templates.push(t);
                ids.insert(key.clone(), id);
                ids.insert(TEMPLATE_VERSION_KEY.into(), "1".into());
            }
            Action::CreateLaunchTemplateVersion {
                template, launch, ..
            } => {
                let id = get(ids, template);
                let old = self
                    .obs
                    .launch_templates
                    .iter()
                    .find(|t| t.id == id)
                    .cloned()
                    .expect("template");
                let version = old.latest_version + 1;
                let t = self.template(spec, ids, id.clone(), &old.name, launch, &old.tags, version);
                *self
                    .obs
                    .launch_templates
                    .iter_mut()
                    .find(|x| x.id == id)
                    .expect("template") = t;
                ids.insert(TEMPLATE_VERSION_KEY.into(), version.to_string());
            }
            Action::CreateTargetGroup {
                key,
                name,
                vpc,
                tags,
            } => {
                assert!(
                    self.obs.target_group.is_none(),
                    "target group created twice"
                );
                let arn = format!(
                    "arn:aws:elasticloadbalancing:::targetgroup/{name}/{}",
                    self.next
                );
                self.obs.target_group = Some(ObsTargetGroup {
                    arn: arn.clone(),
                    name: name.clone(),
                    key: key.clone(),
                    tags: tags.clone(),
                    protocol: "TCP".into(),
                    port: 22,
                    vpc_id: get(ids, vpc),
                    health_protocol: "HTTP".into(),
                    health_port: crate::userdata::HEALTH_PORT.to_string(),
                    health_path: Some(crate::userdata::HEALTH_PATH.into()),
                    health_interval: Some(replicas::HEALTH_INTERVAL_SECS),
                    healthy_threshold: Some(replicas::HEALTHY_THRESHOLD),
                    unhealthy_threshold: Some(replicas::UNHEALTHY_THRESHOLD),
                    attributes: BTreeMap::new(),
                });
                ids.insert(key.clone(), arn);
            }
            Action::SetTargetGroupHealthCheck { group } => {
                let arn = get(ids, group);
                let t = self.obs.target_group.as_mut().expect("target group");
                assert_eq!(t.arn, arn);
                t.health_protocol = "HTTP".into();
                t.health_port = crate::userdata::HEALTH_PORT.to_string();
                t.health_path = Some(crate::userdata::HEALTH_PATH.into());
                t.health_interval = Some(replicas::HEALTH_INTERVAL_SECS);
                t.healthy_threshold = Some(replicas::HEALTHY_THRESHOLD);
                t.unhealthy_threshold = Some(replicas::UNHEALTHY_THRESHOLD);
            }
            Action::SetTargetGroupAttributes { group, attributes } => {
                let arn = get(ids, group);
                let t = self.obs.target_group.as_mut().expect("target group");
                assert_eq!(t.arn, arn);
                t.attributes.extend(attributes.clone());
            }
            Action::CreateLoadBalancer {
                key,
                name,
                subnets,
                security_group,
                tags,
            } => {
                assert!(self.obs.balancer.is_none(), "balancer created twice");
                let arn = format!(
                    "arn:aws:elasticloadbalancing:::loadbalancer/net/{name}/{}",
                    self.next
                );
                let subnet_ids: Vec<(String, Option<String>)> = subnets
                    .iter()
                    .map(|(s, e)| (get(ids, s), e.as_ref().map(|e| get(ids, e))))
                    .collect();
                self.obs.balancer = Some(ObsLoadBalancer {
                    arn: arn.clone(),
                    name: name.clone(),
                    key: key.clone(),
                    tags: tags.clone(),
                    dns_name: format!("{name}-1.elb.example"),
                    scheme: "internet-facing".into(),
                    kind: "network".into(),
                    state: "active".into(),
                    vpc_id: get(ids, "vpc"),
                    subnets: subnet_ids,
                    security_groups: vec![get(ids, security_group)],
                    cross_zone: false,
                });
                ids.insert(key.clone(), arn);
            }
            Action::SetLoadBalancerAttributes { balancer, .. } => {
                let arn = get(ids, balancer);
                let b = self.obs.balancer.as_mut().expect("balancer");
                assert_eq!(b.arn, arn);
                b.cross_zone = true;
            }
            Action::CreateListener {
                key,
                balancer,
                target_group,
                ..
            } => {
                assert_eq!(
                    self.obs.balancer.as_ref().map(|b| b.arn.clone()),
                    Some(get(ids, balancer))
                );
                let arn = self.id("listener");
                self.obs.listeners.push(ObsListener {
                    arn: arn.clone(),
                    protocol: "TCP".into(),
                    port: 22,
                    forwards_to: vec![get(ids, target_group)],
                });
                ids.insert(key.clone(), arn);
            }
            Action::TagElb { resource, tags } => {
                let arn = get(ids, resource);
                if let Some(b) = self.obs.balancer.as_mut().filter(|b| b.arn == arn) {
                    b.tags.extend(tags.clone());
                } else if let Some(t) = self.obs.target_group.as_mut().filter(|t| t.arn == arn) {
                    t.tags.extend(tags.clone());
                } else {
                    panic!("no ELB resource {arn}");
                }
            }
            Action::CreateAutoScalingGroup {
                key,
                name,
                template,
                subnets,
                target_group,
                size,
                tags,
            } => {
                assert!(self.obs.group.is_none(), "group created twice");
                self.obs.group = Some(ObsAutoScalingGroup {
                    name: name.clone(),
                    key: key.clone(),
                    tags: tags.clone(),
                    min: *size,
                    max: 2 * size,
                    desired: *size,
                    subnets: subnets.iter().map(|s| get(ids, s)).collect(),
                    launch_template_id: Some(get(ids, template)),
                    launch_template_version: Some(get(ids, TEMPLATE_VERSION_KEY)),
                    target_groups: vec![get(ids, target_group)],
                    health_check_type: "ELB".into(),
                    health_check_grace: Some(replicas::HEALTH_CHECK_GRACE_SECS),
                    members: Vec::new(),
                    termination_policies: replicas::TERMINATION_POLICIES
                        .iter()
                        .map(|p| (*p).to_owned())
                        .collect(),
                    deleting: false,
                });
                for _ in 0..*size {
                    self.launch_replica(spec);
                }
                ids.insert(key.clone(), name.clone());
            }
            Action::UpdateAutoScalingGroup {
                group,
                template,
                subnets,
                size,
                keep_desired,
            } => {
                let name = get(ids, group);
                let subnet_ids: Vec<String> = subnets.iter().map(|s| get(ids, s)).collect();
                let (lt, version) = (get(ids, template), get(ids, TEMPLATE_VERSION_KEY));
                let g = self.obs.group.as_mut().expect("group");
                assert_eq!(g.name, name);
                g.launch_template_id = Some(lt);
                g.launch_template_version = Some(version);
                g.subnets = subnet_ids;
                g.min = *size;
                g.max = 2 * size;
                if !keep_desired {
                    g.desired = *size;
                }
                g.health_check_type = "ELB".into();
                g.health_check_grace = Some(replicas::HEALTH_CHECK_GRACE_SECS);
                g.termination_policies = replicas::TERMINATION_POLICIES
                    .iter()
                    .map(|p| (*p).to_owned())
                    .collect();
                // The group launches or removes replicas to match the desired count.
                let desired = usize::try_from(g.desired).expect("count");
                let members = g.members.len();
                for _ in members..desired {
                    self.launch_replica(spec);
                }
                let g = self.obs.group.as_mut().expect("group");
                let gone: Vec<String> = g
                    .members
                    .drain(desired.min(members)..)
                    .map(|m| m.id)
                    .collect();
                self.obs.instances.retain(|i| !gone.contains(&i.id));
            }
            Action::AttachTargetGroup {
                group,
                target_group,
            } => {
                let tg = get(ids, target_group);
                let g = self.obs.group.as_mut().expect("group");
                assert_eq!(g.name, get(ids, group));
                g.target_groups.push(tg);
            }
            Action::DetachTargetGroups { arns, .. } => {
                let g = self.obs.group.as_mut().expect("group");
                g.target_groups.retain(|a| !arns.contains(a));
            }
            Action::TagAutoScalingGroup { tags, .. } => {
                self.obs
                    .group
                    .as_mut()
                    .expect("group")
                    .tags
                    .extend(tags.clone());
            }
            Action::RollReplicas { size, outdated, .. } => {
                // New ones first, then the outdated ones go.
                for _ in 0..outdated.len() {
                    self.launch_replica(spec);
                }
                let g = self.obs.group.as_mut().expect("group");
                assert!(
                    g.members
                        .iter()
                        .filter(|m| !outdated.contains(&m.id))
                        .count()
                        >= usize::try_from(*size).expect("size"),
                    "a roll never has fewer than `replicas` new ones before the old go"
                );
                g.members.retain(|m| !outdated.contains(&m.id));
                g.desired = *size;
                self.obs.instances.retain(|i| !outdated.contains(&i.id));
            }
        }
    }

    /// A template as EC2 reports it after a create or a new version.
    #[allow(clippy::too_many_arguments)]
    fn template(
        &mut self,
        spec: &Spec,
        ids: &BTreeMap<String, String>,
        id: String,
        name: &str,
        launch: &LaunchSpec,
        tags: &Tags,
        version: i64,
    ) -> ObsLaunchTemplate {
        let bucket = ids
            .get("bucket")
            .filter(|_| matches!(spec.bastion.binary, crate::spec::Binary::Stored { .. }));
        let text = crate::userdata::render(
            spec,
            &ids["vpc"],
            &self.obs.account,
            bucket.map(String::as_str),
        );
        ObsLaunchTemplate {
            id,
            name: name.to_owned(),
            key: TEMPLATE_KEY.into(),
            tags: tags.clone(),
            latest_version: version,
            default_version: version,
            ami: launch.ami.clone(),
            instance_type: launch.instance_type.clone(),
            profile: launch.profile.clone(),
            security_groups: vec![ids[&launch.security_group].clone()],
            http_tokens: Some("required".into()),
            hop_limit: Some(1),
            user_data_sha256: Some(sha256_hex(&text)),
        }
    }

    /// The group launches a replica from its template's latest version.
    fn launch_replica(&mut self, spec: &Spec) {
        let id = self.id("i");
        let t = self
            .obs
            .launch_templates
            .first()
            .cloned()
            .expect("template");
        let g = self.obs.group.as_mut().expect("group");
        g.members.push(ObsMember {
            id: id.clone(),
            version: Some(t.latest_version.to_string()),
            lifecycle: "InService".into(),
        });
        let subnet = g.subnets.first().cloned().unwrap_or_default();
        let mut tags = base_tags(spec, REPLICA_KEY);
        if let Some(sha) = &t.user_data_sha256 {
            tags.insert(TAG_USER_DATA.into(), sha.clone());
        }
        self.obs.instances.push(ObsInstance {
            id,
            key: REPLICA_KEY.into(),
            state: "running".into(),
            ami: t.ami.clone(),
            instance_type: t.instance_type.clone(),
            subnet_id: subnet,
            security_groups: t.security_groups.clone(),
            profile_arn: None,
            http_tokens: Some("required".into()),
            hop_limit: Some(1),
            private_ip: None,
            public_ip: None,
            tags,
        });
    }
}

fn all_out() -> Rule {
    Rule {
        proto: "-1".into(),
        from: -1,
        to: -1,
        peer: Peer::Cidr("0.0.0.0/0".into()),
    }
}

fn position(plan: &Plan, pred: impl Fn(&Action) -> bool) -> usize {
    plan.steps
        .iter()
        .position(|s| pred(&s.action))
        .unwrap_or_else(|| panic!("step missing in\n{}", plan.render()))
}

#[test]
fn from_empty_every_nat_mode_converges_in_one_round() {
    for (nat, nats) in [("none", 0), ("single", 1), ("per_az", 2)] {
        let spec = spec(nat);
        let mut fake = Fake::new();
        assert_eq!(fake.converge(&spec), 1, "nat = {nat}");
        assert_eq!(fake.obs.nats.len(), nats, "nat = {nat}");
        assert_eq!(fake.obs.instances.len(), 2);
        assert!(fake
            .obs
            .default_sg
            .as_ref()
            .is_some_and(|g| g.ingress.is_empty() && g.egress.is_empty()));
        assert!(
            plan_apply(&spec, &fake.obs).expect("plan").is_empty(),
            "nat = {nat}"
        );
    }
}

#[test]
fn creation_order_respects_dependencies() {
    let plan = plan_apply(&spec("single"), &Fake::new().obs).expect("plan");
    let vpc = position(&plan, |a| matches!(a, Action::CreateVpc { .. }));
    let subnet = position(&plan, |a| matches!(a, Action::CreateSubnet { .. }));
    let nat = position(&plan, |a| matches!(a, Action::CreateNatGateway { .. }));
    let eip = position(&plan, |a| matches!(a, Action::AllocateAddress { .. }));
    let route = position(
        &plan,
        |a| matches!(a, Action::CreateRoute { target, .. } if target.starts_with("nat/")),
    );
    let profile = position(&plan, |a| matches!(a, Action::AddRoleToProfile { .. }));
    let bastion = position(
        &plan,
        |a| matches!(a, Action::RunInstance { launch, .. } if launch.bastion),
    );
    let assoc = position(&plan, |a| matches!(a, Action::AssociateAddress { .. }));
    assert!(vpc < subnet && subnet < nat && eip < nat && nat < route && route < bastion);
    assert!(profile < bastion && bastion < assoc);
    // The alarm family last: its filters on the log group made before, its alarms after the
    // topic they send to; nothing of it before the bastion's address.
    let log_group = position(&plan, |a| matches!(a, Action::CreateAuditLogGroup { .. }));
    let filter = position(&plan, |a| matches!(a, Action::PutMetricFilter { .. }));
    let topic = position(&plan, |a| matches!(a, Action::CreateAlertTopic { .. }));
    let alarm = position(&plan, |a| matches!(a, Action::PutAlarm { .. }));
    assert!(log_group < filter && assoc < filter && filter < topic && topic < alarm);
    let alarms = plan
        .steps
        .iter()
        .filter(|s| matches!(s.action, Action::PutAlarm { .. }))
        .count();
    assert_eq!(alarms, 4, "one bastion: no healthy-replicas alarm");
    let text = plan.render();
    assert!(text.starts_with("+ vpc"), "{text}");
    // 19 before the alarms, then 6 filters, the topic and 4 alarms.
    assert!(
        text.ends_with("stack lab: 30 to create, 14 to change, 0 to delete\n"),
        "{text}"
    );
}

#[test]
fn drift_is_repaired_and_only_drift() {
    let spec = spec("single");
    let mut fake = Fake::new();
    fake.converge(&spec);
    // A route removed by hand, a rule removed, SSH opened to the world, a tag edited.
    let rt = fake
        .obs
        .route_tables
        .iter_mut()
        .find(|r| r.key == "rt/private")
        .expect("rt");
    rt.routes.clear();
    let sg = fake
        .obs
        .security_groups
        .iter_mut()
        .find(|g| g.key == "sg/bastion")
        .expect("sg");
    sg.ingress.clear();
    sg.ingress.push(Rule {
        proto: "tcp".into(),
        from: 22,
        to: 22,
        peer: Peer::Cidr("0.0.0.0/0".into()),
    });
    let j = fake
        .obs
        .instances
        .iter_mut()
        .find(|i| i.key == "instance/jupyter")
        .expect("jupyter");
    j.tags.insert(TAG_GROUPS.into(), "everyone".into());
    // A login tag the spec does not set (added by hand, or `login` dropped from the spec):
    // emptied, so the daemon pushes no key there.
    j.tags.insert(TAG_LOGIN.into(), "ubuntu".into());

    let plan = plan_apply(&spec, &fake.obs).expect("plan");
    let text = plan.render();
    assert_eq!(plan.steps.len(), 4, "{text}");
    assert!(
        plan.steps
            .iter()
            .any(|s| matches!(&s.action, Action::SetTags { resource, tags }
            if resource == "instance/jupyter"
                && tags.get(TAG_LOGIN).map(String::as_str) == Some("")
                && tags.get(TAG_GROUPS).map(String::as_str) == Some("research"))),
        "{text}"
    );
    assert!(
        text.contains("~ rt/private                   + route 0.0.0.0/0 -> nat/eu-central-1a"),
        "{text}"
    );
    assert!(text.contains("+ ingress tcp 22 198.51.100.0/24"), "{text}");
    assert!(text.contains("- ingress tcp 22 0.0.0.0/0"), "{text}");
    assert!(
        text.contains("~ instance/jupyter             tags gatehouse:groups, gatehouse:login"),
        "{text}"
    );
    fake.apply(&spec, &plan);
    assert!(plan_apply(&spec, &fake.obs).expect("plan").is_empty());
}

#[test]
fn a_blackholed_route_is_replaced() {
    let spec = spec("single");
    let mut fake = Fake::new();
    fake.converge(&spec);
    let rt = fake
        .obs
        .route_tables
        .iter_mut()
        .find(|r| r.key == "rt/private")
        .expect("rt");
    rt.routes[0].target = RouteTarget::Other("blackhole".into());
    let plan = plan_apply(&spec, &fake.obs).expect("plan");
    assert!(
        matches!(
            plan.steps.as_slice(),
            [Step {
                action: Action::ReplaceRoute { .. },
                ..
            }]
        ),
        "{}",
        plan.render()
    );
}

#[test]
fn changing_a_subnet_cidr_replaces_it_and_what_lives_in_it() {
    let spec_a = spec("single");
    let mut fake = Fake::new();
    fake.converge(&spec_a);
    let old_jupyter = fake
        .obs
        .instances
        .iter()
        .find(|i| i.key == "instance/jupyter")
        .expect("j")
        .id
        .clone();
    let spec_b = parse(
        "t.toml",
        &SPEC
            .replace("NAT", "single")
            .replace("10.0.10.0/24", "10.0.12.0/24"),
        None,
    )
    .expect("spec");
    let plan = plan_apply(&spec_b, &fake.obs).expect("plan");
    let text = plan.render();
    assert!(text.contains("- instance/jupyter"), "{text}");
    assert!(text.contains("- subnet/private-a"), "{text}");
    assert!(text.contains("replace: private, 10.0.12.0/24"), "{text}");
    assert!(!text.contains("- instance/bastion"), "{text}");
    fake.apply(&spec_b, &plan);
    assert!(plan_apply(&spec_b, &fake.obs).expect("plan").is_empty());
    assert!(!fake.obs.instances.iter().any(|i| i.id == old_jupyter));
}

#[test]
fn changing_the_ami_or_losing_imdsv2_replaces_the_instance() {
    let spec = spec("single");
    let mut fake = Fake::new();
    fake.converge(&spec);
    let b = fake
        .obs
        .instances
        .iter_mut()
        .find(|i| i.key == "instance/bastion")
        .expect("bastion");
    b.http_tokens = Some("optional".into());
    let plan = plan_apply(&spec, &fake.obs).expect("plan");
    let text = plan.render();
    assert!(text.contains("replace: IMDSv2 not enforced"), "{text}");
    assert!(text.contains("~ eip/bastion"), "{text}");
    fake.apply(&spec, &plan);
    assert!(plan_apply(&spec, &fake.obs).expect("plan").is_empty());
}

#[test]
fn changing_the_download_url_replaces_the_bastion_only() {
    let spec_a = spec("single");
    let mut fake = Fake::new();
    fake.converge(&spec_a);
    let spec_b = parse(
        "t.toml",
        &SPEC
            .replace("NAT", "single")
            .replace("/gatehouse\"", "/gatehouse-2\""),
        None,
    )
    .expect("spec");
    let plan = plan_apply(&spec_b, &fake.obs).expect("plan");
    let text = plan.render();
    assert!(text.contains("replace: user data changed"), "{text}");
    assert!(!text.contains("instance/jupyter"), "{text}");
}

#[test]
fn nat_mode_switches_converge() {
    let mut fake = Fake::new();
    for nat in ["single", "per_az", "none", "single"] {
        let spec = spec(nat);
        assert!(fake.converge(&spec) <= 1, "nat = {nat}");
    }
    assert_eq!(fake.obs.nats.len(), 1);
    assert_eq!(fake.obs.route_tables.len(), 2);
}

#[test]
fn duplicates_from_an_interrupted_run_are_removed() {
    let spec = spec("single");
    let mut fake = Fake::new();
    fake.converge(&spec);
    let mut dup = fake.obs.subnets[0].clone();
    dup.id = "subnet-zzzz".into();
    fake.obs.subnets.push(dup);
    let plan = plan_apply(&spec, &fake.obs).expect("plan");
    assert!(
        matches!(plan.steps.as_slice(), [Step { action: Action::DeleteSubnet { id }, .. }] if id == "subnet-zzzz"),
        "{}",
        plan.render()
    );
}

#[test]
fn resources_without_the_stack_tag_are_never_touched() {
    let spec = spec("single");
    let mut fake = Fake::new();
    fake.converge(&spec);
    let mut foreign = fake.obs.clone();
    // Same keys, but another stack's tag or no tag at all: as if a filter had been ignored.
    for v in &mut foreign.vpcs {
        v.id = "vpc-foreign".into();
        v.tags.insert(TAG_STACK.into(), "other".into());
    }
    for s in &mut foreign.subnets {
        s.id = format!("{}-foreign", s.id);
        s.tags.remove(TAG_STACK);
    }
    for i in &mut foreign.instances {
        i.id = format!("{}-foreign", i.id);
        i.tags.insert(TAG_STACK.into(), "lab2".into());
    }
    let mut mixed = fake.obs.clone();
    mixed.vpcs.extend(foreign.vpcs);
    mixed.subnets.extend(foreign.subnets);
    mixed.instances.extend(foreign.instances);

    assert!(plan_apply(&spec, &mixed).expect("plan").is_empty());
    let destroy = plan_destroy("lab", &mixed, AuditLog::Delete);
    let json = serde_json::to_string(&destroy).expect("json");
    assert!(!json.contains("foreign"), "{}", destroy.render());
    // And destroying the stack alone removes everything of it.
    let mut after = fake;
    after.apply(&spec, &destroy);
    assert!(only_ours("lab", &after.obs).is_empty(), "{:#?}", after.obs);
}

#[test]
fn destroy_order_is_reverse_dependency_order() {
    let spec = spec("per_az");
    let mut fake = Fake::new();
    fake.converge(&spec);
    fake.obs.parameters.push(ObsParameter {
        name: host_key_parameter("lab"),
        tags: Tags::from([(TAG_STACK.to_string(), "lab".to_string())]),
    });
    let plan = plan_destroy("lab", &fake.obs, AuditLog::Delete);
    let first = |pred: fn(&Action) -> bool| position(&plan, pred);
    let last = |pred: fn(&Action) -> bool| {
        plan.steps
            .iter()
            .rposition(|s| pred(&s.action))
            .expect("step")
    };
    assert!(
        last(|a| matches!(a, Action::TerminateInstance { .. }))
            < first(|a| matches!(a, Action::DeleteNatGateway { .. }))
    );
    assert!(
        last(|a| matches!(a, Action::DeleteNatGateway { .. }))
            < first(|a| matches!(a, Action::ReleaseAddress { .. }))
    );
    assert!(
        last(|a| matches!(a, Action::DeleteRouteTable { .. }))
            < first(|a| matches!(a, Action::DeleteSubnet { .. }))
    );
    assert!(
        last(|a| matches!(a, Action::DeleteSubnet { .. }))
            < first(|a| matches!(a, Action::DeleteSecurityGroup { .. }))
    );
    assert!(
        last(|a| matches!(a, Action::RevokeIngressById { .. }))
            < first(|a| matches!(a, Action::DeleteSecurityGroup { .. }))
    );
    assert!(
        last(|a| matches!(a, Action::DeleteInternetGateway { .. }))
            < first(|a| matches!(a, Action::DeleteVpc { .. }))
    );
    assert!(
        first(|a| matches!(a, Action::DeleteInstanceProfile { .. }))
            < first(|a| matches!(a, Action::DeleteRole { .. }))
    );
    fake.apply(&spec, &plan);
    assert!(fake.obs.is_empty(), "{:#?}", fake.obs);
}

#[test]
fn a_role_of_the_same_name_without_our_tag_is_refused() {
    let obs = Observed {
        role: Some(ObsRole {
            name: role_name("lab"),
            tags: Tags::new(),
            policy: None,
        }),
        ..Default::default()
    };
    let err = plan_apply(&spec("single"), &obs).expect_err("must refuse");
    assert!(
        matches!(
            err,
            PlanError::NotOurs {
                what: "IAM role",
                ..
            }
        ),
        "{err}"
    );
    assert!(plan_destroy("lab", &obs, AuditLog::Keep).is_empty());
}

#[test]
fn the_vpc_cidr_cannot_change_in_place() {
    let mut fake = Fake::new();
    fake.converge(&spec("single"));
    let other = parse(
        "t.toml",
        &SPEC
            .replace("NAT", "single")
            .replace("10.0.0.0/16", "10.0.0.0/17"),
        None,
    )
    .expect("spec");
    let err = plan_apply(&other, &fake.obs).expect_err("immutable");
    assert!(
        err.to_string().contains("a VPC's CIDR cannot change"),
        "{err}"
    );
}

#[test]
fn the_policy_is_least_privilege() {
    let spec = spec("single");
    let policy = crate::policy::bastion_policy(&spec, None, "123456789012");
    let actions: Vec<String> = policy["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .flat_map(|s| s["Action"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    assert_eq!(actions.len(), 9, "{actions:?}");
    assert!(actions.iter().all(|a| !a.contains('*')), "{actions:?}");
    assert!(!actions.iter().any(|a| a.starts_with("iam:Upload")
        || a.starts_with("iam:Create")
        || a.starts_with("ec2:Run")));
    assert_eq!(policy["Statement"][2]["Sid"], "HostKey", "{policy:#}");
    assert_eq!(
        policy["Statement"][2]["Resource"],
        "arn:aws:ssm:eu-central-1:*:parameter/gatehouse/lab/host_ed25519"
    );
}

#[test]
fn output_prints_the_address_and_an_ssh_config() {
    let spec = spec("single");
    let mut fake = Fake::new();
    fake.converge(&spec);
    let out = crate::output::stack_output(&spec, &fake.obs, "alice").expect("output");
    let ip = out.bastion_address.clone().expect("address");
    assert!(
        out.ssh_config.contains(&format!(
            "Host lab-bastion\n    HostName {ip}\n    User alice\n"
        )),
        "{}",
        out.ssh_config
    );
    assert!(out
        .ssh_config
        .contains("Host jupyter\n    HostName jupyter\n    ProxyJump lab-bastion\n"));
}

#[test]
fn output_uses_the_bastions_login_name_for_the_iam_user() {
    // The bastion knows IAM user `jane@example.org` as `jane~40example.org` (the daemon's
    // mapping, gatehouse_aws::names): `User jane@example.org` would be an unknown login.
    let spec = spec("single");
    let mut fake = Fake::new();
    fake.converge(&spec);
    let out = crate::output::stack_output(&spec, &fake.obs, "jane@example.org").expect("output");
    assert!(
        out.ssh_config.contains("    User jane~40example.org\n"),
        "{}",
        out.ssh_config
    );
    assert!(!out.ssh_config.contains("jane@"), "{}", out.ssh_config);
    // A name no IAM user can have is refused, saying why.
    for bad in ["jane doe", "", "j%ne"] {
        let err = crate::output::stack_output(&spec, &fake.obs, bad).expect_err(bad);
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("--user {bad:?}: IAM user name")),
            "{text}"
        );
    }
}

#[test]
fn output_json_lists_subnets_and_nat_ips() {
    let spec = spec("per_az");
    let mut fake = Fake::new();
    fake.converge(&spec);
    let out = crate::output::stack_output(&spec, &fake.obs, "alice").expect("output");
    assert_eq!(out.subnet_ids.len(), 4);
    assert_eq!(out.nat_public_ips.len(), 2);
    assert!(out.vpc_id.is_some() && out.bastion_instance_id.is_some());
}

#[test]
fn a_host_removed_from_the_spec_is_terminated() {
    let spec_a = spec("single");
    let mut fake = Fake::new();
    fake.converge(&spec_a);
    let without = SPEC.replace("NAT", "single");
    let without = &without[..without.find("[[hosts]]").expect("hosts")];
    let spec_b = parse("t.toml", without, None).expect("spec");
    let plan = plan_apply(&spec_b, &fake.obs).expect("plan");
    assert!(
        matches!(
            plan.steps.as_slice(),
            [Step {
                sign: Sign::Delete,
                action: Action::TerminateInstance { .. },
                ..
            }]
        ),
        "{}",
        plan.render()
    );
}

/// The spec with `gatehouse_binary` (a stand-in ELF file of `fill` bytes in `dir`) and the
/// fake AWS's account.
fn stored_spec(dir: &std::path::Path, fill: u8) -> Spec {
    let path = dir.join("gatehouse");
    let mut bytes = b"\x7fELF".to_vec();
    bytes.resize(4096, fill);
    std::fs::write(&path, bytes).expect("write binary");
    let text = SPEC.replace("NAT", "single").replace(
        "gatehouse_download_url = \"https://example.org/gatehouse\"",
        &format!("gatehouse_binary = {:?}", path.display().to_string()),
    );
    parse("t.toml", &text, None).expect("spec")
}

fn fake_in_account() -> Fake {
    let mut fake = Fake::new();
    fake.obs.account = "123456789012".into();
    fake
}

#[test]
fn a_stored_binary_gets_a_secured_bucket_before_the_bastion_and_the_role_may_read_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url_spec = spec("single");
    let spec = stored_spec(dir.path(), 1);
    let crate::spec::Binary::Stored { sha256, .. } = &spec.bastion.binary else {
        panic!("a stored binary: {:?}", spec.bastion.binary);
    };
    let mut fake = fake_in_account();
    let plan = plan_apply(&spec, &fake.obs).expect("plan");
    let create = position(
        &plan,
        |a| matches!(a, Action::CreateBucket { name, .. } if name == "gatehouse-lab-123456789012"),
    );
    let secure = position(&plan, |a| matches!(a, Action::SecureBucket { .. }));
    let upload = position(
        &plan,
        |a| matches!(a, Action::PutBinary { object, .. } if *object == format!("gatehouse/{sha256}")),
    );
    let bastion = position(
        &plan,
        |a| matches!(a, Action::RunInstance { launch, .. } if launch.bastion),
    );
    assert!(
        create < secure && secure < upload && upload < bastion,
        "{}",
        plan.render()
    );
    assert_eq!(fake.converge(&spec), 1);
    let bucket = fake.obs.bucket.clone().expect("bucket");
    assert_eq!(bucket.objects, vec![format!("gatehouse/{sha256}")]);
    assert!(bucket.public_access_blocked && bucket.encrypted);
    assert_eq!(bucket.tags.get(TAG_STACK).map(String::as_str), Some("lab"));
    let statement = fake
        .obs
        .role
        .as_ref()
        .and_then(|r| r.policy.clone())
        .expect("policy")["Statement"]
        .as_array()
        .and_then(|s| {
            s.iter()
                .find(|s| s["Sid"] == "FetchGatehouseBinary")
                .cloned()
        })
        .expect("the fetch statement");
    assert_eq!(statement["Action"], serde_json::json!(["s3:GetObject"]));
    assert_eq!(
        statement["Resource"],
        "arn:aws:s3:::gatehouse-lab-123456789012/gatehouse/*"
    );

    // A new build: uploaded, the bastion replaced, then the old object deleted.
    let next = stored_spec(dir.path(), 2);
    let plan = plan_apply(&next, &fake.obs).expect("plan");
    let upload = position(&plan, |a| matches!(a, Action::PutBinary { .. }));
    let bastion = position(
        &plan,
        |a| matches!(a, Action::RunInstance { launch, .. } if launch.bastion),
    );
    let delete = position(
        &plan,
        |a| matches!(a, Action::DeleteObject { object, .. } if *object == format!("gatehouse/{sha256}")),
    );
    assert!(upload < bastion && bastion < delete, "{}", plan.render());
    assert!(
        !plan.render().contains("instance/jupyter"),
        "{}",
        plan.render()
    );
    assert_eq!(fake.converge(&next), 1);

    // Back to a download URL: the bucket goes; destroy removes it too.
    let plan = plan_apply(&url_spec, &fake.obs).expect("plan");
    position(&plan, |a| matches!(a, Action::DeleteBucket { .. }));
    fake.converge(&next);
    let plan = plan_destroy("lab", &fake.obs, AuditLog::Keep);
    position(
        &plan,
        |a| matches!(a, Action::DeleteBucket { name } if name == "gatehouse-lab-123456789012"),
    );
}

#[test]
fn a_bucket_of_the_stacks_name_not_ours_is_refused_and_never_destroyed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url_spec = spec("single");
    let spec = stored_spec(dir.path(), 1);
    let mut obs = fake_in_account().obs;
    // Untagged and holding something: not an interrupted apply's empty bucket.
    obs.bucket = Some(ObsBucket {
        name: "gatehouse-lab-123456789012".into(),
        objects: vec!["theirs".into()],
        ..ObsBucket::default()
    });
    let err = plan_apply(&spec, &obs).expect_err("not ours");
    assert!(err.to_string().contains("S3 bucket"), "{err}");
    assert!(plan_destroy("lab", &obs, AuditLog::Keep).is_empty());
    // A spec with a download URL leaves it alone as well.
    let plan = plan_apply(&url_spec, &obs).expect("plan");
    assert!(!plan.render().contains("bucket"), "{}", plan.render());
}

#[test]
fn a_spec_loaded_without_its_binary_cannot_be_planned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = SPEC.replace("NAT", "single").replace(
        "gatehouse_download_url = \"https://example.org/gatehouse\"",
        "gatehouse_binary = \"gone\"",
    );
    let origin = dir.path().join("t.toml");
    let origin = origin.to_str().expect("utf-8 path");
    let err = parse(origin, &text, None).expect_err("the binary is missing");
    assert!(err.to_string().contains("gatehouse_binary"), "{err}");
    let spec = crate::spec::parse_with(origin, &text, None, crate::spec::ReadBinary::No)
        .expect("destroy and output load it");
    let err = plan_apply(&spec, &fake_in_account().obs).expect_err("no digest");
    assert!(
        err.to_string().contains("without reading gatehouse_binary"),
        "{err}"
    );
}

#[test]
fn an_untagged_empty_bucket_of_the_stacks_name_is_adopted_after_an_interrupted_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = stored_spec(dir.path(), 1);
    let mut fake = fake_in_account();
    fake.converge(&spec);
    let bucket = fake.obs.bucket.as_mut().expect("bucket");
    bucket.tags.clear();
    bucket.objects.clear();
    let plan = plan_apply(&spec, &fake.obs).expect("adopted, not refused");
    position(
        &plan,
        |a| matches!(a, Action::TagBucket { tags, .. } if tags.get(TAG_STACK).map(String::as_str) == Some("lab")),
    );
    position(&plan, |a| matches!(a, Action::PutBinary { .. }));
    position(&plan_destroy("lab", &fake.obs, AuditLog::Keep), |a| {
        matches!(a, Action::DeleteBucket { .. })
    });
    assert_eq!(fake.converge(&spec), 1);
}

#[test]
fn the_binary_url_is_the_regions_s3_endpoint() {
    use crate::userdata::binary_url;
    assert_eq!(
        binary_url("eu-central-1", "gatehouse-lab-123456789012", "ab"),
        "https://gatehouse-lab-123456789012.s3.eu-central-1.amazonaws.com/gatehouse/ab"
    );
    assert_eq!(
        binary_url("cn-north-1", "gatehouse-lab-123456789012", "ab"),
        "https://gatehouse-lab-123456789012.s3.cn-north-1.amazonaws.com.cn/gatehouse/ab"
    );
}

// ---- IAM change events ([bastion] iam_events) ----

const ACCOUNT: &str = "123456789012";

fn events_spec() -> Spec {
    let text = SPEC.replace("NAT", "single").replace(
        "gatehouse_download_url",
        "iam_events = true\ngatehouse_download_url",
    );
    parse("t.toml", &text, None).expect("spec")
}

/// A multi-region trail that logs every management event: what iam_events needs.
fn delivering_trail() -> ObsTrail {
    ObsTrail {
        name: "org".into(),
        arn: format!("arn:aws:cloudtrail:eu-west-1:{ACCOUNT}:trail/org"),
        home_region: "eu-west-1".into(),
        multi_region: true,
        global_service_events: true,
        logging: Some(true),
        management_writes: Some(true),
    }
}

/// The fake AWS of an account with a trail that delivers IAM's events.
fn fake_with_trail() -> Fake {
    let mut fake = fake_in_account();
    fake.obs.trails = Some(vec![delivering_trail()]);
    fake
}

#[test]
fn iam_events_converge_to_a_tagged_queue_and_rule_the_bastion_reads() {
    let spec = events_spec();
    let mut fake = fake_with_trail();
    let plan = plan_apply(&spec, &fake.obs).expect("plan");
    let queue = position(&plan, |a| matches!(a, Action::CreateEventQueue { .. }));
    let rule = position(&plan, |a| matches!(a, Action::PutEventRule { .. }));
    let target = position(&plan, |a| matches!(a, Action::PutEventTarget { .. }));
    let bastion = position(
        &plan,
        |a| matches!(a, Action::RunInstance { launch, .. } if launch.bastion),
    );
    assert!(
        queue < rule && rule < target && target < bastion,
        "{}",
        plan.render()
    );
    let text = plan.render();
    assert!(
        text.contains("+ sqs queue gatehouse-lab-iam-events"),
        "{text}"
    );
    assert!(
        text.contains("+ events rule gatehouse-lab-iam-changes"),
        "{text}"
    );
    assert_eq!(fake.converge(&spec), 1);

    let q = fake.obs.queue.clone().expect("the queue");
    assert_eq!(q.name, "gatehouse-lab-iam-events");
    let attr = |k: &str| q.attributes.get(k).cloned().unwrap_or_default();
    assert_eq!(attr("MessageRetentionPeriod"), "60");
    assert_eq!(attr("VisibilityTimeout"), "0");
    assert_eq!(attr("ReceiveMessageWaitTimeSeconds"), "20");
    assert_eq!(attr("SqsManagedSseEnabled"), "true");
    let policy: serde_json::Value = serde_json::from_str(&attr("Policy")).expect("policy");
    let rule = "arn:aws:events:us-east-1:123456789012:rule/gatehouse-lab-iam-changes";
    assert_eq!(
        policy["Statement"],
        serde_json::json!([{
            "Sid": "OnlyTheStacksRule",
            "Effect": "Allow",
            "Principal": {"Service": "events.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": "arn:aws:sqs:us-east-1:123456789012:gatehouse-lab-iam-events",
            "Condition": {"ArnEquals": {"aws:SourceArn": rule}},
        }, {
            "Sid": "NoOtherSender",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "sqs:SendMessage",
            "Resource": "arn:aws:sqs:us-east-1:123456789012:gatehouse-lab-iam-events",
            "Condition": {"ArnNotEquals": {"aws:SourceArn": rule}},
        }])
    );
    assert_eq!(q.tags.get(TAG_STACK).map(String::as_str), Some("lab"));
    assert_eq!(
        q.tags.get(TAG_RESOURCE).map(String::as_str),
        Some("queue/iam-events")
    );

    let r = fake.obs.rule.clone().expect("the rule");
    assert_eq!(r.name, "gatehouse-lab-iam-changes");
    assert_eq!(r.pattern, Some(gatehouse_aws::events::iam_event_pattern()));
    assert_eq!(r.state, "ENABLED");
    assert_eq!(
        r.targets,
        [ObsTarget {
            id: "queue".into(),
            arn: "arn:aws:sqs:us-east-1:123456789012:gatehouse-lab-iam-events".into(),
            rewrites: false,
        }]
    );
    assert_eq!(r.tags.get(TAG_STACK).map(String::as_str), Some("lab"));

    // The role receives from that queue and re-reads the users events name.
    let role = fake
        .obs
        .role
        .as_ref()
        .and_then(|r| r.policy.clone())
        .expect("policy");
    let statement = role["Statement"]
        .as_array()
        .and_then(|s| {
            s.iter()
                .find(|s| s["Sid"] == "ReceiveIamChangeEvents")
                .cloned()
        })
        .unwrap_or_else(|| panic!("no queue statement: {role:#}"));
    assert_eq!(
        statement["Action"],
        serde_json::json!(["sqs:ReceiveMessage"])
    );
    assert_eq!(
        statement["Resource"],
        "arn:aws:sqs:us-east-1:123456789012:gatehouse-lab-iam-events"
    );
    assert!(role.to_string().contains("iam:GetUser"), "{role:#}");
    // And the bastion launched with the config naming it, in this account.
    let vpc = fake.obs.vpcs[0].id.clone();
    let config = crate::userdata::daemon_config(&spec, &vpc, ACCOUNT);
    assert!(
        config.contains(
            "events_queue_url = \"https://sqs.us-east-1.amazonaws.com/123456789012/gatehouse-lab-iam-events\""
        ),
        "{config}"
    );
    let bastion = fake
        .obs
        .instances
        .iter()
        .find(|i| i.key == "instance/bastion")
        .expect("bastion");
    assert_eq!(
        bastion.tags.get(TAG_USER_DATA),
        Some(&sha256_hex(&crate::userdata::render(
            &spec, &vpc, ACCOUNT, None
        )))
    );
}

#[test]
fn iam_events_drift_is_repaired_and_only_drift() {
    let spec = events_spec();
    let mut fake = fake_with_trail();
    fake.converge(&spec);
    let q = fake.obs.queue.as_mut().expect("queue");
    q.attributes
        .insert("MessageRetentionPeriod".into(), "345600".into());
    q.attributes.remove("Policy");
    // The same policy reformatted is no drift.
    let policy = crate::policy::event_queue_policy(
        &event_queue_arn("lab", ACCOUNT),
        &event_rule_arn("lab", ACCOUNT),
    );
    q.attributes.insert(
        "Policy".into(),
        serde_json::to_string_pretty(&policy).expect("json"),
    );
    q.tags.insert(TAG_RESOURCE.into(), "edited".into());
    let r = fake.obs.rule.as_mut().expect("rule");
    r.pattern = Some(serde_json::json!({"source": ["aws.iam"]}));
    r.state = "DISABLED".into();
    r.targets[0].rewrites = true;
    r.targets.push(ObsTarget {
        id: "mine".into(),
        arn: "arn:aws:sqs:us-east-1:123456789012:elsewhere".into(),
        rewrites: false,
    });
    let plan = plan_apply(&spec, &fake.obs).expect("plan");
    let text = plan.render();
    assert_eq!(plan.steps.len(), 5, "{text}");
    for line in [
        "~ sqs queue gatehouse-lab-iam-events attributes MessageRetentionPeriod\n",
        "~ sqs queue gatehouse-lab-iam-events tags gatehouse:resource\n",
        "~ events rule gatehouse-lab-iam-changes event pattern, state DISABLED -> ENABLED\n",
        "~ events rule gatehouse-lab-iam-changes - targets mine\n",
        "~ events rule gatehouse-lab-iam-changes target queue -> gatehouse-lab-iam-events, events as they are\n",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }
    fake.apply(&spec, &plan);
    assert!(plan_apply(&spec, &fake.obs).expect("plan").is_empty());

    // The target gone entirely, the policy gone: put back.
    fake.obs.rule.as_mut().expect("rule").targets.clear();
    fake.obs
        .queue
        .as_mut()
        .expect("queue")
        .attributes
        .remove("Policy");
    let plan = plan_apply(&spec, &fake.obs).expect("plan");
    assert_eq!(plan.steps.len(), 2, "{}", plan.render());
    assert_eq!(fake.converge(&spec), 1);
}

#[test]
fn iam_events_off_removes_queue_and_rule_and_destroy_removes_them_too() {
    let on = events_spec();
    let off = spec("single");
    let mut fake = fake_with_trail();
    fake.converge(&on);
    let plan = plan_apply(&off, &fake.obs).expect("plan");
    let text = plan.render();
    let rule = position(&plan, |a| {
        matches!(a, Action::DeleteEventRule { name, target_ids }
            if name == "gatehouse-lab-iam-changes" && target_ids == &["queue".to_owned()])
    });
    let queue = position(&plan, |a| matches!(a, Action::DeleteEventQueue { .. }));
    assert!(rule < queue, "{text}");
    // The config changes: the bastion is replaced, its role loses the queue.
    assert!(text.contains("replace: user data changed"), "{text}");
    assert!(text.contains("update inline policy"), "{text}");
    assert_eq!(fake.converge(&off), 1);
    assert!(fake.obs.queue.is_none() && fake.obs.rule.is_none());
    // On again: created again (an account without the trail need not be asked: off reads none).
    assert_eq!(fake.converge(&on), 1);
    assert!(fake.obs.queue.is_some() && fake.obs.rule.is_some());
    let plan = plan_destroy("lab", &fake.obs, AuditLog::Delete);
    let rule = position(&plan, |a| matches!(a, Action::DeleteEventRule { .. }));
    let queue = position(&plan, |a| matches!(a, Action::DeleteEventQueue { .. }));
    assert!(rule < queue, "{}", plan.render());
    fake.apply(&on, &plan);
    assert!(fake.obs.is_empty(), "{:#?}", fake.obs);
}

#[test]
fn iam_events_need_a_trail_that_delivers_iam_events_to_us_east_1() {
    let events = events_spec();
    let mut obs = fake_in_account().obs;
    // Not read: a bug, said so.
    let err = plan_apply(&events, &obs).expect_err("trails not read");
    assert!(err.to_string().contains("trails were not read"), "{err}");
    // None at all.
    obs.trails = Some(vec![]);
    let err = plan_apply(&events, &obs).expect_err("no trail").to_string();
    assert!(
        err.starts_with(
            "[bastion] iam_events: no CloudTrail trail delivers IAM's API calls to EventBridge \
             in us-east-1"
        ),
        "{err}"
    );
    assert!(
        err.contains("The account has no trail that us-east-1 sees."),
        "{err}"
    );
    assert!(err.contains("or set iam_events = false"), "{err}");
    // Each way a trail can fall short, named.
    let off = ObsTrail {
        name: "stopped".into(),
        logging: Some(false),
        management_writes: None,
        ..delivering_trail()
    };
    let local = ObsTrail {
        name: "local".into(),
        home_region: "us-east-1".into(),
        multi_region: false,
        global_service_events: false,
        logging: None,
        management_writes: None,
        ..delivering_trail()
    };
    let reads = ObsTrail {
        name: "reads".into(),
        management_writes: Some(false),
        ..delivering_trail()
    };
    obs.trails = Some(vec![off, local.clone(), reads]);
    let err = plan_apply(&events, &obs)
        .expect_err("no delivering trail")
        .to_string();
    assert!(
        err.contains(
            "Trails: stopped (logging is off); local (without global service events); reads (its \
             event selectors record no management write events)."
        ),
        "{err}"
    );
    // Nothing planned either: the refusal comes before any step.
    // A single-region trail in us-east-1 with global service events does deliver.
    let local = ObsTrail {
        global_service_events: true,
        logging: Some(true),
        management_writes: Some(true),
        ..local
    };
    obs.trails = Some(vec![local]);
    assert!(plan_apply(&events, &obs).is_ok());
    // Without the switch, trails are neither needed nor read.
    let mut obs = fake_in_account().obs;
    obs.trails = None;
    assert!(plan_apply(&spec("single"), &obs).is_ok());
}

#[test]
fn a_queue_or_rule_of_the_stacks_name_not_ours_is_refused_and_never_destroyed() {
    let events = events_spec();
    let mut fake = fake_with_trail();
    fake.converge(&events);
    let mut foreign = fake.obs.clone();
    foreign.queue.as_mut().expect("queue").tags.clear();
    let err = plan_apply(&events, &foreign).expect_err("not ours");
    assert!(
        err.to_string().starts_with(
            "SQS queue \"gatehouse-lab-iam-events\" exists but does not carry gatehouse:stack = lab"
        ),
        "{err}"
    );
    let mut foreign = fake.obs.clone();
    foreign
        .rule
        .as_mut()
        .expect("rule")
        .tags
        .insert(TAG_STACK.into(), "other".into());
    let err = plan_apply(&events, &foreign).expect_err("not ours");
    assert!(err.to_string().contains("EventBridge rule"), "{err}");
    // Without the switch, and in destroy, someone else's are left alone.
    foreign.queue.as_mut().expect("queue").tags.clear();
    let plan = plan_apply(&spec("single"), &foreign).expect("plan");
    assert!(!plan.render().contains("iam-"), "{}", plan.render());
    let plan = plan_destroy("lab", &foreign, AuditLog::Keep);
    assert!(!plan.render().contains("iam-"), "{}", plan.render());
}

// ---- the audit log group ----

/// The spec with `[bastion] audit_retention_days = days`.
fn retention_spec(days: i32) -> Spec {
    let text = SPEC.replace("NAT", "single").replace(
        "gatehouse_download_url",
        &format!("audit_retention_days = {days}\ngatehouse_download_url"),
    );
    parse("t.toml", &text, None).expect("spec")
}

#[test]
fn the_audit_log_group_is_created_tagged_with_its_retention_before_the_bastion() {
    let spec = spec("single");
    let mut fake = fake_in_account();
    let plan = plan_apply(&spec, &fake.obs).expect("plan");
    let group = position(&plan, |a| {
        matches!(a, Action::CreateAuditLogGroup { name, retention_days, .. }
            if name == "/gatehouse/lab/audit" && *retention_days == 365)
    });
    let bastion = position(
        &plan,
        |a| matches!(a, Action::RunInstance { launch, .. } if launch.bastion),
    );
    assert!(group < bastion, "{}", plan.render());
    assert!(
        plan.render().contains(
            "+ log group /gatehouse/lab/audit the bastions' audit lines, retention 365 days; \
             destroy keeps it (--delete-audit-log deletes it)\n"
        ),
        "{}",
        plan.render()
    );
    assert_eq!(fake.converge(&spec), 1);
    let g = fake.obs.log_group.clone().expect("the log group");
    assert_eq!(g.retention_days, Some(365));
    assert_eq!(g.tags, base_tags(&spec, AUDIT_LOG_GROUP_KEY));
    assert_eq!(g.tags.get(TAG_STACK).map(String::as_str), Some("lab"));
    assert_eq!(
        g.tags.get(TAG_RESOURCE).map(String::as_str),
        Some("log-group/audit")
    );
    assert_eq!(
        g.arn,
        "arn:aws:logs:eu-central-1:123456789012:log-group:/gatehouse/lab/audit"
    );

    // Another retention in the spec: one change, the group is kept (and so are its lines),
    // and the bastion is not replaced (its config does not name the retention).
    let monthly = retention_spec(30);
    let plan = plan_apply(&monthly, &fake.obs).expect("plan");
    assert_eq!(
        plan.render(),
        "~ log group /gatehouse/lab/audit retention 365 days -> retention 30 days\n\
         stack lab: 0 to create, 1 to change, 0 to delete\n"
    );
    assert_eq!(fake.converge(&monthly), 1);
    assert_eq!(
        fake.obs.log_group.as_ref().and_then(|g| g.retention_days),
        Some(30)
    );
}

#[test]
fn audit_log_group_drift_is_repaired_and_only_drift() {
    let spec = spec("single");
    let mut fake = fake_in_account();
    fake.converge(&spec);
    // An apply killed between CreateLogGroup and PutRetentionPolicy: no retention; and a tag
    // removed, another edited, by hand.
    let g = fake.obs.log_group.as_mut().expect("log group");
    g.retention_days = None;
    g.tags.remove("Name");
    g.tags.insert(TAG_RESOURCE.into(), "edited".into());
    g.tags.insert("extra".into(), "kept".into());
    let plan = plan_apply(&spec, &fake.obs).expect("plan");
    let text = plan.render();
    assert_eq!(plan.steps.len(), 2, "{text}");
    assert!(
        text.contains(
            "~ log group /gatehouse/lab/audit retention: never expires -> retention 365 days\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("~ log group /gatehouse/lab/audit tags Name, gatehouse:resource\n"),
        "{text}"
    );
    fake.apply(&spec, &plan);
    assert!(plan_apply(&spec, &fake.obs).expect("plan").is_empty());
}

#[test]
fn destroy_keeps_the_audit_log_group_unless_asked_and_a_new_stack_adopts_it() {
    let spec = spec("single");
    let mut fake = fake_in_account();
    fake.converge(&spec);
    let plan = plan_destroy("lab", &fake.obs, AuditLog::Keep);
    assert!(
        !plan
            .steps
            .iter()
            .any(|s| matches!(s.action, Action::DeleteAuditLogGroup { .. })),
        "{}",
        plan.render()
    );
    assert_eq!(
        plan.kept,
        [Kept {
            resource: "log group /gatehouse/lab/audit".into(),
            detail: "the audit trail outlives the stack (retention 365 days); \
                     `destroy --delete-audit-log` deletes it"
                .into(),
        }]
    );
    let text = plan.render();
    assert!(
        text.contains(
            "\n= log group /gatehouse/lab/audit the audit trail outlives the stack (retention 365 \
             days); `destroy --delete-audit-log` deletes it\nstack lab: 0 to create, 0 to \
             change, "
        ),
        "{text}"
    );
    fake.apply(&spec, &plan);
    let left = only_ours("lab", &fake.obs);
    assert!(left.log_group.is_some(), "{left:#?}");
    let mut without_group = left.clone();
    without_group.log_group = None;
    assert!(without_group.is_empty(), "{without_group:#?}");
    // Nothing more to destroy; the group is still named as kept.
    let again = plan_destroy("lab", &fake.obs, AuditLog::Keep);
    assert!(again.is_empty());
    assert_eq!(again.kept.len(), 1);
    assert!(again
        .render()
        .starts_with("= log group /gatehouse/lab/audit"));

    // The stack made again continues the same trail: the group is adopted, not re-created.
    let plan = plan_apply(&spec, &fake.obs).expect("plan");
    assert!(
        !plan
            .steps
            .iter()
            .any(|s| matches!(s.action, Action::CreateAuditLogGroup { .. })),
        "{}",
        plan.render()
    );
    assert_eq!(fake.converge(&spec), 1);

    // Asked: it goes, last.
    let plan = plan_destroy("lab", &fake.obs, AuditLog::Delete);
    assert!(plan.kept.is_empty());
    assert!(
        matches!(
            plan.steps.last().map(|s| &s.action),
            Some(Action::DeleteAuditLogGroup { name }) if name == "/gatehouse/lab/audit"
        ),
        "{}",
        plan.render()
    );
    fake.apply(&spec, &plan);
    assert!(fake.obs.is_empty(), "{:#?}", fake.obs);
}

#[test]
fn a_log_group_of_the_stacks_name_not_ours_is_refused_and_never_destroyed() {
    let spec = spec("single");
    let mut fake = fake_in_account();
    fake.converge(&spec);
    for tags in [
        Tags::new(),
        Tags::from([(TAG_STACK.to_owned(), "other".to_owned())]),
    ] {
        let mut foreign = fake.obs.clone();
        foreign.log_group.as_mut().expect("log group").tags = tags;
        let err = plan_apply(&spec, &foreign).expect_err("not ours");
        assert_eq!(
            err.to_string(),
            "CloudWatch Logs log group \"/gatehouse/lab/audit\" exists but does not carry \
             gatehouse:stack = lab; refusing to touch it"
        );
        for audit in [AuditLog::Keep, AuditLog::Delete] {
            let plan = plan_destroy("lab", &foreign, audit);
            assert!(
                !plan
                    .steps
                    .iter()
                    .any(|s| matches!(s.action, Action::DeleteAuditLogGroup { .. })),
                "{}",
                plan.render()
            );
            assert_eq!(
                plan.kept,
                [Kept {
                    resource: "log group /gatehouse/lab/audit".into(),
                    detail: "does not carry gatehouse:stack = lab: not the stack's, left alone"
                        .into(),
                }]
            );
        }
    }
}

// ---- replicas behind a load balancer ----

fn replicas_spec(replicas: u32, download: &str) -> Spec {
    let text = spec("single").bastion.daemon.clone();
    assert!(text.is_empty());
    parse(
        "t.toml",
        &SPEC.replace("NAT", "single").replace(
            "gatehouse_download_url = \"https://example.org/gatehouse\"",
            &format!("gatehouse_download_url = \"{download}\"\nreplicas = {replicas}"),
        ),
        None,
    )
    .expect("valid spec with replicas")
}

#[test]
fn replicas_from_empty_converge_behind_a_balancer_that_alone_admits_allowed_cidrs() {
    let spec = replicas_spec(3, "https://example.org/gatehouse");
    let mut fake = fake_in_account();
    let plan = plan_apply(&spec, &fake.obs).expect("plan");
    let text = plan.render();
    // Everything the group needs exists before it.
    let group = position(&plan, |a| {
        matches!(a, Action::CreateAutoScalingGroup { .. })
    });
    for pred in [
        (|a: &Action| matches!(a, Action::CreateLaunchTemplate { .. })) as fn(&Action) -> bool,
        |a| matches!(a, Action::CreateListener { .. }),
        |a| matches!(a, Action::SetTargetGroupAttributes { .. }),
        |a| matches!(a, Action::AddRoleToProfile { .. }),
        |a| matches!(a, Action::CreateAuditLogGroup { .. }),
        |a| matches!(a, Action::SecureBucket { .. }),
    ] {
        assert!(position(&plan, pred) < group, "{text}");
    }
    // Rules come after every group they name.
    let last_group = plan
        .steps
        .iter()
        .rposition(|s| matches!(s.action, Action::CreateSecurityGroup { .. }))
        .expect("groups");
    let first_rule = position(&plan, |a| matches!(a, Action::Authorize { .. }));
    assert!(last_group < first_rule, "{text}");
    assert!(
        !plan.steps.iter().any(|s| matches!(
            &s.action,
            Action::RunInstance { key, .. } if key == "instance/bastion"
        ) || matches!(&s.action, Action::AssociateAddress { .. })),
        "no single bastion, no Elastic IP: {text}"
    );
    assert_eq!(fake.converge(&spec), 1);

    let o = &fake.obs;
    assert!(!o.eips.iter().any(|e| e.key == "eip/bastion"), "{o:#?}");
    let b = o.balancer.as_ref().expect("balancer");
    assert_eq!((b.name.as_str(), b.cross_zone), ("gh-lab", true));
    // One subnet per zone: both public subnets.
    assert_eq!(b.subnets.len(), 2, "{b:?}");
    let t = o.target_group.as_ref().expect("target group");
    assert_eq!(
        t.attributes,
        replicas::target_group_attributes(&spec),
        "{t:?}"
    );
    assert_eq!(t.attributes["deregistration_delay.timeout_seconds"], "30");
    assert_eq!(t.attributes["proxy_protocol_v2.enabled"], "true");
    assert_eq!(t.attributes["preserve_client_ip.enabled"], "false");
    let g = o.group.as_ref().expect("group");
    assert_eq!((g.min, g.desired, g.max), (3, 3, 6));
    assert_eq!(g.subnets.len(), 2, "over every public subnet");
    assert_eq!(o.listeners.len(), 1);
    // The replicas admit only the balancer's group; the balancer admits only allowed_cidrs.
    let sg = |key: &str| {
        o.security_groups
            .iter()
            .find(|g| g.key == key)
            .unwrap_or_else(|| panic!("{key}"))
    };
    let nlb = sg("sg/nlb");
    assert_eq!(b.security_groups, std::slice::from_ref(&nlb.id));
    assert_eq!(
        nlb.ingress,
        [Rule {
            proto: "tcp".into(),
            from: 22,
            to: 22,
            peer: Peer::Cidr("198.51.100.0/24".into())
        }]
    );
    let mut ports: Vec<i32> = sg("sg/bastion")
        .ingress
        .iter()
        .inspect(|r| assert_eq!(r.peer, Peer::Group(nlb.id.clone()), "{r:?}"))
        .map(|r| r.from)
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, [22, i32::from(crate::userdata::HEALTH_PORT)]);
    // The shared listing's bucket, and the role may read and write its one object.
    let bucket = o.bucket.as_ref().expect("a bucket for the shared listing");
    assert_eq!(bucket.name, binary_bucket("lab", "123456789012"));
    let policy = o
        .role
        .as_ref()
        .and_then(|r| r.policy.clone())
        .expect("policy");
    assert!(
        policy.to_string().contains(&format!(
            "arn:aws:s3:::{}/{SHARED_SNAPSHOT_OBJECT}",
            bucket.name
        )),
        "{policy:#}"
    );
    // The daemon's config: PROXY v2 on port 22 from the public subnets, the health port,
    // the shared listing; and the socket unit's drop-in.
    let config = crate::userdata::daemon_config(&spec, "vpc-1", "123456789012");
    let parsed: toml::Table = config.parse().expect("toml");
    assert_eq!(parsed["server"]["listen"], toml::Value::Array(Vec::new()));
    assert_eq!(
        parsed["server"]["proxy_listen"],
        toml::Value::from(vec!["0.0.0.0:22"])
    );
    assert_eq!(
        parsed["server"]["trusted_proxies"],
        toml::Value::from(vec!["10.0.0.0/24", "10.0.1.0/24"])
    );
    assert_eq!(
        parsed["server"]["health_listen"].as_str(),
        Some("0.0.0.0:8022")
    );
    assert_eq!(
        parsed["aws"]["shared_snapshot"].as_str(),
        Some("s3://gatehouse-lab-123456789012/directory/aws-directory.json")
    );
    let user_data = crate::userdata::render(&spec, "vpc-1", "123456789012", None);
    assert!(
        user_data.contains("gatehouse.socket.d/proxy.conf")
            && user_data.contains("FileDescriptorName=proxy"),
        "{user_data}"
    );
    // Each replica carries the digest of the user data it runs.
    let replica = o
        .instances
        .iter()
        .find(|i| i.key == REPLICA_KEY)
        .expect("replica");
    assert_eq!(
        replica.tags.get(TAG_USER_DATA),
        o.launch_templates[0].user_data_sha256.as_ref()
    );

    // The object the daemons write is kept.
    fake.bucket().objects.push(SHARED_SNAPSHOT_OBJECT.into());
    assert!(plan_apply(&spec, &fake.obs).expect("plan").is_empty());
}

#[test]
fn one_to_n_to_one_converges_and_destroy_removes_the_balancer_after_the_group() {
    let one = spec("single");
    let three = replicas_spec(3, "https://example.org/gatehouse");
    let mut fake = fake_in_account();
    assert_eq!(fake.converge(&one), 1);
    assert_eq!(fake.converge(&three), 1);
    assert!(!fake
        .obs
        .instances
        .iter()
        .any(|i| i.key == "instance/bastion"));
    assert!(!fake.obs.eips.iter().any(|e| e.key == "eip/bastion"));
    assert_eq!(
        fake.obs
            .instances
            .iter()
            .filter(|i| i.key == REPLICA_KEY)
            .count(),
        3
    );
    // 3 -> 2: the group shrinks and the alarm on its healthy replicas follows, nothing else.
    let two = replicas_spec(2, "https://example.org/gatehouse");
    let plan = plan_apply(&two, &fake.obs).expect("plan");
    assert_eq!(plan.steps.len(), 2, "{}", plan.render());
    assert!(
        plan.render().contains("size 3/3/6 -> 2/2/4")
            && plan.render().contains(
                "~ alarm gatehouse-lab-healthy-replicas put back: threshold, description"
            ),
        "{}",
        plan.render()
    );
    assert_eq!(fake.converge(&two), 1);
    // Back to one bastion: the group, balancer, listener, target group, template and the
    // balancer's group go; the bastion and its address come back.
    let plan = plan_apply(&one, &fake.obs).expect("plan");
    let text = plan.render();
    let first = |pred: fn(&Action) -> bool| position(&plan, pred);
    assert!(
        first(|a| matches!(a, Action::DeleteAutoScalingGroup { .. }))
            < first(|a| matches!(a, Action::DeleteLoadBalancer { .. })),
        "{text}"
    );
    assert!(
        first(|a| matches!(a, Action::DeleteLoadBalancer { .. }))
            < first(|a| matches!(a, Action::DeleteTargetGroup { .. })),
        "{text}"
    );
    // The replicas' group still names the balancer's: that rule goes before the group.
    assert!(
        first(|a| matches!(a, Action::RevokeIngressById { .. }))
            < first(|a| matches!(a, Action::DeleteSecurityGroup { .. })),
        "{text}"
    );
    assert_eq!(fake.converge(&one), 1);
    let o = &fake.obs;
    assert!(o.group.is_none() && o.balancer.is_none() && o.target_group.is_none());
    assert!(o.launch_templates.is_empty() && o.listeners.is_empty());
    assert!(o.bucket.is_none(), "the URL binary needs no bucket");
    assert!(o.instances.iter().any(|i| i.key == "instance/bastion"));
    // And destroy from N removes everything, the group before what it uses.
    assert_eq!(fake.converge(&three), 1);
    let plan = plan_destroy("lab", &fake.obs, AuditLog::Delete);
    let first = |pred: fn(&Action) -> bool| position(&plan, pred);
    assert!(
        first(|a| matches!(a, Action::DeleteAutoScalingGroup { .. }))
            < first(|a| matches!(a, Action::DeleteLaunchTemplate { .. }))
    );
    assert!(
        first(|a| matches!(a, Action::DeleteLoadBalancer { .. }))
            < first(|a| matches!(a, Action::DeleteSubnet { .. }))
    );
    fake.apply(&three, &plan);
    assert!(fake.obs.is_empty(), "{:#?}", fake.obs);
}

#[test]
fn a_new_binary_rolls_the_replicas_new_ones_first_and_nothing_else() {
    let old = replicas_spec(3, "https://example.org/gatehouse");
    let mut fake = fake_in_account();
    fake.converge(&old);
    let before: Vec<String> = fake
        .obs
        .group
        .as_ref()
        .expect("group")
        .members
        .iter()
        .map(|m| m.id.clone())
        .collect();
    let new = replicas_spec(3, "https://example.org/gatehouse-2");
    let plan = plan_apply(&new, &fake.obs).expect("plan");
    let text = plan.render();
    assert!(
        !plan.steps.iter().any(|s| s.sign == Sign::Delete),
        "no replica is terminated directly: {text}"
    );
    let version = position(&plan, |a| {
        matches!(a, Action::CreateLaunchTemplateVersion { .. })
    });
    let update = position(&plan, |a| {
        matches!(a, Action::UpdateAutoScalingGroup { .. })
    });
    let roll = position(
        &plan,
        |a| matches!(a, Action::RollReplicas { outdated, .. } if outdated.len() == 3),
    );
    assert!(version < update && update < roll, "{text}");
    assert!(text.contains("version 2: user data changed"), "{text}");
    assert!(
        text.contains("replace 3 of 3 replica(s), new ones first"),
        "{text}"
    );
    assert_eq!(fake.converge(&new), 1);
    let after = &fake.obs.group.as_ref().expect("group").members;
    assert_eq!(after.len(), 3);
    assert!(
        after.iter().all(|m| !before.contains(&m.id)),
        "every replica replaced"
    );
    // A roll cut short (new ones up, old ones still there, the group above its size) is
    // finished by the next apply, not undone.
    let newer = replicas_spec(3, "https://example.org/gatehouse-3");
    let plan = plan_apply(&newer, &fake.obs).expect("plan");
    let cut: Vec<Step> = plan
        .steps
        .iter()
        .filter(|s| !matches!(s.action, Action::RollReplicas { .. }))
        .cloned()
        .collect();
    fake.apply(&newer, &Plan { steps: cut, ..plan });
    fake.obs.group.as_mut().expect("group").desired = 5;
    let plan = plan_apply(&newer, &fake.obs).expect("plan");
    assert!(
        matches!(&plan.steps[..], [Step { action: Action::RollReplicas { outdated, .. }, .. }] if outdated.len() == 3),
        "{}",
        plan.render()
    );
    assert_eq!(fake.converge(&newer), 1);
}

#[test]
fn replicas_drift_is_repaired_and_only_drift() {
    let spec = replicas_spec(2, "https://example.org/gatehouse");
    let mut fake = fake_in_account();
    fake.converge(&spec);
    let o = &mut fake.obs;
    o.target_group
        .as_mut()
        .expect("tg")
        .attributes
        .insert("proxy_protocol_v2.enabled".into(), "false".into());
    o.target_group.as_mut().expect("tg").health_port = "22".into();
    o.balancer.as_mut().expect("lb").cross_zone = false;
    o.balancer.as_mut().expect("lb").tags.remove(TAG_RESOURCE);
    o.group.as_mut().expect("group").max = 9;
    o.group.as_mut().expect("group").target_groups.clear();
    o.listeners.clear();
    o.launch_templates[0].default_version = 0;
    let plan = plan_apply(&spec, &fake.obs).expect("plan");
    let text = plan.render();
    assert_eq!(plan.steps.len(), 8, "{text}");
    for want in [
        "proxy_protocol_v2.enabled = true",
        "health check HTTP 22/health -> HTTP 8022/health",
        "load_balancing.cross_zone.enabled = true",
        "tags gatehouse:resource",
        "size 2/2/9 -> 2/2/4",
        "register in tg/ssh",
        "+ listener/ssh",
        "default version 0 -> 1",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    fake.apply(&spec, &plan);
    assert!(plan_apply(&spec, &fake.obs).expect("plan").is_empty());
}

#[test]
fn a_balancer_or_group_of_the_stacks_name_not_ours_is_refused_and_never_destroyed() {
    let spec = replicas_spec(2, "https://example.org/gatehouse");
    let mut fake = fake_in_account();
    fake.converge(&spec);
    fake.obs
        .balancer
        .as_mut()
        .expect("lb")
        .tags
        .insert(TAG_STACK.into(), "other".into());
    let err = plan_apply(&spec, &fake.obs).expect_err("refused");
    assert!(
        err.to_string().contains("Network Load Balancer \"gh-lab\""),
        "{err}"
    );
    let plan = plan_destroy("lab", &fake.obs, AuditLog::Delete);
    assert!(
        !plan
            .steps
            .iter()
            .any(|s| matches!(s.action, Action::DeleteLoadBalancer { .. })),
        "{}",
        plan.render()
    );
}

#[test]
fn fixed_addresses_give_the_balancer_an_elastic_ip_per_zone() {
    let spec = parse(
        "t.toml",
        &SPEC.replace("NAT", "none").replace(
            "gatehouse_download_url = \"https://example.org/gatehouse\"",
            "gatehouse_download_url = \"https://example.org/gatehouse\"\nreplicas = 2\nfixed_addresses = true",
        ),
        None,
    )
    .expect("spec");
    let mut fake = fake_in_account();
    fake.converge(&spec);
    let mut keys: Vec<&str> = fake.obs.eips.iter().map(|e| e.key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["eip/nlb/eu-central-1a", "eip/nlb/eu-central-1b"]);
    let b = fake.obs.balancer.as_ref().expect("lb");
    assert!(b.subnets.iter().all(|(_, e)| e.is_some()), "{b:?}");
    // A zone holding another address: replaced. Addresses not reported at all (moto): kept.
    let saved = b.subnets.clone();
    fake.obs.balancer.as_mut().expect("lb").subnets[0].1 = Some("eipalloc-other".into());
    let plan = plan_apply(&spec, &fake.obs).expect("plan");
    assert!(
        plan.render().contains("replace: network load balancer"),
        "{}",
        plan.render()
    );
    for z in &mut fake.obs.balancer.as_mut().expect("lb").subnets {
        z.1 = None;
    }
    assert!(plan_apply(&spec, &fake.obs).expect("plan").is_empty());
    fake.obs.balancer.as_mut().expect("lb").subnets = saved;
    // AWS associates them with the balancer's own interfaces: destroy releases them after
    // the balancer is gone and never tries to detach them.
    for e in &mut fake.obs.eips {
        e.association_id = Some(format!("eipassoc-{}", e.key));
    }
    let plan = plan_destroy("lab", &fake.obs, AuditLog::Delete);
    let lb = position(&plan, |a| matches!(a, Action::DeleteLoadBalancer { .. }));
    let releases: Vec<(usize, &Step)> = plan
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s.action, Action::ReleaseAddress { .. }))
        .collect();
    assert_eq!(releases.len(), 2, "{}", plan.render());
    for (i, step) in releases {
        assert!(i > lb, "{}", plan.render());
        assert!(
            matches!(
                &step.action,
                Action::ReleaseAddress {
                    association_id: None,
                    ..
                }
            ),
            "{step:?}"
        );
    }
}

/// Metric filters by name (AWS lists them in its own order).
fn sorted(mut filters: Vec<MetricFilter>) -> Vec<MetricFilter> {
    filters.sort_by(|a, b| a.name.cmp(&b.name));
    filters
}

/// The spec with `[alerts]`: two addresses and a lower failed-logins threshold.
fn alerts_spec() -> Spec {
    parse(
        "t.toml",
        &(SPEC.replace("NAT", "single")
            + "\n[alerts]\nemails = [\"ops@example.org\", \"oncall@example.org\"]\n\
               failed_logins = 20\n"),
        None,
    )
    .expect("valid spec with alerts")
}

#[test]
fn alarms_filters_and_the_topic_converge_and_their_drift_is_repaired() {
    let spec = alerts_spec();
    let mut fake = Fake::new();
    assert_eq!(fake.converge(&spec), 1);
    let topic_arn = "arn:aws:sns:eu-central-1:123456789012:gatehouse-lab-alerts";
    // The filters: exactly the stack's, on its audit log group, in its namespace.
    assert_eq!(
        sorted(fake.obs.metric_filters.clone()),
        sorted(alarms::desired_filters("lab"))
    );
    assert!(fake
        .obs
        .metric_filters
        .iter()
        .all(|f| f.log_group == "/gatehouse/lab/audit" && f.namespace == "gatehouse/lab"));
    // The alarms: one per kind but the replicas', each sending to the topic, tagged.
    let mut names: Vec<&str> = fake
        .obs
        .alarms
        .iter()
        .map(|a| a.alarm.name.as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "gatehouse-lab-directory-stale",
            "gatehouse-lab-failed-logins",
            "gatehouse-lab-key-push-failures",
            "gatehouse-lab-refusals",
        ]
    );
    for a in &fake.obs.alarms {
        assert_eq!(a.alarm.topic_arn, topic_arn);
        assert_eq!(a.tags.get(TAG_STACK).map(String::as_str), Some("lab"));
        assert!(a.alarm.dimensions.is_empty(), "{a:?}");
    }
    let failed = |obs: &Observed| {
        obs.alarms
            .iter()
            .find(|a| a.alarm.name == "gatehouse-lab-failed-logins")
            .cloned()
            .expect("the failed-logins alarm")
    };
    assert_eq!(failed(&fake.obs).alarm.threshold, 20.0);
    let topic = fake.obs.topic.clone().expect("the topic");
    assert_eq!(topic.arn, topic_arn);
    assert_eq!(topic.tags, base_tags(&spec, alarms::TOPIC_KEY));
    let emails: Vec<&str> = topic
        .subscriptions
        .iter()
        .map(|s| s.endpoint.as_str())
        .collect();
    assert_eq!(emails, ["ops@example.org", "oncall@example.org"]);

    // Drift: a filter's pattern, an alarm's threshold and actions, an alarm gone, the topic's
    // tag, a subscription gone, a stranger's address and a chat integration added.
    let f = fake
        .obs
        .metric_filters
        .iter_mut()
        .find(|f| f.name == "gatehouse-lab-refusals");
    f.expect("refusals filter").pattern = r#"{ $.event = "nothing" }"#.into();
    let a = fake
        .obs
        .alarms
        .iter_mut()
        .find(|a| a.alarm.name == "gatehouse-lab-failed-logins")
        .expect("alarm");
    a.alarm.threshold = 100_000.0;
    a.actions_ok = false;
    fake.obs
        .alarms
        .retain(|a| a.alarm.name != "gatehouse-lab-directory-stale");
    let t = fake.obs.topic.as_mut().expect("topic");
    t.tags.insert(TAG_STACK.into(), "lab".into());
    t.tags.remove("Name");
    t.subscriptions
        .retain(|s| s.endpoint != "oncall@example.org");
    t.subscriptions.push(ObsSubscription {
        arn: format!("{topic_arn}:0a1b"),
        protocol: "email".into(),
        endpoint: "stranger@example.net".into(),
    });
    t.subscriptions.push(ObsSubscription {
        arn: format!("{topic_arn}:2c3d"),
        protocol: "https".into(),
        endpoint: "https://chat.example.org/hook".into(),
    });
    let plan = plan_apply(&spec, &fake.obs).expect("plan");
    let text = plan.render();
    for line in [
        "~ metric filter gatehouse-lab-refusals put back: { $.event = \"connection.refused\" } counts 1\n",
        "~ alarm gatehouse-lab-failed-logins put back: threshold, actions\n",
        "+ alarm gatehouse-lab-directory-stale DirectoryStale Sum >= 1 per 300 s, 1 period(s)\n",
        "~ sns topic gatehouse-lab-alerts tags Name\n",
        "+ sns topic gatehouse-lab-alerts/oncall@example.org email subscription (AWS mails a link to confirm)\n",
        "= subscription email stranger@example.net not in [alerts] emails; left alone (`aws sns unsubscribe --subscription-arn arn:aws:sns:eu-central-1:123456789012:gatehouse-lab-alerts:0a1b` removes it)\n",
        "stack lab: 2 to create, 3 to change, 0 to delete\n",
    ] {
        assert!(text.contains(line), "{line}\nnot in\n{text}");
    }
    assert!(!text.contains("chat.example.org"), "{text}");
    assert_eq!(fake.converge(&spec), 1);
    assert_eq!(failed(&fake.obs).alarm.threshold, 20.0);
    assert!(failed(&fake.obs).actions_ok);
    assert_eq!(
        sorted(fake.obs.metric_filters.clone()),
        sorted(alarms::desired_filters("lab"))
    );
    // Converged: no step, and what is left alone still said.
    let plan = plan_apply(&spec, &fake.obs).expect("plan");
    assert!(plan.steps.is_empty(), "{}", plan.render());
    assert!(plan.render().contains("stranger@example.net"));

    // destroy: the alarms first, the filters (the log group stays) and the topic go.
    let plan = plan_destroy("lab", &fake.obs, AuditLog::Keep);
    let first = plan.steps.first().map(|s| s.action.clone());
    assert!(matches!(first, Some(Action::DeleteAlarms { names }) if names.len() == 4));
    fake.apply(&spec, &plan);
    assert!(fake.obs.alarms.is_empty() && fake.obs.metric_filters.is_empty());
    assert!(fake.obs.topic.is_none() && fake.obs.log_group.is_some());
}

#[test]
fn the_replicas_alarm_names_the_balancer_and_goes_with_the_replicas() {
    let mut fake = Fake::new();
    let three = replicas_spec(3, "https://example.org/gatehouse");
    assert_eq!(fake.converge(&three), 1);
    let healthy = |obs: &Observed| {
        obs.alarms
            .iter()
            .find(|a| a.alarm.name == "gatehouse-lab-healthy-replicas")
            .cloned()
    };
    let a = healthy(&fake.obs).expect("the healthy-replicas alarm");
    let balancer = fake.obs.balancer.clone().expect("balancer");
    let group = fake.obs.target_group.clone().expect("target group");
    assert!(
        balancer.arn.contains(":loadbalancer/net/gh-lab/"),
        "{}",
        balancer.arn
    );
    assert_eq!(
        a.alarm.dimensions,
        [
            (
                "LoadBalancer".to_owned(),
                DimensionValue::Value(format!(
                    "net/gh-lab/{}",
                    balancer.arn.rsplit('/').next().unwrap_or_default()
                ))
            ),
            (
                "TargetGroup".to_owned(),
                DimensionValue::Value(format!(
                    "targetgroup/gh-lab/{}",
                    group.arn.rsplit('/').next().unwrap_or_default()
                ))
            ),
        ]
    );
    assert_eq!(
        (
            a.alarm.metric.as_str(),
            a.alarm.threshold,
            a.alarm.comparison.as_str()
        ),
        ("HealthyHostCount", 3.0, "LessThanThreshold")
    );
    // Back to one bastion: the alarm goes with the balancer, before it.
    let one = spec("single");
    let plan = plan_apply(&one, &fake.obs).expect("plan");
    let alarm = position(&plan, |a| matches!(a, Action::DeleteAlarms { .. }));
    let lb = position(&plan, |a| matches!(a, Action::DeleteLoadBalancer { .. }));
    assert!(alarm < lb, "{}", plan.render());
    assert_eq!(fake.converge(&one), 1);
    assert!(healthy(&fake.obs).is_none());
    assert_eq!(fake.obs.alarms.len(), 4);
}

#[test]
fn a_topic_or_alarm_of_the_stacks_name_not_ours_is_refused_and_never_destroyed() {
    let spec = spec("single");
    let mut obs = Fake::new().obs;
    obs.topic = Some(ObsTopic {
        arn: "arn:aws:sns:eu-central-1:123456789012:gatehouse-lab-alerts".into(),
        tags: Tags::new(),
        subscriptions: Vec::new(),
    });
    let err = plan_apply(&spec, &obs).expect_err("a topic not ours");
    assert!(err.to_string().contains("SNS topic"), "{err}");
    assert!(plan_destroy("lab", &obs, AuditLog::Delete).is_empty());
    obs.topic = None;
    let mut fake = Fake::new();
    fake.converge(&spec);
    let mut alarm = fake.obs.alarms[0].clone();
    alarm.tags = Tags::from([(TAG_STACK.to_owned(), "other".to_owned())]);
    obs.alarms = vec![alarm];
    let err = plan_apply(&spec, &obs).expect_err("an alarm not ours");
    assert!(err.to_string().contains("CloudWatch alarm"), "{err}");
    assert!(plan_destroy("lab", &obs, AuditLog::Delete).is_empty());
}

/// A stack placed into an existing VPC: no VPC, gateway or default-group step; only the
/// subnet it describes by CIDR is created (routed through a NAT gateway it puts in the
/// existing public subnet); the existing subnets are named by their ids and never touched;
/// it converges in one round and destroy removes only what it created.
#[test]
fn a_brownfield_stack_creates_only_its_own_and_converges() {
    use crate::spec::brownfield_tests::{facts, resolve, BROWNFIELD};
    let spec = resolve(BROWNFIELD, &facts()).unwrap_or_else(|e| panic!("{e:#?}"));
    let plan = plan_apply(&spec, &Fake::new().obs).expect("plan");
    for step in &plan.steps {
        let touches_the_network = matches!(
            step.action,
            Action::CreateVpc { .. }
                | Action::EnableDns { .. }
                | Action::LockDownDefaultSecurityGroup { .. }
                | Action::CreateInternetGateway { .. }
                | Action::AttachInternetGateway { .. }
        );
        assert!(!touches_the_network, "{step:?}");
        if let Action::Associate { subnet, .. } = &step.action {
            assert_eq!(
                subnet, "subnet/analysis",
                "only the created subnet is associated"
            );
        }
    }
    assert_eq!(
        plan.known.get("vpc").map(String::as_str),
        Some("vpc-0aaaaaaaaaaaaaaaa")
    );
    assert_eq!(
        plan.known.get("subnet/dmz").map(String::as_str),
        Some("subnet-0aaaaaaaaaaaaaaa1")
    );
    assert_eq!(
        plan.known.get("subnet/team").map(String::as_str),
        Some("subnet-0aaaaaaaaaaaaaaa3")
    );
    let created_subnets: Vec<&str> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::CreateSubnet { key, vpc, .. } => {
                assert_eq!(vpc, "vpc");
                Some(key.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(created_subnets, ["subnet/analysis"]);
    let nat = plan.steps.iter().find_map(|s| match &s.action {
        Action::CreateNatGateway { subnet, .. } => Some(subnet.as_str()),
        _ => None,
    });
    assert_eq!(nat, Some("subnet/dmz"), "NAT in the existing public subnet");
    let tables: Vec<&str> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::CreateRouteTable { key, .. } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        tables,
        ["rt/private"],
        "no public table: no public subnet is created"
    );

    let mut fake = Fake::new();
    assert_eq!(fake.converge(&spec), 1);
    assert!(fake.obs.vpcs.is_empty() && fake.obs.igws.is_empty());
    let destroy = plan_destroy("lab", &fake.obs, AuditLog::Delete);
    fake.apply(&spec, &destroy);
    assert!(fake.obs.subnets.is_empty() && fake.obs.route_tables.is_empty());

    // Without a created private subnet there is nothing for NAT to serve.
    let only_existing = BROWNFIELD.replacen(
        "[[subnets]]\nname = \"analysis\"\ntier = \"private\"\ncidr = \"10.77.50.0/24\"\naz = \"us-east-1a\"\n",
        "",
        1,
    );
    let spec = resolve(&only_existing, &facts()).unwrap_or_else(|e| panic!("{e:#?}"));
    let plan = plan_apply(&spec, &Fake::new().obs).expect("plan");
    let network: Vec<&str> = plan
        .steps
        .iter()
        .filter(|s| {
            matches!(
                s.action,
                Action::CreateSubnet { .. }
                    | Action::CreateRouteTable { .. }
                    | Action::CreateNatGateway { .. }
            )
        })
        .map(|s| s.resource.as_str())
        .collect();
    assert!(network.is_empty(), "{network:?}");
    let builds = crate::deploy::Builds::of(&spec);
    assert_eq!(
        builds,
        crate::deploy::Builds {
            vpc: false,
            subnets: false,
            nat: false
        }
    );
}

/// The deployer's policy for a stack in an existing VPC lacks exactly the network-building
/// actions it does not make.
#[test]
fn a_brownfield_deployers_policy_drops_the_vpc_building_actions() {
    use crate::deploy::{actions, Builds};
    use crate::spec::brownfield_tests::{facts, resolve, BROWNFIELD};
    let names = |b: Builds| -> std::collections::BTreeSet<&'static str> {
        actions(b).iter().map(|u| u.action).collect()
    };
    let everything = names(Builds::EVERYTHING);
    let spec = resolve(BROWNFIELD, &facts()).unwrap_or_else(|e| panic!("{e:#?}"));
    let with_subnets = names(Builds::of(&spec));
    let dropped: Vec<&str> = everything.difference(&with_subnets).copied().collect();
    assert_eq!(
        dropped,
        [
            "ec2:AttachInternetGateway",
            "ec2:CreateInternetGateway",
            "ec2:CreateVpc",
            "ec2:DeleteInternetGateway",
            "ec2:DeleteVpc",
            "ec2:DescribeVpcAttribute",
            "ec2:DetachInternetGateway",
            "ec2:ModifyVpcAttribute",
        ]
    );
    let bare = names(Builds {
        vpc: false,
        subnets: false,
        nat: false,
    });
    let dropped: Vec<&str> = with_subnets.difference(&bare).copied().collect();
    assert_eq!(
        dropped,
        [
            "ec2:AssociateRouteTable",
            "ec2:CreateNatGateway",
            "ec2:CreateRoute",
            "ec2:CreateRouteTable",
            "ec2:CreateSubnet",
            "ec2:DeleteNatGateway",
            "ec2:DeleteRoute",
            "ec2:DeleteRouteTable",
            "ec2:DeleteSubnet",
            "ec2:DisassociateRouteTable",
            "ec2:ReplaceRoute",
            "ec2:ReplaceRouteTableAssociation",
        ]
    );
    let policy = crate::deploy::deployer_policy("lab", "us-east-1", Builds::of(&spec));
    let text = policy.to_string();
    assert!(!text.contains("TagTheDefaultSecurityGroup"), "{text}");
    assert!(!text.contains(":vpc/*"), "{text}");
}

/// A subnet of the stack that another tool moved onto a table of its own is moved back to the
/// stack's table (ReplaceRouteTableAssociation), and that table is otherwise left alone.
#[test]
fn a_stack_subnet_moved_onto_a_foreign_table_is_moved_back() {
    use crate::spec::brownfield_tests::{facts, resolve, BROWNFIELD};
    let spec = resolve(BROWNFIELD, &facts()).unwrap_or_else(|e| panic!("{e:#?}"));
    let mut fake = Fake::new();
    fake.converge(&spec);
    let subnet = fake
        .obs
        .subnets
        .iter()
        .find(|s| s.key == "subnet/analysis")
        .expect("created")
        .id
        .clone();
    let table = fake
        .obs
        .route_tables
        .iter_mut()
        .find(|r| r.key == "rt/private")
        .expect("rt/private");
    let pos = table
        .associations
        .iter()
        .position(|a| a.subnet_id == subnet)
        .expect("associated");
    table.associations.remove(pos);
    fake.obs.foreign_associations.push((
        "rtb-team".into(),
        ObsAssociation {
            id: "rtbassoc-team".into(),
            subnet_id: subnet.clone(),
        },
    ));
    let plan = plan_apply(&spec, &fake.obs).expect("plan");
    assert_eq!(
        plan.render(),
        "~ rt/private                   move subnet/analysis here from rtb-team\n\
         stack lab: 0 to create, 1 to change, 0 to delete\n"
    );
    assert!(matches!(
        &plan.steps[0].action,
        Action::ReplaceAssociation { association_id, table } if association_id == "rtbassoc-team" && table == "rt/private"
    ));
    fake.apply(&spec, &plan);
    assert_eq!(fake.converge(&spec), 0);
    assert!(fake.obs.foreign_associations.is_empty());

    // A foreign association of a subnet the stack is removing is left to go with the subnet.
    fake.obs.foreign_associations.push((
        "rtb-team".into(),
        ObsAssociation {
            id: "rtbassoc-team-2".into(),
            subnet_id: subnet,
        },
    ));
    let destroy = plan_destroy("lab", &fake.obs, AuditLog::Keep);
    assert!(
        !destroy.steps.iter().any(|s| matches!(
            &s.action,
            Action::Disassociate { association_id } if association_id == "rtbassoc-team-2"
        )),
        "{}",
        destroy.render()
    );
}
