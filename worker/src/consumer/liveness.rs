//! Whether RabbitMQ still answers while the worker consumes.
//!
//! A hung broker (stopped, wedged, a network path that drops everything) keeps the connection
//! open and simply delivers nothing, which looks like an idle queue. AMQP heartbeats notice it
//! only after two missed intervals (a minute or more). So, while consuming, the worker asks
//! RabbitMQ for a small sign of life on a channel of its own (a passive declare of the job
//! queue, which changes nothing) every few seconds; one left unanswered for a few seconds
//! makes `/readyz` 503 ("connected but not answering") until the answer comes.

use std::sync::Arc;
use std::time::Duration;

use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tracing::{debug, info, warn};

use crate::health::Health;

/// How often RabbitMQ is asked.
const EVERY: Duration = Duration::from_secs(3);
/// How long an answer may take before the worker reports not ready.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Asks RabbitMQ for a sign of life on `channel` until the task is aborted (the consumer's
/// connection ends) or the channel fails (the consumer sees that loss too). One request is
/// outstanding at a time: a late answer is waited for, not piled on.
pub(super) async fn watch(channel: Channel, queue: String, health: Arc<Health>) {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    loop {
        tokio::time::sleep(EVERY).await;
        let asked = tokio::time::Instant::now();
        let answer = channel.queue_declare(queue.as_str().into(), options, FieldTable::default());
        tokio::pin!(answer);
        let answered = match tokio::time::timeout(TIMEOUT, &mut answer).await {
            Ok(answered) => answered,
            Err(_) => {
                if !health.set_unanswered(true) {
                    warn!(
                        timeout_ms = TIMEOUT.as_millis() as u64,
                        "RabbitMQ is connected but does not answer; not ready until it does"
                    );
                }
                answer.await
            }
        };
        match answered {
            Ok(_) => {
                if health.set_unanswered(false) {
                    info!(
                        after_ms = asked.elapsed().as_millis() as u64,
                        "RabbitMQ answers again"
                    );
                }
            }
            Err(e) => {
                // The channel or the connection is gone: the consumer reconnects.
                debug!(error = %e, "RabbitMQ sign-of-life request failed");
                return;
            }
        }
    }
}
