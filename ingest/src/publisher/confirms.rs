//! Publishes whose confirm is still awaited, each tied to the journal entry its job has (or is
//! about to have).
//!
//! A publish that times out is not taken back: its message is on its way (lapin has queued its
//! frames) and a hung broker confirms it once it resumes. So the publish is left running, its
//! job is journaled, and when the confirm comes late the entry is removed instead of being
//! published a second time by the drain; meanwhile the drain leaves the entry alone. A late
//! nack, or a channel that dies, leaves the entry for the drain: an entry is removed only after
//! an ack.
//!
//! Whoever waits for a publish in time (an upload, the drain) and the publish's own task race
//! for its outcome; the slot decides who acts on it: the waiter while it waits, the task once
//! the waiter has let go ([`Confirms::detach`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::journal::Entry;

/// One publish in flight, as its waiter and its task know it.
#[derive(Clone, Debug)]
pub(super) struct Flight {
    entry: Entry,
    id: u64,
}

impl Flight {
    pub(super) fn entry(&self) -> &Entry {
        &self.entry
    }
}

/// What the publish's task does with its outcome.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Settled {
    /// Its waiter is still there and takes it.
    ToWaiter,
    /// Acked after the waiter let go: the journal entry is to be removed.
    LateAck,
    /// Failed after the waiter let go: the entry stays for the drain.
    LateFailure,
    /// Forgotten (the waiter could not journal the job, or a newer publish of it took over).
    Forgotten,
}

#[derive(Debug)]
enum State {
    /// The waiter is waiting.
    Awaited,
    /// The outcome (acked or not) came while the waiter was still there.
    Settled(bool),
    /// The waiter let go: the task acts on the outcome.
    Detached,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    /// The connection it was published on (a new one gets a new number).
    generation: u64,
    state: State,
}

#[derive(Debug, Default)]
pub(super) struct Confirms {
    slots: Mutex<HashMap<PathBuf, Slot>>,
    next_id: AtomicU64,
}

impl Confirms {
    /// Records a publish of the job whose journal entry is `entry`, on connection `generation`.
    pub(super) fn begin(&self, entry: Entry, generation: u64) -> Flight {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Slot {
            id,
            generation,
            state: State::Awaited,
        };
        self.lock().insert(entry.path.clone(), slot);
        Flight { entry, id }
    }

    /// The publish's task, with its outcome: who acts on it.
    pub(super) fn settle(&self, flight: &Flight, acked: bool) -> Settled {
        let mut slots = self.lock();
        let Some(slot) = slots
            .get_mut(&flight.entry.path)
            .filter(|s| s.id == flight.id)
        else {
            return Settled::Forgotten;
        };
        match slot.state {
            State::Awaited => {
                slot.state = State::Settled(acked);
                Settled::ToWaiter
            }
            State::Detached => {
                slots.remove(&flight.entry.path);
                if acked {
                    Settled::LateAck
                } else {
                    Settled::LateFailure
                }
            }
            // Settled twice: cannot happen; the first outcome stands.
            State::Settled(_) => Settled::ToWaiter,
        }
    }

    /// The waiter has the outcome, or gives up on it: the slot is forgotten.
    pub(super) fn finish(&self, flight: &Flight) {
        let mut slots = self.lock();
        if slots
            .get(&flight.entry.path)
            .is_some_and(|s| s.id == flight.id)
        {
            slots.remove(&flight.entry.path);
        }
    }

    /// The waiter stops waiting, its job now journaled: the outcome if it came meanwhile (and
    /// the slot is forgotten), else `None` and the publish's task acts on it when it comes.
    pub(super) fn detach(&self, flight: &Flight) -> Option<bool> {
        let mut slots = self.lock();
        let slot = slots
            .get_mut(&flight.entry.path)
            .filter(|s| s.id == flight.id)?;
        match slot.state {
            State::Settled(acked) => {
                slots.remove(&flight.entry.path);
                Some(acked)
            }
            State::Awaited | State::Detached => {
                slot.state = State::Detached;
                None
            }
        }
    }

    /// Whether `entry`'s job has a publish awaiting its confirm on connection `generation` (an
    /// older connection's publishes are not waited for: the drain publishes those again).
    pub(super) fn in_flight(&self, entry: &Entry, generation: u64) -> bool {
        self.lock()
            .get(&entry.path)
            .is_some_and(|s| s.generation == generation)
    }

    /// Publishes awaiting their confirm.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Slot>> {
        // The map stays consistent whatever panicked while holding it.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> Entry {
        Entry {
            path: PathBuf::from(format!("journal/{name}.json")),
        }
    }

    #[test]
    fn an_outcome_in_time_is_the_waiters() {
        let confirms = Confirms::default();
        let flight = confirms.begin(entry("a"), 1);
        assert!(confirms.in_flight(&entry("a"), 1));
        assert_eq!(confirms.settle(&flight, true), Settled::ToWaiter);
        confirms.finish(&flight);
        assert_eq!(confirms.len(), 0);
        assert!(!confirms.in_flight(&entry("a"), 1));
    }

    #[test]
    fn a_late_ack_is_the_tasks_and_removes_the_entry() {
        let confirms = Confirms::default();
        let flight = confirms.begin(entry("a"), 1);
        assert_eq!(confirms.detach(&flight), None, "no outcome yet");
        assert!(
            confirms.in_flight(&entry("a"), 1),
            "the drain leaves it alone"
        );
        assert_eq!(confirms.settle(&flight, true), Settled::LateAck);
        assert!(!confirms.in_flight(&entry("a"), 1));
    }

    #[test]
    fn a_late_nack_leaves_the_entry_to_the_drain() {
        let confirms = Confirms::default();
        let flight = confirms.begin(entry("a"), 1);
        confirms.detach(&flight);
        assert_eq!(confirms.settle(&flight, false), Settled::LateFailure);
        assert!(!confirms.in_flight(&entry("a"), 1));
    }

    #[test]
    fn an_outcome_that_comes_while_the_job_is_journaled_goes_to_the_waiter() {
        let confirms = Confirms::default();
        let flight = confirms.begin(entry("a"), 1);
        // The timeout fired; the confirm comes while the journal entry is being written.
        assert_eq!(confirms.settle(&flight, true), Settled::ToWaiter);
        assert_eq!(confirms.detach(&flight), Some(true));
        assert_eq!(confirms.len(), 0);
    }

    #[test]
    fn a_forgotten_or_replaced_publish_touches_nothing() {
        let confirms = Confirms::default();
        let old = confirms.begin(entry("a"), 1);
        confirms.detach(&old);
        // Published again on a new connection: the old publish's outcome is not this one's.
        let new = confirms.begin(entry("a"), 2);
        assert!(!confirms.in_flight(&entry("a"), 1));
        assert!(confirms.in_flight(&entry("a"), 2));
        assert_eq!(confirms.settle(&old, true), Settled::Forgotten);
        confirms.finish(&old);
        assert!(confirms.in_flight(&entry("a"), 2));
        assert_eq!(confirms.settle(&new, true), Settled::ToWaiter);
        confirms.finish(&new);
        assert_eq!(confirms.settle(&new, true), Settled::Forgotten);
    }
}
