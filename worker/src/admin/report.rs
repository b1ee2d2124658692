//! What the admin commands' reports share: lists of keys that stay small for a million files
//! (a count and the first keys, the full list on request), and progress lines on standard
//! error for long runs.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Keys listed in a report when the full list is not asked for (`--full`).
pub const SAMPLE: usize = 20;

/// Some storage keys in a report: how many there are, and the first of them (all of them with
/// `--full`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct KeyList {
    pub count: u64,
    pub keys: Vec<String>,
    /// Whether `keys` holds all `count` of them.
    pub complete: bool,
    #[serde(skip)]
    limit: Option<usize>,
}

impl KeyList {
    /// An empty list that keeps every key (`full`), or the first [`SAMPLE`].
    pub fn new(full: bool) -> Self {
        Self {
            complete: true,
            limit: (!full).then_some(SAMPLE),
            ..Self::default()
        }
    }

    pub fn push(&mut self, key: impl Into<String>) {
        self.count += 1;
        if self.limit.is_none_or(|limit| self.keys.len() < limit) {
            self.keys.push(key.into());
        } else {
            self.complete = false;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// When a long command says how far it got: every `every` (zero: at every step).
pub struct Progress {
    every: Duration,
    last: Instant,
}

impl Progress {
    pub fn every(every: Duration) -> Self {
        Self {
            every,
            last: Instant::now(),
        }
    }

    /// Whether a progress line is due now (and, if so, the clock starts again).
    pub fn due(&mut self) -> bool {
        if self.last.elapsed() >= self.every {
            self.last = Instant::now();
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_list_keeps_a_sample_and_counts_the_rest() {
        let mut list = KeyList::new(false);
        for i in 0..SAMPLE + 5 {
            list.push(format!("k{i}"));
        }
        assert_eq!(list.count, SAMPLE as u64 + 5);
        assert_eq!(list.keys.len(), SAMPLE);
        assert_eq!(list.keys[0], "k0");
        assert!(!list.complete);

        let mut full = KeyList::new(true);
        for i in 0..SAMPLE + 5 {
            full.push(format!("k{i}"));
        }
        assert_eq!(full.keys.len(), SAMPLE + 5);
        assert!(full.complete);
    }
}
