//! Measuring a voicemail's audio: duration, codec, sample rate, channels, bitrate.
//!
//! The container is recognised from the bytes (the declared content type can lie), and the
//! duration is the sum of the packets really present, with the encoder delay and padding
//! trimmed, rather than what a header claims.

use std::fs::File;
use std::path::Path;

use symphonia::core::codecs::CodecParameters;
use symphonia::core::codecs::audio::well_known::*;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

/// What the probe measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Probed {
    pub duration_ms: u64,
    pub codec: String,
    pub sample_rate: u32,
    pub channels: u16,
    pub bitrate_bps: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("empty file")]
    Empty,
    #[error("not a recognised audio file (MP3 or WAV expected)")]
    Unrecognised,
    #[error("no audio track")]
    NoAudioTrack,
    #[error("audio track has no sample rate")]
    NoSampleRate,
    #[error("no audio frames")]
    NoFrames,
    #[error("corrupt audio: {0}")]
    Corrupt(String),
}

pub fn probe_file(path: &Path) -> Result<Probed, ProbeError> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    if size == 0 {
        return Err(ProbeError::Empty);
    }
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    let mut format = symphonia::default::get_probe()
        .probe(
            &Hint::new(),
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|_| ProbeError::Unrecognised)?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or(ProbeError::NoAudioTrack)?;
    let track_id = track.id;
    let Some(CodecParameters::Audio(params)) = track.codec_params.clone() else {
        return Err(ProbeError::NoAudioTrack);
    };
    let sample_rate = params.sample_rate.ok_or(ProbeError::NoSampleRate)?;
    let channels = params.channels.as_ref().map_or(1, |c| c.count() as u16);

    let mut frames: u64 = 0;
    loop {
        match format.next_packet() {
            Ok(Some(packet)) if packet.track_id == track_id => {
                let trims = packet.trim_start.get() + packet.trim_end.get();
                frames += packet.dur.get().saturating_sub(trims);
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            // Garbage or a cut-off tail after real audio: count what came before it.
            Err(_) if frames > 0 => break,
            Err(e) => return Err(ProbeError::Corrupt(e.to_string())),
        }
    }
    if frames == 0 {
        return Err(ProbeError::NoFrames);
    }
    let duration_ms = frames * 1000 / u64::from(sample_rate);
    let bitrate_bps = (duration_ms > 0).then(|| size * 8 * 1000 / duration_ms);
    Ok(Probed {
        duration_ms,
        codec: codec_name(params.codec).to_owned(),
        sample_rate,
        channels,
        bitrate_bps,
    })
}

fn codec_name(codec: symphonia::core::codecs::audio::AudioCodecId) -> &'static str {
    match codec {
        CODEC_ID_MP3 => "mp3",
        CODEC_ID_PCM_S16LE => "pcm_s16le",
        CODEC_ID_PCM_U8 => "pcm_u8",
        CODEC_ID_PCM_S24LE => "pcm_s24le",
        CODEC_ID_PCM_S32LE => "pcm_s32le",
        CODEC_ID_PCM_F32LE => "pcm_f32le",
        CODEC_ID_PCM_MULAW => "pcm_mulaw",
        CODEC_ID_PCM_ALAW => "pcm_alaw",
        CODEC_ID_ADPCM_IMA_WAV => "adpcm_ima_wav",
        CODEC_ID_ADPCM_MS => "adpcm_ms",
        _ => "other",
    }
}
