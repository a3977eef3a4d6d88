//! SSH public keys: one authorized_keys-style line at a time, and whole `keys_file`s.
//!
//! We accept the plain `TYPE BASE64 [COMMENT]` form, and for a user's keys one
//! authorized_keys option, OpenSSH's `expiry-time="YYYYMMDD[HHMM[SS]]Z"` (the key stops
//! working at that time). Every other option (`from="..."`, `command="..."`, `restrict`, ...)
//! is rejected rather than ignored: an operator who writes `from="10.0.0.0/8" ssh-ed25519 ...`
//! expects a restriction, and silently dropping it would grant more than was written.

use std::time::SystemTime;

use ssh_key::public::KeyData;
use ssh_key::PublicKey;

use crate::model::MIN_RSA_BITS;

/// Key types we accept, as they appear in the first field of a key line.
const ACCEPTED_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Whether `word` is, or looks like, an SSH key type name (as opposed to options or junk).
fn looks_like_key_type(word: &str) -> bool {
    ACCEPTED_TYPES.contains(&word)
        || word == "ssh-dss"
        || word.ends_with("@openssh.com")
        || word.starts_with("ssh-")
        || word.starts_with("ecdsa-")
        || word.starts_with("sk-")
}

/// Parses one public key line (already trimmed, not blank, not a comment).
///
/// The error is a complete sentence fragment meant to follow `KEY: `.
pub(crate) fn parse_key_line(line: &str) -> Result<PublicKey, String> {
    let line = line.trim();
    let mut words = line.split_whitespace();
    let Some(first) = words.next() else {
        return Err("empty key; expected `TYPE BASE64 [COMMENT]`".to_owned());
    };
    if !looks_like_key_type(first) {
        if let Some(key_type) = words.find(|w| looks_like_key_type(w)) {
            return Err(format!(
                "authorized_keys options are not supported (found `{}` before `{key_type}`); \
                 gatehouse applies the same policy to every key, so remove everything before \
                 the key type (a user's key may carry only `expiry-time=\"YYYYMMDD[HHMM[SS]]Z\"`)",
                shorten(first)
            ));
        }
        return Err(format!(
            "not an SSH public key: expected `TYPE BASE64 [COMMENT]` with TYPE one of {}, \
             found `{}`",
            ACCEPTED_TYPES.join(", "),
            shorten(first)
        ));
    }
    if first == "ssh-dss" {
        return Err(
            "DSA (ssh-dss) keys are not accepted: they are limited to 1024 bits and \
                    OpenSSH no longer supports them; use ssh-ed25519"
                .to_owned(),
        );
    }
    if first.contains("-cert-") {
        return Err(format!(
            "SSH certificates ({first}) are not supported; give the plain public key"
        ));
    }
    if !ACCEPTED_TYPES.contains(&first) {
        return Err(format!(
            "unsupported key type `{}`; accepted: {}",
            shorten(first),
            ACCEPTED_TYPES.join(", ")
        ));
    }
    if words.next().is_none() {
        return Err(format!(
            "not an SSH public key: the base64 key data after `{first}` is missing"
        ));
    }
    let key = PublicKey::from_openssh(line)
        .map_err(|e| format!("not an SSH public key: {first} key data is invalid ({e})"))?;
    check_key_data(key.key_data())?;
    Ok(key)
}

/// Rejects key material that parsed but that we will not authenticate with.
fn check_key_data(data: &KeyData) -> Result<(), String> {
    match data {
        KeyData::Ed25519(_)
        | KeyData::Ecdsa(_)
        | KeyData::SkEd25519(_)
        | KeyData::SkEcdsaSha2NistP256(_) => Ok(()),
        KeyData::Rsa(rsa) if rsa.key_size() < MIN_RSA_BITS => Err(format!(
            "RSA key is too short ({} bits); at least {MIN_RSA_BITS} bits are required",
            rsa.key_size()
        )),
        KeyData::Rsa(_) => Ok(()),
        other => Err(format!("key type {} is not accepted", other.algorithm())),
    }
}

/// Parses one key line of a user (`keys`, `keys_file`): [`parse_key_line`]'s rules, plus an
/// optional leading `expiry-time="YYYYMMDD[HHMM[SS]]Z"` (OpenSSH's authorized_keys option,
/// its only one gatehouse accepts): the key stops authenticating at that time.
pub(crate) fn parse_user_key_line(line: &str) -> Result<(PublicKey, Option<SystemTime>), String> {
    let line = line.trim();
    let Some(rest) = strip_option_name(line, "expiry-time=") else {
        return parse_key_line(line).map(|key| (key, None));
    };
    let Some(rest) = rest.strip_prefix('"') else {
        return Err("expiry-time: the value must be quoted: expiry-time=\"YYYYMMDDHHMMZ\"".into());
    };
    let Some((value, after)) = rest.split_once('"') else {
        return Err("expiry-time: the quoted value is not closed".into());
    };
    if after.starts_with(',') {
        return Err(format!(
            "authorized_keys options are not supported (found `{}` after expiry-time); a \
             user's key may carry only `expiry-time=\"YYYYMMDD[HHMM[SS]]Z\"`",
            shorten(
                after
                    .trim_start_matches(',')
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
            )
        ));
    }
    if !after.starts_with([' ', '\t']) {
        return Err(
            "expiry-time: expected the key type after the option, separated by a space".into(),
        );
    }
    let expires = parse_expiry_time(value)?;
    let key = parse_key_line(after)?;
    Ok((key, Some(expires)))
}

/// `line` without a leading option `name` (compared case-insensitively, as OpenSSH does).
fn strip_option_name<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let head = line.get(..name.len())?;
    head.eq_ignore_ascii_case(name).then(|| &line[name.len()..])
}

/// OpenSSH's `expiry-time` value, `YYYYMMDD[HHMM[SS]]` followed by `Z`. OpenSSH reads a value
/// without `Z` in the server's local time zone; gatehouse requires the `Z` (UTC), so that the
/// same config means the same instant on every machine.
pub(crate) fn parse_expiry_time(value: &str) -> Result<SystemTime, String> {
    let form = "write expiry-time=\"YYYYMMDD[HHMM[SS]]Z\" (UTC), e.g. \"202612311800Z\"";
    let Some(digits) = value.strip_suffix(['Z', 'z']) else {
        return Err(format!(
            "expiry-time `{}` has no trailing Z: OpenSSH would read it in the server's local \
             time zone; {form}",
            shorten(value)
        ));
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(format!(
            "expiry-time `{}` is not a date; {form}",
            shorten(value)
        ));
    }
    let num = |range: std::ops::Range<usize>| -> u32 {
        digits.get(range).and_then(|d| d.parse().ok()).unwrap_or(0)
    };
    let (year, month, day) = (num(0..4), num(4..6), num(6..8));
    let (hour, minute, second) = match digits.len() {
        8 => (0, 0, 0),
        12 => (num(8..10), num(10..12), 0),
        _ => (num(8..10), num(10..12), num(12..14)),
    };
    crate::time::utc(year, month, day, hour, minute, second).ok_or_else(|| {
        format!(
            "expiry-time `{}` is not a valid date and time; {form}",
            shorten(value)
        )
    })
}

/// One bad line of a `keys_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyFileProblem {
    /// 1-based line.
    pub(crate) line: usize,
    /// 1-based column of the first non-blank character.
    pub(crate) column: usize,
    pub(crate) message: String,
}

/// A key of a `keys_file`: its 1-based line, the key, and its `expiry-time` if any.
pub(crate) type KeyFileEntry = (usize, PublicKey, Option<SystemTime>);

/// Parses the text of an authorized_keys-style file: one key per line, blank lines and lines
/// starting with `#` skipped. `expiry_allowed`: a user's file, whose lines may carry
/// `expiry-time` (a CA's may not). Returns the keys with their 1-based line numbers, and
/// every problem found.
pub(crate) fn parse_keys_file(
    text: &str,
    expiry_allowed: bool,
) -> (Vec<KeyFileEntry>, Vec<KeyFileProblem>) {
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    for (index, raw_line) in text.lines().enumerate() {
        let trimmed = raw_line.trim_start();
        if trimmed.trim_end().is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let line = index + 1;
        let parsed = if expiry_allowed {
            parse_user_key_line(trimmed)
        } else {
            parse_key_line(trimmed).map(|key| (key, None))
        };
        match parsed {
            Ok((key, expires)) => keys.push((line, key, expires)),
            Err(message) => problems.push(KeyFileProblem {
                line,
                column: raw_line.chars().count() - trimmed.chars().count() + 1,
                message,
            }),
        }
    }
    (keys, problems)
}

/// Cuts long junk down to something readable in a one-line message.
fn shorten(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}...")
    }
}
