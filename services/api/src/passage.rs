//! The Passage Users API on the same users: the same commands and events
//! as the Fynd surface, Passage's shapes and error codes.
//!
//! - Status: a blocked user is `inactive`; activate/deactivate are the
//!   unblock/block commands. DELETE archives (the user disappears, its email
//!   and phone become free), exactly like the Fynd archive.
//! - A user created here gets its id as username (Passage has none) and
//!   needs an email or a phone; the Fynd `register_required_fields` apply to
//!   the Fynd surface only.
//! - `login_count` / `last_login_at` count the user's sessions.
//! - Answers are read from the users read model once it has the command's
//!   position, so what a command returns is what a GET returns.

use crate::commands::Outcome;
use crate::http::error::{ApiError, PassageError};
use crate::http::{meta, tenant, Consistency, JsonBody, QueryPairs};
use crate::{auth::Principal, AppState};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, MethodRouter};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use userstream_domain::user::{CreateUser, EmailEntry, PhoneEntry, UpdateUser, UserCommand};
use userstream_domain::{Email, Phone, UserId, Username};
use userstream_eventlog::{EventLog, Tenant};
use userstream_projections::read_models::user_list::{self, ListQuery, NEVER};
use userstream_projections::read_models::users::UserRow;

pub const PREFIX: &str = "/v1/apps/{app_id}";

pub fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::POST, "/users", post(create_user)),
        (Method::GET, "/users", get(list_users)),
        (Method::GET, "/users/{user_id}", get(get_user)),
        (Method::PATCH, "/users/{user_id}", patch(update_user)),
        (Method::DELETE, "/users/{user_id}", delete(delete_user)),
        (Method::PATCH, "/users/{user_id}/activate", patch(|s, p, e, h| set_active(true, s, p, e, h))),
        (Method::PATCH, "/users/{user_id}/deactivate", patch(|s, p, e, h| set_active(false, s, p, e, h))),
    ]
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = PassageUserArgs)]
pub struct UserArgs {
    /// On update, `""` removes the email.
    #[serde(default)]
    pub email: Option<String>,
    /// E.164; on update, `""` removes the phone.
    #[serde(default)]
    pub phone: Option<String>,
    /// At most 16 KiB.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub user_metadata: Option<Value>,
}

/// The tenant of a Passage request: the app in the path, the company of the key.
fn passage_tenant(principal: &Principal, app_id: String) -> Result<Tenant, PassageError> {
    let company = principal.company().ok_or_else(|| {
        PassageError::new(StatusCode::UNAUTHORIZED, "invalid_access_token", "a valid API key is required")
    })?;
    Ok(tenant(company.to_string(), app_id)?)
}

fn user_id(raw: &str) -> Result<UserId, PassageError> {
    UserId::parse("user_id", raw).map_err(|_| PassageError::user_not_found(raw))
}

/// `PassageUser` / `ListPaginatedUsersItem`: every required field present
/// and non-null.
fn passage_user(row: &UserRow) -> Value {
    json!({
        "id": row.user_id,
        "email": row.email,
        "email_verified": row.email_verified,
        "phone": row.phone,
        "phone_verified": row.phone_verified,
        "external_id": row.external_id.clone().unwrap_or_default(),
        "status": if row.blocked { "inactive" } else { "active" },
        "login_count": row.login_count,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "last_login_at": row.last_login_at.clone().unwrap_or_else(|| NEVER.to_string()),
        "user_metadata": row.meta,
        "recent_events": [],
        "social_connections": {},
        "webauthn": false,
        "webauthn_devices": [],
        "webauthn_types": [],
    })
}

/// The user as the read model has it once it has reached `position`.
async fn read_back(state: &AppState, tenant: &Tenant, id: &str, position: i64) -> Result<UserRow, PassageError> {
    if !state.users.wait_for(position, state.config.min_position_wait).await {
        return Err(ApiError::behind(position).into());
    }
    state.queries.get(tenant, id).await?.ok_or_else(|| PassageError::user_not_found(id))
}

/// The user as the read model has it once it has every event committed so far.
async fn read_current(state: &AppState, tenant: &Tenant, id: &str) -> Result<UserRow, PassageError> {
    let head = state.commands.log().head().await?;
    read_back(state, tenant, id, head).await
}

async fn user_response(
    state: &AppState,
    tenant: &Tenant,
    id: &str,
    outcome: &Outcome,
    status: StatusCode,
) -> Result<Response, PassageError> {
    let row = read_back(state, tenant, id, outcome.position).await?;
    Ok((status, Json(json!({ "user": passage_user(&row) }))).into_response())
}

fn metadata(raw: Option<Value>) -> Result<Option<Value>, PassageError> {
    match raw {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) if v.to_string().len() <= 16 * 1024 => Ok(Some(v)),
        Some(Value::Object(_)) => Err(PassageError::invalid("user_metadata is larger than 16 KiB")),
        Some(_) => Err(PassageError::invalid("user_metadata must be an object")),
    }
}

fn parse_contact<T>(
    field: &'static str,
    raw: Option<&str>,
    parse: fn(&'static str, &str) -> Result<T, userstream_domain::ValueError>,
) -> Result<Option<T>, PassageError> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => parse(field, v).map(Some).map_err(|e| PassageError::invalid(e.to_string())),
    }
}

async fn create_user(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Result<JsonBody<UserArgs>, ApiError>,
) -> Result<Response, PassageError> {
    let JsonBody(body) = body?;
    let tenant = passage_tenant(&principal, app_id)?;
    let email = parse_contact("email", body.email.as_deref(), Email::parse)?;
    let phone = parse_contact("phone", body.phone.as_deref(), Phone::parse)?;
    if email.is_none() && phone.is_none() {
        return Err(PassageError::invalid("email or phone is required"));
    }
    let ctx = state.commands.context(&tenant).await?;
    let id = ctx.id(0);
    let command = CreateUser {
        username: Username::parse("username", id.as_str()).map_err(|e| PassageError::invalid(e.to_string()))?,
        user_id: id.clone(),
        phone,
        email,
        first_name: None,
        last_name: None,
        gender: None,
        meta: metadata(body.user_metadata)?,
        external_id: None,
        rr_id: None,
        verified: false,
    };
    let meta = meta(tenant, &principal, &headers)?;
    let outcome = state.commands.create_user(&meta, command, &ctx).await?;
    // A retried request answers with the user its first try created.
    let created = outcome.first_id().unwrap_or(id.as_str()).to_string();
    user_response(&state, &meta.tenant, &created, &outcome, StatusCode::CREATED).await
}

async fn get_user(
    State(state): State<AppState>,
    Path((app_id, raw)): Path<(String, String)>,
    Extension(principal): Extension<Principal>,
    consistency: Result<Consistency, ApiError>,
) -> Result<Response, PassageError> {
    let tenant = passage_tenant(&principal, app_id)?;
    let id = user_id(&raw)?;
    consistency.map_err(PassageError::from)?.wait(&state, &[&state.users]).await?;
    let row =
        state.queries.get(&tenant, id.as_str()).await?.ok_or_else(|| PassageError::user_not_found(id.as_str()))?;
    Ok(Json(json!({ "user": passage_user(&row) })).into_response())
}

async fn update_user(
    State(state): State<AppState>,
    Path((app_id, raw)): Path<(String, String)>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Result<JsonBody<UserArgs>, ApiError>,
) -> Result<Response, PassageError> {
    let JsonBody(body) = body?;
    let tenant = passage_tenant(&principal, app_id)?;
    let id = user_id(&raw)?;
    // `""` removes the email or phone; a new one starts unverified.
    let emails = match body.email.as_deref().map(str::trim) {
        None => None,
        Some("") => Some(vec![]),
        Some(v) => Some(vec![EmailEntry {
            email: Email::parse("email", v).map_err(|e| PassageError::invalid(e.to_string()))?,
            primary: true,
            verified: false,
            active: true,
        }]),
    };
    let phone_numbers = match body.phone.as_deref().map(str::trim) {
        None => None,
        Some("") => Some(vec![]),
        Some(v) => Some(vec![PhoneEntry {
            phone: Phone::parse("phone", v).map_err(|e| PassageError::invalid(e.to_string()))?,
            primary: true,
            verified: false,
            active: true,
        }]),
    };
    let update = UpdateUser { meta: metadata(body.user_metadata)?, emails, phone_numbers, ..UpdateUser::default() };
    run(&state, tenant, &principal, &headers, &id, UserCommand::Update(update)).await
}

/// Runs a command on one user and answers the user (200).
async fn run(
    state: &AppState,
    tenant: Tenant,
    principal: &Principal,
    headers: &HeaderMap,
    id: &UserId,
    command: UserCommand,
) -> Result<Response, PassageError> {
    let meta = meta(tenant, principal, headers)?;
    let outcome = state.commands.run(&meta, id, command, None).await.map_err(|e| {
        let e = PassageError::from(e);
        if e.status == StatusCode::NOT_FOUND {
            PassageError::user_not_found(id.as_str())
        } else {
            e
        }
    })?;
    user_response(state, &meta.tenant, id.as_str(), &outcome, StatusCode::OK).await
}

async fn delete_user(
    State(state): State<AppState>,
    Path((app_id, raw)): Path<(String, String)>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
) -> Result<Response, PassageError> {
    let tenant = passage_tenant(&principal, app_id)?;
    let id = user_id(&raw)?;
    let meta = meta(tenant, &principal, &headers)?;
    // Deleting a user that is gone already is a 404, as in Passage.
    read_current(&state, &meta.tenant, id.as_str()).await?;
    state.commands.run(&meta, &id, UserCommand::Archive, None).await?;
    Ok(Json(json!({})).into_response())
}

/// Activate (unblock) or deactivate (block) a user.
async fn set_active(
    active: bool,
    State(state): State<AppState>,
    Path((app_id, raw)): Path<(String, String)>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
) -> Result<Response, PassageError> {
    let tenant = passage_tenant(&principal, app_id)?;
    let command = if active {
        UserCommand::Unblock { reason: "activated".into() }
    } else {
        UserCommand::Block { reason: "deactivated".into() }
    };
    run(&state, tenant, &principal, &headers, &user_id(&raw)?, command).await
}

/// `?a=1&b=2` of the pairs with `page` replaced.
fn page_href(path: &str, pairs: &[(String, String)], page: i64) -> String {
    let mut kept: Vec<(String, String)> = pairs.iter().filter(|(k, _)| k != "page").cloned().collect();
    kept.push(("page".into(), page.to_string()));
    format!("{path}?{}", serde_urlencoded::to_string(&kept).unwrap_or_default())
}

async fn list_users(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    Extension(principal): Extension<Principal>,
    consistency: Result<Consistency, ApiError>,
    QueryPairs(pairs): QueryPairs,
) -> Result<Response, PassageError> {
    let tenant = passage_tenant(&principal, app_id)?;
    let query = ListQuery::parse(&pairs, state.commands.now()).map_err(PassageError::invalid)?;
    consistency.map_err(PassageError::from)?.wait(&state, &[&state.users]).await?;
    let (rows, total) = user_list::list(&state.db, &tenant, &query).await?;
    let last = ((total + query.limit - 1) / query.limit).max(1);
    let path = format!("/v1/apps/{}/users", tenant.application_id);
    // Links keep every parameter, with created_before pinned so pages stay stable.
    let mut anchored: Vec<(String, String)> = pairs.into_iter().filter(|(k, _)| k != "created_before").collect();
    anchored.push(("created_before".into(), query.created_before.to_string()));
    let link = |page: i64| json!({ "href": page_href(&path, &anchored, page) });
    let none = json!({ "href": "" });
    let body = json!({
        "_links": {
            "self": link(query.page),
            "first": link(1),
            "last": link(last),
            "next": if query.page < last { link(query.page + 1) } else { none.clone() },
            "previous": if query.page > 1 { link(query.page - 1) } else { none },
        },
        "created_before": query.created_before,
        "limit": query.limit,
        "page": query.page,
        "total_users": total,
        "users": rows.iter().map(passage_user).collect::<Vec<_>>(),
    });
    Ok(Json(body).into_response())
}
