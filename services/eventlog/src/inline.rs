//! Inline projections: a read model that the SQLite log writes in the same
//! transaction as the events it is built from (what Marten calls the inline
//! lifecycle), so a change is in the read model when it is acknowledged and
//! no second transaction takes the write lock for it.
//!
//! Only where the read model lives in the log's own file and one process
//! writes it: the embedded default. Its runner stays, and applies whatever
//! the inline side leaves: a batch the projection declines, and everything
//! while the checkpoint is behind. The checkpoint they share is the guard
//! against applying anything twice: the writer applies a batch inline only
//! when the checkpoint is exactly at the log's head before the batch, and
//! moves it to the batch's last position in the same transaction; the
//! runner applies nothing unless the checkpoint is where its batch started.

use crate::RecordedEvent;

pub trait Inline: Send + Sync {
    /// Its checkpoint: the name its runner uses.
    fn name(&self) -> &'static str;

    /// Writes `events` (one committed batch, in position order, payloads as
    /// appended) into the read model inside `tx`. Returns `false`, having
    /// written nothing, when it leaves the batch to its runner.
    fn apply(&self, tx: &rusqlite::Transaction<'_>, events: &[RecordedEvent]) -> rusqlite::Result<bool>;
}
