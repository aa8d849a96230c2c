//! Attribute definitions: create, list, get, update (refusing changes that
//! would make stored values invalid unless asked to delete them), delete.

use super::{attr_error, bool_param, consistent, definition_id, live_definition, page_json, run_values, DefPath};
use crate::http::with_position as position_header;
use crate::http::{ApiError, Caller, JsonBody, QueryPairs, TenantOf};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use userstream_domain::attribute::{
    AttrError, AttrType, Definition, DefinitionCommand, DefinitionState, DefinitionStream, Validation, ValuesCommand,
};
use userstream_domain::{Stream, StreamId};
use userstream_eventlog::Tenant;
use userstream_projections::read_models::attributes::{DefinitionFilter, DefinitionRow, ValueRow};
use userstream_projections::read_models::users::MAX_PAGE_SIZE;

/// The wire body of create and update. Both spellings of multi-value are accepted.
#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[schema(as = CreateUserAttributeDefinition)]
pub struct DefinitionBody {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Required on create.
    #[serde(rename = "type", default)]
    #[schema(value_type = Option<crate::openapi::schemas::AttributeType>)]
    pub kind: Option<AttrType>,
    #[serde(default, alias = "multi_value")]
    pub is_multi_value: Option<bool>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<crate::openapi::schemas::UserAttributeDefinitionValidation>>)]
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

pub async fn create_definition(
    State(state): State<AppState>,
    Caller(meta): Caller,
    JsonBody(body): JsonBody<DefinitionBody>,
) -> Result<Response, ApiError> {
    let kind = body.kind.ok_or_else(|| {
        ApiError::invalid("type is required (string, number, boolean, date, datetime, email, phone, enum, json)")
    })?;
    let ctx = state.commands.context(&meta.tenant).await?;
    let id = ctx.id(0).to_string();
    let definition = body.apply(Definition::new(id.clone(), kind));
    let command = DefinitionCommand::Create(definition.clone());
    let handled =
        state.commands.handle_new::<DefinitionStream>(&meta, StreamId::definition(&id), command, &ctx).await?;
    let position = handled.position;
    let body = match handled.first_id().filter(|first| *first != id) {
        // A retried request answers with the definition its first try created.
        Some(first) => {
            consistent(&state).await?;
            let row = state.attribute_queries.definition(&meta.tenant, first).await?;
            row_json(&meta.tenant, &row.ok_or_else(|| attr_error(AttrError::NotFound))?)
        }
        None => {
            let at = userstream_eventlog::format_time(ctx.now);
            definition_json(&meta.tenant, &definition, &at, &at, 1)
        }
    };
    Ok(position_header((StatusCode::CREATED, Json(body)).into_response(), position))
}

pub async fn list_definitions(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
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
        pin_order: query.opt_int("pin_order")?,
        is_locked: bool_param(&query, "is_locked")?,
    };
    consistent(&state).await?;
    let (rows, total) = state.attribute_queries.list_definitions(&tenant, &filter, page_no, page_size).await?;
    let items: Vec<Value> = rows.iter().map(|r| row_json(&tenant, r)).collect();
    Ok(Json(json!({ "items": items, "page": page_json(page_no, page_size, total) })))
}

pub async fn get_definition(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    Path((_, _, raw)): DefPath,
) -> Result<Json<Value>, ApiError> {
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
    Caller(meta): Caller,
    Path((_, _, raw)): DefPath,
    query: QueryPairs,
    JsonBody(body): JsonBody<DefinitionBody>,
) -> Result<Response, ApiError> {
    let (current, version) = live_definition(&state, &meta.tenant, &raw).await?;
    let ctx = state.commands.context(&meta.tenant).await?;
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
    let stored = state.attribute_queries.values_of_definition(&meta.tenant, &current.id).await?;
    if new.encrypted != current.encrypted && !stored.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "values_exist",
            format!("encrypted cannot change while {} values exist", stored.len()),
        ));
    }
    let bad = invalid_values(&state, &meta.tenant, &new).await?;
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
    Caller(meta): Caller,
    Path((_, _, raw)): DefPath,
) -> Result<Response, ApiError> {
    let (current, version) = live_definition(&state, &meta.tenant, &raw).await?;
    consistent(&state).await?;
    let users: Vec<String> = state
        .group_queries
        .all(&meta.tenant)
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
