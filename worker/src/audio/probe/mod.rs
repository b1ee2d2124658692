//! Measuring a voicemail's audio: duration, codec, sample rate, channels and bitrate.
//!
//! The format is recognised from the bytes, never from the declared content type (KAZOO's can
//! lie). Durations come from the audio that is really in the file (MPEG frames counted, the
//! WAV data as far as the file goes), not from what a header claims. Nothing is decoded, memory
//! is bounded by a 1 MiB window whatever the file size, and time by the file's length.

mod fallback;
mod mp3;
mod source;
mod tags;
mod wav;

use std::fs::File;
use std::path::Path;

use source::Source;

use super::riff;

/// What the probe measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Probed {
    pub duration_ms: u64,
    pub codec: String,
    pub sample_rate: u32,
    pub channels: u16,
    /// Average bits per second of the audio data.
    pub bitrate_bps: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("empty file")]
    Empty,
    #[error("not audio: {0}")]
    NotAudio(&'static str),
    #[error("unsupported audio format: {0}")]
    Unsupported(String),
    #[error("no audio frames")]
    NoAudio,
    #[error("corrupt audio: {0}")]
    Corrupt(String),
}

/// A format module's raw result.
pub(crate) struct Measured {
    duration_us: u64,
    sample_rate: u32,
    channels: u16,
    codec: &'static str,
    audio_bytes: u64,
}

/// [`probe_file`] for the index: never panics (a panic while probing hostile audio is a probe
/// error, not a dead worker), and the error is the text of the `probe_error` column.
pub(crate) fn probe_for_index(path: &Path) -> Result<Probed, String> {
    std::panic::catch_unwind(|| probe_file(path))
        .map_err(|panic| format!("probe crashed: {}", crate::error::panic_text(&panic)))?
        .map_err(|e| e.to_string())
}

pub fn probe_file(path: &Path) -> Result<Probed, ProbeError> {
    let mut src = Source::new(File::open(path)?)?;
    if src.len() == 0 {
        return Err(ProbeError::Empty);
    }
    let head = src.bytes(0, 16)?.to_vec();
    let measured = match sniff(&head) {
        Sniffed::Wav => match wav::measure(&mut src) {
            Err(unsupported @ ProbeError::Unsupported(_)) => fallback::measure(path, unsupported)?,
            other => other?,
        },
        Sniffed::Other(unsupported) => fallback::measure(path, unsupported)?,
        // MPEG audio may follow an ID3 tag or junk: the frame scan decides.
        Sniffed::MaybeMpeg => mp3::measure(&mut src).map_err(|e| match e {
            ProbeError::NoAudio if looks_like_text(&head) => ProbeError::NotAudio("text"),
            ProbeError::NoAudio => ProbeError::NotAudio("no MP3 frames or WAV header found"),
            e => e,
        })?,
    };
    let duration_ms = (measured.duration_us + 500) / 1000;
    let bitrate_bps =
        (measured.duration_us > 0).then(|| measured.audio_bytes * 8_000_000 / measured.duration_us);
    Ok(Probed {
        duration_ms,
        codec: measured.codec.to_owned(),
        sample_rate: measured.sample_rate,
        channels: measured.channels,
        bitrate_bps,
    })
}

enum Sniffed {
    Wav,
    MaybeMpeg,
    Other(ProbeError),
}

fn sniff(head: &[u8]) -> Sniffed {
    let at = |range: std::ops::Range<usize>| head.get(range).unwrap_or_default();
    match (at(0..4), at(8..12)) {
        _ if riff::is_wave(head) => Sniffed::Wav,
        (b"RIFX" | b"RF64", _) => {
            Sniffed::Other(ProbeError::Unsupported("big-endian or 64-bit WAV".into()))
        }
        (b"OggS", _) => Sniffed::Other(ProbeError::Unsupported("Ogg".into())),
        (b"fLaC", _) => Sniffed::Other(ProbeError::Unsupported("FLAC".into())),
        (_, _) if at(4..8) == b"ftyp" => Sniffed::Other(ProbeError::Unsupported("MP4".into())),
        _ => Sniffed::MaybeMpeg,
    }
}

fn looks_like_text(head: &[u8]) -> bool {
    !head.is_empty()
        && head
            .iter()
            .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace())
}

#[cfg(test)]
mod tests;
