//! PostgreSQL as the worker and the api share it (feature `postgres`): the migrations, the
//! database made on a fresh install, and which failures are worth a retry.

use sqlx::Postgres;
use sqlx::migrate::{MigrateDatabase, Migrator};

/// The SQL files in `migrations/`, embedded at build time. Applied by the worker and the api at
/// start, under PostgreSQL's advisory lock (either may come first, several at once).
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Creates the database `url` names when it does not exist (a fresh install). Several
/// processes may race here: whoever loses sees "already exists", which is fine.
pub async fn create_if_missing(url: &str) -> Result<(), sqlx::Error> {
    if !Postgres::database_exists(url).await?
        && let Err(e) = Postgres::create_database(url).await
        && !Postgres::database_exists(url).await?
    {
        return Err(e);
    }
    Ok(())
}

/// Whether retrying later can help: the database is away, overloaded or restarting, as
/// opposed to refusing this data.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08 connection, 40 serialization/deadlock, 53 resources, 57 operator action
            // (admin shutdown, crash recovery, a statement timeout), 58 system error.
            ["08", "40", "53", "57", "58"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}
