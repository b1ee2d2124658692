//! The worker's errors. [`JobError`] is the one vocabulary of the work it does, jobs and hook
//! runs alike: every failure says what should happen next (retry, give up, hand back), and
//! keeps its cause. Decisions are taken on the variant, never on a message's text.

use std::fmt::Display;

/// Why a job (or a hook run) did not complete, and so what to do with it.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Retrying cannot help (not a job, the file is gone, undecodable audio, a 4xx answer):
    /// give up, with this reason (a job is dead-lettered, a transcription marked failed).
    #[error("{}", reason(.0))]
    Abort(anyhow::Error),
    /// May work next time (the file could not be read, a crash, a timeout, a 5xx): try again
    /// later, up to the limit of attempts.
    #[error("{}", reason(.0))]
    Retry(anyhow::Error),
    /// Shutdown came first (for a job, or the loss of its delivery's channel): hand the work
    /// back; the attempt does not count.
    #[error("interrupted by shutdown")]
    Interrupted,
}

impl JobError {
    /// The error's code in log lines (`code=`): what happens to the work next.
    pub fn code(&self) -> &'static str {
        match self {
            JobError::Abort(_) => "abort",
            JobError::Retry(_) => "retry",
            JobError::Interrupted => "interrupted",
        }
    }

    /// Gives up because of `cause`.
    pub fn abort(cause: impl Into<anyhow::Error>) -> Self {
        JobError::Abort(cause.into())
    }

    /// Tries again later because of `cause`.
    pub fn retry(cause: impl Into<anyhow::Error>) -> Self {
        JobError::Retry(cause.into())
    }

    /// Gives up, for a reason that has no error value behind it.
    pub fn abort_because(reason: impl Display + std::fmt::Debug + Send + Sync + 'static) -> Self {
        JobError::Abort(anyhow::Error::msg(reason))
    }

    /// Tries again later, for a reason that has no error value behind it.
    pub fn retry_because(reason: impl Display + std::fmt::Debug + Send + Sync + 'static) -> Self {
        JobError::Retry(anyhow::Error::msg(reason))
    }
}

/// An error and its causes as one line, `what was done: why: why`. Many errors already print
/// their cause in their own message (sqlx's, thiserror's `{source}` fields): a cause whose text
/// ends the line so far is not repeated.
fn reason(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Adds what was being done to an error, keeping it as the cause: `.retry_with("reading the
/// audio")` on an `io::Error` reads "reading the audio: No such file or directory".
pub(crate) trait ResultExt<T> {
    fn abort_with(self, doing: impl Display + Send + Sync + 'static) -> Result<T, JobError>;
    fn retry_with(self, doing: impl Display + Send + Sync + 'static) -> Result<T, JobError>;
}

impl<T, E> ResultExt<T> for Result<T, E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn abort_with(self, doing: impl Display + Send + Sync + 'static) -> Result<T, JobError> {
        self.map_err(|e| JobError::Abort(anyhow::Error::new(e).context(doing)))
    }

    fn retry_with(self, doing: impl Display + Send + Sync + 'static) -> Result<T, JobError> {
        self.map_err(|e| JobError::Retry(anyhow::Error::new(e).context(doing)))
    }
}

/// What stops a worker command from starting or finishing.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("storage: {0}")]
    Storage(#[from] vmpipe_common::StorageError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ: {0}")]
    Publish(#[from] vmpipe_common::amqp::PublishError),
    #[error("{0}")]
    Refused(String),
    #[error("a task stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("hook: {0:#}")]
    Hook(#[source] anyhow::Error),
    #[error("notify sink: {0:#}")]
    Sink(#[source] anyhow::Error),
    #[error(transparent)]
    Runner(#[from] crate::hooks::runner::RunnerError),
}

/// Whether an I/O error is a shortage of this process's own resources (too many open files in
/// the process or the system, no memory, no buffer space): passing, and no fault of the input.
pub(crate) fn is_local_shortage(error: &std::io::Error) -> bool {
    // EMFILE, ENFILE, ENOMEM, ENOBUFS.
    matches!(error.raw_os_error(), Some(24 | 23 | 12 | 105))
        || error.kind() == std::io::ErrorKind::OutOfMemory
}

/// The message of a caught panic (a probe on hostile audio, a compiled-in hook).
pub(crate) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that prints its cause itself, as sqlx's and thiserror's `{source}` do.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot read /x: {source}")]
    struct Read {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_its_error_already_shows_is_not_repeated() {
        let read = Read {
            source: std::io::Error::other("EIO"),
        };
        let error = Err::<(), _>(read)
            .abort_with("cannot decode the audio")
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot decode the audio: cannot read /x: EIO"
        );
    }

    #[test]
    fn the_cause_is_kept_and_shown() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = Err::<(), _>(io)
            .retry_with("reading the audio")
            .unwrap_err();
        assert_eq!(error.to_string(), "reading the audio: no such file");
        let JobError::Retry(cause) = &error else {
            panic!("{error:?}")
        };
        assert!(cause.downcast_ref::<std::io::Error>().is_some());
        assert_eq!(
            JobError::abort_because("gone").to_string(),
            "gone",
            "a reason without a cause reads as itself"
        );
    }
}
