//! Operational endpoints: liveness and readiness.

use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use userstream_eventlog::EventLog;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
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
