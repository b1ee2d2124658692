use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use vmpipe_common::{Settings, logging, signals};
use vmpipe_worker::admin;

/// vmpipe worker: indexes stored voicemails into PostgreSQL. Settings come from VMPIPE_*
/// environment variables, over an optional TOML file, over built-in defaults (see README).
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Settings file (TOML); VMPIPE_CONFIG names one too.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Seconds between the progress lines of long admin commands (reconcile, reindex,
    /// prune), logged on standard error; 0 logs one per step.
    #[arg(long, global = true, default_value_t = 5)]
    progress_secs: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations, then consume jobs (the default).
    Run,
    /// Apply pending migrations and exit.
    Migrate,
    /// Enqueue every stored voicemail that has no row; report rows whose file is gone.
    Reconcile {
        /// Only report; publish nothing.
        #[arg(long)]
        dry_run: bool,
        /// List every key in the report (by default: counts and the first 20 keys of each list).
        #[arg(long)]
        full: bool,
    },
    /// Move the jobs now in the dead-letter queue back to the job queue (after a fix).
    ReplayDead,
    /// List the dead-lettered jobs (one JSON object per line), or drop them with --drop.
    DeadLetters {
        /// Only those whose reason (the x-vmpipe-error header) contains this text.
        #[arg(long)]
        error: Option<String>,
        /// Only those whose storage key starts with this.
        #[arg(long)]
        key: Option<String>,
        /// Remove the matching ones from the dead-letter queue (the others stay, in their
        /// order); needs --error or --key, or --all.
        #[arg(long)]
        drop: bool,
        /// With --drop and no filter: drop every dead letter.
        #[arg(long, requires = "drop")]
        all: bool,
    },
    /// Probe every indexed voicemail's file again and rewrite its measured columns.
    Reindex {
        /// List every missing file in the report (by default: the count and the first 20).
        #[arg(long)]
        full: bool,
    },
    /// Delete voicemails (files and rows) older than an age. A dry run unless --apply.
    Prune {
        /// Age by `received_at`: 90d, 12h, 30m...
        #[arg(long)]
        older_than: String,
        /// Really delete (the default only reports).
        #[arg(long)]
        apply: bool,
        /// Files deleted per batch.
        #[arg(long, default_value_t = 100)]
        batch: i64,
        /// Pause between batches, in milliseconds.
        #[arg(long, default_value_t = 500)]
        pause_ms: u64,
        /// Delete the rows whose file is missing too (by default they are kept and reported).
        #[arg(long)]
        include_missing_files: bool,
        /// Prune even though most of the old rows' files are missing from the storage
        /// directory (which otherwise means it is the wrong one).
        #[arg(long)]
        force: bool,
        /// List every kept key in the report (by default: the count and the first 20).
        #[arg(long)]
        full: bool,
    },
    /// Run the hooks (transcribers) for one voicemail now and print their rows, exiting
    /// non-zero if one did not succeed; or, with --all, queue them for every voicemail, for a
    /// running worker to work through.
    Transcribe {
        /// The voicemail's id (voicemails.id) or storage key.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        voicemail: Option<String>,
        /// Queue the hooks for every voicemail (or, with --status, those whose row has it).
        #[arg(long)]
        all: bool,
        /// Only this hook (default: every configured one).
        #[arg(long)]
        hook: Option<String>,
        /// With --all: only voicemails whose row for the hook is in this state.
        #[arg(long, requires = "all")]
        status: Option<admin::QueueStatus>,
    },
    /// See the events (the outbox) and their deliveries, or send them again.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Measure audio files: one JSON object per line; exits non-zero if any cannot be probed.
    Probe {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Print the matching events, oldest first, one JSON object per line: the event as sinks
    /// receive it, with its `deliveries` (sink, status, attempts, last_error).
    List {
        #[command(flatten)]
        filter: EventArgs,
        /// At most this many events.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
    },
    /// Make the matching events due again for the configured sinks that take them (with their
    /// event_id unchanged); the running workers deliver them.
    Replay {
        #[command(flatten)]
        filter: EventArgs,
    },
}

#[derive(clap::Args)]
struct EventArgs {
    /// Events since an age ago (30m, 2h, 7d) or a time (2026-12-03T09:00:00Z); `replay` needs it.
    #[arg(long)]
    since: Option<String>,
    /// Only events of this type (voicemail.indexed, voicemail.transcribed, ...).
    #[arg(long = "type")]
    kind: Option<String>,
    /// Only this account's events.
    #[arg(long)]
    account: Option<String>,
    /// Only this voicemail's events (its id or storage key).
    #[arg(long)]
    voicemail: Option<String>,
    /// Only events with a delivery in this state: pending, sending, delivered or failed.
    #[arg(long)]
    status: Option<String>,
    /// Only this sink's deliveries (`replay`: only to this sink).
    #[arg(long)]
    sink: Option<String>,
}

impl EventArgs {
    fn filter(self) -> anyhow::Result<admin::EventFilter> {
        let since = match self.since {
            None => None,
            Some(text) => Some(match chrono::DateTime::parse_from_rfc3339(&text) {
                Ok(time) => time.with_timezone(&chrono::Utc),
                Err(_) => {
                    let age = admin::parse_age(&text).map_err(|e| {
                        anyhow::anyhow!("--since is an age (2h) or an RFC 3339 time: {e}")
                    })?;
                    chrono::Utc::now() - chrono::Duration::from_std(age)?
                }
            }),
        };
        Ok(admin::EventFilter {
            since,
            kind: self.kind,
            account: self.account,
            voicemail: self.voicemail,
            status: self.status,
            sink: self.sink,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    if let Some(Command::Probe { files }) = &cli.command {
        return Ok(if admin::probe_files(files) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let settings = Settings::load(cli.config.as_deref())?;
    let command = cli.command.unwrap_or(Command::Run);
    // The service's logs are its output; an admin command's output is its report.
    let logs_to = match command {
        Command::Run => logging::Output::Stdout,
        _ => logging::Output::Stderr,
    };
    logging::init(settings.log_format, logs_to);
    let progress = std::time::Duration::from_secs(cli.progress_secs);
    match run(command, &settings, progress).await {
        // The reader (`| head`, say) went away: not a failure of the command.
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Writes one line of a report to standard output.
fn emit(line: impl std::fmt::Display) -> std::io::Result<()> {
    use std::io::Write as _;
    writeln!(std::io::stdout().lock(), "{line}")
}

async fn run(
    command: Command,
    settings: &Settings,
    progress: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    let settings = settings.clone();
    match command {
        Command::Run => {
            let shutdown = CancellationToken::new();
            tokio::spawn(signals::cancel_on_signal(shutdown.clone()));
            vmpipe_worker::run(settings, shutdown).await?;
        }
        Command::Migrate => {
            vmpipe_worker::migrate(&settings).await?.close().await;
        }
        Command::Reconcile { dry_run, full } => {
            let report = admin::reconcile(&settings, dry_run, full, progress).await?;
            emit(serde_json::to_string_pretty(&report)?)?;
        }
        Command::ReplayDead => {
            let replayed = admin::replay_dead(&settings).await?;
            emit(serde_json::json!({ "replayed": replayed }))?;
        }
        Command::DeadLetters {
            error,
            key,
            drop,
            all,
        } => {
            let filter = admin::DeadLetterFilter { error, key };
            if drop {
                if filter.is_empty() && !all {
                    anyhow::bail!("--drop needs --error or --key (or --all to drop every one)");
                }
                let dropped = admin::drop_dead_letters(&settings, &filter).await?;
                emit(serde_json::json!({ "dropped": dropped.dropped, "kept": dropped.kept }))?;
            } else {
                for dead in admin::dead_letters(&settings, &filter).await? {
                    emit(serde_json::to_string(&dead)?)?;
                }
            }
        }
        Command::Reindex { full } => {
            let report = admin::reindex(&settings, full, progress).await?;
            emit(serde_json::to_string_pretty(&report)?)?;
        }
        Command::Prune {
            older_than,
            apply,
            batch,
            pause_ms,
            include_missing_files,
            force,
            full,
        } => {
            let age = admin::parse_age(&older_than).map_err(anyhow::Error::msg)?;
            let options = admin::PruneOptions {
                cutoff: chrono::Utc::now() - chrono::Duration::from_std(age)?,
                apply,
                batch,
                pause: std::time::Duration::from_millis(pause_ms),
                include_missing_files,
                force,
                full,
                progress,
            };
            let report = admin::prune(&settings, &options).await?;
            emit(serde_json::to_string_pretty(&report)?)?;
        }
        Command::Transcribe {
            voicemail,
            all,
            hook,
            status,
        } => {
            if all {
                for queued in admin::queue_hooks(&settings, hook.as_deref(), status).await? {
                    emit(serde_json::to_string(&queued)?)?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            let voicemail = voicemail.expect("required without --all");
            let reports = vmpipe_worker::transcribe(&settings, &voicemail, hook.as_deref()).await?;
            for report in &reports {
                emit(serde_json::to_string(report)?)?;
            }
            if reports.iter().any(|report| report.status != "done") {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Events {
            command: EventsCommand::List { filter, limit },
        } => {
            for event in admin::list_events(&settings, &filter.filter()?, limit).await? {
                emit(serde_json::to_string(&event)?)?;
            }
        }
        Command::Events {
            command: EventsCommand::Replay { filter },
        } => {
            let filter = filter.filter()?;
            if filter.since.is_none() {
                anyhow::bail!("replay needs --since (an age, 2h, or a time)");
            }
            let replayed = admin::replay_events(&settings, &filter).await?;
            emit(serde_json::to_string(&replayed)?)?;
        }
        Command::Probe { .. } => unreachable!("handled before the settings load"),
    }
    Ok(ExitCode::SUCCESS)
}
