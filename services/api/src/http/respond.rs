//! What a command needs from its request, and what its response carries.

use crate::auth::Principal;
use crate::commands::{Meta, Outcome};
use crate::http::ApiError;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use userstream_domain::UserId;
use userstream_eventlog::Tenant;

/// Envelope metadata for a command from this request.
pub fn meta(tenant: Tenant, principal: &Principal, headers: &HeaderMap) -> Result<Meta, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    let idempotency_key = header("idempotency-key").map(str::to_string);
    if idempotency_key.as_ref().is_some_and(|k| k.len() > 255) {
        return Err(ApiError::invalid("Idempotency-Key is longer than 255 characters"));
    }
    Ok(Meta {
        tenant,
        actor: principal.actor(),
        // The client's correlation id, else the request's id (set for every
        // request by `request_id::assign`).
        correlation_id: header("x-correlation-id")
            .or_else(|| header(crate::http::request_id::HEADER))
            .map(|c| c.chars().take(128).collect())
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        idempotency_key,
    })
}

/// Adds `X-Event-Position` to a response.
pub fn with_position(mut response: Response, position: i64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&position.to_string()) {
        response.headers_mut().insert("x-event-position", v);
    }
    response
}

/// Adds `X-Event-Position` (and the user's `ETag`) to a command response.
pub fn command_response(outcome: &Outcome, body: impl serde::Serialize) -> Response {
    let mut response = with_position(Json(body).into_response(), outcome.position);
    if let Some((_, version)) = outcome.user() {
        if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
            response.headers_mut().insert(header::ETAG, v);
        }
    }
    response
}

/// A user id of a path or body; a malformed one is a user that does not exist.
pub fn parse_user_id(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse("user_id", raw)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "user_not_found", format!("user {raw} not found")))
}

/// `If-Match: "3"` (or `3`, or `W/"3"`) → 3.
pub fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(raw) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = raw.to_str().unwrap_or("").trim();
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    text.parse::<i64>().map(Some).map_err(|_| ApiError::invalid("If-Match must be a version number like \"3\""))
}
