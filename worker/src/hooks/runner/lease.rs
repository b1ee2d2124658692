//! Leases of the hook runs a worker has in progress: who holds them, the heartbeat that renews
//! them, and the hand-back of the runs a worker's previous process left behind.
//!
//! A claimed row is `running`, and its `next_attempt_at` is the lease. The worker renews the
//! leases of all its runs every [`HEARTBEAT`]; a lease not renewed for [`LEASE`] (the worker
//! died, or lost the database) expires, and another worker takes the run over. A run whose
//! lease was taken over meanwhile is stopped at the next heartbeat. So a dead worker's runs
//! wait 15 s, not the hook's timeout; and a restarted worker hands its previous process's runs
//! back at once ([`super::queue::TranscriptionQueue::hand_back_previous`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use super::queue::TranscriptionQueue;

/// How long a run's lease lasts without renewal.
pub(super) const LEASE: Duration = Duration::from_secs(15);
/// How often a worker renews the leases of its runs.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(3);
/// A run is handed back by a restarted worker only once its lease has gone unrenewed this long
/// (two heartbeats missed): its process is gone, not a live namesake's.
pub(super) const UNRENEWED: Duration = Duration::from_secs(2 * 3);
/// When a starting worker looks again for its previous process's runs.
pub(super) const HAND_BACK_AFTER: Duration = Duration::from_secs(2 * 3 + 1);

/// Who runs an attempt: the worker's stable name, and this process.
#[derive(Clone, Debug)]
pub struct WorkerIdentity {
    /// `VMPIPE_WORKER_ID`, else the host name (a container's id under docker compose).
    pub name: String,
    /// This process's id (two workers on one host share a default name).
    pub pid: i32,
    /// New at each start: tells this process's runs from its previous one's.
    pub instance: Uuid,
}

impl WorkerIdentity {
    /// This process, named `name` (`VMPIPE_WORKER_ID`) or else after the host.
    pub fn of_this_process(name: Option<&str>) -> Self {
        let name = name
            .map(str::to_owned)
            .or_else(host_name)
            .unwrap_or_else(|| "worker".to_owned());
        Self {
            name,
            pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
            instance: Uuid::now_v7(),
        }
    }

    /// Whether a run leased by this worker's name and `pid` belongs to a process that is gone:
    /// our own pid (a restarted container gets the same), or no such process on this host.
    pub(crate) fn is_gone(&self, pid: Option<i32>) -> bool {
        match pid {
            Some(pid) if pid == self.pid => true,
            Some(pid) if pid > 0 => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            _ => true,
        }
    }
}

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

/// The runs this worker holds: attempt id → the token that stops the run.
#[derive(Default)]
pub(super) struct Leases {
    held: Mutex<HashMap<Uuid, CancellationToken>>,
}

impl Leases {
    /// Holds `attempt_id` until the guard is dropped; the token is cancelled if the lease is
    /// found taken over.
    pub(super) fn hold(self: &Arc<Self>, attempt_id: Uuid) -> (LeaseGuard, CancellationToken) {
        let lost = CancellationToken::new();
        self.held
            .lock()
            .expect("leases")
            .insert(attempt_id, lost.clone());
        (
            LeaseGuard {
                leases: self.clone(),
                attempt_id,
            },
            lost,
        )
    }

    /// Renews the leases held, every [`HEARTBEAT`], until `stop`.
    pub(super) async fn heartbeat(&self, queue: &TranscriptionQueue, stop: &CancellationToken) {
        let mut ticks = tokio::time::interval(HEARTBEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.cancelled() => return,
            }
            let held: Vec<Uuid> = self.held.lock().expect("leases").keys().copied().collect();
            if held.is_empty() {
                continue;
            }
            match queue.renew(&held, LEASE).await {
                Ok(renewed) => {
                    let lost: Vec<CancellationToken> = {
                        let map = self.held.lock().expect("leases");
                        held.iter()
                            .filter(|id| !renewed.contains(id))
                            .filter_map(|id| map.get(id).cloned())
                            .collect()
                    };
                    for run in lost {
                        info!("a hook run's lease was taken over by another worker; stopping it");
                        run.cancel();
                    }
                }
                // The runs go on; if the database stays away, their leases expire.
                Err(e) => warn!(error = %e, "cannot renew the leases of the hook runs"),
            }
        }
    }
}

/// Releases a held lease from the heartbeat when the run ends.
pub(super) struct LeaseGuard {
    leases: Arc<Leases>,
    attempt_id: Uuid,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.leases
            .held
            .lock()
            .expect("leases")
            .remove(&self.attempt_id);
    }
}
