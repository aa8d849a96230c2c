//! Reads see the caller's writes without any header: write-then-read rounds
//! through the unmodified official SDKs, on one instance (SQLite) and with
//! writes on one instance and reads on another (PostgreSQL), the worst case
//! a load balancer can produce. `X-Consistency: eventual` never waits.
//!
//! Rounds per SDK: `USERSTREAM_RYW_ROUNDS` (default 60; the figures in
//! `docs/benchmarks.md` are from 1,000).

use serde_json::Value;
use std::path::{Path, PathBuf};

use userstream_tests::{fresh_postgres, fresh_sqlite, TestApp, APP};

fn rounds() -> String {
    std::env::var("USERSTREAM_RYW_ROUNDS").unwrap_or_else(|_| "60".into())
}

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk")
}

/// Runs one SDK script and returns its JSON line of misses.
async fn misses(program: &Path, script: &str, args: &[&str]) -> Value {
    let output = tokio::process::Command::new(program)
        .arg(script)
        .args(args)
        .current_dir(sdk_dir())
        .output()
        .await
        .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} failed:\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| panic!("{script} printed {stdout}"))
}

async fn assert_no_misses(writer: &TestApp, reader: &TestApp, topology: &str) {
    let rounds = rounds();
    let fynd = misses(
        Path::new("node"),
        "fynd-read-your-writes.js",
        &[&writer.base, &reader.base, &writer.key.api_key, &writer.key.api_secret, &rounds],
    )
    .await;
    let python = sdk_dir().join(".venv/bin/python");
    let passage =
        misses(&python, "passage-read-your-writes.py", &[&writer.base, &reader.base, APP, &writer.key.bearer, &rounds])
            .await;
    eprintln!("{topology}: fynd {fynd}, passage {passage}");
    for (sdk, result) in [("fynd", &fynd), ("passage", &passage)] {
        assert_eq!(result["rounds"].to_string(), rounds, "{topology} {sdk}: {result}");
        for kind in ["create_search", "update_list", "archive_list"] {
            assert_eq!(result[kind], 0, "{topology} {sdk}: {kind} missed its write: {result}");
        }
    }
}

#[tokio::test]
async fn the_official_sdks_read_their_own_writes_on_one_instance() {
    let app = TestApp::spawn_on(fresh_sqlite(), &[]).await;
    assert_no_misses(&app, &app, "one instance (sqlite)").await;
}

#[tokio::test]
async fn the_official_sdks_read_their_own_writes_on_another_instance() {
    let Some(db) = fresh_postgres().await else { return };
    let a = TestApp::spawn_on(db, &[]).await;
    let b = a.peer();
    assert_no_misses(&a, &b, "write on one instance, read on another (postgres)").await;
    assert_no_misses(&b, &a, "the other way round (postgres)").await;
}

#[tokio::test]
async fn an_eventual_read_never_waits_and_a_default_one_waits_for_the_head() {
    let app = TestApp::spawn_on(fresh_sqlite(), &[("USERSTREAM_MIN_POSITION_WAIT_MS", "300")]).await;
    let (user, _) = app
        .create_user(serde_json::json!({"email": "e@example.com", "phone_number": "9876500001", "username": "eve"}))
        .await;
    let list = format!("{}/list", app.customers());
    let r = app.client.get(&list).send().await.expect("list");
    assert_eq!(r.status(), 200, "a healthy read model answers a default read");
    assert_eq!(app.client.get(&list).header("x-consistency", "sometimes").send().await.expect("list").status(), 400);
    let passage = format!("{}/users", app.passage_app(APP));
    let r = app.passage.get(&passage).header("x-consistency", "sometimes").send().await.expect("list");
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        (body["code"].as_str(), body["error"].is_string()),
        (Some("invalid_request"), true),
        "Passage's shape: {body}"
    );

    // An event the users projection cannot apply: it stops there, so the
    // read model never reaches the head again.
    userstream_tests::append_poison(&app.db.url, "user-61f02c3dcc701256044ed6c0", "user.created").await;
    let r = app.client.get(&list).send().await.expect("list");
    assert_eq!(r.status(), 503, "a default read waits for the head the read model cannot reach");
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "read_model_behind", "{body}");

    for eventual in [
        app.client.get(&list).header("x-consistency", "eventual"),
        app.client.get(format!("{list}?consistency=eventual")),
    ] {
        let r = eventual.send().await.expect("list");
        assert_eq!(r.status(), 200, "an eventual read answers from what the read model has");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["items"][0]["_id"], user["_id"], "{body}");
    }
    assert_eq!(app.passage.get(&passage).send().await.expect("list").status(), 503);
    assert_eq!(app.passage.get(&passage).header("x-consistency", "eventual").send().await.expect("list").status(), 200);
}
