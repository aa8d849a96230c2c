//! The metrics the log's writer records (through the `metrics` facade; the
//! API exports them), each name written here only.

/// Histogram: append requests per transaction, by `outcome` (`ok`, `error`).
pub const APPEND_BATCH_SIZE: &str = "userstream_append_batch_size";
/// Histogram: how long a transaction took, by `outcome`.
pub const APPEND_BATCH_DURATION: &str = "userstream_append_batch_duration_seconds";
/// Counter: events this process appended.
pub const EVENTS_APPENDED: &str = "userstream_events_appended_total";
