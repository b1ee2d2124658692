//! RabbitMQ: the broker URL, and a test's own queue (with its dead-letter queue) to read the
//! jobs ingest publishes, publish jobs of its own, and look at dead letters.

use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions};
use vmpipe_common::VoicemailJob;

pub fn amqp_url() -> String {
    std::env::var("VMPIPE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A test's view of its RabbitMQ queue.
pub struct TestQueue {
    pub name: String,
    pub(crate) channel: lapin::Channel,
    pub(crate) connection: lapin::Connection,
}

impl TestQueue {
    /// Declares `name` (and its dead-letter queue) exactly as the services do.
    pub async fn declare(name: &str) -> Self {
        let connection = vmpipe_common::amqp::connect(&amqp_url(), "vmpipe-tests")
            .await
            .expect("RabbitMQ reachable (start it, or set VMPIPE_TEST_AMQP_URL)");
        let channel = connection.create_channel().await.expect("channel");
        vmpipe_common::amqp::declare_queues(&channel, name)
            .await
            .expect("declare");
        Self {
            name: name.to_owned(),
            channel,
            connection,
        }
    }

    /// Waits up to `timeout` for the next message and acks it.
    pub async fn next(&self, timeout: Duration) -> Option<(VoicemailJob, lapin::BasicProperties)> {
        let delivery = self.take(&self.name, timeout).await?;
        let job = VoicemailJob::from_json(&delivery.data).expect("job JSON");
        Some((job, delivery.properties))
    }

    /// Waits up to `timeout` for a message on `queue`, and acks it.
    async fn take(&self, queue: &str, timeout: Duration) -> Option<lapin::message::Delivery> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self
                .channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .expect("basic_get");
            if let Some(message) = got {
                message
                    .delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("ack");
                return Some(message.delivery);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes raw bytes as a job, as ingest would (persistent, confirmed).
    pub async fn publish(&self, payload: &[u8]) {
        self.channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.name.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                payload,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack());
    }

    /// The next dead letter: its body and the reason the worker gave.
    pub async fn next_dead(&self, timeout: Duration) -> Option<(Vec<u8>, Option<String>)> {
        let delivery = self.take(&format!("{}.dead", self.name), timeout).await?;
        let reason = vmpipe_common::amqp::header_text(&delivery.properties, "x-vmpipe-error");
        Some((delivery.data, reason))
    }

    /// Takes the next message without acking and gives it back, `times` times, as a worker
    /// that keeps crashing mid-job would (RabbitMQ counts the deliveries).
    pub async fn redeliver_unacked(&self, times: usize) {
        for _ in 0..times {
            let message = loop {
                if let Some(m) = self
                    .channel
                    .basic_get(self.name.as_str().into(), BasicGetOptions::default())
                    .await
                    .expect("basic_get")
                {
                    break m;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            message
                .delivery
                .nack(lapin::options::BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .expect("nack");
        }
    }

    /// The reasons of every dead letter now in the dead-letter queue, which keeps them.
    pub async fn dead_reasons(&self) -> Vec<String> {
        let dead = format!("{}.dead", self.name);
        let mut held = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(dead.as_str().into(), BasicGetOptions::default())
            .await
            .expect("basic_get")
        {
            held.push(message);
        }
        let reasons = held
            .iter()
            .map(|m| {
                vmpipe_common::amqp::header_text(&m.delivery.properties, "x-vmpipe-error")
                    .unwrap_or_default()
            })
            .collect();
        for message in held {
            message
                .delivery
                .nack(lapin::options::BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .expect("nack");
        }
        reasons
    }

    pub async fn delete(self) {
        for name in [format!("{}.dead", self.name), self.name.clone()] {
            let _ = self
                .channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self.connection.close(200, "done".into()).await;
    }
}
