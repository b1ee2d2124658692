use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use vmpipe_common::{Settings, logging, signals};
use vmpipe_ingest::Application;

/// vmpipe ingest: KAZOO's HTTP storage backend. Settings come from VMPIPE_* environment
/// variables, over an optional TOML file, over built-in defaults (see README).
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Settings file (TOML); VMPIPE_CONFIG names one too.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    logging::init(settings.log_format, logging::Output::Stdout);
    // Listening for signals from the start: one during start-up stops ingest once it is up.
    let shutdown = CancellationToken::new();
    tokio::spawn(signals::cancel_on_signal(shutdown.clone()));
    let app = Application::build(settings).await?;
    app.run(shutdown).await?;
    Ok(())
}
