//! The group-commit writer: one task, one connection, one transaction per batch.
//! This module holds its rules (judging a batch, settling its results,
//! answering its requests after COMMIT), shared by both backends, and its
//! statements through sqlx, which PostgreSQL uses; on SQLite
//! `sqlite_writer` runs the same rules on a thread of its own.
//!
//! A batch is checked in memory, request by request in arrival order, against
//! what the database holds (stream versions, reservations, idempotency keys,
//! read with one query each) plus what earlier requests of the same batch
//! did. A rejected request (version conflict, taken email) changes nothing;
//! the accepted ones are then written with a few multi-row statements. The
//! checks stay valid until COMMIT because every append transaction holds the
//! write lock (SQLite `BEGIN IMMEDIATE`, PostgreSQL the position lock).
//!
//! Replies are sent only after COMMIT returned, so an acknowledged append is
//! durable. If the commit fails, every request of the batch gets the error
//! and nothing of it is visible.

use crate::{
    format_time, AppendError, AppendRequest, AppendResult, Db, Dialect, EventData, ExpectedVersion, NewEvent,
    RecordedEvent, POSITION_LOCK,
};
use sqlx::{AnyConnection, Executor, Row};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

/// Counters of the writer, for tests and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Write transactions attempted.
    pub transactions: AtomicU64,
    /// Append requests handled.
    pub requests: AtomicU64,
}

pub(crate) struct Pending {
    pub request: AppendRequest,
    /// Data keys of new subjects, stored with the request's events, and
    /// the shredder that caches them once they are committed (before any
    /// reader can see the events they seal).
    pub keys: Vec<(crate::shred::NewKey, [u8; 32])>,
    pub shredder: Option<Arc<crate::shred::Shredder>>,
    /// With a shredder: each event's payload before sealing, by event id.
    pub plain: Vec<(uuid::Uuid, EventData)>,
    pub reply: oneshot::Sender<Result<AppendResult, AppendError>>,
}

/// Most requests one transaction takes; the rest wait for the next one.
pub(crate) const MAX_BATCH: usize = 1024;

/// `items` in slices for multi-row statements: `max` rows at a time, then
/// the rest in powers of two (300 → 256, 32, 8, 4). The driver keeps the
/// statements it prepared (up to 100 per connection); with any size from 1
/// to `max` a bulk load filled every cache with large statements of every
/// size (some 150 MB), while these sizes are a dozen statements per table.
pub fn statement_chunks<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = if rest.len() >= max { max } else { 1 << rest.len().ilog2() };
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    })
}

/// Rows per multi-row statement (keeps bind parameters under every backend's limit).
const ROWS_PER_STATEMENT: usize = 128;

pub(crate) async fn run(
    db: Db,
    mut conn: AnyConnection,
    mut queue: mpsc::Receiver<Pending>,
    head: Arc<watch::Sender<i64>>,
    stats: Arc<Stats>,
    recent: Arc<crate::recent::Recent>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        stats.counted(batch.len());
        let span = tracing::debug_span!("eventlog.append", batch = batch.len());
        let requests: Vec<&AppendRequest> = batch.iter().map(|p| &p.request).collect();
        let started = std::time::Instant::now();
        let outcome = async {
            let _turn = db.write_turn().await;
            begin(&db, &mut conn).await?;
            let written = match write_batch(&mut conn, db.dialect, &requests).await {
                Ok(written) => insert_keys(&mut conn, db.dialect, &batch, &written.0).await.map(|()| written),
                Err(e) => Err(e),
            };
            finish(&mut conn, written).await
        }
        .instrument(span)
        .await;
        record_batch(started, batch.len(), outcome.is_ok());
        match outcome {
            Ok((results, recorded)) => {
                if let Some(top) = top_position(&results) {
                    if db.dialect == Dialect::Postgres {
                        notify(&mut conn, top).await;
                    }
                }
                deliver(&mut batch, results, recorded, &head, &recent);
            }
            Err(e) => {
                fail(&mut batch, crate::StorageError::from(e));
                // The connection may be broken; get a fresh one before the next batch.
                match db.dedicated_connection().await {
                    Ok(fresh) => conn = fresh,
                    Err(e) => tracing::error!(error = %e, "event log writer could not reconnect"),
                }
            }
        }
    }
}

impl Stats {
    pub(crate) fn counted(&self, requests: usize) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
    }
}

/// Records a batch's duration and size by outcome.
pub(crate) fn record_batch(started: std::time::Instant, size: usize, ok: bool) {
    let ok = if ok { "ok" } else { "error" };
    metrics::histogram!(crate::metric::APPEND_BATCH_DURATION, "outcome" => ok).record(started.elapsed().as_secs_f64());
    metrics::histogram!(crate::metric::APPEND_BATCH_SIZE, "outcome" => ok).record(size as f64);
}

/// The highest position a committed batch appended, if it appended any.
pub(crate) fn top_position(results: &[Result<AppendResult, AppendError>]) -> Option<i64> {
    results.iter().filter_map(|r| r.as_ref().ok()).map(|r| r.last_position).max()
}

/// After COMMIT: caches the new data keys, keeps the events for readers at
/// the head, moves the head, and answers every request of the batch.
pub(crate) fn deliver(
    batch: &mut Vec<Pending>,
    results: Vec<Result<AppendResult, AppendError>>,
    recorded: Vec<(RecordedEvent, usize)>,
    head: &watch::Sender<i64>,
    recent: &crate::recent::Recent,
) {
    metrics::counter!(crate::metric::EVENTS_APPENDED).increment(recorded.len() as u64);
    for (pending, result) in batch.iter().zip(&results) {
        if let (Some(shredder), Ok(r)) = (&pending.shredder, result) {
            if !r.replayed {
                shredder.committed(&pending.keys);
            }
        }
    }
    if let Some(shredder) = batch.iter().find_map(|p| p.shredder.as_ref()) {
        let plain = plain_payloads(batch);
        let opened = recorded
            .iter()
            .filter_map(|(e, _)| {
                let data = plain.get(e.event_id.as_str())?;
                Some((e.position, e.event_id.clone(), e.stream.as_str(), (*data).clone()))
            })
            .collect();
        shredder.remember_opened(opened);
    }
    recent.remember(recorded);
    if let Some(top) = top_position(&results) {
        head.send_if_modified(|h| {
            let moved = top > *h;
            *h = (*h).max(top);
            moved
        });
    }
    for (pending, result) in batch.drain(..).zip(results) {
        let _ = pending.reply.send(result);
    }
}

/// The batch's payloads before sealing, by event id (empty without a shredder).
pub(crate) fn plain_payloads(batch: &[Pending]) -> HashMap<String, &EventData> {
    batch.iter().flat_map(|p| p.plain.iter().map(|(id, data)| (id.to_string(), data))).collect()
}

/// After a failed batch: nothing of it was committed; every request gets the error.
pub(crate) fn fail(batch: &mut Vec<Pending>, failure: crate::StorageError) {
    tracing::error!(error = %failure, "append batch failed; nothing of it was committed");
    for pending in batch.drain(..) {
        let _ = pending.reply.send(Err(AppendError::Storage(failure.clone())));
    }
}

/// Tells the other processes on the database that the log moved to `top`.
async fn notify(conn: &mut AnyConnection, top: i64) {
    let sent = sqlx::query("SELECT pg_notify($1, $2)::text")
        .bind(crate::APPEND_CHANNEL)
        .bind(top.to_string())
        .execute(&mut *conn)
        .await;
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not notify other processes of an append");
    }
}

/// Commits after a successful batch, rolls back after a failed one.
async fn finish<T>(conn: &mut AnyConnection, outcome: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
    match outcome {
        Ok(value) => match conn.execute("COMMIT").await {
            Ok(_) => Ok(value),
            Err(e) => {
                let _ = conn.execute("ROLLBACK").await;
                Err(e)
            }
        },
        Err(e) => {
            let _ = conn.execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Opens an append transaction and, on PostgreSQL, takes the position lock
/// (see [`crate::SqlEventLog`] for why).
pub(crate) async fn begin(db: &Db, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    conn.execute(db.begin_write()).await?;
    if db.dialect == Dialect::Postgres {
        let locked =
            sqlx::query("SELECT pg_advisory_xact_lock($1)::text").bind(POSITION_LOCK).execute(&mut *conn).await;
        if let Err(e) = locked {
            let _ = conn.execute("ROLLBACK").await;
            return Err(e);
        }
    }
    Ok(())
}

/// What the database holds for the keys and streams a batch touches.
pub(crate) struct Snapshot {
    pub versions: HashMap<String, i64>,
    /// (scope, key) → holding stream.
    pub holders: HashMap<(String, String), Option<String>>,
    /// (scope, idempotency key) → stored result.
    pub seen: HashMap<(String, String), AppendResult>,
}

/// How one request of the batch ends.
enum Verdict {
    Accepted {
        before: HashMap<String, i64>,
        versions: Vec<(String, i64)>,
    },
    /// Same idempotency key as an earlier request: its stored result, or
    /// (when that request is in this batch) the index of that request.
    Replay(Result<AppendResult, usize>),
    Rejected(AppendError),
}

/// What a batch wrote: each request's result, and the events it recorded
/// (in position order, as a reader will read them back) with the size of
/// their data as stored.
pub(crate) type Written = (Vec<Result<AppendResult, AppendError>>, Vec<(RecordedEvent, usize)>);

/// One event row to insert: its request, stream, version and event.
pub(crate) type EventRow<'a> = (&'a AppendRequest, &'a str, i64, &'a NewEvent);

/// Checks and writes a whole batch inside the open transaction: the net
/// change of every reservation, the accepted requests' events, their
/// idempotency keys. Returns one result per request, in order.
pub(crate) async fn write_batch(
    conn: &mut AnyConnection,
    dialect: Dialect,
    batch: &[&AppendRequest],
) -> Result<Written, sqlx::Error> {
    let snap = read_snapshot(conn, dialect, batch).await?;
    let judged = judge_batch(batch, snap);
    write_reservations(conn, dialect, &judged.changes).await?;
    let now = to_micros(OffsetDateTime::now_utc());
    let (positions, payloads) = insert_events(conn, dialect, &judged.rows, now).await?;
    let (written, keys) = settle(batch, judged, payloads, &positions, now)?;
    for chunk in statement_chunks(&keys, ROWS_PER_STATEMENT) {
        let sql = format!("INSERT INTO idempotency (scope, key, result) VALUES {}", rows(dialect, chunk.len(), 3));
        let mut q = sqlx::query(&sql);
        for (scope, key, stored) in chunk {
            q = q.bind(scope).bind(key).bind(stored);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(written)
}

/// A batch judged against its snapshot: each request's verdict, the net
/// change of every reservation it touched, and the event rows to insert.
pub(crate) struct Judged<'a> {
    verdicts: Vec<Verdict>,
    pub changes: ReservationChanges,
    pub rows: Vec<EventRow<'a>>,
}

/// Reservations to delete `(scope, key)` and to insert `(scope, key, stream)`.
#[derive(Default)]
pub(crate) struct ReservationChanges {
    pub deletes: Vec<(String, String)>,
    pub inserts: Vec<(String, String, String)>,
}

/// Judges every request of the batch in arrival order (pure: no IO).
pub(crate) fn judge_batch<'a>(batch: &[&'a AppendRequest], mut snap: Snapshot) -> Judged<'a> {
    let initial_holders = snap.holders.clone();
    let mut claimed_keys: HashMap<(String, String), usize> = HashMap::new();
    let verdicts: Vec<Verdict> =
        batch.iter().enumerate().map(|(i, req)| judge(i, req, &mut snap, &mut claimed_keys)).collect();
    let changes = reservation_changes(&initial_holders, &snap.holders);
    let rows = event_rows(batch, &verdicts);
    Judged { verdicts, changes, rows }
}

/// Each request's result and the events recorded, once the event rows have
/// their positions; and the idempotency keys to store.
pub(crate) fn settle(
    batch: &[&AppendRequest],
    judged: Judged<'_>,
    payloads: Vec<EventData>,
    positions: &HashMap<String, i64>,
    now: OffsetDateTime,
) -> Result<(Written, NewKeys), sqlx::Error> {
    let recorded = recorded_events(&judged.rows, payloads, positions, now);
    let (results, keys) = results(batch, judged.verdicts, positions)?;
    Ok(((results, recorded), keys))
}

/// The data keys of the requests that were appended (not refused, not replayed).
pub(crate) fn appended_keys<'a>(
    batch: &'a [Pending],
    results: &[Result<AppendResult, AppendError>],
) -> Vec<&'a crate::shred::NewKey> {
    batch
        .iter()
        .zip(results)
        .filter(|(_, r)| r.as_ref().is_ok_and(|r| !r.replayed))
        .flat_map(|(p, _)| p.keys.iter().map(|(k, _)| k))
        .collect()
}

/// Stores the data keys of the requests that were appended (not refused,
/// not replayed), in the batch's transaction.
async fn insert_keys(
    conn: &mut AnyConnection,
    dialect: Dialect,
    batch: &[Pending],
    results: &[Result<AppendResult, AppendError>],
) -> Result<(), sqlx::Error> {
    let keys = appended_keys(batch, results);
    for chunk in statement_chunks(&keys, ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO subject_keys (subject, wrapped) VALUES {} ON CONFLICT (subject) DO NOTHING",
            rows(dialect, chunk.len(), 2)
        );
        let mut q = sqlx::query(&sql);
        for key in chunk {
            q = q.bind(&key.subject).bind(&key.wrapped);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The net change of every reservation key the batch touched.
fn reservation_changes(
    initial: &HashMap<(String, String), Option<String>>,
    now: &HashMap<(String, String), Option<String>>,
) -> ReservationChanges {
    let mut changes = ReservationChanges::default();
    for (key, holder) in now {
        let before = initial.get(key).cloned().flatten();
        if before != *holder {
            if before.is_some() {
                changes.deletes.push(key.clone());
            }
            if let Some(stream) = holder {
                changes.inserts.push((key.0.clone(), key.1.clone(), stream.clone()));
            }
        }
    }
    changes
}

/// Writes the net change of every reservation key the batch touched.
async fn write_reservations(
    conn: &mut AnyConnection,
    dialect: Dialect,
    changes: &ReservationChanges,
) -> Result<(), sqlx::Error> {
    for chunk in statement_chunks(&changes.deletes, ROWS_PER_STATEMENT) {
        let sql =
            format!("DELETE FROM reservations WHERE (scope, key) IN (VALUES {})", tuples(dialect, chunk.len(), 2, 0));
        let mut q = sqlx::query(&sql);
        for (scope, key) in chunk {
            q = q.bind(scope).bind(key);
        }
        q.execute(&mut *conn).await?;
    }
    for chunk in statement_chunks(&changes.inserts, ROWS_PER_STATEMENT) {
        let sql = format!("INSERT INTO reservations (scope, key, stream) VALUES {}", rows(dialect, chunk.len(), 3));
        let mut q = sqlx::query(&sql);
        for (scope, key, stream) in chunk {
            q = q.bind(scope).bind(key).bind(stream);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The event rows of the accepted requests, in request order, with the
/// versions they take.
fn event_rows<'a>(batch: &[&'a AppendRequest], verdicts: &[Verdict]) -> Vec<EventRow<'a>> {
    let mut rows = Vec::new();
    for (req, verdict) in batch.iter().zip(verdicts) {
        if let Verdict::Accepted { before, .. } = verdict {
            let mut next = before.clone();
            for s in &req.streams {
                let version = next.entry(s.stream.clone()).or_insert(0);
                for e in &s.events {
                    *version += 1;
                    rows.push((*req, s.stream.as_str(), *version, e));
                }
            }
        }
    }
    rows
}

/// Inserts the event rows; returns the positions they got, by event id,
/// and their payloads as stored.
async fn insert_events(
    conn: &mut AnyConnection,
    dialect: Dialect,
    rows_to_insert: &[EventRow<'_>],
    now: OffsetDateTime,
) -> Result<(HashMap<String, i64>, Vec<EventData>), sqlx::Error> {
    let recorded_at = format_time(now);
    let mut positions: HashMap<String, i64> = HashMap::with_capacity(rows_to_insert.len());
    let mut payloads: Vec<EventData> = Vec::with_capacity(rows_to_insert.len());
    for chunk in statement_chunks(rows_to_insert, ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO events (event_id, stream, version, event_type, schema_version, occurred_at, recorded_at, company_id, application_id, actor, correlation_id, causation_id, data) VALUES {} RETURNING position, event_id",
            rows(dialect, chunk.len(), 13)
        );
        let mut q = sqlx::query(&sql);
        for (req, stream, version, e) in chunk {
            let data = EventData::from_value(&e.data);
            let text = data.as_str().to_string();
            payloads.push(data);
            q = q
                .bind(e.event_id.to_string())
                .bind(*stream)
                .bind(*version)
                .bind(&e.event_type)
                .bind(e.schema)
                .bind(format_time(e.occurred_at))
                .bind(&recorded_at)
                .bind(&req.tenant.company_id)
                .bind(&req.tenant.application_id)
                .bind(&req.actor)
                .bind(&req.correlation_id)
                .bind(req.causation_id.as_deref())
                .bind(text);
        }
        for row in q.fetch_all(&mut *conn).await? {
            positions.insert(row.try_get("event_id")?, row.try_get("position")?);
        }
    }
    Ok((positions, payloads))
}

/// The inserted events as a reader reads them back, in position order,
/// with the size of their data.
fn recorded_events(
    rows_to_insert: &[EventRow<'_>],
    payloads: Vec<EventData>,
    positions: &HashMap<String, i64>,
    now: OffsetDateTime,
) -> Vec<(RecordedEvent, usize)> {
    let mut recorded: Vec<(RecordedEvent, usize)> = rows_to_insert
        .iter()
        .zip(payloads)
        .filter_map(|((req, stream, version, e), data)| {
            let position = *positions.get(&e.event_id.to_string())?;
            let event = RecordedEvent {
                position,
                event_id: e.event_id.to_string(),
                stream: stream.to_string(),
                version: *version,
                event_type: e.event_type.clone(),
                schema: e.schema,
                occurred_at: to_micros(e.occurred_at),
                recorded_at: now,
                company_id: req.tenant.company_id.clone(),
                application_id: req.tenant.application_id.clone(),
                actor: req.actor.clone(),
                correlation_id: req.correlation_id.clone(),
                causation_id: req.causation_id.clone(),
                data,
            };
            let size = event.data.as_str().len();
            Some((event, size))
        })
        .collect();
    recorded.sort_by_key(|(e, _)| e.position);
    recorded
}

/// Idempotency keys to store: (scope, key, result as JSON).
pub(crate) type NewKeys = Vec<(String, String, String)>;

/// Each request's result, and the idempotency keys of the accepted ones.
fn results(
    batch: &[&AppendRequest],
    verdicts: Vec<Verdict>,
    positions: &HashMap<String, i64>,
) -> Result<(Vec<Result<AppendResult, AppendError>>, NewKeys), sqlx::Error> {
    let mut results: Vec<Result<AppendResult, AppendError>> = Vec::with_capacity(batch.len());
    let mut keys = Vec::new();
    for (req, verdict) in batch.iter().zip(verdicts) {
        results.push(match verdict {
            Verdict::Accepted { versions, .. } => {
                let last_position = req
                    .streams
                    .iter()
                    .flat_map(|s| &s.events)
                    .filter_map(|e| positions.get(&e.event_id.to_string()))
                    .copied()
                    .max()
                    .unwrap_or(0);
                let result = AppendResult { last_position, streams: versions, replayed: false };
                if let Some(key) = &req.idempotency_key {
                    let stored = serde_json::to_string(&result).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                    keys.push((req.tenant.scope(), key.clone(), stored));
                }
                Ok(result)
            }
            Verdict::Replay(Ok(stored)) => Ok(stored),
            Verdict::Replay(Err(earlier)) => match &results[earlier] {
                Ok(first) => Ok(AppendResult { replayed: true, ..first.clone() }),
                Err(_) => {
                    Err(AppendError::Conflict { stream: String::new(), expected: ExpectedVersion::Any, actual: 0 })
                }
            },
            Verdict::Rejected(e) => Err(e),
        });
    }
    Ok((results, keys))
}

/// A time as the log stores it: UTC, microseconds.
pub(crate) fn to_micros(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000).unwrap_or(t)
}

/// Decides one request against the snapshot, updating it if accepted.
fn judge(
    index: usize,
    req: &AppendRequest,
    snap: &mut Snapshot,
    claimed_keys: &mut HashMap<(String, String), usize>,
) -> Verdict {
    let scope = req.tenant.scope();
    if let Some(key) = &req.idempotency_key {
        let id = (scope.clone(), key.clone());
        if let Some(stored) = snap.seen.get(&id) {
            return Verdict::Replay(Ok(AppendResult { replayed: true, ..stored.clone() }));
        }
        if let Some(&earlier) = claimed_keys.get(&id) {
            return Verdict::Replay(Err(earlier));
        }
    }
    let mut versions: HashMap<&str, i64> = HashMap::new();
    let mut before: HashMap<String, i64> = HashMap::new();
    for s in &req.streams {
        let stored = *snap.versions.get(&s.stream).unwrap_or(&0);
        before.entry(s.stream.clone()).or_insert(stored);
        let current = *versions.get(s.stream.as_str()).unwrap_or(&stored);
        let ok = match s.expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(v) => current == v,
        };
        if !ok {
            return Verdict::Rejected(AppendError::Conflict {
                stream: s.stream.clone(),
                expected: s.expected,
                actual: current,
            });
        }
        versions.insert(&s.stream, current + s.events.len() as i64);
    }
    let mut holders: HashMap<(String, String), Option<String>> = HashMap::new();
    let holder_of = |holders: &HashMap<(String, String), Option<String>>, k: &(String, String)| {
        holders.get(k).cloned().unwrap_or_else(|| snap.holders.get(k).cloned().flatten())
    };
    for r in &req.release {
        let k = (scope.clone(), r.key.clone());
        if holder_of(&holders, &k).as_deref() == Some(r.stream.as_str()) {
            holders.insert(k, None);
        }
    }
    for r in &req.reserve {
        let k = (scope.clone(), r.key.clone());
        match holder_of(&holders, &k) {
            Some(holder) if holder != r.stream => {
                return Verdict::Rejected(AppendError::Reserved { key: r.key.clone() })
            }
            _ => {
                holders.insert(k, Some(r.stream.clone()));
            }
        }
    }
    // Accepted: make its effects visible to the requests after it.
    snap.holders.extend(holders);
    let versions: Vec<(String, i64)> = req
        .streams
        .iter()
        .map(|s| (s.stream.clone(), versions.get(s.stream.as_str()).copied().unwrap_or(0)))
        .fold(Vec::new(), |mut acc, (s, v)| {
            if let Some(existing) = acc.iter_mut().find(|(name, _)| *name == s) {
                existing.1 = v;
            } else {
                acc.push((s, v));
            }
            acc
        });
    for (s, v) in &versions {
        snap.versions.insert(s.clone(), *v);
    }
    if let Some(key) = &req.idempotency_key {
        claimed_keys.insert((scope, key.clone()), index);
    }
    Verdict::Accepted { before, versions }
}

/// What a batch must look up before it is judged: its streams, the
/// reservation keys it claims or releases, and its idempotency keys, each once.
pub(crate) struct Lookups<'a> {
    pub streams: Vec<&'a str>,
    pub keys: Vec<(String, String)>,
    pub ids: Vec<(String, String)>,
}

impl<'a> Lookups<'a> {
    pub fn of(batch: &[&'a AppendRequest]) -> Lookups<'a> {
        let mut streams: Vec<&str> = batch.iter().flat_map(|r| r.streams.iter().map(|s| s.stream.as_str())).collect();
        streams.sort_unstable();
        streams.dedup();
        let mut keys: Vec<(String, String)> = batch
            .iter()
            .flat_map(|r| {
                let scope = r.tenant.scope();
                r.reserve.iter().chain(&r.release).map(move |res| (scope.clone(), res.key.clone()))
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let ids =
            batch.iter().filter_map(|r| r.idempotency_key.as_ref().map(|k| (r.tenant.scope(), k.clone()))).collect();
        Lookups { streams, keys, ids }
    }

    /// An empty snapshot of these lookups: every key unheld.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            versions: HashMap::with_capacity(self.streams.len()),
            holders: self.keys.iter().map(|k| (k.clone(), None)).collect(),
            seen: HashMap::new(),
        }
    }
}

/// An idempotency result as stored.
pub(crate) fn stored_result(text: &str) -> Result<AppendResult, serde_json::Error> {
    serde_json::from_str(text)
}

/// Reads the versions, reservation holders and idempotency results the batch needs.
async fn read_snapshot(
    conn: &mut AnyConnection,
    dialect: Dialect,
    batch: &[&AppendRequest],
) -> Result<Snapshot, sqlx::Error> {
    let wanted = Lookups::of(batch);
    let mut snap = wanted.snapshot();
    for chunk in statement_chunks(&wanted.streams, ROWS_PER_STATEMENT) {
        // One index probe per stream, whatever the planner thinks of the
        // table: as `stream IN (…) GROUP BY stream`, PostgreSQL chose a
        // sequential scan of the whole log when its statistics were off
        // (20 ms per batch at 46,000 events, growing with the log).
        let sql = format!(
            "SELECT v.column1 AS stream, (SELECT MAX(version) FROM events WHERE stream = v.column1) AS version \
             FROM (VALUES {}) v",
            tuples(dialect, chunk.len(), 1, 0)
        );
        let mut q = sqlx::query(&sql);
        for s in chunk {
            q = q.bind(*s);
        }
        for row in q.fetch_all(&mut *conn).await? {
            if let Some(version) = row.try_get::<Option<i64>, _>("version")? {
                snap.versions.insert(row.try_get::<String, _>("stream")?, version);
            }
        }
    }
    for (scope, key, stream) in by_scope_key(conn, dialect, "reservations", "stream", &wanted.keys).await? {
        snap.holders.insert((scope, key), Some(stream));
    }
    for (scope, key, stored) in by_scope_key(conn, dialect, "idempotency", "result", &wanted.ids).await? {
        let result = stored_result(&stored).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        snap.seen.insert((scope, key), result);
    }
    Ok(snap)
}

/// `(scope, key, column)` of the rows of `table` whose `(scope, key)` is among `keys`.
async fn by_scope_key(
    conn: &mut AnyConnection,
    dialect: Dialect,
    table: &str,
    column: &str,
    keys: &[(String, String)],
) -> Result<Vec<(String, String, String)>, sqlx::Error> {
    let mut found = Vec::new();
    for chunk in statement_chunks(keys, ROWS_PER_STATEMENT) {
        // One primary-key probe per key (see `read_snapshot` on why not a join).
        let sql = format!(
            "SELECT v.column1 AS scope, v.column2 AS key, \
             (SELECT t.{column} FROM {table} t WHERE t.scope = v.column1 AND t.key = v.column2) AS found \
             FROM (VALUES {}) v",
            tuples(dialect, chunk.len(), 2, 0)
        );
        let mut q = sqlx::query(&sql);
        for (scope, key) in chunk {
            q = q.bind(scope).bind(key);
        }
        for row in q.fetch_all(&mut *conn).await? {
            if let Some(value) = row.try_get::<Option<String>, _>("found")? {
                found.push((row.try_get("scope")?, row.try_get("key")?, value));
            }
        }
    }
    Ok(found)
}

/// `n` tuples of `width` placeholders for a statement whose earlier
/// placeholders number `offset`: `($1, $2), ($3, $4)` on PostgreSQL,
/// `(?, ?), (?, ?)` on SQLite.
///
/// SQLite gets anonymous `?`: for named or numbered parameters both its
/// parser and `sqlite3_bind_parameter_name` (which sqlx calls for every
/// parameter) search a list, which makes binding a multi-row statement
/// quadratic in its parameters. Anonymous ones bind in order, so a statement
/// built with this must not use numbered placeholders elsewhere.
pub fn tuples(dialect: Dialect, n: usize, width: usize, offset: usize) -> String {
    (0..n)
        .map(|i| {
            let cells: Vec<String> = (1..=width)
                .map(|c| match dialect {
                    Dialect::Sqlite => "?".to_string(),
                    Dialect::Postgres => format!("${}", offset + i * width + c),
                })
                .collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `DELETE FROM {table}` the rows whose `({a}, {b})` is one of `n` bound
/// pairs, followed by `tail` (a `RETURNING` clause, or empty), as one index
/// probe per pair whatever the statistics say.
///
/// PostgreSQL plans `(a, b) IN (VALUES …)` with a long list as a hash join
/// over a sequential scan of the whole table (measured: 5,000 pairs in
/// 1,000,000 rows, 168–182 ms, growing with the table; even right after
/// `ANALYZE`). Here each pair's row is found by a correlated probe of the
/// primary key and deleted by its `ctid` (15 ms). An update gives a row a
/// new `ctid`, which a concurrent delete here would miss, so this is only
/// for tables whose rows are inserted and deleted, never updated (the
/// member tables). SQLite probes its index for the plain form.
pub fn delete_pairs(dialect: Dialect, table: &str, (a, b): (&str, &str), n: usize, tail: &str) -> String {
    let pairs = tuples(dialect, n, 2, 0);
    match dialect {
        Dialect::Sqlite => format!("DELETE FROM {table} WHERE ({a}, {b}) IN (VALUES {pairs}){tail}"),
        Dialect::Postgres => format!(
            "DELETE FROM {table} WHERE ctid = ANY (ARRAY(SELECT (SELECT t.ctid FROM {table} t WHERE t.{a} = v.x AND t.{b} = v.y) \
             FROM (VALUES {pairs}) AS v (x, y))){tail}"
        ),
    }
}

/// The VALUES list of a multi-row insert.
fn rows(dialect: Dialect, n: usize, width: usize) -> String {
    tuples(dialect, n, width, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_chunks_take_the_maximum_then_powers_of_two() {
        let items: Vec<u32> = (0..1300).collect();
        let sizes: Vec<usize> = statement_chunks(&items, 500).map(<[u32]>::len).collect();
        assert_eq!(sizes, [500, 500, 256, 32, 8, 4]);
        let flat: Vec<u32> = statement_chunks(&items, 500).flatten().copied().collect();
        assert_eq!(flat, items);
        assert_eq!(statement_chunks::<u32>(&[], 500).count(), 0);
    }

    #[test]
    fn placeholders_are_numbered_across_tuples() {
        assert_eq!(tuples(Dialect::Postgres, 2, 2, 0), "($1, $2), ($3, $4)");
        assert_eq!(tuples(Dialect::Postgres, 2, 1, 3), "($4), ($5)");
        assert_eq!(rows(Dialect::Sqlite, 2, 2), "(?, ?), (?, ?)");
    }
}
