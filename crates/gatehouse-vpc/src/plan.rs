//! The planner: a pure function from (validated spec, observed AWS state) to an ordered list of
//! steps. Removals come first, in reverse dependency order; then creations and repairs in
//! dependency order, one family at a time (the modules below, in the order [`plan_apply`]
//! calls them). The same removal code is the whole of `destroy`.
//!
//! Every family has the same shape: split what is observed into kept and doomed (recording the
//! kept ids in `Planner::known`, the doomed in `Planner::doomed`), then push the steps that
//! create or repair what the spec asks for. Steps name resources by their logical key; the
//! executor resolves keys to ids as it goes.

pub mod alarms;
mod compute;
pub mod events;
mod firewall;
mod identity;
mod network;
mod removal;
pub mod replicas;
mod storage;

use std::collections::BTreeMap;

use gatehouse_aws::events::IAM_EVENTS_REGION;

use crate::model::*;
use crate::spec::Spec;

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
    /// A brownfield spec (`[vpc] id`) whose existing network was not read before planning.
    #[error("the spec names an existing VPC that was not read from AWS before planning")]
    Unresolved,
}

/// What `destroy` does with the stack's audit log group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditLog {
    /// Leave it, with its lines: the audit trail outlives the stack (the default).
    #[default]
    Keep,
    /// Delete it too (`destroy --delete-audit-log`).
    Delete,
}

/// Plan the changes that make AWS match the spec.
pub fn plan_apply(spec: &Spec, obs: &Observed) -> Result<Plan, PlanError> {
    check_ownership(spec, obs)?;
    let owned = only_ours(&spec.stack, obs);
    let obs = &owned;
    let mut p = Planner::default();
    let mut create = Vec::new();
    let mut c = Creates {
        steps: &mut create,
        later: Vec::new(),
    };
    network::plan_network(spec, obs, &mut c, &mut p)?;
    firewall::plan_security_groups(spec, obs, &mut c, &mut p);
    let bucket = storage::plan_bucket(spec, obs, &mut c, &mut p)?;
    events::plan_events(spec, obs, &mut c, &mut p)?;
    storage::plan_audit_log(spec, obs, &mut c);
    // Identity after storage and events: the role's policy names the bucket, the queue and the
    // log group, and the bastion (next) needs all of them.
    let binary_bucket = storage::binary_source(spec, bucket);
    identity::plan_identity(spec, obs, &mut c, binary_bucket.as_deref());
    let user_data_hash =
        compute::plan_instances(spec, obs, &mut c, &mut p, binary_bucket.as_deref());
    replicas::plan_replicas(spec, obs, &mut c, &mut p, user_data_hash.as_deref());
    compute::plan_bastion_address(spec, obs, &mut c, &p);
    // Last: the replicas' alarm names the balancer and its target group.
    alarms::plan_alarms(spec, obs, &mut c, &mut p)?;
    let later = std::mem::take(&mut c.later);
    let mut plan = assemble(spec, obs, p, create, later);
    plan.kept = alarms::kept_subscriptions(spec, obs);
    Ok(plan)
}

/// Resources found by their name rather than by the stack tag: one that has the stack's name
/// but not its tag is someone else's, and the plan refuses to touch it.
fn check_ownership(spec: &Spec, obs: &Observed) -> Result<(), PlanError> {
    identity::check_ownership(spec, obs)?;
    events::check_ownership(spec, obs)?;
    replicas::check_ownership(spec, obs)?;
    alarms::check_ownership(spec, obs)?;
    storage::check_ownership(spec, obs)
}

/// Refuse `name` unless it is the stack's.
fn check_owned(spec: &Spec, what: &'static str, name: &str, ours: bool) -> Result<(), PlanError> {
    if ours {
        return Ok(());
    }
    Err(PlanError::NotOurs {
        what,
        name: name.to_owned(),
        stack: spec.stack.clone(),
    })
}

/// Whether `tags` carry the spec's stack tag.
fn tagged_ours(spec: &Spec, tags: &Tags) -> bool {
    tags.get(TAG_STACK) == Some(&spec.stack)
}

/// The whole plan: removals first (the security groups that stay lose their rules naming a
/// doomed group before it goes), then creations and repairs, then what waits for them.
fn assemble(spec: &Spec, obs: &Observed, p: Planner, create: Vec<Step>, later: Vec<Step>) -> Plan {
    let kept_groups: Vec<ObsSecurityGroup> = obs
        .security_groups
        .iter()
        .filter(|g| !p.doomed.security_groups.iter().any(|d| d.id == g.id))
        .cloned()
        .collect();
    let mut steps = removal::removal_steps(&p.doomed, &p.doomed_associations, &kept_groups);
    steps.extend(create);
    steps.extend(later);
    Plan {
        stack: spec.stack.clone(),
        steps,
        known: p.known,
        account: obs.account.clone(),
        kept: Vec::new(),
    }
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
                    storage::describe_retention(g.retention_days)
                ),
            });
        }
    }
    Plan {
        stack: stack.to_string(),
        steps: removal::removal_steps(&obs, &[], &[]),
        known: BTreeMap::new(),
        account: obs.account.clone(),
        kept,
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
    // Associations in other tables count only for the stack's own subnets.
    let subnet_ids: Vec<String> = o.subnets.iter().map(|x| x.id.clone()).collect();
    let table_ids: Vec<String> = o.route_tables.iter().map(|x| x.id.clone()).collect();
    o.foreign_associations
        .retain(|(table, a)| subnet_ids.contains(&a.subnet_id) && !table_ids.contains(table));
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
    o.alarms.retain(|x| ours(&x.tags));
    o.topic = o.topic.filter(|x| ours(&x.tags));
    // Metric filters are read from the audit log group: only the stack's group's count.
    if o.log_group.is_none() {
        o.metric_filters.clear();
    }
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

/// What the families decide as they go.
#[derive(Default)]
struct Planner {
    /// Key -> id of every kept resource (later families read the ids of earlier ones).
    known: BTreeMap<String, String>,
    /// What is removed, before anything is created.
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

    /// Put back drifted EC2 tags (`SetTags`).
    fn retag(&mut self, key: &str, desired: &Tags, observed: &Tags) {
        self.retag_with(key, desired, observed, |tags| Action::SetTags {
            resource: key.into(),
            tags,
        });
    }

    /// Put back drifted tags with the service's own call: `action` gets the drifted tags.
    fn retag_with(
        &mut self,
        resource: &str,
        desired: &Tags,
        observed: &Tags,
        action: impl FnOnce(Tags) -> Action,
    ) {
        let drift = tag_drift(desired, observed);
        if !drift.is_empty() {
            let names: Vec<&str> = drift.keys().map(String::as_str).collect();
            let detail = format!("tags {}", names.join(", "));
            self.push(Sign::Change, resource, detail, action(drift));
        }
    }
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

#[cfg(test)]
mod tests;
