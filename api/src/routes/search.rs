//! How a full-text search (`q`) finds a page newest first, whatever a word's frequency.
//!
//! - A common word (PostgreSQL's statistics say more than [`COMMON`] of the transcripts have
//!   it) is found by reading voicemails newest first and keeping those whose transcript has it
//!   ([`Strategy::Scan`]): a page needs a few hundred, never the word's whole posting list.
//! - Any other search reads the matches one window of time at a time
//!   ([`Strategy::Windows`]): the GIN index of `text_search` and the btree of `listed_at`
//!   together, widening the window ([`SEARCH_WINDOWS_HOURS`]) until one holds a page. A rare
//!   word has few matches at all; a rarer-than-common one fills a page within a few windows.
//!
//! The planner left to itself guesses a rare word's frequency badly (it is not among its most
//! common elements) and reads every voicemail for it: seconds, at a million rows.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, QueryBuilder};

use super::list::push_scope;
use super::params::Filters;

/// The share of transcripts above which a word counts as common.
const COMMON: f64 = 0.02;
/// How far back from where the page starts each query of a windowed search looks.
/// After the last, every match: a word with fewer than a page in the last 24 days is rare
/// enough for its whole posting list (a window of half a year would cost more, in the btree).
const SEARCH_WINDOWS_HOURS: [i64; 4] = [1, 8, 72, 24 * 24];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Strategy {
    Scan,
    Windows,
}

/// How to run the search `q`; `None` when it has no word to look for (only common words such
/// as "the").
pub(crate) async fn strategy(pool: &PgPool, q: &str) -> Result<Option<Strategy>, sqlx::Error> {
    let (words, transcripts): (i32, f32) = sqlx::query_as(
        "SELECT numnode(websearch_to_tsquery('english', $1)),
                (SELECT reltuples FROM pg_class WHERE oid = 'transcriptions'::regclass)",
    )
    .bind(q)
    .fetch_one(pool)
    .await?;
    if words == 0 {
        return Ok(None);
    }
    let plan: sqlx::types::Json<serde_json::Value> = sqlx::query_scalar(
        "EXPLAIN (FORMAT JSON) SELECT 1 FROM transcriptions t
         WHERE t.text_search @@ websearch_to_tsquery('english', $1)",
    )
    .bind(q)
    .fetch_one(pool)
    .await?;
    let estimated = plan.0[0]["Plan"]["Plan Rows"].as_f64().unwrap_or(0.0);
    let share = estimated / f64::from(transcripts.max(1.0));
    Ok(Some(if share > COMMON {
        Strategy::Scan
    } else {
        Strategy::Windows
    }))
}

/// The part of the timeline one query reads: `time` from `since` on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub since: Option<DateTime<Utc>>,
    pub strategy: Option<Strategy>,
    /// Nothing older is left to read: what this window finds is the answer.
    pub is_last: bool,
}

/// The windows to try, widest last (one unbounded window unless the search is windowed).
pub(crate) fn windows(filters: &Filters, strategy: Option<Strategy>) -> Vec<Window> {
    let whole = Window {
        since: filters.since,
        strategy,
        is_last: true,
    };
    if strategy != Some(Strategy::Windows) {
        return vec![whole];
    }
    let start = filters
        .cursor
        .map(|c| c.time)
        .or(filters.until)
        .unwrap_or_else(Utc::now);
    let mut windows = Vec::new();
    for hours in SEARCH_WINDOWS_HOURS {
        let since = start - chrono::Duration::hours(hours);
        if filters.since.is_some_and(|floor| floor >= since) {
            break;
        }
        windows.push(Window {
            since: Some(since),
            strategy,
            is_last: false,
        });
    }
    windows.push(whole);
    windows
}

/// The search's condition on `v` (voicemails).
pub(crate) fn push_condition(
    query: &mut QueryBuilder<Postgres>,
    q: &str,
    filters: &Filters,
    accounts: Option<&[String]>,
    window: Window,
) {
    if window.strategy == Some(Strategy::Scan) {
        query
            .push(
                " AND EXISTS (SELECT 1 FROM transcriptions t WHERE t.voicemail_id = v.id \
                 AND t.text_search @@ websearch_to_tsquery('english', ",
            )
            .push_bind(q.to_owned())
            .push("))");
        return;
    }
    // The window's matches first, then their voicemails: never the planner's guess of how
    // common a word is.
    query
        .push(
            " AND v.id = ANY(ARRAY(SELECT t.voicemail_id FROM transcriptions t \
             WHERE t.text_search @@ websearch_to_tsquery('english', ",
        )
        .push_bind(q.to_owned())
        .push(")");
    if let Some(since) = window.since {
        query.push(" AND t.listed_at >= ").push_bind(since);
    }
    match (filters.cursor, filters.until) {
        (Some(cursor), _) => {
            query.push(" AND t.listed_at <= ").push_bind(cursor.time);
        }
        (None, Some(until)) => {
            query.push(" AND t.listed_at < ").push_bind(until);
        }
        (None, None) => {}
    }
    push_scope(query, "t.account_id", accounts, filters.account_id.as_ref());
    query.push("))");
}
