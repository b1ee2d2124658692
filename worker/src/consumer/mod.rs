//! Consuming jobs from RabbitMQ: at-least-once, acked only after the row is committed.
//!
//! Each delivery runs in its own task (a panic there cannot stop the consumer). The number in
//! flight is bounded by the channel's prefetch. The job itself is the [`pipeline`]'s; how the
//! delivery is then settled (ack, requeue, retry later, dead-letter) is decided by
//! [`settle::settle`] from its outcome and delivery count. A job waiting to be retried stays
//! unacked, so a crash or shutdown hands it back to RabbitMQ.
//!
//! When the connection or channel is lost, the consumer sees its stream end and says so at
//! once (not ready, a warning), even while the jobs in hand wait on the database: those jobs
//! are let go (RabbitMQ delivers them again), never "acked" on the dead channel. A settlement
//! counts only if RabbitMQ took it.
//!
//! [`pipeline`]: crate::pipeline

mod liveness;
mod settle;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};
use vmpipe_common::amqp::{self, ConfirmChannel, ERROR_HEADER, FAILED_AT_HEADER, PublishError};
use vmpipe_common::backoff::Backoff;

use crate::error::JobError;
use crate::pipeline::{Context, Stop, process};
use settle::{Outcome, Settlement, settle, should_process};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConsumeError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ ended the consumer")]
    ConsumerEnded,
    /// The connection or channel went away after consuming had started (already logged).
    #[error("RabbitMQ connection lost")]
    Lost,
}

/// Consumes until `shutdown`, reconnecting to RabbitMQ with backoff (at most a few seconds
/// apart) when the connection drops.
pub(crate) async fn consume(context: Arc<Context>, shutdown: CancellationToken) {
    let mut delay = Backoff::reconnect();
    loop {
        let result = consume_once(&context, &shutdown).await;
        context.health.set_consuming(false);
        match result {
            Ok(()) => return,
            // It had connected: the first reconnect comes soon.
            Err(ConsumeError::Lost) => delay.reset(),
            Err(ConsumeError::Amqp(e)) if amqp::refused_credentials(&e) => {
                context.health.set_credentials_refused(true);
                error!(error = %e, "RabbitMQ refused the credentials in VMPIPE_AMQP_URL; retrying");
            }
            Err(e) => warn!(error = %e, "RabbitMQ connection lost or refused; reconnecting"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay.next_delay()) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One connection's worth of consuming. Returns Ok on shutdown (after in-flight jobs finish).
async fn consume_once(
    context: &Arc<Context>,
    shutdown: &CancellationToken,
) -> Result<(), ConsumeError> {
    let settings = &context.settings;
    let connection = amqp::connect(settings.amqp_url.expose(), "vmpipe-worker").await?;
    let channel = connection.create_channel().await?;
    amqp::declare_queues(&channel, &settings.queue).await?;
    channel
        .basic_qos(settings.worker_concurrency, BasicQosOptions::default())
        .await?;
    // Dead letters are published with confirms: a job is acked only once its dead letter is safe.
    let dead_letters = ConfirmChannel::open(&connection).await?;
    let mut consumer = channel
        .basic_consume(
            settings.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    info!(queue = %settings.queue, concurrency = settings.worker_concurrency, "consuming jobs");
    context.health.set_consuming(true);
    let watchdog = tokio::spawn(liveness::watch(
        connection.create_channel().await?,
        settings.queue.clone(),
        context.health.clone(),
    ));

    let tasks = TaskTracker::new();
    let stop = Stop {
        shutdown: shutdown.clone(),
        channel_lost: CancellationToken::new(),
    };
    let ended = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break None,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let context = context.clone();
                    let dead_letters = dead_letters.clone();
                    let stop = stop.clone();
                    tasks.spawn(async move {
                        handle_delivery(&context, &dead_letters, delivery, &stop).await;
                    });
                }
                Some(Err(e)) => break Some(ConsumeError::Amqp(e)),
                None => break Some(ConsumeError::ConsumerEnded),
            }
        }
    };
    tasks.close();
    let result = match ended {
        None => {
            // Stop new deliveries, let the jobs in hand finish (their acks need the channel).
            let _ = channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await;
            tasks.wait().await;
            Ok(())
        }
        Some(error) => {
            // Nothing in hand can be settled any more: say so now, and let the jobs go rather
            // than finish them for an ack that cannot happen.
            context.health.set_consuming(false);
            stop.channel_lost.cancel();
            warn!(error = %error, jobs_in_hand = tasks.len(),
                "RabbitMQ connection lost; the jobs in hand are let go (RabbitMQ delivers them again); reconnecting");
            tasks.wait().await;
            Err(ConsumeError::Lost)
        }
    };
    watchdog.abort();
    // A broken connection may never answer a close: do not wait on it.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        connection.close(200, "worker stopping".into()),
    )
    .await;
    result
}

async fn handle_delivery(
    context: &Context,
    dead_letters: &ConfirmChannel,
    delivery: Delivery,
    stop: &Stop,
) {
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string())
        .unwrap_or_default();
    let span = info_span!("job", job_id = %message_id, storage_key = tracing::field::Empty,
        request_id = tracing::field::Empty, redelivered = delivery.redelivered);
    async {
        let _active = context.activity.begin();
        let deliveries = delivery_count(&delivery) + 1;
        let max = u64::from(context.settings.max_deliveries);
        let outcome = if should_process(deliveries, max) {
            match process(context, &delivery.data, stop).await {
                Ok(()) => Outcome::Indexed,
                Err(JobError::Interrupted) if stop.channel_lost() => Outcome::ChannelLost,
                Err(error) => Outcome::Failed(error),
            }
        } else {
            Outcome::NeverCompleted
        };
        let settlement = settle(&outcome, deliveries, max);
        let settled = match &settlement {
            Settlement::LetGo => {
                debug!("job let go: its channel is gone, RabbitMQ delivers it again");
                Ok(false)
            }
            Settlement::Ack => delivery.ack(BasicAckOptions::default()).await,
            Settlement::Requeue => requeue(&delivery).await,
            Settlement::RetryAfter(wait) => {
                if let Outcome::Failed(reason) = &outcome {
                    warn!(error = %reason, code = reason.code(), deliveries,
                        retry_in_ms = wait.as_millis() as u64, "job failed; it will be retried");
                }
                match stop.wait(tokio::time::sleep(*wait)).await {
                    Err(_) if stop.channel_lost() => Ok(false),
                    _ => requeue(&delivery).await,
                }
            }
            Settlement::DeadLetter(reason) => {
                let code = match &outcome {
                    Outcome::Failed(error) => error.code(),
                    _ => "never_completed",
                };
                warn!(%reason, code, "job can never succeed; dead-lettering it");
                let queue = amqp::dead_letter_queue(&context.settings.queue);
                match dead_letter(dead_letters, &queue, &delivery, reason).await {
                    Ok(()) => delivery.ack(BasicAckOptions::default()).await,
                    Err(e) => {
                        // The queue's own dead-letter route still keeps it (without the reason).
                        error!(error = %e, "could not publish the dead letter; rejecting instead");
                        delivery.nack(BasicNackOptions::default()).await
                    }
                }
            }
        };
        // Only what RabbitMQ took counts: `Ok(false)` is an acker whose channel is gone.
        let abandoned = Settlement::LetGo.metric_label();
        let label = match settled {
            Ok(true) => settlement.metric_label(),
            Ok(false) if settlement == Settlement::LetGo => abandoned,
            Ok(false) => {
                warn!(
                    settlement = settlement.metric_label(),
                    "could not settle the delivery: its channel is gone; RabbitMQ delivers it again"
                );
                abandoned
            }
            Err(e) => {
                warn!(error = %e, settlement = settlement.metric_label(),
                    "could not settle the delivery; RabbitMQ delivers it again");
                abandoned
            }
        };
        metrics::counter!("vmpipe_jobs_total", "outcome" => label).increment(1);
    }
    .instrument(span)
    .await
}

/// Earlier deliveries of this message, as RabbitMQ's quorum queues count them.
fn delivery_count(delivery: &Delivery) -> u64 {
    let count = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned());
    match count {
        Some(AMQPValue::LongLongInt(n)) => n.max(0) as u64,
        Some(AMQPValue::LongInt(n)) => n.max(0) as u64,
        Some(AMQPValue::ShortInt(n)) => n.max(0) as u64,
        Some(AMQPValue::LongUInt(n)) => u64::from(n),
        _ => u64::from(delivery.redelivered),
    }
}

async fn requeue(delivery: &Delivery) -> Result<bool, lapin::Error> {
    delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
}

/// Publishes the delivery to the dead-letter queue with the reason and the time in its
/// headers, and waits for the confirm.
async fn dead_letter(
    channel: &ConfirmChannel,
    queue: &str,
    delivery: &Delivery,
    reason: &str,
) -> Result<(), PublishError> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(ERROR_HEADER.into(), AMQPValue::LongString(reason.into()));
    headers.insert(
        FAILED_AT_HEADER.into(),
        AMQPValue::LongString(chrono::Utc::now().to_rfc3339().into()),
    );
    let properties = amqp::message_properties().with_headers(headers);
    let properties = match delivery.properties.message_id() {
        Some(id) => properties.with_message_id(id.clone()),
        None => properties,
    };
    amqp::publish_confirmed(channel, queue, &delivery.data, properties).await
}
