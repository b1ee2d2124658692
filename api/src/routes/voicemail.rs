//! `GET /api/v1/voicemails/{id}`: one voicemail, KAZOO's document, and every transcription
//! with its segments.

use actix_web::{HttpRequest, HttpResponse, web};
use sqlx::types::Json;
use uuid::Uuid;

use super::model::{Transcription, VOICEMAIL_COLUMNS, Voicemail, VoicemailDetail, audio_url};
use super::{NoParams, parse_id, query_string};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::server::State;

#[derive(sqlx::FromRow)]
struct Row {
    #[sqlx(flatten)]
    voicemail: Voicemail,
    metadata: Option<Json<serde_json::Value>>,
}

/// Get a voicemail
///
/// With KAZOO's document and every transcription (one per hook), each with its segments.
/// Another account's voicemail is not found (404), as one that does not exist.
#[utoipa::path(
    get,
    path = "/api/v1/voicemails/{id}",
    tag = "voicemails",
    params(("id" = Uuid, Path, description = "The voicemail's id (voicemails.id)")),
    responses(
        (status = 200, description = "The voicemail", body = VoicemailDetail),
        (status = 400, description = "A bad id or parameter", body = crate::error::ErrorBody),
        (status = 401, description = "No token, or an unknown or revoked one", body = crate::error::ErrorBody),
        (status = 404, description = "No such voicemail (for this token)", body = crate::error::ErrorBody),
        (status = 503, description = "The database is unavailable", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<State>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let _: NoParams = query_string(&req)?;
    let id = parse_id(&id)?;
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {VOICEMAIL_COLUMNS}, v.metadata FROM voicemails v
         WHERE v.id = $1 AND ($2::text[] IS NULL OR v.account_id = ANY($2))"
    )))
    .bind(id)
    .bind(caller.accounts())
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound)?;
    let transcriptions: Vec<Transcription> = sqlx::query_as(
        "SELECT hook, status, text, language, confidence, error, attempts, queued_at,
                started_at, finished_at, segments
         FROM transcriptions WHERE voicemail_id = $1 ORDER BY hook",
    )
    .bind(id)
    .fetch_all(&state.pool)
    .await?;
    Ok(super::json(&VoicemailDetail {
        voicemail: row.voicemail,
        metadata: row.metadata.map(|m| m.0),
        transcriptions,
        audio_url: audio_url(id),
    }))
}

/// The voicemail `id` names, if the caller may read it: its key, size, hash and type.
#[derive(sqlx::FromRow)]
pub(crate) struct AudioRow {
    pub storage_key: String,
    pub sha256: String,
    pub codec: Option<String>,
    pub content_type: Option<String>,
    pub attachment_name: String,
}

pub(crate) async fn audio_row(
    state: &State,
    caller: &Caller,
    id: Uuid,
) -> Result<AudioRow, ApiError> {
    sqlx::query_as(
        "SELECT storage_key, sha256, codec, content_type, attachment_name FROM voicemails
         WHERE id = $1 AND ($2::text[] IS NULL OR account_id = ANY($2))",
    )
    .bind(id)
    .bind(caller.accounts())
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound)
}
