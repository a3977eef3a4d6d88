//! IAM change events: CloudTrail records every IAM API call, EventBridge (in `us-east-1`,
//! where IAM's events arrive) matches the calls that change who may log in
//! ([`iam_event_pattern`]) and puts them on an SQS queue, and the bastion long-polls that queue
//! (`aws.events_queue_url`) to re-read just the user an event names.
//!
//! Every replica must see every event, so the queue is read as a broadcast, not as a work
//! queue: nobody deletes a message, the queue keeps it for [`QUEUE_RETENTION`] and shows it to
//! every receive (visibility timeout 0), and each replica remembers the ids it has applied.
//! gatehouse-vpc provisions the queue, the rule and the least privilege from this module.

use serde_json::{json, Value};

/// The IAM calls whose success can change who may log in, with the request parameters that
/// name the users concerned. The rule matches exactly these; the daemon re-reads the users
/// they name, and a group rename (which changes every member) starts a full sweep.
pub const IAM_EVENT_NAMES: &[&str] = &[
    "UploadSSHPublicKey",
    "UpdateSSHPublicKey",
    "DeleteSSHPublicKey",
    "TagUser",
    "UntagUser",
    "AddUserToGroup",
    "RemoveUserFromGroup",
    "CreateUser",
    "UpdateUser",
    "DeleteUser",
    "UpdateGroup",
    "DeleteGroup",
];

/// Where IAM's CloudTrail events reach EventBridge (IAM is a global service).
pub const IAM_EVENTS_REGION: &str = "us-east-1";

/// How long the queue keeps a message (SQS's minimum): every replica polls far more often.
pub const QUEUE_RETENTION_SECS: u32 = 60;
/// The same, as a duration.
pub const QUEUE_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(QUEUE_RETENTION_SECS as u64);

/// The EventBridge pattern of the rule that feeds the queue: successful IAM calls of
/// [`IAM_EVENT_NAMES`], delivered by CloudTrail.
pub fn iam_event_pattern() -> Value {
    json!({
        "source": ["aws.iam"],
        "detail-type": ["AWS API Call via CloudTrail"],
        "detail": {
            "eventSource": ["iam.amazonaws.com"],
            "eventName": IAM_EVENT_NAMES,
            "errorCode": [{ "exists": false }],
        },
    })
}
