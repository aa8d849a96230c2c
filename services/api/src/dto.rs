//! Wire shapes of the Fynd customers API. Requests become domain commands
//! through `TryFrom`; responses are built from read-model rows or command
//! outcomes. No `null` is ever written: absent fields are omitted, because
//! the official SDK's strict response check rejects nulls.

use crate::http::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use userstream_domain::platform::RequiredFields;
use userstream_domain::user::{CreateUser, EmailEntry, PhoneEntry, UpdateUser, User};
use userstream_domain::{Email, Gender, Name, Phone, UserId, Username};
use userstream_eventlog::format_time;
use userstream_projections::read_models::users::{emails_json, phones_json, UserRow};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateUserBody {
    #[serde(default)]
    pub phone_number: Option<String>,
    pub username: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub gender: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub meta: Option<Value>,
    #[serde(default)]
    pub external_id: Option<String>,
    #[serde(default)]
    pub rr_id: Option<String>,
}

fn opt<T>(
    field: &'static str,
    raw: Option<&str>,
    parse: fn(&'static str, &str) -> Result<T, userstream_domain::ValueError>,
) -> Result<Option<T>, ApiError> {
    match raw {
        None => Ok(None),
        Some(r) if r.trim().is_empty() => Ok(None),
        Some(r) => Ok(Some(parse(field, r)?)),
    }
}

fn short_text(field: &'static str, raw: Option<String>) -> Result<Option<String>, ApiError> {
    match raw {
        Some(v) if v.chars().count() > 128 => Err(ApiError::invalid(format!("{field} is longer than 128 characters"))),
        Some(v) if v.is_empty() => Ok(None),
        other => Ok(other),
    }
}

fn meta(raw: Option<Value>) -> Result<Option<Value>, ApiError> {
    match raw {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) if v.to_string().len() <= 16 * 1024 => Ok(Some(v)),
        Some(Value::Object(_)) => Err(ApiError::invalid("meta is larger than 16 KiB")),
        Some(_) => Err(ApiError::invalid("meta must be a JSON object")),
    }
}

impl CreateUserBody {
    /// The command, after the application's required-field settings.
    pub fn into_command(self, user_id: UserId, required: &[&RequiredFields]) -> Result<CreateUser, ApiError> {
        let phone = opt("phone_number", self.phone_number.as_deref(), Phone::parse)?;
        let email = opt("email", self.email.as_deref(), Email::parse)?;
        if required.iter().any(|r| r.mobile.is_required) && phone.is_none() {
            return Err(ApiError::invalid("phone_number is required by this application's platform config"));
        }
        if required.iter().any(|r| r.email.is_required) && email.is_none() {
            return Err(ApiError::invalid("email is required by this application's platform config"));
        }
        if phone.is_none() && email.is_none() {
            return Err(ApiError::invalid("phone_number or email is required"));
        }
        Ok(CreateUser {
            user_id,
            phone,
            username: Username::parse("username", &self.username)?,
            email,
            first_name: opt("first_name", self.first_name.as_deref(), Name::parse)?,
            last_name: opt("last_name", self.last_name.as_deref(), Name::parse)?,
            gender: opt("gender", self.gender.as_deref(), Gender::parse)?,
            meta: meta(self.meta)?,
            external_id: short_text("external_id", self.external_id)?,
            rr_id: short_text("rr_id", self.rr_id)?,
            verified: true,
        })
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EmailBody {
    pub email: String,
    #[serde(default)]
    pub primary: Option<bool>,
    #[serde(default)]
    pub verified: Option<bool>,
    #[serde(default)]
    pub active: Option<bool>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PhoneBody {
    pub phone: String,
    /// A string in the SDK's request model; numbers are accepted too.
    #[serde(default)]
    pub country_code: Option<Value>,
    #[serde(default)]
    pub primary: Option<bool>,
    #[serde(default)]
    pub verified: Option<bool>,
    #[serde(default)]
    pub active: Option<bool>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct UpdateUserBody {
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub gender: Option<String>,
    #[serde(default)]
    pub external_id: Option<String>,
    #[serde(default)]
    pub rr_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub meta: Option<Value>,
    #[serde(default)]
    pub emails: Option<Vec<EmailBody>>,
    #[serde(default)]
    pub phone_numbers: Option<Vec<PhoneBody>>,
}

impl TryFrom<UpdateUserBody> for UpdateUser {
    type Error = ApiError;

    fn try_from(b: UpdateUserBody) -> Result<Self, ApiError> {
        let emails = b
            .emails
            .map(|list| {
                list.into_iter()
                    .map(|e| {
                        Ok(EmailEntry {
                            email: Email::parse("emails.email", &e.email)?,
                            primary: e.primary.unwrap_or(false),
                            verified: e.verified.unwrap_or(false),
                            active: e.active.unwrap_or(true),
                        })
                    })
                    .collect::<Result<Vec<_>, ApiError>>()
            })
            .transpose()?;
        let phone_numbers = b
            .phone_numbers
            .map(|list| {
                list.into_iter()
                    .map(|p| {
                        let code = match &p.country_code {
                            Some(Value::String(s)) => Some(s.clone()),
                            Some(Value::Number(n)) => Some(n.to_string()),
                            None | Some(Value::Null) => None,
                            Some(_) => {
                                return Err(ApiError::invalid("phone_numbers.country_code must be a string or number"))
                            }
                        };
                        Ok(PhoneEntry {
                            phone: Phone::parse_with_code("phone_numbers.phone", &p.phone, code.as_deref())?,
                            primary: p.primary.unwrap_or(false),
                            verified: p.verified.unwrap_or(false),
                            active: p.active.unwrap_or(true),
                        })
                    })
                    .collect::<Result<Vec<_>, ApiError>>()
            })
            .transpose()?;
        Ok(UpdateUser {
            first_name: opt("first_name", b.first_name.as_deref(), Name::parse)?,
            last_name: opt("last_name", b.last_name.as_deref(), Name::parse)?,
            gender: opt("gender", b.gender.as_deref(), Gender::parse)?,
            meta: meta(b.meta)?,
            external_id: short_text("external_id", b.external_id)?,
            rr_id: short_text("rr_id", b.rr_id)?,
            emails,
            phone_numbers,
        })
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct BlockBody {
    #[schema(min_items = 1, max_items = 500)]
    pub user_id: Vec<String>,
    pub status: bool,
    #[serde(default)]
    pub reason: Option<String>,
}

/// POST `…/customers/{user_id}/erase`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EraseBody {
    #[serde(default)]
    #[schema(required = true, nullable = false, min_length = 1, max_length = 500)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ArchiveBody {
    pub user_id: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct UndeleteBody {
    pub user_id: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub reason_id: Option<String>,
}

/// `UserSchema` / `UserSearchSchema` of the Fynd API.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = UserSchema)]
pub struct UserDto {
    #[serde(rename = "_id")]
    pub id: String,
    pub user_id: String,
    pub application_id: String,
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub emails: Value,
    #[schema(value_type = Vec<Object>)]
    pub phone_numbers: Value,
    #[schema(value_type = Object)]
    pub meta: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rr_id: Option<String>,
    pub account_type: String,
    pub active: bool,
    pub archive: bool,
    pub status: &'static str,
    pub created_at: String,
    pub updated_at: String,
}

fn status(blocked: bool) -> &'static str {
    if blocked {
        "blocked"
    } else {
        "active"
    }
}

impl From<UserRow> for UserDto {
    fn from(r: UserRow) -> Self {
        UserDto {
            id: r.user_id.clone(),
            user_id: r.user_id,
            application_id: r.application_id,
            username: r.username,
            first_name: r.first_name,
            last_name: r.last_name,
            gender: r.gender,
            emails: r.emails,
            phone_numbers: r.phone_numbers,
            meta: r.meta,
            external_id: r.external_id,
            rr_id: r.rr_id,
            account_type: r.account_type,
            active: !r.blocked,
            archive: r.archived,
            status: status(r.blocked),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

impl UserDto {
    pub fn from_user(u: &User, application_id: &str) -> Self {
        UserDto {
            id: u.id.to_string(),
            user_id: u.id.to_string(),
            application_id: application_id.to_string(),
            username: u.username.as_str().to_string(),
            first_name: u.first_name.as_ref().map(|n| n.as_str().to_string()),
            last_name: u.last_name.as_ref().map(|n| n.as_str().to_string()),
            gender: u.gender.map(|g| g.as_str().to_string()),
            emails: emails_json(&u.emails),
            phone_numbers: phones_json(&u.phone_numbers),
            meta: if u.meta.is_object() { u.meta.clone() } else { Value::Object(Map::new()) },
            external_id: u.external_id.clone(),
            rr_id: u.rr_id.clone(),
            account_type: u.account_type.clone(),
            active: !u.blocked,
            archive: false,
            status: status(u.blocked),
            created_at: format_time(u.created_at),
            updated_at: format_time(u.updated_at),
        }
    }
}

/// `PaginationSchema`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = PaginationSchema)]
pub struct Page {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub current: i64,
    pub size: i64,
    pub item_total: i64,
    pub has_next: bool,
}
