//! The wav16k decoder: any bytes give a 16 kHz WAV within its bounds or a clean error, never a
//! panic or a hang (libFuzzer's `-timeout` makes a slow input a finding). The work budget is
//! sized for a file of the input's size: running out of it on a small input is a finding too
//! (a loop that spends without progress), not an answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmpipe_worker::audio::decode::{DecodeError, Limits, OUTPUT_PER_INPUT_BYTE, write_wav16k_within};

/// Longest output: a minute (the input-size bound is far lower for libFuzzer's inputs).
const MAX_SECS: u64 = 60;

fuzz_target!(|data: &[u8]| {
    let dir = scratch_dir();
    let input = dir.join(format!("vmpipe-fuzz-decode-in-{}", std::process::id()));
    let output = dir.join(format!("vmpipe-fuzz-decode-out-{}.wav", std::process::id()));
    std::fs::write(&input, data).unwrap();
    let _ = std::fs::remove_file(&output);
    let result = write_wav16k_within(&input, &output, &Limits::new(MAX_SECS, None));
    let written = std::fs::metadata(&output).map_or(0, |m| m.len());
    let bound = 44 + (2 * 16_000 * MAX_SECS).min(OUTPUT_PER_INPUT_BYTE * data.len() as u64);
    assert!(written <= bound, "{written} bytes written, bound {bound}");
    match result {
        Ok(decoded) => assert_eq!(written, 44 + 2 * decoded.frames),
        Err(DecodeError::GaveUp(why)) => panic!("out of budget on {} bytes: {why}", data.len()),
        Err(_) => {}
    }
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&output);
});

fn scratch_dir() -> std::path::PathBuf {
    if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm".into()
    } else {
        std::env::temp_dir()
    }
}
