//! Audio: measuring a voicemail ([`probe`]) and decoding it to 16 kHz mono WAV for speech
//! engines (`decode`). Neither knows anything of jobs or hooks; both read the RIFF/WAVE
//! rules from `riff`.

pub(crate) mod decode;
pub mod probe;
mod riff;
