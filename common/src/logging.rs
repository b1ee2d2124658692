//! Log setup for every binary: structured logs with `tracing`, readable text by default, JSON
//! lines for log pipelines. `RUST_LOG` filters (default `info`). Terminal colours only when the
//! logs go to a terminal.

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

pub fn init(format: LogFormat, output: Output) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
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
