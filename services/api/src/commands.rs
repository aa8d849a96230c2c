//! The one command handler: load → evolve → decide → reserve → append →
//! retry, for every stream kind ([`Stream`]) of both surfaces.
//!
//! - **Load**: a stream's events folded with the kind's `evolve`. A stream
//!   of another tenant reads as empty at version 0, so its ids answer "not
//!   found" and any append to it fails its version check.
//! - **Decide** with a [`Context`] built here (time, fresh ids, the
//!   application's settings); handlers never read the clock or mint ids.
//! - **Reserve**: the unique values a state holds ([`Stream::unique_keys`])
//!   are claimed when a change adds them and released when it drops them,
//!   in the same transaction as the events: a failed append leaves no
//!   reservation behind.
//! - **Append** with the version the decision saw; on a version conflict
//!   the whole cycle runs again, at most [`MAX_ATTEMPTS`] times, unless the
//!   caller pinned the version (`If-Match`). Then it answers 409.
//! - Errors are a [`Rejection`] (a domain "no": 400/404/409) or a
//!   [`Failure`] (IO broke: 5xx, logged once where it becomes the HTTP
//!   answer), never one carried inside the other.
//!
//! Every command runs inside a `command` span naming its kind, command and
//! first stream; no personal data goes into the span.

use crate::clock::Clock;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;
use userstream_domain::attribute::AttrError;
use userstream_domain::codec::{DecodeError, EncodedEvent};
use userstream_domain::group::GroupError;
use userstream_domain::platform::{ConfigError, ConfigState, ConfigStream, PlatformConfig};
use userstream_domain::user::{User, UserCommand, UserError, UserEvent, UserStream};
use userstream_domain::{Context, IdSeed, Secret, Stream, StreamId, UserId};
use userstream_eventlog::{
    AppendError, AppendRequest, EventLog, ExpectedVersion, NewEvent, RecordedEvent, Reservation, SqlEventLog,
    StreamAppend, Tenant,
};
use uuid::Uuid;

/// Who asked, and under which correlation id; recorded in every event's envelope.
#[derive(Debug, Clone)]
pub struct Meta {
    pub tenant: Tenant,
    pub actor: String,
    pub correlation_id: String,
    /// The client's `Idempotency-Key`; the log keeps it per command name.
    pub idempotency_key: Option<String>,
}

/// A business rule, a uniqueness claim or a version check said no. Nothing
/// was appended.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error(transparent)]
    Attribute(#[from] AttrError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Job(#[from] userstream_domain::job::JobError),
    #[error("unknown user ids: {}", .0.join(", "))]
    UnknownUsers(Vec<String>),
    #[error("{kind} {value} is already taken")]
    Taken { kind: String, value: String },
    #[error("version conflict: the stream is at version {actual}, the request expected {expected}")]
    VersionConflict { expected: i64, actual: i64 },
    #[error("too many concurrent changes to {stream}; try again")]
    Contended { stream: String },
    #[error("this Idempotency-Key was used for the same kind of change to another target; use a new key")]
    IdempotencyKeyReused,
}

/// Counts a command by name and outcome (`ok`, `rejected`, `conflict`,
/// `failed`) and records how long it took. The name is the domain's static
/// command name: never an id.
fn record_command<T>(command: &'static str, started: std::time::Instant, result: &Result<T, CommandError>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(CommandError::Rejected(Rejection::VersionConflict { .. } | Rejection::Contended { .. })) => "conflict",
        Err(CommandError::Rejected(_)) => "rejected",
        Err(CommandError::Failed(_)) => "failed",
    };
    metrics::counter!(crate::metrics::COMMANDS, "command" => command, "outcome" => outcome).increment(1);
    metrics::histogram!(crate::metrics::COMMAND_DURATION, "command" => command).record(started.elapsed().as_secs_f64());
}

/// The log could not be read or written, or holds what cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("appending to the event log: {0}")]
    Append(AppendError),
    #[error("reading the event log: {0}")]
    Read(#[from] userstream_eventlog::StorageError),
    #[error("event at position {position} cannot be decoded: {source}")]
    Undecodable { position: i64, source: DecodeError },
}

impl Failure {
    /// The storage error behind this failure, if storage is what failed.
    pub fn storage(&self) -> Option<&userstream_eventlog::StorageError> {
        match self {
            Failure::Append(AppendError::Storage(e)) | Failure::Read(e) => Some(e),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Failed(#[from] Failure),
}

impl From<userstream_eventlog::StorageError> for CommandError {
    fn from(e: userstream_eventlog::StorageError) -> Self {
        CommandError::Failed(Failure::Read(e))
    }
}

macro_rules! rejected_from {
    ($($t:ty),*) => {$(
        impl From<$t> for CommandError {
            fn from(e: $t) -> Self {
                CommandError::Rejected(Rejection::from(e))
            }
        }
    )*};
}
rejected_from!(UserError, GroupError, AttrError, ConfigError, userstream_domain::job::JobError);

/// An append refused by the log: a conflict or a taken value is the
/// caller's business, anything else a failure.
fn refused(e: AppendError, expected: i64) -> CommandError {
    match e {
        AppendError::Conflict { actual, .. } => Rejection::VersionConflict { expected, actual }.into(),
        AppendError::Reserved { key } => {
            let (kind, value) = key.split_once(':').unwrap_or(("value", key.as_str()));
            Rejection::Taken { kind: kind.to_string(), value: value.to_string() }.into()
        }
        e => Failure::Append(e).into(),
    }
}

/// What a command did to its streams.
#[derive(Debug, Clone)]
pub struct Handled<S: Stream> {
    /// The log position that makes the change visible (the streams' last
    /// event when nothing was appended).
    pub position: i64,
    /// Each target's state and version after the command, in target order.
    pub states: Vec<(S::State, i64)>,
    /// The stream of each state (on a replayed `Idempotency-Key`, the
    /// streams the first request wrote: a retried create's minted id).
    pub streams: Vec<String>,
    /// The events appended (none when nothing changed or the idempotency
    /// key was seen before).
    pub events: Vec<S::Event>,
}

impl<S: Stream> Handled<S> {
    /// The id of the first stream (`group-{id}` → `id`): what a create
    /// minted, or, on a retry, what its first request minted.
    pub fn first_id(&self) -> Option<&str> {
        self.streams.first().and_then(|s| s.split_once('-')).map(|(_, id)| id)
    }
}

/// What a user command did.
pub type Outcome = Handled<UserStream>;

impl Handled<UserStream> {
    /// The first stream's user, if it is live.
    pub fn user(&self) -> Option<(&User, i64)> {
        self.states.first().and_then(|(s, v)| s.live().map(|u| (u, *v)))
    }

    /// Session ids revoked by this command.
    pub fn revoked_sessions(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                UserEvent::SessionsRevoked(r) => Some(r.session_ids.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

/// A stream as loaded: its state, version and last position.
struct Loaded<S: Stream> {
    state: S::State,
    version: i64,
    position: i64,
}

/// How many times a command is decided again after a version conflict.
pub const MAX_ATTEMPTS: usize = 5;

/// How long a cached platform config is used before it is read again.
pub const CONFIG_TTL: Duration = Duration::from_secs(1);

/// When a config was read, what it was, and its stream version.
type CachedConfig = (Instant, ConfigState, i64);

/// What an attempt reads before it decides.
#[derive(Clone, Copy)]
enum Load {
    /// Each target stream, from the log.
    Streams,
    /// Nothing: the streams are new (their ids were just minted).
    Nothing,
}

#[derive(Clone)]
pub struct Commands {
    log: SqlEventLog,
    clock: Clock,
    /// Platform configs read recently, by stream: every CreateUser needs one,
    /// and they change rarely. An update through this process replaces its
    /// entry at once; updates by other instances are seen within [`CONFIG_TTL`].
    configs: Arc<Mutex<HashMap<StreamId, CachedConfig>>>,
}

/// Folds recorded events of one stream into its state. An undecodable
/// event fails rather than being skipped: deciding on a partial history is wrong.
pub fn fold_events<S: Stream>(events: &[RecordedEvent]) -> Result<S::State, Failure> {
    let mut state = S::State::default();
    for e in events {
        let decoded = S::decode(&e.event_type, e.schema as u32, e.data.as_str())
            .map_err(|source| Failure::Undecodable { position: e.position, source })?;
        state = S::evolve(state, &decoded);
    }
    Ok(state)
}

/// Whether a stream's events belong to another tenant.
fn foreign(tenant: &Tenant, events: &[RecordedEvent]) -> bool {
    events.first().is_some_and(|e| e.company_id != tenant.company_id || e.application_id != tenant.application_id)
}

/// The config stream of the tenant's application.
pub fn config_stream(tenant: &Tenant) -> StreamId {
    StreamId::config(&tenant.company_id, &tenant.application_id)
}

impl Commands {
    pub fn new(log: SqlEventLog, clock: Clock) -> Self {
        Commands { log, clock, configs: Arc::default() }
    }

    /// The time commands are decided at.
    pub fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }

    pub fn log(&self) -> &SqlEventLog {
        &self.log
    }

    async fn load<S: Stream>(&self, tenant: &Tenant, stream: &StreamId) -> Result<Loaded<S>, Failure> {
        let events = self.log.read_stream(stream.as_str()).await?;
        if foreign(tenant, &events) {
            return Ok(Loaded { state: S::State::default(), version: 0, position: 0 });
        }
        let state = fold_events::<S>(&events)?;
        let (version, position) = events.last().map_or((0, 0), |e| (e.version, e.position));
        Ok(Loaded { state, version, position })
    }

    /// A stream of the tenant as the log has it now: its state and version
    /// (`None` when the stream belongs to another tenant).
    pub async fn state<S: Stream>(
        &self,
        tenant: &Tenant,
        stream: &StreamId,
    ) -> Result<Option<(S::State, i64)>, Failure> {
        let events = self.log.read_stream(stream.as_str()).await?;
        if foreign(tenant, &events) {
            return Ok(None);
        }
        Ok(Some((fold_events::<S>(&events)?, events.last().map_or(0, |e| e.version))))
    }

    /// The context of a command in this tenant: now, fresh ids, and the
    /// application's config.
    pub async fn context(&self, tenant: &Tenant) -> Result<Context, CommandError> {
        Ok(self.context_of(&self.config(tenant).await?.0.config))
    }

    /// The context for a config the caller has read already. The one place
    /// the handler reads the clock and draws randomness for a decision.
    pub fn context_of(&self, config: &PlatformConfig) -> Context {
        let now = self.clock.now();
        Context {
            now,
            delete_account_day: config.delete_account_day,
            ids: IdSeed { millis: (now.unix_timestamp_nanos() / 1_000_000) as u64, random: rand::random() },
            secret: Secret(rand::random()),
        }
    }

    /// Runs `command` on one stream; see [`Commands::handle_all`].
    pub async fn handle<S: Stream>(
        &self,
        meta: &Meta,
        stream: StreamId,
        command: S::Command,
        pinned: Option<i64>,
        ctx: &Context,
    ) -> Result<Handled<S>, CommandError>
    where
        Rejection: From<S::Rejection>,
    {
        self.handle_all::<S>(meta, vec![(stream, command)], pinned, ctx).await
    }

    /// Runs `command` on a stream whose id this command minted from its
    /// context (a new user, definition or group): it cannot exist yet, so
    /// nothing is read; the append still expects no stream, so a collision
    /// is refused, never merged.
    pub async fn handle_new<S: Stream>(
        &self,
        meta: &Meta,
        stream: StreamId,
        command: S::Command,
        ctx: &Context,
    ) -> Result<Handled<S>, CommandError>
    where
        Rejection: From<S::Rejection>,
    {
        self.handle_targets::<S>(meta, vec![(stream, command)], None, ctx, Load::Nothing).await
    }

    /// [`Commands::handle_new`] without its retry: a stream that exists
    /// already is answered as a version conflict, and nothing is read. A
    /// bulk job's rows use it: their ids are derived from the job and the
    /// row, so an existing stream is a row appended before a restart, and
    /// the row never waits for a connection of the pool.
    pub async fn append_new<S: Stream>(
        &self,
        meta: &Meta,
        stream: StreamId,
        command: S::Command,
        ctx: &Context,
    ) -> Result<Handled<S>, CommandError>
    where
        Rejection: From<S::Rejection>,
    {
        let name = S::command_name(&command);
        let span = tracing::info_span!("command", kind = S::KIND, command = name, stream = %stream, streams = 1);
        let started = std::time::Instant::now();
        let result = self.attempt::<S>(meta, &[(stream, command)], None, ctx, Load::Nothing).instrument(span).await;
        record_command(name, started, &result);
        result
    }

    /// Runs each command on its stream and appends all their events in one
    /// transaction, or none. `pinned` is the version the caller saw (one
    /// target only): a different one is a 409, with no retry.
    pub async fn handle_all<S: Stream>(
        &self,
        meta: &Meta,
        targets: Vec<(StreamId, S::Command)>,
        pinned: Option<i64>,
        ctx: &Context,
    ) -> Result<Handled<S>, CommandError>
    where
        Rejection: From<S::Rejection>,
    {
        self.handle_targets::<S>(meta, targets, pinned, ctx, Load::Streams).await
    }

    async fn handle_targets<S: Stream>(
        &self,
        meta: &Meta,
        targets: Vec<(StreamId, S::Command)>,
        pinned: Option<i64>,
        ctx: &Context,
        mut load: Load,
    ) -> Result<Handled<S>, CommandError>
    where
        Rejection: From<S::Rejection>,
    {
        let first = targets.first().map(|(s, c)| (s.to_string(), S::command_name(c))).unwrap_or_default();
        let span = tracing::info_span!("command", kind = S::KIND, command = first.1, stream = %first.0, streams = targets.len());
        let started = std::time::Instant::now();
        let result = async {
            for _ in 0..MAX_ATTEMPTS {
                match self.attempt::<S>(meta, &targets, pinned, ctx, load).await {
                    // A "new" stream that exists after all is decided on
                    // what it holds, like any other.
                    Err(CommandError::Rejected(Rejection::VersionConflict { .. })) if pinned.is_none() => {
                        load = Load::Streams
                    }
                    other => return other,
                }
            }
            Err(Rejection::Contended { stream: first.0.clone() }.into())
        }
        .instrument(span)
        .await;
        record_command(first.1, started, &result);
        result
    }

    /// One load → decide → append cycle.
    async fn attempt<S: Stream>(
        &self,
        meta: &Meta,
        targets: &[(StreamId, S::Command)],
        pinned: Option<i64>,
        ctx: &Context,
        load: Load,
    ) -> Result<Handled<S>, CommandError>
    where
        Rejection: From<S::Rejection>,
    {
        let mut appends = Vec::new();
        let (mut reserve, mut release) = (Vec::new(), Vec::new());
        let mut states = Vec::with_capacity(targets.len());
        let mut all_events = Vec::new();
        let mut rejections = Vec::new();
        let mut position = 0;
        for (stream, command) in targets {
            let loaded = match load {
                Load::Streams => self.load::<S>(&meta.tenant, stream).await?,
                Load::Nothing => Loaded { state: S::State::default(), version: 0, position: 0 },
            };
            if let Some(expected) = pinned.filter(|v| *v != loaded.version) {
                return Err(Rejection::VersionConflict { expected, actual: loaded.version }.into());
            }
            let events = match S::decide(&loaded.state, command.clone(), ctx) {
                Ok(events) => events,
                Err(e) => {
                    rejections.push((stream, Rejection::from(e)));
                    continue;
                }
            };
            let after = events.iter().fold(loaded.state.clone(), S::evolve);
            let before_keys: BTreeSet<String> = S::unique_keys(&loaded.state).into_iter().collect();
            let after_keys: BTreeSet<String> = S::unique_keys(&after).into_iter().collect();
            let claim = |key: &String| Reservation { key: key.clone(), stream: stream.to_string() };
            reserve.extend(after_keys.difference(&before_keys).map(claim));
            release.extend(before_keys.difference(&after_keys).map(claim));
            position = position.max(loaded.position);
            states.push((after, loaded.version + events.len() as i64));
            if !events.is_empty() {
                appends.push(StreamAppend {
                    stream: stream.to_string(),
                    expected: match loaded.version {
                        0 => ExpectedVersion::NoStream,
                        v => ExpectedVersion::Exact(v),
                    },
                    events: events.iter().map(|e| new_event(S::encode(e), ctx)).collect(),
                });
            }
            all_events.extend(events);
        }
        if !rejections.is_empty() {
            return Err(combine(rejections, targets.len()).into());
        }
        if appends.is_empty() {
            let streams = targets.iter().map(|(s, _)| s.to_string()).collect();
            return Ok(Handled { position, states, streams, events: all_events });
        }
        let expected = pinned.unwrap_or(0);
        let request = AppendRequest {
            tenant: meta.tenant.clone(),
            actor: meta.actor.clone(),
            correlation_id: meta.correlation_id.clone(),
            causation_id: None,
            streams: appends,
            reserve,
            release,
            // Kept per command: a key the client reused for another kind of
            // change never answers that change's result for this one.
            idempotency_key: meta.idempotency_key.as_ref().map(|key| {
                let command = targets.first().map_or("", |(_, c)| S::command_name(c));
                format!("{command}:{key}")
            }),
        };
        let result = self.log.append(request).await.map_err(|e| refused(e, expected))?;
        if !result.replayed {
            let streams = targets.iter().map(|(s, _)| s.to_string()).collect();
            return Ok(Handled { position: result.last_position, states, streams, events: all_events });
        }
        // The same idempotency key was used before: answer with what it did
        // then, on the streams of this kind it wrote then (a retried create
        // named a new id; a key reused by another kind of command wrote others).
        let kind = targets.first().and_then(|(s, _)| s.as_str().split_once('-')).map_or("", |(k, _)| k);
        let wrote = |stream: &str| result.streams.iter().any(|(s, _)| s == stream);
        let reused = match load {
            // Existing targets: the first request changed these very streams.
            Load::Streams => !targets.iter().all(|(s, _)| wrote(s.as_str())),
            // A minted id: the first request minted one of this kind.
            Load::Nothing => !result.streams.iter().any(|(s, _)| s.split_once('-').is_some_and(|(k, _)| k == kind)),
        };
        if reused {
            return Err(Rejection::IdempotencyKeyReused.into());
        }
        let mut states = Vec::with_capacity(result.streams.len());
        let mut streams = Vec::with_capacity(result.streams.len());
        for (stream, _) in result.streams.iter().filter(|(s, _)| s.split_once('-').is_some_and(|(k, _)| k == kind)) {
            let loaded = self.load::<S>(&meta.tenant, &StreamId::recorded(stream.as_str())).await?;
            states.push((loaded.state, loaded.version));
            streams.push(stream.clone());
        }
        Ok(Handled { position: result.last_position, states, streams, events: Vec::new() })
    }

    // -- users -------------------------------------------------------------

    /// Creates a user under the id its command carries.
    pub async fn create_user(
        &self,
        meta: &Meta,
        command: userstream_domain::user::CreateUser,
        ctx: &Context,
    ) -> Result<Outcome, CommandError> {
        let stream = StreamId::user(&command.user_id);
        self.handle_new::<UserStream>(meta, stream, UserCommand::Create(command), ctx).await
    }

    /// [`Commands::handle`] on a user with the tenant's current context.
    pub async fn run(
        &self,
        meta: &Meta,
        id: &UserId,
        command: UserCommand,
        pinned: Option<i64>,
    ) -> Result<Outcome, CommandError> {
        let ctx = self.context(&meta.tenant).await?;
        self.handle::<UserStream>(meta, StreamId::user(id), command, pinned, &ctx).await
    }

    /// Blocks (`block = true`) or unblocks several users at once: all of them
    /// or none. Unknown and archived ids are reported and nothing changes.
    pub async fn set_blocked(
        &self,
        meta: &Meta,
        ids: &[UserId],
        block: bool,
        reason: &str,
        ctx: &Context,
    ) -> Result<Outcome, CommandError> {
        let unique: BTreeSet<&UserId> = ids.iter().collect();
        let command = if block {
            UserCommand::Block { reason: reason.to_string() }
        } else {
            UserCommand::Unblock { reason: reason.to_string() }
        };
        let targets: Vec<_> = unique.into_iter().map(|id| (StreamId::user(id), command.clone())).collect();
        let only = (targets.len() == 1).then(|| targets[0].0.clone());
        match self.handle_all::<UserStream>(meta, targets, None, ctx).await {
            Err(CommandError::Rejected(Rejection::User(UserError::NotFound))) => Err(Rejection::UnknownUsers(
                only.and_then(|s| s.user_id()).map(|id| id.to_string()).into_iter().collect(),
            )
            .into()),
            other => other,
        }
    }

    /// Whether the user exists, is live and belongs to the tenant (read from its stream).
    pub async fn user_is_live(&self, tenant: &Tenant, id: &UserId) -> Result<bool, CommandError> {
        let state = self.state::<UserStream>(tenant, &StreamId::user(id)).await?;
        Ok(state.is_some_and(|(s, _)| s.live().is_some()))
    }

    // -- platform config -----------------------------------------------------

    /// The platform config of the tenant's application: its defaults until
    /// the first update. Returns the state and the stream's version.
    pub async fn config(&self, tenant: &Tenant) -> Result<(ConfigState, i64), CommandError> {
        let stream = config_stream(tenant);
        let cached = self.configs.lock().ok().and_then(|c| c.get(&stream).cloned());
        if let Some((at, state, version)) = cached {
            if at.elapsed() < CONFIG_TTL {
                return Ok((state, version));
            }
        }
        let loaded = self.state::<ConfigStream>(tenant, &stream).await?.unwrap_or_default();
        self.remember(stream, &loaded);
        Ok(loaded)
    }

    fn remember(&self, stream: StreamId, (state, version): &(ConfigState, i64)) {
        if let Ok(mut cache) = self.configs.lock() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(stream, (Instant::now(), state.clone(), *version));
        }
    }

    /// Replaces the platform config; returns the new state and the position
    /// that makes it visible.
    pub async fn update_config(&self, meta: &Meta, new: PlatformConfig) -> Result<(ConfigState, i64), CommandError> {
        let ctx = self.context_of(&new);
        let stream = config_stream(&meta.tenant);
        let mut handled = self.handle::<ConfigStream>(meta, stream.clone(), new, None, &ctx).await?;
        let (state, version) = handled.states.pop().unwrap_or_default();
        self.remember(stream, &(state.clone(), version));
        Ok((state, handled.position))
    }
}

/// The rejections of a command on several streams as one: several unknown
/// users are named together, anything else is the first rule that failed.
fn combine(rejections: Vec<(&StreamId, Rejection)>, targets: usize) -> Rejection {
    let all_unknown = rejections.iter().all(|(_, r)| matches!(r, Rejection::User(UserError::NotFound)));
    if targets > 1 && all_unknown {
        let ids = rejections.iter().filter_map(|(s, _)| s.user_id().map(|id| id.to_string())).collect();
        return Rejection::UnknownUsers(ids);
    }
    rejections.into_iter().next().map_or(Rejection::Contended { stream: String::new() }, |(_, r)| r)
}

fn new_event(encoded: EncodedEvent, ctx: &Context) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: encoded.event_type.to_string(),
        schema: i64::from(encoded.schema),
        occurred_at: ctx.now,
        data: encoded.data,
    }
}
