//! The one loop every singleton worker runs: a projection's runner, the
//! membership engine and the NATS relay.
//!
//! [`run`] works while this process holds the worker's `Lease` and stands
//! by otherwise (following the owner's checkpoint, so read-your-writes waits
//! on a standby still end). It wakes on appends and polls as a fallback,
//! backs off after a failed step and tries again, and stops for good on a
//! poison event: the reason is kept in the worker's [`Health`] (so `/readyz`
//! lists it) and in its checkpoint row. A worker only says how to take over
//! ([`Worker::resume`]), do one step, and follow the owner.

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use userstream_eventlog::lease::Lease;
use userstream_eventlog::Db;

/// How often a standby follows the owner's checkpoint.
pub const STANDBY_POLL: Duration = Duration::from_millis(50);

/// The first and the longest wait after a failed step.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(5));

/// What a worker reports about itself.
#[derive(Debug, Clone, Default)]
pub struct RunnerStatus {
    pub position: i64,
    pub failure: Option<String>,
    /// Whether this process holds the worker's lease.
    pub owner: bool,
}

/// A worker's position and failure, as it publishes them.
pub struct Health {
    name: &'static str,
    position: watch::Sender<i64>,
    failure: Arc<Mutex<Option<String>>>,
    owner: Arc<AtomicBool>,
}

impl Health {
    pub fn new(name: &'static str, position: i64) -> Health {
        Health { name, position: watch::channel(position).0, failure: Arc::default(), owner: Arc::default() }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn handle(&self) -> RunnerHandle {
        RunnerHandle {
            name: self.name,
            position: self.position.subscribe(),
            failure: self.failure.clone(),
            owner: self.owner.clone(),
        }
    }

    /// Records whether this process holds the lease.
    pub fn report_owner(&self, owner: bool) {
        self.owner.store(owner, Ordering::Relaxed);
    }

    pub fn position(&self) -> i64 {
        *self.position.borrow()
    }

    /// Sets the reported position, waking waiters only when it changed.
    pub fn report_position(&self, now: i64) {
        self.position.send_if_modified(|p| std::mem::replace(p, now) != now);
    }

    /// Sets or clears the reported failure; returns whether it changed.
    pub fn report_failure(&self, failure: Option<String>) -> bool {
        match self.failure.lock() {
            Ok(mut f) if *f != failure => {
                *f = failure;
                true
            }
            _ => false,
        }
    }

    /// On a standby: takes the owner's stored checkpoint as the position.
    pub async fn follow_checkpoint(&self, db: &Db) {
        if let Ok(p) = read_checkpoint(db, self.name).await {
            self.report_position(p);
        }
    }
}

/// A handle on a running worker: its checkpoint and its health.
#[derive(Clone)]
pub struct RunnerHandle {
    pub name: &'static str,
    position: watch::Receiver<i64>,
    failure: Arc<Mutex<Option<String>>>,
    owner: Arc<AtomicBool>,
}

impl RunnerHandle {
    pub fn status(&self) -> RunnerStatus {
        RunnerStatus {
            position: *self.position.borrow(),
            failure: self.failure.lock().map(|f| f.clone()).unwrap_or(None),
            owner: self.owner.load(Ordering::Relaxed),
        }
    }

    /// Changes whenever the reported position does.
    pub fn watch(&self) -> watch::Receiver<i64> {
        self.position.clone()
    }

    /// Waits until the checkpoint reaches `position`, at most `timeout`.
    /// Returns whether it did.
    pub async fn wait_for(&self, position: i64, timeout: Duration) -> bool {
        let mut rx = self.position.clone();
        tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position)).await.is_ok_and(|r| r.is_ok())
    }
}

/// Why a step failed.
pub enum StepError<E> {
    /// It can never succeed (a poison event): the worker stops, and the
    /// message is recorded.
    Stop(String),
    /// It may succeed later: logged, retried after a backoff.
    Retry(E),
}

/// A singleton worker, as [`run`] drives it.
pub trait Worker: Send {
    type Error: Display + Send;

    fn health(&self) -> &Health;
    /// Where its lease lives and its failure is recorded.
    fn db(&self) -> &Db;
    /// The lease's name (unique among workers).
    fn lease_name(&self) -> String;
    /// Changes when the log may hold something new.
    fn watch_head(&self) -> watch::Receiver<i64>;

    /// Gets ready to work: on taking the lease, and after a failed step.
    fn resume(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }

    /// Does one batch of work; `Ok(true)` when there may be more at once.
    /// A long step checks `turn` (lease, cancellation) between its batches.
    fn step(&mut self, turn: &mut Turn) -> impl Future<Output = Result<bool, StepError<Self::Error>>> + Send;

    /// While another process holds the lease: report the owner's progress.
    fn follow(&mut self) -> impl Future<Output = ()> + Send;

    /// A failed step or resume, before the backoff (the relay shows it in
    /// its health; others only log it).
    fn failed(&mut self, error: &Self::Error) {
        tracing::warn!(worker = self.health().name(), error = %error, "worker step failed; retrying");
    }
}

/// What a step may look at while it runs.
pub struct Turn {
    pub lease: Lease,
    pub head: watch::Receiver<i64>,
    pub cancel: CancellationToken,
    pub poll: Duration,
}

impl Turn {
    /// Waits for an append, the poll interval or cancellation.
    pub async fn idle(&mut self) {
        tokio::select! {
            _ = self.cancel.cancelled() => {}
            _ = self.head.changed() => {}
            _ = tokio::time::sleep(self.poll) => {}
        }
    }

    /// Whether the step may go on: not cancelled, lease still held.
    pub async fn may_continue(&mut self) -> bool {
        !self.cancel.is_cancelled() && self.lease.hold().await
    }
}

/// Runs `worker` until `cancel` fires or it stops on a poison event; then
/// the lease is gone, and the health says so.
pub async fn run<W: Worker>(worker: W, cancel: CancellationToken, poll: Duration) {
    let owner = worker.health().owner.clone();
    drive(worker, cancel, poll).await;
    owner.store(false, Ordering::Relaxed);
}

async fn drive<W: Worker>(mut worker: W, cancel: CancellationToken, poll: Duration) {
    let lease = Lease::new(worker.db(), worker.lease_name());
    let mut turn = Turn { lease, head: worker.watch_head(), cancel, poll };
    let mut backoff = BACKOFF.0;
    let mut owner = false;
    loop {
        if turn.cancel.is_cancelled() {
            return;
        }
        let held = turn.lease.hold().await;
        worker.health().report_owner(held);
        if !held {
            owner = false;
            worker.follow().await;
            if sleep_or_cancel(&turn.cancel, STANDBY_POLL).await {
                return;
            }
            continue;
        }
        let before = worker.health().position();
        let outcome = match owner {
            true => worker.step(&mut turn).await,
            false => worker.resume().await.map(|()| true).map_err(StepError::Retry),
        };
        match outcome {
            Ok(more) => {
                // Only a step that worked ends a run of failures; a resume
                // alone does not (it often works while the step keeps failing).
                if owner {
                    backoff = BACKOFF.0;
                    if !more {
                        turn.idle().await;
                    }
                }
                owner = true;
            }
            Err(StepError::Stop(message)) => {
                tracing::error!(worker = worker.health().name(), %message, "worker stopped");
                // Stored first, so whoever sees the failure in `/readyz`
                // finds it in the checkpoint row too.
                record_failure(worker.db(), worker.health().name(), &message).await;
                worker.health().report_failure(Some(message.clone()));
                return;
            }
            Err(StepError::Retry(e)) => {
                if worker.health().position() > before {
                    // It failed after getting somewhere (a relay session).
                    backoff = BACKOFF.0;
                }
                worker.failed(&e);
                // Its state in memory may be ahead of what was committed.
                owner = false;
                if sleep_or_cancel(&turn.cancel, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
    }
}

/// Sleeps `wait`; returns whether `cancel` fired first.
async fn sleep_or_cancel(cancel: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(wait) => false,
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

/// A worker's stored checkpoint (0 before its first batch).
pub(crate) async fn read_checkpoint(db: &Db, name: &str) -> Result<i64, sqlx::Error> {
    let position: Option<i64> = sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
        .bind(name)
        .fetch_optional(&db.pool)
        .await?;
    Ok(position.unwrap_or(0))
}
