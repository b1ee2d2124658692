//! PostgreSQL: the pool the api reads through, and the migrations it applies at start (the
//! same files as the worker's, under the same advisory lock, so that either may start first).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use vmpipe_common::Settings;
use vmpipe_common::db::MIGRATOR;
pub(crate) use vmpipe_common::db::is_transient;

/// A database failure, and whether retrying later can help.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("PostgreSQL: {0}")]
    Query(#[from] sqlx::Error),
    #[error("PostgreSQL migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl DbError {
    /// Whether the database is away, overloaded or restarting (retry), as opposed to refusing.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Query(e) => is_transient(e),
            DbError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => is_transient(e),
            DbError::Migrate(_) => false,
        }
    }
}

/// The pool, connecting on first use (the api starts while PostgreSQL is still away), each
/// connection with `VMPIPE_API_STATEMENT_TIMEOUT_MS`.
pub async fn connect(settings: &Settings, max_connections: u32) -> Result<PgPool, DbError> {
    let url = settings.database_url.expose();
    let options: PgConnectOptions = url.parse::<PgConnectOptions>()?.options([(
        "statement_timeout",
        settings.api_statement_timeout_ms.to_string(),
    )]);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// Applies pending migrations (under PostgreSQL's advisory lock: safe beside the workers), on a
/// connection of their own without `VMPIPE_API_STATEMENT_TIMEOUT_MS`: building an index on a
/// large table may take minutes.
pub async fn migrate(settings: &Settings) -> Result<(), DbError> {
    // A fresh install where the api starts before any worker.
    vmpipe_common::db::create_if_missing(settings.database_url.expose()).await?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(settings.database_url.expose())
        .await?;
    let migrated = MIGRATOR.run(&pool).await;
    pool.close().await;
    migrated?;
    Ok(())
}

/// Whether the statement ran past `statement_timeout`.
pub(crate) fn is_timeout(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("57014"))
}
