//! Configuration that does what the README says: the attribute key from
//! `USERSTREAM_ATTRIBUTE_KEY` / `--attribute-key` seals encrypted values,
//! and a server given another key refuses to start instead of answering
//! with the wrong plaintext or a 500 on every read.

use serde_json::json;
use std::time::Duration;
use userstream_tests::{binary, call, fresh_sqlite, TestApp, TestDb, APP, COMPANY};

const K1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes, base64
const K2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

/// Starts `serve` on `db` with `env` and extra `args`, expecting it to exit
/// by itself; returns its exit success and what it wrote to stderr.
async fn refused_start(db: &TestDb, env: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let child = tokio::process::Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &db.url])
        .args(args)
        .envs(env.iter().copied())
        .env_remove("USERSTREAM_ATTRIBUTE_KEY")
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), child)
        .await
        .expect("a server with the wrong key should exit, not serve")
        .expect("run userstream");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn a_value_sealed_under_one_attribute_key_is_never_opened_by_a_server_started_with_another() {
    let db = fresh_sqlite();
    let mut app = TestApp::spawn_on(db.clone(), &[("USERSTREAM_ATTRIBUTE_KEY", K1)]).await;
    let p = app.fynd(COMPANY, APP);
    let (status, def) = call(
        app.client
            .post(format!("{p}/user_attribute/definition"))
            .json(&json!({"name": "PAN", "slug": "pan", "type": "string", "encrypted": true})),
    )
    .await;
    assert_eq!(status, 201, "{def}");
    let def = def["_id"].as_str().expect("id").to_string();
    let (user, _) =
        app.create_user(json!({"phone_number": "9876543210", "email": "k@example.com", "username": "keyholder"})).await;
    let user = user["_id"].as_str().expect("id").to_string();
    let value_url = format!("{p}/user_attribute/definition/{def}/user/{user}");
    let (status, v) = call(app.client.put(&value_url).json(&json!({"attribute": {"value": "ABCDE1234F"}}))).await;
    assert_eq!((status, v["attribute"]["value"].clone()), (200, json!("ABCDE1234F")), "{v}");
    app.kill();

    // The key itself is not kept beside the data when it is configured.
    let conn = userstream_eventlog::Db::connect(&db.url).await.expect("db");
    let secrets: Vec<String> =
        sqlx::query_scalar("SELECT secret FROM server_secrets").fetch_all(&conn.pool).await.expect("select");
    assert!(secrets.iter().all(|s| !s.contains(K1)), "the configured key is stored: {secrets:?}");
    conn.pool.close().await;

    // Another key (by variable or by flag), or none: a clear error, no server.
    for (env, args) in
        [(vec![("USERSTREAM_ATTRIBUTE_KEY", K2)], vec![]), (vec![], vec!["--attribute-key", K2]), (vec![], vec![])]
    {
        let (ok, stderr) = refused_start(&db, &env, &args).await;
        assert!(!ok, "a server with {env:?} {args:?} started");
        assert!(stderr.contains("attribute key is not the one"), "{env:?} {args:?}: {stderr}");
        assert!(!stderr.contains("ABCDE1234F") && !stderr.contains(K2), "{stderr}");
    }

    // The right key still opens it.
    let again = TestApp::spawn_on(db, &[("USERSTREAM_ATTRIBUTE_KEY", K1)]).await;
    let (status, v) =
        call(again.client.get(format!("{}/user_attribute/definition/{def}/user/{user}", again.fynd(COMPANY, APP))))
            .await;
    assert_eq!((status, v["attribute"]["value"].clone()), (200, json!("ABCDE1234F")), "{v}");
}

/// `userstream migrate` creates the tables of every worker the registry
/// lists (it used to create the users read model's only), on every backend,
/// so a database migrated ahead of a deploy serves at once.
#[tokio::test]
async fn migrate_creates_the_tables_of_every_worker() {
    use userstream_projections::registry::{ReadModel, WithProjection};
    use userstream_projections::Projection;
    struct Tables;
    impl WithProjection for Tables {
        type Output = &'static [&'static str];
        async fn call<P: Projection + Clone>(self, projection: P) -> Self::Output {
            projection.tables()
        }
    }
    for db in userstream_tests::fresh_databases().await {
        let output = tokio::process::Command::new(binary())
            .args(["migrate", "--database", &db.url])
            .output()
            .await
            .expect("run userstream migrate");
        assert!(output.status.success(), "{}: {}", db.backend, String::from_utf8_lossy(&output.stderr));
        let mut expected: Vec<&str> = vec!["engine_state", "checkpoints", "events"];
        for model in ReadModel::ALL {
            expected.extend(model.with(Tables).await);
        }
        let conn = userstream_eventlog::Db::connect(&db.url).await.expect("connect");
        for table in expected {
            let rows: Result<i64, _> =
                sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(&conn.pool).await;
            assert!(rows.is_ok(), "{}: migrate left out {table}: {rows:?}", db.backend);
        }
    }
}
