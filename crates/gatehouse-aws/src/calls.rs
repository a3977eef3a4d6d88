//! Counting AWS calls by action, for the refresh log line and for measuring refresh cost.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::actions::Action;

/// A shared count of AWS API calls by action (`iam:ListUsers`, ...).
#[derive(Debug, Clone, Default)]
pub struct Calls(Arc<Mutex<BTreeMap<&'static str, u64>>>);

impl Calls {
    /// Counts one call of `action` (one of the constants of [`crate::actions`], so every
    /// call made is a declared action).
    pub fn count(&self, action: Action) {
        if let Ok(mut map) = self.0.lock() {
            *map.entry(action.name()).or_default() += 1;
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
