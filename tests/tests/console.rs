//! The admin console in a real browser: Debian's Chromium driven by
//! playwright-core (`tests/console/console.mjs`) against the real binary.
//! `deploy/test.sh` installs both.

use serde_json::json;
use std::path::Path;
use time::OffsetDateTime;
use userstream_api::access::Access;
use userstream_eventlog::Db;
use userstream_tests::{alice, call, fresh_sqlite, TestApp, APP, COMPANY};

const OTHER_APP: &str = "000000000000000000000002";

#[tokio::test]
async fn the_console_signs_in_finds_a_customer_shows_its_history_and_blocks_it() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run `npm ci --prefix tests/console` (deploy/test.sh does)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string());
    assert!(Path::new(&chromium).exists(), "{chromium} is missing: apt-get install chromium (deploy/test.sh does)");
    let files = std::env::temp_dir().join(format!("userstream-console-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&files).expect("files dir");
    // One row the import takes, one it rejects (its reason goes to the error file).
    std::fs::write(files.join("users.csv"), "username,phone_number,email\nimported,9100000001,imported@x.io\nbad,9100000002,not-an-email\n")
        .expect("write");
    let app = TestApp::spawn_on(fresh_sqlite(), &[("USERSTREAM_FILES_DIR", &files.display().to_string())]).await;
    let p = app.fynd(COMPANY, APP);
    let (alice, _) = app.create_user(alice()).await;
    let alice_id = alice["_id"].as_str().expect("id").to_string();
    let mut xss = userstream_tests::user_body(2);
    xss["first_name"] = json!("<img src=x onerror=window.__xss=1>");
    let (xss_user, _) = app.create_user(xss).await;

    // An attribute, alice's value, and a rule group she is not in yet.
    let (status, city) = call(
        app.client
            .post(format!("{p}/user_attribute/definition"))
            .json(&json!({"name": "City", "slug": "city", "type": "string"})),
    )
    .await;
    assert_eq!(status, 201, "{city}");
    let city = city["_id"].as_str().expect("id").to_string();
    let value = |v: &str| json!({"attribute": {"value": v}, "customer_overridden": true});
    let set_city = format!("{p}/user_attribute/definition/{city}/user/{alice_id}");
    assert_eq!(call(app.client.put(&set_city).json(&value("goa"))).await.0, 200);
    let (status, group) = call(app.client.post(format!("{p}/user_group")).json(&json!({
        "name": "Pune", "description": "customers in pune",
        "conditions": [{"user_attribute_definition_id": city, "type": "eq", "value": "pune"}]
    })))
    .await;
    assert_eq!(status, 201, "{group}");

    // A customer of another application of the same company.
    let (status, other) = call(
        app.client.post(format!("{}/customers", app.fynd(COMPANY, OTHER_APP))).json(&userstream_tests::user_body(3)),
    )
    .await;
    assert_eq!(status, 200, "{other}");

    // A token of the same key that expired an hour ago.
    let access = Access::open(Db::connect(&app.db.url).await.expect("db")).await.expect("access");
    let credential = access.verify_secret(&app.key.api_key, &app.key.api_secret).await.expect("verify").expect("key");
    let expired = access.issue_token(&credential, OffsetDateTime::now_utc() - time::Duration::hours(2));

    let setup = json!({
        "base": app.base, "company": COMPANY, "application": APP,
        "key": app.key.api_key, "secret": app.key.api_secret, "token": app.token,
        "email": alice["emails"][0]["email"], "xss_id": xss_user["_id"], "other_id": other["user"]["_id"],
        "group_id": group["_id"], "city": city, "expired_token": expired,
        "screenshots": std::env::var("CONSOLE_SCREENSHOTS").unwrap_or_default(),
    });
    let stdout = userstream_tests::run_script(
        Path::new("node"),
        &dir,
        &["console.mjs", &setup.to_string()],
        &[("CHROMIUM", &chromium)],
    )
    .await;
    assert!(stdout.contains("passed"), "{stdout}");
}

/// The console's own files: small, cached, no inline script, nothing from
/// another origin.
#[tokio::test]
async fn the_console_assets_are_small_cached_and_local() {
    let app = TestApp::spawn().await;
    let mut total = 0;
    for (path, kind) in
        [("/console", "text/html"), ("/console/app.js", "text/javascript"), ("/console/app.css", "text/css")]
    {
        let r = reqwest::get(format!("{}{path}", app.base)).await.expect("asset");
        assert_eq!(r.status(), 200, "{path}");
        let headers = r.headers().clone();
        assert!(headers["content-type"].to_str().is_ok_and(|t| t.starts_with(kind)), "{path}");
        assert!(headers["content-security-policy"].to_str().is_ok_and(|p| p.contains("script-src 'self'")));
        assert!(headers.contains_key("cache-control"), "{path}");
        let body = r.text().await.expect("body");
        for remote in ["http://", "https://", "//cdn"] {
            assert!(!body.contains(remote), "{path} names {remote}");
        }
        total += body.len();
    }
    assert!(total < 40 * 1024, "the console is {total} bytes");
}
