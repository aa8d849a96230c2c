//! The admin console at `/console`: three files embedded in the binary (no
//! CDN, no build step), a page of plain JavaScript that signs in through
//! the token endpoint and then calls the public API with that token, like
//! any client. Its Content-Security-Policy allows nothing but this origin's
//! scripts, styles and API, and no inline script.

use axum::extract::RawQuery;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::hash::{Hash, Hasher};
use std::sync::LazyLock;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                      base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/console", get(|| async { asset("text/html; charset=utf-8", page(), "no-cache") }))
        .route("/console/app.js", get(|q: RawQuery| async move { asset(JS, SCRIPT, cache(q)) }))
        .route("/console/app.css", get(|q: RawQuery| async move { asset(CSS, STYLE, cache(q)) }))
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The assets' version: a hash of their text, so a new binary's page names
/// new URLs and no browser keeps an old script for a new page.
fn version() -> &'static str {
    static VERSION: LazyLock<String> = LazyLock::new(|| {
        let mut hasher = std::hash::DefaultHasher::new();
        (SCRIPT, STYLE).hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    });
    &VERSION
}

/// The page, naming the assets of this binary's version.
fn page() -> &'static str {
    static PAGE: LazyLock<String> = LazyLock::new(|| INDEX.replace("{version}", version()));
    &PAGE
}

/// An asset asked for by this binary's version is kept a year; any other
/// request (no version, or another instance's during a rolling upgrade) is
/// revalidated every time.
fn cache(RawQuery(query): RawQuery) -> &'static str {
    if query.is_some_and(|q| q.strip_prefix("v=") == Some(version())) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    }
}

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
