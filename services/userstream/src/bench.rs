//! `userstream bench`: throughput, visibility lag and query latency, measured
//! through the whole axum router (JSON in, JSON out, no socket) on a fresh
//! database. Prints a Markdown table.

use anyhow::{bail, Context as _};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;
use userstream_api::{Config, Service};
use userstream_projections::relay::RelayConfig;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Database to benchmark; should be empty. Default: a new SQLite file in the temp dir.
    #[arg(long = "database", env = "DATABASE_URL")]
    database: Option<String>,
    /// Users to load before measuring queries.
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    /// Seconds of CreateUser load per concurrency level.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrency levels for the throughput runs.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    clients: Vec<usize>,
    /// Query samples for the search and list percentiles.
    #[arg(long, default_value_t = 5_000)]
    samples: u64,
    /// Benchmark the membership engine and the attribute filter instead.
    #[arg(long)]
    groups: bool,
    /// With --groups: users with attribute values when the rule groups are measured.
    #[arg(long, default_value_t = 100_000)]
    group_users: u64,
    /// With --groups: rule groups (one condition each).
    #[arg(long, default_value_t = 1_000)]
    rule_groups: u64,
    /// With --groups: users a new rule group is evaluated over.
    #[arg(long, default_value_t = 1_000_000)]
    eval_users: u64,
    /// Benchmark the events-out side instead: as-of reads, commit → NATS
    /// delivery (with --nats) and replay rate.
    #[arg(long)]
    events: bool,
    /// With --events: publish to this NATS server and measure delivery.
    #[arg(long = "nats", env = "NATS_URL")]
    nats_url: Option<String>,
    /// With --events: CreateUser commands per second while measuring delivery.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// With --events: events in the log before the replay is measured.
    #[arg(long, default_value_t = 1_000_000)]
    replay_events: u64,
    /// Benchmark a bulk users import of this many generated rows instead
    /// (as `userstream import users` runs it).
    #[arg(long, default_value_t = 0)]
    import: u64,
    /// With --import: then a bulk attribute job of this many rows.
    #[arg(long, default_value_t = 0)]
    import_attributes: u64,
    /// With --import-attributes: the users the rows are spread over.
    #[arg(long, default_value_t = 100_000)]
    attribute_users: u64,
}

const PREFIX: &str = "/service/platform/user/v1.0/company/1/application/000000000000000000000001";

pub(crate) struct Bench {
    router: Router,
    pub(crate) service: Service,
    next: AtomicU64,
    /// `Bearer <token>` for the Fynd routes, `Bearer <key>.<secret>` for Passage.
    fynd_auth: axum::http::HeaderValue,
    passage_auth: axum::http::HeaderValue,
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

pub(crate) fn ms(h: &Histogram<u64>, q: f64) -> String {
    format!("{:.2} ms", h.value_at_quantile(q) as f64 / 1000.0)
}

impl Bench {
    /// Sends a request with the credential its surface needs.
    async fn send(&self, mut request: Request<Body>) -> anyhow::Result<axum::response::Response> {
        let auth = if request.uri().path().starts_with("/v1/") { &self.passage_auth } else { &self.fynd_auth };
        request.headers_mut().insert(axum::http::header::AUTHORIZATION, auth.clone());
        Ok(self.router.clone().oneshot(request).await?)
    }

    pub(crate) async fn call(&self, request: Request<Body>) -> anyhow::Result<(StatusCode, Value)> {
        let response = self.send(request).await?;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }

    /// One durable CreateUser; returns its user number and the event position.
    pub(crate) async fn create(&self) -> anyhow::Result<(u64, i64)> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let body = json!({"phone_number": format!("9{n:09}"), "username": format!("user{n}"), "email": format!("u{n}@bench.example"), "first_name": "Bench"});
        let request = Request::post(format!("{PREFIX}/customers"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))?;
        let response = self.send(request).await?;
        if response.status() != StatusCode::OK {
            bail!("create answered {}", response.status());
        }
        let position = response
            .headers()
            .get("x-event-position")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .context("no X-Event-Position")?;
        Ok((n, position))
    }

    async fn get(&self, path_and_query: &str) -> anyhow::Result<Value> {
        self.get_with(path_and_query, &[]).await
    }

    async fn get_with(&self, path_and_query: &str, headers: &[(&str, &str)]) -> anyhow::Result<Value> {
        let mut request = Request::get(format!("{PREFIX}{path_and_query}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let (status, body) = self.call(request.body(Body::empty())?).await?;
        if status != StatusCode::OK {
            bail!("GET {path_and_query} answered {status}: {body}");
        }
        Ok(body)
    }
}

/// Runs `clients` loops of CreateUser for `seconds`; returns (count, latencies µs).
async fn throughput(bench: &Arc<Bench>, clients: usize, seconds: u64) -> anyhow::Result<(u64, Histogram<u64>, f64)> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let bench = bench.clone();
            tokio::spawn(async move {
                let mut h = histogram();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    bench.create().await?;
                    h.record(t.elapsed().as_micros().max(1) as u64)?;
                    n += 1;
                }
                Ok::<_, anyhow::Error>((n, h))
            })
        })
        .collect();
    let mut total = 0;
    let mut all = histogram();
    for t in tasks {
        let (n, h) = t.await??;
        total += n;
        all.add(h)?;
    }
    Ok((total, all, started.elapsed().as_secs_f64()))
}

/// Clients that create users until stopped: the load under which reads are measured.
struct Writers {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(bench: &Arc<Bench>, clients: usize) -> Writers {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let (bench, stop) = (bench.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        if bench.create().await.is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        Writers { stop, tasks }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// What read-your-writes costs a query: search by email while 256 clients
/// write, by default (waits until the users read model reaches the log
/// head) and with `X-Consistency: eventual` (never waits), alternating.
async fn read_cost_under_load(bench: &Arc<Bench>, users: u64, samples: u64) -> anyhow::Result<Vec<(String, String)>> {
    let writers = Writers::start(bench, 256);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut default, mut eventual) = (histogram(), histogram());
    for i in 0..samples {
        let n = (i * 7_919 + 13) % users;
        let path = format!("/customers/search?q=u{n}%40bench.example");
        let (headers, h): (&[(&str, &str)], _) =
            if i % 2 == 0 { (&[], &mut default) } else { (&[("x-consistency", "eventual")], &mut eventual) };
        let t = Instant::now();
        bench.get_with(&path, headers).await?;
        h.record(t.elapsed().as_micros().max(1) as u64)?;
    }
    writers.stop().await;
    let row = |what: &str, h: &Histogram<u64>| {
        (format!("search by email, 256 clients writing, {what}"), format!("p50 {}, p99 {}", ms(h, 0.5), ms(h, 0.99)))
    };
    Ok(vec![row("default read (waits for the log head)", &default), row("X-Consistency: eventual", &eventual)])
}

/// Loads users until `target` exist, with 256 clients. Returns users/s.
async fn load(bench: &Arc<Bench>, target: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let before = bench.next.load(Ordering::Relaxed);
    let tasks: Vec<_> = (0..256)
        .map(|_| {
            let bench = bench.clone();
            tokio::spawn(async move {
                while bench.next.load(Ordering::Relaxed) < target {
                    bench.create().await?;
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    let mut last_report = Instant::now();
    for t in tasks {
        while !t.is_finished() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if last_report.elapsed() > Duration::from_secs(10) {
                eprintln!("  loaded {} users", bench.next.load(Ordering::Relaxed));
                last_report = Instant::now();
            }
        }
        t.await??;
    }
    let made = bench.next.load(Ordering::Relaxed).saturating_sub(before);
    Ok(made as f64 / started.elapsed().as_secs_f64())
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (bench, backend, prefix) = start(&args).await?;
    eprintln!(
        "benchmarking on {backend} ({} cores)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let rows = if args.import > 0 {
        let jobs = crate::bench_jobs::JobsBench {
            users: args.import,
            attribute_rows: args.import_attributes,
            attribute_users: args.attribute_users,
        };
        crate::bench_jobs::run(bench.clone(), jobs).await?
    } else if args.events {
        let events = crate::bench_events::EventsBench {
            samples: args.samples.min(2_000),
            rate: args.rate,
            seconds: args.seconds.max(10),
            replay_events: args.replay_events,
            nats: args.nats_url.clone().map(|u| (u, prefix.clone())),
        };
        crate::bench_events::run(bench.clone(), events).await?
    } else if args.groups {
        crate::bench_groups::run(bench.clone(), args.group_users, args.rule_groups, args.eval_users, args.samples)
            .await?
    } else {
        let mut rows = write_rows(&bench, &args).await?;
        let total = load_to(&bench, args.users, &mut rows).await?;
        rows.extend(query_rows(&bench, total, args.samples).await?);
        rows.extend(passage_rows(&bench, total, args.samples).await?);
        // Last: it adds users, which the rows above must not see.
        rows.extend(read_cost_under_load(&bench, total, args.samples.min(2_000)).await?);
        rows
    };
    println!("\n| {backend} — measured | result |\n| --- | --- |");
    for (what, result) in rows {
        println!("| {what} | {result} |");
    }
    if !args.events && !args.groups && args.import == 0 {
        let Bench { service, .. } = Arc::try_unwrap(bench).map_err(|_| anyhow::anyhow!("bench still in use"))?;
        service.stop().await;
    }
    Ok(())
}

/// Starts the service on the benchmark's database with a key for company 1;
/// returns the bench, the backend's name and the NATS prefix of this run.
async fn start(args: &BenchArgs) -> anyhow::Result<(Arc<Bench>, &'static str, String)> {
    let url = match args.database.clone() {
        Some(url) => url,
        None => {
            let path = std::env::temp_dir().join(format!("userstream-bench-{}.db", std::process::id()));
            format!("sqlite://{}", path.display())
        }
    };
    let mut config = Config::new(url.clone());
    // The import bench runs its jobs itself, as the CLI does.
    config.job_worker = args.import == 0;
    let prefix = format!("bench{}", std::process::id());
    if args.events {
        config.nats = args.nats_url.as_ref().map(|nats| {
            let mut relay = RelayConfig::new(nats);
            relay.stream = prefix.to_uppercase();
            relay.subject_prefix = prefix.clone();
            relay
        });
    }
    let service = Service::start(config).await?;
    let router = service.router();
    let key = service.state.access.create_key("1", None).await?;
    let credential = service.state.access.verify_secret(&key.api_key, &key.api_secret).await?.context("new key")?;
    let token = service.state.access.issue_token(&credential, time::OffsetDateTime::now_utc());
    let bench = Arc::new(Bench {
        router,
        service,
        next: AtomicU64::new(0),
        fynd_auth: format!("Bearer {token}").parse()?,
        passage_auth: format!("Bearer {}", key.bearer).parse()?,
    });
    let backend = if url.starts_with("sqlite") { "SQLite" } else { "PostgreSQL" };
    Ok((bench, backend, prefix))
}

/// CreateUser throughput at each concurrency, and the command → findable lag.
async fn write_rows(bench: &Arc<Bench>, args: &BenchArgs) -> anyhow::Result<Vec<(String, String)>> {
    let mut rows: Vec<(String, String)> = Vec::new();
    for &clients in &args.clients {
        let (n, h, secs) = throughput(bench, clients, args.seconds).await?;
        rows.push((
            format!("CreateUser, {clients} clients"),
            format!("{:.0} cmd/s, p50 {}, p99 {}", n as f64 / secs, ms(&h, 0.5), ms(&h, 0.99)),
        ));
        eprintln!("  {}: {}", rows[rows.len() - 1].0, rows[rows.len() - 1].1);
    }

    // Visibility lag: one probe client while 16 others write.
    let writers = Writers::start(bench, 16);
    let mut lag = histogram();
    for _ in 0..500 {
        let (n, _) = bench.create().await?;
        let acked = Instant::now();
        let email = format!("u{n}%40bench.example");
        loop {
            let found = bench.get(&format!("/customers/search?q={email}")).await?;
            if found["users"].as_array().is_some_and(|u| !u.is_empty()) {
                break;
            }
            if acked.elapsed() > Duration::from_secs(30) {
                bail!("user {n} was not findable 30 s after its command was acknowledged");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        lag.record(acked.elapsed().as_micros().max(1) as u64)?;
    }
    writers.stop().await;
    rows.push((
        "command → query visibility lag (search by email, 16 writers)".into(),
        format!("p50 {}, p99 {}", ms(&lag, 0.5), ms(&lag, 0.99)),
    ));
    eprintln!("  lag: p50 {} p99 {}", ms(&lag, 0.5), ms(&lag, 0.99));

    Ok(rows)
}

/// Loads users up to `users` (a row for the rate) and waits for the users
/// projection; returns how many users there are.
async fn load_to(bench: &Arc<Bench>, users: u64, rows: &mut Vec<(String, String)>) -> anyhow::Result<u64> {
    let have = bench.next.load(Ordering::Relaxed);
    if users > have {
        eprintln!("loading {} users …", users);
        let rate = load(bench, users).await?;
        rows.push((format!("loading to {} users (256 clients)", users), format!("{rate:.0} users/s")));
    }
    let head = bench.service.state.commands.log().watch_head().borrow().to_owned();
    let caught_up = Instant::now();
    while !bench.service.state.users.wait_for(head, Duration::from_secs(10)).await {
        eprintln!("  projection at {} of {head}", bench.service.state.users.status().position);
    }
    eprintln!("  projection caught up {:.1} s after the last command", caught_up.elapsed().as_secs_f64());
    let total = bench.next.load(Ordering::Relaxed);

    Ok(total)
}

/// Search by email and list pages over `total` users.
async fn query_rows(bench: &Arc<Bench>, total: u64, samples: u64) -> anyhow::Result<Vec<(String, String)>> {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut search = histogram();
    for i in 0..samples {
        let n = (i * 7_919 + 13) % total;
        let t = Instant::now();
        let found = bench.get(&format!("/customers/search?q=u{n}%40bench.example")).await?;
        search.record(t.elapsed().as_micros().max(1) as u64)?;
        if found["users"].as_array().map(Vec::len) != Some(1) {
            bail!("user {n} not found by email");
        }
    }
    rows.push((
        format!("search by email, {total} users"),
        format!("p50 {}, p99 {}", ms(&search, 0.5), ms(&search, 0.99)),
    ));

    let mut list = histogram();
    for i in 0..samples {
        let page = 1 + (i * 31) % 100;
        let t = Instant::now();
        let body = bench.get(&format!("/customers/list?page_no={page}&page_size=10")).await?;
        list.record(t.elapsed().as_micros().max(1) as u64)?;
        if body["items"].as_array().map(Vec::len) != Some(10) {
            bail!("list page {page} is not full");
        }
    }
    rows.push((
        format!("list page (10 items, pages 1–100), {total} users"),
        format!("p50 {}, p99 {}", ms(&list, 0.5), ms(&list, 0.99)),
    ));

    Ok(rows)
}

/// The Passage list: an exact identifier, and filtered, ordered pages.
async fn passage_rows(bench: &Arc<Bench>, total: u64, samples: u64) -> anyhow::Result<Vec<(String, String)>> {
    let mut rows: Vec<(String, String)> = Vec::new();
    // The Passage list: an exact identifier, and a filtered, ordered page.
    let passage = "/v1/apps/000000000000000000000001/users";
    let mut by_identifier = histogram();
    for i in 0..samples {
        let n = (i * 7_919 + 29) % total;
        let t = Instant::now();
        let (status, body) =
            bench.call(Request::get(format!("{passage}?identifier=u{n}%40bench.example")).body(Body::empty())?).await?;
        by_identifier.record(t.elapsed().as_micros().max(1) as u64)?;
        if status != StatusCode::OK || body["total_users"] != 1 {
            bail!("passage identifier u{n}: {status} {body}");
        }
    }
    rows.push((
        format!("Passage list by identifier, {total} users"),
        format!("p50 {}, p99 {}", ms(&by_identifier, 0.5), ms(&by_identifier, 0.99)),
    ));
    let filtered_pages = [
        ("status=active&order_by=created_at:DESC", samples, "status filter"),
        (
            "status=active&login_count=lt%3A5&order_by=created_at:DESC",
            (samples / 50).max(20),
            "status + login_count filter",
        ),
    ];
    for (filter, samples, label) in filtered_pages {
        let mut filtered = histogram();
        for i in 0..samples {
            let page = 1 + (i * 31) % 100;
            let t = Instant::now();
            let query = format!("{passage}?{filter}&limit=10&page={page}");
            let (status, body) = bench.call(Request::get(query).body(Body::empty())?).await?;
            filtered.record(t.elapsed().as_micros().max(1) as u64)?;
            if status != StatusCode::OK || body["users"].as_array().map(Vec::len) != Some(10) {
                bail!("passage {filter} page {page}: {status}");
            }
        }
        rows.push((
            format!("Passage list, {label}, 10 per page (pages 1–100), {total} users"),
            format!("p50 {}, p99 {}", ms(&filtered, 0.5), ms(&filtered, 0.99)),
        ));
    }
    Ok(rows)
}
