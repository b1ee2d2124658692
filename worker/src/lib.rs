//! vmpipe worker: consumes the jobs ingest publishes and indexes each voicemail into
//! PostgreSQL (the `voicemails` table), with its duration measured from the audio.

pub mod admin;
pub mod batch;
pub mod consumer;
pub mod db;
pub mod hooks;
pub mod http;
pub mod index;
pub mod probe;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use vmpipe_common::settings::Transcriber;
use vmpipe_common::{FsStore, Settings, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("{0}")]
    Refused(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("hook: {0}")]
    Hook(#[from] hooks::HookError),
    #[error(transparent)]
    Runner(#[from] hooks::runner::RunnerError),
}

/// The message of a caught panic (a probe on hostile audio, a compiled-in hook).
pub(crate) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Connects to PostgreSQL (creating the database if needed) and applies pending migrations.
pub async fn migrate(settings: &Settings) -> Result<sqlx::PgPool, WorkerError> {
    let connections = u32::from(settings.worker_concurrency).clamp(2, 32);
    let pool = db::connect(settings.database_url.expose(), connections).await?;
    db::migrate(&pool).await?;
    info!(database = %settings.database_url, "database migrated");
    Ok(pool)
}

/// A worker ready to run: database migrated, health address bound, hooks configured.
pub struct Worker {
    settings: Settings,
    pool: sqlx::PgPool,
    store: FsStore,
    hooks: Vec<Arc<dyn hooks::Hook>>,
    listener: tokio::net::TcpListener,
}

impl Worker {
    pub async fn build(settings: Settings) -> Result<Self, WorkerError> {
        vmpipe_common::metrics::handle();
        let hooks = hooks::from_settings(&settings)?;
        let pool = migrate(&settings).await?;
        let store = FsStore::open(&settings.storage_dir)?;
        let listener = tokio::net::TcpListener::bind(&settings.worker_listen)
            .await
            .map_err(|source| WorkerError::Listen {
                addr: settings.worker_listen.clone(),
                source,
            })?;
        Ok(Self {
            settings,
            pool,
            store,
            hooks,
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
        let activity = Arc::new(consumer::Activity::default());
        if self.settings.transcriber == Transcriber::Pocketsphinx {
            // Early word of a missing engine, checked off the start-up path.
            let activity = activity.clone();
            tokio::spawn(async move {
                activity
                    .wait_quiet(Duration::from_secs(1), Duration::from_secs(60))
                    .await;
                if let Err(problem) = hooks::command::pocketsphinx_available().await {
                    error!(%problem, "VMPIPE_TRANSCRIBER=pocketsphinx, but PocketSphinx cannot \
                        run: voicemails are indexed, their transcriptions fail until it is installed");
                }
            });
        }
        let runner = Arc::new(hooks::runner::HookRunner::new(
            self.pool.clone(),
            self.store.clone(),
            self.hooks,
            usize::from(self.settings.hook_concurrency),
            activity.clone(),
        ));
        let index = batch::IndexWriter::start(self.pool.clone(), runner.names().to_vec());
        let context = Arc::new(consumer::Context {
            settings: self.settings,
            pool: self.pool,
            store: self.store,
            health: Arc::default(),
            index,
            has_hooks: !runner.names().is_empty(),
            hook_wake: runner.waker(),
            activity,
        });
        info!(health = %self.listener.local_addr().expect("bound"), "worker health endpoints listening");
        let server = Arc::new(http::HealthServer {
            health: context.health.clone(),
            pool: context.pool.clone(),
            metrics: Some(Arc::new(|| vmpipe_common::metrics::handle().render())),
        });
        let http = tokio::spawn(http::serve(self.listener, server, shutdown.clone()));
        let hook_runner = tokio::spawn(runner.run(shutdown.clone()));
        consumer::consume(context.clone(), shutdown).await;
        let _ = hook_runner.await;
        let _ = http.await;
        context.pool.close().await;
        info!("worker stopped");
        Ok(())
    }
}

/// `worker transcribe`: runs the configured hooks for one voicemail (its id or storage key)
/// now, and returns their rows.
pub async fn transcribe(
    settings: &Settings,
    voicemail: &str,
    only: Option<&str>,
) -> Result<Vec<hooks::runner::TranscriptionReport>, WorkerError> {
    let hooks = hooks::from_settings(settings)?;
    let pool = migrate(settings).await?;
    let store = FsStore::open(&settings.storage_dir)?;
    let runner = hooks::runner::HookRunner::new(pool.clone(), store, hooks, 1, Arc::default());
    let reports = runner.transcribe_now(voicemail, only).await;
    pool.close().await;
    Ok(reports?)
}

/// Migrates, then consumes jobs until `shutdown` is cancelled; in-flight jobs finish first.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), WorkerError> {
    Worker::build(settings).await?.run(shutdown).await
}
