//! The alarm family on AWS: reading the audit log group's metric filters, the stack's alarms
//! and their SNS topic into [`Observed`], and the steps that create, repair and remove them.
//! Everything is in the stack's region; alarms are read by their exact names
//! ([`ALARM_KINDS`]), the topic by its ARN (SNS names it after the account).

use aws_sdk_cloudwatch::types::{ComparisonOperator, Dimension, Statistic, Tag as CwTag};
use aws_sdk_cloudwatchlogs::types::{MetricTransformation, StandardUnit};
use aws_sdk_sns::types::Tag as SnsTag;

use super::execute::{deleted, missing, Executor};
use super::{fail, Clients, Error};
use crate::deploy;
use crate::model::*;
use crate::names::{alarm_name, alert_topic_arn, audit_log_group, ALARM_KINDS};

/// Read the stack's metric filters (on its audit log group, when there is one), alarms and
/// topic into `obs`. Needs the account and the log group (read first).
pub(super) async fn observe(c: &Clients, stack: &str, obs: &mut Observed) -> Result<(), Error> {
    if obs.log_group.is_some() {
        obs.metric_filters = metric_filters(c, stack).await?;
    }
    obs.alarms = alarms(c, stack).await?;
    if !obs.account.is_empty() {
        obs.topic = topic(c, &alert_topic_arn(&c.region, &obs.account, stack)).await?;
    }
    Ok(())
}

/// The audit log group's metric filters named `gatehouse-<stack>-…`.
async fn metric_filters(c: &Clients, stack: &str) -> Result<Vec<MetricFilter>, Error> {
    let group = audit_log_group(stack);
    let what = format!("log group {group}: metric filters");
    let mut pages = c
        .logs
        .describe_metric_filters()
        .log_group_name(&group)
        .filter_name_prefix(alarm_name(stack, ""))
        .into_paginator()
        .send();
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                let err = fail(&what, &deploy::DESCRIBE_METRIC_FILTERS, e);
                // The group went away since it was read: no filters either.
                return if err.is_not_found() {
                    Ok(out)
                } else {
                    Err(err)
                };
            }
        };
        for f in page.metric_filters() {
            let t = f.metric_transformations().first();
            out.push(MetricFilter {
                log_group: group.clone(),
                name: f.filter_name().unwrap_or_default().to_owned(),
                pattern: f.filter_pattern().unwrap_or_default().to_owned(),
                namespace: t
                    .map(|t| t.metric_namespace().to_owned())
                    .unwrap_or_default(),
                metric: t.map(|t| t.metric_name().to_owned()).unwrap_or_default(),
                value: t.map(|t| t.metric_value().to_owned()).unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

/// The stack's alarms (by their exact names), with their tags.
async fn alarms(c: &Clients, stack: &str) -> Result<Vec<ObsAlarm>, Error> {
    let names: Vec<String> = ALARM_KINDS.iter().map(|k| alarm_name(stack, k)).collect();
    let what = format!("alarms {}", alarm_name(stack, "*"));
    let out = c
        .cloudwatch
        .describe_alarms()
        .set_alarm_names(Some(names))
        .send()
        .await
        .map_err(|e| fail(&what, &deploy::DESCRIBE_ALARMS, e))?;
    let mut found = Vec::new();
    for a in out.metric_alarms() {
        let (Some(name), Some(arn)) = (a.alarm_name(), a.alarm_arn()) else {
            continue;
        };
        let tags = match c
            .cloudwatch
            .list_tags_for_resource()
            .resource_arn(arn)
            .send()
            .await
        {
            Ok(out) => out
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                .collect(),
            Err(e) => {
                let err = fail(format!("alarm {name}"), &deploy::LIST_ALARM_TAGS, e);
                if err.is_not_found() {
                    continue;
                }
                return Err(err);
            }
        };
        let topic = a.alarm_actions().first().cloned().unwrap_or_default();
        let actions_ok = a.alarm_actions() == [topic.clone()] && a.ok_actions() == [topic.clone()];
        found.push(ObsAlarm {
            alarm: Alarm {
                name: name.to_owned(),
                description: a.alarm_description().unwrap_or_default().to_owned(),
                namespace: a.namespace().unwrap_or_default().to_owned(),
                metric: a.metric_name().unwrap_or_default().to_owned(),
                statistic: a
                    .statistic()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
                period_secs: a.period().unwrap_or_default(),
                evaluation_periods: a.evaluation_periods().unwrap_or_default(),
                threshold: a.threshold().unwrap_or_default(),
                comparison: a
                    .comparison_operator()
                    .map(|o| o.as_str().to_owned())
                    .unwrap_or_default(),
                treat_missing: a.treat_missing_data().unwrap_or_default().to_owned(),
                dimensions: a
                    .dimensions()
                    .iter()
                    .map(|d| {
                        (
                            d.name().unwrap_or_default().to_owned(),
                            DimensionValue::Value(d.value().unwrap_or_default().to_owned()),
                        )
                    })
                    .collect(),
                topic_arn: topic,
            },
            arn: arn.to_owned(),
            actions_ok,
            tags,
        });
    }
    Ok(found)
}

/// The topic at `arn`, if it exists: its tags and subscriptions.
async fn topic(c: &Clients, arn: &str) -> Result<Option<ObsTopic>, Error> {
    let what = format!("sns topic {arn}");
    if let Err(e) = c.sns.get_topic_attributes().topic_arn(arn).send().await {
        let err = fail(&what, &deploy::GET_TOPIC_ATTRIBUTES, e);
        return if err.is_not_found() {
            Ok(None)
        } else {
            Err(err)
        };
    }
    // A topic deleted between these calls is simply not there.
    let tags = match c
        .sns
        .list_tags_for_resource()
        .resource_arn(arn)
        .send()
        .await
    {
        Ok(out) => out
            .tags()
            .iter()
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect(),
        Err(e) => {
            let err = fail(&what, &deploy::LIST_TOPIC_TAGS, e);
            return if err.is_not_found() {
                Ok(None)
            } else {
                Err(err)
            };
        }
    };
    let mut subscriptions = Vec::new();
    let mut pages = c
        .sns
        .list_subscriptions_by_topic()
        .topic_arn(arn)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                let err = fail(&what, &deploy::LIST_SUBSCRIPTIONS_BY_TOPIC, e);
                return if err.is_not_found() {
                    Ok(None)
                } else {
                    Err(err)
                };
            }
        };
        for s in page.subscriptions() {
            subscriptions.push(ObsSubscription {
                arn: s.subscription_arn().unwrap_or_default().to_owned(),
                protocol: s.protocol().unwrap_or_default().to_owned(),
                endpoint: s.endpoint().unwrap_or_default().to_owned(),
            });
        }
    }
    Ok(Some(ObsTopic {
        arn: arn.to_owned(),
        tags,
        subscriptions,
    }))
}

fn cloudwatch_tags(tags: &Tags) -> Vec<CwTag> {
    tags.iter()
        .map(|(k, v)| CwTag::builder().key(k).value(v).build())
        .collect()
}

fn sns_tags(what: &str, op: &'static str, tags: &Tags) -> Result<Vec<SnsTag>, Error> {
    tags.iter()
        .map(|(k, v)| {
            SnsTag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(|_| missing(what, op, "a tag's key and value"))
        })
        .collect()
}

impl Executor<'_> {
    /// Runs `action` if it is one of the alarm family's; false when it is not.
    pub(super) async fn alarm_step(&mut self, what: &str, action: &Action) -> Result<bool, Error> {
        let c = self.clients;
        match action {
            Action::PutMetricFilter { filter } => {
                let transformation = MetricTransformation::builder()
                    .metric_name(&filter.metric)
                    .metric_namespace(&filter.namespace)
                    .metric_value(&filter.value)
                    .unit(StandardUnit::Count)
                    .build()
                    .map_err(|_| missing(what, "PutMetricFilter", "the metric's name"))?;
                c.logs
                    .put_metric_filter()
                    .log_group_name(&filter.log_group)
                    .filter_name(&filter.name)
                    .filter_pattern(&filter.pattern)
                    .metric_transformations(transformation)
                    .send()
                    .await
                    .map_err(|e| fail(what, &deploy::PUT_METRIC_FILTER, e))?;
            }
            Action::DeleteMetricFilter { log_group, name } => {
                let r = c
                    .logs
                    .delete_metric_filter()
                    .log_group_name(log_group)
                    .filter_name(name)
                    .send()
                    .await;
                deleted(what, &deploy::DELETE_METRIC_FILTER, r)?;
            }
            Action::CreateAlertTopic { name, tags } => {
                c.sns
                    .create_topic()
                    .name(name)
                    .set_tags(Some(sns_tags(what, "CreateTopic", tags)?))
                    .send()
                    .await
                    .map_err(|e| fail(what, &deploy::CREATE_TOPIC, e))?;
            }
            Action::TagAlertTopic { arn, tags } => {
                c.sns
                    .tag_resource()
                    .resource_arn(arn)
                    .set_tags(Some(sns_tags(what, "TagResource", tags)?))
                    .send()
                    .await
                    .map_err(|e| fail(what, &deploy::TAG_TOPIC, e))?;
            }
            Action::SubscribeEmail { topic_arn, email } => {
                c.sns
                    .subscribe()
                    .topic_arn(topic_arn)
                    .protocol("email")
                    .endpoint(email)
                    .send()
                    .await
                    .map_err(|e| fail(what, &deploy::SUBSCRIBE, e))?;
            }
            Action::DeleteAlertTopic { arn } => {
                let r = c.sns.delete_topic().topic_arn(arn).send().await;
                deleted(what, &deploy::DELETE_TOPIC, r)?;
            }
            Action::PutAlarm { alarm, tags } => self.put_alarm(what, alarm, tags).await?,
            Action::TagAlarm { arn, tags } => {
                c.cloudwatch
                    .tag_resource()
                    .resource_arn(arn)
                    .set_tags(Some(cloudwatch_tags(tags)))
                    .send()
                    .await
                    .map_err(|e| fail(what, &deploy::TAG_ALARM, e))?;
            }
            Action::DeleteAlarms { names } => {
                let r = c
                    .cloudwatch
                    .delete_alarms()
                    .set_alarm_names(Some(names.clone()))
                    .send()
                    .await;
                deleted(what, &deploy::DELETE_ALARMS, r)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// PutMetricAlarm: the whole alarm (it replaces one of the same name), sending to the
    /// topic when it goes off and when it is OK again; tagged when it is new.
    async fn put_alarm(&self, what: &str, alarm: &Alarm, tags: &Tags) -> Result<(), Error> {
        let mut dimensions = Vec::new();
        for (name, value) in &alarm.dimensions {
            let value = match value {
                DimensionValue::Value(v) => v.clone(),
                DimensionValue::ElbOf(key) => elb_dimension(&self.id(key)?),
            };
            dimensions.push(Dimension::builder().name(name).value(value).build());
        }
        self.clients
            .cloudwatch
            .put_metric_alarm()
            .alarm_name(&alarm.name)
            .alarm_description(&alarm.description)
            .namespace(&alarm.namespace)
            .metric_name(&alarm.metric)
            .statistic(Statistic::from(alarm.statistic.as_str()))
            .period(alarm.period_secs)
            .evaluation_periods(alarm.evaluation_periods)
            .threshold(alarm.threshold)
            .comparison_operator(ComparisonOperator::from(alarm.comparison.as_str()))
            .treat_missing_data(&alarm.treat_missing)
            .set_dimensions(Some(dimensions))
            .alarm_actions(&alarm.topic_arn)
            .ok_actions(&alarm.topic_arn)
            .set_tags(Some(cloudwatch_tags(tags)))
            .send()
            .await
            .map_err(|e| fail(what, &deploy::PUT_METRIC_ALARM, e))?;
        Ok(())
    }
}
