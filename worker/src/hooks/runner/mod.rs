//! Runs the hooks queued in `transcriptions`, off the indexing path: the scheduler. The SQL of
//! the queue is in [`queue`], the leases in [`lease`], the preparation of a run's input in
//! [`input`].
//!
//! Each hook has its own scheduler and its own number of runs at once (`concurrency`, else
//! `VMPIPE_HOOK_CONCURRENCY`), so a slow hook never holds up another hook's runs. A row is
//! claimed with `FOR UPDATE SKIP LOCKED` (several workers share the work), marked `running`
//! with a lease (`next_attempt_at`, renewed while it runs), and settled as `done`, `pending`
//! again (to be retried after a growing delay) or `failed`. Every write after the claim names
//! the attempt (`attempt_id`), so a late or taken-over attempt cannot overwrite a newer
//! result. A worker that dies mid-run takes its hook programs with it; its rows stay `running`
//! until it restarts (it hands them back at once) or their lease expires (another worker takes
//! them over), and the lost attempt counts.

mod input;
mod lease;
mod queue;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};
use vmpipe_common::Storage;
use vmpipe_common::backoff::Backoff;

use super::{Hook, HookError, Transcript};
use crate::activity::Activity;
use crate::error::{JobError, ResultExt as _, panic_text};

pub use lease::WorkerIdentity;
use lease::{LEASE, Leases};
pub use queue::TranscriptionReport;
use queue::{Claim, TranscriptionQueue};

/// How often idle runners look for due retries (new voicemails wake them at once).
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Hook runs start once indexing has been quiet this long: between the jobs of a storm, no.
const QUIET: Duration = Duration::from_millis(50);
/// Longest a hook run waits for that (hooks yield to indexing, but never starve).
const MAX_DEFERRAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("no voicemail {0:?} (give its id or its storage key)")]
    NoSuchVoicemail(String),
    #[error("no hook named {0:?} is configured")]
    NoSuchHook(String),
    #[error("no hook is configured (VMPIPE_TRANSCRIBER or [[hooks]] in the settings file)")]
    NoHooks,
}

pub struct HookRunner {
    queue: TranscriptionQueue,
    store: Arc<dyn Storage>,
    hooks: Vec<Arc<dyn Hook>>,
    names: Vec<String>,
    concurrency: usize,
    wake: Arc<Notify>,
    activity: Arc<Activity>,
    /// The longest audio decoded for a `wav16k` hook (`VMPIPE_MAX_AUDIO_SECS`).
    max_audio_secs: u64,
    /// Who this worker is, in the leases of its runs.
    identity: WorkerIdentity,
    leases: Arc<Leases>,
    /// Notified after an outcome is recorded (with its event, in the outbox).
    events: Arc<Notify>,
}

impl HookRunner {
    /// `concurrency`: runs of each hook at once, for hooks without their own;
    /// `activity`: the indexing jobs in progress, which new hook runs wait for;
    /// `max_audio_secs`: the longest audio decoded for a `wav16k` hook. The runner leases runs
    /// as this process, named after the host, unless [`HookRunner::identified_as`] says.
    pub fn new(
        pool: PgPool,
        store: Arc<dyn Storage>,
        hooks: Vec<Arc<dyn Hook>>,
        concurrency: usize,
        activity: Arc<Activity>,
        max_audio_secs: u64,
    ) -> Self {
        let names = hooks.iter().map(|hook| hook.name().to_owned()).collect();
        Self {
            queue: TranscriptionQueue::new(pool),
            store,
            hooks,
            names,
            concurrency: concurrency.max(1),
            wake: Arc::default(),
            activity,
            max_audio_secs,
            identity: WorkerIdentity::of_this_process(None),
            leases: Arc::default(),
            events: Arc::default(),
        }
    }

    /// Leases runs as `identity` (`VMPIPE_WORKER_ID`).
    pub fn identified_as(mut self, identity: WorkerIdentity) -> Self {
        self.identity = identity;
        self
    }

    /// Notifies `events` (the event dispatcher) after each outcome recorded.
    pub fn telling(mut self, events: Arc<Notify>) -> Self {
        self.events = events;
        self
    }

    /// The hook names that indexing queues a row for.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Notified by indexing after it queued rows.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    fn hook(&self, name: &str) -> Option<&Arc<dyn Hook>> {
        self.hooks.iter().find(|hook| hook.name() == name)
    }

    /// Runs of `hook` at once.
    fn concurrency_of(&self, hook: &dyn Hook) -> usize {
        hook.policy()
            .concurrency
            .map_or(self.concurrency, usize::from)
            .max(1)
    }

    /// Works through due rows, each hook on its own and `concurrency` at a time, until
    /// `shutdown`; attempts in progress are then stopped and handed back as `pending`. First
    /// hands back the runs this worker's previous process left behind.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.hooks.is_empty() {
            return;
        }
        let concurrency: Vec<(String, usize)> = self
            .hooks
            .iter()
            .map(|hook| (hook.name().to_owned(), self.concurrency_of(hook.as_ref())))
            .collect();
        let listed = concurrency
            .iter()
            .map(|(name, n)| format!("{name}={n}"))
            .collect::<Vec<_>>()
            .join(",");
        info!(hooks = %listed, worker_id = %self.identity.name, pid = self.identity.pid,
            "hook runner started");
        // Twice: at once for runs whose lease went unrenewed long ago, then once the runs of a
        // process that just died have missed two heartbeats (a live process with the same name
        // and pid, in another PID namespace, renews its own meanwhile and keeps them).
        self.hand_back_previous().await;
        {
            let runner = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(lease::HAND_BACK_AFTER) => runner.hand_back_previous().await,
                    _ = stop.cancelled() => {}
                }
            });
        }
        let heartbeat = {
            let runner = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { runner.leases.heartbeat(&runner.queue, &stop).await })
        };
        let schedulers = TaskTracker::new();
        let mut wakes = Vec::new();
        for (index, (_, concurrency)) in concurrency.into_iter().enumerate() {
            let wake = Arc::new(Notify::new());
            wakes.push(wake.clone());
            schedulers.spawn(
                self.clone()
                    .schedule(index, concurrency, wake, shutdown.clone()),
            );
        }
        schedulers.close();
        // New voicemails wake every hook's scheduler.
        loop {
            tokio::select! {
                _ = self.wake.notified() => wakes.iter().for_each(|wake| wake.notify_one()),
                _ = shutdown.cancelled() => break,
            }
        }
        schedulers.wait().await;
        let _ = heartbeat.await;
        info!("hook runner stopped");
    }

    async fn hand_back_previous(&self) {
        match self.queue.hand_back_previous(&self.identity).await {
            Ok(0) => {}
            Ok(handed) => info!(
                runs = handed,
                "handed back the hook runs this worker's previous process left running"
            ),
            // Their leases expire instead.
            Err(e) => warn!(error = %e, "cannot hand back this worker's previous hook runs"),
        }
    }

    /// The scheduler of the hook at `index`: claims its due rows, `concurrency` at a time.
    async fn schedule(
        self: Arc<Self>,
        index: usize,
        concurrency: usize,
        wake: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        let hook = std::slice::from_ref(&self.names[index]);
        let slots = Arc::new(Semaphore::new(concurrency));
        let tasks = TaskTracker::new();
        let mut backoff = Backoff::reconnect();
        loop {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot.expect("never closed"),
                _ = shutdown.cancelled() => break,
            };
            tokio::select! {
                _ = self.activity.wait_quiet(QUIET, MAX_DEFERRAL) => {}
                _ = shutdown.cancelled() => break,
            }
            let pause = match self.queue.claim_next(hook, LEASE, &self.identity).await {
                Ok(Some(claim)) => {
                    backoff.reset();
                    let runner = self.clone();
                    let shutdown = shutdown.clone();
                    tasks.spawn(async move {
                        runner.attempt(claim, &shutdown).await;
                        drop(slot);
                    });
                    continue;
                }
                Ok(None) => POLL_INTERVAL,
                Err(e) => {
                    let wait = backoff.next_delay();
                    warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot claim hook work");
                    wait
                }
            };
            drop(slot);
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        tasks.close();
        tasks.wait().await;
    }

    /// Runs one claimed attempt and records its outcome.
    async fn attempt(&self, claim: Claim, shutdown: &CancellationToken) {
        let span = info_span!("hook", hook = %claim.hook, voicemail_id = %claim.voicemail_id,
            attempt = claim.attempts);
        async {
            let Some(hook) = self.hook(&claim.hook).cloned() else {
                return; // claims only name our hooks
            };
            let policy = hook.policy();
            let attempt = u32::try_from(claim.attempts).unwrap_or(u32::MAX);
            // Renewed while it runs; `lost` if another worker took it over meanwhile.
            let (_lease, lost) = self.leases.hold(claim.attempt_id);
            let started = Instant::now();
            let result = if attempt > policy.max_attempts {
                // Earlier attempts never ended: the worker died during each.
                Err(HookError::abort_because(format!(
                    "gave up after {} attempts that never finished (the worker stopped during each)",
                    attempt - 1
                )))
            } else {
                tokio::select! {
                    result = tokio::time::timeout(policy.timeout, self.execute(hook, &claim)) => {
                        match result {
                            Ok(Err(JobError::Interrupted)) => Err(HookError::retry_because(
                                "the hook ended its run without a result (interrupted)",
                            )),
                            Ok(result) => result,
                            Err(_) => Err(HookError::retry_because(format!(
                                "timed out after {} s",
                                policy.timeout.as_secs_f64()
                            ))),
                        }
                    }
                    _ = shutdown.cancelled() => {
                        // Handed back: the attempt does not count.
                        self.queue.release(&claim).await;
                        return;
                    }
                    _ = lost.cancelled() => {
                        // Another worker runs it now, and records the outcome.
                        warn!("hook run stopped: its lease expired and another worker took it over");
                        return;
                    }
                }
            };
            let next = match &result {
                Ok(_) => Next::Done,
                Err(JobError::Retry(_)) if attempt < policy.max_attempts => {
                    Next::RetryAfter(policy.retry_after(attempt))
                }
                Err(_) => Next::Failed,
            };
            let elapsed = started.elapsed();
            let outcome = next.metric_label();
            metrics::counter!("vmpipe_hook_runs_total", "hook" => claim.hook.clone(), "outcome" => outcome)
                .increment(1);
            metrics::histogram!("vmpipe_hook_run_seconds", "hook" => claim.hook.clone())
                .record(elapsed.as_secs_f64());
            let run_ms = i32::try_from(elapsed.as_millis()).unwrap_or(i32::MAX);
            match &result {
                Ok(transcript) => info!(run_ms, chars = transcript.text.len(), "hook done"),
                Err(e) => warn!(run_ms, error = %e, code = e.code(), outcome, "hook attempt failed"),
            }
            let retry_after = match next {
                Next::RetryAfter(wait) => Some(wait),
                Next::Done | Next::Failed => None,
            };
            self.queue
                .record(&claim, result, run_ms, retry_after, shutdown)
                .await;
            self.events.notify_one();
        }
        .instrument(span)
        .await
    }

    /// Prepares the input and runs the hook on its own task, so that a panic in it is a failed
    /// attempt rather than a lost runner.
    async fn execute(&self, hook: Arc<dyn Hook>, claim: &Claim) -> Result<Transcript, HookError> {
        let audio = hook.policy().audio;
        let (input, _scratch) = input::input_for(
            &self.queue,
            self.store.as_ref(),
            claim,
            audio,
            self.max_audio_secs,
        )
        .await?;
        let task = tokio::spawn(async move { hook.run(&input).await });
        let abort = task.abort_handle();
        // Dropped at the timeout: the hook's future (and any program it runs) goes too.
        let _abort = AbortOnDrop(abort);
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(HookError::retry_because(format!(
                "the hook panicked: {}",
                panic_text(&e.into_panic())
            ))),
            Err(e) => Err(e).retry_with("the hook was stopped"),
        }
    }

    /// `worker transcribe`: runs the hooks (all, or `only`) for one voicemail now, in this
    /// process, whatever their rows say, and returns the rows as they end up.
    pub async fn transcribe_now(
        &self,
        voicemail: &str,
        only: Option<&str>,
    ) -> Result<Vec<TranscriptionReport>, RunnerError> {
        if self.hooks.is_empty() {
            return Err(RunnerError::NoHooks);
        }
        if let Some(name) = only
            && self.hook(name).is_none()
        {
            return Err(RunnerError::NoSuchHook(name.to_owned()));
        }
        let id = self
            .queue
            .find_voicemail(voicemail)
            .await?
            .ok_or_else(|| RunnerError::NoSuchVoicemail(voicemail.to_owned()))?;
        let never = CancellationToken::new();
        let runs = async {
            for name in self
                .names
                .iter()
                .filter(|name| only.is_none_or(|only| only == *name))
            {
                let claim = self
                    .queue
                    .claim_now(id, name, LEASE, &self.identity)
                    .await?;
                self.attempt(claim, &never).await;
            }
            Ok::<_, sqlx::Error>(())
        };
        let stop_heartbeat = CancellationToken::new();
        let heartbeat = self.leases.heartbeat(&self.queue, &stop_heartbeat);
        let (ran, ()) = tokio::join!(
            async {
                let ran = runs.await;
                stop_heartbeat.cancel();
                ran
            },
            heartbeat
        );
        ran?;
        Ok(self.queue.reports(id, only).await?)
    }
}

/// What follows an attempt.
enum Next {
    Done,
    /// Failed; pending again after this wait.
    RetryAfter(Duration),
    /// Failed for good.
    Failed,
}

impl Next {
    /// The `outcome` label of `vmpipe_hook_runs_total`.
    fn metric_label(&self) -> &'static str {
        match self {
            Next::Done => "done",
            Next::RetryAfter(_) => "retry",
            Next::Failed => "failed",
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
