//! A small OpenAI-compatible speech-to-text server on loopback, for the `openai` hook:
//! `POST /v1/audio/transcriptions` as OpenAI serves it. It checks the bearer token (401 with
//! OpenAI's error body, which quotes the key it was given, as OpenAI does), reads the
//! multipart form (400 without `file` and `model`), records what it was sent, and answers
//! each model with its script of replies, in order, the last one repeated.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

/// What the server answers.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with this JSON body.
    Transcript(Value),
    /// This status, with an OpenAI error body carrying this message.
    Error(u16, String),
}

/// One request, as the server read it.
#[derive(Clone, Debug, Default)]
pub struct TranscriptionRequest {
    pub authorization: Option<String>,
    /// The form's text fields (`model`, `language`, `response_format`, ...).
    pub fields: BTreeMap<String, String>,
    pub file_name: Option<String>,
    pub file_content_type: Option<String>,
    pub file: Vec<u8>,
}

#[derive(Default)]
struct State {
    api_key: String,
    scripts: BTreeMap<String, Vec<Reply>>,
    /// Every request, in order (those refused for their key or form too).
    received: Mutex<Vec<TranscriptionRequest>>,
}

/// The server, until [`OpenaiServer::stop`].
pub struct OpenaiServer {
    /// The base URL, for a hook's `url`.
    pub url: String,
    state: Arc<State>,
    handle: actix_web::dev::ServerHandle,
}

impl OpenaiServer {
    /// Serves `scripts` (model → replies) to clients that send `Bearer {api_key}`.
    pub fn start(api_key: &str, scripts: BTreeMap<String, Vec<Reply>>) -> Self {
        let state = Arc::new(State {
            api_key: api_key.to_owned(),
            scripts,
            received: Mutex::default(),
        });
        let shared = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .route("/v1/audio/transcriptions", web::post().to(transcribe))
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("bind the OpenAI-compatible server");
        let url = format!("http://127.0.0.1:{}", server.addrs()[0].port());
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self { url, state, handle }
    }

    /// The requests for `model` so far.
    pub fn requests(&self, model: &str) -> Vec<TranscriptionRequest> {
        let received = self.state.received.lock().unwrap();
        received
            .iter()
            .filter(|r| r.fields.get("model").map(String::as_str) == Some(model))
            .cloned()
            .collect()
    }

    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}

fn error(status: u16, message: &str, code: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("a status")).json(
        json!({"error": {
            "message": message, "type": "invalid_request_error", "param": null, "code": code,
        }}),
    )
}

async fn transcribe(
    state: web::Data<State>,
    request: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let mut seen = TranscriptionRequest {
        authorization: request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        ..Default::default()
    };
    let mut form = actix_multipart::Multipart::new(request.headers(), payload);
    let mut has_file = false;
    while let Some(field) = form.next().await {
        let Ok(mut field) = field else {
            return error(400, "the body is not multipart/form-data", "bad_form");
        };
        let name = field.name().unwrap_or_default().to_owned();
        let file_name = field
            .content_disposition()
            .and_then(|d| d.get_filename())
            .map(str::to_owned);
        let content_type = field.content_type().map(ToString::to_string);
        let Ok(Ok(bytes)) = field.bytes(64 << 20).await else {
            return error(400, "a part could not be read", "bad_form");
        };
        if name == "file" {
            has_file = true;
            seen.file_name = file_name;
            seen.file_content_type = content_type;
            seen.file = bytes.to_vec();
        } else {
            seen.fields
                .insert(name, String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    let model = seen.fields.get("model").cloned();
    let bearer = format!("Bearer {}", state.api_key);
    let authorized = |r: &TranscriptionRequest| r.authorization.as_deref() == Some(&bearer);
    // The script's position: this model's authorized requests before this one.
    let earlier = {
        let mut received = state.received.lock().unwrap();
        let earlier = received
            .iter()
            .filter(|r| r.fields.get("model") == model.as_ref() && authorized(r))
            .count();
        received.push(seen.clone());
        earlier
    };
    if !authorized(&seen) {
        let given = seen
            .authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or_default();
        let message = format!(
            "Incorrect API key provided: {given}. You can find your API key in your account."
        );
        return error(401, &message, "invalid_api_key");
    }
    let (Some(model), true) = (model, has_file) else {
        return error(400, "file and model are required", "missing_field");
    };
    let Some(script) = state.scripts.get(&model) else {
        return error(
            404,
            &format!("The model `{model}` does not exist"),
            "model_not_found",
        );
    };
    match &script[earlier.min(script.len() - 1)] {
        Reply::Transcript(body) => HttpResponse::Ok().json(body),
        Reply::Error(status, message) => error(*status, message, "scripted"),
    }
}
