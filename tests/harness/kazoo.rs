//! The KAZOO client: puts on the wire exactly what KAZOO's `httpc` does (header set and order,
//! empty `te:`, no user-agent, KAZOO's multipart layout), and the documents and query strings
//! KAZOO sends along.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::audio::hex32;
use crate::response::{Response, read_response};

/// What KAZOO's store request looks like, per version (see the protocol notes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Put,
    Post,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Put => "PUT",
            Verb::Post => "POST",
        }
    }
}

/// How the body is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// `send_multipart: false` (with or without `base64_encode_data`, which then does nothing).
    Raw,
    /// KAZOO ≥ 4.3.21 `send_multipart: true`.
    Multipart,
    /// KAZOO ≥ 4.3.21 `send_multipart` + `base64_encode_data`.
    MultipartBase64,
    /// KAZOO 4.3.17-4.3.20 `send_multipart`: `multipart/mixed` with no boundary parameter.
    LegacyMixed,
}

pub const ALL_BODIES: [Body; 4] = [
    Body::Raw,
    Body::Multipart,
    Body::MultipartBase64,
    Body::LegacyMixed,
];

/// A client that writes KAZOO's exact bytes.
#[derive(Clone, Copy)]
pub struct Kazoo {
    pub port: u16,
}

/// One stored attachment as KAZOO describes it.
pub struct Attachment<'a> {
    pub document_id: &'a str,
    pub name: &'a str,
    pub content_type: &'a str,
    pub data: &'a [u8],
    pub document: &'a serde_json::Value,
}

impl Kazoo {
    /// A store request as KAZOO ≥ 4.3.106 sends it.
    pub async fn store(
        &self,
        verb: Verb,
        path: &str,
        body: Body,
        att: &Attachment<'_>,
    ) -> Response {
        let (content_type, bytes) = encode_body(body, att);
        self.send(
            &store_request(verb, path, &content_type, bytes.len(), self.port, false),
            &bytes,
        )
        .await
    }

    /// A voicemail as KAZOO's mailbox stores it: a multipart PUT of `audio` named `name`, with
    /// its message document, under a new document id of `account`.
    pub async fn store_voicemail(
        &self,
        account: &str,
        name: &str,
        audio: &[u8],
        content_type: &str,
    ) -> Response {
        let document_id = format!("202611-{}", hex32());
        let path = format!("/{account}/{document_id}/{name}");
        self.store_voicemail_at(&path, &document_id, name, audio, content_type)
            .await
    }

    /// A voicemail as KAZOO stores it (a multipart PUT of its mailbox document, whose id is
    /// `document_id`, then the audio `name`), at `path`.
    pub async fn store_voicemail_at(
        &self,
        path: &str,
        document_id: &str,
        name: &str,
        audio: &[u8],
        content_type: &str,
    ) -> Response {
        let document = mailbox_message(document_id, name);
        let att = Attachment {
            document_id,
            name,
            content_type,
            data: audio,
            document: &document,
        };
        self.store(Verb::Put, path, Body::Multipart, &att).await
    }

    /// KAZOO's credentials probe, as it stores it when a storage document is saved: a
    /// multipart PUT of `some random content: {R}` as `{account}/{probe doc}/{R}_test_credentials_file.txt`.
    pub async fn store_credentials_probe(&self, account: &str) -> Response {
        let random = hex32();
        let document_id = hex32();
        let name = format!("{random}_test_credentials_file.txt");
        let content = format!("some random content: {random}");
        let document = serde_json::json!({"content": content, "id": document_id});
        let att = Attachment {
            document_id: &document_id,
            name: &name,
            content_type: "text/plain",
            data: content.as_bytes(),
            document: &document,
        };
        let path = format!("/{account}/{document_id}/{name}");
        self.store(Verb::Put, &path, Body::Multipart, &att).await
    }

    /// A store request as KAZOO < 4.3.106 sends it (extra bogus `content_type:` header).
    pub async fn store_legacy(
        &self,
        verb: Verb,
        path: &str,
        body: Body,
        att: &Attachment<'_>,
    ) -> Response {
        let (content_type, bytes) = encode_body(body, att);
        self.send(
            &store_request(verb, path, &content_type, bytes.len(), self.port, true),
            &bytes,
        )
        .await
    }

    /// A fetch as KAZOO sends it (`path` is the whole request-target, query included).
    pub async fn get(&self, path: &str) -> Response {
        self.send(&fetch_request("GET", path, self.port), b"").await
    }

    pub async fn head(&self, path: &str) -> Response {
        self.send(&fetch_request("HEAD", path, self.port), b"")
            .await
    }

    /// Sends raw bytes and reads one response.
    pub async fn send(&self, head: &str, body: &[u8]) -> Response {
        self.send_bytes(head.as_bytes(), body).await
    }

    /// Like [`Kazoo::send`], with a head that need not be UTF-8 (raw bytes in the path).
    pub async fn send_bytes(&self, head: &[u8], body: &[u8]) -> Response {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect");
        stream.write_all(head).await.expect("write head");
        // The server may answer (413, 400) and close before reading the whole body.
        let _ = stream.write_all(body).await;
        let is_head = head.starts_with(b"HEAD ");
        read_response(&mut stream, is_head).await
    }
}

fn store_request(
    verb: Verb,
    path: &str,
    content_type: &str,
    len: usize,
    port: u16,
    legacy: bool,
) -> String {
    let mut head = format!(
        "{} {path} HTTP/1.1\r\ncontent-type: {content_type}\r\ncontent-length: {len}\r\nte: \r\nhost: 127.0.0.1:{port}\r\nconnection: keep-alive\r\n",
        verb.as_str()
    );
    if legacy {
        head.push_str(&format!("content_type: {content_type}\r\n"));
    }
    head.push_str("\r\n");
    head
}

fn fetch_request(method: &str, path: &str, port: u16) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\ncontent-length: 0\r\nte: \r\nhost: 127.0.0.1:{port}\r\nconnection: keep-alive\r\n\r\n"
    )
}

/// Starts a raw PUT of `data` as KAZOO sends it, but writes only its first `sent` bytes, and
/// returns the open connection (to cut it, finish it, or let it stall).
pub async fn start_partial_put(port: u16, path: &str, data: &[u8], sent: usize) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let head = format!(
        "PUT {path} HTTP/1.1\r\ncontent-type: audio/mpeg\r\ncontent-length: {}\r\nte: \r\nhost: x\r\nconnection: keep-alive\r\n\r\n",
        data.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(&data[..sent]).await.expect("write body");
    stream
}

/// KAZOO's boundary: `cow_multipart:boundary/0`, 48 random bytes in unpadded base64url.
pub fn kazoo_boundary() -> String {
    let mut random = Vec::new();
    for _ in 0..3 {
        random.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    URL_SAFE_NO_PAD.encode(random)
}

/// The body KAZOO sends, and its content type.
pub fn encode_body(body: Body, att: &Attachment<'_>) -> (String, Vec<u8>) {
    let json = serde_json::to_vec(att.document).unwrap();
    let boundary = kazoo_boundary();
    let data_b64;
    let (content_type, data, form) = match body {
        Body::Raw => return (att.content_type.to_owned(), att.data.to_vec()),
        Body::Multipart => (
            format!("multipart/form-data; boundary={boundary}"),
            att.data,
            true,
        ),
        Body::MultipartBase64 => {
            data_b64 = STANDARD.encode(att.data).into_bytes();
            (
                format!("multipart/form-data; boundary={boundary}"),
                &data_b64[..],
                true,
            )
        }
        Body::LegacyMixed => ("multipart/mixed".to_owned(), att.data, false),
    };
    // kz_http_util:encode_multipart/2: leading CRLF, no CRLF after the closing delimiter.
    let mut out = Vec::new();
    let parts: [(&str, &str, &[u8]); 2] = [
        (att.document_id, "application/json", &json),
        (att.name, att.content_type, data),
    ];
    for (name, part_type, bytes) in parts {
        out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
        if form {
            out.extend_from_slice(
                format!("content-disposition: form-data; name={name}\r\n").as_bytes(),
            );
        }
        out.extend_from_slice(format!("content-type: {part_type}\r\n\r\n").as_bytes());
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(format!("\r\n--{boundary}--").as_bytes());
    (content_type, out)
}

/// The `mailbox_message` document KAZOO sends in the JSON part (shape from kzd_box_message).
pub fn mailbox_message(document_id: &str, attachment: &str) -> serde_json::Value {
    serde_json::json!({
        "name": "mailbox 1010 message 2026-11-26 5:50:19",
        "description": "voicemail message with media",
        "source_type": "voicemail",
        "source_id": "0868323f42a354a54d152691b4cf3d6f",
        "media_source": "recording",
        "media_filename": attachment,
        "streamable": true,
        "utc_seconds": 63962891419u64,
        "metadata": {
            "media_id": document_id,
            "call_id": "dd27a1a973561ec0@10.26.0.81",
            "caller_id_name": "Alice Example",
            "caller_id_number": "+14155550100",
            "from": "+14155550100@sip.example.com",
            "from_user": "+14155550100",
            "from_realm": "sip.example.com",
            "length": 5320,
            "timestamp": 63962891419u64,
            "to": "1010@sip.example.com",
            "to_user": "1010",
            "to_realm": "sip.example.com",
            "folder": "new"
        },
        "id": document_id
    })
}

/// The query string KAZOO ≥ 4.3.106 appends to a voicemail fetch.
pub const VOICEMAIL_FETCH_QUERY: &str = "media_id=202611-5d6ae452d29a4304072654da8f79b46e&call_id=dd27a1a973561ec0%4010.26.0.81&caller_id_name=Alice+Example&caller_id_number=%2B14155550100&from=%2B14155550100%40sip.example.com&from_user=%2B14155550100&from_realm=sip.example.com&length=5320&timestamp=63962891419&to=1010%40sip.example.com&to_user=1010&to_realm=sip.example.com&folder=new";
