//! The event sinks: the `[[notify]]` tables of the settings file, and the event types they
//! filter on.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ByteSize, Secret, SecretUrl};

/// Every event type, as it appears in `events.type`, a message's routing key and a sink's
/// `events` filter.
pub const EVENT_TYPES: &[&str] = &[
    "voicemail.indexed",
    "voicemail.updated",
    "voicemail.transcribed",
    "voicemail.transcription_failed",
    "voicemail.deleted",
];

/// The exchange an `amqp` sink publishes to when it names none.
pub const DEFAULT_EVENTS_EXCHANGE: &str = "vmpipe.events";

/// Bounds of a sink's settings.
const MAX_TIMEOUT_MS: u64 = 600_000;
const MAX_ATTEMPTS: u32 = 1000;
const MAX_RETRY_DELAY_MS: u64 = 3_600_000;
const MAX_CONCURRENCY: u16 = 4096;
const MAX_ATTACHMENT: u64 = 25 * 1024 * 1024;

/// One `[[notify]]` table of the settings file: where events go.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {
    /// Recorded in `event_deliveries.sink`; letters, digits, `-`, `_` and `.`.
    pub name: String,
    pub kind: NotifyKind,
    /// The event types this sink gets; empty (the default): all of them.
    #[serde(default)]
    pub events: Vec<String>,
    /// Only events of these accounts; empty (the default): every account's.
    #[serde(default)]
    pub accounts: Vec<String>,
    /// `amqp`: the broker (default: `amqp_url`). `webhook`: where events are POSTed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<SecretUrl>,
    /// `amqp`: the durable topic exchange (declared if missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// `webhook`: the key of the `X-Vmpipe-Signature` HMAC-SHA256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// `webhook`: a file holding the key (a Docker secret, say), instead of `secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<std::path::PathBuf>,
    /// `webhook`: extra request headers.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, Secret>,
    /// `email`: the SMTP server's host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_host: Option<String>,
    /// `email`: its port (default: 587 with `starttls`, 465 with `tls`, 25 with `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_port: Option<u16>,
    /// `email`: `starttls` (the default), `tls` (implicit TLS) or `none` (plain text: a local
    /// relay only).
    #[serde(default)]
    pub smtp_tls: SmtpTls,
    /// `email`: the SMTP user name (AUTH PLAIN or LOGIN, over TLS unless `smtp_tls = "none"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_password: Option<Secret>,
    /// `email`: a file holding the password, instead of `smtp_password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_password_file: Option<std::path::PathBuf>,
    /// `email`: the sender, `vmpipe <voicemail@example.com>` say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// `email`: the recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// `email`: attach the audio (up to `max_attachment`; a larger file is left out, and the
    /// message says so).
    #[serde(default)]
    pub attach_audio: bool,
    #[serde(default = "NotifySettings::default_max_attachment")]
    pub max_attachment: ByteSize,
    /// Longest one delivery may take (a request, a publish's confirm, an SMTP session).
    #[serde(default = "NotifySettings::default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts before a delivery is marked `failed`.
    #[serde(default = "NotifySettings::default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry; doubled after each failed attempt, at most an hour.
    #[serde(default = "NotifySettings::default_retry_delay_ms")]
    pub retry_delay_ms: u64,
    /// Deliveries this sink has in flight at once (per worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyKind {
    /// Publishes to a topic exchange, routing key `{type}.{account_id}`.
    Amqp,
    /// POSTs the event, signed.
    Webhook,
    /// Sends an e-mail over SMTP.
    Email,
}

impl NotifyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Amqp => "amqp",
            Self::Webhook => "webhook",
            Self::Email => "email",
        }
    }
}

/// How an `email` sink secures its SMTP connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required: a server without it is an error).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS at all: for a relay on the same host or network only.
    None,
}

impl NotifySettings {
    /// A sink of `kind` named `name` with every other setting at its default (for code that
    /// builds settings: tests, embedding).
    pub fn new(name: &str, kind: NotifyKind) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            events: Vec::new(),
            accounts: Vec::new(),
            url: None,
            exchange: None,
            secret: None,
            secret_file: None,
            headers: Default::default(),
            smtp_host: None,
            smtp_port: None,
            smtp_tls: SmtpTls::default(),
            smtp_username: None,
            smtp_password: None,
            smtp_password_file: None,
            from: None,
            to: Vec::new(),
            attach_audio: false,
            max_attachment: Self::default_max_attachment(),
            timeout_ms: Self::default_timeout_ms(),
            max_attempts: Self::default_max_attempts(),
            retry_delay_ms: Self::default_retry_delay_ms(),
            concurrency: None,
        }
    }

    fn default_max_attachment() -> ByteSize {
        ByteSize(10 * 1024 * 1024)
    }

    fn default_timeout_ms() -> u64 {
        10_000
    }

    fn default_max_attempts() -> u32 {
        20
    }

    fn default_retry_delay_ms() -> u64 {
        1000
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn retry_delay(&self) -> Duration {
        Duration::from_millis(self.retry_delay_ms)
    }

    /// Deliveries in flight at once: `concurrency`, or the kind's default (a broker takes
    /// hundreds of unconfirmed messages; a web server or a mail server a few requests).
    pub fn concurrency(&self) -> usize {
        usize::from(self.concurrency.unwrap_or(match self.kind {
            NotifyKind::Amqp => 512,
            NotifyKind::Webhook => 16,
            NotifyKind::Email => 2,
        }))
    }

    /// Whether an event of `event_type` for `account_id` goes to this sink.
    pub fn wants(&self, event_type: &str, account_id: Option<&str>) -> bool {
        (self.events.is_empty() || self.events.iter().any(|t| t == event_type))
            && (self.accounts.is_empty()
                || account_id.is_some_and(|a| self.accounts.iter().any(|x| x == a)))
    }

    /// The SMTP port: `smtp_port`, or the one `smtp_tls` implies.
    pub fn smtp_port(&self) -> u16 {
        self.smtp_port.unwrap_or(match self.smtp_tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        })
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        super::hooks::check_name(&self.name)?;
        if let Some(unknown) = self
            .events
            .iter()
            .find(|t| !EVENT_TYPES.contains(&t.as_str()))
        {
            return Err(format!(
                "unknown event type {unknown:?} (the types: {})",
                EVENT_TYPES.join(", ")
            ));
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(format!(
                "timeout_ms must be 1 to {MAX_TIMEOUT_MS} (10 minutes)"
            ));
        }
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(format!("max_attempts must be 1 to {MAX_ATTEMPTS}"));
        }
        if !(10..=MAX_RETRY_DELAY_MS).contains(&self.retry_delay_ms) {
            return Err(format!(
                "retry_delay_ms must be 10 to {MAX_RETRY_DELAY_MS} (an hour)"
            ));
        }
        if self
            .concurrency
            .is_some_and(|c| c == 0 || c > MAX_CONCURRENCY)
        {
            return Err(format!("concurrency must be 1 to {MAX_CONCURRENCY}"));
        }
        if self.max_attachment.0 > MAX_ATTACHMENT {
            return Err(format!(
                "max_attachment must be at most {} MiB (each e-mail in flight holds its attachment)",
                MAX_ATTACHMENT >> 20
            ));
        }
        let set = |name: &'static str, set: bool| (name, set);
        let (own, others): (&[&str], Vec<(&str, bool)>) = (
            match self.kind {
                NotifyKind::Amqp => &["url", "exchange"],
                NotifyKind::Webhook => &["url", "secret", "secret_file", "headers"],
                NotifyKind::Email => &[
                    "smtp_host",
                    "smtp_port",
                    "smtp_username",
                    "smtp_password",
                    "smtp_password_file",
                    "from",
                    "to",
                ],
            },
            vec![
                set("url", self.url.is_some()),
                set("exchange", self.exchange.is_some()),
                set("secret", self.secret.is_some()),
                set("secret_file", self.secret_file.is_some()),
                set("headers", !self.headers.is_empty()),
                set("smtp_host", self.smtp_host.is_some()),
                set("smtp_port", self.smtp_port.is_some()),
                set("smtp_username", self.smtp_username.is_some()),
                set("smtp_password", self.smtp_password.is_some()),
                set("smtp_password_file", self.smtp_password_file.is_some()),
                set("from", self.from.is_some()),
                set("to", !self.to.is_empty()),
            ],
        );
        if let Some((setting, _)) = others
            .iter()
            .find(|(name, set)| *set && !own.contains(name))
        {
            return Err(format!(
                "`{setting}` is not a setting of `kind = \"{}\"` sinks",
                self.kind.as_str()
            ));
        }
        match self.kind {
            NotifyKind::Amqp => {
                if let Some(url) = &self.url
                    && !(url.expose().starts_with("amqp://")
                        || url.expose().starts_with("amqps://"))
                {
                    return Err("an amqp sink's `url` is amqp(s)://...".into());
                }
                if let Some(exchange) = &self.exchange
                    && (exchange.is_empty() || exchange.len() > 200 || exchange.starts_with("amq."))
                {
                    return Err(
                        "exchange must be 1 to 200 characters, not starting with \"amq.\"".into(),
                    );
                }
                Ok(())
            }
            NotifyKind::Webhook => {
                let http_url = self.url.as_ref().is_some_and(|url| {
                    url.expose().starts_with("http://") || url.expose().starts_with("https://")
                });
                if !http_url {
                    return Err("a webhook sink needs `url = \"http(s)://...\"`".into());
                }
                match (&self.secret, &self.secret_file) {
                    (None, None) => Err(
                        "a webhook sink needs `secret` (or `secret_file`): its receiver checks \
                         the signature with it"
                            .into(),
                    ),
                    (Some(_), Some(_)) => Err("secret and secret_file: one or the other".into()),
                    (Some(secret), None) if secret.expose().len() < 16 => {
                        Err("secret must be at least 16 characters".into())
                    }
                    _ => Ok(()),
                }
            }
            NotifyKind::Email => {
                if self
                    .smtp_host
                    .as_deref()
                    .is_none_or(|h| h.trim().is_empty())
                {
                    return Err("an email sink needs `smtp_host`".into());
                }
                if self.from.as_deref().is_none_or(|f| f.trim().is_empty()) || self.to.is_empty() {
                    return Err("an email sink needs `from` and `to = [\"...\"]`".into());
                }
                if self.smtp_password.is_some() && self.smtp_password_file.is_some() {
                    return Err("smtp_password and smtp_password_file: one or the other".into());
                }
                let password = self.smtp_password.is_some() || self.smtp_password_file.is_some();
                if password != self.smtp_username.is_some() {
                    return Err("smtp_username and a password go together".into());
                }
                Ok(())
            }
        }
    }
}
