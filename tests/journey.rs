//! The product as a user meets it, both halves together: `gatehouse-vpc apply` provisions a
//! stack, the bastion runs on the daemon config from its user data with exactly the role's
//! permissions, researchers reach the provisioned Jupyter host (whose sshd holds no key: the
//! bastion's role pushes each user's own key with EC2 Instance Connect), a revoked key ends its
//! session within seconds of the IAM change event CloudTrail would deliver (the stack's
//! `iam_events` queue and rule; the IAM sweep is 30 minutes away), the audit lines of those
//! sessions reach the stack's audit log group, and `destroy` leaves nothing but that group
//! (`destroy --delete-audit-log`: nothing at all).
//!
//! Real parts: moto in server mode with IAM policies enforced (`tests/py/moto_enforced.py`:
//! every call is signed by a key moto issued and checked against its owner's policies), the
//! real `gatehouse-vpc` and `gatehouse` binaries with the real AWS SDK, OpenSSH sshd and a real
//! Jupyter Server on the private namespace's address (the `private_ip` the spec gives the
//! host), the stock OpenSSH client in the client namespace. moto's EventBridge evaluates the
//! stack's rule and delivers to its queue; what CloudTrail would put on the bus for an IAM call
//! is put there with `PutEvents` (moto's CloudTrail records nothing), after a trail that
//! `plan` accepts is created as the admin.
//!
//! gatehouse-vpc runs as a deploy identity holding exactly what `gatehouse-vpc policy` prints
//! (with the statements moto checks against `*` widened to it, as below), and
//! `the_deployer_needs_every_action_it_is_granted` removes each of its actions in turn.
//! `the_stacks_metric_filters_count_the_daemons_own_audit_lines` runs the alarms' metric
//! filters over lines from the daemon's audit writer (moto never evaluates filters).
//!
//! The bastion's permissions: moto cannot hand the role's credentials to a process (its
//! AssumeRole fails on a trust policy that names only `ec2.amazonaws.com`), so the daemon runs
//! as an IAM user whose one inline policy is the role's inline policy as apply created it.
//! One change, forced by moto and checked below: moto 5.2.5 checks the IAM, SSM and EC2 calls
//! the daemon makes against the resource `*` (an Allow scoped to `user/*` or to a parameter ARN
//! denies them; verified), and CloudWatch Logs calls against `*` too, so those scoped statements
//! get `"Resource": "*"`. It checks S3 and SQS against the real ARN, so the binary's and the
//! event queue's statements keep their scope.
//! The actions are the role's, exactly; the resource scoping is covered by the policy unit tests
//! in gatehouse-vpc.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::aws::{dash_w, fixture_as, gatehouse_cmd_from, Proxy};
use crate::harness::metric_filter::{metric_sum, Filter};
use crate::harness::moto_ns::{AccessKey, NsMoto};
use crate::harness::{
    gatehouse_bin, jupyter_check, run_with_timeout, CmdOutput, Daemon, Jupyter, KeyPair, Scratch,
    SshClient, Topology, BASTION_CLIENT_ADDR, PRIVATE_ADDR, TEST_USER,
};
use crate::instance_connect::{eic_host, pushes, start_imds};

pub(crate) const STACK: &str = "journey";
/// The role and instance profile gatehouse-vpc names after the stack.
pub(crate) const ROLE: &str = "gatehouse-journey-bastion";
/// The host key parameter gatehouse-vpc names after the stack.
pub(crate) const PARAMETER: &str = "/gatehouse/journey/host_ed25519";
/// The IAM change-event queue and rule gatehouse-vpc names after the stack (`iam_events`).
pub(crate) const QUEUE: &str = "gatehouse-journey-iam-events";
pub(crate) const RULE: &str = "gatehouse-journey-iam-changes";
/// The audit log group gatehouse-vpc makes for the stack and names in the daemon config.
pub(crate) const AUDIT_GROUP: &str = "/gatehouse/journey/audit";
/// Where the written daemon config puts the audit file (the daemon's StateDirectory).
pub(crate) const AUDIT_FILE: &str = "/var/lib/gatehouse/audit.jsonl";
/// SQS's URL of a queue in `us-east-1`, as the user data names the queue (before the account).
pub(crate) const SQS_URL: &str = "https://sqs.us-east-1.amazonaws.com/";
/// `[bastion.daemon.aws] refresh_interval` in the spec.
pub(crate) const REFRESH: Duration = Duration::from_secs(2);
/// On top of one refresh: the refresh itself, the revocation, the client seeing it.
const SLACK: Duration = Duration::from_secs(6);
pub(crate) const CMD_TIMEOUT: Duration = Duration::from_secs(120);
pub(crate) const JUPYTER_PORT: u16 = 8888;

/// The spec a user would write: one public and one private subnet, no NAT, a `jupyter` host
/// for group `research` on the private namespace's address whose login user gets each user's
/// key by EC2 Instance Connect, a daemon that refreshes every 2 s, reads IAM groups named
/// `gatehouse-*` and hears of IAM changes from the stack's event queue (`iam_events`; the
/// account needs a trail: [`logging_trail`]).
fn spec_text() -> String {
    format!(
        r#"
[stack]
name = "{STACK}"
region = "us-east-1"

[vpc]
cidr = "10.0.0.0/16"
azs = ["us-east-1a"]
nat = "none"

[[subnets]]
name = "dmz-a"
tier = "public"
cidr = "10.0.0.0/24"
az = "us-east-1a"

[[subnets]]
name = "analysis-a"
tier = "private"
cidr = "10.0.3.0/24"
az = "us-east-1a"

[bastion]
subnet = "dmz-a"
ami = "ami-12c6146b"
allowed_cidrs = ["203.0.113.0/24"]
iam_events = true
# The binary this test run built: apply stores it in the stack's bucket, the bastion fetches it.
gatehouse_binary = "{binary}"

[bastion.daemon.aws]
refresh_interval = "{refresh}s"
iam_group_prefix = "gatehouse-"
instance_connect = true

# gatehouse login: IAM Identity Center's Research permission set gets group research.
[bastion.daemon.sso]
permission_sets = {{ Research = ["research"] }}

[private]
ports = [22, {JUPYTER_PORT}]

[[hosts]]
name = "jupyter"
subnet = "analysis-a"
ami = "ami-12c6146b"
groups = ["research"]
ports = [22, {JUPYTER_PORT}]
private_ip = "{PRIVATE_ADDR}"
login = ["{TEST_USER}"]

[alerts]
emails = ["ops@example.org"]
"#,
        refresh = REFRESH.as_secs(),
        binary = gatehouse_bin().display(),
    )
}

/// `gatehouse-vpc`, built next to `gatehouse` (the workspace builds every binary).
fn vpc_bin() -> PathBuf {
    let bin = gatehouse_bin().with_file_name("gatehouse-vpc");
    assert!(
        bin.exists(),
        "{} missing: run the tests of the whole workspace (tests/run)",
        bin.display()
    );
    bin
}

/// `gatehouse-vpc ARGS` in the bastion namespace as `key`, against moto only; must succeed.
pub(crate) fn vpc(
    topology: &Topology,
    moto: &NsMoto,
    key: &AccessKey,
    spec: &Path,
    args: &[&str],
) -> String {
    let out = vpc_try(topology, moto, key, spec, args);
    out.expect_success(&format!("gatehouse-vpc {args:?}"));
    out.stdout_str()
}

/// `gatehouse-vpc ARGS` as `key`, whatever its outcome (never a panic).
pub(crate) fn vpc_try(
    topology: &Topology,
    moto: &NsMoto,
    key: &AccessKey,
    spec: &Path,
    args: &[&str],
) -> CmdOutput {
    let mut cmd = topology.bastion.command(vpc_bin());
    key.apply(&mut cmd);
    cmd.arg("--spec")
        .arg(spec)
        .args(["--endpoint-url", &moto.url()])
        .args(["--poll-interval", "100ms", "--wait-timeout", "60s"])
        .args(args);
    let out = run_with_timeout(cmd, CMD_TIMEOUT);
    assert!(!out.stderr_str().contains("panicked at"), "{out}");
    out
}

/// Replaces `from` (which must occur exactly once) by `to`.
pub(crate) fn substitute(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} once in:\n{text}");
    text.replacen(from, to, 1)
}

/// The role's inline policy as moto can check it: every statement on `*` but those moto checks
/// against their resource (see the module doc); the actions and statements stay as they are.
pub(crate) fn checkable(role_policy: &Value) -> Value {
    let mut policy = role_policy.clone();
    let mut widened = Vec::new();
    for statement in policy["Statement"].as_array_mut().into_iter().flatten() {
        let kept = matches!(statement["Sid"].as_str(), Some(FETCH_SID | EVENTS_SID));
        if statement["Resource"] != "*" && !kept {
            widened.push(statement["Sid"].as_str().unwrap_or_default().to_owned());
            statement["Resource"] = json!("*");
            // The push's tag condition: moto has no resource tags to evaluate it with (the
            // gatehouse-vpc unit test and the parliament lint check it).
            if let Some(map) = statement.as_object_mut() {
                map.remove("Condition");
            }
        }
    }
    // The statements scoped to users, the host-key parameter, tagged instances and the audit
    // log group; moto checks S3 and SQS resources, so the binary's statement keeps its scope
    // (the bucket's gatehouse/*), and so does the event queue's (the queue's ARN).
    assert_eq!(
        widened,
        ["ReadUserKeys", "HostKey", PUSH_SID, AUDIT_SID],
        "{role_policy:#}"
    );
    policy
}

/// `gatehouse-vpc policy --json` for `spec`: the document and the action table.
pub(crate) fn printed_policy(topology: &Topology, moto: &NsMoto, spec: &Path) -> Value {
    let text = vpc(
        topology,
        moto,
        &AccessKey::moto_test(),
        spec,
        &["policy", "--json"],
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("policy --json: {e}\n{text}"))
}

/// The deployer's policy as moto can check it: moto checks EC2, SSM, IAM, EventBridge,
/// CloudTrail and CloudWatch Logs calls against the resource `*` (see the module doc), and SQS
/// calls against `*` too while the queue does not exist (CreateQueue, a GetQueueUrl that finds
/// nothing), so the statements scoped to the stack's EC2 resource types, role, instance
/// profile, host-key parameter, audit log group, event queue and rule, and to the trails get
/// `*`. The S3 statements keep the
/// bucket's ARN (moto checks S3 resources), and conditions stay (moto does not evaluate them:
/// reviewed by hand, see gatehouse-vpc's README).
fn checkable_deployer(policy: &Value) -> Value {
    let mut policy = policy.clone();
    let mut widened = Vec::new();
    for statement in policy["Statement"].as_array_mut().into_iter().flatten() {
        let arn = statement["Resource"].as_str().unwrap_or_default();
        if arn != "*" && !arn.starts_with("arn:aws:s3:::") {
            widened.push(statement["Sid"].as_str().unwrap_or_default().to_owned());
            statement["Resource"] = json!("*");
        }
    }
    assert_eq!(
        widened,
        [
            "TagOnCreate",
            "RetagTheStacksResources",
            "TagTheDefaultSecurityGroup",
            "ChangeOnlyTheStacksEc2Resources",
            "TheBastionRole",
            "TheBastionInstanceProfile",
            "PassTheBastionRoleToEc2Only",
            "TheHostKeyParameter",
            "TheLoadBalancer",
            "TheTargetGroup",
            "TagTheBalancerAndItsParts",
            "TheAutoScalingGroup",
            "ServiceLinkedRolesOfAutoScalingAndElb",
            "TheAuditLogGroup",
            "TagTheAuditLogGroup",
            "TheStacksAlarms",
            "TheAlarmTopic",
            "TheIamEventQueue",
            "TheIamEventRule",
            "ReadTheTrailsOfIamEvents"
        ],
        "{policy:#}"
    );
    policy
}

/// An IAM user holding exactly the deployer policy `gatehouse-vpc policy` prints for `spec`
/// (as moto can check it), created by the admin.
fn deployer(topology: &Topology, moto: &NsMoto, admin: &AccessKey, spec: &Path) -> AccessKey {
    let printed = printed_policy(topology, moto, spec);
    let policy = checkable_deployer(&printed["policy"]);
    let r = fixture_as(
        topology,
        moto,
        Some(admin),
        json!([{"op": "principal", "name": "deployer", "policy": policy}]),
    );
    key_of(&r[0])
}

/// The key of a `principal` the fixture made.
pub(crate) fn key_of(principal: &Value) -> AccessKey {
    AccessKey {
        access_key_id: principal["access_key_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no key: {principal}"))
            .to_owned(),
        secret_access_key: principal["secret_access_key"]
            .as_str()
            .unwrap_or_else(|| panic!("no secret: {principal}"))
            .to_owned(),
    }
}

/// The statement that lets the bastion fetch its binary (gatehouse-vpc's policy.rs).
const FETCH_SID: &str = "FetchGatehouseBinary";
/// The role's statement for EC2 Instance Connect (`instance_connect = true` in the spec).
pub(crate) const PUSH_SID: &str = "PushKeysToTaggedInstances";
/// The role's statement for the IAM change-event queue (`iam_events = true` in the spec).
const EVENTS_SID: &str = "ReceiveIamChangeEvents";
/// The role's statement for shipping the audit log to the stack's log group.
const AUDIT_SID: &str = "ShipAuditLog";
const FETCH_ACTION: &str = "s3:GetObject";

/// The bastion's boot-time fetch, as its user data runs it: `gatehouse-fetch` with the install
/// script's arguments, credentials from the metadata service at `imds`. Only the bucket's
/// address changes: AWS's `https://BUCKET.s3.REGION.amazonaws.com/` becomes moto's
/// path-style `URL/BUCKET/`. `sha256`: replaces the install script's digest when given.
fn boot_fetch(
    topology: &Topology,
    moto: &NsMoto,
    scripts: &(String, String),
    imds: &str,
    dest: &Path,
    sha256: Option<&str>,
) -> CmdOutput {
    let (fetcher, install) = scripts;
    let line = install
        .lines()
        .find(|l| l.starts_with("/usr/local/sbin/gatehouse-fetch "))
        .unwrap_or_else(|| panic!("no gatehouse-fetch in the install script:\n{install}"));
    let args: Vec<&str> = line.split('\'').skip(1).step_by(2).collect();
    let [url, region, sha] = args[..] else {
        panic!("gatehouse-fetch 'URL' 'REGION' 'SHA256' \"$tmp\" expected: {line}");
    };
    let bucket_host = url
        .strip_prefix("https://")
        .and_then(|u| u.split_once(".s3.us-east-1.amazonaws.com/"))
        .unwrap_or_else(|| panic!("not a virtual-hosted S3 URL: {url}"));
    let url = format!("{}/{}/{}", moto.url(), bucket_host.0, bucket_host.1);
    let script = dest.with_extension("fetch.py");
    std::fs::write(&script, fetcher).expect("write gatehouse-fetch");
    let mut cmd = topology.bastion.command("python3");
    // The credentials come from the metadata service, as on the instance.
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    cmd.arg(&script)
        .args([url.as_str(), region, sha256.unwrap_or(sha)])
        .arg(dest)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds)
        .env("GATEHOUSE_FETCH_ATTEMPTS", "1");
    run_with_timeout(cmd, CMD_TIMEOUT)
}

/// The admin's operations that make a trail `plan` accepts for `iam_events`: in `us-east-1`
/// (where moto finds its event selectors), multi-region, with global service events, logging,
/// recording every management event (no selectors: CloudTrail's default), into its own bucket.
pub(crate) fn logging_trail() -> Value {
    let bucket = format!("{STACK}-org-trail-logs");
    json!([
        {"op": "call", "service": "s3", "method": "create_bucket", "args": {"Bucket": bucket}},
        {"op": "call", "service": "cloudtrail", "method": "create_trail", "args": {
            "Name": "org", "S3BucketName": bucket, "IsMultiRegionTrail": true,
            "IncludeGlobalServiceEvents": true}},
        {"op": "call", "service": "cloudtrail", "method": "start_logging",
         "args": {"Name": "org"}},
    ])
}

/// Everything of the stack still in moto, as the admin sees it: `stack_leftovers` (EC2, the
/// role and profile, the host key, the bucket), the event queue and rule, and the log groups
/// under `/gatehouse/<stack>/`.
pub(crate) fn leftovers(admin: impl Fn(Value) -> Vec<Value>) -> Vec<String> {
    let prefix = format!("gatehouse-{STACK}-");
    let r = admin(json!([
        {"op": "stack_leftovers", "stack": STACK, "role": ROLE, "parameter": PARAMETER},
        {"op": "call", "service": "sqs", "method": "list_queues",
         "args": {"QueueNamePrefix": prefix}},
        {"op": "call", "service": "events", "method": "list_rules",
         "args": {"NamePrefix": prefix}},
        {"op": "call", "service": "logs", "method": "describe_log_groups",
         "args": {"logGroupNamePrefix": format!("/gatehouse/{STACK}/")}},
        {"op": "call", "service": "sns", "method": "list_topics", "args": {}},
        {"op": "call", "service": "cloudwatch", "method": "describe_alarms",
         "args": {"AlarmNamePrefix": prefix}},
        {"op": "call", "service": "logs", "method": "describe_metric_filters",
         "args": {"filterNamePrefix": prefix}},
        {"op": "call", "service": "ssm", "method": "describe_parameters",
         "args": {"ParameterFilters": [{"Key": "Name", "Option": "BeginsWith",
                                        "Values": [format!("/gatehouse/{STACK}/")]}]}},
    ]));
    let mut left: Vec<String> = r[0]["leftovers"]
        .as_array()
        .unwrap_or_else(|| panic!("stack_leftovers: {r:?}"))
        .iter()
        .map(|x| x.as_str().unwrap_or_default().to_owned())
        .collect();
    // (No QueueUrls at all when no queue matches.)
    for queue in r[1]["QueueUrls"].as_array().into_iter().flatten() {
        left.push(format!("queue {}", queue.as_str().unwrap_or_default()));
    }
    let rules = r[2]["Rules"]
        .as_array()
        .unwrap_or_else(|| panic!("list_rules: {r:?}"));
    for rule in rules {
        left.push(format!(
            "rule {}",
            rule["Name"].as_str().unwrap_or_default()
        ));
    }
    let groups = r[3]["logGroups"]
        .as_array()
        .unwrap_or_else(|| panic!("describe_log_groups: {r:?}"));
    for group in groups {
        left.push(format!(
            "log-group {}",
            group["logGroupName"].as_str().unwrap_or_default()
        ));
    }
    for topic in r[4]["Topics"].as_array().into_iter().flatten() {
        let arn = topic["TopicArn"].as_str().unwrap_or_default();
        if arn.ends_with(&format!(":{prefix}alerts")) {
            left.push(format!("topic {arn}"));
        }
    }
    for alarm in r[5]["MetricAlarms"].as_array().into_iter().flatten() {
        left.push(format!(
            "alarm {}",
            alarm["AlarmName"].as_str().unwrap_or_default()
        ));
    }
    for filter in r[6]["metricFilters"].as_array().into_iter().flatten() {
        left.push(format!(
            "metric-filter {}",
            filter["filterName"].as_str().unwrap_or_default()
        ));
    }
    // The key parameters (the host key's is also in stack_leftovers; the SSO CA's only here).
    for parameter in r[7]["Parameters"].as_array().into_iter().flatten() {
        let name = parameter["Name"].as_str().unwrap_or_default();
        if name != PARAMETER {
            left.push(format!("parameter {name}"));
        }
    }
    left
}

/// The messages of every audit line in the stack's log group (all streams), as the admin
/// reads them.
fn shipped_lines(admin: impl Fn(Value) -> Vec<Value>) -> Vec<String> {
    let r = admin(json!([
        {"op": "call", "service": "logs", "method": "filter_log_events",
         "args": {"logGroupName": AUDIT_GROUP}},
    ]));
    r[0]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("filter_log_events: {r:?}"))
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The metric filters on the stack's audit log group, as CloudWatch Logs describes them.
fn stack_metric_filters(admin: impl Fn(Value) -> Vec<Value>) -> Vec<Filter> {
    let r = admin(json!([
        {"op": "call", "service": "logs", "method": "describe_metric_filters",
         "args": {"logGroupName": AUDIT_GROUP}},
    ]));
    let filters: Vec<Filter> = r[0]["metricFilters"]
        .as_array()
        .unwrap_or_else(|| panic!("describe_metric_filters: {r:?}"))
        .iter()
        .map(|f| Filter {
            name: f["filterName"].as_str().unwrap_or_default().to_owned(),
            pattern: f["filterPattern"].as_str().unwrap_or_default().to_owned(),
            metric: f["metricTransformations"][0]["metricName"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            value: f["metricTransformations"][0]["metricValue"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        })
        .collect();
    assert_eq!(filters.len(), 6, "{r:?}");
    filters
}

/// The audit file's lines once one contains `needle` (waited for up to `timeout`).
fn wait_for_audit_line(file: &Path, needle: &str, timeout: Duration) -> Vec<String> {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains(needle) {
            return text.lines().map(str::to_owned).collect();
        }
        assert!(
            start.elapsed() < timeout,
            "no {needle:?} in {} after {timeout:?}:\n{text}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The actions of `policy`, sorted.
pub(crate) fn actions_of(policy: &Value) -> Vec<String> {
    let mut all: Vec<String> = policy["Statement"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| match &s["Action"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(list) => list
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    all.sort();
    all
}

/// `policy` without `action` (a statement left with no action is dropped).
fn without(policy: &Value, action: &str) -> Value {
    let mut policy = policy.clone();
    if let Some(list) = policy["Statement"].as_array_mut() {
        for statement in list.iter_mut() {
            if let Some(actions) = statement["Action"].as_array_mut() {
                actions.retain(|a| a != action);
            }
        }
        list.retain(|s| s["Action"].as_array().is_none_or(|a| !a.is_empty()));
    }
    assert!(!actions_of(&policy).iter().any(|a| a == action));
    policy
}

/// The daemon from the binary the boot fetched (`scratch/fetched-gatehouse`).
fn start_daemon(topology: &Topology, scratch: &Scratch, key: &AccessKey, config: &Path) -> Daemon {
    let mut cmd = gatehouse_cmd_from(topology, &scratch.path().join("fetched-gatehouse"));
    key.apply(&mut cmd);
    cmd.arg("serve").arg("--config").arg(config);
    Daemon::spawn("gatehouse", cmd, scratch)
}

#[test]
fn journey_apply_reach_jupyter_revoke_destroy_under_enforced_iam() {
    let topology = Topology::new();
    let scratch = Scratch::new();
    let (moto, admin) = NsMoto::start_enforced_in(&topology.bastion);
    let admin_fixture = |ops: Value| fixture_as(&topology, &moto, Some(&admin), ops);

    // 1. A deploy identity holding exactly what `gatehouse-vpc policy` prints applies the
    //    stack from a laptop (here: the bastion namespace). The account has the trail that
    //    `iam_events` needs.
    admin_fixture(logging_trail());
    let spec = scratch.write("journey.toml", spec_text().as_bytes());
    let deployer = deployer(&topology, &moto, &admin, &spec);
    let applied = vpc(&topology, &moto, &deployer, &spec, &["apply"]);
    assert!(applied.contains("now up to date"), "{applied}");
    let plan = vpc(&topology, &moto, &deployer, &spec, &["plan"]);
    assert_eq!(plan, format!("stack {STACK}: no changes\n"));
    let output = vpc(
        &topology,
        &moto,
        &deployer,
        &spec,
        &["output", "--user", "alice"],
    );
    assert!(output.contains("ProxyJump journey-bastion"), "{output}");

    // 2. The bastion's config, exactly as cloud-init writes it from the user data; only the
    //    listen address, the endpoint (also in the event queue's URL) and the paths of the
    //    listing and of the audit file change. The daemon reaches moto through the proxy that records the EC2 Instance
    //    Connect pushes moto accepted (for the host's side).
    let pushes_file = scratch.path().join("pushes.jsonl");
    let proxy = Proxy::start_recording(&topology, &scratch, moto.addr().port(), Some(&pushes_file));
    let r = admin_fixture(json!([
        {"op": "user_data_file", "tag": "instance/bastion", "path": "/etc/gatehouse/gatehouse.toml"},
        {"op": "role_policies", "role": ROLE},
        {"op": "call", "service": "sqs", "method": "get_queue_url", "args": {"QueueName": QUEUE}},
    ]));
    let written = r[0]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no daemon config in the bastion's user data: {r:?}"))
        .to_owned();
    // The config names the queue apply made: SQS's URL of it, in this account.
    let queue_url = r[2]["QueueUrl"]
        .as_str()
        .unwrap_or_else(|| panic!("no event queue: {r:?}"));
    // ACCOUNT/NAME, after moto's address.
    let queue_path = queue_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, path)| path)
        .unwrap_or_else(|| panic!("not a queue URL: {queue_url}"));
    assert!(queue_path.ends_with(&format!("/{QUEUE}")), "{queue_url}");
    // The audit lines go to the stack's log group, from the audit file as their spool.
    assert!(
        written.contains(&format!("audit_log_group = \"{AUDIT_GROUP}\"")),
        "{written}"
    );
    let audit_file = scratch.path().join("audit.jsonl");
    let shipped_position = scratch.path().join("audit.jsonl.shipped");
    let config_text = substitute(
        &substitute(
            &substitute(
                &substitute(
                    &substitute(
                        &written,
                        "listen = [\"0.0.0.0:22\"]",
                        &format!("listen = [\"{BASTION_CLIENT_ADDR}:22\"]"),
                    ),
                    "[aws]\n",
                    &format!("[aws]\nendpoint_url = \"{}\"\n", proxy.url()),
                ),
                "snapshot_file = \"/var/lib/gatehouse/aws-directory.json\"",
                &format!(
                    "snapshot_file = \"{}\"",
                    scratch.path().join("aws-directory.json").display()
                ),
            ),
            &format!("events_queue_url = \"{SQS_URL}{queue_path}\""),
            &format!("events_queue_url = \"{}/{queue_path}\"", proxy.url()),
        ),
        &format!("file = \"{AUDIT_FILE}\""),
        &format!("file = \"{}\"", audit_file.display()),
    );
    // The CA key's copy (kept beside the listing) in the scratch directory too.
    let config_text = substitute(
        &config_text,
        &format!("ca_key = \"{}\"", gatehouse_vpc::userdata::USER_CA_PATH),
        &format!(
            "ca_key = \"{}\"",
            scratch.path().join("user_ca_ed25519_key").display()
        ),
    );
    let config = scratch.write("gatehouse.toml", config_text.as_bytes());
    let policies = r[1]["policies"].as_object().expect("role policies");
    assert_eq!(policies.len(), 1, "one inline policy: {policies:?}");
    let created = policies.values().next().expect("the policy");
    // The shipping, on the stack's log group in this account (before moto's widening).
    let account = queue_path.split('/').next().unwrap_or_default();
    let ship_statement = created["Statement"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["Sid"] == AUDIT_SID))
        .unwrap_or_else(|| panic!("no {AUDIT_SID} statement: {created:#}"));
    assert_eq!(
        ship_statement["Action"],
        json!(["logs:CreateLogStream", "logs:PutLogEvents"])
    );
    assert_eq!(
        ship_statement["Resource"],
        format!("arn:aws:logs:us-east-1:{account}:log-group:{AUDIT_GROUP}:*")
    );
    let role_policy = checkable(created);

    // The config's mode decides the actions; the role grants exactly those.
    let settings = gatehouse_config::parse(&config_text, Path::new("gatehouse.toml"))
        .unwrap_or_else(|e| panic!("the written config is invalid: {e}\n{config_text}"))
        .aws
        .expect("[aws]");
    // The IAM sweep is the daemon's default with events (the user data sets none): half an
    // hour, so only an event can make an IAM change seen within this test.
    assert_eq!(
        settings.iam_sweep_interval,
        gatehouse_config::DEFAULT_EVENTS_SWEEP_INTERVAL
    );
    let needed = gatehouse_aws::actions::needed(gatehouse_aws::actions::Mode::of(&settings));
    let mut names: Vec<String> = needed.iter().map(|a| a.name().to_owned()).collect();
    // And the boot-time fetch of the binary from the stack's bucket.
    names.push(FETCH_ACTION.to_owned());
    names.sort();
    assert_eq!(actions_of(&role_policy), names);
    let fetch_statement = role_policy["Statement"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["Sid"] == FETCH_SID))
        .unwrap_or_else(|| panic!("no {FETCH_SID} statement: {role_policy:#}"));
    assert_eq!(fetch_statement["Action"], json!([FETCH_ACTION]));
    assert!(
        fetch_statement["Resource"].as_str().is_some_and(|r| r
            .starts_with("arn:aws:s3:::gatehouse-journey-")
            && r.ends_with("/gatehouse/*")),
        "{fetch_statement:#}"
    );
    // The receive, on the stack's queue only (as moto checks it).
    let events_statement = role_policy["Statement"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["Sid"] == EVENTS_SID))
        .unwrap_or_else(|| panic!("no {EVENTS_SID} statement: {role_policy:#}"));
    assert_eq!(events_statement["Action"], json!(["sqs:ReceiveMessage"]));
    assert_eq!(
        events_statement["Resource"],
        format!("arn:aws:sqs:us-east-1:{account}:{QUEUE}"),
        "{events_statement:#}"
    );

    // 3. Researchers: alice by tag, bob through the prefixed IAM group. The daemon's
    //    principal: an IAM user with the role's policy and nothing else.
    let alice = KeyPair::ed25519(&scratch, "alice_key");
    let bob = KeyPair::ed25519(&scratch, "bob_key");
    let r = admin_fixture(json!([
        {"op": "user", "name": "alice", "groups": "research", "keys": [alice.public_line.trim()]},
        {"op": "user", "name": "bob", "iam_groups": ["gatehouse-research"],
         "keys": [bob.public_line.trim()]},
        {"op": "principal", "name": "bastion-role", "policy": role_policy},
    ]));
    let bob_key_id = r[1]["key_ids"][0].as_str().expect("key id").to_owned();
    let bastion = key_of(&r[2]);

    // The boot: the bastion fetches its binary from the stack's bucket with the role's
    // credentials (IMDSv2) and checks its digest; the daemon below runs that copy.
    let r = admin_fixture(json!([
        {"op": "user_data_file", "tag": "instance/bastion", "path": "/usr/local/sbin/gatehouse-fetch"},
        {"op": "user_data_file", "tag": "instance/bastion", "path": "/usr/local/sbin/gatehouse-install"},
    ]));
    let text = |i: usize| {
        r[i]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("user data file {i} missing: {r:?}"))
            .to_owned()
    };
    let scripts = (text(0), text(1));
    let mut imds_cmd = topology.bastion.command("python3");
    imds_cmd
        .arg(crate::harness::jupyter::py_script("fake_imds.py"))
        .args([ROLE, &bastion.access_key_id, &bastion.secret_access_key]);
    let (mut imds, imds_url) = start_imds("imds", imds_cmd, &scratch);
    let fetched = scratch.path().join("fetched-gatehouse");
    // Without s3:GetObject the boot cannot fetch the binary: the action is needed.
    admin_fixture(json!([
        {"op": "set_user_policy", "name": "bastion-role", "policy": without(&role_policy, FETCH_ACTION)},
    ]));
    let out = boot_fetch(&topology, &moto, &scripts, &imds_url, &fetched, None);
    out.expect_failure("gatehouse-fetch without s3:GetObject");
    assert!(out.stderr_str().contains("HTTP 403"), "{out}");
    assert!(!fetched.exists());
    admin_fixture(json!([
        {"op": "set_user_policy", "name": "bastion-role", "policy": role_policy},
    ]));
    // A digest other than the object's (a binary swapped in the bucket) is refused.
    let other = "0".repeat(64);
    let out = boot_fetch(
        &topology,
        &moto,
        &scripts,
        &imds_url,
        &fetched,
        Some(&other),
    );
    out.expect_failure("gatehouse-fetch with another digest");
    assert!(out.stderr_str().contains("SHA-256 mismatch"), "{out}");
    assert!(!fetched.exists() && !fetched.with_extension("part").exists());
    let out = boot_fetch(&topology, &moto, &scripts, &imds_url, &fetched, None);
    out.expect_success("gatehouse-fetch with the role's policy");
    assert_eq!(
        std::fs::read(&fetched).expect("fetched binary"),
        std::fs::read(gatehouse_bin()).expect("built binary"),
        "the fetched binary is the one apply stored"
    );
    imds.terminate(Duration::from_secs(5));

    // The provisioned jupyter host: an sshd with no key of its own, taking the keys EC2
    // Instance Connect pushed for its login user (the spec's `login`, tagged by apply).
    let r = admin_fixture(
        json!([{"op": "call", "service": "ec2", "method": "describe_instances",
        "args": {"Filters": [{"Name": "tag:gatehouse:resource", "Values": ["instance/jupyter"]}]}}]),
    );
    let jupyter_id = r[0]["Reservations"][0]["Instances"][0]["InstanceId"]
        .as_str()
        .unwrap_or_else(|| panic!("no jupyter instance: {r:?}"))
        .to_owned();
    let (_imds, mut sshd) = eic_host(&topology, &scratch, &pushes_file, &jupyter_id);
    let bastion_addr = (BASTION_CLIENT_ADDR, 22).into();
    let mut alice_client = SshClient::new(
        &topology.client,
        &scratch,
        bastion_addr,
        "alice",
        &alice.private,
    );
    alice_client.add_target("jupyter-box", "jupyter", 22, TEST_USER, None);

    // 4. Minimal, not just sufficient: without any one action the bastion does not serve,
    //    and says which action it lacks. The host key is deleted before each run, so the
    //    create path (ssm:PutParameter) is taken every time. The push is made on a tunnel to
    //    the host's SSH port, not at start: without it the bastion serves, and that tunnel is
    //    refused with the action named. The event actions are not needed to serve either
    //    (without them IAM is swept every refresh, as without events): without the receive
    //    the queue reader says it lacks it, and without a re-read the first event naming a
    //    user does. Nor is shipping the audit log: without either of its actions the bastion
    //    serves, its lines wait in the audit file, and the shipper says which action it lacks
    //    (for the put, on a line a previous run left unshipped).
    let saved_listing = scratch.path().join("aws-directory.json");
    for action in &needed {
        // Each run lists AWS itself: none serves from a listing an earlier run saved.
        let _ = std::fs::remove_file(&saved_listing);
        // And ships from a fresh audit file.
        let _ = std::fs::remove_file(&audit_file);
        let _ = std::fs::remove_file(&shipped_position);
        if action.need() == gatehouse_aws::actions::Need::AuditShipping {
            admin_fixture(json!([
                {"op": "set_user_policy", "name": "bastion-role",
                 "policy": without(&role_policy, action.name())},
            ]));
            // Written a minute ago: CloudWatch takes it (a line older than 14 days would be
            // passed over, never sent).
            let written = std::time::SystemTime::now() - Duration::from_secs(60);
            std::fs::write(
                &audit_file,
                format!(
                    "{{\"ts\":\"{}\",\"event\":\"config.reload\"}}\n",
                    humantime::format_rfc3339_millis(written)
                ),
            )
            .expect("an unshipped audit line");
            let mut daemon = start_daemon(&topology, &scratch, &bastion, &config);
            daemon.wait_for_stderr("gatehouse listening", Duration::from_secs(60));
            let lacks = format!("lacks the action {}", action.name());
            let logs = daemon.wait_for_stderr(&lacks, Duration::from_secs(30));
            let line = logs
                .lines()
                .find(|l| l.contains(&lacks))
                .unwrap_or_default();
            assert!(
                line.contains("cannot ship audit lines to CloudWatch Logs"),
                "{line}"
            );
            daemon.terminate(Duration::from_secs(10));
            continue;
        }
        if matches!(
            action.need(),
            gatehouse_aws::actions::Need::Events | gatehouse_aws::actions::Need::EventsGroupPrefix
        ) {
            admin_fixture(json!([
                {"op": "set_user_policy", "name": "bastion-role",
                 "policy": without(&role_policy, action.name())},
            ]));
            let mut daemon = start_daemon(&topology, &scratch, &bastion, &config);
            daemon.wait_for_stderr("gatehouse listening", Duration::from_secs(60));
            let symptom = if *action == gatehouse_aws::actions::RECEIVE_MESSAGE {
                "cannot read the IAM event queue"
            } else {
                // What CloudTrail delivers when alice is tagged: the daemon re-reads her.
                let r = admin_fixture(json!([crate::aws::iam_event(
                    "TagUser",
                    json!({"userName": "alice", "tags": [{"key": "team", "value": "x"}]}),
                )]));
                assert_eq!(r[0]["FailedEntryCount"], 0, "{r:?}");
                "cannot re-read a user an IAM change event names"
            };
            let lacks = format!("lacks the action {}", action.name());
            let logs = daemon.wait_for_stderr(&lacks, Duration::from_secs(30));
            let line = logs
                .lines()
                .find(|l| l.contains(&lacks))
                .unwrap_or_default();
            assert!(line.contains(symptom), "{symptom:?} not in: {line}");
            daemon.terminate(Duration::from_secs(10));
            continue;
        }
        if action.need() == gatehouse_aws::actions::Need::InstanceConnect {
            admin_fixture(json!([
                {"op": "set_user_policy", "name": "bastion-role",
                 "policy": without(&role_policy, action.name())},
            ]));
            let mut daemon = start_daemon(&topology, &scratch, &bastion, &config);
            daemon.wait_for_stderr("gatehouse listening", Duration::from_secs(60));
            let out = dash_w(&alice_client, "jupyter:22");
            out.expect_failure("a tunnel to the host without the push");
            assert!(
                out.stderr_str().contains("could not give your key to host"),
                "{out}"
            );
            daemon.wait_for_stderr(
                &format!("lacks the action {}", action.name()),
                Duration::from_secs(10),
            );
            assert!(pushes(&pushes_file).is_empty(), "pushed without the action");
            daemon.terminate(Duration::from_secs(10));
            continue;
        }
        if !action.is_call() {
            // ssm:AddTagsToResource: AWS checks it inside PutParameter-with-tags; moto does not
            // (verified), so no run here can see it missing. The policy unit tests and the
            // host-key test in tests/vpc.rs (destroy finds the tagged parameter) cover it.
            eprintln!(
                "{}: not a call of its own; not checkable in moto",
                action.name()
            );
            continue;
        }
        admin_fixture(json!([
            {"op": "set_user_policy", "name": "bastion-role",
             "policy": without(&role_policy, action.name())},
            {"op": "delete_parameter", "name": PARAMETER},
        ]));
        let mut daemon = start_daemon(&topology, &scratch, &bastion, &config);
        daemon.wait_for_stderr(
            &format!("lacks the action {}", action.name()),
            Duration::from_secs(30),
        );
        let logs = daemon.stderr();
        assert!(
            !logs.contains("gatehouse listening"),
            "serving without {}:\n{logs}",
            action.name()
        );
        daemon.terminate(Duration::from_secs(10));
    }
    admin_fixture(json!([
        {"op": "set_user_policy", "name": "bastion-role", "policy": role_policy},
        {"op": "delete_parameter", "name": PARAMETER},
    ]));
    // The audit file of the journey's sessions only (the runs above shipped theirs).
    let _ = std::fs::remove_file(&audit_file);
    let _ = std::fs::remove_file(&shipped_position);

    // 5. The bastion with the role's permissions, the private host with sshd and Jupyter.
    let mut daemon = start_daemon(&topology, &scratch, &bastion, &config);
    daemon.wait_for_stderr("gatehouse listening", Duration::from_secs(60));
    let jupyter = Jupyter::start(
        &topology.private,
        &scratch,
        (PRIVATE_ADDR, JUPYTER_PORT).into(),
    );

    // alice: ssh -J bastion jupyter, a login on the provisioned host's private address, with
    // the key she logged in to the bastion with, pushed by the bastion's role.
    let mut ssh = alice_client.ssh();
    ssh.args(["jupyter-box", "echo", "reached"]);
    let out = run_with_timeout(ssh, CMD_TIMEOUT);
    out.expect_success("ssh -J bastion jupyter as alice");
    assert_eq!(out.stdout_str().trim(), "reached");
    sshd.daemon()
        .wait_for_stderr("Accepted publickey for", Duration::from_secs(5));
    let recorded = pushes(&pushes_file);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0]["instance"], jupyter_id.as_str());
    assert_eq!(recorded[0]["user"], TEST_USER);

    // bob: the Jupyter recipe, ssh -N -L 8888:jupyter:8888 bastion; the kernel runs code.
    let bob_client = SshClient::new(
        &topology.client,
        &scratch,
        bastion_addr,
        "bob",
        &bob.private,
    );
    let local_port = 18888;
    let mut tunnel = bob_client.local_forward(
        &scratch,
        "bob_tunnel",
        local_port,
        "jupyter",
        JUPYTER_PORT,
        "bastion",
    );
    let out = jupyter_check(
        &topology.client,
        &format!("http://127.0.0.1:{local_port}"),
        jupyter.token(),
        Duration::from_secs(90),
    );
    out.expect_success("Jupyter through ssh -L as bob");
    assert!(out.stdout_str().contains("\"result\": \"42\""), "{out}");

    // carol has no IAM user: she signs in with IAM Identity Center (a role named as its
    // Research permission set, assumed with her name). `gatehouse login` proves it to the
    // bastion, which replays the proof to STS with nothing of its role's, and signs her key
    // with the stack's CA, which the daemon created in SSM under the role's policy. Stock
    // `ssh -J` with the certificate then reaches the host (her key pushed like alice's).
    let carol = KeyPair::ed25519(&scratch, "carol_key");
    let r = admin_fixture(json!([
        {"op": "principal", "name": "identity-center", "policy": {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}]}},
    ]));
    let identity_center = key_of(&r[0]);
    // Who IAM Identity Center is here: assumes a role of the account for a session.
    let assume = |path: &str, role: &str, session: &str| {
        crate::sso::assume(
            admin_fixture,
            (
                |ops| fixture_as(&topology, &moto, Some(&identity_center), ops),
                "arn:aws:iam::123456789012:user/identity-center",
            ),
            path,
            role,
            session,
        )
    };
    let known_hosts = scratch.write("known_hosts_empty", b"");
    // `gatehouse login` with `creds` for `key`, which must certify `login`; then stock
    // `ssh -J` with the certificate reaches the host.
    let certified_reach = |creds: &crate::sso::Creds, key: &KeyPair, login: &str| {
        let out = crate::sso::login_as(
            &topology.client,
            bastion_addr,
            &proxy.url(),
            creds,
            key,
            &known_hosts,
        );
        out.expect_success(&format!("gatehouse login as {login}"));
        assert!(
            out.stdout_str()
                .contains(&format!("certificate for {login}")),
            "{out}"
        );
        let mut client = SshClient::new(
            &topology.client,
            &scratch,
            bastion_addr,
            login,
            &key.private,
        );
        client.add_target("jupyter-box", "jupyter", 22, TEST_USER, None);
        let mut ssh = client.ssh();
        ssh.args(["jupyter-box", "echo", "reached"]);
        let out = run_with_timeout(ssh, CMD_TIMEOUT);
        out.expect_success(&format!(
            "ssh -J bastion jupyter as {login}, with the certificate"
        ));
        assert_eq!(out.stdout_str().trim(), "reached");
    };
    let carol_creds = assume(
        crate::sso::SSO_PATH,
        "AWSReservedSSO_Research_5e7a1c2b",
        "carol@example.org",
    );
    certified_reach(&carol_creds, &carol, "carol~40example.org");
    let r = admin_fixture(json!([
        {"op": "call", "service": "ssm", "method": "list_tags_for_resource", "args": {
            "ResourceType": "Parameter", "ResourceId": format!("/gatehouse/{STACK}/user_ca_ed25519")}},
    ]));
    assert_eq!(
        r[0]["TagList"],
        json!([{"Key": "gatehouse:stack", "Value": STACK}]),
        "the CA key's parameter, tagged with the stack"
    );
    // A CI job's role (an ordinary IAM role) is tagged `gatehouse:groups`: the event of that
    // call makes the daemon re-read the account's roles (iam:GetAccountAuthorizationDetails,
    // the action the sweep already has, under enforced IAM), and the job's `gatehouse login`
    // gets a certificate for `ci-deploy/build-7`: the login names the role.
    let ci_creds = assume("/", "ci-deploy", "build-7");
    let r = admin_fixture(json!([
        {"op": "call", "service": "iam", "method": "tag_role", "args": {
            "RoleName": "ci-deploy", "Tags": [{"Key": "gatehouse:groups", "Value": "research"}]}},
        crate::aws::iam_event("TagRole", json!({"roleName": "ci-deploy"})),
    ]));
    assert_eq!(r[1]["FailedEntryCount"], 0, "{r:?}");
    let logs = daemon.wait_for_stderr("IAM role change events applied", SLACK);
    assert!(
        logs.lines()
            .any(|l| l.contains("IAM role change events applied") && l.contains("changed=true")),
        "{logs}"
    );
    let ci_key = KeyPair::ed25519(&scratch, "ci_key");
    certified_reach(&ci_creds, &ci_key, "ci-deploy/build-7");

    // 6. bob's key is deactivated in IAM. The daemon sweeps IAM every half hour (step 2):
    //    until the event CloudTrail delivers for that call, nothing tells it, and bob's
    //    session goes on. (This is what fails if IAM were swept every refresh, and proves the
    //    revocation below is the event's doing.)
    admin_fixture(json!([
        {"op": "deactivate_key", "user": "bob", "key_id": bob_key_id},
    ]));
    assert!(
        tunnel.wait_exit(REFRESH * 3).is_none(),
        "bob's ssh -N -L ended before any event: IAM was swept\n{}\n{}",
        tunnel.logs(),
        daemon.logs()
    );
    //    The event, on us-east-1's default bus: the stack's rule puts it on the queue, the
    //    daemon receives it and re-reads bob with the role's sqs:ReceiveMessage and
    //    iam:GetUser (and iam:ListGroupsForUser), under enforced IAM, and his session ends
    //    within seconds.
    let sent = Instant::now();
    let r = admin_fixture(json!([crate::aws::iam_event(
        "UpdateSSHPublicKey",
        json!({"userName": "bob", "sSHPublicKeyId": bob_key_id, "status": "Inactive"}),
    )]));
    assert_eq!(r[0]["FailedEntryCount"], 0, "{r:?}");
    assert!(
        tunnel.wait_exit(SLACK).is_some(),
        "bob's ssh -N -L still runs {SLACK:?} after the event of his key's deactivation\n{}\n{}",
        tunnel.logs(),
        daemon.logs()
    );
    eprintln!(
        "event-driven revocation: event sent -> tunnel closed at the client {:.3}s",
        sent.elapsed().as_secs_f64()
    );
    // A burst of failed logins: a key nobody registered, offered as alice.
    let stranger = KeyPair::ed25519(&scratch, "stranger_key");
    let stranger_client = SshClient::new(
        &topology.client,
        &scratch,
        bastion_addr,
        "alice",
        &stranger.private,
    );
    for _ in 0..3 {
        dash_w(&stranger_client, &format!("jupyter:{JUPYTER_PORT}"))
            .expect_failure("a stranger's key as alice");
    }
    let out = dash_w(&bob_client, &format!("jupyter:{JUPYTER_PORT}"));
    out.expect_failure("bob logs in after deactivation");
    assert!(
        out.stderr_str().contains("Permission denied (publickey)"),
        "{out}"
    );
    // The daemon says it applied the event to bob, and that no event was missed or unread
    // (either would start a sweep).
    let logs = daemon.wait_for_stderr("IAM change events applied", Duration::from_secs(5));
    assert!(
        logs.lines()
            .any(|l| l.contains("IAM change events applied") && l.contains("\"bob\"")),
        "{logs}"
    );
    for unwanted in ["sweeping IAM", "cannot read the IAM event queue"] {
        assert!(!logs.contains(unwanted), "{unwanted:?} in:\n{logs}");
    }
    // The audit log (the written config's audit file) says why.
    let lines = wait_for_audit_line(
        &audit_file,
        "\"event\":\"session.revoked\"",
        Duration::from_secs(5),
    );
    let line = lines
        .iter()
        .find(|l| l.contains("session.revoked"))
        .cloned()
        .unwrap_or_default();
    assert!(line.contains("\"user\":\"bob\""), "{line}");
    // And every audit line of the journey's sessions reaches the stack's log group, shipped
    // by the bastion under the role's policy: alice's and bob's logins, bob's revocation.
    let shipped_at = Instant::now();
    let lines = std::fs::read_to_string(&audit_file).expect("the audit file");
    let lines: Vec<&str> = lines.lines().filter(|l| !l.trim().is_empty()).collect();
    for (user, event) in [
        ("alice", "auth.success"),
        ("bob", "auth.success"),
        ("bob", "session.revoked"),
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("\"event\":\"{event}\""))
                    && l.contains(&format!("\"user\":\"{user}\""))),
            "no {event} of {user} in the audit file:\n{}",
            lines.join("\n")
        );
    }
    loop {
        let shipped = shipped_lines(admin_fixture);
        let missing: Vec<&&str> = lines
            .iter()
            .filter(|l| !shipped.iter().any(|s| s == **l))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            shipped_at.elapsed() < Duration::from_secs(20),
            "audit lines not in {AUDIT_GROUP} after 20 s: {missing:#?}\nshipped: {shipped:#?}\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "{} audit lines in the log group {:.1}s after the revocation's line",
        lines.len(),
        shipped_at.elapsed().as_secs_f64()
    );
    // The stack's metric filters, as apply put them on the log group, over the lines the
    // bastion shipped there: moto stores filters but never evaluates them (no metric moves),
    // so the test counts what each would add. The failed logins are the stranger's burst and
    // bob's refused login; the key pushes are those to jupyter's login user.
    let shipped = shipped_lines(admin_fixture);
    let filters = stack_metric_filters(admin_fixture);
    let count = |event: &str| {
        let needle = format!("\"event\":\"{event}\"");
        shipped.iter().filter(|l| l.contains(&needle)).count() as f64
    };
    let failed = metric_sum(&filters, "FailedLogins", &shipped);
    assert!(
        failed >= 4.0 && failed == count("auth.failure"),
        "FailedLogins {failed} over:\n{}",
        shipped.join("\n")
    );
    let pushes = metric_sum(&filters, "KeyPushes", &shipped);
    assert!(
        pushes >= 1.0 && pushes == count("target.key_pushed"),
        "KeyPushes {pushes}"
    );
    for (metric, want) in [
        ("Refusals", 0.0),
        ("KeyPushFailures", 0.0),
        ("DirectoryStale", 0.0),
    ] {
        assert_eq!(metric_sum(&filters, metric, &shipped), want, "{metric}");
    }
    eprintln!("the stack's metric filters over {} shipped lines: FailedLogins {failed}, KeyPushes {pushes}", shipped.len());
    daemon.terminate(Duration::from_secs(10));
    drop(jupyter);
    drop(sshd);

    // 7. destroy leaves nothing of the stack but its audit trail: no tagged resource, no
    //    role, no profile, no event queue or rule, and no host key (the daemon created it
    //    tagged with the stack); the log group stays, with its lines, and destroy says so.
    //    `destroy --delete-audit-log` deletes it too.
    let r = admin_fixture(json!([{"op": "get_parameter", "name": PARAMETER}]));
    assert!(r[0]["value"].is_string(), "the daemon created the host key");
    let before = leftovers(admin_fixture);
    for made in [
        format!("queue {queue_url}"),
        format!("rule {RULE}"),
        format!("log-group {AUDIT_GROUP}"),
    ] {
        assert!(
            before.contains(&made),
            "{made} not seen before destroy: {before:?}"
        );
    }
    let destroyed = vpc(&topology, &moto, &deployer, &spec, &["destroy"]);
    assert!(
        destroyed.contains(&format!(
            "kept: log group {AUDIT_GROUP}: the audit trail outlives the stack (retention 365 \
             days)"
        )),
        "{destroyed}"
    );
    assert_eq!(
        leftovers(admin_fixture),
        [format!("log-group {AUDIT_GROUP}")],
        "left after destroy"
    );
    assert!(
        shipped_lines(admin_fixture)
            .iter()
            .any(|l| l.contains("session.revoked")),
        "the audit trail outlives the stack"
    );
    vpc(
        &topology,
        &moto,
        &deployer,
        &spec,
        &["destroy", "--delete-audit-log"],
    );
    assert_eq!(
        leftovers(admin_fixture),
        Vec::<String>::new(),
        "left after destroy --delete-audit-log"
    );
}

/// The walk's stack: the journey's (with `iam_events`: its queue, rule and trail reads), with
/// a NAT gateway (its calls too) and a small stand-in binary (the walk uploads it and then a
/// second one).
pub(crate) fn walk_spec(binary: &Path) -> String {
    let text = spec_text().replace("nat = \"none\"", "nat = \"single\"");
    substitute(
        &text,
        &format!("gatehouse_binary = \"{}\"", gatehouse_bin().display()),
        &format!("gatehouse_binary = \"{}\"", binary.display()),
    )
}

/// The walk's stack scaled out: two replicas behind the balancer, over public subnets in two
/// zones.
fn walk_spec_replicas(binary: &Path) -> String {
    let text = substitute(
        &walk_spec(binary),
        "azs = [\"us-east-1a\"]",
        "azs = [\"us-east-1a\", \"us-east-1b\"]",
    );
    let text = substitute(
        &text,
        "[[subnets]]\nname = \"analysis-a\"",
        "[[subnets]]\nname = \"dmz-b\"\ntier = \"public\"\ncidr = \"10.0.1.0/24\"\naz = \"us-east-1b\"\n\n[[subnets]]\nname = \"analysis-a\"",
    );
    substitute(
        &text,
        "allowed_cidrs = [",
        "replicas = 2\nallowed_cidrs = [",
    )
}

/// The deploy identity's key and the policy it holds, one deploy identity per action holding
/// that policy without the action, and what the walk has shown needed.
pub(crate) struct Walk<'a> {
    topology: &'a Topology,
    moto: &'a NsMoto,
    admin: &'a AccessKey,
    deployer: AccessKey,
    spec: PathBuf,
    pub(crate) policy: Value,
    /// By action. All made at the start, in one fixture run: the walk runs gatehouse-vpc about
    /// a hundred times, and a fixture run (Python and boto3 starting) per run to change one
    /// identity's policy took longer than gatehouse-vpc itself. IAM decides by the policy, not
    /// by who holds it, and the stack's resources belong to the account.
    without: std::collections::BTreeMap<String, AccessKey>,
    pub(crate) shown: Vec<String>,
}

impl<'a> Walk<'a> {
    pub(crate) fn new(
        topology: &'a Topology,
        moto: &'a NsMoto,
        admin: &'a AccessKey,
        deployer: AccessKey,
        spec: PathBuf,
        policy: Value,
    ) -> Walk<'a> {
        let mut actions = actions_of(&policy);
        actions.dedup();
        let ops: Vec<Value> = actions
            .iter()
            .enumerate()
            .map(|(i, action)| {
                json!({"op": "principal", "name": format!("deployer-without-{i}"),
                       "policy": without(&policy, action)})
            })
            .collect();
        // In runs whose operations stay well under Linux's 128 KiB for one argument.
        let mut r = Vec::new();
        let (mut batch, mut size) = (Vec::new(), 0);
        for op in ops {
            let len = op.to_string().len();
            if size + len > 64 * 1024 && !batch.is_empty() {
                let ops = Value::Array(std::mem::take(&mut batch));
                r.extend(fixture_as(topology, moto, Some(admin), ops));
                size = 0;
            }
            size += len;
            batch.push(op);
        }
        r.extend(fixture_as(topology, moto, Some(admin), Value::Array(batch)));
        assert_eq!(r.len(), actions.len(), "{r:?}");
        let without = actions.into_iter().zip(r.iter().map(key_of)).collect();
        Walk {
            topology,
            moto,
            admin,
            deployer,
            spec,
            policy,
            without,
            shown: Vec::new(),
        }
    }

    pub(crate) fn admin(&self, ops: Value) -> Vec<Value> {
        fixture_as(self.topology, self.moto, Some(self.admin), ops)
    }

    /// Runs `command` as a deployer holding the policy without `action`: it must fail,
    /// naming the action. What it did before that call stays done.
    pub(crate) fn needs(&mut self, action: &str, command: &[&str]) {
        let key = self
            .without
            .get(action)
            .unwrap_or_else(|| panic!("{action} is not in the policy"));
        let out = vpc_try(self.topology, self.moto, key, &self.spec, command);
        assert!(
            !out.success(),
            "gatehouse-vpc {command:?} succeeded without {action}: {out}"
        );
        assert!(
            out.stderr_str()
                .contains(&format!("lacks the action {action}")),
            "gatehouse-vpc {command:?} without {action} did not say so: {out}"
        );
        self.shown.push(action.to_owned());
    }

    /// `command` with the whole policy.
    pub(crate) fn full(&self, command: &[&str]) -> String {
        vpc(
            self.topology,
            self.moto,
            &self.deployer,
            &self.spec,
            command,
        )
    }

    /// The id of the stack's resource tagged `gatehouse:resource = key`, from describe `method`.
    pub(crate) fn id_of(&self, method: &str, list: &str, field: &str, key: &str) -> String {
        let r = self.admin(
            json!([{"op": "call", "service": "ec2", "method": method, "args": {
            "Filters": [{"Name": "tag:gatehouse:resource", "Values": [key]}]}}]),
        );
        r[0][list][0][field]
            .as_str()
            .unwrap_or_else(|| panic!("no {key}: {r:?}"))
            .to_owned()
    }

    /// One admin call; its answer.
    pub(crate) fn admin_call(&self, service: &str, method: &str, args: Value) -> Value {
        let r = self.admin(json!([{"op": "call", "service": service, "method": method,
                                   "args": args}]));
        r.into_iter().next().unwrap_or(Value::Null)
    }

    /// Drift in the alarm family, made by the admin, each repair shown needing its action: the
    /// topic's and an alarm's tags, and a filter of the stack's name the spec does not ask for.
    pub(crate) fn alarm_repairs(&mut self) {
        let topic = format!(
            "arn:aws:sns:us-east-1:{}:gatehouse-{STACK}-alerts",
            self.account()
        );
        self.admin_call(
            "sns",
            "tag_resource",
            json!({"ResourceArn": topic, "Tags": [{"Key": "Name", "Value": "edited"}]}),
        );
        self.needs("sns:TagResource", &["apply"]);
        self.full(&["apply"]);
        let alarm = format!(
            "arn:aws:cloudwatch:us-east-1:{}:alarm:gatehouse-{STACK}-failed-logins",
            self.account()
        );
        self.admin_call(
            "cloudwatch",
            "tag_resource",
            json!({"ResourceARN": alarm, "Tags": [{"Key": "Name", "Value": "edited"}]}),
        );
        self.needs("cloudwatch:TagResource", &["apply"]);
        self.full(&["apply"]);
        self.admin_call(
            "logs",
            "put_metric_filter",
            json!({"logGroupName": AUDIT_GROUP, "filterName": format!("gatehouse-{STACK}-stray"),
                   "filterPattern": "{ $.event = \"x\" }", "metricTransformations": [
                       {"metricName": "X", "metricNamespace": "x", "metricValue": "1"}]}),
        );
        self.needs("logs:DeleteMetricFilter", &["apply"]);
        self.full(&["apply"]);
    }

    /// The account moto serves.
    fn account(&self) -> String {
        let r = self.admin_call("sts", "get_caller_identity", json!({}));
        r["Account"].as_str().expect("account").to_owned()
    }

    /// Drift in the replicas' resources, made by the admin, each repair shown needing its
    /// action; then a new build, which rolls the replicas new ones first.
    pub(crate) fn scaled_out_repairs(&mut self, binary: &Path) {
        self.shared_listing_is_all_the_replicas_may_touch_in_the_bucket();
        let name = format!("gh-{STACK}");
        let group = format!("gatehouse-{STACK}-bastion");
        let r = self.admin_call("elbv2", "describe_load_balancers", json!({"Names": [name]}));
        let lb = r["LoadBalancers"][0]["LoadBalancerArn"]
            .as_str()
            .unwrap_or_else(|| panic!("no balancer: {r}"))
            .to_owned();
        let vpc = r["LoadBalancers"][0]["VpcId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let r = self.admin_call("elbv2", "describe_target_groups", json!({"Names": [name]}));
        let tg = r["TargetGroups"][0]["TargetGroupArn"]
            .as_str()
            .unwrap_or_else(|| panic!("no target group: {r}"))
            .to_owned();
        self.admin_call(
            "elbv2",
            "remove_tags",
            json!({"ResourceArns": [lb], "TagKeys": ["gatehouse:resource"]}),
        );
        self.needs("elasticloadbalancing:AddTags", &["apply"]);
        self.full(&["apply"]);
        self.admin_call(
            "elbv2",
            "modify_target_group",
            json!({"TargetGroupArn": tg, "HealthCheckPort": "22"}),
        );
        self.needs("elasticloadbalancing:ModifyTargetGroup", &["apply"]);
        self.full(&["apply"]);
        self.admin_call(
            "autoscaling",
            "update_auto_scaling_group",
            json!({"AutoScalingGroupName": group, "MaxSize": 9}),
        );
        self.needs("autoscaling:UpdateAutoScalingGroup", &["apply"]);
        self.full(&["apply"]);
        // The group moved to another target group: detach that one, attach the stack's.
        let r = self.admin_call(
            "elbv2",
            "create_target_group",
            json!({"Name": "not-the-stacks", "Protocol": "TCP", "Port": 22, "VpcId": vpc}),
        );
        let other = r["TargetGroups"][0]["TargetGroupArn"]
            .as_str()
            .unwrap_or_else(|| panic!("no target group: {r}"))
            .to_owned();
        self.admin_call(
            "autoscaling",
            "detach_load_balancer_target_groups",
            json!({"AutoScalingGroupName": group, "TargetGroupARNs": [tg]}),
        );
        self.admin_call(
            "autoscaling",
            "attach_load_balancer_target_groups",
            json!({"AutoScalingGroupName": group, "TargetGroupARNs": [other]}),
        );
        self.needs("autoscaling:DetachLoadBalancerTargetGroups", &["apply"]);
        self.needs("autoscaling:AttachLoadBalancerTargetGroups", &["apply"]);
        self.full(&["apply"]);
        self.admin_call(
            "autoscaling",
            "delete_tags",
            json!({"Tags": [{"ResourceId": group, "ResourceType": "auto-scaling-group",
                             "Key": "gatehouse:resource"}]}),
        );
        self.needs("autoscaling:CreateOrUpdateTags", &["apply"]);
        self.full(&["apply"]);
        assert_eq!(self.full(&["plan"]), format!("stack {STACK}: no changes\n"));
        // A new build: a new template version, made the default, then the roll: new replicas
        // first, healthy behind the balancer, then the old ones terminated through the group.
        stand_in_binary(binary, 3);
        for action in [
            "ec2:CreateLaunchTemplateVersion",
            "ec2:ModifyLaunchTemplate",
            "elasticloadbalancing:DescribeTargetHealth",
            "autoscaling:TerminateInstanceInAutoScalingGroup",
        ] {
            self.needs(action, &["apply"]);
        }
        self.full(&["apply"]);
        assert_eq!(self.full(&["plan"]), format!("stack {STACK}: no changes\n"));
    }

    /// The replicas' role, as apply wrote it, lets them read and write the shared listing
    /// (`aws.shared_snapshot`) and, through that statement, nothing else of the bucket: moto
    /// checks S3 calls against their ARNs, so this is the statement as AWS would enforce it.
    fn shared_listing_is_all_the_replicas_may_touch_in_the_bucket(&self) {
        let r = self.admin_call(
            "iam",
            "get_role_policy",
            json!({"RoleName": ROLE, "PolicyName": "gatehouse-bastion"}),
        );
        let document = match &r["PolicyDocument"] {
            Value::String(text) => serde_json::from_str(text).expect("policy JSON"),
            other => other.clone(),
        };
        let statement = document["Statement"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["Sid"] == "SharedListing"))
            .cloned()
            .unwrap_or_else(|| panic!("no SharedListing statement: {document:#}"));
        let r = self.admin(json!([{"op": "principal", "name": "replica-shared-listing",
            "policy": {"Version": "2012-10-17", "Statement": [statement]}}]));
        let replica = key_of(&r[0]);
        // One object of the stack's bucket, no wildcard.
        let resource = statement["Resource"].as_str().unwrap_or_default();
        let (bucket, object) = resource
            .strip_prefix("arn:aws:s3:::")
            .and_then(|r| r.split_once('/'))
            .unwrap_or_else(|| panic!("not an S3 object: {statement}"));
        assert!(
            bucket.starts_with(&format!("gatehouse-{STACK}-")) && !resource.contains('*'),
            "{statement}"
        );
        let (bucket, object) = (bucket.to_owned(), object.to_owned());
        let call = |method: &str, key: &str| {
            let mut args = json!({"Bucket": bucket, "Key": key});
            if method == "put_object" {
                args["Body"] = json!("{}");
            }
            fixture_as(
                self.topology,
                self.moto,
                Some(&replica),
                json!([{"op": "call", "service": "s3", "method": method, "args": args,
                        "may_fail": true}]),
            )
            .remove(0)
        };
        assert!(
            call("put_object", &object).get("error").is_none(),
            "write the listing"
        );
        assert_eq!(call("get_object", &object)["Body"], "{}", "read it back");
        for other in ["gatehouse/not-the-listing", "directory/other.json"] {
            assert_eq!(
                call("put_object", other)["error"],
                "AccessDenied",
                "{other}"
            );
        }
    }

    /// The stack's event queue: its URL and ARN.
    pub(crate) fn queue(&self) -> (String, String) {
        let r = self.admin(
            json!([{"op": "call", "service": "sqs", "method": "get_queue_url",
            "args": {"QueueName": QUEUE}}]),
        );
        let url = r[0]["QueueUrl"]
            .as_str()
            .unwrap_or_else(|| panic!("no queue: {r:?}"))
            .to_owned();
        let r = self.admin(
            json!([{"op": "call", "service": "sqs", "method": "get_queue_attributes",
            "args": {"QueueUrl": url, "AttributeNames": ["QueueArn"]}}]),
        );
        let arn = r[0]["Attributes"]["QueueArn"]
            .as_str()
            .unwrap_or_else(|| panic!("no queue ARN: {r:?}"))
            .to_owned();
        (url, arn)
    }
}

/// A stand-in for the gatehouse binary: an ELF header and `fill`.
pub(crate) fn stand_in_binary(path: &Path, fill: u8) {
    let mut bytes = b"\x7fELF\x02\x01\x01".to_vec();
    bytes.resize(64 * 1024, fill);
    std::fs::write(path, bytes).expect("write the stand-in binary");
}

/// The deployer's policy is minimal, not just sufficient: with any one of its actions removed,
/// one of plan, apply, output and destroy fails, naming the action. The walk goes with the
/// code's order: each run stops at the call it may not make, and the next run (that action
/// allowed again, the next one removed) carries on from there.
/// The actions an apply from empty calls, in its order (the walk removes each before the
/// call that needs it). The brownfield walk takes them less the VPC-building ones.
pub(crate) const APPLY_FROM_EMPTY: &[&str] = &[
    "ec2:CreateVpc",
    "ec2:ModifyVpcAttribute",
    "ec2:CreateTags",
    // moto's default group has no ingress rule: RevokeSecurityGroupIngress is walked below.
    "ec2:RevokeSecurityGroupEgress",
    "ec2:CreateSubnet",
    "ec2:CreateInternetGateway",
    "ec2:AttachInternetGateway",
    "ec2:AllocateAddress",
    "ec2:CreateNatGateway",
    "ec2:CreateRouteTable",
    "ec2:CreateRoute",
    "ec2:AssociateRouteTable",
    "ec2:CreateSecurityGroup",
    "ec2:AuthorizeSecurityGroupIngress",
    "s3:CreateBucket",
    "s3:PutBucketTagging",
    "s3:PutBucketPublicAccessBlock",
    "s3:PutEncryptionConfiguration",
    "s3:PutBucketPolicy",
    "s3:PutObject",
    "sqs:CreateQueue",
    "events:PutRule",
    "events:PutTargets",
    // (Tagged in the same call: logs:TagResource, which moto does not check there, is
    // walked by a repair below.)
    "logs:CreateLogGroup",
    "logs:PutRetentionPolicy",
    "iam:CreateRole",
    "iam:PutRolePolicy",
    "iam:CreateInstanceProfile",
    "iam:AddRoleToInstanceProfile",
    "ec2:RunInstances",
    "ec2:AssociateAddress",
    // The alarms last: the filters on the log group, the topic, its address, the alarms.
    "logs:PutMetricFilter",
    "sns:CreateTopic",
    "sns:Subscribe",
    "cloudwatch:PutMetricAlarm",
];

/// What scaling out (`replicas = 2`) adds, in the order apply calls it.
pub(crate) const SCALE_OUT: &[&str] = &[
    "ec2:CreateLaunchTemplate",
    "elasticloadbalancing:CreateTargetGroup",
    "elasticloadbalancing:ModifyTargetGroupAttributes",
    "elasticloadbalancing:CreateLoadBalancer",
    "elasticloadbalancing:ModifyLoadBalancerAttributes",
    "elasticloadbalancing:CreateListener",
    "autoscaling:CreateAutoScalingGroup",
];

#[test]
fn the_deployer_needs_every_action_it_is_granted() {
    let topology = Topology::new();
    let scratch = Scratch::new();
    let (moto, admin) = NsMoto::start_enforced_in(&topology.bastion);
    fixture_as(&topology, &moto, Some(&admin), logging_trail());
    let binary = scratch.path().join("gatehouse");
    stand_in_binary(&binary, 1);
    let spec = scratch.write("walk.toml", walk_spec(&binary).as_bytes());
    let printed = printed_policy(&topology, &moto, &spec);
    let policy = checkable_deployer(&printed["policy"]);
    let deployer = deployer(&topology, &moto, &admin, &spec);
    let mut walk = Walk::new(&topology, &moto, &admin, deployer, spec.clone(), policy);

    // apply from empty, in the order apply makes the calls.
    for action in APPLY_FROM_EMPTY {
        walk.needs(action, &["apply"]);
    }
    walk.full(&["apply"]);
    assert_eq!(walk.full(&["plan"]), format!("stack {STACK}: no changes\n"));

    // Scaled out (`replicas = 2`, a second zone): the single bastion goes, the replicas'
    // template, target group, balancer, listener and group come, in the order apply makes
    // the calls.
    std::fs::write(&spec, walk_spec_replicas(&binary)).expect("rewrite the spec");
    for action in SCALE_OUT {
        walk.needs(action, &["apply"]);
    }
    walk.full(&["apply"]);
    assert_eq!(walk.full(&["plan"]), format!("stack {STACK}: no changes\n"));

    // Every read, on the whole stack (plan reads all of it: the replicas' resources too).
    let reads: Vec<String> = printed["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| {
            a["commands"]
                .as_array()
                .is_some_and(|c| c.contains(&json!("plan")))
        })
        .map(|a| a["action"].as_str().expect("action").to_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(reads.len() >= 18, "{reads:?}");
    for action in &reads {
        walk.needs(action, &["plan"]);
    }

    // The replicas' repairs: drift made by the admin, which apply undoes.
    walk.scaled_out_repairs(&binary);
    // Back to one bastion: the replicas' resources go, the group first.
    std::fs::write(&spec, walk_spec(&binary)).expect("rewrite the spec");
    for action in [
        // The alarm on the replicas' health first: it would go off over the removal.
        "cloudwatch:DeleteAlarms",
        "autoscaling:DeleteAutoScalingGroup",
        "elasticloadbalancing:DeleteListener",
        "elasticloadbalancing:DeleteLoadBalancer",
        "elasticloadbalancing:DeleteTargetGroup",
        "ec2:DeleteLaunchTemplate",
    ] {
        walk.needs(action, &["apply"]);
    }
    walk.full(&["apply"]);
    assert_eq!(walk.full(&["plan"]), format!("stack {STACK}: no changes\n"));

    // Repairs: drift made by the admin, which apply undoes.
    let public = walk.id_of(
        "describe_route_tables",
        "RouteTables",
        "RouteTableId",
        "rt/public",
    );
    let private = walk.id_of(
        "describe_route_tables",
        "RouteTables",
        "RouteTableId",
        "rt/private",
    );
    let igw = walk.id_of(
        "describe_internet_gateways",
        "InternetGateways",
        "InternetGatewayId",
        "igw",
    );
    let nat = walk.id_of(
        "describe_nat_gateways",
        "NatGateways",
        "NatGatewayId",
        "nat/us-east-1a",
    );
    let bastion_sg = walk.id_of(
        "describe_security_groups",
        "SecurityGroups",
        "GroupId",
        "sg/bastion",
    );
    walk.admin(
        json!([{"op": "call", "service": "ec2", "method": "revoke_security_group_egress",
        "args": {"GroupId": bastion_sg, "IpPermissions": [
            {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}}]),
    );
    walk.needs("ec2:AuthorizeSecurityGroupEgress", &["apply"]);
    walk.full(&["apply"]);
    walk.admin(
        json!([{"op": "call", "service": "ec2", "method": "authorize_security_group_ingress",
        "args": {"GroupId": bastion_sg, "IpPermissions": [{"IpProtocol": "tcp", "FromPort": 2222,
            "ToPort": 2222, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}}]),
    );
    walk.needs("ec2:RevokeSecurityGroupIngress", &["apply"]);
    walk.full(&["apply"]);
    walk.admin(
        json!([{"op": "call", "service": "ec2", "method": "create_route", "args": {
        "RouteTableId": public, "DestinationCidrBlock": "10.99.0.0/16", "GatewayId": igw}}]),
    );
    walk.needs("ec2:DeleteRoute", &["apply"]);
    walk.full(&["apply"]);
    walk.admin(
        json!([{"op": "call", "service": "ec2", "method": "replace_route", "args": {
        "RouteTableId": public, "DestinationCidrBlock": "0.0.0.0/0", "NatGatewayId": nat}}]),
    );
    walk.needs("ec2:ReplaceRoute", &["apply"]);
    walk.full(&["apply"]);
    let r = walk.admin(
        json!([{"op": "call", "service": "ec2", "method": "describe_route_tables",
        "args": {"RouteTableIds": [public]}}]),
    );
    let association = r[0]["RouteTables"][0]["Associations"]
        .as_array()
        .and_then(|l| l.iter().find(|a| a["SubnetId"].is_string()))
        .and_then(|a| a["RouteTableAssociationId"].as_str())
        .unwrap_or_else(|| panic!("no subnet association: {r:?}"))
        .to_owned();
    walk.admin(
        json!([{"op": "call", "service": "ec2", "method": "replace_route_table_association",
        "args": {"AssociationId": association, "RouteTableId": private}}]),
    );
    walk.needs("ec2:ReplaceRouteTableAssociation", &["apply"]);
    walk.full(&["apply"]);
    let (queue_url, queue_arn) = walk.queue();
    walk.admin(
        json!([{"op": "call", "service": "sqs", "method": "set_queue_attributes", "args": {
        "QueueUrl": queue_url, "Attributes": {"MessageRetentionPeriod": "345600"}}}]),
    );
    walk.needs("sqs:SetQueueAttributes", &["apply"]);
    walk.full(&["apply"]);
    walk.admin(
        json!([{"op": "call", "service": "sqs", "method": "tag_queue", "args": {
        "QueueUrl": queue_url, "Tags": {"Name": "edited"}}}]),
    );
    walk.needs("sqs:TagQueue", &["apply"]);
    walk.full(&["apply"]);
    let r = walk.admin(
        json!([{"op": "call", "service": "events", "method": "describe_rule",
        "args": {"Name": RULE}}]),
    );
    let rule_arn = r[0]["Arn"]
        .as_str()
        .unwrap_or_else(|| panic!("no rule: {r:?}"))
        .to_owned();
    walk.admin(
        json!([{"op": "call", "service": "events", "method": "tag_resource", "args": {
        "ResourceARN": rule_arn, "Tags": [{"Key": "Name", "Value": "edited"}]}}]),
    );
    walk.needs("events:TagResource", &["apply"]);
    walk.full(&["apply"]);
    walk.admin(
        json!([{"op": "call", "service": "events", "method": "put_targets", "args": {
        "Rule": RULE, "Targets": [{"Id": "extra", "Arn": queue_arn}]}}]),
    );
    walk.needs("events:RemoveTargets", &["apply"]);
    walk.full(&["apply"]);
    let r = walk.admin(
        json!([{"op": "call", "service": "logs", "method": "describe_log_groups",
        "args": {"logGroupNamePrefix": AUDIT_GROUP}}]),
    );
    let group_arn = r[0]["logGroups"][0]["logGroupArn"]
        .as_str()
        .unwrap_or_else(|| panic!("no log group: {r:?}"))
        .to_owned();
    walk.admin(
        json!([{"op": "call", "service": "logs", "method": "tag_resource", "args": {
        "resourceArn": group_arn, "tags": {"Name": "edited"}}}]),
    );
    walk.needs("logs:TagResource", &["apply"]);
    walk.full(&["apply"]);
    walk.alarm_repairs();
    assert_eq!(walk.full(&["plan"]), format!("stack {STACK}: no changes\n"));

    // A new build replaces the bastion: the old one is terminated first.
    stand_in_binary(&binary, 2);
    walk.needs("ec2:TerminateInstances", &["apply"]);
    walk.full(&["apply"]);
    assert_eq!(walk.full(&["plan"]), format!("stack {STACK}: no changes\n"));

    // Without NAT: apply deletes the NAT gateway (before anything else).
    std::fs::write(
        &spec,
        walk_spec(&binary).replace("nat = \"single\"", "nat = \"none\""),
    )
    .expect("rewrite the spec");
    walk.needs("ec2:DeleteNatGateway", &["apply"]);
    walk.full(&["apply"]);

    // destroy, in its order; the host key exists, tagged, as the daemon creates it.
    walk.admin(
        json!([{"op": "call", "service": "ssm", "method": "put_parameter", "args": {
        "Name": PARAMETER, "Value": "key", "Type": "SecureString",
        "Tags": [{"Key": "gatehouse:stack", "Value": STACK}]}}]),
    );
    for action in [
        // (The alarms and the stray filter's removal were shown above.)
        "sns:DeleteTopic",
        "ec2:DisassociateAddress",
        "ec2:ReleaseAddress",
        "ec2:DisassociateRouteTable",
        "ec2:DeleteRouteTable",
        "ec2:DeleteSubnet",
        "ec2:DeleteSecurityGroup",
        "ec2:DetachInternetGateway",
        "ec2:DeleteInternetGateway",
        "ec2:DeleteVpc",
        "iam:RemoveRoleFromInstanceProfile",
        "iam:DeleteInstanceProfile",
        "iam:DeleteRolePolicy",
        "iam:DeleteRole",
        "s3:DeleteObject",
        "s3:DeleteBucket",
        "ssm:DeleteParameter",
        // (Its targets removed first: events:RemoveTargets, shown above.)
        "events:DeleteRule",
        "sqs:DeleteQueue",
    ] {
        walk.needs(action, &["destroy"]);
    }
    walk.full(&["destroy"]);
    // The audit log group stays; asked, destroy deletes it too.
    assert_eq!(
        leftovers(|ops| walk.admin(ops)),
        [format!("log-group {AUDIT_GROUP}")],
        "left after destroy"
    );
    walk.needs("logs:DeleteLogGroup", &["destroy", "--delete-audit-log"]);
    walk.full(&["destroy", "--delete-audit-log"]);
    assert_eq!(
        leftovers(|ops| walk.admin(ops)),
        Vec::<String>::new(),
        "left after destroy --delete-audit-log"
    );

    // Every action of the policy was shown needed, except those AWS checks inside another
    // call, which moto does not check (listed by `policy --json`; reviewed by hand).
    let unchecked: Vec<String> = printed["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| a["checked_inside_another_call"] == json!(true))
        .map(|a| a["action"].as_str().expect("action").to_owned())
        .collect();
    assert_eq!(
        unchecked,
        [
            "iam:PassRole",
            "iam:CreateServiceLinkedRole",
            "iam:TagRole",
            "iam:TagInstanceProfile"
        ],
        "{printed:#}"
    );
    let mut shown = walk.shown.clone();
    shown.extend(unchecked);
    shown.sort();
    // (ec2:CreateTags is granted by three statements: on create, on the stack's resources,
    // onto the default group.)
    let mut granted = actions_of(&walk.policy);
    granted.dedup();
    assert_eq!(shown, granted, "each action shown needed, once");
}

/// The oldest C library of the images the README supports for the bastion: Amazon Linux 2023
/// (glibc 2.34); Debian 12 (2.36), Ubuntu 22.04 (2.35) and 24.04 (2.39) are newer.
const OLDEST_SUPPORTED_GLIBC: (u32, u32) = (2, 34);

/// The binary `cargo build -p gatehouse` makes (the README's build command, in release) needs
/// only the C runtime every supported image has, at a version the oldest one provides: no
/// OpenSSL or other library to install on the bastion.
#[test]
fn the_gatehouse_binary_needs_only_what_the_supported_images_have() {
    let readelf = |args: &[&str]| {
        let mut cmd = Command::new("readelf");
        cmd.args(args).arg(gatehouse_bin());
        let out = run_with_timeout(cmd, Duration::from_secs(60));
        out.expect_success("readelf");
        out.stdout_str()
    };
    let needed: Vec<String> = readelf(&["-d", "-W"])
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| {
            l.split('[')
                .nth(1)
                .map(|s| s.trim_end_matches(']').to_owned())
        })
        .collect();
    assert!(!needed.is_empty(), "a dynamically linked binary");
    for library in &needed {
        assert!(
            [
                "libc.so.6",
                "libm.so.6",
                "libgcc_s.so.1",
                "ld-linux-x86-64.so.2",
                "ld-linux-aarch64.so.1",
            ]
            .contains(&library.as_str()),
            "the bastion would need {library} installed: {needed:?}"
        );
    }
    let symbols = readelf(&["--dyn-syms", "-W"]);
    let newest = symbols
        .split("GLIBC_")
        .skip(1)
        .filter_map(|rest| {
            let version: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .max()
        .expect("versioned glibc symbols");
    assert!(
        newest <= OLDEST_SUPPORTED_GLIBC,
        "the binary needs glibc {}.{}; the oldest supported image has {}.{}",
        newest.0,
        newest.1,
        OLDEST_SUPPORTED_GLIBC.0,
        OLDEST_SUPPORTED_GLIBC.1
    );
}

/// One line of every audit event the operator's views count, written by the daemon's own
/// writer (`gatehouse_ssh::audit`): 3 failed logins, a login, 10 refusals and a summary
/// standing for 15 more, 2 key pushes, a failed push and another tunnel refusal, a tunnel
/// closed, a stale and a fresh directory.
fn daemon_audit_lines() -> Vec<String> {
    use gatehouse_ssh::audit::{Audit, Event, SourceCount};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let audit = Audit::file(&path).expect("audit file");
    let source: std::net::SocketAddr = "198.51.100.7:50000".parse().expect("addr");
    let dial: std::net::SocketAddr = "10.0.3.10:22".parse().expect("addr");
    for reason in ["unknown_key", "unknown_user", "directory_stale"] {
        audit.record(Event::AuthFailure {
            session: "s1",
            user: "alice",
            method: "publickey",
            key: None,
            source,
            reason,
        });
    }
    audit.record(Event::AuthSuccess {
        session: "s2",
        user: "alice",
        key: "SHA256:x",
        source,
    });
    for _ in 0..10 {
        audit.record(Event::ConnectionRefused {
            session: None,
            source,
            reason_code: "evicted",
            reason: "slot taken",
        });
    }
    audit.record(Event::ConnectionRefusedSummary {
        reason_code: "evicted",
        count: 25,
        itemized: 10,
        summarized: 15,
        interval_s: 10,
        sources: 1,
        top_sources: vec![SourceCount {
            source: "198.51.100.7",
            count: 25,
        }],
    });
    let users = ["ghtest".to_owned()];
    for _ in 0..2 {
        audit.record(Event::KeyPushed {
            session: "s2",
            user: "alice",
            host: "jupyter",
            os_users: &users,
            key: "SHA256:x",
            duration_ms: 40,
        });
    }
    for reason_code in ["key_push_failed", "not_allowed"] {
        audit.record(Event::TunnelDeny {
            session: "s2",
            user: "alice",
            target: "jupyter",
            port: 22,
            reason_code,
            reason: "no",
        });
    }
    audit.record(Event::TunnelClose {
        session: "s2",
        tunnel: 1,
        user: "alice",
        host: "jupyter",
        dial,
        bytes_up: 100,
        bytes_down: 2000,
        duration_ms: 5,
        reason: "client closed",
    });
    audit.record(Event::DirectoryStale { age_s: 400 });
    audit.record(Event::DirectoryFresh { stale_s: 60 });
    let lines: Vec<String> = std::fs::read_to_string(&path)
        .expect("read")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 22);
    lines
}

/// The metric filters gatehouse-vpc puts on the audit log group count the audit lines this
/// daemon writes, each event kind as meant (moto never evaluates filters). The refusals add
/// up to every refusal once, the summarized ones included.
#[test]
fn the_stacks_metric_filters_count_the_daemons_own_audit_lines() {
    let lines = daemon_audit_lines();
    let filters: Vec<Filter> = gatehouse_vpc::plan::alarms::desired_filters("lab")
        .into_iter()
        .map(|f| Filter {
            name: f.name,
            pattern: f.pattern,
            metric: f.metric,
            value: f.value,
        })
        .collect();
    for (metric, want) in [
        ("FailedLogins", 3.0),
        ("Refusals", 25.0),
        ("KeyPushes", 2.0),
        ("KeyPushFailures", 1.0),
        ("DirectoryStale", 1.0),
    ] {
        assert_eq!(metric_sum(&filters, metric, &lines), want, "{metric}");
    }
    // Every filter counts something: none names an event or field the daemon never writes.
    for f in &filters {
        assert!(
            lines.iter().any(|l| f.matches(l)),
            "{} matches no line",
            f.name
        );
    }
}

/// The README's CloudWatch Logs Insights queries name events and fields the daemon writes:
/// each query's `filter` selects some of the daemon's lines, and every field it groups by,
/// sums or reads is in them. (moto has no Insights: the queries themselves are not run.)
#[test]
fn the_readmes_insights_queries_name_what_the_daemon_writes() {
    let lines: Vec<Value> = daemon_audit_lines()
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let readme = include_str!("../README.md");
    let start = readme
        .find("CloudWatch Logs\n  Insights")
        .expect("the queries' paragraph");
    let block = &readme[start..];
    let block = &block[block.find("```text\n").expect("block") + 8..];
    let block = &block[..block.find("```").expect("block end")];
    // One query per line, continuation lines (`  | ...`) joined.
    let mut queries: Vec<String> = Vec::new();
    for line in block.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match queries.last_mut() {
            Some(q) if line.starts_with('|') => q.push_str(&format!(" {line}")),
            _ => queries.push(line.to_owned()),
        }
    }
    assert_eq!(queries.len(), 3, "{queries:#?}");
    for query in &queries {
        let selects = |event: &str| {
            if let Some(rest) = query.strip_prefix("filter event = \"") {
                event == &rest[..rest.find('"').expect("quote")]
            } else if let Some(rest) = query.strip_prefix("filter event like /^") {
                let prefix = rest[..rest.find('/').expect("slash")].replace('\\', "");
                event.starts_with(&prefix)
            } else {
                panic!("a query this test does not read: {query}")
            }
        };
        let selected: Vec<&Value> = lines
            .iter()
            .filter(|l| selects(l["event"].as_str().unwrap_or_default()))
            .collect();
        assert!(
            !selected.is_empty(),
            "{query} selects no line of the daemon's"
        );
        // The fields: after `by`, inside sum(...) and coalesce(...).
        let mut fields: Vec<String> = Vec::new();
        for part in query.split('|') {
            if let Some(by) = part.split(" by ").nth(1) {
                fields.extend(by.split(',').map(|f| f.trim().to_owned()));
            }
            for call in ["sum(", "coalesce("] {
                for piece in part.split(call).skip(1) {
                    let arg = piece.split([')', ',']).next().unwrap_or_default().trim();
                    fields.push(arg.to_owned());
                }
            }
        }
        fields.retain(|f| f != "n" && !f.is_empty());
        assert!(!fields.is_empty(), "{query}");
        for field in &fields {
            assert!(
                selected.iter().any(|l| l.get(field).is_some()),
                "{query}: no line it selects has {field:?}"
            );
        }
    }
    // And the refusals query's sum, done by hand, counts every refusal once.
    let refused: f64 = lines
        .iter()
        .filter(|l| {
            l["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("connection.refused"))
        })
        .map(|l| l["summarized"].as_f64().unwrap_or(1.0))
        .sum();
    assert_eq!(refused, 25.0);
}
