//! The HTTP service: its state, its middleware (access log and metrics, security headers),
//! and its lifetime (migrations once PostgreSQL answers; a graceful stop on shutdown).

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::{DefaultHeaders, Next, from_fn};
use actix_web::{App, HttpMessage, HttpServer, web};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vmpipe_common::{Settings, Storage, backoff::Backoff};

use crate::auth::CallerName;
use crate::db::{self, DbError};
use crate::routes;

/// Connections to PostgreSQL the api holds at most.
const DATABASE_CONNECTIONS: u32 = 16;
/// How long in-flight requests get to finish on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What every request reads.
pub(crate) struct State {
    pub pool: PgPool,
    pub store: Arc<dyn Storage>,
    /// The migrations are applied (readiness).
    pub migrated: AtomicBool,
    pub metrics: PrometheusHandle,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Storage(#[from] vmpipe_common::StorageError),
    #[error(transparent)]
    Database(#[from] DbError),
}

/// The api, bound to its address and ready to run.
pub struct Application {
    settings: Settings,
    server: actix_web::dev::Server,
    state: web::Data<State>,
    port: u16,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let pool = db::connect(&settings, DATABASE_CONNECTIONS).await?;
        let store = vmpipe_common::store::open_existing(&settings)?;
        let metrics = vmpipe_common::metrics::register(vmpipe_common::metrics::API);
        let state = web::Data::new(State {
            pool,
            store,
            migrated: AtomicBool::new(false),
            metrics,
        });
        let listener =
            TcpListener::bind(&settings.api_listen).map_err(|source| StartError::Listen {
                address: settings.api_listen.clone(),
                source,
            })?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 4);
        let app_state = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .configure(routes::configure)
                .default_service(web::to(routes::not_found))
                .wrap(
                    DefaultHeaders::new()
                        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                        .add((header::REFERRER_POLICY, "no-referrer"))
                        .add((header::X_FRAME_OPTIONS, "DENY"))
                        // The API's answers are data, never a page to render.
                        .add((
                            header::CONTENT_SECURITY_POLICY,
                            "default-src 'none'; frame-ancestors 'none'",
                        )),
                )
                .wrap(from_fn(access_log))
        })
        // An answer's head and body go out at once, not 40 ms apart (Nagle's algorithm waiting
        // for the client's delayed ACK).
        .on_connect(|connection, _| {
            if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let _ = tcp.set_nodelay(true);
            }
        })
        .workers(workers)
        .max_connections(settings.api_max_connections.div_ceil(workers))
        .client_request_timeout(Duration::from_secs(10))
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
        .disable_signals()
        .listen(listener)
        .map_err(|source| StartError::Listen {
            address: settings.api_listen.clone(),
            source,
        })?
        .run();
        info!(address = %settings.api_listen, port, storage = %state.store.location(), "api listening");
        Ok(Application {
            settings,
            server,
            state,
            port,
        })
    }

    /// The port it listens on (for an address with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown`, then lets requests in flight finish.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let migrations = tokio::spawn(migrate_when_reachable(
            self.settings.clone(),
            self.state.clone(),
            shutdown.clone(),
        ));
        let handle = self.server.handle();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            info!("api stopping");
            handle.stop(true).await;
        });
        let served = self.server.await;
        migrations.abort();
        info!("api stopped");
        served
    }
}

/// Applies the migrations once PostgreSQL answers, retrying with backoff while it is away.
async fn migrate_when_reachable(
    settings: Settings,
    state: web::Data<State>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::reconnect();
    loop {
        match db::migrate(&settings).await {
            Ok(()) => {
                state.migrated.store(true, Ordering::Relaxed);
                info!("database migrated");
                return;
            }
            Err(e) => {
                let wait = backoff.next_delay();
                if e.is_transient() {
                    warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "PostgreSQL unreachable; waiting for it");
                } else {
                    warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "database migrations failed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// The group a path's metrics are counted under.
fn route_group(pattern: Option<&str>) -> &'static str {
    match pattern {
        Some("/api/v1/voicemails") => "list",
        Some("/api/v1/voicemails/{id}") => "voicemail",
        Some("/api/v1/voicemails/{id}/audio") => "audio",
        _ => "other",
    }
}

/// One line per request: method, path (never the query string: it holds searches), status,
/// time, the token's name; a 5xx with its cause at `warn`. Health and metrics at `debug`, and
/// not counted in the request metrics (probes would drown the requests).
async fn access_log(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().to_string();
    let path = req.path().chars().take(256).collect::<String>();
    let response = next.call(req).await?;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let quiet = matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics");
    if !quiet {
        let group = route_group(response.request().match_pattern().as_deref());
        let class = match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        metrics::counter!("vmpipe_api_requests_total", "route" => group, "status" => class)
            .increment(1);
        metrics::histogram!("vmpipe_api_request_duration_seconds", "route" => group)
            .record(elapsed.as_secs_f64());
    }
    let token = response
        .request()
        .extensions()
        .get::<CallerName>()
        .map(|c| c.0.clone());
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    if let Some(error) = response.response().error()
        && status >= 500
    {
        let cause = match error.as_error::<crate::error::ApiError>() {
            Some(e) => crate::error::chain(e),
            None => error.to_string(),
        };
        warn!(%method, %path, status, duration_ms, token, error = %cause, "request failed");
    } else if quiet {
        tracing::debug!(%method, %path, status, duration_ms, "request");
    } else {
        info!(%method, %path, status, duration_ms, token, "request");
    }
    Ok(response)
}
