//! The request-path resolver: whatever the path, a key never leaves the storage root, always
//! round-trips through its canonical form, and never contains `.`, `..` or empty segments.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use vmpipe_common::key::{StorageKey, decode_path, validate_segments};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(segments) = decode_path(raw) else { return };
    let fetchable = validate_segments(&segments).is_ok();
    let Ok(key) = StorageKey::from_segments(segments) else { return };
    assert!(fetchable, "a valid key is also a valid fetch path");
    assert_eq!(StorageKey::parse(key.as_str()).as_ref(), Ok(&key), "canonical form round-trips");
    let root = Path::new("/srv/vmpipe/voicemails");
    let path = root.join(key.relative_path());
    assert!(path.starts_with(root));
    assert!(
        key.relative_path().components().all(|c| matches!(c, Component::Normal(_))),
        "only plain names: {key:?}"
    );
    assert_eq!(key.relative_path().components().count(), key.segments().len());
});
