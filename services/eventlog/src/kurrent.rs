//! The event log on KurrentDB (EventStoreDB), behind the `eventstore`
//! feature, on the maintained `kurrentdb` client (1.x: the successor of the
//! `eventstore` crate; it ships its generated gRPC code, so no `protoc`).
//! It has not run against a server on this project's machines (none can be
//! installed there); the contract suite runs against it when
//! `EVENTSTORE_URL` is set.
//!
//! How the [`EventLog`] contract maps onto KurrentDB:
//! - A log stream is a KurrentDB stream (`{prefix}{stream}`, the prefix
//!   keeps logs apart on one server). Versions are revisions + 1; an
//!   append states `NoStream` or `StreamRevision(version - 1)`.
//! - Positions: a write's events share one `$all` commit position `C` (the
//!   log position of the write's first event); the log position of an
//!   event is `C << 16 | i`, `i` its index in the write (a write holds at
//!   most 65,536 events). Reading `$all` from `C` (inclusive) and skipping
//!   the first `i + 1` events of `C` resumes exactly after an event; no
//!   reader skips one.
//! - Uniqueness: each reserved value has a stream of its own
//!   (`{prefix}~reservation-{scope}-{key}`) whose last event says which
//!   stream holds it; a claim appends with the revision it read, so two
//!   claims cannot both win.
//! - Idempotency: the first result of a key is stored in
//!   `{prefix}~idempotency-{scope}-{key}`; a request that finds it appends
//!   nothing and answers it (`replayed`).
//! - Not atomic across streams: KurrentDB 1.x has no multi-stream append.
//!   Every expected version is checked first and the streams are appended
//!   in order; a concurrent writer between the check and a later stream's
//!   append leaves the earlier streams written (`AppendError::Conflict`
//!   names the stream). Claims a failed append made are released again; a
//!   crash between a claim and its append leaves the value held.
//! - `$all` is read with a server-side filter on the prefix; the
//!   reservation and idempotency streams (`{prefix}~…`) are skipped.

use crate::{
    AppendError, AppendRequest, AppendResult, EventData, EventLog, ExpectedVersion, RecordedEvent, StorageError,
};
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, CurrentRevision, ReadAllOptions, ReadStreamOptions, StreamPosition,
    StreamState, SubscriptionFilter,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;

/// Bits of a log position that hold the index of an event in its write.
const INDEX_BITS: u32 = 16;
/// Internal streams (reservations, idempotency) carry this after the prefix.
const INTERNAL: &str = "~";

#[derive(Debug, thiserror::Error)]
#[error("KurrentDB: {0}")]
struct KurrentError(String);

fn storage(e: impl std::fmt::Display) -> StorageError {
    StorageError::new(KurrentError(e.to_string()))
}

/// The envelope fields the log owns, kept as the event's custom metadata.
#[derive(Serialize, Deserialize)]
struct Envelope {
    schema: i64,
    #[serde(with = "time::serde::rfc3339")]
    occurred_at: OffsetDateTime,
    company_id: String,
    application_id: String,
    actor: String,
    correlation_id: String,
    causation_id: Option<String>,
}

#[derive(Clone)]
pub struct KurrentEventLog {
    client: Client,
    prefix: String,
}

/// Numbers events within their writes as they are read in order: a new
/// commit position starts a write at index 0.
#[derive(Default)]
struct Numbering {
    write: Option<u64>,
    index: u64,
}

impl Numbering {
    fn next(&mut self, commit: u64) -> u64 {
        if self.write == Some(commit) {
            self.index += 1;
        } else {
            self.write = Some(commit);
            self.index = 0;
        }
        self.index
    }
}

fn position(commit: u64, index: u64) -> i64 {
    ((commit << INDEX_BITS) | index.min((1 << INDEX_BITS) - 1)) as i64
}

fn split(position: i64) -> (u64, u64) {
    let p = position.max(0) as u64;
    (p >> INDEX_BITS, p & ((1 << INDEX_BITS) - 1))
}

impl KurrentEventLog {
    /// Connects lazily (the first call reaches the server) to `url`
    /// (`kurrentdb://host:2113?tls=false`, or `esdb://…`); `prefix` names
    /// this log's streams on the server.
    pub fn connect(url: &str, prefix: &str) -> Result<KurrentEventLog, StorageError> {
        let settings: ClientSettings = url.parse().map_err(storage)?;
        let client = Client::new(settings).map_err(storage)?;
        Ok(KurrentEventLog { client, prefix: prefix.to_string() })
    }

    fn name(&self, stream: &str) -> String {
        format!("{}{stream}", self.prefix)
    }

    fn internal(&self, kind: &str, scope: &str, key: &str) -> String {
        format!("{}{INTERNAL}{kind}-{scope}-{key}", self.prefix)
    }

    /// The last event of a stream (`None`: no stream) and its revision.
    async fn last(&self, stream: &str) -> Result<Option<(u64, Value)>, StorageError> {
        let options = ReadStreamOptions::default().position(StreamPosition::End).max_count(1);
        let mut read = self.client.read_stream(stream, &options).await.map_err(storage)?;
        match read.next().await {
            Ok(Some(event)) => {
                let e = event.get_original_event();
                Ok(Some((e.revision, serde_json::from_slice(&e.data).unwrap_or(Value::Null))))
            }
            Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => Ok(None),
            Err(e) => Err(storage(e)),
        }
    }

    async fn version(&self, stream: &str) -> Result<i64, StorageError> {
        Ok(self.last(&self.name(stream)).await?.map_or(0, |(revision, _)| revision as i64 + 1))
    }

    fn state(expected: ExpectedVersion) -> StreamState {
        match expected {
            ExpectedVersion::Any => StreamState::Any,
            ExpectedVersion::NoStream => StreamState::NoStream,
            ExpectedVersion::Exact(v) => StreamState::StreamRevision(v.max(1) as u64 - 1),
        }
    }

    async fn append_json(&self, stream: &str, state: StreamState, data: &Value) -> Result<(), AppendError> {
        let event = kurrentdb::EventData::json("userstream.internal", data).map_err(storage)?;
        let options = AppendToStreamOptions::default().stream_state(state);
        match self.client.append_to_stream(stream, &options, event).await {
            Ok(_) => Ok(()),
            Err(kurrentdb::Error::WrongExpectedVersion { .. }) => {
                Err(AppendError::Conflict { stream: stream.to_string(), expected: ExpectedVersion::Any, actual: -1 })
            }
            Err(e) => Err(storage(e).into()),
        }
    }

    /// Claims `key` for `stream`: `Ok(true)` when this call took it.
    async fn claim(&self, scope: &str, key: &str, stream: &str) -> Result<bool, AppendError> {
        let name = self.internal("reservation", scope, key);
        let last = self.last(&name).await?;
        let state = match &last {
            Some((_, v)) if v["holder"].as_str() == Some(stream) => return Ok(false),
            Some((_, v)) if v["holder"].is_string() => return Err(AppendError::Reserved { key: key.to_string() }),
            Some((revision, _)) => StreamState::StreamRevision(*revision),
            None => StreamState::NoStream,
        };
        match self.append_json(&name, state, &json!({"holder": stream})).await {
            Ok(()) => Ok(true),
            Err(AppendError::Conflict { .. }) => Err(AppendError::Reserved { key: key.to_string() }),
            Err(e) => Err(e),
        }
    }

    /// Releases `key` if `stream` holds it.
    async fn release(&self, scope: &str, key: &str, stream: &str) -> Result<(), AppendError> {
        let name = self.internal("reservation", scope, key);
        if let Some((revision, v)) = self.last(&name).await? {
            if v["holder"].as_str() == Some(stream) {
                self.append_json(&name, StreamState::StreamRevision(revision), &json!({"holder": null})).await?;
            }
        }
        Ok(())
    }

    fn recorded(&self, e: &kurrentdb::RecordedEvent, index: u64) -> Result<RecordedEvent, StorageError> {
        let envelope: Envelope = serde_json::from_slice(&e.custom_metadata).map_err(storage)?;
        let text = String::from_utf8(e.data.to_vec()).map_err(storage)?;
        let nanos = e.created.timestamp_nanos_opt().unwrap_or_default();
        Ok(RecordedEvent {
            position: position(e.position.commit, index),
            event_id: e.id.to_string(),
            stream: e.stream_id().strip_prefix(&self.prefix).unwrap_or(e.stream_id()).to_string(),
            version: e.revision as i64 + 1,
            event_type: e.event_type.clone(),
            schema: envelope.schema,
            occurred_at: envelope.occurred_at,
            recorded_at: OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).map_err(storage)?,
            company_id: envelope.company_id,
            application_id: envelope.application_id,
            actor: envelope.actor,
            correlation_id: envelope.correlation_id,
            causation_id: envelope.causation_id,
            data: EventData::from_text(text).map_err(storage)?,
        })
    }

    /// At most `limit` events in `$all` order after `from` (a write's commit
    /// position and the index of the last event already read in it),
    /// numbered within their writes.
    async fn read_from(&self, from: Option<(u64, u64)>, limit: usize) -> Result<Vec<RecordedEvent>, StorageError> {
        let filter = SubscriptionFilter::on_stream_name().add_prefix(&self.prefix);
        let start = match from {
            Some((commit, _)) => StreamPosition::Position(kurrentdb::Position { commit, prepare: commit }),
            None => StreamPosition::Start,
        };
        let options = ReadAllOptions::default().forwards().position(start).filter(filter).max_count(limit + 64);
        let mut read = self.client.read_all(&options).await.map_err(storage)?;
        let internal = format!("{}{INTERNAL}", self.prefix);
        let (mut out, mut numbering) = (Vec::new(), Numbering::default());
        while out.len() < limit {
            let Some(event) = read.next().await.map_err(storage)? else { break };
            let e = event.get_original_event();
            let index = numbering.next(e.position.commit);
            if e.stream_id().starts_with(&internal) {
                continue;
            }
            if let Some((commit, after)) = from {
                if e.position.commit == commit && index <= after {
                    continue;
                }
            }
            out.push(self.recorded(e, index)?);
        }
        Ok(out)
    }
}

impl EventLog for KurrentEventLog {
    async fn append(&self, request: AppendRequest) -> Result<AppendResult, AppendError> {
        let scope = request.tenant.scope();
        let idempotency = request.idempotency_key.as_ref().map(|k| self.internal("idempotency", &scope, k));
        if let Some(name) = &idempotency {
            if let Some((_, stored)) = self.last(name).await? {
                let mut first: AppendResult = serde_json::from_value(stored).map_err(storage)?;
                first.replayed = true;
                return Ok(first);
            }
        }
        // Every expected version first: a stale one appends nothing.
        for s in &request.streams {
            let actual = self.version(&s.stream).await?;
            let ok = match s.expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => actual == 0,
                ExpectedVersion::Exact(v) => actual == v,
            };
            if !ok {
                return Err(AppendError::Conflict { stream: s.stream.clone(), expected: s.expected, actual });
            }
        }
        let mut claimed = Vec::new();
        for r in &request.reserve {
            match self.claim(&scope, &r.key, &r.stream).await {
                Ok(true) => claimed.push(r),
                Ok(false) => {}
                Err(e) => {
                    for c in claimed {
                        let _ = self.release(&scope, &c.key, &c.stream).await;
                    }
                    return Err(e);
                }
            }
        }
        let mut result = AppendResult { last_position: 0, streams: Vec::new(), replayed: false };
        for s in &request.streams {
            let mut events = Vec::with_capacity(s.events.len());
            for e in &s.events {
                let envelope = Envelope {
                    schema: e.schema,
                    occurred_at: e.occurred_at,
                    company_id: request.tenant.company_id.clone(),
                    application_id: request.tenant.application_id.clone(),
                    actor: request.actor.clone(),
                    correlation_id: request.correlation_id.clone(),
                    causation_id: request.causation_id.clone(),
                };
                let event = kurrentdb::EventData::json(&e.event_type, &e.data)
                    .map_err(storage)?
                    .id(e.event_id)
                    .metadata_as_json(&envelope)
                    .map_err(storage)?;
                events.push(event);
            }
            let count = events.len() as u64;
            let options = AppendToStreamOptions::default().stream_state(Self::state(s.expected));
            let written = match self.client.append_to_stream(self.name(&s.stream), &options, events).await {
                Ok(w) => w,
                Err(e) => {
                    for c in &claimed {
                        let _ = self.release(&scope, &c.key, &c.stream).await;
                    }
                    return Err(match e {
                        kurrentdb::Error::WrongExpectedVersion { current, .. } => AppendError::Conflict {
                            stream: s.stream.clone(),
                            expected: s.expected,
                            actual: match current {
                                CurrentRevision::Current(r) => r as i64 + 1,
                                CurrentRevision::NoStream => 0,
                            },
                        },
                        e => storage(e).into(),
                    });
                }
            };
            let version = written.next_expected_version as i64 + 1;
            result.streams.push((s.stream.clone(), version));
            result.last_position = result.last_position.max(position(written.position.commit, count.saturating_sub(1)));
        }
        for r in &request.release {
            self.release(&scope, &r.key, &r.stream).await?;
        }
        if let Some(name) = &idempotency {
            let stored = serde_json::to_value(&result).map_err(storage)?;
            // A concurrent request with the same key that stored first wins
            // the record; both were appended (see the module docs).
            let _ = self.append_json(name, StreamState::NoStream, &stored).await;
        }
        Ok(result)
    }

    async fn read_all(&self, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StorageError> {
        let from = (after > 0).then(|| split(after));
        self.read_from(from, limit.max(0) as usize).await
    }

    async fn read_stream(&self, stream: &str) -> Result<Vec<RecordedEvent>, StorageError> {
        let options = ReadStreamOptions::default().forwards().position(StreamPosition::Start).max_count(usize::MAX);
        let mut read = self.client.read_stream(self.name(stream), &options).await.map_err(storage)?;
        let (mut out, mut numbering) = (Vec::new(), Numbering::default());
        loop {
            match read.next().await {
                Ok(Some(event)) => {
                    let e = event.get_original_event();
                    out.push(self.recorded(e, numbering.next(e.position.commit))?);
                }
                Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => return Ok(out),
                Err(e) => return Err(storage(e)),
            }
        }
    }

    async fn head(&self) -> Result<i64, StorageError> {
        let filter = SubscriptionFilter::on_stream_name().add_prefix(&self.prefix);
        let options = ReadAllOptions::default().position(StreamPosition::End).filter(filter).max_count(1 << INDEX_BITS);
        let mut read = self.client.read_all(&options).await.map_err(storage)?;
        let internal = format!("{}{INTERNAL}", self.prefix);
        let (mut last, mut count) = (None, 0u64);
        while let Some(event) = read.next().await.map_err(storage)? {
            let e = event.get_original_event();
            match last {
                None if e.stream_id().starts_with(&internal) => continue,
                None => {
                    last = Some(e.position.commit);
                    count = 1;
                }
                Some(commit) if commit == e.position.commit => count += 1,
                Some(_) => break,
            }
        }
        Ok(last.map_or(0, |commit| position(commit, count - 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_writes_then_events_within_a_write() {
        assert!(position(100, 0) < position(100, 1));
        assert!(position(100, 65_535) < position(101, 0));
        assert_eq!(split(position(12_345, 7)), (12_345, 7));
    }

    #[test]
    fn events_are_numbered_within_their_write() {
        let mut n = Numbering::default();
        let indexes: Vec<u64> = [5, 5, 5, 9, 12, 12].into_iter().map(|c| n.next(c)).collect();
        assert_eq!(indexes, [0, 1, 2, 0, 0, 1]);
    }
}
