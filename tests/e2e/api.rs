//! The `api` service over what the pipeline indexed: filters, full-text search, keyset pages,
//! audio with ranges, tokens scoped to accounts, and bad input.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::Value;
use vmpipe_common::settings::HookAudio;
use vmpipe_tests::*;

/// Seconds from year 0 (KAZOO's clock) to the Unix epoch.
const GREGORIAN_OFFSET: i64 = 62_167_219_200;

/// A voicemail the tests upload: who left it, for which mailbox, when, and what it says.
pub(crate) struct Message {
    account: String,
    name: &'static str,
    caller_name: &'static str,
    caller_number: &'static str,
    to_user: &'static str,
    mailbox: &'static str,
    folder: &'static str,
    minutes_ago: i64,
}

/// The transcript each upload gets from the tests' hook (by the file name in its input), with
/// segments.
pub(crate) const HOOK: &str = r#"case "$(cat)" in
  *invoice*) echo '{"text": "Hi, this is Robert from Acme, calling about your invoices. Please call me back tomorrow morning.", "language": "en", "segments": [{"start_ms": 0, "end_ms": 2000, "text": "Hi, this is Robert from Acme,"}, {"start_ms": 2000, "end_ms": 4000, "text": "calling about your invoices."}, {"start_ms": 4000, "end_ms": 6000, "text": "Please call me back tomorrow morning."}]}' ;;
  *order*) echo '{"text": "Your order is ready. Call me back on Monday.", "language": "en"}' ;;
  *paid*) echo '{"text": "The invoice was paid, thank you.", "language": "en"}' ;;
  *) exit 3 ;;
esac"#;

fn document(m: &Message, document_id: &str, at: DateTime<Utc>) -> Value {
    let mut doc = mailbox_message(document_id, m.name);
    let seconds = at.timestamp() + GREGORIAN_OFFSET;
    doc["source_id"] = m.mailbox.into();
    doc["utc_seconds"] = seconds.into();
    let meta = &mut doc["metadata"];
    meta["caller_id_name"] = m.caller_name.into();
    meta["caller_id_number"] = m.caller_number.into();
    meta["to_user"] = m.to_user.into();
    meta["folder"] = m.folder.into();
    meta["timestamp"] = seconds.into();
    doc
}

/// A stack whose worker runs [`HOOK`], and an api over it.
pub(crate) async fn stack_with_api(backend: Backend) -> (Stack, TestApi) {
    let mut stack = Stack::start_on(backend, false).await;
    let hook = vmpipe_common::settings::HookSettings {
        max_attempts: 1,
        ..shell_hook("transcriber", HookAudio::Original, HOOK)
    };
    let settings = vmpipe_common::Settings {
        hooks: vec![hook],
        ..stack.worker_settings()
    };
    stack.start_worker_with(settings).await;
    let api = TestApi::start(&stack.worker_settings()).await;
    (stack, api)
}

/// Uploads `messages` as KAZOO does and waits until each is indexed and its hook has run;
/// returns their ids (voicemails.id), in the order given.
pub(crate) async fn upload_all(
    stack: &Stack,
    messages: &[Message],
    now: DateTime<Utc>,
) -> Vec<String> {
    let audio = wav_pcm16(8000, 500);
    for m in messages {
        let document_id = format!("202612-{}", hex32());
        let at = now - chrono::Duration::minutes(m.minutes_ago);
        let doc = document(m, &document_id, at);
        let att = Attachment {
            document_id: &document_id,
            name: m.name,
            content_type: "audio/wav",
            data: &audio,
            document: &doc,
        };
        let path = format!("/{}/{document_id}/{}", m.account, m.name);
        stack.put(&path, Body::Multipart, &att).await;
    }
    let mut ids = Vec::new();
    for m in messages {
        stack
            .finished_transcription(m.name, "transcriber", WAIT)
            .await;
        let id: uuid::Uuid =
            sqlx::query_scalar("SELECT id FROM voicemails WHERE attachment_name = $1")
                .bind(m.name)
                .fetch_one(stack.pool())
                .await
                .unwrap();
        ids.push(id.to_string());
    }
    ids
}

fn ids_of(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The five voicemails of the filter tests: account A has four, B one.
pub(crate) fn messages(a: &str, b: &str) -> Vec<Message> {
    let m =
        |account: &str, name, caller_name, caller_number, to_user, mailbox, folder, minutes_ago| {
            Message {
                account: account.to_owned(),
                name,
                caller_name,
                caller_number,
                to_user,
                mailbox,
                folder,
                minutes_ago,
            }
        };
    vec![
        m(
            a,
            "invoice-1.wav",
            "Robert Acme",
            "+14155550101",
            "1010",
            "box-a1",
            "new",
            60,
        ),
        m(
            a,
            "order-2.wav",
            "Michael Smith",
            "+14155550102",
            "1010",
            "box-a1",
            "saved",
            120,
        ),
        m(
            a,
            "silent-3.wav",
            "Jane Doe",
            "+442071234567",
            "1020",
            "box-a2",
            "new",
            180,
        ),
        m(
            a,
            "paid-4.wav",
            "Acme Billing",
            "+14155550104",
            "1010",
            "box-a1",
            "deleted",
            1560,
        ),
        m(
            b,
            "invoice-5.wav",
            "Robert Acme",
            "+14155550101",
            "2010",
            "box-b1",
            "new",
            30,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_filters_and_searches_what_the_pipeline_indexed() {
    let (stack, api) = stack_with_api(Backend::Fs).await;
    let (a, b) = (hex32(), hex32());
    let now = Utc::now();
    let ids = upload_all(&stack, &messages(&a, &b), now).await;
    let [v1, v2, v3, v4, v5] = [0, 1, 2, 3, 4].map(|i| ids[i].as_str());
    let token = api.token("support", None);
    let list = |query: String| {
        let (api, token) = (&api, &token);
        async move {
            ids_of(
                &api.json(token, &format!("/api/v1/voicemails?{query}"))
                    .await,
            )
        }
    };
    let time = |minutes: i64| {
        (now - chrono::Duration::minutes(minutes))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            .replace('+', "%2B")
    };
    // Newest first, by when the message was left.
    assert_eq!(list(String::new()).await, [v5, v1, v2, v3, v4]);
    assert_eq!(list(format!("account_id={a}")).await, [v1, v2, v3, v4]);
    assert_eq!(list("mailbox_id=box-a2".into()).await, [v3]);
    assert_eq!(list("mailbox_number=1010".into()).await, [v1, v2, v4]);
    assert_eq!(list("caller=ROBERT".into()).await, [v5, v1]);
    assert_eq!(list("caller=5550102".into()).await, [v2]);
    assert_eq!(list("caller=acme".into()).await, [v5, v1, v4]);
    assert!(list("caller=%25".into()).await.is_empty(), "% is literal");
    assert_eq!(list("folder=saved".into()).await, [v2]);
    assert_eq!(list(format!("since={}", time(150))).await, [v5, v1, v2]);
    assert_eq!(list(format!("until={}", time(150))).await, [v3, v4]);
    assert_eq!(
        list(format!("since={}&until={}", time(90), time(45))).await,
        [v1]
    );
    assert_eq!(list("has_transcript=false".into()).await, [v3]);
    assert_eq!(list("has_transcript=true".into()).await, [v5, v1, v2, v4]);
    // Full text, stemmed: "invoice" finds "invoices"; web search syntax.
    assert_eq!(list("q=invoice".into()).await, [v5, v1, v4]);
    assert_eq!(list("q=invoice%20-paid".into()).await, [v5, v1]);
    assert_eq!(list("q=%22call%20me%20back%22".into()).await, [v5, v1, v2]);
    assert!(
        list("q=%22back%20me%20call%22".into()).await.is_empty(),
        "a phrase is in order"
    );
    assert_eq!(
        list("q=invoice%20or%20monday".into()).await,
        [v5, v1, v2, v4]
    );
    assert_eq!(list(format!("q=invoice&account_id={a}")).await, [v1, v4]);
    assert!(list("q=refund".into()).await.is_empty());

    // The snippet marks what was found; a list item carries the row's fields.
    let page = api
        .json(&token, "/api/v1/voicemails?q=invoice&limit=2")
        .await;
    let first = &page["items"][1];
    assert_eq!(first["id"], v1);
    assert_eq!(first["caller_id_name"], "Robert Acme");
    assert_eq!(first["to_user"], "1010");
    assert_eq!(first["mailbox_id"], "box-a1");
    assert_eq!(first["duration_ms"], 500);
    assert_eq!(first["has_transcript"], true);
    assert!(
        first.get("metadata").is_none(),
        "lists leave KAZOO's document out"
    );
    let marked: Vec<&str> = first["transcript"]["snippet"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["match"] == true)
        .map(|p| p["text"].as_str().unwrap())
        .collect();
    assert_eq!(marked, ["invoices"]);
    let whole: String = first["transcript"]["snippet"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["text"].as_str().unwrap())
        .collect();
    assert!(whole.contains("calling about your invoices"), "{whole}");
    assert!(page["next_cursor"].is_string(), "a third match follows");
    // Without a search, the snippet is the transcript's start, unmarked.
    let page = api.json(&token, "/api/v1/voicemails?folder=saved").await;
    let snippet = &page["items"][0]["transcript"]["snippet"];
    assert_eq!(
        snippet[0]["text"],
        "Your order is ready. Call me back on Monday."
    );
    assert_eq!(snippet[0]["match"], false);
    assert_eq!(page["items"][0]["transcript"]["hook"], "transcriber");
    let page = api
        .json(&token, "/api/v1/voicemails?has_transcript=false")
        .await;
    assert_eq!(page["items"][0]["transcript"], Value::Null);

    // One voicemail: the row, KAZOO's document, transcriptions with segments.
    let detail = api.json(&token, &format!("/api/v1/voicemails/{v1}")).await;
    assert_eq!(detail["attachment_name"], "invoice-1.wav");
    assert_eq!(
        detail["metadata"]["metadata"]["caller_id_name"],
        "Robert Acme"
    );
    assert_eq!(
        detail["audio_url"],
        format!("/api/v1/voicemails/{v1}/audio")
    );
    let transcription = &detail["transcriptions"][0];
    assert_eq!(transcription["hook"], "transcriber");
    assert_eq!(transcription["status"], "done");
    assert_eq!(transcription["segments"].as_array().unwrap().len(), 3);
    assert_eq!(transcription["segments"][1]["start_ms"], 2000);
    assert_eq!(
        transcription["segments"][1]["text"],
        "calling about your invoices."
    );
    let silent = api.json(&token, &format!("/api/v1/voicemails/{v3}")).await;
    assert_eq!(silent["transcriptions"][0]["status"], "failed");
    assert_eq!(silent["transcriptions"][0]["segments"], Value::Null);

    api.stop().await;
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_reads_only_its_accounts() {
    let (stack, api) = stack_with_api(Backend::Fs).await;
    let (a, b) = (hex32(), hex32());
    let ids = upload_all(&stack, &messages(&a, &b), Utc::now()).await;
    let (v1, v5) = (&ids[0], &ids[4]);
    let for_a = api.token("tenant-a", Some(&[&a]));
    let for_b = api.token("tenant-b", Some(&[&b]));
    let for_both = api.token("both", Some(&[&a, &b]));
    let everyone = api.token("support", None);

    let count = |token: &str, query: &str| {
        let (api, token, query) = (&api, token.to_owned(), query.to_owned());
        async move { api.all_ids(&token, &query, 2).await.len() }
    };
    assert_eq!(count(&for_a, "").await, 4);
    assert_eq!(count(&for_b, "").await, 1);
    assert_eq!(count(&for_both, "").await, 5);
    assert_eq!(count(&everyone, "").await, 5);
    // Asking for the other account's voicemails finds none; searching neither.
    assert_eq!(count(&for_a, &format!("account_id={b}")).await, 0);
    assert_eq!(count(&for_a, "q=invoice").await, 2);
    assert_eq!(count(&for_b, "caller=robert").await, 1);
    // Not by id, not its audio: 404, as for a voicemail that does not exist.
    for path in [
        format!("/api/v1/voicemails/{v5}"),
        format!("/api/v1/voicemails/{v5}/audio"),
        format!("/api/v1/voicemails/{}", uuid::Uuid::now_v7()),
    ] {
        let answer = api.get(Some(&for_a), &path).await;
        assert_eq!(answer.status, 404, "{path}");
        assert_eq!(answer.error_code(), "not_found");
        assert_eq!(answer.json()["message"], "no such voicemail");
    }
    let head = api
        .request(
            Method::HEAD,
            Some(&for_a),
            &format!("/api/v1/voicemails/{v5}/audio"),
            &[],
        )
        .await;
    assert_eq!(head.status, 404);
    assert_eq!(
        api.get(Some(&for_b), &format!("/api/v1/voicemails/{v5}/audio"))
            .await
            .status,
        200
    );
    assert_eq!(
        api.get(Some(&for_a), &format!("/api/v1/voicemails/{v1}"))
            .await
            .status,
        200
    );

    // No token, another scheme, a token in the URL, an unknown token: refused.
    let none = api.get(None, "/api/v1/voicemails").await;
    assert_eq!(none.status, 401);
    assert_eq!(none.error_code(), "unauthorized");
    assert_eq!(
        none.header("www-authenticate"),
        Some("Bearer realm=\"vmpipe\"")
    );
    let basic = api
        .request(
            Method::GET,
            None,
            "/api/v1/voicemails",
            &[("authorization", &format!("Basic {for_a}"))],
        )
        .await;
    assert_eq!(basic.status, 401);
    let in_url = api
        .get(None, &format!("/api/v1/voicemails?token={for_a}"))
        .await;
    assert_eq!(in_url.status, 401, "a token in the URL is no token");
    let in_url = api
        .get(Some(&for_a), &format!("/api/v1/voicemails?token={for_a}"))
        .await;
    assert_eq!(in_url.status, 400);
    assert!(
        in_url.json()["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `token`")
    );
    assert_eq!(
        api.get(Some("vmpipe_not-a-token"), "/api/v1/voicemails")
            .await
            .status,
        401
    );

    // Listed without the secrets; revoked by name, refused from the next request on.
    let (ok, listed, _) = api.command(&["token", "list"]);
    assert!(ok);
    let tokens: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = tokens.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["tenant-a", "tenant-b", "both", "support"]);
    assert_eq!(tokens[0]["accounts"], serde_json::json!([a]));
    assert_eq!(tokens[3]["accounts"], Value::Null);
    for secret in [&for_a, &for_b, &for_both, &everyone] {
        assert!(!listed.contains(secret.as_str()), "a token is never listed");
    }
    let (ok, _, stderr) = api.command(&["token", "create", "--name", "tenant-a", "--all-accounts"]);
    assert!(!ok, "names are unique");
    assert!(stderr.contains("tenant-a"), "{stderr}");
    let (ok, revoked, _) = api.command(&["token", "revoke", "tenant-a"]);
    assert!(ok, "{revoked}");
    let refused = api.get(Some(&for_a), "/api/v1/voicemails").await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["message"], "the token is unknown or revoked");
    let (ok, _, _) = api.command(&["token", "revoke", "tenant-a"]);
    assert!(!ok, "nothing left to revoke");
    assert_eq!(
        api.get(Some(&for_b), "/api/v1/voicemails").await.status,
        200
    );
    let (_, listed, _) = api.command(&["token", "list"]);
    let first: Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert!(first["revoked_at"].is_string());
    assert!(first["last_used_at"].is_string(), "its use was recorded");

    // The access log names tokens, never shows them (nor the query strings that held one).
    let log = api.log();
    assert!(log.contains("\"token\":\"tenant-b\""), "{log}");
    for secret in [&for_a, &for_b, &for_both, &everyone] {
        assert!(!log.contains(secret.as_str()), "a token in the log:\n{log}");
    }

    api.stop().await;
    stack.finish().await;
}

/// Pages follow `time` then `id` from where the last one ended: voicemails indexed meanwhile
/// (newer, older, or at the very same time) never repeat or hide one already listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_stable_while_voicemails_arrive() {
    let mut stack = Stack::start(false).await;
    stack.start_worker().await;
    let api = TestApi::start(&stack.worker_settings()).await;
    let account = hex32();
    let base = Utc::now() - chrono::Duration::days(1);
    // 60 voicemails, three at each of 20 times (ties broken by id).
    for i in 0..60 {
        insert_row(
            stack.pool(),
            &account,
            base - chrono::Duration::minutes(i / 3),
        )
        .await;
    }
    let expected: Vec<String> = sqlx::query_scalar(
        "SELECT id::text FROM voicemails ORDER BY coalesce(recorded_at, received_at) DESC, id DESC",
    )
    .fetch_all(stack.pool())
    .await
    .unwrap();
    let token = api.token("pager", None);
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut page_number = 0i64;
    loop {
        let mut path = "/api/v1/voicemails?limit=7".to_owned();
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = api.json(&token, &path).await;
        seen.extend(ids_of(&page));
        // Between pages: one newer than all, one at the time of the last one listed, one
        // older than all.
        page_number += 1;
        let last_time: DateTime<Utc> = page["items"]
            .as_array()
            .unwrap()
            .last()
            .map(|i| i["time"].as_str().unwrap().parse().unwrap())
            .unwrap_or(base);
        insert_row(stack.pool(), &account, Utc::now()).await;
        insert_row(stack.pool(), &account, last_time).await;
        insert_row(
            stack.pool(),
            &account,
            base - chrono::Duration::days(10 + page_number),
        )
        .await;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no voicemail is listed twice");
    let listed_originals: Vec<&String> = seen.iter().filter(|id| expected.contains(id)).collect();
    assert_eq!(
        listed_originals,
        expected.iter().collect::<Vec<_>>(),
        "every voicemail there at the start is listed once, in order"
    );
    api.stop().await;
    stack.finish().await;
}

/// A real spoken voicemail ("... calling about your invoice ...", 8.5 s of MP3) uploaded under
/// an account of its own, indexed and transcribed: the account and the file.
pub(crate) async fn upload_spoken(stack: &Stack) -> (String, Vec<u8>) {
    let audio = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/spoken/invoice.mp3"
    ))
    .unwrap();
    let account = hex32();
    stack
        .upload(&account, "invoice.mp3", &audio, "audio/mpeg")
        .await;
    stack
        .finished_transcription("invoice.mp3", "transcriber", WAIT)
        .await;
    (account, audio)
}

/// A row as the worker writes it, at `time` (tests of paging and searching); its id.
pub(crate) async fn insert_row(
    pool: &sqlx::PgPool,
    account: &str,
    time: DateTime<Utc>,
) -> uuid::Uuid {
    let id = uuid::Uuid::now_v7();
    let name = format!("{}.wav", hex32());
    sqlx::query(
        "INSERT INTO voicemails (id, storage_key, account_id, attachment_name, recorded_at,
             size_bytes, sha256, upload_mode, received_at, job_id)
         VALUES ($1, $2, $3, $4, $5, 1, 'x', 'raw', now(), $1)",
    )
    .bind(id)
    .bind(format!("{account}/d/{name}"))
    .bind(account)
    .bind(&name)
    .bind(time)
    .execute(pool)
    .await
    .unwrap();
    id
}

async fn audio_is_served_with_ranges_and_etags(backend: Backend) {
    let (stack, api) = stack_with_api(backend).await;
    let (account, audio) = upload_spoken(&stack).await;
    let token = api.token("player", Some(&[&account]));
    let page = api.json(&token, "/api/v1/voicemails").await;
    let url = page["items"][0]["audio_url"].as_str().unwrap().to_owned();
    let size = audio.len();

    let whole = api.get(Some(&token), &url).await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body.as_ref(), audio.as_slice());
    assert_eq!(whole.header("content-type"), Some("audio/mpeg"));
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    let etag = whole.header("etag").unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", sha256_hex(&audio)));

    let range = |spec: &str| {
        let (api, token, url, spec) = (&api, &token, &url, spec.to_owned());
        async move {
            api.request(Method::GET, Some(token), url, &[("range", &spec)])
                .await
        }
    };
    let part = range("bytes=0-99").await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body.as_ref(), &audio[..100]);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 0-99/{size}").as_str())
    );
    let middle = range(&format!("bytes={}-", size / 2)).await;
    assert_eq!(middle.status, 206);
    assert_eq!(middle.body.as_ref(), &audio[size / 2..]);
    let tail = range("bytes=-10").await;
    assert_eq!(tail.body.as_ref(), &audio[size - 10..]);
    let past = range(&format!("bytes={size}-")).await;
    assert_eq!(past.status, 416);
    assert_eq!(
        past.header("content-range"),
        Some(format!("bytes */{size}").as_str())
    );
    assert_eq!(past.error_code(), "range_not_satisfiable");

    let cached = api
        .request(Method::GET, Some(&token), &url, &[("if-none-match", &etag)])
        .await;
    assert_eq!(cached.status, 304);
    assert!(cached.body.is_empty());
    let changed = api
        .request(
            Method::GET,
            Some(&token),
            &url,
            &[("range", "bytes=0-9"), ("if-range", "\"another\"")],
        )
        .await;
    assert_eq!(
        changed.status, 200,
        "If-Range of another version: the whole file"
    );
    assert_eq!(changed.body.len(), size);
    let head = api.request(Method::HEAD, Some(&token), &url, &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(size.to_string().as_str())
    );
    assert!(head.body.is_empty());

    api.stop().await;
    stack.finish().await;
}
on_both_backends!(audio_is_served_with_ranges_and_etags);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_400_that_says_why() {
    let mut stack = Stack::start(false).await;
    // The api first, on a database that does not exist yet: it makes and migrates it.
    let api = TestApi::start(&stack.worker_settings()).await;
    stack.start_worker().await;
    let token = api.token("tester", None);
    let cases: &[(&str, &str, &str)] = &[
        ("cursor=bm90LWEtY3Vyc29y", "bad_cursor", "bad cursor"),
        ("cursor=%%%", "bad_cursor", "not a cursor"),
        ("cursor=1_abc", "bad_cursor", "not a cursor"),
        (
            "limit=1000000000",
            "bad_parameter",
            "limit must be a whole number from 1 to 200",
        ),
        ("limit=0", "bad_parameter", "limit must be"),
        ("limit=ten", "bad_parameter", "limit must be"),
        (
            "limit=1&limit=2",
            "bad_parameter",
            "duplicate field `limit`",
        ),
        ("q=%22%22", "bad_query", "no words to search for"),
        ("q=!!%20-", "bad_query", "no letter or digit"),
        ("q=%20%20", "bad_query", "no words to search for"),
        ("q=a%00b", "bad_parameter", "q holds control characters"),
        (
            "since=yesterday",
            "bad_parameter",
            "since must be an RFC 3339 time",
        ),
        (
            "has_transcript=maybe",
            "bad_parameter",
            "has_transcript must be true or false",
        ),
        ("sort=oldest", "bad_parameter", "unknown field `sort`"),
        ("caller=", "bad_parameter", "caller is empty"),
    ];
    for (query, code, message) in cases {
        let answer = api
            .get(Some(&token), &format!("/api/v1/voicemails?{query}"))
            .await;
        assert_eq!(answer.status, 400, "{query}");
        let body = answer.json();
        assert_eq!(body["error"], *code, "{query}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(message),
            "{query}: {body}"
        );
    }
    // Schema-valid, and nothing to find: an empty page, not an error.
    for query in [
        "q=the",
        "since=2026-12-02T00:00:00Z&until=2026-12-01T00:00:00Z",
        "cursor=0_00000000000000000000000000000000",
    ] {
        let page = api
            .json(&token, &format!("/api/v1/voicemails?{query}"))
            .await;
        assert_eq!(page["items"], serde_json::json!([]), "{query}");
    }
    let q = "x".repeat(600);
    let long = api
        .get(Some(&token), &format!("/api/v1/voicemails?q={q}"))
        .await;
    assert_eq!(long.status, 400);
    let bad_id = api.get(Some(&token), "/api/v1/voicemails/42").await;
    assert_eq!(bad_id.status, 400);
    assert!(bad_id.json()["message"].as_str().unwrap().contains("UUID"));
    let extra = api
        .get(
            Some(&token),
            &format!("/api/v1/voicemails/{}?x=1", uuid::Uuid::now_v7()),
        )
        .await;
    assert_eq!(extra.status, 400);
    let nowhere = api.get(Some(&token), "/api/v2/voicemails").await;
    assert_eq!(nowhere.status, 404);
    assert_eq!(nowhere.error_code(), "not_found");
    // The API still answers.
    assert_eq!(
        api.get(Some(&token), "/api/v1/voicemails").await.status,
        200
    );
    api.stop().await;
    stack.finish().await;
}

/// A query that runs past VMPIPE_API_STATEMENT_TIMEOUT_MS is cut off: a 503 that says so,
/// and the api goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_time_is_a_503() {
    let mut stack = Stack::start(false).await;
    stack.start_worker().await;
    let settings = vmpipe_common::Settings {
        api_statement_timeout_ms: 50,
        ..stack.worker_settings()
    };
    let api = TestApi::start(&settings).await;
    let token = api.token("slow", None);
    // A lock the list must wait for, held longer than the timeout.
    let mut lock = stack.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE voicemails IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let answer = api.get(Some(&token), "/api/v1/voicemails").await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.error_code(), "query_timeout");
    assert_eq!(answer.header("retry-after"), Some("2"));
    lock.rollback().await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        api.get(Some(&token), "/api/v1/voicemails").await.status,
        200
    );
    api.stop().await;
    stack.finish().await;
}
