//! Events on disk: stable type names, an integer schema version, and one
//! frozen serde shape per (type, version). `decode` upcasts old versions to
//! the current shape; stored events are never rewritten.

pub mod v1;

use crate::user::UserEvent;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// An event as the log stores it, minus the envelope the log owns.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedEvent {
    pub event_type: &'static str,
    pub schema: u32,
    pub data: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {event_type} (schema {schema})")]
    UnknownType { event_type: String, schema: u32 },
    #[error("event {event_type} v{schema} does not match its frozen shape: {source}")]
    Shape { event_type: String, schema: u32, source: serde_json::Error },
}

pub const USER_CREATED: &str = "user.created";
pub const USER_UPDATED: &str = "user.updated";
pub const USER_BLOCKED: &str = "user.blocked";
pub const USER_UNBLOCKED: &str = "user.unblocked";
pub const USER_ARCHIVED: &str = "user.archived";
pub const USER_RESTORED: &str = "user.restored";
pub const USER_SESSION_STARTED: &str = "user.session_started";
pub const USER_SESSION_EXTENDED: &str = "user.session_extended";
pub const USER_SESSIONS_REVOKED: &str = "user.sessions_revoked";
pub const PLATFORM_CONFIG_UPDATED: &str = "platform.config_updated";

/// Every event type the domain writes, for subscribers that filter by type.
pub const USER_EVENT_TYPES: &[&str] = &[
    USER_CREATED,
    USER_UPDATED,
    USER_BLOCKED,
    USER_UNBLOCKED,
    USER_ARCHIVED,
    USER_RESTORED,
    USER_SESSION_STARTED,
    USER_SESSION_EXTENDED,
    USER_SESSIONS_REVOKED,
];

pub fn encode(event: &UserEvent) -> EncodedEvent {
    let (event_type, data) = match event {
        UserEvent::Created(e) => (USER_CREATED, serde_json::to_value(e)),
        UserEvent::Updated(e) => (USER_UPDATED, serde_json::to_value(e)),
        UserEvent::Blocked(e) => (USER_BLOCKED, serde_json::to_value(e)),
        UserEvent::Unblocked(e) => (USER_UNBLOCKED, serde_json::to_value(e)),
        UserEvent::Archived(e) => (USER_ARCHIVED, serde_json::to_value(e)),
        UserEvent::Restored(e) => (USER_RESTORED, serde_json::to_value(e)),
        UserEvent::SessionStarted(e) => (USER_SESSION_STARTED, serde_json::to_value(e)),
        UserEvent::SessionExtended(e) => (USER_SESSION_EXTENDED, serde_json::to_value(e)),
        UserEvent::SessionsRevoked(e) => (USER_SESSIONS_REVOKED, serde_json::to_value(e)),
    };
    // Serialising plain structs of strings, numbers and JSON values cannot fail.
    EncodedEvent { event_type, schema: 1, data: data.unwrap_or(Value::Null) }
}

/// Reads `data` as the frozen shape `T`.
pub(crate) fn shape<T: DeserializeOwned>(event_type: &str, schema: u32, data: &Value) -> Result<T, DecodeError> {
    T::deserialize(data).map_err(|source| DecodeError::Shape { event_type: event_type.to_string(), schema, source })
}

/// Decodes a stored event, upcasting older schema versions to the current shape.
pub fn decode(event_type: &str, schema: u32, data: &Value) -> Result<UserEvent, DecodeError> {
    match (event_type, schema) {
        (USER_CREATED, 1) => shape(event_type, schema, data).map(UserEvent::Created),
        (USER_UPDATED, 1) => shape(event_type, schema, data).map(UserEvent::Updated),
        (USER_BLOCKED, 1) => shape(event_type, schema, data).map(UserEvent::Blocked),
        (USER_UNBLOCKED, 1) => shape(event_type, schema, data).map(UserEvent::Unblocked),
        (USER_ARCHIVED, 1) => shape(event_type, schema, data).map(UserEvent::Archived),
        (USER_RESTORED, 1) => shape(event_type, schema, data).map(UserEvent::Restored),
        (USER_SESSION_STARTED, 1) => shape(event_type, schema, data).map(UserEvent::SessionStarted),
        (USER_SESSION_EXTENDED, 1) => shape(event_type, schema, data).map(UserEvent::SessionExtended),
        (USER_SESSIONS_REVOKED, 1) => shape(event_type, schema, data).map(UserEvent::SessionsRevoked),
        _ => Err(DecodeError::UnknownType { event_type: event_type.to_string(), schema }),
    }
}
