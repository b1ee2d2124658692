//! The built-in Whisper transcriber (`VMPIPE_TRANSCRIBER=whisper`, hook `whisper`).
use futures_util::future::BoxFuture;
use vmpipe_common::Settings;
use vmpipe_common::settings::WHISPER_HOOK;

use super::{Hook, HookError, HookInput, HookPolicy, Transcript};

pub(crate) struct WhisperHook {}

impl WhisperHook {
    pub(crate) fn new(_settings: &Settings) -> Self {
        Self {}
    }
}

impl Hook for WhisperHook {
    fn name(&self) -> &str {
        WHISPER_HOOK
    }

    fn policy(&self) -> HookPolicy {
        HookPolicy::default()
    }

    fn run<'a>(&'a self, _input: &'a HookInput) -> BoxFuture<'a, Result<Transcript, HookError>> {
        Box::pin(async { Err(HookError::retry_because("not yet")) })
    }
}
