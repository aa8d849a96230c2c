//! Attribute definitions, values, groups and the membership engine,
//! black-box on every backend, plus a replay of the engine over a copied log.

use serde_json::{json, Value};
use std::time::Duration;
use userstream_tests::{call, fresh_databases, TestApp, APP, COMPANY};

/// The user ids (sorted) of a filter answer's items.
fn sorted_ids(found: &Value) -> Vec<String> {
    let mut ids: Vec<String> =
        found["items"].as_array().expect("items").iter().map(|u| u["_id"].as_str().expect("id").to_string()).collect();
    ids.sort();
    ids
}

struct Api<'a> {
    app: &'a TestApp,
    p: String,
}

impl<'a> Api<'a> {
    fn new(app: &'a TestApp) -> Self {
        Api { app, p: app.fynd(COMPANY, APP) }
    }

    async fn definition(&self, body: Value) -> String {
        let (status, d) = call(self.app.client.post(format!("{}/user_attribute/definition", self.p)).json(&body)).await;
        assert_eq!(status, 201, "{body}: {d}");
        d["_id"].as_str().expect("id").to_string()
    }

    async fn user(&self, n: u32, email: &str) -> String {
        let (u, _) = self
            .app
            .create_user(
                json!({"phone_number": format!("98765{n:05}"), "email": email, "username": format!("user{n}")}),
            )
            .await;
        u["_id"].as_str().expect("id").to_string()
    }

    async fn set(&self, def: &str, user: &str, value: Value) -> (u16, Value) {
        call(
            self.app
                .client
                .put(format!("{}/user_attribute/definition/{def}/user/{user}", self.p))
                .json(&json!({"attribute": {"value": value}, "customer_overridden": true})),
        )
        .await
    }

    async fn group(&self, body: Value) -> (u16, Value) {
        call(self.app.client.post(format!("{}/user_group", self.p)).json(&body)).await
    }

    async fn get_group(&self, id: &str) -> Value {
        call(self.app.client.get(format!("{}/user_group/{id}", self.p))).await.1
    }

    /// Waits (bounded) until the group is active and has `n` members; returns it.
    async fn settled(&self, id: &str, n: i64) -> Value {
        for _ in 0..200 {
            let g = self.get_group(id).await;
            if g["status"] == "active" && g["total_users"] == n {
                return g;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("group {id} did not settle at {n} members: {}", self.get_group(id).await);
    }

    /// Waits (bounded) until the group's members are exactly `expected`.
    async fn settled_members(&self, id: &str, mut expected: Vec<String>) {
        expected.sort();
        for _ in 0..200 {
            if ids(&self.members(id, "page_size=500").await) == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("group {id} did not settle at {expected:?}: {}", self.members(id, "page_size=500").await);
    }

    /// The ids (sorted) of the first 100 users the attribute filter finds.
    async fn filter(&self, conditions: Value) -> Vec<String> {
        let body = json!({"query": {"type": "and", "limit": 100, "page": 1, "conditions": conditions}});
        let (status, found) = call(self.app.client.post(format!("{}/user_attribute/users", self.p)).json(&body)).await;
        assert_eq!(status, 200, "{found}");
        sorted_ids(&found)
    }

    async fn members(&self, id: &str, query: &str) -> Value {
        let (status, v) = call(self.app.client.get(format!("{}/user_group/{id}/users?{query}", self.p))).await;
        assert_eq!(status, 200, "{v}");
        v
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["items"].as_array().expect("items").iter().map(|u| u["user_id"].as_str().expect("id").to_string()).collect()
}

#[tokio::test]
async fn definitions_and_values_are_validated_and_encrypted_values_never_stored_in_clear() {
    for db in fresh_databases().await {
        let app = TestApp::spawn_on(db, &[]).await;
        let api = Api::new(&app);
        let age = api
            .definition(json!({"name": "Age", "slug": "age", "type": "number", "validations": [{"type": "min", "value": 18}, {"type": "max", "value": 120}]}))
            .await;
        let secret = api.definition(json!({"name": "PAN", "slug": "pan", "type": "string", "encrypted": true})).await;
        let tier = api
            .definition(json!({"name": "Tier", "slug": "tier", "type": "enum", "is_locked": true, "validations": [{"type": "enum", "value": ["gold", "silver"]}]}))
            .await;
        let user = api.user(1, "a@example.com").await;

        // Bad definitions and values: 400/409 naming the problem, nothing appended.
        let head = app.head().await;
        let defs = format!("{}/user_attribute/definition", api.p);
        for (body, status, needle) in [
            (json!({"name": "Age2", "slug": "age", "type": "number"}), 409, "slug"),
            (
                json!({"name": "Flag", "slug": "flag", "type": "boolean", "validations": [{"type": "min", "value": 1}]}),
                400,
                "min",
            ),
            (json!({"name": "X", "slug": "x", "type": "colour"}), 400, "type"),
            (
                json!({"name": "Code", "slug": "code", "type": "string", "validations": [{"type": "regex", "value": "("}]}),
                400,
                "regex",
            ),
        ] {
            let (got, err) = call(app.client.post(&defs).json(&body)).await;
            assert_eq!(got, status, "{body}: {err}");
            assert!(err["message"].as_str().is_some_and(|m| m.contains(needle)), "{needle} not in {err}");
        }
        for (def, value, rule) in [
            (&age, json!("old"), "type"),
            (&age, json!(17), "min"),
            (&age, json!(121), "max"),
            (&tier, json!("bronze"), "enum"),
        ] {
            let (status, err) = api.set(def, &user, value).await;
            assert_eq!(status, 400, "{err}");
            assert!(err["message"].as_str().is_some_and(|m| m.contains(rule)), "{rule} not in {err}");
        }
        let (status, _) = api.set("aaaaaaaaaaaaaaaaaaaaaaaa", &user, json!(1)).await;
        assert_eq!(status, 404);
        assert_eq!(app.head().await, head, "refused requests append nothing");

        // Upsert, read back (by definition and by id), list, delete.
        let (status, v) = api.set(&age, &user, json!(30)).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["attribute"]["value"], json!(30.0));
        assert_eq!(v["customer_overridden"], true);
        let attribute_id = v["_id"].as_str().expect("id").to_string();
        let (_, by_id) = call(app.client.get(format!("{}/user_attribute/attribute/{attribute_id}", api.p))).await;
        assert_eq!(by_id["user_attribute_definition_id"], json!(age));
        let (status, v) = api.set(&secret, &user, json!("ABCDE1234F")).await;
        assert_eq!((status, v["attribute"]["value"].clone()), (200, json!("ABCDE1234F")), "decrypted on read");
        let (_, list) = call(app.client.get(format!("{}/user_attribute/user/{user}", api.p))).await;
        assert_eq!(list["page"]["item_total"], 2, "{list}");

        // The plaintext of the encrypted value is in no table, the log included.
        let conn = userstream_eventlog::Db::connect(&app.db.url).await.expect("db");
        for sql in [
            "SELECT CAST(data AS TEXT) FROM events",
            "SELECT value FROM attribute_values_v1",
            "SELECT value FROM engine_values",
        ] {
            let texts: Vec<String> = sqlx::query_scalar(sql).fetch_all(&conn.pool).await.expect("select");
            assert!(texts.iter().all(|t| !t.contains("ABCDE1234F")), "{sql}: {texts:?}");
        }

        // Locked definitions refuse edits; a change breaking stored values is 409 unless told.
        let (status, _) = call(app.client.put(format!("{defs}/{tier}")).json(&json!({"name": "T"}))).await;
        assert_eq!(status, 409);
        let (status, err) =
            call(app.client.put(format!("{defs}/{age}")).json(&json!({"validations": [{"type": "min", "value": 40}]})))
                .await;
        assert_eq!(status, 409, "{err}");
        let (status, _) = call(
            app.client
                .put(format!("{defs}/{age}?invalid_values=delete"))
                .json(&json!({"validations": [{"type": "min", "value": 40}]})),
        )
        .await;
        assert_eq!(status, 200);
        let (status, _) = call(app.client.get(format!("{}/user_attribute/definition/{age}/user/{user}", api.p))).await;
        assert_eq!(status, 404, "the invalid value was deleted");

        let (status, d) =
            call(app.client.delete(format!("{}/user_attribute/definition/{secret}/user/{user}", api.p))).await;
        assert_eq!(status, 200);
        assert!(d["success"].is_string(), "SuccessMessage.success is a string: {d}");
        let (_, listed) = call(app.client.get(format!("{defs}?type=number&name=AG"))).await;
        assert_eq!(listed["items"].as_array().map(Vec::len), Some(1), "{listed}");
    }
}

#[tokio::test]
async fn rule_groups_follow_attribute_changes_and_record_why() {
    for db in fresh_databases().await {
        let backend = db.backend;
        let app = TestApp::spawn_on(db, &[]).await;
        let api = Api::new(&app);
        let age = api.definition(json!({"name": "Age", "slug": "age", "type": "number"})).await;
        let city = api.definition(json!({"name": "City", "slug": "city", "type": "string"})).await;
        let vip = api.definition(json!({"name": "VIP", "slug": "vip", "type": "boolean"})).await;
        let mut users = Vec::new();
        for n in 0..6 {
            users.push(api.user(n, &format!("u{n}@example.com")).await);
        }
        for (i, u) in users.iter().enumerate() {
            api.set(&age, u, json!(15 + i as i64 * 5)).await; // 15 20 25 30 35 40
            api.set(&city, u, json!(if i % 2 == 0 { "pune" } else { "goa" })).await;
        }

        // Bad rules: 400 naming the condition, nothing appended.
        let head = app.head().await;
        for (conditions, needle) in [
            (json!([{"user_attribute_definition_id": vip, "type": "gt", "value": "true"}]), "gt"),
            (json!([{"user_attribute_definition_id": age, "type": "between", "value": "18"}]), "between"),
            (
                json!([{"user_attribute_definition_id": "aaaaaaaaaaaaaaaaaaaaaaaa", "type": "eq", "value": "1"}]),
                "not found",
            ),
            (json!([{"user_attribute_definition_id": age, "type": "like", "value": "1"}]), "operator"),
        ] {
            let (status, err) = api.group(json!({"name": "Bad", "description": "d", "conditions": conditions})).await;
            assert_eq!(status, 400, "{backend}: {err}");
            assert!(err["message"].as_str().is_some_and(|m| m.contains(needle)), "{needle} not in {err}");
        }
        assert_eq!(app.head().await, head);

        // Adults in pune: users 2 (25) and 4 (35).
        let (status, g) = api
            .group(json!({
                "name": "Pune adults", "description": "d", "category": "geo", "tags": ["city", "age"],
                "conditions": [
                    {"user_attribute_definition_id": age, "type": "gte", "value": "18"},
                    {"user_attribute_definition_id": city, "type": "eq", "value": "pune"}
                ]
            }))
            .await;
        assert_eq!(status, 201, "{g}");
        assert_eq!(g["uid"], 1);
        let id = g["_id"].as_str().expect("id").to_string();
        api.settled_members(&id, vec![users[2].clone(), users[4].clone()]).await;
        api.settled(&id, 2).await;

        // An attribute change makes user 0 join (age 15 → 19), another makes user 4 leave.
        api.set(&age, &users[0], json!(19)).await;
        api.set(&city, &users[4], json!("goa")).await;
        api.settled_members(&id, vec![users[0].clone(), users[2].clone()]).await;
        // Archiving makes a member leave; deleting its value would too.
        assert_eq!(app.put_customers("/archive", json!({"user_id": users[2]})).await.status(), 200);
        // (The members list hides archived users at once; the total follows the engine's leave.)
        api.settled_members(&id, vec![users[0].clone()]).await;
        api.settled(&id, 1).await;

        // Every join and leave is an event with its cause.
        let conn = userstream_eventlog::Db::connect(&app.db.url).await.expect("db");
        let changes: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(data AS TEXT) FROM events WHERE event_type = 'group.membership_changed' ORDER BY position",
        )
        .fetch_all(&conn.pool)
        .await
        .expect("events");
        let changes: Vec<Value> = changes.iter().map(|t| serde_json::from_str(t).expect("json")).collect();
        assert_eq!(changes[0]["cause"]["kind"], "evaluation", "{changes:?}");
        let joined_user0 = changes.iter().find(|c| c["joined"] == json!([users[0]])).expect("user 0 joined");
        assert_eq!(joined_user0["cause"]["event_type"], "attribute.upserted");
        assert!(joined_user0["cause"]["position"].as_i64().is_some_and(|p| p > 0));
        assert!(changes.iter().any(|c| c["left"] == json!([users[4]])), "{changes:?}");
        assert!(changes.iter().any(|c| c["left"] == json!([users[2]]) && c["cause"]["event_type"] == "user.archived"));

        // Why is user 0 in the group: the membership event, and what caused it.
        let (status, mine) = call(app.client.get(format!("{}/customers/{}/groups", api.p, users[0]))).await;
        assert_eq!(status, 200, "{mine}");
        let groups = mine["groups"].as_array().expect("groups");
        let entry = groups.iter().find(|g| g["_id"] == json!(id)).expect("user 0 is in the rule group");
        assert_eq!(entry["joined"]["event_type"], "group.membership_changed", "{entry}");
        assert_eq!(entry["joined"]["cause"], joined_user0["cause"], "{entry}");
        assert!(entry["conditions"].as_array().is_some_and(|c| !c.is_empty()), "the rule is shown: {entry}");
        // User 4 left: not in it; an unknown user is a 404.
        let (_, theirs) = call(app.client.get(format!("{}/customers/{}/groups", api.p, users[4]))).await;
        assert!(!theirs["groups"].as_array().expect("groups").iter().any(|g| g["_id"] == json!(id)), "{theirs}");
        let (status, _) = call(app.client.get(format!("{}/customers/ffffffffffffffffffffffff/groups", api.p))).await;
        assert_eq!(status, 404);

        // Editing the rule re-evaluates it over all users; refresh answers 202.
        let (status, _) = call(app.client.put(format!("{}/user_group/{id}", api.p)).json(&json!({
            "conditions": [{"user_attribute_definition_id": age, "type": "between", "value": "30,40"}]
        })))
        .await;
        assert_eq!(status, 200);
        // users 3 (30), 4 (35), 5 (40); user 2 is archived
        api.settled_members(&id, vec![users[3].clone(), users[4].clone(), users[5].clone()]).await;
        api.settled(&id, 3).await;
        let (status, r) = call(app.client.post(format!("{}/user_group/{id}/refresh", api.p))).await;
        assert_eq!((status, r["uid"].clone()), (202, json!(1)));
        api.settled(&id, 3).await;

        // The same evaluator answers ad-hoc filters over the attribute read model.
        let filter = |query: Value| {
            call(app.client.post(format!("{}/user_attribute/users", api.p)).json(&json!({ "query": query })))
        };
        let (status, found) = filter(json!({"type": "and", "limit": 10, "page": 1, "conditions": [
            {"definition_id": age, "type": "gte", "value": "25"},
            {"definition_id": city, "type": "in", "value": ["goa", "delhi"]}
        ]}))
        .await;
        assert_eq!(status, 200, "{found}");
        let got = sorted_ids(&found);
        let mut want = vec![users[3].clone(), users[4].clone(), users[5].clone()]; // 30 goa, 35 goa (moved), 40 goa
        want.sort();
        assert_eq!(got, want, "{backend}: {found}");
        let (_, paged) = filter(json!({"type": "and", "limit": 2, "page": 2, "conditions": [{"definition_id": age, "type": "exists", "value": ""}]})).await;
        assert_eq!(
            (paged["items"].as_array().map(Vec::len), paged["page"]["has_next"].clone()),
            (Some(2), json!(true)),
            "{paged}"
        );
        let (_, by_email) = filter(json!({"type": "and", "limit": 5, "page": 1, "email": "u5@example.com", "conditions": [{"definition_id": age, "type": "gt", "value": "18"}]})).await;
        assert_eq!(by_email["items"][0]["_id"], json!(users[5]));
        for bad in [
            json!({"type": "and", "limit": 0, "page": 1, "conditions": []}),
            json!({"type": "and", "limit": 5, "page": 1, "conditions": [{"definition_id": vip, "type": "gt", "value": "true"}]}),
            json!({"type": "and", "limit": 5, "page": 1, "conditions": [{"definition_id": age, "type": "around", "value": "1"}]}),
        ] {
            assert_eq!(filter(bad.clone()).await.0, 400, "{bad}");
        }

        // A definition used by a group cannot be deleted.
        let (status, err) = call(app.client.delete(format!("{}/user_attribute/definition/{age}", api.p))).await;
        assert_eq!(status, 409, "{err}");

        // Filters, tags and categories.
        let (_, list) =
            call(app.client.get(format!("{}/user_group?status=active&tags=city&category=geo", api.p))).await;
        assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
        let (_, tags) = call(app.client.get(format!("{}/user_group/tags", api.p))).await;
        assert_eq!(tags["items"], json!(["age", "city"]));
        let (_, cats) = call(app.client.get(format!("{}/user_group/categories", api.p))).await;
        assert_eq!(cats["items"][0]["key"], "geo");
    }
}

#[tokio::test]
async fn manual_membership_from_json_and_csv_is_idempotent_and_counts_unmatched_rows() {
    // The CSVs live in the service's files directory; nothing else may be named.
    let dir = std::env::temp_dir().join(format!("userstream-csv-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let files_dir = dir.display().to_string();
    let app = TestApp::spawn_on(userstream_tests::fresh_sqlite(), &[("USERSTREAM_FILES_DIR", &files_dir)]).await;
    let api = Api::new(&app);
    let mut users = Vec::new();
    for n in 0..5 {
        users.push(api.user(n, &format!("m{n}@example.com")).await);
    }
    let (status, g) = api.group(json!({"name": "Beta testers", "description": "manual"})).await;
    assert_eq!(status, 201);
    let id = g["_id"].as_str().expect("id").to_string();
    let url = format!("{}/user_group/{id}", api.p);
    let rows = json!({"type": "json", "user_data": [
        {"user_id": users[0], "action": "add"},
        {"email": "m1@example.com", "action": "add"},
        {"phone_number": "9876500002", "action": "add"},
        {"email": "nobody@example.com", "action": "add"}
    ]});
    let (status, g) = call(app.client.patch(&url).json(&rows)).await;
    assert_eq!(status, 200, "{g}");
    assert_eq!((g["total_users"].clone(), g["error"]["count"].clone()), (json!(3), json!(1)));
    // The same members again: nothing appended.
    let again = json!({"type": "json", "user_data": [{"user_id": users[0], "action": "add"}]});
    let head = app.head().await;
    let (status, _) = call(app.client.patch(&url).json(&again)).await;
    assert_eq!(status, 200);
    assert_eq!(app.head().await, head, "adding a member twice appends nothing");

    // CSV from a file: remove one, add one.
    let good = dir.join("members.csv");
    std::fs::write(&good, format!("user_id,action\n{},remove\n{},add\n", users[0], users[3])).expect("write");
    let (status, g) = call(
        app.client.patch(&url).json(&json!({"type": "file_url", "file_url": format!("file://{}", good.display())})),
    )
    .await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["total_users"], 3);

    // Bad files change nothing.
    let no_action = dir.join("no-action.csv");
    std::fs::write(&no_action, format!("user_id\n{}\n", users[4])).expect("write");
    let bad_action = dir.join("bad-action.csv");
    std::fs::write(&bad_action, format!("user_id,action\n{},promote\n", users[4])).expect("write");
    let too_many = dir.join("too-many.csv");
    let mut big = String::from("email,action\n");
    for i in 0..10_001 {
        big.push_str(&format!("x{i}@example.com,add\n"));
    }
    std::fs::write(&too_many, big).expect("write");
    // Outside the files directory: refused before anything is read.
    let outside = std::env::temp_dir().join(format!("userstream-outside-{}.csv", uuid::Uuid::now_v7().simple()));
    std::fs::write(&outside, format!("user_id,action\n{},add\n", users[4])).expect("write");
    std::os::unix::fs::symlink(&outside, dir.join("link.csv")).expect("symlink");
    // Not regular files: a directory, a FIFO (a read would wait forever), a device.
    std::fs::create_dir_all(dir.join("folder.csv")).expect("dir");
    let fifo = std::process::Command::new("mkfifo").arg(dir.join("pipe.csv")).status().expect("mkfifo");
    assert!(fifo.success());
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.csv")).expect("symlink");
    let head = app.head().await;
    for (file_url, needle) in [
        (format!("file://{}", outside.display()), "inside the files directory"),
        ("file://../members.csv".to_string(), "inside the files directory"),
        ("file://link.csv".to_string(), "inside the files directory"),
        ("file:///etc/passwd".to_string(), "inside the files directory"),
        ("file://missing.csv".to_string(), "names no file"),
        ("file://folder.csv".to_string(), "regular file"),
        ("file://pipe.csv".to_string(), "regular file"),
        ("file://zero.csv".to_string(), "inside the files directory"),
        ("file:///dev/zero".to_string(), "inside the files directory"),
        (format!("file://{}", no_action.display()), "action column"),
        (format!("file://{}", bad_action.display()), "promote"),
        (format!("file://{}", too_many.display()), "at most"),
        ("ftp://example.com/members.csv".to_string(), "file:// or http(s)://"),
        ("http://127.0.0.1:1/members.csv".to_string(), "a loopback address"),
    ] {
        let (status, err) = call(app.client.patch(&url).json(&json!({"type": "file_url", "file_url": file_url}))).await;
        assert_eq!(status, 400, "{file_url}: {err}");
        assert!(err["message"].as_str().is_some_and(|m| m.contains(needle)), "{needle} not in {err}");
    }
    assert_eq!(app.head().await, head, "bad files append nothing");

    // Cursor pages: forward, then back.
    let first = api.members(&id, "page_size=2").await;
    assert_eq!(first["page"]["has_next"], true);
    let next = first["page"]["next_cursor"].as_str().expect("next cursor");
    let second = api.members(&id, &format!("page_size=2&cursor={next}&direction=next")).await;
    assert_eq!(ids(&second).len(), 1);
    assert_eq!(second["page"]["has_next"], false);
    let prev = second["page"]["prev_cursor"].as_str().expect("prev cursor");
    let back = api.members(&id, &format!("page_size=2&cursor={prev}&direction=prev")).await;
    assert_eq!(ids(&back), ids(&first));
    let by_q = api.members(&id, "q=m1@").await;
    assert_eq!(ids(&by_q), vec![users[1].clone()]);

    // Rule groups refuse manual rows; delete answers {success: true}.
    let (status, _) = call(app.client.delete(&url)).await;
    assert_eq!(status, 200);
    assert_eq!(call(app.client.get(&url)).await.0, 404);
}

/// Copies the log of `from` without the engine's own output into `to`, then
/// runs a fresh engine there: the memberships must come out the same.
#[tokio::test]
async fn re_running_the_engine_over_the_whole_log_gives_the_same_memberships() {
    use userstream_eventlog::{
        AppendRequest, Db, EventLog, ExpectedVersion, NewEvent, SqlEventLog, StreamAppend, Tenant,
    };
    for (source, target) in fresh_databases().await.into_iter().zip(fresh_databases().await) {
        let app = TestApp::spawn_on(source, &[]).await;
        let api = Api::new(&app);
        let score = api.definition(json!({"name": "Score", "slug": "score", "type": "number"})).await;
        let mut users = Vec::new();
        for n in 0..12 {
            users.push(api.user(n, &format!("r{n}@example.com")).await);
        }
        let (_, g1) = api.group(json!({"name": "High", "description": "d", "conditions": [{"user_attribute_definition_id": score, "type": "gt", "value": "50"}]})).await;
        let (_, g2) = api.group(json!({"name": "None", "description": "d", "conditions": [{"user_attribute_definition_id": score, "type": "not_exists", "value": ""}]})).await;
        for (i, u) in users.iter().enumerate() {
            api.set(&score, u, json!((i * 37 % 100) as i64)).await;
        }
        api.set(&score, &users[1], json!(99)).await;
        app.client
            .delete(format!("{}/user_attribute/definition/{score}/user/{}", api.p, users[2]))
            .send()
            .await
            .expect("delete");
        app.put_customers("/archive", json!({"user_id": users[3]})).await;
        // Wait for the final member sets (counts alone can match a state on the way).
        let high: Vec<String> = users
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let v = if *i == 1 { 99 } else { i * 37 % 100 };
                *i != 2 && *i != 3 && v > 50
            })
            .map(|(_, u)| u.clone())
            .collect();
        api.settled_members(g1["_id"].as_str().expect("id"), high).await;
        api.settled_members(g2["_id"].as_str().expect("id"), vec![users[2].clone()]).await;

        // Members as the log says (the groups read model, settled above) and
        // as a fresh engine computes them.
        let members = |url: String, table: &'static str| async move {
            let db = Db::connect(&url).await.expect("db");
            let sql = format!("SELECT group_id, user_id FROM {table} ORDER BY group_id, user_id");
            let rows: Vec<(String, String)> = sqlx::query_as(&sql).fetch_all(&db.pool).await.expect("members");
            rows
        };
        let live = members(app.db.url.clone(), "group_members_v1").await;
        assert!(!live.is_empty());

        // Copy every event but the engine's output into a fresh log, in order.
        // Read as the service reads it: personal fields opened.
        let (from, _) =
            userstream_api::open_log(&Db::connect(&app.db.url).await.expect("db"), None).await.expect("log");
        let to = SqlEventLog::open(Db::connect(&target.url).await.expect("db")).await.expect("log");
        for e in from.read_all(0, 100_000).await.expect("read") {
            if e.actor == "membership-engine" {
                continue;
            }
            to.append(AppendRequest {
                tenant: Tenant { company_id: e.company_id.clone(), application_id: e.application_id.clone() },
                actor: e.actor.clone(),
                correlation_id: e.correlation_id.clone(),
                causation_id: None,
                streams: vec![StreamAppend {
                    stream: e.stream.clone(),
                    expected: ExpectedVersion::Any,
                    events: vec![NewEvent {
                        event_id: uuid::Uuid::now_v7(),
                        event_type: e.event_type.clone(),
                        schema: e.schema,
                        occurred_at: e.occurred_at,
                        data: e.data.value(),
                    }],
                }],
                reserve: vec![],
                release: vec![],
                idempotency_key: None,
            })
            .await
            .expect("copy");
        }
        let mut engine = userstream_projections::engine::Engine::new(to.clone()).await.expect("engine");
        while engine.step().await.expect("step") {}
        let replayed = members(target.url.clone(), "engine_members").await;
        let name = |id: &str| users.iter().position(|u| u == id).map(|i| format!("u{i}")).unwrap_or(id.to_string());
        let show = |rows: &[(String, String)]| {
            rows.iter().map(|(g, u)| format!("{}:{}", &g[20..], name(u))).collect::<Vec<_>>()
        };
        assert_eq!(
            replayed,
            live,
            "{}: replayed memberships differ: {:?} vs live {:?}",
            target.backend,
            show(&replayed),
            show(&live)
        );
    }
}

/// Index probes narrow the filter's scan and a new rule's evaluation; this
/// checks both against the rule evaluated directly over every user, for
/// random rules over numbers, text, booleans and lists (archived users
/// never match).
#[tokio::test]
async fn filters_and_new_rule_groups_agree_with_the_rule_evaluated_directly() {
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;
    use userstream_domain::attribute::{AttrType, Definition};
    use userstream_domain::rules::{self, Condition, Op};

    for db in fresh_databases().await {
        let backend = db.backend;
        let app = TestApp::spawn_on(db, &[]).await;
        let api = Api::new(&app);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let kinds = [
            ("num", AttrType::Number, false),
            ("txt", AttrType::String, false),
            ("flag", AttrType::Boolean, false),
            ("tags", AttrType::String, true),
        ];
        let mut defs = Vec::new();
        for (slug, kind, multi) in kinds {
            let id = api
                .definition(json!({"name": slug, "slug": slug, "type": kind.as_str(), "is_multi_value": multi}))
                .await;
            let mut d = Definition::new(id, kind);
            d.multi_value = multi;
            defs.push(d);
        }
        let text = |rng: &mut rand::rngs::StdRng| ["a", "b", "c"][rng.gen_range(0..3)].to_string();
        let mut users: Vec<(String, HashMap<String, Value>)> = Vec::new();
        for n in 0..30 {
            let id = api.user(n, &format!("p{n}@example.com")).await;
            let mut values = HashMap::new();
            for d in &defs {
                if rng.gen_bool(0.25) {
                    continue; // no value
                }
                let v = match (d.kind, d.multi_value) {
                    (AttrType::Number, _) => json!(rng.gen_range(-3..4)),
                    (AttrType::Boolean, _) => json!(rng.gen_bool(0.5)),
                    (_, true) => json!((0..rng.gen_range(1..3)).map(|_| text(&mut rng)).collect::<Vec<_>>()),
                    _ => json!(text(&mut rng)),
                };
                let (status, body) = api.set(&d.id, &id, v.clone()).await;
                assert_eq!(status, 200, "{body}");
                values.insert(d.id.clone(), v);
            }
            users.push((id, values));
        }
        let archived = users[3].0.clone();
        assert_eq!(app.put_customers("/archive", json!({"user_id": archived})).await.status(), 200);

        let ops = [
            Op::Eq,
            Op::Neq,
            Op::Gt,
            Op::Gte,
            Op::Lt,
            Op::Lte,
            Op::In,
            Op::Nin,
            Op::Contains,
            Op::Exists,
            Op::NotExists,
            Op::Between,
        ];
        let mut checked = 0;
        while checked < 14 {
            let conditions: Vec<Condition> = (0..rng.gen_range(1..4))
                .map(|_| {
                    let d = &defs[rng.gen_range(0..defs.len())];
                    let op = ops[rng.gen_range(0..ops.len())];
                    let one = |rng: &mut rand::rngs::StdRng| match d.kind {
                        AttrType::Number => rng.gen_range(-3..4).to_string(),
                        AttrType::Boolean => rng.gen_bool(0.5).to_string(),
                        _ => text(rng),
                    };
                    let value = match op {
                        Op::In | Op::Nin | Op::Between => {
                            let (a, b) = (one(&mut rng), one(&mut rng));
                            format!("{a},{b}")
                        }
                        _ => one(&mut rng),
                    };
                    Condition { user_attribute_definition_id: d.id.clone(), op, value }
                })
                .collect();
            let Ok(rule) = rules::compile(&conditions, |id| defs.iter().find(|d| d.id == id)) else { continue };
            checked += 1;
            let mut expected: Vec<String> = users
                .iter()
                .filter(|(id, values)| *id != archived && rules::matches(&rule, |d| values.get(d)))
                .map(|(id, _)| id.clone())
                .collect();
            expected.sort();

            let query: Vec<Value> = conditions
                .iter()
                .map(|c| json!({"definition_id": c.user_attribute_definition_id, "type": c.op.as_str(), "value": c.value}))
                .collect();
            assert_eq!(api.filter(json!(query)).await, expected, "{backend}: filter {conditions:?}");

            let (status, g) =
                api.group(json!({"name": format!("R{checked}"), "description": "d", "conditions": conditions})).await;
            assert_eq!(status, 201, "{g}");
            let id = g["_id"].as_str().expect("id").to_string();
            api.settled(&id, expected.len() as i64).await;
            api.settled_members(&id, expected.clone()).await;
        }
    }
}

/// A value without a number key (text) and then one with (a number), user
/// after user: every connection of the pool prepares the value writers with
/// a missing number first and must still take numbers after it (sqlx's Any
/// driver once made PostgreSQL refuse them; CI caught it at random).
#[tokio::test]
async fn numbers_after_text_values_reach_the_filter_and_the_groups() {
    for db in fresh_databases().await {
        let backend = db.backend;
        let app = TestApp::spawn_on(db, &[]).await;
        let api = Api::new(&app);
        let label = api.definition(json!({"name": "label", "slug": "label", "type": "string"})).await;
        let score = api.definition(json!({"name": "score", "slug": "score", "type": "number"})).await;
        let (status, g) = api
            .group(json!({"name": "high", "description": "d", "conditions": [
                {"user_attribute_definition_id": score, "type": "gte", "value": "5"}]}))
            .await;
        assert_eq!(status, 201, "{g}");
        let group = g["_id"].as_str().expect("id").to_string();
        let mut users = Vec::new();
        for n in 0..40 {
            let id = api.user(n, &format!("n{n}@example.com")).await;
            assert_eq!(api.set(&label, &id, json!(format!("l{n}"))).await.0, 200);
            users.push(id);
        }
        // Every label is in the read model before the first number.
        let labelled = api.filter(json!([{"definition_id": label, "type": "exists", "value": ""}])).await;
        assert_eq!(labelled.len(), 40, "{backend}");
        let mut expected = Vec::new();
        for (n, id) in users.into_iter().enumerate() {
            assert_eq!(api.set(&score, &id, json!(n % 10)).await.0, 200);
            if n % 10 >= 5 {
                expected.push(id);
            }
        }
        expected.sort();
        api.settled_members(&group, expected.clone()).await;
        let high = api.filter(json!([{"definition_id": score, "type": "gte", "value": "5"}])).await;
        assert_eq!(high, expected, "{backend}");
    }
}

/// The engine treats an event it cannot decode as a projection does: it
/// stops there, records why, and `/readyz` says so (it used to retry
/// forever, invisibly).
#[tokio::test]
async fn a_poison_event_stops_the_membership_engine_and_readyz_names_it() {
    let app = TestApp::spawn().await;
    let position =
        userstream_tests::append_poison(&app.db.url, "attrs-61f02c3dcc701256044ed6c0", "attribute.upserted").await;
    let db = userstream_eventlog::Db::connect(&app.db.url).await.expect("db");
    let mut last = Value::Null;
    for _ in 0..100 {
        let (status, body) = app.readyz().await;
        last = body;
        let reasons = last["reasons"].to_string();
        if status == 503 && reasons.contains(&format!("membership: stopped at poison event {position}")) {
            let stored: Option<String> =
                sqlx::query_scalar("SELECT failure FROM checkpoints WHERE name = 'membership'")
                    .fetch_one(&db.pool)
                    .await
                    .expect("checkpoint row");
            assert!(stored.is_some_and(|f| f.contains("poison")), "the failure is recorded");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the engine did not report the poison event: {last}");
}

/// POST `…/user_attribute/user/{id}` sets several values of one user in one
/// append (all or none: one bad value refuses the whole request, naming its
/// index); DELETE with `{definition_ids}` removes several the same way.
#[tokio::test]
async fn several_values_of_one_user_are_set_and_deleted_all_or_none() {
    for db in fresh_databases().await {
        let backend = db.backend;
        let app = TestApp::spawn_on(db, &[]).await;
        let api = Api::new(&app);
        let age = api
            .definition(
                json!({"name": "Age", "slug": "age", "type": "number", "validations": [{"type": "min", "value": 18}]}),
            )
            .await;
        let city = api.definition(json!({"name": "City", "slug": "city", "type": "string"})).await;
        let pan = api.definition(json!({"name": "PAN", "slug": "pan", "type": "string", "encrypted": true})).await;
        let user = api.user(7, "bulk@example.com").await;
        let url = format!("{}/user_attribute/user/{user}", api.p);

        let head = app.head().await;
        for (body, status, needle) in [
            (
                json!({"attributes": [{"definition_id": age, "value": 30}, {"definition_id": city, "value": 5}]}),
                400,
                "attributes[1]",
            ),
            (json!({"attributes": [{"definition_id": age, "value": 10}]}), 400, "attributes[0]"),
            (
                json!({"attributes": [{"definition_id": age, "value": 30}, {"definition_id": age, "value": 31}]}),
                400,
                "twice",
            ),
            (json!({"attributes": []}), 400, "1 to"),
            (json!({"attributes": [{"definition_id": "000000000000000000000000", "value": 1}]}), 404, ""),
        ] {
            let (got, err) = call(app.client.post(&url).json(&body)).await;
            assert_eq!(got, status, "{backend} {body}: {err}");
            assert!(err["message"].as_str().is_some_and(|m| m.contains(needle)), "{backend}: {needle} not in {err}");
        }
        let other = format!("{}/user_attribute/user/aaaaaaaaaaaaaaaaaaaaaaaa", api.p);
        let (got, _) =
            call(app.client.post(&other).json(&json!({"attributes": [{"definition_id": age, "value": 30}]}))).await;
        assert_eq!(got, 404, "{backend}: unknown user");
        assert_eq!(app.head().await, head, "{backend}: refused requests append nothing");

        let body = json!({"attributes": [
            {"definition_id": age, "value": 30}, {"definition_id": city, "value": "Pune"}, {"definition_id": pan, "value": "ABCDE1234F"}
        ]});
        let r = app.client.post(&url).json(&body).send().await.expect("post");
        assert_eq!(r.status(), 200, "{backend}");
        let position = userstream_tests::position_of(&r);
        let answer: Value = r.json().await.expect("json");
        assert_eq!(answer["success"], true, "{backend}: {answer}");
        let values: Vec<Value> = answer["attributes"]
            .as_array()
            .expect("attributes")
            .iter()
            .map(|a| a["attribute"]["value"].clone())
            .collect();
        assert_eq!(values, vec![json!(30.0), json!("Pune"), json!("ABCDE1234F")], "{backend}: {answer}");
        // One append: the three events share one transaction, so they end at one position.
        assert_eq!(app.head().await, position, "{backend}");
        let conn = userstream_eventlog::Db::connect(&app.db.url).await.expect("db");
        let upserts: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE event_type = 'attribute.upserted' AND position > $1")
                .bind(head)
                .fetch_one(&conn.pool)
                .await
                .expect("count");
        assert_eq!(upserts, 3, "{backend}");

        // Delete two; a definition without a value refuses the whole request.
        let (got, err) =
            call(app.client.delete(&url).json(&json!({"definition_ids": [age, "000000000000000000000000"]}))).await;
        assert_eq!(got, 404, "{backend}: {err}");
        let (got, done) = call(app.client.delete(&url).json(&json!({"definition_ids": [age, city]}))).await;
        assert_eq!(got, 200, "{backend}: {done}");
        assert!(done["success"].is_string(), "{backend}: SuccessMessage.success is a string: {done}");
        let (_, left) = call(app.client.get(&url)).await;
        let left: Vec<&Value> =
            left["items"].as_array().expect("items").iter().map(|a| &a["user_attribute_definition_id"]).collect();
        assert_eq!(left, vec![&json!(pan)], "{backend}");
    }
}
