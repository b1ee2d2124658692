//! Publishing with a publisher confirm: the only way vmpipe puts a message on a queue.
//!
//! A message counts as safe only when RabbitMQ confirms it. It is published `mandatory` to the
//! default exchange, so a message that no queue takes comes back instead of vanishing, and
//! that is an error here too.

use std::ops::Deref;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use crate::VoicemailJob;

/// Header of a dead letter: why the job can never succeed.
pub const ERROR_HEADER: &str = "x-vmpipe-error";
/// Header of a dead letter: when it was dead-lettered (RFC 3339).
pub const FAILED_AT_HEADER: &str = "x-vmpipe-failed-at";

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    #[error("RabbitMQ could not route the message to the queue")]
    Unroutable,
    #[error("the channel is not in confirm mode, so the message is not known to be safe")]
    NotConfirmed,
}

/// A channel in confirm mode: the only kind [`publish_confirmed`] takes, so no message can be
/// published without RabbitMQ's word that it is safe.
#[derive(Clone)]
pub struct ConfirmChannel(Channel);

impl ConfirmChannel {
    /// Opens a channel on `connection` and puts it in confirm mode.
    pub async fn open(connection: &Connection) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self(channel))
    }
}

impl Deref for ConfirmChannel {
    type Target = Channel;

    fn deref(&self) -> &Channel {
        &self.0
    }
}

/// Persistent JSON: the properties every vmpipe message has.
pub fn message_properties() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}

/// A job's message: its AMQP `message_id` is the job id and its `correlation_id` the upload's
/// request id.
pub fn job_properties(job: &VoicemailJob) -> BasicProperties {
    job_properties_of(
        job.job_id,
        &job.request_id,
        job.received_at.timestamp().max(0) as u64,
    )
}

/// [`job_properties`] from the job's id, request id and time received (Unix seconds).
pub fn job_properties_of(
    job_id: uuid::Uuid,
    request_id: &str,
    received_secs: u64,
) -> BasicProperties {
    message_properties()
        .with_message_id(job_id.to_string().into())
        .with_correlation_id(request_id.into())
        .with_timestamp(received_secs)
}

/// Publishes `payload` to `queue` on `channel` and waits for RabbitMQ's confirm.
pub async fn publish_confirmed(
    channel: &ConfirmChannel,
    queue: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<(), PublishError> {
    publish(channel, queue, payload, properties)
        .await?
        .confirmed()
        .await
}

/// Publishes `payload` to `queue` on `channel` (`mandatory`), returning once its frames are on
/// their way: many can be in flight at once, each safe only when its [`Pending::confirmed`]
/// says so.
pub async fn publish(
    channel: &ConfirmChannel,
    queue: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<Pending, PublishError> {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            payload,
            properties,
        )
        .await?;
    Ok(Pending(confirm))
}

/// A message published, its confirm awaited.
pub struct Pending(lapin::PublisherConfirm);

impl Pending {
    /// RabbitMQ's word on it: taken by the queue, or why not.
    pub async fn confirmed(self) -> Result<(), PublishError> {
        match self.0.await? {
            Confirmation::Ack(None) => Ok(()),
            // A mandatory message that no queue took comes back with the ack.
            Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
            // Cannot happen on a ConfirmChannel; never taken for a confirm.
            Confirmation::NotRequested => Err(PublishError::NotConfirmed),
        }
    }
}

/// A routing key no queue can have (`amq.` names are the broker's own): what
/// [`probe_confirmed`] publishes to.
const PROBE_ROUTING_KEY: &str = "amq.vmpipe.confirm-probe";

/// Publishes an empty message that no queue takes (not `mandatory`: the broker drops it) and
/// waits for its confirm: a round trip through the same path as a job, which puts nothing on
/// any queue. A broker that confirms it is confirming again.
pub async fn probe_confirmed(channel: &ConfirmChannel) -> Result<(), PublishError> {
    let confirm = channel
        .basic_publish(
            "".into(),
            PROBE_ROUTING_KEY.into(),
            BasicPublishOptions::default(),
            b"",
            BasicProperties::default(),
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(_) => Ok(()),
        Confirmation::Nack(_) => Err(PublishError::Nacked),
        Confirmation::NotRequested => Err(PublishError::NotConfirmed),
    }
}

/// A text header of a message ([`ERROR_HEADER`], say).
pub fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(text) => Some(text.to_string()),
        _ => None,
    }
}
