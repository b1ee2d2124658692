//! The `command` hook: runs a program per voicemail; what it prints is the transcript.
//!
//! The program gets:
//! - its arguments as configured, with `{audio}` replaced by the audio file's path and `{id}`
//!   by the voicemail's id: both of vmpipe's making (a temporary `vmpipe-audio-…` or
//!   `vmpipe-wav16k-…` name, a UUID), never from the sender, so safe even in a shell line;
//! - the [`HookInput`] as JSON on standard input (it may ignore it);
//! - `VMPIPE_HOOK_NAME`, `VMPIPE_HOOK_ATTEMPT`, `VMPIPE_HOOK_ATTEMPT_ID`, `VMPIPE_VOICEMAIL_ID`,
//!   `VMPIPE_AUDIO_PATH` and `VMPIPE_AUDIO_FORMAT` in its environment, and none of the worker's
//!   own `VMPIPE_*` settings (they hold the database password).
//!
//! Exit status 0 is success: standard output is the transcript, either as plain text or as a
//! JSON object `{"text": ..., "language": ..., "confidence": ...}` (a JSON object without a
//! `text` string is a failed attempt, not a transcript). Any other ending is a failed attempt,
//! reported with the end of standard error. The program runs in its own process group, and the
//! whole group is killed when the run ends or times out, and when the worker dies, even by
//! SIGKILL (see [`super::supervise`]). It runs at the lowest CPU priority: the `SCHED_IDLE`
//! policy (through util-linux's `chrt`, when installed), and nice 10.

use std::process::Stdio;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::supervise::{ProcessGroup, spawn_supervised, without_settings};
use super::{Hook, HookAudio, HookError, HookInput, HookPolicy, Transcript};
use crate::error::ResultExt as _;

/// Most of a transcript fits in far less; more is a runaway program.
const MAX_STDOUT: u64 = 1 << 20;
/// The end of standard error kept for the `error` column.
const STDERR_TAIL: usize = 2000;

pub(super) struct CommandHook {
    name: String,
    argv: Vec<String>,
    policy: HookPolicy,
}

impl CommandHook {
    /// `argv[0]` is the program, looked up in `PATH`.
    pub(super) fn new(name: &str, argv: Vec<String>, policy: HookPolicy) -> Self {
        assert!(!argv.is_empty(), "a command hook needs a program");
        Self {
            name: name.to_owned(),
            argv,
            policy,
        }
    }

    async fn execute(&self, input: &HookInput) -> Result<Transcript, HookError> {
        let audio = input.audio_path.to_string_lossy();
        let id = input.voicemail_id.to_string();
        let args = self.argv[1..]
            .iter()
            .map(|arg| arg.replace("{audio}", &audio).replace("{id}", &id));
        let mut command = low_priority(&self.argv[0]);
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        without_settings(&mut command);
        command
            .env("VMPIPE_HOOK_NAME", &self.name)
            .env("VMPIPE_HOOK_ATTEMPT", input.attempt.to_string())
            .env("VMPIPE_HOOK_ATTEMPT_ID", input.attempt_id.to_string())
            .env("VMPIPE_VOICEMAIL_ID", &id)
            .env("VMPIPE_AUDIO_PATH", &input.audio_path)
            .env(
                "VMPIPE_AUDIO_FORMAT",
                match input.audio_format {
                    HookAudio::Original => "original",
                    HookAudio::Wav16k => "wav16k",
                },
            );
        let mut child = spawn_supervised(command)
            .await
            .retry_with(format!("cannot start {:?}", self.argv[0]))?;
        // Whatever happens next (timeout included: this future is dropped), the program and
        // anything it started are killed.
        let _group = child.id().map(ProcessGroup);

        let json = serde_json::to_vec(input).expect("serialisable input");
        let mut stdin = child.stdin.take().expect("piped");
        let feed = async move {
            // A program that does not read its input closes the pipe: not an error.
            let _ = stdin.write_all(&json).await;
        };
        let stdout = read_limited(child.stdout.take().expect("piped"), MAX_STDOUT);
        let stderr = read_limited(child.stderr.take().expect("piped"), MAX_STDOUT);
        let ((), stdout, stderr, status) = tokio::join!(feed, stdout, stderr, child.wait());
        let status = status.retry_with("waiting for the program")?;
        let stdout = stdout.retry_with("reading its output")?;
        let stderr = stderr.unwrap_or_default();
        if !status.success() {
            let how = match (
                status.code(),
                std::os::unix::process::ExitStatusExt::signal(&status),
            ) {
                (Some(code), _) => format!("exit status {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                (None, None) => "ended abnormally".to_owned(),
            };
            let stderr = String::from_utf8_lossy(&stderr);
            let tail = tail(&stderr, STDERR_TAIL);
            return Err(HookError::retry_because(if tail.is_empty() {
                how
            } else {
                format!("{how}: {tail}")
            }));
        }
        if stdout.len() as u64 >= MAX_STDOUT {
            return Err(HookError::retry_because(format!(
                "the program printed more than {MAX_STDOUT} bytes"
            )));
        }
        parse_output(&String::from_utf8_lossy(&stdout))
    }
}

impl Hook for CommandHook {
    fn name(&self) -> &str {
        &self.name
    }

    fn policy(&self) -> HookPolicy {
        self.policy
    }

    fn run<'a>(&'a self, input: &'a HookInput) -> BoxFuture<'a, Result<Transcript, HookError>> {
        Box::pin(self.execute(input))
    }
}

/// A command for `program` that starts under `SCHED_IDLE` when `chrt` is there.
fn low_priority(program: &str) -> Command {
    match idle_launcher() {
        Some(chrt) => {
            let mut command = Command::new(chrt);
            command.args(["--idle", "0", program]);
            command
        }
        None => Command::new(program),
    }
}

/// `chrt`, which starts a program under the `SCHED_IDLE` policy: it then only gets CPU time
/// nothing else wants, which nice alone does not achieve.
fn idle_launcher() -> Option<&'static std::path::Path> {
    static CHRT: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    CHRT.get_or_init(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join("chrt"))
            .find(|candidate| candidate.is_file())
    })
    .as_deref()
}

/// Reads up to `limit` bytes, then drains the rest so that the program is not blocked on a
/// full pipe.
async fn read_limited(mut pipe: impl AsyncRead + Unpin, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    (&mut pipe).take(limit).read_to_end(&mut kept).await?;
    tokio::io::copy(&mut pipe, &mut tokio::io::sink()).await?;
    Ok(kept)
}

/// Plain text, or the same JSON object a webhook answers with: a JSON object must be a
/// transcript (a `text` string), else the attempt failed.
fn parse_output(stdout: &str) -> Result<Transcript, HookError> {
    let trimmed = stdout.trim();
    if trimmed.starts_with('{')
        && let Ok(object) = serde_json::from_str::<serde_json::Value>(trimmed)
    {
        return super::transcript_from_json(object)
            .map_err(|why| HookError::retry_because(format!("the program printed {why}")));
    }
    Ok(Transcript {
        text: trimmed.to_owned(),
        ..Transcript::default()
    })
}

fn tail(text: &str, max: usize) -> &str {
    let text = text.trim();
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_plain_text_or_a_json_transcript() {
        assert_eq!(parse_output("  hello world\n").unwrap().text, "hello world");
        let json = parse_output(r#"{"text": "hi", "language": "en", "confidence": 0.5}"#).unwrap();
        assert_eq!(json.language.as_deref(), Some("en"));
        assert_eq!(json.confidence, Some(0.5));
        // Braces that are not JSON stay text.
        assert_eq!(parse_output("{not json}").unwrap().text, "{not json}");
    }

    #[test]
    fn a_json_object_without_text_is_a_failed_attempt() {
        for output in [
            r#"{"transcript": "hi"}"#,
            r#"{"text": null}"#,
            r#"{"text": 3}"#,
        ] {
            let error = parse_output(output).unwrap_err().to_string();
            assert!(
                error.contains("without a \"text\" string"),
                "{output}: {error}"
            );
            assert!(matches!(
                parse_output(output),
                Err(crate::error::JobError::Retry(_))
            ));
        }
    }

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ééé", 3), "é");
    }
}
