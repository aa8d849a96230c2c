//! The Fynd platform "User" surface: customers, sessions, platform config.

use crate::commands::Meta;
use crate::commands::Rejection;
use crate::dto::{ArchiveBody, BlockBody, CreateUserBody, Page, UndeleteBody, UpdateUserBody, UserDto};
use crate::events::AsOf;
use crate::http::{
    command_response, if_match, parse_user_id, ApiError, Caller, Consistency, JsonBody, QueryPairs, TenantOf,
};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::Method;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put, MethodRouter};
use axum::Json;
use serde_json::json;
use userstream_domain::user::UserCommand;
use userstream_domain::UserId;
use userstream_projections::read_models::filter::Filter;
use userstream_projections::read_models::users::MAX_PAGE_SIZE;

pub const PREFIX: &str = "/service/platform/user/v1.0/company/{company_id}/application/{application_id}";

/// Every route of the surface, relative to [`PREFIX`]: the router is built
/// from this table, and the tenant-isolation test walks it.
pub fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    use crate::attributes as a;
    use crate::events as ev;
    use crate::groups as g;
    use crate::jobs::http as j;
    use crate::platform_config::{get_config, update_config};
    use crate::sessions::{create_session, delete_session, delete_sessions, list_sessions, use_session};
    vec![
        (Method::GET, "/customers/list", get(list_customers)),
        (Method::GET, "/customers/search", get(search_customers)),
        (Method::POST, "/customers", post(create_user)),
        (Method::PUT, "/customers/activation", put(block_users)),
        (Method::PUT, "/customers/archive", put(archive_user)),
        (Method::PUT, "/customers/undelete", put(undelete_user)),
        (Method::POST, "/customers/session", post(create_session)),
        (Method::GET, "/customers/session", get(use_session)),
        (Method::DELETE, "/customers/session", delete(delete_session)),
        (Method::GET, "/customers/sessions", get(list_sessions)),
        (Method::DELETE, "/customers/sessions", delete(delete_sessions)),
        (Method::GET, "/platform/config", get(get_config)),
        (Method::POST, "/platform/config", post(update_config)),
        (Method::PUT, "/customers/{user_id}", put(update_user)),
        (Method::GET, "/customers/{user_id}", get(get_user)),
        (Method::GET, "/customers/{user_id}/history", get(ev::customer_history)),
        (Method::GET, "/customers/{user_id}/timeline", get(ev::customer_timeline)),
        (Method::POST, "/customers/{user_id}/erase", post(crate::erasure::erase_customer)),
        (Method::GET, "/customers/{user_id}/groups", get(g::customer_groups)),
        (Method::GET, "/events", get(ev::feed)),
        (Method::POST, "/user_attribute/definition", post(a::create_definition)),
        (Method::GET, "/user_attribute/definition", get(a::list_definitions)),
        (Method::GET, "/user_attribute/definition/{definition_id}", get(a::get_definition)),
        (Method::PUT, "/user_attribute/definition/{definition_id}", put(a::update_definition)),
        (Method::DELETE, "/user_attribute/definition/{definition_id}", delete(a::delete_definition)),
        (Method::PUT, "/user_attribute/definition/{definition_id}/user/{user_id}", put(a::upsert_value)),
        (Method::GET, "/user_attribute/definition/{definition_id}/user/{user_id}", get(a::get_value)),
        (Method::DELETE, "/user_attribute/definition/{definition_id}/user/{user_id}", delete(a::delete_value)),
        (Method::GET, "/user_attribute/user/{user_id}", get(a::user_values)),
        (Method::POST, "/user_attribute/user/{user_id}", post(a::upsert_values)),
        (Method::DELETE, "/user_attribute/user/{user_id}", delete(a::delete_values)),
        (Method::GET, "/user_attribute/attribute/{attribute_id}", get(a::value_by_id)),
        (Method::POST, "/user_attribute/users", post(a::filter_users)),
        (Method::PATCH, "/user_attribute/bulk", patch(j::bulk_attributes)),
        (Method::GET, "/user_attribute/bulk/{job_id}", get(j::get_attribute_job)),
        (Method::POST, "/users/jobs/import", post(j::import_users)),
        (Method::GET, "/users/jobs/import", get(j::list_imports)),
        (Method::POST, "/users/jobs/export", post(j::export_users)),
        (Method::GET, "/users/jobs/export", get(j::list_exports)),
        (Method::GET, "/users/jobs/{job_id}", get(j::get_job)),
        (Method::GET, "/jobs/{job_id}/files/{name}", get(j::download)),
        (Method::POST, "/user_group", post(g::create_group)),
        (Method::GET, "/user_group", get(g::list_groups)),
        (Method::GET, "/user_group/tags", get(g::group_tags)),
        (Method::GET, "/user_group/categories", get(g::group_categories)),
        (Method::GET, "/user_group/{group_id}", get(g::get_group)),
        (Method::PUT, "/user_group/{group_id}", put(g::update_group)),
        (Method::PATCH, "/user_group/{group_id}", patch(g::patch_group)),
        (Method::DELETE, "/user_group/{group_id}", delete(g::delete_group)),
        (Method::GET, "/user_group/{group_id}/users", get(g::group_members)),
        (Method::POST, "/user_group/{group_id}/refresh", post(g::refresh_group)),
        (Method::GET, "/user_group/{group_id}/history", get(ev::group_history)),
    ]
}

/// `{"user": …}` (`CreateUserResponseSchema`), serialised straight from the DTO.
#[derive(serde::Serialize)]
struct UserEnvelope {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<UserDto>,
}

async fn create_user(
    State(state): State<AppState>,
    Caller(meta): Caller,
    JsonBody(body): JsonBody<CreateUserBody>,
) -> Result<Response, ApiError> {
    let (config, _) = state.commands.config(&meta.tenant).await?;
    let ctx = state.commands.context_of(&config.config);
    let required = [&config.config.required_fields, &config.config.register_required_fields];
    let command = body.into_command(ctx.id(0), &required)?;
    let outcome = state.commands.create_user(&meta, command, &ctx).await?;
    let user = outcome.user().map(|(u, _)| UserDto::from_user(u, &meta.tenant.application_id));
    Ok(command_response(&outcome, UserEnvelope { user }))
}

async fn update_user(
    State(state): State<AppState>,
    Caller(meta): Caller,
    Path((_, _, user_id)): Path<(String, String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<UpdateUserBody>,
) -> Result<Response, ApiError> {
    let id = parse_user_id(&user_id)?;
    let expected = if_match(&headers)?;
    let command = UserCommand::Update(body.try_into()?);
    let outcome = state.commands.run(&meta, &id, command, expected).await?;
    let user = outcome.user().map(|(u, _)| UserDto::from_user(u, &meta.tenant.application_id));
    Ok(command_response(&outcome, UserEnvelope { user }))
}

async fn block_users(
    State(state): State<AppState>,
    Caller(meta): Caller,
    JsonBody(body): JsonBody<BlockBody>,
) -> Result<Response, ApiError> {
    if body.user_id.is_empty() {
        return Err(ApiError::invalid("user_id must list at least one user"));
    }
    if body.user_id.len() > 500 {
        return Err(ApiError::invalid("user_id may list at most 500 users"));
    }
    let mut ids = Vec::with_capacity(body.user_id.len());
    let mut unknown = Vec::new();
    for raw in &body.user_id {
        match UserId::parse("user_id", raw) {
            Ok(id) => ids.push(id),
            Err(_) => unknown.push(raw.clone()),
        }
    }
    if !unknown.is_empty() {
        return Err(Rejection::UnknownUsers(unknown).into());
    }
    let reason = body.reason.unwrap_or_default();
    let ctx = state.commands.context(&meta.tenant).await?;
    let outcome = state.commands.set_blocked(&meta, &ids, !body.status, &reason, &ctx).await?;
    Ok(command_response(&outcome, json!({ "success": true })))
}

async fn archive_user(
    State(state): State<AppState>,
    Caller(meta): Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ArchiveBody>,
) -> Result<Response, ApiError> {
    one_user_command(&state, &meta, &headers, &body.user_id, UserCommand::Archive).await
}

async fn undelete_user(
    State(state): State<AppState>,
    Caller(meta): Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<UndeleteBody>,
) -> Result<Response, ApiError> {
    let reason = body.reason.or(body.reason_id).unwrap_or_default();
    one_user_command(&state, &meta, &headers, &body.user_id, UserCommand::Restore { reason }).await
}

/// Runs a command on the user named in the body; answers `{"success": true}`.
async fn one_user_command(
    state: &AppState,
    meta: &Meta,
    headers: &HeaderMap,
    user_id: &str,
    command: UserCommand,
) -> Result<Response, ApiError> {
    let id = parse_user_id(user_id)?;
    let outcome = state.commands.run(meta, &id, command, if_match(headers)?).await?;
    Ok(command_response(&outcome, json!({ "success": true })))
}

async fn get_user(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    Path((_, _, user_id)): Path<(String, String, String)>,
    consistency: Consistency,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let id = parse_user_id(&user_id)?;
    if let Some(as_of) = AsOf::from_query(&state, &query).await? {
        return crate::events::user_as_of(&state, &tenant, &id, as_of).await;
    }
    consistency.wait(&state, &[&state.users]).await?;
    let row =
        state.queries.get(&tenant, id.as_str()).await?.ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "user_not_found", format!("user {user_id} not found"))
        })?;
    let etag = format!("\"{}\"", row.version);
    let mut response = Json(UserEnvelope { user: Some(UserDto::from(row)) }).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, v);
    }
    Ok(response)
}

/// The filter of a `/customers/list` `q` (also an export's): an email or a
/// phone, or a JSON filter of the documented subset.
pub fn list_filter(q: Option<&str>) -> Result<Option<Filter>, ApiError> {
    match q.map(str::trim) {
        None | Some("") => Ok(None),
        Some(q) if q.starts_with('{') || q.starts_with('[') => {
            Ok(Some(Filter::parse_json(q).map_err(|e| ApiError::invalid(format!("q: {e}")))?))
        }
        Some(q) => Ok(Some(Filter::email_or_phone(q))),
    }
}

async fn list_customers(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    consistency: Consistency,
    query: QueryPairs,
) -> Result<Json<serde_json::Value>, ApiError> {
    let page_no = query.int("page_no", 1, 1..=1_000_000)?;
    let page_size = query.int("page_size", 10, 1..=MAX_PAGE_SIZE)?;
    let filter = list_filter(query.get("q"))?;
    consistency.wait(&state, &[&state.users]).await?;
    let (rows, total) = state.queries.list(&tenant, filter.as_ref(), page_no, page_size).await?;
    let items: Vec<UserDto> = rows.into_iter().map(UserDto::from).collect();
    let page = Page {
        kind: "number",
        current: page_no,
        size: page_size,
        item_total: total,
        has_next: page_no * page_size < total,
    };
    Ok(Json(json!({ "items": items, "page": page })))
}

async fn search_customers(
    State(state): State<AppState>,
    TenantOf(tenant): TenantOf,
    consistency: Consistency,
    query: QueryPairs,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut terms = query.all("query");
    if let Some(q) = query.get("q").map(str::trim).filter(|q| !q.is_empty()) {
        terms.push(q.to_string());
    }
    terms.retain(|t| !t.trim().is_empty());
    if terms.is_empty() {
        return Err(ApiError::invalid("q or query is required"));
    }
    if terms.len() > 100 {
        return Err(ApiError::invalid("query may hold at most 100 values"));
    }
    consistency.wait(&state, &[&state.users]).await?;
    let rows = state.queries.search(&tenant, &terms).await?;
    let users: Vec<UserDto> = rows.into_iter().map(UserDto::from).collect();
    Ok(Json(json!({ "users": users })))
}
