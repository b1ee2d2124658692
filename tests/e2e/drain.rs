//! Graceful restarts of ingest (issue 16, item 2): a rolling restart behind a load balancer
//! that health-checks `/readyz` must cost KAZOO no upload. KAZOO never retries an API upload,
//! so a request that fails on a kept-alive connection the server closed is a user's error.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vmpipe_common::Settings;
use vmpipe_common::settings::SecretUrl;
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";
/// Uploaders sharing one pooled, keep-alive client (as KAZOO's HTTP client pools).
const UPLOADERS: usize = 6;
const RESTARTS: usize = 4;
/// How often the load balancer asks `/readyz`.
const HEALTH_INTERVAL: Duration = Duration::from_millis(250);

/// What one upload got.
struct Outcome {
    key: String,
    /// Status and whether the answer said `Connection: close`; or the client's error.
    result: Result<(u16, bool), String>,
}

fn key(n: usize) -> String {
    format!("{ACCOUNT}/202612-{n:032x}/drain{n}.wav")
}

/// A PUT with a keep-alive head on `stream`; the response (or what went wrong).
async fn put_on(stream: &mut TcpStream, key: &str, body: &[u8]) -> Result<Response, String> {
    let head = format!(
        "PUT /{key} HTTP/1.1\r\ncontent-type: audio/wav\r\ncontent-length: {}\r\nte: \r\nhost: x\r\nconnection: keep-alive\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    stream
        .write_all(body)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(30), stream.peek(&mut first))
        .await
        .map_err(|_| "no answer in 30 s".to_owned())?
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("connection closed without an answer".into());
    }
    Ok(read_response(stream, false).await)
}

/// Rolling restarts, as a load balancer sees them: a new ingest starts, the old one gets
/// SIGTERM, and the balancer sends uploads elsewhere once the old one's `/readyz` is not 200.
/// Meanwhile a pooled keep-alive client uploads without pause, and one connection to the old
/// instance sits idle and is used again during the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restarts_fail_no_upload_and_lose_no_201() {
    let sandbox = tempfile::tempdir().unwrap();
    let queue_name = format!("vmpipe.test.{}", hex32());
    let queue = TestQueue::declare(&queue_name).await;
    let settings = Settings {
        storage_dir: sandbox.path().join("storage"),
        amqp_url: SecretUrl(amqp_url()),
        queue: queue_name,
        ..Settings::default()
    };
    let audio = Arc::new(wav_pcm16(8000, 200));
    let mut current = Service::spawn("ingest", &settings).await;
    let target = Arc::new(AtomicU16::new(current.health_port));
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let client = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(100))
        .build()
        .unwrap();
    let uploaders: Vec<_> = (0..UPLOADERS)
        .map(|_| {
            let (client, target, stop, outcomes, counter, audio) = (
                client.clone(),
                target.clone(),
                stop.clone(),
                outcomes.clone(),
                counter.clone(),
                audio.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let key = key(counter.fetch_add(1, Ordering::SeqCst));
                    let port = target.load(Ordering::SeqCst);
                    let sent = client
                        .put(format!("http://127.0.0.1:{port}/{key}"))
                        .header("content-type", "audio/wav")
                        .body(audio.to_vec())
                        .send()
                        .await;
                    let result = match sent {
                        Ok(response) => {
                            let close = response
                                .headers()
                                .get("connection")
                                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                            let status = response.status().as_u16();
                            let _ = response.bytes().await;
                            Ok((status, close))
                        }
                        Err(e) => Err(format!("{e:?}")),
                    };
                    outcomes.lock().unwrap().push(Outcome { key, result });
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();

    let mut readyz_seen = Vec::new();
    let mut idle_outcomes = Vec::new();
    for round in 0..RESTARTS {
        tokio::time::sleep(Duration::from_millis(700)).await;
        // A connection kept alive after one upload, then idle.
        let old_port = current.health_port;
        let mut idle = TcpStream::connect(("127.0.0.1", old_port)).await.unwrap();
        let first = put_on(&mut idle, &key(1_000_000 + round * 2), &audio).await;
        assert_eq!(
            first.map(|r| r.status),
            Ok(201),
            "upload before the restart"
        );

        let next = Service::spawn("ingest", &settings).await;
        let sigterm_at = Instant::now();
        let exit = tokio::spawn(current.sigterm(Duration::from_secs(60)));
        // The load balancer's health check.
        let seen = loop {
            match http_get(old_port, "/readyz").await {
                Some((200, _)) if sigterm_at.elapsed() < Duration::from_secs(20) => {
                    tokio::time::sleep(HEALTH_INTERVAL).await;
                }
                other => break other.map(|(status, _)| status),
            }
        };
        readyz_seen.push((seen, sigterm_at.elapsed()));
        target.store(next.health_port, Ordering::SeqCst);
        // The idle connection, used again during the drain.
        let again = put_on(&mut idle, &key(1_000_001 + round * 2), &audio).await;
        let told = again.map(|r| {
            let connection = r.header("connection").map(str::to_ascii_lowercase);
            (r.status, connection)
        });
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(30), idle.read_to_end(&mut rest))
            .await
            .is_ok();
        idle_outcomes.push((told, closed));
        assert!(exit.await.unwrap().success(), "ingest exits cleanly");
        current = next;
    }
    stop.store(true, Ordering::SeqCst);
    for uploader in uploaders {
        uploader.await.unwrap();
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| !matches!(o.result, Ok((201, _))))
        .collect();
    let told_to_close = outcomes
        .iter()
        .filter(|o| matches!(o.result, Ok((201, true))))
        .count();
    eprintln!(
        "drain figures: {} uploads over {RESTARTS} restarts, {} failed ({:.2}%), {told_to_close} \
         answered with Connection: close; /readyz after SIGTERM: {readyz_seen:?}; idle \
         connections used during the drain: {idle_outcomes:?}",
        outcomes.len(),
        failed.len(),
        100.0 * failed.len() as f64 / outcomes.len().max(1) as f64,
    );
    for f in failed.iter().take(5) {
        eprintln!("failed upload {}: {:?}", f.key, f.result);
    }

    for (status, after) in &readyz_seen {
        assert_eq!(*status, Some(503), "/readyz answers 503 while draining");
        assert!(
            *after < Duration::from_secs(3),
            "/readyz said 503 {after:?} after SIGTERM"
        );
    }
    for (told, closed) in &idle_outcomes {
        assert_eq!(
            told,
            &Ok((201, Some("close".to_owned()))),
            "an idle kept-alive connection used during the drain is answered, and told to close"
        );
        assert!(closed, "then the server closes it");
    }
    assert!(failed.is_empty(), "{} uploads failed", failed.len());
    assert!(
        told_to_close > 0,
        "uploads during the drain were told to close"
    );

    // No 201 lost: each file is fetchable, and has its job.
    let mut jobs = BTreeSet::new();
    while let Some((job, _)) = queue.next(Duration::from_secs(2)).await {
        jobs.insert(job.storage_key);
    }
    let kazoo = Kazoo {
        port: current.health_port,
    };
    let stored: Vec<&str> = outcomes.iter().map(|o| o.key.as_str()).collect();
    for key in stored {
        assert_eq!(kazoo.get(&format!("/{key}")).await.status, 200, "{key}");
        assert!(jobs.contains(key), "a job for {key}");
    }
    assert!(
        current.sigterm(Duration::from_secs(60)).await.success(),
        "the last ingest exits cleanly"
    );
    queue.delete().await;
}
