//! The answers the connection layer gives by itself, with the JSON body every vmpipe error has:
//! a head that took too long, and the errors actix-http writes before a request reaches vmpipe
//! (a malformed request, a head over its buffer), which it sends with an empty body.

/// The 408 for a request head not complete within the head timeout; the connection closes.
pub(super) fn head_timeout() -> Vec<u8> {
    response(
        408,
        "Request Timeout",
        "request_timeout",
        "the request head was not complete in time",
        b"connection: close\r\n",
    )
}

/// When `written` starts with a whole response head that actix-http made by itself (an error
/// status, no content type, an empty body), how much of `written` it is, and the same response
/// with vmpipe's JSON body.
pub(super) fn with_json_body(written: &[u8]) -> Option<(usize, Vec<u8>)> {
    let end = written.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&written[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let rest = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))?;
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    let code: u16 = code.parse().ok()?;
    let mut empty = false;
    let mut kept = String::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            // vmpipe's own responses always have a type: this one is not vmpipe's.
            "content-type" | "transfer-encoding" => return None,
            "content-length" => empty = value.trim() == "0",
            _ => {
                kept.push_str(line);
                kept.push_str("\r\n");
            }
        }
    }
    if code < 400 || !empty {
        return None;
    }
    let (error, message) = match code {
        400 => ("bad_request", "malformed HTTP request"),
        408 => (
            "request_timeout",
            "the request head was not complete in time",
        ),
        431 => ("headers_too_large", "request headers too large"),
        500..=599 => ("server_error", "the request could not be handled"),
        _ => ("http_error", "the request could not be handled"),
    };
    Some((end, response(code, reason, error, message, kept.as_bytes())))
}

fn response(code: u16, reason: &str, error: &str, message: &str, headers: &[u8]) -> Vec<u8> {
    let body = serde_json::json!({ "error": error, "message": message }).to_string();
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(headers);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actix_empty_errors_get_a_json_body() {
        let actix = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\ndate: Wed, 02 Dec 2026 01:02:31 GMT\r\n\r\n";
        let (used, answer) = with_json_body(actix).unwrap();
        assert_eq!(used, actix.len());
        let text = String::from_utf8(answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json"));
        assert!(
            head.contains("\r\nconnection: close\r\ndate: Wed"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "bad_request");
    }

    #[test]
    fn vmpipe_responses_and_partial_heads_are_left_alone() {
        for written in [
            &b"HTTP/1.1 404 Not Found\r\ncontent-length: 60\r\ncontent-type: application/json\r\n\r\n{"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-len",
            b"\x00\x01binary body bytes\r\n\r\n",
        ] {
            assert!(with_json_body(written).is_none(), "{:?}", String::from_utf8_lossy(written));
        }
    }

    #[test]
    fn the_head_timeout_answer_closes() {
        let text = String::from_utf8(head_timeout()).unwrap();
        assert!(text.starts_with("HTTP/1.1 408 Request Timeout\r\n"));
        assert!(text.contains("connection: close\r\n") && text.ends_with('}'));
    }
}
