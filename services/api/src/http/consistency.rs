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
//! `read_model_behind` with `Retry-After`; a position past the log's head
//! (which no write answered) is a 400.

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
        for name in ["min_position", "consistency"] {
            if query.iter().filter(|(k, _)| k == name).count() > 1 {
                return Err(ApiError::invalid(format!("{name} may be given once")));
            }
        }
        let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim());
        let position = |raw: &str| {
            raw.parse()
                .ok()
                .filter(|p: &i64| *p >= 0)
                .ok_or_else(|| ApiError::invalid("min_position must be an integer of at least 0"))
        };
        let kind = |raw: &str| match raw {
            "" | "latest" => Ok(Consistency::Latest),
            "eventual" => Ok(Consistency::Eventual),
            other => Err(ApiError::invalid(format!("consistency must be latest or eventual, got {other:?}"))),
        };
        // Every value given is checked, also those a header overrides.
        let min = [header("x-min-position"), param("min_position")].map(|raw| raw.map(position).transpose());
        let wanted = [header("x-consistency"), param("consistency")].map(|raw| raw.map(kind).transpose());
        let [min_header, min_param] = min;
        let [kind_header, kind_param] = wanted;
        let (min, kind) = (min_header?.or(min_param?), kind_header?.or(kind_param?));
        Ok(min.map(Consistency::AtLeast).or(kind).unwrap_or(Consistency::Latest))
    }

    /// Waits until each of `models` has reached what this consistency asks
    /// for, at most the configured wait; 503 when one does not.
    pub async fn wait(self, state: &AppState, models: &[&RunnerHandle]) -> Result<(), ApiError> {
        let position = match self {
            Consistency::Eventual => return Ok(()),
            // Already there (the usual case): no need to read the head.
            Consistency::AtLeast(position) if models.iter().all(|m| m.status().position >= position) => return Ok(()),
            Consistency::AtLeast(position) => {
                // No write has answered a position past the head: a client
                // error, not something to wait for.
                let head = state.commands.log().head().await?;
                if position > head {
                    return Err(ApiError::invalid(format!(
                        "min_position {position} is past the log's last position {head}: no write returned it"
                    )));
                }
                position
            }
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
