//! How each user event is written into the read model (inside the runner's
//! batch transaction): multi-row inserts for runs of created users, one
//! statement or a few for every other event, each applied once (versions).

use super::{list_text, Contacts};
use crate::ProjectionError;
use sqlx::any::AnyArguments;
use sqlx::{AnyConnection, Arguments, Row};
use std::collections::BTreeMap;
use userstream_domain::codec::v1;
use userstream_domain::user::UserEvent;
use userstream_eventlog::{format_time, placeholders, Dialect, RecordedEvent};

/// Archiving: the flag, the time, the contacts freed, the counters.
pub(super) async fn apply_archived(
    conn: &mut AnyConnection,
    event: &RecordedEvent,
    user_id: &str,
    e: &v1::UserArchived,
) -> Result<(), sqlx::Error> {
    let app = event.application_id.as_str();
    let at = |t| format_time(t);
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
    Ok(())
}

/// Erasing: the person leaves the read model entirely (row, contacts,
/// sessions); a live one leaves the counters too.
pub(super) async fn apply_erased(
    conn: &mut AnyConnection,
    event: &RecordedEvent,
    user_id: &str,
) -> Result<(), sqlx::Error> {
    let app = event.application_id.as_str();
    let row = sqlx::query("SELECT archived, blocked FROM users_v1 WHERE application_id = $1 AND user_id = $2")
        .bind(app)
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(()) };
    let (archived, blocked): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    delete_contacts(conn, app, user_id).await?;
    for table in ["user_sessions_v1", "users_v1"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE application_id = $1 AND user_id = $2"))
            .bind(app)
            .bind(user_id)
            .execute(&mut *conn)
            .await?;
    }
    if archived == 0 {
        bump_counts(conn, &event.company_id, app, -1, -blocked).await?;
    }
    Ok(())
}

/// Restoring: the flag, the contacts taken back, the counters.
pub(super) async fn apply_restored(
    conn: &mut AnyConnection,
    event: &RecordedEvent,
    user_id: &str,
    e: &v1::UserRestored,
) -> Result<(), sqlx::Error> {
    let app = event.application_id.as_str();
    let at = |t| format_time(t);
    if set_flag(conn, event, user_id, "archived", 0, &at(e.at)).await? {
        let row = sqlx::query("SELECT emails, phone_numbers FROM users_v1 WHERE application_id = $1 AND user_id = $2")
            .bind(app)
            .bind(user_id)
            .fetch_one(&mut *conn)
            .await?;
        let stored = Contacts::parse(&row.try_get::<String, _>(0)?, &row.try_get::<String, _>(1)?)?;
        insert_contacts(conn, app, user_id, &stored.keys()).await?;
        let blocked = blocked_flag(conn, app, user_id).await?;
        bump_counts(conn, &event.company_id, app, 1, blocked).await?;
    }
    Ok(())
}

/// A session: the login counters, its row, and the user's expired ones dropped.
pub(super) async fn apply_session_started(
    conn: &mut AnyConnection,
    event: &RecordedEvent,
    user_id: &str,
    e: &v1::SessionStarted,
) -> Result<(), sqlx::Error> {
    let app = event.application_id.as_str();
    let at = |t| format_time(t);
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
        sqlx::query("DELETE FROM user_sessions_v1 WHERE application_id = $1 AND user_id = $2 AND expires_at <= $3")
            .bind(app)
            .bind(user_id)
            .bind(at(e.at))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

pub(super) async fn apply_session_extended(
    conn: &mut AnyConnection,
    event: &RecordedEvent,
    user_id: &str,
    e: &v1::SessionExtended,
) -> Result<(), sqlx::Error> {
    let app = event.application_id.as_str();
    let at = |t| format_time(t);
    if bump_version(conn, event, user_id).await? {
        sqlx::query("UPDATE user_sessions_v1 SET expires_at = $1 WHERE application_id = $2 AND user_id = $3 AND session_id = $4")
            .bind(at(e.expires_at))
            .bind(app)
            .bind(user_id)
            .bind(&e.session_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

pub(super) async fn apply_sessions_revoked(
    conn: &mut AnyConnection,
    event: &RecordedEvent,
    user_id: &str,
    e: &v1::SessionsRevoked,
) -> Result<(), sqlx::Error> {
    let app = event.application_id.as_str();
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
    Ok(())
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
pub(super) struct CreatedRow<'a> {
    pub event: &'a RecordedEvent,
    pub user_id: &'a str,
    created: v1::UserCreated,
    emails: String,
    phones: String,
    meta: String,
    at: String,
    primary: (String, bool, String, bool),
    keys: Vec<(&'static str, String)>,
}

impl<'a> CreatedRow<'a> {
    pub(super) fn of(event: &'a RecordedEvent) -> Result<CreatedRow<'a>, ProjectionError> {
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

    /// The user row's values, in the order of [`USER_COLUMNS`], and the
    /// contact keys; counted into `counts` per (company, application).
    pub(super) fn cells(self) -> ([Cell<'a>; USER_VALUES], Vec<(&'static str, String)>) {
        let CreatedRow { event, user_id, created: e, emails, phones, meta, at, primary, keys } = self;
        let (email, email_verified, phone, phone_verified) = primary;
        let cells = [
            Cell::Str(event.company_id.as_str()),
            Cell::Str(event.application_id.as_str()),
            Cell::Str(user_id),
            Cell::Int(event.position),
            Cell::Int(event.version),
            Cell::Text(Some(e.username.as_str().to_string())),
            Cell::Text(Some(e.username.key())),
            Cell::Text(e.first_name.map(|n| n.as_str().to_string())),
            Cell::Text(e.last_name.map(|n| n.as_str().to_string())),
            Cell::Text(e.gender.map(|g| g.as_str().to_string())),
            Cell::Text(Some(emails)),
            Cell::Text(Some(phones)),
            Cell::Text(Some(meta)),
            Cell::Text(e.external_id),
            Cell::Text(e.rr_id),
            Cell::Text(Some(e.account_type)),
            Cell::Text(Some(at.clone())),
            Cell::Text(Some(at)),
            Cell::Text(Some(email)),
            Cell::Int(i64::from(email_verified)),
            Cell::Text(Some(phone)),
            Cell::Int(i64::from(phone_verified)),
        ];
        (cells, keys)
    }
}

/// One value of a row to write, bound the same way by sqlx and rusqlite.
pub(super) enum Cell<'a> {
    Str(&'a str),
    Text(Option<String>),
    Int(i64),
}

impl rusqlite::ToSql for Cell<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Cell::Str(s) => s.to_sql(),
            Cell::Text(t) => t.to_sql(),
            Cell::Int(i) => i.to_sql(),
        }
    }
}

/// The columns of a new user's row: [`USER_VALUES`] bound values, then
/// `blocked`, `archived` and `login_count`, which start at 0.
pub(super) const USER_COLUMNS: &str = "company_id, application_id, user_id, seq, version, username, username_key, first_name, last_name, gender, emails, phone_numbers, meta, external_id, rr_id, account_type, created_at, updated_at, email, email_verified, phone, phone_verified, blocked, archived, login_count";
pub(super) const USER_VALUES: usize = 22;

/// Adds `$3` live and `$4` blocked users to the counts of company `$1`, application `$2`.
pub(super) const BUMP_COUNTS: &str = "INSERT INTO user_counts_v1 (company_id, application_id, live, blocked) VALUES ($1, $2, $3, $4)
         ON CONFLICT (company_id, application_id) DO UPDATE SET live = user_counts_v1.live + $3, blocked = user_counts_v1.blocked + $4";

/// Inserts the users of a run of `user.created` events, their contacts and
/// their counts, with multi-row statements of [`ROWS_PER_STATEMENT`] users.
/// The statements of the next chunk are decoded and bound while the
/// database runs the current ones, so neither side waits for the other.
pub(super) async fn insert_created(
    conn: &mut AnyConnection,
    dialect: Dialect,
    run: &[RecordedEvent],
) -> Result<(), ProjectionError> {
    let mut counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    let mut chunks = userstream_eventlog::statement_chunks(run, ROWS_PER_STATEMENT);
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
    let rows = CreatedRow::all(chunk)?;
    let mut users = Statement::new(
        format!(
            "INSERT INTO users_v1 ({USER_COLUMNS}) VALUES {}",
            placeholders(dialect, rows.len(), USER_VALUES, 0).replace(')', ", 0, 0, 0)")
        ),
        rows.len() * USER_VALUES,
    );
    let mut contacts: Vec<(&'a RecordedEvent, &'a str, &'static str, String)> = Vec::with_capacity(rows.len() * 2);
    for row in rows {
        let (event, user_id) = (row.event, row.user_id);
        *counts.entry((event.company_id.as_str(), event.application_id.as_str())).or_default() += 1;
        let (cells, keys) = row.cells();
        for cell in cells {
            match cell {
                Cell::Str(s) => users.bind(s),
                Cell::Text(t) => users.bind(t),
                Cell::Int(i) => users.bind(i),
            };
        }
        contacts.extend(keys.into_iter().map(|(kind, value)| (event, user_id, kind, value)));
    }
    // The first contacts go in the users' statement: one round trip (one
    // command to SQLite's worker thread) per chunk. Numbered placeholders
    // continue after the users' (SQLite's are anonymous and bind in order).
    let users_values = users.arguments.len();
    let mut users = Some(users);
    let mut statements = Vec::with_capacity(1);
    for chunk in userstream_eventlog::statement_chunks(&contacts, ROWS_PER_STATEMENT * 2) {
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
pub(super) async fn set_flag(
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

pub(super) async fn apply_update(
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
pub(super) async fn bump_counts(
    conn: &mut AnyConnection,
    company: &str,
    app: &str,
    live: i64,
    blocked: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(BUMP_COUNTS).bind(company).bind(app).bind(live).bind(blocked).execute(&mut *conn).await?;
    Ok(())
}
