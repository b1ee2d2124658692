//! Audio: measuring a voicemail ([`probe`]) and decoding it to 16 kHz mono WAV for speech
//! engines ([`decode`]). Neither knows anything of jobs or hooks; both read the RIFF/WAVE
//! rules from `riff`, and both work within a [`budget`].

pub mod budget;
pub mod decode;
#[cfg(test)]
mod mutation_tests;
pub mod probe;
mod riff;

/// The lowest sample rate believed: telephony records at 8 kHz, and a header claiming less (a
/// WAV at 1 Hz) would make a few bytes hours long.
pub const MIN_SAMPLE_RATE: u32 = 4000;
