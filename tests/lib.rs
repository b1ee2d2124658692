//! Test harness: a real ingest on a free port, a private storage directory and a private
//! RabbitMQ queue per test, and a client that puts on the wire exactly what KAZOO's `httpc`
//! does (header set and order, empty `te:`, no user-agent, KAZOO's multipart layout).
//!
//! RabbitMQ is taken from `VMPIPE_TEST_AMQP_URL` (default: guest on 127.0.0.1:5672).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vmpipe_common::settings::{Base64Mode, ByteSize, SecretUrl};

/// How long end-to-end tests wait for something to happen.
pub const WAIT: Duration = Duration::from_secs(20);
use vmpipe_common::{Settings, VoicemailJob};
use vmpipe_ingest::Application;

pub mod faults;

pub fn amqp_url() -> String {
    std::env::var("VMPIPE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn database_admin_url() -> String {
    std::env::var("VMPIPE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of the test's own, dropped by [`TestDatabase::drop`]. The worker creates it
/// (as on a fresh install); the test only names it.
pub struct TestDatabase {
    pub url: String,
    name: String,
}

impl TestDatabase {
    pub fn new() -> Self {
        let name = format!("vmpipe_test_{}", uuid::Uuid::new_v4().simple());
        let admin = database_admin_url();
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url)
            .await
            .expect("test database reachable")
    }

    pub async fn drop(self) {
        use sqlx::Connection as _;
        let mut admin = sqlx::PgConnection::connect(&database_admin_url())
            .await
            .expect("admin connection");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#,
            self.name
        )))
        .execute(&mut admin)
        .await
        .expect("drop test database");
    }
}

impl Default for TestDatabase {
    fn default() -> Self {
        Self::new()
    }
}

/// A worker running in this process until [`TestWorker::stop`].
pub struct TestWorker {
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), vmpipe_worker::WorkerError>>,
}

impl TestWorker {
    pub fn start(settings: Settings) -> Self {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(vmpipe_worker::run(settings, shutdown.clone()));
        Self { shutdown, task }
    }

    /// Graceful stop: in-flight jobs finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("join").expect("worker result");
    }
}

/// Polls `query` (a single count) until it returns `expected`, or fails after `timeout`.
pub async fn wait_for_count(
    pool: &sqlx::PgPool,
    query: &'static str,
    expected: i64,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let count: i64 = sqlx::query_scalar(query)
            .fetch_one(pool)
            .await
            .unwrap_or(-1);
        if count == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{query}: {count}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A mono 16-bit PCM WAV of `millis` of a warbling tone.
pub fn wav_pcm16(sample_rate: u32, millis: u32) -> Vec<u8> {
    let samples = (sample_rate as u64 * millis as u64 / 1000) as u32;
    let data_len = samples * 2;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for n in 0..samples {
        let t = n as f64 / sample_rate as f64;
        let value = (t * 2.0 * std::f64::consts::PI * (300.0 + 100.0 * (t * 3.0).sin())).sin();
        out.extend_from_slice(&((value * 12000.0) as i16).to_le_bytes());
    }
    out
}

/// A change to a test service's settings.
pub type Tweak = Box<dyn FnOnce(&mut Settings) + Send>;

/// A running ingest with its own storage directory and queue.
pub struct TestIngest {
    pub port: u16,
    /// Parent of the storage directory: nothing may ever appear here but `storage/`.
    pub sandbox: tempfile::TempDir,
    pub settings: Settings,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The queue was named here, not by the test: `stop` removes it.
    owns_queue: bool,
}

pub struct Options {
    pub prefix: String,
    pub max_body: u64,
    pub base64: Base64Mode,
    pub amqp_url: String,
    /// Reuse a storage directory (restart scenarios); a fresh one otherwise.
    pub sandbox: Option<tempfile::TempDir>,
    pub queue: Option<String>,
    /// Any other settings.
    pub tweak: Option<Tweak>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            prefix: "/".into(),
            max_body: 64 << 20,
            base64: Base64Mode::Auto,
            amqp_url: amqp_url(),
            sandbox: None,
            queue: None,
            tweak: None,
        }
    }
}

impl TestIngest {
    pub async fn start(options: Options) -> Self {
        let sandbox = options
            .sandbox
            .unwrap_or_else(|| tempfile::tempdir().expect("temp dir"));
        let owns_queue = options.queue.is_none();
        let queue = options
            .queue
            .unwrap_or_else(|| format!("vmpipe.test.{}", uuid::Uuid::new_v4().simple()));
        let mut settings = Settings {
            listen: "127.0.0.1:0".into(),
            path_prefix: options.prefix,
            storage_dir: sandbox.path().join("storage"),
            amqp_url: SecretUrl(options.amqp_url),
            queue,
            max_body: ByteSize(options.max_body),
            base64: options.base64,
            publish_timeout_ms: 2000,
            ..Settings::default()
        };
        if let Some(tweak) = options.tweak {
            tweak(&mut settings);
        }
        let app = Application::build(settings.clone())
            .await
            .expect("ingest starts");
        let port = app.port();
        let handle = app.handle();
        let task = tokio::spawn(app.run_until_stopped());
        Self {
            port,
            sandbox,
            settings,
            handle,
            task,
            owns_queue,
        }
    }

    /// Starts an ingest on a fresh queue that the test also holds (to read jobs, and delete).
    pub async fn start_with_queue(options: Options) -> (Self, TestQueue) {
        let queue_name = format!("vmpipe.test.{}", hex32());
        let queue = TestQueue::declare(&queue_name).await;
        let ingest = Self::start(Options {
            queue: Some(queue_name),
            ..options
        })
        .await;
        (ingest, queue)
    }

    /// Stops the server gracefully and gives back its directory (for a restart).
    pub async fn stop(self) -> tempfile::TempDir {
        self.handle.stop(true).await;
        self.task.await.expect("join").expect("server result");
        if self.owns_queue {
            // Nobody else knows this queue's name: remove it (and its dead-letter queue).
            if let Ok(connection) = vmpipe_common::amqp::connect(&amqp_url(), "vmpipe-tests").await
            {
                let queue = TestQueue {
                    name: self.settings.queue.clone(),
                    channel: connection.create_channel().await.expect("channel"),
                    connection,
                };
                queue.delete().await;
            }
        }
        self.sandbox
    }

    pub fn client(&self) -> Kazoo {
        Kazoo { port: self.port }
    }

    pub fn storage_dir(&self) -> &Path {
        &self.settings.storage_dir
    }

    pub fn stored_path(&self, key: &str) -> PathBuf {
        self.storage_dir().join("voicemails").join(key)
    }

    pub fn journal_entries(&self) -> usize {
        count_files(&self.storage_dir().join("journal"))
    }

    /// Uploads in progress (files below tmp/).
    pub fn temp_files(&self) -> usize {
        all_files(&self.storage_dir().join("tmp")).len()
    }
}

pub fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Every file under `dir`, recursively, relative to it.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// A test's view of its RabbitMQ queue.
pub struct TestQueue {
    pub name: String,
    channel: lapin::Channel,
    connection: lapin::Connection,
}

impl TestQueue {
    /// Declares `name` (and its dead-letter queue) exactly as the services do.
    pub async fn declare(name: &str) -> Self {
        let connection = vmpipe_common::amqp::connect(&amqp_url(), "vmpipe-tests")
            .await
            .expect("RabbitMQ reachable (start it, or set VMPIPE_TEST_AMQP_URL)");
        let channel = connection.create_channel().await.expect("channel");
        vmpipe_common::amqp::declare_queues(&channel, name)
            .await
            .expect("declare");
        Self {
            name: name.to_owned(),
            channel,
            connection,
        }
    }

    /// Waits up to `timeout` for the next message and acks it.
    pub async fn next(&self, timeout: Duration) -> Option<(VoicemailJob, lapin::BasicProperties)> {
        let delivery = self.take(&self.name, timeout).await?;
        let job = VoicemailJob::from_json(&delivery.data).expect("job JSON");
        Some((job, delivery.properties))
    }

    /// Waits up to `timeout` for a message on `queue`, and acks it.
    async fn take(&self, queue: &str, timeout: Duration) -> Option<lapin::message::Delivery> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self
                .channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .expect("basic_get");
            if let Some(message) = got {
                message
                    .delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("ack");
                return Some(message.delivery);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes raw bytes as a job, as ingest would (persistent, confirmed).
    pub async fn publish(&self, payload: &[u8]) {
        self.channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.name.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                payload,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack());
    }

    /// The next dead letter: its body and the reason the worker gave.
    pub async fn next_dead(&self, timeout: Duration) -> Option<(Vec<u8>, Option<String>)> {
        let delivery = self.take(&format!("{}.dead", self.name), timeout).await?;
        let reason = vmpipe_common::amqp::header_text(&delivery.properties, "x-vmpipe-error");
        Some((delivery.data, reason))
    }

    /// Takes the next message without acking and gives it back, `times` times, as a worker
    /// that keeps crashing mid-job would (RabbitMQ counts the deliveries).
    pub async fn redeliver_unacked(&self, times: usize) {
        for _ in 0..times {
            let message = loop {
                if let Some(m) = self
                    .channel
                    .basic_get(self.name.as_str().into(), BasicGetOptions::default())
                    .await
                    .expect("basic_get")
                {
                    break m;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            message
                .delivery
                .nack(lapin::options::BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .expect("nack");
        }
    }

    /// The reasons of every dead letter now in the dead-letter queue, which keeps them.
    pub async fn dead_reasons(&self) -> Vec<String> {
        let dead = format!("{}.dead", self.name);
        let mut held = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(dead.as_str().into(), BasicGetOptions::default())
            .await
            .expect("basic_get")
        {
            held.push(message);
        }
        let reasons = held
            .iter()
            .map(|m| {
                vmpipe_common::amqp::header_text(&m.delivery.properties, "x-vmpipe-error")
                    .unwrap_or_default()
            })
            .collect();
        for message in held {
            message
                .delivery
                .nack(lapin::options::BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .expect("nack");
        }
        reasons
    }

    pub async fn delete(self) {
        for name in [format!("{}.dead", self.name), self.name.clone()] {
            let _ = self
                .channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// An HTTP response as read off the socket.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// What KAZOO's store request looks like, per version (see the protocol notes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Put,
    Post,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Put => "PUT",
            Verb::Post => "POST",
        }
    }
}

/// How the body is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// `send_multipart: false` (with or without `base64_encode_data`, which then does nothing).
    Raw,
    /// KAZOO ≥ 4.3.21 `send_multipart: true`.
    Multipart,
    /// KAZOO ≥ 4.3.21 `send_multipart` + `base64_encode_data`.
    MultipartBase64,
    /// KAZOO 4.3.17-4.3.20 `send_multipart`: `multipart/mixed` with no boundary parameter.
    LegacyMixed,
}

pub const ALL_BODIES: [Body; 4] = [
    Body::Raw,
    Body::Multipart,
    Body::MultipartBase64,
    Body::LegacyMixed,
];

/// A client that writes KAZOO's exact bytes.
#[derive(Clone, Copy)]
pub struct Kazoo {
    pub port: u16,
}

/// One stored attachment as KAZOO describes it.
pub struct Attachment<'a> {
    pub document_id: &'a str,
    pub name: &'a str,
    pub content_type: &'a str,
    pub data: &'a [u8],
    pub document: &'a serde_json::Value,
}

impl Kazoo {
    /// A store request as KAZOO ≥ 4.3.106 sends it.
    pub async fn store(
        &self,
        verb: Verb,
        path: &str,
        body: Body,
        att: &Attachment<'_>,
    ) -> Response {
        let (content_type, bytes) = encode_body(body, att);
        self.send(
            &store_request(verb, path, &content_type, bytes.len(), self.port, false),
            &bytes,
        )
        .await
    }

    /// A voicemail as KAZOO's mailbox stores it: a multipart PUT of `audio` named `name`, with
    /// its message document, under a new document id of `account`.
    pub async fn store_voicemail(
        &self,
        account: &str,
        name: &str,
        audio: &[u8],
        content_type: &str,
    ) -> Response {
        let document_id = format!("202611-{}", hex32());
        let document = mailbox_message(&document_id, name);
        let att = Attachment {
            document_id: &document_id,
            name,
            content_type,
            data: audio,
            document: &document,
        };
        let path = format!("/{account}/{document_id}/{name}");
        self.store(Verb::Put, &path, Body::Multipart, &att).await
    }

    /// A store request as KAZOO < 4.3.106 sends it (extra bogus `content_type:` header).
    pub async fn store_legacy(
        &self,
        verb: Verb,
        path: &str,
        body: Body,
        att: &Attachment<'_>,
    ) -> Response {
        let (content_type, bytes) = encode_body(body, att);
        self.send(
            &store_request(verb, path, &content_type, bytes.len(), self.port, true),
            &bytes,
        )
        .await
    }

    /// A fetch as KAZOO sends it (`path` is the whole request-target, query included).
    pub async fn get(&self, path: &str) -> Response {
        self.send(&fetch_request("GET", path, self.port), b"").await
    }

    pub async fn head(&self, path: &str) -> Response {
        self.send(&fetch_request("HEAD", path, self.port), b"")
            .await
    }

    /// Sends raw bytes and reads one response.
    pub async fn send(&self, head: &str, body: &[u8]) -> Response {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect");
        stream.write_all(head.as_bytes()).await.expect("write head");
        // The server may answer (413, 400) and close before reading the whole body.
        let _ = stream.write_all(body).await;
        let is_head = head.starts_with("HEAD ");
        read_response(&mut stream, is_head).await
    }
}

fn store_request(
    verb: Verb,
    path: &str,
    content_type: &str,
    len: usize,
    port: u16,
    legacy: bool,
) -> String {
    let mut head = format!(
        "{} {path} HTTP/1.1\r\ncontent-type: {content_type}\r\ncontent-length: {len}\r\nte: \r\nhost: 127.0.0.1:{port}\r\nconnection: keep-alive\r\n",
        verb.as_str()
    );
    if legacy {
        head.push_str(&format!("content_type: {content_type}\r\n"));
    }
    head.push_str("\r\n");
    head
}

fn fetch_request(method: &str, path: &str, port: u16) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\ncontent-length: 0\r\nte: \r\nhost: 127.0.0.1:{port}\r\nconnection: keep-alive\r\n\r\n"
    )
}

/// Starts a raw PUT of `data` as KAZOO sends it, but writes only its first `sent` bytes, and
/// returns the open connection (to cut it, finish it, or let it stall).
pub async fn start_partial_put(port: u16, path: &str, data: &[u8], sent: usize) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let head = format!(
        "PUT {path} HTTP/1.1\r\ncontent-type: audio/mpeg\r\ncontent-length: {}\r\nte: \r\nhost: x\r\nconnection: keep-alive\r\n\r\n",
        data.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(&data[..sent]).await.expect("write body");
    stream
}

/// KAZOO's boundary: `cow_multipart:boundary/0`, 48 random bytes in unpadded base64url.
pub fn kazoo_boundary() -> String {
    let mut random = Vec::new();
    for _ in 0..3 {
        random.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    URL_SAFE_NO_PAD.encode(random)
}

/// The body KAZOO sends, and its content type.
pub fn encode_body(body: Body, att: &Attachment<'_>) -> (String, Vec<u8>) {
    let json = serde_json::to_vec(att.document).unwrap();
    let boundary = kazoo_boundary();
    let data_b64;
    let (content_type, data, form) = match body {
        Body::Raw => return (att.content_type.to_owned(), att.data.to_vec()),
        Body::Multipart => (
            format!("multipart/form-data; boundary={boundary}"),
            att.data,
            true,
        ),
        Body::MultipartBase64 => {
            data_b64 = STANDARD.encode(att.data).into_bytes();
            (
                format!("multipart/form-data; boundary={boundary}"),
                &data_b64[..],
                true,
            )
        }
        Body::LegacyMixed => ("multipart/mixed".to_owned(), att.data, false),
    };
    // kz_http_util:encode_multipart/2: leading CRLF, no CRLF after the closing delimiter.
    let mut out = Vec::new();
    let parts: [(&str, &str, &[u8]); 2] = [
        (att.document_id, "application/json", &json),
        (att.name, att.content_type, data),
    ];
    for (name, part_type, bytes) in parts {
        out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
        if form {
            out.extend_from_slice(
                format!("content-disposition: form-data; name={name}\r\n").as_bytes(),
            );
        }
        out.extend_from_slice(format!("content-type: {part_type}\r\n\r\n").as_bytes());
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(format!("\r\n--{boundary}--").as_bytes());
    (content_type, out)
}

pub async fn read_response(stream: &mut TcpStream, is_head: bool) -> Response {
    read_response_from(stream, is_head).await
}

/// Reads one response from any byte stream (TCP, TLS).
pub async fn read_response_from<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    is_head: bool,
) -> Response {
    let mut buf = Vec::new();
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = buf[header_end..].to_vec();
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse::<usize>().expect("content-length"));
    if !is_head && let Some(length) = length {
        while body.len() < length {
            let mut chunk = vec![0u8; 64 * 1024];
            let n = stream.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "body shorter than content-length");
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(length);
    }
    Response {
        status,
        headers,
        body,
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Audio-like bytes that contain what trips naive multipart parsers: `\r\n--`, `\r\n\r\n`,
/// and a near-copy of a delimiter.
pub fn nasty_audio(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9u32;
    let mut data: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect();
    let traps: [&[u8]; 3] = [b"\r\n--", b"\r\n\r\n", b"\r\n--Upk0Wa6Vg7_Kvgh--\r\n"];
    for (i, trap) in traps.iter().cycle().take(len / 1000).enumerate() {
        let at = (i * 997) % len.saturating_sub(trap.len()).max(1);
        if at + trap.len() <= len {
            data[at..at + trap.len()].copy_from_slice(trap);
        }
    }
    if len >= 3 {
        data[..3].copy_from_slice(b"\xff\xfb\x90"); // an MP3 frame header, like real voicemail
    }
    data
}

/// The `mailbox_message` document KAZOO sends in the JSON part (shape from kzd_box_message).
pub fn mailbox_message(document_id: &str, attachment: &str) -> serde_json::Value {
    serde_json::json!({
        "name": "mailbox 1010 message 2026-11-26 5:50:19",
        "description": "voicemail message with media",
        "source_type": "voicemail",
        "source_id": "0868323f42a354a54d152691b4cf3d6f",
        "media_source": "recording",
        "media_filename": attachment,
        "streamable": true,
        "utc_seconds": 63962891419u64,
        "metadata": {
            "media_id": document_id,
            "call_id": "dd27a1a973561ec0@10.26.0.81",
            "caller_id_name": "Alice Example",
            "caller_id_number": "+14155550100",
            "from": "+14155550100@sip.example.com",
            "from_user": "+14155550100",
            "from_realm": "sip.example.com",
            "length": 5320,
            "timestamp": 63962891419u64,
            "to": "1010@sip.example.com",
            "to_user": "1010",
            "to_realm": "sip.example.com",
            "folder": "new"
        },
        "id": document_id
    })
}

/// The query string KAZOO ≥ 4.3.106 appends to a voicemail fetch.
pub const VOICEMAIL_FETCH_QUERY: &str = "media_id=202611-5d6ae452d29a4304072654da8f79b46e&call_id=dd27a1a973561ec0%4010.26.0.81&caller_id_name=Alice+Example&caller_id_number=%2B14155550100&from=%2B14155550100%40sip.example.com&from_user=%2B14155550100&from_realm=sip.example.com&length=5320&timestamp=63962891419&to=1010%40sip.example.com&to_user=1010&to_realm=sip.example.com&folder=new";

/// Random 32-character lower-case hex, like KAZOO ids.
pub fn hex32() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Whether every migration has been applied (they commit one by one, so a table of the first
/// can exist while the last is still to come).
pub async fn migrated(pool: &sqlx::PgPool) -> bool {
    let applied: Result<i64, _> =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await;
    applied.is_ok_and(|n| n as usize == vmpipe_worker::db::MIGRATOR.iter().count())
}

/// Ingest, worker, queue and database of the test's own.
pub struct Stack {
    pub ingest: TestIngest,
    pub queue: TestQueue,
    pub database: TestDatabase,
    pub worker: Option<TestWorker>,
    pool: Option<sqlx::PgPool>,
}

impl Stack {
    pub async fn start(with_worker: bool) -> Self {
        let (ingest, queue) = TestIngest::start_with_queue(Options::default()).await;
        let mut stack = Self {
            ingest,
            queue,
            database: TestDatabase::new(),
            worker: None,
            pool: None,
        };
        if with_worker {
            stack.start_worker().await;
        }
        stack
    }

    pub fn worker_settings(&self) -> Settings {
        Settings {
            database_url: SecretUrl(self.database.url.clone()),
            worker_concurrency: 4,
            worker_listen: "127.0.0.1:0".into(),
            ..self.ingest.settings.clone()
        }
    }

    pub async fn start_worker(&mut self) {
        self.start_worker_with(self.worker_settings()).await;
    }

    /// Starts a worker with settings changed from [`Stack::worker_settings`] (hooks, say).
    pub async fn start_worker_with(&mut self, settings: Settings) {
        self.worker = Some(TestWorker::start(settings));
        self.wait_for_schema().await;
    }

    /// Waits until the transcription of `hook` for the voicemail `attachment_name` is `done` or
    /// `failed`, and returns that row.
    pub async fn finished_transcription(
        &self,
        attachment_name: &str,
        hook: &str,
        timeout: Duration,
    ) -> sqlx::postgres::PgRow {
        let deadline = Instant::now() + timeout;
        loop {
            let row = sqlx::query(
                "SELECT t.* FROM transcriptions t JOIN voicemails v ON v.id = t.voicemail_id
                 WHERE v.attachment_name = $1 AND t.hook = $2 AND t.status IN ('done', 'failed')",
            )
            .bind(attachment_name)
            .bind(hook)
            .fetch_optional(self.pool())
            .await
            .expect("query transcriptions");
            if let Some(row) = row {
                return row;
            }
            assert!(
                Instant::now() < deadline,
                "no finished {hook} transcription of {attachment_name} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a worker has created and migrated the database, and connects to it.
    pub async fn wait_for_schema(&mut self) {
        for _ in 0..200 {
            if let Ok(pool) = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect(&self.database.url)
                .await
                && migrated(&pool).await
            {
                self.pool = Some(pool);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("worker did not migrate the database");
    }

    pub async fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop().await;
        }
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        self.pool.as_ref().expect("worker started")
    }

    pub async fn put(&self, path: &str, body: Body, att: &Attachment<'_>) {
        let r = self.ingest.client().store(Verb::Put, path, body, att).await;
        assert_eq!(r.status, 201, "PUT {path}");
    }

    pub async fn finish(mut self) {
        self.stop_worker().await;
        if let Some(pool) = self.pool.take() {
            pool.close().await;
        }
        self.queue.delete().await;
        self.ingest.stop().await;
        self.database.drop().await;
    }
}
