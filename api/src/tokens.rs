//! API tokens: `vmpipe_` and 256 random bits, base64url. Only a token's SHA-256 is stored (a
//! slow password hash buys nothing against 256 random bits, and each request checks one), with
//! its name and the KAZOO accounts it may read (`NULL`: every account).

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::DbError;

/// What every token starts with (so that a leaked one is recognisable, by people and scanners).
pub const TOKEN_PREFIX: &str = "vmpipe_";
/// The longest token name and account id `api token create` takes.
const MAX_NAME: usize = 200;

/// A token as `api token list` shows it (never the token).
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct TokenInfo {
    pub id: Uuid,
    pub name: String,
    /// `None`: every account.
    pub accounts: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A token just created: the secret, shown once.
pub struct Created {
    pub token: String,
    pub info: TokenInfo,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Invalid(String),
    #[error("a token named {0:?} exists (revoke it first, or pick another name)")]
    NameTaken(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for TokenError {
    fn from(e: sqlx::Error) -> Self {
        TokenError::Db(DbError::Query(e))
    }
}

/// The SHA-256 the table keeps of `token`.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn check_text(what: &str, value: &str) -> Result<(), TokenError> {
    if value.trim().is_empty()
        || value.len() > MAX_NAME
        || value.chars().any(|c| c.is_control())
        || value != value.trim()
    {
        return Err(TokenError::Invalid(format!(
            "{what} must be 1 to {MAX_NAME} printable characters without surrounding spaces: {value:?}"
        )));
    }
    Ok(())
}

/// Creates a token named `name` for `accounts` (`None`: every account).
pub async fn create(
    pool: &PgPool,
    name: &str,
    accounts: Option<&[String]>,
) -> Result<Created, TokenError> {
    check_text("the name", name)?;
    if let Some(accounts) = accounts {
        if accounts.is_empty() {
            return Err(TokenError::Invalid(
                "give the accounts the token may read (--accounts A,B) or --all-accounts".into(),
            ));
        }
        for account in accounts {
            check_text("an account id", account)?;
        }
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| TokenError::Invalid(format!("no randomness from the system: {e}")))?;
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let inserted = sqlx::query_as::<_, TokenInfo>(
        "INSERT INTO api_tokens (id, name, token_sha256, accounts) VALUES ($1, $2, $3, $4)
         RETURNING id, name, accounts, created_at, last_used_at, revoked_at",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(hash(&token))
    .bind(accounts)
    .fetch_one(pool)
    .await;
    match inserted {
        Ok(info) => Ok(Created { token, info }),
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            Err(TokenError::NameTaken(name.to_owned()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Every token, revoked ones included, oldest first.
pub async fn list(pool: &PgPool) -> Result<Vec<TokenInfo>, TokenError> {
    Ok(sqlx::query_as::<_, TokenInfo>(
        "SELECT id, name, accounts, created_at, last_used_at, revoked_at
         FROM api_tokens ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await?)
}

/// Revokes the token (not yet revoked) with this id or name; `None` when there is none.
pub async fn revoke(pool: &PgPool, id_or_name: &str) -> Result<Option<TokenInfo>, TokenError> {
    let id = Uuid::parse_str(id_or_name).ok();
    Ok(sqlx::query_as::<_, TokenInfo>(
        "UPDATE api_tokens SET revoked_at = now()
         WHERE revoked_at IS NULL AND (id = $1 OR ($1 IS NULL AND name = $2))
         RETURNING id, name, accounts, created_at, last_used_at, revoked_at",
    )
    .bind(id)
    .bind(id_or_name)
    .fetch_optional(pool)
    .await?)
}
