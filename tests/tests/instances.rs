//! Several `userstream serve` processes on one PostgreSQL database (and one
//! NATS): any instance answers any request, every projection, the engine and
//! the relay run in one instance at a time, and killing that instance moves
//! them to another within 5 s without applying any event twice.

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use userstream_tests::{
    fresh_postgres, nats_env, nats_server_bin, position_of, stream_messages, user_body, NatsServer, TestApp,
};

async fn create(app: &TestApp, n: u32) -> (String, i64) {
    let r = app.client.post(app.customers()).json(&user_body(n)).send().await.expect("create");
    assert_eq!(r.status(), 200, "create on {}", app.base);
    let position = position_of(&r);
    let v: Value = r.json().await.expect("json");
    (v["user"]["_id"].as_str().expect("id").to_string(), position)
}

/// GET of a user on `app`, waiting (server-side, bounded) for `position`.
async fn read(app: &TestApp, id: &str, position: i64) -> reqwest::StatusCode {
    app.client
        .get(format!("{}/{id}", app.customers()))
        .header("x-min-position", position.to_string())
        .send()
        .await
        .expect("get")
        .status()
}

#[tokio::test]
async fn instances_share_one_database_and_hand_over_leases_when_one_dies() {
    let Some(db) = fresh_postgres().await else { return };
    let Some(bin) = nats_server_bin() else { return };
    let mut nats = NatsServer::new();
    nats.start(&bin);
    let env = nats_env(&nats.url());
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut a = TestApp::spawn_on(db, &pairs).await;
    let b = a.peer();

    // Writes on either instance are read on the other (read-your-writes
    // across processes: the standby follows the owner's checkpoints).
    let mut ids = Vec::new();
    for n in 0..20u32 {
        let (writer, reader) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let (id, position) = create(writer, n).await;
        assert_eq!(
            read(reader, &id, position).await,
            200,
            "user {n} written on {} read on {}",
            writer.base,
            reader.base
        );
        ids.push(id);
    }

    // Optimistic concurrency across instances: two updates of version 1, one wins.
    let (contested, _) = create(&a, 900).await;
    let update = |app: &TestApp, name: &str| {
        app.client
            .put(format!("{}/{contested}", app.customers()))
            .header("if-match", "\"1\"")
            .json(&json!({"first_name": name}))
            .send()
    };
    let (ra, rb) = tokio::join!(update(&a, "FromA"), update(&b, "FromB"));
    let statuses: BTreeSet<u16> = [ra.expect("a").status().as_u16(), rb.expect("b").status().as_u16()].into();
    assert_eq!(statuses, BTreeSet::from([200, 409]), "exactly one of two concurrent updates wins");

    // Kill the first instance (it started first, so it took the leases):
    // the second takes them over and keeps every projection moving.
    a.kill();
    let killed = Instant::now();
    let (id, position) = create(&b, 500).await;
    assert_eq!(read(&b, &id, position).await, 200, "projections moved to the surviving instance");
    loop {
        let r = b.readyz().await.1;
        let head = r["head"].as_i64().expect("head");
        if r["projections"].as_object().expect("projections").values().all(|p| p["position"] == head) {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(5), "leases not taken over within 5 s: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ids.push(id);

    // A new instance joins as standby and serves reads at once.
    let c = b.peer();
    let (id, position) = create(&c, 501).await;
    assert_eq!(read(&c, &id, position).await, 200);
    assert_eq!(read(&b, &id, position).await, 200);

    // Nothing was applied twice: the counters match what was created, and
    // every event reached NATS exactly once and in order.
    assert_eq!(b.total_users().await, 23);
    assert_eq!(c.total_users().await, 23);
    let head = c.readyz().await.1["head"].as_i64().expect("head");
    let started = Instant::now();
    while c.readyz().await.1["projections"]["nats-relay"]["position"] != head {
        assert!(started.elapsed() < Duration::from_secs(10), "relay did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let positions: Vec<i64> = stream_messages(&nats.url(), &env[1].1)
        .await
        .iter()
        .map(|(_, _, e)| e["position"].as_i64().expect("position"))
        .collect();
    assert_eq!(positions, (1..=head).collect::<Vec<_>>());
}
