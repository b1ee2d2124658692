//! The fuzz targets' checks in the ordinary test run, on a few thousand mutated fixtures (a
//! fixed seed, so a failure repeats): the probe and the decoder end, within their budgets and
//! their bounds, without a panic. `fuzz/` goes much further, by hand.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::decode::{self, DecodeError, Limits, OUTPUT_PER_INPUT_BYTE};
use super::probe::{self, ProbeError};

/// xorshift32: reproducible without a dependency.
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        self.next() as usize % n.max(1)
    }
}

/// What a hostile sender would splice in: sync words, tag markers, chunk headers, sizes.
const SPLICES: [&[u8]; 9] = [
    b"\xFF\xFB\x90\x00",
    b"\xFF\xF3\x00\xC0",
    b"APETAGEX\xD0\x07\0\0\0\0\0\0",
    b"TAG",
    b"ID3\x04\0\0\x7F\x7F\x7F\x7F",
    b"000000LYRICS200",
    b"data\xFF\xFF\xFF\xFF",
    b"fmt \x10\0\0\0\x11\0\x01\0\x01\0\0\0",
    b"\0\0\0\0",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..=rng.below(8) {
        let at = rng.below(data.len() + 1);
        match rng.below(6) {
            0 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] = rng.next() as u8;
            }
            2 => {
                let splice = SPLICES[rng.below(SPLICES.len())];
                data.splice(
                    at..(at + splice.len()).min(data.len()),
                    splice.iter().copied(),
                );
            }
            3 => data.truncate(at),
            4 => {
                let from = rng.below(data.len());
                let piece = data[from..(from + rng.below(512)).min(data.len())].to_vec();
                data.splice(at..at, piece);
            }
            _ => data.extend_from_slice(SPLICES[rng.below(SPLICES.len())]),
        }
    }
    data
}

/// The first 8 KB of every fixture (the start of a file is where the parsing is).
fn seeds() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/audio");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let mut bytes = std::fs::read(path).unwrap();
            bytes.truncate(8192);
            bytes
        })
        .collect()
}

/// Runs `check` on mutated seeds until `count` inputs or `budget` of time; each input must be
/// done within `each`. Returns how many ran.
fn mutated_inputs(
    count: usize,
    budget: Duration,
    each: Duration,
    check: impl Fn(&Path, &[u8]),
) -> usize {
    let seeds = seeds();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input");
    let mut rng = Rng(0x5EED_1234);
    let started = Instant::now();
    let mut ran = 0;
    while ran < count && started.elapsed() < budget {
        let seed = &seeds[rng.below(seeds.len())];
        let data = mutate(&mut rng, seed);
        std::fs::write(&path, &data).unwrap();
        let one = Instant::now();
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&path, &data)));
        if let Err(panic) = outcome {
            let kept = std::env::temp_dir().join(format!("vmpipe-mutation-{ran}"));
            std::fs::write(&kept, &data).unwrap();
            panic!(
                "input {ran} (kept in {}): {}",
                kept.display(),
                crate::error::panic_text(&panic)
            );
        }
        assert!(one.elapsed() < each, "input {ran} took {:?}", one.elapsed());
        ran += 1;
    }
    ran
}

#[test]
fn the_probe_ends_within_its_budget_on_mutated_fixtures() {
    let ran = mutated_inputs(
        5000,
        Duration::from_secs(30),
        Duration::from_secs(2),
        |path, data| match probe::probe_file(path) {
            Ok(probed) => assert!(probed.sample_rate >= super::MIN_SAMPLE_RATE),
            Err(ProbeError::GaveUp(why)) => panic!("out of budget on {} bytes: {why}", data.len()),
            Err(_) => {}
        },
    );
    eprintln!("probe: {ran} mutated inputs");
    assert!(ran >= 1000, "{ran} inputs");
}

#[test]
fn the_decoder_ends_within_its_bounds_on_mutated_fixtures() {
    let ran = mutated_inputs(
        1000,
        Duration::from_secs(30),
        Duration::from_secs(5),
        |path, data| {
            let output = path.with_extension("wav");
            let _ = std::fs::remove_file(&output);
            let result = decode::write_wav16k_within(path, &output, &Limits::new(60, None));
            let written = std::fs::metadata(&output).map_or(0, |m| m.len());
            let bound = 44 + (2 * 16_000 * 60).min(OUTPUT_PER_INPUT_BYTE * data.len() as u64);
            assert!(written <= bound, "{written} bytes written, bound {bound}");
            match result {
                Ok(decoded) => assert_eq!(written, 44 + 2 * decoded.frames),
                Err(DecodeError::GaveUp(why)) => {
                    panic!("out of budget on {} bytes: {why}", data.len())
                }
                Err(_) => {}
            }
        },
    );
    eprintln!("decoder: {ran} mutated inputs");
    assert!(ran >= 100, "{ran} inputs");
}
