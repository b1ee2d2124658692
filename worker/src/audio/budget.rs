//! A hard bound on the work of one probe or decode, so that no parser bug, known or not, can
//! hold a job (or a hook run) forever: a number of work units (bytes examined, packets read),
//! a wall-clock deadline, and a flag the caller sets to cancel. Running out is an error the
//! caller reports, never a hang.
//!
//! The loops spend from it as they go (the probe's reads, the decoder's reads and packets),
//! and the readers handed to symphonia do too, so that a loop inside the library is bounded
//! by the same budget.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The clock is looked at each time this many more units have been spent.
const CLOCK_EVERY: u64 = 1 << 16;

/// Why the work was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exhausted {
    #[error("took longer than {} ms", .0.as_millis())]
    Time(Duration),
    #[error("more than {0} units of work (bytes examined, packets) for the file's size")]
    Work(u64),
    #[error("cancelled")]
    Cancelled,
}

/// Shared by the loop that does the work and the readers it hands to a library.
#[derive(Clone, Debug)]
pub struct Budget(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    started: Instant,
    timeout: Option<Duration>,
    limit: u64,
    spent: AtomicU64,
    cancel: Option<Arc<AtomicBool>>,
    /// The first reason the work was stopped: every later call gives it again.
    tripped: OnceLock<Exhausted>,
}

impl Budget {
    /// `limit` units, within `timeout` from now (none: no deadline), stopped early when
    /// `cancel` is set.
    pub fn new(limit: u64, timeout: Option<Duration>, cancel: Option<Arc<AtomicBool>>) -> Self {
        Self(Arc::new(Inner {
            started: Instant::now(),
            timeout,
            limit,
            spent: AtomicU64::new(0),
            cancel,
            tripped: OnceLock::new(),
        }))
    }

    /// Spends `units`; an error once the budget is gone (and from then on).
    pub fn spend(&self, units: u64) -> Result<(), Exhausted> {
        let inner = &self.0;
        if let Some(tripped) = inner.tripped.get() {
            return Err(*tripped);
        }
        let before = inner.spent.fetch_add(units, Ordering::Relaxed);
        let after = before.saturating_add(units);
        if after > inner.limit {
            return Err(self.trip(Exhausted::Work(inner.limit)));
        }
        if inner
            .cancel
            .as_ref()
            .is_some_and(|cancel| cancel.load(Ordering::Relaxed))
        {
            return Err(self.trip(Exhausted::Cancelled));
        }
        if before / CLOCK_EVERY != after / CLOCK_EVERY || units >= CLOCK_EVERY {
            self.check_clock()?;
        }
        Ok(())
    }

    /// Looks at the clock and the cancel flag now.
    pub fn check(&self) -> Result<(), Exhausted> {
        self.spend(0)?;
        self.check_clock()
    }

    /// Why the work was stopped, if it was.
    pub fn exhausted(&self) -> Option<Exhausted> {
        self.0.tripped.get().copied()
    }

    fn check_clock(&self) -> Result<(), Exhausted> {
        match self.0.timeout {
            Some(timeout) if self.0.started.elapsed() > timeout => {
                Err(self.trip(Exhausted::Time(timeout)))
            }
            _ => Ok(()),
        }
    }

    fn trip(&self, why: Exhausted) -> Exhausted {
        *self.0.tripped.get_or_init(|| why)
    }
}

/// The error a budgeted reader returns once the budget is gone: its cause is the
/// [`Exhausted`], found again with [`exhausted_cause`].
pub(crate) fn exhausted_io(why: Exhausted) -> io::Error {
    io::Error::other(why)
}

/// The [`Exhausted`] behind an error a budgeted reader returned.
pub fn exhausted_cause(error: &io::Error) -> Option<Exhausted> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Exhausted>())
        .copied()
}

/// A reader that spends a unit per byte read from the budget, and fails once it is gone.
pub struct BudgetedReader<R> {
    inner: R,
    budget: Budget,
}

impl<R> BudgetedReader<R> {
    pub fn new(inner: R, budget: Budget) -> Self {
        Self { inner, budget }
    }
}

impl<R: Read> Read for BudgetedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One unit for the call itself: a loop of empty reads is bounded too.
        self.budget.spend(1).map_err(exhausted_io)?;
        let n = self.inner.read(buf)?;
        self.budget.spend(n as u64).map_err(exhausted_io)?;
        Ok(n)
    }
}

impl<R: Seek> Seek for BudgetedReader<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.budget.spend(1).map_err(exhausted_io)?;
        self.inner.seek(pos)
    }
}

impl<R: symphonia::core::io::MediaSource> symphonia::core::io::MediaSource for BudgetedReader<R> {
    fn is_seekable(&self) -> bool {
        self.inner.is_seekable()
    }

    fn byte_len(&self) -> Option<u64> {
        self.inner.byte_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_beyond_the_limit_is_refused_from_then_on() {
        let budget = Budget::new(100, None, None);
        assert_eq!(budget.spend(60), Ok(()));
        assert_eq!(budget.spend(60), Err(Exhausted::Work(100)));
        assert_eq!(budget.spend(0), Err(Exhausted::Work(100)));
        assert_eq!(budget.exhausted(), Some(Exhausted::Work(100)));
    }

    #[test]
    fn the_deadline_and_the_cancel_flag_stop_the_work() {
        let budget = Budget::new(u64::MAX, Some(Duration::from_millis(20)), None);
        assert_eq!(budget.check(), Ok(()));
        std::thread::sleep(Duration::from_millis(30));
        // Between two looks at the clock, spending goes on; a look stops it.
        let mut stopped = None;
        for _ in 0..2 * CLOCK_EVERY {
            if let Err(why) = budget.spend(1) {
                stopped = Some(why);
                break;
            }
        }
        assert_eq!(stopped, Some(Exhausted::Time(Duration::from_millis(20))));

        let cancel = Arc::new(AtomicBool::new(false));
        let budget = Budget::new(u64::MAX, None, Some(cancel.clone()));
        assert_eq!(budget.spend(1), Ok(()));
        cancel.store(true, Ordering::Relaxed);
        assert_eq!(budget.spend(1), Err(Exhausted::Cancelled));
    }

    #[test]
    fn a_budgeted_reader_fails_with_its_cause() {
        let budget = Budget::new(10, None, None);
        let mut reader = BudgetedReader::new(&[7u8; 100][..], budget);
        let mut buf = [0; 4];
        assert_eq!(reader.read(&mut buf).unwrap(), 4);
        let error = reader.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(exhausted_cause(&error), Some(Exhausted::Work(10)));
        assert_eq!(exhausted_cause(&io::Error::other("other")), None);
    }
}
