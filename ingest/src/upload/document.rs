//! KAZOO's document: the JSON part of a multipart upload, passed on in the job as the text it
//! arrived as.
//!
//! A KAZOO document is a few KiB, nested three deep. ingest never builds it into a tree: a tree
//! takes 10 to 30 times the text's size in memory (64 uploads of `[0,0,…]` took ingest to 1 GB),
//! and the worker parses the job anyway. It is checked to be JSON, within `VMPIPE_MAX_DOCUMENT`
//! and [`MAX_DEPTH`] (deeper than the worker's JSON parser takes would make the whole job
//! unreadable), its top-level `id` read, and spliced into the job's JSON. A document that fails
//! a check is dropped, never the voicemail: the file is stored and indexed without it.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Deepest nesting kept (KAZOO's documents are 3 deep; the worker's parser stops at 128).
pub(crate) const MAX_DEPTH: usize = 32;

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
    TooDeep,
    NotJson,
}

impl Dropped {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Dropped::TooLarge => "too_large",
            Dropped::TooDeep => "too_deep",
            Dropped::NotJson => "not_json",
        }
    }
}

/// Checks a JSON part (already within `VMPIPE_MAX_DOCUMENT`).
pub(crate) fn inspect(json: &[u8]) -> Result<Document, Dropped> {
    if depth(json) > MAX_DEPTH {
        return Err(Dropped::TooDeep);
    }
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

/// The deepest nesting of arrays and objects in `json` (outside strings), without parsing it.
fn depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for &byte in json {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
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
    fn garbage_and_deep_documents_are_dropped() {
        assert_eq!(inspect(b"{\"id\": \"trunc").unwrap_err(), Dropped::NotJson);
        assert_eq!(inspect(b"").unwrap_err(), Dropped::NotJson);
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(inspect(deep.as_bytes()).unwrap_err(), Dropped::TooDeep);
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(inspect(ok.as_bytes()).is_ok());
        // Brackets in strings are not nesting.
        let text = format!(r#"{{"s":"{}"}}"#, "[".repeat(100));
        assert!(inspect(text.as_bytes()).is_ok());
    }
}
