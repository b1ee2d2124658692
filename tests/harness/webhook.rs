//! A webhook receiver on loopback, for the `webhook` event sink: it takes a POST on any path,
//! checks its vmpipe signature (`x-vmpipe-signature: v1=` and the hex HMAC-SHA256 of
//! `{x-vmpipe-timestamp}.{body}`), records it, and answers each request with the next status
//! of its script, the last one repeated. It can also hold requests unanswered (a hung
//! receiver); [`blackhole`] is a port that never even accepts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde_json::Value;
use tokio::sync::watch;

/// One request, as the receiver read it.
#[derive(Clone, Debug)]
pub struct Received {
    /// When it arrived (its body read).
    pub at: Instant,
    /// The status it is answered with (a held request: once it is let go).
    pub status: u16,
    /// Whether `x-vmpipe-signature` is `v1=` and the lower-case hex HMAC-SHA256, under the
    /// receiver's secret, of `x-vmpipe-timestamp`, `.` and the body.
    pub signature_ok: bool,
    /// `x-vmpipe-event-id`.
    pub event_id: Option<String>,
    /// `x-vmpipe-event`: the event's type.
    pub event_type: Option<String>,
    /// The body as JSON; `Null` if it is not JSON.
    pub body: Value,
    /// The body, byte for byte.
    pub raw_body: Vec<u8>,
    /// `x-vmpipe-timestamp`, if it is a number.
    pub timestamp: Option<u64>,
}

struct State {
    secret: Vec<u8>,
    script: Vec<u16>,
    /// Every request, in order.
    received: Mutex<Vec<Received>>,
    /// Whether requests are held unanswered.
    hold: watch::Receiver<bool>,
}

/// The receiver, until [`WebhookReceiver::stop`].
pub struct WebhookReceiver {
    /// `http://127.0.0.1:{port}/hook`, for a sink's `url`.
    pub url: String,
    state: Arc<State>,
    hold: watch::Sender<bool>,
    handle: actix_web::dev::ServerHandle,
}

impl WebhookReceiver {
    /// Checks signatures under `secret`, and answers the requests with the statuses of
    /// `script` in order, the last one repeated (always 200 if it is empty).
    pub fn start(secret: &str, script: Vec<u16>) -> Self {
        let (hold, held) = watch::channel(false);
        let state = Arc::new(State {
            secret: secret.as_bytes().to_vec(),
            script,
            received: Mutex::default(),
            hold: held,
        });
        let shared = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .app_data(web::PayloadConfig::new(64 << 20))
                .default_service(web::post().to(receive))
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("bind the webhook receiver");
        let url = format!("http://127.0.0.1:{}/hook", server.addrs()[0].port());
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            url,
            state,
            hold,
            handle,
        }
    }

    /// The requests so far, in order (held ones too).
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until at least `count` requests have arrived, and returns them all; panics
    /// after `timeout`.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "the webhook receiver got {} of {count} requests in {timeout:?}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// While `on`, requests are read and recorded but not answered; switching it off
    /// answers the held ones.
    pub fn hold(&self, on: bool) {
        self.hold.send_replace(on);
    }

    /// Stops the server, dropping its connections (held requests are never answered).
    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// A port on 127.0.0.1 that never accepts: connections sit in its backlog, requests are
/// never answered. Keep the listener alive as long as the port should stay so; the URL is
/// `http://127.0.0.1:{port}/hook`.
pub fn blackhole() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the blackhole");
    let port = listener
        .local_addr()
        .expect("the blackhole's address")
        .port();
    (listener, format!("http://127.0.0.1:{port}/hook"))
}

fn header<'a>(request: &'a HttpRequest, name: &str) -> Option<&'a str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Whether `signature` is `v1=` and the lower-case hex HMAC-SHA256 of `{timestamp}.{body}`.
fn signature_ok(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
) -> bool {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return false;
    };
    let Some(hex_digits) = signature.strip_prefix("v1=") else {
        return false;
    };
    if !hex_digits
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return false;
    }
    let Ok(expected) = hex::decode(hex_digits) else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

async fn receive(state: web::Data<State>, request: HttpRequest, body: web::Bytes) -> HttpResponse {
    let timestamp = header(&request, "x-vmpipe-timestamp");
    let signature_ok = signature_ok(
        &state.secret,
        timestamp,
        header(&request, "x-vmpipe-signature"),
        &body,
    );
    let status = {
        let mut received = state.received.lock().unwrap();
        let status = match state.script.len() {
            0 => 200,
            n => state.script[received.len().min(n - 1)],
        };
        received.push(Received {
            at: Instant::now(),
            status,
            signature_ok,
            event_id: header(&request, "x-vmpipe-event-id").map(str::to_owned),
            event_type: header(&request, "x-vmpipe-event").map(str::to_owned),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            raw_body: body.to_vec(),
            timestamp: timestamp.and_then(|t| t.parse().ok()),
        });
        status
    };
    // Held: wait until let go (or forever, if the receiver is gone).
    let mut hold = state.hold.clone();
    if hold.wait_for(|held| !*held).await.is_err() {
        std::future::pending::<()>().await;
    }
    HttpResponse::build(
        actix_web::http::StatusCode::from_u16(status).expect("a scripted status is a status"),
    )
    .content_type("text/plain")
    .body(format!("scripted {status}"))
}
