//! The `email` sink: a short plain-text message per event over SMTP (lettre), optionally with
//! the audio attached.
//!
//! The subject says what happened and who called; the body has the caller, the mailbox, when
//! the message was left, its duration and the transcript. An SMTP server's permanent refusal
//! (a 5xx reply) is final; anything else (no connection, a 4xx, a timeout) is retried.

use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use vmpipe_common::logging::chain as error_chain;
use vmpipe_common::settings::{NotifySettings, SmtpTls};
use vmpipe_common::{Storage, StorageKey};

use super::{DeliveryError, Event, Sink};

pub(super) struct EmailSink {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    attach_audio: bool,
    max_attachment: u64,
    store: Arc<dyn Storage>,
}

impl EmailSink {
    pub(super) fn new(settings: &NotifySettings, store: Arc<dyn Storage>) -> anyhow::Result<Self> {
        let host = settings
            .smtp_host
            .as_deref()
            .context("an email sink needs smtp_host")?;
        let from: Mailbox = settings
            .from
            .as_deref()
            .context("an email sink needs from")?
            .parse()
            .context("from is not an e-mail address")?;
        let to = settings
            .to
            .iter()
            .map(|to| {
                to.parse::<Mailbox>()
                    .with_context(|| format!("to: {to:?} is not an e-mail address"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let builder = match settings.smtp_tls {
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .context("smtp_host for STARTTLS")?,
            SmtpTls::Tls => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(host).context("smtp_host for TLS")?
            }
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
        };
        let mut builder = builder
            .port(settings.smtp_port())
            .timeout(Some(settings.timeout()));
        let password = super::secret_value(
            settings.smtp_password.as_ref(),
            settings.smtp_password_file.as_deref(),
            "smtp_password_file",
        )?;
        if let (Some(user), Some(password)) = (&settings.smtp_username, password) {
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            to,
            attach_audio: settings.attach_audio,
            max_attachment: settings.max_attachment.0,
            store,
        })
    }

    async fn send(&self, event: &Event) -> Result<(), DeliveryError> {
        let mut text = body(event);
        let audio = if self.attach_audio {
            match self.audio(event).await {
                Ok(audio) => audio,
                Err(note) => {
                    let _ = write!(text, "\n({note})\n");
                    None
                }
            }
        } else {
            None
        };
        let mut message = Message::builder()
            .from(self.from.clone())
            .subject(subject(event))
            .message_id(Some(format!("<{}@vmpipe>", event.event_id)));
        for to in &self.to {
            message = message.to(to.clone());
        }
        let text_part = SinglePart::plain(text);
        let message = match audio {
            Some((name, content_type, bytes)) => message.multipart(
                MultiPart::mixed()
                    .singlepart(text_part)
                    .singlepart(Attachment::new(name).body(bytes, content_type)),
            ),
            None => message.singlepart(text_part),
        }
        .map_err(|e| DeliveryError::fatal(format!("building the message: {e}")))?;
        self.transport.send(message).await.map_err(|e| {
            let message = format!("SMTP: {}", error_chain(&e));
            if e.is_permanent() {
                DeliveryError::fatal(message)
            } else {
                DeliveryError::retry(message)
            }
        })?;
        Ok(())
    }

    /// The voicemail's audio to attach, or why there is none (a note for the message).
    async fn audio(&self, event: &Event) -> Result<Option<(String, ContentType, Vec<u8>)>, String> {
        let Some(key) = event
            .field("storage_key")
            .and_then(|key| StorageKey::parse(key).ok())
        else {
            return Ok(None);
        };
        if event.kind == "voicemail.deleted" {
            return Ok(None);
        }
        let object = match self.store.open(&key).await {
            Ok(Some(object)) => object,
            Ok(None) => return Err("the audio file is gone, so it is not attached".into()),
            Err(e) => {
                return Err(format!(
                    "the audio could not be read ({e}), so it is not attached"
                ));
            }
        };
        if object.size > self.max_attachment {
            return Err(format!(
                "the audio ({} bytes) is larger than the sink's max_attachment, so it is not attached",
                object.size
            ));
        }
        let mut bytes = Vec::with_capacity(object.size as usize);
        let mut body = object.body;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| format!("the audio could not be read ({e})"))?;
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > self.max_attachment {
                return Err("the audio grew past max_attachment while read".into());
            }
        }
        let name = event
            .field("attachment_name")
            .unwrap_or("voicemail")
            .to_owned();
        let content_type = event
            .field("content_type")
            .and_then(|t| ContentType::parse(t).ok())
            .unwrap_or_else(|| {
                if name.ends_with(".wav") {
                    ContentType::parse("audio/wav").expect("a content type")
                } else {
                    ContentType::parse("audio/mpeg").expect("a content type")
                }
            });
        Ok(Some((name, content_type, bytes)))
    }
}

impl Sink for EmailSink {
    fn deliver<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(self.send(event))
    }
}

/// `Alice Smith (+15551234567)`, or whichever of the two is known.
fn caller(event: &Event) -> String {
    let name = event.field("caller_id_name").filter(|n| !n.is_empty());
    let number = event.field("caller_id_number").filter(|n| !n.is_empty());
    match (name, number) {
        (Some(name), Some(number)) if name != number => format!("{name} ({number})"),
        (Some(name), _) => name.to_owned(),
        (None, Some(number)) => number.to_owned(),
        (None, None) => "an unknown caller".to_owned(),
    }
}

/// `1001`: the mailbox number the call was for (KAZOO's `to_user`), else its id.
fn mailbox(event: &Event) -> Option<&str> {
    event
        .field("to_user")
        .or_else(|| event.field("mailbox_id"))
        .filter(|m| !m.is_empty())
}

/// `0:42`, `1:02:03`.
fn duration(event: &Event) -> Option<String> {
    let ms = event.voicemail.get("duration_ms")?.as_i64()?;
    let secs = (ms + 500) / 1000;
    Some(if secs >= 3600 {
        format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    } else {
        format!("{}:{:02}", secs / 60, secs % 60)
    })
}

fn subject(event: &Event) -> String {
    let what = match event.kind.as_str() {
        "voicemail.indexed" => "New voicemail",
        "voicemail.updated" => "Voicemail replaced",
        "voicemail.transcribed" => "Voicemail transcribed",
        "voicemail.transcription_failed" => "Voicemail (not transcribed)",
        "voicemail.deleted" => "Voicemail deleted",
        other => other,
    };
    let mut subject = format!("{what} from {}", caller(event));
    if let Some(mailbox) = mailbox(event) {
        let _ = write!(subject, " for {mailbox}");
    }
    if let Some(duration) = duration(event) {
        let _ = write!(subject, " ({duration})");
    }
    subject
}

fn body(event: &Event) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "From:      {}", caller(event));
    if let Some(mailbox) = mailbox(event) {
        let _ = writeln!(text, "Mailbox:   {mailbox}");
    }
    let when = event
        .field("recorded_at")
        .or_else(|| event.field("received_at"))
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string()
        });
    if let Some(when) = when {
        let _ = writeln!(text, "Left at:   {when}");
    }
    if let Some(duration) = duration(event) {
        let _ = writeln!(text, "Duration:  {duration}");
    }
    match event.kind.as_str() {
        "voicemail.transcribed" => {
            let language = event
                .transcript_field("language")
                .map(|l| format!(", {l}"))
                .unwrap_or_default();
            let hook = event.transcript_field("hook").unwrap_or("transcript");
            let _ = writeln!(text, "\nTranscript ({hook}{language}):\n");
            let _ = writeln!(
                text,
                "{}",
                event.transcript_field("text").unwrap_or("").trim()
            );
        }
        "voicemail.transcription_failed" => {
            let _ = writeln!(
                text,
                "\nThe transcription failed: {}",
                event
                    .transcript_field("error")
                    .unwrap_or("no reason recorded")
            );
        }
        "voicemail.deleted" => {
            let _ = writeln!(text, "\nThe voicemail was deleted (retention).");
        }
        _ => {}
    }
    if let Some(url) = event.field("audio_url") {
        let _ = writeln!(text, "\nListen: {url}");
    }
    let _ = writeln!(text, "\n-- \n{} {}", event.kind, event.event_id);
    text
}
