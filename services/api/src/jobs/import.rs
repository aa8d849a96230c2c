//! A users import: every row of the file is a CreateUser, decided and
//! appended exactly like `POST …/customers` (validation, the platform's
//! required fields, uniqueness of email, phone and username), under the id
//! [`Job::row_id`] gives it.
//!
//! Rows are handed to the log many at a time, so its writer commits them in
//! large batches (one transaction for up to a thousand rows); a row that is
//! refused (a taken email) is refused alone. The first row of a value
//! wins; a later row with the same email, phone or username is a rejected
//! row naming the line it duplicates. After a restart the rows after the
//! last progress record are decided again: a row whose user exists already
//! is one this job created before the restart, and counts as done: its
//! append expects no stream and is refused as a version conflict, without
//! reading anything (the rows' futures are polled only by the job's loop,
//! so they must never wait for a pooled connection the loop itself needs).

use super::source::{self, Columns, Format, Row};
use super::{Ending, JobRun, Proceed, CHUNK};
use crate::commands::{CommandError, Rejection};
use crate::dto::CreateUserBody;
use futures_util::StreamExt;
use serde_json::Value;
use std::path::PathBuf;
use userstream_domain::job::{Counts, FileRef, JobCommand};
use userstream_domain::UserId;

/// The columns of an import file: the CreateUser fields (an export's CSV
/// has them in this order).
pub const COLUMNS: Columns = Columns {
    allowed: &[
        "phone_number",
        "email",
        "username",
        "first_name",
        "last_name",
        "gender",
        "external_id",
        "rr_id",
        "meta",
    ],
    required: &[&["username"], &["phone_number", "email"]],
    json: &["meta"],
};

/// Rows in flight at once (the log writer takes up to 1,024 per transaction).
const IN_FLIGHT: usize = 2_048;

/// What became of one row.
enum Verdict {
    Created,
    Rejected(String),
    /// A unique value (`email`, `phone`, `username`) another user holds.
    Taken {
        kind: String,
        value: String,
    },
    /// The log could not be written: the job stops and is retried.
    Broken(anyhow::Error),
}

/// The local file a job reads: a `file://` source itself, an `http(s)://`
/// source's copy in the job's directory (downloaded on the first run).
pub(crate) async fn input(run: &JobRun<'_>) -> Result<PathBuf, String> {
    let limits = run.state.config.job_limits;
    let url = run.job.source.url.clone();
    if !source::is_remote(&url) {
        return source::local(&run.state.files, &url, limits.max_bytes).await.map_err(|e| e.message);
    }
    let copy = run.dir().join(format!("source.{}", run.job.file_format));
    let complete = run.dir().join("source.complete");
    if tokio::fs::try_exists(&complete).await.unwrap_or(false) {
        return Ok(copy);
    }
    source::download(&run.state.fetcher, &url, &copy, limits.max_bytes).await?;
    tokio::fs::write(&complete, b"").await.map_err(|e| e.to_string())?;
    Ok(copy)
}

/// Counts the rows and checks the header and the limits; then reads on
/// from the job's resume point.
pub(crate) async fn run(run: &mut JobRun<'_>, proceed: &mut impl Proceed) -> anyhow::Result<Ending> {
    let path = match input(run).await {
        Ok(path) => path,
        Err(reason) => return Ok(Ending::Failed(reason)),
    };
    let format = Format::parse(&run.job.file_format).map_err(|e| anyhow::anyhow!(e.message))?;
    let total = match prepare(path.clone(), format, COLUMNS, run.state.config.job_limits.max_rows).await? {
        Ok(total) => total,
        Err(reason) => return Ok(Ending::Failed(reason)),
    };
    run.record(JobCommand::Start { total, position: 0 }).await?;
    let mut counts = Counts { total, ..run.job.counts };
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Row>>(4);
    let skip = run.job.rows;
    let reader = tokio::task::spawn_blocking(move || {
        source::read_rows(&path, format, COLUMNS, skip, CHUNK, |rows| tx.blocking_send(rows).is_ok())
    });
    let (config, _) = run.state.commands.config(&run.tenant).await?;
    let env = std::sync::Arc::new(RowEnv {
        commands: run.state.commands.clone(),
        meta: run.meta(),
        job: run.job.clone(),
        required: [config.config.required_fields.clone(), config.config.register_required_fields.clone()],
        config: config.config,
    });
    let mut lines: Vec<u32> = Vec::new();
    // The rows stay futures of this task (not tasks of their own): a row's
    // first poll decides it and queues its append, and `buffered` polls
    // them in file order, so the appends reach the log's writer in file
    // order and the first row of a value is the one that wins.
    let mut verdicts = tokio_stream_of(rx)
        .flat_map(futures_util::stream::iter)
        .map(|row: Row| {
            let env = env.clone();
            async move {
                let verdict = create(&env, &row).await;
                (row.index, row.line, verdict)
            }
        })
        .buffered(IN_FLIGHT);
    let mut done = skip;
    while let Some((index, line, verdict)) = verdicts.next().await {
        remember_line(&mut lines, index, line);
        match verdict {
            Verdict::Created => counts.success += 1,
            Verdict::Rejected(reason) => {
                counts.error += 1;
                run.reject(line, &reason).await?;
            }
            Verdict::Taken { kind, value } => {
                counts.error += 1;
                let reason = name_duplicate(&env, &lines, &kind, &value).await;
                run.reject(line, &reason).await?;
            }
            Verdict::Broken(e) => return Err(e),
        }
        done = index + 1;
        if done.is_multiple_of(CHUNK as u64) {
            // A run that lost the lease records nothing more: the new
            // owner resumes from the last record (and cuts the error file).
            if !proceed.proceed().await {
                return Ok(Ending::Stopped);
            }
            run.checkpoint(done, counts).await?;
        }
    }
    drop(verdicts);
    match reader.await? {
        Ok(()) => {}
        Err(reason) => return Ok(Ending::Failed(reason)),
    }
    counts.total = counts.total.max(done);
    Ok(Ending::Done { counts, output: FileRef::default(), position: 0 })
}

/// Header, row count and row limit of the file (in a blocking task).
pub(crate) async fn prepare(
    path: PathBuf,
    format: Format,
    columns: Columns,
    max_rows: u64,
) -> anyhow::Result<Result<u64, String>> {
    Ok(tokio::task::spawn_blocking(move || {
        source::check_header(&path, format, columns)?;
        let rows = source::count_rows(&path, format)?;
        if rows > max_rows {
            return Err(format!("the file has {rows} rows, more than the limit of {max_rows}"));
        }
        Ok(rows)
    })
    .await?)
}

fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Keeps the line of every row index seen in this run (4 bytes a row), so
/// a duplicate can name the line of the row it repeats.
fn remember_line(lines: &mut Vec<u32>, index: u64, line: u64) {
    let index = index as usize;
    if lines.len() <= index {
        lines.resize(index + 1, 0);
    }
    lines[index] = u32::try_from(line).unwrap_or(u32::MAX);
}

/// What every row of a run shares.
struct RowEnv {
    commands: crate::commands::Commands,
    meta: crate::commands::Meta,
    job: userstream_domain::job::Job,
    config: userstream_domain::platform::PlatformConfig,
    required: [userstream_domain::platform::RequiredFields; 2],
}

async fn create(env: &RowEnv, row: &Row) -> Verdict {
    let RowEnv { commands, meta, job, config, required } = env;
    let fields = match &row.fields {
        Ok(fields) => fields.clone(),
        Err(reason) => return Verdict::Rejected(reason.clone()),
    };
    let body: CreateUserBody = match serde_json::from_value(Value::Object(fields)) {
        Ok(body) => body,
        Err(e) => return Verdict::Rejected(e.to_string()),
    };
    let ctx = commands.context_of(config);
    let command = match body.into_command(job.row_id(row.index), &[&required[0], &required[1]]) {
        Ok(command) => command,
        Err(e) => return Verdict::Rejected(e.message),
    };
    let stream = userstream_domain::StreamId::user(&command.user_id);
    let create = userstream_domain::user::UserCommand::Create(command);
    match commands.append_new::<userstream_domain::user::UserStream>(meta, stream, create, &ctx).await {
        // The row's user exists: this job appended it before a restart.
        Ok(_) | Err(CommandError::Rejected(Rejection::VersionConflict { .. })) => Verdict::Created,
        Err(CommandError::Rejected(Rejection::Taken { kind, value })) => Verdict::Taken { kind, value },
        Err(CommandError::Rejected(r)) => Verdict::Rejected(r.to_string()),
        Err(CommandError::Failed(f)) => Verdict::Broken(f.into()),
    }
}

/// A taken value as the reason of a rejected row: a duplicate of an
/// earlier row of this file names that row's line.
async fn name_duplicate(env: &RowEnv, lines: &[u32], kind: &str, value: &str) -> String {
    let key = format!("{kind}:{value}");
    let holder = env.commands.log().holder(&env.meta.tenant, &key).await.ok().flatten();
    let row = holder
        .as_deref()
        .and_then(|s| s.strip_prefix("user-"))
        .and_then(|id| UserId::parse("user_id", id).ok())
        .and_then(|id| env.job.row_of(&id));
    match row.and_then(|r| lines.get(r as usize).filter(|l| **l > 0)) {
        Some(line) => format!("{kind} {value} duplicates line {line} of this file"),
        None => format!("{kind} {value} is already taken"),
    }
}
