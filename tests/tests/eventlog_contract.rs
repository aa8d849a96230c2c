//! The event-log contract, run against every backend (SQLite always,
//! PostgreSQL when `DATABASE_URL_TEST` names a test cluster, and KurrentDB
//! when `EVENTSTORE_URL` names a server: the trait's part of the contract;
//! the group-commit and head-watch tests are the SQL log's own).

use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;
use time::OffsetDateTime;
use userstream_eventlog::{
    AppendError, AppendRequest, Db, EventLog, ExpectedVersion, NewEvent, Reservation, SqlEventLog, StreamAppend, Tenant,
};
use userstream_tests::fresh_databases;

async fn logs() -> Vec<(&'static str, SqlEventLog)> {
    let mut out = Vec::new();
    for db in fresh_databases().await {
        let log = SqlEventLog::open(Db::connect(&db.url).await.expect("connect")).await.expect("open");
        out.push((db.backend, log));
    }
    out
}

/// The log on a KurrentDB server when `EVENTSTORE_URL` names one (built
/// with `--features userstream-eventlog/eventstore`), under a prefix of its
/// own so every test starts from an empty log.
#[cfg(feature = "eventstore")]
async fn kurrent() -> Option<userstream_eventlog::kurrent::KurrentEventLog> {
    let url = std::env::var("EVENTSTORE_URL").ok()?;
    let prefix = format!("t{}-", uuid::Uuid::now_v7().simple());
    Some(userstream_eventlog::kurrent::KurrentEventLog::connect(&url, &prefix).expect("EVENTSTORE_URL"))
}

#[cfg(not(feature = "eventstore"))]
async fn kurrent() -> Option<SqlEventLog> {
    if std::env::var("EVENTSTORE_URL").is_ok() {
        panic!("EVENTSTORE_URL is set: build the tests with --features eventstore");
    }
    None
}

fn tenant() -> Tenant {
    Tenant { company_id: "1".into(), application_id: "app".into() }
}

fn event(n: i64) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: "test.happened".into(),
        schema: 1,
        occurred_at: OffsetDateTime::now_utc(),
        data: json!({"n": n}),
    }
}

fn request(streams: Vec<StreamAppend>) -> AppendRequest {
    AppendRequest {
        tenant: tenant(),
        actor: "tester".into(),
        correlation_id: "corr-1".into(),
        causation_id: Some("cause-1".into()),
        streams,
        reserve: vec![],
        release: vec![],
        idempotency_key: None,
    }
}

fn one(stream: &str, expected: ExpectedVersion, n: i64) -> AppendRequest {
    request(vec![StreamAppend { stream: stream.into(), expected, events: vec![event(n)] }])
}

#[tokio::test]
async fn appended_events_read_back_with_their_envelope() {
    for (backend, log) in logs().await {
        check_appended_events_read_back_with_their_envelope(backend, log).await;
    }
    if let Some(log) = kurrent().await {
        check_appended_events_read_back_with_their_envelope("kurrentdb", log).await;
    }
}

async fn check_appended_events_read_back_with_their_envelope(backend: &str, log: impl EventLog) {
    let e = event(1);
    let id = e.event_id.to_string();
    let req = request(vec![StreamAppend {
        stream: "s-1".into(),
        expected: ExpectedVersion::NoStream,
        events: vec![e, event(2)],
    }]);
    let result = log.append(req).await.expect("append");
    assert_eq!(result.streams, vec![("s-1".to_string(), 2)], "{backend}");
    let all = log.read_all(0, 100).await.expect("read");
    assert_eq!(all.len(), 2, "{backend}");
    assert_eq!(all[0].event_id, id, "{backend}");
    assert_eq!((all[0].version, all[1].version), (1, 2), "{backend}");
    assert!(all[0].position < all[1].position, "{backend}");
    assert_eq!(all[1].position, result.last_position, "{backend}");
    assert_eq!(
        (all[0].actor.as_str(), all[0].correlation_id.as_str(), all[0].causation_id.as_deref()),
        ("tester", "corr-1", Some("cause-1")),
        "{backend}"
    );
    assert_eq!((all[0].company_id.as_str(), all[0].application_id.as_str()), ("1", "app"), "{backend}");
    assert_eq!(all[0].data.value(), json!({"n": 1}), "{backend}");
    assert_eq!(log.read_stream("s-1").await.expect("stream"), all, "{backend}");
    assert_eq!(log.head().await.expect("head"), result.last_position, "{backend}");
}

#[tokio::test]
async fn a_stale_expected_version_is_a_conflict_and_appends_nothing() {
    for (backend, log) in logs().await {
        check_a_stale_expected_version_is_a_conflict_and_appends_nothing(backend, log).await;
    }
    if let Some(log) = kurrent().await {
        check_a_stale_expected_version_is_a_conflict_and_appends_nothing("kurrentdb", log).await;
    }
}

async fn check_a_stale_expected_version_is_a_conflict_and_appends_nothing(backend: &str, log: impl EventLog) {
    log.append(one("s", ExpectedVersion::NoStream, 1)).await.expect("first");
    let stale = log.append(one("s", ExpectedVersion::Exact(0), 2)).await;
    assert!(matches!(stale, Err(AppendError::Conflict { actual: 1, .. })), "{backend}: {stale:?}");
    let again = log.append(one("s", ExpectedVersion::NoStream, 3)).await;
    assert!(matches!(again, Err(AppendError::Conflict { .. })), "{backend}: {again:?}");
    log.append(one("s", ExpectedVersion::Exact(1), 4)).await.expect("right version");
    let versions: Vec<i64> = log.read_stream("s").await.expect("read").iter().map(|e| e.version).collect();
    assert_eq!(versions, vec![1, 2], "{backend}");
}

#[tokio::test]
async fn a_multi_stream_append_is_all_or_nothing() {
    for (backend, log) in logs().await {
        check_a_multi_stream_append_is_all_or_nothing(backend, log).await;
    }
    if let Some(log) = kurrent().await {
        check_a_multi_stream_append_is_all_or_nothing("kurrentdb", log).await;
    }
}

async fn check_a_multi_stream_append_is_all_or_nothing(backend: &str, log: impl EventLog) {
    log.append(one("b", ExpectedVersion::NoStream, 1)).await.expect("b");
    let req = request(vec![
        StreamAppend { stream: "a".into(), expected: ExpectedVersion::NoStream, events: vec![event(1)] },
        StreamAppend { stream: "b".into(), expected: ExpectedVersion::Exact(7), events: vec![event(2)] },
    ]);
    assert!(log.append(req).await.is_err(), "{backend}");
    assert!(log.read_stream("a").await.expect("read").is_empty(), "{backend}: stream a must not exist");
    assert_eq!(log.read_all(0, 10).await.expect("read").len(), 1, "{backend}");
}

#[tokio::test]
async fn the_same_idempotency_key_never_appends_twice() {
    for (backend, log) in logs().await {
        check_the_same_idempotency_key_never_appends_twice(backend, log).await;
    }
    if let Some(log) = kurrent().await {
        check_the_same_idempotency_key_never_appends_twice("kurrentdb", log).await;
    }
}

async fn check_the_same_idempotency_key_never_appends_twice(backend: &str, log: impl EventLog) {
    let mut req = one("s", ExpectedVersion::Any, 1);
    req.idempotency_key = Some("key-1".into());
    let first = log.append(req.clone()).await.expect("first");
    assert!(!first.replayed, "{backend}");
    let mut retry = one("other", ExpectedVersion::Any, 2);
    retry.idempotency_key = Some("key-1".into());
    let second = log.append(retry).await.expect("second");
    assert!(second.replayed, "{backend}");
    assert_eq!((second.last_position, &second.streams), (first.last_position, &first.streams), "{backend}");
    assert_eq!(log.read_all(0, 10).await.expect("read").len(), 1, "{backend}");
    // Keys are scoped to the tenant.
    let mut foreign = one("t", ExpectedVersion::Any, 3);
    foreign.tenant.application_id = "other-app".into();
    foreign.idempotency_key = Some("key-1".into());
    assert!(!log.append(foreign).await.expect("foreign").replayed, "{backend}");
}

#[tokio::test]
async fn reservations_are_exclusive_until_released() {
    for (backend, log) in logs().await {
        check_reservations_are_exclusive_until_released(backend, log).await;
    }
    if let Some(log) = kurrent().await {
        check_reservations_are_exclusive_until_released("kurrentdb", log).await;
    }
}

async fn check_reservations_are_exclusive_until_released(backend: &str, log: impl EventLog) {
    let claim = |stream: &str, key: &str| {
        let mut r = one(stream, ExpectedVersion::Any, 0);
        r.reserve = vec![Reservation { key: key.into(), stream: stream.into() }];
        r
    };
    log.append(claim("user-a", "email:x@y.co")).await.expect("a claims");
    let taken = log.append(claim("user-b", "email:x@y.co")).await;
    assert!(matches!(&taken, Err(AppendError::Reserved { key }) if key == "email:x@y.co"), "{backend}: {taken:?}");
    assert!(log.read_stream("user-b").await.expect("read").is_empty(), "{backend}: rejected append left events");
    // Re-claiming one's own key is fine; another tenant has its own keys.
    log.append(claim("user-a", "email:x@y.co")).await.expect("own key");
    let mut other_tenant = claim("user-c", "email:x@y.co");
    other_tenant.tenant.company_id = "2".into();
    log.append(other_tenant).await.expect("other tenant");
    // Only the holder's release frees it.
    let mut wrong = one("user-b", ExpectedVersion::Any, 0);
    wrong.release = vec![Reservation { key: "email:x@y.co".into(), stream: "user-b".into() }];
    log.append(wrong).await.expect("no-op release");
    assert!(log.append(claim("user-b", "email:x@y.co")).await.is_err(), "{backend}");
    let mut release = one("user-a", ExpectedVersion::Any, 0);
    release.release = vec![Reservation { key: "email:x@y.co".into(), stream: "user-a".into() }];
    log.append(release).await.expect("release");
    log.append(claim("user-b", "email:x@y.co")).await.expect("free again");
}

#[tokio::test]
async fn concurrent_appends_get_distinct_increasing_positions_and_share_transactions() {
    for (backend, log) in logs().await {
        let tasks: Vec<_> = (0..300)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(one(&format!("c-{i}"), ExpectedVersion::NoStream, i)).await })
            })
            .collect();
        let mut acked = Vec::new();
        for t in tasks {
            acked.push(t.await.expect("join").expect("append").last_position);
        }
        let all = log.read_all(0, 1000).await.expect("read");
        let positions: Vec<i64> = all.iter().map(|e| e.position).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{backend}: positions not increasing");
        acked.sort();
        assert_eq!(acked, positions, "{backend}: every acknowledged append is readable, nothing else");
        let stats = log.stats();
        let (tx, reqs) = (stats.transactions.load(Ordering::Relaxed), stats.requests.load(Ordering::Relaxed));
        assert_eq!(reqs, 300, "{backend}");
        assert!(tx < reqs, "{backend}: group commit should batch concurrent appends ({tx} transactions for {reqs})");
    }
}

/// A slow transaction takes a position and stays open; a fast append comes
/// after it. A reader polling in between must never see the fast event
/// before the slow one: otherwise it would move its checkpoint past the slow
/// event and skip it forever.
#[tokio::test]
async fn no_reader_ever_skips_an_event_committed_late() {
    for (backend, log) in logs().await {
        log.append(one("before", ExpectedVersion::Any, 0)).await.expect("seed");
        let head = log.head().await.expect("head");
        let slow = log.append_held(one("slow", ExpectedVersion::Any, 1)).await.expect("slow takes a position");
        let fast = {
            let log = log.clone();
            tokio::spawn(async move { log.append(one("fast", ExpectedVersion::Any, 2)).await })
        };
        let mut checkpoint = head;
        let mut seen = Vec::new();
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            for e in log.read_all(checkpoint, 100).await.expect("poll") {
                checkpoint = e.position;
                seen.push(e.stream);
            }
        }
        assert!(seen.is_empty(), "{backend}: a reader saw {seen:?} while an earlier position was uncommitted");
        let slow_result = slow.commit().await.expect("commit slow");
        let fast_result = fast.await.expect("join").expect("fast");
        assert!(slow_result.last_position < fast_result.last_position, "{backend}");
        for e in log.read_all(checkpoint, 100).await.expect("poll") {
            seen.push(e.stream);
        }
        assert_eq!(seen, vec!["slow".to_string(), "fast".to_string()], "{backend}");
    }
}

#[tokio::test]
async fn the_head_watch_follows_appends() {
    for (backend, log) in logs().await {
        let mut head = log.watch_head();
        let r = log.append(one("w", ExpectedVersion::Any, 1)).await.expect("append");
        tokio::time::timeout(Duration::from_secs(5), head.wait_for(|h| *h >= r.last_position))
            .await
            .unwrap_or_else(|_| panic!("{backend}: head watch did not move"))
            .expect("watch");
    }
}

/// Requests that land in one group-commit batch see each other: of many
/// concurrent claims of one key, or creations of one stream, exactly one wins;
/// of many uses of one idempotency key, exactly one appends.
#[tokio::test]
async fn concurrent_requests_in_one_batch_see_each_other() {
    for (backend, log) in logs().await {
        let claims: Vec<_> = (0..50)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move {
                    let stream = format!("claimant-{i}");
                    let mut r = one(&stream, ExpectedVersion::NoStream, i);
                    r.reserve = vec![Reservation { key: "email:race@y.co".into(), stream }];
                    log.append(r).await
                })
            })
            .collect();
        let creations: Vec<_> = (0..50)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(one("contested", ExpectedVersion::NoStream, i)).await })
            })
            .collect();
        let retries: Vec<_> = (0..50)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut r = one(&format!("retry-{i}"), ExpectedVersion::Any, i);
                    r.idempotency_key = Some("same-key".into());
                    log.append(r).await
                })
            })
            .collect();
        let mut won = (0, 0, 0);
        let mut first_result = None;
        for t in claims {
            match t.await.expect("join") {
                Ok(_) => won.0 += 1,
                Err(AppendError::Reserved { .. }) => {}
                Err(e) => panic!("{backend}: {e}"),
            }
        }
        for t in creations {
            match t.await.expect("join") {
                Ok(_) => won.1 += 1,
                Err(AppendError::Conflict { .. }) => {}
                Err(e) => panic!("{backend}: {e}"),
            }
        }
        for t in retries {
            let r = t.await.expect("join").expect("idempotent append");
            if !r.replayed {
                won.2 += 1;
            }
            let first = first_result.get_or_insert(r.last_position);
            assert_eq!(*first, r.last_position, "{backend}: every retry gets the first result");
        }
        assert_eq!(won, (1, 1, 1), "{backend}");
        assert_eq!(log.read_stream("contested").await.expect("read").len(), 1, "{backend}");
        let appended_retries =
            log.read_all(0, 1000).await.expect("read").iter().filter(|e| e.stream.starts_with("retry-")).count();
        assert_eq!(appended_retries, 1, "{backend}");
    }
}

#[tokio::test]
async fn readers_at_the_head_get_exactly_what_the_database_holds() {
    for (backend, log) in logs().await {
        for n in 0..6 {
            let mut e = event(n);
            e.data = json!({"n": n, "f": 0.1 + n as f64, "text": "ünïcødé \" \\ ✓ line\nbreak\ttab", "big": 1e300, "nested": {"list": [1, null, true]}});
            let mut req = request(vec![
                StreamAppend { stream: format!("a-{n}"), expected: ExpectedVersion::NoStream, events: vec![e] },
                StreamAppend { stream: "shared".into(), expected: ExpectedVersion::Any, events: vec![event(100 + n)] },
            ]);
            if n % 2 == 0 {
                req.causation_id = None;
            }
            log.append(req).await.expect("append");
        }
        // A second handle on the same database has remembered nothing: it reads the tables.
        let cold = SqlEventLog::open(log.db().clone()).await.expect("open");
        for (after, limit) in [(0, 100), (3, 4), (11, 5), (12, 1)] {
            assert_eq!(
                log.read_all(after, limit).await.expect("warm"),
                cold.read_all(after, limit).await.expect("cold"),
                "{backend}: after {after} limit {limit}"
            );
        }
    }
}
