//! The `amqp` sink: publishes each event to a durable topic exchange (`vmpipe.events` unless
//! the sink names another), routing key `{type}.{account_id}` (`none` for a voicemail without
//! an account), persistent, and counts it delivered when RabbitMQ confirms it.
//!
//! The exchange is declared (topic, durable) when the sink connects. Messages are not
//! `mandatory`: an event that no queue is bound to take is dropped by RabbitMQ, as on any
//! topic exchange; bind a durable queue (`voicemail.#`, say) to keep them.

use std::time::Duration;

use futures_util::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Confirmation, Connection, ExchangeKind};
use tokio::sync::Mutex;
use vmpipe_common::Settings;
use vmpipe_common::amqp::{ConfirmChannel, message_properties};
use vmpipe_common::settings::{DEFAULT_EVENTS_EXCHANGE, NotifySettings};

use super::{DeliveryError, Event, Sink};

pub(super) struct AmqpSink {
    url: String,
    exchange: String,
    timeout: Duration,
    /// The connection and its confirm channel, made at the first delivery and again after a
    /// failure; numbered, so that a failure closes only the connection it happened on.
    link: Mutex<Option<(u64, Connection, ConfirmChannel)>>,
    generation: std::sync::atomic::AtomicU64,
}

impl AmqpSink {
    pub(super) fn new(settings: &NotifySettings, all: &Settings) -> Self {
        Self {
            url: settings
                .url
                .as_ref()
                .unwrap_or(&all.amqp_url)
                .expose()
                .to_owned(),
            exchange: settings
                .exchange
                .clone()
                .unwrap_or_else(|| DEFAULT_EVENTS_EXCHANGE.to_owned()),
            timeout: settings.timeout(),
            link: Mutex::new(None),
            generation: Default::default(),
        }
    }

    /// The confirm channel, connecting (and declaring the exchange) if there is none.
    async fn channel(&self) -> Result<(u64, ConfirmChannel), DeliveryError> {
        let mut link = self.link.lock().await;
        if let Some((generation, connection, channel)) = link.as_ref()
            && connection.status().connected()
            && channel.status().connected()
        {
            return Ok((*generation, channel.clone()));
        }
        let connect = async {
            let connection =
                vmpipe_common::amqp::connect(&self.url, "vmpipe-worker events").await?;
            let channel = ConfirmChannel::open(&connection).await?;
            channel
                .exchange_declare(
                    self.exchange.as_str().into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((connection, channel))
        };
        let (connection, channel) = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| DeliveryError::retry("connecting to RabbitMQ timed out"))?
            .map_err(|e| DeliveryError::retry(format!("connecting to RabbitMQ: {e}")))?;
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *link = Some((generation, connection, channel.clone()));
        Ok((generation, channel))
    }

    /// Drops connection `generation` after a failure on it (not a newer one another delivery
    /// made meanwhile): the next delivery connects again.
    async fn reset(&self, generation: u64) {
        let mut link = self.link.lock().await;
        if link
            .as_ref()
            .is_some_and(|(current, _, _)| *current == generation)
            && let Some((_, connection, _)) = link.take()
        {
            drop(link);
            let _ = connection.close(0, "reconnecting".into()).await;
        }
    }

    async fn publish(&self, event: &Event) -> Result<(), DeliveryError> {
        let (generation, channel) = self.channel().await?;
        let body = serde_json::to_vec(event).expect("an event serialises");
        let properties = message_properties()
            .with_message_id(event.event_id.to_string().into())
            .with_type(event.kind.as_str().into())
            .with_app_id("vmpipe".into())
            .with_timestamp(event.occurred_at.timestamp().max(0) as u64);
        let published = async {
            channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    routing_key(event).into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await?
                .await
        };
        // A nack is the broker's answer on a working channel; anything else may mean the
        // connection is gone.
        let (confirmed, broken) = match tokio::time::timeout(self.timeout, published).await {
            Err(_) => (
                Err(DeliveryError::retry("RabbitMQ did not confirm in time")),
                true,
            ),
            Ok(Err(e)) => (Err(DeliveryError::retry(format!("publishing: {e}"))), true),
            Ok(Ok(Confirmation::Ack(_))) => (Ok(()), false),
            Ok(Ok(Confirmation::Nack(_))) => {
                (Err(DeliveryError::retry("RabbitMQ refused (nack)")), false)
            }
            Ok(Ok(Confirmation::NotRequested)) => (
                Err(DeliveryError::retry("the channel is not in confirm mode")),
                true,
            ),
        };
        if broken {
            self.reset(generation).await;
        }
        confirmed
    }
}

/// `{type}.{account_id}`: `voicemail.indexed.4a8c…`; `none` for no account.
fn routing_key(event: &Event) -> String {
    format!(
        "{}.{}",
        event.kind,
        event.account_id.as_deref().unwrap_or("none")
    )
}

impl Sink for AmqpSink {
    fn deliver<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(self.publish(event))
    }
}
