//! Hostile audio end to end: voicemails crafted to hang the probe, to blow up a decode, or to
//! inject shell into a hook, uploaded through ingest like KAZOO's. What an operator checks:
//! the rows are there, the worker goes on and stops when told, disk and threads are bounded.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sqlx::Row;
use vmpipe_common::Settings;
use vmpipe_common::settings::{HookAudio, HookSettings};
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";

fn fixture(name: &str) -> Vec<u8> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../worker/fixtures/audio");
    std::fs::read(PathBuf::from(dir).join(name)).unwrap()
}

/// The row of the voicemail `name`, once indexed.
async fn row_of(stack: &Stack, name: &str) -> sqlx::postgres::PgRow {
    let deadline = Instant::now() + WAIT;
    loop {
        let row = sqlx::query("SELECT * FROM voicemails WHERE attachment_name = $1")
            .bind(name)
            .fetch_optional(stack.pool())
            .await
            .unwrap();
        if let Some(row) = row {
            return row;
        }
        assert!(
            Instant::now() < deadline,
            "{name} not indexed after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A WAV of 8-bit PCM mono at `rate`, `samples` long.
fn wav_pcm8(rate: u32, samples: u32) -> Vec<u8> {
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(36 + samples).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes()); // bytes per second
    out.extend_from_slice(&1u16.to_le_bytes()); // block align
    out.extend_from_slice(&8u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&samples.to_le_bytes());
    out.extend((0..samples).map(|i| 128 + (i % 32) as u8 * 2));
    out
}

/// An MP3 ending in an APEv2 footer whose size is 0 once held its job forever (the probe
/// looped), and with it a prefetch slot, a CPU and SIGTERM. Now its row is written, and so is
/// the next voicemail's. A probe that runs out of time (here 1 ms, on a 20 MB MP3) gives up
/// with a `probe_error`, the row written all the same; small files are measured as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_mp3s_cannot_hold_the_worker() {
    let mut stack = Stack::start(false).await;
    let settings = Settings {
        probe_timeout_ms: 1,
        ..stack.worker_settings()
    };
    // A process of its own: the probe's time limit is the whole worker's.
    let worker = Service::spawn("worker", &settings).await;
    stack.wait_for_schema().await;

    let mut ape = fixture("mp3_cbr32_16k.mp3");
    ape.extend_from_slice(b"APETAGEX");
    ape.extend_from_slice(&2000u32.to_le_bytes());
    ape.extend_from_slice(&[0; 20]); // size 0, no items, no flags, reserved
    stack
        .upload(ACCOUNT, "ape-size-0.mp3", &ape, "audio/mpeg")
        .await;
    let long = fixture("mp3_cbr32_16k.mp3").repeat(400);
    stack.upload(ACCOUNT, "long.mp3", &long, "audio/mpeg").await;
    stack
        .upload(ACCOUNT, "after.wav", &wav_pcm16(8000, 1500), "audio/wav")
        .await;

    let row = row_of(&stack, "ape-size-0.mp3").await;
    assert_eq!(text(&row, "probe_error"), "");
    assert_eq!(row.get::<Option<i32>, _>("duration_ms"), Some(12312));
    let row = row_of(&stack, "long.mp3").await;
    assert_eq!(text(&row, "probe_error"), "gave up: took longer than 1 ms");
    assert_eq!(row.get::<Option<i32>, _>("duration_ms"), None);
    assert_eq!(row.get::<i64, _>("size_bytes"), long.len() as i64);
    let row = row_of(&stack, "after.wav").await;
    assert_eq!(text(&row, "probe_error"), "");
    assert_eq!(row.get::<Option<i32>, _>("duration_ms"), Some(1500));

    assert!(
        worker.sigterm(Duration::from_secs(10)).await.success(),
        "the worker stops when told"
    );
    stack.finish().await;
}

/// Open files of this process (the in-process worker's) that are deleted `vmpipe-wav16k`
/// temporary files: a decode still writing after its run gave the file up.
fn orphaned_decodes() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|target| target.display().to_string())
        .filter(|target| target.contains("vmpipe-wav16k-") && target.ends_with(" (deleted)"))
        .collect()
}

/// A wav16k decode is part of its hook run: at the run's timeout it stops, instead of going on
/// writing (at most a packet later) to a temporary file already deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_decode_stops_writing() {
    let scratch = tempfile::tempdir().unwrap();
    let started = scratch.path().join("started");
    let mut stack = Stack::start(false).await;
    let slow = HookSettings {
        timeout_secs: 1,
        max_attempts: 1,
        ..shell_hook(
            "slow",
            HookAudio::Wav16k,
            &format!("touch {}", started.display()),
        )
    };
    let settings = Settings {
        hooks: vec![slow],
        ..stack.worker_settings()
    };
    stack.start_worker_with(settings).await;
    // Two hours of 16 kbps MP3 (14 MB): many seconds of decoding, in any build.
    let long = fixture("mp3_cbr16_8k.mp3").repeat(580);
    stack.upload(ACCOUNT, "long.mp3", &long, "audio/mpeg").await;

    let row = stack
        .finished_transcription("long.mp3", "slow", Duration::from_secs(60))
        .await;
    assert_eq!(text(&row, "status"), "failed");
    assert_eq!(text(&row, "error"), "timed out after 1 s");
    assert!(!started.exists(), "the timeout came during the decode");
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let orphans = orphaned_decodes();
        if orphans.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a decode still writes after its run timed out: {orphans:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.finish().await;
}

/// What no voicemail is fails the run at once, not retried, with the reason recorded: a WAV
/// at 1 Hz (once a 64 MB temporary file from 2 KB), audio longer than `VMPIPE_MAX_AUDIO_SECS`.
/// The voicemails are indexed all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wav16k_refuses_what_no_voicemail_is() {
    let scratch = tempfile::tempdir().unwrap();
    let mut stack = Stack::start(false).await;
    let sizes = scratch.path().join("sizes");
    let wav16k = shell_hook(
        "wav16k",
        HookAudio::Wav16k,
        &format!("wc -c < \"$1\" >> {}", sizes.display()),
    );
    let settings = Settings {
        hooks: vec![wav16k],
        max_audio_secs: 2,
        ..stack.worker_settings()
    };
    stack.start_worker_with(settings).await;
    stack
        .upload(ACCOUNT, "one-hz.wav", &wav_pcm8(1, 2000), "audio/wav")
        .await;
    stack
        .upload(
            ACCOUNT,
            "three-s.wav",
            &wav_pcm8(8000, 3 * 8000),
            "audio/wav",
        )
        .await;
    stack
        .upload(ACCOUNT, "two-s.wav", &wav_pcm8(8000, 2 * 8000), "audio/wav")
        .await;

    for (name, error) in [
        (
            "one-hz.wav",
            "cannot decode the audio: sample rate 1 Hz: below 4000 Hz, no voicemail is recorded so",
        ),
        (
            "three-s.wav",
            "cannot decode the audio: the audio is longer than 2 s (VMPIPE_MAX_AUDIO_SECS)",
        ),
    ] {
        let row = stack
            .finished_transcription(name, "wav16k", Duration::from_secs(60))
            .await;
        assert_eq!(text(&row, "status"), "failed", "{name}");
        assert_eq!(text(&row, "error"), error, "{name}");
        assert_eq!(row.get::<i32, _>("attempts"), 1, "{name}: not retried");
        row_of(&stack, name).await;
    }
    let row = stack
        .finished_transcription("two-s.wav", "wav16k", Duration::from_secs(60))
        .await;
    assert_eq!(text(&row, "status"), "done", "{}", text(&row, "error"));
    // The only file a hook got: 2 s of 16 kHz 16-bit audio.
    let sizes = std::fs::read_to_string(&sizes).unwrap();
    assert_eq!(sizes.split_whitespace().collect::<Vec<_>>(), ["64044"]);
    stack.finish().await;
}

/// IMA ADPCM at 8 kHz whose header claims 65535 samples a block: `blocks` blocks of 256 bytes.
fn ima_adpcm_lying(blocks: usize) -> Vec<u8> {
    let data = vec![0x11; 256 * blocks];
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&((4 + 8 + 20 + 8 + data.len()) as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&20u32.to_le_bytes());
    out.extend_from_slice(&0x11u16.to_le_bytes()); // IMA ADPCM
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&4055u32.to_le_bytes());
    out.extend_from_slice(&256u16.to_le_bytes()); // block align
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes()); // extension size
    out.extend_from_slice(&65535u16.to_le_bytes()); // samples per block: a lie
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    out
}

/// Headers that claim more audio than their bytes hold do not make long voicemails: an IMA
/// ADPCM WAV claiming 65535 samples a block (once 45 hours from a few MB) is measured by what
/// its blocks can encode; MP3 "frames" of 8 bytes (once 9.5 hours) are no audio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_headers_do_not_inflate_durations() {
    let stack = Stack::start(true).await;
    // 10,000 blocks of 505 samples: 631 s at 8 kHz.
    stack
        .upload(ACCOUNT, "ima.wav", &ima_adpcm_lying(10_000), "audio/wav")
        .await;
    // MPEG-2 Layer III, free format, 22.05 kHz, mono: 8-byte frames, 100,000 of them.
    let tiny: Vec<u8> = [&[0xFF, 0xF3, 0x00, 0xC0][..], &[0; 4]]
        .concat()
        .repeat(100_000);
    stack
        .upload(ACCOUNT, "tiny-frames.mp3", &tiny, "audio/mpeg")
        .await;

    let row = row_of(&stack, "ima.wav").await;
    assert_eq!(text(&row, "probe_error"), "");
    assert_eq!(row.get::<Option<i32>, _>("duration_ms"), Some(631_250));
    let row = row_of(&stack, "tiny-frames.mp3").await;
    assert_eq!(row.get::<Option<i32>, _>("duration_ms"), None);
    assert_eq!(
        text(&row, "probe_error"),
        "not audio: no MP3 frames or WAV header found"
    );
    stack.finish().await;
}

/// A caller who hangs up at once leaves an MP3 of one or two frames: a recording, indexed with
/// its duration. The same frames in the middle of junk are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_and_two_frame_recordings_are_indexed() {
    let stack = Stack::start(true).await;
    stack
        .upload(
            ACCOUNT,
            "one.mp3",
            &fixture("mp3_one_frame.mp3"),
            "audio/mpeg",
        )
        .await;
    let two = fixture("mp3_two_frames_tagged.mp3");
    stack.upload(ACCOUNT, "two.mp3", &two, "audio/mpeg").await;
    let frames = &fixture("mp3_cbr32_16k.mp3")[..2 * 144];
    let stray = [&[0x20; 3000][..], frames, &[0x20; 3000]].concat();
    stack
        .upload(ACCOUNT, "stray.mp3", &stray, "audio/mpeg")
        .await;

    for (name, duration) in [
        ("one.mp3", Some(36)),
        ("two.mp3", Some(72)),
        ("stray.mp3", None),
    ] {
        let row = row_of(&stack, name).await;
        assert_eq!(row.get::<Option<i32>, _>("duration_ms"), duration, "{name}");
        assert_eq!(
            text(&row, "probe_error").is_empty(),
            duration.is_some(),
            "{name}"
        );
    }
    stack.finish().await;
}

/// Percent-encodes every byte of `segment` but ASCII letters, digits and `-._~`.
fn percent_encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A storage key is the sender's: one with shell in it once reached `{audio}` verbatim, and a
/// hook script that pasted `{audio}` into a shell line ran it. Hooks get a path of vmpipe's
/// choosing (a temporary name, deleted after the run), the key only inside the JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_get_a_safe_path_whatever_the_key() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().display().to_string();
    let mut stack = Stack::start(false).await;
    // What a careless script does: `{audio}` pasted into a shell command line.
    let careless = HookSettings {
        command: vec![
            "sh".into(),
            "-c".into(),
            format!("cd {dir} && wc -c < {{audio}}"),
        ],
        ..shell_hook("careless", HookAudio::Original, "")
    };
    // What a hook is given: its arguments, its environment, its standard input.
    let inputs = shell_hook(
        "inputs",
        HookAudio::Original,
        &format!(
            "printf '%s\\n' \"$@\" > {dir}/argv; printf '%s' \"$VMPIPE_AUDIO_PATH\" > {dir}/env; \
             cat > {dir}/input.json; wc -c < \"$1\""
        ),
    );
    let settings = Settings {
        hooks: vec![careless, inputs],
        ..stack.worker_settings()
    };
    stack.start_worker_with(settings).await;

    let name = "$(touch pwned);`touch pwned2` >x.mp3";
    let document_id = format!("202611-{}", hex32());
    let audio = fixture("mp3_cbr32_16k.mp3");
    let document = mailbox_message(&document_id, name);
    let att = Attachment {
        document_id: &document_id,
        name,
        content_type: "audio/mpeg",
        data: &audio,
        document: &document,
    };
    let path = format!("/{ACCOUNT}/{document_id}/{}", percent_encode(name));
    stack.put(&path, Body::Raw, &att).await;

    let mut rows = Vec::new();
    for hook in ["careless", "inputs"] {
        let row = stack
            .finished_transcription(name, hook, Duration::from_secs(30))
            .await;
        rows.push((hook, row));
    }
    let made: Vec<String> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pwned"))
        .collect();
    assert!(made.is_empty(), "the key's shell ran: {made:?}");
    for (hook, row) in rows {
        let error = text(&row, "error");
        assert_eq!(text(&row, "status"), "done", "{hook}: {error}");
        assert_eq!(text(&row, "text"), audio.len().to_string(), "{hook}");
    }

    let argv = std::fs::read_to_string(scratch.path().join("argv")).unwrap();
    let given = argv.trim_end_matches('\n');
    let file_name = given
        .strip_prefix(&format!("{}/", std::env::temp_dir().display()))
        .unwrap_or_else(|| panic!("not in the temporary directory: {given:?}"));
    let random = file_name
        .strip_prefix("vmpipe-audio-")
        .and_then(|rest| rest.strip_suffix(".mp3"))
        .unwrap_or_else(|| panic!("not vmpipe's name: {file_name:?}"));
    assert!(
        !random.is_empty() && random.chars().all(|c| c.is_ascii_alphanumeric()),
        "{file_name:?}"
    );
    assert_eq!(
        std::fs::read_to_string(scratch.path().join("env")).unwrap(),
        given
    );
    assert!(
        !std::path::Path::new(given).exists(),
        "deleted after the run"
    );
    let input: serde_json::Value =
        serde_json::from_slice(&std::fs::read(scratch.path().join("input.json")).unwrap()).unwrap();
    assert_eq!(input["audio_path"], given);
    assert_eq!(
        input["voicemail"]["storage_key"],
        format!("{ACCOUNT}/{document_id}/{name}")
    );
    assert_eq!(input["voicemail"]["attachment_name"], name);
    stack.finish().await;
}

/// Microsoft ADPCM whose step size grows past what symphonia's decoder multiplies without
/// overflow: blocks of nibbles 8 from the largest step (found by fuzzing the decoder).
fn ms_adpcm_overflowing() -> Vec<u8> {
    let mut fmt = Vec::new();
    for field in [2u16, 1] {
        fmt.extend_from_slice(&field.to_le_bytes()); // Microsoft ADPCM, mono
    }
    fmt.extend_from_slice(&8000u32.to_le_bytes());
    fmt.extend_from_slice(&4096u32.to_le_bytes());
    for field in [256u16, 4, 32, 500, 7] {
        fmt.extend_from_slice(&field.to_le_bytes()); // block, bits, extension, samples, coefs
    }
    for (a, b) in [
        (256i16, 0i16),
        (512, -256),
        (0, 0),
        (192, 64),
        (240, 0),
        (460, -208),
        (392, -232),
    ] {
        fmt.extend_from_slice(&a.to_le_bytes());
        fmt.extend_from_slice(&b.to_le_bytes());
    }
    let mut block = vec![0u8];
    block.extend_from_slice(&0x7FFFi16.to_le_bytes());
    block.extend_from_slice(&[0; 4]);
    block.resize(256, 0x88);
    let data = block.repeat(4);
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&((4 + 8 + fmt.len() + 8 + data.len()) as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
    out.extend_from_slice(&fmt);
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    out
}

/// A decoder that panics on a voicemail's bytes will again: the run fails at once, with the
/// panic's message, instead of crashing again at every retry. (Symphonia's overflow only
/// panics in a build with overflow checks, as the tests are.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(debug_assertions),
    ignore = "the overflow panics only with overflow checks"
)]
async fn a_decoder_crash_is_not_retried() {
    let mut stack = Stack::start(false).await;
    let settings = Settings {
        hooks: vec![shell_hook("wav16k", HookAudio::Wav16k, "wc -c < \"$1\"")],
        ..stack.worker_settings()
    };
    stack.start_worker_with(settings).await;
    stack
        .upload(ACCOUNT, "crash.wav", &ms_adpcm_overflowing(), "audio/wav")
        .await;
    let row = stack
        .finished_transcription("crash.wav", "wav16k", Duration::from_secs(30))
        .await;
    assert_eq!(text(&row, "status"), "failed");
    assert_eq!(row.get::<i32, _>("attempts"), 1, "not retried");
    assert_eq!(
        text(&row, "error"),
        "decoding crashed: attempt to multiply with overflow"
    );
    stack.finish().await;
}
