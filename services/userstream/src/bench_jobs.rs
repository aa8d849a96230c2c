//! `userstream bench --import N [--import-attributes M]`: bulk jobs as the
//! CLI runs them. N generated users from a local CSV to `completed` with
//! every read model caught up; then (with M) M attribute rows over the first
//! `--attribute-users` of them (each user's rows together, as a nightly
//! file has them) on 10 number definitions, with 10 rule
//! groups following, to `completed` with the groups caught up. Reports the
//! time of each and the process's peak RSS during each (the kernel's
//! high-water mark is reset before each run).

use crate::bench::Bench;
use crate::bench_groups::post;
use anyhow::{bail, Context as _};
use axum::http::StatusCode;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use userstream_domain::job::JobKind;
use userstream_eventlog::Tenant;

pub struct JobsBench {
    pub users: u64,
    pub attribute_rows: u64,
    pub attribute_users: u64,
}

fn tenant() -> Tenant {
    Tenant { company_id: "1".into(), application_id: "000000000000000000000001".into() }
}

/// Resets the process's peak RSS to its current RSS (Linux `clear_refs` 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak RSS since the last reset, in MB.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// The worker that reached the log head last, and when.
fn last_worker(summary: &crate::jobs::Summary) -> String {
    summary
        .caught_up
        .iter()
        .max_by_key(|(_, at)| *at)
        .map(|(name, at)| format!("last to catch up: {name} at {:.1} s", at.as_secs_f64()))
        .unwrap_or_default()
}

/// A bench row's result: time, rate, when the job completed, the last
/// worker, peak RSS.
fn result(summary: &crate::jobs::Summary, rows: u64, peak_mb: f64) -> String {
    format!(
        "{:.1} s ({:.0} rows/s; job completed at {:.1} s, {}); peak RSS {peak_mb:.0} MB",
        summary.elapsed.as_secs_f64(),
        rows as f64 / summary.elapsed.as_secs_f64(),
        summary.job_elapsed.as_secs_f64(),
        last_worker(summary)
    )
}

fn write_file(path: &Path, header: &str, rows: u64, row: impl Fn(u64) -> String) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    writeln!(out, "{header}")?;
    for i in 0..rows {
        writeln!(out, "{}", row(i))?;
    }
    out.flush()?;
    Ok(())
}

pub async fn run(bench: Arc<Bench>, b: JobsBench) -> anyhow::Result<Vec<(String, String)>> {
    let service = &bench.service;
    let dir = std::env::temp_dir().join(format!("userstream-bench-jobs-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let users_csv = dir.join("users.csv");
    eprintln!("writing {} users to {} …", b.users, users_csv.display());
    write_file(&users_csv, "username,phone_number,email,first_name,last_name", b.users, |i| {
        format!("user{i},9{i:09},user{i}@bench.example,First{i},Last{i}")
    })?;
    let mut rows = Vec::new();
    reset_peak_rss();
    eprintln!("importing …");
    let summary = crate::jobs::import_file(service, &tenant(), JobKind::Import, &users_csv, None, false).await?;
    let peak = peak_rss_mb();
    if summary.job.counts.success != b.users {
        bail!("the import applied {} of {} rows: {:?}", summary.job.counts.success, b.users, summary.job.counts);
    }
    rows.push((
        format!("import {} users from a local CSV, to completed with every read model caught up", b.users),
        result(&summary, b.users, peak),
    ));
    if b.attribute_rows > 0 {
        rows.push(attributes(&bench, &dir, &summary.job, &b).await?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}

async fn attributes(
    bench: &Arc<Bench>,
    dir: &Path,
    import: &userstream_domain::job::Job,
    b: &JobsBench,
) -> anyhow::Result<(String, String)> {
    let users = b.attribute_users.min(b.users).max(1);
    let mut definitions = Vec::new();
    for i in 0..10 {
        let body = json!({"name": format!("Score {i}"), "slug": format!("score{i}"), "type": "number"});
        let (status, d) = post(bench, "/user_attribute/definition", body).await?;
        if status != StatusCode::CREATED {
            bail!("definition: {status} {d}");
        }
        let id = d["_id"].as_str().context("definition id")?.to_string();
        let group = json!({
            "name": format!("high {i}"), "description": "score over 90",
            "conditions": [{"user_attribute_definition_id": id, "type": "gt", "value": "90"}]
        });
        let (status, g) = post(bench, "/user_group", group).await?;
        if status != StatusCode::CREATED {
            bail!("group: {status} {g}");
        }
        definitions.push(id);
    }
    // New rule groups are evaluated over every user of the application:
    // that is not what is measured here, so it is done before.
    eprintln!("evaluating the 10 new rule groups over {} users …", b.users);
    let state = &bench.service.state;
    let head = *state.commands.log().watch_head().borrow();
    for runner in &state.runners {
        while !runner.wait_for(head, std::time::Duration::from_secs(60)).await {}
    }
    let path: PathBuf = dir.join("values.csv");
    eprintln!("writing {} attribute rows over {users} users …", b.attribute_rows);
    // A nightly file: each user's rows together, spread over the 10 definitions.
    let per_user = b.attribute_rows.div_ceil(users);
    write_file(&path, "user_id,definition_id,value", b.attribute_rows, |i| {
        let user = import.row_id((i / per_user) % users);
        let definition = &definitions[(i % per_user % 10) as usize];
        format!("{user},{definition},{}", (i * 7_919) % 100)
    })?;
    reset_peak_rss();
    eprintln!("importing attribute values …");
    let summary = crate::jobs::import_file(&bench.service, &tenant(), JobKind::Attributes, &path, None, false).await?;
    let peak = peak_rss_mb();
    if summary.job.counts.success != b.attribute_rows {
        bail!("the attribute job applied {:?} of {} rows", summary.job.counts, b.attribute_rows);
    }
    Ok((
        format!(
            "{} attribute rows over {users} users (10 definitions, 10 rule groups), to completed with groups caught up",
            b.attribute_rows
        ),
        result(&summary, b.attribute_rows, peak),
    ))
}
