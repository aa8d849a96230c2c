//! The NATS JetStream relay against a real nats-server, on every backend:
//! NATS unreachable at start, an outage in the middle of concurrent writes,
//! and afterwards every event on the stream exactly once, in log order, with
//! encrypted values still sealed.

use serde_json::{json, Value};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use userstream_tests::{
    binary, fresh_databases, nats_env, nats_server_bin, stream_messages, user_body, NatsServer, TestApp, APP, COMPANY,
};

/// The sum of every sample of `/metrics` whose line starts with `series`
/// (a name, or a name with its first labels).
async fn metric_sum(app: &TestApp, series: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", app.base)).await.expect("metrics").text().await.expect("text");
    let prefix = series.trim_end_matches('}');
    text.lines()
        .filter(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(['{', ' ', ',', '}']))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Waits (bounded) until `/readyz` satisfies `pred`; returns the last answer.
async fn wait_readyz(app: &TestApp, what: &str, pred: impl Fn(u16, &Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = app.readyz().await;
        if pred(status, &body) {
            return body;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{what}: /readyz stayed {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn relay_publishes_every_event_once_in_order_through_a_nats_outage() {
    let Some(bin) = nats_server_bin() else { return };
    for db in fresh_databases().await {
        let mut nats = NatsServer::new();
        let env = nats_env(&nats.url());
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (stream, prefix) = (env[1].1.clone(), env[2].1.clone());

        // NATS is not running yet: the service serves anyway, /readyz says why.
        let app = Arc::new(TestApp::spawn_on(db.clone(), &pairs).await);
        app.create_user(user_body(0)).await;
        let body = wait_readyz(&app, "NATS down at start", |s, b| {
            s == 503
                && b["reasons"].to_string().contains("NATS unreachable")
                && b["projections"]["users_v1"]["lag"] == 0
        })
        .await;
        assert_eq!(body["reasons"].as_array().map(Vec::len), Some(1), "only the relay is not ready: {body}");

        nats.start(&bin);
        wait_readyz(&app, "relay connects", |s, b| s == 200 && b["projections"]["nats-relay"]["lag"] == 0).await;

        // An encrypted value: sealed in the log, so sealed on NATS.
        let p = app.fynd(COMPANY, APP);
        let d: Value = app
            .client
            .post(format!("{p}/user_attribute/definition"))
            .json(&json!({"name": "PAN", "slug": "pan", "type": "string", "encrypted": true}))
            .send()
            .await
            .expect("definition")
            .json()
            .await
            .expect("json");
        let (user, _) = app.create_user(user_body(1)).await;
        let r = app
            .client
            .put(format!(
                "{p}/user_attribute/definition/{}/user/{}",
                d["_id"].as_str().expect("id"),
                user["_id"].as_str().expect("id")
            ))
            .json(&json!({"attribute": {"value": "SECRET-PAN-4711"}}))
            .send()
            .await
            .expect("upsert");
        assert_eq!(r.status(), 200);

        // Writers on three tasks; NATS is killed while they write and
        // started again after they finished.
        let writers: Vec<_> = (0..3u32)
            .map(|w| {
                let app = app.clone();
                tokio::spawn(async move {
                    for n in 0..40u32 {
                        let r = app
                            .client
                            .post(app.customers())
                            .json(&user_body(100 + w * 100 + n))
                            .send()
                            .await
                            .expect("create");
                        assert_eq!(r.status(), 200, "writes go on while NATS is down");
                        if n % 10 == 0 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        nats.kill();
        for w in writers {
            w.await.expect("writer");
        }
        // At least one event to publish while NATS is down, however fast
        // the writers were.
        app.create_user(user_body(999)).await;
        wait_readyz(&app, "NATS outage noticed", |s, b| s == 503 && b["reasons"].to_string().contains("nats")).await;
        // The metrics show the outage: failures counted, the relay behind.
        let failures = metric_sum(&app, "userstream_nats_publish_failures_total").await;
        assert!(failures > 0.0, "{}: failures counted during the outage", db.backend);
        assert!(metric_sum(&app, "userstream_worker_lag_events{worker=\"nats-relay\"}").await > 0.0);
        assert!(metric_sum(&app, "userstream_worker_lag_seconds{worker=\"nats-relay\"}").await > 0.0);
        nats.start(&bin);
        let head = app.head().await;
        wait_readyz(&app, "relay catches up", |s, b| s == 200 && b["projections"]["nats-relay"]["position"] == head)
            .await;
        assert_eq!(metric_sum(&app, "userstream_worker_lag_events{worker=\"nats-relay\"}").await, 0.0);
        assert_eq!(metric_sum(&app, "userstream_worker_lease_owned{worker=\"nats-relay\"}").await, 1.0);

        let messages = stream_messages(&nats.url(), &stream).await;
        let positions: Vec<i64> = messages.iter().map(|(_, _, e)| e["position"].as_i64().expect("position")).collect();
        let expected: Vec<i64> = (1..=head).collect();
        assert_eq!(positions, expected, "{}: every event exactly once, in log order", db.backend);
        for (subject, id, event) in &messages {
            assert_eq!(id, event["event_id"].as_str().expect("event id"), "Nats-Msg-Id is the event id");
            assert_eq!(
                subject,
                &format!(
                    "{prefix}.{}.{}.{}",
                    event["company_id"].as_str().unwrap_or(""),
                    event["application_id"].as_str().unwrap_or(""),
                    event["type"].as_str().unwrap_or("")
                )
            );
        }
        let everything: String = messages.iter().map(|(_, _, e)| e.to_string()).collect();
        assert!(everything.contains("attribute.upserted"), "the encrypted upsert was published");
        assert!(!everything.contains("SECRET-PAN-4711"), "encrypted values never reach NATS in plaintext");

        // The example subscriber: a durable consumer; a second run resumes after the first.
        let tail = |count: usize| {
            let out = Command::new(binary())
                .args(["tail", "--nats", &nats.url(), "--nats-stream", &stream, "--durable", "test-tail"])
                .args(["--count", &count.to_string()])
                .env("RUST_LOG", "warn")
                .output()
                .expect("run userstream tail");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line")["position"].as_i64().expect("position"))
                .collect::<Vec<i64>>()
        };
        assert_eq!(tail(3), vec![1, 2, 3]);
        assert_eq!(tail(2), vec![4, 5], "the durable consumer resumes where the last tail stopped");

        // A replay rebuilds the read models and publishes nothing again.
        let out = Command::new(binary())
            .args(["replay", "--database", &db.url])
            .env("RUST_LOG", "warn")
            .output()
            .expect("replay");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(stream_messages(&nats.url(), &stream).await.len(), messages.len(), "replay never republishes");
    }
}
