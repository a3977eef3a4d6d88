//! gatehouse configuration: read the TOML file, reject unknown keys, validate every value,
//! and hand back a typed [`Config`].
//!
//! The pipeline is `text -> toml (syntax) -> serde (shape, unknown keys) -> validate
//! (meaning)`. Every problem is reported as `FILE:LINE:COLUMN: key: message`; syntax and shape
//! problems stop at the first one (the parser cannot go on meaningfully), semantic ones are
//! all collected. Besides the config file itself, the only file read is each user's
//! `keys_file`. No networking, no DNS: host addresses must be IP literals.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod address;
mod error;
mod keys;
mod model;
mod raw;
mod time;
mod validate;

use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

pub use address::forbidden_target_reason;
pub use error::{ConfigError, Diagnostic};
pub use model::*;
/// The key type stored in [`UserConfig::keys`], re-exported so users of this crate need not
/// pin `ssh-key` themselves (it is the same version russh uses).
pub use ssh_key;
pub use time::{parse_rfc3339, show_time};

use error::Source;

/// Parses one public key line (`TYPE BASE64 [COMMENT]`) under the same rules as `keys` in the
/// config: accepted types only, RSA of at least [`MIN_RSA_BITS`], no options, no
/// certificates. The error says why, without the key text.
///
/// # Errors
/// A message fragment such as "ssh-dss (DSA) keys are not accepted".
pub fn parse_public_key(line: &str) -> Result<ssh_key::PublicKey, String> {
    keys::parse_key_line(line)
}

/// Checks a group name (1 to 64 of `a-z 0-9 _ -`), as for `groups` in the config.
///
/// # Errors
/// Why the name is not accepted.
pub fn check_group_name(name: &str) -> Result<(), String> {
    validate::check_group_name(name)
}

/// OS users a key is never pushed for, whatever a login tag says ([`check_os_user`] refuses
/// them; gatehouse-vpc's role policy denies the push for them too).
pub const NEVER_PUSHED_OS_USERS: &[&str] = &["root"];

/// Checks an OS user name that a key may be pushed for (`aws.instance_connect`): the POSIX
/// portable subset, at most 32 characters, never one of [`NEVER_PUSHED_OS_USERS`].
///
/// # Errors
/// Why the name is not accepted.
pub fn check_os_user(name: &str) -> Result<(), String> {
    validate::check_os_user(name)
}

/// Checks a host name (DNS-style, not an IP look-alike) as for `hosts[].name`, returning it
/// lowercased.
///
/// # Errors
/// Why the name is not accepted.
pub fn check_host_name(name: &str) -> Result<String, String> {
    validate::check_host_name(name)
}
use raw::RawConfig;

/// Reads, parses and validates the config file at `path`.
///
/// # Errors
/// [`ConfigError::Read`] if the file cannot be read, [`ConfigError::Invalid`] listing every
/// problem found otherwise.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse(&text, path)
}

/// Parses and validates config `text`. `origin` names the file in messages, and its directory
/// is where relative paths (`host_key`, `audit.file`, `keys_file`) are resolved; `keys_file`s
/// are read from there.
///
/// # Errors
/// [`ConfigError::Invalid`] listing every problem found.
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    let source = Source::new(origin, text);
    let raw = deserialize(text, source).map_err(|d| ConfigError::Invalid(vec![d]))?;
    let dir = origin.parent().unwrap_or(Path::new(""));
    validate::validate(raw, source, dir).map_err(ConfigError::Invalid)
}

/// TOML syntax and document shape; the first problem only.
fn deserialize(text: &str, source: Source<'_>) -> Result<RawConfig, Diagnostic> {
    // The recovering parser reports errors in no particular order, and after the first one
    // mostly its consequences: report the earliest.
    let (document, syntax_errors) = DeTable::parse_recoverable(text);
    if let Some(first) = syntax_errors
        .iter()
        .min_by_key(|e| e.span().map_or(0, |span| span.start))
    {
        return Err(toml_diagnostic(first, source, document.get_ref(), true));
    }
    let deserializer = toml::de::Deserializer::from(document.clone());
    RawConfig::deserialize(deserializer)
        .map_err(|e| toml_diagnostic(&e, source, document.get_ref(), false))
}

/// Turns a toml error into a diagnostic, naming the key it is about when the document is
/// available to look the position up in. Syntax errors also quote the text they point at
/// ("duplicate key: `server`"), which the parser's message does not.
fn toml_diagnostic(
    error: &toml::de::Error,
    source: Source<'_>,
    document: &DeTable<'_>,
    quote_found: bool,
) -> Diagnostic {
    let span = error.span().unwrap_or(0..0);
    let mut message = error.message().trim_end().to_owned();
    if quote_found {
        if let Some(found) = source.text.get(span.clone()).map(str::trim) {
            if !found.is_empty() && !found.contains('\n') && found.len() <= 60 {
                message = format!("{message}: `{found}`");
            }
        }
    }
    match key_path(document, &span).filter(|p| !p.is_empty()) {
        Some(path) => source.at(&span, format!("{path}: {message}")),
        None => source.at(&span, message),
    }
}

/// The dotted path (`users[1].keys[0]`) of the deepest value whose span contains `span`. When
/// the span is a key itself (as for "unknown field"), the path of the table holding it.
fn key_path(table: &DeTable<'_>, span: &Range<usize>) -> Option<String> {
    let mut path = String::new();
    find_in_table(table, span, &mut path).then_some(path)
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer.start < outer.end
}

fn find_in_table(table: &DeTable<'_>, span: &Range<usize>, path: &mut String) -> bool {
    for (key, value) in table {
        if contains(&key.span(), span) {
            return true;
        }
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key.get_ref());
        if find_in_value(value.get_ref(), span, path) || contains(&value.span(), span) {
            return true;
        }
        path.truncate(len);
    }
    false
}

fn find_in_value(value: &DeValue<'_>, span: &Range<usize>, path: &mut String) -> bool {
    match value {
        DeValue::Table(table) => find_in_table(table, span, path),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                if find_in_value(item.get_ref(), span, path) || contains(&item.span(), span) {
                    return true;
                }
                path.truncate(len);
            }
            false
        }
        _ => false,
    }
}
