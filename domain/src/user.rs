//! The user stream (`user-{id}`): its state, commands, events and rules.

use crate::codec::v1;
use crate::values::{Email, Gender, Name, Phone, UserId, Username};
use serde_json::Value;
use std::collections::BTreeMap;
use time::{Duration, OffsetDateTime};

pub use v1::{EmailEntry, PhoneEntry};

pub use crate::stream::Context;

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
    /// Sessions started and not revoked; expired ones are pruned at the next login.
    pub sessions: BTreeMap<String, ActiveSession>,
    pub login_count: i64,
    pub last_login_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActiveSession {
    pub expires_at: OffsetDateTime,
    pub max_age: i64,
    pub rolling: bool,
}

impl User {
    /// Ids of the sessions still valid at `now`.
    pub fn active_sessions(&self, now: OffsetDateTime) -> Vec<String> {
        self.sessions.iter().filter(|(_, s)| s.expires_at > now).map(|(id, _)| id.clone()).collect()
    }
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
    /// Erased: the person's data is gone for good; the id answers "not found".
    Erased { erased_at: OffsetDateTime },
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
    pub phone: Option<Phone>,
    pub email: Option<Email>,
    pub first_name: Option<Name>,
    pub last_name: Option<Name>,
    pub gender: Option<Gender>,
    pub meta: Option<Value>,
    pub external_id: Option<String>,
    pub rr_id: Option<String>,
    /// Whether the email and phone arrive verified: the Fynd platform
    /// vouches for the contacts it is given; a Passage user starts
    /// unverified until a login proves them.
    pub verified: bool,
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
    Block {
        reason: String,
    },
    Unblock {
        reason: String,
    },
    Archive,
    /// Erase the person (crypto-shredding); a second erase changes nothing.
    Erase {
        reason: String,
    },
    Restore {
        reason: String,
    },
    StartSession(StartSession),
    /// A rolling session was used: extend it (no-op unless rolling and active).
    TouchSession {
        session_id: String,
    },
    /// Revokes the named sessions, or every active one when `None`.
    RevokeSessions {
        session_ids: Option<Vec<String>>,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct StartSession {
    pub session_id: String,
    pub domain: String,
    pub user_agent: String,
    pub ip: String,
    pub max_age: i64,
    pub rolling: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UserEvent {
    Created(v1::UserCreated),
    Updated(v1::UserUpdated),
    Blocked(v1::UserBlocked),
    Unblocked(v1::UserUnblocked),
    Archived(v1::UserArchived),
    Restored(v1::UserRestored),
    SessionStarted(v1::SessionStarted),
    SessionExtended(v1::SessionExtended),
    SessionsRevoked(v1::SessionsRevoked),
    Erased(v1::UserErased),
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
    #[error("a user needs an email or a phone number")]
    NoContact,
    #[error("user is blocked and cannot start a session")]
    Blocked,
    #[error("session {0} not found for this user")]
    SessionNotFound(String),
}

/// Decides what happens when `command` meets `state`. Pure: the same inputs
/// always give the same answer. A command that would change nothing returns
/// no events, so retries and redeliveries are harmless.
pub fn decide(state: &UserState, command: UserCommand, ctx: &Context) -> Result<Vec<UserEvent>, UserError> {
    match (state, command) {
        (UserState::NotCreated, UserCommand::Create(c)) if c.email.is_none() && c.phone.is_none() => {
            Err(UserError::NoContact)
        }
        (UserState::NotCreated, UserCommand::Create(c)) => Ok(vec![UserEvent::Created(v1::UserCreated {
            user_id: c.user_id,
            username: c.username,
            first_name: c.first_name,
            last_name: c.last_name,
            gender: c.gender,
            emails: c
                .email
                .map(|email| vec![EmailEntry { email, primary: true, verified: c.verified, active: true }])
                .unwrap_or_default(),
            phone_numbers: c
                .phone
                .map(|phone| vec![PhoneEntry { phone, primary: true, verified: c.verified, active: true }])
                .unwrap_or_default(),
            meta: c.meta.unwrap_or_else(|| Value::Object(Default::default())),
            external_id: c.external_id,
            rr_id: c.rr_id,
            account_type: "user".to_string(),
            at: ctx.now,
        })]),
        (_, UserCommand::Create(_)) => Err(UserError::AlreadyExists),
        (UserState::Live(user), UserCommand::Update(u)) => decide_update(user, u, ctx),
        (UserState::Live(user), UserCommand::Block { reason }) => Ok(if user.blocked {
            vec![]
        } else {
            let mut events = revoke_all(user, "blocked", ctx);
            events.insert(0, UserEvent::Blocked(v1::UserBlocked { reason, at: ctx.now }));
            events
        }),
        (UserState::Live(user), UserCommand::Unblock { reason }) => Ok(if user.blocked {
            vec![UserEvent::Unblocked(v1::UserUnblocked { reason, at: ctx.now })]
        } else {
            vec![]
        }),
        (UserState::Live(user), UserCommand::Archive) => {
            let mut events = revoke_all(user, "archived", ctx);
            events.insert(0, UserEvent::Archived(v1::UserArchived { at: ctx.now }));
            Ok(events)
        }
        (UserState::Archived { .. }, UserCommand::Archive) => Ok(vec![]),
        (UserState::Live(_) | UserState::Archived { .. }, UserCommand::Erase { reason }) => {
            Ok(vec![UserEvent::Erased(v1::UserErased { reason, at: ctx.now })])
        }
        (UserState::Erased { .. }, UserCommand::Erase { .. }) => Ok(vec![]),
        (UserState::Live(_), UserCommand::Restore { .. }) => Ok(vec![]),
        (UserState::Archived { archived_at, .. }, UserCommand::Restore { reason }) => {
            let window = Duration::days(i64::from(ctx.delete_account_day));
            if ctx.now - *archived_at > window {
                Err(UserError::RestoreWindowPassed { days: ctx.delete_account_day })
            } else {
                Ok(vec![UserEvent::Restored(v1::UserRestored { reason, at: ctx.now })])
            }
        }
        (UserState::Live(user), UserCommand::StartSession(_)) if user.blocked => Err(UserError::Blocked),
        (UserState::Live(_), UserCommand::StartSession(s)) => {
            let expires_at = ctx.now + Duration::seconds(s.max_age);
            Ok(vec![UserEvent::SessionStarted(v1::SessionStarted {
                session_id: s.session_id,
                domain: s.domain,
                user_agent: s.user_agent,
                ip: s.ip,
                max_age: s.max_age,
                rolling: s.rolling,
                expires_at,
                at: ctx.now,
            })])
        }
        (UserState::Live(user), UserCommand::TouchSession { session_id }) => {
            let session = user.sessions.get(&session_id).filter(|s| s.expires_at > ctx.now);
            let Some(session) = session else {
                return Err(UserError::SessionNotFound(session_id));
            };
            // Extending on every request would append an event per request:
            // a rolling session is extended once less than half its life is left.
            let expires_at = ctx.now + Duration::seconds(session.max_age);
            let half_left = session.expires_at - ctx.now < Duration::seconds(session.max_age / 2);
            Ok(if session.rolling && half_left {
                vec![UserEvent::SessionExtended(v1::SessionExtended { session_id, expires_at, at: ctx.now })]
            } else {
                vec![]
            })
        }
        (UserState::Live(user), UserCommand::RevokeSessions { session_ids: None, reason }) => {
            Ok(revoke_all(user, &reason, ctx))
        }
        (UserState::Live(user), UserCommand::RevokeSessions { session_ids: Some(ids), reason }) => {
            let active = user.active_sessions(ctx.now);
            if let Some(missing) = ids.iter().find(|id| !active.contains(id)) {
                return Err(UserError::SessionNotFound(missing.clone()));
            }
            Ok(if ids.is_empty() {
                vec![]
            } else {
                vec![UserEvent::SessionsRevoked(v1::SessionsRevoked { session_ids: ids, reason, at: ctx.now })]
            })
        }
        (UserState::NotCreated | UserState::Archived { .. } | UserState::Erased { .. }, _) => Err(UserError::NotFound),
    }
}

/// Revokes every session still active: nothing when there is none.
fn revoke_all(user: &User, reason: &str, ctx: &Context) -> Vec<UserEvent> {
    let session_ids = user.active_sessions(ctx.now);
    if session_ids.is_empty() {
        return vec![];
    }
    vec![UserEvent::SessionsRevoked(v1::SessionsRevoked { session_ids, reason: reason.to_string(), at: ctx.now })]
}

fn decide_update(user: &User, u: UpdateUser, ctx: &Context) -> Result<Vec<UserEvent>, UserError> {
    if let Some(emails) = &u.emails {
        check_list("emails", emails.iter().map(|e| (e.email.as_str().to_string(), e.primary)))?;
    }
    if let Some(phones) = &u.phone_numbers {
        check_list("phone_numbers", phones.iter().map(|p| (p.phone.e164(), p.primary)))?;
    }
    let no_emails = u.emails.as_ref().map_or(user.emails.is_empty(), Vec::is_empty);
    let no_phones = u.phone_numbers.as_ref().map_or(user.phone_numbers.is_empty(), Vec::is_empty);
    if no_emails && no_phones {
        return Err(UserError::NoContact);
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
            sessions: BTreeMap::new(),
            login_count: 0,
            last_login_at: None,
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
        (UserState::Live(mut user), UserEvent::SessionStarted(e)) => {
            user.sessions.retain(|_, s| s.expires_at > e.at);
            user.sessions.insert(
                e.session_id.clone(),
                ActiveSession { expires_at: e.expires_at, max_age: e.max_age, rolling: e.rolling },
            );
            user.login_count += 1;
            user.last_login_at = Some(e.at);
            UserState::Live(user)
        }
        (UserState::Live(mut user), UserEvent::SessionExtended(e)) => {
            if let Some(s) = user.sessions.get_mut(&e.session_id) {
                s.expires_at = e.expires_at;
            }
            UserState::Live(user)
        }
        (UserState::Live(mut user), UserEvent::SessionsRevoked(e)) => {
            for id in &e.session_ids {
                user.sessions.remove(id);
            }
            UserState::Live(user)
        }
        (UserState::Archived { mut user, archived_at }, UserEvent::SessionsRevoked(e)) => {
            for id in &e.session_ids {
                user.sessions.remove(id);
            }
            UserState::Archived { user, archived_at }
        }
        (_, UserEvent::Erased(e)) => UserState::Erased { erased_at: e.at },
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

/// The user stream kind (`user-{id}`).
pub struct UserStream;

impl crate::stream::Stream for UserStream {
    const KIND: &'static str = "user";
    type State = UserState;
    type Command = UserCommand;
    type Event = UserEvent;
    type Rejection = UserError;

    fn decide(state: &UserState, command: UserCommand, ctx: &Context) -> Result<Vec<UserEvent>, UserError> {
        decide(state, command, ctx)
    }

    fn evolve(state: UserState, event: &UserEvent) -> UserState {
        evolve(state, event)
    }

    fn encode(event: &UserEvent) -> crate::codec::EncodedEvent {
        crate::codec::encode(event)
    }

    fn decode(event_type: &str, schema: u32, data: &str) -> Result<UserEvent, crate::codec::DecodeError> {
        crate::codec::decode(event_type, schema, data)
    }

    fn command_name(command: &UserCommand) -> &'static str {
        match command {
            UserCommand::Create(_) => "CreateUser",
            UserCommand::Update(_) => "UpdateUser",
            UserCommand::Block { .. } => "BlockUser",
            UserCommand::Unblock { .. } => "UnblockUser",
            UserCommand::Archive => "ArchiveUser",
            UserCommand::Erase { .. } => "EraseUser",
            UserCommand::Restore { .. } => "RestoreUser",
            UserCommand::StartSession(_) => "StartSession",
            UserCommand::TouchSession { .. } => "TouchSession",
            UserCommand::RevokeSessions { .. } => "RevokeSessions",
        }
    }

    fn unique_keys(state: &UserState) -> Vec<String> {
        state.unique_keys().into_iter().map(|(kind, value)| format!("{}:{value}", kind.as_str())).collect()
    }
}
