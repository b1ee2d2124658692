//! `worker prune` with the real binary: a wrong storage directory deletes nothing, a row whose
//! file is missing stays unless asked, and the directories prune empties go with their files.

use std::path::Path;

use vmpipe_tests::*;

use crate::scripting::worker;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";
const OTHER: &str = "9f0e1d2c3b4a59687766554433221100";

/// A stack with `names` stored (as `{account}/doc-{name}/{name}`), indexed, and all but
/// `recent` received 100 days ago.
async fn stored(names: &[(&str, &str)], recent: &[&str]) -> Stack {
    let stack = Stack::start(true).await;
    let audio = wav_pcm16(8000, 300);
    for (account, name) in names {
        stack
            .put_wav(&format!("/{account}/doc-{name}/{name}"), name, &audio)
            .await;
    }
    let count = names.len() as i64;
    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", count, WAIT).await;
    let recent: Vec<String> = recent.iter().map(|s| s.to_string()).collect();
    sqlx::query(
        "UPDATE voicemails SET received_at = now() - interval '100 days'
         WHERE attachment_name <> ALL($1)",
    )
    .bind(&recent)
    .execute(stack.pool())
    .await
    .unwrap();
    stack
}

async fn rows(stack: &Stack) -> Vec<String> {
    sqlx::query_scalar("SELECT attachment_name FROM voicemails ORDER BY attachment_name")
        .fetch_all(stack.pool())
        .await
        .unwrap()
}

fn report(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is the JSON report ({e}): {output:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_with_a_wrong_storage_dir_refuses_and_deletes_nothing() {
    let names = [(ACCOUNT, "a.wav"), (ACCOUNT, "b.wav"), (OTHER, "c.wav")];
    let stack = stored(&names, &[]).await;
    let before = rows(&stack).await;
    assert_eq!(before.len(), 3);
    let prune = ["prune", "--older-than", "90d", "--apply", "--pause-ms", "0"];

    // An absolute directory that holds no voicemails (a forgotten volume, say).
    let empty = tempfile::tempdir().unwrap();
    let mut settings = stack.worker_settings();
    settings.storage_dir = empty.path().to_path_buf();
    for extra in [&[][..], &["--include-missing-files"][..]] {
        let args: Vec<&str> = prune.iter().chain(extra).copied().collect();
        let output = worker(&settings, &args).output().expect("worker runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "prune refused: {output:?}");
        assert!(stderr.contains("storage looks wrong"), "says why: {stderr}");
        assert_eq!(rows(&stack).await, before, "nothing deleted ({args:?})");
    }
    assert!(
        !empty.path().join("voicemails").exists(),
        "prune made nothing in the wrong directory"
    );

    // The relative default (`./data`), run from another directory.
    let elsewhere = tempfile::tempdir().unwrap();
    settings.storage_dir = "./data".into();
    let output = worker(&settings, &prune)
        .current_dir(elsewhere.path())
        .output()
        .expect("worker runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "prune refused: {output:?}");
    assert!(stderr.contains("relative"), "says why: {stderr}");
    assert_eq!(rows(&stack).await, before, "nothing deleted (relative)");

    // The right directory: all three go.
    let output = worker(&stack.worker_settings(), &prune)
        .output()
        .expect("worker runs");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(report(&output)["voicemails"], 3, "{output:?}");
    assert!(rows(&stack).await.is_empty());
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_a_row_whose_file_is_missing_unless_asked_and_removes_emptied_directories() {
    let names = [
        (ACCOUNT, "gone.wav"),
        (ACCOUNT, "old.wav"),
        (ACCOUNT, "new.wav"),
        (ACCOUNT, "old2.wav"),
        (OTHER, "alone.wav"),
    ];
    let stack = stored(&names, &["new.wav"]).await;
    let root = stack.ingest.storage_dir().join("voicemails");
    let gone = root.join(format!("{ACCOUNT}/doc-gone.wav/gone.wav"));
    std::fs::remove_file(&gone).unwrap();
    let settings = stack.worker_settings();
    let args = ["prune", "--older-than", "90d", "--apply", "--pause-ms", "0"];

    let output = worker(&settings, &args).output().expect("worker runs");
    assert!(output.status.success(), "{output:?}");
    let done = report(&output);
    assert_eq!(done["voicemails"], 3, "{done}");
    assert_eq!(done["rows_without_file_kept"], 1, "{done}");
    assert_eq!(
        rows(&stack).await,
        ["gone.wav", "new.wav"],
        "the row of the missing file stays"
    );
    let dir = |relative: &str| root.join(relative);
    assert!(!dir(&format!("{ACCOUNT}/doc-old.wav")).exists());
    assert!(!dir(&format!("{ACCOUNT}/doc-old2.wav")).exists());
    assert!(!dir(OTHER).exists(), "an account emptied by prune goes too");
    assert!(dir(&format!("{ACCOUNT}/doc-new.wav/new.wav")).is_file());
    assert!(root.is_dir(), "never the storage root");

    // What is left to prune is only rows without a file: that looks like a wrong directory,
    // unless the operator says otherwise.
    let mut with = args.to_vec();
    with.push("--include-missing-files");
    let output = worker(&settings, &with).output().expect("worker runs");
    assert!(!output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--force"));
    assert_eq!(rows(&stack).await, ["gone.wav", "new.wav"]);
    with.push("--force");
    let output = worker(&settings, &with).output().expect("worker runs");
    assert!(output.status.success(), "{output:?}");
    let done = report(&output);
    assert_eq!(done["voicemails"], 1, "{done}");
    assert_eq!(done["files_already_gone"], 1, "{done}");
    assert_eq!(rows(&stack).await, ["new.wav"]);
    assert!(!dir(&format!("{ACCOUNT}/doc-gone.wav")).exists());
    assert!(dir(ACCOUNT).is_dir(), "still holds new.wav");
    assert_dirs_left(&root, &[ACCOUNT, &format!("{ACCOUNT}/doc-new.wav")]);
    stack.finish().await;
}

/// The directories below `root` are exactly `expected`.
fn assert_dirs_left(root: &Path, expected: &[&str]) {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                let path = entry.path();
                found.push(path.strip_prefix(root).unwrap().display().to_string());
                stack.push(path);
            }
        }
    }
    found.sort();
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(found, expected);
}
