//! Bulk jobs, black-box on every backend: users import (CSV and JSONL, row
//! errors in the error file, a restart mid-import), users export, bulk
//! attribute updates, and the bad input of each.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use userstream_tests::{call, fresh_databases, TestApp, TestDb, APP, COMPANY};

/// A service with a files directory of its own.
async fn app_with_files(db: TestDb, extra: &[(&str, &str)]) -> (TestApp, PathBuf) {
    let dir = std::env::temp_dir().join(format!("userstream-jobs-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("files dir");
    let dir_text = dir.display().to_string();
    let mut env = vec![("USERSTREAM_FILES_DIR", dir_text.as_str())];
    env.extend_from_slice(extra);
    (TestApp::spawn_on(db, &env).await, dir)
}

fn prefix(app: &TestApp) -> String {
    app.fynd(COMPANY, APP)
}

async fn start_import(app: &TestApp, url: &str, format: &str) -> (u16, Value) {
    let body = json!({"absolute_url": url, "file_format": format, "relative_url": "users.csv"});
    call(app.client.post(format!("{}/users/jobs/import", prefix(app))).json(&body)).await
}

/// Polls a job until it is completed or failed (bounded).
async fn finished(app: &TestApp, path: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, job) = call(app.client.get(format!("{}{path}", prefix(app)))).await;
        assert_eq!(status, 200, "{job}");
        if matches!(job["status"].as_str(), Some("completed" | "failed")) {
            return job;
        }
        assert!(std::time::Instant::now() < deadline, "job never finished: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn download(app: &TestApp, url: &str) -> (u16, String) {
    let r = app.client.get(url).send().await.expect("download");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// A customer search; a 503 (the read model did not reach the head within
/// the wait, on a loaded machine) is asked again.
async fn search(app: &TestApp, q: &str) -> Value {
    for _ in 0..10 {
        let (status, found) = call(app.client.get(format!("{}/customers/search?q={q}", prefix(app)))).await;
        if status != 503 {
            assert_eq!(status, 200, "{found}");
            return found;
        }
    }
    panic!("the users read model never caught up");
}

fn write(dir: &Path, name: &str, text: &[u8]) -> String {
    std::fs::write(dir.join(name), text).expect("write");
    format!("file://{name}")
}

#[tokio::test]
async fn a_csv_import_creates_every_valid_row_and_reports_every_rejected_one() {
    for db in fresh_databases().await {
        let (app, dir) = app_with_files(db, &[]).await;
        app.create_user(json!({"phone_number": "9000000001", "email": "taken@x.io", "username": "existing"})).await;
        let csv = b"username,phone_number,email,first_name,gender,meta\n\
            ann,9100000001,ann@x.io,Ann,female,\"{\"\"tier\"\":\"\"gold\"\"}\"\n\
            bob,9100000002,not-an-email,Bob,,\n\
            cid,9100000003,taken@x.io,Cid,,\n\
            dan,9100000004,dan@x.io,Dan,robot,\n\
            eve,9100000005,ann@x.io,Eve,,\n\
            ,9100000006,fay@x.io,Fay,,\n\
            gus,9100000007,gus@x.io,Gus,,\n\
            hal,9100000008,h\xffl@x.io,Hal,,\n\
            ivy,9100000009";
        let url = write(&dir, "users.csv", csv);
        let (status, job) = start_import(&app, &url, "csv").await;
        assert_eq!(status, 202, "{job}");
        for field in ["_id", "file_name", "file_format", "action_type", "application_id", "company_id"] {
            assert!(job[field].is_string(), "{field} in {job}");
        }
        assert_eq!(job["action_type"], "import");
        assert_eq!(job["created_by"]["name"], format!("apikey:{}", app.key.api_key));
        let id = job["_id"].as_str().expect("id").to_string();
        let done = finished(&app, &format!("/users/jobs/{id}")).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["count"], json!({"total": 9, "success": 2, "error": 7}), "{done}");
        // The users exist as a one-by-one import would have made them.
        let found = search(&app, "ann@x.io").await;
        let ann = &found["users"][0];
        assert_eq!(ann["first_name"], "Ann");
        assert_eq!(ann["meta"]["tier"], "gold");
        assert_eq!(app.total_users().await, 3);
        // Every rejected row is in the error file, by line, with its reason.
        let error_url = done["links"]["error"]["absolute_url"].as_str().expect("error link");
        let (status, errors) = download(&app, error_url).await;
        assert_eq!(status, 200);
        let lines: Vec<&str> = errors.lines().collect();
        assert_eq!(lines[0], "line,reason");
        assert_eq!(lines.len(), 8, "{errors}");
        let reason = |line: u32| {
            lines.iter().find(|l| l.starts_with(&format!("{line},"))).unwrap_or_else(|| panic!("line {line}: {errors}"))
        };
        assert!(reason(3).contains("email"), "{errors}");
        assert!(reason(4).contains("already taken"), "{errors}");
        assert!(reason(5).contains("gender"), "{errors}");
        assert!(reason(6).contains("duplicates line 2"), "{errors}");
        assert!(reason(7).contains("username"), "{errors}");
        assert!(reason(9).contains("UTF-8"), "{errors}");
        assert!(reason(10).contains("fields"), "{errors}");
        // Another tenant's credential cannot read the job or its files.
        let (other_key, other_token) = userstream_tests::create_key(&app.db, "2", None).await;
        let _ = other_key;
        let other = userstream_tests::client_with(&format!("Bearer {other_token}"));
        let foreign = format!("{}/users/jobs/{id}", app.fynd("2", APP));
        assert_eq!(other.get(foreign).send().await.expect("get").status(), 404);
        let foreign_file = error_url.replace("/company/1/", "/company/2/");
        assert_eq!(other.get(foreign_file).send().await.expect("get").status(), 404);
        // Listed with the SDK's filters.
        let (_, list) = call(
            app.client.get(format!("{}/users/jobs/import?status=completed&file_format=csv&search=USERS", prefix(&app))),
        )
        .await;
        assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
        let (_, none) = call(app.client.get(format!("{}/users/jobs/import?status=failed", prefix(&app)))).await;
        assert_eq!(none["items"], json!([]), "{none}");
        let (_, dated) = call(
            app.client.get(format!("{}/users/jobs/import?start_date=2000-01-01&end_date=2999-12-31", prefix(&app))),
        )
        .await;
        assert_eq!(dated["items"].as_array().map(Vec::len), Some(1), "{dated}");
        let (_, later) =
            call(app.client.get(format!("{}/users/jobs/import?start_date=2999-01-01", prefix(&app)))).await;
        assert_eq!(later["items"], json!([]), "{later}");
        let (status, _) =
            call(app.client.get(format!("{}/users/jobs/import?start_date=yesterday", prefix(&app)))).await;
        assert_eq!(status, 400);
        let (_, exports) = call(app.client.get(format!("{}/users/jobs/export", prefix(&app)))).await;
        assert_eq!(exports["items"], json!([]), "{exports}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test]
async fn a_jsonl_import_honours_the_platform_config_and_an_export_writes_the_users() {
    let db = userstream_tests::fresh_sqlite();
    let (app, dir) = app_with_files(db, &[]).await;
    app.set_config(json!({"required_fields": {"email": {"is_required": true, "level": "hard"}}})).await;
    let text = b"{\"username\":\"ann\",\"phone_number\":\"9100000001\",\"email\":\"ann@x.io\"}\n\
        {\"username\":\"bob\",\"phone_number\":\"9100000002\"}\n\
        \n\
        {\"username\":\"cid\",\"email\":\"cid@x.io\",\"shoe_size\":4}\n\
        {\"username\":\"dan\",\"email\":\"dan@x.io\",\"phone_number\":\"9100000004\"}\n\
        {\"username\":\"eve\",\"email\"";
    let url = write(&dir, "users.jsonl", text);
    let (status, job) = start_import(&app, &url, "jsonl").await;
    assert_eq!(status, 202, "{job}");
    let done = finished(&app, &format!("/users/jobs/{}", job["_id"].as_str().expect("a string"))).await;
    let (_, errors) = download(&app, done["links"]["error"]["absolute_url"].as_str().expect("a string")).await;
    assert_eq!(done["count"], json!({"total": 5, "success": 2, "error": 3}), "{done} {errors}");
    assert!(errors.contains("2,") && errors.contains("email is required"), "{errors}");
    assert!(errors.contains("4,") && errors.contains("unknown field"), "{errors}");
    assert!(errors.contains("6,") && errors.contains("not JSON"), "{errors}");

    // Export: every live user, as of one position.
    let (status, export) =
        call(app.client.post(format!("{}/users/jobs/export", prefix(&app))).json(&json!({"file_format": "csv"}))).await;
    assert_eq!(status, 202, "{export}");
    assert_eq!(export["action_type"], "export");
    let done = finished(&app, &format!("/users/jobs/{}", export["_id"].as_str().expect("a string"))).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["count"]["total"], 2);
    assert!(done["position"].as_i64().unwrap_or(0) > 0, "{done}");
    let (status, file) = download(&app, done["links"]["file"]["absolute_url"].as_str().expect("a string")).await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = file.lines().collect();
    assert_eq!(
        lines[0],
        "user_id,phone_number,email,username,first_name,last_name,gender,external_id,rr_id,meta,blocked,created_at",
        "{file}"
    );
    assert_eq!(lines.len(), 3, "{file}");
    assert!(file.contains(",ann@x.io,ann,") && file.contains(",dan@x.io,dan,"), "{file}");
    // JSONL, filtered like /customers/list.
    let body = json!({"file_format": "jsonl", "q": "dan@x.io"});
    let (_, export) = call(app.client.post(format!("{}/users/jobs/export", prefix(&app))).json(&body)).await;
    let done = finished(&app, &format!("/users/jobs/{}", export["_id"].as_str().expect("a string"))).await;
    let (_, file) = download(&app, done["links"]["file"]["absolute_url"].as_str().expect("a string")).await;
    let users: Vec<Value> = file.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(users.len(), 1, "{file}");
    assert_eq!(users[0]["username"], "dan");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_requests_are_refused_before_a_job_exists() {
    let (app, dir) = app_with_files(userstream_tests::fresh_sqlite(), &[("USERSTREAM_JOB_MAX_BYTES", "200")]).await;
    let outside = std::env::temp_dir().join(format!("userstream-outside-{}.csv", uuid::Uuid::now_v7().simple()));
    std::fs::write(&outside, "username,email\nann,a@x.io\n").expect("write");
    let wrong_header = write(&dir, "wrong.csv", b"name,mail\nann,a@x.io\n");
    let no_header = write(&dir, "empty.csv", b"");
    let big = write(&dir, "big.csv", format!("username,email\n{}", "ann,a@x.io\n".repeat(40)).as_bytes());
    std::fs::create_dir_all(dir.join("jobs/0123")).expect("jobs dir");
    let own = write(&dir, "jobs/0123/errors.csv", b"username,email\nann,a@x.io\n");
    let cases = [
        (format!("file://{}", outside.display()), "csv", "inside the files directory"),
        ("file://../x.csv".to_string(), "csv", "inside the files directory"),
        ("file://missing.csv".to_string(), "csv", "names no file"),
        ("ftp://example.com/x.csv".to_string(), "csv", "file:// or http"),
        (wrong_header, "csv", "unknown column"),
        (no_header, "csv", "header"),
        (big, "csv", "limit"),
        (own, "csv", "keeps for its jobs"),
        ("file://wrong.csv".to_string(), "xml", "csv or jsonl"),
    ];
    for (url, format, message) in cases {
        let (status, body) = start_import(&app, &url, format).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert!(body["message"].as_str().unwrap_or("").contains(message), "{url}: {body}");
    }
    let (status, body) =
        call(app.client.post(format!("{}/users/jobs/import", prefix(&app))).json(&json!({"file_format": "csv"}))).await;
    assert_eq!(status, 400, "{body}");
    let (_, list) = call(app.client.get(format!("{}/users/jobs/import", prefix(&app)))).await;
    assert_eq!(list["items"], json!([]), "no job was created: {list}");
    // Unknown job ids are a 404.
    for id in ["0123456789abcdef01234567", "not-an-id"] {
        let (status, _) = call(app.client.get(format!("{}/users/jobs/{id}", prefix(&app)))).await;
        assert_eq!(status, 404, "{id}");
        let (status, _) = call(app.client.get(format!("{}/user_attribute/bulk/{id}", prefix(&app)))).await;
        assert_eq!(status, 404, "{id}");
    }
    let _ = std::fs::remove_file(&outside);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_unreachable_source_or_a_404_fails_the_job_with_the_reason() {
    let allow = [("USERSTREAM_FETCH_ALLOW", "127.0.0.1")];
    let (app, dir) = app_with_files(userstream_tests::fresh_sqlite(), &allow).await;
    let port = userstream_tests::free_port();
    let missing = format!("{}/nothing-here.csv", app.base);
    for (url, reason) in [(format!("http://127.0.0.1:{port}/users.csv"), "unreachable"), (missing, "404")] {
        let (status, job) = start_import(&app, &url, "csv").await;
        assert_eq!(status, 202, "{job}");
        let done = finished(&app, &format!("/users/jobs/{}", job["_id"].as_str().expect("a string"))).await;
        assert_eq!(done["status"], "failed", "{done}");
        assert!(done["reason"].as_str().unwrap_or("").contains(reason), "{done}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_file_over_the_row_limit_fails_before_any_row_is_applied() {
    let (app, dir) = app_with_files(userstream_tests::fresh_sqlite(), &[("USERSTREAM_JOB_MAX_ROWS", "3")]).await;
    let rows: String = (0..4).map(|i| format!("user{i},91000000{i:02}\n")).collect();
    let url = write(&dir, "four.csv", format!("username,phone_number\n{rows}").as_bytes());
    let (_, job) = start_import(&app, &url, "csv").await;
    let done = finished(&app, &format!("/users/jobs/{}", job["_id"].as_str().expect("a string"))).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(done["reason"].as_str().unwrap_or("").contains("more than the limit of 3"), "{done}");
    assert_eq!(app.total_users().await, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_import_killed_midway_resumes_and_creates_no_user_twice() {
    for db in fresh_databases().await {
        let (mut app, dir) = app_with_files(db, &[]).await;
        let n = 60_000;
        let mut csv = String::from("username,phone_number,email\n");
        for i in 0..n {
            csv.push_str(&format!("user{i},9{i:09},u{i}@x.io\n"));
        }
        csv.push_str("user0,9999999999,dup@x.io\n");
        let url = write(&dir, "many.csv", csv.as_bytes());
        let (_, job) = start_import(&app, &url, "csv").await;
        let path = format!("/users/jobs/{}", job["_id"].as_str().expect("a string"));
        // Wait until some rows are recorded, then kill -9.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (_, now) = call(app.client.get(format!("{}{path}", prefix(&app)))).await;
            if now["count"]["success"].as_u64().unwrap_or(0) > 0 {
                assert_ne!(now["status"], "completed", "the import finished before the kill; make the file larger");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no progress: {now}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        app.crash_and_restart();
        let done = finished(&app, &path).await;
        assert_eq!(done["count"], json!({"total": n + 1, "success": n, "error": 1}), "{done}");
        assert_eq!(app.total_users().await, n as i64);
        let (_, errors) = download(&app, done["links"]["error"]["absolute_url"].as_str().expect("a string")).await;
        assert_eq!(errors.lines().count(), 2, "one rejected row, written once: {errors}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test]
async fn bulk_attribute_rows_are_validated_per_definition_and_reported_per_row() {
    for db in fresh_databases().await {
        let (app, dir) = app_with_files(db, &[]).await;
        let p = prefix(&app);
        let (_, def) = call(app.client.post(format!("{p}/user_attribute/definition")).json(&json!({
            "name": "Age", "slug": "age", "type": "number", "validations": [{"type": "min", "value": 0}]
        })))
        .await;
        let age = def["_id"].as_str().expect("definition id").to_string();
        let (_, group) = call(app.client.post(format!("{p}/user_group")).json(&json!({
            "name": "adults", "description": "18+",
            "conditions": [{"user_attribute_definition_id": age, "type": "gte", "value": "18"}]
        })))
        .await;
        let (ann, _) =
            app.create_user(json!({"username": "ann", "phone_number": "9100000001", "email": "ann@x.io"})).await;
        let (bob, _) = app.create_user(json!({"username": "bob", "phone_number": "9100000002"})).await;
        let ann_id = ann["_id"].as_str().expect("a string").to_string();
        let rows = json!([
            {"user_id": ann_id, "definition_id": age, "value": 30},
            {"phone_number": "9100000002", "slug": "age", "value": 12},
            {"email": "nobody@x.io", "slug": "age", "value": 40},
            {"user_id": ann_id, "slug": "height", "value": 1},
            {"user_id": ann_id, "slug": "age", "value": -1},
            {"slug": "age", "value": 5}
        ]);
        let (status, job) =
            call(app.client.patch(format!("{p}/user_attribute/bulk")).json(&json!({"rows": rows}))).await;
        assert_eq!(status, 202, "{job}");
        let id = job["job_id"].as_str().expect("job_id").to_string();
        let done = finished(&app, &format!("/user_attribute/bulk/{id}")).await;
        assert_eq!(done["count"], json!({"total": 6, "success": 2, "error": 4}), "{done}");
        let errors = done["errors"].as_array().expect("errors");
        let reasons: Vec<(u64, &str)> = errors
            .iter()
            .map(|e| (e["line"].as_u64().expect("a number"), e["reason"].as_str().expect("a string")))
            .collect();
        assert_eq!(reasons.iter().map(|r| r.0).collect::<Vec<_>>(), [3, 4, 5, 6], "{done}");
        assert!(reasons[0].1.contains("no user"), "{done}");
        assert!(reasons[1].1.contains("unknown attribute definition"), "{done}");
        assert!(reasons[2].1.contains("min"), "{done}");
        let (_, value) = call(app.client.get(format!("{p}/user_attribute/definition/{age}/user/{ann_id}"))).await;
        assert_eq!(value["attribute"]["value"], 30.0, "{value}");
        let bob_id = bob["_id"].as_str().expect("a string");
        let (_, value) = call(app.client.get(format!("{p}/user_attribute/definition/{age}/user/{bob_id}"))).await;
        assert_eq!(value["attribute"]["value"], 12.0, "{value}");
        // The rule group followed: ann is in, bob is not.
        let group_id = group["_id"].as_str().expect("group id");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, members) = call(app.client.get(format!("{p}/user_group/{group_id}/users"))).await;
            let ids: Vec<&str> = members["items"]
                .as_array()
                .map(|a| a.iter().filter_map(|m| m["user_id"].as_str()).collect())
                .unwrap_or_default();
            if ids == [ann_id.as_str()] {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "group members: {members}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A CSV file of rows, and its bad input.
        let csv = "email,slug,value\nann@x.io,age,31\nann@x.io,age,abc\n";
        let url = write(&dir, "values.csv", csv.as_bytes());
        let (status, job) =
            call(app.client.patch(format!("{p}/user_attribute/bulk")).json(&json!({"file_url": url}))).await;
        assert_eq!(status, 202, "{job}");
        let done = finished(&app, &format!("/user_attribute/bulk/{}", job["job_id"].as_str().expect("a string"))).await;
        assert_eq!(done["count"], json!({"total": 2, "success": 1, "error": 1}), "{done}");
        for bad in [
            json!({}),
            json!({"rows": []}),
            json!({"file_url": "file:///etc/passwd"}),
            json!({"rows": [{}], "file_url": url}),
        ] {
            let (status, body) = call(app.client.patch(format!("{p}/user_attribute/bulk")).json(&bad)).await;
            assert_eq!(status, 400, "{bad}: {body}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// POSTs `body` to `url` as an upload of `content_type`; the status and the answer.
async fn upload(app: &TestApp, query: &str, content_type: &str, body: Vec<u8>, key: Option<&str>) -> (u16, Value) {
    let mut request = app
        .client
        .post(format!("{}/users/jobs/import{query}", prefix(app)))
        .header("content-type", content_type)
        .body(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    call(request).await
}

/// The entries of the files directory's `jobs/` (none when it is absent).
fn job_dirs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("jobs"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_uploaded_file_is_imported_and_a_refused_upload_leaves_nothing() {
    for db in fresh_databases().await {
        let (app, dir) = app_with_files(db, &[]).await;
        // Over the 1 MiB body limit of other requests: an upload is bounded by --job-max-bytes.
        let mut csv = String::from("username,phone_number,email,first_name\n");
        csv.push_str("ann,9100000001,ann@x.io,Ann\nbob,9100000002,not-an-email,Bob\n");
        // Rows refused at once (no valid email), to pass 1 MiB cheaply.
        for i in 0..20_000 {
            csv.push_str(&format!("pad{i},,not-an-email-{},\n", "x".repeat(48)));
        }
        assert!(csv.len() > 1024 * 1024);
        let (status, job) =
            upload(&app, "?file_name=people.csv", "text/csv", csv.clone().into_bytes(), Some("up-1")).await;
        assert_eq!(status, 202, "{job}");
        assert_eq!(job["file_name"], "people.csv", "{job}");
        let id = job["_id"].as_str().expect("id").to_string();
        // The same request again under its Idempotency-Key: the same job, no second copy kept.
        let (status, again) = upload(&app, "?file_name=people.csv", "text/csv", csv.into_bytes(), Some("up-1")).await;
        assert_eq!((status, again["_id"].as_str()), (202, Some(id.as_str())), "{again}");
        let done = finished(&app, &format!("/users/jobs/{id}")).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!((done["count"]["success"].as_i64(), done["count"]["total"].as_i64()), (Some(1), Some(20_002)));
        let (_, errors) = download(&app, done["links"]["error"]["absolute_url"].as_str().expect("a string")).await;
        assert!(errors.contains("3,email is not a valid email"), "{errors}");
        assert_eq!(search(&app, "ann@x.io").await["users"].as_array().map(Vec::len), Some(1));
        assert_eq!(job_dirs(&dir), vec![id.clone()], "one job, one directory");

        // JSON lines.
        let jsonl = b"{\"username\":\"cid\",\"phone_number\":\"9100000003\",\"email\":\"cid@x.io\"}\n".to_vec();
        let (status, job) = upload(&app, "", "application/x-ndjson", jsonl, None).await;
        assert_eq!((status, job["file_name"].as_str()), (202, Some("upload.jsonl")), "{job}");
        let done = finished(&app, &format!("/users/jobs/{}", job["_id"].as_str().expect("id"))).await;
        assert_eq!(done["count"]["success"], 1, "{done}");
    }

    // Refusals, before any job exists, with nothing left in the files directory.
    let (app, dir) = app_with_files(userstream_tests::fresh_sqlite(), &[("USERSTREAM_JOB_MAX_BYTES", "200")]).await;
    let big = format!("username,email\n{}", "ann,a@x.io\n".repeat(40)).into_bytes();
    for (query, content_type, body, status, needle) in [
        ("", "text/csv", big.clone(), 413, "--job-max-bytes"),
        ("", "text/csv", b"name,mail\nann,a@x.io\n".to_vec(), 400, "upload.csv"),
        ("", "text/csv", Vec::new(), 400, "upload.csv"),
        ("?file_name=..%2Fx.csv", "text/csv", b"username\nann\n".to_vec(), 400, "file_name"),
        ("?file_name=..", "text/csv", b"username\nann\n".to_vec(), 400, "file_name"),
    ] {
        let (got, err) = upload(&app, query, content_type, body, None).await;
        assert_eq!(got, status, "{query} {content_type}: {err}");
        assert!(err["message"].as_str().is_some_and(|m| m.contains(needle)), "{needle}: {err}");
    }
    // Over the bound without a declared length (chunked): cut as it streams.
    let status = chunked_upload(&app, &big).await;
    assert_eq!(status, 413);
    let (_, list) = call(app.client.get(format!("{}/users/jobs/import", prefix(&app)))).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");
    assert_eq!(job_dirs(&dir), Vec::<String>::new(), "a refused upload leaves no file");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An upload with `Transfer-Encoding: chunked` (no Content-Length), written
/// on a raw connection; the answer's status.
async fn chunked_upload(app: &TestApp, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let base = app.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(base).await.expect("connect");
    let path = format!("{}/users/jobs/import", prefix(app)).replace(&app.base, "");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {base}\r\nAuthorization: Bearer {}\r\nContent-Type: text/csv\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        app.token
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    for chunk in body.chunks(64) {
        let _ = stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await;
        let _ = stream.write_all(chunk).await;
        let _ = stream.write_all(b"\r\n").await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}
