//! The last good listing, kept on disk (`aws.snapshot_file`) and shared by the fleet
//! (`aws.shared_snapshot`, see [`crate::shared`]), so that a restarted or new bastion serves
//! at once, while the listing is within `max_staleness`, instead of waiting for a whole IAM and
//! EC2 listing (which AWS may be slow, throttled or down for).
//!
//! What is kept is what was published: identities (login name, groups, public keys), hosts
//! and the IAM roles that carry the groups tag (name, account, groups),
//! with the wall-clock time the listing started and the settings that decide what a listing
//! holds (`vpc_ids`, `iam_path_prefix`, `iam_group_prefix`, `tag_prefix`,
//! `instance_connect`).
//!
//! A saved listing decides who gets in, so it is used only when this fleet wrote it: it is
//! signed with the bastion's host key (an SSHSIG signature in the namespace [`NAMESPACE`],
//! the format of `ssh-keygen -Y sign`), and a listing whose signature the host's public key
//! does not verify is refused whole. The host key is what only the bastion holds (a file
//! 0600, or the SSM SecureString that only the bastion role may read), so whoever else can
//! write the file or the bucket (an account-wide `s3:PutObject`, a local user) cannot make a
//! listing the bastion takes. After the signature, everything restored is checked again as
//! the live listing checks it (login names, groups, keys by the config's key rules, host
//! names, ports, login users, forbidden addresses): a listing that fails any check is refused
//! whole, never partly served.
//!
//! It is used only when those settings are the current ones and its listing is younger than
//! `max_staleness` (never from the future); it then admits logins only until its own listing
//! time + `max_staleness`, exactly as if the bastion had never stopped. Anything else is
//! ignored with a log line, and the bastion lists AWS before serving, as without a file.
//! Nothing here ever revokes: the first refresh after the start publishes the current truth.
//! A listing the fleet wrote may be served again (replayed) only within that same window.
//!
//! The file is written to a temporary file beside it, created exclusively (mode 0600), then
//! renamed over it, so a crash leaves the old file or the new one, never half of one. It is
//! read without following a symbolic link, and its owner and mode are checked on the opened
//! file (not on the path, which could be swapped between the check and the read).

use std::collections::BTreeSet;
use std::io::Read as _;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gatehouse_config::AwsConfig;
use gatehouse_directory::callers::TaggedRole;
use gatehouse_directory::Identity;
use gatehouse_policy::Host;
use serde::{Deserialize, Serialize};
use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use crate::build::{parse_login_users, parse_ports};
use crate::names::{iam_name, login_name};

/// The format (of the signed envelope and of the listing in it); another version is ignored.
const FORMAT: u32 = 2;

/// The SSHSIG namespace of a saved listing's signature: a signature the host key makes for
/// any other purpose (SSH authentication, another namespace) never verifies as a listing's.
pub const NAMESPACE: &str = "listing@gatehouse";

/// Largest saved listing read: far above a 5,000-user directory (about 2 MB).
pub const MAX_BYTES: usize = 64 << 20;

/// The key that signs the listings this bastion writes and verifies those it reads: the
/// bastion's host key, which every replica of a fleet shares.
#[derive(Clone)]
pub struct Seal(Arc<PrivateKey>);

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Seal")
            .field(&self.0.public_key().fingerprint(HashAlg::Sha256).to_string())
            .finish()
    }
}

impl Seal {
    /// Listings signed with `host_key`.
    pub fn new(host_key: PrivateKey) -> Seal {
        Seal(Arc::new(host_key))
    }

    fn public(&self) -> &PublicKey {
        self.0.public_key()
    }
}

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
    /// The user's `gatehouse:expires`, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
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
struct SavedRole {
    name: String,
    account: String,
    groups: BTreeSet<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    format: u32,
    scope: Scope,
    /// When the listing started, in milliseconds since the Unix epoch.
    listed_at_ms: u64,
    identities: Vec<SavedIdentity>,
    hosts: Vec<SavedHost>,
    /// Absent in a listing saved before roles were read: none (the first sweep reads them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    roles: Vec<SavedRole>,
}

/// What is written: the listing's JSON text, and the host key's signature of exactly that
/// text (so the signed bytes never depend on how a reader re-serializes them).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    format: u32,
    /// A [`Saved`] as JSON text: the signed message.
    listing: String,
    /// The SSHSIG signature of `listing`, PEM-armored (`-----BEGIN SSH SIGNATURE-----`).
    signature: String,
}

/// A listing read back from the file, ready to publish.
#[derive(Debug)]
pub struct Restored {
    /// Who may log in.
    pub identities: Vec<Identity>,
    /// Where they may go.
    pub hosts: Vec<Host>,
    /// The IAM roles that carry the groups tag.
    pub roles: Vec<TaggedRole>,
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
/// file's and the shared copy's), signed with `seal`.
///
/// # Errors
/// The signature could not be made (never for an ed25519 host key).
pub fn encode(
    settings: &AwsConfig,
    started: SystemTime,
    (identities, hosts, roles): (&[Identity], &[Host], &[TaggedRole]),
    seal: &Seal,
) -> Result<Vec<u8>, String> {
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
                expires: i.expires.map(gatehouse_config::show_time),
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
        roles: roles
            .iter()
            .map(|r| SavedRole {
                name: r.name.clone(),
                account: r.account.clone(),
                groups: r.groups.clone(),
            })
            .collect(),
    };
    // Plain data of strings, numbers and addresses: serializing it cannot fail.
    let listing = serde_json::to_string(&saved).unwrap_or_default();
    let signature = seal
        .0
        .sign(NAMESPACE, HashAlg::Sha512, listing.as_bytes())
        .and_then(|sig| sig.to_pem(LineEnding::LF))
        .map_err(|e| format!("cannot sign the listing with the host key: {e}"))?;
    let sealed = Sealed {
        format: FORMAT,
        listing,
        signature,
    };
    Ok(serde_json::to_vec(&sealed).unwrap_or_default())
}

/// Writes the listing that started at `started` (wall clock) to `path`, atomically, signed
/// with `seal`.
///
/// # Errors
/// The file could not be written (the old one, if any, stays).
pub fn save(
    path: &Path,
    settings: &AwsConfig,
    started: SystemTime,
    listing: (&[Identity], &[Host], &[TaggedRole]),
    seal: &Seal,
) -> std::io::Result<()> {
    use std::io::Write as _;
    let text = encode(settings, started, listing, seal).map_err(std::io::Error::other)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".");
    // Created with O_EXCL under a random name, mode 0600: nothing another user placed there
    // (a file, a symbolic link) is ever opened for writing.
    let mut temp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)?;
    temp.write_all(&text)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The listing kept in `path`, if it may be used now under `settings` (see the module docs).
/// `Err` says why a file that exists is not used; `Ok(None)`: there is no file.
pub fn load(path: &Path, settings: &AwsConfig, seal: &Seal) -> Result<Option<Restored>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path);
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) => {
            return Err("it is a symbolic link; it is written as a plain file".to_owned())
        }
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    // The checks are on the opened file (fstat), so the path cannot be swapped after them.
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.is_file() {
        return Err("it is not a plain file".to_owned());
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "it is owned by uid {}, not by this bastion (uid {me}), which writes it",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "others may write it (mode {:o}); it is written 0600",
            meta.mode() & 0o777
        ));
    }
    let mut text = Vec::new();
    file.take(MAX_BYTES as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if text.len() > MAX_BYTES {
        return Err(format!("it is larger than {MAX_BYTES} bytes"));
    }
    decode(&text, settings, seal).map(Some)
}

/// A saved listing's bytes, if it may be used now under `settings` and `seal` verifies its
/// signature (see the module docs); `Err` says why not.
pub fn decode(text: &[u8], settings: &AwsConfig, seal: &Seal) -> Result<Restored, String> {
    let sealed: Sealed = serde_json::from_slice(text)
        .map_err(|e| format!("not a signed listing of this version (format {FORMAT}): {e}"))?;
    if sealed.format != FORMAT {
        return Err(format!(
            "format {} (this bastion writes {FORMAT})",
            sealed.format
        ));
    }
    let signature = SshSig::from_pem(sealed.signature.as_bytes())
        .map_err(|e| format!("its signature is not an SSH signature: {e}"))?;
    seal.public()
        .verify(NAMESPACE, sealed.listing.as_bytes(), &signature)
        .map_err(|e| {
            format!(
                "its signature does not verify with this bastion's host key {} ({e}): \
                 this fleet did not write it",
                seal.public().fingerprint(HashAlg::Sha256)
            )
        })?;
    let saved: Saved = serde_json::from_str(&sealed.listing)
        .map_err(|e| format!("a signed listing that does not parse: {e}"))?;
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
    let identities = restore_identities(saved.identities)?;
    let hosts = restore_hosts(saved.hosts, settings)?;
    let roles = restore_roles(saved.roles)?;
    Ok(Restored {
        identities,
        hosts,
        roles,
        started,
        age,
    })
}

/// At least one group, each by the config's rule; `who` names the user or host in the error.
fn check_groups(who: &str, groups: &BTreeSet<String>) -> Result<(), String> {
    if groups.is_empty() {
        return Err(format!("{who} has no group"));
    }
    for group in groups {
        gatehouse_config::check_group_name(group).map_err(|e| format!("{who}: group: {e}"))?;
    }
    Ok(())
}

/// The saved identities, each checked as the live listing checks it: a login name that some
/// IAM user name maps to, at least one group (each by the config's rule), at least one key
/// (each by the config's key rules), no name twice.
fn restore_identities(saved: Vec<SavedIdentity>) -> Result<Vec<Identity>, String> {
    let mut seen = BTreeSet::new();
    let mut identities = Vec::with_capacity(saved.len());
    for saved in saved {
        let name = gatehouse_policy::printable(&saved.name);
        let canonical = iam_name(&saved.name).and_then(|iam| login_name(&iam).ok());
        if canonical.as_deref() != Some(saved.name.as_str()) {
            return Err(format!("user {name}: not a login name of an IAM user"));
        }
        if !seen.insert(saved.name.clone()) {
            return Err(format!("user {name} is listed twice"));
        }
        check_groups(&format!("user {name}"), &saved.groups)?;
        if saved.keys.is_empty() {
            return Err(format!("user {name} has no key"));
        }
        let keys = saved
            .keys
            .iter()
            .map(|line| gatehouse_config::parse_public_key(line))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("user {name}: a key: {e}"))?;
        let expires = saved
            .expires
            .as_deref()
            .map(gatehouse_config::parse_rfc3339)
            .transpose()
            .map_err(|e| format!("user {name}: expires: {e}"))?;
        identities.push(Identity {
            name: saved.name,
            groups: saved.groups,
            keys,
            expires,
            key_expires: Vec::new(),
        });
    }
    Ok(identities)
}

/// The saved roles, each checked as the live listing checks it: a valid IAM name, an account
/// of 12 digits, at least one group (each by the config's rule), no name twice.
fn restore_roles(saved: Vec<SavedRole>) -> Result<Vec<TaggedRole>, String> {
    let mut seen = BTreeSet::new();
    let mut roles = Vec::with_capacity(saved.len());
    for saved in saved {
        let name = gatehouse_policy::printable(&saved.name);
        if login_name(&saved.name).is_err() {
            return Err(format!("role {name}: not an IAM role name"));
        }
        if saved.account.len() != 12 || !saved.account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("role {name}: account is not 12 digits"));
        }
        if !seen.insert(saved.name.clone()) {
            return Err(format!("role {name} is listed twice"));
        }
        check_groups(&format!("role {name}"), &saved.groups)?;
        roles.push(TaggedRole {
            name: saved.name,
            account: saved.account,
            groups: saved.groups,
        });
    }
    Ok(roles)
}

/// The saved hosts, each checked as the live listing checks it: names by the host-name rule
/// (lowercase, the instance id among them), at least one group and port, login users only
/// with `instance_connect` and by the login tag's rule, and an address that may be a target.
fn restore_hosts(saved: Vec<SavedHost>, settings: &AwsConfig) -> Result<Vec<Host>, String> {
    let mut hosts = Vec::with_capacity(saved.len());
    for saved in saved {
        let id = gatehouse_policy::printable(&saved.id);
        if let Some(why) = gatehouse_config::forbidden_target_reason(saved.address) {
            return Err(format!("host {id} at {}: {why}", saved.address));
        }
        for name in &saved.names {
            match gatehouse_config::check_host_name(name) {
                Ok(checked) if checked == *name => {}
                Ok(_) => return Err(format!("host {id}: name {name:?} is not lowercase")),
                Err(e) => return Err(format!("host {id}: name: {e}")),
            }
        }
        if !saved.names.contains(&saved.id.to_ascii_lowercase()) {
            return Err(format!("host {id}: its id is not among its names"));
        }
        check_groups(&format!("host {id}"), &saved.groups)?;
        let ports = saved.ports.iter().map(u16::to_string).collect::<Vec<_>>();
        parse_ports(&ports.join(",")).map_err(|e| format!("host {id}: ports: {e}"))?;
        if !saved.login_users.is_empty() {
            if !settings.instance_connect {
                return Err(format!(
                    "host {id} has login users, and instance_connect is off"
                ));
            }
            let users = parse_login_users(&saved.login_users.join(","))
                .map_err(|e| format!("host {id}: login users: {e}"))?;
            if users != saved.login_users {
                return Err(format!("host {id}: a login user is listed twice"));
            }
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
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const K1: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMzQnTZ1QB2clN1RVs8twk5/t+5CEwiIXdcNoxcQmsgc alice@laptop";
    /// The fleet's host key (made for these tests with ssh-keygen).
    const FLEET: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACA+QqRaPNVc8VpSxvfiU7ziYfHHngmTxYqkbY+QdqH2cQAAAIjg6dDj4OnQ
4wAAAAtzc2gtZWQyNTUxOQAAACA+QqRaPNVc8VpSxvfiU7ziYfHHngmTxYqkbY+QdqH2cQ
AAAEDpbx9PgvJ+NjEgWTCtKSfJO6k9g0V0aHnQOow4c00aIj5CpFo81VzxWlLG9+JTvOJh
8ceeCZPFiqRtj5B2ofZxAAAABWZsZWV0
-----END OPENSSH PRIVATE KEY-----
";
    /// Another key: an attacker's, or another fleet's.
    const OTHER: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACBhf4rw8aLzYJybo63zdiZ/kmdTvoICzwYa0xDWoCiAhwAAAJCiOYrPojmK
zwAAAAtzc2gtZWQyNTUxOQAAACBhf4rw8aLzYJybo63zdiZ/kmdTvoICzwYa0xDWoCiAhw
AAAEAe9DPz98ZSIJsuv2JjytNCBTVZvvpd+2Tw0bxZfrZfRGF/ivDxovNgnJujrfN2Jn+S
Z1O+ggLPBhrTENagKICHAAAACGF0dGFja2VyAQIDBAU=
-----END OPENSSH PRIVATE KEY-----
";

    fn seal(pem: &str) -> Seal {
        Seal::new(PrivateKey::from_openssh(pem).expect("test key"))
    }

    fn settings(extra: &str) -> AwsConfig {
        gatehouse_config::parse(
            &format!(
                "[server]\nlisten = [\"0.0.0.0:22\"]\n[aws]\nvpc_ids = [\"vpc-1\"]\n\
                 max_staleness = \"15m\"\ninstance_connect = true\n{extra}"
            ),
            Path::new("t.toml"),
        )
        .expect("config")
        .aws
        .expect("aws")
    }

    fn listing() -> (Vec<Identity>, Vec<Host>, Vec<TaggedRole>) {
        // With an expiry (the tag `gatehouse:expires`): a saved listing keeps it.
        let identity = Identity {
            name: "alice".into(),
            groups: ["research".to_owned()].into(),
            keys: vec![gatehouse_config::parse_public_key(K1).expect("key")],
            expires: Some(gatehouse_config::parse_rfc3339("2030-01-01T00:00:00Z").expect("time")),
            key_expires: Vec::new(),
        };
        let host = Host {
            id: "i-1".into(),
            names: vec!["jupyter".into(), "i-1".into()],
            address: "10.0.3.140".parse().expect("ip"),
            groups: ["research".to_owned()].into(),
            ports: [22, 8888].into(),
            login_users: vec!["ubuntu".into()],
        };
        let role = TaggedRole {
            name: "deploy".into(),
            account: "123456789012".into(),
            groups: ["ops".to_owned()].into(),
        };
        (vec![identity], vec![host], vec![role])
    }

    /// Files in the temporary directory other than `keep`.
    fn others(dir: &Path, keep: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p != keep)
            .collect()
    }

    use std::path::PathBuf;

    #[test]
    fn a_saved_listing_comes_back_as_it_was_with_its_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("directory.json");
        let (s, fleet) = (settings(""), seal(FLEET));
        assert!(load(&path, &s, &fleet)
            .expect("no file is no error")
            .is_none());
        let (identities, hosts, roles) = listing();
        let listed = SystemTime::now() - Duration::from_secs(60);
        save(&path, &s, listed, (&identities, &hosts, &roles), &fleet).expect("save");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(others(dir.path(), &path), Vec::<PathBuf>::new());
        let back = load(&path, &s, &fleet).expect("usable").expect("a file");
        assert_eq!(back.identities, identities);
        assert_eq!(back.hosts, hosts);
        assert_eq!(back.roles, roles);
        assert!((59..=61).contains(&back.age.as_secs()), "{:?}", back.age);
    }

    #[test]
    fn a_file_is_refused_when_too_old_from_the_future_of_other_settings_or_writable_by_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("directory.json");
        let (s, fleet) = (settings(""), seal(FLEET));
        let (identities, hosts, roles) = listing();
        let save_at = |t: SystemTime, s: &AwsConfig| {
            save(&path, s, t, (&identities, &hosts, &roles), &fleet).expect("save");
        };
        save_at(SystemTime::now() - Duration::from_secs(16 * 60), &s);
        let load = |s: &AwsConfig| load(&path, s, &fleet).expect_err("refused");
        assert!(load(&s).contains("older than max_staleness"));
        save_at(SystemTime::now() + Duration::from_secs(600), &s);
        assert!(load(&s).contains("in the future"));
        save_at(SystemTime::now(), &settings("tag_prefix = \"lab:\"\n"));
        assert!(load(&s).contains("other settings"));
        save_at(SystemTime::now(), &s);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        assert!(load(&s).contains("others may write it"));
        std::fs::write(&path, b"{\"format\": 2}").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(load(&s).contains("not a signed listing"));
    }

    /// The attack of the review: the object (or the file) rewritten with an attacker's key for
    /// alice, unsigned, re-signed with another key, or with the fleet's signature kept.
    #[test]
    fn a_listing_this_fleet_did_not_sign_is_refused_whole() {
        let s = settings("");
        let (fleet, other) = (seal(FLEET), seal(OTHER));
        let (identities, hosts, roles) = listing();
        let now = SystemTime::now();
        let genuine = encode(&s, now, (&identities, &hosts, &roles), &fleet).expect("encode");
        assert!(decode(&genuine, &s, &fleet).is_ok());

        // Signed by another key (the attacker's own, or another fleet's).
        let foreign = encode(&s, now, (&identities, &hosts, &roles), &other).expect("encode");
        let why = decode(&foreign, &s, &fleet).expect_err("refused");
        assert!(
            why.contains("does not verify with this bastion's host key"),
            "{why}"
        );

        // The fleet's signature kept, the listing edited (alice's key swapped).
        let mut sealed: Sealed = serde_json::from_slice(&genuine).expect("sealed");
        let attacker = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGF/ivDxovNgnJujrfN2Jn+SZ1O+ggLPBhrTENagKICH attacker";
        let key_of_alice = identities[0].keys[0].to_openssh().expect("openssh");
        assert!(sealed.listing.contains(&key_of_alice));
        sealed.listing = sealed.listing.replace(&key_of_alice, attacker);
        let edited = serde_json::to_vec(&sealed).expect("json");
        let why = decode(&edited, &s, &fleet).expect_err("refused");
        assert!(why.contains("does not verify"), "{why}");

        // No signature at all: the listing as the format before signing wrote it.
        let mut plain: Value = serde_json::from_str(&sealed.listing).expect("listing");
        plain["format"] = 1.into();
        let why = decode(plain.to_string().as_bytes(), &s, &fleet).expect_err("refused");
        assert!(why.contains("not a signed listing"), "{why}");

        // The host key's signature in another namespace is not a listing's signature.
        let mut sealed: Sealed = serde_json::from_slice(&genuine).expect("sealed");
        sealed.signature = fleet
            .0
            .sign("file", HashAlg::Sha512, sealed.listing.as_bytes())
            .and_then(|sig| sig.to_pem(LineEnding::LF))
            .expect("sign");
        let why =
            decode(&serde_json::to_vec(&sealed).expect("json"), &s, &fleet).expect_err("refused");
        assert!(why.contains("does not verify"), "{why}");
    }

    use serde_json::Value;

    /// A listing the fleet signed is still checked as a live listing is: what a bug (or an
    /// older version's rules) let through is refused, never served in part.
    #[test]
    fn a_signed_listing_is_checked_again_as_the_live_listing_is() {
        let fleet = seal(FLEET);
        let refused = |s: &AwsConfig, edit: &dyn Fn(&mut Vec<Identity>, &mut Vec<Host>)| {
            let (mut identities, mut hosts, roles) = listing();
            edit(&mut identities, &mut hosts);
            let bytes = encode(s, SystemTime::now(), (&identities, &hosts, &roles), &fleet)
                .expect("encode");
            decode(&bytes, s, &fleet).expect_err("refused")
        };
        let s = settings("");
        type Edit = Box<dyn Fn(&mut Vec<Identity>, &mut Vec<Host>)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "not a login name",
                Box::new(|i, _| i[0].name = "Alice Smith".into()),
            ),
            (
                "not a login name",
                Box::new(|i, _| i[0].name = "a@b".into()),
            ),
            ("listed twice", Box::new(|i, _| i.push(i[0].clone()))),
            ("has no group", Box::new(|i, _| i[0].groups.clear())),
            (
                "group",
                Box::new(|i, _| i[0].groups = ["Research Team".to_owned()].into()),
            ),
            ("has no key", Box::new(|i, _| i[0].keys.clear())),
            (
                "root",
                Box::new(|_, h| h[0].login_users = vec!["root".into()]),
            ),
            (
                "at most",
                Box::new(|_, h| {
                    h[0].login_users = ["a", "b", "c", "d", "e"].map(str::to_owned).to_vec();
                }),
            ),
            (
                "metadata",
                Box::new(|_, h| h[0].address = "169.254.169.254".parse().expect("ip")),
            ),
            (
                "loopback",
                Box::new(|_, h| h[0].address = "127.0.0.1".parse().expect("ip")),
            ),
            (
                "name",
                Box::new(|_, h| h[0].names.push("10.0.3.140".into())),
            ),
            (
                "not lowercase",
                Box::new(|_, h| h[0].names.push("Jupyter".into())),
            ),
            (
                "its id is not among its names",
                Box::new(|_, h| h[0].names.retain(|n| n != "i-1")),
            ),
            ("ports", Box::new(|_, h| h[0].ports = [0].into())),
            ("ports", Box::new(|_, h| h[0].ports.clear())),
            ("has no group", Box::new(|_, h| h[0].groups.clear())),
        ];
        for (want, edit) in &cases {
            let why = refused(&s, edit.as_ref());
            assert!(why.contains(want), "want {want:?}, got {why:?}");
        }
        // A DSA key (the config refuses DSA): a key line written into the listing by hand.
        let (identities, hosts, roles) = listing();
        let bytes =
            encode(&s, SystemTime::now(), (&identities, &hosts, &roles), &fleet).expect("encode");
        let sealed: Sealed = serde_json::from_slice(&bytes).expect("sealed");
        let mut saved: Value = serde_json::from_str(&sealed.listing).expect("listing");
        saved["identities"][0]["keys"][0] = "ssh-dss AAAAB3NzaC1kc3MAAACBAP1/U4EddRIpUt9KnC7s5Of2EbdSPO9EAMMeP4C2USZpRV1AIlH7WT2NWPq/xfW6MPbLm1Vs14E7gB00b/JmYLdrmVClpJ+f6AR7ECLCT7up1/63xhv4O1fnxqimFQ8E+4P208UewwI1VBNaFpEy9nXzrith1yrv8iIDGZ3RSAHHAAAAFQCXYFCPFSMLzLKSuYKi64QL8Fgc9QAAAIEA9+GghdabPd7LvKtcNrhXuXmUr7v6OuqC+VdMCz0HgmdRWVeOutRZT+ZxBxCBgLRJFnEj6EwoFhO3zwkyjMim4TwWeotUfI0o4KOuHiuzpnWRbqN/C/ohNWLx+2J6ASQ7zKTxvqhRkImog9/hWuWfBpKLZl6Ae1UlZAFMO/7PSSoAAACBAOQYE3c1xKzDwrNqgA6e1bOqBN8m5J8mK4lqtIhIyBLQqHSWW2oO6WW4ztlgqLnRU85KU1QPqAudT82oVzfljiQK2FQ5ViEWVH8dXXp9oWi+LLPo1dLCAWzT8fEaD9jDsk+M/8FuLV5MBvhOGoaMzYQhQmUVuSmn2+z7gLVKhyEt test".into();
        let mut edited = sealed;
        edited.listing = saved.to_string();
        edited.signature = fleet
            .0
            .sign(NAMESPACE, HashAlg::Sha512, edited.listing.as_bytes())
            .and_then(|sig| sig.to_pem(LineEnding::LF))
            .expect("sign");
        let why =
            decode(&serde_json::to_vec(&edited).expect("json"), &s, &fleet).expect_err("refused");
        assert!(why.contains("a key"), "{why}");
        // Roles, likewise.
        type RoleEdit = fn(&mut TaggedRole);
        let role_cases: [(&str, RoleEdit); 3] = [
            ("not an IAM role name", |r| r.name = "a b".into()),
            ("12 digits", |r| r.account = "1234".into()),
            ("has no group", |r| r.groups.clear()),
        ];
        for (want, edit) in role_cases {
            let (identities, hosts, mut roles) = listing();
            edit(&mut roles[0]);
            let bytes = encode(&s, SystemTime::now(), (&identities, &hosts, &roles), &fleet)
                .expect("encode");
            let why = decode(&bytes, &s, &fleet).expect_err("refused");
            assert!(why.contains(want), "want {want:?}, got {why:?}");
        }
        // Login users only with instance_connect.
        let off = settings("").clone();
        let off = AwsConfig {
            instance_connect: false,
            ..off
        };
        let why = refused(&off, &|_, _| {});
        assert!(why.contains("instance_connect is off"), "{why}");
    }

    /// The file is never read through a symbolic link, and only when this process's user owns
    /// it: checked on the opened file.
    #[test]
    fn a_file_behind_a_symbolic_link_or_owned_by_another_user_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, fleet) = (settings(""), seal(FLEET));
        let (identities, hosts, roles) = listing();
        let real = dir.path().join("real.json");
        save(
            &real,
            &s,
            SystemTime::now(),
            (&identities, &hosts, &roles),
            &fleet,
        )
        .expect("save");
        let link = dir.path().join("directory.json");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let why = load(&link, &s, &fleet).expect_err("refused");
        assert!(why.contains("symbolic link"), "{why}");
        assert!(load(&real, &s, &fleet).is_ok());
        if nix::unistd::geteuid().is_root() {
            // As root (tests/run), the file is given to another user.
            let nobody = nix::unistd::Uid::from_raw(65534);
            nix::unistd::chown(&real, Some(nobody), None).expect("chown");
            let why = load(&real, &s, &fleet).expect_err("refused");
            assert!(why.contains("owned by uid 65534"), "{why}");
        }
        // A save replaces a symbolic link at the path with a file; the link's target is left
        // as it was.
        let before = std::fs::read(&real).expect("read");
        save(
            &link,
            &s,
            SystemTime::now(),
            (&identities, &hosts, &roles),
            &fleet,
        )
        .expect("save");
        assert!(!std::fs::symlink_metadata(&link)
            .expect("meta")
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&real).expect("read"), before);
    }
}
