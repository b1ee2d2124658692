//! KAZOO's document: the JSON part of a multipart upload, passed on in the job as the text it
//! arrived as.
//!
//! A KAZOO document is a few KiB. ingest never builds it into a tree: a tree takes 10 to 30
//! times the text's size in memory (64 uploads of `[0,0,…]` took ingest to 1 GB). It is checked
//! to be JSON within `VMPIPE_MAX_DOCUMENT` (without building it), its top-level `id` read, and
//! spliced into the job's JSON as it came. What its fields hold (and how deep it nests) is the
//! worker's to judge, field by field. A document that fails a check here is dropped, never the
//! voicemail: the file is stored and indexed without it.

use serde::Deserialize;
use serde_json::value::RawValue;

/// A document that passed the checks.
#[derive(Debug)]
pub(crate) struct Document {
    raw: Box<RawValue>,
    /// Its top-level `id`, when that is a string (KAZOO: the document id).
    pub id: Option<String>,
}

/// Why a document was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dropped {
    TooLarge,
    NotJson,
}

impl Dropped {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Dropped::TooLarge => "too_large",
            Dropped::NotJson => "not_json",
        }
    }
}

/// Checks a JSON part (already within `VMPIPE_MAX_DOCUMENT`).
pub(crate) fn inspect(json: &[u8]) -> Result<Document, Dropped> {
    // Validated without being built (serde_json skips what it does not keep, at any depth).
    let raw: Box<RawValue> = serde_json::from_slice(json).map_err(|_| Dropped::NotJson)?;
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
    }
    // Other fields are skipped without being built; a document that is not an object (or has
    // two ids) simply has no id.
    let id = raw
        .get()
        .trim_start()
        .starts_with('{')
        .then(|| serde_json::from_str::<Head<'_>>(raw.get()).ok())
        .flatten()
        .and_then(|head| head.id)
        .and_then(|id| serde_json::from_str::<String>(id.get()).ok());
    Ok(Document { raw, id })
}

impl Document {
    /// `job` (a job's JSON, whose `kazoo_document` is null or absent) with this document in.
    pub(crate) fn splice_into(&self, mut job: Vec<u8>) -> Vec<u8> {
        // A quote inside a JSON string is always escaped, so this is the field itself.
        const NULL_FIELD: &[u8] = b"\"kazoo_document\":null";
        let raw = self.raw.get().as_bytes();
        if let Some(at) = job.windows(NULL_FIELD.len()).position(|w| w == NULL_FIELD) {
            let value = at + NULL_FIELD.len() - b"null".len();
            job.splice(value..value + 4, raw.iter().copied());
            return job;
        }
        let Some(end) = job.iter().rposition(|&b| b == b'}') else {
            return job;
        };
        let mut field = b",\"kazoo_document\":".to_vec();
        field.extend_from_slice(raw);
        job.splice(end..end, field);
        job
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kazoo_document_is_kept_with_its_id() {
        let json = br#"{"name":"mailbox 1010","metadata":{"from":"a\"}b"},"id":"202611-5d6a"}"#;
        let document = inspect(json).unwrap();
        assert_eq!(document.id.as_deref(), Some("202611-5d6a"));
        let job = br#"{"a":1,"kazoo_document":null,"request_id":"r"}"#.to_vec();
        let spliced = document.splice_into(job);
        let value: serde_json::Value = serde_json::from_slice(&spliced).unwrap();
        assert_eq!(value["kazoo_document"]["id"], "202611-5d6a");
        assert_eq!(value["request_id"], "r");
        // A job that leaves a missing document out gets the field added.
        let spliced = document.splice_into(br#"{"a":1}"#.to_vec());
        let value: serde_json::Value = serde_json::from_slice(&spliced).unwrap();
        assert_eq!(value["kazoo_document"]["metadata"]["from"], "a\"}b");
    }

    #[test]
    fn ids_that_are_not_strings_and_documents_that_are_not_objects() {
        assert_eq!(inspect(br#"{"id":5}"#).unwrap().id, None);
        assert_eq!(inspect(br#"[{"id":"x"}]"#).unwrap().id, None);
        assert_eq!(inspect(br#"{"id":"x","id":"y"}"#).unwrap().id, None);
        assert_eq!(inspect(br#"{"other":{"id":"x"}}"#).unwrap().id, None);
    }

    #[test]
    fn garbage_is_dropped_and_depth_is_the_worker_s_to_judge() {
        assert_eq!(inspect(b"{\"id\": \"trunc").unwrap_err(), Dropped::NotJson);
        assert_eq!(inspect(b"").unwrap_err(), Dropped::NotJson);
        let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        assert!(inspect(deep.as_bytes()).is_ok());
        let deep = format!(
            r#"{{"x":{}{},"id":"d"}}"#,
            "[".repeat(1000),
            "]".repeat(1000)
        );
        assert_eq!(inspect(deep.as_bytes()).unwrap().id.as_deref(), Some("d"));
    }
}
