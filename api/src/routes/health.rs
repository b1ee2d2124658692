//! `GET /healthz` (alive), `GET /readyz` (migrated, and PostgreSQL answers) and
//! `GET /metrics` (Prometheus), without a token: they reveal no voicemail.

use std::sync::atomic::Ordering;

use actix_web::{HttpResponse, web};

use crate::server::State;

pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok\n")
}

pub(crate) async fn readyz(state: web::Data<State>) -> HttpResponse {
    if !state.migrated.load(Ordering::Relaxed) {
        return HttpResponse::ServiceUnavailable().body("starting: database not migrated yet\n");
    }
    match sqlx::query("SELECT 1").execute(&state.pool).await {
        Ok(_) => HttpResponse::Ok().body("ready\n"),
        Err(e) => HttpResponse::ServiceUnavailable().body(format!("database: {e}\n")),
    }
}

pub(crate) async fn metrics(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
