//! Attribute definitions and user attribute values on the Fynd surface.
//!
//! - Definitions: `slug` is unique per application (a reservation in the
//!   same append); `is_locked` definitions refuse edits and deletion.
//! - A definition change that makes stored values invalid is refused with 409
//!   naming how many; `?invalid_values=delete` applies it and deletes those
//!   values (each user's delete is its own append, after the definition's).
//!   `encrypted` cannot change while values exist (409).
//! - Deleting a definition a group's conditions use is refused with 409
//!   (no cascade into other people's segments); otherwise its values go with it.
//! - Values are validated against the definition (400 naming the rule) and,
//!   for encrypted definitions, sealed before they reach the log.

use crate::commands::{fold_events, CommandError, Meta, Rejection};
use crate::events::AsOf;
use crate::http::consistency::latest;
use crate::http::ApiError;
use crate::http::{meta, parse_user_id, with_position as position_header, TenantPath};
use crate::http::{tenant, JsonBody, QueryPairs};
use crate::{auth::Principal, AppState};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use userstream_domain::attribute::{
    AttrError, AttrType, Definition, DefinitionCommand, DefinitionState, DefinitionStream, NewValue, Validation,
    ValuesCommand, ValuesState, ValuesStream,
};
use userstream_domain::rules;
use userstream_domain::{Context, Stream, StreamId, UserId};
use userstream_eventlog::Tenant;
use userstream_projections::read_models::attributes::{DefinitionFilter, DefinitionRow, ValueRow};
use userstream_projections::read_models::users::MAX_PAGE_SIZE;

type DefPath = Path<(String, String, String)>;
type DefUserPath = Path<(String, String, String, String)>;

/// The wire body of create and update. Both spellings of multi-value are accepted.
#[derive(Debug, Deserialize, Default)]
pub struct DefinitionBody {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<AttrType>,
    #[serde(default, alias = "multi_value")]
    pub is_multi_value: Option<bool>,
    #[serde(default)]
    pub validations: Option<Vec<Validation>>,
    #[serde(default)]
    pub default_value: Option<Value>,
    #[serde(default)]
    pub encrypted: Option<bool>,
    #[serde(default)]
    pub customer_editable: Option<bool>,
    #[serde(default)]
    pub pinned: Option<bool>,
    #[serde(default)]
    pub pin_order: Option<i64>,
    #[serde(default)]
    pub is_locked: Option<bool>,
    #[serde(default)]
    pub icon: Option<String>,
    #[serde(default)]
    pub ordering_channels: Option<Vec<String>>,
    #[serde(default)]
    pub masking: Option<Value>,
    #[serde(default)]
    pub registration: Option<Value>,
}

/// A default value as the SDK sends it (a string), read in the definition's type.
fn default_value(kind: AttrType, raw: Option<Value>) -> Option<Value> {
    match raw {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) if matches!(kind, AttrType::Number | AttrType::Boolean | AttrType::Json) => {
            Some(serde_json::from_str(&s).unwrap_or(Value::String(s)))
        }
        Some(v) => Some(v),
    }
}

impl DefinitionBody {
    /// Applies the body over `base` (a new definition, or the current one).
    fn apply(self, mut d: Definition) -> Definition {
        if let Some(v) = self.name {
            d.name = v;
        }
        if let Some(v) = self.slug {
            d.slug = v;
        }
        if let Some(v) = self.description {
            d.description = v;
        }
        if let Some(v) = self.kind {
            d.kind = v;
        }
        if let Some(v) = self.is_multi_value {
            d.multi_value = v;
        }
        if let Some(v) = self.validations {
            d.validations = v;
        }
        if self.default_value.is_some() {
            d.default_value = default_value(d.kind, self.default_value);
        }
        if let Some(v) = self.encrypted {
            d.encrypted = v;
        }
        if let Some(v) = self.customer_editable {
            d.customer_editable = v;
        }
        if let Some(v) = self.pinned {
            d.pinned = v;
        }
        if let Some(v) = self.pin_order {
            d.pin_order = v;
        }
        if let Some(v) = self.is_locked {
            d.is_locked = v;
        }
        if let Some(v) = self.icon {
            d.icon = v;
        }
        if let Some(v) = self.ordering_channels {
            d.ordering_channels = v;
        }
        if let Some(v) = self.masking {
            d.masking = v;
        }
        if let Some(v) = self.registration {
            d.registration = v;
        }
        d
    }
}

fn attr_error(e: AttrError) -> ApiError {
    Rejection::from(e).into()
}

/// The wire shape of a definition (`UserAttributeDefinition`), no nulls.
fn definition_json(tenant: &Tenant, d: &Definition, created_at: &str, updated_at: &str, version: i64) -> Value {
    let mut v = json!({
        "_id": d.id,
        "name": d.name,
        "slug": d.slug,
        "description": d.description,
        "application_id": tenant.application_id,
        "type": d.kind.as_str(),
        "icon": d.icon,
        "ordering_channels": d.ordering_channels,
        "is_multi_value": d.multi_value,
        "customer_editable": d.customer_editable,
        "encrypted": d.encrypted,
        "pinned": d.pinned,
        "pin_order": d.pin_order,
        "validations": d.validations,
        "is_locked": d.is_locked,
        "created_at": created_at,
        "modified_at": updated_at,
        "__v": version,
    });
    if let Some(map) = v.as_object_mut() {
        for (key, value) in [("masking", &d.masking), ("registration", &d.registration)] {
            if value.is_object() {
                map.insert(key.into(), value.clone());
            }
        }
        if let Some(default) = &d.default_value {
            // The SDK's create model types default_value as a string.
            let text = match default {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            map.insert("default_value".into(), Value::String(text));
        }
    }
    v
}

fn row_json(tenant: &Tenant, r: &DefinitionRow) -> Value {
    definition_json(tenant, &r.definition, &r.created_at, &r.updated_at, r.version)
}

/// Loads a definition stream of the tenant.
async fn load_definition(state: &AppState, tenant: &Tenant, id: &str) -> Result<(DefinitionState, i64), ApiError> {
    let folded = state.commands.state::<DefinitionStream>(tenant, &StreamId::definition(id)).await;
    Ok(folded.map_err(CommandError::from)?.unwrap_or_default())
}

async fn consistent(state: &AppState) -> Result<(), ApiError> {
    latest(state, &[&state.attributes, &state.groups]).await
}

pub async fn create_definition(
    State(state): State<AppState>,
    path: TenantPath,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<DefinitionBody>,
) -> Result<Response, ApiError> {
    let (company_id, application_id) = path.0;
    let tenant = tenant(company_id, application_id)?;
    let kind = body.kind.ok_or_else(|| {
        ApiError::invalid("type is required (string, number, boolean, date, datetime, email, phone, enum, json)")
    })?;
    let meta = meta(tenant, &principal, &headers)?;
    let ctx = state.commands.context(&meta.tenant).await?;
    let id = ctx.id(0).to_string();
    let definition = body.apply(Definition::new(id.clone(), kind));
    let command = DefinitionCommand::Create(definition.clone());
    let handled =
        state.commands.handle::<DefinitionStream>(&meta, StreamId::definition(&id), command, None, &ctx).await?;
    let position = handled.position;
    let at = userstream_eventlog::format_time(ctx.now);
    let body = definition_json(&meta.tenant, &definition, &at, &at, 1);
    Ok(position_header((StatusCode::CREATED, Json(body)).into_response(), position))
}

fn bool_param(query: &QueryPairs, key: &str) -> Result<Option<bool>, ApiError> {
    match query.get(key).map(str::trim) {
        None | Some("") => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(ApiError::invalid(format!("{key} must be true or false"))),
    }
}

fn page_json(page_no: i64, page_size: i64, total: i64) -> Value {
    json!({
        "type": "number",
        "current": page_no,
        "size": page_size,
        "item_total": total,
        "has_next": page_no * page_size < total,
        "has_previous": page_no > 1,
    })
}

pub async fn list_definitions(
    State(state): State<AppState>,
    path: TenantPath,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    let (company_id, application_id) = path.0;
    let tenant = tenant(company_id, application_id)?;
    let page_no = query.int("page_no", 1, 1..=1_000_000)?;
    let page_size = query.int("page_size", 10, 1..=MAX_PAGE_SIZE)?;
    let text = |k: &str| query.get(k).map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);
    let mut excluding_ids: Vec<String> = Vec::new();
    for raw in query.all("excluding_ids") {
        excluding_ids.extend(raw.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()));
    }
    let filter = DefinitionFilter {
        excluding_ids,
        slug: text("slug"),
        kind: text("type"),
        name: text("name"),
        customer_editable: bool_param(&query, "customer_editable")?,
        encrypted: bool_param(&query, "encrypted")?,
        pinned: bool_param(&query, "pinned")?,
        pin_order: match text("pin_order") {
            Some(v) => Some(v.parse().map_err(|_| ApiError::invalid("pin_order must be an integer"))?),
            None => None,
        },
        is_locked: bool_param(&query, "is_locked")?,
    };
    consistent(&state).await?;
    let (rows, total) = state.attribute_queries.list_definitions(&tenant, &filter, page_no, page_size).await?;
    let items: Vec<Value> = rows.iter().map(|r| row_json(&tenant, r)).collect();
    Ok(Json(json!({ "items": items, "page": page_json(page_no, page_size, total) })))
}

fn definition_id(raw: &str) -> Result<String, ApiError> {
    UserId::parse("definition_id", raw)
        .map(|id| id.to_string())
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("attribute definition {raw} not found")))
}

async fn live_definition(state: &AppState, tenant: &Tenant, raw: &str) -> Result<(Definition, i64), ApiError> {
    let id = definition_id(raw)?;
    match load_definition(state, tenant, &id).await? {
        (DefinitionState::Live { definition, .. }, version) => Ok((*definition, version)),
        _ => Err(attr_error(AttrError::NotFound)),
    }
}

pub async fn get_definition(
    State(state): State<AppState>,
    Path((c, a, raw)): DefPath,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant(c, a)?;
    let id = definition_id(&raw)?;
    consistent(&state).await?;
    let row = state.attribute_queries.definition(&tenant, &id).await?.ok_or_else(|| attr_error(AttrError::NotFound))?;
    Ok(Json(row_json(&tenant, &row)))
}

/// The values of `definition_id` the new definition would refuse, opened.
async fn invalid_values(state: &AppState, tenant: &Tenant, new: &Definition) -> Result<Vec<ValueRow>, ApiError> {
    consistent(state).await?;
    let mut bad = Vec::new();
    for row in state.attribute_queries.values_of_definition(tenant, &new.id).await? {
        let plain = state.sealer.open(&row.value).map_err(ApiError::internal)?;
        if new.validate(&plain).is_err() {
            bad.push(row);
        }
    }
    Ok(bad)
}

pub async fn update_definition(
    State(state): State<AppState>,
    Path((c, a, raw)): DefPath,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    query: QueryPairs,
    JsonBody(body): JsonBody<DefinitionBody>,
) -> Result<Response, ApiError> {
    let tenant = tenant(c, a)?;
    let (current, version) = live_definition(&state, &tenant, &raw).await?;
    let ctx = state.commands.context(&tenant).await?;
    let new = body.apply(current.clone());
    // The rules first: a refused change reads no values.
    let live =
        DefinitionState::Live { definition: Box::new(current.clone()), created_at: ctx.now, updated_at: ctx.now };
    DefinitionStream::decide(&live, DefinitionCommand::Update(new.clone()), &ctx).map_err(attr_error)?;
    let delete_invalid = match query.get("invalid_values") {
        None | Some("") | Some("refuse") => false,
        Some("delete") => true,
        Some(other) => return Err(ApiError::invalid(format!("invalid_values must be refuse or delete, got {other}"))),
    };
    let stored = state.attribute_queries.values_of_definition(&tenant, &current.id).await?;
    if new.encrypted != current.encrypted && !stored.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "values_exist",
            format!("encrypted cannot change while {} values exist", stored.len()),
        ));
    }
    let bad = invalid_values(&state, &tenant, &new).await?;
    if !bad.is_empty() && !delete_invalid {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_values",
            format!(
                "{} stored values would break the changed definition; send ?invalid_values=delete to apply it and delete them",
                bad.len()
            ),
        ));
    }
    let meta = meta(tenant, &principal, &headers)?;
    // Pinned to the version the values were checked against.
    let stream = StreamId::definition(&current.id);
    let command = DefinitionCommand::Update(new.clone());
    let mut position =
        state.commands.handle::<DefinitionStream>(&meta, stream, command, Some(version), &ctx).await?.position;
    for row in bad {
        let command = ValuesCommand::Delete { definition_ids: vec![new.id.clone()], ignore_missing: true };
        position = position.max(run_values(&state, &meta, &row.user_id, command, &ctx).await?);
    }
    consistent(&state).await?;
    let row = state
        .attribute_queries
        .definition(&meta.tenant, &new.id)
        .await?
        .ok_or_else(|| attr_error(AttrError::NotFound))?;
    Ok(position_header(Json(row_json(&meta.tenant, &row)).into_response(), position))
}

pub async fn delete_definition(
    State(state): State<AppState>,
    Path((c, a, raw)): DefPath,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tenant = tenant(c, a)?;
    let (current, version) = live_definition(&state, &tenant, &raw).await?;
    consistent(&state).await?;
    let users: Vec<String> = state
        .group_queries
        .all(&tenant)
        .await?
        .into_iter()
        .filter(|g| g.conditions.to_string().contains(&current.id))
        .map(|g| g.uid.to_string())
        .collect();
    if !users.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "definition_in_use",
            format!(
                "attribute definition {} is used by the conditions of groups {}; change them first",
                current.id,
                users.join(", ")
            ),
        ));
    }
    let meta = meta(tenant, &principal, &headers)?;
    let ctx = state.commands.context(&meta.tenant).await?;
    // Pinned to the version the groups were checked against.
    let stream = StreamId::definition(&current.id);
    let handled = state
        .commands
        .handle::<DefinitionStream>(&meta, stream, DefinitionCommand::Delete, Some(version), &ctx)
        .await?;
    let position = handled.position;
    Ok(position_header(
        Json(json!({ "success": format!("attribute definition {} deleted", current.id) })).into_response(),
        position,
    ))
}

// ---------------------------------------------------------------------------
// Values.

/// Runs a values command on a user of the tenant; returns the position.
async fn run_values(
    state: &AppState,
    meta: &Meta,
    user_id: &str,
    command: ValuesCommand,
    ctx: &Context,
) -> Result<i64, ApiError> {
    let stream = StreamId::values(user_id);
    Ok(state.commands.handle::<ValuesStream>(meta, stream, command, None, ctx).await?.position)
}

async fn live_user(state: &AppState, tenant: &Tenant, raw: &str) -> Result<UserId, ApiError> {
    let id = parse_user_id(raw)?;
    if state.commands.user_is_live(tenant, &id).await? {
        Ok(id)
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "user_not_found", format!("user {raw} not found")))
    }
}

#[derive(Debug, Deserialize)]
pub struct UpsertBody {
    pub attribute: Value,
    #[serde(default, alias = "customer_overriden")]
    pub customer_overridden: Option<bool>,
}

/// The wire shape of a value (`UserAttribute`), opened.
fn value_json(state: &AppState, tenant: &Tenant, d: Option<&Definition>, row: &ValueRow) -> Result<Value, ApiError> {
    let value = state.sealer.open(&row.value).map_err(ApiError::internal)?;
    Ok(json!({
        "_id": row.attribute_id,
        "name": d.map(|d| d.name.clone()).unwrap_or_default(),
        "user_id": row.user_id,
        "application_id": tenant.application_id,
        "user_attribute_definition_id": row.definition_id,
        "type": d.map(|d| d.kind.as_str()).unwrap_or(""),
        "customer_overridden": row.customer_overridden,
        "attribute": { "value": value },
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }))
}

pub async fn upsert_value(
    State(state): State<AppState>,
    Path((c, a, raw_def, raw_user)): DefUserPath,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<UpsertBody>,
) -> Result<Response, ApiError> {
    let tenant = tenant(c, a)?;
    let (definition, _) = live_definition(&state, &tenant, &raw_def).await?;
    let user = live_user(&state, &tenant, &raw_user).await?;
    let raw = body.attribute.get("value").cloned().ok_or_else(|| ApiError::invalid("attribute.value is required"))?;
    let value = definition.validate(&raw).map_err(attr_error)?;
    let value = if definition.encrypted { state.sealer.seal(&value) } else { value };
    let meta = meta(tenant, &principal, &headers)?;
    let ctx = state.commands.context(&meta.tenant).await?;
    let command = ValuesCommand::Upsert(vec![NewValue {
        definition_id: definition.id.clone(),
        new_attribute_id: ctx.id(0).to_string(),
        value,
        customer_overridden: body.customer_overridden.unwrap_or(false),
    }]);
    let position = run_values(&state, &meta, user.as_str(), command, &ctx).await?;
    consistent(&state).await?;
    let row = state
        .attribute_queries
        .value(&meta.tenant, user.as_str(), &definition.id)
        .await?
        .ok_or_else(|| ApiError::internal("the value just written is not in the read model"))?;
    Ok(position_header(Json(value_json(&state, &meta.tenant, Some(&definition), &row)?).into_response(), position))
}

pub async fn get_value(
    State(state): State<AppState>,
    Path((c, a, raw_def, raw_user)): DefUserPath,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant(c, a)?;
    let def_id = definition_id(&raw_def)?;
    let user = parse_user_id(&raw_user)?;
    let as_of = AsOf::from_query(&state, &query).await?;
    consistent(&state).await?;
    let definition = state.attribute_queries.definition(&tenant, &def_id).await?.map(|r| r.definition);
    let row = match as_of {
        Some(as_of) => value_as_of(&state, &tenant, user.as_str(), &def_id, as_of).await?,
        None => state.attribute_queries.value(&tenant, user.as_str(), &def_id).await?,
    }
    .ok_or_else(|| attr_error(AttrError::NoValue(def_id.clone())))?;
    Ok(Json(value_json(&state, &tenant, definition.as_ref(), &row)?))
}

/// A user's value of one definition as its values stream had it at `as_of`.
async fn value_as_of(
    state: &AppState,
    tenant: &Tenant,
    user_id: &str,
    def_id: &str,
    as_of: AsOf,
) -> Result<Option<ValueRow>, ApiError> {
    let Some(events) =
        crate::events::stream_of(state.commands.log(), tenant, &StreamId::values(user_id), Some(as_of)).await?
    else {
        return Ok(None);
    };
    let values: ValuesState = fold_events::<ValuesStream>(&events).map_err(CommandError::from)?;
    Ok(values.values.get(def_id).map(|v| ValueRow {
        user_id: user_id.to_string(),
        definition_id: def_id.to_string(),
        attribute_id: v.attribute_id.clone(),
        value: v.value.clone(),
        customer_overridden: v.customer_overridden,
        created_at: userstream_eventlog::format_time(v.created_at),
        updated_at: userstream_eventlog::format_time(v.updated_at),
    }))
}

pub async fn delete_value(
    State(state): State<AppState>,
    Path((c, a, raw_def, raw_user)): DefUserPath,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tenant = tenant(c, a)?;
    let def_id = definition_id(&raw_def)?;
    let user = live_user(&state, &tenant, &raw_user).await?;
    let meta = meta(tenant, &principal, &headers)?;
    let ctx = state.commands.context(&meta.tenant).await?;
    let command = ValuesCommand::Delete { definition_ids: vec![def_id.clone()], ignore_missing: false };
    let position = run_values(&state, &meta, user.as_str(), command, &ctx).await?;
    Ok(position_header(
        Json(json!({ "success": format!("attribute {def_id} of user {user} deleted") })).into_response(),
        position,
    ))
}

pub async fn user_values(
    State(state): State<AppState>,
    Path((c, a, raw_user)): DefPath,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant(c, a)?;
    let user = parse_user_id(&raw_user)?;
    let page_no = query.int("page_no", 1, 1..=1_000_000)?;
    let page_size = query.int("page_size", 10, 1..=MAX_PAGE_SIZE)?;
    consistent(&state).await?;
    let definitions = state.attribute_queries.definitions(&tenant).await?;
    let (rows, total) = state.attribute_queries.values_of(&tenant, user.as_str(), page_no, page_size).await?;
    let items = rows
        .iter()
        .map(|r| {
            let d = definitions.iter().find(|d| d.definition.id == r.definition_id).map(|d| &d.definition);
            value_json(&state, &tenant, d, r)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "items": items, "page": page_json(page_no, page_size, total) })))
}

pub async fn value_by_id(State(state): State<AppState>, Path((c, a, raw)): DefPath) -> Result<Json<Value>, ApiError> {
    let tenant = tenant(c, a)?;
    consistent(&state).await?;
    let row = state
        .attribute_queries
        .value_by_id(&tenant, raw.trim())
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("attribute {raw} not found")))?;
    let definition = state.attribute_queries.definition(&tenant, &row.definition_id).await?.map(|r| r.definition);
    Ok(Json(value_json(&state, &tenant, definition.as_ref(), &row)?))
}

// ---------------------------------------------------------------------------
// Filtering users by attribute conditions (an ad-hoc rule).

#[derive(Debug, Deserialize)]
pub struct FilterCondition {
    pub definition_id: String,
    #[serde(rename = "type")]
    pub op: String,
    #[serde(default)]
    pub value: Value,
}

#[derive(Debug, Deserialize)]
pub struct FilterQuery {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub limit: i64,
    pub page: i64,
    pub conditions: Vec<FilterCondition>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct FilterBody {
    pub query: FilterQuery,
}

/// Users scanned per step of a filter.
const SCAN_BATCH: i64 = 1000;

pub async fn filter_users(
    State(state): State<AppState>,
    path: TenantPath,
    JsonBody(body): JsonBody<FilterBody>,
) -> Result<Json<Value>, ApiError> {
    let (company_id, application_id) = path.0;
    let tenant = tenant(company_id, application_id)?;
    let q = body.query;
    if !(1..=MAX_PAGE_SIZE).contains(&q.limit) {
        return Err(ApiError::invalid(format!("query.limit must be from 1 to {MAX_PAGE_SIZE}")));
    }
    if q.page < 1 || q.page * q.limit > 10_000 {
        return Err(ApiError::invalid("query.page must be at least 1, and page × limit at most 10000"));
    }
    if q.kind.as_deref().is_some_and(|k| !matches!(k, "" | "and" | "all" | "user" | "users")) {
        return Err(ApiError::invalid("query.type: conditions are combined with and (all must hold)"));
    }
    let conditions: Vec<rules::Condition> = q
        .conditions
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let op = rules::Op::parse(c.op.trim())
                .ok_or_else(|| ApiError::invalid(format!("condition {index}: unknown operator {:?}", c.op)))?;
            let value = match &c.value {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                Value::Array(items) => items
                    .iter()
                    .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            Ok(rules::Condition { user_attribute_definition_id: c.definition_id.trim().to_string(), op, value })
        })
        .collect::<Result<_, ApiError>>()?;
    consistent(&state).await?;
    let definitions: Vec<Definition> =
        state.attribute_queries.definitions(&tenant).await?.into_iter().map(|r| r.definition).collect();
    let rule = rules::compile(&conditions, |id| definitions.iter().find(|d| d.id == id))
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let def_ids: Vec<String> = {
        let mut ids: Vec<String> = conditions.iter().map(|c| c.user_attribute_definition_id.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    };
    // Email or phone narrow the candidates to (at most) a few users.
    let contact: Vec<String> = [q.email.as_deref(), q.phone.as_deref()]
        .into_iter()
        .flatten()
        .filter(|t| !t.trim().is_empty())
        .map(str::to_string)
        .collect();
    let fixed: Option<Vec<String>> = if contact.is_empty() {
        None
    } else {
        let mut ids: Vec<String> =
            state.queries.search(&tenant, &contact).await?.into_iter().map(|u| u.user_id).collect();
        ids.sort();
        Some(ids)
    };
    let wanted = (q.page * q.limit + 1) as usize;
    let skip = ((q.page - 1) * q.limit) as usize;
    // The scan is driven by the most selective-looking probe; the other
    // probes are checked in the same index. Without any (every condition
    // holds for users without a value) every live user is a candidate.
    let mut probes: Vec<(&str, rules::Probe)> =
        rule.iter().filter_map(|c| c.probe().map(|p| (c.definition_id.as_str(), p))).collect();
    probes.sort_by_key(|(_, p)| userstream_projections::probe::rank(p));
    let scan = (!probes.is_empty()).then(|| probes.remove(0));
    let mut matched: Vec<(String, Vec<ValueRow>)> = Vec::new();
    let mut after: Option<String> = None;
    // Start with a few candidates per wanted user and grow while matches are sparse.
    let mut step = ((wanted * 3) as i64).clamp(50, SCAN_BATCH);
    loop {
        let (batch, values): (Vec<String>, Vec<ValueRow>) = match (&fixed, &scan) {
            (Some(ids), _) => {
                if after.is_some() {
                    (Vec::new(), Vec::new())
                } else {
                    let values = state.attribute_queries.values_for(&tenant, ids, &def_ids).await?;
                    (ids.clone(), values)
                }
            }
            (None, Some((def, probe))) => {
                state.attribute_queries.scan(&tenant, (def, probe), &probes, after.as_deref(), step, &def_ids).await?
            }
            (None, None) => {
                let ids = state.queries.ids_after(&tenant, after.as_deref(), step).await?;
                let values = state.attribute_queries.values_for(&tenant, &ids, &def_ids).await?;
                (ids, values)
            }
        };
        let Some(last) = batch.last().cloned() else { break };
        let mut by_user: std::collections::HashMap<String, Vec<ValueRow>> = std::collections::HashMap::new();
        for v in values {
            by_user.entry(v.user_id.clone()).or_default().push(v);
        }
        let mut found = Vec::new();
        for user in &batch {
            let mine = by_user.remove(user).unwrap_or_default();
            if rules::matches(&rule, |id| mine.iter().find(|v| v.definition_id == id).map(|v| &v.value)) {
                found.push((user.clone(), mine));
            }
        }
        if fixed.is_some() {
            // Archived users are no candidates (the index scans join on live users already).
            let ids: Vec<String> = found.iter().map(|(u, _)| u.clone()).collect();
            let live: std::collections::HashSet<String> =
                state.queries.by_ids(&tenant, &ids).await?.into_iter().map(|u| u.user_id).collect();
            found.retain(|(u, _)| live.contains(u));
        }
        matched.extend(found);
        if matched.len() >= wanted || fixed.is_some() {
            break;
        }
        after = Some(last);
        step = (step * 2).min(SCAN_BATCH);
    }
    let has_next = matched.len() >= wanted;
    let page: Vec<(String, Vec<ValueRow>)> = matched.into_iter().skip(skip).take(q.limit as usize).collect();
    let ids: Vec<String> = page.iter().map(|(u, _)| u.clone()).collect();
    let users = state.queries.by_ids(&tenant, &ids).await?;
    let mut items = Vec::with_capacity(page.len());
    for (user_id, values) in &page {
        let Some(u) = users.iter().find(|u| &u.user_id == user_id) else { continue };
        let attributes = values
            .iter()
            .map(|v| value_json(&state, &tenant, definitions.iter().find(|d| d.id == v.definition_id), v))
            .collect::<Result<Vec<_>, _>>()?;
        let mut item = serde_json::to_value(crate::dto::UserDto::from(u.clone())).unwrap_or(Value::Null);
        if let Some(map) = item.as_object_mut() {
            map.insert("attributes".into(), Value::Array(attributes));
            // `UserAttributeFilteredList` types phone country codes as strings.
            if let Some(Value::Array(phones)) = map.get_mut("phone_numbers") {
                for p in phones {
                    if let Some(code) = p.get("country_code").and_then(Value::as_u64) {
                        p["country_code"] = Value::String(code.to_string());
                    }
                }
            }
        }
        items.push(item);
    }
    Ok(Json(json!({
        "items": items,
        "page": { "type": "number", "current": q.page, "size": q.limit, "has_next": has_next },
    })))
}
