//! A request head on its way to actix-http: where it ends, and its request-target made
//! acceptable to the `http` crate.
//!
//! KAZOO percent-encodes only ASCII punctuation in its URLs (`kz_util:uri_encode/1`) and sends
//! every other byte raw, UTF-8 included. The `http` crate refuses such a target, and actix-http
//! then answers 400 with an empty body before vmpipe sees the request. So the bytes it refuses
//! (non-ASCII, DEL, `` ` ``, `<`, `>`, and `#`, which would silently cut the path) are
//! percent-encoded here. The key is percent-decoded once later, so a raw `é` and `%C3%A9` name
//! the same file, and bytes that are not UTF-8 get the JSON 400 of any bad path.

use bytes::{BufMut, BytesMut};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Part {
    #[default]
    Method,
    Target,
    /// The rest of the request line, then the header lines.
    Rest,
}

/// Scans one request head, byte by byte, as it arrives.
#[derive(Debug, Default)]
pub(super) struct HeadScan {
    part: Part,
    /// Bytes on the current line (a CR aside).
    line: usize,
    /// A line with something on it was seen (empty lines before the request line are skipped,
    /// as httparse skips them).
    seen_line: bool,
}

impl HeadScan {
    /// Copies `input` into `out` up to the end of the head (its empty line), escaping the
    /// request-target. Returns how much of `input` was used, and whether the head is complete.
    pub(super) fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> (usize, bool) {
        out.reserve(input.len());
        for (i, &byte) in input.iter().enumerate() {
            match byte {
                b'\n' => {
                    out.put_u8(byte);
                    if self.line > 0 {
                        self.seen_line = true;
                        self.part = Part::Rest;
                    } else if self.seen_line {
                        return (i + 1, true);
                    }
                    self.line = 0;
                    continue;
                }
                b'\r' => {
                    out.put_u8(byte);
                    continue;
                }
                _ => self.line += 1,
            }
            match self.part {
                Part::Method if byte == b' ' => {
                    self.part = Part::Target;
                    out.put_u8(byte);
                }
                Part::Target if byte == b' ' => {
                    self.part = Part::Rest;
                    out.put_u8(byte);
                }
                Part::Target if needs_escape(byte) => {
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    out.put_slice(&[
                        b'%',
                        HEX[usize::from(byte >> 4)],
                        HEX[usize::from(byte & 15)],
                    ]);
                }
                _ => out.put_u8(byte),
            }
        }
        (input.len(), false)
    }
}

/// Bytes the `http` crate refuses in a request-target (or, for `#`, takes as a fragment).
fn needs_escape(byte: u8) -> bool {
    byte >= 0x7f || matches!(byte, b'`' | b'<' | b'>' | b'#')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(input: &[u8]) -> (Vec<u8>, usize, bool) {
        let mut out = BytesMut::new();
        let (used, done) = HeadScan::default().feed(input, &mut out);
        (out.to_vec(), used, done)
    }

    #[test]
    fn the_head_ends_at_its_empty_line_and_nothing_after_it_is_taken() {
        let head = b"PUT /a/b HTTP/1.1\r\ncontent-length: 3\r\n\r\n";
        let (out, used, done) = scan(&[&head[..], b"abcGET"].concat());
        assert_eq!((out.as_slice(), used, done), (&head[..], head.len(), true));
        // Bare LF line ends, and empty lines before the request line.
        let lf = b"\r\n\r\nGET / HTTP/1.1\nhost: x\n\n";
        let (_, used, done) = scan(&[&lf[..], b"rest"].concat());
        assert_eq!((used, done), (lf.len(), true));
        let (out, used, done) = scan(b"GET / HTTP/1.1\r\nhost: x\r\n");
        assert_eq!((out.len(), used, done), (25, 25, false));
    }

    #[test]
    fn a_head_can_arrive_a_byte_at_a_time() {
        let head = b"GET /m\xc3\xa9 HTTP/1.1\r\nhost: x\r\n\r\n";
        let mut scan = HeadScan::default();
        let mut out = BytesMut::new();
        for (i, byte) in head.iter().enumerate() {
            let (used, done) = scan.feed(&[*byte], &mut out);
            assert_eq!((used, done), (1, i == head.len() - 1));
        }
        assert_eq!(&out[..], b"GET /m%C3%A9 HTTP/1.1\r\nhost: x\r\n\r\n");
    }

    #[test]
    fn only_the_target_is_escaped_and_only_what_http_refuses() {
        let (out, _, done) =
            scan(b"GET /a\xff/`x`<y>#z?k=\xc3\xa9&q={\"|^} HTTP/1.1\r\nx-h: \xc3\xa9\r\n\r\n");
        assert!(done);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "GET /a%FF/%60x%60%3Cy%3E%23z?k=%C3%A9&q={\"|^} HTTP/1.1\r\nx-h: \u{e9}\r\n\r\n"
        );
        let (out, _, _) = scan(b"\x16\x03\x01garbage\r\n\r\n");
        assert_eq!(out, b"\x16\x03\x01garbage\r\n\r\n");
    }
}
