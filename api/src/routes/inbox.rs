//! The inbox page at `/`: plain HTML, CSS and JavaScript built into the binary (no CDN, works
//! offline), under a Content-Security-Policy that allows nothing but this origin. The page
//! talks to the API with the token the user signs in with (kept in the tab's sessionStorage),
//! and plays audio fetched with it (a `blob:` URL: an `<audio src>` cannot send the header).

use actix_web::HttpResponse;
use actix_web::http::header;

const PAGE: &str = include_str!("../../static/inbox.html");
const SCRIPT: &str = include_str!("../../static/inbox.js");
const STYLE: &str = include_str!("../../static/inbox.css");

/// Only this origin's script, style and API; audio from `blob:` URLs the script makes.
pub(crate) const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; media-src 'self' blob:; img-src 'self' data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, POLICY))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

pub(crate) async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", PAGE)
}

pub(crate) async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub(crate) async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}
