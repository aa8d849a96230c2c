//! The userstream event log.
//!
//! Modules: this file (the [`EventLog`] trait, envelopes, reads, the SQL
//! log), `writer` (the group-commit writer: its pure judging, and its
//! statements through sqlx for PostgreSQL), `sqlite_writer` (the same
//! writer on SQLite: a thread of its own with a rusqlite connection),
//! [`inline`] (read models the SQLite writer applies in its transaction),
//! `db` (one handle for SQLite and PostgreSQL, migrations), [`keys`]
//! (credential rows and shared secrets), [`lease`] (one worker per name
//! across processes), [`metric`] (the names of what the writer records),
//! `recent` (the last events in memory), `kurrent` (the log on KurrentDB, feature
//! `eventstore`), [`shred`] (personal fields sealed per subject, and
//! erasure by destroying the subject's key). It knows envelopes and JSON,
//! not the domain: which fields are personal is a [`shred::Policy`] handed in.
//!
//! Guarantees, for both backends:
//! - **Atomic appends**: one [`AppendRequest`] (many events, many streams,
//!   uniqueness reservations, an idempotency key) commits entirely or not at all.
//! - **Optimistic concurrency** per stream through [`ExpectedVersion`].
//! - **Idempotency**: a request whose key was seen before appends nothing and
//!   gets the first result back.
//! - **Positions in commit order, no reader ever skips**: see [`SqlEventLog`].
//! - **Acknowledged = durable**: `append` answers only after the commit that
//!   holds the request is on disk (SQLite `synchronous=FULL` in WAL mode,
//!   PostgreSQL `synchronous_commit` as configured, `on` by default).
//! - **Group commit**: concurrent appends queue for one writer, which commits
//!   everything queued in one transaction, so a busy log pays one fsync per
//!   batch rather than one per command.

mod db;
pub mod inline;
pub mod keys;
#[cfg(feature = "eventstore")]
pub mod kurrent;
pub mod lease;
pub mod metric;
mod recent;
pub mod shred;
mod sqlite_writer;
mod writer;

pub use db::{sqlite_file, Db, Dialect, Migration};
pub use writer::{delete_pairs, statement_chunks, tuples as placeholders, Stats};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::any::AnyArguments;
use sqlx::{Arguments, Row};
use std::future::Future;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

/// The owner of every record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tenant {
    pub company_id: String,
    pub application_id: String,
}

impl Tenant {
    /// The scope of uniqueness reservations and idempotency keys.
    pub fn scope(&self) -> String {
        format!("{}/{}", self.company_id, self.application_id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last version must be exactly this.
    Exact(i64),
}

#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema: i64,
    pub occurred_at: OffsetDateTime,
    pub data: Value,
}

#[derive(Debug, Clone)]
pub struct StreamAppend {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// A unique value (`email:a@b.c`) claimed by a stream within the request's tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub key: String,
    pub stream: String,
}

#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub tenant: Tenant,
    pub actor: String,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub streams: Vec<StreamAppend>,
    /// Claimed in the same transaction; a key held by another stream fails the request.
    pub reserve: Vec<Reservation>,
    /// Released in the same transaction (archiving, changed emails …).
    pub release: Vec<Reservation>,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    /// Position of the last event appended (or, when nothing was appended, 0).
    pub last_position: i64,
    /// Each stream with its version after the append.
    pub streams: Vec<(String, i64)>,
    /// True when the idempotency key was seen before and this is the first result.
    #[serde(default)]
    pub replayed: bool,
}

/// Why an append did not happen. Rejections leave the log untouched.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("stream {stream} is at version {actual}, expected {expected:?}")]
    Conflict { stream: String, expected: ExpectedVersion, actual: i64 },
    #[error("{key} is already taken")]
    Reserved { key: String },
    #[error("the event log is shut down")]
    Closed,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sqlx::Error> for AppendError {
    fn from(e: sqlx::Error) -> Self {
        AppendError::Storage(e.into())
    }
}

/// The storage behind the log failed: a connection dropped, a disk filled, a
/// stored row did not decode. Opaque on purpose: no backend's error type is
/// part of the [`EventLog`] contract, so another backend can implement it;
/// callers answer 5xx and log the cause this carries. Cheap to clone, so one
/// failed batch can be reported to every request in it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("event log storage failed: {0}")]
pub struct StorageError(std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl StorageError {
    pub fn new(cause: impl std::error::Error + Send + Sync + 'static) -> StorageError {
        StorageError(std::sync::Arc::new(cause))
    }

    /// The cause and its sources, outermost first.
    fn causes(&self) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
        std::iter::successors(Some(self.0.as_ref() as &(dyn std::error::Error + 'static)), |e| e.source())
    }

    /// The database ran out of space (SQLite `SQLITE_FULL`, PostgreSQL
    /// `53100 disk_full`, or an I/O error saying so): nothing was written,
    /// and the same request may succeed once space returns.
    pub fn is_storage_full(&self) -> bool {
        self.causes().any(|e| match e.downcast_ref::<sqlx::Error>() {
            // SQLite reports the primary code 13 (SQLITE_FULL) or an extended one of it.
            Some(sqlx::Error::Database(db)) => {
                let code = db.code().unwrap_or_default();
                code == "53100" || code.parse::<i64>().is_ok_and(|c| c & 0xff == 13)
            }
            _ => match e.downcast_ref::<rusqlite::Error>() {
                Some(rusqlite::Error::SqliteFailure(failure, _)) => failure.code == rusqlite::ErrorCode::DiskFull,
                _ => e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull),
            },
        })
    }

    /// The database could not be reached or went away mid-request (a lost
    /// connection, a server restarting, no connection free in time): the
    /// request may or may not have committed if it was a commit that broke,
    /// and the same request may succeed shortly.
    pub fn is_unavailable(&self) -> bool {
        self.causes().any(|e| match e.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) => true,
            // Class 08: connection exception; 57P01-57P03: shutdown, crash, starting up.
            Some(sqlx::Error::Database(db)) => {
                let code = db.code().unwrap_or_default();
                code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03")
            }
            _ => false,
        })
    }
}

impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        StorageError::new(e)
    }
}

/// An event as stored, with its envelope. The fields are in the order of
/// the log's columns: a SQLite read deserialises each event from a JSON
/// array of them (see `sqlite_events_query`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub position: i64,
    pub event_id: String,
    pub stream: String,
    pub version: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
    pub company_id: String,
    pub application_id: String,
    pub actor: String,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub data: EventData,
}

/// An event's payload as the log stores it: JSON text, parsed only by the
/// reader that needs it, into the shape it needs (a projection decodes its
/// typed event straight from the text; the feed and NATS pass it on as is).
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventData(Box<serde_json::value::RawValue>);

impl EventData {
    /// The payload of `text`; fails if it is not JSON.
    pub fn from_text(text: String) -> Result<EventData, serde_json::Error> {
        serde_json::value::RawValue::from_string(text).map(EventData)
    }

    pub fn from_value(value: &Value) -> EventData {
        // A Value always serialises, and its text is always JSON.
        Self::from_text(value.to_string()).unwrap_or_else(|_| Self::null())
    }

    fn null() -> EventData {
        EventData(serde_json::value::RawValue::NULL.to_owned())
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The payload as a JSON tree.
    pub fn value(&self) -> Value {
        serde_json::from_str(self.as_str()).unwrap_or(Value::Null)
    }
}

/// Payloads are equal when their texts are: the log hands back exactly the
/// text it stored.
impl PartialEq for EventData {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl std::fmt::Debug for EventData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What every event-log backend offers. The contract tests in
/// `tests/eventlog_contract.rs` hold each implementation to it.
pub trait EventLog: Send + Sync {
    fn append(&self, request: AppendRequest) -> impl Future<Output = Result<AppendResult, AppendError>> + Send;
    /// Events with `position > after`, in position order, at most `limit`.
    fn read_all(&self, after: i64, limit: i64)
        -> impl Future<Output = Result<Vec<RecordedEvent>, StorageError>> + Send;
    /// A stream's events in version order.
    fn read_stream(&self, stream: &str) -> impl Future<Output = Result<Vec<RecordedEvent>, StorageError>> + Send;
    /// The highest committed position (0 for an empty log).
    fn head(&self) -> impl Future<Output = Result<i64, StorageError>> + Send;
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sqlite: "
        CREATE TABLE IF NOT EXISTS events (
            position INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL UNIQUE,
            stream TEXT NOT NULL,
            version INTEGER NOT NULL,
            event_type TEXT NOT NULL,
            schema_version INTEGER NOT NULL,
            occurred_at TEXT NOT NULL,
            recorded_at TEXT NOT NULL,
            company_id TEXT NOT NULL,
            application_id TEXT NOT NULL,
            actor TEXT NOT NULL,
            correlation_id TEXT NOT NULL,
            causation_id TEXT,
            data TEXT NOT NULL,
            UNIQUE (stream, version)
        );
        CREATE TABLE IF NOT EXISTS reservations (
            scope TEXT NOT NULL, key TEXT NOT NULL, stream TEXT NOT NULL, PRIMARY KEY (scope, key)
        );
        CREATE TABLE IF NOT EXISTS idempotency (
            scope TEXT NOT NULL, key TEXT NOT NULL, result TEXT NOT NULL, PRIMARY KEY (scope, key)
        );",
        postgres: "
        CREATE TABLE IF NOT EXISTS events (
            position BIGSERIAL PRIMARY KEY,
            event_id TEXT NOT NULL UNIQUE,
            stream TEXT NOT NULL,
            version BIGINT NOT NULL,
            event_type TEXT NOT NULL,
            schema_version BIGINT NOT NULL,
            occurred_at TEXT NOT NULL,
            recorded_at TEXT NOT NULL,
            company_id TEXT NOT NULL,
            application_id TEXT NOT NULL,
            actor TEXT NOT NULL,
            correlation_id TEXT NOT NULL,
            causation_id TEXT,
            data TEXT NOT NULL,
            UNIQUE (stream, version)
        );
        CREATE TABLE IF NOT EXISTS reservations (
            scope TEXT NOT NULL, key TEXT NOT NULL, stream TEXT NOT NULL, PRIMARY KEY (scope, key)
        );
        CREATE TABLE IF NOT EXISTS idempotency (
            scope TEXT NOT NULL, key TEXT NOT NULL, result TEXT NOT NULL, PRIMARY KEY (scope, key)
        );",
    },
    // The tenant feed (`…/events`) reads one application's events in position order.
    Migration {
        version: 2,
        sqlite: "CREATE INDEX IF NOT EXISTS events_by_tenant ON events (company_id, application_id, position)",
        postgres: "CREATE INDEX IF NOT EXISTS events_by_tenant ON events (company_id, application_id, position)",
    },
    // On SQLite, tables looked up only by their primary key keep their rows
    // in it (`WITHOUT ROWID`): one b-tree per table instead of two, so each
    // reservation is written (and stored) once. PostgreSQL has no rowid.
    Migration {
        version: 3,
        sqlite: "
        CREATE TABLE reservations__new (
            scope TEXT NOT NULL, key TEXT NOT NULL, stream TEXT NOT NULL, PRIMARY KEY (scope, key)
        ) WITHOUT ROWID;
        INSERT INTO reservations__new (scope, key, stream) SELECT scope, key, stream FROM reservations;
        DROP TABLE reservations;
        ALTER TABLE reservations__new RENAME TO reservations;
        CREATE TABLE idempotency__new (
            scope TEXT NOT NULL, key TEXT NOT NULL, result TEXT NOT NULL, PRIMARY KEY (scope, key)
        ) WITHOUT ROWID;
        INSERT INTO idempotency__new (scope, key, result) SELECT scope, key, result FROM idempotency;
        DROP TABLE idempotency;
        ALTER TABLE idempotency__new RENAME TO idempotency;",
        postgres: "SELECT 1",
    },
];

/// The SQL event log, on SQLite or PostgreSQL.
///
/// # Why no reader ever skips an event
///
/// A reader asks for `position > checkpoint` and moves its checkpoint to the
/// last position it saw. That is safe only if, whenever position `p` is
/// visible, every position below `p` that will ever commit is visible too.
/// Positions come from an auto-increment column, so that needs position order
/// to equal commit order:
/// - **SQLite** allows one write transaction at a time (`BEGIN IMMEDIATE`),
///   so positions are taken and committed strictly one transaction after the other.
/// - **PostgreSQL** lets transactions commit in any order, so a transaction
///   that took position 7 could commit after one that took 8, and a reader
///   polling in between would pass 7 forever. Every append transaction
///   therefore takes `pg_advisory_xact_lock(POSITION_LOCK)` before it takes a
///   position. PostgreSQL makes a transaction's commit visible before it
///   releases its locks, so the next appender can only take positions after
///   the previous one is visible. Readers take no lock. Within one process the
///   group-commit writer already serialises appends; the lock extends the
///   guarantee to several processes on one database.
///
/// A rolled-back transaction leaves a gap in positions, never a late arrival.
#[derive(Clone)]
pub struct SqlEventLog {
    db: Db,
    queue: mpsc::Sender<writer::Pending>,
    head: watch::Receiver<i64>,
    stats: std::sync::Arc<Stats>,
    /// The events this process committed last, for readers at the head.
    recent: std::sync::Arc<recent::Recent>,
    /// Seals personal fields on append and opens them on read; `None`
    /// stores and reads payloads as they are.
    shredder: Option<std::sync::Arc<shred::Shredder>>,
    /// The read model the SQLite writer applies in its own transaction, once set.
    inline: InlineSlot,
}

/// Where [`SqlEventLog::set_inline`] puts the inline projection for the writer.
pub(crate) type InlineSlot = std::sync::Arc<std::sync::OnceLock<std::sync::Arc<dyn inline::Inline>>>;

/// The advisory lock key that serialises position assignment on PostgreSQL.
pub const POSITION_LOCK: i64 = 7_320_002;

const EVENT_COLUMNS: &str = "position, event_id, stream, version, event_type, schema_version, occurred_at, recorded_at, company_id, application_id, actor, correlation_id, causation_id, data";

/// On SQLite, events are read as one JSON array per query, each event an
/// array of [`EVENT_COLUMNS`] in order (a [`RecordedEvent`] deserialises from
/// it), built by the database. A read of thousands of events is then one
/// value to fetch, not thousands of rows of fourteen values each: the SQLite
/// driver copies every value and hands every row across threads, and that
/// was most of a replay's read time. The payload is spliced in as the stored
/// text (it is JSON) after `json_array` of the other columns, whose closing
/// bracket `rtrim` drops (its last element is a string or null), so SQLite
/// neither parses nor quotes it and it comes back byte for byte. `rest`
/// follows `FROM events`; the array's order is not guaranteed, so
/// [`decode_events`] restores it. (On PostgreSQL rows are cheap to read and
/// building the text costs the server three times a plain select, so it
/// reads rows.)
fn sqlite_events_query(rest: &str) -> String {
    let columns = EVENT_COLUMNS.strip_suffix(", data").unwrap_or(EVENT_COLUMNS);
    format!(
        "SELECT '[' || coalesce(group_concat(rtrim(json_array({columns}), ']') || ',' || data || ']', ','), '') || ']' \
         FROM (SELECT * FROM events {rest})"
    )
}

/// How a read orders its events.
#[derive(Clone, Copy)]
enum Order {
    Position,
    Version,
}

fn decode_events(text: &str, order: Order) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    let mut events: Vec<RecordedEvent> = serde_json::from_str(text)
        .map_err(|e| sqlx::Error::ColumnDecode { index: "events".into(), source: Box::new(e) })?;
    // Already in order in practice; a stable sort of a sorted list is one pass.
    match order {
        Order::Position => events.sort_by_key(|e| e.position),
        Order::Version => events.sort_by_key(|e| e.version),
    }
    Ok(events)
}

impl SqlEventLog {
    /// Migrates the log's tables and starts its writer. Appends through this
    /// handle (and its clones) are group-committed by that one writer.
    pub async fn open(db: Db) -> Result<SqlEventLog, sqlx::Error> {
        db.migrate("eventlog", MIGRATIONS).await?;
        let head_now = head_position(&db).await?;
        let head_tx = std::sync::Arc::new(watch::channel(head_now).0);
        let head = head_tx.subscribe();
        let (queue, rx) = mpsc::channel(4096);
        let stats = std::sync::Arc::new(Stats::default());
        if db.dialect == Dialect::Postgres {
            tokio::spawn(listen_for_appends(db.clone(), head_tx.clone()));
        }
        let recent = std::sync::Arc::new(recent::Recent::new(recent::CAPACITY, recent::CAPACITY_BYTES));
        let inline = InlineSlot::default();
        match db.sqlite_file() {
            Some(file) => {
                let shared = sqlite_writer::Shared {
                    gate: db.write_gate(),
                    head: head_tx,
                    stats: stats.clone(),
                    recent: recent.clone(),
                    inline: inline.clone(),
                };
                sqlite_writer::spawn(file, rx, shared).map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))?;
            }
            None => {
                let conn = db.dedicated_connection().await?;
                tokio::spawn(writer::run(db.clone(), conn, rx, head_tx, stats.clone(), recent.clone()));
            }
        }
        Ok(SqlEventLog { db, queue, head, stats, recent, shredder: None, inline })
    }

    /// Has the SQLite writer apply `projection` in each append's own
    /// transaction from now on (see [`inline`]); its checkpoint row must
    /// exist. Returns false, changing nothing, on PostgreSQL (several
    /// processes write there, and the read models follow asynchronously)
    /// or when one is set already.
    pub fn set_inline(&self, projection: std::sync::Arc<dyn inline::Inline>) -> bool {
        self.db.sqlite_file().is_some() && self.inline.set(projection).is_ok()
    }

    /// This log, sealing personal fields under their subjects' keys on
    /// append and opening them on every read.
    pub fn with_shredder(mut self, shredder: std::sync::Arc<shred::Shredder>) -> SqlEventLog {
        self.shredder = Some(shredder);
        self
    }

    pub fn shredder(&self) -> Option<&std::sync::Arc<shred::Shredder>> {
        self.shredder.as_ref()
    }

    /// `events` as readers see them: sealed fields opened (or erased).
    async fn opened(&self, mut events: Vec<RecordedEvent>) -> Result<Vec<RecordedEvent>, StorageError> {
        if let Some(shredder) = &self.shredder {
            shredder.open_events(&mut events).await?;
        }
        Ok(events)
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// How many transactions the writer used for how many requests.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Changes whenever this process commits an append, and on PostgreSQL
    /// whenever another process does (it notifies `userstream_log`); carries
    /// the new head. Notifications can be missed while reconnecting, so
    /// readers still poll [`EventLog::head`] now and then.
    pub fn watch_head(&self) -> watch::Receiver<i64> {
        self.head.clone()
    }

    /// The stream that holds the unique value `key` (`email:a@b.c`) in the
    /// tenant, if any.
    pub async fn holder(&self, tenant: &Tenant, key: &str) -> Result<Option<String>, StorageError> {
        Ok(sqlx::query_scalar("SELECT stream FROM reservations WHERE scope = $1 AND key = $2")
            .bind(tenant.scope())
            .bind(key)
            .fetch_optional(&self.db.pool)
            .await?)
    }

    /// Performs `request` in a transaction of its own and keeps that
    /// transaction open until [`HeldAppend::commit`]. Exists so tests can put
    /// a slow transaction beside the writer; production code uses `append`.
    #[doc(hidden)]
    pub async fn append_held(&self, request: AppendRequest) -> Result<HeldAppend, AppendError> {
        let mut conn = self.db.dedicated_connection().await?;
        writer::begin(&self.db, &mut conn).await?;
        let (mut results, _) = writer::write_batch(&mut conn, self.db.dialect, &[&request]).await?;
        let result = results.pop().ok_or(AppendError::Closed)??;
        Ok(HeldAppend { conn, result })
    }
}

/// An append whose transaction is still open (tests only).
pub struct HeldAppend {
    conn: sqlx::AnyConnection,
    pub result: AppendResult,
}

impl HeldAppend {
    pub async fn commit(mut self) -> Result<AppendResult, sqlx::Error> {
        sqlx::Executor::execute(&mut self.conn, "COMMIT").await?;
        Ok(self.result)
    }
}

/// The PostgreSQL channel the writer notifies after every commit.
pub const APPEND_CHANNEL: &str = "userstream_log";

/// Moves `head` when any process on the database commits an append.
async fn listen_for_appends(db: Db, head: std::sync::Arc<watch::Sender<i64>>) {
    loop {
        let listener = async {
            let mut listener = sqlx::postgres::PgListener::connect(db.url()).await?;
            listener.listen(APPEND_CHANNEL).await?;
            loop {
                let note = listener.recv().await?;
                if let Ok(top) = note.payload().parse::<i64>() {
                    head.send_if_modified(|h| std::mem::replace(h, (*h).max(top)) < top);
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            _ = head.closed() => return,
            outcome = listener => {
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, "append listener failed; reconnecting");
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Which of a tenant's events a feed reader wants.
#[derive(Debug, Clone, Default)]
pub struct FeedFilter {
    /// Event types; a name ending in `.*` matches every type with that prefix
    /// (`user.*`). Empty: every type.
    pub types: Vec<String>,
}

impl SqlEventLog {
    /// The tenant's events with `position > after`, in position order, at most `limit`.
    pub async fn read_tenant(
        &self,
        tenant: &Tenant,
        after: i64,
        limit: i64,
        filter: &FeedFilter,
    ) -> Result<Vec<RecordedEvent>, StorageError> {
        let mut sql = "WHERE company_id = $1 AND application_id = $2 AND position > $3".to_string();
        let mut binds: Vec<String> = Vec::new();
        if !filter.types.is_empty() {
            let clauses: Vec<String> = filter
                .types
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let n = i + 5;
                    match t.strip_suffix('*') {
                        Some(prefix) => {
                            binds.push(format!("{}%", prefix.replace('%', "").replace('_', "\\_")));
                            format!("event_type LIKE ${n} ESCAPE '\\'")
                        }
                        None => {
                            binds.push(t.clone());
                            format!("event_type = ${n}")
                        }
                    }
                })
                .collect();
            sql.push_str(&format!(" AND ({})", clauses.join(" OR ")));
        }
        sql.push_str(" ORDER BY position LIMIT $4");
        let mut args = vec![
            Bind::Text(&tenant.company_id),
            Bind::Text(&tenant.application_id),
            Bind::Int(after),
            Bind::Int(limit),
        ];
        args.extend(binds.iter().map(|b| Bind::Text(b)));
        let events = self.read_events(&sql, Order::Position, &args).await?;
        self.opened(events).await
    }

    /// A stream's events up to `position` (inclusive), in version order.
    pub async fn read_stream_until(&self, stream: &str, position: i64) -> Result<Vec<RecordedEvent>, StorageError> {
        let args = [Bind::Text(stream), Bind::Int(position)];
        let events =
            self.read_events("WHERE stream = $1 AND position <= $2 ORDER BY version", Order::Version, &args).await?;
        self.opened(events).await
    }

    /// The events `rest` selects (what follows `FROM events`: filter, order,
    /// limit), in `order`, which `rest` orders by.
    async fn read_events(
        &self,
        rest: &str,
        order: Order,
        binds: &[Bind<'_>],
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        if self.db.dialect == Dialect::Sqlite {
            let text = sqlx::query_scalar_with::<_, String, _>(&sqlite_events_query(rest), arguments(binds)?)
                .fetch_one(&self.db.pool)
                .await;
            match text {
                Ok(text) => return decode_events(&text, order),
                // Over SQLite's longest string (1 GB): only a read of many
                // huge payloads gets there, and rows read it.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(SQLITE_TOOBIG) => {}
                Err(e) => return Err(e),
            }
        }
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events {rest}");
        let rows = sqlx::query_with(&sql, arguments(binds)?).fetch_all(&self.db.pool).await?;
        rows.iter().map(decode_row).collect()
    }
}

/// SQLite's result code for a string or blob over its length limit.
const SQLITE_TOOBIG: &str = "18";

/// A value bound to a read's placeholders.
enum Bind<'a> {
    Int(i64),
    Text(&'a str),
}

fn arguments<'q>(binds: &[Bind<'q>]) -> Result<AnyArguments<'q>, sqlx::Error> {
    let mut args = AnyArguments::default();
    for b in binds {
        match b {
            Bind::Int(v) => args.add(*v),
            Bind::Text(v) => args.add(*v),
        }
        .map_err(sqlx::Error::Encode)?;
    }
    Ok(args)
}

async fn head_position(db: &Db) -> Result<i64, sqlx::Error> {
    let head: Option<i64> = sqlx::query_scalar("SELECT MAX(position) FROM events").fetch_one(&db.pool).await?;
    Ok(head.unwrap_or(0))
}

impl EventLog for SqlEventLog {
    async fn append(&self, mut request: AppendRequest) -> Result<AppendResult, AppendError> {
        let (keys, plain) = match &self.shredder {
            Some(shredder) => {
                let plain = request
                    .streams
                    .iter()
                    .flat_map(|s| s.events.iter().map(|e| (e.event_id, EventData::from_value(&e.data))))
                    .collect();
                (shredder.seal(&mut request).await.map_err(StorageError::from)?, plain)
            }
            None => (Vec::new(), Vec::new()),
        };
        let (reply, answer) = oneshot::channel();
        let pending = writer::Pending { request, keys, shredder: self.shredder.clone(), plain, reply };
        self.queue.send(pending).await.map_err(|_| AppendError::Closed)?;
        answer.await.map_err(|_| AppendError::Closed)?
    }

    async fn read_all(&self, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StorageError> {
        let events = match self.recent.after(after, limit) {
            Some(events) => events,
            None => {
                let args = [Bind::Int(after), Bind::Int(limit)];
                self.read_events("WHERE position > $1 ORDER BY position LIMIT $2", Order::Position, &args).await?
            }
        };
        self.opened(events).await
    }

    async fn read_stream(&self, stream: &str) -> Result<Vec<RecordedEvent>, StorageError> {
        let events =
            self.read_events("WHERE stream = $1 ORDER BY version", Order::Version, &[Bind::Text(stream)]).await?;
        self.opened(events).await
    }

    async fn head(&self) -> Result<i64, StorageError> {
        Ok(head_position(&self.db).await?)
    }
}

fn parse_time(column: &str, raw: &str) -> Result<OffsetDateTime, sqlx::Error> {
    OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map_err(|e| sqlx::Error::ColumnDecode { index: column.to_string(), source: Box::new(e) })
}

/// Formats a time the way the log stores it: RFC 3339, UTC, microseconds.
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let micros = t.microsecond();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        micros
    )
}

fn decode_row(row: &sqlx::any::AnyRow) -> Result<RecordedEvent, sqlx::Error> {
    let data: String = row.try_get("data")?;
    Ok(RecordedEvent {
        position: row.try_get("position")?,
        event_id: row.try_get("event_id")?,
        stream: row.try_get("stream")?,
        version: row.try_get("version")?,
        event_type: row.try_get("event_type")?,
        schema: row.try_get("schema_version")?,
        occurred_at: parse_time("occurred_at", &row.try_get::<String, _>("occurred_at")?)?,
        recorded_at: parse_time("recorded_at", &row.try_get::<String, _>("recorded_at")?)?,
        company_id: row.try_get("company_id")?,
        application_id: row.try_get("application_id")?,
        actor: row.try_get("actor")?,
        correlation_id: row.try_get("correlation_id")?,
        causation_id: row.try_get("causation_id")?,
        data: EventData::from_text(data)
            .map_err(|e| sqlx::Error::ColumnDecode { index: "data".into(), source: Box::new(e) })?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads fall back to rows on the code sqlx reports when SQLite refuses
    /// a string over its length limit; this is that code.
    #[tokio::test]
    async fn sqlite_reports_an_over_long_string_with_the_code_reads_fall_back_on() {
        let file = std::env::temp_dir().join(format!("userstream-toobig-{}.db", uuid::Uuid::now_v7().simple()));
        let db = Db::connect(&format!("sqlite://{}", file.display())).await.expect("connect");
        let failed = sqlx::query("SELECT zeroblob(2000000000)").execute(&db.pool).await;
        db.pool.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
        match failed {
            Err(sqlx::Error::Database(e)) => assert_eq!(e.code().as_deref(), Some(SQLITE_TOOBIG), "{e}"),
            other => panic!("expected SQLite's too-big error, got {other:?}"),
        }
    }
}
