//! The users read model: one row per user, its emails and phones in a lookup
//! table, and a live-user count per application. Built only from `user.*`
//! events; serves get, list (paged, filtered) and search.
//!
//! Modules: this file (schema, row shape, the projection's dispatch),
//! `writes` (how each event is written), `inline` (created users written
//! in the SQLite log's own transaction), `query` ([`UsersQuery`]).

use crate::{Projection, ProjectionError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{AnyConnection, Row};
use userstream_domain::codec::{self, v1};
use userstream_domain::user::{EmailEntry, PhoneEntry, UserEvent};
use userstream_eventlog::{format_time, Dialect, Migration, RecordedEvent};

mod inline;
mod query;
mod writes;

use writes::{
    apply_archived, apply_erased, apply_restored, apply_session_extended, apply_session_started,
    apply_sessions_revoked, apply_update, bump_counts, insert_created, set_flag,
};

pub use inline::InlineUsers;
pub use query::{list_page_sql, SessionRow, UserKey, UsersQuery, MAX_PAGE_SIZE, MAX_SEARCH_RESULTS};

pub const NAME: &str = "users_v1";

const DDL: &str = "
    CREATE TABLE IF NOT EXISTS users_v1 (
        company_id TEXT NOT NULL,
        application_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        version BIGINT NOT NULL,
        username TEXT NOT NULL,
        username_key TEXT NOT NULL,
        first_name TEXT,
        last_name TEXT,
        gender TEXT,
        emails TEXT NOT NULL,
        phone_numbers TEXT NOT NULL,
        meta TEXT NOT NULL,
        external_id TEXT,
        rr_id TEXT,
        account_type TEXT NOT NULL,
        blocked BIGINT NOT NULL,
        archived BIGINT NOT NULL,
        archived_at TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (application_id, user_id)
    );
    CREATE INDEX IF NOT EXISTS users_v1_list ON users_v1 (company_id, application_id, archived, seq);
    CREATE INDEX IF NOT EXISTS users_v1_username ON users_v1 (application_id, username_key);
    CREATE INDEX IF NOT EXISTS users_v1_external ON users_v1 (application_id, external_id) WHERE external_id IS NOT NULL;
    CREATE TABLE IF NOT EXISTS user_contacts_v1 (
        application_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        value TEXT NOT NULL,
        user_id TEXT NOT NULL,
        PRIMARY KEY (application_id, kind, value, user_id)
    );
    CREATE INDEX IF NOT EXISTS user_contacts_v1_user ON user_contacts_v1 (application_id, user_id);
    CREATE TABLE IF NOT EXISTS user_counts_v1 (
        company_id TEXT NOT NULL,
        application_id TEXT NOT NULL,
        live BIGINT NOT NULL,
        PRIMARY KEY (company_id, application_id)
    );";

/// Primary contacts and login figures for the Passage surface, and sessions.
/// The model is emptied and its checkpoint reset, so it is rebuilt from the
/// log with the new columns filled.
const DDL_2: &str = "
    ALTER TABLE users_v1 ADD COLUMN email TEXT NOT NULL DEFAULT '';
    ALTER TABLE users_v1 ADD COLUMN phone TEXT NOT NULL DEFAULT '';
    ALTER TABLE users_v1 ADD COLUMN email_verified BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE users_v1 ADD COLUMN phone_verified BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE users_v1 ADD COLUMN login_count BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE users_v1 ADD COLUMN last_login_at TEXT;
    CREATE TABLE IF NOT EXISTS user_sessions_v1 (
        application_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        domain TEXT NOT NULL,
        user_agent TEXT NOT NULL,
        ip TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (application_id, user_id, session_id)
    );
    ALTER TABLE user_counts_v1 ADD COLUMN blocked BIGINT NOT NULL DEFAULT 0;
    CREATE INDEX IF NOT EXISTS users_v1_created ON users_v1 (company_id, application_id, archived, created_at);
    DELETE FROM users_v1;
    DELETE FROM user_contacts_v1;
    DELETE FROM user_counts_v1;
    UPDATE checkpoints SET position = 0, failure = NULL WHERE name = 'users_v1';";

/// A covering (application, user, value) index, so "this user's contacts
/// containing q" (the group members filter) reads only that user's rows.
const DDL_3: &str =
    "CREATE INDEX IF NOT EXISTS user_contacts_v1_user_value ON user_contacts_v1 (application_id, user_id, value)";

/// `user_contacts_v1_user_value` starts with (application, user), so it
/// serves every lookup the (application, user) index did; dropping that one
/// saves two index writes per created user. (A replay's switch may have
/// renamed it `…__r` on SQLite.)
const DDL_4: &str = "DROP INDEX IF EXISTS user_contacts_v1_user; DROP INDEX IF EXISTS user_contacts_v1_user__r;";

const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, sqlite: DDL, postgres: DDL },
    Migration { version: 2, sqlite: DDL_2, postgres: DDL_2 },
    Migration { version: 3, sqlite: DDL_3, postgres: DDL_3 },
    Migration { version: 4, sqlite: DDL_4, postgres: DDL_4 },
];

/// The tables this read model owns, for rebuilds and comparisons.
pub const TABLES: &[&str] = &["users_v1", "user_contacts_v1", "user_counts_v1", "user_sessions_v1"];

/// One user as the read model holds it. JSON columns hold the Fynd wire shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    pub company_id: String,
    pub application_id: String,
    pub user_id: String,
    pub version: i64,
    pub username: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub gender: Option<String>,
    pub emails: Value,
    pub phone_numbers: Value,
    pub meta: Value,
    pub external_id: Option<String>,
    pub rr_id: Option<String>,
    pub account_type: String,
    pub blocked: bool,
    pub archived: bool,
    pub created_at: String,
    pub updated_at: String,
    /// Primary (else first) email, lower case; `""` when none.
    pub email: String,
    /// Primary (else first) phone as `+<cc><number>`; `""` when none.
    pub phone: String,
    pub email_verified: bool,
    pub phone_verified: bool,
    pub login_count: i64,
    pub last_login_at: Option<String>,
}

pub(crate) const COLUMNS: &str = "u.company_id, u.application_id, u.user_id, u.version, u.username, u.first_name, u.last_name, u.gender, u.emails, u.phone_numbers, u.meta, u.external_id, u.rr_id, u.account_type, u.blocked, u.archived, u.created_at, u.updated_at, u.email, u.phone, u.email_verified, u.phone_verified, u.login_count, u.last_login_at";

fn json_column(row: &sqlx::any::AnyRow, name: &str) -> Result<Value, sqlx::Error> {
    let text: String = row.try_get(name)?;
    serde_json::from_str(&text).map_err(|e| sqlx::Error::ColumnDecode { index: name.into(), source: Box::new(e) })
}

pub(crate) fn decode_row(row: &sqlx::any::AnyRow) -> Result<UserRow, sqlx::Error> {
    Ok(UserRow {
        company_id: row.try_get("company_id")?,
        application_id: row.try_get("application_id")?,
        user_id: row.try_get("user_id")?,
        version: row.try_get("version")?,
        username: row.try_get("username")?,
        first_name: row.try_get("first_name")?,
        last_name: row.try_get("last_name")?,
        gender: row.try_get("gender")?,
        emails: json_column(row, "emails")?,
        phone_numbers: json_column(row, "phone_numbers")?,
        meta: json_column(row, "meta")?,
        external_id: row.try_get("external_id")?,
        rr_id: row.try_get("rr_id")?,
        account_type: row.try_get("account_type")?,
        blocked: row.try_get::<i64, _>("blocked")? != 0,
        archived: row.try_get::<i64, _>("archived")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        email: row.try_get("email")?,
        phone: row.try_get("phone")?,
        email_verified: row.try_get::<i64, _>("email_verified")? != 0,
        phone_verified: row.try_get::<i64, _>("phone_verified")? != 0,
        login_count: row.try_get("login_count")?,
        last_login_at: row.try_get("last_login_at")?,
    })
}

/// One email as the `emails` column holds it (the Fynd wire shape; fields
/// in the order a JSON object of them is written).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredEmail {
    #[serde(default)]
    active: bool,
    email: String,
    #[serde(default)]
    primary: bool,
    #[serde(default)]
    verified: bool,
}

/// One phone as the `phone_numbers` column holds it (`country_code` is a number).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredPhone {
    #[serde(default)]
    active: bool,
    country_code: u64,
    phone: String,
    #[serde(default)]
    primary: bool,
    #[serde(default)]
    verified: bool,
}

/// A user's contact lists as stored, and what the model derives from them:
/// the lookup keys and the primary contacts.
#[derive(Debug, Clone, Default)]
struct Contacts {
    emails: Vec<StoredEmail>,
    phones: Vec<StoredPhone>,
}

impl Contacts {
    fn of_emails(list: &[EmailEntry]) -> Vec<StoredEmail> {
        list.iter()
            .map(|e| StoredEmail {
                active: e.active,
                email: e.email.as_str().to_string(),
                primary: e.primary,
                verified: e.verified,
            })
            .collect()
    }

    fn of_phones(list: &[PhoneEntry]) -> Vec<StoredPhone> {
        list.iter()
            .map(|p| StoredPhone {
                active: p.active,
                country_code: u64::from(p.phone.country_code),
                phone: p.phone.number.clone(),
                primary: p.primary,
                verified: p.verified,
            })
            .collect()
    }

    fn of(emails: &[EmailEntry], phones: &[PhoneEntry]) -> Contacts {
        Contacts { emails: Self::of_emails(emails), phones: Self::of_phones(phones) }
    }

    /// The lists of a stored row.
    fn parse(emails: &str, phones: &str) -> Result<Contacts, sqlx::Error> {
        let decode = |column: &str, e: serde_json::Error| sqlx::Error::ColumnDecode {
            index: column.to_string(),
            source: Box::new(e),
        };
        Ok(Contacts {
            emails: serde_json::from_str(emails).map_err(|e| decode("emails", e))?,
            phones: serde_json::from_str(phones).map_err(|e| decode("phone_numbers", e))?,
        })
    }

    /// Lookup keys, each once: lower-case emails, `+cc number` phones.
    fn keys(&self) -> Vec<(&'static str, String)> {
        let mut keys: Vec<(&'static str, String)> = Vec::with_capacity(self.emails.len() + self.phones.len());
        let emails = self.emails.iter().map(|e| ("email", e.email.clone()));
        let phones = self.phones.iter().map(|p| ("phone", format!("+{}{}", p.country_code, p.phone)));
        for key in emails.chain(phones) {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys
    }

    /// The primary (else first) email and phone with their verified flags:
    /// `(email, email_verified, phone, phone_verified)`; `""` when none.
    fn primary(&self) -> (String, bool, String, bool) {
        let email = self.emails.iter().find(|e| e.primary).or(self.emails.first());
        let phone = self.phones.iter().find(|p| p.primary).or(self.phones.first());
        (
            email.map(|e| e.email.clone()).unwrap_or_default(),
            email.is_some_and(|e| e.verified),
            phone.map(|p| format!("+{}{}", p.country_code, p.phone)).unwrap_or_default(),
            phone.is_some_and(|p| p.verified),
        )
    }
}

/// The column text of a stored contact list.
fn list_text<T: Serialize>(list: &[T]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

/// The Fynd wire shape of an email list.
pub fn emails_json(list: &[EmailEntry]) -> Value {
    serde_json::to_value(Contacts::of_emails(list)).unwrap_or(Value::Array(Vec::new()))
}

/// The Fynd wire shape of a phone list (`country_code` is a number).
pub fn phones_json(list: &[PhoneEntry]) -> Value {
    serde_json::to_value(Contacts::of_phones(list)).unwrap_or(Value::Array(Vec::new()))
}

#[derive(Debug, Clone, Copy, Default)]
pub struct UsersProjection;

impl Projection for UsersProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["users_v1", "user_contacts_v1", "user_counts_v1", "user_sessions_v1"]
    }

    fn handles(&self, event: &RecordedEvent) -> bool {
        event.stream.starts_with("user-")
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    /// Lists, username and external-id lookups; `apply` finds users by
    /// primary key and contacts by (application, user, value).
    fn read_indexes(&self) -> &'static [&'static str] {
        &["users_v1_list", "users_v1_created", "users_v1_username", "users_v1_external"]
    }

    /// Runs of `user.created` (the bulk of any busy log) are written with
    /// multi-row statements; every other event goes through [`Self::apply`].
    async fn apply_batch(
        &self,
        conn: &mut AnyConnection,
        dialect: Dialect,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let created = |e: &RecordedEvent| e.event_type == codec::USER_CREATED && e.stream.starts_with("user-");
        let mut rest = events;
        while !rest.is_empty() {
            let run = rest.iter().take_while(|e| created(e)).count();
            if run > 0 {
                insert_created(conn, dialect, &rest[..run]).await?;
                rest = &rest[run..];
            } else {
                self.apply(conn, &rest[0]).await?;
                rest = &rest[1..];
            }
        }
        Ok(())
    }

    async fn apply(&self, conn: &mut AnyConnection, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let Some(user_id) = event.stream.strip_prefix("user-") else {
            return Ok(());
        };
        let decoded = userstream_domain::decode(&event.event_type, event.schema as u32, event.data.as_str())
            .map_err(|e| ProjectionError::Poison { position: event.position, reason: e.to_string() })?;
        let app = event.application_id.as_str();
        let at = |t| format_time(t);
        match decoded {
            UserEvent::Created(_) => {
                let dialect = Dialect::of(conn);
                insert_created(conn, dialect, std::slice::from_ref(event)).await?;
            }
            UserEvent::Updated(e) => apply_update(conn, event, user_id, &e).await?,
            UserEvent::Blocked(v1::UserBlocked { at: t, .. }) => {
                if set_flag(conn, event, user_id, "blocked", 1, &at(t)).await? {
                    bump_counts(conn, &event.company_id, app, 0, 1).await?;
                }
            }
            UserEvent::Unblocked(v1::UserUnblocked { at: t, .. }) => {
                if set_flag(conn, event, user_id, "blocked", 0, &at(t)).await? {
                    bump_counts(conn, &event.company_id, app, 0, -1).await?;
                }
            }
            UserEvent::Archived(e) => apply_archived(conn, event, user_id, &e).await?,
            UserEvent::Restored(e) => apply_restored(conn, event, user_id, &e).await?,
            UserEvent::SessionStarted(e) => apply_session_started(conn, event, user_id, &e).await?,
            UserEvent::SessionExtended(e) => apply_session_extended(conn, event, user_id, &e).await?,
            UserEvent::SessionsRevoked(e) => apply_sessions_revoked(conn, event, user_id, &e).await?,
            UserEvent::Erased(_) => apply_erased(conn, event, user_id).await?,
        }
        Ok(())
    }
}
