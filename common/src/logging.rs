//! Log setup for every binary: structured logs with `tracing`, readable text by default, JSON
//! lines for log pipelines. `RUST_LOG` filters (default [`DEFAULT_FILTER`]: vmpipe's own lines
//! at `info`, its dependencies' only from `warn`). Terminal colours only when the logs go to a
//! terminal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Where the logs go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// The services: their logs are their output.
    Stdout,
    /// Commands whose output is a report (a script reads standard output).
    Stderr,
}

/// The filter when `RUST_LOG` is not set: `info`, but the dependencies' `info` lines (actix's
/// worker start and stop, sqlx's migration notices, symphonia's format probing) are noise to an
/// operator, and lapin's own `error` lines on a lost connection say again what vmpipe already
/// logs as a warning ("lost the RabbitMQ connection", "reconnecting"). `RUST_LOG` replaces the
/// whole filter (`RUST_LOG=info` shows them all again, `RUST_LOG=info,lapin=debug` lapin's).
/// A target matches every module path it begins (`actix` is `actix_server`, `actix_web`...).
pub const DEFAULT_FILTER: &str =
    "info,actix=warn,sqlx=warn,symphonia=warn,lapin=off,amq_protocol=warn,rustls=warn";

pub fn init(format: LogFormat, output: Output) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let colours = match output {
        Output::Stdout => std::io::stdout().is_terminal(),
        Output::Stderr => std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours);
    // A second init (tests) keeps the first subscriber.
    let _ = match (format, output) {
        (LogFormat::Text, Output::Stdout) => builder.try_init(),
        (LogFormat::Text, Output::Stderr) => builder.with_writer(std::io::stderr).try_init(),
        (LogFormat::Json, Output::Stdout) => builder.json().flatten_event(true).try_init(),
        (LogFormat::Json, Output::Stderr) => builder
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .try_init(),
    };
}

/// `error` and its causes, `: `-separated (`error sending request: connection refused`), for a
/// log line or a recorded error.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
