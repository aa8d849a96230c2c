//! A user's attribute values: upsert (validated, sealed when encrypted),
//! get (also as of a past moment), delete, list; several of one user at
//! once (one command, one append: all of them or none).

use super::{
    attr_error, consistent, definition_id, live_definition, page_json, run_values, value_json, DefPath, DefUserPath,
};
use crate::commands::{fold_events, CommandError};
use crate::events::AsOf;
use crate::http::{parse_user_id, with_position as position_header, ApiError, Caller, JsonBody, QueryPairs, TenantOf};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use userstream_domain::attribute::{AttrError, NewValue, ValuesCommand, ValuesState, ValuesStream};
use userstream_domain::{StreamId, UserId};
use userstream_eventlog::Tenant;
use userstream_projections::read_models::attributes::ValueRow;
use userstream_projections::read_models::users::MAX_PAGE_SIZE;

async fn live_user(state: &AppState, tenant: &Tenant, raw: &str) -> Result<UserId, ApiError> {
    let id = parse_user_id(raw)?;
    if state.commands.user_is_live(tenant, &id).await? {
        Ok(id)
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "user_not_found", format!("user {raw} not found")))
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = CreateUserAttributeRequest)]
pub struct UpsertBody {
    #[schema(value_type = crate::openapi::schemas::UserAttributeKeyValue)]
    pub attribute: Value,
    #[serde(default, alias = "customer_overriden")]
    pub customer_overridden: Option<bool>,
}

pub async fn upsert_value(
    State(state): State<AppState>,
    Caller(meta): Caller,
    Path((_, _, raw_def, raw_user)): DefUserPath,
    JsonBody(body): JsonBody<UpsertBody>,
) -> Result<Response, ApiError> {
    let (definition, _) = live_definition(&state, &meta.tenant, &raw_def).await?;
    let user = live_user(&state, &meta.tenant, &raw_user).await?;
    let raw = body.attribute.get("value").cloned().ok_or_else(|| ApiError::invalid("attribute.value is required"))?;
    let value = definition.validate(&raw).map_err(attr_error)?;
    let value = if definition.encrypted { state.sealer.seal(&value) } else { value };
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
    TenantOf(tenant): TenantOf,
    Path((_, _, raw_def, raw_user)): DefUserPath,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
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
    Caller(meta): Caller,
    Path((_, _, raw_def, raw_user)): DefUserPath,
) -> Result<Response, ApiError> {
    let def_id = definition_id(&raw_def)?;
    let user = live_user(&state, &meta.tenant, &raw_user).await?;
    let ctx = state.commands.context(&meta.tenant).await?;
    let command = ValuesCommand::Delete { definition_ids: vec![def_id.clone()], ignore_missing: false };
    let position = run_values(&state, &meta, user.as_str(), command, &ctx).await?;
    Ok(position_header(
        Json(json!({ "success": format!("attribute {def_id} of user {user} deleted") })).into_response(),
        position,
    ))
}

/// Most attributes one request may set or delete for a user.
pub const MAX_ATTRIBUTES_PER_REQUEST: usize = 200;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct BulkValue {
    pub definition_id: String,
    pub value: Value,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct BulkUpsertBody {
    #[schema(min_items = 1, max_items = 200)]
    pub attributes: Vec<BulkValue>,
    #[serde(default, alias = "customer_overriden")]
    pub customer_overridden: Option<bool>,
}

/// POST `…/user_attribute/user/{user_id}`: several values of one user, each
/// validated against its definition, written as one command (all or none).
/// Answers `BulkUserAttribute` `{success, attributes}`.
pub async fn upsert_values(
    State(state): State<AppState>,
    Caller(meta): Caller,
    Path((_, _, raw_user)): DefPath,
    JsonBody(body): JsonBody<BulkUpsertBody>,
) -> Result<Response, ApiError> {
    check_count(body.attributes.len(), "attributes")?;
    let mut seen = std::collections::BTreeSet::new();
    let mut checked = Vec::with_capacity(body.attributes.len());
    for (i, entry) in body.attributes.iter().enumerate() {
        let (definition, _) = live_definition(&state, &meta.tenant, &entry.definition_id).await?;
        if !seen.insert(definition.id.clone()) {
            return Err(ApiError::invalid(format!("attributes[{i}]: definition {} is listed twice", definition.id)));
        }
        let value = definition
            .validate(&entry.value)
            .map_err(|e| ApiError::invalid(format!("attributes[{i}]: {}", attr_error(e).message)))?;
        let value = if definition.encrypted { state.sealer.seal(&value) } else { value };
        checked.push((definition, value));
    }
    let user = live_user(&state, &meta.tenant, &raw_user).await?;
    let ctx = state.commands.context(&meta.tenant).await?;
    let overridden = body.customer_overridden.unwrap_or(false);
    let values = checked
        .iter()
        .enumerate()
        .map(|(i, (d, value))| NewValue {
            definition_id: d.id.clone(),
            new_attribute_id: ctx.id(i as u16).to_string(),
            value: value.clone(),
            customer_overridden: overridden,
        })
        .collect();
    let position = run_values(&state, &meta, user.as_str(), ValuesCommand::Upsert(values), &ctx).await?;
    consistent(&state).await?;
    let mut attributes = Vec::with_capacity(checked.len());
    for (definition, _) in &checked {
        let row = state
            .attribute_queries
            .value(&meta.tenant, user.as_str(), &definition.id)
            .await?
            .ok_or_else(|| ApiError::internal("a value just written is not in the read model"))?;
        attributes.push(value_json(&state, &meta.tenant, Some(definition), &row)?);
    }
    Ok(position_header(Json(json!({ "success": true, "attributes": attributes })).into_response(), position))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct BulkDeleteBody {
    #[schema(min_items = 1, max_items = 200)]
    pub definition_ids: Vec<String>,
}

/// DELETE `…/user_attribute/user/{user_id}` with `{definition_ids}`: removes
/// those values of one user, all or none (a definition without a value for
/// the user is a 404 and nothing is removed). Answers `SuccessMessage`.
pub async fn delete_values(
    State(state): State<AppState>,
    Caller(meta): Caller,
    Path((_, _, raw_user)): DefPath,
    JsonBody(body): JsonBody<BulkDeleteBody>,
) -> Result<Response, ApiError> {
    check_count(body.definition_ids.len(), "definition_ids")?;
    let mut ids = Vec::with_capacity(body.definition_ids.len());
    for raw in &body.definition_ids {
        let id = definition_id(raw)?;
        if ids.contains(&id) {
            return Err(ApiError::invalid(format!("definition_ids lists {id} twice")));
        }
        ids.push(id);
    }
    let user = live_user(&state, &meta.tenant, &raw_user).await?;
    let ctx = state.commands.context(&meta.tenant).await?;
    let count = ids.len();
    let command = ValuesCommand::Delete { definition_ids: ids, ignore_missing: false };
    let position = run_values(&state, &meta, user.as_str(), command, &ctx).await?;
    Ok(position_header(
        Json(json!({ "success": format!("{count} attributes of user {user} deleted") })).into_response(),
        position,
    ))
}

fn check_count(n: usize, field: &str) -> Result<(), ApiError> {
    if n == 0 || n > MAX_ATTRIBUTES_PER_REQUEST {
        return Err(ApiError::invalid(format!("{field} must list 1 to {MAX_ATTRIBUTES_PER_REQUEST} entries")));
    }
    Ok(())
}

pub async fn user_values(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    Path((_, _, raw_user)): DefPath,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
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

pub async fn value_by_id(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    Path((_, _, raw)): DefPath,
) -> Result<Json<Value>, ApiError> {
    consistent(&state).await?;
    let row = state
        .attribute_queries
        .value_by_id(&tenant, raw.trim())
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("attribute {raw} not found")))?;
    let definition = state.attribute_queries.definition(&tenant, &row.definition_id).await?.map(|r| r.definition);
    Ok(Json(value_json(&state, &tenant, definition.as_ref(), &row)?))
}
