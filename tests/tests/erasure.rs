//! Erasure by crypto-shredding, black-box on every backend: after `POST
//! …/customers/{id}/erase` no answer of the API shows the person's data,
//! a replay from position 0 still works, NATS subscribers get
//! `user.erased`, and (SQLite) no file of the database holds the bytes.

use serde_json::{json, Value};
use std::time::Duration;
use time::OffsetDateTime;
use userstream_eventlog::{AppendRequest, Db, EventLog, ExpectedVersion, NewEvent, SqlEventLog, StreamAppend, Tenant};
use userstream_tests::{
    call, create_key, dumps, fresh_databases, nats_env, nats_server_bin, replay, settle, shadow, stream_messages,
    NatsServer, TestApp, TestDb, APP, COMPANY, MODELS,
};

/// What Ada's data looks like: none of it may survive her erasure.
const SECRETS: &[&str] = &[
    "ada.lovelace.erase@example.com",
    "9812345670",
    "Augusta",
    "Byronicus",
    "adaerase",
    "AnalyticalEngine",
    "4111-7777-9999",
    "EraseAgent/1.0",
];

/// A person whose events were written before sealing existed (in clear).
const LEGACY: &[&str] = &["legacy.person@example.com", "Legacyname", "legacyuser", "Legacynew"];

struct Ada {
    id: String,
    definition: String,
}

async fn create_ada(app: &TestApp) -> Ada {
    let p = app.fynd(COMPANY, APP);
    let (status, def) = call(
        app.client
            .post(format!("{p}/user_attribute/definition"))
            .json(&json!({"name": "Card", "slug": "card", "type": "string", "encrypted": true})),
    )
    .await;
    assert_eq!(status, 201, "{def}");
    let definition = def["_id"].as_str().expect("definition id").to_string();
    let (user, _) = app
        .create_user(json!({"email": SECRETS[0], "phone_number": SECRETS[1], "first_name": SECRETS[2],
            "last_name": SECRETS[3], "username": SECRETS[4], "meta": {"note": SECRETS[5]}}))
        .await;
    let id = user["_id"].as_str().expect("id").to_string();
    let (status, v) = call(
        app.client
            .put(format!("{p}/user_attribute/definition/{definition}/user/{id}"))
            .json(&json!({"attribute": {"value": SECRETS[6]}})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, s) = call(
        app.client
            .post(format!("{}/session", app.customers()))
            .header("user-agent", SECRETS[7])
            .json(&json!({"user_id": id, "domain": "shop.example"})),
    )
    .await;
    assert_eq!(status, 200, "{s}");
    Ada { id, definition }
}

/// A `user.created` written straight into the log without sealing, as a
/// version before crypto-shredding wrote it.
async fn create_legacy(db: &TestDb) -> (String, i64) {
    let id = "0123456789abcdef01234567".to_string();
    let log = SqlEventLog::open(Db::connect(&db.url).await.expect("db")).await.expect("log");
    let data = json!({"user_id": id, "username": LEGACY[2], "first_name": LEGACY[1], "emails": [{"email": LEGACY[0],
        "primary": true, "verified": true, "active": true}], "phone_numbers": [], "meta": {}, "account_type": "user",
        "at": "2026-01-01T00:00:00Z"});
    let result = log
        .append(AppendRequest {
            tenant: Tenant { company_id: COMPANY.into(), application_id: APP.into() },
            actor: "an older version".into(),
            correlation_id: "legacy".into(),
            causation_id: None,
            streams: vec![StreamAppend {
                stream: format!("user-{id}"),
                expected: ExpectedVersion::NoStream,
                events: vec![NewEvent {
                    event_id: uuid::Uuid::now_v7(),
                    event_type: "user.created".into(),
                    schema: 1,
                    occurred_at: OffsetDateTime::now_utc(),
                    data,
                }],
            }],
            reserve: vec![],
            release: vec![],
            idempotency_key: None,
        })
        .await
        .expect("legacy append");
    (id, result.last_position)
}

/// How many data keys are stored for `subject`.
async fn keys_of(conn: &Db, subject: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM subject_keys WHERE subject = $1")
        .bind(subject)
        .fetch_one(&conn.pool)
        .await
        .expect("keys")
}

fn shows_none(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "{what} shows {secret:?}: {text}");
    }
}

async fn erase(app: &TestApp, id: &str) -> (u16, Value) {
    call(app.client.post(format!("{}/{id}/erase", app.customers())).json(&json!({"reason": "GDPR art. 17 request"})))
        .await
}

/// Every answer of the API that could show the person.
async fn answers_after(app: &TestApp, ada: &Ada, before: i64) -> Vec<(String, String)> {
    let p = app.fynd(COMPANY, APP);
    let c = app.customers();
    let id = &ada.id;
    let mut urls = vec![
        format!("{c}/{id}"),
        format!("{c}/{id}?as_of={before}"),
        format!("{c}/{id}/history"),
        format!("{c}/{id}/timeline"),
        format!("{c}/list?page_size=100"),
        format!("{c}/search?query={}", SECRETS[0]),
        format!("{c}/sessions?id={id}"),
        format!("{p}/events?after=0&limit=1000"),
        format!("{p}/user_attribute/user/{id}"),
        format!("{p}/user_attribute/definition/{}/user/{id}", ada.definition),
    ];
    urls.extend(SECRETS.iter().take(2).map(|s| format!("{c}/list?q={s}")));
    let mut out = Vec::new();
    for url in urls {
        let r = app.client.get(&url).send().await.expect("get");
        out.push((url, format!("{} {}", r.status(), r.text().await.unwrap_or_default())));
    }
    for url in [format!("{}/users/{id}", app.passage_app(APP)), format!("{}/users?limit=100", app.passage_app(APP))] {
        let r = app.passage.get(&url).send().await.expect("get");
        out.push((url, format!("{} {}", r.status(), r.text().await.unwrap_or_default())));
    }
    // The live feed (SSE) from position 0: what a new subscriber replays.
    let mut sse =
        app.client.get(format!("{p}/events?after=0")).header("accept", "text/event-stream").send().await.expect("sse");
    let mut text = String::new();
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout(Duration::from_millis(500), sse.chunk()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("user.erased"), "the SSE replay reached the erasure: {text}");
    out.push(("SSE".into(), text));
    out
}

/// Every byte of every file of a SQLite database.
fn database_files(db: &TestDb) -> Vec<(String, Vec<u8>)> {
    let path = db.url.trim_start_matches("sqlite://").split('?').next().unwrap_or_default().to_string();
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let file = format!("{path}{suffix}");
            std::fs::read(&file).ok().map(|bytes| (file, bytes))
        })
        .collect()
}

fn holds(bytes: &[u8], secret: &str) -> bool {
    bytes.windows(secret.len()).any(|w| w == secret.as_bytes())
}

#[tokio::test]
async fn an_erased_person_is_in_no_answer_no_read_model_and_no_database_file() {
    for db in fresh_databases().await {
        let backend = db.backend;
        let app = TestApp::spawn_on(db.clone(), &[]).await;
        let ada = create_ada(&app).await;
        let (legacy, legacy_at) = create_legacy(&db).await;

        // Sealing is invisible to readers, and the log holds no plaintext.
        let (status, got) = call(app.client.get(format!("{}/{}", app.customers(), ada.id))).await;
        assert_eq!((status, got["user"]["emails"][0]["email"].as_str()), (200, Some(SECRETS[0])), "{backend}: {got}");
        let conn = Db::connect(&db.url).await.expect("db");
        let log_text: Vec<String> =
            sqlx::query_scalar("SELECT CAST(data AS TEXT) FROM events WHERE stream NOT LIKE 'user-0123%'")
                .fetch_all(&conn.pool)
                .await
                .expect("events");
        shows_none("the log", &log_text.join("\n"), SECRETS);
        let r = app
            .client
            .get(format!("{}/{legacy}", app.customers()))
            .header("x-min-position", legacy_at.to_string())
            .send()
            .await
            .expect("legacy");
        assert_eq!(r.status(), 200, "{backend}: the legacy user is read like any other");
        // Changing it seals the new value under a key made for it now.
        let r = app.put_customers(&format!("/{legacy}"), json!({"first_name": "Legacynew"})).await;
        assert_eq!(r.status(), 200, "{backend}: {}", r.text().await.unwrap_or_default());
        let (status, got) = call(app.client.get(format!("{}/{legacy}", app.customers()))).await;
        assert_eq!((status, got["user"]["first_name"].as_str()), (200, Some("Legacynew")), "{backend}: {got}");
        let keys = keys_of(&conn, &format!("user-{legacy}")).await;
        assert_eq!(keys, 1, "{backend}: a key was made for the legacy user");
        let before = app.head().await;

        // Refusals first: nothing is erased by them.
        let (status, body) =
            call(app.client.post(format!("{}/{}/erase", app.customers(), ada.id)).json(&json!({}))).await;
        assert_eq!(status, 400, "{backend}: a reason is required: {body}");
        let (status, _) = erase(&app, "ffffffffffffffffffffffff").await;
        assert_eq!(status, 404, "{backend}: unknown user");
        let (_, other_token) = create_key(&db, "2", None).await;
        let foreign = userstream_tests::client_with(&format!("Bearer {other_token}"));
        let r = foreign
            .post(format!("{}/customers/{}/erase", app.fynd("2", APP), ada.id))
            .json(&json!({"reason": "not yours"}))
            .send()
            .await
            .expect("foreign");
        assert_eq!(r.status(), 404, "{backend}: another tenant's user");
        assert_eq!(app.head().await, before, "{backend}: refusals append nothing");

        let (status, body) = erase(&app, &ada.id).await;
        assert_eq!(status, 200, "{backend}: {body}");
        assert_eq!(body["erased"], true);
        let (status, _) = erase(&app, &ada.id).await;
        assert_eq!(status, 200, "{backend}: a second erase is idempotent");
        let (status, body) = erase(&app, &legacy).await;
        assert_eq!(status, 200, "{backend}: {body}");

        if backend == "sqlite" {
            // Right when the erasures are reported done: no file holds them.
            for (file, bytes) in database_files(&db) {
                for secret in SECRETS.iter().chain(LEGACY) {
                    assert!(!holds(&bytes, secret), "{file} holds {secret:?} after the erasure was reported done");
                }
            }
        }
        for (what, text) in answers_after(&app, &ada, before).await {
            shows_none(&format!("{backend}: {what}"), &text, SECRETS);
            shows_none(&format!("{backend}: {what}"), &text, LEGACY);
        }
        let (status, _) = call(app.client.get(format!("{}/{}", app.customers(), ada.id))).await;
        assert_eq!(status, 404, "{backend}: an erased user is not found");
        // Its email, phone and username are free again.
        app.create_user(json!({"email": SECRETS[0], "phone_number": SECRETS[1], "username": SECRETS[4]})).await;
        // The new user holds that email, phone and username: the rest of
        // Ada, and all of the legacy person, must be gone everywhere.
        let gone: Vec<&str> = [SECRETS[2], SECRETS[3], SECRETS[5], SECRETS[6], SECRETS[7]]
            .into_iter()
            .chain(LEGACY.iter().copied())
            .collect();

        // A replay from position 0 never fails and equals the live models.
        settle(&app).await;
        let head = app.head().await;
        let live = Db::connect(&db.url).await.expect("db");
        for (projection, tables) in MODELS {
            replay(&db, &["--projection", projection, "--to", &head.to_string()]);
            let fresh = shadow(&db, projection).await;
            let rebuilt = dumps(&fresh, tables).await;
            assert_eq!(rebuilt, dumps(&live, tables).await, "{backend}: {projection} rebuilt == live");
            shows_none(&format!("{backend}: rebuilt {projection}"), &format!("{rebuilt:?}"), &gone);
            fresh.pool.close().await;
        }

        if backend == "sqlite" {
            // And after the replays and the new user's writes.
            for (file, bytes) in database_files(&db) {
                for secret in &gone {
                    assert!(!holds(&bytes, secret), "{file} holds {secret:?}");
                }
            }
        }
    }
}

#[tokio::test]
async fn subscribers_get_user_erased_and_a_fresh_database_file_keeps_no_erased_bytes() {
    let Some(bin) = nats_server_bin() else { return };
    let mut nats = NatsServer::new();
    nats.start(&bin);
    let env = nats_env(&nats.url());
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let db = userstream_tests::fresh_sqlite();
    let app = TestApp::spawn_on(db.clone(), &pairs).await;
    let ada = create_ada(&app).await;
    let (status, body) = erase(&app, &ada.id).await;
    assert_eq!(status, 200, "{body}");
    let stream = env[1].1.clone();
    let mut erased = None;
    for _ in 0..100 {
        let messages = stream_messages(&nats.url(), &stream).await;
        erased = messages.into_iter().find(|(subject, _, _)| subject.ends_with(".user.erased"));
        if erased.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, _, payload) = erased.expect("user.erased reached NATS");
    assert_eq!(payload["stream"], json!(format!("user-{}", ada.id)), "{payload}");
    shows_none("the user.erased message", &payload.to_string(), SECRETS);

    // Every byte of the person is gone from the files: none was ever
    // re-registered here.
    for (file, bytes) in database_files(&db) {
        for secret in SECRETS {
            assert!(!holds(&bytes, secret), "{file} holds {secret:?} after the erasure was reported done");
        }
    }
}

/// A stop between the `user.erased` append and the key's destruction: the
/// next start finishes the erasure.
#[tokio::test]
async fn an_erasure_cut_short_by_a_stop_is_finished_at_the_next_start() {
    for db in fresh_databases().await {
        let backend = db.backend;
        let mut app = TestApp::spawn_on(db.clone(), &[]).await;
        let ada = create_ada(&app).await;
        let stream = format!("user-{}", ada.id);
        // What the erase endpoint had done when the stop came: the erasure
        // recorded as begun, its event appended, the key not yet destroyed.
        let conn = Db::connect(&db.url).await.expect("db");
        sqlx::query("INSERT INTO erasures_begun (subject, begun_at) VALUES ($1, $2)")
            .bind(&stream)
            .bind("2026-01-01T00:00:00Z")
            .execute(&conn.pool)
            .await
            .expect("begun");
        let version: i64 = sqlx::query_scalar("SELECT MAX(version) FROM events WHERE stream = $1")
            .bind(&stream)
            .fetch_one(&conn.pool)
            .await
            .expect("version");
        let raw = SqlEventLog::open(conn.clone()).await.expect("log");
        raw.append(AppendRequest {
            tenant: Tenant { company_id: COMPANY.into(), application_id: APP.into() },
            actor: "erase endpoint".into(),
            correlation_id: "cut-short".into(),
            causation_id: None,
            streams: vec![StreamAppend {
                stream: stream.clone(),
                expected: ExpectedVersion::Exact(version),
                events: vec![NewEvent {
                    event_id: uuid::Uuid::now_v7(),
                    event_type: "user.erased".into(),
                    schema: 1,
                    occurred_at: OffsetDateTime::now_utc(),
                    data: json!({"reason": "cut short", "at": "2026-01-01T00:00:00Z"}),
                }],
            }],
            reserve: vec![],
            release: vec![],
            idempotency_key: None,
        })
        .await
        .expect("append");
        let keys = keys_of(&conn, &stream).await;
        assert_eq!(keys, 1, "{backend}: the key outlived the erasure event");

        app.crash_and_restart();
        let keys = keys_of(&conn, &stream).await;
        assert_eq!(keys, 0, "{backend}: the start destroyed the key");
        let (status, history) = call(app.client.get(format!("{}/{}/history", app.customers(), ada.id))).await;
        assert_eq!(status, 200, "{backend}: {history}");
        shows_none(&format!("{backend}: history after the restart"), &history.to_string(), SECRETS);
    }
}
