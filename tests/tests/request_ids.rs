//! Logs a person can follow: every request gets an id (`X-Request-Id`,
//! the client's when it is well formed), it is returned, recorded in the
//! `http.request` span and used as the correlation id of the events a
//! command appends; `--log-format json` writes one JSON object a line.

use serde_json::{json, Value};
use userstream_tests::{client_with, create_key, fresh_sqlite, position_of, user_body, Logged, APP, COMPANY};

fn request_id(r: &reqwest::Response) -> String {
    r.headers().get("x-request-id").and_then(|v| v.to_str().ok()).expect("X-Request-Id").to_string()
}

#[tokio::test]
async fn every_request_has_an_id_that_reaches_the_log_and_the_events() {
    let db = fresh_sqlite();
    let (_, token) = create_key(&db, COMPANY, None).await;
    let server = Logged::spawn(&db, "info,tower_http=debug", &["--log-format", "json"]);
    let client = client_with(&format!("Bearer {token}"));
    let customers = format!("{}/service/platform/user/v1.0/company/{COMPANY}/application/{APP}/customers", server.base);

    // The client's id is kept, returned, and correlates the events.
    let r = client.post(&customers).header("x-request-id", "signup-42.a:b").json(&user_body(1)).send().await;
    let r = r.expect("create");
    assert_eq!((r.status().as_u16(), request_id(&r)), (200, "signup-42.a:b".to_string()));
    // Without one, a new id; an explicit correlation id wins for the events.
    let r = client.post(&customers).header("x-correlation-id", "flow-7").json(&user_body(2)).send().await;
    let r = r.expect("create");
    assert_eq!(r.status(), 200);
    let generated = request_id(&r);
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
    // A malformed one is replaced, never echoed or logged.
    let raw = "bad id \u{e9}\t".to_string() + &"x".repeat(200);
    let r = client
        .get(format!("{customers}/list"))
        .header("x-request-id", reqwest::header::HeaderValue::from_bytes(raw.as_bytes()).expect("value"))
        .send()
        .await
        .expect("list");
    let replaced = request_id(&r);
    assert!(uuid::Uuid::parse_str(&replaced).is_ok(), "{replaced}");
    // Errors carry the id too.
    let r = reqwest::Client::new().get(format!("{customers}/list")).header("x-request-id", "no-token").send().await;
    let r = r.expect("unauthorised");
    assert_eq!((r.status().as_u16(), request_id(&r)), (401, "no-token".to_string()));

    let feed = format!("{}/service/platform/user/v1.0/company/{COMPANY}/application/{APP}/events?after=0", server.base);
    let events: Value = client.get(feed).send().await.expect("feed").json().await.expect("json");
    let correlations: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == json!("user.created"))
        .filter_map(|e| e["correlation_id"].as_str())
        .collect();
    assert_eq!(correlations, ["signup-42.a:b", "flow-7"]);

    let logged = server.stop();
    let lines: Vec<Value> = logged
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let ids: Vec<&str> = lines.iter().filter_map(|l| l["span"]["request_id"].as_str()).collect();
    for id in ["signup-42.a:b", generated.as_str(), replaced.as_str(), "no-token"] {
        assert!(ids.contains(&id), "request {id} is in the http.request span of a log line: {ids:?}");
    }
    assert!(!logged.contains("bad id"), "a malformed id is never logged raw");
}

/// A 5xx is logged once, at error, inside the request's span (with its
/// id): the handler logs the cause; the trace layer does not log it again.
#[tokio::test]
async fn a_server_error_is_logged_once_in_its_request_span() {
    let db = fresh_sqlite();
    let (_, token) = create_key(&db, COMPANY, None).await;
    let server = Logged::spawn(&db, "info", &["--log-format", "json"]);
    let client = client_with(&format!("Bearer {token}"));
    let customers = format!("{}/service/platform/user/v1.0/company/{COMPANY}/application/{APP}/customers", server.base);
    let r = client.post(&customers).json(&user_body(1)).send().await.expect("create");
    assert_eq!(r.status(), 200);
    // The read model has the user before it is broken (else its projection
    // fails first, and the query waits for it: a 503, not this 500).
    let r = client.get(format!("{customers}/list")).header("x-min-position", position_of(&r).to_string()).send();
    assert_eq!(r.await.expect("list").status(), 200);
    // Break the read model under the running server: its next query fails.
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&db.url).await.expect("connect");
    sqlx::Executor::execute(&mut conn, "DROP TABLE users_v1").await.expect("drop");
    let r = client.get(format!("{customers}/list")).header("x-request-id", "boom-1").send().await.expect("list");
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body, json!({"message": "internal error", "code": "internal_error"}), "the cause is not sent");

    let logged = server.stop();
    let errors: Vec<Value> = logged
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["level"] == "ERROR")
        .collect();
    let ours: Vec<&Value> = errors.iter().filter(|l| l["span"]["request_id"] == "boom-1").collect();
    assert_eq!(ours.len(), 1, "logged once in the request span: {errors:#?}");
    assert!(
        ours[0]["fields"]["error"].as_str().is_some_and(|e| e.contains("users_v1")),
        "with its cause: {:?}",
        ours[0]
    );
}
