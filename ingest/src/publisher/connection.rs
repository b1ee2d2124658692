//! The publisher's background task: keeps a connection to RabbitMQ and streams the journal to
//! it while it lives ([`super::stream`]).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lapin::Connection;
use tracing::{debug, error, info, warn};
use vmpipe_common::amqp::{self, ConfirmChannel, probe_confirmed};
use vmpipe_common::backoff::Backoff;

use super::{Link, Publisher};

impl Publisher {
    pub(super) async fn maintain_connection(self) {
        // Reconnects at most a few seconds apart: the broker is used again soon after its return.
        let mut backoff = Backoff::reconnect();
        loop {
            let attempt = tokio::select! {
                attempt = self.connect() => attempt,
                _ = self.inner.stop.cancelled() => return,
            };
            let refused = attempt.as_ref().is_err_and(amqp::refused_credentials);
            self.inner
                .credentials_refused
                .store(refused, Ordering::Relaxed);
            self.inner.attempts.send_modify(|n| *n += 1);
            let stopped = match attempt {
                Ok((connection, channel)) => {
                    info!(queue = %self.inner.queue, "connected to RabbitMQ");
                    backoff.reset();
                    self.inner.health.confirmed();
                    let link = Link {
                        channel,
                        generation: self.inner.generations.fetch_add(1, Ordering::Relaxed) + 1,
                    };
                    self.inner.link.send_replace(Some(link.clone()));
                    let streamed = self.stream(&link).await;
                    if let Err(e) = &streamed {
                        warn!(error = %e, "stopped publishing on this connection");
                    }
                    self.inner.link.send_replace(None);
                    // A broken connection may never answer a close: do not wait on it.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        connection.close(200, "ingest stopping".into()),
                    )
                    .await;
                    streamed.is_ok()
                }
                Err(e) if refused => {
                    error!(error = %e, "RabbitMQ refused the credentials in VMPIPE_AMQP_URL; \
                        jobs wait in the journal until they are fixed");
                    false
                }
                Err(e) => {
                    warn!(error = %e, "RabbitMQ unreachable; jobs wait in the journal until it is back");
                    false
                }
            };
            if stopped {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = self.inner.stop.cancelled() => return,
            }
        }
    }

    async fn connect(&self) -> Result<(Connection, ConfirmChannel), lapin::Error> {
        let connection = amqp::connect(&self.inner.amqp_url, "vmpipe-ingest").await?;
        let channel = ConfirmChannel::open(&connection).await?;
        amqp::declare_queues(&channel, &self.inner.queue).await?;
        Ok((connection, channel))
    }

    /// Sends a probe on `link` unless one is awaiting its confirm there already; confirmed in
    /// time, it ends the degraded state.
    pub(super) fn probe(&self, link: &Link) {
        let generation = link.generation;
        let previous = self.inner.probing.swap(generation, Ordering::Relaxed);
        if previous == generation {
            return;
        }
        let this = self.clone();
        let channel = link.channel.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = probe_confirmed(&channel).await;
            if result.is_ok() && started.elapsed() <= this.inner.publish_timeout {
                this.inner.health.confirmed();
            }
            debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                ok = result.is_ok(),
                "confirm probe"
            );
            let _ = this.inner.probing.compare_exchange(
                generation,
                0,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        });
    }
}
