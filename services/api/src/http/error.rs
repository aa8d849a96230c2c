//! One error type for the Fynd surface: `{"message", "code"}` with the status
//! of SPEC §7. 5xx bodies are opaque; the cause is logged once, here.

use crate::commands::{CommandError, Rejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use userstream_domain::attribute::AttrError;
use userstream_domain::group::GroupError;
use userstream_domain::{UserError, ValueError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "internal error")
    }

    /// The database has no space left: nothing was written; 503 so clients retry.
    pub fn storage_full(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "the database is out of space");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_full",
            "the database has no space left: nothing was written; retry once space is freed",
        )
    }

    /// The database could not be reached; 503 so clients retry. A command
    /// whose commit was cut off may have committed: a retry with the same
    /// `Idempotency-Key` tells.
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "the database is unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            "the database is unavailable; retry shortly (with the same Idempotency-Key, a retry never applies twice)",
        )
    }

    pub fn behind(position: i64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "read_model_behind",
            format!("the read model has not reached position {position} yet; retry shortly"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({"message": self.message, "code": self.code}))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<ValueError> for ApiError {
    fn from(e: ValueError) -> Self {
        ApiError::invalid(e.to_string())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::internal(e)
    }
}

impl ApiError {
    /// A failed storage operation: 503 when the database is full or out of
    /// reach (a retry may succeed), 500 otherwise; `cause` is what is logged.
    pub fn storage(e: &userstream_eventlog::StorageError, cause: impl std::fmt::Display) -> Self {
        if e.is_storage_full() {
            ApiError::storage_full(cause)
        } else if e.is_unavailable() {
            ApiError::unavailable(cause)
        } else {
            ApiError::internal(cause)
        }
    }
}

impl From<userstream_eventlog::StorageError> for ApiError {
    fn from(e: userstream_eventlog::StorageError) -> Self {
        ApiError::storage(&e, &e)
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Rejected(r) => r.into(),
            CommandError::Failed(f) => match f.storage() {
                Some(e) => ApiError::storage(e, &f),
                None => ApiError::internal(f),
            },
        }
    }
}

/// The status and code of each domain "no" (SPEC §7).
impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        let message = r.to_string();
        let (status, code) = match &r {
            Rejection::User(UserError::NotFound) | Rejection::UnknownUsers(_) => {
                (StatusCode::NOT_FOUND, "user_not_found")
            }
            Rejection::User(UserError::AlreadyExists) => (StatusCode::CONFLICT, "user_exists"),
            Rejection::User(UserError::SessionNotFound(_)) => (StatusCode::NOT_FOUND, "session_not_found"),
            Rejection::User(UserError::Blocked) => (StatusCode::FORBIDDEN, "user_blocked"),
            Rejection::User(_) | Rejection::Config(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Rejection::Group(GroupError::NotFound) => (StatusCode::NOT_FOUND, "group_not_found"),
            Rejection::Group(GroupError::AlreadyExists) | Rejection::Attribute(AttrError::AlreadyExists) => {
                (StatusCode::CONFLICT, "duplicate")
            }
            Rejection::Group(GroupError::Invalid { .. } | GroupError::RuleGroupMembers) => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            Rejection::Attribute(AttrError::NotFound | AttrError::NoValue(_)) => (StatusCode::NOT_FOUND, "not_found"),
            Rejection::Attribute(AttrError::Locked(_)) => (StatusCode::CONFLICT, "locked"),
            Rejection::Attribute(AttrError::Rule { .. } | AttrError::Invalid { .. }) => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            Rejection::Job(userstream_domain::job::JobError::NotFound) => (StatusCode::NOT_FOUND, "not_found"),
            Rejection::Job(_) => (StatusCode::CONFLICT, "job_finished"),
            Rejection::Taken { .. } => (StatusCode::CONFLICT, "duplicate"),
            Rejection::VersionConflict { .. } => (StatusCode::CONFLICT, "version_conflict"),
            Rejection::Contended { .. } => (StatusCode::CONFLICT, "contended"),
            Rejection::IdempotencyKeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
        };
        ApiError::new(status, code, message)
    }
}

/// An error on the Passage surface: `{"code", "error"}` with a code from
/// the enum of Passage's error models for that status (the SDK only parses
/// those), plus `message` for clients that read that.
#[derive(Debug)]
pub struct PassageError {
    pub status: StatusCode,
    pub code: &'static str,
    pub error: String,
}

impl PassageError {
    pub fn new(status: StatusCode, code: &'static str, error: impl Into<String>) -> Self {
        PassageError { status, code, error: error.into() }
    }

    pub fn invalid(error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", error)
    }

    pub fn user_not_found(user_id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "user_not_found", format!("user {user_id} not found"))
    }
}

impl IntoResponse for PassageError {
    fn into_response(self) -> Response {
        let body = json!({"code": self.code, "error": self.error, "message": self.error});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Maps a Fynd-surface error onto Passage's codes and statuses. Passage's
/// API description documents 400 for a body it cannot parse and for an
/// identifier that is taken (no 409 or 422 on its Users API), so those two
/// become 400 here, with `invalid_request`: the SDK's 400 model admits only
/// that code and `custom_provider_required`. The text names the rule.
impl From<ApiError> for PassageError {
    fn from(e: ApiError) -> Self {
        let status = match e.status {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            StatusCode::CONFLICT if e.code == "duplicate" => StatusCode::BAD_REQUEST,
            other => other,
        };
        let code = match e.status {
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY | StatusCode::PAYLOAD_TOO_LARGE => {
                "invalid_request"
            }
            StatusCode::CONFLICT if e.code == "duplicate" => "invalid_request",
            StatusCode::UNAUTHORIZED => "invalid_access_token",
            StatusCode::FORBIDDEN => "operation_not_allowed",
            StatusCode::NOT_FOUND => "user_not_found",
            StatusCode::CONFLICT => "conflict",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
            _ => "internal_server_error",
        };
        PassageError { status, code, error: e.message }
    }
}

impl From<CommandError> for PassageError {
    fn from(e: CommandError) -> Self {
        ApiError::from(e).into()
    }
}

impl From<userstream_eventlog::StorageError> for PassageError {
    fn from(e: userstream_eventlog::StorageError) -> Self {
        ApiError::internal(e).into()
    }
}

impl From<sqlx::Error> for PassageError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::internal(e).into()
    }
}
