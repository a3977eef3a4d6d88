//! The last good listing, kept on disk (`aws.snapshot_file`), so that a restarted bastion
//! serves at once, while the listing is within `max_staleness`, instead of waiting for a
//! whole IAM and EC2 listing (which AWS may be slow, throttled or down for).
//!
//! What is kept is what was published: identities (login name, groups, public keys) and hosts,
//! with the wall-clock time the listing started and the settings that decide what a listing
//! holds (`vpc_ids`, `iam_path_prefix`, `iam_group_prefix`, `tag_prefix`,
//! `instance_connect`). A file is used only when those settings are the current ones, its
//! listing is younger than `max_staleness` (never from the future), and nobody but its owner
//! may write it; it then admits logins only until its own listing time + `max_staleness`,
//! exactly as if the bastion had never stopped. Anything else is ignored with a log line, and
//! the bastion lists AWS before serving, as without a file. Nothing here ever revokes: the
//! first refresh after the start publishes the current truth.
//!
//! Written after each published refresh: to a temporary file beside it (mode 0600), then
//! renamed over it, so a crash leaves the old file or the new one, never half of one.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gatehouse_config::AwsConfig;
use gatehouse_directory::Identity;
use gatehouse_policy::Host;
use serde::{Deserialize, Serialize};

/// The file format; a file of another version is ignored.
const FORMAT: u32 = 1;

/// The settings that decide what a listing holds: a file listed under others is not used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Scope {
    vpc_ids: Vec<String>,
    iam_path_prefix: Option<String>,
    iam_group_prefix: Option<String>,
    tag_prefix: String,
    instance_connect: bool,
}

impl Scope {
    fn of(settings: &AwsConfig) -> Scope {
        Scope {
            vpc_ids: settings.vpc_ids.clone(),
            iam_path_prefix: settings.iam_path_prefix.clone(),
            iam_group_prefix: settings.iam_group_prefix.clone(),
            tag_prefix: settings.tag_prefix.clone(),
            instance_connect: settings.instance_connect,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedIdentity {
    name: String,
    groups: BTreeSet<String>,
    /// OpenSSH public key lines.
    keys: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedHost {
    id: String,
    names: Vec<String>,
    address: IpAddr,
    groups: BTreeSet<String>,
    ports: BTreeSet<u16>,
    login_users: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    format: u32,
    scope: Scope,
    /// When the listing started, in milliseconds since the Unix epoch.
    listed_at_ms: u64,
    identities: Vec<SavedIdentity>,
    hosts: Vec<SavedHost>,
}

/// A listing read back from the file, ready to publish.
#[derive(Debug)]
pub struct Restored {
    /// Who may log in.
    pub identities: Vec<Identity>,
    /// Where they may go.
    pub hosts: Vec<Host>,
    /// When the listing started, on this process's clock (in the past).
    pub started: Instant,
    /// How old the listing is.
    pub age: Duration,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The listing that started at `started` (wall clock), as the bytes of a saved listing (the
/// file's and the shared copy's).
pub fn encode(
    settings: &AwsConfig,
    started: SystemTime,
    identities: &[Identity],
    hosts: &[Host],
) -> Vec<u8> {
    let saved = Saved {
        format: FORMAT,
        scope: Scope::of(settings),
        listed_at_ms: unix_ms(started),
        identities: identities
            .iter()
            .map(|i| SavedIdentity {
                name: i.name.clone(),
                groups: i.groups.clone(),
                keys: i.keys.iter().filter_map(|k| k.to_openssh().ok()).collect(),
            })
            .collect(),
        hosts: hosts
            .iter()
            .map(|h| SavedHost {
                id: h.id.clone(),
                names: h.names.clone(),
                address: h.address,
                groups: h.groups.clone(),
                ports: h.ports.clone(),
                login_users: h.login_users.clone(),
            })
            .collect(),
    };
    // Plain data of strings, numbers and addresses: serializing it cannot fail.
    serde_json::to_vec(&saved).unwrap_or_default()
}

/// Writes the listing that started at `started` (wall clock) to `path`, atomically.
///
/// # Errors
/// The file could not be written (the old one, if any, stays).
pub fn save(
    path: &Path,
    settings: &AwsConfig,
    started: SystemTime,
    identities: &[Identity],
    hosts: &[Host],
) -> std::io::Result<()> {
    let text = encode(settings, started, identities, hosts);
    let temp = temp_path(path);
    {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(&text)?;
        file.sync_all()?;
    }
    std::fs::rename(&temp, path)
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// The listing kept in `path`, if it may be used now under `settings` (see the module docs).
/// `Err` says why a file that exists is not used; `Ok(None)`: there is no file.
pub fn load(path: &Path, settings: &AwsConfig) -> Result<Option<Restored>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "others may write it (mode {:o}); it is written 0600",
            meta.permissions().mode() & 0o777
        ));
    }
    let text = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    decode(&text, settings).map(Some)
}

/// A saved listing's bytes, if it may be used now under `settings` (see the module docs);
/// `Err` says why not.
pub fn decode(text: &[u8], settings: &AwsConfig) -> Result<Restored, String> {
    let saved: Saved =
        serde_json::from_slice(text).map_err(|e| format!("not a saved listing: {e}"))?;
    if saved.format != FORMAT {
        return Err(format!(
            "format {} (this bastion writes {FORMAT})",
            saved.format
        ));
    }
    if saved.scope != Scope::of(settings) {
        return Err(
            "listed under other settings (vpc_ids, prefixes or instance_connect changed)"
                .to_owned(),
        );
    }
    let now = unix_ms(SystemTime::now());
    let age_ms = now
        .checked_sub(saved.listed_at_ms)
        .ok_or("its listing time is in the future")?;
    let age = Duration::from_millis(age_ms);
    if age >= settings.max_staleness {
        return Err(format!(
            "its listing is {}s old, older than max_staleness",
            age.as_secs()
        ));
    }
    let started = Instant::now()
        .checked_sub(age)
        .ok_or("its listing is older than this machine's uptime")?;
    let mut identities = Vec::new();
    for saved in saved.identities {
        let mut keys = Vec::new();
        for line in &saved.keys {
            keys.push(
                gatehouse_config::parse_public_key(line)
                    .map_err(|e| format!("user {}: a key that does not parse: {e}", saved.name))?,
            );
        }
        identities.push(Identity {
            name: saved.name,
            groups: saved.groups,
            keys,
        });
    }
    let mut hosts = Vec::new();
    for saved in saved.hosts {
        if let Some(why) = gatehouse_config::forbidden_target_reason(saved.address) {
            return Err(format!("host {} at {}: {why}", saved.id, saved.address));
        }
        hosts.push(Host {
            id: saved.id,
            names: saved.names,
            address: saved.address,
            groups: saved.groups,
            ports: saved.ports,
            login_users: saved.login_users,
        });
    }
    Ok(Restored {
        identities,
        hosts,
        started,
        age,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMzQnTZ1QB2clN1RVs8twk5/t+5CEwiIXdcNoxcQmsgc alice@laptop";

    fn settings(extra: &str) -> AwsConfig {
        gatehouse_config::parse(
            &format!(
                "[server]\nlisten = [\"0.0.0.0:22\"]\n[aws]\nvpc_ids = [\"vpc-1\"]\n\
                 max_staleness = \"15m\"\n{extra}"
            ),
            Path::new("t.toml"),
        )
        .expect("config")
        .aws
        .expect("aws")
    }

    fn listing() -> (Vec<Identity>, Vec<Host>) {
        let identity = Identity {
            name: "alice".into(),
            groups: ["research".to_owned()].into(),
            keys: vec![gatehouse_config::parse_public_key(K1).expect("key")],
        };
        let host = Host {
            id: "i-1".into(),
            names: vec!["jupyter".into(), "i-1".into()],
            address: "10.0.3.140".parse().expect("ip"),
            groups: ["research".to_owned()].into(),
            ports: [22, 8888].into(),
            login_users: vec!["ubuntu".into()],
        };
        (vec![identity], vec![host])
    }

    #[test]
    fn a_saved_listing_comes_back_as_it_was_with_its_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("directory.json");
        let s = settings("");
        assert!(load(&path, &s).expect("no file is no error").is_none());
        let (identities, hosts) = listing();
        let listed = SystemTime::now() - Duration::from_secs(60);
        save(&path, &s, listed, &identities, &hosts).expect("save");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!temp_path(&path).exists());
        let back = load(&path, &s).expect("usable").expect("a file");
        assert_eq!(back.identities.len(), 1);
        assert_eq!(back.identities[0].name, "alice");
        assert_eq!(back.identities[0].keys, identities[0].keys);
        assert_eq!(back.hosts, hosts);
        assert!((59..=61).contains(&back.age.as_secs()), "{:?}", back.age);
    }

    #[test]
    fn a_file_is_refused_when_too_old_from_the_future_of_other_settings_or_writable_by_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("directory.json");
        let s = settings("");
        let (identities, hosts) = listing();
        let save_at = |t: SystemTime, s: &AwsConfig| {
            save(&path, s, t, &identities, &hosts).expect("save");
        };
        save_at(SystemTime::now() - Duration::from_secs(16 * 60), &s);
        assert!(load(&path, &s)
            .unwrap_err()
            .contains("older than max_staleness"));
        save_at(SystemTime::now() + Duration::from_secs(600), &s);
        assert!(load(&path, &s).unwrap_err().contains("in the future"));
        save_at(SystemTime::now(), &settings("tag_prefix = \"lab:\"\n"));
        assert!(load(&path, &s).unwrap_err().contains("other settings"));
        save_at(SystemTime::now(), &s);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        assert!(load(&path, &s).unwrap_err().contains("others may write it"));
        std::fs::write(&path, b"{\"format\": 1}").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(load(&path, &s).unwrap_err().contains("not a saved listing"));
    }
}
