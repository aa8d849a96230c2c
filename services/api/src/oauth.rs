//! The Fynd token endpoint, as the official SDK calls it: POST with HTTP
//! Basic `api_key:api_secret` and the form `grant_type=client_credentials`.
//! Errors are OAuth 2 error JSON (`error`, `error_description`) with a
//! `message` for the SDK.

use crate::access::TOKEN_TTL_SECONDS;
use crate::auth::ClientAddress;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;

pub const TOKEN_PATH: &str = "/service/panel/authentication/v1.0/company/{company_id}/oauth/token";

pub fn router() -> Router<AppState> {
    Router::new().route(TOKEN_PATH, post(token))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = json!({"error": error, "error_description": description, "message": description, "code": error});
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"userstream\""));
    }
    response
}

/// `Basic base64(key:secret)` → (key, secret).
fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (key, secret) = decoded.split_once(':')?;
    Some((key.to_string(), secret.to_string()))
}

async fn token(
    State(state): State<AppState>,
    Path(company_id): Path<String>,
    Extension(ClientAddress(address)): Extension<ClientAddress>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "the body must be form-encoded");
    };
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    match field("grant_type") {
        None | Some("") => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "grant_type is required"),
        Some("client_credentials") => {}
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("grant_type {other} is not supported; use client_credentials"),
            )
        }
    }
    let Some((key, secret)) = basic(&headers) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication is required (HTTP Basic api_key:api_secret)",
        );
    };
    if let Err(refused) = state.throttle.before_check(address, Some(&key)) {
        let error = oauth_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "too many failed authentications; retry later",
        );
        return crate::auth::retry_after(error, refused);
    }
    let credential = match state.access.verify_secret(&key, &secret).await {
        Ok(Some(c)) if c.company_id == company_id => {
            state.throttle.succeeded(address, &key);
            c
        }
        Ok(_) => {
            state.throttle.failed(address, Some(&key));
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "unknown API key, wrong secret, or a key of another company",
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "token request failed");
            return oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal error");
        }
    };
    let access_token = state.access.issue_token(&credential, state.commands.now());
    let mut response = Json(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": TOKEN_TTL_SECONDS,
    }))
    .into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
