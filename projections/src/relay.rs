//! The NATS JetStream relay: a projection whose "read model" is a JetStream
//! stream. Every event of the log is published, in position order, to
//! `{prefix}.{company_id}.{application_id}.{event_type}` with `Nats-Msg-Id`
//! set to the event id; the checkpoint moves only over events JetStream
//! acked.
//!
//! - **In order, without gaps**: every message is published on the
//!   condition that the stream's last sequence is the one before it
//!   (`Nats-Expected-Last-Sequence`), so JetStream stores an event only
//!   right after the one before it: the stream is always a gap-free prefix
//!   of the log, even when a connection drops with messages in flight and
//!   the client resends its buffer after reconnecting. This lets the acks
//!   of a few batches be outstanding while the next is sent.
//! - **Nothing lost**: after a failed publish (NATS down, a crash, a lost
//!   lease) the relay goes on from the later of the stream's last message
//!   and the saved checkpoint (saved at most every second, so the database
//!   is not written once per batch).
//! - **Nothing duplicated**: it goes on after what the stream holds; the
//!   stream's duplicate window (`Nats-Msg-Id` = event id) drops anything
//!   sent twice on top.
//! - Event data is published as stored: encrypted attribute values are
//!   sealed before they reach the log, so they are sealed on NATS too.
//! - Replay never touches this checkpoint, so it never republishes.

use crate::worker::read_checkpoint;
use crate::worker::{self, Health, RunnerHandle, StepError, Turn, Worker};
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage, stream};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use userstream_eventlog::{EventLog, RecordedEvent, SqlEventLog};

/// The relay's checkpoint name (also its lease's).
pub const NAME: &str = "nats-relay";

/// Batches published but not yet acked, at most.
const WINDOW: usize = 8;

/// A published batch: its last position and every event's ack.
struct Batch {
    last: i64,
    acks: Vec<(i64, PublishAckFuture)>,
}

/// How often a busy relay saves its checkpoint. In between, the stream
/// itself records how far it got: its last message carries its position.
const SAVE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub url: String,
    /// The JetStream stream, created with these settings when missing.
    pub stream: String,
    pub subject_prefix: String,
    pub duplicate_window: Duration,
    /// How long the stream keeps events (zero: forever).
    pub max_age: Duration,
    pub batch: i64,
}

impl RelayConfig {
    pub fn new(url: impl Into<String>) -> Self {
        RelayConfig {
            url: url.into(),
            stream: "USERSTREAM".into(),
            subject_prefix: "userstream".into(),
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::ZERO,
            batch: 500,
        }
    }
}

/// Counter: failed relay steps, by `reason` ([`FAILURE_REASONS`]).
pub const PUBLISH_FAILURES: &str = "userstream_nats_publish_failures_total";

/// The `reason` label of [`PUBLISH_FAILURES`], one per kind of [`RelayError`].
pub const FAILURE_REASONS: [&str; 4] = ["unreachable", "stream", "publish", "storage"];

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("NATS unreachable at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("JetStream stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    #[error("publishing event {position} failed: {reason}")]
    Publish { position: i64, reason: String },
    #[error("storage failure: {0}")]
    Storage(#[from] sqlx::Error),
    #[error(transparent)]
    Log(#[from] userstream_eventlog::StorageError),
}

pub struct Relay {
    log: SqlEventLog,
    config: RelayConfig,
    health: Health,
    /// Connected on first taking the lease; async-nats reconnects by itself.
    js: Option<jetstream::Context>,
}

/// The subject an event is published on. Ids are single subject tokens, so
/// the characters NATS gives a meaning (`.`, `*`, `>`, whitespace) become `_`.
pub fn subject(prefix: &str, event: &RecordedEvent) -> String {
    let token = |s: &str| -> String {
        s.chars().map(|c| if c == '.' || c == '*' || c == '>' || c.is_whitespace() { '_' } else { c }).collect()
    };
    format!("{prefix}.{}.{}.{}", token(&event.company_id), token(&event.application_id), event.event_type)
}

impl Relay {
    pub async fn new(log: SqlEventLog, config: RelayConfig) -> Result<Relay, sqlx::Error> {
        let db = log.db();
        db.migrate("checkpoints", crate::runner::MIGRATIONS).await?;
        sqlx::query("INSERT INTO checkpoints (name, position) VALUES ($1, 0) ON CONFLICT DO NOTHING")
            .bind(NAME)
            .execute(&db.pool)
            .await?;
        let position = read_checkpoint(db, NAME).await?;
        Ok(Relay { log, config, health: Health::new(NAME, position), js: None })
    }

    pub fn handle(&self) -> RunnerHandle {
        self.health.handle()
    }

    fn report(&self, failure: Option<String>) {
        let changed = self.health.report_failure(failure.clone());
        match failure {
            Some(reason) if changed => tracing::warn!(%reason, "nats relay not publishing"),
            None if changed => tracing::info!("nats relay publishing"),
            _ => {}
        }
    }

    /// Publishes while this process holds the lease, as every worker runs
    /// ([`worker::run`]): connects on taking it (retrying with backoff while
    /// NATS is unreachable, reported in its health), makes sure the stream
    /// exists, then publishes from where the stream ends.
    pub async fn run(self, cancel: CancellationToken, poll: Duration) {
        worker::run(self, cancel, poll).await
    }

    /// Publishes from `from` (the stream's last sequence being `sequence`)
    /// until cancelled, the lease is lost or a publish fails. The publisher
    /// sends batch after batch in position order while the acks of up to
    /// [`WINDOW`] earlier batches are outstanding, each message on the
    /// condition that the stream's last sequence is the one before it; the
    /// acker awaits the acks in the same order, moves the position, and
    /// saves the checkpoint every [`SAVE_EVERY`], when the publisher goes
    /// idle and at the end. A failure ends both, and the caller goes on
    /// from what the stream holds. A message lost on the way (a dropped
    /// connection) makes every later one fail its condition, so nothing is
    /// stored out of order, even what the client resends after reconnecting.
    async fn session(
        &self,
        js: &jetstream::Context,
        (from, sequence): (i64, u64),
        turn: &mut Turn,
    ) -> Result<(), RelayError> {
        // `None`: the publisher caught up with the log (save now).
        let (tx, mut rx) = mpsc::channel::<Option<Batch>>(WINDOW);
        let publisher = async move {
            let mut from = from;
            let mut sequence = sequence;
            let mut idle = false;
            loop {
                if !turn.may_continue().await {
                    return Ok(());
                }
                let events = self.log.read_all(from, self.config.batch).await?;
                let Some(last) = events.last().map(|e| e.position) else {
                    if !idle && tx.send(None).await.is_err() {
                        return Ok(());
                    }
                    idle = true;
                    turn.idle().await;
                    continue;
                };
                idle = false;
                let acks = self.publish(js, &events, &mut sequence).await?;
                from = last;
                if tx.send(Some(Batch { last, acks })).await.is_err() {
                    // The acker failed; `try_join!` reports why.
                    return Ok(());
                }
            }
        };
        let acker = async {
            let mut saved = Instant::now();
            // The resume point may be ahead of the stored checkpoint.
            let mut unsaved = Some(from);
            while let Some(batch) = rx.recv().await {
                let caught_up = batch.is_none();
                if let Some(Batch { last, acks }) = batch {
                    for (position, ack) in acks {
                        ack.await.map_err(|e| RelayError::Publish { position, reason: e.to_string() })?;
                    }
                    self.health.report_position(last);
                    unsaved = Some(last);
                }
                // Everything sent is acked, or the stream already held all
                // of the log (a reconnecting client resends what it had
                // buffered, so a retry may find nothing left to publish):
                // either way the relay works again.
                self.report(None);
                if let (Some(p), true) = (unsaved, caught_up || saved.elapsed() >= SAVE_EVERY) {
                    if let Err(e) = self.save(p).await {
                        tracing::warn!(error = %e, "could not save the relay checkpoint");
                    }
                    saved = Instant::now();
                    unsaved = None;
                }
            }
            if let Some(p) = unsaved {
                let _ = self.save(p).await;
            }
            Ok::<(), RelayError>(())
        };
        tokio::try_join!(publisher, acker).map(|_| ())
    }

    /// Where to publish from, and the stream's last sequence (which the next
    /// message must find). Every message is published on the condition that
    /// the stream's last sequence is the one before it, so the stream is
    /// always a gap-free prefix of the log and its last message tells how
    /// far it got; the saved checkpoint counts when the stream holds less
    /// (new, or its messages aged out).
    async fn resume_point(&self, js: &jetstream::Context) -> Result<(i64, u64), RelayError> {
        let saved = read_checkpoint(self.log.db(), NAME).await?;
        let stream_error = |e: &dyn std::fmt::Display| RelayError::Stream {
            stream: self.config.stream.clone(),
            reason: e.to_string(),
        };
        let mut stream = js.get_stream(&self.config.stream).await.map_err(|e| stream_error(&e))?;
        let last = stream.info().await.map_err(|e| stream_error(&e))?.state.last_sequence;
        if last == 0 {
            return Ok((saved, 0));
        }
        let published = match stream.get_raw_message(last).await {
            Ok(message) => serde_json::from_slice::<serde_json::Value>(&message.payload)
                .ok()
                .and_then(|v| v["position"].as_i64())
                .unwrap_or(0),
            // Purged meanwhile (retention): the saved checkpoint it is.
            Err(_) => 0,
        };
        Ok((saved.max(published), last))
    }

    /// Saves the checkpoint (only ever forward).
    async fn save(&self, position: i64) -> Result<(), sqlx::Error> {
        let db = self.log.db();
        let _turn = db.write_turn().await;
        sqlx::query("UPDATE checkpoints SET position = $1 WHERE name = $2 AND position < $1")
            .bind(position)
            .bind(NAME)
            .execute(&db.pool)
            .await?;
        Ok(())
    }

    async fn connect(&self) -> Result<jetstream::Context, RelayError> {
        let unreachable =
            |e: &dyn std::fmt::Display| RelayError::Unreachable { url: self.config.url.clone(), reason: e.to_string() };
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(self.config.url.as_str())
            .await
            .map_err(|e| unreachable(&e))?;
        let js = jetstream::new(client);
        let stream_error = |e: &dyn std::fmt::Display| RelayError::Stream {
            stream: self.config.stream.clone(),
            reason: e.to_string(),
        };
        js.get_or_create_stream(stream::Config {
            name: self.config.stream.clone(),
            subjects: vec![format!("{}.>", self.config.subject_prefix)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            duplicate_window: self.config.duplicate_window,
            max_age: self.config.max_age,
            ..Default::default()
        })
        .await
        .map_err(|e| stream_error(&e))?;
        Ok(js)
    }

    /// Sends `events` in order, each expecting the stream's last sequence
    /// to be `sequence` (counted on); returns each one's ack to await.
    async fn publish(
        &self,
        js: &jetstream::Context,
        events: &[RecordedEvent],
        sequence: &mut u64,
    ) -> Result<Vec<(i64, PublishAckFuture)>, RelayError> {
        let span = tracing::debug_span!("nats.publish", events = events.len());
        async {
            let mut acks = Vec::with_capacity(events.len());
            for event in events {
                let failed =
                    |e: &dyn std::fmt::Display| RelayError::Publish { position: event.position, reason: e.to_string() };
                let payload = serde_json::to_vec(event).map_err(|e| failed(&e))?;
                let ack = js
                    .send_publish(
                        subject(&self.config.subject_prefix, event),
                        PublishMessage::build()
                            .payload(payload.into())
                            .message_id(event.event_id.as_str())
                            .expected_last_sequence(*sequence),
                    )
                    .await
                    .map_err(|e| failed(&e))?;
                *sequence += 1;
                acks.push((event.position, ack));
            }
            Ok(acks)
        }
        .instrument(span)
        .await
    }
}

impl Worker for Relay {
    type Error = RelayError;

    fn health(&self) -> &Health {
        &self.health
    }

    fn db(&self) -> &userstream_eventlog::Db {
        self.log.db()
    }

    fn lease_name(&self) -> String {
        NAME.into()
    }

    fn watch_head(&self) -> watch::Receiver<i64> {
        self.log.watch_head()
    }

    /// Connects once (async-nats reconnects by itself afterwards). Health
    /// turns good here only on that first connect; after a failure it turns
    /// good when acks come back again (see `session`).
    async fn resume(&mut self) -> Result<(), RelayError> {
        if self.js.is_none() {
            self.js = Some(self.connect().await?);
            self.report(None);
        }
        Ok(())
    }

    /// One session: from where the stream ends until the lease is lost,
    /// cancellation, or a failure.
    async fn step(&mut self, turn: &mut Turn) -> Result<bool, StepError<RelayError>> {
        let js = match self.js.clone() {
            Some(js) => js,
            None => {
                let js = self.connect().await.map_err(StepError::Retry)?;
                self.js = Some(js.clone());
                js
            }
        };
        let (from, sequence) = self.resume_point(&js).await.map_err(StepError::Retry)?;
        self.health.report_position(from);
        self.session(&js, (from, sequence), turn).await.map_err(StepError::Retry)?;
        Ok(true)
    }

    async fn follow(&mut self) {
        self.health.follow_checkpoint(self.log.db()).await;
    }

    fn failed(&mut self, error: &RelayError) {
        let reason = match error {
            RelayError::Unreachable { .. } => FAILURE_REASONS[0],
            RelayError::Stream { .. } => FAILURE_REASONS[1],
            RelayError::Publish { .. } => FAILURE_REASONS[2],
            RelayError::Storage(_) | RelayError::Log(_) => FAILURE_REASONS[3],
        };
        metrics::counter!(PUBLISH_FAILURES, "reason" => reason).increment(1);
        self.report(Some(error.to_string()));
    }
}
