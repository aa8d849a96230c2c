pub mod attribute_filter;
pub mod attributes;
pub mod filter;
pub mod groups;
pub mod jobs;
pub mod user_list;
pub mod users;
