//! Refusals before authentication, in bounded ink.
//!
//! A flood of connections must not become a flood of log and audit lines (a full disk, or a
//! CloudWatch bill). Every refusal is counted exactly in `gatehouse_connection_refusals_total`;
//! of each reason, the first [`ITEMIZED_PER_INTERVAL`] in an interval get their own
//! `connection.refused` line as before, and the rest are summed up at the end of the interval
//! in one `connection.refused.summary` line (count, distinct sources, the top sources). So the
//! ink per interval is bounded by the number of reasons, whatever the connection rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::sources::Source;

/// `connection.refused` lines per reason and interval; the rest are summarized.
pub(crate) const ITEMIZED_PER_INTERVAL: u64 = 10;
/// How often summaries are written.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);
/// Sources counted per reason and interval; refusals of further sources count as untracked.
const MAX_SOURCES: usize = 1024;
/// Sources named in a summary.
const TOP: usize = 5;

/// The tallies of the current interval, by reason code.
#[derive(Default)]
pub(crate) struct Refusals {
    tallies: Mutex<HashMap<&'static str, Tally>>,
}

#[derive(Default)]
struct Tally {
    count: u64,
    /// Refusals past the itemized ones, by source.
    sources: HashMap<Source, u64>,
    /// Refusals past the itemized ones whose source the full map could not count.
    untracked: u64,
}

/// What one reason's refusals of an interval add up to (only reasons with refusals that had
/// no line of their own).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Summary {
    pub reason_code: &'static str,
    /// All refusals of the interval, the itemized ones included.
    pub count: u64,
    /// How many of them had a line of their own.
    pub itemized: u64,
    /// Distinct sources among the summarized ones (at most [`MAX_SOURCES`] counted).
    pub sources: usize,
    /// The summarized refusals' busiest sources, busiest first.
    pub top_sources: Vec<(String, u64)>,
}

impl Refusals {
    /// Counts one refusal; whether it gets a line of its own.
    pub fn note(&self, code: &'static str, ip: IpAddr) -> bool {
        let mut tallies = lock(&self.tallies);
        let tally = tallies.entry(code).or_default();
        tally.count += 1;
        if tally.count <= ITEMIZED_PER_INTERVAL {
            return true;
        }
        let source = Source::of(ip);
        let room = tally.sources.len() < MAX_SOURCES;
        match tally.sources.get_mut(&source) {
            Some(n) => *n += 1,
            None if room => {
                tally.sources.insert(source, 1);
            }
            None => tally.untracked += 1,
        }
        false
    }

    /// Ends the interval: the summaries of reasons with unitemized refusals.
    pub fn take(&self) -> Vec<Summary> {
        let tallies = std::mem::take(&mut *lock(&self.tallies));
        let mut summaries: Vec<Summary> = tallies
            .into_iter()
            .filter(|(_, t)| t.count > ITEMIZED_PER_INTERVAL)
            .map(|(reason_code, t)| {
                let mut top: Vec<(Source, u64)> = t.sources.iter().map(|(s, n)| (*s, *n)).collect();
                top.sort_by(|a, b| {
                    b.1.cmp(&a.1)
                        .then_with(|| a.0.to_string().cmp(&b.0.to_string()))
                });
                Summary {
                    reason_code,
                    count: t.count,
                    itemized: ITEMIZED_PER_INTERVAL,
                    sources: t.sources.len(),
                    top_sources: top
                        .into_iter()
                        .take(TOP)
                        .map(|(s, n)| (s.to_string(), n))
                        .collect(),
                }
            })
            .collect();
        summaries.sort_by_key(|s| s.reason_code);
        summaries
    }
}

/// The tallies hold plain data: a panic elsewhere cannot leave them inconsistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_first_refusals_of_a_reason_are_itemized_and_the_rest_summarized() {
        let r = Refusals::default();
        for i in 0..ITEMIZED_PER_INTERVAL {
            assert!(r.note("penalized", ip(&format!("10.0.0.{i}"))));
        }
        assert!(
            r.note("evicted", ip("10.9.9.9")),
            "reasons are counted apart"
        );
        for _ in 0..7 {
            assert!(!r.note("penalized", ip("10.1.0.1")));
        }
        for _ in 0..3 {
            assert!(!r.note("penalized", ip("2001:db8::1")));
        }
        assert!(!r.note("penalized", ip("10.1.0.2")));
        let summaries = r.take();
        assert_eq!(
            summaries,
            vec![Summary {
                reason_code: "penalized",
                count: ITEMIZED_PER_INTERVAL + 11,
                itemized: ITEMIZED_PER_INTERVAL,
                sources: 3,
                top_sources: vec![
                    ("10.1.0.1".into(), 7),
                    ("2001:db8::/64".into(), 3),
                    ("10.1.0.2".into(), 1),
                ],
            }]
        );
        // A new interval itemizes again.
        assert!(r.note("penalized", ip("10.1.0.1")));
        assert!(r.take().is_empty());
    }

    #[test]
    fn a_flood_from_many_sources_costs_bounded_memory_and_one_summary() {
        let r = Refusals::default();
        let mut itemized = 0;
        for i in 0..100_000u32 {
            let [_, b, c, d] = i.to_be_bytes();
            if r.note("too_many_unauthenticated", IpAddr::from([10, b, c, d])) {
                itemized += 1;
            }
        }
        assert_eq!(itemized, ITEMIZED_PER_INTERVAL);
        assert!(lock(&r.tallies)["too_many_unauthenticated"].sources.len() <= MAX_SOURCES);
        let summaries = r.take();
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].count, 100_000);
        assert_eq!(summaries[0].sources, MAX_SOURCES);
        assert_eq!(summaries[0].top_sources.len(), TOP);
    }
}
