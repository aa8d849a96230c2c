//! The membership engine: a reactor over the log that keeps rule groups'
//! members equal to the users whose attributes satisfy the rule, and records
//! every change as `group.membership_changed` (who joined, who left, which
//! event caused it).
//!
//! - **Incremental**: an attribute change re-evaluates only the groups whose
//!   conditions name that definition (an index definition → groups), for
//!   that user. A new user is checked only against rules an empty user can
//!   satisfy (`not_exists`, `neq` …). Archiving a user makes it leave every
//!   rule group; restoring re-evaluates it. Blocked users stay members:
//!   blocking is about access, a segment describes attributes.
//! - **Full evaluation**: a new rule generation (group created or its
//!   conditions changed) is evaluated over all users of the application,
//!   then `group.evaluated` marks the group active.
//! - **Exactly once** from the log's point of view: a batch is computed from
//!   the engine's own tables (never from other read models, which may be at
//!   other positions), its output appended with the idempotency key
//!   `engine:{first}:{last}` after recording that range as in flight, and
//!   its state written with the checkpoint in one transaction. After a crash
//!   the same range is computed again from the same state, gives the same
//!   output, and the log answers the append as a replay.
//! - **One engine at a time** across instances: it runs as a leased worker
//!   ([`crate::worker`]); should two ever overlap, the same range gives the
//!   same idempotency key, and the members read model applies joins and
//!   leaves idempotently.
//! - **Why its output is not decided by the group stream**: a group's
//!   `decide` would read the group's stream, which other commands move
//!   (a rename, a manual membership change) between a crash and the retry,
//!   so the retried batch could decide differently and the idempotent
//!   re-append would no longer hold. The engine's output is therefore a pure
//!   function of its own tables and the batch (`evaluate`); it appends with
//!   `ExpectedVersion::Any` and the members read model applies it as a
//!   set of joins and leaves.
//!
//! Modules: this file (the worker: batches, checkpoint, output append),
//! [`schema`] (its tables), `state` (the batch overlay, prefetched rows,
//! and the write with the checkpoint), `reads` (state as of the batch:
//! overlay first, then tables), `evaluate` (incremental and full evaluation).

mod evaluate;
mod reads;
pub mod schema;
mod state;

pub use schema::{MIGRATIONS, TABLES};
use state::{placeholders, CompiledRule, Overlay, Prefetched, RuleGroup};

use crate::worker::{self, Health, RunnerHandle, StepError, Turn, Worker};
use crate::ProjectionError;
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use userstream_domain::codec;
use userstream_domain::group::GroupEvent;
use userstream_eventlog::Dialect;
use userstream_eventlog::{AppendRequest, Db, EventLog, ExpectedVersion, NewEvent, SqlEventLog, StreamAppend, Tenant};

const NAME: &str = "membership";
const BATCH: i64 = 5000;
/// Users per `group.membership_changed` event of a full evaluation.
const USERS_PER_EVENT: usize = 5000;
const ROWS_PER_STATEMENT: usize = 128;

/// Events the engine moves past without storing its checkpoint (SQLite).
const SKIP_LIMIT: i64 = 10_000;

/// Output of a batch, per tenant: events per group stream.
type Output = BTreeMap<(String, String), BTreeMap<String, Vec<GroupEvent>>>;

pub struct Engine {
    log: SqlEventLog,
    db: Db,
    health: Health,
    /// Compiled rules by group id, with the generation they belong to.
    compiled: HashMap<String, (i64, Arc<CompiledRule>)>,
    /// Per application, the rule groups an empty user satisfies; cleared by
    /// any group or definition event.
    empty_matching: HashMap<String, Arc<Vec<String>>>,
    /// The committed rule groups, by (application, group): kept in memory
    /// (an application has thousands at most) and updated at each commit.
    groups: BTreeMap<(String, String), RuleGroup>,
    /// The current batch's reads of committed state.
    prefetched: Prefetched,
    /// How far past the stored checkpoint the events needed nothing written.
    skipped_to: i64,
    /// The stored `engine_state` row (position, batch in flight) as this
    /// process last read or wrote it; `None`: read it again (at start, after
    /// a failure). Only the lease's owner writes that row.
    stored: Option<(i64, Option<(i64, i64)>)>,
}

fn storage(e: sqlx::Error) -> ProjectionError {
    ProjectionError::Storage(e)
}

impl Engine {
    pub async fn new(log: SqlEventLog) -> Result<Engine, ProjectionError> {
        let db = log.db().clone();
        db.migrate("membership_engine", MIGRATIONS).await?;
        {
            let _turn = db.write_turn().await;
            sqlx::query(
                "INSERT INTO engine_state (name, position) VALUES ('membership', 0) ON CONFLICT (name) DO NOTHING",
            )
            .execute(&db.pool)
            .await?;
        }
        let mut engine = Engine {
            log,
            db,
            health: Health::new(NAME, 0),
            compiled: HashMap::new(),
            empty_matching: HashMap::new(),
            groups: BTreeMap::new(),
            prefetched: Prefetched::default(),
            skipped_to: 0,
            stored: None,
        };
        engine.reload().await?;
        Ok(engine)
    }

    /// Reads the committed state again (after another instance ran the engine).
    async fn reload(&mut self) -> Result<(), ProjectionError> {
        let position = self.committed_position().await?;
        let mut groups = BTreeMap::new();
        for r in sqlx::query("SELECT application_id, group_id, company_id, conditions, rule_version FROM engine_groups")
            .fetch_all(&self.db.pool)
            .await?
        {
            let text: String = r.try_get("conditions")?;
            groups.insert(
                (r.try_get("application_id")?, r.try_get("group_id")?),
                RuleGroup {
                    company_id: r.try_get("company_id")?,
                    conditions: serde_json::from_str(&text).unwrap_or_default(),
                    rule_version: r.try_get("rule_version")?,
                    deleted: false,
                },
            );
        }
        self.groups = groups;
        self.skipped_to = 0;
        self.stored = None;
        self.compiled.clear();
        self.empty_matching.clear();
        self.health.report_position(position);
        Ok(())
    }

    async fn committed_position(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT position FROM engine_state WHERE name = 'membership'").fetch_one(&self.db.pool).await
    }

    /// Its checkpoint, to wait for, and its health, as any projection's.
    pub fn handle(&self) -> RunnerHandle {
        self.health.handle()
    }

    /// Runs until cancelled while this process holds the engine's lease
    /// (standing by otherwise), as every worker does: see [`worker::run`].
    pub async fn run(self, cancel: CancellationToken, poll: Duration) {
        worker::run(self, cancel, poll).await
    }

    /// Processes one batch. Returns whether there was anything to do.
    pub async fn step(&mut self) -> Result<bool, ProjectionError> {
        let outcome = self.try_step().await;
        if outcome.is_err() {
            self.stored = None;
        }
        outcome
    }

    async fn try_step(&mut self) -> Result<bool, ProjectionError> {
        let (position, inflight) = match self.stored {
            Some(stored) => stored,
            None => {
                let row = sqlx::query(
                    "SELECT position, inflight_from, inflight_to FROM engine_state WHERE name = 'membership'",
                )
                .fetch_one(&self.db.pool)
                .await?;
                let inflight: (Option<i64>, Option<i64>) = (row.try_get("inflight_from")?, row.try_get("inflight_to")?);
                let stored = (row.try_get("position")?, inflight.0.zip(inflight.1));
                self.stored = Some(stored);
                stored
            }
        };
        let events = match inflight {
            Some((from, to)) => {
                let mut e = self.log.read_all(from - 1, to - from + 1).await?;
                e.retain(|e| e.position <= to);
                e
            }
            _ => self.log.read_all(position.max(self.skipped_to), BATCH).await?,
        };
        let (Some(first), Some(last)) = (events.first().map(|e| e.position), events.last().map(|e| e.position)) else {
            return Ok(false);
        };
        self.prefetched = self.prefetch(&events).await?;
        let mut overlay = Overlay::default();
        let mut output = Output::new();
        for event in &events {
            self.apply(event, &mut overlay, &mut output).await?;
        }
        self.evaluate_new_generations(&mut overlay, &mut output, last).await?;
        let appends = output.values().any(|streams| !streams.is_empty());
        if appends {
            {
                // In turn with the other writers: SQLite's own wait for a
                // busy write lock sleeps for milliseconds.
                let _turn = self.db.write_turn().await;
                sqlx::query("UPDATE engine_state SET inflight_from = $1, inflight_to = $2 WHERE name = 'membership'")
                    .bind(first)
                    .bind(last)
                    .execute(&self.db.pool)
                    .await?;
                self.stored = Some((position, Some((first, last))));
            }
            self.append(output, first, last).await?;
        }
        self.prefetched = Prefetched::default();
        if self.db.dialect == Dialect::Sqlite
            && inflight.is_none()
            && !appends
            && overlay.is_empty()
            && last - position < SKIP_LIMIT
        {
            // Nothing to write (its own membership events, say): move on in
            // memory; the checkpoint follows with the next batch that writes.
            self.skipped_to = last;
            self.health.report_position(last);
            return Ok(true);
        }
        let changed: Vec<((String, String), RuleGroup)> =
            overlay.groups.iter().map(|(k, g)| (k.clone(), g.clone())).collect();
        self.commit(overlay, position, last).await?;
        self.stored = Some((last, None));
        for (key, g) in changed {
            if g.deleted || g.conditions.is_empty() {
                self.groups.remove(&key);
            } else {
                self.groups.insert(key, g);
            }
        }
        self.health.report_position(last);
        Ok(true)
    }

    async fn append(&self, output: Output, first: i64, last: i64) -> Result<(), ProjectionError> {
        let now = OffsetDateTime::now_utc();
        for ((company_id, application_id), streams) in output {
            if streams.is_empty() {
                continue;
            }
            let request = AppendRequest {
                tenant: Tenant { company_id, application_id },
                actor: "membership-engine".into(),
                correlation_id: format!("engine:{first}:{last}"),
                causation_id: None,
                streams: streams
                    .into_iter()
                    .map(|(group_id, events)| StreamAppend {
                        stream: userstream_domain::StreamId::group(&group_id).to_string(),
                        expected: ExpectedVersion::Any,
                        events: events
                            .iter()
                            .map(|e| {
                                let encoded = codec::encode_group(e);
                                NewEvent {
                                    event_id: uuid::Uuid::now_v7(),
                                    event_type: encoded.event_type.to_string(),
                                    schema: i64::from(encoded.schema),
                                    occurred_at: now,
                                    data: encoded.data,
                                }
                            })
                            .collect(),
                    })
                    .collect(),
                reserve: vec![],
                release: vec![],
                idempotency_key: Some(format!("engine:{first}:{last}")),
            };
            self.log.append(request).await.map_err(ProjectionError::Append)?;
        }
        Ok(())
    }
}

impl Worker for Engine {
    type Error = ProjectionError;

    fn health(&self) -> &Health {
        &self.health
    }

    fn db(&self) -> &Db {
        &self.db
    }

    fn lease_name(&self) -> String {
        "membership-engine".into()
    }

    fn watch_head(&self) -> watch::Receiver<i64> {
        self.log.watch_head()
    }

    /// Reads the committed state: another instance may have run the engine,
    /// or a failed batch left the state in memory ahead of the tables.
    async fn resume(&mut self) -> Result<(), ProjectionError> {
        self.reload().await
    }

    async fn step(&mut self, _turn: &mut Turn) -> Result<bool, StepError<ProjectionError>> {
        Engine::step(self).await.map_err(StepError::from)
    }

    async fn follow(&mut self) {
        if let Ok(p) = self.committed_position().await {
            self.health.report_position(p);
        }
    }
}
