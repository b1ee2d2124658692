//! `/metrics` tells whoever asks how much is stored and what fails: it is for the operator only.

use vmpipe_common::settings::Secret;
use vmpipe_tests::*;

use super::{TOKEN, assert_kazoo_round_trip};

async fn status(port: u16, path: &str) -> u16 {
    http_get(port, path).await.expect("answers").0
}

/// With an allow-list or a token, `/metrics` on `VMPIPE_LISTEN` is checked like an upload (it
/// used to be served to anyone); with `VMPIPE_METRICS_LISTEN` it is served only there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_not_served_to_strangers() {
    // Not in the allowed networks: 403, even with the token.
    let elsewhere = TestIngest::start(Options {
        tweak: Some(Box::new(|s| {
            s.access_token = Some(Secret(TOKEN.into()));
            s.allow_networks = "10.0.0.0/8".parse().unwrap();
        })),
        ..Options::default()
    })
    .await;
    for path in ["/metrics", &format!("/metrics?token={TOKEN}")] {
        assert_eq!(status(elsewhere.port, path).await, 403, "{path}");
    }
    // Health stays open to orchestrators.
    assert_eq!(status(elsewhere.port, "/healthz").await, 200);
    assert_eq!(status(elsewhere.port, "/readyz").await, 200);
    elsewhere.stop().await;

    // Token required: given as the `token` query parameter (Prometheus `params`).
    let tokened = TestIngest::start(Options {
        tweak: Some(Box::new(|s| s.access_token = Some(Secret(TOKEN.into())))),
        ..Options::default()
    })
    .await;
    // Something to count first (an empty registry renders as nothing).
    assert_kazoo_round_trip(tokened.client(), &format!("/{TOKEN}")).await;
    let (code, body) = http_get(tokened.port, "/metrics").await.unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("\"error\":\"forbidden\""), "{body}");
    assert_eq!(status(tokened.port, "/metrics?token=wrong").await, 403);
    let (code, body) = http_get(tokened.port, &format!("/metrics?token={TOKEN}"))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("# TYPE"), "Prometheus text: {body}");
    tokened.stop().await;

    // A separate metrics address: served there without checks, not on VMPIPE_LISTEN at all.
    let metrics_port = free_port();
    let separate = TestIngest::start(Options {
        tweak: Some(Box::new(move |s| {
            s.access_token = Some(Secret(TOKEN.into()));
            s.metrics_listen = Some(format!("127.0.0.1:{metrics_port}"));
        })),
        ..Options::default()
    })
    .await;
    assert_kazoo_round_trip(separate.client(), &format!("/{TOKEN}")).await;
    assert_eq!(
        status(separate.port, &format!("/metrics?token={TOKEN}")).await,
        404
    );
    let (code, body) = http_get(metrics_port, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("# TYPE"), "{body}");
    assert_eq!(status(metrics_port, "/anything").await, 404);
    separate.stop().await;
}
