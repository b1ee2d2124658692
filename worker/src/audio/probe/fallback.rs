//! Formats the frame and chunk scanners do not know (an unusual WAV codec, say) are measured
//! with symphonia: the sum of its packets' durations, encoder delay and padding trimmed.
//! Still no decoding.

use std::fs::File;
use std::path::Path;

use symphonia::core::codecs::CodecParameters;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

use super::{Measured, ProbeError};
use crate::audio::MIN_SAMPLE_RATE;
use crate::audio::budget::{Budget, BudgetedReader};

/// Packets read at most: a bound on time for hostile input (hours of 20 ms packets).
const MAX_PACKETS: u64 = 2_000_000;

/// Symphonia reads through the probe's `budget` (a loop inside it is bounded too), and each
/// packet spends from it.
pub(super) fn measure(
    path: &Path,
    unsupported: ProbeError,
    budget: &Budget,
) -> Result<Measured, ProbeError> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let source = BudgetedReader::new(file, budget.clone());
    let mss = MediaSourceStream::new(Box::new(source), Default::default());
    let Ok(mut format) = symphonia::default::get_probe().probe(
        &Hint::new(),
        mss,
        FormatOptions::default(),
        MetadataOptions::default(),
    ) else {
        return Err(unsupported);
    };
    let track = format
        .default_track(TrackType::Audio)
        .ok_or(ProbeError::NoAudio)?;
    let track_id = track.id;
    let Some(CodecParameters::Audio(params)) = track.codec_params.clone() else {
        return Err(unsupported);
    };
    let sample_rate = params.sample_rate.filter(|&r| r > 0).ok_or(unsupported)?;
    if sample_rate < MIN_SAMPLE_RATE {
        return Err(ProbeError::Corrupt(format!(
            "sample rate {sample_rate} Hz (below {MIN_SAMPLE_RATE} Hz)"
        )));
    }
    let mut samples = 0u64;
    for _ in 0..MAX_PACKETS {
        budget.spend(1)?;
        match format.next_packet() {
            Ok(Some(packet)) if packet.track_id == track_id => {
                let trims = packet.trim_start.get() + packet.trim_end.get();
                samples += packet.dur.get().saturating_sub(trims);
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            // A damaged tail after real audio: keep what came before it.
            Err(_) if samples > 0 => break,
            Err(e) => return Err(ProbeError::Corrupt(e.to_string())),
        }
    }
    if samples == 0 {
        return Err(ProbeError::NoAudio);
    }
    Ok(Measured {
        duration_us: samples * 1_000_000 / u64::from(sample_rate),
        sample_rate,
        channels: params.channels.as_ref().map_or(1, |c| c.count() as u16),
        codec: "other",
        audio_bytes: size,
    })
}
