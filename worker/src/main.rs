use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use vmpipe_common::{Settings, telemetry};

/// vmpipe worker: indexes stored voicemails. Settings come from VMPIPE_* environment
/// variables, over an optional TOML file, over built-in defaults (see README).
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Settings file (TOML); VMPIPE_CONFIG names one too.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    telemetry::init(settings.log_format);
    let shutdown = CancellationToken::new();
    tokio::spawn(vmpipe_common::signals::cancel_on_signal(shutdown.clone()));
    vmpipe_worker::run(settings, shutdown).await?;
    Ok(())
}
