//! Per-source bookkeeping before authentication: penalty accounts (in the spirit of OpenSSH's
//! PerSourcePenalties) and the number of unauthenticated connections each source holds.
//!
//! A source is an IPv4 address or an IPv6 /64 (one customer's allocation), so an attacker
//! cannot escape by rotating through its own IPv6 prefix. Each connection that ends without
//! authenticating adds a penalty to its source's account, which drains in real time; while
//! the account exceeds the threshold, new connections from the source are refused at once.
//! Both tables are bounded: past `max_sources` no new source is tracked (permissive, like
//! OpenSSH's default overflow mode), after expired entries have been swept.
//!
//! Unauthenticated connections are also counted per [`Prefix`] (an IPv4 /24, an IPv6 /48):
//! one network holding many addresses cannot take more than its prefix's share either.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gatehouse_config::PenaltiesConfig;

/// The unit penalties and caps apply to: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let s = v6.segments();
                Source(IpAddr::V6(Ipv6Addr::new(
                    s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                )))
            }
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// The network a source belongs to, for the per-prefix cap: an IPv4 /24, or an IPv6 /48 (an
/// IPv6 source is already a whole /64; a /48 is a site's usual allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Prefix(IpAddr);

impl Prefix {
    pub fn of(ip: IpAddr) -> Prefix {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                Prefix(IpAddr::V4(Ipv4Addr::new(a, b, c, 0)))
            }
            IpAddr::V6(v6) => {
                let s = v6.segments();
                Prefix(IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0)))
            }
        }
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}/24"),
            IpAddr::V6(v6) => write!(f, "{v6}/48"),
        }
    }
}

/// Why a connection ended without authenticating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offence {
    /// It tried and failed (wrong key, unknown user, password, ...).
    AuthFailure,
    /// It closed without trying.
    NoAuth,
    /// It was cut at the login grace time.
    GraceExceeded,
}

impl Offence {
    pub fn label(self) -> &'static str {
        match self {
            Offence::AuthFailure => "auth_failure",
            Offence::NoAuth => "no_auth",
            Offence::GraceExceeded => "grace_exceeded",
        }
    }
}

/// Penalty accounts of all sources.
pub(crate) struct Penalties {
    config: PenaltiesConfig,
    /// When each source's account is empty again.
    accounts: Mutex<HashMap<Source, Instant>>,
    /// Charges to sources the full table could not track, since last asked
    /// ([`Penalties::take_untracked`]): warned about in one line per interval, not per charge.
    untracked: AtomicU64,
}

impl Penalties {
    pub fn new(config: PenaltiesConfig) -> Self {
        Penalties {
            config,
            accounts: Mutex::new(HashMap::new()),
            untracked: AtomicU64::new(0),
        }
    }

    /// Charges to untracked sources since the last call.
    pub fn take_untracked(&self) -> u64 {
        self.untracked.swap(0, Ordering::Relaxed)
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.config.exempt.iter().any(|net| net.contains(&ip))
    }

    /// If the source is refused now, for how much longer.
    pub fn refused(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if !self.config.enabled || self.exempt(ip) {
            return None;
        }
        let accounts = lock(&self.accounts);
        let expiry = *accounts.get(&Source::of(ip))?;
        let balance = expiry.saturating_duration_since(now);
        (balance > self.config.threshold).then(|| balance - self.config.threshold)
    }

    /// Charges `offence` to the source. Returns the new balance if this charge took it over
    /// the threshold (the source is refused from now on), for the audit log.
    pub fn charge(&self, ip: IpAddr, offence: Offence, now: Instant) -> Option<Duration> {
        if !self.config.enabled || self.exempt(ip) {
            return None;
        }
        let penalty = match offence {
            Offence::AuthFailure => self.config.auth_failure,
            Offence::NoAuth => self.config.no_auth,
            Offence::GraceExceeded => self.config.grace_exceeded,
        };
        if penalty.is_zero() {
            return None;
        }
        let source = Source::of(ip);
        let mut accounts = lock(&self.accounts);
        if !accounts.contains_key(&source) && accounts.len() >= self.config.max_sources {
            accounts.retain(|_, expiry| *expiry > now);
            if accounts.len() >= self.config.max_sources {
                self.untracked.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let expiry = accounts.entry(source).or_insert(now);
        let before = expiry.saturating_duration_since(now);
        let after = (before + penalty).min(self.config.max);
        *expiry = now + after;
        (before <= self.config.threshold && after > self.config.threshold).then_some(after)
    }

    /// Number of sources refused right now (for metrics).
    pub fn refused_sources(&self, now: Instant) -> usize {
        let threshold = self.config.threshold;
        lock(&self.accounts)
            .values()
            .filter(|e| e.saturating_duration_since(now) > threshold)
            .count()
    }
}

/// How many unauthenticated connections each source and each prefix holds.
pub(crate) struct Unauthenticated {
    per_source: usize,
    per_prefix: usize,
    counts: Arc<Mutex<Counts>>,
}

#[derive(Default)]
struct Counts {
    sources: HashMap<Source, usize>,
    prefixes: HashMap<Prefix, usize>,
}

/// Which per-source cap a connection is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OverCap {
    /// `limits.per_source_max_unauthenticated`.
    Source,
    /// `limits.per_prefix_max_unauthenticated`.
    Prefix,
}

/// Counts one unauthenticated connection of a source (and its prefix) until dropped.
pub(crate) struct UnauthenticatedSlot {
    source: Source,
    prefix: Prefix,
    counts: Arc<Mutex<Counts>>,
}

impl Unauthenticated {
    pub fn new(per_source: usize, per_prefix: usize) -> Self {
        Unauthenticated {
            per_source,
            per_prefix,
            counts: Arc::new(Mutex::new(Counts::default())),
        }
    }

    /// A slot for one more unauthenticated connection of `ip`'s source, unless the source
    /// holds `per_source` already or its prefix `per_prefix`.
    pub fn try_take(&self, ip: IpAddr) -> Result<UnauthenticatedSlot, OverCap> {
        let (source, prefix) = (Source::of(ip), Prefix::of(ip));
        let mut counts = lock(&self.counts);
        if counts.sources.get(&source).copied().unwrap_or(0) >= self.per_source {
            return Err(OverCap::Source);
        }
        if counts.prefixes.get(&prefix).copied().unwrap_or(0) >= self.per_prefix {
            return Err(OverCap::Prefix);
        }
        *counts.sources.entry(source).or_insert(0) += 1;
        *counts.prefixes.entry(prefix).or_insert(0) += 1;
        Ok(UnauthenticatedSlot {
            source,
            prefix,
            counts: self.counts.clone(),
        })
    }
}

impl Drop for UnauthenticatedSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        release(&mut counts.sources, &self.source);
        release(&mut counts.prefixes, &self.prefix);
    }
}

/// Takes one from `key`'s count, removing the entry at zero (the tables stay bounded by what
/// is held now).
fn release<K: Eq + std::hash::Hash>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = counts.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(key);
        }
    }
}

/// The tables hold plain data: a panic elsewhere cannot leave them inconsistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PenaltiesConfig {
        PenaltiesConfig {
            enabled: true,
            auth_failure: Duration::from_secs(5),
            no_auth: Duration::from_secs(1),
            grace_exceeded: Duration::from_secs(10),
            threshold: Duration::from_secs(15),
            max: Duration::from_secs(600),
            max_sources: 3,
            exempt: vec!["192.0.2.0/24".parse().unwrap()],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn penalties_accumulate_cross_the_threshold_and_drain() {
        let p = Penalties::new(config());
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        assert_eq!(p.charge(a, Offence::AuthFailure, t0), None); // 5s
        assert_eq!(p.charge(a, Offence::AuthFailure, t0), None); // 10s
        assert_eq!(p.charge(a, Offence::AuthFailure, t0), None); // 15s: not above
        assert_eq!(p.refused(a, t0), None);
        assert_eq!(
            p.charge(a, Offence::NoAuth, t0),
            Some(Duration::from_secs(16))
        );
        assert_eq!(p.refused(a, t0), Some(Duration::from_secs(1)));
        // Further charges grow the refusal but report the crossing only once.
        assert_eq!(p.charge(a, Offence::GraceExceeded, t0), None);
        assert_eq!(p.refused(a, t0), Some(Duration::from_secs(11)));
        // The account drains in real time.
        assert_eq!(p.refused(a, t0 + Duration::from_secs(11)), None);
        // Another source is unaffected.
        assert_eq!(p.refused(ip("10.0.0.2"), t0), None);
    }

    #[test]
    fn accounts_are_capped_at_max() {
        let p = Penalties::new(config());
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        for _ in 0..1000 {
            p.charge(a, Offence::GraceExceeded, t0);
        }
        assert_eq!(p.refused(a, t0), Some(Duration::from_secs(600 - 15)));
        assert_eq!(p.refused(a, t0 + Duration::from_secs(600)), None);
    }

    #[test]
    fn exempt_sources_and_disabled_penalties_are_never_refused() {
        let p = Penalties::new(config());
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(p.charge(ip("192.0.2.9"), Offence::GraceExceeded, t0), None);
        }
        assert_eq!(p.refused(ip("192.0.2.9"), t0), None);
        let off = Penalties::new(PenaltiesConfig {
            enabled: false,
            ..config()
        });
        for _ in 0..10 {
            off.charge(ip("10.0.0.1"), Offence::GraceExceeded, t0);
        }
        assert_eq!(off.refused(ip("10.0.0.1"), t0), None);
    }

    #[test]
    fn ipv6_sources_are_64_prefixes_and_mapped_ipv4_is_ipv4() {
        assert_eq!(
            Source::of(ip("2001:db8:1:2:aaaa::1")),
            Source::of(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Source::of(ip("::ffff:10.0.0.1")),
            Source::of(ip("10.0.0.1"))
        );
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn a_full_table_sweeps_expired_entries_then_stops_tracking() {
        let p = Penalties::new(config());
        let t0 = Instant::now();
        for i in 1..=3 {
            p.charge(ip(&format!("10.0.0.{i}")), Offence::NoAuth, t0);
        }
        // Full of live entries: a fourth source is not tracked.
        for _ in 0..20 {
            p.charge(ip("10.0.0.4"), Offence::GraceExceeded, t0);
        }
        assert_eq!(p.refused(ip("10.0.0.4"), t0), None);
        // Counted for one warning per interval, not one per charge.
        assert_eq!(p.take_untracked(), 20);
        assert_eq!(p.take_untracked(), 0);
        // Once the others have drained, there is room again.
        let later = t0 + Duration::from_secs(2);
        for _ in 0..2 {
            p.charge(ip("10.0.0.4"), Offence::GraceExceeded, later);
        }
        assert!(p.refused(ip("10.0.0.4"), later).is_some());
    }

    #[test]
    fn per_source_unauthenticated_slots_are_counted_and_released() {
        let u = Unauthenticated::new(2, 100);
        let a = ip("10.0.0.1");
        let s1 = u.try_take(a).unwrap();
        let _s2 = u.try_take(a).unwrap();
        assert_eq!(u.try_take(a).err(), Some(OverCap::Source));
        assert!(u.try_take(ip("10.0.0.2")).is_ok());
        drop(s1);
        assert!(u.try_take(a).is_ok());
    }

    #[test]
    fn a_prefix_is_capped_across_its_addresses_and_released() {
        let u = Unauthenticated::new(2, 3);
        let held: Vec<_> = (1..=3)
            .map(|i| u.try_take(ip(&format!("10.0.0.{i}"))).unwrap())
            .collect();
        // A fresh address of the same /24 is over the prefix's cap; another /24 is not.
        assert_eq!(u.try_take(ip("10.0.0.200")).err(), Some(OverCap::Prefix));
        assert!(u.try_take(ip("10.0.1.1")).is_ok());
        // IPv6: one /48, whatever the /64.
        let v6 = Unauthenticated::new(1, 2);
        let _a = v6.try_take(ip("2001:db8:1:1::1")).unwrap();
        let _b = v6.try_take(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            v6.try_take(ip("2001:db8:1:3::1")).err(),
            Some(OverCap::Prefix)
        );
        assert_eq!(
            Prefix::of(ip("2001:db8:1:3::1")).to_string(),
            "2001:db8:1::/48"
        );
        assert_eq!(Prefix::of(ip("::ffff:10.0.0.7")).to_string(), "10.0.0.0/24");
        drop(held);
        assert!(u.try_take(ip("10.0.0.200")).is_ok());
        assert!(lock(&u.counts).sources.len() <= 2);
    }
}
