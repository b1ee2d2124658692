//! The output side: mixing to mono is done by the caller; here the audio is resampled to
//! 16 kHz (restarting at a rate change), converted to 16-bit PCM and written as a WAV.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, FixedAsync, Indexing, Resampler, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};

use super::limits::OutputBound;
use super::{DecodeError, RATE, Wav16k};

/// Taps of the resampler's sinc filter.
const SINC_LEN: usize = 128;
/// Input frames per resampler call.
const CHUNK: usize = 1024;
/// Bytes of the canonical 44-byte WAV header before the samples.
pub(super) const HEADER_LEN: u32 = 44;

/// Resamples and writes: the state of the output while packets come in.
pub(super) struct Sink<'a> {
    path: &'a Path,
    /// Created with the first audio.
    out: Option<BufWriter<File>>,
    first: Option<(u32, u16)>,
    segment: Option<Segment>,
    /// 16 kHz frames written.
    frames: u64,
    /// The most frames that may be written.
    bound: OutputBound,
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
    pub(super) fn new(path: &'a Path, bound: OutputBound) -> Self {
        Self {
            path,
            out: None,
            first: None,
            segment: None,
            frames: 0,
            bound,
        }
    }

    pub(super) fn push(
        &mut self,
        rate: u32,
        channels: u16,
        mono: &[f32],
    ) -> Result<(), DecodeError> {
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
            check_room(self.frames, keep.len(), &self.bound)?;
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
        check_room(self.frames, samples.len(), &self.bound)?;
        write_samples(&mut self.out, &mut self.frames, samples).map_err(|e| self.write_err(e))
    }

    /// Flushes the resampler and fills in the header's sizes.
    pub(super) fn finish(mut self) -> Result<Wav16k, DecodeError> {
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

/// Refuses to write past the bound: nothing beyond it reaches the disk.
fn check_room(written: u64, more: usize, bound: &OutputBound) -> Result<(), DecodeError> {
    if written.saturating_add(more as u64) > bound.frames {
        return Err(bound.error());
    }
    Ok(())
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
