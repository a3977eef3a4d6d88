//! Semantic validation: [`RawConfig`] in, [`Config`] or every problem found out.
//!
//! The validator keeps going after a problem so that one run lists them all; when a value is
//! bad it substitutes the default and carries on, and the half-built `Config` is thrown away
//! at the end if anything was reported.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ssh_key::public::KeyData;
use ssh_key::{HashAlg, PublicKey};
use toml::Spanned;

use crate::address::forbidden_target_reason;
use crate::error::{Diagnostic, Source};
use crate::keys::{parse_key_line, parse_keys_file, parse_user_key_line};
use crate::model::*;
use crate::raw::{
    Integer, RawAudit, RawAws, RawConfig, RawDateTime, RawGroupMap, RawHost, RawLimits, RawMetrics,
    RawPenalties, RawServer, RawSso, RawTrustedCa, RawUser,
};

/// Longest user, group and host-label name, in characters.
const MAX_NAME_LEN: usize = 64;
/// Longest host name (a DNS name), in characters.
const MAX_HOST_NAME_LEN: usize = 253;
/// Longest DNS label, in characters.
const MAX_LABEL_LEN: usize = 63;

/// Validates a parsed document. `source` is the config text (for positions); relative paths
/// are resolved against `dir`.
pub(crate) fn validate(
    raw: RawConfig,
    source: Source<'_>,
    dir: &Path,
) -> Result<Config, Vec<Diagnostic>> {
    let mut v = Validator {
        source,
        dir,
        diagnostics: Vec::new(),
        key_owners: HashMap::new(),
    };
    let server = v.server(raw.server.as_ref());
    let audit = v.audit(raw.audit.as_ref());
    let users = v.users(&raw.users);
    let trusted_user_ca = v.trusted_cas(&raw.trusted_user_ca);
    let hosts = v.hosts(&raw.hosts);
    let limits = v.limits(raw.limits.as_ref());
    let penalties = v.penalties(raw.penalties.as_ref());
    let metrics = v.metrics(raw.metrics.as_ref());
    let aws = raw
        .aws
        .as_ref()
        .map(|aws| v.aws(aws.get_ref(), &aws.span()));
    if let (Some(group), None) = (
        raw.aws
            .as_ref()
            .and_then(|a| a.get_ref().audit_log_group.as_ref()),
        &audit.file,
    ) {
        v.error(
            &group.span(),
            "aws.audit_log_group: needs audit.file: the audit file is the spool the lines are \
             shipped from (a restart resumes where it stopped); set [audit] file"
                .to_owned(),
        );
    }
    let sso = raw
        .sso
        .as_ref()
        .map(|sso| v.sso(sso.get_ref(), &sso.span(), aws.is_some()));
    if let (Some(param), None) = (
        raw.aws
            .as_ref()
            .and_then(|a| a.get_ref().user_ca_ssm_parameter.as_ref()),
        &sso,
    ) {
        v.error(
            &param.span(),
            "aws.user_ca_ssm_parameter: needs [sso]: it holds the key of the CA that signs \
             gatehouse login's certificates"
                .to_owned(),
        );
    }
    if aws.is_some() {
        // One source of truth at a time: a static entry next to AWS would be a second door
        // that no IAM change can close.
        for (kind, span) in raw
            .users
            .first()
            .map(|u| ("users", u.span()))
            .into_iter()
            .chain(raw.hosts.first().map(|h| ("hosts", h.span())))
        {
            v.error(
                &span,
                format!(
                    "{kind}: [[{kind}]] cannot be combined with [aws]: with [aws], users come \
                     from IAM and hosts from EC2 tags; remove the [[{kind}]] tables or the [aws] \
                     table"
                ),
            );
        }
    }
    if v.diagnostics.is_empty() {
        return Ok(Config {
            source: source.file.to_path_buf(),
            server,
            audit,
            users,
            hosts,
            limits,
            penalties,
            metrics,
            aws,
            trusted_user_ca,
            sso,
        });
    }
    let config_file = source.file;
    let mut diagnostics = v.diagnostics;
    // Config-file problems first, in file order; then each keys file's, in line order.
    diagnostics.sort_by(|a, b| {
        (a.file != config_file, &a.file, a.line, a.column).cmp(&(
            b.file != config_file,
            &b.file,
            b.line,
            b.column,
        ))
    });
    Err(diagnostics)
}

struct Validator<'a> {
    source: Source<'a>,
    dir: &'a Path,
    diagnostics: Vec<Diagnostic>,
    /// Every key seen so far, with a description of where it was, to refuse a key that two
    /// users share (the audit log could not tell who used it) or that is listed twice.
    key_owners: HashMap<KeyData, String>,
}

impl Validator<'_> {
    fn error(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let diagnostic = self.source.at(span, message);
        self.diagnostics.push(diagnostic);
    }

    fn server(&mut self, server: Option<&Spanned<RawServer>>) -> ServerConfig {
        let Some(spanned) = server else {
            self.error(
                &(0..0),
                "server.listen: missing; add a [server] table with e.g. listen = [\"0.0.0.0:22\"]",
            );
            return self.server_fields(&empty_server(), None);
        };
        self.server_fields(spanned.get_ref(), Some(&spanned.span()))
    }

    /// `table` is the span of `[server]`, `None` when it is missing (already reported).
    fn server_fields(&mut self, s: &RawServer, table: Option<&Range<usize>>) -> ServerConfig {
        let listen = self.listen(s, table);
        let host_key = match &s.host_key {
            Some(path) => self
                .path("server.host_key", path)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_HOST_KEY)),
            None => PathBuf::from(DEFAULT_HOST_KEY),
        };
        let keepalive_interval = match &s.keepalive_interval {
            None => Some(DEFAULT_KEEPALIVE_INTERVAL),
            Some(value) => match self.parse_duration("server.keepalive_interval", value) {
                Some(Duration::ZERO) => None,
                Some(d) => Some(self.in_range(
                    "server.keepalive_interval",
                    value,
                    d,
                    KEEPALIVE_INTERVAL_RANGE,
                    " (or \"0\" to disable)",
                )),
                None => Some(DEFAULT_KEEPALIVE_INTERVAL),
            },
        };
        let proxy_listen = match &s.proxy_listen {
            Some(list) => self.socket_addrs("server.proxy_listen", list),
            None => Vec::new(),
        };
        let trusted_proxies = self.cidrs("server.trusted_proxies", s.trusted_proxies.as_deref());
        if let (Some(list), true) = (&s.proxy_listen, trusted_proxies.is_empty()) {
            if !list.get_ref().is_empty() {
                self.error(
                    &list.span(),
                    "server.proxy_listen: needs server.trusted_proxies, the CIDRs of the load \
                     balancers allowed to send PROXY headers",
                );
            }
        }
        for addr in &proxy_listen {
            if listen.contains(addr) {
                if let Some(list) = &s.proxy_listen {
                    self.error(
                        &list.span(),
                        format!("server.proxy_listen: {addr} is also in server.listen"),
                    );
                }
            }
        }
        let health_listen = s
            .health_listen
            .as_ref()
            .and_then(|item| self.socket_addr("server.health_listen", item));
        if let Some(addr) = health_listen.filter(|a| listen.contains(a) || proxy_listen.contains(a))
        {
            if let Some(item) = &s.health_listen {
                self.error(
                    &item.span(),
                    format!("server.health_listen: {addr} is also an SSH listen address"),
                );
            }
        }
        let control_socket = s
            .control_socket
            .as_ref()
            .and_then(|path| self.path("server.control_socket", path));
        ServerConfig {
            control_socket,
            pq_only: s.pq_only.unwrap_or(false),
            health_listen,
            proxy_listen,
            trusted_proxies,
            listen,
            host_key,
            login_grace: self.duration(
                "server.login_grace",
                s.login_grace.as_ref(),
                DEFAULT_LOGIN_GRACE,
                LOGIN_GRACE_RANGE,
            ),
            version_grace: self.duration(
                "server.version_grace",
                s.version_grace.as_ref(),
                DEFAULT_VERSION_GRACE,
                LOGIN_GRACE_RANGE,
            ),
            kex_grace: self.duration(
                "server.kex_grace",
                s.kex_grace.as_ref(),
                DEFAULT_KEX_GRACE,
                LOGIN_GRACE_RANGE,
            ),
            max_unauthenticated: self.count(
                "server.max_unauthenticated",
                s.max_unauthenticated.as_ref(),
                DEFAULT_MAX_UNAUTHENTICATED,
                MAX_UNAUTHENTICATED_RANGE,
            ),
            eviction_min_age: self.duration(
                "server.eviction_min_age",
                s.eviction_min_age.as_ref(),
                DEFAULT_EVICTION_MIN_AGE,
                EVICTION_MIN_AGE_RANGE,
            ),
            idle_timeout: self.duration(
                "server.idle_timeout",
                s.idle_timeout.as_ref(),
                DEFAULT_IDLE_TIMEOUT,
                IDLE_TIMEOUT_RANGE,
            ),
            connect_timeout: self.duration(
                "server.connect_timeout",
                s.connect_timeout.as_ref(),
                DEFAULT_CONNECT_TIMEOUT,
                CONNECT_TIMEOUT_RANGE,
            ),
            keepalive_interval,
            max_auth_attempts: self.count(
                "server.max_auth_attempts",
                s.max_auth_attempts.as_ref(),
                DEFAULT_MAX_AUTH_ATTEMPTS,
                MAX_AUTH_ATTEMPTS_RANGE,
            ),
            shutdown_grace: self.duration(
                "server.shutdown_grace",
                s.shutdown_grace.as_ref(),
                DEFAULT_SHUTDOWN_GRACE,
                SHUTDOWN_GRACE_RANGE,
            ),
            drain_delay: self.duration(
                "server.drain_delay",
                s.drain_delay.as_ref(),
                Duration::ZERO,
                DRAIN_DELAY_RANGE,
            ),
        }
    }

    /// `server.listen`: at least one address, unless `proxy_listen` has one (a bastion
    /// reached only through a load balancer).
    fn listen(&mut self, s: &RawServer, table: Option<&Range<usize>>) -> Vec<SocketAddr> {
        let proxied = s
            .proxy_listen
            .as_ref()
            .is_some_and(|l| !l.get_ref().is_empty());
        let Some(list) = &s.listen else {
            let Some(table) = table.filter(|_| !proxied) else {
                return Vec::new();
            };
            self.error(
                table,
                "server.listen: missing; give at least one address, e.g. listen = [\"0.0.0.0:22\"]",
            );
            return Vec::new();
        };
        if list.get_ref().is_empty() && !proxied {
            self.error(
                &list.span(),
                "server.listen: empty; give at least one address, e.g. [\"0.0.0.0:22\"]",
            );
        }
        self.socket_addrs("server.listen", list)
    }

    /// A list of `IP:PORT` socket addresses, without duplicates.
    fn socket_addrs(&mut self, key: &str, list: &Spanned<Vec<Spanned<String>>>) -> Vec<SocketAddr> {
        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        let mut out = Vec::new();
        for (i, item) in list.get_ref().iter().enumerate() {
            match self.socket_addr(&format!("{key}[{i}]"), item) {
                Some(addr) => {
                    if let Some(first) = seen.insert(addr, i) {
                        self.error(
                            &item.span(),
                            format!("{key}[{i}]: {addr} is already listed as {key}[{first}]"),
                        );
                    } else {
                        out.push(addr);
                    }
                }
                None => continue,
            }
        }
        out
    }

    /// One `IP:PORT` socket address.
    fn socket_addr(&mut self, key: &str, item: &Spanned<String>) -> Option<SocketAddr> {
        let text = item.get_ref().trim();
        match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                let hint = if text.matches(':').count() > 1 && !text.starts_with('[') {
                    "; IPv6 addresses need brackets, e.g. \"[::]:22\""
                } else {
                    "; write IP:PORT (e.g. \"0.0.0.0:22\" or \"[::]:22\"), host names are not \
                     resolved"
                };
                self.error(
                    &item.span(),
                    format!("{key}: `{}` is not a socket address{hint}", item.get_ref()),
                );
                None
            }
        }
    }

    /// A list of CIDRs (`10.0.0.0/8`, `2001:db8::/32`; a bare address means one host).
    fn cidrs(&mut self, key: &str, list: Option<&[Spanned<String>]>) -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        for (i, item) in list.unwrap_or_default().iter().enumerate() {
            let text = item.get_ref().trim();
            let parsed = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => out.push(net.trunc()),
                Err(_) => self.error(
                    &item.span(),
                    format!(
                        "{key}[{i}]: `{}` is not a CIDR; write e.g. \"10.0.0.0/16\" or \"2001:db8::/48\"",
                        item.get_ref()
                    ),
                ),
            }
        }
        out
    }

    fn limits(&mut self, limits: Option<&RawLimits>) -> LimitsConfig {
        let count = |v: &mut Self, key: &str, value: Option<&Spanned<Integer>>, default| {
            v.count(key, value, default, LIMIT_RANGE)
        };
        let l = limits;
        let per_source = count(
            self,
            "limits.per_source_max_unauthenticated",
            l.and_then(|l| l.per_source_max_unauthenticated.as_ref()),
            DEFAULT_PER_SOURCE_MAX_UNAUTHENTICATED,
        );
        LimitsConfig {
            max_sessions_per_user: count(
                self,
                "limits.max_sessions_per_user",
                l.and_then(|l| l.max_sessions_per_user.as_ref()),
                DEFAULT_MAX_SESSIONS_PER_USER,
            ),
            max_channels_per_connection: count(
                self,
                "limits.max_channels_per_connection",
                l.and_then(|l| l.max_channels_per_connection.as_ref()),
                DEFAULT_MAX_CHANNELS_PER_CONNECTION,
            ),
            max_tunnels: count(
                self,
                "limits.max_tunnels",
                l.and_then(|l| l.max_tunnels.as_ref()),
                DEFAULT_MAX_TUNNELS,
            ),
            per_source_max_unauthenticated: per_source,
            per_prefix_max_unauthenticated: self.per_prefix(l, per_source),
            max_buffered_mib: l.and_then(|l| l.max_buffered_mib.as_ref()).map(|value| {
                self.count(
                    "limits.max_buffered_mib",
                    Some(value),
                    MAX_BUFFERED_MIB_RANGE.0,
                    MAX_BUFFERED_MIB_RANGE,
                )
            }),
        }
    }

    /// `limits.per_prefix_max_unauthenticated`: at least the per-source cap (a prefix holds
    /// its sources), by default [`DEFAULT_PER_PREFIX_SOURCES`] times it.
    fn per_prefix(&mut self, l: Option<&RawLimits>, per_source: usize) -> usize {
        let default = per_source.saturating_mul(DEFAULT_PER_PREFIX_SOURCES);
        let key = "limits.per_prefix_max_unauthenticated";
        let Some(value) = l.and_then(|l| l.per_prefix_max_unauthenticated.as_ref()) else {
            return default;
        };
        let n = self.count(key, Some(value), default, LIMIT_RANGE);
        if n < per_source {
            self.error(
                &value.span(),
                format!(
                    "{key}: {n} is below limits.per_source_max_unauthenticated ({per_source}): \
                     a prefix holds its sources"
                ),
            );
            return default;
        }
        n
    }

    fn penalties(&mut self, p: Option<&RawPenalties>) -> PenaltiesConfig {
        let duration = |v: &mut Self, name: &str, value: Option<&Spanned<String>>, default| {
            v.duration(&format!("penalties.{name}"), value, default, PENALTY_RANGE)
        };
        let auth_failure = duration(
            self,
            "auth_failure",
            p.and_then(|p| p.auth_failure.as_ref()),
            DEFAULT_PENALTY_AUTH_FAILURE,
        );
        let no_auth = duration(
            self,
            "no_auth",
            p.and_then(|p| p.no_auth.as_ref()),
            DEFAULT_PENALTY_NO_AUTH,
        );
        let grace_exceeded = duration(
            self,
            "grace_exceeded",
            p.and_then(|p| p.grace_exceeded.as_ref()),
            DEFAULT_PENALTY_GRACE_EXCEEDED,
        );
        let threshold = duration(
            self,
            "threshold",
            p.and_then(|p| p.threshold.as_ref()),
            DEFAULT_PENALTY_THRESHOLD,
        );
        let max = duration(
            self,
            "max",
            p.and_then(|p| p.max.as_ref()),
            DEFAULT_PENALTY_MAX,
        );
        if max < threshold {
            if let Some(value) = p.and_then(|p| p.max.as_ref()) {
                self.error(
                    &value.span(),
                    format!(
                        "penalties.max: {} is below penalties.threshold ({}): no source could \
                         ever be refused",
                        show(max),
                        show(threshold)
                    ),
                );
            }
        }
        PenaltiesConfig {
            enabled: p.and_then(|p| p.enabled).unwrap_or(true),
            auth_failure,
            no_auth,
            grace_exceeded,
            threshold,
            max,
            max_sources: self.count(
                "penalties.max_sources",
                p.and_then(|p| p.max_sources.as_ref()),
                DEFAULT_PENALTY_MAX_SOURCES,
                LIMIT_RANGE,
            ),
            exempt: self.cidrs("penalties.exempt", p.and_then(|p| p.exempt.as_deref())),
        }
    }

    fn metrics(&mut self, m: Option<&RawMetrics>) -> MetricsConfig {
        let Some(value) = m.and_then(|m| m.listen.as_ref()) else {
            return MetricsConfig::default();
        };
        let listen = self.socket_addr("metrics.listen", value);
        if let Some(addr) = listen {
            if !addr.ip().is_loopback() {
                self.error(
                    &value.span(),
                    format!(
                        "metrics.listen: {addr} is not a loopback address; the metrics endpoint \
                         has no authentication, keep it on 127.0.0.1 or [::1]"
                    ),
                );
            }
        }
        MetricsConfig { listen }
    }

    fn audit(&mut self, audit: Option<&RawAudit>) -> AuditConfig {
        let file = audit
            .and_then(|a| a.file.as_ref())
            .and_then(|path| self.path("audit.file", path));
        let on_failure = match audit.and_then(|a| a.on_failure.as_ref()) {
            None => AuditOnFailure::default(),
            Some(value) => match value.get_ref().as_str() {
                "refuse" => AuditOnFailure::Refuse,
                "continue" => AuditOnFailure::Continue,
                other => {
                    self.error(
                        &value.span(),
                        format!(
                            "audit.on_failure: {other:?} is not \"refuse\" (the default: new \
                             logins and tunnels wait for the audit log) or \"continue\""
                        ),
                    );
                    AuditOnFailure::default()
                }
            },
        };
        AuditConfig { file, on_failure }
    }

    /// A path value: not empty, no NUL; relative paths resolved against the config's directory.
    fn path(&mut self, key: &str, value: &Spanned<String>) -> Option<PathBuf> {
        let text = value.get_ref();
        if text.trim().is_empty() {
            self.error(&value.span(), format!("{key}: empty path"));
            return None;
        }
        if text.contains('\0') {
            self.error(
                &value.span(),
                format!("{key}: path contains a NUL character"),
            );
            return None;
        }
        Some(self.dir.join(text))
    }

    fn parse_duration(&mut self, key: &str, value: &Spanned<String>) -> Option<Duration> {
        match humantime::parse_duration(value.get_ref().trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    &value.span(),
                    format!(
                        "{key}: `{}` is not a duration ({e}); write e.g. \"500ms\", \"20s\", \
                         \"15m\", \"1h\"",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn duration(
        &mut self,
        key: &str,
        value: Option<&Spanned<String>>,
        default: Duration,
        range: (Duration, Duration),
    ) -> Duration {
        let Some(value) = value else {
            return default;
        };
        match self.parse_duration(key, value) {
            Some(d) => self.in_range(key, value, d, range, ""),
            None => default,
        }
    }

    fn in_range(
        &mut self,
        key: &str,
        value: &Spanned<String>,
        d: Duration,
        (min, max): (Duration, Duration),
        note: &str,
    ) -> Duration {
        if d < min || d > max {
            self.error(
                &value.span(),
                format!(
                    "{key}: {} is out of range: must be between {} and {}{note}",
                    show(d),
                    show(min),
                    show(max)
                ),
            );
        }
        d
    }

    fn count(
        &mut self,
        key: &str,
        value: Option<&Spanned<Integer>>,
        default: usize,
        (min, max): (usize, usize),
    ) -> usize {
        let Some(value) = value else {
            return default;
        };
        match usize::try_from(value.get_ref().0) {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                self.error(
                    &value.span(),
                    format!(
                        "{key}: {} is out of range: must be between {min} and {max}",
                        value.get_ref().0
                    ),
                );
                default
            }
        }
    }

    /// A required `groups` list: at least one, each a valid group name, no duplicates.
    fn groups(
        &mut self,
        owner: &str,
        table: &Range<usize>,
        groups: Option<&Spanned<Vec<Spanned<String>>>>,
    ) -> Vec<String> {
        let Some(list) = groups else {
            self.error(
                table,
                format!("{owner}.groups: missing; give at least one group, e.g. groups = [\"research\"]"),
            );
            return Vec::new();
        };
        if list.get_ref().is_empty() {
            self.error(
                &list.span(),
                format!("{owner}.groups: empty; give at least one group"),
            );
        }
        let mut out: Vec<String> = Vec::new();
        for (i, group) in list.get_ref().iter().enumerate() {
            let name = group.get_ref();
            if let Err(why) = check_group_name(name) {
                self.error(&group.span(), format!("{owner}.groups[{i}]: {why}"));
            } else if let Some(first) = out.iter().position(|g| g == name) {
                self.error(
                    &group.span(),
                    format!("{owner}.groups[{i}]: `{name}` is already listed as {owner}.groups[{first}]"),
                );
            } else {
                out.push(name.clone());
            }
        }
        out
    }

    fn users(&mut self, users: &[Spanned<RawUser>]) -> Vec<UserConfig> {
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::new();
        for (i, user) in users.iter().enumerate() {
            let table = user.span();
            let user = user.get_ref();
            let owner = format!("users[{i}]");
            let name = match &user.name {
                None => {
                    self.error(&table, format!("{owner}.name: missing"));
                    String::new()
                }
                Some(name) => {
                    if let Err(why) = check_user_name(name.get_ref()) {
                        self.error(&name.span(), format!("{owner}.name: {why}"));
                    } else if let Some(first) = names.insert(name.get_ref().clone(), i) {
                        self.error(
                            &name.span(),
                            format!(
                                "{owner}.name: user `{}` is already defined as users[{first}]",
                                name.get_ref()
                            ),
                        );
                    }
                    name.get_ref().clone()
                }
            };
            // Names the user in messages about a key that turns up again elsewhere.
            let who = format!("user `{name}`");
            let errors_before = self.diagnostics.len();
            let mut keys = Vec::new();
            let mut key_expires = Vec::new();
            for (k, line) in user.keys.iter().enumerate() {
                let key_name = format!("{owner}.keys[{k}]");
                match parse_user_key_line(line.get_ref()) {
                    Ok((key, expires)) => {
                        let span = line.span();
                        if let Some(dup) = self.claim_key(&key, format!("{key_name} ({who})")) {
                            self.error(&span, format!("{key_name}: {dup}"));
                        } else {
                            if let Some(at) = expires {
                                key_expires.push((key.clone(), at));
                            }
                            keys.push(key);
                        }
                    }
                    Err(why) => self.error(&line.span(), format!("{key_name}: {why}")),
                }
            }
            if let Some(file) = &user.keys_file {
                let mut found = Vec::new();
                self.keys_file(&owner, &who, file, true, &mut found);
                for (key, expires) in found {
                    if let Some(at) = expires {
                        key_expires.push((key.clone(), at));
                    }
                    keys.push(key);
                }
            }
            let key_errors = self.diagnostics.len() > errors_before;
            if keys.is_empty() && !key_errors {
                self.error(
                    &table,
                    format!("{owner}: user has no public keys; give `keys` and/or `keys_file`"),
                );
            }
            let groups = self.groups(&owner, &table, user.groups.as_ref());
            let expires = user
                .expires
                .as_ref()
                .and_then(|e| self.date_time(&format!("{owner}.expires"), e));
            out.push(UserConfig {
                name,
                keys,
                groups,
                expires,
                key_expires,
            });
        }
        out
    }

    /// A date-time value: a TOML offset date-time or an RFC 3339 string, with its offset.
    fn date_time(
        &mut self,
        key: &str,
        value: &Spanned<RawDateTime>,
    ) -> Option<std::time::SystemTime> {
        let text = match value.get_ref() {
            RawDateTime::Toml(dt) => dt.to_string(),
            RawDateTime::Text(text) => text.clone(),
        };
        match crate::time::parse_rfc3339(&text) {
            Ok(t) => Some(t),
            Err(why) => {
                self.error(&value.span(), format!("{key}: {why}"));
                None
            }
        }
    }

    fn trusted_cas(&mut self, cas: &[Spanned<RawTrustedCa>]) -> Vec<TrustedUserCa> {
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::new();
        for (i, ca) in cas.iter().enumerate() {
            let table = ca.span();
            let ca = ca.get_ref();
            let owner = format!("trusted_user_ca[{i}]");
            let name = match &ca.name {
                None => {
                    self.error(&table, format!("{owner}.name: missing; name the CA for the audit log, e.g. name = \"step-ca\""));
                    String::new()
                }
                Some(name) => {
                    let text = name.get_ref();
                    let ok = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
                    if text.is_empty() || text.len() > MAX_NAME_LEN || !text.chars().all(ok) {
                        self.error(
                            &name.span(),
                            format!("{owner}.name: `{}` must be 1 to {MAX_NAME_LEN} of A-Z, a-z, 0-9, `.`, `_` and `-`", shorten_text(text)),
                        );
                    } else if let Some(first) = names.insert(text.clone(), i) {
                        self.error(
                            &name.span(),
                            format!("{owner}.name: CA `{text}` is already defined as trusted_user_ca[{first}]"),
                        );
                    }
                    text.clone()
                }
            };
            let who = format!("CA `{name}`");
            let errors_before = self.diagnostics.len();
            let mut keys = Vec::new();
            for (k, line) in ca.keys.iter().enumerate() {
                let key_name = format!("{owner}.keys[{k}]");
                match parse_key_line(line.get_ref()) {
                    Ok(key) => {
                        if let Some(dup) = self.claim_key(&key, format!("{key_name} ({who})")) {
                            self.error(&line.span(), format!("{key_name}: {dup}"));
                        } else {
                            keys.push(key);
                        }
                    }
                    Err(why) => self.error(&line.span(), format!("{key_name}: {why}")),
                }
            }
            if let Some(file) = &ca.keys_file {
                let mut found = Vec::new();
                self.keys_file(&owner, &who, file, false, &mut found);
                keys.extend(found.into_iter().map(|(key, _)| key));
            }
            if keys.is_empty() && self.diagnostics.len() == errors_before {
                self.error(
                    &table,
                    format!("{owner}: CA has no public keys; give `keys` and/or `keys_file`"),
                );
            }
            let principals = ca.principals.as_ref().map(|p| self.principals(&owner, p));
            let max_validity = ca.max_validity.as_ref().and_then(|value| {
                let key = format!("{owner}.max_validity");
                self.parse_duration(&key, value)
                    .map(|d| self.in_range(&key, value, d, MAX_VALIDITY_RANGE, ""))
            });
            out.push(TrustedUserCa {
                name,
                keys,
                principals,
                max_validity,
            });
        }
        out
    }

    /// An SSM parameter name for a key (`key` names the setting, `example` the last part of
    /// the example name).
    fn ssm_parameter(&mut self, key: &str, p: &Spanned<String>, example: &str) -> Option<String> {
        let text = p.get_ref();
        let ok = text.starts_with('/')
            && text.len() > 1
            && text.len() <= 1011
            && !text.to_ascii_lowercase().starts_with("/aws")
            && !text.to_ascii_lowercase().starts_with("/ssm")
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c));
        if ok {
            return Some(text.clone());
        }
        self.error(
            &p.span(),
            format!(
                "{key}: `{text}` is not an SSM parameter name: a path of letters, digits and \
                 `_.-/` starting with `/` (not /aws or /ssm), e.g. \"/gatehouse/prod/{example}\""
            ),
        );
        None
    }

    /// `[sso]`.
    fn sso(&mut self, s: &RawSso, table: &Range<usize>, aws: bool) -> SsoConfig {
        let mut accounts: Vec<String> = Vec::new();
        match &s.accounts {
            None => self.error(
                table,
                "sso.accounts: missing; name the AWS account ids whose callers may log in, e.g. \
                 accounts = [\"123456789012\"]",
            ),
            Some(list) if list.get_ref().is_empty() => self.error(
                &list.span(),
                "sso.accounts: empty; give at least one account id",
            ),
            Some(list) => {
                for (i, account) in list.get_ref().iter().enumerate() {
                    let text = account.get_ref();
                    if text.len() != 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
                        self.error(
                            &account.span(),
                            format!(
                                "sso.accounts[{i}]: `{}` is not an AWS account id (12 digits)",
                                shorten_text(text)
                            ),
                        );
                    } else if !accounts.contains(text) {
                        accounts.push(text.clone());
                    }
                }
            }
        }
        let validity = self.duration(
            "sso.validity",
            s.validity.as_ref(),
            DEFAULT_SSO_VALIDITY,
            SSO_VALIDITY_RANGE,
        );
        let ca_key = s
            .ca_key
            .as_ref()
            .and_then(|p| self.path("sso.ca_key", p))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_USER_CA_KEY));
        let permission_sets = self.group_map("sso.permission_sets", s.permission_sets.as_ref(), 32);
        let roles = self.group_map("sso.roles", s.roles.as_ref(), 64);
        let iam_users = match &s.iam_users {
            Some(flag) if *flag.get_ref() && !aws => {
                self.error(
                    &flag.span(),
                    "sso.iam_users: needs [aws]: IAM user callers log in as the IAM users of \
                     the directory, and without [aws] the directory has only static users",
                );
                false
            }
            Some(flag) => *flag.get_ref(),
            None => aws,
        };
        let asked_iam_users = s.iam_users.as_ref().is_some_and(|f| *f.get_ref());
        let listed = |m: Option<&RawGroupMap>| m.is_some_and(|m| !m.get_ref().is_empty());
        // With [aws], IAM roles that carry the groups tag map too (read with the users).
        if !listed(s.permission_sets.as_ref())
            && !listed(s.roles.as_ref())
            && !asked_iam_users
            && !iam_users
            && !aws
        {
            self.error(
                table,
                "sso: maps no caller; give permission_sets (IAM Identity Center), roles, or \
                 [aws] (IAM users, and IAM roles with the groups tag)",
            );
        }
        SsoConfig {
            accounts,
            validity,
            ca_key,
            permission_sets,
            roles,
            iam_users,
        }
    }

    /// `sso.permission_sets` / `sso.roles`: an IAM name (1 to `max_len` of letters, digits
    /// and `+=,.@_-`) -> its groups.
    fn group_map(
        &mut self,
        key: &str,
        map: Option<&RawGroupMap>,
        max_len: usize,
    ) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        let Some(map) = map else {
            return out;
        };
        if map.get_ref().len() > MAX_SSO_MAPPINGS {
            self.error(
                &map.span(),
                format!("{key}: more than {MAX_SSO_MAPPINGS} entries"),
            );
            return out;
        }
        for (name, groups) in map.get_ref() {
            let ok = |c: char| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c);
            if name.is_empty() || name.len() > max_len || !name.chars().all(ok) {
                self.error(
                    &groups.span(),
                    format!(
                        "{key}: `{}` is not an IAM name: 1 to {max_len} of letters, digits and `+=,.@_-`",
                        shorten_text(name)
                    ),
                );
                continue;
            }
            let owner = format!("{key}.{name}");
            let list = self.groups(&owner, &groups.span(), Some(groups));
            out.insert(name.clone(), list);
        }
        out
    }

    /// A CA's `principals` table: certificate principal -> login name.
    fn principals(
        &mut self,
        owner: &str,
        table: &Spanned<BTreeMap<String, Spanned<String>>>,
    ) -> BTreeMap<String, String> {
        let key = format!("{owner}.principals");
        if table.get_ref().len() > MAX_PRINCIPAL_MAPPINGS {
            self.error(
                &table.span(),
                format!("{key}: more than {MAX_PRINCIPAL_MAPPINGS} entries"),
            );
            return BTreeMap::new();
        }
        let mut out = BTreeMap::new();
        for (principal, login) in table.get_ref() {
            if principal.is_empty()
                || principal.chars().count() > MAX_PRINCIPAL_LEN
                || principal.chars().any(|c| c.is_control() || c == ',')
            {
                self.error(
                    &login.span(),
                    format!(
                        "{key}: principal `{}` must be 1 to {MAX_PRINCIPAL_LEN} characters, \
                         without control characters or commas",
                        shorten_text(principal)
                    ),
                );
                continue;
            }
            if let Err(why) = check_user_name(login.get_ref()) {
                self.error(&login.span(), format!("{key}.\"{principal}\": {why}"));
                continue;
            }
            out.insert(principal.clone(), login.get_ref().clone());
        }
        out
    }

    /// Reads one user's `keys_file`, appending its keys; problems in the file are reported at
    /// the file's own line and column.
    fn keys_file(
        &mut self,
        owner: &str,
        who: &str,
        file: &Spanned<String>,
        expiry_allowed: bool,
        keys: &mut Vec<(PublicKey, Option<std::time::SystemTime>)>,
    ) {
        let key = format!("{owner}.keys_file");
        let Some(path) = self.path(&key, file) else {
            return;
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                self.error(
                    &file.span(),
                    format!("{key}: cannot read {}: {e}", path.display()),
                );
                return;
            }
        };
        let (found, problems) = parse_keys_file(&text, expiry_allowed);
        for problem in problems {
            self.diagnostics.push(Diagnostic {
                file: path.clone(),
                line: problem.line,
                column: problem.column,
                message: format!("{key}: {}", problem.message),
            });
        }
        for (line, public_key, expires) in found {
            let place = format!("{}:{line} ({key}, {who})", path.display());
            if let Some(dup) = self.claim_key(&public_key, place) {
                self.diagnostics.push(Diagnostic {
                    file: path.clone(),
                    line,
                    column: 1,
                    message: format!("{key}: {dup}"),
                });
            } else {
                keys.push((public_key, expires));
            }
        }
    }

    /// Records that the key found at `place` is taken; if it already was, says where.
    fn claim_key(&mut self, key: &PublicKey, place: String) -> Option<String> {
        match self.key_owners.get(key.key_data()) {
            Some(first) => Some(format!(
                "key {} is already given at {first}; a key may appear once and belong to one \
                 user only",
                key.fingerprint(HashAlg::Sha256)
            )),
            None => {
                self.key_owners.insert(key.key_data().clone(), place);
                None
            }
        }
    }

    fn hosts(&mut self, hosts: &[Spanned<RawHost>]) -> Vec<HostConfig> {
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut addresses: HashMap<IpAddr, usize> = HashMap::new();
        let mut out = Vec::new();
        for (i, host) in hosts.iter().enumerate() {
            let table = host.span();
            let host = host.get_ref();
            let owner = format!("hosts[{i}]");
            let name = match &host.name {
                None => {
                    self.error(&table, format!("{owner}.name: missing"));
                    String::new()
                }
                Some(raw) => match check_host_name(raw.get_ref()) {
                    Err(why) => {
                        self.error(&raw.span(), format!("{owner}.name: {why}"));
                        String::new()
                    }
                    Ok(name) => {
                        if let Some(first) = names.insert(name.clone(), i) {
                            self.error(
                                &raw.span(),
                                format!("{owner}.name: host `{name}` is already defined as hosts[{first}]"),
                            );
                        }
                        name
                    }
                },
            };
            let address = match &host.address {
                None => {
                    self.error(
                        &table,
                        format!("{owner}.address: missing; give the host's IP address"),
                    );
                    None
                }
                Some(raw) => match check_address(raw.get_ref()) {
                    Err(why) => {
                        self.error(&raw.span(), format!("{owner}.address: {why}"));
                        None
                    }
                    Ok(ip) => {
                        if let Some(first) = addresses.insert(ip, i) {
                            self.error(
                                &raw.span(),
                                format!(
                                    "{owner}.address: {ip} is already the address of hosts[{first}]"
                                ),
                            );
                        }
                        Some(ip)
                    }
                },
            };
            let groups = self.groups(&owner, &table, host.groups.as_ref());
            let ports = self.ports(&owner, host.ports.as_ref());
            if let Some(address) = address {
                out.push(HostConfig {
                    name,
                    address,
                    groups,
                    ports,
                });
            }
        }
        out
    }

    fn ports(&mut self, owner: &str, ports: Option<&Spanned<Vec<Spanned<Integer>>>>) -> Vec<u16> {
        let Some(list) = ports else {
            return DEFAULT_PORTS.to_vec();
        };
        if list.get_ref().is_empty() {
            self.error(
                &list.span(),
                format!(
                    "{owner}.ports: empty; give at least one port, or leave the key out for [22]"
                ),
            );
        }
        let mut out: Vec<u16> = Vec::new();
        for (i, port) in list.get_ref().iter().enumerate() {
            let value = port.get_ref().0;
            match u16::try_from(value) {
                Ok(p) if p != 0 => {
                    if let Some(first) = out.iter().position(|&q| q == p) {
                        self.error(
                            &port.span(),
                            format!("{owner}.ports[{i}]: port {p} is already listed as {owner}.ports[{first}]"),
                        );
                    } else {
                        out.push(p);
                    }
                }
                _ => self.error(
                    &port.span(),
                    format!("{owner}.ports[{i}]: {value} is not a TCP port: must be between 1 and 65535"),
                ),
            }
        }
        out
    }
}

/// Why `aws.vpc_ids` must list at least one VPC (the tail of its "missing" and "empty" errors).
const VPC_IDS_WHY: &str = "list the VPCs whose instances may be targets, e.g. \
    vpc_ids = [\"vpc-0abc123\"]: the bastion can route only into its own VPC and the VPCs \
    peered with it, and in VPCs with overlapping CIDRs one private address names two \
    instances (gatehouse-vpc writes its VPC's id here for you)";

impl Validator<'_> {
    /// `table` is the span of `[aws]`.
    fn aws(&mut self, a: &RawAws, table: &Range<usize>) -> AwsConfig {
        let region = a.region.as_ref().and_then(|r| {
            let text = r.get_ref();
            let ok = !text.is_empty()
                && text.len() <= 32
                && text
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if ok {
                Some(text.clone())
            } else {
                self.error(
                    &r.span(),
                    format!("aws.region: `{text}` is not an AWS region name such as \"eu-west-1\""),
                );
                None
            }
        });
        let endpoint_url = a.endpoint_url.as_ref().and_then(|u| {
            let text = u.get_ref().trim();
            let rest = text
                .strip_prefix("http://")
                .or_else(|| text.strip_prefix("https://"));
            match rest {
                Some(rest) if !rest.is_empty() && !rest.contains(char::is_whitespace) => {
                    Some(text.to_owned())
                }
                _ => {
                    self.error(
                        &u.span(),
                        format!(
                            "aws.endpoint_url: `{text}` is not an http:// or https:// URL, e.g. \
                             \"http://127.0.0.1:5000\""
                        ),
                    );
                    None
                }
            }
        });
        let mut vpc_ids: Vec<String> = Vec::new();
        match &a.vpc_ids {
            None => self.error(table, format!("aws.vpc_ids: missing; {VPC_IDS_WHY}")),
            Some(list) if list.get_ref().is_empty() => {
                self.error(&list.span(), format!("aws.vpc_ids: empty; {VPC_IDS_WHY}"));
            }
            Some(_) => {}
        }
        if let Some(list) = &a.vpc_ids {
            for (i, id) in list.get_ref().iter().enumerate() {
                let text = id.get_ref();
                let ok = text.strip_prefix("vpc-").is_some_and(|hex| {
                    !hex.is_empty()
                        && hex.len() <= 32
                        && hex
                            .chars()
                            .all(|c| c.is_ascii_hexdigit() || c.is_ascii_lowercase())
                });
                if !ok {
                    self.error(
                        &id.span(),
                        format!(
                            "aws.vpc_ids[{i}]: `{text}` is not a VPC id such as \"vpc-0abc123\""
                        ),
                    );
                } else if let Some(first) = vpc_ids.iter().position(|v| v == text) {
                    self.error(
                        &id.span(),
                        format!(
                            "aws.vpc_ids[{i}]: `{text}` is already listed as aws.vpc_ids[{first}]"
                        ),
                    );
                } else {
                    vpc_ids.push(text.clone());
                }
            }
        }
        let refresh_interval = self.duration(
            "aws.refresh_interval",
            a.refresh_interval.as_ref(),
            DEFAULT_REFRESH_INTERVAL,
            REFRESH_INTERVAL_RANGE,
        );
        let max_staleness = self.duration(
            "aws.max_staleness",
            a.max_staleness.as_ref(),
            DEFAULT_MAX_STALENESS,
            MAX_STALENESS_RANGE,
        );
        if max_staleness <= refresh_interval {
            let span = a
                .max_staleness
                .as_ref()
                .or(a.refresh_interval.as_ref())
                .map(|s| s.span())
                .unwrap_or(0..0);
            self.error(
                &span,
                format!(
                    "aws.max_staleness: {} must be longer than aws.refresh_interval ({}), or \
                     every refresh would leave the directory stale",
                    show(max_staleness),
                    show(refresh_interval)
                ),
            );
        }
        let iam_path_prefix = a.iam_path_prefix.as_ref().and_then(|p| {
            let text = p.get_ref();
            let ok = text.starts_with('/')
                && text.ends_with('/')
                && text.len() <= 512
                && text.chars().all(|c| c.is_ascii_graphic());
            if ok {
                Some(text.clone())
            } else {
                self.error(
                    &p.span(),
                    format!(
                        "aws.iam_path_prefix: `{text}` is not an IAM path: it starts and ends \
                         with `/`, e.g. \"/staff/\""
                    ),
                );
                None
            }
        });
        let iam_group_prefix = a.iam_group_prefix.as_ref().and_then(|p| {
            let text = p.get_ref();
            let ok = !text.is_empty()
                && text.len() <= 64
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
            if ok {
                Some(text.clone())
            } else {
                self.error(
                    &p.span(),
                    format!(
                        "aws.iam_group_prefix: `{text}` is not the start of an IAM group name \
                         (1 to 64 of letters, digits and `+=,.@_-`), e.g. \"gatehouse-\""
                    ),
                );
                None
            }
        });
        let tag_prefix = match &a.tag_prefix {
            None => DEFAULT_TAG_PREFIX.to_owned(),
            Some(p) => {
                let text = p.get_ref();
                let ok = text.len() <= 100
                    && !text.to_ascii_lowercase().starts_with("aws:")
                    && text
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || " +-=._:/@".contains(c));
                if !ok {
                    self.error(
                        &p.span(),
                        format!(
                            "aws.tag_prefix: `{text}` cannot start a tag key (letters, digits and \
                             ` +-=._:/@`, not `aws:`), e.g. \"gatehouse:\""
                        ),
                    );
                }
                text.clone()
            }
        };
        let host_key_ssm_parameter = a
            .host_key_ssm_parameter
            .as_ref()
            .and_then(|p| self.ssm_parameter("aws.host_key_ssm_parameter", p, "host_ed25519"));
        let user_ca_ssm_parameter = a
            .user_ca_ssm_parameter
            .as_ref()
            .and_then(|p| self.ssm_parameter("aws.user_ca_ssm_parameter", p, "user_ca_ed25519"));
        let host_key_tags = self.host_key_tags(a);
        let events_queue_url = a.events_queue_url.as_ref().and_then(|u| {
            let text = u.get_ref();
            match check_queue_url(text, endpoint_url.is_some()) {
                Ok(()) => Some(text.clone()),
                Err(why) => {
                    self.error(&u.span(), format!("aws.events_queue_url: `{text}` {why}"));
                    None
                }
            }
        });
        let iam_sweep_interval = self.iam_sweep_interval(
            a,
            refresh_interval,
            max_staleness,
            events_queue_url.is_some(),
        );
        AwsConfig {
            region,
            endpoint_url,
            vpc_ids,
            refresh_interval,
            max_staleness,
            iam_path_prefix,
            iam_group_prefix,
            tag_prefix,
            host_key_ssm_parameter,
            host_key_tags,
            user_ca_ssm_parameter,
            instance_connect: a.instance_connect.as_ref().is_some_and(|b| *b.get_ref()),
            iam_calls_per_second: u32::try_from(self.count(
                "aws.iam_calls_per_second",
                a.iam_calls_per_second.as_ref(),
                DEFAULT_IAM_CALLS_PER_SECOND as usize,
                IAM_CALLS_PER_SECOND_RANGE,
            ))
            .unwrap_or(DEFAULT_IAM_CALLS_PER_SECOND),
            events_queue_url,
            iam_sweep_interval,
            audit_log_group: a.audit_log_group.as_ref().and_then(|g| {
                let text = g.get_ref();
                let ok = (1..=512).contains(&text.len())
                    && text
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-/.#".contains(c));
                if !ok {
                    self.error(
                        &g.span(),
                        format!(
                            "aws.audit_log_group: `{}` is not a CloudWatch Logs log group name \
                             (1 to 512 of letters, digits and `_-/.#`), e.g. \"/gatehouse/lab/audit\"",
                            text.escape_debug()
                        ),
                    );
                }
                ok.then(|| text.clone())
            }),
            audit_log_stream: a.audit_log_stream.as_ref().and_then(|g| {
                let text = g.get_ref();
                let ok = (1..=512).contains(&text.len())
                    && text.chars().all(|c| c.is_ascii_graphic() && c != ':' && c != '*');
                if !ok {
                    self.error(
                        &g.span(),
                        format!(
                            "aws.audit_log_stream: `{}` is not a CloudWatch Logs stream name \
                             (1 to 512 printable characters, no `:` or `*`)",
                            text.escape_debug()
                        ),
                    );
                }
                ok.then(|| text.clone())
            }),
            shared_snapshot: a.shared_snapshot.as_ref().and_then(|u| {
                let parsed = parse_s3_object(u.get_ref());
                if parsed.is_none() {
                    self.error(
                        &u.span(),
                        format!(
                            "aws.shared_snapshot: `{}` is not an S3 object such as \
                             \"s3://gatehouse-lab-123456789012/aws-directory.json\" (a bucket \
                             name of 3 to 63 of `a-z 0-9 . -`, then a key)",
                            u.get_ref().escape_debug()
                        ),
                    );
                }
                parsed
            }),
            snapshot_file: a.snapshot_file.as_ref().and_then(|p| {
                let path = std::path::PathBuf::from(p.get_ref());
                if path.is_absolute() && path.file_name().is_some() {
                    Some(path)
                } else {
                    self.error(
                        &p.span(),
                        format!(
                            "aws.snapshot_file: `{}` is not an absolute file path, e.g. \
                             \"/var/lib/gatehouse/aws-directory.json\"",
                            p.get_ref().escape_debug()
                        ),
                    );
                    None
                }
            }),
        }
    }

    /// `aws.iam_sweep_interval`: at least `refresh_interval`; without events (the sweep is
    /// then the only way a change is seen) shorter than `max_staleness`.
    fn iam_sweep_interval(
        &mut self,
        a: &RawAws,
        refresh_interval: Duration,
        max_staleness: Duration,
        events: bool,
    ) -> Duration {
        let default = if events {
            DEFAULT_EVENTS_SWEEP_INTERVAL.max(refresh_interval)
        } else {
            refresh_interval
        };
        let Some(value) = &a.iam_sweep_interval else {
            return default;
        };
        let sweep = self.duration(
            "aws.iam_sweep_interval",
            Some(value),
            default,
            (refresh_interval, MAX_IAM_SWEEP_INTERVAL),
        );
        if !events && sweep >= max_staleness {
            self.error(
                &value.span(),
                format!(
                    "aws.iam_sweep_interval: {} must be shorter than aws.max_staleness ({}) \
                     without aws.events_queue_url: the sweep is then the only way IAM is read",
                    show(sweep),
                    show(max_staleness)
                ),
            );
        }
        sweep
    }

    /// `aws.host_key_tags`: SSM's tag rules (restricted to ASCII), only with
    /// `host_key_ssm_parameter`.
    fn host_key_tags(&mut self, a: &RawAws) -> BTreeMap<String, String> {
        let Some(table) = &a.host_key_tags else {
            return BTreeMap::new();
        };
        if a.host_key_ssm_parameter.is_none() {
            self.error(
                &table.span(),
                "aws.host_key_tags: set without aws.host_key_ssm_parameter: the tags are those \
                 of the SSM host key parameter; set both or neither"
                    .to_owned(),
            );
        }
        if table.get_ref().len() > MAX_HOST_KEY_TAGS {
            self.error(
                &table.span(),
                format!(
                    "aws.host_key_tags: {} tags; SSM allows at most {MAX_HOST_KEY_TAGS}",
                    table.get_ref().len()
                ),
            );
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || " _.:/=+-@".contains(c);
        let mut tags = BTreeMap::new();
        for (key, value) in table.get_ref() {
            let key_ok = !key.is_empty()
                && key.len() <= 128
                && !key.to_ascii_lowercase().starts_with("aws:")
                && key.chars().all(allowed);
            if !key_ok {
                self.error(
                    &value.span(),
                    format!(
                        "aws.host_key_tags: `{key}` is not a tag key: 1 to 128 of letters, \
                         digits, space and `_.:/=+-@`, not starting with `aws:`, e.g. \
                         \"gatehouse:stack\""
                    ),
                );
            }
            let text = value.get_ref();
            let value_ok = text.len() <= 256 && text.chars().all(allowed);
            if !value_ok {
                self.error(
                    &value.span(),
                    format!(
                        "aws.host_key_tags.{key}: `{text}` is not a tag value: up to 256 of \
                         letters, digits, space and `_.:/=+-@`"
                    ),
                );
            }
            if key_ok && value_ok {
                tags.insert(key.clone(), text.clone());
            }
        }
        tags
    }
}

fn empty_server() -> RawServer {
    RawServer {
        listen: None,
        host_key: None,
        login_grace: None,
        version_grace: None,
        kex_grace: None,
        max_unauthenticated: None,
        eviction_min_age: None,
        idle_timeout: None,
        connect_timeout: None,
        keepalive_interval: None,
        max_auth_attempts: None,
        shutdown_grace: None,
        drain_delay: None,
        pq_only: None,
        proxy_listen: None,
        health_listen: None,
        control_socket: None,
        trusted_proxies: None,
    }
}

/// A duration as the config spells it (`20s`, `1h`, `100ms`, `0s`).
/// Cuts a value down for a one-line message.
fn shorten_text(s: &str) -> String {
    let head: String = s.chars().take(40).collect();
    if head.len() < s.len() {
        format!("{head}...")
    } else {
        head
    }
}

fn show(d: Duration) -> String {
    if d.is_zero() {
        "0s".to_owned()
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// Login names: 1 to 64 of `a-z 0-9 . _ -`, the first a letter, digit or underscore (so never
/// `.`, `..`, or something that reads as a command-line option).
fn check_user_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
    if name.is_empty() {
        return Err("empty name".to_owned());
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(format!("`{name}` is longer than {MAX_NAME_LEN} characters"));
    }
    if let Some(c) = name.chars().find(|&c| !ok_char(c)) {
        let hint = if c.is_ascii_uppercase() {
            " (login names are lowercase)"
        } else {
            ""
        };
        return Err(format!(
            "`{name}` contains {c:?}; use only a-z, 0-9, `.`, `_` and `-`{hint}"
        ));
    }
    if name.starts_with(['.', '-']) {
        return Err(format!("`{name}` must start with a letter, a digit or `_`"));
    }
    Ok(())
}

/// Group names: 1 to 64 of `a-z 0-9 _ -`.
pub(crate) fn check_group_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c);
    if name.is_empty() {
        return Err("empty group name".to_owned());
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(format!(
            "group `{name}` is longer than {MAX_NAME_LEN} characters"
        ));
    }
    if let Some(c) = name.chars().find(|&c| !ok_char(c)) {
        return Err(format!(
            "group `{name}` contains {c:?}; use only a-z, 0-9, `_` and `-`"
        ));
    }
    Ok(())
}

/// Most characters of an OS user name a key is pushed for (Linux `useradd`'s limit).
const MAX_OS_USER_LEN: usize = 32;

/// OS user names a key may be pushed for: the portable POSIX subset that `useradd` accepts
/// (`[a-z_][a-z0-9_-]*`, at most 32), and never `root` (a person logs in as themselves or the
/// image's user, then uses sudo, so the host's own logs keep who it was).
pub(crate) fn check_os_user(name: &str) -> Result<(), String> {
    let first_ok = |c: char| c.is_ascii_lowercase() || c == '_';
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c);
    match name.chars().next() {
        None => Err("empty OS user name".to_owned()),
        Some(_) if name.len() > MAX_OS_USER_LEN => Err(format!(
            "OS user `{}` is longer than {MAX_OS_USER_LEN} characters",
            name.escape_debug()
        )),
        Some(c) if !first_ok(c) || !name.chars().all(ok_char) => Err(format!(
            "`{}` is not an OS user name (a-z or `_`, then a-z, 0-9, `_` and `-`)",
            name.escape_debug()
        )),
        Some(_) if crate::NEVER_PUSHED_OS_USERS.contains(&name) => Err(format!(
            "keys are never pushed for {name}: log in as the image's user (ubuntu, ec2-user) \
             and use sudo, so that the host's logs keep who it was"
        )),
        Some(_) => Ok(()),
    }
}

/// Host names: DNS-style, case-insensitive (returned lowercased), never an IP look-alike.
pub(crate) fn check_host_name(raw: &str) -> Result<String, String> {
    let name = raw.to_ascii_lowercase();
    if name.is_empty() {
        return Err("empty name".to_owned());
    }
    if name.chars().count() > MAX_HOST_NAME_LEN {
        return Err(format!(
            "`{raw}` is longer than {MAX_HOST_NAME_LEN} characters"
        ));
    }
    if name.parse::<IpAddr>().is_ok() || name.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "`{raw}` looks like an IP address; a host name must not, so that a name can never \
             be mistaken for an address (put the address in `address`)"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-'))
    {
        return Err(format!(
            "`{raw}` contains {c:?}; use only letters, digits, `.` and `-`"
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!(
                "`{raw}` has an empty label (leading, trailing or double `.`)"
            ));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "`{raw}` has a label longer than {MAX_LABEL_LEN} characters"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("`{raw}` has a label that starts or ends with `-`"));
        }
    }
    Ok(name)
}

/// Target addresses: an IP literal that is a real, remote unicast host.
fn check_address(raw: &str) -> Result<IpAddr, String> {
    let ip = match raw.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => {
            let trimmed = raw.trim_start_matches('[').trim_end_matches(']');
            let why = if raw.is_empty() {
                "empty address".to_owned()
            } else if trimmed != raw && trimmed.parse::<IpAddr>().is_ok() {
                format!("`{raw}`: write the IPv6 address without brackets")
            } else if raw.contains('%') {
                format!("`{raw}`: scoped (zone) addresses are not accepted")
            } else if raw.contains(':')
                && raw
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| h.parse::<IpAddr>().is_ok() && p.parse::<u16>().is_ok())
            {
                format!("`{raw}`: give the address alone; ports go in `ports`")
            } else if raw.chars().any(|c| c.is_ascii_alphabetic()) && !raw.contains(':') {
                format!(
                    "`{raw}` is not an IP address; DNS names are not accepted because the \
                     bastion never resolves names (no DNS rebinding)"
                )
            } else {
                format!("`{raw}` is not an IP address")
            };
            return Err(why);
        }
    };
    match forbidden_target_reason(ip) {
        Some(reason) => Err(format!("{ip} may not be a target: {reason}")),
        None => Ok(ip),
    }
}

/// Why `url` is not an SQS queue URL: `https://sqs.REGION.amazonaws.com/ACCOUNT/NAME` (or
/// `.amazonaws.com.cn`); with an `endpoint_url` override, any `http(s)://HOST/ACCOUNT/NAME`.
fn check_queue_url(url: &str, endpoint_override: bool) -> Result<(), &'static str> {
    const WHY: &str = "is not an SQS queue URL such as \
        \"https://sqs.us-east-1.amazonaws.com/123456789012/gatehouse-lab-iam-events\"";
    if url.len() > 1024 {
        return Err(WHY);
    }
    let rest = if endpoint_override {
        url.strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
    } else {
        url.strip_prefix("https://")
    }
    .ok_or(WHY)?;
    let mut parts = rest.split('/');
    let (host, account, name) = (parts.next(), parts.next(), parts.next());
    let (Some(host), Some(account), Some(name), None) = (host, account, name, parts.next()) else {
        return Err(WHY);
    };
    let host_ok = if endpoint_override {
        !host.is_empty()
    } else {
        host.strip_prefix("sqs.")
            .and_then(|h| {
                h.strip_suffix(".amazonaws.com")
                    .or_else(|| h.strip_suffix(".amazonaws.com.cn"))
            })
            .is_some_and(|region| {
                !region.is_empty()
                    && region
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    };
    let account_ok = account.len() == 12 && account.chars().all(|c| c.is_ascii_digit());
    let name_ok = (1..=80).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if host_ok && account_ok && name_ok {
        Ok(())
    } else {
        Err(WHY)
    }
}

/// `s3://BUCKET/KEY`: a bucket name by S3's rules (3 to 63 of `a-z 0-9 . -`, starting and ending
/// with a letter or digit) and a key of 1 to 1024 printable ASCII characters.
fn parse_s3_object(url: &str) -> Option<S3Object> {
    let (bucket, key) = url.strip_prefix("s3://")?.split_once('/')?;
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    let key_ok = (1..=1024).contains(&key.len()) && key.chars().all(|c| c.is_ascii_graphic());
    (bucket_ok && key_ok).then(|| S3Object {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
    })
}
