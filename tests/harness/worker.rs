//! The worker, run as a task in the test's own process.

use vmpipe_common::Settings;

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
