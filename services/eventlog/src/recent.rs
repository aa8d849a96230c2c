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

/// Events kept: a few seconds of a busy log …
pub const CAPACITY: usize = 20_000;
/// … and at most this much event data (membership events can be large).
pub const CAPACITY_BYTES: usize = 64 * 1024 * 1024;

pub struct Recent {
    kept: Mutex<Kept>,
    capacity: usize,
    capacity_bytes: usize,
}

#[derive(Default)]
struct Kept {
    events: VecDeque<(RecordedEvent, usize)>,
    bytes: usize,
}

impl Recent {
    pub fn new(capacity: usize, capacity_bytes: usize) -> Recent {
        Recent { kept: Mutex::new(Kept::default()), capacity, capacity_bytes }
    }

    /// Keeps a committed batch (in position order, each event with the size
    /// of its data), dropping the oldest.
    pub fn remember(&self, batch: Vec<(RecordedEvent, usize)>) {
        let Ok(mut kept) = self.kept.lock() else { return };
        for (e, size) in batch {
            if kept.events.back().is_some_and(|(last, _)| last.position >= e.position) {
                // Never out of order: start again from this event.
                kept.events.clear();
                kept.bytes = 0;
            }
            kept.bytes += size;
            kept.events.push_back((e, size));
        }
        while kept.events.len() > self.capacity || (kept.bytes > self.capacity_bytes && !kept.events.is_empty()) {
            if let Some((_, size)) = kept.events.pop_front() {
                kept.bytes -= size;
            }
        }
    }

    /// The events right after `after`, at most `limit`, if the first of them
    /// is here; it stops at the first gap in positions.
    pub fn after(&self, after: i64, limit: i64) -> Option<Vec<RecordedEvent>> {
        let kept = self.kept.lock().ok()?;
        let events = &kept.events;
        let first = events.front()?.0.position;
        let start = usize::try_from(after + 1 - first).ok()?;
        // Positions here are increasing; a gap makes the index math land
        // elsewhere, so check the position itself (and search if it is off).
        let at = events
            .get(start)
            .filter(|(e, _)| e.position == after + 1)
            .map(|_| start)
            .or_else(|| events.binary_search_by_key(&(after + 1), |(e, _)| e.position).ok())?;
        let out = (after + 1..)
            .zip(events.range(at..))
            .take_while(|(expected, (e, _))| e.position == *expected)
            .take(usize::try_from(limit).unwrap_or(0))
            .map(|(_, (e, _))| e.clone())
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
            data: crate::EventData::from_value(&serde_json::Value::Null),
        }
    }

    fn sized(position: i64) -> (RecordedEvent, usize) {
        (event(position), 100)
    }

    fn positions(events: Option<Vec<RecordedEvent>>) -> Option<Vec<i64>> {
        events.map(|e| e.iter().map(|e| e.position).collect())
    }

    #[test]
    fn serves_consecutive_events_and_stops_at_a_gap() {
        let recent = Recent::new(10, 1000);
        recent.remember((5..=8).map(sized).collect());
        recent.remember(vec![sized(11), sized(12)]); // 9 and 10: another process
        assert_eq!(positions(recent.after(4, 100)), Some(vec![5, 6, 7, 8]));
        assert_eq!(positions(recent.after(6, 1)), Some(vec![7]));
        assert_eq!(positions(recent.after(8, 100)), None, "9 is not here: read the database");
        assert_eq!(positions(recent.after(10, 100)), Some(vec![11, 12]));
        assert_eq!(positions(recent.after(12, 100)), None, "at the head: another process may have gone on");
        assert_eq!(positions(recent.after(3, 100)), None, "older than what is kept");
    }

    #[test]
    fn keeps_only_the_newest() {
        let recent = Recent::new(3, 1000);
        recent.remember((1..=5).map(sized).collect());
        assert_eq!(positions(recent.after(1, 100)), None);
        assert_eq!(positions(recent.after(2, 100)), Some(vec![3, 4, 5]));
    }

    #[test]
    fn keeps_at_most_the_byte_budget() {
        let recent = Recent::new(100, 250);
        recent.remember((1..=5).map(sized).collect()); // 100 bytes each
        assert_eq!(positions(recent.after(2, 100)), None);
        assert_eq!(positions(recent.after(3, 100)), Some(vec![4, 5]));
    }
}
