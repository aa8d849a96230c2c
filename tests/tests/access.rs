//! Credentials and tenant isolation, black-box: the token endpoint, bearer
//! checks on both surfaces, and a walk over every route with a foreign
//! credential and foreign ids.

use reqwest::StatusCode;
use serde_json::{json, Value};
use userstream_tests::{client_with, create_key, TestApp, APP, COMPANY};

fn token_url(app: &TestApp, company: &str) -> String {
    format!("{}/service/panel/authentication/v1.0/company/{company}/oauth/token", app.base)
}

#[tokio::test]
async fn the_token_endpoint_issues_company_tokens_and_refuses_bad_requests_with_oauth_errors() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();
    let (key, secret) = (&app.key.api_key, &app.key.api_secret);
    let form = [("grant_type", "client_credentials")];

    let r = http.post(token_url(&app, COMPANY)).basic_auth(key, Some(secret)).form(&form).send().await.expect("token");
    assert_eq!(r.status(), 200);
    let token: Value = r.json().await.expect("json");
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["expires_in"], 3600);
    assert!(token.get("refresh_token").is_none(), "client credentials get no refresh token: {token}");
    let access = token["access_token"].as_str().expect("access_token");
    let r = client_with(&format!("Bearer {access}")).get(format!("{}/list", app.customers())).send().await;
    assert_eq!(r.expect("list").status(), 200);

    let cases = [
        (http.post(token_url(&app, COMPANY)).basic_auth(key, Some("wrong")).form(&form), 401, "invalid_client"),
        (
            http.post(token_url(&app, COMPANY)).basic_auth("ffffffffffffffffffffffff", Some(secret)).form(&form),
            401,
            "invalid_client",
        ),
        (http.post(token_url(&app, COMPANY)).form(&form), 401, "invalid_client"),
        (http.post(token_url(&app, "2")).basic_auth(key, Some(secret)).form(&form), 401, "invalid_client"),
        (
            http.post(token_url(&app, COMPANY)).basic_auth(key, Some(secret)).form(&[("scope", "x")]),
            400,
            "invalid_request",
        ),
        (
            http.post(token_url(&app, COMPANY)).basic_auth(key, Some(secret)).form(&[("grant_type", "password")]),
            400,
            "unsupported_grant_type",
        ),
        (
            http.post(token_url(&app, COMPANY))
                .basic_auth(key, Some(secret))
                .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")]),
            400,
            "unsupported_grant_type",
        ),
    ];
    for (request, status, error) in cases {
        let r = request.send().await.expect("send");
        assert_eq!(r.status().as_u16(), status);
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"], error, "{body}");
        assert!(body["error_description"].is_string() && body["message"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn missing_expired_or_tampered_credentials_are_refused_on_both_surfaces() {
    let app = TestApp::spawn().await;
    let list = format!("{}/list", app.customers());
    let passage = format!("{}/users", app.passage_app(APP));

    let r = reqwest::Client::new().get(&list).send().await.expect("list");
    assert_eq!(r.status(), 401);
    assert!(r.json::<Value>().await.expect("json")["message"].is_string());
    let r = reqwest::Client::new().get(&passage).send().await.expect("list");
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.expect("json")["code"], "invalid_access_token");

    // The SDK without a token sends `Bearer null`.
    assert_eq!(client_with("Bearer null").get(&list).send().await.expect("list").status(), 401);

    // Tampered: one character of the signed token changed.
    let mut bytes = app.token.clone().into_bytes();
    let i = bytes.len() - 5;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).expect("ascii");
    assert_eq!(client_with(&format!("Bearer {tampered}")).get(&list).send().await.expect("list").status(), 401);

    // Expired: a token issued two hours ago with the server's own key.
    let db = userstream_eventlog::Db::connect(&app.db.url).await.expect("db");
    let access = userstream_api::access::Access::open(db).await.expect("access");
    let credential = access.verify_secret(&app.key.api_key, &app.key.api_secret).await.expect("db").expect("key");
    let old = access.issue_token(&credential, time::OffsetDateTime::now_utc() - time::Duration::hours(2));
    assert_eq!(client_with(&format!("Bearer {old}")).get(&list).send().await.expect("list").status(), 401);

    // A Passage bearer with a wrong secret.
    let wrong = format!("{}.{}x", app.key.api_key, app.key.api_secret);
    let r = client_with(&format!("Bearer {wrong}")).get(&passage).send().await.expect("list");
    assert_eq!(r.status(), 401);

    // x-fp-* signing headers are accepted and ignored.
    let r = app
        .client
        .get(&list)
        .header("x-fp-date", "20261122T232454Z")
        .header("x-fp-signature", "v1.1:0000")
        .header("x-fp-sdk-version", "3.4.2")
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), 200);
}

/// Fills the parameters of a route template.
fn fill(template: &str, company: &str, app: &str, user_id: &str) -> String {
    template
        .replace("{company_id}", company)
        .replace("{application_id}", app)
        .replace("{app_id}", app)
        .replace("{user_id}", user_id)
}

/// A body that names the victim's user wherever a route takes one (and
/// registers the attacker's own contact where a route creates a user).
fn body_naming(user_id: &str) -> Value {
    json!({
        "user_id": user_id,
        "email": "mallory@evil.example",
        "phone_number": "9876500666",
        "username": "mallory",
        "status": false,
        "domain": "evil.example",
        "first_name": "Mallory",
        "attributes": [{"definition_id": user_id, "value": 1}],
        "definition_ids": [user_id],
    })
}

#[tokio::test]
async fn every_route_with_a_foreign_credential_or_a_foreign_id_leaks_nothing() {
    let app = TestApp::spawn().await;
    let victim_email = "victim@example.com";
    let (victim, p) = app
        .create_user(
            json!({"phone_number": "9876543210", "email": victim_email, "username": "victim", "first_name": "Vic"}),
        )
        .await;
    let victim_id = victim["_id"].as_str().expect("id").to_string();
    let session = app
        .client
        .post(format!("{}/session", app.customers()))
        .json(&json!({"user_id": victim_id, "domain": "shop.example"}))
        .send()
        .await
        .expect("session");
    assert_eq!(session.status(), 200);
    let version = |v: &Value| v["user"]["updated_at"].clone();
    let before = app
        .client
        .get(format!("{}/{victim_id}", app.customers()))
        .header("x-min-position", p.to_string())
        .send()
        .await
        .expect("get")
        .json::<Value>()
        .await
        .expect("json");

    // Company 2's key (bound to its own app), and company 1's key bound to another app.
    let other_app = "0000000000000000000000ff";
    let (foreign, foreign_token) = create_key(&app.db, "2", Some(other_app)).await;
    let (_, narrow_token) = create_key(&app.db, COMPANY, Some(other_app)).await;
    // Company 2's unbound key: the victim's app id under another company.
    let (foreign_wide, foreign_wide_token) = create_key(&app.db, "2", None).await;
    let fynd_wide = client_with(&format!("Bearer {foreign_wide_token}"));
    let passage_wide = client_with(&format!("Bearer {}", foreign_wide.bearer));
    let fynd_foreign = client_with(&format!("Bearer {foreign_token}"));
    let passage_foreign = client_with(&format!("Bearer {}", foreign.bearer));
    let fynd_narrow = client_with(&format!("Bearer {narrow_token}"));

    let routes = userstream_api::route_table();
    assert!(routes.iter().any(|(_, p)| p.starts_with("/v1/apps")), "both surfaces are walked");
    assert!(routes.len() >= 20, "{routes:?}");
    let head = app.head().await;
    let mut walked = 0;
    for (method, template) in &routes {
        let passage = template.starts_with("/v1/");
        // (who, company, app, expected statuses)
        let attempts: Vec<(&reqwest::Client, &str, &str, &[u16])> = if passage {
            vec![
                // A key of company 2 bound to another app: 403 on the victim's app.
                (&passage_foreign, "-", APP, &[403]),
                // The same key on its own app, with the victim's id: not found / empty.
                (&passage_foreign, "-", other_app, &[200, 201, 400, 404, 409]),
                // Company 2's unbound key on the same app id: company 2's (empty) tenant.
                (&passage_wide, "-", APP, &[200, 201, 400, 404, 409]),
            ]
        } else {
            vec![
                (&fynd_foreign, COMPANY, APP, &[403]),
                (&fynd_narrow, COMPANY, APP, &[403]),
                (&fynd_wide, COMPANY, APP, &[403]),
                // Company 2 on its own path with the victim's app id and ids.
                (&fynd_wide, "2", APP, &[200, 400, 404, 409]),
                // Company 1's own path of another app, the victim's ids in it.
                (&app.client, COMPANY, other_app, &[200, 400, 404, 409]),
            ]
        };
        for (client, company, tenant_app, expected) in attempts {
            let url = format!(
                "{}{}?id={victim_id}&session_id=x&q={victim_email}&query={victim_id}&reason=r",
                app.base,
                fill(template, company, tenant_app, &victim_id)
            );
            let mut request = client.request(method.clone(), &url);
            if *method != reqwest::Method::GET {
                request = request.json(&body_naming(&victim_id));
            }
            let r = request.send().await.expect("send");
            let status = r.status().as_u16();
            let text = r.text().await.expect("body");
            assert!(expected.contains(&status), "{method} {url}: {status} not in {expected:?}: {text}");
            assert!(
                !text.contains(victim_email) && !text.contains("\"Vic\""),
                "{method} {url} leaked the victim: {text}"
            );
            if status == 200 {
                assert!(!text.contains(&format!("\"_id\":\"{victim_id}\"")), "{method} {url}: {text}");
            }
            walked += 1;
        }
    }
    assert!(walked >= routes.len() * 3);

    // Nothing of the victim changed, and its session survived.
    let after = app
        .client
        .get(format!("{}/{victim_id}", app.customers()))
        .header("x-min-position", app.head().await.to_string())
        .send()
        .await
        .expect("get")
        .json::<Value>()
        .await
        .expect("json");
    assert_eq!(version(&after), version(&before), "the victim was changed: {after}");
    assert_eq!(after["user"]["status"], "active");
    let sessions: Value = app
        .client
        .get(format!("{}/sessions?id={victim_id}", app.customers()))
        .send()
        .await
        .expect("sessions")
        .json()
        .await
        .expect("json");
    assert_eq!(sessions["items"].as_array().map(Vec::len), Some(1), "{sessions}");
    assert!(app.head().await >= head);
}

#[tokio::test]
async fn apikey_create_prints_a_key_that_works_for_its_company_and_application_only() {
    let app = TestApp::spawn().await;
    let out = std::process::Command::new(userstream_tests::binary())
        .args(["apikey", "create", "--company", "7", "--application", "aaaaaaaaaaaaaaaaaaaaaaa7", "--json"])
        .args(["--database", &app.db.url])
        .output()
        .expect("apikey create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key: Value = serde_json::from_slice(&out.stdout).expect("json");
    let bearer = key["bearer"].as_str().expect("bearer");
    let passage = client_with(&format!("Bearer {bearer}"));
    let r = passage.get(format!("{}/users", app.passage_app("aaaaaaaaaaaaaaaaaaaaaaa7"))).send().await.expect("list");
    assert_eq!(r.status(), 200);
    let r = passage.get(format!("{}/users", app.passage_app(APP))).send().await.expect("list");
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.expect("json")["code"], "operation_not_allowed");
    let r = reqwest::Client::new()
        .post(token_url(&app, "7"))
        .basic_auth(key["api_key"].as_str().expect("key"), key["api_secret"].as_str())
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), StatusCode::OK);

    // The secret is stored as an argon2 hash, never in clear.
    let db = userstream_eventlog::Db::connect(&app.db.url).await.expect("db");
    let hashes: Vec<String> =
        sqlx::query_scalar("SELECT secret_hash FROM api_keys").fetch_all(&db.pool).await.expect("select");
    assert!(hashes.iter().all(|h| h.starts_with("$argon2id$")), "{hashes:?}");
    let secret = key["api_secret"].as_str().expect("secret");
    assert!(hashes.iter().all(|h| !h.contains(secret)));
}

#[tokio::test]
async fn the_first_start_on_an_empty_sqlite_database_prints_a_development_key() {
    use std::io::{BufRead, BufReader};
    let db = userstream_tests::fresh_sqlite();
    let mut child = std::process::Command::new(userstream_tests::binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &db.url])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let lines: Vec<String> = BufReader::new(stdout).lines().map_while(Result::ok).take(7).collect();
    let _ = child.kill();
    let _ = child.wait();
    let text = lines.join("\n");
    assert!(text.contains("development key for company 1"), "{text}");
    let secret_line = lines.iter().find(|l| l.starts_with("api_secret:")).expect("secret printed");
    assert!(secret_line.len() > "api_secret: ".len() + 30, "{secret_line}");
}
