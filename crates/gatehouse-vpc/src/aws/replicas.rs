//! The AWS side of a scaled-out stack (see `plan::replicas`): reading and changing the
//! launch template (EC2), the balancer, its listener and target group (Elastic Load Balancing
//! v2) and the Auto Scaling group.

use std::time::Instant;

use aws_sdk_autoscaling::types::{LaunchTemplateSpecification, Tag as AsgTag};
use aws_sdk_ec2::types::{
    LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataOptionsRequest, LaunchTemplateTagSpecificationRequest,
    RequestLaunchTemplateData, ResourceType,
};
use aws_sdk_elasticloadbalancingv2::types::{
    Action as ElbAction, ActionTypeEnum, LoadBalancerAttribute, LoadBalancerSchemeEnum,
    LoadBalancerTypeEnum, ProtocolEnum, SubnetMapping, Tag as ElbTag, TargetGroupAttribute,
    TargetTypeEnum,
};
use base64::Engine;
use sha2::Digest;

use super::execute::{ec2_tags, missing, Executor};
use super::{fail, Clients, Error};
use crate::deploy;
use crate::model::*;
use crate::names::{balancer_name, group_name, target_group_name, TEMPLATE_VERSION_KEY};
use crate::plan::replicas::{
    HEALTHY_THRESHOLD, HEALTH_CHECK_GRACE_SECS, HEALTH_INTERVAL_SECS, TERMINATION_POLICIES,
    UNHEALTHY_THRESHOLD,
};
use crate::userdata::{HEALTH_PATH, HEALTH_PORT};

/// The target group's health check, on a CreateTargetGroup or ModifyTargetGroup request (two
/// builder types with the same setters): HTTP to the daemon's health endpoint.
macro_rules! health_check {
    ($request:expr) => {
        $request
            .health_check_protocol(ProtocolEnum::Http)
            .health_check_port(HEALTH_PORT.to_string())
            .health_check_path(HEALTH_PATH)
            .health_check_interval_seconds(HEALTH_INTERVAL_SECS)
            .healthy_threshold_count(HEALTHY_THRESHOLD)
            .unhealthy_threshold_count(UNHEALTHY_THRESHOLD)
    };
}

fn elb_tags(tags: &Tags) -> Vec<ElbTag> {
    tags.iter()
        .map(|(k, v)| ElbTag::builder().key(k).value(v).build())
        .collect()
}

/// The group's tags, on the group only: the template tags the replicas (and their volumes and
/// network interfaces).
fn asg_tags(group: &str, tags: &Tags) -> Vec<AsgTag> {
    tags.iter()
        .map(|(k, v)| {
            AsgTag::builder()
                .key(k)
                .value(v)
                .resource_id(group)
                .resource_type("auto-scaling-group")
                .propagate_at_launch(false)
                .build()
        })
        .collect()
}

/// True for ELB's and Auto Scaling's "there is none of that name" answers.
fn absent(e: &Error) -> bool {
    e.is_not_found()
        || matches!(
            e.code(),
            Some("LoadBalancerNotFound" | "TargetGroupNotFound" | "ListenerNotFound")
        )
}

/// The tags of the ELB resource `arn`.
async fn elb_tags_of(c: &Clients, what: &str, arn: &str) -> Result<Tags, Error> {
    let out = c
        .elb
        .describe_tags()
        .resource_arns(arn)
        .send()
        .await
        .map_err(|e| fail(what, &deploy::DESCRIBE_ELB_TAGS, e))?;
    Ok(out
        .tag_descriptions()
        .iter()
        .filter(|d| d.resource_arn() == Some(arn))
        .flat_map(|d| d.tags())
        .filter_map(|t| {
            Some((
                t.key()?.to_owned(),
                t.value().unwrap_or_default().to_owned(),
            ))
        })
        .collect())
}

/// Read the stack's launch templates (stack tag), balancer, listeners, target group and
/// group (by their names) into `obs`.
pub(super) async fn observe(c: &Clients, stack: &str, obs: &mut Observed) -> Result<(), Error> {
    // ---- launch templates ----
    let pages = c
        .ec2
        .describe_launch_templates()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{TAG_STACK}"))
                .values(stack)
                .build(),
        )
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| {
            fail(
                format!("launch templates of stack {stack}"),
                &deploy::DESCRIBE_LAUNCH_TEMPLATES,
                e,
            )
        })?;
    for t in pages.iter().flat_map(|p| p.launch_templates()) {
        let id = t.launch_template_id().unwrap_or_default().to_owned();
        let tags: Tags = t
            .tags()
            .iter()
            .filter_map(|t| {
                Some((
                    t.key()?.to_owned(),
                    t.value().unwrap_or_default().to_owned(),
                ))
            })
            .collect();
        let out = c
            .ec2
            .describe_launch_template_versions()
            .launch_template_id(&id)
            .versions("$Latest")
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                let err = fail(
                    format!("launch template {id}"),
                    &deploy::DESCRIBE_LAUNCH_TEMPLATE_VERSIONS,
                    e,
                );
                if err.is_not_found() || err.code().is_some_and(|c| c.contains("NotFound")) {
                    continue; // deleted meanwhile
                }
                return Err(err);
            }
        };
        let version = out.launch_template_versions().first();
        let data = version.and_then(|v| v.launch_template_data());
        let meta = data.and_then(|d| d.metadata_options());
        let user_data_sha256 = data.and_then(|d| d.user_data()).map(|b64| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_else(|_| b64.as_bytes().to_vec());
            crate::digest::hex(&sha2::Sha256::digest(bytes))
        });
        obs.launch_templates.push(ObsLaunchTemplate {
            id,
            name: t.launch_template_name().unwrap_or_default().to_owned(),
            key: tags.get(TAG_RESOURCE).cloned().unwrap_or_default(),
            tags,
            latest_version: version
                .and_then(|v| v.version_number())
                .or(t.latest_version_number())
                .unwrap_or(0),
            default_version: t.default_version_number().unwrap_or(0),
            ami: data
                .and_then(|d| d.image_id())
                .unwrap_or_default()
                .to_owned(),
            instance_type: data
                .and_then(|d| d.instance_type())
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
            profile: data
                .and_then(|d| d.iam_instance_profile())
                .and_then(|p| p.name().or(p.arn()))
                .map(str::to_owned),
            security_groups: data
                .map(|d| d.security_group_ids().to_vec())
                .unwrap_or_default(),
            http_tokens: meta
                .and_then(|m| m.http_tokens())
                .map(|t| t.as_str().to_owned()),
            hop_limit: meta.and_then(|m| m.http_put_response_hop_limit()),
            user_data_sha256,
        });
    }

    // ---- balancer and listeners ----
    let name = balancer_name(stack);
    let what = format!("load balancer {name}");
    match c.elb.describe_load_balancers().names(&name).send().await {
        Ok(out) => {
            if let Some(b) = out.load_balancers().first() {
                let arn = b.load_balancer_arn().unwrap_or_default().to_owned();
                let tags = elb_tags_of(c, &what, &arn).await?;
                let attributes = c
                    .elb
                    .describe_load_balancer_attributes()
                    .load_balancer_arn(&arn)
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::DESCRIBE_LOAD_BALANCER_ATTRIBUTES, e))?;
                let cross_zone = attributes.attributes().iter().any(|a| {
                    a.key() == Some("load_balancing.cross_zone.enabled")
                        && a.value() == Some("true")
                });
                let listeners = c
                    .elb
                    .describe_listeners()
                    .load_balancer_arn(&arn)
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::DESCRIBE_LISTENERS, e))?;
                for l in listeners.listeners() {
                    obs.listeners.push(ObsListener {
                        arn: l.listener_arn().unwrap_or_default().to_owned(),
                        protocol: l
                            .protocol()
                            .map(|p| p.as_str().to_owned())
                            .unwrap_or_default(),
                        port: l.port().unwrap_or(0),
                        forwards_to: l
                            .default_actions()
                            .iter()
                            .filter_map(|a| a.target_group_arn().map(str::to_owned))
                            .collect(),
                    });
                }
                obs.balancer = Some(ObsLoadBalancer {
                    arn,
                    name: name.clone(),
                    key: tags.get(TAG_RESOURCE).cloned().unwrap_or_default(),
                    tags,
                    dns_name: b.dns_name().unwrap_or_default().to_owned(),
                    scheme: b
                        .scheme()
                        .map(|s| s.as_str().to_owned())
                        .unwrap_or_default(),
                    kind: b
                        .r#type()
                        .map(|t| t.as_str().to_owned())
                        .unwrap_or_default(),
                    state: b
                        .state()
                        .and_then(|s| s.code())
                        .map(|c| c.as_str().to_owned())
                        .unwrap_or_default(),
                    vpc_id: b.vpc_id().unwrap_or_default().to_owned(),
                    subnets: b
                        .availability_zones()
                        .iter()
                        .map(|z| {
                            (
                                z.subnet_id().unwrap_or_default().to_owned(),
                                z.load_balancer_addresses()
                                    .iter()
                                    .find_map(|a| a.allocation_id())
                                    .map(str::to_owned),
                            )
                        })
                        .collect(),
                    security_groups: b.security_groups().to_vec(),
                    cross_zone,
                });
            }
        }
        Err(e) => {
            let err = fail(&what, &deploy::DESCRIBE_LOAD_BALANCERS, e);
            if !absent(&err) {
                return Err(err);
            }
        }
    }

    // ---- target group ----
    let name = target_group_name(stack);
    let what = format!("target group {name}");
    match c.elb.describe_target_groups().names(&name).send().await {
        Ok(out) => {
            if let Some(g) = out.target_groups().first() {
                let arn = g.target_group_arn().unwrap_or_default().to_owned();
                let tags = elb_tags_of(c, &what, &arn).await?;
                let attributes = c
                    .elb
                    .describe_target_group_attributes()
                    .target_group_arn(&arn)
                    .send()
                    .await
                    .map_err(|e| fail(&what, &deploy::DESCRIBE_TARGET_GROUP_ATTRIBUTES, e))?;
                obs.target_group = Some(ObsTargetGroup {
                    arn,
                    name: name.clone(),
                    key: tags.get(TAG_RESOURCE).cloned().unwrap_or_default(),
                    tags,
                    protocol: g
                        .protocol()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_default(),
                    port: g.port().unwrap_or(0),
                    vpc_id: g.vpc_id().unwrap_or_default().to_owned(),
                    health_protocol: g
                        .health_check_protocol()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_default(),
                    health_port: g.health_check_port().unwrap_or_default().to_owned(),
                    health_path: g.health_check_path().map(str::to_owned),
                    health_interval: g.health_check_interval_seconds(),
                    healthy_threshold: g.healthy_threshold_count(),
                    unhealthy_threshold: g.unhealthy_threshold_count(),
                    attributes: attributes
                        .attributes()
                        .iter()
                        .filter_map(|a| Some((a.key()?.to_owned(), a.value()?.to_owned())))
                        .collect(),
                });
            }
        }
        Err(e) => {
            let err = fail(&what, &deploy::DESCRIBE_TARGET_GROUPS, e);
            if !absent(&err) {
                return Err(err);
            }
        }
    }

    // ---- group ----
    let name = group_name(stack);
    let out = c
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&name)
        .send()
        .await
        .map_err(|e| {
            fail(
                format!("auto scaling group {name}"),
                &deploy::DESCRIBE_AUTO_SCALING_GROUPS,
                e,
            )
        })?;
    if let Some(g) = out
        .auto_scaling_groups()
        .iter()
        .find(|g| g.auto_scaling_group_name() == Some(name.as_str()))
    {
        let tags: Tags = g
            .tags()
            .iter()
            .filter_map(|t| {
                Some((
                    t.key()?.to_owned(),
                    t.value().unwrap_or_default().to_owned(),
                ))
            })
            .collect();
        obs.group = Some(ObsAutoScalingGroup {
            name: name.clone(),
            key: tags.get(TAG_RESOURCE).cloned().unwrap_or_default(),
            tags,
            min: g.min_size().unwrap_or(0),
            max: g.max_size().unwrap_or(0),
            desired: g.desired_capacity().unwrap_or(0),
            subnets: g
                .vpc_zone_identifier()
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            launch_template_id: g
                .launch_template()
                .and_then(|t| t.launch_template_id())
                .map(str::to_owned),
            launch_template_version: g
                .launch_template()
                .and_then(|t| t.version())
                .map(str::to_owned),
            target_groups: g.target_group_arns().to_vec(),
            health_check_type: g.health_check_type().unwrap_or_default().to_owned(),
            health_check_grace: g.health_check_grace_period(),
            members: g
                .instances()
                .iter()
                .map(|i| ObsMember {
                    id: i.instance_id().unwrap_or_default().to_owned(),
                    version: i
                        .launch_template()
                        .and_then(|t| t.version())
                        .map(str::to_owned),
                    lifecycle: i
                        .lifecycle_state()
                        .map(|s| s.as_str().to_owned())
                        .unwrap_or_default(),
                })
                .collect(),
            termination_policies: g.termination_policies().to_vec(),
            deleting: g.status().is_some_and(|s| s.contains("Delete")),
        });
    }
    Ok(())
}

impl Executor<'_> {
    /// The template data of a version: `launch` (IMDSv2, hop limit 1), the bastion's user
    /// data, and `instance_tags` on every instance, volume and network interface it launches.
    fn template_data(
        &self,
        what: &str,
        launch: &LaunchSpec,
        instance_tags: &Tags,
    ) -> Result<RequestLaunchTemplateData, Error> {
        let text = self.bastion_user_data(what)?;
        let group = self.id(&launch.security_group)?;
        // Each replica says which user data it was launched with (see `plan::replicas`).
        let mut instance_tags = instance_tags.clone();
        instance_tags.insert(TAG_USER_DATA.into(), crate::digest::sha256_hex(&text));
        let tagged = |kind: ResourceType| {
            LaunchTemplateTagSpecificationRequest::builder()
                .resource_type(kind)
                .set_tags(Some(ec2_tags(&instance_tags)))
                .build()
        };
        let mut data = RequestLaunchTemplateData::builder()
            .image_id(&launch.ami)
            .instance_type(aws_sdk_ec2::types::InstanceType::from(
                launch.instance_type.as_str(),
            ))
            .security_group_ids(group)
            .metadata_options(
                LaunchTemplateInstanceMetadataOptionsRequest::builder()
                    .http_tokens(aws_sdk_ec2::types::LaunchTemplateHttpTokensState::Required)
                    .http_put_response_hop_limit(1)
                    .http_endpoint(
                        aws_sdk_ec2::types::LaunchTemplateInstanceMetadataEndpointState::Enabled,
                    )
                    .build(),
            )
            .user_data(base64::engine::general_purpose::STANDARD.encode(text))
            .tag_specifications(tagged(ResourceType::Instance))
            .tag_specifications(tagged(ResourceType::Volume))
            .tag_specifications(tagged(ResourceType::NetworkInterface));
        if let Some(profile) = &launch.profile {
            data = data.iam_instance_profile(
                LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                    .name(profile)
                    .build(),
            );
        }
        Ok(data.build())
    }

    /// One step of the replicas' resources; false when `action` is not one of theirs.
    pub(super) async fn replica_step(
        &mut self,
        what: &str,
        action: &Action,
    ) -> Result<bool, Error> {
        let c = self.clients;
        match action {
            Action::DeleteAutoScalingGroup { name } => {
                let r = c
                    .autoscaling
                    .delete_auto_scaling_group()
                    .auto_scaling_group_name(name)
                    .force_delete(true)
                    .send()
                    .await;
                match r {
                    Ok(_) => {}
                    Err(e) => {
                        let err = fail(what, &deploy::DELETE_AUTO_SCALING_GROUP, e);
                        // "AutoScalingGroup name not found": already gone.
                        if !err.to_string().contains("not found") {
                            return Err(err);
                        }
                    }
                }
                self.wait_group_gone(name, what).await?;
            }
            Action::DeleteListener { arn } => {
                let r = c.elb.delete_listener().listener_arn(arn).send().await;
                if let Err(e) = r {
                    let err = fail(what, &deploy::DELETE_LISTENER, e);
                    if !absent(&err) {
                        return Err(err);
                    }
                }
            }
            Action::DeleteLoadBalancer { arn } => {
                let r = c
                    .elb
                    .delete_load_balancer()
                    .load_balancer_arn(arn)
                    .send()
                    .await;
                if let Err(e) = r {
                    let err = fail(what, &deploy::DELETE_LOAD_BALANCER, e);
                    if !absent(&err) {
                        return Err(err);
                    }
                }
                self.wait_balancer_gone(arn, what).await?;
            }
            Action::DeleteTargetGroup { arn } => {
                // A target group stays "in use" for a moment after its listener is deleted.
                let start = Instant::now();
                loop {
                    let r = c
                        .elb
                        .delete_target_group()
                        .target_group_arn(arn)
                        .send()
                        .await;
                    match r {
                        Ok(_) => break,
                        Err(e) => {
                            let err = fail(what, &deploy::DELETE_TARGET_GROUP, e);
                            if absent(&err) {
                                break;
                            }
                            if err.code() != Some("ResourceInUse") {
                                return Err(err);
                            }
                            self.pause(start, what, "free").await?;
                        }
                    }
                }
            }
            Action::DeleteLaunchTemplate { id } => {
                let r = c
                    .ec2
                    .delete_launch_template()
                    .launch_template_id(id)
                    .send()
                    .await;
                match r {
                    Ok(_) => {}
                    Err(e) => {
                        let err = fail(what, &deploy::DELETE_LAUNCH_TEMPLATE, e);
                        if !err.code().is_some_and(|c| c.contains("NotFound")) {
                            return Err(err);
                        }
                    }
                }
            }
            Action::CreateLaunchTemplate {
                key,
                name,
                launch,
                tags,
                instance_tags,
            } => {
                let data = self.template_data(what, launch, instance_tags)?;
                let out = c
                    .ec2
                    .create_launch_template()
                    .launch_template_name(name)
                    .launch_template_data(data)
                    .tag_specifications(super::execute::tag_spec(
                        ResourceType::LaunchTemplate,
                        tags,
                    ))
                    .send()
                    .await
                    .map_err(|e| fail(what, &deploy::CREATE_LAUNCH_TEMPLATE, e))?;
                let t = out
                    .launch_template()
                    .ok_or_else(|| missing(what, "CreateLaunchTemplate", "launch template"))?;
                let id = t
                    .launch_template_id()
                    .ok_or_else(|| missing(what, "CreateLaunchTemplate", "launch template id"))?;
                self.ids.insert(key.clone(), id.to_owned());
                self.ids.insert(
                    TEMPLATE_VERSION_KEY.into(),
                    t.latest_version_number().unwrap_or(1).to_string(),
                );
            }
            Action::CreateLaunchTemplateVersion {
                template,
                launch,
                instance_tags,
            } => {
                let id = self.id(template)?;
                let data = self.template_data(what, launch, instance_tags)?;
                let out = c
                    .ec2
                    .create_launch_template_version()
                    .launch_template_id(&id)
                    .launch_template_data(data)
                    .send()
                    .await
                    .map_err(|e| fail(what, &deploy::CREATE_LAUNCH_TEMPLATE_VERSION, e))?;
                let version = out
                    .launch_template_version()
                    .and_then(|v| v.version_number())
                    .ok_or_else(|| {
                        missing(what, "CreateLaunchTemplateVersion", "version number")
                    })?;
                self.ids
                    .insert(TEMPLATE_VERSION_KEY.into(), version.to_string());
                self.default_version(what, &id).await?;
            }
            Action::SetDefaultTemplateVersion { template } => {
                let id = self.id(template)?;
                self.default_version(what, &id).await?;
            }
            Action::CreateTargetGroup {
                key,
                name,
                vpc,
                tags,
            } => {
                let vpc = self.id(vpc)?;
                let request = c
                    .elb
                    .create_target_group()
                    .name(name)
                    .protocol(ProtocolEnum::Tcp)
                    .port(i32::from(gatehouse_policy::SSH_PORT))
                    .vpc_id(vpc)
                    .target_type(TargetTypeEnum::Instance);
                let out = health_check!(request)
                    .set_tags(Some(elb_tags(tags)))
                    .send()
                    .await
                    .map_err(|e| fail(what, &deploy::CREATE_TARGET_GROUP, e))?;
                let arn = out
                    .target_groups()
                    .first()
                    .and_then(|g| g.target_group_arn())
                    .ok_or_else(|| missing(what, "CreateTargetGroup", "target group ARN"))?;
                self.ids.insert(key.clone(), arn.to_owned());
            }
            Action::SetTargetGroupHealthCheck { group } => {
                let arn = self.id(group)?;
                health_check!(c.elb.modify_target_group().target_group_arn(arn))
                    .send()
                    .await
                    .map_err(|e| fail(what, &deploy::MODIFY_TARGET_GROUP, e))?;
            }
            Action::SetTargetGroupAttributes { group, attributes } => {
                let arn = self.id(group)?;
                let list: Vec<TargetGroupAttribute> = attributes
                    .iter()
                    .map(|(k, v)| TargetGroupAttribute::builder().key(k).value(v).build())
                    .collect();
                c.elb
                    .modify_target_group_attributes()
                    .target_group_arn(arn)
                    .set_attributes(Some(list))
                    .send()
                    .await
                    .map_err(|e| fail(what, &deploy::MODIFY_TARGET_GROUP_ATTRIBUTES, e))?;
            }
            Action::CreateLoadBalancer {
                key,
                name,
                subnets,
                security_group,
                tags,
            } => {
                let mut mappings = Vec::new();
                for (subnet, eip) in subnets {
                    let mut m = SubnetMapping::builder().subnet_id(self.id(subnet)?);
                    if let Some(eip) = eip {
                        m = m.allocation_id(self.id(eip)?);
                    }
                    mappings.push(m.build());
                }
                let out = c
                    .elb
                    .create_load_balancer()
                    .name(name)
                    .r#type(LoadBalancerTypeEnum::Network)
                    .scheme(LoadBalancerSchemeEnum::InternetFacing)
                    .set_subnet_mappings(Some(mappings))
                    .security_groups(self.id(security_group)?)
                    .set_tags(Some(elb_tags(tags)))
                    .send()
                    .await
                    .map_err(|e| fail(what, &deploy::CREATE_LOAD_BALANCER, e))?;
                let arn = out
                    .load_balancers()
                    .first()
                    .and_then(|b| b.load_balancer_arn())
                    .ok_or_else(|| missing(what, "CreateLoadBalancer", "load balancer ARN"))?;
                self.ids.insert(key.clone(), arn.to_owned());
            }
            Action::SetLoadBalancerAttributes {
                balancer,
                attributes,
            } => {
                let arn = self.id(balancer)?;
                let list: Vec<LoadBalancerAttribute> = attributes
                    .iter()
                    .map(|(k, v)| LoadBalancerAttribute::builder().key(k).value(v).build())
                    .collect();
                c.elb
                    .modify_load_balancer_attributes()
                    .load_balancer_arn(arn)
                    .set_attributes(Some(list))
                    .send()
                    .await
                    .map_err(|e| fail(what, &deploy::MODIFY_LOAD_BALANCER_ATTRIBUTES, e))?;
            }
            Action::CreateListener {
                key,
                balancer,
                target_group,
                tags,
            } => {
                let lb = self.id(balancer)?;
                let tg = self.id(target_group)?;
                let out = c
                    .elb
                    .create_listener()
                    .load_balancer_arn(lb)
                    .protocol(ProtocolEnum::Tcp)
                    .port(i32::from(gatehouse_policy::SSH_PORT))
                    .default_actions(
                        ElbAction::builder()
                            .r#type(ActionTypeEnum::Forward)
                            .target_group_arn(tg)
                            .build(),
                    )
                    .set_tags(Some(elb_tags(tags)))
                    .send()
                    .await
                    .map_err(|e| fail(what, &deploy::CREATE_LISTENER, e))?;
                let arn = out
                    .listeners()
                    .first()
                    .and_then(|l| l.listener_arn())
                    .ok_or_else(|| missing(what, "CreateListener", "listener ARN"))?;
                self.ids.insert(key.clone(), arn.to_owned());
            }
            Action::TagElb { resource, tags } => {
                let arn = self.id(resource)?;
                c.elb
                    .add_tags()
                    .resource_arns(arn)
                    .set_tags(Some(elb_tags(tags)))
                    .send()
                    .await
                    .map_err(|e| fail(what, &deploy::ADD_ELB_TAGS, e))?;
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
                let subnets = self.subnet_list(subnets)?;
                c.autoscaling
                    .create_auto_scaling_group()
                    .auto_scaling_group_name(name)
                    .launch_template(self.template_spec(template)?)
                    .min_size(*size)
                    .max_size(2 * size)
                    .desired_capacity(*size)
                    .vpc_zone_identifier(subnets)
                    .target_group_arns(self.id(target_group)?)
                    .health_check_type("ELB")
                    .health_check_grace_period(HEALTH_CHECK_GRACE_SECS)
                    .set_termination_policies(Some(
                        TERMINATION_POLICIES
                            .iter()
                            .map(|p| (*p).to_owned())
                            .collect(),
                    ))
                    .set_tags(Some(asg_tags(name, tags)))
                    .send()
                    .await
                    .map_err(|e| fail(what, &deploy::CREATE_AUTO_SCALING_GROUP, e))?;
                self.ids.insert(key.clone(), name.clone());
            }
            Action::UpdateAutoScalingGroup {
                group,
                template,
                subnets,
                size,
                keep_desired,
            } => {
                let name = self.id(group)?;
                let subnets = self.subnet_list(subnets)?;
                c.autoscaling
                    .update_auto_scaling_group()
                    .auto_scaling_group_name(name)
                    .launch_template(self.template_spec(template)?)
                    .min_size(*size)
                    .max_size(2 * size)
                    .set_desired_capacity((!keep_desired).then_some(*size))
                    .vpc_zone_identifier(subnets)
                    .health_check_type("ELB")
                    .health_check_grace_period(HEALTH_CHECK_GRACE_SECS)
                    .set_termination_policies(Some(
                        TERMINATION_POLICIES
                            .iter()
                            .map(|p| (*p).to_owned())
                            .collect(),
                    ))
                    .send()
                    .await
                    .map_err(|e| fail(what, &deploy::UPDATE_AUTO_SCALING_GROUP, e))?;
            }
            Action::AttachTargetGroup {
                group,
                target_group,
            } => {
                let name = self.id(group)?;
                c.autoscaling
                    .attach_load_balancer_target_groups()
                    .auto_scaling_group_name(name)
                    .target_group_arns(self.id(target_group)?)
                    .send()
                    .await
                    .map_err(|e| fail(what, &deploy::ATTACH_LOAD_BALANCER_TARGET_GROUPS, e))?;
            }
            Action::DetachTargetGroups { group, arns } => {
                let name = self.id(group)?;
                c.autoscaling
                    .detach_load_balancer_target_groups()
                    .auto_scaling_group_name(name)
                    .set_target_group_arns(Some(arns.clone()))
                    .send()
                    .await
                    .map_err(|e| fail(what, &deploy::DETACH_LOAD_BALANCER_TARGET_GROUPS, e))?;
            }
            Action::TagAutoScalingGroup { group, tags } => {
                let name = self.id(group)?;
                c.autoscaling
                    .create_or_update_tags()
                    .set_tags(Some(asg_tags(&name, tags)))
                    .send()
                    .await
                    .map_err(|e| fail(what, &deploy::CREATE_OR_UPDATE_ASG_TAGS, e))?;
            }
            Action::RollReplicas {
                group,
                size,
                outdated,
            } => self.roll(what, group, *size, outdated).await?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Make the version this run launches the template's default too: what a launch without
    /// a version gets (and what moto launches from, whatever version the group names).
    async fn default_version(&self, what: &str, id: &str) -> Result<(), Error> {
        self.clients
            .ec2
            .modify_launch_template()
            .launch_template_id(id)
            .default_version(self.id(TEMPLATE_VERSION_KEY)?)
            .send()
            .await
            .map_err(|e| fail(what, &deploy::MODIFY_LAUNCH_TEMPLATE, e))?;
        Ok(())
    }

    /// The template at the version this run launches.
    fn template_spec(&self, template: &str) -> Result<LaunchTemplateSpecification, Error> {
        Ok(LaunchTemplateSpecification::builder()
            .launch_template_id(self.id(template)?)
            .version(self.id(TEMPLATE_VERSION_KEY)?)
            .build())
    }

    /// Subnet keys as the group takes them: ids, comma separated.
    fn subnet_list(&self, subnets: &[String]) -> Result<String, Error> {
        let ids: Result<Vec<String>, Error> = subnets.iter().map(|s| self.id(s)).collect();
        Ok(ids?.join(","))
    }

    /// The group as it is now (None: gone).
    async fn group_now(
        &self,
        name: &str,
        what: &str,
    ) -> Result<Option<aws_sdk_autoscaling::types::AutoScalingGroup>, Error> {
        let out = self
            .clients
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .map_err(|e| fail(what, &deploy::DESCRIBE_AUTO_SCALING_GROUPS, e))?;
        Ok(out
            .auto_scaling_groups()
            .iter()
            .find(|g| g.auto_scaling_group_name() == Some(name))
            .cloned())
    }

    async fn wait_group_gone(&self, name: &str, what: &str) -> Result<(), Error> {
        let start = Instant::now();
        while self.group_now(name, what).await?.is_some() {
            self.pause(start, what, "deleted").await?;
        }
        Ok(())
    }

    async fn wait_balancer_gone(&self, arn: &str, what: &str) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            let r = self
                .clients
                .elb
                .describe_load_balancers()
                .load_balancer_arns(arn)
                .send()
                .await;
            match r {
                Ok(out) if out.load_balancers().is_empty() => return Ok(()),
                Ok(_) => {}
                Err(e) => {
                    let err = fail(what, &deploy::DESCRIBE_LOAD_BALANCERS, e);
                    if absent(&err) {
                        return Ok(());
                    }
                    return Err(err);
                }
            }
            self.pause(start, what, "deleted").await?;
        }
    }

    /// See [`Action::RollReplicas`].
    async fn roll(
        &self,
        what: &str,
        group: &str,
        size: i32,
        outdated: &[String],
    ) -> Result<(), Error> {
        let c = self.clients;
        let name = self.id(group)?;
        let tg = self.id(crate::names::TARGET_GROUP_KEY)?;
        // New ones first: as many more as there are outdated ones (at most `size` more).
        let more = i32::try_from(outdated.len()).unwrap_or(size).min(size);
        c.autoscaling
            .update_auto_scaling_group()
            .auto_scaling_group_name(&name)
            .desired_capacity(size + more)
            .send()
            .await
            .map_err(|e| fail(what, &deploy::UPDATE_AUTO_SCALING_GROUP, e))?;
        // Until `size` replicas that are not outdated are in service and healthy behind the
        // balancer.
        let start = Instant::now();
        loop {
            let g = self.group_now(&name, what).await?;
            let ready: Vec<String> = g
                .iter()
                .flat_map(|g| g.instances())
                .filter(|i| {
                    i.lifecycle_state()
                        .is_some_and(|s| s.as_str() == "InService")
                })
                .filter_map(|i| i.instance_id().map(str::to_owned))
                .filter(|id| !outdated.contains(id))
                .collect();
            let health = c
                .elb
                .describe_target_health()
                .target_group_arn(&tg)
                .send()
                .await
                .map_err(|e| fail(what, &deploy::DESCRIBE_TARGET_HEALTH, e))?;
            let healthy = health
                .target_health_descriptions()
                .iter()
                .filter(|d| {
                    d.target_health()
                        .and_then(|h| h.state())
                        .is_some_and(|s| s.as_str() == "healthy")
                })
                .filter_map(|d| d.target().and_then(|t| t.id()))
                .filter(|id| ready.iter().any(|r| r == id))
                .count();
            if i32::try_from(healthy).unwrap_or(0) >= size {
                break;
            }
            tracing::info!(
                resource = what,
                healthy,
                size,
                "waiting for the new replicas to be healthy behind the balancer"
            );
            self.pause(start, what, "replaced").await?;
        }
        // Then the outdated ones go, through the group: deregistered, drained, terminated.
        for id in outdated {
            let r = c
                .autoscaling
                .terminate_instance_in_auto_scaling_group()
                .instance_id(id)
                .should_decrement_desired_capacity(true)
                .send()
                .await;
            if let Err(e) = r {
                let err = fail(what, &deploy::TERMINATE_INSTANCE_IN_AUTO_SCALING_GROUP, e);
                // Already on its way out, or gone.
                if !err.to_string().contains("not found") && !absent(&err) {
                    return Err(err);
                }
            }
        }
        Ok(())
    }
}
