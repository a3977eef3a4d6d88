//! The alarm family: metric filters on the audit log group that count what an operator must
//! hear about (failed logins, refusals, key pushes and their failures, a stale directory),
//! CloudWatch alarms on them and on the balancer's healthy replicas, and the SNS topic they
//! send to, with the spec's `[alerts] emails` subscribed. Planned last: the filters need the
//! log group, the replicas' alarm names the balancer and its target group.
//!
//! The patterns name the daemon's audit events (`gatehouse-ssh`'s `audit::Event`); the e2e
//! tests run them over the lines the daemon writes, since moto stores filters but never
//! evaluates them.

use super::{base_tags, check_owned, tagged_ours, Creates, PlanError, Planner};
use crate::model::*;
use crate::names::{
    alarm_name, alert_topic_arn, alert_topic_name, audit_log_group, metric_namespace, BALANCER_KEY,
    DIRECTORY_STALE, FAILED_LOGINS, HEALTHY_REPLICAS, KEY_PUSHES, KEY_PUSH_FAILURES, REFUSALS,
    REFUSALS_SUMMARIZED, TARGET_GROUP_KEY,
};
use crate::spec::Spec;

/// The alarms on audit counts look at five minutes at a time.
pub const COUNT_PERIOD_SECS: i32 = 300;
/// The healthy-replicas alarm goes off after this many minutes with fewer healthy replicas
/// than the spec asks for: longer than Auto Scaling takes to replace a failed one.
pub const HEALTHY_MINUTES: i32 = 10;
/// The logical key of the topic (its `gatehouse:resource` tag); alarms are `alarm/<kind>`.
pub const TOPIC_KEY: &str = "topic/alerts";

/// The metric filters of a stack's audit log group: (filter, metric, pattern, value).
const FILTERS: &[(&str, &str, &str, &str)] = &[
    (
        FAILED_LOGINS,
        "FailedLogins",
        r#"{ $.event = "auth.failure" }"#,
        "1",
    ),
    (
        REFUSALS,
        "Refusals",
        r#"{ $.event = "connection.refused" }"#,
        "1",
    ),
    // A summary stands for the refusals of its interval that had no line of their own.
    (
        REFUSALS_SUMMARIZED,
        "Refusals",
        r#"{ $.event = "connection.refused.summary" }"#,
        "$.summarized",
    ),
    (
        KEY_PUSHES,
        "KeyPushes",
        r#"{ $.event = "target.key_pushed" }"#,
        "1",
    ),
    (
        KEY_PUSH_FAILURES,
        "KeyPushFailures",
        r#"{ ($.event = "tunnel.deny") && ($.reason_code = "key_push_failed") }"#,
        "1",
    ),
    (
        DIRECTORY_STALE,
        "DirectoryStale",
        r#"{ $.event = "directory.stale" }"#,
        "1",
    ),
];

/// The metric filters the stack puts on its audit log group.
pub fn desired_filters(stack: &str) -> Vec<MetricFilter> {
    FILTERS
        .iter()
        .map(|(what, metric, pattern, value)| MetricFilter {
            log_group: audit_log_group(stack),
            name: alarm_name(stack, what),
            pattern: (*pattern).to_owned(),
            namespace: metric_namespace(stack),
            metric: (*metric).to_owned(),
            value: (*value).to_owned(),
        })
        .collect()
}

/// An alarm on one of the stack's audit counts: `metric` summed over five minutes at least
/// `threshold`; no lines, no alarm.
fn count_alarm(spec: &Spec, topic: &str, kind: &str, metric: &str, threshold: u32) -> Alarm {
    let stack = &spec.stack;
    let description = match kind {
        FAILED_LOGINS => format!(
            "{threshold} or more failed login attempts on the bastions of stack {stack} in 5 \
             minutes. Who and from where: `gatehouse audit --since 1h` on a bastion, or \
             CloudWatch Logs Insights on {}.",
            audit_log_group(stack)
        ),
        REFUSALS => format!(
            "{threshold} or more connections refused before authentication on stack {stack} in \
             5 minutes: a flood or a scan. `gatehouse audit --refused --since 1h` names the \
             busiest sources."
        ),
        KEY_PUSH_FAILURES => format!(
            "A login key could not be pushed to a host (EC2 Instance Connect) on stack {stack}: \
             users cannot reach it. The tunnel.deny lines with key_push_failed say which host \
             and why."
        ),
        _ => format!(
            "The directory of a bastion of stack {stack} is stale: it could not list IAM or EC2 \
             for longer than max_staleness, and refuses new logins (open sessions stay). Its \
             journal says which call fails."
        ),
    };
    Alarm {
        name: alarm_name(stack, kind),
        description,
        namespace: metric_namespace(stack),
        metric: metric.to_owned(),
        statistic: "Sum".into(),
        period_secs: COUNT_PERIOD_SECS,
        evaluation_periods: 1,
        threshold: f64::from(threshold),
        comparison: "GreaterThanOrEqualToThreshold".into(),
        treat_missing: "notBreaching".into(),
        dimensions: Vec::new(),
        topic_arn: topic.to_owned(),
    }
}

/// The alarm on the balancer's healthy replicas (a scaled-out stack): fewer than `replicas`
/// healthy for [`HEALTHY_MINUTES`] minutes in a row; no data counts as none healthy.
fn healthy_alarm(
    spec: &Spec,
    topic: &str,
    balancer: DimensionValue,
    group: DimensionValue,
) -> Alarm {
    let (stack, replicas) = (&spec.stack, spec.bastion.replicas);
    Alarm {
        name: alarm_name(stack, HEALTHY_REPLICAS),
        description: format!(
            "Fewer than {replicas} healthy bastions behind the balancer of stack {stack} for \
             {HEALTHY_MINUTES} minutes: Auto Scaling has not replaced a failed one. Its \
             activity history and the target group's health say why."
        ),
        namespace: "AWS/NetworkELB".into(),
        metric: "HealthyHostCount".into(),
        statistic: "Minimum".into(),
        period_secs: 60,
        evaluation_periods: HEALTHY_MINUTES,
        threshold: f64::from(replicas),
        comparison: "LessThanThreshold".into(),
        treat_missing: "breaching".into(),
        dimensions: vec![
            ("LoadBalancer".into(), balancer),
            ("TargetGroup".into(), group),
        ],
        topic_arn: topic.to_owned(),
    }
}

/// The dimension value of an ELB resource of the stack: its observed ARN when it stays, else
/// the key it is created under in this apply.
fn elb_value(arn: Option<&str>, doomed: Option<&str>, key: &str) -> DimensionValue {
    match arn {
        Some(arn) if doomed != Some(arn) => DimensionValue::Value(elb_dimension(arn)),
        _ => DimensionValue::ElbOf(key.to_owned()),
    }
}

/// The alarms the spec asks for, sending to the stack's topic in `account`.
pub(super) fn desired_alarms(
    spec: &Spec,
    account: &str,
    obs: &Observed,
    p: &Planner,
) -> Vec<Alarm> {
    let topic = alert_topic_arn(&spec.region, account, &spec.stack);
    let alerts = &spec.alerts;
    let mut alarms = vec![
        count_alarm(
            spec,
            &topic,
            FAILED_LOGINS,
            "FailedLogins",
            alerts.failed_logins,
        ),
        count_alarm(spec, &topic, REFUSALS, "Refusals", alerts.refusals),
        count_alarm(spec, &topic, KEY_PUSH_FAILURES, "KeyPushFailures", 1),
        count_alarm(spec, &topic, DIRECTORY_STALE, "DirectoryStale", 1),
    ];
    if spec.bastion.scaled_out() {
        let balancer = elb_value(
            obs.balancer.as_ref().map(|b| b.arn.as_str()),
            p.doomed.balancer.as_ref().map(|b| b.arn.as_str()),
            BALANCER_KEY,
        );
        let group = elb_value(
            obs.target_group.as_ref().map(|t| t.arn.as_str()),
            p.doomed.target_group.as_ref().map(|t| t.arn.as_str()),
            TARGET_GROUP_KEY,
        );
        alarms.push(healthy_alarm(spec, &topic, balancer, group));
    }
    alarms
}

/// The topic and the alarms are found by name: refuse ones that are not the stack's.
pub(super) fn check_ownership(spec: &Spec, obs: &Observed) -> Result<(), PlanError> {
    if let Some(t) = &obs.topic {
        check_owned(spec, "SNS topic", &t.arn, tagged_ours(spec, &t.tags))?;
    }
    for a in &obs.alarms {
        check_owned(
            spec,
            "CloudWatch alarm",
            &a.alarm.name,
            tagged_ours(spec, &a.tags),
        )?;
    }
    Ok(())
}

/// The family's steps: the filters, the topic and its email subscriptions, the alarms.
/// Filters and alarms the spec no longer asks for are removed (with the other removals).
pub(super) fn plan_alarms(
    spec: &Spec,
    obs: &Observed,
    c: &mut Creates,
    p: &mut Planner,
) -> Result<(), PlanError> {
    if obs.account.is_empty() {
        return Err(PlanError::Immutable {
            resource: "alarms".into(),
            message: "the AWS account is not known (STS GetCallerIdentity), so the alarm topic \
                      has no ARN"
                .into(),
        });
    }
    plan_filters(spec, obs, c, p);
    plan_topic(spec, obs, c);
    let desired = desired_alarms(spec, &obs.account, obs, p);
    for alarm in &desired {
        plan_alarm(spec, obs, c, alarm);
    }
    p.doomed.alarms.extend(
        obs.alarms
            .iter()
            .filter(|a| !desired.iter().any(|d| d.name == a.alarm.name))
            .cloned(),
    );
    Ok(())
}

fn plan_filters(spec: &Spec, obs: &Observed, c: &mut Creates, p: &mut Planner) {
    let desired = desired_filters(&spec.stack);
    for f in &desired {
        let seen = obs.metric_filters.iter().find(|o| o.name == f.name);
        if seen == Some(f) {
            continue;
        }
        let detail = match seen {
            None => format!("count {} in {}: {}", f.metric, f.namespace, f.pattern),
            Some(_) => format!("put back: {} counts {}", f.pattern, f.value),
        };
        let sign = if seen.is_none() {
            Sign::Create
        } else {
            Sign::Change
        };
        c.push(
            sign,
            format!("metric filter {}", f.name),
            detail,
            Action::PutMetricFilter { filter: f.clone() },
        );
    }
    p.doomed.metric_filters.extend(
        obs.metric_filters
            .iter()
            .filter(|o| !desired.iter().any(|d| d.name == o.name))
            .cloned(),
    );
}

fn plan_topic(spec: &Spec, obs: &Observed, c: &mut Creates) {
    let name = alert_topic_name(&spec.stack);
    let arn = alert_topic_arn(&spec.region, &obs.account, &spec.stack);
    let tags = base_tags(spec, TOPIC_KEY);
    let resource = format!("sns topic {name}");
    let subscribed: Vec<&str> = match &obs.topic {
        None => {
            c.push(
                Sign::Create,
                &resource,
                "where the stack's alarms send",
                Action::CreateAlertTopic {
                    name: name.clone(),
                    tags,
                },
            );
            Vec::new()
        }
        Some(t) => {
            c.retag_with(&resource, &tags, &t.tags, |tags| Action::TagAlertTopic {
                arn: t.arn.clone(),
                tags,
            });
            t.subscriptions
                .iter()
                .filter(|s| s.protocol == "email")
                .map(|s| s.endpoint.as_str())
                .collect()
        }
    };
    for email in spec
        .alerts
        .emails
        .iter()
        .filter(|e| !subscribed.contains(&e.as_str()))
    {
        c.push(
            Sign::Create,
            format!("{resource}/{email}"),
            "email subscription (AWS mails a link to confirm)",
            Action::SubscribeEmail {
                topic_arn: arn.clone(),
                email: email.clone(),
            },
        );
    }
}

fn plan_alarm(spec: &Spec, obs: &Observed, c: &mut Creates, alarm: &Alarm) {
    let kind = alarm.name.trim_start_matches(&alarm_name(&spec.stack, ""));
    let tags = base_tags(spec, &format!("alarm/{kind}"));
    let resource = format!("alarm {}", alarm.name);
    let put = |tags: Tags| Action::PutAlarm {
        alarm: alarm.clone(),
        tags,
    };
    match obs.alarms.iter().find(|a| a.alarm.name == alarm.name) {
        None => c.push(Sign::Create, &resource, alarm_summary(alarm), put(tags)),
        Some(seen) => {
            let drift = alarm_drift(alarm, seen);
            if !drift.is_empty() {
                let detail = format!("put back: {}", drift.join(", "));
                c.push(Sign::Change, &resource, detail, put(tags.clone()));
            }
            c.retag_with(&resource, &tags, &seen.tags, |tags| Action::TagAlarm {
                arn: seen.arn.clone(),
                tags,
            });
        }
    }
}

/// An alarm in words: `FailedLogins Sum >= 100 per 300 s`.
fn alarm_summary(a: &Alarm) -> String {
    let op = match a.comparison.as_str() {
        "GreaterThanOrEqualToThreshold" => ">=",
        "LessThanThreshold" => "<",
        other => other,
    };
    format!(
        "{} {} {op} {} per {} s, {} period(s)",
        a.metric, a.statistic, a.threshold, a.period_secs, a.evaluation_periods
    )
}

/// What differs between the desired alarm and the one CloudWatch has (a dimension still to be
/// created counts as differing).
fn alarm_drift(want: &Alarm, seen: &ObsAlarm) -> Vec<&'static str> {
    let have = &seen.alarm;
    let mut drift = Vec::new();
    if want.metric != have.metric || want.namespace != have.namespace {
        drift.push("metric");
    }
    if want.statistic != have.statistic
        || want.period_secs != have.period_secs
        || want.evaluation_periods != have.evaluation_periods
        || want.threshold != have.threshold
        || want.comparison != have.comparison
    {
        drift.push("threshold");
    }
    if want.treat_missing != have.treat_missing {
        drift.push("missing data");
    }
    if want.dimensions != have.dimensions {
        drift.push("dimensions");
    }
    if want.description != have.description {
        drift.push("description");
    }
    if want.topic_arn != have.topic_arn || !seen.actions_ok {
        drift.push("actions");
    }
    drift
}

/// Removal of doomed alarms (first: nothing sends to a topic about to go), filters and topic.
pub(super) fn removal_steps(doomed: &Observed) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut push = |resource: String, detail: String, action: Action| {
        steps.push(Step {
            sign: Sign::Delete,
            resource,
            detail,
            action,
        })
    };
    if !doomed.alarms.is_empty() {
        let names: Vec<String> = doomed.alarms.iter().map(|a| a.alarm.name.clone()).collect();
        push(
            format!("alarms {}", names.join(", ")),
            String::new(),
            Action::DeleteAlarms { names },
        );
    }
    for f in &doomed.metric_filters {
        push(
            format!("metric filter {}", f.name),
            format!("on {}", f.log_group),
            Action::DeleteMetricFilter {
                log_group: f.log_group.clone(),
                name: f.name.clone(),
            },
        );
    }
    if let Some(t) = &doomed.topic {
        push(
            format!("sns topic {}", t.arn),
            format!("and its {} subscription(s)", t.subscriptions.len()),
            Action::DeleteAlertTopic { arn: t.arn.clone() },
        );
    }
    steps
}

/// Email subscriptions the spec does not list: gatehouse-vpc leaves them (SNS grants
/// Unsubscribe on every subscription of the account or none, and the deployer does not get
/// that), and says how to remove one.
pub(super) fn kept_subscriptions(spec: &Spec, obs: &Observed) -> Vec<Kept> {
    let Some(t) = &obs.topic else {
        return Vec::new();
    };
    t.subscriptions
        .iter()
        // Other protocols (a chat or paging integration added by hand) are the operator's.
        .filter(|s| s.protocol == "email" && !spec.alerts.emails.contains(&s.endpoint))
        .map(|s| Kept {
            resource: format!("subscription {} {}", s.protocol, s.endpoint),
            detail: if s.arn.starts_with("arn:") {
                format!(
                    "not in [alerts] emails; left alone (`aws sns unsubscribe \
                     --subscription-arn {}` removes it)",
                    s.arn
                )
            } else {
                "not in [alerts] emails; unconfirmed, AWS removes it after 3 days".to_owned()
            },
        })
        .collect()
}
