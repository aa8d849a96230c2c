//! Leases: which process runs a singleton worker (a projection, the engine,
//! the NATS relay) when several instances share one database.
//!
//! On PostgreSQL a lease is a session-level advisory lock held on a
//! connection of its own. The lock dies with that connection, so when the
//! owner is killed the server frees it at once and a standby takes it at its
//! next try (every [`Lease::RETRY`]). The owner checks its connection at
//! most every [`Lease::CHECK`]; a lost connection means a lost lease, and the
//! worker stops before its next batch. A batch that was already running when
//! the lease was lost still cannot be applied twice: every worker commits
//! its checkpoint only if it still equals the position the batch started
//! from.
//!
//! On SQLite there is one process per database file (the embedded default),
//! so the lease is always held.

use crate::{Db, Dialect};
use sqlx::AnyConnection;
use std::time::{Duration, Instant};

/// The first key of every lease's advisory lock (the second is the name's hash).
const LEASE_SPACE: i32 = 7_320_003;

pub struct Lease {
    db: Db,
    name: String,
    conn: Option<AnyConnection>,
    held: bool,
    checked: Instant,
    tried: Option<Instant>,
}

impl Lease {
    /// How long an owner trusts its lock connection without checking it.
    pub const CHECK: Duration = Duration::from_secs(1);
    /// How often a standby tries to take the lease.
    pub const RETRY: Duration = Duration::from_millis(500);

    pub fn new(db: &Db, name: impl Into<String>) -> Lease {
        Lease { db: db.clone(), name: name.into(), conn: None, held: false, checked: Instant::now(), tried: None }
    }

    /// Whether this process holds the lease now; takes it when it is free.
    pub async fn hold(&mut self) -> bool {
        if self.db.dialect == Dialect::Sqlite {
            return true;
        }
        match self.try_hold().await {
            Ok(held) => held,
            Err(e) => {
                if self.held {
                    tracing::warn!(lease = %self.name, error = %e, "lease lost");
                }
                self.conn = None;
                self.held = false;
                false
            }
        }
    }

    async fn try_hold(&mut self) -> Result<bool, sqlx::Error> {
        if !self.held && self.tried.is_some_and(|t| t.elapsed() < Self::RETRY) {
            return Ok(false);
        }
        if self.conn.is_none() {
            self.conn = Some(self.db.dedicated_connection().await?);
            self.held = false;
        }
        let Some(conn) = self.conn.as_mut() else { return Ok(false) };
        if self.held {
            if self.checked.elapsed() >= Self::CHECK {
                sqlx::query("SELECT 1").execute(&mut *conn).await?;
                self.checked = Instant::now();
            }
            return Ok(true);
        }
        self.tried = Some(Instant::now());
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(LEASE_SPACE)
            .bind(&self.name)
            .fetch_one(&mut *conn)
            .await?;
        if taken {
            tracing::info!(lease = %self.name, "lease taken");
            self.held = true;
            self.checked = Instant::now();
        }
        Ok(taken)
    }
}
