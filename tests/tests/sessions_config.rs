//! Platform config, customer sessions and the Passage list, black-box on
//! every backend.

use serde_json::{json, Value};
use userstream_tests::{alice, fresh_databases, json_of, InProcess, TestApp, APP, COMPANY};

#[tokio::test]
async fn platform_config_has_defaults_takes_updates_as_events_and_refuses_bad_values() {
    for db in fresh_databases().await {
        let app = TestApp::spawn_on(db, &[]).await;
        let url = format!("{}/platform/config", app.fynd(COMPANY, APP));
        let (status, defaults) = json_of(app.client.get(&url).send().await.expect("get")).await;
        assert_eq!(status, 200);
        assert_eq!(defaults["delete_account_day"], 30);
        assert_eq!(defaults["session_config"], json!({"duration": 30, "type": "Days", "is_rolling": false}));
        assert_eq!(defaults["register_required_fields"]["mobile"]["is_required"], true);
        assert!(defaults.get("created_at").is_none(), "never updated: {defaults}");

        let head = app.head().await;
        let bad = [
            (json!({"session_config": {"type": "Weeks"}}), "session_config.type"),
            (json!({"login": {"password": "yes"}}), "login.password"),
            (json!({"delete_account_day": -1}), "delete_account_day"),
            (
                json!({"register_required_fields": {"email": {"level": "medium"}}}),
                "register_required_fields.email.level",
            ),
            (json!({"session_config": {"duration": 0}}), "session_config.duration"),
            (json!({"session_config": {"duration": 400, "type": "Days"}}), "session_config.duration"),
            (json!([1, 2]), "must be a JSON object"),
        ];
        for (body, field) in bad {
            let (status, err) = json_of(app.client.post(&url).json(&body).send().await.expect("post")).await;
            assert_eq!(status, 400, "{body}: {err}");
            assert!(err["message"].as_str().is_some_and(|m| m.contains(field)), "{field} not named: {err}");
        }
        assert_eq!(app.head().await, head, "refused updates append nothing");

        let r = app
            .client
            .post(&url)
            .json(&json!({
                "register_required_fields": {"email": {"is_required": true, "level": "hard"}},
                "social_tokens": {"google": {"app_id": "g", "app_secret": "very-secret-value"}},
                "_id": "ignored", "__v": 99
            }))
            .send()
            .await
            .expect("post");
        let (status, saved) = json_of(r).await;
        assert_eq!(status, 200, "{saved}");
        assert_eq!(saved["social_tokens"]["google"]["app_secret"], "********");
        assert_eq!(saved["__v"], 1);
        assert!(saved["updated_at"].is_string());
        // Sending the mask back keeps the secret; the same config again appends nothing.
        let head = app.head().await;
        let (status, _) = json_of(app.client.post(&url).json(&saved).send().await.expect("post")).await;
        assert_eq!(status, 200);
        assert_eq!(app.head().await, head, "an unchanged config appends nothing");

        // Enforced by CreateUser: email now required.
        let (status, err) = json_of(
            app.client
                .post(app.customers())
                .json(&json!({"phone_number": "9876543210", "username": "nomail"}))
                .send()
                .await
                .expect("create"),
        )
        .await;
        assert_eq!(status, 400);
        assert!(err["message"].as_str().is_some_and(|m| m.contains("email")), "{err}");

        // With mobile required nowhere, a user may register with an email only.
        app.set_config(json!({
            "required_fields": {"mobile": {"is_required": false}},
            "register_required_fields": {"mobile": {"is_required": false}}
        }))
        .await;
        let r =
            app.client.post(app.customers()).json(&json!({"username": "mailonly", "email": "m@example.com"})).send();
        let (status, body) = json_of(r.await.expect("create")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["user"]["phone_numbers"], json!([]));

        // The secret is in no table in clear, the event log included.
        let conn = userstream_eventlog::Db::connect(&app.db.url).await.expect("db");
        let data: Vec<String> =
            sqlx::query_scalar("SELECT CAST(data AS TEXT) FROM events").fetch_all(&conn.pool).await.expect("events");
        assert!(data.iter().any(|d| d.contains("sha256:")), "{data:?}");
        assert!(data.iter().all(|d| !d.contains("very-secret-value")), "{data:?}");
    }
}

#[tokio::test]
async fn sessions_start_list_and_are_revoked_by_block_and_archive() {
    for db in fresh_databases().await {
        let app = TestApp::spawn_on(db, &[]).await;
        app.set_config(json!({"session_config": {"duration": 1, "type": "Hours", "is_rolling": true}})).await;
        let (user, _) = app.create_user(alice()).await;
        let id = user["_id"].as_str().expect("id").to_string();
        let session_url = format!("{}/session", app.customers());
        let sessions_url = format!("{}/sessions?id={id}", app.customers());
        let start = |body: Value| app.client.post(&session_url).header("user-agent", "tests/1.0").json(&body).send();

        let (status, created) =
            json_of(start(json!({"user_id": id, "domain": "shop.example"})).await.expect("s")).await;
        assert_eq!(status, 200, "{created}");
        assert_eq!(created["max_age"], 3600, "session_config gives the default lifetime");
        let cookie = created["cookie"]["f.session"].as_str().expect("cookie").to_string();
        let (session_id, _) = cookie.split_once('.').expect("signed cookie");
        assert_eq!(session_id.len(), 32, "128 bits, hex");

        let (_, listed) = json_of(app.client.get(&sessions_url).send().await.expect("list")).await;
        let items = listed["items"].as_array().expect("items");
        assert_eq!(items.len(), 1, "{listed}");
        assert!(items.iter().all(|s| s["expire_in"].is_string() && s["user_agent"] == "tests/1.0"), "{listed}");
        // A forged cookie is refused without a lookup.
        let forged = format!("{session_id}.AAAA");
        let r = app.client.get(format!("{}/session?id={id}&cookie={forged}", app.customers())).send().await;
        assert_eq!(r.expect("use").status(), 404);
        let _ = cookie;

        // Bad input: nothing appended.
        let (other, _) =
            app.create_user(json!({"phone_number": "9876543211", "email": "bob@example.com", "username": "bob"})).await;
        let other_id = other["_id"].as_str().expect("id");
        let head = app.head().await;
        for (body, status) in [
            (json!({"user_id": id, "max_age": -5}), 400),
            (json!({"user_id": id, "max_age": 10 * 366 * 86400}), 400),
            (json!({"user_id": "aaaaaaaaaaaaaaaaaaaaaaaa"}), 404),
            (json!({"domain": "x"}), 400),
        ] {
            let (got, err) = json_of(start(body.clone()).await.expect("s")).await;
            assert_eq!(got, status, "{body}: {err}");
            assert!(err["message"].is_string(), "{err}");
        }
        // Another user's session id: 404 for this user.
        let r = app
            .client
            .delete(format!("{}/session?id={other_id}&session_id={session_id}&reason=x", app.customers()))
            .send()
            .await
            .expect("delete");
        assert_eq!(r.status(), 404);
        assert_eq!(app.head().await, head);

        // Blocking revokes every session as an event; a blocked user gets none.
        let r = app.put_customers("/activation", json!({"user_id": [id], "status": false, "reason": "fraud"})).await;
        assert_eq!(r.status(), 200);
        let (_, listed) = json_of(app.client.get(&sessions_url).send().await.expect("list")).await;
        assert_eq!(listed["items"], json!([]));
        let (status, err) = json_of(start(json!({"user_id": id})).await.expect("s")).await;
        assert_eq!(status, 403);
        assert!(err["message"].as_str().is_some_and(|m| m.contains("blocked")), "{err}");

        // Archiving revokes too; an archived user gets 404.
        json_of(start(json!({"user_id": other_id})).await.expect("s")).await;
        assert_eq!(app.put_customers("/archive", json!({"user_id": other_id})).await.status(), 200);
        let (status, _) = json_of(start(json!({"user_id": other_id})).await.expect("s")).await;
        assert_eq!(status, 404);
        let conn = userstream_eventlog::Db::connect(&app.db.url).await.expect("db");
        let revoked: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(data AS TEXT) FROM events WHERE event_type = 'user.sessions_revoked' ORDER BY position",
        )
        .fetch_all(&conn.pool)
        .await
        .expect("events");
        assert_eq!(revoked.len(), 2, "{revoked:?}");
        assert!(revoked[0].contains("blocked") && revoked[1].contains("archived"), "{revoked:?}");
    }
}

#[tokio::test]
async fn the_passage_list_filters_orders_and_pages_on_every_backend() {
    for db in fresh_databases().await {
        let backend = db.backend;
        let app = TestApp::spawn_on(db, &[]).await;
        let users = format!("{}/users", app.passage_app(APP));
        let mut ids = Vec::new();
        for (i, email) in ["a_1@x.example", "b%2@x.example", "c3@y.example"].iter().enumerate() {
            let r = app.passage.post(&users).json(&json!({"email": email, "phone": format!("+1201555010{i}")})).send();
            let (status, body) = json_of(r.await.expect("create")).await;
            assert_eq!(status, 201, "{backend}: {body}");
            ids.push(body["user"]["id"].as_str().expect("id").to_string());
        }
        let list = |q: &str| app.passage.get(format!("{users}?{q}")).send();
        let total = |v: &Value| v["total_users"].as_i64().expect("total");
        let (_, v) = json_of(list("identifier=like%3A_").await.expect("list")).await;
        assert_eq!(total(&v), 1, "{backend}: `_` is a literal in like: {v}");
        let (_, v) = json_of(list("identifier=like%3A%25").await.expect("list")).await;
        assert_eq!(total(&v), 1, "{backend}: `%` is a literal in like: {v}");
        let (_, v) = json_of(list("identifier=not_like%3Ax.example").await.expect("list")).await;
        assert_eq!(v["users"][0]["id"], json!(ids[2]), "{backend}: {v}");
        let (_, v) = json_of(list("identifier=%2B12015550101").await.expect("list")).await;
        assert_eq!(v["users"][0]["id"], json!(ids[1]), "{backend}: {v}");
        let (_, v) = json_of(list("limit=1&page=2&order_by=created_at:ASC").await.expect("list")).await;
        assert_eq!(v["users"][0]["id"], json!(ids[1]), "{backend}: {v}");
        for link in ["first", "last", "next", "previous", "self"] {
            assert!(v["_links"][link]["href"].is_string(), "{backend}: {link} in {v}");
        }
        assert!(v["_links"]["next"]["href"].as_str().is_some_and(|h| h.contains("page=3")), "{v}");
        let (_, v) = json_of(list("order_by=email:DESC,created_at:ASC").await.expect("list")).await;
        assert_eq!(v["users"][0]["id"], json!(ids[2]), "{backend}: {v}");
        let (_, v) =
            json_of(list("last_login_at=lt:2000-01-01T00:00:00Z&email_verified=false").await.expect("l")).await;
        assert_eq!(total(&v), 3, "{backend}: new users never logged in, emails unverified at creation: {v}");
        let (_, v) = json_of(list("created_before=1").await.expect("list")).await;
        assert_eq!(total(&v), 0, "{backend}: {v}");

        for q in [
            "limit=501",
            "limit=0",
            "order_by=identifier",
            "order_by=nope:ASC",
            "created_at=gt:not-a-date",
            "id=zz:1",
            "status=sleeping",
            "login_count=like:1",
        ] {
            let (status, err) = json_of(list(q).await.expect("list")).await;
            assert_eq!((status, err["code"].as_str()), (400, Some("invalid_request")), "{backend}: {q}: {err}");
            assert!(err["error"].is_string());
        }
        let (status, err) = json_of(app.passage.post(&users).json(&json!({})).send().await.expect("create")).await;
        assert_eq!((status, err["code"].as_str()), (400, Some("invalid_request")), "{err}");
        let (status, err) =
            json_of(app.passage.get(format!("{users}/ffffffffffffffffffffffff")).send().await.expect("get")).await;
        assert_eq!((status, err["code"].as_str()), (404, Some("user_not_found")), "{err}");
    }
}

/// Rolling and expiry, in process on a clock the test moves (no sleeping):
/// a rolling session used after half its life is extended; one left alone
/// expires and leaves the list by itself.
#[tokio::test]
async fn sessions_roll_when_used_late_and_expire_when_left_alone() {
    for db in fresh_databases().await {
        let backend = db.backend;
        let running = InProcess::start(&db).await;
        let app = &running;
        let hour = json!({"session_config": {"duration": 1, "type": "Hours", "is_rolling": true}});
        assert_eq!(app.fynd("POST", "/platform/config", &[], Some(&hour)).await.0, 200, "{backend}");
        let (status, user) = app.fynd("POST", "/customers", &[], Some(&alice())).await;
        assert_eq!(status, 200, "{backend}: {user}");
        let id = user["user"]["_id"].as_str().expect("id").to_string();
        let start = |body: Value| async move { app.fynd("POST", "/customers/session", &[], Some(&body)).await };
        let sessions = |id: String| async move {
            let (status, listed) = app.fynd("GET", &format!("/customers/sessions?id={id}"), &[], None).await;
            assert_eq!(status, 200, "{listed}");
            listed["items"].as_array().expect("items").clone()
        };

        let (status, rolling) = start(json!({"user_id": id, "domain": "m.shop", "max_age": 100})).await;
        assert_eq!(status, 200, "{backend}: {rolling}");
        let cookie = rolling["cookie"]["f.session"].as_str().expect("cookie").to_string();
        let (_, alone) = start(json!({"user_id": id, "domain": "other", "max_age": 100})).await;
        assert_eq!(alone["max_age"], 100);
        let listed = sessions(id.clone()).await;
        assert_eq!(listed.len(), 2, "{backend}: {listed:?}");
        let expiry = listed.iter().find(|s| s["domain"] == "m.shop").expect("rolling")["expire_in"].clone();

        // Used before half its life: not extended.
        app.clock.advance(time::Duration::seconds(30));
        let use_it = format!("/customers/session?id={id}");
        let header = format!("theme=dark; f.session={cookie}");
        let (status, used) = app.fynd("GET", &use_it, &[("cookie", &header)], None).await;
        assert_eq!(status, 200, "{backend}: {used}");
        assert_eq!(used["expires_at"], expiry, "{backend}: more than half left, not rolled");
        // Used after half its life: extended to a full life from now.
        app.clock.advance(time::Duration::seconds(30));
        let (status, used) = app.fynd("GET", &use_it, &[("cookie", &header)], None).await;
        assert_eq!(status, 200, "{backend}: {used}");
        assert!(used["expires_at"].as_str() > expiry.as_str(), "{backend}: rolled: {used} vs {expiry}");

        // 41 s later the one left alone (100 s from start) has expired; the
        // rolled one (100 s from its use at 60 s) has not.
        app.clock.advance(time::Duration::seconds(41));
        let listed = sessions(id.clone()).await;
        let domains: Vec<&Value> = listed.iter().map(|s| &s["domain"]).collect();
        assert_eq!(domains, [&json!("m.shop")], "{backend}: {listed:?}");
        let (status, _) = app.fynd("GET", &use_it, &[("cookie", &header)], None).await;
        assert_eq!(status, 200, "{backend}");
        // And past its own end the rolled one is gone too: using it is a 404.
        app.clock.advance(time::Duration::seconds(101));
        assert_eq!(sessions(id.clone()).await, Vec::<Value>::new(), "{backend}");
        let (status, err) = app.fynd("GET", &use_it, &[("cookie", &header)], None).await;
        assert_eq!(status, 404, "{backend}: {err}");
        running.stop().await;
    }
}
