//! `userstream import users|attributes FILE` and `userstream export users
//! FILE`: the bulk jobs of the API, run in this process against a database
//! with a progress bar, then the job's summary once every read model has
//! caught up. Ctrl-C stops between two chunks; the same command resumes the
//! job (an unfinished job of the same file and tenant is taken up again).
//!
//! The file is linked (or copied) into the files directory under
//! `imports/`, so a resumed run reads the same bytes even if the original
//! moved. While it runs, the process holds the `jobs` lease, so a serving
//! instance on the same database does not run the job as well.

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use userstream_api::commands::Meta;
use userstream_api::jobs::source::Format;
use userstream_api::jobs::{self, Ran};
use userstream_api::{Config, Service};
use userstream_domain::job::{Counts, FileRef, Job, JobKind, JobStatus};
use userstream_eventlog::lease::Lease;
use userstream_eventlog::Tenant;
use userstream_projections::read_models::jobs::JobFilter;

#[derive(clap::Args, Clone)]
pub struct JobArgs {
    /// `sqlite://FILE` or `postgres://…`.
    #[arg(long = "database", env = "DATABASE_URL", default_value = "sqlite://userstream.db")]
    pub database: String,
    /// The tenant: company id.
    #[arg(long, default_value = "1")]
    pub company: String,
    /// The tenant: application id.
    #[arg(long)]
    pub application: String,
    /// `csv` or `jsonl` (default: from the file's extension).
    #[arg(long)]
    pub format: Option<String>,
    /// The files directory (where the job keeps its copy of the file and its error file).
    #[arg(long = "files-dir", env = "USERSTREAM_FILES_DIR")]
    pub files_dir: Option<PathBuf>,
    /// The AES-256-GCM key of encrypted attributes (as `serve` takes it).
    #[arg(long = "attribute-key", env = "USERSTREAM_ATTRIBUTE_KEY", hide_env_values = true)]
    pub attribute_key: Option<secrecy::SecretString>,
}

#[derive(clap::Subcommand)]
pub enum ImportCommand {
    /// CreateUser for every row of a CSV (header: the CreateUser fields) or JSONL file.
    Users {
        file: PathBuf,
        #[command(flatten)]
        args: JobArgs,
    },
    /// Attribute values: rows of `user_id|email|phone_number, definition_id|slug, value`.
    Attributes {
        file: PathBuf,
        #[command(flatten)]
        args: JobArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum ExportCommand {
    /// The live users, as CSV or JSONL.
    Users {
        file: PathBuf,
        /// A `/customers/list` filter: an email or phone, or a JSON filter.
        #[arg(long)]
        q: Option<String>,
        #[command(flatten)]
        args: JobArgs,
    },
}

/// What a finished run reports.
pub struct Summary {
    pub job: Job,
    pub elapsed: Duration,
    /// Until the job was completed; the rest is read models catching up.
    pub job_elapsed: Duration,
    /// When each worker reached the log head.
    pub caught_up: Vec<(&'static str, Duration)>,
}

pub async fn import(command: ImportCommand) -> anyhow::Result<()> {
    let (kind, file, args) = match command {
        ImportCommand::Users { file, args } => (JobKind::Import, file, args),
        ImportCommand::Attributes { file, args } => (JobKind::Attributes, file, args),
    };
    let service = start(&args).await?;
    let outcome = import_file(&service, &tenant(&args), kind, &file, args.format.as_deref(), true).await;
    finish(service, outcome, None).await
}

pub async fn export(command: ExportCommand) -> anyhow::Result<()> {
    let ExportCommand::Users { file, q, args } = command;
    let format = format_of(&file, args.format.as_deref())?;
    let service = start(&args).await?;
    let tenant = tenant(&args);
    let options = q.map_or(serde_json::Value::Null, |q| serde_json::json!({ "q": q }));
    let state = &service.state;
    let lease = hold_lease(&service, true).await;
    let ctx = state.commands.context(&tenant).await?;
    let job = jobs::create_job(state, &meta(&tenant), JobKind::Export, format, FileRef::default(), options, &ctx)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let outcome = run(&service, &tenant, job, lease, true).await;
    finish(service, outcome, Some(file)).await
}

fn tenant(args: &JobArgs) -> Tenant {
    Tenant { company_id: args.company.clone(), application_id: args.application.clone() }
}

fn meta(tenant: &Tenant) -> Meta {
    Meta {
        tenant: tenant.clone(),
        actor: "cli".to_string(),
        correlation_id: uuid::Uuid::now_v7().to_string(),
        idempotency_key: None,
    }
}

async fn start(args: &JobArgs) -> anyhow::Result<Service> {
    let mut config = Config::new(args.database.clone());
    if let Some(dir) = &args.files_dir {
        config.files_dir = dir.clone();
    }
    config.attribute_key = args.attribute_key.clone();
    config.job_worker = false;
    Service::start(config).await.context("starting on the database")
}

fn format_of(file: &Path, given: Option<&str>) -> anyhow::Result<Format> {
    let raw = given
        .map(str::to_string)
        .or_else(|| file.extension().map(|e| e.to_string_lossy().to_string()))
        .unwrap_or_default();
    Format::parse(&raw).map_err(|e| anyhow::anyhow!("{} (pass --format)", e.message))
}

/// Creates (or finds the unfinished) job for `file` and runs it.
pub async fn import_file(
    service: &Service,
    tenant: &Tenant,
    kind: JobKind,
    file: &Path,
    format: Option<&str>,
    show: bool,
) -> anyhow::Result<Summary> {
    let format = format_of(file, format)?;
    let original = std::fs::canonicalize(file).with_context(|| format!("{}", file.display()))?;
    let state = &service.state;
    // Held before the job exists, so no serving instance takes it up.
    let lease = hold_lease(service, show).await;
    let job = match unfinished(service, tenant, kind, &original).await? {
        Some(job) => {
            if show {
                eprintln!("resuming job {} at row {}", job.id, job.rows);
            }
            job
        }
        None => {
            let relative = place(state.files.root(), &original)?;
            let source = FileRef { url: format!("file://{relative}"), relative_url: original.display().to_string() };
            let ctx = state.commands.context(tenant).await?;
            jobs::create_job(state, &meta(tenant), kind, format, source, serde_json::Value::Null, &ctx)
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?
        }
    };
    run(service, tenant, job, lease, show).await
}

/// An unfinished job of this kind whose source is `original`.
async fn unfinished(service: &Service, tenant: &Tenant, kind: JobKind, original: &Path) -> anyhow::Result<Option<Job>> {
    let state = &service.state;
    let head = *state.commands.log().watch_head().borrow();
    state.jobs.wait_for(head, Duration::from_secs(30)).await;
    let mut found = None;
    for status in [JobStatus::Running, JobStatus::Pending] {
        let filter = JobFilter { kinds: vec![kind], status: Some(status), ..JobFilter::default() };
        let (jobs, _) = state.job_queries.list(tenant, &filter, 1, 500).await?;
        found = found.or(jobs.into_iter().find(|j| j.source.relative_url == original.display().to_string()));
    }
    Ok(found)
}

/// Links `original` into `imports/` of the files directory (copies it
/// when a link cannot be made); returns its path there.
fn place(root: &Path, original: &Path) -> anyhow::Result<String> {
    let name = original.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "file".into());
    let relative = format!("imports/{}-{name}", uuid::Uuid::now_v7().simple());
    let target = root.join(&relative);
    std::fs::create_dir_all(target.parent().unwrap_or(root))?;
    if std::fs::hard_link(original, &target).is_err() {
        std::fs::copy(original, &target)
            .with_context(|| format!("copying {} into the files directory", original.display()))?;
    }
    Ok(relative)
}

/// Waits until this process holds the `jobs` lease.
async fn hold_lease(service: &Service, show: bool) -> Lease {
    let mut lease = Lease::new(&service.state.db, "jobs");
    while !lease.hold().await {
        if show {
            eprintln!("another instance is running jobs; waiting for the jobs lease");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    lease
}

/// A CLI run goes on while it is not interrupted and still holds the lease.
struct CliTurn {
    stop: CancellationToken,
    lease: Lease,
}

impl jobs::Proceed for CliTurn {
    async fn proceed(&mut self) -> bool {
        !self.stop.is_cancelled() && self.lease.hold().await
    }
}

/// Runs the job holding the `jobs` lease, with a progress bar, Ctrl-C
/// stopping it between chunks; then waits for every read model.
async fn run(service: &Service, tenant: &Tenant, job: Job, lease: Lease, show: bool) -> anyhow::Result<Summary> {
    let state = &service.state;
    let started = Instant::now();
    let stop = CancellationToken::new();
    let ctrl_c = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("stopping after the current chunk; run the same command again to resume");
                stop.cancel();
            }
        })
    };
    let (progress, rows) = watch::channel((job.rows, job.counts));
    let bar = show.then(|| progress_bar(rows.clone()));
    let mut turn = CliTurn { stop: stop.clone(), lease };
    let ran = jobs::run_job(state, tenant, &job.id, &mut turn, progress).await;
    if let Some((bar, task)) = bar {
        task.abort();
        bar.finish_and_clear();
    }
    let job_elapsed = started.elapsed();
    let job = match ran? {
        Ran::Stopped => anyhow::bail!("stopped; the job {} resumes on the next run of the same command", job.id),
        Ran::Finished(job) => *job,
    };
    let head = *state.commands.log().watch_head().borrow();
    let mut caught_up = Vec::new();
    for runner in &state.runners {
        let mut told = false;
        while !runner.wait_for(head, Duration::from_secs(1)).await {
            if stop.is_cancelled() {
                anyhow::bail!(
                    "stopped while {} catches up; the job {} is {}",
                    runner.name,
                    job.id,
                    job.status.as_str()
                );
            }
            if show && !told {
                eprintln!("waiting for {} to catch up", runner.name);
                told = true;
            }
        }
        caught_up.push((runner.name, started.elapsed()));
    }
    ctrl_c.abort();
    Ok(Summary { job, elapsed: started.elapsed(), job_elapsed, caught_up })
}

fn progress_bar(mut rows: watch::Receiver<(u64, Counts)>) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = ProgressBar::new(rows.borrow().1.total.max(1));
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows  {per_sec}  ETA {eta}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let shown = bar.clone();
    let task = tokio::spawn(async move {
        while rows.changed().await.is_ok() {
            let (done, counts) = *rows.borrow();
            shown.set_length(counts.total.max(done).max(1));
            shown.set_position(done);
            shown.set_message(format!("{} ok, {} rejected", counts.success, counts.error));
        }
    });
    (bar, task)
}

async fn finish(service: Service, outcome: anyhow::Result<Summary>, copy_to: Option<PathBuf>) -> anyhow::Result<()> {
    let root = service.state.files.root().to_path_buf();
    service.stop().await;
    let summary = outcome?;
    let job = &summary.job;
    if let (Some(to), JobStatus::Completed) = (copy_to, job.status) {
        tokio::fs::copy(root.join(&job.output.relative_url), &to).await.with_context(|| format!("{}", to.display()))?;
        println!("exported to {}", to.display());
    }
    let secs = summary.job_elapsed.as_secs_f64().max(0.001);
    println!(
        "job {} {}: {} rows, {} applied, {} rejected in {:.1} s ({:.0} rows/s; read models caught up at {:.1} s)",
        job.id,
        job.status.as_str(),
        job.counts.total,
        job.counts.success,
        job.counts.error,
        secs,
        job.counts.total as f64 / secs,
        summary.elapsed.as_secs_f64()
    );
    if job.counts.error > 0 {
        println!("rejected rows: {}", root.join(jobs::job_dir(&job.id)).join(jobs::ERROR_FILE).display());
    }
    if job.status == JobStatus::Failed {
        anyhow::bail!("the job failed: {}", job.failure);
    }
    Ok(())
}
