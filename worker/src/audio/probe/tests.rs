use super::*;
use crate::audio::riff;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Every fixture within max(50 ms, 1 %) of its decoded duration; every bad file an error.
#[test]
fn fixtures_match_their_decoded_duration() {
    let truth = std::fs::read_to_string(fixtures().join("truth.tsv")).unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for line in truth.lines().skip(1) {
        let fields: Vec<&str> = line.split('\t').collect();
        let (file, expected) = (fields[0], fields[1]);
        let result = probe_file(&fixtures().join("audio").join(file));
        checked += 1;
        match (expected, &result) {
            ("error", Err(_)) => {}
            ("error", Ok(p)) => failures.push(format!("{file}: expected an error, got {p:?}")),
            (ms, Ok(p)) => {
                let truth: u64 = ms.parse().unwrap();
                let tolerance = (truth / 100).max(50);
                if p.duration_ms.abs_diff(truth) > tolerance {
                    failures.push(format!("{file}: {} ms, truth {truth} ms", p.duration_ms));
                }
            }
            (ms, Err(e)) => failures.push(format!("{file}: error {e}, truth {ms} ms")),
        }
    }
    assert!(checked >= 40, "fixtures present");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn formats_are_reported() {
    let probe = |name: &str| probe_file(&fixtures().join("audio").join(name)).unwrap();
    let p = probe("mp3_vbr_16k.mp3");
    assert_eq!(
        (p.codec.as_str(), p.sample_rate, p.channels),
        ("mp3", 16000, 1)
    );
    let p = probe("wav_mulaw_8k.wav");
    assert_eq!(
        (p.codec.as_str(), p.sample_rate, p.bitrate_bps),
        ("pcm_mulaw", 8000, Some(64000))
    );
    let p = probe("mp3_cbr16_8k.mp3");
    assert_eq!(p.bitrate_bps, Some(16000));
    let p = probe("mp3_vbr_44k_stereo.mp3");
    assert_eq!((p.sample_rate, p.channels), (44100, 2));
}

/// A 2 GiB file (sparse: zeros after a real recording) is rejected or measured quickly,
/// with memory bounded by the read window.
#[test]
fn huge_files_take_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.mp3");
    let audio = std::fs::read(fixtures().join("audio/mp3_cbr32_16k.mp3")).unwrap();
    let file = std::fs::File::create(&path).unwrap();
    std::io::Write::write_all(&mut &file, &audio).unwrap();
    file.set_len(2 << 30).unwrap();
    let started = Instant::now();
    let p = probe_file(&path).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(p.duration_ms.abs_diff(12312) <= 50, "{p:?}");

    let zeros = dir.path().join("zeros.wav");
    std::fs::File::create(&zeros)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let started = Instant::now();
    assert!(probe_file(&zeros).is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Probes `bytes` as a file on a thread of its own: a probe that has not ended after 5 s
/// fails the test instead of hanging it.
fn probe_bytes(bytes: &[u8]) -> Result<Probed, ProbeError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile");
    std::fs::write(&path, bytes).unwrap();
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(probe_file(&path));
        drop(dir);
    });
    result
        .recv_timeout(Duration::from_secs(5))
        .expect("the probe ended within 5 s")
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("audio").join(name)).unwrap()
}

/// An APEv2 footer whose size field is 0 is no tag (its size counts the footer itself): the
/// probe ends, and measures the audio before it.
#[test]
fn an_ape_footer_of_size_zero_ends_the_probe() {
    let mut mp3 = fixture_bytes("mp3_cbr32_16k.mp3");
    mp3.extend_from_slice(b"APETAGEX");
    mp3.extend_from_slice(&2000u32.to_le_bytes()); // version
    mp3.extend_from_slice(&0u32.to_le_bytes()); // size: 0
    mp3.extend_from_slice(&0u32.to_le_bytes()); // items
    mp3.extend_from_slice(&0u32.to_le_bytes()); // flags: no header
    mp3.extend_from_slice(&[0; 8]);
    let probed = probe_bytes(&mp3).unwrap();
    assert!(probed.duration_ms.abs_diff(12312) <= 50, "{probed:?}");
}

/// A probe that runs out of time gives up with an error saying so, whatever the file: here a
/// long run of real frames (the MP3 fixture 400 times over, 20 MB), given 1 ms.
#[test]
fn a_probe_gives_up_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.mp3");
    std::fs::write(&path, fixture_bytes("mp3_cbr32_16k.mp3").repeat(400)).unwrap();
    let started = Instant::now();
    let error = probe_file_within(&path, Duration::from_millis(1)).unwrap_err();
    assert!(matches!(error, ProbeError::GaveUp(_)), "{error:?}");
    assert_eq!(error.to_string(), "gave up: took longer than 1 ms");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Given the default, the same file is measured.
    let probed = probe_file(&path).unwrap();
    assert!(
        probed.duration_ms.abs_diff(400 * 12312) <= 400 * 50,
        "{probed:?}"
    );
}

#[test]
fn the_default_timeout_is_the_settings_default() {
    assert_eq!(
        DEFAULT_TIMEOUT,
        vmpipe_common::Settings::default().probe_timeout()
    );
}

/// A WAV: a `fmt ` chunk of `tag`, `channels`, `rate`, `block_align`, `bits` and `ext` (its
/// extension, after the cbSize field), then `data`.
fn wav(
    tag: u16,
    channels: u16,
    rate: u32,
    block_align: u16,
    bits: u16,
    ext: &[u8],
    data: &[u8],
) -> Vec<u8> {
    let mut fmt = Vec::new();
    fmt.extend_from_slice(&tag.to_le_bytes());
    fmt.extend_from_slice(&channels.to_le_bytes());
    fmt.extend_from_slice(&rate.to_le_bytes());
    fmt.extend_from_slice(&(rate * u32::from(block_align)).to_le_bytes());
    fmt.extend_from_slice(&block_align.to_le_bytes());
    fmt.extend_from_slice(&bits.to_le_bytes());
    if !ext.is_empty() {
        fmt.extend_from_slice(&(ext.len() as u16).to_le_bytes());
        fmt.extend_from_slice(ext);
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&((4 + 8 + fmt.len() + 8 + data.len()) as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
    out.extend_from_slice(&fmt);
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// ADPCM headers claiming more samples a block than its bytes hold (65535, which once made
/// a few MB of IMA ADPCM 45 hours) are held to what the block can encode: 100 blocks of 256
/// bytes, mono, hold 100 × 505 IMA (100 × 500 Microsoft) samples, 6.3 s at 8 kHz.
#[test]
fn adpcm_blocks_hold_what_their_bytes_can_encode() {
    let data = vec![0x11; 256 * 100];
    for (tag, truth) in [(riff::IMA_ADPCM, 6312), (riff::MS_ADPCM, 6250)] {
        for samples_per_block in [0u16, 65535] {
            let file = wav(
                tag,
                1,
                8000,
                256,
                4,
                &samples_per_block.to_le_bytes(),
                &data,
            );
            let probed = probe_bytes(&file).unwrap();
            assert!(
                probed.duration_ms.abs_diff(truth) <= 1,
                "0x{tag:04X}, {samples_per_block} a block: {probed:?}"
            );
        }
    }
}

/// PCM whose block size is smaller than one sample of every channel: the bytes hold one
/// second of 16-bit stereo at 8 kHz, not four.
#[test]
fn pcm_frames_hold_a_sample_of_every_channel() {
    let file = wav(riff::PCM, 2, 8000, 1, 16, &[], &[0; 32_000]);
    assert_eq!(probe_bytes(&file).unwrap().duration_ms, 1000);
}

/// A sample rate below 4 kHz is no voicemail's: 2 KB at 1 Hz is not 33 minutes.
#[test]
fn sample_rates_below_4_khz_are_refused() {
    let file = wav(riff::PCM, 1, 1, 1, 8, &[], &[0x80; 2000]);
    let error = probe_bytes(&file).unwrap_err();
    assert!(matches!(error, ProbeError::Corrupt(_)), "{error:?}");
    assert!(error.to_string().contains("sample rate 1 Hz"), "{error}");
    let file = wav(riff::PCM, 1, 4000, 1, 8, &[], &[0x80; 2000]);
    assert_eq!(probe_bytes(&file).unwrap().duration_ms, 500);
}

/// Free-format MPEG frames shorter than the lowest bitrate of their layer makes them are not
/// believed: 8-byte frames once made 800 KB 9.5 hours.
#[test]
fn free_format_frames_are_at_least_the_lowest_bitrate_long() {
    // MPEG-2 Layer III, free format, 22.05 kHz, mono: the lowest bitrate (8 kbps) makes
    // 26-byte frames.
    let header = [0xFF, 0xF3, 0x00, 0xC0];
    let tiny: Vec<u8> = [&header[..], &[0; 4]].concat().repeat(100_000);
    let result = probe_bytes(&tiny);
    assert!(result.is_err(), "{result:?}");
    // 104-byte frames (32 kbps) are measured: 26.1 ms each.
    let frames: Vec<u8> = [&header[..], &[0; 100]].concat().repeat(1000);
    let probed = probe_bytes(&frames).unwrap();
    assert_eq!(probed.duration_ms, 1000 * 576 * 1000 / 22050, "{probed:?}");
}

/// Bytes without 0xFF (so without a sync word), from a fixed seed.
fn junk(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 255) as u8
        })
        .collect()
}

/// One or two frames are a recording when they are the whole file between its tags (a caller
/// who hung up at once: 24 to 96 ms); the same frames amid junk are stray sync words, as is a
/// stream with bytes left over.
#[test]
fn a_short_stream_is_a_recording_only_when_it_is_the_whole_file() {
    let frames = &fixture_bytes("mp3_cbr32_16k.mp3")[..2 * 144];
    assert_eq!(probe_bytes(&frames[..144]).unwrap().duration_ms, 36);
    assert_eq!(probe_bytes(frames).unwrap().duration_ms, 72);
    for (what, file) in [
        (
            "junk around",
            [junk(4000, 1), frames.to_vec(), junk(4000, 2)].concat(),
        ),
        ("junk before", [junk(4000, 3), frames.to_vec()].concat()),
        ("junk after", [frames.to_vec(), junk(4000, 4)].concat()),
        ("3 bytes after", [frames, &[1, 2, 3]].concat()),
        ("1 byte before", [&[1], frames].concat()),
    ] {
        let result = probe_bytes(&file);
        assert!(
            matches!(result, Err(ProbeError::NotAudio(_))),
            "{what}: {result:?}"
        );
    }
}
