//! The pure domain of userstream.
//!
//! Nothing here performs IO, reads the clock or draws random numbers: time and
//! ids arrive inside commands and [`user::Context`]. `decide` is the only place
//! where business rules say "no"; `evolve` is total and never fails, because
//! the history in the log is the truth.

pub mod attribute;
pub mod codec;
pub mod group;
pub mod platform;
pub mod rules;
pub mod user;
pub mod values;

pub use codec::{decode, encode, DecodeError, EncodedEvent};
pub use user::{decide, evolve, Context, UserCommand, UserError, UserEvent, UserState};
pub use values::{Email, Gender, Name, Phone, UserId, Username, ValueError};
