//! Events on disk: stable type names, an integer schema version, and one
//! frozen serde shape per (type, version). `decode` upcasts old versions to
//! the current shape; stored events are never rewritten.

pub mod v1;

use crate::attribute::{DefinitionEvent, ValuesEvent};
use crate::group::GroupEvent;
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
pub const USER_ERASED: &str = "user.erased";
pub const PLATFORM_CONFIG_UPDATED: &str = "platform.config_updated";
pub const DEFINITION_CREATED: &str = "attribute.definition_created";
pub const DEFINITION_UPDATED: &str = "attribute.definition_updated";
pub const DEFINITION_DELETED: &str = "attribute.definition_deleted";
pub const ATTRIBUTE_UPSERTED: &str = "attribute.upserted";
pub const ATTRIBUTE_DELETED: &str = "attribute.deleted";
pub const GROUP_CREATED: &str = "group.created";
pub const GROUP_UPDATED: &str = "group.updated";
pub const GROUP_DELETED: &str = "group.deleted";
pub const GROUP_MEMBERSHIP_CHANGED: &str = "group.membership_changed";
pub const GROUP_EVALUATED: &str = "group.evaluated";

/// Every event type of the attribute and group streams.
pub const ATTRIBUTE_AND_GROUP_EVENT_TYPES: &[&str] = &[
    DEFINITION_CREATED,
    DEFINITION_UPDATED,
    DEFINITION_DELETED,
    ATTRIBUTE_UPSERTED,
    ATTRIBUTE_DELETED,
    GROUP_CREATED,
    GROUP_UPDATED,
    GROUP_DELETED,
    GROUP_MEMBERSHIP_CHANGED,
    GROUP_EVALUATED,
];

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
    USER_ERASED,
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
        UserEvent::Erased(e) => (USER_ERASED, serde_json::to_value(e)),
    };
    // Serialising plain structs of strings, numbers and JSON values cannot fail.
    EncodedEvent { event_type, schema: 1, data: data.unwrap_or(Value::Null) }
}

/// A stored payload: the JSON text the log holds, or a tree of it.
pub trait Payload {
    fn read<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error>;
}

impl Payload for Value {
    fn read<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(self)
    }
}

/// Decoding from the text directly builds no intermediate tree.
impl Payload for str {
    fn read<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self)
    }
}

/// Reads `data` as the frozen shape `T`.
pub(crate) fn shape<T: DeserializeOwned>(
    event_type: &str,
    schema: u32,
    data: &(impl Payload + ?Sized),
) -> Result<T, DecodeError> {
    data.read().map_err(|source| DecodeError::Shape { event_type: event_type.to_string(), schema, source })
}

/// Decodes a stored event, upcasting older schema versions to the current shape.
pub fn decode(event_type: &str, schema: u32, data: &(impl Payload + ?Sized)) -> Result<UserEvent, DecodeError> {
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
        (USER_ERASED, 1) => shape(event_type, schema, data).map(UserEvent::Erased),
        _ => Err(DecodeError::UnknownType { event_type: event_type.to_string(), schema }),
    }
}

fn encoded(event_type: &'static str, data: Result<Value, serde_json::Error>) -> EncodedEvent {
    EncodedEvent { event_type, schema: 1, data: data.unwrap_or(Value::Null) }
}

pub fn encode_definition(event: &DefinitionEvent) -> EncodedEvent {
    match event {
        DefinitionEvent::Created(e) => encoded(DEFINITION_CREATED, serde_json::to_value(e)),
        DefinitionEvent::Updated(e) => encoded(DEFINITION_UPDATED, serde_json::to_value(e)),
        DefinitionEvent::Deleted(e) => encoded(DEFINITION_DELETED, serde_json::to_value(e)),
    }
}

pub fn decode_definition(
    event_type: &str,
    schema: u32,
    data: &(impl Payload + ?Sized),
) -> Result<DefinitionEvent, DecodeError> {
    match (event_type, schema) {
        (DEFINITION_CREATED, 1) => shape(event_type, schema, data).map(DefinitionEvent::Created),
        (DEFINITION_UPDATED, 1) => shape(event_type, schema, data).map(DefinitionEvent::Updated),
        (DEFINITION_DELETED, 1) => shape(event_type, schema, data).map(DefinitionEvent::Deleted),
        _ => Err(DecodeError::UnknownType { event_type: event_type.to_string(), schema }),
    }
}

pub fn encode_values(event: &ValuesEvent) -> EncodedEvent {
    match event {
        ValuesEvent::Upserted(e) => encoded(ATTRIBUTE_UPSERTED, serde_json::to_value(e)),
        ValuesEvent::Deleted(e) => encoded(ATTRIBUTE_DELETED, serde_json::to_value(e)),
    }
}

pub fn decode_values(
    event_type: &str,
    schema: u32,
    data: &(impl Payload + ?Sized),
) -> Result<ValuesEvent, DecodeError> {
    match (event_type, schema) {
        (ATTRIBUTE_UPSERTED, 1) => shape(event_type, schema, data).map(ValuesEvent::Upserted),
        (ATTRIBUTE_DELETED, 1) => shape(event_type, schema, data).map(ValuesEvent::Deleted),
        _ => Err(DecodeError::UnknownType { event_type: event_type.to_string(), schema }),
    }
}

pub fn encode_group(event: &GroupEvent) -> EncodedEvent {
    match event {
        GroupEvent::Created(e) => encoded(GROUP_CREATED, serde_json::to_value(e)),
        GroupEvent::Updated(e) => encoded(GROUP_UPDATED, serde_json::to_value(e)),
        GroupEvent::Deleted(e) => encoded(GROUP_DELETED, serde_json::to_value(e)),
        GroupEvent::MembershipChanged(e) => encoded(GROUP_MEMBERSHIP_CHANGED, serde_json::to_value(e)),
        GroupEvent::Evaluated(e) => encoded(GROUP_EVALUATED, serde_json::to_value(e)),
    }
}

pub fn decode_group(event_type: &str, schema: u32, data: &(impl Payload + ?Sized)) -> Result<GroupEvent, DecodeError> {
    match (event_type, schema) {
        (GROUP_CREATED, 1) => shape(event_type, schema, data).map(GroupEvent::Created),
        (GROUP_UPDATED, 1) => shape(event_type, schema, data).map(GroupEvent::Updated),
        (GROUP_DELETED, 1) => shape(event_type, schema, data).map(GroupEvent::Deleted),
        (GROUP_MEMBERSHIP_CHANGED, 1) => shape(event_type, schema, data).map(GroupEvent::MembershipChanged),
        (GROUP_EVALUATED, 1) => shape(event_type, schema, data).map(GroupEvent::Evaluated),
        _ => Err(DecodeError::UnknownType { event_type: event_type.to_string(), schema }),
    }
}

/// The fields of a stored event that hold personal data, sealed under the
/// subject's data key in the log (crypto-shredding): names, username,
/// emails, phones, meta and external ids of a user; the address and agent
/// of a session; the value of an encrypted attribute (`{"enc": …}`). Each
/// is a text, a list or an object, whose placeholder (`"erased:…"`, empty)
/// still decodes. Gender (one of a few values) and the values of attributes
/// not marked `encrypted` are not sealed: an operator marks an attribute
/// that holds personal data `encrypted`.
pub fn personal_fields(event_type: &str, data: &Value) -> Vec<&'static str> {
    const PROFILE: &[&str] =
        &["username", "first_name", "last_name", "emails", "phone_numbers", "meta", "external_id", "rr_id"];
    let fields: &[&'static str] = match event_type {
        USER_CREATED | USER_UPDATED => PROFILE,
        USER_SESSION_STARTED => &["user_agent", "ip"],
        ATTRIBUTE_UPSERTED if data.get("value").and_then(|v| v.get("enc")).is_some() => &["value"],
        _ => &[],
    };
    fields.iter().copied().filter(|f| data.get(*f).is_some()).collect()
}

/// Whose personal data a stream holds: a user stream and the user's
/// attribute values belong to that user (`user-{id}`); other streams hold none.
pub fn subject_of(stream: &str) -> Option<String> {
    if stream.starts_with("user-") {
        Some(stream.to_string())
    } else {
        stream.strip_prefix("attrs-").map(|id| format!("user-{id}"))
    }
}

/// The streams of a subject that may hold its personal data.
pub fn streams_of(subject: &str) -> Vec<String> {
    match subject.strip_prefix("user-") {
        Some(id) => vec![subject.to_string(), format!("attrs-{id}")],
        None => vec![subject.to_string()],
    }
}
