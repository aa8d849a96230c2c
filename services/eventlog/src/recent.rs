//! The events this process committed last, kept in memory so readers at the
//! head (projections, the engine, the relay, the live feed) get them without
//! a query and without parsing their JSON again.
//!
//! A reader is served from here only when the events right after its
//! position are here *without a gap*: positions are strictly increasing in
//! commit order, so consecutive positions leave no room for an event another
//! process committed (or for one this process has not recorded yet).
//! Everything else is read from the database.

use crate::RecordedEvent;
use std::collections::VecDeque;
use std::sync::Mutex;

/// Events kept: a few seconds of a busy log.
pub const CAPACITY: usize = 20_000;

pub struct Recent {
    events: Mutex<VecDeque<RecordedEvent>>,
    capacity: usize,
}

impl Recent {
    pub fn new(capacity: usize) -> Recent {
        Recent { events: Mutex::new(VecDeque::with_capacity(capacity)), capacity }
    }

    /// Keeps a committed batch (in position order), dropping the oldest.
    pub fn remember(&self, batch: Vec<RecordedEvent>) {
        let Ok(mut events) = self.events.lock() else { return };
        for e in batch {
            if events.back().is_some_and(|last| last.position >= e.position) {
                // Never out of order: start again from this event.
                events.clear();
            }
            events.push_back(e);
        }
        while events.len() > self.capacity {
            events.pop_front();
        }
    }

    /// The events right after `after`, at most `limit`, if the first of them
    /// is here; it stops at the first gap in positions.
    pub fn after(&self, after: i64, limit: i64) -> Option<Vec<RecordedEvent>> {
        let events = self.events.lock().ok()?;
        let first = events.front()?.position;
        let start = usize::try_from(after + 1 - first).ok()?;
        // Positions here are increasing; a gap makes the index math land
        // elsewhere, so check the position itself.
        let at = events
            .get(start)
            .filter(|e| e.position == after + 1)
            .map(|_| start)
            .or_else(|| events.iter().position(|e| e.position == after + 1))?;
        let out = (after + 1..)
            .zip(events.range(at..))
            .take_while(|(expected, e)| e.position == *expected)
            .take(usize::try_from(limit).unwrap_or(0))
            .map(|(_, e)| e.clone())
            .collect();
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: i64) -> RecordedEvent {
        RecordedEvent {
            position,
            event_id: format!("e{position}"),
            stream: "s".into(),
            version: position,
            event_type: "t".into(),
            schema: 1,
            occurred_at: time::OffsetDateTime::UNIX_EPOCH,
            recorded_at: time::OffsetDateTime::UNIX_EPOCH,
            company_id: "1".into(),
            application_id: "a".into(),
            actor: "x".into(),
            correlation_id: "c".into(),
            causation_id: None,
            data: serde_json::Value::Null,
        }
    }

    fn positions(events: Option<Vec<RecordedEvent>>) -> Option<Vec<i64>> {
        events.map(|e| e.iter().map(|e| e.position).collect())
    }

    #[test]
    fn serves_consecutive_events_and_stops_at_a_gap() {
        let recent = Recent::new(10);
        recent.remember((5..=8).map(event).collect());
        recent.remember(vec![event(11), event(12)]); // 9 and 10: another process
        assert_eq!(positions(recent.after(4, 100)), Some(vec![5, 6, 7, 8]));
        assert_eq!(positions(recent.after(6, 1)), Some(vec![7]));
        assert_eq!(positions(recent.after(8, 100)), None, "9 is not here: read the database");
        assert_eq!(positions(recent.after(10, 100)), Some(vec![11, 12]));
        assert_eq!(positions(recent.after(12, 100)), None, "at the head: another process may have gone on");
        assert_eq!(positions(recent.after(3, 100)), None, "older than what is kept");
    }

    #[test]
    fn keeps_only_the_newest() {
        let recent = Recent::new(3);
        recent.remember((1..=5).map(event).collect());
        assert_eq!(positions(recent.after(1, 100)), None);
        assert_eq!(positions(recent.after(2, 100)), Some(vec![3, 4, 5]));
    }
}
