//! Waiting longer after each failure (reconnects, retries) instead of spinning.
//!
//! One formula for every wait in vmpipe: a base delay, doubled after each failure, capped.
//! [`Backoff::reconnect`] is for connections to RabbitMQ and PostgreSQL (0.5 s to 5 s: a
//! retry costs one handshake, and a service back from an outage is used again within seconds);
//! [`Backoff::default`] for work that failed for a passing reason (0.5 s to 30 s); a hook's
//! retries use the formula with their own base and an hour's cap.

use std::time::Duration;

/// Reconnects and passing failures: the first wait.
const BASE: Duration = Duration::from_millis(500);
/// Passing failures of work (a job redelivered, a file that could not be opened): the longest
/// wait.
const CAP: Duration = Duration::from_secs(30);
/// Reconnects: the longest wait, so that a service is found again within seconds of its return.
const RECONNECT_CAP: Duration = Duration::from_secs(5);

/// `base` doubled `doublings` times, at most `cap`.
pub fn exponential(base: Duration, cap: Duration, doublings: u32) -> Duration {
    base.saturating_mul(2u32.saturating_pow(doublings.min(20)))
        .min(cap)
}

/// Exponential delay: by default 0.5 s, doubling, at most 30 s.
#[derive(Debug)]
pub struct Backoff {
    attempt: u32,
    base: Duration,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(BASE, CAP)
    }
}

impl Backoff {
    /// `base`, doubling, at most `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            attempt: 0,
            base,
            cap,
        }
    }

    /// For reconnecting to RabbitMQ or PostgreSQL: 0.5 s, doubling, at most 5 s.
    pub fn reconnect() -> Self {
        Self::new(BASE, RECONNECT_CAP)
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = exponential(self.base, self.cap, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// The delay before attempt `attempts + 1` (the same sequence as `next_delay` of
    /// [`Backoff::default`]).
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

    fn delays(backoff: &mut Backoff, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect()
    }

    #[test]
    fn grows_then_caps() {
        let mut b = Backoff::default();
        assert_eq!(
            delays(&mut b, 9),
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn reconnects_are_at_most_five_seconds_apart() {
        let mut b = Backoff::reconnect();
        assert_eq!(delays(&mut b, 6), [500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
        let mut custom = Backoff::new(Duration::from_millis(100), Duration::from_millis(250));
        assert_eq!(delays(&mut custom, 3), [100, 200, 250]);
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
