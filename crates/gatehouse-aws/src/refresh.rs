//! The refresh: one complete listing of IAM and EC2, turned into a snapshot and published,
//! and the background loop that repeats it.
//!
//! Rules, in the order they apply:
//! - A listing is complete or it is an error: any failed call fails the whole refresh, and a
//!   failed refresh publishes nothing. The last snapshot stays, and its `fresh_until` (time of
//!   the listing + `max_staleness`) makes new logins fail closed once it is too old.
//! - An empty answer is not trusted on its word: a successful listing with no users (or no
//!   hosts) where the published snapshot had some is held back until
//!   [`EMPTY_CONFIRMATIONS`] listings in a row agree, with no failed listing in between (a
//!   failure is not agreement, so it starts the count again). One glitch (a wrong path prefix
//!   answer, a half-deployed IAM change) never mass-revokes.
//! - After a failure the next try comes sooner than `refresh_interval` and then backs off
//!   exponentially, with jitter, longer still when AWS says it is throttling us.
//! - When the snapshot goes stale, and when it is fresh again, one log line says so.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use gatehouse_config::AwsConfig;
use gatehouse_directory::{Directory, Identity, Snapshot};
use gatehouse_policy::{Host, Inventory};
use rand::RngExt as _;

use crate::build::{self, Skipped};
use crate::calls::Calls;
use crate::ec2::Ec2Fetcher;
use crate::error::AwsError;
use crate::iam::IamFetcher;
use crate::persist;
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
            self.identities.clone(),
            self.hosts.clone(),
            self.started,
            max_staleness,
        )
    }
}

/// A snapshot of AWS data read at `started` (now, or restored from disk): as old as that
/// read, and admitting logins until `max_staleness` after it.
fn listed_snapshot(
    identities: Vec<Identity>,
    hosts: Vec<Host>,
    started: Instant,
    max_staleness: Duration,
) -> Snapshot {
    Snapshot::new(identities, Inventory::new(hosts))
        .listed_at(started)
        .fresh_until(started + max_staleness)
}

/// Lists IAM and EC2; remembers key bodies between listings.
#[derive(Debug)]
pub struct AwsSource {
    settings: AwsConfig,
    iam: IamFetcher,
    ec2: Ec2Fetcher,
    /// Skips already warned about, so each is logged once while it lasts.
    warned: HashSet<String>,
}

impl AwsSource {
    /// A source over `clients` configured by `settings`.
    pub fn new(clients: &Clients, settings: &AwsConfig) -> Self {
        AwsSource {
            settings: settings.clone(),
            iam: IamFetcher::new(
                clients.iam.clone(),
                settings.iam_path_prefix.clone(),
                settings.iam_group_prefix.clone(),
                settings.groups_tag(),
                settings.iam_calls_per_second,
            ),
            ec2: Ec2Fetcher::new(
                clients.ec2.clone(),
                settings.vpc_ids.clone(),
                settings.groups_tag(),
            ),
            warned: HashSet::new(),
        }
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
        let started = Instant::now();
        let started_at = SystemTime::now();
        let calls = Calls::default();
        let (users, instances) = tokio::join!(self.iam.fetch(&calls), self.ec2.fetch(&calls));
        let (users, instances) = (users?, instances?);
        let (identities, mut skipped) = build::identities(&users, &self.settings);
        let (hosts, host_skips) = build::hosts(&instances, &self.settings);
        skipped.extend(host_skips);
        let now: HashSet<String> = skipped.iter().map(ToString::to_string).collect();
        for note in &skipped {
            let text = note.to_string();
            if !self.warned.contains(&text) {
                tracing::warn!(what = %note.what, why = %note.why, "AWS item skipped");
            }
        }
        self.warned = now;
        Ok(Listing {
            identities,
            hosts,
            skipped,
            calls,
            started,
            started_at,
            took: started.elapsed(),
        })
    }
}

/// The rule "an empty listing is trusted only when repeated", and what it remembers. Every
/// refresh's outcome goes through [`EmptyGuard::admit`], failures included.
#[derive(Debug)]
struct EmptyGuard {
    /// Users and hosts in the published snapshot.
    published: (usize, usize),
    /// Consecutive successful listings that came back empty where the published one was
    /// not, with no failed listing in between.
    streak: u32,
}

impl EmptyGuard {
    fn new(published: (usize, usize)) -> Self {
        EmptyGuard {
            published,
            streak: 0,
        }
    }

    /// The listing to publish, or why not. A listing with no users (or no hosts) where the
    /// published snapshot has some is held back until [`EMPTY_CONFIRMATIONS`] successful
    /// listings in a row agree. A failed listing breaks the row: a failure is not agreement.
    fn admit(&mut self, outcome: Result<Listing, AwsError>) -> Result<Listing, AwsError> {
        let listing = match outcome {
            Ok(listing) => listing,
            Err(e) => {
                self.streak = 0;
                return Err(e);
            }
        };
        let counts = (listing.identities.len(), listing.hosts.len());
        let lost_all_users = counts.0 == 0 && self.published.0 > 0;
        let lost_all_hosts = counts.1 == 0 && self.published.1 > 0;
        if lost_all_users || lost_all_hosts {
            self.streak += 1;
            if self.streak < EMPTY_CONFIRMATIONS {
                return Err(AwsError::Suspicious(format!(
                    "AWS listed {} users and {} hosts where the current snapshot has {} and {}; \
                     not trusted until {EMPTY_CONFIRMATIONS} listings in a row agree ({} so far)",
                    counts.0, counts.1, self.published.0, self.published.1, self.streak
                )));
            }
        }
        self.streak = 0;
        self.published = counts;
        Ok(listing)
    }
}

/// A [`Directory`] kept up to date from AWS.
pub struct AwsDirectory {
    source: AwsSource,
    directory: Arc<Directory>,
    /// When the published snapshot's listing started.
    last_good: Instant,
    /// Holds back empty listings until they are repeated.
    guard: EmptyGuard,
    /// Whether the "stale" line was logged for the current outage.
    stale: bool,
    /// Wakes the loop for an immediate refresh (SIGHUP).
    wakeup: Arc<Notify>,
    /// The published snapshot came from the saved listing: refresh at once.
    restored: bool,
}

impl AwsDirectory {
    /// Makes the first listing, retrying with backoff (each failure logged) for up to
    /// `max_staleness`, and returns a directory holding it.
    ///
    /// # Errors
    /// The last failure, when no listing succeeded within `max_staleness`.
    pub async fn start(mut source: AwsSource) -> Result<AwsDirectory, AwsError> {
        let settings = source.settings().clone();
        if let Some(restored) = restore(&settings) {
            let counts = (restored.identities.len(), restored.hosts.len());
            let snapshot = listed_snapshot(
                restored.identities,
                restored.hosts,
                restored.started,
                settings.max_staleness,
            );
            return Ok(AwsDirectory::holding(
                source,
                snapshot,
                counts,
                restored.started,
                true,
            ));
        }
        let give_up = Instant::now() + settings.max_staleness;
        let mut failures = 0;
        loop {
            match source.list().await {
                Ok(listing) => {
                    log_listing(&listing, true);
                    save(&settings, &listing).await;
                    let snapshot = listing.snapshot(settings.max_staleness);
                    let counts = (listing.identities.len(), listing.hosts.len());
                    return Ok(AwsDirectory::holding(
                        source,
                        snapshot,
                        counts,
                        listing.started,
                        false,
                    ));
                }
                Err(e) => {
                    failures += 1;
                    let delay = retry_delay(&settings, failures, e.is_throttling());
                    if Instant::now() + delay >= give_up {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, attempt = failures, retry_in = ?delay,
                        "first AWS listing failed; not serving until one succeeds");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// A directory publishing `snapshot` (of `counts` users and hosts, listed at
    /// `last_good`; `restored` when it came from the saved listing).
    fn holding(
        source: AwsSource,
        snapshot: Snapshot,
        counts: (usize, usize),
        last_good: Instant,
        restored: bool,
    ) -> AwsDirectory {
        AwsDirectory {
            guard: EmptyGuard::new(counts),
            last_good,
            directory: Arc::new(Directory::new(snapshot)),
            source,
            stale: false,
            wakeup: Arc::new(Notify::new()),
            restored,
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

    /// One refresh: list, and publish the listing unless it is held back.
    ///
    /// # Errors
    /// The listing failed, or it was held back as suspicious; nothing was published.
    pub async fn refresh(&mut self) -> Result<(), AwsError> {
        let outcome = self.source.list().await;
        let before = self.guard.published;
        let listing = self.guard.admit(outcome)?;
        log_listing(&listing, self.guard.published != before);
        let max_staleness = self.source.settings().max_staleness;
        self.directory.publish(listing.snapshot(max_staleness));
        save(self.source.settings(), &listing).await;
        self.last_good = listing.started;
        if self.stale {
            self.stale = false;
            tracing::info!("AWS directory is fresh again: new logins are admitted");
        }
        Ok(())
    }

    /// Refreshes forever: every `refresh_interval` after a success, sooner then backing off
    /// after a failure. Logs when the snapshot goes stale and when it recovers.
    pub async fn run(mut self) {
        let settings = self.source.settings().clone();
        let mut failures: u32 = 0;
        // A restored snapshot is refreshed at once: it is as old as the saved listing.
        let mut next = if self.restored {
            Instant::now()
        } else {
            Instant::now() + settings.refresh_interval
        };
        let wakeup = self.wakeup.clone();
        loop {
            let stale_at = self.last_good + settings.max_staleness;
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                () = wakeup.notified() => {
                    tracing::info!("AWS refresh requested");
                }
                () = tokio::time::sleep_until(stale_at.into()), if !self.stale => {
                    self.stale = true;
                    tracing::error!(
                        last_good_secs_ago = self.last_good.elapsed().as_secs(),
                        max_staleness = ?settings.max_staleness,
                        "AWS directory is stale: no successful listing within max_staleness; \
                         refusing new logins until AWS answers again"
                    );
                    continue;
                }
            }
            match self.refresh().await {
                Ok(()) => {
                    failures = 0;
                    next = Instant::now() + settings.refresh_interval;
                }
                Err(e) => {
                    failures += 1;
                    let delay = retry_delay(&settings, failures, e.is_throttling());
                    tracing::warn!(
                        error = %e,
                        failures,
                        throttled = e.is_throttling(),
                        retry_in = ?delay,
                        "AWS refresh failed; keeping the last snapshot"
                    );
                    next = Instant::now() + delay;
                }
            }
        }
    }
}

/// The saved listing of `aws.snapshot_file`, when there is one that may be used (each reason
/// not to is logged).
fn restore(settings: &AwsConfig) -> Option<persist::Restored> {
    let path = settings.snapshot_file.as_ref()?;
    match persist::load(path, settings) {
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

/// Keeps `listing` in `aws.snapshot_file`, if set; a failure is logged, never fatal.
async fn save(settings: &AwsConfig, listing: &Listing) {
    let Some(path) = settings.snapshot_file.clone() else {
        return;
    };
    let (settings, started_at) = (settings.clone(), listing.started_at);
    let (identities, hosts) = (listing.identities.clone(), listing.hosts.clone());
    let written = tokio::task::spawn_blocking(move || {
        persist::save(&path, &settings, started_at, &identities, &hosts)
            .map_err(|e| format!("{}: {e}", path.display()))
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("cannot save the AWS listing to {e}"),
        Err(e) => tracing::warn!("cannot save the AWS listing: {e}"),
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

    /// A listing of `users` users and `hosts` hosts (their content does not matter here).
    fn listing(users: usize, hosts: usize) -> Listing {
        Listing {
            identities: (0..users)
                .map(|i| Identity {
                    name: format!("user{i}"),
                    groups: ["research".to_owned()].into(),
                    keys: Vec::new(),
                })
                .collect(),
            hosts: (0..hosts)
                .map(|i| Host {
                    id: format!("i-{i}"),
                    names: vec![format!("i-{i}")],
                    address: std::net::IpAddr::from([10, 0, 3, 10 + (i % 200) as u8]),
                    groups: ["research".to_owned()].into(),
                    ports: [22].into(),
                    login_users: Vec::new(),
                })
                .collect(),
            skipped: Vec::new(),
            calls: Calls::default(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            took: Duration::ZERO,
        }
    }

    fn failure() -> Result<Listing, AwsError> {
        Err(AwsError::Call {
            service: "iam",
            operation: "ListUsers",
            action: None,
            code: None,
            message: "dispatch failure".to_owned(),
        })
    }

    #[test]
    fn an_empty_listing_is_published_only_when_three_in_a_row_agree() {
        let mut guard = EmptyGuard::new((2, 1));
        assert!(guard.admit(Ok(listing(0, 1))).is_err());
        assert!(guard.admit(Ok(listing(0, 1))).is_err());
        let third = guard
            .admit(Ok(listing(0, 1)))
            .expect("the third in a row is trusted");
        assert_eq!(third.identities.len(), 0);
        assert_eq!(guard.published, (0, 1));
        // Nothing to lose any more: an empty listing now is just the truth.
        assert!(guard.admit(Ok(listing(0, 1))).is_ok());
        // A non-empty listing in between breaks the row.
        let mut guard = EmptyGuard::new((2, 1));
        assert!(guard.admit(Ok(listing(2, 0))).is_err());
        assert!(guard.admit(Ok(listing(2, 1))).is_ok());
        assert!(guard.admit(Ok(listing(2, 0))).is_err());
        assert!(guard.admit(Ok(listing(2, 0))).is_err());
        assert!(guard.admit(Ok(listing(2, 0))).is_ok());
    }

    #[test]
    fn a_failed_listing_between_empty_ones_resets_the_count() {
        // A failure is not agreement: empty, empty, failure, empty is one empty listing in a
        // row, not three.
        let mut guard = EmptyGuard::new((2, 1));
        assert!(guard.admit(Ok(listing(0, 0))).is_err());
        assert!(guard.admit(Ok(listing(0, 0))).is_err());
        assert!(matches!(guard.admit(failure()), Err(AwsError::Call { .. })));
        match guard.admit(Ok(listing(0, 0))) {
            Err(AwsError::Suspicious(why)) => assert!(why.ends_with("(1 so far)"), "{why}"),
            other => panic!("an empty listing after a failure was not held back: {other:?}"),
        }
        assert!(guard.admit(Ok(listing(0, 0))).is_err());
        assert!(guard.admit(Ok(listing(0, 0))).is_ok());
        assert_eq!(guard.published, (0, 0));
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
}
