//! Ingest end to end: KAZOO's wire format in, files on disk and jobs on RabbitMQ out.

use std::time::Duration;

use vmpipe_common::UploadMode;
use vmpipe_common::settings::Base64Mode;
use vmpipe_tests::*;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";
const DOC: &str = "202611-5d6ae452d29a4304072654da8f79b46e";

fn expected_mode(body: Body) -> UploadMode {
    match body {
        Body::Raw => UploadMode::Raw,
        Body::Multipart | Body::LegacyMixed => UploadMode::Multipart,
        Body::MultipartBase64 => UploadMode::MultipartBase64,
    }
}

on_both_backends!(every_store_mode_fetches_back_byte_identical_and_enqueues_its_job);
async fn every_store_mode_fetches_back_byte_identical_and_enqueues_its_job(backend: Backend) {
    let (ingest, queue) = TestIngest::start_with_queue(Options {
        prefix: "/some_prefix".into(),
        backend,
        ..Options::default()
    })
    .await;
    let kazoo = ingest.client();
    let audio = nasty_audio(300_000);

    for verb in [Verb::Put, Verb::Post] {
        for body in ALL_BODIES {
            let name = format!("{}.mp3", hex32());
            let document = mailbox_message(DOC, &name);
            let key = format!("{ACCOUNT}/{DOC}/{name}");
            let att = Attachment {
                document_id: DOC,
                name: &name,
                content_type: "audio/mpeg",
                data: &audio,
                document: &document,
            };
            let stored = kazoo
                .store(verb, &format!("/some_prefix/{key}"), body, &att)
                .await;
            assert_eq!(
                stored.status,
                201,
                "{verb:?} {body:?}: {:?}",
                String::from_utf8_lossy(&stored.body)
            );
            assert_eq!(stored.json()["storage_key"], key);

            // KAZOO >= 4.3.106: doubled path plus metadata query; older KAZOO: the PUT path.
            for fetch in [
                format!("/some_prefix/{key}/{key}?{VOICEMAIL_FETCH_QUERY}"),
                format!("/some_prefix/{key}"),
            ] {
                let fetched = kazoo.get(&fetch).await;
                assert_eq!(fetched.status, 200, "{verb:?} {body:?} GET {fetch}");
                assert_eq!(
                    fetched.header("content-length"),
                    Some(audio.len().to_string().as_str())
                );
                assert!(
                    fetched.body == audio,
                    "{verb:?} {body:?}: fetched bytes differ"
                );
            }

            let (job, properties) = queue
                .next(Duration::from_secs(10))
                .await
                .expect("job enqueued");
            assert_eq!(job.schema_version, 1);
            assert_eq!(job.storage_key, key);
            assert_eq!(job.account_id.as_deref(), Some(ACCOUNT));
            assert_eq!(job.document_id.as_deref(), Some(DOC));
            assert_eq!(job.attachment_name, name);
            assert_eq!(job.content_type.as_deref(), Some("audio/mpeg"));
            assert_eq!(job.size_bytes, audio.len() as u64);
            // Hashing is the worker's (off the upload's critical path).
            assert_eq!(job.sha256, None);
            assert_eq!(job.upload_mode, expected_mode(body), "{verb:?} {body:?}");
            assert!(!job.request_id.is_empty());
            match body {
                Body::Raw => assert_eq!(job.kazoo_document, None),
                _ => assert_eq!(job.kazoo_document.as_ref(), Some(&document)),
            }
            assert_eq!(properties.delivery_mode(), &Some(2), "persistent message");
            // Its confirm reaches ingest about when the job reaches the consumer.
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while ingest.journal_entries() > 0 && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(
                ingest.journal_entries(),
                0,
                "broker was up: the journal confirmed through"
            );
        }
    }
    assert!(
        queue.next(Duration::from_millis(200)).await.is_none(),
        "one job per upload"
    );
    assert_eq!(ingest.temp_files(), 0);
    queue.delete().await;
    ingest.stop().await;
}

on_both_backends!(credentials_probe_passes_in_every_mode_against_current_and_legacy_kazoo);
/// KAZOO's credentials probe: store then fetch `some random content: {R}` and compare.
async fn credentials_probe_passes_in_every_mode_against_current_and_legacy_kazoo(backend: Backend) {
    let (ingest, queue) = TestIngest::start_with_queue(Options {
        backend,
        ..Options::default()
    })
    .await;
    let kazoo = ingest.client();
    for legacy in [false, true] {
        for verb in [Verb::Put, Verb::Post] {
            for body in ALL_BODIES {
                let random = hex32();
                let probe_doc = hex32();
                let content = format!("some random content: {random}");
                assert_eq!(content.len(), 53);
                let name = format!("{random}_test_credentials_file.txt");
                let document = serde_json::json!({
                    "att_uuid": hex32(), "content": content, "request_id": hex32(), "id": probe_doc,
                });
                let att = Attachment {
                    document_id: &probe_doc,
                    name: &name,
                    content_type: "text/plain",
                    data: content.as_bytes(),
                    document: &document,
                };
                let segment = format!("{ACCOUNT}/{probe_doc}/{name}");
                let put_path = format!("/{segment}");
                let stored = if legacy {
                    kazoo.store_legacy(verb, &put_path, body, &att).await
                } else {
                    kazoo.store(verb, &put_path, body, &att).await
                };
                assert!(
                    (200..300).contains(&stored.status),
                    "{legacy} {verb:?} {body:?}: {}",
                    stored.status
                );
                let fetch = if legacy {
                    put_path.clone()
                } else {
                    format!(
                        "/{segment}/{segment}?att_uuid={}&content=some+random+content%3A+{random}&request_id={}&id={probe_doc}",
                        document["att_uuid"].as_str().unwrap(),
                        document["request_id"].as_str().unwrap()
                    )
                };
                let fetched = kazoo.get(&fetch).await;
                assert_eq!(fetched.status, 200, "only 200 counts for KAZOO");
                assert_eq!(
                    fetched.body,
                    content.as_bytes(),
                    "{legacy} {verb:?} {body:?}: probe content"
                );
                let (job, _) = queue.next(Duration::from_secs(10)).await.expect("job");
                assert_eq!(job.attachment_name, name);
            }
        }
    }
    queue.delete().await;
    ingest.stop().await;
}

on_both_backends!(repeated_put_is_idempotent_and_a_new_body_replaces_the_old);
async fn repeated_put_is_idempotent_and_a_new_body_replaces_the_old(backend: Backend) {
    let (ingest, queue) = TestIngest::start_with_queue(Options {
        backend,
        ..Options::default()
    })
    .await;
    let kazoo = ingest.client();
    let document = mailbox_message(DOC, "a.mp3");
    let path = format!("/{ACCOUNT}/{DOC}/a.mp3");
    let first = nasty_audio(5000);
    let second = nasty_audio(7000);
    for (data, tries) in [(&first, 5), (&second, 1)] {
        let att = Attachment {
            document_id: DOC,
            name: "a.mp3",
            content_type: "audio/mpeg",
            data,
            document: &document,
        };
        // KAZOO retries a failed store up to 5 times with the same body.
        for _ in 0..tries {
            assert_eq!(
                kazoo.store(Verb::Put, &path, Body::Raw, &att).await.status,
                201
            );
        }
        assert_eq!(&kazoo.get(&path).await.body, data);
    }
    let files = ingest.stored_keys().await;
    assert_eq!(files.len(), 1, "one file per key: {files:?}");
    let mut jobs = Vec::new();
    while let Some((job, _)) = queue.next(Duration::from_millis(500)).await {
        jobs.push(job);
    }
    assert_eq!(jobs.len(), 6, "every accepted upload is announced");
    assert_eq!(jobs[5].size_bytes, second.len() as u64);
    queue.delete().await;
    ingest.stop().await;
}

on_both_backends!(fetch_answers_404_for_unknown_keys_and_head_gives_the_length);
async fn fetch_answers_404_for_unknown_keys_and_head_gives_the_length(backend: Backend) {
    let (ingest, queue) = TestIngest::start_with_queue(Options {
        backend,
        ..Options::default()
    })
    .await;
    let kazoo = ingest.client();
    let document = mailbox_message(DOC, "a.wav");
    let data = nasty_audio(2_000_000);
    let path = format!("/{ACCOUNT}/{DOC}/a.wav");
    let att = Attachment {
        document_id: DOC,
        name: "a.wav",
        content_type: "audio/wav",
        data: &data,
        document: &document,
    };
    assert_eq!(
        kazoo.store(Verb::Put, &path, Body::Raw, &att).await.status,
        201
    );

    let head = kazoo.head(&path).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("2000000"));
    assert_eq!(head.header("content-type"), Some("audio/wav"));
    let got = kazoo.get(&format!("{path}{path}?folder=saved")).await;
    assert_eq!((got.status, got.body.len()), (200, data.len()));
    assert!(got.body == data);

    for unknown in [
        format!("/{ACCOUNT}/{DOC}/b.wav"),
        format!("/{ACCOUNT}/{DOC}"),
        format!("/{ACCOUNT}"),
        "/".to_owned(),
        format!("/{ACCOUNT}/{DOC}/b.wav/{ACCOUNT}/{DOC}/b.wav?x=1"),
    ] {
        let r = kazoo.get(&unknown).await;
        assert_eq!(r.status, 404, "GET {unknown}");
        assert_eq!(r.json()["error"], "not_found");
    }
    // No directory listing, no internal files.
    for internal in ["/tmp", "/journal", "/voicemails", "/../journal"] {
        let r = kazoo.get(internal).await;
        assert!(
            matches!(r.status, 400 | 404),
            "GET {internal}: {}",
            r.status
        );
    }
    queue.delete().await;
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_are_refused_and_nothing_escapes_the_storage_root() {
    let (ingest, queue) = TestIngest::start_with_queue(Options::default()).await;
    let kazoo = ingest.client();
    let document = serde_json::json!({});
    let att = Attachment {
        document_id: "d",
        name: "x",
        content_type: "text/plain",
        data: b"evil",
        document: &document,
    };
    for (path, status) in [
        ("/a/../../escaped", 400),
        ("/a/%2e%2e/%2E%2E/escaped", 400),
        ("/../escaped", 400),
        ("/a/./b", 400),
        ("/a//b", 400),
        ("/a/b/", 400),
        ("/", 400),
        ("/a%00b/c", 400),
        ("/a/%zz", 400),
        ("/a/%C3%28", 400),
        ("/%252E%252E/%252E%252E/escaped", 201),
        ("/a/..%2F..%2Fescaped", 201),
        ("/a/..%5C..%5Cescaped", 201),
    ] {
        let r = kazoo.store(Verb::Put, path, Body::Raw, &att).await;
        assert_eq!(
            r.status,
            status,
            "PUT {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        if status != 201 {
            assert_eq!(r.json()["error"], "bad_path");
        }
    }
    let long = format!("/a/{}", "x".repeat(300));
    assert_eq!(
        kazoo.store(Verb::Put, &long, Body::Raw, &att).await.status,
        400
    );

    // Nothing was written outside the storage directory; one file per accepted key.
    let outside: Vec<_> = all_files(ingest.sandbox.path())
        .into_iter()
        .filter(|p| !p.starts_with("storage"))
        .collect();
    assert!(
        outside.is_empty(),
        "files outside the storage directory: {outside:?}"
    );
    let stored = all_files(&ingest.storage_dir().join("voicemails"));
    assert_eq!(stored.len(), 3, "{stored:?}");
    // An encoded slash stayed in its segment: fetchable under the same encoded path.
    let r = kazoo.get("/a/..%2F..%2Fescaped").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"evil"[..]));
    assert!(ingest.stored_path("a/..%2F..%2Fescaped").is_file());
    queue.delete().await;
    ingest.stop().await;
}

on_both_backends!(oversize_bodies_get_413_and_leave_nothing);
async fn oversize_bodies_get_413_and_leave_nothing(backend: Backend) {
    let (ingest, queue) = TestIngest::start_with_queue(Options {
        max_body: 1 << 20,
        backend,
        ..Options::default()
    })
    .await;
    let kazoo = ingest.client();
    let data = nasty_audio((1 << 20) + 1);
    let document = mailbox_message(DOC, "big.mp3");
    let att = Attachment {
        document_id: DOC,
        name: "big.mp3",
        content_type: "audio/mpeg",
        data: &data,
        document: &document,
    };
    for body in [Body::Raw, Body::Multipart] {
        let r = kazoo
            .store(Verb::Put, &format!("/{ACCOUNT}/{DOC}/big.mp3"), body, &att)
            .await;
        assert_eq!(r.status, 413, "{body:?}");
        assert_eq!(r.json()["error"], "too_large");
    }
    // Chunked (no Content-Length to check up front): refused while streaming.
    let mut chunked = Vec::new();
    for piece in data.chunks(100_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = format!(
        "PUT /{ACCOUNT}/{DOC}/big.mp3 HTTP/1.1\r\ncontent-type: audio/mpeg\r\ntransfer-encoding: chunked\r\nhost: x\r\n\r\n"
    );
    assert_eq!(kazoo.send(&head, &chunked).await.status, 413);

    // Exactly at the limit is fine.
    let att = Attachment {
        data: &data[..1 << 20],
        ..att
    };
    assert_eq!(
        kazoo
            .store(
                Verb::Put,
                &format!("/{ACCOUNT}/{DOC}/ok.mp3"),
                Body::Raw,
                &att
            )
            .await
            .status,
        201
    );
    assert_eq!(ingest.stored_keys().await.len(), 1);
    assert_eq!(ingest.temp_files(), 0);
    queue.delete().await;
    ingest.stop().await;
}

on_both_backends!(aborted_upload_leaves_no_file_and_a_retry_succeeds);
async fn aborted_upload_leaves_no_file_and_a_retry_succeeds(backend: Backend) {
    let (ingest, queue) = TestIngest::start_with_queue(Options {
        backend,
        ..Options::default()
    })
    .await;
    let kazoo = ingest.client();
    // Past one part of a multipart upload on a bucket (5 MiB): some of it was sent.
    let data = nasty_audio(8_000_000);
    let path = format!("/{ACCOUNT}/{DOC}/cut.mp3");
    let stream = start_partial_put(ingest.port, &path, &data, 6_000_000).await;
    if backend == Backend::Fs {
        // Wait until the partial upload is on disk, then hang up.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while ingest.temp_files() == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(ingest.temp_files(), 1, "partial upload in tmp/ only");
    } else {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ingest.temp_files() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ingest.temp_files(), 0, "partial upload removed");
    assert!(ingest.stored_keys().await.is_empty(), "nothing stored");
    assert_eq!(kazoo.get(&path).await.status, 404, "nothing visible");
    assert!(
        queue.next(Duration::from_millis(300)).await.is_none(),
        "no job for a failed upload"
    );

    let document = mailbox_message(DOC, "cut.mp3");
    let att = Attachment {
        document_id: DOC,
        name: "cut.mp3",
        content_type: "audio/mpeg",
        data: &data,
        document: &document,
    };
    assert_eq!(
        kazoo.store(Verb::Put, &path, Body::Raw, &att).await.status,
        201
    );
    assert!(kazoo.get(&path).await.body == data);
    queue.delete().await;
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base64_setting_auto_always_never() {
    let audio = nasty_audio(200_000);
    let text = b"QUJD".to_vec(); // valid base64 of "ABC", sent as a plain (raw-mode) multipart part
    for (mode, body, data, expected, status) in [
        (
            Base64Mode::Auto,
            Body::MultipartBase64,
            &audio,
            Some(&audio[..]),
            201,
        ),
        (
            Base64Mode::Auto,
            Body::Multipart,
            &audio,
            Some(&audio[..]),
            201,
        ),
        (
            Base64Mode::Always,
            Body::MultipartBase64,
            &audio,
            Some(&audio[..]),
            201,
        ),
        (Base64Mode::Always, Body::Multipart, &audio, None, 400),
        (
            Base64Mode::Never,
            Body::Multipart,
            &text,
            Some(&b"QUJD"[..]),
            201,
        ),
        (
            Base64Mode::Auto,
            Body::Multipart,
            &text,
            Some(&b"ABC"[..]),
            201,
        ),
        // A raw body is never decoded, whatever the setting.
        (
            Base64Mode::Always,
            Body::Raw,
            &text,
            Some(&b"QUJD"[..]),
            201,
        ),
    ] {
        let (ingest, queue) = TestIngest::start_with_queue(Options {
            base64: mode,
            ..Options::default()
        })
        .await;
        let kazoo = ingest.client();
        let document = mailbox_message(DOC, "f.mp3");
        let att = Attachment {
            document_id: DOC,
            name: "f.mp3",
            content_type: "audio/mpeg",
            data,
            document: &document,
        };
        let path = format!("/{ACCOUNT}/{DOC}/f.mp3");
        let r = kazoo.store(Verb::Post, &path, body, &att).await;
        assert_eq!(r.status, status, "{mode:?} {body:?}");
        match expected {
            Some(bytes) => assert!(kazoo.get(&path).await.body == bytes, "{mode:?} {body:?}"),
            None => {
                assert_eq!(r.json()["error"], "bad_base64");
                assert_eq!(kazoo.get(&path).await.status, 404, "nothing stored");
                assert_eq!(ingest.temp_files(), 0);
            }
        }
        queue.delete().await;
        ingest.stop().await;
    }
}

on_both_backends!(malformed_multipart_is_a_400_and_stores_nothing);
async fn malformed_multipart_is_a_400_and_stores_nothing(backend: Backend) {
    let (ingest, queue) = TestIngest::start_with_queue(Options {
        backend,
        ..Options::default()
    })
    .await;
    let kazoo = ingest.client();
    let path = format!("/{ACCOUNT}/{DOC}/m.mp3");
    let cases: [(&str, &[u8]); 4] = [
        ("multipart/form-data; boundary=abc", b"\r\n--abc\r\ncontent-type: audio/mpeg\r\n\r\nnever closed"),
        ("multipart/mixed", b"no delimiter line here at all"),
        ("multipart/form-data; boundary=abc", b"\r\n--abc\r\ncontent-disposition: form-data; name=a\r\n\r\n1\r\n--abc\r\ncontent-disposition: form-data; name=b\r\n\r\n2\r\n--abc\r\ncontent-disposition: form-data; name=c\r\n\r\n3\r\n--abc--"),
        ("multipart/form-data; boundary=abc", b""),
    ];
    for (content_type, body) in cases {
        let head = format!(
            "PUT {path} HTTP/1.1\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nte: \r\nhost: x\r\nconnection: keep-alive\r\n\r\n",
            body.len()
        );
        let r = kazoo.send(&head, body).await;
        assert_eq!(
            r.status,
            400,
            "{content_type} {:?}",
            String::from_utf8_lossy(body)
        );
        assert!(r.json()["error"].is_string());
    }
    assert_eq!(kazoo.get(&path).await.status, 404);
    assert!(queue.next(Duration::from_millis(300)).await.is_none());
    queue.delete().await;
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_methods_get_405() {
    let (ingest, queue) = TestIngest::start_with_queue(Options::default()).await;
    let head = "DELETE /a/b/c HTTP/1.1\r\ncontent-length: 0\r\nhost: x\r\n\r\n";
    let r = ingest.client().send(head, b"").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["error"], "method_not_allowed");
    queue.delete().await;
    ingest.stop().await;
}

/// The broker is down: uploads still get 201, their jobs wait in the journal, and are all
/// published once the broker is reachable, here after an ingest restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_journaled_while_rabbitmq_is_unreachable_and_published_after_restart() {
    let queue_name = format!("vmpipe.test.{}", hex32());
    let ingest = TestIngest::start(Options {
        // Nothing listens on port 1.
        amqp_url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
        queue: Some(queue_name.clone()),
        ..Options::default()
    })
    .await;
    let kazoo = ingest.client();
    let data = nasty_audio(10_000);
    for i in 0..3 {
        let name = format!("{i}.mp3");
        let document = mailbox_message(DOC, &name);
        let att = Attachment {
            document_id: DOC,
            name: &name,
            content_type: "audio/mpeg",
            data: &data,
            document: &document,
        };
        let r = kazoo
            .store(
                Verb::Put,
                &format!("/{ACCOUNT}/{DOC}/{name}"),
                Body::Multipart,
                &att,
            )
            .await;
        assert_eq!(r.status, 201);
    }
    assert_eq!(ingest.journal_entries(), 3);
    let sandbox = ingest.stop().await;

    let queue = TestQueue::declare(&queue_name).await;
    let ingest = TestIngest::start(Options {
        queue: Some(queue_name),
        sandbox: Some(sandbox),
        ..Options::default()
    })
    .await;
    let mut keys = Vec::new();
    while let Some((job, _)) = queue.next(Duration::from_secs(10)).await {
        assert_eq!(job.kazoo_document.as_ref().unwrap()["id"], DOC);
        keys.push(job.storage_key);
        if keys.len() == 3 {
            break;
        }
    }
    keys.sort();
    assert_eq!(
        keys,
        (0..3)
            .map(|i| format!("{ACCOUNT}/{DOC}/{i}.mp3"))
            .collect::<Vec<_>>()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ingest.journal_entries() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        ingest.journal_entries(),
        0,
        "journal emptied once published"
    );
    queue.delete().await;
    ingest.stop().await;
}
