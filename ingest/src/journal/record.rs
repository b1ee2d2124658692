//! One job as a segment holds it: a frame `body length (u32) | CRC-32C of the body (u32) |
//! body`, the body `flags (u8) | appended at, Unix ms (u64) | job id (16 bytes) | received at,
//! Unix s (u64) | request id length (u16) | request id | the job's JSON`. All little-endian.
//!
//! The header carries what the message's properties need, so publishing reads no JSON. A frame
//! cut short (a crash during its write: its upload was never answered) or not matching its CRC
//! ends what a segment holds.

use uuid::Uuid;

/// Length and CRC.
pub(crate) const FRAME_HEADER: usize = 8;
/// Flags, appended at, job id, received at, request id length.
const FIXED_BODY: usize = 1 + 8 + 16 + 8 + 2;
/// No job comes near this (a KAZOO document is bounded by `VMPIPE_MAX_DOCUMENT`): a length
/// past it is damage, not a record.
const MAX_BODY: usize = 256 * 1024 * 1024;
/// Flag: the job was journaled while RabbitMQ was away or not confirming, and counted so then.
const HELD: u8 = 1;

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// Journaled while the broker was away or not confirming (and counted as such then).
    pub held: bool,
    pub appended_ms: u64,
    pub job_id: Uuid,
    pub received_secs: u64,
    pub request_id: String,
    pub payload: Vec<u8>,
}

/// What the bytes at some offset are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A record, and the length of its frame.
    Record(Box<Record>, usize),
    /// Fewer bytes than the frame says: cut short, or not read in full yet.
    Incomplete,
    /// Not a record (a bad length or CRC).
    Invalid,
}

impl Record {
    /// The frame, appended to `out`.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        let request_id =
            &self.request_id.as_bytes()[..self.request_id.len().min(u16::MAX as usize)];
        let body_len = FIXED_BODY + request_id.len() + self.payload.len();
        out.reserve(FRAME_HEADER + body_len);
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        let crc_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let body_at = out.len();
        out.push(if self.held { HELD } else { 0 });
        out.extend_from_slice(&self.appended_ms.to_le_bytes());
        out.extend_from_slice(self.job_id.as_bytes());
        out.extend_from_slice(&self.received_secs.to_le_bytes());
        out.extend_from_slice(&(request_id.len() as u16).to_le_bytes());
        out.extend_from_slice(request_id);
        out.extend_from_slice(&self.payload);
        let crc = CRC.checksum(&out[body_at..]);
        out[crc_at..body_at].copy_from_slice(&crc.to_le_bytes());
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// The record that starts `bytes`.
    pub(crate) fn decode(bytes: &[u8]) -> Decoded {
        let Some(header) = bytes.get(..FRAME_HEADER) else {
            return Decoded::Incomplete;
        };
        let body_len = u32::from_le_bytes(header[..4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().unwrap_or_default());
        if !(FIXED_BODY..=MAX_BODY).contains(&body_len) {
            return Decoded::Invalid;
        }
        let Some(body) = bytes.get(FRAME_HEADER..FRAME_HEADER + body_len) else {
            return Decoded::Incomplete;
        };
        if CRC.checksum(body) != crc {
            return Decoded::Invalid;
        }
        let u64_at =
            |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().unwrap_or_default());
        let id_len = u16::from_le_bytes([body[33], body[34]]) as usize;
        let Some(request_id) = body.get(FIXED_BODY..FIXED_BODY + id_len) else {
            return Decoded::Invalid;
        };
        let record = Record {
            held: body[0] & HELD != 0,
            appended_ms: u64_at(1),
            job_id: Uuid::from_slice(&body[9..25]).unwrap_or_default(),
            received_secs: u64_at(25),
            request_id: String::from_utf8_lossy(request_id).into_owned(),
            payload: body[FIXED_BODY + id_len..].to_vec(),
        };
        Decoded::Record(Box::new(record), FRAME_HEADER + body_len)
    }
}

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &[u8]) -> Record {
        Record {
            held: true,
            appended_ms: 1_764_000_000_123,
            job_id: Uuid::now_v7(),
            received_secs: 1_764_000_000,
            request_id: "a1b2".into(),
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let r = record(br#"{"storage_key":"a/b/c"}"#);
        let bytes = r.encode();
        assert_eq!(
            Record::decode(&bytes),
            Decoded::Record(Box::new(r), bytes.len())
        );
    }

    #[test]
    fn a_cut_or_damaged_frame_is_not_a_record() {
        let bytes = record(b"{}").encode();
        for cut in [0, 3, FRAME_HEADER, bytes.len() - 1] {
            assert_eq!(Record::decode(&bytes[..cut]), Decoded::Incomplete, "{cut}");
        }
        let mut damaged = bytes.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert_eq!(Record::decode(&damaged), Decoded::Invalid);
        assert_eq!(Record::decode(&[0; 64]), Decoded::Invalid, "zeros");
        let mut huge = bytes;
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Record::decode(&huge), Decoded::Invalid);
    }
}
