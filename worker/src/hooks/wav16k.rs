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

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, FixedAsync, Indexing, Resampler, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};
use symphonia::core::codecs::CodecParameters;
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;

/// The output sample rate.
const RATE: u32 = 16_000;
/// Taps of the resampler's sinc filter.
const SINC_LEN: usize = 128;
/// Input frames per resampler call.
const CHUNK: usize = 1024;
/// Bytes read from the start of the input to recognise it.
const HEAD_LEN: usize = 64 * 1024;
/// WAV format tags symphonia decodes (with the pcm and adpcm features): PCM, MS ADPCM, float,
/// A-law, mu-law, IMA ADPCM, extensible.
const SUPPORTED_WAV_FORMATS: [u16; 7] = [0x0001, 0x0002, 0x0003, 0x0006, 0x0007, 0x0011, 0xFFFE];
/// Bytes of the canonical 44-byte WAV header before the samples.
const HEADER_LEN: u32 = 44;

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
}

/// Decodes `input` and writes a 16 kHz mono 16-bit PCM WAV to `output` (created/truncated).
/// Streams: memory stays flat whatever the input length.
///
/// `output` is only created once the first audio has been decoded, so a file that is not
/// audio leaves it untouched; after a later error it may be incomplete.
pub fn write_wav16k(input: &Path, output: &Path) -> Result<Wav16k, DecodeError> {
    let read_err = |source| DecodeError::Read {
        path: input.to_owned(),
        source,
    };
    let mut file = File::open(input).map_err(|source| DecodeError::Open {
        path: input.to_owned(),
        source,
    })?;
    let file_len = file.metadata().map_err(read_err)?.len();
    let mut head = Vec::with_capacity(HEAD_LEN);
    (&mut file)
        .take(HEAD_LEN as u64)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    if head.is_empty() {
        return Err(DecodeError::NotAudio("empty file".into()));
    }
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;

    // The hint comes from the bytes, not the name: KAZOO's names and content types can lie.
    // Symphonia's probe sniffs the content anyway; the hint only orders its guesses.
    let riff = head.starts_with(b"RIFF") && head.get(8..12) == Some(b"WAVE");
    let mut hint = Hint::new();
    hint.with_extension(if riff { "wav" } else { "mp3" });
    let source: Box<dyn MediaSource> = match riff.then(|| repair_wav_header(&head, file_len)) {
        Some(Some(head)) => Box::new(Repaired { file, head, pos: 0 }),
        _ => Box::new(file),
    };
    let mss = MediaSourceStream::new(source, Default::default());
    let mut format = match symphonia::default::get_probe().probe(
        &hint,
        mss,
        FormatOptions::default(),
        MetadataOptions::default(),
    ) {
        Ok(format) => format,
        Err(SymphoniaError::IoError(e)) if e.kind() != io::ErrorKind::UnexpectedEof => {
            return Err(read_err(e));
        }
        Err(e) if riff => {
            return Err(match wav_format(&head) {
                Some((tag, name)) if tag != 0 && !SUPPORTED_WAV_FORMATS.contains(&tag) => {
                    DecodeError::UnsupportedCodec(name)
                }
                Some((_, name)) => DecodeError::Corrupt(format!("{name}: {e}")),
                None => DecodeError::Corrupt(format!("WAV: {e}")),
            });
        }
        Err(SymphoniaError::Unsupported(_)) => {
            return Err(DecodeError::NotAudio(
                "no MP3 frames or WAV header found".into(),
            ));
        }
        Err(e) => return Err(DecodeError::NotAudio(e.to_string())),
    };

    let track = format
        .default_track(TrackType::Audio)
        .ok_or(DecodeError::NoAudioTrack)?;
    let track_id = track.id;
    let Some(CodecParameters::Audio(params)) = track.codec_params.clone() else {
        return Err(DecodeError::NoAudioTrack);
    };
    // Encoder delay and padding are trimmed here, not by the decoder: see `Tail`.
    let mut options = AudioDecoderOptions::default();
    options.gapless = false;
    let new_decoder = || {
        symphonia::default::get_codecs()
            .make_audio_decoder(&params, &options)
            .map_err(|e| {
                let name = riff
                    .then(|| wav_format(&head))
                    .flatten()
                    .map_or_else(|| params.codec.to_string(), |f| f.1);
                DecodeError::UnsupportedCodec(format!("{name} ({e})"))
            })
    };
    let mut decoder = Some(new_decoder()?);
    // Whether the decoder in use has decoded a packet.
    let mut proven = false;

    let mut sink = Sink::new(output);
    let mut tail = Tail::default();
    let mut planes: Vec<Vec<f32>> = Vec::new();
    let mut mono: Vec<f32> = Vec::new();
    let mut last_error = String::from("no audio packets");
    'packets: loop {
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
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
    sink.finish().map_err(|e| match e {
        DecodeError::NoAudio(_) => DecodeError::NoAudio(last_error),
        e => e,
    })
}

/// Source frames past the declared end held back before deciding they are real audio.
/// An encoder's padding spans at most two MP3 frames (1152 samples each) past the end.
const TAIL_LIMIT: usize = 4096;

/// Audio past the end the container declares.
///
/// An MP3's Xing/LAME tag gives its length; symphonia marks every frame past it for trimming.
/// At the end of a normal file those frames are the encoder's padding, and dropping them gives
/// the exact length. But when two recordings are glued together, or the tag lies, the whole
/// rest of the file lies past the declared end. So frames past the end are held back: if the
/// file ends within `TAIL_LIMIT` frames they were padding and are dropped; if it goes on, they
/// and everything after are audio and kept.
#[derive(Default)]
struct Tail {
    held: Vec<f32>,
    spec: Option<(u32, u16)>,
    /// Past the end for good: everything is kept.
    released: bool,
}

impl Tail {
    fn push(
        &mut self,
        sink: &mut Sink<'_>,
        rate: u32,
        channels: u16,
        mono: &[f32],
        past_end: bool,
    ) -> Result<(), DecodeError> {
        if mono.is_empty() {
            return Ok(());
        }
        if !past_end || self.released {
            // Audio after held frames (timestamps gone backwards?): they were audio too.
            if !self.held.is_empty() {
                self.release(sink)?;
            }
            return sink.push(rate, channels, mono);
        }
        if self.spec.is_some_and(|spec| spec != (rate, channels))
            || self.held.len() + mono.len() > TAIL_LIMIT
        {
            // More than padding: the rest of the file is audio.
            self.release(sink)?;
            return sink.push(rate, channels, mono);
        }
        self.spec = Some((rate, channels));
        self.held.extend_from_slice(mono);
        Ok(())
    }

    fn release(&mut self, sink: &mut Sink<'_>) -> Result<(), DecodeError> {
        self.released = true;
        if let Some((rate, channels)) = self.spec {
            sink.push(rate, channels, &std::mem::take(&mut self.held))?;
        }
        Ok(())
    }
}

/// Resamples and writes: the state of the output while packets come in.
struct Sink<'a> {
    path: &'a Path,
    /// Created with the first audio.
    out: Option<BufWriter<File>>,
    first: Option<(u32, u16)>,
    segment: Option<Segment>,
    /// 16 kHz frames written.
    frames: u64,
}

/// A stretch of audio at one sample rate.
struct Segment {
    rate: u32,
    /// `None` when the source is already 16 kHz.
    resampler: Option<Async<f32>>,
    /// Input waiting for a full resampler chunk.
    pending: Vec<f32>,
    /// Resampler output, one call's worth.
    resampled: Vec<f32>,
    /// Source frames received.
    frames_in: u64,
    /// 16 kHz frames written.
    frames_out: u64,
    /// Leading resampler output still to drop (its delay).
    to_trim: usize,
}

impl<'a> Sink<'a> {
    fn new(path: &'a Path) -> Self {
        Self {
            path,
            out: None,
            first: None,
            segment: None,
            frames: 0,
        }
    }

    fn push(&mut self, rate: u32, channels: u16, mono: &[f32]) -> Result<(), DecodeError> {
        if self.out.is_none() {
            let file = File::create(self.path).map_err(|e| self.write_err(e))?;
            let mut out = BufWriter::with_capacity(64 * 1024, file);
            out.write_all(&header(0)).map_err(|e| self.write_err(e))?;
            self.out = Some(out);
            self.first = Some((rate, channels));
        }
        // A rate change mid-stream (glued recordings): the part before it is flushed to its
        // exact length and a new resampler starts for the new rate. The output stays one
        // continuous 16 kHz stream.
        if self.segment.as_ref().is_some_and(|s| s.rate != rate) {
            self.end_segment()?;
        }
        if self.segment.is_none() {
            self.segment = Some(Segment::new(rate)?);
        }
        let mut segment = self.segment.take().expect("segment set above");
        segment.frames_in += mono.len() as u64;
        let result = if segment.resampler.is_none() {
            segment.frames_out += mono.len() as u64;
            self.write(mono)
        } else {
            segment.pending.extend_from_slice(mono);
            self.resample(&mut segment, false)
        };
        self.segment = Some(segment);
        result
    }

    /// Runs the resampler over the pending input; with `last`, also the partial chunk and
    /// the tail, stopping at exactly round(frames_in * 16000 / rate) frames.
    fn resample(&mut self, segment: &mut Segment, last: bool) -> Result<(), DecodeError> {
        let Some(resampler) = segment.resampler.as_mut() else {
            return Ok(());
        };
        let expected = (segment.frames_in * u64::from(RATE) + u64::from(segment.rate) / 2)
            / u64::from(segment.rate);
        let mut consumed = 0;
        loop {
            let need = resampler.input_frames_next();
            let available = segment.pending.len() - consumed;
            let partial = if available >= need {
                None
            } else if last && segment.frames_out < expected {
                // The last frames, then silence to flush the filter.
                Some(available)
            } else {
                break;
            };
            let input = InterleavedSlice::new(&segment.pending[consumed..], 1, available)
                .map_err(|e| DecodeError::Resample(e.to_string()))?;
            let capacity = segment.resampled.len();
            let mut output = InterleavedSlice::new_mut(&mut segment.resampled, 1, capacity)
                .map_err(|e| DecodeError::Resample(e.to_string()))?;
            let indexing = Indexing {
                partial_len: partial,
                ..Indexing::default()
            };
            let (used, made) = resampler
                .process_into_buffer(&input, &mut output, Some(&indexing))
                .map_err(|e| DecodeError::Resample(e.to_string()))?;
            consumed += used.min(available);
            let skip = segment.to_trim.min(made);
            segment.to_trim -= skip;
            let mut keep = &segment.resampled[skip..made];
            if last {
                let room = usize::try_from(expected - segment.frames_out.min(expected))
                    .unwrap_or(usize::MAX);
                keep = &keep[..keep.len().min(room)];
            }
            segment.frames_out += keep.len() as u64;
            write_samples(&mut self.out, &mut self.frames, keep).map_err(|e| self.write_err(e))?;
        }
        segment.pending.drain(..consumed);
        Ok(())
    }

    fn end_segment(&mut self) -> Result<(), DecodeError> {
        if let Some(mut segment) = self.segment.take() {
            self.resample(&mut segment, true)?;
        }
        Ok(())
    }

    fn write(&mut self, samples: &[f32]) -> Result<(), DecodeError> {
        write_samples(&mut self.out, &mut self.frames, samples).map_err(|e| self.write_err(e))
    }

    /// Flushes the resampler and fills in the header's sizes.
    fn finish(mut self) -> Result<Wav16k, DecodeError> {
        self.end_segment()?;
        let (Some(out), Some((source_rate, source_channels))) = (self.out.take(), self.first)
        else {
            return Err(DecodeError::NoAudio(String::new()));
        };
        let data_len = self.frames * 2;
        let data_len = u32::try_from(data_len)
            .ok()
            .filter(|len| len.checked_add(HEADER_LEN - 8).is_some())
            .ok_or(DecodeError::TooLong)?;
        let mut file = out
            .into_inner()
            .map_err(|e| self.write_err(e.into_error()))?;
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&header(data_len)))
            .and_then(|()| file.flush())
            .map_err(|e| self.write_err(e))?;
        Ok(Wav16k {
            frames: self.frames,
            source_rate,
            source_channels,
        })
    }

    fn write_err(&self, source: io::Error) -> DecodeError {
        DecodeError::Write {
            path: self.path.to_owned(),
            source,
        }
    }
}

impl Segment {
    fn new(rate: u32) -> Result<Self, DecodeError> {
        if rate == RATE {
            return Ok(Self {
                rate,
                resampler: None,
                pending: Vec::new(),
                resampled: Vec::new(),
                frames_in: 0,
                frames_out: 0,
                to_trim: 0,
            });
        }
        // Speech, not music: a 128-tap filter with linear interpolation between 256 stored
        // phases keeps aliasing far below what a recogniser notices, at a fraction of the
        // default filter's cost.
        let params = SincInterpolationParameters::new(SINC_LEN, WindowFunction::Blackman2)
            .oversampling_factor(256)
            .interpolation(SincInterpolationType::Linear);
        let ratio = f64::from(RATE) / f64::from(rate);
        let resampler = Async::<f32>::new_sinc(ratio, 1.0, &params, CHUNK, 1, FixedAsync::Input)
            .map_err(|e| DecodeError::Resample(format!("{rate} Hz: {e}")))?;
        // `output_delay()` is SINC_LEN * ratio / 2 rounded down, but measured on a sine's
        // phase (see the tests) the delay of this resampler is one output frame less, and
        // fractional: trimming `output_delay()` would leave the output up to a frame early.
        let delay = (SINC_LEN as f64 * ratio / 2.0 - 1.0).round() as usize;
        debug_assert!(delay.abs_diff(resampler.output_delay()) <= 1);
        Ok(Self {
            rate,
            to_trim: delay,
            resampled: vec![0.0; resampler.output_frames_max()],
            pending: Vec::with_capacity(2 * CHUNK),
            resampler: Some(resampler),
            frames_in: 0,
            frames_out: 0,
        })
    }
}

fn write_samples(
    out: &mut Option<BufWriter<File>>,
    frames: &mut u64,
    samples: &[f32],
) -> io::Result<()> {
    let out = out
        .as_mut()
        .expect("output created before the first samples");
    for &s in samples {
        // Symphonia scales integer PCM by 1/32768: this is its exact inverse.
        let s = (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
        out.write_all(&s.to_le_bytes())?;
    }
    *frames += samples.len() as u64;
    Ok(())
}

/// The canonical WAV header for `data_len` bytes of 16 kHz mono 16-bit PCM.
fn header(data_len: u32) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(data_len + HEADER_LEN - 8).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&1u16.to_le_bytes()); // mono
    h[24..28].copy_from_slice(&RATE.to_le_bytes());
    h[28..32].copy_from_slice(&(RATE * 2).to_le_bytes()); // bytes per second
    h[32..34].copy_from_slice(&2u16.to_le_bytes()); // bytes per frame
    h[34..36].copy_from_slice(&16u16.to_le_bytes()); // bits per sample
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

/// The chunks of a RIFF WAVE file found in `head`: offset, id and declared length.
fn wav_chunks(head: &[u8]) -> impl Iterator<Item = (usize, &[u8], u32)> {
    let mut at: usize = 12;
    std::iter::from_fn(move || {
        let chunk = head.get(at..at.checked_add(8)?)?;
        let len = u32::from_le_bytes(chunk[4..8].try_into().ok()?);
        let item = (at, &chunk[..4], len);
        at = at.checked_add(8 + len as usize + (len & 1) as usize)?;
        Some(item)
    })
}

/// The format tag of a RIFF WAVE file from its `fmt ` chunk, and a name for error messages.
fn wav_format(head: &[u8]) -> Option<(u16, String)> {
    let (at, _, _) = wav_chunks(head).find(|(_, id, _)| *id == b"fmt ")?;
    let tag = u16::from_le_bytes(head.get(at + 8..at + 10)?.try_into().ok()?);
    let name = match tag {
        0x0001 => "PCM",
        0x0002 => "Microsoft ADPCM",
        0x0003 => "IEEE float",
        0x0006 => "G.711 A-law",
        0x0007 => "G.711 mu-law",
        0x0011 => "IMA ADPCM",
        0x0014 | 0x0040 => "G.723 ADPCM",
        0x0022 => "TrueSpeech",
        0x0031 => "GSM 6.10",
        0x0042 => "G.723.1",
        0x0045 | 0x0064 => "G.726 ADPCM",
        0x0050 => "MPEG audio",
        0x0055 => "MP3",
        0x0065 => "G.722",
        0x0070 => "G.729",
        0xFFFE => "extensible",
        _ => "unknown",
    };
    Some((tag, format!("WAV format 0x{tag:04X} ({name})")))
}

/// The first bytes of a WAV file with the sizes a recorder never finalised filled in, or
/// `None` if they are fine. A `data` size of 0 (or past the end of the file) becomes the rest
/// of the file, in whole blocks; a RIFF size too small to hold the data becomes the file's.
/// Symphonia refuses both.
fn repair_wav_header(head: &[u8], file_len: u64) -> Option<Vec<u8>> {
    let mut block_align = 1;
    let mut repaired = head.to_vec();
    let (at, len) = wav_chunks(head).find_map(|(at, id, len)| {
        if id == b"fmt " {
            let align = head.get(at + 20..at + 22)?;
            block_align = u16::from_le_bytes([align[0], align[1]]).max(1);
        }
        (id == b"data").then_some((at, len))
    })?;
    let rest = file_len.checked_sub(at as u64 + 8)?;
    let mut data_len = u64::from(len);
    if data_len == 0 || data_len > rest {
        data_len = rest - rest % u64::from(block_align);
        repaired[at + 4..at + 8].copy_from_slice(&u32::try_from(data_len).ok()?.to_le_bytes());
    }
    let riff_len = u32::from_le_bytes(head[4..8].try_into().ok()?);
    if u64::from(riff_len) < at as u64 + data_len {
        let riff_len = u32::try_from(file_len - 8).ok()?;
        repaired[4..8].copy_from_slice(&riff_len.to_le_bytes());
    }
    (repaired != head).then_some(repaired)
}

/// The input file, read with a repaired header laid over its first bytes.
struct Repaired {
    file: File,
    head: Vec<u8>,
    pos: u64,
}

impl Read for Repaired {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        if let Some(head) = usize::try_from(self.pos)
            .ok()
            .and_then(|pos| self.head.get(pos..))
        {
            let overlap = n.min(head.len());
            buf[..overlap].copy_from_slice(&head[..overlap]);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Repaired {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = self.file.seek(pos)?;
        Ok(self.pos)
    }
}

impl MediaSource for Repaired {
    fn is_seekable(&self) -> bool {
        self.file.is_seekable()
    }

    fn byte_len(&self) -> Option<u64> {
        self.file.byte_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/audio")
            .join(name)
    }

    /// Duration in ms of each fixture according to `truth.tsv`; `None` for the bad ones.
    fn truth() -> Vec<(String, Option<u64>)> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/truth.tsv");
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .skip(1)
            .map(|line| {
                let mut cols = line.split('\t');
                let name = cols.next().unwrap().to_owned();
                (name, cols.next().unwrap().parse().ok())
            })
            .collect()
    }

    /// Checks the header byte for byte and returns the samples.
    fn read_wav16k(path: &Path) -> Vec<i16> {
        let bytes = std::fs::read(path).unwrap();
        let data_len = bytes.len() as u32 - HEADER_LEN;
        assert_eq!(&bytes[0..4], b"RIFF");
        assert_eq!(bytes[4..8], (data_len + 36).to_le_bytes());
        assert_eq!(&bytes[8..16], b"WAVEfmt ");
        assert_eq!(
            bytes[16..36],
            [
                16, 0, 0, 0, // fmt chunk length
                1, 0, // PCM
                1, 0, // mono
                0x80, 0x3E, 0, 0, // 16000 Hz
                0x00, 0x7D, 0, 0, // 32000 bytes/s
                2, 0, // block align
                16, 0, // bits per sample
            ]
        );
        assert_eq!(&bytes[36..40], b"data");
        assert_eq!(bytes[40..44], data_len.to_le_bytes());
        bytes[44..]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect()
    }

    fn convert(name: &str) -> (Wav16k, Vec<i16>) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.wav");
        let decoded = write_wav16k(&fixture(name), &out).unwrap_or_else(|e| panic!("{name}: {e}"));
        let samples = read_wav16k(&out);
        assert_eq!(samples.len() as u64, decoded.frames, "{name}");
        (decoded, samples)
    }

    fn assert_duration(name: &str, truth_ms: u64) {
        let (decoded, samples) = convert(name);
        let ms = decoded.frames * 1000 / u64::from(RATE);
        assert!(
            ms.abs_diff(truth_ms) <= 60,
            "{name}: {ms} ms, truth {truth_ms} ms"
        );
        // Speech, not silence.
        let peak = samples.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!(peak > 1000, "{name}: peak {peak}");
    }

    #[test]
    fn durations_match_the_truth() {
        let truth = truth();
        let ms = |name: &str| truth.iter().find(|(n, _)| n == name).unwrap().1.unwrap();
        for name in [
            "wav_pcm16_8k.wav",
            "wav_pcm16_16k.wav",
            "wav_mulaw_8k.wav",
            "wav_ima_adpcm_8k.wav",
            "mp3_vbr_44k_stereo.mp3",
            "mp3_cbr16_8k.mp3",
            "mp3_vbr_8k.mp3",
            "mp3_trailing_garbage.mp3",
        ] {
            assert_duration(name, ms(name));
        }
    }

    /// Every fixture: the good ones within 60 ms of the truth (GSM excepted: symphonia has
    /// no GSM decoder, and the error must say so), the bad ones a clean error.
    #[test]
    fn every_fixture() {
        let dir = tempfile::tempdir().unwrap();
        for (name, truth_ms) in truth() {
            let out = dir.path().join(format!("{name}.wav"));
            let result = write_wav16k(&fixture(&name), &out);
            match (truth_ms, result) {
                (_, result) if name == "wav_gsm_8k.wav" => {
                    let err = result.unwrap_err();
                    assert!(matches!(err, DecodeError::UnsupportedCodec(_)), "{err:?}");
                    assert!(err.to_string().contains("GSM 6.10"), "{err}");
                    assert!(!out.exists());
                }
                (Some(truth_ms), Ok(decoded)) => {
                    let ms = decoded.frames * 1000 / u64::from(RATE);
                    assert!(
                        ms.abs_diff(truth_ms) <= 60,
                        "{name}: {ms} ms, truth {truth_ms} ms"
                    );
                    assert_eq!(read_wav16k(&out).len() as u64, decoded.frames);
                }
                (Some(_), Err(e)) => panic!("{name}: {e}"),
                (None, Ok(decoded)) => panic!("{name}: not an error: {decoded:?}"),
                (None, Err(_)) => assert!(!out.exists(), "{name}: output written"),
            }
        }
    }

    #[test]
    fn source_format_is_reported() {
        let (decoded, _) = convert("mp3_vbr_44k_stereo.mp3");
        assert_eq!((decoded.source_rate, decoded.source_channels), (44100, 2));
        let (decoded, _) = convert("wav_pcm16_16k.wav");
        assert_eq!((decoded.source_rate, decoded.source_channels), (16000, 1));
    }

    /// A 16 kHz 16-bit WAV comes out sample for sample.
    #[test]
    fn sixteen_khz_pcm_is_copied() {
        let (_, samples) = convert("wav_pcm16_16k.wav");
        let bytes = std::fs::read(fixture("wav_pcm16_16k.wav")).unwrap();
        let data = bytes.windows(4).position(|w| w == b"data").unwrap() + 8;
        let source: Vec<i16> = bytes[data..]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(samples, source);
    }

    /// Writes a 16-bit PCM WAV of a `freq` Hz sine at amplitude `amp` (full scale 1).
    fn write_sine(path: &Path, rate: u32, channels: u16, freq: f64, secs: f64, amp: f64) {
        let frames = (f64::from(rate) * secs) as u32;
        let data_len = frames * u32::from(channels) * 2;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"RIFF");
        bytes.extend_from_slice(&(data_len + 36).to_le_bytes());
        bytes.extend_from_slice(b"WAVEfmt ");
        bytes.extend_from_slice(&16u32.to_le_bytes());
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&channels.to_le_bytes());
        bytes.extend_from_slice(&rate.to_le_bytes());
        bytes.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
        bytes.extend_from_slice(&(channels * 2).to_le_bytes());
        bytes.extend_from_slice(&16u16.to_le_bytes());
        bytes.extend_from_slice(b"data");
        bytes.extend_from_slice(&data_len.to_le_bytes());
        for i in 0..frames {
            let t = f64::from(i) / f64::from(rate);
            let s = (amp * 32767.0 * (2.0 * std::f64::consts::PI * freq * t).sin()).round() as i16;
            for _ in 0..channels {
                bytes.extend_from_slice(&s.to_le_bytes());
            }
        }
        std::fs::write(path, bytes).unwrap();
    }

    /// Zero crossings per second and RMS (full scale 1) of the middle of `samples`.
    fn analyse(samples: &[i16]) -> (f64, f64) {
        let middle = &samples[samples.len() / 10..samples.len() * 9 / 10];
        let crossings = middle
            .windows(2)
            .filter(|w| (w[0] < 0) != (w[1] < 0))
            .count();
        let secs = middle.len() as f64 / f64::from(RATE);
        let rms = (middle
            .iter()
            .map(|&s| (f64::from(s) / 32768.0).powi(2))
            .sum::<f64>()
            / middle.len() as f64)
            .sqrt();
        (crossings as f64 / secs, rms)
    }

    #[test]
    fn a_sine_keeps_its_frequency_and_amplitude() {
        let dir = tempfile::tempdir().unwrap();
        for (rate, channels) in [(8000, 1), (44100, 2), (11025, 1)] {
            let input = dir.path().join(format!("sine_{rate}_{channels}.wav"));
            let output = dir.path().join("out.wav");
            write_sine(&input, rate, channels, 1000.0, 3.0, 0.5);
            let decoded = write_wav16k(&input, &output).unwrap();
            assert_eq!(decoded.frames, 48_000, "{rate} Hz");
            let samples = read_wav16k(&output);
            let (crossings, rms) = analyse(&samples);
            // A 1 kHz sine crosses zero 2000 times a second; its RMS is amplitude / sqrt 2.
            assert!(
                (crossings - 2000.0).abs() < 10.0,
                "{rate} Hz: {crossings}/s"
            );
            assert!(
                (rms - 0.5 / 2f64.sqrt()).abs() < 0.02,
                "{rate} Hz: RMS {rms}"
            );
            // No delay left at the start: the sine starts rising at once, like the input.
            assert!(samples[4] > 1000, "{rate} Hz: {:?}", &samples[..8]);
        }
    }

    /// The resampler's delay is trimmed to within half an output frame, at any rate.
    #[test]
    fn no_delay_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let freq = 300.0;
        for rate in [8000, 11025, 12000, 22050, 24000, 32000, 44100, 48000] {
            let input = dir.path().join(format!("sine_{rate}.wav"));
            let output = dir.path().join("out.wav");
            write_sine(&input, rate, 1, freq, 1.0, 0.5);
            write_wav16k(&input, &output).unwrap();
            let samples = read_wav16k(&output);
            // The phase of the output against sin(2 pi f t): its delay in output frames.
            let w = 2.0 * std::f64::consts::PI * freq / f64::from(RATE);
            let (mut sin, mut cos) = (0.0, 0.0);
            for (j, &s) in samples.iter().enumerate().take(12_000).skip(4000) {
                sin += f64::from(s) * (w * j as f64).sin();
                cos += f64::from(s) * (w * j as f64).cos();
            }
            let delay = -cos.atan2(sin) / w;
            assert!(delay.abs() <= 0.5, "{rate} Hz: {delay:.3} frames");
        }
    }

    /// Two MP3s at different rates glued together: the second part is not dropped.
    #[test]
    fn a_rate_change_mid_stream_restarts_the_resampler() {
        let dir = tempfile::tempdir().unwrap();
        let glued = dir.path().join("glued");
        let mut bytes = std::fs::read(fixture("mp3_vbr_8k.mp3")).unwrap();
        bytes.extend(std::fs::read(fixture("mp3_vbr_16k.mp3")).unwrap());
        std::fs::write(&glued, bytes).unwrap();
        let output = dir.path().join("out.wav");
        let decoded = write_wav16k(&glued, &output).unwrap();
        let ms = decoded.frames * 1000 / u64::from(RATE);
        assert!(ms.abs_diff(2 * 12238) <= 120, "{ms} ms");
        assert_eq!(decoded.source_rate, 8000);
        assert_eq!(read_wav16k(&output).len() as u64, decoded.frames);
    }

    #[test]
    fn non_audio_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("out.wav");
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "Hello, this is not audio.\n".repeat(100)).unwrap();
        let err = write_wav16k(&text, &output).unwrap_err();
        assert!(matches!(err, DecodeError::NotAudio(_)), "{err:?}");
        assert!(err.to_string().starts_with("not a recognised audio file"));
        assert!(!output.exists());

        let err = write_wav16k(&dir.path().join("missing.mp3"), &output).unwrap_err();
        assert!(matches!(err, DecodeError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.mp3"), "{err}");
    }

    /// Release-mode timing, by hand:
    /// `cargo test -p vmpipe-worker --release --lib wav16k::tests::speed -- --ignored --nocapture`
    #[test]
    #[ignore = "timing, run by hand in release mode"]
    fn speed() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "mp3_vbr_8k.mp3",
            "mp3_vbr_44k_stereo.mp3",
            "wav_pcm16_8k.wav",
        ] {
            // About a minute: the 12 s fixture five times over.
            let long = dir.path().join(name);
            let one = std::fs::read(fixture(name)).unwrap();
            if name.ends_with(".wav") {
                let data = one.windows(4).position(|w| w == b"data").unwrap() + 8;
                let mut bytes = one[..data].to_vec();
                (0..5).for_each(|_| bytes.extend_from_slice(&one[data..]));
                let len = (bytes.len() - data) as u32;
                bytes[data - 4..data].copy_from_slice(&len.to_le_bytes());
                std::fs::write(&long, bytes).unwrap();
            } else {
                std::fs::write(&long, one.repeat(5)).unwrap();
            }
            let started = Instant::now();
            let decoded = write_wav16k(&long, &dir.path().join("out.wav")).unwrap();
            println!(
                "{name} x5: {:.1} s of audio in {:.3} s",
                decoded.frames as f64 / f64::from(RATE),
                started.elapsed().as_secs_f64()
            );
        }
    }
}
