use std::path::PathBuf;

use clap::Parser;
use vmpipe_common::{Settings, telemetry};
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
    telemetry::init(settings.log_format);
    let app = Application::build(settings).await?;
    app.run_until_stopped().await?;
    Ok(())
}
