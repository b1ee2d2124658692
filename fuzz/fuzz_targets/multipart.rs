//! The multipart parser: any content type and body, in every base64 mode, ends in a result,
//! never a panic or a hang. The first line of the input is the content type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmpipe_common::settings::Base64Mode;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let Ok(content_type) = std::str::from_utf8(&data[..split]) else { return };
    let body = data.get(split + 1..).unwrap_or_default();
    for mode in [Base64Mode::Auto, Base64Mode::Always, Base64Mode::Never] {
        let _ = vmpipe_ingest::fuzz_multipart(content_type, body, mode);
    }
});
