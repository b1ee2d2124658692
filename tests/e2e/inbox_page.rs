//! The inbox page in a real browser: Debian's headless Chromium, driven by playwright-core
//! (`tests/browser/inbox.mjs`), signs in, searches a word spoken in a voicemail the pipeline
//! indexed, opens it, plays it (the highlighted segment follows), clicks a segment (the player
//! seeks), checks the phone layout, and saves a screenshot; the page's CSP holds throughout.

use std::time::Duration;

use vmpipe_tests::*;

use crate::api::{stack_with_api, upload_spoken};

fn from_env(name: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not set: the inbox page's test needs Chromium and playwright-core \
                 (run the tests with scripts/test.sh, or eval \"$(scripts/browser-env.sh)\")"
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_page_searches_plays_and_seeks_in_a_real_browser() {
    let chromium = from_env("VMPIPE_TEST_CHROMIUM");
    let browser_dir = from_env("VMPIPE_TEST_BROWSER_DIR");
    let (stack, api) = stack_with_api(Backend::Fs).await;
    let (account, _) = upload_spoken(&stack).await;
    let token = api.token("browser", Some(&[&account]));
    let out = tempfile::tempdir().unwrap();
    let screenshot = out.path().join("inbox.png");
    let run = tokio::process::Command::new("node")
        .arg(format!("{browser_dir}/inbox.mjs"))
        .env("INBOX_URL", format!("{}/", api.base))
        .env("INBOX_TOKEN", &token)
        .env("INBOX_WORD", "invoices")
        .env("INBOX_SCREENSHOT", &screenshot)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser test finishes within 3 minutes")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the inbox page failed in the browser:\n{stdout}\n{stderr}"
    );
    for step in ["sign in", "search", "play", "seek"] {
        assert!(
            stdout.to_lowercase().contains(step),
            "no step {step:?} passed:\n{stdout}"
        );
    }
    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    if let Ok(dir) = std::env::var("VMPIPE_TEST_SCREENSHOT_DIR") {
        std::fs::copy(&screenshot, std::path::Path::new(&dir).join("inbox.png")).unwrap();
    }
    api.stop().await;
    stack.finish().await;
}
