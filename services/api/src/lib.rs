//! Command handling and the HTTP surfaces of userstream.
//!
//! Modules, and which way they depend:
//! - [`commands`]: the one command handler (load → evolve → decide →
//!   reserve → append → retry) over the domain's `Stream` trait; the
//!   [`commands::Rejection`] / [`commands::Failure`] split.
//! - [`http`]: request plumbing every surface shares: errors, extractors,
//!   the one consistency helper, response helpers. Depends on `commands`,
//!   never on a surface.
//! - Surfaces, each depending on `http` and `commands` only: [`fynd`]
//!   (customers; its sub-surfaces [`sessions`], [`platform_config`],
//!   [`attributes`], [`groups`] with [`members_file`]), [`passage`],
//!   [`events`] (feed, SSE, history, as-of), [`erasure`] (erasing a
//!   person by crypto-shredding), [`jobs`] (bulk import, export
//!   and attribute jobs, and their worker), [`oauth`], [`ops`].
//! - [`access`], [`auth`]: credentials and the authentication middleware;
//!   [`throttle`]: limits on failed credential checks and request rates;
//!   [`clock`]: the one place the time is read (tests move it by hand);
//!   [`files`]: the files directory `file://` URLs are confined to;
//!   [`fetch`]: `http(s)://` fetches, confined to public addresses;
//!   [`crypto`]: encryption at rest of attribute values; [`dto`]: wire shapes.
//! - [`openapi`]: the OpenAPI document, one operation per route of the
//!   surfaces' route tables (a test holds them together); [`metrics`]: the
//!   Prometheus recorder, the request layer and the gauges read at a scrape.
//!   Both are served by [`ops`]. [`console`]: the admin console's page,
//!   a client of the public API like any other.

pub mod access;
pub mod attributes;
pub mod auth;
pub mod clock;
pub mod commands;
pub mod console;
pub mod crypto;
pub mod dto;
pub mod erasure;
pub mod events;
pub mod fetch;
pub mod files;
pub mod fynd;
pub mod groups;
pub mod http;
pub mod jobs;
pub mod members_file;
pub mod metrics;
pub mod oauth;
pub mod openapi;
pub mod ops;
pub mod passage;
pub mod platform_config;
pub mod sessions;
pub mod throttle;

use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::MethodRouter;
use axum::Router;
use commands::Commands;
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;
use userstream_eventlog::keys::KeyStore;
use userstream_eventlog::{Db, SqlEventLog};
use userstream_projections::read_models::attributes::AttributesQuery;
use userstream_projections::read_models::groups::GroupsQuery;
use userstream_projections::read_models::jobs::JobsQuery;
use userstream_projections::read_models::users::UsersQuery;
use userstream_projections::registry::Workers;
use userstream_projections::relay::RelayConfig;
use userstream_projections::RunnerHandle;

/// Settings of a running service, built once at start-up. Secrets are
/// [`SecretString`]s: `Debug` prints them redacted.
#[derive(Debug, Clone)]
pub struct Config {
    /// May hold a password (`postgres://user:pass@…`).
    pub database_url: SecretString,
    /// Longest a query waits for `X-Min-Position` before answering 503.
    pub min_position_wait: Duration,
    /// Largest projection lag (in events) at which `/readyz` still says ready.
    pub ready_lag: i64,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// How often projections poll for appends by other processes.
    pub poll_interval: Duration,
    /// AES-256 key (base64) for encrypted attributes (`--attribute-key` /
    /// `USERSTREAM_ATTRIBUTE_KEY`); `None` keeps one in the database.
    pub attribute_key: Option<SecretString>,
    /// Publish every event to NATS JetStream (off on the embedded default).
    pub nats: Option<RelayConfig>,
    /// Where commands, sessions and tokens read the time.
    pub clock: clock::Clock,
    /// The only directory `file://` URLs may name (`--files-dir`); created if missing.
    pub files_dir: std::path::PathBuf,
    /// The addresses `http(s)://` fetches may reach despite the rule
    /// (`--fetch-allow`); none by default.
    pub fetch_allow: fetch::FetchAllow,
    /// Size and row limits of a bulk job's file.
    pub job_limits: jobs::Limits,
    /// Run bulk jobs in the background (the `jobs` lease); off for a
    /// process that runs one job itself (`userstream import`).
    pub job_worker: bool,
    /// Requests a second one credential may make (`--rate-limit`); `None`: no limit.
    pub rate_limit: Option<u32>,
    /// `/metrics`, `/openapi.json` and `/docs` open to everyone
    /// (`--ops-public`); by default loopback or a valid credential.
    pub ops_public: bool,
}

impl Config {
    pub fn new(database_url: impl Into<String>) -> Self {
        let database_url: String = database_url.into();
        let files_dir = files::FilesDir::default_for(&database_url);
        Config {
            database_url: SecretString::from(database_url),
            min_position_wait: Duration::from_secs(5),
            ready_lag: 10_000,
            body_limit: 1024 * 1024,
            poll_interval: Duration::from_millis(500),
            attribute_key: None,
            nats: None,
            clock: clock::Clock::system(),
            files_dir,
            fetch_allow: fetch::FetchAllow::default(),
            job_limits: jobs::Limits::default(),
            job_worker: true,
            rate_limit: None,
            ops_public: false,
        }
    }
}

/// What every handler shares; cloned per request, so it is one `Arc`.
pub type AppState = std::sync::Arc<Shared>;

pub struct Shared {
    pub config: Config,
    pub db: Db,
    pub commands: Commands,
    pub access: access::Access,
    /// Limits on guessing credentials and on each credential's request rate.
    pub throttle: throttle::Throttle,
    pub queries: UsersQuery,
    /// The users projection, which customer queries wait on.
    pub users: RunnerHandle,
    pub attributes: RunnerHandle,
    pub groups: RunnerHandle,
    pub engine: RunnerHandle,
    pub jobs: RunnerHandle,
    pub job_queries: JobsQuery,
    pub attribute_queries: AttributesQuery,
    pub group_queries: GroupsQuery,
    pub sealer: crypto::Sealer,
    /// Where `file://` sources are read from.
    pub files: files::FilesDir,
    /// Where `http(s)://` sources are fetched through.
    pub fetcher: fetch::Fetcher,
    /// Every projection of this process, for readiness.
    pub runners: Vec<RunnerHandle>,
    /// The bulk-job worker's handle, once it runs in this process.
    pub job_runner: std::sync::OnceLock<RunnerHandle>,
}

/// The service's parts, running: the log, its writer and the projections.
pub struct Service {
    pub state: AppState,
    pub cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Service {
    /// Connects, migrates, and starts the log writer and the projection runners.
    pub async fn start(config: Config) -> anyhow::Result<Service> {
        let db = Db::connect(config.database_url.expose_secret()).await?;
        let (log, sealer) = open_log(&db, config.attribute_key.as_ref()).await?;
        let access = access::Access::open(db.clone()).await?;
        let cancel = CancellationToken::new();
        let poll = config.poll_interval;
        let checkpointer = {
            let (db, cancel) = (db.clone(), cancel.clone());
            async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    Err(e) = db.checkpoints(Duration::from_millis(200)) => {
                        tracing::error!(error = %e, "WAL checkpointer stopped; commits checkpoint by themselves");
                    }
                }
            }
        };
        let workers = Workers::start(&log, config.nats.clone(), &cancel, poll).await?;
        let runners = workers.handles();
        let mut tasks = workers.tasks;
        tasks.push(tokio::spawn(checkpointer));
        let clock = config.clock.clone();
        let files = files::FilesDir::open(&config.files_dir)
            .map_err(|e| anyhow::anyhow!("files directory {}: {e}", config.files_dir.display()))?;
        let fetcher = fetch::Fetcher::new(config.fetch_allow.clone())?;
        let throttle = throttle::Throttle::new(clock.clone(), config.rate_limit);
        let state = AppState::new(Shared {
            config,
            throttle,
            queries: UsersQuery::new(db.clone()),
            attribute_queries: AttributesQuery::new(db.clone()),
            group_queries: GroupsQuery::new(db.clone()),
            job_queries: JobsQuery::new(db.clone()),
            db,
            commands: Commands::new(log, clock),
            access,
            runners,
            job_runner: std::sync::OnceLock::new(),
            users: workers.users,
            attributes: workers.attributes,
            groups: workers.groups,
            engine: workers.membership,
            jobs: workers.jobs,
            sealer,
            files,
            fetcher,
        });
        // Revoked keys and erased users, as other processes record them.
        let (followed, stop) = (state.clone(), cancel.clone());
        tasks.push(tokio::spawn(async move {
            let follow = async {
                match followed.commands.log().shredder() {
                    Some(shredder) => tokio::join!(followed.access.follow_revocations(), shredder.follow_erasures()).0,
                    None => followed.access.follow_revocations().await,
                }
            };
            stop.run_until_cancelled(follow).await;
        }));
        if state.config.job_worker {
            let worker = jobs::JobWorker::new(state.clone());
            let _ = state.job_runner.set(userstream_projections::worker::Worker::health(&worker).handle());
            tasks.push(tokio::spawn(userstream_projections::worker::run(worker, cancel.clone(), poll)));
        }
        if metrics::install().is_some() {
            let stop = cancel.clone();
            tasks.push(tokio::spawn(async move {
                stop.run_until_cancelled(metrics::upkeep()).await;
            }));
        }
        Ok(Service { state, cancel, tasks })
    }

    pub fn router(&self) -> Router {
        app(self.state.clone())
    }

    /// Stops the projection runners and waits for them.
    pub async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The domain's rules of personal data, for the log's shredder.
struct PersonalData;

impl userstream_eventlog::shred::Policy for PersonalData {
    fn subject(&self, stream: &str) -> Option<String> {
        userstream_domain::codec::subject_of(stream)
    }

    fn personal(&self, event_type: &str, data: &serde_json::Value) -> Vec<&'static str> {
        userstream_domain::codec::personal_fields(event_type, data)
    }

    fn streams(&self, subject: &str) -> Vec<String> {
        userstream_domain::codec::streams_of(subject)
    }
}

/// The event log as every part of the service reads and writes it: personal
/// fields sealed under per-user keys wrapped by the master key (the
/// attribute key, or one kept in the database), and the sealer of
/// encrypted attribute values. `replay` and the jobs CLI open it the same way.
pub async fn open_log(db: &Db, attribute_key: Option<&SecretString>) -> anyhow::Result<(SqlEventLog, crypto::Sealer)> {
    let sealer = crypto::sealer(attribute_key, &KeyStore::open(db.clone()).await?).await?;
    let policy = std::sync::Arc::new(PersonalData);
    let log = SqlEventLog::open(db.clone()).await?;
    let shredder = userstream_eventlog::shred::Shredder::open(db.clone(), sealer.wrapping_key(), policy).await?;
    let finished = shredder.finish_erasures(userstream_domain::codec::USER_ERASED).await?;
    if finished > 0 {
        tracing::warn!(finished, "finished erasures a stop had cut short");
    }
    let log = log.with_shredder(std::sync::Arc::new(shredder));
    Ok((log, sealer))
}

/// Most of an oversized body read (and dropped) before its 413 is sent.
const DRAIN_BYTES: usize = 64 * 1024 * 1024;
/// Longest an oversized body is read before its 413 is sent.
const DRAIN_TIME: Duration = Duration::from_secs(10);
/// A client that sends no body bytes for this long gets its 413 at once.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// Answers 413 when the declared `Content-Length` is over the limit, before
/// any handler runs. A client that asked `Expect: 100-continue` gets it at
/// once and sends nothing. Any other client may be writing the whole body
/// before it reads: the body is read and dropped first (at most
/// [`DRAIN_BYTES`] and [`DRAIN_TIME`], and only while it keeps coming: a
/// client idle for [`DRAIN_IDLE`] is answered), so the client finishes
/// writing and reads its 413 instead of a reset connection; then the
/// connection closes.
/// Bodies without a declared length are cut by [`DefaultBodyLimit`] as they
/// stream.
async fn reject_oversized(
    axum::extract::State(limit): axum::extract::State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    // An import's uploaded file has its own bound (`--job-max-bytes`).
    if declared.is_some_and(|n| n > limit) && !jobs::http::is_upload(&request) {
        let passage = request.uri().path().starts_with(passage::PREFIX.split('{').next().unwrap_or_default());
        let continues = request
            .headers()
            .get(axum::http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !continues {
            let mut body = request.into_body().into_data_stream();
            let drain = async {
                let mut read = 0;
                while let Ok(Some(Ok(chunk))) =
                    tokio::time::timeout(DRAIN_IDLE, futures_util::StreamExt::next(&mut body)).await
                {
                    read += chunk.len();
                    if read > DRAIN_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        }
        let error = http::ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is too large (limit {limit} bytes)"),
        );
        let mut response = match passage {
            true => http::error::PassageError::from(error).into_response(),
            false => error.into_response(),
        };
        response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        return response;
    }
    next.run(request).await
}

/// Every tenant-scoped route of both surfaces, as (method, full path
/// template). The router is built from the same tables.
pub fn route_table() -> Vec<(Method, String)> {
    let fynd = fynd::routes().into_iter().map(|(m, p, _)| (m, format!("{}{p}", fynd::PREFIX)));
    let passage = passage::routes().into_iter().map(|(m, p, _)| (m, format!("{}{p}", passage::PREFIX)));
    fynd.chain(passage).collect()
}

/// The routes outside both surfaces: the token endpoint and the
/// operational routes.
pub fn other_routes() -> Vec<(Method, String)> {
    let mut routes = vec![(Method::POST, oauth::TOKEN_PATH.to_string())];
    routes.extend(ops::ROUTES.iter().map(|p| (Method::GET, p.to_string())));
    routes
}

fn nest(routes: Vec<(Method, &'static str, MethodRouter<AppState>)>) -> Router<AppState> {
    routes.into_iter().fold(Router::new(), |router, (_, path, handler)| router.route(path, handler))
}

/// The whole HTTP API. Every request passes [`auth::authenticate`] first.
pub fn app(state: AppState) -> Router {
    let limit = state.config.body_limit;
    Router::new()
        .nest(fynd::PREFIX, nest(fynd::routes()))
        .nest(passage::PREFIX, nest(passage::routes()))
        .merge(oauth::router())
        .merge(ops::router())
        .merge(console::router())
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(limit, reject_oversized))
        .layer(axum::middleware::from_fn(metrics::track))
        // A 5xx is logged once, where its cause is known (`ApiError::internal`
        // and the storage errors), inside this span: not again by the layer.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<_>| {
                    let id =
                        req.headers().get(http::request_id::HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
                    tracing::info_span!("http.request", method = %req.method(), path = %req.uri().path(), request_id = %id)
                })
                .on_failure(()),
        )
        .layer(axum::middleware::from_fn(http::request_id::assign))
        .with_state(state)
}
