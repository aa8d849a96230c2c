//! Prometheus metrics (`GET /metrics`), through the `metrics` facade and
//! `metrics-exporter-prometheus`'s recorder (no listener of its own: the
//! API serves the text).
//!
//! Recorded where things happen: requests here (by route template, never
//! the path a client sent), commands in [`crate::commands`], append batches
//! in the event log's writer, job rows in [`crate::jobs`], relay failures in
//! the relay. Read at each scrape: the log head, every worker's lag (events
//! and seconds behind the head), its lease, and jobs by status.
//!
//! Labels hold only names the code chose (route templates, command names,
//! worker names, statuses): no ids, no request data.

use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use userstream_eventlog::EventLog;

/// Upper bounds (seconds) of the latency histograms.
const LATENCY: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Upper bounds of the append batch sizes (requests per transaction).
const BATCH: [f64; 11] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Histogram: requests by `method`, `route` (template) and `status`.
pub const HTTP_REQUEST_DURATION: &str = "userstream_http_request_duration_seconds";
/// Counter: commands by `command` and `outcome`.
pub const COMMANDS: &str = "userstream_commands_total";
/// Histogram: command durations by `command`.
pub const COMMAND_DURATION: &str = "userstream_command_duration_seconds";
/// Gauge: 1 when the log answered the last scrape.
pub const LOG_REACHABLE: &str = "userstream_log_reachable";
/// Gauge: the log's last position.
pub const LOG_HEAD: &str = "userstream_log_head_position";
/// Gauge by `worker`: the position it has reached.
pub const WORKER_POSITION: &str = "userstream_worker_position";
/// Gauge by `worker`: events between its position and the head.
pub const WORKER_LAG_EVENTS: &str = "userstream_worker_lag_events";
/// Gauge by `worker`: age of the oldest event it has not processed.
pub const WORKER_LAG_SECONDS: &str = "userstream_worker_lag_seconds";
/// Gauge by `worker`: 1 on the process holding its lease.
pub const WORKER_LEASE_OWNED: &str = "userstream_worker_lease_owned";
/// Gauge by `worker`: 1 when it stopped on a poison event.
pub const WORKER_FAILED: &str = "userstream_worker_failed";
/// Gauge: bulk jobs by `kind` and `status`.
pub const JOBS: &str = "userstream_jobs";
/// Counter: job rows by `kind` and `outcome`.
pub const JOB_ROWS: &str = "userstream_job_rows_total";

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric the service exports, with its kind and help text.
pub const NAMES: [(&str, Kind, &str); 16] = [
    (HTTP_REQUEST_DURATION, Kind::Histogram, "Requests by method, route template and status, and how long they took."),
    (COMMANDS, Kind::Counter, "Commands by name and outcome (ok, rejected, conflict, failed)."),
    (COMMAND_DURATION, Kind::Histogram, "How long commands took, by name."),
    (userstream_eventlog::metric::APPEND_BATCH_SIZE, Kind::Histogram, "Append requests per event-log transaction."),
    (
        userstream_eventlog::metric::APPEND_BATCH_DURATION,
        Kind::Histogram,
        "How long an event-log transaction took, by outcome.",
    ),
    (userstream_eventlog::metric::EVENTS_APPENDED, Kind::Counter, "Events appended to the log by this process."),
    (LOG_REACHABLE, Kind::Gauge, "1 when the event log answered the last scrape."),
    (LOG_HEAD, Kind::Gauge, "Position of the last event of the log."),
    (WORKER_POSITION, Kind::Gauge, "The position each worker has reached (projections, engine, relay)."),
    (WORKER_LAG_EVENTS, Kind::Gauge, "Events between each worker's position and the log head."),
    (WORKER_LAG_SECONDS, Kind::Gauge, "Age of the oldest event a worker has not processed yet (0 when caught up)."),
    (WORKER_LEASE_OWNED, Kind::Gauge, "1 when this process holds the worker's lease (runs it), else 0."),
    (WORKER_FAILED, Kind::Gauge, "1 when the worker stopped on an event it cannot process."),
    (JOBS, Kind::Gauge, "Bulk jobs by kind and status, over every tenant."),
    (JOB_ROWS, Kind::Counter, "Rows of bulk jobs processed by this process, by kind and outcome."),
    (
        userstream_projections::relay::PUBLISH_FAILURES,
        Kind::Counter,
        "Failed relay steps (NATS unreachable, stream, publish, storage).",
    ),
];

/// Installs the process's recorder once; `None` when another recorder was
/// installed first (metrics are then not served).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), &LATENCY)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(userstream_eventlog::metric::APPEND_BATCH_SIZE.into()),
                        &BATCH,
                    )
                });
            match builder.and_then(PrometheusBuilder::install_recorder) {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// Help texts, and the counters that must show before their first event
/// (at zero), so dashboards and alerts see them from the start.
fn describe() {
    for (name, kind, help) in NAMES {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
    use userstream_domain::job::JobKind;
    for kind in [JobKind::Import, JobKind::Export, JobKind::Attributes].map(JobKind::as_str) {
        for outcome in ["success", "error"] {
            metrics::counter!(JOB_ROWS, "kind" => kind, "outcome" => outcome).increment(0);
        }
    }
    for reason in userstream_projections::relay::FAILURE_REASONS {
        metrics::counter!(userstream_projections::relay::PUBLISH_FAILURES, "reason" => reason).increment(0);
    }
    metrics::counter!(userstream_eventlog::metric::EVENTS_APPENDED).increment(0);
}

/// Drains the histograms' buffers every few seconds (as scrapes do), so a
/// service nobody scrapes keeps its memory.
pub async fn upkeep() {
    let Some(handle) = install() else { return };
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// Counts every request by method, route template and status, with its
/// duration. A path no route matched is `unmatched`.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = [
        ("method", method.to_string()),
        ("route", route.unwrap_or_else(|| "unmatched".to_string())),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::histogram!(HTTP_REQUEST_DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}

/// The method as a label: the standard ones, else `other`.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `GET /metrics`: what was recorded, with the gauges read now.
pub async fn render(State(state): State<AppState>) -> Response {
    let Some(handle) = install() else {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "metrics are not recorded in this process\n")
            .into_response();
    };
    observe(&state).await;
    handle.run_upkeep();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()).into_response()
}

/// Sets the gauges that are read rather than counted.
async fn observe(state: &AppState) {
    let log = state.commands.log();
    let Ok(head) = log.head().await else {
        metrics::gauge!(LOG_REACHABLE).set(0.0);
        return;
    };
    metrics::gauge!(LOG_REACHABLE).set(1.0);
    metrics::gauge!(LOG_HEAD).set(head as f64);
    let now = state.commands.now();
    // The bulk-job worker follows jobs, not positions: its lease and failure only.
    if let Some(jobs) = state.job_runner.get() {
        let status = jobs.status();
        metrics::gauge!(WORKER_LEASE_OWNED, "worker" => jobs.name).set(f64::from(u8::from(status.owner)));
        metrics::gauge!(WORKER_FAILED, "worker" => jobs.name).set(f64::from(u8::from(status.failure.is_some())));
    }
    for runner in &state.runners {
        let status = runner.status();
        let behind = (head - status.position).max(0);
        let seconds = match behind {
            0 => 0.0,
            _ => match log.read_all(status.position, 1).await {
                Ok(events) => events.first().map_or(0.0, |e| (now - e.recorded_at).as_seconds_f64().max(0.0)),
                Err(_) => 0.0,
            },
        };
        let worker = runner.name;
        metrics::gauge!(WORKER_POSITION, "worker" => worker).set(status.position as f64);
        metrics::gauge!(WORKER_LAG_EVENTS, "worker" => worker).set(behind as f64);
        metrics::gauge!(WORKER_LAG_SECONDS, "worker" => worker).set(seconds);
        metrics::gauge!(WORKER_LEASE_OWNED, "worker" => worker).set(f64::from(u8::from(status.owner)));
        metrics::gauge!(WORKER_FAILED, "worker" => worker).set(f64::from(u8::from(status.failure.is_some())));
    }
    if let Ok(counts) = state.job_queries.counts_by_status().await {
        use userstream_domain::job::{JobKind, JobStatus};
        for kind in [JobKind::Import, JobKind::Export, JobKind::Attributes].map(JobKind::as_str) {
            for status in
                [JobStatus::Pending, JobStatus::Running, JobStatus::Completed, JobStatus::Failed].map(JobStatus::as_str)
            {
                let n = counts.iter().find(|(k, s, _)| k == kind && s == status).map_or(0, |(_, _, n)| *n);
                metrics::gauge!(JOBS, "kind" => kind, "status" => status).set(n as f64);
            }
        }
    }
}
