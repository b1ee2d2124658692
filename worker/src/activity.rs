//! How busy indexing is: the jobs in progress, which hook runs wait on so that a storm of
//! voicemails is indexed at full speed and transcribed afterwards.

/// Jobs in progress. Hook runs start once indexing has been quiet for a moment (or after a
/// bounded wait), so that a storm of voicemails is indexed at full speed and transcribed after.
#[derive(Debug)]
pub struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    /// When `in_flight` last fell to 0 (at start: a moment later, for the consumer to connect and
    /// pick up any backlog first).
    quiet_since: std::sync::Mutex<tokio::time::Instant>,
    idle: tokio::sync::Notify,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            in_flight: Default::default(),
            quiet_since: std::sync::Mutex::new(
                tokio::time::Instant::now() + std::time::Duration::from_secs(1),
            ),
            idle: Default::default(),
        }
    }
}

impl Activity {
    /// Counts a job in progress until the returned guard is dropped.
    pub fn begin(&self) -> ActiveJob<'_> {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ActiveJob(self)
    }

    /// Waits until no job has been in progress for `quiet`, or `at_most`.
    pub async fn wait_quiet(&self, quiet: std::time::Duration, at_most: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + at_most;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let wake_at = if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                let quiet_from = *self.quiet_since.lock().expect("not poisoned") + quiet;
                if quiet_from <= tokio::time::Instant::now() {
                    return;
                }
                quiet_from.min(deadline)
            } else {
                deadline
            };
            tokio::select! {
                _ = idle => {}
                _ = tokio::time::sleep_until(wake_at) => {
                    if wake_at == deadline {
                        return;
                    }
                }
            }
        }
    }
}

/// A job in progress (see [`Activity::begin`]).
pub struct ActiveJob<'a>(&'a Activity);

impl Drop for ActiveJob<'_> {
    fn drop(&mut self) {
        let activity = self.0;
        let mut quiet_since = activity.quiet_since.lock().expect("not poisoned");
        if activity
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            *quiet_since = tokio::time::Instant::now();
            activity.idle.notify_waiters();
        }
    }
}
