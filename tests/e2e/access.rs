//! Who may use ingest, seen from the operator's side: the network list a fresh install starts
//! with, a 403 whose log line names the client and the setting that admits it (once per client,
//! not once per request), and the start-up warning when nothing but that list restricts access.

use std::path::Path;

use vmpipe_common::Settings;
use vmpipe_common::settings::{Secret, SecretUrl};
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";

/// An ingest (a real process) on its own queue and storage directory, logging JSON to `log`.
async fn ingest(
    sandbox: &Path,
    queue: &str,
    log: &Path,
    tweak: impl FnOnce(&mut Settings),
) -> Service {
    let mut settings = Settings {
        listen: "127.0.0.1:0".into(),
        storage_dir: sandbox.join("storage"),
        amqp_url: SecretUrl(amqp_url()),
        queue: queue.into(),
        ..Settings::default()
    };
    tweak(&mut settings);
    Service::spawn_logging("ingest", &settings, Some(log)).await
}

/// The JSON log lines of `log` at WARN.
fn warnings(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("JSON log lines"))
        .filter(|line| line["level"] == "WARN")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_outside_the_network_list_gets_403_and_one_log_line_naming_it_and_the_setting() {
    let sandbox = tempfile::tempdir().unwrap();
    let queue = TestQueue::declare(&format!("vmpipe.test.{}", hex32())).await;
    let log = sandbox.path().join("ingest.log");
    // A list without loopback: this test's client is what a KAZOO on a public address is to a
    // real ingest.
    let service = ingest(sandbox.path(), &queue.name, &log, |s| {
        s.allow_networks = "10.0.0.0/8, fd00::/8".parse().unwrap();
    })
    .await;
    let kazoo = Kazoo {
        port: service.health_port,
    };
    // KAZOO's credentials probe, as it runs when the storage document is saved, and retries.
    for _ in 0..3 {
        let r = kazoo.store_credentials_probe(ACCOUNT).await;
        assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["error"], "forbidden");
    }
    assert_eq!(kazoo.get(&format!("/{ACCOUNT}/x/y.txt")).await.status, 403);
    assert!(
        all_files(&sandbox.path().join("storage/voicemails")).is_empty(),
        "nothing stored"
    );
    assert!(
        queue
            .next(std::time::Duration::from_secs(1))
            .await
            .is_none(),
        "no job"
    );
    service.sigterm(WAIT).await;

    let warnings = warnings(&log);
    let refusals: Vec<&serde_json::Value> = warnings
        .iter()
        .filter(|w| w["setting"] == "VMPIPE_ALLOW_NETWORKS")
        .collect();
    assert_eq!(
        refusals.len(),
        1,
        "one explanation for 4 refused requests from one client: {warnings:#?}"
    );
    let refusal = refusals[0];
    assert_eq!(refusal["client"], "127.0.0.1");
    assert_eq!(refusal["allowed"], "10.0.0.0/8,fd00::/8");
    let message = refusal["message"].as_str().unwrap();
    assert!(
        message.contains("127.0.0.1") && message.contains("VMPIPE_ALLOW_NETWORKS"),
        "{message}"
    );
    // A list the operator gave restricts access: no start-up warning about it.
    assert!(
        !warnings.iter().any(|w| w["message"]
            .as_str()
            .is_some_and(|m| m.contains("no VMPIPE_ACCESS_TOKEN"))),
        "{warnings:#?}"
    );
    queue.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_warns_when_only_the_default_network_list_restricts_access() {
    let sandbox = tempfile::tempdir().unwrap();
    let queue = TestQueue::declare(&format!("vmpipe.test.{}", hex32())).await;
    let startup_warnings = |log: &Path| -> Vec<String> {
        warnings(log)
            .iter()
            .filter(|w| w["allowed"].is_string() && w["setting"].is_null())
            .map(|w| w["message"].as_str().unwrap().to_owned())
            .collect()
    };

    // Nothing set: loopback and private networks only, and a warning saying so.
    let log = sandbox.path().join("default.log");
    let service = ingest(sandbox.path(), &queue.name, &log, |_| {}).await;
    let kazoo = Kazoo {
        port: service.health_port,
    };
    assert_eq!(
        kazoo.store_credentials_probe(ACCOUNT).await.status,
        201,
        "loopback is in the default list"
    );
    service.sigterm(WAIT).await;
    let said = startup_warnings(&log);
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains("VMPIPE_ACCESS_TOKEN") && said[0].contains("VMPIPE_ALLOW_NETWORKS"),
        "{said:?}"
    );

    // Everyone admitted, on purpose: a warning that says that.
    let log = sandbox.path().join("everyone.log");
    let service = ingest(sandbox.path(), &queue.name, &log, |s| {
        s.allow_networks = "0.0.0.0/0,::/0".parse().unwrap();
    })
    .await;
    service.sigterm(WAIT).await;
    let said = startup_warnings(&log);
    assert!(
        said.len() == 1 && said[0].contains("open to everyone"),
        "{said:?}"
    );

    // A token: no warning.
    let log = sandbox.path().join("token.log");
    let service = ingest(sandbox.path(), &queue.name, &log, |s| {
        s.access_token = Some(Secret(format!("tok{}", hex32())));
    })
    .await;
    service.sigterm(WAIT).await;
    assert_eq!(startup_warnings(&log), Vec::<String>::new());
    queue.delete().await;
}
