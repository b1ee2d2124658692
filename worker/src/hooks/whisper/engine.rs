//! The Whisper engine process: started once per worker, kept for every voicemail, restarted
//! when it dies.
//!
//! The engine (`hooks/whisper_engine.py`, embedded here) is run by `VMPIPE_PYTHON` under the
//! same supervisor as command hooks ([`super::super::supervise`]): it dies with the worker, even
//! on SIGKILL. It loads the model, says `ready`, then answers one JSON line per request, in any
//! order (it transcribes up to `VMPIPE_WHISPER_CONCURRENCY` at once). Answers are matched to
//! requests by id.
//!
//! - An engine that exits fails the requests it had (they are retried, as any hook attempt) and
//!   is started again for the next request; one that dies soon after its start waits longer
//!   before each new start (1 s, doubling, at most a minute), so a broken installation does not
//!   spin.
//! - A request given up before its answer (the hook's timeout, a lost lease, shutdown) kills the
//!   engine: a transcription cannot be stopped half-way, and the CPU it would go on using belongs
//!   to the next one. Other requests in flight then fail and are retried.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vmpipe_common::backoff;

use super::protocol::{Answer, Config, Event, Line, Request};
use crate::hooks::supervise::{ProcessGroup, spawn_supervised, without_settings};

/// The engine's source, handed to Python in [`SOURCE_VARIABLE`] (a process listing then shows
/// [`BOOTSTRAP`] and [`MARKER`], not the whole script).
const SCRIPT: &str = include_str!("../../../../hooks/whisper_engine.py");
const SOURCE_VARIABLE: &str = "WHISPER_ENGINE_SOURCE";
const BOOTSTRAP: &str = "import os; exec(compile(os.environ.pop('WHISPER_ENGINE_SOURCE'), \
                         'whisper_engine.py', 'exec'))";
/// The engine's first argument: how to tell it in a process listing.
pub(crate) const MARKER: &str = "vmpipe-whisper-engine";
/// Longest a model may take to load (a large one, from a slow disk, at low CPU priority).
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest answer line: the segments of the longest voicemail fit many times over.
const MAX_LINE: u64 = 64 << 20;
/// The end of the engine's log kept for the error of a request it failed by exiting.
const LOG_TAIL: usize = 1500;
/// An engine that dies sooner than this after its start counts as a failed start.
const STABLE_AFTER: Duration = Duration::from_secs(60);

pub(super) struct Engine {
    python: String,
    config: Config,
    slot: tokio::sync::Mutex<Slot>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Slot {
    running: Option<Arc<Running>>,
    /// Failed starts in a row (or engines that died soon after starting).
    failures: u32,
}

/// A started engine. Dropping it kills the engine.
struct Running {
    started: Instant,
    stdin: tokio::sync::Mutex<ChildStdin>,
    shared: Arc<Shared>,
    _group: ProcessGroup,
}

/// What the engine's reader and the requests share.
struct Shared {
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    /// Cancelled once the engine's output has ended (it exited or was killed).
    gone: CancellationToken,
    /// Killed by the worker (a request cut short, shutdown): not a failure of the engine.
    killed: AtomicBool,
    log_tail: Mutex<String>,
}

impl Shared {
    fn tail(&self) -> String {
        let tail = self.log_tail.lock().expect("not poisoned");
        match tail.trim() {
            "" => "it printed nothing".to_owned(),
            text => format!("its last words: {text}"),
        }
    }
}

impl Engine {
    pub(super) fn new(python: String, config: Config) -> Self {
        Self {
            python,
            config,
            slot: tokio::sync::Mutex::default(),
            next_id: AtomicU64::new(1),
        }
    }

    /// Starts the engine now (the model loaded), unless it runs already.
    pub(super) async fn start(&self) -> anyhow::Result<()> {
        self.running().await.map(drop)
    }

    /// Transcribes a 16 kHz mono WAV. Retry: the engine failed or exited; abort: the audio is
    /// at fault.
    pub(super) async fn transcribe(
        &self,
        audio: &Path,
        language: &str,
    ) -> Result<Answer, crate::hooks::HookError> {
        let running = self
            .running()
            .await
            .map_err(crate::hooks::HookError::retry)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, answer) = oneshot::channel();
        running
            .shared
            .pending
            .lock()
            .expect("not poisoned")
            .insert(id, sender);
        // The reader marks the engine gone before it drops what is pending: checked after the
        // insert, a request cannot be left waiting for an engine that is no more.
        let exited = || {
            crate::hooks::HookError::retry_because(format!(
                "the Whisper engine exited during the transcription ({})",
                running.shared.tail()
            ))
        };
        if running.shared.gone.is_cancelled() {
            return Err(exited());
        }
        let mut cut_short = CutShort(Some(running.clone()));
        let mut line = serde_json::to_vec(&Request {
            id,
            audio,
            language,
        })
        .expect("serialisable request");
        line.push(b'\n');
        let written = async {
            let mut stdin = running.stdin.lock().await;
            stdin.write_all(&line).await?;
            stdin.flush().await
        };
        if written.await.is_err() {
            cut_short.0 = None;
            return Err(exited());
        }
        let answer = answer.await;
        cut_short.0 = None;
        answer.map_err(|_| exited())
    }

    /// The running engine, started (or started again) if need be.
    async fn running(&self) -> anyhow::Result<Arc<Running>> {
        let mut slot = self.slot.lock().await;
        if let Some(running) = &slot.running {
            if !running.shared.gone.is_cancelled() {
                return Ok(running.clone());
            }
            let on_purpose = running.shared.killed.load(Ordering::Relaxed);
            if !on_purpose && running.started.elapsed() < STABLE_AFTER {
                slot.failures += 1;
            } else {
                slot.failures = 0;
            }
            slot.running = None;
        }
        if slot.failures > 0 {
            let wait = backoff::exponential(
                Duration::from_secs(1),
                Duration::from_secs(60),
                slot.failures - 1,
            );
            info!(
                wait_ms = wait.as_millis() as u64,
                failures = slot.failures,
                "waiting before starting the Whisper engine again"
            );
            tokio::time::sleep(wait).await;
        }
        match self.spawn().await {
            Ok(running) => {
                let running = Arc::new(running);
                slot.running = Some(running.clone());
                Ok(running)
            }
            Err(e) => {
                slot.failures += 1;
                Err(e)
            }
        }
    }

    async fn spawn(&self) -> anyhow::Result<Running> {
        let config = serde_json::to_string(&self.config).expect("serialisable config");
        let mut command = Command::new(&self.python);
        command
            .arg("-c")
            .arg(BOOTSTRAP)
            .arg(MARKER)
            .arg(&config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        without_settings(&mut command);
        command
            .env(SOURCE_VARIABLE, SCRIPT)
            .env("HF_HUB_OFFLINE", "1");
        let started = Instant::now();
        let mut child = spawn_supervised(command)
            .await
            .with_context(|| format!("cannot start the Whisper engine with {:?}", self.python))?;
        let group = ProcessGroup(child.id().context("the engine exited at once")?);
        metrics::counter!("vmpipe_whisper_engine_starts_total").increment(1);
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            gone: CancellationToken::new(),
            killed: AtomicBool::new(false),
            log_tail: Mutex::default(),
        });
        let stderr = child.stderr.take().expect("piped");
        let logger = tokio::spawn(log_lines(stderr, shared.clone()));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let stdin = child.stdin.take().expect("piped");

        let first = tokio::time::timeout(READY_TIMEOUT, read_line(&mut stdout)).await;
        let failure = match first {
            Err(_) => Some(format!(
                "the Whisper engine did not load its model within {} s",
                READY_TIMEOUT.as_secs()
            )),
            Ok(Ok(None) | Err(_)) => Some("the Whisper engine exited before it was ready".into()),
            Ok(Ok(Some(line))) => match serde_json::from_slice::<Line>(&line) {
                Ok(Line::Event(Event::Ready {
                    load_ms,
                    rss_bytes,
                    versions,
                })) => {
                    metrics::gauge!("vmpipe_whisper_model_load_seconds")
                        .set(load_ms as f64 / 1000.0);
                    if let Some(rss) = rss_bytes {
                        metrics::gauge!("vmpipe_whisper_engine_rss_bytes").set(rss as f64);
                    }
                    info!(
                        model = %self.config.model,
                        device = self.config.device,
                        compute_type = %self.config.compute_type,
                        concurrency = self.config.concurrency,
                        load_ms,
                        rss_bytes,
                        start_ms = started.elapsed().as_millis() as u64,
                        versions = %versions,
                        pid = group.0,
                        "Whisper engine ready"
                    );
                    None
                }
                Ok(Line::Event(Event::Fatal { error })) => Some(error),
                Ok(Line::Answer(_)) | Err(_) => {
                    Some("the Whisper engine's first line is not `ready`".into())
                }
            },
        };
        if let Some(why) = failure {
            // Its log ends with the engine (killed with its group).
            drop(group);
            let _ = tokio::time::timeout(Duration::from_secs(2), logger).await;
            return Err(anyhow!("{why} ({})", shared.tail()));
        }
        tokio::spawn(read_answers(stdout, child, shared.clone()));
        Ok(Running {
            started,
            stdin: tokio::sync::Mutex::new(stdin),
            shared,
            _group: group,
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.killed.store(true, Ordering::Relaxed);
    }
}

/// Kills the engine when a request is dropped before its answer (see the module's notes).
struct CutShort(Option<Arc<Running>>);

impl Drop for CutShort {
    fn drop(&mut self) {
        if let Some(running) = self.0.take() {
            warn!(
                "a transcription was cut short (timeout, lost lease or shutdown): the Whisper \
                 engine is stopped, and started again for the next one"
            );
            running.shared.killed.store(true, Ordering::Relaxed);
            if let Some(pid) = rustix::process::Pid::from_raw(running._group.0 as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Hands each answer to its request until the engine's output ends; then fails what is left.
async fn read_answers(mut stdout: BufReader<ChildStdout>, mut child: Child, shared: Arc<Shared>) {
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
    let _ = child.start_kill();
    let status = child.wait().await;
    if shared.killed.load(Ordering::Relaxed) {
        info!(status = ?status.ok(), "Whisper engine stopped");
    } else {
        warn!(status = ?status.ok(), log = %shared.tail(), "the Whisper engine exited");
    }
}

/// Copies the engine's log into the worker's, keeping its end for errors.
async fn log_lines(stderr: impl AsyncRead + Unpin, shared: Arc<Shared>) {
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
async fn read_line(reader: &mut BufReader<ChildStdout>) -> std::io::Result<Option<Vec<u8>>> {
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
