//! The typed, validated configuration, its defaults and its limits.
//!
//! Everything here has already been checked: a [`Config`] that exists is one the daemon may
//! run with. The doc comments on the fields are the reference for the TOML keys of the same
//! name; `config/gatehouse.toml` repeats them as comments.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Default `server.host_key`.
pub const DEFAULT_HOST_KEY: &str = "/var/lib/gatehouse/ssh_host_ed25519_key";
/// Default `server.login_grace`.
pub const DEFAULT_LOGIN_GRACE: Duration = Duration::from_secs(20);
/// Default `server.version_grace`.
pub const DEFAULT_VERSION_GRACE: Duration = Duration::from_secs(5);
/// Default `server.kex_grace`.
pub const DEFAULT_KEX_GRACE: Duration = Duration::from_secs(10);
/// Default `server.eviction_min_age`.
pub const DEFAULT_EVICTION_MIN_AGE: Duration = Duration::from_millis(100);
/// Accepted range of `server.eviction_min_age`.
pub const EVICTION_MIN_AGE_RANGE: (Duration, Duration) =
    (Duration::ZERO, Duration::from_secs(10 * 60));
/// Default `server.max_unauthenticated`.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 64;
/// Default `server.idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Default `server.connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `server.keepalive_interval`.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Default `server.max_auth_attempts`.
pub const DEFAULT_MAX_AUTH_ATTEMPTS: usize = 6;
/// Default `server.shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default `hosts[].ports`.
pub const DEFAULT_PORTS: &[u16] = &[22];

/// Accepted range of `server.login_grace`.
pub const LOGIN_GRACE_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(10 * 60));
/// Accepted range of `server.max_unauthenticated`.
pub const MAX_UNAUTHENTICATED_RANGE: (usize, usize) = (1, 100_000);
/// Default of `limits.max_sessions_per_user`.
pub const DEFAULT_MAX_SESSIONS_PER_USER: usize = 16;
/// Default of `limits.max_channels_per_connection`.
pub const DEFAULT_MAX_CHANNELS_PER_CONNECTION: usize = 64;
/// Default of `limits.max_tunnels`.
pub const DEFAULT_MAX_TUNNELS: usize = 10_000;
/// Default of `limits.per_source_max_unauthenticated`.
pub const DEFAULT_PER_SOURCE_MAX_UNAUTHENTICATED: usize = 8;
/// Default of `limits.per_prefix_max_unauthenticated`, as a multiple of the per-source cap.
pub const DEFAULT_PER_PREFIX_SOURCES: usize = 4;
/// Accepted range of `limits.max_buffered_mib`.
pub const MAX_BUFFERED_MIB_RANGE: (usize, usize) = (1, 1 << 20);
/// Accepted range of the `[limits]` counts.
pub const LIMIT_RANGE: (usize, usize) = (1, 1_000_000);
/// Default penalty for a connection that failed authentication (OpenSSH: authfail 5s).
pub const DEFAULT_PENALTY_AUTH_FAILURE: Duration = Duration::from_secs(5);
/// Default penalty for a connection closed without authenticating (OpenSSH: noauth 1s).
pub const DEFAULT_PENALTY_NO_AUTH: Duration = Duration::from_secs(1);
/// Default penalty for a connection cut at the login grace time (OpenSSH: grace-exceeded 10s).
pub const DEFAULT_PENALTY_GRACE_EXCEEDED: Duration = Duration::from_secs(10);
/// Default accumulated penalty above which a source is refused (OpenSSH: min 15s).
pub const DEFAULT_PENALTY_THRESHOLD: Duration = Duration::from_secs(15);
/// Default cap of a source's accumulated penalty (OpenSSH: max 600s).
pub const DEFAULT_PENALTY_MAX: Duration = Duration::from_secs(600);
/// Default number of sources tracked at once (OpenSSH: max-sources 65536).
pub const DEFAULT_PENALTY_MAX_SOURCES: usize = 65_536;
/// Accepted range of each penalty duration.
pub const PENALTY_RANGE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(24 * 3600));

/// Accepted range of `server.idle_timeout`.
pub const IDLE_TIMEOUT_RANGE: (Duration, Duration) = (
    Duration::from_secs(1),
    Duration::from_secs(7 * 24 * 60 * 60),
);
/// Accepted range of `server.connect_timeout`.
pub const CONNECT_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(2 * 60));
/// Accepted range of `server.keepalive_interval` when it is not 0 (which disables keepalives).
pub const KEEPALIVE_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(60 * 60));
/// Accepted range of `server.max_auth_attempts`.
pub const MAX_AUTH_ATTEMPTS_RANGE: (usize, usize) = (1, 20);
/// Accepted range of `server.drain_delay`.
pub const DRAIN_DELAY_RANGE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(60));
/// Accepted range of `server.shutdown_grace`.
pub const SHUTDOWN_GRACE_RANGE: (Duration, Duration) =
    (Duration::ZERO, Duration::from_secs(10 * 60));
/// Default `aws.refresh_interval`.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Default `aws.iam_sweep_interval` with `aws.events_queue_url`: the events carry the
/// changes, the sweep only catches an event lost on its way.
pub const DEFAULT_EVENTS_SWEEP_INTERVAL: Duration = Duration::from_secs(30 * 60);
/// Longest `aws.iam_sweep_interval`.
pub const MAX_IAM_SWEEP_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Default `aws.max_staleness`.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(15 * 60);
/// Default `aws.iam_calls_per_second`.
pub const DEFAULT_IAM_CALLS_PER_SECOND: u32 = 8;
/// Accepted range of `aws.iam_calls_per_second`.
pub const IAM_CALLS_PER_SECOND_RANGE: (usize, usize) = (1, 1000);
/// Default `aws.tag_prefix`.
pub const DEFAULT_TAG_PREFIX: &str = "gatehouse:";
/// Accepted range of `aws.refresh_interval`.
pub const REFRESH_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(60 * 60));
/// Accepted range of `aws.max_staleness`.
pub const MAX_STALENESS_RANGE: (Duration, Duration) = (
    Duration::from_secs(1),
    Duration::from_secs(7 * 24 * 60 * 60),
);
/// Most tags `aws.host_key_tags` may list (SSM's limit per resource).
pub const MAX_HOST_KEY_TAGS: usize = 50;
/// Accepted range of `trusted_user_ca[].max_validity`.
pub const MAX_VALIDITY_RANGE: (Duration, Duration) = (
    Duration::from_secs(60),
    Duration::from_secs(3660 * 24 * 60 * 60),
);
/// Default `sso.validity`: a long working day, so one `gatehouse login` a day.
pub const DEFAULT_SSO_VALIDITY: Duration = Duration::from_secs(10 * 60 * 60);
/// Accepted range of `sso.validity`.
pub const SSO_VALIDITY_RANGE: (Duration, Duration) = (
    Duration::from_secs(5 * 60),
    Duration::from_secs(7 * 24 * 60 * 60),
);
/// Default `sso.ca_key`.
pub const DEFAULT_USER_CA_KEY: &str = "/var/lib/gatehouse/user_ca_ed25519_key";
/// Most entries `sso.permission_sets` or `sso.roles` may hold.
pub const MAX_SSO_MAPPINGS: usize = 1000;
/// Most entries one `trusted_user_ca[].principals` table may hold.
pub const MAX_PRINCIPAL_MAPPINGS: usize = 10_000;
/// Longest certificate principal a mapping may name, in characters.
pub const MAX_PRINCIPAL_LEN: usize = 256;
/// Smallest RSA modulus accepted in a user key, in bits.
pub const MIN_RSA_BITS: u32 = 2048;

/// A validated gatehouse configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration was read from, as it was named (used in messages).
    pub source: PathBuf,
    /// `[server]`: how the SSH listener behaves.
    pub server: ServerConfig,
    /// `[audit]`: where audit events go.
    pub audit: AuditConfig,
    /// `[[users]]`: who may log in, in file order. May be empty.
    pub users: Vec<UserConfig>,
    /// `[[hosts]]`: where they may go, in file order. May be empty.
    pub hosts: Vec<HostConfig>,
    /// `[limits]`.
    pub limits: LimitsConfig,
    /// `[penalties]`.
    pub penalties: PenaltiesConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// `[aws]`: when present, users and hosts come from AWS (IAM and EC2) instead of
    /// `[[users]]` and `[[hosts]]`, which must then be absent.
    pub aws: Option<AwsConfig>,
    /// `[[trusted_user_ca]]`: certificate authorities whose OpenSSH user certificates log
    /// users of the directory in, in file order. May be empty (no certificate is accepted).
    pub trusted_user_ca: Vec<TrustedUserCa>,
    /// `[sso]`: people log in with their AWS identity (`gatehouse login`). `None`: the
    /// bastion issues no certificates.
    pub sso: Option<SsoConfig>,
}

/// `[sso]`: `gatehouse login` proves the caller's AWS identity (IAM Identity Center, an
/// assumed role, an IAM user) with a signed `sts:GetCallerIdentity` request that the bastion
/// replays to STS, and gets an OpenSSH user certificate from the bastion's own CA for the
/// login the caller maps to. The certificate logs in like a key: the caller's groups are
/// looked up again from this mapping at every login and re-checked on every change, so a
/// removed mapping closes open tunnels at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoConfig {
    /// `accounts`: the AWS account ids (12 digits) whose callers may log in. Required, at
    /// least one: a role named like a permission set in any other account maps to nothing.
    pub accounts: Vec<String>,
    /// `validity`: how long an issued certificate lets its holder in (the session closes
    /// then). Range 5m..7d, default [`DEFAULT_SSO_VALIDITY`].
    pub validity: Duration,
    /// `ca_key`: path of the CA's OpenSSH ed25519 private key; created 0600 on first start.
    /// Relative to the config file's directory. Not used with `aws.user_ca_ssm_parameter`.
    /// Default [`DEFAULT_USER_CA_KEY`].
    pub ca_key: PathBuf,
    /// `permission_sets`: IAM Identity Center permission set name -> groups, e.g.
    /// `{ Research = ["research"] }`. A caller in role `AWSReservedSSO_<set>_<id>` gets the
    /// groups of `<set>`; its login is its session name (the user's name in the identity
    /// store, often an email) made typeable as IAM user names are (`@` becomes `~40`).
    pub permission_sets: BTreeMap<String, Vec<String>>,
    /// `roles`: IAM role name -> groups, for other assumed roles (CI runners, break-glass).
    /// With `[aws]`, a role of the bastion's account not listed here maps by its groups tag
    /// (`<tag_prefix>groups`, as on IAM users), read with the users. A role caller's login is
    /// `<role>/<session name>` (each made typeable the same way): its assumer chooses the
    /// session name, so the login names the role and is never anyone else's.
    pub roles: BTreeMap<String, Vec<String>>,
    /// `iam_users`: an IAM user caller logs in as that IAM user of the directory, with its
    /// groups. Default true with `[aws]`; refused without it (static users are not IAM users).
    pub iam_users: bool,
}

/// `[[trusted_user_ca]]`: a certificate authority (step-ca, Vault's SSH engine, another
/// gatehouse) whose OpenSSH user certificates are accepted as sshd's `TrustedUserCAKeys`
/// accepts them. Whoever holds one of its private keys can log in as any login its principals
/// map to: list only CAs you would trust with every such account.
///
/// A certificate logs in login L when: it is signed by one of `keys` (not with SHA-1
/// `ssh-rsa`), it is a user certificate, now is within [valid_after, valid_before), one of its
/// principals maps to L, every critical option is one gatehouse enforces (`source-address`
/// must match the client's address; `force-command`, `verify-required` and unknown ones are
/// refused), it carries the `permit-port-forwarding` extension, and L is a user of the
/// directory (static `[[users]]` or IAM), whose groups apply, looked up at login and re-checked
/// like a key login. The session ends when the certificate expires.
#[derive(Debug, Clone)]
pub struct TrustedUserCa {
    /// `name`: names the CA in audit lines and messages. 1 to 64 of `A-Z a-z 0-9 . _ -`;
    /// unique.
    pub name: String,
    /// The CA's public keys (`keys` and/or `keys_file`, as for users; no options): at least
    /// one. A key may appear once in the whole config (never also as a user's key).
    pub keys: Vec<ssh_key::PublicKey>,
    /// `principals`: certificate principal -> login name, as sshd's
    /// `AuthorizedPrincipalsFile`: e.g. `{ "alice@example.org" = "alice" }`. When set, only
    /// the principals listed log in, as the login they map to. `None` (key omitted): a
    /// principal equal to a login name logs in as that login (sshd's default).
    pub principals: Option<BTreeMap<String, String>>,
    /// `max_validity`: refuse certificates whose validity period (valid_before -
    /// valid_after) is longer than this, e.g. `"1d"`; range 1m..3660d. `None`: any.
    pub max_validity: Option<Duration>,
}

/// `[aws]`: AWS as the source of truth for users, hosts and (optionally) the host key.
///
/// Credentials always come from the AWS SDK's default chain (on the bastion: its instance
/// profile); they are never part of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConfig {
    /// `region`: the AWS region, e.g. `"eu-west-1"`. `None`: from the environment
    /// (`AWS_REGION`), the shared config, or the instance metadata, as the SDK finds it.
    pub region: Option<String>,
    /// `endpoint_url`: send every AWS call to this `http://` or `https://` URL instead of the
    /// real endpoints (LocalStack, moto). `None`: the real AWS endpoints.
    pub endpoint_url: Option<String>,
    /// `vpc_ids`: only instances in these VPCs (`vpc-...`) are inventory. Required, at least
    /// one: the bastion routes only into its own VPC and peered ones, and VPCs with
    /// overlapping CIDRs would give one private address to two hosts.
    pub vpc_ids: Vec<String>,
    /// `refresh_interval`: time between two refreshes of users and hosts; also the bound on
    /// how long a revoked key or removed tag keeps working. Range 1s..1h, default 30s.
    pub refresh_interval: Duration,
    /// `max_staleness`: how long the last good snapshot keeps admitting new logins while AWS
    /// cannot be read; after that, new logins are refused until a refresh succeeds. Must be
    /// longer than `refresh_interval`. Range 1s..7d, default 15m.
    pub max_staleness: Duration,
    /// `iam_path_prefix`: only IAM users whose path starts with this (e.g. `"/staff/"`);
    /// starts and ends with `/`. `None`: all users (path `/`).
    pub iam_path_prefix: Option<String>,
    /// `iam_group_prefix`: when set, membership in an IAM group named PREFIX + NAME puts the
    /// user in gatehouse group NAME (lowercased), e.g. `"gatehouse-"`: IAM group
    /// `gatehouse-research` gives group `research`. `None`: IAM groups are not read.
    pub iam_group_prefix: Option<String>,
    /// `tag_prefix`: prefix of the tag keys gatehouse reads (`<prefix>groups`,
    /// `<prefix>ports`). Default `"gatehouse:"`.
    pub tag_prefix: String,
    /// `host_key_ssm_parameter`: name of an SSM Parameter Store SecureString holding the
    /// bastion's OpenSSH ed25519 private key, e.g. `"/gatehouse/prod/host_ed25519"`; created
    /// (without overwrite) on first start, so every replica presents the same key. When set,
    /// `server.host_key` is not used. `None`: the host key file.
    pub host_key_ssm_parameter: Option<String>,
    /// `host_key_tags`: tags (key = value) the SSM host key parameter is created with, e.g.
    /// `{ "gatehouse:stack" = "lab" }`, so that whoever owns the stack can find and delete it
    /// (gatehouse-vpc's `destroy` deletes parameters tagged with its stack). Needs
    /// `host_key_ssm_parameter`; at most 50 tags; keys 1 to 128 and values up to 256 of
    /// letters, digits, space and `_.:/=+-@`, keys not starting with `aws:`. Creating a tagged
    /// parameter needs `ssm:AddTagsToResource` besides `ssm:PutParameter`. An existing
    /// parameter is used as it is (never re-tagged). Empty: created untagged.
    pub host_key_tags: BTreeMap<String, String>,
    /// `user_ca_ssm_parameter`: name of an SSM Parameter Store SecureString holding the
    /// `[sso]` CA's OpenSSH ed25519 private key, e.g. `"/gatehouse/prod/user_ca_ed25519"`;
    /// created (without overwrite, tagged with `host_key_tags`) on first start like the host
    /// key, so every replica signs with one CA and accepts what any of them issued. Needs
    /// `[sso]`; `sso.ca_key` is then where a copy is kept (with `snapshot_file`). `None`: the
    /// `sso.ca_key` file.
    pub user_ca_ssm_parameter: Option<String>,
    /// `instance_connect`: before a tunnel to port 22 of an instance tagged
    /// `<tag_prefix>login` (OS user names, e.g. `"ubuntu"`), push the public key the user
    /// logged in to the bastion with to that instance for those OS users with EC2 Instance
    /// Connect (`ec2-instance-connect:SendSSHPublicKey`; the instance's sshd accepts it for
    /// 60 seconds). Default false: nothing is pushed and the action is not needed.
    pub instance_connect: bool,
    /// `snapshot_file`: where the bastion keeps its last good listing (an absolute path, in
    /// a directory only it may write), so that a restart serves at once while that listing
    /// is within `max_staleness`. `None`: every start lists AWS before serving.
    pub snapshot_file: Option<PathBuf>,
    /// `iam_calls_per_second`: the pace of the per-user IAM calls (ListSSHPublicKeys,
    /// GetSSHPublicKey) of a listing, with bursts of twice as many: IAM throttles per account
    /// and API, shared with every other tool of the account. Range 1..1000, default
    /// [`DEFAULT_IAM_CALLS_PER_SECOND`].
    pub iam_calls_per_second: u32,
    /// `events_queue_url`: the SQS queue (e.g.
    /// `"https://sqs.us-east-1.amazonaws.com/123456789012/gatehouse-lab-iam-events"`) that
    /// receives IAM's change events (CloudTrail through EventBridge): the bastion re-reads a
    /// user an event names within seconds, and the full IAM sweep becomes a slow safety net
    /// (`iam_sweep_interval`). The bastion only reads the queue, never deletes from it: every
    /// replica sees every event. `None`: IAM is swept every `refresh_interval`.
    pub events_queue_url: Option<String>,
    /// `iam_sweep_interval`: time between two complete IAM listings. Default
    /// `refresh_interval` without `events_queue_url`, [`DEFAULT_EVENTS_SWEEP_INTERVAL`] with
    /// it. Range `refresh_interval`..24h; without events it must be shorter than
    /// `max_staleness`. Instances are listed every `refresh_interval` whatever this is.
    pub iam_sweep_interval: Duration,
    /// `shared_snapshot`: an S3 object (`"s3://BUCKET/KEY"`) where every replica shares its
    /// last good listing (after each IAM sweep, and at most once a minute otherwise), so that
    /// a new replica (or one whose `snapshot_file` is gone) serves at once from the fleet's
    /// listing while it is within `max_staleness`, then sweeps. Whoever may write the object
    /// decides who gets in: only the bastion role may. `None`: nothing is shared.
    pub shared_snapshot: Option<S3Object>,
    /// `audit_log_group`: ship every line of the audit file (`audit.file`, required) to this
    /// CloudWatch Logs log group, e.g. `"/gatehouse/lab/audit"`, so the audit trail outlives
    /// the instance. The file is the spool: the position shipped is kept beside it
    /// (`<audit.file>.shipped`) and a restart, kill -9 included, resumes there. `None`:
    /// nothing is shipped.
    pub audit_log_group: Option<String>,
    /// `audit_log_stream`: the log stream of this bastion in that group. Default: the
    /// machine's host name (unique per instance on EC2).
    pub audit_log_stream: Option<String>,
}

/// An S3 object's location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Object {
    /// The bucket's name.
    pub bucket: String,
    /// The object's key.
    pub key: String,
}

impl std::fmt::Display for S3Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

impl AwsConfig {
    /// The tag key that lists groups (`<tag_prefix>groups`).
    pub fn groups_tag(&self) -> String {
        format!("{}groups", self.tag_prefix)
    }

    /// The tag key that lists ports (`<tag_prefix>ports`).
    pub fn ports_tag(&self) -> String {
        format!("{}ports", self.tag_prefix)
    }

    /// The user tag that ends a user's access at an RFC 3339 instant (`<tag_prefix>expires`,
    /// e.g. `2026-12-31T18:00:00Z`). A value that does not parse refuses the user.
    pub fn expires_tag(&self) -> String {
        format!("{}expires", self.tag_prefix)
    }

    /// The tag key that lists the OS users EC2 Instance Connect pushes keys for
    /// (`<tag_prefix>login`); read only with `instance_connect`.
    pub fn login_tag(&self) -> String {
        format!("{}login", self.tag_prefix)
    }
}

/// `[server]`: the SSH listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `listen`: socket addresses to accept SSH on, e.g. `"0.0.0.0:22"` or `"[::]:22"` (IPv6
    /// needs brackets). Required, at least one, no duplicates. Port 0 asks the OS for a free port
    /// (useful in tests).
    pub listen: Vec<SocketAddr>,
    /// `host_key`: path of the bastion's OpenSSH private host key; created 0600 on first start.
    /// A relative path is resolved against the config file's directory. Default
    /// [`DEFAULT_HOST_KEY`].
    pub host_key: PathBuf,
    /// `login_grace`: time a connection has to complete authentication before it is dropped.
    /// Range 1s..10m, default 20s.
    pub login_grace: Duration,
    /// `version_grace`: time a new connection has to send its SSH version line. Range
    /// 1s..10m, default 5s; never past `login_grace`.
    pub version_grace: Duration,
    /// `kex_grace`: time a new connection has to finish the key exchange (counted from
    /// accept, like the others). Range 1s..10m, default 10s; never past `login_grace`.
    pub kex_grace: Duration,
    /// `max_unauthenticated`: connections allowed at once that have not authenticated yet.
    /// When all are taken, a new connection takes the slot of the one that has made the least
    /// progress for the longest (see `eviction_min_age`), or is refused before the SSH
    /// handshake. Range 1..100000, default 64.
    pub max_unauthenticated: usize,
    /// `eviction_min_age`: how old an unauthenticated connection must be before a newcomer
    /// may take its slot. Range 0..10m, default 100ms; at `login_grace` or more, nobody is
    /// evicted and a newcomer over the cap is refused.
    pub eviction_min_age: Duration,
    /// `idle_timeout`: an authenticated session with no traffic on any channel for this long is
    /// closed. Range 1s..7d, default 1h.
    pub idle_timeout: Duration,
    /// `connect_timeout`: how long the bastion waits for a TCP connection to a target host
    /// before refusing the tunnel. Range 100ms..2m, default 5s.
    pub connect_timeout: Duration,
    /// `keepalive_interval`: SSH keepalive sent to idle clients; `"0"` disables (`None`).
    /// Otherwise range 1s..1h, default 30s.
    pub keepalive_interval: Option<Duration>,
    /// `max_auth_attempts`: public-key attempts allowed per connection before it is dropped.
    /// Range 1..20, default 6.
    pub max_auth_attempts: usize,
    /// `shutdown_grace`: on SIGTERM, how long open tunnels may drain before they are cut.
    /// Range 0..10m, default 30s.
    pub shutdown_grace: Duration,
    /// `drain_delay`: on SIGTERM, how long the bastion keeps serving as before (accepting,
    /// opening tunnels) while `health_listen` already answers `503 draining`, so that a load
    /// balancer takes it out before the drain starts: at least its check interval times its
    /// unhealthy threshold, plus a login. Behind a balancer that deregisters first (an Auto
    /// Scaling group) it may stay 0. Range 0..1m, default 0.
    pub drain_delay: Duration,
    /// `pq_only`: offer only the post-quantum hybrid key exchange (mlkem768x25519-sha256).
    /// Only OpenSSH 9.9+ clients can connect. Default false (curve25519 offered too).
    pub pq_only: bool,
    /// `proxy_listen`: further socket addresses that expect a PROXY protocol v2 header (a
    /// load balancer in front); the address in the header is then the client's. Default none.
    pub proxy_listen: Vec<SocketAddr>,
    /// `trusted_proxies`: CIDRs allowed to connect to `proxy_listen` (the load balancer's
    /// addresses). Required when `proxy_listen` is set; anything else is refused.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `health_listen`: a socket address answering load balancers' health checks over plain
    /// HTTP (`200 serving` while this bastion can take a new login, `503` while it shuts down
    /// or its directory is stale), on its own listener: probes never reach the SSH port, so
    /// they are never counted as failed logins. Default none.
    pub health_listen: Option<SocketAddr>,
    /// `control_socket`: a Unix socket where `gatehouse sessions` reads the live sessions
    /// (read-only; mode 0660, so root and the daemon's group only). A relative path is
    /// resolved against the config file's directory. Default none: the binary then uses
    /// `control.sock` in systemd's `$RUNTIME_DIRECTORY`, if set (the shipped unit's).
    pub control_socket: Option<PathBuf>,
}

/// `[limits]`: caps that turn resource exhaustion into clear refusals.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// `max_sessions_per_user`: authenticated connections one user may hold at once.
    pub max_sessions_per_user: usize,
    /// `max_channels_per_connection`: tunnels (open or being dialed) on one connection.
    pub max_channels_per_connection: usize,
    /// `max_tunnels`: tunnels on the whole bastion.
    pub max_tunnels: usize,
    /// `per_source_max_unauthenticated`: connections from one source address (IPv4 /32,
    /// IPv6 /64) that may be unauthenticated at once, so one source cannot fill
    /// `server.max_unauthenticated`.
    pub per_source_max_unauthenticated: usize,
    /// `per_prefix_max_unauthenticated`: the same for one network, an IPv4 /24 or an IPv6 /48
    /// (many addresses of one attacker). At least `per_source_max_unauthenticated`; default
    /// four times it (32).
    pub per_prefix_max_unauthenticated: usize,
    /// `max_buffered_mib`: client bytes the whole bastion may hold for targets slower than
    /// their clients, in MiB. `None` (the default): derived from the machine's memory at
    /// start (see `gatehouse_ssh::buffer_budget`).
    pub max_buffered_mib: Option<usize>,
}

/// `[penalties]`: per-source penalties in the spirit of OpenSSH's PerSourcePenalties. Each
/// connection that ends without authenticating adds its penalty to its source's account
/// (IPv4 /32, IPv6 /64), which drains in real time; while the account exceeds `threshold`,
/// new connections from that source are refused at once.
#[derive(Debug, Clone)]
pub struct PenaltiesConfig {
    /// `enabled`: default true.
    pub enabled: bool,
    /// `auth_failure`: added when a connection failed authentication. Default 5s.
    pub auth_failure: Duration,
    /// `no_auth`: added when a connection closed without trying to authenticate. Default 1s.
    pub no_auth: Duration,
    /// `grace_exceeded`: added when a connection was cut at `login_grace`. Default 10s.
    pub grace_exceeded: Duration,
    /// `threshold`: a source is refused while its account exceeds this. Default 15s.
    pub threshold: Duration,
    /// `max`: an account never exceeds this. Default 10m.
    pub max: Duration,
    /// `max_sources`: sources tracked at once; past it, new sources are not tracked.
    pub max_sources: usize,
    /// `exempt`: CIDRs never penalized (e.g. a monitoring host, a load balancer's health
    /// checks).
    pub exempt: Vec<ipnet::IpNet>,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// `listen`: where to serve `/metrics` over plain HTTP; must be a loopback address.
    /// Omitted: no metrics endpoint.
    pub listen: Option<SocketAddr>,
}

/// `[audit]`: the audit log (one JSON object per line).
#[derive(Debug, Clone, Default)]
pub struct AuditConfig {
    /// `file`: append audit lines to this file; relative paths are resolved against the config
    /// file's directory. `None` (key omitted): write them to standard output.
    pub file: Option<PathBuf>,
    /// `on_failure`: what the bastion does while it cannot write the audit log (a full disk,
    /// an I/O error). Default `"refuse"`.
    pub on_failure: AuditOnFailure,
}

/// `audit.on_failure`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuditOnFailure {
    /// `"refuse"`: new logins and tunnels are refused (with the reason) until a line can be
    /// written again; open tunnels stay. Nothing happens that the audit log cannot hold.
    #[default]
    Refuse,
    /// `"continue"`: keep admitting, unaudited meanwhile; the lines that cannot be written
    /// wait in memory (at most 10,000, the oldest dropped past that) and are written when the
    /// file takes them again (lost if the daemon stops first).
    Continue,
}

/// `[[users]]`: one person who may log in.
#[derive(Debug, Clone)]
pub struct UserConfig {
    /// `name`: the SSH login name. 1 to 64 characters of `a-z 0-9 . _ -`, starting with a letter,
    /// digit or underscore. Unique across users.
    pub name: String,
    /// Public keys that authenticate this user: the lines of `keys` followed by those of
    /// `keys_file`, comments preserved. At least one in total. Accepted types: ssh-ed25519,
    /// ecdsa-sha2-nistp256/384/521, ssh-rsa of at least 2048 bits, and the FIDO
    /// `sk-ssh-ed25519@openssh.com` / `sk-ecdsa-sha2-nistp256@openssh.com`. DSA keys,
    /// certificates and authorized_keys options are rejected. A key may belong to one user
    /// only, and appear once.
    ///
    /// `keys_file` (TOML only): an authorized_keys-style file, relative to the config file's
    /// directory; blank lines and `#` comments are skipped.
    pub keys: Vec<ssh_key::PublicKey>,
    /// `groups`: the groups this user belongs to; at least one, each 1 to 64 characters of
    /// `a-z 0-9 _ -`, no duplicates.
    pub groups: Vec<String>,
    /// `expires`: when this user's access ends, a TOML date-time with its offset
    /// (`expires = 2026-12-31T18:00:00Z`) or the same as an RFC 3339 string. At that instant
    /// new logins are refused and the user's open sessions are closed. `None`: never.
    pub expires: Option<SystemTime>,
    /// Keys whose line carried OpenSSH's `expiry-time="YYYYMMDD[HHMM[SS]]Z"` option (UTC; the
    /// only authorized_keys option accepted): the key stops working at that instant, and the
    /// sessions it opened are closed then.
    pub key_expires: Vec<(ssh_key::PublicKey, SystemTime)>,
}

/// `[[hosts]]`: one target that users may tunnel to.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// `name`: what users type (`ssh -J bastion NAME`). A DNS-style name of `a-z 0-9 . -`
    /// (labels of 1 to 63 characters, not starting or ending with `-`), compared
    /// case-insensitively and stored lowercased; must not look like an IP address. Unique.
    pub name: String,
    /// `address`: the IP literal (IPv4 or IPv6) the bastion dials. DNS names are not accepted:
    /// the bastion never resolves names, so a DNS answer can never redirect a tunnel (no DNS
    /// rebinding). Loopback, unspecified, multicast, broadcast, link-local (including the
    /// instance metadata service 169.254.169.254), AWS-reserved `fd00:ec2::/32` and
    /// IPv4-mapped/compatible IPv6 forms are rejected. Unique across hosts.
    pub address: IpAddr,
    /// `groups`: users in any of these groups may reach this host; at least one.
    pub groups: Vec<String>,
    /// `ports`: the TCP ports that may be forwarded to; 1..65535, at least one, no duplicates.
    /// Default `[22]`.
    pub ports: Vec<u16>,
}

impl Config {
    /// A few human-readable lines describing this configuration, for `gatehouse check`.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let listen: Vec<String> = self.server.listen.iter().map(ToString::to_string).collect();
        let keys: usize = self.users.iter().map(|u| u.keys.len()).sum();
        let cas: Vec<&str> = self
            .trusted_user_ca
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let ports: usize = self.hosts.iter().map(|h| h.ports.len()).sum();
        let _ = writeln!(out, "config: {}", self.source.display());
        let _ = writeln!(out, "listen: {}", listen.join(", "));
        if self
            .aws
            .as_ref()
            .is_none_or(|a| a.host_key_ssm_parameter.is_none())
        {
            let _ = writeln!(out, "host key: {}", self.server.host_key.display());
        }
        if self.aws.is_none() {
            let _ = writeln!(
                out,
                "users: {} ({keys} {})",
                self.users.len(),
                plural(keys, "key", "keys")
            );
            let _ = writeln!(
                out,
                "hosts: {} ({ports} {})",
                self.hosts.len(),
                plural(ports, "port", "ports")
            );
        }
        if let Some(aws) = &self.aws {
            let vpcs = aws.vpc_ids.join(", ");
            let _ = writeln!(
                out,
                "aws: users from IAM, hosts from EC2 ({vpcs}), refresh every {}, stale after {}",
                humantime::format_duration(aws.refresh_interval),
                humantime::format_duration(aws.max_staleness)
            );
            if let Some(param) = &aws.host_key_ssm_parameter {
                let _ = writeln!(out, "host key from SSM: {param}");
            }
        }
        if !cas.is_empty() {
            let _ = writeln!(out, "trusted user CAs: {}", cas.join(", "));
        }
        if let Some(sso) = &self.sso {
            let _ = writeln!(
                out,
                "sso: accounts {}, {} permission sets, {} roles, IAM users {}, certificates for {}, CA key {}",
                sso.accounts.join(", "),
                sso.permission_sets.len(),
                sso.roles.len(),
                if sso.iam_users { "yes" } else { "no" },
                humantime::format_duration(sso.validity),
                sso.ca_key.display()
            );
        }
        match &self.audit.file {
            Some(file) => {
                let _ = write!(out, "audit: {}", file.display());
            }
            None => out.push_str("audit: standard output (JSON lines)"),
        }
        out
    }
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}
