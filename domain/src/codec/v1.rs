//! Frozen event shapes, schema version 1. Never edit a shape here: add a
//! `v2` module and an upcaster in `codec::decode` instead.

use crate::values::{Email, Gender, Name, Phone, UserId, Username};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailEntry {
    pub email: Email,
    pub primary: bool,
    pub verified: bool,
    pub active: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhoneEntry {
    pub phone: Phone,
    pub primary: bool,
    pub verified: bool,
    pub active: bool,
}

/// `user.created` v1. Personal data: names, emails, phone_numbers, meta.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserCreated {
    pub user_id: UserId,
    pub username: Username,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<Gender>,
    pub emails: Vec<EmailEntry>,
    pub phone_numbers: Vec<PhoneEntry>,
    pub meta: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rr_id: Option<String>,
    pub account_type: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `user.updated` v1: only the fields that changed are present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserUpdated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<Gender>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rr_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emails: Option<Vec<EmailEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_numbers: Option<Vec<PhoneEntry>>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `user.blocked` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserBlocked {
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `user.unblocked` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserUnblocked {
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `user.archived` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserArchived {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `user.restored` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRestored {
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `user.session_started` v1: a login. The session id is the random part of
/// the cookie, never the signed cookie itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStarted {
    pub session_id: String,
    pub domain: String,
    pub user_agent: String,
    pub ip: String,
    /// Lifetime in seconds; a rolling session gets it again on use.
    pub max_age: i64,
    pub rolling: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `user.session_extended` v1: a rolling session was used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionExtended {
    pub session_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `user.sessions_revoked` v1: logout, or the side effect of block/archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionsRevoked {
    pub session_ids: Vec<String>,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `user.erased` v1: the person was erased (crypto-shredding). Carries no
/// personal data; the user's data key is destroyed once it is appended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserErased {
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}
