//! The users read model written inline on SQLite (see
//! `userstream_eventlog::inline`): a batch whose user events are all
//! `user.created` is written in the log's own transaction, with the same
//! row values as the runner writes ([`CreatedRow::cells`]); any other
//! user event leaves the batch to the runner.

use super::writes::{CreatedRow, BUMP_COUNTS, USER_COLUMNS};
use super::{UsersProjection, NAME};
use crate::Projection;
use rusqlite::params;
use std::collections::BTreeMap;
use userstream_domain::codec;
use userstream_eventlog::inline::Inline;
use userstream_eventlog::RecordedEvent;

/// `user.created` events applied in the log's transaction.
#[derive(Debug, Clone, Copy, Default)]
pub struct InlineUsers;

impl Inline for InlineUsers {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply(&self, tx: &rusqlite::Transaction<'_>, events: &[RecordedEvent]) -> rusqlite::Result<bool> {
        let mine: Vec<&RecordedEvent> = events.iter().filter(|e| UsersProjection.handles(e)).collect();
        if mine.iter().any(|e| e.event_type != codec::USER_CREATED) {
            return Ok(false);
        }
        // Decoded before anything is written: one that does not decode is
        // the runner's to stop at (a poison event), recorded there.
        let Ok(rows) = mine.into_iter().map(CreatedRow::of).collect::<Result<Vec<_>, _>>() else {
            return Ok(false);
        };
        let mut user = tx.prepare_cached(&format!(
            "INSERT INTO users_v1 ({USER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, 0, 0, 0)"
        ))?;
        let mut contact = tx.prepare_cached(
            "INSERT INTO user_contacts_v1 (application_id, user_id, kind, value) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for row in rows {
            let (event, user_id) = (row.event, row.user_id);
            *counts.entry((event.company_id.as_str(), event.application_id.as_str())).or_default() += 1;
            let (cells, keys) = row.cells();
            user.execute(rusqlite::params_from_iter(cells.iter()))?;
            for (kind, value) in keys {
                contact.execute(params![event.application_id, user_id, kind, value])?;
            }
        }
        let mut bump = tx.prepare_cached(BUMP_COUNTS)?;
        for ((company, app), n) in counts {
            bump.execute(params![company, app, n, 0])?;
        }
        Ok(true)
    }
}
