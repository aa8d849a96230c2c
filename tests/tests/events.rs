//! Reading the log over HTTP, black-box on every backend: the tenant feed
//! (pages and Server-Sent Events with reconnects under concurrent writers),
//! user and group history, the Fynd timeline, and `as_of` reads.

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use userstream_tests::{call, create_key, fresh_databases, position_of, user_body, TestApp, APP, COMPANY};

/// Every event of the default tenant through the JSON feed, page by page.
async fn all_events(app: &TestApp, query: &str) -> Vec<Value> {
    let mut after = 0;
    let mut events = Vec::new();
    loop {
        let (status, page) =
            call(app.client.get(format!("{}/events?after={after}&limit=7{query}", app.fynd(COMPANY, APP)))).await;
        assert_eq!(status, 200, "{page}");
        let batch = page["events"].as_array().expect("events").clone();
        events.extend(batch.iter().cloned());
        after = page["next"].as_i64().expect("next");
        if page["has_more"] == false {
            return events;
        }
    }
}

#[tokio::test]
async fn feed_pages_by_position_within_the_tenant_and_filters_types() {
    for db in fresh_databases().await {
        let app = TestApp::spawn_on(db.clone(), &[]).await;
        let (_, other_token) = create_key(&db, "2", None).await;
        let other = userstream_tests::client_with(&format!("Bearer {other_token}"));
        let mut ids = Vec::new();
        for n in 0..10 {
            ids.push(app.create_user(user_body(n)).await.0["_id"].as_str().expect("id").to_string());
            // Another tenant writes between ours: the feed must not show it.
            let r =
                other.post(format!("{}/customers", app.fynd("2", APP))).json(&user_body(n)).send().await.expect("send");
            assert_eq!(r.status(), 200);
        }
        app.put_customers(&format!("/{}", ids[0]), json!({"first_name": "Ada"})).await;

        let events = all_events(&app, "").await;
        assert_eq!(events.len(), 11, "{}: 10 created + 1 updated", db.backend);
        let positions: Vec<i64> = events.iter().map(|e| e["position"].as_i64().expect("position")).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "strictly increasing: {positions:?}");
        for e in &events {
            assert_eq!((e["company_id"].as_str(), e["application_id"].as_str()), (Some(COMPANY), Some(APP)));
            for field in
                ["event_id", "stream", "version", "type", "schema", "occurred_at", "actor", "correlation_id", "data"]
            {
                assert!(!e[field].is_null(), "{field} missing in {e}");
            }
        }

        let created = all_events(&app, "&types=user.created").await;
        assert_eq!(created.len(), 10);
        let prefixed = all_events(&app, "&types=user.*").await;
        assert_eq!(prefixed.len(), 11);
        let updated = all_events(&app, "&types=user.updated,group.created").await;
        assert_eq!(updated.len(), 1);
        assert_eq!(updated[0]["data"]["first_name"], "Ada", "{}", updated[0]);

        // Every page names the log's head, where a live stream of what
        // comes next starts (the console's feed "from now").
        let head = app.head().await;
        let (_, first) = call(app.client.get(format!("{}/events?after=0&limit=1", app.fynd(COMPANY, APP)))).await;
        assert_eq!((first["head"].as_i64(), first["next"].as_i64()), (Some(head), Some(positions[0])), "{first}");

        // Beyond the head: an empty page, not an error.
        let (status, page) =
            call(app.client.get(format!("{}/events?after={}", app.fynd(COMPANY, APP), head + 100))).await;
        assert_eq!(
            (status, page["events"].as_array().map(Vec::len), page["has_more"].clone()),
            (200, Some(0), json!(false))
        );
        for bad in ["after=-1", "after=x", "limit=0", "limit=5000", "types=User.Created", "types=a%20b"] {
            let (status, err) = call(app.client.get(format!("{}/events?{bad}", app.fynd(COMPANY, APP)))).await;
            assert_eq!(status, 400, "{bad}: {err}");
            assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()), "{bad}: {err}");
        }
        // Another company's feed: refused.
        let (status, _) = call(app.client.get(format!("{}/events", app.fynd("2", APP)))).await;
        assert_eq!(status, 403);
    }
}

/// Reads SSE events from `after` until `stop` events arrived (or the feed
/// went quiet), returning (position, type) pairs.
async fn read_sse(app: &TestApp, last_event_id: Option<i64>, stop: usize) -> Vec<(i64, String)> {
    let mut request =
        app.client.get(format!("{}/events", app.fynd(COMPANY, APP))).header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    let mut response = request.send().await.expect("sse");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut buffer = String::new();
    let mut got = Vec::new();
    while got.len() < stop {
        let chunk = match tokio::time::timeout(Duration::from_secs(3), response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            _ => break,
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let field =
                |name: &str| frame.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim_start().to_string()));
            if let (Some(id), Some(kind), Some(data)) = (field("id:"), field("event:"), field("data:")) {
                let event: Value = serde_json::from_str(&data).expect("data is JSON");
                let position: i64 = id.parse().expect("id is a position");
                assert_eq!(event["position"], position);
                assert_eq!(event["type"], kind.as_str());
                got.push((position, kind));
            }
        }
    }
    got
}

#[tokio::test]
async fn sse_feed_resumes_from_last_event_id_without_gaps_or_duplicates_under_concurrent_writers() {
    for db in fresh_databases().await {
        let app = std::sync::Arc::new(TestApp::spawn_on(db.clone(), &[]).await);
        let writers: Vec<_> = (0..4u32)
            .map(|w| {
                let app = app.clone();
                tokio::spawn(async move {
                    for n in 0..40u32 {
                        let body = user_body(w * 1000 + n);
                        let r = app.client.post(app.customers()).json(&body).send().await.expect("create");
                        assert_eq!(r.status(), 200);
                    }
                })
            })
            .collect();
        // A reader that disconnects every 17 events and resumes with Last-Event-ID.
        let mut seen: Vec<(i64, String)> = Vec::new();
        let mut last = None;
        for _ in 0..100 {
            let part = read_sse(&app, last, 17).await;
            if part.is_empty() && writers.iter().all(|w| w.is_finished()) {
                break;
            }
            if let Some((p, _)) = part.last() {
                last = Some(*p);
            }
            seen.extend(part);
        }
        for w in writers {
            w.await.expect("writer");
        }
        // Whatever arrived after the last read.
        seen.extend(read_sse(&app, last, usize::MAX).await);
        let expected: Vec<i64> =
            all_events(&app, "").await.iter().map(|e| e["position"].as_i64().expect("position")).collect();
        let positions: Vec<i64> = seen.iter().map(|(p, _)| *p).collect();
        assert_eq!(expected.len(), 160, "{}", db.backend);
        assert_eq!(positions, expected, "{}: every event once, in order, across reconnects", db.backend);
    }
}

#[tokio::test]
async fn history_and_timeline_tell_what_changed_and_who_did_it() {
    for db in fresh_databases().await {
        let app = TestApp::spawn_on(db, &[]).await;
        let (user, _) = app.create_user(user_body(1)).await;
        let id = user["_id"].as_str().expect("id").to_string();
        let r = app
            .client
            .put(format!("{}/{id}", app.customers()))
            .header("x-correlation-id", "ticket-42")
            .json(&json!({"first_name": "Grace", "last_name": "Hopper"}))
            .send()
            .await
            .expect("update");
        assert_eq!(r.status(), 200);
        app.put_customers("/activation", json!({"user_id": [id], "status": false, "reason": "fraud"})).await;
        app.put_customers("/activation", json!({"user_id": [id], "status": true})).await;
        app.put_customers("/archive", json!({"user_id": id})).await;

        let (status, h) = call(app.client.get(format!("{}/{id}/history", app.customers()))).await;
        assert_eq!(status, 200, "{h}");
        let history = h["history"].as_array().expect("history");
        let types: Vec<&str> = history.iter().map(|e| e["type"].as_str().unwrap_or("")).collect();
        assert_eq!(types, ["user.created", "user.updated", "user.blocked", "user.unblocked", "user.archived"]);
        let update = &history[1];
        assert_eq!(update["correlation_id"], "ticket-42");
        assert!(update["actor"].as_str().is_some_and(|a| a.starts_with("apikey:")), "{update}");
        let changes = update["changes"].as_array().expect("changes");
        assert!(changes.contains(&json!({"field": "first_name", "from": null, "to": "Grace"})), "{changes:?}");
        assert!(changes.contains(&json!({"field": "last_name", "from": null, "to": "Hopper"})), "{changes:?}");
        assert!(history[2]["changes"]
            .as_array()
            .expect("changes")
            .contains(&json!({"field": "active", "from": true, "to": false})));
        assert!(history[4]["changes"]
            .as_array()
            .expect("changes")
            .contains(&json!({"field": "archive", "from": false, "to": true})));

        let (status, t) = call(app.client.get(format!("{}/{id}/timeline", app.customers()))).await;
        assert_eq!(status, 200, "{t}");
        let timeline = t["timeline"].as_array().expect("timeline");
        assert_eq!(timeline.len(), 5);
        assert_eq!(timeline[0]["title"], "Account deleted", "newest first");
        assert_eq!(timeline[3]["sub_title"], "changed first_name, last_name");
        assert!(t["delete_on"].as_str().is_some_and(|d| d.len() >= 20), "archived: delete_on set: {t}");

        let (status, _) =
            call(app.client.get(format!("{}/{}/history", app.customers(), "0123456789abcdef01234567"))).await;
        assert_eq!(status, 404);
    }
}

#[tokio::test]
async fn as_of_returns_every_intermediate_state_of_a_user_exactly() {
    for db in fresh_databases().await {
        let app = TestApp::spawn_on(db.clone(), &[]).await;
        let (user, created_at) = app.create_user(user_body(7)).await;
        let id = user["_id"].as_str().expect("id").to_string();
        let url = format!("{}/{id}", app.customers());
        let mut states = Vec::new();
        let snapshot = |position: i64| {
            let (client, url) = (app.client.clone(), url.clone());
            async move {
                let r = client.get(&url).header("x-min-position", position.to_string()).send().await.expect("get");
                assert_eq!(r.status(), 200);
                r.json::<Value>().await.expect("json")
            }
        };
        states.push((created_at, snapshot(created_at).await));
        for n in 0..10 {
            let body = match n % 3 {
                0 => json!({"first_name": format!("Name{n}")}),
                1 => json!({"meta": {"step": n}, "gender": "female"}),
                _ => {
                    json!({"emails": [{"email": format!("step{n}@example.com"), "primary": true, "verified": true, "active": true}]})
                }
            };
            let r = app.put_customers(&format!("/{id}"), body.clone()).await;
            assert_eq!(r.status(), 200, "{body}");
            let position = position_of(&r);
            states.push((position, snapshot(position).await));
        }
        let times: Vec<String> = {
            let (_, h) = call(app.client.get(format!("{url}/history"))).await;
            h["history"]
                .as_array()
                .expect("history")
                .iter()
                .map(|e| e["recorded_at"].as_str().unwrap_or("").to_string())
                .collect()
        };
        for (i, (position, expected)) in states.iter().enumerate() {
            let (status, got) = call(app.client.get(format!("{url}?as_of={position}"))).await;
            assert_eq!(status, 200, "{got}");
            assert_eq!(&got, expected, "{}: as_of={position}", db.backend);
            let (status, by_time) = call(app.client.get(&url).query(&[("as_of", times[i].as_str())])).await;
            assert_eq!(status, 200, "{by_time}");
            assert_eq!(&by_time, expected, "{}: as_of={}", db.backend, times[i]);
        }
        // Before the user existed; the future; nonsense.
        let (status, _) = call(app.client.get(format!("{url}?as_of={}", created_at - 1))).await;
        assert_eq!(status, 404);
        let head = app.head().await;
        for bad in [format!("{}", head + 1000), "2999-01-01T00:00:00Z".into(), "yesterday".into(), "-3".into()] {
            let (status, err) = call(app.client.get(&url).query(&[("as_of", bad.as_str())])).await;
            assert_eq!(status, 400, "as_of={bad}: {err}");
        }
    }
}

#[tokio::test]
async fn as_of_rebuilds_groups_their_members_and_attribute_values() {
    for db in fresh_databases().await {
        let app = TestApp::spawn_on(db.clone(), &[]).await;
        let p = app.fynd(COMPANY, APP);
        let mut users = Vec::new();
        for n in 0..4 {
            users.push(app.create_user(user_body(100 + n)).await.0["_id"].as_str().expect("id").to_string());
        }
        let (status, g) =
            call(app.client.post(format!("{p}/user_group")).json(&json!({"name": "Early", "description": "v1"}))).await;
        assert_eq!(status, 201, "{g}");
        let gid = g["_id"].as_str().expect("id").to_string();
        let group_url = format!("{p}/user_group/{gid}");
        let mut steps: Vec<(i64, Value, BTreeSet<String>)> = Vec::new();
        let mut members = BTreeSet::new();
        for (i, u) in users.iter().enumerate() {
            let action = if i == 3 { "remove" } else { "add" };
            let target = if i == 3 { &users[0] } else { u };
            let r = app
                .client
                .patch(&group_url)
                .json(&json!({"type": "json", "user_data": [{"user_id": target, "action": action}]}))
                .send()
                .await
                .expect("patch");
            assert_eq!(r.status(), 200);
            let position = position_of(&r);
            if action == "add" {
                members.insert(target.clone());
            } else {
                members.remove(target);
            }
            let (_, live) = call(app.client.get(&group_url).header("x-min-position", position.to_string())).await;
            steps.push((position, live, members.clone()));
        }
        let r = app
            .client
            .put(&group_url)
            .json(&json!({"name": "Early adopters", "description": "v2"}))
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), 200);
        let renamed_at = position_of(&r);
        for (position, live, expected_members) in &steps {
            let (status, got) = call(app.client.get(format!("{group_url}?as_of={position}"))).await;
            assert_eq!(status, 200, "{got}");
            assert_eq!(&got, live, "{}: group as_of={position}", db.backend);
            let (status, page) = call(app.client.get(format!("{group_url}/users?as_of={position}&page_size=2"))).await;
            assert_eq!(status, 200, "{page}");
            let mut got_members: BTreeSet<String> = page["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|m| m["user_id"].as_str().unwrap_or("").to_string())
                .collect();
            if let Some(cursor) = page["page"]["next_cursor"].as_str() {
                let (_, next) =
                    call(app.client.get(format!("{group_url}/users?as_of={position}&page_size=2&cursor={cursor}")))
                        .await;
                got_members.extend(
                    next["items"]
                        .as_array()
                        .expect("items")
                        .iter()
                        .map(|m| m["user_id"].as_str().unwrap_or("").to_string()),
                );
            }
            assert_eq!(&got_members, expected_members, "{}: members as_of={position}", db.backend);
        }
        let (_, now) = call(app.client.get(format!("{group_url}?as_of={renamed_at}"))).await;
        assert_eq!(now["name"], "Early adopters");
        let (status, _) = call(app.client.get(format!("{group_url}?as_of={}", steps[0].0 - 2))).await;
        assert_eq!(status, 404, "before the group existed");

        // The group's history names each membership change's cause.
        let (status, h) = call(app.client.get(format!("{group_url}/history"))).await;
        assert_eq!(status, 200, "{h}");
        let changes: Vec<&Value> = h["history"]
            .as_array()
            .expect("history")
            .iter()
            .filter(|e| e["type"] == "group.membership_changed")
            .collect();
        assert_eq!(changes.len(), 4);
        assert_eq!(changes[3]["left"], json!([users[0]]));
        assert_eq!(changes[0]["cause"]["kind"], "manual", "{}", changes[0]);
        let renamed =
            h["history"].as_array().expect("history").iter().find(|e| e["type"] == "group.updated").expect("update");
        assert!(
            renamed["changes"]
                .as_array()
                .expect("changes")
                .contains(&json!({"field": "name", "from": "Early", "to": "Early adopters"})),
            "{renamed}"
        );

        // An attribute value as of each of its versions.
        let (status, d) = call(
            app.client
                .post(format!("{p}/user_attribute/definition"))
                .json(&json!({"name": "Tier", "slug": "tier", "type": "string"})),
        )
        .await;
        assert_eq!(status, 201, "{d}");
        let def = d["_id"].as_str().expect("id").to_string();
        let value_url = format!("{p}/user_attribute/definition/{def}/user/{}", users[1]);
        let mut versions = Vec::new();
        for tier in ["bronze", "silver", "gold"] {
            let r = app.client.put(&value_url).json(&json!({"attribute": {"value": tier}})).send().await.expect("put");
            assert_eq!(r.status(), 200);
            versions.push((position_of(&r), tier));
        }
        for (position, tier) in &versions {
            let (status, v) = call(app.client.get(format!("{value_url}?as_of={position}"))).await;
            assert_eq!((status, v["attribute"]["value"].clone()), (200, json!(tier)), "{v}");
        }
        let (status, _) = call(app.client.get(format!("{value_url}?as_of={}", versions[0].0 - 1))).await;
        assert_eq!(status, 404, "no value before the first upsert");
    }
}
