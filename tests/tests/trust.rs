//! Trust: fetches that cannot reach the server's own network.

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use userstream_tests::{call, TestApp, APP, COMPANY};

/// A file server on loopback that counts the requests it gets: `/members.csv`
/// (one member row for `user`), `/big.csv` (6 MB), and `/hop` (a redirect to
/// the same file on 127.0.0.2, another loopback address).
struct Upstream {
    port: u16,
    hits: Arc<AtomicUsize>,
}

async fn upstream(user: String) -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new()
        .route("/members.csv", get(move || async move { format!("user_id,action\n{user},add\n") }))
        .route("/big.csv", get(|| async { format!("email,action\n{}", "x@example.com,add\n".repeat(400_000)) }))
        .route(
            "/hop",
            get(move || async move {
                (StatusCode::FOUND, [(header::LOCATION, format!("http://127.0.0.2:{port}/members.csv"))])
                    .into_response()
            }),
        )
        .layer(axum::middleware::from_fn(move |req, next: axum::middleware::Next| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { next.run(req).await }
        }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Upstream { port, hits }
}

async fn manual_group(app: &TestApp) -> String {
    let p = app.fynd(COMPANY, APP);
    let (status, g) =
        call(app.client.post(format!("{p}/user_group")).json(&json!({"name": "Fetched", "description": "manual"})))
            .await;
    assert_eq!(status, 201, "{g}");
    g["_id"].as_str().expect("id").to_string()
}

async fn members_from(app: &TestApp, group: &str, url: &str) -> (u16, Value) {
    let path = format!("{}/user_group/{group}", app.fynd(COMPANY, APP));
    call(app.client.patch(path).json(&json!({"type": "file_url", "file_url": url}))).await
}

#[tokio::test]
async fn fetches_never_reach_internal_addresses_unless_allowed_and_redirects_are_checked_too() {
    let app = TestApp::spawn().await;
    let (user, _) = app.create_user(userstream_tests::user_body(1)).await;
    let user = user["_id"].as_str().expect("id").to_string();
    let up = upstream(user.clone()).await;
    let group = manual_group(&app).await;
    let head = app.head().await;
    // By default: refused before any request is sent, with the rule named.
    for (url, class) in [
        (format!("http://127.0.0.1:{}/members.csv", up.port), "loopback"),
        (format!("http://localhost:{}/members.csv", up.port), "loopback"),
        (format!("http://[::1]:{}/members.csv", up.port), "loopback"),
        ("http://169.254.169.254/latest/meta-data/".to_string(), "link-local"),
        ("http://10.0.0.1/members.csv".to_string(), "private"),
        ("https://192.168.0.1/members.csv".to_string(), "private"),
    ] {
        let (status, err) = members_from(&app, &group, &url).await;
        assert_eq!(status, 400, "{url}: {err}");
        let message = err["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("a {class} address")) && message.contains("--fetch-allow"), "{url}: {err}");
    }
    // A bulk job with such a source is refused the same way, and no job is made.
    let p = app.fynd(COMPANY, APP);
    let source = format!("http://127.0.0.1:{}/members.csv", up.port);
    let body = json!({"absolute_url": source, "file_format": "csv", "relative_url": "users.csv"});
    let (status, err) = call(app.client.post(format!("{p}/users/jobs/import")).json(&body)).await;
    assert_eq!(status, 400, "{err}");
    assert!(err["message"].as_str().unwrap_or_default().contains("loopback"), "{err}");
    let (status, err) =
        call(app.client.patch(format!("{p}/user_attribute/bulk")).json(&json!({"file_url": source}))).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(up.hits.load(Ordering::SeqCst), 0, "no request reached the upstream");
    assert_eq!(app.head().await, head, "nothing was appended");

    // --fetch-allow opens 127.0.0.1 (only): the file is fetched and applied...
    let app = TestApp::spawn_on(app.db.clone(), &[("USERSTREAM_FETCH_ALLOW", "127.0.0.1")]).await;
    let (status, g) = members_from(&app, &group, &format!("http://127.0.0.1:{}/members.csv", up.port)).await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["total_users"], 1, "{g}");
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
    // ...but a redirect to another loopback address is refused when it is followed.
    let (status, err) = members_from(&app, &group, &format!("http://127.0.0.1:{}/hop", up.port)).await;
    assert_eq!(status, 400, "{err}");
    let message = err["message"].as_str().unwrap_or_default();
    assert!(message.contains("127.0.0.2") && message.contains("loopback"), "{err}");
    assert_eq!(up.hits.load(Ordering::SeqCst), 2, "only the first hop was requested");
    // A body over the limit is cut off, whatever it claims.
    let (status, err) = members_from(&app, &group, &format!("http://127.0.0.1:{}/big.csv", up.port)).await;
    assert_eq!(status, 400, "{err}");
    assert!(err["message"].as_str().unwrap_or_default().contains("larger than"), "{err}");
}

#[tokio::test]
async fn a_bad_fetch_allow_stops_the_service_at_start_with_the_reason() {
    let db = userstream_tests::fresh_sqlite();
    let out = std::process::Command::new(userstream_tests::binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &db.url, "--fetch-allow", "10.0.0.0/33"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--fetch-allow") && stderr.contains("10.0.0.0/33"), "{stderr}");
}
