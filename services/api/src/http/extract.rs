//! Extractors that turn every kind of bad input into an [`ApiError`].

use crate::http::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use userstream_eventlog::Tenant;

/// A JSON body: unparsable JSON → 422, JSON of the wrong shape (anything but
/// an object at the top; serde would take an array for a struct's fields in
/// order) → 400 naming the field, over the body limit → 413.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body is too large")
            } else {
                ApiError::invalid(rejection.body_text())
            }
        })?;
        // Syntax first (422), then shape with the path of the bad field (400).
        let parsed: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unparsable_json",
                format!("the body is not valid JSON: {e}"),
            )
        })?;
        if !parsed.is_object() {
            return Err(ApiError::invalid("the body must be a JSON object"));
        }
        serde_path_to_error::deserialize(parsed).map(JsonBody).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data if path == "." => ApiError::invalid(format!("invalid body: {inner}")),
                serde_json::error::Category::Data => ApiError::invalid(format!("invalid body: {path}: {inner}")),
                _ => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unparsable_json",
                    format!("the body is not valid JSON: {inner}"),
                ),
            }
        })
    }
}

/// The query string as key/value pairs, repeated keys kept (`query=a&query=b`).
/// On the Fynd surface only the list parameters ([`REPEATABLE`]) may be
/// repeated: another parameter given twice is a 400, never a silent choice
/// of one value. (The Passage list reads its filters itself.)
pub struct QueryPairs(pub Vec<(String, String)>);

/// The Fynd query parameters that take several values.
pub const REPEATABLE: [&str; 4] = ["query", "types", "tags", "excluding_ids"];

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let raw = parts.uri.query().unwrap_or("");
        let pairs = serde_urlencoded::from_str::<Vec<(String, String)>>(raw)
            .map_err(|e| ApiError::invalid(format!("invalid query string: {e}")))?;
        // The full path: a nested router sees its own part only.
        let original = parts.extensions.get::<axum::extract::OriginalUri>().map(|u| u.0.path().to_string());
        let fynd = crate::fynd::PREFIX.split('{').next().unwrap_or_default();
        if original.as_deref().unwrap_or(parts.uri.path()).starts_with(fynd) {
            let single = |key: &str| !REPEATABLE.contains(&key.strip_suffix("[]").unwrap_or(key));
            let mut seen = std::collections::HashSet::new();
            for (key, _) in &pairs {
                if single(key) && !seen.insert(key.as_str()) {
                    return Err(ApiError::invalid(format!("{key} may be given once")));
                }
            }
        }
        Ok(QueryPairs(pairs))
    }
}

impl QueryPairs {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, also accepting the `key[]` spelling.
    pub fn all(&self, key: &str) -> Vec<String> {
        let bracketed = format!("{key}[]");
        self.0.iter().filter(|(k, _)| k == key || *k == bracketed).map(|(_, v)| v.clone()).collect()
    }

    /// An integer parameter, or `None` when absent (an empty value is no
    /// integer: a 400).
    pub fn opt_int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        self.get(key)
            .map(|raw| raw.trim().parse::<i64>().map_err(|_| ApiError::invalid(format!("{key} must be an integer"))))
            .transpose()
    }

    /// An integer parameter within `range`, or `default` when absent (an
    /// empty value is no integer: a 400, like any other).
    pub fn int(&self, key: &str, default: i64, range: std::ops::RangeInclusive<i64>) -> Result<i64, ApiError> {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => match raw.trim().parse::<i64>() {
                Ok(v) if range.contains(&v) => Ok(v),
                _ => Err(ApiError::invalid(format!(
                    "{key} must be an integer from {} to {}",
                    range.start(),
                    range.end()
                ))),
            },
        }
    }
}

/// Checks the tenant ids of a path.
pub fn tenant(company_id: String, application_id: String) -> Result<Tenant, ApiError> {
    fn ok(s: &str) -> bool {
        !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }
    if !ok(&company_id) {
        return Err(ApiError::invalid("company_id must be 1 to 64 letters, digits, - or _"));
    }
    if !ok(&application_id) {
        return Err(ApiError::invalid("application_id must be 1 to 64 letters, digits, - or _"));
    }
    Ok(Tenant { company_id, application_id })
}
