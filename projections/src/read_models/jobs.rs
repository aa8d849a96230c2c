//! The jobs read model: one row per bulk job, the job's state as JSON plus
//! the columns the job lists filter and sort on. Built from `job-*` streams
//! only; the job worker finds its queue here (pending and running jobs,
//! oldest first).

use crate::{Projection, ProjectionError};
use sqlx::{AnyConnection, Row};
use userstream_domain::job::{self, Job, JobKind, JobState, JobStatus};
use userstream_eventlog::{format_time, Db, Migration, RecordedEvent, Tenant};

pub const NAME: &str = "jobs_v1";

const DDL: &str = "
    CREATE TABLE IF NOT EXISTS jobs_v1 (
        company_id TEXT NOT NULL,
        application_id TEXT NOT NULL,
        job_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        file_format TEXT NOT NULL,
        file_name TEXT NOT NULL,
        created_at TEXT NOT NULL,
        seq BIGINT NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY (job_id)
    );
    CREATE INDEX IF NOT EXISTS jobs_v1_list ON jobs_v1 (company_id, application_id, kind, seq);
    CREATE INDEX IF NOT EXISTS jobs_v1_queue ON jobs_v1 (status, seq);";

const MIGRATIONS: &[Migration] = &[Migration { version: 1, sqlite: DDL, postgres: DDL }];

#[derive(Debug, Clone, Copy, Default)]
pub struct JobsProjection;

impl Projection for JobsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["jobs_v1"]
    }

    fn handles(&self, event: &RecordedEvent) -> bool {
        event.stream.starts_with("job-")
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    async fn apply(&self, conn: &mut AnyConnection, event: &RecordedEvent) -> Result<(), ProjectionError> {
        if !self.handles(event) {
            return Ok(());
        }
        let poison = |reason: String| ProjectionError::Poison { position: event.position, reason };
        let decoded = job::decode(&event.event_type, event.schema as u32, event.data.as_str())
            .map_err(|e| poison(e.to_string()))?;
        let id = event.stream.trim_start_matches("job-");
        let stored: Option<String> =
            sqlx::query_scalar("SELECT doc FROM jobs_v1 WHERE job_id = $1").bind(id).fetch_optional(&mut *conn).await?;
        let state = match stored {
            Some(doc) => JobState::Created(Box::new(serde_json::from_str(&doc).map_err(|e| poison(e.to_string()))?)),
            None => JobState::NotCreated,
        };
        let Some(job) = job::evolve(state, &decoded).job().cloned() else {
            return Ok(());
        };
        sqlx::query(
            "INSERT INTO jobs_v1 (company_id, application_id, job_id, kind, status, file_format, file_name, created_at, seq, doc)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (job_id) DO UPDATE SET status = $5, doc = $10",
        )
        .bind(&event.company_id)
        .bind(&event.application_id)
        .bind(&job.id)
        .bind(job.kind.as_str())
        .bind(job.status.as_str())
        .bind(&job.file_format)
        .bind(&job.file_name)
        .bind(format_time(job.created_at))
        .bind(event.position)
        .bind(serde_json::to_string(&job).map_err(|e| poison(e.to_string()))?)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// What a job list asks for (the SDK's `getBulkImportUsersList` query).
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub kinds: Vec<JobKind>,
    pub file_format: Option<String>,
    /// Contained in the file name (case-insensitive).
    pub search: Option<String>,
    /// RFC 3339 bounds on `created_at`, inclusive.
    pub start_date: Option<String>,
    pub end_date: Option<String>,
    pub status: Option<JobStatus>,
}

/// Reads of the jobs read model.
#[derive(Clone)]
pub struct JobsQuery {
    db: Db,
}

fn decode(doc: &str) -> Result<Job, sqlx::Error> {
    serde_json::from_str(doc).map_err(|e| sqlx::Error::ColumnDecode { index: "doc".into(), source: Box::new(e) })
}

impl JobsQuery {
    pub fn new(db: Db) -> Self {
        JobsQuery { db }
    }

    /// A page of the tenant's jobs, newest first, and how many match.
    pub async fn list(
        &self,
        tenant: &Tenant,
        filter: &JobFilter,
        page_no: i64,
        page_size: i64,
    ) -> Result<(Vec<Job>, i64), sqlx::Error> {
        let mut cond = String::new();
        let mut binds: Vec<String> = vec![tenant.company_id.clone(), tenant.application_id.clone()];
        let bind = |binds: &mut Vec<String>, value: String| {
            binds.push(value);
            format!("${}", binds.len())
        };
        if !filter.kinds.is_empty() {
            let kinds: Vec<String> = filter.kinds.iter().map(|k| bind(&mut binds, k.as_str().to_string())).collect();
            cond.push_str(&format!(" AND kind IN ({})", kinds.join(", ")));
        }
        if let Some(f) = &filter.file_format {
            cond.push_str(&format!(" AND file_format = {}", bind(&mut binds, f.to_lowercase())));
        }
        if let Some(s) = &filter.search {
            cond.push_str(&format!(
                " AND LOWER(file_name) LIKE {}",
                bind(&mut binds, format!("%{}%", s.to_lowercase()))
            ));
        }
        if let Some(d) = &filter.start_date {
            cond.push_str(&format!(" AND created_at >= {}", bind(&mut binds, d.clone())));
        }
        if let Some(d) = &filter.end_date {
            cond.push_str(&format!(" AND created_at <= {}", bind(&mut binds, d.clone())));
        }
        if let Some(s) = filter.status {
            cond.push_str(&format!(" AND status = {}", bind(&mut binds, s.as_str().to_string())));
        }
        let offset = (page_no.max(1) - 1) * page_size;
        let page = format!(
            "SELECT doc FROM jobs_v1 WHERE company_id = $1 AND application_id = $2{cond} ORDER BY seq DESC LIMIT {page_size} OFFSET {offset}"
        );
        let count = format!("SELECT COUNT(*) FROM jobs_v1 WHERE company_id = $1 AND application_id = $2{cond}");
        let mut page_query = sqlx::query_scalar::<_, String>(&page);
        let mut count_query = sqlx::query_scalar::<_, i64>(&count);
        for b in &binds {
            page_query = page_query.bind(b.as_str());
            count_query = count_query.bind(b.as_str());
        }
        let docs = page_query.fetch_all(&self.db.pool).await?;
        let total = count_query.fetch_one(&self.db.pool).await?;
        Ok((docs.iter().map(|d| decode(d)).collect::<Result<_, _>>()?, total))
    }

    /// The oldest job still to run or to finish, of any tenant.
    pub async fn next_unfinished(&self) -> Result<Option<(Tenant, Job)>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT company_id, application_id, doc FROM jobs_v1 WHERE status IN ('pending', 'running') ORDER BY seq LIMIT 1",
        )
        .fetch_optional(&self.db.pool)
        .await?;
        row.map(|r| {
            let tenant = Tenant { company_id: r.try_get("company_id")?, application_id: r.try_get("application_id")? };
            Ok((tenant, decode(&r.try_get::<String, _>("doc")?)?))
        })
        .transpose()
    }

    /// How many jobs of each kind are in each status, over every tenant.
    pub async fn counts_by_status(&self) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
        let rows = sqlx::query("SELECT kind, status, COUNT(*) AS n FROM jobs_v1 GROUP BY kind, status")
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get("kind")?, r.try_get("status")?, r.try_get("n")?))).collect()
    }
}
