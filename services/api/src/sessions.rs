//! Customer sessions (logins) on the user stream: start, list, use, revoke.
//!
//! - A session id is 128 random bits (32 hex digits); the cookie `f.session`
//!   carries it signed with the server key (`<id>.<hmac>`), so a forged or
//!   altered cookie is refused without a lookup.
//! - `max_age` is in seconds (like the cookie attribute); without it the
//!   application's `session_config` decides. At most one year.
//! - Blocking or archiving a user revokes its sessions in the same append;
//!   a blocked user gets 403 and an archived one 404.
//! - `GET /customers/session` with the cookie (header `Cookie: f.session=…`
//!   or `?cookie=`) is what a storefront calls on use: it answers the
//!   session, and extends a rolling one once less than half its life is left.

use crate::http::{
    command_response, consistency::latest, parse_user_id, ApiError, Caller, JsonBody, QueryPairs, TenantOf,
};
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use userstream_domain::platform::MAX_SESSION_SECONDS;
use userstream_domain::user::{StartSession, UserCommand, UserStream};
use userstream_domain::StreamId;
use userstream_eventlog::{format_time, Tenant};

pub const COOKIE: &str = "f.session";

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateSessionBody {
    pub user_id: String,
    #[serde(default)]
    #[schema(max_length = 253)]
    pub domain: Option<String>,
    /// Seconds; without it the application's `session_config` decides.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31_622_400)]
    pub max_age: Option<i64>,
}

fn header_text(headers: &HeaderMap, name: impl header::AsHeaderName) -> String {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").chars().take(512).collect()
}

/// The client's address as a proxy reports it; `""` when unknown.
fn client_ip(headers: &HeaderMap) -> String {
    let forwarded = header_text(headers, "x-forwarded-for");
    let first = forwarded.split(',').next().unwrap_or("").trim().to_string();
    if first.is_empty() {
        header_text(headers, "x-real-ip")
    } else {
        first
    }
}

pub async fn create_session(
    State(state): State<AppState>,
    Caller(meta): Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateSessionBody>,
) -> Result<Response, ApiError> {
    let id = parse_user_id(&body.user_id)?;
    let (config, _) = state.commands.config(&meta.tenant).await?;
    let max_age = match body.max_age {
        Some(m) if !(1..=MAX_SESSION_SECONDS).contains(&m) => {
            return Err(ApiError::invalid(format!("max_age must be from 1 to {MAX_SESSION_SECONDS} seconds")))
        }
        Some(m) => m,
        None => config.config.session_config.seconds(),
    };
    let domain = body.domain.unwrap_or_default();
    if domain.chars().count() > 253 {
        return Err(ApiError::invalid("domain is longer than 253 characters"));
    }
    let ctx = state.commands.context_of(&config.config);
    // 128 random bits from the command's context; the cookie adds the signature.
    let session_id = ctx.secret.hex();
    let command = UserCommand::StartSession(StartSession {
        session_id: session_id.clone(),
        domain: domain.clone(),
        user_agent: header_text(&headers, header::USER_AGENT),
        ip: client_ip(&headers),
        max_age,
        rolling: config.config.session_config.is_rolling,
    });
    let outcome = state.commands.handle::<UserStream>(&meta, StreamId::user(&id), command, None, &ctx).await?;
    let body = json!({
        "domain": domain,
        "max_age": max_age,
        "secure": true,
        "http_only": true,
        "cookie": { COOKIE: state.access.seal(&session_id) },
    });
    Ok(command_response(&outcome, body))
}

/// Waits until the users read model has every event committed before this
/// request, so a list right after a login or logout shows it.
async fn consistent(state: &AppState) -> Result<(), ApiError> {
    latest(state, &[&state.users]).await
}

fn required<'a>(query: &'a QueryPairs, key: &str) -> Result<&'a str, ApiError> {
    query
        .get(key)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::invalid(format!("{key} is required")))
}

async fn live_user(state: &AppState, tenant: &Tenant, raw: &str) -> Result<String, ApiError> {
    let id = parse_user_id(raw)?;
    match state.queries.get(tenant, id.as_str()).await? {
        Some(row) => Ok(row.user_id),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "user_not_found", format!("user {raw} not found"))),
    }
}

pub async fn list_sessions(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    let raw = required(&query, "id")?;
    consistent(&state).await?;
    let user_id = live_user(&state, &tenant, raw).await?;
    let now = format_time(state.commands.now());
    let items: Vec<Value> = state
        .queries
        .sessions(&tenant, &user_id, &now)
        .await?
        .into_iter()
        .map(|s| {
            json!({
                "session_id": s.session_id,
                "user_agent": s.user_agent,
                "ip": s.ip,
                "domain": s.domain,
                "expire_in": s.expires_at,
                "location": "",
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// A session id as sent: the bare id, or the signed cookie value.
fn session_id_of(state: &AppState, raw: &str) -> Result<String, ApiError> {
    if raw.contains('.') {
        state
            .access
            .unseal(raw)
            .map(str::to_string)
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "session_not_found", "the session cookie is not valid"))
    } else {
        Ok(raw.to_string())
    }
}

pub async fn delete_session(
    State(state): State<AppState>,
    Caller(meta): Caller,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let user_id = parse_user_id(required(&query, "id")?)?;
    let session_id = session_id_of(&state, required(&query, "session_id")?)?;
    let reason = query.get("reason").unwrap_or("").to_string();
    let command = UserCommand::RevokeSessions { session_ids: Some(vec![session_id.clone()]), reason };
    let outcome = state.commands.run(&meta, &user_id, command, None).await?;
    Ok(command_response(&outcome, json!({ "user_id": user_id.as_str(), "session_id": session_id })))
}

pub async fn delete_sessions(
    State(state): State<AppState>,
    Caller(meta): Caller,
    _headers: HeaderMap,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let user_id = parse_user_id(required(&query, "id")?)?;
    let reason = query.get("reason").unwrap_or("").to_string();
    let command = UserCommand::RevokeSessions { session_ids: None, reason };
    let outcome = state.commands.run(&meta, &user_id, command, None).await?;
    let session_ids = outcome.revoked_sessions();
    Ok(command_response(&outcome, json!({ "user_id": user_id.as_str(), "session_ids": session_ids })))
}

/// The cookie value from `Cookie: f.session=…` or `?cookie=`.
fn cookie_value(headers: &HeaderMap, query: &QueryPairs) -> Option<String> {
    if let Some(v) = query.get("cookie").filter(|v| !v.is_empty()) {
        return Some(v.to_string());
    }
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    cookies.split(';').find_map(|c| c.trim().strip_prefix("f.session=").map(str::to_string))
}

pub async fn use_session(
    State(state): State<AppState>,
    Caller(meta): Caller,
    headers: HeaderMap,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let user_id = parse_user_id(required(&query, "id")?)?;
    let cookie = cookie_value(&headers, &query).ok_or_else(|| ApiError::invalid("the f.session cookie is required"))?;
    let session_id = session_id_of(&state, &cookie)?;
    let command = UserCommand::TouchSession { session_id: session_id.clone() };
    let outcome = state.commands.run(&meta, &user_id, command, None).await?;
    let expires_at = outcome
        .user()
        .and_then(|(u, _)| u.sessions.get(&session_id).map(|s| s.expires_at))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "session_not_found", "session not found"))?;
    Ok(command_response(
        &outcome,
        json!({ "user_id": user_id.as_str(), "session_id": session_id, "expires_at": format_time(expires_at) }),
    ))
}
