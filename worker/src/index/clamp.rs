//! Hostile metadata made indexable. Every field of KAZOO's document is the uploader's choice
//! (tenants upload files and documents through KAZOO's API), and a voicemail that was stored
//! must always get its row: a field PostgreSQL cannot hold or index is cut or dropped, and what
//! was done is recorded in the row's `dropped_metadata`.

use serde_json::value::RawValue;

/// Longest text column kept whole, in bytes. KAZOO's caller ids, names and SIP users are far
/// shorter; a btree index entry cannot exceed about 2.7 KB.
pub(crate) const MAX_FIELD_BYTES: usize = 256;
/// Deepest KAZOO document kept. KAZOO's are 3 or 4 levels deep.
pub(crate) const MAX_DOCUMENT_DEPTH: usize = 32;

/// Keeps KAZOO's document if it is one an index can hold; otherwise drops it and says why.
/// It stays JSON text: it is never built in memory.
/// `max_bytes` is `VMPIPE_MAX_DOCUMENT`, which ingest enforces too (a job journaled before a
/// lower setting may carry a larger document).
pub(crate) fn admit_document(
    raw: Option<Box<RawValue>>,
    max_bytes: u64,
) -> (Option<Box<RawValue>>, Option<String>) {
    let Some(raw) = raw else {
        return (None, None);
    };
    let text = raw.get();
    if text.len() as u64 > max_bytes {
        return (
            None,
            Some(format!(
                "metadata: the document is {} bytes, over {max_bytes}: not kept",
                text.len()
            )),
        );
    }
    if depth(text) > MAX_DOCUMENT_DEPTH {
        return (
            None,
            Some(format!(
                "metadata: the document is nested deeper than {MAX_DOCUMENT_DEPTH} levels: not kept"
            )),
        );
    }
    if text == "null" {
        return (None, None);
    }
    (Some(raw), None)
}

/// How deeply arrays and objects nest in valid JSON text.
fn depth(json: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for byte in json.bytes() {
        match (in_string, byte) {
            (true, _) if escaped => escaped = false,
            (true, b'\\') => escaped = true,
            (true, b'"') => in_string = false,
            (true, _) => {}
            (false, b'"') => in_string = true,
            (false, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Cuts `text` to [`MAX_FIELD_BYTES`] (on a character boundary), noting it as `column`.
pub(crate) fn cut(column: &str, text: &mut String, dropped: &mut Vec<String>) {
    if text.len() <= MAX_FIELD_BYTES {
        return;
    }
    let mut end = MAX_FIELD_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    dropped.push(format!("{column}: {} bytes, cut to {end}", text.len()));
    text.truncate(end);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 64 * 1024;

    fn raw(json: &str) -> Option<Box<RawValue>> {
        Some(RawValue::from_string(json.to_owned()).unwrap())
    }

    #[test]
    fn depth_counts_nesting_outside_strings() {
        assert_eq!(depth("1"), 0);
        assert_eq!(depth(r#"{"a":[1,{"b":2}]}"#), 3);
        assert_eq!(depth(r#"["[[[[", "\"[["]"#), 1);
    }

    #[test]
    fn documents_kazoo_sends_are_kept_and_hostile_ones_dropped_with_a_reason() {
        let kazoo = r#"{"metadata":{"caller_id_number":"1"}}"#;
        let (kept, note) = admit_document(raw(kazoo), MAX);
        assert_eq!(kept.unwrap().get(), kazoo);
        assert_eq!(note, None);
        let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        let (kept, note) = admit_document(raw(&deep), MAX);
        assert!(kept.is_none());
        assert!(note.unwrap().contains("nested deeper"));
        let big = format!("[{}0]", "0,".repeat(MAX as usize));
        let (kept, note) = admit_document(raw(&big), MAX);
        assert!(kept.is_none());
        assert!(note.unwrap().contains("bytes"));
        let (kept, note) = admit_document(None, MAX);
        assert!(kept.is_none() && note.is_none());
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        let mut dropped = Vec::new();
        let mut text = "é".repeat(200);
        cut("caller_id_name", &mut text, &mut dropped);
        assert_eq!(text.len(), 256);
        assert_eq!(dropped, ["caller_id_name: 400 bytes, cut to 256"]);
        let mut short = "+14155550100".to_owned();
        cut("caller_id_number", &mut short, &mut dropped);
        assert_eq!(dropped.len(), 1);
    }
}
