//! One database handle for both backends. SQLite and PostgreSQL differ in a
//! handful of statements (DDL types, write-transaction start, the position
//! lock); everything else is the same SQL, run through sqlx's `Any` driver.

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, ConnectOptions, Executor};
use std::str::FromStr;

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, MutexGuard};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The dialect of an open connection.
    pub fn of(conn: &AnyConnection) -> Dialect {
        if conn.backend_name() == <sqlx::Postgres as sqlx::Database>::NAME {
            Dialect::Postgres
        } else {
            Dialect::Sqlite
        }
    }
}

/// A connected database: the pool plus what kind of database it is.
/// `Debug` leaves out the URL (it may hold a password).
#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub dialect: Dialect,
    url: String,
    write_gate: Arc<Mutex<()>>,
}

/// A schema step owned by one component (`eventlog`, a projection …).
pub struct Migration {
    pub version: i64,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

/// Every SQLite connection: waits for locks, LIKE as case-sensitive as on
/// PostgreSQL, and `secure_delete`: freed space is zeroed, so an erased
/// person's rows leave no bytes behind in the file (see `shred`).
pub(crate) const SQLITE_SESSION: &str =
    "PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = OFF; PRAGMA case_sensitive_like = ON; PRAGMA secure_delete = ON;";

/// Every connection to the service's own file: WAL. A commit checkpoints the
/// WAL itself only past 16,000 pages: [`Db::checkpoints`] does it in the
/// background long before, so no command or projection commit pays for
/// copying the WAL back into the database file and syncing it.
pub(crate) const SQLITE_WAL: &str = "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 16000;";

/// Pooled connections write only what can be rebuilt from the log (read
/// models with their checkpoints, in one transaction), so their commits
/// need not wait for an fsync: a crash may lose the last ones, and the
/// projections then redo them from their checkpoints. The next log commit
/// syncs the shared WAL anyway.
const SQLITE_POOL_SYNC: &str = "PRAGMA synchronous = NORMAL;";

/// Scratch files (a replay's fresh tables) are thrown away on any failure:
/// no fsync, and a rollback journal in memory instead of a WAL, so each page
/// is written once (a WAL writes it twice: into the log, then back). Only
/// the rebuild's runner writes them, and nothing reads them meanwhile.
/// 64 KiB pages (set before the file's first table) mean fewer b-tree
/// splits for bulk inserts: `deploy/replay-ceiling.sh` went from 122k to
/// 164k users/s.
const SQLITE_SCRATCH: &str =
    "PRAGMA page_size = 65536; PRAGMA journal_mode = MEMORY; PRAGMA synchronous = OFF; PRAGMA cache_size = -262144; PRAGMA temp_store = MEMORY;";

/// The log's own connections fsync every commit: acknowledged = durable.
pub(crate) const SQLITE_LOG_SYNC: &str = "PRAGMA synchronous = FULL;";

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("dialect", &self.dialect).finish_non_exhaustive()
    }
}

impl Db {
    /// Connects to `sqlite://…` (file created if missing; WAL, fsync on every
    /// commit) or `postgres://…`.
    pub async fn connect(url: &str) -> Result<Db, sqlx::Error> {
        Self::connect_with(url, &[SQLITE_SESSION, SQLITE_WAL, SQLITE_POOL_SYNC]).await
    }

    /// A database for data that is thrown away if anything fails (a replay's
    /// fresh tables before the switch): on SQLite no fsync and no WAL, a big
    /// page cache.
    pub async fn connect_scratch(url: &str) -> Result<Db, sqlx::Error> {
        Self::connect_with(url, &[SQLITE_SESSION, SQLITE_SCRATCH]).await
    }

    async fn connect_with(url: &str, sqlite_pragmas: &'static [&'static str]) -> Result<Db, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = normalise_url(url)?;
        let max = match dialect {
            Dialect::Sqlite => 8,
            Dialect::Postgres => 16,
        };
        let options = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(30))
            // A SQLite connection is a file handle, not a socket that can
            // drop: checking it on every acquire was a round trip to its
            // worker thread before every query.
            .test_before_acquire(dialect == Dialect::Postgres)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        for pragmas in sqlite_pragmas {
                            conn.execute(*pragmas).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Db { pool, dialect, url, write_gate: Arc::new(Mutex::new(())) })
    }

    /// The normalised connection URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// On SQLite, the turn to write: every write transaction of this process
    /// (the log's writer, each projection) takes it before `BEGIN IMMEDIATE`.
    /// SQLite's own busy handler retries by sleeping, so a writer that
    /// commits back to back would starve the others; this queue is fair
    /// (first come, first served). On PostgreSQL there is nothing to wait for.
    pub async fn write_turn(&self) -> Option<MutexGuard<'_, ()>> {
        match self.dialect {
            Dialect::Sqlite => Some(self.write_gate.lock().await),
            Dialect::Postgres => None,
        }
    }

    /// The turn [`Db::write_turn`] hands out, for a writer on a thread of
    /// its own (which waits for it with `blocking_lock`).
    pub(crate) fn write_gate(&self) -> Arc<Mutex<()>> {
        self.write_gate.clone()
    }

    /// The file behind a SQLite database (`None` on PostgreSQL and for an
    /// in-memory database).
    pub fn sqlite_file(&self) -> Option<String> {
        sqlite_file(&self.url)
    }

    /// A connection outside the pool for the log's writer, which owns one for
    /// its whole life. On SQLite it fsyncs every commit.
    pub async fn dedicated_connection(&self) -> Result<AnyConnection, sqlx::Error> {
        let mut conn = AnyConnectOptions::from_str(&self.url)?.disable_statement_logging().connect().await?;
        if self.dialect == Dialect::Sqlite {
            for pragmas in [SQLITE_SESSION, SQLITE_WAL, SQLITE_LOG_SYNC] {
                conn.execute(pragmas).await?;
            }
        }
        Ok(conn)
    }

    /// The statement that opens a write transaction. On SQLite it takes the
    /// write lock at once (`IMMEDIATE`), so a transaction never fails later
    /// when upgrading from a read snapshot.
    pub fn begin_write(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        }
    }

    /// On SQLite, copies the WAL back into the database file every `every`,
    /// on a connection of its own (a passive checkpoint: it waits for no
    /// reader or writer, and none waits for it). Runs until dropped; returns
    /// at once on PostgreSQL.
    pub async fn checkpoints(&self, every: Duration) -> Result<(), sqlx::Error> {
        if self.dialect != Dialect::Sqlite {
            return Ok(());
        }
        let mut conn = self.dedicated_connection().await?;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").await {
                tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
            }
        }
    }

    /// Picks the statement for this dialect.
    pub fn pick<'a>(&self, sqlite: &'a str, postgres: &'a str) -> &'a str {
        match self.dialect {
            Dialect::Sqlite => sqlite,
            Dialect::Postgres => postgres,
        }
    }

    /// Applies the steps of `component` not applied yet, each in its own
    /// transaction, recording them in `schema_migrations`. Safe to run from
    /// several processes at once on PostgreSQL (an advisory lock serialises them).
    pub async fn migrate(&self, component: &str, steps: &[Migration]) -> Result<(), sqlx::Error> {
        let _turn = self.write_turn().await;
        let mut conn = self.pool.acquire().await?;
        conn.execute(self.begin_write()).await?;
        let result = async {
            if self.dialect == Dialect::Postgres {
                conn.execute("SELECT pg_advisory_xact_lock(7320001)::text").await?;
            }
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (component TEXT NOT NULL, version BIGINT NOT NULL, PRIMARY KEY (component, version))",
            )
            .await?;
            for step in steps {
                let done: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM schema_migrations WHERE component = $1 AND version = $2")
                        .bind(component)
                        .bind(step.version)
                        .fetch_optional(&mut *conn)
                        .await?;
                if done.is_some() {
                    continue;
                }
                conn.execute(self.pick(step.sqlite, step.postgres)).await?;
                sqlx::query("INSERT INTO schema_migrations (component, version) VALUES ($1, $2)")
                    .bind(component)
                    .bind(step.version)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok::<_, sqlx::Error>(())
        }
        .await;
        match result {
            Ok(()) => conn.execute("COMMIT").await.map(|_| ()),
            Err(e) => {
                let _ = conn.execute("ROLLBACK").await;
                Err(e)
            }
        }
    }

    /// Whether every step of `component` up to `version` is applied.
    pub async fn is_migrated(&self, component: &str, version: i64) -> Result<bool, sqlx::Error> {
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations WHERE component = $1")
                .bind(component)
                .fetch_one(&self.pool)
                .await
                .unwrap_or(None);
        Ok(applied.is_some_and(|v| v >= version))
    }
}

/// The SQLite file behind a `sqlite:` URL (`None` for any other URL and
/// for an in-memory database).
pub fn sqlite_file(url: &str) -> Option<String> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && !path.contains(":memory:")).then(|| path.to_string())
}

fn normalise_url(url: &str) -> Result<(Dialect, String), sqlx::Error> {
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let mut url = format!("sqlite:{rest}");
        if !url.contains("mode=") {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str("mode=rwc");
        }
        Ok((Dialect::Sqlite, url))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok((Dialect::Postgres, url.to_string()))
    } else {
        Err(sqlx::Error::Configuration(
            format!("unsupported database URL (expected sqlite:// or postgres://): {url}").into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_are_created_if_missing() {
        let (d, u) = normalise_url("sqlite://userstream.db").expect("ok");
        assert_eq!((d, u.as_str()), (Dialect::Sqlite, "sqlite://userstream.db?mode=rwc"));
        let (_, u) = normalise_url("sqlite:///tmp/x.db?mode=ro").expect("ok");
        assert_eq!(u, "sqlite:///tmp/x.db?mode=ro");
        assert!(normalise_url("mysql://x").is_err());
    }
}
