//! A users export: the users read model (live users, optionally filtered
//! like `GET …/customers/list?q=`), oldest first, as CSV (`user_id`, the
//! import columns, `blocked` and `created_at`) or JSONL (one user
//! per line, in the shape `GET …/customers/{id}` answers), consistent as of
//! one log position: the read model's checkpoint, read in the same
//! snapshot as the rows and recorded in the job.
//!
//! An export is written whole on every run; a restart writes it again.

use super::{Ending, JobRun, Proceed};
use crate::dto::UserDto;
use tokio::io::AsyncWriteExt;
use userstream_domain::job::{Counts, FileRef, JobCommand};
use userstream_projections::read_models::users::UserRow;

use super::source::Format;

/// The columns of a CSV export: `user_id`, the import columns (so an
/// export minus those extra columns imports again), `blocked`, `created_at`.
fn csv_header() -> String {
    let mut columns = vec!["user_id"];
    columns.extend_from_slice(super::import::COLUMNS.allowed);
    columns.extend(["blocked", "created_at"]);
    columns.join(",")
}

/// The file name of an export in its job's directory.
pub fn output_name(format: Format) -> String {
    format!("users.{}", format.as_str())
}

pub(crate) async fn run(run: &mut JobRun<'_>, _proceed: &mut impl Proceed) -> anyhow::Result<Ending> {
    let format = Format::parse(&run.job.file_format).map_err(|e| anyhow::anyhow!(e.message))?;
    let q = run.job.options.get("q").and_then(|q| q.as_str()).map(str::to_string);
    let filter = match crate::fynd::list_filter(q.as_deref()) {
        Ok(filter) => filter,
        Err(e) => return Ok(Ending::Failed(e.message)),
    };
    run.record(JobCommand::Start { total: 0, position: 0 }).await?;
    // What was written before the export started is in it.
    super::caught_up(run, &[&run.state.users]).await?;
    let name = output_name(format);
    tokio::fs::create_dir_all(run.dir()).await?;
    let partial = run.dir().join(format!("{name}.partial"));
    let mut file = tokio::io::BufWriter::new(tokio::fs::File::create(&partial).await?);
    if format == Format::Csv {
        file.write_all(csv_header().as_bytes()).await?;
        file.write_all(b"\n").await?;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<UserRow>>(4);
    let queries = run.state.queries.clone();
    let tenant = run.tenant.clone();
    let reading = tokio::spawn(async move { queries.export(&tenant, filter.as_ref(), tx).await });
    let mut rows = 0u64;
    while let Some(page) = rx.recv().await {
        let mut bytes = Vec::with_capacity(page.len() * 256);
        for row in page {
            encode(&mut bytes, format, row)?;
            rows += 1;
        }
        file.write_all(&bytes).await?;
    }
    let position = reading.await??;
    file.flush().await?;
    file.get_ref().sync_all().await?;
    tokio::fs::rename(&partial, run.dir().join(&name)).await?;
    let counts = Counts { total: rows, success: rows, error: 0 };
    let output = FileRef { url: String::new(), relative_url: format!("{}/{name}", super::job_dir(&run.job.id)) };
    Ok(Ending::Done { counts, output, position })
}

fn encode(out: &mut Vec<u8>, format: Format, row: UserRow) -> anyhow::Result<()> {
    match format {
        Format::Jsonl => {
            serde_json::to_writer(&mut *out, &UserDto::from(row))?;
            out.push(b'\n');
        }
        Format::Csv => {
            let meta = if row.meta.is_null() { String::new() } else { row.meta.to_string() };
            let mut writer = csv::WriterBuilder::new().has_headers(false).from_writer(&mut *out);
            // In the order of `csv_header`.
            writer.write_record([
                row.user_id.as_str(),
                row.phone.as_str(),
                row.email.as_str(),
                row.username.as_str(),
                row.first_name.as_deref().unwrap_or(""),
                row.last_name.as_deref().unwrap_or(""),
                row.gender.as_deref().unwrap_or(""),
                row.external_id.as_deref().unwrap_or(""),
                row.rr_id.as_deref().unwrap_or(""),
                meta.as_str(),
                if row.blocked { "true" } else { "false" },
                row.created_at.as_str(),
            ])?;
            writer.flush()?;
        }
    }
    Ok(())
}
