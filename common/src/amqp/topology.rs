//! RabbitMQ topology shared by ingest and worker. Both declare it (declaring is idempotent),
//! and the arguments must be identical everywhere or RabbitMQ refuses the declaration.

use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};

/// The queue that holds the jobs of `queue` which can never succeed: `{queue}.dead`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// Declares the job queue and its dead-letter queue (see [`dead_letter_queue`]).
///
/// Both are durable quorum queues (replicated, and fsynced by RabbitMQ before it confirms).
/// A job rejected without requeue lands in the dead-letter queue.
pub async fn declare_queues(channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
    let dead = dead_letter_queue(queue);
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

#[cfg(test)]
mod tests {
    #[test]
    fn dead_letters_go_to_the_queue_name_dot_dead() {
        assert_eq!(super::dead_letter_queue("vmpipe.jobs"), "vmpipe.jobs.dead");
    }
}
