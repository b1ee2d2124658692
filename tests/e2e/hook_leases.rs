//! Hook runs and a worker that dies (issue 16, item 1): a SIGKILLed worker takes its hook
//! programs with it, grandchildren included; its restart runs them again at once, another
//! worker within the lease (15 s); each voicemail's hook completes exactly once, and every
//! start is a counted attempt with its own attempt id.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::Row;
use vmpipe_common::settings::{HookAudio, HookSettings};
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";

/// A hook that records each start (`starts`: voicemail id, attempt id, pid) and, while the file
/// `slow` exists, starts a grandchild (`children`: its pid and the hook's) and waits for it;
/// then records its completion (`done`) and prints a transcript.
fn recording_hook(dir: &Path) -> HookSettings {
    let d = dir.display();
    HookSettings {
        max_attempts: 10,
        timeout_secs: 600,
        ..shell_hook(
            "recorder",
            HookAudio::Original,
            &format!(
                "echo \"$VMPIPE_VOICEMAIL_ID $VMPIPE_HOOK_ATTEMPT_ID $$\" >> {d}/starts; \
                 if [ -e {d}/slow ]; then sleep 600 & echo \"$! $$\" >> {d}/children; wait; fi; \
                 echo \"$VMPIPE_VOICEMAIL_ID\" >> {d}/done; echo transcript"
            ),
        )
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every pid in `children` (the hooks and their grandchildren).
fn hook_pids(dir: &Path) -> Vec<u32> {
    lines(&dir.join("children"))
        .iter()
        .flat_map(|line| line.split_whitespace().map(|pid| pid.parse().unwrap()))
        .collect()
}

async fn wait_for_lines(path: &Path, n: usize, timeout: Duration) -> Duration {
    let started = Instant::now();
    while lines(path).len() < n {
        assert!(
            started.elapsed() < timeout,
            "{} has {} lines, not {n}, after {timeout:?}",
            path.display(),
            lines(path).len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// How long until none of `pids` runs (at most `timeout`); the ones still running.
async fn wait_gone(pids: &[u32], timeout: Duration) -> (Duration, Vec<u32>) {
    let started = Instant::now();
    loop {
        let alive: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| process_running(*p))
            .collect();
        if alive.is_empty() || started.elapsed() > timeout {
            return (started.elapsed(), alive);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn start_worker(stack: &mut Stack, config: &Path, id: &str) -> Service {
    let env = [
        ("VMPIPE_CONFIG", config.display().to_string()),
        ("VMPIPE_WORKER_ID", id.to_owned()),
    ];
    let worker = Service::spawn_with_env("worker", &stack.worker_settings(), &env, None).await;
    stack.wait_for_schema().await;
    worker
}

/// Checks, once every run is done: each voicemail's hook completed exactly once, each start was
/// an attempt of its own (its own attempt id, counted in `attempts`).
async fn assert_each_completed_once(stack: &Stack, dir: &Path, names: &[&str]) {
    for name in names {
        stack
            .finished_transcription(name, "recorder", Duration::from_secs(60))
            .await;
    }
    let starts = lines(&dir.join("starts"));
    let attempt_ids: std::collections::HashSet<&str> = starts
        .iter()
        .map(|line| line.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(attempt_ids.len(), starts.len(), "one attempt id per start");
    let mut done: BTreeMap<String, usize> = BTreeMap::new();
    for id in lines(&dir.join("done")) {
        *done.entry(id).or_default() += 1;
    }
    for name in names {
        let row = stack
            .finished_transcription(name, "recorder", Duration::from_secs(60))
            .await;
        let id: uuid::Uuid = row.get("voicemail_id");
        assert_eq!(row.get::<String, _>("status"), "done", "{name}");
        assert_eq!(
            row.get::<Option<String>, _>("text").as_deref(),
            Some("transcript")
        );
        let started = starts
            .iter()
            .filter(|line| line.starts_with(&id.to_string()))
            .count();
        assert_eq!(
            row.get::<i32, _>("attempts") as usize,
            started,
            "{name}: every start is a counted attempt"
        );
        assert_eq!(
            done.get(&id.to_string()),
            Some(&1),
            "{name} completed once: {done:?}"
        );
        assert!(
            row.get::<Option<String>, _>("leased_by").is_none(),
            "no lease left"
        );
    }
}

/// Three times: a worker runs two hooks, each with a grandchild, and is SIGKILLed; the hooks
/// and the grandchildren are gone at once; the restarted worker (same `VMPIPE_WORKER_ID`) hands
/// the runs back at start and runs them again without waiting for a lease. Each voicemail's
/// hook completes exactly once in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_takes_its_hooks_along_and_its_restart_runs_them_again() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let config = hooks_file(dir, &[recording_hook(dir)]);
    std::fs::write(dir.join("slow"), "").unwrap();
    let mut stack = Stack::start(false).await;
    let names = ["kill-a.wav", "kill-b.wav"];
    for name in names {
        stack.upload_wav(ACCOUNT, name).await;
    }
    let id = format!("restarting-{}", hex32());
    let kills = 3;
    for round in 0..kills {
        let before = lines(&dir.join("children")).len();
        let spawned = Instant::now();
        let worker = start_worker(&mut stack, &config, &id).await;
        // Both runs (VMPIPE_HOOK_CONCURRENCY 2) under way, grandchildren started.
        wait_for_lines(&dir.join("children"), before + 2, Duration::from_secs(60)).await;
        let rerun = spawned.elapsed();
        if round > 0 {
            eprintln!(
                "round {round}: the restarted worker ran both hooks again {rerun:?} after its start"
            );
            // Handed back once they have missed two heartbeats (6 s), well before the 15 s
            // lease would expire.
            assert!(
                rerun < Duration::from_secs(14),
                "a restart runs its previous runs again once their heartbeats stop, not after a lease: {rerun:?}"
            );
        }
        worker.sigkill().await;
        let pids = hook_pids(dir);
        let (took, alive) = wait_gone(&pids, Duration::from_secs(5)).await;
        eprintln!(
            "round {round}: hooks and grandchildren gone {took:?} after the worker's SIGKILL"
        );
        assert!(
            alive.is_empty(),
            "hook processes outlived the worker: {alive:?}"
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    std::fs::remove_file(dir.join("slow")).unwrap();
    let worker = start_worker(&mut stack, &config, &id).await;
    assert_each_completed_once(&stack, dir, &names).await;
    let starts = lines(&dir.join("starts")).len();
    assert_eq!(starts, 2 * (kills + 1), "two runs per worker life");
    let _ = worker.sigterm(Duration::from_secs(20)).await;
    stack.finish().await;
}

/// A worker that dies and does not come back: another worker takes its run over once the lease
/// (15 s without a heartbeat) expires, not after the hook's timeout (600 s) plus a margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_worker_takes_a_dead_worker_s_run_over_within_the_lease() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let config = hooks_file(dir, &[recording_hook(dir)]);
    std::fs::write(dir.join("slow"), "").unwrap();
    let mut stack = Stack::start(false).await;
    stack.upload_wav(ACCOUNT, "takeover.wav").await;
    let first = start_worker(&mut stack, &config, &format!("first-{}", hex32())).await;
    wait_for_lines(&dir.join("children"), 1, Duration::from_secs(60)).await;
    // The heartbeat renews the lease (15 s) while the run goes on: 7 s later, more than 10 s
    // are left.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let lease: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM next_attempt_at - now())::float8 FROM transcriptions",
    )
    .fetch_one(stack.pool())
    .await
    .unwrap();
    assert!(lease > 10.0, "renewed: {lease} s left");
    first.sigkill().await;
    let killed = Instant::now();
    let (_, alive) = wait_gone(&hook_pids(dir), Duration::from_secs(5)).await;
    assert!(
        alive.is_empty(),
        "hook processes outlived the worker: {alive:?}"
    );
    std::fs::remove_file(dir.join("slow")).unwrap();
    let second = start_worker(&mut stack, &config, &format!("second-{}", hex32())).await;
    wait_for_lines(&dir.join("starts"), 2, Duration::from_secs(120)).await;
    let takeover = killed.elapsed();
    eprintln!("another worker took the run over {takeover:?} after the first one's SIGKILL");
    assert!(
        takeover < Duration::from_secs(30),
        "taken over within the lease: {takeover:?}"
    );
    assert_each_completed_once(&stack, dir, &["takeover.wav"]).await;
    let _ = second.sigterm(Duration::from_secs(20)).await;
    stack.finish().await;
}
