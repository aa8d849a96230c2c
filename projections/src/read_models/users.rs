//! The users read model: one row per user, its emails and phones in a lookup
//! table, and a live-user count per application. Built only from `user.*`
//! events; serves get, list (paged, filtered) and search.

use super::filter::{Field, Filter, SqlBuilder};
use crate::{Projection, ProjectionError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::any::AnyArguments;
use sqlx::{AnyConnection, Arguments, Row};
use std::collections::BTreeMap;
use userstream_domain::codec::{self, v1};
use userstream_domain::user::{EmailEntry, PhoneEntry, UserEvent};
use userstream_eventlog::{format_time, placeholders, Db, Dialect, Migration, RecordedEvent, Tenant};

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
            UserEvent::Archived(e) => {
                if set_flag(conn, event, user_id, "archived", 1, &at(e.at)).await? {
                    sqlx::query("UPDATE users_v1 SET archived_at = $1 WHERE application_id = $2 AND user_id = $3")
                        .bind(at(e.at))
                        .bind(app)
                        .bind(user_id)
                        .execute(&mut *conn)
                        .await?;
                    delete_contacts(conn, app, user_id).await?;
                    let blocked = blocked_flag(conn, app, user_id).await?;
                    bump_counts(conn, &event.company_id, app, -1, -blocked).await?;
                }
            }
            UserEvent::Restored(e) => {
                if set_flag(conn, event, user_id, "archived", 0, &at(e.at)).await? {
                    let row = sqlx::query(
                        "SELECT emails, phone_numbers FROM users_v1 WHERE application_id = $1 AND user_id = $2",
                    )
                    .bind(app)
                    .bind(user_id)
                    .fetch_one(&mut *conn)
                    .await?;
                    let stored = Contacts::parse(&row.try_get::<String, _>(0)?, &row.try_get::<String, _>(1)?)?;
                    insert_contacts(conn, app, user_id, &stored.keys()).await?;
                    let blocked = blocked_flag(conn, app, user_id).await?;
                    bump_counts(conn, &event.company_id, app, 1, blocked).await?;
                }
            }
            UserEvent::SessionStarted(e) => {
                if bump_version(conn, event, user_id).await? {
                    sqlx::query("UPDATE users_v1 SET login_count = login_count + 1, last_login_at = $1 WHERE application_id = $2 AND user_id = $3")
                        .bind(at(e.at))
                        .bind(app)
                        .bind(user_id)
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("INSERT INTO user_sessions_v1 (application_id, user_id, session_id, domain, user_agent, ip, expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                        .bind(app)
                        .bind(user_id)
                        .bind(&e.session_id)
                        .bind(&e.domain)
                        .bind(&e.user_agent)
                        .bind(&e.ip)
                        .bind(at(e.expires_at))
                        .bind(at(e.at))
                        .execute(&mut *conn)
                        .await?;
                    // Expired sessions of this user are dropped at each login,
                    // so the table holds at most the live ones plus a few.
                    sqlx::query(
                        "DELETE FROM user_sessions_v1 WHERE application_id = $1 AND user_id = $2 AND expires_at <= $3",
                    )
                    .bind(app)
                    .bind(user_id)
                    .bind(at(e.at))
                    .execute(&mut *conn)
                    .await?;
                }
            }
            UserEvent::SessionExtended(e) => {
                if bump_version(conn, event, user_id).await? {
                    sqlx::query("UPDATE user_sessions_v1 SET expires_at = $1 WHERE application_id = $2 AND user_id = $3 AND session_id = $4")
                        .bind(at(e.expires_at))
                        .bind(app)
                        .bind(user_id)
                        .bind(&e.session_id)
                        .execute(&mut *conn)
                        .await?;
                }
            }
            UserEvent::SessionsRevoked(e) => {
                if bump_version(conn, event, user_id).await? {
                    for id in &e.session_ids {
                        sqlx::query("DELETE FROM user_sessions_v1 WHERE application_id = $1 AND user_id = $2 AND session_id = $3")
                            .bind(app)
                            .bind(user_id)
                            .bind(id)
                            .execute(&mut *conn)
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Moves the row's version to the event's, if the row is older. Returns
/// whether it did (false means the event was applied already).
async fn bump_version(conn: &mut AnyConnection, event: &RecordedEvent, user_id: &str) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query("UPDATE users_v1 SET version = $1 WHERE application_id = $2 AND user_id = $3 AND version < $1")
            .bind(event.version)
            .bind(&event.application_id)
            .bind(user_id)
            .execute(&mut *conn)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Rows per multi-row statement.
const ROWS_PER_STATEMENT: usize = 200;

/// One `user.created` as the values of the rows it writes.
struct CreatedRow<'a> {
    event: &'a RecordedEvent,
    user_id: &'a str,
    created: v1::UserCreated,
    emails: String,
    phones: String,
    meta: String,
    at: String,
    primary: (String, bool, String, bool),
    keys: Vec<(&'static str, String)>,
}

impl<'a> CreatedRow<'a> {
    fn of(event: &'a RecordedEvent) -> Result<CreatedRow<'a>, ProjectionError> {
        let poison = |reason: String| ProjectionError::Poison { position: event.position, reason };
        let created = match userstream_domain::decode(&event.event_type, event.schema as u32, event.data.as_str()) {
            Ok(UserEvent::Created(created)) => created,
            Ok(_) => return Err(poison(format!("{} is not a user.created", event.event_type))),
            Err(e) => return Err(poison(e.to_string())),
        };
        let contacts = Contacts::of(&created.emails, &created.phone_numbers);
        Ok(CreatedRow {
            event,
            user_id: &event.stream["user-".len()..],
            emails: list_text(&contacts.emails),
            phones: list_text(&contacts.phones),
            meta: created.meta.to_string(),
            at: format_time(created.at),
            primary: contacts.primary(),
            keys: contacts.keys(),
            created,
        })
    }

    fn all(chunk: &'a [RecordedEvent]) -> Result<Vec<CreatedRow<'a>>, ProjectionError> {
        chunk.iter().map(CreatedRow::of).collect()
    }
}

/// Inserts the users of a run of `user.created` events, their contacts and
/// their counts, with multi-row statements of [`ROWS_PER_STATEMENT`] users.
/// The statements of the next chunk are decoded and bound while the
/// database runs the current ones, so neither side waits for the other.
async fn insert_created(
    conn: &mut AnyConnection,
    dialect: Dialect,
    run: &[RecordedEvent],
) -> Result<(), ProjectionError> {
    let mut counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    let mut chunks = run.chunks(ROWS_PER_STATEMENT);
    let Some(first) = chunks.next() else {
        return Ok(());
    };
    let mut statements = created_statements(dialect, first, &mut counts)?;
    loop {
        let next = chunks.next();
        let counts = &mut counts;
        let (written, built) = tokio::join!(run_statements(conn, statements), async move {
            next.map(|chunk| created_statements(dialect, chunk, counts))
        });
        written?;
        match built {
            Some(built) => statements = built?,
            None => break,
        }
    }
    for ((company, app), n) in counts {
        bump_counts(conn, company, app, n, 0).await?;
    }
    Ok(())
}

/// A statement ready to run: its SQL and its bound values.
struct Statement<'a> {
    sql: String,
    arguments: AnyArguments<'a>,
}

impl<'a> Statement<'a> {
    fn new(sql: String, values: usize) -> Self {
        let mut arguments = AnyArguments::default();
        arguments.reserve(values, 0);
        Statement { sql, arguments }
    }

    fn bind<T: 'a + sqlx::Encode<'a, sqlx::Any> + sqlx::Type<sqlx::Any>>(&mut self, value: T) -> &mut Self {
        // Encoding into the Any driver's buffer only stores the value.
        let _ = self.arguments.add(value);
        self
    }
}

async fn run_statements(conn: &mut AnyConnection, statements: Vec<Statement<'_>>) -> Result<(), sqlx::Error> {
    for Statement { sql, arguments } in statements {
        sqlx::query_with(&sql, arguments).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The users rows of one chunk and their contacts, as statements, counting
/// the users per (company, application). A user row that exists already
/// would mean a double apply, which the checkpoint transaction rules out;
/// the insert fails loudly if it happens (and so do the contacts, whose
/// keys are distinct per user).
fn created_statements<'a>(
    dialect: Dialect,
    chunk: &'a [RecordedEvent],
    counts: &mut BTreeMap<(&'a str, &'a str), i64>,
) -> Result<Vec<Statement<'a>>, ProjectionError> {
    const USER_VALUES: usize = 22;
    let rows = CreatedRow::all(chunk)?;
    let mut users = Statement::new(
        format!(
            "INSERT INTO users_v1 (company_id, application_id, user_id, seq, version, username, username_key, first_name, last_name, gender, emails, phone_numbers, meta, external_id, rr_id, account_type, created_at, updated_at, email, email_verified, phone, phone_verified, blocked, archived, login_count) VALUES {}",
            placeholders(dialect, rows.len(), USER_VALUES, 0).replace(')', ", 0, 0, 0)")
        ),
        rows.len() * USER_VALUES,
    );
    let mut contacts: Vec<(&'a RecordedEvent, &'a str, &'static str, String)> = Vec::with_capacity(rows.len() * 2);
    for row in rows {
        let CreatedRow { event, user_id, created: e, emails, phones, meta, at, primary, keys } = row;
        let (email, email_verified, phone, phone_verified) = primary;
        *counts.entry((event.company_id.as_str(), event.application_id.as_str())).or_default() += 1;
        users
            .bind(event.company_id.as_str())
            .bind(event.application_id.as_str())
            .bind(user_id)
            .bind(event.position)
            .bind(event.version)
            .bind(e.username.as_str().to_string())
            .bind(e.username.key())
            .bind(e.first_name.map(|n| n.as_str().to_string()))
            .bind(e.last_name.map(|n| n.as_str().to_string()))
            .bind(e.gender.map(|g| g.as_str()))
            .bind(emails)
            .bind(phones)
            .bind(meta)
            .bind(e.external_id)
            .bind(e.rr_id)
            .bind(e.account_type)
            .bind(at.clone())
            .bind(at)
            .bind(email)
            .bind(i64::from(email_verified))
            .bind(phone)
            .bind(i64::from(phone_verified));
        contacts.extend(keys.into_iter().map(|(kind, value)| (event, user_id, kind, value)));
    }
    // The first contacts go in the users' statement: one round trip (one
    // command to SQLite's worker thread) per chunk. Numbered placeholders
    // continue after the users' (SQLite's are anonymous and bind in order).
    let users_values = users.arguments.len();
    let mut users = Some(users);
    let mut statements = Vec::with_capacity(1);
    for chunk in contacts.chunks(ROWS_PER_STATEMENT * 2) {
        let (mut statement, offset) = match users.take() {
            Some(users) => (users, users_values),
            None => (Statement::new(String::new(), chunk.len() * 4), 0),
        };
        let insert = format!(
            "INSERT INTO user_contacts_v1 (application_id, user_id, kind, value) VALUES {}",
            placeholders(dialect, chunk.len(), 4, offset)
        );
        statement.sql = match (offset, dialect) {
            (0, _) => insert,
            (_, Dialect::Sqlite) => format!("{}; {insert}", statement.sql),
            (_, Dialect::Postgres) => format!("WITH users AS ({}) {insert}", statement.sql),
        };
        for (event, user_id, kind, value) in chunk {
            statement.bind(event.application_id.as_str()).bind(*user_id).bind(*kind).bind(value.clone());
        }
        statements.push(statement);
    }
    statements.extend(users);
    Ok(statements)
}

/// Sets a 0/1 column if the row is older than the event. Returns whether the
/// value changed.
async fn set_flag(
    conn: &mut AnyConnection,
    event: &RecordedEvent,
    user_id: &str,
    column: &str,
    value: i64,
    at: &str,
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "UPDATE users_v1 SET {column} = $1, version = $2, updated_at = $3 WHERE application_id = $4 AND user_id = $5 AND version < $2 AND {column} <> $1"
    );
    let done = sqlx::query(&sql)
        .bind(value)
        .bind(event.version)
        .bind(at)
        .bind(&event.application_id)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

async fn apply_update(
    conn: &mut AnyConnection,
    event: &RecordedEvent,
    user_id: &str,
    e: &v1::UserUpdated,
) -> Result<(), sqlx::Error> {
    let mut sets: Vec<(&str, Option<String>)> = vec![("updated_at", Some(format_time(e.at)))];
    if let Some(v) = &e.first_name {
        sets.push(("first_name", Some(v.as_str().to_string())));
    }
    if let Some(v) = &e.last_name {
        sets.push(("last_name", Some(v.as_str().to_string())));
    }
    if let Some(v) = e.gender {
        sets.push(("gender", Some(v.as_str().to_string())));
    }
    if let Some(v) = &e.meta {
        sets.push(("meta", Some(v.to_string())));
    }
    if let Some(v) = &e.external_id {
        sets.push(("external_id", Some(v.clone())));
    }
    if let Some(v) = &e.rr_id {
        sets.push(("rr_id", Some(v.clone())));
    }
    let changed = e.emails.is_some() || e.phone_numbers.is_some();
    if let Some(list) = &e.emails {
        sets.push(("emails", Some(list_text(&Contacts::of_emails(list)))));
    }
    if let Some(list) = &e.phone_numbers {
        sets.push(("phone_numbers", Some(list_text(&Contacts::of_phones(list)))));
    }
    let assignments: Vec<String> = sets.iter().enumerate().map(|(i, (c, _))| format!("{c} = ${}", i + 1)).collect();
    let n = sets.len();
    let sql = format!(
        "UPDATE users_v1 SET {}, version = ${} WHERE application_id = ${} AND user_id = ${} AND version < ${}",
        assignments.join(", "),
        n + 1,
        n + 2,
        n + 3,
        n + 1
    );
    let mut query = sqlx::query(&sql);
    for (_, v) in sets {
        query = query.bind(v);
    }
    let done = query.bind(event.version).bind(&event.application_id).bind(user_id).execute(&mut *conn).await?;
    if done.rows_affected() == 1 && changed {
        let row = sqlx::query(
            "SELECT emails, phone_numbers, archived FROM users_v1 WHERE application_id = $1 AND user_id = $2",
        )
        .bind(&event.application_id)
        .bind(user_id)
        .fetch_one(&mut *conn)
        .await?;
        let stored =
            Contacts::parse(&row.try_get::<String, _>("emails")?, &row.try_get::<String, _>("phone_numbers")?)?;
        let (email, email_verified, phone, phone_verified) = stored.primary();
        sqlx::query("UPDATE users_v1 SET email = $1, email_verified = $2, phone = $3, phone_verified = $4 WHERE application_id = $5 AND user_id = $6")
            .bind(email)
            .bind(i64::from(email_verified))
            .bind(phone)
            .bind(i64::from(phone_verified))
            .bind(&event.application_id)
            .bind(user_id)
            .execute(&mut *conn)
            .await?;
        if row.try_get::<i64, _>("archived")? == 0 {
            delete_contacts(conn, &event.application_id, user_id).await?;
            insert_contacts(conn, &event.application_id, user_id, &stored.keys()).await?;
        }
    }
    Ok(())
}

async fn insert_contacts(
    conn: &mut AnyConnection,
    app: &str,
    user_id: &str,
    keys: &[(&'static str, String)],
) -> Result<(), sqlx::Error> {
    for (kind, value) in keys {
        sqlx::query("INSERT INTO user_contacts_v1 (application_id, kind, value, user_id) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(app)
            .bind(*kind)
            .bind(value)
            .bind(user_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn delete_contacts(conn: &mut AnyConnection, app: &str, user_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM user_contacts_v1 WHERE application_id = $1 AND user_id = $2")
        .bind(app)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// 1 if the user's row says blocked, else 0.
async fn blocked_flag(conn: &mut AnyConnection, app: &str, user_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar::<_, i64>("SELECT blocked FROM users_v1 WHERE application_id = $1 AND user_id = $2")
        .bind(app)
        .bind(user_id)
        .fetch_one(&mut *conn)
        .await
}

/// Adds to the live and the live-and-blocked counts of an application.
async fn bump_counts(
    conn: &mut AnyConnection,
    company: &str,
    app: &str,
    live: i64,
    blocked: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO user_counts_v1 (company_id, application_id, live, blocked) VALUES ($1, $2, $3, $4)
         ON CONFLICT (company_id, application_id) DO UPDATE SET live = user_counts_v1.live + $3, blocked = user_counts_v1.blocked + $4",
    )
    .bind(company)
    .bind(app)
    .bind(live)
    .bind(blocked)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Queries over the users read model. Archived users are never returned.
#[derive(Clone)]
pub struct UsersQuery {
    db: Db,
}

/// One active session as the read model holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    pub session_id: String,
    pub domain: String,
    pub user_agent: String,
    pub ip: String,
    pub expires_at: String,
    pub created_at: String,
}

/// The most users one search returns.
pub const MAX_SEARCH_RESULTS: usize = 100;

/// The largest page a list may ask for.
pub const MAX_PAGE_SIZE: i64 = 500;

impl UsersQuery {
    pub fn new(db: Db) -> Self {
        UsersQuery { db }
    }

    pub async fn get(&self, tenant: &Tenant, user_id: &str) -> Result<Option<UserRow>, sqlx::Error> {
        Ok(self.by_ids(tenant, &[user_id.to_lowercase()]).await?.pop())
    }

    /// Live users of the tenant among `ids`. The statement names only the
    /// primary key, so its plan is a key lookup however stale the planner's
    /// statistics are; tenant and archive state are checked on the rows.
    pub async fn by_ids(&self, tenant: &Tenant, ids: &[String]) -> Result<Vec<UserRow>, sqlx::Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT {COLUMNS} FROM users_v1 u WHERE u.application_id = $1 AND u.user_id IN ({})",
            list.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(&tenant.application_id);
        for id in ids {
            query = query.bind(id.as_str());
        }
        let rows = query.fetch_all(&self.db.pool).await?;
        let mut users = Vec::with_capacity(rows.len());
        for row in &rows {
            let user = decode_row(row)?;
            if user.company_id == tenant.company_id && !user.archived {
                users.push(user);
            }
        }
        Ok(users)
    }

    /// The sessions of a user still valid at `now` (RFC 3339 text), newest first.
    pub async fn sessions(&self, tenant: &Tenant, user_id: &str, now: &str) -> Result<Vec<SessionRow>, sqlx::Error> {
        let rows = sqlx::query("SELECT s.session_id, s.domain, s.user_agent, s.ip, s.expires_at, s.created_at FROM user_sessions_v1 s JOIN users_v1 u ON u.application_id = s.application_id AND u.user_id = s.user_id WHERE s.application_id = $1 AND s.user_id = $2 AND u.company_id = $3 AND s.expires_at > $4 ORDER BY s.created_at DESC")
            .bind(&tenant.application_id)
            .bind(user_id)
            .bind(&tenant.company_id)
            .bind(now)
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SessionRow {
                    session_id: r.try_get("session_id")?,
                    domain: r.try_get("domain")?,
                    user_agent: r.try_get("user_agent")?,
                    ip: r.try_get("ip")?,
                    expires_at: r.try_get("expires_at")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Up to `limit` live user ids of the tenant in id order, after `after`.
    pub async fn ids_after(
        &self,
        tenant: &Tenant,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<String>, sqlx::Error> {
        let sql = format!(
            "SELECT user_id FROM users_v1 WHERE application_id = $1 AND company_id = $2 AND archived = 0 AND user_id > $3 ORDER BY user_id LIMIT {limit}"
        );
        sqlx::query_scalar::<_, String>(&sql)
            .bind(&tenant.application_id)
            .bind(&tenant.company_id)
            .bind(after.unwrap_or(""))
            .fetch_all(&self.db.pool)
            .await
    }

    /// A page of users, newest first, and the number of users matching.
    pub async fn list(
        &self,
        tenant: &Tenant,
        filter: Option<&Filter>,
        page_no: i64,
        page_size: i64,
    ) -> Result<(Vec<UserRow>, i64), sqlx::Error> {
        let offset = (page_no.max(1) - 1) * page_size;
        let mut cond = SqlBuilder::starting_after(4);
        if let Some(f) = filter {
            cond.sql.push_str(" AND ");
            f.to_sql(&mut cond);
        }
        let sql = format!(
            "SELECT {COLUMNS} FROM users_v1 u WHERE u.company_id = $1 AND u.application_id = $2 AND u.archived = 0{} ORDER BY u.seq DESC LIMIT $3 OFFSET $4",
            cond.sql
        );
        let mut query =
            sqlx::query(&sql).bind(&tenant.company_id).bind(&tenant.application_id).bind(page_size).bind(offset);
        for b in &cond.binds {
            query = query.bind(b.as_str());
        }
        let rows = query.fetch_all(&self.db.pool).await?;
        let items = rows.iter().map(decode_row).collect::<Result<Vec<_>, _>>()?;
        let total = if filter.is_none() {
            sqlx::query_scalar::<_, i64>(
                "SELECT live FROM user_counts_v1 WHERE company_id = $1 AND application_id = $2",
            )
            .bind(&tenant.company_id)
            .bind(&tenant.application_id)
            .fetch_optional(&self.db.pool)
            .await?
            .unwrap_or(0)
        } else {
            let mut cond = SqlBuilder::starting_after(2);
            cond.sql.push_str(" AND ");
            if let Some(f) = filter {
                f.to_sql(&mut cond);
            }
            let sql = format!(
                "SELECT COUNT(*) FROM users_v1 u WHERE u.company_id = $1 AND u.application_id = $2 AND u.archived = 0{}",
                cond.sql
            );
            let mut query = sqlx::query_scalar::<_, i64>(&sql).bind(&tenant.company_id).bind(&tenant.application_id);
            for b in &cond.binds {
                query = query.bind(b.as_str());
            }
            query.fetch_one(&self.db.pool).await?
        };
        Ok((items, total))
    }

    /// Users matching any of `terms`, each an id, email, phone, username or
    /// external id (exact; emails and usernames case-insensitively). Every
    /// lookup uses an index.
    pub async fn search(&self, tenant: &Tenant, terms: &[String]) -> Result<Vec<UserRow>, sqlx::Error> {
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let mut b = SqlBuilder::starting_after(1);
        let lists: Vec<(Field, Vec<String>)> =
            [Field::UserId, Field::Email, Field::Phone, Field::Username, Field::ExternalId]
                .into_iter()
                .map(|f| (f, terms.iter().map(|t| super::filter::normalise(f, t)).collect()))
                .collect();
        let mut parts = Vec::new();
        for (field, values) in &lists {
            let mut s = SqlBuilder::starting_after(1 + b.binds.len());
            let head = match field {
                Field::Email => {
                    "SELECT user_id FROM user_contacts_v1 WHERE application_id = $1 AND kind = 'email' AND value IN ("
                }
                Field::Phone => {
                    "SELECT user_id FROM user_contacts_v1 WHERE application_id = $1 AND kind = 'phone' AND value IN ("
                }
                Field::UserId => "SELECT user_id FROM users_v1 WHERE application_id = $1 AND user_id IN (",
                Field::Username => "SELECT user_id FROM users_v1 WHERE application_id = $1 AND username_key IN (",
                _ => "SELECT user_id FROM users_v1 WHERE application_id = $1 AND external_id IN (",
            };
            s.sql.push_str(head);
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    s.sql.push_str(", ");
                }
                s.bind(v.clone());
            }
            s.sql.push(')');
            parts.push(s.sql);
            b.binds.extend(s.binds);
        }
        // First the matching ids (index lookups only), then their rows by
        // primary key: two statements whose plans cannot go wrong, whatever
        // the planner believes about table sizes.
        let sql = format!("SELECT user_id FROM ({}) m", parts.join(" UNION "));
        let mut query = sqlx::query_scalar::<_, String>(&sql).bind(&tenant.application_id);
        for v in &b.binds {
            query = query.bind(v.as_str());
        }
        let mut ids = query.fetch_all(&self.db.pool).await?;
        ids.truncate(MAX_SEARCH_RESULTS);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut users = self.by_ids(tenant, &ids).await?;
        users.sort_by(|a, b| (&b.created_at, &b.user_id).cmp(&(&a.created_at, &a.user_id)));
        Ok(users)
    }
}
