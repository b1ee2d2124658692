//! Whether PostgreSQL answers, as every job sees it: one shared state instead of each job
//! finding out on its own schedule.
//!
//! A job whose write fails for a passing reason reports the database down and waits for it to
//! be back. While it is down, one prober (and only one) asks `SELECT 1` with a short capped
//! backoff; the moment it answers, every waiting job wakes together and writes again. So the
//! time from the database's return to the rows is the prober's interval (at most
//! [`PROBE_CAP`]), not each job's own backoff that grew during the outage.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tracing::{info, warn};
use vmpipe_common::backoff::Backoff;

use super::db::DbError;

/// The prober's first wait.
const PROBE_BASE: Duration = Duration::from_millis(250);
/// The prober's longest wait: the most a job waits after the database is back.
pub(crate) const PROBE_CAP: Duration = Duration::from_secs(2);
/// A probe that has no answer within this counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// PostgreSQL up or down, and the prober that notices its return.
pub(crate) struct DatabaseWatch {
    pool: PgPool,
    up: watch::Sender<bool>,
    probing: AtomicBool,
}

impl DatabaseWatch {
    /// Starts up (the worker has just migrated the database).
    pub(crate) fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            up: watch::Sender::new(true),
            probing: AtomicBool::new(false),
        })
    }

    /// Whether the database answered last time anyone asked.
    pub(crate) fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// A write succeeded.
    pub(crate) fn report_up(&self) {
        self.up.send_if_modified(|up| !std::mem::replace(up, true));
    }

    /// A write failed for a passing reason: the database is down until the prober sees it
    /// answer. The first report of an outage logs it and starts the prober.
    pub(crate) fn report_down(self: &Arc<Self>, error: &DbError) {
        if self.up.send_if_modified(|up| std::mem::replace(up, false)) {
            warn!(error = %error, "PostgreSQL unavailable; jobs wait for it");
        }
        if !self.probing.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().probe());
        }
    }

    /// Returns once the database is up (at once if it is).
    pub(crate) async fn back(&self) {
        let mut up = self.up.subscribe();
        // The sender lives as long as `self`: `wait_for` cannot fail while we hold it.
        let _ = up.wait_for(|up| *up).await;
    }

    /// Asks the database, with backoff, until it answers; then wakes every waiting job.
    async fn probe(self: Arc<Self>) {
        let mut delay = Backoff::new(PROBE_BASE, PROBE_CAP);
        loop {
            tokio::time::sleep(delay.next_delay()).await;
            if self.is_up() {
                break; // a job's write got through first
            }
            let answered =
                tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(&self.pool))
                    .await
                    .is_ok_and(|r| r.is_ok());
            if answered {
                info!(
                    waiting_jobs = self.up.receiver_count(),
                    "PostgreSQL answers again; the jobs waiting for it resume"
                );
                break;
            }
        }
        // Probing ends before the state says up: a job that reports the database down after
        // this starts a new prober.
        self.probing.store(false, Ordering::Release);
        self.report_up();
    }
}
