//! Clients that hold connections or upload slots: a keep-alive connection that starts another
//! request and stops, and a body that trickles in for ever.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vmpipe_tests::*;

use super::{KEY, assert_kazoo_round_trip, assert_nothing_outside, error_code, put};

/// ingest's head timeout (README: "Headers not complete within 5 s").
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: keep-alive\r\n\r\n";

/// Waits for the server to close `stream`: what it said last (a 408, or nothing), and when.
async fn closed_by_server(mut stream: TcpStream, limit: Duration) -> Result<Vec<u8>, String> {
    let mut said = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut chunk)).await {
            Err(_) => return Err(format!("still open after {limit:?}")),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(said),
            Ok(Ok(n)) => said.extend_from_slice(&chunk[..n]),
        }
    }
}

/// What the server says when it closes a head that is not complete: a 408 with a JSON body.
fn assert_head_timeout_answer(said: &[u8]) {
    let text = String::from_utf8_lossy(said);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("application/json") && text.contains("\"error\""),
        "{text}"
    );
}

/// After one complete request, a keep-alive connection that sends one byte of the next (or
/// trickles a head a byte a second) is closed within the head timeout, like the first request
/// of a connection. 3,000 such connections used to be held for minutes, and KAZOO's uploads
/// then timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_on_a_keep_alive_connection_has_a_head_deadline() {
    let ingest = TestIngest::start(Options::default()).await;
    let port = ingest.port;
    let mut idle = Vec::new();
    for i in 0..60 {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        if i % 2 == 0 {
            stream.write_all(HEALTHZ).await.unwrap();
            assert_eq!(read_response(&mut stream, false).await.status, 200);
            stream.write_all(b"G").await.unwrap();
        } else {
            // Pipelined: the byte of the next request comes with the first.
            stream.write_all(&[HEALTHZ, b"G"].concat()).await.unwrap();
            assert_eq!(read_response(&mut stream, false).await.status, 200);
        }
        idle.push(stream);
    }
    // A second head that trickles in, a byte a second: never silent, never complete.
    let mut trickling = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    trickling.write_all(HEALTHZ).await.unwrap();
    assert_eq!(read_response(&mut trickling, false).await.status, 200);
    let (mut reader, mut writer) = trickling.into_split();
    let trickle = tokio::spawn(async move {
        for byte in b"GET /healthz HTTP/1.1\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaa" {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let started = Instant::now();
    let limit = HEAD_TIMEOUT + Duration::from_secs(5);
    let results = futures_join(idle.into_iter().map(|s| closed_by_server(s, limit))).await;
    for (i, result) in results.into_iter().enumerate() {
        let said = result.unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_head_timeout_answer(&said);
    }
    let mut said = Vec::new();
    let trickled = tokio::time::timeout(limit, reader.read_to_end(&mut said)).await;
    assert!(
        trickled.is_ok(),
        "the trickling head is still open after {limit:?}"
    );
    // (Its next byte may reset the connection before the 408 is read.)
    if !said.is_empty() {
        assert_head_timeout_answer(&said);
    }
    trickle.abort();
    assert!(
        started.elapsed() < limit,
        "closed after {:?}",
        started.elapsed()
    );

    // A KAZOO connection that stays idle between requests (its pool keeps them 120 s) is not
    // cut: only a started head is timed.
    let mut pooled = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    pooled.write_all(HEALTHZ).await.unwrap();
    assert_eq!(read_response(&mut pooled, false).await.status, 200);
    tokio::time::sleep(HEAD_TIMEOUT + Duration::from_secs(1)).await;
    pooled.write_all(HEALTHZ).await.unwrap();
    assert_eq!(
        read_response(&mut pooled, false).await.status,
        200,
        "idle, not cut"
    );
    assert_kazoo_round_trip(ingest.client(), "").await;
    ingest.stop().await;
}

/// Runs `futures` at once; their outputs in order.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("join"));
    }
    out
}

/// A body that arrives a byte every half second is never silent for `VMPIPE_BODY_TIMEOUT_SECS`,
/// but it is cut at `VMPIPE_UPLOAD_DEADLINE_SECS` with a 408, and frees its upload slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_is_cut_at_the_upload_deadline() {
    let deadline = Duration::from_secs(3);
    let ingest = TestIngest::start(Options {
        tweak: Some(Box::new(move |s| {
            s.body_timeout_secs = 30;
            s.upload_deadline_secs = deadline.as_secs();
            s.max_uploads = 1;
        })),
        ..Options::default()
    })
    .await;
    let kazoo = ingest.client();
    let stream = TcpStream::connect(("127.0.0.1", ingest.port))
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let (head, _) = put(&format!("/{KEY}"), "", &[0u8; 100_000]);
    writer.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        loop {
            if writer.write_all(&[0u8; 1]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    // It holds the only upload slot meanwhile (KAZOO gets 503 and retries).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (busy_head, busy_body) = put("/a/b/busy.mp3", "", b"x");
    assert_eq!(kazoo.send(&busy_head, &busy_body).await.status, 503);
    let r = tokio::time::timeout(deadline + Duration::from_secs(10), async {
        read_response_from(&mut reader, false).await
    })
    .await
    .expect("the trickling body is still being received: no whole-body deadline");
    trickle.abort();
    assert_eq!(r.status, 408, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(error_code(&r), "body_deadline");
    assert!(started.elapsed() >= deadline, "{:?}", started.elapsed());
    assert!(all_files(&ingest.storage_dir().join("voicemails")).is_empty());
    assert_eq!(ingest.temp_files(), 0, "nothing left behind");
    assert_nothing_outside(&ingest);
    assert_eq!(
        kazoo.send(&busy_head, &busy_body).await.status,
        201,
        "slot free again"
    );
    assert_kazoo_round_trip(kazoo, "").await;
    ingest.stop().await;
}
