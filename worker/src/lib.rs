//! vmpipe worker: consumes the jobs ingest publishes and indexes each voicemail into
//! PostgreSQL (the `voicemails` table), with its duration measured from the audio, then runs
//! the hooks (transcription).
//!
//! Along the data flow: `consumer` (RabbitMQ deliveries and how each is settled) →
//! `pipeline` (one job: probe, hash, row) → `index` (batched upserts) → [`hooks`] (the
//! runner works through the `transcriptions` queue) → [`events`] (the outbox's dispatcher,
//! to the `[[notify]]` sinks). [`audio`] measures and decodes, [`admin`] holds the operator
//! commands, `health` and `activity` the state others watch.

mod activity;
pub mod admin;
pub mod audio;
mod consumer;
mod error;
pub mod events;
mod health;
pub mod hooks;
mod index;
mod pipeline;
mod secret;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;
use vmpipe_common::{Settings, Storage};

pub use admin::transcribe;
pub use error::{JobError, WorkerError};
pub use index::db::MIGRATOR;

/// Connects to PostgreSQL (creating the database if needed) and applies pending migrations.
pub async fn migrate(settings: &Settings) -> Result<sqlx::PgPool, WorkerError> {
    let connections = u32::from(settings.worker_concurrency).clamp(2, 32);
    let pool = index::db::connect(settings.database_url.expose(), connections).await?;
    index::db::migrate(&pool).await?;
    info!(database = %settings.database_url, "database migrated");
    Ok(pool)
}

/// [`migrate`], retried with backoff (at most a few seconds apart) while PostgreSQL is
/// unreachable (not when it refuses: a wrong password or database is a setting to fix).
async fn migrate_when_reachable(settings: &Settings) -> Result<sqlx::PgPool, WorkerError> {
    let mut backoff = vmpipe_common::backoff::Backoff::reconnect();
    loop {
        match migrate(settings).await {
            Err(WorkerError::Database(e)) if index::db::is_transient(&e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "PostgreSQL unreachable; waiting for it");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// A worker ready to run: database migrated, health address bound, hooks configured.
pub struct Worker {
    settings: Settings,
    pool: sqlx::PgPool,
    store: Arc<dyn Storage>,
    hooks: Vec<Arc<dyn hooks::Hook>>,
    sinks: Vec<(
        vmpipe_common::settings::NotifySettings,
        Arc<dyn events::Sink>,
    )>,
    listener: tokio::net::TcpListener,
}

impl Worker {
    pub async fn build(settings: Settings) -> Result<Self, WorkerError> {
        // Every metric exported (at 0) from the start; each hook's below, once they are known.
        vmpipe_common::metrics::register(vmpipe_common::metrics::WORKER);
        audio::probe::set_timeout(settings.probe_timeout());
        let hooks = hooks::from_settings(&settings).map_err(WorkerError::Hook)?;
        let store = vmpipe_common::store::open(&settings)?;
        let sinks = events::sink::from_settings(&settings, &store).map_err(WorkerError::Sink)?;
        // Temporary copies a crash left (an hour old: another worker on this disk may be
        // using younger ones).
        let removed = store
            .remove_stale_temp_files(std::time::Duration::from_secs(3600))
            .await?;
        if removed > 0 {
            info!(removed, "removed temporary files left by a crash");
        }
        let listener = tokio::net::TcpListener::bind(&settings.worker_listen)
            .await
            .map_err(|source| WorkerError::Listen {
                addr: settings.worker_listen.clone(),
                source,
            })?;
        // While the database is away at start-up (or a model loads), the worker waits for it,
        // alive and not ready (exiting would be a crash loop under an orchestrator).
        let starting = Arc::new(health::HealthServer {
            health: Arc::default(),
            pool: None,
            metrics: None,
        });
        let started = CancellationToken::new();
        // The hooks get ready (the Whisper model loads) meanwhile; one that cannot stops the
        // start at once.
        let (ready, ()) = tokio::join!(
            async {
                let ready = tokio::try_join!(migrate_when_reachable(&settings), async {
                    hooks::start_all(&hooks).await.map_err(WorkerError::Hook)
                });
                started.cancel();
                ready
            },
            health::serve_on(&listener, starting, started.clone()),
        );
        let (pool, ()) = ready?;
        Ok(Self {
            settings,
            pool,
            store,
            hooks,
            sinks,
            listener,
        })
    }

    /// Adds a hook compiled into this worker (see `examples/custom_hook.rs`). Its name must
    /// differ from the configured hooks' names.
    pub fn with_hook(mut self, hook: Arc<dyn hooks::Hook>) -> Result<Self, WorkerError> {
        if self.hooks.iter().any(|h| h.name() == hook.name()) {
            return Err(WorkerError::Refused(format!(
                "two hooks are named {:?}",
                hook.name()
            )));
        }
        self.hooks.push(hook);
        Ok(self)
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub fn health_addr(&self) -> std::net::SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// Consumes jobs and runs hooks until `shutdown` is cancelled; in-flight jobs finish first,
    /// hook runs in progress are handed back for later.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let activity = Arc::new(activity::Activity::default());
        let identity =
            hooks::runner::WorkerIdentity::of_this_process(self.settings.worker_id.as_deref());
        let dispatcher = events::Dispatcher::new(
            self.pool.clone(),
            self.sinks,
            self.settings.api_public_url().map(str::to_owned),
            self.settings.event_retention(),
            identity.clone(),
        );
        let events_wake = dispatcher.waker();
        let runner = Arc::new(
            hooks::runner::HookRunner::new(
                self.pool.clone(),
                self.store.clone(),
                self.hooks,
                usize::from(self.settings.hook_concurrency),
                activity.clone(),
                self.settings.max_audio_secs,
            )
            .identified_as(identity)
            .telling(events_wake.clone()),
        );
        for hook in runner.names() {
            let hook = || ("hook", hook.clone());
            for outcome in vmpipe_common::metrics::HOOK_OUTCOMES {
                vmpipe_common::metrics::register_series(
                    "vmpipe_hook_runs_total",
                    &[hook(), ("outcome", (*outcome).to_owned())],
                );
            }
            vmpipe_common::metrics::register_series("vmpipe_hook_run_seconds", &[hook()]);
        }
        let index =
            index::IndexWriter::start(self.pool.clone(), runner.names().to_vec(), events_wake);
        let database = index::watch::DatabaseWatch::new(self.pool.clone());
        let context = Arc::new(pipeline::Context {
            settings: self.settings,
            pool: self.pool,
            store: self.store,
            health: Arc::default(),
            database,
            index,
            has_hooks: !runner.names().is_empty(),
            hook_wake: runner.waker(),
            activity,
        });
        info!(health = %self.listener.local_addr().expect("bound"), "worker health endpoints listening");
        let server = Arc::new(health::HealthServer {
            health: context.health.clone(),
            pool: Some(context.pool.clone()),
            metrics: Some(Arc::new(|| vmpipe_common::metrics::handle().render())),
        });
        let http = tokio::spawn(health::serve(self.listener, server, shutdown.clone()));
        let hook_runner = tokio::spawn(runner.run(shutdown.clone()));
        let dispatcher = tokio::spawn(dispatcher.run(shutdown.clone()));
        consumer::consume(context.clone(), shutdown).await;
        let _ = hook_runner.await;
        let _ = dispatcher.await;
        let _ = http.await;
        context.pool.close().await;
        info!("worker stopped");
        Ok(())
    }
}

/// Migrates, then consumes jobs until `shutdown` is cancelled; in-flight jobs finish first.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let worker = tokio::select! {
        worker = Worker::build(settings) => worker?,
        // Stopped while still waiting for the database.
        _ = shutdown.cancelled() => return Ok(()),
    };
    worker.run(shutdown).await
}
