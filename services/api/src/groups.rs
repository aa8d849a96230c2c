//! User groups on the Fynd surface: CRUD, tags and categories, manual
//! membership (PatchGroupMembers), members with cursor pagination, refresh.
//!
//! - `uid` is the next number in the application, claimed by a reservation
//!   in the same append (two concurrent creates cannot share one).
//! - Conditions are compiled against the application's definitions before
//!   anything is appended: an unknown definition, an operator the type has no
//!   meaning for, or a bad value is a 400 naming the condition.
//! - Rule groups get their members from the membership engine; PATCH of
//!   members on a rule group is a 400. Manual membership rows name a user by
//!   `user_id`, `email` or `phone_number`; rows that match no user are counted
//!   in the group's `error.count`.

use crate::commands::{CommandError, Meta, Rejection};
use crate::events::{self, AsOf};
use crate::http::{consistency::latest, with_position, ApiError, Caller, JsonBody, QueryPairs, TenantOf};
use crate::members_file::{MemberRow, MAX_MEMBER_ROWS};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeSet;

use userstream_domain::group::{self, GroupCommand, GroupDetails, GroupError, GroupState, GroupStream};
use userstream_domain::rules::{self, Condition, Op};
use userstream_domain::{StreamId, UserId};
use userstream_eventlog::{EventLog, Tenant};
use userstream_projections::read_models::groups::{GroupFilter, GroupRow};
use userstream_projections::read_models::users::MAX_PAGE_SIZE;

type GroupPath = Path<(String, String, String)>;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = ConditionsInput)]
pub struct ConditionBody {
    pub user_attribute_definition_id: String,
    #[serde(rename = "type")]
    #[schema(value_type = crate::openapi::schemas::ConditionOperator)]
    pub op: String,
    /// A string, a list (joined with `,`) or any value (as JSON text).
    #[serde(default)]
    pub value: Option<Value>,
}

#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[schema(as = CreateUserGroup)]
pub struct GroupBody {
    /// Required on create.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    pub name: Option<String>,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: Option<String>,
    /// Free text; `conditional` or `manual` when none is given.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    #[schema(max_length = 64)]
    pub category: Option<String>,
    /// At most 20, each 1 to 64 characters.
    #[serde(default)]
    #[schema(max_items = 20)]
    pub tags: Option<Vec<String>>,
    /// All must hold; a group with conditions is a rule group.
    #[serde(default)]
    pub conditions: Option<Vec<ConditionBody>>,
    /// A CSV of membership rows (`file://` or `http(s)://`), read for a manual group.
    #[serde(default)]
    pub file_url: Option<String>,
}

fn group_error(e: GroupError) -> ApiError {
    Rejection::from(e).into()
}

/// Conditions as the wire sends them, checked against the application's definitions.
async fn conditions(state: &AppState, tenant: &Tenant, body: Vec<ConditionBody>) -> Result<Vec<Condition>, ApiError> {
    let mut out = Vec::with_capacity(body.len());
    for (index, c) in body.into_iter().enumerate() {
        let op = Op::parse(c.op.trim())
            .ok_or_else(|| ApiError::invalid(format!("condition {index}: unknown operator {:?}", c.op)))?;
        let value = match c.value {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s,
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
                .collect::<Vec<_>>()
                .join(","),
            Some(other) => other.to_string(),
        };
        out.push(Condition {
            user_attribute_definition_id: c.user_attribute_definition_id.trim().to_string(),
            op,
            value,
        });
    }
    // A definition created just before is known (read your own writes).
    latest(state, &[&state.attributes]).await?;
    let definitions = state.attribute_queries.definitions(tenant).await?;
    rules::compile(&out, |id| definitions.iter().find(|d| d.definition.id == id).map(|d| &d.definition))
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(out)
}

impl GroupBody {
    async fn apply(self, state: &AppState, tenant: &Tenant, mut d: GroupDetails) -> Result<GroupDetails, ApiError> {
        if let Some(v) = self.name {
            d.name = v;
        }
        if let Some(v) = self.description {
            d.description = v;
        }
        if let Some(v) = self.kind {
            d.kind = v;
        }
        if let Some(v) = self.category {
            d.category = v;
        }
        if let Some(v) = self.tags {
            d.tags = v;
        }
        if let Some(v) = self.file_url {
            d.file_url = v;
        }
        if let Some(v) = self.conditions {
            d.conditions = conditions(state, tenant, v).await?;
        }
        Ok(d)
    }
}

fn group_json(g: &GroupRow) -> Value {
    let mut v = json!({
        "_id": g.group_id,
        "uid": g.uid,
        "name": g.name,
        "description": g.description,
        "type": g.kind,
        "category": g.category,
        "tags": g.tags,
        "conditions": g.conditions,
        "file_url": g.file_url,
        "status": g.status(),
        "is_active": true,
        "total_users": g.total_users,
        "error": { "count": g.error_count, "file_url": "" },
        "application_id": g.application_id,
        "created_at": g.created_at,
        "modified_at": g.updated_at,
        "__v": g.version,
    });
    if g.category.is_empty() {
        if let Some(map) = v.as_object_mut() {
            map.remove("category");
        }
    }
    v
}

async fn load(state: &AppState, tenant: &Tenant, id: &str) -> Result<(GroupState, i64), ApiError> {
    let folded = state.commands.state::<GroupStream>(tenant, &StreamId::group(id)).await;
    Ok(folded.map_err(CommandError::from)?.unwrap_or_default())
}

/// The group as its stream has it, or 404.
async fn live_group(state: &AppState, tenant: &Tenant, id: &str) -> Result<Box<group::Group>, ApiError> {
    match load(state, tenant, id).await?.0 {
        GroupState::Live(g) => Ok(g),
        _ => Err(group_error(GroupError::NotFound)),
    }
}

fn group_id(raw: &str) -> Result<String, ApiError> {
    UserId::parse("group_id", raw)
        .map(|id| id.to_string())
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "group_not_found", format!("group {raw} not found")))
}

/// Runs a group command; returns the position.
async fn run(state: &AppState, meta: &Meta, id: &str, command: GroupCommand) -> Result<i64, ApiError> {
    let ctx = state.commands.context(&meta.tenant).await?;
    Ok(state.commands.handle::<GroupStream>(meta, StreamId::group(id), command, None, &ctx).await?.position)
}

/// Waits until the groups read model has every event committed so far.
async fn consistent(state: &AppState) -> Result<(), ApiError> {
    latest(state, &[&state.groups]).await
}

/// A keyset page of a sorted member set, in the order the members read model answers.
fn page_of(members: &std::collections::BTreeSet<String>, cursor: Option<&str>, backward: bool, n: i64) -> Vec<String> {
    use std::ops::Bound::{Excluded, Unbounded};
    let n = n as usize;
    match (cursor, backward) {
        (Some(c), false) => members.range::<str, _>((Excluded(c), Unbounded)).take(n).cloned().collect(),
        (None, false) => members.iter().take(n).cloned().collect(),
        (Some(c), true) => {
            let mut page: Vec<String> =
                members.range::<str, _>((Unbounded, Excluded(c))).rev().take(n).cloned().collect();
            page.reverse();
            page
        }
        (None, true) => {
            let mut page: Vec<String> = members.iter().rev().take(n).cloned().collect();
            page.reverse();
            page
        }
    }
}

async fn read_group(state: &AppState, tenant: &Tenant, id: &str) -> Result<GroupRow, ApiError> {
    consistent(state).await?;
    state
        .group_queries
        .get(tenant, id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "group_not_found", format!("group {id} not found")))
}

pub async fn create_group(
    State(state): State<AppState>,
    Caller(meta): Caller,
    JsonBody(body): JsonBody<GroupBody>,
) -> Result<Response, ApiError> {
    if body.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
        return Err(ApiError::invalid("name is required"));
    }
    let file_url = body.file_url.clone().filter(|u| !u.trim().is_empty());
    let details = body.apply(&state, &meta.tenant, GroupDetails::default()).await?;
    // Read the CSV before anything is appended: a bad file changes nothing.
    let rows = match &file_url {
        Some(url) if !details.is_rule() => Some(crate::members_file::fetch(&state.files, &state.fetcher, url).await?),
        _ => None,
    };
    if let Some(rows) = &rows {
        member_terms(rows)?;
    }
    let ctx = state.commands.context(&meta.tenant).await?;
    let id = ctx.id(0).to_string();
    // The next uid is claimed by the group's unique key; a concurrent create
    // that took it first makes this one try the uid after.
    let mut claimed: Option<(i64, String)> = None;
    for _ in 0..10 {
        consistent(&state).await?;
        let uid = state.group_queries.max_uid(&meta.tenant).await? + 1;
        let command = GroupCommand::Create { id: id.clone(), uid, details: details.clone() };
        match state.commands.handle_new::<GroupStream>(&meta, StreamId::group(&id), command, &ctx).await {
            Err(CommandError::Rejected(Rejection::Taken { .. })) => continue,
            other => {
                // A retried request answers with the group its first try created.
                let handled = other?;
                claimed = Some((handled.position, handled.first_id().unwrap_or(&id).to_string()));
                break;
            }
        }
    }
    let (mut position, id) =
        claimed.ok_or_else(|| Rejection::Contended { stream: StreamId::group(&id).to_string() })?;
    if let Some(rows) = rows {
        position = position.max(patch_members(&state, &meta, &id, rows).await?);
    }
    let row = read_group(&state, &meta.tenant, &id).await?;
    Ok(with_position((StatusCode::CREATED, Json(group_json(&row))).into_response(), position))
}

pub async fn list_groups(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    let page_no = query.int("page_no", 1, 1..=1_000_000)?;
    let page_size = query.int("page_size", 10, 1..=MAX_PAGE_SIZE)?;
    let text = |k: &str| query.get(k).map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);
    let mut tags = Vec::new();
    for raw in query.all("tags") {
        tags.extend(raw.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()));
    }
    let filter = GroupFilter {
        name: text("name"),
        kind: text("type"),
        status: text("status"),
        uid: query.opt_int("group_uid")?,
        category: text("category"),
        tags,
    };
    consistent(&state).await?;
    let (rows, total) = state.group_queries.list(&tenant, &filter, page_no, page_size).await?;
    Ok(Json(json!({
        "items": rows.iter().map(group_json).collect::<Vec<_>>(),
        "page": {"type": "number", "current": page_no, "size": page_size, "item_total": total, "has_next": page_no * page_size < total},
    })))
}

pub async fn get_group(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    Path((_, _, raw)): GroupPath,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    let id = group_id(&raw)?;
    if let Some(as_of) = AsOf::from_query(&state, &query).await? {
        return Ok(Json(group_json(&group_row_as_of(&state, &tenant, &id, as_of).await?)));
    }
    Ok(Json(group_json(&read_group(&state, &tenant, &id).await?)))
}

/// The group rebuilt from its events up to `as_of`, or 404 when it did not exist then.
async fn group_row_as_of(state: &AppState, tenant: &Tenant, id: &str, as_of: AsOf) -> Result<GroupRow, ApiError> {
    events::group_as_of(state, tenant, id, as_of).await?.and_then(|g| g.row(tenant)).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "group_not_found", format!("group {id} did not exist then"))
    })
}

pub async fn update_group(
    State(state): State<AppState>,
    Caller(meta): Caller,
    Path((_, _, raw)): GroupPath,
    JsonBody(body): JsonBody<GroupBody>,
) -> Result<Response, ApiError> {
    let id = group_id(&raw)?;
    let current = live_group(&state, &meta.tenant, &id).await?;
    let details = body.apply(&state, &meta.tenant, current.details.clone()).await?;
    let position = run(&state, &meta, &id, GroupCommand::Update(details)).await?;
    let row = read_group(&state, &meta.tenant, &id).await?;
    Ok(with_position(Json(group_json(&row)).into_response(), position))
}

pub async fn delete_group(
    State(state): State<AppState>,
    Caller(meta): Caller,
    Path((_, _, raw)): GroupPath,
) -> Result<Response, ApiError> {
    let id = group_id(&raw)?;
    let position = run(&state, &meta, &id, GroupCommand::Delete).await?;
    Ok(with_position(
        Json(json!({ "success": true, "message": format!("group {id} deleted") })).into_response(),
        position,
    ))
}

pub async fn refresh_group(
    State(state): State<AppState>,
    Caller(meta): Caller,
    Path((_, _, raw)): GroupPath,
) -> Result<Response, ApiError> {
    let id = group_id(&raw)?;
    let current = live_group(&state, &meta.tenant, &id).await?;
    // A rule group is evaluated again from scratch: a new rule generation.
    let position = if current.details.is_rule() {
        run(&state, &meta, &id, GroupCommand::Refresh).await?
    } else {
        state.commands.log().head().await?
    };
    let body = json!({ "message": format!("refresh of group {} started", current.uid), "uid": current.uid });
    Ok(with_position((StatusCode::ACCEPTED, Json(body)).into_response(), position))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = PartialUserGroupUpdateSchema)]
pub struct PatchBody {
    /// Where the membership rows are: `user_data` (`json`, the default) or `file_url`.
    #[serde(rename = "type", default)]
    #[schema(value_type = Option<crate::openapi::schemas::PatchSource>)]
    pub kind: Option<String>,
    #[serde(default)]
    pub user_data: Option<Vec<MemberRow>>,
    #[serde(default)]
    pub file_url: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// Resolves rows to users and applies them; returns the position.
/// Each membership row's action (`add` or `remove`) and the user it names
/// (its `user_id`, `email` or `phone_number`), checked before anything is
/// read or written: a bad row refuses the whole request.
fn member_terms(rows: &[MemberRow]) -> Result<Vec<(bool, &str)>, ApiError> {
    if rows.len() > MAX_MEMBER_ROWS {
        return Err(ApiError::invalid(format!("at most {MAX_MEMBER_ROWS} membership rows per request")));
    }
    rows.iter()
        .enumerate()
        .map(|(index, row)| {
            let adding = match row.action.trim().to_ascii_lowercase().as_str() {
                "add" => true,
                "remove" => false,
                other => {
                    return Err(ApiError::invalid(format!("row {index}: action must be add or remove, got {other:?}")))
                }
            };
            let term = row
                .user_id
                .as_deref()
                .or(row.email.as_deref())
                .or(row.phone_number.as_deref())
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    ApiError::invalid(format!("row {index}: one of user_id, email or phone_number is required"))
                })?;
            Ok((adding, term))
        })
        .collect()
}

async fn patch_members(state: &AppState, meta: &Meta, id: &str, rows: Vec<MemberRow>) -> Result<i64, ApiError> {
    let terms = member_terms(&rows)?;
    let mut add = BTreeSet::new();
    let mut remove = BTreeSet::new();
    let mut unmatched = 0;
    let head = state.commands.log().head().await?;
    if !state.users.wait_for(head, state.config.min_position_wait).await {
        return Err(ApiError::behind(head));
    }
    for (adding, term) in terms {
        match state.queries.search(&meta.tenant, &[term.to_string()]).await?.first() {
            Some(user) if adding => {
                add.insert(user.user_id.clone());
            }
            Some(user) => {
                remove.insert(user.user_id.clone());
            }
            None => unmatched += 1,
        }
    }
    let command =
        GroupCommand::PatchMembers { add: add.into_iter().collect(), remove: remove.into_iter().collect(), unmatched };
    run(state, meta, id, command).await
}

pub async fn patch_group(
    State(state): State<AppState>,
    Caller(meta): Caller,
    Path((_, _, raw)): GroupPath,
    JsonBody(body): JsonBody<PatchBody>,
) -> Result<Response, ApiError> {
    let id = group_id(&raw)?;
    let current = live_group(&state, &meta.tenant, &id).await?;
    let rows = match body.kind.as_deref().unwrap_or("json") {
        "json" => body.user_data.unwrap_or_default(),
        "file_url" | "file" => {
            let url = body
                .file_url
                .clone()
                .filter(|u| !u.trim().is_empty())
                .ok_or_else(|| ApiError::invalid("file_url is required for type file_url"))?;
            crate::members_file::fetch(&state.files, &state.fetcher, &url).await?
        }
        other => return Err(ApiError::invalid(format!("type must be json or file_url, got {other:?}"))),
    };
    if current.details.is_rule() && !rows.is_empty() {
        return Err(group_error(GroupError::RuleGroupMembers));
    }
    let mut position = 0;
    if body.name.is_some() || body.description.is_some() {
        let mut details = current.details.clone();
        if let Some(n) = body.name {
            details.name = n;
        }
        if let Some(d) = body.description {
            details.description = d;
        }
        position = run(&state, &meta, &id, GroupCommand::Update(details)).await?;
    }
    if !rows.is_empty() {
        position = position.max(patch_members(&state, &meta, &id, rows).await?);
    }
    let row = read_group(&state, &meta.tenant, &id).await?;
    Ok(with_position(Json(group_json(&row)).into_response(), position))
}

pub async fn group_tags(State(state): State<AppState>, TenantOf(tenant): TenantOf) -> Result<Json<Value>, ApiError> {
    consistent(&state).await?;
    let tags: BTreeSet<String> = state.group_queries.all(&tenant).await?.into_iter().flat_map(|g| g.tags).collect();
    Ok(Json(json!({ "items": tags })))
}

pub async fn group_categories(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    consistent(&state).await?;
    let wanted = query.get("category").map(str::trim).filter(|c| !c.is_empty());
    let mut categories: std::collections::BTreeMap<String, i64> = Default::default();
    for g in state.group_queries.all(&tenant).await? {
        if !g.category.is_empty() && wanted.is_none_or(|w| w == g.category) {
            *categories.entry(g.category).or_default() += 1;
        }
    }
    let items: Vec<Value> =
        categories.into_iter().map(|(key, count)| json!({ "key": key, "name": key, "count": count })).collect();
    Ok(Json(json!({ "items": items })))
}

pub async fn group_members(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    Path((_, _, raw)): GroupPath,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    let id = group_id(&raw)?;
    let page_size = query.int("page_size", 10, 1..=MAX_PAGE_SIZE)?;
    let backward = match query.get("direction").map(str::trim) {
        None | Some("") | Some("next") => false,
        Some("prev") | Some("previous") => true,
        Some(other) => return Err(ApiError::invalid(format!("direction must be next or prev, got {other:?}"))),
    };
    let cursor = match query.get("cursor").map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) => Some(
            UserId::parse("cursor", c)
                .map_err(|_| ApiError::invalid("cursor must be a user id from a previous page"))?
                .to_string(),
        ),
        None => None,
    };
    let q = query.get("q").map(str::trim).filter(|q| !q.is_empty());
    let ids = match AsOf::from_query(&state, &query).await? {
        Some(as_of) => {
            if q.is_some() {
                return Err(ApiError::invalid("q cannot be combined with as_of"));
            }
            let group = events::group_as_of(&state, &tenant, &id, as_of).await?;
            let members = group.filter(|g| g.row(&tenant).is_some()).map(|g| g.members).ok_or_else(|| {
                ApiError::new(StatusCode::NOT_FOUND, "group_not_found", format!("group {id} did not exist then"))
            })?;
            page_of(&members, cursor.as_deref(), backward, page_size + 1)
        }
        None => {
            read_group(&state, &tenant, &id).await?;
            state.group_queries.members(&tenant, &id, cursor.as_deref(), backward, page_size + 1, q).await?
        }
    };
    let more = ids.len() as i64 > page_size;
    let ids: Vec<String> = if backward {
        ids.into_iter().skip(usize::from(more)).collect()
    } else {
        ids.into_iter().take(page_size as usize).collect()
    };
    let users = state.queries.by_ids(&tenant, &ids).await?;
    let items: Vec<Value> = ids
        .iter()
        .filter_map(|uid| users.iter().find(|u| &u.user_id == uid))
        .map(|u| json!({ "user_id": u.user_id, "emails": u.emails, "phone_numbers": u.phone_numbers }))
        .collect();
    let (has_next, has_prev) = if backward { (cursor.is_some(), more) } else { (more, cursor.is_some()) };
    let mut page = json!({ "type": "cursor", "size": page_size, "has_next": has_next, "has_prev": has_prev });
    if let Some(map) = page.as_object_mut() {
        if has_next {
            if let Some(last) = ids.last() {
                map.insert("next_cursor".into(), json!(last));
            }
        }
        if has_prev {
            if let Some(first) = ids.first() {
                map.insert("prev_cursor".into(), json!(first));
            }
        }
    }
    Ok(Json(json!({ "items": items, "page": page })))
}

/// GET `…/customers/{user_id}/groups`: the groups the customer is in, each
/// with why: the `group.membership_changed` event that made them join (its
/// position and time, and its cause: the attribute, user or definition
/// event a rule group followed, a full evaluation of the rule, or a manual
/// patch). 404 for an unknown customer or another tenant's.
pub async fn customer_groups(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    Path((_, _, raw)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = crate::http::parse_user_id(&raw)?;
    latest(&state, &[&state.users, &state.groups]).await?;
    if state.queries.get(&tenant, id.as_str()).await?.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "user_not_found", format!("user {raw} not found")));
    }
    let mut groups = Vec::new();
    for (group, position) in state.group_queries.groups_of(&tenant, id.as_str()).await? {
        let joined = state.commands.log().read_all(position - 1, 1).await?;
        let why = match joined.first().filter(|e| e.position == position) {
            Some(e) => {
                let data = e.data.value();
                json!({
                    "position": e.position,
                    "event_id": e.event_id,
                    "event_type": e.event_type,
                    "at": data.get("at").cloned().unwrap_or(Value::Null),
                    "cause": data.get("cause").cloned().unwrap_or(Value::Null),
                })
            }
            None => json!({ "position": position }),
        };
        let mut entry = group_json(&group);
        if let Some(map) = entry.as_object_mut() {
            map.insert("joined".to_string(), why);
        }
        groups.push(entry);
    }
    Ok(Json(json!({ "user_id": id.as_str(), "groups": groups })))
}
