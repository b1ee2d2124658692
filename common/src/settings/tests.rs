use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_match_the_documented_ones() {
    let s = Settings::load_from(None, &env(&[])).unwrap();
    assert_eq!(s.listen, "0.0.0.0:8080");
    assert_eq!(s.path_prefix, "/");
    assert_eq!(s.storage_dir, PathBuf::from("./data"));
    assert_eq!(s.queue, "vmpipe.jobs");
    assert_eq!(s.max_body, ByteSize(256 << 20));
    assert_eq!(s.base64, Base64Mode::Auto);
    assert_eq!(s.upload_deadline_secs, 2400);
    assert_eq!(s.max_document, ByteSize(64 << 10));
    assert_eq!(s.metrics_listen(), None);
}

#[test]
fn upload_limits_and_the_metrics_address_are_settings() {
    let s = Settings::load_from(
        None,
        &env(&[
            ("VMPIPE_UPLOAD_DEADLINE_SECS", "600"),
            ("VMPIPE_MAX_DOCUMENT", "16KiB"),
            ("VMPIPE_METRICS_LISTEN", "127.0.0.1:9090"),
        ]),
    )
    .unwrap();
    assert_eq!(s.upload_deadline_secs, 600);
    assert_eq!(s.max_document, ByteSize(16 << 10));
    assert_eq!(s.metrics_listen(), Some("127.0.0.1:9090"));
    let s = Settings::load_from(None, &env(&[("VMPIPE_METRICS_LISTEN", "")])).unwrap();
    assert_eq!(s.metrics_listen(), None);
    for (name, value) in [
        ("VMPIPE_UPLOAD_DEADLINE_SECS", "0"),
        ("VMPIPE_MAX_DOCUMENT", "10"),
        ("VMPIPE_MAX_DOCUMENT", "1GiB"),
    ] {
        let err = Settings::load_from(None, &env(&[(name, value)])).unwrap_err();
        let key = name.trim_start_matches("VMPIPE_").to_ascii_lowercase();
        assert!(err.to_string().contains(&key), "{name}={value}: {err}");
    }
}

#[test]
fn environment_overrides_file_which_overrides_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vmpipe.toml");
    std::fs::write(
        &file,
        "queue = \"from.file\"\nmax_body = \"2MiB\"\nbase64 = \"never\"\n",
    )
    .unwrap();
    let s = Settings::load_from(
        Some(&file),
        &env(&[
            ("VMPIPE_QUEUE", "from.env"),
            ("VMPIPE_PUBLISH_TIMEOUT_MS", "250"),
            ("OTHER_QUEUE", "ignored"),
        ]),
    )
    .unwrap();
    assert_eq!(s.queue, "from.env");
    assert_eq!(s.max_body, ByteSize(2 << 20));
    assert_eq!(s.base64, Base64Mode::Never);
    assert_eq!(s.publish_timeout_ms, 250);
}

#[test]
fn config_file_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vmpipe.toml");
    std::fs::write(&file, "path_prefix = \"/kazoo\"\n").unwrap();
    let s = Settings::load_from(None, &env(&[(CONFIG_FILE_ENV, file.to_str().unwrap())])).unwrap();
    assert_eq!(s.normalized_prefix(), "/kazoo");
}

#[test]
fn typos_are_errors_not_silently_ignored() {
    let err = Settings::load_from(None, &env(&[("VMPIPE_MAX_BDOY", "1")])).unwrap_err();
    assert!(err.to_string().contains("max_bdoy"), "{err}");
    let err = Settings::load_from(None, &env(&[("VMPIPE_MAX_BODY", "12XB")])).unwrap_err();
    assert!(err.to_string().contains("unit"), "{err}");
}

#[test]
fn hooks_come_from_the_settings_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vmpipe.toml");
    std::fs::write(
        &file,
        r#"
transcriber = "whisper"

[[hooks]]
name = "whisper-cpp"
kind = "command"
command = ["whisper-cli", "-f", "{audio}"]
audio = "wav16k"
timeout_secs = 60
concurrency = 3

[[hooks]]
name = "crm"
kind = "webhook"
url = "https://crm.example/voicemail"
headers = { Authorization = "Bearer s3cret" }
"#,
    )
    .unwrap();
    let s = Settings::load_from(Some(&file), &env(&[("VMPIPE_HOOK_CONCURRENCY", "4")])).unwrap();
    assert_eq!(s.transcriber, Transcriber::Whisper);
    assert_eq!(s.hook_concurrency, 4);
    assert_eq!(s.hooks.len(), 2);
    let whisper = &s.hooks[0];
    assert_eq!(whisper.kind, HookKind::Command);
    assert_eq!(whisper.command, ["whisper-cli", "-f", "{audio}"]);
    assert_eq!(whisper.audio, HookAudio::Wav16k);
    assert_eq!((whisper.timeout_secs, whisper.max_attempts), (60, 5));
    assert_eq!(whisper.concurrency, Some(3));
    let crm = &s.hooks[1];
    assert_eq!(crm.kind, HookKind::Webhook);
    assert_eq!(crm.concurrency, None, "VMPIPE_HOOK_CONCURRENCY then");
    assert_eq!(crm.audio, HookAudio::Original);
    assert_eq!(crm.headers["Authorization"].expose(), "Bearer s3cret");
    assert!(!format!("{s:?}").contains("s3cret"));
}

#[test]
fn bad_hooks_are_refused_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vmpipe.toml");
    for (toml, expected) in [
        (
            "[[hooks]]\nname = \"a\"\nkind = \"command\"\n",
            "needs `command",
        ),
        (
            "[[hooks]]\nname = \"b\"\nkind = \"webhook\"\nurl = \"ftp://x\"\n",
            "url",
        ),
        (
            "[[hooks]]\nname = \"a b\"\nkind = \"command\"\ncommand = [\"x\"]\n",
            "name",
        ),
        (
            "transcriber = \"whisper\"\n[[hooks]]\nname = \"whisper\"\nkind = \"command\"\ncommand = [\"x\"]\n",
            "two hooks",
        ),
        (
            "[[hooks]]\nname = \"c\"\nkind = \"command\"\ncommand = [\"x\"]\ntimeout = 5\n",
            "timeout",
        ),
        (
            "[[hooks]]\nname = \"d\"\nkind = \"command\"\ncommand = [\"x\"]\nconcurrency = 0\n",
            "concurrency must be at least 1",
        ),
    ] {
        std::fs::write(&file, toml).unwrap();
        let err = Settings::load_from(Some(&file), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{toml}: {err}");
    }
}

#[test]
fn an_openai_hook_has_its_server_model_language_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vmpipe.toml");
    std::fs::write(
        &file,
        r#"
[[hooks]]
name = "groq"
kind = "openai"
url = "https://api.groq.com/openai"
model = "whisper-large-v3-turbo"
language = "de"
api_key = "gsk_s3cret"

[[hooks]]
name = "local"
kind = "openai"
url = "http://127.0.0.1:8000"
model = "Systran/faster-whisper-small"
api_key_file = "/run/secrets/whisper_key"
audio = "wav16k"
"#,
    )
    .unwrap();
    let s = Settings::load_from(Some(&file), &env(&[])).unwrap();
    let groq = &s.hooks[0];
    assert_eq!(groq.kind, HookKind::Openai);
    assert_eq!(
        groq.url.as_ref().unwrap().expose(),
        "https://api.groq.com/openai"
    );
    assert_eq!(groq.model.as_deref(), Some("whisper-large-v3-turbo"));
    assert_eq!(groq.language.as_deref(), Some("de"));
    assert_eq!(groq.api_key.as_ref().unwrap().expose(), "gsk_s3cret");
    assert_eq!(groq.audio, HookAudio::Original);
    let local = &s.hooks[1];
    assert_eq!(local.language, None, "the server detects it");
    assert_eq!(local.api_key, None);
    assert_eq!(
        local.api_key_file.as_deref(),
        Some(std::path::Path::new("/run/secrets/whisper_key"))
    );
    assert!(
        !format!("{s:?}").contains("s3cret"),
        "the key is never shown"
    );
}

#[test]
fn bad_openai_hooks_are_refused_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vmpipe.toml");
    let hook = |rest: &str| format!("[[hooks]]\nname = \"stt\"\nkind = \"openai\"\n{rest}");
    for (toml, expected) in [
        (hook("model = \"whisper-1\"\n"), "needs `url"),
        (
            hook("url = \"api.openai.com\"\nmodel = \"whisper-1\"\n"),
            "needs `url",
        ),
        (hook("url = \"https://api.openai.com\"\n"), "needs `model`"),
        (
            hook("url = \"https://api.openai.com\"\nmodel = \" \"\n"),
            "needs `model`",
        ),
        (
            hook("url = \"https://x\"\nmodel = \"m\"\nlanguage = \"English\"\n"),
            "language must be a language code",
        ),
        (
            hook("url = \"https://x\"\nmodel = \"m\"\napi_key = \"k\"\napi_key_file = \"/k\"\n"),
            "one or the other",
        ),
        (
            hook("url = \"https://x\"\nmodel = \"m\"\napi_key = \"\"\n"),
            "api_key is empty",
        ),
        (
            hook("url = \"https://x\"\nmodel = \"m\"\nmodle = \"n\"\n"),
            "modle",
        ),
        (
            "[[hooks]]\nname = \"crm\"\nkind = \"webhook\"\nurl = \"https://x\"\nmodel = \"m\"\n"
                .into(),
            "`model` is a setting of `kind = \"openai\"` hooks",
        ),
    ] {
        std::fs::write(&file, &toml).unwrap();
        let err = Settings::load_from(Some(&file), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{toml}: {err}");
        let named = err.contains("\"stt\"") || err.contains("\"crm\"") || expected == "modle";
        assert!(named, "the error names the hook: {err}");
    }
}

#[test]
fn byte_sizes_parse() {
    assert_eq!("1048576".parse::<ByteSize>().unwrap(), ByteSize(1 << 20));
    assert_eq!("64MiB".parse::<ByteSize>().unwrap(), ByteSize(64 << 20));
    assert_eq!("512k".parse::<ByteSize>().unwrap(), ByteSize(512 << 10));
    assert!("-1".parse::<ByteSize>().is_err());
}

#[test]
fn passwords_are_masked() {
    assert_eq!(
        redact_url("amqp://guest:secret@rabbit:5672/%2f"),
        "amqp://guest:***@rabbit:5672/%2f"
    );
    assert_eq!(
        format!("{:?}", SecretUrl("postgres://u:p@db/x".into())),
        "\"postgres://u:***@db/x\""
    );
    assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
}

#[test]
fn allowed_networks_are_parsed_at_load_time() {
    let s =
        Settings::load_from(None, &env(&[("VMPIPE_ALLOW_NETWORKS", "10.0.0.0/8, ::1")])).unwrap();
    assert!(s.allow_networks.contains("10.1.2.3".parse().unwrap()));
    assert!(!s.allow_networks.contains("192.0.2.1".parse().unwrap()));
    let err =
        Settings::load_from(None, &env(&[("VMPIPE_ALLOW_NETWORKS", "10.0.0.0/33")])).unwrap_err();
    assert!(err.to_string().contains("prefix length"), "{err}");
    let s = Settings::load_from(None, &env(&[])).unwrap();
    assert_eq!(s.allow_networks, Networks::default());
    assert!(!s.allow_networks.is_explicit());
    assert!(s.allow_networks.contains("127.0.0.1".parse().unwrap()));
    assert!(!s.allow_networks.contains("203.0.113.9".parse().unwrap()));
    let s =
        Settings::load_from(None, &env(&[("VMPIPE_ALLOW_NETWORKS", "0.0.0.0/0,::/0")])).unwrap();
    assert!(s.allow_networks.is_explicit() && s.allow_networks.admits_everyone());
}

#[test]
fn an_empty_variable_is_an_unset_one() {
    // What compose passes for `${VMPIPE_X:-}` when the operator set nothing.
    let names = Settings::variable_names();
    let empty: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "")).collect();
    let s = Settings::load_from(None, &env(&empty)).unwrap();
    let defaults = Settings::default();
    assert_eq!(
        serde_json::to_value(&s).unwrap(),
        serde_json::to_value(&defaults).unwrap()
    );
    assert!(s.access_token.is_none() && s.basic_auth.is_none() && s.tls_cert.is_none());
    assert!(!s.allow_networks.is_explicit());
}

#[test]
fn variable_names_come_from_the_settings() {
    let names = Settings::variable_names();
    for name in [
        "VMPIPE_LISTEN",
        "VMPIPE_ALLOW_NETWORKS",
        "VMPIPE_ACCESS_TOKEN",
        "VMPIPE_TLS_CERT",
        "VMPIPE_TLS_KEY",
        "VMPIPE_CONFIG",
        "VMPIPE_MAX_AUDIO_SECS",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    assert!(!names.iter().any(|n| n == "VMPIPE_HOOKS"), "file only");
    assert!(!names.iter().any(|n| n == "VMPIPE_NOTIFY"), "file only");
    // Each one is a setting the loader takes (a typo would be refused), VMPIPE_CONFIG aside.
    let fields = serde_json::to_value(Settings::default()).unwrap();
    assert_eq!(
        names.len(),
        fields.as_object().unwrap().len() - super::FILE_ONLY.len() + 1
    );
}

#[test]
fn docker_compose_passes_every_setting() {
    // scripts/check-compose.sh checks the resolved file per service; this catches a new
    // setting missing from the shared environment without docker-compose.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml");
    let compose = std::fs::read_to_string(&path).unwrap();
    let missing: Vec<String> = Settings::variable_names()
        .into_iter()
        .filter(|name| {
            !compose
                .lines()
                .any(|line| line.trim_start().starts_with(&format!("{name}:")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docker-compose.yml does not pass {missing:?}"
    );
}

#[test]
fn audio_limits_are_checked() {
    let s = Settings::load_from(None, &env(&[])).unwrap();
    assert_eq!(s.probe_timeout(), Duration::from_secs(10));
    assert_eq!(s.max_audio_secs, 14_400);
    let s = Settings::load_from(
        None,
        &env(&[
            ("VMPIPE_PROBE_TIMEOUT_MS", "500"),
            ("VMPIPE_MAX_AUDIO_SECS", "600"),
        ]),
    )
    .unwrap();
    assert_eq!((s.probe_timeout_ms, s.max_audio_secs), (500, 600));
    for (name, value) in [
        ("VMPIPE_PROBE_TIMEOUT_MS", "0"),
        ("VMPIPE_MAX_AUDIO_SECS", "0"),
        ("VMPIPE_MAX_AUDIO_SECS", "200000"),
    ] {
        let err = Settings::load_from(None, &env(&[(name, value)])).unwrap_err();
        let key = name.trim_start_matches("VMPIPE_").to_lowercase();
        assert!(err.to_string().contains(&key), "{name}={value}: {err}");
    }
}

#[test]
fn the_publisher_degrades_after_three_confirm_timeouts_unless_told_otherwise() {
    let s = Settings::load_from(None, &env(&[])).unwrap();
    assert_eq!(s.publish_degraded_after, 3);
    let s = Settings::load_from(None, &env(&[("VMPIPE_PUBLISH_DEGRADED_AFTER", "10")])).unwrap();
    assert_eq!(s.publish_degraded_after, 10);
    let err =
        Settings::load_from(None, &env(&[("VMPIPE_PUBLISH_DEGRADED_AFTER", "0")])).unwrap_err();
    assert!(err.to_string().contains("publish_degraded_after"), "{err}");
}

#[test]
fn the_drain_defaults_to_five_seconds_and_is_bounded() {
    assert_eq!(Settings::load_from(None, &env(&[])).unwrap().drain_secs, 5);
    let s = Settings::load_from(None, &env(&[("VMPIPE_DRAIN_SECS", "0")])).unwrap();
    assert_eq!(s.drain_period(), std::time::Duration::ZERO);
    let err = Settings::load_from(None, &env(&[("VMPIPE_DRAIN_SECS", "301")])).unwrap_err();
    assert!(err.to_string().contains("drain_secs"), "{err}");
}

#[test]
fn s3_storage_needs_a_bucket_and_a_whole_key_and_keeps_the_secret_out_of_logs() {
    let s3 = |extra: &[(&str, &str)]| {
        let mut vars = vec![("VMPIPE_STORAGE", "s3"), ("VMPIPE_S3_BUCKET", "voicemails")];
        vars.extend_from_slice(extra);
        Settings::load_from(None, &env(&vars))
    };
    let s = s3(&[
        ("VMPIPE_S3_ENDPOINT", "http://garage:3900"),
        ("VMPIPE_S3_ACCESS_KEY_ID", "GK0123"),
        ("VMPIPE_S3_SECRET_ACCESS_KEY", "topsecret"),
        ("VMPIPE_S3_PREFIX", "vmpipe/prod"),
    ])
    .unwrap();
    assert_eq!(s.storage, super::StorageKind::S3);
    assert_eq!(s.s3_bucket.as_deref(), Some("voicemails"));
    assert!(
        !format!("{s:?}").contains("topsecret"),
        "the secret is masked"
    );
    // AWS itself, credentials from its environment.
    assert!(s3(&[]).is_ok());
    let refused = |vars: &[(&str, &str)], says: &str| {
        let e = Settings::load_from(None, &env(vars))
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{vars:?}: {e}");
    };
    refused(&[("VMPIPE_STORAGE", "s3")], "VMPIPE_S3_BUCKET");
    refused(&[("VMPIPE_STORAGE", "nfs")], "storage");
    refused(
        &[
            ("VMPIPE_STORAGE", "s3"),
            ("VMPIPE_S3_BUCKET", "b"),
            ("VMPIPE_S3_ACCESS_KEY_ID", "GK0123"),
        ],
        "go together",
    );
    refused(
        &[
            ("VMPIPE_STORAGE", "s3"),
            ("VMPIPE_S3_BUCKET", "b"),
            ("VMPIPE_S3_ENDPOINT", "garage:3900"),
        ],
        "http://",
    );
    for prefix in ["/abs", "a//b", "a/../b", "a b", "100%"] {
        refused(
            &[
                ("VMPIPE_STORAGE", "s3"),
                ("VMPIPE_S3_BUCKET", "b"),
                ("VMPIPE_S3_PREFIX", prefix),
            ],
            "VMPIPE_S3_PREFIX",
        );
    }
    // The file system needs none of it.
    assert_eq!(
        Settings::load_from(None, &env(&[])).unwrap().storage,
        super::StorageKind::Fs
    );
}

#[test]
fn the_example_settings_file_s_notify_tables_load() {
    // config/vmpipe.toml.example, its [[notify]] tables uncommented.
    let example = include_str!("../../../config/vmpipe.toml.example");
    let notify = &example[example.find("# [[notify]]").expect("notify tables")..];
    let toml: String = notify
        .lines()
        .map(|line| {
            line.strip_prefix("# ")
                .unwrap_or(line.trim_start_matches('#'))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vmpipe.toml");
    std::fs::write(&file, toml).unwrap();
    // The secret files are read by the worker when it starts, not when settings load.
    let s = Settings::load_from(Some(&file), &env(&[])).unwrap();
    let kinds: Vec<NotifyKind> = s.notify.iter().map(|n| n.kind).collect();
    assert_eq!(
        kinds,
        [NotifyKind::Amqp, NotifyKind::Webhook, NotifyKind::Email]
    );
}

#[test]
fn notify_sinks_come_from_the_settings_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vmpipe.toml");
    std::fs::write(
        &file,
        r#"
[[notify]]
name = "bus"
kind = "amqp"

[[notify]]
name = "crm"
kind = "webhook"
url = "https://crm.example/events"
secret = "0123456789abcdef-secret"
events = ["voicemail.transcribed"]
accounts = ["4e3005310add6229778caf6babfe7cfb"]

[[notify]]
name = "mail"
kind = "email"
smtp_host = "smtp.example.com"
smtp_tls = "tls"
smtp_username = "vmpipe"
smtp_password = "hunter2-but-longer"
from = "Voicemail <voicemail@example.com>"
to = ["support@example.com"]
attach_audio = true
max_attachment = "5MiB"
"#,
    )
    .unwrap();
    let s = Settings::load_from(Some(&file), &env(&[])).unwrap();
    assert_eq!(s.notify.len(), 3);
    let bus = &s.notify[0];
    assert_eq!(bus.kind, NotifyKind::Amqp);
    assert_eq!((bus.concurrency(), bus.max_attempts), (512, 20));
    assert!(bus.wants("voicemail.deleted", None));
    let crm = &s.notify[1];
    assert!(crm.wants(
        "voicemail.transcribed",
        Some("4e3005310add6229778caf6babfe7cfb")
    ));
    assert!(!crm.wants(
        "voicemail.indexed",
        Some("4e3005310add6229778caf6babfe7cfb")
    ));
    assert!(!crm.wants("voicemail.transcribed", Some("another")));
    assert!(!crm.wants("voicemail.transcribed", None));
    let mail = &s.notify[2];
    assert_eq!((mail.smtp_tls, mail.smtp_port()), (SmtpTls::Tls, 465));
    assert_eq!(mail.max_attachment.0, 5 * 1024 * 1024);
    let shown = format!("{s:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("abcdef-secret"),
        "{shown}"
    );
}

#[test]
fn bad_notify_sinks_are_refused_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vmpipe.toml");
    let webhook = "[[notify]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"https://x\"\n";
    for (toml, expected) in [
        (webhook.to_owned(), "needs `secret`"),
        (format!("{webhook}secret = \"short\"\n"), "16 characters"),
        (
            format!("{webhook}secret = \"0123456789abcdef\"\nevents = [\"voicemail.created\"]\n"),
            "unknown event type \"voicemail.created\"",
        ),
        (
            format!("{webhook}secret = \"0123456789abcdef\"\nsmtp_host = \"x\"\n"),
            "`smtp_host` is not a setting of `kind = \"webhook\"`",
        ),
        (
            "[[notify]]\nname = \"a\"\nkind = \"amqp\"\n[[notify]]\nname = \"a\"\nkind = \"amqp\"\n"
                .into(),
            "two notify sinks",
        ),
        (
            "[[notify]]\nname = \"a\"\nkind = \"amqp\"\nexchange = \"amq.topic\"\n".into(),
            "amq.",
        ),
        (
            "[[notify]]\nname = \"m\"\nkind = \"email\"\nsmtp_host = \"h\"\nto = [\"a@b\"]\n".into(),
            "needs `from`",
        ),
        (
            "[[notify]]\nname = \"q\"\nkind = \"sqs\"\n".into(),
            "does not have variant constructor sqs",
        ),
    ] {
        std::fs::write(&file, &toml).unwrap();
        let err = Settings::load_from(Some(&file), &env(&[])).unwrap_err();
        assert!(err.to_string().contains(expected), "{toml}: {err}");
    }
}

#[test]
fn a_sink_s_numbers_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vmpipe.toml");
    let sink = "[[notify]]\nname = \"a\"\nkind = \"amqp\"\n";
    for (extra, expected) in [
        ("timeout_ms = 86400000\n", "timeout_ms must be 1 to"),
        ("retry_delay_ms = 0\n", "retry_delay_ms must be 10 to"),
        ("max_attempts = 4000000000\n", "max_attempts must be 1 to"),
        ("concurrency = 0\n", "concurrency must be 1 to"),
        (
            "max_attachment = \"1GiB\"\n",
            "max_attachment must be at most",
        ),
    ] {
        std::fs::write(&file, format!("{sink}{extra}")).unwrap();
        let err = Settings::load_from(Some(&file), &env(&[])).unwrap_err();
        assert!(err.to_string().contains(expected), "{extra}: {err}");
    }
    let err =
        Settings::load_from(None, &env(&[("VMPIPE_EVENT_RETENTION_HOURS", "0")])).unwrap_err();
    assert!(err.to_string().contains("event_retention_hours"), "{err}");
}
