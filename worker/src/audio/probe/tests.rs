use super::*;
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
