//! Readiness state, and the worker's small HTTP side: `GET /healthz` (alive), `GET /readyz` (database reachable and
//! consuming jobs) and `GET /metrics`, on `VMPIPE_WORKER_LISTEN`. The worker has no other HTTP
//! to serve, so this is a few lines on a TCP listener rather than a web framework.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// What readiness reports about RabbitMQ, set by the consumer (PostgreSQL is asked at each
/// request).
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Connected and consuming; false from the moment the connection or channel is lost.
    pub consuming: std::sync::atomic::AtomicBool,
    /// RabbitMQ refused the credentials at the last connection attempt.
    pub credentials_refused: std::sync::atomic::AtomicBool,
    /// Connected, but RabbitMQ did not answer the last sign-of-life request in time (a hung
    /// broker): not ready until it answers.
    pub unanswered: std::sync::atomic::AtomicBool,
}

impl Health {
    pub(crate) fn set_consuming(&self, on: bool) {
        self.consuming
            .store(on, std::sync::atomic::Ordering::Relaxed);
        if on {
            self.set_credentials_refused(false);
        }
        self.set_unanswered(false);
    }

    /// Whether RabbitMQ left the last sign-of-life request unanswered; returns what it was.
    pub(crate) fn set_unanswered(&self, unanswered: bool) -> bool {
        self.unanswered
            .swap(unanswered, std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set_credentials_refused(&self, refused: bool) {
        self.credentials_refused
            .store(refused, std::sync::atomic::Ordering::Relaxed);
    }
}

pub(crate) struct HealthServer {
    pub health: Arc<Health>,
    /// The database, once connected (`None` while the worker starts: not ready).
    pub pool: Option<PgPool>,
    pub metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
}

/// Health requests answered at once; a connection beyond them is closed straight away. Probes
/// from an orchestrator need one or two: the rest could only hold file descriptors that jobs
/// need.
const MAX_CONNECTIONS: usize = 16;
/// The whole request must arrive within this, however slowly its bytes trickle in.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

pub(crate) async fn serve(
    listener: TcpListener,
    server: Arc<HealthServer>,
    shutdown: CancellationToken,
) {
    serve_on(&listener, server, shutdown).await
}

/// [`serve`] on a listener that is the caller's again once `shutdown` is cancelled (start-up).
pub(crate) async fn serve_on(
    listener: &TcpListener,
    server: Arc<HealthServer>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: accepting again at once would spin.
                debug!(error = %e, "cannot accept a health connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // dropped: closed
        };
        let server = server.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(REQUEST_DEADLINE, answer(stream, &server)).await {
                Ok(Err(e)) => debug!(error = %e, "health request failed"),
                Err(_) => debug!("health request too slow; closed"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

async fn answer(mut stream: TcpStream, server: &HealthServer) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/healthz") => (200, "application/json", r#"{"status":"alive"}"#.to_owned()),
        ("GET", "/readyz") => readiness(server).await,
        ("GET", "/metrics") => match &server.metrics {
            Some(render) => (200, "text/plain; version=0.0.4", render()),
            None => (
                404,
                "application/json",
                r#"{"error":"not_found"}"#.to_owned(),
            ),
        },
        _ => (
            404,
            "application/json",
            r#"{"error":"not_found"}"#.to_owned(),
        ),
    };
    let reason = match status {
        200 => "OK",
        503 => "Service Unavailable",
        _ => "Not Found",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

async fn readiness(server: &HealthServer) -> (u16, &'static str, String) {
    let database = match &server.pool {
        Some(pool) => tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::query("SELECT 1").execute(pool),
        )
        .await
        .is_ok_and(|r| r.is_ok()),
        None => false,
    };
    let consuming = server.health.consuming.load(Ordering::Relaxed);
    let unanswered = server.health.unanswered.load(Ordering::Relaxed);
    let ready = database && consuming && !unanswered;
    let body = serde_json::json!({
        "ready": ready,
        "database": if database { "ok" } else { "unreachable" },
        "rabbitmq": match (consuming, server.health.credentials_refused.load(Ordering::Relaxed)) {
            (true, _) if unanswered => "connected but not answering",
            (true, _) => "consuming",
            (false, true) => "refused the credentials (VMPIPE_AMQP_URL)",
            (false, false) => "not connected",
        },
    });
    (
        if ready { 200 } else { 503 },
        "application/json",
        body.to_string(),
    )
}
