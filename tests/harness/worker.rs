//! The worker, run as a task in the test's own process, and the hooks tests give it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vmpipe_common::Settings;
use vmpipe_common::settings::{HookAudio, HookKind, HookSettings};

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

/// `settings` with the built-in Whisper transcriber on, run by the test venv's Python
/// (`VMPIPE_TEST_PYTHON`) with the tests' model (`VMPIPE_TEST_WHISPER_MODEL`, Whisper tiny.en),
/// both set by `scripts/test.sh`.
pub fn with_whisper(settings: Settings) -> Settings {
    let from_env = |name: &str| {
        std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
            panic!(
                "{name} is not set: the Whisper tests need the engine's venv and the test model \
                 (run them with scripts/test.sh, which makes both)"
            )
        })
    };
    Settings {
        transcriber: vmpipe_common::settings::Transcriber::Whisper,
        python: from_env("VMPIPE_TEST_PYTHON"),
        whisper_model: from_env("VMPIPE_TEST_WHISPER_MODEL"),
        ..settings
    }
}

/// A command hook that runs `script` with `sh -c`, the audio's path as `$1`: 20 s timeout,
/// 3 attempts, 100 ms between them.
pub fn shell_hook(name: &str, audio: HookAudio, script: &str) -> HookSettings {
    HookSettings {
        name: name.into(),
        kind: HookKind::Command,
        command: vec![
            "sh".into(),
            "-c".into(),
            script.into(),
            "sh".into(),
            "{audio}".into(),
        ],
        url: None,
        headers: BTreeMap::new(),
        audio,
        timeout_secs: 20,
        max_attempts: 3,
        retry_delay_ms: 100,
        concurrency: None,
    }
}

/// Writes command `hooks` as the `[[hooks]]` tables of a settings file in `dir`, for a worker
/// process (hooks are settings of the file only), and returns its path (`VMPIPE_CONFIG`).
pub fn hooks_file(dir: &Path, hooks: &[HookSettings]) -> PathBuf {
    let quote = |s: &str| serde_json::to_string(s).expect("a string");
    let mut toml = String::new();
    for hook in hooks {
        assert_eq!(hook.kind, HookKind::Command, "command hooks only");
        let command: Vec<String> = hook.command.iter().map(|arg| quote(arg)).collect();
        toml += &format!(
            "[[hooks]]\nname = {}\nkind = \"command\"\ncommand = [{}]\naudio = \"{}\"\n\
             timeout_secs = {}\nmax_attempts = {}\nretry_delay_ms = {}\n",
            quote(&hook.name),
            command.join(", "),
            match hook.audio {
                HookAudio::Original => "original",
                HookAudio::Wav16k => "wav16k",
            },
            hook.timeout_secs,
            hook.max_attempts,
            hook.retry_delay_ms,
        );
        if let Some(concurrency) = hook.concurrency {
            toml += &format!("concurrency = {concurrency}\n");
        }
    }
    let path = dir.join("hooks.toml");
    std::fs::write(&path, toml).expect("write the settings file");
    path
}
