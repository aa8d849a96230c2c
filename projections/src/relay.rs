//! The NATS JetStream relay: a projection whose "read model" is a JetStream
//! stream. Every event of the log is published, in position order, to
//! `{prefix}.{company_id}.{application_id}.{event_type}` with `Nats-Msg-Id`
//! set to the event id; the checkpoint moves only after JetStream acked the
//! whole batch.
//!
//! - **Nothing lost**: a batch whose acks did not all arrive is published
//!   again (NATS down, a crash, a lost lease). Where to go on from is the
//!   later of the saved checkpoint (saved at most every second, so the
//!   database is not written once per batch) and the position in the
//!   stream's last message.
//! - **Nothing duplicated**: the stream drops a message whose id it saw in
//!   its duplicate window, so republished events are stored once.
//! - **Order per stream kept**: one publisher (the lease's owner) sends in
//!   position order on one connection and awaits the acks before the next
//!   batch.
//! - Event data is published as stored: encrypted attribute values are
//!   sealed before they reach the log, so they are sealed on NATS too.
//! - Replay never touches this checkpoint, so it never republishes.

use crate::runner::{follow_checkpoint, read_checkpoint, report_position, RunnerHandle, STANDBY_POLL};
use async_nats::jetstream::{self, message::PublishMessage, stream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use userstream_eventlog::lease::Lease;
use userstream_eventlog::{EventLog, RecordedEvent, SqlEventLog};

/// The relay's checkpoint name (also its lease's).
pub const NAME: &str = "nats-relay";

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
}

pub struct Relay {
    log: SqlEventLog,
    config: RelayConfig,
    position: watch::Sender<i64>,
    failure: Arc<Mutex<Option<String>>>,
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
        Ok(Relay { log, config, position: watch::channel(position).0, failure: Arc::new(Mutex::new(None)) })
    }

    pub fn handle(&self) -> RunnerHandle {
        RunnerHandle::new(NAME, self.position.subscribe(), self.failure.clone())
    }

    fn report(&self, failure: Option<String>) {
        if let Ok(mut f) = self.failure.lock() {
            if *f != failure {
                match &failure {
                    Some(reason) => tracing::warn!(%reason, "nats relay not publishing"),
                    None => tracing::info!("nats relay publishing"),
                }
                *f = failure;
            }
        }
    }

    /// Connects (retrying with backoff while NATS is unreachable), makes sure
    /// the stream exists, then publishes while this process holds the lease.
    pub async fn run(self, cancel: CancellationToken, poll: Duration) {
        let mut backoff = Duration::from_millis(100);
        let js = loop {
            match self.connect().await {
                Ok(js) => break js,
                Err(e) => {
                    self.report(Some(e.to_string()));
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        self.report(None);
        let mut head = self.log.watch_head();
        let mut lease = Lease::new(self.log.db(), NAME);
        let mut backoff = Duration::from_millis(100);
        // Where publishing goes on from; `None` until read again (at start,
        // after losing the lease, after a failure).
        let mut cursor: Option<i64> = None;
        let mut saved = Instant::now();
        loop {
            if cancel.is_cancelled() {
                if let Some(p) = cursor {
                    let _ = self.save(p).await;
                }
                return;
            }
            if !lease.hold().await {
                cursor = None;
                follow_checkpoint(self.log.db(), NAME, &self.position).await;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(STANDBY_POLL) => continue,
                }
            }
            let outcome = match cursor {
                Some(from) => self.step(&js, from).await,
                None => self.resume_point(&js).await.map(|from| (from, 0)),
            };
            match outcome {
                Ok((to, published)) => {
                    cursor = Some(to);
                    self.report(None);
                    backoff = Duration::from_millis(100);
                    if published == 0 || saved.elapsed() >= SAVE_EVERY {
                        if let Err(e) = self.save(to).await {
                            tracing::warn!(error = %e, "could not save the relay checkpoint");
                        }
                        saved = Instant::now();
                    }
                    if published == 0 {
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            _ = head.changed() => {}
                            _ = tokio::time::sleep(poll) => {}
                        }
                    }
                }
                Err(e) => {
                    cursor = None;
                    self.report(Some(e.to_string()));
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Where to publish from: the saved checkpoint, or further when the
    /// stream already holds later events (published after the last save).
    async fn resume_point(&self, js: &jetstream::Context) -> Result<i64, RelayError> {
        let saved = read_checkpoint(self.log.db(), NAME).await?;
        let stream_error = |e: &dyn std::fmt::Display| RelayError::Stream {
            stream: self.config.stream.clone(),
            reason: e.to_string(),
        };
        let mut stream = js.get_stream(&self.config.stream).await.map_err(|e| stream_error(&e))?;
        let last = stream.info().await.map_err(|e| stream_error(&e))?.state.last_sequence;
        if last == 0 {
            return Ok(saved);
        }
        let published = match stream.get_raw_message(last).await {
            Ok(message) => serde_json::from_slice::<serde_json::Value>(&message.payload)
                .ok()
                .and_then(|v| v["position"].as_i64())
                .unwrap_or(0),
            // Purged meanwhile (retention): the saved checkpoint it is.
            Err(_) => 0,
        };
        Ok(saved.max(published))
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

    /// Publishes the events after `from` (one batch) and waits for their
    /// acks. Returns the position it got to and how many it published.
    pub async fn step(&self, js: &jetstream::Context, from: i64) -> Result<(i64, usize), RelayError> {
        let started = Instant::now();
        let events = self.log.read_all(from, self.config.batch).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            report_position(&self.position, from);
            return Ok((from, 0));
        };
        let read = started.elapsed();
        let span = tracing::debug_span!("nats.publish", from, to = last, events = events.len());
        async {
            let mut acks = Vec::with_capacity(events.len());
            for event in &events {
                let failed =
                    |e: &dyn std::fmt::Display| RelayError::Publish { position: event.position, reason: e.to_string() };
                let payload = serde_json::to_vec(event).map_err(|e| failed(&e))?;
                let ack = js
                    .send_publish(
                        subject(&self.config.subject_prefix, event),
                        PublishMessage::build().payload(payload.into()).message_id(event.event_id.as_str()),
                    )
                    .await
                    .map_err(|e| failed(&e))?;
                acks.push((event.position, ack));
            }
            let sent = started.elapsed();
            for (position, ack) in acks {
                ack.await.map_err(|e| RelayError::Publish { position, reason: e.to_string() })?;
            }
            self.position.send_replace(last);
            tracing::debug!(events = events.len(), ?read, ?sent, acked = ?started.elapsed(), "relay batch");
            Ok((last, events.len()))
        }
        .instrument(span)
        .await
    }
}
