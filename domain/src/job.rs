//! Bulk jobs (stream `job-{id}`): a users import, a users export or a bulk
//! attribute update, run in the background and resumable.
//!
//! A job is created `pending`, becomes `running` when a worker takes it,
//! records its progress (rows done, counts, how much of its error file is
//! written) every few thousand rows, and ends `completed` or `failed`.
//! Progress is what a resumed job starts from: the rows after the last
//! recorded one are read again, and the ones that were applied before a crash
//! are recognised by their ids (a row's user id is derived from the job's
//! [`IdSeed`] and the row's index, see [`Job::row_id`]), so nothing is
//! applied twice.

use crate::codec::{shape, DecodeError, EncodedEvent, Payload};
use crate::stream::{Context, IdSeed};
use crate::values::UserId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

pub const JOB_CREATED: &str = "job.created";
pub const JOB_STARTED: &str = "job.started";
pub const JOB_PROGRESSED: &str = "job.progressed";
pub const JOB_COMPLETED: &str = "job.completed";
pub const JOB_FAILED: &str = "job.failed";

/// Every event type of the job streams.
pub const JOB_EVENT_TYPES: &[&str] = &[JOB_CREATED, JOB_STARTED, JOB_PROGRESSED, JOB_COMPLETED, JOB_FAILED];

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// CreateUser for every row of a CSV/JSONL file.
    Import,
    /// The users read model, written to a file.
    Export,
    /// Attribute values of many users (`PATCH …/user_attribute/bulk`).
    Attributes,
}

impl JobKind {
    /// The SDK's `action_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Import => "import",
            JobKind::Export => "export",
            JobKind::Attributes => "attributes",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Running,
    Completed,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
        }
    }

    pub fn parse(raw: &str) -> Option<JobStatus> {
        [JobStatus::Pending, JobStatus::Running, JobStatus::Completed, JobStatus::Failed]
            .into_iter()
            .find(|s| s.as_str() == raw)
    }

    pub fn finished(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed)
    }
}

/// Rows seen, applied and rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counts {
    pub total: u64,
    pub success: u64,
    pub error: u64,
}

/// A file of a job: where the service keeps it (relative to its files
/// directory), and the URL the caller named (an import's source).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FileRef {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub relative_url: String,
}

/// Who created the job.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CreatedBy {
    pub name: String,
    pub user_id: String,
}

/// `job.created` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCreated {
    pub job_id: String,
    pub kind: JobKind,
    pub file_name: String,
    /// `csv` or `jsonl`.
    pub file_format: String,
    /// An import's source; empty for an export.
    pub source: FileRef,
    pub created_by: CreatedBy,
    /// What the job was asked beyond its file (an export's filter, inline
    /// attribute rows).
    #[serde(default)]
    pub options: Value,
    /// The seed of the ids the job's rows get.
    pub id_millis: u64,
    pub id_random: [u8; 6],
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `job.started` v1: a worker took the job (again, after a restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStarted {
    /// Rows in the file, when known before the first is applied.
    #[serde(default)]
    pub total: u64,
    /// The log position an export reads as of (0 otherwise).
    #[serde(default)]
    pub position: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `job.progressed` v1: rows `0..rows` are done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobProgressed {
    pub rows: u64,
    pub counts: Counts,
    /// Bytes of the error file written for those rows.
    pub error_bytes: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `job.completed` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCompleted {
    pub counts: Counts,
    pub error_bytes: u64,
    /// The file an export wrote.
    #[serde(default)]
    pub output: FileRef,
    /// The log position an export is consistent as of (0 otherwise).
    #[serde(default)]
    pub position: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `job.failed` v1: the job as a whole could not go on (its file is
/// unreadable, over a limit, has no valid header).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFailed {
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    Created(JobCreated),
    Started(JobStarted),
    Progressed(JobProgressed),
    Completed(JobCompleted),
    Failed(JobFailed),
}

/// A job as its events describe it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub kind: JobKind,
    pub status: JobStatus,
    pub file_name: String,
    pub file_format: String,
    pub source: FileRef,
    pub created_by: CreatedBy,
    pub options: Value,
    pub seed: (u64, [u8; 6]),
    pub counts: Counts,
    /// Rows done (the resume point).
    pub rows: u64,
    pub error_bytes: u64,
    pub position: i64,
    pub output: FileRef,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failure: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Job {
    /// The id of the user row `index` (0-based) of an import creates:
    /// the job's seed moved on by `index + 1` (the job's own id is the seed
    /// itself), so a row applied before a restart has the same id after it.
    pub fn row_id(&self, index: u64) -> UserId {
        seed_id(self.seed, index + 1)
    }

    /// The row index of a user this job created, if `id` is one.
    pub fn row_of(&self, id: &UserId) -> Option<u64> {
        let bytes: Vec<u8> =
            (0..12).filter_map(|i| u8::from_str_radix(id.as_str().get(i * 2..i * 2 + 2)?, 16).ok()).collect();
        if bytes.len() != 12 || bytes[..6] != self.seed.0.to_be_bytes()[2..] {
            return None;
        }
        let mut tail = [0u8; 8];
        tail[2..].copy_from_slice(&bytes[6..]);
        let mut base = [0u8; 8];
        base[2..].copy_from_slice(&self.seed.1);
        let offset = u64::from_be_bytes(tail).wrapping_sub(u64::from_be_bytes(base)) & 0xffff_ffff_ffff;
        offset.checked_sub(1)
    }
}

fn seed_id((millis, random): (u64, [u8; 6]), n: u64) -> UserId {
    Context { ids: IdSeed { millis, random }, ..Context::at(OffsetDateTime::UNIX_EPOCH) }.id_at(n)
}

#[derive(Debug, Clone, PartialEq, Default)]
pub enum JobState {
    #[default]
    NotCreated,
    Created(Box<Job>),
}

impl JobState {
    pub fn job(&self) -> Option<&Job> {
        match self {
            JobState::Created(job) => Some(job),
            JobState::NotCreated => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobCommand {
    Create(Box<JobCreated>),
    Start { total: u64, position: i64 },
    Progress { rows: u64, counts: Counts, error_bytes: u64 },
    Complete { counts: Counts, error_bytes: u64, output: FileRef, position: i64 },
    Fail { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("job not found")]
    NotFound,
    #[error("the job exists already")]
    AlreadyExists,
    #[error("the job is {0} and cannot change")]
    Finished(&'static str),
    #[error("progress cannot go back (at row {at}, got {got})")]
    Backwards { at: u64, got: u64 },
}

/// Pure: what `command` does to the job. Starting a running job again (a
/// restart) is recorded; anything on a finished job is refused.
pub fn decide(state: &JobState, command: JobCommand, ctx: &Context) -> Result<Vec<JobEvent>, JobError> {
    let current = match (state, command) {
        (JobState::NotCreated, JobCommand::Create(c)) => return Ok(vec![JobEvent::Created(*c)]),
        (JobState::NotCreated, _) => return Err(JobError::NotFound),
        (JobState::Created(_), JobCommand::Create(_)) => return Err(JobError::AlreadyExists),
        (JobState::Created(job), _) if job.status.finished() => return Err(JobError::Finished(job.status.as_str())),
        (JobState::Created(job), command) => (job, command),
    };
    let at = ctx.now;
    Ok(vec![match current {
        (_, JobCommand::Create(_)) => return Err(JobError::AlreadyExists),
        (_, JobCommand::Start { total, position }) => JobEvent::Started(JobStarted { total, position, at }),
        (job, JobCommand::Progress { rows, counts, error_bytes }) => {
            if rows < job.rows {
                return Err(JobError::Backwards { at: job.rows, got: rows });
            }
            if rows == job.rows && counts == job.counts {
                return Ok(Vec::new());
            }
            JobEvent::Progressed(JobProgressed { rows, counts, error_bytes, at })
        }
        (_, JobCommand::Complete { counts, error_bytes, output, position }) => {
            JobEvent::Completed(JobCompleted { counts, error_bytes, output, position, at })
        }
        (_, JobCommand::Fail { reason }) => JobEvent::Failed(JobFailed { reason, at }),
    }])
}

/// Total: an event that does not fit leaves the state as it is.
pub fn evolve(state: JobState, event: &JobEvent) -> JobState {
    let mut job = match (state, event) {
        (JobState::NotCreated, JobEvent::Created(c)) => {
            return JobState::Created(Box::new(Job {
                id: c.job_id.clone(),
                kind: c.kind,
                status: JobStatus::Pending,
                file_name: c.file_name.clone(),
                file_format: c.file_format.clone(),
                source: c.source.clone(),
                created_by: c.created_by.clone(),
                options: c.options.clone(),
                seed: (c.id_millis, c.id_random),
                counts: Counts::default(),
                rows: 0,
                error_bytes: 0,
                position: 0,
                output: FileRef::default(),
                failure: String::new(),
                created_at: c.at,
                updated_at: c.at,
            }))
        }
        (JobState::Created(job), _) => job,
        (state, _) => return state,
    };
    match event {
        JobEvent::Created(_) => {}
        JobEvent::Started(s) => {
            job.status = JobStatus::Running;
            job.counts.total = job.counts.total.max(s.total);
            if s.position > 0 {
                job.position = s.position;
            }
            job.updated_at = s.at;
        }
        JobEvent::Progressed(p) => {
            job.rows = p.rows;
            job.counts = Counts { total: job.counts.total.max(p.counts.total), ..p.counts };
            job.error_bytes = p.error_bytes;
            job.updated_at = p.at;
        }
        JobEvent::Completed(c) => {
            job.status = JobStatus::Completed;
            job.counts = c.counts;
            job.rows = c.counts.total;
            job.error_bytes = c.error_bytes;
            job.output = c.output.clone();
            if c.position > 0 {
                job.position = c.position;
            }
            job.updated_at = c.at;
        }
        JobEvent::Failed(f) => {
            job.status = JobStatus::Failed;
            job.failure = f.reason.clone();
            job.updated_at = f.at;
        }
    }
    JobState::Created(job)
}

pub fn encode(event: &JobEvent) -> EncodedEvent {
    let (event_type, data) = match event {
        JobEvent::Created(e) => (JOB_CREATED, serde_json::to_value(e)),
        JobEvent::Started(e) => (JOB_STARTED, serde_json::to_value(e)),
        JobEvent::Progressed(e) => (JOB_PROGRESSED, serde_json::to_value(e)),
        JobEvent::Completed(e) => (JOB_COMPLETED, serde_json::to_value(e)),
        JobEvent::Failed(e) => (JOB_FAILED, serde_json::to_value(e)),
    };
    EncodedEvent { event_type, schema: 1, data: data.unwrap_or(Value::Null) }
}

pub fn decode(event_type: &str, schema: u32, data: &(impl Payload + ?Sized)) -> Result<JobEvent, DecodeError> {
    match (event_type, schema) {
        (JOB_CREATED, 1) => shape(event_type, schema, data).map(JobEvent::Created),
        (JOB_STARTED, 1) => shape(event_type, schema, data).map(JobEvent::Started),
        (JOB_PROGRESSED, 1) => shape(event_type, schema, data).map(JobEvent::Progressed),
        (JOB_COMPLETED, 1) => shape(event_type, schema, data).map(JobEvent::Completed),
        (JOB_FAILED, 1) => shape(event_type, schema, data).map(JobEvent::Failed),
        _ => Err(DecodeError::UnknownType { event_type: event_type.to_string(), schema }),
    }
}

/// The job stream kind (`job-{id}`).
pub struct JobStream;

impl crate::stream::Stream for JobStream {
    const KIND: &'static str = "job";
    type State = JobState;
    type Command = JobCommand;
    type Event = JobEvent;
    type Rejection = JobError;

    fn decide(state: &JobState, command: JobCommand, ctx: &Context) -> Result<Vec<JobEvent>, JobError> {
        decide(state, command, ctx)
    }

    fn evolve(state: JobState, event: &JobEvent) -> JobState {
        evolve(state, event)
    }

    fn encode(event: &JobEvent) -> EncodedEvent {
        encode(event)
    }

    fn decode(event_type: &str, schema: u32, data: &str) -> Result<JobEvent, DecodeError> {
        decode(event_type, schema, data)
    }

    fn command_name(command: &JobCommand) -> &'static str {
        match command {
            // One name per kind: an idempotency key is kept per command name,
            // so an export never answers as the import a reused key made.
            JobCommand::Create(c) => match c.kind {
                JobKind::Import => "CreateImportJob",
                JobKind::Export => "CreateExportJob",
                JobKind::Attributes => "CreateAttributesJob",
            },
            JobCommand::Start { .. } => "StartJob",
            JobCommand::Progress { .. } => "RecordJobProgress",
            JobCommand::Complete { .. } => "CompleteJob",
            JobCommand::Fail { .. } => "FailJob",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(ctx: &Context) -> JobCreated {
        JobCreated {
            job_id: ctx.id(0).to_string(),
            kind: JobKind::Import,
            file_name: "users.csv".into(),
            file_format: "csv".into(),
            source: FileRef { url: "file://users.csv".into(), relative_url: "users.csv".into() },
            created_by: CreatedBy { name: "key".into(), user_id: "key".into() },
            options: Value::Null,
            id_millis: ctx.ids.millis,
            id_random: ctx.ids.random,
            at: ctx.now,
        }
    }

    fn run(state: JobState, command: JobCommand, ctx: &Context) -> Result<JobState, JobError> {
        Ok(decide(&state, command, ctx)?.iter().fold(state, evolve))
    }

    #[test]
    fn a_job_runs_resumes_and_ends_once() {
        let mut ctx = Context::at(OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000));
        ctx.ids.random = [0xff, 0xff, 0xff, 0xff, 0xff, 0xf0];
        let s = run(JobState::NotCreated, JobCommand::Create(Box::new(created(&ctx))), &ctx).expect("decided");
        assert_eq!(s.job().expect("a job").status, JobStatus::Pending);
        let s = run(s, JobCommand::Start { total: 3, position: 0 }, &ctx).expect("decided");
        let counts = Counts { total: 3, success: 1, error: 1 };
        let s = run(s, JobCommand::Progress { rows: 2, counts, error_bytes: 10 }, &ctx).expect("decided");
        assert_eq!(decide(&s, JobCommand::Progress { rows: 2, counts, error_bytes: 10 }, &ctx), Ok(vec![]));
        assert!(matches!(
            decide(&s, JobCommand::Progress { rows: 1, counts, error_bytes: 0 }, &ctx),
            Err(JobError::Backwards { .. })
        ));
        // A restart starts it again where it stood.
        let s = run(s, JobCommand::Start { total: 3, position: 0 }, &ctx).expect("decided");
        assert_eq!(s.job().expect("a job").rows, 2);
        let done = Counts { total: 3, success: 2, error: 1 };
        let s = run(
            s,
            JobCommand::Complete { counts: done, error_bytes: 10, output: FileRef::default(), position: 0 },
            &ctx,
        )
        .expect("decided");
        assert_eq!(s.job().expect("a job").status, JobStatus::Completed);
        assert_eq!(decide(&s, JobCommand::Fail { reason: "x".into() }, &ctx), Err(JobError::Finished("completed")));
        // Row ids are stable and lead back to their row, across the wrap of the counter.
        let job = s.job().expect("a job");
        for index in [0, 1, 15, 16, 999_999] {
            assert_eq!(job.row_of(&job.row_id(index)), Some(index));
        }
        assert_eq!(job.row_of(&UserId::parse("id", "0123456789abcdef01234567").expect("an id")), None);
    }

    #[test]
    fn events_round_trip_through_the_codec() {
        let ctx = Context::at(OffsetDateTime::UNIX_EPOCH);
        let events = [
            JobEvent::Created(created(&ctx)),
            JobEvent::Started(JobStarted { total: 5, position: 9, at: ctx.now }),
            JobEvent::Progressed(JobProgressed { rows: 1, counts: Counts::default(), error_bytes: 0, at: ctx.now }),
            JobEvent::Completed(JobCompleted {
                counts: Counts::default(),
                error_bytes: 0,
                output: FileRef::default(),
                position: 3,
                at: ctx.now,
            }),
            JobEvent::Failed(JobFailed { reason: "r".into(), at: ctx.now }),
        ];
        for e in events {
            let encoded = encode(&e);
            let text = encoded.data.to_string();
            assert_eq!(decode(encoded.event_type, 1, text.as_str()).expect("decodes"), e);
        }
    }
}
