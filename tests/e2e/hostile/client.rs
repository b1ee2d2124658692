//! What KAZOO's own client found: the storage URL shapes it builds (a key in `key=`, a prefix
//! followed directly by the query), unquoted part names with `;`, and paths that are not UTF-8.

use vmpipe_common::settings::Secret;
use vmpipe_tests::*;

use super::{TOKEN, assert_kazoo_round_trip, assert_nothing_outside, error_code};

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";

/// A voicemail as KAZOO describes it: its key (account/document/name) and its parts.
struct Voicemail {
    document_id: String,
    name: String,
    audio: Vec<u8>,
    document: serde_json::Value,
}

impl Voicemail {
    fn new(name: &str, size: usize) -> Self {
        let document_id = format!("202611-{}", hex32());
        let document = mailbox_message(&document_id, name);
        Self {
            document_id,
            name: name.to_owned(),
            audio: nasty_audio(size),
            document,
        }
    }

    fn key(&self) -> String {
        format!("{ACCOUNT}/{}/{}", self.document_id, self.name)
    }

    async fn store(&self, kazoo: Kazoo, url: &str, body: Body) -> Response {
        let att = Attachment {
            document_id: &self.document_id,
            name: &self.name,
            content_type: "audio/mpeg",
            data: &self.audio,
            document: &self.document,
        };
        kazoo.store(Verb::Put, url, body, &att).await
    }
}

fn stored_files(ingest: &TestIngest) -> Vec<std::path::PathBuf> {
    all_files(&ingest.storage_dir().join("voicemails"))
}

/// KAZOO storage url `http://host/vm?token=T&key=`: KAZOO glues the key onto `key=`, with or
/// without `VMPIPE_ACCESS_TOKEN`. Each voicemail keeps its own key (it used to be `vm` for all,
/// each overwriting the last), and a store naming fewer than two segments is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_the_query_names_the_file_with_or_without_an_access_token() {
    for token in [None, Some(TOKEN)] {
        let ingest = TestIngest::start(Options {
            tweak: Some(Box::new(move |s| {
                s.access_token = token.map(|t| Secret(t.into()));
            })),
            ..Options::default()
        })
        .await;
        let kazoo = ingest.client();
        let base = format!("/vm?token={TOKEN}&key=");
        let voicemails = [
            Voicemail::new("first.mp3", 30_000),
            Voicemail::new("second.mp3", 31_000),
        ];
        for (voicemail, body) in voicemails.iter().zip([Body::Multipart, Body::Raw]) {
            let key = voicemail.key();
            let r = voicemail.store(kazoo, &format!("{base}{key}"), body).await;
            assert_eq!(
                r.status,
                201,
                "{token:?}: {}",
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(
                r.json()["storage_key"],
                key.as_str(),
                "{token:?}: the key of key="
            );
        }
        for voicemail in &voicemails {
            let key = voicemail.key();
            // KAZOO >= 4.3.106 glues its segment on again, then the metadata; older KAZOO
            // fetches the PUT URL.
            for url in [
                format!("{base}{key}{key}&{VOICEMAIL_FETCH_QUERY}"),
                format!("{base}{key}"),
            ] {
                let r = kazoo.get(&url).await;
                assert_eq!(r.status, 200, "{token:?} GET {url}");
                assert!(r.body == voicemail.audio, "{token:?}: byte-identical");
            }
        }

        // The credentials probe through the same URL.
        let random = hex32();
        let content = format!("some random content: {random}");
        let probe_doc = hex32();
        let probe = format!("{ACCOUNT}/{probe_doc}/{random}_test_credentials_file.txt");
        let head = format!(
            "PUT {base}{probe} HTTP/1.1\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nte: \r\nhost: x\r\nconnection: keep-alive\r\n\r\n",
            content.len()
        );
        assert_eq!(kazoo.send(&head, content.as_bytes()).await.status, 201);
        let fetch = format!(
            "{base}{probe}{probe}&att_uuid={}&content=some+random+content%3A+{random}&request_id={}&id={probe_doc}",
            hex32(),
            hex32()
        );
        let r = kazoo.get(&fetch).await;
        assert_eq!((r.status, r.body), (200, content.into_bytes()), "probe");

        // A store naming one segment, or none, is refused: every upload would land on it.
        for url in [
            format!("/vm?token={TOKEN}"),
            base.clone(),
            format!("{base}only-one.mp3"),
            format!("/only-one.mp3?token={TOKEN}"),
        ] {
            let r = Voicemail::new("x.mp3", 1000)
                .store(kazoo, &url, Body::Raw)
                .await;
            assert_eq!(r.status, 400, "{token:?} PUT {url}");
            assert_eq!(error_code(&r), "bad_path", "{token:?} PUT {url}");
        }
        // Fetches of such paths are only unknown (KAZOO never stores there).
        for url in [format!("/vm?token={TOKEN}"), format!("{base}only-one.mp3")] {
            assert_eq!(kazoo.get(&url).await.status, 404, "{token:?} GET {url}");
        }
        assert_eq!(
            stored_files(&ingest).len(),
            3,
            "{token:?}: two voicemails, one probe"
        );
        assert_nothing_outside(&ingest);
        let base = if token.is_some() {
            format!("/{TOKEN}")
        } else {
            String::new()
        };
        assert_kazoo_round_trip(kazoo, &base).await;
        ingest.stop().await;
    }
}

/// KAZOO storage url `http://host/some_prefix?key=` (no `/` before `?`) with
/// `VMPIPE_PATH_PREFIX=/some_prefix` works like `/some_prefix/?key=`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_followed_directly_by_the_query_is_the_prefix() {
    let ingest = TestIngest::start(Options {
        prefix: "/some_prefix".into(),
        ..Options::default()
    })
    .await;
    let kazoo = ingest.client();
    for base in ["/some_prefix?key=", "/some_prefix/?key="] {
        let voicemail = Voicemail::new(&format!("{}.mp3", hex32()), 20_000);
        let key = voicemail.key();
        let r = voicemail
            .store(kazoo, &format!("{base}{key}"), Body::Multipart)
            .await;
        assert_eq!(
            r.status,
            201,
            "{base}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["storage_key"], key.as_str());
        let r = kazoo
            .get(&format!("{base}{key}{key}&{VOICEMAIL_FETCH_QUERY}"))
            .await;
        assert_eq!(r.status, 200, "{base}");
        assert!(r.body == voicemail.audio);
    }
    // Only the prefix itself: a longer first segment is outside it.
    let r = Voicemail::new("x.mp3", 100)
        .store(
            kazoo,
            &format!("/some_prefixx?key={ACCOUNT}/d/x.mp3"),
            Body::Raw,
        )
        .await;
    assert_eq!((r.status, error_code(&r).as_str()), (404, "bad_path"));
    assert_eq!(stored_files(&ingest).len(), 2);
    assert_nothing_outside(&ingest);
    assert_kazoo_round_trip(kazoo, "/some_prefix").await;
    ingest.stop().await;
}

/// KAZOO writes part names unquoted, so an attachment named `a;b.mp3` arrives as
/// `name=a;b.mp3` (its URL has `%3B`). It is stored, and the job keeps the whole name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semicolon_in_an_unquoted_part_name_is_stored() {
    let (ingest, queue) = TestIngest::start_with_queue(Options::default()).await;
    let kazoo = ingest.client();
    for (name, body) in [
        ("a;b.mp3", Body::Multipart),
        ("c; filename=d.mp3", Body::MultipartBase64),
        ("e;f=g;h", Body::Multipart),
    ] {
        let voicemail = Voicemail::new(name, 25_000);
        let escaped = name
            .replace(';', "%3B")
            .replace(' ', "%20")
            .replace('=', "%3D");
        let url = format!("/{ACCOUNT}/{}/{escaped}", voicemail.document_id);
        let r = voicemail.store(kazoo, &url, body).await;
        assert_eq!(
            r.status,
            201,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["storage_key"], voicemail.key().as_str(), "{name}");
        let r = kazoo.get(&url).await;
        assert_eq!(r.status, 200, "{name}");
        assert!(r.body == voicemail.audio, "{name}: byte-identical");
        let (job, _) = queue.next(WAIT).await.expect("job");
        assert_eq!(job.attachment_name, name, "the whole unquoted name");
        assert_eq!(
            job.document_id.as_deref(),
            Some(voicemail.document_id.as_str())
        );
        assert_eq!(
            job.kazoo_document,
            Some(voicemail.document.clone()),
            "{name}"
        );
    }
    assert_nothing_outside(&ingest);
    assert_kazoo_round_trip(kazoo, "").await;
    ingest.stop().await;
    queue.delete().await;
}

/// A path that is not UTF-8 gets a JSON 400 like any bad path; a path in UTF-8 sent raw (KAZOO
/// escapes only ASCII punctuation) is stored under its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_is_not_utf8_gets_a_json_400_and_raw_utf8_is_stored() {
    let ingest = TestIngest::start(Options::default()).await;
    let kazoo = ingest.client();
    let body = b"audio";
    let request = |method: &str, path: &[u8]| {
        let mut head = format!("{method} ").into_bytes();
        head.extend_from_slice(path);
        head.extend_from_slice(
            format!(
                " HTTP/1.1\r\ncontent-type: audio/mpeg\r\ncontent-length: {}\r\nte: \r\nhost: x\r\nconnection: keep-alive\r\n\r\n",
                if method == "PUT" { body.len() } else { 0 }
            )
            .as_bytes(),
        );
        head
    };
    for path in [
        b"/a/b/\xff\xfe.mp3".as_slice(),
        b"/a/\xc3/c.mp3",
        b"/a/b/c.mp3/\x80",
    ] {
        for method in ["PUT", "GET"] {
            let r = kazoo.send_bytes(&request(method, path), body).await;
            let shown = String::from_utf8_lossy(path);
            assert_eq!(r.status, 400, "{method} {shown}");
            assert_eq!(error_code(&r), "bad_path", "{method} {shown}");
        }
    }
    assert!(stored_files(&ingest).is_empty());

    let name = "mésságe `1` é.mp3";
    let raw_path = format!("/{ACCOUNT}/202611-{}/{}", hex32(), name.replace(' ', "%20"));
    let r = kazoo
        .send_bytes(&request("PUT", raw_path.as_bytes()), body)
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let key = r.json()["storage_key"].as_str().unwrap().to_owned();
    assert!(key.ends_with(name), "{key}");
    let r = kazoo
        .send_bytes(&request("GET", raw_path.as_bytes()), b"")
        .await;
    assert_eq!((r.status, r.body.as_slice()), (200, body.as_slice()), "raw");
    let encoded: String = raw_path
        .bytes()
        .map(|b| {
            if b.is_ascii() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let r = kazoo.get(&encoded.replace('`', "%60")).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, body.as_slice()),
        "percent-encoded"
    );
    assert_eq!(stored_files(&ingest).len(), 1);
    assert_nothing_outside(&ingest);
    assert_kazoo_round_trip(kazoo, "").await;
    ingest.stop().await;
}
