//! The admin console in a real browser: Debian's Chromium driven by
//! playwright-core (`tests/console/console.mjs`) against the real binary.
//! `deploy/test.sh` installs both.

use serde_json::json;
use std::path::Path;
use time::OffsetDateTime;
use userstream_api::access::Access;
use userstream_eventlog::Db;
use userstream_tests::{alice, call, fresh_databases, TestApp, TestDb, APP, COMPANY};

const OTHER_APP: &str = "000000000000000000000002";

#[tokio::test]
async fn every_console_screen_works_in_chromium_on_every_backend() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run `npm ci --prefix tests/console` (deploy/test.sh does)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string());
    assert!(Path::new(&chromium).exists(), "{chromium} is missing: apt-get install chromium (deploy/test.sh does)");
    for (n, db) in fresh_databases().await.into_iter().enumerate() {
        // Screenshots from the first backend's run.
        let screenshots = if n == 0 { std::env::var("CONSOLE_SCREENSHOTS").unwrap_or_default() } else { String::new() };
        drive(db, &dir, &chromium, &screenshots).await;
    }
}

/// Prepares a service on `db` and drives the console against it.
async fn drive(db: TestDb, dir: &Path, chromium: &str, screenshots: &str) {
    let files = std::env::temp_dir().join(format!("userstream-console-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&files).expect("files dir");
    // One row the import takes, one it rejects (its reason goes to the error file).
    std::fs::write(
        files.join("users.csv"),
        "username,phone_number,email\nimported,9100000001,imported@x.io\nbad,9100000002,not-an-email\n",
    )
    .expect("write");
    let app = TestApp::spawn_on(db, &[("USERSTREAM_FILES_DIR", &files.display().to_string())]).await;
    let p = app.fynd(COMPANY, APP);
    let (alice, _) = app.create_user(alice()).await;
    let alice_id = alice["_id"].as_str().expect("id").to_string();
    // Two sessions: the console revokes one, archiving ends the other.
    for domain in ["shop.example", "app.example"] {
        let (status, session) = call(
            app.client.post(format!("{p}/customers/session")).json(&json!({"user_id": alice_id, "domain": domain})),
        )
        .await;
        assert_eq!(status, 200, "{session}");
    }
    let mut xss = userstream_tests::user_body(2);
    xss["first_name"] = json!("<img src=x onerror=window.__xss=1>");
    xss["meta"] = json!({"note": "<script>window.__xss=2</script>"});
    let (xss_user, _) = app.create_user(xss).await;
    let xss_id = xss_user["_id"].as_str().expect("id").to_string();

    // An attribute, alice's value, and a rule group she is not in yet.
    let city = created(
        &app,
        &format!("{p}/user_attribute/definition"),
        json!({"name": "City", "slug": "city", "type": "string"}),
    )
    .await;
    set(&app, &p, &city, &alice_id, "goa").await;
    let pan = json!({"name": "PAN", "slug": "pan", "type": "string", "encrypted": true});
    let pan = created(&app, &format!("{p}/user_attribute/definition"), pan).await;
    set(&app, &p, &pan, &alice_id, "ABCDE1234F").await;
    set(&app, &p, &city, &xss_id, "<svg onload=window.__xss=3>").await;
    let group = created(
        &app,
        &format!("{p}/user_group"),
        json!({
            "name": "Pune", "description": "customers in pune",
            "conditions": [{"user_attribute_definition_id": city, "type": "eq", "value": "pune"}]
        }),
    )
    .await;

    // More customers with a city than a page of members holds (20).
    for n in 10..31 {
        let (u, _) = app.create_user(userstream_tests::user_body(n)).await;
        set(&app, &p, &city, u["_id"].as_str().expect("id"), "goa").await;
    }
    let everyone = created(
        &app,
        &format!("{p}/user_group"),
        json!({
            "name": "Has a city", "description": "d",
            "conditions": [{"user_attribute_definition_id": city, "type": "exists", "value": ""}]
        }),
    )
    .await;
    // alice, the HTML one and those 21.
    settled(&app, &format!("{p}/user_group/{everyone}"), 23).await;

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
        "email": alice["emails"][0]["email"], "xss_id": xss_id, "other_id": other["user"]["_id"],
        "group_id": group, "paged_group_id": everyone, "paged_total": 23, "city": city, "expired_token": expired,
        "screenshots": screenshots,
    });
    let stdout = userstream_tests::run_script(
        Path::new("node"),
        dir,
        &["console.mjs", &setup.to_string()],
        &[("CHROMIUM", chromium)],
    )
    .await;
    assert!(stdout.contains("passed"), "{stdout}");
}

/// POSTs `body` to `url`, which must answer 201; the new thing's id.
async fn created(app: &TestApp, url: &str, body: serde_json::Value) -> String {
    let (status, made) = call(app.client.post(url).json(&body)).await;
    assert_eq!(status, 201, "{url} {body}: {made}");
    made["_id"].as_str().expect("id").to_string()
}

/// Sets the user's value of the attribute `definition` (prefix `p`).
async fn set(app: &TestApp, p: &str, definition: &str, user: &str, value: &str) {
    let url = format!("{p}/user_attribute/definition/{definition}/user/{user}");
    let body = json!({"attribute": {"value": value}, "customer_overridden": true});
    assert_eq!(call(app.client.put(&url).json(&body)).await.0, 200, "{url}");
}

/// Waits (bounded) until the group is active with `n` members.
async fn settled(app: &TestApp, url: &str, n: i64) {
    for _ in 0..400 {
        let (_, g) = call(app.client.get(url)).await;
        if g["status"] == "active" && g["total_users"] == n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("{url} never had {n} members: {}", call(app.client.get(url)).await.1);
}

/// The console's own files: small, cached by version, no inline script,
/// nothing from another origin.
#[tokio::test]
async fn the_console_assets_are_small_cached_and_local() {
    let app = TestApp::spawn().await;
    let base = app.base.clone();
    let get = |path: String| {
        let url = format!("{base}{path}");
        async move {
            let r = reqwest::get(&url).await.expect("asset");
            assert_eq!(r.status(), 200, "{path}");
            let headers = r.headers().clone();
            assert!(headers["content-security-policy"].to_str().is_ok_and(|p| p.contains("script-src 'self'")));
            let cache = headers["cache-control"].to_str().expect("cache-control").to_string();
            let kind = headers["content-type"].to_str().expect("content-type").to_string();
            (kind, cache, r.text().await.expect("body"))
        }
    };
    let (kind, cache, page) = get("/console".to_string()).await;
    assert!(kind.starts_with("text/html") && cache == "no-cache", "{kind}, {cache}");
    assert!(!page.contains("<script>") && !page.contains("onload="), "no inline script");
    let mut total = page.len();
    // The page names its assets with this binary's version: those are kept
    // a year; the same path without it (or with another) is revalidated.
    let assets: Vec<&str> = page.split('"').filter(|s| s.starts_with("/console/app.")).collect();
    assert_eq!(assets.len(), 2, "{page}");
    for asset in assets {
        let (path, version) = asset.split_once("?v=").expect("a versioned URL");
        assert_eq!(version.len(), 16, "{asset}");
        let (kind, cache, body) = get(asset.to_string()).await;
        assert_eq!(cache, "public, max-age=31536000, immutable", "{asset}");
        let expected = if path.ends_with(".js") { "text/javascript" } else { "text/css" };
        assert!(kind.starts_with(expected), "{asset}: {kind}");
        for remote in ["http://", "https://", "//cdn"] {
            assert!(!body.contains(remote), "{path} names {remote}");
        }
        total += body.len();
        for other in [path.to_string(), format!("{path}?v=0000000000000000")] {
            let (_, cache, again) = get(other.clone()).await;
            assert_eq!((cache.as_str(), again.len()), ("no-cache", body.len()), "{other}");
        }
    }
    assert!(total < 40 * 1024, "the console is {total} bytes");
}
