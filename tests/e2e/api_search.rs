//! Full-text search at scale: a rare word is found window of time after window (the GIN index
//! with `listed_at`'s btree), a common one by reading voicemails newest first; both give every
//! match once, newest first, across pages, within the token's accounts.

use chrono::{Duration, Utc};
use vmpipe_tests::*;

use crate::api::insert_row;

/// A transcript for voicemail `id` (as the worker writes one), with its time and account.
async fn insert_transcript(pool: &sqlx::PgPool, id: uuid::Uuid, text: &str) {
    sqlx::query(
        "INSERT INTO transcriptions (voicemail_id, hook, status, text, audio_received_at,
             listed_at, account_id)
         SELECT id, 'whisper', 'done', $2, received_at, coalesce(recorded_at, received_at),
             account_id
         FROM voicemails WHERE id = $1",
    )
    .bind(id)
    .bind(text)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rare_and_common_words_are_found_newest_first_across_pages() {
    let mut stack = Stack::start(false).await;
    stack.start_worker().await;
    let api = TestApi::start(&stack.worker_settings()).await;
    let (a, b) = (hex32(), hex32());
    let now = Utc::now();
    // 600 voicemails over two years, every one saying "hello"; "zebra" in seven of account A's
    // (from half an hour to 600 days old: every window of the search) and one of B's.
    let zebra_ages_hours = [0, 5, 50, 480, 2400, 7200, 14400];
    let mut zebras = Vec::new();
    for i in 0..600i64 {
        let account = if i % 5 == 0 { &b } else { &a };
        let age = Duration::hours(i * 29) + Duration::minutes(30);
        let id = insert_row(stack.pool(), account, now - age).await;
        insert_transcript(stack.pool(), id, "hello, please call me back").await;
    }
    for hours in zebra_ages_hours {
        let at = now - Duration::hours(hours) - Duration::minutes(10);
        let id = insert_row(stack.pool(), &a, at).await;
        insert_transcript(stack.pool(), id, "a zebra called about the invoice").await;
        zebras.push(id.to_string());
    }
    let other = insert_row(stack.pool(), &b, now - Duration::hours(3)).await;
    insert_transcript(stack.pool(), other, "another zebra").await;
    // The planner's statistics, as a running database has them.
    sqlx::query("ANALYZE transcriptions")
        .execute(stack.pool())
        .await
        .unwrap();

    // A rare word: windowed (the plan says so), every match once, newest first, on pages of 2.
    let (ok, plan, stderr) = api.command(&["explain", "q=zebra&limit=2", "--accounts", &a]);
    assert!(ok, "{stderr}");
    assert!(
        plan.contains("-- query 1 of at most"),
        "not windowed:\n{plan}"
    );
    let for_a = api.token("a", Some(&[&a]));
    assert_eq!(api.all_ids(&for_a, "q=zebra", 2).await, zebras);
    let everyone = api.token("all", None);
    let all = api.all_ids(&everyone, "q=zebra", 3).await;
    assert_eq!(all.len(), 8);
    assert_eq!(all[0], zebras[0]);
    assert_eq!(all[1], other.to_string(), "B's, 3 hours old, comes second");
    assert_eq!(all[2..], zebras[1..]);
    // Within since/until, and with a cursor far back.
    let until = (now - Duration::hours(100)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(
        api.all_ids(&for_a, &format!("q=zebra&until={until}"), 2)
            .await,
        zebras[3..]
    );
    let since = (now - Duration::hours(1000)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(
        api.all_ids(&for_a, &format!("q=zebra&since={since}"), 50)
            .await,
        zebras[..4]
    );
    let for_b = api.token("b", Some(&[&b]));
    assert_eq!(api.all_ids(&for_b, "q=zebra", 2).await, [other.to_string()]);

    // A common word ("hello" in nearly all): read newest first, the same rows as the list.
    let (ok, plan, _) = api.command(&["explain", "q=hello&limit=50"]);
    assert!(ok);
    assert!(!plan.contains("-- query 1 of at most"), "windowed:\n{plan}");
    let hellos = api.all_ids(&for_a, "q=hello", 97).await;
    let everything_but_zebras: Vec<String> = api
        .all_ids(&for_a, "", 200)
        .await
        .into_iter()
        .filter(|id| !zebras.contains(id))
        .collect();
    assert_eq!(hellos, everything_but_zebras);
    assert_eq!(hellos.len(), 480);
    api.stop().await;
    stack.finish().await;
}
