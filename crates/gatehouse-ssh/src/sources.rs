//! Per-source bookkeeping before authentication: penalty accounts (in the spirit of OpenSSH's
//! PerSourcePenalties) and the number of unauthenticated connections each source holds.
//!
//! A source is an IPv4 address or an IPv6 /64 (one customer's allocation), so an attacker
//! cannot escape by rotating through its own IPv6 prefix. Each connection that ends without
//! authenticating adds a penalty to its source's account, which drains in real time; while
//! the account exceeds the threshold, new connections from the source are refused at once.
//! Both tables are bounded: past `max_sources` no new source is tracked (permissive, like
//! OpenSSH's default overflow mode), after expired entries have been swept.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
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
}

impl Penalties {
    pub fn new(config: PenaltiesConfig) -> Self {
        Penalties {
            config,
            accounts: Mutex::new(HashMap::new()),
        }
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
                tracing::warn!(%source, "penalty table full: source not tracked");
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

/// How many unauthenticated connections each source holds.
pub(crate) struct Unauthenticated {
    limit: usize,
    counts: Arc<Mutex<HashMap<Source, usize>>>,
}

/// Counts one unauthenticated connection of a source until dropped.
pub(crate) struct UnauthenticatedSlot {
    source: Source,
    counts: Arc<Mutex<HashMap<Source, usize>>>,
}

impl Unauthenticated {
    pub fn new(limit: usize) -> Self {
        Unauthenticated {
            limit,
            counts: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for one more unauthenticated connection of `ip`'s source, unless it holds
    /// `limit` already.
    pub fn try_take(&self, ip: IpAddr) -> Option<UnauthenticatedSlot> {
        let source = Source::of(ip);
        let mut counts = lock(&self.counts);
        let count = counts.entry(source).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(UnauthenticatedSlot {
            source,
            counts: self.counts.clone(),
        })
    }
}

impl Drop for UnauthenticatedSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(count) = counts.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.source);
            }
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
        // Once the others have drained, there is room again.
        let later = t0 + Duration::from_secs(2);
        for _ in 0..2 {
            p.charge(ip("10.0.0.4"), Offence::GraceExceeded, later);
        }
        assert!(p.refused(ip("10.0.0.4"), later).is_some());
    }

    #[test]
    fn per_source_unauthenticated_slots_are_counted_and_released() {
        let u = Unauthenticated::new(2);
        let a = ip("10.0.0.1");
        let s1 = u.try_take(a).unwrap();
        let _s2 = u.try_take(a).unwrap();
        assert!(u.try_take(a).is_none());
        assert!(u.try_take(ip("10.0.0.2")).is_some());
        drop(s1);
        assert!(u.try_take(a).is_some());
    }
}
