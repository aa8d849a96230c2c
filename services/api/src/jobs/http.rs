//! The job routes of the Fynd surface and the SDK's `BulkActionModel`.
//!
//! A request that names a file is checked before the job exists: the URL
//! must be `file://` inside the files directory (the file's size and CSV
//! header are checked too) or `http(s)://` (fetched when the job runs;
//! what cannot be fetched fails the job). An import's file may also be
//! the request's body (an upload): written to the job's directory as it
//! streams, bounded by `--job-max-bytes`, its header checked, all before
//! the job exists; a refused upload leaves nothing. Files a job writes (an export,
//! an error file) are served by `GET …/jobs/{job_id}/files/{file|error}`
//! to the same credential; the job's `links` give their URL.

use super::source::{self, Format};
use super::{job_dir, ERROR_FILE};
use crate::http::{ApiError, Caller, JsonBody, QueryPairs, TenantOf};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use userstream_domain::job::{FileRef, Job, JobKind, JobState, JobStatus, JobStream};
use userstream_domain::StreamId;
use userstream_eventlog::{format_time, Tenant};
use userstream_projections::read_models::jobs::JobFilter;

type JobPath = Path<(String, String, String)>;

/// Inline rows one bulk attribute request may carry.
pub const MAX_INLINE_ROWS: usize = 10_000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ImportBody {
    /// `file://` inside the files directory, or `http(s)://` (fetched when the job runs).
    pub absolute_url: String,
    #[schema(value_type = crate::openapi::schemas::JobFileFormatInput)]
    pub file_format: String,
    #[serde(default)]
    pub relative_url: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ExportBody {
    #[schema(value_type = crate::openapi::schemas::JobFileFormatInput)]
    pub file_format: String,
    /// A `/customers/list` filter: an email or phone, or a JSON filter.
    #[serde(default)]
    pub q: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct BulkAttributesBody {
    /// Inline rows (1 to 10000): `user_id`, `email` or `phone_number`; `definition_id` or `slug`; `value`
    /// (and `customer_overridden`). Or `file_url`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>, min_items = 1, max_items = 10_000)]
    pub rows: Option<Vec<serde_json::Map<String, Value>>>,
    /// `file://` inside the files directory, or `http(s)://`; or `rows`.
    #[serde(default)]
    pub file_url: Option<String>,
    /// The format of `file_url` (default `csv`).
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::schemas::JobFileFormatInput>)]
    pub file_format: Option<String>,
}

/// Checks a source URL before a job names it.
async fn check_source(state: &AppState, url: &str, format: Format, columns: source::Columns) -> Result<(), ApiError> {
    if source::is_remote(url) {
        return state.fetcher.check(url).await.map(drop).map_err(|e| ApiError::invalid(e.to_string()));
    }
    if !url.trim().starts_with("file://") {
        return Err(ApiError::invalid(format!("the file URL must be file:// or http(s)://, got {url:?}")));
    }
    let path = source::local(&state.files, url, state.config.job_limits.max_bytes).await?;
    // Jobs' own files (other tenants' copies, error files, exports) are not sources.
    if ["jobs", "imports"].iter().any(|dir| path.starts_with(state.files.root().join(dir))) {
        return Err(ApiError::invalid(format!("{url} is a file the service keeps for its jobs, not a source")));
    }
    tokio::task::spawn_blocking(move || source::check_header(&path, format, columns))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::invalid(format!("{url}: {e}")))
}

/// The format of an uploaded file, by the request's content type:
/// `text/csv` or `application/x-ndjson`; none for anything else (a JSON
/// body naming a file).
pub fn upload_format(headers: &HeaderMap) -> Option<Format> {
    let kind = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let kind = kind.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match kind.as_str() {
        "text/csv" => Some(Format::Csv),
        "application/x-ndjson" | "application/jsonl" => Some(Format::Jsonl),
        _ => None,
    }
}

/// Whether a request is the upload of an import's file: its body is
/// bounded by `--job-max-bytes` (read as it streams to the files
/// directory), not by the body limit of other requests.
pub fn is_upload(request: &axum::extract::Request) -> bool {
    request.method() == axum::http::Method::POST
        && request.uri().path().ends_with("/users/jobs/import")
        && upload_format(request.headers()).is_some()
}

/// POST `…/users/jobs/import`: a JSON body naming the file, or the file
/// itself (`text/csv`, `application/x-ndjson`; `?file_name=` names it).
pub async fn import_users(
    State(state): State<AppState>,
    Caller(meta): Caller,
    headers: HeaderMap,
    query: QueryPairs,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let ctx = state.commands.context(&meta.tenant).await?;
    let (format, source, uploaded) = match upload_format(&headers) {
        Some(format) => {
            let (source, dir) = upload(&state, &ctx, &headers, &query, format, request.into_body()).await?;
            (format, source, Some(dir))
        }
        None => {
            use axum::extract::FromRequest;
            let JsonBody(body) = JsonBody::<ImportBody>::from_request(request, &state).await?;
            let format = Format::parse(&body.file_format)?;
            check_source(&state, &body.absolute_url, format, super::import::COLUMNS).await?;
            (format, FileRef { url: body.absolute_url.trim().to_string(), relative_url: body.relative_url }, None)
        }
    };
    let created = super::create_job(&state, &meta, JobKind::Import, format, source, Value::Null, &ctx).await;
    // A retry under the same Idempotency-Key answers the first job: the
    // copy this request uploaded is not that job's.
    if let Some(dir) = uploaded {
        if created.as_ref().map_or(true, |job| job.id != ctx.id(0).to_string()) {
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
    }
    let job = created?;
    Ok((StatusCode::ACCEPTED, Json(model(&job, &meta.tenant, &headers))).into_response())
}

/// Writes an uploaded file into the directory of the job about to be
/// created (`jobs/{id}/upload/{file_name}`), at most `--job-max-bytes`,
/// and checks its header. Answers the job's source and the directory to
/// remove if the job is not created. Whatever is refused leaves nothing.
async fn upload(
    state: &AppState,
    ctx: &userstream_domain::Context,
    headers: &HeaderMap,
    query: &QueryPairs,
    format: Format,
    body: axum::body::Body,
) -> Result<(FileRef, std::path::PathBuf), ApiError> {
    let max = state.config.job_limits.max_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("an uploaded file is at most {max} bytes (--job-max-bytes)"),
        )
    };
    let name = match query.get("file_name").map(str::trim) {
        None | Some("") => format!("upload.{}", format.as_str()),
        Some(name) => {
            let ok = name.chars().count() <= 100
                && !matches!(name, "." | "..")
                && name.chars().all(|c| !c.is_control() && !matches!(c, '/' | '\\'));
            if !ok {
                return Err(ApiError::invalid("file_name must be 1 to 100 characters, without / or \\"));
            }
            name.to_string()
        }
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    // The job's own directory: removed whole if the upload is refused.
    let job = job_dir(&ctx.id(0).to_string());
    let own = state.files.root().join(&job);
    let dir = own.join("upload");
    let path = dir.join(&name);
    let written = async {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        tokio::fs::create_dir_all(&dir).await.map_err(ApiError::internal)?;
        let mut file = tokio::fs::File::create(&path).await.map_err(ApiError::internal)?;
        let mut stream = body.into_data_stream();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::invalid(format!("the upload broke off: {e}")))?;
            size += chunk.len() as u64;
            if size > max {
                return Err(too_large());
            }
            file.write_all(&chunk).await.map_err(ApiError::internal)?;
        }
        file.sync_all().await.map_err(ApiError::internal)?;
        let checked = path.clone();
        tokio::task::spawn_blocking(move || source::check_header(&checked, format, super::import::COLUMNS))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::invalid(format!("{name}: {e}")))
    }
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_dir_all(&own).await;
        return Err(e);
    }
    Ok((FileRef { url: format!("file://{job}/upload/{name}"), relative_url: name }, own))
}

/// POST `…/users/jobs/export`.
pub async fn export_users(
    State(state): State<AppState>,
    Caller(meta): Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ExportBody>,
) -> Result<Response, ApiError> {
    let format = Format::parse(&body.file_format)?;
    crate::fynd::list_filter(body.q.as_deref())?;
    let ctx = state.commands.context(&meta.tenant).await?;
    let options = body.q.map_or(Value::Null, |q| json!({ "q": q }));
    let job = super::create_job(&state, &meta, JobKind::Export, format, FileRef::default(), options, &ctx).await?;
    Ok((StatusCode::ACCEPTED, Json(model(&job, &meta.tenant, &headers))).into_response())
}

/// PATCH `…/user_attribute/bulk`: inline `rows` or a `file_url` → 202 and the job.
pub async fn bulk_attributes(
    State(state): State<AppState>,
    Caller(meta): Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<BulkAttributesBody>,
) -> Result<Response, ApiError> {
    let ctx = state.commands.context(&meta.tenant).await?;
    let (format, source) = match (body.rows, body.file_url) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("send rows or file_url, not both")),
        (None, None) => return Err(ApiError::invalid("send rows or a file_url")),
        (Some(rows), None) => {
            if rows.is_empty() || rows.len() > MAX_INLINE_ROWS {
                return Err(ApiError::invalid(format!("rows must list 1 to {MAX_INLINE_ROWS} rows")));
            }
            // Inline rows become a file of the job, so both run the same way.
            let relative = format!("{}/rows.jsonl", job_dir(&ctx.id(0).to_string()));
            let mut text = String::new();
            for row in rows {
                text.push_str(&Value::Object(row).to_string());
                text.push('\n');
            }
            let path = state.files.root().join(&relative);
            if let Some(dir) = path.parent() {
                tokio::fs::create_dir_all(&dir).await.map_err(ApiError::internal)?;
            }
            tokio::fs::write(&path, text).await.map_err(ApiError::internal)?;
            (Format::Jsonl, FileRef { url: format!("file://{relative}"), relative_url: relative })
        }
        (None, Some(url)) => {
            let format = Format::parse(body.file_format.as_deref().unwrap_or("csv"))?;
            check_source(&state, &url, format, super::attributes::COLUMNS).await?;
            (format, FileRef { url: url.trim().to_string(), relative_url: String::new() })
        }
    };
    let job = super::create_job(&state, &meta, JobKind::Attributes, format, source, Value::Null, &ctx).await?;
    let mut answer = model(&job, &meta.tenant, &headers);
    answer["job_id"] = json!(job.id);
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// A job of the tenant, read from its stream (so it is never stale).
async fn load(state: &AppState, tenant: &Tenant, raw: &str, kinds: &[JobKind]) -> Result<Job, ApiError> {
    let not_found = || ApiError::not_found(format!("job {raw} not found"));
    let id = userstream_domain::UserId::parse("job_id", raw).map_err(|_| not_found())?;
    let stream = StreamId::job(id.as_str());
    match state.commands.state::<JobStream>(tenant, &stream).await.map_err(crate::commands::CommandError::from)? {
        Some((JobState::Created(job), _)) if kinds.contains(&job.kind) => Ok(*job),
        _ => Err(not_found()),
    }
}

/// GET `…/users/jobs/{job_id}`: an import or export job.
pub async fn get_job(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    Path((_, _, job_id)): JobPath,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let job = load(&state, &tenant, &job_id, &[JobKind::Import, JobKind::Export]).await?;
    Ok(Json(model(&job, &tenant, &headers)))
}

/// Rejected rows shown with a bulk attribute job.
const ERRORS_SHOWN: usize = 100;

/// GET `…/user_attribute/bulk/{job_id}`: the job, with its first rejected rows.
pub async fn get_attribute_job(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    Path((_, _, job_id)): JobPath,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let job = load(&state, &tenant, &job_id, &[JobKind::Attributes]).await?;
    let mut answer = model(&job, &tenant, &headers);
    answer["job_id"] = json!(job.id);
    answer["errors"] = json!(first_errors(&state, &job).await?);
    Ok(Json(answer))
}

async fn first_errors(state: &AppState, job: &Job) -> Result<Vec<Value>, ApiError> {
    let path = state.files.root().join(job_dir(&job.id)).join(ERROR_FILE);
    let Ok(file) = tokio::fs::File::open(&path).await else {
        return Ok(Vec::new());
    };
    // Only what the last progress record covers is settled.
    let mut head = vec![0u8; job.error_bytes.min(1 << 20) as usize];
    use tokio::io::AsyncReadExt;
    let n = file.take(head.len() as u64).read(&mut head).await.map_err(ApiError::internal)?;
    head.truncate(n);
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(head.as_slice());
    Ok(reader
        .records()
        .filter_map(Result::ok)
        .take(ERRORS_SHOWN)
        .map(|r| json!({ "line": r.get(0).and_then(|l| l.parse::<u64>().ok()).unwrap_or(0), "reason": r.get(1).unwrap_or("") }))
        .collect())
}

/// GET `…/users/jobs/import` and `…/users/jobs/export`.
async fn list(
    state: &AppState,
    tenant: &Tenant,
    headers: &HeaderMap,
    query: &QueryPairs,
    kind: JobKind,
) -> Result<Json<Value>, ApiError> {
    let page_no = query.int("page_no", 1, 1..=1_000_000)?;
    let page_size = query.int("page_size", 10, 1..=500)?;
    let text = |k: &str| query.get(k).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
    let status = match text("status") {
        None => None,
        Some(s) => Some(JobStatus::parse(&s).ok_or_else(|| {
            ApiError::invalid(format!("status must be pending, running, completed or failed, got {s:?}"))
        })?),
    };
    let filter = JobFilter {
        kinds: vec![kind],
        file_format: text("file_format").map(|f| Format::parse(&f).map(|f| f.as_str().to_string())).transpose()?,
        search: text("search"),
        start_date: text("start_date").map(|d| date_bound(&d, false)).transpose()?,
        end_date: text("end_date").map(|d| date_bound(&d, true)).transpose()?,
        status,
    };
    crate::http::consistency::latest(state, &[&state.jobs]).await?;
    let (jobs, total) = state.job_queries.list(tenant, &filter, page_no, page_size).await?;
    let items: Vec<Value> = jobs.iter().map(|j| model(j, tenant, headers)).collect();
    let page = json!({ "type": "number", "current": page_no, "size": page_size, "item_total": total, "has_next": page_no * page_size < total });
    Ok(Json(json!({ "items": items, "page": page })))
}

/// A `start_date`/`end_date` as an RFC 3339 bound: a date alone is the
/// start (or the end) of that day, UTC.
fn date_bound(raw: &str, end: bool) -> Result<String, ApiError> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(raw, &Rfc3339) {
        return Ok(format_time(t));
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let day = time::Date::parse(raw, &format)
        .map_err(|_| ApiError::invalid(format!("{raw:?} is not a date (YYYY-MM-DD) or an RFC 3339 time")))?;
    let t = if end { day.with_hms_milli(23, 59, 59, 999) } else { day.with_hms(0, 0, 0) };
    Ok(format_time(t.map_err(ApiError::internal)?.assume_utc()))
}

pub async fn list_imports(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    headers: HeaderMap,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    list(&state, &tenant, &headers, &query, JobKind::Import).await
}

pub async fn list_exports(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    headers: HeaderMap,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    list(&state, &tenant, &headers, &query, JobKind::Export).await
}

/// GET `…/jobs/{job_id}/files/{name}`: an export (`file`) or an error file
/// (`error`), streamed.
pub async fn download(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    Path((_, _, job_id, name)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let job = load(&state, &tenant, &job_id, &[JobKind::Import, JobKind::Export, JobKind::Attributes]).await?;
    let relative = match name.as_str() {
        "error" if job.status != JobStatus::Pending => format!("{}/{ERROR_FILE}", job_dir(&job.id)),
        "file" if !job.output.relative_url.is_empty() => job.output.relative_url.clone(),
        _ => return Err(ApiError::not_found(format!("job {} has no {name} file", job.id))),
    };
    let path = state.files.root().join(&relative);
    let file = tokio::fs::File::open(&path).await.map_err(|_| ApiError::not_found(format!("{relative} is gone")))?;
    let kind = if relative.ends_with(".jsonl") { "application/x-ndjson" } else { "text/csv; charset=utf-8" };
    let file_name = relative.rsplit('/').next().unwrap_or("file");
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, kind.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{file_name}\"")),
        ],
        body,
    )
        .into_response())
}

/// The service's own URL of a job file, as the caller reached the service.
fn file_link(tenant: &Tenant, headers: &HeaderMap, job_id: &str, name: &str, relative_url: String) -> Value {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| matches!(*p, "http" | "https"))
        .unwrap_or("http");
    let absolute_url = format!(
        "{scheme}://{host}/service/platform/user/v1.0/company/{}/application/{}/jobs/{job_id}/files/{name}",
        tenant.company_id, tenant.application_id
    );
    json!({ "absolute_url": absolute_url, "relative_url": relative_url })
}

/// The SDK's `BulkActionModel` (no `null` anywhere; absent links are left out).
pub fn model(job: &Job, tenant: &Tenant, headers: &HeaderMap) -> Value {
    let mut links = serde_json::Map::new();
    match job.kind {
        JobKind::Export if !job.output.relative_url.is_empty() => {
            let link = file_link(tenant, headers, &job.id, "file", job.output.relative_url.clone());
            links.insert("file".into(), link);
        }
        JobKind::Export => {}
        _ => {
            links.insert(
                "file".into(),
                json!({ "absolute_url": job.source.url, "relative_url": job.source.relative_url }),
            );
        }
    }
    if job.status != JobStatus::Pending {
        let relative = format!("{}/{ERROR_FILE}", job_dir(&job.id));
        links.insert("error".into(), file_link(tenant, headers, &job.id, "error", relative));
    }
    let mut model = json!({
        "_id": job.id,
        "file_name": job.file_name,
        "file_format": job.file_format,
        "action_type": job.kind.as_str(),
        "created_by": { "name": job.created_by.name, "user_id": job.created_by.user_id },
        "count": { "total": job.counts.total, "success": job.counts.success, "error": job.counts.error },
        "status": job.status.as_str(),
        "links": links,
        "application_id": tenant.application_id,
        "company_id": tenant.company_id,
        "created_at": format_time(job.created_at),
        "updated_at": format_time(job.updated_at),
    });
    if !job.failure.is_empty() {
        model["reason"] = json!(job.failure);
    }
    if job.position > 0 {
        model["position"] = json!(job.position);
    }
    model
}
