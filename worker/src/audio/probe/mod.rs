//! Measuring a voicemail's audio: duration, codec, sample rate, channels and bitrate.
//!
//! The format is recognised from the bytes, never from the declared content type (KAZOO's can
//! lie). Durations come from the audio that is really in the file (MPEG frames counted, the
//! WAV data as far as the file goes), not from what a header claims. Nothing is decoded, memory
//! is bounded by a 1 MiB window whatever the file size, and time by the file's length.

mod fallback;
mod mp3;
mod source;
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
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
    }

    /// Every fixture within max(50 ms, 1 %) of its decoded duration; every bad file an error.
    #[test]
    fn fixtures_match_their_decoded_duration() {
        let truth = std::fs::read_to_string(fixtures().join("truth.tsv")).unwrap();
        let mut failures = Vec::new();
        let mut checked = 0;
        for line in truth.lines().skip(1) {
            let fields: Vec<&str> = line.split('\t').collect();
            let (file, expected) = (fields[0], fields[1]);
            let result = probe_file(&fixtures().join("audio").join(file));
            checked += 1;
            match (expected, &result) {
                ("error", Err(_)) => {}
                ("error", Ok(p)) => failures.push(format!("{file}: expected an error, got {p:?}")),
                (ms, Ok(p)) => {
                    let truth: u64 = ms.parse().unwrap();
                    let tolerance = (truth / 100).max(50);
                    if p.duration_ms.abs_diff(truth) > tolerance {
                        failures.push(format!("{file}: {} ms, truth {truth} ms", p.duration_ms));
                    }
                }
                (ms, Err(e)) => failures.push(format!("{file}: error {e}, truth {ms} ms")),
            }
        }
        assert!(checked >= 40, "fixtures present");
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn formats_are_reported() {
        let probe = |name: &str| probe_file(&fixtures().join("audio").join(name)).unwrap();
        let p = probe("mp3_vbr_16k.mp3");
        assert_eq!(
            (p.codec.as_str(), p.sample_rate, p.channels),
            ("mp3", 16000, 1)
        );
        let p = probe("wav_mulaw_8k.wav");
        assert_eq!(
            (p.codec.as_str(), p.sample_rate, p.bitrate_bps),
            ("pcm_mulaw", 8000, Some(64000))
        );
        let p = probe("mp3_cbr16_8k.mp3");
        assert_eq!(p.bitrate_bps, Some(16000));
        let p = probe("mp3_vbr_44k_stereo.mp3");
        assert_eq!((p.sample_rate, p.channels), (44100, 2));
    }

    /// A 2 GiB file (sparse: zeros after a real recording) is rejected or measured quickly,
    /// with memory bounded by the read window.
    #[test]
    fn huge_files_take_bounded_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.mp3");
        let audio = std::fs::read(fixtures().join("audio/mp3_cbr32_16k.mp3")).unwrap();
        let file = std::fs::File::create(&path).unwrap();
        std::io::Write::write_all(&mut &file, &audio).unwrap();
        file.set_len(2 << 30).unwrap();
        let started = Instant::now();
        let p = probe_file(&path).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(p.duration_ms.abs_diff(12312) <= 50, "{p:?}");

        let zeros = dir.path().join("zeros.wav");
        std::fs::File::create(&zeros)
            .unwrap()
            .set_len(2 << 30)
            .unwrap();
        let started = Instant::now();
        assert!(probe_file(&zeros).is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
