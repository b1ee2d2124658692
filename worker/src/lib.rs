//! vmpipe worker: consumes the jobs ingest publishes and indexes each voicemail.
//!
//! This first version connects, declares the job queues and waits; indexing comes next.

use tokio_util::sync::CancellationToken;
use tracing::info;
use vmpipe_common::{Settings, amqp};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
}

/// Runs until `shutdown` is cancelled.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let connection = amqp::connect(settings.amqp_url.expose(), "vmpipe-worker").await?;
    let channel = connection.create_channel().await?;
    amqp::declare_queues(&channel, &settings.queue).await?;
    info!(queue = %settings.queue, "worker ready");
    shutdown.cancelled().await;
    let _ = connection.close(200, "worker stopping".into()).await;
    info!("worker stopped");
    Ok(())
}
