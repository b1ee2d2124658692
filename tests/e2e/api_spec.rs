//! The api holds to its own OpenAPI document: the document names exactly the routes, and a
//! property-based run of schemathesis (every check: status codes, content types, headers,
//! response schemas, authentication, schema-valid input accepted and invalid input refused)
//! finds nothing, over voicemails the pipeline indexed.

use std::time::Duration;

use chrono::Utc;
use vmpipe_tests::*;

use crate::api::{messages, stack_with_api, upload_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_holds_to_its_openapi_document() {
    let schemathesis = std::env::var("VMPIPE_TEST_SCHEMATHESIS")
        .ok()
        .filter(|v| !v.is_empty())
        .expect(
            "VMPIPE_TEST_SCHEMATHESIS is not set: the OpenAPI check runs schemathesis from the \
             tests' venv (run the tests with scripts/test.sh, which makes it)",
        );
    let (stack, api) = stack_with_api(Backend::Fs).await;
    let (a, b) = (hex32(), hex32());
    upload_all(&stack, &messages(&a, &b), Utc::now()).await;

    let document = api.get(None, "/api/v1/openapi.json").await;
    assert_eq!(document.status, 200, "the document needs no token");
    let document = document.json();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let mut paths: Vec<&str> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/api/v1/voicemails",
            "/api/v1/voicemails/{id}",
            "/api/v1/voicemails/{id}/audio"
        ]
    );
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    let token = api.token("spec", Some(&[&a]));
    let reports = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(&schemathesis)
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", api.base))
        .args(["--checks", "all", "--max-examples", "60", "--seed", "19"])
        .args(["--generation-database", "none", "--workers", "2"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .arg("--report-dir")
        .arg(reports.path())
        // Its cache and reports in the test's own directory, not the checkout's.
        .current_dir(reports.path())
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_HOOKS", "")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("schemathesis finishes within 5 minutes")
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found the api and its document disagree:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("No issues found"), "{stdout}");
    api.stop().await;
    stack.finish().await;
}
