//! Who is asking: the `Authorization: Bearer` token (never anything in the URL), checked
//! against `api_tokens` at each request, so a revocation holds from the next request on.
//! A [`Caller`] carries the accounts its token may read; every query is limited to them.

use std::future::Future;
use std::pin::Pin;

use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, web};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::ApiError;
use crate::server::State;
use crate::tokens;

/// The longest `Authorization` value looked at (a token is 50 characters).
const MAX_TOKEN: usize = 512;

/// The token behind a request, and what it may read.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    /// `None`: every account.
    pub accounts: Option<Vec<String>>,
}

impl Caller {
    /// The accounts to limit a query to (`None`: no limit).
    pub fn accounts(&self) -> Option<&[String]> {
        self.accounts.as_deref()
    }
}

/// The token's name, noted on the request for its access-log line.
#[derive(Clone)]
pub(crate) struct CallerName(pub String);

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    accounts: Option<Vec<String>>,
    last_used_at: Option<DateTime<Utc>>,
}

/// The bearer token of `req`, if it has a well-formed one.
fn bearer(req: &HttpRequest) -> Result<&str, ApiError> {
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or(ApiError::NoToken)?;
    if header.len() > MAX_TOKEN {
        return Err(ApiError::BadToken);
    }
    let value = header.to_str().map_err(|_| ApiError::BadToken)?;
    let (scheme, token) = value.split_once(' ').ok_or(ApiError::NoToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::NoToken);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::NoToken);
    }
    Ok(token)
}

async fn authenticate(req: HttpRequest) -> Result<Caller, ApiError> {
    let token = bearer(&req)?;
    let state = req
        .app_data::<web::Data<State>>()
        .expect("the app has its state");
    let row = sqlx::query_as::<_, Row>(
        "SELECT id, name, accounts, last_used_at FROM api_tokens
         WHERE token_sha256 = $1 AND revoked_at IS NULL",
    )
    .bind(tokens::hash(token))
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::BadToken)?;
    if row
        .last_used_at
        .is_none_or(|at| Utc::now() - at > chrono::Duration::minutes(1))
    {
        // At most once a minute, off the request's path: a failure here costs nothing but the
        // timestamp.
        let pool = state.pool.clone();
        tokio::spawn(async move {
            let _ = sqlx::query("UPDATE api_tokens SET last_used_at = now() WHERE id = $1")
                .bind(row.id)
                .execute(&pool)
                .await;
        });
    }
    req.extensions_mut().insert(CallerName(row.name));
    Ok(Caller {
        accounts: row.accounts,
    })
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Caller, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        Box::pin(authenticate(req.clone()))
    }
}
