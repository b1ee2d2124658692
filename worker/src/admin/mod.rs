//! Operator commands, one file each (`worker reconcile`, `replay-dead`, `dead-letters`,
//! `reindex`, `prune`, `transcribe`, `transcribe --all`, `probe`, `events list|replay`),
//! sharing how they reach the database, the storage and RabbitMQ, and how their reports stay small ([`report`]).

mod dead_letters;
mod events;
mod probe;
mod prune;
mod queue_hooks;
mod reconcile;
mod reindex;
mod replay_dead;
pub mod report;
mod transcribe;

use lapin::Connection;
use sqlx::PgPool;
use vmpipe_common::amqp::{self, ConfirmChannel};
use vmpipe_common::{Settings, Storage};

use crate::WorkerError;
use crate::index::db;

pub use dead_letters::{DeadLetter, DeadLetterFilter, Dropped, dead_letters, drop_dead_letters};
pub use events::{Delivery, EventFilter, Listed, Replayed, list_events, replay_events};
pub use probe::probe_files;
pub use prune::{PruneOptions, Pruned, parse_age, prune};
pub use queue_hooks::{QueueStatus, Queued, queue_hooks};
pub use reconcile::{Reconciliation, reconcile};
pub use reindex::{Reindexed, reindex};
pub use replay_dead::replay_dead;
pub use transcribe::transcribe;

/// What the commands that read the index share: the database, migrated, and the storage.
struct Admin {
    pool: PgPool,
    store: std::sync::Arc<dyn Storage>,
}

impl Admin {
    async fn open(settings: &Settings) -> Result<Self, WorkerError> {
        let pool = db::connect(settings.database_url.expose(), 2).await?;
        db::migrate(&pool).await?;
        let store = vmpipe_common::store::open_existing(settings)?;
        Ok(Self { pool, store })
    }
}

/// A channel for an admin command, in confirm mode (to publish), with the queues declared.
async fn open_channel(settings: &Settings) -> Result<(Connection, ConfirmChannel), WorkerError> {
    let connection = amqp::connect(settings.amqp_url.expose(), "vmpipe-worker-admin").await?;
    let channel = ConfirmChannel::open(&connection).await?;
    amqp::declare_queues(&channel, &settings.queue).await?;
    Ok((connection, channel))
}
