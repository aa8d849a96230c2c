//! Bulk jobs: users import, users export, bulk attribute updates.
//!
//! A job is a stream of the log (`job-{id}`, domain `job`): created by a
//! request (or the `userstream import|export` command), run by one worker
//! of one instance at a time (the `jobs` lease), resumed after a restart
//! from the progress it recorded. Its rows go through the same commands as
//! single requests, so the log holds the same events a one-by-one import
//! would and every projection, the engine, NATS and the feed need nothing
//! special.
//!
//! - [`source`]: the input file (files directory or an `http(s)://` copy),
//!   read row by row.
//! - [`import`], [`export`], [`attributes`]: what each kind does.
//! - [`http`]: the routes and the `BulkActionModel` answer.
//! - here: one job's run ([`run_job`], shared by the worker and the CLI), its
//!   error file, and the background [`JobWorker`].

pub mod attributes;
pub mod export;
pub mod http;
pub mod import;
pub mod source;

use crate::commands::{CommandError, Meta};
use crate::http::ApiError;
use crate::AppState;
use serde_json::Value;
use source::Format;
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use userstream_domain::job::{Counts, CreatedBy, FileRef, Job, JobCommand, JobCreated, JobKind, JobState, JobStream};
use userstream_domain::StreamId;
use userstream_eventlog::{Db, Tenant};
use userstream_projections::worker::{Health, StepError, Turn, Worker};

/// Size and row limits of a job's input file.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_rows: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: 4 << 30, max_rows: 10_000_000 }
    }
}

/// Rows between two progress records (and the chunk the reader hands over).
pub const CHUNK: usize = 5_000;

/// Whether a running job may go on (the worker's lease; the CLI's Ctrl-C).
pub trait Proceed: Send {
    fn proceed(&mut self) -> impl std::future::Future<Output = bool> + Send;
}

impl Proceed for Turn {
    async fn proceed(&mut self) -> bool {
        self.may_continue().await
    }
}

impl Proceed for CancellationToken {
    async fn proceed(&mut self) -> bool {
        !self.is_cancelled()
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ran {
    /// The job is completed or failed.
    Finished(Box<Job>),
    /// It was stopped between two chunks; it resumes on the next run.
    Stopped,
}

/// What a kind's run hands back.
pub(crate) enum Ending {
    Done { counts: Counts, output: FileRef, position: i64 },
    Failed(String),
    Stopped,
}

/// A job being run: its state as last recorded, and where it writes.
pub struct JobRun<'a> {
    pub state: &'a AppState,
    pub tenant: Tenant,
    pub job: Job,
    /// Rows done and counts, for a progress bar.
    pub progress: watch::Sender<(u64, Counts)>,
    errors: Option<tokio::io::BufWriter<tokio::fs::File>>,
    error_bytes: u64,
}

impl JobRun<'_> {
    /// The envelope of the job's own events and of the commands of its rows.
    pub fn meta(&self) -> Meta {
        Meta {
            tenant: self.tenant.clone(),
            actor: self.job.created_by.name.clone(),
            correlation_id: format!("job:{}", self.job.id),
            idempotency_key: None,
        }
    }

    /// Appends a command to the job's stream and keeps its new state.
    pub async fn record(&mut self, command: JobCommand) -> Result<(), CommandError> {
        let ctx = self.state.commands.context(&self.tenant).await?;
        let stream = StreamId::job(&self.job.id);
        let mut handled = self.state.commands.handle::<JobStream>(&self.meta(), stream, command, None, &ctx).await?;
        if let Some((JobState::Created(job), _)) = handled.states.pop() {
            self.job = *job;
        }
        Ok(())
    }

    /// A directory of the files directory for this job's files.
    pub fn dir(&self) -> PathBuf {
        self.state.files.root().join(job_dir(&self.job.id))
    }

    /// Opens the error file where the last progress left it (a restart
    /// drops what was written after that record).
    async fn open_errors(&mut self) -> std::io::Result<()> {
        tokio::fs::create_dir_all(self.dir()).await?;
        let path = self.dir().join(ERROR_FILE);
        let file = tokio::fs::OpenOptions::new().create(true).write(true).truncate(false).open(&path).await?;
        let keep = self.job.error_bytes;
        file.set_len(keep).await?;
        let mut file = tokio::io::BufWriter::new(file);
        use tokio::io::AsyncSeekExt;
        file.seek(std::io::SeekFrom::Start(keep)).await?;
        if keep == 0 {
            file.write_all(ERROR_HEADER).await?;
        }
        self.error_bytes = keep.max(ERROR_HEADER.len() as u64);
        self.errors = Some(file);
        Ok(())
    }

    /// Adds a rejected row to the error file.
    async fn reject(&mut self, line: u64, reason: &str) -> std::io::Result<()> {
        let mut record = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
        record.write_record([line.to_string().as_str(), reason]).map_err(std::io::Error::other)?;
        let bytes = record.into_inner().map_err(|e| std::io::Error::other(e.to_string()))?;
        if let Some(file) = self.errors.as_mut() {
            file.write_all(&bytes).await?;
        }
        self.error_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Makes the error file durable up to what has been written, then
    /// records progress: rows `0..rows` are done.
    async fn checkpoint(&mut self, rows: u64, counts: Counts) -> anyhow::Result<()> {
        if let Some(file) = self.errors.as_mut() {
            file.flush().await?;
            file.get_ref().sync_data().await?;
        }
        let error_bytes = self.error_bytes;
        self.record(JobCommand::Progress { rows, counts, error_bytes }).await?;
        let (_, before) = self.progress.send_replace((rows, counts));
        let kind = self.job.kind.as_str();
        metrics::counter!(crate::metrics::JOB_ROWS, "kind" => kind, "outcome" => "success")
            .increment(counts.success.saturating_sub(before.success));
        metrics::counter!(crate::metrics::JOB_ROWS, "kind" => kind, "outcome" => "error")
            .increment(counts.error.saturating_sub(before.error));
        Ok(())
    }
}

/// Creates a job (pending; the worker or the CLI runs it); returns it.
pub async fn create_job(
    state: &AppState,
    meta: &Meta,
    kind: JobKind,
    format: Format,
    source: FileRef,
    options: Value,
    ctx: &userstream_domain::Context,
) -> Result<Job, ApiError> {
    let job_id = ctx.id(0).to_string();
    let file_name = match kind {
        JobKind::Export => export::output_name(format),
        _ => file_name(&source.url),
    };
    let created = JobCreated {
        job_id: job_id.clone(),
        kind,
        file_name,
        file_format: format.as_str().to_string(),
        source,
        created_by: CreatedBy { name: meta.actor.clone(), user_id: meta.actor.clone() },
        options,
        id_millis: ctx.ids.millis,
        id_random: ctx.ids.random,
        at: ctx.now,
    };
    let stream = StreamId::job(&job_id);
    let command = JobCommand::Create(Box::new(created));
    let mut handled = state.commands.handle_new::<JobStream>(meta, stream, command, ctx).await?;
    match handled.states.pop() {
        Some((JobState::Created(job), _)) => Ok(*job),
        _ => Err(ApiError::internal("a job just created is not there")),
    }
}

fn file_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or(path).to_string()
}

/// Waits until `models` hold everything in the log now; an error (the job
/// is run again later) if they do not within the query wait.
pub(crate) async fn caught_up(
    run: &JobRun<'_>,
    models: &[&userstream_projections::RunnerHandle],
) -> anyhow::Result<()> {
    let head = *run.state.commands.log().watch_head().borrow();
    for model in models {
        if !model.wait_for(head, run.state.config.min_position_wait).await {
            anyhow::bail!("{} is behind the log (position {head}); the job runs again later", model.name);
        }
    }
    Ok(())
}

/// Where a job's files live, relative to the files directory.
pub fn job_dir(job_id: &str) -> String {
    format!("jobs/{job_id}")
}

pub const ERROR_FILE: &str = "errors.csv";

/// The error file's first line: each rejected row's line and why.
const ERROR_HEADER: &[u8] = b"line,reason\n";

/// Runs the job `job_id` of `tenant` until it ends or `proceed` says stop.
/// An IO failure (the log, the disk) is an error: the job is left as it
/// was last recorded and the next run resumes it.
pub async fn run_job(
    state: &AppState,
    tenant: &Tenant,
    job_id: &str,
    proceed: &mut impl Proceed,
    progress: watch::Sender<(u64, Counts)>,
) -> anyhow::Result<Ran> {
    let stream = StreamId::job(job_id);
    let Some((JobState::Created(job), _)) = state.commands.state::<JobStream>(tenant, &stream).await? else {
        anyhow::bail!("job {job_id} not found");
    };
    if job.status.finished() {
        return Ok(Ran::Finished(job));
    }
    let mut run = JobRun { state, tenant: tenant.clone(), job: *job, progress, errors: None, error_bytes: 0 };
    run.open_errors().await?;
    let ending = match run.job.kind {
        JobKind::Import => import::run(&mut run, proceed).await?,
        JobKind::Export => export::run(&mut run, proceed).await?,
        JobKind::Attributes => attributes::run(&mut run, proceed).await?,
    };
    match ending {
        Ending::Stopped => return Ok(Ran::Stopped),
        Ending::Done { counts, output, position } => {
            run.checkpoint(counts.total, counts).await?;
            let error_bytes = run.error_bytes;
            run.record(JobCommand::Complete { counts, error_bytes, output, position }).await?;
        }
        Ending::Failed(reason) => {
            if let Some(file) = run.errors.as_mut() {
                file.flush().await?;
            }
            tracing::warn!(job = %run.job.id, %reason, "job failed");
            run.record(JobCommand::Fail { reason }).await?;
        }
    }
    Ok(Ran::Finished(Box::new(run.job)))
}

/// The background worker: takes the oldest unfinished job of any tenant
/// and runs it, one at a time, while this instance holds the `jobs` lease.
pub struct JobWorker {
    state: AppState,
    health: Health,
    /// The log position after this worker's last job: the jobs read model
    /// must have reached it before the queue is read again.
    seen: i64,
}

impl JobWorker {
    pub fn new(state: AppState) -> JobWorker {
        JobWorker { state, health: Health::new("jobs", 0), seen: 0 }
    }
}

impl Worker for JobWorker {
    type Error = String;

    fn health(&self) -> &Health {
        &self.health
    }

    fn db(&self) -> &Db {
        &self.state.db
    }

    fn lease_name(&self) -> String {
        "jobs".to_string()
    }

    /// The queue is the jobs read model: it is read again when that moves
    /// (or at the poll interval), not on every append to the log.
    fn watch_head(&self) -> watch::Receiver<i64> {
        self.state.jobs.watch()
    }

    async fn step(&mut self, turn: &mut Turn) -> Result<bool, StepError<String>> {
        let wait = self.state.config.min_position_wait;
        if !self.state.jobs.wait_for(self.seen, wait).await {
            return Ok(false);
        }
        let next = self.state.job_queries.next_unfinished().await.map_err(|e| StepError::Retry(e.to_string()))?;
        let Some((tenant, job)) = next else {
            return Ok(false);
        };
        let (progress, _) = watch::channel((job.rows, job.counts));
        let ran = run_job(&self.state, &tenant, &job.id, turn, progress)
            .await
            .map_err(|e| StepError::Retry(e.to_string()))?;
        self.seen = self.state.commands.log().watch_head().borrow().to_owned();
        Ok(matches!(ran, Ran::Finished(_)))
    }

    async fn follow(&mut self) {}
}
