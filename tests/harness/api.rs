//! The real `api` binary for one test: started over the test's database and storage, its
//! tokens made with its own `api token create`, and a client that sends them.

use std::time::Duration;

use reqwest::StatusCode;
use vmpipe_common::Settings;

use crate::process::{Service, binary, settings_env};

/// An `api` process and the address it answers on.
pub struct TestApi {
    pub service: Service,
    pub settings: Settings,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    client: reqwest::Client,
    /// Holds its JSON log (`api.log`), read by [`TestApi::log`].
    logs: tempfile::TempDir,
}

/// An answer: status, headers, body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    /// The body as JSON (panics, with the body, if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(500)])
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The stable code of a JSON error answer.
    pub fn error_code(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

impl TestApi {
    /// Starts the api with `settings` (the test's database and storage), its JSON log at
    /// `info` kept, and waits until it is ready (its migrations applied).
    pub async fn start(settings: &Settings) -> Self {
        let logs = tempfile::tempdir().unwrap();
        let service =
            Service::spawn_logging("api", settings, Some(&logs.path().join("api.log"))).await;
        service.wait_ready(Duration::from_secs(30)).await;
        let base = format!("http://127.0.0.1:{}", service.health_port);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Self {
            service,
            settings: settings.clone(),
            base,
            client,
            logs,
        }
    }

    /// Its log so far (JSON lines).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("api.log")).unwrap_or_default()
    }

    /// Runs `api ARGS` with the api's settings: exit status, standard output, standard error.
    pub fn command(&self, args: &[&str]) -> (bool, String, String) {
        api_command(&self.settings, args)
    }

    /// A new token named `name` for `accounts` (`None`: every account).
    pub fn token(&self, name: &str, accounts: Option<&[&str]>) -> String {
        let joined = accounts.map(|a| a.join(","));
        let mut args = vec!["token", "create", "--name", name];
        match &joined {
            Some(list) => args.extend(["--accounts", list.as_str()]),
            None => args.push("--all-accounts"),
        }
        let (ok, stdout, stderr) = self.command(&args);
        assert!(ok, "api token create: {stderr}");
        stdout.trim().to_owned()
    }

    /// `GET path` (with its query) with `token` (none: no Authorization header).
    pub async fn get(&self, token: Option<&str>, path: &str) -> Answer {
        self.request(reqwest::Method::GET, token, path, &[]).await
    }

    /// A request with extra headers.
    pub async fn request(
        &self,
        method: reqwest::Method,
        token: Option<&str>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("api answers");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("api body");
        Answer {
            status,
            headers,
            body,
        }
    }

    /// `GET path` that must answer 200 with JSON.
    pub async fn json(&self, token: &str, path: &str) -> serde_json::Value {
        let answer = self.get(Some(token), path).await;
        assert_eq!(
            answer.status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        answer.json()
    }

    /// The ids of a list's items, in order, following every page (`limit` each).
    pub async fn all_ids(&self, token: &str, query: &str, limit: usize) -> Vec<String> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/voicemails?limit={limit}");
            if !query.is_empty() {
                path.push('&');
                path.push_str(query);
            }
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let page = self.json(token, &path).await;
            let items = page["items"].as_array().expect("items");
            assert!(items.len() <= limit, "a page holds at most its limit");
            ids.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_owned()));
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return ids,
            }
        }
    }

    /// SIGTERM: it must stop by itself, gracefully (exit status 0), within 15 s.
    pub async fn stop(self) {
        let status = self.service.sigterm(Duration::from_secs(15)).await;
        assert!(status.success(), "the api stopped with {status}");
    }
}

/// Runs `api ARGS` with `settings` as its environment.
pub fn api_command(settings: &Settings, args: &[&str]) -> (bool, String, String) {
    let mut command = std::process::Command::new(binary("api"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("VMPIPE_")) {
        command.env_remove(name);
    }
    let output = command
        .envs(settings_env(settings))
        .env("RUST_LOG", "warn")
        .args(args)
        .output()
        .expect("run api");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
