//! Helpers for the black-box and contract tests: fresh databases on every
//! backend, and the real `userstream` binary on a free port.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A database the test owns: a new SQLite file, or a new PostgreSQL database
/// on the cluster named by `DATABASE_URL_TEST`.
#[derive(Debug, Clone)]
pub struct TestDb {
    pub backend: &'static str,
    pub url: String,
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

pub fn fresh_sqlite() -> TestDb {
    let dir = std::env::temp_dir().join("userstream-tests");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{}.db", unique("t")));
    TestDb { backend: "sqlite", url: format!("sqlite://{}", path.display()) }
}

/// A fresh PostgreSQL database, or `None` when no test cluster is configured.
/// Under CI a missing cluster is a failure, never a silent skip.
pub async fn fresh_postgres() -> Option<TestDb> {
    let Ok(admin) = std::env::var("DATABASE_URL_TEST") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI is set but DATABASE_URL_TEST is not: run the tests through deploy/postgres.sh run"
        );
        eprintln!("DATABASE_URL_TEST not set: skipping the PostgreSQL backend");
        return None;
    };
    let name = unique("t_");
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await.expect("connect to test cluster");
    sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str()).await.expect("create database");
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).expect("url has a database");
    Some(TestDb { backend: "postgres", url: format!("{base}/{name}") })
}

/// One fresh database per backend available.
pub async fn fresh_databases() -> Vec<TestDb> {
    let mut dbs = vec![fresh_sqlite()];
    dbs.extend(fresh_postgres().await);
    dbs
}

/// The `userstream` binary built alongside the tests.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("userstream");
    assert!(bin.exists(), "{} is missing: build the workspace first (cargo build --workspace)", bin.display());
    bin
}

/// The real server, started on port 0 with its own database.
pub struct TestApp {
    pub base: String,
    pub db: TestDb,
    /// Sends the Fynd access token of company [`COMPANY`] with every request.
    pub client: reqwest::Client,
    /// Sends the Passage bearer of the same key with every request.
    pub passage: reqwest::Client,
    /// The key both clients use, and the Fynd access token of `client`.
    pub key: NewKey,
    pub token: String,
    child: Child,
    env: Vec<(String, String)>,
}

pub use userstream_api::access::NewKey;

/// Creates an API key directly in the database (what `userstream apikey
/// create` does), and a Fynd access token for it.
pub async fn create_key(db: &TestDb, company: &str, application: Option<&str>) -> (NewKey, String) {
    let conn = userstream_eventlog::Db::connect(&db.url).await.expect("connect");
    let access = userstream_api::access::Access::open(conn).await.expect("access tables");
    let key = access.create_key(company, application).await.expect("create key");
    let credential = access.verify_secret(&key.api_key, &key.api_secret).await.expect("verify").expect("valid key");
    let token = access.issue_token(&credential, time::OffsetDateTime::now_utc());
    (key, token)
}

/// A client that sends `Authorization: <value>` with every request.
pub fn client_with(authorization: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, authorization.parse().expect("header value"));
    reqwest::Client::builder().default_headers(headers).build().expect("client")
}

pub const COMPANY: &str = "1";
pub const APP: &str = "000000000000000000000001";

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_on(fresh_sqlite(), &[]).await
    }

    pub async fn spawn_on(db: TestDb, env: &[(&str, &str)]) -> TestApp {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (key, token) = create_key(&db, COMPANY, None).await;
        let (child, base) = start(&db, &env);
        let client = client_with(&format!("Bearer {token}"));
        let passage = client_with(&format!("Bearer {}", key.bearer));
        TestApp { base, db, client, passage, key, token, child, env }
    }

    /// `kill -9`, then start again on the same database.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, base) = start(&self.db, &self.env);
        self.child = child;
        self.base = base;
    }

    /// Another instance of the service on the same database (and the same
    /// environment), with the same credentials.
    pub fn peer(&self) -> TestApp {
        let (child, base) = start(&self.db, &self.env);
        TestApp {
            base,
            db: self.db.clone(),
            client: self.client.clone(),
            passage: self.passage.clone(),
            key: self.key.clone(),
            token: self.token.clone(),
            child,
            env: self.env.clone(),
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The Fynd prefix for a tenant.
    pub fn fynd(&self, company: &str, app: &str) -> String {
        format!("{}/service/platform/user/v1.0/company/{company}/application/{app}", self.base)
    }

    /// The Passage prefix for an app.
    pub fn passage_app(&self, app: &str) -> String {
        format!("{}/v1/apps/{app}", self.base)
    }

    /// Sets the platform config of the default tenant (a partial PlatformSchema).
    pub async fn set_config(&self, patch: serde_json::Value) {
        let url = format!("{}/platform/config", self.fynd(COMPANY, APP));
        let r = self.client.post(url).json(&patch).send().await.expect("config");
        assert_eq!(r.status(), 200, "platform config {patch}: {}", r.text().await.unwrap_or_default());
    }

    pub fn customers(&self) -> String {
        format!("{}/customers", self.fynd(COMPANY, APP))
    }

    /// `/readyz` (status and body): the head, each projection's position and lag, and why not ready.
    pub async fn readyz(&self) -> (u16, serde_json::Value) {
        let r = self.client.get(format!("{}/readyz", self.base)).send().await.expect("readyz");
        (r.status().as_u16(), r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// The log head, as `/readyz` reports it.
    pub async fn head(&self) -> i64 {
        self.readyz().await.1["head"].as_i64().expect("head")
    }

    /// The default tenant's live users, as the customers list counts them.
    pub async fn total_users(&self) -> i64 {
        let r = self.client.get(format!("{}/list?page_size=1", self.customers())).send().await.expect("list");
        let v: serde_json::Value = r.json().await.expect("json");
        v["page"]["item_total"].as_i64().expect("item_total")
    }

    /// PUT of a JSON body to `customers{path}` (`/archive`, `/undelete`, `/{id}` …).
    pub async fn put_customers(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.client.put(format!("{}{path}", self.customers())).json(&body).send().await.expect("PUT")
    }

    /// Creates a user and returns (response JSON user, position).
    pub async fn create_user(&self, body: serde_json::Value) -> (serde_json::Value, i64) {
        let r = self.client.post(self.customers()).json(&body).send().await.expect("create");
        assert_eq!(r.status(), 200, "create {body}: {}", r.text().await.unwrap_or_default());
        let position = position_of(&r);
        let v: serde_json::Value = r.json().await.expect("json");
        (v["user"].clone(), position)
    }
}

pub fn position_of(r: &reqwest::Response) -> i64 {
    r.headers()
        .get("x-event-position")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("X-Event-Position header")
}

fn start(db: &TestDb, env: &[(String, String)]) -> (Child, String) {
    let mut child = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &db.url])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn userstream");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            if let Some(url) = line.strip_prefix("userstream listening on ") {
                let _ = tx.send(url.to_string());
            }
        }
    });
    let base = rx.recv_timeout(Duration::from_secs(60)).expect("userstream did not start within 60 s");
    (child, base)
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A NATS server with JetStream that a test owns: its own port and store,
/// so the test can stop it and start it again (an outage).
pub struct NatsServer {
    pub port: u16,
    store: PathBuf,
    child: Option<Child>,
}

/// The `nats-server` binary: `NATS_SERVER_BIN` (set by `deploy/nats.sh run`),
/// else from `PATH`. `None` outside CI when there is none (the test skips).
pub fn nats_server_bin() -> Option<PathBuf> {
    if let Ok(bin) = std::env::var("NATS_SERVER_BIN") {
        return Some(PathBuf::from(bin));
    }
    let found = Command::new("sh").args(["-c", "command -v nats-server"]).output().ok().filter(|o| o.status.success());
    match found {
        Some(o) => Some(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())),
        None => {
            assert!(
                std::env::var("CI").is_err(),
                "CI is set but no nats-server: run the tests through deploy/nats.sh run"
            );
            eprintln!("no nats-server: skipping");
            None
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

impl NatsServer {
    /// A port and a store, not started yet.
    pub fn new() -> NatsServer {
        let store = std::env::temp_dir().join("userstream-tests").join(unique("nats"));
        NatsServer { port: free_port(), store, child: None }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn start(&mut self, bin: &std::path::Path) {
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server did not listen on {}", self.port);
    }

    /// `kill -9`: an outage.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Default for NatsServer {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// The relay settings of a test: its own stream and subject prefix, so tests
/// sharing one server never see each other's events.
pub fn nats_env(url: &str) -> Vec<(String, String)> {
    let id = uuid::Uuid::now_v7().simple().to_string();
    vec![
        ("NATS_URL".into(), url.into()),
        ("NATS_STREAM".into(), format!("T{id}")),
        ("NATS_SUBJECT_PREFIX".into(), format!("t{id}")),
    ]
}

/// Every message of a JetStream stream, in stream order: (subject, msg id, payload).
pub async fn stream_messages(url: &str, stream: &str) -> Vec<(String, String, serde_json::Value)> {
    use futures_util::StreamExt;
    let client = async_nats::connect(url).await.expect("connect to nats");
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(stream).await.expect("stream");
    let total = s.info().await.expect("info").state.messages as usize;
    let consumer: async_nats::jetstream::consumer::PullConsumer = s
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("message within 10 s")
            .expect("stream open")
            .expect("message");
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.to_string())
            .unwrap_or_default();
        out.push((m.subject.to_string(), id, serde_json::from_slice(&m.payload).expect("JSON payload")));
    }
    out
}

/// A request appending one event of `event_type` with `data` to `stream`.
pub fn one_event_request(
    tenant: userstream_eventlog::Tenant,
    stream: &str,
    event_type: &str,
    data: serde_json::Value,
) -> userstream_eventlog::AppendRequest {
    use userstream_eventlog::{AppendRequest, ExpectedVersion, NewEvent, StreamAppend};
    AppendRequest {
        tenant,
        actor: "test".into(),
        correlation_id: "c".into(),
        causation_id: None,
        streams: vec![StreamAppend {
            stream: stream.into(),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent {
                event_id: uuid::Uuid::now_v7(),
                event_type: event_type.into(),
                schema: 1,
                occurred_at: time::OffsetDateTime::now_utc(),
                data,
            }],
        }],
        reserve: vec![],
        release: vec![],
        idempotency_key: None,
    }
}

/// Appends one event of `event_type` with a payload no projection can
/// decode (`{"not": …}`) to `stream` of the default tenant, straight into
/// the log at `url`: a poison event. Returns its position.
pub async fn append_poison(url: &str, stream: &str, event_type: &str) -> i64 {
    use userstream_eventlog::{EventLog, Tenant};
    let db = userstream_eventlog::Db::connect(url).await.expect("connect");
    let log = userstream_eventlog::SqlEventLog::open(db).await.expect("open");
    let tenant = Tenant { company_id: COMPANY.into(), application_id: APP.into() };
    let request = one_event_request(tenant, stream, event_type, serde_json::json!({"not": "an event of this type"}));
    log.append(request).await.expect("append").last_position
}

/// Sends `r`; its status and JSON body (`null` when it has none).
pub async fn call(r: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    json_of(r.send().await.expect("send")).await
}

/// A response's status and JSON body (`null` when it has none).
pub async fn json_of(r: reqwest::Response) -> (u16, serde_json::Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// A valid Fynd customer body, distinct for each `n`.
pub fn user_body(n: u32) -> serde_json::Value {
    serde_json::json!({
        "phone_number": format!("91234{n:05}"),
        "email": format!("u{n}@example.com"),
        "username": format!("user{n}"),
    })
}

/// A Fynd customer with every profile field set.
pub fn alice() -> serde_json::Value {
    serde_json::json!({"phone_number": "9876543210", "username": "alice", "email": "Alice@Example.com", "first_name": "Alice", "last_name": "Mane", "gender": "female", "meta": {"tier": "gold"}, "external_id": "ext-1"})
}

/// The service in this test's process on `db`, driven through its router
/// with `oneshot` (no socket, no child process), on a clock the test moves:
/// for what needs time to pass (expiry) or nothing a socket adds.
pub struct InProcess {
    pub service: userstream_api::Service,
    pub clock: userstream_api::clock::Clock,
    credential: userstream_api::access::Credential,
}

impl InProcess {
    /// Starts on `db` with a manual clock at the current time.
    pub async fn start(db: &TestDb) -> InProcess {
        let clock = userstream_api::clock::Clock::manual(time::OffsetDateTime::now_utc());
        let mut config = userstream_api::Config::new(db.url.clone());
        config.clock = clock.clone();
        let service = userstream_api::Service::start(config).await.expect("start the service");
        let key = service.state.access.create_key(COMPANY, None).await.expect("key");
        let credential =
            service.state.access.verify_secret(&key.api_key, &key.api_secret).await.expect("verify").expect("valid");
        InProcess { service, clock, credential }
    }

    /// Sends `method` to `path` under the default tenant's Fynd prefix
    /// (`/customers/…`), with `headers` and an optional JSON body, and a
    /// token fresh on the service's clock; answers status and JSON.
    pub async fn fynd(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        use tower::ServiceExt;
        let token = self.service.state.access.issue_token(&self.credential, self.clock.now());
        let uri = format!("/service/platform/user/v1.0/company/{COMPANY}/application/{APP}{path}");
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = body.map_or_else(axum::body::Body::empty, |b| axum::body::Body::from(b.to_string()));
        let response = self.service.router().oneshot(request.body(body).expect("request")).await.expect("infallible");
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    pub async fn stop(self) {
        self.service.stop().await;
    }
}

/// Every read model with its tables, as `replay --projection` names them.
pub const MODELS: [(&str, &[&str]); 3] = [
    ("users_v1", &["users_v1", "user_contacts_v1", "user_counts_v1", "user_sessions_v1"]),
    ("attributes_v1", &["attribute_definitions_v1", "attribute_values_v1"]),
    ("groups_v1", &["groups_v1", "group_members_v1"]),
];

/// `userstream replay --database DB ARGS`; its stdout.
pub fn replay(db: &TestDb, args: &[&str]) -> String {
    let out = Command::new(binary())
        .args(["replay", "--database", &db.url])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run userstream replay");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "replay {args:?} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// The fresh tables a `replay --to` left for `projection`.
pub async fn shadow(db: &TestDb, projection: &str) -> userstream_eventlog::Db {
    let url = match db.backend {
        "sqlite" => format!("{}.replay-{projection}", db.url.split('?').next().unwrap_or_default()),
        _ => format!("{}?options=-c%20search_path%3Dreplay_{projection}", db.url),
    };
    userstream_eventlog::Db::connect(&url).await.expect("connect to the rebuilt tables")
}

/// Every row of each table, as text, in key order.
pub async fn dumps(db: &userstream_eventlog::Db, tables: &[&str]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for t in tables {
        out.push(userstream_projections::replay::dump_table(db, t).await.expect("dump"));
    }
    out
}

/// Waits until every projection has the log's head and the engine appends nothing more.
pub async fn settle(app: &TestApp) {
    for _ in 0..400 {
        let (_, r) = app.readyz().await;
        let head = r["head"].clone();
        if r["projections"].as_object().is_some_and(|p| p.values().all(|p| p["position"] == head)) {
            // The engine may still append membership events; settle again if it did.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if app.readyz().await.1["head"] == head {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("projections did not settle");
}

/// The real server with its log (stderr) kept in a file: `RUST_LOG` and
/// extra arguments as given. [`Logged::text`] reads what it logged so far.
pub struct Logged {
    pub base: String,
    child: Child,
    path: PathBuf,
}

impl Logged {
    pub fn spawn(db: &TestDb, rust_log: &str, args: &[&str]) -> Logged {
        let path = std::env::temp_dir().join(format!("userstream-log-{}.txt", uuid::Uuid::now_v7().simple()));
        let log = std::fs::File::create(&path).expect("log file");
        let listen = if args.contains(&"--listen") { &[][..] } else { &["--listen", "127.0.0.1:0"][..] };
        let mut child = Command::new(binary())
            .args(["serve", "--database", &db.url])
            .args(listen)
            .args(args)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn userstream");
        let stdout = child.stdout.take().expect("stdout");
        let base = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("userstream listening on ").map(str::to_string))
            .expect("listening line");
        Logged { base, child, path }
    }

    /// Stops the server and returns everything it logged.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.path).expect("log")
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Runs a client script (`node`, the SDK venv's `python`) in `dir` and
/// returns what it printed; fails the test with its stdout and stderr when
/// it does not succeed.
pub async fn run_script(
    program: &std::path::Path,
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> String {
    let output = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{} failed:\nstdout: {stdout}\nstderr: {}",
        args.first().copied().unwrap_or_default(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
