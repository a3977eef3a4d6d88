//! The pace of a listing's per-user IAM calls: a token bucket (`aws.iam_calls_per_second`,
//! bursts of twice that), shared by the concurrent calls of one fetcher. IAM throttles per
//! account and API, and the account's other tools (Terraform runs, CI, consoles) draw on the
//! same budget: a listing that paces itself completes instead of failing on throttled calls.
//! (`governor` does this too; for one bucket awaited by a handful of tasks, these lines are
//! all it takes.)

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, at most `burst` at once.
#[derive(Debug)]
pub struct Pace {
    rate: f64,
    burst: f64,
    /// (tokens, when they were counted); tokens may be negative: calls already promised a
    /// slot in the future.
    state: Mutex<(f64, Instant)>,
}

impl Pace {
    /// `per_second` calls a second, bursts of twice as many.
    pub fn new(per_second: u32) -> Pace {
        let rate = f64::from(per_second.max(1));
        Pace {
            rate,
            burst: 2.0 * rate,
            state: Mutex::new((2.0 * rate, Instant::now())),
        }
    }

    /// How long the next call must wait for its token (taking it).
    fn reserve(&self) -> Duration {
        let now = Instant::now();
        let Ok(mut state) = self.state.lock() else {
            return Duration::ZERO;
        };
        let (tokens, then) = *state;
        let tokens = (tokens + now.duration_since(then).as_secs_f64() * self.rate).min(self.burst);
        *state = (tokens - 1.0, now);
        if tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - tokens) / self.rate)
        }
    }

    /// Waits for a token.
    pub async fn ready(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let pace = Pace::new(10);
        // Twenty at once (the burst), then one every 100 ms, promised in order.
        for _ in 0..20 {
            assert_eq!(pace.reserve(), Duration::ZERO);
        }
        let waits: Vec<u128> = (0..3).map(|_| pace.reserve().as_millis()).collect();
        assert!(
            (95..=100).contains(&waits[0]) && (195..=200).contains(&waits[1]),
            "{waits:?}"
        );
        assert!(waits[2] > waits[1]);
    }
}
