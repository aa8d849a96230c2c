//! Operational endpoints: liveness and readiness (open to all), the
//! OpenAPI document, its reference page and the metrics (loopback, any
//! valid credential, or everyone with `--ops-public`: see [`crate::auth`]).

use crate::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use userstream_eventlog::EventLog;

/// Every operational route.
pub const ROUTES: [&str; 5] = ["/healthz", "/readyz", "/openapi.json", "/docs", "/metrics"];

/// The operational routes that not everyone may read (without the `/`).
pub const GUARDED: [&str; 3] = ["openapi.json", "docs", "metrics"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/docs", get(docs))
        .route("/metrics", get(crate::metrics::render))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::openapi::json()).into_response()
}

/// The API reference: a page of our own that renders `/openapi.json`.
async fn docs() -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
        ),
    ];
    (headers, include_str!("openapi/docs.html")).into_response()
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the schema is migrated and every projection is healthy and
/// within `ready_lag` events of the log head.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let head = match state.commands.log().head().await {
        Ok(h) => h,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"ready": false, "reason": format!("event log unreachable: {e}")})),
            )
        }
    };
    let migrated = state.db.is_migrated("eventlog", 1).await.unwrap_or(false);
    let mut reasons = Vec::new();
    if !migrated {
        reasons.push("migrations not applied".to_string());
    }
    let mut projections = serde_json::Map::new();
    for runner in &state.runners {
        let status = runner.status();
        let lag = head - status.position;
        if let Some(f) = &status.failure {
            reasons.push(format!("{}: {f}", runner.name));
        } else if lag > state.config.ready_lag {
            reasons.push(format!("{} is {lag} events behind", runner.name));
        }
        projections.insert(
            runner.name.to_string(),
            json!({"position": status.position, "lag": lag, "failure": status.failure.unwrap_or_default()}),
        );
    }
    let ready = reasons.is_empty();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"ready": ready, "head": head, "projections": projections, "reasons": reasons})))
}
