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
//!
//! Modules: `definitions`, `values`, `filter`; this file holds what they
//! share (wire shapes of values, paging, the consistency wait).

mod definitions;
mod filter;
mod values;

pub use definitions::*;
pub use filter::*;
pub use values::*;

use crate::commands::{CommandError, Meta, Rejection};
use crate::http::{consistency::latest, ApiError, QueryPairs};
use crate::AppState;
use axum::extract::Path;
use axum::http::StatusCode;
use serde_json::{json, Value};
use userstream_domain::attribute::{
    AttrError, Definition, DefinitionState, DefinitionStream, ValuesCommand, ValuesStream,
};
use userstream_domain::{Context, StreamId, UserId};
use userstream_eventlog::Tenant;
use userstream_projections::read_models::attributes::ValueRow;

pub(crate) type DefPath = Path<(String, String, String)>;
pub(crate) type DefUserPath = Path<(String, String, String, String)>;

pub(crate) fn attr_error(e: AttrError) -> ApiError {
    Rejection::from(e).into()
}

pub(crate) async fn consistent(state: &AppState) -> Result<(), ApiError> {
    latest(state, &[&state.attributes, &state.groups]).await
}

pub(crate) fn page_json(page_no: i64, page_size: i64, total: i64) -> Value {
    json!({
        "type": "number",
        "current": page_no,
        "size": page_size,
        "item_total": total,
        "has_next": page_no * page_size < total,
        "has_previous": page_no > 1,
    })
}

/// The wire shape of a value (`UserAttribute`), opened.
pub(crate) fn value_json(
    state: &AppState,
    tenant: &Tenant,
    d: Option<&Definition>,
    row: &ValueRow,
) -> Result<Value, ApiError> {
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

pub(crate) fn bool_param(query: &QueryPairs, key: &str) -> Result<Option<bool>, ApiError> {
    match query.get(key).map(str::trim) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(ApiError::invalid(format!("{key} must be true or false"))),
    }
}

/// Runs a values command on a user of the tenant; returns the position.
pub(crate) async fn run_values(
    state: &AppState,
    meta: &Meta,
    user_id: &str,
    command: ValuesCommand,
    ctx: &Context,
) -> Result<i64, ApiError> {
    let stream = StreamId::values(user_id);
    Ok(state.commands.handle::<ValuesStream>(meta, stream, command, None, ctx).await?.position)
}

pub(crate) fn definition_id(raw: &str) -> Result<String, ApiError> {
    UserId::parse("definition_id", raw)
        .map(|id| id.to_string())
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("attribute definition {raw} not found")))
}

pub(crate) async fn live_definition(
    state: &AppState,
    tenant: &Tenant,
    raw: &str,
) -> Result<(Definition, i64), ApiError> {
    let id = definition_id(raw)?;
    match load_definition(state, tenant, &id).await? {
        (DefinitionState::Live { definition, .. }, version) => Ok((*definition, version)),
        _ => Err(attr_error(AttrError::NotFound)),
    }
}

/// Loads a definition stream of the tenant.
pub(crate) async fn load_definition(
    state: &AppState,
    tenant: &Tenant,
    id: &str,
) -> Result<(DefinitionState, i64), ApiError> {
    let folded = state.commands.state::<DefinitionStream>(tenant, &StreamId::definition(id)).await;
    Ok(folded.map_err(CommandError::from)?.unwrap_or_default())
}
