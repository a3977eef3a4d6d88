//! The bastion's user data: a `#cloud-config` document that writes the gatehouse config and
//! the hardened systemd unit, downloads the gatehouse binary (from the stack's bucket with the
//! instance role, or from the spec's URL; checking its SHA-256 when known), hands port 22 from
//! the image's sshd to gatehouse and starts it.

use crate::model::TAG_STACK;
use crate::names::{audit_log_group, event_queue_name, host_key_parameter, user_ca_parameter};
use crate::spec::{Binary, Spec};
use gatehouse_config::Config;

/// The hardened unit shipped in the repository's `systemd/` folder.
pub const SYSTEMD_UNIT: &str = include_str!("../../../systemd/gatehouse.service");
/// Its socket unit: systemd binds port 22 so the service needs no capability.
pub const SYSTEMD_SOCKET: &str = include_str!("../../../systemd/gatehouse.socket");
/// AWS mode reaches the AWS APIs (public addresses) and the instance metadata service for
/// its credentials: lift the unit's private-ranges-only outbound allow-list.
pub const SYSTEMD_AWS_DROP_IN: &str =
    "# Written by gatehouse-vpc: AWS mode needs the AWS APIs and the instance metadata\n\
# service, which the unit's IPAddressAllow= (private ranges only) would block.\n\
[Service]\n\
IPAddressDeny=\n\
IPAddressAllow=\n";
/// Where the daemon keeps its last good AWS listing (inside its StateDirectory), so that a
/// restarted daemon serves at once.
pub const SNAPSHOT_PATH: &str = "/var/lib/gatehouse/aws-directory.json";
/// Where the daemon keeps its host key (inside its StateDirectory).
pub const HOST_KEY_PATH: &str = "/var/lib/gatehouse/ssh_host_ed25519_key";
/// Where the daemon keeps its copy of the SSO CA key (`sso.ca_key`, with `[bastion.daemon.sso]`).
pub const USER_CA_PATH: &str = "/var/lib/gatehouse/user_ca_ed25519_key";
/// The daemon's audit file (inside its StateDirectory): the spool its audit lines are shipped
/// from, with the position shipped kept beside it (`audit.jsonl.shipped`). State that must
/// survive a restart as it is, so not in the LogsDirectory, where log rotation could move it.
pub const AUDIT_FILE_PATH: &str = "/var/lib/gatehouse/audit.jsonl";

/// The daemon settings gatehouse-vpc writes itself, as (table, key): `[bastion.daemon]` in the
/// spec may set anything else the daemon reads, but not these.
pub const WRITTEN_KEYS: [(&str, &str); 17] = [
    ("server", "listen"),
    ("server", "host_key"),
    // With `[bastion] replicas` >= 2: port 22 takes PROXY v2 from the balancer's subnets,
    // the balancer health-checks the health port, and the replicas share one listing.
    ("server", "proxy_listen"),
    ("server", "trusted_proxies"),
    ("server", "health_listen"),
    ("aws", "shared_snapshot"),
    // The spool of the audit shipping, in the daemon's StateDirectory.
    ("audit", "file"),
    ("aws", "region"),
    ("aws", "vpc_ids"),
    // The daemon reads the tags gatehouse-vpc puts on hosts (`model::TAG_GROUPS`, ...).
    ("aws", "tag_prefix"),
    ("aws", "snapshot_file"),
    ("aws", "host_key_ssm_parameter"),
    ("aws", "host_key_tags"),
    // With `[bastion] iam_events`: the stack's queue.
    ("aws", "events_queue_url"),
    // The stack's audit log group, which outlives the bastion.
    ("aws", "audit_log_group"),
    // With `[bastion.daemon.sso]`: the fleet's one CA, in the stack's SSM parameter, and the
    // copy kept in the StateDirectory.
    ("aws", "user_ca_ssm_parameter"),
    ("sso", "ca_key"),
];

/// The port of the daemon's health endpoint (`server.health_listen`) on replicas behind the
/// balancer: its target group checks `GET /health` there, never the SSH port, so probes are
/// never failed logins.
pub const HEALTH_PORT: u16 = 8022;
/// The path the balancer's health check asks for (the daemon answers any path).
pub const HEALTH_PATH: &str = "/health";
/// The socket unit's drop-in on replicas: port 22 expects a PROXY v2 header (the balancer
/// sends one first on every connection; `trusted_proxies` names who may).
pub const SYSTEMD_PROXY_SOCKET_DROP_IN: &str =
    "# Written by gatehouse-vpc: behind the stack's Network Load Balancer, every connection\n\
# to port 22 starts with a PROXY protocol v2 header carrying the client's address.\n\
[Socket]\n\
FileDescriptorName=proxy\n";

/// The account the config is checked with before the real one is known (spec validation,
/// the role's actions): the account only shows in the event queue's URL.
pub const PLACEHOLDER_ACCOUNT: &str = "123456789012";

/// The URL of the stack's IAM change-event queue in `account`, as the daemon's config takes
/// it: SQS's own form (`https://sqs.us-east-1.amazonaws.com/ACCOUNT/NAME`), or, when the
/// spec's `[bastion.daemon.aws]` sends the daemon to another endpoint (`endpoint_url`, e.g.
/// LocalStack or moto), that endpoint's form, `ENDPOINT/ACCOUNT/NAME`. Known before the queue
/// exists, so the user data (and its digest) is the same at plan and at launch.
pub fn event_queue_url(spec: &Spec, account: &str) -> String {
    let region = gatehouse_aws::events::IAM_EVENTS_REGION;
    let endpoint = spec
        .bastion
        .daemon
        .get("aws")
        .and_then(|a| a.get("endpoint_url"))
        .and_then(toml::Value::as_str);
    let base = match endpoint {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let domain = match crate::names::partition(region) {
                "aws-cn" => "amazonaws.com.cn",
                _ => "amazonaws.com",
            };
            format!("https://sqs.{region}.{domain}")
        }
    };
    format!("{base}/{account}/{}", event_queue_name(&spec.stack))
}

/// The gatehouse daemon config for the bastion of `spec` in VPC `vpc_id`: the spec's
/// `[bastion.daemon]` table with the settings gatehouse-vpc owns ([`WRITTEN_KEYS`]) put in,
/// serialized by the TOML library (so no value can break out of its string). The host key
/// parameter is created tagged with the stack (`host_key_tags`), so `destroy` deletes it.
/// With `[bastion] iam_events`, it names the stack's event queue in `account`
/// ([`event_queue_url`]); `aws.iam_sweep_interval` keeps the daemon's default for events.
/// The audit lines go to [`AUDIT_FILE_PATH`] and from there to the stack's log group
/// (`aws.audit_log_group`), in a stream named after the instance's host name (the daemon's
/// default; `aws.audit_log_stream` in `[bastion.daemon]` may name another).
/// [`check_daemon_config`] is what the daemon's own parser says about it.
pub fn daemon_config(spec: &Spec, vpc_id: &str, account: &str) -> String {
    let mut doc = spec.bastion.daemon.clone();
    let sso_accounts = doc.get("sso").and_then(|t| t.get("accounts")).is_some();
    let mut set = |table: &str, key: &str, value: toml::Value| {
        if let toml::Value::Table(t) = doc
            .entry(table)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            t.insert(key.to_owned(), value);
        }
    };
    let ssh = "0.0.0.0:22";
    if spec.bastion.scaled_out() {
        // Only the balancer reaches the replicas (their security group says so too): port 22
        // speaks PROXY v2, trusted from the public subnets, where the balancer's nodes are.
        set("server", "listen", toml::Value::Array(Vec::new()));
        set("server", "proxy_listen", toml::Value::from(vec![ssh]));
        let balancer: Vec<String> = spec.public_subnets().map(|s| s.cidr.to_string()).collect();
        set("server", "trusted_proxies", toml::Value::from(balancer));
        set(
            "server",
            "health_listen",
            format!("0.0.0.0:{HEALTH_PORT}").into(),
        );
        set(
            "aws",
            "shared_snapshot",
            shared_snapshot_url(&spec.stack, account).into(),
        );
    } else {
        set("server", "listen", toml::Value::from(vec![ssh]));
    }
    set("server", "host_key", HOST_KEY_PATH.into());
    set("audit", "file", AUDIT_FILE_PATH.into());
    set("aws", "region", spec.region.as_str().into());
    set("aws", "vpc_ids", toml::Value::from(vec![vpc_id]));
    set(
        "aws",
        "tag_prefix",
        gatehouse_config::DEFAULT_TAG_PREFIX.into(),
    );
    set("aws", "snapshot_file", SNAPSHOT_PATH.into());
    set(
        "aws",
        "host_key_ssm_parameter",
        host_key_parameter(&spec.stack).into(),
    );
    let tags = toml::Table::from_iter([(TAG_STACK.to_owned(), spec.stack.as_str().into())]);
    set("aws", "host_key_tags", toml::Value::Table(tags));
    set(
        "aws",
        "audit_log_group",
        audit_log_group(&spec.stack).into(),
    );
    if spec.bastion.iam_events {
        set(
            "aws",
            "events_queue_url",
            event_queue_url(spec, account).into(),
        );
    }
    if spec.bastion.sso() {
        set(
            "aws",
            "user_ca_ssm_parameter",
            user_ca_parameter(&spec.stack).into(),
        );
        set("sso", "ca_key", USER_CA_PATH.into());
        if !sso_accounts {
            // The stack's own account, unless the spec names others.
            set("sso", "accounts", toml::Value::from(vec![account]));
        }
    }
    let body = toml::to_string(&doc).unwrap_or_else(|e| format!("# not serializable: {e}\n"));
    format!(
        "# Written by gatehouse-vpc for stack {}.\n{body}",
        spec.stack
    )
}

/// The replicas' shared listing (`aws.shared_snapshot`): an object in the stack's bucket, so
/// N replicas make one replica's IAM calls between them, not N times as many.
pub fn shared_snapshot_url(stack: &str, account: &str) -> String {
    format!(
        "s3://{}/{}",
        crate::names::binary_bucket(stack, account),
        crate::names::SHARED_SNAPSHOT_OBJECT
    )
}

/// The daemon's verdict on the config written for `spec` in `vpc_id` and `account`: its own
/// parser and validator (`gatehouse_config::parse`), so a config the daemon would refuse at
/// boot (exit 64, a bastion that never serves) is refused at `plan` instead. Errors: one line
/// each, naming the daemon key.
pub fn check_daemon_config(
    spec: &Spec,
    vpc_id: &str,
    account: &str,
) -> Result<Config, Vec<String>> {
    let mut problems: Vec<String> = WRITTEN_KEYS
        .iter()
        .filter(|(table, key)| {
            spec.bastion
                .daemon
                .get(*table)
                .and_then(|t| t.get(*key))
                .is_some()
        })
        .map(|(table, key)| match (*table, *key) {
            ("aws", "events_queue_url") => format!(
                "bastion.daemon: {table}.{key} is written by gatehouse-vpc; remove it and set \
                 iam_events = true in [bastion] (the stack's own queue and rule)"
            ),
            ("aws", "audit_log_group") | ("audit", "file") => format!(
                "bastion.daemon: {table}.{key} is written by gatehouse-vpc; remove it (the audit \
                 lines go to {AUDIT_FILE_PATH} and from there to the stack's log group {}, kept \
                 for [bastion] audit_retention_days)",
                audit_log_group(&spec.stack)
            ),
            _ => format!("bastion.daemon: {table}.{key} is written by gatehouse-vpc; remove it"),
        })
        .collect();
    match gatehouse_config::parse(
        &daemon_config(spec, vpc_id, account),
        std::path::Path::new("gatehouse.toml"),
    ) {
        Ok(config) if problems.is_empty() => return Ok(config),
        Ok(_) => {}
        Err(e) => problems.extend(e.diagnostics().iter().map(|d| {
            format!(
                "bastion.daemon: the daemon would refuse its config: {}",
                d.message
            )
        })),
    }
    Err(problems)
}

/// The fetcher the install script runs for a stored binary (`gatehouse_binary`).
pub const FETCH_SCRIPT: &str = include_str!("gatehouse-fetch.py");
/// Where the user data writes [`FETCH_SCRIPT`].
pub const FETCH_PATH: &str = "/usr/local/sbin/gatehouse-fetch";

/// The https URL of a stored binary: `gatehouse/<sha256>` in the stack's bucket, virtual-hosted
/// style on the region's S3 endpoint.
pub fn binary_url(region: &str, bucket: &str, sha256: &str) -> String {
    let domain = match crate::names::partition(region) {
        "aws-cn" => "amazonaws.com.cn",
        _ => "amazonaws.com",
    };
    format!(
        "https://{bucket}.s3.{region}.{domain}/{}",
        crate::names::binary_object(sha256)
    )
}

/// The install script run once by cloud-init. `bucket`: the stack's bucket, for a stored
/// binary.
fn install_script(spec: &Spec, bucket: Option<&str>) -> String {
    // Every interpolated value is validated (https URL without quotes, spaces, `$` or
    // backslashes; hex digests; bucket and region names), so single quotes hold.
    let fetch = match (&spec.bastion.binary, bucket) {
        (Binary::Url { url, sha256 }, _) => {
            let check = match sha256 {
                Some(sha) => format!("echo '{sha}  '\"$tmp\" | sha256sum -c -\n"),
                None => String::new(),
            };
            format!(
                "curl -fsSL --proto '=https' --tlsv1.2 --retry 5 --retry-all-errors -o \"$tmp\" '{url}'\n{check}"
            )
        }
        (Binary::Stored { sha256, .. }, Some(bucket)) => format!(
            "{FETCH_PATH} '{url}' '{region}' '{sha256}' \"$tmp\"\n",
            url = binary_url(&spec.region, bucket, sha256),
            region = spec.region,
        ),
        (Binary::Stored { .. }, None) => {
            "echo 'gatehouse-install: no bucket for the binary' >&2\nexit 1\n".to_string()
        }
    };
    format!(
        "#!/bin/sh\n\
         set -eu\n\
         tmp=$(mktemp)\n\
         {fetch}\
         install -m 0755 \"$tmp\" /usr/local/bin/gatehouse\n\
         rm -f \"$tmp\"\n\
         # gatehouse serves port 22; the image's sshd must not hold it. Administer the bastion\n\
         # through a replacement instance (or SSM Session Manager if you add it), not a shell.\n\
         for unit in ssh.socket ssh.service sshd.service; do\n\
         \x20 systemctl disable --now \"$unit\" 2>/dev/null || true\n\
         done\n\
         systemctl daemon-reload\n\
         systemctl enable --now gatehouse.socket gatehouse.service\n",
    )
}

/// Indent every line of `text` by `n` spaces (for a YAML block scalar).
fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The complete user data (plain text; the executor base64-encodes it for EC2), for the
/// bastion of `spec` in VPC `vpc_id` of `account`.
pub fn render(spec: &Spec, vpc_id: &str, account: &str, bucket: Option<&str>) -> String {
    let fetcher = match spec.bastion.binary {
        Binary::Stored { .. } => format!(
            "\x20 - path: {FETCH_PATH}\n\
             \x20   owner: root:root\n\
             \x20   permissions: '0755'\n\
             \x20   content: |\n\
             {}\n",
            indent(FETCH_SCRIPT, 6)
        ),
        Binary::Url { .. } => String::new(),
    };
    let proxy_socket = if spec.bastion.scaled_out() {
        format!(
            "\x20 - path: /etc/systemd/system/gatehouse.socket.d/proxy.conf\n\
             \x20   owner: root:root\n\
             \x20   permissions: '0644'\n\
             \x20   content: |\n\
             {}\n",
            indent(SYSTEMD_PROXY_SOCKET_DROP_IN, 6)
        )
    } else {
        String::new()
    };
    format!(
        "#cloud-config\n\
         # gatehouse bastion of stack {stack}, written by gatehouse-vpc\n\
         write_files:\n\
         \x20 - path: /etc/gatehouse/gatehouse.toml\n\
         \x20   owner: root:root\n\
         \x20   permissions: '0644'\n\
         \x20   content: |\n\
         {config}\n\
         \x20 - path: /etc/systemd/system/gatehouse.service\n\
         \x20   owner: root:root\n\
         \x20   permissions: '0644'\n\
         \x20   content: |\n\
         {unit}\n\
         \x20 - path: /etc/systemd/system/gatehouse.socket\n\
         \x20   owner: root:root\n\
         \x20   permissions: '0644'\n\
         \x20   content: |\n\
         {socket}\n\
         {proxy_socket}\
         \x20 - path: /etc/systemd/system/gatehouse.service.d/aws.conf\n\
         \x20   owner: root:root\n\
         \x20   permissions: '0644'\n\
         \x20   content: |\n\
         {drop_in}\n\
         \x20 - path: /usr/local/sbin/gatehouse-install\n\
         \x20   owner: root:root\n\
         \x20   permissions: '0755'\n\
         \x20   content: |\n\
         {script}\n\
         {fetcher}\
         runcmd:\n\
         \x20 - [/usr/local/sbin/gatehouse-install]\n",
        stack = spec.stack,
        config = indent(&daemon_config(spec, vpc_id, account), 6),
        unit = indent(SYSTEMD_UNIT, 6),
        socket = indent(SYSTEMD_SOCKET, 6),
        drop_in = indent(SYSTEMD_AWS_DROP_IN, 6),
        proxy_socket = proxy_socket,
        script = indent(&install_script(spec, bucket), 6),
    )
}
