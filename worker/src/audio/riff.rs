//! RIFF/WAVE: the chunk rules, written once for the probe (which measures a WAV) and the
//! decoder (which repairs a WAV header a recorder never finalised).

/// WAV format tags vmpipe knows by name.
pub(super) const PCM: u16 = 0x0001;
pub(super) const MS_ADPCM: u16 = 0x0002;
pub(super) const FLOAT: u16 = 0x0003;
pub(super) const ALAW: u16 = 0x0006;
pub(super) const MULAW: u16 = 0x0007;
pub(super) const IMA_ADPCM: u16 = 0x0011;
pub(super) const GSM610: u16 = 0x0031;
pub(super) const MPEG: u16 = 0x0050;
pub(super) const MPEG_LAYER3: u16 = 0x0055;
pub(super) const EXTENSIBLE: u16 = 0xFFFE;

/// Chunks start after `RIFF`, the RIFF size and `WAVE`.
pub(super) const FIRST_CHUNK: u64 = 12;
/// A chunk header: a 4-byte id and a little-endian 32-bit size.
pub(super) const CHUNK_HEADER_LEN: u64 = 8;

/// Whether the bytes start a RIFF WAVE file.
pub(super) fn is_wave(head: &[u8]) -> bool {
    head.get(0..4) == Some(b"RIFF") && head.get(8..12) == Some(b"WAVE")
}

/// The id and declared size of the chunk whose header starts `bytes`.
pub(super) fn chunk_header(bytes: &[u8]) -> Option<([u8; 4], u32)> {
    let id = bytes.get(0..4)?.try_into().ok()?;
    let size = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    Some((id, size))
}

/// Where the next chunk starts, after one whose body starts at `body` and declares `size`
/// bytes: chunks are padded to an even size.
pub(super) fn next_chunk(body: u64, size: u32) -> u64 {
    body + u64::from(size) + u64::from(size & 1)
}

/// The bytes of audio a `data` chunk really holds, `available` being what the file has after
/// its header. Its declared size, unless the recorder never finalised it (0 or 0xFFFFFFFF) or
/// it runs past the end of the file: then all that is there.
pub(super) fn data_len(declared: u32, available: u64) -> u64 {
    let declared = u64::from(declared);
    if declared == 0 || declared == u64::from(u32::MAX) || declared > available {
        available
    } else {
        declared
    }
}

/// The chunks whose headers lie within `head` (the first bytes of a RIFF WAVE file): each
/// one's offset, id and declared size.
pub(super) fn chunks(head: &[u8]) -> impl Iterator<Item = (usize, [u8; 4], u32)> + '_ {
    let mut at = Some(FIRST_CHUNK);
    std::iter::from_fn(move || {
        let offset = usize::try_from(at?).ok()?;
        let (id, size) = chunk_header(head.get(offset..)?)?;
        at = Some(next_chunk(at? + CHUNK_HEADER_LEN, size));
        Some((offset, id, size))
    })
}

/// What the first 16 bytes of a `fmt ` chunk's body say (every WAV format has them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fmt {
    /// The format tag (for `EXTENSIBLE`, the real one is in the extension).
    pub tag: u16,
    pub channels: u16,
    pub sample_rate: u32,
    /// Bytes per block of samples (all channels).
    pub block_align: u16,
    pub bits_per_sample: u16,
}

/// Reads a `fmt ` chunk's body; `None` when it is shorter than 16 bytes.
pub fn parse_fmt(body: &[u8]) -> Option<Fmt> {
    let u16_at = |at: usize| u16::from_le_bytes([body[at], body[at + 1]]);
    (body.len() >= 16).then(|| Fmt {
        tag: u16_at(0),
        channels: u16_at(2),
        sample_rate: u32::from_le_bytes([body[4], body[5], body[6], body[7]]),
        block_align: u16_at(12),
        bits_per_sample: u16_at(14),
    })
}

/// A name for a format tag, for messages.
pub(super) fn format_name(tag: u16) -> &'static str {
    match tag {
        PCM => "PCM",
        MS_ADPCM => "Microsoft ADPCM",
        FLOAT => "IEEE float",
        ALAW => "G.711 A-law",
        MULAW => "G.711 mu-law",
        IMA_ADPCM => "IMA ADPCM",
        0x0014 | 0x0040 => "G.723 ADPCM",
        0x0022 => "TrueSpeech",
        GSM610 => "GSM 6.10",
        0x0042 => "G.723.1",
        0x0045 | 0x0064 => "G.726 ADPCM",
        MPEG => "MPEG audio",
        MPEG_LAYER3 => "MP3",
        0x0065 => "G.722",
        0x0070 => "G.729",
        EXTENSIBLE => "extensible",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_walked_with_their_padding() {
        let mut wav = b"RIFF\0\0\0\0WAVE".to_vec();
        wav.extend_from_slice(b"LIST\x03\0\0\0abc\0");
        wav.extend_from_slice(b"data\x04\0\0\0wxyz");
        let found: Vec<_> = chunks(&wav).collect();
        assert_eq!(found, [(12, *b"LIST", 3), (24, *b"data", 4)]);
        assert!(is_wave(&wav));
        assert!(!is_wave(b"RIFX\0\0\0\0WAVE"));
    }

    #[test]
    fn the_fmt_chunk_is_read() {
        let body = [1, 0, 2, 0, 0x40, 0x1F, 0, 0, 0, 0, 0, 0, 4, 0, 16, 0];
        let fmt = parse_fmt(&body).unwrap();
        assert_eq!((fmt.tag, fmt.channels, fmt.sample_rate), (PCM, 2, 8000));
        assert_eq!((fmt.block_align, fmt.bits_per_sample), (4, 16));
        assert_eq!(parse_fmt(&body[..15]), None);
    }

    #[test]
    fn unfinalised_data_sizes_run_to_the_end_of_the_file() {
        assert_eq!(data_len(100, 1000), 100);
        assert_eq!(data_len(0, 1000), 1000);
        assert_eq!(data_len(u32::MAX, 1000), 1000);
        assert_eq!(data_len(2000, 1000), 1000);
    }
}
