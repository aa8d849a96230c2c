//! Request plumbing shared by every surface: nothing here knows a route.
//!
//! - [`error`]: the one API error (`{message, code}` and its status).
//! - [`extract`]: extractors that turn bad input into that error (JSON
//!   bodies, query pairs, tenant ids).
//! - [`caller`]: the tenant of the path ([`TenantOf`]) and, for commands,
//!   the tenant with the principal and envelope headers ([`Caller`]).
//! - [`consistency`]: the one place a query waits for the writes it must see.
//! - [`respond`]: envelope metadata of a command, and the position and
//!   version headers of its response.
//! - [`request_id`]: the id of every request (`X-Request-Id`).
//!
//! Surfaces (`fynd`, `passage`, `events`, `ops`) depend on this module; it
//! depends on none of them.

pub mod caller;
pub mod consistency;
pub mod error;
pub mod extract;
pub mod request_id;
pub mod respond;

pub use caller::{Caller, TenantOf};
pub use consistency::Consistency;
pub use error::ApiError;
pub use extract::{tenant, JsonBody, QueryPairs};
pub use respond::{command_response, if_match, meta, parse_user_id, with_position};
