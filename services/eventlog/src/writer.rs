//! The group-commit writer: one task, one connection, one transaction per batch.
//!
//! Each request in a batch runs inside its own savepoint, so a rejected
//! request (version conflict, taken email) is rolled back alone while the
//! others commit. Replies are sent only after COMMIT returned, so an
//! acknowledged append is durable. If the commit itself fails, every request
//! of the batch gets the error and nothing of it is visible.

use crate::{format_time, AppendError, AppendRequest, AppendResult, Db, Dialect, ExpectedVersion, POSITION_LOCK};
use sqlx::{AnyConnection, Executor};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    pub reply: oneshot::Sender<Result<AppendResult, AppendError>>,
}

/// Most requests one transaction takes; the rest wait for the next one.
const MAX_BATCH: usize = 512;

pub(crate) async fn run(
    db: Db,
    mut conn: AnyConnection,
    mut queue: mpsc::Receiver<Pending>,
    head: watch::Sender<i64>,
    stats: Arc<Stats>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        stats.requests.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let span = tracing::debug_span!("eventlog.append", batch = batch.len());
        let outcome = commit_batch(&db, &mut conn, &batch).instrument(span).await;
        match outcome {
            Ok(results) => {
                let top = results.iter().filter_map(|r| r.as_ref().ok()).map(|r| r.last_position).max();
                if let Some(top) = top {
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
            Err(e) => {
                tracing::error!(error = %e, "append batch failed; nothing of it was committed");
                let message = e.to_string();
                for pending in batch.drain(..) {
                    let _ = pending.reply.send(Err(AppendError::Storage(sqlx::Error::Protocol(message.clone()))));
                }
                // The connection may be broken; get a fresh one before the next batch.
                match db.dedicated_connection().await {
                    Ok(fresh) => conn = fresh,
                    Err(e) => tracing::error!(error = %e, "event log writer could not reconnect"),
                }
            }
        }
    }
}

async fn commit_batch(
    db: &Db,
    conn: &mut AnyConnection,
    batch: &[Pending],
) -> Result<Vec<Result<AppendResult, AppendError>>, sqlx::Error> {
    begin(db, conn).await?;
    let mut results = Vec::with_capacity(batch.len());
    for pending in batch {
        if let Err(e) = conn.execute("SAVEPOINT request").await {
            let _ = conn.execute("ROLLBACK").await;
            return Err(e);
        }
        match apply(conn, &pending.request).await {
            Ok(result) => {
                conn.execute("RELEASE SAVEPOINT request").await?;
                results.push(Ok(result));
            }
            Err(AppendError::Storage(e)) => {
                let _ = conn.execute("ROLLBACK").await;
                return Err(e);
            }
            Err(rejection) => {
                conn.execute("ROLLBACK TO SAVEPOINT request").await?;
                conn.execute("RELEASE SAVEPOINT request").await?;
                results.push(Err(rejection));
            }
        }
    }
    if let Err(e) = conn.execute("COMMIT").await {
        let _ = conn.execute("ROLLBACK").await;
        return Err(e);
    }
    Ok(results)
}

/// Opens an append transaction and, on PostgreSQL, takes the position lock
/// (see [`crate::SqlEventLog`] for why).
pub(crate) async fn begin(db: &Db, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    conn.execute(db.begin_write()).await?;
    if db.dialect == Dialect::Postgres {
        let locked = sqlx::query("SELECT pg_advisory_xact_lock($1)::text").bind(POSITION_LOCK).execute(&mut *conn).await;
        if let Err(e) = locked {
            let _ = conn.execute("ROLLBACK").await;
            return Err(e);
        }
    }
    Ok(())
}

/// Performs one request inside the current transaction.
pub(crate) async fn apply(conn: &mut AnyConnection, req: &AppendRequest) -> Result<AppendResult, AppendError> {
    let scope = req.tenant.scope();
    if let Some(key) = &req.idempotency_key {
        let stored: Option<String> = sqlx::query_scalar("SELECT result FROM idempotency WHERE scope = $1 AND key = $2")
            .bind(&scope)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(stored) = stored {
            let mut result: AppendResult = serde_json::from_str(&stored)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            result.replayed = true;
            return Ok(result);
        }
    }

    let mut versions = Vec::with_capacity(req.streams.len());
    for s in &req.streams {
        let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM events WHERE stream = $1")
            .bind(&s.stream)
            .fetch_one(&mut *conn)
            .await?;
        let current = current.unwrap_or(0);
        let ok = match s.expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(v) => current == v,
        };
        if !ok {
            return Err(AppendError::Conflict { stream: s.stream.clone(), expected: s.expected, actual: current });
        }
        versions.push(current);
    }

    for r in &req.release {
        sqlx::query("DELETE FROM reservations WHERE scope = $1 AND key = $2 AND stream = $3")
            .bind(&scope)
            .bind(&r.key)
            .bind(&r.stream)
            .execute(&mut *conn)
            .await?;
    }
    for r in &req.reserve {
        let inserted = sqlx::query("INSERT INTO reservations (scope, key, stream) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(&scope)
        .bind(&r.key)
        .bind(&r.stream)
        .execute(&mut *conn)
        .await?;
        if inserted.rows_affected() == 0 {
            let holder: Option<String> =
                sqlx::query_scalar("SELECT stream FROM reservations WHERE scope = $1 AND key = $2")
                    .bind(&scope)
                    .bind(&r.key)
                    .fetch_optional(&mut *conn)
                    .await?;
            if holder.as_deref() != Some(r.stream.as_str()) {
                return Err(AppendError::Reserved { key: r.key.clone() });
            }
        }
    }

    let recorded_at = format_time(OffsetDateTime::now_utc());
    let mut last_position = 0;
    let mut streams = Vec::with_capacity(req.streams.len());
    for (s, mut version) in req.streams.iter().zip(versions) {
        for e in &s.events {
            version += 1;
            let position: i64 = sqlx::query_scalar(
                "INSERT INTO events (event_id, stream, version, event_type, schema_version, occurred_at, recorded_at, company_id, application_id, actor, correlation_id, causation_id, data)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING position",
            )
            .bind(e.event_id.to_string())
            .bind(&s.stream)
            .bind(version)
            .bind(&e.event_type)
            .bind(e.schema)
            .bind(format_time(e.occurred_at))
            .bind(&recorded_at)
            .bind(&req.tenant.company_id)
            .bind(&req.tenant.application_id)
            .bind(&req.actor)
            .bind(&req.correlation_id)
            .bind(req.causation_id.as_deref())
            .bind(e.data.to_string())
            .fetch_one(&mut *conn)
            .await?;
            last_position = last_position.max(position);
        }
        streams.push((s.stream.clone(), version));
    }
    let result = AppendResult { last_position, streams, replayed: false };
    if let Some(key) = &req.idempotency_key {
        let stored = serde_json::to_string(&result).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        sqlx::query("INSERT INTO idempotency (scope, key, result) VALUES ($1, $2, $3)")
            .bind(&scope)
            .bind(key)
            .bind(stored)
            .execute(&mut *conn)
            .await?;
    }
    Ok(result)
}
