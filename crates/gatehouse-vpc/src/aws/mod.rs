//! The AWS side: SDK clients, reading a stack's state into [`Observed`], and the executor.
//! This is the only module that talks to AWS.

mod alarms;
pub mod execute;
mod network;
pub mod observe;
mod replicas;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use gatehouse_aws::events::IAM_EVENTS_REGION;
use gatehouse_aws::AwsError;

pub use execute::Executor;
pub use network::observe_network;
pub use observe::{observe, observe_for};

/// Errors from talking to AWS, each naming the resource it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An AWS API call failed; the daemon's formatter ([`AwsError`]) says which action, AWS's
    /// code and message, and what to do.
    #[error("{resource}: {error}")]
    Aws { resource: String, error: AwsError },
    /// The daemon would refuse the config written for the bastion (checked before launch).
    #[error("{resource}: not launched: {problems}")]
    DaemonConfig { resource: String, problems: String },
    /// HeadBucket on the stack's bucket name, with this account as the expected owner,
    /// answered 403.
    #[error(
        "{resource}: HeadBucket answered 403 Forbidden: either the IAM identity this runs as \
         lacks the action {action} on it, or the name belongs to a bucket of another AWS \
         account (bucket names are global: choose another stack name)"
    )]
    BucketForbidden {
        resource: String,
        action: &'static str,
    },
    /// The local gatehouse binary could not be read, or changed since the plan.
    #[error("{resource}: {problem}")]
    Binary { resource: String, problem: String },
    /// A call that answers per entry (EventBridge's PutTargets, RemoveTargets) failed for some.
    #[error("{resource}: {op} failed for {detail}")]
    Entries {
        resource: String,
        op: &'static str,
        detail: String,
    },
    /// A NAT gateway AWS could not create.
    #[error("{resource}: the NAT gateway went to state failed (its FailureMessage in `aws ec2 describe-nat-gateways` says why); run apply again to replace it")]
    NatFailed { resource: String },
    /// AWS answered without a field that must be there.
    #[error("{resource}: {op} answered without {field}")]
    Missing {
        resource: String,
        op: &'static str,
        field: &'static str,
    },
    /// A step referred to a resource that neither exists nor was created earlier.
    #[error("{0}: not known (no id observed or created); re-run plan")]
    Unresolved(String),
    /// Waiting for a resource to reach a state took too long.
    #[error("{resource}: still not {state} after {secs}s")]
    Timeout {
        resource: String,
        state: &'static str,
        secs: u64,
    },
    /// Apply ran its rounds and AWS still differs from the spec.
    #[error("stack {stack}: still {remaining} step(s) after {rounds} rounds:\n{plan}")]
    NotConverged {
        stack: String,
        remaining: usize,
        rounds: usize,
        plan: String,
    },
    /// A plan could not be made (see [`crate::plan::PlanError`]).
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
}

impl Error {
    /// The AWS error code, when there is one (`DependencyViolation`, `NoSuchEntity`, ...).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Aws { error, .. } => error.code(),
            _ => None,
        }
    }

    /// True for "it is already gone" answers, which a removal treats as success.
    pub fn is_not_found(&self) -> bool {
        self.code().is_some_and(|c| {
            c.ends_with(".NotFound")
                // (SNS's bare `NotFound` too.)
                || c.ends_with("NotFound")
                || c == "NoSuchEntity"
                || c == "ParameterNotFound"
                || c == "InvalidAllocationID.NotFound"
                || c == "NoSuchBucket"
                || c == "NoSuchKey"
                // EventBridge, and SQS in its JSON and its query-compatible spelling.
                || c == "ResourceNotFoundException"
                || c == "QueueDoesNotExist"
                || c == "AWS.SimpleQueueService.NonExistentQueue"
        })
    }
}

/// Turn an SDK error into [`Error::Aws`] for `resource`, formatted by gatehouse-aws (one
/// formatter of AWS errors for the whole product).
pub(crate) fn fail<E>(
    resource: impl Into<String>,
    call: &'static crate::deploy::Call,
    e: SdkError<E, HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    Error::Aws {
        resource: resource.into(),
        error: AwsError::call_needing(call.service, call.operation, call.action, &e),
    }
}

/// The SDK clients, built from one shared config.
#[derive(Clone, Debug)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub iam: aws_sdk_iam::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub s3: aws_sdk_s3::Client,
    pub sts: aws_sdk_sts::Client,
    /// SQS, EventBridge and CloudTrail in `us-east-1`, where IAM's change events arrive
    /// (`gatehouse_aws::events::IAM_EVENTS_REGION`), whatever the stack's region.
    pub sqs: aws_sdk_sqs::Client,
    pub events: aws_sdk_eventbridge::Client,
    pub cloudtrail: aws_sdk_cloudtrail::Client,
    /// CloudWatch Logs in the stack's region: the audit log group.
    pub logs: aws_sdk_cloudwatchlogs::Client,
    /// CloudWatch and SNS in the stack's region: the alarms and the topic they send to.
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub sns: aws_sdk_sns::Client,
    /// Elastic Load Balancing v2 and Auto Scaling: the replicas of a scaled-out stack.
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub region: String,
}

impl Clients {
    /// Clients for `region`; `endpoint_url` (e.g. moto's) overrides every service endpoint.
    /// Without it, the SDK's own resolution applies (including `AWS_ENDPOINT_URL`).
    pub async fn new(region: &str, endpoint_url: Option<&str>) -> Clients {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()));
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let config = loader.load().await;
        // An endpoint override (moto, a local S3) serves buckets by path, not by host name.
        let s3 = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(endpoint_url.is_some())
            .build();
        // The same credentials and endpoint override, in IAM's events region.
        let events_region = aws_config::Region::new(IAM_EVENTS_REGION);
        let sqs = aws_sdk_sqs::config::Builder::from(&config)
            .region(events_region.clone())
            .build();
        let events = aws_sdk_eventbridge::config::Builder::from(&config)
            .region(events_region.clone())
            .build();
        let cloudtrail = aws_sdk_cloudtrail::config::Builder::from(&config)
            .region(events_region)
            .build();
        Clients {
            ec2: aws_sdk_ec2::Client::new(&config),
            iam: aws_sdk_iam::Client::new(&config),
            ssm: aws_sdk_ssm::Client::new(&config),
            s3: aws_sdk_s3::Client::from_conf(s3),
            sts: aws_sdk_sts::Client::new(&config),
            sqs: aws_sdk_sqs::Client::from_conf(sqs),
            events: aws_sdk_eventbridge::Client::from_conf(events),
            cloudtrail: aws_sdk_cloudtrail::Client::from_conf(cloudtrail),
            logs: aws_sdk_cloudwatchlogs::Client::new(&config),
            cloudwatch: aws_sdk_cloudwatch::Client::new(&config),
            sns: aws_sdk_sns::Client::new(&config),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(&config),
            autoscaling: aws_sdk_autoscaling::Client::new(&config),
            region: region.to_string(),
        }
    }
}

/// Rounds of observe -> plan -> execute before `apply` gives up (AWS is eventually
/// consistent: a describe right after a create may miss it for a moment).
pub const APPLY_ROUNDS: usize = 3;

/// Make AWS match `spec`. Returns the number of steps run (0: nothing to do).
pub async fn apply(
    c: &Clients,
    spec: &crate::spec::Spec,
    waits: execute::Waits,
    progress: &mut dyn FnMut(&crate::model::Step),
) -> Result<usize, Error> {
    let mut total = 0;
    for _ in 0..APPLY_ROUNDS {
        let obs = observe_for(c, spec).await?;
        let plan = crate::plan::plan_apply(spec, &obs)?;
        if plan.is_empty() {
            return Ok(total);
        }
        total += plan.steps.len();
        Executor::new(c, Some(spec), waits)
            .run(&plan, progress)
            .await?;
    }
    let obs = observe_for(c, spec).await?;
    let plan = crate::plan::plan_apply(spec, &obs)?;
    if plan.is_empty() {
        Ok(total)
    } else {
        Err(Error::NotConverged {
            stack: spec.stack.clone(),
            remaining: plan.steps.len(),
            rounds: APPLY_ROUNDS,
            plan: plan.render(),
        })
    }
}

/// What `destroy` did: the steps it ran, and what it left on purpose (the audit log group,
/// unless asked to delete it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Destroyed {
    pub steps: usize,
    pub kept: Vec<crate::model::Kept>,
}

/// Remove every resource tagged with the stack (and nothing else); the audit log group only
/// with [`AuditLog::Delete`](crate::plan::AuditLog::Delete).
pub async fn destroy(
    c: &Clients,
    stack: &str,
    audit: crate::plan::AuditLog,
    waits: execute::Waits,
    progress: &mut dyn FnMut(&crate::model::Step),
) -> Result<Destroyed, Error> {
    let mut total = 0;
    for _ in 0..APPLY_ROUNDS {
        let obs = observe(c, stack).await?;
        let plan = crate::plan::plan_destroy(stack, &obs, audit);
        if plan.is_empty() {
            return Ok(Destroyed {
                steps: total,
                kept: plan.kept,
            });
        }
        total += plan.steps.len();
        Executor::new(c, None, waits).run(&plan, progress).await?;
    }
    let obs = observe(c, stack).await?;
    let plan = crate::plan::plan_destroy(stack, &obs, audit);
    if plan.is_empty() {
        Ok(Destroyed {
            steps: total,
            kept: plan.kept,
        })
    } else {
        Err(Error::NotConverged {
            stack: stack.to_string(),
            remaining: plan.steps.len(),
            rounds: APPLY_ROUNDS,
            plan: plan.render(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::error::ErrorMetadata;
    use aws_sdk_ec2::operation::create_vpc::CreateVpcError;
    use aws_sdk_iam::operation::create_role::CreateRoleError;

    fn response(status: u16, body: &str) -> HttpResponse {
        HttpResponse::new(status.try_into().expect("status"), body.to_owned().into())
    }

    #[test]
    fn aws_errors_use_the_daemons_formatter_with_the_service() {
        let meta = ErrorMetadata::builder()
            .code("UnauthorizedOperation")
            .message("You are not authorized to perform this operation.")
            .build();
        let body = "<?xml version=\"1.0\"?><Response><Errors><Error>\
            <Code>UnauthorizedOperation</Code></Error></Errors></Response>";
        let e = fail(
            "vpc",
            &crate::deploy::CREATE_VPC,
            SdkError::service_error(CreateVpcError::generic(meta), response(403, body)),
        );
        assert_eq!(e.code(), Some("UnauthorizedOperation"));
        let text = e.to_string();
        assert!(
            text.starts_with(
                "vpc: AWS call ec2:CreateVpc failed: UnauthorizedOperation: You are not \
                 authorized to perform this operation. (the IAM identity this runs as lacks the \
                 action ec2:CreateVpc"
            ),
            "{text}"
        );
        assert!(
            !text.contains("SdkBody") && !text.contains("<?xml"),
            "{text}"
        );

        // S3's HeadBucket is checked as s3:ListBucket: the message names the action to grant.
        let e = fail(
            "bucket gatehouse-lab-123456789012",
            &crate::deploy::HEAD_BUCKET,
            SdkError::service_error(
                aws_sdk_s3::operation::head_bucket::HeadBucketError::generic(
                    ErrorMetadata::builder()
                        .code("AccessDenied")
                        .message("Access Denied")
                        .build(),
                ),
                response(403, ""),
            ),
        );
        let text = e.to_string();
        assert!(
            text.contains("AWS call s3:HeadBucket failed: AccessDenied: Access Denied (the IAM identity this runs as lacks the action s3:ListBucket"),
            "{text}"
        );

        let e = fail(
            "role",
            &crate::deploy::CREATE_ROLE,
            SdkError::service_error(
                CreateRoleError::generic(ErrorMetadata::builder().build()),
                response(500, "<html>Internal Server Error</html>"),
            ),
        );
        let text = e.to_string();
        assert!(
            text.starts_with(
                "role: AWS call iam:CreateRole failed: the endpoint answered HTTP 500"
            ),
            "{text}"
        );
    }
}
