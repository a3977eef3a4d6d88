//! IAM change events: CloudTrail records every IAM API call, EventBridge (in `us-east-1`,
//! where IAM's events arrive) matches the calls that change who may log in
//! ([`iam_event_pattern`]) and puts them on an SQS queue, and the bastion long-polls that queue
//! (`aws.events_queue_url`) to re-read just the user an event names.
//!
//! Every replica must see every event, so the queue is read as a broadcast, not as a work
//! queue: nobody deletes a message, the queue keeps it for [`QUEUE_RETENTION`] and shows it to
//! every receive (visibility timeout 0), and each replica remembers the ids it has applied.
//! gatehouse-vpc provisions the queue, the rule and the least privilege from this module.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::actions;
use crate::calls::Calls;
use crate::error::AwsError;

/// The IAM calls whose success can change who may log in, with the request parameters that
/// name the users concerned. The rule matches exactly these; the daemon re-reads the users
/// they name, a role call re-reads the roles (whose groups tag maps `gatehouse login`
/// callers, with `[sso]`), and a group rename (which changes every member) starts a full
/// sweep.
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
    "CreateRole",
    "DeleteRole",
    "TagRole",
    "UntagRole",
];

/// The calls of [`IAM_EVENT_NAMES`] that concern roles.
const ROLE_EVENT_NAMES: &[&str] = &["CreateRole", "DeleteRole", "TagRole", "UntagRole"];

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

/// What one event asks the directory to re-read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// These IAM users (by IAM name): re-read each.
    Users(BTreeSet<String>),
    /// A role was created, deleted, tagged or untagged: re-read the roles.
    Roles,
    /// Possibly anyone (a group renamed or deleted, an event that names nobody, a burst larger
    /// than one receive shows): sweep IAM.
    Everyone,
}

/// Longest IAM user name an event may name (IAM's own limit); anything longer is not an IAM
/// user name and the event is treated as naming nobody.
const MAX_NAME: usize = 64;

/// What the event in an SQS message body (an EventBridge event, as the rule delivers it) asks
/// to re-read. An event this module cannot read is [`Change::Everyone`]: never dropped.
pub fn change_of(body: &str) -> Change {
    let Ok(event) = serde_json::from_str::<Value>(body) else {
        return Change::Everyone;
    };
    let detail = &event["detail"];
    let params = &detail["requestParameters"];
    let name = |key: &str| {
        params[key]
            .as_str()
            .filter(|n| !n.is_empty() && n.len() <= MAX_NAME)
            .map(str::to_owned)
    };
    match detail["eventName"].as_str() {
        Some("UpdateGroup" | "DeleteGroup") | None => Change::Everyone,
        Some(role) if ROLE_EVENT_NAMES.contains(&role) => Change::Roles,
        Some(_) => {
            let users: BTreeSet<String> = [name("userName"), name("newUserName")]
                .into_iter()
                .flatten()
                .collect();
            if users.is_empty() {
                Change::Everyone
            } else {
                Change::Users(users)
            }
        }
    }
}

/// Messages asked for per receive (SQS's maximum).
const BATCH: i32 = 10;
/// Long-poll wait (SQS's maximum).
const WAIT_SECS: i32 = 20;
/// The same, as a duration: a healthy reader reports at least this often.
pub const WAIT: Duration = Duration::from_secs(WAIT_SECS as u64);
/// Between two receives that returned messages: messages stay visible for
/// [`QUEUE_RETENTION`], so receiving again at once would return them again at once.
const AFTER_MESSAGES: Duration = Duration::from_secs(1);
/// Two successful receives further apart than this may have missed a message (it may have
/// come and expired in between): half the retention, so that never happens unnoticed.
pub const GAP: Duration = Duration::from_secs(QUEUE_RETENTION_SECS as u64 / 2);

/// What the queue reader tells the directory after each receive.
#[derive(Debug, Clone)]
pub enum Report {
    /// A receive succeeded.
    Received(Received),
    /// A receive failed: until one succeeds, events are not arriving.
    Failed,
}

/// A successful receive.
#[derive(Debug, Clone)]
pub struct Received {
    /// When this receive started: every event sent at least [`GAP`] before it, and not yet
    /// expired, has been seen.
    pub at: Instant,
    /// Start of the run of successful receives this one belongs to (no gap longer than
    /// [`GAP`] between them): the events are complete since then.
    pub since: Instant,
    /// The changes of the messages not seen before.
    pub changes: Vec<Change>,
}

/// Reads the event queue for ever, sending what it read to `out`; returns when `out` is
/// closed. Failures are logged (the first of a run as a warning) and retried with backoff.
/// Each receive is counted in `calls`. The first run of receives counts from `started`, the
/// moment the reader was made (a message sent earlier, and not expired, is still on the queue).
pub async fn read_queue(
    client: aws_sdk_sqs::Client,
    url: String,
    calls: Calls,
    started: Instant,
    out: mpsc::Sender<Report>,
) {
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut since = started;
    let mut last_ok = since;
    let mut failures: u32 = 0;
    let mut backlog = false;
    loop {
        let at = Instant::now();
        calls.count(actions::RECEIVE_MESSAGE);
        let answer = client
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(BATCH)
            .wait_time_seconds(WAIT_SECS)
            .visibility_timeout(0)
            .send()
            .await;
        let messages = match answer {
            Ok(answer) => answer.messages.unwrap_or_default(),
            Err(e) => {
                failures += 1;
                let e = AwsError::call("sqs", "ReceiveMessage", &e);
                if failures == 1 {
                    tracing::warn!(error = %e, queue = %url,
                        "cannot read the IAM event queue; revocations wait for the IAM sweep \
                         until it answers again");
                } else {
                    tracing::debug!(error = %e, failures, "IAM event queue still unreadable");
                }
                if out.send(Report::Failed).await.is_err() {
                    return;
                }
                let backoff = Duration::from_millis(500 * 2u64.pow(failures.min(4)));
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(failures, "the IAM event queue answers again");
            failures = 0;
        }
        if at.saturating_duration_since(last_ok) > GAP {
            since = at;
        }
        last_ok = Instant::now();
        seen.retain(|_, first| first.elapsed() < QUEUE_RETENTION * 2);
        let total = messages.len();
        let mut changes = Vec::new();
        for message in messages {
            let id = message.message_id.unwrap_or_default();
            if id.is_empty() || seen.contains_key(&id) {
                continue;
            }
            seen.insert(id, Instant::now());
            changes.push(change_of(message.body.as_deref().unwrap_or_default()));
        }
        // A full batch, new messages or not: more may be waiting that no receive has shown
        // yet. With visibility 0 a receive may show the same messages again and again (a
        // burst, or a standing pool of messages from a sender other than the rule), and a
        // real event behind them could expire unseen: only a sweep knows then.
        if total == BATCH as usize {
            if !backlog {
                tracing::warn!(queue = %url,
                    "the IAM event queue holds more messages than one receive shows (a burst \
                     of IAM changes, or messages from a sender other than the rule); sweeping \
                     IAM until it drains");
            }
            backlog = true;
            changes.push(Change::Everyone);
        } else if backlog {
            tracing::info!(queue = %url, "the IAM event queue has drained");
            backlog = false;
        }
        let report = Report::Received(Received { at, since, changes });
        if out.send(report).await.is_err() {
            return;
        }
        if total > 0 {
            tokio::time::sleep(AFTER_MESSAGES).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, params: Value) -> String {
        json!({
            "version": "0",
            "id": "6f2b1c1e-0000-4000-8000-000000000000",
            "detail-type": "AWS API Call via CloudTrail",
            "source": "aws.iam",
            "region": "us-east-1",
            "detail": {
                "eventSource": "iam.amazonaws.com",
                "eventName": name,
                "requestParameters": params,
            },
        })
        .to_string()
    }

    fn users(names: &[&str]) -> Change {
        Change::Users(names.iter().map(|n| (*n).to_owned()).collect())
    }

    #[test]
    fn a_user_event_names_its_user() {
        let body = event(
            "UpdateSSHPublicKey",
            json!({"userName": "alice", "sSHPublicKeyId": "APKA1", "status": "Inactive"}),
        );
        assert_eq!(change_of(&body), users(&["alice"]));
        let body = event(
            "RemoveUserFromGroup",
            json!({"userName": "bob", "groupName": "g"}),
        );
        assert_eq!(change_of(&body), users(&["bob"]));
    }

    #[test]
    fn a_rename_names_both_names() {
        let body = event(
            "UpdateUser",
            json!({"userName": "old", "newUserName": "new"}),
        );
        assert_eq!(change_of(&body), users(&["new", "old"]));
    }

    #[test]
    fn what_names_nobody_sweeps() {
        // A group renamed or deleted changes every member.
        assert_eq!(
            change_of(&event("UpdateGroup", json!({"groupName": "g"}))),
            Change::Everyone
        );
        // No user name, an empty or an impossible one, no event name, not JSON at all: the
        // event is never dropped, everyone is re-read.
        assert_eq!(change_of(&event("TagUser", json!({}))), Change::Everyone);
        assert_eq!(
            change_of(&event("TagUser", json!({"userName": ""}))),
            Change::Everyone
        );
        let long = "a".repeat(65);
        assert_eq!(
            change_of(&event("TagUser", json!({ "userName": long }))),
            Change::Everyone
        );
        assert_eq!(change_of(r#"{"detail": {}}"#), Change::Everyone);
        assert_eq!(change_of("not json"), Change::Everyone);
        assert_eq!(change_of(""), Change::Everyone);
    }

    #[test]
    fn the_rule_matches_the_names_the_reader_knows() {
        let pattern = iam_event_pattern();
        let names: Vec<&str> = pattern["detail"]["eventName"]
            .as_array()
            .expect("names")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(names, IAM_EVENT_NAMES);
        // Every name the rule lets through is read as a change of someone.
        for name in IAM_EVENT_NAMES {
            let change = change_of(&event(name, json!({"userName": "u", "groupName": "g"})));
            let expected = if ROLE_EVENT_NAMES.contains(name) {
                change == Change::Roles
            } else {
                change == users(&["u"]) || change == Change::Everyone
            };
            assert!(expected, "{name}: {change:?}");
        }
    }

    #[test]
    fn a_role_event_re_reads_the_roles() {
        for name in ["CreateRole", "DeleteRole", "TagRole", "UntagRole"] {
            assert_eq!(
                change_of(&event(name, json!({"roleName": "deploy"}))),
                Change::Roles,
                "{name}"
            );
        }
        // Every role event name is one the rule matches.
        for name in ROLE_EVENT_NAMES {
            assert!(IAM_EVENT_NAMES.contains(name), "{name}");
        }
    }
}
