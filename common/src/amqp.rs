//! RabbitMQ topology shared by ingest and worker. Both declare it (declaring is idempotent),
//! and the arguments must be identical everywhere or RabbitMQ refuses the declaration.

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

/// Connects with a name that shows up in RabbitMQ's management UI.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name(name.into()),
    )
    .await
}

/// Declares the job queue and its dead-letter queue `{queue}.dead`.
///
/// Both are durable quorum queues (replicated, and fsynced by RabbitMQ before it confirms).
/// A job rejected without requeue lands in the dead-letter queue.
pub async fn declare_queues(channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
    let dead = format!("{queue}.dead");
    channel
        .queue_declare(
            dead.as_str().into(),
            QueueDeclareOptions::durable(),
            quorum_args(),
        )
        .await?;
    let mut args = quorum_args();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dead.as_str().into()),
    );
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), args)
        .await?;
    Ok(())
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

/// A text header of a message (`x-vmpipe-error`, say).
pub fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(text) => Some(text.to_string()),
        _ => None,
    }
}
