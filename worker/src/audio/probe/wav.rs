//! WAV (RIFF): duration from the `data` chunk as far as the file really goes.
//!
//! Recorders that never finalised their header leave a `data` size of 0 or 0xFFFFFFFF (or
//! one larger than the file): the audio then runs to the end of the file. LIST and other
//! chunks before or after `data` are skipped. MPEG audio inside a WAV is measured by frames.
//!
//! The header is believed only as far as the bytes can hold what it says: a block holds at
//! most the samples its bytes can encode (whatever `samples_per_block` claims), a PCM frame
//! at least a sample of every channel, and rates below 4 kHz are no voicemail's.

use super::source::Source;
use super::{Measured, ProbeError, mp3};
use crate::audio::MIN_SAMPLE_RATE;
use crate::audio::riff::{
    self, ALAW, EXTENSIBLE, FLOAT, GSM610, IMA_ADPCM, MPEG, MPEG_LAYER3, MS_ADPCM, MULAW, PCM,
};

#[derive(Debug)]
struct Format {
    tag: u16,
    channels: u16,
    sample_rate: u32,
    block_align: u16,
    bits: u16,
    samples_per_block: Option<u16>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn parse_format(b: &[u8]) -> Result<Format, ProbeError> {
    let fmt =
        riff::parse_fmt(b).ok_or_else(|| ProbeError::Corrupt("fmt chunk too short".into()))?;
    let mut tag = fmt.tag;
    let extra = if b.len() >= 18 { &b[18..] } else { &[][..] };
    if tag == EXTENSIBLE && extra.len() >= 10 {
        // The real format is the first two bytes of the sub-format GUID.
        tag = u16_at(extra, 6);
    }
    let samples_per_block = match tag {
        IMA_ADPCM | MS_ADPCM if extra.len() >= 2 => Some(u16_at(extra, 0)).filter(|&n| n > 0),
        _ => None,
    };
    Ok(Format {
        tag,
        channels: fmt.channels,
        sample_rate: fmt.sample_rate,
        block_align: fmt.block_align,
        bits: fmt.bits_per_sample,
        samples_per_block,
    })
}

pub(super) fn measure(src: &mut Source) -> Result<Measured, ProbeError> {
    let file_len = src.len();
    let mut pos = riff::FIRST_CHUNK;
    let mut format: Option<Format> = None;
    let data = loop {
        let Some((id, size)) = riff::chunk_header(src.bytes(pos, 8)?) else {
            return Err(ProbeError::NoAudio);
        };
        let body = pos + riff::CHUNK_HEADER_LEN;
        match &id {
            b"fmt " => {
                let bytes = src.bytes(body, size.min(1024) as usize)?.to_vec();
                format = Some(parse_format(&bytes)?);
            }
            b"data" => break (body, riff::data_len(size, file_len - body)),
            _ => {}
        }
        pos = riff::next_chunk(body, size);
    };
    let format =
        format.ok_or_else(|| ProbeError::Corrupt("no fmt chunk before the data".into()))?;
    let (start, len) = data;
    if matches!(format.tag, MPEG | MPEG_LAYER3) {
        return mp3::measure_range(src, start, start + len);
    }
    if format.channels == 0 || format.sample_rate == 0 || format.block_align == 0 {
        return Err(ProbeError::Corrupt(
            "fmt chunk with zero channels, rate or block size".into(),
        ));
    }
    if format.sample_rate < MIN_SAMPLE_RATE {
        return Err(ProbeError::Corrupt(format!(
            "sample rate {} Hz (below {MIN_SAMPLE_RATE} Hz)",
            format.sample_rate
        )));
    }
    let channels = u64::from(format.channels);
    let mut block = u64::from(format.block_align);
    if matches!(format.tag, PCM | FLOAT | ALAW | MULAW) {
        // A frame holds a sample of every channel, at least.
        let sample_bytes = u64::from(format.bits.div_ceil(8)).max(1);
        block = block.max(channels * sample_bytes);
    }
    let (full, rest) = (len / block, len % block);
    // A block's samples as its header says, but no more than its bytes can encode.
    let per_block = |encodable: u64| {
        format
            .samples_per_block
            .map_or(encodable, |declared| u64::from(declared).min(encodable))
    };
    let (samples, codec) = match format.tag {
        PCM | FLOAT | ALAW | MULAW => (
            full,
            match (format.tag, format.bits) {
                (ALAW, _) => "pcm_alaw",
                (MULAW, _) => "pcm_mulaw",
                (FLOAT, 64) => "pcm_f64le",
                (FLOAT, _) => "pcm_f32le",
                (_, 8) => "pcm_u8",
                (_, 24) => "pcm_s24le",
                (_, 32) => "pcm_s32le",
                _ => "pcm_s16le",
            },
        ),
        IMA_ADPCM => {
            // Each block: a 4-byte header per channel, then 4-bit samples.
            let header = 4 * channels;
            let per_block = per_block(block.saturating_sub(header) * 2 / channels + 1);
            let partial = if rest > header {
                (rest - header) * 2 / channels + 1
            } else {
                0
            };
            (full * per_block + partial, "adpcm_ima_wav")
        }
        MS_ADPCM => {
            let header = 7 * channels;
            let per_block = per_block(block.saturating_sub(header) * 2 / channels + 2);
            let partial = if rest >= header {
                (rest - header) * 2 / channels + 2
            } else {
                0
            };
            (full * per_block + partial, "adpcm_ms")
        }
        // GSM 6.10 as Microsoft packs it: 65 bytes hold 320 samples.
        GSM610 => (full * 320 * block / 65, "gsm_ms"),
        other => return Err(ProbeError::Unsupported(format!("WAV format 0x{other:04X}"))),
    };
    if samples == 0 {
        return Err(ProbeError::NoAudio);
    }
    Ok(Measured {
        duration_us: samples * 1_000_000 / u64::from(format.sample_rate),
        sample_rate: format.sample_rate,
        channels: format.channels,
        codec,
        audio_bytes: len,
    })
}
