use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use vmpipe_api::{Application, tokens};
use vmpipe_common::{Settings, logging, signals};

/// vmpipe api: the HTTP API and inbox page over the voicemail index. Settings come from
/// VMPIPE_* environment variables, over an optional TOML file, over built-in defaults (see
/// README).
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Settings file (TOML); VMPIPE_CONFIG names one too.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and the inbox page on VMPIPE_API_LISTEN (the default).
    Run,
    /// Print PostgreSQL's plan (EXPLAIN ANALYZE) of a list query, given as the query string of
    /// GET /api/v1/voicemails (`q=invoice&limit=50`), for a token reading --accounts (default:
    /// every account).
    Explain {
        query: String,
        #[arg(long, value_delimiter = ',')]
        accounts: Vec<String>,
    },
    /// Create, list and revoke the API's tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it (once: only its hash is kept).
    Create {
        /// Who or what the token is for (unique among the tokens not revoked).
        #[arg(long)]
        name: String,
        /// The KAZOO accounts it may read, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            required_unless_present = "all_accounts",
            conflicts_with = "all_accounts"
        )]
        accounts: Vec<String>,
        /// It may read every account.
        #[arg(long)]
        all_accounts: bool,
    },
    /// List the tokens (never the tokens themselves), one JSON object per line.
    List,
    /// Revoke a token, by its id or its name: it is refused from the next request on.
    Revoke {
        /// The token's id (from `api token list`) or name.
        token: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    let command = cli.command.unwrap_or(Command::Run);
    // The service's logs are its output; a command's output is what it prints.
    let logs_to = match command {
        Command::Run => logging::Output::Stdout,
        Command::Token { .. } | Command::Explain { .. } => logging::Output::Stderr,
    };
    logging::init(settings.log_format, logs_to);
    match command {
        Command::Run => {
            let shutdown = CancellationToken::new();
            tokio::spawn(signals::cancel_on_signal(shutdown.clone()));
            Application::build(settings).await?.run(shutdown).await?;
        }
        Command::Token { command } => return token(command, &settings).await,
        Command::Explain { query, accounts } => {
            let pool = vmpipe_api::connect(&settings, 1).await?;
            vmpipe_api::migrate(&settings).await?;
            let accounts = (!accounts.is_empty()).then_some(accounts);
            match vmpipe_api::explain(&pool, &query, accounts.as_deref()).await {
                Ok(plan) => println!("{plan}"),
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn token(command: TokenCommand, settings: &Settings) -> anyhow::Result<ExitCode> {
    let pool = vmpipe_api::connect(settings, 2).await?;
    vmpipe_api::migrate(settings).await?;
    match command {
        TokenCommand::Create {
            name,
            accounts,
            all_accounts,
        } => {
            let accounts = (!all_accounts).then_some(accounts);
            let created = tokens::create(&pool, &name, accounts.as_deref()).await?;
            // The token alone on standard output, for `TOKEN=$(api token create ...)`.
            println!("{}", created.token);
            eprintln!(
                "token {:?} created (id {}): it is shown only this once",
                created.info.name, created.info.id
            );
        }
        TokenCommand::List => {
            for info in tokens::list(&pool).await? {
                println!("{}", serde_json::to_string(&info)?);
            }
        }
        TokenCommand::Revoke { token } => match tokens::revoke(&pool, &token).await? {
            Some(info) => println!(
                "{}",
                serde_json::json!({ "revoked": info.name, "id": info.id })
            ),
            None => {
                eprintln!("no token not yet revoked has the id or name {token:?}");
                return Ok(ExitCode::FAILURE);
            }
        },
    }
    pool.close().await;
    Ok(ExitCode::SUCCESS)
}
