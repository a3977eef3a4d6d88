//! The fleet's shared listing (`aws.shared_snapshot`): an S3 object holding the last good
//! listing of some replica, in [`crate::persist`]'s format and under its rules (same settings,
//! younger than `max_staleness`). A new replica starts from it and serves at once instead of
//! listing a large IAM account before its first login; it then sweeps, like a restart from
//! `snapshot_file`. Every replica writes it after each IAM sweep, and otherwise at most once a
//! [`SHARE_EVERY`]: the last writer wins, and a reader only ever takes a listing that is
//! young enough.
//!
//! Whoever can write the object must not decide who gets in: anyone in the account with a
//! broad S3 grant can. So a replica takes only a listing signed with the fleet's host key
//! ([`crate::persist`]), which only the bastion role can read (the SSM SecureString, or the
//! key file every replica holds); anything else in the object is refused with the reason.

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use gatehouse_config::S3Object;

use crate::actions;
use crate::calls::Calls;
use crate::error::AwsError;
use crate::persist::MAX_BYTES;

/// Bound on one attempt of a shared-listing call: a start waits on the read.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one shared-listing call with its retries.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(12);
/// How often a replica shares its listing when no sweep has happened since.
pub const SHARE_EVERY: Duration = Duration::from_secs(60);

/// The shared listing's object, with a client of its region.
#[derive(Debug, Clone)]
pub struct Shared {
    client: aws_sdk_s3::Client,
    object: S3Object,
}

impl Shared {
    /// The object at `object`, read and written with `client`.
    pub fn new(client: aws_sdk_s3::Client, object: S3Object) -> Shared {
        Shared { client, object }
    }

    /// Where it is.
    pub fn object(&self) -> &S3Object {
        &self.object
    }

    /// The object's bytes.
    ///
    /// # Errors
    /// The call failed (a missing object reads as `AccessDenied` to a role without
    /// `s3:ListBucket`, which the bastion does not need), or the object is too large.
    pub async fn get(&self, calls: &Calls) -> Result<Vec<u8>, AwsError> {
        calls.count(actions::GET_OBJECT);
        let answer = self
            .client
            .get_object()
            .bucket(&self.object.bucket)
            .key(&self.object.key)
            .send()
            .await
            .map_err(|e| AwsError::call("s3", "GetObject", &e))?;
        if answer
            .content_length()
            .is_some_and(|n| usize::try_from(n).map_or(true, |n| n > MAX_BYTES))
        {
            return Err(AwsError::Suspicious(format!(
                "{} is larger than {MAX_BYTES} bytes",
                self.object
            )));
        }
        let body = answer
            .body
            .collect()
            .await
            .map_err(|e| AwsError::Suspicious(format!("reading {}: {e}", self.object)))?;
        Ok(body.into_bytes().to_vec())
    }

    /// Replaces the object with `bytes`.
    ///
    /// # Errors
    /// The call failed.
    pub async fn put(&self, bytes: Vec<u8>, calls: &Calls) -> Result<(), AwsError> {
        calls.count(actions::PUT_OBJECT);
        self.client
            .put_object()
            .bucket(&self.object.bucket)
            .key(&self.object.key)
            .content_type("application/json")
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| AwsError::call("s3", "PutObject", &e))?;
        Ok(())
    }
}
