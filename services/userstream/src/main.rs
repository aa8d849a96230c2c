//! `userstream`: serve the API, migrate a database, run bulk jobs, or benchmark.

mod bench;
mod bench_events;
mod bench_groups;
mod bench_jobs;
mod jobs;
mod replay;
mod tail;

/// mimalloc: the service allocates many small, short-lived buffers (JSON,
/// SQL arguments) across threads, where glibc's allocator spent a fifth of
/// the CPU time of a CreateUser benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;
use userstream_api::access::Access;
use userstream_api::{Config, Service};
use userstream_eventlog::{Db, SqlEventLog};
use userstream_projections::relay::RelayConfig;

#[derive(Parser)]
#[command(
    name = "userstream",
    version,
    about = "Event-sourced user management: Fynd User API and Passage Users API on one event log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as `text` (for a person) or `json` (one object a line, for
    /// a log collector); on stderr, filtered by `RUST_LOG`.
    #[arg(long = "log-format", env = "USERSTREAM_LOG_FORMAT", global = true, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args, Clone)]
struct DatabaseArg {
    /// `sqlite://FILE` (created if missing) or `postgres://…`.
    #[arg(long = "database", env = "DATABASE_URL", default_value = "sqlite://userstream.db")]
    url: String,
}

#[derive(clap::Args, Clone)]
struct NatsArgs {
    /// Publish every event to NATS JetStream at this URL (`nats://host:4222`).
    #[arg(long = "nats", env = "NATS_URL")]
    nats_url: Option<String>,
    /// The JetStream stream (created if missing, subjects `userstream.>`).
    #[arg(long = "nats-stream", env = "NATS_STREAM", default_value = "USERSTREAM")]
    stream: String,
    /// Subjects are `{prefix}.{company_id}.{application_id}.{event_type}`.
    #[arg(long = "nats-subject-prefix", env = "NATS_SUBJECT_PREFIX", default_value = "userstream")]
    subject_prefix: String,
    /// The stream's de-duplication window, in seconds.
    #[arg(long = "nats-duplicate-window", env = "NATS_DUPLICATE_WINDOW_SECS", default_value_t = 120)]
    duplicate_window_secs: u64,
    /// How long the stream keeps events, in seconds (0: forever).
    #[arg(long = "nats-max-age", env = "NATS_MAX_AGE_SECS", default_value_t = 0)]
    max_age_secs: u64,
}

impl NatsArgs {
    fn relay(&self) -> Option<RelayConfig> {
        let url = self.nats_url.as_ref().filter(|u| !u.is_empty())?;
        let mut config = RelayConfig::new(url);
        config.stream = self.stream.clone();
        config.subject_prefix = self.subject_prefix.clone();
        config.duplicate_window = Duration::from_secs(self.duplicate_window_secs);
        config.max_age = Duration::from_secs(self.max_age_secs);
        Some(config)
    }
}

#[derive(clap::Args, Clone)]
struct JobLimitArgs {
    /// Largest file a bulk job reads, in bytes.
    #[arg(long = "job-max-bytes", env = "USERSTREAM_JOB_MAX_BYTES", default_value_t = 4 << 30)]
    max_bytes: u64,
    /// Most rows a bulk job's file may have.
    #[arg(long = "job-max-rows", env = "USERSTREAM_JOB_MAX_ROWS", default_value_t = 10_000_000)]
    max_rows: u64,
}

impl JobLimitArgs {
    fn limits(&self) -> userstream_api::jobs::Limits {
        userstream_api::jobs::Limits { max_bytes: self.max_bytes, max_rows: self.max_rows }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API with its projections.
    Serve {
        #[command(flatten)]
        database: DatabaseArg,
        /// Address to listen on; port 0 picks a free port (printed on start).
        #[arg(long, env = "USERSTREAM_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Longest a query waits for the writes it must see (the log's head,
        /// or `X-Min-Position`) before answering 503, in milliseconds.
        #[arg(long, env = "USERSTREAM_MIN_POSITION_WAIT_MS", default_value_t = 5000)]
        min_position_wait_ms: u64,
        /// The AES-256-GCM key of encrypted attributes: 32 bytes, base64.
        /// Without it a key is kept in the database (development only).
        #[arg(long = "attribute-key", env = "USERSTREAM_ATTRIBUTE_KEY", hide_env_values = true)]
        attribute_key: Option<SecretString>,
        /// The only directory `file://` URLs may name (created if missing).
        /// Default: `files/` beside the SQLite database file, `./files` on PostgreSQL.
        #[arg(long = "files-dir", env = "USERSTREAM_FILES_DIR")]
        files_dir: Option<std::path::PathBuf>,
        /// Hosts and networks (comma-separated names, addresses or CIDRs)
        /// that `http(s)://` fetches may reach although they are loopback,
        /// private, link-local or otherwise internal. Default: none.
        #[arg(long = "fetch-allow", env = "USERSTREAM_FETCH_ALLOW", default_value = "")]
        fetch_allow: userstream_api::fetch::FetchAllow,
        /// Requests a second each credential may make (bursts of as many);
        /// over it, 429 with `Retry-After`. Default: no limit.
        #[arg(long = "rate-limit", env = "USERSTREAM_RATE_LIMIT")]
        rate_limit: Option<u32>,
        /// Open `/metrics`, `/openapi.json` and `/docs` to everyone. By
        /// default they answer loopback, or any valid credential.
        #[arg(long = "ops-public", env = "USERSTREAM_OPS_PUBLIC")]
        ops_public: bool,
        #[command(flatten)]
        job_limits: JobLimitArgs,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Manage API credentials.
    Apikey {
        #[command(subcommand)]
        action: ApikeyCommand,
    },
    /// Create or upgrade the schema of the event log and the read models, then exit.
    Migrate {
        #[command(flatten)]
        database: DatabaseArg,
    },
    /// Measure command throughput, visibility lag and query latency.
    Bench(bench::BenchArgs),
    /// Rebuild read models from the log into fresh tables and switch to them (with a progress bar).
    Replay(replay::ReplayArgs),
    /// Print the events the NATS relay publishes, as they arrive (a durable consumer).
    Tail(tail::TailArgs),
    /// Run a bulk import job here, with a progress bar (Ctrl-C stops; run again to resume).
    Import {
        #[command(subcommand)]
        what: jobs::ImportCommand,
    },
    /// Run a bulk export job here and write its file.
    Export {
        #[command(subcommand)]
        what: jobs::ExportCommand,
    },
}

#[derive(Subcommand)]
enum ApikeyCommand {
    /// Create an API key and secret (printed once; the secret is stored hashed).
    Create {
        #[command(flatten)]
        database: DatabaseArg,
        /// The company the key belongs to.
        #[arg(long)]
        company: String,
        /// Bind the key to one application (required for nothing, but narrower).
        #[arg(long)]
        application: Option<String>,
        /// Print `{"api_key", "api_secret", "bearer"}` as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the API keys (never their secrets), revoked ones marked.
    List {
        #[command(flatten)]
        database: DatabaseArg,
        /// Only the keys of this company.
        #[arg(long)]
        company: Option<String>,
        /// Print one JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key: its secret, tokens and Passage bearers stop
    /// working on every instance within a second.
    Revoke {
        #[command(flatten)]
        database: DatabaseArg,
        /// The API key to revoke.
        key: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).init(),
    }
    match cli.command {
        Command::Serve {
            database,
            listen,
            min_position_wait_ms,
            attribute_key,
            files_dir,
            fetch_allow,
            rate_limit,
            ops_public,
            job_limits,
            nats,
        } => {
            let mut config = Config::new(database.url);
            config.fetch_allow = fetch_allow;
            config.rate_limit = rate_limit.filter(|n| *n > 0);
            config.ops_public = ops_public;
            if let Some(dir) = files_dir {
                config.files_dir = dir;
            }
            config.job_limits = job_limits.limits();
            config.min_position_wait = Duration::from_millis(min_position_wait_ms);
            config.attribute_key = attribute_key.filter(|k| !k.expose_secret().trim().is_empty());
            config.nats = nats.relay();
            serve(config, &listen).await
        }
        Command::Apikey { action: ApikeyCommand::Create { database, company, application, json } } => {
            let db = Db::connect(&database.url).await.context("connecting to the database")?;
            let access = Access::open(db).await?;
            let key = access.create_key(&company, application.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string(&key)?);
            } else {
                print_key(&key, &company, application.as_deref());
            }
            Ok(())
        }
        Command::Apikey { action: ApikeyCommand::List { database, company, json } } => {
            let db = Db::connect(&database.url).await.context("connecting to the database")?;
            let keys = Access::open(db).await?.list_keys(company.as_deref()).await?;
            for key in &keys {
                if json {
                    println!("{}", serde_json::to_string(key)?);
                } else {
                    println!(
                        "{}  company {}  application {}  created {}  {}",
                        key.api_key,
                        key.company_id,
                        key.application_id.as_deref().unwrap_or("*"),
                        key.created_at,
                        key.revoked_at.as_deref().map(|at| format!("revoked {at}")).unwrap_or("active".into()),
                    );
                }
            }
            if keys.is_empty() && !json {
                println!("no API keys");
            }
            Ok(())
        }
        Command::Apikey { action: ApikeyCommand::Revoke { database, key } } => {
            let db = Db::connect(&database.url).await.context("connecting to the database")?;
            match Access::open(db).await?.revoke_key(&key).await? {
                Some(at) => {
                    println!("revoked {key} (at {at}); its tokens and bearers stop working within a second");
                    Ok(())
                }
                None => anyhow::bail!("no API key {key}"),
            }
        }
        Command::Migrate { database } => {
            let db = Db::connect(&database.url).await.context("connecting to the database")?;
            let log = SqlEventLog::open(db.clone()).await?;
            userstream_projections::registry::migrate(&log).await?;
            userstream_eventlog::shred::migrate(&db).await?;
            Access::open(db).await?;
            println!("migrated {}", redact(&database.url));
            Ok(())
        }
        Command::Bench(args) => bench::run(args).await,
        Command::Tail(args) => tail::run(args).await,
        Command::Replay(args) => replay::run(args).await,
        Command::Import { what } => jobs::import(what).await,
        Command::Export { what } => jobs::export(what).await,
    }
}

async fn serve(config: Config, listen: &str) -> anyhow::Result<()> {
    let database = config.database_url.expose_secret().to_string();
    let service = Service::start(config).await.with_context(|| format!("starting on {}", redact(&database)))?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    // The embedded default starts with one command: an empty SQLite database
    // gets a development key for company 1, shown once.
    if database.starts_with("sqlite:") && service.state.access.key_count().await? == 0 {
        let key = service.state.access.create_key("1", None).await?;
        println!("no API keys yet: created a development key for company 1");
        print_key(&key, "1", None);
    }
    // Tests and scripts read this line to find the port.
    println!("userstream listening on http://{addr}");
    tracing::info!(%addr, database = %redact(&database), "serving");
    // Connect info: the peer address the credential-guessing limits count by.
    let app = service.router().into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
    service.stop().await;
    Ok(())
}

fn print_key(key: &userstream_api::access::NewKey, company: &str, application: Option<&str>) {
    println!("api_key:    {}", key.api_key);
    println!("api_secret: {}", key.api_secret);
    println!("bearer:     {} (Passage: Authorization: Bearer …)", key.bearer);
    println!("company:    {company}{}", application.map(|a| format!(", application {a}")).unwrap_or_default());
    println!("the secret is not stored in clear and will not be shown again");
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_string(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
