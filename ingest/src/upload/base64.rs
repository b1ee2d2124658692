//! Streaming base64 decoding of a file part (KAZOO's `base64_encode_data`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;

use crate::error::ApiError;

/// Incremental standard base64 (padded, no line breaks), as KAZOO's `base64:encode/1` writes.
#[derive(Default)]
pub(super) struct Base64Stream {
    carry: Vec<u8>,
    padded: bool,
}

impl Base64Stream {
    pub(super) fn feed(&mut self, input: &[u8]) -> Result<Bytes, ApiError> {
        if input.is_empty() {
            return Ok(Bytes::new());
        }
        if self.padded {
            return Err(ApiError::BadBase64("data after the padding".into()));
        }
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(input);
        let whole = data.len() - data.len() % 4;
        self.carry = data.split_off(whole);
        if data.is_empty() {
            return Ok(Bytes::new());
        }
        self.padded = data.ends_with(b"=");
        let decoded = STANDARD
            .decode(&data)
            .map_err(|e| ApiError::BadBase64(e.to_string()))?;
        Ok(Bytes::from(decoded))
    }

    pub(super) fn finish(self) -> Result<(), ApiError> {
        if self.carry.is_empty() {
            Ok(())
        } else {
            Err(ApiError::BadBase64("length is not a multiple of 4".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(text: &[u8], piece: usize) -> Result<Vec<u8>, ApiError> {
        let mut decoder = Base64Stream::default();
        let mut out = Vec::new();
        for chunk in text.chunks(piece) {
            out.extend_from_slice(&decoder.feed(chunk)?);
        }
        decoder.finish()?;
        Ok(out)
    }

    #[test]
    fn base64_stream_matches_one_shot_decoding_at_any_chunking() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 256) as u8).collect();
        for len in [0, 1, 2, 3, 4, 5, 999, 1000] {
            let text = STANDARD.encode(&data[..len]);
            for piece in [1, 2, 3, 5, 7, 64, 4096] {
                assert_eq!(
                    decode_in_pieces(text.as_bytes(), piece).unwrap(),
                    &data[..len]
                );
            }
        }
    }

    #[test]
    fn base64_stream_rejects_garbage() {
        assert!(
            decode_in_pieces(b"QQ==QUFB", 4).is_err(),
            "data after padding"
        );
        assert!(decode_in_pieces(b"QUF", 4).is_err(), "truncated");
        assert!(decode_in_pieces(b"QU*B", 4).is_err(), "bad character");
    }
}
