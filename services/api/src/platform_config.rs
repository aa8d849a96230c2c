//! GET and POST `…/platform/config`: the application's login and account
//! settings (`PlatformSchema`).
//!
//! POST merges the body into the current config (objects field by field,
//! arrays and values replaced), so a client may send the whole schema, as the
//! SDK does, or only what changes. Response-only fields (`_id`, `created_at`,
//! `updated_at`, `__v`) are ignored on input. Social `app_secret`s are stored
//! as a SHA-256 digest and answered as `********` when set; sending the mask
//! back keeps the stored secret.

use crate::http::{with_position, ApiError, Caller, JsonBody, TenantOf};
use crate::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use userstream_domain::platform::{ConfigState, PlatformConfig};
use userstream_eventlog::{format_time, Tenant};

const SECRET_MASK: &str = "********";
const RESPONSE_ONLY: &[&str] = &["_id", "created_at", "updated_at", "__v"];
const SOCIAL: &[&str] = &["facebook", "account_kit", "google"];

/// The wire shape: the config plus its bookkeeping fields, secrets masked.
fn to_wire(tenant: &Tenant, state: &ConfigState, version: i64) -> Value {
    let mut body = serde_json::to_value(&state.config).unwrap_or(Value::Null);
    if let Some(tokens) = body.get_mut("social_tokens").and_then(Value::as_object_mut) {
        for token in tokens.values_mut() {
            if let Some(secret) = token.get_mut("app_secret") {
                if secret.as_str().is_some_and(|s| !s.is_empty()) {
                    *secret = Value::String(SECRET_MASK.into());
                }
            }
        }
    }
    if let Some(map) = body.as_object_mut() {
        map.insert("_id".into(), Value::String(tenant.application_id.clone()));
        map.insert("__v".into(), Value::from(version));
        if let Some(t) = state.created_at {
            map.insert("created_at".into(), Value::String(format_time(t)));
        }
        if let Some(t) = state.updated_at {
            map.insert("updated_at".into(), Value::String(format_time(t)));
        }
    }
    body
}

/// Deep merge: objects field by field, everything else replaced.
fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Replaces plaintext social secrets in the request by their digest and
/// drops masks (so the stored secret stays).
fn seal_secrets(patch: &mut Map<String, Value>) {
    let Some(tokens) = patch.get_mut("social_tokens").and_then(Value::as_object_mut) else {
        return;
    };
    for name in SOCIAL {
        let Some(token) = tokens.get_mut(*name).and_then(Value::as_object_mut) else {
            continue;
        };
        match token.get("app_secret").and_then(Value::as_str) {
            Some(SECRET_MASK) => {
                token.remove("app_secret");
            }
            Some(secret) if !secret.is_empty() && !secret.starts_with("sha256:") => {
                let digest: String = Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
                token.insert("app_secret".into(), Value::String(format!("sha256:{digest}")));
            }
            _ => {}
        }
    }
}

pub async fn get_config(State(state): State<AppState>, TenantOf(tenant): TenantOf) -> Result<Json<Value>, ApiError> {
    let (config, version) = state.commands.config(&tenant).await?;
    Ok(Json(to_wire(&tenant, &config, version)))
}

pub async fn update_config(
    State(state): State<AppState>,
    Caller(meta): Caller,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let Value::Object(mut patch) = body else {
        return Err(ApiError::invalid("the body must be a PlatformSchema object"));
    };
    for key in RESPONSE_ONLY {
        patch.remove(*key);
    }
    seal_secrets(&mut patch);
    let (current, _) = state.commands.config(&meta.tenant).await?;
    let mut merged = serde_json::to_value(&current.config).unwrap_or(Value::Null);
    merge(&mut merged, Value::Object(patch));
    let config: PlatformConfig = serde_path_to_error::deserialize(merged)
        .map_err(|e| ApiError::invalid(format!("{}: {}", e.path(), e.inner())))?;
    let (after, position) = state.commands.update_config(&meta, config).await?;
    let (_, version) = state.commands.config(&meta.tenant).await?;
    Ok(with_position(Json(to_wire(&meta.tenant, &after, version)).into_response(), position))
}
