//! The events family (`[bastion] iam_events`): the SQS queue of IAM change events and the
//! EventBridge rule that feeds it, both in `us-east-1`, and the CloudTrail trail they depend
//! on (checked, never changed).

use std::collections::BTreeMap;

use gatehouse_aws::events::{iam_event_pattern, IAM_EVENTS_REGION, QUEUE_RETENTION_SECS};

use super::{base_tags, check_owned, tagged_ours, Creates, PlanError, Planner};
use crate::model::*;
use crate::names::{
    event_queue_arn, event_queue_name, event_rule_arn, event_rule_name, EVENT_QUEUE_KEY,
    EVENT_RULE_KEY, EVENT_TARGET_ID,
};
use crate::spec::Spec;

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

/// With `iam_events`, the queue and the rule are found by name: refuse ones that are not the
/// stack's (without it, they are only looked for by tag, to be removed).
pub(super) fn check_ownership(spec: &Spec, obs: &Observed) -> Result<(), PlanError> {
    if !spec.bastion.iam_events {
        return Ok(());
    }
    if let Some(q) = &obs.queue {
        check_owned(spec, "SQS queue", &q.name, tagged_ours(spec, &q.tags))?;
    }
    if let Some(r) = &obs.rule {
        check_owned(
            spec,
            "EventBridge rule",
            &r.name,
            tagged_ours(spec, &r.tags),
        )?;
    }
    Ok(())
}

/// The IAM change-event steps (`[bastion] iam_events`): the queue with its attributes and
/// policy, the rule with its pattern, enabled, and exactly one target, the queue; all tagged.
/// Without the switch, a queue and rule of the stack are removed. With it, a CloudTrail trail
/// must deliver IAM's events ([`check_iam_event_trails`]).
pub(super) fn plan_events(
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
    plan_queue(spec, obs, c, p);
    let targets = plan_rule(spec, obs, c, p);
    plan_targets(spec, obs, c, targets);
    Ok(())
}

/// The queue, with every attribute put back when one drifted.
fn plan_queue(spec: &Spec, obs: &Observed, c: &mut Creates, p: &mut Planner) {
    let queue_name = event_queue_name(&spec.stack);
    let attributes = event_queue_attributes(&spec.stack, &obs.account);
    let tags = base_tags(spec, EVENT_QUEUE_KEY);
    let resource = format!("sqs queue {queue_name}");
    let Some(q) = &obs.queue else {
        let rule_name = event_rule_name(&spec.stack);
        c.push(
            Sign::Create,
            &resource,
            format!(
                "IAM change events in {IAM_EVENTS_REGION}, kept {QUEUE_RETENTION_SECS} s, \
                 sent only by rule {rule_name}"
            ),
            Action::CreateEventQueue {
                key: EVENT_QUEUE_KEY.into(),
                name: queue_name,
                attributes,
                tags,
            },
        );
        return;
    };
    p.known.insert(EVENT_QUEUE_KEY.into(), q.url.clone());
    let drifted: Vec<&str> = attributes
        .iter()
        .filter(|(k, v)| !same_attribute(k, v, q.attributes.get(*k)))
        .map(|(k, _)| k.as_str())
        .collect();
    if !drifted.is_empty() {
        // All of them, not only the drifted: one call puts the queue back whole (and a
        // SetQueueAttributes that leaves the policy out must not be able to lose it).
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
    c.retag_with(&resource, &tags, &q.tags, |tags| Action::TagEventQueue {
        queue: EVENT_QUEUE_KEY.into(),
        tags,
    });
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

/// The rule: its pattern, enabled, its tags. Returns the targets it has now.
fn plan_rule<'o>(
    spec: &Spec,
    obs: &'o Observed,
    c: &mut Creates,
    p: &mut Planner,
) -> &'o [ObsTarget] {
    let rule_name = event_rule_name(&spec.stack);
    let pattern = iam_event_pattern();
    let tags = base_tags(spec, EVENT_RULE_KEY);
    let resource = format!("events rule {rule_name}");
    let put_rule = |tags: Tags| Action::PutEventRule {
        key: EVENT_RULE_KEY.into(),
        name: rule_name.clone(),
        pattern: pattern.clone(),
        tags,
    };
    let Some(r) = &obs.rule else {
        c.push(
            Sign::Create,
            &resource,
            format!(
                "the IAM calls that change who may log in, on the default bus of \
                 {IAM_EVENTS_REGION}"
            ),
            put_rule(tags),
        );
        return &[];
    };
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
    c.retag_with(&resource, &tags, &r.tags, |tags| Action::TagEventRule {
        rule: EVENT_RULE_KEY.into(),
        tags,
    });
    &r.targets
}

/// The rule's one target, the queue, taking events as they are; any other target removed.
fn plan_targets(spec: &Spec, obs: &Observed, c: &mut Creates, targets: &[ObsTarget]) {
    let rule_name = event_rule_name(&spec.stack);
    let queue_name = event_queue_name(&spec.stack);
    let queue_arn = event_queue_arn(&spec.stack, &obs.account);
    let resource = format!("events rule {rule_name}");
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
    trail_for_iam_events(trails)
        .map(|_| ())
        .map_err(|found| PlanError::NoIamEventTrail { found })
}

/// The trail that delivers IAM's events to EventBridge in `us-east-1` (its name), or what
/// the account has instead and why none of it does.
pub fn trail_for_iam_events(trails: &[ObsTrail]) -> Result<&str, String> {
    if let Some(t) = trails.iter().find(|t| t.delivers_iam_events()) {
        return Ok(&t.name);
    }
    Err(if trails.is_empty() {
        format!("The account has no trail that {IAM_EVENTS_REGION} sees.")
    } else {
        let each: Vec<String> = trails
            .iter()
            .map(|t| format!("{} ({})", t.name, why_not_delivering(t)))
            .collect();
        format!("Trails: {}.", each.join("; "))
    })
}

/// Why a trail does not deliver IAM's events to `us-east-1`.
fn why_not_delivering(t: &ObsTrail) -> String {
    if !t.reaches_iam_events_region() {
        if t.home_region == IAM_EVENTS_REGION {
            "without global service events".to_owned()
        } else {
            format!("single-region, in {}", t.home_region)
        }
    } else if t.logging != Some(true) {
        "logging is off".to_owned()
    } else {
        "its event selectors record no management write events".to_owned()
    }
}
