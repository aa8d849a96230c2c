//! Credentials that resist guessing and can be revoked, black-box: failed
//! checks limited per address and per key (429 + `Retry-After`) without
//! locking out the holder elsewhere, `--rate-limit`, `userstream apikey
//! list|revoke` seen by every instance within a second, and no secret in
//! the logs.

use serde_json::{json, Value};
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use userstream_tests::{alice, binary, call, client_with, create_key, fresh_databases, Logged, TestApp, APP, COMPANY};

fn token_url(app: &TestApp) -> String {
    format!("{}/service/panel/authentication/v1.0/company/{COMPANY}/oauth/token", app.base)
}

/// A client whose connections come from `127.0.0.{last}`.
fn from(last: u8) -> reqwest::Client {
    reqwest::Client::builder().local_address(IpAddr::from([127, 0, 0, last])).build().expect("client")
}

async fn ask_token(app: &TestApp, client: &reqwest::Client, key: &str, secret: &str) -> reqwest::Response {
    client
        .post(token_url(app))
        .basic_auth(key, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token request")
}

fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("429 carries Retry-After in seconds")
}

#[tokio::test]
async fn guessing_secrets_gets_429_but_the_holder_at_another_address_keeps_working() {
    let app = TestApp::spawn().await;
    let (key, secret) = (app.key.api_key.clone(), app.key.api_secret.clone());
    let holder = from(2);
    assert_eq!(ask_token(&app, &holder, &key, &secret).await.status(), 200);

    // 40 wrong secrets in a row from one address: 401 first, then 429.
    let attacker = from(1);
    let mut statuses = Vec::new();
    for n in 0..40 {
        let r = ask_token(&app, &attacker, &key, &format!("guess{n}")).await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!((1..=3600).contains(&retry_after(&r)));
            let body: Value = r.json().await.expect("json");
            assert_eq!(body["error"], "too_many_requests", "{body}");
        }
    }
    assert_eq!(&statuses[..10], &[401; 10], "{statuses:?}");
    assert!(statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");
    // Even the right secret waits at that address; the holder's does not.
    assert_eq!(ask_token(&app, &attacker, &key, &secret).await.status(), 429);
    assert_eq!(ask_token(&app, &holder, &key, &secret).await.status(), 200);

    // Guesses at the key spread over many addresses: the key is refused to
    // addresses that never proved it, not to the holder.
    for last in 10..40 {
        ask_token(&app, &from(last), &key, "spread-guess").await;
    }
    let newcomer = ask_token(&app, &from(50), &key, &secret).await;
    assert_eq!(newcomer.status(), 429);
    assert_eq!(ask_token(&app, &holder, &key, &secret).await.status(), 200);
    let (other, _) = create_key(&app.db, COMPANY, None).await;
    assert_eq!(ask_token(&app, &from(50), &other.api_key, &other.api_secret).await.status(), 200);

    // Passage bearers count the same way.
    let passage = format!("{}/users", app.passage_app(APP));
    let mut statuses = Vec::new();
    for n in 0..12 {
        let r =
            from(60).get(&passage).bearer_auth(format!("{}.guess{n}", other.api_key)).send().await.expect("passage");
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            retry_after(&r);
            assert_eq!(r.json::<Value>().await.expect("json")["code"], "too_many_requests");
        }
    }
    assert_eq!(&statuses[..10], &[401; 10], "{statuses:?}");
    assert_eq!(&statuses[10..], &[429, 429], "{statuses:?}");
    let r = from(61).get(&passage).bearer_auth(&other.bearer).send().await.expect("passage");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn rate_limit_answers_429_per_credential_and_is_off_by_default() {
    let limited = TestApp::spawn_on(userstream_tests::fresh_sqlite(), &[("USERSTREAM_RATE_LIMIT", "2")]).await;
    let list = format!("{}/list", limited.customers());
    let mut refused = None;
    for _ in 0..20 {
        let r = limited.client.get(&list).send().await.expect("list");
        if r.status() == 429 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let refused = refused.expect("20 requests in a row at 2/s: some are refused");
    assert!((1..=2).contains(&retry_after(&refused)));
    assert_eq!(refused.json::<Value>().await.expect("json")["code"], "too_many_requests");
    // Another credential has its own allowance.
    let (other, token) = create_key(&limited.db, COMPANY, None).await;
    assert_eq!(client_with(&format!("Bearer {token}")).get(&list).send().await.expect("list").status(), 200);
    let r = client_with(&format!("Bearer {}", other.bearer))
        .get(format!("{}/users", limited.passage_app(APP)))
        .send()
        .await
        .expect("passage");
    assert_eq!(r.status(), 200);

    let open = TestApp::spawn().await;
    let list = format!("{}/list", open.customers());
    for _ in 0..50 {
        assert_eq!(open.client.get(&list).send().await.expect("list").status(), 200);
    }
}

fn userstream(args: &[&str]) -> (bool, String) {
    let out = Command::new(binary()).args(args).output().expect("run userstream");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn a_revoked_key_stops_working_on_every_instance_within_a_second() {
    for db in fresh_databases().await {
        let app = TestApp::spawn_on(db.clone(), &[]).await;
        let peer = app.peer();
        let (spare, _) = create_key(&db, COMPANY, Some(APP)).await;

        let (ok, listed) = userstream(&["apikey", "list", "--database", &db.url, "--json"]);
        assert!(ok, "{listed}");
        let keys: Vec<Value> = listed.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
        assert_eq!(keys.len(), 2, "{listed}");
        assert!(keys.iter().all(|k| k["revoked_at"].is_null() && k.get("secret_hash").is_none()), "{listed}");
        assert!(!listed.contains(&app.key.api_secret), "list never shows a secret");

        let list = |base: &TestApp| format!("{}/list", base.customers());
        let passage = |base: &TestApp| format!("{}/users", base.passage_app(APP));
        for instance in [&app, &peer] {
            assert_eq!(app.client.get(list(instance)).send().await.expect("list").status(), 200);
            assert_eq!(app.passage.get(passage(instance)).send().await.expect("p").status(), 200);
        }

        let (ok, said) = userstream(&["apikey", "revoke", "--database", &db.url, &app.key.api_key]);
        assert!(ok, "{said}");
        let revoked_at = Instant::now();
        for instance in [&app, &peer] {
            loop {
                let fynd = app.client.get(list(instance)).send().await.expect("list").status();
                let bearer = app.passage.get(passage(instance)).send().await.expect("p").status();
                if fynd == 401 && bearer == 401 {
                    break;
                }
                assert!(
                    revoked_at.elapsed() < Duration::from_secs(1),
                    "{}: the revoked key still works after a second",
                    db.backend
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let r = ask_token(&app, &reqwest::Client::new(), &app.key.api_key, &app.key.api_secret).await;
        assert_eq!(r.status(), 401);
        assert_eq!(r.json::<Value>().await.expect("json")["error"], "invalid_client");
        let spare_client = client_with(&format!("Bearer {}", spare.bearer));
        assert_eq!(spare_client.get(passage(&peer)).send().await.expect("p").status(), 200);

        let (_, listed) = userstream(&["apikey", "list", "--database", &db.url, "--company", COMPANY]);
        assert!(listed.lines().any(|l| l.starts_with(&app.key.api_key) && l.contains("revoked")), "{listed}");
        assert!(listed.lines().any(|l| l.starts_with(&spare.api_key) && l.contains("active")), "{listed}");
        let (ok, again) = userstream(&["apikey", "revoke", "--database", &db.url, &app.key.api_key]);
        assert!(ok, "revoking twice is no error: {again}");
        let (ok, unknown) = userstream(&["apikey", "revoke", "--database", &db.url, "ffffffffffffffffffffffff"]);
        assert!(!ok && unknown.contains("no API key"), "{unknown}");
    }
}

#[tokio::test]
async fn tokens_secrets_and_cookies_never_reach_the_logs() {
    let db = userstream_tests::fresh_sqlite();
    let (key, _) = create_key(&db, COMPANY, None).await;
    let server = Logged::spawn(&db, "trace", &[]);
    let base = server.base.clone();

    let http = reqwest::Client::new();
    let token_url = format!("{base}/service/panel/authentication/v1.0/company/{COMPANY}/oauth/token");
    let r = http
        .post(&token_url)
        .basic_auth(&key.api_key, Some(&key.api_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token");
    let token = r.json::<Value>().await.expect("json")["access_token"].as_str().expect("token").to_string();
    let customers = format!("{base}/service/platform/user/v1.0/company/{COMPANY}/application/{APP}/customers");
    let fynd = client_with(&format!("Bearer {token}"));
    let (status, created) = call(fynd.post(&customers).json(&alice())).await;
    assert_eq!(status, 200, "{created}");
    let id = created["user"]["_id"].as_str().expect("id");
    let (status, session) =
        call(fynd.post(format!("{customers}/session")).json(&json!({"user_id": id, "domain": "shop.example"}))).await;
    assert_eq!(status, 200, "{session}");
    let cookie = session["cookie"]["f.session"].as_str().expect("cookie").to_string();
    let r = fynd.get(format!("{customers}/session?id={id}&cookie={cookie}")).send().await.expect("use");
    assert_eq!(r.status(), 200);
    let passage = client_with(&format!("Bearer {}", key.bearer));
    assert_eq!(passage.get(format!("{base}/v1/apps/{APP}/users")).send().await.expect("p").status(), 200);
    let wrong = format!("{}.wrong-secret-in-the-log", key.api_key);
    assert_eq!(
        client_with(&format!("Bearer {wrong}"))
            .get(format!("{base}/v1/apps/{APP}/users"))
            .send()
            .await
            .expect("p")
            .status(),
        401
    );

    let logged = server.stop();
    assert!(logged.lines().count() > 5, "trace logging was on: {} lines", logged.lines().count());
    let (session_id, signature) = cookie.split_once('.').expect("signed cookie");
    let token_mac = token.rsplit_once('.').expect("signed token").1;
    for (what, secret) in [
        ("API secret", key.api_secret.as_str()),
        ("access token", token_mac),
        ("session id", session_id),
        ("cookie signature", signature),
        ("wrong secret", "wrong-secret-in-the-log"),
    ] {
        assert!(!logged.contains(secret), "the {what} is in the log");
    }
}
