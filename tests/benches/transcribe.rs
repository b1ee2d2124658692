//! Transcription benchmark: `scripts/bench-transcribe.sh [MODEL...]`.
//!
//! For each model, runs ingest and a worker with `VMPIPE_TRANSCRIBER=whisper` (the worker in
//! this process, its engine a child of it) on the local PostgreSQL and RabbitMQ, each with its
//! own database and queue. Every voicemail of the evaluation set (`BENCH_SET`, made by
//! `bench/transcribe/make-set.sh`) is stored through KAZOO's protocol, one at a time on an idle
//! worker, and waited for until its transcription is `done`. From the database it reads text,
//! language, run_ms, segments, the measured duration, and 201 → done (`finished_at` of the
//! transcription less `received_at` of the voicemail). The scorer (`bench/transcribe/score.py
//! wer`, run by `BENCH_PYTHON`) gives each file's WER after Whisper's English normalisation.
//!
//! Prints per file: audio seconds, run ms, × real time (audio / run), 201 → done, segments,
//! WER; totals per coding (WAV, MP3) and overall; the engine's RSS (now and peak, from /proc,
//! and the worker's `vmpipe_whisper_*` metrics when it has them); the load-once evidence (the
//! engine's pid throughout, the first voicemail's run against the same audio again at the end);
//! and the targets (WER ≤ 0.20, ≥ 3× real time, 201 → done < 15 s for the 30 s
//! voicemail) with whether each was met.
//!
//! `BENCH_COMPUTE_TYPE` sets `VMPIPE_WHISPER_COMPUTE_TYPE` (default `default`: int8 on CPU).
//! `BENCH_ONLY=ID,ID` keeps those voicemails of the set only.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use vmpipe_common::Settings;
use vmpipe_common::settings::{Transcriber, WHISPER_HOOK};
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";
/// The longest a voicemail may take from 201 to `done` before the benchmark gives up.
const PATIENCE: Duration = Duration::from_secs(900);
/// Voicemails whose 201 → done is held to the 15 s (the 30 s voicemail).
const LATENCY_TARGET_ID: &str = "voicemail30";
/// What the Whisper engine's command line carries (`worker/src/hooks/whisper/engine.rs`).
const ENGINE_MARKER: &str = "vmpipe-whisper-engine";

/// One file of the set, as `manifest.tsv` lists it.
struct Entry {
    id: String,
    coding: String,
    /// `synthesized` or `real`.
    kind: String,
    path: PathBuf,
    reference: String,
}

/// What the database says about one transcribed voicemail.
struct Outcome {
    name: String,
    entry_id: String,
    coding: String,
    kind: String,
    reference: String,
    status: String,
    text: String,
    language: Option<String>,
    run_ms: i64,
    audio_ms: i64,
    latency_ms: f64,
    segments: usize,
    /// CPU the engine spent on this voicemail (none known: 0).
    engine_cpu_ms: u64,
    wer: f64,
    errors: u64,
    words: u64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    bench_logs();
    let set = PathBuf::from(std::env::var("BENCH_SET").expect("BENCH_SET: the set's directory"));
    let python = std::env::var("BENCH_PYTHON").expect("BENCH_PYTHON: the venv's interpreter");
    let scorer = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/transcribe/score.py");
    let only: Option<Vec<String>> = std::env::var("BENCH_ONLY")
        .ok()
        .map(|ids| ids.split(',').map(str::to_owned).collect());
    let entries: Vec<Entry> = manifest(&set)
        .into_iter()
        .filter(|e| only.as_ref().is_none_or(|ids| ids.contains(&e.id)))
        .collect();
    assert!(!entries.is_empty(), "no voicemails to transcribe");
    let models: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    assert!(!models.is_empty(), "name a model (a directory or a name)");
    for model in models {
        bench_model(&model, &python, &scorer, &entries).await;
    }
}

async fn bench_model(model: &str, python: &str, scorer: &Path, entries: &[Entry]) {
    let mut stack = Stack::start(false).await;
    let health_port = free_port();
    let settings = Settings {
        transcriber: Transcriber::Whisper,
        whisper_model: model.to_owned(),
        whisper_compute_type: std::env::var("BENCH_COMPUTE_TYPE")
            .unwrap_or_else(|_| "default".into()),
        python: python.to_owned(),
        worker_listen: format!("127.0.0.1:{health_port}"),
        ..stack.worker_settings()
    };
    println!(
        "\n== model {model} (compute type {}), {} voicemails, python {python}",
        settings.whisper_compute_type,
        entries.len()
    );
    stack.start_worker_with(settings).await;

    // The first voicemail once more at the end: a second run of the same audio, which pays no
    // model load if the engine loaded it once.
    let mut uploads: Vec<(String, &Entry)> = entries
        .iter()
        .map(|e| (format!("{}.{}", e.id, e.coding), e))
        .collect();
    uploads.push((format!("again-{}", uploads[0].0), uploads[0].1));
    let mut outcomes = Vec::new();
    let mut engine_pids = Vec::new();
    let mut peak_rss = 0;
    for (name, entry) in &uploads {
        let before = engine_process();
        let audio = std::fs::read(&entry.path).expect("read the set's file");
        let content_type = match entry.coding.as_str() {
            "mp3" => "audio/mpeg",
            _ => "audio/wav",
        };
        let r = stack
            .ingest
            .client()
            .store_voicemail(ACCOUNT, name, &audio, content_type)
            .await;
        assert_eq!(r.status, 201, "store {name}");
        stack
            .finished_transcription(name, WHISPER_HOOK, PATIENCE)
            .await;
        let mut outcome = read_outcome(stack.pool(), name, entry).await;
        if let Some(engine) = engine_process() {
            peak_rss = peak_rss.max(engine.rss);
            if engine_pids.last() != Some(&engine.pid) {
                engine_pids.push(engine.pid);
            }
            outcome.engine_cpu_ms = match before {
                Some(b) if b.pid == engine.pid => engine.cpu_ms - b.cpu_ms,
                _ => engine.cpu_ms,
            };
        }
        println!(
            "  {name}: {} in {} ms (engine CPU {} ms): {}",
            outcome.status, outcome.run_ms, outcome.engine_cpu_ms, outcome.text
        );
        outcomes.push(outcome);
    }
    score(python, scorer, &mut outcomes);
    let metrics = http_get(health_port, "/metrics")
        .await
        .map(|(_, body)| body)
        .unwrap_or_default();
    let again = outcomes.pop().expect("the repeat");
    report(&outcomes, &again, &engine_pids, peak_rss, &metrics);
    stack.finish().await;
}

fn manifest(set: &Path) -> Vec<Entry> {
    let text = std::fs::read_to_string(set.join("manifest.tsv"))
        .expect("manifest.tsv (run bench/transcribe/make-set.sh)");
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.splitn(5, '\t').collect();
            assert_eq!(fields.len(), 5, "manifest line {line:?}");
            Entry {
                id: fields[0].into(),
                coding: fields[1].into(),
                kind: fields[2].into(),
                path: set.join(fields[3]),
                reference: fields[4].into(),
            }
        })
        .collect()
}

/// status, text, language, run_ms, duration_ms, 201 -> done in ms, segments.
type OutcomeRow = (
    String,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<i32>,
    f64,
    i64,
);

async fn read_outcome(pool: &sqlx::PgPool, name: &str, entry: &Entry) -> Outcome {
    let row: OutcomeRow = sqlx::query_as(
        "SELECT t.status, t.text, t.language, t.run_ms, v.duration_ms,
                    (extract(epoch FROM t.finished_at - v.received_at) * 1000)::float8,
                    coalesce(jsonb_array_length(t.segments), 0)::int8
             FROM transcriptions t JOIN voicemails v ON v.id = t.voicemail_id
             WHERE v.attachment_name = $1 AND t.hook = $2",
    )
    .bind(name)
    .bind(WHISPER_HOOK)
    .fetch_one(pool)
    .await
    .expect("read the transcription");
    Outcome {
        name: name.to_owned(),
        entry_id: entry.id.clone(),
        coding: entry.coding.clone(),
        kind: entry.kind.clone(),
        reference: entry.reference.clone(),
        status: row.0,
        text: row.1.unwrap_or_default(),
        language: row.2,
        run_ms: row.3.unwrap_or_default().into(),
        audio_ms: row.4.unwrap_or_default().into(),
        latency_ms: row.5,
        segments: usize::try_from(row.6).unwrap_or_default(),
        engine_cpu_ms: 0,
        wer: 0.0,
        errors: 0,
        words: 0,
    }
}

/// Each outcome's WER, by the scorer (`score.py wer`).
fn score(python: &str, scorer: &Path, outcomes: &mut [Outcome]) {
    let mut child = Command::new(python)
        .arg(scorer)
        .arg("wer")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the scorer");
    let mut input = String::new();
    for o in outcomes.iter() {
        let pair =
            serde_json::json!({"id": o.name, "reference": o.reference, "hypothesis": o.text});
        input += &format!("{pair}\n");
    }
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to the scorer");
    let output = child.wait_with_output().expect("the scorer's answer");
    assert!(output.status.success(), "the scorer failed");
    let scores: BTreeMap<String, serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|v| Some((v.get("id")?.as_str()?.to_owned(), v)))
        .collect();
    for o in outcomes.iter_mut() {
        let s = &scores[&o.name];
        o.wer = s["wer"].as_f64().unwrap_or(1.0);
        o.errors = s["errors"].as_u64().unwrap_or_default();
        o.words = s["words"].as_u64().unwrap_or_default();
    }
}

fn report(outcomes: &[Outcome], again: &Outcome, pids: &[u32], peak_rss: u64, metrics: &str) {
    println!(
        "\n{:<24} {:>8} {:>8} {:>7} {:>8} {:>9} {:>5} {:>4} {:>6}",
        "file", "audio s", "run ms", "x real", "cpu ms", "201->done", "segs", "lang", "WER"
    );
    for o in outcomes {
        println!(
            "{:<24} {:>8.2} {:>8} {:>7.2} {:>8} {:>7.0}ms {:>5} {:>4} {:>6.3}{}",
            o.name,
            o.audio_ms as f64 / 1000.0,
            o.run_ms,
            o.audio_ms as f64 / o.run_ms.max(1) as f64,
            o.engine_cpu_ms,
            o.latency_ms,
            o.segments,
            o.language.as_deref().unwrap_or("-"),
            o.wer,
            if o.status == "done" { "" } else { "  FAILED" }
        );
    }
    let mut groups: Vec<(String, Vec<&Outcome>)> = Vec::new();
    for coding in ["wav", "mp3"] {
        groups.push((
            coding.into(),
            outcomes.iter().filter(|o| o.coding == coding).collect(),
        ));
    }
    for kind in ["synthesized", "real"] {
        groups.push((
            kind.into(),
            outcomes.iter().filter(|o| o.kind == kind).collect(),
        ));
    }
    groups.push(("total".into(), outcomes.iter().collect()));
    let mut total = (0.0, 0.0);
    for (name, group) in &groups {
        let audio: f64 = group.iter().map(|o| o.audio_ms as f64).sum::<f64>() / 1000.0;
        let run: f64 = group.iter().map(|o| o.run_ms as f64).sum::<f64>() / 1000.0;
        let cpu: u64 = group.iter().map(|o| o.engine_cpu_ms).sum();
        let errors: u64 = group.iter().map(|o| o.errors).sum();
        let words: u64 = group.iter().map(|o| o.words).sum();
        let wer = errors as f64 / words.max(1) as f64;
        println!(
            "{name:<24} {audio:>8.2} {:>8.0} {:>7.2} {cpu:>8} {:>9} {:>5} {:>4} {wer:>6.3}  ({errors} errors in {words} words)",
            run * 1000.0,
            audio / run.max(1e-9),
            "",
            "",
            ""
        );
        total = (wer, audio / run.max(1e-9));
    }
    println!(
        "engine: pid {pids:?} throughout (one pid: one engine, the model loaded once); RSS peak seen {:.0} MiB{}",
        peak_rss as f64 / 1048576.0,
        engine_process()
            .map(|e| format!(
                ", now {:.0} MiB, high-water mark {:.0} MiB",
                e.rss as f64 / 1048576.0,
                e.peak_rss as f64 / 1048576.0
            ))
            .unwrap_or_default()
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average at the end: {} (x real is wall time; cpu ms, the engine's own, is what other load does not inflate)",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("vmpipe_whisper") && !l.contains("_bucket"))
    {
        println!("worker metric: {line}");
    }
    let first = &outcomes[0];
    println!(
        "load once: the first voicemail ({}) ran {} ms (201->done {:.0} ms); the same audio again at the end ran {} ms (201->done {:.0} ms)",
        first.name, first.run_ms, first.latency_ms, again.run_ms, again.latency_ms
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "target WER <= 0.20: {:.3} {}",
        total.0,
        verdict(total.0 <= 0.20)
    );
    println!(
        "target >= 3x real time: {:.2}x {}",
        total.1,
        verdict(total.1 >= 3.0)
    );
    for o in outcomes.iter().filter(|o| o.entry_id == LATENCY_TARGET_ID) {
        println!(
            "target 201->done < 15 s for the {:.0} s voicemail ({}): {:.1} s {}",
            o.audio_ms as f64 / 1000.0,
            o.name,
            o.latency_ms / 1000.0,
            verdict(o.latency_ms < 15_000.0)
        );
    }
}

/// The Whisper engine as /proc shows it.
#[derive(Clone, Copy)]
struct Engine {
    pid: u32,
    rss: u64,
    peak_rss: u64,
    /// utime + stime, in ms.
    cpu_ms: u64,
}

/// The Whisper engine among this process's descendants: the process whose command line has
/// the engine's marker.
fn engine_process() -> Option<Engine> {
    let me = std::process::id();
    let stats: Vec<(u32, u32, u64)> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // After the name: state, ppid, ..., utime (field 14 of the line), stime (15).
            let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
            let ticks =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some((pid, fields.get(1)?.parse().ok()?, ticks))
        })
        .collect();
    let descends = |mut pid: u32| {
        for _ in 0..16 {
            let Some(&(_, parent, _)) = stats.iter().find(|(p, _, _)| *p == pid) else {
                return false;
            };
            if parent == me {
                return true;
            }
            pid = parent;
        }
        false
    };
    stats
        .iter()
        .filter(|&&(pid, _, _)| pid != me && descends(pid))
        .filter(|(pid, _, _)| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(ENGINE_MARKER))
        })
        .filter_map(|&(pid, _, ticks)| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let kib = |key: &str| -> Option<u64> {
                let line = status.lines().find(|l| l.starts_with(key))?;
                line.split_whitespace().nth(1)?.parse().ok()
            };
            Some(Engine {
                pid,
                rss: kib("VmRSS:")? * 1024,
                peak_rss: kib("VmHWM:")? * 1024,
                // /proc counts in USER_HZ, which is 100 on Linux.
                cpu_ms: ticks * 10,
            })
        })
        .max_by_key(|engine| engine.rss)
}
