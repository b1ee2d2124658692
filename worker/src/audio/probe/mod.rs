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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use source::Source;

use super::budget::{Budget, Exhausted};
use super::riff;

/// The longest one probe may take unless [`set_timeout`] says otherwise: a normal probe reads
/// about 1.8 GB/s, so even a 256 MiB file read from a slow disk, with a busy CPU, fits.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Units of work (about a byte examined each) a probe may spend per byte of the file, and on
/// top of that. A frame scan spends about 10 per byte of junk and less than 1 per byte of
/// frames; a file needing more is hostile, or has met a bug.
const WORK_PER_BYTE: u64 = 64;
const WORK_BASE: u64 = 64 << 20;

/// Milliseconds of [`timeout`]: set once when the worker starts, read by every probe.
static TIMEOUT_MS: AtomicU64 = AtomicU64::new(DEFAULT_TIMEOUT.as_millis() as u64);

/// Sets the time every later probe may take (`VMPIPE_PROBE_TIMEOUT_MS`). Process-wide: the
/// index's caller hands the probe a path only.
pub(crate) fn set_timeout(timeout: Duration) {
    TIMEOUT_MS.store(
        u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

fn timeout() -> Duration {
    Duration::from_millis(TIMEOUT_MS.load(Ordering::Relaxed))
}

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
    /// Out of time or work: the file is not measured, and the job goes on.
    #[error("gave up: {0}")]
    GaveUp(#[from] Exhausted),
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
/// An error that says nothing of the file (this process is out of file descriptors or memory)
/// is returned as such, for the caller to try again, rather than recorded as the file's.
pub(crate) fn probe_for_index(path: &Path) -> std::io::Result<Result<Probed, String>> {
    match std::panic::catch_unwind(|| probe_file(path)) {
        Ok(Ok(probed)) => Ok(Ok(probed)),
        Ok(Err(ProbeError::Io(e))) if crate::error::is_local_shortage(&e) => Err(e),
        Ok(Err(e)) => Ok(Err(e.to_string())),
        Err(panic) => Ok(Err(format!(
            "probe crashed: {}",
            crate::error::panic_text(&panic)
        ))),
    }
}

/// Measures `path` within the configured time ([`set_timeout`], 10 s by default).
pub fn probe_file(path: &Path) -> Result<Probed, ProbeError> {
    probe_file_within(path, timeout())
}

/// Measures `path`, giving up ([`ProbeError::GaveUp`]) after `timeout` or after more work
/// than a file of its size needs.
pub fn probe_file_within(path: &Path, timeout: Duration) -> Result<Probed, ProbeError> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let budget = Budget::new(
        len.saturating_mul(WORK_PER_BYTE).saturating_add(WORK_BASE),
        Some(timeout),
        None,
    );
    let result = measure(path, Source::new(file, len, budget.clone()), &budget);
    // Whatever a format module made of an error from its reads, the budget decides.
    match budget.exhausted() {
        Some(why) => Err(ProbeError::GaveUp(why)),
        None => result,
    }
}

fn measure(path: &Path, mut src: Source, budget: &Budget) -> Result<Probed, ProbeError> {
    if src.len() == 0 {
        return Err(ProbeError::Empty);
    }
    let head = src.bytes(0, 16)?.to_vec();
    let measured = match sniff(&head) {
        Sniffed::Wav => match wav::measure(&mut src) {
            Err(unsupported @ ProbeError::Unsupported(_)) => {
                fallback::measure(path, unsupported, budget)?
            }
            other => other?,
        },
        Sniffed::Other(unsupported) => fallback::measure(path, unsupported, budget)?,
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
