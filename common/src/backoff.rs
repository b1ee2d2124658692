//! Waiting longer after each failure (reconnects, retries) instead of spinning.

use std::time::Duration;

/// Exponential delay: 0.5 s, doubling, at most 30 s.
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let delay = Duration::from_millis(500) * 2u32.saturating_pow(self.attempt.min(6));
        self.attempt += 1;
        delay.min(Duration::from_secs(30))
    }

    /// The delay before attempt `attempts + 1` (the same sequence as `next_delay`).
    pub fn after_attempts(attempts: u64) -> Duration {
        let mut backoff = Backoff {
            attempt: attempts.saturating_sub(1).min(64) as u32,
        };
        backoff.next_delay()
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }
}
