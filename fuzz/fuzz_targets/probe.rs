//! The audio probe: any bytes give a measurement or a clean error, never a panic or a hang
//! (libFuzzer's `-timeout` makes a slow input a finding).
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use vmpipe_worker::audio::MIN_SAMPLE_RATE;
use vmpipe_worker::audio::probe::{ProbeError, probe_file};

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile_in_shm();
    file.write_all(data).unwrap();
    match probe_file(file.path()) {
        Ok(probed) => assert!(probed.sample_rate >= MIN_SAMPLE_RATE),
        // The budget is sized for the file: running out on a small input is a loop that
        // spends without progress (the deadline is left to libFuzzer's -timeout).
        Err(ProbeError::GaveUp(why)) => panic!("out of budget on {} bytes: {why}", data.len()),
        Err(_) => {}
    }
});

struct TempFile(std::path::PathBuf, std::fs::File);

impl TempFile {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.1.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.1.flush()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tempfile_in_shm() -> TempFile {
    let dir = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
    let path = dir.join(format!("vmpipe-fuzz-probe-{}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    TempFile(path, file)
}
