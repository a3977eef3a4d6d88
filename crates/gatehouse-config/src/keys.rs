//! SSH public keys: one authorized_keys-style line at a time, and whole `keys_file`s.
//!
//! We accept the plain `TYPE BASE64 [COMMENT]` form only. authorized_keys *options*
//! (`from="..."`, `command="..."`, `restrict`, ...) are rejected rather than ignored: an
//! operator who writes `from="10.0.0.0/8" ssh-ed25519 ...` expects a restriction, and silently
//! dropping it would grant more than was written.

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
                 the key type",
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

/// One bad line of a `keys_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyFileProblem {
    /// 1-based line.
    pub(crate) line: usize,
    /// 1-based column of the first non-blank character.
    pub(crate) column: usize,
    pub(crate) message: String,
}

/// Parses the text of an authorized_keys-style file: one key per line, blank lines and lines
/// starting with `#` skipped. Returns the keys with their 1-based line numbers, and every
/// problem found.
pub(crate) fn parse_keys_file(text: &str) -> (Vec<(usize, PublicKey)>, Vec<KeyFileProblem>) {
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    for (index, raw_line) in text.lines().enumerate() {
        let trimmed = raw_line.trim_start();
        if trimmed.trim_end().is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let line = index + 1;
        match parse_key_line(trimmed) {
            Ok(key) => keys.push((line, key)),
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
