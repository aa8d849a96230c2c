//! The admin console in a real browser: Debian's Chromium driven by
//! playwright-core (`tests/console/console.mjs`) against the real binary.
//! `deploy/test.sh` installs both.

use serde_json::json;
use std::path::Path;
use userstream_tests::{alice, TestApp, APP, COMPANY};

#[tokio::test]
async fn the_console_signs_in_finds_a_customer_shows_its_history_and_blocks_it() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run `npm ci --prefix tests/console` (deploy/test.sh does)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string());
    assert!(Path::new(&chromium).exists(), "{chromium} is missing: apt-get install chromium (deploy/test.sh does)");
    let app = TestApp::spawn().await;
    let (_, _) = app.create_user(alice()).await;
    let mut xss = userstream_tests::user_body(2);
    xss["first_name"] = json!("<img src=x onerror=window.__xss=1>");
    let (xss_user, _) = app.create_user(xss).await;
    let xss_id = xss_user["_id"].as_str().expect("id").to_string();
    let email = alice()["email"].as_str().expect("email").to_string();
    let shots = std::env::var("CONSOLE_SCREENSHOTS").unwrap_or_default();
    let args = ["console.mjs", &app.base, COMPANY, APP, &app.key.api_key, &app.key.api_secret, &email, &xss_id, &shots];
    let stdout = userstream_tests::run_script(Path::new("node"), &dir, &args, &[("CHROMIUM", &chromium)]).await;
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
