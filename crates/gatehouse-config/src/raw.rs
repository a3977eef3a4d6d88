//! The file as written: serde structs that mirror the TOML, before any validation.
//!
//! Every table denies unknown keys, so a typo (`lisen`) is an error rather than a silently
//! ignored setting. Values that need checking beyond their TOML type are kept as
//! [`Spanned`] so that the validator can point at them. Keys a config must have are still
//! `Option` here: the validator reports all missing keys at once instead of serde stopping at
//! the first one. Integers are read as `i64` so that `port = 70000` gets our range message,
//! not serde's "expected u16".

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// The whole document.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "the gatehouse configuration document"
)]
pub(crate) struct RawConfig {
    /// `[server]`.
    pub(crate) server: Option<Spanned<RawServer>>,
    /// `[audit]`.
    pub(crate) audit: Option<RawAudit>,
    /// `[[users]]`.
    #[serde(default)]
    pub(crate) users: Vec<Spanned<RawUser>>,
    /// `[[hosts]]`.
    #[serde(default)]
    pub(crate) hosts: Vec<Spanned<RawHost>>,
    /// `[limits]`.
    pub(crate) limits: Option<RawLimits>,
    /// `[penalties]`.
    pub(crate) penalties: Option<RawPenalties>,
    /// `[metrics]`.
    pub(crate) metrics: Option<RawMetrics>,
    /// `[aws]`.
    pub(crate) aws: Option<Spanned<RawAws>>,
    /// `[[trusted_user_ca]]`.
    #[serde(default)]
    pub(crate) trusted_user_ca: Vec<Spanned<RawTrustedCa>>,
    /// `[sso]`.
    pub(crate) sso: Option<Spanned<RawSso>>,
}

/// A name -> groups table (`sso.permission_sets`, `sso.roles`).
pub(crate) type RawGroupMap = Spanned<BTreeMap<String, Spanned<Vec<Spanned<String>>>>>;

/// `[sso]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of SSO login settings")]
pub(crate) struct RawSso {
    pub(crate) accounts: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) validity: Option<Spanned<String>>,
    pub(crate) ca_key: Option<Spanned<String>>,
    pub(crate) permission_sets: Option<RawGroupMap>,
    pub(crate) roles: Option<RawGroupMap>,
    pub(crate) iam_users: Option<Spanned<bool>>,
}

/// One `[[trusted_user_ca]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a certificate authority table")]
pub(crate) struct RawTrustedCa {
    pub(crate) name: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) keys: Vec<Spanned<String>>,
    pub(crate) keys_file: Option<Spanned<String>>,
    pub(crate) principals: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub(crate) max_validity: Option<Spanned<String>>,
}

/// A date-time: a TOML offset date-time (`2026-12-31T18:00:00Z`) or an RFC 3339 string.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a date-time such as 2026-12-31T18:00:00Z")]
pub(crate) enum RawDateTime {
    Toml(toml::value::Datetime),
    Text(String),
}

/// `[aws]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of AWS settings")]
pub(crate) struct RawAws {
    pub(crate) region: Option<Spanned<String>>,
    pub(crate) endpoint_url: Option<Spanned<String>>,
    pub(crate) vpc_ids: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) refresh_interval: Option<Spanned<String>>,
    pub(crate) max_staleness: Option<Spanned<String>>,
    pub(crate) iam_path_prefix: Option<Spanned<String>>,
    pub(crate) iam_group_prefix: Option<Spanned<String>>,
    pub(crate) tag_prefix: Option<Spanned<String>>,
    pub(crate) host_key_ssm_parameter: Option<Spanned<String>>,
    pub(crate) host_key_tags: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub(crate) user_ca_ssm_parameter: Option<Spanned<String>>,
    pub(crate) instance_connect: Option<Spanned<bool>>,
    pub(crate) snapshot_file: Option<Spanned<String>>,
    pub(crate) iam_calls_per_second: Option<Spanned<Integer>>,
    pub(crate) events_queue_url: Option<Spanned<String>>,
    pub(crate) iam_sweep_interval: Option<Spanned<String>>,
    pub(crate) shared_snapshot: Option<Spanned<String>>,
    pub(crate) audit_log_group: Option<Spanned<String>>,
    pub(crate) audit_log_stream: Option<Spanned<String>>,
}

/// `[limits]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of limits")]
pub(crate) struct RawLimits {
    pub(crate) max_sessions_per_user: Option<Spanned<Integer>>,
    pub(crate) max_channels_per_connection: Option<Spanned<Integer>>,
    pub(crate) max_tunnels: Option<Spanned<Integer>>,
    pub(crate) per_source_max_unauthenticated: Option<Spanned<Integer>>,
    pub(crate) per_prefix_max_unauthenticated: Option<Spanned<Integer>>,
    pub(crate) max_buffered_mib: Option<Spanned<Integer>>,
}

/// `[penalties]`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table of per-source penalty settings"
)]
pub(crate) struct RawPenalties {
    pub(crate) enabled: Option<bool>,
    pub(crate) auth_failure: Option<Spanned<String>>,
    pub(crate) no_auth: Option<Spanned<String>>,
    pub(crate) grace_exceeded: Option<Spanned<String>>,
    pub(crate) threshold: Option<Spanned<String>>,
    pub(crate) max: Option<Spanned<String>>,
    pub(crate) max_sources: Option<Spanned<Integer>>,
    pub(crate) exempt: Option<Vec<Spanned<String>>>,
}

/// `[metrics]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of metrics settings")]
pub(crate) struct RawMetrics {
    pub(crate) listen: Option<Spanned<String>>,
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of server settings")]
pub(crate) struct RawServer {
    pub(crate) listen: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) host_key: Option<Spanned<String>>,
    pub(crate) login_grace: Option<Spanned<String>>,
    pub(crate) version_grace: Option<Spanned<String>>,
    pub(crate) kex_grace: Option<Spanned<String>>,
    pub(crate) max_unauthenticated: Option<Spanned<Integer>>,
    pub(crate) eviction_min_age: Option<Spanned<String>>,
    pub(crate) idle_timeout: Option<Spanned<String>>,
    pub(crate) connect_timeout: Option<Spanned<String>>,
    pub(crate) keepalive_interval: Option<Spanned<String>>,
    pub(crate) max_auth_attempts: Option<Spanned<Integer>>,
    pub(crate) shutdown_grace: Option<Spanned<String>>,
    pub(crate) drain_delay: Option<Spanned<String>>,
    pub(crate) pq_only: Option<bool>,
    pub(crate) proxy_listen: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) health_listen: Option<Spanned<String>>,
    pub(crate) control_socket: Option<Spanned<String>>,
    pub(crate) trusted_proxies: Option<Vec<Spanned<String>>>,
}

/// `[audit]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of audit settings")]
pub(crate) struct RawAudit {
    pub(crate) file: Option<Spanned<String>>,
    pub(crate) on_failure: Option<Spanned<String>>,
}

/// One `[[users]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a user table")]
pub(crate) struct RawUser {
    pub(crate) name: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) keys: Vec<Spanned<String>>,
    pub(crate) keys_file: Option<Spanned<String>>,
    pub(crate) groups: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) expires: Option<Spanned<RawDateTime>>,
}

/// One `[[hosts]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a host table")]
pub(crate) struct RawHost {
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) address: Option<Spanned<String>>,
    pub(crate) groups: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) ports: Option<Spanned<Vec<Spanned<Integer>>>>,
}

/// A TOML integer, range-checked later by the validator (so `1.5` reads "expected an
/// integer", not "expected i64").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Integer(pub(crate) i64);

impl<'de> Deserialize<'de> for Integer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntegerVisitor;
        impl Visitor<'_> for IntegerVisitor {
            type Value = Integer;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Integer, E> {
                Ok(Integer(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Integer, E> {
                i64::try_from(v)
                    .map(Integer)
                    .map_err(|_| E::custom(format!("integer {v} is too large")))
            }
        }
        deserializer.deserialize_i64(IntegerVisitor)
    }
}
