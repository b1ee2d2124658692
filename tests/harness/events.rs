//! Events: a consumer bound to an `amqp` sink's exchange, the `[[notify]]` sinks tests give a
//! worker, and the settings file a worker process reads them from.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use serde_json::Value;
use vmpipe_common::settings::{HookSettings, NotifyKind, NotifySettings, Secret, SecretUrl};

use crate::queue::amqp_url;

/// An event as a consumer of the exchange got it.
#[derive(Debug, Clone)]
pub struct AmqpEvent {
    pub routing_key: String,
    /// The AMQP `message_id`: the event's `event_id`.
    pub message_id: Option<String>,
    pub persistent: bool,
    pub body: Value,
}

impl AmqpEvent {
    pub fn event_id(&self) -> &str {
        self.body["event_id"].as_str().expect("event_id")
    }

    pub fn kind(&self) -> &str {
        self.body["type"].as_str().expect("type")
    }
}

/// A queue of the test's own bound to `exchange` with `voicemail.#`: every event.
pub struct EventConsumer {
    pub exchange: String,
    channel: lapin::Channel,
    _connection: lapin::Connection,
    messages: lapin::Consumer,
}

impl EventConsumer {
    /// Declares `exchange` as the sink does (durable topic) and binds a queue to it.
    pub async fn bind(exchange: &str) -> Self {
        let connection = vmpipe_common::amqp::connect(&amqp_url(), "vmpipe-tests events")
            .await
            .expect("RabbitMQ reachable");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare the exchange");
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare a queue");
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                "voicemail.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        let messages = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        Self {
            exchange: exchange.to_owned(),
            channel,
            _connection: connection,
            messages,
        }
    }

    /// The next event, within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<AmqpEvent> {
        let delivery = tokio::time::timeout(timeout, self.messages.next())
            .await
            .ok()??
            .expect("a delivery");
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
        Some(AmqpEvent {
            routing_key: delivery.routing_key.to_string(),
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string()),
            persistent: *delivery.properties.delivery_mode() == Some(2),
            body: serde_json::from_slice(&delivery.data).expect("an event is JSON"),
        })
    }

    /// `count` events, failing the test if they do not arrive within `timeout`.
    pub async fn take(&mut self, count: usize, timeout: Duration) -> Vec<AmqpEvent> {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::with_capacity(count);
        while events.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(event) => events.push(event),
                None => panic!(
                    "{} of {count} events arrived within {timeout:?}: {events:#?}",
                    events.len()
                ),
            }
        }
        events
    }

    /// Every event that arrives until none has for `quiet`.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<AmqpEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next(quiet).await {
            events.push(event);
        }
        events
    }

    /// Deletes the exchange (the queue goes with the connection).
    pub async fn delete(self) {
        let _ = self
            .channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

/// An `amqp` sink publishing to `exchange` (a test's own), retrying after 100 ms.
pub fn amqp_sink(name: &str, exchange: &str) -> NotifySettings {
    NotifySettings {
        exchange: Some(exchange.to_owned()),
        retry_delay_ms: 100,
        ..NotifySettings::new(name, NotifyKind::Amqp)
    }
}

/// A `webhook` sink POSTing to `url`, signed with `secret`, retrying after 100 ms.
pub fn webhook_sink(name: &str, url: &str, secret: &str) -> NotifySettings {
    NotifySettings {
        url: Some(SecretUrl(url.to_owned())),
        secret: Some(Secret(secret.to_owned())),
        retry_delay_ms: 100,
        ..NotifySettings::new(name, NotifyKind::Webhook)
    }
}

/// Writes `hooks` and `notify` as the tables of a settings file in `dir` (both are settings of
/// the file only) for a worker process, and returns its path (`VMPIPE_CONFIG`).
pub fn settings_file(dir: &Path, hooks: &[HookSettings], notify: &[NotifySettings]) -> PathBuf {
    #[derive(serde::Serialize)]
    struct File<'a> {
        hooks: &'a [HookSettings],
        notify: &'a [NotifySettings],
    }
    let toml = toml::to_string(&File { hooks, notify }).expect("settings as TOML");
    let path = dir.join("vmpipe.toml");
    std::fs::write(&path, toml).expect("write the settings file");
    path
}
