//! vmpipe ingest: the web server KAZOO's `http` storage handler stores voicemails on.
//!
//! Each upload is streamed to storage and made durable, its job appended to a local journal
//! (group commit), and answered 201; the journal is streamed to RabbitMQ and trimmed as it
//! confirms. All post-processing is the worker's.

mod access;
mod error;
mod journal;
mod publisher;
mod request_span;
mod routes;
mod server;
mod tls;
mod upload;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, middleware, web};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;
use tracing_actix_web::TracingLogger;
use vmpipe_common::{Settings, StorageError};

pub use crate::journal::{JournalError, jobs_on_disk};
pub use crate::tls::TlsError;
#[doc(hidden)]
pub use crate::upload::fuzz_multipart;

use crate::journal::Journal;
use crate::publisher::{CommitPoint, Publisher};
use crate::routes::{AppState, health};
use crate::server::Drain;
use crate::upload::Limits;

/// How long a stop waits for the publisher (its confirms in flight get 2 s).
const PUBLISHER_STOP: Duration = Duration::from_secs(5);
/// How long startup waits for RabbitMQ before serving anyway (jobs are journaled meanwhile).
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How long a stop waits for the uploads in flight (and their publishes) to finish.
const SHUTDOWN_TIMEOUT_SECS: u64 = 30;
/// An unfinished upload older than this at startup was left by a crash.
const STALE_UPLOAD_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("job journal: {0}")]
    Journal(#[from] JournalError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

pub struct Application {
    server: Server,
    port: u16,
    jobs: Publisher,
    publisher_task: JoinHandle<()>,
    journal: Journal,
    drain: Drain,
    drain_period: Duration,
}

impl Application {
    /// Opens storage and the journal, starts the RabbitMQ connection task and binds the port.
    /// Must be called inside a tokio runtime.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        // Every metric exported (at 0) from the start.
        vmpipe_common::metrics::register(vmpipe_common::metrics::INGEST);
        let store = vmpipe_common::store::open(&settings)?;
        let removed = store.remove_stale_temp_files(STALE_UPLOAD_AGE).await?;
        if removed > 0 {
            info!(removed, "removed unfinished uploads left by a crash");
        }
        let journal = Journal::open(&settings.storage_dir.join("journal"))?;
        let (jobs, publisher_task) = Publisher::start(
            settings.amqp_url.expose().to_owned(),
            settings.queue.clone(),
            settings.publish_timeout(),
            settings.publish_degraded_after,
            settings.publish_linger(),
            // The job as durable, and as reachable from another ingest, as its voicemail.
            match settings.storage {
                vmpipe_common::settings::StorageKind::Fs => CommitPoint::Journal,
                vmpipe_common::settings::StorageKind::S3 => CommitPoint::Confirm,
            },
            journal.clone(),
        );
        jobs.first_attempt(FIRST_CONNECT_WAIT).await;
        let listen_error = |source| StartupError::Listen {
            addr: settings.listen.clone(),
            source,
        };
        let listener = TcpListener::bind(&settings.listen).map_err(listen_error)?;
        let port = listener.local_addr().map_err(listen_error)?.port();
        let access = access::AccessPolicy::from_settings(&settings);
        if let Some(warning) = access.unrestricted() {
            tracing::warn!(allowed = %settings.allow_networks, "{warning}");
        }
        let state = web::Data::new(AppState {
            store,
            jobs: jobs.clone(),
            journal: journal.clone(),
            prefix: settings.normalized_prefix().to_owned(),
            limits: Limits {
                max_body: settings.max_body.0,
                base64: settings.base64,
                body_timeout: Duration::from_secs(settings.body_timeout_secs),
                upload_deadline: Duration::from_secs(settings.upload_deadline_secs),
                max_document: usize::try_from(settings.max_document.0).unwrap_or(usize::MAX),
            },
            access,
            metrics_elsewhere: settings.metrics_listen().is_some(),
            uploads: Arc::new(tokio::sync::Semaphore::new(settings.max_uploads)),
        });
        let drain = Drain::default();
        let drain_data = web::Data::new(drain.clone());
        let tls = match (&settings.tls_cert, &settings.tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
            _ => None,
        };
        let app = move || {
            App::new()
                .app_data(state.clone())
                .app_data(drain_data.clone())
                .wrap(middleware::from_fn(server::close_when_draining))
                .wrap(TracingLogger::<request_span::RequestSpan>::new())
                .wrap(middleware::from_fn(server::track))
                .route("/healthz", web::get().to(health::healthz))
                .route("/readyz", web::get().to(health::readyz))
                .route("/metrics", web::get().to(health::metrics_endpoint))
                .default_service(web::to(routes::dispatch))
        };
        let builder = Server::build()
            // Signals are the caller's (see `run`): actix's own handler makes SIGINT a forced
            // stop that drops the uploads in flight.
            .disable_signals()
            .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS);
        let mut builder =
            server::listen(builder, "ingest", listener, tls, &drain, app).map_err(listen_error)?;
        if let Some(addr) = settings.metrics_listen() {
            let metrics_error = |source| StartupError::Listen {
                addr: addr.to_owned(),
                source,
            };
            let listener = TcpListener::bind(addr).map_err(metrics_error)?;
            let metrics = || {
                App::new()
                    .route("/metrics", web::get().to(health::metrics_text))
                    .default_service(web::to(health::not_found))
            };
            builder = server::listen(builder, "metrics", listener, None, &drain, metrics)
                .map_err(metrics_error)?;
            info!(addr, "metrics on their own address");
        }
        let server = builder.run();
        info!(addr = %settings.listen, port, tls = settings.tls_cert.is_some(), prefix = %settings.path_prefix,
            storage = %settings.storage_dir.display(), queue = %settings.queue, "ingest listening");
        Ok(Self {
            server,
            port,
            jobs,
            publisher_task,
            journal,
            drain,
            drain_period: settings.drain_period(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` is cancelled (the binary cancels it on SIGINT or SIGTERM), then
    /// stops gracefully: first a drain (`VMPIPE_DRAIN_SECS`: `/readyz` is 503, requests are
    /// still served, each answer says `Connection: close`), then no new connections, idle ones
    /// closed, and the uploads in flight finish, with their publishes, for up to 30 s.
    /// Journaled jobs stay on disk for the next start.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let handle = self.server.handle();
        let (drain, drain_period) = (self.drain, self.drain_period);
        let stopper = tokio::spawn(async move {
            shutdown.cancelled().await;
            drain.start_draining();
            if !drain_period.is_zero() {
                info!(
                    drain_secs = drain_period.as_secs(),
                    "stopping: /readyz is 503, still serving; answers say Connection: close"
                );
                tokio::time::sleep(drain_period).await;
            }
            info!(
                "stopping: no new connections, idle ones closed; finishing the uploads in flight"
            );
            drain.close_idle();
            handle.stop(true).await;
        });
        let result = self.server.await;
        stopper.abort();
        self.jobs.stop();
        // The publisher gives its confirms in flight a moment (see `Publisher::stop`); one
        // stuck on a broker that does not read is not waited for past that.
        let mut publisher_task = self.publisher_task;
        if tokio::time::timeout(PUBLISHER_STOP, &mut publisher_task)
            .await
            .is_err()
        {
            publisher_task.abort();
        }
        self.journal.close().await;
        info!("ingest stopped");
        result
    }
}
