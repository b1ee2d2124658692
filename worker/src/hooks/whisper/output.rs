//! The Whisper engine's output: its answers handed to the requests waiting for them, and its
//! log copied into the worker's.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout};
use tracing::{info, warn};

use super::engine::Shared;
use super::protocol::Line;

/// Longest answer line: the segments of the longest voicemail fit many times over.
const MAX_LINE: u64 = 64 << 20;
/// The end of the engine's log kept for the error of a request it failed by exiting.
const LOG_TAIL: usize = 1500;

/// Hands each answer to its request until the engine's output ends; then fails what is left.
pub(super) async fn read_answers(
    mut stdout: BufReader<ChildStdout>,
    mut child: Child,
    group: u32,
    shared: Arc<Shared>,
) {
    while let Ok(Some(line)) = read_line(&mut stdout).await {
        match serde_json::from_slice::<Line>(&line) {
            Ok(Line::Answer(answer)) => {
                if let Some(rss) = answer.rss_bytes {
                    metrics::gauge!("vmpipe_whisper_engine_rss_bytes").set(rss as f64);
                }
                let waiting = shared
                    .pending
                    .lock()
                    .expect("not poisoned")
                    .remove(&answer.id);
                if let Some(request) = waiting {
                    let _ = request.send(answer);
                }
            }
            _ => {
                warn!(
                    line = %String::from_utf8_lossy(&line[..line.len().min(300)]),
                    "the Whisper engine said something that is not an answer: stopping it"
                );
                break;
            }
        }
    }
    shared.gone.cancel();
    shared.pending.lock().expect("not poisoned").clear();
    // The whole group, while its leader is not yet reaped (its pid still the group's).
    shared.kill(group, false);
    let status = child.wait().await;
    shared.reaped.store(true, Ordering::Release);
    if shared.killed.load(Ordering::Relaxed) {
        info!(status = ?status.ok(), "Whisper engine stopped");
    } else {
        warn!(status = ?status.ok(), log = %shared.tail(), "the Whisper engine exited");
    }
}

/// Copies the engine's log into the worker's, keeping its end for errors.
pub(super) async fn log_lines(stderr: impl AsyncRead + Unpin, shared: Arc<Shared>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line: String = line.chars().take(2000).collect();
        info!(target: "vmpipe_worker::whisper_engine", "{line}");
        let mut tail = shared.log_tail.lock().expect("not poisoned");
        tail.push_str(&line);
        tail.push('\n');
        if tail.len() > 2 * LOG_TAIL {
            let mut cut = tail.len() - LOG_TAIL;
            while !tail.is_char_boundary(cut) {
                cut += 1;
            }
            tail.drain(..cut);
        }
    }
}

/// One line (without its end), at most [`MAX_LINE`] bytes; `None` at the end of the output.
pub(super) async fn read_line(
    reader: &mut BufReader<ChildStdout>,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(MAX_LINE)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Ok(None);
    }
    if line.pop() != Some(b'\n') {
        return Err(std::io::Error::other("an unfinished or over-long line"));
    }
    Ok(Some(line))
}
