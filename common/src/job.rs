//! The job message: the contract between ingest (producer) and worker (consumer).
//!
//! It travels as JSON in a persistent AMQP message and sits in the local journal while the
//! broker is away. Add fields as `Option` (older messages lack them); bump
//! [`JOB_SCHEMA_VERSION`] only for a change a worker must refuse to guess about.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const JOB_SCHEMA_VERSION: u32 = 1;

/// What was stored, and what KAZOO told us about it.
///
/// `D` is how KAZOO's document is held: parsed (`serde_json::Value`, the default) or, for a
/// reader that must check it before parsing it (the worker: its size and depth are the
/// sender's choice), as raw JSON text ([`RawJob`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VoicemailJob<D = serde_json::Value> {
    pub schema_version: u32,
    /// Unique per upload (UUIDv7, time-ordered); a re-PUT of the same key gets a new one.
    pub job_id: Uuid,
    /// Canonical storage key (see [`crate::key::StorageKey`]): the identity of the voicemail.
    pub storage_key: String,
    /// KAZOO account id, when the path holds one.
    pub account_id: Option<String>,
    /// KAZOO document (media) id: the multipart part name, or read from the path.
    pub document_id: Option<String>,
    /// KAZOO attachment name: the multipart file part name, or the last path segment.
    pub attachment_name: String,
    /// The content type KAZOO declared for the file (may be wrong: the worker sniffs).
    pub content_type: Option<String>,
    /// Size of the stored (decoded) file.
    pub size_bytes: u64,
    /// SHA-256 of the stored file, lower-case hex, when the sender computed it. Ingest leaves it
    /// out (hashing is not for the upload's critical path): the worker hashes the stored file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub received_at: DateTime<Utc>,
    pub upload_mode: UploadMode,
    /// The JSON document of a multipart upload (KAZOO's whole public document), as sent.
    pub kazoo_document: Option<D>,
    /// The HTTP request id of the upload, to follow one voicemail through the logs.
    pub request_id: String,
}

/// How the file arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadMode {
    /// The request body was the file.
    Raw,
    /// `multipart/*`, file part sent as is.
    Multipart,
    /// `multipart/*`, file part base64-encoded (`base64_encode_data`).
    MultipartBase64,
    /// Found in storage without a row by `worker reconcile` (how it arrived is unknown).
    Reconciled,
}

impl UploadMode {
    pub fn as_str(self) -> &'static str {
        match self {
            UploadMode::Raw => "raw",
            UploadMode::Multipart => "multipart",
            UploadMode::MultipartBase64 => "multipart_base64",
            UploadMode::Reconciled => "reconciled",
        }
    }
}

impl VoicemailJob {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a job always serialises")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A job with KAZOO's document still as JSON text: reading it costs the bytes of the message,
/// whatever its document expands to, and has no nesting limit to trip on.
pub type RawJob = VoicemailJob<Box<serde_json::value::RawValue>>;

impl RawJob {
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl<D> VoicemailJob<D> {
    /// The same job with its document turned into another form (parsed, or dropped).
    pub fn map_document<E>(self, f: impl FnOnce(Option<D>) -> Option<E>) -> VoicemailJob<E> {
        VoicemailJob {
            schema_version: self.schema_version,
            job_id: self.job_id,
            storage_key: self.storage_key,
            account_id: self.account_id,
            document_id: self.document_id,
            attachment_name: self.attachment_name,
            content_type: self.content_type,
            size_bytes: self.size_bytes,
            sha256: self.sha256,
            received_at: self.received_at,
            upload_mode: self.upload_mode,
            kazoo_document: f(self.kazoo_document),
            request_id: self.request_id,
        }
    }
}

/// What the path of a storage key says about the voicemail (KAZOO's default URL layout is
/// `{account_id}/[{owner_id}/]{document_id}/{attachment_name}`, possibly below folders).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PathFacts {
    pub account_id: Option<String>,
    pub document_id: Option<String>,
    pub attachment_name: String,
}

impl PathFacts {
    pub fn from_segments(segments: &[String]) -> Self {
        let attachment_name = segments.last().cloned().unwrap_or_default();
        let account_index = segments.iter().position(|s| is_account_id(s));
        let document_id = match segments.len() {
            n if n >= 2 && account_index != Some(n - 2) => Some(segments[n - 2].clone()),
            _ => None,
        };
        Self {
            account_id: account_index.map(|i| segments[i].clone()),
            document_id,
            attachment_name,
        }
    }
}

/// KAZOO account ids are 32 lower-case hex characters; `system_data` is the account segment of
/// system-wide storage (and its credentials probe).
pub fn is_account_id(segment: &str) -> bool {
    segment == "system_data"
        || (segment.len() == 32
            && segment
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// KAZOO's credentials probe writes `{32 hex}_test_credentials_file.txt`: a name that may be
/// a probe file. Whether it is one, only its content tells ([`is_credentials_probe_file`]).
pub fn is_credentials_probe(attachment_name: &str) -> bool {
    probe_random(attachment_name).is_some()
}

/// The 32 hex characters of a probe file's name.
fn probe_random(attachment_name: &str) -> Option<&str> {
    attachment_name
        .strip_suffix("_test_credentials_file.txt")
        .filter(|random| random.len() == 32 && random.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What KAZOO's credentials probe stores: `some random content: {R}` (53 bytes), as
/// `{R}_test_credentials_file.txt`, the same 32 hex characters `R` in both.
pub const CREDENTIALS_PROBE_LEN: u64 = 53;

/// Whether a stored file is KAZOO's credentials probe, not a voicemail: its name and its
/// content both are what KAZOO's probe writes (a voicemail merely named like one is not).
pub fn is_credentials_probe_file(attachment_name: &str, content: &[u8]) -> bool {
    probe_random(attachment_name).is_some_and(|random| {
        content
            .strip_prefix(b"some random content: ")
            .is_some_and(|rest| rest == random.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(path: &str) -> Vec<String> {
        path.split('/').map(String::from).collect()
    }

    #[test]
    fn default_kazoo_layout() {
        let f = PathFacts::from_segments(&segs(
            "4e3005310add6229778caf6babfe7cfb/202611-5d6ae452d29a4304072654da8f79b46e/b766.mp3",
        ));
        assert_eq!(
            f.account_id.as_deref(),
            Some("4e3005310add6229778caf6babfe7cfb")
        );
        assert_eq!(
            f.document_id.as_deref(),
            Some("202611-5d6ae452d29a4304072654da8f79b46e")
        );
        assert_eq!(f.attachment_name, "b766.mp3");
    }

    #[test]
    fn owner_and_folders() {
        let f = PathFacts::from_segments(&segs(
            "some_prefix/4e3005310add6229778caf6babfe7cfb/0868323f42a354a54d152691b4cf3d6f/doc/rec.mp3",
        ));
        assert_eq!(
            f.account_id.as_deref(),
            Some("4e3005310add6229778caf6babfe7cfb")
        );
        assert_eq!(f.document_id.as_deref(), Some("doc"));
    }

    #[test]
    fn account_then_file_has_no_document() {
        let f = PathFacts::from_segments(&segs("4e3005310add6229778caf6babfe7cfb/a.mp3"));
        assert_eq!(f.document_id, None);
        let f = PathFacts::from_segments(&segs("a.mp3"));
        assert_eq!((f.account_id, f.document_id), (None, None));
    }

    #[test]
    fn probe_names() {
        assert!(is_credentials_probe(
            "0123456789abcdef0123456789abcdef_test_credentials_file.txt"
        ));
        assert!(!is_credentials_probe("x_test_credentials_file.txt"));
    }

    #[test]
    fn a_probe_file_is_known_by_its_content_too() {
        let random = "0123456789abcdef0123456789abcdef";
        let name = format!("{random}_test_credentials_file.txt");
        let content = format!("some random content: {random}");
        assert_eq!(content.len() as u64, CREDENTIALS_PROBE_LEN);
        assert!(is_credentials_probe_file(&name, content.as_bytes()));
        assert!(!is_credentials_probe_file(&name, b"ID3\x04 a voicemail"));
        let other = "fedcba9876543210fedcba9876543210";
        let mismatched = format!("some random content: {other}");
        assert!(!is_credentials_probe_file(&name, mismatched.as_bytes()));
    }

    #[test]
    fn a_raw_job_reads_any_document_and_maps_to_a_parsed_one() {
        let mut deep = String::from("1");
        for _ in 0..1000 {
            deep = format!("[{deep}]");
        }
        let job = format!(
            r#"{{"schema_version":1,"job_id":"{}","storage_key":"a/b/c.mp3","account_id":null,
            "document_id":null,"attachment_name":"c.mp3","content_type":null,"size_bytes":1,
            "received_at":"2026-12-01T00:00:00Z","upload_mode":"raw","kazoo_document":{deep},
            "request_id":"r"}}"#,
            Uuid::now_v7()
        );
        assert!(
            VoicemailJob::from_json(job.as_bytes()).is_err(),
            "too deep to parse"
        );
        let raw = RawJob::parse(job.as_bytes()).unwrap();
        assert!(raw.kazoo_document.as_ref().unwrap().get().len() > 2000);
        let parsed: VoicemailJob = raw.map_document(|_| None);
        assert_eq!(parsed.storage_key, "a/b/c.mp3");
        assert_eq!(parsed.kazoo_document, None);
    }

    #[test]
    fn job_round_trips() {
        let job = VoicemailJob {
            schema_version: JOB_SCHEMA_VERSION,
            job_id: Uuid::now_v7(),
            storage_key: "a/b/c.mp3".into(),
            account_id: None,
            document_id: Some("b".into()),
            attachment_name: "c.mp3".into(),
            content_type: Some("audio/mpeg".into()),
            size_bytes: 3,
            sha256: Some("00".into()),
            received_at: Utc::now(),
            upload_mode: UploadMode::MultipartBase64,
            kazoo_document: Some(serde_json::json!({"id": "b"})),
            request_id: "r".into(),
        };
        let json = job.to_json();
        assert!(String::from_utf8_lossy(&json).contains("\"upload_mode\":\"multipart_base64\""));
        assert_eq!(VoicemailJob::from_json(&json).unwrap(), job);
    }
}
