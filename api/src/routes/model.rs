//! What the API answers with: the JSON shapes, their OpenAPI schemas, and the rows they are
//! read from.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// The columns of [`Voicemail`], for `SELECT` lists (`v` is `voicemails`).
pub(crate) const VOICEMAIL_COLUMNS: &str = "v.id, v.storage_key, v.account_id, v.document_id, \
    v.attachment_name, v.mailbox_id, v.caller_id_number, v.caller_id_name, v.call_id, \
    v.from_user, v.from_realm, v.to_user, v.to_realm, v.folder, v.kazoo_length_ms, \
    v.recorded_at, v.duration_ms, v.codec, v.sample_rate, v.channels, v.bitrate_bps, \
    v.probe_error, v.content_type, v.size_bytes, v.sha256, v.upload_mode, v.received_at, \
    v.indexed_at, v.request_id, v.job_id, v.dropped_metadata, \
    coalesce(v.recorded_at, v.received_at) AS time";

/// A row of `voicemails` (all but `metadata`, KAZOO's document), as the README describes
/// each column.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
pub(crate) struct Voicemail {
    pub id: Uuid,
    /// The file's key in storage (KAZOO's path: account/document/attachment).
    pub storage_key: String,
    /// KAZOO account id.
    pub account_id: Option<String>,
    pub document_id: Option<String>,
    pub attachment_name: String,
    /// KAZOO voicemail box id.
    pub mailbox_id: Option<String>,
    pub caller_id_number: Option<String>,
    pub caller_id_name: Option<String>,
    pub call_id: Option<String>,
    pub from_user: Option<String>,
    pub from_realm: Option<String>,
    /// The called user: usually the mailbox number.
    pub to_user: Option<String>,
    pub to_realm: Option<String>,
    /// KAZOO folder when stored: new, saved, deleted.
    pub folder: Option<String>,
    /// The length KAZOO claimed.
    pub kazoo_length_ms: Option<i32>,
    /// When the message was left (KAZOO's timestamp).
    pub recorded_at: Option<DateTime<Utc>>,
    /// Duration measured from the audio; null when it could not be measured.
    pub duration_ms: Option<i32>,
    pub codec: Option<String>,
    pub sample_rate: Option<i32>,
    pub channels: Option<i16>,
    pub bitrate_bps: Option<i32>,
    /// Why the duration is unknown.
    pub probe_error: Option<String>,
    /// As declared by KAZOO.
    pub content_type: Option<String>,
    pub size_bytes: i64,
    /// Of the file, lower-case hex (the audio's ETag).
    pub sha256: String,
    pub upload_mode: String,
    /// When ingest stored the file.
    pub received_at: DateTime<Utc>,
    pub indexed_at: DateTime<Utc>,
    pub request_id: Option<String>,
    pub job_id: Uuid,
    /// What of KAZOO's document was cut or dropped.
    pub dropped_metadata: Vec<String>,
    /// The time lists are ordered by (newest first): `recorded_at`, or `received_at` when
    /// KAZOO gave none.
    pub time: DateTime<Utc>,
}

/// A piece of a transcript snippet: `match` marks the words the search found.
#[derive(Serialize, ToSchema, Debug, PartialEq, Eq)]
pub(crate) struct SnippetPart {
    pub text: String,
    #[serde(rename = "match")]
    pub matched: bool,
}

/// The part of a transcript shown in a list: around the words found, with `q`; its start
/// otherwise.
#[derive(Serialize, ToSchema)]
pub(crate) struct TranscriptSnippet {
    /// The hook (transcriber) that wrote the transcript.
    pub hook: String,
    pub language: Option<String>,
    pub snippet: Vec<SnippetPart>,
}

/// One voicemail of a list.
#[derive(Serialize, ToSchema)]
pub(crate) struct ListItem {
    #[serde(flatten)]
    pub voicemail: Voicemail,
    /// Whether a transcript with text exists.
    pub has_transcript: bool,
    /// A transcript's snippet (null when there is no transcript).
    pub transcript: Option<TranscriptSnippet>,
    /// Where its audio is (relative to the API's address).
    #[schema(example = "/api/v1/voicemails/01938a6e-7a4c-7d1e-9b1c-2f6c1d8e4a10/audio")]
    pub audio_url: String,
}

/// A page of voicemails, newest first.
#[derive(Serialize, ToSchema)]
pub(crate) struct ListPage {
    pub items: Vec<ListItem>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A transcript segment: milliseconds from the start of the voicemail.
#[derive(Serialize, Deserialize, ToSchema, Clone)]
pub(crate) struct Segment {
    pub start_ms: i64,
    pub end_ms: i64,
    pub text: String,
}

/// A voicemail's row in `transcriptions` (one per hook).
#[derive(Serialize, sqlx::FromRow, ToSchema)]
pub(crate) struct Transcription {
    pub hook: String,
    /// pending, running, done or failed.
    pub status: String,
    /// The transcript (of the last successful run).
    pub text: Option<String>,
    pub language: Option<String>,
    pub confidence: Option<f64>,
    /// Why the last attempt failed.
    pub error: Option<String>,
    pub attempts: i32,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The transcript by segment, in order; null when the hook reports none.
    #[sqlx(json(nullable))]
    pub segments: Option<Vec<Segment>>,
}

/// A voicemail with KAZOO's document and every transcription.
#[derive(Serialize, ToSchema)]
pub(crate) struct VoicemailDetail {
    #[serde(flatten)]
    pub voicemail: Voicemail,
    /// KAZOO's document as uploaded (null for a raw upload, or when it could not be kept).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    pub transcriptions: Vec<Transcription>,
    pub audio_url: String,
}

/// The audio of voicemail `id`, as the API serves it.
pub(crate) fn audio_url(id: Uuid) -> String {
    format!("/api/v1/voicemails/{id}/audio")
}
