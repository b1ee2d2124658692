//! The whole pipeline for one test: ingest, worker, queue and database of its own.

use std::time::{Duration, Instant};

use vmpipe_common::Settings;
use vmpipe_common::settings::SecretUrl;

use crate::database::TestDatabase;
use crate::ingest::{Backend, Options, TestIngest};
use crate::kazoo::{Attachment, Body, Verb};
use crate::queue::TestQueue;
use crate::worker::TestWorker;

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
        Self::start_on(Backend::Fs, with_worker).await
    }

    /// A stack whose files go to `backend`.
    pub async fn start_on(backend: Backend, with_worker: bool) -> Self {
        let options = Options {
            backend,
            ..Options::default()
        };
        Self::start_with(options, with_worker).await
    }

    /// A stack whose ingest starts with `options` (its queue is the stack's own).
    pub async fn start_with(options: Options, with_worker: bool) -> Self {
        let (ingest, queue) = TestIngest::start_with_queue(options).await;
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
        self.pool = Some(self.database.wait_for_schema().await);
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

    /// A WAV voicemail stored as KAZOO does, at `path` (document id `d`); asserts the 201.
    pub async fn put_wav(&self, path: &str, name: &str, audio: &[u8]) {
        let r = self
            .ingest
            .client()
            .store_voicemail_at(path, "d", name, audio, "audio/wav")
            .await;
        assert_eq!(r.status, 201, "PUT {path}");
    }

    /// A voicemail stored as KAZOO does (multipart, with its document) under `account`;
    /// asserts the 201.
    pub async fn upload(&self, account: &str, name: &str, audio: &[u8], content_type: &str) {
        let r = self
            .ingest
            .client()
            .store_voicemail(account, name, audio, content_type)
            .await;
        assert_eq!(r.status, 201, "{name}");
    }

    /// A WAV voicemail of 300 ms stored as KAZOO does under `account`; asserts the 201.
    pub async fn upload_wav(&self, account: &str, name: &str) {
        self.upload(account, name, &crate::wav_pcm16(8000, 300), "audio/wav")
            .await;
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
