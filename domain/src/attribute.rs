//! User attributes: definitions (stream `attrdef-{id}`) and the values of one
//! user (stream `attrs-{user_id}`).
//!
//! A definition says what a value may be: its type, whether it is a list
//! (`multi_value`), and validations. Values are checked against it before
//! they are recorded, so the log never holds a value its definition (as it
//! was then) refused. Encrypted definitions receive values the caller has
//! already sealed: the domain checks the plaintext, the log sees ciphertext.

use crate::values::{Email, Phone};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttrType {
    String,
    Number,
    Boolean,
    Date,
    Datetime,
    Email,
    Phone,
    Enum,
    Json,
}

impl AttrType {
    pub fn as_str(self) -> &'static str {
        match self {
            AttrType::String => "string",
            AttrType::Number => "number",
            AttrType::Boolean => "boolean",
            AttrType::Date => "date",
            AttrType::Datetime => "datetime",
            AttrType::Email => "email",
            AttrType::Phone => "phone",
            AttrType::Enum => "enum",
            AttrType::Json => "json",
        }
    }

    /// Whether values of this type have an order (`gt`, `between` …).
    pub fn ordered(self) -> bool {
        matches!(self, AttrType::Number | AttrType::Date | AttrType::Datetime)
    }
}

/// One validation of a definition, as the wire writes it: `{type, value}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Validation {
    Min(f64),
    Max(f64),
    MinLength(u64),
    MaxLength(u64),
    Regex(String),
    Enum(Vec<String>),
    Required(bool),
}

impl Validation {
    pub fn name(&self) -> &'static str {
        match self {
            Validation::Min(_) => "min",
            Validation::Max(_) => "max",
            Validation::MinLength(_) => "min_length",
            Validation::MaxLength(_) => "max_length",
            Validation::Regex(_) => "regex",
            Validation::Enum(_) => "enum",
            Validation::Required(_) => "required",
        }
    }
}

/// An attribute definition. Frozen as the payload of the v1 definition events;
/// new fields must have serde defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub id: String,
    pub name: String,
    pub slug: String,
    #[serde(default)]
    pub description: String,
    #[serde(rename = "type")]
    pub kind: AttrType,
    #[serde(default)]
    pub multi_value: bool,
    #[serde(default)]
    pub validations: Vec<Validation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_value: Option<Value>,
    #[serde(default)]
    pub encrypted: bool,
    #[serde(default)]
    pub customer_editable: bool,
    #[serde(default)]
    pub pinned: bool,
    #[serde(default)]
    pub pin_order: i64,
    #[serde(default)]
    pub is_locked: bool,
    #[serde(default)]
    pub icon: String,
    #[serde(default)]
    pub ordering_channels: Vec<String>,
    /// `{enabled, type}` objects, stored as sent.
    #[serde(default)]
    pub masking: Value,
    #[serde(default)]
    pub registration: Value,
}

impl Definition {
    /// A definition of `kind` with every optional setting at its default.
    pub fn new(id: impl Into<String>, kind: AttrType) -> Definition {
        Definition {
            id: id.into(),
            name: String::new(),
            slug: String::new(),
            description: String::new(),
            kind,
            multi_value: false,
            validations: vec![],
            default_value: None,
            encrypted: false,
            customer_editable: false,
            pinned: false,
            pin_order: 0,
            is_locked: false,
            icon: String::new(),
            ordering_channels: vec![],
            masking: Value::Null,
            registration: Value::Null,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttrError {
    #[error("value breaks {rule}: {message}")]
    Rule { rule: &'static str, message: String },
    #[error("{field} is invalid: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("attribute definition not found")]
    NotFound,
    #[error("attribute definition already exists")]
    AlreadyExists,
    #[error("attribute definition {0} is locked and cannot be changed")]
    Locked(String),
    #[error("user has no value for attribute definition {0}")]
    NoValue(String),
}

fn rule(rule: &'static str, message: impl Into<String>) -> AttrError {
    AttrError::Rule { rule, message: message.into() }
}

fn invalid(field: &'static str, message: impl Into<String>) -> AttrError {
    AttrError::Invalid { field, message: message.into() }
}

const MAX_VALUE_BYTES: usize = 16 * 1024;
const MAX_ITEMS: usize = 100;

impl Definition {
    /// Checks the definition itself: slug shape, validations that fit the
    /// type, a compilable regex, enum values for `enum`, a valid default.
    pub fn check(&self) -> Result<(), AttrError> {
        if self.name.trim().is_empty() || self.name.chars().count() > 128 {
            return Err(invalid("name", "must be 1 to 128 characters"));
        }
        let slug_ok = !self.slug.is_empty()
            && self.slug.len() <= 64
            && self.slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !slug_ok {
            return Err(invalid("slug", "must be 1 to 64 lower-case letters, digits, _ or -"));
        }
        for v in &self.validations {
            let fits = match v {
                Validation::Min(_) | Validation::Max(_) => self.kind == AttrType::Number,
                Validation::MinLength(_) | Validation::MaxLength(_) | Validation::Regex(_) => {
                    matches!(self.kind, AttrType::String | AttrType::Email | AttrType::Phone)
                }
                Validation::Enum(list) => !list.is_empty() && matches!(self.kind, AttrType::String | AttrType::Enum),
                Validation::Required(_) => true,
            };
            if !fits {
                return Err(invalid(
                    "validations",
                    format!("{} does not apply to type {}", v.name(), self.kind.as_str()),
                ));
            }
            if let Validation::Regex(pattern) = v {
                regex::Regex::new(pattern).map_err(|e| invalid("validations", format!("regex: {e}")))?;
            }
        }
        if self.kind == AttrType::Enum && self.enum_values().is_none() {
            return Err(invalid("validations", "an enum definition needs an enum validation listing its values"));
        }
        if let Some(default) = &self.default_value {
            self.validate(default).map_err(|e| invalid("default_value", e.to_string()))?;
        }
        Ok(())
    }

    fn enum_values(&self) -> Option<&[String]> {
        self.validations.iter().find_map(|v| match v {
            Validation::Enum(list) => Some(list.as_slice()),
            _ => None,
        })
    }

    pub fn required(&self) -> bool {
        self.validations.iter().any(|v| matches!(v, Validation::Required(true)))
    }

    /// Checks a value and returns it normalised (emails lower-cased, phones
    /// as `+<cc><number>`, datetimes in UTC).
    pub fn validate(&self, value: &Value) -> Result<Value, AttrError> {
        if value.to_string().len() > MAX_VALUE_BYTES {
            return Err(rule("max_size", "a value is at most 16 KiB"));
        }
        if self.multi_value {
            let Value::Array(items) = value else {
                return Err(rule("type", "a multi-value attribute takes a list"));
            };
            if items.len() > MAX_ITEMS {
                return Err(rule("max_items", format!("at most {MAX_ITEMS} values")));
            }
            if items.is_empty() && self.required() {
                return Err(rule("required", "the list must not be empty"));
            }
            return items.iter().map(|v| self.validate_scalar(v)).collect::<Result<Vec<_>, _>>().map(Value::Array);
        }
        self.validate_scalar(value)
    }

    /// Checks one scalar (an item of a multi-value list, or the value).
    pub fn validate_scalar(&self, value: &Value) -> Result<Value, AttrError> {
        if value.is_null() {
            return Err(rule("required", "a value is required (delete the attribute instead of sending null)"));
        }
        let text = || value.as_str().ok_or_else(|| rule("type", format!("{} takes a string", self.kind.as_str())));
        let normalised = match self.kind {
            AttrType::String | AttrType::Enum => Value::String(text()?.to_string()),
            AttrType::Number => {
                let n = value.as_f64().ok_or_else(|| rule("type", "number takes a number"))?;
                Value::from(n)
            }
            AttrType::Boolean => {
                Value::Bool(value.as_bool().ok_or_else(|| rule("type", "boolean takes true or false"))?)
            }
            AttrType::Date => {
                let t = text()?;
                let format = time::macros::format_description!("[year]-[month]-[day]");
                time::Date::parse(t, format).map_err(|_| rule("type", "date takes YYYY-MM-DD"))?;
                Value::String(t.to_string())
            }
            AttrType::Datetime => {
                let t = OffsetDateTime::parse(text()?, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| rule("type", "datetime takes an RFC 3339 time"))?;
                let utc = t.to_offset(time::UtcOffset::UTC);
                Value::String(utc.format(&time::format_description::well_known::Rfc3339).unwrap_or_default())
            }
            AttrType::Email => Value::String(
                Email::parse("value", text()?).map_err(|e| rule("type", e.to_string()))?.as_str().to_string(),
            ),
            AttrType::Phone => {
                Value::String(Phone::parse("value", text()?).map_err(|e| rule("type", e.to_string()))?.e164())
            }
            AttrType::Json => value.clone(),
        };
        for v in &self.validations {
            match (v, &normalised) {
                (Validation::Min(min), Value::Number(n)) if n.as_f64().is_some_and(|n| n < *min) => {
                    return Err(rule("min", format!("must be at least {min}")));
                }
                (Validation::Max(max), Value::Number(n)) if n.as_f64().is_some_and(|n| n > *max) => {
                    return Err(rule("max", format!("must be at most {max}")));
                }
                (Validation::MinLength(min), Value::String(s)) if (s.chars().count() as u64) < *min => {
                    return Err(rule("min_length", format!("must be at least {min} characters")));
                }
                (Validation::MaxLength(max), Value::String(s)) if (s.chars().count() as u64) > *max => {
                    return Err(rule("max_length", format!("must be at most {max} characters")));
                }
                (Validation::Regex(pattern), Value::String(s)) => {
                    let re = regex::Regex::new(pattern).map_err(|e| rule("regex", e.to_string()))?;
                    if !re.is_match(s) {
                        return Err(rule("regex", format!("must match {pattern}")));
                    }
                }
                (Validation::Enum(list), Value::String(s)) if !list.contains(s) => {
                    return Err(rule("enum", format!("must be one of {}", list.join(", "))));
                }
                (Validation::Required(true), Value::String(s)) if s.is_empty() => {
                    return Err(rule("required", "must not be empty"));
                }
                _ => {}
            }
        }
        Ok(normalised)
    }
}

// ---------------------------------------------------------------------------
// The definition stream.

#[derive(Debug, Clone, PartialEq, Default)]
pub enum DefinitionState {
    #[default]
    NotCreated,
    Live {
        definition: Box<Definition>,
        created_at: OffsetDateTime,
        updated_at: OffsetDateTime,
    },
    Deleted,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DefinitionCommand {
    Create(Definition),
    /// Replaces the definition (its id and slug stay as they are unless changed here).
    Update(Definition),
    Delete,
}

/// `attribute.definition_created` / `attribute.definition_updated` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefinitionWritten {
    pub definition: Definition,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `attribute.definition_deleted` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefinitionDeleted {
    pub definition_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DefinitionEvent {
    Created(DefinitionWritten),
    Updated(DefinitionWritten),
    Deleted(DefinitionDeleted),
}

pub fn decide_definition(
    state: &DefinitionState,
    command: DefinitionCommand,
    now: OffsetDateTime,
) -> Result<Vec<DefinitionEvent>, AttrError> {
    match (state, command) {
        (DefinitionState::NotCreated, DefinitionCommand::Create(d)) => {
            d.check()?;
            Ok(vec![DefinitionEvent::Created(DefinitionWritten { definition: d, at: now })])
        }
        (_, DefinitionCommand::Create(_)) => Err(AttrError::AlreadyExists),
        (DefinitionState::Live { definition, .. }, DefinitionCommand::Update(_)) if definition.is_locked => {
            Err(AttrError::Locked(definition.id.clone()))
        }
        (DefinitionState::Live { definition, .. }, DefinitionCommand::Update(d)) => {
            d.check()?;
            Ok(if **definition == d {
                vec![]
            } else {
                vec![DefinitionEvent::Updated(DefinitionWritten { definition: d, at: now })]
            })
        }
        (DefinitionState::Live { definition, .. }, DefinitionCommand::Delete) if definition.is_locked => {
            Err(AttrError::Locked(definition.id.clone()))
        }
        (DefinitionState::Live { definition, .. }, DefinitionCommand::Delete) => {
            Ok(vec![DefinitionEvent::Deleted(DefinitionDeleted { definition_id: definition.id.clone(), at: now })])
        }
        (DefinitionState::NotCreated | DefinitionState::Deleted, _) => Err(AttrError::NotFound),
    }
}

pub fn evolve_definition(state: DefinitionState, event: &DefinitionEvent) -> DefinitionState {
    match (state, event) {
        (DefinitionState::NotCreated, DefinitionEvent::Created(e)) => {
            DefinitionState::Live { definition: Box::new(e.definition.clone()), created_at: e.at, updated_at: e.at }
        }
        (DefinitionState::Live { created_at, .. }, DefinitionEvent::Updated(e)) => {
            DefinitionState::Live { definition: Box::new(e.definition.clone()), created_at, updated_at: e.at }
        }
        (DefinitionState::Live { .. }, DefinitionEvent::Deleted(_)) => DefinitionState::Deleted,
        (state, _) => state,
    }
}

// ---------------------------------------------------------------------------
// The values of one user.

/// One stored value. `value` is ciphertext (`{"enc": …}`) for encrypted definitions.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredValue {
    pub attribute_id: String,
    pub value: Value,
    pub customer_overridden: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A user's values, by definition id.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ValuesState {
    pub values: BTreeMap<String, StoredValue>,
}

/// One value to record: already validated against `definition` (and sealed
/// when the definition is encrypted), with the id it gets if it is new.
#[derive(Debug, Clone, PartialEq)]
pub struct NewValue {
    pub definition_id: String,
    pub new_attribute_id: String,
    pub value: Value,
    pub customer_overridden: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ValuesCommand {
    /// Several values at once; one event per value that changes.
    Upsert(Vec<NewValue>),
    /// Removes the values of these definitions; unknown ones are an error
    /// unless `ignore_missing` (deleting a definition clears what exists).
    Delete { definition_ids: Vec<String>, ignore_missing: bool },
}

/// `attribute.upserted` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeUpserted {
    pub definition_id: String,
    pub attribute_id: String,
    pub value: Value,
    pub customer_overridden: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `attribute.deleted` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeDeleted {
    pub definition_id: String,
    pub attribute_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ValuesEvent {
    Upserted(AttributeUpserted),
    Deleted(AttributeDeleted),
}

pub fn decide_values(
    state: &ValuesState,
    command: ValuesCommand,
    now: OffsetDateTime,
) -> Result<Vec<ValuesEvent>, AttrError> {
    match command {
        ValuesCommand::Upsert(values) => Ok(values
            .into_iter()
            .filter_map(|v| {
                let existing = state.values.get(&v.definition_id);
                if existing.is_some_and(|e| e.value == v.value && e.customer_overridden == v.customer_overridden) {
                    return None;
                }
                Some(ValuesEvent::Upserted(AttributeUpserted {
                    attribute_id: existing.map_or(v.new_attribute_id, |e| e.attribute_id.clone()),
                    definition_id: v.definition_id,
                    value: v.value,
                    customer_overridden: v.customer_overridden,
                    at: now,
                }))
            })
            .collect()),
        ValuesCommand::Delete { definition_ids, ignore_missing } => {
            let mut events = Vec::new();
            for id in definition_ids {
                match state.values.get(&id) {
                    Some(v) => events.push(ValuesEvent::Deleted(AttributeDeleted {
                        definition_id: id,
                        attribute_id: v.attribute_id.clone(),
                        at: now,
                    })),
                    None if ignore_missing => {}
                    None => return Err(AttrError::NoValue(id)),
                }
            }
            Ok(events)
        }
    }
}

pub fn evolve_values(mut state: ValuesState, event: &ValuesEvent) -> ValuesState {
    match event {
        ValuesEvent::Upserted(e) => {
            let created_at = state.values.get(&e.definition_id).map_or(e.at, |v| v.created_at);
            state.values.insert(
                e.definition_id.clone(),
                StoredValue {
                    attribute_id: e.attribute_id.clone(),
                    value: e.value.clone(),
                    customer_overridden: e.customer_overridden,
                    created_at,
                    updated_at: e.at,
                },
            );
        }
        ValuesEvent::Deleted(e) => {
            state.values.remove(&e.definition_id);
        }
    }
    state
}

/// The attribute definition stream kind (`attrdef-{id}`). A live
/// definition holds its slug.
pub struct DefinitionStream;

impl crate::stream::Stream for DefinitionStream {
    const KIND: &'static str = "attribute_definition";
    type State = DefinitionState;
    type Command = DefinitionCommand;
    type Event = DefinitionEvent;
    type Rejection = AttrError;

    fn decide(
        state: &DefinitionState,
        command: DefinitionCommand,
        ctx: &crate::stream::Context,
    ) -> Result<Vec<DefinitionEvent>, AttrError> {
        decide_definition(state, command, ctx.now)
    }

    fn evolve(state: DefinitionState, event: &DefinitionEvent) -> DefinitionState {
        evolve_definition(state, event)
    }

    fn encode(event: &DefinitionEvent) -> crate::codec::EncodedEvent {
        crate::codec::encode_definition(event)
    }

    fn decode(event_type: &str, schema: u32, data: &str) -> Result<DefinitionEvent, crate::codec::DecodeError> {
        crate::codec::decode_definition(event_type, schema, data)
    }

    fn command_name(command: &DefinitionCommand) -> &'static str {
        match command {
            DefinitionCommand::Create(_) => "CreateAttributeDefinition",
            DefinitionCommand::Update(_) => "UpdateAttributeDefinition",
            DefinitionCommand::Delete => "DeleteAttributeDefinition",
        }
    }

    fn unique_keys(state: &DefinitionState) -> Vec<String> {
        match state {
            DefinitionState::Live { definition, .. } => vec![format!("slug:{}", definition.slug)],
            _ => Vec::new(),
        }
    }
}

/// The stream kind of one user's attribute values (`attrs-{user_id}`).
pub struct ValuesStream;

impl crate::stream::Stream for ValuesStream {
    const KIND: &'static str = "attribute_values";
    type State = ValuesState;
    type Command = ValuesCommand;
    type Event = ValuesEvent;
    type Rejection = AttrError;

    fn decide(
        state: &ValuesState,
        command: ValuesCommand,
        ctx: &crate::stream::Context,
    ) -> Result<Vec<ValuesEvent>, AttrError> {
        decide_values(state, command, ctx.now)
    }

    fn evolve(state: ValuesState, event: &ValuesEvent) -> ValuesState {
        evolve_values(state, event)
    }

    fn encode(event: &ValuesEvent) -> crate::codec::EncodedEvent {
        crate::codec::encode_values(event)
    }

    fn decode(event_type: &str, schema: u32, data: &str) -> Result<ValuesEvent, crate::codec::DecodeError> {
        crate::codec::decode_values(event_type, schema, data)
    }

    fn command_name(command: &ValuesCommand) -> &'static str {
        match command {
            ValuesCommand::Upsert(_) => "UpsertAttributes",
            ValuesCommand::Delete { .. } => "DeleteAttributes",
        }
    }
}
