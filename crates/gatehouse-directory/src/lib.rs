//! The directory: who may log in (identities with their keys and groups) and where they may go
//! (the inventory), as an immutable [`Snapshot`] published through a [`Directory`].
//!
//! Readers take the current snapshot without waiting; a writer (config reload, and the AWS
//! refresh later) publishes a whole new snapshot, and every subscriber is woken so it can
//! re-check what it holds open. A snapshot is replaced only by a complete, validated one: a
//! failed refresh never publishes an empty directory.

#![forbid(unsafe_code)]

pub mod callers;
pub mod certificate;
pub mod names;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use callers::{Caller, Callers, Mapped, TaggedRoles, Via};
use gatehouse_config::Config;
use gatehouse_policy::{Host, Inventory, Principal};
use ssh_key::{HashAlg, PublicKey};
use tokio::sync::watch;

/// One person who may log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Login name.
    pub name: String,
    /// Groups, for the policy.
    pub groups: BTreeSet<String>,
    /// Public keys that authenticate this person.
    pub keys: Vec<PublicKey>,
    /// When this person's access ends (`users[].expires`, the IAM tag `gatehouse:expires`):
    /// from then on no login, and open sessions are closed. `None`: never.
    pub expires: Option<SystemTime>,
    /// Keys of `keys` that stop working earlier than the identity (`expiry-time`).
    pub key_expires: Vec<(PublicKey, SystemTime)>,
}

impl Identity {
    /// An identity without expiry.
    pub fn new(name: String, groups: BTreeSet<String>, keys: Vec<PublicKey>) -> Self {
        Identity {
            name,
            groups,
            keys,
            expires: None,
            key_expires: Vec::new(),
        }
    }

    /// When access with `key` ends (the earlier of the identity's and the key's expiry);
    /// with `None`, the identity's own (a certificate login).
    pub fn access_ends(&self, key: Option<&PublicKey>) -> Option<SystemTime> {
        let key_end = key.and_then(|key| {
            self.key_expires
                .iter()
                .filter(|(k, _)| k.key_data() == key.key_data())
                .map(|(_, t)| *t)
                .min()
        });
        match (self.expires, key_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Why a login is refused by the directory (the signature itself is checked by the SSH layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginRefusal {
    /// No identity with this login name.
    UnknownUser,
    /// The identity exists but this key is not one of its keys.
    UnknownKey,
    /// The snapshot is older than its source allows (AWS unreachable for longer than
    /// `max_staleness`): new logins fail closed.
    DirectoryStale,
    /// The identity's (or the key's) access ended at this instant.
    Expired(SystemTime),
    /// A certificate issued through an `[sso]` mapping entry that is gone, or whose login
    /// is now a user of the directory (why, in words).
    Unmapped(String),
}

impl LoginRefusal {
    /// Stable label for audit and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            LoginRefusal::UnknownUser => "unknown_user",
            LoginRefusal::UnknownKey => "unknown_key",
            LoginRefusal::DirectoryStale => "directory_stale",
            LoginRefusal::Expired(_) => "access_expired",
            LoginRefusal::Unmapped(_) => "caller_not_mapped",
        }
    }

    /// The reason in words, for audit lines and logs: the code, except for an expiry, which
    /// says when ("access expired at 2026-12-31T18:00:00Z").
    pub fn reason(&self) -> String {
        match self {
            LoginRefusal::Expired(at) => {
                format!("access expired at {}", gatehouse_config::show_time(*at))
            }
            LoginRefusal::Unmapped(why) => why.clone(),
            other => other.code().to_owned(),
        }
    }
}

/// A consistent view of identities and inventory at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    identities: HashMap<String, Identity>,
    inventory: Inventory,
    /// After this instant the snapshot may not admit new logins. `None`: never (static).
    fresh_until: Option<Instant>,
    /// When the snapshot was built.
    created: Instant,
    /// `[sso]`'s mapping, stamped on by the [`Directory`] that publishes the snapshot.
    callers: Arc<Callers>,
    /// The IAM roles that carry the groups tag, as the source read them (AWS only).
    roles: Arc<TaggedRoles>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot::new(Vec::new(), Inventory::default())
    }
}

impl Snapshot {
    /// Builds a snapshot from identities and hosts.
    pub fn new(identities: Vec<Identity>, inventory: Inventory) -> Self {
        let identities = identities
            .into_iter()
            .map(|i| (i.name.clone(), i))
            .collect();
        Snapshot {
            identities,
            inventory,
            fresh_until: None,
            created: Instant::now(),
            callers: Arc::default(),
            roles: Arc::default(),
        }
    }

    /// The same snapshot, with the IAM roles that carry the groups tag (see
    /// [`callers::TaggedRoles`]).
    pub fn with_roles(mut self, roles: TaggedRoles) -> Self {
        self.roles = Arc::new(roles);
        self
    }

    /// Time since the snapshot was built (for the AWS source: since its data was read).
    pub fn age(&self) -> std::time::Duration {
        self.created.elapsed()
    }

    /// The same snapshot, admitting new logins only until `fresh_until`. A source that
    /// refreshes (AWS) sets it to the time of its last good answer plus `max_staleness`.
    pub fn fresh_until(mut self, fresh_until: Instant) -> Self {
        self.fresh_until = Some(fresh_until);
        self
    }

    /// The same snapshot, as old as data read at `at` (its [`Snapshot::age`] counts from
    /// there, not from when it was built): an AWS listing, or one restored from disk.
    pub fn listed_at(mut self, at: Instant) -> Self {
        self.created = at;
        self
    }

    /// Whether the snapshot is too old to admit new logins at `now`.
    pub fn is_stale(&self, now: Instant) -> bool {
        self.fresh_until.is_some_and(|t| now >= t)
    }

    /// The static directory described by `[[users]]` and `[[hosts]]` of a config.
    pub fn from_config(config: &Config) -> Self {
        let identities = config
            .users
            .iter()
            .map(|u| Identity {
                name: u.name.clone(),
                groups: u.groups.iter().cloned().collect(),
                keys: u.keys.clone(),
                expires: u.expires,
                key_expires: u.key_expires.clone(),
            })
            .collect();
        let hosts = config
            .hosts
            .iter()
            .map(|h| Host {
                id: h.name.clone(),
                names: vec![h.name.to_ascii_lowercase()],
                address: h.address,
                groups: h.groups.iter().cloned().collect(),
                ports: h.ports.iter().copied().collect(),
                login_users: Vec::new(),
            })
            .collect();
        Snapshot::new(identities, Inventory::new(hosts))
    }

    /// The inventory of this snapshot.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// All identities, sorted by name.
    pub fn identities(&self) -> Vec<&Identity> {
        let mut all: Vec<&Identity> = self.identities.values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The identity with this login name.
    pub fn identity(&self, user: &str) -> Option<&Identity> {
        self.identities.get(user)
    }

    /// Whether `key` authenticates `user`; on success, the principal the policy sees. Keys
    /// are compared by their key material; comments play no part. A stale snapshot refuses
    /// every login (fail closed).
    pub fn login(&self, user: &str, key: &PublicKey) -> Result<Principal, LoginRefusal> {
        if self.is_stale(Instant::now()) {
            return Err(LoginRefusal::DirectoryStale);
        }
        self.recheck(user, key)
    }

    /// The key check of [`Snapshot::login`] without the staleness check: for sessions that
    /// are already open. Staleness stops new logins, it never revokes anyone.
    pub fn recheck(&self, user: &str, key: &PublicKey) -> Result<Principal, LoginRefusal> {
        let identity = self.identity(user).ok_or(LoginRefusal::UnknownUser)?;
        if !identity.keys.iter().any(|k| k.key_data() == key.key_data()) {
            return Err(LoginRefusal::UnknownKey);
        }
        check_expiry(identity.access_ends(Some(key)))?;
        Ok(principal_of(identity))
    }

    /// A login by certificate (already verified against a trusted CA, see [`certificate`]):
    /// the user must be in this snapshot, and not expired; its groups are this snapshot's.
    /// A stale snapshot refuses it like any login.
    pub fn login_user(&self, user: &str) -> Result<Principal, LoginRefusal> {
        if self.is_stale(Instant::now()) {
            return Err(LoginRefusal::DirectoryStale);
        }
        self.recheck_user(user)
    }

    /// [`Snapshot::login_user`] without the staleness check, for open certificate sessions.
    pub fn recheck_user(&self, user: &str) -> Result<Principal, LoginRefusal> {
        let identity = self.identity(user).ok_or(LoginRefusal::UnknownUser)?;
        check_expiry(identity.access_ends(None))?;
        Ok(principal_of(identity))
    }

    /// The login a `gatehouse login` caller (of `account`) gets a certificate for, or why
    /// none (the reason the user sees): it must map through `[sso]`, an SSO or role login
    /// must not be the name of a user of the directory (two people never share a login), an
    /// IAM user caller must be a user of the directory, and the snapshot must be fresh.
    pub fn map_caller(&self, account: &str, caller: &Caller) -> Result<Mapped, String> {
        if self.is_stale(Instant::now()) {
            return Err(LoginRefusal::DirectoryStale.reason());
        }
        let mapped = self.callers.map(account, caller, &self.roles)?;
        self.login_via(&mapped.via, &mapped.login)
            .map_err(|refusal| refusal.reason())?;
        Ok(mapped)
    }

    /// A login by a certificate of the bastion's own CA, issued through `via`: the principal
    /// this snapshot gives it (the entry's groups now), or why none. A stale snapshot
    /// refuses it like any login.
    pub fn login_via(&self, via: &Via, login: &str) -> Result<Principal, LoginRefusal> {
        if self.is_stale(Instant::now()) {
            return Err(LoginRefusal::DirectoryStale);
        }
        self.recheck_via(via, login)
    }

    /// [`Snapshot::login_via`] without the staleness check, for open sessions.
    pub fn recheck_via(&self, via: &Via, login: &str) -> Result<Principal, LoginRefusal> {
        match via {
            Via::IamUser if self.callers.iam_users() => self.recheck_user(login),
            Via::IamUser => Err(LoginRefusal::Unmapped(
                "IAM users may no longer log in with gatehouse login (sso.iam_users)".to_owned(),
            )),
            _ if self.identities.contains_key(login) => Err(LoginRefusal::Unmapped(format!(
                "login {login} is a user of the directory; a {via} caller cannot have it"
            ))),
            _ => match self.callers.groups(via, &self.roles) {
                Some(groups) => Ok(Principal {
                    user: login.to_owned(),
                    groups: groups.clone(),
                }),
                None => Err(LoginRefusal::Unmapped(format!(
                    "{via} is no longer mapped to any group"
                ))),
            },
        }
    }

    /// `[sso]`'s mapping in this snapshot.
    pub fn callers(&self) -> &Callers {
        &self.callers
    }

    /// When access of `user` (with `key`, or by certificate with `None`) ends in this
    /// snapshot. `None`: never (or no such user).
    pub fn access_ends(&self, user: &str, key: Option<&PublicKey>) -> Option<SystemTime> {
        self.identity(user).and_then(|i| i.access_ends(key))
    }

    /// The principal for a login name, without a key check (for `gatehouse hosts`).
    pub fn principal(&self, user: &str) -> Option<Principal> {
        self.identity(user).map(principal_of)
    }
}

/// Refuses access whose end has come: an expiry at or before now.
fn check_expiry(ends: Option<SystemTime>) -> Result<(), LoginRefusal> {
    match ends {
        Some(at) if SystemTime::now() >= at => Err(LoginRefusal::Expired(at)),
        _ => Ok(()),
    }
}

fn principal_of(identity: &Identity) -> Principal {
    Principal {
        user: identity.name.clone(),
        groups: identity.groups.clone(),
    }
}

/// The `SHA256:...` fingerprint OpenSSH prints for a key.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Publishes snapshots to subscribers.
#[derive(Debug)]
pub struct Directory {
    tx: watch::Sender<Arc<Snapshot>>,
    /// `[sso]`'s mapping, stamped on every snapshot published (whatever its source).
    callers: Mutex<Arc<Callers>>,
}

impl Directory {
    /// A directory that starts with `initial`.
    pub fn new(initial: Snapshot) -> Self {
        let callers = initial.callers.clone();
        let (tx, _) = watch::channel(Arc::new(initial));
        Directory {
            tx,
            callers: Mutex::new(callers),
        }
    }

    /// Sets `[sso]`'s mapping: this and every later snapshot carry it. Republishes the
    /// current snapshot, so open sessions are re-checked against the new mapping.
    pub fn set_callers(&self, callers: Callers) {
        let callers = Arc::new(callers);
        *self.callers.lock().unwrap_or_else(|e| e.into_inner()) = callers.clone();
        let mut snapshot = (*self.current()).clone();
        snapshot.callers = callers;
        self.tx.send_replace(Arc::new(snapshot));
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees every later snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// Replaces the snapshot and wakes every subscriber.
    pub fn publish(&self, mut snapshot: Snapshot) {
        snapshot.callers = self
            .callers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.tx.send_replace(Arc::new(snapshot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(line: &str) -> PublicKey {
        PublicKey::from_openssh(line).unwrap()
    }

    const K1: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMzQnTZ1QB2clN1RVs8twk5/t+5CEwiIXdcNoxcQmsgc alice@laptop";
    const K2: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINmlGXI7OASyXk4O6d+gTUjFFoKRkucGwcPn6U7HGaSw bob@laptop";

    fn snapshot() -> Snapshot {
        Snapshot::new(
            vec![Identity::new(
                "alice".into(),
                ["research".to_string()].into(),
                vec![key(K1)],
            )],
            Inventory::default(),
        )
    }

    #[test]
    fn login_matches_key_material_not_comment() {
        let s = snapshot();
        let same_key_other_comment = key(&K1.replace("alice@laptop", "renamed"));
        let p = s.login("alice", &same_key_other_comment).unwrap();
        assert_eq!(p.user, "alice");
        assert!(p.groups.contains("research"));
    }

    #[test]
    fn login_refusals_are_distinguished() {
        let s = snapshot();
        assert_eq!(s.login("alice", &key(K2)), Err(LoginRefusal::UnknownKey));
        assert_eq!(s.login("mallory", &key(K1)), Err(LoginRefusal::UnknownUser));
        assert_eq!(s.login("Alice", &key(K1)), Err(LoginRefusal::UnknownUser));
    }

    #[test]
    fn a_snapshot_is_as_old_as_the_data_it_was_listed_from() {
        assert!(snapshot().age() < std::time::Duration::from_secs(5));
        let minute_ago = Instant::now()
            .checked_sub(std::time::Duration::from_secs(60))
            .expect("uptime over a minute");
        let listed = snapshot().listed_at(minute_ago);
        assert!(listed.age() >= std::time::Duration::from_secs(60));
    }

    #[test]
    fn stale_snapshot_refuses_logins_fresh_one_admits() {
        let now = Instant::now();
        let fresh = snapshot().fresh_until(now + std::time::Duration::from_secs(60));
        assert!(fresh.login("alice", &key(K1)).is_ok());
        let stale = snapshot().fresh_until(now);
        assert!(stale.is_stale(now));
        assert_eq!(
            stale.login("alice", &key(K1)),
            Err(LoginRefusal::DirectoryStale)
        );
        assert!(!snapshot().is_stale(now + std::time::Duration::from_secs(1 << 30)));
    }

    #[test]
    fn expiry_of_identity_and_key_ends_access_at_the_earlier() {
        use std::time::Duration;
        let now = SystemTime::now();
        let mut alice = Identity::new(
            "alice".into(),
            ["research".to_string()].into(),
            vec![key(K1), key(K2)],
        );
        alice.expires = Some(now + Duration::from_secs(3600));
        alice.key_expires = vec![(key(K2), now - Duration::from_secs(1))];
        let s = Snapshot::new(vec![alice], Inventory::default());
        assert!(s.login("alice", &key(K1)).is_ok());
        assert_eq!(
            s.login("alice", &key(K2)),
            Err(LoginRefusal::Expired(now - Duration::from_secs(1)))
        );
        assert_eq!(
            s.access_ends("alice", Some(&key(K1))),
            Some(now + Duration::from_secs(3600))
        );
        assert_eq!(
            s.access_ends("alice", None),
            Some(now + Duration::from_secs(3600))
        );
        assert!(s.login_user("alice").is_ok());

        let mut gone = Identity::new("bob".into(), ["research".to_string()].into(), vec![key(K2)]);
        gone.expires = Some(now - Duration::from_secs(5));
        let s = Snapshot::new(vec![gone], Inventory::default());
        let refusal = s.login_user("bob").unwrap_err();
        assert_eq!(refusal.code(), "access_expired");
        assert!(
            refusal.reason().starts_with("access expired at 20"),
            "{}",
            refusal.reason()
        );
        assert!(matches!(
            s.recheck("bob", &key(K2)),
            Err(LoginRefusal::Expired(_))
        ));
        assert_eq!(s.login_user("carol"), Err(LoginRefusal::UnknownUser));
    }

    #[test]
    fn a_caller_maps_to_a_free_login_and_loses_it_with_its_mapping() {
        use callers::{Caller, Callers, Via};
        let config = |sets: &str| {
            let text = format!(
                "[server]\nlisten = [\"0.0.0.0:22\"]\n[sso]\naccounts = [\"123456789012\"]\n\
                 permission_sets = {{ {sets} }}\n"
            );
            let config = gatehouse_config::parse(&text, std::path::Path::new("g.toml")).unwrap();
            Callers::from_config(config.sso.as_ref())
        };
        let dir = Directory::new(snapshot());
        dir.set_callers(config("Research = [\"research\"]"));
        let sso = |session: &str| Caller::Sso {
            permission_set: "Research".into(),
            role: "AWSReservedSSO_Research_0a".into(),
            session: session.into(),
        };
        let s = dir.current();
        let mapped = s
            .map_caller("123456789012", &sso("carol@example.org"))
            .unwrap();
        assert_eq!(mapped.login, "carol~40example.org");
        let p = s.login_via(&mapped.via, &mapped.login).unwrap();
        assert_eq!(p.groups, ["research".to_string()].into());
        // A directory user's login is never handed to a caller.
        let taken = s.map_caller("123456789012", &sso("alice")).unwrap_err();
        assert!(
            taken.contains("login alice is a user of the directory"),
            "{taken}"
        );
        // The mapping goes: the open session's recheck fails, and a later publish keeps it gone.
        dir.set_callers(config("Other = [\"research\"]"));
        let refusal = dir
            .current()
            .recheck_via(&mapped.via, &mapped.login)
            .unwrap_err();
        assert_eq!(refusal.code(), "caller_not_mapped");
        assert_eq!(
            refusal.reason(),
            "permission set Research is no longer mapped to any group"
        );
        dir.publish(snapshot());
        assert!(dir
            .current()
            .recheck_via(&mapped.via, &mapped.login)
            .is_err());
        assert!(matches!(
            dir.current().recheck_via(&Via::IamUser, "alice"),
            Err(LoginRefusal::Unmapped(_))
        ));
    }

    #[test]
    fn fingerprint_has_openssh_form() {
        let fp = fingerprint(&key(K1));
        assert!(fp.starts_with("SHA256:"), "{fp}");
        assert_eq!(fp.len(), "SHA256:".len() + 43);
    }

    #[test]
    fn publish_wakes_subscribers_with_the_new_snapshot() {
        let dir = Directory::new(snapshot());
        let mut rx = dir.subscribe();
        assert!(dir.current().identity("alice").is_some());
        dir.publish(Snapshot::default());
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().identity("alice").is_none());
        assert!(dir.current().identity("alice").is_none());
    }
}
