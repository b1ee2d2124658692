//! vmpipe worker: consumes the jobs ingest publishes and indexes each voicemail into
//! PostgreSQL (the `voicemails` table), with its duration measured from the audio.

pub mod admin;
pub mod consumer;
pub mod db;
pub mod http;
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
}

/// Connects to PostgreSQL (creating the database if needed) and applies pending migrations.
pub async fn migrate(settings: &Settings) -> Result<sqlx::PgPool, WorkerError> {
    let connections = u32::from(settings.worker_concurrency).clamp(2, 32);
    let pool = db::connect(settings.database_url.expose(), connections).await?;
    db::migrate(&pool).await?;
    info!(database = %settings.database_url, "database migrated");
    Ok(pool)
}

/// A worker ready to run: database migrated, health address bound.
pub struct Worker {
    context: Arc<consumer::Context>,
    listener: tokio::net::TcpListener,
}

impl Worker {
    pub async fn build(settings: Settings) -> Result<Self, WorkerError> {
        vmpipe_common::metrics::handle();
        let pool = migrate(&settings).await?;
        let store = FsStore::open(&settings.storage_dir)?;
        let listener = tokio::net::TcpListener::bind(&settings.worker_listen)
            .await
            .map_err(|source| WorkerError::Listen {
                addr: settings.worker_listen.clone(),
                source,
            })?;
        Ok(Self {
            context: Arc::new(consumer::Context {
                settings,
                pool,
                store,
                health: Arc::default(),
            }),
            listener,
        })
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub fn health_addr(&self) -> std::net::SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// Consumes jobs until `shutdown` is cancelled; in-flight jobs finish first.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let context = self.context;
        info!(health = %self.listener.local_addr().expect("bound"), "worker health endpoints listening");
        let server = Arc::new(http::HealthServer {
            health: context.health.clone(),
            pool: context.pool.clone(),
            metrics: Some(Arc::new(|| vmpipe_common::metrics::handle().render())),
        });
        let http = tokio::spawn(http::serve(self.listener, server, shutdown.clone()));
        consumer::consume(context.clone(), shutdown).await;
        let _ = http.await;
        context.pool.close().await;
        info!("worker stopped");
        Ok(())
    }
}

/// Migrates, then consumes jobs until `shutdown` is cancelled; in-flight jobs finish first.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), WorkerError> {
    Worker::build(settings).await?.run(shutdown).await
}
