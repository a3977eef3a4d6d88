//! Counting AWS calls by action, for the refresh log line and for measuring refresh cost.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A shared count of AWS API calls by action (`iam:ListUsers`, ...).
#[derive(Debug, Clone, Default)]
pub struct Calls(Arc<Mutex<BTreeMap<&'static str, u64>>>);

impl Calls {
    /// Counts one call of `action`.
    pub fn count(&self, action: &'static str) {
        if let Ok(mut map) = self.0.lock() {
            *map.entry(action).or_default() += 1;
        }
    }

    /// The counts so far.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// All calls so far.
    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }
}

impl fmt::Display for Calls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .snapshot()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(f, "{} ({})", self.total(), parts.join(" "))
    }
}
