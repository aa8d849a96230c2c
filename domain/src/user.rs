//! The user stream (`user-{id}`): its state, commands, events and rules.

use crate::codec::v1;
use crate::values::{Email, Gender, Name, Phone, UserId, Username};
use serde_json::Value;
use time::{Duration, OffsetDateTime};

pub use v1::{EmailEntry, PhoneEntry};

/// Everything a decision may depend on besides the state and the command.
#[derive(Debug, Clone)]
pub struct Context {
    pub now: OffsetDateTime,
    /// Days after archiving during which a user may still be restored.
    pub delete_account_day: u32,
}

impl Context {
    pub const DEFAULT_DELETE_ACCOUNT_DAY: u32 = 30;

    pub fn at(now: OffsetDateTime) -> Self {
        Context { now, delete_account_day: Self::DEFAULT_DELETE_ACCOUNT_DAY }
    }
}

/// A user's profile as the events have built it.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: UserId,
    pub username: Username,
    pub first_name: Option<Name>,
    pub last_name: Option<Name>,
    pub gender: Option<Gender>,
    pub emails: Vec<EmailEntry>,
    pub phone_numbers: Vec<PhoneEntry>,
    pub meta: Value,
    pub external_id: Option<String>,
    pub rr_id: Option<String>,
    pub account_type: String,
    pub blocked: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// The kinds of value that must be unique per application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UniqueKind {
    Email,
    Phone,
    Username,
}

impl UniqueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UniqueKind::Email => "email",
            UniqueKind::Phone => "phone",
            UniqueKind::Username => "username",
        }
    }
}

impl User {
    /// The values this user holds exclusively within its application.
    pub fn unique_keys(&self) -> Vec<(UniqueKind, String)> {
        let mut keys: Vec<(UniqueKind, String)> = self
            .emails
            .iter()
            .map(|e| (UniqueKind::Email, e.email.as_str().to_string()))
            .chain(self.phone_numbers.iter().map(|p| (UniqueKind::Phone, p.phone.e164())))
            .collect();
        keys.push((UniqueKind::Username, self.username.key()));
        keys.sort();
        keys.dedup();
        keys
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub enum UserState {
    #[default]
    NotCreated,
    /// Registered and visible; may be blocked.
    Live(User),
    /// Archived (deleted for the customer): hidden, its unique values released.
    Archived { user: User, archived_at: OffsetDateTime },
}

impl UserState {
    /// Unique values held right now: none unless the user is live.
    pub fn unique_keys(&self) -> Vec<(UniqueKind, String)> {
        match self {
            UserState::Live(user) => user.unique_keys(),
            _ => Vec::new(),
        }
    }

    pub fn live(&self) -> Option<&User> {
        match self {
            UserState::Live(user) => Some(user),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CreateUser {
    pub user_id: UserId,
    pub username: Username,
    pub phone: Phone,
    pub email: Option<Email>,
    pub first_name: Option<Name>,
    pub last_name: Option<Name>,
    pub gender: Option<Gender>,
    pub meta: Option<Value>,
    pub external_id: Option<String>,
    pub rr_id: Option<String>,
}

/// A profile change; `None` leaves a field as it is, lists replace the old ones.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpdateUser {
    pub first_name: Option<Name>,
    pub last_name: Option<Name>,
    pub gender: Option<Gender>,
    pub meta: Option<Value>,
    pub external_id: Option<String>,
    pub rr_id: Option<String>,
    pub emails: Option<Vec<EmailEntry>>,
    pub phone_numbers: Option<Vec<PhoneEntry>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UserCommand {
    Create(CreateUser),
    Update(UpdateUser),
    Block { reason: String },
    Unblock { reason: String },
    Archive,
    Restore { reason: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum UserEvent {
    Created(v1::UserCreated),
    Updated(v1::UserUpdated),
    Blocked(v1::UserBlocked),
    Unblocked(v1::UserUnblocked),
    Archived(v1::UserArchived),
    Restored(v1::UserRestored),
}

/// A business rule said no. Nothing was appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user already exists")]
    AlreadyExists,
    #[error("user not found")]
    NotFound,
    #[error("the restore window of {days} days after archiving has passed")]
    RestoreWindowPassed { days: u32 },
    #[error("{field} lists the same value twice: {value}")]
    DuplicateInList { field: &'static str, value: String },
    #[error("{field} may have at most one primary entry")]
    SeveralPrimaries { field: &'static str },
    #[error("phone_numbers must not be empty: a user needs a phone number")]
    NoPhone,
}

/// Decides what happens when `command` meets `state`. Pure: the same inputs
/// always give the same answer. A command that would change nothing returns
/// no events, so retries and redeliveries are harmless.
pub fn decide(state: &UserState, command: UserCommand, ctx: &Context) -> Result<Vec<UserEvent>, UserError> {
    match (state, command) {
        (UserState::NotCreated, UserCommand::Create(c)) => Ok(vec![UserEvent::Created(v1::UserCreated {
            user_id: c.user_id,
            username: c.username,
            first_name: c.first_name,
            last_name: c.last_name,
            gender: c.gender,
            emails: c
                .email
                .map(|email| vec![EmailEntry { email, primary: true, verified: true, active: true }])
                .unwrap_or_default(),
            phone_numbers: vec![PhoneEntry { phone: c.phone, primary: true, verified: true, active: true }],
            meta: c.meta.unwrap_or_else(|| Value::Object(Default::default())),
            external_id: c.external_id,
            rr_id: c.rr_id,
            account_type: "user".to_string(),
            at: ctx.now,
        })]),
        (_, UserCommand::Create(_)) => Err(UserError::AlreadyExists),
        (UserState::Live(user), UserCommand::Update(u)) => decide_update(user, u, ctx),
        (UserState::Live(user), UserCommand::Block { reason }) => {
            Ok(if user.blocked { vec![] } else { vec![UserEvent::Blocked(v1::UserBlocked { reason, at: ctx.now })] })
        }
        (UserState::Live(user), UserCommand::Unblock { reason }) => Ok(if user.blocked {
            vec![UserEvent::Unblocked(v1::UserUnblocked { reason, at: ctx.now })]
        } else {
            vec![]
        }),
        (UserState::Live(_), UserCommand::Archive) => Ok(vec![UserEvent::Archived(v1::UserArchived { at: ctx.now })]),
        (UserState::Archived { .. }, UserCommand::Archive) => Ok(vec![]),
        (UserState::Live(_), UserCommand::Restore { .. }) => Ok(vec![]),
        (UserState::Archived { archived_at, .. }, UserCommand::Restore { reason }) => {
            let window = Duration::days(i64::from(ctx.delete_account_day));
            if ctx.now - *archived_at > window {
                Err(UserError::RestoreWindowPassed { days: ctx.delete_account_day })
            } else {
                Ok(vec![UserEvent::Restored(v1::UserRestored { reason, at: ctx.now })])
            }
        }
        (UserState::NotCreated | UserState::Archived { .. }, _) => Err(UserError::NotFound),
    }
}

fn decide_update(user: &User, u: UpdateUser, ctx: &Context) -> Result<Vec<UserEvent>, UserError> {
    if let Some(emails) = &u.emails {
        check_list("emails", emails.iter().map(|e| (e.email.as_str().to_string(), e.primary)))?;
    }
    if let Some(phones) = &u.phone_numbers {
        if phones.is_empty() {
            return Err(UserError::NoPhone);
        }
        check_list("phone_numbers", phones.iter().map(|p| (p.phone.e164(), p.primary)))?;
    }
    fn changed<T: PartialEq>(new: Option<T>, old: &T) -> Option<T> {
        new.filter(|n| n != old)
    }
    let event = v1::UserUpdated {
        first_name: changed(u.first_name.map(Some), &user.first_name).flatten(),
        last_name: changed(u.last_name.map(Some), &user.last_name).flatten(),
        gender: changed(u.gender.map(Some), &user.gender).flatten(),
        meta: changed(u.meta, &user.meta),
        external_id: changed(u.external_id.map(Some), &user.external_id).flatten(),
        rr_id: changed(u.rr_id.map(Some), &user.rr_id).flatten(),
        emails: changed(u.emails.map(with_primary), &user.emails),
        phone_numbers: changed(u.phone_numbers.map(with_primary), &user.phone_numbers),
        at: ctx.now,
    };
    Ok(if event.is_empty() { vec![] } else { vec![UserEvent::Updated(event)] })
}

fn check_list(field: &'static str, entries: impl Iterator<Item = (String, bool)>) -> Result<(), UserError> {
    let mut seen = std::collections::HashSet::new();
    let mut primaries = 0;
    for (key, primary) in entries {
        if !seen.insert(key.clone()) {
            return Err(UserError::DuplicateInList { field, value: key });
        }
        primaries += usize::from(primary);
    }
    if primaries > 1 {
        return Err(UserError::SeveralPrimaries { field });
    }
    Ok(())
}

/// Entries that can be primary; when none is marked, the first one becomes primary.
pub trait Primary {
    fn primary_mut(&mut self) -> &mut bool;
}

impl Primary for EmailEntry {
    fn primary_mut(&mut self) -> &mut bool {
        &mut self.primary
    }
}

impl Primary for PhoneEntry {
    fn primary_mut(&mut self) -> &mut bool {
        &mut self.primary
    }
}

fn with_primary<T: Primary>(mut list: Vec<T>) -> Vec<T> {
    if !list.iter_mut().any(|e| *e.primary_mut()) {
        if let Some(first) = list.first_mut() {
            *first.primary_mut() = true;
        }
    }
    list
}

/// Applies one recorded event. Total: an event that does not fit the state
/// (which a correct log never holds) leaves the state as it is.
pub fn evolve(state: UserState, event: &UserEvent) -> UserState {
    match (state, event) {
        (UserState::NotCreated, UserEvent::Created(e)) => UserState::Live(User {
            id: e.user_id.clone(),
            username: e.username.clone(),
            first_name: e.first_name.clone(),
            last_name: e.last_name.clone(),
            gender: e.gender,
            emails: e.emails.clone(),
            phone_numbers: e.phone_numbers.clone(),
            meta: e.meta.clone(),
            external_id: e.external_id.clone(),
            rr_id: e.rr_id.clone(),
            account_type: e.account_type.clone(),
            blocked: false,
            created_at: e.at,
            updated_at: e.at,
        }),
        (UserState::Live(mut user), UserEvent::Updated(e)) => {
            e.apply_to(&mut user);
            user.updated_at = e.at;
            UserState::Live(user)
        }
        (UserState::Live(mut user), UserEvent::Blocked(e)) => {
            user.blocked = true;
            user.updated_at = e.at;
            UserState::Live(user)
        }
        (UserState::Live(mut user), UserEvent::Unblocked(e)) => {
            user.blocked = false;
            user.updated_at = e.at;
            UserState::Live(user)
        }
        (UserState::Live(user), UserEvent::Archived(e)) => UserState::Archived { user, archived_at: e.at },
        (UserState::Archived { mut user, .. }, UserEvent::Restored(e)) => {
            user.updated_at = e.at;
            UserState::Live(user)
        }
        (state, _) => state,
    }
}

impl v1::UserUpdated {
    fn is_empty(&self) -> bool {
        self.first_name.is_none()
            && self.last_name.is_none()
            && self.gender.is_none()
            && self.meta.is_none()
            && self.external_id.is_none()
            && self.rr_id.is_none()
            && self.emails.is_none()
            && self.phone_numbers.is_none()
    }

    /// Copies the fields this event changed onto `user`.
    pub fn apply_to(&self, user: &mut User) {
        if let Some(v) = &self.first_name {
            user.first_name = Some(v.clone());
        }
        if let Some(v) = &self.last_name {
            user.last_name = Some(v.clone());
        }
        if let Some(v) = self.gender {
            user.gender = Some(v);
        }
        if let Some(v) = &self.meta {
            user.meta = v.clone();
        }
        if let Some(v) = &self.external_id {
            user.external_id = Some(v.clone());
        }
        if let Some(v) = &self.rr_id {
            user.rr_id = Some(v.clone());
        }
        if let Some(v) = &self.emails {
            user.emails = v.clone();
        }
        if let Some(v) = &self.phone_numbers {
            user.phone_numbers = v.clone();
        }
    }
}

/// Folds a whole history into a state.
pub fn replay<'a>(events: impl IntoIterator<Item = &'a UserEvent>) -> UserState {
    events.into_iter().fold(UserState::NotCreated, evolve)
}
