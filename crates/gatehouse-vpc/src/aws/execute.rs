//! The executor: one or a few SDK calls per plan step. Every create call tags the resource in
//! the same request (`TagSpecifications`), so an apply killed half way leaves nothing untagged
//! and the next apply finds and reuses what exists.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{
    AttributeBooleanValue, DomainType, Filter, HttpTokensState, IamInstanceProfileSpecification,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceType, IpPermission,
    IpRange, Ipv6Range, PrefixListId, ResourceType, Tag, TagSpecification, UserIdGroupPair,
};
use base64::Engine;

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use super::{fail, Clients, Error};
use crate::deploy;
use crate::digest::sha256_hex;
use crate::model::*;
use crate::names::POLICY_NAME;
use crate::policy::trust_policy;
use crate::spec::Spec;

/// How long to wait for AWS to settle (instances running, NAT gateways available or deleted,
/// IAM instance profiles visible to EC2) and how often to look.
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    pub poll: Duration,
    pub timeout: Duration,
}

impl Default for Waits {
    fn default() -> Self {
        Waits {
            poll: Duration::from_secs(5),
            timeout: Duration::from_secs(15 * 60),
        }
    }
}

/// Runs plan steps against AWS.
pub struct Executor<'a> {
    pub(super) clients: &'a Clients,
    pub(super) spec: Option<&'a Spec>,
    pub(super) waits: Waits,
    /// Logical key -> AWS id: the plan's kept resources plus what this run created.
    pub(super) ids: BTreeMap<String, String>,
    /// The account of the plan being run (the bastion's user data names its queue by it).
    pub(super) account: String,
}

pub(super) fn ec2_tags(tags: &Tags) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

pub(super) fn tag_spec(kind: ResourceType, tags: &Tags) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(ec2_tags(tags)))
        .build()
}

fn iam_tags(tags: &Tags) -> Vec<aws_sdk_iam::types::Tag> {
    tags.iter()
        .filter_map(|(k, v)| {
            aws_sdk_iam::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
                .ok()
        })
        .collect()
}

/// SQS attributes by name.
fn queue_attributes(
    attributes: &BTreeMap<String, String>,
) -> std::collections::HashMap<aws_sdk_sqs::types::QueueAttributeName, String> {
    attributes
        .iter()
        .map(|(k, v)| {
            (
                aws_sdk_sqs::types::QueueAttributeName::from(k.as_str()),
                v.clone(),
            )
        })
        .collect()
}

fn event_tags(tags: &Tags) -> Vec<aws_sdk_eventbridge::types::Tag> {
    tags.iter()
        .filter_map(|(k, v)| {
            aws_sdk_eventbridge::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
                .ok()
        })
        .collect()
}

fn permission(
    rule: &Rule,
    resolve: impl Fn(&str) -> Option<String>,
) -> Result<IpPermission, Error> {
    let mut p = IpPermission::builder().ip_protocol(&rule.proto);
    if rule.proto != "-1" {
        p = p.from_port(rule.from).to_port(rule.to);
    }
    p = match &rule.peer {
        Peer::Cidr(c) => p.ip_ranges(IpRange::builder().cidr_ip(c).build()),
        Peer::Cidr6(c) => p.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(c).build()),
        Peer::Group(id) => p.user_id_group_pairs(UserIdGroupPair::builder().group_id(id).build()),
        Peer::GroupKey(k) => {
            let id = resolve(k).ok_or_else(|| Error::Unresolved(k.clone()))?;
            p.user_id_group_pairs(UserIdGroupPair::builder().group_id(id).build())
        }
        Peer::PrefixList(id) => {
            p.prefix_list_ids(PrefixListId::builder().prefix_list_id(id).build())
        }
    };
    Ok(p.build())
}

impl<'a> Executor<'a> {
    /// An executor for applying `spec` (destroy passes `None`: it only removes).
    pub fn new(clients: &'a Clients, spec: Option<&'a Spec>, waits: Waits) -> Self {
        Executor {
            clients,
            spec,
            waits,
            ids: BTreeMap::new(),
            account: String::new(),
        }
    }

    pub(super) fn id(&self, key: &str) -> Result<String, Error> {
        self.ids
            .get(key)
            .cloned()
            .ok_or_else(|| Error::Unresolved(key.to_string()))
    }

    /// Run the steps in order; `progress` is told about each step before it runs.
    pub async fn run(&mut self, plan: &Plan, progress: &mut dyn FnMut(&Step)) -> Result<(), Error> {
        self.ids.extend(plan.known.clone());
        self.account.clone_from(&plan.account);
        for step in &plan.steps {
            progress(step);
            self.step(step).await?;
        }
        Ok(())
    }

    async fn step(&mut self, step: &Step) -> Result<(), Error> {
        let ec2 = &self.clients.ec2;
        let iam = &self.clients.iam;
        let what = step.resource.clone();
        if self.replica_step(&what, &step.action).await?
            || self.alarm_step(&what, &step.action).await?
        {
            return Ok(());
        }
        match &step.action {
            // ---------------- removal ----------------
            Action::TerminateInstance { id } => {
                let r = ec2.terminate_instances().instance_ids(id).send().await;
                deleted(&what, &deploy::TERMINATE_INSTANCES, r)?;
                self.wait_instance(id, &["terminated"], &what).await?;
            }
            Action::DeleteNatGateway { id } => {
                let r = ec2.delete_nat_gateway().nat_gateway_id(id).send().await;
                deleted(&what, &deploy::DELETE_NAT_GATEWAY, r)?;
                self.wait_nat(id, &["deleted"], &what).await?;
            }
            Action::ReleaseAddress {
                allocation_id,
                association_id,
            } => {
                if let Some(assoc) = association_id {
                    let r = ec2
                        .disassociate_address()
                        .association_id(assoc)
                        .send()
                        .await;
                    deleted(&what, &deploy::DISASSOCIATE_ADDRESS, r)?;
                }
                // An address of a balancer deleted a moment ago stays in use until AWS has
                // removed its network interfaces.
                let start = Instant::now();
                loop {
                    let r = ec2
                        .release_address()
                        .allocation_id(allocation_id)
                        .send()
                        .await;
                    match deleted(&what, &deploy::RELEASE_ADDRESS, r) {
                        Err(e) if e.code() == Some("InvalidIPAddress.InUse") => {
                            self.pause(start, &what, "free").await?;
                        }
                        other => break other?,
                    }
                }
            }
            Action::Disassociate { association_id } => {
                let r = ec2
                    .disassociate_route_table()
                    .association_id(association_id)
                    .send()
                    .await;
                deleted(&what, &deploy::DISASSOCIATE_ROUTE_TABLE, r)?;
            }
            Action::DeleteRouteTable {
                id,
                association_ids,
            } => {
                for assoc in association_ids {
                    let r = ec2
                        .disassociate_route_table()
                        .association_id(assoc)
                        .send()
                        .await;
                    deleted(&what, &deploy::DISASSOCIATE_ROUTE_TABLE, r)?;
                }
                let r = ec2.delete_route_table().route_table_id(id).send().await;
                deleted(&what, &deploy::DELETE_ROUTE_TABLE, r)?;
            }
            Action::DeleteSubnet { id } => {
                let id = id.clone();
                self.retry_dependency(&what, || async {
                    let r = ec2.delete_subnet().subnet_id(&id).send().await;
                    deleted(&what, &deploy::DELETE_SUBNET, r)
                })
                .await?;
            }
            Action::RevokeIngressById { group_id, rules } => {
                for rule in rules {
                    let perm = permission(rule, |_| None)?;
                    let r = ec2
                        .revoke_security_group_ingress()
                        .group_id(group_id)
                        .ip_permissions(perm)
                        .send()
                        .await;
                    deleted(&what, &deploy::REVOKE_SECURITY_GROUP_INGRESS, r)?;
                }
            }
            Action::DeleteSecurityGroup { id } => {
                let id = id.clone();
                self.retry_dependency(&what, || async {
                    let r = ec2.delete_security_group().group_id(&id).send().await;
                    deleted(&what, &deploy::DELETE_SECURITY_GROUP, r)
                })
                .await?;
            }
            Action::DeleteInternetGateway { id, attached_vpcs } => {
                for vpc in attached_vpcs {
                    let r = ec2
                        .detach_internet_gateway()
                        .internet_gateway_id(id)
                        .vpc_id(vpc)
                        .send()
                        .await;
                    deleted(&what, &deploy::DETACH_INTERNET_GATEWAY, r)?;
                }
                let r = ec2
                    .delete_internet_gateway()
                    .internet_gateway_id(id)
                    .send()
                    .await;
                deleted(&what, &deploy::DELETE_INTERNET_GATEWAY, r)?;
            }
            Action::DeleteVpc { id } => {
                let id = id.clone();
                self.retry_dependency(&what, || async {
                    let r = ec2.delete_vpc().vpc_id(&id).send().await;
                    deleted(&what, &deploy::DELETE_VPC, r)
                })
                .await?;
            }
            Action::DeleteInstanceProfile { name, roles } => {
                for role in roles {
                    let r = iam
                        .remove_role_from_instance_profile()
                        .instance_profile_name(name)
                        .role_name(role)
                        .send()
                        .await;
                    deleted(&what, &deploy::REMOVE_ROLE_FROM_INSTANCE_PROFILE, r)?;
                }
                let r = iam
                    .delete_instance_profile()
                    .instance_profile_name(name)
                    .send()
                    .await;
                deleted(&what, &deploy::DELETE_INSTANCE_PROFILE, r)?;
            }
            Action::DeleteRole { name, has_policy } => {
                if *has_policy {
                    let r = iam
                        .delete_role_policy()
                        .role_name(name)
                        .policy_name(POLICY_NAME)
                        .send()
                        .await;
                    deleted(&what, &deploy::DELETE_ROLE_POLICY, r)?;
                }
                let r = iam.delete_role().role_name(name).send().await;
                deleted(&what, &deploy::DELETE_ROLE, r)?;
            }
            Action::DeleteParameter { name } => {
                let r = self.clients.ssm.delete_parameter().name(name).send().await;
                deleted(&what, &deploy::DELETE_PARAMETER, r)?;
            }

            Action::DeleteEventRule { name, target_ids } => {
                self.remove_targets(&what, name, target_ids).await?;
                let r = self.clients.events.delete_rule().name(name).send().await;
                deleted(&what, &deploy::DELETE_RULE, r)?;
            }
            Action::DeleteEventQueue { url } => {
                let r = self.clients.sqs.delete_queue().queue_url(url).send().await;
                deleted(&what, &deploy::DELETE_QUEUE, r)?;
            }
            Action::DeleteAuditLogGroup { name } => {
                let r = self
                    .clients
                    .logs
                    .delete_log_group()
                    .log_group_name(name)
                    .send()
                    .await;
                deleted(&what, &deploy::DELETE_LOG_GROUP, r)?;
            }

            // ---------------- creation and repair ----------------
            Action::CreateAuditLogGroup {
                name,
                tags,
                retention_days,
            } => {
                // Tagged in the same call, so an interrupted apply leaves no untagged group;
                // one interrupted before the retention gets it from the next apply.
                self.clients
                    .logs
                    .create_log_group()
                    .log_group_name(name)
                    .set_tags(Some(tags.clone().into_iter().collect()))
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::CREATE_LOG_GROUP, e))?;
                self.put_retention(&what, name, *retention_days).await?;
            }
            Action::SetAuditLogRetention {
                name,
                retention_days,
            } => self.put_retention(&what, name, *retention_days).await?,
            Action::TagAuditLogGroup { arn, tags } => {
                self.clients
                    .logs
                    .tag_resource()
                    .resource_arn(arn)
                    .set_tags(Some(tags.clone().into_iter().collect()))
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::TAG_LOG_GROUP, e))?;
            }
            Action::CreateEventQueue {
                key,
                name,
                attributes,
                tags,
            } => {
                let url = self.create_queue(&what, name, attributes, tags).await?;
                self.ids.insert(key.clone(), url);
            }
            Action::SetEventQueueAttributes { queue, attributes } => {
                self.clients
                    .sqs
                    .set_queue_attributes()
                    .queue_url(self.id(queue)?)
                    .set_attributes(Some(queue_attributes(attributes)))
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::SET_QUEUE_ATTRIBUTES, e))?;
            }
            Action::TagEventQueue { queue, tags } => {
                self.clients
                    .sqs
                    .tag_queue()
                    .queue_url(self.id(queue)?)
                    .set_tags(Some(tags.clone().into_iter().collect()))
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::TAG_QUEUE, e))?;
            }
            Action::PutEventRule {
                key,
                name,
                pattern,
                tags,
            } => {
                let out = self
                    .clients
                    .events
                    .put_rule()
                    .name(name)
                    .event_pattern(pattern.to_string())
                    .state(aws_sdk_eventbridge::types::RuleState::Enabled)
                    .description(
                        "gatehouse: the IAM calls that change who may log in, for the bastion",
                    )
                    .set_tags(Some(event_tags(tags)))
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::PUT_RULE, e))?;
                let arn = out
                    .rule_arn()
                    .ok_or_else(|| missing(&what, "PutRule", "rule ARN"))?;
                self.ids.insert(key.clone(), arn.to_owned());
            }
            Action::TagEventRule { rule, tags } => {
                self.clients
                    .events
                    .tag_resource()
                    .resource_arn(self.id(rule)?)
                    .set_tags(Some(event_tags(tags)))
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::TAG_RULE, e))?;
            }
            Action::PutEventTarget { rule, id, arn } => {
                let target = aws_sdk_eventbridge::types::Target::builder()
                    .id(id)
                    .arn(arn)
                    .build()
                    .map_err(|_| missing(&what, "PutTargets", "target"))?;
                let out = self
                    .clients
                    .events
                    .put_targets()
                    .rule(rule)
                    .targets(target)
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::PUT_TARGETS, e))?;
                // PutTargets answers 200 and reports each target it could not put.
                let failed = target_failures(
                    out.failed_entries()
                        .iter()
                        .map(|f| (f.target_id(), f.error_code(), f.error_message())),
                );
                if out.failed_entry_count() > 0 || !failed.is_empty() {
                    return Err(Error::Entries {
                        resource: what,
                        op: "PutTargets",
                        detail: failed.join("; "),
                    });
                }
            }
            Action::RemoveEventTargets { rule, ids } => {
                self.remove_targets(&what, rule, ids).await?;
            }
            Action::DeleteBucket { name } => self.delete_bucket(&what, name).await?,
            Action::DeleteObject { bucket, object } => {
                let bucket = self.id(bucket)?;
                deleted(
                    &what,
                    &deploy::DELETE_OBJECT,
                    self.clients
                        .s3
                        .delete_object()
                        .bucket(&bucket)
                        .key(object)
                        .send()
                        .await,
                )?;
            }
            Action::CreateBucket { key, name, tags } => {
                let s3 = &self.clients.s3;
                let mut req = s3.create_bucket().bucket(name);
                // us-east-1 is the one region that takes no location constraint.
                if self.clients.region != "us-east-1" {
                    req = req.create_bucket_configuration(
                        aws_sdk_s3::types::CreateBucketConfiguration::builder()
                            .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                                self.clients.region.as_str(),
                            ))
                            .build(),
                    );
                }
                req.send()
                    .await
                    .map_err(|e| fail(&what, &deploy::CREATE_BUCKET, e))?;
                self.ids.insert(key.clone(), name.clone());
                self.tag_bucket(&what, name, tags).await?;
            }
            Action::TagBucket { bucket, tags } => {
                let bucket = self.id(bucket)?;
                self.tag_bucket(&what, &bucket, tags).await?;
            }
            Action::SecureBucket { bucket, policy } => {
                let bucket = self.id(bucket)?;
                self.secure_bucket(&what, &bucket, policy).await?;
            }
            Action::PutBinary {
                bucket,
                object,
                path,
                sha256,
            } => {
                let bucket = self.id(bucket)?;
                self.put_binary(&what, &bucket, object, path, sha256)
                    .await?;
            }
            Action::CreateVpc { key, cidr, tags } => {
                let out = ec2
                    .create_vpc()
                    .cidr_block(cidr)
                    .tag_specifications(tag_spec(ResourceType::Vpc, tags))
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::CREATE_VPC, e))?;
                let id = out
                    .vpc()
                    .and_then(|v| v.vpc_id())
                    .ok_or_else(|| missing(&what, "CreateVpc", "vpc id"))?;
                self.ids.insert(key.clone(), id.to_string());
            }
            Action::EnableDns {
                vpc,
                hostnames,
                support,
            } => {
                let id = self.id(vpc)?;
                // One attribute per call (an AWS rule); support first, hostnames need it.
                ec2.modify_vpc_attribute()
                    .vpc_id(&id)
                    .enable_dns_support(AttributeBooleanValue::builder().value(*support).build())
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::MODIFY_VPC_ATTRIBUTE, e))?;
                ec2.modify_vpc_attribute()
                    .vpc_id(&id)
                    .enable_dns_hostnames(
                        AttributeBooleanValue::builder().value(*hostnames).build(),
                    )
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::MODIFY_VPC_ATTRIBUTE, e))?;
            }
            Action::LockDownDefaultSecurityGroup { vpc, tags } => {
                let vpc = self.id(vpc)?;
                let out = ec2
                    .describe_security_groups()
                    .filters(Filter::builder().name("vpc-id").values(&vpc).build())
                    .filters(
                        Filter::builder()
                            .name("group-name")
                            .values("default")
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::DESCRIBE_SECURITY_GROUPS, e))?;
                let group = out
                    .security_groups()
                    .iter()
                    .find(|g| g.group_name() == Some("default") && g.vpc_id() == Some(vpc.as_str()))
                    .ok_or_else(|| missing(&what, "DescribeSecurityGroups", "the default group"))?;
                let gid = group
                    .group_id()
                    .ok_or_else(|| missing(&what, "DescribeSecurityGroups", "group id"))?;
                ec2.create_tags()
                    .resources(gid)
                    .set_tags(Some(ec2_tags(tags)))
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::CREATE_TAGS, e))?;
                if !group.ip_permissions().is_empty() {
                    ec2.revoke_security_group_ingress()
                        .group_id(gid)
                        .set_ip_permissions(Some(group.ip_permissions().to_vec()))
                        .send()
                        .await
                        .map_err(|e| fail(&what, &deploy::REVOKE_SECURITY_GROUP_INGRESS, e))?;
                }
                if !group.ip_permissions_egress().is_empty() {
                    ec2.revoke_security_group_egress()
                        .group_id(gid)
                        .set_ip_permissions(Some(group.ip_permissions_egress().to_vec()))
                        .send()
                        .await
                        .map_err(|e| fail(&what, &deploy::REVOKE_SECURITY_GROUP_EGRESS, e))?;
                }
            }
            Action::CreateSubnet {
                key,
                vpc,
                cidr,
                az,
                tags,
            } => {
                let out = ec2
                    .create_subnet()
                    .vpc_id(self.id(vpc)?)
                    .cidr_block(cidr)
                    .availability_zone(az)
                    .tag_specifications(tag_spec(ResourceType::Subnet, tags))
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::CREATE_SUBNET, e))?;
                let id = out
                    .subnet()
                    .and_then(|s| s.subnet_id())
                    .ok_or_else(|| missing(&what, "CreateSubnet", "subnet id"))?;
                self.ids.insert(key.clone(), id.to_string());
            }
            Action::CreateInternetGateway { key, tags } => {
                let out = ec2
                    .create_internet_gateway()
                    .tag_specifications(tag_spec(ResourceType::InternetGateway, tags))
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::CREATE_INTERNET_GATEWAY, e))?;
                let id = out
                    .internet_gateway()
                    .and_then(|g| g.internet_gateway_id())
                    .ok_or_else(|| missing(&what, "CreateInternetGateway", "gateway id"))?;
                self.ids.insert(key.clone(), id.to_string());
            }
            Action::AttachInternetGateway { igw, vpc } => {
                ec2.attach_internet_gateway()
                    .internet_gateway_id(self.id(igw)?)
                    .vpc_id(self.id(vpc)?)
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::ATTACH_INTERNET_GATEWAY, e))?;
            }
            Action::AllocateAddress { key, tags } => {
                let out = ec2
                    .allocate_address()
                    .domain(DomainType::Vpc)
                    .tag_specifications(tag_spec(ResourceType::ElasticIp, tags))
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::ALLOCATE_ADDRESS, e))?;
                let id = out
                    .allocation_id()
                    .ok_or_else(|| missing(&what, "AllocateAddress", "allocation id"))?;
                self.ids.insert(key.clone(), id.to_string());
            }
            Action::CreateNatGateway {
                key,
                subnet,
                eip,
                tags,
            } => {
                let out = ec2
                    .create_nat_gateway()
                    .subnet_id(self.id(subnet)?)
                    .allocation_id(self.id(eip)?)
                    .tag_specifications(tag_spec(ResourceType::Natgateway, tags))
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::CREATE_NAT_GATEWAY, e))?;
                let id = out
                    .nat_gateway()
                    .and_then(|n| n.nat_gateway_id())
                    .ok_or_else(|| missing(&what, "CreateNatGateway", "gateway id"))?
                    .to_string();
                self.ids.insert(key.clone(), id.clone());
                self.wait_nat(&id, &["available"], &what).await?;
            }
            Action::CreateRouteTable { key, vpc, tags } => {
                let out = ec2
                    .create_route_table()
                    .vpc_id(self.id(vpc)?)
                    .tag_specifications(tag_spec(ResourceType::RouteTable, tags))
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::CREATE_ROUTE_TABLE, e))?;
                let id = out
                    .route_table()
                    .and_then(|r| r.route_table_id())
                    .ok_or_else(|| missing(&what, "CreateRouteTable", "route table id"))?;
                self.ids.insert(key.clone(), id.to_string());
            }
            Action::CreateRoute {
                table,
                dest,
                target,
            } => {
                let mut req = ec2
                    .create_route()
                    .route_table_id(self.id(table)?)
                    .destination_cidr_block(dest);
                let target_id = self.id(target)?;
                req = if target.starts_with("nat/") {
                    req.nat_gateway_id(target_id)
                } else {
                    req.gateway_id(target_id)
                };
                req.send()
                    .await
                    .map_err(|e| fail(&what, &deploy::CREATE_ROUTE, e))?;
            }
            Action::ReplaceRoute {
                table,
                dest,
                target,
            } => {
                let mut req = ec2
                    .replace_route()
                    .route_table_id(self.id(table)?)
                    .destination_cidr_block(dest);
                let target_id = self.id(target)?;
                req = if target.starts_with("nat/") {
                    req.nat_gateway_id(target_id)
                } else {
                    req.gateway_id(target_id)
                };
                req.send()
                    .await
                    .map_err(|e| fail(&what, &deploy::REPLACE_ROUTE, e))?;
            }
            Action::DeleteRoute { table, dest } => {
                let r = ec2
                    .delete_route()
                    .route_table_id(self.id(table)?)
                    .destination_cidr_block(dest)
                    .send()
                    .await;
                deleted(&what, &deploy::DELETE_ROUTE, r)?;
            }
            Action::Associate { table, subnet } => {
                ec2.associate_route_table()
                    .route_table_id(self.id(table)?)
                    .subnet_id(self.id(subnet)?)
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::ASSOCIATE_ROUTE_TABLE, e))?;
            }
            Action::ReplaceAssociation {
                association_id,
                table,
            } => {
                ec2.replace_route_table_association()
                    .association_id(association_id)
                    .route_table_id(self.id(table)?)
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::REPLACE_ROUTE_TABLE_ASSOCIATION, e))?;
            }
            Action::CreateSecurityGroup {
                key,
                vpc,
                name,
                description,
                tags,
            } => {
                let out = ec2
                    .create_security_group()
                    .vpc_id(self.id(vpc)?)
                    .group_name(name)
                    .description(description)
                    .tag_specifications(tag_spec(ResourceType::SecurityGroup, tags))
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::CREATE_SECURITY_GROUP, e))?;
                let id = out
                    .group_id()
                    .ok_or_else(|| missing(&what, "CreateSecurityGroup", "group id"))?;
                self.ids.insert(key.clone(), id.to_string());
            }
            Action::Authorize {
                group,
                ingress,
                rule,
            } => {
                let gid = self.id(group)?;
                let perm = permission(rule, |k| self.ids.get(k).cloned())?;
                let r = if *ingress {
                    ec2.authorize_security_group_ingress()
                        .group_id(&gid)
                        .ip_permissions(perm)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| fail(&what, &deploy::AUTHORIZE_SECURITY_GROUP_INGRESS, e))
                } else {
                    ec2.authorize_security_group_egress()
                        .group_id(&gid)
                        .ip_permissions(perm)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| fail(&what, &deploy::AUTHORIZE_SECURITY_GROUP_EGRESS, e))
                };
                match r {
                    Err(e) if e.code() == Some("InvalidPermission.Duplicate") => {}
                    other => other?,
                }
            }
            Action::Revoke {
                group,
                ingress,
                rule,
            } => {
                let gid = self.id(group)?;
                let perm = permission(rule, |k| self.ids.get(k).cloned())?;
                if *ingress {
                    let r = ec2
                        .revoke_security_group_ingress()
                        .group_id(&gid)
                        .ip_permissions(perm)
                        .send()
                        .await;
                    deleted(&what, &deploy::REVOKE_SECURITY_GROUP_INGRESS, r)?;
                } else {
                    let r = ec2
                        .revoke_security_group_egress()
                        .group_id(&gid)
                        .ip_permissions(perm)
                        .send()
                        .await;
                    deleted(&what, &deploy::REVOKE_SECURITY_GROUP_EGRESS, r)?;
                }
            }
            Action::CreateRole { name, tags } => {
                iam.create_role()
                    .role_name(name)
                    .assume_role_policy_document(trust_policy().to_string())
                    .description(
                        "gatehouse bastion: discover hosts, read IAM SSH keys, share the host key",
                    )
                    .set_tags(Some(iam_tags(tags)))
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::CREATE_ROLE, e))?;
            }
            Action::PutRolePolicy { role, policy } => {
                iam.put_role_policy()
                    .role_name(role)
                    .policy_name(POLICY_NAME)
                    .policy_document(policy.to_string())
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::PUT_ROLE_POLICY, e))?;
            }
            Action::CreateInstanceProfile { name, tags } => {
                iam.create_instance_profile()
                    .instance_profile_name(name)
                    .set_tags(Some(iam_tags(tags)))
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::CREATE_INSTANCE_PROFILE, e))?;
            }
            Action::AddRoleToProfile { profile, role } => {
                iam.add_role_to_instance_profile()
                    .instance_profile_name(profile)
                    .role_name(role)
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::ADD_ROLE_TO_INSTANCE_PROFILE, e))?;
            }
            Action::RunInstance { key, launch, tags } => {
                let id = self.run_instance(&what, launch, tags).await?;
                self.ids.insert(key.clone(), id);
            }
            Action::AssociateAddress { eip, instance } => {
                let alloc = self.id(eip)?;
                let inst = self.id(instance)?;
                self.wait_instance(&inst, &["running"], &what).await?;
                ec2.associate_address()
                    .allocation_id(alloc)
                    .instance_id(inst)
                    .allow_reassociation(true)
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::ASSOCIATE_ADDRESS, e))?;
            }
            Action::SetTags { resource, tags } => {
                ec2.create_tags()
                    .resources(self.id(resource)?)
                    .set_tags(Some(ec2_tags(tags)))
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::CREATE_TAGS, e))?;
            }
            // The replicas' and the alarms' steps ran above (`replica_step`, `alarm_step`).
            other => {
                return Err(Error::Unresolved(format!(
                    "{what}: no executor for {other:?}"
                )))
            }
        }
        Ok(())
    }

    /// Create the event queue. SQS refuses a queue's name for 60 s after that queue was
    /// deleted (the switch turned off and on again): wait it out, bounded.
    async fn create_queue(
        &self,
        what: &str,
        name: &str,
        attributes: &BTreeMap<String, String>,
        tags: &Tags,
    ) -> Result<String, Error> {
        let start = Instant::now();
        loop {
            let r = self
                .clients
                .sqs
                .create_queue()
                .queue_name(name)
                .set_attributes(Some(queue_attributes(attributes)))
                .set_tags(Some(tags.clone().into_iter().collect()))
                .send()
                .await;
            match r {
                Ok(out) => {
                    let url = out
                        .queue_url()
                        .ok_or_else(|| missing(what, "CreateQueue", "queue URL"))?;
                    return Ok(url.to_owned());
                }
                Err(e) => {
                    let err = fail(what, &deploy::CREATE_QUEUE, e);
                    let recently = err
                        .code()
                        .is_some_and(|c| c.ends_with("QueueDeletedRecently"));
                    if !recently || start.elapsed() > self.waits.timeout {
                        return Err(err);
                    }
                    tracing::info!(resource = what, "queue name deleted recently; retrying");
                    tokio::time::sleep(self.waits.poll).await;
                }
            }
        }
    }

    /// Remove targets from a rule (gone already counts as removed); EventBridge answers per
    /// target.
    async fn remove_targets(&self, what: &str, rule: &str, ids: &[String]) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let out = match self
            .clients
            .events
            .remove_targets()
            .rule(rule)
            .set_ids(Some(ids.to_vec()))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let err = fail(what, &deploy::REMOVE_TARGETS, e);
                return if err.is_not_found() { Ok(()) } else { Err(err) };
            }
        };
        let failed = target_failures(
            out.failed_entries()
                .iter()
                .map(|f| (f.target_id(), f.error_code(), f.error_message())),
        );
        if out.failed_entry_count() > 0 || !failed.is_empty() {
            return Err(Error::Entries {
                resource: what.to_owned(),
                op: "RemoveTargets",
                detail: failed.join("; "),
            });
        }
        Ok(())
    }

    async fn tag_bucket(&self, what: &str, bucket: &str, tags: &Tags) -> Result<(), Error> {
        let set: Vec<aws_sdk_s3::types::Tag> = tags
            .iter()
            .filter_map(|(k, v)| {
                aws_sdk_s3::types::Tag::builder()
                    .key(k)
                    .value(v)
                    .build()
                    .ok()
            })
            .collect();
        let tagging = aws_sdk_s3::types::Tagging::builder()
            .set_tag_set(Some(set))
            .build()
            .map_err(|_| missing(what, "PutBucketTagging", "tag set"))?;
        self.clients
            .s3
            .put_bucket_tagging()
            .bucket(bucket)
            .tagging(tagging)
            .send()
            .await
            .map_err(|e| fail(what, &deploy::PUT_BUCKET_TAGGING, e))?;
        Ok(())
    }

    /// The audit log group keeps its events `days` days.
    async fn put_retention(&self, what: &str, group: &str, days: i32) -> Result<(), Error> {
        self.clients
            .logs
            .put_retention_policy()
            .log_group_name(group)
            .retention_in_days(days)
            .send()
            .await
            .map_err(|e| fail(what, &deploy::PUT_RETENTION_POLICY, e))?;
        Ok(())
    }

    /// Public access blocked (all four switches), default encryption SSE-S3, and `policy`.
    async fn secure_bucket(
        &self,
        what: &str,
        bucket: &str,
        policy: &serde_json::Value,
    ) -> Result<(), Error> {
        use aws_sdk_s3::types::{
            PublicAccessBlockConfiguration, ServerSideEncryption, ServerSideEncryptionByDefault,
            ServerSideEncryptionConfiguration, ServerSideEncryptionRule,
        };
        let s3 = &self.clients.s3;
        s3.put_public_access_block()
            .bucket(bucket)
            .public_access_block_configuration(
                PublicAccessBlockConfiguration::builder()
                    .block_public_acls(true)
                    .ignore_public_acls(true)
                    .block_public_policy(true)
                    .restrict_public_buckets(true)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| fail(what, &deploy::PUT_PUBLIC_ACCESS_BLOCK, e))?;
        let by_default = ServerSideEncryptionByDefault::builder()
            .sse_algorithm(ServerSideEncryption::Aes256)
            .build()
            .map_err(|_| missing(what, "PutBucketEncryption", "algorithm"))?;
        let config = ServerSideEncryptionConfiguration::builder()
            .rules(
                ServerSideEncryptionRule::builder()
                    .apply_server_side_encryption_by_default(by_default)
                    .build(),
            )
            .build()
            .map_err(|_| missing(what, "PutBucketEncryption", "rules"))?;
        s3.put_bucket_encryption()
            .bucket(bucket)
            .server_side_encryption_configuration(config)
            .send()
            .await
            .map_err(|e| fail(what, &deploy::PUT_BUCKET_ENCRYPTION, e))?;
        s3.put_bucket_policy()
            .bucket(bucket)
            .policy(policy.to_string())
            .send()
            .await
            .map_err(|e| fail(what, &deploy::PUT_BUCKET_POLICY, e))?;
        Ok(())
    }

    /// Upload the binary with its SHA-256, which S3 checks against the bytes it receives; the
    /// file is read again here, so a binary changed since `plan` is refused, not uploaded.
    async fn put_binary(
        &self,
        what: &str,
        bucket: &str,
        object: &str,
        path: &std::path::Path,
        sha256: &str,
    ) -> Result<(), Error> {
        let digest = crate::spec::file_digest(path).map_err(|e| Error::Binary {
            resource: what.to_owned(),
            problem: format!("{}: {e}", path.display()),
        })?;
        let now = digest.hex();
        if now != sha256 {
            return Err(Error::Binary {
                resource: what.to_owned(),
                problem: format!(
                    "{} changed since the plan (sha256 {now}, planned {sha256}); run apply again",
                    path.display()
                ),
            });
        }
        let body = aws_sdk_s3::primitives::ByteStream::from_path(path)
            .await
            .map_err(|e| Error::Binary {
                resource: what.to_owned(),
                problem: format!("{}: {e}", path.display()),
            })?;
        self.clients
            .s3
            .put_object()
            .bucket(bucket)
            .key(object)
            .body(body)
            .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(digest.sha256))
            .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::Aes256)
            .send()
            .await
            .map_err(|e| fail(what, &deploy::PUT_OBJECT, e))?;
        Ok(())
    }

    /// Delete every object of the bucket, then the bucket (S3 refuses to delete a bucket that
    /// holds objects).
    async fn delete_bucket(&self, what: &str, bucket: &str) -> Result<(), Error> {
        let s3 = &self.clients.s3;
        let mut pages = s3.list_objects_v2().bucket(bucket).into_paginator().send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            match page {
                Ok(page) => keys.extend(
                    page.contents()
                        .iter()
                        .filter_map(|o| o.key().map(str::to_string)),
                ),
                Err(e) => {
                    let err = fail(what, &deploy::LIST_OBJECTS_V2, e);
                    if err.is_not_found() {
                        return Ok(());
                    }
                    return Err(err);
                }
            }
        }
        for key in keys {
            deleted(
                what,
                &deploy::DELETE_OBJECT,
                s3.delete_object().bucket(bucket).key(&key).send().await,
            )?;
        }
        deleted(
            what,
            &deploy::DELETE_BUCKET,
            s3.delete_bucket().bucket(bucket).send().await,
        )
    }

    /// The bastion's user data (plain text), for the VPC and account of this run.
    pub(super) fn bastion_user_data(&self, what: &str) -> Result<String, Error> {
        let spec = self
            .spec
            .ok_or_else(|| Error::Unresolved("spec for the bastion user data".into()))?;
        let vpc = self.id("vpc")?;
        // Checked at plan with a placeholder VPC id; again with the real one, so a bastion
        // is never launched with a config its daemon refuses.
        crate::userdata::check_daemon_config(spec, &vpc, &self.account).map_err(|problems| {
            Error::DaemonConfig {
                resource: what.to_owned(),
                problems: problems.join("; "),
            }
        })?;
        let bucket = match spec.bastion.binary {
            crate::spec::Binary::Stored { .. } => Some(self.id("bucket")?),
            crate::spec::Binary::Url { .. } => None,
        };
        Ok(crate::userdata::render(
            spec,
            &vpc,
            &self.account,
            bucket.as_deref(),
        ))
    }

    async fn run_instance(
        &self,
        what: &str,
        launch: &LaunchSpec,
        tags: &Tags,
    ) -> Result<String, Error> {
        let mut tags = tags.clone();
        let mut user_data = None;
        if launch.bastion {
            let text = self.bastion_user_data(what)?;
            tags.insert(TAG_USER_DATA.into(), sha256_hex(&text));
            user_data = Some(base64::engine::general_purpose::STANDARD.encode(text));
        }
        let subnet = self.id(&launch.subnet)?;
        let group = self.id(&launch.security_group)?;
        let start = Instant::now();
        loop {
            let mut req = self
                .clients
                .ec2
                .run_instances()
                .image_id(&launch.ami)
                .instance_type(InstanceType::from(launch.instance_type.as_str()))
                .min_count(1)
                .max_count(1)
                .subnet_id(&subnet)
                .security_group_ids(&group)
                .metadata_options(
                    InstanceMetadataOptionsRequest::builder()
                        .http_tokens(HttpTokensState::Required)
                        .http_put_response_hop_limit(1)
                        .http_endpoint(InstanceMetadataEndpointState::Enabled)
                        .build(),
                )
                .tag_specifications(tag_spec(ResourceType::Instance, &tags))
                .tag_specifications(tag_spec(ResourceType::Volume, &tags))
                // The network interface too: the deployer may associate and disassociate
                // addresses only on resources with the stack's tag.
                .tag_specifications(tag_spec(ResourceType::NetworkInterface, &tags))
                .set_user_data(user_data.clone())
                .set_private_ip_address(launch.private_ip.clone());
            if let Some(profile) = &launch.profile {
                req = req.iam_instance_profile(
                    IamInstanceProfileSpecification::builder()
                        .name(profile)
                        .build(),
                );
            }
            match req.send().await {
                Ok(out) => {
                    let id = out
                        .instances()
                        .first()
                        .and_then(|i| i.instance_id())
                        .ok_or_else(|| missing(what, "RunInstances", "instance id"))?;
                    return Ok(id.to_string());
                }
                Err(e) => {
                    let err = fail(what, &deploy::RUN_INSTANCES, e);
                    // IAM is eventually consistent: a new instance profile can take seconds to
                    // become visible to EC2.
                    let profile_not_ready = err.code() == Some("InvalidParameterValue")
                        && err
                            .to_string()
                            .to_ascii_lowercase()
                            .contains("iaminstanceprofile");
                    if !profile_not_ready || start.elapsed() > self.waits.timeout {
                        return Err(err);
                    }
                    tracing::info!(
                        resource = what,
                        "instance profile not visible to EC2 yet; retrying"
                    );
                    tokio::time::sleep(self.waits.poll).await;
                }
            }
        }
    }

    async fn wait_instance(
        &self,
        id: &str,
        states: &[&'static str],
        what: &str,
    ) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            let out = self
                .clients
                .ec2
                .describe_instances()
                .instance_ids(id)
                .send()
                .await
                .map_err(|e| fail(what, &deploy::DESCRIBE_INSTANCES, e))?;
            let state = out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find(|i| i.instance_id() == Some(id))
                .and_then(|i| i.state())
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_string());
            match state {
                Some(s) if states.contains(&s.as_str()) => return Ok(()),
                None if states.contains(&"terminated") => return Ok(()),
                _ => {}
            }
            self.pause(start, what, states.first().copied().unwrap_or("ready"))
                .await?;
        }
    }

    async fn wait_nat(&self, id: &str, states: &[&'static str], what: &str) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            let r = self
                .clients
                .ec2
                .describe_nat_gateways()
                .nat_gateway_ids(id)
                .send()
                .await;
            let state = match r {
                Ok(out) => out
                    .nat_gateways()
                    .iter()
                    .find(|n| n.nat_gateway_id() == Some(id))
                    .and_then(|n| n.state())
                    .map(|s| s.as_str().to_string()),
                Err(e) => {
                    let err = fail(what, &deploy::DESCRIBE_NAT_GATEWAYS, e);
                    if !err.is_not_found() {
                        return Err(err);
                    }
                    None
                }
            };
            match state.as_deref() {
                Some(s) if states.contains(&s) => return Ok(()),
                None if states.contains(&"deleted") => return Ok(()),
                Some("failed") => {
                    return Err(Error::NatFailed {
                        resource: what.to_string(),
                    })
                }
                _ => {}
            }
            self.pause(start, what, states.first().copied().unwrap_or("ready"))
                .await?;
        }
    }

    /// Deleting a subnet, group or VPC right after its dependents can meet
    /// `DependencyViolation` for a while (network interfaces linger): retry, bounded.
    async fn retry_dependency<F, Fut>(&self, what: &str, mut call: F) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), Error>>,
    {
        let start = Instant::now();
        loop {
            match call().await {
                Err(e)
                    if e.code() == Some("DependencyViolation")
                        && start.elapsed() < self.waits.timeout =>
                {
                    tracing::info!(resource = what, "still has dependents; retrying");
                    tokio::time::sleep(self.waits.poll).await;
                }
                other => return other,
            }
        }
    }

    pub(super) async fn pause(
        &self,
        start: Instant,
        what: &str,
        state: &'static str,
    ) -> Result<(), Error> {
        if start.elapsed() > self.waits.timeout {
            return Err(Error::Timeout {
                resource: what.to_string(),
                state,
                secs: self.waits.timeout.as_secs(),
            });
        }
        tokio::time::sleep(self.waits.poll).await;
        Ok(())
    }
}

pub(super) fn missing(resource: &str, op: &'static str, field: &'static str) -> Error {
    Error::Missing {
        resource: resource.to_string(),
        op,
        field,
    }
}

/// The result of a delete-like call: done, or already gone (not found), else the error for
/// `what`.
pub(super) fn deleted<T, E>(
    what: &str,
    op: &'static deploy::Call,
    r: Result<T, SdkError<E, aws_sdk_ec2::config::http::HttpResponse>>,
) -> Result<(), Error>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match r {
        Ok(_) => Ok(()),
        Err(e) => match fail(what, op, e) {
            e if e.is_not_found() => Ok(()),
            e => Err(e),
        },
    }
}

/// EventBridge's per-target failures (PutTargets and RemoveTargets answer 200 and list them),
/// as (target id, error code, message), one line each.
fn target_failures<'a>(
    entries: impl Iterator<Item = (Option<&'a str>, Option<&'a str>, Option<&'a str>)>,
) -> Vec<String> {
    entries
        .map(|(id, code, message)| {
            format!(
                "target {}: {}: {}",
                id.unwrap_or("?"),
                code.unwrap_or("?"),
                message.unwrap_or("")
            )
        })
        .collect()
}
