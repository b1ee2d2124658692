//! An event as it is stored in the outbox and as sinks send it: the JSON schema, version 1.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

/// The `version` field of every event. A change that removes or renames a field, or changes a
/// field's meaning, gets a new version; new fields do not.
pub const SCHEMA_VERSION: u32 = 1;

/// An `events` row, with what a delivery needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct StoredEvent {
    pub seq: i64,
    pub event_id: Uuid,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    pub account_id: Option<String>,
    pub voicemail_id: Uuid,
    pub voicemail: Json<Value>,
    pub transcript: Option<Json<Value>>,
}

/// An event as sinks send it (see the README's "Events" for every field).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub version: u32,
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    pub account_id: Option<String>,
    /// The `voicemails` row without `metadata`, as it was when the event happened, plus
    /// `audio_url` when `VMPIPE_API_PUBLIC_URL` is set.
    pub voicemail: Value,
    /// Transcription events: `hook`, and `text`, `language`, `confidence` (transcribed) or
    /// `error` (transcription_failed), and `attempts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript: Option<Value>,
}

impl StoredEvent {
    /// The event as sent, with the audio URL under `public_url` (the api's address).
    pub(crate) fn to_event(&self, public_url: Option<&str>) -> Event {
        let mut voicemail = self.voicemail.0.clone();
        if let (Some(url), Some(fields)) = (public_url, voicemail.as_object_mut()) {
            fields.insert(
                "audio_url".into(),
                Value::String(format!(
                    "{url}/api/v1/voicemails/{}/audio",
                    self.voicemail_id
                )),
            );
        }
        Event {
            version: SCHEMA_VERSION,
            event_id: self.event_id,
            kind: self.kind.clone(),
            occurred_at: self.occurred_at,
            account_id: self.account_id.clone(),
            voicemail,
            transcript: self.transcript.as_ref().map(|t| t.0.clone()),
        }
    }
}

impl Event {
    /// A voicemail field as text (`caller_id_number`, say), if it has one.
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.voicemail.get(name).and_then(Value::as_str)
    }

    /// A transcript field as text (`text`, `error`).
    pub(crate) fn transcript_field(&self, name: &str) -> Option<&str> {
        self.transcript.as_ref()?.get(name).and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> StoredEvent {
        StoredEvent {
            seq: 1,
            event_id: Uuid::nil(),
            kind: "voicemail.indexed".into(),
            occurred_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            account_id: Some("a".repeat(32)),
            voicemail_id: Uuid::from_u128(7),
            voicemail: Json(serde_json::json!({"id": Uuid::from_u128(7), "duration_ms": 1200})),
            transcript: None,
        }
    }

    #[test]
    fn the_audio_url_is_there_only_with_a_public_url() {
        let event = stored().to_event(None);
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["version"], 1);
        assert_eq!(json["type"], "voicemail.indexed");
        assert!(json["voicemail"].get("audio_url").is_none());
        assert!(json.get("transcript").is_none());
        let event = stored().to_event(Some("https://vm.example.com"));
        assert_eq!(
            event.voicemail["audio_url"],
            "https://vm.example.com/api/v1/voicemails/00000000-0000-0000-0000-000000000007/audio"
        );
    }
}
