//! What a hook run gets: the voicemail's row (without KAZOO's document, which comes apart),
//! and its audio, as stored or decoded to a temporary 16 kHz WAV.
//!
//! The decode runs on a blocking thread, which a timeout cannot stop: it is told to by a flag,
//! set when the run's future is dropped (at the timeout, or at shutdown), and stops at its next
//! packet instead of writing on to a file that is already deleted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vmpipe_common::{FsStore, StorageKey};

use super::queue::{Claim, TranscriptionQueue};
use crate::audio::decode;
use crate::error::ResultExt as _;
use crate::hooks::{HookAudio, HookError, HookInput};

/// The voicemail's row and audio. Returns the temporary 16 kHz file too, deleted when dropped.
/// A decode is at most `max_audio_secs` long.
pub(super) async fn input_for(
    queue: &TranscriptionQueue,
    store: &FsStore,
    claim: &Claim,
    audio: HookAudio,
    max_audio_secs: u64,
) -> Result<(HookInput, Option<tempfile::TempPath>), HookError> {
    let row = queue
        .voicemail(claim.voicemail_id)
        .await
        .retry_with("reading the voicemail")?;
    let Some(serde_json::Value::Object(mut voicemail)) = row else {
        return Err(HookError::abort_because("the voicemail is gone"));
    };
    let document = voicemail.remove("metadata").filter(|doc| !doc.is_null());
    let text = |name: &str| {
        voicemail
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    };
    let key = StorageKey::parse(text("storage_key")).abort_with("bad storage key")?;
    let stored = store.path_of(&key);
    if !stored.is_file() {
        return Err(HookError::retry_because(format!(
            "the audio file is missing: {}",
            stored.display()
        )));
    }
    let (audio_path, content_type, scratch) = match audio {
        HookAudio::Original => {
            let content_type = audio_content_type(text("content_type"), text("codec"));
            (stored, content_type, None)
        }
        HookAudio::Wav16k => {
            let scratch = tempfile::Builder::new()
                .prefix("vmpipe-wav16k-")
                .suffix(".wav")
                .tempfile()
                .retry_with("temporary file")?
                .into_temp_path();
            let output = scratch.to_path_buf();
            let cancel = CancelOnDrop::default();
            let limits = decode::Limits::new(max_audio_secs, Some(cancel.0.clone()));
            let decoded = tokio::task::spawn_blocking(move || {
                decode::write_wav16k_within(&stored, &output, &limits)
            })
            .await
            .retry_with("decoding crashed")?;
            drop(cancel);
            decoded.abort_with("cannot decode the audio")?;
            (scratch.to_path_buf(), "audio/wav".to_owned(), Some(scratch))
        }
    };
    let input = HookInput {
        hook: claim.hook.clone(),
        attempt: u32::try_from(claim.attempts).unwrap_or(u32::MAX),
        voicemail_id: claim.voicemail_id,
        audio_path,
        audio_format: audio,
        audio_content_type: content_type,
        voicemail,
        document,
    };
    Ok((input, scratch))
}

/// What to call the stored file in a webhook's `audio` part: KAZOO's declared type when it is
/// an audio type, else one from the codec measured.
fn audio_content_type(declared: &str, codec: &str) -> String {
    if declared.starts_with("audio/") && declared.parse::<mime::Mime>().is_ok() {
        return declared.to_owned();
    }
    match codec {
        "mp3" => "audio/mpeg".into(),
        "" => "application/octet-stream".into(),
        _ => "audio/wav".into(),
    }
}

/// Cancels a decode when dropped: with the run's future, if it does not finish.
#[derive(Default)]
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
