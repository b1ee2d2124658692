//! vmpipe worker: consumes the jobs ingest publishes and indexes each voicemail into
//! PostgreSQL (the `voicemails` table), with its duration measured from the audio.

pub mod consumer;
pub mod db;
pub mod index;
pub mod probe;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;
use vmpipe_common::{FsStore, Settings, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

/// Connects to PostgreSQL (creating the database if needed) and applies pending migrations.
pub async fn migrate(settings: &Settings) -> Result<sqlx::PgPool, WorkerError> {
    let connections = u32::from(settings.worker_concurrency).clamp(2, 32);
    let pool = db::connect(settings.database_url.expose(), connections).await?;
    db::migrate(&pool).await?;
    info!(database = %settings.database_url, "database migrated");
    Ok(pool)
}

/// Migrates, then consumes jobs until `shutdown` is cancelled; in-flight jobs finish first.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let pool = migrate(&settings).await?;
    let store = FsStore::open(&settings.storage_dir)?;
    let context = Arc::new(consumer::Context {
        settings,
        pool: pool.clone(),
        store,
    });
    consumer::consume(context, shutdown).await;
    pool.close().await;
    info!("worker stopped");
    Ok(())
}
