//! Test data: audio bodies (a WAV tone, bytes that trip multipart parsers), their digests,
//! and KAZOO-like random ids.

use sha2::{Digest, Sha256};

/// A mono 16-bit PCM WAV of `millis` of a warbling tone.
pub fn wav_pcm16(sample_rate: u32, millis: u32) -> Vec<u8> {
    let samples = (sample_rate as u64 * millis as u64 / 1000) as u32;
    let data_len = samples * 2;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for n in 0..samples {
        let t = n as f64 / sample_rate as f64;
        let value = (t * 2.0 * std::f64::consts::PI * (300.0 + 100.0 * (t * 3.0).sin())).sin();
        out.extend_from_slice(&((value * 12000.0) as i16).to_le_bytes());
    }
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Audio-like bytes that contain what trips naive multipart parsers: `\r\n--`, `\r\n\r\n`,
/// and a near-copy of a delimiter.
pub fn nasty_audio(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9u32;
    let mut data: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect();
    let traps: [&[u8]; 3] = [b"\r\n--", b"\r\n\r\n", b"\r\n--Upk0Wa6Vg7_Kvgh--\r\n"];
    for (i, trap) in traps.iter().cycle().take(len / 1000).enumerate() {
        let at = (i * 997) % len.saturating_sub(trap.len()).max(1);
        if at + trap.len() <= len {
            data[at..at + trap.len()].copy_from_slice(trap);
        }
    }
    if len >= 3 {
        data[..3].copy_from_slice(b"\xff\xfb\x90"); // an MP3 frame header, like real voicemail
    }
    data
}

/// Random 32-character lower-case hex, like KAZOO ids.
pub fn hex32() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
