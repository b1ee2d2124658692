//! Decodes a stored voicemail to a 16 kHz mono 16-bit PCM WAV, the input speech engines want.
//!
//! Any MP3 or WAV codec symphonia reads is accepted. The format is recognised from the bytes,
//! never from the file name. The audio is decoded packet by packet, mixed down to mono by
//! averaging the channels, resampled to 16 kHz (rubato's sinc resampler, fed in fixed chunks),
//! and written through a `BufWriter`: memory stays flat whatever the length of the recording.
//!
//! Damaged audio is tolerated the way a player would: packets that fail to decode are skipped,
//! a file cut short ends where its audio ends, a WAV header whose sizes were never filled in
//! is repaired on the fly, and recordings glued together (even at different sample rates) come
//! out whole.
//!
//! Every byte is the sender's, so the work is bounded ([`Limits`]): the output by a duration
//! and by a multiple of the input's size, the reads and packets by a budget for the input's
//! size, sample rates below 4 kHz are refused, and the caller can cancel the decode.

mod limits;
#[cfg(test)]
mod limits_tests;
mod open;
mod repair;
mod sink;
mod tail;
#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};

use symphonia::core::codecs::CodecParameters;
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::TrackType;

use super::MIN_SAMPLE_RATE;
use super::budget::{Budget, Exhausted, exhausted_cause};
pub use limits::{Limits, OUTPUT_PER_INPUT_BYTE};
use open::Opened;
use repair::wav_format;
use sink::Sink;
use tail::Tail;

/// The output sample rate.
const RATE: u32 = 16_000;

/// What was decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Wav16k {
    /// 16 kHz frames written.
    pub frames: u64,
    /// Sample rate of the source (of its first part, if it changes mid-stream).
    pub source_rate: u32,
    /// Channels of the source (of its first part, if they change mid-stream).
    pub source_channels: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("cannot open {path}: {source}", path = .path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}", path = .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("not a recognised audio file (MP3 or WAV): {0}")]
    NotAudio(String),
    #[error("unsupported audio codec: {0}")]
    UnsupportedCodec(String),
    #[error("damaged audio file: {0}")]
    Corrupt(String),
    #[error("no audio track in the file")]
    NoAudioTrack,
    #[error("no audio could be decoded: {0}")]
    NoAudio(String),
    #[error("resampling to 16 kHz: {0}")]
    Resample(String),
    #[error("cannot write {path}: {source}", path = .path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("the audio is too long for a WAV file (4 GiB)")]
    TooLong,
    #[error("the audio is longer than {max_secs} s (VMPIPE_MAX_AUDIO_SECS)")]
    LongerThan { max_secs: u64 },
    #[error(
        "the audio decodes to more than {factor} times the file's {input_len} bytes: its header lies"
    )]
    Inflated { input_len: u64, factor: u64 },
    #[error("sample rate {0} Hz: below {MIN_SAMPLE_RATE} Hz, no voicemail is recorded so")]
    SampleRate(u32),
    /// Out of work for the file's size: a bug met, or hostile input.
    #[error("gave up: {0}")]
    GaveUp(Exhausted),
    /// The caller set the cancel flag.
    #[error("cancelled")]
    Cancelled,
}

impl From<Exhausted> for DecodeError {
    fn from(why: Exhausted) -> Self {
        match why {
            Exhausted::Cancelled => DecodeError::Cancelled,
            why => DecodeError::GaveUp(why),
        }
    }
}

/// Decodes `input` and writes a 16 kHz mono 16-bit PCM WAV to `output` (created/truncated).
/// Streams: memory stays flat whatever the input length.
///
/// `output` is only created once the first audio has been decoded, so a file that is not
/// audio leaves it untouched; after a later error it may be incomplete.
///
/// With the default [`Limits`]: see [`write_wav16k_within`].
pub fn write_wav16k(input: &Path, output: &Path) -> Result<Wav16k, DecodeError> {
    write_wav16k_within(input, output, &Limits::default())
}

/// [`write_wav16k`] within `limits`: past them, an error (and an output cut at the bound).
pub fn write_wav16k_within(
    input: &Path,
    output: &Path,
    limits: &Limits,
) -> Result<Wav16k, DecodeError> {
    let read_err = |source| DecodeError::Read {
        path: input.to_owned(),
        source,
    };
    let Opened {
        mut format,
        head,
        is_riff,
        file_len,
        budget,
    } = open::open(input, limits)?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or(DecodeError::NoAudioTrack)?;
    let track_id = track.id;
    let Some(CodecParameters::Audio(params)) = track.codec_params.clone() else {
        return Err(DecodeError::NoAudioTrack);
    };
    if let Some(rate) = params.sample_rate.filter(|&rate| rate < MIN_SAMPLE_RATE) {
        return Err(DecodeError::SampleRate(rate));
    }
    // Encoder delay and padding are trimmed here, not by the decoder: see `Tail`.
    let mut options = AudioDecoderOptions::default();
    options.gapless = false;
    let new_decoder = || {
        symphonia::default::get_codecs()
            .make_audio_decoder(&params, &options)
            .map_err(|e| {
                let name = is_riff
                    .then(|| wav_format(&head))
                    .flatten()
                    .map_or_else(|| params.codec.to_string(), |f| f.1);
                DecodeError::UnsupportedCodec(format!("{name} ({e})"))
            })
    };
    let mut decoder = Some(new_decoder()?);
    // Whether the decoder in use has decoded a packet.
    let mut proven = false;

    let mut sink = Sink::new(output, limits.output_bound(file_len));
    let mut tail = Tail::default();
    let mut planes: Vec<Vec<f32>> = Vec::new();
    let mut mono: Vec<f32> = Vec::new();
    let mut last_error = String::from("no audio packets");
    'packets: loop {
        budget.spend(1)?;
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            Err(SymphoniaError::IoError(e)) if exhausted_cause(&e).is_some() => {
                return Err(stopped(&budget));
            }
            Err(SymphoniaError::IoError(e)) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(SymphoniaError::IoError(e)) => return Err(read_err(e)),
            // The demuxer lost its footing (a damaged tail after real audio): keep what came
            // before it. With no audio yet, there is nothing to keep.
            Err(e) => {
                last_error = e.to_string();
                break;
            }
        };
        if packet.track_id != track_id {
            continue;
        }
        // Symphonia's MP3 decoder takes its sample rate and channel count from the first frame
        // header it sees, and refuses frames that differ: those of a second recording glued on
        // at another rate, or all frames after a false sync in garbage it latched onto. So a
        // packet that fails is retried once on a fresh decoder, and a decoder that failed is
        // not reused. A packet that still fails is skipped: a damaged packet costs its few
        // milliseconds, not the recording. A rate change reaches the sink, which restarts the
        // resampler.
        let spec = loop {
            let current = match &mut decoder {
                Some(current) => current,
                None => {
                    proven = false;
                    decoder.insert(new_decoder()?)
                }
            };
            match current.decode(&packet) {
                Ok(buf) => break buf.spec().clone(),
                Err(e) => {
                    last_error = e.to_string();
                    decoder = None;
                    if !std::mem::take(&mut proven) {
                        continue 'packets;
                    }
                }
            }
        };
        proven = true;
        let buf = decoder.as_ref().expect("decoded above").last_decoded();
        let frames = buf.frames();
        let channels = spec.channels().count();
        if frames == 0 || channels == 0 || spec.rate() == 0 {
            continue;
        }
        if spec.rate() < MIN_SAMPLE_RATE {
            return Err(DecodeError::SampleRate(spec.rate()));
        }
        buf.copy_to_vecs_planar::<f32>(&mut planes);
        let trim_start = usize::try_from(packet.trim_start.get()).map_or(frames, |t| t.min(frames));
        let trim_end = usize::try_from(packet.trim_end.get()).unwrap_or(usize::MAX);
        // Wholly past the declared end: see `Tail`.
        let past_end = trim_end > 0 && trim_end >= frames - trim_start;
        let end = if past_end { frames } else { frames - trim_end };
        mono.clear();
        mono.extend_from_slice(&planes[0][trim_start..end]);
        for plane in &planes[1..channels] {
            for (m, s) in mono.iter_mut().zip(&plane[trim_start..end]) {
                *m += s;
            }
        }
        if channels > 1 {
            let scale = 1.0 / channels as f32;
            mono.iter_mut().for_each(|m| *m *= scale);
        }
        tail.push(&mut sink, spec.rate(), channels as u16, &mono, past_end)?;
    }
    // A budget that ran out inside symphonia may look like the end of the stream to it.
    if budget.exhausted().is_some() {
        return Err(stopped(&budget));
    }
    sink.finish().map_err(|e| match e {
        DecodeError::NoAudio(_) => DecodeError::NoAudio(last_error),
        e => e,
    })
}

/// The error for a decode whose budget ran out (or was cancelled).
fn stopped(budget: &Budget) -> DecodeError {
    budget
        .exhausted()
        .map_or(DecodeError::Cancelled, DecodeError::from)
}
