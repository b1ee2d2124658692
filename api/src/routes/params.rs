//! The query string of `GET /api/v1/voicemails`, checked into [`Filters`]: an unknown or
//! repeated parameter, a value out of bounds or a cursor not made here is a 400 that names it.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::error::ApiError;

/// The most voicemails a page holds.
pub(crate) const MAX_LIMIT: i64 = 200;
pub(crate) const DEFAULT_LIMIT: i64 = 50;
/// The longest filter value (an account id is 32 characters, a caller's name a few dozen).
const MAX_VALUE: usize = 256;
/// The longest search (`q`).
const MAX_QUERY: usize = 512;

/// Filters of a list; each narrows it (all must hold).
#[derive(Deserialize, IntoParams, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only this KAZOO account's voicemails.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    pub account_id: Option<String>,
    /// Only this voicemail box (its KAZOO id).
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    pub mailbox_id: Option<String>,
    /// Only this mailbox number (the called user, `to_user`).
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    pub mailbox_number: Option<String>,
    /// A part of the caller's number or name, case-insensitive.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    pub caller: Option<String>,
    /// Full-text search over the transcripts (web search syntax: `invoice -paid`,
    /// `"call me back"`, `invoice or bill`), English stemming. At least one letter or digit;
    /// a search of common words only (`the`) finds nothing.
    #[param(
        min_length = 1,
        max_length = 512,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*\w[^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub q: Option<String>,
    /// From this time on (RFC 3339), by `time`.
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<String>,
    /// Before this time (RFC 3339), by `time`.
    #[param(value_type = Option<String>, format = DateTime)]
    pub until: Option<String>,
    /// Only this KAZOO folder (new, saved, deleted).
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    pub folder: Option<String>,
    /// Only voicemails with (true) or without (false) a transcript.
    #[param(value_type = Option<bool>)]
    pub has_transcript: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = "^-?[0-9]{1,16}_[0-9a-f]{32}$")]
    pub cursor: Option<String>,
    /// Voicemails per page, 1 to 200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
}

/// Where a page starts: after this voicemail, in the list's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub time: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    /// `{microseconds since 1970}_{id as 32 hex digits}`: any string of that form is a valid
    /// place to start (the pattern the OpenAPI document gives).
    pub(crate) fn encode(&self) -> String {
        format!("{}_{}", self.time.timestamp_micros(), self.id.simple())
    }

    pub(crate) fn decode(cursor: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::BadCursor(format!("not a cursor: {:?}", truncated(cursor)));
        let (micros, id) = cursor.split_once('_').ok_or_else(bad)?;
        let digits = micros.strip_prefix('-').unwrap_or(micros);
        if digits.is_empty()
            || digits.len() > 16
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || id.len() != 32
            || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(bad());
        }
        let micros: i64 = micros.parse().map_err(|_| bad())?;
        let time = DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
        let id = Uuid::try_parse(id).map_err(|_| bad())?;
        Ok(Cursor { time, id })
    }
}

fn truncated(value: &str) -> String {
    value.chars().take(64).collect()
}

/// A checked list request.
#[derive(Debug, Default)]
pub(crate) struct Filters {
    pub account_id: Option<String>,
    pub mailbox_id: Option<String>,
    pub mailbox_number: Option<String>,
    /// As a `LIKE` pattern (`%part%`, its `%`, `_` and `\` escaped).
    pub caller_pattern: Option<String>,
    pub q: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub folder: Option<String>,
    pub has_transcript: Option<bool>,
    pub cursor: Option<Cursor>,
    pub limit: i64,
}

fn text(name: &str, value: Option<String>, max: usize) -> Result<Option<String>, ApiError> {
    let Some(value) = value else { return Ok(None) };
    if value.is_empty() {
        return Err(ApiError::BadParameter(format!("{name} is empty")));
    }
    if value.chars().count() > max {
        return Err(ApiError::BadParameter(format!(
            "{name} is longer than {max} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::BadParameter(format!(
            "{name} holds control characters"
        )));
    }
    Ok(Some(value))
}

fn time(name: &str, value: Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(value) = text(name, value, 64)? else {
        return Ok(None);
    };
    DateTime::parse_from_rfc3339(&value)
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|e| {
            ApiError::BadParameter(format!(
                "{name} must be an RFC 3339 time such as 2026-12-01T09:00:00Z, not {value:?} ({e})"
            ))
        })
}

fn like_pattern(part: &str) -> String {
    let mut pattern = String::with_capacity(part.len() + 2);
    pattern.push('%');
    for c in part.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

impl ListParams {
    pub(crate) fn check(self) -> Result<Filters, ApiError> {
        let limit = match text("limit", self.limit, 32)? {
            None => DEFAULT_LIMIT,
            Some(value) => match value.parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::BadParameter(format!(
                        "limit must be a whole number from 1 to {MAX_LIMIT}, not {value:?}"
                    )));
                }
            },
        };
        let has_transcript = match text("has_transcript", self.has_transcript, 8)?.as_deref() {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => {
                return Err(ApiError::BadParameter(format!(
                    "has_transcript must be true or false, not {other:?}"
                )));
            }
        };
        let q = text("q", self.q, MAX_QUERY)?;
        if q.as_deref()
            .is_some_and(|q| !q.chars().any(char::is_alphanumeric))
        {
            return Err(ApiError::BadQuery(
                "q has no words to search for (no letter or digit)".into(),
            ));
        }
        let filters = Filters {
            account_id: text("account_id", self.account_id, MAX_VALUE)?,
            mailbox_id: text("mailbox_id", self.mailbox_id, MAX_VALUE)?,
            mailbox_number: text("mailbox_number", self.mailbox_number, MAX_VALUE)?,
            caller_pattern: text("caller", self.caller, MAX_VALUE)?.map(|c| like_pattern(&c)),
            q,
            since: time("since", self.since)?,
            until: time("until", self.until)?,
            folder: text("folder", self.folder, MAX_VALUE)?,
            has_transcript,
            cursor: self.cursor.as_deref().map(Cursor::decode).transpose()?,
            limit,
        };
        Ok(filters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_its_round_trip_and_a_forged_one_is_refused() {
        let cursor = Cursor {
            time: DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        for bad in [
            "",
            "!!",
            "bm90IGEgY3Vyc29y",
            &"A".repeat(200),
            "1_0193",
            "12345678901234567_01930000000070008000000000000001",
            "1_0193000000007000800000000000000G",
        ] {
            assert!(
                matches!(Cursor::decode(bad), Err(ApiError::BadCursor(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn bounds_are_checked_and_named() {
        let limit = |l: &str| {
            ListParams {
                limit: Some(l.into()),
                ..Default::default()
            }
            .check()
        };
        assert_eq!(limit("200").unwrap().limit, 200);
        for bad in ["0", "201", "1000000000", "-1", "ten", "1e3"] {
            let e = limit(bad).unwrap_err().to_string();
            assert!(e.contains("limit"), "{e}");
        }
        let e = ListParams {
            since: Some("yesterday".into()),
            ..Default::default()
        }
        .check()
        .unwrap_err();
        assert!(e.to_string().contains("since"), "{e}");
        let e = ListParams {
            q: Some("x".repeat(600)),
            ..Default::default()
        }
        .check()
        .unwrap_err();
        assert!(e.to_string().contains("q is longer"), "{e}");
    }

    #[test]
    fn a_caller_is_matched_literally() {
        assert_eq!(like_pattern("50%_a\\"), "%50\\%\\_a\\\\%");
    }
}
