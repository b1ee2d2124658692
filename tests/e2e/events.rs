//! Events: the outbox written with each change, and its delivery to RabbitMQ, webhooks and
//! e-mail, at least once, in each voicemail's order, through crashes and sinks that are down.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use vmpipe_common::Settings;
use vmpipe_common::settings::{HookAudio, NotifyKind, NotifySettings, Secret, SmtpTls};
use vmpipe_tests::*;

use crate::scripting::worker;

const ACCOUNT: &str = "4e3005310add6229778caf6babfe7cfb";
const SECRET: &str = "a-webhook-secret-of-the-test";

/// A transcriber that says the same thing of every voicemail.
fn saying(text: &str) -> vmpipe_common::settings::HookSettings {
    shell_hook("echo", HookAudio::Original, &format!("echo '{text}'"))
}

/// A name of the test's own (an exchange, a worker id).
fn own(prefix: &str) -> String {
    format!("{prefix}.{}", uuid::Uuid::new_v4().simple())
}

async fn events_of(stack: &Stack) -> Vec<(String, uuid::Uuid)> {
    sqlx::query_as("SELECT type, event_id FROM events ORDER BY seq")
        .fetch_all(stack.pool())
        .await
        .unwrap()
}

/// The deliveries of `sink`: (event type, status, attempts, last_error).
async fn deliveries(stack: &Stack, sink: &str) -> Vec<(String, String, i32, Option<String>)> {
    sqlx::query_as(
        "SELECT e.type, d.status, d.attempts, d.last_error
         FROM event_deliveries d JOIN events e USING (seq) WHERE d.sink = $1 ORDER BY d.seq",
    )
    .bind(sink)
    .fetch_all(stack.pool())
    .await
    .unwrap()
}

/// Waits until every delivery of `sink` is settled (delivered or failed) and there are `count`.
async fn wait_settled(stack: &Stack, sink: &str, count: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let settled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM event_deliveries
             WHERE sink = $1 AND status IN ('delivered', 'failed')",
        )
        .bind(sink)
        .fetch_one(stack.pool())
        .await
        .unwrap();
        if settled >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{settled} of {count} deliveries to {sink} settled after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqp_consumer_gets_indexed_then_transcribed_once_each() {
    let exchange = own("vmpipe.events.test");
    let mut consumer = EventConsumer::bind(&exchange).await;
    let mut stack = Stack::start(false).await;
    let mut settings = stack.worker_settings();
    settings.hooks = vec![saying("please call me back about the invoice")];
    settings.notify = vec![amqp_sink("bus", &exchange)];
    settings.api_public_url = Some("https://voicemail.example.com/".into());
    stack.start_worker_with(settings).await;
    stack.upload_wav(ACCOUNT, "first.wav").await;

    let got = consumer.take(2, WAIT).await;
    assert_eq!(got[0].kind(), "voicemail.indexed", "{got:#?}");
    assert_eq!(got[1].kind(), "voicemail.transcribed", "{got:#?}");
    assert_eq!(got[0].routing_key, format!("voicemail.indexed.{ACCOUNT}"));
    assert_eq!(
        got[1].routing_key,
        format!("voicemail.transcribed.{ACCOUNT}")
    );
    for event in &got {
        assert!(event.persistent, "persistent: {event:?}");
        assert_eq!(event.message_id.as_deref(), Some(event.event_id()));
        assert_eq!(event.body["version"], 1);
        assert_eq!(event.body["account_id"], ACCOUNT);
        let voicemail = &event.body["voicemail"];
        assert_eq!(voicemail["attachment_name"], "first.wav");
        assert_eq!(voicemail["caller_id_number"], "+14155550100");
        assert_eq!(voicemail["duration_ms"], 300);
        assert!(voicemail.get("metadata").is_none(), "no KAZOO document");
        let id = voicemail["id"].as_str().unwrap();
        assert_eq!(
            voicemail["audio_url"],
            format!("https://voicemail.example.com/api/v1/voicemails/{id}/audio")
        );
    }
    assert!(got[0].body.get("transcript").is_none());
    let transcript = &got[1].body["transcript"];
    assert_eq!(transcript["hook"], "echo");
    assert_eq!(transcript["text"], "please call me back about the invoice");
    assert_ne!(got[0].event_id(), got[1].event_id());

    // Exactly once each, in a clean run.
    let more = consumer.drain(Duration::from_secs(2)).await;
    assert!(more.is_empty(), "nothing more: {more:#?}");
    let recorded = deliveries(&stack, "bus").await;
    assert_eq!(
        recorded,
        vec![
            ("voicemail.indexed".into(), "delivered".into(), 1, None),
            ("voicemail.transcribed".into(), "delivered".into(), 1, None),
        ]
    );
    stack.finish().await;
    consumer.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_tells_a_newer_upload_and_a_prune_but_not_a_job_delivered_again() {
    let mut stack = Stack::start(false).await;
    let path = format!("/{ACCOUNT}/doc-a/a.wav");
    stack.put_wav(&path, "a.wav", &wav_pcm16(8000, 300)).await;
    // The upload's job, delivered three times (RabbitMQ redelivers after a crash).
    let (job, _) = stack.queue.next(WAIT).await.expect("the job");
    for _ in 0..3 {
        stack.queue.publish(&job.to_json()).await;
    }
    // One job at a time: once a later upload is indexed, the copies before it were too.
    let settings = Settings {
        worker_concurrency: 1,
        ..stack.worker_settings()
    };
    stack.start_worker_with(settings).await;
    stack
        .put_wav(
            &format!("/{ACCOUNT}/doc-b/b.wav"),
            "b.wav",
            &wav_pcm16(8000, 300),
        )
        .await;
    wait_for_count(stack.pool(), "SELECT count(*) FROM voicemails", 2, WAIT).await;
    let told = events_of(&stack).await;
    assert_eq!(
        told.len(),
        2,
        "one event per voicemail, none for the copies: {told:?}"
    );
    stack.put_wav(&path, "a.wav", &wav_pcm16(8000, 600)).await;
    wait_for_count(stack.pool(), "SELECT count(*) FROM events", 3, WAIT).await;
    let told = events_of(&stack).await;
    assert_eq!(told[0].0, "voicemail.indexed");
    assert_eq!(told[1].0, "voicemail.indexed");
    assert_eq!(told[2].0, "voicemail.updated");
    let updated: serde_json::Value =
        sqlx::query_scalar("SELECT voicemail FROM events WHERE type = 'voicemail.updated'")
            .fetch_one(stack.pool())
            .await
            .unwrap();
    assert_eq!(updated["duration_ms"], 600, "the newer upload's row");
    stack.stop_worker().await;

    // Prune: the row goes, and its event comes, in one statement.
    sqlx::query("UPDATE voicemails SET received_at = now() - interval '100 days'")
        .execute(stack.pool())
        .await
        .unwrap();
    let output = worker(
        &stack.worker_settings(),
        &["prune", "--older-than", "90d", "--apply", "--pause-ms", "0"],
    )
    .output()
    .expect("worker runs");
    assert!(output.status.success(), "{output:?}");
    let told = events_of(&stack).await;
    assert_eq!(told.len(), 5, "{told:?}");
    assert_eq!(told[3].0, "voicemail.deleted");
    assert_eq!(told[4].0, "voicemail.deleted");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM voicemails")
        .fetch_one(stack.pool())
        .await
        .unwrap();
    assert_eq!(rows, 0);
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answering_500_twice_then_200_gets_three_signed_attempts() {
    let receiver = WebhookReceiver::start(SECRET, vec![500, 500, 200]);
    let refusing = WebhookReceiver::start(SECRET, vec![400]);
    let mut stack = Stack::start(false).await;
    let mut settings = stack.worker_settings();
    settings.notify = vec![
        webhook_sink("crm", &receiver.url, SECRET),
        NotifySettings {
            events: vec!["voicemail.indexed".into()],
            ..webhook_sink("strict", &refusing.url, SECRET)
        },
    ];
    stack.start_worker_with(settings).await;
    stack.upload_wav(ACCOUNT, "hook.wav").await;

    let attempts = receiver.wait_for(3, WAIT).await;
    wait_settled(&stack, "crm", 1, WAIT).await;
    let statuses: Vec<u16> = attempts.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 500, 200]);
    for attempt in &attempts {
        assert!(attempt.signature_ok, "signed with the secret: {attempt:?}");
        assert_eq!(attempt.event_type.as_deref(), Some("voicemail.indexed"));
        assert_eq!(attempt.body["type"], "voicemail.indexed");
        assert_eq!(
            attempt.event_id.as_deref(),
            attempt.body["event_id"].as_str(),
            "the same event each time"
        );
        let timestamp = attempt.timestamp.expect("a timestamp");
        let now = chrono::Utc::now().timestamp() as u64;
        assert!(now.abs_diff(timestamp) < 60, "a current timestamp");
    }
    assert_eq!(attempts[0].event_id, attempts[2].event_id);
    // Backoff: 100 ms, then 200 ms.
    assert!(attempts[1].at - attempts[0].at >= Duration::from_millis(90));
    assert!(attempts[2].at - attempts[1].at >= Duration::from_millis(190));
    let crm = deliveries(&stack, "crm").await;
    assert_eq!(crm.len(), 1);
    let (_, status, tries, error) = &crm[0];
    assert_eq!((status.as_str(), *tries), ("delivered", 3), "{crm:?}");
    assert!(
        error.as_deref().is_some_and(|e| e.contains("500")),
        "the last error is kept: {error:?}"
    );

    // A 400 is final: one attempt, failed, with the answer in last_error.
    wait_settled(&stack, "strict", 1, WAIT).await;
    let strict = deliveries(&stack, "strict").await;
    assert_eq!(strict[0].1, "failed", "{strict:?}");
    assert_eq!(strict[0].2, 1);
    assert!(
        strict[0].3.as_deref().unwrap().contains("400"),
        "{strict:?}"
    );
    assert_eq!(refusing.received().len(), 1);
    // A body that is not the signed one does not verify (the receiver's check is real).
    let forged = vmpipe_worker::events::sink::signature(
        b"another-secret-entirely",
        attempts[2].timestamp.unwrap(),
        &attempts[2].raw_body,
    );
    let real = vmpipe_worker::events::sink::signature(
        SECRET.as_bytes(),
        attempts[2].timestamp.unwrap(),
        &attempts[2].raw_body,
    );
    assert_ne!(forged, real);
    stack.finish().await;
    receiver.stop().await;
    refusing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_hangs_delays_neither_the_amqp_sink_nor_indexing() {
    let exchange = own("vmpipe.events.test");
    let mut consumer = EventConsumer::bind(&exchange).await;
    let (_listener, hung_url) = blackhole();
    let mut stack = Stack::start(false).await;
    let mut settings = stack.worker_settings();
    settings.notify = vec![
        NotifySettings {
            timeout_ms: 30_000,
            ..webhook_sink("hung", &hung_url, SECRET)
        },
        amqp_sink("bus", &exchange),
    ];
    stack.start_worker_with(settings).await;
    let started = Instant::now();
    for i in 0..20 {
        stack.upload_wav(ACCOUNT, &format!("m{i}.wav")).await;
    }
    let got = consumer.take(20, WAIT).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "all 20 on the bus in {took:?}, long before the webhook's 30 s timeout"
    );
    assert!(got.iter().all(|e| e.kind() == "voicemail.indexed"));
    let names: BTreeSet<&str> = got
        .iter()
        .map(|e| e.body["voicemail"]["attachment_name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 20, "each voicemail's event");
    let hung: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM event_deliveries WHERE sink = 'hung' AND status = 'sending'",
    )
    .fetch_one(stack.pool())
    .await
    .unwrap();
    assert!(
        hung > 0,
        "the hung webhook's deliveries are still in progress"
    );
    stack.finish().await;
    consumer.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_worker_sigkill_mid_delivery_every_event_arrives_and_duplicates_share_an_event_id()
{
    const COUNT: usize = 200;
    let exchange = own("vmpipe.events.test");
    let mut consumer = EventConsumer::bind(&exchange).await;
    let mut stack = Stack::start(false).await;
    for i in 0..COUNT {
        stack.upload_wav(ACCOUNT, &format!("k{i}.wav")).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let sink = NotifySettings {
        concurrency: Some(4),
        ..amqp_sink("bus", &exchange)
    };
    let config = settings_file(dir.path(), &[], &[sink]);
    let id = own("events-kill");
    let env = [
        ("VMPIPE_CONFIG", config.display().to_string()),
        ("VMPIPE_WORKER_ID", id.clone()),
    ];
    let first = Service::spawn_with_env("worker", &stack.worker_settings(), &env, None).await;
    stack.wait_for_schema().await;
    let mut got = consumer.take(5, WAIT).await;
    first.sigkill().await;
    got.extend(consumer.drain(Duration::from_millis(300)).await);
    let before_kill = got.len();
    let delivered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM event_deliveries WHERE status = 'delivered'")
            .fetch_one(stack.pool())
            .await
            .unwrap();
    assert!(
        (delivered as usize) < COUNT,
        "killed mid-delivery ({delivered} of {COUNT} recorded, {before_kill} received)"
    );

    let second = Service::spawn_with_env("worker", &stack.worker_settings(), &env, None).await;
    wait_for_count(
        stack.pool(),
        "SELECT count(*) FROM voicemails",
        COUNT as i64,
        WAIT,
    )
    .await;
    wait_settled(&stack, "bus", COUNT as i64, WAIT).await;
    got.extend(consumer.drain(Duration::from_secs(2)).await);
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for event in &got {
        *by_id.entry(event.event_id().to_owned()).or_default() += 1;
    }
    let written: BTreeSet<String> = events_of(&stack)
        .await
        .into_iter()
        .map(|(kind, id)| {
            assert_eq!(
                kind, "voicemail.indexed",
                "no event for a job delivered again"
            );
            id.to_string()
        })
        .collect();
    assert_eq!(written.len(), COUNT, "one event per voicemail");
    let received: BTreeSet<String> = by_id.keys().cloned().collect();
    let missing: Vec<_> = written.difference(&received).collect();
    let unknown: Vec<_> = received.difference(&written).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "de-duplicated by event_id, every event and nothing else: missing {missing:?}, unknown {unknown:?}"
    );
    let duplicates: usize = by_id.values().map(|n| n - 1).sum();
    eprintln!(
        "{} received, {duplicates} duplicates after the kill",
        got.len()
    );
    second.sigterm(WAIT).await;
    stack.finish().await;
    consumer.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_sink_sends_a_readable_message_with_the_transcript_and_the_audio() {
    let smtp = SmtpServer::start(Some(("vmpipe", "smtp-password"))).await;
    let mut stack = Stack::start(false).await;
    let mut settings = stack.worker_settings();
    settings.hooks = vec![saying(
        "Hi, it is Alice. Please call me back about the invoice.",
    )];
    settings.notify = vec![NotifySettings {
        events: vec!["voicemail.transcribed".into()],
        smtp_host: Some("127.0.0.1".into()),
        smtp_port: Some(smtp.port),
        smtp_tls: SmtpTls::None,
        smtp_username: Some("vmpipe".into()),
        smtp_password: Some(Secret("smtp-password".into())),
        from: Some("vmpipe <voicemail@example.com>".into()),
        to: vec!["support@example.com".into()],
        attach_audio: true,
        retry_delay_ms: 100,
        ..NotifySettings::new("mail", NotifyKind::Email)
    }];
    stack.start_worker_with(settings).await;
    let audio = wav_pcm16(8000, 2300);
    stack.upload(ACCOUNT, "mail.wav", &audio, "audio/wav").await;

    let mail = smtp.wait_for(1, WAIT).await.remove(0);
    assert_eq!(mail.authenticated_as.as_deref(), Some("vmpipe"));
    assert_eq!(mail.to, ["support@example.com"]);
    let subject = mail.header("subject").expect("a subject");
    assert_eq!(
        subject,
        "Voicemail transcribed from Alice Example (+14155550100) for 1010 (0:02)"
    );
    let text = mail.text();
    for line in [
        "From:      Alice Example (+14155550100)",
        "Mailbox:   1010",
        "Duration:  0:02",
        "Transcript (echo):",
        "Hi, it is Alice. Please call me back about the invoice.",
    ] {
        assert!(text.contains(line), "{line:?} in the message:\n{text}");
    }
    let attachments = mail.attachments();
    assert_eq!(attachments.len(), 1, "the audio");
    assert_eq!(attachments[0].1.as_deref(), Some("mail.wav"));
    assert_eq!(attachments[0].2, audio);
    wait_settled(&stack, "mail", 1, WAIT).await;
    // Only the transcription went out (the sink's events filter).
    assert_eq!(deliveries(&stack, "mail").await.len(), 1);
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_list_shows_deliveries_and_replay_sends_the_same_events_again() {
    let exchange = own("vmpipe.events.test");
    let mut consumer = EventConsumer::bind(&exchange).await;
    let mut stack = Stack::start(false).await;
    let mut settings = stack.worker_settings();
    settings.notify = vec![amqp_sink("bus", &exchange)];
    stack.start_worker_with(settings.clone()).await;
    stack.upload_wav(ACCOUNT, "one.wav").await;
    stack.upload_wav(ACCOUNT, "two.wav").await;
    let first = consumer.take(2, WAIT).await;
    wait_settled(&stack, "bus", 2, WAIT).await;

    let dir = tempfile::tempdir().unwrap();
    let config = settings_file(dir.path(), &[], &settings.notify);
    let run = |args: &[&str]| {
        let output = worker(&stack.worker_settings(), args)
            .env("VMPIPE_CONFIG", &config)
            .output()
            .expect("worker runs");
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let listed: Vec<serde_json::Value> = run(&["events", "list", "--since", "1h"])
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(listed.len(), 2);
    // Two voicemails' events go out side by side: the bus may get them in either order.
    let listed_ids: BTreeSet<&str> = listed
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    let received_ids: BTreeSet<&str> = first.iter().map(|e| e.event_id()).collect();
    assert_eq!(listed_ids, received_ids);
    for event in &listed {
        assert_eq!(event["deliveries"][0]["sink"], "bus");
        assert_eq!(event["deliveries"][0]["status"], "delivered");
        assert_eq!(event["deliveries"][0]["attempts"], 1);
    }
    let none = run(&["events", "list", "--since", "1h", "--status", "failed"]);
    assert!(none.is_empty(), "no failed deliveries: {none}");

    let replayed: serde_json::Value =
        serde_json::from_str(&run(&["events", "replay", "--since", "1h"])).unwrap();
    assert_eq!(replayed["events"], 2);
    assert_eq!(replayed["deliveries"], 2);
    let again = consumer.take(2, WAIT).await;
    let ids = |events: &[AmqpEvent]| -> BTreeSet<String> {
        events.iter().map(|e| e.event_id().to_owned()).collect()
    };
    assert_eq!(ids(&again), ids(&first), "the same event ids");
    let refused = worker(&stack.worker_settings(), &["events", "replay"])
        .env("VMPIPE_CONFIG", &config)
        .output()
        .unwrap();
    assert!(!refused.status.success(), "replay needs --since");
    stack.finish().await;
    consumer.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voicemail_s_transcript_waits_for_its_retried_indexed_event() {
    // The first attempt fails; the retry comes a second later, long after the transcript.
    let receiver = WebhookReceiver::start(SECRET, vec![503, 200]);
    let mut stack = Stack::start(false).await;
    let mut settings = stack.worker_settings();
    settings.hooks = vec![saying("in order")];
    settings.notify = vec![NotifySettings {
        retry_delay_ms: 1000,
        ..webhook_sink("ordered", &receiver.url, SECRET)
    }];
    stack.start_worker_with(settings).await;
    stack.upload_wav(ACCOUNT, "ordered.wav").await;
    stack
        .finished_transcription("ordered.wav", "echo", WAIT)
        .await;
    let got = receiver.wait_for(3, WAIT).await;
    let seen: Vec<(&str, u16)> = got
        .iter()
        .map(|r| (r.event_type.as_deref().unwrap(), r.status))
        .collect();
    assert_eq!(
        seen,
        [
            ("voicemail.indexed", 503),
            ("voicemail.indexed", 200),
            ("voicemail.transcribed", 200),
        ],
        "the transcript waited for the indexed event's retry"
    );
    stack.finish().await;
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_the_sink_still_hands_its_events_out_to_it() {
    let exchange = own("vmpipe.events.test");
    let mut consumer = EventConsumer::bind(&exchange).await;
    let mut stack = Stack::start(false).await;
    let mut settings = stack.worker_settings();
    settings.notify = vec![amqp_sink("bus", &exchange)];
    settings.worker_id = Some(own("bus-worker"));
    stack.start_worker_with(settings).await;
    // A second worker sharing the queue and the outbox, with no [[notify]] tables: it indexes
    // (and fans out) about half of the voicemails.
    let other = TestWorker::start(Settings {
        worker_id: Some(own("other-worker")),
        ..stack.worker_settings()
    });
    for i in 0..30 {
        stack.upload_wav(ACCOUNT, &format!("w{i}.wav")).await;
    }
    let got = consumer.take(30, WAIT).await;
    let names: BTreeSet<&str> = got
        .iter()
        .map(|e| e.body["voicemail"]["attachment_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        30,
        "every voicemail's event, whoever indexed it"
    );
    let indexed_by: i64 = sqlx::query_scalar("SELECT count(DISTINCT seen_by) FROM event_sinks")
        .fetch_one(stack.pool())
        .await
        .unwrap();
    assert_eq!(indexed_by, 1, "one worker runs the sink");
    other.stop().await;
    stack.finish().await;
    consumer.delete().await;
}
