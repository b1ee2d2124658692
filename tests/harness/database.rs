//! PostgreSQL: a database of the test's own, whether the worker has migrated it, and polling
//! a count until it reaches the expected value.

use std::time::{Duration, Instant};

pub fn database_admin_url() -> String {
    std::env::var("VMPIPE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of the test's own, dropped by [`TestDatabase::drop`]. The worker creates it
/// (as on a fresh install); the test only names it.
pub struct TestDatabase {
    pub url: String,
    name: String,
}

impl TestDatabase {
    pub fn new() -> Self {
        let name = format!("vmpipe_test_{}", uuid::Uuid::new_v4().simple());
        let admin = database_admin_url();
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url)
            .await
            .expect("test database reachable")
    }

    pub async fn drop(self) {
        use sqlx::Connection as _;
        let mut admin = sqlx::PgConnection::connect(&database_admin_url())
            .await
            .expect("admin connection");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#,
            self.name
        )))
        .execute(&mut admin)
        .await
        .expect("drop test database");
    }

    /// Waits until a worker has created and migrated this database, and connects to it.
    pub async fn wait_for_schema(&self) -> sqlx::PgPool {
        for _ in 0..400 {
            if let Ok(pool) = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect(&self.url)
                .await
                && migrated(&pool).await
            {
                return pool;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("worker did not migrate the database");
    }
}

impl Default for TestDatabase {
    fn default() -> Self {
        Self::new()
    }
}

/// Polls `query` (a single count) until it returns `expected`, or fails after `timeout`.
pub async fn wait_for_count(
    pool: &sqlx::PgPool,
    query: &'static str,
    expected: i64,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let count: i64 = sqlx::query_scalar(query)
            .fetch_one(pool)
            .await
            .unwrap_or(-1);
        if count == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{query}: {count}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether every migration has been applied (they commit one by one, so a table of the first
/// can exist while the last is still to come).
pub async fn migrated(pool: &sqlx::PgPool) -> bool {
    let applied: Result<i64, _> =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await;
    applied.is_ok_and(|n| n as usize == vmpipe_worker::MIGRATOR.iter().count())
}

/// A text column of a row, `""` when NULL.
pub fn text(row: &sqlx::postgres::PgRow, column: &str) -> String {
    use sqlx::Row;
    row.get::<Option<String>, _>(column).unwrap_or_default()
}
