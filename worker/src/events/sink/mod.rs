//! Where events go: a [`Sink`] per `[[notify]]` table of the settings file.

mod amqp;
mod email;
mod webhook;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use vmpipe_common::settings::{NotifyKind, NotifySettings};
use vmpipe_common::{Settings, Storage};

use super::Event;

pub use webhook::{SIGNATURE_HEADER, TIMESTAMP_HEADER, signature};

/// Why a delivery failed, and whether another attempt can succeed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    pub message: String,
    /// Worth another attempt (a 5xx, a timeout, a broker away); otherwise final (a 4xx).
    pub retry: bool,
}

impl DeliveryError {
    pub fn retry(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: true,
        }
    }

    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: false,
        }
    }
}

/// One destination of events.
pub trait Sink: Send + Sync {
    /// Delivers one event: done when the destination has it (confirmed, answered 2xx,
    /// accepted for delivery). Called for several events at once, up to the sink's
    /// `concurrency`.
    fn deliver<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), DeliveryError>>;
}

/// The sinks of the settings' `[[notify]]` tables; an error stops the worker at start-up (a
/// secret file that cannot be read, say).
pub fn from_settings(
    settings: &Settings,
    store: &Arc<dyn Storage>,
) -> anyhow::Result<Vec<(NotifySettings, Arc<dyn Sink>)>> {
    settings
        .notify
        .iter()
        .map(|notify| {
            let sink: Arc<dyn Sink> = match notify.kind {
                NotifyKind::Amqp => Arc::new(amqp::AmqpSink::new(notify, settings)),
                NotifyKind::Webhook => Arc::new(webhook::WebhookSink::new(notify)?),
                NotifyKind::Email => Arc::new(email::EmailSink::new(notify, store.clone())?),
            };
            Ok((notify.clone(), sink))
        })
        .collect()
}

/// A secret given inline or in a file (read once, at start-up).
fn secret_value(
    inline: Option<&vmpipe_common::settings::Secret>,
    file: Option<&std::path::Path>,
    what: &str,
) -> anyhow::Result<Option<String>> {
    match (inline, file) {
        (Some(secret), _) => Ok(Some(secret.expose().to_owned())),
        (None, Some(path)) => crate::secret::read_file(path, what).map(Some),
        (None, None) => Ok(None),
    }
}
