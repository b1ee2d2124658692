//! From a job (and what the probe measured) to a `voicemails` row.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;
use vmpipe_common::VoicemailJob;

use super::clamp;
use super::document::KazooDocument;
use crate::audio::probe::Probed;
use serde_json::value::RawValue;

/// KAZOO timestamps are Gregorian seconds (since year 0); this many separate them from Unix time.
pub(crate) const GREGORIAN_UNIX_OFFSET: i64 = 62_167_219_200;

/// 10000-01-01 in Gregorian seconds: PostgreSQL reads no later timestamp from JSON.
const YEAR_10000: i64 = 315_569_520_000;

pub(crate) fn gregorian_to_utc(seconds: i64) -> Option<DateTime<Utc>> {
    if seconds >= YEAR_10000 {
        return None;
    }
    DateTime::from_timestamp(seconds.checked_sub(GREGORIAN_UNIX_OFFSET)?, 0)
        // Anything before 2000 is not a real recording time (0, or a Unix time by mistake).
        .filter(|t| t.timestamp() >= 946_684_800)
}

/// A `voicemails` row; serialised with the table's column names (see `db::upsert_voicemails`).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct VoicemailRow {
    pub id: Uuid,
    pub storage_key: String,
    pub account_id: Option<String>,
    pub document_id: Option<String>,
    pub attachment_name: String,
    pub mailbox_id: Option<String>,
    pub caller_id_number: Option<String>,
    pub caller_id_name: Option<String>,
    pub call_id: Option<String>,
    pub from_user: Option<String>,
    pub from_realm: Option<String>,
    pub to_user: Option<String>,
    pub to_realm: Option<String>,
    pub folder: Option<String>,
    pub kazoo_length_ms: Option<i32>,
    pub recorded_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i32>,
    pub codec: Option<String>,
    pub sample_rate: Option<i32>,
    pub channels: Option<i16>,
    pub bitrate_bps: Option<i32>,
    pub probe_error: Option<String>,
    pub content_type: Option<String>,
    pub size_bytes: i64,
    pub sha256: String,
    pub upload_mode: String,
    pub received_at: DateTime<Utc>,
    pub request_id: Option<String>,
    pub job_id: Uuid,
    /// KAZOO's document as JSON text, never built in memory.
    pub metadata: Option<Box<RawValue>>,
    /// What of KAZOO's document could not be indexed as sent (cut or dropped), and why.
    pub dropped_metadata: Vec<String>,
}

/// The columns the probe fills: what it measured, or why it could not.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ProbeColumns {
    pub duration_ms: Option<i32>,
    pub codec: Option<String>,
    pub sample_rate: Option<i32>,
    pub channels: Option<i16>,
    pub bitrate_bps: Option<i32>,
    pub probe_error: Option<String>,
}

impl ProbeColumns {
    pub(crate) fn from_probe(probed: &Result<Probed, String>) -> Self {
        match probed {
            Ok(p) => Self {
                duration_ms: Some(clamp_i32(p.duration_ms)),
                codec: Some(p.codec.clone()),
                sample_rate: Some(clamp_i32(u64::from(p.sample_rate))),
                channels: Some(p.channels.min(i16::MAX as u16) as i16),
                bitrate_bps: p.bitrate_bps.map(clamp_i32),
                probe_error: None,
            },
            Err(e) => Self {
                probe_error: Some(e.clone()),
                ..Self::default()
            },
        }
    }
}

impl VoicemailRow {
    /// `id` is used only when the row is new; an existing row keeps its id.
    pub(crate) fn build<D: KazooDocument>(
        job: &VoicemailJob<D>,
        probed: &Result<Probed, String>,
    ) -> Self {
        let doc = job
            .kazoo_document
            .as_ref()
            .map(|d| d.fields())
            .unwrap_or_default();
        let timestamp = doc.integer(|f| &f.timestamp).or(doc.utc_seconds.0);
        let mut dropped_metadata = Vec::new();
        if timestamp.is_some_and(|t| t >= YEAR_10000) {
            dropped_metadata
                .push("recorded_at: KAZOO's timestamp is past the year 9999".to_owned());
        }
        let recorded_at = timestamp
            .and_then(gregorian_to_utc)
            .or_else(|| uploaded_file_time(&job.attachment_name));
        let measured = ProbeColumns::from_probe(probed);
        let mut row = Self {
            id: Uuid::now_v7(),
            storage_key: job.storage_key.clone(),
            account_id: job.account_id.clone(),
            document_id: job.document_id.clone(),
            attachment_name: job.attachment_name.clone(),
            mailbox_id: doc.source_id.0.clone(),
            caller_id_number: doc.text(|f| &f.caller_id_number),
            caller_id_name: doc.text(|f| &f.caller_id_name),
            call_id: doc.text(|f| &f.call_id),
            from_user: doc.text(|f| &f.from_user),
            from_realm: doc.text(|f| &f.from_realm),
            to_user: doc.text(|f| &f.to_user),
            to_realm: doc.text(|f| &f.to_realm),
            folder: doc.text(|f| &f.folder),
            kazoo_length_ms: doc
                .integer(|f| &f.length)
                .and_then(|l| i32::try_from(l).ok()),
            recorded_at,
            duration_ms: measured.duration_ms,
            codec: measured.codec,
            sample_rate: measured.sample_rate,
            channels: measured.channels,
            bitrate_bps: measured.bitrate_bps,
            probe_error: measured.probe_error,
            content_type: job.content_type.clone(),
            size_bytes: i64::try_from(job.size_bytes).unwrap_or(i64::MAX),
            // Filled in by the pipeline when the job has none (see `pipeline::sha256_file`).
            sha256: job.sha256.clone().unwrap_or_default(),
            upload_mode: job.upload_mode.as_str().to_owned(),
            received_at: job.received_at,
            request_id: Some(job.request_id.clone()).filter(|r| !r.is_empty()),
            job_id: job.job_id,
            metadata: job.kazoo_document.as_ref().map(KazooDocument::to_raw),
            dropped_metadata,
        };
        row.strip_nul_characters();
        row.cut_long_text();
        row
    }

    /// Text PostgreSQL cannot index (over about 2.7 KB) is cut, and noted.
    fn cut_long_text(&mut self) {
        let dropped = &mut self.dropped_metadata;
        for (column, field) in [
            ("account_id", &mut self.account_id),
            ("document_id", &mut self.document_id),
            ("mailbox_id", &mut self.mailbox_id),
            ("caller_id_number", &mut self.caller_id_number),
            ("caller_id_name", &mut self.caller_id_name),
            ("call_id", &mut self.call_id),
            ("from_user", &mut self.from_user),
            ("from_realm", &mut self.from_realm),
            ("to_user", &mut self.to_user),
            ("to_realm", &mut self.to_realm),
            ("folder", &mut self.folder),
            ("content_type", &mut self.content_type),
            ("request_id", &mut self.request_id),
        ] {
            if let Some(text) = field {
                clamp::cut(column, text, dropped);
            }
        }
    }

    /// PostgreSQL text and jsonb cannot hold U+0000; a caller name with one must not make the
    /// voicemail unindexable.
    fn strip_nul_characters(&mut self) {
        for field in [
            &mut self.account_id,
            &mut self.document_id,
            &mut self.mailbox_id,
            &mut self.caller_id_number,
            &mut self.caller_id_name,
            &mut self.call_id,
            &mut self.from_user,
            &mut self.from_realm,
            &mut self.to_user,
            &mut self.to_realm,
            &mut self.folder,
            &mut self.content_type,
            &mut self.request_id,
            &mut self.probe_error,
        ]
        .into_iter()
        .flatten()
        {
            strip_nul(field);
        }
        strip_nul(&mut self.attachment_name);
        if let Some(metadata) = &mut self.metadata
            && metadata.get().contains("\\u0000")
            && let Ok(mut value) = serde_json::from_str::<Value>(metadata.get())
        {
            // Rare: only then is the document built, to take the characters out.
            strip_nul_json(&mut value);
            *metadata = value.to_raw();
        }
    }
}

fn strip_nul(text: &mut String) {
    if text.contains('\0') {
        text.retain(|c| c != '\0');
    }
}

fn strip_nul_json(value: &mut Value) {
    match value {
        Value::String(s) => strip_nul(s),
        Value::Array(items) => items.iter_mut().for_each(strip_nul_json),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(mut k, v)| {
                        strip_nul(&mut k);
                        (k, v)
                    })
                    .collect();
            }
            map.values_mut().for_each(strip_nul_json);
        }
        _ => {}
    }
}

fn clamp_i32(value: u64) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// Crossbar uploads are named `uploaded_file_{Gregorian seconds}[.ext]`.
pub(crate) fn uploaded_file_time(attachment_name: &str) -> Option<DateTime<Utc>> {
    let rest = attachment_name.strip_prefix("uploaded_file_")?;
    let digits = rest.split('.').next()?;
    gregorian_to_utc(digits.parse().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmpipe_common::UploadMode;

    fn job(document: Option<Value>, attachment: &str) -> VoicemailJob {
        VoicemailJob {
            schema_version: 1,
            job_id: Uuid::now_v7(),
            storage_key: format!("acct/doc/{attachment}"),
            account_id: Some("acct".into()),
            document_id: Some("doc".into()),
            attachment_name: attachment.into(),
            content_type: Some("audio/mpeg".into()),
            size_bytes: 1234,
            sha256: Some("ab".into()),
            received_at: Utc::now(),
            upload_mode: UploadMode::Multipart,
            kazoo_document: document,
            request_id: "req".into(),
        }
    }

    /// The document as the row holds it (JSON text), parsed back.
    fn parsed(metadata: Option<Box<RawValue>>) -> Option<Value> {
        metadata.map(|raw| serde_json::from_str(raw.get()).unwrap())
    }

    #[test]
    fn gregorian_seconds_convert() {
        // 63962891419 Gregorian = 1795672219 Unix = 2026-11-26T05:50:19Z
        let t = gregorian_to_utc(63_962_891_419).unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-26T05:50:19+00:00");
        assert_eq!(gregorian_to_utc(0), None);
        assert_eq!(
            gregorian_to_utc(1_795_672_219),
            None,
            "a Unix time is not Gregorian"
        );
    }

    #[test]
    fn mailbox_message_fields_are_extracted() {
        let doc = serde_json::json!({
            "source_id": "0868323f42a354a54d152691b4cf3d6f",
            "utc_seconds": 63962891000u64,
            "metadata": {
                "call_id": "dd27@10.26.0.81", "caller_id_name": "Alice Example",
                "caller_id_number": "+14155550100", "from_user": "+14155550100",
                "from_realm": "sip.example.com", "length": 5320, "timestamp": 63962891419u64,
                "to_user": "1010", "to_realm": "sip.example.com", "folder": "new"
            }
        });
        let row = VoicemailRow::build(&job(Some(doc.clone()), "b766.mp3"), &Err("no audio".into()));
        assert_eq!(
            row.mailbox_id.as_deref(),
            Some("0868323f42a354a54d152691b4cf3d6f")
        );
        assert_eq!(row.caller_id_number.as_deref(), Some("+14155550100"));
        assert_eq!(row.caller_id_name.as_deref(), Some("Alice Example"));
        assert_eq!(row.to_user.as_deref(), Some("1010"));
        assert_eq!(row.folder.as_deref(), Some("new"));
        assert_eq!(row.kazoo_length_ms, Some(5320));
        assert_eq!(
            row.recorded_at.unwrap().to_rfc3339(),
            "2026-11-26T05:50:19+00:00",
            "metadata.timestamp wins over utc_seconds"
        );
        assert_eq!(row.probe_error.as_deref(), Some("no audio"));
        assert_eq!(row.duration_ms, None);
        assert_eq!(parsed(row.metadata), Some(doc));
    }

    #[test]
    fn nul_characters_are_dropped() {
        let doc = serde_json::json!({"metadata": {"caller_id_name": "A\0B"}, "k\0": ["x\0"]});
        let row = VoicemailRow::build(&job(Some(doc), "a.mp3"), &Err("e".into()));
        assert_eq!(row.caller_id_name.as_deref(), Some("AB"));
        assert_eq!(parsed(row.metadata).unwrap()["k"][0], "x");
    }

    #[test]
    fn plain_upload_knows_only_the_path_and_the_file_name_time() {
        let row = VoicemailRow::build(
            &job(None, "uploaded_file_63962891419.mp3"),
            &Err("x".into()),
        );
        assert_eq!(row.caller_id_number, None);
        assert_eq!(row.mailbox_id, None);
        assert_eq!(
            row.recorded_at.unwrap().to_rfc3339(),
            "2026-11-26T05:50:19+00:00"
        );
        let row = VoicemailRow::build(&job(None, "b766.mp3"), &Err("x".into()));
        assert_eq!(row.recorded_at, None);
    }
}
