//! `GET /api/v1/voicemails`: the voicemails the token may read, filtered, newest first, in
//! keyset pages (a page starts after the last one's final voicemail, so inserts meanwhile
//! neither repeat nor skip any).

use actix_web::{HttpRequest, HttpResponse, web};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::model::{
    ListItem, ListPage, SnippetPart, TranscriptSnippet, VOICEMAIL_COLUMNS, Voicemail, audio_url,
};
use super::params::{Cursor, Filters, ListParams};
use super::query_string;
use super::search;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::server::State;

/// Marks that `ts_headline` puts around the words found (private-use characters: no
/// transcript holds them).
const MARK_START: char = '\u{E000}';
const MARK_END: char = '\u{E001}';
/// The start of a transcript shown when there is no search.
const PLAIN_SNIPPET_CHARS: usize = 160;

#[derive(sqlx::FromRow)]
struct Row {
    #[sqlx(flatten)]
    voicemail: Voicemail,
    has_transcript: bool,
    t_hook: Option<String>,
    t_language: Option<String>,
    t_snippet: Option<String>,
}

/// List voicemails
///
/// Newest first by `time`. Every filter narrows the list; a token sees only its accounts'
/// voicemails (another account's are not there, whatever the filters say).
#[utoipa::path(
    get,
    path = "/api/v1/voicemails",
    tag = "voicemails",
    params(ListParams),
    responses(
        (status = 200, description = "A page of voicemails", body = ListPage),
        (status = 400, description = "A bad parameter, cursor or search", body = crate::error::ErrorBody),
        (status = 401, description = "No token, or an unknown or revoked one", body = crate::error::ErrorBody),
        (status = 503, description = "The database is unavailable or the query ran out of time", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let params: ListParams = query_string(&req)?;
    let filters = params.check()?;
    let mut rows = page_rows(&state.pool, &filters, caller.accounts(), None).await?;
    let next_cursor = if rows.len() as i64 > filters.limit {
        rows.truncate(filters.limit as usize);
        rows.last().map(|row| {
            Cursor {
                time: row.voicemail.time,
                id: row.voicemail.id,
            }
            .encode()
        })
    } else {
        None
    };
    let searched = filters.q.is_some();
    let items = rows.into_iter().map(|row| item(row, searched)).collect();
    Ok(super::json(&ListPage { items, next_cursor }))
}

/// The rows of a page (`limit + 1` at most): one query, or a search's window after window
/// until one holds a page; none for a search of common words only ("the"), which PostgreSQL
/// would match with nothing. With `plans`, each query's `EXPLAIN (ANALYZE, BUFFERS)` too.
async fn page_rows(
    pool: &sqlx::PgPool,
    filters: &Filters,
    accounts: Option<&[String]>,
    mut plans: Option<&mut Vec<String>>,
) -> Result<Vec<Row>, sqlx::Error> {
    let strategy = match &filters.q {
        None => None,
        Some(q) => match search::strategy(pool, q).await? {
            None => return Ok(Vec::new()),
            some => some,
        },
    };
    let windows = search::windows(filters, strategy);
    let mut rows = Vec::new();
    for (n, window) in windows.iter().enumerate() {
        if let Some(plans) = plans.as_deref_mut() {
            let mut query = build("EXPLAIN (ANALYZE, BUFFERS) ", filters, accounts, *window);
            let lines: Vec<String> = query.build_query_scalar().fetch_all(pool).await?;
            if windows.len() > 1 {
                let since = window
                    .since
                    .map_or("the start".to_owned(), |t| t.to_rfc3339());
                plans.push(format!(
                    "-- query {} of at most {}: since {since}",
                    n + 1,
                    windows.len()
                ));
            }
            plans.push(lines.join("\n"));
        }
        rows = build("", filters, accounts, *window)
            .build_query_as()
            .fetch_all(pool)
            .await?;
        if rows.len() as i64 > filters.limit || window.is_last {
            break;
        }
    }
    Ok(rows)
}

fn item(row: Row, searched: bool) -> ListItem {
    let transcript = match (row.t_hook, row.t_snippet) {
        (Some(hook), Some(snippet)) => Some(TranscriptSnippet {
            hook,
            language: row.t_language,
            snippet: if searched {
                marked(&snippet)
            } else {
                plain(&snippet)
            },
        }),
        _ => None,
    };
    let id: Uuid = row.voicemail.id;
    ListItem {
        voicemail: row.voicemail,
        has_transcript: row.has_transcript,
        transcript,
        audio_url: audio_url(id),
    }
}

/// `ts_headline`'s output split at its marks.
fn marked(headline: &str) -> Vec<SnippetPart> {
    let mut parts = Vec::new();
    let mut rest = headline;
    while let Some(start) = rest.find(MARK_START) {
        if start > 0 {
            parts.push(SnippetPart {
                text: rest[..start].to_owned(),
                matched: false,
            });
        }
        let after = &rest[start + MARK_START.len_utf8()..];
        let end = after.find(MARK_END).unwrap_or(after.len());
        parts.push(SnippetPart {
            text: after[..end].to_owned(),
            matched: true,
        });
        rest = after.get(end + MARK_END.len_utf8()..).unwrap_or("");
    }
    if !rest.is_empty() {
        parts.push(SnippetPart {
            text: rest.to_owned(),
            matched: false,
        });
    }
    parts
}

/// The start of a transcript, cut at a word.
fn plain(text: &str) -> Vec<SnippetPart> {
    let text = text.trim();
    let cut = match text.char_indices().nth(PLAIN_SNIPPET_CHARS) {
        None => text.to_owned(),
        Some((at, _)) => {
            let head = &text[..at];
            let head = head.rsplit_once(' ').map_or(head, |(words, _)| words);
            format!("{}…", head.trim_end())
        }
    };
    vec![SnippetPart {
        text: cut,
        matched: false,
    }]
}

/// `column` limited to the token's accounts, written so that an index on the account is read
/// in order: an `= ANY` of several accounts makes PostgreSQL sort their rows (it cannot merge
/// the ordered scans), so one account, or an `account_id` filter within them, is an equality.
pub(super) fn push_scope(
    query: &mut QueryBuilder<Postgres>,
    column: &str,
    accounts: Option<&[String]>,
    asked: Option<&String>,
) {
    match (accounts, asked) {
        (_, Some(asked)) => {
            if accounts.is_some_and(|allowed| !allowed.contains(asked)) {
                // Another account's voicemails: none, whatever else the filters say.
                query.push(" AND false");
            } else {
                query
                    .push(format_args!(" AND {column} = "))
                    .push_bind(asked.clone());
            }
        }
        (None, None) => {}
        (Some([one]), None) => {
            query
                .push(format_args!(" AND {column} = "))
                .push_bind(one.clone());
        }
        (Some(allowed), None) => {
            query
                .push(format_args!(" AND {column} = ANY("))
                .push_bind(allowed.to_vec())
                .push(")");
        }
    }
}

/// The page's query: the voicemails first (over the `*_listed` indexes), `limit + 1` of them
/// to know whether another page follows, then each one's snippet.
fn build(
    prefix: &str,
    filters: &Filters,
    accounts: Option<&[String]>,
    window: search::Window,
) -> QueryBuilder<Postgres> {
    let mut query = QueryBuilder::new(format!("{prefix}WITH page AS (SELECT "));
    query.push(VOICEMAIL_COLUMNS);
    query.push(" FROM voicemails v WHERE true");
    push_scope(
        &mut query,
        "v.account_id",
        accounts,
        filters.account_id.as_ref(),
    );
    let equal = [
        ("v.mailbox_id", &filters.mailbox_id),
        ("v.to_user", &filters.mailbox_number),
        ("v.folder", &filters.folder),
    ];
    for (column, value) in equal {
        if let Some(value) = value {
            query
                .push(format_args!(" AND {column} = "))
                .push_bind(value.clone());
        }
    }
    if let Some(pattern) = &filters.caller_pattern {
        query
            .push(
                " AND (coalesce(v.caller_id_number, '') || ' ' || coalesce(v.caller_id_name, '')) \
                 ILIKE ",
            )
            .push_bind(pattern.clone());
    }
    if let Some(since) = window.since {
        query
            .push(" AND coalesce(v.recorded_at, v.received_at) >= ")
            .push_bind(since);
    }
    if let Some(until) = filters.until {
        query
            .push(" AND coalesce(v.recorded_at, v.received_at) < ")
            .push_bind(until);
    }
    if let Some(q) = &filters.q {
        search::push_condition(&mut query, q, filters, accounts, window);
    }
    if let Some(has) = filters.has_transcript {
        query.push(if has { " AND " } else { " AND NOT " }).push(
            "EXISTS (SELECT 1 FROM transcriptions t WHERE t.voicemail_id = v.id AND t.text <> '')",
        );
    }
    if let Some(cursor) = filters.cursor {
        query
            .push(" AND (coalesce(v.recorded_at, v.received_at), v.id) < (")
            .push_bind(cursor.time)
            .push(", ")
            .push_bind(cursor.id)
            .push(")");
    }
    query
        .push(" ORDER BY coalesce(v.recorded_at, v.received_at) DESC, v.id DESC LIMIT ")
        .push_bind(filters.limit + 1)
        .push(") SELECT page.*, tr.hook AS t_hook, tr.language AS t_language, tr.snippet AS t_snippet, ")
        .push("tr.hook IS NOT NULL AS has_transcript FROM page LEFT JOIN LATERAL (SELECT t.hook, t.language, ");
    match &filters.q {
        Some(q) => {
            query
                .push("ts_headline('english', t.text, websearch_to_tsquery('english', ")
                .push_bind(q.clone())
                .push(format_args!(
                    "), 'StartSel=\"{MARK_START}\", StopSel=\"{MARK_END}\", MaxWords=30, MinWords=12, \
                     MaxFragments=2, FragmentDelimiter=\" … \"') AS snippet, \
                     t.text_search @@ websearch_to_tsquery('english', "
                ))
                .push_bind(q.clone())
                .push(") AS found");
        }
        None => {
            query.push(format_args!(
                "left(t.text, {}) AS snippet, true AS found",
                PLAIN_SNIPPET_CHARS + 1
            ));
        }
    }
    query.push(
        " FROM transcriptions t WHERE t.voicemail_id = page.id AND t.text <> '' \
         ORDER BY found DESC, (t.status = 'done') DESC, t.finished_at DESC NULLS LAST, t.id DESC \
         LIMIT 1) tr ON true ORDER BY page.time DESC, page.id DESC",
    );
    query
}

/// PostgreSQL's plans of the queries the list `query_string` asks for runs (as
/// `GET /api/v1/voicemails?...` would for a token reading `accounts`: a search, one per window
/// until one finds a page), run with `EXPLAIN (ANALYZE, BUFFERS)`: `api explain`.
pub async fn explain(
    pool: &sqlx::PgPool,
    query_string: &str,
    accounts: Option<&[String]>,
) -> Result<String, String> {
    let params: ListParams = web::Query::<ListParams>::from_query(query_string)
        .map_err(|e| format!("bad query string: {e}"))?
        .into_inner();
    let filters = params.check().map_err(|e| e.to_string())?;
    let mut plans = Vec::new();
    page_rows(pool, &filters, accounts, Some(&mut plans))
        .await
        .map_err(|e| format!("PostgreSQL: {e}"))?;
    if plans.is_empty() {
        return Ok("q has no words to search for: no query runs".into());
    }
    Ok(plans.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_headline_is_split_at_its_marks() {
        let parts = marked("the \u{E000}invoice\u{E001} for \u{E000}May\u{E001}");
        let texts: Vec<(&str, bool)> = parts.iter().map(|p| (p.text.as_str(), p.matched)).collect();
        assert_eq!(
            texts,
            [
                ("the ", false),
                ("invoice", true),
                (" for ", false),
                ("May", true)
            ]
        );
        assert_eq!(marked("no marks").len(), 1);
    }

    #[test]
    fn a_long_transcript_is_cut_at_a_word() {
        let long = "word ".repeat(100);
        let text = &plain(&long)[0].text;
        assert!(text.ends_with("word…"), "{text}");
        assert!(text.chars().count() <= PLAIN_SNIPPET_CHARS + 1);
        assert_eq!(plain("short")[0].text, "short");
    }
}
