//! The admin console at `/console`: three files embedded in the binary (no
//! CDN, no build step), a page of plain JavaScript that signs in through
//! the token endpoint and then calls the public API with that token, like
//! any client. Its Content-Security-Policy allows nothing but this origin's
//! scripts, styles and API, and no inline script.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                      base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/console", get(|| async { asset("text/html; charset=utf-8", INDEX, "no-cache") }))
        .route("/console/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT, CACHED) }))
        .route("/console/app.css", get(|| async { asset("text/css; charset=utf-8", STYLE, CACHED) }))
}

/// Assets change only with the binary: cached for an hour, revalidated after.
const CACHED: &str = "public, max-age=3600";

fn asset(content_type: &'static str, body: &'static str, cache: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, cache),
        (header::CONTENT_SECURITY_POLICY, POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    (headers, body).into_response()
}
