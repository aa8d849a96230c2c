//! `userstream replay` against a running service, on every backend: the
//! rebuilt read models equal the live ones row for row, and switching to
//! them keeps the service answering reads and writes.

use serde_json::{json, Value};
use sqlx::Executor;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use userstream_eventlog::Db;
use userstream_tests::{
    binary, dumps, fresh_databases, position_of, replay, settle, shadow, TestApp, TestDb, APP, COMPANY, MODELS,
};

/// The secondary indexes on `tables` (SQLite names a swapped-in index
/// `name__r` when `name` was taken; both count as `name`).
async fn indexes(db: &Db, tables: &[&str]) -> Vec<String> {
    let sql = match db.dialect {
        userstream_eventlog::Dialect::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = $1 AND sql IS NOT NULL"
        }
        userstream_eventlog::Dialect::Postgres => {
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema() AND tablename = $1 AND indexname NOT LIKE '%_pkey'"
        }
    };
    let mut names = Vec::new();
    for table in tables {
        let found: Vec<String> = sqlx::query_scalar(sql).bind(table).fetch_all(&db.pool).await.expect("indexes");
        names.extend(found.into_iter().map(|n| n.trim_end_matches("__r").to_string()));
    }
    names.sort();
    names
}

/// `userstream replay --projection users_v1` on `db`, running, its output piped.
fn start_users_replay(db: &TestDb) -> std::process::Child {
    Command::new(binary())
        .args(["replay", "--database", &db.url, "--projection", "users_v1"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start userstream replay")
}

/// Asks `count_sql` up to `tries` times, `every_ms` apart, until it counts
/// more than 0. Returns whether it did.
async fn counts_some(db: &Db, count_sql: &str, tries: u32, every_ms: u64) -> bool {
    for _ in 0..tries {
        if sqlx::query_scalar::<_, i64>(count_sql).fetch_one(&db.pool).await.expect("count") > 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(every_ms)).await;
    }
    false
}

async fn populate(app: &TestApp) {
    let p = app.fynd(COMPANY, APP);
    let def: Value = app
        .client
        .post(format!("{p}/user_attribute/definition"))
        .json(&json!({"name": "Age", "slug": "age", "type": "number"}))
        .send()
        .await
        .expect("definition")
        .json()
        .await
        .expect("json");
    let def = def["_id"].as_str().expect("id").to_string();
    settle(app).await;
    let r = app
        .client
        .post(format!("{p}/user_group"))
        .json(&json!({"name": "Adults", "conditions": [{"user_attribute_definition_id": def, "type": "gte", "value": "18"}]}))
        .send()
        .await
        .expect("group");
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let manual: Value = app
        .client
        .post(format!("{p}/user_group"))
        .json(&json!({"name": "VIP"}))
        .send()
        .await
        .expect("group")
        .json()
        .await
        .expect("json");
    for n in 0..30u32 {
        let (u, _) = app
            .create_user(json!({"phone_number": format!("95678{n:05}"), "email": format!("p{n}@example.com"), "username": format!("rp{n}"), "first_name": "P"}))
            .await;
        let id = u["_id"].as_str().expect("id").to_string();
        let r = app
            .client
            .put(format!("{p}/user_attribute/definition/{def}/user/{id}"))
            .json(&json!({"attribute": {"value": 10 + n}}))
            .send()
            .await
            .expect("value");
        assert_eq!(r.status(), 200);
        match n % 5 {
            0 => assert_eq!(app.put_customers("/archive", json!({"user_id": id})).await.status(), 200),
            1 => assert_eq!(
                app.put_customers("/activation", json!({"user_id": [id], "status": false})).await.status(),
                200
            ),
            2 => {
                let r = app
                    .client
                    .post(format!("{}/session", app.customers()))
                    .json(&json!({"user_id": id, "domain": "shop.example.com", "max_age": 3600}))
                    .send()
                    .await
                    .expect("session");
                assert_eq!(r.status(), 200);
            }
            3 => {
                let r = app
                    .client
                    .patch(format!("{p}/user_group/{}", manual["_id"].as_str().expect("id")))
                    .json(&json!({"type": "json", "user_data": [{"user_id": id, "action": "add"}]}))
                    .send()
                    .await
                    .expect("patch");
                assert_eq!(r.status(), 200);
            }
            _ => assert_eq!(app.put_customers(&format!("/{id}"), json!({"last_name": "Q"})).await.status(), 200),
        }
    }
}

#[tokio::test]
async fn replayed_read_models_equal_the_live_ones_and_switch_while_serving() {
    for db in fresh_databases().await {
        let app = Arc::new(TestApp::spawn_on(db.clone(), &[]).await);
        populate(&app).await;
        settle(&app).await;
        let main = Db::connect(&db.url).await.expect("connect");
        let head = app.head().await;
        let mut live_indexes = Vec::new();
        for (_, tables) in MODELS {
            live_indexes.push(indexes(&main, tables).await);
        }

        // Rebuilt beside the live models, not switched: equal row for row,
        // with every index (a rebuild builds its query indexes last).
        for ((projection, tables), live_indexes) in MODELS.into_iter().zip(&live_indexes) {
            let out = replay(&db, &["--projection", projection, "--to", &head.to_string()]);
            assert!(out.contains(&format!("rebuilt to position {head}")), "{out}");
            let fresh = shadow(&db, projection).await;
            assert_eq!(
                dumps(&fresh, tables).await,
                dumps(&main, tables).await,
                "{}: {projection} rebuilt == live",
                db.backend
            );
            assert_eq!(&indexes(&fresh, tables).await, live_indexes, "{}: {projection} indexes", db.backend);
            fresh.pool.close().await;
        }

        // A full replay with switch while clients read and write.
        let stop = Arc::new(AtomicBool::new(false));
        let created = Arc::new(AtomicU32::new(0));
        let load = {
            let (app, stop, created) = (app.clone(), stop.clone(), created.clone());
            tokio::spawn(async move {
                let mut n = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    let r = app
                        .client
                        .post(app.customers())
                        .json(&json!({"phone_number": format!("96789{n:05}"), "username": format!("live{n}")}))
                        .send()
                        .await
                        .expect("create");
                    assert_eq!(r.status(), 200, "writes are answered during the replay");
                    let position = position_of(&r);
                    created.fetch_add(1, Ordering::SeqCst);
                    let r = app
                        .client
                        .get(format!("{}/list?page_size=5", app.customers()))
                        .header("x-min-position", position.to_string())
                        .send()
                        .await
                        .expect("list");
                    assert_eq!(r.status(), 200, "reads are answered during the replay");
                    n += 1;
                }
            })
        };
        let db2 = db.clone();
        let out = tokio::task::spawn_blocking(move || replay(&db2, &[])).await.expect("replay");
        stop.store(true, Ordering::SeqCst);
        load.await.expect("load");
        for (projection, _) in MODELS {
            assert!(out.contains(&format!("{projection}: rebuilt and switched")), "{out}");
        }
        assert!(created.load(Ordering::SeqCst) > 0, "the load ran during the replay");

        // After the switch the models go on from where the replay left them
        // and still equal a fresh rebuild.
        settle(&app).await;
        assert_eq!(
            app.total_users().await,
            24 + i64::from(created.load(Ordering::SeqCst)),
            "30 created, 6 archived, plus the load"
        );
        let head = app.head().await;
        for ((projection, tables), live_indexes) in MODELS.into_iter().zip(&live_indexes) {
            assert_eq!(&indexes(&main, tables).await, live_indexes, "{}: {projection} indexes switched in", db.backend);
            replay(&db, &["--projection", projection, "--to", &head.to_string()]);
            let fresh = shadow(&db, projection).await;
            assert_eq!(
                dumps(&fresh, tables).await,
                dumps(&main, tables).await,
                "{}: {projection} after the switch",
                db.backend
            );
            fresh.pool.close().await;
        }
    }
}

/// PostgreSQL: a switch that cannot have the live tables at once (a long
/// reader holds them) must not make every other reader queue behind its
/// lock request; it keeps trying and switches once they are free.
#[tokio::test]
async fn a_switch_behind_a_long_reader_lets_other_readers_through() {
    let Some(db) = userstream_tests::fresh_postgres().await else { return };
    let app = TestApp::spawn_on(db.clone(), &[]).await;
    for n in 0..20u32 {
        app.create_user(json!({"phone_number": format!("94678{n:05}"), "email": format!("lr{n}@example.com"), "username": format!("lr{n}")}))
            .await;
    }
    settle(&app).await;
    let main = Db::connect(&db.url).await.expect("connect");
    let mut holder = main.dedicated_connection().await.expect("connection");
    holder.execute("BEGIN").await.expect("begin");
    sqlx::query("SELECT COUNT(*) FROM users_v1").execute(&mut holder).await.expect("long reader");
    let mut replay = start_users_replay(&db);
    // Until the switch asks for the tables …
    let asking = "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
                  AND (query LIKE 'LOCK TABLE%' OR query LIKE 'ALTER TABLE%')";
    assert!(counts_some(&main, asking, 3000, 20).await, "the replay never asked for the live tables");
    // … other readers still get through (a reader stuck behind the switch's
    // lock request would wait for the long reader: 5 s, then an error).
    for _ in 0..10 {
        let mut reader = main.dedicated_connection().await.expect("connection");
        reader.execute("SET statement_timeout = '5s'").await.expect("timeout");
        sqlx::query("SELECT COUNT(*) FROM users_v1")
            .execute(&mut reader)
            .await
            .expect("a reader while the switch waits");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(replay.try_wait().expect("replay").is_none(), "the switch went ahead under a reader");
    holder.execute("COMMIT").await.expect("commit");
    let out = replay.wait_with_output().expect("replay ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("switched"), "{stdout}");
    assert_eq!(app.total_users().await, 20);
}

/// PostgreSQL: autovacuum on a live table does not give way to a lock
/// request that waits less than `deadlock_timeout`, so a switch that only
/// ever waited briefly would sit behind a long (here: throttled) autovacuum
/// for as long as it runs. The switch must notice it and wait long enough
/// for PostgreSQL to cancel it, without holding the live model's
/// checkpoint (and so its writer) meanwhile.
#[tokio::test]
async fn a_switch_is_not_held_off_by_autovacuum() {
    let Some(db) = userstream_tests::fresh_postgres().await else { return };
    let admin = std::env::var("DATABASE_URL_TEST").expect("admin url");
    let cluster = Db::connect(&admin).await.expect("connect");
    let set_naptime = |value: &'static str| {
        let pool = cluster.pool.clone();
        async move {
            pool.execute(format!("ALTER SYSTEM SET autovacuum_naptime = {value}").as_str()).await.expect("naptime");
            pool.execute("SELECT pg_reload_conf()").await.expect("reload");
        }
    };
    set_naptime("1").await;
    let app = TestApp::spawn_on(db.clone(), &[]).await;
    for n in 0..5u32 {
        app.create_user(json!({"phone_number": format!("93678{n:05}"), "username": format!("av{n}")})).await;
    }
    settle(&app).await;
    let main = Db::connect(&db.url).await.expect("connect");
    // Dead rows in a live table of users_v1, and an autovacuum on it that
    // sleeps after every page (it would run for minutes).
    main.pool
        .execute(
            "INSERT INTO user_sessions_v1 SELECT 'junk', 'u' || n, 's' || n, 'd', 'ua', 'ip', '2000-01-01', '2000-01-01' \
             FROM generate_series(1, 50000) AS n; \
             DELETE FROM user_sessions_v1 WHERE application_id = 'junk'; \
             ALTER TABLE user_sessions_v1 SET (autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1, \
             autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0)",
        )
        .await
        .expect("dead rows");
    let vacuuming = "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
                     AND backend_type = 'autovacuum worker' AND query LIKE '%user_sessions_v1%'";
    let seen = counts_some(&main, vacuuming, 600, 100).await;
    set_naptime("DEFAULT").await;
    assert!(seen, "autovacuum never started on user_sessions_v1");
    let mut replay = start_users_replay(&db);
    // A liveness bound, not a speed figure: the throttled vacuum alone
    // would take minutes.
    let mut waited = Duration::ZERO;
    while replay.try_wait().expect("replay").is_none() {
        if waited > Duration::from_secs(60) {
            let _ = replay.kill();
            panic!("the switch is still waiting behind autovacuum after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    let out = replay.wait_with_output().expect("replay ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("switched"), "{stdout}");
    let held: u64 = stdout
        .split("writes held up ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no 'writes held up' in {stdout}"));
    // Waiting out autovacuum under the checkpoint lock would hold the
    // writer for at least deadlock_timeout (1 s).
    assert!(held < 1000, "the switch held the live writer for {held} ms");
    assert_eq!(app.total_users().await, 5);
}

/// `deploy/replay-ceiling.sh` (the database alone writing what a replay of
/// `user.created` writes) fills the migrated schema with what it says.
#[tokio::test]
async fn the_replay_ceiling_script_writes_users_and_their_contacts() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/replay-ceiling.sh");
    for db in fresh_databases().await {
        let out = Command::new("bash")
            .arg(script)
            .args([db.url.as_str(), "300"])
            .env("USERSTREAM_BIN", binary())
            .output()
            .expect("run deploy/replay-ceiling.sh");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{}: {stdout}{}", db.backend, String::from_utf8_lossy(&out.stderr));
        assert!(stdout.starts_with("300 users (900 rows) in "), "{}: {stdout}", db.backend);
        let conn = Db::connect(&db.url).await.expect("connect");
        let count = |sql: &'static str| {
            let pool = conn.pool.clone();
            async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.expect(sql) }
        };
        assert_eq!(count("SELECT COUNT(DISTINCT user_id) FROM users_v1").await, 300, "{}", db.backend);
        assert_eq!(count("SELECT COUNT(*) FROM user_contacts_v1 WHERE kind = 'email'").await, 300, "{}", db.backend);
        assert_eq!(count("SELECT COUNT(*) FROM user_contacts_v1 WHERE kind = 'phone'").await, 300, "{}", db.backend);
        assert_eq!(
            count("SELECT COUNT(*) FROM users_v1 u JOIN user_contacts_v1 c ON c.user_id = u.user_id AND c.value = u.email")
                .await,
            300,
            "{}",
            db.backend
        );
        // PostgreSQL builds the query indexes after the rows; all are there.
        let migrated = match db.backend {
            "sqlite" => userstream_tests::fresh_sqlite(),
            _ => userstream_tests::fresh_postgres().await.expect("a PostgreSQL test cluster"),
        };
        let out = Command::new(binary()).args(["migrate", "--database", &migrated.url]).output().expect("migrate");
        assert!(out.status.success(), "migrate: {}", String::from_utf8_lossy(&out.stderr));
        let migrated = Db::connect(&migrated.url).await.expect("connect");
        let tables = ["users_v1", "user_contacts_v1"];
        assert_eq!(indexes(&conn, &tables).await, indexes(&migrated, &tables).await, "{}", db.backend);
    }
}
