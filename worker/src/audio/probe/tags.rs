//! The tags around MPEG audio, which hold no audio and are skipped: ID3v2 before the audio
//! (and between recordings glued together); ID3v1, APEv2 and Lyrics3v2 at the end.

use super::source::Source;

/// Tags looked for at the end of a file: real files have one of each kind at most.
const MAX_END_TAGS: usize = 8;
/// An ID3v1 tag's length.
const ID3V1_LEN: u64 = 128;
/// An APEv2 header's or footer's length.
const APE_FOOTER_LEN: u64 = 32;
/// A Lyrics3v2 tag's 6-digit size and `LYRICS200`.
const LYRICS3_END_LEN: u64 = 15;

/// ID3v2 tag size at `b` (header and footer included), if `b` starts one.
pub(super) fn id3v2_len(b: &[u8]) -> Option<u64> {
    if b.len() < 10 || &b[..3] != b"ID3" || b[3] == 0xFF || b[4] == 0xFF {
        return None;
    }
    let size = b[6..10].iter().try_fold(0u64, |acc, &x| {
        (x < 0x80).then_some((acc << 7) | u64::from(x))
    })?;
    let footer = if b[5] & 0x10 != 0 { 10 } else { 0 };
    Some(10 + size + footer)
}

/// Where the audio ends: before ID3v1, APEv2 and Lyrics3v2 tags at the end of the file.
/// Every tag found moves the end back by at least 15 bytes, and at most `MAX_END_TAGS` are
/// skipped: the search always ends.
pub(super) fn audio_end(src: &mut Source) -> std::io::Result<u64> {
    let mut end = src.len();
    for _ in 0..MAX_END_TAGS {
        match end_tag_len(src, end)? {
            Some(len) if len > 0 && len <= end => end -= len,
            _ => break,
        }
    }
    Ok(end)
}

/// The length of the tag that ends at `end`, if one does.
fn end_tag_len(src: &mut Source, end: u64) -> std::io::Result<Option<u64>> {
    let want = APE_FOOTER_LEN + ID3V1_LEN;
    let tail = src.read_at(end.saturating_sub(want), want.min(end) as usize)?;
    let last = |n: u64| (tail.len() as u64 >= n).then(|| &tail[tail.len() - n as usize..]);
    if let Some(id3v1) = last(ID3V1_LEN)
        && &id3v1[..3] == b"TAG"
    {
        return Ok(Some(ID3V1_LEN));
    }
    if let Some(footer) = last(APE_FOOTER_LEN)
        && &footer[..8] == b"APETAGEX"
    {
        // The size counts the items and the footer, not the header: less than a footer is
        // no tag (a size of 0 once made this search go round forever).
        let size = u64::from(u32::from_le_bytes(
            footer[12..16].try_into().expect("4 bytes"),
        ));
        let has_header = footer[23] & 0x80 != 0;
        if size >= APE_FOOTER_LEN {
            return Ok(Some(size + if has_header { APE_FOOTER_LEN } else { 0 }));
        }
    }
    if let Some(lyrics) = last(LYRICS3_END_LEN)
        && &lyrics[6..] == b"LYRICS200"
    {
        let size: Option<u64> = std::str::from_utf8(&lyrics[..6])
            .ok()
            .and_then(|s| s.parse().ok());
        return Ok(size.map(|size| size + LYRICS3_END_LEN));
    }
    Ok(None)
}
