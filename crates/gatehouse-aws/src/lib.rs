//! AWS as gatehouse's source of truth: who may log in (IAM users with Active SSH public keys
//! and gatehouse groups), where they may go (running EC2 instances tagged with groups), and the
//! bastion's host key (an SSM SecureString shared by every replica).
//!
//! This is the only crate that talks to AWS. Its shape:
//! - fetchers ([`iam`], [`ec2`]) make the calls and return plain records;
//! - [`build`] turns records into identities and hosts (pure, unit-tested);
//! - [`refresh`] runs one refresh or the background loop, and publishes a
//!   [`gatehouse_directory::Snapshot`] only after a complete, successful listing;
//! - [`instance_connect`] pushes a user's key to an instance (EC2 Instance Connect);
//! - [`persist`] keeps the last good listing on disk, so a restart serves at once, and
//!   [`shared`] in S3 for the fleet, so a new replica does;
//! - [`events`] reads IAM's change events; [`ship`] ships the audit file to CloudWatch Logs;
//! - [`hostkey`] reads or creates the SSM host key; [`names`] maps IAM names to login names;
//! - [`sts_proof`] signs and checks a proof of an AWS identity (a signed
//!   `sts:GetCallerIdentity` bound to the bastion) and replays it to STS;
//! - [`actions`] declares every AWS action the daemon needs, per mode: the fetchers count
//!   their calls with it, and gatehouse-vpc builds the bastion role from it.
//!
//! Nothing an AWS answer contains can make this crate panic: failures are [`AwsError`]s, and
//! unusable items are skipped with a warning naming the user, key or instance.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod actions;
pub mod build;
mod calls;
pub mod ec2;
mod error;
pub mod events;
pub mod hostkey;
pub mod iam;
pub mod instance_connect;
pub use gatehouse_directory::names;
mod pace;
pub mod persist;
pub mod refresh;
pub mod shared;
pub mod ship;
pub mod sts_proof;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use gatehouse_config::AwsConfig;

pub use calls::Calls;
pub use error::AwsError;
pub use refresh::{AwsDirectory, Listing};

/// Bound on opening a connection to an AWS endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on one attempt of one call.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one call with its retries.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per call (the SDK's standard retry: exponential backoff with jitter, and
/// throttling answers retried after a pause).
const ATTEMPTS: u32 = 3;

/// The AWS clients gatehouse uses, built from the SDK's default credential chain.
#[derive(Debug, Clone)]
pub struct Clients {
    /// IAM.
    pub iam: aws_sdk_iam::Client,
    /// EC2.
    pub ec2: aws_sdk_ec2::Client,
    /// SSM.
    pub ssm: aws_sdk_ssm::Client,
    /// EC2 Instance Connect, with shorter timeouts: a login waits on it.
    pub instance_connect: aws_sdk_ec2instanceconnect::Client,
    /// SQS in the event queue's region, when `aws.events_queue_url` is set.
    pub sqs: Option<aws_sdk_sqs::Client>,
    /// S3, when `aws.shared_snapshot` is set, with short timeouts: a start may wait on it.
    pub s3: Option<aws_sdk_s3::Client>,
    /// CloudWatch Logs, when `aws.audit_log_group` is set.
    pub logs: Option<aws_sdk_cloudwatchlogs::Client>,
}

impl Clients {
    /// Clients for `settings`: region and endpoint from the config when given, otherwise as
    /// the SDK finds them (environment, shared config, instance metadata); credentials always
    /// from the default chain (the instance profile on a bastion).
    pub async fn new(settings: &AwsConfig) -> Clients {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .operation_timeout(CALL_TIMEOUT)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(ATTEMPTS));
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &settings.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        let sqs = settings.events_queue_url.as_deref().map(|url| {
            // A receive is a long poll: its attempt lasts the poll's wait and then some.
            let mut config = aws_sdk_sqs::config::Builder::from(&sdk).timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(events::WAIT + ATTEMPT_TIMEOUT)
                    .operation_timeout(events::WAIT + CALL_TIMEOUT)
                    .build(),
            );
            if let Some(region) = queue_region(url) {
                config = config.region(Region::new(region));
            }
            aws_sdk_sqs::Client::from_conf(config.build())
        });
        let s3 = settings.shared_snapshot.as_ref().map(|_| {
            aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&sdk)
                    // An endpoint override (moto, a local S3) serves buckets by path.
                    .force_path_style(settings.endpoint_url.is_some())
                    .timeout_config(
                        TimeoutConfig::builder()
                            .connect_timeout(CONNECT_TIMEOUT)
                            .operation_attempt_timeout(shared::ATTEMPT_TIMEOUT)
                            .operation_timeout(shared::CALL_TIMEOUT)
                            .build(),
                    )
                    .build(),
            )
        });
        let logs = settings
            .audit_log_group
            .as_ref()
            .map(|_| aws_sdk_cloudwatchlogs::Client::new(&sdk));
        Clients {
            sqs,
            s3,
            logs,
            iam: aws_sdk_iam::Client::new(&sdk),
            ec2: aws_sdk_ec2::Client::new(&sdk),
            ssm: aws_sdk_ssm::Client::new(&sdk),
            instance_connect: aws_sdk_ec2instanceconnect::Client::from_conf(
                aws_sdk_ec2instanceconnect::config::Builder::from(&sdk)
                    .timeout_config(
                        TimeoutConfig::builder()
                            .connect_timeout(CONNECT_TIMEOUT)
                            .operation_attempt_timeout(instance_connect::ATTEMPT_TIMEOUT)
                            .operation_timeout(instance_connect::CALL_TIMEOUT)
                            .build(),
                    )
                    .build(),
            ),
        }
    }
}

/// The region of an SQS queue URL (`https://sqs.REGION.amazonaws.com/...`); `None` for
/// another form (an endpoint override: the configured region applies).
fn queue_region(url: &str) -> Option<String> {
    let host = url.strip_prefix("https://")?.split('/').next()?;
    let region = host
        .strip_prefix("sqs.")?
        .split(".amazonaws.com")
        .next()
        .filter(|r| !r.is_empty() && !r.contains('.'))?;
    Some(region.to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_queue_region_comes_from_the_queue_url() {
        assert_eq!(
            super::queue_region("https://sqs.us-east-1.amazonaws.com/123456789012/q").as_deref(),
            Some("us-east-1")
        );
        assert_eq!(
            super::queue_region("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q")
                .as_deref(),
            Some("cn-north-1")
        );
        assert_eq!(
            super::queue_region("http://127.0.0.1:5000/123456789012/q"),
            None
        );
    }
}
