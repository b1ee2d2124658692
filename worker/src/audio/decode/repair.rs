//! WAV headers as recorders leave them: sizes never finalised are filled in before symphonia
//! reads the file (it refuses them), and the format tag names the codec in messages.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use symphonia::core::io::MediaSource;

use crate::audio::riff;

/// What the `fmt ` chunk of a RIFF WAVE file says, if `head` holds it.
pub(super) fn wav_fmt(head: &[u8]) -> Option<riff::Fmt> {
    let (at, _, _) = riff::chunks(head).find(|(_, id, _)| id == b"fmt ")?;
    riff::parse_fmt(head.get(at + 8..)?)
}

/// The format tag of a RIFF WAVE file from its `fmt ` chunk, and a name for error messages.
pub(super) fn wav_format(head: &[u8]) -> Option<(u16, String)> {
    let tag = wav_fmt(head)?.tag;
    let name = riff::format_name(tag);
    Some((tag, format!("WAV format 0x{tag:04X} ({name})")))
}

/// The first bytes of a WAV file with the sizes a recorder never finalised filled in, or
/// `None` if they are fine. A `data` size of 0 (or past the end of the file) becomes the rest
/// of the file, in whole blocks; a RIFF size too small to hold the data becomes the file's.
/// Symphonia refuses both.
pub(super) fn repair_wav_header(head: &[u8], file_len: u64) -> Option<Vec<u8>> {
    let mut block_align = 1;
    let mut repaired = head.to_vec();
    let (at, len) = riff::chunks(head).find_map(|(at, id, len)| {
        if &id == b"fmt " {
            block_align = riff::parse_fmt(head.get(at + 8..)?)?.block_align.max(1);
        }
        (&id == b"data").then_some((at, len))
    })?;
    let rest = file_len.checked_sub(at as u64 + riff::CHUNK_HEADER_LEN)?;
    let mut data_len = u64::from(len);
    if riff::data_len(len, rest) != data_len {
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
pub(super) struct Repaired {
    pub(super) file: File,
    pub(super) head: Vec<u8>,
    pub(super) pos: u64,
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
