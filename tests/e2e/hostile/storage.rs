//! Hostile contents: symlinks planted in the storage tree, and KAZOO documents far larger (or
//! deeper) than a KAZOO document ever is.

use std::path::Path;

use tokio::io::AsyncWriteExt;
use vmpipe_tests::*;

use super::{assert_kazoo_round_trip, assert_nothing_outside};

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";

fn raw_put(path: &str, body: &[u8]) -> String {
    format!(
        "PUT {path} HTTP/1.1\r\ncontent-type: audio/mpeg\r\ncontent-length: {}\r\nte: \r\nhost: x\r\nconnection: keep-alive\r\n\r\n",
        body.len()
    )
}

/// Every file below `dir`, with its contents.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    all_files(dir)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(dir.join(&p)).unwrap();
            (p, bytes)
        })
        .collect()
}

/// A symlink planted below `voicemails/` (to a directory or a file outside the storage root)
/// is never written through, and never read through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_under_voicemails_is_never_followed() {
    let ingest = TestIngest::start(Options::default()).await;
    let kazoo = ingest.client();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir(outside.path().join("doc")).unwrap();
    std::fs::write(outside.path().join("doc/victim.mp3"), b"precious").unwrap();
    std::fs::write(outside.path().join("secret.txt"), b"secret").unwrap();
    let before = snapshot(outside.path());
    let voicemails = ingest.storage_dir().join("voicemails");
    // An account directory that is a link, a document directory that is a link, and a file
    // that is a link.
    std::os::unix::fs::symlink(outside.path(), voicemails.join("linked-account")).unwrap();
    std::fs::create_dir_all(voicemails.join(ACCOUNT)).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("doc"),
        voicemails.join(ACCOUNT).join("doc"),
    )
    .unwrap();
    std::fs::create_dir_all(voicemails.join(ACCOUNT).join("real")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        voicemails.join(ACCOUNT).join("real/secret.txt"),
    )
    .unwrap();

    for path in [
        "/linked-account/doc/victim.mp3",
        "/linked-account/new/x.mp3",
        &format!("/{ACCOUNT}/doc/victim.mp3"),
        &format!("/{ACCOUNT}/doc/new.mp3"),
    ] {
        let r = kazoo
            .send(&raw_put(path, b"overwritten"), b"overwritten")
            .await;
        assert!(
            r.status >= 400 && r.header("content-type").is_some_and(|t| t.contains("json")),
            "PUT {path}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            snapshot(outside.path()),
            before,
            "PUT {path} wrote outside the root"
        );
    }
    for path in [
        "/linked-account/secret.txt".to_owned(),
        "/linked-account/doc/victim.mp3".to_owned(),
        format!("/{ACCOUNT}/doc/victim.mp3"),
        format!("/{ACCOUNT}/real/secret.txt"),
    ] {
        let r = kazoo.get(&path).await;
        assert_eq!(
            r.status,
            404,
            "GET {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // Storing over a link replaces the link itself, never its target.
    let path = format!("/{ACCOUNT}/real/secret.txt");
    let r = kazoo.send(&raw_put(&path, b"mine"), b"mine").await;
    assert_eq!(r.status, 201);
    assert_eq!(kazoo.get(&path).await.body, b"mine");
    assert_eq!(snapshot(outside.path()), before);
    assert_nothing_outside(&ingest);
    assert_kazoo_round_trip(kazoo, "").await;
    ingest.stop().await;
}

/// KAZOO's multipart upload of `audio` with `document` as its JSON part.
fn multipart(document: &serde_json::Value, audio: &[u8]) -> (String, Vec<u8>, String) {
    let document_id = format!("202611-{}", hex32());
    let name = format!("{}.mp3", hex32());
    let att = Attachment {
        document_id: &document_id,
        name: &name,
        content_type: "audio/mpeg",
        data: audio,
        document,
    };
    let (content_type, body) = encode_body(Body::Multipart, &att);
    (
        content_type,
        body,
        format!("/{ACCOUNT}/{document_id}/{name}"),
    )
}

fn multipart_head(path: &str, content_type: &str, len: usize) -> String {
    format!(
        "PUT {path} HTTP/1.1\r\ncontent-type: {content_type}\r\ncontent-length: {len}\r\nte: \r\nhost: x\r\nconnection: keep-alive\r\n\r\n"
    )
}

fn nested(depth: usize) -> serde_json::Value {
    let mut value = serde_json::json!(0);
    for _ in 0..depth {
        value = serde_json::json!([value]);
    }
    value
}

/// A KAZOO document is a few KiB. One over `VMPIPE_MAX_DOCUMENT` (64 KiB) is dropped: the
/// voicemail is still stored and its job published, without the document (it used to be held,
/// parsed, and kept in the job, or refused with a 400 above 1 MiB, losing the voicemail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_document_is_dropped_and_its_voicemail_stored() {
    let (ingest, queue) = TestIngest::start_with_queue(Options::default()).await;
    let kazoo = ingest.client();
    let zeros = |n: usize| serde_json::Value::Array(vec![serde_json::json!(0); n]);
    let cases = [
        ("a KAZOO document", mailbox_message("d", "n.mp3"), true),
        (
            "60 KiB",
            serde_json::json!({"id": "x", "pad": "p".repeat(60 << 10)}),
            true,
        ),
        ("200 KiB of zeros", zeros(100 << 10), false),
        ("1.2 MB of zeros", zeros(600_000), false),
        // How deep a document may nest is the worker's to judge (it reads the text).
        ("nested 100 deep", nested(100), true),
    ];
    for (what, document, kept) in cases {
        let audio = nasty_audio(30_000);
        let (content_type, body, path) = multipart(&document, &audio);
        let r = kazoo
            .send(&multipart_head(&path, &content_type, body.len()), &body)
            .await;
        assert_eq!(
            r.status,
            201,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            kazoo.get(&path).await.body,
            audio,
            "{what}: the voicemail is stored"
        );
        let (job, _) = queue.next(WAIT).await.expect("job");
        assert_eq!(job.size_bytes, audio.len() as u64, "{what}");
        // (Not printed on failure: some are megabytes.)
        let got = job.kazoo_document.as_ref();
        if kept {
            assert!(got == Some(&document), "{what}: kept");
        } else {
            assert!(got.is_none(), "{what}: dropped");
        }
    }
    assert_nothing_outside(&ingest);
    assert_kazoo_round_trip(kazoo, "").await;
    ingest.stop().await;
    queue.delete().await;
}

/// Peak memory of a process (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// 64 uploads at once, each with a 1 MB JSON part of `[0,0,…]`, used to take ingest to about
/// 1 GB: its memory must not depend on what the JSON expands to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_under_concurrent_uploads_of_expanding_documents() {
    let template = TestIngest::start(Options::default()).await;
    // Its log (a warning per dropped document) goes to a file.
    let log = template.sandbox.path().join("ingest.log");
    let ingest = Service::spawn_logging("ingest", &template.settings, Some(&log)).await;
    let baseline = peak_rss(ingest.pid());
    let document = serde_json::Value::Array(vec![serde_json::json!(0); 500_000]);
    let audio = nasty_audio(10_000);
    let mut uploads = Vec::new();
    // All 64 are in flight at once: each sends all but its last bytes, then they all finish.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(64));
    for _ in 0..64 {
        let (content_type, body, path) = multipart(&document, &audio);
        let head = multipart_head(&path, &content_type, body.len());
        let port = ingest.health_port;
        let barrier = barrier.clone();
        uploads.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            stream.write_all(head.as_bytes()).await.unwrap();
            let (most, last) = body.split_at(body.len() - 10);
            stream.write_all(most).await.unwrap();
            barrier.wait().await;
            stream.write_all(last).await.unwrap();
            read_response(&mut stream, false).await.status
        }));
    }
    for upload in uploads {
        let status = upload.await.unwrap();
        assert!(matches!(status, 201 | 400), "{status}");
    }
    let peak = peak_rss(ingest.pid());
    println!(
        "ingest peak RSS {} MiB (at start {} MiB)",
        peak >> 20,
        baseline >> 20
    );
    assert!(
        peak < baseline + (64 << 20),
        "peak RSS {} MiB, {} MiB at start",
        peak >> 20,
        baseline >> 20
    );
    ingest.sigkill().await;
    template.stop().await;
}
