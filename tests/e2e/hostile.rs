//! Hostile input and access control against a running ingest: each request gets the status
//! it should, nothing is written outside the storage root or stored for a rejected request,
//! and the server answers normally afterwards. Each file below `hostile/` covers one surface.

mod client;
mod connections;
mod journal;
mod metrics;
mod storage;

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use vmpipe_common::settings::Secret;
use vmpipe_tests::*;

const KEY: &str = "4e3005310add6229778caf6babfe7cfb/202611-5d6ae452d29a4304072654da8f79b46e/m.mp3";
const TOKEN: &str = "s3cret-Token_42";

/// A request's head and body, as bytes for the wire.
type Request = (String, Vec<u8>);

fn put(path: &str, extra_headers: &str, body: &[u8]) -> Request {
    (
        format!(
            "PUT {path} HTTP/1.1\r\ncontent-type: audio/mpeg\r\ncontent-length: {}\r\nte: \r\nhost: x\r\n{extra_headers}connection: keep-alive\r\n\r\n",
            body.len()
        ),
        body.to_vec(),
    )
}

fn get(path: &str, extra_headers: &str) -> Request {
    (
        format!(
            "GET {path} HTTP/1.1\r\ncontent-length: 0\r\nte: \r\nhost: x\r\n{extra_headers}connection: keep-alive\r\n\r\n"
        ),
        Vec::new(),
    )
}

async fn assert_still_serving(ingest: &TestIngest) {
    let (status, _) = http_get(ingest.port, "/healthz").await.expect("answers");
    assert_eq!(status, 200, "server still answers");
}

fn assert_nothing_outside(ingest: &TestIngest) {
    let outside: Vec<_> = all_files(ingest.sandbox.path())
        .into_iter()
        .filter(|p| !p.starts_with("storage"))
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
}

/// A voicemail stored as KAZOO stores it (multipart PUT below `base`, e.g. `` or `/TOKEN`), and
/// fetched back as KAZOO >= 4.3.106 fetches it (doubled path, metadata query): byte-identical.
async fn assert_kazoo_round_trip(kazoo: Kazoo, base: &str) {
    let document_id = format!("202611-{}", hex32());
    let name = format!("{}.mp3", hex32());
    let audio = nasty_audio(40_000);
    let document = mailbox_message(&document_id, &name);
    let att = Attachment {
        document_id: &document_id,
        name: &name,
        content_type: "audio/mpeg",
        data: &audio,
        document: &document,
    };
    let key = format!("4e3005310add6229778caf6babfe7cfb/{document_id}/{name}");
    let stored = kazoo
        .store(Verb::Put, &format!("{base}/{key}"), Body::Multipart, &att)
        .await;
    assert_eq!(
        stored.status,
        201,
        "{}",
        String::from_utf8_lossy(&stored.body)
    );
    let fetched = kazoo
        .get(&format!("{base}/{key}/{key}?{VOICEMAIL_FETCH_QUERY}"))
        .await;
    assert_eq!(fetched.status, 200, "normal KAZOO fetch");
    assert!(fetched.body == audio, "byte-identical");
}

/// The JSON error body every error has: its `error` code.
fn error_code(r: &Response) -> String {
    assert!(
        r.header("content-type").is_some_and(|t| t.contains("json")),
        "{} without a JSON body: {:?}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let body = r.json();
    assert!(body["message"].is_string(), "{body}");
    body["error"].as_str().expect("error code").to_owned()
}

/// KAZOO status codes (section 4.1 of the protocol notes).
fn kazoo_knows(status: u16) -> bool {
    matches!(status, 200..=299 | 400..=431 | 444 | 451 | 499 | 500..=508 | 510 | 511 | 599)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_path_or_query_is_required_and_never_part_of_the_key() {
    let ingest = TestIngest::start(Options {
        tweak: Some(Box::new(|s| {
            s.access_token = Some(Secret(TOKEN.into()));
            s.allow_networks = "127.0.0.0/8, ::1".parse().unwrap();
        })),
        ..Options::default()
    })
    .await;
    let kazoo = ingest.client();
    let audio = nasty_audio(50_000);
    let doubled_query = format!("/?token={TOKEN}&key={KEY}{KEY}&media_id=x&folder=new");
    let cases: Vec<(Request, u16)> = vec![
        (put(&format!("/{KEY}"), "", &audio), 403),
        (put(&format!("/wrong-token/{KEY}"), "", &audio), 403),
        (put(&format!("/?token=nope&key={KEY}"), "", &audio), 403),
        (put(&format!("/{TOKEN}x/{KEY}"), "", &audio), 403),
        (get(&format!("/{KEY}"), ""), 403),
        (put(&format!("/{TOKEN}/{KEY}"), "", &audio), 201),
        (get(&format!("/{TOKEN}/{KEY}/{KEY}?folder=new"), ""), 200),
        (get(&format!("/{TOKEN}/{KEY}"), ""), 200),
        (put(&format!("/?token={TOKEN}&key={KEY}"), "", &audio), 201),
        (get(&doubled_query, ""), 200),
        (get(&format!("/{TOKEN}/{KEY}/"), ""), 400),
    ];
    let total = cases.len();
    for ((head, body), expected) in cases {
        let r = kazoo.send(&head, &body).await;
        let line = head.lines().next().unwrap().to_owned();
        assert_eq!(
            r.status,
            expected,
            "{line}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            r.header("content-type")
                .is_some_and(|t| r.status == 200 || t.contains("json")),
            "{line}"
        );
        if r.status == 200 {
            assert!(r.body == audio, "{line}: byte-identical");
        }
        if r.status == 403 {
            assert_eq!(r.json()["error"], "forbidden");
        }
    }
    // The token never becomes part of the storage key.
    assert_eq!(all_files(&ingest.storage_dir().join("voicemails")).len(), 1);
    assert!(ingest.stored_path(KEY).is_file());
    assert_nothing_outside(&ingest);
    assert_still_serving(&ingest).await;
    println!("{total} token cases");
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_and_basic_auth() {
    let outsider = TestIngest::start(Options {
        tweak: Some(Box::new(|s| {
            s.allow_networks = "10.0.0.0/8".parse().unwrap()
        })),
        ..Options::default()
    })
    .await;
    let (head, body) = put(&format!("/{KEY}"), "", b"x");
    assert_eq!(outsider.client().send(&head, &body).await.status, 403);
    assert!(all_files(&outsider.storage_dir().join("voicemails")).is_empty());
    assert_still_serving(&outsider).await;
    outsider.stop().await;

    let ingest = TestIngest::start(Options {
        tweak: Some(Box::new(|s| {
            s.basic_auth = Some(Secret("kazoo:pa55".into()))
        })),
        ..Options::default()
    })
    .await;
    let kazoo = ingest.client();
    // KAZOO >= 4.3.106 sends Basic base64("userpass:") on fetches: it must not get in.
    for (auth, expected) in [
        ("", 401),
        ("authorization: Basic a2F6b286d3Jvbmc=\r\n", 401),
        ("authorization: Basic a2F6b29wYTU1Og==\r\n", 401),
        ("authorization: Bearer x\r\n", 401),
        ("authorization: Basic a2F6b286cGE1NQ==\r\n", 201),
    ] {
        let (head, body) = put(&format!("/{KEY}"), auth, b"audio");
        let r = kazoo.send(&head, &body).await;
        assert_eq!(r.status, expected, "{auth:?}");
        if expected == 401 {
            assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"vmpipe\""));
        }
    }
    assert_eq!(all_files(&ingest.storage_dir().join("voicemails")).len(), 1);
    assert_still_serving(&ingest).await;
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_and_every_error_is_one_kazoo_knows() {
    let ingest = TestIngest::start(Options {
        max_body: 1 << 20,
        tweak: Some(Box::new(|s| {
            s.body_timeout_secs = 1;
            s.max_uploads = 1;
        })),
        ..Options::default()
    })
    .await;
    let kazoo = ingest.client();
    let big_header = format!("x-junk: {}\r\n", "a".repeat(100_000));
    let part_header = format!(
        "\r\n--b\r\ncontent-type: audio/mpeg\r\nx-long: {}\r\n\r\ndata\r\n--b--",
        "h".repeat(70_000)
    );
    let many_parts: String = (0..50)
        .map(|i| format!("\r\n--b\r\ncontent-type: text/plain\r\n\r\n{i}"))
        .collect::<String>()
        + "\r\n--b--";
    let cases: Vec<(&str, Request, &[u16])> = vec![
        (
            "header too large",
            put(&format!("/{KEY}"), &big_header, b"x"),
            &[400, 431],
        ),
        (
            "body over the limit",
            put(&format!("/{KEY}"), "", &vec![1u8; (1 << 20) + 1]),
            &[413],
        ),
        (
            "huge multipart part header",
            {
                let (h, b) = put(&format!("/{KEY}"), "", part_header.as_bytes());
                (
                    h.replace(
                        "content-type: audio/mpeg",
                        "content-type: multipart/form-data; boundary=b",
                    ),
                    b,
                )
            },
            &[400],
        ),
        (
            "fifty parts",
            {
                let (h, b) = put(&format!("/{KEY}"), "", many_parts.as_bytes());
                (
                    h.replace(
                        "content-type: audio/mpeg",
                        "content-type: multipart/form-data; boundary=b",
                    ),
                    b,
                )
            },
            &[400],
        ),
        (
            "garbage boundary",
            {
                let (h, b) = put(&format!("/{KEY}"), "", b"\r\n--x\r\n\r\nz\r\n--x--");
                (
                    h.replace(
                        "content-type: audio/mpeg",
                        "content-type: multipart/form-data; boundary=\"\"",
                    ),
                    b,
                )
            },
            &[400],
        ),
        (
            "truncated multipart",
            {
                let (h, b) = put(
                    &format!("/{KEY}"),
                    "",
                    b"\r\n--b\r\ncontent-type: audio/mpeg\r\n\r\nhalf a fi",
                );
                (
                    h.replace(
                        "content-type: audio/mpeg",
                        "content-type: multipart/form-data; boundary=b",
                    ),
                    b,
                )
            },
            &[400],
        ),
        ("dot-dot", put("/a/../../x", "", b"x"), &[400]),
        ("encoded dot-dot", put("/a/%2e%2E/x", "", b"x"), &[400]),
        ("NUL", put("/a/b%00c", "", b"x"), &[400]),
        ("non-UTF-8", put("/a/%ff%fe", "", b"x"), &[400]),
        (
            "overlong segment",
            put(&format!("/a/{}", "n".repeat(300)), "", b"x"),
            &[400],
        ),
        ("GET the journal", get("/../journal", ""), &[400]),
        ("GET tmp", get("/%2e%2e/tmp/x", ""), &[400]),
        (
            "GET a directory",
            get("/4e3005310add6229778caf6babfe7cfb", ""),
            &[404],
        ),
        (
            "DELETE",
            (
                "DELETE /a/b HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".to_owned(),
                vec![],
            ),
            &[405],
        ),
        (
            "not HTTP",
            ("\x16\x03\x01\x02\x00garbage\r\n\r\n".to_owned(), vec![]),
            &[400],
        ),
    ];
    let count = cases.len();
    for (what, (head, body), allowed) in cases {
        let r = kazoo.send(&head, &body).await;
        assert!(
            allowed.contains(&r.status),
            "{what}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        assert!(kazoo_knows(r.status), "{what}: {}", r.status);
        assert_still_serving(&ingest).await;
    }
    assert!(
        all_files(&ingest.storage_dir().join("voicemails")).is_empty(),
        "nothing stored"
    );
    assert_eq!(ingest.temp_files(), 0);
    assert_nothing_outside(&ingest);

    // A client that stops sending mid-body is cut off (408), and frees its upload slot.
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", ingest.port))
        .await
        .unwrap();
    let (head, _) = put(&format!("/{KEY}"), "", &[0u8; 600_000]);
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(&[0u8; 300_000]).await.unwrap();
    // Its first 256 KiB reached disk: the upload is in the handler and holds the slot.
    let deadline = std::time::Instant::now() + WAIT;
    while ingest.temp_files() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "stalled upload never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Meanwhile the only upload slot is taken: 503 with a short Retry-After (KAZOO retries).
    let (head, body) = put("/a/b/busy.mp3", "", b"x");
    let busy = kazoo.send(&head, &body).await;
    assert_eq!((busy.status, busy.header("retry-after")), (503, Some("2")));
    let r = read_response(&mut stalled, false).await;
    assert_eq!(r.status, 408);
    assert_eq!(
        kazoo.send(&head, &body).await.status,
        201,
        "slot free again"
    );
    println!("{count} hostile requests, plus a stalled body and a full house");
    ingest.stop().await;
}
