//! MPEG audio (MP3, and MP2/MP1 for completeness): duration by counting the frames that are
//! really in the file.
//!
//! Nothing is decoded. Tags are skipped: ID3v2 at the start, and again mid-file where two
//! recordings were glued together; ID3v1, APEv2 and Lyrics3 at the end. Junk before the first
//! frame, trailing zeros and garbage do not count: outside a run of frames, a frame is only
//! believed when the next one follows where its length says. A cut-off last frame is not
//! counted. The encoder delay and padding of a LAME/Info tag are trimmed the way FFmpeg's
//! decoder trims them, so the result matches a full decode.

use super::source::Source;
use super::tags::{audio_end, id3v2_len};
use super::{Measured, ProbeError};

/// Samples a decoder adds in front of the stream (FFmpeg and mpg123 trim it with the delay).
const DECODER_DELAY: u64 = 529;
/// Bytes without a frame after which the rest is taken to be garbage, not audio.
const MAX_JUNK: u64 = 1 << 20;
/// Fewest frames that make a recording (a few tens of milliseconds) amid anything else; fewer
/// are one only when they are all the file holds besides its tags.
const MIN_FRAMES: u64 = 3;
/// How far to look for the second frame of a free-format stream.
const FREE_FORMAT_SEARCH: u64 = 8192;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    Mpeg1,
    Mpeg2,
    Mpeg25,
}

#[derive(Clone, Copy, Debug)]
struct Header {
    version: Version,
    layer: u8,
    /// 0 means free format.
    bitrate_kbps: u32,
    sample_rate: u32,
    padding: bool,
    mono: bool,
}

const BITRATES_V1: [[u32; 15]; 3] = [
    [
        0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448,
    ],
    [
        0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
    ],
    [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ],
];
const BITRATES_V2: [[u32; 15]; 2] = [
    [
        0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256,
    ],
    [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],
];

/// The bitrates of a version and layer, by bitrate index (0: free format).
fn bitrates(version: Version, layer: u8) -> &'static [u32; 15] {
    match version {
        Version::Mpeg1 => &BITRATES_V1[layer as usize - 1],
        _ => &BITRATES_V2[usize::from(layer != 1)],
    }
}

impl Header {
    fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < 4 || b[0] != 0xFF || b[1] & 0xE0 != 0xE0 {
            return None;
        }
        let version = match (b[1] >> 3) & 3 {
            0 => Version::Mpeg25,
            2 => Version::Mpeg2,
            3 => Version::Mpeg1,
            _ => return None,
        };
        let layer = match (b[1] >> 1) & 3 {
            1 => 3,
            2 => 2,
            3 => 1,
            _ => return None,
        };
        let bitrate_index = (b[2] >> 4) as usize;
        let rate_index = ((b[2] >> 2) & 3) as usize;
        // Reserved emphasis: not a real header (rejects many false syncs in garbage).
        if bitrate_index == 15 || rate_index == 3 || b[3] & 3 == 2 {
            return None;
        }
        let bitrate_kbps = bitrates(version, layer)[bitrate_index];
        let base_rate = [44100, 48000, 32000][rate_index];
        let sample_rate = match version {
            Version::Mpeg1 => base_rate,
            Version::Mpeg2 => base_rate / 2,
            Version::Mpeg25 => base_rate / 4,
        };
        Some(Self {
            version,
            layer,
            bitrate_kbps,
            sample_rate,
            padding: b[2] & 2 != 0,
            mono: b[3] >> 6 == 3,
        })
    }

    fn samples(&self) -> u64 {
        match (self.layer, self.version) {
            (1, _) => 384,
            (3, Version::Mpeg2 | Version::Mpeg25) => 576,
            _ => 1152,
        }
    }

    /// Frame length in bytes; `free_len` is a free-format stream's length without padding.
    fn len(&self, free_len: Option<u64>) -> Option<u64> {
        let pad = u64::from(self.padding) * if self.layer == 1 { 4 } else { 1 };
        if self.bitrate_kbps == 0 {
            return free_len.map(|l| l + pad);
        }
        let bitrate = u64::from(self.bitrate_kbps) * 1000;
        let rate = u64::from(self.sample_rate);
        let len = match (self.layer, self.version) {
            (1, _) => 12 * bitrate / rate * 4,
            (3, Version::Mpeg2 | Version::Mpeg25) => 72 * bitrate / rate,
            _ => 144 * bitrate / rate,
        };
        Some(len + pad)
    }

    /// The shortest a free-format frame of this stream is believed: as long as the lowest
    /// bitrate of its version and layer makes a frame (shorter ones would make a few bytes
    /// last hours), and long enough for its header and side information.
    fn min_free_len(&self) -> u64 {
        let lowest = Header {
            bitrate_kbps: bitrates(self.version, self.layer)[1],
            padding: false,
            ..*self
        };
        let len = lowest.len(None).unwrap_or(0);
        len.max(4 + self.side_info_len())
    }

    fn same_stream(&self, other: &Header) -> bool {
        self.version == other.version
            && self.layer == other.layer
            && self.sample_rate == other.sample_rate
            && (self.bitrate_kbps == 0) == (other.bitrate_kbps == 0)
    }

    fn side_info_len(&self) -> u64 {
        match (self.version, self.mono) {
            (Version::Mpeg1, true) => 17,
            (Version::Mpeg1, false) => 32,
            (_, true) => 9,
            (_, false) => 17,
        }
    }
}

/// What a Xing/Info (and LAME) tag in the first frame says.
#[derive(Debug, Default)]
struct EncoderInfo {
    frames: Option<u64>,
    /// Encoder delay and padding, from a LAME-style extension.
    gapless: Option<(u64, u64)>,
}

/// Reads the Xing/Info/VBRI tag if this first frame is one (it then holds no audio).
fn encoder_info(frame: &[u8], header: &Header) -> Option<EncoderInfo> {
    if header.layer != 3 {
        return None;
    }
    let at = 4 + header.side_info_len() as usize;
    let tag = frame.get(at..at + 4)?;
    if tag != b"Xing" && tag != b"Info" {
        return (frame.get(36..40)? == b"VBRI").then(EncoderInfo::default);
    }
    let flags = u32::from_be_bytes(frame.get(at + 4..at + 8)?.try_into().ok()?);
    let mut next = at + 8;
    let mut info = EncoderInfo::default();
    if flags & 1 != 0 {
        let frames = u32::from_be_bytes(frame.get(next..next + 4)?.try_into().ok()?);
        info.frames = (frames > 0).then_some(u64::from(frames));
        next += 4;
    }
    for (flag, size) in [(2, 4), (4, 100), (8, 4)] {
        if flags & flag != 0 {
            next += size;
        }
    }
    if let Some(ext) = frame.get(next..next + 24) {
        let encoder = &ext[..4];
        if encoder == b"LAME" || encoder == b"Lavf" || encoder == b"Lavc" {
            let d = &ext[21..24];
            let delay = (u64::from(d[0]) << 4) | (u64::from(d[1]) >> 4);
            let padding = (u64::from(d[1] & 0x0F) << 8) | u64::from(d[2]);
            info.gapless = Some((delay, padding));
        }
    }
    Some(info)
}

/// Measures the whole file.
pub(super) fn measure(src: &mut Source) -> Result<Measured, ProbeError> {
    let end = audio_end(src)?;
    measure_range(src, 0, end)
}

/// A run of frames with one sample rate (a file can hold several: recordings glued together).
struct Segment {
    header: Header,
    frames: u64,
}

/// Measures the MPEG audio in bytes `start..end` (a whole file, or a WAV data chunk).
pub(super) fn measure_range(
    src: &mut Source,
    start: u64,
    end: u64,
) -> Result<Measured, ProbeError> {
    let mut pos = start;
    // Where the last frame ended: junk runs are bounded so that garbage costs bounded time.
    let mut last_good = start;
    let mut segments: Vec<Segment> = Vec::new();
    // Inside a run of frames, each header is checked against the run's stream only.
    let mut locked = false;
    let mut free_len: Option<u64> = None;
    let mut first_frame_seen = false;
    let mut info = EncoderInfo::default();
    let mut audio_bytes = 0u64;
    // Bytes of tags and frames: all of `start..end` when nothing else is there.
    let mut accounted = 0u64;

    while pos + 4 <= end {
        let head = src.bytes(pos, 10)?;
        if let Some(tag) = id3v2_len(head) {
            // A tag before the audio, or between two recordings glued together.
            pos += tag;
            accounted += tag;
            locked = false;
            continue;
        }
        let current = segments.last().map(|s| s.header);
        let parsed =
            Header::parse(head).filter(|h| !locked || current.is_some_and(|c| c.same_stream(h)));
        let Some(header) = parsed else {
            if pos - last_good > MAX_JUNK {
                break;
            }
            pos += 1;
            locked = false;
            continue;
        };
        if header.bitrate_kbps == 0 && free_len.is_none() {
            free_len = find_free_format_len(src, pos, &header, end)?;
        }
        let Some(len) = header.len(free_len).filter(|&l| l > 4) else {
            pos += 1;
            continue;
        };
        if pos + len > end {
            // A cut-off last frame holds no complete audio; or this was a false sync.
            if locked {
                break;
            }
            pos += 1;
            continue;
        }
        if !locked && !followed_by_frames(src, pos + len, &header, end, free_len, 2)? {
            pos += 1;
            continue;
        }
        let starts_run = !locked;
        locked = true;
        if !current.is_some_and(|c| c.same_stream(&header)) {
            segments.push(Segment { header, frames: 0 });
        }
        let frame_start = pos;
        pos += len;
        accounted += len;
        last_good = pos;
        if starts_run {
            let frame = src.bytes(frame_start, len as usize)?;
            if let Some(found) = encoder_info(frame, &header) {
                // A Xing/Info frame holds no audio. Only the file's first one describes the
                // encoder delay decoders trim; one after a glued-on recording is just skipped.
                if !first_frame_seen {
                    info = found;
                }
                first_frame_seen = true;
                continue;
            }
        }
        first_frame_seen = true;
        if let Some(segment) = segments.last_mut() {
            segment.frames += 1;
        }
        audio_bytes += len;
    }

    segments.retain(|s| s.frames > 0);
    let first = segments.first().ok_or(ProbeError::NoAudio)?;
    // One or two frames amid other bytes are stray sync words, not a recording; as the whole
    // file (a caller who hung up at once), they are one.
    let whole = pos == end && accounted == end - start;
    if segments.iter().map(|s| s.frames).sum::<u64>() < MIN_FRAMES && !whole {
        return Err(ProbeError::NoAudio);
    }
    let mut duration_us = 0u64;
    for (index, segment) in segments.iter().enumerate() {
        let spf = segment.header.samples();
        let total = segment.frames * spf;
        let samples = match (index, info.gapless) {
            (0, Some((delay, padding))) => {
                let mut out = total.saturating_sub(delay + DECODER_DELAY);
                // FFmpeg drops the padding where the tag says the stream ends: samples
                // [frames*spf + 529 - padding, frames*spf) of the decoded stream.
                if let Some(tagged) = info.frames {
                    let last = tagged * spf;
                    let first = (last + DECODER_DELAY).saturating_sub(padding);
                    let overlap = last
                        .min(total)
                        .saturating_sub(first.max(delay + DECODER_DELAY));
                    out = out.saturating_sub(overlap);
                }
                out
            }
            _ => total,
        };
        duration_us += samples * 1_000_000 / u64::from(segment.header.sample_rate);
    }
    if duration_us == 0 {
        return Err(ProbeError::NoAudio);
    }
    Ok(Measured {
        duration_us,
        sample_rate: first.header.sample_rate,
        channels: if first.header.mono { 1 } else { 2 },
        codec: match first.header.layer {
            3 => "mp3",
            2 => "mp2",
            _ => "mp1",
        },
        audio_bytes,
    })
}

/// Whether `depth` more frames of the same stream follow from `next` (the audio may also end
/// there). Outside a run of frames, a sync word is only believed when frames follow it: random
/// bytes pass one header check in a few thousand, three in a row almost never.
fn followed_by_frames(
    src: &mut Source,
    next: u64,
    header: &Header,
    end: u64,
    free_len: Option<u64>,
    depth: u32,
) -> std::io::Result<bool> {
    if depth == 0 || next == end {
        return Ok(true);
    }
    let b = src.bytes(next, 10)?;
    if id3v2_len(b).is_some() {
        return Ok(true);
    }
    let following = Header::parse(b)
        .filter(|h| h.same_stream(header))
        .and_then(|h| h.len(free_len))
        .filter(|&l| l > 4);
    match following {
        // A frame cut off by the end of the file still shows the stream is real.
        Some(len) if next + len > end => Ok(true),
        Some(len) => followed_by_frames(src, next + len, header, end, free_len, depth - 1),
        None => Ok(false),
    }
}

/// A free-format stream's frame length (without padding): the distance to the next header of
/// the same stream, if it is one a real stream can have.
fn find_free_format_len(
    src: &mut Source,
    pos: u64,
    header: &Header,
    end: u64,
) -> std::io::Result<Option<u64>> {
    let limit = (pos + FREE_FORMAT_SEARCH).min(end);
    let window = src.unspent_bytes(pos, (limit - pos) as usize)?;
    let next = (5..window.len().saturating_sub(3)).find(|&offset| {
        Header::parse(&window[offset..])
            .is_some_and(|next| next.bitrate_kbps == 0 && next.same_stream(header))
    });
    // What was looked at: up to the next header, or the whole window.
    let examined = next.unwrap_or(window.len()) as u64;
    src.spend(examined)?;
    let pad = u64::from(header.padding) * if header.layer == 1 { 4 } else { 1 };
    Ok(next
        .and_then(|offset| (offset as u64).checked_sub(pad))
        .filter(|&len| len >= header.min_free_len()))
}
