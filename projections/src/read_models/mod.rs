pub mod filter;
pub mod users;
