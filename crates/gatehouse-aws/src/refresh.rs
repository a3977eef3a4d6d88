//! The refresh: complete listings of IAM (a sweep) and of EC2, and IAM change events, turned
//! into a snapshot and published, and the background loop that keeps doing it: instances
//! every `refresh_interval`, IAM every `iam_sweep_interval` in a task of its own, events as
//! they come (see [`crate::events`]).
//!
//! Rules, in the order they apply:
//! - A listing of a part is complete or it is an error: any failed call fails that part, and
//!   a failed part publishes nothing. The last snapshot stays, and its `fresh_until` (time of
//!   the listing + `max_staleness`) makes new logins fail closed once it is too old.
//! - An empty answer is not trusted on its word: a successful listing with no users (or no
//!   hosts) where the published snapshot had some is held back until
//!   [`EMPTY_CONFIRMATIONS`] listings in a row agree, with no failed listing in between (a
//!   failure is not agreement, so it starts the count again). One glitch (a wrong path prefix
//!   answer, a half-deployed IAM change) never mass-revokes.
//! - After a failure the next try comes sooner than `refresh_interval` and then backs off
//!   exponentially, with jitter, longer still when AWS says it is throttling us.
//! - When the snapshot goes stale, and when it is fresh again, one log line says so.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use gatehouse_config::AwsConfig;
use gatehouse_directory::callers::{TaggedRole, TaggedRoles};
use gatehouse_directory::{Directory, Identity, Snapshot};
use gatehouse_policy::{Host, Inventory};
use rand::RngExt as _;

use crate::build::{self, RoleRecord, Skipped, UserRecord};
use crate::calls::Calls;
use crate::ec2::Ec2Fetcher;
use crate::error::AwsError;
use crate::events::{self, Change, Received, Report};
use crate::iam::{IamFetcher, IamListing, UserReader};
use crate::persist::{self, Seal};
use crate::shared::{Shared, SHARE_EVERY};
use crate::Clients;

/// How many successful listings in a row must agree that everyone (or every host) is gone
/// before such a snapshot is published.
pub const EMPTY_CONFIRMATIONS: u32 = 3;

/// The result of one complete listing.
#[derive(Debug)]
pub struct Listing {
    /// Who may log in.
    pub identities: Vec<Identity>,
    /// Where they may go.
    pub hosts: Vec<Host>,
    /// The IAM roles that carry the groups tag (read only for `[sso]`).
    pub roles: Vec<TaggedRole>,
    /// What was left out, and why.
    pub skipped: Vec<Skipped>,
    /// The AWS calls this listing made, by action.
    pub calls: Calls,
    /// When the listing started (the snapshot is as old as this).
    pub started: Instant,
    /// The same, on the wall clock (for the saved listing).
    pub started_at: SystemTime,
    /// How long it took.
    pub took: Duration,
}

impl Listing {
    /// The snapshot of this listing, admitting logins until `max_staleness` after it started.
    pub fn snapshot(&self, max_staleness: Duration) -> Snapshot {
        listed_snapshot(
            (
                self.identities.clone(),
                self.hosts.clone(),
                self.roles.clone(),
            ),
            self.started,
            max_staleness,
        )
    }
}

/// A snapshot of AWS data read at `started` (now, or restored from disk): as old as that
/// read, and admitting logins until `max_staleness` after it.
fn listed_snapshot(
    (identities, hosts, roles): (Vec<Identity>, Vec<Host>, Vec<TaggedRole>),
    started: Instant,
    max_staleness: Duration,
) -> Snapshot {
    Snapshot::new(identities, Inventory::new(hosts))
        .with_roles(TaggedRoles::new(roles))
        .listed_at(started)
        .fresh_until(started + max_staleness)
}

/// Lists IAM and EC2; remembers key bodies between listings.
#[derive(Debug)]
pub struct AwsSource {
    settings: AwsConfig,
    /// `None` while a sweep (which owns it) runs.
    iam: Option<IamFetcher>,
    reader: UserReader,
    ec2: Ec2Fetcher,
    /// The IAM event queue, when `aws.events_queue_url` is set.
    queue: Option<(aws_sdk_sqs::Client, String)>,
    /// The fleet's shared listing, when `aws.shared_snapshot` is set.
    shared: Option<Shared>,
    /// Skips already warned about (users, hosts, roles), so each is logged once while it
    /// lasts.
    warned: [HashSet<String>; 3],
}

impl AwsSource {
    /// A source over `clients` configured by `settings`.
    pub fn new(clients: &Clients, settings: &AwsConfig) -> Self {
        let iam = IamFetcher::new(
            clients.iam.clone(),
            settings.iam_path_prefix.clone(),
            settings.iam_group_prefix.clone(),
            settings.groups_tag(),
            settings.iam_calls_per_second,
        );
        AwsSource {
            settings: settings.clone(),
            reader: iam.user_reader(),
            iam: Some(iam),
            ec2: Ec2Fetcher::new(
                clients.ec2.clone(),
                settings.vpc_ids.clone(),
                settings.groups_tag(),
            ),
            queue: clients.sqs.clone().zip(settings.events_queue_url.clone()),
            shared: clients
                .s3
                .clone()
                .zip(settings.shared_snapshot.clone())
                .map(|(client, object)| Shared::new(client, object)),
            warned: [HashSet::new(), HashSet::new(), HashSet::new()],
        }
    }

    /// The same source, also reading the IAM roles that carry the groups tag (for `[sso]`:
    /// such a role's callers may log in), in each sweep and on role change events.
    pub fn reading_roles(mut self) -> Self {
        self.iam = self.iam.take().map(IamFetcher::reading_roles);
        if let Some(iam) = &self.iam {
            self.reader = iam.user_reader();
        }
        self
    }

    /// The settings this source was made with.
    pub fn settings(&self) -> &AwsConfig {
        &self.settings
    }

    /// One complete listing. Logs a warning for each newly skipped user, key or instance.
    ///
    /// # Errors
    /// Any failed call: nothing partial is returned.
    pub async fn list(&mut self) -> Result<Listing, AwsError> {
        let mut parts = Parts::default();
        self.list_parts(&mut parts).await?;
        parts.listing().ok_or(AwsError::Suspicious(
            "a listing came back without users or hosts".to_owned(),
        ))
    }

    /// Lists the parts `parts` lacks (IAM, EC2, or both, at once) into it; a part that
    /// succeeds is kept even when the other fails, so a retry redoes only the failed one (at
    /// 5,000 users an IAM listing is minutes of paced calls).
    ///
    /// # Errors
    /// A part failed (the first failure when both did).
    async fn list_parts(&mut self, parts: &mut Parts) -> Result<(), AwsError> {
        let calls = parts.calls.clone();
        let settings = self.settings.clone();
        let mut iam = self.iam.take().ok_or(AwsError::Suspicious(
            "an IAM sweep is already running".to_owned(),
        ))?;
        let want_users = parts.users.is_none();
        let want_hosts = parts.hosts.is_none();
        let users = async {
            let started = Stamp::now();
            if want_users {
                Some(iam.fetch(&calls).await.map(|u| (u, started)))
            } else {
                None
            }
        };
        let ec2 = &self.ec2;
        let instances = async {
            let started = Stamp::now();
            if want_hosts {
                Some(ec2.fetch(&calls).await.map(|i| (i, started)))
            } else {
                None
            }
        };
        let (users, instances) = tokio::join!(users, instances);
        self.iam = Some(iam);
        let mut failure = None;
        match users {
            Some(Ok((listing, started))) => {
                let (identities, skipped) = self.identities(&listing.users);
                parts.skipped.extend(skipped);
                let (roles, skipped) = self.roles(&listing.roles);
                parts.skipped.extend(skipped);
                parts.users = Some(((identities, roles), started));
            }
            Some(Err(e)) => failure = Some(e),
            None => {}
        }
        match instances {
            Some(Ok((instances, started))) => {
                let (hosts, skipped) = build::hosts(&instances, &settings);
                warn_new(&mut self.warned[1], &skipped);
                parts.skipped.extend(skipped);
                parts.hosts = Some((hosts, started));
            }
            Some(Err(e)) => failure = failure.or(Some(e)),
            None => {}
        }
        failure.map_or(Ok(()), Err)
    }

    /// The running instances, as hosts, with what was skipped (newly skipped ones logged).
    async fn hosts(&mut self, calls: &Calls) -> Result<(Vec<Host>, Vec<Skipped>), AwsError> {
        let instances = self.ec2.fetch(calls).await?;
        let (hosts, skipped) = build::hosts(&instances, &self.settings);
        warn_new(&mut self.warned[1], &skipped);
        Ok((hosts, skipped))
    }

    /// The identities among `users` (newly skipped ones logged).
    fn identities(&mut self, users: &[UserRecord]) -> (Vec<Identity>, Vec<Skipped>) {
        let (identities, skipped) = build::identities(users, &self.settings);
        warn_new(&mut self.warned[0], &skipped);
        (identities, skipped)
    }

    /// The roles among `roles` that map by their groups tag (newly skipped ones logged).
    fn roles(&mut self, roles: &[RoleRecord]) -> (Vec<TaggedRole>, Vec<Skipped>) {
        let (roles, skipped) = build::tagged_roles(roles, &self.settings);
        warn_new(&mut self.warned[2], &skipped);
        (roles, skipped)
    }
}

/// What an IAM sweep gives: the identities and the tagged roles.
type IamPart = (Vec<Identity>, Vec<TaggedRole>);

/// The parts of a first listing got so far, and the calls of every try.
#[derive(Debug, Default)]
struct Parts {
    users: Option<(IamPart, Stamp)>,
    hosts: Option<(Vec<Host>, Stamp)>,
    skipped: Vec<Skipped>,
    calls: Calls,
}

impl Parts {
    /// The listing, once both parts are in: as old as its older part.
    fn listing(self) -> Option<Listing> {
        let (((identities, roles), a), (hosts, b)) = (self.users?, self.hosts?);
        let started = Stamp::earliest(a, b);
        Some(Listing {
            identities,
            hosts,
            roles,
            skipped: self.skipped,
            calls: self.calls,
            started: started.mono,
            started_at: started.wall,
            took: started.mono.elapsed(),
        })
    }
}

/// Logs each of `skipped` not in `warned`, then remembers exactly these.
fn warn_new(warned: &mut HashSet<String>, skipped: &[Skipped]) {
    let now: HashSet<String> = skipped.iter().map(ToString::to_string).collect();
    for note in skipped {
        if !warned.contains(&note.to_string()) {
            tracing::warn!(what = %note.what, why = %note.why, "AWS item skipped");
        }
    }
    *warned = now;
}

/// A moment on both clocks: the monotonic one for staleness, the wall clock for the saved
/// listing.
#[derive(Debug, Clone, Copy)]
struct Stamp {
    mono: Instant,
    wall: SystemTime,
}

impl Stamp {
    fn now() -> Stamp {
        Stamp {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// The same moment, `ago` earlier.
    fn before(self, ago: Duration) -> Stamp {
        Stamp {
            mono: self.mono.checked_sub(ago).unwrap_or(self.mono),
            wall: self.wall.checked_sub(ago).unwrap_or(self.wall),
        }
    }

    fn earliest(a: Stamp, b: Stamp) -> Stamp {
        if a.mono <= b.mono {
            a
        } else {
            b
        }
    }
}

/// The rule "an empty listing is trusted only when repeated", for one count (users, or hosts),
/// and what it remembers. Every sweep's or listing's outcome goes through
/// [`EmptyGuard::admit`], failures included.
#[derive(Debug)]
struct EmptyGuard {
    /// What is counted, for the message.
    what: &'static str,
    /// The count in the published snapshot.
    published: usize,
    /// Consecutive successful listings that came back empty where the published one was
    /// not, with no failed listing in between.
    streak: u32,
}

impl EmptyGuard {
    fn new(what: &'static str, published: usize) -> Self {
        EmptyGuard {
            what,
            published,
            streak: 0,
        }
    }

    /// `listed`, or why not. A listing of none where the published snapshot has some is held
    /// back until [`EMPTY_CONFIRMATIONS`] successful listings in a row agree. A failed listing
    /// breaks the row: a failure is not agreement.
    fn admit<T>(&mut self, outcome: Result<Vec<T>, AwsError>) -> Result<Vec<T>, AwsError> {
        let listed = match outcome {
            Ok(listed) => listed,
            Err(e) => {
                self.streak = 0;
                return Err(e);
            }
        };
        if listed.is_empty() && self.published > 0 {
            self.streak += 1;
            if self.streak < EMPTY_CONFIRMATIONS {
                return Err(AwsError::Suspicious(format!(
                    "AWS listed no {what} where the current snapshot has {}; not trusted until \
                     {EMPTY_CONFIRMATIONS} listings in a row agree ({} so far)",
                    self.published,
                    self.streak,
                    what = self.what,
                )));
            }
        }
        self.streak = 0;
        self.published = listed.len();
        Ok(listed)
    }
}

/// A running IAM sweep: the fetcher it owns, its calls, when it started, and its answer.
type SweepDone = (IamFetcher, Calls, Stamp, Result<IamListing, AwsError>);

/// Most users one batch of events may name before it is cheaper to sweep.
const MAX_USERS_PER_BATCH: usize = 64;

/// A [`Directory`] kept up to date from AWS: instances listed every `refresh_interval`, IAM
/// swept every `iam_sweep_interval`, and (with `aws.events_queue_url`) each user an IAM
/// change event names re-read at once.
pub struct AwsDirectory {
    source: AwsSource,
    /// Signs the listings this bastion saves and shares, and verifies those it restores.
    seal: Seal,
    directory: Arc<Directory>,
    /// Who may log in, by login name, as published.
    identities: BTreeMap<String, Identity>,
    /// Where they may go, as published.
    hosts: Vec<Host>,
    /// The IAM roles that carry the groups tag, as published.
    roles: Vec<TaggedRole>,
    /// When the roles were last re-read for a role change event: a sweep that started
    /// before then may have read them before the change, so it keeps these.
    roles_reread: Option<Instant>,
    /// IAM is known as of this moment: the start of the last good sweep, moved on by each
    /// receive of a complete run of events.
    iam_at: Stamp,
    /// Start of the last good sweep.
    swept_at: Instant,
    /// The event stream is complete and applied since this moment (its run's start, or the
    /// last re-read that failed): it moves `iam_at` on only when this is before `swept_at`.
    events_ok_since: Option<Instant>,
    /// Start of the last good instance listing.
    ec2_at: Stamp,
    users_guard: EmptyGuard,
    hosts_guard: EmptyGuard,
    /// Users re-read for an event, by IAM name: (the receive that brought the event, what the
    /// re-read found). A sweep that started before that receive may have read them before the
    /// change, so these override it.
    patches: HashMap<String, (Instant, Option<Identity>)>,
    /// Whether the "stale" line was logged for the current outage.
    stale: bool,
    /// Wakes the loop for an immediate refresh (SIGHUP).
    wakeup: Arc<Notify>,
    /// The published snapshot came from the saved listing: refresh at once.
    restored: bool,
    /// What the event queue reader sends, when events are configured.
    events: Option<mpsc::Receiver<Report>>,
    /// Calls of event handling (receives, re-reads), logged with each applied batch.
    event_calls: Calls,
    /// The start of the current run of receives, and how many runs there were.
    events_run: Option<Instant>,
    events_run_count: u64,
    /// When the event reader last reported a receive.
    last_received: Option<Instant>,
    /// When the last sweep (running, or done) started.
    sweep_started: Instant,
    /// When the listing was last given to the fleet, the write under way, and whether the
    /// last write failed (so that only the first failure of a run is a warning).
    last_shared: Option<Instant>,
    sharing: Option<JoinHandle<()>>,
    share_failed: Arc<std::sync::atomic::AtomicBool>,
}

impl AwsDirectory {
    /// Starts reading the event queue (when configured, so no event during the first listing
    /// is missed), makes the first listing, retrying with backoff (each failure logged) for up
    /// to `max_staleness`, and returns a directory holding it.
    ///
    /// # Errors
    /// The last failure, when no listing succeeded within `max_staleness`.
    /// The saved and shared listings are signed with `seal` (the host key), and only a listing
    /// it verifies is restored.
    pub async fn start(mut source: AwsSource, seal: Seal) -> Result<AwsDirectory, AwsError> {
        let settings = source.settings().clone();
        let event_calls = Calls::default();
        let events = source.queue.clone().map(|(client, url)| {
            let (tx, rx) = mpsc::channel(16);
            let started = Instant::now();
            tokio::spawn(events::read_queue(
                client,
                url,
                event_calls.clone(),
                started,
                tx,
            ));
            (rx, started)
        });
        let local = restore(&settings, &seal);
        let shared = restore_shared(&source, &seal).await;
        // The younger of the two.
        let restored = match (local, shared) {
            (Some(a), Some(b)) => Some(if a.age <= b.age { a } else { b }),
            (a, b) => a.or(b),
        };
        if let Some(restored) = restored {
            let at = Stamp {
                mono: restored.started,
                wall: SystemTime::now()
                    .checked_sub(restored.age)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            };
            return Ok(AwsDirectory::holding(
                (source, seal),
                (restored.identities, restored.hosts, restored.roles),
                at,
                true,
                (events, event_calls),
            ));
        }
        let give_up = Instant::now() + settings.max_staleness;
        let mut failures = 0;
        let mut parts = Parts::default();
        loop {
            let outcome = match source.list_parts(&mut parts).await {
                Ok(()) => std::mem::take(&mut parts)
                    .listing()
                    .ok_or(AwsError::Suspicious(
                        "a listing came back without users or hosts".to_owned(),
                    )),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(listing) => {
                    log_listing(&listing, true);
                    let at = Stamp {
                        mono: listing.started,
                        wall: listing.started_at,
                    };
                    let mut directory = AwsDirectory::holding(
                        (source, seal),
                        (listing.identities, listing.hosts, listing.roles),
                        at,
                        false,
                        (events, event_calls),
                    );
                    directory.save().await;
                    directory.share(true);
                    return Ok(directory);
                }
                Err(e) => {
                    failures += 1;
                    let delay = retry_delay(&settings, failures, e.is_throttling());
                    if Instant::now() + delay >= give_up {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, attempt = failures, retry_in = ?delay,
                        users_listed = parts.users.is_some(), hosts_listed = parts.hosts.is_some(),
                        "first AWS listing failed; not serving until one succeeds");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// A directory publishing `identities`, `hosts` and `roles` listed at `at` (`restored`
    /// when they came from the saved listing).
    fn holding(
        (source, seal): (AwsSource, Seal),
        (identities, hosts, roles): (Vec<Identity>, Vec<Host>, Vec<TaggedRole>),
        at: Stamp,
        restored: bool,
        (events, event_calls): (Option<(mpsc::Receiver<Report>, Instant)>, Calls),
    ) -> AwsDirectory {
        let max_staleness = source.settings().max_staleness;
        let snapshot = listed_snapshot(
            (identities.clone(), hosts.clone(), roles.clone()),
            at.mono,
            max_staleness,
        );
        AwsDirectory {
            users_guard: EmptyGuard::new("users", identities.len()),
            hosts_guard: EmptyGuard::new("hosts", hosts.len()),
            identities: identities
                .into_iter()
                .map(|i| (i.name.clone(), i))
                .collect(),
            hosts,
            roles,
            roles_reread: None,
            iam_at: at,
            swept_at: at.mono,
            ec2_at: at,
            patches: HashMap::new(),
            directory: Arc::new(Directory::new(snapshot)),
            source,
            seal,
            stale: false,
            wakeup: Arc::new(Notify::new()),
            restored,
            // The reader counts as receiving, and the events as complete, from its start
            // until it reports otherwise.
            last_received: events.as_ref().map(|(_, started)| *started),
            events_ok_since: events.as_ref().map(|(_, started)| *started),
            events: events.map(|(rx, _)| rx),
            event_calls,
            events_run: None,
            events_run_count: 0,
            sweep_started: at.mono,
            last_shared: None,
            sharing: None,
            share_failed: Arc::default(),
        }
    }

    /// The directory this source publishes to.
    pub fn directory(&self) -> Arc<Directory> {
        self.directory.clone()
    }

    /// A handle that makes the running loop refresh at once (`notify_one`).
    pub fn wakeup(&self) -> Arc<Notify> {
        self.wakeup.clone()
    }

    /// The published data is as old as its older part.
    fn listed(&self) -> Stamp {
        Stamp::earliest(self.iam_at, self.ec2_at)
    }

    /// Publishes what is held (admitting logins until `max_staleness` after its older part
    /// was listed) and saves it; shares it with the fleet after a sweep (`swept`), and
    /// otherwise at most once a [`SHARE_EVERY`].
    async fn publish(&mut self, swept: bool) {
        let max_staleness = self.source.settings().max_staleness;
        self.directory.publish(listed_snapshot(
            (
                self.identities.values().cloned().collect(),
                self.hosts.clone(),
                self.roles.clone(),
            ),
            self.listed().mono,
            max_staleness,
        ));
        self.save().await;
        self.share(swept);
        if self.stale && Instant::now() < self.listed().mono + max_staleness {
            self.stale = false;
            tracing::info!("AWS directory is fresh again: new logins are admitted");
        }
    }

    /// Writes what is held to the fleet's shared listing, in a task of its own, if it is
    /// configured, due (`now`, or a [`SHARE_EVERY`] after the last) and no write is under way.
    fn share(&mut self, now: bool) {
        let Some(shared) = self.source.shared.clone() else {
            return;
        };
        let due = now || self.last_shared.is_none_or(|t| t.elapsed() >= SHARE_EVERY);
        if !due || self.sharing.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        self.last_shared = Some(Instant::now());
        let bytes = match persist::encode(
            &self.source.settings,
            self.listed().wall,
            (
                &self.identities.values().cloned().collect::<Vec<_>>(),
                &self.hosts,
                &self.roles,
            ),
            &self.seal,
        ) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!("cannot share the listing with the fleet: {e}");
                return;
            }
        };
        let calls = self.event_calls.clone();
        let first_failure = self.share_failed.clone();
        self.sharing = Some(tokio::spawn(async move {
            match shared.put(bytes, &calls).await {
                Ok(()) => {
                    if first_failure.swap(false, std::sync::atomic::Ordering::Relaxed) {
                        tracing::info!(object = %shared.object(), "sharing the listing again");
                    }
                }
                Err(e) => {
                    if !first_failure.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::warn!(object = %shared.object(), error = %e,
                            "cannot share the listing with the fleet; a new replica will \
                             list AWS before serving");
                    }
                }
            }
        }));
    }

    /// Keeps what is held in `aws.snapshot_file`, if set; a failure is logged, never fatal.
    async fn save(&self) {
        save(
            &self.source.settings,
            self.listed().wall,
            (
                self.identities.values().cloned().collect(),
                self.hosts.clone(),
                self.roles.clone(),
            ),
            &self.seal,
        )
        .await;
    }

    /// Lists the instances and publishes them unless held back.
    ///
    /// # Errors
    /// The listing failed, or it was held back as suspicious; nothing was published.
    async fn refresh_hosts(&mut self) -> Result<(), AwsError> {
        let started = Stamp::now();
        let calls = Calls::default();
        let listed = self.source.hosts(&calls).await.map(|(hosts, _)| hosts);
        let hosts = self.hosts_guard.admit(listed)?;
        let changed = hosts != self.hosts;
        self.hosts = hosts;
        self.ec2_at = started;
        self.publish(false).await;
        log_part(Part::Hosts(self.hosts.len()), &calls, started, changed);
        Ok(())
    }

    /// Starts a sweep of IAM in its own task, unless one is running.
    fn start_sweep(&mut self, sweep: &mut Option<JoinHandle<SweepDone>>) {
        if sweep.is_some() {
            return;
        }
        let Some(mut iam) = self.source.iam.take() else {
            return;
        };
        self.sweep_started = Instant::now();
        *sweep = Some(tokio::spawn(async move {
            let (calls, started) = (Calls::default(), Stamp::now());
            let users = iam.fetch(&calls).await;
            (iam, calls, started, users)
        }));
    }

    /// Publishes a finished sweep unless held back; the users re-read for events since it
    /// started keep what their re-read found.
    ///
    /// # Errors
    /// The sweep failed, or it was held back as suspicious; nothing was published.
    async fn finish_sweep(&mut self, done: SweepDone) -> Result<(), AwsError> {
        let (iam, calls, started, listing) = done;
        self.source.iam = Some(iam);
        let listing = listing?;
        let (identities, _) = self.source.identities(&listing.users);
        let (roles, _) = self.source.roles(&listing.roles);
        let identities = self.users_guard.admit(Ok(identities))?;
        let mut identities: BTreeMap<String, Identity> = identities
            .into_iter()
            .map(|i| (i.name.clone(), i))
            .collect();
        self.patches.retain(|_, (at, _)| *at >= started.mono);
        for (iam_name, (_, patch)) in &self.patches {
            apply_patch(&mut identities, iam_name, patch.clone());
        }
        // Roles re-read for an event since the sweep started are newer than its own.
        let roles_newer = self.roles_reread.is_some_and(|at| at >= started.mono);
        let roles = if roles_newer {
            self.roles.clone()
        } else {
            roles
        };
        let changed = identities != self.identities || roles != self.roles;
        self.identities = identities;
        self.roles = roles;
        self.swept_at = started.mono;
        if started.mono > self.iam_at.mono {
            self.iam_at = started;
        }
        self.publish(true).await;
        log_part(Part::Users(self.identities.len()), &calls, started, changed);
        Ok(())
    }

    /// Applies one receive of the event queue: re-reads the users its events name and
    /// publishes the result. Returns true when a sweep is needed (an event naming anyone, too
    /// many users, or a re-read that failed).
    async fn apply_events(&mut self, received: Received) -> bool {
        let mut users = BTreeSet::new();
        let (mut everyone, mut roles) = (false, false);
        for change in received.changes {
            match change {
                Change::Users(names) => users.extend(names),
                Change::Roles => roles = true,
                Change::Everyone => everyone = true,
            }
        }
        if users.len() > MAX_USERS_PER_BATCH {
            everyone = true;
        }
        let mut failed = false;
        if !everyone && roles && self.source.reader.reads_roles() {
            failed = !self.reread_roles(received.at).await;
        }
        if !everyone && !failed && !users.is_empty() {
            let started = Instant::now();
            let mut changed = Vec::new();
            for name in &users {
                match self.source.reader.read(name, &self.event_calls).await {
                    Ok(record) => {
                        let (found, _) = self.source.identities(&Vec::from_iter(record));
                        let patch = found.into_iter().next();
                        let before: Vec<&Identity> = self
                            .identities
                            .values()
                            .filter(|i| names_user(i, name))
                            .collect();
                        if before != Vec::from_iter(patch.as_ref()) {
                            changed.push(name.as_str());
                        }
                        apply_patch(&mut self.identities, name, patch.clone());
                        // One patch per user, however the events spelled the name.
                        self.patches
                            .insert(name.to_ascii_lowercase(), (received.at, patch));
                    }
                    Err(e) => {
                        tracing::warn!(user = %name, error = %e,
                            "cannot re-read a user an IAM change event names; sweeping IAM");
                        failed = true;
                        break;
                    }
                }
            }
            tracing::info!(users = ?users, changed = ?changed, took = ?started.elapsed(),
                calls = %self.event_calls, "IAM change events applied");
            if !changed.is_empty() {
                self.publish(false).await;
            }
        }
        // A new run of receives after a gap may have missed events: sweep, once per run.
        let new_run = self.events_run != Some(received.since);
        self.events_run = Some(received.since);
        let missed = new_run && received.since > self.sweep_started;
        if missed && self.events_run_count > 0 {
            tracing::warn!(
                "the IAM event queue was not read for more than {:?}: events may have expired \
                 unseen; sweeping IAM",
                events::GAP
            );
        }
        self.events_run_count += u64::from(new_run);
        // The events are complete and applied since the run's start; a change not applied
        // (a re-read failed, or one that needs a sweep) counts only from now, so `iam_at`
        // waits for a sweep that starts after it.
        let since = if failed || everyone {
            Instant::now()
        } else {
            received.since
        };
        self.events_ok_since = Some(self.events_ok_since.map_or(since, |s| s.max(since)));
        if !failed && !everyone && self.events_ok_since.is_some_and(|s| s <= self.swept_at) {
            let at = Stamp::now().before(received.at.elapsed());
            if at.mono > self.iam_at.mono {
                self.iam_at = at;
            }
        }
        everyone || failed || missed
    }

    /// Re-reads the roles that carry the groups tag (for a role change event received at
    /// `at`) and publishes them if they changed. False when the re-read failed (a sweep is
    /// then needed).
    async fn reread_roles(&mut self, at: Instant) -> bool {
        let started = Instant::now();
        match self.source.reader.roles(&self.event_calls).await {
            Ok(records) => {
                let (roles, _) = self.source.roles(&records);
                let changed = roles != self.roles;
                self.roles = roles;
                self.roles_reread = Some(at);
                tracing::info!(roles = self.roles.len(), changed, took = ?started.elapsed(),
                    calls = %self.event_calls, "IAM role change events applied");
                if changed {
                    self.publish(false).await;
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e,
                    "cannot re-read the roles an IAM change event concerns; sweeping IAM");
                false
            }
        }
    }

    /// The time from one sweep to the next: `iam_sweep_interval`, but with events configured
    /// and not healthy (no receive for longer than a long poll and [`events::GAP`], or a run
    /// of receives that may have missed events and no sweep since) no longer than
    /// `refresh_interval`: IAM is then polled as if there were no events.
    fn sweep_interval(&self) -> Duration {
        let settings = self.source.settings();
        if settings.events_queue_url.is_none() {
            return settings.iam_sweep_interval;
        }
        let receiving = self
            .last_received
            .is_some_and(|t| t.elapsed() < events::GAP + events::WAIT);
        let complete = self.events_ok_since.is_some_and(|s| s <= self.swept_at);
        if receiving && complete {
            settings.iam_sweep_interval
        } else {
            settings.iam_sweep_interval.min(settings.refresh_interval)
        }
    }

    /// Refreshes forever: instances every `refresh_interval`, IAM every `iam_sweep_interval`
    /// (in its own task, so events are applied while it runs), sooner then backing off after a
    /// failure; events as they come. Logs when the snapshot goes stale and when it recovers.
    pub async fn run(mut self) {
        let settings = self.source.settings().clone();
        let (mut host_failures, mut sweep_failures) = (0u32, 0u32);
        // A restored snapshot is refreshed at once: it is as old as the saved listing.
        let now = Instant::now();
        let mut next_hosts = if self.restored {
            now
        } else {
            now + settings.refresh_interval
        };
        // When the next sweep is due: `sweep_done` + the interval of the moment (see
        // `sweep_interval`), unless a failure's backoff or a change needing one set a time.
        let mut sweep_done = now;
        let mut sweep_set: Option<Instant> = self.restored.then_some(now);
        let mut sweep: Option<JoinHandle<SweepDone>> = None;
        // A sweep that was running when a change needing one came in is repeated at once.
        let mut sweep_again = false;
        let wakeup = self.wakeup.clone();
        let mut events = self.events.take();
        loop {
            let stale_at = self.listed().mono + settings.max_staleness;
            let next_sweep = sweep_set.unwrap_or(sweep_done + self.sweep_interval());
            tokio::select! {
                () = tokio::time::sleep_until(next_hosts.into()) => {
                    match self.refresh_hosts().await {
                        Ok(()) => {
                            host_failures = 0;
                            next_hosts = Instant::now() + settings.refresh_interval;
                        }
                        Err(e) => {
                            host_failures += 1;
                            next_hosts = Instant::now() + failed("instance listing", &settings,
                                host_failures, &e);
                        }
                    }
                }
                () = tokio::time::sleep_until(next_sweep.into()), if sweep.is_none() => {
                    self.start_sweep(&mut sweep);
                }
                done = async { sweep.as_mut().expect("guarded").await }, if sweep.is_some() => {
                    sweep = None;
                    let outcome = match done {
                        Ok(done) => self.finish_sweep(done).await,
                        Err(e) => {
                            // The task panicked: its fetcher is lost; make a new source.
                            tracing::error!(error = %e, "IAM sweep task failed");
                            self.source.iam = Some(self.source.reader.fetcher());
                            Err(AwsError::Suspicious("the IAM sweep task failed".to_owned()))
                        }
                    };
                    sweep_done = Instant::now();
                    match outcome {
                        Ok(()) => {
                            sweep_failures = 0;
                            sweep_set = None;
                        }
                        Err(e) => {
                            sweep_failures += 1;
                            let delay = failed("IAM sweep", &settings, sweep_failures, &e);
                            sweep_set = Some(sweep_done + delay);
                        }
                    }
                    if std::mem::take(&mut sweep_again) && sweep_failures == 0 {
                        sweep_set = Some(sweep_done);
                    }
                }
                received = async { events.as_mut().expect("guarded").recv().await },
                    if events.is_some() =>
                {
                    match received {
                        Some(Report::Failed) => self.last_received = None,
                        Some(Report::Received(received)) => {
                            self.last_received = Some(Instant::now());
                            // (After a failed sweep its backoff stands: events do not hurry it.)
                            if self.apply_events(received).await {
                                if sweep.is_some() {
                                    sweep_again = true;
                                } else if sweep_failures == 0 {
                                    sweep_set = Some(Instant::now());
                                }
                            }
                        }
                        None => {
                            tracing::error!("the IAM event reader stopped; IAM is swept every \
                                refresh_interval");
                            events = None;
                            self.last_received = None;
                        }
                    }
                }
                () = wakeup.notified() => {
                    tracing::info!("AWS refresh requested");
                    next_hosts = Instant::now();
                    if sweep.is_some() {
                        sweep_again = true;
                    } else {
                        sweep_set = Some(Instant::now());
                    }
                }
                () = tokio::time::sleep_until(stale_at.into()), if !self.stale => {
                    self.stale = true;
                    tracing::error!(
                        last_good_secs_ago = self.listed().mono.elapsed().as_secs(),
                        max_staleness = ?settings.max_staleness,
                        "AWS directory is stale: no successful listing within max_staleness; \
                         refusing new logins until AWS answers again"
                    );
                }
            }
        }
    }
}

/// Logs a failed part of the refresh; returns the wait before the next try.
fn failed(what: &str, settings: &AwsConfig, failures: u32, e: &AwsError) -> Duration {
    let delay = retry_delay(settings, failures, e.is_throttling());
    tracing::warn!(
        error = %e,
        failures,
        throttled = e.is_throttling(),
        retry_in = ?delay,
        part = what,
        "AWS refresh failed; keeping the last snapshot"
    );
    delay
}

/// Whether `identity` is IAM user `iam_name`, spelled in any case (IAM user names are
/// case-insensitive: an event may spell a name otherwise than IAM lists it).
fn names_user(identity: &Identity, iam_name: &str) -> bool {
    crate::names::iam_name(&identity.name).is_some_and(|n| n.eq_ignore_ascii_case(iam_name))
}

/// Puts what a re-read of IAM user `iam_name` (as an event spelled it) found in `identities`:
/// its identity (named by IAM's spelling, as a sweep names it), or none. Whatever identity
/// the user had, in any spelling, is replaced.
fn apply_patch(
    identities: &mut BTreeMap<String, Identity>,
    iam_name: &str,
    patch: Option<Identity>,
) {
    identities.retain(|_, identity| !names_user(identity, iam_name));
    if let Some(identity) = patch {
        identities.insert(identity.name.clone(), identity);
    }
}

/// The fleet's shared listing (`aws.shared_snapshot`), when there is one that may be used
/// (each reason not to is logged).
async fn restore_shared(source: &AwsSource, seal: &Seal) -> Option<persist::Restored> {
    let shared = source.shared.as_ref()?;
    let calls = Calls::default();
    let bytes = match shared.get(&calls).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(object = %shared.object(), error = %e,
                "not starting from the fleet's shared listing (none yet, or unreadable); \
                 listing AWS before serving unless the saved one may be used");
            return None;
        }
    };
    match persist::decode(&bytes, &source.settings, seal) {
        Ok(restored) => {
            tracing::info!(
                object = %shared.object(),
                users = restored.identities.len(),
                hosts = restored.hosts.len(),
                listed_secs_ago = restored.age.as_secs(),
                "the fleet's shared listing may be served until a refresh replaces it (it \
                 admits logins until max_staleness after it was listed)"
            );
            Some(restored)
        }
        Err(why) => {
            tracing::warn!(object = %shared.object(),
                "not using the fleet's shared listing: {why}");
            None
        }
    }
}

/// The saved listing of `aws.snapshot_file`, when there is one that may be used (each reason
/// not to is logged).
fn restore(settings: &AwsConfig, seal: &Seal) -> Option<persist::Restored> {
    let path = settings.snapshot_file.as_ref()?;
    match persist::load(path, settings, seal) {
        Ok(Some(restored)) => {
            tracing::info!(
                file = %path.display(),
                users = restored.identities.len(),
                hosts = restored.hosts.len(),
                listed_secs_ago = restored.age.as_secs(),
                "serving the saved AWS listing until a refresh replaces it (it admits logins \
                 until max_staleness after it was listed)"
            );
            Some(restored)
        }
        Ok(None) => None,
        Err(why) => {
            tracing::warn!(file = %path.display(),
                "not using the saved AWS listing: {why}; listing AWS before serving");
            None
        }
    }
}

/// Keeps `identities`, `hosts` and `roles`, listed at `listed_at`, in `aws.snapshot_file`, if set; a
/// failure is logged, never fatal.
async fn save(
    settings: &AwsConfig,
    listed_at: SystemTime,
    (identities, hosts, roles): (Vec<Identity>, Vec<Host>, Vec<TaggedRole>),
    seal: &Seal,
) {
    let Some(path) = settings.snapshot_file.clone() else {
        return;
    };
    let settings = settings.clone();
    let seal = seal.clone();
    let written = tokio::task::spawn_blocking(move || {
        persist::save(
            &path,
            &settings,
            listed_at,
            (&identities, &hosts, &roles),
            &seal,
        )
        .map_err(|e| format!("{}: {e}", path.display()))
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("cannot save the AWS listing to {e}"),
        Err(e) => tracing::warn!("cannot save the AWS listing: {e}"),
    }
}

/// The part of the directory a listing refreshed.
#[derive(Debug, Clone, Copy)]
enum Part {
    /// An IAM sweep, with the identities it gave.
    Users(usize),
    /// An instance listing, with the hosts it gave.
    Hosts(usize),
}

/// Logs a successful listing of one part (at info when it changed something).
fn log_part(part: Part, calls: &Calls, started: Stamp, changed: bool) {
    let took = started.mono.elapsed();
    match (part, changed) {
        (Part::Users(users), true) => {
            tracing::info!(users, calls = %calls, took = ?took, "AWS directory refreshed");
        }
        (Part::Users(users), false) => {
            tracing::debug!(users, calls = %calls, took = ?took, "AWS directory refreshed");
        }
        (Part::Hosts(hosts), true) => {
            tracing::info!(hosts, calls = %calls, took = ?took, "AWS directory refreshed");
        }
        (Part::Hosts(hosts), false) => {
            tracing::debug!(hosts, calls = %calls, took = ?took, "AWS directory refreshed");
        }
    }
}

fn log_listing(listing: &Listing, changed: bool) {
    let skipped = listing.skipped.len();
    if changed {
        tracing::info!(
            users = listing.identities.len(),
            hosts = listing.hosts.len(),
            skipped,
            calls = %listing.calls,
            took = ?listing.took,
            "AWS directory refreshed"
        );
    } else {
        tracing::debug!(
            users = listing.identities.len(),
            hosts = listing.hosts.len(),
            skipped,
            calls = %listing.calls,
            took = ?listing.took,
            "AWS directory refreshed"
        );
    }
}

/// The wait before the next try after `failures` failures in a row: a quarter of the refresh
/// interval, doubling each time, up to four intervals (eight when throttled) but never more
/// than a third of `max_staleness`, so an outage shorter than that is always noticed as over
/// before the snapshot goes stale. Half of it is random, so replicas spread out.
pub fn retry_delay(settings: &AwsConfig, failures: u32, throttled: bool) -> Duration {
    let interval = settings.refresh_interval;
    let base = (interval / 4).max(Duration::from_millis(250));
    let cap_factor = if throttled { 8 } else { 4 };
    let cap = (interval * cap_factor)
        .min(settings.max_staleness / 3)
        .max(base);
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let delay = exp.min(cap);
    let half = delay / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// One listing, as a snapshot, for one-shot commands (`gatehouse hosts`, `ssh-config`).
///
/// # Errors
/// The listing failed.
pub async fn snapshot_once(clients: &Clients, settings: &AwsConfig) -> Result<Snapshot, AwsError> {
    let mut source = AwsSource::new(clients, settings);
    let listing = source.list().await?;
    Ok(listing.snapshot(settings.max_staleness))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(interval: u64, staleness: u64) -> AwsConfig {
        let text = format!(
            "[server]\nlisten = [\"0.0.0.0:22\"]\n[aws]\nrefresh_interval = \"{interval}s\"\n\
             max_staleness = \"{staleness}s\"\nvpc_ids = [\"vpc-1\"]\n"
        );
        gatehouse_config::parse(&text, std::path::Path::new("t.toml"))
            .unwrap()
            .aws
            .unwrap()
    }

    fn listed(n: usize) -> Result<Vec<u32>, AwsError> {
        Ok((0..n as u32).collect())
    }

    fn failure() -> Result<Vec<u32>, AwsError> {
        Err(AwsError::Call {
            service: "iam",
            operation: "GetAccountAuthorizationDetails",
            action: None,
            code: None,
            message: "dispatch failure".to_owned(),
        })
    }

    #[test]
    fn an_empty_listing_is_published_only_when_three_in_a_row_agree() {
        let mut guard = EmptyGuard::new("users", 2);
        assert!(guard.admit(listed(0)).is_err());
        assert!(guard.admit(listed(0)).is_err());
        let third = guard
            .admit(listed(0))
            .expect("the third in a row is trusted");
        assert!(third.is_empty());
        assert_eq!(guard.published, 0);
        // Nothing to lose any more: an empty listing now is just the truth.
        assert!(guard.admit(listed(0)).is_ok());
        // A non-empty listing in between breaks the row.
        let mut guard = EmptyGuard::new("hosts", 1);
        assert!(guard.admit(listed(0)).is_err());
        assert!(guard.admit(listed(1)).is_ok());
        assert!(guard.admit(listed(0)).is_err());
        assert!(guard.admit(listed(0)).is_err());
        assert!(guard.admit(listed(0)).is_ok());
    }

    #[test]
    fn a_failed_listing_between_empty_ones_resets_the_count() {
        // A failure is not agreement: empty, empty, failure, empty is one empty listing in a
        // row, not three.
        let mut guard = EmptyGuard::new("users", 2);
        assert!(guard.admit(listed(0)).is_err());
        assert!(guard.admit(listed(0)).is_err());
        assert!(matches!(guard.admit(failure()), Err(AwsError::Call { .. })));
        match guard.admit(listed(0)) {
            Err(AwsError::Suspicious(why)) => {
                assert!(why.contains("no users"), "{why}");
                assert!(why.ends_with("(1 so far)"), "{why}");
            }
            other => panic!("an empty listing after a failure was not held back: {other:?}"),
        }
        assert!(guard.admit(listed(0)).is_err());
        assert!(guard.admit(listed(0)).is_ok());
        assert_eq!(guard.published, 0);
    }

    #[test]
    fn a_first_listing_keeps_the_part_that_succeeded_and_is_as_old_as_the_older_part() {
        let early = Stamp::now();
        std::thread::sleep(Duration::from_millis(5));
        let late = Stamp::now();
        let parts = Parts {
            hosts: Some((Vec::new(), early)),
            ..Parts::default()
        };
        assert!(parts.listing().is_none(), "no listing without users");
        let parts = Parts {
            users: Some(((Vec::new(), Vec::new()), late)),
            hosts: Some((Vec::new(), early)),
            ..Parts::default()
        };
        let listing = parts.listing().expect("both parts");
        assert_eq!(listing.started, early.mono);
        assert_eq!(listing.started_at, early.wall);
    }

    #[test]
    fn retry_delay_grows_is_capped_and_jittered() {
        let s = settings(30, 900);
        for _ in 0..50 {
            let first = retry_delay(&s, 1, false);
            assert!(first >= Duration::from_millis(3750) && first <= Duration::from_millis(7500));
            let late = retry_delay(&s, 30, false);
            assert!(
                late >= Duration::from_secs(60) && late <= Duration::from_secs(120),
                "{late:?}"
            );
            let throttled = retry_delay(&s, 30, true);
            assert!(throttled <= Duration::from_secs(240) && throttled >= Duration::from_secs(120));
        }
    }

    #[test]
    fn retry_delay_never_exceeds_a_third_of_max_staleness() {
        let s = settings(1, 5);
        for failures in 1..40 {
            let d = retry_delay(&s, failures, true);
            assert!(d <= Duration::from_secs(5) / 3, "{failures}: {d:?}");
            assert!(d >= Duration::from_millis(125));
        }
    }

    /// IAM user names are case-insensitive, and an event carries the name as its caller typed
    /// it: a re-read for `ALICE` replaces alice (named as IAM lists her), and a deletion
    /// spelled `ALICE` removes her; no second identity is ever made.
    #[test]
    fn a_patch_replaces_the_user_in_any_spelling_of_the_name() {
        let key = gatehouse_config::parse_public_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMzQnTZ1QB2clN1RVs8twk5/t+5CEwiIXdcNoxcQmsgc k",
        )
        .expect("key");
        let identity = |name: &str, group: &str| {
            Identity::new(
                name.to_owned(),
                [group.to_owned()].into(),
                vec![key.clone()],
            )
        };
        let mut identities: BTreeMap<String, Identity> = [
            ("alice".to_owned(), identity("alice", "research")),
            ("bob".to_owned(), identity("bob", "ops")),
        ]
        .into();
        apply_patch(&mut identities, "ALICE", Some(identity("alice", "ops")));
        assert_eq!(identities.len(), 2);
        assert_eq!(identities["alice"].groups, ["ops".to_owned()].into());
        apply_patch(&mut identities, "Alice", None);
        assert_eq!(identities.keys().collect::<Vec<_>>(), ["bob"]);
        // Escaped login names compare by the IAM name they stand for.
        identities.insert("j~40x.org".into(), identity("j~40x.org", "ops"));
        apply_patch(&mut identities, "J@X.ORG", None);
        assert_eq!(identities.keys().collect::<Vec<_>>(), ["bob"]);
    }
}
