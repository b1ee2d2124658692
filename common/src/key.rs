//! Storage keys: the untrusted URL path KAZOO sends, turned into a name that is safe on disk.
//!
//! A key is a list of segments. In a request each segment is percent-decoded once; in the
//! canonical form (the job message, the database, the file tree) each segment is written with
//! only `%`, `/`, `\` and control bytes escaped, so ordinary KAZOO keys stay readable
//! (`4e30…/202611-5d6a…/b766….mp3`) and the canonical form is also the relative file path.

use std::fmt;
use std::path::PathBuf;

/// Longest segment, in canonical (escaped) bytes: the file-name limit of common file systems.
pub const MAX_SEGMENT_BYTES: usize = 255;
/// Most segments in one key. KAZOO sends 3 or 4, more with folder paths.
pub const MAX_SEGMENTS: usize = 32;
/// Longest canonical key.
pub const MAX_KEY_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the path names no file")]
    Empty,
    #[error("empty path segment (double or trailing slash)")]
    EmptySegment,
    #[error("path segment '.' or '..' is not allowed")]
    DotSegment,
    #[error("path segment contains a NUL byte")]
    Nul,
    #[error("malformed percent-encoding in path")]
    BadPercentEncoding,
    #[error("path segment is not valid UTF-8")]
    NotUtf8,
    #[error("path segment longer than {MAX_SEGMENT_BYTES} bytes")]
    SegmentTooLong,
    #[error("path has more than {MAX_SEGMENTS} segments")]
    TooManySegments,
    #[error("path longer than {MAX_KEY_BYTES} bytes")]
    TooLong,
}

/// A validated storage key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StorageKey {
    segments: Vec<String>,
    canonical: String,
}

impl StorageKey {
    /// Builds a key from already-decoded segments, validating each.
    pub fn from_segments<I, S>(segments: I) -> Result<Self, KeyError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let segments: Vec<String> = segments.into_iter().map(Into::into).collect();
        if segments.is_empty() {
            return Err(KeyError::Empty);
        }
        if segments.len() > MAX_SEGMENTS {
            return Err(KeyError::TooManySegments);
        }
        let mut canonical = String::new();
        for segment in &segments {
            validate_segment(segment)?;
            let escaped = escape_segment(segment);
            if escaped.len() > MAX_SEGMENT_BYTES {
                return Err(KeyError::SegmentTooLong);
            }
            if !canonical.is_empty() {
                canonical.push('/');
            }
            canonical.push_str(&escaped);
        }
        if canonical.len() > MAX_KEY_BYTES {
            return Err(KeyError::TooLong);
        }
        Ok(Self {
            segments,
            canonical,
        })
    }

    /// Parses the canonical form (as stored in a job or a database row).
    pub fn parse(canonical: &str) -> Result<Self, KeyError> {
        Self::from_segments(decode_path(canonical)?)
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The canonical form; also the file's path relative to the voicemail root.
    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    pub fn relative_path(&self) -> PathBuf {
        PathBuf::from(&self.canonical)
    }

    /// The last segment: KAZOO's attachment name with the default URL layout.
    pub fn file_name(&self) -> &str {
        self.segments.last().map(String::as_str).unwrap_or_default()
    }

    /// The content type the file name's extension stands for, if it is one vmpipe knows
    /// (KAZOO's declared type travels in the job; this is for files known only by name).
    pub fn content_type(&self) -> Option<&'static str> {
        let extension = self
            .file_name()
            .rsplit_once('.')
            .map(|(_, ext)| ext.to_ascii_lowercase());
        match extension.as_deref() {
            Some("mp3") => Some("audio/mpeg"),
            Some("wav") => Some("audio/wav"),
            Some("mp4") => Some("video/mp4"),
            Some("txt") => Some("text/plain"),
            _ => None,
        }
    }
}

impl fmt::Display for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorageKey({:?})", self.canonical)
    }
}

/// Checks that every segment could be part of a key (a fetch path may hold two keys' worth).
pub fn validate_segments(segments: &[String]) -> Result<(), KeyError> {
    if segments.len() > 2 * MAX_SEGMENTS {
        return Err(KeyError::TooManySegments);
    }
    for segment in segments {
        validate_segment(segment)?;
        if escape_segment(segment).len() > MAX_SEGMENT_BYTES {
            return Err(KeyError::SegmentTooLong);
        }
    }
    Ok(())
}

/// Splits a raw (percent-encoded) URL path on `/` and decodes each segment once.
///
/// Decoding happens after splitting, so `%2F` stays inside its segment, and only once, so a
/// twice-encoded `%252E%252E` is the literal name `%2E%2E`, not `..`.
pub fn decode_path(raw: &str) -> Result<Vec<String>, KeyError> {
    if raw.is_empty() {
        return Err(KeyError::Empty);
    }
    raw.split('/').map(percent_decode).collect()
}

fn percent_decode(raw: &str) -> Result<String, KeyError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or(KeyError::BadPercentEncoding)?;
            let value = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(KeyError::BadPercentEncoding)?;
            out.push(value);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| KeyError::NotUtf8)
}

fn validate_segment(segment: &str) -> Result<(), KeyError> {
    match segment {
        "" => Err(KeyError::EmptySegment),
        "." | ".." => Err(KeyError::DotSegment),
        s if s.contains('\0') => Err(KeyError::Nul),
        _ => Ok(()),
    }
}

/// Escapes the bytes that cannot (or should not) appear in a file name.
fn escape_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for c in segment.chars() {
        match c {
            '%' | '/' | '\\' | '\u{1}'..='\u{1f}' | '\u{7f}' => {
                out.push_str(&format!("%{:02X}", c as u32));
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(raw: &str) -> Result<StorageKey, KeyError> {
        StorageKey::from_segments(decode_path(raw)?)
    }

    #[test]
    fn kazoo_default_layout_is_readable() {
        let k = key("4e3005310add6229778caf6babfe7cfb/202611-5d6a/b766.mp3").unwrap();
        assert_eq!(
            k.as_str(),
            "4e3005310add6229778caf6babfe7cfb/202611-5d6a/b766.mp3"
        );
        assert_eq!(k.file_name(), "b766.mp3");
    }

    #[test]
    fn encoded_slash_stays_inside_its_segment() {
        let k = key("account%2F4e%2F30%2Frest-202004/doc/a.mp3").unwrap();
        assert_eq!(k.segments()[0], "account/4e/30/rest-202004");
        assert_eq!(k.as_str(), "account%2F4e%2F30%2Frest-202004/doc/a.mp3");
        assert_eq!(k.relative_path().components().count(), 3);
        assert_eq!(StorageKey::parse(k.as_str()).unwrap(), k);
    }

    #[test]
    fn backslash_and_percent_are_escaped_and_round_trip() {
        let k = key("a%5C..%5Cb/100%25/sp%20ace").unwrap();
        assert_eq!(k.segments(), ["a\\..\\b", "100%", "sp ace"]);
        assert_eq!(k.as_str(), "a%5C..%5Cb/100%25/sp ace");
        assert_eq!(StorageKey::parse(k.as_str()).unwrap(), k);
    }

    #[test]
    fn traversal_and_garbage_are_rejected() {
        assert_eq!(key("a/../b"), Err(KeyError::DotSegment));
        assert_eq!(key("a/%2e%2E/b"), Err(KeyError::DotSegment));
        assert_eq!(key("./a"), Err(KeyError::DotSegment));
        assert_eq!(key("a//b"), Err(KeyError::EmptySegment));
        assert_eq!(key("a/b/"), Err(KeyError::EmptySegment));
        assert_eq!(key(""), Err(KeyError::Empty));
        assert_eq!(key("a%00b"), Err(KeyError::Nul));
        assert_eq!(key("a%zz"), Err(KeyError::BadPercentEncoding));
        assert_eq!(key("a%4"), Err(KeyError::BadPercentEncoding));
        assert_eq!(key("a%FF"), Err(KeyError::NotUtf8));
        assert_eq!(key(&"x".repeat(256)), Err(KeyError::SegmentTooLong));
        assert_eq!(
            key(&vec!["a"; 33].join("/")),
            Err(KeyError::TooManySegments)
        );
    }

    #[test]
    fn twice_encoded_dots_are_a_literal_name() {
        let k = key("%252E%252E/x").unwrap();
        assert_eq!(k.segments()[0], "%2E%2E");
        assert_eq!(k.as_str(), "%252E%252E/x");
    }

    #[test]
    fn content_type_comes_from_the_extension() {
        assert_eq!(key("a/b/c.MP3").unwrap().content_type(), Some("audio/mpeg"));
        assert_eq!(key("a/b/c.wav").unwrap().content_type(), Some("audio/wav"));
        assert_eq!(key("a/b/c").unwrap().content_type(), None);
    }

    #[test]
    fn utf8_is_kept_raw() {
        let k = key("acct/doc/mésságe%20é.mp3").unwrap();
        assert_eq!(k.file_name(), "mésságe é.mp3");
    }
}
