//! Ingest's own endpoints: `GET /healthz` (alive), `GET /readyz` (uploads can be accepted) and
//! `GET /metrics`.
//!
//! `/healthz` and `/readyz` are open (orchestrators probe them) and say little. `/metrics` says
//! how much is stored, from where and what fails: on `VMPIPE_LISTEN` it passes the same checks
//! as an upload (allow-list, token as `?token=`, Basic auth); with `VMPIPE_METRICS_LISTEN` it is
//! served only there, without checks (bind that to a private address).

use actix_web::{HttpRequest, HttpResponse, web};

use super::{AppState, check_access};
use crate::error::ApiError;
use crate::publisher::BrokerState;
use crate::server::Drain;

/// `GET /metrics` on `VMPIPE_LISTEN`: for clients the access policy lets in.
pub(crate) async fn metrics_endpoint(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if state.metrics_elsewhere {
        return Err(ApiError::MetricsElsewhere);
    }
    check_access(&req, &state.access, None)?;
    Ok(metrics_text().await)
}

/// `GET /metrics` on `VMPIPE_METRICS_LISTEN`: Prometheus text format.
pub(crate) async fn metrics_text() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(vmpipe_common::metrics::handle().render())
}

/// Anything else on `VMPIPE_METRICS_LISTEN`.
pub(crate) async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

/// `GET /healthz`: the process is alive.
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "alive" }))
}

/// `GET /readyz`: uploads can be accepted: storage is writable, and jobs are either confirmed
/// by RabbitMQ or journaled on local disk until it is back. A broker that is away, refuses the
/// credentials or does not confirm in time (`publisher_degraded`) is reported, but does not
/// make ingest unready: its uploads are still made durable and answered. 503 from the moment
/// ingest is told to stop (it still serves during its drain, for clients that have not noticed
/// yet).
pub(crate) async fn readyz(state: web::Data<AppState>, drain: web::Data<Drain>) -> HttpResponse {
    let stopping = drain.is_draining();
    let storage = state.store.check_writable().await;
    // A count kept by the journal: listing it here would let a flood of /readyz (no token is
    // needed) keep the disk busy, with 100k entries.
    let journaled = state.journal.count();
    let broker = state.jobs.broker_state();
    let ready = storage.is_ok() && !stopping;
    let body = serde_json::json!({
        "ready": ready,
        "stopping": stopping,
        "storage": storage.as_ref().map_or_else(|e| e.to_string(), |()| "ok".to_owned()),
        "rabbitmq": match broker {
            BrokerState::Confirming => "connected",
            BrokerState::NotConfirming =>
                "connected but not confirming in time: jobs wait in the journal",
            BrokerState::CredentialsRefused =>
                "refused the credentials (VMPIPE_AMQP_URL): jobs wait in the journal",
            BrokerState::Unreachable => "unreachable: jobs wait in the journal",
        },
        "publisher_degraded": broker == BrokerState::NotConfirming,
        "journaled_jobs": journaled,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
