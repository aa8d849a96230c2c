//! One shape for every stream kind: a [`Stream`] names its state, commands,
//! events and rejection, decides purely and evolves totally. The command
//! handler in the API crate is written once against this trait.
//!
//! Stream ids are a [`StreamId`], built here and nowhere else.

use crate::codec::{DecodeError, EncodedEvent};
use crate::values::UserId;
use time::OffsetDateTime;

/// Everything a decision may depend on besides the state and the command:
/// the time, the ids it may hand out, and the application's settings. The
/// handler builds it once per command; `decide` never reads a clock or a
/// random number generator.
#[derive(Debug, Clone)]
pub struct Context {
    pub now: OffsetDateTime,
    /// Days after archiving during which a user may still be restored.
    pub delete_account_day: u32,
    /// Where fresh ids come from: see [`Context::id`].
    pub ids: IdSeed,
    /// 128 random bits for a secret the command hands out (a session id).
    pub secret: Secret,
}

/// Random bytes drawn by the handler for a secret; `Debug` never shows them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Secret(pub [u8; 16]);

impl Secret {
    /// Lower-case hex, 32 characters.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The seed of a command's fresh ids: the time in milliseconds and six
/// random bytes, both drawn by the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdSeed {
    pub millis: u64,
    pub random: [u8; 6],
}

impl Context {
    pub const DEFAULT_DELETE_ACCOUNT_DAY: u32 = 30;

    /// A context at `now` with the default settings and a seed of zeros
    /// (tests; the handler draws a random seed).
    pub fn at(now: OffsetDateTime) -> Self {
        let millis = (now.unix_timestamp_nanos() / 1_000_000) as u64;
        Context {
            now,
            delete_account_day: Self::DEFAULT_DELETE_ACCOUNT_DAY,
            ids: IdSeed { millis, random: [0; 6] },
            secret: Secret([0; 16]),
        }
    }

    /// The `n`th fresh id of this command: 6 bytes of milliseconds, then the
    /// random bytes plus `n`. Ids sort by creation time, like the seeds'
    /// Mongo ids, and a command's ids are distinct.
    pub fn id(&self, n: u16) -> UserId {
        self.id_at(u64::from(n))
    }

    /// The `n`th id of the seed, for `n` beyond `u16` (the rows of a bulk
    /// job); the counter wraps at 48 bits.
    pub fn id_at(&self, n: u64) -> UserId {
        let mut bytes = [0u8; 12];
        bytes[..6].copy_from_slice(&self.ids.millis.to_be_bytes()[2..]);
        let mut tail = [0u8; 8];
        tail[2..].copy_from_slice(&self.ids.random);
        let counter = u64::from_be_bytes(tail).wrapping_add(n) & 0xffff_ffff_ffff;
        bytes[6..].copy_from_slice(&counter.to_be_bytes()[2..]);
        UserId::from_bytes(bytes)
    }
}

/// The name of a stream in the log: `{kind}-{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(String);

impl StreamId {
    pub fn user(id: &UserId) -> StreamId {
        StreamId(format!("user-{id}"))
    }

    /// The attribute values of one user.
    pub fn values(user_id: &str) -> StreamId {
        StreamId(format!("attrs-{user_id}"))
    }

    pub fn definition(id: &str) -> StreamId {
        StreamId(format!("attrdef-{id}"))
    }

    pub fn group(id: &str) -> StreamId {
        StreamId(format!("group-{id}"))
    }

    /// A bulk job.
    pub fn job(id: &str) -> StreamId {
        StreamId(format!("job-{id}"))
    }

    /// The platform config of one application.
    pub fn config(company_id: &str, application_id: &str) -> StreamId {
        StreamId(format!("config-{company_id}-{application_id}"))
    }

    /// A stream name as the log hands it back (an append's result).
    pub fn recorded(name: impl Into<String>) -> StreamId {
        StreamId(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The user of a `user-{id}` stream.
    pub fn user_id(&self) -> Option<UserId> {
        self.0.strip_prefix("user-").and_then(|id| UserId::parse("user_id", id).ok())
    }

    /// The group of a `group-{id}` stream.
    pub fn group_id(&self) -> Option<&str> {
        self.0.strip_prefix("group-")
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A kind of stream: user, group, attribute definition, a user's attribute
/// values, platform config.
pub trait Stream {
    /// The kind, for tracing (`user`, `group` …).
    const KIND: &'static str;
    type State: Default + Clone + Send + Sync + 'static;
    type Command: Clone + Send + Sync;
    type Event: Send + Sync;
    /// A business rule said no; nothing is appended.
    type Rejection: std::error::Error + Send + Sync + 'static;

    /// Pure: the same inputs always give the same answer. A command that
    /// would change nothing returns no events.
    fn decide(state: &Self::State, command: Self::Command, ctx: &Context) -> Result<Vec<Self::Event>, Self::Rejection>;
    /// Total: history is the truth, so an event that does not fit leaves
    /// the state as it is.
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;
    fn encode(event: &Self::Event) -> EncodedEvent;
    fn decode(event_type: &str, schema: u32, data: &str) -> Result<Self::Event, DecodeError>;
    /// The command's name, for tracing (never its data).
    fn command_name(command: &Self::Command) -> &'static str;
    /// The values this state holds exclusively within its application
    /// (`email:a@b.c`, `slug:age`). The handler claims the ones a change
    /// adds and releases the ones it drops, in the same append.
    fn unique_keys(_state: &Self::State) -> Vec<String> {
        Vec::new()
    }
}
