//! Ingest, run in the test's own process on a free port with its own storage directory and
//! queue, and helpers that look at what it left in storage.

use std::path::{Path, PathBuf};

use vmpipe_common::Settings;
use vmpipe_common::settings::{Base64Mode, ByteSize, SecretUrl};
use vmpipe_ingest::Application;

use crate::audio::hex32;
use crate::kazoo::Kazoo;
use crate::queue::{TestQueue, amqp_url};

/// Where a test's voicemail files go: its storage directory, or a bucket of its own on the
/// shared Garage ([`crate::Garage::shared`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    #[default]
    Fs,
    S3,
}

/// A change to a test service's settings.
pub type Tweak = Box<dyn FnOnce(&mut Settings) + Send>;

/// A running ingest with its own storage directory and queue.
pub struct TestIngest {
    pub port: u16,
    /// Parent of the storage directory: nothing may ever appear here but `storage/`.
    pub sandbox: tempfile::TempDir,
    pub settings: Settings,
    shutdown: tokio_util::sync::CancellationToken,
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
    pub backend: Backend,
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
            backend: Backend::Fs,
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
            // Stopped by the test, not restarted behind a load balancer.
            drain_secs: 0,
            ..Settings::default()
        };
        if options.backend == Backend::S3 {
            let garage = crate::Garage::shared();
            garage.use_bucket(&mut settings, &garage.bucket("ingest"));
        }
        if let Some(tweak) = options.tweak {
            tweak(&mut settings);
        }
        let app = Application::build(settings.clone())
            .await
            .expect("ingest starts");
        let port = app.port();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        Self {
            port,
            sandbox,
            settings,
            shutdown,
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
        self.shutdown.cancel();
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

    /// The keys of every stored voicemail, sorted, read through the store (either backend).
    pub async fn stored_keys(&self) -> Vec<String> {
        use futures_util::StreamExt as _;
        let store = vmpipe_common::store::open_existing(&self.settings).expect("store");
        let mut keys: Vec<String> = store
            .list()
            .map(|listed| listed.expect("listing").name)
            .collect()
            .await;
        keys.sort();
        keys
    }

    /// Jobs in the journal that RabbitMQ has not confirmed, read from its files (what a
    /// restart would publish).
    pub fn journal_entries(&self) -> usize {
        vmpipe_ingest::jobs_on_disk(&self.storage_dir().join("journal")).unwrap_or(0)
    }

    /// Uploads in progress (files below tmp/).
    pub fn temp_files(&self) -> usize {
        all_files(&self.storage_dir().join("tmp")).len()
    }
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
