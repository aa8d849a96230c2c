//! The projection runner: reads the log in position order and applies each
//! event to a read model, committing the read-model writes and the checkpoint
//! in one transaction.
//!
//! Guarantees:
//! - **No skip, no double-apply**: a batch's writes and its checkpoint commit
//!   together; a crash anywhere in a batch rolls both back, and the batch is
//!   read again from the old checkpoint.
//! - **One runner per projection at a time** across processes on PostgreSQL:
//!   a runner works only while it holds the projection's lease ([`crate::worker`]); the
//!   others stand by, following the owner's checkpoint so their
//!   read-your-writes waits still end. As a second line, the batch
//!   transaction locks the checkpoint row (`FOR UPDATE SKIP LOCKED`) and
//!   applies nothing unless the checkpoint is where the batch started.
//! - **Poison events stop the projection**: an event the projection cannot
//!   apply is recorded (logged, and reported by [`crate::RunnerStatus`]) and the
//!   runner stops advancing; it never skips it.

use crate::worker::{self, read_checkpoint, Health, RunnerHandle, StepError, Turn, Worker};
use crate::Projection;
use sqlx::{Acquire, Executor};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use userstream_eventlog::{Db, Dialect, EventLog, Migration, RecordedEvent, SqlEventLog};

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
    /// Reading the event log failed; the batch is retried.
    #[error(transparent)]
    Log(#[from] userstream_eventlog::StorageError),
    /// An append of the worker's output failed; the batch is retried.
    #[error("appending output: {0}")]
    Append(#[from] userstream_eventlog::AppendError),
    /// Another instance committed this batch first (it took over the
    /// lease); the batch is discarded and read again.
    #[error("{0}")]
    LostLease(String),
}

pub struct Runner<P> {
    log: SqlEventLog,
    /// Where the read model and its checkpoint live: the log's database,
    /// or a fresh one a replay builds.
    target: Db,
    projection: P,
    batch_size: i64,
    health: Health,
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
        let name = projection.name();
        Ok(Runner { log, target, projection, batch_size: 2000, health: Health::new(name, position), skipped_to: None })
    }

    pub fn with_batch_size(mut self, batch_size: i64) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    pub fn handle(&self) -> RunnerHandle {
        self.health.handle()
    }

    /// Runs until `cancel` fires or a poison event stops it (see [`worker::run`]).
    pub async fn run(self, cancel: CancellationToken, poll: Duration) {
        worker::run(self, cancel, poll).await
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
                self.health.report_position(last);
                return Ok(events.len());
            }
        }
        if events.is_empty() {
            self.health.report_position(from.max(skipped));
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
            self.health.report_position(from);
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
                    self.health.report_position(last);
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

impl<P: Projection> Worker for Runner<P> {
    type Error = ProjectionError;

    fn health(&self) -> &Health {
        &self.health
    }

    fn db(&self) -> &Db {
        &self.target
    }

    fn lease_name(&self) -> String {
        format!("projection:{}", self.projection.name())
    }

    fn watch_head(&self) -> watch::Receiver<i64> {
        self.log.watch_head()
    }

    async fn step(&mut self, _turn: &mut Turn) -> Result<bool, StepError<ProjectionError>> {
        match Runner::step(self).await {
            Ok(applied) => Ok(applied > 0),
            Err(e) => Err(e.into()),
        }
    }

    async fn follow(&mut self) {
        self.health.follow_checkpoint(&self.target).await;
    }
}

impl From<ProjectionError> for StepError<ProjectionError> {
    fn from(e: ProjectionError) -> Self {
        match e {
            ProjectionError::Poison { position, reason } => {
                StepError::Stop(format!("stopped at poison event {position}: {reason}"))
            }
            e => StepError::Retry(e),
        }
    }
}
