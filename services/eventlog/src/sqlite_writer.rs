//! The group-commit writer on SQLite: one OS thread owning one rusqlite
//! connection, running each whole batch (the snapshot's probes, the
//! reservations, the events, the data keys, the idempotency keys, COMMIT)
//! without leaving the thread. A batch costs one hand-off in (the queue)
//! and one per request out (its reply); sqlx's SQLite driver would hand
//! every statement to its worker thread and back.
//!
//! It judges and settles a batch with the same pure functions as the
//! PostgreSQL writer (`writer`), so the two differ only in how statements
//! reach the database. It waits for the same write turn as every other
//! writer of the process before `BEGIN IMMEDIATE`, and answers only after
//! COMMIT returned (`synchronous=FULL`: the WAL is on disk).

use crate::inline::Inline;
use crate::writer::{self, Lookups, Pending, Snapshot, Written, MAX_BATCH};
use crate::{format_time, AppendRequest, EventData, RecordedEvent, StorageError};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::HashMap;
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch, Mutex};

/// What the writer thread needs besides its connection.
pub(crate) struct Shared {
    pub gate: Arc<Mutex<()>>,
    pub head: Arc<watch::Sender<i64>>,
    pub stats: Arc<writer::Stats>,
    pub recent: Arc<crate::recent::Recent>,
    pub inline: crate::InlineSlot,
}

/// Opens the writer's connection to `file` and starts its thread; the
/// thread ends when every sender of `queue` is gone.
pub(crate) fn spawn(file: String, queue: mpsc::Receiver<Pending>, shared: Shared) -> Result<(), StorageError> {
    let conn = open(&file).map_err(StorageError::new)?;
    std::thread::Builder::new()
        .name("eventlog-writer".into())
        .spawn(move || run(&file, conn, queue, &shared))
        .map_err(StorageError::new)?;
    Ok(())
}

/// The log's own connection: the session settings of every connection, WAL,
/// and an fsync at every commit.
fn open(file: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(file)?;
    for pragmas in [crate::db::SQLITE_SESSION, crate::db::SQLITE_WAL, crate::db::SQLITE_LOG_SYNC] {
        for pragma in pragmas.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            // Some pragmas answer a row (`journal_mode`); read past it.
            conn.prepare(pragma)?.query([])?.next()?;
        }
    }
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

fn run(file: &str, mut conn: Connection, mut queue: mpsc::Receiver<Pending>, shared: &Shared) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        shared.stats.counted(batch.len());
        let span = tracing::debug_span!("eventlog.append", batch = batch.len());
        let started = std::time::Instant::now();
        let outcome = span.in_scope(|| {
            let _turn = shared.gate.blocking_lock();
            write(&mut conn, &batch, shared.inline.get().map(Arc::as_ref))
        });
        writer::record_batch(started, batch.len(), outcome.is_ok());
        match outcome {
            Ok((results, recorded)) => writer::deliver(&mut batch, results, recorded, &shared.head, &shared.recent),
            Err(e) => {
                writer::fail(&mut batch, e);
                // The connection may be broken; open a fresh one before the next batch.
                match open(file) {
                    Ok(fresh) => conn = fresh,
                    Err(e) => tracing::error!(error = %e, "event log writer could not reopen its connection"),
                }
            }
        }
    }
}

const INSERT_EVENT: &str = "INSERT INTO events (event_id, stream, version, event_type, schema_version, occurred_at, recorded_at, company_id, application_id, actor, correlation_id, causation_id, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

/// Checks and writes a whole batch in one transaction; rolls it back on
/// any error (the transaction's drop does).
fn write(conn: &mut Connection, batch: &[Pending], inline: Option<&dyn Inline>) -> Result<Written, StorageError> {
    let requests: Vec<&AppendRequest> = batch.iter().map(|p| &p.request).collect();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(StorageError::new)?;
    let judged = writer::judge_batch(&requests, snapshot(&tx, &requests)?);
    let sql = |e: rusqlite::Error| StorageError::new(e);
    {
        let mut delete = tx.prepare_cached("DELETE FROM reservations WHERE scope = ?1 AND key = ?2").map_err(sql)?;
        for (scope, key) in &judged.changes.deletes {
            delete.execute(params![scope, key]).map_err(sql)?;
        }
        let mut insert =
            tx.prepare_cached("INSERT INTO reservations (scope, key, stream) VALUES (?1, ?2, ?3)").map_err(sql)?;
        for (scope, key, stream) in &judged.changes.inserts {
            insert.execute(params![scope, key, stream]).map_err(sql)?;
        }
    }
    let now = writer::to_micros(OffsetDateTime::now_utc());
    let recorded_at = format_time(now);
    let mut positions: HashMap<String, i64> = HashMap::with_capacity(judged.rows.len());
    let mut payloads: Vec<EventData> = Vec::with_capacity(judged.rows.len());
    {
        let mut insert = tx.prepare_cached(INSERT_EVENT).map_err(sql)?;
        for (req, stream, version, e) in &judged.rows {
            let data = EventData::from_value(&e.data);
            let event_id = e.event_id.to_string();
            insert
                .execute(params![
                    event_id,
                    stream,
                    version,
                    e.event_type,
                    e.schema,
                    format_time(e.occurred_at),
                    recorded_at,
                    req.tenant.company_id,
                    req.tenant.application_id,
                    req.actor,
                    req.correlation_id,
                    req.causation_id,
                    data.as_str(),
                ])
                .map_err(sql)?;
            positions.insert(event_id, tx.last_insert_rowid());
            payloads.push(data);
        }
    }
    let (written, keys) = writer::settle(&requests, judged, payloads, &positions, now).map_err(StorageError::new)?;
    // Prepared only when used: a log without a shredder has no `subject_keys`.
    for (scope, key, stored) in &keys {
        let mut insert =
            tx.prepare_cached("INSERT INTO idempotency (scope, key, result) VALUES (?1, ?2, ?3)").map_err(sql)?;
        insert.execute(params![scope, key, stored]).map_err(sql)?;
    }
    for key in writer::appended_keys(batch, &written.0) {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO subject_keys (subject, wrapped) VALUES (?1, ?2) ON CONFLICT (subject) DO NOTHING",
            )
            .map_err(sql)?;
        insert.execute(params![key.subject, key.wrapped]).map_err(sql)?;
    }
    if let Some(inline) = inline {
        apply_inline(&tx, inline, batch, &written.1).map_err(sql)?;
    }
    tx.commit().map_err(sql)?;
    Ok(written)
}

/// Applies the batch's events to the inline projection and moves its
/// checkpoint, if the checkpoint is at the head the batch started from and
/// the projection takes the batch (see [`crate::inline`]). That head is the
/// position before the batch's first: SQLite's `AUTOINCREMENT` counter
/// commits and rolls back with the rows, so positions have no gaps (and
/// one would only make the batch go to the runner).
fn apply_inline(
    tx: &rusqlite::Transaction<'_>,
    inline: &dyn Inline,
    batch: &[Pending],
    recorded: &[(RecordedEvent, usize)],
) -> rusqlite::Result<()> {
    let (Some((first, _)), Some((last, _))) = (recorded.first(), recorded.last()) else { return Ok(()) };
    let (head_before, last) = (first.position - 1, last.position);
    let at: Option<i64> = tx
        .prepare_cached("SELECT position FROM checkpoints WHERE name = ?1")?
        .query_row([inline.name()], |r| r.get(0))
        .optional()?;
    if at != Some(head_before) {
        return Ok(());
    }
    let plain = writer::plain_payloads(batch);
    let events: Vec<RecordedEvent> = recorded
        .iter()
        .map(|(e, _)| {
            let mut e = e.clone();
            if let Some(data) = plain.get(e.event_id.as_str()) {
                e.data = (*data).clone();
            }
            e
        })
        .collect();
    if inline.apply(tx, &events)? {
        tx.prepare_cached("UPDATE checkpoints SET position = ?1 WHERE name = ?2")?
            .execute(params![last, inline.name()])?;
    }
    Ok(())
}

/// The versions, reservation holders and idempotency results the batch
/// needs, one index probe each.
fn snapshot(tx: &rusqlite::Transaction<'_>, batch: &[&AppendRequest]) -> Result<Snapshot, StorageError> {
    let sql = |e: rusqlite::Error| StorageError::new(e);
    let wanted = Lookups::of(batch);
    let mut snap = wanted.snapshot();
    let mut version = tx.prepare_cached("SELECT MAX(version) FROM events WHERE stream = ?1").map_err(sql)?;
    for stream in &wanted.streams {
        if let Some(v) = version.query_row([stream], |r| r.get::<_, Option<i64>>(0)).map_err(sql)? {
            snap.versions.insert(stream.to_string(), v);
        }
    }
    let mut holder = tx.prepare_cached("SELECT stream FROM reservations WHERE scope = ?1 AND key = ?2").map_err(sql)?;
    for key in &wanted.keys {
        if let Some(stream) = holder.query_row(params![key.0, key.1], |r| r.get(0)).optional().map_err(sql)? {
            snap.holders.insert(key.clone(), Some(stream));
        }
    }
    let mut seen = tx.prepare_cached("SELECT result FROM idempotency WHERE scope = ?1 AND key = ?2").map_err(sql)?;
    for id in &wanted.ids {
        let stored: Option<String> = seen.query_row(params![id.0, id.1], |r| r.get(0)).optional().map_err(sql)?;
        if let Some(stored) = stored {
            snap.seen.insert(id.clone(), writer::stored_result(&stored).map_err(StorageError::new)?);
        }
    }
    Ok(snap)
}
