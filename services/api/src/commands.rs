//! Command handling: load → evolve → decide → append, retried on a version
//! conflict unless the caller pinned a version (`If-Match`).
//!
//! Uniqueness of email, phone and username is the log's job: each command
//! claims the unique values its user holds after the change and releases the
//! ones it no longer holds, in the same transaction as the events.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use userstream_domain::codec;
use userstream_domain::platform::{self, ConfigError, ConfigState, PlatformConfig};
use userstream_domain::user::{self, Context, UniqueKind, User, UserCommand, UserError, UserEvent, UserState};
use userstream_domain::UserId;
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
    pub idempotency_key: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Rejected(#[from] UserError),
    #[error("unknown user ids: {}", .0.join(", "))]
    UnknownUsers(Vec<String>),
    #[error("{kind} {value} is already taken")]
    Taken { kind: String, value: String },
    #[error("version conflict: the user is at version {actual}, the request expected {expected}")]
    VersionConflict { expected: i64, actual: i64 },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("event log failure: {0}")]
    Storage(String),
}

/// A refused append in the words of a command: version conflicts and taken
/// unique values are the caller's business, the rest is a storage failure.
impl From<AppendError> for CommandError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Conflict { expected, actual, .. } => CommandError::VersionConflict {
                expected: match expected {
                    ExpectedVersion::Exact(v) => v,
                    _ => 0,
                },
                actual,
            },
            AppendError::Reserved { key } => {
                let (kind, value) = key.split_once(':').unwrap_or(("value", key.as_str()));
                CommandError::Taken { kind: kind.to_string(), value: value.to_string() }
            }
            e => CommandError::Storage(e.to_string()),
        }
    }
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The log position that makes the change visible (the stream's last event
    /// when nothing was appended).
    pub position: i64,
    pub states: Vec<(UserState, i64)>,
    /// The events this command appended (none when it changed nothing or
    /// was an idempotent replay).
    pub events: Vec<UserEvent>,
}

impl Outcome {
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

#[derive(Clone)]
pub struct Commands {
    log: SqlEventLog,
    /// Platform configs read recently, by stream: every CreateUser needs one,
    /// and they change rarely. An update through this process replaces its
    /// entry at once; updates by other instances are seen within [`CONFIG_TTL`].
    configs: Arc<Mutex<HashMap<String, CachedConfig>>>,
}

/// When a config was read, what it was, and its stream version.
type CachedConfig = (Instant, ConfigState, i64);

/// How long a cached platform config is used before it is read again.
pub const CONFIG_TTL: Duration = Duration::from_secs(1);

const MAX_ATTEMPTS: usize = 5;

/// A loaded stream: its state, version and last position.
struct Loaded {
    id: UserId,
    state: UserState,
    version: i64,
    position: i64,
}

pub fn stream_of(id: &UserId) -> String {
    format!("user-{id}")
}

/// The platform config stream of one application.
pub fn config_stream(tenant: &Tenant) -> String {
    format!("config-{}-{}", tenant.company_id, tenant.application_id)
}

impl Commands {
    pub fn new(log: SqlEventLog) -> Self {
        Commands { log, configs: Arc::default() }
    }

    pub fn log(&self) -> &SqlEventLog {
        &self.log
    }

    /// Folds a stream into a user state. A stream of another tenant reads as
    /// not created, so foreign ids answer "not found", never the record.
    async fn load(&self, tenant: &Tenant, id: &UserId) -> Result<Loaded, CommandError> {
        let events = self.log.read_stream(&stream_of(id)).await.map_err(|e| CommandError::Storage(e.to_string()))?;
        fold(tenant, id.clone(), &events)
    }

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
        let loaded = self.load_config(tenant).await?;
        self.remember(stream, &loaded);
        Ok(loaded)
    }

    fn remember(&self, stream: String, (state, version): &(ConfigState, i64)) {
        if let Ok(mut cache) = self.configs.lock() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(stream, (Instant::now(), state.clone(), *version));
        }
    }

    /// The platform config as the log has it now.
    async fn load_config(&self, tenant: &Tenant) -> Result<(ConfigState, i64), CommandError> {
        Ok(self.fold(tenant, &config_stream(tenant), platform::decode, platform::evolve).await?.unwrap_or_default())
    }

    /// Replaces the platform config; returns the new state and the position
    /// that makes it visible.
    pub async fn update_config(
        &self,
        meta: &Meta,
        new: PlatformConfig,
        now: OffsetDateTime,
    ) -> Result<(ConfigState, i64), CommandError> {
        for _ in 0..MAX_ATTEMPTS {
            let (state, version) = self.load_config(&meta.tenant).await?;
            let events = platform::decide(&state, new.clone(), now)?;
            if events.is_empty() {
                return Ok((state, 0));
            }
            let after = events.iter().fold(state, platform::evolve);
            let request = AppendRequest {
                tenant: meta.tenant.clone(),
                actor: meta.actor.clone(),
                correlation_id: meta.correlation_id.clone(),
                causation_id: None,
                streams: vec![StreamAppend {
                    stream: config_stream(&meta.tenant),
                    expected: if version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(version) },
                    events: events.iter().map(|e| encoded_event(platform::encode(e), now)).collect(),
                }],
                reserve: vec![],
                release: vec![],
                idempotency_key: meta.idempotency_key.clone(),
            };
            match self.log.append(request).await {
                Ok(result) if result.replayed => {
                    let loaded = self.load_config(&meta.tenant).await?;
                    self.remember(config_stream(&meta.tenant), &loaded);
                    return Ok((loaded.0, result.last_position));
                }
                Ok(result) => {
                    self.remember(config_stream(&meta.tenant), &(after.clone(), version + 1));
                    return Ok((after, result.last_position));
                }
                Err(AppendError::Conflict { .. }) => continue,
                Err(e) => return Err(CommandError::Storage(e.to_string())),
            }
        }
        Err(CommandError::Storage("too many concurrent changes to the platform config; try again".into()))
    }

    pub async fn create_user(
        &self,
        meta: &Meta,
        command: user::CreateUser,
        ctx: &Context,
    ) -> Result<Outcome, CommandError> {
        let id = command.user_id.clone();
        let loaded = Loaded { id, state: UserState::NotCreated, version: 0, position: 0 };
        self.execute(meta, vec![loaded], |_| UserCommand::Create(command.clone()), ctx, true).await
    }

    /// Folds a stream of the tenant into a state and its version. `None` when
    /// the stream belongs to another tenant: its ids answer "not found".
    pub async fn fold<S: Default, E>(
        &self,
        tenant: &Tenant,
        stream: &str,
        decode: impl Fn(&str, u32, &str) -> Result<E, codec::DecodeError>,
        evolve: impl Fn(S, &E) -> S,
    ) -> Result<Option<(S, i64)>, CommandError> {
        let events = self.read_stream(stream).await?;
        if events
            .first()
            .is_some_and(|e| e.company_id != tenant.company_id || e.application_id != tenant.application_id)
        {
            return Ok(None);
        }
        let state = fold_events(&events, decode, evolve)?;
        Ok(Some((state, events.last().map_or(0, |e| e.version))))
    }

    /// A stream's events, or a storage failure.
    pub async fn read_stream(&self, stream: &str) -> Result<Vec<RecordedEvent>, CommandError> {
        self.log.read_stream(stream).await.map_err(|e| CommandError::Storage(e.to_string()))
    }

    /// Whether the user exists, is live and belongs to the tenant (read from its stream).
    pub async fn user_is_live(&self, tenant: &Tenant, id: &UserId) -> Result<bool, CommandError> {
        Ok(self.load(tenant, id).await?.state.live().is_some())
    }

    /// Appends encoded events to one stream of the tenant; returns the last position.
    pub async fn append_encoded(
        &self,
        meta: &Meta,
        stream: String,
        expected: ExpectedVersion,
        events: Vec<codec::EncodedEvent>,
        reserve: Vec<Reservation>,
        release: Vec<Reservation>,
    ) -> Result<i64, CommandError> {
        if events.is_empty() {
            return Ok(0);
        }
        let now = OffsetDateTime::now_utc();
        let request = AppendRequest {
            tenant: meta.tenant.clone(),
            actor: meta.actor.clone(),
            correlation_id: meta.correlation_id.clone(),
            causation_id: None,
            streams: vec![StreamAppend {
                stream,
                expected,
                events: events.into_iter().map(|e| encoded_event(e, now)).collect(),
            }],
            reserve,
            release,
            idempotency_key: meta.idempotency_key.clone(),
        };
        Ok(self.log.append(request).await?.last_position)
    }

    /// What a decision in this tenant depends on: now, and the application's config.
    pub async fn context(&self, tenant: &Tenant) -> Result<Context, CommandError> {
        Ok(Self::context_of(&self.config(tenant).await?.0.config))
    }

    /// The context for a config the caller has read already.
    pub fn context_of(config: &PlatformConfig) -> Context {
        Context { now: OffsetDateTime::now_utc(), delete_account_day: config.delete_account_day }
    }

    /// [`Commands::handle`] with the tenant's current [`Commands::context`].
    pub async fn run(
        &self,
        meta: &Meta,
        id: &UserId,
        command: UserCommand,
        expected_version: Option<i64>,
    ) -> Result<Outcome, CommandError> {
        let ctx = self.context(&meta.tenant).await?;
        self.handle(meta, id, command, expected_version, &ctx).await
    }

    /// Applies `command` to one user, retrying on concurrent change unless
    /// `expected_version` pins the version the caller saw.
    pub async fn handle(
        &self,
        meta: &Meta,
        id: &UserId,
        command: UserCommand,
        expected_version: Option<i64>,
        ctx: &Context,
    ) -> Result<Outcome, CommandError> {
        for _ in 0..MAX_ATTEMPTS {
            let loaded = self.load(&meta.tenant, id).await?;
            if let Some(expected) = expected_version {
                if expected != loaded.version {
                    return Err(CommandError::VersionConflict { expected, actual: loaded.version });
                }
            }
            match self.execute(meta, vec![loaded], |_| command.clone(), ctx, false).await {
                Err(CommandError::VersionConflict { expected, actual }) if expected_version.is_some() => {
                    return Err(CommandError::VersionConflict { expected, actual })
                }
                Err(CommandError::VersionConflict { .. }) => continue,
                other => return other,
            }
        }
        Err(CommandError::Storage("too many concurrent changes to this user; try again".into()))
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
        for _ in 0..MAX_ATTEMPTS {
            let mut loaded = Vec::with_capacity(unique.len());
            let mut unknown = Vec::new();
            for id in &unique {
                let l = self.load(&meta.tenant, id).await?;
                if l.state.live().is_none() {
                    unknown.push(id.to_string());
                }
                loaded.push(l);
            }
            if !unknown.is_empty() {
                return Err(CommandError::UnknownUsers(unknown));
            }
            let reason = reason.to_string();
            let command = |_: &UserState| {
                if block {
                    UserCommand::Block { reason: reason.clone() }
                } else {
                    UserCommand::Unblock { reason: reason.clone() }
                }
            };
            match self.execute(meta, loaded, command, ctx, false).await {
                Err(CommandError::VersionConflict { .. }) => continue,
                other => return other,
            }
        }
        Err(CommandError::Storage("too many concurrent changes to these users; try again".into()))
    }

    /// Decides for every loaded stream, then appends all events atomically.
    async fn execute(
        &self,
        meta: &Meta,
        loaded: Vec<Loaded>,
        command: impl Fn(&UserState) -> UserCommand,
        ctx: &Context,
        new_stream: bool,
    ) -> Result<Outcome, CommandError> {
        let mut appends = Vec::new();
        let mut reserve = Vec::new();
        let mut release = Vec::new();
        let mut states = Vec::new();
        let mut all_events = Vec::new();
        let mut position = 0;
        for l in loaded {
            let events = user::decide(&l.state, command(&l.state), ctx)?;
            let stream = stream_of(&l.id);
            let after = events.iter().fold(l.state.clone(), user::evolve);
            let before_keys: BTreeSet<_> = l.state.unique_keys().into_iter().collect();
            let after_keys: BTreeSet<_> = after.unique_keys().into_iter().collect();
            reserve.extend(after_keys.difference(&before_keys).map(|k| reservation(k, &stream)));
            release.extend(before_keys.difference(&after_keys).map(|k| reservation(k, &stream)));
            position = position.max(l.position);
            states.push((after, l.version + events.len() as i64));
            if !events.is_empty() {
                appends.push(StreamAppend {
                    stream,
                    expected: if new_stream { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(l.version) },
                    events: events.iter().map(|e| new_event(e, ctx.now)).collect(),
                });
            }
            all_events.extend(events);
        }
        if appends.is_empty() {
            return Ok(Outcome { position, states, events: all_events });
        }
        let request = AppendRequest {
            tenant: meta.tenant.clone(),
            actor: meta.actor.clone(),
            correlation_id: meta.correlation_id.clone(),
            causation_id: None,
            streams: appends,
            reserve,
            release,
            idempotency_key: meta.idempotency_key.clone(),
        };
        match self.log.append(request).await {
            Ok(result) if result.replayed => {
                // The same idempotency key was used before: answer with what it did then.
                let mut states = Vec::new();
                for (stream, _) in &result.streams {
                    let id = stream.strip_prefix("user-").and_then(|s| UserId::parse("user_id", s).ok());
                    if let Some(id) = id {
                        let l = self.load(&meta.tenant, &id).await?;
                        states.push((l.state, l.version));
                    }
                }
                Ok(Outcome { position: result.last_position, states, events: Vec::new() })
            }
            Ok(result) => Ok(Outcome { position: result.last_position, states, events: all_events }),
            Err(e) => Err(e.into()),
        }
    }
}

fn reservation((kind, value): &(UniqueKind, String), stream: &str) -> Reservation {
    Reservation { key: format!("{}:{value}", kind.as_str()), stream: stream.to_string() }
}

fn new_event(event: &UserEvent, now: OffsetDateTime) -> NewEvent {
    encoded_event(codec::encode(event), now)
}

fn encoded_event(encoded: codec::EncodedEvent, now: OffsetDateTime) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: encoded.event_type.to_string(),
        schema: i64::from(encoded.schema),
        occurred_at: now,
        data: encoded.data,
    }
}

/// Folds recorded events of one user stream. An undecodable event fails the
/// command rather than being skipped: deciding on a partial history is wrong.
/// Folds recorded events into a state (every stream kind: user, group, values …).
pub fn fold_events<S: Default, E>(
    events: &[RecordedEvent],
    decode: impl Fn(&str, u32, &str) -> Result<E, codec::DecodeError>,
    evolve: impl Fn(S, &E) -> S,
) -> Result<S, CommandError> {
    let mut state = S::default();
    for e in events {
        let decoded = decode(&e.event_type, e.schema as u32, e.data.as_str())
            .map_err(|err| CommandError::Storage(format!("event at position {}: {err}", e.position)))?;
        state = evolve(state, &decoded);
    }
    Ok(state)
}

fn fold(tenant: &Tenant, id: UserId, events: &[RecordedEvent]) -> Result<Loaded, CommandError> {
    let foreign =
        events.first().is_some_and(|e| e.company_id != tenant.company_id || e.application_id != tenant.application_id);
    if foreign {
        return Ok(Loaded { id, state: UserState::NotCreated, version: 0, position: 0 });
    }
    let mut state = UserState::NotCreated;
    for e in events {
        let decoded = codec::decode(&e.event_type, e.schema as u32, e.data.as_str())
            .map_err(|err| CommandError::Storage(format!("event at position {}: {err}", e.position)))?;
        state = user::evolve(state, &decoded);
    }
    let (version, position) = events.last().map(|e| (e.version, e.position)).unwrap_or((0, 0));
    Ok(Loaded { id, state, version, position })
}

/// A fresh user id: 6 bytes of milliseconds since the epoch, then 6 random
/// bytes (ids sort by creation time, like the seeds' Mongo ids).
pub fn new_user_id(now: OffsetDateTime) -> UserId {
    let millis = (now.unix_timestamp_nanos() / 1_000_000) as u64;
    let mut bytes = [0u8; 12];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    let random: [u8; 6] = rand::random();
    bytes[6..].copy_from_slice(&random);
    UserId::from_bytes(bytes)
}
