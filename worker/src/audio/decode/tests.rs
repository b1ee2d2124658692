use super::sink::HEADER_LEN;
use super::*;
use std::time::Instant;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/audio")
        .join(name)
}

/// Duration in ms of each fixture according to `truth.tsv`; `None` for the bad ones.
fn truth() -> Vec<(String, Option<u64>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/truth.tsv");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| {
            let mut cols = line.split('\t');
            let name = cols.next().unwrap().to_owned();
            (name, cols.next().unwrap().parse().ok())
        })
        .collect()
}

/// Checks the header byte for byte and returns the samples.
fn read_wav16k(path: &Path) -> Vec<i16> {
    let bytes = std::fs::read(path).unwrap();
    let data_len = bytes.len() as u32 - HEADER_LEN;
    assert_eq!(&bytes[0..4], b"RIFF");
    assert_eq!(bytes[4..8], (data_len + 36).to_le_bytes());
    assert_eq!(&bytes[8..16], b"WAVEfmt ");
    assert_eq!(
        bytes[16..36],
        [
            16, 0, 0, 0, // fmt chunk length
            1, 0, // PCM
            1, 0, // mono
            0x80, 0x3E, 0, 0, // 16000 Hz
            0x00, 0x7D, 0, 0, // 32000 bytes/s
            2, 0, // block align
            16, 0, // bits per sample
        ]
    );
    assert_eq!(&bytes[36..40], b"data");
    assert_eq!(bytes[40..44], data_len.to_le_bytes());
    bytes[44..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn convert(name: &str) -> (Wav16k, Vec<i16>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.wav");
    let decoded = write_wav16k(&fixture(name), &out).unwrap_or_else(|e| panic!("{name}: {e}"));
    let samples = read_wav16k(&out);
    assert_eq!(samples.len() as u64, decoded.frames, "{name}");
    (decoded, samples)
}

fn assert_duration(name: &str, truth_ms: u64) {
    let (decoded, samples) = convert(name);
    let ms = decoded.frames * 1000 / u64::from(RATE);
    assert!(
        ms.abs_diff(truth_ms) <= 60,
        "{name}: {ms} ms, truth {truth_ms} ms"
    );
    // Speech, not silence.
    let peak = samples.iter().map(|s| s.unsigned_abs()).max().unwrap();
    assert!(peak > 1000, "{name}: peak {peak}");
}

#[test]
fn durations_match_the_truth() {
    let truth = truth();
    let ms = |name: &str| truth.iter().find(|(n, _)| n == name).unwrap().1.unwrap();
    for name in [
        "wav_pcm16_8k.wav",
        "wav_pcm16_16k.wav",
        "wav_mulaw_8k.wav",
        "wav_ima_adpcm_8k.wav",
        "mp3_vbr_44k_stereo.mp3",
        "mp3_cbr16_8k.mp3",
        "mp3_vbr_8k.mp3",
        "mp3_trailing_garbage.mp3",
    ] {
        assert_duration(name, ms(name));
    }
}

/// Every fixture: the good ones within 60 ms of the truth (GSM excepted: symphonia has
/// no GSM decoder, and the error must say so), the bad ones a clean error.
#[test]
fn every_fixture() {
    let dir = tempfile::tempdir().unwrap();
    for (name, truth_ms) in truth() {
        let out = dir.path().join(format!("{name}.wav"));
        let result = write_wav16k(&fixture(&name), &out);
        match (truth_ms, result) {
            (_, result) if name == "wav_gsm_8k.wav" => {
                let err = result.unwrap_err();
                assert!(matches!(err, DecodeError::UnsupportedCodec(_)), "{err:?}");
                assert!(err.to_string().contains("GSM 6.10"), "{err}");
                assert!(!out.exists());
            }
            (Some(truth_ms), Ok(decoded)) => {
                let ms = decoded.frames * 1000 / u64::from(RATE);
                assert!(
                    ms.abs_diff(truth_ms) <= 60,
                    "{name}: {ms} ms, truth {truth_ms} ms"
                );
                assert_eq!(read_wav16k(&out).len() as u64, decoded.frames);
            }
            (Some(_), Err(e)) => panic!("{name}: {e}"),
            (None, Ok(decoded)) => panic!("{name}: not an error: {decoded:?}"),
            (None, Err(_)) => assert!(!out.exists(), "{name}: output written"),
        }
    }
}

#[test]
fn source_format_is_reported() {
    let (decoded, _) = convert("mp3_vbr_44k_stereo.mp3");
    assert_eq!((decoded.source_rate, decoded.source_channels), (44100, 2));
    let (decoded, _) = convert("wav_pcm16_16k.wav");
    assert_eq!((decoded.source_rate, decoded.source_channels), (16000, 1));
}

/// A 16 kHz 16-bit WAV comes out sample for sample.
#[test]
fn sixteen_khz_pcm_is_copied() {
    let (_, samples) = convert("wav_pcm16_16k.wav");
    let bytes = std::fs::read(fixture("wav_pcm16_16k.wav")).unwrap();
    let data = bytes.windows(4).position(|w| w == b"data").unwrap() + 8;
    let source: Vec<i16> = bytes[data..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert_eq!(samples, source);
}

/// Writes a 16-bit PCM WAV of a `freq` Hz sine at amplitude `amp` (full scale 1).
fn write_sine(path: &Path, rate: u32, channels: u16, freq: f64, secs: f64, amp: f64) {
    let frames = (f64::from(rate) * secs) as u32;
    let data_len = frames * u32::from(channels) * 2;
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(data_len + 36).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.extend_from_slice(&channels.to_le_bytes());
    bytes.extend_from_slice(&rate.to_le_bytes());
    bytes.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
    bytes.extend_from_slice(&(channels * 2).to_le_bytes());
    bytes.extend_from_slice(&16u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..frames {
        let t = f64::from(i) / f64::from(rate);
        let s = (amp * 32767.0 * (2.0 * std::f64::consts::PI * freq * t).sin()).round() as i16;
        for _ in 0..channels {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// Zero crossings per second and RMS (full scale 1) of the middle of `samples`.
fn analyse(samples: &[i16]) -> (f64, f64) {
    let middle = &samples[samples.len() / 10..samples.len() * 9 / 10];
    let crossings = middle
        .windows(2)
        .filter(|w| (w[0] < 0) != (w[1] < 0))
        .count();
    let secs = middle.len() as f64 / f64::from(RATE);
    let rms = (middle
        .iter()
        .map(|&s| (f64::from(s) / 32768.0).powi(2))
        .sum::<f64>()
        / middle.len() as f64)
        .sqrt();
    (crossings as f64 / secs, rms)
}

#[test]
fn a_sine_keeps_its_frequency_and_amplitude() {
    let dir = tempfile::tempdir().unwrap();
    for (rate, channels) in [(8000, 1), (44100, 2), (11025, 1)] {
        let input = dir.path().join(format!("sine_{rate}_{channels}.wav"));
        let output = dir.path().join("out.wav");
        write_sine(&input, rate, channels, 1000.0, 3.0, 0.5);
        let decoded = write_wav16k(&input, &output).unwrap();
        assert_eq!(decoded.frames, 48_000, "{rate} Hz");
        let samples = read_wav16k(&output);
        let (crossings, rms) = analyse(&samples);
        // A 1 kHz sine crosses zero 2000 times a second; its RMS is amplitude / sqrt 2.
        assert!(
            (crossings - 2000.0).abs() < 10.0,
            "{rate} Hz: {crossings}/s"
        );
        assert!(
            (rms - 0.5 / 2f64.sqrt()).abs() < 0.02,
            "{rate} Hz: RMS {rms}"
        );
        // No delay left at the start: the sine starts rising at once, like the input.
        assert!(samples[4] > 1000, "{rate} Hz: {:?}", &samples[..8]);
    }
}

/// The resampler's delay is trimmed to within half an output frame, at any rate.
#[test]
fn no_delay_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let freq = 300.0;
    for rate in [8000, 11025, 12000, 22050, 24000, 32000, 44100, 48000] {
        let input = dir.path().join(format!("sine_{rate}.wav"));
        let output = dir.path().join("out.wav");
        write_sine(&input, rate, 1, freq, 1.0, 0.5);
        write_wav16k(&input, &output).unwrap();
        let samples = read_wav16k(&output);
        // The phase of the output against sin(2 pi f t): its delay in output frames.
        let w = 2.0 * std::f64::consts::PI * freq / f64::from(RATE);
        let (mut sin, mut cos) = (0.0, 0.0);
        for (j, &s) in samples.iter().enumerate().take(12_000).skip(4000) {
            sin += f64::from(s) * (w * j as f64).sin();
            cos += f64::from(s) * (w * j as f64).cos();
        }
        let delay = -cos.atan2(sin) / w;
        assert!(delay.abs() <= 0.5, "{rate} Hz: {delay:.3} frames");
    }
}

/// Two MP3s at different rates glued together: the second part is not dropped.
#[test]
fn a_rate_change_mid_stream_restarts_the_resampler() {
    let dir = tempfile::tempdir().unwrap();
    let glued = dir.path().join("glued");
    let mut bytes = std::fs::read(fixture("mp3_vbr_8k.mp3")).unwrap();
    bytes.extend(std::fs::read(fixture("mp3_vbr_16k.mp3")).unwrap());
    std::fs::write(&glued, bytes).unwrap();
    let output = dir.path().join("out.wav");
    let decoded = write_wav16k(&glued, &output).unwrap();
    let ms = decoded.frames * 1000 / u64::from(RATE);
    assert!(ms.abs_diff(2 * 12238) <= 120, "{ms} ms");
    assert_eq!(decoded.source_rate, 8000);
    assert_eq!(read_wav16k(&output).len() as u64, decoded.frames);
}

#[test]
fn non_audio_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.wav");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "Hello, this is not audio.\n".repeat(100)).unwrap();
    let err = write_wav16k(&text, &output).unwrap_err();
    assert!(matches!(err, DecodeError::NotAudio(_)), "{err:?}");
    assert!(err.to_string().starts_with("not a recognised audio file"));
    assert!(!output.exists());

    let err = write_wav16k(&dir.path().join("missing.mp3"), &output).unwrap_err();
    assert!(matches!(err, DecodeError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.mp3"), "{err}");
}

/// Release-mode timing, by hand:
/// `cargo test -p vmpipe-worker --release --lib wav16k::tests::speed -- --ignored --nocapture`
#[test]
#[ignore = "timing, run by hand in release mode"]
fn speed() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "mp3_vbr_8k.mp3",
        "mp3_vbr_44k_stereo.mp3",
        "wav_pcm16_8k.wav",
    ] {
        // About a minute: the 12 s fixture five times over.
        let long = dir.path().join(name);
        let one = std::fs::read(fixture(name)).unwrap();
        if name.ends_with(".wav") {
            let data = one.windows(4).position(|w| w == b"data").unwrap() + 8;
            let mut bytes = one[..data].to_vec();
            (0..5).for_each(|_| bytes.extend_from_slice(&one[data..]));
            let len = (bytes.len() - data) as u32;
            bytes[data - 4..data].copy_from_slice(&len.to_le_bytes());
            std::fs::write(&long, bytes).unwrap();
        } else {
            std::fs::write(&long, one.repeat(5)).unwrap();
        }
        let started = Instant::now();
        let decoded = write_wav16k(&long, &dir.path().join("out.wav")).unwrap();
        println!(
            "{name} x5: {:.1} s of audio in {:.3} s",
            decoded.frames as f64 / f64::from(RATE),
            started.elapsed().as_secs_f64()
        );
    }
}
