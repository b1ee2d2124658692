//! What a hook run gets: the voicemail's row (without KAZOO's document, which comes apart),
//! and its audio, as stored or decoded to a temporary 16 kHz WAV.
//!
//! Either way the audio's path is of vmpipe's choosing, never the storage key (which is the
//! sender's, and may hold shell): the stored file is handed over as a temporary hard link (a
//! copy across file systems) named like `vmpipe-audio-Xk3fQ9.mp3`, deleted after the run.
//!
//! The decode runs on a blocking thread, which a timeout cannot stop: it is told to by a flag,
//! set when the run's future is dropped (at the timeout, or at shutdown), and stops at its next
//! packet instead of writing on to a file that is already deleted.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vmpipe_common::{Storage, StorageKey};

use super::queue::{Claim, TranscriptionQueue};
use crate::audio::decode;
use crate::error::{ResultExt as _, panic_text};
use crate::hooks::{HookAudio, HookError, HookInput};

/// The voicemail's row and audio. Returns the temporary audio file too, deleted when dropped.
/// A decode is at most `max_audio_secs` long.
pub(super) async fn input_for(
    queue: &TranscriptionQueue,
    store: &dyn Storage,
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
    let Some(local) = store
        .local_copy(&key)
        .await
        .retry_with("reading the audio")?
    else {
        return Err(HookError::retry_because(format!(
            "the audio file is missing: {} (in {})",
            key.as_str(),
            store.location()
        )));
    };
    let stored = local.path().to_path_buf();
    let (audio_path, content_type, scratch) = match audio {
        HookAudio::Original => {
            let content_type = audio_content_type(text("content_type"), text("codec"));
            let extension = audio_extension(text("codec"), key.file_name());
            let link = tokio::task::spawn_blocking(move || audio_link(&stored, extension))
                .await
                .retry_with("linking the audio crashed")?
                .retry_with("temporary link to the audio")?;
            (link.to_path_buf(), content_type, Some(link))
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
            let decoded = match tokio::task::spawn_blocking(move || {
                decode::write_wav16k_within(&stored, &output, &limits)
            })
            .await
            {
                Ok(decoded) => decoded,
                // A decoder that panics on these bytes will again (symphonia's Microsoft ADPCM
                // overflows on some, in a build with overflow checks): no retries.
                Err(e) if e.is_panic() => {
                    return Err(HookError::abort_because(format!(
                        "decoding crashed: {}",
                        panic_text(&e.into_panic())
                    )));
                }
                Err(e) => return Err(e).retry_with("decoding stopped"),
            };
            drop(cancel);
            decoded.abort_with("cannot decode the audio")?;
            (scratch.to_path_buf(), "audio/wav".to_owned(), Some(scratch))
        }
    };
    let input = HookInput {
        hook: claim.hook.clone(),
        attempt: u32::try_from(claim.attempts).unwrap_or(u32::MAX),
        attempt_id: claim.attempt_id,
        voicemail_id: claim.voicemail_id,
        audio_path,
        audio_format: audio,
        audio_content_type: content_type,
        voicemail,
        document,
    };
    Ok((input, scratch))
}

/// A name of vmpipe's choosing for the stored file, in the temporary directory: a hard link to
/// it, or a copy where the two are on different file systems.
fn audio_link(stored: &Path, extension: String) -> std::io::Result<tempfile::TempPath> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("vmpipe-audio-").suffix(&extension);
    if let Ok(link) = builder.make(|path| std::fs::hard_link(stored, path)) {
        return Ok(link.into_temp_path());
    }
    let mut copy = builder.tempfile()?;
    std::io::copy(&mut std::fs::File::open(stored)?, copy.as_file_mut())?;
    Ok(copy.into_temp_path())
}

/// The extension of the audio's temporary name: from the codec measured, else the key's own
/// if it is a plain one (letters and digits), else none.
fn audio_extension(codec: &str, file_name: &str) -> String {
    let from_codec = match codec {
        "mp3" | "mp2" | "mp1" => Some(codec),
        _ if codec.starts_with("pcm_") || codec.starts_with("adpcm_") || codec == "gsm_ms" => {
            Some("wav")
        }
        _ => None,
    };
    let from_key = || {
        file_name
            .rsplit_once('.')
            .map(|(_, ext)| ext)
            .filter(|ext| {
                (1..=5).contains(&ext.len()) && ext.bytes().all(|b| b.is_ascii_alphanumeric())
            })
    };
    from_codec
        .or_else(from_key)
        .map_or_else(String::new, |ext| format!(".{}", ext.to_ascii_lowercase()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extension_is_the_codec_s_or_a_plain_one() {
        assert_eq!(audio_extension("mp3", "$(x).wav"), ".mp3");
        assert_eq!(audio_extension("pcm_s16le", "a.mp3"), ".wav");
        assert_eq!(audio_extension("other", "a.OGG"), ".ogg");
        assert_eq!(audio_extension("", "a.$(x)"), "");
        assert_eq!(audio_extension("", "a;b"), "");
        assert_eq!(audio_extension("other", "a.toolong"), "");
    }

    #[test]
    fn the_link_has_vmpipe_s_name_and_the_stored_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let stored = dir.path().join("$(touch x); `y`.mp3");
        std::fs::write(&stored, b"audio").unwrap();
        let link = audio_link(&stored, ".mp3".into()).unwrap();
        let name = link.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            name.starts_with("vmpipe-audio-") && name.ends_with(".mp3"),
            "{name}"
        );
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        );
        assert_eq!(std::fs::read(&link).unwrap(), b"audio");
        let path = link.to_path_buf();
        drop(link);
        assert!(!path.exists());
        assert!(stored.exists(), "the stored file stays");
    }
}
