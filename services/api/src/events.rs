//! Reading the log: the tenant event feed (JSON pages and Server-Sent
//! Events), a user's and a group's history with what each event changed,
//! the Fynd timeline view of a user's history, and `as_of` reads that
//! rebuild a user, a group (and its members) or an attribute value from the
//! log as it was at a position or a moment.

use crate::commands::fold_events;
use crate::dto::UserDto;
use crate::http::{ApiError, QueryPairs, TenantOf};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;
use time::OffsetDateTime;
use userstream_domain::codec;
use userstream_domain::group::{GroupEvent, GroupState};
use userstream_domain::user::{UserState, UserStream};
use userstream_domain::{StreamId, UserId};
use userstream_eventlog::{format_time, EventLog, FeedFilter, RecordedEvent, SqlEventLog, Tenant};
use userstream_projections::read_models::groups::GroupRow;

/// Largest page of the JSON feed.
pub const MAX_FEED_PAGE: i64 = 1000;
/// Events per read of the SSE stream: the most it holds for a slow client.
const SSE_BATCH: i64 = 500;

// -- as_of ------------------------------------------------------------------

/// A moment of the log: a position, or a time (events recorded at or before it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AsOf {
    Position(i64),
    Time(OffsetDateTime),
}

impl AsOf {
    /// `as_of` from the query, if sent: an RFC 3339 time or a position, not in the future.
    pub async fn from_query(state: &AppState, query: &QueryPairs) -> Result<Option<AsOf>, ApiError> {
        let Some(raw) = query.get("as_of").map(str::trim).filter(|r| !r.is_empty()) else { return Ok(None) };
        let as_of = if let Ok(position) = raw.parse::<i64>() {
            let head = state.commands.log().head().await?;
            if position < 0 {
                return Err(ApiError::invalid("as_of must be a position (0 or more) or an RFC 3339 time"));
            }
            if position > head {
                return Err(ApiError::invalid(format!("as_of {position} is in the future: the log is at {head}")));
            }
            AsOf::Position(position)
        } else {
            let at = OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339).map_err(|_| {
                ApiError::invalid(format!(
                    "as_of must be a position or an RFC 3339 time like 2026-01-31T12:00:00Z, got {raw:?}"
                ))
            })?;
            if at > state.commands.now() {
                return Err(ApiError::invalid(format!("as_of {raw} is in the future")));
            }
            AsOf::Time(at)
        };
        Ok(Some(as_of))
    }

    pub fn includes(&self, event: &RecordedEvent) -> bool {
        match self {
            AsOf::Position(p) => event.position <= *p,
            AsOf::Time(t) => event.recorded_at <= *t,
        }
    }
}

/// A stream's events of the tenant up to `as_of` (all when `None`); `None`
/// when the stream is another tenant's.
pub(crate) async fn stream_of(
    log: &SqlEventLog,
    tenant: &Tenant,
    stream: &StreamId,
    as_of: Option<AsOf>,
) -> Result<Option<Vec<RecordedEvent>>, ApiError> {
    let mut events = match as_of {
        Some(AsOf::Position(p)) => log.read_stream_until(stream.as_str(), p).await?,
        _ => log.read_stream(stream.as_str()).await?,
    };
    if events.first().is_some_and(|e| e.company_id != tenant.company_id || e.application_id != tenant.application_id) {
        return Ok(None);
    }
    if let Some(as_of) = as_of {
        events.retain(|e| as_of.includes(e));
    }
    Ok(Some(events))
}

/// The user as the Fynd API shows it, or `None` before it was created.
fn user_view(state: &UserState, application_id: &str) -> Option<Value> {
    let (user, archived) = match state {
        UserState::NotCreated | UserState::Erased { .. } => return None,
        UserState::Live(u) => (u, false),
        UserState::Archived { user, .. } => (user, true),
    };
    let mut dto = UserDto::from_user(user, application_id);
    dto.archive = archived;
    serde_json::to_value(dto).ok()
}

/// GET user with `as_of`: the user folded from its events up to then.
pub async fn user_as_of(
    state: &AppState,
    tenant: &Tenant,
    user_id: &UserId,
    as_of: AsOf,
) -> Result<Response, ApiError> {
    let not_found =
        || ApiError::new(StatusCode::NOT_FOUND, "user_not_found", format!("user {user_id} did not exist then"));
    let events =
        stream_of(state.commands.log(), tenant, &StreamId::user(user_id), Some(as_of)).await?.ok_or_else(not_found)?;
    let folded: UserState = fold_events::<UserStream>(&events).map_err(crate::commands::CommandError::from)?;
    let view = user_view(&folded, &tenant.application_id).ok_or_else(not_found)?;
    Ok(as_of_response(json!({ "user": view }), &events))
}

/// Marks an as-of answer with the version and position it was rebuilt at.
fn as_of_response(body: Value, events: &[RecordedEvent]) -> Response {
    let mut response = Json(body).into_response();
    if let Some(last) = events.last() {
        if let Ok(v) = header::HeaderValue::from_str(&format!("\"{}\"", last.version)) {
            response.headers_mut().insert(header::ETAG, v);
        }
        if let Ok(v) = header::HeaderValue::from_str(&last.position.to_string()) {
            response.headers_mut().insert("x-as-of-position", v);
        }
    }
    response
}

/// A group rebuilt from its stream: details, members and counters.
pub struct GroupAsOf {
    pub state: GroupState,
    pub members: BTreeSet<String>,
    pub evaluated_version: i64,
    pub unmatched: i64,
    pub updated_at: Option<OffsetDateTime>,
    /// The version of the last details event (what the read model calls the version).
    pub version: i64,
}

impl GroupAsOf {
    /// The group as the read model would have had it; `None` once deleted.
    pub fn row(&self, tenant: &Tenant) -> Option<GroupRow> {
        let GroupState::Live(g) = &self.state else { return None };
        let d = &g.details;
        Some(GroupRow {
            group_id: g.id.clone(),
            application_id: tenant.application_id.clone(),
            uid: g.uid,
            name: d.name.clone(),
            description: d.description.clone(),
            kind: d.kind_or_default().to_string(),
            category: d.category.clone(),
            tags: d.tags.clone(),
            conditions: serde_json::to_value(&d.conditions).unwrap_or(Value::Null),
            file_url: d.file_url.clone(),
            rule_version: g.rule_version,
            evaluated_version: self.evaluated_version,
            total_users: self.members.len() as i64,
            error_count: self.unmatched,
            version: self.version,
            created_at: format_time(g.created_at),
            updated_at: format_time(self.updated_at.unwrap_or(g.updated_at)),
        })
    }
}

/// Folds a group's stream up to `as_of` (`None`: another tenant's or unknown).
pub async fn group_as_of(
    state: &AppState,
    tenant: &Tenant,
    group_id: &str,
    as_of: AsOf,
) -> Result<Option<GroupAsOf>, ApiError> {
    let Some(events) = stream_of(state.commands.log(), tenant, &StreamId::group(group_id), Some(as_of)).await? else {
        return Ok(None);
    };
    let mut group = GroupAsOf {
        state: GroupState::NotCreated,
        members: BTreeSet::new(),
        evaluated_version: 0,
        unmatched: 0,
        updated_at: None,
        version: 0,
    };
    for e in &events {
        let decoded = codec::decode_group(&e.event_type, e.schema as u32, e.data.as_str())
            .map_err(|err| ApiError::internal(format!("event at position {}: {err}", e.position)))?;
        match &decoded {
            GroupEvent::MembershipChanged(m) => {
                group.members.extend(m.joined.iter().cloned());
                for u in &m.left {
                    group.members.remove(u);
                }
                group.unmatched += m.unmatched;
                group.updated_at = Some(m.at);
            }
            GroupEvent::Evaluated(ev) => group.evaluated_version = group.evaluated_version.max(ev.rule_version),
            GroupEvent::Created(d) | GroupEvent::Updated(d) => {
                group.updated_at = Some(d.at);
                group.version = e.version;
            }
            GroupEvent::Deleted(d) => {
                group.members.clear();
                group.updated_at = Some(d.at);
            }
        }
        group.state = userstream_domain::group::evolve(group.state, &decoded);
    }
    if matches!(group.state, GroupState::NotCreated) {
        return Ok(None);
    }
    Ok(Some(group))
}

// -- the feed ---------------------------------------------------------------

fn feed_filter(query: &QueryPairs) -> Result<FeedFilter, ApiError> {
    let mut types = Vec::new();
    for raw in query.all("types").iter().chain(query.all("type").iter()) {
        for t in raw.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let name = t.strip_suffix('*').unwrap_or(t);
            let ok = t.len() <= 100
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
                && (t.ends_with('*') == name.ends_with('.') || !t.ends_with('*'));
            if !ok {
                return Err(ApiError::invalid(format!(
                    "types: {t:?} is not an event type (like user.created) or a prefix (like user.*)"
                )));
            }
            types.push(t.to_string());
        }
    }
    if types.len() > 50 {
        return Err(ApiError::invalid("types: at most 50 event types"));
    }
    Ok(FeedFilter { types })
}

/// Where a reader resumes: `Last-Event-ID` (SSE reconnects), else `after`.
fn resume_after(headers: &HeaderMap, query: &QueryPairs) -> Result<i64, ApiError> {
    // Checked even when the header wins: a bad value is never ignored.
    let after = query.int("after", 0, 0..=i64::MAX)?;
    let header = headers.get("last-event-id").map(|v| v.to_str().map(str::trim));
    let header = header.transpose().map_err(|_| ApiError::invalid("Last-Event-ID must be an event position"))?;
    if let Some(raw) = header {
        if !raw.is_empty() {
            return raw
                .parse::<i64>()
                .ok()
                .filter(|p| *p >= 0)
                .ok_or_else(|| ApiError::invalid("Last-Event-ID must be an event position (0 or more)"));
        }
    }
    Ok(after)
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.split(',').any(|m| m.trim().starts_with("text/event-stream")))
}

/// GET `…/events?after=&limit=&types=`: the tenant's events in position
/// order, paged by position (`next` is the `after` of the next page). With
/// `Accept: text/event-stream` the same events as Server-Sent Events, live.
pub async fn feed(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    headers: HeaderMap,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let after = resume_after(&headers, &query)?;
    let filter = feed_filter(&query)?;
    if wants_sse(&headers) {
        return Ok(sse(state.commands.log().clone(), tenant, after, filter).into_response());
    }
    let limit = query.int("limit", 100, 1..=MAX_FEED_PAGE)?;
    // Read before the page, so a stream started `after` it misses nothing.
    let head = state.commands.log().head().await?;
    let mut events = state.commands.log().read_tenant(&tenant, after, limit + 1, &filter).await?;
    let has_more = events.len() as i64 > limit;
    events.truncate(limit as usize);
    let next = events.last().map_or(after, |e| e.position);
    Ok(Json(json!({ "events": events, "next": next, "has_more": has_more, "head": head })).into_response())
}

/// The live feed. Pull-based: the next batch is read only when the client
/// has taken the previous one, so a slow client holds at most one batch in
/// memory and never slows anyone else; every event carries its position as
/// its SSE id, so a reconnect (`Last-Event-ID`) resumes exactly after it.
fn sse(
    log: SqlEventLog,
    tenant: Tenant,
    after: i64,
    filter: FeedFilter,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let head = log.watch_head();
    let batches = futures_util::stream::unfold(
        (log, head, tenant, filter, after),
        |(log, mut head, tenant, filter, after)| async move {
            loop {
                match log.read_tenant(&tenant, after, SSE_BATCH, &filter).await {
                    Ok(events) if !events.is_empty() => {
                        let next = events.last().map_or(after, |e| e.position);
                        let items: Vec<Event> = events.iter().map(sse_event).collect();
                        return Some((items, (log, head, tenant, filter, next)));
                    }
                    Ok(_) => {
                        tokio::select! {
                            changed = head.changed() => if changed.is_err() { return None },
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "event feed read failed; closing the stream");
                        return None;
                    }
                }
            }
        },
    );
    let events = batches.flat_map(futures_util::stream::iter).map(Ok);
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn sse_event(e: &RecordedEvent) -> Event {
    Event::default()
        .id(e.position.to_string())
        .event(e.event_type.as_str())
        .data(serde_json::to_string(e).unwrap_or_default())
}

// -- history ----------------------------------------------------------------

/// What changed between two views: one entry per top-level field.
fn diff(before: Option<&Value>, after: Option<&Value>) -> Vec<Value> {
    let empty = Map::new();
    let b = before.and_then(Value::as_object).unwrap_or(&empty);
    let a = after.and_then(Value::as_object).unwrap_or(&empty);
    let fields: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    fields
        .into_iter()
        .filter(|f| !matches!(f.as_str(), "updated_at" | "modified_at" | "__v"))
        .filter(|f| b.get(*f) != a.get(*f))
        .map(|f| json!({ "field": f, "from": b.get(f).cloned().unwrap_or(Value::Null), "to": a.get(f).cloned().unwrap_or(Value::Null) }))
        .collect()
}

fn entry(e: &RecordedEvent, changes: Vec<Value>) -> Value {
    json!({
        "position": e.position,
        "version": e.version,
        "type": e.event_type,
        "occurred_at": format_time(e.occurred_at),
        "recorded_at": format_time(e.recorded_at),
        "actor": e.actor,
        "correlation_id": e.correlation_id,
        "causation_id": e.causation_id,
        "changes": changes,
    })
}

/// A user's events with what each changed. `None`: unknown in this tenant.
async fn user_history(
    state: &AppState,
    tenant: &Tenant,
    user_id: &UserId,
) -> Result<Option<(Vec<Value>, UserState)>, ApiError> {
    let Some(events) = stream_of(state.commands.log(), tenant, &StreamId::user(user_id), None).await? else {
        return Ok(None);
    };
    if events.is_empty() {
        return Ok(None);
    }
    let mut current = UserState::NotCreated;
    let mut before = None;
    let mut entries = Vec::with_capacity(events.len());
    for e in &events {
        let decoded = codec::decode(&e.event_type, e.schema as u32, e.data.as_str())
            .map_err(|err| ApiError::internal(format!("event at position {}: {err}", e.position)))?;
        current = userstream_domain::user::evolve(current, &decoded);
        let after = user_view(&current, &tenant.application_id);
        let mut changes = diff(before.as_ref(), after.as_ref());
        if changes.is_empty() {
            changes = session_changes(&e.event_type, &e.data.value());
        }
        entries.push(entry(e, changes));
        before = after;
    }
    Ok(Some((entries, current)))
}

/// Session events change no profile field; say what they did instead.
fn session_changes(event_type: &str, data: &Value) -> Vec<Value> {
    let field = match event_type {
        "user.session_started" | "user.session_extended" => "session",
        "user.sessions_revoked" => "sessions",
        _ => return vec![],
    };
    let id = data.get("session_id").or_else(|| data.get("session_ids")).cloned().unwrap_or(Value::Null);
    let (from, to) = if event_type == "user.sessions_revoked" { (id, Value::Null) } else { (Value::Null, id) };
    vec![json!({ "field": field, "from": from, "to": to })]
}

fn user_not_found(user_id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "user_not_found", format!("user {user_id} not found"))
}

/// GET `…/customers/{user_id}/history`.
pub async fn customer_history(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    Path((_, _, raw)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = crate::http::parse_user_id(&raw)?;
    let (entries, _) = user_history(&state, &tenant, &id).await?.ok_or_else(|| user_not_found(&raw))?;
    Ok(Json(json!({ "user_id": id.as_str(), "history": entries })))
}

/// A title for an event type, as the Fynd timeline shows it.
fn title(event_type: &str) -> String {
    let known = match event_type {
        "user.created" => "Account created",
        "user.updated" => "Profile updated",
        "user.blocked" => "Account blocked",
        "user.unblocked" => "Account unblocked",
        "user.archived" => "Account deleted",
        "user.erased" => "Personal data erased",
        "user.restored" => "Account restored",
        "user.session_started" => "Logged in",
        "user.session_extended" => "Session extended",
        "user.sessions_revoked" => "Logged out",
        other => return other.replace(['.', '_'], " "),
    };
    known.to_string()
}

/// GET `…/customers/{user_id}/timeline`: the Fynd view of the history.
pub async fn customer_timeline(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    Path((_, _, raw)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = crate::http::parse_user_id(&raw)?;
    let (entries, current) = user_history(&state, &tenant, &id).await?.ok_or_else(|| user_not_found(&raw))?;
    let delete_on = match current {
        UserState::Archived { archived_at, .. } => {
            let (config, _) = state.commands.config(&tenant).await?;
            format_time(archived_at + time::Duration::days(i64::from(config.config.delete_account_day)))
        }
        _ => String::new(),
    };
    let timeline: Vec<Value> = entries
        .iter()
        .rev()
        .map(|e| {
            let kind = e["type"].as_str().unwrap_or_default();
            let changed: Vec<String> = e["changes"]
                .as_array()
                .map(|c| c.iter().filter_map(|c| c["field"].as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            json!({
                "date": e["occurred_at"],
                "title": title(kind),
                "type": kind,
                "visible": true,
                "sub_title": if changed.is_empty() { String::new() } else { format!("changed {}", changed.join(", ")) },
            })
        })
        .collect();
    Ok(Json(json!({ "delete_on": delete_on, "timeline": timeline })))
}

/// GET `…/user_group/{group_id}/history`: the group's events, membership
/// changes with who joined and left and what caused it.
pub async fn group_history(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    Path((_, _, raw)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "group_not_found", format!("group {raw} not found"));
    let id = userstream_domain::UserId::parse("group_id", &raw).map_err(|_| not_found())?;
    let events =
        stream_of(state.commands.log(), &tenant, &StreamId::group(id.as_str()), None).await?.ok_or_else(not_found)?;
    if events.is_empty() {
        return Err(not_found());
    }
    let mut entries = Vec::with_capacity(events.len());
    let mut before: Option<Value> = None;
    for e in &events {
        let decoded = codec::decode_group(&e.event_type, e.schema as u32, e.data.as_str())
            .map_err(|err| ApiError::internal(format!("event at position {}: {err}", e.position)))?;
        let item = match &decoded {
            GroupEvent::Created(d) | GroupEvent::Updated(d) => {
                let after = serde_json::to_value(&d.details).ok();
                let changes = diff(before.as_ref(), after.as_ref());
                before = after;
                entry(e, changes)
            }
            GroupEvent::Deleted(_) => entry(e, vec![]),
            GroupEvent::MembershipChanged(m) => {
                let mut item = entry(e, vec![]);
                item["joined"] = json!(m.joined);
                item["left"] = json!(m.left);
                item["unmatched"] = json!(m.unmatched);
                item["cause"] = serde_json::to_value(&m.cause).unwrap_or(Value::Null);
                item
            }
            GroupEvent::Evaluated(ev) => {
                let mut item = entry(e, vec![]);
                item["rule_version"] = json!(ev.rule_version);
                item
            }
        };
        entries.push(item);
    }
    Ok(Json(json!({ "group_id": id.as_str(), "history": entries })))
}
