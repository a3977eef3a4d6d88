//! The bastion-wide budget for client bytes held in memory for targets slower than their
//! clients (the tunnels' backlogs, see `tunnel`).
//!
//! Each tunnel's backlog is bounded on its own, but a user with many sessions, each with many
//! tunnels to a target of their own that stops reading, could still hold more memory than a
//! small bastion has. Every backlogged byte is taken from this budget first; a tunnel that
//! finds the budget spent stops draining its channel (the client is held back by TCP, as when
//! its own backlog is full) and is cut if its target takes nothing for a while, with a reason
//! naming the budget.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The default budget when `limits.max_buffered_mib` is not set: this share of the machine's
/// memory (1/8: 128 MiB on a 1 GiB t3.micro) ...
const DEFAULT_SHARE: usize = 8;
/// ... but at least this much (room for a few tunnels at full speed) ...
const DEFAULT_MIN: usize = 16 << 20;
/// ... and at most this much.
const DEFAULT_MAX: usize = 1 << 30;
/// Assumed when the machine's memory cannot be read.
const FALLBACK_MEMORY: usize = 1 << 30;

/// Bytes of client data the whole bastion may hold for slow targets.
pub(crate) struct BufferBudget {
    limit: usize,
    used: AtomicUsize,
}

impl BufferBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        BufferBudget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// The budget from `limits.max_buffered_mib`, or derived from the machine's memory.
    pub fn from_config(max_buffered_mib: Option<usize>) -> Self {
        Self::new(match max_buffered_mib {
            Some(mib) => mib.saturating_mul(1 << 20),
            None => default_bytes(machine_memory().unwrap_or(FALLBACK_MEMORY)),
        })
    }

    /// The budget, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes taken right now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes if they fit; false (and nothing taken) if the budget is spent.
    pub fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Returns `n` bytes taken earlier.
    pub fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// The default budget for a machine with `memory` bytes.
fn default_bytes(memory: usize) -> usize {
    (memory / DEFAULT_SHARE).clamp(DEFAULT_MIN, DEFAULT_MAX)
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
fn machine_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&text)
}

fn parse_mem_total(meminfo: &str) -> Option<usize> {
    let kib: usize = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_only_what_fits_and_gets_it_back() {
        let budget = BufferBudget::new(100);
        assert!(budget.try_take(60));
        assert!(!budget.try_take(41));
        assert_eq!(budget.used(), 60);
        assert!(budget.try_take(40));
        assert!(!budget.try_take(1));
        budget.give_back(100);
        assert_eq!(budget.used(), 0);
        assert!(!budget.try_take(usize::MAX));
    }

    #[test]
    fn default_is_an_eighth_of_memory_within_bounds() {
        assert_eq!(default_bytes(1 << 30), 128 << 20);
        assert_eq!(default_bytes(64 << 20), DEFAULT_MIN);
        assert_eq!(default_bytes(64 << 30), DEFAULT_MAX);
        assert_eq!(
            parse_mem_total("MemTotal:       24570000 kB\nMemFree: 1 kB\n"),
            Some(24_570_000 * 1024)
        );
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }
}
