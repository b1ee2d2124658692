//! Probe benchmark: `cargo bench -p vmpipe-worker --bench probe [-- DIR [TRUTH.tsv]]`.
//!
//! Probes every file in DIR (default: the committed fixtures), prints each file's duration and
//! its error against the recorded truth (a full decode), then files/s and MB/s. When `ffprobe`
//! is installed, does the same with `ffprobe -show_entries format=duration` on the same files
//! in the same run, and prints the throughput ratio.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vmpipe_worker::audio::probe::probe_file;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let dir = args
        .first()
        .map_or_else(|| fixtures.join("audio"), PathBuf::from);
    let truth_file = args
        .get(1)
        .map_or_else(|| fixtures.join("truth.tsv"), PathBuf::from);
    let truth = read_truth(&truth_file);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let bytes: u64 = files
        .iter()
        .map(|f| f.metadata().map_or(0, |m| m.len()))
        .sum();
    println!(
        "{} files, {:.1} MB, truth from {}",
        files.len(),
        bytes as f64 / 1e6,
        truth_file.display()
    );

    // vmpipe: repeat the whole set until at least a second has passed, for a stable rate.
    let ours: Vec<Option<u64>> = files
        .iter()
        .map(|f| probe_file(f).ok().map(|p| p.duration_ms))
        .collect();
    let started = Instant::now();
    let mut rounds = 0u32;
    while started.elapsed() < Duration::from_secs(1) || rounds == 0 {
        for file in &files {
            std::hint::black_box(probe_file(file).ok());
        }
        rounds += 1;
    }
    let ours_secs = started.elapsed().as_secs_f64() / f64::from(rounds);

    let ffprobe_available = Command::new("ffprobe").arg("-version").output().is_ok();
    let (theirs, theirs_secs) = if ffprobe_available {
        let started = Instant::now();
        let durations: Vec<Option<u64>> = files.iter().map(|f| ffprobe_duration(f)).collect();
        (Some(durations), started.elapsed().as_secs_f64())
    } else {
        (None, 0.0)
    };

    println!(
        "\n{:<34} {:>9} {:>14} {:>16}",
        "file", "truth ms", "vmpipe (err)", "ffprobe (err)"
    );
    let mut ours_right = 0;
    let mut theirs_right = 0;
    let mut judged = 0;
    for (i, file) in files.iter().enumerate() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let expected = truth.get(&name).copied().flatten();
        let cell = |value: Option<u64>, right: &mut i32| {
            let ok = match (expected, value) {
                (Some(t), Some(v)) => v.abs_diff(t) <= (t / 100).max(50),
                (None, None) => true,
                _ => false,
            };
            *right += i32::from(ok);
            match (value, expected) {
                (Some(v), Some(t)) => format!("{v} ({:+})", v as i64 - t as i64),
                (Some(v), None) => format!("{v} (!)"),
                (None, _) => "error".to_owned(),
            }
        };
        if truth.contains_key(&name) {
            judged += 1;
        }
        let ours_cell = cell(ours[i], &mut ours_right);
        let theirs_cell = theirs
            .as_ref()
            .map_or("-".to_owned(), |t| cell(t[i], &mut theirs_right));
        let expected_cell = expected.map_or("error".to_owned(), |t| t.to_string());
        println!("{name:<34} {expected_cell:>9} {ours_cell:>14} {theirs_cell:>16}");
    }
    let n = files.len() as f64;
    let mb = bytes as f64 / 1e6;
    println!(
        "\nvmpipe probe: {:.0} files/s, {:.0} MB/s; within max(50 ms, 1 %) of truth: {ours_right}/{judged}",
        n / ours_secs,
        mb / ours_secs
    );
    if theirs.is_some() {
        println!(
            "ffprobe:      {:.0} files/s, {:.0} MB/s; within max(50 ms, 1 %) of truth: {theirs_right}/{judged}",
            n / theirs_secs,
            mb / theirs_secs
        );
        println!(
            "throughput ratio vmpipe/ffprobe: {:.0}x",
            theirs_secs / ours_secs
        );
    } else {
        println!("ffprobe not installed: no comparison");
    }
}

fn read_truth(path: &Path) -> HashMap<String, Option<u64>> {
    std::fs::read_to_string(path)
        .map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let mut fields = line.split('\t');
                    Some((fields.next()?.to_owned(), fields.next()?.parse().ok()))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn ffprobe_duration(file: &Path) -> Option<u64> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(file)
        .output()
        .ok()?;
    let seconds: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some((seconds * 1000.0).round() as u64)
}
