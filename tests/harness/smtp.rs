//! A small SMTP server on loopback, for the e-mail event sink: the part of RFC 5321 that
//! lettre speaks over a plain connection (EHLO or HELO, AUTH PLAIN and LOGIN, MAIL, RCPT,
//! DATA, RSET, NOOP, QUIT; no STARTTLS). It records every message it accepts, and [`Mail`]
//! reads them back: headers (RFC 2047 decoded), the text part and the attachments.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The longest line the server reads (a command, or a line of a message).
const MAX_LINE: u64 = 1 << 20;
/// The largest message the server keeps; a larger one is refused with 552.
const MAX_MESSAGE: usize = 64 << 20;

/// One message the server accepted.
#[derive(Clone, Debug)]
pub struct Mail {
    /// The envelope sender (`MAIL FROM:<...>`, without the angle brackets).
    pub from: String,
    /// The envelope recipients (`RCPT TO:<...>`), in order.
    pub to: Vec<String>,
    /// The message as received between `DATA` and the final `.` line, line endings as sent,
    /// dot-unstuffed.
    pub data: String,
    /// The user name the session authenticated with, if it did.
    pub authenticated_as: Option<String>,
}

/// The server, until [`SmtpServer::stop`] or drop.
pub struct SmtpServer {
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    messages: Arc<Mutex<Vec<Mail>>>,
    task: JoinHandle<()>,
}

impl SmtpServer {
    /// Listens on 127.0.0.1 on a free port. With `credentials` (user, password) it offers
    /// `AUTH PLAIN LOGIN` and refuses `MAIL` until the session has authenticated with them;
    /// without, it offers no AUTH and takes mail from anyone.
    pub async fn start(credentials: Option<(&str, &str)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the SMTP server");
        let port = listener
            .local_addr()
            .expect("the SMTP server's address")
            .port();
        let credentials = credentials.map(|(user, password)| {
            Arc::new(Credentials {
                user: user.to_owned(),
                password: password.to_owned(),
            })
        });
        let messages = Arc::<Mutex<Vec<Mail>>>::default();
        let task = tokio::spawn(accept(listener, credentials, messages.clone()));
        Self {
            port,
            messages,
            task,
        }
    }

    /// The messages accepted so far, in order.
    pub fn messages(&self) -> Vec<Mail> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits until at least `count` messages have been accepted, and returns them all;
    /// panics after `timeout`.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Mail> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= count {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "the SMTP server got {} of {count} messages in {timeout:?}",
                messages.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops listening and drops every open session (as dropping the server does).
    pub fn stop(self) {}
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        // The sessions are in the accept task's JoinSet: they go with it.
        self.task.abort();
    }
}

struct Credentials {
    user: String,
    password: String,
}

async fn accept(
    listener: TcpListener,
    credentials: Option<Arc<Credentials>>,
    messages: Arc<Mutex<Vec<Mail>>>,
) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    sessions.spawn(session(stream, credentials.clone(), messages.clone()));
                }
                // Out of file descriptors, say: try again in a moment.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = sessions.join_next() => {}
        }
    }
}

enum Line {
    /// A line, with its line ending.
    Read(Vec<u8>),
    TooLong,
    /// The end of the stream (or an error, or a last line without its line ending).
    End,
}

struct Connection {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Connection {
    async fn read_line(&mut self) -> Line {
        let mut line = Vec::new();
        match (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(_) if line.ends_with(b"\n") => Line::Read(line),
            Ok(n) if n as u64 >= MAX_LINE => Line::TooLong,
            _ => Line::End,
        }
    }

    /// The next line as text, without its line ending; `None` if the session is over.
    async fn read_text(&mut self) -> Option<String> {
        match self.read_line().await {
            Line::Read(line) => Some(
                String::from_utf8_lossy(&line)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            Line::TooLong => {
                self.reply("500 5.5.2 line too long").await;
                None
            }
            Line::End => None,
        }
    }

    /// Sends one reply line; false if the client is gone.
    async fn reply(&mut self, text: &str) -> bool {
        let mut line = Vec::with_capacity(text.len() + 2);
        line.extend_from_slice(text.as_bytes());
        line.extend_from_slice(b"\r\n");
        self.writer.write_all(&line).await.is_ok()
    }
}

async fn session(
    stream: TcpStream,
    credentials: Option<Arc<Credentials>>,
    messages: Arc<Mutex<Vec<Mail>>>,
) {
    let (reader, writer) = stream.into_split();
    let mut connection = Connection {
        reader: BufReader::new(reader),
        writer,
    };
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    let mut authenticated_as: Option<String> = None;
    if !connection.reply("220 localhost ESMTP test").await {
        return;
    }
    loop {
        let Some(line) = connection.read_text().await else {
            return;
        };
        let (verb, rest) = line.split_once(' ').unwrap_or((&line, ""));
        let answer: String = match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                from = None;
                to.clear();
                if credentials.is_some() {
                    "250-localhost\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME".into()
                } else {
                    "250-localhost\r\n250 8BITMIME".into()
                }
            }
            "HELO" => {
                from = None;
                to.clear();
                "250 localhost".into()
            }
            "AUTH" => {
                let Some(credentials) = &credentials else {
                    // Not offered.
                    if !connection.reply("502 not implemented").await {
                        return;
                    }
                    continue;
                };
                if authenticated_as.is_some() {
                    "503 5.5.1 already authenticated".into()
                } else {
                    let Some(given) = authenticate(&mut connection, rest.trim()).await else {
                        return;
                    };
                    match given {
                        Auth::Given(user, password)
                            if user == credentials.user && password == credentials.password =>
                        {
                            authenticated_as = Some(user);
                            "235 2.7.0 ok".into()
                        }
                        Auth::Given(..) => "535 5.7.8 bad credentials".into(),
                        Auth::Cancelled => "501 5.0.0 authentication cancelled".into(),
                        Auth::Undecodable => "501 5.5.2 cannot decode the response".into(),
                        Auth::UnknownMechanism => {
                            "504 5.5.4 unrecognized authentication type".into()
                        }
                    }
                }
            }
            "MAIL" => match address(rest, "FROM:") {
                None => "501 5.5.4 syntax: MAIL FROM:<address>".into(),
                Some(_) if credentials.is_some() && authenticated_as.is_none() => {
                    "530 5.7.0 authentication required".into()
                }
                Some(address) => {
                    from = Some(address);
                    to.clear();
                    "250 ok".into()
                }
            },
            "RCPT" => match address(rest, "TO:") {
                None => "501 5.5.4 syntax: RCPT TO:<address>".into(),
                Some(_) if from.is_none() => "503 5.5.1 need MAIL first".into(),
                Some(address) => {
                    to.push(address);
                    "250 ok".into()
                }
            },
            "DATA" => {
                if from.is_none() || to.is_empty() {
                    "503 5.5.1 need MAIL and RCPT first".into()
                } else {
                    if !connection.reply("354 go ahead").await {
                        return;
                    }
                    let Some(data) = read_data(&mut connection).await else {
                        return;
                    };
                    let envelope = (from.take().unwrap_or_default(), std::mem::take(&mut to));
                    match data {
                        Some(data) => {
                            messages.lock().unwrap().push(Mail {
                                from: envelope.0,
                                to: envelope.1,
                                data: String::from_utf8_lossy(&data).into_owned(),
                                authenticated_as: authenticated_as.clone(),
                            });
                            "250 ok queued".into()
                        }
                        None => "552 5.3.4 message too big".into(),
                    }
                }
            }
            "RSET" => {
                from = None;
                to.clear();
                "250 ok".into()
            }
            "NOOP" => "250 ok".into(),
            "QUIT" => {
                connection.reply("221 bye").await;
                return;
            }
            _ => "502 not implemented".into(),
        };
        if !connection.reply(&answer).await {
            return;
        }
    }
}

/// The message after `354`, up to the line that is exactly `.`: `None` if the session is
/// over, `Some(None)` if the message is too big (read to its end, but not kept).
async fn read_data(connection: &mut Connection) -> Option<Option<Vec<u8>>> {
    let mut data = Vec::new();
    let mut too_big = false;
    loop {
        let line = match connection.read_line().await {
            Line::Read(line) => line,
            Line::TooLong => {
                connection.reply("500 5.5.2 line too long").await;
                return None;
            }
            Line::End => return None,
        };
        if line == b".\r\n" || line == b".\n" {
            return Some((!too_big).then_some(data));
        }
        // Dot-unstuffing: the client doubled every leading dot.
        let line = line.strip_prefix(b".").unwrap_or(&line);
        if data.len() + line.len() > MAX_MESSAGE {
            too_big = true;
            data = Vec::new();
        }
        if !too_big {
            data.extend_from_slice(line);
        }
    }
}

enum Auth {
    Given(String, String),
    Cancelled,
    Undecodable,
    UnknownMechanism,
}

/// Runs the exchange of `AUTH {argument}`; `None` if the session is over.
async fn authenticate(connection: &mut Connection, argument: &str) -> Option<Auth> {
    let (mechanism, initial) = match argument.split_once(' ') {
        Some((mechanism, initial)) => (mechanism, Some(initial.trim().to_owned())),
        None => (argument, None),
    };
    match mechanism.to_ascii_uppercase().as_str() {
        "PLAIN" => {
            let response = match initial {
                Some(response) => response,
                None => {
                    if !connection.reply("334 ").await {
                        return None;
                    }
                    connection.read_text().await?
                }
            };
            if response.trim() == "*" {
                return Some(Auth::Cancelled);
            }
            // authzid NUL authcid NUL password
            let Some(decoded) = decode_base64_text(&response) else {
                return Some(Auth::Undecodable);
            };
            let mut fields = decoded.splitn(3, '\0');
            let (Some(_), Some(user), Some(password)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Some(Auth::Undecodable);
            };
            Some(Auth::Given(user.to_owned(), password.to_owned()))
        }
        "LOGIN" => {
            let user = match initial {
                Some(user) => user,
                None => {
                    if !connection.reply("334 VXNlcm5hbWU6").await {
                        return None;
                    }
                    connection.read_text().await?
                }
            };
            if user.trim() == "*" {
                return Some(Auth::Cancelled);
            }
            if !connection.reply("334 UGFzc3dvcmQ6").await {
                return None;
            }
            let password = connection.read_text().await?;
            if password.trim() == "*" {
                return Some(Auth::Cancelled);
            }
            match (decode_base64_text(&user), decode_base64_text(&password)) {
                (Some(user), Some(password)) => Some(Auth::Given(user, password)),
                _ => Some(Auth::Undecodable),
            }
        }
        _ => Some(Auth::UnknownMechanism),
    }
}

fn decode_base64_text(text: &str) -> Option<String> {
    let bytes = STANDARD.decode(text.trim()).ok()?;
    String::from_utf8(bytes).ok()
}

/// The address of `FROM:<a@b> PARAMETERS` (`prefix` `FROM:`) or `TO:<x@y>`, without its
/// angle brackets.
fn address(argument: &str, prefix: &str) -> Option<String> {
    let argument = argument.trim_start();
    let head = argument.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let path = argument[prefix.len()..].trim_start();
    if let Some(path) = path.strip_prefix('<') {
        let (address, _) = path.split_once('>')?;
        Some(address.to_owned())
    } else {
        let address = path.split_whitespace().next()?;
        Some(address.to_owned())
    }
}

// ---- Reading the messages back ----

/// One leaf of a message's MIME tree.
struct Leaf<'a> {
    headers: &'a str,
    body: &'a str,
    /// `type/subtype`, lower case, without parameters.
    content_type: String,
    content_type_params: Vec<(String, String)>,
}

impl Leaf<'_> {
    fn disposition(&self) -> (String, Vec<(String, String)>) {
        raw_header(self.headers, "content-disposition")
            .map(|value| parameters(&value))
            .unwrap_or_default()
    }

    fn is_text(&self) -> bool {
        self.content_type == "text/plain" && self.disposition().0 != "attachment"
    }

    fn decoded(&self) -> Vec<u8> {
        let encoding = raw_header(self.headers, "content-transfer-encoding")
            .unwrap_or_default()
            .to_ascii_lowercase();
        match encoding.trim() {
            "base64" => {
                let clean: String = self
                    .body
                    .chars()
                    .filter(|c| !c.is_ascii_whitespace())
                    .collect();
                STANDARD
                    .decode(&clean)
                    .or_else(|_| STANDARD_NO_PAD.decode(clean.trim_end_matches('=')))
                    .unwrap_or_else(|e| panic!("a base64 body that does not decode ({e})"))
            }
            "quoted-printable" => quoted_printable(self.body),
            _ => self.body.as_bytes().to_vec(),
        }
    }

    fn filename(&self) -> Option<String> {
        parameter(&self.disposition().1, "filename")
            .or_else(|| parameter(&self.content_type_params, "name"))
    }
}

impl Mail {
    /// The first header called `name` (case-insensitive), unfolded, its RFC 2047 encoded
    /// words decoded, trimmed. Headers end at the first empty line.
    pub fn header(&self, name: &str) -> Option<String> {
        let (headers, _) = split_entity(&self.data);
        raw_header(headers, name).map(|value| decode_words(&value))
    }

    /// The decoded text of the first `text/plain` part that is not an attachment (the whole
    /// body of a single-part message), line endings as `\n`, trailing line breaks removed;
    /// empty if there is none.
    pub fn text(&self) -> String {
        let leaves = self.leaves();
        let Some(leaf) = leaves.iter().find(|leaf| leaf.is_text()) else {
            return String::new();
        };
        let charset = parameter(&leaf.content_type_params, "charset").unwrap_or_default();
        let text = decode_charset(&charset, &leaf.decoded());
        text.replace("\r\n", "\n").trim_end_matches('\n').to_owned()
    }

    /// Every part but the text one ([`Mail::text`]): its content type (`type/subtype`, lower
    /// case, without parameters), its file name (from `Content-Disposition`, else from the
    /// content type's `name`) and its decoded body.
    pub fn attachments(&self) -> Vec<(String, Option<String>, Vec<u8>)> {
        let leaves = self.leaves();
        let text = leaves.iter().position(Leaf::is_text);
        leaves
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != text)
            .map(|(_, leaf)| (leaf.content_type.clone(), leaf.filename(), leaf.decoded()))
            .collect()
    }

    fn leaves(&self) -> Vec<Leaf<'_>> {
        // The last line ending is the one of the final `.` line's CRLF.CRLF.
        let message = self
            .data
            .strip_suffix("\r\n")
            .or_else(|| self.data.strip_suffix('\n'))
            .unwrap_or(&self.data);
        let mut leaves = Vec::new();
        collect_leaves(message, &mut leaves, 0);
        leaves
    }
}

fn collect_leaves<'a>(entity: &'a str, leaves: &mut Vec<Leaf<'a>>, depth: usize) {
    let (headers, body) = split_entity(entity);
    let (content_type, content_type_params) = raw_header(headers, "content-type")
        .map(|value| parameters(&value))
        .unwrap_or_else(|| ("text/plain".to_owned(), Vec::new()));
    if content_type.starts_with("multipart/")
        && depth < 16
        && let Some(boundary) = parameter(&content_type_params, "boundary")
    {
        for part in split_multipart(body, &boundary) {
            collect_leaves(part, leaves, depth + 1);
        }
        return;
    }
    leaves.push(Leaf {
        headers,
        body,
        content_type,
        content_type_params,
    });
}

/// An entity's header block and body, split at the first empty line.
fn split_entity(entity: &str) -> (&str, &str) {
    let mut offset = 0;
    for line in entity.split_inclusive('\n') {
        if line.trim_end_matches(['\r', '\n']).is_empty() {
            return (&entity[..offset], &entity[offset + line.len()..]);
        }
        offset += line.len();
    }
    (entity, "")
}

/// The first header called `name` in a header block, unfolded and trimmed, not decoded.
fn raw_header(headers: &str, name: &str) -> Option<String> {
    let mut found: Option<String> = None;
    for line in headers.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            // A folded line continues the header before it.
            if let Some(value) = &mut found {
                value.push_str(line);
            }
            continue;
        }
        if found.is_some() {
            break;
        }
        if let Some((field, value)) = line.split_once(':')
            && field.trim().eq_ignore_ascii_case(name)
        {
            found = Some(value.to_owned());
        }
    }
    found.map(|value| value.trim().to_owned())
}

/// A header value like `type/subtype; a=b; c="d"`: its first item, lower case, and its
/// parameters (names lower case, quoted values unquoted).
fn parameters(value: &str) -> (String, Vec<(String, String)>) {
    let mut items = Vec::new();
    let mut item = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            item.push(c);
            escaped = false;
        } else if quoted && c == '\\' {
            item.push(c);
            escaped = true;
        } else if c == '"' {
            item.push(c);
            quoted = !quoted;
        } else if c == ';' && !quoted {
            items.push(std::mem::take(&mut item));
        } else {
            item.push(c);
        }
    }
    items.push(item);
    let mut items = items.into_iter();
    let first = items.next().unwrap_or_default().trim().to_ascii_lowercase();
    let params = items
        .filter_map(|item| {
            let (name, value) = item.split_once('=')?;
            Some((name.trim().to_ascii_lowercase(), unquote(value.trim())))
        })
        .collect();
    (first, params)
}

fn unquote(value: &str) -> String {
    let Some(inner) = value
        .strip_prefix('"')
        .and_then(|value| value.strip_suffix('"'))
    else {
        return value.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

/// The parameter `name`, plain (RFC 2047 words decoded) or RFC 2231 (`name*`, or continued
/// as `name*0`, `name*1*`, ...).
fn parameter(params: &[(String, String)], name: &str) -> Option<String> {
    let find = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    if let Some(value) = find(name) {
        return Some(decode_words(value));
    }
    if let Some(value) = find(&format!("{name}*")) {
        return Some(extended(value, true));
    }
    let mut value = String::new();
    for i in 0.. {
        if let Some(piece) = find(&format!("{name}*{i}")) {
            value.push_str(piece);
        } else if let Some(piece) = find(&format!("{name}*{i}*")) {
            value.push_str(&extended(piece, i == 0));
        } else if i == 0 {
            return None;
        } else {
            break;
        }
    }
    Some(value)
}

/// An RFC 2231 extended value: `charset'language'percent-encoded` (the prefix only on the
/// first piece).
fn extended(value: &str, first: bool) -> String {
    let pieces: Vec<&str> = value.splitn(3, '\'').collect();
    let (charset, encoded) = match pieces[..] {
        [charset, _language, encoded] if first => (charset, encoded),
        _ => ("utf-8", value),
    };
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = hex_byte(bytes.get(i + 1..i + 3))
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    decode_charset(charset, &out)
}

/// A multipart body's parts (without the line ending before each delimiter).
fn split_multipart<'a>(body: &'a str, boundary: &str) -> Vec<&'a str> {
    let open = format!("--{boundary}");
    let close = format!("--{boundary}--");
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut offset = 0;
    for line in body.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == open || bare == close {
            if let Some(start) = start {
                let part = &body[start..offset];
                let part = part
                    .strip_suffix("\r\n")
                    .or_else(|| part.strip_suffix('\n'))
                    .unwrap_or(part);
                parts.push(part);
            }
            if bare == close {
                return parts;
            }
            start = Some(offset + line.len());
        }
        offset += line.len();
    }
    // No closing delimiter: the last part runs to the end.
    if let Some(start) = start {
        parts.push(&body[start..]);
    }
    parts
}

fn quoted_printable(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'=' {
            out.push(bytes[i]);
            i += 1;
        } else if bytes[i + 1..].starts_with(b"\r\n") {
            // A soft line break.
            i += 3;
        } else if bytes[i + 1..].starts_with(b"\n") {
            i += 2;
        } else if let Some(byte) = hex_byte(bytes.get(i + 1..i + 3)) {
            out.push(byte);
            i += 3;
        } else {
            out.push(b'=');
            i += 1;
        }
    }
    out
}

fn hex_byte(digits: Option<&[u8]>) -> Option<u8> {
    let digits = std::str::from_utf8(digits?).ok()?;
    u8::from_str_radix(digits, 16).ok()
}

fn decode_charset(charset: &str, bytes: &[u8]) -> String {
    match charset.trim().to_ascii_lowercase().as_str() {
        "iso-8859-1" | "latin1" | "latin-1" => bytes.iter().map(|&b| char::from(b)).collect(),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

enum Piece<'a> {
    Text(&'a str),
    /// An encoded word: its charset (lower case) and its decoded bytes.
    Word(String, Vec<u8>),
}

/// Decodes a header value's RFC 2047 encoded words (`=?charset?B?...?=`, `=?charset?Q?...?=`);
/// adjacent words separated only by whitespace are joined, the whitespace dropped.
fn decode_words(value: &str) -> String {
    let mut pieces = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let Some(i) = rest.find("=?") else {
            pieces.push(Piece::Text(rest));
            break;
        };
        if let Some((charset, bytes, len)) = encoded_word(&rest[i..]) {
            if i > 0 {
                pieces.push(Piece::Text(&rest[..i]));
            }
            pieces.push(Piece::Word(charset, bytes));
            rest = &rest[i + len..];
        } else {
            pieces.push(Piece::Text(&rest[..i + 2]));
            rest = &rest[i + 2..];
        }
    }
    let mut out = String::new();
    // Bytes of consecutive words in one charset are decoded together: a character may be
    // split between two words.
    let mut pending: Option<(String, Vec<u8>)> = None;
    for (k, piece) in pieces.iter().enumerate() {
        match piece {
            Piece::Word(charset, bytes) => match &mut pending {
                Some((pending_charset, pending_bytes)) if pending_charset == charset => {
                    pending_bytes.extend_from_slice(bytes);
                }
                _ => {
                    if let Some((charset, bytes)) = pending.take() {
                        out.push_str(&decode_charset(&charset, &bytes));
                    }
                    pending = Some((charset.clone(), bytes.clone()));
                }
            },
            Piece::Text(text) => {
                let between_words = k > 0
                    && matches!(pieces[k - 1], Piece::Word(..))
                    && matches!(pieces.get(k + 1), Some(Piece::Word(..)))
                    && text.chars().all(char::is_whitespace);
                if between_words {
                    continue;
                }
                if let Some((charset, bytes)) = pending.take() {
                    out.push_str(&decode_charset(&charset, &bytes));
                }
                out.push_str(text);
            }
        }
    }
    if let Some((charset, bytes)) = pending {
        out.push_str(&decode_charset(&charset, &bytes));
    }
    out
}

/// The encoded word at the start of `text`: its charset, its bytes and its length.
fn encoded_word(text: &str) -> Option<(String, Vec<u8>, usize)> {
    let inner = text.strip_prefix("=?")?;
    let (charset, after) = inner.split_once('?')?;
    let (encoding, after) = after.split_once('?')?;
    let end = after.find("?=")?;
    let encoded = &after[..end];
    if charset.is_empty()
        || charset.contains(char::is_whitespace)
        || encoded.contains(char::is_whitespace)
    {
        return None;
    }
    let bytes = match encoding {
        "B" | "b" => STANDARD
            .decode(encoded)
            .or_else(|_| STANDARD_NO_PAD.decode(encoded.trim_end_matches('=')))
            .ok()?,
        "Q" | "q" => {
            let bytes = encoded.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                match bytes[i] {
                    b'_' => out.push(b' '),
                    b'=' => {
                        out.push(hex_byte(bytes.get(i + 1..i + 3))?);
                        i += 2;
                    }
                    byte => out.push(byte),
                }
                i += 1;
            }
            out
        }
        _ => return None,
    };
    let len = "=?".len() + charset.len() + 1 + encoding.len() + 1 + end + "?=".len();
    // RFC 2231 lets a charset carry a language: `utf-8*en`.
    let charset = charset
        .split('*')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    Some((charset, bytes, len))
}
