//! Test harness: a real ingest on a free port, a private storage directory and a private
//! RabbitMQ queue per test, and a client that puts on the wire exactly what KAZOO's `httpc`
//! does (header set and order, empty `te:`, no user-agent, KAZOO's multipart layout).
//!
//! RabbitMQ is taken from `VMPIPE_TEST_AMQP_URL` (default: guest on 127.0.0.1:5672).
//!
//! One module per thing the harness fakes or drives; every public item is re-exported here,
//! so `use vmpipe_tests::*;` brings them all.

use std::time::Duration;

pub mod api;
pub mod audio;
pub mod database;
pub mod events;
pub mod garage;
pub mod ingest;
pub mod kazoo;
pub mod metrics;
pub mod openai;
pub mod process;
pub mod proxy;
pub mod queue;
pub mod response;
pub mod smtp;
pub mod stack;
pub mod webhook;
pub mod worker;

pub use api::{Answer, TestApi, api_command};
pub use audio::{hex32, nasty_audio, sha256_hex, wav_pcm16};
pub use database::{TestDatabase, database_admin_url, migrated, text, wait_for_count};
pub use events::{AmqpEvent, EventConsumer, amqp_sink, settings_file, webhook_sink};
pub use garage::Garage;
pub use ingest::{Backend, Options, TestIngest, Tweak, all_files};
pub use kazoo::{
    ALL_BODIES, Attachment, Body, Kazoo, VOICEMAIL_FETCH_QUERY, Verb, encode_body, kazoo_boundary,
    mailbox_message, start_partial_put,
};
pub use metrics::sample;
pub use openai::{OpenaiServer, Reply, TranscriptionRequest};
pub use process::{
    Service, binary, free_port, http_get, process_running, settings_env, worker_start_output,
};
pub use proxy::{Proxy, url_addr};
pub use queue::{TestQueue, amqp_url};
pub use response::{Response, read_response, read_response_from};
pub use smtp::{Mail, SmtpServer};
pub use stack::Stack;
pub use webhook::{Received, WebhookReceiver, blackhole};
pub use worker::{TestWorker, hooks_file, shell_hook};

/// How long end-to-end tests wait for something to happen.
pub const WAIT: Duration = Duration::from_secs(20);

/// A benchmark's logs: on standard output when `RUST_LOG` is set, else none.
pub fn bench_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        vmpipe_common::logging::init(
            vmpipe_common::settings::LogFormat::Text,
            vmpipe_common::logging::Output::Stdout,
        );
    }
}
