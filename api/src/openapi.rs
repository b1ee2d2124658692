//! `GET /api/v1/openapi.json`: the OpenAPI 3 document, generated from the handlers' and
//! types' annotations (utoipa), so that it cannot drift from the code; the e2e tests check it
//! against the routes and the answers.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::ErrorBody;
use crate::routes::{audio, list, model, voicemail};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vmpipe API",
        description = "Search, read and play the voicemails vmpipe indexed. Every request but \
            this document carries `Authorization: Bearer <token>` (`api token create`); a token \
            reads only its KAZOO accounts. Errors are JSON: `{\"error\": \"<stable code>\", \
            \"message\": \"...\"}`."
    ),
    paths(list::list, voicemail::get, audio::audio),
    components(schemas(
        ErrorBody,
        model::ListPage,
        model::ListItem,
        model::Voicemail,
        model::VoicemailDetail,
        model::Transcription,
        model::Segment,
        model::TranscriptSnippet,
        model::SnippetPart
    )),
    modifiers(&Bearer),
    tags((name = "voicemails", description = "Voicemails, their transcripts and audio"))
)]
struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document, as JSON.
pub fn json() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

pub(crate) async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(json())
}
