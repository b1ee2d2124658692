//! Opening the input: its first bytes recognise it (never its name), a WAV header a recorder
//! never finalised is repaired, and symphonia's reader for it is found; all reads go through
//! the decode's budget.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;
use symphonia::default::formats::MpaReader;

use super::repair::{Repaired, repair_wav_header, wav_fmt, wav_format};
use super::{DecodeError, Limits, stopped};
use crate::audio::budget::{Budget, BudgetedReader, exhausted_cause};
use crate::audio::riff;

/// Bytes read from the start of the input to recognise it.
const HEAD_LEN: usize = 64 * 1024;
/// The most channels symphonia reads from a WAV.
const MAX_WAV_CHANNELS: u16 = 26;
/// WAV format tags symphonia decodes (with the pcm and adpcm features).
const SUPPORTED_WAV_FORMATS: [u16; 7] = [
    riff::PCM,
    riff::MS_ADPCM,
    riff::FLOAT,
    riff::ALAW,
    riff::MULAW,
    riff::IMA_ADPCM,
    riff::EXTENSIBLE,
];

/// An input ready to be read packet by packet.
pub(super) struct Opened {
    pub(super) format: Box<dyn FormatReader>,
    /// Its first bytes.
    pub(super) head: Vec<u8>,
    pub(super) is_riff: bool,
    pub(super) file_len: u64,
    /// What the decode may still do; the reader spends from it.
    pub(super) budget: Budget,
}

pub(super) fn open(input: &Path, limits: &Limits) -> Result<Opened, DecodeError> {
    let read_err = |source| DecodeError::Read {
        path: input.to_owned(),
        source,
    };
    let mut file = File::open(input).map_err(|source| DecodeError::Open {
        path: input.to_owned(),
        source,
    })?;
    let file_len = file.metadata().map_err(read_err)?.len();
    let mut head = Vec::with_capacity(HEAD_LEN);
    (&mut file)
        .take(HEAD_LEN as u64)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    if head.is_empty() {
        return Err(DecodeError::NotAudio("empty file".into()));
    }
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;

    // The hint comes from the bytes, not the name: KAZOO's names and content types can lie.
    // Symphonia's probe sniffs the content anyway; the hint only orders its guesses.
    let is_riff = riff::is_wave(&head);
    // Symphonia reads at most 26 channels, and multiplies a larger count before it refuses it
    // (an overflow, a panic in a debug build).
    if let Some(fmt) = is_riff.then(|| wav_fmt(&head)).flatten()
        && !(1..=MAX_WAV_CHANNELS).contains(&fmt.channels)
    {
        return Err(DecodeError::Corrupt(format!(
            "WAV with {} channels (1 to {MAX_WAV_CHANNELS} are read)",
            fmt.channels
        )));
    }
    let mut hint = Hint::new();
    hint.with_extension(if is_riff { "wav" } else { "mp3" });
    let budget = limits.budget(file_len);
    let source: Box<dyn MediaSource> = match is_riff.then(|| repair_wav_header(&head, file_len)) {
        Some(Some(head)) => Box::new(BudgetedReader::new(
            Repaired { file, head, pos: 0 },
            budget.clone(),
        )),
        _ => Box::new(BudgetedReader::new(file, budget.clone())),
    };
    let mss = MediaSourceStream::new(source, Default::default());
    let format = match symphonia::default::get_probe().probe(
        &hint,
        mss,
        FormatOptions::default(),
        MetadataOptions::default(),
    ) {
        Ok(format) => format,
        Err(SymphoniaError::IoError(e)) if exhausted_cause(&e).is_some() => {
            return Err(stopped(&budget));
        }
        Err(SymphoniaError::IoError(e)) if e.kind() != io::ErrorKind::UnexpectedEof => {
            return Err(read_err(e));
        }
        Err(e) if is_riff => {
            return Err(match wav_format(&head) {
                Some((tag, name)) if tag != 0 && !SUPPORTED_WAV_FORMATS.contains(&tag) => {
                    DecodeError::UnsupportedCodec(name)
                }
                Some((_, name)) => DecodeError::Corrupt(format!("{name}: {e}")),
                None => DecodeError::Corrupt(format!("WAV: {e}")),
            });
        }
        Err(SymphoniaError::Unsupported(_)) => match mpeg_reader(input, &budget)? {
            Some(format) => format,
            None => {
                return Err(DecodeError::NotAudio(
                    "no MP3 frames or WAV header found".into(),
                ));
            }
        },
        Err(e) => return Err(DecodeError::NotAudio(e.to_string())),
    };

    Ok(Opened {
        format,
        head,
        is_riff,
        file_len,
        budget,
    })
}

/// Symphonia's probe wants to see a second frame before it believes the first, so a voicemail
/// of a single frame (24 to 72 ms: a caller who hung up at once) is read as MPEG audio directly.
fn mpeg_reader(
    input: &Path,
    budget: &Budget,
) -> Result<Option<Box<dyn FormatReader>>, DecodeError> {
    let file = File::open(input).map_err(|source| DecodeError::Open {
        path: input.to_owned(),
        source,
    })?;
    let source = BudgetedReader::new(file, budget.clone());
    let mss = MediaSourceStream::new(Box::new(source), Default::default());
    match MpaReader::try_new(mss, FormatOptions::default()) {
        Ok(reader) => Ok(Some(Box::new(reader))),
        Err(SymphoniaError::IoError(e)) if exhausted_cause(&e).is_some() => Err(stopped(budget)),
        Err(_) => Ok(None),
    }
}
