//! Waiting longer after each failure (reconnects, retries) instead of spinning.
//!
//! One formula for every wait in vmpipe: a base delay, doubled after each failure, capped.
//! [`Backoff`] uses it for reconnects and passing failures (0.5 s to 30 s); a hook's retries
//! use it with their own base and an hour's cap.

use std::time::Duration;

/// Reconnects and passing failures: the first wait.
const BASE: Duration = Duration::from_millis(500);
/// Reconnects and passing failures: the longest wait.
const CAP: Duration = Duration::from_secs(30);

/// `base` doubled `doublings` times, at most `cap`.
pub fn exponential(base: Duration, cap: Duration, doublings: u32) -> Duration {
    base.saturating_mul(2u32.saturating_pow(doublings.min(20)))
        .min(cap)
}

/// Exponential delay: 0.5 s, doubling, at most 30 s.
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let delay = exponential(BASE, CAP, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// The delay before attempt `attempts + 1` (the same sequence as `next_delay`).
    pub fn after_attempts(attempts: u64) -> Duration {
        let doublings = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX);
        exponential(BASE, CAP, doublings)
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

    #[test]
    fn after_attempts_follows_the_same_sequence() {
        assert_eq!(Backoff::after_attempts(0), Duration::from_millis(500));
        assert_eq!(Backoff::after_attempts(1), Duration::from_millis(500));
        assert_eq!(Backoff::after_attempts(3), Duration::from_secs(2));
        assert_eq!(Backoff::after_attempts(u64::MAX), Duration::from_secs(30));
    }

    #[test]
    fn exponential_saturates_instead_of_overflowing() {
        let hour = Duration::from_secs(3600);
        assert_eq!(
            exponential(Duration::from_secs(30), hour, 0),
            Duration::from_secs(30)
        );
        assert_eq!(
            exponential(Duration::from_secs(30), hour, 3),
            Duration::from_secs(240)
        );
        assert_eq!(exponential(Duration::MAX, hour, u32::MAX), hour);
    }
}
