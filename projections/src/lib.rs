//! Read models of userstream and the machinery that builds them from the log.
//!
//! Modules: [`worker`] (the one leased loop every singleton worker runs:
//! lease, standby, backoff, poison stop, health), [`runner`] (batch → apply
//! → checkpoint in one transaction), [`read_models`] (users, attributes, groups and
//! their queries), [`engine`] (the membership reactor), [`relay`] (NATS
//! JetStream), [`registry`] (every worker, for serve, migrate, replay and
//! readiness), [`replay`] (rebuild beside, then swap), [`probe`] (index
//! probes for rule conditions). Everything here depends on the event log
//! and the domain, never on the API.
//!
//! A projection is a name, the migrations of its tables, and an `apply` that
//! writes one event into those tables inside the runner's transaction. The
//! runner owns ordering, checkpoints, leases and retries; a projection only
//! has to be deterministic.

pub mod engine;
pub mod probe;
pub mod read_models;
pub mod registry;
pub mod relay;
pub mod replay;
pub mod runner;
pub mod worker;

pub use runner::{ProjectionError, Runner};
pub use worker::{RunnerHandle, RunnerStatus};

use sqlx::AnyConnection;
use std::future::Future;
use userstream_eventlog::{Dialect, Migration, RecordedEvent};

pub trait Projection: Send + Sync + 'static {
    /// Stable name; also the checkpoint's key.
    fn name(&self) -> &'static str;
    /// The steps that create this projection's tables.
    fn migrations(&self) -> &'static [Migration];
    /// Every table the migrations create (what a replay rebuilds and swaps).
    fn tables(&self) -> &'static [&'static str];
    /// Writes `event` into the read model. Runs inside the batch transaction;
    /// must not commit, and must give the same tables for the same events.
    fn apply(
        &self,
        conn: &mut AnyConnection,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;

    /// Whether `apply` writes anything for this event (a cheap check on its
    /// stream or type). A batch of events none of which it handles needs no
    /// write transaction.
    fn handles(&self, _event: &RecordedEvent) -> bool {
        true
    }

    /// Indexes that only queries use, never `apply`. A rebuild on
    /// PostgreSQL drops them from its fresh tables and builds each once,
    /// sorted, after the rows, instead of inserting (and logging) one entry
    /// per row into each.
    fn read_indexes(&self) -> &'static [&'static str] {
        &[]
    }

    /// Writes a batch of events, in order. The default applies them one by
    /// one; a projection may override it to write runs of events with
    /// multi-row statements, as long as the tables end up the same.
    fn apply_batch(
        &self,
        conn: &mut AnyConnection,
        _dialect: Dialect,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send {
        async move {
            for event in events {
                self.apply(conn, event).await?;
            }
            Ok(())
        }
    }
}
