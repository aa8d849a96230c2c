//! Read-your-writes: the one place a query waits for what it must see.
//!
//! Every query answers from read models, which follow the log a little
//! behind. By default ([`Consistency::Latest`]) a query first reads the
//! log's head, which is the highest committed position on the database,
//! whichever instance committed it, and waits, bounded by
//! `--min-position-wait-ms`, until the read models it uses have reached
//! it. A client that wrote and then reads therefore sees its write without
//! sending anything, on one instance or on several behind a load balancer.
//! The cost is one indexed `MAX(position)` per query and, under writes,
//! the projection's lag behind the head (see `docs/benchmarks.md`).
//!
//! - `X-Min-Position: N` (or `?min_position=N`): wait for position N only.
//! - `X-Consistency: eventual` (or `?consistency=eventual`): never wait;
//!   the answer may miss the latest writes.
//!
//! A read model that does not get there in time answers 503
//! `read_model_behind` with `Retry-After`.

use crate::http::ApiError;
use crate::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use userstream_eventlog::EventLog;
use userstream_projections::RunnerHandle;

/// How fresh a query's answer must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Everything committed before the query started (the default).
    Latest,
    /// Everything up to this log position.
    AtLeast(i64),
    /// What the read models hold now; never waits.
    Eventual,
}

impl Consistency {
    /// From the `X-Min-Position` / `X-Consistency` headers or their query
    /// parameters; headers win.
    pub fn from_parts(parts: &Parts) -> Result<Consistency, ApiError> {
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let query: Vec<(String, String)> =
            serde_urlencoded::from_str(parts.uri.query().unwrap_or("")).unwrap_or_default();
        let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim());
        if let Some(raw) = header("x-min-position").or_else(|| param("min_position")) {
            let position = raw.parse().map_err(|_| ApiError::invalid("min_position must be an integer"))?;
            return Ok(Consistency::AtLeast(position));
        }
        match header("x-consistency").or_else(|| param("consistency")) {
            None | Some("") | Some("latest") => Ok(Consistency::Latest),
            Some("eventual") => Ok(Consistency::Eventual),
            Some(other) => Err(ApiError::invalid(format!("consistency must be latest or eventual, got {other:?}"))),
        }
    }

    /// Waits until each of `models` has reached what this consistency asks
    /// for, at most the configured wait; 503 when one does not.
    pub async fn wait(self, state: &AppState, models: &[&RunnerHandle]) -> Result<(), ApiError> {
        let position = match self {
            Consistency::Eventual => return Ok(()),
            Consistency::AtLeast(position) => position,
            Consistency::Latest => state.commands.log().head().await?,
        };
        for model in models {
            if !model.wait_for(position, state.config.min_position_wait).await {
                return Err(ApiError::behind(position));
            }
        }
        Ok(())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Consistency {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Consistency::from_parts(parts)
    }
}

/// Waits until `models` have every event committed so far, whatever the
/// client asked: for reads a command makes before it decides (a definition
/// it validates against, a group's next uid).
pub async fn latest(state: &AppState, models: &[&RunnerHandle]) -> Result<(), ApiError> {
    Consistency::Latest.wait(state, models).await
}
