//! Black-box tests of the Fynd customers API: the real binary on a free
//! port, talking HTTP. Commands return positions; queries wait for them.

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use userstream_tests::{alice, fresh_databases, position_of, TestApp, APP, COMPANY};

/// Recursively asserts there is no `null` anywhere (the SDK's strict check rejects them).
fn assert_no_nulls(v: &Value, path: &str) {
    match v {
        Value::Null => panic!("null at {path}"),
        Value::Array(items) => items.iter().enumerate().for_each(|(i, x)| assert_no_nulls(x, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().for_each(|(k, x)| assert_no_nulls(x, &format!("{path}.{k}"))),
        _ => {}
    }
}

async fn get_json(app: &TestApp, url: &str, min_position: i64) -> (StatusCode, Value) {
    let r = app.client.get(url).header("x-min-position", min_position.to_string()).send().await.expect("get");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn search(app: &TestApp, q: &str, min_position: i64) -> Vec<Value> {
    let url = format!("{}/search?q={}", app.customers(), urlencode(q));
    let (status, body) = get_json(app, &url, min_position).await;
    assert_eq!(status, 200, "{body}");
    body["users"].as_array().cloned().unwrap_or_default()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The main flow on every backend: create, read, list, search, update, block, archive, restore.
#[tokio::test]
async fn customers_lifecycle_end_to_end_on_every_backend() {
    for db in fresh_databases().await {
        let backend = db.backend;
        let app = TestApp::spawn_on(db, &[]).await;
        let (user, p1) = app.create_user(alice()).await;
        assert_no_nulls(&user, "user");
        let id = user["_id"].as_str().expect("_id").to_string();
        assert_eq!(id.len(), 24, "{backend}");
        assert_eq!(user["user_id"], json!(id));
        assert_eq!(
            user["emails"],
            json!([{"email": "alice@example.com", "primary": true, "verified": true, "active": true}])
        );
        assert_eq!(user["phone_numbers"][0]["country_code"], json!(91), "{backend}: country_code is a number");
        assert_eq!(user["phone_numbers"][0]["phone"], json!("9876543210"));
        assert_eq!((user["first_name"].as_str(), user["gender"].as_str()), (Some("Alice"), Some("female")));

        let (status, got) = get_json(&app, &format!("{}/{id}", app.customers()), p1).await;
        assert_eq!(status, 200, "{backend}: {got}");
        assert_no_nulls(&got, "get");
        assert_eq!(got["user"]["meta"], json!({"tier": "gold"}));

        for q in [
            "alice@example.com",
            "ALICE@example.com",
            "9876543210",
            "+919876543210",
            "alice",
            "Alice",
            id.as_str(),
            "ext-1",
        ] {
            let found = search(&app, q, p1).await;
            assert_eq!(found.len(), 1, "{backend}: search {q}");
            assert_eq!(found[0]["_id"], json!(id));
        }
        assert!(search(&app, "nobody@example.com", p1).await.is_empty());

        let (_, bob_p) = app.create_user(json!({"phone_number": "+1 4155550100", "username": "bob"})).await;
        let url = format!("{}/search?query=alice%40example.com&query=bob", app.customers());
        let (_, both) = get_json(&app, &url, bob_p).await;
        assert_eq!(both["users"].as_array().map(Vec::len), Some(2), "{backend}: repeated query keys: {both}");
        let url = format!("{}/search?query[]=alice%40example.com", app.customers());
        assert_eq!(
            get_json(&app, &url, bob_p).await.1["users"].as_array().map(Vec::len),
            Some(1),
            "{backend}: query[]"
        );

        let (status, list) = get_json(&app, &format!("{}/list?page_size=1&page_no=1", app.customers()), bob_p).await;
        assert_eq!(status, 200);
        assert_no_nulls(&list, "list");
        assert_eq!(list["page"], json!({"type": "number", "current": 1, "size": 1, "item_total": 2, "has_next": true}));
        assert_eq!(list["items"][0]["username"], json!("bob"), "{backend}: newest first");
        let (_, list2) = get_json(&app, &format!("{}/list?page_size=1&page_no=2", app.customers()), bob_p).await;
        assert_eq!(list2["items"][0]["username"], json!("alice"));
        assert_eq!(list2["page"]["has_next"], json!(false));

        let (_, by_q) = get_json(&app, &format!("{}/list?q=alice%40example.com", app.customers()), bob_p).await;
        assert_eq!(by_q["page"]["item_total"], json!(1), "{backend}: {by_q}");
        let filter = r#"{"$or":[{"emails.email":"alice@example.com"},{"phoneNumbers.phone":"4155550100"}]}"#;
        let (_, by_json) = get_json(&app, &format!("{}/list?q={}", app.customers(), urlencode(filter)), bob_p).await;
        assert_eq!(by_json["page"]["item_total"], json!(1), "{backend}: {by_json}");
        let filter =
            r#"{"$and":[{"first_name":{"$regex":"^ali","$options":"i"}},{"gender":{"$in":["female","male"]}}]}"#;
        let (_, by_regex) = get_json(&app, &format!("{}/list?q={}", app.customers(), urlencode(filter)), bob_p).await;
        assert_eq!(by_regex["items"][0]["username"], json!("alice"), "{backend}: {by_regex}");

        // Update: lists replace, the new email becomes searchable, the old one free.
        let r = app
            .client
            .put(format!("{}/{id}", app.customers()))
            .json(&json!({"first_name": "Alicia", "emails": [{"email": "new@example.com", "primary": true, "verified": true, "active": true}], "phone_numbers": [{"phone": "9876543299", "country_code": "91"}]}))
            .send()
            .await
            .expect("update");
        assert_eq!(r.status(), 200, "{backend}");
        let p2 = position_of(&r);
        let updated: Value = r.json().await.expect("json");
        assert_eq!(updated["user"]["first_name"], json!("Alicia"));
        assert_eq!(updated["user"]["phone_numbers"][0]["primary"], json!(true), "first entry becomes primary");
        assert_eq!(search(&app, "new@example.com", p2).await.len(), 1, "{backend}");
        assert!(search(&app, "alice@example.com", p2).await.is_empty(), "{backend}");
        assert!(search(&app, "9876543210", p2).await.is_empty(), "{backend}");
        app.create_user(json!({"phone_number": "9876543210", "username": "carol", "email": "alice@example.com"})).await;

        // Block and unblock.
        let r = app.put_customers("/activation", json!({"user_id": [id], "status": false, "reason": "fraud"})).await;
        assert_eq!(r.status(), 200);
        let p3 = position_of(&r);
        assert_eq!(r.json::<Value>().await.expect("json"), json!({"success": true}));
        let (_, got) = get_json(&app, &format!("{}/{id}", app.customers()), p3).await;
        assert_eq!(
            (got["user"]["active"].clone(), got["user"]["status"].clone()),
            (json!(false), json!("blocked")),
            "{backend}"
        );

        // Archive: gone from lists and search; undelete brings it back.
        let r = app.put_customers("/archive", json!({"user_id": id})).await;
        assert_eq!(r.status(), 200);
        let p4 = position_of(&r);
        assert_eq!(get_json(&app, &format!("{}/{id}", app.customers()), p4).await.0, 404, "{backend}");
        assert!(search(&app, "new@example.com", p4).await.is_empty());
        let (_, list) = get_json(&app, &format!("{}/list", app.customers()), p4).await;
        assert_eq!(list["page"]["item_total"], json!(2), "{backend}: bob and carol");
        let r = app.put_customers("/undelete", json!({"user_id": id, "reason": "asked", "reason_id": "1"})).await;
        assert_eq!(r.status(), 200, "{backend}");
        let p5 = position_of(&r);
        assert_eq!(search(&app, "new@example.com", p5).await.len(), 1, "{backend}");
        let (_, got) = get_json(&app, &format!("{}/{id}", app.customers()), p5).await;
        assert_eq!(got["user"]["status"], json!("blocked"), "{backend}: restore keeps the block");
    }
}

#[tokio::test]
async fn duplicates_are_refused_and_archiving_frees_the_values() {
    let app = TestApp::spawn().await;
    let (user, _) = app.create_user(alice()).await;
    let head = app.head().await;
    for (body, what) in [
        (json!({"phone_number": "9000000001", "username": "other1", "email": "ALICE@example.com"}), "email"),
        (json!({"phone_number": "+91 98765-43210", "username": "other2"}), "phone"),
        (json!({"phone_number": "9000000003", "username": "ALICE"}), "username"),
    ] {
        let r = app.client.post(app.customers()).json(&body).send().await.expect("post");
        assert_eq!(r.status(), 409, "duplicate {what}");
        let err: Value = r.json().await.expect("json");
        assert!(err["message"].as_str().is_some_and(|m| m.contains(what)), "{err}");
        assert_eq!(err["code"], json!("duplicate"));
    }
    assert_eq!(app.head().await, head, "refused commands append nothing");

    let id = user["_id"].as_str().expect("id");
    let r = app.put_customers("/archive", json!({"user_id": id})).await;
    assert_eq!(r.status(), 200);
    let (newcomer, _) =
        app.create_user(json!({"phone_number": "9876543210", "username": "alice", "email": "alice@example.com"})).await;
    assert_ne!(newcomer["_id"], user["_id"]);

    // The old user cannot come back while its values are taken.
    let head = app.head().await;
    let r = app.put_customers("/undelete", json!({"user_id": id})).await;
    assert_eq!(r.status(), 409, "{}", r.text().await.unwrap_or_default());
    assert_eq!(app.head().await, head);
}

#[tokio::test]
async fn restore_after_the_window_is_refused() {
    let app = TestApp::spawn().await;
    app.set_config(json!({"delete_account_day": 0})).await;
    let (user, _) = app.create_user(alice()).await;
    let id = user["_id"].as_str().expect("id");
    app.put_customers("/archive", json!({"user_id": id})).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let r = app.put_customers("/undelete", json!({"user_id": id})).await;
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.expect("json");
    assert!(err["message"].as_str().is_some_and(|m| m.contains("restore window")), "{err}");
}

#[tokio::test]
async fn blocking_with_an_unknown_id_names_it_and_blocks_nobody() {
    let app = TestApp::spawn().await;
    let (user, p) = app.create_user(alice()).await;
    let id = user["_id"].as_str().expect("id");
    let head = app.head().await;
    for unknown in ["aaaaaaaaaaaaaaaaaaaaaaaa", "not-an-id"] {
        let r =
            app.put_customers("/activation", json!({"user_id": [id, unknown], "status": false, "reason": "x"})).await;
        assert_eq!(r.status(), 404);
        let err: Value = r.json().await.expect("json");
        assert!(err["message"].as_str().is_some_and(|m| m.contains(unknown)), "{err}");
    }
    assert_eq!(app.head().await, head, "nothing blocked");
    let (_, got) = get_json(&app, &format!("{}/{id}", app.customers()), p).await;
    assert_eq!(got["user"]["active"], json!(true));
}

#[tokio::test]
async fn bad_input_gets_a_clear_json_error_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let (user, _) = app.create_user(alice()).await;
    let id = user["_id"].as_str().expect("id").to_string();
    let head = app.head().await;
    let url = app.customers();
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            app.client.post(&url).header("content-type", "application/json").body("{\"phone_number\": "),
            422,
            "not valid JSON",
        ),
        (app.client.post(&url).json(&json!({"username": "x1x"})), 400, "phone_number"),
        (app.client.post(&url).json(&json!({"phone_number": "9000000000"})), 400, "username"),
        (
            app.client
                .post(&url)
                .json(&json!({"phone_number": "9000000000", "username": "zed", "email": "not-an-email"})),
            400,
            "email",
        ),
        (app.client.post(&url).json(&json!({"phone_number": "12ab", "username": "zed"})), 400, "phone_number"),
        (
            app.client.post(&url).json(&json!({"phone_number": "9000000000", "username": "zed", "gender": "robot"})),
            400,
            "gender",
        ),
        (
            app.client.post(&url).json(&json!({"phone_number": "9000000000", "username": "zed", "meta": [1]})),
            400,
            "meta",
        ),
        (app.client.put(format!("{url}/{id}")).json(&json!({"emails": [{"email": "bad"}]})), 400, "emails.email"),
        (
            app.client.put(format!("{url}/{id}")).json(&json!({"phone_numbers": [], "emails": []})),
            400,
            "email or a phone",
        ),
        (
            app.client.put(format!("{url}/{id}")).header("if-match", "\"7\"").json(&json!({"first_name": "X"})),
            409,
            "version",
        ),
        (
            app.client.put(format!("{url}/{id}")).header("if-match", "seven").json(&json!({"first_name": "X"})),
            400,
            "If-Match",
        ),
        (app.client.put(format!("{url}/bbbbbbbbbbbbbbbbbbbbbbbb")).json(&json!({"first_name": "X"})), 404, "not found"),
        (app.client.put(format!("{url}/archive")).json(&json!({})), 400, "user_id"),
        (app.client.put(format!("{url}/activation")).json(&json!({"user_id": [], "status": false})), 400, "user_id"),
        (app.client.get(format!("{url}/list?page_size=0")), 400, "page_size"),
        (app.client.get(format!("{url}/list?page_size=100000")), 400, "page_size"),
        (app.client.get(format!("{url}/list?page_no=abc")), 400, "page_no"),
        (app.client.get(format!("{url}/list?q={}", urlencode(r#"{"first_name":{"$where":"1"}}"#))), 400, "$where"),
        (app.client.get(format!("{url}/list?q={}", urlencode(r#"{"first_name":{"$regex":"a.*"}}"#))), 400, "regex"),
        (app.client.get(format!("{url}/search")), 400, "q"),
        (app.client.get(format!("{url}/list?min_position=abc")), 400, "min_position"),
        (app.client.get(format!("{}/customers/list", app.fynd("1", "bad app!"))), 400, "application_id"),
    ];
    for (request, status, needle) in cases {
        let r = request.send().await.expect("send");
        let got = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(got, status, "expected {status} mentioning {needle:?}, got {got}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{needle:?} not in {body}");
        assert!(body["code"].is_string(), "{body}");
    }
    // Over the body limit: the server answers 413 from the declared length
    // when no body follows (a raw socket, so no client races the answer).
    let path = url.trim_start_matches(&app.base).to_string();
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let head_only = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{{",
        app.token,
        2 * 1024 * 1024
    );
    socket.write_all(head_only.as_bytes()).await.expect("write");
    let mut answer = String::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), socket.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("too large"), "{answer}");

    // Without a declared length (chunked), the limit cuts the body as it streams.
    let mut socket = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let chunked_head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        app.token
    );
    socket.write_all(chunked_head.as_bytes()).await.expect("write");
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "a".repeat(64 * 1024));
    for _ in 0..32 {
        if socket.write_all(chunk.as_bytes()).await.is_err() {
            break; // the server answered and closed: read what it said
        }
    }
    let mut answer = String::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), socket.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    assert_eq!(app.head().await, head, "no bad request appended anything");

    // The right version is accepted, and the response carries the next one.
    let r = app
        .client
        .put(format!("{url}/{id}"))
        .header("if-match", "\"1\"")
        .json(&json!({"first_name": "X"}))
        .send()
        .await
        .expect("update");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("etag").and_then(|v| v.to_str().ok()), Some("\"2\""));
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retried_create_harmless() {
    let app = TestApp::spawn().await;
    let send = || app.client.post(app.customers()).header("idempotency-key", "create-alice-1").json(&alice()).send();
    let first: Value = send().await.expect("first").json().await.expect("json");
    let head = app.head().await;
    let r = send().await.expect("second");
    assert_eq!(r.status(), 200);
    let second: Value = r.json().await.expect("json");
    assert_eq!(first["user"]["_id"], second["user"]["_id"]);
    assert_eq!(app.head().await, head, "the retry appended nothing");
}

#[tokio::test]
async fn another_tenant_sees_nothing() {
    let app = TestApp::spawn().await;
    let (user, p) = app.create_user(alice()).await;
    let id = user["_id"].as_str().expect("id");
    let other = app.fynd(COMPANY, "000000000000000000000002");
    let (status, _) = get_json(&app, &format!("{other}/customers/{id}"), p).await;
    assert_eq!(status, 404);
    let (_, list) = get_json(&app, &format!("{other}/customers/list"), p).await;
    assert_eq!(list["page"]["item_total"], json!(0));
    let (_, found) = get_json(&app, &format!("{other}/customers/search?q=alice%40example.com"), p).await;
    assert_eq!(found["users"], json!([]));
    let r = app
        .client
        .put(format!("{other}/customers/{id}"))
        .json(&json!({"first_name": "Mallory"}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 404);
    let r =
        app.client.put(format!("{other}/customers/archive")).json(&json!({"user_id": id})).send().await.expect("put");
    assert_eq!(r.status(), 404);
    // The same email is free in another application.
    let r = app.client.post(format!("{other}/customers")).json(&alice()).send().await.expect("post");
    assert_eq!(r.status(), 200);
    let other_company = app.fynd("2", APP);
    // A credential of company 1 on company 2's path: forbidden before any lookup.
    assert_eq!(get_json(&app, &format!("{other_company}/customers/{id}"), p).await.0, 403);
}

/// A position no write answered (past the log's head) is the client's
/// mistake: a 400 at once, not a wait and a 503. (A read model that is
/// really behind answers 503: `read_your_writes.rs`.)
#[tokio::test]
async fn a_min_position_past_the_head_is_a_400() {
    let app = TestApp::spawn().await;
    let (_, p) = app.create_user(alice()).await;
    let (status, list) = get_json(&app, &format!("{}/list", app.customers()), p).await;
    assert_eq!((status, list["page"]["item_total"].clone()), (StatusCode::OK, json!(1)));
    let past = (p + 1000).to_string();
    for r in [
        app.client.get(format!("{}/list?min_position={past}", app.customers())),
        app.client.get(format!("{}/list", app.customers())).header("x-min-position", &past),
    ] {
        let r = r.send().await.expect("get");
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.expect("json");
        assert!(body["message"].as_str().is_some_and(|m| m.contains("past the log's last position")), "{body}");
    }
}

/// An `Idempotency-Key` is kept per kind of change: reused for another
/// kind, it is a new request (never the first change's answer passed off as
/// this one's); reused for the same kind on another target, it is a 422
/// that changes nothing; an erasure under such a key destroys no key.
#[tokio::test]
async fn an_idempotency_key_reused_for_another_change_never_answers_the_first_one() {
    let app = TestApp::spawn().await;
    let (ada, _) = app.create_user(alice()).await;
    let ada = ada["_id"].as_str().expect("id").to_string();
    let (bob, _) = app.create_user(userstream_tests::user_body(7)).await;
    let bob = bob["_id"].as_str().expect("id").to_string();
    let update = |id: &str, name: &str| {
        app.client
            .put(format!("{}/{id}", app.customers()))
            .header("idempotency-key", "k-1")
            .json(&json!({"first_name": name}))
    };
    assert_eq!(update(&ada, "Ada").send().await.expect("update").status(), 200);
    let head = app.head().await;
    // The same kind of change to another target: 422, nothing appended.
    let r = update(&bob, "Bobby").send().await.expect("update");
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "idempotency_key_reused", "{body}");
    let erase = |id: &str| {
        app.client
            .post(format!("{}/{id}/erase", app.customers()))
            .header("idempotency-key", "e-1")
            .json(&json!({"reason": "request"}))
    };
    assert_eq!(erase(&bob).send().await.expect("erase").status(), 200);
    let head = head.max(app.head().await);
    let r = erase(&ada).send().await.expect("erase");
    assert_eq!(r.status(), 422, "Ada's erasure under Bob's key");
    assert_eq!(app.head().await, head, "nothing was appended");
    let (status, user) = get_json(&app, &format!("{}/{ada}", app.customers()), head).await;
    assert_eq!((status, user["user"]["first_name"].clone()), (StatusCode::OK, json!("Ada")), "Ada is intact: {user}");
    // Another kind of change under a used key is a change of its own.
    let r =
        app.client.post(app.customers()).header("idempotency-key", "k-1").json(&userstream_tests::user_body(8)).send();
    let created: Value = r.await.expect("create").json().await.expect("json");
    assert!(created["user"]["_id"].is_string() && created["user"]["_id"] != json!(ada), "{created}");
    let group = app.client.post(format!("{}/user_group", app.fynd(COMPANY, APP))).header("idempotency-key", "k-1");
    let r = group.json(&json!({"name": "vip", "type": "manual"})).send().await.expect("group");
    assert_eq!(r.status(), 201);
    // And the same request again is still a harmless retry.
    let head = app.head().await;
    assert_eq!(update(&ada, "Ada").send().await.expect("retry").status(), 200);
    assert_eq!(app.head().await, head);
}

/// A create retried with its `Idempotency-Key` answers what its first try
/// created, on every surface: the same id, nothing appended again.
#[tokio::test]
async fn a_retried_create_answers_what_its_first_try_created() {
    let app = TestApp::spawn().await;
    let fynd = app.fynd(COMPANY, APP);
    let creates = [
        (
            app.passage.post(format!("{}/users", app.passage_app(APP))),
            json!({"email": "retry@example.com"}),
            "/user/id",
        ),
        (app.client.post(format!("{fynd}/user_group")), json!({"name": "vip", "type": "manual"}), "/_id"),
        (
            app.client.post(format!("{fynd}/user_attribute/definition")),
            json!({"name": "Tier", "slug": "tier", "type": "string"}),
            "/_id",
        ),
    ];
    for (n, (request, body, id_at)) in creates.into_iter().enumerate() {
        let key = format!("create-{n}");
        let retry = request.try_clone().expect("clonable");
        let r = request.header("idempotency-key", &key).json(&body).send().await.expect("first");
        assert_eq!(r.status(), 201);
        let first: Value = r.json().await.expect("json");
        let head = app.head().await;
        let r = retry.header("idempotency-key", &key).json(&body).send().await.expect("retry");
        assert_eq!(r.status(), 201, "{body}");
        let again: Value = r.json().await.expect("json");
        assert!(first.pointer(id_at).is_some_and(Value::is_string), "{first}");
        assert_eq!(first.pointer(id_at), again.pointer(id_at), "{body}: the retry answers the first create");
        assert_eq!(app.head().await, head, "{body}: the retry appended nothing");
    }
}

/// Bodies are JSON objects; a parameter that takes one value takes one.
#[tokio::test]
async fn an_array_body_and_a_repeated_parameter_are_refused() {
    let app = TestApp::spawn().await;
    let (ada, p) = app.create_user(alice()).await;
    let ada = ada["_id"].as_str().expect("id").to_string();
    let r = app.client.put(format!("{}/{ada}", app.customers())).json(&json!(["Ada", null])).send().await.expect("put");
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["message"], "the body must be a JSON object");
    let (status, body) = get_json(&app, &format!("{}/list?page_no=1&page_no=2", app.customers()), p).await;
    assert_eq!((status, body["message"].clone()), (StatusCode::BAD_REQUEST, json!("page_no may be given once")));
    let (status, _) =
        get_json(&app, &format!("{}/list?consistency=latest&consistency=eventual", app.customers()), p).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // List parameters repeat as before.
    let (status, found) = get_json(&app, &format!("{}/search?query={ada}&query=nobody", app.customers()), p).await;
    assert_eq!((status, found["users"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)));
}

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::spawn().await;
    let r = app.client.get(format!("{}/healthz", app.base)).send().await.expect("healthz");
    assert_eq!(r.status(), 200);
    let r = app.client.get(format!("{}/readyz", app.base)).send().await.expect("readyz");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["ready"], json!(true));
}

/// Nothing acknowledged is lost: kill -9 while clients are writing, restart,
/// and every user that got a 2xx is there; the read model catches up with
/// exactly the log (no skip, no double count).
#[tokio::test]
async fn acknowledged_users_survive_kill_9_and_projections_resume() {
    for db in fresh_databases().await {
        let backend = db.backend;
        let mut app = TestApp::spawn_on(db, &[]).await;
        let base = app.customers();
        let client = app.client.clone();
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let (client, base) = (client.clone(), base.clone());
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for i in 0..10_000 {
                        let body = json!({"phone_number": format!("9{w}{i:08}"), "username": format!("w{w}u{i}")});
                        match client.post(&base).json(&body).send().await {
                            Ok(r) if r.status() == 200 => {
                                let v: Value = match r.json().await {
                                    Ok(v) => v,
                                    Err(_) => break,
                                };
                                acked.push(v["user"]["_id"].as_str().unwrap_or_default().to_string());
                            }
                            _ => break,
                        }
                    }
                    acked
                })
            })
            .collect();
        // Let the writers get going, then crash the server under them. Each
        // of the 8 writers has at most one command in flight, whose commit
        // the kill may cut off from its answer: 308 commits mean at least
        // 300 answers.
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            if app.head().await >= 308 {
                break;
            }
        }
        app.crash_and_restart();
        let mut acked = Vec::new();
        for w in writers {
            acked.extend(w.await.expect("join"));
        }
        assert!(acked.len() >= 300, "{backend}: only {} acknowledged", acked.len());
        let head = app.head().await;
        assert!(head >= acked.len() as i64, "{backend}: head {head} < {} acknowledged", acked.len());
        let (status, list) = get_json(&app, &format!("{}/list?page_size=1", app.customers()), head).await;
        assert_eq!(status, 200, "{backend}");
        assert_eq!(list["page"]["item_total"], json!(head), "{backend}: one user per create event in the log");
        for id in acked.iter().step_by(7) {
            let (status, _) = get_json(&app, &format!("{}/{id}", app.customers()), head).await;
            assert_eq!(status, 200, "{backend}: acknowledged user {id} lost");
        }
        let found = search(&app, acked.last().expect("one"), head).await;
        assert_eq!(found.len(), 1, "{backend}");
    }
}
