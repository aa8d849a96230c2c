pub mod filter;
pub mod user_list;
pub mod users;
