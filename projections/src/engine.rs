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
//! - Several instances may each run an engine on one database (leases come
//!   with the events-out issue): the same range gives the same idempotency
//!   key, and the members read model applies joins and leaves idempotently.

use crate::probe;
use crate::worker::{self, Health, RunnerHandle, StepError, Turn, Worker};
use crate::ProjectionError;
use serde_json::Value;
use sqlx::{AnyConnection, Executor, Row};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use userstream_domain::attribute::{Definition, DefinitionEvent, ValuesEvent};
use userstream_domain::codec;
use userstream_domain::group::{Cause, GroupEvaluated, GroupEvent, MembershipChanged};
use userstream_domain::rules::{self, Compiled, Condition};
use userstream_domain::user::UserEvent;
use userstream_eventlog::{delete_pairs, Dialect};
use userstream_eventlog::{
    AppendRequest, Db, EventLog, ExpectedVersion, Migration, NewEvent, RecordedEvent, SqlEventLog, StreamAppend, Tenant,
};

const DDL: &str = "
    CREATE TABLE IF NOT EXISTS engine_state (
        name TEXT PRIMARY KEY,
        position BIGINT NOT NULL,
        inflight_from BIGINT,
        inflight_to BIGINT
    );
    CREATE TABLE IF NOT EXISTS engine_users (
        application_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        company_id TEXT NOT NULL,
        archived BIGINT NOT NULL,
        PRIMARY KEY (application_id, user_id)
    );
    CREATE TABLE IF NOT EXISTS engine_values (
        application_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        definition_id TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (application_id, user_id, definition_id)
    );
    CREATE INDEX IF NOT EXISTS engine_values_definition ON engine_values (application_id, definition_id);
    CREATE TABLE IF NOT EXISTS engine_definitions (
        application_id TEXT NOT NULL,
        definition_id TEXT NOT NULL,
        definition TEXT NOT NULL,
        PRIMARY KEY (application_id, definition_id)
    );
    CREATE TABLE IF NOT EXISTS engine_groups (
        application_id TEXT NOT NULL,
        group_id TEXT NOT NULL,
        company_id TEXT NOT NULL,
        conditions TEXT NOT NULL,
        rule_version BIGINT NOT NULL,
        PRIMARY KEY (application_id, group_id)
    );
    CREATE TABLE IF NOT EXISTS engine_group_definitions (
        application_id TEXT NOT NULL,
        definition_id TEXT NOT NULL,
        group_id TEXT NOT NULL,
        PRIMARY KEY (application_id, definition_id, group_id)
    );
    CREATE TABLE IF NOT EXISTS engine_members (
        group_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        PRIMARY KEY (group_id, user_id)
    );
    CREATE INDEX IF NOT EXISTS engine_members_user ON engine_members (user_id);";

/// Typed copies of each value (as the attributes read model has them) with
/// indexes, so a new rule is evaluated from an index range instead of every
/// stored value; filled in for the values already there.
const TYPED_SQLITE: &str = "
    ALTER TABLE engine_values ADD COLUMN num_value REAL;
    ALTER TABLE engine_values ADD COLUMN text_value TEXT;
    UPDATE engine_values SET
        num_value = CASE WHEN json_type(value) IN ('integer', 'real') THEN json_extract(value, '$') END,
        text_value = CASE json_type(value) WHEN 'text' THEN json_extract(value, '$') WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' END;
    DROP INDEX IF EXISTS engine_values_definition;
    CREATE INDEX engine_values_definition ON engine_values (application_id, definition_id, user_id);
    CREATE INDEX engine_values_num ON engine_values (application_id, definition_id, num_value, user_id);
    CREATE INDEX engine_values_text ON engine_values (application_id, definition_id, text_value, user_id);";
const TYPED_POSTGRES: &str = "
    ALTER TABLE engine_values ADD COLUMN num_value DOUBLE PRECISION;
    ALTER TABLE engine_values ADD COLUMN text_value TEXT;
    UPDATE engine_values SET
        num_value = CASE WHEN jsonb_typeof(value::jsonb) = 'number' THEN (value::jsonb #>> '{}')::double precision END,
        text_value = CASE WHEN jsonb_typeof(value::jsonb) IN ('string', 'boolean') THEN value::jsonb #>> '{}' END;
    DROP INDEX IF EXISTS engine_values_definition;
    CREATE INDEX engine_values_definition ON engine_values (application_id, definition_id, user_id);
    CREATE INDEX engine_values_num ON engine_values (application_id, definition_id, num_value, user_id);
    CREATE INDEX engine_values_text ON engine_values (application_id, definition_id, text_value, user_id);";

/// The typed values beside each (definition, user), so a new rule reads
/// its users' index keys without a table row; archived users by index.
const COVERING: &str = "
    DROP INDEX IF EXISTS engine_values_definition;
    CREATE INDEX IF NOT EXISTS engine_values_by_definition ON engine_values (application_id, definition_id, user_id, num_value, text_value);
    CREATE INDEX IF NOT EXISTS engine_users_archived ON engine_users (application_id, archived);";

pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, sqlite: DDL, postgres: DDL },
    Migration { version: 2, sqlite: TYPED_SQLITE, postgres: TYPED_POSTGRES },
    Migration { version: 3, sqlite: COVERING, postgres: COVERING },
];

/// The engine's tables, for rebuilds and comparisons.
pub const TABLES: &[&str] = &[
    "engine_state",
    "engine_users",
    "engine_values",
    "engine_definitions",
    "engine_groups",
    "engine_group_definitions",
    "engine_members",
];

const NAME: &str = "membership";
const BATCH: i64 = 1000;
/// Users per `group.membership_changed` event of a full evaluation.
const USERS_PER_EVENT: usize = 5000;
const ROWS_PER_STATEMENT: usize = 400;

/// A rule group as the engine holds it.
#[derive(Debug, Clone)]
struct RuleGroup {
    company_id: String,
    conditions: Vec<Condition>,
    rule_version: i64,
    deleted: bool,
}

/// A rule generation compiled once: its conditions, and whether a user
/// without any value satisfies it.
struct CompiledRule {
    rule: Vec<Compiled>,
    matches_empty: bool,
}

/// Everything a batch changes, applied with the checkpoint in one transaction.
#[derive(Default)]
struct Overlay {
    users: BTreeMap<(String, String), (String, bool)>,
    /// `None` = value deleted.
    values: BTreeMap<(String, String, String), Option<Value>>,
    deleted_definitions: Vec<(String, String)>,
    definitions: BTreeMap<(String, String), Definition>,
    groups: BTreeMap<(String, String), RuleGroup>,
    /// Per group: user → member or not, after the batch.
    members: BTreeMap<String, BTreeMap<String, bool>>,
    /// Groups whose members are all gone (deleted or turned manual).
    cleared: BTreeSet<String>,
}

/// The committed state of the users a batch touches, read with three
/// queries per [`ROWS_PER_STATEMENT`] users instead of three per event.
#[derive(Default)]
struct Prefetched {
    /// (application, user) pairs read; a missing entry below means "none".
    covered: HashSet<(String, String)>,
    values: HashMap<(String, String), HashMap<String, Value>>,
    archived: HashMap<(String, String), bool>,
    /// User → the rule groups it is a member of.
    members: HashMap<String, BTreeSet<String>>,
}

/// `$first, $first+1, …` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

impl Overlay {
    fn is_empty(&self) -> bool {
        self.users.is_empty()
            && self.values.is_empty()
            && self.deleted_definitions.is_empty()
            && self.definitions.is_empty()
            && self.groups.is_empty()
            && self.members.is_empty()
            && self.cleared.is_empty()
    }
}

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

    // -- reading state: the overlay first, then the engine's tables ----------

    /// Reads the committed values, status and memberships of every user
    /// whose events in `events` may need a re-evaluation.
    async fn prefetch(&self, events: &[RecordedEvent]) -> Result<Prefetched, sqlx::Error> {
        let mut by_app: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for e in events {
            let user = match e.stream.strip_prefix("user-") {
                Some(u)
                    if matches!(
                        e.event_type.as_str(),
                        codec::USER_CREATED | codec::USER_ARCHIVED | codec::USER_RESTORED
                    ) =>
                {
                    u
                }
                Some(_) => continue,
                None => match e.stream.strip_prefix("attrs-") {
                    Some(u) => u,
                    None => continue,
                },
            };
            by_app.entry(e.application_id.as_str()).or_default().insert(user);
        }
        let mut out = Prefetched::default();
        for (app, users) in by_app {
            let users: Vec<&str> = users.into_iter().collect();
            for chunk in users.chunks(ROWS_PER_STATEMENT) {
                let list = placeholders(2, chunk.len());
                let sql = format!("SELECT user_id, definition_id, value FROM engine_values WHERE application_id = $1 AND user_id IN ({list})");
                let mut q = sqlx::query(&sql).bind(app);
                for u in chunk {
                    q = q.bind(*u);
                }
                for r in q.fetch_all(&self.db.pool).await? {
                    let text: String = r.try_get("value")?;
                    out.values
                        .entry((app.to_string(), r.try_get("user_id")?))
                        .or_default()
                        .insert(r.try_get("definition_id")?, serde_json::from_str(&text).unwrap_or(Value::Null));
                }
                let sql = format!(
                    "SELECT user_id, archived FROM engine_users WHERE application_id = $1 AND user_id IN ({list})"
                );
                let mut q = sqlx::query(&sql).bind(app);
                for u in chunk {
                    q = q.bind(*u);
                }
                for r in q.fetch_all(&self.db.pool).await? {
                    out.archived
                        .insert((app.to_string(), r.try_get("user_id")?), r.try_get::<i64, _>("archived")? != 0);
                }
                let sql = format!(
                    "SELECT user_id, group_id FROM engine_members WHERE user_id IN ({})",
                    placeholders(1, chunk.len())
                );
                let mut q = sqlx::query(&sql);
                for u in chunk {
                    q = q.bind(*u);
                }
                for r in q.fetch_all(&self.db.pool).await? {
                    out.members.entry(r.try_get("user_id")?).or_default().insert(r.try_get("group_id")?);
                }
                out.covered.extend(chunk.iter().map(|u| (app.to_string(), u.to_string())));
            }
        }
        Ok(out)
    }

    async fn group(&self, overlay: &Overlay, app: &str, group_id: &str) -> Result<Option<RuleGroup>, sqlx::Error> {
        let key = (app.to_string(), group_id.to_string());
        Ok(overlay.groups.get(&key).or_else(|| self.groups.get(&key)).cloned())
    }

    /// Live rule groups of the application (committed, then the batch's changes).
    fn rule_groups<'a>(
        &'a self,
        overlay: &'a Overlay,
        app: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a RuleGroup)> + 'a {
        let committed = self
            .groups
            .range((app.to_string(), String::new())..)
            .take_while(move |((a, _), _)| a == app)
            .filter(move |(k, _)| !overlay.groups.contains_key(*k));
        let batch = overlay.groups.iter().filter(move |((a, _), _)| a == app);
        committed.chain(batch).filter(|(_, g)| !g.deleted && !g.conditions.is_empty()).map(|((_, id), g)| (id, g))
    }

    /// Rule groups of the application whose conditions name `definition_id`.
    async fn groups_using(
        &self,
        overlay: &Overlay,
        app: &str,
        definition_id: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        Ok(self
            .rule_groups(overlay, app)
            .filter(|(_, g)| g.conditions.iter().any(|c| c.user_attribute_definition_id == definition_id))
            .map(|(id, _)| id.clone())
            .collect())
    }

    async fn all_rule_groups(&self, overlay: &Overlay, app: &str) -> Result<Vec<String>, sqlx::Error> {
        Ok(self.rule_groups(overlay, app).map(|(id, _)| id.clone()).collect())
    }

    async fn definition(&self, overlay: &Overlay, app: &str, id: &str) -> Result<Option<Definition>, sqlx::Error> {
        if let Some(d) = overlay.definitions.get(&(app.to_string(), id.to_string())) {
            return Ok(Some(d.clone()));
        }
        let text = sqlx::query_scalar::<_, String>(
            "SELECT definition FROM engine_definitions WHERE application_id = $1 AND definition_id = $2",
        )
        .bind(app)
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// The compiled rule of a group generation; a rule that no longer
    /// compiles (a definition changed under it) matches nobody.
    async fn rule(
        &mut self,
        overlay: &Overlay,
        app: &str,
        group_id: &str,
        g: &RuleGroup,
    ) -> Result<Arc<CompiledRule>, sqlx::Error> {
        if let Some((version, r)) = self.compiled.get(group_id) {
            if *version == g.rule_version {
                return Ok(r.clone());
            }
        }
        let mut defs = Vec::new();
        for c in &g.conditions {
            if let Some(d) = self.definition(overlay, app, &c.user_attribute_definition_id).await? {
                defs.push(d);
            }
        }
        let compiled = rules::compile(&g.conditions, |id| defs.iter().find(|d| d.id == id)).unwrap_or_else(|e| {
            tracing::warn!(group_id, error = %e, "rule does not compile; it matches nobody");
            Vec::new()
        });
        if self.compiled.len() > 100_000 {
            self.compiled.clear();
            self.empty_matching.clear();
        }
        let matches_empty = !compiled.is_empty() && rules::matches(&compiled, |_| None);
        let compiled = Arc::new(CompiledRule { rule: compiled, matches_empty });
        self.compiled.insert(group_id.to_string(), (g.rule_version, compiled.clone()));
        Ok(compiled)
    }

    async fn user_values(
        &self,
        overlay: &Overlay,
        app: &str,
        user: &str,
    ) -> Result<HashMap<String, Value>, sqlx::Error> {
        let key = (app.to_string(), user.to_string());
        let mut values = HashMap::new();
        if self.prefetched.covered.contains(&key) {
            if let Some(v) = self.prefetched.values.get(&key) {
                values = v.clone();
            }
        } else {
            let rows = sqlx::query(
                "SELECT definition_id, value FROM engine_values WHERE application_id = $1 AND user_id = $2",
            )
            .bind(app)
            .bind(user)
            .fetch_all(&self.db.pool)
            .await?;
            for r in rows {
                let text: String = r.try_get("value")?;
                values.insert(r.try_get("definition_id")?, serde_json::from_str(&text).unwrap_or(Value::Null));
            }
        }
        for (def_app, def) in &overlay.deleted_definitions {
            if def_app == app {
                values.remove(def);
            }
        }
        for ((a, u, d), v) in overlay.values.range((app.to_string(), user.to_string(), String::new())..) {
            if a != app || u != user {
                break;
            }
            match v {
                Some(v) => values.insert(d.clone(), v.clone()),
                None => values.remove(d),
            };
        }
        Ok(values)
    }

    /// The rule groups a user is a member of, as committed.
    async fn memberships(&self, app: &str, user: &str) -> Result<BTreeSet<String>, sqlx::Error> {
        if self.prefetched.covered.contains(&(app.to_string(), user.to_string())) {
            return Ok(self.prefetched.members.get(user).cloned().unwrap_or_default());
        }
        Ok(sqlx::query_scalar::<_, String>("SELECT group_id FROM engine_members WHERE user_id = $1")
            .bind(user)
            .fetch_all(&self.db.pool)
            .await?
            .into_iter()
            .collect())
    }

    fn is_member(overlay: &Overlay, committed: &BTreeSet<String>, group_id: &str, user: &str) -> bool {
        if let Some(m) = overlay.members.get(group_id).and_then(|m| m.get(user)) {
            return *m;
        }
        !overlay.cleared.contains(group_id) && committed.contains(group_id)
    }

    async fn archived(&self, overlay: &Overlay, app: &str, user: &str) -> Result<Option<bool>, sqlx::Error> {
        let key = (app.to_string(), user.to_string());
        if let Some((_, a)) = overlay.users.get(&key) {
            return Ok(Some(*a));
        }
        if self.prefetched.covered.contains(&key) {
            return Ok(self.prefetched.archived.get(&key).copied());
        }
        let row = sqlx::query_scalar::<_, i64>(
            "SELECT archived FROM engine_users WHERE application_id = $1 AND user_id = $2",
        )
        .bind(app)
        .bind(user)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(row.map(|a| a != 0))
    }

    // -- deciding ------------------------------------------------------------

    /// Re-evaluates `groups` for one user and records joins and leaves.
    async fn reevaluate(
        &mut self,
        overlay: &mut Overlay,
        output: &mut Output,
        event: &RecordedEvent,
        user: &str,
        groups: &[String],
    ) -> Result<(), sqlx::Error> {
        if groups.is_empty() {
            return Ok(());
        }
        let app = event.application_id.as_str();
        let live = self.archived(overlay, app, user).await? == Some(false);
        let values = if live { self.user_values(overlay, app, user).await? } else { HashMap::new() };
        let committed = self.memberships(app, user).await?;
        for group_id in groups {
            let Some(g) = self.group(overlay, app, group_id).await? else {
                continue;
            };
            if g.deleted || g.conditions.is_empty() {
                continue;
            }
            let rule = self.rule(overlay, app, group_id, &g).await?;
            let should = live && !rule.rule.is_empty() && rules::matches(&rule.rule, |id| values.get(id));
            let is = Self::is_member(overlay, &committed, group_id, user);
            if should != is {
                overlay.members.entry(group_id.clone()).or_default().insert(user.to_string(), should);
                let change = MembershipChanged {
                    group_id: group_id.clone(),
                    joined: if should { vec![user.to_string()] } else { vec![] },
                    left: if should { vec![] } else { vec![user.to_string()] },
                    unmatched: 0,
                    cause: Cause::Event { position: event.position, event_type: event.event_type.clone() },
                    at: event.occurred_at,
                };
                output
                    .entry((g.company_id.clone(), app.to_string()))
                    .or_default()
                    .entry(group_id.clone())
                    .or_default()
                    .push(GroupEvent::MembershipChanged(change));
            }
        }
        Ok(())
    }

    /// Groups an empty (new) user can satisfy.
    async fn groups_matching_empty(&mut self, overlay: &Overlay, app: &str) -> Result<Arc<Vec<String>>, sqlx::Error> {
        if let Some(cached) = self.empty_matching.get(app) {
            return Ok(cached.clone());
        }
        let candidates: Vec<(String, RuleGroup)> =
            self.rule_groups(overlay, app).map(|(id, g)| (id.clone(), g.clone())).collect();
        let mut out = Vec::new();
        for (id, g) in candidates {
            let cached = self.compiled.get(&id).filter(|(v, _)| *v == g.rule_version).map(|(_, r)| r.matches_empty);
            let matches_empty = match cached {
                Some(m) => m,
                None => self.rule(overlay, app, &id, &g).await?.matches_empty,
            };
            if matches_empty {
                out.push(id);
            }
        }
        let out = Arc::new(out);
        self.empty_matching.insert(app.to_string(), out.clone());
        Ok(out)
    }

    async fn apply(
        &mut self,
        event: &RecordedEvent,
        overlay: &mut Overlay,
        output: &mut Output,
    ) -> Result<(), ProjectionError> {
        let app = event.application_id.clone();
        let poison =
            |e: codec::DecodeError| ProjectionError::Poison { position: event.position, reason: e.to_string() };
        if let Some(user) = event.stream.strip_prefix("user-") {
            let decoded = userstream_domain::decode(&event.event_type, event.schema as u32, event.data.as_str())
                .map_err(poison)?;
            let key = (app.clone(), user.to_string());
            match decoded {
                UserEvent::Created(_) => {
                    overlay.users.insert(key, (event.company_id.clone(), false));
                    let groups = self.groups_matching_empty(overlay, &app).await?;
                    self.reevaluate(overlay, output, event, user, &groups).await?;
                }
                UserEvent::Archived(_) | UserEvent::Restored(_) => {
                    let archived = matches!(decoded, UserEvent::Archived(_));
                    overlay.users.insert(key, (event.company_id.clone(), archived));
                    let groups = self.all_rule_groups(overlay, &app).await?;
                    self.reevaluate(overlay, output, event, user, &groups).await?;
                }
                _ => {}
            }
        } else if let Some(user) = event.stream.strip_prefix("attrs-") {
            let decoded =
                codec::decode_values(&event.event_type, event.schema as u32, event.data.as_str()).map_err(poison)?;
            let (definition_id, value) = match decoded {
                ValuesEvent::Upserted(e) => (e.definition_id, Some(e.value)),
                ValuesEvent::Deleted(e) => (e.definition_id, None),
            };
            overlay.values.insert((app.clone(), user.to_string(), definition_id.clone()), value);
            let groups = self.groups_using(overlay, &app, &definition_id).await?;
            self.reevaluate(overlay, output, event, user, &groups).await?;
        } else if event.stream.starts_with("attrdef-") {
            match codec::decode_definition(&event.event_type, event.schema as u32, event.data.as_str())
                .map_err(poison)?
            {
                DefinitionEvent::Created(e) | DefinitionEvent::Updated(e) => {
                    self.compiled.clear();
                    self.empty_matching.clear();
                    overlay.definitions.insert((app, e.definition.id.clone()), e.definition);
                }
                DefinitionEvent::Deleted(e) => {
                    self.compiled.clear();
                    self.empty_matching.clear();
                    overlay.values.retain(|(a, _, d), _| !(a == &app && d == &e.definition_id));
                    overlay.deleted_definitions.push((app, e.definition_id));
                }
            }
        } else if let Some(group_id) = event.stream.strip_prefix("group-") {
            let decoded =
                codec::decode_group(&event.event_type, event.schema as u32, event.data.as_str()).map_err(poison)?;
            if !matches!(decoded, GroupEvent::MembershipChanged(_) | GroupEvent::Evaluated(_)) {
                self.empty_matching.remove(&app);
            }
            match decoded {
                GroupEvent::Created(e) | GroupEvent::Updated(e) => {
                    let was_rule = self.group(overlay, &app, group_id).await?.is_some_and(|g| !g.conditions.is_empty());
                    overlay.groups.insert(
                        (app.clone(), group_id.to_string()),
                        RuleGroup {
                            company_id: event.company_id.clone(),
                            conditions: e.details.conditions.clone(),
                            rule_version: e.rule_version,
                            deleted: false,
                        },
                    );
                    if was_rule && !e.details.is_rule() {
                        self.release_all(overlay, output, event, group_id).await?;
                    }
                }
                GroupEvent::Deleted(_) => {
                    overlay.groups.insert(
                        (app.clone(), group_id.to_string()),
                        RuleGroup {
                            company_id: event.company_id.clone(),
                            conditions: vec![],
                            rule_version: 0,
                            deleted: true,
                        },
                    );
                    overlay.members.remove(group_id);
                    overlay.cleared.insert(group_id.to_string());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A rule group turned manual: every rule member leaves.
    async fn release_all(
        &self,
        overlay: &mut Overlay,
        output: &mut Output,
        event: &RecordedEvent,
        group_id: &str,
    ) -> Result<(), sqlx::Error> {
        let mut members: BTreeSet<String> =
            sqlx::query_scalar::<_, String>("SELECT user_id FROM engine_members WHERE group_id = $1")
                .bind(group_id)
                .fetch_all(&self.db.pool)
                .await?
                .into_iter()
                .collect();
        for (u, m) in overlay.members.remove(group_id).unwrap_or_default() {
            if m {
                members.insert(u);
            } else {
                members.remove(&u);
            }
        }
        overlay.cleared.insert(group_id.to_string());
        let left: Vec<String> = members.into_iter().collect();
        let streams = output.entry((event.company_id.clone(), event.application_id.clone())).or_default();
        let cause = Cause::Event { position: event.position, event_type: event.event_type.clone() };
        let events = streams.entry(group_id.to_string()).or_default();
        push_changes(events, group_id, &[], &left, &cause, event.occurred_at);
        Ok(())
    }

    /// Evaluates every rule generation the batch created over all users of
    /// its application, then marks it evaluated.
    async fn evaluate_new_generations(
        &mut self,
        overlay: &mut Overlay,
        output: &mut Output,
        last: i64,
    ) -> Result<(), ProjectionError> {
        let fresh: Vec<((String, String), RuleGroup)> = overlay
            .groups
            .iter()
            .filter(|(_, g)| !g.deleted && !g.conditions.is_empty())
            .map(|(k, g)| (k.clone(), g.clone()))
            .collect();
        for ((app, group_id), g) in fresh {
            let stored = sqlx::query_scalar::<_, i64>(
                "SELECT rule_version FROM engine_groups WHERE application_id = $1 AND group_id = $2",
            )
            .bind(&app)
            .bind(&group_id)
            .fetch_optional(&self.db.pool)
            .await?;
            if stored == Some(g.rule_version) {
                continue;
            }
            let rule = self.rule(overlay, &app, &group_id, &g).await?;
            let matching = self.matching_users(overlay, &app, &rule.rule).await?;
            let mut current: BTreeSet<String> = if overlay.cleared.contains(&group_id) {
                BTreeSet::new()
            } else {
                sqlx::query_scalar::<_, String>("SELECT user_id FROM engine_members WHERE group_id = $1")
                    .bind(&group_id)
                    .fetch_all(&self.db.pool)
                    .await?
                    .into_iter()
                    .collect()
            };
            for (u, m) in overlay.members.get(&group_id).cloned().unwrap_or_default() {
                if m {
                    current.insert(u);
                } else {
                    current.remove(&u);
                }
            }
            let joined: Vec<String> = matching.difference(&current).cloned().collect();
            let left: Vec<String> = current.difference(&matching).cloned().collect();
            let members = overlay.members.entry(group_id.clone()).or_default();
            for u in &joined {
                members.insert(u.clone(), true);
            }
            for u in &left {
                members.insert(u.clone(), false);
            }
            let now = OffsetDateTime::now_utc();
            let events =
                output.entry((g.company_id.clone(), app.clone())).or_default().entry(group_id.clone()).or_default();
            let cause = Cause::Evaluation { rule_version: g.rule_version };
            push_changes(events, &group_id, &joined, &left, &cause, now);
            events.push(GroupEvent::Evaluated(GroupEvaluated {
                group_id: group_id.clone(),
                rule_version: g.rule_version,
                at: now,
            }));
            tracing::debug!(group_id, joined = joined.len(), left = left.len(), last, "rule evaluated");
        }
        Ok(())
    }

    /// Every live user of the application the rule matches, from the engine's
    /// tables plus the batch's overlay.
    async fn matching_users(
        &self,
        overlay: &Overlay,
        app: &str,
        rule: &[Compiled],
    ) -> Result<BTreeSet<String>, sqlx::Error> {
        if rule.is_empty() {
            return Ok(BTreeSet::new());
        }
        let definitions: BTreeSet<&str> = rule.iter().map(|c| c.definition_id.as_str()).collect();
        let mut values: HashMap<String, HashMap<String, Value>> = HashMap::new();
        let deleted = |d: &str| overlay.deleted_definitions.iter().any(|(a, id)| a == app && id == d);
        // A rule an empty user cannot satisfy needs a value its probe finds:
        // only those users (and the batch's) are candidates.
        let driver = rule
            .iter()
            .filter(|c| !deleted(&c.definition_id))
            .filter_map(|c| c.probe().map(|p| (c, p)))
            .min_by_key(|(_, p)| probe::rank(p));
        // Users matched from the index keys alone (archived ones still to drop).
        let mut keyed: Vec<String> = Vec::new();
        match driver {
            Some((c, p)) if !rules::matches(rule, |_| None) => {
                let defs: Vec<&str> = definitions.iter().copied().filter(|d| !deleted(d)).collect();
                // The batch's changes may make others match: read theirs in full.
                let touched: BTreeSet<String> = overlay
                    .values
                    .keys()
                    .filter(|(a, _, d)| a == app && definitions.contains(d.as_str()))
                    .map(|(_, u, _)| u.clone())
                    .collect();
                let mut candidates = BTreeSet::new();
                if rule.iter().all(|c| c.holds_keys(None).is_some()) {
                    keyed = self.matching_by_keys(app, rule, (c, &p), &defs).await?;
                    keyed.retain(|u| !touched.contains(u));
                } else {
                    let mut next = 3;
                    let mut binds = Vec::new();
                    let condition = probe::sql(&p, "v", false, &mut next, &mut binds);
                    let sql = format!("SELECT v.user_id FROM engine_values v WHERE v.application_id = $1 AND v.definition_id = $2{condition}");
                    let query = probe::bind(sqlx::query(&sql).bind(app).bind(&c.definition_id), &binds);
                    for r in query.fetch_all(&self.db.pool).await? {
                        candidates.insert(r.try_get::<String, _>("user_id")?);
                    }
                }
                candidates.extend(touched);
                let candidates: Vec<String> = candidates.into_iter().collect();
                for chunk in candidates.chunks(ROWS_PER_STATEMENT) {
                    let sql = format!(
                        "SELECT user_id, definition_id, value FROM engine_values WHERE application_id = $1 AND user_id IN ({}) AND definition_id IN ({})",
                        placeholders(2, chunk.len()),
                        placeholders(2 + chunk.len(), defs.len())
                    );
                    let mut q = sqlx::query(&sql).bind(app);
                    for u in chunk {
                        q = q.bind(u.as_str());
                    }
                    for d in &defs {
                        q = q.bind(*d);
                    }
                    for r in q.fetch_all(&self.db.pool).await? {
                        let text: String = r.try_get("value")?;
                        values
                            .entry(r.try_get("user_id")?)
                            .or_default()
                            .insert(r.try_get("definition_id")?, serde_json::from_str(&text).unwrap_or(Value::Null));
                    }
                }
            }
            _ => {
                for d in &definitions {
                    if deleted(d) {
                        continue;
                    }
                    let rows = sqlx::query(
                        "SELECT user_id, value FROM engine_values WHERE application_id = $1 AND definition_id = $2",
                    )
                    .bind(app)
                    .bind(*d)
                    .fetch_all(&self.db.pool)
                    .await?;
                    for r in rows {
                        let text: String = r.try_get("value")?;
                        values
                            .entry(r.try_get("user_id")?)
                            .or_default()
                            .insert(d.to_string(), serde_json::from_str(&text).unwrap_or(Value::Null));
                    }
                }
            }
        }
        for ((a, u, d), v) in &overlay.values {
            if a == app && definitions.contains(d.as_str()) {
                let entry = values.entry(u.clone()).or_default();
                match v {
                    Some(v) => entry.insert(d.clone(), v.clone()),
                    None => entry.remove(d),
                };
            }
        }
        // Archived users are few: load those, not the live ones.
        let mut archived: BTreeSet<String> = sqlx::query_scalar::<_, String>(
            "SELECT user_id FROM engine_users WHERE application_id = $1 AND archived = 1",
        )
        .bind(app)
        .fetch_all(&self.db.pool)
        .await?
        .into_iter()
        .collect();
        for ((a, u), (_, gone)) in &overlay.users {
            if a == app {
                if *gone {
                    archived.insert(u.clone());
                } else {
                    archived.remove(u);
                }
            }
        }
        let empty = HashMap::new();
        let matches = |u: &String| {
            let vals = values.get(u).unwrap_or(&empty);
            !archived.contains(u) && rules::matches(rule, |id| vals.get(id))
        };
        if !rules::matches(rule, |_| None) {
            // Only users with values can match: no need to list every user.
            let mut found: BTreeSet<String> = values.keys().filter(|u| matches(u)).cloned().collect();
            found.extend(keyed.into_iter().filter(|u| !archived.contains(u)));
            return Ok(found);
        }
        let mut all: BTreeSet<String> =
            sqlx::query_scalar::<_, String>("SELECT user_id FROM engine_users WHERE application_id = $1")
                .bind(app)
                .fetch_all(&self.db.pool)
                .await?
                .into_iter()
                .collect();
        all.extend(overlay.users.keys().filter(|(a, _)| a == app).map(|(_, u)| u.clone()));
        Ok(all.into_iter().filter(|u| matches(u)).collect())
    }

    /// The users with a value the driver's probe finds for whom every
    /// condition holds, decided from the typed index keys of their values
    /// (`holds_keys`: the rule has no multi-value definition), read in one
    /// query over covering indexes: no value is parsed and no table row read.
    /// `defs` are the rule's live definitions.
    async fn matching_by_keys(
        &self,
        app: &str,
        rule: &[Compiled],
        driver: (&Compiled, &rules::Probe),
        defs: &[&str],
    ) -> Result<Vec<String>, sqlx::Error> {
        let (c, p) = driver;
        // The driver's probe admits numbers only or text only: read just
        // that key, so the (definition, number|text, user) index covers it.
        let (n0, t0) = match p {
            rules::Probe::Range { .. } | rules::Probe::Numbers(_) => ("v0.num_value", "NULL"),
            rules::Probe::Texts(_) => ("NULL", "v0.text_value"),
            rules::Probe::Exists => ("v0.num_value", "v0.text_value"),
        };
        let others: Vec<&str> = defs.iter().copied().filter(|d| *d != c.definition_id).collect();
        let mut columns = format!("v0.user_id, {n0}, {t0}");
        let mut joins = String::new();
        for (i, _) in others.iter().enumerate() {
            let a = format!("v{}", i + 1);
            columns.push_str(&format!(", {a}.user_id, {a}.num_value, {a}.text_value"));
            // A one-point range keeps SQLite on the covering index (see
            // `AttributesQuery::scan`).
            joins.push_str(&format!(
                " LEFT JOIN engine_values {a} ON {a}.application_id = v0.application_id AND {a}.definition_id = ${} AND {a}.user_id >= v0.user_id AND {a}.user_id <= v0.user_id",
                i + 3
            ));
        }
        let mut next = others.len() + 3;
        let mut binds = Vec::new();
        let condition = probe::sql(p, "v0", false, &mut next, &mut binds);
        let sql = format!(
            "SELECT {columns} FROM engine_values v0{joins} WHERE v0.application_id = $1 AND v0.definition_id = $2{condition}"
        );
        let mut query = sqlx::query(&sql).bind(app).bind(&c.definition_id);
        for d in &others {
            query = query.bind(*d);
        }
        let rows = probe::bind(query, &binds).fetch_all(&self.db.pool).await?;
        // Each definition's (user id, number, text) columns: the user id is
        // NULL when the left join found no value (a JSON value has no keys).
        let column = |d: &str| {
            if d == c.definition_id {
                Some(0)
            } else {
                others.iter().position(|o| *o == d).map(|i| 3 + 3 * i)
            }
        };
        let mut found = Vec::new();
        for r in &rows {
            let mut holds = true;
            for condition in rule {
                let keys = match column(&condition.definition_id) {
                    Some(i) => {
                        let present: Option<String> = r.try_get(i)?;
                        let number: Option<f64> = r.try_get(i + 1)?;
                        let text: Option<String> = r.try_get(i + 2)?;
                        present.map(|_| (number, text))
                    }
                    None => None,
                };
                let keys = keys.as_ref().map(|(n, t)| (*n, t.as_deref()));
                if condition.holds_keys(keys) != Some(true) {
                    holds = false;
                    break;
                }
            }
            if holds {
                found.push(r.try_get::<String, _>(0)?);
            }
        }
        Ok(found)
    }

    // -- writing state with the checkpoint -----------------------------------

    async fn commit(&self, overlay: Overlay, from: i64, last: i64) -> Result<(), ProjectionError> {
        let _turn = self.db.write_turn().await;
        let mut conn = self.db.pool.acquire().await.map_err(storage)?;
        conn.execute(self.db.begin_write()).await?;
        let result = write_overlay(&mut conn, &overlay, from, last).await;
        match result {
            Ok(()) => {
                conn.execute("COMMIT").await?;
                Ok(())
            }
            Err(e) => {
                let _ = conn.execute("ROLLBACK").await;
                Err(e)
            }
        }
    }
}

/// Membership events for many joins and leaves: at most [`USERS_PER_EVENT`]
/// users each, joins first.
fn push_changes(
    events: &mut Vec<GroupEvent>,
    group_id: &str,
    joined: &[String],
    left: &[String],
    cause: &Cause,
    at: OffsetDateTime,
) {
    let change = |joined: &[String], left: &[String]| {
        GroupEvent::MembershipChanged(MembershipChanged {
            group_id: group_id.to_string(),
            joined: joined.to_vec(),
            left: left.to_vec(),
            unmatched: 0,
            cause: cause.clone(),
            at,
        })
    };
    events.extend(joined.chunks(USERS_PER_EVENT).map(|chunk| change(chunk, &[])));
    events.extend(left.chunks(USERS_PER_EVENT).map(|chunk| change(&[], chunk)));
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

async fn write_overlay(conn: &mut AnyConnection, o: &Overlay, from: i64, last: i64) -> Result<(), ProjectionError> {
    let users: Vec<_> = o.users.iter().collect();
    for chunk in users.chunks(ROWS_PER_STATEMENT) {
        let rows: Vec<String> = (0..chunk.len()).map(|i| format!("({})", placeholders(4 * i + 1, 4))).collect();
        let sql = format!("INSERT INTO engine_users (application_id, user_id, company_id, archived) VALUES {} ON CONFLICT (application_id, user_id) DO UPDATE SET archived = excluded.archived", rows.join(", "));
        let mut q = sqlx::query(&sql);
        for ((app, user), (company, archived)) in chunk {
            q = q.bind(app).bind(user).bind(company).bind(i64::from(*archived));
        }
        q.execute(&mut *conn).await?;
    }
    for (app, def) in &o.deleted_definitions {
        sqlx::query("DELETE FROM engine_values WHERE application_id = $1 AND definition_id = $2")
            .bind(app)
            .bind(def)
            .execute(&mut *conn)
            .await?;
        sqlx::query("DELETE FROM engine_definitions WHERE application_id = $1 AND definition_id = $2")
            .bind(app)
            .bind(def)
            .execute(&mut *conn)
            .await?;
    }
    // Rows with a number key and rows without go in separate statements, so
    // the SQL depends only on the row count (see `probe::number_slot`).
    let (numbers, others): (Vec<_>, Vec<_>) = o
        .values
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v, rules::index_keys(v))))
        .partition(|(_, _, (num, _))| num.is_some());
    for chunk in numbers.chunks(ROWS_PER_STATEMENT).chain(others.chunks(ROWS_PER_STATEMENT)) {
        let mut next = 1;
        let rows: Vec<String> = chunk
            .iter()
            .map(|(_, _, (num, _))| {
                let row = placeholders(next, 5);
                next += 5;
                format!("({row}, {})", probe::number_slot(*num, &mut next))
            })
            .collect();
        let sql = format!("INSERT INTO engine_values (application_id, user_id, definition_id, value, text_value, num_value) VALUES {} ON CONFLICT (application_id, user_id, definition_id) DO UPDATE SET value = excluded.value, num_value = excluded.num_value, text_value = excluded.text_value", rows.join(", "));
        let mut q = sqlx::query(&sql);
        for ((app, user, def), value, (num, text)) in chunk {
            q = q.bind(app).bind(user).bind(def).bind(value.to_string()).bind(text.as_deref());
            if let Some(n) = num {
                q = q.bind(*n);
            }
        }
        q.execute(&mut *conn).await?;
    }
    for ((app, user, def), _) in o.values.iter().filter(|(_, v)| v.is_none()) {
        sqlx::query("DELETE FROM engine_values WHERE application_id = $1 AND user_id = $2 AND definition_id = $3")
            .bind(app)
            .bind(user)
            .bind(def)
            .execute(&mut *conn)
            .await?;
    }
    for ((app, def), d) in &o.definitions {
        sqlx::query("INSERT INTO engine_definitions (application_id, definition_id, definition) VALUES ($1, $2, $3) ON CONFLICT (application_id, definition_id) DO UPDATE SET definition = $3")
            .bind(app)
            .bind(def)
            .bind(serde_json::to_string(d).unwrap_or_default())
            .execute(&mut *conn)
            .await?;
    }
    for ((app, group_id), g) in &o.groups {
        sqlx::query("DELETE FROM engine_group_definitions WHERE application_id = $1 AND group_id = $2")
            .bind(app)
            .bind(group_id)
            .execute(&mut *conn)
            .await?;
        if g.deleted || g.conditions.is_empty() {
            sqlx::query("DELETE FROM engine_groups WHERE application_id = $1 AND group_id = $2")
                .bind(app)
                .bind(group_id)
                .execute(&mut *conn)
                .await?;
            continue;
        }
        sqlx::query("INSERT INTO engine_groups (application_id, group_id, company_id, conditions, rule_version) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (application_id, group_id) DO UPDATE SET conditions = $4, rule_version = $5")
            .bind(app)
            .bind(group_id)
            .bind(&g.company_id)
            .bind(serde_json::to_string(&g.conditions).unwrap_or_default())
            .bind(g.rule_version)
            .execute(&mut *conn)
            .await?;
        let defs: BTreeSet<&str> = g.conditions.iter().map(|c| c.user_attribute_definition_id.as_str()).collect();
        for d in defs {
            sqlx::query("INSERT INTO engine_group_definitions (application_id, definition_id, group_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(app)
                .bind(d)
                .bind(group_id)
                .execute(&mut *conn)
                .await?;
        }
    }
    for group_id in &o.cleared {
        sqlx::query("DELETE FROM engine_members WHERE group_id = $1").bind(group_id).execute(&mut *conn).await?;
    }
    // Every group's joins, then every group's leaves, many rows per statement.
    let pairs = |joined: bool| -> Vec<(&String, &String)> {
        o.members
            .iter()
            .flat_map(|(g, members)| members.iter().filter(move |(_, m)| **m == joined).map(move |(u, _)| (g, u)))
            .collect()
    };
    for chunk in pairs(true).chunks(ROWS_PER_STATEMENT) {
        let rows: Vec<String> = (0..chunk.len()).map(|i| format!("({})", placeholders(2 * i + 1, 2))).collect();
        let sql =
            format!("INSERT INTO engine_members (group_id, user_id) VALUES {} ON CONFLICT DO NOTHING", rows.join(", "));
        let mut q = sqlx::query(&sql);
        for (g, u) in chunk {
            q = q.bind(g.as_str()).bind(u.as_str());
        }
        q.execute(&mut *conn).await?;
    }
    let dialect = Dialect::of(conn);
    for chunk in pairs(false).chunks(ROWS_PER_STATEMENT) {
        let sql = delete_pairs(dialect, "engine_members", ("group_id", "user_id"), chunk.len(), "");
        let mut q = sqlx::query(&sql);
        for (g, u) in chunk {
            q = q.bind(g.as_str()).bind(u.as_str());
        }
        q.execute(&mut *conn).await?;
    }
    let moved =
        sqlx::query("UPDATE engine_state SET position = $1, inflight_from = NULL, inflight_to = NULL WHERE name = $2 AND position = $3")
            .bind(last)
            .bind(NAME)
            .bind(from)
            .execute(&mut *conn)
            .await?;
    if moved.rows_affected() != 1 {
        // Another instance committed this range (this one lost its lease).
        return Err(ProjectionError::LostLease(format!(
            "membership engine checkpoint moved from {from}: batch discarded"
        )));
    }
    Ok(())
}
