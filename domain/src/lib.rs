//! The pure domain of userstream.
//!
//! Nothing here performs IO, reads the clock or draws random numbers: time and
//! ids arrive in a [`Context`]. `decide` is the only place where business
//! rules say "no"; `evolve` is total and never fails, because the history in
//! the log is the truth.
//!
//! Modules (nothing here depends on another crate of the workspace):
//! - [`stream`]: the one shape of every stream kind ([`Stream`]: state,
//!   decide, evolve, codec, unique keys), the [`Context`] of a decision, and
//!   [`StreamId`], the only place stream names are built.
//! - [`user`], [`group`], [`attribute`] (definitions and a user's values),
//!   [`platform`] (config), [`job`] (bulk jobs): each kind's state,
//!   commands, events, rules.
//! - [`rules`]: group conditions, compiled and evaluated (pure).
//! - [`values`]: validated newtypes (`Email`, `Phone`, `UserId` …).
//! - [`codec`]: events on disk, one frozen shape per (type, version).

pub mod attribute;
pub mod codec;
pub mod group;
pub mod job;
pub mod platform;
pub mod rules;
pub mod stream;
pub mod user;
pub mod values;

pub use codec::{decode, encode, DecodeError, EncodedEvent};
pub use stream::{Context, IdSeed, Secret, Stream, StreamId};
pub use user::{decide, evolve, UserCommand, UserError, UserEvent, UserState};
pub use values::{Email, Gender, Name, Phone, UserId, Username, ValueError};
