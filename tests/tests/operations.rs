//! Operating it: the OpenAPI document (valid, complete, rendered without
//! the internet, and fuzzed from itself by schemathesis), the Prometheus
//! metrics (named by route templates, never by ids), and who may read them.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use userstream_tests::{client_with, create_key, fresh_sqlite, user_body, Logged, APP, COMPANY};

/// The venv with schemathesis and openapi-spec-validator (`deploy/test.sh`
/// installs `tests/ops/requirements.txt` into it).
fn ops_python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/.venv/bin/python");
    assert!(
        python.exists(),
        "tests/ops/.venv is missing: python3 -m venv tests/ops/.venv && tests/ops/.venv/bin/pip install -r tests/ops/requirements.txt (deploy/test.sh does)"
    );
    python
}

fn fynd(base: &str) -> String {
    format!("{base}/service/platform/user/v1.0/company/{COMPANY}/application/{APP}")
}

#[tokio::test]
async fn the_openapi_document_is_valid_complete_and_rendered_offline() {
    let db = fresh_sqlite();
    let server = Logged::spawn(&db, "warn", &[]);
    let r = reqwest::get(format!("{}/openapi.json", server.base)).await.expect("openapi.json");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("body");
    let doc: Value = serde_json::from_str(&text).expect("JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);

    // Valid: the reference validator of the OpenAPI Initiative's schemas.
    let file = std::env::temp_dir().join(format!("userstream-openapi-{}.json", uuid::Uuid::now_v7().simple()));
    std::fs::write(&file, &text).expect("write");
    let out = std::process::Command::new(ops_python())
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("run openapi-spec-validator");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Complete: every route the server has is an operation, with each path
    // parameter, a success answer and the failures of its surface.
    let routes: Vec<(axum::http::Method, String)> =
        userstream_api::route_table().into_iter().chain(userstream_api::other_routes()).collect();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        operations += item.as_object().expect("path item").len();
        for method in item.as_object().expect("item").keys() {
            let known = routes.iter().any(|(m, p)| p == path && m.as_str().eq_ignore_ascii_case(method));
            assert!(known, "{method} {path} is documented but not served");
        }
    }
    assert_eq!(operations, routes.len(), "one operation per route");
    for (method, path) in &routes {
        let op = &doc["paths"][path][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{method} {path} has no operation");
        let responses = op["responses"].as_object().expect("responses");
        assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {path} has no success answer");
        let params: Vec<&str> = op["parameters"]
            .as_array()
            .map(|ps| ps.iter().filter(|p| p["in"] == "path").filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        for name in path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))) {
            assert!(params.contains(&name), "{method} {path} does not describe {{{name}}}");
        }
        if path.starts_with("/service/platform/") || path.starts_with("/v1/apps/") {
            for status in ["401", "429", "503"] {
                assert!(responses.contains_key(status), "{method} {path} does not document {status}");
            }
        }
    }
    for scheme in ["fynd_token", "passage_bearer", "api_key_basic"] {
        assert!(doc["components"]["securitySchemes"][scheme].is_object(), "no security scheme {scheme}");
    }

    // The reference page: served by the binary, nothing from the internet.
    let r = reqwest::get(format!("{}/docs", server.base)).await.expect("docs");
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().is_ok_and(|t| t.starts_with("text/html")));
    let page = r.text().await.expect("page");
    assert!(page.contains("fetch(\"openapi.json\""), "the page loads the document");
    for remote in ["http://", "https://", "//cdn", "@import"] {
        assert!(!page.contains(remote), "the page names {remote}");
    }
}

/// schemathesis generates requests for every operation from the document
/// (valid and invalid ones) and checks every answer: no 5xx, a documented
/// status, content type, headers and body schema, and that every request
/// that breaks the document is refused.
#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    let python = ops_python();
    let db = fresh_sqlite();
    let (_, token) = create_key(&db, COMPANY, None).await;
    let server = Logged::spawn(&db, "warn", &[]);
    // Some data, so reads find something.
    let client = client_with(&format!("Bearer {token}"));
    for n in 1..=3 {
        let r = client.post(format!("{}/customers", fynd(&server.base))).json(&user_body(n)).send().await;
        assert_eq!(r.expect("create").status(), 200);
    }
    let dir = std::env::temp_dir().join(format!("userstream-st-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    // The tenant of the key in every path; unknown headers and query
    // parameters are ignored by HTTP servers, so not sent as negative cases;
    // a 413 is a rejection too.
    let config = format!(
        "generation.allow-extra-parameters = false\n\
         headers = {{ Authorization = \"Bearer {token}\" }}\n\
         [parameters]\n\
         \"path.company_id\" = \"{COMPANY}\"\n\
         \"path.application_id\" = \"{APP}\"\n\
         \"path.app_id\" = \"{APP}\"\n\
         [checks.negative_data_rejection]\n\
         expected-statuses = [\"400\", \"401\", \"403\", \"404\", \"405\", \"406\", \"409\", \"413\", \"415\", \"422\", \"428\", \"429\"]\n"
    );
    std::fs::write(dir.join("schemathesis.toml"), config).expect("config");
    // One worker: with two, hypothesis' lambda descriptions race inside
    // schemathesis (a runtime error of the tool, not a finding).
    let examples = std::env::var("SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "50".to_string());
    let out = tokio::process::Command::new(python.with_file_name("st"))
        .args(["--config-file", "schemathesis.toml", "run"])
        .arg(format!("{}/openapi.json", server.base))
        .args(["--checks", "all", "--max-examples", &examples, "--seed", "1", "--workers", "1"])
        // Excluded, with the reason (docs/operating.md says it too):
        // positive_data_acceptance expects every schema-valid request to
        // succeed, but validity also depends on state and rules no schema
        // states (a phone number's country, a definition that must exist, the
        // platform config's required fields); ignored_auth, use_after_free and
        // ensure_resource_availability need the stateful phase's links.
        .args(["--exclude-checks", "positive_data_acceptance,ignored_auth,use_after_free,ensure_resource_availability"])
        .args(["--phases", "examples,coverage,fuzzing", "--no-color"])
        .current_dir(&dir)
        .output()
        .await
        .expect("run schemathesis");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "schemathesis found problems:\n{report}");
    assert!(report.contains("passed"), "{report}");
}

fn non_loopback_address() -> std::net::IpAddr {
    // A UDP "connection" sends nothing; it only picks the outgoing interface.
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
    socket.connect("192.0.2.1:9").expect("a route to a non-loopback network");
    let ip = socket.local_addr().expect("local address").ip();
    assert!(!ip.is_loopback() && !ip.is_unspecified(), "this machine has no non-loopback address ({ip})");
    ip
}

#[tokio::test]
async fn metrics_and_the_document_answer_loopback_credentials_or_everyone_with_ops_public() {
    let db = fresh_sqlite();
    let (key, token) = create_key(&db, COMPANY, None).await;
    let server = Logged::spawn(&db, "warn", &["--listen", "0.0.0.0:0"]);
    let port = server.base.rsplit(':').next().expect("port").to_string();
    let remote = format!("http://{}:{port}", non_loopback_address());
    let local = format!("http://127.0.0.1:{port}");
    let anonymous = reqwest::Client::new();
    let status = |client: &reqwest::Client, url: String| {
        let request = client.get(url);
        async move { request.send().await.expect("request").status().as_u16() }
    };
    for route in ["/openapi.json", "/metrics", "/docs"] {
        assert_eq!(status(&anonymous, format!("{local}{route}")).await, 200, "{route} from loopback");
        assert_eq!(status(&anonymous, format!("{remote}{route}")).await, 401, "{route} from elsewhere");
        let wrong = client_with("Bearer ust1.not-a-token");
        assert_eq!(status(&wrong, format!("{remote}{route}")).await, 401, "{route} with a wrong token");
        let fynd = client_with(&format!("Bearer {token}"));
        assert_eq!(status(&fynd, format!("{remote}{route}")).await, 200, "{route} with an access token");
        let passage = client_with(&format!("Bearer {}", key.bearer));
        assert_eq!(status(&passage, format!("{remote}{route}")).await, 200, "{route} with an API key");
    }
    for route in ["/healthz", "/readyz"] {
        assert_eq!(status(&anonymous, format!("{remote}{route}")).await, 200, "{route} stays open");
    }
    // The 401 is JSON with a code.
    let r = anonymous.get(format!("{remote}/metrics")).send().await.expect("metrics");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "unauthorized");
    drop(server);

    let open = Logged::spawn(&db, "warn", &["--listen", "0.0.0.0:0", "--ops-public"]);
    let port = open.base.rsplit(':').next().expect("port").to_string();
    let remote = format!("http://{}:{port}", non_loopback_address());
    for route in ["/openapi.json", "/metrics", "/docs"] {
        assert_eq!(status(&anonymous, format!("{remote}{route}")).await, 200, "{route} with --ops-public");
    }
}

/// Every `route="…"` label of a scrape.
fn route_labels(text: &str) -> Vec<String> {
    text.split("route=\"").skip(1).filter_map(|s| s.split('"').next()).map(str::to_string).collect()
}

#[tokio::test]
async fn metrics_name_route_templates_commands_and_workers_never_ids_or_request_data() {
    let db = fresh_sqlite();
    let (key, token) = create_key(&db, COMPANY, None).await;
    let server = Logged::spawn(&db, "warn", &[]);
    let client = client_with(&format!("Bearer {token}"));
    let base = fynd(&server.base);

    // Requests full of values that must never become labels.
    let marker = "zq7marker";
    let mut body = user_body(1);
    body["email"] = json!(format!("{marker}.ada@example.com"));
    body["username"] = json!(format!("{marker}_ada"));
    let r = client.post(format!("{base}/customers")).json(&body).send().await.expect("create");
    assert_eq!(r.status(), 200);
    let user: Value = r.json().await.expect("json");
    let user_id = user["user"]["_id"].as_str().expect("id").to_string();
    let again = client.post(format!("{base}/customers")).json(&body).send().await.expect("taken");
    assert_eq!(again.status(), 409);
    for path in [
        format!("/customers/{user_id}"),
        format!("/customers/{user_id}/history"),
        "/customers/ffffffffffffffffffffff01".to_string(),
        format!("/customers/list?q={marker}%40example.com"),
        format!("/{marker}/not-a-route"),
    ] {
        let _ = client.get(format!("{base}{path}")).send().await.expect("get");
    }
    let _ = client.get(format!("{}/{marker}/nothing-here", server.base)).send().await.expect("unmatched");
    let passage = client_with(&format!("Bearer {}", key.bearer));
    let r = passage.get(format!("{}/v1/apps/{APP}/users/{marker}", server.base)).send().await.expect("passage");
    assert_eq!(r.status(), 404);

    let text = reqwest::get(format!("{}/metrics", server.base)).await.expect("metrics").text().await.expect("text");
    for (name, _, _) in userstream_api::metrics::NAMES {
        assert!(text.contains(&format!("\n{name}")), "no {name} in\n{text}");
    }
    let customer_route =
        "/service/platform/user/v1.0/company/{company_id}/application/{application_id}/customers/{user_id}";
    assert!(text.contains(&format!("route=\"{customer_route}\",status=\"200\"")), "{text}");
    assert!(text.contains(&format!("route=\"{customer_route}\",status=\"404\"")), "{text}");
    assert!(text.contains("command=\"CreateUser\",outcome=\"ok\""), "{text}");
    assert!(text.contains("command=\"CreateUser\",outcome=\"rejected\""), "{text}");
    assert!(text.contains("userstream_worker_lease_owned{worker=\"users_v1\"} 1"), "{text}");

    let known: Vec<String> = userstream_api::route_table()
        .into_iter()
        .chain(userstream_api::other_routes())
        .map(|(_, p)| p)
        .chain(["unmatched".to_string()])
        .collect();
    for route in route_labels(&text) {
        assert!(known.contains(&route), "route label {route} is not a template");
    }
    for secret in [marker, user_id.as_str(), APP, "example.com", &token, &key.bearer] {
        assert!(!text.contains(secret), "the metrics hold {secret}");
    }
}
