//! The VPC spec (`config/vpc.toml`): parse, reject unknown keys, validate, all before any AWS
//! call. Every error names the file, line and column of the value it concerns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Deserialize;
use toml::Spanned;

use crate::existing::NetworkFacts;
use network::NetworkOut;

mod network;

/// Largest user data EC2 accepts (before base64), in bytes.
pub const MAX_USER_DATA_BYTES: usize = 16 * 1024;
/// Instance type of the bastion when the spec names none.
pub const DEFAULT_BASTION_INSTANCE_TYPE: &str = "t3.micro";
/// Instance type of a private host when the spec names none.
pub const DEFAULT_HOST_INSTANCE_TYPE: &str = "t3.medium";
/// Ports opened from the bastion to private hosts when the spec names none.
pub const DEFAULT_PRIVATE_PORTS: &[u16] = &[22];
/// How long the audit log group keeps the bastions' audit lines when the spec says nothing
/// (`[bastion] audit_retention_days`): a year.
pub const DEFAULT_AUDIT_RETENTION_DAYS: i32 = 365;
/// The most bastions `[bastion] replicas` asks for (an Auto Scaling group of them).
pub const MAX_REPLICAS: u32 = 20;
/// Failed login attempts in five minutes, over the whole stack, that raise its alarm when
/// the spec says nothing (`[alerts] failed_logins`). A user whose agent offers three keys
/// before the right one makes two; a password-guessing bot makes thousands.
pub const DEFAULT_FAILED_LOGINS_ALARM: u32 = 100;
/// Connections refused before authentication in five minutes that raise the stack's alarm
/// when the spec says nothing (`[alerts] refusals`): a flood, not a scanner's visit.
pub const DEFAULT_REFUSALS_ALARM: u32 = 1000;
/// The most `[alerts] emails` (SNS allows more; a page that reaches 20 people is a list).
pub const MAX_ALERT_EMAILS: usize = 20;
/// The retentions CloudWatch Logs accepts (PutRetentionPolicy's `retentionInDays`), in days.
pub const AUDIT_RETENTION_DAYS: &[i32] = &[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

/// One problem found in a spec, located in its source text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecIssue {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// A spec that cannot be used; lists every problem found.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file was read but is not a valid spec.
    #[error("{}", render_issues(.path, .issues))]
    Invalid {
        path: String,
        issues: Vec<SpecIssue>,
    },
}

impl SpecError {
    /// The messages without locations (for tests and JSON).
    pub fn messages(&self) -> Vec<String> {
        match self {
            SpecError::Read { source, .. } => vec![source.to_string()],
            SpecError::Invalid { issues, .. } => issues.iter().map(|i| i.message.clone()).collect(),
        }
    }
}

fn render_issues(path: &str, issues: &[SpecIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("{path}:{}:{}: {}", i.line, i.col, i.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// NAT for outbound traffic of the private subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NatMode {
    /// No NAT: private subnets have no route to the internet.
    None,
    /// One NAT gateway (in the first public subnet) for all private subnets.
    #[default]
    Single,
    /// One NAT gateway per availability zone that has private subnets.
    PerAz,
}

/// Whether a subnet routes to the internet gateway (public) or through NAT (private).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Public,
    Private,
}

/// The raw spec as written; see `config/vpc.toml` for a commented example.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    pub stack: RawStack,
    pub vpc: Spanned<RawVpc>,
    /// Extra tags put on every resource (like the Terraform module's `tags`).
    #[serde(default)]
    pub tags: BTreeMap<Spanned<String>, String>,
    pub subnets: Vec<RawSubnet>,
    pub bastion: RawBastion,
    #[serde(default)]
    pub private: Option<RawPrivate>,
    #[serde(default)]
    pub hosts: Vec<RawHost>,
    /// Who hears of the stack's alarms, and when they go off.
    #[serde(default)]
    pub alerts: Option<RawAlerts>,
}

/// `[alerts]`: the email addresses the stack's alarm topic sends to, and the thresholds of
/// the alarms that have one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    #[serde(default)]
    pub emails: Vec<Spanned<String>>,
    pub failed_logins: Option<Spanned<i64>>,
    pub refusals: Option<Spanned<i64>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStack {
    /// Stack name: the value of the `gatehouse:stack` tag on every resource.
    pub name: Spanned<String>,
    /// AWS region; falls back to `AWS_REGION` / `AWS_DEFAULT_REGION`.
    pub region: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVpc {
    /// A new VPC the stack creates and owns ...
    pub cidr: Option<Spanned<Ipv4Net>>,
    /// ... or an existing one: its id, `default` or its `Name` tag (see [`Network`]).
    pub id: Option<Spanned<String>>,
    /// The zones subnets may use; optional with `id` (then the subnets' own zones).
    pub azs: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub nat: NatMode,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubnet {
    pub name: Spanned<String>,
    pub tier: Tier,
    /// A subnet the stack creates and owns: its CIDR and zone ...
    pub cidr: Option<Spanned<Ipv4Net>>,
    pub az: Option<Spanned<String>>,
    /// ... or, with `[vpc] id`, an existing subnet of that VPC: its id or `Name` tag.
    pub id: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBastion {
    pub subnet: Spanned<String>,
    pub ami: Spanned<String>,
    pub instance_type: Option<Spanned<String>>,
    pub allowed_cidrs: Spanned<Vec<Spanned<Ipv4Net>>>,
    #[serde(default)]
    pub allow_world: bool,
    /// Where instances download the binary from (the user publishes it) ...
    pub gatehouse_download_url: Option<Spanned<String>>,
    pub gatehouse_sha256: Option<Spanned<String>>,
    /// ... or a local file that `apply` stores in the stack's own bucket (one of the two).
    pub gatehouse_binary: Option<Spanned<String>>,
    /// `[bastion.daemon]`: daemon settings (`[limits]`, `[penalties]`, `[audit]`, `[metrics]`,
    /// `[aws]` refresh and IAM filters ...) merged into the config gatehouse-vpc writes.
    pub daemon: Option<Spanned<toml::Table>>,
    /// `iam_events = true`: the bastion hears of IAM changes within seconds instead of at its
    /// next IAM sweep. apply creates, in `us-east-1` (where IAM's events arrive), the SQS queue
    /// `gatehouse-<stack>-iam-events` and the EventBridge rule `gatehouse-<stack>-iam-changes`
    /// that puts the IAM calls changing who may log in on it, writes
    /// `aws.events_queue_url` into the daemon config and lets the role receive from the
    /// queue. Off by default: EventBridge sees IAM's calls only through a CloudTrail trail
    /// (logging, recording management write events, multi-region or in `us-east-1` with
    /// global service events), which this stack does not create and `plan` requires. Turned
    /// off, apply removes the queue and the rule. Either way the bastion is replaced (its
    /// config changes).
    pub iam_events: Option<Spanned<bool>>,
    /// `audit_retention_days`: how long the stack's audit log group
    /// (`/gatehouse/<stack>/audit`, where the bastion ships every audit line) keeps them: one of
    /// the values CloudWatch Logs accepts ([`AUDIT_RETENTION_DAYS`]); default
    /// [`DEFAULT_AUDIT_RETENTION_DAYS`]. The group outlives the stack: `destroy` leaves it
    /// (`destroy --delete-audit-log` deletes it).
    pub audit_retention_days: Option<Spanned<i64>>,
    /// `replicas`: how many bastions. 1 (the default): one instance in `subnet` with an
    /// Elastic IP. 2 to [`MAX_REPLICAS`]: an Auto Scaling group over every public subnet (at
    /// least two availability zones) behind an internet-facing Network Load Balancer, which
    /// passes the client's address in PROXY protocol v2; one stable name, the balancer's.
    pub replicas: Option<Spanned<i64>>,
    /// `fixed_addresses = true` (with `replicas` >= 2): an Elastic IP per availability zone
    /// for the balancer, for customers' allow-lists. Default false (AWS picks the addresses;
    /// the DNS name is the stable thing).
    pub fixed_addresses: Option<Spanned<bool>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrivate {
    pub ports: Spanned<Vec<Spanned<u16>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    pub name: Spanned<String>,
    pub subnet: Spanned<String>,
    pub ami: Spanned<String>,
    pub instance_type: Option<Spanned<String>>,
    pub groups: Spanned<Vec<Spanned<String>>>,
    pub ports: Option<Spanned<Vec<Spanned<u16>>>>,
    pub private_ip: Option<Spanned<Ipv4Addr>>,
    pub login: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A validated spec: every invariant below holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Spec {
    pub stack: String,
    pub region: String,
    /// Whether the stack creates its VPC or is placed into an existing one.
    pub network: Network,
    /// The VPC's (primary) CIDR: the spec's, or the existing VPC's once resolved.
    pub vpc_cidr: Ipv4Net,
    pub azs: Vec<String>,
    pub nat: NatMode,
    pub tags: BTreeMap<String, String>,
    pub subnets: Vec<Subnet>,
    pub bastion: Bastion,
    pub private_ports: Vec<u16>,
    pub hosts: Vec<Host>,
    pub alerts: Alerts,
    /// What the spec allows but its author probably did not mean (a binary with debug info);
    /// `plan` and `apply` print them.
    pub warnings: Vec<String>,
}

/// `[alerts]`, validated.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Alerts {
    /// Subscribed to the stack's alarm topic (each confirms by the email AWS sends).
    pub emails: Vec<String>,
    /// Failed login attempts in five minutes that raise the alarm.
    pub failed_logins: u32,
    /// Connections refused before authentication in five minutes that raise the alarm.
    pub refusals: u32,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Subnet {
    pub name: String,
    pub tier: Tier,
    pub cidr: Ipv4Net,
    pub az: String,
    /// An existing subnet (`id` in the spec): its id once resolved (the spec's value before),
    /// never created, tagged or re-associated by the stack. `None`: the stack creates it.
    pub existing: Option<String>,
}

impl Subnet {
    /// The stack creates (and owns) this subnet.
    pub fn created(&self) -> bool {
        self.existing.is_none()
    }
}

/// Where the stack's network comes from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Network {
    /// `[vpc] cidr`: the stack creates the VPC, its internet gateway, NAT and every subnet.
    Create,
    /// `[vpc] id`: an existing VPC. The stack creates only the subnets the spec describes by
    /// CIDR (with their route tables and NAT) and never changes anything else of it.
    Existing {
        reference: crate::existing::Reference,
        /// What the reference resolved to; `None` until the network was read from AWS
        /// ([`load_resolved`]). The planner refuses an unresolved spec.
        found: Option<FoundNetwork>,
    },
}

/// The existing VPC a brownfield spec resolved to.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FoundNetwork {
    pub vpc_id: String,
    /// Its internet gateway, the target of the public subnets the stack creates.
    pub internet_gateway: Option<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Bastion {
    pub subnet: String,
    pub ami: String,
    pub instance_type: String,
    pub allowed_cidrs: Vec<Ipv4Net>,
    pub binary: Binary,
    /// The spec's `[bastion.daemon]` table (empty if none); see `userdata::daemon_config`.
    pub daemon: toml::Table,
    /// `iam_events`: the stack provisions the IAM change-event queue and rule, and the
    /// daemon reads the queue.
    pub iam_events: bool,
    /// `iam_events` is not in the spec: `plan` and `apply` turn it on when the account has a
    /// CloudTrail trail that delivers IAM's events to `us-east-1`, and say which trail, or why
    /// none does ([`Spec::decide_iam_events`]). An explicit `false` stays off.
    pub iam_events_auto: bool,
    /// `audit_retention_days`: the audit log group's retention, one of
    /// [`AUDIT_RETENTION_DAYS`].
    pub audit_retention_days: i32,
    /// `replicas`: 1, or 2 to [`MAX_REPLICAS`] behind a Network Load Balancer.
    pub replicas: u32,
    /// `fixed_addresses`: an Elastic IP per availability zone for the balancer.
    pub fixed_addresses: bool,
}

impl Bastion {
    /// More than one bastion: an Auto Scaling group behind a Network Load Balancer.
    pub fn scaled_out(&self) -> bool {
        self.replicas > 1
    }

    /// `gatehouse login` is on (`[bastion.daemon.sso]`): the stack keeps the CA key in SSM.
    pub fn sso(&self) -> bool {
        self.daemon.contains_key("sso")
    }
}

/// Where the bastion gets its gatehouse binary at boot.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Binary {
    /// `gatehouse_download_url`: an https URL the user publishes, checked against
    /// `gatehouse_sha256` when given.
    Url { url: String, sha256: Option<String> },
    /// `gatehouse_binary`: a local file. `apply` stores it in the stack's bucket as
    /// `gatehouse/<sha256>`; the bastion fetches it with its role and checks the SHA-256,
    /// which is read from the file when the spec is loaded (so `plan` knows it).
    Stored {
        path: std::path::PathBuf,
        sha256: String,
        size: u64,
    },
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Host {
    pub name: String,
    pub subnet: String,
    pub ami: String,
    pub instance_type: String,
    pub groups: Vec<String>,
    pub ports: Vec<u16>,
    pub private_ip: Option<Ipv4Addr>,
    /// OS users the bastion pushes a user's key for (EC2 Instance Connect), as the daemon
    /// reads them from the login tag; empty: none.
    pub login: Vec<String>,
}

impl Spec {
    /// The subnet a name refers to (validated specs only refer to existing subnets).
    pub fn subnet(&self, name: &str) -> Option<&Subnet> {
        self.subnets.iter().find(|s| s.name == name)
    }

    /// Public subnets in spec order.
    pub fn public_subnets(&self) -> impl Iterator<Item = &Subnet> {
        self.subnets.iter().filter(|s| s.tier == Tier::Public)
    }

    /// Private subnets in spec order.
    pub fn private_subnets(&self) -> impl Iterator<Item = &Subnet> {
        self.subnets.iter().filter(|s| s.tier == Tier::Private)
    }

    /// The stack creates its VPC (and the internet gateway).
    pub fn builds_vpc(&self) -> bool {
        self.network == Network::Create
    }

    /// The existing VPC a brownfield spec names (its reference as written), or `None`.
    pub fn existing_vpc(&self) -> Option<&crate::existing::Reference> {
        match &self.network {
            Network::Create => None,
            Network::Existing { reference, .. } => Some(reference),
        }
    }

    /// A brownfield spec whose network has not been read yet: the planner refuses it.
    pub fn unresolved(&self) -> bool {
        matches!(self.network, Network::Existing { found: None, .. })
    }

    /// Decide an unset `iam_events` from the account's trails (`trails`: the trail that
    /// delivers IAM's events, or why none does); returns what `plan` and `apply` tell the
    /// user. An explicit setting is kept and `None` returned. A region outside `us-east-1`'s
    /// partition has no IAM events to hear: off.
    pub fn decide_iam_events(&mut self, trails: Option<Result<&str, String>>) -> Option<String> {
        if !self.bastion.iam_events_auto {
            return None;
        }
        let (on, why) = match trails {
            None => (
                false,
                format!(
                    "IAM's events arrive in {}, outside this region's partition",
                    gatehouse_aws::events::IAM_EVENTS_REGION
                ),
            ),
            Some(Ok(trail)) => (
                true,
                format!(
                    "CloudTrail trail {trail} delivers IAM's calls to EventBridge in {}",
                    gatehouse_aws::events::IAM_EVENTS_REGION
                ),
            ),
            Some(Err(found)) => (
                false,
                format!(
                    "no CloudTrail trail delivers IAM's calls to EventBridge in {}. {}",
                    gatehouse_aws::events::IAM_EVENTS_REGION,
                    found.trim_end_matches('.')
                ),
            ),
        };
        self.bastion.iam_events = on;
        Some(format!(
            "iam_events (not set in the spec): {}: {why}{}",
            if on { "on" } else { "off" },
            if on {
                "; set iam_events = false to keep it off"
            } else {
                "; revocations wait for the IAM sweep"
            }
        ))
    }

    /// The stack creates at least one subnet (and so route tables).
    pub fn creates_subnets(&self) -> bool {
        self.subnets.iter().any(Subnet::created)
    }
}

/// A file's SHA-256 and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileDigest {
    pub sha256: [u8; 32],
    pub size: u64,
    /// It has DWARF debug info (a `.debug_info` section): the release profile's line tables,
    /// most of a 400 MB file that every bastion fetches at boot.
    pub debug_info: bool,
}

/// The name of the section that marks a binary built with debug info, as the section name
/// table holds it.
const DEBUG_INFO_SECTION: &[u8] = b".debug_info\0";

impl FileDigest {
    /// The SHA-256 in hex, as the spec, the object key and the user data name it.
    pub fn hex(&self) -> String {
        crate::digest::hex(&self.sha256)
    }
}

/// SHA-256 and size of a gatehouse binary, which must be an ELF executable.
pub fn file_digest(path: &std::path::Path) -> Result<FileDigest, String> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    let mut head: Vec<u8> = Vec::with_capacity(4);
    // The name may straddle two reads: the end of the last one is searched with the next.
    let mut window: Vec<u8> = Vec::with_capacity(buf.len() + DEBUG_INFO_SECTION.len());
    let mut debug_info = false;
    loop {
        let n = file.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        if head.len() < 4 {
            head.extend(buf[..n].iter().take(4 - head.len()));
        }
        if !debug_info {
            window.extend_from_slice(&buf[..n]);
            debug_info = window
                .windows(DEBUG_INFO_SECTION.len())
                .any(|w| w == DEBUG_INFO_SECTION);
            let keep = DEBUG_INFO_SECTION.len() - 1;
            let cut = window.len().saturating_sub(keep);
            window.drain(..cut);
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    if head != b"\x7fELF" {
        return Err(
            "not an ELF executable (build it with `cargo build --profile dist --locked -p gatehouse`)"
                .into(),
        );
    }
    Ok(FileDigest {
        sha256: hasher.finalize().into(),
        size,
        debug_info,
    })
}

/// Whether loading a spec reads its `gatehouse_binary` (plan and apply need its digest;
/// destroy and output must work after the build is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBinary {
    Yes,
    No,
}

/// The digest a stored binary carries when the spec was loaded with [`ReadBinary::No`]; the
/// planner refuses it.
pub const UNREAD_SHA256: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Read and validate a spec file. `env_region` is used when the spec names no region. A
/// brownfield spec (`[vpc] id`) comes back unresolved: [`Spec::unresolved`], fine for
/// `policy`, `output` and `destroy`; `plan` and `apply` read its network and call
/// [`load_resolved`].
pub fn load(
    path: &std::path::Path,
    env_region: Option<&str>,
    binary: ReadBinary,
) -> Result<Spec, SpecError> {
    load_resolved(path, env_region, binary, None)
}

/// [`load`], resolving a brownfield spec's references against `facts` (what
/// `aws::observe_network` read for [`Spec::existing_vpc`]): every check that needs the
/// existing network (a public subnet's route, overlaps, zones) runs here, and its problems are
/// located in the file like any other.
pub fn load_resolved(
    path: &std::path::Path,
    env_region: Option<&str>,
    binary: ReadBinary,
    facts: Option<&NetworkFacts>,
) -> Result<Spec, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_in(
        &path.display().to_string(),
        &text,
        env_region,
        binary,
        facts,
    )
}

/// Parse and validate spec text, reading its binary. `origin` names it in error messages and
/// is the folder a relative `gatehouse_binary` is found in.
pub fn parse(origin: &str, text: &str, env_region: Option<&str>) -> Result<Spec, SpecError> {
    parse_with(origin, text, env_region, ReadBinary::Yes)
}

/// [`parse`], reading the binary or not.
pub fn parse_with(
    origin: &str,
    text: &str,
    env_region: Option<&str>,
    binary: ReadBinary,
) -> Result<Spec, SpecError> {
    parse_in(origin, text, env_region, binary, None)
}

/// [`parse_with`], resolving a brownfield spec against `facts` (see [`load_resolved`]).
pub fn parse_in(
    origin: &str,
    text: &str,
    env_region: Option<&str>,
    binary: ReadBinary,
    facts: Option<&NetworkFacts>,
) -> Result<Spec, SpecError> {
    let mut v = Validator {
        text,
        issues: Vec::new(),
        warnings: Vec::new(),
        binary,
    };
    let raw: RawSpec = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            v.push(offset, e.message().trim().to_string());
            return Err(v.into_error(origin));
        }
    };
    let spec = v.validate(raw, env_region, origin, facts);
    match spec {
        Some(spec) if v.issues.is_empty() => Ok(spec),
        _ => Err(v.into_error(origin)),
    }
}

struct Validator<'a> {
    text: &'a str,
    issues: Vec<SpecIssue>,
    /// What is allowed but probably not meant (see [`Spec::warnings`]).
    warnings: Vec<String>,
    binary: ReadBinary,
}

impl Validator<'_> {
    fn push(&mut self, offset: usize, message: String) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        self.issues.push(SpecIssue { line, col, message });
    }

    fn at<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.push(at.span().start, message.into());
    }

    fn into_error(mut self, origin: &str) -> SpecError {
        self.issues.sort_by_key(|i| (i.line, i.col));
        SpecError::Invalid {
            path: origin.to_string(),
            issues: self.issues,
        }
    }

    fn validate(
        &mut self,
        raw: RawSpec,
        env_region: Option<&str>,
        origin: &str,
        facts: Option<&NetworkFacts>,
    ) -> Option<Spec> {
        let stack = raw.stack.name.get_ref().clone();
        if !is_name(&stack, 28) {
            self.at(
                &raw.stack.name,
                format!(
                    "stack name {stack:?} must be 1-28 of a-z, 0-9, '-', starting with a letter"
                ),
            );
        }
        let region = match (&raw.stack.region, env_region) {
            (Some(r), _) => {
                if !is_region(r.get_ref()) {
                    self.at(
                        r,
                        format!(
                            "region {:?} is not a region name like eu-central-1",
                            r.get_ref()
                        ),
                    );
                }
                r.get_ref().clone()
            }
            (None, Some(r)) if is_region(r) => r.to_string(),
            (None, Some(r)) => {
                self.at(
                    &raw.stack.name,
                    format!("region {r:?} from the environment is not a region name"),
                );
                r.to_string()
            }
            (None, None) => {
                self.at(
                    &raw.stack.name,
                    "no region: set [stack] region or AWS_REGION",
                );
                String::new()
            }
        };

        // Tags
        let mut tags = BTreeMap::new();
        if raw.tags.len() > 40 {
            if let Some((k, _)) = raw.tags.iter().next() {
                self.at(k, "at most 40 tags (AWS allows 50 and gatehouse uses some)");
            }
        }
        for (k, val) in &raw.tags {
            let key = k.get_ref();
            let lower = key.to_ascii_lowercase();
            if lower.starts_with("aws:") || lower.starts_with("gatehouse:") || key == "Name" {
                self.at(
                    k,
                    format!("tag {key:?} is reserved (aws:*, gatehouse:*, Name)"),
                );
            } else if key.is_empty() || key.chars().count() > 127 || val.chars().count() > 255 {
                self.at(
                    k,
                    format!("tag {key:?}: key must be 1-127 characters, value at most 255"),
                );
            }
            tags.insert(key.clone(), val.clone());
        }

        let NetworkOut {
            network,
            vpc_cidr,
            azs,
            subnets,
            resolved,
        } = self.network(&raw, &region, facts);

        // Bastion
        let b = &raw.bastion;
        match subnets.iter().find(|s| &s.name == b.subnet.get_ref()) {
            None => self.at(
                &b.subnet,
                format!(
                    "bastion subnet {:?} is not defined in [[subnets]]",
                    b.subnet.get_ref()
                ),
            ),
            Some(s) if s.tier != Tier::Public => self.at(
                &b.subnet,
                format!("bastion subnet {:?} must be public", b.subnet.get_ref()),
            ),
            Some(_) => {}
        }
        self.check_ami(&b.ami);
        let instance_type = self.instance_type(&b.instance_type, DEFAULT_BASTION_INSTANCE_TYPE);
        if b.allowed_cidrs.get_ref().is_empty() {
            self.at(
                &b.allowed_cidrs,
                "bastion allowed_cidrs is empty: nobody could reach the bastion",
            );
        }
        let mut allowed = Vec::new();
        for c in b.allowed_cidrs.get_ref() {
            let cidr = *c.get_ref();
            if cidr.prefix_len() == 0 && !b.allow_world {
                self.at(c, "allowed_cidrs contains 0.0.0.0/0 (the whole internet); set allow_world = true to mean it");
            }
            if cidr != cidr.trunc() {
                self.at(
                    c,
                    format!(
                        "allowed cidr {cidr} has host bits set (did you mean {}?)",
                        cidr.trunc()
                    ),
                );
            }
            allowed.push(cidr);
        }
        let binary = self.check_binary(b, origin);
        let iam_events = b.iam_events.as_ref().is_some_and(|e| *e.get_ref());
        // Not set: on when the account has a trail that delivers IAM's events (plan and
        // apply read the trails and decide; see `Bastion::iam_events_auto`).
        let iam_events_auto = b.iam_events.is_none();
        if let Some(flag) = b.iam_events.as_ref().filter(|_| iam_events) {
            let here = crate::names::partition(&region);
            let there = crate::names::partition(gatehouse_aws::events::IAM_EVENTS_REGION);
            if !region.is_empty() && here != there {
                self.at(
                    flag,
                    format!(
                        "iam_events: IAM's events arrive in {}, in partition {there}; region \
                         {region} is in partition {here}",
                        gatehouse_aws::events::IAM_EVENTS_REGION
                    ),
                );
            }
        }

        let audit_retention_days = match &b.audit_retention_days {
            None => DEFAULT_AUDIT_RETENTION_DAYS,
            Some(days) => {
                let accepted = i32::try_from(*days.get_ref())
                    .ok()
                    .filter(|d| AUDIT_RETENTION_DAYS.contains(d));
                accepted.unwrap_or_else(|| {
                    let listed: Vec<String> =
                        AUDIT_RETENTION_DAYS.iter().map(i32::to_string).collect();
                    self.at(
                        days,
                        format!(
                            "audit_retention_days = {}: CloudWatch Logs keeps log events for \
                             one of {} days",
                            days.get_ref(),
                            listed.join(", ")
                        ),
                    );
                    DEFAULT_AUDIT_RETENTION_DAYS
                })
            }
        };

        let replicas = match &b.replicas {
            None => 1,
            Some(n) => u32::try_from(*n.get_ref())
                .ok()
                .filter(|n| (1..=MAX_REPLICAS).contains(n))
                .unwrap_or_else(|| {
                    self.at(
                        n,
                        format!("replicas = {}: 1 to {MAX_REPLICAS}", n.get_ref()),
                    );
                    1
                }),
        };
        let fixed_addresses = b.fixed_addresses.as_ref().is_some_and(|f| *f.get_ref());
        if replicas > 1 {
            let azs: BTreeSet<&str> = subnets
                .iter()
                .filter(|s| s.tier == Tier::Public)
                .map(|s| s.az.as_str())
                .collect();
            if azs.len() < 2 && resolved {
                if let Some(n) = &b.replicas {
                    self.at(
                        n,
                        format!(
                            "replicas = {replicas} needs public subnets in at least two \
                             availability zones (the balancer and the group span them); \
                             the spec has them in {}",
                            azs.into_iter().collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
            }
        } else if let Some(flag) = b.fixed_addresses.as_ref().filter(|_| fixed_addresses) {
            self.at(
                flag,
                "fixed_addresses is for replicas >= 2 (one bastion has its own Elastic IP)",
            );
        }

        // Private ports
        let private_ports = match &raw.private {
            None => DEFAULT_PRIVATE_PORTS.to_vec(),
            Some(p) => {
                if p.ports.get_ref().is_empty() {
                    self.at(&p.ports, "private ports is empty");
                }
                self.ports(p.ports.get_ref())
            }
        };

        // Hosts
        let mut hosts: Vec<Host> = Vec::new();
        for h in &raw.hosts {
            let name = h.name.get_ref();
            if !is_name(name, 24) || name == "bastion" {
                self.at(
                    &h.name,
                    format!(
                        "host name {name:?} must be 1-24 of a-z, 0-9, '-', and not \"bastion\""
                    ),
                );
            }
            if hosts.iter().any(|o| &o.name == name) {
                self.at(&h.name, format!("host name {name:?} used twice"));
            }
            let subnet = subnets.iter().find(|s| &s.name == h.subnet.get_ref());
            match subnet {
                None => self.at(
                    &h.subnet,
                    format!(
                        "host {name}: subnet {:?} is not defined",
                        h.subnet.get_ref()
                    ),
                ),
                Some(s) if s.tier != Tier::Private => self.at(
                    &h.subnet,
                    format!(
                        "host {name}: subnet {:?} must be private",
                        h.subnet.get_ref()
                    ),
                ),
                Some(_) => {}
            }
            self.check_ami(&h.ami);
            let instance_type = self.instance_type(&h.instance_type, DEFAULT_HOST_INSTANCE_TYPE);
            if h.groups.get_ref().is_empty() {
                self.at(
                    &h.groups,
                    format!("host {name}: groups is empty, nobody could reach it"),
                );
            }
            // The daemon's own rule (it skips an instance whose `gatehouse:groups` tag holds a
            // group it refuses), so a provisioned host is always one somebody can reach.
            for g in h.groups.get_ref() {
                if let Err(why) = gatehouse_config::check_group_name(g.get_ref()) {
                    self.at(
                        g,
                        format!("host {name}: {why} (the bastion would skip this host)"),
                    );
                }
            }
            let ports = match &h.ports {
                None => vec![22],
                Some(p) => {
                    if p.get_ref().is_empty() {
                        self.at(p, format!("host {name}: ports is empty"));
                    }
                    self.ports(p.get_ref())
                }
            };
            for (i, port) in ports.iter().enumerate() {
                if !private_ports.contains(port) {
                    let span = h
                        .ports
                        .as_ref()
                        .and_then(|p| p.get_ref().get(i))
                        .map(|p| p.span().start);
                    self.push(
                        span.unwrap_or(h.name.span().start),
                        format!("host {name}: port {port} is not open in [private] ports {private_ports:?}"),
                    );
                }
            }
            // An existing subnet's CIDR is known once resolved.
            let placed = subnet.filter(|_| resolved);
            if let (Some(ip), Some(s)) = (&h.private_ip, placed) {
                let addr = *ip.get_ref();
                let first = u32::from(s.cidr.network());
                let last = u32::from(s.cidr.broadcast());
                let a = u32::from(addr);
                if !s.cidr.contains(&addr) {
                    self.at(
                        ip,
                        format!(
                            "host {name}: private_ip {addr} is outside subnet {} ({})",
                            s.name, s.cidr
                        ),
                    );
                } else if a < first + 4 || a == last {
                    self.at(
                        ip,
                        format!(
                            "host {name}: private_ip {addr} is reserved by AWS in {}",
                            s.cidr
                        ),
                    );
                }
            }
            // The daemon's own parse of the tag this becomes.
            let login = match &h.login {
                None => Vec::new(),
                Some(list) => {
                    let joined: Vec<&str> = list
                        .get_ref()
                        .iter()
                        .map(|u| u.get_ref().as_str())
                        .collect();
                    gatehouse_aws::build::parse_login_users(&joined.join(",")).unwrap_or_else(
                        |why| {
                            self.at(list, format!("host {name}: login: {why}"));
                            Vec::new()
                        },
                    )
                }
            };
            if !login.is_empty() && !ports.contains(&gatehouse_policy::SSH_PORT) {
                if let Some(list) = &h.login {
                    self.at(
                        list,
                        format!(
                            "host {name}: login is for tunnels to port {}, which its ports do \
                             not list",
                            gatehouse_policy::SSH_PORT
                        ),
                    );
                }
            }
            hosts.push(Host {
                name: name.clone(),
                subnet: h.subnet.get_ref().clone(),
                ami: h.ami.get_ref().clone(),
                instance_type,
                groups: h
                    .groups
                    .get_ref()
                    .iter()
                    .map(|g| g.get_ref().clone())
                    .collect(),
                ports,
                private_ip: h.private_ip.as_ref().map(|p| *p.get_ref()),
                login,
            });
        }

        let alerts = self.check_alerts(raw.alerts.as_ref());
        let spec = Spec {
            stack,
            region,
            network,
            vpc_cidr,
            azs,
            nat: raw.vpc.get_ref().nat,
            tags,
            subnets,
            bastion: Bastion {
                subnet: b.subnet.get_ref().clone(),
                ami: b.ami.get_ref().clone(),
                instance_type,
                allowed_cidrs: allowed,
                binary: binary?,
                daemon: b
                    .daemon
                    .as_ref()
                    .map(|d| d.get_ref().clone())
                    .unwrap_or_default(),
                iam_events,
                iam_events_auto,
                audit_retention_days,
                replicas,
                fixed_addresses,
            },
            private_ports,
            hosts,
            alerts,
            warnings: std::mem::take(&mut self.warnings),
        };
        if self.issues.is_empty() {
            // Checked here, before any AWS call, with the longest VPC id AWS hands out.
            let vpc = "vpc-0123456789abcdef0";
            let at = b.daemon.as_ref().map_or(b.subnet.span(), |d| d.span());
            let account = crate::userdata::PLACEHOLDER_ACCOUNT;
            match crate::userdata::check_daemon_config(&spec, vpc, account) {
                Err(problems) => {
                    for problem in problems {
                        self.push(at.start, problem);
                    }
                }
                Ok(config) => {
                    let pushes = config.aws.is_some_and(|a| a.instance_connect);
                    for h in raw.hosts.iter().filter(|_| !pushes) {
                        if let Some(list) = &h.login {
                            self.at(
                                list,
                                format!(
                                    "host {}: login needs `instance_connect = true` in \
                                     [bastion.daemon.aws], or no key is ever pushed to it",
                                    h.name.get_ref()
                                ),
                            );
                        }
                    }
                }
            }
            // The longest bucket name: a 28-character stack and a 12-digit account.
            let bucket = crate::names::binary_bucket(&"s".repeat(28), "123456789012");
            let size = crate::userdata::render(&spec, vpc, account, Some(&bucket)).len();
            if size >= MAX_USER_DATA_BYTES {
                self.push(
                    at.start,
                    format!(
                        "bastion user data is {size} bytes, EC2 accepts at most {}",
                        MAX_USER_DATA_BYTES - 1
                    ),
                );
            }
        }
        Some(spec)
    }

    /// `gatehouse_download_url` (+ optional `gatehouse_sha256`) or `gatehouse_binary`, exactly
    /// one. A stored binary is read here (relative paths from the spec's folder) for its
    /// SHA-256, and must be an ELF executable.
    /// `[alerts]`: addresses that look like one (SNS checks nothing until the email bounces),
    /// each once, and thresholds of at least 1.
    fn check_alerts(&mut self, raw: Option<&RawAlerts>) -> Alerts {
        let mut alerts = Alerts {
            emails: Vec::new(),
            failed_logins: DEFAULT_FAILED_LOGINS_ALARM,
            refusals: DEFAULT_REFUSALS_ALARM,
        };
        let Some(raw) = raw else {
            return alerts;
        };
        for email in &raw.emails {
            let address = email.get_ref();
            if !is_email(address) {
                self.at(
                    email,
                    format!("alerts: {address:?} is not an email address"),
                );
            } else if alerts.emails.contains(address) {
                self.at(email, format!("alerts: {address:?} listed twice"));
            } else {
                alerts.emails.push(address.clone());
            }
        }
        if raw.emails.len() > MAX_ALERT_EMAILS {
            self.at(
                &raw.emails[MAX_ALERT_EMAILS],
                format!("alerts: at most {MAX_ALERT_EMAILS} emails"),
            );
        }
        let mut threshold = |value: &Option<Spanned<i64>>, key: &str, default: u32| {
            value.as_ref().map_or(default, |v| {
                u32::try_from(*v.get_ref())
                    .ok()
                    .filter(|n| *n >= 1)
                    .unwrap_or_else(|| {
                        self.at(
                            v,
                            format!("alerts: {key} = {} must be at least 1", v.get_ref()),
                        );
                        default
                    })
            })
        };
        alerts.failed_logins = threshold(&raw.failed_logins, "failed_logins", alerts.failed_logins);
        alerts.refusals = threshold(&raw.refusals, "refusals", alerts.refusals);
        alerts
    }

    fn check_binary(&mut self, b: &RawBastion, origin: &str) -> Option<Binary> {
        let sha256 = b.gatehouse_sha256.as_ref().and_then(|sha| {
            let s = sha.get_ref();
            if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
                self.at(sha, "gatehouse_sha256 must be 64 hexadecimal characters");
                return None;
            }
            Some(s.to_ascii_lowercase())
        });
        match (&b.gatehouse_download_url, &b.gatehouse_binary) {
            (Some(url), None) => {
                let u = url.get_ref();
                if !u.starts_with("https://")
                    || u.len() > 1024
                    || u.chars()
                        .any(|c| c.is_whitespace() || c.is_control() || "'\"`$\\<>{}|^".contains(c))
                {
                    self.at(
                        url,
                        "gatehouse_download_url must be an https:// URL without spaces, quotes, $ or backslashes",
                    );
                }
                Some(Binary::Url {
                    url: u.clone(),
                    sha256,
                })
            }
            (None, Some(path)) => {
                if let Some(sha) = &b.gatehouse_sha256 {
                    self.at(
                        sha,
                        "gatehouse_sha256 goes with gatehouse_download_url; for gatehouse_binary it is computed from the file",
                    );
                }
                let base = std::path::Path::new(origin)
                    .parent()
                    .unwrap_or(std::path::Path::new(""));
                let full = base.join(path.get_ref());
                if self.binary == ReadBinary::No {
                    return Some(Binary::Stored {
                        path: full,
                        sha256: UNREAD_SHA256.into(),
                        size: 0,
                    });
                }
                match file_digest(&full) {
                    Ok(digest) => {
                        if digest.debug_info {
                            self.warnings.push(format!(
                                "gatehouse_binary {} has debug info ({} MB), and every bastion \
                                 fetches it at boot: build it with `cargo build --profile dist \
                                 --locked -p gatehouse` and name target/dist/gatehouse (no debug \
                                 info, symbols kept, about 27 MB)",
                                full.display(),
                                digest.size / 1_000_000
                            ));
                        }
                        Some(Binary::Stored {
                            path: full,
                            sha256: digest.hex(),
                            size: digest.size,
                        })
                    }
                    Err(e) => {
                        self.at(path, format!("gatehouse_binary {}: {e}", full.display()));
                        None
                    }
                }
            }
            (Some(url), Some(_)) => {
                self.at(
                    url,
                    "set gatehouse_download_url or gatehouse_binary, not both",
                );
                None
            }
            (None, None) => {
                self.at(
                    &b.subnet,
                    "[bastion] needs gatehouse_binary (a local file apply stores in the stack's bucket) or gatehouse_download_url",
                );
                None
            }
        }
    }

    fn check_cidr(&mut self, c: &Spanned<Ipv4Net>, what: &str) {
        let cidr = *c.get_ref();
        if cidr != cidr.trunc() {
            self.at(
                c,
                format!(
                    "{what} {cidr} has host bits set (did you mean {}?)",
                    cidr.trunc()
                ),
            );
        }
        if !(16..=28).contains(&cidr.prefix_len()) {
            self.at(
                c,
                format!("{what} {cidr}: AWS allows prefix lengths /16 to /28"),
            );
        }
    }

    fn check_ami(&mut self, ami: &Spanned<String>) {
        let a = ami.get_ref();
        let ok = a.strip_prefix("ami-").is_some_and(|h| {
            (8..=17).contains(&h.len()) && h.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !ok {
            self.at(
                ami,
                format!("ami {a:?} is not an AMI id like ami-0123456789abcdef0"),
            );
        }
    }

    fn instance_type(&mut self, t: &Option<Spanned<String>>, default: &str) -> String {
        match t {
            None => default.to_string(),
            Some(t) => {
                let s = t.get_ref();
                let ok = s.split_once('.').is_some_and(|(a, b)| {
                    !a.is_empty()
                        && !b.is_empty()
                        && s.chars().all(|c| {
                            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-'
                        })
                });
                if !ok {
                    self.at(
                        t,
                        format!("instance_type {s:?} is not an instance type like t3.micro"),
                    );
                }
                s.clone()
            }
        }
    }

    fn ports(&mut self, ports: &[Spanned<u16>]) -> Vec<u16> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for p in ports {
            let port = *p.get_ref();
            if port == 0 {
                self.at(p, "port 0 is not a port");
            } else if !seen.insert(port) {
                self.at(p, format!("port {port} listed twice"));
            } else {
                out.push(port);
            }
        }
        out
    }
}

/// An email address as SNS takes one: `local@domain`, the domain with a dot, nothing that
/// is blank or a control character, at most 254 characters.
fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    s.len() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.ends_with('-')
}

/// `eu-central-1`, `us-gov-west-1`, `ap-southeast-2`.
fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].chars().all(|c| c.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

/// An AZ name of the region: the region followed by one letter (`eu-central-1a`). Local zones
/// and zone ids are not supported.
fn is_az_of(az: &str, region: &str) -> bool {
    az.strip_prefix(region)
        .is_some_and(|rest| rest.len() == 1 && rest.chars().all(|c| c.is_ascii_lowercase()))
}

#[cfg(test)]
pub(crate) mod brownfield_tests;
#[cfg(test)]
mod tests;
