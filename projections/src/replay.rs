//! Replay: rebuild a read model from position 0 into fresh tables while the
//! live one keeps answering, then switch reads over.
//!
//! The fresh tables live beside the live ones: in a schema of their own on
//! PostgreSQL (`replay_{projection}`, reached through the connection's
//! `search_path`, so the projection's own SQL builds them unchanged), in a
//! file of their own next to the database on SQLite. The same projection
//! code and runner build them, reading the same log.
//!
//! The switch happens under the live projection's checkpoint: the replay
//! locks it (PostgreSQL: the checkpoint row; SQLite: the write lock),
//! catches the fresh tables up to at least the live position, and swaps
//! them in with the checkpoint in one transaction, so a reader sees either
//! the old tables or the new ones, never a mix, and the position never moves
//! back. PostgreSQL swaps by moving tables between schemas (no copying);
//! SQLite copies the rebuilt rows in, holding its write lock meanwhile.
//!
//! Replay never touches the relay's checkpoint, so it never republishes to
//! NATS, and it never runs the membership engine, so it appends nothing.

use crate::worker::read_checkpoint;
use crate::{Projection, ProjectionError, Runner};
use sqlx::{Connection, Executor};
use std::time::{Duration, Instant};
use userstream_eventlog::{sqlite_file, Db, Dialect, EventLog, RecordedEvent, SqlEventLog};

/// Events per read (and per transaction) of a rebuild.
const READ_BATCH: i64 = 5000;

/// How long a PostgreSQL switch waits for the live tables per attempt …
const LOCK_WAIT: Duration = Duration::from_millis(100);
/// … and how long it keeps trying before it gives up.
const SWITCH_PATIENCE: Duration = Duration::from_secs(600);

/// PostgreSQL's `lock_not_available` (a `lock_timeout` ran out).
fn lock_not_available(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).as_deref() == Some("55P03")
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot replay into {0}: only file databases can be replayed")]
    NotAFile(String),
    #[error(
        "could not switch {projection}: its live tables were never free for {waited:?} (a long transaction holds them)"
    )]
    Busy { projection: String, waited: Duration },
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error("storage failure: {0}")]
    Storage(#[from] sqlx::Error),
    #[error(transparent)]
    Log(#[from] userstream_eventlog::StorageError),
    /// Something else moved the rebuild's checkpoint while it ran.
    #[error("the checkpoint of the rebuild of {projection} moved from {from} while it ran")]
    Moved { projection: String, from: i64 },
    /// A projection names a read index its migrations do not create (a bug in the projection).
    #[error("{projection} names a read index {index} its migrations do not create")]
    UnknownIndex { projection: String, index: String },
}

/// Where a rebuild writes: the fresh tables of one projection.
pub struct Shadow {
    pub db: Db,
    /// The schema (PostgreSQL) or file (SQLite) holding them.
    pub location: String,
}

fn remove_sqlite(path: &str) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
}

impl Shadow {
    /// Empty storage for a rebuild of `name` (what a previous replay left is dropped).
    pub async fn create(main: &Db, name: &str) -> Result<Shadow, ReplayError> {
        match main.dialect {
            Dialect::Sqlite => {
                let file = sqlite_file(main.url()).ok_or_else(|| ReplayError::NotAFile(main.url().to_string()))?;
                let location = format!("{file}.replay-{name}");
                remove_sqlite(&location);
                let db = Db::connect_scratch(&format!("sqlite://{location}")).await?;
                Ok(Shadow { db, location })
            }
            Dialect::Postgres => {
                let schema = format!("replay_{name}");
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&main.pool).await?;
                sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&main.pool).await?;
                let separator = if main.url().contains('?') { '&' } else { '?' };
                // Commits of fresh tables need not wait for the WAL flush: a
                // crash discards the rebuild anyway, and the switch's own
                // commit flushes everything before it.
                let url = format!(
                    "{}{separator}options=-c%20search_path%3D{schema}%2Cpublic%20-c%20synchronous_commit%3Doff",
                    main.url()
                );
                let db = Db::connect(&url).await?;
                Ok(Shadow { db, location: format!("schema {schema}") })
            }
        }
    }
}

/// What a switch did: the position the swapped-in model is at, and the
/// longest time the live model's writer (SQLite: every writer) was held up
/// at once (a PostgreSQL switch that has to try again frees it in between).
#[derive(Debug, Clone, Copy)]
pub struct Switched {
    pub position: i64,
    pub locked: Duration,
}

/// A rebuild in progress or done: its runner over the fresh tables.
pub struct Rebuild<P> {
    pub shadow: Shadow,
    runner: Runner<P>,
    projection: P,
    log: SqlEventLog,
    /// PostgreSQL: the definitions of the projection's read indexes, dropped
    /// from the fresh tables until [`Rebuild::build_indexes`].
    deferred: Vec<String>,
}

impl<P: Projection + Clone> Rebuild<P> {
    pub async fn start(log: &SqlEventLog, projection: P) -> Result<Rebuild<P>, ReplayError> {
        let shadow = Shadow::create(log.db(), projection.name()).await?;
        let runner =
            Runner::with_target(log.clone(), shadow.db.clone(), projection.clone()).await?.with_batch_size(5000);
        // SQLite gains nothing (measured: its index inserts of ascending
        // keys are cheap, and the switch builds indexes after the rows anyway).
        let deferred = match shadow.db.dialect {
            Dialect::Postgres => drop_read_indexes(&shadow.db, &projection).await?,
            Dialect::Sqlite => Vec::new(),
        };
        Ok(Rebuild { shadow, runner, projection, log: log.clone(), deferred })
    }

    /// Builds the read indexes a PostgreSQL rebuild left out, all at once,
    /// each on a connection of its own. Part of the rebuild: [`Rebuild::switch`]
    /// calls it, and so must whoever keeps a rebuild without switching.
    pub async fn build_indexes(&mut self) -> Result<(), ReplayError> {
        let pool = &self.shadow.db.pool;
        let builds = self.deferred.iter().map(|definition| async move {
            let mut tx = pool.begin().await?;
            tx.execute(format!("SET LOCAL maintenance_work_mem = '{INDEX_BUILD_MEMORY}'").as_str()).await?;
            tx.execute(definition.as_str()).await?;
            tx.commit().await
        });
        futures_util::future::try_join_all(builds).await?;
        self.deferred.clear();
        Ok(())
    }

    pub async fn position(&self) -> Result<i64, ReplayError> {
        Ok(read_checkpoint(&self.shadow.db, self.projection.name()).await?)
    }

    /// Applies batches until the fresh tables reach `to` (or the head);
    /// `progress` hears the position after every batch. The next batch is
    /// read (and decoded) while the current one is written.
    pub async fn run_to(&self, to: i64, progress: &mut dyn FnMut(i64)) -> Result<i64, ReplayError> {
        let mut position = self.position().await?;
        if position >= to {
            return Ok(position);
        }
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<Result<Vec<RecordedEvent>, userstream_eventlog::StorageError>>(2);
        let log = self.log.clone();
        let reader = tokio::spawn(async move {
            let mut after = position;
            while after < to {
                let mut events = match log.read_all(after, READ_BATCH).await {
                    Ok(events) => events,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                events.retain(|e| e.position <= to);
                let Some(last) = events.last().map(|e| e.position) else { return };
                after = last;
                if tx.send(Ok(events)).await.is_err() {
                    return;
                }
            }
        });
        while let Some(batch) = rx.recv().await {
            let events = batch?;
            if self.runner.apply_from(position, &events).await? != events.len() {
                reader.abort();
                return Err(ReplayError::Moved { projection: self.projection.name().to_string(), from: position });
            }
            position = events.last().map_or(position, |e| e.position);
            progress(position);
        }
        let _ = reader.await;
        Ok(position)
    }

    /// Catches up with the live read model and swaps the fresh tables in.
    /// Returns the position the switched model is at.
    pub async fn switch(mut self, progress: &mut dyn FnMut(i64)) -> Result<Switched, ReplayError> {
        let main = self.log.db().clone();
        let name = self.projection.name();
        // Most of the way without holding anything.
        let live = read_checkpoint(&main, name).await?;
        self.run_to(live.max(self.log.head().await?), progress).await?;
        self.build_indexes().await?;
        let mut conn = main.dedicated_connection().await?;
        let position = match main.dialect {
            Dialect::Postgres => self.switch_postgres(&mut conn, progress).await,
            Dialect::Sqlite => self.switch_sqlite(&mut conn, progress).await,
        };
        if position.is_err() {
            let _ = conn.execute("ROLLBACK").await;
        }
        let (position, locked) = position?;
        let _ = conn.close().await;
        self.shadow.db.pool.close().await;
        match main.dialect {
            Dialect::Sqlite => remove_sqlite(&self.shadow.location),
            Dialect::Postgres => {
                sqlx::query(&format!("DROP SCHEMA IF EXISTS replay_{name} CASCADE")).execute(&main.pool).await?;
            }
        }
        tracing::info!(projection = name, position, locked_ms = locked.as_millis() as u64, "replay switched");
        Ok(Switched { position, locked })
    }

    async fn switch_postgres(
        &self,
        conn: &mut sqlx::AnyConnection,
        progress: &mut dyn FnMut(i64),
    ) -> Result<(i64, Duration), ReplayError> {
        let name = self.projection.name();
        let (fresh, old) = (format!("replay_{name}"), format!("replaced_{name}"));
        conn.execute(format!("DROP SCHEMA IF EXISTS {old} CASCADE; CREATE SCHEMA {old}").as_str()).await?;
        let schema: String = sqlx::query_scalar("SELECT current_schema()::text").fetch_one(&mut *conn).await?;
        let live_tables: Vec<String> = self.projection.tables().iter().map(|t| format!("{schema}.{t}")).collect();
        let lock_tables = format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", live_tables.join(", "));
        let deadlock_timeout: i64 =
            sqlx::query_scalar("SELECT setting::bigint FROM pg_settings WHERE name = 'deadlock_timeout'")
                .fetch_one(&mut *conn)
                .await?;
        let outwait_autovacuum = Duration::from_millis(deadlock_timeout.max(0) as u64) + LOCK_WAIT;
        let trying = Instant::now();
        // Writes wait while the checkpoint row is held: the longest of the attempts.
        let mut held = Duration::ZERO;
        let (position, attempt) = loop {
            conn.execute("BEGIN").await?;
            let attempt = Instant::now();
            let live: i64 = sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1 FOR UPDATE")
                .bind(name)
                .fetch_one(&mut *conn)
                .await?;
            // The live runner waits now; bring the fresh tables at least as far.
            let position = self.run_to(live, progress).await?;
            // Moving the tables needs them to itself. A lock request that
            // waits makes every later reader wait behind it, so it may wait
            // only briefly: behind a long reader, give up, let the queue
            // drain, and try again.
            conn.execute(format!("SET LOCAL lock_timeout = '{}ms'", LOCK_WAIT.as_millis()).as_str()).await?;
            match conn.execute(lock_tables.as_str()).await {
                Ok(_) => {
                    conn.execute("SET LOCAL lock_timeout = 0").await?;
                    break (position, attempt);
                }
                Err(e) if lock_not_available(&e) && trying.elapsed() < SWITCH_PATIENCE => {
                    conn.execute("ROLLBACK").await?;
                    held = held.max(attempt.elapsed());
                    if autovacuum_holds(conn, &live_tables).await? {
                        outwait_autovacuum_on(conn, &live_tables, outwait_autovacuum).await?;
                    } else {
                        tokio::time::sleep(LOCK_WAIT * 2).await;
                    }
                }
                Err(e) if lock_not_available(&e) => {
                    return Err(ReplayError::Busy { projection: name.to_string(), waited: SWITCH_PATIENCE });
                }
                Err(e) => return Err(e.into()),
            }
        };
        for table in self.projection.tables() {
            conn.execute(format!("ALTER TABLE {schema}.{table} SET SCHEMA {old}").as_str()).await?;
            conn.execute(format!("ALTER TABLE {fresh}.{table} SET SCHEMA {schema}").as_str()).await?;
        }
        commit_switch(conn, name, position).await?;
        let locked = held.max(attempt.elapsed());
        conn.execute(format!("DROP SCHEMA IF EXISTS {old} CASCADE").as_str()).await?;
        Ok((position, locked))
    }

    /// SQLite: copy the fresh tables into staging tables of the main file
    /// (`{table}__fresh`, short transactions, the service writes in between),
    /// then, holding the write lock only for that: rename the live tables
    /// away and the staging tables in, apply the events the live model got
    /// since (with the projection's own code, in the same transaction), move
    /// the checkpoint, drop the old tables.
    async fn switch_sqlite(
        &self,
        conn: &mut sqlx::AnyConnection,
        progress: &mut dyn FnMut(i64),
    ) -> Result<(i64, Duration), ReplayError> {
        let name = self.projection.name();
        let mut position = self.position().await?;
        sqlx::query("ATTACH DATABASE $1 AS fresh").bind(&self.shadow.location).execute(&mut *conn).await?;
        for table in self.projection.tables() {
            // What a crashed earlier switch may have left.
            drop_in_chunks(conn, &format!("{table}__old")).await?;
            stage_sqlite_table(conn, table).await?;
        }
        begin_write_soon(conn, Some(name)).await?;
        let locked = Instant::now();
        let live = read_checkpoint_on(conn, name).await?;
        for table in self.projection.tables() {
            conn.execute(format!("ALTER TABLE main.{table} RENAME TO {table}__old").as_str()).await?;
            conn.execute(format!("ALTER TABLE main.{table}__fresh RENAME TO {table}").as_str()).await?;
        }
        while position < live {
            let mut events = self.log.read_all(position, READ_BATCH).await?;
            events.retain(|e| e.position <= live);
            let Some(last) = events.last().map(|e| e.position) else { break };
            self.projection.apply_batch(conn, Dialect::Sqlite, &events).await?;
            position = last;
            progress(position);
        }
        commit_switch(conn, name, position).await?;
        let locked = locked.elapsed();
        conn.execute("DETACH DATABASE fresh").await?;
        // The old tables go in chunks too: one DROP of a big table would hold
        // the write lock for seconds.
        for table in self.projection.tables() {
            drop_in_chunks(conn, &format!("{table}__old")).await?;
        }
        Ok((position, locked))
    }
}

/// Whether an autovacuum worker holds a lock on any of `tables` (names as
/// `schema.table`). `pg_locks` and the backend type are visible to every role.
async fn autovacuum_holds(conn: &mut sqlx::AnyConnection, tables: &[String]) -> Result<bool, sqlx::Error> {
    let relations: Vec<String> = tables.iter().map(|t| format!("'{t}'::regclass")).collect();
    sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE a.backend_type = 'autovacuum worker' AND l.granted AND l.relation IN ({}))",
        relations.join(", ")
    ))
    .fetch_one(conn)
    .await
}

/// Gets autovacuum off `tables` without stalling anyone: PostgreSQL cancels
/// an autovacuum worker that has blocked a lock request for
/// `deadlock_timeout` (a wait of [`LOCK_WAIT`] never lasts that long). The
/// request here is for the mode autovacuum itself holds, which readers and
/// writers do not conflict with, so nobody queues behind it while it waits.
/// The next attempt at the switch then finds the tables free.
async fn outwait_autovacuum_on(
    conn: &mut sqlx::AnyConnection,
    tables: &[String],
    wait: Duration,
) -> Result<(), sqlx::Error> {
    conn.execute("BEGIN").await?;
    conn.execute(format!("SET LOCAL lock_timeout = '{}ms'", wait.as_millis()).as_str()).await?;
    let locked =
        conn.execute(format!("LOCK TABLE {} IN SHARE UPDATE EXCLUSIVE MODE", tables.join(", ")).as_str()).await;
    conn.execute("ROLLBACK").await?;
    match locked {
        Err(e) if !lock_not_available(&e) => Err(e),
        _ => Ok(()),
    }
}

/// `maintenance_work_mem` of each deferred index build (they run at once).
const INDEX_BUILD_MEMORY: &str = "128MB";

/// Drops `projection`'s read indexes from the fresh tables (in the schema
/// the shadow connection's `search_path` starts with) and returns their
/// definitions, as PostgreSQL states them, for [`Rebuild::build_indexes`].
async fn drop_read_indexes<P: Projection>(shadow: &Db, projection: &P) -> Result<Vec<String>, ReplayError> {
    let schema: String = sqlx::query_scalar("SELECT current_schema()::text").fetch_one(&shadow.pool).await?;
    let mut definitions = Vec::new();
    for index in projection.read_indexes() {
        let definition: Option<String> =
            sqlx::query_scalar("SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND indexname = $2")
                .bind(&schema)
                .bind(index)
                .fetch_optional(&shadow.pool)
                .await?;
        let definition = definition.ok_or_else(|| ReplayError::UnknownIndex {
            projection: projection.name().to_string(),
            index: index.to_string(),
        })?;
        sqlx::query(&format!("DROP INDEX {schema}.{index}")).execute(&shadow.pool).await?;
        definitions.push(definition);
    }
    Ok(definitions)
}

/// Rows per transaction when staging fresh tables in the main file.
const STAGE_ROWS: i64 = 20_000;

/// Copies `fresh.{table}` into a new `main.{table}__fresh` with the same
/// columns and indexes (built after the rows, which is faster), a chunk of
/// rows per transaction so the service's writes go on in between.
async fn stage_sqlite_table(conn: &mut sqlx::AnyConnection, table: &str) -> Result<(), ReplayError> {
    let staged = format!("{table}__fresh");
    conn.execute(format!("DROP TABLE IF EXISTS main.{staged}").as_str()).await?;
    let ddl: String = sqlx::query_scalar("SELECT sql FROM fresh.sqlite_master WHERE type = 'table' AND name = $1")
        .bind(table)
        .fetch_one(&mut *conn)
        .await?;
    conn.execute(rename_in_ddl(&ddl, table, &format!("main.{staged}")).as_str()).await?;
    let (low, high): (Option<i64>, Option<i64>) =
        sqlx::query_as(&format!("SELECT MIN(rowid), MAX(rowid) FROM fresh.{table}")).fetch_one(&mut *conn).await?;
    if let (Some(low), Some(high)) = (low, high) {
        let mut from = low;
        while from <= high {
            begin_write_soon(conn, None).await?;
            let copied = sqlx::query(&format!(
                "INSERT INTO main.{staged} SELECT * FROM fresh.{table} WHERE rowid >= $1 AND rowid < $2 ORDER BY rowid"
            ))
            .bind(from)
            .bind(from + STAGE_ROWS)
            .execute(&mut *conn)
            .await;
            if let Err(e) = copied {
                let _ = conn.execute("ROLLBACK").await;
                return Err(e.into());
            }
            conn.execute("COMMIT").await?;
            from += STAGE_ROWS;
        }
    }
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, sql FROM fresh.sqlite_master WHERE type = 'index' AND tbl_name = $1 AND sql IS NOT NULL",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    for (index, sql) in indexes {
        // Index names are per file: the live table holds `index` or `index__r`; take the other.
        let taken: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM main.sqlite_master WHERE type = 'index' AND name = $1")
                .bind(&index)
                .fetch_optional(&mut *conn)
                .await?;
        let new_name = if taken.is_some() { format!("{index}__r") } else { index.clone() };
        let sql = rename_in_ddl(&sql, &index, &format!("main.{new_name}"));
        let sql = replace_word(&sql, &format!("ON {table}"), &format!("ON {staged}"));
        conn.execute(format!("DROP INDEX IF EXISTS main.{new_name}").as_str()).await?;
        begin_write_soon(conn, None).await?;
        if let Err(e) = conn.execute(sql.as_str()).await {
            let _ = conn.execute("ROLLBACK").await;
            return Err(e.into());
        }
        conn.execute("COMMIT").await?;
    }
    Ok(())
}

/// Empties `main.{table}` a chunk of rows per transaction, then drops it.
async fn drop_in_chunks(conn: &mut sqlx::AnyConnection, table: &str) -> Result<(), ReplayError> {
    let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = $1")
        .bind(table)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_none() {
        return Ok(());
    }
    loop {
        begin_write_soon(conn, None).await?;
        let deleted = sqlx::query(&format!(
            "DELETE FROM main.{table} WHERE rowid IN (SELECT rowid FROM main.{table} LIMIT {STAGE_ROWS})"
        ))
        .execute(&mut *conn)
        .await;
        let deleted = match deleted {
            Ok(d) => d.rows_affected(),
            Err(e) => {
                let _ = conn.execute("ROLLBACK").await;
                return Err(e.into());
            }
        };
        if deleted == 0 {
            let dropped = conn.execute(format!("DROP TABLE main.{table}").as_str()).await;
            if let Err(e) = dropped {
                let _ = conn.execute("ROLLBACK").await;
                return Err(e.into());
            }
            conn.execute("COMMIT").await?;
            return Ok(());
        }
        conn.execute("COMMIT").await?;
    }
}

/// `CREATE TABLE|INDEX [IF NOT EXISTS] old …` → `CREATE … new …` (the first
/// occurrence of `old` as a whole word).
fn rename_in_ddl(ddl: &str, old: &str, new: &str) -> String {
    replace_word(&ddl.replacen("IF NOT EXISTS ", "", 1), old, new)
}

fn replace_word(text: &str, old: &str, new: &str) -> String {
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let mut at = 0;
    while let Some(found) = text[at..].find(old) {
        let start = at + found;
        let end = start + old.len();
        if !is_word(text[..start].chars().next_back()) && !is_word(text[end..].chars().next()) {
            return format!("{}{new}{}", &text[..start], &text[end..]);
        }
        at = end;
    }
    text.to_string()
}

/// Opens a write transaction on a busy SQLite database. SQLite's busy
/// handler sleeps longer and longer between tries, so against a process that
/// writes back to back (a loaded service) it would starve; trying every
/// millisecond gets in at the first gap between the service's transactions.
///
/// With `checkpoint`, the lock is taken by writing that checkpoint row, so
/// it covers the main database only (`BEGIN IMMEDIATE` would lock the
/// attached fresh tables too, which the catch-up may still write).
async fn begin_write_soon(conn: &mut sqlx::AnyConnection, checkpoint: Option<&str>) -> Result<(), sqlx::Error> {
    conn.execute("PRAGMA busy_timeout = 0").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let outcome = loop {
        let attempt = match checkpoint {
            None => conn.execute("BEGIN IMMEDIATE").await.map(|_| ()),
            Some(name) => {
                conn.execute("BEGIN").await?;
                let written = sqlx::query("UPDATE main.checkpoints SET position = position WHERE name = $1")
                    .bind(name)
                    .execute(&mut *conn)
                    .await
                    .map(|_| ());
                if written.is_err() {
                    conn.execute("ROLLBACK").await?;
                }
                written
            }
        };
        match attempt {
            Ok(()) => break Ok(()),
            Err(e) if Instant::now() < deadline && e.to_string().contains("locked") => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => break Err(e),
        }
    };
    conn.execute("PRAGMA busy_timeout = 10000").await?;
    outcome
}

/// Moves the live checkpoint to where the swapped-in tables are, and commits.
async fn commit_switch(conn: &mut sqlx::AnyConnection, name: &str, position: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE checkpoints SET position = $1, failure = NULL WHERE name = $2")
        .bind(position)
        .bind(name)
        .execute(&mut *conn)
        .await?;
    conn.execute("COMMIT").await?;
    Ok(())
}

async fn read_checkpoint_on(conn: &mut sqlx::AnyConnection, name: &str) -> Result<i64, sqlx::Error> {
    let position: Option<i64> = sqlx::query_scalar("SELECT position FROM main.checkpoints WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(position.unwrap_or(0))
}

/// Every row of `table`, each as a JSON array of its columns, sorted: two
/// read models are equal row for row when their dumps are.
pub async fn dump_table(db: &Db, table: &str) -> Result<Vec<String>, sqlx::Error> {
    use sqlx::{Row, ValueRef};
    let rows = sqlx::query(&format!("SELECT * FROM {table}")).fetch_all(&db.pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut cells = Vec::with_capacity(row.columns().len());
        for (i, _) in row.columns().iter().enumerate() {
            let raw = row.try_get_raw(i)?;
            let cell = if raw.is_null() {
                serde_json::Value::Null
            } else if let Ok(v) = row.try_get::<i64, _>(i) {
                v.into()
            } else if let Ok(v) = row.try_get::<f64, _>(i) {
                v.into()
            } else if let Ok(v) = row.try_get::<String, _>(i) {
                v.into()
            } else if let Ok(v) = row.try_get::<bool, _>(i) {
                v.into()
            } else {
                serde_json::Value::String("<unreadable>".into())
            };
            cells.push(cell);
        }
        out.push(serde_json::Value::Array(cells).to_string());
    }
    out.sort();
    Ok(out)
}
