//! The projection runner: reads the log in position order and applies each
//! event to a read model, committing the read-model writes and the checkpoint
//! in one transaction.
//!
//! Guarantees:
//! - **No skip, no double-apply**: a batch's writes and its checkpoint commit
//!   together; a crash anywhere in a batch rolls both back, and the batch is
//!   read again from the old checkpoint.
//! - **One runner per projection at a time** across processes on PostgreSQL:
//!   a runner works only while it holds the projection's [`Lease`]; the
//!   others stand by, following the owner's checkpoint so their
//!   read-your-writes waits still end. As a second line, the batch
//!   transaction locks the checkpoint row (`FOR UPDATE SKIP LOCKED`) and
//!   applies nothing unless the checkpoint is where the batch started.
//! - **Poison events stop the projection**: an event the projection cannot
//!   apply is recorded (logged, and reported by [`RunnerStatus`]) and the
//!   runner stops advancing; it never skips it.

use crate::Projection;
use sqlx::{Acquire, Executor};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use userstream_eventlog::lease::Lease;
use userstream_eventlog::{Db, Dialect, EventLog, Migration, RecordedEvent, SqlEventLog};

/// How often a standby follows the owner's checkpoint.
pub const STANDBY_POLL: Duration = Duration::from_millis(50);

/// Sets a worker's reported position (waking waiters only when it changed).
pub(crate) fn report_position(position: &watch::Sender<i64>, now: i64) {
    position.send_if_modified(|p| std::mem::replace(p, now) != now);
}

/// On a standby: takes the owner's checkpoint `name` as the reported position.
pub(crate) async fn follow_checkpoint(db: &Db, name: &str, position: &watch::Sender<i64>) {
    if let Ok(p) = read_checkpoint(db, name).await {
        report_position(position, p);
    }
}

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    sqlite: "CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, position BIGINT NOT NULL, failure TEXT)",
    postgres: "CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, position BIGINT NOT NULL, failure TEXT)",
}];

/// Why applying an event failed.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The event cannot be applied, now or ever (undecodable, impossible).
    #[error("poison event at position {position}: {reason}")]
    Poison { position: i64, reason: String },
    /// The database failed; the batch is retried.
    #[error("storage failure: {0}")]
    Storage(#[from] sqlx::Error),
    /// An append of the worker's output failed; the batch is retried.
    #[error("appending output: {0}")]
    Append(#[from] userstream_eventlog::AppendError),
    /// Another instance committed this batch first (it took over the
    /// lease); the batch is discarded and read again.
    #[error("{0}")]
    LostLease(String),
}

/// What a runner reports about itself.
#[derive(Debug, Clone, Default)]
pub struct RunnerStatus {
    pub position: i64,
    pub failure: Option<String>,
}

pub struct Runner<P> {
    log: SqlEventLog,
    /// Where the read model and its checkpoint live: the log's database,
    /// or a fresh one a replay builds.
    target: Db,
    projection: P,
    batch_size: i64,
    position: watch::Sender<i64>,
    failure: Arc<Mutex<Option<String>>>,
    /// SQLite only (no standby follows the stored checkpoint): how far past it
    /// the events were all ones this projection does not handle. Such
    /// batches move the position in memory without a write transaction; the
    /// checkpoint catches up with the next batch that writes, or after
    /// [`SKIP_LIMIT`] events. A restart reads the skipped events again and
    /// skips them again.
    skipped_to: Option<AtomicI64>,
}

/// Events a runner skips without storing its checkpoint.
const SKIP_LIMIT: i64 = 10_000;

/// A handle on a running projection: its checkpoint and its health.
#[derive(Clone)]
pub struct RunnerHandle {
    pub name: &'static str,
    position: watch::Receiver<i64>,
    failure: Arc<Mutex<Option<String>>>,
}

impl RunnerHandle {
    pub(crate) fn new(name: &'static str, position: watch::Receiver<i64>, failure: Arc<Mutex<Option<String>>>) -> Self {
        RunnerHandle { name, position, failure }
    }

    pub fn status(&self) -> RunnerStatus {
        RunnerStatus {
            position: *self.position.borrow(),
            failure: self.failure.lock().map(|f| f.clone()).unwrap_or(None),
        }
    }

    /// Waits until the checkpoint reaches `position`, at most `timeout`.
    /// Returns whether it did.
    pub async fn wait_for(&self, position: i64, timeout: Duration) -> bool {
        let mut rx = self.position.clone();
        tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position)).await.is_ok_and(|r| r.is_ok())
    }
}

impl<P: Projection> Runner<P> {
    /// Migrates the checkpoint table and the projection's own tables.
    pub async fn new(log: SqlEventLog, projection: P) -> Result<Self, sqlx::Error> {
        let target = log.db().clone();
        let mut runner = Self::with_target(log, target, projection).await?;
        if runner.target.dialect == Dialect::Sqlite {
            runner.skipped_to = Some(AtomicI64::new(0));
        }
        Ok(runner)
    }

    /// A runner that reads `log` and writes the read model (and its
    /// checkpoint) into `target`.
    pub async fn with_target(log: SqlEventLog, target: Db, projection: P) -> Result<Self, sqlx::Error> {
        let db = &target;
        db.migrate("checkpoints", MIGRATIONS).await?;
        db.migrate(projection.name(), projection.migrations()).await?;
        sqlx::query("INSERT INTO checkpoints (name, position) VALUES ($1, 0) ON CONFLICT DO NOTHING")
            .bind(projection.name())
            .execute(&db.pool)
            .await?;
        let position = read_checkpoint(db, projection.name()).await?;
        Ok(Runner {
            log,
            target,
            projection,
            batch_size: 2000,
            position: watch::channel(position).0,
            failure: Arc::new(Mutex::new(None)),
            skipped_to: None,
        })
    }

    pub fn with_batch_size(mut self, batch_size: i64) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    pub fn handle(&self) -> RunnerHandle {
        RunnerHandle {
            name: self.projection.name(),
            position: self.position.subscribe(),
            failure: self.failure.clone(),
        }
    }

    /// Runs until `cancel` fires or a poison event stops it. Wakes when this
    /// process appends, and polls every `poll` for appends by other processes.
    pub async fn run(self, cancel: CancellationToken, poll: Duration) {
        let mut head = self.log.watch_head();
        let mut backoff = Duration::from_millis(50);
        let mut lease = Lease::new(&self.target, format!("projection:{}", self.projection.name()));
        loop {
            if cancel.is_cancelled() {
                return;
            }
            if !lease.hold().await {
                follow_checkpoint(&self.target, self.projection.name(), &self.position).await;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(STANDBY_POLL) => continue,
                }
            }
            match self.step().await {
                Ok(0) => {
                    backoff = Duration::from_millis(50);
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = head.changed() => {}
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
                Ok(_) => backoff = Duration::from_millis(50),
                Err(ProjectionError::Poison { position, reason }) => {
                    let message = format!("stopped at poison event {position}: {reason}");
                    tracing::error!(projection = self.projection.name(), position, %reason, "projection stopped");
                    self.record_failure(&message).await;
                    return;
                }
                Err(e @ (ProjectionError::Storage(_) | ProjectionError::Append(_) | ProjectionError::LostLease(_))) => {
                    tracing::warn!(projection = self.projection.name(), error = %e, "projection batch failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn record_failure(&self, message: &str) {
        if let Ok(mut f) = self.failure.lock() {
            *f = Some(message.to_string());
        }
        record_failure(&self.target, self.projection.name(), message).await;
    }

    /// Applies one batch. Returns how many events it applied (0: nothing new,
    /// or another process holds the lease).
    pub async fn step(&self) -> Result<usize, ProjectionError> {
        self.step_until(i64::MAX).await
    }

    /// Applies one batch of the events up to position `until`.
    pub async fn step_until(&self, until: i64) -> Result<usize, ProjectionError> {
        let from = read_checkpoint(&self.target, self.projection.name()).await?;
        let skipped = self.skipped_to.as_ref().map_or(0, |s| s.load(Ordering::Relaxed));
        let mut events = self.log.read_all(from.max(skipped), self.batch_size).await?;
        events.retain(|e| e.position <= until);
        if let (Some(skip), Some(last)) = (&self.skipped_to, events.last().map(|e| e.position)) {
            if last - from < SKIP_LIMIT && !events.iter().any(|e| self.projection.handles(e)) {
                skip.store(last, Ordering::Relaxed);
                self.position.send_replace(last);
                return Ok(events.len());
            }
        }
        if events.is_empty() {
            report_position(&self.position, from.max(skipped));
            return Ok(0);
        }
        // Events skipped before `events` need nothing written: the
        // checkpoint moves over them with this batch.
        self.apply_from(from, &events).await
    }

    /// Applies `events` (the ones right after the checkpoint `from`) and
    /// moves the checkpoint, in one transaction; applies nothing when the
    /// checkpoint is no longer `from`. Returns how many it applied.
    pub async fn apply_from(&self, from: i64, events: &[RecordedEvent]) -> Result<usize, ProjectionError> {
        let db = &self.target;
        let name = self.projection.name();
        let Some(last) = events.last().map(|e| e.position) else {
            report_position(&self.position, from);
            return Ok(0);
        };
        let span = tracing::debug_span!("projection.batch", projection = name, from, to = last, events = events.len());
        async {
            let _turn = db.write_turn().await;
            let mut pooled = db.pool.acquire().await?;
            let conn = pooled.acquire().await?;
            conn.execute(db.begin_write()).await?;
            let outcome = async {
                let lease_sql = match db.dialect {
                    Dialect::Sqlite => "SELECT position FROM checkpoints WHERE name = $1",
                    Dialect::Postgres => "SELECT position FROM checkpoints WHERE name = $1 FOR UPDATE SKIP LOCKED",
                };
                let current: Option<i64> = sqlx::query_scalar(lease_sql).bind(name).fetch_optional(&mut *conn).await?;
                if current != Some(from) {
                    // Another runner holds the lease or moved the checkpoint: read again later.
                    return Ok(0);
                }
                self.projection.apply_batch(conn, db.dialect, events).await?;
                sqlx::query("UPDATE checkpoints SET position = $1 WHERE name = $2")
                    .bind(last)
                    .bind(name)
                    .execute(&mut *conn)
                    .await?;
                Ok(events.len())
            }
            .await;
            match outcome {
                Ok(0) => {
                    conn.execute("ROLLBACK").await?;
                    Ok(0)
                }
                Ok(n) => {
                    conn.execute("COMMIT").await?;
                    self.position.send_replace(last);
                    Ok(n)
                }
                Err(e) => {
                    let _ = conn.execute("ROLLBACK").await;
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// Stores why the worker `name` stopped in its checkpoint row (creating
/// the row if the worker keeps its position elsewhere).
pub(crate) async fn record_failure(db: &Db, name: &str, message: &str) {
    let stored = sqlx::query(
        "INSERT INTO checkpoints (name, position, failure) VALUES ($1, 0, $2) \
         ON CONFLICT (name) DO UPDATE SET failure = excluded.failure",
    )
    .bind(name)
    .bind(message)
    .execute(&db.pool)
    .await;
    if let Err(e) = stored {
        tracing::error!(worker = name, error = %e, "could not record the failure");
    }
}

pub(crate) async fn read_checkpoint(db: &Db, name: &str) -> Result<i64, sqlx::Error> {
    let position: Option<i64> = sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
        .bind(name)
        .fetch_optional(&db.pool)
        .await?;
    Ok(position.unwrap_or(0))
}
