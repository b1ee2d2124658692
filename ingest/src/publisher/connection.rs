//! The publisher's background task: keeps a connection to RabbitMQ, drains the journal while
//! it lives, and probes while degraded.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lapin::Connection;
use tracing::{debug, error, info, warn};
use vmpipe_common::amqp::{self, ConfirmChannel, probe_confirmed};
use vmpipe_common::backoff::Backoff;

use super::{Drained, Link, Publisher};

impl Publisher {
    pub(super) async fn maintain_connection(self) {
        // Reconnects at most a few seconds apart: the broker is used again soon after its return.
        let mut backoff = Backoff::reconnect();
        loop {
            let attempt = self.connect().await;
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
                    let stopped = self.serve(&connection, &link).await;
                    self.inner.link.send_replace(None);
                    // A broken connection may never answer a close: do not wait on it.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        connection.close(200, "ingest stopping".into()),
                    )
                    .await;
                    stopped
                }
                Err(e) if refused => {
                    error!(error = %e, "RabbitMQ refused the credentials in VMPIPE_AMQP_URL; \
                        uploads are journaled until they are fixed");
                    false
                }
                Err(e) => {
                    warn!(error = %e, "RabbitMQ unreachable; uploads are journaled until it is back");
                    false
                }
            };
            if stopped {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = self.inner.stop.notified() => return,
            }
        }
    }

    async fn connect(&self) -> Result<(Connection, ConfirmChannel), lapin::Error> {
        let connection = amqp::connect(&self.inner.amqp_url, "vmpipe-ingest").await?;
        let channel = ConfirmChannel::open(&connection).await?;
        amqp::declare_queues(&channel, &self.inner.queue).await?;
        Ok((connection, channel))
    }

    /// Drains the journal while the connection lives (and, degraded with nothing to drain,
    /// probes). Returns true when asked to stop.
    ///
    /// Confirms that do not come in time are no reason to drop the connection: a hung broker
    /// confirms them when it resumes, and a new connection would publish them all again. A
    /// dead one is noticed by lapin's heartbeat.
    async fn serve(&self, connection: &Connection, link: &Link) -> bool {
        loop {
            if !connection.status().connected() || !link.channel.status().connected() {
                warn!("lost the RabbitMQ connection");
                return false;
            }
            match self.drain_journal(link).await {
                Err(e) => {
                    warn!(error = %e, "could not publish journaled jobs");
                    return false;
                }
                Ok(Drained::Nothing) if self.inner.health.is_degraded() => self.probe(link),
                Ok(_) => {}
            }
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                // Also notices a connection that died while idle.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.inner.stop.notified() => return true,
            }
        }
    }

    /// Sends a probe on `link` unless one is awaiting its confirm there already; confirmed in
    /// time, it ends the degraded state.
    fn probe(&self, link: &Link) {
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
