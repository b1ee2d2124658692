//! Talking to RabbitMQ: the connection, the queue topology both services declare, and the one
//! way a vmpipe message is published (persistent, with a publisher confirm). Ingest's jobs
//! ([`publish`], many confirms in flight), the worker's dead letters and the admin commands'
//! re-published jobs ([`publish_confirmed`], one at a time) all go through it.

mod publish;
mod topology;

use lapin::{Connection, ConnectionProperties};

pub use publish::{
    ConfirmChannel, ERROR_HEADER, FAILED_AT_HEADER, Pending, PublishError, header_text,
    job_properties, job_properties_of, message_properties, probe_confirmed, publish,
    publish_confirmed,
};
pub use topology::{dead_letter_queue, declare_queues};

/// Whether RabbitMQ turned the connection away for its credentials (`ACCESS_REFUSED`): a
/// setting to fix (`VMPIPE_AMQP_URL`), not an outage to wait out.
pub fn refused_credentials(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if e.get_id() == 403)
}

/// Connects with a name that shows up in RabbitMQ's management UI.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name(name.into()),
    )
    .await
}
