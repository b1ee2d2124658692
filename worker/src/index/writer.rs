//! Batching the index writes: the jobs in progress hand their rows to one writer, which
//! upserts whatever has arrived in one statement and one commit.
//!
//! No timer: the writer takes what is waiting (up to a limit) the moment it is free, so a lone
//! job is written at once and a backlog is written in batches that grow with it. A batch that
//! the database refuses is retried row by row, so that one bad row fails only its own job.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Notify, mpsc, oneshot};

use super::VoicemailRow;
use super::db::{self, DbError};

/// Rows written per statement at most.
pub(crate) const MAX_BATCH: usize = 256;

struct Pending {
    row: VoicemailRow,
    written: oneshot::Sender<Result<bool, DbError>>,
}

/// The handle jobs write through; the writer task ends when every handle is dropped.
#[derive(Clone)]
pub(crate) struct IndexWriter {
    rows: mpsc::Sender<Pending>,
}

impl IndexWriter {
    /// Starts the writer; `hooks` are queued with every new voicemail, and `events` is
    /// notified after each commit (which wrote their events to the outbox).
    pub(crate) fn start(pool: PgPool, hooks: Vec<String>, events: Arc<Notify>) -> Self {
        let (rows, incoming) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(write_batches(pool, hooks, events, incoming));
        Self { rows }
    }

    /// Upserts `row` (with the other rows waiting); whether it was written.
    pub(crate) async fn upsert(&self, row: VoicemailRow) -> Result<bool, DbError> {
        let (written, answer) = oneshot::channel();
        let gone = || DbError::WriterStopped;
        self.rows
            .send(Pending { row, written })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn write_batches(
    pool: PgPool,
    hooks: Vec<String>,
    events: Arc<Notify>,
    mut incoming: mpsc::Receiver<Pending>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while incoming.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // A job that stopped waiting (its delivery's channel is gone) wants no row written
        // for an ack that cannot follow: RabbitMQ delivers it again.
        batch.retain(|pending| !pending.written.is_closed());
        if batch.is_empty() {
            continue;
        }
        metrics::histogram!("vmpipe_index_batch_rows").record(batch.len() as f64);
        let rows: Vec<&VoicemailRow> = batch.iter().map(|p| &p.row).collect();
        match db::upsert_voicemails(&pool, &rows, &hooks).await {
            Ok(written) => {
                events.notify_one();
                count_new_voicemails(&written);
                for pending in batch.drain(..) {
                    let was_written = written
                        .iter()
                        .any(|(key, _)| *key == pending.row.storage_key);
                    let _ = pending.written.send(Ok(was_written));
                }
            }
            Err(e) => {
                let error = DbError::from(e);
                if error.is_transient() || batch.len() == 1 {
                    for pending in batch.drain(..) {
                        let _ = pending.written.send(Err(error.clone()));
                    }
                } else {
                    // Find the row the database refuses: each on its own.
                    for pending in batch.drain(..) {
                        let result = db::upsert_voicemails(&pool, &[&pending.row], &hooks)
                            .await
                            .map(|written| {
                                count_new_voicemails(&written);
                                !written.is_empty()
                            })
                            .map_err(DbError::from);
                        let _ = pending.written.send(result);
                    }
                    events.notify_one();
                }
            }
        }
    }
}

/// Counts the voicemails indexed for the first time: a job delivered again, or a newer upload
/// of the same key, updates its row and is not counted.
fn count_new_voicemails(written: &[(String, bool)]) {
    let new = written.iter().filter(|(_, inserted)| *inserted).count() as u64;
    metrics::counter!("vmpipe_voicemails_indexed_total").increment(new);
}
