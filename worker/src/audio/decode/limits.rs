//! How much a decode may write and do: every voicemail byte is the sender's, so a header that
//! lies (a WAV at 1 Hz, a codec field claiming 65535 samples a block) must not turn a small
//! upload into gigabytes of temporary file, nor a decode outlive the run that wanted it.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::{DecodeError, RATE};
use crate::audio::budget::Budget;

/// The most output a byte of input can legitimately become. The densest voicemail is an
/// 8 kbps MP3 (MPEG-2.5 Layer III at 8 kHz: 1000 bytes a second), which decodes to 32000
/// bytes a second of 16 kHz 16-bit audio: 32 times its size. G.711 at 8 kHz is 4 times, IMA
/// ADPCM 8 times, GSM 6.10 (which symphonia cannot decode) 20 times. Twice the densest.
pub const OUTPUT_PER_INPUT_BYTE: u64 = 64;
/// Units of work (bytes read, packets) a decode may spend per byte of input, and on top of
/// that: symphonia reads a file about once, a packet holds many bytes.
const WORK_PER_BYTE: u64 = 16;
const WORK_BASE: u64 = 16 << 20;

/// What one decode may do.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest output, in seconds (`VMPIPE_MAX_AUDIO_SECS`).
    pub max_secs: u64,
    /// Set by the caller when it no longer wants the output (its run timed out or was
    /// stopped): the decode stops at its next packet or read.
    pub cancel: Option<Arc<AtomicBool>>,
    /// [`OUTPUT_PER_INPUT_BYTE`], lower in tests.
    pub(super) output_per_input_byte: u64,
}

impl Limits {
    pub fn new(max_secs: u64, cancel: Option<Arc<AtomicBool>>) -> Self {
        Self {
            max_secs,
            cancel,
            output_per_input_byte: OUTPUT_PER_INPUT_BYTE,
        }
    }

    /// The budget of a decode of `input_len` bytes.
    pub(super) fn budget(&self, input_len: u64) -> Budget {
        Budget::new(
            input_len
                .saturating_mul(WORK_PER_BYTE)
                .saturating_add(WORK_BASE),
            None,
            self.cancel.clone(),
        )
    }

    /// The most 16 kHz frames the decode of `input_len` bytes may write.
    pub(super) fn output_bound(&self, input_len: u64) -> OutputBound {
        let by_duration = self.max_secs.saturating_mul(u64::from(RATE));
        // 2 bytes a frame.
        let by_input = input_len.saturating_mul(self.output_per_input_byte) / 2;
        if by_duration <= by_input {
            OutputBound {
                frames: by_duration,
                exceeded: Exceeded::Duration(self.max_secs),
            }
        } else {
            OutputBound {
                frames: by_input,
                exceeded: Exceeded::InputSize {
                    input_len,
                    factor: self.output_per_input_byte,
                },
            }
        }
    }
}

impl Default for Limits {
    /// The settings' default duration (4 hours), no cancelling.
    fn default() -> Self {
        Self::new(4 * 3600, None)
    }
}

/// The most frames the output may have, and what going past them means.
#[derive(Clone, Copy, Debug)]
pub(super) struct OutputBound {
    pub(super) frames: u64,
    exceeded: Exceeded,
}

#[derive(Clone, Copy, Debug)]
enum Exceeded {
    Duration(u64),
    InputSize { input_len: u64, factor: u64 },
}

impl OutputBound {
    pub(super) fn error(&self) -> DecodeError {
        match self.exceeded {
            Exceeded::Duration(max_secs) => DecodeError::LongerThan { max_secs },
            Exceeded::InputSize { input_len, factor } => {
                DecodeError::Inflated { input_len, factor }
            }
        }
    }
}
